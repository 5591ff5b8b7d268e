//! The membership planner: from the desired size and what is observed (pods,
//! volumes, each node's Raft status, the operation recorded in status) to
//! exactly one next [`Action`].
//!
//! Pure: no I/O, no clock, no Kubernetes types. The controller feeds it what it
//! read from the API server and the nodes; local mode feeds it processes and
//! data directories. Both then execute the one action and ask again.
//!
//! The rules, in the order they are checked:
//! 1. A cluster is initialised once, on ordinal 0, and never again: not when
//!    any node already holds data, nor while volumes of unknown members exist.
//! 2. Nothing changes while a membership change is in flight (uncommitted or
//!    joint); a committed joint change recorded in status is driven to its end.
//! 3. Every member gets its pod back first (the StatefulSet was shrunk
//!    by someone else, or the cluster is adopted from retained volumes).
//! 4. A voter whose volume came back empty is removed, then rejoins as new.
//! 5. Members above the desired size leave from the highest ordinal down,
//!    because a StatefulSet can only drop its highest pods: learners are always
//!    there (members join one at a time in ordinal order), and a leader that
//!    must leave first hands leadership to a member that stays. Only then does
//!    the StatefulSet shrink, over ordinals that are no longer members.
//!    When no voter would stay, the pods below the desired size join first.
//! 6. A node with data from a former membership never rejoins: its pod is
//!    dropped and its volume wiped before the ordinal is used again.
//! 7. Volumes above the StatefulSet are wiped when their ordinal is needed
//!    again, and otherwise follow the retention policy.
//! 8. Scale-out adds one pod, which joins as a learner and is promoted once
//!    caught up, before the next pod is created.
//!
//! No voter change may leave fewer healthy voters than a quorum of either
//! the current or the resulting configuration.

use std::collections::{BTreeMap, BTreeSet};

pub use action::{Action, Operation, Plan, VolumeDeletion, Wait};

mod action;
#[cfg(test)]
mod model;
#[cfg(test)]
mod tests;

pub type NodeId = u64;
/// A pod's position in the StatefulSet: node id = ordinal + 1.
pub type Ordinal = u32;

/// The largest cluster the operator manages (the CRD's `replicas` maximum).
pub const MAX_REPLICAS: u32 = 9;

/// A learner is promoted, and a voter is handed leadership, only when it is at
/// most this many log entries behind the leader: a new voter that is far
/// behind cannot help commit, so promoting it would only raise the quorum.
pub const CAUGHT_UP_MAX_LAG: u64 = 100;

/// Node id of the pod at `ordinal`: ids start at 1 because openraft reserves
/// nothing but users read "node 0" as "unset".
pub fn node_id_of(ordinal: Ordinal) -> NodeId {
    u64::from(ordinal) + 1
}

/// Ordinal of the pod that runs `node_id`.
pub fn ordinal_of(node_id: NodeId) -> Ordinal {
    assert!(node_id >= 1, "node ids start at 1");
    Ordinal::try_from(node_id - 1).expect("node ids fit the ordinal range")
}

/// Votes needed to commit in a configuration of `voters` voters.
pub fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

/// What happens to the volume of a member that left.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Retention {
    #[default]
    Retain,
    Delete,
}

/// A pod (or local process) at one ordinal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodState {
    pub running: bool,
    pub ready: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
}

/// A Raft configuration as node ids.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    /// During a joint change: the union of both voter sets.
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
    pub joint: bool,
    /// Log index of the entry that set this configuration.
    pub log_index: Option<u64>,
}

impl Membership {
    pub fn contains(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }

    fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(self.learners.iter()).copied()
    }
}

/// One node's answer to a status request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    pub node_id: NodeId,
    pub role: Role,
    pub term: u64,
    pub leader_id: Option<NodeId>,
    /// The node holds Raft state (it was initialised or joined a cluster).
    pub initialized: bool,
    /// The node knows it was removed from the cluster.
    pub removed: bool,
    pub membership: Membership,
    pub committed_index: Option<u64>,
    /// On the leader: how many entries each other member is behind.
    pub lag: BTreeMap<NodeId, u64>,
}

