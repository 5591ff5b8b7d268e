//! The state machine and its snapshots in redb.
//!
//! An applied batch is one transaction: its writes, the new `last_applied`, the
//! membership and the data byte counter commit together or not at all.
//! Snapshots are streamed from a read transaction (a consistent view) into a
//! file, and installed by streaming a file into one write transaction that
//! replaces the data, the applied state and the snapshot record together.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder,
    StorageIOError,
};
use redb::{ReadTransaction, ReadableTable, Table, WriteTransaction};

use super::schema::{
    KEY_DATA_BYTES, KEY_LAST_APPLIED, KEY_MEMBERSHIP, KEY_REVISION, KEY_SNAPSHOT_FILE,
    KEY_SNAPSHOT_META, SM_DATA, SM_META, SNAPSHOT_META,
};
use super::{RedbStore, blocking, run_inline};
use crate::storage::kv::{KvTable, apply_logged};
use crate::storage::snapshot::{SnapshotData, SnapshotReader, SnapshotWriter, snapshot_id};
use crate::storage::{StoreError, codec};
use crate::types::{
    Entry, LogId, Response, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
    Versioned,
};

/// The state machine half of a redb store, handed to openraft.
#[derive(Debug, Clone)]
pub struct RedbStateMachine {
    store: RedbStore,
}

/// Builds snapshots from a consistent view of the state machine.
#[derive(Debug, Clone)]
pub struct RedbSnapshotBuilder {
    store: RedbStore,
}

impl RedbStateMachine {
    pub(super) fn new(store: RedbStore) -> Self {
        RedbStateMachine { store }
    }
}

fn sm_error(verb: ErrorVerb) -> impl Fn(StoreError) -> StorageError {
    move |e| StorageIOError::new(ErrorSubject::StateMachine, verb, AnyError::new(&e)).into()
}

fn snapshot_error(
    meta: Option<&SnapshotMeta>,
    verb: ErrorVerb,
) -> impl Fn(StoreError) -> StorageError {
    let subject = ErrorSubject::Snapshot(meta.map(SnapshotMeta::signature));
    move |e| StorageIOError::new(subject.clone(), verb, AnyError::new(&e)).into()
}

/// The state machine table during one write transaction, keeping the data
/// byte counter in step with every change.
struct RedbKv<'s, 't> {
    store: &'s RedbStore,
    table: Table<'t, &'static str, &'static [u8]>,
    data_bytes: u64,
}

impl KvTable for RedbKv<'_, '_> {
    type Error = StoreError;

    fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let Some(record) = self
            .table
            .get(key)
            .map_err(|e| self.store.error("read sm_data", e))?
        else {
            return Ok(None);
        };
        codec::decode_value(record.value())
            .map(Some)
            .map_err(|e| self.store.codec_error(e))
    }

    fn put(&mut self, key: &str, revision: u64, value: &str) -> Result<(), StoreError> {
        let record = codec::encode_value(revision, value);
        let old = self
            .table
            .insert(key, record.as_slice())
            .map_err(|e| self.store.error("write sm_data", e))?;
        if let Some(old) = old {
            self.data_bytes -= record_footprint(key, old.value());
        }
        self.data_bytes += record_footprint(key, &record);
        Ok(())
    }

    fn delete(&mut self, key: &str) -> Result<bool, StoreError> {
        let old = self
            .table
            .remove(key)
            .map_err(|e| self.store.error("delete from sm_data", e))?;
        match old {
            Some(old) => {
                self.data_bytes -= record_footprint(key, old.value());
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// Accounted disk space of a key and its value record.
fn record_footprint(key: &str, record: &[u8]) -> u64 {
    codec::stored_footprint(key.len() as u64 + record.len() as u64)
}

/// The state machine's metadata record.
struct SmMeta {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    data_bytes: u64,
    /// Commands applied so far: the last revision handed out.
    revision: u64,
}

fn read_sm_meta<T: ReadableTable<&'static str, &'static [u8]>>(
    store: &RedbStore,
    table: &T,
) -> Result<SmMeta, StoreError> {
    let get = |key: &'static str| table.get(key).map_err(|e| store.error("read sm_meta", e));
    let counter = |key: &'static str| -> Result<u64, StoreError> {
        get(key)?
            .map(|v| codec::decode_u64(key, v.value()))
            .transpose()
            .map_err(|e| store.codec_error(e))
            .map(Option::unwrap_or_default)
    };
    let last_applied = get(KEY_LAST_APPLIED)?
        .map(|v| codec::decode_log_id(KEY_LAST_APPLIED, v.value()))
        .transpose()
        .map_err(|e| store.codec_error(e))?;
    let membership = get(KEY_MEMBERSHIP)?
        .map(|v| codec::decode_membership(v.value()))
        .transpose()
        .map_err(|e| store.codec_error(e))?
        .unwrap_or_default();
    Ok(SmMeta {
        last_applied,
        membership,
        data_bytes: counter(KEY_DATA_BYTES)?,
        revision: counter(KEY_REVISION)?,
    })
}

/// The applied state as of `txn`.
pub(super) fn read_applied(
    store: &RedbStore,
    txn: &ReadTransaction,
) -> Result<(Option<LogId>, StoredMembership), StoreError> {
    let table = txn
        .open_table(SM_META)
        .map_err(|e| store.error("open sm_meta", e))?;
    let meta = read_sm_meta(store, &table)?;
    Ok((meta.last_applied, meta.membership))
}

fn write_sm_meta(
    store: &RedbStore,
    txn: &WriteTransaction,
    last_applied: Option<LogId>,
    membership: Option<&StoredMembership>,
    data_bytes: u64,
    revision: u64,
) -> Result<(), StoreError> {
    let mut table = txn
        .open_table(SM_META)
        .map_err(|e| store.error("open sm_meta", e))?;
    let err = |e| store.error("write sm_meta", e);
    match last_applied {
        Some(id) => table
            .insert(KEY_LAST_APPLIED, codec::encode_log_id(&id).as_slice())
            .map(drop),
        None => table.remove(KEY_LAST_APPLIED).map(drop),
    }
    .map_err(err)?;
    if let Some(membership) = membership {
        table
            .insert(
                KEY_MEMBERSHIP,
                codec::encode_membership(membership).as_slice(),
            )
            .map_err(err)?;
    }
    table
        .insert(KEY_DATA_BYTES, codec::encode_u64(data_bytes).as_slice())
        .map_err(err)?;
    table
        .insert(KEY_REVISION, codec::encode_u64(revision).as_slice())
        .map_err(err)?;
    Ok(())
}

/// The current snapshot's record: its metadata and file name.
fn read_snapshot_record<T: ReadableTable<&'static str, &'static [u8]>>(
    store: &RedbStore,
    table: &T,
) -> Result<Option<(SnapshotMeta, String)>, StoreError> {
    let get = |key: &'static str| {
        table
            .get(key)
            .map_err(|e| store.error("read snapshot_meta", e))
    };
    let Some(meta) = get(KEY_SNAPSHOT_META)? else {
        return Ok(None);
    };
    let meta = codec::decode_snapshot_meta(meta.value()).map_err(|e| store.codec_error(e))?;
    let file = get(KEY_SNAPSHOT_FILE)?.ok_or_else(|| StoreError::Corrupt {
        path: store.path().to_path_buf(),
        detail: "snapshot metadata without a snapshot file name".into(),
    })?;
    let file = std::str::from_utf8(file.value())
        .map_err(|_| StoreError::Corrupt {
            path: store.path().to_path_buf(),
            detail: "snapshot file name is not UTF-8".into(),
        })?
        .to_owned();
    Ok(Some((meta, file)))
}

/// The file name of the current snapshot, if there is one.
pub(super) fn current_snapshot_file(store: &RedbStore) -> Result<Option<String>, StoreError> {
    let txn = store.begin_read()?;
    let table = txn
        .open_table(SNAPSHOT_META)
        .map_err(|e| store.error("open snapshot_meta", e))?;
    Ok(read_snapshot_record(store, &table)?.map(|(_, file)| file))
}

fn sync_dir(store: &RedbStore, dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| store.io_error(dir, "sync directory", e))
}

/// Where snapshot bytes come from when installing.
enum Source {
    File(File),
    Memory(Vec<u8>),
}

