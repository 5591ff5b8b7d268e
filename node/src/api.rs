//! Wire types of the HTTP APIs: what clients, `aspenctl`, the operator and
//! tests send and receive. Serde only; no behaviour.
//!
//! These shapes are the public contract (`docs/api.md`). Internal types
//! (`types::Command`) are mapped to and from them at the server boundary, so
//! the wire format does not change when the replicated format does.

use serde::{Deserialize, Serialize};

use crate::types::{self, NodeId};

/// Every error body: a stable machine-readable code and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    /// The current leader's client address, when known and relevant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// With `cas_failed`: what the key holds (absent: no value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<KeyValue>,
}

/// Stable error codes. Each maps to one HTTP status (see `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed request: bad JSON, wrong types, invalid UTF-8, bad parameters.
    BadRequest,
    /// No route for this path.
    NotFound,
    /// Route exists, method does not.
    MethodNotAllowed,
    /// The key has no value.
    KeyNotFound,
    /// A compare-and-swap found a different value.
    CasFailed,
    /// A key, value, command or body exceeds a limit.
    TooLarge,
    /// No leader is known (election in progress or quorum lost).
    NoLeader,
    /// The database reached its size limit; only deletes are accepted.
    StorageFull,
    /// The request did not complete in time; it may or may not have been applied.
    Timeout,
    /// The node is not part of an initialised cluster.
    NotInitialized,
    /// The cluster is already initialised.
    AlreadyInitialized,
    /// The node was removed from the cluster and serves nothing.
    Removed,
    /// A peer RPC came from another cluster.
    WrongCluster,
    /// The membership request is invalid in the current configuration.
    InvalidMembership,
    /// The node is shutting down or cannot serve for another transient reason.
    Unavailable,
    /// A fault inside the node; see its log.
    Internal,
}

impl ErrorCode {
    /// The HTTP status this code is sent with.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::NotFound | ErrorCode::KeyNotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::CasFailed | ErrorCode::AlreadyInitialized | ErrorCode::InvalidMembership => {
                409
            }
            ErrorCode::Removed => 410,
            ErrorCode::TooLarge => 413,
            ErrorCode::WrongCluster => 403,
            ErrorCode::Internal => 500,
            ErrorCode::NoLeader
            | ErrorCode::StorageFull
            | ErrorCode::NotInitialized
            | ErrorCode::Unavailable => 503,
            ErrorCode::Timeout => 504,
        }
    }

    /// Whether the same request may succeed if retried, possibly elsewhere.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::NoLeader | ErrorCode::Unavailable | ErrorCode::Timeout
        )
    }
}

/// Read consistency, as the `consistency` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// Confirmed with a quorum before reading: sees every acknowledged write.
    #[default]
    Linearizable,
    /// This node's applied state, without a round trip: may be behind.
    Stale,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
    /// Log index of the write that last set the value.
    pub revision: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutRequest {
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutResponse {
    pub revision: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteResponse {
    pub revision: u64,
    pub deleted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanResponse {
    pub items: Vec<KeyValue>,
    /// Pass as `cursor` to continue after the last item; absent at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CasRequest {
    pub key: String,
    /// The value the key must have; `null` or absent: the key must not exist.
    #[serde(default)]
    pub expected: Option<String>,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CasResponse {
    pub succeeded: bool,
    pub revision: u64,
    /// On failure, what the key holds (absent: no value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<KeyValue>,
}

/// A transaction operation: `{"put": {"key": "k", "value": "v"}}` or
/// `{"delete": {"key": "k"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TxnOp {
    Put { key: String, value: String },
    Delete { key: String },
}

/// A transaction condition: `"absent"`, `"present"`, `{"value": "v"}` or
/// `{"revision": 12}` (revision 0 means absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxnCheck {
    Absent,
    Present,
    Value(String),
    Revision(u64),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxnCompare {
    pub key: String,
    pub check: TxnCheck,
}

/// If every comparison holds, apply `success`, else `failure`; atomically.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxnRequest {
    #[serde(default)]
    pub compare: Vec<TxnCompare>,
    #[serde(default)]
    pub success: Vec<TxnOp>,
    #[serde(default)]
    pub failure: Vec<TxnOp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResponse {
    pub succeeded: bool,
    pub revision: u64,
}

/// A cluster member's identity and addresses (`host:port`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub node_id: NodeId,
    pub peer_addr: String,
    pub client_addr: String,
}

/// Initialise a new cluster: this node alone (no `members`) or the given set,
/// which must include this node.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitRequest {
    #[serde(default)]
    pub members: Vec<Member>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddLearnerRequest {
    pub node_id: NodeId,
    pub peer_addr: String,
    pub client_addr: String,
    /// Answer only once the learner has caught up with the leader's log.
    #[serde(default)]
    pub wait: bool,
}

impl AddLearnerRequest {
    pub fn member(&self) -> Member {
        Member {
            node_id: self.node_id,
            peer_addr: self.peer_addr.clone(),
            client_addr: self.client_addr.clone(),
        }
    }
}

/// Change the voter set: `add_voters` must already be learners.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeMembershipRequest {
    #[serde(default)]
    pub add_voters: Vec<NodeId>,
    #[serde(default)]
    pub remove_voters: Vec<NodeId>,
    /// Keep removed voters as learners instead of removing them entirely.
    #[serde(default)]
    pub retain_as_learners: bool,
}

/// Remove learners from the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveLearnersRequest {
    pub node_ids: Vec<NodeId>,
}

