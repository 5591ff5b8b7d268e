//! What local mode shows: `status.json` in the data directory (the
//! AspenCluster status the controller would write, plus the processes), for
//! scripts and tests; and the table it prints while it runs, for people.

use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::process::ProcessState;
use super::state::write_atomically;
use crate::crd::{AspenClusterStatus, MemberRole, MemberStatus};
use crate::membership::{Action, Ordinal, VolumeDeletion};
use crate::resources::Names;

/// The status file's name in the data directory.
pub const STATUS_FILE: &str = "status.json";
/// The file listing the members' client addresses, comma separated, as
/// `aspenctl --endpoints` (or `ASPEN_ENDPOINTS`) takes them.
pub const ENDPOINTS_FILE: &str = "endpoints";
/// A table whose only changes are lags is printed at most this often.
const TABLE_INTERVAL: Duration = Duration::from_secs(10);

/// Everything `status.json` says.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LocalStatus {
    /// The Raft cluster id, `namespace/name`.
    pub cluster_id: String,
    /// `spec.replicas` of the manifest.
    pub desired_replicas: u32,
    /// Ordinals `0..replicas` run a node (the StatefulSet's replicas).
    pub replicas: u32,
    /// The planner's next action, in words.
    pub next_action: String,
    /// The members match the manifest and nothing is left to do.
    pub converged: bool,
    /// What the controller would write into the AspenCluster's status.
    pub status: AspenClusterStatus,
    /// Every ordinal with a process, ports or data, in order.
    pub nodes: Vec<LocalNode>,
}

/// One ordinal's process and files.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LocalNode {
    pub name: String,
    pub ordinal: Ordinal,
    pub node_id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_address: Option<String>,
    pub data_dir: PathBuf,
    pub log_file: PathBuf,
    pub process: ProcessState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Times the node exited on its own and was started again.
    pub restarts: u32,
}

impl LocalStatus {
    /// The status file local mode keeps in `data_dir`.
    pub fn read(data_dir: &Path) -> io::Result<LocalStatus> {
        let bytes = std::fs::read(data_dir.join(STATUS_FILE))?;
        serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// The node at `ordinal`, if it has a process, ports or data.
    pub fn node(&self, ordinal: Ordinal) -> Option<&LocalNode> {
        self.nodes.iter().find(|n| n.ordinal == ordinal)
    }

    /// The table printed while local mode runs.
    pub fn table(&self) -> String {
        self.render(true)
    }

    /// The table without numbers that move with every write (lags, and
    /// the entries a learner is behind): what changes when something happens.
    pub fn shape(&self) -> String {
        self.render(false)
    }

    fn render(&self, exact: bool) -> String {
        let status = &self.status;
        let mut rows = vec![[
            "MEMBER".to_owned(),
            "ROLE".to_owned(),
            "ADDRESS".to_owned(),
            "LAG".to_owned(),
            "HEALTHY".to_owned(),
            "PROCESS".to_owned(),
        ]];
        for node in &self.nodes {
            let member = status.members.iter().find(|m| m.node_id == node.node_id);
            let lag = match member.and_then(|m| m.lag) {
                Some(lag) if exact => lag.to_string(),
                Some(_) => "*".to_owned(),
                None => "-".to_owned(),
            };
            rows.push([
                node.name.clone(),
                role(status, member).to_owned(),
                member
                    .map(|m| m.address.clone())
                    .or_else(|| node.client_address.clone())
                    .unwrap_or_else(|| "-".to_owned()),
                lag,
                match member {
                    Some(m) if m.healthy => "yes",
                    Some(_) => "no",
                    None => "-",
                }
                .to_owned(),
                process(node),
            ]);
        }
        let mut widths = [0; 6];
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.len());
            }
        }
        let mut text = format!(
            "{}: {:?}, {} of {} members ready, leader {}; {}\n",
            self.cluster_id,
            status.phase,
            status.ready_replicas,
            status.replicas,
            status.leader.as_deref().unwrap_or("none"),
            if exact {
                self.next_action.clone()
            } else {
                self.next_action.replace(|c: char| c.is_ascii_digit(), "#")
            }
        );
        for row in &rows {
            let mut line = String::new();
            for (cell, width) in row.iter().zip(widths) {
                write!(line, "{cell:<width$}  ").expect("writing to a String");
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text
    }
}

