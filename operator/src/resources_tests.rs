//! The generated objects for a sample spec, with a sidecar and overrides.

use k8s_openapi::api::core::v1::Container;

use super::*;
use crate::crd::AspenClusterSpec;

fn cluster(spec_yaml: &str) -> AspenCluster {
    let spec: AspenClusterSpec = serde_saphyr::from_str(spec_yaml).expect("valid spec");
    let mut cluster = AspenCluster::new("kv", spec);
    cluster.metadata.namespace = Some("apps".into());
    cluster.metadata.uid = Some("uid-1".into());
    cluster
}

const SIDECAR: &str = r#"
replicas: 3
image: example.com/aspen:1.2.3
imagePullPolicy: IfNotPresent
storage: { size: 2Gi, storageClassName: fast }
maxDbSize: 1Gi
resources: { requests: { cpu: 250m, memory: 256Mi } }
podTemplate:
  labels: { team: payments }
  annotations: { prometheus.io/scrape: "true" }
  nodeSelector: { disk: ssd }
  tolerations: [{ key: dedicated, operator: Equal, value: aspen, effect: NoSchedule }]
  affinity:
    podAntiAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        - topologyKey: kubernetes.io/hostname
          labelSelector: { matchLabels: { app.kubernetes.io/instance: kv } }
  containers:
    - name: app
      image: example.com/app:1
      env: [{ name: ASPEN_ENDPOINT, value: "127.0.0.1:7000" }]
      volumeMounts: [{ name: app-config, mountPath: /etc/app }]
  volumes:
    - name: app-config
      configMap: { name: app-config }
"#;

fn pod_spec(set: &StatefulSet) -> &PodSpec {
    set.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec")
}

fn node(set: &StatefulSet) -> &Container {
    &pod_spec(set).containers[0]
}

#[test]
fn statefulset_runs_the_node_on_stable_dns_names_with_safe_defaults() {
    let cluster = cluster(SIDECAR);
    let set = stateful_set(&cluster, 2, "abc");
    let spec = set.spec.as_ref().expect("spec");
    assert_eq!(spec.replicas, Some(2), "replicas come from the planner");
    assert_eq!(spec.service_name.as_deref(), Some("kv-peers"));
    assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
    let retention = spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .expect("policy");
    assert_eq!(retention.when_scaled.as_deref(), Some("Retain"));
    assert_eq!(retention.when_deleted.as_deref(), Some("Retain"));

    let claim = &spec.volume_claim_templates.as_ref().expect("claims")[0];
    let claim_spec = claim.spec.as_ref().expect("claim spec");
    assert_eq!(claim.metadata.name.as_deref(), Some("data"));
    assert_eq!(claim_spec.storage_class_name.as_deref(), Some("fast"));
    assert_eq!(
        claim_spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .map(|r| r["storage"].0.as_str()),
        Some("2Gi")
    );
    assert_eq!(
        claim.metadata.labels,
        Some(selector_labels(&Names::of(&cluster)))
    );

    let node = node(&set);
    assert_eq!(node.name, "aspen");
    assert_eq!(node.image.as_deref(), Some("example.com/aspen:1.2.3"));
    assert_eq!(node.image_pull_policy.as_deref(), Some("IfNotPresent"));
    let args = node.args.as_ref().expect("args");
    assert!(args.contains(&"--pod-name=$(POD_NAME)".to_owned()));
    assert!(args.contains(&"--client-advertise=$(POD_NAME).kv-peers.apps.svc:7000".to_owned()));
    assert!(args.contains(&"--peer-advertise=$(POD_NAME).kv-peers.apps.svc:7001".to_owned()));
    let path = |probe: &Option<Probe>| {
        probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    assert_eq!(path(&node.readiness_probe).as_deref(), Some("/readyz"));
    assert_eq!(
        path(&node.liveness_probe).as_deref(),
        Some("/healthz"),
        "liveness never depends on a leader"
    );
    assert!(
        node.liveness_probe
            .as_ref()
            .and_then(|p| p.failure_threshold)
            >= Some(3)
    );
    let pre_stop = node
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.exec.as_ref())
        .and_then(|e| e.command.clone())
        .expect("preStop");
    assert_eq!(
        pre_stop.join(" "),
        "/usr/local/bin/aspenctl --endpoints 127.0.0.1:7000 cluster step-down"
    );
    let security = node.security_context.as_ref().expect("security context");
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(
        node.resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .map(|r| r["cpu"].0.as_str()),
        Some("250m")
    );
    let mounts: Vec<_> = node
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.as_str(), m.mount_path.as_str()))
        .collect();
    assert_eq!(mounts, [("data", DATA_DIR), ("tmp", "/tmp")]);

    let pod = pod_spec(&set);
    assert_eq!(pod.termination_grace_period_seconds, Some(30));
    assert_eq!(pod.enable_service_links, Some(false));
    assert_eq!(
        pod.security_context
            .as_ref()
            .and_then(|s| s.run_as_non_root),
        Some(true)
    );

    let owner = &set.metadata.owner_references.as_ref().expect("owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
        ("AspenCluster", "kv", "uid-1")
    );
    assert_eq!(owner.controller, Some(true));
}

