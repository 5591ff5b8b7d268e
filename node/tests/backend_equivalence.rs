//! The two stores mean the same thing: any command sequence, in any batching,
//! gives identical responses and identical state on both, and a snapshot of
//! one installs on the other.

mod common;

use aspen_node::storage::memory;
use aspen_node::storage::{KvReader, RedbStore};
use aspen_node::types::{Check, Command, Compare, Entry, Op, Txn};
use common::command;
use openraft::RaftSnapshotBuilder;
use openraft::storage::RaftStateMachine;
use proptest::prelude::*;
use tempfile::TempDir;

fn key() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "c", "d", "dd"]).prop_map(String::from)
}

fn value() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["", "1", "2", "x"]).prop_map(String::from)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (key(), value()).prop_map(|(key, value)| Op::Put { key, value }),
        key().prop_map(|key| Op::Delete { key }),
    ]
}

fn check() -> impl Strategy<Value = Check> {
    prop_oneof![
        Just(Check::Absent),
        Just(Check::Present),
        value().prop_map(Check::ValueEquals),
        (0u64..6).prop_map(Check::RevisionEquals),
    ]
}

fn cmd() -> impl Strategy<Value = Command> {
    prop_oneof![
        (key(), value()).prop_map(|(key, value)| Command::Put { key, value }),
        key().prop_map(|key| Command::Delete { key }),
        (key(), prop::option::of(value()), value()).prop_map(|(key, expected, value)| {
            Command::CompareAndSwap {
                key,
                expected,
                value,
            }
        }),
        (
            prop::collection::vec((key(), check()), 0..3),
            prop::collection::vec(op(), 0..4),
            prop::collection::vec(op(), 0..4)
        )
            .prop_map(|(compare, success, failure)| Command::Txn(Txn {
                compare: compare
                    .into_iter()
                    .map(|(key, check)| Compare { key, check })
                    .collect(),
                success,
                failure,
            })),
    ]
}

/// Log entries carrying `commands`, indexed from 1.
fn numbered(commands: Vec<Command>) -> Vec<Entry> {
    commands
        .into_iter()
        .enumerate()
        .map(|(i, c)| command(1, i as u64 + 1, c))
        .collect()
}

fn run(commands: Vec<Command>, batch: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let entries = numbered(commands);
        let (_, mut mem) = memory::new_store();
        let dir = TempDir::new().unwrap();
        let store = RedbStore::open(dir.path(), 64 << 20).unwrap();
        let (_, mut redb) = store.raft_storage();
        let chunks: Vec<_> = entries.chunks(batch).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            if i == chunks.len() / 2 {
                // Building a snapshot writes the overlay to the database, so
                // the rest of the run reads through both.
                redb.get_snapshot_builder()
                    .await
                    .build_snapshot()
                    .await
                    .unwrap();
            }
            let a = mem.apply(chunk.to_vec()).await.unwrap();
            let b = redb.apply(chunk.to_vec()).await.unwrap();
            assert_eq!(a, b);
        }
        let mem_reader = mem.reader();
        // Every prefix, page by page at every page size.
        for prefix in ["", "a", "d", "dd", "z"] {
            for limit in [1, 2, 3, 100] {
                let mut cursor: Option<String> = None;
                loop {
                    let a = mem_reader.scan(prefix, cursor.as_deref(), limit).unwrap();
                    let b = store.scan(prefix, cursor.as_deref(), limit).unwrap();
                    assert_eq!(a, b, "prefix {prefix:?}, after {cursor:?}, limit {limit}");
                    match a.last() {
                        Some((key, _)) if a.len() == limit as usize => cursor = Some(key.clone()),
                        _ => break,
                    }
                }
            }
        }
        assert_eq!(
            mem_reader.applied_state().unwrap(),
            store.applied_state().unwrap()
        );

        // A redb snapshot installs on the in-memory store and vice versa.
        let from_redb = redb
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let (_, mut other_mem) = memory::new_store();
        other_mem
            .install_snapshot(&from_redb.meta, from_redb.snapshot)
            .await
            .unwrap();
        assert_eq!(
            other_mem.reader().scan("", None, 100).unwrap(),
            store.scan("", None, 100).unwrap()
        );
        let from_mem = mem
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let dir2 = TempDir::new().unwrap();
        let other = RedbStore::open(dir2.path(), 64 << 20).unwrap();
        let (_, mut other_redb) = other.raft_storage();
        other_redb
            .install_snapshot(&from_mem.meta, from_mem.snapshot)
            .await
            .unwrap();
        assert_eq!(
            other.scan("", None, 100).unwrap(),
            mem_reader.scan("", None, 100).unwrap()
        );
        // Nothing was appended to either log: live bytes are data bytes.
        assert_eq!(other.usage().live_bytes, store.usage().live_bytes);
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn stores_agree_on_every_command_sequence(
        commands in prop::collection::vec(cmd(), 1..40),
        batch in 1usize..8,
    ) {
        run(commands, batch);
    }
}

#[test]
fn scans_honour_prefix_cursor_and_limit_on_both_stores() {
    let commands: Vec<Command> = ["a", "b/1", "b/2", "b/3", "bb", "c"]
        .iter()
        .map(|k| Command::Put {
            key: (*k).into(),
            value: "v".into(),
        })
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let entries = numbered(commands);
        let (_, mut mem) = memory::new_store();
        mem.apply(entries.clone()).await.unwrap();
        let dir = TempDir::new().unwrap();
        let store = RedbStore::open(dir.path(), 64 << 20).unwrap();
        store.apply_batch(entries).unwrap();
        let readers: [&dyn KvReader; 2] = [&mem.reader(), &store];
        for reader in readers {
            let keys = |prefix: &str, after: Option<&str>, limit: u32| -> Vec<String> {
                reader
                    .scan(prefix, after, limit)
                    .unwrap()
                    .into_iter()
                    .map(|(k, _)| k)
                    .collect()
            };
            assert_eq!(keys("b/", None, 10), ["b/1", "b/2", "b/3"]);
            assert_eq!(keys("b/", None, 2), ["b/1", "b/2"]);
            assert_eq!(keys("b/", Some("b/2"), 10), ["b/3"]);
            assert_eq!(keys("b", Some("b/3"), 10), ["bb"]);
            assert_eq!(keys("", Some("a"), 2), ["b/1", "b/2"]);
            assert!(keys("b/", Some("b/3"), 10).is_empty());
            assert!(keys("z", None, 10).is_empty());
            // A cursor before the prefix starts at the prefix.
            assert_eq!(keys("c", Some("a"), 10), ["c"]);
        }
    });
}
