//! The controller: watches AspenClusters and what they own; each reconcile
//! observes, asks the planner for one action, records it in status, applies
//! the owned objects, executes the action, and reports status and events.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::runtime::finalizer::{self, Event as Finalized};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Controller, Predicate, WatchStreamExt, predicates, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;

use crate::crd::{AspenCluster, AspenClusterStatus, MemberRole, RetentionPolicy, SpecError};
use crate::membership::{self, Plan, Record};
use crate::metrics::Metrics;
use crate::nodes::{self, NodeAdmin};
use crate::observe::{Observation, observe};
use crate::resources::{self, Names};
use crate::status::{self, operation_from_status};

/// Holds deletion until the retention policy has been applied to volumes.
pub const FINALIZER: &str = "aspen.dev/cleanup";
/// Server-side apply field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = "aspen-operator";
/// Label on every owned object, which the watches select on.
const MANAGED_BY: &str = "app.kubernetes.io/managed-by=aspen-operator";
/// Requeue while work remains: Raft progress raises no Kubernetes event.
const BUSY_REQUEUE: Duration = Duration::from_secs(5);
/// Requeue when converged, to notice failures that raise no event either.
const IDLE_REQUEUE: Duration = Duration::from_secs(60);
/// Retry delay after the first failure; it doubles up to `MAX_BACKOFF`.
const BASE_BACKOFF: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("invalid spec: {0}")]
    Spec(#[from] SpecError),
    #[error("{0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
    #[error("AspenCluster has no namespace; it is a namespaced resource")]
    NotNamespaced,
    #[error("{0}")]
    Action(String),
}

impl Error {
    /// Label of the failures metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Spec(_) => "spec",
            Error::NotNamespaced => "namespace",
            Error::Action(_) => "action",
            Error::Finalizer(inner) => match inner.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e.reason(),
                _ => "finalizer",
            },
        }
    }
}

/// What every reconcile shares.
pub struct Context<A> {
    pub client: Client,
    pub admin: A,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// Consecutive failures per cluster, for the error policy's backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl<A> fmt::Debug for Context<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

impl<A: NodeAdmin> Context<A> {
    pub fn new(client: Client, admin: A, metrics: Arc<Metrics>, recorder: Recorder) -> Self {
        Context {
            client,
            admin,
            metrics,
            recorder,
            failures: Mutex::new(HashMap::new()),
        }
    }

    async fn publish(&self, cluster: &AspenCluster, type_: EventType, reason: &str, note: String) {
        let event = KubeEvent {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: reason.to_owned(),
            secondary: None,
        };
        if let Err(error) = self
            .recorder
            .publish(&event, &cluster.object_ref(&()))
            .await
        {
            // Events are for people; losing one must not fail the reconcile.
            tracing::warn!(%error, reason, "could not publish event");
        }
    }
}

fn key(cluster: &AspenCluster) -> String {
    format!(
        "{}/{}",
        cluster.namespace().unwrap_or_default(),
        cluster.name_any()
    )
}

/// Watch AspenClusters (in `namespace`, or everywhere) until the stream ends.
pub async fn run<A: NodeAdmin>(context: Arc<Context<A>>, namespace: Option<&str>) {
    let client = context.client.clone();
    fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let owned = watcher::Config::default().labels(MANAGED_BY);
    // Only spec changes (a new generation; marking for deletion bumps it too)
    // and finalizer changes trigger a reconcile: the operator's own status
    // patches, which change on almost every pass (member lag), must not, or
    // it would reconcile in a loop instead of on its requeue timer.
    let (reader, writer) = reflector::store();
    let clusters = watcher(
        api::<AspenCluster>(&client, namespace),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .reflect(writer)
    .applied_objects()
    .predicate_filter(
        predicates::generation.combine(predicates::finalizers),
        Default::default(),
    );
    Controller::for_stream(clusters, reader)
        .owns(api::<StatefulSet>(&client, namespace), owned.clone())
        .owns(api::<Service>(&client, namespace), owned.clone())
        .owns(api::<ConfigMap>(&client, namespace), owned.clone())
        .owns(
            api::<PodDisruptionBudget>(&client, namespace),
            owned.clone(),
        )
        // Pods are owned by the StatefulSet, not by the cluster: map by label.
        .watches(api::<Pod>(&client, namespace), owned, |pod| {
            let cluster = pod.labels().get("app.kubernetes.io/instance")?.clone();
            Some(ObjectRef::<AspenCluster>::new(&cluster).within(&pod.namespace()?))
        })
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(%object, "reconciled"),
                Err(error) => tracing::warn!(%error, "reconcile failed"),
            }
        })
        .await;
}

