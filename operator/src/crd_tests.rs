//! The CRD as the API server sees it: the schema is structural, the CEL
//! rules compile, fit the cost budget and reject what they should, and
//! every example manifest is a valid AspenCluster. (`tests/cli.rs` checks
//! that `crds/` holds what the binary prints.)

use std::path::{Path, PathBuf};

use kube::core::cel::{ScopeContext, Validator, WarningKind, analyze_rule, compile_schema};
use serde_json::{Value, json};

use super::*;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn schema() -> Value {
    let crd = crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("openAPIV3Schema");
    serde_json::to_value(schema).expect("schema as JSON")
}

const JUNCTORS: [&str; 4] = ["allOf", "anyOf", "oneOf", "not"];

/// Kubernetes' structural schema rules (apiextensions "Specifying a
/// structural schema"), collected as errors naming the offending path.
fn check_structural(node: &Value, path: &str, in_junctor: bool, errors: &mut Vec<String>) {
    let Some(object) = node.as_object() else {
        errors.push(format!("{path}: a schema must be an object"));
        return;
    };
    let int_or_string = object.get("x-kubernetes-int-or-string") == Some(&json!(true));
    let preserve = object.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
    for key in [
        "$ref",
        "definitions",
        "$schema",
        "uniqueItems",
        "patternProperties",
    ] {
        if object.contains_key(key) {
            errors.push(format!("{path}: {key} is not allowed"));
        }
    }
    if in_junctor {
        for key in [
            "description",
            "type",
            "default",
            "additionalProperties",
            "nullable",
        ] {
            if object.contains_key(key) && !(int_or_string && key == "type") {
                errors.push(format!("{path}: {key} inside allOf/anyOf/oneOf/not"));
            }
        }
    } else if !int_or_string && !preserve {
        match object.get("type").and_then(Value::as_str) {
            Some(t) if !t.is_empty() => {}
            _ => errors.push(format!("{path}: no type")),
        }
    }
    if let Some(any_of) = object.get("anyOf").filter(|_| int_or_string)
        && any_of != &json!([{"type": "integer"}, {"type": "string"}])
    {
        errors.push(format!(
            "{path}: int-or-string anyOf must be [integer, string]"
        ));
    }
    if object.contains_key("properties") && object.contains_key("additionalProperties") {
        errors.push(format!(
            "{path}: properties and additionalProperties together"
        ));
    }
    if object.get("additionalProperties") == Some(&json!(false)) {
        errors.push(format!("{path}: additionalProperties: false"));
    }
    if let (Some(values), Some(t)) = (
        object.get("enum"),
        object.get("type").and_then(Value::as_str),
    ) {
        let nullable = object.get("nullable") == Some(&json!(true));
        for value in values.as_array().into_iter().flatten() {
            let fits = match value {
                Value::Null => nullable,
                Value::String(_) => t == "string",
                Value::Number(_) => t == "integer" || t == "number",
                Value::Bool(_) => t == "boolean",
                _ => false,
            };
            if !fits {
                errors.push(format!("{path}: enum value {value} is not a {t}"));
            }
        }
    }
    for (name, child) in object
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        check_structural(child, &format!("{path}.{name}"), in_junctor, errors);
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child) = object.get(key).filter(|c| c.is_object()) {
            check_structural(child, &format!("{path}.{key}"), in_junctor, errors);
        }
    }
    for junctor in JUNCTORS {
        let branches: Vec<&Value> = match object.get(junctor) {
            Some(Value::Array(items)) => items.iter().collect(),
            Some(single) => vec![single],
            None => continue,
        };
        for (i, branch) in branches.into_iter().enumerate() {
            // Every field a junctor mentions must also be specified outside.
            for name in branch
                .get("properties")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .map(|(k, _)| k)
            {
                if object.get("properties").and_then(|p| p.get(name)).is_none() {
                    errors.push(format!(
                        "{path}.{junctor}[{i}]: field {name} only inside the junctor"
                    ));
                }
            }
            check_structural(branch, &format!("{path}.{junctor}[{i}]"), true, errors);
        }
    }
}

