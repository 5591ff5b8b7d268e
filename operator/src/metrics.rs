//! The operator's Prometheus metrics: reconciles, failures by reason,
//! reconcile durations, membership changes by kind and result, and per
//! cluster member and ready gauges.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    pub reconciles: IntCounter,
    pub failures: IntCounterVec,
    pub reconcile_duration: Histogram,
    pub membership_changes: IntCounterVec,
    pub members: IntGaugeVec,
    pub ready_members: IntGaugeVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("aspen_operator".to_owned()), None)
            .expect("a valid metric prefix");
        let reconciles =
            IntCounter::new("reconciles_total", "Reconciles started").expect("valid metric");
        let failures = IntCounterVec::new(
            Opts::new(
                "reconcile_failures_total",
                "Reconciles that failed, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let reconcile_duration = Histogram::with_opts(
            HistogramOpts::new("reconcile_duration_seconds", "Time spent in one reconcile")
                .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
        )
        .expect("valid metric");
        let membership_changes = IntCounterVec::new(
            Opts::new(
                "membership_changes_total",
                "Membership changes executed, by cluster, kind and result",
            ),
            &["namespace", "cluster", "kind", "result"],
        )
        .expect("valid metric");
        let members = IntGaugeVec::new(
            Opts::new("cluster_members", "Raft members of a cluster"),
            &["namespace", "cluster"],
        )
        .expect("valid metric");
        let ready_members = IntGaugeVec::new(
            Opts::new("cluster_ready_members", "Ready pods of a cluster"),
            &["namespace", "cluster"],
        )
        .expect("valid metric");
        for collector in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(failures.clone()),
            Box::new(reconcile_duration.clone()),
            Box::new(membership_changes.clone()),
            Box::new(members.clone()),
            Box::new(ready_members.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric registered once");
        }
        Metrics {
            registry,
            reconciles,
            failures,
            reconcile_duration,
            membership_changes,
            members,
            ready_members,
        }
    }

    /// Set a cluster's gauges.
    pub fn set_cluster(&self, namespace: &str, cluster: &str, members: i64, ready: i64) {
        self.members
            .with_label_values(&[namespace, cluster])
            .set(members);
        self.ready_members
            .with_label_values(&[namespace, cluster])
            .set(ready);
    }

    /// Drop a deleted cluster's gauges, so that they do not linger at their
    /// last value.
    pub fn forget_cluster(&self, namespace: &str, cluster: &str) {
        // An absent series is fine: the cluster may never have been counted.
        let _ = self.members.remove_label_values(&[namespace, cluster]);
        let _ = self
            .ready_members
            .remove_label_values(&[namespace, cluster]);
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding into memory cannot fail");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_exposed_with_prefix_and_labels() {
        let metrics = Metrics::new();
        metrics.reconciles.inc();
        metrics.failures.with_label_values(&["kube"]).inc();
        metrics
            .membership_changes
            .with_label_values(&["ns", "c", "AddLearner", "ok"])
            .inc();
        metrics.set_cluster("ns", "c", 3, 2);
        let text = metrics.encode();
        assert!(text.contains("aspen_operator_reconciles_total 1"));
        assert!(text.contains(r#"aspen_operator_reconcile_failures_total{reason="kube"} 1"#));
        assert!(text.contains(
            r#"aspen_operator_membership_changes_total{cluster="c",kind="AddLearner",namespace="ns",result="ok"} 1"#
        ));
        assert!(
            text.contains(r#"aspen_operator_cluster_ready_members{cluster="c",namespace="ns"} 2"#)
        );
        metrics.forget_cluster("ns", "c");
        assert!(!metrics.encode().contains("aspen_operator_cluster_members{"));
    }
}
