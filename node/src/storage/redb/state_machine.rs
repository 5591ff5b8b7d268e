//! The state machine half of the redb store, handed to openraft.
//!
//! Applying a batch is deterministic and all-or-nothing: its changes are
//! staged, then merged into the overlay (`overlay`) together with the new
//! `last_applied`, membership and revision, and written to the database with
//! the rest of the overlay. Snapshots live in `snapshots`.

use std::path::Path;

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder,
    StorageIOError,
};
use redb::{ReadableTable, WriteTransaction};

use super::overlay::{LayeredKv, Staged};
use super::schema::{
    KEY_DATA_BYTES, KEY_LAST_APPLIED, KEY_MEMBERSHIP, KEY_REVISION, SM_DATA, SM_META,
};
use super::snapshots::Source;
use super::{RedbStore, blocking, run_inline};
use crate::storage::kv::apply_logged;
use crate::storage::snapshot::SnapshotData;
use crate::storage::{StoreError, codec};
use crate::types::{
    Entry, LogId, Response, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
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

/// Accounted disk space of a key and its value record.
pub(super) fn record_footprint(key: &str, record: &[u8]) -> u64 {
    codec::stored_footprint(key.len() as u64 + record.len() as u64)
}

/// The state machine's metadata record.
#[derive(Debug, Clone, Default)]
pub(super) struct SmMeta {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    pub data_bytes: u64,
    /// Commands applied so far: the last revision handed out.
    pub revision: u64,
}

/// Reads the metadata record; errors name the database file at `path`.
pub(super) fn read_sm_meta_at<T: ReadableTable<&'static str, &'static [u8]>>(
    path: &Path,
    table: &T,
) -> Result<SmMeta, StoreError> {
    let get = |key: &'static str| {
        table.get(key).map_err(|e| StoreError::Redb {
            path: path.to_path_buf(),
            op: "read sm_meta",
            source: Box::new(e.into()),
        })
    };
    let codec_err = |source| StoreError::Codec {
        path: path.to_path_buf(),
        source,
    };
    let counter = |key: &'static str| -> Result<u64, StoreError> {
        get(key)?
            .map(|v| codec::decode_u64(key, v.value()))
            .transpose()
            .map_err(codec_err)
            .map(Option::unwrap_or_default)
    };
    let last_applied = get(KEY_LAST_APPLIED)?
        .map(|v| codec::decode_log_id(KEY_LAST_APPLIED, v.value()))
        .transpose()
        .map_err(codec_err)?;
    let membership = get(KEY_MEMBERSHIP)?
        .map(|v| codec::decode_membership(v.value()))
        .transpose()
        .map_err(codec_err)?
        .unwrap_or_default();
    Ok(SmMeta {
        last_applied,
        membership,
        data_bytes: counter(KEY_DATA_BYTES)?,
        revision: counter(KEY_REVISION)?,
    })
}

pub(super) fn write_sm_meta(
    store: &RedbStore,
    txn: &WriteTransaction,
    meta: &SmMeta,
) -> Result<(), StoreError> {
    let mut table = txn
        .open_table(SM_META)
        .map_err(|e| store.error("open sm_meta", e))?;
    let err = |e| store.error("write sm_meta", e);
    match meta.last_applied {
        Some(id) => table
            .insert(KEY_LAST_APPLIED, codec::encode_log_id(&id).as_slice())
            .map(drop),
        None => table.remove(KEY_LAST_APPLIED).map(drop),
    }
    .map_err(err)?;
    table
        .insert(
            KEY_MEMBERSHIP,
            codec::encode_membership(&meta.membership).as_slice(),
        )
        .map_err(err)?;
    table
        .insert(
            KEY_DATA_BYTES,
            codec::encode_u64(meta.data_bytes).as_slice(),
        )
        .map_err(err)?;
    table
        .insert(KEY_REVISION, codec::encode_u64(meta.revision).as_slice())
        .map_err(err)?;
    Ok(())
}

impl RedbStore {
    /// Applies `entries` as one batch: the operation behind
    /// `RaftStateMachine::apply`. On error nothing of the batch is applied.
    /// The result is visible to reads at once and reaches the database with
    /// the next flush of the overlay, which runs here, before a batch, when
    /// it is due: a failed flush then fails the batch before it changes
    /// anything.
    pub fn apply_batch(&self, entries: Vec<Entry>) -> Result<Vec<Response>, StoreError> {
        let mut overlay = self.overlay();
        if overlay.due() {
            self.flush_overlay(&mut overlay, false)?;
        }
        if let (Some(previous), Some(first)) = (overlay.meta.last_applied, entries.first()) {
            assert!(
                first.log_id.index > previous.index,
                "apply of entry {} after last applied {}",
                first.log_id,
                previous
            );
        }
        let txn = self.begin_read()?;
        let table = txn
            .open_table(SM_DATA)
            .map_err(|e| self.error("open sm_data", e))?;
        let mut meta = overlay.meta.clone();
        let mut staged = Staged::new(meta.data_bytes);
        let mut responses = Vec::with_capacity(entries.len());
        {
            let mut kv = LayeredKv {
                store: self,
                table: &table,
                overlay: &overlay,
                staged: &mut staged,
            };
            for entry in entries {
                meta.last_applied = Some(entry.log_id);
                let response = match entry.payload {
                    EntryPayload::Blank => Response::Empty,
                    EntryPayload::Normal(command) => {
                        apply_logged(&mut kv, &command, &mut meta.revision)?
                    }
                    EntryPayload::Membership(m) => {
                        meta.membership = StoredMembership::new(Some(entry.log_id), m);
                        Response::Empty
                    }
                };
                responses.push(response);
            }
        }
        meta.data_bytes = staged.data_bytes;
        let data_bytes = meta.data_bytes;
        overlay.absorb(staged, meta);
        self.set_data_bytes(data_bytes);
        Ok(responses)
    }
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
        let overlay = self.store.overlay();
        Ok((overlay.meta.last_applied, overlay.meta.membership.clone()))
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