/// Writes status.json and the endpoints file, and prints the table.
#[derive(Debug)]
pub struct Reporter {
    dir: PathBuf,
    /// The last status written.
    written: Option<LocalStatus>,
    /// The last table printed, its shape, and when.
    shown: Option<Shown>,
    endpoints: String,
}

impl Reporter {
    /// Files go to `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Reporter {
            dir,
            written: None,
            shown: None,
            endpoints: String::new(),
        }
    }

    /// Report one step.
    pub fn report(&mut self, local: LocalStatus) {
        self.write_files(&local);
        self.print_table(&local);
        self.written = Some(local);
    }

    /// Say in status.json that every node stopped.
    pub fn stopped(&mut self) {
        if let Some(mut local) = self.written.clone() {
            for node in &mut local.nodes {
                node.process = ProcessState::Stopped;
                node.pid = None;
            }
            local.next_action = "stopped".to_owned();
            local.converged = false;
            self.write_files(&local);
            self.written = Some(local);
        }
    }

    /// Write status.json and the endpoints file when they changed.
    fn write_files(&mut self, local: &LocalStatus) {
        if self.written.as_ref() != Some(local) {
            let bytes = serde_json::to_vec_pretty(local).expect("status serialises to JSON");
            if let Err(error) = write_atomically(&self.dir.join(STATUS_FILE), &bytes, false) {
                tracing::warn!(%error, "could not write {STATUS_FILE}");
            }
        }
        let endpoints: Vec<&str> = local
            .status
            .members
            .iter()
            .map(|m| m.address.as_str())
            .collect();
        let endpoints = endpoints.join(",");
        if endpoints != self.endpoints {
            let written =
                write_atomically(&self.dir.join(ENDPOINTS_FILE), endpoints.as_bytes(), false);
            if let Err(error) = written {
                tracing::warn!(%error, "could not write {ENDPOINTS_FILE}");
            }
            self.endpoints = endpoints;
        }
    }

    /// Print the table when something other than lags changed (lags at
    /// most every 10 s).
    fn print_table(&mut self, local: &LocalStatus) {
        let (table, shape) = (local.table(), local.shape());
        let due = self.shown.as_ref().is_none_or(|shown| {
            shown.shape != shape || (shown.table != table && shown.at.elapsed() >= TABLE_INTERVAL)
        });
        if due {
            let mut out = io::stdout().lock();
            // A closed stdout is no reason to stop the cluster.
            let _ = writeln!(out, "{table}").and_then(|()| out.flush());
            self.shown = Some(Shown {
                table,
                shape,
                at: Instant::now(),
            });
        }
    }
}

/// A table printed to stdout.
#[derive(Debug)]
struct Shown {
    table: String,
    shape: String,
    at: Instant,
}

fn role(status: &AspenClusterStatus, member: Option<&MemberStatus>) -> &'static str {
    match member {
        None => "-",
        Some(m) if status.leader.as_deref() == Some(m.name.as_str()) => "leader",
        Some(m) if m.role == MemberRole::Learner => "learner",
        Some(_) => "follower",
    }
}

fn process(node: &LocalNode) -> String {
    let restarts = match node.restarts {
        0 => String::new(),
        n => format!(", {n} restarts"),
    };
    match (node.process, node.pid) {
        (ProcessState::Running, Some(pid)) => format!("pid {pid}{restarts}"),
        (ProcessState::Stopping, _) => "stopping".to_owned(),
        (ProcessState::Restarting, _) => format!("restarting{restarts}"),
        (ProcessState::Running, None) | (ProcessState::Stopped, _) => "stopped".to_owned(),
    }
}

