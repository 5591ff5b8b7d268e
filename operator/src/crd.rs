//! The `AspenCluster` custom resource (`aspen.dev/v1alpha1`): its spec with
//! defaults and validation (schema ranges and enums, CEL rules for what a
//! schema cannot say), and its status.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, Container, ResourceRequirements, Toleration, Volume};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::membership::{MAX_REPLICAS, Retention};
use crate::quantity::{self, QuantityError};

/// The image run when the spec names none: the release matching this operator.
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/aspen-dev/aspen:", env!("CARGO_PKG_VERSION"));
/// Name of the node's container in every pod; extra containers may not use it.
pub const NODE_CONTAINER: &str = "aspen";
/// Port of the client API (KV, admin, health, metrics) inside the pod.
pub const CLIENT_PORT: i32 = 7000;
/// Port of Raft peer traffic inside the pod.
pub const PEER_PORT: i32 = 7001;

/// An Aspen cluster: a replicated, strongly consistent key-value store of
/// `replicas` nodes on persistent volumes, whose Raft membership the operator
/// manages.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "aspen.dev",
    version = "v1alpha1",
    kind = "AspenCluster",
    namespaced,
    status = "AspenClusterStatus",
    shortname = "aspen",
    derive = "PartialEq",
    doc = "An Aspen cluster: a replicated, strongly consistent key-value store on persistent volumes.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn = r#"{"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"}"#,
    printcolumn = r#"{"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"}"#,
    printcolumn = r#"{"name": "Leader", "type": "string", "jsonPath": ".status.leader"}"#,
    printcolumn = r#"{"name": "Phase", "type": "string", "jsonPath": ".status.phase"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new(
    "!has(self.maxDbSize) || quantity(string(self.maxDbSize)).compareTo(quantity(string(self.storage.size))) <= 0"
).message("maxDbSize must not exceed storage.size: the database lives on that volume"))]
#[serde(rename_all = "camelCase")]
pub struct AspenClusterSpec {
    /// Number of nodes, each a Raft voter. 3 tolerates one failure, 5 two.
    /// Scaling to zero is not supported: delete the AspenCluster instead.
    #[schemars(range(min = 1, max = 9))]
    pub replicas: i32,
    /// Container image with /usr/local/bin/aspen-node and aspenctl.
    #[serde(default = "default_image")]
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    pub storage: StorageSpec,
    /// Resources of the node container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default)]
    pub raft: RaftSpec,
    /// Largest size of a node's database file; writes beyond it are refused
    /// while reads go on. Default: half of storage.size, leaving room for a
    /// snapshot written next to the database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_db_size: Option<Quantity>,
    #[serde(default)]
    pub pvc_retention: PvcRetention,
    #[serde(default)]
    pub pod_template: PodTemplateOverrides,
    #[serde(default)]
    pub service: ServiceSpec,
}

fn default_image() -> String {
    DEFAULT_IMAGE.to_owned()
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// The persistent volume of each node. Immutable: a StatefulSet's volume
/// claim templates cannot change.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self == oldSelf").message("storage is immutable: a StatefulSet's volume claim templates cannot change"))]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Size of each node's volume, e.g. 10Gi.
    pub size: Quantity,
    /// Storage class of the volumes; the cluster default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

/// Raft timing. Election timeouts must be well above the heartbeat and the
/// network's round trip, or leaders flap.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.heartbeatMs < self.electionTimeoutMinMs").message("heartbeatMs must be below electionTimeoutMinMs"))]
#[x_kube(validation = Rule::new("self.electionTimeoutMinMs < self.electionTimeoutMaxMs").message("electionTimeoutMinMs must be below electionTimeoutMaxMs"))]
#[serde(rename_all = "camelCase")]
pub struct RaftSpec {
    #[serde(default = "default_heartbeat_ms")]
    #[schemars(range(min = 10, max = 10000))]
    pub heartbeat_ms: u32,
    #[serde(default = "default_election_timeout_min_ms")]
    #[schemars(range(min = 50, max = 60000))]
    pub election_timeout_min_ms: u32,
    #[serde(default = "default_election_timeout_max_ms")]
    #[schemars(range(min = 100, max = 120000))]
    pub election_timeout_max_ms: u32,
    /// Log entries since the last snapshot that trigger a new one.
    #[serde(default = "default_snapshot_threshold")]
    #[schemars(range(min = 100, max = 10000000))]
    pub snapshot_threshold: u64,
}

fn default_heartbeat_ms() -> u32 {
    100
}
fn default_election_timeout_min_ms() -> u32 {
    1000
}
fn default_election_timeout_max_ms() -> u32 {
    2000
}
fn default_snapshot_threshold() -> u64 {
    5000
}

impl Default for RaftSpec {
    fn default() -> Self {
        RaftSpec {
            heartbeat_ms: default_heartbeat_ms(),
            election_timeout_min_ms: default_election_timeout_min_ms(),
            election_timeout_max_ms: default_election_timeout_max_ms(),
            snapshot_threshold: default_snapshot_threshold(),
        }
    }
}

/// What happens to a node's PersistentVolumeClaim when its member leaves.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RetentionPolicy {
    #[default]
    Retain,
    Delete,
}