impl NodeView {
    /// Holds state of some cluster configuration, current or former.
    fn has_data(&self) -> bool {
        self.initialized || self.removed
    }
}

/// What the status subresource (or local mode's state file) remembers between
/// runs, written before the action it describes is executed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// The cluster was initialised once; it is never initialised again.
    pub bootstrapped: bool,
    /// The membership change being executed.
    pub operation: Option<Operation>,
}

/// Everything the planner looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// From the spec, never from what runs.
    pub desired_replicas: u32,
    /// The StatefulSet's replicas (0 when it does not exist yet).
    pub statefulset_replicas: u32,
    /// Pods that exist, by ordinal (including terminating ones).
    pub pods: BTreeMap<Ordinal, PodState>,
    /// Nodes that answered a status request, by ordinal.
    pub nodes: BTreeMap<Ordinal, NodeView>,
    /// Ordinals that have a volume (PVC or data directory).
    pub volumes: BTreeSet<Ordinal>,
    pub when_scaled: Retention,
    pub record: Record,
}

/// Decide the next step. Call again after executing it.
pub fn plan(observed: &Observed) -> Plan {
    assert!(
        (1..=MAX_REPLICAS).contains(&observed.desired_replicas),
        "desired replicas {} outside 1..={MAX_REPLICAS}: validate the spec first",
        observed.desired_replicas
    );
    let bootstrapped =
        observed.record.bootstrapped || observed.nodes.values().any(NodeView::has_data);
    let action = if !bootstrapped {
        bootstrap(observed)
    } else if let Some(leader) = leader(observed) {
        with_leader(observed, leader)
    } else {
        without_leader(observed)
    };
    // Until a leader shows a settled configuration, nobody can tell whether
    // the recorded operation took effect, so the record stays.
    let settled =
        bootstrapped && leader(observed).is_some_and(|l| !is_uncommitted(l) && !l.membership.joint);
    let operation = match &action {
        Action::Membership(op) => Some(*op),
        _ if settled => None,
        _ => observed.record.operation,
    };
    Plan {
        action,
        record: Record {
            bootstrapped,
            operation,
        },
    }
}

/// The node that leads the highest term, if any node says it leads.
pub fn leader(observed: &Observed) -> Option<&NodeView> {
    observed
        .nodes
        .values()
        .filter(|n| n.role == Role::Leader && n.initialized && !n.removed)
        .max_by_key(|n| n.term)
}

fn bootstrap(observed: &Observed) -> Action {
    if observed.statefulset_replicas == 0 {
        return Action::ScaleStatefulSet { replicas: 1 };
    }
    if !observed.nodes.contains_key(&0) {
        return Action::Wait(Wait::NodeStarting { ordinal: 0 });
    }
    // Only volumes whose node answered "empty" are known not to belong to an
    // older cluster of the same name.
    let unknown: Vec<Ordinal> = observed
        .volumes
        .iter()
        .copied()
        .filter(|&o| o != 0 && !observed.nodes.contains_key(&o))
        .collect();
    if !unknown.is_empty() {
        return Action::Wait(Wait::UnknownVolumes { ordinals: unknown });
    }
    Action::Membership(Operation::Initialize { node_id: 1 })
}

fn without_leader(observed: &Observed) -> Action {
    // Restoring pods is harmless, so the freshest configuration any node
    // knows is good enough to decide which pods members need.
    let known = observed
        .nodes
        .values()
        .filter(|n| n.initialized)
        .max_by_key(|n| (n.membership.log_index, n.term));
    if let Some(view) = known {
        if let Some(action) = restore_member_pods(observed, &view.membership) {
            return action;
        }
    } else {
        // No node answers with data, so no configuration is known: start the
        // pods the spec wants that have volumes (at least ordinal 0), which
        // will tell. A volume of a former member only brings up a node that
        // cannot rejoin by itself and is retired once a leader is known.
        let wanted = observed
            .volumes
            .iter()
            .filter(|&&o| o < observed.desired_replicas)
            .map(|&o| o + 1)
            .max()
            .unwrap_or(1)
            .max(1);
        if wanted > observed.statefulset_replicas {
            return Action::ScaleStatefulSet { replicas: wanted };
        }
    }
    Action::Wait(Wait::NoLeader)
}

