//! The test bench of the controller: a mocked API server (kube's
//! `tower-test` pattern, as in kube-rs's controller-rs) that asserts every
//! request in order, fake nodes, and fixtures. Nodes and API server write
//! one log, so tests can check what ran first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aspen_node::api::{
    AddLearnerRequest, ChangeMembershipRequest, InitRequest, Member, MemberProgress,
    MembershipView, NodeStatus, RemoveLearnersRequest, Role as NodeRole, StorageStatus,
    TransferLeaderRequest,
};
use aspen_node::client::ClientError;
use http::{Request, Response};
use kube::client::Body;
use kube::runtime::events::Reporter;
use serde_json::{Value, json};

use super::*;
use crate::crd::AspenClusterSpec;
use crate::membership::{node_id_of, ordinal_of};

pub(super) type Log = Arc<Mutex<Vec<String>>>;

pub(super) fn push(log: &Log, entry: String) {
    log.lock().expect("log").push(entry);
}

/// The mocked API server: answers requests one by one, asserting each.
pub(super) struct ApiServer {
    handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    log: Log,
}

pub(super) const NS: &str = "/namespaces/apps";

impl ApiServer {
    /// Answer the next request, which must be `method` on `path`, with
    /// `status` and what `respond` makes of its body; return the body.
    pub(super) async fn answer(
        &mut self,
        method: &str,
        path: &str,
        status: u16,
        respond: impl FnOnce(&Value) -> Value,
    ) -> Value {
        let (request, send) = self
            .handle
            .next_request()
            .await
            .expect("the reconcile sent a request");
        let uri = request.uri().clone();
        assert_eq!(
            (request.method().as_str(), uri.path()),
            (method, path),
            "unexpected request {uri}"
        );
        if method == "PATCH" && !path.ends_with("/aspenclusters/kv") {
            let query = uri.query().unwrap_or_default();
            assert!(
                query.contains("fieldManager=aspen-operator") && query.contains("force=true"),
                "{uri}: not server-side apply"
            );
        }
        let bytes = request
            .into_body()
            .collect_bytes()
            .await
            .expect("request body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON body")
        };
        push(&self.log, format!("{method} {path}"));
        let response = serde_json::to_vec(&respond(&body)).expect("JSON");
        send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(response))
                .expect("response"),
        );
        body
    }

    pub(super) async fn echo(&mut self, method: &str, path: &str) -> Value {
        self.answer(method, path, 200, Value::clone).await
    }

    pub(super) async fn not_found(&mut self, path: &str) {
        self.answer("GET", path, 404, |_| status_body(404, "NotFound"))
            .await;
    }

    pub(super) async fn list(&mut self, path: &str, items: Vec<Value>) {
        self.answer(
            "GET",
            path,
            200,
            |_| json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": items}),
        )
        .await;
    }

    /// The five owned objects, in the order the controller applies them.
    pub(super) async fn owned_objects(&mut self) -> Vec<Value> {
        let mut applied = Vec::new();
        for path in [
            format!("/api/v1{NS}/configmaps/kv-config"),
            format!("/api/v1{NS}/services/kv-peers"),
            format!("/api/v1{NS}/services/kv"),
            format!("/apis/policy/v1{NS}/poddisruptionbudgets/kv"),
            format!("/apis/apps/v1{NS}/statefulsets/kv"),
        ] {
            applied.push(self.echo("PATCH", &path).await);
        }
        applied
    }

    /// What the controller reads first: its StatefulSet at `replicas`,
    /// running pods `0..pods` and PVCs `0..claims`.
    pub(super) async fn observed(&mut self, replicas: u32, pods: u32, claims: u32) {
        self.answer(
            "GET",
            &format!("/apis/apps/v1{NS}/statefulsets/kv"),
            200,
            |_| statefulset(replicas),
        )
        .await;
        self.list(&format!("/api/v1{NS}/pods"), (0..pods).map(pod).collect())
            .await;
        self.list(
            &format!("/api/v1{NS}/persistentvolumeclaims"),
            (0..claims).map(claim).collect(),
        )
        .await;
    }

    /// The finalizer's JSON patch of `cluster`, answered with `cluster`.
    pub(super) async fn finalizer_patch(&mut self, cluster: &AspenCluster) -> Value {
        let object = serde_json::to_value(cluster).expect("JSON");
        let path = format!("/apis/aspen.dev/v1alpha1{NS}/aspenclusters/kv");
        self.answer("PATCH", &path, 200, move |_| object).await
    }

    pub(super) async fn event(&mut self) -> Value {
        self.echo("POST", &format!("/apis/events.k8s.io/v1{NS}/events"))
            .await
    }

    /// A status patch, answered with the cluster carrying that status.
    pub(super) async fn status(&mut self, cluster: &AspenCluster) -> Value {
        let cluster = cluster.clone();
        self.answer(
            "PATCH",
            &format!("/apis/aspen.dev/v1alpha1{NS}/aspenclusters/kv/status"),
            200,
            move |body| {
                let mut object = serde_json::to_value(&cluster).expect("JSON");
                object["status"] = body["status"].clone();
                object
            },
        )
        .await["status"]
            .clone()
    }
}