impl From<RetentionPolicy> for Retention {
    fn from(policy: RetentionPolicy) -> Self {
        match policy {
            RetentionPolicy::Retain => Retention::Retain,
            RetentionPolicy::Delete => Retention::Delete,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PvcRetention {
    /// When the cluster scales in. A retained volume is never reused as is:
    /// it is wiped before its ordinal joins again.
    #[serde(default)]
    pub when_scaled: RetentionPolicy,
    /// When the AspenCluster is deleted. Retained volumes let a cluster of the
    /// same name and namespace start again with its data.
    #[serde(default)]
    pub when_deleted: RetentionPolicy,
}

/// Additions to every pod: placement, metadata, and extra containers (for
/// example an application that uses its local node on 127.0.0.1:7000).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplateOverrides {
    /// Extra pod labels. The operator's own app.kubernetes.io labels are reserved.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    #[x_kube(validation = Rule::new("self.all(k, !(k in ['app.kubernetes.io/name', 'app.kubernetes.io/instance', 'app.kubernetes.io/component', 'app.kubernetes.io/managed-by']))").message("the app.kubernetes.io name, instance, component and managed-by labels are set by the operator"))]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Containers added next to the node, e.g. an application sidecar. They
    /// share the pod's network: ports 7000 and 7001 are the node's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.all(c, c.name != 'aspen')").message("the container name 'aspen' is reserved for the node"))]
    pub containers: Vec<Container>,
    /// Volumes for the extra containers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.all(v, v.name != 'data' && v.name != 'tmp')").message("the volume names 'data' and 'tmp' are reserved for the node"))]
    pub volumes: Vec<Volume>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// The client Service, which routes to ready nodes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    #[serde(default = "default_service_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

fn default_service_port() -> i32 {
    CLIENT_PORT
}

impl Default for ServiceSpec {
    fn default() -> Self {
        ServiceSpec {
            type_: ServiceType::default(),
            port: default_service_port(),
            annotations: BTreeMap::new(),
        }
    }
}

/// A spec the API server accepted but the operator cannot run, for clusters
/// created before a validation rule existed or without the CRD's rules.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("spec.replicas is {0}; it must be between 1 and {MAX_REPLICAS}")]
    Replicas(i32),
    #[error("spec.storage.size: {0}")]
    StorageSize(QuantityError),
    #[error("spec.maxDbSize: {0}")]
    MaxDbSize(QuantityError),
    #[error(
        "spec.maxDbSize ({max_db_bytes} bytes) exceeds spec.storage.size ({storage_bytes} bytes)"
    )]
    MaxDbSizeAboveStorage {
        max_db_bytes: u64,
        storage_bytes: u64,
    },
    #[error(
        "spec.podTemplate.containers: container {container:?} declares port {port}, which the node listens on; use another port"
    )]
    PortTaken { container: String, port: i32 },
}

impl AspenClusterSpec {
    /// The replicas as the planner wants them, once checked.
    pub fn desired_replicas(&self) -> Result<u32, SpecError> {
        u32::try_from(self.replicas)
            .ok()
            .filter(|r| (1..=MAX_REPLICAS).contains(r))
            .ok_or(SpecError::Replicas(self.replicas))
    }

    /// The database size limit in bytes: `maxDbSize`, or half the volume.
    pub fn max_db_bytes(&self) -> Result<u64, SpecError> {
        let storage_bytes = quantity::bytes(&self.storage.size).map_err(SpecError::StorageSize)?;
        let Some(max) = &self.max_db_size else {
            return Ok(storage_bytes / 2);
        };
        let max_db_bytes = quantity::bytes(max).map_err(SpecError::MaxDbSize)?;
        if max_db_bytes > storage_bytes {
            return Err(SpecError::MaxDbSizeAboveStorage {
                max_db_bytes,
                storage_bytes,
            });
        }
        Ok(max_db_bytes)
    }

