//! Prometheus metrics of one node, served as text at `/metrics`.
//!
//! Request and proposal counters are updated where things happen; Raft and
//! storage gauges are read from openraft's metrics and the store when scraped,
//! so they cost nothing between scrapes.

use std::sync::Mutex;
use std::time::Duration;

use openraft::ServerState;
use prometheus::{
    Counter, Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::storage::StorageUsage;
use crate::types::{RaftMetrics, is_voter};

/// Outcome label of a proposal.
#[derive(Debug, Clone, Copy)]
pub enum Proposal {
    Committed,
    Forwarded,
    Rejected,
    StorageFull,
    NoLeader,
    Timeout,
    Failed,
}

impl Proposal {
    const ALL: [Proposal; 7] = [
        Proposal::Committed,
        Proposal::Forwarded,
        Proposal::Rejected,
        Proposal::StorageFull,
        Proposal::NoLeader,
        Proposal::Timeout,
        Proposal::Failed,
    ];

    fn label(self) -> &'static str {
        match self {
            Proposal::Committed => "committed",
            Proposal::Forwarded => "forwarded",
            Proposal::Rejected => "rejected",
            Proposal::StorageFull => "storage_full",
            Proposal::NoLeader => "no_leader",
            Proposal::Timeout => "timeout",
            Proposal::Failed => "failed",
        }
    }
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    proposals: IntCounterVec,
    peer_rpc_errors: IntCounterVec,
    term: IntGauge,
    leader: IntGauge,
    role: IntGaugeVec,
    last_log_index: IntGauge,
    applied_index: IntGauge,
    snapshot_index: IntGauge,
    voters: IntGauge,
    learners: IntGauge,
    replication_lag: IntGaugeVec,
    quorum_ack_age_ms: IntGauge,
    file_bytes: IntGauge,
    disk_bytes: IntGauge,
    max_bytes: IntGauge,
    live_bytes: IntGauge,
    durable_commits: IntCounter,
    durable_commit_seconds: Counter,
    snapshot_builds: IntCounter,
    snapshot_installs: IntCounter,
    /// Storage counters as last exported, to advance the Prometheus counters by the difference.
    exported: Mutex<StorageUsage>,
}

