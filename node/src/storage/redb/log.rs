//! The Raft log and vote in redb.
//!
//! Every write is one transaction, committed before the call returns: one
//! `append` is one durable commit, whatever the number of entries. openraft
//! 0.9 waits for each append to be flushed before it issues the next, so
//! writes run on the calling task (`run_inline`) rather than hopping to a
//! writer thread that could never batch them; concurrent client writes share
//! an append because the node batches proposals (`server::batcher`).
//!
//! The committed log id openraft reports after every replication round is
//! kept in memory and written with the next append (or at close) instead of
//! in a transaction of its own: every transaction's pages are written by the
//! next fsync, so a commit per round made each log fsync write more. A crash
//! can only leave an older committed id on disk, which is still committed;
//! openraft learns the rest from the leader.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader, StorageIOError};
use redb::{ReadTransaction, ReadableTable, WriteTransaction};

use super::schema::{KEY_COMMITTED, KEY_LAST_PURGED, KEY_VOTE, LOG, RAFT_META};
use super::{RedbStore, run_inline};
use crate::storage::{StoreError, codec};
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

/// The log half of a redb store, handed to openraft.
#[derive(Debug, Clone)]
pub struct RedbLogStore {
    store: RedbStore,
}

impl RedbLogStore {
    pub(super) fn new(store: RedbStore) -> Self {
        RedbLogStore { store }
    }
}