/// The planner's action in words.
pub fn describe(action: &Action, names: &Names) -> String {
    match action {
        Action::Converged => "members match the manifest".to_owned(),
        Action::Membership(op) => op.to_string(),
        Action::ScaleStatefulSet { replicas } => format!("running {replicas} node processes"),
        Action::DeleteVolume { ordinal, why } => format!(
            "wiping the data of {}: {}",
            names.pod(*ordinal),
            match why {
                VolumeDeletion::Stale => "it holds data of a former member and joins again",
                VolumeDeletion::Policy => "pvcRetention.whenScaled is Delete",
            }
        ),
        Action::Wait(wait) => wait.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use crate::crd::Phase;

    use super::*;

    fn node(ordinal: Ordinal, process: ProcessState, pid: Option<u32>) -> LocalNode {
        LocalNode {
            name: format!("basic-{ordinal}"),
            ordinal,
            node_id: u64::from(ordinal) + 1,
            client_address: Some(format!("127.0.0.1:{}", 7000 + ordinal)),
            peer_address: Some(format!("127.0.0.1:{}", 8000 + ordinal)),
            data_dir: PathBuf::from(format!("d/basic-{ordinal}")),
            log_file: PathBuf::from(format!("d/logs/basic-{ordinal}.log")),
            process,
            pid,
            restarts: 0,
        }
    }

    fn member(ordinal: Ordinal, role: MemberRole, lag: Option<u64>) -> MemberStatus {
        MemberStatus {
            name: format!("basic-{ordinal}"),
            node_id: u64::from(ordinal) + 1,
            address: format!("127.0.0.1:{}", 7000 + ordinal),
            role,
            healthy: true,
            lag,
        }
    }

    #[test]
    fn table_shows_each_member_with_role_address_lag_and_process() {
        let status = LocalStatus {
            cluster_id: "default/basic".into(),
            desired_replicas: 3,
            replicas: 3,
            next_action: "learner 3 is 40 entries behind; waiting for it to catch up".into(),
            converged: false,
            status: AspenClusterStatus {
                phase: Phase::Scaling,
                replicas: 3,
                ready_replicas: 2,
                leader: Some("basic-0".into()),
                members: vec![
                    member(0, MemberRole::Voter, None),
                    member(1, MemberRole::Voter, Some(0)),
                    member(2, MemberRole::Learner, Some(40)),
                ],
                ..AspenClusterStatus::default()
            },
            nodes: vec![
                node(0, ProcessState::Running, Some(11)),
                node(1, ProcessState::Running, Some(12)),
                node(2, ProcessState::Running, Some(13)),
                node(3, ProcessState::Stopping, None),
            ],
        };
        let table = status.table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "default/basic: Scaling, 2 of 3 members ready, leader basic-0; learner 3 is 40 entries behind; waiting for it to catch up"
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["MEMBER", "ROLE", "ADDRESS", "LAG", "HEALTHY", "PROCESS"]
        );
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            [
                "basic-0",
                "leader",
                "127.0.0.1:7000",
                "-",
                "yes",
                "pid",
                "11"
            ]
        );
        assert_eq!(
            lines[4].split_whitespace().collect::<Vec<_>>(),
            [
                "basic-2",
                "learner",
                "127.0.0.1:7002",
                "40",
                "yes",
                "pid",
                "13"
            ]
        );
        assert_eq!(
            lines[5].split_whitespace().collect::<Vec<_>>(),
            ["basic-3", "-", "127.0.0.1:7003", "-", "-", "stopping"]
        );
        let shape = status.shape();
        assert!(
            shape.starts_with("default/basic: Scaling, 2 of 3 members ready, leader basic-0; learner # is ## entries behind"),
            "{shape}"
        );
        let row = shape.lines().nth(4).expect("a row per node");
        assert_eq!(row.split_whitespace().nth(3), Some("*"), "{shape}");
    }
}
