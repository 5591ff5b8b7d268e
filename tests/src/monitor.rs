//! A watcher of Raft membership while a test runs: it asks every running
//! node for its status every few milliseconds and checks what the planner
//! and Raft promise:
//!
//! - at most one learner at a time (members join one at a time);
//! - never an empty voter set, never a node id above the largest cluster;
//! - at most one leader per term;
//! - every node agrees on the configuration committed at a log index;
//! - consecutive committed configurations differ by at most one voter, so
//!   no two voter changes are ever in flight together;
//! - with [`Rules::voters_stay_up`], no process of a voter of the leader's
//!   configuration is ever stopped: members leave Raft before their process
//!   goes, so a quorum of voters always runs.
//!
//! The committed configurations it saw, in log order, are returned for the
//! test to compare with the sequence it expects.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aspen_node::api::{NodeStatus, Role};
use aspen_node::client::AspenClient;
use aspen_operator::local::{LocalStatus, ProcessState};
use futures::future::join_all;
use tokio::task::JoinHandle;

/// Pause between two samples.
const SAMPLE_PAUSE: Duration = Duration::from_millis(10);
/// Timeout of each status request.
const STATUS_TIMEOUT: Duration = Duration::from_millis(500);

/// What the monitor checks besides the rules that always hold.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Largest node id that may appear.
    pub max_node_id: u64,
    /// Voters' processes are never stopped (false when a test kills nodes).
    pub voters_stay_up: bool,
}

/// A configuration as node ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub voters: BTreeSet<u64>,
    pub learners: BTreeSet<u64>,
    pub joint: bool,
}

/// What the monitor saw.
#[derive(Debug, Default)]
pub struct Report {
    pub samples: u64,
    /// Committed configurations by the log index that set them.
    pub configs: BTreeMap<u64, Config>,
    pub violations: Vec<String>,
}

impl Report {
    /// The distinct voter sets of uniform configurations, in log order.
    pub fn voter_sets(&self) -> Vec<BTreeSet<u64>> {
        let mut sets: Vec<BTreeSet<u64>> = Vec::new();
        for config in self.configs.values().filter(|c| !c.joint) {
            if sets.last() != Some(&config.voters) {
                sets.push(config.voters.clone());
            }
        }
        sets
    }

    fn check_transitions(&mut self) {
        let configs: Vec<(&u64, &Config)> = self.configs.iter().collect();
        for pair in configs.windows(2) {
            let ((at, before), (next, after)) = (pair[0], pair[1]);
            let changed = before.voters.symmetric_difference(&after.voters).count();
            if changed > 1 {
                self.violations.push(format!(
                    "voters changed by {changed} between the configurations at log index {at} ({:?}) and {next} ({:?})",
                    before.voters, after.voters
                ));
            }
        }
    }
}

/// A running monitor.
#[derive(Debug)]
pub struct Monitor {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Report>,
}

impl Monitor {
    /// Watch the nodes of local mode's `data_dir`.
    pub fn start(data_dir: PathBuf, rules: Rules) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(watch(data_dir, rules, stop.clone()));
        Monitor { stop, task }
    }

    /// Stop watching; the report, with the transition rule checked.
    pub async fn finish(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        let mut report = self.task.await.expect("the monitor does not panic");
        report.check_transitions();
        report
    }
}

async fn status_of(address: &str) -> Option<NodeStatus> {
    AspenClient::new(vec![address.to_owned()])
        .with_timeout(STATUS_TIMEOUT)
        .status()
        .await
        .ok()
}

/// Whether nothing listens on `address` (the process is not running).
async fn refused(address: &str) -> bool {
    matches!(
        tokio::net::TcpStream::connect(address).await,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

async fn watch(data_dir: PathBuf, rules: Rules, stop: Arc<AtomicBool>) -> Report {
    let mut report = Report::default();
    let mut leaders: BTreeMap<u64, u64> = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(SAMPLE_PAUSE).await;
        let Ok(local) = LocalStatus::read(&data_dir) else {
            continue;
        };
        let addresses: BTreeMap<u64, String> = local
            .nodes
            .iter()
            .filter(|n| n.process == ProcessState::Running)
            .filter_map(|n| Some((n.node_id, n.client_address.clone()?)))
            .collect();
        let statuses: Vec<NodeStatus> = join_all(addresses.values().map(|a| status_of(a)))
            .await
            .into_iter()
            .flatten()
            .filter(|s| s.initialized && !s.removed)
            .collect();
        report.samples += 1;
        for status in &statuses {
            check_sample(&mut report, &mut leaders, status, rules);
        }
        if rules.voters_stay_up {
            check_voters_up(&mut report, &local, &statuses).await;
        }
    }
    report
}

fn check_sample(
    report: &mut Report,
    leaders: &mut BTreeMap<u64, u64>,
    status: &NodeStatus,
    rules: Rules,
) {
    let id = status.node_id;
    let m = &status.membership;
    let config = Config {
        voters: m.voters.iter().map(|v| v.node_id).collect(),
        learners: m.learners.iter().map(|l| l.node_id).collect(),
        joint: m.joint,
    };
    if config.learners.len() > 1 {
        report.violations.push(format!(
            "node {id} sees {} learners: {:?}",
            config.learners.len(),
            config.learners
        ));
    }
    if config.voters.is_empty() {
        report.violations.push(format!("node {id} sees no voters"));
    }
    if let Some(bad) = config
        .voters
        .iter()
        .chain(&config.learners)
        .find(|&&n| n == 0 || n > rules.max_node_id)
    {
        report.violations.push(format!(
            "node {id} sees member {bad}, above {}",
            rules.max_node_id
        ));
    }
    if status.role == Role::Leader {
        let leader = *leaders.entry(status.term).or_insert(id);
        if leader != id {
            report.violations.push(format!(
                "nodes {leader} and {id} both led term {}",
                status.term
            ));
        }
    }
    let committed = match (m.log_index, status.committed_index) {
        (Some(at), Some(committed)) if at <= committed => Some(at),
        _ => None,
    };
    if let Some(at) = committed {
        let known = report.configs.entry(at).or_insert_with(|| config.clone());
        if *known != config {
            let known = known.clone();
            report.violations.push(format!(
                "node {id} has {config:?} committed at log index {at}, another node {known:?}"
            ));
        }
    }
}

/// The client address local mode gave node `node_id`.
fn address_of(local: &LocalStatus, node_id: u64) -> Option<String> {
    local
        .nodes
        .iter()
        .find(|n| n.node_id == node_id)
        .and_then(|n| n.client_address.clone())
}

/// A voter of the leader's configuration whose port refuses connections has
/// no process; it is a violation if the leader still lists it afterwards.
async fn check_voters_up(report: &mut Report, local: &LocalStatus, statuses: &[NodeStatus]) {
    let Some(leader) = statuses
        .iter()
        .filter(|s| s.role == Role::Leader)
        .max_by_key(|s| s.term)
    else {
        return;
    };
    for voter in &leader.membership.voters {
        let Some(address) = address_of(local, voter.node_id) else {
            continue;
        };
        if !refused(&address).await {
            continue;
        }
        let Some(leader_addr) = address_of(local, leader.node_id) else {
            continue;
        };
        if let Some(now) = status_of(&leader_addr).await
            && now.membership.is_voter(voter.node_id)
        {
            report.violations.push(format!(
                "voter {} has no process while leader {} lists it (term {})",
                voter.node_id, now.node_id, now.term
            ));
        }
    }
}