#[test]
fn sidecar_containers_and_overrides_are_merged() {
    let set = stateful_set(&cluster(SIDECAR), 3, "abc");
    let template = &set.spec.as_ref().expect("spec").template;
    let pod = pod_spec(&set);
    let names: Vec<_> = pod.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        ["aspen", "app"],
        "the node first, then the sidecar as given"
    );
    assert_eq!(
        pod.containers[1].env.as_ref().map(|e| e[0].value.clone()),
        Some(Some("127.0.0.1:7000".to_owned()))
    );
    let volumes: Vec<_> = pod
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(volumes, ["tmp", "app-config"]);

    let meta = template.metadata.as_ref().expect("template metadata");
    let labels = meta.labels.as_ref().expect("labels");
    assert_eq!(labels["team"], "payments");
    assert_eq!(labels["app.kubernetes.io/instance"], "kv");
    let annotations = meta.annotations.as_ref().expect("annotations");
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations[CONFIG_HASH_ANNOTATION], "abc");

    assert_eq!(
        pod.node_selector.as_ref().map(|s| s["disk"].as_str()),
        Some("ssd")
    );
    assert_eq!(
        pod.tolerations.as_ref().map(|t| t[0].key.clone()),
        Some(Some("dedicated".into()))
    );
    assert!(
        pod.affinity
            .as_ref()
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .is_some()
    );
}

#[test]
fn operator_labels_win_over_user_labels() {
    let mut cluster = cluster(SIDECAR);
    cluster
        .spec
        .pod_template
        .labels
        .insert("app.kubernetes.io/instance".into(), "other".into());
    let set = stateful_set(&cluster, 3, "abc");
    let labels = set
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone());
    assert_eq!(labels.expect("labels")["app.kubernetes.io/instance"], "kv");
}

#[test]
fn headless_service_publishes_pods_before_they_are_ready() {
    let service = headless_service(&cluster(SIDECAR));
    let spec = service.spec.expect("spec");
    assert_eq!(service.metadata.name.as_deref(), Some("kv-peers"));
    assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
    assert_eq!(spec.publish_not_ready_addresses, Some(true));
    let ports: Vec<_> = spec.ports.iter().flatten().map(|p| p.port).collect();
    assert_eq!(ports, [7000, 7001]);
}

#[test]
fn client_service_follows_the_spec() {
    let mut cluster = cluster(SIDECAR);
    cluster.spec.service.type_ = crate::crd::ServiceType::LoadBalancer;
    cluster.spec.service.port = 80;
    cluster
        .spec
        .service
        .annotations
        .insert("lb".into(), "internal".into());
    let service = client_service(&cluster);
    let spec = service.spec.expect("spec");
    assert_eq!(service.metadata.name.as_deref(), Some("kv"));
    assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
    let port = &spec.ports.expect("ports")[0];
    assert_eq!(port.port, 80);
    assert_eq!(port.target_port, Some(IntOrString::String("client".into())));
    assert_eq!(
        service.metadata.annotations.expect("annotations")["lb"],
        "internal"
    );
    assert_eq!(
        spec.publish_not_ready_addresses, None,
        "clients only reach ready nodes"
    );
}

#[test]
fn disruption_budget_keeps_a_quorum() {
    let cluster = cluster(SIDECAR);
    let allowed = |voters| {
        pod_disruption_budget(&cluster, voters)
            .spec
            .and_then(|s| s.max_unavailable)
            .expect("maxUnavailable")
    };
    assert_eq!(allowed(1), IntOrString::Int(0));
    assert_eq!(allowed(2), IntOrString::Int(0));
    assert_eq!(allowed(3), IntOrString::Int(1));
    assert_eq!(allowed(5), IntOrString::Int(2));
    assert_eq!(allowed(9), IntOrString::Int(4));
}

#[test]
fn config_map_carries_the_node_settings() {
    let cluster = cluster(SIDECAR);
    let config = config_map(&cluster).expect("valid spec");
    let data = config.data.as_ref().expect("data");
    assert_eq!(config.metadata.name.as_deref(), Some("kv-config"));
    assert_eq!(data["ASPEN_CLUSTER_ID"], "apps/kv");
    assert_eq!(data["ASPEN_MAX_DB_BYTES"], (1u64 << 30).to_string());
    assert_eq!(data["ASPEN_DATA_DIR"], DATA_DIR);
    assert_eq!(data["ASPEN_HEARTBEAT_MS"], "100");
    assert_eq!(data["ASPEN_CLIENT_LISTEN"], "0.0.0.0:7000");

    let mut other = cluster.clone();
    other.spec.max_db_size = None;
    let other_config = config_map(&other).expect("valid spec");
    assert_eq!(
        other_config.data.as_ref().expect("data")["ASPEN_MAX_DB_BYTES"],
        (1u64 << 30).to_string(),
        "defaults to half of the 2Gi volume"
    );
    other.spec.raft.heartbeat_ms = 150;
    assert_ne!(
        config_hash(&config),
        config_hash(&config_map(&other).expect("valid"))
    );
    assert_eq!(
        config_hash(&config),
        config_hash(&config_map(&cluster).expect("valid"))
    );
}

#[test]
fn names_and_ordinals_round_trip() {
    let names = Names::of(&cluster(SIDECAR));
    assert_eq!(names.pod(4), "kv-4");
    assert_eq!(names.volume_claim(4), "data-kv-4");
    assert_eq!(names.pod_ordinal("kv-4"), Some(4));
    assert_eq!(names.volume_claim_ordinal("data-kv-12"), Some(12));
    assert_eq!(names.pod_ordinal("kv-04"), None);
    assert_eq!(names.pod_ordinal("kvx-4"), None);
    assert_eq!(names.pod_ordinal("kv-peers"), None);
    assert_eq!(names.volume_claim_ordinal("kv-4"), None);
    assert_eq!(names.client_address(2), "kv-2.kv-peers.apps.svc:7000");
    assert_eq!(names.peer_address(2), "kv-2.kv-peers.apps.svc:7001");
    assert_eq!(
        selector(&names),
        "app.kubernetes.io/instance=kv,app.kubernetes.io/name=aspen"
    );
}
