//! The redb store: a node's whole Raft state in one redb file.
//!
//! Layout of the data directory:
//!
//! ```text
//! aspen.redb              the database (log, Raft metadata, state machine)
//! snapshots/snap-*.bin    the current snapshot, in the `snapshot` stream format
//! snapshots/*.part        a snapshot being built or received (removed at open)
//! ```
//!
//! Tables (see `schema`): `aspen_meta` (schema version), `raft_log`,
//! `raft_meta` (vote, committed, last purged, log bytes), `sm_data`,
//! `sm_meta` (last applied, last membership, data bytes) and `snapshot_meta`.
//!
//! Transactions: one `append` call is one durable commit, however many entries
//! it carries, and carries the latest committed log id with it (`log`);
//! applied batches collect in memory and are written, with their
//! `last_applied`, in one commit per flush of the overlay (`overlay`); a purge
//! removes entries and moves the purge marker in one commit; a snapshot
//! install replaces the data, the applied state and the snapshot record in
//! one commit. Overlay flushes are committed without an fsync: the log is
//! durable, openraft re-applies committed entries after a restart, and the
//! next durable commit (an append, a purge, a snapshot) makes them durable
//! too, in order.

mod backend;
mod log;
mod overlay;
mod schema;
mod snapshots;
mod state_machine;

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ::redb::{
    Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, WriteTransaction,
};

pub use self::log::RedbLogStore;
use self::overlay::{Found, Overlay};
use self::state_machine::SmMeta;
pub use self::state_machine::{RedbSnapshotBuilder, RedbStateMachine};
use super::{AppliedState, Identity, KvReader, StorageUsage, StoreError, codec, scan_start};
use crate::limits::MIN_DB_BYTES;
use crate::types::{LogId, Versioned};

/// Name of the database file inside the data directory.
pub const DB_FILE_NAME: &str = "aspen.redb";
/// Name of the snapshot directory inside the data directory.
pub const SNAPSHOT_DIR_NAME: &str = "snapshots";

#[derive(Debug)]
struct Inner {
    db: Database,
    file: PathBuf,
    snapshot_dir: PathBuf,
    max_bytes: u64,
    file_len: Arc<AtomicU64>,
    /// A second handle on the database file, to read its disk usage.
    stat_file: fs::File,
    /// Set once a write was refused at the size limit: redb then refuses
    /// every write until the database is reopened.
    full: AtomicBool,
    durable_commits: AtomicU64,
    /// Time spent in durable commits, in microseconds.
    durable_commit_micros: AtomicU64,
    snapshots_built: AtomicU64,
    snapshots_installed: AtomicU64,
    log_bytes: AtomicU64,
    /// A committed log id openraft reported and the file does not hold yet
    /// (see `log`): `Some(None)` records that it was cleared.
    unsaved_committed: Mutex<Option<Option<LogId>>>,
    /// Applied changes not yet written to the database (see `overlay`).
    overlay: Mutex<Overlay>,
    data_bytes: AtomicU64,
    snapshot_seq: AtomicU64,
}

/// An open redb data directory. Clones share the database; the file is
/// released when the last clone (including the log store, state machine and
/// snapshot builders made from it) is dropped, or by `close`.
#[derive(Debug, Clone)]
pub struct RedbStore {
    inner: Arc<Inner>,
}

