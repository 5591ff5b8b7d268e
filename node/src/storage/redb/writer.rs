//! Group commit for the Raft log: one writer thread turns every log write
//! queued while the previous commit was in flight into one transaction and
//! one fsync.
//!
//! openraft 0.9 hands each client proposal to `append` separately and lets
//! `append` return before the entries are durable, reporting durability
//! through a callback. `append` therefore only queues its entries and makes
//! them visible to log readers (the `View`); the writer thread drains the
//! queue, applies every queued operation in order inside one write
//! transaction, commits it once, and then runs the callbacks. Truncate, purge
//! and vote go through the same queue, so all log I/O stays in the order
//! openraft issued it, and their callers wait for the commit.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;

use openraft::storage::LogFlushed;
use redb::{ReadableTable, WriteTransaction};
use tokio::sync::oneshot;

use super::RedbStore;
use super::schema::{KEY_COMMITTED, KEY_LAST_PURGED, KEY_LOG_BYTES, KEY_VOTE, RAFT_META};
use crate::storage::{StoreError, codec};
use crate::types::{Entry, LogId, TypeConfig, Vote};

/// Largest number of queued operations folded into one transaction; bounds
/// the transaction's size when the queue runs far ahead of the disk.
const MAX_OPS_PER_COMMIT: usize = 4096;

/// A log write waiting for the writer thread.
pub(super) enum Op {
    Append {
        entries: Vec<Entry>,
        flushed: LogFlushed<TypeConfig>,
    },
    Truncate {
        index: u64,
        done: oneshot::Sender<Result<(), String>>,
    },
    Purge {
        upto: LogId,
        done: oneshot::Sender<Result<(), String>>,
    },
    SaveVote {
        vote: Vote,
        done: oneshot::Sender<Result<(), String>>,
    },
    /// Not fsynced on its own: losing it only means re-applying less at start.
    SaveCommitted {
        committed: Option<LogId>,
        done: oneshot::Sender<Result<(), String>>,
    },
}

impl Op {
    fn durable(&self) -> bool {
        !matches!(self, Op::SaveCommitted { .. })
    }
}

/// Log entries appended but not yet committed to the database, and the index
/// from which committed entries are stale because a truncate is queued.
#[derive(Debug, Default)]
pub(super) struct View {
    pub pending: BTreeMap<u64, Entry>,
    pub hidden_from: Option<u64>,
}

#[derive(Default)]
struct Queue {
    ops: Vec<Op>,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    view: RwLock<View>,
}

/// The writer thread and its queue. Dropping it drains the queue and stops
/// the thread, which releases its handle on the store.
pub(super) struct LogWriter {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogWriter").finish_non_exhaustive()
    }
}

impl LogWriter {
    pub(super) fn start(store: RedbStore) -> Self {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            view: RwLock::new(View::default()),
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("aspen-log-writer".into())
            .spawn(move || run(&store, &worker))
            .expect("the log writer thread starts");
        LogWriter {
            shared,
            thread: Some(thread),
        }
    }

    /// Makes `entries` readable at once and queues them for the next commit.
    pub(super) fn append(&self, entries: Vec<Entry>, flushed: LogFlushed<TypeConfig>) {
        {
            let mut view = self.view_mut();
            for entry in &entries {
                view.pending.insert(entry.log_id.index, entry.clone());
            }
        }
        self.push(Op::Append { entries, flushed });
    }

    /// Hides entries from `index` on at once, then waits for the commit.
    pub(super) async fn truncate(&self, index: u64) -> Result<(), String> {
        {
            let mut view = self.view_mut();
            view.pending.split_off(&index);
            view.hidden_from = Some(view.hidden_from.map_or(index, |h| h.min(index)));
        }
        let (done, wait) = oneshot::channel();
        self.push(Op::Truncate { index, done });
        wait.await
            .unwrap_or_else(|_| Err("the log writer stopped".into()))
    }

    pub(super) async fn purge(&self, upto: LogId) -> Result<(), String> {
        let (done, wait) = oneshot::channel();
        self.push(Op::Purge { upto, done });
        wait.await
            .unwrap_or_else(|_| Err("the log writer stopped".into()))
    }

    pub(super) async fn save_vote(&self, vote: Vote) -> Result<(), String> {
        let (done, wait) = oneshot::channel();
        self.push(Op::SaveVote { vote, done });
        wait.await
            .unwrap_or_else(|_| Err("the log writer stopped".into()))
    }

    pub(super) async fn save_committed(&self, committed: Option<LogId>) -> Result<(), String> {
        let (done, wait) = oneshot::channel();
        self.push(Op::SaveCommitted { committed, done });
        wait.await
            .unwrap_or_else(|_| Err("the log writer stopped".into()))
    }

    /// A copy of the pending entries in `range`, and the hidden-from mark,
    /// taken together.
    pub(super) fn snapshot(&self, range: (Bound<u64>, Bound<u64>)) -> (Vec<Entry>, Option<u64>) {
        let view = self.shared.view.read().expect("log view lock poisoned");
        (
            view.pending.range(range).map(|(_, e)| e.clone()).collect(),
            view.hidden_from,
        )
    }

    /// The last pending entry's id, and the hidden-from mark.
    pub(super) fn last_pending(&self) -> (Option<LogId>, Option<u64>) {
        let view = self.shared.view.read().expect("log view lock poisoned");
        (
            view.pending.values().next_back().map(|e| e.log_id),
            view.hidden_from,
        )
    }

