//! The Raft log and vote in redb.
//!
//! Writes go through the group-commit writer (`writer`): `append` returns as
//! soon as its entries are readable and reports durability through openraft's
//! callback once the commit that carries them is fsynced. Reads merge the
//! writer's pending entries over what is committed.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader, StorageIOError};
use redb::{ReadTransaction, ReadableTable, WriteTransaction};

use super::RedbStore;
use super::schema::{KEY_COMMITTED, KEY_LAST_PURGED, KEY_LOG_BYTES, KEY_VOTE, LOG, RAFT_META};
use super::writer::LogWriter;
use crate::storage::{StoreError, codec};
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

/// The log half of a redb store, handed to openraft. Clones share the writer;
/// the writer thread stops when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct RedbLogStore {
    store: RedbStore,
    writer: Arc<LogWriter>,
}

impl RedbLogStore {
    pub(super) fn new(store: RedbStore) -> Self {
        let writer = Arc::new(LogWriter::start(store.clone()));
        RedbLogStore { store, writer }
    }
}

fn to_raft(subject: ErrorSubject<u64>, verb: ErrorVerb) -> impl Fn(StoreError) -> StorageError {
    move |e| StorageIOError::new(subject.clone(), verb, AnyError::new(&e)).into()
}

fn writer_failed(subject: ErrorSubject<u64>) -> impl Fn(String) -> StorageError {
    move |message| {
        let e = std::io::Error::other(message);
        StorageIOError::new(subject.clone(), ErrorVerb::Write, AnyError::new(&e)).into()
    }
}

fn read_meta_log_id<T: ReadableTable<&'static str, &'static [u8]>>(
    store: &RedbStore,
    table: &T,
    key: &'static str,
) -> Result<Option<LogId>, StoreError> {
    let value = table
        .get(key)
        .map_err(|e| store.error("read raft_meta", e))?;
    value
        .map(|v| codec::decode_log_id(key, v.value()))
        .transpose()
        .map_err(|e| store.codec_error(e))
}

impl RedbStore {
    fn committed_entries(
        &self,
        txn: &ReadTransaction,
        range: (Bound<u64>, Bound<u64>),
    ) -> Result<Vec<Entry>, StoreError> {
        let table = txn
            .open_table(LOG)
            .map_err(|e| self.error("open raft_log", e))?;
        let mut entries = Vec::new();
        for item in table
            .range::<u64>(range)
            .map_err(|e| self.error("read raft_log", e))?
        {
            let (index, bytes) = item.map_err(|e| self.error("read raft_log", e))?;
            let entry = codec::decode_entry(bytes.value()).map_err(|e| self.codec_error(e))?;
            assert_eq!(
                entry.log_id.index,
                index.value(),
                "log entry stored under the wrong index"
            );
            entries.push(entry);
        }
        Ok(entries)
    }

    /// Inserts `entries` into `txn`, returning the new log byte count.
    pub(super) fn insert_entries(
        &self,
        txn: &WriteTransaction,
        entries: &[Entry],
        mut log_bytes: u64,
    ) -> Result<u64, StoreError> {
        let mut table = txn
            .open_table(LOG)
            .map_err(|e| self.error("open raft_log", e))?;
        for entry in entries {
            let bytes = codec::encode_entry(entry);
            let replaced = table
                .insert(entry.log_id.index, bytes.as_slice())
                .map_err(|e| self.error("append to raft_log", e))?;
            if let Some(old) = replaced {
                log_bytes -= codec::stored_footprint(old.value().len() as u64);
            }
            log_bytes += codec::stored_footprint(bytes.len() as u64);
        }
        Ok(log_bytes)
    }

    /// Inserts `entries` and commits durably, in one transaction: what the
    /// log writer does for a batch, without the writer.
    pub fn append_entries(&self, entries: &[Entry]) -> Result<(), StoreError> {
        let txn = self.begin_write(true)?;
        let log_bytes = self.read_log_bytes(&txn)?;
        let log_bytes = self.insert_entries(&txn, entries, log_bytes)?;
        {
            let mut table = txn
                .open_table(RAFT_META)
                .map_err(|e| self.error("open raft_meta", e))?;
            table
                .insert(KEY_LOG_BYTES, codec::encode_u64(log_bytes).as_slice())
                .map_err(|e| self.error("write raft_meta", e))?;
        }
        self.commit(txn, true)?;
        self.set_log_bytes(log_bytes);
        Ok(())
    }

    fn read_log_bytes(&self, txn: &WriteTransaction) -> Result<u64, StoreError> {
        let table = txn
            .open_table(RAFT_META)
            .map_err(|e| self.error("open raft_meta", e))?;
        let value = table
            .get(KEY_LOG_BYTES)
            .map_err(|e| self.error("read raft_meta", e))?;
        value
            .map(|v| codec::decode_u64(KEY_LOG_BYTES, v.value()))
            .transpose()
            .map_err(|e| self.codec_error(e))
            .map(Option::unwrap_or_default)
    }

