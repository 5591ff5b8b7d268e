//! A cluster run by `aspen-operator local` from a manifest in a temporary
//! directory, as a user runs it.
//!
//! Local mode runs in a process group of its own, which its nodes inherit:
//! one SIGKILL to the group is a power cut, and dropping the handle sends it,
//! so no process outlives a test, whether it passed or not. The temporary
//! directory goes with the handle too; when a test fails, the logs of local
//! mode and of every node are printed first.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use aspen_node::api::{NodeStatus, Role};
use aspen_node::client::AspenClient;
use aspen_operator::local::{LocalStatus, ProcessState};
use aspen_operator::status::AVAILABLE;
use futures::future::join_all;
use rustix::process::{Pid, Signal, kill_process, kill_process_group};
use tempfile::TempDir;

use crate::binaries::binary;
use crate::wait;

/// Longest wait for a cluster to reach the size its manifest asks for.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest wait for local mode to stop its nodes and exit after SIGTERM: the
/// nodes' grace period and then some.
const TERMINATE_TIMEOUT: Duration = Duration::from_secs(45);
/// Timeout of the test client's requests.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// How much of each log a failed test prints.
const LOG_TAIL_BYTES: u64 = 6 * 1024;

/// The manifest of a test cluster: Raft timings short enough for tests,
/// long enough not to flap on a busy two-core machine.
pub fn manifest(name: &str, replicas: u32) -> String {
    format!(
        "apiVersion: aspen.dev/v1alpha1
kind: AspenCluster
metadata:
  name: {name}
spec:
  replicas: {replicas}
  storage:
    size: 1Gi
  raft:
    heartbeatMs: 50
    electionTimeoutMinMs: 400
    electionTimeoutMaxMs: 800
    snapshotThreshold: 1000
"
    )
}

/// A cluster under `aspen-operator local`.
#[derive(Debug)]
pub struct LocalCluster {
    root: TempDir,
    name: String,
    replicas: u32,
    operator: Option<Child>,
    /// Process group of every run: nodes live in their run's group and may
    /// outlive its local mode.
    groups: Vec<Pid>,
    /// Runs of local mode so far; each logs to its own file.
    runs: u32,
}