fn restore_member_pods(observed: &Observed, m: &Membership) -> Option<Action> {
    let needed = m.members().map(|id| ordinal_of(id) + 1).max()?;
    (needed > observed.statefulset_replicas).then_some(Action::ScaleStatefulSet {
        replicas: needed.min(MAX_REPLICAS),
    })
}

/// The leader's configuration is not committed yet.
fn is_uncommitted(leader: &NodeView) -> bool {
    match (leader.membership.log_index, leader.committed_index) {
        (Some(set_at), Some(committed)) => set_at > committed,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

fn with_leader(observed: &Observed, leader: &NodeView) -> Action {
    let m = &leader.membership;
    if is_uncommitted(leader) {
        return Action::Wait(Wait::ChangeInFlight);
    }
    if m.joint {
        // A committed joint configuration is only left behind when the call
        // that started it was cut short; repeating it reaches the final one.
        return match observed.record.operation {
            Some(op @ (Operation::Promote { .. } | Operation::RemoveVoter { .. })) => {
                Action::Membership(op)
            }
            _ => Action::Wait(Wait::ChangeInFlight),
        };
    }
    let desired = observed.desired_replicas;
    let health = Health { observed, leader };
    if let Some(action) = restore_member_pods(observed, m) {
        return action;
    }
    if let Some(action) = replace_emptied_voter(&health) {
        return action;
    }
    if let Some(action) = scale_in_members(&health, desired) {
        return action;
    }
    let members_above = m.members().any(|id| ordinal_of(id) >= desired);
    if observed.statefulset_replicas > desired && !members_above {
        return Action::ScaleStatefulSet { replicas: desired };
    }
    if let Some(action) = retire_stale_node(&health) {
        return action;
    }
    if let Some(action) = handle_volumes(observed, m) {
        return action;
    }
    if let Some(action) = join(&health) {
        return action;
    }
    if observed.statefulset_replicas < desired {
        return Action::ScaleStatefulSet {
            replicas: observed.statefulset_replicas + 1,
        };
    }
    Action::Converged
}

/// Health as the planner judges it: a voter counts towards a quorum when it
/// answers and follows the current leader.
struct Health<'a> {
    observed: &'a Observed,
    leader: &'a NodeView,
}

impl Health<'_> {
    fn membership(&self) -> &Membership {
        &self.leader.membership
    }

    fn node(&self, id: NodeId) -> Option<&NodeView> {
        self.observed.nodes.get(&ordinal_of(id))
    }

    fn is_healthy(&self, id: NodeId) -> bool {
        id == self.leader.node_id
            || self.node(id).is_some_and(|n| {
                n.initialized
                    && !n.removed
                    && n.role != Role::Shutdown
                    && n.leader_id == Some(self.leader.node_id)
            })
    }

    fn lag(&self, id: NodeId) -> Option<u64> {
        self.leader.lag.get(&id).copied()
    }

    fn is_caught_up(&self, id: NodeId) -> bool {
        self.is_healthy(id) && self.lag(id).is_some_and(|lag| lag <= CAUGHT_UP_MAX_LAG)
    }

    fn healthy_count(&self, voters: &BTreeSet<NodeId>) -> usize {
        voters.iter().filter(|&&id| self.is_healthy(id)).count()
    }

    /// A change from the current voters to `after` commits only with a quorum
    /// of both, and leaves a working cluster only with a quorum of `after`.
    fn change_keeps_quorum(&self, after: &BTreeSet<NodeId>) -> bool {
        let before = &self.membership().voters;
        !after.is_empty()
            && self.healthy_count(before) >= quorum(before.len())
            && self.healthy_count(after) >= quorum(after.len())
    }

    fn remove_voter(&self, id: NodeId) -> Action {
        let mut after = self.membership().voters.clone();
        after.remove(&id);
        if self.change_keeps_quorum(&after) {
            Action::Membership(Operation::RemoveVoter { node_id: id })
        } else {
            Action::Wait(Wait::QuorumAtRisk { node_id: id })
        }
    }
}

