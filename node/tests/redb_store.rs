//! The redb store's promises beyond openraft's suite: persistence across
//! reopen and crash, atomic batches, the size limit, and refusing damaged or
//! foreign files.

mod common;

use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::process::{Command as Process, Stdio};

use aspen_node::limits::MIN_DB_BYTES;
use aspen_node::storage::redb::DB_FILE_NAME;
use aspen_node::storage::snapshot::{SnapshotData, SnapshotReader};
use aspen_node::storage::{KvReader, RedbStore, StoreError};
use aspen_node::types::{Response, Vote};
use common::*;
use openraft::storage::{RaftLogReaderExt, RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{RaftLogReader, RaftSnapshotBuilder};
use tempfile::TempDir;
use tokio::io::AsyncReadExt;

const MAX_BYTES: u64 = 64 * 1024 * 1024;

fn open(dir: &TempDir) -> RedbStore {
    RedbStore::open(dir.path(), MAX_BYTES).expect("open store")
}

#[tokio::test]
async fn everything_survives_close_and_reopen() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let (mut log, mut sm) = store.raft_storage();

    let vote = Vote::new_committed(3, 1);
    log.save_vote(&vote).await.unwrap();
    let mut entries = vec![membership_entry(1, 1, &[1, 2, 3])];
    entries.extend((2..=10).map(|i| put(1, i, &format!("key-{i}"), &format!("value-{i}"))));
    log.blocking_append(entries.clone()).await.unwrap();
    log.save_committed(Some(log_id(1, 8))).await.unwrap();
    sm.apply(entries[..8].to_vec()).await.unwrap();
    let snapshot = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    log.purge(log_id(1, 5)).await.unwrap();
    let usage = store.usage();
    drop((log, sm));
    store.close().unwrap();

    let store = open(&dir);
    let (mut log, mut sm) = store.raft_storage();
    assert_eq!(log.read_vote().await.unwrap(), Some(vote));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 8)));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 5)));
    assert_eq!(state.last_log_id, Some(log_id(1, 10)));
    assert_eq!(
        log.try_get_log_entries(0..).await.unwrap(),
        entries[5..].to_vec()
    );

    let (applied, membership) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 8)));
    assert_eq!(membership.log_id(), &Some(log_id(1, 1)));
    assert_eq!(membership.membership(), &common::membership(&[1, 2, 3]));
    assert_eq!(store.get("key-8").unwrap().unwrap().value, "value-8");
    // The seventh command applied (entry 1 is the membership).
    assert_eq!(store.get("key-8").unwrap().unwrap().revision, 7);
    assert!(
        store.get("key-9").unwrap().is_none(),
        "entry 9 was never applied"
    );

    let current = sm
        .get_current_snapshot()
        .await
        .unwrap()
        .expect("snapshot kept");
    assert_eq!(current.meta, snapshot.meta);
    let SnapshotData::File(mut file) = *current.snapshot else {
        panic!("redb snapshots are files");
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).await.unwrap();
    let mut reader = SnapshotReader::new(bytes.as_slice()).unwrap();
    let mut keys = Vec::new();
    while let Some((key, _)) = reader.next_record().unwrap() {
        keys.push(key);
    }
    assert_eq!(keys.len(), 7, "keys 2..=8 are in the snapshot: {keys:?}");

    let reopened = store.usage();
    assert_eq!(reopened.live_bytes, usage.live_bytes);
}

#[tokio::test]
async fn appended_entries_are_not_applied_until_asked() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let (mut log, mut sm) = store.raft_storage();
    log.blocking_append([put(1, 1, "a", "1"), put(1, 2, "b", "2")])
        .await
        .unwrap();
    assert!(store.get("a").unwrap().is_none());
    assert_eq!(sm.applied_state().await.unwrap().0, None);
    drop((log, sm));
    store.close().unwrap();

    let store = open(&dir);
    let (mut log, _sm) = store.raft_storage();
    assert_eq!(log.try_get_log_entries(1..=2).await.unwrap().len(), 2);
    assert!(store.get("a").unwrap().is_none());
}