#[test]
fn crd_schema_is_structural() {
    let schema = schema();
    let mut errors = Vec::new();
    check_structural(&schema, "", false, &mut errors);
    let metadata = &schema["properties"]["metadata"];
    if let Some(fields) = metadata.get("properties").and_then(Value::as_object) {
        assert!(
            fields.keys().all(|k| k == "name" || k == "generateName"),
            "metadata may only restrict name"
        );
    }
    assert!(errors.is_empty(), "not structural:\n{}", errors.join("\n"));
}

#[test]
fn structural_check_catches_what_kubernetes_refuses() {
    let bad = json!({
        "type": "object",
        "properties": {
            "untyped": {"description": "no type"},
            "junction": {"type": "object", "anyOf": [{"type": "string", "properties": {"x": {"type": "string"}}}]}
        }
    });
    let mut errors = Vec::new();
    check_structural(&bad, "", false, &mut errors);
    assert!(
        errors.iter().any(|e| e.contains(".untyped: no type")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("type inside")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("only inside the junctor")),
        "{errors:?}"
    );
}

fn rules(node: &Value, found: &mut Vec<(String, Value)>) {
    if let Some(list) = node
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
    {
        for rule in list {
            found.push((
                rule["rule"].as_str().expect("rule text").to_owned(),
                node.clone(),
            ));
        }
    }
    for (_, child) in node
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        rules(child, found);
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child) = node.get(key).filter(|c| c.is_object()) {
            rules(child, found);
        }
    }
}

#[test]
fn cel_rules_compile_and_fit_the_cost_budget() {
    let mut found = Vec::new();
    rules(&schema(), &mut found);
    assert!(
        found.len() >= 7,
        "expected the CRD's rules, found {}",
        found.len()
    );
    for (rule, node) in found {
        let compiled = compile_schema(&node);
        assert!(
            !compiled.has_errors(),
            "{rule}: {:?}",
            compiled.compilation_errors()
        );
        // The scope check does not know comprehension variables (`c` in
        // `self.all(c, ...)`); compilation above already proves the scope.
        let warnings: Vec<_> = analyze_rule(&rule, &compiled, ScopeContext::CrdValidation)
            .into_iter()
            .filter(|w| w.kind != WarningKind::WrongScope)
            .collect();
        assert!(warnings.is_empty(), "{rule}: {warnings:?}");
    }
}

#[test]
fn cost_check_flags_rules_over_unbounded_lists() {
    let node = json!({
        "type": "object",
        "properties": {"list": {
            "type": "array",
            "items": {"type": "object", "properties": {"name": {"type": "string"}}},
        }},
    });
    let rule = "self.list.all(c, c.name != 'x')";
    let warnings = analyze_rule(rule, &compile_schema(&node), ScopeContext::CrdValidation);
    assert!(
        warnings.iter().any(|w| w.kind != WarningKind::WrongScope),
        "{warnings:?}"
    );
}

fn object(spec: Value) -> Value {
    json!({
        "apiVersion": "aspen.dev/v1alpha1",
        "kind": "AspenCluster",
        "metadata": {"name": "kv", "namespace": "apps"},
        "spec": spec,
    })
}

fn base() -> Value {
    json!({"replicas": 3, "storage": {"size": "10Gi"}})
}

fn rejected(spec: Value, old: Option<Value>) -> String {
    let old = old.map(object);
    Validator::new()
        .validate(&schema(), &object(spec), old.as_ref())
        .expect_err("the API server would refuse this")
        .to_string()
}

fn accepted(spec: Value, old: Option<Value>) {
    let old = old.map(object);
    if let Err(errors) = Validator::new().validate(&schema(), &object(spec), old.as_ref()) {
        panic!("refused: {errors}");
    }
}

#[test]
fn cel_refuses_a_database_larger_than_its_volume() {
    let mut spec = base();
    spec["maxDbSize"] = json!("20Gi");
    assert!(rejected(spec.clone(), None).contains("maxDbSize must not exceed storage.size"));
    spec["maxDbSize"] = json!("5Gi");
    accepted(spec.clone(), None);
    spec["maxDbSize"] = json!(1_000_000);
    accepted(spec, None);
}

