//! The in-memory store: the same semantics as the redb store, kept in process
//! memory, for fast tests and simulations.
//!
//! Every operation takes one lock for its whole duration, which is what makes
//! an applied batch, a purge or a snapshot install atomic here.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine};
use openraft::{
    AnyError, EntryPayload, OptionalSend, RaftLogReader, RaftSnapshotBuilder, StorageIOError,
};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::kv::{KvTable, apply_logged};
use super::snapshot::{SnapshotData, SnapshotReader, SnapshotWriter, snapshot_id};
use super::{AppliedState, KvReader, StorageUsage, StoreError, codec, scan_start};
use crate::types::{
    Entry, LogId, Response, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
    Versioned, Vote,
};

/// Creates an empty in-memory log store and state machine.
pub fn new_store() -> (MemLogStore, MemStateMachine) {
    (MemLogStore::default(), MemStateMachine::default())
}

#[derive(Debug, Default)]
struct LogInner {
    vote: Option<Vote>,
    committed: Option<LogId>,
    last_purged: Option<LogId>,
    log: BTreeMap<u64, Entry>,
}

/// In-memory Raft log. Clones share the same log.
#[derive(Debug, Clone, Default)]
pub struct MemLogStore {
    inner: Arc<Mutex<LogInner>>,
}

impl MemLogStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, LogInner> {
        // A panic while holding the lock means an invariant broke mid-update.
        self.inner.lock().expect("in-memory log lock poisoned")
    }
}

impl RaftLogReader<TypeConfig> for MemLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(self
            .lock()
            .log
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for MemLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let inner = self.lock();
        let last = inner.log.values().next_back().map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id: last.or(inner.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.lock().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.lock().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        {
            let mut inner = self.lock();
            for entry in entries {
                inner.log.insert(entry.log_id.index, entry);
            }
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.lock().log.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut inner = self.lock();
        assert!(
            inner.last_purged <= Some(log_id),
            "purge must not move backwards"
        );
        inner.last_purged = Some(log_id);
        let keep = inner.log.split_off(&(log_id.index + 1));
        inner.log = keep;
        Ok(())
    }
}

#[derive(Debug, Default)]
struct SmInner {
    data: BTreeMap<String, Versioned>,
    data_bytes: u64,
    /// Commands applied so far: the last revision handed out.
    revision: u64,
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

/// Accounted space of a key and its value record, as the redb store counts it.
fn record_bytes(key: &str, value: &Versioned) -> u64 {
    codec::stored_footprint(key.len() as u64 + codec::value_record_len(&value.value))
}

/// The in-memory key space during one applied batch, keeping the byte count.
struct MemKv<'a> {
    data: &'a mut BTreeMap<String, Versioned>,
    data_bytes: &'a mut u64,
}

impl KvTable for MemKv<'_> {
    type Error = Infallible;

    fn get(&self, key: &str) -> Result<Option<Versioned>, Infallible> {
        Ok(self.data.get(key).cloned())
    }

    fn put(&mut self, key: &str, revision: u64, value: &str) -> Result<(), Infallible> {
        let value = Versioned {
            value: value.to_owned(),
            revision,
        };
        *self.data_bytes += record_bytes(key, &value);
        if let Some(old) = self.data.insert(key.to_owned(), value) {
            *self.data_bytes -= record_bytes(key, &old);
        }
        Ok(())
    }

    fn delete(&mut self, key: &str) -> Result<bool, Infallible> {
        let old = self.data.remove(key);
        if let Some(old) = &old {
            *self.data_bytes -= record_bytes(key, old);
        }
        Ok(old.is_some())
    }
}

#[derive(Debug)]
struct CurrentSnapshot {
    meta: SnapshotMeta,
    bytes: Arc<Vec<u8>>,
}

/// In-memory state machine. Clones share the same state.
#[derive(Debug, Clone, Default)]
pub struct MemStateMachine {
    sm: Arc<RwLock<SmInner>>,
    snapshot: Arc<Mutex<Option<CurrentSnapshot>>>,
    snapshots_built: Arc<AtomicU64>,
    snapshots_installed: Arc<AtomicU64>,
}