impl RedbStore {
    /// Opens (or creates) the data directory `dir`, verifying the database file
    /// and its schema. A damaged, foreign or newer file is refused with an
    /// error naming it; nothing is re-initialised.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self, StoreError> {
        if max_bytes < MIN_DB_BYTES {
            return Err(StoreError::Config(format!(
                "the database size limit is {max_bytes} bytes; it must be at least {MIN_DB_BYTES}"
            )));
        }
        let io_err = |path: &Path, op: &'static str| {
            let path = path.to_path_buf();
            move |source: io::Error| StoreError::Io { path, op, source }
        };
        let snapshot_dir = dir.join(SNAPSHOT_DIR_NAME);
        fs::create_dir_all(&snapshot_dir).map_err(io_err(&snapshot_dir, "create directory"))?;
        let path = dir.join(DB_FILE_NAME);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path, "open"))?;
        let existing = file.metadata().map_err(io_err(&path, "stat"))?.len() > 0;
        let stat_file = file.try_clone().map_err(io_err(&path, "open"))?;
        let file_len = Arc::new(AtomicU64::new(0));
        let backend = backend::CappedFileBackend::new(file, max_bytes, file_len.clone())
            .map_err(io_err(&path, "open"))?;

        // A damaged file can make redb panic rather than return an error; the
        // node must stop with a message naming the file either way.
        let opened = panic::catch_unwind(AssertUnwindSafe(|| {
            Database::builder()
                .set_check_integrity_on_open(existing)
                .create_with_backend(backend)
        }));
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(e)) => return Err(open_error(&path, e)),
            Err(panic) => {
                let detail = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "redb panicked while opening it".to_owned());
                return Err(StoreError::Corrupt { path, detail });
            }
        };

        schema::check_or_init(&db, &path)?;
        let (sm_meta, log_bytes) = read_counters(&db, &path)?;
        let store = RedbStore {
            inner: Arc::new(Inner {
                db,
                file: path,
                snapshot_dir,
                max_bytes,
                file_len,
                stat_file,
                full: AtomicBool::new(false),
                durable_commits: AtomicU64::new(0),
                durable_commit_micros: AtomicU64::new(0),
                snapshots_built: AtomicU64::new(0),
                snapshots_installed: AtomicU64::new(0),
                log_bytes: AtomicU64::new(log_bytes),
                unsaved_committed: Mutex::new(None),
                data_bytes: AtomicU64::new(sm_meta.data_bytes),
                overlay: Mutex::new(Overlay::new(sm_meta)),
                snapshot_seq: AtomicU64::new(0),
            }),
        };
        store.remove_stale_snapshot_files()?;
        Ok(store)
    }

    /// The log store and state machine to hand to openraft.
    pub fn raft_storage(&self) -> (RedbLogStore, RedbStateMachine) {
        (
            RedbLogStore::new(self.clone()),
            RedbStateMachine::new(self.clone()),
        )
    }

    pub fn path(&self) -> &Path {
        &self.inner.file
    }

    /// Closes the database and releases the file, reporting any error redb
    /// meets while doing so. Fails if other handles to the store are alive.
    /// A store stopped at its size limit closes cleanly: its last commit is
    /// intact, which is what reopening recovers.
    pub fn close(self) -> Result<(), StoreError> {
        let path = self.inner.file.clone();
        self.try_close().unwrap_or_else(|_| {
            Err(StoreError::Config(format!(
                "{}: cannot close while the Raft log, state machine or a reader still holds it",
                path.display()
            )))
        })
    }

    /// Closes the database if this is the last handle (writing out the
    /// applied changes still in memory first); otherwise gives the handle back.
    pub fn try_close(self) -> Result<Result<(), StoreError>, RedbStore> {
        if Arc::strong_count(&self.inner) > 1 {
            return Err(self);
        }
        let flushed = if self.inner.full.load(Ordering::Relaxed) {
            // Nothing more can be written; the last commit is what reopening finds.
            Ok(())
        } else {
            let mut overlay = self.overlay();
            self.flush_overlay(&mut overlay, true)
                .and_then(|()| self.save_unsaved_committed())
        };
        let inner = Arc::try_unwrap(self.inner).map_err(|inner| RedbStore { inner })?;
        Ok(flushed.and_then(|()| close_database(inner)))
    }

    /// Records who this data belongs to on first use, and afterwards verifies
    /// it: a data directory is never used by another node or cluster.
    pub fn claim_identity(&self, node_id: u64, cluster_id: &str) -> Result<Identity, StoreError> {
        let txn = self.begin_write(true)?;
        let identity = {
            let mut meta = txn
                .open_table(schema::META)
                .map_err(|e| self.error("open aspen_meta", e))?;
            let read_u64 = |meta: &::redb::Table<&str, &[u8]>,
                            key: &'static str|
             -> Result<Option<u64>, StoreError> {
                meta.get(key)
                    .map_err(|e| self.error("read aspen_meta", e))?
                    .map(|v| codec::decode_u64(key, v.value()))
                    .transpose()
                    .map_err(|e| self.codec_error(e))
            };
            let found_node = read_u64(&meta, schema::KEY_NODE_ID)?;
            let removed_at = read_u64(&meta, schema::KEY_REMOVED_AT)?;
            let found_cluster = meta
                .get(schema::KEY_CLUSTER_ID)
                .map_err(|e| self.error("read aspen_meta", e))?
                .map(|v| String::from_utf8_lossy(v.value()).into_owned());
            match (found_node, found_cluster) {
                (Some(found_node), Some(found_cluster)) => {
                    if found_node != node_id || found_cluster != cluster_id {
                        return Err(StoreError::IdentityMismatch {
                            path: self.inner.file.clone(),
                            node: node_id,
                            cluster: cluster_id.to_owned(),
                            found_node,
                            found_cluster,
                        });
                    }
                }
                _ => {
                    meta.insert(schema::KEY_NODE_ID, codec::encode_u64(node_id).as_slice())
                        .map_err(|e| self.error("write aspen_meta", e))?;
                    meta.insert(schema::KEY_CLUSTER_ID, cluster_id.as_bytes())
                        .map_err(|e| self.error("write aspen_meta", e))?;
                }
            }
            Identity {
                node_id,
                cluster_id: cluster_id.to_owned(),
                removed_at,
            }
        };
        self.commit(txn, true)?;
        Ok(identity)
    }

    /// Records, durably, that this node was removed from its cluster by the
    /// membership at `log_index`.
    pub fn mark_removed(&self, log_index: u64) -> Result<(), StoreError> {
        let txn = self.begin_write(true)?;
        {
            let mut meta = txn
                .open_table(schema::META)
                .map_err(|e| self.error("open aspen_meta", e))?;
            meta.insert(
                schema::KEY_REMOVED_AT,
                codec::encode_u64(log_index).as_slice(),
            )
            .map_err(|e| self.error("write aspen_meta", e))?;
        }
        self.commit(txn, true)
    }

    fn db(&self) -> &Database {
        &self.inner.db
    }

    pub(super) fn snapshot_dir(&self) -> &Path {
        &self.inner.snapshot_dir
    }

    pub(super) fn next_snapshot_seq(&self) -> u64 {
        self.inner.snapshot_seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Maps any redb error to a `StoreError` naming the file and the
    /// operation; a write refused at the size limit becomes `StoreError::Full`,
    /// now and for every write after it until the store is reopened.
    pub(super) fn error(&self, op: &'static str, e: impl Into<::redb::Error>) -> StoreError {
        let e = e.into();
        let full = || StoreError::Full {
            path: self.inner.file.clone(),
            max_bytes: self.inner.max_bytes,
        };
        match &e {
            ::redb::Error::Io(io) if backend::is_storage_full(io) => {
                self.inner.full.store(true, Ordering::Relaxed);
                tracing::error!(path = %self.inner.file.display(), max_bytes = self.inner.max_bytes, "storage full");
                full()
            }
            ::redb::Error::PreviousIo if self.inner.full.load(Ordering::Relaxed) => full(),
            ::redb::Error::PreviousIo => StoreError::Stopped {
                path: self.inner.file.clone(),
            },
            ::redb::Error::Corrupted(detail) => StoreError::Corrupt {
                path: self.inner.file.clone(),
                detail: detail.clone(),
            },
            _ => StoreError::Redb {
                path: self.inner.file.clone(),
                op,
                source: Box::new(e),
            },
        }
    }

    pub(super) fn codec_error(&self, source: codec::CodecError) -> StoreError {
        StoreError::Codec {
            path: self.inner.file.clone(),
            source,
        }
    }

    pub(super) fn io_error(&self, path: &Path, op: &'static str, source: io::Error) -> StoreError {
        StoreError::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    }

    pub(super) fn begin_write(&self, durable: bool) -> Result<WriteTransaction, StoreError> {
        let mut txn = self
            .db()
            .begin_write()
            .map_err(|e| self.error("begin write", e))?;
        if !durable {
            txn.set_durability(Durability::None)
                .map_err(|e| StoreError::Config(format!("cannot relax durability: {e}")))?;
        }
        Ok(txn)
    }

    /// Commits `txn`; `durable` says whether it was begun with an fsync.
    pub(super) fn commit(&self, txn: WriteTransaction, durable: bool) -> Result<(), StoreError> {
        let started = Instant::now();
        txn.commit().map_err(|e| self.error("commit", e))?;
        if durable {
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.inner.durable_commits.fetch_add(1, Ordering::Relaxed);
            self.inner
                .durable_commit_micros
                .fetch_add(micros, Ordering::Relaxed);
        }
        Ok(())
    }

    pub(super) fn begin_read(&self) -> Result<::redb::ReadTransaction, StoreError> {
        self.db()
            .begin_read()
            .map_err(|e| self.error("begin read", e))
    }

    pub(super) fn count_snapshot(&self, installed: bool) {
        let counter = if installed {
            &self.inner.snapshots_installed
        } else {
            &self.inner.snapshots_built
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn adjust_log_bytes(&self, added: u64, removed: u64) {
        self.inner.log_bytes.fetch_add(added, Ordering::Relaxed);
        self.inner.log_bytes.fetch_sub(removed, Ordering::Relaxed);
    }

    /// The overlay of applied changes; held while applying, flushing,
    /// installing a snapshot, or taking a consistent view for a read.
    fn overlay(&self) -> std::sync::MutexGuard<'_, Overlay> {
        self.inner.overlay.lock().expect("overlay lock poisoned")
    }

    pub(super) fn set_data_bytes(&self, bytes: u64) {
        self.inner.data_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Removes snapshot files no committed record points to: leftovers of a
    /// build or transfer interrupted by a crash.
    fn remove_stale_snapshot_files(&self) -> Result<(), StoreError> {
        let current = snapshots::current_snapshot_file(self)?;
        let dir = self.snapshot_dir();
        let entries = fs::read_dir(dir).map_err(|e| self.io_error(dir, "list", e))?;
        for entry in entries {
            let entry = entry.map_err(|e| self.io_error(dir, "list", e))?;
            let name = entry.file_name();
            if Some(name.to_string_lossy().as_ref()) != current.as_deref() {
                let path = entry.path();
                tracing::info!(path = %path.display(), "removing stale snapshot file");
                fs::remove_file(&path).map_err(|e| self.io_error(&path, "remove", e))?;
            }
        }
        Ok(())
    }
}

fn open_error(path: &Path, e: DatabaseError) -> StoreError {
    let path = path.to_path_buf();
    match e {
        DatabaseError::DatabaseAlreadyOpen => StoreError::AlreadyOpen { path },
        DatabaseError::Storage(::redb::StorageError::Corrupted(detail)) => {
            StoreError::Corrupt { path, detail }
        }
        DatabaseError::Storage(::redb::StorageError::Io(io))
            if io.kind() == io::ErrorKind::InvalidData
                || io.kind() == io::ErrorKind::UnexpectedEof =>
        {
            StoreError::Corrupt {
                path,
                detail: io.to_string(),
            }
        }
        DatabaseError::UpgradeRequired(version) => StoreError::Foreign {
            path,
            detail: format!("redb file format {version} is not supported by this build"),
        },
        other => StoreError::Redb {
            path,
            op: "open",
            source: Box::new(other.into()),
        },
    }
}

/// Closes the database of the last handle; a store stopped at its size limit
/// closes cleanly, its last commit intact.
fn close_database(inner: Inner) -> Result<(), StoreError> {
    let full = inner.full.load(Ordering::Relaxed);
    match inner.db.close() {
        Ok(()) => Ok(()),
        Err(DatabaseError::Storage(::redb::StorageError::PreviousIo)) if full => Ok(()),
        Err(e) => Err(open_error(&inner.file, e)),
    }
}

/// The state machine's metadata and the log's accounted size, read at open.
fn read_counters(db: &Database, path: &Path) -> Result<(SmMeta, u64), StoreError> {
    let redb_err = |e: ::redb::Error| StoreError::Redb {
        path: path.to_path_buf(),
        op: "read counters",
        source: Box::new(e),
    };
    let store_err = |e: StoreError| e;
    let txn = db.begin_read().map_err(|e| redb_err(e.into()))?;
    let log = txn
        .open_table(schema::LOG)
        .map_err(|e| redb_err(e.into()))?;
    let mut log_bytes = 0u64;
    for item in log.iter().map_err(|e| redb_err(e.into()))? {
        let (_, value) = item.map_err(|e| redb_err(e.into()))?;
        log_bytes += codec::stored_footprint(value.value().len() as u64);
    }
    let meta = txn
        .open_table(schema::SM_META)
        .map_err(|e| redb_err(e.into()))?;
    let sm_meta = state_machine::read_sm_meta_at(path, &meta).map_err(store_err)?;
    Ok((sm_meta, log_bytes))
}

impl KvReader for RedbStore {
    fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let txn = {
            let overlay = self.overlay();
            match overlay.lookup(key) {
                Found::Value(record) => {
                    return codec::decode_value(record)
                        .map(Some)
                        .map_err(|e| self.codec_error(e));
                }
                Found::Deleted => return Ok(None),
                // Begun under the lock: what a flush moves out of the overlay
                // is then in this transaction's view.
                Found::NotHere => self.begin_read()?,
            }
        };
        let table = txn
            .open_table(schema::SM_DATA)
            .map_err(|e| self.error("open sm_data", e))?;
        let Some(record) = table.get(key).map_err(|e| self.error("read sm_data", e))? else {
            return Ok(None);
        };
        codec::decode_value(record.value())
            .map(Some)
            .map_err(|e| self.codec_error(e))
    }

    fn scan(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, Versioned)>, StoreError> {
        let start = scan_start(prefix, start_after);
        let (pending, txn) = {
            let overlay = self.overlay();
            let pending = overlay.changes_from(start, prefix, limit as usize);
            (pending, self.begin_read()?)
        };
        let table = txn
            .open_table(schema::SM_DATA)
            .map_err(|e| self.error("open sm_data", e))?;
        overlay::merge_scan(
            self,
            &table,
            pending,
            start,
            prefix,
            start_after,
            limit as usize,
        )
    }

    fn applied_state(&self) -> Result<AppliedState, StoreError> {
        let overlay = self.overlay();
        Ok(AppliedState {
            last_applied: overlay.meta.last_applied,
            membership: overlay.meta.membership.clone(),
        })
    }

    fn usage(&self) -> StorageUsage {
        // st_blocks counts 512-byte units whatever the filesystem's block size.
        let disk_bytes = self
            .inner
            .stat_file
            .metadata()
            .map_or(0, |m| m.blocks().saturating_mul(512));
        StorageUsage {
            file_bytes: self.inner.file_len.load(Ordering::Relaxed),
            disk_bytes,
            max_bytes: self.inner.max_bytes,
            live_bytes: self.inner.log_bytes.load(Ordering::Relaxed)
                + self.inner.data_bytes.load(Ordering::Relaxed),
            durable_commits: self.inner.durable_commits.load(Ordering::Relaxed),
            durable_commit_micros: self.inner.durable_commit_micros.load(Ordering::Relaxed),
            snapshots_built: self.inner.snapshots_built.load(Ordering::Relaxed),
            snapshots_installed: self.inner.snapshots_installed.load(Ordering::Relaxed),
        }
    }
}

/// Runs short blocking database work (a commit and its fsync, well under a
/// millisecond here) on the calling task. Handing it to another thread costs
/// more than it saves: measured on this project's 2-core machines,
/// `block_in_place` added about 1 ms to every replicated write.
pub(super) fn run_inline<T>(work: impl FnOnce() -> T) -> T {
    work()
}

/// Runs long blocking database work (building or installing a snapshot) off
/// the async executor, keeping the store alive for exactly as long as it runs.
pub(super) async fn blocking<T, F>(store: &RedbStore, work: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce(&RedbStore) -> Result<T, StoreError> + Send + 'static,
{
    let store = store.clone();
    tokio::task::spawn_blocking(move || work(&store))
        .await
        .unwrap_or_else(|join| {
            // The closure panicked: an invariant of the store broke. Propagate.
            panic::resume_unwind(join.into_panic())
        })
}