#[test]
fn cel_keeps_storage_immutable() {
    let mut changed = base();
    changed["storage"]["storageClassName"] = json!("fast");
    assert!(rejected(changed, Some(base())).contains("storage is immutable"));
    let mut grown = base();
    grown["storage"]["size"] = json!("20Gi");
    assert!(rejected(grown, Some(base())).contains("storage is immutable"));
    let mut scaled = base();
    scaled["replicas"] = json!(5);
    accepted(scaled, Some(base()));
}

#[test]
fn cel_refuses_inconsistent_raft_timing() {
    let mut spec = base();
    spec["raft"] =
        json!({"heartbeatMs": 500, "electionTimeoutMinMs": 400, "electionTimeoutMaxMs": 800});
    assert!(
        rejected(spec.clone(), None).contains("heartbeatMs must be below electionTimeoutMinMs")
    );
    spec["raft"] =
        json!({"heartbeatMs": 100, "electionTimeoutMinMs": 900, "electionTimeoutMaxMs": 800});
    assert!(
        rejected(spec, None).contains("electionTimeoutMinMs must be below electionTimeoutMaxMs")
    );
}

#[test]
fn cel_reserves_the_nodes_names_and_labels() {
    let mut spec = base();
    spec["podTemplate"] = json!({"containers": [{"name": "aspen", "image": "x"}]});
    assert!(rejected(spec.clone(), None).contains("reserved for the node"));
    spec["podTemplate"] = json!({"volumes": [{"name": "data", "emptyDir": {}}]});
    assert!(rejected(spec.clone(), None).contains("reserved for the node"));
    spec["podTemplate"] = json!({"labels": {"app.kubernetes.io/instance": "x"}});
    assert!(rejected(spec.clone(), None).contains("set by the operator"));
    spec["podTemplate"] =
        json!({"labels": {"team": "a"}, "containers": [{"name": "app", "image": "x"}]});
    accepted(spec, None);
}

#[test]
fn operator_refuses_what_the_schema_cannot_say() {
    let mut spec: AspenClusterSpec = serde_json::from_value(base()).expect("spec");
    spec.validate().expect("valid");
    assert_eq!(spec.max_db_bytes().expect("valid"), 5 << 30);
    spec.replicas = 0;
    assert!(matches!(spec.validate(), Err(SpecError::Replicas(0))));
    spec.replicas = 3;
    spec.max_db_size = Some(Quantity("11Gi".into()));
    assert!(matches!(
        spec.validate(),
        Err(SpecError::MaxDbSizeAboveStorage { .. })
    ));
    spec.max_db_size = None;
    spec.pod_template.containers = vec![
        serde_json::from_value(json!({
            "name": "app", "ports": [{"containerPort": 7001}]
        }))
        .expect("container"),
    ];
    let error = spec.validate().expect_err("port taken");
    assert!(error.to_string().contains("port 7001"), "{error}");
}

#[test]
fn defaults_fill_an_almost_empty_spec() {
    let spec: AspenClusterSpec = serde_json::from_value(base()).expect("spec");
    assert_eq!(spec.image, DEFAULT_IMAGE);
    assert_eq!(spec.raft, RaftSpec::default());
    assert_eq!(spec.pvc_retention.when_scaled, RetentionPolicy::Retain);
    assert_eq!(spec.service.port, CLIENT_PORT);
}

#[test]
fn every_example_is_a_valid_aspen_cluster() {
    let dir = repo_root().join("manifests/examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("manifests/examples exists") {
        let path = entry.expect("readable entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable example");
        let cluster: AspenCluster =
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        cluster
            .spec
            .validate()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let value = serde_json::to_value(&cluster).expect("JSON");
        if let Err(errors) = Validator::new().validate(&schema(), &value, None) {
            panic!("{}: {errors}", path.display());
        }
        seen += 1;
    }
    assert!(
        seen >= 3,
        "expected at least 3 examples in {}",
        dir.display()
    );
}