pub(super) fn status_body(code: u16, reason: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "message": reason, "reason": reason, "code": code})
}

/// Nodes answering from a table, recording membership calls in the log.
pub(super) struct FakeNodes {
    statuses: HashMap<String, NodeStatus>,
    fail_changes: bool,
    log: Log,
}

impl FakeNodes {
    fn change(&self, call: String) -> Result<MembershipView, ClientError> {
        push(&self.log, call);
        if self.fail_changes {
            return Err(ClientError::Transport {
                endpoint: "kv-0".into(),
                message: "connection refused".into(),
            });
        }
        Ok(MembershipView::default())
    }
}

impl NodeAdmin for FakeNodes {
    async fn status(&self, endpoint: &str) -> Result<NodeStatus, ClientError> {
        self.statuses
            .get(endpoint)
            .cloned()
            .ok_or_else(|| ClientError::Transport {
                endpoint: endpoint.into(),
                message: "connection refused".into(),
            })
    }
    async fn init(&self, endpoint: &str, _: &InitRequest) -> Result<MembershipView, ClientError> {
        self.change(format!("init {endpoint}"))
    }
    async fn add_learner(
        &self,
        endpoint: &str,
        r: &AddLearnerRequest,
    ) -> Result<MembershipView, ClientError> {
        self.change(format!(
            "add_learner {} {} via {endpoint}",
            r.node_id, r.peer_addr
        ))
    }
    async fn change_membership(
        &self,
        endpoint: &str,
        r: &ChangeMembershipRequest,
    ) -> Result<MembershipView, ClientError> {
        self.change(format!("change_membership {r:?} via {endpoint}"))
    }
    async fn remove_learners(
        &self,
        endpoint: &str,
        r: &RemoveLearnersRequest,
    ) -> Result<MembershipView, ClientError> {
        self.change(format!("remove_learners {:?} via {endpoint}", r.node_ids))
    }
    async fn transfer_leader(
        &self,
        endpoint: &str,
        r: &TransferLeaderRequest,
    ) -> Result<aspen_node::api::TransferLeaderResponse, ClientError> {
        self.change(format!("transfer_leader {:?} via {endpoint}", r.to))?;
        Ok(aspen_node::api::TransferLeaderResponse {
            leader: r.to.unwrap_or(1),
        })
    }
}

pub(super) fn address(ordinal: u32) -> String {
    format!("kv-{ordinal}.kv-peers.apps.svc:7000")
}

pub(super) fn member(id: u64) -> Member {
    let o = ordinal_of(id);
    Member {
        node_id: id,
        peer_addr: format!("kv-{o}.kv-peers.apps.svc:7001"),
        client_addr: address(o),
    }
}

