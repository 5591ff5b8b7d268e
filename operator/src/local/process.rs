//! The node processes: one `aspen-node` child per ordinal, started on its
//! data directory and ports with the manifest's settings, restarted after a
//! growing delay when it exits on its own (as the kubelet restarts a
//! crashed container), and stopped with SIGTERM, then SIGKILL after a grace
//! period, when its ordinal goes away or local mode stops.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};

use super::Storage;
use super::state::NodePorts;
use crate::crd::{AspenCluster, RaftSpec, SpecError};
use crate::membership::{Ordinal, PodState, node_id_of};
use crate::resources::Names;

/// Delay before the first restart of a node that exited on its own: long
/// enough for the other members to notice and elect a new leader.
pub const RESTART_DELAY_MIN: Duration = Duration::from_secs(2);
/// The delay doubles with each exit in a row, up to this.
pub const RESTART_DELAY_MAX: Duration = Duration::from_secs(30);
/// A node that ran this long before exiting restarts after the minimum delay.
const STABLE_RUN: Duration = Duration::from_secs(60);
/// Time a node has to hand leadership over and close its database after
/// SIGTERM, as the pods' terminationGracePeriodSeconds.
pub const STOP_GRACE: Duration = Duration::from_secs(30);
/// How much of the end of a node's log is searched for its last words.
const LOG_TAIL_BYTES: u64 = 4096;

/// The settings every node is started with, from the manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSettings {
    pub names: Names,
    pub storage: Storage,
    pub max_db_bytes: u64,
    pub raft: RaftSpec,
}

impl NodeSettings {
    pub fn of(cluster: &AspenCluster, storage: Storage) -> Result<Self, SpecError> {
        Ok(NodeSettings {
            names: Names::of(cluster),
            storage,
            max_db_bytes: cluster.spec.max_db_bytes()?,
            raft: cluster.spec.raft.clone(),
        })
    }
}

/// What a node's process is doing, as status.json reports it.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum ProcessState {
    Running,
    /// Sent SIGTERM; waiting for it to exit.
    Stopping,
    /// Exited on its own; starts again after a delay.
    Restarting,
    /// No process and none wanted.
    Stopped,
}

#[derive(Debug)]
enum Slot {
    Running {
        child: Child,
        since: Instant,
    },
    Stopping {
        child: Child,
        deadline: Instant,
        killed: bool,
    },
    Restarting {
        at: Instant,
    },
}

#[derive(Debug)]
struct Node {
    slot: Slot,
    /// Exits on its own so far, in this run of local mode.
    restarts: u32,
    delay: Duration,
}

/// The node processes of one cluster.
#[derive(Debug)]
pub struct Supervisor {
    binary: PathBuf,
    root: PathBuf,
    nodes: BTreeMap<Ordinal, Node>,
}

impl Supervisor {
    /// Nodes run `binary`; their data and logs live under `root`.
    pub fn new(binary: PathBuf, root: PathBuf) -> Self {
        Supervisor {
            binary,
            root,
            nodes: BTreeMap::new(),
        }
    }

    /// The data directory of the node at `ordinal`.
    pub fn data_dir(&self, names: &Names, ordinal: Ordinal) -> PathBuf {
        self.root.join(names.pod(ordinal))
    }

    /// The log file of the node at `ordinal`.
    pub fn log_file(&self, names: &Names, ordinal: Ordinal) -> PathBuf {
        log_file(&self.root, names, ordinal)
    }

    /// Notice exits: a node that exits on its own below `replicas` is
    /// restarted later; a stopped one is forgotten; one that ignores SIGTERM
    /// past the grace period is killed.
    pub fn reap(&mut self, names: &Names, replicas: u32) {
        let now = Instant::now();
        let mut gone = Vec::new();
        for (&ordinal, node) in &mut self.nodes {
            match &mut node.slot {
                Slot::Running { child, since } => {
                    let Some(status) = exited(child, ordinal) else {
                        continue;
                    };
                    let ran = now.duration_since(*since);
                    let log = log_file(&self.root, names, ordinal);
                    let last_words = last_line(&log).unwrap_or_default();
                    if ordinal >= replicas {
                        tracing::info!(node = %names.pod(ordinal), %status, "node exited");
                        gone.push(ordinal);
                        continue;
                    }
                    if ran >= STABLE_RUN {
                        node.delay = RESTART_DELAY_MIN;
                    }
                    tracing::warn!(
                        node = %names.pod(ordinal),
                        %status,
                        ran_ms = u64::try_from(ran.as_millis()).unwrap_or(u64::MAX),
                        restart_in_ms = u64::try_from(node.delay.as_millis()).unwrap_or(u64::MAX),
                        last_words,
                        log = %log.display(),
                        "node exited on its own; restarting it"
                    );
                    node.restarts = node.restarts.saturating_add(1);
                    node.slot = Slot::Restarting {
                        at: now + node.delay,
                    };
                    node.delay = (node.delay * 2).min(RESTART_DELAY_MAX);
                }
                Slot::Stopping {
                    child,
                    deadline,
                    killed,
                } => {
                    if let Some(status) = exited(child, ordinal) {
                        tracing::info!(node = %names.pod(ordinal), %status, "node stopped");
                        gone.push(ordinal);
                    } else if now >= *deadline && !*killed {
                        tracing::warn!(
                            node = %names.pod(ordinal),
                            grace_s = STOP_GRACE.as_secs(),
                            "node ignored SIGTERM; killing it"
                        );
                        if let Err(error) = child.start_kill() {
                            tracing::warn!(ordinal, %error, "could not kill node");
                        }
                        *killed = true;
                    }
                }
                Slot::Restarting { .. } => {}
            }
        }
        for ordinal in gone {
            self.nodes.remove(&ordinal);
        }
    }

