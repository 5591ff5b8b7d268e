//! What the planner decides: one [`Action`], and the membership
//! [`Operation`]s among them that are recorded before they run.

use std::fmt;

use super::{NodeId, Observed, Ordinal, Record, leader, ordinal_of};

/// A change of Raft membership or leadership: one at a time, recorded first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Initialize { node_id: NodeId },
    AddLearner { node_id: NodeId },
    Promote { node_id: NodeId },
    TransferLeadership { from: NodeId, to: NodeId },
    RemoveVoter { node_id: NodeId },
    RemoveLearner { node_id: NodeId },
}

impl Operation {
    /// The node the operation is about (the new leader for a transfer).
    pub fn node_id(&self) -> NodeId {
        match *self {
            Operation::Initialize { node_id }
            | Operation::AddLearner { node_id }
            | Operation::Promote { node_id }
            | Operation::RemoveVoter { node_id }
            | Operation::RemoveLearner { node_id } => node_id,
            Operation::TransferLeadership { to, .. } => to,
        }
    }

    /// A short PascalCase name, for events, metrics and status.
    pub fn kind(&self) -> &'static str {
        match self {
            Operation::Initialize { .. } => "Initialize",
            Operation::AddLearner { .. } => "AddLearner",
            Operation::Promote { .. } => "Promote",
            Operation::TransferLeadership { .. } => "TransferLeadership",
            Operation::RemoveVoter { .. } => "RemoveVoter",
            Operation::RemoveLearner { .. } => "RemoveLearner",
        }
    }

    /// Whether `observed` shows the operation's effect (as opposed to it
    /// having been abandoned because the spec or the cluster changed).
    pub fn is_done(&self, observed: &Observed) -> bool {
        let Some(leader) = leader(observed) else {
            return matches!(self, Operation::Initialize { node_id }
                if observed.nodes.get(&ordinal_of(*node_id)).is_some_and(|n| n.initialized));
        };
        let m = &leader.membership;
        match *self {
            Operation::Initialize { .. } => true,
            Operation::AddLearner { node_id } => m.contains(node_id),
            Operation::Promote { node_id } => m.voters.contains(&node_id) && !m.joint,
            Operation::TransferLeadership { from, .. } => leader.node_id != from,
            Operation::RemoveVoter { node_id } | Operation::RemoveLearner { node_id } => {
                !m.contains(node_id)
            }
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Operation::Initialize { node_id } => {
                write!(f, "initialize the cluster on node {node_id}")
            }
            Operation::AddLearner { node_id } => write!(f, "add node {node_id} as a learner"),
            Operation::Promote { node_id } => write!(f, "promote node {node_id} to voter"),
            Operation::TransferLeadership { from, to } => {
                write!(f, "transfer leadership from node {from} to node {to}")
            }
            Operation::RemoveVoter { node_id } => write!(f, "remove voter {node_id}"),
            Operation::RemoveLearner { node_id } => write!(f, "remove learner {node_id}"),
        }
    }
}

/// Why a volume is deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VolumeDeletion {
    /// It holds data of a former member and its ordinal is needed again.
    Stale,
    /// Its member left and the retention policy says Delete.
    Policy,
}

/// Why nothing can be done right now. The controller requeues soon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wait {
    /// The pod at `ordinal` exists (or should) but its node has not answered.
    NodeStarting { ordinal: Ordinal },
    /// The pod at `ordinal` is still going away.
    PodTerminating { ordinal: Ordinal },
    /// The cluster is bootstrapped but no node reports being leader.
    NoLeader,
    /// A membership change is uncommitted or joint.
    ChangeInFlight,
    /// A learner must catch up before it is promoted.
    CatchingUp { node_id: NodeId, lag: Option<u64> },
    /// Changing `node_id` would leave fewer healthy voters than a quorum.
    QuorumAtRisk { node_id: NodeId },
    /// The leader must leave but no other voter is healthy and caught up.
    NoTransferTarget { leader: NodeId },
    /// A node below a member holds data of a former membership; dropping its
    /// pod would drop the members above it too, so a human must decide.
    StaleMember { ordinal: Ordinal },
    /// Volumes exist whose data no reachable member can vouch for, so
    /// initialising a new cluster could split it from an old one.
    UnknownVolumes { ordinals: Vec<Ordinal> },
}

impl Wait {
    /// Whether the wait needs attention (as opposed to normal progress).
    pub fn is_degraded(&self) -> bool {
        matches!(
            self,
            Wait::NoLeader
                | Wait::QuorumAtRisk { .. }
                | Wait::NoTransferTarget { .. }
                | Wait::StaleMember { .. }
                | Wait::UnknownVolumes { .. }
        )
    }

    /// A PascalCase reason, for conditions.
    pub fn reason(&self) -> &'static str {
        match self {
            Wait::NodeStarting { .. } => "NodeStarting",
            Wait::PodTerminating { .. } => "PodTerminating",
            Wait::NoLeader => "NoLeader",
            Wait::ChangeInFlight => "ChangeInFlight",
            Wait::CatchingUp { .. } => "CatchingUp",
            Wait::QuorumAtRisk { .. } => "QuorumAtRisk",
            Wait::NoTransferTarget { .. } => "NoTransferTarget",
            Wait::StaleMember { .. } => "StaleMember",
            Wait::UnknownVolumes { .. } => "UnknownVolumes",
        }
    }
}

impl fmt::Display for Wait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Wait::NodeStarting { ordinal } => {
                write!(f, "waiting for the node at ordinal {ordinal} to answer")
            }
            Wait::PodTerminating { ordinal } => {
                write!(f, "waiting for the pod at ordinal {ordinal} to terminate")
            }
            Wait::NoLeader => write!(
                f,
                "no node reports a leader; waiting for an election (check that a quorum of voters runs)"
            ),
            Wait::ChangeInFlight => write!(
                f,
                "a membership change is in flight; waiting for it to commit"
            ),
            Wait::CatchingUp {
                node_id,
                lag: Some(lag),
            } => write!(
                f,
                "learner {node_id} is {lag} entries behind; waiting for it to catch up"
            ),
            Wait::CatchingUp { node_id, lag: None } => write!(
                f,
                "learner {node_id} has not replicated yet; waiting for it to catch up"
            ),
            Wait::QuorumAtRisk { node_id } => write!(
                f,
                "changing node {node_id} now would leave fewer healthy voters than a quorum; waiting for members to recover"
            ),
            Wait::NoTransferTarget { leader } => write!(
                f,
                "leader {leader} must leave but no remaining voter is healthy and caught up"
            ),
            Wait::StaleMember { ordinal } => write!(
                f,
                "the node at ordinal {ordinal} holds data of a former membership below a live member; delete its pod and volume to let it rejoin"
            ),
            Wait::UnknownVolumes { ordinals } => write!(
                f,
                "volumes at ordinals {ordinals:?} hold data of a previous cluster while ordinal 0 is empty; delete them to initialise a new cluster"
            ),
        }
    }
}

/// The one next step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Change membership or leadership; recorded in status first.
    Membership(Operation),
    /// Set the StatefulSet's replicas (start or stop the top processes).
    ScaleStatefulSet {
        replicas: u32,
    },
    /// Delete the volume at `ordinal`; its pod is gone.
    DeleteVolume {
        ordinal: Ordinal,
        why: VolumeDeletion,
    },
    Wait(Wait),
    /// The cluster matches the spec.
    Converged,
}

/// The next action and the record to persist before executing it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub action: Action,
    pub record: Record,
}
