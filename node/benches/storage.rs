//! Storage throughput: appending to the Raft log and applying to the state
//! machine, for both stores, at the batch sizes Raft hands them.
//!
//! `cargo bench -p aspen-node --bench storage`. Entries are puts of a 16-byte
//! key and a 256-byte value. On the redb store every append is one durable
//! commit (one fsync), so entries per second grow with the batch size: that is
//! the group commit the write path relies on.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use aspen_node::storage::{MemLogStore, MemStateMachine, RedbStore, memory};
use aspen_node::types::{Command, Entry};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use openraft::storage::{RaftLogStorageExt, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload, LogId};
use tempfile::TempDir;

const BATCH_SIZES: [u64; 3] = [1, 16, 256];
const VALUE_BYTES: usize = 256;

fn batch(next: &AtomicU64, len: u64) -> Vec<Entry> {
    let first = next.fetch_add(len, Ordering::Relaxed);
    (first..first + len)
        .map(|index| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command::Put {
                key: format!("key-{:012}", index % 100_000),
                value: "v".repeat(VALUE_BYTES),
            }),
        })
        .collect()
}

enum Stores {
    Memory(MemLogStore, MemStateMachine),
    // The store is dropped before its directory.
    Redb { store: RedbStore, _dir: TempDir },
}

impl Stores {
    fn open(name: &str) -> Self {
        match name {
            "memory" => {
                let (log, sm) = memory::new_store();
                Stores::Memory(log, sm)
            }
            _ => {
                let dir = TempDir::new().expect("temp dir");
                let store = RedbStore::open(dir.path(), 8 << 30).expect("open redb");
                Stores::Redb { store, _dir: dir }
            }
        }
    }

    async fn append(&self, entries: Vec<Entry>) {
        match self {
            Stores::Memory(log, _) => log.clone().blocking_append(entries).await.unwrap(),
            Stores::Redb { store, .. } => {
                let (mut log, _) = store.raft_storage();
                log.blocking_append(entries).await.unwrap();
            }
        }
    }

    async fn apply(&self, entries: Vec<Entry>) {
        match self {
            Stores::Memory(_, sm) => {
                black_box(sm.clone().apply(entries).await.unwrap());
            }
            Stores::Redb { store, .. } => {
                let (_, mut sm) = store.raft_storage();
                black_box(sm.apply(entries).await.unwrap());
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Op {
    Append,
    Apply,
}

/// Measures `op` on a fresh store of each backend at each batch size.
fn measure(c: &mut Criterion, group: &str, op: Op) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut group = c.benchmark_group(group);
    for backend in ["memory", "redb"] {
        for size in BATCH_SIZES {
            let stores = Stores::open(backend);
            let next = AtomicU64::new(1);
            group.throughput(Throughput::Elements(size));
            group.bench_with_input(BenchmarkId::new(backend, size), &size, |b, &size| {
                b.iter_batched(
                    || batch(&next, size),
                    |entries| {
                        rt.block_on(async {
                            match op {
                                Op::Append => stores.append(entries).await,
                                Op::Apply => stores.apply(entries).await,
                            }
                        })
                    },
                    BatchSize::SmallInput,
                );
            });
        }
    }
    group.finish();
}

fn append(c: &mut Criterion) {
    measure(c, "append", Op::Append);
}

fn apply(c: &mut Criterion) {
    measure(c, "apply", Op::Apply);
}

criterion_group!(benches, append, apply);
criterion_main!(benches);
