//! The status an `AspenCluster` reports, as a pure function of what was
//! observed, what the planner decided and how its execution went: phase,
//! members as the leader sees them, and the Available, Progressing and
//! Degraded conditions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{
    AspenCluster, AspenClusterStatus, MemberRole, MemberStatus, OperationStatus, Phase,
};
use crate::membership::{self, Action, Operation, Plan, VolumeDeletion, ordinal_of, quorum};
use crate::observe::Observation;
use crate::resources::{self, Names};

pub const AVAILABLE: &str = "Available";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";

/// The operation in status, as the planner's record.
pub fn operation_from_status(status: &OperationStatus) -> Option<Operation> {
    let node_id = status.node_id;
    Some(match status.kind.as_str() {
        "Initialize" => Operation::Initialize { node_id },
        "AddLearner" => Operation::AddLearner { node_id },
        "Promote" => Operation::Promote { node_id },
        "TransferLeadership" => Operation::TransferLeadership {
            from: status.from_node_id?,
            to: node_id,
        },
        "RemoveVoter" => Operation::RemoveVoter { node_id },
        "RemoveLearner" => Operation::RemoveLearner { node_id },
        _ => return None,
    })
}

/// The planner's record as status, keeping the start time of an operation
/// that was already recorded.
pub fn operation_status(
    operation: Operation,
    previous: Option<&OperationStatus>,
    now: &Time,
) -> OperationStatus {
    let started_at = previous
        .filter(|p| operation_from_status(p) == Some(operation))
        .map_or_else(|| now.clone(), |p| p.started_at.clone());
    OperationStatus {
        kind: operation.kind().to_owned(),
        node_id: operation.node_id(),
        from_node_id: match operation {
            Operation::TransferLeadership { from, .. } => Some(from),
            _ => None,
        },
        started_at,
    }
}

/// Members as the leader sees them, or as the freshest node does when there
/// is no leader (then none counts as healthy).
fn members(names: &Names, observation: &Observation) -> Vec<MemberStatus> {
    let observed = &observation.observed;
    let leader = membership::leader(observed);
    let source = match leader {
        Some(leader) => observation.statuses.get(&ordinal_of(leader.node_id)),
        None => observation
            .statuses
            .values()
            .filter(|s| s.initialized)
            .max_by_key(|s| (s.membership.log_index, s.term)),
    };
    let Some(source) = source else {
        return Vec::new();
    };
    let healthy = |id: u64| {
        leader.is_some_and(|l| {
            id == l.node_id
                || observed
                    .nodes
                    .get(&ordinal_of(id))
                    .is_some_and(|n| n.initialized && !n.removed && n.leader_id == Some(l.node_id))
        })
    };
    let lag = |id: u64| {
        source
            .replication
            .iter()
            .flatten()
            .find(|p| p.node_id == id)
            .map(|p| p.lag)
    };
    let mut members: Vec<MemberStatus> = source
        .membership
        .voters
        .iter()
        .map(|m| (m, MemberRole::Voter))
        .chain(
            source
                .membership
                .learners
                .iter()
                .map(|m| (m, MemberRole::Learner)),
        )
        .map(|(member, role)| MemberStatus {
            name: names.pod(ordinal_of(member.node_id)),
            node_id: member.node_id,
            address: member.client_addr.clone(),
            role,
            healthy: healthy(member.node_id),
            lag: lag(member.node_id),
        })
        .collect();
    members.sort_by_key(|m| m.node_id);
    members
}

