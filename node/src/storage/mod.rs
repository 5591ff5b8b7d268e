//! Raft log and state machine storage.
//!
//! Two complete implementations of openraft's `RaftLogStorage`,
//! `RaftStateMachine` and `RaftSnapshotBuilder`: `redb` keeps everything in one
//! redb file on the node's volume, `memory` keeps it in process memory for fast
//! tests. They share the command semantics (`kv`), the record encoding (`codec`)
//! and the snapshot format (`snapshot`), and both pass openraft's storage suite.
//!
//! The node reads keys through `KvReader`, which both stores provide, so that
//! reads never go through the Raft core.

pub mod codec;
pub mod kv;
pub mod memory;
pub mod redb;
pub mod snapshot;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::limits::{DEFAULT_MAX_DB_BYTES, LIVE_DATA_PERCENT_OF_LIMIT};
use crate::types::{LogId, StoredMembership, Versioned};

pub use self::memory::{MemLogStore, MemStateMachine};
pub use self::redb::{RedbLogStore, RedbStateMachine, RedbStore};

/// Where a node keeps its Raft state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageBackend {
    /// Process memory: lost when the process exits. For tests.
    InMemory,
    /// One redb file, `aspen.redb`, in the data directory `path`, with
    /// snapshots beside it; the file never grows past `max_bytes`.
    Redb { path: PathBuf, max_bytes: u64 },
}

impl StorageBackend {
    pub fn redb(path: impl Into<PathBuf>) -> Self {
        StorageBackend::Redb {
            path: path.into(),
            max_bytes: DEFAULT_MAX_DB_BYTES,
        }
    }
}

/// How much space the store uses and may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StorageUsage {
    /// Length of the database file (0 in memory). The file grows sparsely,
    /// so this may exceed `disk_bytes` and even `max_bytes`.
    pub file_bytes: u64,
    /// Space the database file occupies on disk.
    pub disk_bytes: u64,
    /// The database may not write past this offset of its file.
    pub max_bytes: u64,
    /// Space the stored log entries, keys and values account for
    /// (`codec::stored_footprint`), before redb's own page overhead.
    pub live_bytes: u64,
    /// Durable commits (fsyncs of the database file) since the store opened.
    pub durable_commits: u64,
    /// Time those commits took, in microseconds: with `durable_commits`, the
    /// mean latency of the disk's fsync as the node sees it.
    pub durable_commit_micros: u64,
    /// Snapshots built since the store opened.
    pub snapshots_built: u64,
    /// Snapshots installed (received from a leader) since the store opened.
    pub snapshots_installed: u64,
}

impl StorageUsage {
    /// Whether a write adding `additional_bytes` of live data may be accepted.
    pub fn admits(&self, additional_bytes: u64) -> bool {
        let budget = self.max_bytes / 100 * LIVE_DATA_PERCENT_OF_LIMIT;
        self.live_bytes.saturating_add(additional_bytes) <= budget
    }
}

/// The state machine's applied position, as a reader sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AppliedState {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
}

/// Errors of the storage layer. Each names the file or directory involved and
/// what to do about it.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error(
        "{path}: the database is already open (another aspen-node process, or a handle not yet closed)"
    )]
    AlreadyOpen { path: PathBuf },
    #[error(
        "{path}: the database is corrupt ({detail}); restore this member from its peers by wiping the data directory"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error("{path}: not an Aspen data file ({detail})")]
    Foreign { path: PathBuf, detail: String },
    #[error(
        "{path}: written by a newer Aspen (schema version {found}); this build reads schema version {supported}"
    )]
    SchemaTooNew {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error(
        "{path}: storage full: the database reached its limit of {max_bytes} bytes; delete keys or raise the limit, then reopen the store (restart the node)"
    )]
    Full { path: PathBuf, max_bytes: u64 },
    #[error(
        "{path}: an earlier I/O error stopped the database; reopen the store (restart the node)"
    )]
    Stopped { path: PathBuf },
    #[error("{path}: {op} failed: {source}")]
    Redb {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: Box<::redb::Error>,
    },
    #[error("{path}: {op} failed: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Codec {
        path: PathBuf,
        #[source]
        source: codec::CodecError,
    },
    #[error(
        "{path}: this data belongs to node {found_node} of cluster {found_cluster:?}, not node {node} of cluster {cluster:?}; use the right data directory or wipe it"
    )]
    IdentityMismatch {
        path: PathBuf,
        node: u64,
        cluster: String,
        found_node: u64,
        found_cluster: String,
    },
    #[error("invalid storage configuration: {0}")]
    Config(String),
}

impl StoreError {
    /// The store refused a write at its size limit, now or earlier.
    pub fn is_full(&self) -> bool {
        matches!(self, StoreError::Full { .. })
    }
}

/// Whom a data directory belongs to, recorded when a node first starts on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub node_id: u64,
    pub cluster_id: String,
    /// Set once the node saw itself removed from the cluster: the log index of
    /// the membership that no longer lists it. Such data never rejoins.
    pub removed_at: Option<u64>,
}

/// Read access to the applied key space, independent of the Raft core.
pub trait KvReader: Send + Sync + fmt::Debug {
    fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError>;
    /// Keys starting with `prefix`, in order, strictly after `start_after`
    /// when given, at most `limit` of them.
    fn scan(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, Versioned)>, StoreError>;
    fn applied_state(&self) -> Result<AppliedState, StoreError>;
    fn usage(&self) -> StorageUsage;
}

/// An opened store: the two halves openraft takes, and a reader for the node.
#[derive(Debug)]
pub enum OpenedStore {
    Memory {
        log: MemLogStore,
        state_machine: MemStateMachine,
        reader: Arc<dyn KvReader>,
    },
    Redb {
        store: RedbStore,
        log: RedbLogStore,
        state_machine: RedbStateMachine,
        reader: Arc<dyn KvReader>,
    },
}

impl OpenedStore {
    pub fn open(backend: &StorageBackend) -> Result<Self, StoreError> {
        match backend {
            StorageBackend::InMemory => {
                let (log, state_machine) = memory::new_store();
                let reader: Arc<dyn KvReader> = Arc::new(state_machine.reader());
                Ok(OpenedStore::Memory {
                    log,
                    state_machine,
                    reader,
                })
            }
            StorageBackend::Redb { path, max_bytes } => {
                let store = RedbStore::open(path, *max_bytes)?;
                let (log, state_machine) = store.raft_storage();
                let reader: Arc<dyn KvReader> = Arc::new(store.clone());
                Ok(OpenedStore::Redb {
                    store,
                    log,
                    state_machine,
                    reader,
                })
            }
        }
    }

    pub fn reader(&self) -> Arc<dyn KvReader> {
        match self {
            OpenedStore::Memory { reader, .. } | OpenedStore::Redb { reader, .. } => reader.clone(),
        }
    }
}

/// Prefix scans: the first key at or after which to start, given an optional
/// cursor, and whether `key` is still inside the prefix.
pub(crate) fn scan_start<'a>(prefix: &'a str, start_after: Option<&'a str>) -> &'a str {
    match start_after {
        Some(after) if after >= prefix => after,
        _ => prefix,
    }
}