    /// Everything the operator checks before acting on a spec.
    /// The sidecar port check lives here rather than in CEL: a rule over
    /// the ports of every container has no cost bound the API server accepts.
    pub fn validate(&self) -> Result<(), SpecError> {
        self.desired_replicas()?;
        self.max_db_bytes()?;
        for container in &self.pod_template.containers {
            let taken = container
                .ports
                .iter()
                .flatten()
                .find(|p| p.container_port == CLIENT_PORT || p.container_port == PEER_PORT);
            if let Some(port) = taken {
                return Err(SpecError::PortTaken {
                    container: container.name.clone(),
                    port: port.container_port,
                });
            }
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Not reconciled yet.
    #[default]
    Pending,
    /// The first node is being started and initialised.
    Bootstrapping,
    /// Members match the spec and a quorum is healthy.
    Running,
    /// Members are being added or removed.
    Scaling,
    /// No quorum, or a problem the operator cannot solve alone.
    Degraded,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum MemberRole {
    Voter,
    Learner,
}

/// One Raft member, as the leader sees it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// Pod name.
    pub name: String,
    pub node_id: u64,
    /// Client address (pod DNS name and port).
    pub address: String,
    pub role: MemberRole,
    /// Answers the operator and follows the current leader.
    pub healthy: bool,
    /// Log entries behind the leader (absent for the leader itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<u64>,
}

/// The membership change being executed, written before it starts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OperationStatus {
    /// Initialize, AddLearner, Promote, TransferLeadership, RemoveVoter or RemoveLearner.
    pub kind: String,
    pub node_id: u64,
    /// For TransferLeadership: the leader handing over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_node_id: Option<u64>,
    pub started_at: Time,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AspenClusterStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub phase: Phase,
    /// Raft members (voters and learners).
    #[serde(default)]
    pub replicas: i32,
    /// Pods that are ready: members that know the leader and have caught up.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the pods, for the scale subresource.
    #[serde(default)]
    pub selector: String,
    /// Pod name of the Raft leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberStatus>,
    /// Available, Progressing and Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The cluster was initialised; it is never initialised again.
    #[serde(default)]
    pub bootstrapped: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<OperationStatus>,
}

/// Fields whose schema is an embedded Kubernetes type, documented upstream.
const EMBEDDED_TYPES: [&[&str]; 5] = [
    &["spec", "resources"],
    &["spec", "podTemplate", "affinity"],
    &["spec", "podTemplate", "tolerations"],
    &["spec", "podTemplate", "containers"],
    &["spec", "podTemplate", "volumes"],
];

/// The CRD, with the descriptions inside embedded Kubernetes types left out
/// (as controller-gen's `maxDescLen=0` does): they would triple its size and
/// push it past what client-side `kubectl apply` can annotate.
pub fn crd() -> CustomResourceDefinition {
    let mut crd = AspenCluster::crd();
    for version in &mut crd.spec.versions {
        let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        else {
            continue;
        };
        let mut value = serde_json::to_value(&*schema).expect("a schema serializes");
        for path in EMBEDDED_TYPES {
            let field = path.iter().try_fold(&mut value, |node, name| {
                node.get_mut("properties")?.get_mut(*name)
            });
            let field = field.unwrap_or_else(|| panic!("schema has no field {path:?}"));
            for child in schema_children(field) {
                strip_descriptions(child);
            }
        }
        *schema = serde_json::from_value(value).expect("a stripped schema is still a schema");
    }
    crd
}

/// The sub-schemas of a schema node (not the values of `properties` maps
/// themselves, which may be named "description").
fn schema_children(node: &mut Value) -> Vec<&mut Value> {
    let Some(object) = node.as_object_mut() else {
        return Vec::new();
    };
    let mut children = Vec::new();
    for (key, value) in object.iter_mut() {
        match key.as_str() {
            "properties" => children.extend(
                value
                    .as_object_mut()
                    .into_iter()
                    .flat_map(|p| p.values_mut()),
            ),
            "items" | "additionalProperties" | "not" if value.is_object() => children.push(value),
            "allOf" | "anyOf" | "oneOf" => {
                children.extend(value.as_array_mut().into_iter().flatten())
            }
            _ => {}
        }
    }
    children
}

fn strip_descriptions(node: &mut Value) {
    if let Some(object) = node.as_object_mut() {
        object.remove("description");
    }
    for child in schema_children(node) {
        strip_descriptions(child);
    }
}

/// The CRD as YAML: what `aspen-operator crd` prints and `crds/` holds.
pub fn crd_yaml() -> Result<String, serde_saphyr::SerializeError> {
    serde_saphyr::to_string(&crd())
}

#[cfg(test)]
#[path = "crd_tests.rs"]
mod tests;