fn to_raft(subject: ErrorSubject<u64>, verb: ErrorVerb) -> impl Fn(StoreError) -> StorageError {
    move |e| StorageIOError::new(subject.clone(), verb, AnyError::new(&e)).into()
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

    /// Inserts `entries` and commits durably, in one transaction: the
    /// operation behind `RaftLogStorage::append`.
    pub fn append_entries(&self, entries: &[Entry]) -> Result<(), StoreError> {
        let txn = self.begin_write(true)?;
        let committed = self.unsaved_committed();
        if let Some(committed) = committed {
            self.write_committed(&txn, committed)?;
        }
        let (mut added, mut removed) = (0u64, 0u64);
        {
            let mut table = txn
                .open_table(LOG)
                .map_err(|e| self.error("open raft_log", e))?;
            for entry in entries {
                let bytes = codec::encode_entry(entry);
                let replaced = table
                    .insert(entry.log_id.index, bytes.as_slice())
                    .map_err(|e| self.error("append to raft_log", e))?;
                if let Some(old) = replaced {
                    removed += codec::stored_footprint(old.value().len() as u64);
                }
                added += codec::stored_footprint(bytes.len() as u64);
            }
        }
        self.commit(txn, true)?;
        if let Some(committed) = committed {
            self.saved_committed(committed);
        }
        self.adjust_log_bytes(added, removed);
        Ok(())
    }

    /// Removes the entries in `range`; returns the space they accounted for.
    fn remove_entries(
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

    fn unsaved_committed(&self) -> Option<Option<LogId>> {
        *self
            .inner
            .unsaved_committed
            .lock()
            .expect("committed lock poisoned")
    }

    /// Forgets the unsaved committed id once `saved` is in the file, unless a
    /// newer one arrived meanwhile.
    fn saved_committed(&self, saved: Option<LogId>) {
        let mut unsaved = self
            .inner
            .unsaved_committed
            .lock()
            .expect("committed lock poisoned");
        if *unsaved == Some(saved) {
            *unsaved = None;
        }
    }

    fn write_committed(
        &self,
        txn: &WriteTransaction,
        committed: Option<LogId>,
    ) -> Result<(), StoreError> {
        let bytes = committed.as_ref().map(codec::encode_log_id);
        self.set_raft_meta(txn, KEY_COMMITTED, bytes.as_deref())
    }

    /// Writes the committed id still held in memory, durably; at close.
    pub(super) fn save_unsaved_committed(&self) -> Result<(), StoreError> {
        let Some(committed) = self.unsaved_committed() else {
            return Ok(());
        };
        let txn = self.begin_write(true)?;
        self.write_committed(&txn, committed)?;
        self.commit(txn, true)?;
        self.saved_committed(committed);
        Ok(())
    }

    fn read_committed(&self) -> Result<Option<LogId>, StoreError> {
        match self.unsaved_committed() {
            Some(committed) => Ok(committed),
            None => self.read_raft_log_id(KEY_COMMITTED),
        }
    }

    fn put_raft_meta(
        &self,
        txn: &WriteTransaction,
        key: &'static str,
        value: &[u8],
    ) -> Result<(), StoreError> {
        let mut table = txn
            .open_table(RAFT_META)
            .map_err(|e| self.error("open raft_meta", e))?;
        table
            .insert(key, value)
            .map_err(|e| self.error("write raft_meta", e))?;
        Ok(())
    }

    /// Writes one Raft metadata record (`None` removes it) in `txn`.
    fn set_raft_meta(
        &self,
        txn: &WriteTransaction,
        key: &'static str,
        value: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let Some(value) = value else {
            let mut table = txn
                .open_table(RAFT_META)
                .map_err(|e| self.error("open raft_meta", e))?;
            table
                .remove(key)
                .map_err(|e| self.error("write raft_meta", e))?;
            return Ok(());
        };
        self.put_raft_meta(txn, key, value)
    }

    /// Writes one Raft metadata record in its own durable commit.
    fn save_raft_meta(&self, key: &'static str, value: &[u8]) -> Result<(), StoreError> {
        let txn = self.begin_write(true)?;
        self.put_raft_meta(&txn, key, value)?;
        self.commit(txn, true)
    }

    /// Removes entries from `index` onward, durably.
    fn truncate_from(&self, index: u64) -> Result<(), StoreError> {
        let txn = self.begin_write(true)?;
        let removed = self.remove_entries(&txn, index..)?;
        self.commit(txn, true)?;
        self.adjust_log_bytes(0, removed);
        Ok(())
    }

    /// Removes entries up to and including `upto` and moves the purge marker
    /// to it, in one durable commit.
    fn purge_upto(&self, upto: LogId) -> Result<(), StoreError> {
        let txn = self.begin_write(true)?;
        let last_purged = {
            let table = txn
                .open_table(RAFT_META)
                .map_err(|e| self.error("open raft_meta", e))?;
            read_meta_log_id(self, &table, KEY_LAST_PURGED)?
        };
        assert!(
            last_purged <= Some(upto),
            "purge must not move backwards: {last_purged:?} -> {upto}"
        );
        let removed = self.remove_entries(&txn, ..=upto.index)?;
        self.put_raft_meta(&txn, KEY_LAST_PURGED, &codec::encode_log_id(&upto))?;
        self.commit(txn, true)?;
        self.adjust_log_bytes(0, removed);
        Ok(())
    }

    fn read_raft_log_id(&self, key: &'static str) -> Result<Option<LogId>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn
            .open_table(RAFT_META)
            .map_err(|e| self.error("open raft_meta", e))?;
        read_meta_log_id(self, &table, key)
    }

    /// The last purged log id and the last entry's id.
    fn log_state(&self) -> Result<(Option<LogId>, Option<LogId>), StoreError> {
        let txn = self.begin_read()?;
        let meta = txn
            .open_table(RAFT_META)
            .map_err(|e| self.error("open raft_meta", e))?;
        let last_purged = read_meta_log_id(self, &meta, KEY_LAST_PURGED)?;
        let table = txn
            .open_table(LOG)
            .map_err(|e| self.error("open raft_log", e))?;
        let last = table.last().map_err(|e| self.error("read raft_log", e))?;
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

fn logs_read() -> impl Fn(StoreError) -> StorageError {
    to_raft(ErrorSubject::Logs, ErrorVerb::Read)
}

fn logs_write() -> impl Fn(StoreError) -> StorageError {
    to_raft(ErrorSubject::Logs, ErrorVerb::Write)
}

impl RaftLogReader<TypeConfig> for RedbLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let range = (range.start_bound().cloned(), range.end_bound().cloned());
        let txn = self.store.begin_read().map_err(logs_read())?;
        self.store
            .committed_entries(&txn, range)
            .map_err(logs_read())
    }
}

impl RaftLogStorage<TypeConfig> for RedbLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let (last_purged_log_id, last) = self.store.log_state().map_err(logs_read())?;
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last.or(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let bytes = codec::encode_vote(vote);
        run_inline(|| self.store.save_raft_meta(KEY_VOTE, &bytes))
            .map_err(to_raft(ErrorSubject::Vote, ErrorVerb::Write))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.store
            .read_vote()
            .map_err(to_raft(ErrorSubject::Vote, ErrorVerb::Read))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Written with the next append or at close (see the module's notes).
        *self
            .store
            .inner
            .unsaved_committed
            .lock()
            .expect("committed lock poisoned") = Some(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        self.store
            .read_committed()
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
        let result = if entries.is_empty() {
            Ok(())
        } else {
            run_inline(|| self.store.append_entries(&entries))
        };
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "appending to the Raft log failed");
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(logs_write()(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        run_inline(|| self.store.truncate_from(log_id.index)).map_err(logs_write())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        run_inline(|| self.store.purge_upto(log_id)).map_err(logs_write())
    }
}