impl RedbStore {
    /// Applies `entries` in one transaction: the operation behind
    /// `RaftStateMachine::apply`. On error nothing of the batch is applied.
    pub fn apply_batch(&self, entries: Vec<Entry>) -> Result<Vec<Response>, StoreError> {
        let txn = self.begin_write(false)?;
        let mut responses = Vec::with_capacity(entries.len());
        let mut last_applied = None;
        let mut membership = None;
        let before = {
            let meta = txn
                .open_table(SM_META)
                .map_err(|e| self.error("open sm_meta", e))?;
            read_sm_meta(self, &meta)?
        };
        if let (Some(previous), Some(first)) = (before.last_applied, entries.first()) {
            assert!(
                first.log_id.index > previous.index,
                "apply of entry {} after last applied {}",
                first.log_id,
                previous
            );
        }
        let mut revision = before.revision;
        let data_bytes = {
            let table = txn
                .open_table(SM_DATA)
                .map_err(|e| self.error("open sm_data", e))?;
            let mut kv = RedbKv {
                store: self,
                table,
                data_bytes: before.data_bytes,
            };
            for entry in entries {
                last_applied = Some(entry.log_id);
                let response = match entry.payload {
                    EntryPayload::Blank => Response::Empty,
                    EntryPayload::Normal(command) => {
                        apply_logged(&mut kv, &command, &mut revision)?
                    }
                    EntryPayload::Membership(m) => {
                        membership = Some(StoredMembership::new(Some(entry.log_id), m));
                        Response::Empty
                    }
                };
                responses.push(response);
            }
            kv.data_bytes
        };
        write_sm_meta(
            self,
            &txn,
            last_applied,
            membership.as_ref(),
            data_bytes,
            revision,
        )?;
        self.commit(txn, false)?;
        self.set_data_bytes(data_bytes);
        Ok(responses)
    }

