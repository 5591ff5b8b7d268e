//! The Raft type configuration and the replicated command set.
//!
//! Everything openraft is parameterised over is declared here, so that the rest of
//! the crate names `TypeConfig` and these aliases rather than openraft's generics.
//! A command is what a client asks the cluster to do; it is replicated through the
//! Raft log and applied, identically on every member, by `storage::kv::apply_command`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::limits::{self, LimitError};
use crate::storage::snapshot::SnapshotData;

/// Raft node ids are `u64`; the operator assigns `StatefulSet ordinal + 1`.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Aspen's Raft type configuration.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = NodeId,
        Node = NodeAddr,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = SnapshotData,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Membership = openraft::Membership<NodeId, NodeAddr>;
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeAddr>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeAddr>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, NodeAddr>;

/// Whether `id` is a voter of `membership` (in either half of a joint config).
pub fn is_voter(membership: &Membership, id: NodeId) -> bool {
    membership.voter_ids().any(|voter| voter == id)
}

/// Where a member can be reached: the peer address carries Raft RPC, the client
/// address carries the KV and admin APIs. Both are `host:port`; in Kubernetes the
/// host is the pod's DNS name on the headless Service, never an IP.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddr {
    pub peer_addr: String,
    pub client_addr: String,
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer={} client={}", self.peer_addr, self.client_addr)
    }
}

/// A value together with the revision (log index) of the write that last set it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versioned {
    pub value: String,
    pub revision: u64,
}

/// One write inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Put { key: String, value: String },
    Delete { key: String },
}

/// A condition a transaction checks against the state before it writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Check {
    /// The key has no value.
    Absent,
    /// The key has some value.
    Present,
    /// The key's value equals this string.
    ValueEquals(String),
    /// The key was last written at this revision (`0` means absent).
    RevisionEquals(u64),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub key: String,
    pub check: Check,
}

/// A multi-key transaction: when every `compare` holds, `success` is applied,
/// otherwise `failure` is; either branch applies all of its writes or none.
/// A plain atomic batch is a transaction with no comparisons.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

/// The replicated command set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Put {
        key: String,
        value: String,
    },
    Delete {
        key: String,
    },
    /// Set `key` to `value` only if its current value is `expected`
    /// (`None`: only if the key is absent).
    CompareAndSwap {
        key: String,
        expected: Option<String>,
        value: String,
    },
    Txn(Txn),
    /// Commands proposed together in one log entry, applied in order, each
    /// at its own revision. Built by the node's proposal batcher, never sent
    /// by clients.
    Batch(Vec<Command>),
}

/// What applying a command produced. `revision` counts every command the
/// state machine has applied (batched or not); it is the same on every
/// member and increases with each command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// A blank or membership entry: nothing for a client.
    Empty,
    Put {
        revision: u64,
    },
    Delete {
        revision: u64,
        deleted: bool,
    },
    CompareAndSwap {
        revision: u64,
        succeeded: bool,
        /// The value found when the swap failed.
        current: Option<Versioned>,
    },
    Txn {
        revision: u64,
        succeeded: bool,
    },
    /// One response per command of a `Command::Batch`, in order.
    Batch(Vec<Response>),
}

impl Op {
    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => key,
        }
    }
}

impl Command {
    /// Checks every limit in `limits` before the command may reach Raft.
    pub fn validate(&self) -> Result<(), LimitError> {
        match self {
            Command::Put { key, value } => {
                limits::check_key(key)?;
                limits::check_value(value)?;
            }
            Command::Delete { key } => limits::check_key(key)?,
            Command::CompareAndSwap {
                key,
                expected,
                value,
            } => {
                limits::check_key(key)?;
                limits::check_value(value)?;
                if let Some(expected) = expected {
                    limits::check_value(expected)?;
                }
            }
            Command::Batch(_) => return Err(LimitError::InternalCommand),
            Command::Txn(txn) => {
                limits::check_txn_len(txn.compare.len(), txn.success.len(), txn.failure.len())?;
                for compare in &txn.compare {
                    limits::check_key(&compare.key)?;
                    if let Check::ValueEquals(value) = &compare.check {
                        limits::check_value(value)?;
                    }
                }
                for op in txn.success.iter().chain(&txn.failure) {
                    limits::check_key(op.key())?;
                    if let Op::Put { value, .. } = op {
                        limits::check_value(value)?;
                    }
                }
            }
        }
        limits::check_command_bytes(self.payload_bytes())
    }

    /// Bytes of keys and values the command carries: what it costs in the log.
    pub fn payload_bytes(&self) -> u64 {
        let len = |s: &str| s.len() as u64;
        match self {
            Command::Put { key, value } => len(key) + len(value),
            Command::Delete { key } => len(key),
            Command::CompareAndSwap {
                key,
                expected,
                value,
            } => len(key) + len(value) + expected.as_deref().map_or(0, len),
            Command::Txn(txn) => {
                let compares: u64 = txn
                    .compare
                    .iter()
                    .map(|c| {
                        len(&c.key)
                            + match &c.check {
                                Check::ValueEquals(v) => len(v),
                                _ => 8,
                            }
                    })
                    .sum();
                let ops: u64 = txn
                    .success
                    .iter()
                    .chain(&txn.failure)
                    .map(|op| match op {
                        Op::Put { key, value } => len(key) + len(value),
                        Op::Delete { key } => len(key),
                    })
                    .sum();
                compares + ops
            }
            Command::Batch(commands) => commands.iter().map(Command::payload_bytes).sum(),
        }
    }

    /// Whether applying the command can store more data than it removes.
    /// Only such commands are refused when the store is full.
    pub fn may_grow_storage(&self) -> bool {
        match self {
            Command::Delete { .. } => false,
            Command::Put { .. } | Command::CompareAndSwap { .. } => true,
            Command::Txn(txn) => txn
                .success
                .iter()
                .chain(&txn.failure)
                .any(|op| matches!(op, Op::Put { .. })),
            Command::Batch(commands) => commands.iter().any(Command::may_grow_storage),
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Put { key, .. } => write!(f, "put {key}"),
            Command::Delete { key } => write!(f, "delete {key}"),
            Command::CompareAndSwap { key, .. } => write!(f, "cas {key}"),
            Command::Txn(txn) => write!(
                f,
                "txn compare={} success={} failure={}",
                txn.compare.len(),
                txn.success.len(),
                txn.failure.len()
            ),
            Command::Batch(commands) => write!(f, "batch of {}", commands.len()),
        }
    }
}

impl Response {
    pub fn revision(&self) -> Option<u64> {
        match self {
            Response::Empty => None,
            Response::Batch(responses) => responses.iter().filter_map(Response::revision).max(),
            Response::Put { revision }
            | Response::Delete { revision, .. }
            | Response::CompareAndSwap { revision, .. }
            | Response::Txn { revision, .. } => Some(*revision),
        }
    }
}
