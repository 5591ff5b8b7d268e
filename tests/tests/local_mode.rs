//! `aspen-operator local` end to end: real `aspen-node` processes, driven by
//! the planner the Kubernetes controller uses, through scaling, crashes and
//! power cuts, with every acknowledged write checked afterwards.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aspen_node::api::{Consistency, NodeStatus, Role};
use aspen_node::client::AspenClient;
use aspen_operator::local::{ENDPOINTS_FILE, ProcessState};
use aspen_tests::binaries::binary;
use aspen_tests::cluster::LocalCluster;
use aspen_tests::monitor::{Monitor, Rules};
use aspen_tests::wait;
use aspen_tests::writer::{Writer, verify};

/// Longest wait for writes to make progress, or a leader to appear.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(30);

/// The leader among `statuses` (the one in the highest term).
fn leader(statuses: &BTreeMap<u64, NodeStatus>) -> Option<&NodeStatus> {
    statuses
        .values()
        .filter(|s| s.role == Role::Leader)
        .max_by_key(|s| s.term)
}

fn voter_ids(status: &NodeStatus) -> BTreeSet<u64> {
    status.membership.voters.iter().map(|m| m.node_id).collect()
}

/// Write `count` keys under `prefix` one by one; all must be acknowledged.
async fn write_keys(client: &AspenClient, prefix: &str, count: u32) -> BTreeMap<String, String> {
    let mut acked = BTreeMap::new();
    for n in 0..count {
        let (key, value) = (format!("{prefix}{n:04}"), format!("value-{n}"));
        client
            .put(&key, &value)
            .await
            .unwrap_or_else(|e| panic!("writing {key}: {e}"));
        acked.insert(key, value);
    }
    acked
}

