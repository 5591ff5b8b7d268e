//! Node configuration: every flag of `aspen-node`, each with an environment
//! variable of the same name (`--data-dir` is `ASPEN_DATA_DIR`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

use crate::limits::{
    DEFAULT_MAX_DB_BYTES, MAX_ENTRIES_PER_APPEND, MIN_DB_BYTES, SNAPSHOT_CHUNK_BYTES,
};
use crate::storage::StorageBackend;
use crate::types::NodeId;

/// Which store keeps the node's Raft state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StorageKind {
    /// One redb file in the data directory: durable.
    Redb,
    /// Process memory: everything is lost when the process exits. For tests.
    Memory,
}

pub use crate::logging::LogFormat;

/// Configuration of one node.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeConfig {
    /// Raft node id (1 or more). In a StatefulSet use --pod-name instead.
    #[arg(long, env = "ASPEN_NODE_ID", required_unless_present = "pod_name")]
    pub node_id: Option<NodeId>,

    /// StatefulSet pod name ("aspen-2"): the node id is the ordinal plus one.
    #[arg(long, env = "ASPEN_POD_NAME", conflicts_with = "node_id")]
    pub pod_name: Option<String>,

    /// Cluster identity; peers with another cluster id are refused.
    #[arg(long, env = "ASPEN_CLUSTER_ID", default_value = "aspen")]
    pub cluster_id: String,

    /// Directory holding the database and snapshots.
    #[arg(long, env = "ASPEN_DATA_DIR", default_value = "aspen-data")]
    pub data_dir: PathBuf,

    /// Where the Raft state lives.
    #[arg(long, env = "ASPEN_STORAGE", value_enum, default_value = "redb")]
    pub storage: StorageKind,

    /// Most disk space the database may occupy, in bytes or with a suffix
    /// (K, M, G, Ki, Mi, Gi). Snapshots need room besides this.
    #[arg(long, env = "ASPEN_MAX_DB_BYTES", default_value = "10Gi", value_parser = parse_bytes)]
    pub max_db_bytes: u64,

    /// Listen address of the client API (KV, admin, health, metrics).
    #[arg(long, env = "ASPEN_CLIENT_LISTEN", default_value = "127.0.0.1:7000")]
    pub client_listen: SocketAddr,

    /// Listen address of the peer (Raft RPC) API.
    #[arg(long, env = "ASPEN_PEER_LISTEN", default_value = "127.0.0.1:7001")]
    pub peer_listen: SocketAddr,

    /// Client address other members and clients use (host:port); defaults to
    /// the bound listen address.
    #[arg(long, env = "ASPEN_CLIENT_ADVERTISE")]
    pub client_advertise: Option<String>,

    /// Peer address other members use (host:port); defaults to the bound
    /// listen address.
    #[arg(long, env = "ASPEN_PEER_ADVERTISE")]
    pub peer_advertise: Option<String>,

    /// Leader heartbeat interval.
    #[arg(long, env = "ASPEN_HEARTBEAT_MS", default_value_t = 100)]
    pub heartbeat_ms: u64,

    /// Shortest election timeout.
    #[arg(long, env = "ASPEN_ELECTION_TIMEOUT_MIN_MS", default_value_t = 500)]
    pub election_timeout_min_ms: u64,

    /// Longest election timeout.
    #[arg(long, env = "ASPEN_ELECTION_TIMEOUT_MAX_MS", default_value_t = 1000)]
    pub election_timeout_max_ms: u64,

    /// Build a snapshot (and purge the log) after this many entries.
    #[arg(long, env = "ASPEN_SNAPSHOT_THRESHOLD", default_value_t = 10_000)]
    pub snapshot_threshold: u64,

    /// How long a client request may take before it fails with `timeout`.
    #[arg(long, env = "ASPEN_REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,

    /// Log format.
    #[arg(long, env = "ASPEN_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// A configuration that cannot work, said plainly.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("node id must be 1 or more (0 is reserved)")]
    ZeroNodeId,
    #[error("pod name {0:?} does not end in a StatefulSet ordinal (\"name-<n>\")")]
    PodNameWithoutOrdinal(String),
    #[error("one of --node-id or --pod-name is required")]
    NoNodeId,
    #[error("cluster id must be 1 to 253 characters of letters, digits, '-', '.', '/' or '_'")]
    BadClusterId,
    #[error(
        "election timeouts must satisfy heartbeat ({heartbeat_ms} ms) < min ({min_ms} ms) < max ({max_ms} ms)"
    )]
    BadTimeouts {
        heartbeat_ms: u64,
        min_ms: u64,
        max_ms: u64,
    },
    #[error("snapshot threshold must be at least 1")]
    BadSnapshotThreshold,
    #[error("the database size limit must be at least {MIN_DB_BYTES} bytes")]
    DbTooSmall,
}

impl NodeConfig {
    /// A configuration for tests and embedding: in-memory storage, loopback
    /// listeners on ephemeral ports, and fast timers.
    pub fn for_tests(node_id: NodeId) -> Self {
        NodeConfig {
            node_id: Some(node_id),
            pod_name: None,
            cluster_id: "test".into(),
            data_dir: PathBuf::from("aspen-data"),
            storage: StorageKind::Memory,
            max_db_bytes: DEFAULT_MAX_DB_BYTES,
            client_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            peer_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            client_advertise: None,
            peer_advertise: None,
            heartbeat_ms: 50,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            snapshot_threshold: 10_000,
            request_timeout_ms: 10_000,
            log_format: LogFormat::Text,
        }
    }