/// One reconcile of one cluster.
#[tracing::instrument(skip_all, fields(cluster = %key(&cluster)))]
pub async fn reconcile<A: NodeAdmin>(
    cluster: Arc<AspenCluster>,
    context: Arc<Context<A>>,
) -> Result<Action, Error> {
    let _timer = context.metrics.reconcile_duration.start_timer();
    context.metrics.reconciles.inc();
    let namespace = cluster.namespace().ok_or(Error::NotNamespaced)?;
    let clusters: Api<AspenCluster> = Api::namespaced(context.client.clone(), &namespace);
    let cluster_key = key(&cluster);
    let action = finalizer::finalizer(&clusters, FINALIZER, cluster, |event| async {
        match event {
            Finalized::Apply(cluster) => apply(&cluster, &context).await,
            Finalized::Cleanup(cluster) => cleanup(&cluster, &context).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))?;
    context
        .failures
        .lock()
        .expect("failure counts are never poisoned")
        .remove(&cluster_key);
    Ok(action)
}

/// Retry with exponential backoff per cluster.
pub fn error_policy<A: NodeAdmin>(
    cluster: Arc<AspenCluster>,
    error: &Error,
    context: Arc<Context<A>>,
) -> Action {
    context
        .metrics
        .failures
        .with_label_values(&[error.reason()])
        .inc();
    let mut failures = context
        .failures
        .lock()
        .expect("failure counts are never poisoned");
    let count = failures.entry(key(&cluster)).or_insert(0);
    *count = count.saturating_add(1);
    let delay = BASE_BACKOFF
        .saturating_mul(1 << (*count - 1).min(10))
        .min(MAX_BACKOFF);
    tracing::warn!(cluster = %key(&cluster), %error, failures = *count, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

async fn patch_status<A>(
    context: &Context<A>,
    cluster: &AspenCluster,
    status: &AspenClusterStatus,
) -> Result<(), kube::Error> {
    #[derive(Serialize, Debug)]
    #[serde(rename_all = "camelCase")]
    struct StatusPatch<'a> {
        api_version: &'static str,
        kind: &'static str,
        status: &'a AspenClusterStatus,
    }
    let api: Api<AspenCluster> = Api::namespaced(
        context.client.clone(),
        &cluster.namespace().unwrap_or_default(),
    );
    let patch = StatusPatch {
        api_version: "aspen.dev/v1alpha1",
        kind: "AspenCluster",
        status,
    };
    api.patch_status(
        &cluster.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

async fn server_side_apply<K>(
    client: &Client,
    namespace: &str,
    object: &K,
) -> Result<(), kube::Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Serialize
        + Clone
        + fmt::Debug
        + serde::de::DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    api.patch(
        &object.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await?;
    Ok(())
}

async fn apply<A: NodeAdmin>(
    cluster: &AspenCluster,
    context: &Context<A>,
) -> Result<Action, Error> {
    if let Err(error) = cluster.spec.validate() {
        let message = error.to_string();
        context
            .publish(cluster, EventType::Warning, "InvalidSpec", message.clone())
            .await;
        let status = status::invalid_spec(cluster, &message, &now());
        patch_status(context, cluster, &status).await?;
        return Err(error.into());
    }
    let previous = cluster.status.clone().unwrap_or_default();
    let record = Record {
        bootstrapped: previous.bootstrapped,
        operation: previous.operation.as_ref().and_then(operation_from_status),
    };
    let observation = observe(&context.client, &context.admin, cluster, record).await?;
    let plan = membership::plan(&observation.observed);
    let now = now();
    match &plan.action {
        membership::Action::Wait(_) | membership::Action::Converged => {
            tracing::debug!(action = ?plan.action, "planned");
        }
        action => tracing::info!(?action, "planned"),
    }

    if plan.record != record {
        if let Some(old) = record
            .operation
            .filter(|op| plan.record.operation != Some(*op))
        {
            let (reason, verb) = if old.is_done(&observation.observed) {
                ("OperationCompleted", "completed")
            } else {
                (
                    "OperationAbandoned",
                    "abandoned: no longer needed or no longer possible",
                )
            };
            context
                .publish(cluster, EventType::Normal, reason, format!("{old}: {verb}"))
                .await;
        }
        // Written before the action runs, so that an operator that restarts
        // mid-change knows what may be in flight.
        let recorded = AspenClusterStatus {
            bootstrapped: plan.record.bootstrapped,
            operation: plan
                .record
                .operation
                .map(|op| status::operation_status(op, previous.operation.as_ref(), &now)),
            ..previous.clone()
        };
        patch_status(context, cluster, &recorded).await?;
    }

    apply_owned(cluster, context, &observation, &plan).await?;
    let failure = execute(cluster, context, &observation, &plan).await;

    let status = status::build(cluster, &observation, &plan, failure.as_deref(), &now);
    if cluster.status.as_ref() != Some(&status) {
        patch_status(context, cluster, &status).await?;
    }
    let names = Names::of(cluster);
    context.metrics.set_cluster(
        &names.namespace,
        &names.cluster,
        i64::from(status.replicas),
        i64::from(status.ready_replicas),
    );
    match (failure, &plan.action) {
        (Some(error), _) => Err(Error::Action(error)),
        (None, membership::Action::Converged) => Ok(Action::requeue(IDLE_REQUEUE)),
        (None, _) => Ok(Action::requeue(BUSY_REQUEUE)),
    }
}

fn now() -> Time {
    Time(Timestamp::now())
}

/// Server-side apply every owned object; the StatefulSet at the size the
/// planner wants (its current size unless the action is to scale).
async fn apply_owned<A>(
    cluster: &AspenCluster,
    context: &Context<A>,
    observation: &Observation,
    plan: &Plan,
) -> Result<(), Error> {
    let names = Names::of(cluster);
    let observed = &observation.observed;
    let client = &context.client;
    let config = resources::config_map(cluster)?;
    let hash = resources::config_hash(&config);
    // Sized from the voters Raft has, never from the spec: while a cluster
    // grows, its new pods are learners and count for nothing in a quorum.
    // Without a leader to ask, the voters last recorded in status.
    let voters = membership::leader(observed).map_or_else(
        || {
            cluster.status.as_ref().map_or(0, |s| {
                s.members
                    .iter()
                    .filter(|m| m.role == MemberRole::Voter)
                    .count()
            })
        },
        |l| l.membership.voters.len(),
    );
    let budget_voters = u32::try_from(voters).unwrap_or(u32::MAX);
    let replicas = match plan.action {
        membership::Action::ScaleStatefulSet { replicas } => replicas,
        _ => observed.statefulset_replicas,
    };
    server_side_apply(client, &names.namespace, &config).await?;
    server_side_apply(
        client,
        &names.namespace,
        &resources::headless_service(cluster),
    )
    .await?;
    server_side_apply(
        client,
        &names.namespace,
        &resources::client_service(cluster),
    )
    .await?;
    server_side_apply(
        client,
        &names.namespace,
        &resources::pod_disruption_budget(cluster, budget_voters),
    )
    .await?;
    server_side_apply(
        client,
        &names.namespace,
        &resources::stateful_set(cluster, replicas, &hash),
    )
    .await?;
    Ok(())
}

/// Execute the planned action; the error text when it failed.
async fn execute<A: NodeAdmin>(
    cluster: &AspenCluster,
    context: &Context<A>,
    observation: &Observation,
    plan: &Plan,
) -> Option<String> {
    let names = Names::of(cluster);
    match plan.action {
        membership::Action::Membership(op) => {
            let result =
                nodes::change_membership(&context.admin, &names, &observation.observed, op).await;
            let label = if result.is_ok() { "ok" } else { "error" };
            let namespace = cluster.namespace().unwrap_or_default();
            context
                .metrics
                .membership_changes
                .with_label_values(&[namespace.as_str(), &cluster.name_any(), op.kind(), label])
                .inc();
            match result {
                Ok(()) => {
                    context
                        .publish(cluster, EventType::Normal, op.kind(), op.to_string())
                        .await;
                    None
                }
                Err(error) => {
                    let message = format!("{op}: {error}");
                    context
                        .publish(
                            cluster,
                            EventType::Warning,
                            "MembershipChangeFailed",
                            message.clone(),
                        )
                        .await;
                    Some(message)
                }
            }
        }
        membership::Action::ScaleStatefulSet { replicas } => {
            let note = format!(
                "scaled StatefulSet {} from {} to {replicas} pods",
                names.statefulset(),
                observation.observed.statefulset_replicas
            );
            context
                .publish(cluster, EventType::Normal, "Scaled", note)
                .await;
            None
        }
        membership::Action::DeleteVolume { ordinal, why } => {
            let claims: Api<PersistentVolumeClaim> =
                Api::namespaced(context.client.clone(), &names.namespace);
            let claim = names.volume_claim(ordinal);
            match claims.delete(&claim, &DeleteParams::default()).await {
                Ok(_) => {
                    let note = match why {
                        membership::VolumeDeletion::Stale => format!(
                            "deleted {claim}: it holds data of a former member and its ordinal joins again"
                        ),
                        membership::VolumeDeletion::Policy => {
                            format!("deleted {claim}: pvcRetention.whenScaled is Delete")
                        }
                    };
                    context
                        .publish(cluster, EventType::Normal, "VolumeDeleted", note)
                        .await;
                    None
                }
                Err(kube::Error::Api(status)) if status.code == 404 => None,
                Err(error) => {
                    let message = format!("deleting {claim}: {error}");
                    context
                        .publish(
                            cluster,
                            EventType::Warning,
                            "VolumeDeletionFailed",
                            message.clone(),
                        )
                        .await;
                    Some(message)
                }
            }
        }
        membership::Action::Wait(_) | membership::Action::Converged => None,
    }
}

/// On deletion: apply `pvcRetention.whenDeleted`. Owned objects go with the
/// AspenCluster through their owner references.
async fn cleanup<A: NodeAdmin>(
    cluster: &AspenCluster,
    context: &Context<A>,
) -> Result<Action, Error> {
    let names = Names::of(cluster);
    match cluster.spec.pvc_retention.when_deleted {
        RetentionPolicy::Delete => {
            let claims: Api<PersistentVolumeClaim> =
                Api::namespaced(context.client.clone(), &names.namespace);
            let selector = ListParams::default().labels(&resources::selector(&names));
            let mut deleted = Vec::new();
            for claim in claims.list(&selector).await?.items {
                let name = claim.name_any();
                match claims.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => deleted.push(name),
                    Err(kube::Error::Api(status)) if status.code == 404 => {}
                    Err(error) => return Err(error.into()),
                }
            }
            let note = format!("deleted volumes: {}", deleted.join(", "));
            context
                .publish(cluster, EventType::Normal, "VolumesDeleted", note)
                .await;
        }
        RetentionPolicy::Retain => {
            let note = format!(
                "volumes retained; an AspenCluster named {} in {} adopts them",
                names.cluster, names.namespace
            );
            context
                .publish(cluster, EventType::Normal, "VolumesRetained", note)
                .await;
        }
    }
    context
        .metrics
        .forget_cluster(&names.namespace, &names.cluster);
    Ok(Action::await_change())
}

#[cfg(test)]
#[path = "controller_harness.rs"]
mod harness;
#[cfg(test)]
#[path = "controller_tests.rs"]
mod tests;