    /// Stop every node at or above `replicas`.
    pub fn stop_from(&mut self, names: &Names, replicas: u32) {
        let above: Vec<Ordinal> = self.nodes.range(replicas..).map(|(o, _)| *o).collect();
        for ordinal in above {
            if let Some(node) = self.nodes.remove(&ordinal) {
                match node.slot {
                    Slot::Running { child, .. } => {
                        tracing::info!(node = %names.pod(ordinal), "stopping node");
                        terminate(&child, ordinal);
                        let slot = Slot::Stopping {
                            child,
                            deadline: Instant::now() + STOP_GRACE,
                            killed: false,
                        };
                        self.nodes.insert(ordinal, Node { slot, ..node });
                    }
                    slot @ Slot::Stopping { .. } => {
                        self.nodes.insert(ordinal, Node { slot, ..node });
                    }
                    Slot::Restarting { .. } => {}
                }
            }
        }
    }

    /// Ordinals below `replicas` that need a process started now.
    pub fn due(&self, replicas: u32) -> Vec<Ordinal> {
        let now = Instant::now();
        (0..replicas)
            .filter(|o| match self.nodes.get(o).map(|n| &n.slot) {
                None => true,
                Some(Slot::Restarting { at }) => now >= *at,
                Some(Slot::Running { .. } | Slot::Stopping { .. }) => false,
            })
            .collect()
    }

    /// Start the node at `ordinal` on `ports`. A failure to start counts as
    /// an exit: it is tried again after the restart delay.
    pub fn start(&mut self, settings: &NodeSettings, ordinal: Ordinal, ports: NodePorts) {
        let names = &settings.names;
        let started = self.spawn(settings, ordinal, ports);
        let node = self.nodes.entry(ordinal).or_insert(Node {
            slot: Slot::Restarting { at: Instant::now() },
            restarts: 0,
            delay: RESTART_DELAY_MIN,
        });
        match started {
            Ok(child) => {
                tracing::info!(
                    node = %names.pod(ordinal),
                    pid = child.id(),
                    client = ports.client,
                    peer = ports.peer,
                    "node started"
                );
                node.slot = Slot::Running {
                    child,
                    since: Instant::now(),
                };
            }
            Err(error) => {
                tracing::error!(
                    node = %names.pod(ordinal),
                    binary = %self.binary.display(),
                    %error,
                    "could not start node"
                );
                node.restarts = node.restarts.saturating_add(1);
                node.slot = Slot::Restarting {
                    at: Instant::now() + node.delay,
                };
                node.delay = (node.delay * 2).min(RESTART_DELAY_MAX);
            }
        }
    }

