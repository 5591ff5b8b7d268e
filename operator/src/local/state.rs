//! What local mode remembers between runs, in one JSON file in the data
//! directory: the planner's record, how many ordinals run (the StatefulSet's
//! replicas in Kubernetes), and the loopback ports of every ordinal. Also the
//! lock that keeps two local modes off one data directory.
//!
//! The file is replaced atomically (write, fsync, rename, fsync the
//! directory) before the action it describes runs, as the controller writes
//! status before acting.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use rustix::fs::{FlockOperation, flock};
use serde::{Deserialize, Serialize};

use super::{LocalError, Storage};
use crate::crd::OperationStatus;
use crate::membership::{Ordinal, Record};
use crate::nodes::NodeAddresses;
use crate::status::{operation_from_status, operation_status};

/// The state file's name in the data directory.
pub const STATE_FILE: &str = "local-state.json";
/// Held (flock) while local mode runs on a data directory.
const LOCK_FILE: &str = "local.lock";
/// Version of the state file's format; another version is refused.
const STATE_VERSION: u32 = 1;
/// The state file is a few hundred bytes; anything far larger is not ours.
const MAX_STATE_BYTES: u64 = 64 * 1024;

/// The two ports of one node on 127.0.0.1.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodePorts {
    pub client: u16,
    pub peer: u16,
}

/// Local mode's persistent state.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct State {
    pub version: u32,
    /// The Raft cluster id (`namespace/name`) the data belongs to.
    pub cluster_id: String,
    pub storage: Storage,
    pub bootstrapped: bool,
    /// The membership operation being executed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<OperationStatus>,
    /// Ordinals `0..replicas` run a node.
    pub replicas: u32,
    /// Ports by ordinal, kept while the ordinal's data lives.
    pub ports: BTreeMap<Ordinal, NodePorts>,
}

impl State {
    pub fn new(cluster_id: String, storage: Storage) -> Self {
        State {
            version: STATE_VERSION,
            cluster_id,
            storage,
            bootstrapped: false,
            operation: None,
            replicas: 0,
            ports: BTreeMap::new(),
        }
    }

    /// The state to run `cluster_id` on `dir` with: the last run's, or a new
    /// one when there was none or its nodes kept their data in memory.
    pub fn open(dir: &Path, cluster_id: String, storage: Storage) -> Result<State, LocalError> {
        match State::load(dir)? {
            Some(state) if state.cluster_id != cluster_id => Err(LocalError::ForeignState {
                dir: dir.to_owned(),
                found: state.cluster_id,
                expected: cluster_id,
            }),
            Some(state) if state.storage != storage => Err(LocalError::StorageMismatch {
                dir: dir.to_owned(),
                found: state.storage,
            }),
            Some(state) if state.storage == Storage::Memory => {
                tracing::info!(
                    "the nodes of the last run kept their data in memory: starting a new cluster"
                );
                Ok(State::new(cluster_id, storage))
            }
            Some(state) => Ok(state),
            None => Ok(State::new(cluster_id, storage)),
        }
    }

    /// The state in `dir`, if local mode ran there before.
    pub fn load(dir: &Path) -> Result<Option<State>, LocalError> {
        let path = dir.join(STATE_FILE);
        let corrupt = |message: String| LocalError::State {
            path: path.clone(),
            message,
        };
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(corrupt(error.to_string())),
        };
        let length = file.metadata().map_err(|e| corrupt(e.to_string()))?.len();
        if length > MAX_STATE_BYTES {
            return Err(corrupt(format!(
                "{length} bytes, more than the {MAX_STATE_BYTES} a state file can hold"
            )));
        }
        let state: State = serde_json::from_reader(io::BufReader::new(file))
            .map_err(|e| corrupt(e.to_string()))?;
        if state.version != STATE_VERSION {
            return Err(corrupt(format!(
                "format version {} is not {STATE_VERSION}, the one this aspen-operator reads",
                state.version
            )));
        }
        Ok(Some(state))
    }

    /// Replace the state file in `dir` atomically and durably.
    pub fn save(&self, dir: &Path) -> Result<(), LocalError> {
        let path = dir.join(STATE_FILE);
        let failed = |error: io::Error| LocalError::Io {
            what: format!("writing {}", path.display()),
            error,
        };
        let bytes = serde_json::to_vec_pretty(self).expect("the state serialises to JSON");
        write_atomically(&path, &bytes, true).map_err(failed)
    }

    /// The planner's record.
    pub fn record(&self) -> Record {
        Record {
            bootstrapped: self.bootstrapped,
            operation: self.operation.as_ref().and_then(operation_from_status),
        }
    }

    /// Take the planner's new record, keeping the start time of an operation
    /// that was already recorded.
    pub fn set_record(&mut self, record: Record, now: &Time) {
        self.bootstrapped = record.bootstrapped;
        self.operation = record
            .operation
            .map(|op| operation_status(op, self.operation.as_ref(), now));
    }

    /// New free ports for `ordinal`, distinct from every other ordinal's.
    pub fn allocate_ports(&mut self, ordinal: Ordinal) -> io::Result<NodePorts> {
        let taken: Vec<u16> = self
            .ports
            .iter()
            .filter(|(o, _)| **o != ordinal)
            .flat_map(|(_, p)| [p.client, p.peer])
            .collect();
        // Held together so that the kernel hands out two different ports.
        let mut listeners = Vec::new();
        let mut free = Vec::new();
        while free.len() < 2 {
            if listeners.len() >= 16 {
                return Err(io::Error::other(
                    "the kernel keeps handing out ports that other nodes use",
                ));
            }
            let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
            let port = listener.local_addr()?.port();
            if !taken.contains(&port) {
                free.push(port);
            }
            listeners.push(listener);
        }
        let ports = NodePorts {
            client: free[0],
            peer: free[1],
        };
        self.ports.insert(ordinal, ports);
        Ok(ports)
    }
}