    /// Removes the entries in `range`; returns the space they accounted for.
    pub(super) fn remove_entries(
        &self,
        txn: &WriteTransaction,
        range: impl RangeBounds<u64>,
    ) -> Result<u64, StoreError> {
        let mut table = txn
            .open_table(LOG)
            .map_err(|e| self.error("open raft_log", e))?;
        let mut removed = 0u64;
        for item in table
            .extract_from_if(range, |_, _| true)
            .map_err(|e| self.error("remove from raft_log", e))?
        {
            let (_, value) = item.map_err(|e| self.error("remove from raft_log", e))?;
            removed += codec::stored_footprint(value.value().len() as u64);
        }
        Ok(removed)
    }

    pub(super) fn read_raft_log_id_in(
        &self,
        txn: &WriteTransaction,
        key: &'static str,
    ) -> Result<Option<LogId>, StoreError> {
        let table = txn
            .open_table(RAFT_META)
            .map_err(|e| self.error("open raft_meta", e))?;
        read_meta_log_id(self, &table, key)
    }

    fn read_raft_log_id(&self, key: &'static str) -> Result<Option<LogId>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn
            .open_table(RAFT_META)
            .map_err(|e| self.error("open raft_meta", e))?;
        read_meta_log_id(self, &table, key)
    }

    /// The committed log's last purged id and its last entry below `below`.
    fn committed_log_state(
        &self,
        below: Option<u64>,
    ) -> Result<(Option<LogId>, Option<LogId>), StoreError> {
        let txn = self.begin_read()?;
        let meta = txn
            .open_table(RAFT_META)
            .map_err(|e| self.error("open raft_meta", e))?;
        let last_purged = read_meta_log_id(self, &meta, KEY_LAST_PURGED)?;
        let table = txn
            .open_table(LOG)
            .map_err(|e| self.error("open raft_log", e))?;
        let last = match below {
            Some(limit) => table
                .range::<u64>(..limit)
                .map_err(|e| self.error("read raft_log", e))?
                .next_back()
                .transpose()
                .map_err(|e| self.error("read raft_log", e))?,
            None => table.last().map_err(|e| self.error("read raft_log", e))?,
        };
        let last = last
            .map(|(_, bytes)| codec::decode_entry(bytes.value()))
            .transpose()
            .map_err(|e| self.codec_error(e))?
            .map(|entry| entry.log_id);
        Ok((last_purged, last))
    }

    fn read_vote(&self) -> Result<Option<Vote>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn
            .open_table(RAFT_META)
            .map_err(|e| self.error("open raft_meta", e))?;
        let value = table
            .get(KEY_VOTE)
            .map_err(|e| self.error("read raft_meta", e))?;
        value
            .map(|v| codec::decode_vote(v.value()))
            .transpose()
            .map_err(|e| self.codec_error(e))
    }
}

impl RaftLogReader<TypeConfig> for RedbLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let range = (range.start_bound().cloned(), range.end_bound().cloned());
        // Pending entries first: an entry the writer commits meanwhile is then
        // found in the database instead.
        let (pending, hidden_from) = self.writer.snapshot(range);
        let txn = self
            .store
            .begin_read()
            .map_err(to_raft(ErrorSubject::Logs, ErrorVerb::Read))?;
        let committed = self
            .store
            .committed_entries(&txn, range)
            .map_err(to_raft(ErrorSubject::Logs, ErrorVerb::Read))?;
        let mut merged: std::collections::BTreeMap<u64, Entry> = committed
            .into_iter()
            .filter(|e| hidden_from.is_none_or(|h| e.log_id.index < h))
            .map(|e| (e.log_id.index, e))
            .collect();
        merged.extend(pending.into_iter().map(|e| (e.log_id.index, e)));
        Ok(merged.into_values().collect())
    }
}

impl RaftLogStorage<TypeConfig> for RedbLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let (pending_last, hidden_from) = self.writer.last_pending();
        let (last_purged_log_id, committed_last) = self
            .store
            .committed_log_state(hidden_from)
            .map_err(to_raft(ErrorSubject::Logs, ErrorVerb::Read))?;
        Ok(LogState {
            last_purged_log_id,
            last_log_id: pending_last.or(committed_last).or(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.writer
            .save_vote(*vote)
            .await
            .map_err(writer_failed(ErrorSubject::Vote))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.store
            .read_vote()
            .map_err(to_raft(ErrorSubject::Vote, ErrorVerb::Read))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.writer
            .save_committed(committed)
            .await
            .map_err(writer_failed(ErrorSubject::Store))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        self.store
            .read_raft_log_id(KEY_COMMITTED)
            .map_err(to_raft(ErrorSubject::Store, ErrorVerb::Read))
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
        let entries: Vec<Entry> = entries.into_iter().collect();
        if entries.is_empty() {
            callback.log_io_completed(Ok(()));
        } else {
            self.writer.append(entries, callback);
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.writer
            .truncate(log_id.index)
            .await
            .map_err(writer_failed(ErrorSubject::Logs))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.writer
            .purge(log_id)
            .await
            .map_err(writer_failed(ErrorSubject::Logs))
    }
}