/// Members at or above `desired` leave, top first. `None` also when the
/// leader must leave but no voter stays: pods below `desired` join first.
fn scale_in_members(health: &Health<'_>, desired: u32) -> Option<Action> {
    let m = health.membership();
    let leader = health.leader.node_id;
    let leaving = |id: &NodeId| ordinal_of(*id) >= desired;
    if leaving(&leader) {
        if m.voters.iter().all(leaving) {
            return None;
        }
        let target = m
            .voters
            .iter()
            .copied()
            .filter(|id| !leaving(id) && health.is_caught_up(*id))
            .min_by_key(|id| (health.lag(*id), *id));
        return Some(match target {
            Some(to) => Action::Membership(Operation::TransferLeadership { from: leader, to }),
            None => Action::Wait(Wait::NoTransferTarget { leader }),
        });
    }
    let top = m.members().filter(leaving).max()?;
    Some(if m.learners.contains(&top) {
        Action::Membership(Operation::RemoveLearner { node_id: top })
    } else {
        health.remove_voter(top)
    })
}

/// A node that holds data but is not a member can never rejoin with it.
fn retire_stale_node(health: &Health<'_>) -> Option<Action> {
    let observed = health.observed;
    let m = health.membership();
    let stale = observed
        .nodes
        .iter()
        .filter(|(o, n)| {
            **o < observed.statefulset_replicas && n.has_data() && !m.contains(node_id_of(**o))
        })
        .map(|(o, _)| *o)
        .max()?;
    let above_is_member = m.members().any(|id| ordinal_of(id) > stale);
    Some(if above_is_member {
        Action::Wait(Wait::StaleMember { ordinal: stale })
    } else {
        Action::ScaleStatefulSet { replicas: stale }
    })
}

/// A voter that answers with no data lost its volume: it must leave and join
/// again as a new member, since Raft's safety rests on voters remembering.
fn replace_emptied_voter(health: &Health<'_>) -> Option<Action> {
    let emptied = health.membership().voters.iter().copied().find(|&id| {
        id != health.leader.node_id && health.node(id).is_some_and(|n| !n.has_data())
    })?;
    Some(health.remove_voter(emptied))
}

/// Volumes above the StatefulSet belong to no member (members got their pods
/// back first): wipe those that will be needed again, apply the policy to the
/// rest.
fn handle_volumes(observed: &Observed, m: &Membership) -> Option<Action> {
    let (ordinal, why) = observed
        .volumes
        .iter()
        .copied()
        .filter(|&o| o >= observed.statefulset_replicas && !m.contains(node_id_of(o)))
        .find_map(|o| {
            if o < observed.desired_replicas {
                Some((o, VolumeDeletion::Stale))
            } else if observed.when_scaled == Retention::Delete {
                Some((o, VolumeDeletion::Policy))
            } else {
                None
            }
        })?;
    Some(if observed.pods.contains_key(&ordinal) {
        Action::Wait(Wait::PodTerminating { ordinal })
    } else {
        Action::DeleteVolume { ordinal, why }
    })
}

/// Promote the pending learner, or add the lowest pod that is not a member.
fn join(health: &Health<'_>) -> Option<Action> {
    let m = health.membership();
    let desired = health.observed.desired_replicas;
    if let Some(&learner) = m.learners.iter().find(|&&id| ordinal_of(id) < desired) {
        if !health.is_caught_up(learner) {
            return Some(Action::Wait(Wait::CatchingUp {
                node_id: learner,
                lag: health.lag(learner),
            }));
        }
        let mut after = m.voters.clone();
        after.insert(learner);
        return Some(if health.change_keeps_quorum(&after) {
            Action::Membership(Operation::Promote { node_id: learner })
        } else {
            Action::Wait(Wait::QuorumAtRisk { node_id: learner })
        });
    }
    let below = health
        .observed
        .statefulset_replicas
        .min(health.observed.desired_replicas);
    let ordinal = (0..below).find(|&o| !m.contains(node_id_of(o)))?;
    Some(match health.observed.nodes.get(&ordinal) {
        // Stale nodes were retired before this point, so an answering node
        // that is not a member is empty.
        Some(_) => Action::Membership(Operation::AddLearner {
            node_id: node_id_of(ordinal),
        }),
        None => Action::Wait(Wait::NodeStarting { ordinal }),
    })
}
