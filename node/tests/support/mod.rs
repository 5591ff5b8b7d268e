//! In-process clusters for the node tests: real nodes with redb in a temp
//! dir, talking HTTP over loopback, waited on with deadlines.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aspen_node::api::{AddLearnerRequest, ChangeMembershipRequest, Member, NodeStatus};
use aspen_node::client::AspenClient;
use aspen_node::config::{NodeConfig, StorageKind};
use aspen_node::node::{RunningNode, bootstrap_node};
use tempfile::TempDir;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

/// Polls `check` every 20 ms until it returns `Some`, failing the test with
/// `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub const WAIT: Duration = Duration::from_secs(20);

struct Slot {
    client: SocketAddr,
    peer: SocketAddr,
    node: Option<RunningNode>,
}

/// A set of nodes sharing a temp directory, each with its own data dir.
pub struct TestCluster {
    root: TempDir,
    slots: BTreeMap<u64, Slot>,
    pub max_db_bytes: u64,
    pub snapshot_threshold: u64,
}

impl TestCluster {
    pub fn new() -> Self {
        TestCluster {
            root: TempDir::new().expect("temp dir"),
            slots: BTreeMap::new(),
            max_db_bytes: 1 << 30,
            snapshot_threshold: 10_000,
        }
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.root.path().join(format!("node-{id}"))
    }

    fn config(&self, id: u64) -> NodeConfig {
        let mut config = NodeConfig::for_tests(id);
        config.storage = StorageKind::Redb;
        config.data_dir = self.data_dir(id);
        config.max_db_bytes = self.max_db_bytes;
        config.snapshot_threshold = self.snapshot_threshold;
        if let Some(slot) = self.slots.get(&id) {
            // A restarted node keeps its addresses: they are in the membership.
            config.client_listen = slot.client;
            config.peer_listen = slot.peer;
        }
        config
    }

    /// Starts node `id` (again, on the same data dir and ports, if it ran before).
    pub async fn start(&mut self, id: u64) {
        let node = bootstrap_node(self.config(id)).await.expect("node starts");
        let slot = Slot {
            client: node.client_addr(),
            peer: node.peer_addr(),
            node: Some(node),
        };
        self.slots.insert(id, slot);
    }

    /// Starts node `id`, returning the error instead of panicking.
    pub async fn try_start(&mut self, id: u64) -> Result<(), aspen_node::node::NodeError> {
        let node = bootstrap_node(self.config(id)).await?;
        self.slots.insert(
            id,
            Slot {
                client: node.client_addr(),
                peer: node.peer_addr(),
                node: Some(node),
            },
        );
        Ok(())
    }

    /// Graceful stop: leadership handed over, database closed.
    pub async fn stop(&mut self, id: u64) {
        let node = self.take(id);
        node.shutdown().await.expect("clean shutdown");
    }

    /// Stops without handing leadership over, as if the process died.
    pub async fn crash(&mut self, id: u64) {
        let node = self.take(id);
        node.stop_abruptly().await.expect("database closes");
    }

    fn take(&mut self, id: u64) -> RunningNode {
        self.slots
            .get_mut(&id)
            .and_then(|s| s.node.take())
            .unwrap_or_else(|| panic!("node {id} is not running"))
    }

    pub fn node(&self, id: u64) -> &RunningNode {
        self.slots[&id].node.as_ref().expect("node running")
    }