impl LocalCluster {
    /// Write a manifest of `replicas` nodes and run local mode on it.
    pub fn start(name: &str, replicas: u32) -> Self {
        let root = tempfile::Builder::new()
            .prefix("aspen-e2e-")
            .tempdir()
            .expect("a temporary directory");
        let mut cluster = LocalCluster {
            root,
            name: name.to_owned(),
            replicas,
            operator: None,
            groups: Vec::new(),
            runs: 0,
        };
        cluster.write_manifest();
        cluster.launch();
        cluster
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Local mode's data directory: node data, logs, state, status.json.
    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    fn manifest_path(&self) -> PathBuf {
        self.root.path().join(format!("{}.yaml", self.name))
    }

    fn operator_log(&self, run: u32) -> PathBuf {
        self.root.path().join(format!("operator-{run}.log"))
    }

    fn write_manifest(&self) {
        std::fs::write(self.manifest_path(), manifest(&self.name, self.replicas))
            .expect("writing the manifest");
    }

    /// Run `aspen-operator local` on the manifest and data directory.
    pub fn launch(&mut self) {
        assert!(self.operator.is_none(), "local mode already runs");
        self.runs += 1;
        let log = File::create(self.operator_log(self.runs)).expect("creating the operator log");
        let child = Command::new(binary("aspen-operator"))
            .arg("local")
            .arg(self.manifest_path())
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--node-bin")
            .arg(binary("aspen-node"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log handle"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("aspen-operator starts");
        self.groups.push(Pid::from_child(&child));
        self.operator = Some(child);
    }

    /// What local mode's own log says so far, for the run `run` (1 first).
    pub fn operator_output(&self, run: u32) -> String {
        std::fs::read_to_string(self.operator_log(run)).unwrap_or_default()
    }

    /// The latest status.json, if local mode wrote one.
    pub fn status(&self) -> Option<LocalStatus> {
        LocalStatus::read(&self.data_dir()).ok()
    }

    /// Wait until `check` accepts the status; its `Err` says what it saw.
    pub async fn wait_status<T>(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&LocalStatus) -> Result<T, String>,
    ) -> T {
        let check = &check;
        wait::until(what, timeout, || async move {
            let status = self.status().ok_or("no status.json yet".to_owned())?;
            check(&status)
        })
        .await
    }

    /// Wait until the members are exactly nodes `1..=replicas`, all voters
    /// and healthy, the cluster is Available, nothing is left to do, the
    /// ordinals below `replicas` run a process and the others have exited.
    pub async fn wait_converged(&self, replicas: u32) -> LocalStatus {
        let what = format!("{} to converge on {replicas} voters", self.name);
        self.wait_status(&what, CONVERGE_TIMEOUT, |s| {
            converged(s, replicas).map(|()| s.clone())
        })
        .await
    }

    /// Change `spec.replicas` in the manifest, as a user edits it.
    pub fn set_replicas(&mut self, replicas: u32) {
        self.replicas = replicas;
        self.write_manifest();
    }

    /// Client addresses of the nodes whose process runs.
    pub fn endpoints(&self) -> Vec<String> {
        self.status()
            .map(|s| running_endpoints(&s))
            .unwrap_or_default()
    }

    /// A client of every running node.
    pub fn client(&self) -> AspenClient {
        AspenClient::new(self.endpoints()).with_timeout(CLIENT_TIMEOUT)
    }

    /// The Raft status of every running node that answers, by node id.
    pub async fn node_statuses(&self) -> BTreeMap<u64, NodeStatus> {
        let endpoints = self.endpoints();
        let answers = join_all(endpoints.iter().map(|endpoint| async move {
            AspenClient::new(vec![endpoint.clone()])
                .with_timeout(CLIENT_TIMEOUT)
                .status()
                .await
                .ok()
        }))
        .await;
        answers
            .into_iter()
            .flatten()
            .map(|status| (status.node_id, status))
            .collect()
    }

    /// Wait until every running node answers and follows one leader; the
    /// statuses, by node id, and the leader's id.
    pub async fn wait_leader(&self) -> (BTreeMap<u64, NodeStatus>, u64) {
        let what = format!("every node of {} to follow one leader", self.name);
        wait::until(&what, CONVERGE_TIMEOUT, || async {
            let running = self.endpoints().len();
            let statuses = self.node_statuses().await;
            let leaders: BTreeSet<Option<u64>> = statuses.values().map(|s| s.leader_id).collect();
            match leaders.iter().collect::<Vec<_>>().as_slice() {
                [Some(id)]
                    if statuses.len() == running
                        && statuses.get(id).is_some_and(|l| l.role == Role::Leader) =>
                {
                    Ok((statuses, *id))
                }
                _ => Err(format!("{running} running, leaders seen {leaders:?}")),
            }
        })
        .await
    }

    /// SIGKILL the node at `ordinal`; returns its pid.
    pub fn kill_node(&self, ordinal: u32) -> u32 {
        let status = self.status().expect("status.json");
        let node = status.node(ordinal).expect("the node is listed");
        let pid = node.pid.expect("the node runs");
        let raw = i32::try_from(pid).expect("pids fit i32");
        kill_process(Pid::from_raw(raw).expect("a pid is positive"), Signal::KILL)
            .expect("SIGKILL to the node");
        pid
    }

    /// SIGKILL local mode and every node at once, as a power cut would, and
    /// wait until their ports are closed.
    pub async fn kill_all(&mut self) {
        let ports: Vec<String> = self
            .status()
            .map(|s| {
                s.nodes
                    .iter()
                    .flat_map(|n| [n.client_address.clone(), n.peer_address.clone()])
                    .flatten()
                    .collect()
            })
            .unwrap_or_default();
        self.kill_groups();
        for address in ports {
            let what = format!("{address} to close after SIGKILL");
            wait::until(&what, Duration::from_secs(10), || {
                let address = address.clone();
                async move {
                    match tokio::net::TcpStream::connect(&address).await {
                        Ok(_) => Err("still accepting connections"),
                        Err(_) => Ok(()),
                    }
                }
            })
            .await;
        }
    }

    /// SIGTERM to local mode, as Ctrl-C in its terminal: it stops its nodes
    /// gracefully and exits. Returns its exit status.
    pub async fn terminate(&mut self) -> ExitStatus {
        let child = self.operator.as_mut().expect("local mode runs");
        kill_process(Pid::from_child(child), Signal::TERM).expect("SIGTERM to local mode");
        let deadline = Instant::now() + TERMINATE_TIMEOUT;
        loop {
            let child = self.operator.as_mut().expect("local mode runs");
            if let Some(status) = child.try_wait().expect("checking on local mode") {
                self.operator = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "local mode still runs {TERMINATE_TIMEOUT:?} after SIGTERM"
            );
            tokio::time::sleep(wait::POLL_INTERVAL).await;
        }
    }

    /// SIGKILL to every run's process group, local mode and nodes alike,
    /// whether or not its local mode already exited.
    fn kill_groups(&mut self) {
        for group in self.groups.drain(..) {
            // Fails with ESRCH once the group is empty.
            let _ = kill_process_group(group, Signal::KILL);
        }
        if let Some(mut child) = self.operator.take() {
            let _ = child.wait();
        }
    }

    /// The last part of every log: local mode's and each node's.
    fn dump_logs(&self) {
        for run in 1..=self.runs {
            eprintln!("---- local mode, run {run} ----");
            eprintln!("{}", tail(&self.operator_log(run)));
        }
        let logs = self.data_dir().join("logs");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&logs)
            .map(|entries| entries.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        for file in files {
            eprintln!("---- {} ----", file.display());
            eprintln!("{}", tail(&file));
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.kill_groups();
        if std::thread::panicking() {
            self.dump_logs();
        }
    }
}

/// Why `status` is not converged on `replicas` voters, if it is not.
pub fn converged(status: &LocalStatus, replicas: u32) -> Result<(), String> {
    let summary = || {
        let members: Vec<String> = status
            .status
            .members
            .iter()
            .map(|m| format!("{}:{:?}:{}", m.node_id, m.role, m.healthy))
            .collect();
        format!(
            "desired {}, running {}, members {members:?}, next: {}",
            status.desired_replicas, status.replicas, status.next_action
        )
    };
    let voters: Vec<u64> = status
        .status
        .members
        .iter()
        .filter(|m| m.role == aspen_operator::crd::MemberRole::Voter && m.healthy)
        .map(|m| m.node_id)
        .collect();
    let available = status
        .status
        .conditions
        .iter()
        .any(|c| c.type_ == AVAILABLE && c.status == "True");
    let processes_match = status.nodes.iter().all(|n| {
        let want = if n.ordinal < replicas {
            ProcessState::Running
        } else {
            ProcessState::Stopped
        };
        n.process == want
    });
    let ok = status.converged
        && status.desired_replicas == replicas
        && status.replicas == replicas
        && status.status.members.len() == voters.len()
        && voters == (1..=u64::from(replicas)).collect::<Vec<_>>()
        && available
        && processes_match;
    if ok { Ok(()) } else { Err(summary()) }
}

/// Client addresses of the nodes whose process runs.
pub fn running_endpoints(status: &LocalStatus) -> Vec<String> {
    status
        .nodes
        .iter()
        .filter(|n| n.process == ProcessState::Running)
        .filter_map(|n| n.client_address.clone())
        .collect()
}

fn tail(path: &Path) -> String {
    let Ok(mut file) = File::open(path) else {
        return "(no log)".to_owned();
    };
    let length = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(length.saturating_sub(LOG_TAIL_BYTES)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}