    /// Streams the state machine, as of one read transaction, into a new
    /// snapshot file and records it as the current snapshot.
    fn build_snapshot_file(&self) -> Result<(SnapshotMeta, File), StoreError> {
        let dir = self.snapshot_dir().to_path_buf();
        let txn = self.begin_read()?;
        let sm_meta = {
            let table = txn
                .open_table(SM_META)
                .map_err(|e| self.error("open sm_meta", e))?;
            read_sm_meta(self, &table)?
        };
        let (last_applied, membership) = (sm_meta.last_applied, sm_meta.membership);
        let seq = self.next_snapshot_seq();
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id: snapshot_id(last_applied, seq),
        };
        let part = dir.join(format!("build-{seq}.part"));
        let io = |op: &'static str| {
            let part = part.clone();
            move |e| self.io_error(&part, op, e)
        };
        let file = File::create(&part).map_err(io("create"))?;
        let mut writer =
            SnapshotWriter::new(BufWriter::new(file), sm_meta.revision).map_err(io("write"))?;
        {
            let table = txn
                .open_table(SM_DATA)
                .map_err(|e| self.error("open sm_data", e))?;
            for item in table.iter().map_err(|e| self.error("scan sm_data", e))? {
                let (key, value) = item.map_err(|e| self.error("scan sm_data", e))?;
                writer
                    .write_record(key.value().as_bytes(), value.value())
                    .map_err(io("write"))?;
            }
        }
        drop(txn);
        let (out, _) = writer.finish().map_err(io("write"))?;
        let file = out
            .into_inner()
            .map_err(|e| self.io_error(&part, "write", e.into_error()))?;
        file.sync_all().map_err(io("sync"))?;
        let name = format!("snap-{}-{seq}.bin", last_applied.map_or(0, |id| id.index));
        self.publish_snapshot_file(&part, &name)?;

        // Record it, unless a newer snapshot was installed while this one was built.
        let txn = self.begin_write(true)?;
        let replaced = {
            let mut table = txn
                .open_table(SNAPSHOT_META)
                .map_err(|e| self.error("open snapshot_meta", e))?;
            let current = read_snapshot_record(self, &table)?;
            if current
                .as_ref()
                .is_some_and(|(current, _)| current.last_log_id > meta.last_log_id)
            {
                None
            } else {
                write_snapshot_record(self, &mut table, &meta, &name)?;
                Some(current.map(|(_, file)| file))
            }
        };
        self.commit(txn, true)?;
        let path = dir.join(&name);
        let file = File::open(&path).map_err(|e| self.io_error(&path, "open", e))?;
        match replaced {
            Some(previous) => self.remove_snapshot_file(previous.as_deref())?,
            // Superseded: the open handle keeps the data readable for the caller.
            None => self.remove_snapshot_file(Some(&name))?,
        }
        self.count_snapshot(false);
        Ok((meta, file))
    }

    /// Moves a finished `.part` file to its final name, durably.
    fn publish_snapshot_file(&self, part: &Path, name: &str) -> Result<(), StoreError> {
        let path = self.snapshot_dir().join(name);
        fs::rename(part, &path).map_err(|e| self.io_error(part, "rename", e))?;
        sync_dir(self, self.snapshot_dir())
    }

    fn remove_snapshot_file(&self, name: Option<&str>) -> Result<(), StoreError> {
        if let Some(name) = name {
            let path = self.snapshot_dir().join(name);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.io_error(&path, "remove", e)),
            }
        }
        Ok(())
    }

    /// Replaces the state machine with the snapshot in `source`: the data, the
    /// applied state and the snapshot record change in one durable commit, and
    /// only if the whole stream verifies.
    fn install_snapshot_stream(
        &self,
        meta: &SnapshotMeta,
        source: Source,
    ) -> Result<(), StoreError> {
        let stream_path = PathBuf::from("<snapshot stream>");
        let stream_err = |e| self.io_error(&stream_path, "read", e);
        let input: Box<dyn Read> = match source {
            Source::File(mut file) => {
                file.seek(SeekFrom::Start(0)).map_err(stream_err)?;
                Box::new(BufReader::new(file))
            }
            Source::Memory(bytes) => Box::new(Cursor::new(bytes)),
        };
        let mut reader = SnapshotReader::new(input).map_err(stream_err)?;

        let seq = self.next_snapshot_seq();
        let part = self.snapshot_dir().join(format!("install-{seq}.part"));
        let result = self.install_into(meta, &mut reader, &part, seq);
        if result.is_err() {
            // The transaction was dropped, so the state is untouched; drop the copy too.
            let _ = fs::remove_file(&part);
        }
        result
    }

    fn install_into(
        &self,
        meta: &SnapshotMeta,
        reader: &mut SnapshotReader<Box<dyn Read>>,
        part: &Path,
        seq: u64,
    ) -> Result<(), StoreError> {
        let io = |op: &'static str| move |e| self.io_error(part, op, e);
        let file = File::create(part).map_err(io("create"))?;
        let revision = reader.revision();
        let mut writer =
            SnapshotWriter::new(BufWriter::new(file), revision).map_err(io("write"))?;
        let txn = self.begin_write(true)?;
        let mut data_bytes = 0u64;
        {
            txn.delete_table(SM_DATA)
                .map_err(|e| self.error("clear sm_data", e))?;
            let mut table = txn
                .open_table(SM_DATA)
                .map_err(|e| self.error("open sm_data", e))?;
            let mut previous_key: Option<String> = None;
            while let Some((key, record)) = reader
                .next_record()
                .map_err(|e| self.io_error(Path::new("<snapshot stream>"), "read", e))?
            {
                codec::decode_value(&record).map_err(|e| self.codec_error(e))?;
                if previous_key.as_ref().is_some_and(|p| *p >= key) {
                    return Err(StoreError::Io {
                        path: PathBuf::from("<snapshot stream>"),
                        op: "read",
                        source: std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            "snapshot keys are not in strictly increasing order",
                        ),
                    });
                }
                writer
                    .write_record(key.as_bytes(), &record)
                    .map_err(io("write"))?;
                table
                    .insert(key.as_str(), record.as_slice())
                    .map_err(|e| self.error("write sm_data", e))?;
                data_bytes += record_footprint(&key, &record);
                previous_key = Some(key);
            }
        }
        write_sm_meta(
            self,
            &txn,
            meta.last_log_id,
            Some(&meta.last_membership),
            data_bytes,
            revision,
        )?;
        let name = format!(
            "snap-{}-{seq}.bin",
            meta.last_log_id.map_or(0, |id| id.index)
        );
        let previous = {
            let mut table = txn
                .open_table(SNAPSHOT_META)
                .map_err(|e| self.error("open snapshot_meta", e))?;
            let previous = read_snapshot_record(self, &table)?.map(|(_, file)| file);
            write_snapshot_record(self, &mut table, meta, &name)?;
            previous
        };
        let (out, _) = writer.finish().map_err(io("write"))?;
        let file = out
            .into_inner()
            .map_err(|e| self.io_error(part, "write", e.into_error()))?;
        file.sync_all().map_err(io("sync"))?;
        self.publish_snapshot_file(part, &name)?;
        self.commit(txn, true)?;
        self.set_data_bytes(data_bytes);
        self.count_snapshot(true);
        self.remove_snapshot_file(previous.as_deref())?;
        self.remove_received_parts()
    }

    /// Removes the files snapshots were received into; their content now
    /// lives in the installed snapshot file.
    fn remove_received_parts(&self) -> Result<(), StoreError> {
        let dir = self.snapshot_dir();
        for entry in fs::read_dir(dir).map_err(|e| self.io_error(dir, "list", e))? {
            let entry = entry.map_err(|e| self.io_error(dir, "list", e))?;
            if entry.file_name().to_string_lossy().starts_with("recv-") {
                let path = entry.path();
                fs::remove_file(&path).map_err(|e| self.io_error(&path, "remove", e))?;
            }
        }
        Ok(())
    }

    fn current_snapshot(&self) -> Result<Option<(SnapshotMeta, File)>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn
            .open_table(SNAPSHOT_META)
            .map_err(|e| self.error("open snapshot_meta", e))?;
        let Some((meta, name)) = read_snapshot_record(self, &table)? else {
            return Ok(None);
        };
        let path = self.snapshot_dir().join(name);
        let file = File::open(&path).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            detail: format!("the current snapshot file cannot be opened: {e}"),
        })?;
        Ok(Some((meta, file)))
    }
}