    pub fn running(&self) -> Vec<u64> {
        self.slots
            .iter()
            .filter(|(_, s)| s.node.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    pub fn member(&self, id: u64) -> Member {
        let slot = &self.slots[&id];
        Member {
            node_id: id,
            peer_addr: slot.peer.to_string(),
            client_addr: slot.client.to_string(),
        }
    }

    pub fn client_addr(&self, id: u64) -> String {
        self.slots[&id].client.to_string()
    }

    /// A client of node `id` alone.
    pub fn client(&self, id: u64) -> AspenClient {
        AspenClient::new(vec![self.client_addr(id)])
    }

    /// A client of every node that ever ran, in id order.
    pub fn client_all(&self) -> AspenClient {
        AspenClient::new(self.slots.keys().map(|id| self.client_addr(*id)).collect())
    }

    pub async fn status(&self, id: u64) -> NodeStatus {
        self.client(id).status().await.expect("status")
    }

    /// Initialises node `first` alone, then adds each of `rest` as a learner
    /// (waiting for it to catch up) and promotes it: the operator's way.
    pub async fn form(&mut self, first: u64, rest: &[u64]) {
        let client = self.client(first);
        client.init(&Default::default()).await.expect("init");
        self.wait_leader(&[first]).await;
        for id in rest {
            let member = self.member(*id);
            client
                .add_learner(&AddLearnerRequest {
                    node_id: member.node_id,
                    peer_addr: member.peer_addr,
                    client_addr: member.client_addr,
                    wait: true,
                })
                .await
                .expect("add learner");
            client
                .change_membership(&ChangeMembershipRequest {
                    add_voters: vec![*id],
                    ..Default::default()
                })
                .await
                .expect("promote");
        }
    }

    /// Waits until every node in `ids` names the same leader, and returns it.
    pub async fn wait_leader(&self, ids: &[u64]) -> u64 {
        eventually("one leader agreed by all nodes", WAIT, || async {
            let mut leaders = Vec::new();
            for id in ids {
                let status = self.client(*id).status().await.ok()?;
                leaders.push(status.leader_id?);
            }
            let first = *leaders.first()?;
            (leaders.iter().all(|l| *l == first) && ids.contains(&first)).then_some(first)
        })
        .await
    }

    /// Nodes 1 to 3 started and formed into one cluster; returns the leader.
    pub async fn three_nodes() -> (Self, u64) {
        let mut cluster = TestCluster::new();
        for id in 1..=3 {
            cluster.start(id).await;
        }
        cluster.form(1, &[2, 3]).await;
        let leader = cluster.wait_leader(&[1, 2, 3]).await;
        (cluster, leader)
    }

    /// Stops every running node gracefully.
    pub async fn stop_all(&mut self) {
        for id in self.running() {
            self.stop(id).await;
        }
    }
}

/// Writes keys `{prefix}{n}` one after another until stopped, recording
/// every write the cluster acknowledged.
pub struct Writer {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Vec<(String, String)>>,
    pub acked: Arc<Mutex<usize>>,
}

impl Writer {
    pub fn start(client: AspenClient, prefix: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(0));
        let prefix = prefix.to_owned();
        let (stop_flag, acked_count) = (stop.clone(), acked.clone());
        let task = tokio::spawn(async move {
            let mut written = Vec::new();
            let mut n = 0u64;
            while !stop_flag.load(Ordering::Relaxed) {
                let key = format!("{prefix}{n:06}");
                let value = format!("value-{n}");
                match client.put(&key, &value).await {
                    Ok(_) => {
                        written.push((key, value));
                        *acked_count.lock().await += 1;
                        n += 1;
                    }
                    // Unacknowledged: may or may not be applied; not checked.
                    Err(_) => {
                        n += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            written
        });
        Writer { stop, task, acked }
    }

    /// Waits until at least `count` more writes were acknowledged.
    pub async fn wait_for_more(&self, count: usize) {
        let start = *self.acked.lock().await;
        eventually("the writer to make progress", WAIT, || async {
            (*self.acked.lock().await >= start + count).then_some(())
        })
        .await;
    }

    pub async fn finish(self) -> Vec<(String, String)> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("writer task")
    }
}

/// Asserts that `client` reads every acknowledged write back, linearizably.
pub async fn assert_all_present(client: &AspenClient, written: &[(String, String)]) {
    for (key, value) in written {
        let found = client
            .get(key, aspen_node::api::Consistency::Linearizable)
            .await
            .unwrap_or_else(|e| panic!("reading {key}: {e}"));
        assert_eq!(
            found.map(|kv| kv.value).as_deref(),
            Some(value.as_str()),
            "acknowledged write {key} lost"
        );
    }
}
