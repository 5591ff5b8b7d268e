//! The Kubernetes objects an `AspenCluster` owns, as pure functions of it:
//! headless and client Services, ConfigMap, PodDisruptionBudget and
//! StatefulSet. The controller applies them with server-side apply.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapEnvSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvFromSource, EnvVar, EnvVarSource, ExecAction, HTTPGetAction, Lifecycle, LifecycleHandler,
    ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext,
    PodSpec, PodTemplateSpec, Probe, SeccompProfile, SecurityContext, Service, ServicePort,
    ServiceSpec, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::crd::{AspenCluster, CLIENT_PORT, NODE_CONTAINER, PEER_PORT, SpecError};
use crate::membership::{Ordinal, quorum};
use crate::nodes::NodeAddresses;

/// Where the node keeps its database, on the volume.
pub const DATA_DIR: &str = "/var/lib/aspen";
/// Name of the volume claim template (and so the prefix of every PVC name).
pub const DATA_VOLUME: &str = "data";
/// Annotation on the pod template that changes with the ConfigMap, so that a
/// configuration change rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "aspen.dev/config-hash";
/// The user the node runs as: the distroless "nonroot" user.
const RUN_AS_USER: i64 = 65532;
/// Time for the node to hand leadership away and close its database.
const TERMINATION_GRACE_SECONDS: i64 = 30;

/// Names of the owned objects of one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub cluster: String,
    pub namespace: String,
}

impl Names {
    pub fn of(cluster: &AspenCluster) -> Self {
        Names {
            cluster: cluster.name_any(),
            namespace: cluster.namespace().unwrap_or_else(|| "default".to_owned()),
        }
    }

    pub fn statefulset(&self) -> String {
        self.cluster.clone()
    }

    /// The client Service: what applications connect to.
    pub fn client_service(&self) -> String {
        self.cluster.clone()
    }

    /// The headless Service that gives each pod its DNS name.
    pub fn headless_service(&self) -> String {
        format!("{}-peers", self.cluster)
    }

    pub fn config_map(&self) -> String {
        format!("{}-config", self.cluster)
    }

    pub fn pod_disruption_budget(&self) -> String {
        self.cluster.clone()
    }

    pub fn pod(&self, ordinal: Ordinal) -> String {
        format!("{}-{ordinal}", self.cluster)
    }

    /// The PVC the StatefulSet controller creates for `ordinal`.
    pub fn volume_claim(&self, ordinal: Ordinal) -> String {
        format!("{DATA_VOLUME}-{}", self.pod(ordinal))
    }

    /// The ordinal in a pod name of this cluster.
    pub fn pod_ordinal(&self, pod: &str) -> Option<Ordinal> {
        let suffix = pod.strip_prefix(&self.cluster)?.strip_prefix('-')?;
        if suffix.starts_with('0') && suffix.len() > 1 {
            return None;
        }
        suffix.parse().ok()
    }

    /// The ordinal in a PVC name of this cluster.
    pub fn volume_claim_ordinal(&self, claim: &str) -> Option<Ordinal> {
        self.pod_ordinal(claim.strip_prefix(DATA_VOLUME)?.strip_prefix('-')?)
    }

    fn pod_host(&self, pod: &str) -> String {
        format!("{pod}.{}.{}.svc", self.headless_service(), self.namespace)
    }

    /// The node's client address: its stable DNS name, never an IP.
    pub fn client_address(&self, ordinal: Ordinal) -> String {
        format!("{}:{CLIENT_PORT}", self.pod_host(&self.pod(ordinal)))
    }

    pub fn peer_address(&self, ordinal: Ordinal) -> String {
        format!("{}:{PEER_PORT}", self.pod_host(&self.pod(ordinal)))
    }

    /// The Raft cluster id: stable across re-creation of the resource, so
    /// that retained volumes can be adopted by a cluster of the same name.
    pub fn cluster_id(&self) -> String {
        format!("{}/{}", self.namespace, self.cluster)
    }
}

impl NodeAddresses for Names {
    fn client_address(&self, ordinal: Ordinal) -> String {
        Names::client_address(self, ordinal)
    }

    fn peer_address(&self, ordinal: Ordinal) -> String {
        Names::peer_address(self, ordinal)
    }
}

/// Labels that select a cluster's pods (and PVCs).
pub fn selector_labels(names: &Names) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "aspen".to_owned()),
        (
            "app.kubernetes.io/instance".to_owned(),
            names.cluster.clone(),
        ),
    ])
}

/// The selector as a string, for status and list calls.
pub fn selector(names: &Names) -> String {
    selector_labels(names)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn labels(names: &Names) -> BTreeMap<String, String> {
    let mut labels = selector_labels(names);
    labels.insert("app.kubernetes.io/component".to_owned(), "node".to_owned());
    labels.insert(
        "app.kubernetes.io/managed-by".to_owned(),
        "aspen-operator".to_owned(),
    );
    labels
}

fn metadata(cluster: &AspenCluster, names: &Names, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(names.namespace.clone()),
        labels: Some(labels(names)),
        owner_references: cluster.controller_owner_ref(&()).map(|owner| vec![owner]),
        ..ObjectMeta::default()
    }
}