/// Write `bytes` to `path` through a temporary file and a rename, so that a
/// reader sees the old or the new content, never a mix; with `durable`, the
/// file and the directory entry are on disk before this returns.
pub fn write_atomically(path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let mut file = File::create(&temporary)?;
    file.write_all(bytes)?;
    if durable {
        file.sync_all()?;
    }
    drop(file);
    fs::rename(&temporary, path)?;
    if durable && let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Loopback addresses of the nodes, from their ports.
#[derive(Debug, Clone, Copy)]
pub struct Loopback<'a>(pub &'a BTreeMap<Ordinal, NodePorts>);

impl Loopback<'_> {
    fn ports(&self, ordinal: Ordinal) -> NodePorts {
        *self.0.get(&ordinal).unwrap_or_else(|| {
            panic!("ordinal {ordinal} has no ports: they are allocated before its node starts")
        })
    }
}

impl NodeAddresses for Loopback<'_> {
    fn client_address(&self, ordinal: Ordinal) -> String {
        format!("127.0.0.1:{}", self.ports(ordinal).client)
    }

    fn peer_address(&self, ordinal: Ordinal) -> String {
        format!("127.0.0.1:{}", self.ports(ordinal).peer)
    }
}

/// Whether `port` on 127.0.0.1 can be listened on right now.
pub fn port_is_free(port: u16) -> bool {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).is_ok()
}

/// The exclusive lock on a data directory, held until dropped.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    pub fn acquire(dir: &Path) -> Result<Self, LocalError> {
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|error| LocalError::Io {
                what: format!("opening {}", path.display()),
                error,
            })?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(DirLock { _file: file }),
            Err(rustix::io::Errno::WOULDBLOCK) => Err(LocalError::Locked {
                dir: dir.to_owned(),
            }),
            Err(error) => Err(LocalError::Io {
                what: format!("locking {}", path.display()),
                error: error.into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::membership::Operation;

    use super::*;

    fn at(seconds: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(seconds).expect("valid time"))
    }

    #[test]
    fn state_round_trips_through_its_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(State::load(dir.path()).expect("no file is no state"), None);
        let mut state = State::new("default/basic".into(), Storage::Redb);
        state.replicas = 2;
        state.allocate_ports(0).expect("ports");
        state.allocate_ports(1).expect("ports");
        state.set_record(
            Record {
                bootstrapped: true,
                operation: Some(Operation::Promote { node_id: 2 }),
            },
            &at(10),
        );
        state.save(dir.path()).expect("save");
        let loaded = State::load(dir.path()).expect("load").expect("saved");
        assert_eq!(loaded, state);
        assert_eq!(
            loaded.record().operation,
            Some(Operation::Promote { node_id: 2 })
        );
    }

    #[test]
    fn allocated_ports_are_distinct_across_ordinals() {
        let mut state = State::new("default/basic".into(), Storage::Redb);
        let mut seen = Vec::new();
        for ordinal in 0..5 {
            let ports = state.allocate_ports(ordinal).expect("ports");
            seen.extend([ports.client, ports.peer]);
        }
        let mut unique = seen.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), seen.len(), "ports {seen:?}");
    }

    #[test]
    fn a_recorded_operation_keeps_its_start_time() {
        let mut state = State::new("default/basic".into(), Storage::Redb);
        let record = Record {
            bootstrapped: true,
            operation: Some(Operation::AddLearner { node_id: 3 }),
        };
        state.set_record(record, &at(10));
        state.set_record(record, &at(20));
        let started = state.operation.as_ref().map(|op| op.started_at.clone());
        assert_eq!(started, Some(at(10)));
        state.set_record(Record::default(), &at(30));
        assert_eq!(state.operation, None);
    }

    #[test]
    fn foreign_or_newer_state_files_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::write(dir.path().join(STATE_FILE), b"{\"version\": 99}").expect("write");
        let error = State::load(dir.path()).expect_err("unknown format");
        assert!(error.to_string().contains(STATE_FILE), "{error}");
        let mut state = State::new("default/basic".into(), Storage::Redb);
        state.version = 2;
        state.save(dir.path()).expect("save");
        let error = State::load(dir.path()).expect_err("newer version");
        assert!(error.to_string().contains("version 2"), "{error}");
    }

    #[test]
    fn another_clusters_or_storages_state_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        State::new("default/basic".into(), Storage::Redb)
            .save(dir.path())
            .expect("save");
        let other = State::open(dir.path(), "default/other".into(), Storage::Redb);
        assert!(matches!(other, Err(LocalError::ForeignState { .. })));
        let memory = State::open(dir.path(), "default/basic".into(), Storage::Memory);
        assert!(matches!(memory, Err(LocalError::StorageMismatch { .. })));
        let mut resumed = State::open(dir.path(), "default/basic".into(), Storage::Redb)
            .expect("the same cluster resumes");
        resumed.storage = Storage::Memory;
        resumed.bootstrapped = true;
        resumed.save(dir.path()).expect("save");
        let fresh = State::open(dir.path(), "default/basic".into(), Storage::Memory)
            .expect("memory starts afresh");
        assert!(!fresh.bootstrapped, "nothing of a memory cluster survives");
    }

    #[test]
    fn a_second_lock_on_a_directory_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let held = DirLock::acquire(dir.path()).expect("first lock");
        assert!(matches!(
            DirLock::acquire(dir.path()),
            Err(LocalError::Locked { .. })
        ));
        drop(held);
        DirLock::acquire(dir.path()).expect("lock again once released");
    }
}