/// Environment variable that turns this test binary into the crash victim.
const CRASH_CHILD_DIR: &str = "ASPEN_TEST_CRASH_CHILD_DIR";

/// Run by `appended_entries_survive_sigkill` in a child process: as Raft
/// does, reports the previous entry committed, appends and applies in a loop,
/// reporting each durable append on stdout, until killed.
#[tokio::test]
async fn crash_child() {
    let Ok(dir) = std::env::var(CRASH_CHILD_DIR) else {
        return;
    };
    let store = RedbStore::open(std::path::Path::new(&dir), MAX_BYTES).unwrap();
    let (mut log, mut sm) = store.raft_storage();
    let mut stdout = std::io::stdout();
    for index in 1.. {
        let entry = put(1, index, &format!("k{index:06}"), "v");
        if index > 1 {
            log.save_committed(Some(log_id(1, index - 1)))
                .await
                .unwrap();
        }
        log.blocking_append([entry.clone()]).await.unwrap();
        writeln!(stdout, "appended {index}").unwrap();
        stdout.flush().unwrap();
        sm.apply([entry]).await.unwrap();
    }
}

#[test]
fn appended_entries_survive_sigkill() {
    use std::io::{BufRead, BufReader};

    let dir = TempDir::new().unwrap();
    let mut child = Process::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CRASH_CHILD_DIR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut acknowledged = 0u64;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(index) = line.strip_prefix("appended ") {
            acknowledged = index.parse().unwrap();
            if acknowledged >= 200 {
                break;
            }
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(acknowledged >= 200, "child stopped early at {acknowledged}");

    let store = RedbStore::open(dir.path(), MAX_BYTES).expect("reopen after SIGKILL");
    let (txn_entries, committed) = futures::executor::block_on(async {
        let (mut log, _) = store.raft_storage();
        let entries = log.try_get_log_entries(1..=acknowledged).await.unwrap();
        (entries, log.read_committed().await.unwrap())
    });
    // The committed id travels with the next append: the one reported before
    // the last acknowledged append is on disk (or the next, if an append after
    // it landed unreported), and it never runs past the log.
    let committed = committed.expect("a committed id survives").index;
    assert!(
        (acknowledged - 1..=acknowledged).contains(&committed),
        "committed {committed} after {acknowledged} acknowledged appends"
    );
    assert_eq!(
        txn_entries.len() as u64,
        acknowledged,
        "an acknowledged append was lost"
    );
    // Applied state may lag the log after a crash (applies are not fsynced), but
    // never runs ahead of it, and whatever is applied is consistent.
    let applied = store
        .applied_state()
        .unwrap()
        .last_applied
        .map_or(0, |id| id.index);
    assert!(applied <= acknowledged + 1);
    for index in 1..=applied {
        assert!(store.get(&format!("k{index:06}")).unwrap().is_some());
    }
}

fn value_of(bytes: usize) -> String {
    "x".repeat(bytes)
}

/// Appends and applies `entries` the way Raft does: a durable append, then a
/// (not fsynced) apply, which a later flush of the overlay writes out.
fn replicate(store: &RedbStore, entries: Vec<aspen_node::types::Entry>) -> Result<(), StoreError> {
    store.append_entries(&entries)?;
    store.apply_batch(entries)?;
    Ok(())
}

#[test]
fn a_batch_that_cannot_be_written_applies_nothing_across_reopen() {
    let dir = TempDir::new().unwrap();
    let store = RedbStore::open(dir.path(), MIN_DB_BYTES).unwrap();
    replicate(&store, vec![put(1, 1, "before", "ok"), blank(1, 2)]).unwrap();
    store.close().unwrap();

    // 24 values of 64 KiB cannot fit in a 1 MiB file. The batch applies in
    // memory, but writing it out at close fails as a whole.
    let store = RedbStore::open(dir.path(), MIN_DB_BYTES).unwrap();
    let batch: Vec<_> = (3..27)
        .map(|i| put(1, i, &format!("big-{i}"), &value_of(64 * 1024)))
        .collect();
    store.apply_batch(batch).unwrap();
    assert_eq!(store.scan("big-", None, 100).unwrap().len(), 24);
    let err = store.close().unwrap_err();
    assert!(err.is_full(), "expected storage full, got {err}");

    let store = RedbStore::open(dir.path(), MIN_DB_BYTES).unwrap();
    assert_eq!(
        store.applied_state().unwrap().last_applied,
        Some(log_id(1, 2))
    );
    assert_eq!(store.get("before").unwrap().unwrap().value, "ok");
    assert!(store.scan("big-", None, 100).unwrap().is_empty());
}

#[test]
fn storage_full_refuses_writes_keeps_reads_and_recovers_after_deletes() {
    let dir = TempDir::new().unwrap();
    let store = RedbStore::open(dir.path(), MIN_DB_BYTES).unwrap();
    let value = value_of(2 * 1024);
    let mut index = 0;
    let full = loop {
        index += 1;
        assert!(index < 5000, "the size limit was never enforced");
        if let Err(e) = replicate(&store, vec![put(1, index, &format!("k{index:04}"), &value)]) {
            break e;
        }
    };
    let written = index - 1;
    assert!(written > 50, "only {written} values of 2 KiB fit in 1 MiB");
    assert!(full.is_full(), "{full}");
    let message = full.to_string();
    assert!(message.contains("storage full"), "{message}");
    assert!(message.contains(DB_FILE_NAME), "{message}");
    let usage = store.usage();
    assert!(usage.disk_bytes <= MIN_DB_BYTES, "{usage:?}");
    assert_eq!(usage.max_bytes, MIN_DB_BYTES);

    // Reads keep working; writes keep being refused with the same error.
    assert_eq!(store.scan("k", None, 10_000).unwrap().len() as u64, written);
    let again = replicate(&store, vec![delete(1, index, "k0001")]).unwrap_err();
    assert!(again.is_full(), "{again}");

    // Reopening recovers the last commit. Every appended entry is still in
    // the log (the state machine may lag it: Raft re-applies from the log).
    // Deletes then free pages that new writes reuse without passing the limit.
    store.close().unwrap();
    let store = RedbStore::open(dir.path(), MIN_DB_BYTES).unwrap();
    let logged = futures::executor::block_on(async {
        let (mut log, _) = store.raft_storage();
        log.try_get_log_entries(1..=written).await.unwrap()
    });
    assert_eq!(logged.len() as u64, written, "an appended entry was lost");
    let written = store.scan("k", None, 10_000).unwrap().len() as u64;
    let mut next = index + 1;
    for key in (1..=written).step_by(2) {
        replicate(&store, vec![delete(1, next, &format!("k{key:04}"))])
            .unwrap_or_else(|e| panic!("delete of k{key:04} refused: {e}"));
        next += 1;
    }
    // Applied changes reach the database at the next flush; closing flushes.
    store.close().unwrap();
    let store = RedbStore::open(dir.path(), MIN_DB_BYTES).unwrap();
    for _ in 0..(written / 4) {
        replicate(
            &store,
            vec![put(1, next, &format!("again{next:04}"), &value)],
        )
        .unwrap_or_else(|e| panic!("write after deletes refused: {e}"));
        next += 1;
    }
    assert!(store.usage().disk_bytes <= MIN_DB_BYTES);
}

#[test]
fn a_size_limit_below_the_minimum_is_refused() {
    let dir = TempDir::new().unwrap();
    let err = RedbStore::open(dir.path(), MIN_DB_BYTES - 1).unwrap_err();
    assert!(matches!(err, StoreError::Config(_)), "{err}");
}

/// Writes a small populated store and returns the database file's path.
fn populated(dir: &TempDir) -> std::path::PathBuf {
    let store = open(dir);
    let batch: Vec<_> = (1..=200)
        .map(|i| put(1, i, &format!("key-{i:04}"), &value_of(200)))
        .collect();
    store.append_entries(&batch).unwrap();
    store.apply_batch(batch).unwrap();
    let path = store.path().to_path_buf();
    store.close().unwrap();
    path
}

fn assert_refused(dir: &TempDir, what: &str) -> StoreError {
    let err = RedbStore::open(dir.path(), MAX_BYTES).expect_err(what);
    let message = err.to_string();
    assert!(
        message.contains(&dir.path().join(DB_FILE_NAME).display().to_string()),
        "{what}: the error does not name the file: {message}"
    );
    err
}

#[test]
fn overwritten_bytes_are_detected_at_open() {
    let dir = TempDir::new().unwrap();
    let path = populated(&dir);
    let len = fs::metadata(&path).unwrap().len();
    let mut file = OpenOptions::new().write(true).open(&path).unwrap();
    file.seek(SeekFrom::Start(len / 2)).unwrap();
    file.write_all(&[0xA5; 8192]).unwrap();
    file.sync_all().unwrap();
    drop(file);
    let err = assert_refused(&dir, "a corrupted file must not open");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
}

#[test]
fn a_truncated_file_is_refused() {
    let dir = TempDir::new().unwrap();
    let path = populated(&dir);
    let len = fs::metadata(&path).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len / 3)
        .unwrap();
    assert_refused(&dir, "a truncated file must not open");
}