/// Node settings shared by every pod, as the node's environment variables.
pub fn config_map(cluster: &AspenCluster) -> Result<ConfigMap, SpecError> {
    let names = Names::of(cluster);
    let spec = &cluster.spec;
    let data = BTreeMap::from(
        [
            ("ASPEN_CLUSTER_ID", names.cluster_id()),
            ("ASPEN_DATA_DIR", DATA_DIR.to_owned()),
            ("ASPEN_STORAGE", "redb".to_owned()),
            ("ASPEN_MAX_DB_BYTES", spec.max_db_bytes()?.to_string()),
            ("ASPEN_CLIENT_LISTEN", format!("0.0.0.0:{CLIENT_PORT}")),
            ("ASPEN_PEER_LISTEN", format!("0.0.0.0:{PEER_PORT}")),
            ("ASPEN_HEARTBEAT_MS", spec.raft.heartbeat_ms.to_string()),
            (
                "ASPEN_ELECTION_TIMEOUT_MIN_MS",
                spec.raft.election_timeout_min_ms.to_string(),
            ),
            (
                "ASPEN_ELECTION_TIMEOUT_MAX_MS",
                spec.raft.election_timeout_max_ms.to_string(),
            ),
            (
                "ASPEN_SNAPSHOT_THRESHOLD",
                spec.raft.snapshot_threshold.to_string(),
            ),
            ("ASPEN_LOG_FORMAT", "json".to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    Ok(ConfigMap {
        metadata: metadata(cluster, &names, names.config_map()),
        data: Some(data),
        ..ConfigMap::default()
    })
}

/// A stable digest of the ConfigMap's data (FNV-1a), so that the pod template
/// changes exactly when the configuration does, whatever the Rust version.
pub fn config_hash(config: &ConfigMap) -> String {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    let mut hash = OFFSET;
    for (key, value) in config.data.iter().flatten() {
        for byte in key.bytes().chain([0]).chain(value.bytes()).chain([0]) {
            hash = (hash ^ u64::from(byte)).wrapping_mul(PRIME);
        }
    }
    format!("{hash:016x}")
}

fn port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port,
        target_port: Some(IntOrString::String(name.to_owned())),
        protocol: Some("TCP".to_owned()),
        ..ServicePort::default()
    }
}

/// Gives every pod a DNS name, ready or not: members must reach a peer that
/// is still catching up, and a pod is only ready once it is a member.
pub fn headless_service(cluster: &AspenCluster) -> Service {
    let names = Names::of(cluster);
    Service {
        metadata: metadata(cluster, &names, names.headless_service()),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(&names)),
            ports: Some(vec![port("client", CLIENT_PORT), port("peer", PEER_PORT)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// Routes applications to ready nodes; any node forwards to the leader.
pub fn client_service(cluster: &AspenCluster) -> Service {
    let names = Names::of(cluster);
    let service = &cluster.spec.service;
    let mut meta = metadata(cluster, &names, names.client_service());
    if !service.annotations.is_empty() {
        meta.annotations = Some(service.annotations.clone());
    }
    Service {
        metadata: meta,
        spec: Some(ServiceSpec {
            type_: Some(service.type_.as_str().to_owned()),
            selector: Some(selector_labels(&names)),
            ports: Some(vec![ServicePort {
                port: service.port,
                ..port("client", CLIENT_PORT)
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// Lets voluntary evictions (drains) take down only as many pods as the
/// cluster can lose and keep a quorum of `voters`: none for 1 or 2 voters.
pub fn pod_disruption_budget(cluster: &AspenCluster, voters: u32) -> PodDisruptionBudget {
    let names = Names::of(cluster);
    let voters = usize::try_from(voters).expect("voter count fits usize");
    let tolerated = voters.saturating_sub(quorum(voters));
    PodDisruptionBudget {
        metadata: metadata(cluster, &names, names.pod_disruption_budget()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(
                i32::try_from(tolerated).expect("at most 9 voters"),
            )),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&names)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

fn http_probe(path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("client".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        timeout_seconds: Some(3),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    }
}

fn node_container(cluster: &AspenCluster, names: &Names) -> Container {
    let spec = &cluster.spec;
    let host = format!(
        "$(POD_NAME).{}.{}.svc",
        names.headless_service(),
        names.namespace
    );
    Container {
        name: NODE_CONTAINER.to_owned(),
        image: Some(spec.image.clone()),
        image_pull_policy: spec.image_pull_policy.map(|p| p.as_str().to_owned()),
        command: Some(vec!["/usr/local/bin/aspen-node".to_owned()]),
        args: Some(vec![
            "--pod-name=$(POD_NAME)".to_owned(),
            format!("--client-advertise={host}:{CLIENT_PORT}"),
            format!("--peer-advertise={host}:{PEER_PORT}"),
        ]),
        env: Some(vec![EnvVar {
            name: "POD_NAME".to_owned(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".to_owned(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }]),
        env_from: Some(vec![EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource {
                name: names.config_map(),
                ..ConfigMapEnvSource::default()
            }),
            ..EnvFromSource::default()
        }]),
        ports: Some(vec![
            ContainerPort {
                name: Some("client".to_owned()),
                container_port: CLIENT_PORT,
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("peer".to_owned()),
                container_port: PEER_PORT,
                ..ContainerPort::default()
            },
        ]),
        // Ready = a member that knows the leader and has caught up: the
        // client Service and rolling updates wait for exactly that.
        readiness_probe: Some(http_probe("/readyz", 5, 2)),
        // Opening a large database can take minutes; liveness waits for it.
        startup_probe: Some(http_probe("/healthz", 2, 300)),
        // Only a wedged process is restarted: /healthz does not depend on a
        // leader, so losing quorum never turns into a restart storm.
        liveness_probe: Some(http_probe("/healthz", 10, 6)),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(
                        [
                            "/usr/local/bin/aspenctl",
                            "--endpoints",
                            "127.0.0.1:7000",
                            "cluster",
                            "step-down",
                        ]
                        .map(str::to_owned)
                        .to_vec(),
                    ),
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        resources: spec.resources.clone(),
        volume_mounts: Some(vec![
            VolumeMount {
                name: DATA_VOLUME.to_owned(),
                mount_path: DATA_DIR.to_owned(),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "tmp".to_owned(),
                mount_path: "/tmp".to_owned(),
                ..VolumeMount::default()
            },
        ]),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

fn non_empty<K: Ord + Clone, V: Clone>(map: &BTreeMap<K, V>) -> Option<BTreeMap<K, V>> {
    (!map.is_empty()).then(|| map.clone())
}

fn pod_template(cluster: &AspenCluster, names: &Names, config_hash: &str) -> PodTemplateSpec {
    let overrides = &cluster.spec.pod_template;
    // The operator's labels win: the selector must keep matching.
    let mut pod_labels = overrides.labels.clone();
    pod_labels.extend(labels(names));
    let mut annotations = overrides.annotations.clone();
    annotations.insert(CONFIG_HASH_ANNOTATION.to_owned(), config_hash.to_owned());
    let mut containers = vec![node_container(cluster, names)];
    containers.extend(overrides.containers.iter().cloned());
    let mut volumes = vec![Volume {
        name: "tmp".to_owned(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }];
    volumes.extend(overrides.volumes.iter().cloned());
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers,
            volumes: Some(volumes),
            node_selector: non_empty(&overrides.node_selector),
            tolerations: (!overrides.tolerations.is_empty()).then(|| overrides.tolerations.clone()),
            affinity: overrides.affinity.clone(),
            termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
            // Service links would put variables like ASPEN_PORT into the
            // environment, which the node reads its ASPEN_* flags from.
            enable_service_links: Some(false),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(RUN_AS_USER),
                run_as_group: Some(RUN_AS_USER),
                fs_group: Some(RUN_AS_USER),
                fs_group_change_policy: Some("OnRootMismatch".to_owned()),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".to_owned(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            ..PodSpec::default()
        }),
    }
}

/// The StatefulSet at `replicas` pods, which the planner alone decides.
pub fn stateful_set(cluster: &AspenCluster, replicas: u32, config_hash: &str) -> StatefulSet {
    let names = Names::of(cluster);
    let storage = &cluster.spec.storage;
    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(DATA_VOLUME.to_owned()),
            labels: Some(selector_labels(&names)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
            storage_class_name: storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    storage.size.clone(),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    };
    StatefulSet {
        metadata: metadata(cluster, &names, names.statefulset()),
        spec: Some(StatefulSetSpec {
            replicas: Some(i32::try_from(replicas).expect("replicas fit i32")),
            service_name: Some(names.headless_service()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&names)),
                ..LabelSelector::default()
            },
            // A restarting cluster needs all its pods to elect a leader, and
            // a pod is only ready once there is one: ordered start deadlocks.
            pod_management_policy: Some("Parallel".to_owned()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".to_owned()),
                ..StatefulSetUpdateStrategy::default()
            }),
            // Volumes outlive pods here; the operator applies the cluster's
            // retention policy itself, after the member has left Raft.
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Retain".to_owned()),
                    when_scaled: Some("Retain".to_owned()),
                },
            ),
            template: pod_template(cluster, &names, config_hash),
            volume_claim_templates: Some(vec![claim]),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

#[cfg(test)]
#[path = "resources_tests.rs"]
mod tests;
