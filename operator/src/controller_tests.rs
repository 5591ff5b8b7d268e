//! Reconciles against the mocked API server and fake nodes of the harness.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::json;

use super::harness::*;
use super::*;

#[tokio::test]
async fn first_reconcile_adds_the_finalizer() {
    let mut h = harness(HashMap::new(), false);
    let mut fresh = cluster(3, None);
    fresh.metadata.finalizers = None;
    let answer = fresh.clone();
    let action = h
        .reconcile(fresh, |mut server| async move {
            let patch = server.finalizer_patch(&answer).await;
            assert_eq!(patch[1]["op"], "add");
            assert_eq!(patch[1]["value"], json!([FINALIZER]));
            server
        })
        .await
        .expect("reconciled");
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn new_cluster_gets_owned_objects_with_owner_references_and_a_status() {
    let mut h = harness(HashMap::new(), false);
    let target = cluster(3, None);
    let status_cluster = target.clone();
    let action = h
        .reconcile(target, |mut server| async move {
            server
                .not_found(&format!("/apis/apps/v1{NS}/statefulsets/kv"))
                .await;
            server.list(&format!("/api/v1{NS}/pods"), vec![]).await;
            server
                .list(&format!("/api/v1{NS}/persistentvolumeclaims"), vec![])
                .await;
            let applied = server.owned_objects().await;
            for object in &applied {
                let owner = &object["metadata"]["ownerReferences"][0];
                assert_eq!(owner["kind"], "AspenCluster");
                assert_eq!(owner["uid"], "uid-7");
                assert_eq!(owner["controller"], true);
            }
            assert_eq!(applied[4]["spec"]["replicas"], 1, "the first pod alone");
            // No voter yet: no voluntary eviction until Raft has some.
            assert_eq!(applied[3]["spec"]["maxUnavailable"], 0, "no voters yet");
            assert_eq!(server.event().await["reason"], "Scaled");
            let status = server.status(&status_cluster).await;
            assert_eq!(status["phase"], "Bootstrapping");
            assert_eq!(status["observedGeneration"], 3);
            assert_eq!(
                status["selector"],
                "app.kubernetes.io/instance=kv,app.kubernetes.io/name=aspen"
            );
            let progressing = status["conditions"]
                .as_array()
                .expect("conditions")
                .iter()
                .find(|c| c["type"] == "Progressing")
                .cloned();
            assert_eq!(progressing.expect("Progressing")["status"], "True");
            server
        })
        .await
        .expect("reconciled");
    assert_eq!(action, Action::requeue(BUSY_REQUEUE));
}

#[tokio::test]
async fn initialization_is_recorded_in_status_before_it_runs() {
    let statuses = HashMap::from([(address(0), node(1, &[]))]);
    let mut h = harness(statuses, false);
    let target = cluster(3, None);
    let status_cluster = target.clone();
    h.reconcile(target, |mut server| async move {
        server.observed(1, 1, 1).await;
        let recorded = server.status(&status_cluster).await;
        assert_eq!(recorded["operation"]["kind"], "Initialize");
        assert_eq!(recorded["operation"]["nodeId"], 1);
        server.owned_objects().await;
        assert_eq!(server.event().await["reason"], "Initialize");
        let status = server.status(&status_cluster).await;
        assert_eq!(status["operation"]["kind"], "Initialize");
        server
    })
    .await
    .expect("reconciled");
    let log = h.log();
    let recorded = log
        .iter()
        .position(|e| e.ends_with("/status"))
        .expect("status patched");
    let init = log
        .iter()
        .position(|e| e.starts_with("init "))
        .expect("init called");
    assert!(recorded < init, "operation recorded before it ran: {log:?}");
    assert_eq!(log[init], format!("init {}", address(0)));
}

#[tokio::test]
async fn converged_cluster_reports_members_and_conditions() {
    let statuses = three_voters();
    let mut h = harness(statuses, false);
    let target = bootstrapped(3);
    let status_cluster = target.clone();
    let action = h
        .reconcile(target, |mut server| async move {
            server.observed(3, 3, 3).await;
            let applied = server.owned_objects().await;
            assert_eq!(applied[4]["spec"]["replicas"], 3);
            let status = server.status(&status_cluster).await;
            assert_eq!(status["phase"], "Running");
            assert_eq!(status["leader"], "kv-0");
            assert_eq!(status["replicas"], 3);
            assert_eq!(status["readyReplicas"], 3);
            let members = status["members"].as_array().expect("members");
            assert_eq!(members.len(), 3);
            assert_eq!(members[2]["name"], "kv-2");
            assert_eq!(members[2]["address"], address(2));
            assert_eq!(members[2]["role"], "Voter");
            assert_eq!(members[2]["healthy"], true);
            assert_eq!(members[2]["lag"], 0);
            let condition = |t: &str| {
                status["conditions"]
                    .as_array()
                    .expect("conditions")
                    .iter()
                    .find(|c| c["type"] == t)
                    .expect("condition")["status"]
                    .clone()
            };
            assert_eq!(condition(status::AVAILABLE), "True");
            assert_eq!(condition(status::PROGRESSING), "False");
            assert_eq!(condition(status::DEGRADED), "False");
            server
        })
        .await
        .expect("reconciled");
    assert_eq!(action, Action::requeue(IDLE_REQUEUE));
    let metrics = h.context.metrics.encode();
    assert!(
        metrics.contains(r#"aspen_operator_cluster_members{cluster="kv",namespace="apps"} 3"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn failed_membership_change_is_reported_and_retried() {
    let mut statuses = three_voters();
    statuses.insert(address(3), node(4, &[1, 2, 3]));
    let mut h = harness(statuses, true);
    let target = bootstrapped(4);
    let status_cluster = target.clone();
    let result = h
        .reconcile(target, |mut server| async move {
            server.observed(4, 4, 4).await;
            assert_eq!(
                server.status(&status_cluster).await["operation"]["kind"],
                "AddLearner"
            );
            server.owned_objects().await;
            let event = server.event().await;
            assert_eq!(
                (event["type"].as_str(), event["reason"].as_str()),
                (Some("Warning"), Some("MembershipChangeFailed"))
            );
            let status = server.status(&status_cluster).await;
            let degraded = status["conditions"]
                .as_array()
                .expect("conditions")
                .iter()
                .find(|c| c["type"] == "Degraded")
                .cloned()
                .expect("Degraded");
            assert_eq!(degraded["status"], "True");
            assert_eq!(degraded["reason"], "ActionFailed");
            assert_eq!(
                status["operation"]["kind"], "AddLearner",
                "kept for the retry"
            );
            server
        })
        .await;
    assert!(matches!(result, Err(Error::Finalizer(_))), "{result:?}");
    assert!(h.log().contains(&format!(
        "add_learner 4 kv-3.kv-peers.apps.svc:7001 via {}",
        address(0)
    )));
    let metrics = h.context.metrics.encode();
    assert!(
        metrics.contains(
            r#"aspen_operator_membership_changes_total{cluster="kv",kind="AddLearner",namespace="apps",result="error"} 1"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn deletion_deletes_volumes_per_policy_then_releases_the_finalizer() {
    let mut h = harness(HashMap::new(), false);
    let mut target = cluster(3, None);
    target.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
    let answer = target.clone();
    let action = h
        .reconcile(target, |mut server| async move {
            server
                .list(
                    &format!("/api/v1{NS}/persistentvolumeclaims"),
                    vec![claim(0), claim(1)],
                )
                .await;
            for ordinal in 0..2 {
                server
                    .answer(
                        "DELETE",
                        &format!("/api/v1{NS}/persistentvolumeclaims/data-kv-{ordinal}"),
                        200,
                        move |_| claim(ordinal),
                    )
                    .await;
            }
            assert_eq!(server.event().await["reason"], "VolumesDeleted");
            let patch = server.finalizer_patch(&answer).await;
            assert_eq!(
                patch[1],
                json!({"op": "remove", "path": "/metadata/finalizers/0"})
            );
            server
        })
        .await
        .expect("cleaned up");
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn deletion_keeps_retained_volumes() {
    let mut h = harness(HashMap::new(), false);
    let mut target = cluster(3, None);
    target.spec.pvc_retention.when_deleted = RetentionPolicy::Retain;
    target.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
    let answer = target.clone();
    h.reconcile(target, |mut server| async move {
        assert_eq!(server.event().await["reason"], "VolumesRetained");
        server.finalizer_patch(&answer).await;
        server
    })
    .await
    .expect("cleaned up");
    assert!(!h.log().iter().any(|e| e.starts_with("DELETE")));
}

#[tokio::test]
async fn api_errors_fail_the_reconcile_and_back_off() {
    let mut h = harness(HashMap::new(), false);
    let target = cluster(3, None);
    let result = h
        .reconcile(target.clone(), |mut server| async move {
            server
                .answer(
                    "GET",
                    &format!("/apis/apps/v1{NS}/statefulsets/kv"),
                    500,
                    |_| status_body(500, "InternalError"),
                )
                .await;
            server
        })
        .await;
    let error = result.expect_err("the API failed");
    assert_eq!(error.reason(), "kube");
    let target = Arc::new(target);
    assert_eq!(
        error_policy(target.clone(), &error, h.context.clone()),
        Action::requeue(BASE_BACKOFF)
    );
    assert_eq!(
        error_policy(target, &error, h.context.clone()),
        Action::requeue(BASE_BACKOFF * 2)
    );
    let metrics = h.context.metrics.encode();
    assert!(
        metrics.contains(r#"aspen_operator_reconcile_failures_total{reason="kube"} 2"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn invalid_spec_is_reported_without_touching_anything() {
    let mut h = harness(HashMap::new(), false);
    let mut target = cluster(3, None);
    target.spec.max_db_size = Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity(
        "2Gi".into(),
    ));
    let status_cluster = target.clone();
    let result = h
        .reconcile(target, |mut server| async move {
            let event = server.event().await;
            assert_eq!(event["reason"], "InvalidSpec");
            let status = server.status(&status_cluster).await;
            assert_eq!(status["phase"], "Degraded");
            assert_eq!(status["conditions"][0]["reason"], "InvalidSpec");
            server
        })
        .await;
    assert_eq!(result.expect_err("invalid").reason(), "spec");
}

#[tokio::test]
async fn volume_of_a_departed_member_is_deleted_per_policy() {
    let statuses = three_voters();
    let mut h = harness(statuses, false);
    let mut target = bootstrapped(3);
    target.spec.pvc_retention.when_scaled = RetentionPolicy::Delete;
    let status_cluster = target.clone();
    h.reconcile(target, |mut server| async move {
        server.observed(3, 3, 5).await;
        server.owned_objects().await;
        server
            .answer(
                "DELETE",
                &format!("/api/v1{NS}/persistentvolumeclaims/data-kv-3"),
                200,
                |_| claim(3),
            )
            .await;
        let event = server.event().await;
        assert_eq!(event["reason"], "VolumeDeleted");
        assert!(
            event["note"]
                .as_str()
                .expect("note")
                .contains("whenScaled is Delete")
        );
        assert_eq!(server.status(&status_cluster).await["phase"], "Scaling");
        server
    })
    .await
    .expect("reconciled");
}