#[test]
fn a_file_that_is_not_a_database_is_refused() {
    let dir = TempDir::new().unwrap();
    fs::write(
        dir.path().join(DB_FILE_NAME),
        b"definitely not a redb file, just text\n".repeat(200),
    )
    .unwrap();
    assert_refused(&dir, "a text file must not open");
}

#[test]
fn a_redb_file_of_another_application_is_refused() {
    let dir = TempDir::new().unwrap();
    {
        let db = redb::Database::create(dir.path().join(DB_FILE_NAME)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let table: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("orders");
            txn.open_table(table).unwrap().insert("a", &1).unwrap();
        }
        txn.commit().unwrap();
    }
    let err = assert_refused(&dir, "a foreign redb file must not open");
    assert!(matches!(err, StoreError::Foreign { .. }), "{err}");
    assert!(err.to_string().contains("orders"), "{err}");
}

#[test]
fn a_file_from_a_newer_schema_is_refused() {
    let dir = TempDir::new().unwrap();
    populated(&dir);
    {
        let db = redb::Database::open(dir.path().join(DB_FILE_NAME)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let table: redb::TableDefinition<&str, &[u8]> =
                redb::TableDefinition::new("aspen_meta");
            txn.open_table(table)
                .unwrap()
                .insert("schema_version", 2u32.to_le_bytes().as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let err = assert_refused(&dir, "a newer schema must not open");
    assert!(
        matches!(
            err,
            StoreError::SchemaTooNew {
                found: 2,
                supported: 1,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn closing_releases_the_file_for_an_immediate_reopen() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let err = RedbStore::open(dir.path(), MAX_BYTES).unwrap_err();
    assert!(matches!(err, StoreError::AlreadyOpen { .. }), "{err}");

    let (mut log, mut sm) = store.raft_storage();
    log.blocking_append([put(1, 1, "a", "1")]).await.unwrap();
    sm.apply([put(1, 1, "a", "1")]).await.unwrap();
    let err = store.clone().close().unwrap_err();
    assert!(err.to_string().contains("still holds it"), "{err}");
    drop((log, sm));
    store.close().unwrap();

    for _ in 0..3 {
        let store = open(&dir);
        assert_eq!(store.get("a").unwrap().unwrap().value, "1");
        store.close().unwrap();
    }
}

#[tokio::test]
async fn a_damaged_snapshot_leaves_the_state_untouched() {
    let leader_dir = TempDir::new().unwrap();
    let leader = open(&leader_dir);
    let (_, mut leader_sm) = leader.raft_storage();
    leader_sm
        .apply([membership_entry(1, 1, &[1]), put(1, 2, "from-leader", "x")])
        .await
        .unwrap();
    let snapshot = leader_sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let SnapshotData::File(mut file) = *snapshot.snapshot else {
        panic!("redb snapshots are files");
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).await.unwrap();

    let follower_dir = TempDir::new().unwrap();
    let follower = open(&follower_dir);
    let (_, mut sm) = follower.raft_storage();
    sm.apply([put(1, 1, "local", "y")]).await.unwrap();

    let mut damaged = bytes.clone();
    let at = damaged.len() - 10;
    damaged[at] ^= 0xFF;
    let err = sm
        .install_snapshot(
            &snapshot.meta,
            Box::new(SnapshotData::Memory(std::io::Cursor::new(damaged))),
        )
        .await;
    assert!(err.is_err(), "a damaged snapshot was installed");
    assert_eq!(follower.get("local").unwrap().unwrap().value, "y");
    assert!(follower.get("from-leader").unwrap().is_none());
    assert!(sm.get_current_snapshot().await.unwrap().is_none());

    sm.install_snapshot(
        &snapshot.meta,
        Box::new(SnapshotData::Memory(std::io::Cursor::new(bytes))),
    )
    .await
    .unwrap();
    assert!(
        follower.get("local").unwrap().is_none(),
        "old state replaced"
    );
    assert_eq!(follower.get("from-leader").unwrap().unwrap().value, "x");
    assert_eq!(
        sm.applied_state().await.unwrap().0,
        snapshot.meta.last_log_id
    );
    let files: Vec<_> = fs::read_dir(follower_dir.path().join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        files.len(),
        1,
        "exactly the installed snapshot remains: {files:?}"
    );
}

#[test]
fn revisions_count_applied_commands_across_batches_and_reopen() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let responses = store
        .apply_batch(vec![blank(1, 1), put(1, 2, "a", "1"), delete(1, 3, "a")])
        .unwrap();
    assert_eq!(
        responses,
        vec![
            Response::Empty,
            Response::Put { revision: 1 },
            Response::Delete {
                revision: 2,
                deleted: true
            }
        ]
    );
    store.close().unwrap();
    let store = open(&dir);
    let batch = aspen_node::types::Command::Batch(vec![
        aspen_node::types::Command::Put {
            key: "b".into(),
            value: "2".into(),
        },
        aspen_node::types::Command::Delete { key: "b".into() },
    ]);
    let responses = store.apply_batch(vec![command(1, 4, batch)]).unwrap();
    assert_eq!(
        responses,
        vec![Response::Batch(vec![
            Response::Put { revision: 3 },
            Response::Delete {
                revision: 4,
                deleted: true
            }
        ])]
    );
}

#[tokio::test]
async fn log_reader_sees_entries_as_soon_as_append_returns() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let (mut log, _) = store.raft_storage();
    let mut reader = log.get_log_reader().await;
    log.blocking_append((1..=5).map(|i| blank(1, i)))
        .await
        .unwrap();
    assert_eq!(reader.try_get_log_entries(1..=5).await.unwrap().len(), 5);
    assert!(reader.try_get_log_entry(6).await.unwrap().is_none());
    log.truncate(log_id(1, 3)).await.unwrap();
    assert_eq!(reader.try_get_log_entries(0..).await.unwrap().len(), 2);
    assert_eq!(store.usage().live_bytes, {
        let entries = reader.try_get_log_entries(0..).await.unwrap();
        entries
            .iter()
            .map(|e| {
                let len = aspen_node::storage::codec::encode_entry(e).len() as u64;
                aspen_node::storage::codec::stored_footprint(len)
            })
            .sum::<u64>()
    });
}