fn write_snapshot_record(
    store: &RedbStore,
    table: &mut Table<'_, &'static str, &'static [u8]>,
    meta: &SnapshotMeta,
    name: &str,
) -> Result<(), StoreError> {
    let err = |e| store.error("write snapshot_meta", e);
    table
        .insert(
            KEY_SNAPSHOT_META,
            codec::encode_snapshot_meta(meta).as_slice(),
        )
        .map_err(err)?;
    table
        .insert(KEY_SNAPSHOT_FILE, name.as_bytes())
        .map_err(err)?;
    Ok(())
}

impl RaftSnapshotBuilder<TypeConfig> for RedbSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let (meta, file) = blocking(&self.store, |s| s.build_snapshot_file())
            .await
            .map_err(snapshot_error(None, ErrorVerb::Write))?;
        tracing::info!(snapshot = %meta.snapshot_id, "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(SnapshotData::File(tokio::fs::File::from_std(file))),
        })
    }
}

impl RaftStateMachine<TypeConfig> for RedbStateMachine {
    type SnapshotBuilder = RedbSnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let txn = self.store.begin_read().map_err(sm_error(ErrorVerb::Read))?;
        read_applied(&self.store, &txn).map_err(sm_error(ErrorVerb::Read))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        run_inline(|| self.store.apply_batch(entries)).map_err(sm_error(ErrorVerb::Write))
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        RedbSnapshotBuilder {
            store: self.store.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, StorageError> {
        let seq = self.store.next_snapshot_seq();
        let path = self.store.snapshot_dir().join(format!("recv-{seq}.part"));
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(|e| self.store.io_error(&path, "create", e))
            .map_err(snapshot_error(None, ErrorVerb::Write))?;
        Ok(Box::new(SnapshotData::File(file)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotData>,
    ) -> Result<(), StorageError> {
        let source = match *snapshot {
            SnapshotData::File(mut file) => {
                // Writes through tokio's file may still be in flight.
                use tokio::io::AsyncWriteExt;
                file.flush()
                    .await
                    .map_err(|e| {
                        self.store
                            .io_error(Path::new("<snapshot stream>"), "flush", e)
                    })
                    .map_err(snapshot_error(Some(meta), ErrorVerb::Write))?;
                Source::File(file.into_std().await)
            }
            SnapshotData::Memory(cursor) => Source::Memory(cursor.into_inner()),
        };
        let owned_meta = meta.clone();
        blocking(&self.store, move |s| {
            s.install_snapshot_stream(&owned_meta, source)
        })
        .await
        .map_err(snapshot_error(Some(meta), ErrorVerb::Write))?;
        tracing::info!(snapshot = %meta.snapshot_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let current = blocking(&self.store, |s| s.current_snapshot())
            .await
            .map_err(snapshot_error(None, ErrorVerb::Read))?;
        Ok(current.map(|(meta, file)| Snapshot {
            meta,
            snapshot: Box::new(SnapshotData::File(tokio::fs::File::from_std(file))),
        }))
    }
}