/// Node `id`'s status in a cluster of `voters` led by node 1; an id outside
/// `voters` answers as an empty node.
pub(super) fn node(id: u64, voters: &[u64]) -> NodeStatus {
    let member_of = voters.contains(&id);
    NodeStatus {
        node_id: id,
        cluster_id: "apps/kv".into(),
        role: match (member_of, id) {
            (true, 1) => NodeRole::Leader,
            (true, _) => NodeRole::Follower,
            (false, _) => NodeRole::Learner,
        },
        term: if member_of { 2 } else { 0 },
        leader_id: member_of.then_some(1),
        leader_addr: None,
        last_log_index: Some(30),
        committed_index: Some(30),
        last_applied_index: Some(30),
        membership: if member_of {
            MembershipView {
                voters: voters.iter().map(|&v| member(v)).collect(),
                learners: vec![],
                joint: false,
                log_index: Some(9),
            }
        } else {
            MembershipView::default()
        },
        replication: (member_of && id == 1).then(|| {
            voters
                .iter()
                .filter(|&&v| v != 1)
                .map(|&v| MemberProgress {
                    node_id: v,
                    matched_index: Some(30),
                    lag: 0,
                })
                .collect()
        }),
        storage: StorageStatus::default(),
        initialized: member_of,
        removed: false,
    }
}

pub(super) fn pod(ordinal: u32) -> Value {
    json!({
        "metadata": {"name": format!("kv-{ordinal}"), "namespace": "apps"},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    })
}

pub(super) fn claim(ordinal: u32) -> Value {
    json!({"metadata": {"name": format!("data-kv-{ordinal}"), "namespace": "apps"}})
}

pub(super) fn statefulset(replicas: u32) -> Value {
    json!({
        "metadata": {"name": "kv", "namespace": "apps"},
        "spec": {"replicas": replicas, "selector": {}, "template": {}, "serviceName": "kv-peers"},
    })
}

pub(super) fn cluster(replicas: i32, status: Option<AspenClusterStatus>) -> AspenCluster {
    let spec: AspenClusterSpec = serde_json::from_value(json!({
        "replicas": replicas, "storage": {"size": "1Gi"}, "pvcRetention": {"whenDeleted": "Delete"},
    }))
    .expect("spec");
    let mut cluster = AspenCluster::new("kv", spec);
    cluster.metadata.namespace = Some("apps".into());
    cluster.metadata.uid = Some("uid-7".into());
    cluster.metadata.generation = Some(3);
    cluster.metadata.finalizers = Some(vec![FINALIZER.into()]);
    cluster.status = status;
    cluster
}

pub(super) struct Harness {
    pub(super) context: Arc<Context<FakeNodes>>,
    server: Option<ApiServer>,
    log: Log,
}

pub(super) fn harness(statuses: HashMap<String, NodeStatus>, fail_changes: bool) -> Harness {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "apps");
    let log = Log::default();
    let nodes = FakeNodes {
        statuses,
        fail_changes,
        log: log.clone(),
    };
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "aspen-operator".into(),
            instance: None,
        },
    );
    let context = Arc::new(Context::new(
        client,
        nodes,
        Arc::new(Metrics::new()),
        recorder,
    ));
    Harness {
        context,
        server: Some(ApiServer {
            handle,
            log: log.clone(),
        }),
        log,
    }
}

impl Harness {
    /// Reconcile `cluster` while `script` plays the API server.
    pub(super) async fn reconcile<F>(
        &mut self,
        cluster: AspenCluster,
        script: impl FnOnce(ApiServer) -> F,
    ) -> Result<Action, Error>
    where
        F: Future<Output = ApiServer> + Send + 'static,
    {
        let server = self.server.take().expect("one reconcile per harness");
        let verifier = tokio::spawn(script(server));
        let result = tokio::time::timeout(
            Duration::from_secs(10),
            reconcile(Arc::new(cluster), self.context.clone()),
        )
        .await
        .expect("reconcile finished in time");
        tokio::time::timeout(Duration::from_secs(10), verifier)
            .await
            .expect("every expected request arrived")
            .expect("the API server script passed");
        result
    }

    pub(super) fn log(&self) -> Vec<String> {
        self.log.lock().expect("log").clone()
    }
}

/// The statuses of a healthy cluster of voters 1, 2 and 3 led by node 1.
pub(super) fn three_voters() -> HashMap<String, NodeStatus> {
    (0..3)
        .map(|o| (address(o), node(node_id_of(o), &[1, 2, 3])))
        .collect()
}

/// A cluster the operator initialised earlier.
pub(super) fn bootstrapped(replicas: i32) -> AspenCluster {
    cluster(
        replicas,
        Some(AspenClusterStatus {
            bootstrapped: true,
            ..AspenClusterStatus::default()
        }),
    )
}