    /// The node id, from `--node-id` or from the pod name's ordinal.
    pub fn resolved_node_id(&self) -> Result<NodeId, ConfigError> {
        let id = match (&self.node_id, &self.pod_name) {
            (Some(id), _) => *id,
            (None, Some(pod)) => {
                let ordinal = pod
                    .rsplit_once('-')
                    .and_then(|(_, n)| n.parse::<u64>().ok())
                    .ok_or_else(|| ConfigError::PodNameWithoutOrdinal(pod.clone()))?;
                ordinal + 1
            }
            (None, None) => return Err(ConfigError::NoNodeId),
        };
        if id == 0 {
            return Err(ConfigError::ZeroNodeId);
        }
        Ok(id)
    }

    pub fn validate(&self) -> Result<NodeId, ConfigError> {
        let id = self.resolved_node_id()?;
        let cluster_ok = !self.cluster_id.is_empty()
            && self.cluster_id.len() <= 253
            && self
                .cluster_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-./_".contains(c));
        if !cluster_ok {
            return Err(ConfigError::BadClusterId);
        }
        if !(self.heartbeat_ms > 0
            && self.heartbeat_ms < self.election_timeout_min_ms
            && self.election_timeout_min_ms < self.election_timeout_max_ms)
        {
            return Err(ConfigError::BadTimeouts {
                heartbeat_ms: self.heartbeat_ms,
                min_ms: self.election_timeout_min_ms,
                max_ms: self.election_timeout_max_ms,
            });
        }
        if self.snapshot_threshold == 0 {
            return Err(ConfigError::BadSnapshotThreshold);
        }
        if self.storage == StorageKind::Redb && self.max_db_bytes < MIN_DB_BYTES {
            return Err(ConfigError::DbTooSmall);
        }
        Ok(id)
    }

    pub fn storage_backend(&self) -> StorageBackend {
        match self.storage {
            StorageKind::Memory => StorageBackend::InMemory,
            StorageKind::Redb => StorageBackend::Redb {
                path: self.data_dir.clone(),
                max_bytes: self.max_db_bytes,
            },
        }
    }

    /// openraft's configuration for these settings.
    pub fn raft_config(&self) -> openraft::Config {
        openraft::Config {
            cluster_name: self.cluster_id.clone(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            max_payload_entries: MAX_ENTRIES_PER_APPEND,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_threshold),
            snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
            // Keep enough log after a snapshot for a briefly lagging follower
            // to catch up without a snapshot transfer.
            max_in_snapshot_log_to_keep: self.snapshot_threshold.min(1_000),
            install_snapshot_timeout: 30_000,
            ..openraft::Config::default()
        }
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// How long a request waits for a leader to emerge before answering
    /// `no_leader`: long enough for one election.
    pub fn leader_wait(&self) -> Duration {
        Duration::from_millis(self.election_timeout_max_ms * 3)
    }
}

/// Parses a byte count: plain digits, or digits with K/M/G/T (powers of
/// 1000) or Ki/Mi/Gi/Ti (powers of 1024), as Kubernetes quantities are written.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a byte count (examples: 1048576, 512Mi, 10Gi)"))?;
    let multiplier: u64 = match suffix {
        "" => 1,
        "K" | "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size suffix {other:?} in {text:?} (use K, M, G, T, Ki, Mi, Gi or Ti)"
            ));
        }
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_accept_kubernetes_suffixes() {
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("10Gi"), Ok(10 << 30));
        assert_eq!(parse_bytes("512Mi"), Ok(512 << 20));
        assert_eq!(parse_bytes("2G"), Ok(2_000_000_000));
        assert!(parse_bytes("10GB").is_err());
        assert!(parse_bytes("Gi").is_err());
        assert!(parse_bytes("99999999999Ti").is_err());
    }

    #[test]
    fn node_id_comes_from_the_pod_ordinal() {
        let mut config = NodeConfig::for_tests(1);
        config.node_id = None;
        config.pod_name = Some("aspen-prod-2".into());
        assert_eq!(config.resolved_node_id(), Ok(3));
        config.pod_name = Some("aspen".into());
        assert!(matches!(
            config.resolved_node_id(),
            Err(ConfigError::PodNameWithoutOrdinal(_))
        ));
        config.pod_name = None;
        assert_eq!(config.resolved_node_id(), Err(ConfigError::NoNodeId));
    }

    #[test]
    fn invalid_settings_are_refused() {
        assert_eq!(
            NodeConfig::for_tests(0).validate(),
            Err(ConfigError::ZeroNodeId)
        );
        let mut config = NodeConfig::for_tests(1);
        config.election_timeout_min_ms = config.heartbeat_ms;
        assert!(matches!(
            config.validate(),
            Err(ConfigError::BadTimeouts { .. })
        ));
        let mut config = NodeConfig::for_tests(1);
        config.cluster_id = "has space".into();
        assert_eq!(config.validate(), Err(ConfigError::BadClusterId));
        assert_eq!(NodeConfig::for_tests(7).validate(), Ok(7));
    }
}