const ROLES: [&str; 5] = ["leader", "follower", "candidate", "learner", "shutdown"];

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn float_counter(registry: &Registry, name: &str, help: &str) -> Counter {
    let c = Counter::new(name, help).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

/// The method as a label: clients may send any token as a method, and each
/// new label value would be a new series kept forever.
fn method_label(method: &str) -> &'static str {
    const KNOWN: [&str; 6] = ["GET", "HEAD", "PUT", "POST", "DELETE", "PATCH"];
    KNOWN
        .into_iter()
        .find(|known| *known == method)
        .unwrap_or("other")
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl Metrics {
    pub fn new(node_id: u64, cluster_id: &str) -> Self {
        let labels = [
            ("node_id".to_owned(), node_id.to_string()),
            ("cluster_id".to_owned(), cluster_id.to_owned()),
        ];
        let registry =
            Registry::new_custom(Some("aspen".into()), Some(labels.into_iter().collect()))
                .expect("valid registry");
        let r = &registry;
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "Time to answer an HTTP request, by route and method.",
            )
            .buckets(vec![
                0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                10.0,
            ]),
            &["route", "method"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(http_duration.clone()))
            .expect("unique metric");
        let proposals = counter_vec(
            r,
            "proposals_total",
            "Client writes proposed through this node, by outcome.",
            &["outcome"],
        );
        // Every outcome is exported from the start, at zero.
        for outcome in Proposal::ALL {
            proposals.with_label_values(&[outcome.label()]);
        }
        Metrics {
            http_requests: counter_vec(
                r,
                "http_requests_total",
                "HTTP requests answered, by route, method and status code.",
                &["route", "method", "code"],
            ),
            http_duration,
            proposals,
            peer_rpc_errors: counter_vec(
                r,
                "peer_rpc_errors_total",
                "Failed Raft RPCs to peers, by RPC and kind.",
                &["rpc", "kind"],
            ),
            term: gauge(r, "raft_term", "Current Raft term."),
            leader: gauge(
                r,
                "raft_leader_id",
                "Node id of the known leader (0: none).",
            ),
            role: gauge_vec(
                r,
                "raft_role",
                "1 for this node's current Raft role.",
                &["role"],
            ),
            last_log_index: gauge(
                r,
                "raft_last_log_index",
                "Index of the last entry in the log.",
            ),
            applied_index: gauge(
                r,
                "raft_applied_index",
                "Index of the last entry applied to the state machine.",
            ),
            snapshot_index: gauge(
                r,
                "raft_snapshot_index",
                "Last index included in the current snapshot.",
            ),
            voters: gauge(r, "raft_voters", "Voters in the membership configuration."),
            learners: gauge(
                r,
                "raft_learners",
                "Learners in the membership configuration.",
            ),
            replication_lag: gauge_vec(
                r,
                "raft_replication_lag_entries",
                "On the leader: entries each member is behind.",
                &["member"],
            ),
            quorum_ack_age_ms: gauge(
                r,
                "raft_quorum_ack_age_milliseconds",
                "On the leader: time since a quorum last acknowledged it (-1: not leader).",
            ),
            file_bytes: gauge(
                r,
                "storage_file_bytes",
                "Length of the database file (it grows sparsely).",
            ),
            disk_bytes: gauge(
                r,
                "storage_disk_bytes",
                "Disk space the database file occupies.",
            ),
            max_bytes: gauge(
                r,
                "storage_max_bytes",
                "Disk space the database may occupy.",
            ),
            live_bytes: gauge(
                r,
                "storage_live_bytes",
                "Bytes of log entries, keys and values stored.",
            ),
            durable_commits: counter(
                r,
                "storage_durable_commits_total",
                "Durable commits (fsyncs) of the database.",
            ),
            durable_commit_seconds: float_counter(
                r,
                "storage_durable_commit_seconds_total",
                "Time spent in durable commits of the database, fsync included.",
            ),
            snapshot_builds: counter(r, "snapshot_builds_total", "Snapshots built."),
            snapshot_installs: counter(
                r,
                "snapshot_installs_total",
                "Snapshots installed from a leader.",
            ),
            exported: Mutex::new(StorageUsage::default()),
            registry,
        }
    }

    pub fn observe_request(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        let method = method_label(method);
        self.http_requests
            .with_label_values(&[route, method, &status.to_string()])
            .inc();
        self.http_duration
            .with_label_values(&[route, method])
            .observe(elapsed.as_secs_f64());
    }

    pub fn proposal(&self, outcome: Proposal) {
        self.proposals.with_label_values(&[outcome.label()]).inc();
    }

    pub fn peer_rpc_error(&self, rpc: &str, kind: &str) {
        self.peer_rpc_errors.with_label_values(&[rpc, kind]).inc();
    }

    /// Renders every metric, after reading the current Raft and storage state.
    pub fn render(&self, raft: &RaftMetrics, usage: &StorageUsage) -> String {
        self.refresh(raft, usage);
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(out).expect("Prometheus text is UTF-8")
    }

    fn refresh(&self, raft: &RaftMetrics, usage: &StorageUsage) {
        self.term.set(to_i64(raft.current_term));
        self.leader.set(to_i64(raft.current_leader.unwrap_or(0)));
        let role = role_label(raft);
        for r in ROLES {
            self.role.with_label_values(&[r]).set(i64::from(r == role));
        }
        let last = raft.last_log_index.unwrap_or(0);
        self.last_log_index.set(to_i64(last));
        self.applied_index
            .set(to_i64(raft.last_applied.map_or(0, |id| id.index)));
        self.snapshot_index
            .set(to_i64(raft.snapshot.map_or(0, |id| id.index)));
        let membership = raft.membership_config.membership();
        let voters = membership.voter_ids().count();
        self.voters.set(to_i64(voters as u64));
        self.learners
            .set(to_i64(membership.learner_ids().count() as u64));
        self.replication_lag.reset();
        if let Some(replication) = &raft.replication {
            for (id, matched) in replication {
                let matched = matched.map_or(0, |m| m.index);
                self.replication_lag
                    .with_label_values(&[&id.to_string()])
                    .set(to_i64(last.saturating_sub(matched)));
            }
        }
        self.quorum_ack_age_ms
            .set(raft.millis_since_quorum_ack.map_or(-1, to_i64));

        self.file_bytes.set(to_i64(usage.file_bytes));
        self.disk_bytes.set(to_i64(usage.disk_bytes));
        self.max_bytes.set(to_i64(usage.max_bytes));
        self.live_bytes.set(to_i64(usage.live_bytes));
        let mut exported = self.exported.lock().expect("metrics lock poisoned");
        self.durable_commits.inc_by(
            usage
                .durable_commits
                .saturating_sub(exported.durable_commits),
        );
        self.durable_commit_seconds.inc_by(
            usage
                .durable_commit_micros
                .saturating_sub(exported.durable_commit_micros) as f64
                / 1e6,
        );
        self.snapshot_builds.inc_by(
            usage
                .snapshots_built
                .saturating_sub(exported.snapshots_built),
        );
        self.snapshot_installs.inc_by(
            usage
                .snapshots_installed
                .saturating_sub(exported.snapshots_installed),
        );
        *exported = *usage;
    }
}

/// This node's role, as the status API and metrics name it.
pub fn role_label(raft: &RaftMetrics) -> &'static str {
    match raft.state {
        ServerState::Leader => "leader",
        ServerState::Candidate => "candidate",
        ServerState::Shutdown => "shutdown",
        ServerState::Follower | ServerState::Learner
            if is_voter(raft.membership_config.membership(), raft.id) =>
        {
            "follower"
        }
        ServerState::Follower | ServerState::Learner => "learner",
    }
}