/// Hand leadership to `to`, or to the most up-to-date other voter.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferLeaderRequest {
    #[serde(default)]
    pub to: Option<NodeId>,
}

/// Internal to leadership transfer: stop starting elections for `pause_ms`
/// (0 resumes them now). A pause always ends on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PauseElectionsRequest {
    pub pause_ms: u64,
}

/// Internal to membership changes: the leader tells a node it removed. The
/// node believes it only after the leader's own status confirms it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemovedNotice {
    /// Client address of the leader that removed the node.
    pub leader_addr: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferLeaderResponse {
    pub leader: NodeId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
}

/// The membership configuration in effect. During a joint change `voters`
/// is the union of both voter sets and `joint` is true.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MembershipView {
    pub voters: Vec<Member>,
    pub learners: Vec<Member>,
    pub joint: bool,
    /// Log index of the entry that set this configuration.
    pub log_index: Option<u64>,
}

impl MembershipView {
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.iter().any(|m| m.node_id == id)
    }

    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.iter().any(|m| m.node_id == id)
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.is_learner(id)
    }
}

/// Replication progress of one member, as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberProgress {
    pub node_id: NodeId,
    pub matched_index: Option<u64>,
    /// Entries the member is behind the leader's last log index.
    pub lag: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StorageStatus {
    /// `redb` or `memory`.
    pub backend: String,
    /// Length of the database file; it grows sparsely, see `disk_bytes`.
    pub file_bytes: u64,
    /// Disk space the database occupies.
    pub disk_bytes: u64,
    /// Disk space the database may occupy.
    pub max_bytes: u64,
    /// Bytes of log entries, keys and values stored.
    pub live_bytes: u64,
}

/// `GET /v1/admin/status`: everything the operator and `aspenctl` need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node_id: NodeId,
    pub cluster_id: String,
    pub role: Role,
    pub term: u64,
    pub leader_id: Option<NodeId>,
    /// The leader's client address, when known.
    pub leader_addr: Option<String>,
    pub last_log_index: Option<u64>,
    /// Highest index this node knows to be committed.
    pub committed_index: Option<u64>,
    pub last_applied_index: Option<u64>,
    pub membership: MembershipView,
    /// On the leader: every other member's progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<Vec<MemberProgress>>,
    pub storage: StorageStatus,
    /// Whether this node belongs to an initialised cluster.
    pub initialized: bool,
    /// Whether this node was removed from the cluster (it then serves nothing).
    pub removed: bool,
}

impl From<TxnOp> for types::Op {
    fn from(op: TxnOp) -> Self {
        match op {
            TxnOp::Put { key, value } => types::Op::Put { key, value },
            TxnOp::Delete { key } => types::Op::Delete { key },
        }
    }
}

impl From<TxnRequest> for types::Txn {
    fn from(txn: TxnRequest) -> Self {
        types::Txn {
            compare: txn
                .compare
                .into_iter()
                .map(|c| types::Compare {
                    key: c.key,
                    check: match c.check {
                        TxnCheck::Absent => types::Check::Absent,
                        TxnCheck::Present => types::Check::Present,
                        TxnCheck::Value(v) => types::Check::ValueEquals(v),
                        TxnCheck::Revision(r) => types::Check::RevisionEquals(r),
                    },
                })
                .collect(),
            success: txn.success.into_iter().map(Into::into).collect(),
            failure: txn.failure.into_iter().map(Into::into).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txn_json_shape_is_stable() {
        let json = r#"{
            "compare": [{"key": "a", "check": "absent"}, {"key": "b", "check": {"value": "1"}},
                        {"key": "c", "check": {"revision": 7}}],
            "success": [{"put": {"key": "a", "value": "x"}}],
            "failure": [{"delete": {"key": "b"}}]
        }"#;
        let txn: TxnRequest = serde_json::from_str(json).unwrap();
        assert_eq!(txn.compare[1].check, TxnCheck::Value("1".into()));
        assert_eq!(txn.compare[2].check, TxnCheck::Revision(7));
        let txn: types::Txn = txn.into();
        assert_eq!(txn.compare[0].check, types::Check::Absent);
        assert_eq!(txn.failure, vec![types::Op::Delete { key: "b".into() }]);
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_str::<PutRequest>(r#"{"value": "v", "ttl": 5}"#).is_err());
        assert!(serde_json::from_str::<PutRequest>(r#"{"value": 5}"#).is_err());
    }

    #[test]
    fn error_codes_serialise_as_snake_case_with_their_status() {
        let body = ErrorBody {
            code: ErrorCode::StorageFull,
            message: "full".into(),
            leader: None,
            current: None,
        };
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"code":"storage_full","message":"full"}"#
        );
        assert_eq!(ErrorCode::StorageFull.status(), 503);
        assert_eq!(ErrorCode::CasFailed.status(), 409);
        assert_eq!(ErrorCode::TooLarge.status(), 413);
    }
}