impl MemStateMachine {
    pub fn reader(&self) -> MemReader {
        MemReader {
            sm: self.sm.clone(),
            snapshots_built: self.snapshots_built.clone(),
            snapshots_installed: self.snapshots_installed.clone(),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, SmInner> {
        self.sm
            .write()
            .expect("in-memory state machine lock poisoned")
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, SmInner> {
        self.sm
            .read()
            .expect("in-memory state machine lock poisoned")
    }
}

impl RaftSnapshotBuilder<TypeConfig> for MemStateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let (meta, bytes) = {
            let sm = self.read();
            let mut writer = SnapshotWriter::new(Vec::new(), sm.revision)
                .map_err(|e| StorageIOError::write_snapshot(None, AnyError::new(&e)))?;
            for (key, versioned) in &sm.data {
                let record = codec::encode_value(versioned.revision, &versioned.value);
                writer
                    .write_record(key.as_bytes(), &record)
                    .map_err(|e| StorageIOError::write_snapshot(None, AnyError::new(&e)))?;
            }
            let (bytes, _) = writer
                .finish()
                .map_err(|e| StorageIOError::write_snapshot(None, AnyError::new(&e)))?;
            let seq = self.snapshots_built.fetch_add(1, Ordering::Relaxed) + 1;
            let meta = SnapshotMeta {
                last_log_id: sm.last_applied,
                last_membership: sm.membership.clone(),
                snapshot_id: snapshot_id(sm.last_applied, seq),
            };
            (meta, Arc::new(bytes))
        };
        *self.snapshot.lock().expect("snapshot lock poisoned") = Some(CurrentSnapshot {
            meta: meta.clone(),
            bytes: bytes.clone(),
        });
        Ok(Snapshot {
            meta,
            snapshot: Box::new(SnapshotData::Memory(Cursor::new(bytes.to_vec()))),
        })
    }
}

impl RaftStateMachine<TypeConfig> for MemStateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let sm = self.read();
        Ok((sm.last_applied, sm.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut sm = self.write();
        let mut responses = Vec::new();
        for entry in entries {
            sm.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => Response::Empty,
                EntryPayload::Normal(command) => {
                    let SmInner {
                        data,
                        data_bytes,
                        revision,
                        ..
                    } = &mut *sm;
                    let mut kv = MemKv { data, data_bytes };
                    let Ok(response) = apply_logged(&mut kv, &command, revision);
                    response
                }
                EntryPayload::Membership(membership) => {
                    sm.membership = StoredMembership::new(Some(entry.log_id), membership);
                    Response::Empty
                }
            };
            responses.push(response);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, StorageError> {
        Ok(Box::default())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        mut snapshot: Box<SnapshotData>,
    ) -> Result<(), StorageError> {
        let signature = Some(meta.signature());
        let read_err =
            |e: std::io::Error| StorageIOError::read_snapshot(signature.clone(), AnyError::new(&e));
        let mut bytes = Vec::new();
        snapshot
            .seek(std::io::SeekFrom::Start(0))
            .await
            .map_err(read_err)?;
        snapshot.read_to_end(&mut bytes).await.map_err(read_err)?;

        // Decode everything first: a damaged snapshot leaves the state untouched.
        let mut data = BTreeMap::new();
        let mut data_bytes = 0;
        let mut reader = SnapshotReader::new(bytes.as_slice()).map_err(read_err)?;
        let revision = reader.revision();
        while let Some((key, record)) = reader.next_record().map_err(read_err)? {
            let versioned = codec::decode_value(&record)
                .map_err(|e| StorageIOError::read_snapshot(signature.clone(), AnyError::new(&e)))?;
            data_bytes += record_bytes(&key, &versioned);
            data.insert(key, versioned);
        }
        {
            let mut sm = self.write();
            sm.data = data;
            sm.data_bytes = data_bytes;
            sm.revision = revision;
            sm.last_applied = meta.last_log_id;
            sm.membership = meta.last_membership.clone();
        }
        *self.snapshot.lock().expect("snapshot lock poisoned") = Some(CurrentSnapshot {
            meta: meta.clone(),
            bytes: Arc::new(bytes),
        });
        self.snapshots_installed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let current = self.snapshot.lock().expect("snapshot lock poisoned");
        Ok(current.as_ref().map(|current| Snapshot {
            meta: current.meta.clone(),
            snapshot: Box::new(SnapshotData::Memory(Cursor::new(current.bytes.to_vec()))),
        }))
    }
}

/// Reads the in-memory state machine.
#[derive(Debug, Clone)]
pub struct MemReader {
    sm: Arc<RwLock<SmInner>>,
    snapshots_built: Arc<AtomicU64>,
    snapshots_installed: Arc<AtomicU64>,
}

impl KvReader for MemReader {
    fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let sm = self
            .sm
            .read()
            .expect("in-memory state machine lock poisoned");
        Ok(sm.data.get(key).cloned())
    }

    fn scan(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, Versioned)>, StoreError> {
        let sm = self
            .sm
            .read()
            .expect("in-memory state machine lock poisoned");
        let start = scan_start(prefix, start_after);
        Ok(sm
            .data
            .range::<str, _>((Bound::Included(start), Bound::Unbounded))
            .filter(|(k, _)| Some(k.as_str()) != start_after)
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit as usize)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn applied_state(&self) -> Result<AppliedState, StoreError> {
        let sm = self
            .sm
            .read()
            .expect("in-memory state machine lock poisoned");
        Ok(AppliedState {
            last_applied: sm.last_applied,
            membership: sm.membership.clone(),
        })
    }

    fn usage(&self) -> StorageUsage {
        let sm = self
            .sm
            .read()
            .expect("in-memory state machine lock poisoned");
        StorageUsage {
            file_bytes: 0,
            disk_bytes: 0,
            max_bytes: u64::MAX,
            live_bytes: sm.data_bytes,
            durable_commits: 0,
            durable_commit_micros: 0,
            snapshots_built: self.snapshots_built.load(Ordering::Relaxed),
            snapshots_installed: self.snapshots_installed.load(Ordering::Relaxed),
        }
    }
}
