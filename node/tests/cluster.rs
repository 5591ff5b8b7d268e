//! Clusters of real nodes in one process: formation through the admin API,
//! failover, restarts from disk, membership changes under load, leadership
//! transfer, removal, snapshots and the size limit.

mod support;

use std::time::{Duration, Instant};

use aspen_node::api::{
    AddLearnerRequest, ChangeMembershipRequest, Consistency, ErrorCode, RemoveLearnersRequest,
    TransferLeaderRequest,
};
use aspen_node::node::NodeError;
use support::*;

const LINEARIZABLE: Consistency = Consistency::Linearizable;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_formed_through_admin_api_serve_linearizable_reads_everywhere() {
    let (mut cluster, leader) = TestCluster::three_nodes().await;
    let follower = if leader == 1 { 2 } else { 1 };

    cluster
        .client(leader)
        .put("from-leader", "a")
        .await
        .unwrap();
    // A follower forwards the write; the caller never needs to know who leads.
    cluster
        .client(follower)
        .put("from-follower", "b")
        .await
        .unwrap();
    for id in 1..=3 {
        let client = cluster.client(id);
        assert_eq!(
            client
                .get("from-leader", LINEARIZABLE)
                .await
                .unwrap()
                .unwrap()
                .value,
            "a"
        );
        assert_eq!(
            client
                .get("from-follower", LINEARIZABLE)
                .await
                .unwrap()
                .unwrap()
                .value,
            "b"
        );
    }
    let status = cluster.status(leader).await;
    assert_eq!(status.membership.voters.len(), 3);
    assert!(status.membership.learners.is_empty());
    assert_eq!(status.replication.as_ref().map(Vec::len), Some(2));
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_failover_keeps_every_acknowledged_write_and_the_old_leader_rejoins() {
    let (mut cluster, old) = TestCluster::three_nodes().await;
    let writer = Writer::start(cluster.client_all(), "failover-");
    writer.wait_for_more(30).await;

    let stopped_at = Instant::now();
    cluster.crash(old).await;
    let survivors: Vec<u64> = (1..=3).filter(|id| *id != old).collect();
    let new = cluster.wait_leader(&survivors).await;
    let elected_after = stopped_at.elapsed();
    assert_ne!(new, old);
    // Election timeouts here are 300-600 ms; allow for a split vote or two.
    assert!(
        elected_after < Duration::from_secs(5),
        "a new leader took {elected_after:?}"
    );
    writer.wait_for_more(30).await;

    cluster.start(old).await;
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    assert_eq!(leader, new, "the restarted node must not take over");
    writer.wait_for_more(10).await;
    let written = writer.finish().await;
    assert_all_present(&cluster.client(old), &written).await;
    let status = cluster.status(old).await;
    assert!(status.membership.is_voter(old));
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_nodes_restarted_from_disk_keep_data_and_membership() {
    let (mut cluster, _) = TestCluster::three_nodes().await;
    let client = cluster.client_all();
    let mut written = Vec::new();
    for n in 0..100 {
        let (key, value) = (format!("durable-{n:03}"), format!("v{n}"));
        client.put(&key, &value).await.unwrap();
        written.push((key, value));
    }
    let before = cluster.status(1).await.membership;
    cluster.stop_all().await;

    for id in 1..=3 {
        cluster.start(id).await;
    }
    cluster.wait_leader(&[1, 2, 3]).await;
    let after = cluster.status(1).await.membership;
    assert_eq!(after.voters, before.voters);
    assert_all_present(&cluster.client_all(), &written).await;
    for id in 1..=3 {
        let status = cluster.status(id).await;
        assert!(status.initialized, "node {id} restarted uninitialised");
    }
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn growing_one_to_three_and_shrinking_to_one_under_writes_loses_nothing() {
    let mut cluster = TestCluster::new();
    for id in 1..=3 {
        cluster.start(id).await;
    }
    let admin = cluster.client(1);
    admin.init(&Default::default()).await.unwrap();
    cluster.wait_leader(&[1]).await;
    let writer = Writer::start(cluster.client(1), "membership-");
    writer.wait_for_more(20).await;

    for id in [2, 3] {
        let member = cluster.member(id);
        admin
            .add_learner(&AddLearnerRequest {
                node_id: id,
                peer_addr: member.peer_addr,
                client_addr: member.client_addr,
                wait: true,
            })
            .await
            .unwrap();
        // The learner's own view follows shortly after the leader's.
        eventually("the learner to see itself as a learner", WAIT, || async {
            let learner = cluster.status(id).await;
            (learner.membership.is_learner(id) && learner.last_applied_index.is_some())
                .then_some(())
        })
        .await;
        admin
            .change_membership(&ChangeMembershipRequest {
                add_voters: vec![id],
                ..Default::default()
            })
            .await
            .unwrap();
        writer.wait_for_more(20).await;
    }
    assert_eq!(cluster.status(1).await.membership.voters.len(), 3);

    // Shrink: followers first, each removed entirely.
    for id in [3, 2] {
        admin
            .change_membership(&ChangeMembershipRequest {
                remove_voters: vec![id],
                ..Default::default()
            })
            .await
            .unwrap();
        writer.wait_for_more(20).await;
    }
    let status = cluster.status(1).await;
    assert_eq!(status.membership.voters.len(), 1);
    assert!(status.membership.learners.is_empty());
    let written = writer.finish().await;
    assert!(written.len() >= 100);
    assert_all_present(&cluster.client(1), &written).await;
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_stop_and_transfer_hand_leadership_to_another_voter() {
    let (mut cluster, leader) = TestCluster::three_nodes().await;
    let target = if leader == 3 { 2 } else { 3 };
    // Asked of a follower: forwarded to the leader, which hands over.
    let asked = if leader == 1 { 2 } else { 1 };
    let answer = cluster
        .client(asked)
        .transfer_leader(&TransferLeaderRequest { to: Some(target) })
        .await
        .unwrap();
    assert_eq!(answer.leader, target);
    assert_eq!(cluster.wait_leader(&[1, 2, 3]).await, target);

    // Stopping the leader gracefully hands leadership over before it leaves.
    let started = Instant::now();
    cluster.stop(target).await;
    let rest: Vec<u64> = (1..=3).filter(|id| *id != target).collect();
    let status = cluster.status(rest[0]).await;
    let new = status
        .leader_id
        .expect("a leader right after the graceful stop");
    assert!(rest.contains(&new));
    assert!(started.elapsed() < Duration::from_secs(10));
    cluster
        .client(rest[0])
        .put("after-stop", "ok")
        .await
        .unwrap();
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removed_node_stops_and_its_data_never_rejoins() {
    let (mut cluster, leader) = TestCluster::three_nodes().await;
    let victim = if leader == 3 { 2 } else { 3 };
    let admin = cluster.client(leader);
    admin
        .change_membership(&ChangeMembershipRequest {
            remove_voters: vec![victim],
            ..Default::default()
        })
        .await
        .unwrap();
    admin.put("after-removal", "x").await.unwrap();
    eventually("the removed node to notice", WAIT, || async {
        cluster.status(victim).await.removed.then_some(())
    })
    .await;
    let err = cluster.client(victim).put("k", "v").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Removed));

    cluster.stop(victim).await;
    match cluster.try_start(victim).await {
        Err(NodeError::Removed { node_id, .. }) => assert_eq!(node_id, victim),
        other => panic!("a removed node's data restarted: {other:?}"),
    }
    // Learners are removed with their own call.
    let learner = victim;
    std::fs::remove_dir_all(cluster.data_dir(learner)).unwrap();
    cluster.start(learner).await;
    let member = cluster.member(learner);
    admin
        .add_learner(&AddLearnerRequest {
            node_id: learner,
            peer_addr: member.peer_addr,
            client_addr: member.client_addr,
            wait: true,
        })
        .await
        .unwrap();
    let view = admin
        .remove_learners(&RemoveLearnersRequest {
            node_ids: vec![learner],
        })
        .await
        .unwrap();
    assert!(!view.contains(learner));
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_learner_far_behind_catches_up_from_a_snapshot() {
    let mut cluster = TestCluster::new();
    cluster.snapshot_threshold = 50;
    for id in 1..=2 {
        cluster.start(id).await;
    }
    cluster.client(1).init(&Default::default()).await.unwrap();
    cluster.wait_leader(&[1]).await;
    let client = cluster.client(1);
    let mut written = Vec::new();
    for n in 0..300 {
        let (key, value) = (format!("snap-{n:03}"), "x".repeat(2000));
        client.put(&key, &value).await.unwrap();
        written.push((key, value));
    }
    eventually("a snapshot on the leader", WAIT, || async {
        let (_, metrics) = cluster.client(1).get_text("/metrics").await.ok()?;
        metrics
            .lines()
            .any(|l| l.starts_with("aspen_snapshot_builds_total") && !l.ends_with(" 0"))
            .then_some(())
    })
    .await;
    cluster.form_learner(2).await;
    let (_, metrics) = cluster.client(2).get_text("/metrics").await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("aspen_snapshot_installs_total") && l.ends_with(" 1")),
        "the learner did not install a snapshot:\n{metrics}"
    );
    for (key, value) in &written {
        let kv = cluster
            .client(2)
            .get(key, Consistency::Stale)
            .await
            .unwrap();
        assert_eq!(kv.map(|kv| kv.value).as_ref(), Some(value));
    }
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_store_refuses_new_data_but_accepts_deletes() {
    let mut cluster = TestCluster::new();
    cluster.max_db_bytes = 4 << 20;
    cluster.start(1).await;
    let client = cluster.client(1);
    client.init(&Default::default()).await.unwrap();
    cluster.wait_leader(&[1]).await;
    let value = "v".repeat(64 * 1024);
    let mut stored = Vec::new();
    let refused = loop {
        let key = format!("fill-{:03}", stored.len());
        match client.put(&key, &value).await {
            Ok(_) => stored.push(key),
            Err(e) => break e,
        }
        assert!(stored.len() < 200, "the size limit was never enforced");
    };
    assert_eq!(refused.code(), Some(ErrorCode::StorageFull), "{refused}");
    assert!(!stored.is_empty());
    // Reads and deletes still work, and deleting makes room again.
    assert!(
        client
            .get(&stored[0], LINEARIZABLE)
            .await
            .unwrap()
            .is_some()
    );
    for key in stored.iter().take(stored.len() / 2) {
        client.delete(key).await.unwrap();
    }
    client.put("after-deletes", &value).await.unwrap();
    let status = cluster.status(1).await;
    assert!(status.storage.disk_bytes <= status.storage.max_bytes);
    cluster.stop_all().await;
}

impl TestCluster {
    /// Adds `id` as a learner through node 1, waiting until it caught up.
    async fn form_learner(&self, id: u64) {
        let member = self.member(id);
        self.client(1)
            .add_learner(&AddLearnerRequest {
                node_id: id,
                peer_addr: member.peer_addr,
                client_addr: member.client_addr,
                wait: true,
            })
            .await
            .unwrap();
    }
}

/// The value of metric `name` in Prometheus text, from the series carrying
/// every label in `labels` (`key="value"`); panics when there is none.
fn sample(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, series_labels) = series.split_once('{').unwrap_or((series, ""));
            let matches = metric == name && labels.iter().all(|l| series_labels.contains(l));
            matches.then(|| value.parse().expect("a numeric sample"))
        })
        .unwrap_or_else(|| panic!("no sample {name}{labels:?} in:\n{metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_count_proposals_fsyncs_and_requests() {
    let (mut cluster, leader) = TestCluster::three_nodes().await;
    let client = cluster.client(leader);
    for i in 0..10 {
        client.put(&format!("key-{i}"), "value").await.unwrap();
    }
    let (status, metrics) = client.get_text("/metrics").await.unwrap();
    assert_eq!(status, 200);
    let node = format!(r#"node_id="{leader}""#);
    let value = |name: &str, labels: &[&str]| {
        let mut labels = labels.to_vec();
        labels.push(&node);
        sample(&metrics, name, &labels)
    };
    assert_eq!(value("aspen_raft_role", &[r#"role="leader""#]), 1.0);
    assert_eq!(value("aspen_raft_role", &[r#"role="follower""#]), 0.0);
    assert_eq!(value("aspen_raft_leader_id", &[]), leader as f64);
    assert!(value("aspen_raft_term", &[]) >= 1.0);
    assert_eq!(value("aspen_raft_voters", &[]), 3.0);
    assert_eq!(
        value("aspen_proposals_total", &[r#"outcome="committed""#]),
        10.0
    );
    // Every append is a durable commit, so the writes made some; each took time.
    assert!(value("aspen_storage_durable_commits_total", &[]) >= 1.0);
    assert!(value("aspen_storage_durable_commit_seconds_total", &[]) > 0.0);
    assert!(value("aspen_storage_live_bytes", &[]) > 0.0);
    assert!(value("aspen_storage_max_bytes", &[]) > 0.0);
    let puts = [
        r#"method="PUT""#,
        r#"route="/v1/kv/{key}""#,
        r#"code="200""#,
    ];
    assert_eq!(value("aspen_http_requests_total", &puts), 10.0);
    assert_eq!(
        value("aspen_http_request_duration_seconds_count", &puts[..2]),
        10.0
    );
    cluster.stop_all().await;
}