    fn spawn(
        &self,
        settings: &NodeSettings,
        ordinal: Ordinal,
        ports: NodePorts,
    ) -> io::Result<Child> {
        let names = &settings.names;
        let log_path = self.log_file(names, ordinal);
        if let Some(dir) = log_path.parent() {
            fs::create_dir_all(dir)?;
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let raft = &settings.raft;
        let mut command = Command::new(&self.binary);
        command
            .arg("--node-id")
            .arg(node_id_of(ordinal).to_string())
            .arg("--cluster-id")
            .arg(names.cluster_id())
            .arg("--data-dir")
            .arg(self.data_dir(names, ordinal))
            .arg("--storage")
            .arg(settings.storage.as_str())
            .arg("--max-db-bytes")
            .arg(settings.max_db_bytes.to_string())
            .arg("--client-listen")
            .arg(format!("127.0.0.1:{}", ports.client))
            .arg("--peer-listen")
            .arg(format!("127.0.0.1:{}", ports.peer))
            .arg("--heartbeat-ms")
            .arg(raft.heartbeat_ms.to_string())
            .arg("--election-timeout-min-ms")
            .arg(raft.election_timeout_min_ms.to_string())
            .arg("--election-timeout-max-ms")
            .arg(raft.election_timeout_max_ms.to_string())
            .arg("--snapshot-threshold")
            .arg(raft.snapshot_threshold.to_string())
            .arg("--log-format")
            .arg("text")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // A local mode that dies by a panic takes its nodes with it.
            .kill_on_drop(true);
        // Every setting is a flag; an ASPEN_* variable of the user's shell
        // (ASPEN_POD_NAME, say) must not add another. ASPEN_LOG, the log
        // filter, passes through.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("ASPEN_") && name != "ASPEN_LOG" {
                command.env_remove(name.as_ref());
            }
        }
        command.spawn()
    }

    /// The planner's pods: every ordinal with a process, running or going.
    pub fn pods(&self) -> BTreeMap<Ordinal, PodState> {
        self.nodes
            .iter()
            .filter_map(|(&ordinal, node)| {
                let running = match node.slot {
                    Slot::Running { .. } => true,
                    Slot::Stopping { .. } => false,
                    Slot::Restarting { .. } => return None,
                };
                Some((
                    ordinal,
                    PodState {
                        running,
                        ready: false,
                    },
                ))
            })
            .collect()
    }

    /// What the process at `ordinal` does, its pid, and its restarts.
    pub fn process(&self, ordinal: Ordinal) -> (ProcessState, Option<u32>, u32) {
        match self.nodes.get(&ordinal) {
            None => (ProcessState::Stopped, None, 0),
            Some(node) => match &node.slot {
                Slot::Running { child, .. } => (ProcessState::Running, child.id(), node.restarts),
                Slot::Stopping { child, .. } => (ProcessState::Stopping, child.id(), node.restarts),
                Slot::Restarting { .. } => (ProcessState::Restarting, None, node.restarts),
            },
        }
    }

    /// Ordinals with a process or a pending restart.
    pub fn ordinals(&self) -> impl Iterator<Item = Ordinal> + '_ {
        self.nodes.keys().copied()
    }

    /// Stop every node: SIGTERM to all at once, SIGKILL to those still
    /// running after the grace period.
    pub async fn stop_all(&mut self, names: &Names) {
        let mut stopping = Vec::new();
        for (ordinal, node) in std::mem::take(&mut self.nodes) {
            match node.slot {
                Slot::Running { child, .. } | Slot::Stopping { child, .. } => {
                    terminate(&child, ordinal);
                    stopping.push((ordinal, child));
                }
                Slot::Restarting { .. } => {}
            }
        }
        let waits = stopping.into_iter().map(|(ordinal, mut child)| async move {
            let status = match tokio::time::timeout(STOP_GRACE, child.wait()).await {
                Ok(status) => status,
                Err(_) => {
                    tracing::warn!(node = %names.pod(ordinal), "node ignored SIGTERM; killing it");
                    if let Err(error) = child.start_kill() {
                        tracing::warn!(ordinal, %error, "could not kill node");
                    }
                    child.wait().await
                }
            };
            match status {
                Ok(status) => tracing::info!(node = %names.pod(ordinal), %status, "node stopped"),
                Err(error) => {
                    tracing::warn!(node = %names.pod(ordinal), %error, "lost track of node")
                }
            }
        });
        futures::future::join_all(waits).await;
    }
}

/// The exit status, once the child has exited.
fn exited(child: &mut Child, ordinal: Ordinal) -> Option<ExitStatus> {
    match child.try_wait() {
        Ok(status) => status,
        Err(error) => {
            tracing::warn!(ordinal, %error, "cannot check on node process");
            None
        }
    }
}

/// The log file of the node at `ordinal` under `root`: outside its data
/// directory, so that wiping the data keeps the story of what happened.
fn log_file(root: &Path, names: &Names, ordinal: Ordinal) -> PathBuf {
    root.join("logs")
        .join(format!("{}.log", names.pod(ordinal)))
}

/// Send SIGTERM: the node hands leadership over and closes its database.
fn terminate(child: &Child, ordinal: Ordinal) {
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .and_then(Pid::from_raw);
    if let Some(pid) = pid
        && let Err(error) = kill_process(pid, Signal::TERM)
    {
        tracing::warn!(ordinal, %error, "could not send SIGTERM to node");
    }
}

/// The last non-empty line of a log file: a node's fatal error, usually.
pub fn last_line(path: &Path) -> Option<String> {
    let mut file = File::open(path).ok()?;
    let length = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(length.saturating_sub(LOG_TAIL_BYTES)))
        .ok()?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).ok()?;
    String::from_utf8_lossy(&tail)
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .map(|line| line.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_line_skips_trailing_blank_lines() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("node.log");
        let long = "x".repeat(5000);
        fs::write(&path, format!("{long}\nstarting\naspen-node: removed\n\n")).expect("write");
        assert_eq!(last_line(&path).as_deref(), Some("aspen-node: removed"));
        assert_eq!(last_line(&dir.path().join("missing.log")), None);
    }
}