/// A condition, keeping its transition time while its status holds.
fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    previous: &[Condition],
    now: &Time,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_owned();
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_owned(),
        status,
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// The whole status after one reconcile. `failure` is the error of the
/// action executed in it, if any.
pub fn build(
    cluster: &AspenCluster,
    observation: &Observation,
    plan: &Plan,
    failure: Option<&str>,
    now: &Time,
) -> AspenClusterStatus {
    let names = Names::of(cluster);
    let observed = &observation.observed;
    let previous = cluster.status.clone().unwrap_or_default();
    let generation = cluster.metadata.generation;
    let members = members(&names, observation);
    let leader = membership::leader(observed).map(|l| l.node_id);

    let voters: Vec<&MemberStatus> = members
        .iter()
        .filter(|m| m.role == MemberRole::Voter)
        .collect();
    let healthy_voters = voters.iter().filter(|m| m.healthy).count();
    let (available, available_reason, available_message) = match leader {
        _ if !plan.record.bootstrapped => (
            false,
            "NotBootstrapped",
            "the cluster is not initialised yet".to_owned(),
        ),
        None => (false, "NoLeader", "no node reports a leader".to_owned()),
        Some(_) if healthy_voters < quorum(voters.len()) => (
            false,
            "QuorumLost",
            format!("{healthy_voters} of {} voters are healthy", voters.len()),
        ),
        Some(id) => (
            true,
            "QuorumHealthy",
            format!(
                "{healthy_voters} of {} voters are healthy; {} leads",
                voters.len(),
                names.pod(ordinal_of(id))
            ),
        ),
    };

    let (progressing, progressing_reason, progressing_message) = match &plan.action {
        Action::Converged => (false, "Converged", "members match the spec".to_owned()),
        Action::Membership(op) => (true, op.kind(), op.to_string()),
        Action::ScaleStatefulSet { replicas } => (
            true,
            "Scaling",
            format!("scaling the StatefulSet to {replicas} pods"),
        ),
        Action::DeleteVolume { ordinal, why } => (
            true,
            "DeletingVolume",
            format!(
                "deleting {}: {}",
                names.volume_claim(*ordinal),
                match why {
                    VolumeDeletion::Stale => "it holds data of a former member",
                    VolumeDeletion::Policy => "pvcRetention.whenScaled is Delete",
                }
            ),
        ),
        Action::Wait(wait) => (!wait.is_degraded(), wait.reason(), wait.to_string()),
    };

    let unhealthy: Vec<String> = members
        .iter()
        .filter(|m| !m.healthy)
        .map(|m| m.name.clone())
        .collect();
    let (degraded, degraded_reason, degraded_message) = match (&plan.action, failure) {
        (_, Some(error)) => (true, "ActionFailed", error.to_owned()),
        (Action::Wait(wait), None) if wait.is_degraded() => (true, wait.reason(), wait.to_string()),
        _ if leader.is_some() && !unhealthy.is_empty() => (
            true,
            "MembersUnhealthy",
            format!(
                "{} do not answer or do not follow the leader",
                unhealthy.join(", ")
            ),
        ),
        _ => (false, "AsExpected", String::new()),
    };

    let phase = if !plan.record.bootstrapped {
        Phase::Bootstrapping
    } else if !available || degraded {
        Phase::Degraded
    } else if plan.action == Action::Converged {
        Phase::Running
    } else {
        Phase::Scaling
    };

    let conditions = vec![
        condition(
            AVAILABLE,
            available,
            available_reason,
            available_message,
            generation,
            &previous.conditions,
            now,
        ),
        condition(
            PROGRESSING,
            progressing,
            progressing_reason,
            progressing_message,
            generation,
            &previous.conditions,
            now,
        ),
        condition(
            DEGRADED,
            degraded,
            degraded_reason,
            degraded_message,
            generation,
            &previous.conditions,
            now,
        ),
    ];

    AspenClusterStatus {
        observed_generation: generation,
        phase,
        replicas: i32::try_from(members.len()).expect("at most a few members"),
        ready_replicas: i32::try_from(observed.pods.values().filter(|p| p.ready).count())
            .expect("at most a few pods"),
        selector: resources::selector(&names),
        leader: leader.map(|id| names.pod(ordinal_of(id))),
        members,
        conditions,
        bootstrapped: plan.record.bootstrapped,
        operation: plan
            .record
            .operation
            .map(|op| operation_status(op, previous.operation.as_ref(), now)),
    }
}

/// The previous status with a Degraded condition saying why the spec cannot
/// be acted on; nothing else changes until the spec is fixed.
pub fn invalid_spec(cluster: &AspenCluster, message: &str, now: &Time) -> AspenClusterStatus {
    let mut status = cluster.status.clone().unwrap_or_default();
    let degraded = condition(
        DEGRADED,
        true,
        "InvalidSpec",
        message.to_owned(),
        cluster.metadata.generation,
        &status.conditions,
        now,
    );
    status.conditions.retain(|c| c.type_ != DEGRADED);
    status.conditions.push(degraded);
    status.phase = Phase::Degraded;
    status
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).expect("valid time"))
    }

    #[test]
    fn condition_keeps_its_transition_time_while_its_status_holds() {
        let first = condition(
            AVAILABLE,
            true,
            "QuorumHealthy",
            "3 of 3".into(),
            Some(1),
            &[],
            &at(10),
        );
        let again = condition(
            AVAILABLE,
            true,
            "QuorumHealthy",
            "3 of 3".into(),
            Some(1),
            std::slice::from_ref(&first),
            &at(20),
        );
        assert_eq!(again, first, "an unchanged status is not patched again");
        let flipped = condition(
            AVAILABLE,
            false,
            "NoLeader",
            String::new(),
            Some(1),
            &[first],
            &at(30),
        );
        assert_eq!(flipped.last_transition_time, at(30));
    }

    #[test]
    fn recorded_operation_round_trips_and_keeps_its_start() {
        let transfer = Operation::TransferLeadership { from: 3, to: 1 };
        let recorded = operation_status(transfer, None, &at(10));
        assert_eq!(operation_from_status(&recorded), Some(transfer));
        assert_eq!(
            operation_status(transfer, Some(&recorded), &at(20)).started_at,
            at(10)
        );
        let other = Operation::RemoveVoter { node_id: 3 };
        assert_eq!(
            operation_status(other, Some(&recorded), &at(20)).started_at,
            at(20)
        );
        let unknown = OperationStatus {
            kind: "Reboot".into(),
            ..recorded
        };
        assert_eq!(operation_from_status(&unknown), None);
    }
}
