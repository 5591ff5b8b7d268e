//! What the controller reads before planning: the StatefulSet, the pods and
//! PVCs of a cluster, and the status of every node whose pod runs, turned
//! into the planner's [`Observed`].

use std::collections::{BTreeMap, BTreeSet};

use aspen_node::api::NodeStatus;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::ListParams;
use kube::{Api, Client};

use crate::crd::AspenCluster;
use crate::membership::{Observed, Ordinal, PodState, Record};
use crate::nodes::{self, NodeAdmin};
use crate::resources::{self, Names};

/// The planner's input plus the raw node answers, which status reports.
#[derive(Debug, Clone)]
pub struct Observation {
    pub observed: Observed,
    pub statuses: BTreeMap<Ordinal, NodeStatus>,
}

/// Read everything about `cluster`. Kubernetes API errors fail the read; a
/// node that does not answer is simply absent from the result.
pub async fn observe<A: NodeAdmin>(
    client: &Client,
    admin: &A,
    cluster: &AspenCluster,
    record: Record,
) -> Result<Observation, kube::Error> {
    let names = Names::of(cluster);
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &names.namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &names.namespace);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &names.namespace);
    let selector = ListParams::default().labels(&resources::selector(&names));

    let statefulset = statefulsets.get_opt(&names.statefulset()).await?;
    let statefulset_replicas = statefulset
        .as_ref()
        .and_then(|s| s.spec.as_ref()?.replicas)
        .and_then(|r| u32::try_from(r).ok())
        .unwrap_or(0);
    let pods: BTreeMap<Ordinal, PodState> = pods
        .list(&selector)
        .await?
        .items
        .iter()
        .filter_map(|pod| {
            Some((
                names.pod_ordinal(pod.metadata.name.as_deref()?)?,
                pod_state(pod),
            ))
        })
        .collect();
    let volumes: BTreeSet<Ordinal> = claims
        .list(&selector)
        .await?
        .items
        .iter()
        .filter_map(|claim| names.volume_claim_ordinal(claim.metadata.name.as_deref()?))
        .collect();

    let running: Vec<Ordinal> = pods
        .iter()
        .filter(|(_, state)| state.running)
        .map(|(ordinal, _)| *ordinal)
        .collect();
    let statuses = nodes::statuses(admin, &names, running).await;

    let observed = Observed {
        desired_replicas: cluster
            .spec
            .desired_replicas()
            .expect("the spec was validated before observing"),
        statefulset_replicas,
        pods,
        nodes: statuses.iter().map(|(o, s)| (*o, nodes::view(s))).collect(),
        volumes,
        when_scaled: cluster.spec.pvc_retention.when_scaled.into(),
        record,
    };
    Ok(Observation { observed, statuses })
}

/// A pod is running when it is not being deleted and its phase says so.
fn pod_state(pod: &Pod) -> PodState {
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let status = pod.status.as_ref();
    let running = !terminating && status.and_then(|s| s.phase.as_deref()) == Some("Running");
    let ready = running
        && status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    PodState { running, ready }
}