/// Wait until the writer has `more` acknowledged writes than `since`.
async fn wait_for_writes(writer: &Writer, since: u64, more: u64, why: &str) -> u64 {
    let what = format!("{more} more acknowledged writes {why}");
    wait::until(&what, PROGRESS_TIMEOUT, || async {
        let acked = writer.acked();
        if acked >= since + more {
            Ok(acked)
        } else {
            Err(format!("{} since", acked - since))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mode_runs_a_manifest_as_an_available_cluster_and_stops_it_gracefully() {
    let mut cluster = LocalCluster::start("basic", 3);
    let status = cluster.wait_converged(3).await;

    let (statuses, leader_id) = cluster.wait_leader().await;
    assert_eq!(statuses.len(), 3, "every node answers");
    for node in statuses.values() {
        assert_eq!(node.cluster_id, "default/basic");
        assert_eq!(voter_ids(node), BTreeSet::from([1, 2, 3]));
        assert_eq!(node.leader_id, Some(leader_id), "node {}", node.node_id);
    }
    let endpoints = std::fs::read_to_string(cluster.data_dir().join(ENDPOINTS_FILE))
        .expect("the endpoints file");
    let members: Vec<&str> = status
        .status
        .members
        .iter()
        .map(|m| m.address.as_str())
        .collect();
    assert_eq!(endpoints, members.join(","));

    let client = AspenClient::new(endpoints.split(',').map(str::to_owned).collect());
    client.put("greeting", "hello").await.expect("a write");
    let read = client
        .get("greeting", Consistency::Linearizable)
        .await
        .expect("a read");
    assert_eq!(read.map(|kv| kv.value).as_deref(), Some("hello"));
    let table = cluster.operator_output(1);
    assert!(
        table.contains("MEMBER") && table.contains("members match the manifest"),
        "the status table is printed:\n{table}"
    );

    let exit = cluster.terminate().await;
    assert!(
        exit.success(),
        "local mode exits cleanly on SIGTERM: {exit}"
    );
    let output = cluster.operator_output(1);
    let clean_stops = output
        .lines()
        .filter(|l| l.contains("node stopped") && l.contains("exit status: 0"))
        .count();
    assert_eq!(clean_stops, 3, "every node stopped gracefully:\n{output}");
    let stopped = cluster.status().expect("status.json");
    assert!(
        stopped
            .nodes
            .iter()
            .all(|n| n.process == ProcessState::Stopped && n.pid.is_none()),
        "{:?}",
        stopped.nodes
    );

    cluster.launch();
    cluster.wait_converged(3).await;
    let read = cluster
        .client()
        .get("greeting", Consistency::Linearizable)
        .await
        .expect("a read after the restart");
    assert_eq!(read.map(|kv| kv.value).as_deref(), Some("hello"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_3_5_3_1_3_under_writes_keeps_every_write_and_the_planners_rules() {
    let mut cluster = LocalCluster::start("scale", 3);
    cluster.wait_converged(3).await;
    let monitor = Monitor::start(
        cluster.data_dir(),
        Rules {
            max_node_id: 5,
            voters_stay_up: true,
        },
    );
    let writer = Writer::start(cluster.data_dir(), "w/");
    let mut acked = wait_for_writes(&writer, 0, 20, "before scaling").await;
    for replicas in [5, 3, 1, 3] {
        cluster.set_replicas(replicas);
        cluster.wait_converged(replicas).await;
        let why = format!("at {replicas} replicas");
        acked = wait_for_writes(&writer, acked, 20, &why).await;
    }
    let writes = writer.finish().await;
    let report = monitor.finish().await;

    assert!(
        report.violations.is_empty(),
        "membership rules broken: {:#?}",
        report.violations
    );
    let sets = |ids: &[&[u64]]| -> Vec<BTreeSet<u64>> {
        ids.iter()
            .map(|set| set.iter().copied().collect())
            .collect()
    };
    // One voter at a time, members leaving from the top, in log order.
    assert_eq!(
        report.voter_sets(),
        sets(&[
            &[1, 2, 3],
            &[1, 2, 3, 4],
            &[1, 2, 3, 4, 5],
            &[1, 2, 3, 4],
            &[1, 2, 3],
            &[1, 2],
            &[1],
            &[1, 2],
            &[1, 2, 3],
        ]),
        "voter sets seen in {} samples",
        report.samples
    );
    verify(&cluster.client(), "w/", &writes.acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_restarted_on_its_data_while_a_new_leader_serves_writes() {
    let cluster = LocalCluster::start("crash", 3);
    cluster.wait_converged(3).await;
    let writer = Writer::start(cluster.data_dir(), "k/");
    wait_for_writes(&writer, 0, 50, "before the crash").await;
    let (before, old_id) = cluster.wait_leader().await;
    let old = before[&old_id].clone();
    let ordinal = u32::try_from(old.node_id - 1).expect("small ids");

    let pid = cluster.kill_node(ordinal);
    let acked_at_kill = writer.acked();
    let new_leader = wait::until(
        "another node to lead in a later term and acknowledge writes",
        PROGRESS_TIMEOUT,
        || async {
            let statuses = cluster.node_statuses().await;
            let acked = writer.acked() - acked_at_kill;
            match leader(&statuses) {
                Some(l) if l.node_id != old.node_id && l.term > old.term && acked >= 20 => {
                    Ok(l.node_id)
                }
                l => Err(format!(
                    "leader {:?}, {acked} writes since the kill",
                    l.map(|l| (l.node_id, l.term))
                )),
            }
        },
    )
    .await;

    cluster
        .wait_status(
            "local mode to restart the killed node",
            PROGRESS_TIMEOUT,
            |s| {
                let node = s.node(ordinal).ok_or("node missing")?;
                match (node.process, node.pid) {
                    (ProcessState::Running, Some(now)) if now != pid && node.restarts == 1 => {
                        Ok(())
                    }
                    other => Err(format!("{other:?} after {} restarts", node.restarts)),
                }
            },
        )
        .await;
    cluster.wait_converged(3).await;
    let (after, leader_after) = cluster.wait_leader().await;
    assert_ne!(new_leader, old.node_id);
    assert_eq!(
        after[&leader_after].membership.log_index, old.membership.log_index,
        "the node came back with its data: no member was replaced"
    );

    let writes = writer.finish().await;
    assert!(
        writes.acked.len() > 70,
        "{} acknowledged",
        writes.acked.len()
    );
    verify(&cluster.client(), "k/", &writes.acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_local_mode_and_every_node_then_restarting_resumes_the_cluster() {
    let mut cluster = LocalCluster::start("power", 3);
    cluster.wait_converged(3).await;
    let acked = write_keys(&cluster.client(), "p/", 200).await;
    let (before, old_id) = cluster.wait_leader().await;
    let old = &before[&old_id];

    cluster.kill_all().await;
    cluster.launch();
    cluster.wait_converged(3).await;

    let (after, now_id) = cluster.wait_leader().await;
    let now = &after[&now_id];
    assert_eq!(
        now.membership.voters, old.membership.voters,
        "the same members at the same addresses"
    );
    assert_eq!(
        now.membership.log_index, old.membership.log_index,
        "no configuration was added: the cluster was not initialised again"
    );
    assert!(
        now.term >= old.term,
        "the same log, in its term or a later one"
    );
    assert!(now.last_log_index >= old.last_log_index);
    // The first run logged the initialisation; the second never plans one.
    let first = cluster.operator_output(1);
    assert!(first.contains("initialize the cluster"), "{first}");
    let output = cluster.operator_output(2);
    assert!(
        !output.contains("initialize the cluster"),
        "the second run never plans an initialisation:\n{output}"
    );
    verify(&cluster.client(), "p/", &acked).await;
}

/// Run `aspen-node` on `data_dir` as node `node_id`; it must refuse to
/// start. Returns what it printed.
async fn refused_start(cluster_id: &str, node_id: u64, data_dir: &std::path::Path) -> String {
    let mut child = Guard(
        Command::new(binary("aspen-node"))
            .args([
                "--node-id",
                &node_id.to_string(),
                "--cluster-id",
                cluster_id,
            ])
            .arg("--data-dir")
            .arg(data_dir)
            .args([
                "--client-listen",
                "127.0.0.1:0",
                "--peer-listen",
                "127.0.0.1:0",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("aspen-node starts"),
    );
    let deadline = Instant::now() + PROGRESS_TIMEOUT;
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("checking on aspen-node") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "aspen-node started on the data of a removed member"
        );
        tokio::time::sleep(wait::POLL_INTERVAL).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(
        child.0.stderr.as_mut().expect("stderr is piped"),
        &mut stderr,
    )
    .expect("reading stderr");
    assert!(!status.success(), "aspen-node exits with an error");
    stderr
}

/// A child process killed when the test is done with it, pass or fail.
struct Guard(std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_members_data_is_wiped_before_its_ordinal_rejoins() {
    let mut cluster = LocalCluster::start("removal", 3);
    cluster.wait_converged(3).await;
    let before = write_keys(&cluster.client(), "before/", 50).await;

    cluster.set_replicas(2);
    let status = cluster.wait_converged(2).await;
    let removed = status.node(2).expect("ordinal 2 is listed").clone();
    assert!(
        removed.data_dir.is_dir(),
        "whenScaled: Retain keeps the data of the member that left"
    );
    let said = refused_start(&status.cluster_id, removed.node_id, &removed.data_dir).await;
    assert!(said.contains("removed"), "aspen-node said: {said}");

    let after = write_keys(&cluster.client(), "after/", 50).await;
    let marker = removed.data_dir.join("stale-marker");
    std::fs::write(&marker, b"written while the member was out").expect("marker");
    cluster.set_replicas(3);
    let status = cluster.wait_converged(3).await;
    assert!(
        !marker.exists(),
        "the data directory was wiped before node 3 rejoined"
    );

    // Node 3 rejoined as a new member and caught up on everything from its
    // peers, including what was written while it was out.
    let address = status.node(2).and_then(|n| n.client_address.clone());
    let node3 = AspenClient::new(vec![address.expect("node 3 has an address")]);
    let want = before.len() + after.len();
    wait::until("node 3 to hold every key", PROGRESS_TIMEOUT, || async {
        let mut held = 0;
        for prefix in ["before/", "after/"] {
            let page = node3
                .scan(prefix, None, Some(1000), Consistency::Stale)
                .await
                .map_err(|e| e.to_string())?;
            held += page.items.len();
        }
        if held == want {
            Ok(())
        } else {
            Err(format!("{held} of {want}"))
        }
    })
    .await;
    verify(&node3, "before/", &before).await;
    verify(&node3, "after/", &after).await;
}