    fn view_mut(&self) -> std::sync::RwLockWriteGuard<'_, View> {
        self.shared.view.write().expect("log view lock poisoned")
    }

    fn push(&self, op: Op) {
        let mut queue = self.shared.queue.lock().expect("log queue lock poisoned");
        queue.ops.push(op);
        self.shared.wake.notify_one();
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        self.shared
            .queue
            .lock()
            .expect("log queue lock poisoned")
            .closed = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(store: &RedbStore, shared: &Shared) {
    loop {
        let ops = {
            let mut queue = shared.queue.lock().expect("log queue lock poisoned");
            while queue.ops.is_empty() && !queue.closed {
                queue = shared.wake.wait(queue).expect("log queue lock poisoned");
            }
            if queue.ops.is_empty() {
                return;
            }
            let take = queue.ops.len().min(MAX_OPS_PER_COMMIT);
            queue.ops.drain(..take).collect::<Vec<_>>()
        };
        commit(store, shared, ops);
    }
}

/// Applies `ops` in order in one transaction, commits, updates the view and
/// reports to every caller.
fn commit(store: &RedbStore, shared: &Shared, ops: Vec<Op>) {
    let durable = ops.iter().any(Op::durable);
    let result = write_all(store, &ops, durable);
    if result.is_ok() {
        let mut view = shared.view.write().expect("log view lock poisoned");
        for op in &ops {
            match op {
                Op::Append { entries, .. } => {
                    for entry in entries {
                        // Leave an entry that a later append replaced.
                        if view.pending.get(&entry.log_id.index).map(|e| e.log_id)
                            == Some(entry.log_id)
                        {
                            view.pending.remove(&entry.log_id.index);
                        }
                    }
                }
                Op::Truncate { index, .. } if view.hidden_from == Some(*index) => {
                    view.hidden_from = None;
                }
                _ => {}
            }
        }
    }
    let outcome = result.map_err(|e| {
        tracing::error!(error = %e, "writing the Raft log failed");
        e.to_string()
    });
    for op in ops {
        match op {
            Op::Append { flushed, .. } => {
                flushed.log_io_completed(outcome.clone().map_err(std::io::Error::other));
            }
            Op::Truncate { done, .. }
            | Op::Purge { done, .. }
            | Op::SaveVote { done, .. }
            | Op::SaveCommitted { done, .. } => {
                let _ = done.send(outcome.clone());
            }
        }
    }
}

fn write_all(store: &RedbStore, ops: &[Op], durable: bool) -> Result<(), StoreError> {
    let txn = store.begin_write(durable)?;
    let mut log_bytes = read_u64(store, &txn, KEY_LOG_BYTES)?;
    for op in ops {
        match op {
            Op::Append { entries, .. } => {
                log_bytes = store.insert_entries(&txn, entries, log_bytes)?;
            }
            Op::Truncate { index, .. } => {
                log_bytes -= store.remove_entries(&txn, *index..)?;
            }
            Op::Purge { upto, .. } => {
                let last_purged = store.read_raft_log_id_in(&txn, KEY_LAST_PURGED)?;
                assert!(
                    last_purged <= Some(*upto),
                    "purge must not move backwards: {last_purged:?} -> {upto}"
                );
                log_bytes -= store.remove_entries(&txn, ..=upto.index)?;
                put_meta(store, &txn, KEY_LAST_PURGED, &codec::encode_log_id(upto))?;
            }
            Op::SaveVote { vote, .. } => {
                put_meta(store, &txn, KEY_VOTE, &codec::encode_vote(vote))?
            }
            Op::SaveCommitted { committed, .. } => match committed {
                Some(id) => put_meta(store, &txn, KEY_COMMITTED, &codec::encode_log_id(id))?,
                None => {
                    let mut table = txn
                        .open_table(RAFT_META)
                        .map_err(|e| store.error("open raft_meta", e))?;
                    table
                        .remove(KEY_COMMITTED)
                        .map_err(|e| store.error("write raft_meta", e))?;
                }
            },
        }
    }
    put_meta(store, &txn, KEY_LOG_BYTES, &codec::encode_u64(log_bytes))?;
    store.commit(txn, durable)?;
    store.set_log_bytes(log_bytes);
    Ok(())
}

fn read_u64(
    store: &RedbStore,
    txn: &WriteTransaction,
    key: &'static str,
) -> Result<u64, StoreError> {
    let table = txn
        .open_table(RAFT_META)
        .map_err(|e| store.error("open raft_meta", e))?;
    let value = table
        .get(key)
        .map_err(|e| store.error("read raft_meta", e))?;
    value
        .map(|v| codec::decode_u64(key, v.value()))
        .transpose()
        .map_err(|e| store.codec_error(e))
        .map(Option::unwrap_or_default)
}

fn put_meta(
    store: &RedbStore,
    txn: &WriteTransaction,
    key: &'static str,
    value: &[u8],
) -> Result<(), StoreError> {
    let mut table = txn
        .open_table(RAFT_META)
        .map_err(|e| store.error("open raft_meta", e))?;
    table
        .insert(key, value)
        .map_err(|e| store.error("write raft_meta", e))?;
    Ok(())
}
