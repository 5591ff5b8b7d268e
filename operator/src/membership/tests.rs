//! One test per rule of the planner, on hand-built observations.

use super::*;

/// A healthy cluster: `voters` and `learners` run on pods `0..replicas`,
/// every pod answers, node `leader` leads, every member is caught up.
struct Cluster {
    obs: Observed,
}

fn cluster(desired: u32, voters: &[NodeId], learners: &[NodeId], leader: NodeId) -> Cluster {
    let membership = Membership {
        voters: voters.iter().copied().collect(),
        learners: learners.iter().copied().collect(),
        joint: false,
        log_index: Some(10),
    };
    let replicas = membership
        .members()
        .map(|id| ordinal_of(id) + 1)
        .max()
        .unwrap_or(0);
    let mut obs = Observed {
        desired_replicas: desired,
        statefulset_replicas: replicas,
        pods: BTreeMap::new(),
        nodes: BTreeMap::new(),
        volumes: BTreeSet::new(),
        when_scaled: Retention::Retain,
        record: Record {
            bootstrapped: true,
            operation: None,
        },
    };
    for o in 0..replicas {
        let id = node_id_of(o);
        obs.pods.insert(
            o,
            PodState {
                running: true,
                ready: true,
            },
        );
        obs.volumes.insert(o);
        let role = if id == leader {
            Role::Leader
        } else if membership.learners.contains(&id) {
            Role::Learner
        } else {
            Role::Follower
        };
        let lag = if id == leader {
            membership
                .members()
                .filter(|&m| m != leader)
                .map(|m| (m, 0))
                .collect()
        } else {
            BTreeMap::new()
        };
        obs.nodes.insert(
            o,
            NodeView {
                node_id: id,
                role,
                term: 3,
                leader_id: Some(leader),
                initialized: membership.contains(id),
                removed: false,
                membership: membership.clone(),
                committed_index: Some(20),
                lag,
            },
        );
    }
    Cluster { obs }
}

impl Cluster {
    fn plan(&self) -> Action {
        plan(&self.obs).action
    }

    fn leader_mut(&mut self) -> &mut NodeView {
        self.obs
            .nodes
            .values_mut()
            .find(|n| n.role == Role::Leader)
            .expect("a leader")
    }

    /// Add a pod at `ordinal` whose node answers and holds no data.
    fn new_pod(mut self, ordinal: Ordinal) -> Self {
        self.obs.statefulset_replicas = self.obs.statefulset_replicas.max(ordinal + 1);
        self.obs.pods.insert(
            ordinal,
            PodState {
                running: true,
                ready: false,
            },
        );
        self.obs.volumes.insert(ordinal);
        self.obs.nodes.insert(ordinal, empty_node(ordinal));
        self
    }

    fn down(mut self, ordinal: Ordinal) -> Self {
        self.obs.nodes.remove(&ordinal);
        if let Some(pod) = self.obs.pods.get_mut(&ordinal) {
            pod.ready = false;
        }
        self
    }

    fn lag(mut self, id: NodeId, lag: u64) -> Self {
        self.leader_mut().lag.insert(id, lag);
        self
    }

    fn removed(mut self, ordinal: Ordinal, knows: bool) -> Self {
        let node = self.obs.nodes.get_mut(&ordinal).expect("node");
        node.removed = knows;
        node.initialized = true;
        node.leader_id = None;
        for node in self.obs.nodes.values_mut() {
            node.membership.voters.remove(&node_id_of(ordinal));
            node.membership.learners.remove(&node_id_of(ordinal));
        }
        self.leader_mut().lag.remove(&node_id_of(ordinal));
        self
    }

    fn pod_gone(mut self, ordinal: Ordinal) -> Self {
        self.obs.pods.remove(&ordinal);
        self.obs.nodes.remove(&ordinal);
        self
    }
}

fn op(operation: Operation) -> Action {
    Action::Membership(operation)
}

fn fresh(desired: u32) -> Observed {
    Observed {
        desired_replicas: desired,
        statefulset_replicas: 0,
        pods: BTreeMap::new(),
        nodes: BTreeMap::new(),
        volumes: BTreeSet::new(),
        when_scaled: Retention::Retain,
        record: Record::default(),
    }
}

pub(super) fn empty_node(ordinal: Ordinal) -> NodeView {
    NodeView {
        node_id: node_id_of(ordinal),
        role: Role::Learner,
        term: 0,
        leader_id: None,
        initialized: false,
        removed: false,
        membership: Membership::default(),
        committed_index: None,
        lag: BTreeMap::new(),
    }
}

#[test]
fn new_cluster_starts_one_pod() {
    assert_eq!(
        plan(&fresh(3)).action,
        Action::ScaleStatefulSet { replicas: 1 }
    );
}

#[test]
fn bootstrap_waits_for_pod_zero_to_answer() {
    let mut obs = fresh(3);
    obs.statefulset_replicas = 1;
    assert_eq!(
        plan(&obs).action,
        Action::Wait(Wait::NodeStarting { ordinal: 0 })
    );
}

#[test]
fn bootstrap_initializes_pod_zero_alone_and_records_it() {
    let mut obs = fresh(3);
    obs.statefulset_replicas = 1;
    obs.volumes.insert(0);
    obs.nodes.insert(0, empty_node(0));
    let plan = plan(&obs);
    let init = Operation::Initialize { node_id: 1 };
    assert_eq!(plan.action, op(init));
    assert_eq!(plan.record.operation, Some(init));
    assert!(!plan.record.bootstrapped);
}

#[test]
fn bootstrapped_cluster_is_never_initialized_again() {
    let mut obs = fresh(3);
    obs.statefulset_replicas = 1;
    obs.nodes.insert(0, empty_node(0));
    obs.record.bootstrapped = true;
    assert_eq!(plan(&obs).action, Action::Wait(Wait::NoLeader));
}

#[test]
fn bootstrap_refuses_next_to_volumes_of_an_older_cluster() {
    let mut obs = fresh(3);
    obs.statefulset_replicas = 1;
    obs.volumes.extend([0, 1, 2]);
    obs.nodes.insert(0, empty_node(0));
    assert_eq!(
        plan(&obs).action,
        Action::Wait(Wait::UnknownVolumes {
            ordinals: vec![1, 2]
        })
    );
}

#[test]
fn retained_volumes_are_adopted_instead_of_initialized() {
    let mut c = cluster(3, &[1, 2, 3], &[], 1);
    c.obs.record = Record::default();
    c.obs.statefulset_replicas = 1;
    c = c.down(1).down(2).pod_gone(1).pod_gone(2);
    c.leader_mut().role = Role::Candidate;
    let plan = plan(&c.obs);
    assert!(
        plan.record.bootstrapped,
        "data on a node means bootstrapped"
    );
    assert_eq!(plan.action, Action::ScaleStatefulSet { replicas: 3 });
}

#[test]
fn without_any_data_in_sight_pod_zero_is_started_to_learn_membership() {
    let mut obs = fresh(3);
    obs.record.bootstrapped = true;
    obs.volumes.extend([0, 1, 2, 5]);
    assert_eq!(plan(&obs).action, Action::ScaleStatefulSet { replicas: 3 });
}

#[test]
fn scale_out_adds_one_pod_at_a_time() {
    assert_eq!(
        cluster(3, &[1], &[], 1).plan(),
        Action::ScaleStatefulSet { replicas: 2 }
    );
}

#[test]
fn new_pod_joins_as_learner() {
    let c = cluster(3, &[1], &[], 1).new_pod(1);
    assert_eq!(c.plan(), op(Operation::AddLearner { node_id: 2 }));
}

#[test]
fn new_pod_is_added_only_once_it_answers() {
    let c = cluster(3, &[1], &[], 1).new_pod(1).down(1);
    assert_eq!(c.plan(), Action::Wait(Wait::NodeStarting { ordinal: 1 }));
}

#[test]
fn learner_is_promoted_only_once_caught_up() {
    let behind = cluster(3, &[1], &[2], 1).lag(2, 5000);
    assert_eq!(
        behind.plan(),
        Action::Wait(Wait::CatchingUp {
            node_id: 2,
            lag: Some(5000)
        })
    );
    let caught_up = cluster(3, &[1], &[2], 1).lag(2, CAUGHT_UP_MAX_LAG);
    assert_eq!(caught_up.plan(), op(Operation::Promote { node_id: 2 }));
}

#[test]
fn next_pod_is_created_only_after_the_learner_is_promoted() {
    let c = cluster(3, &[1], &[2], 1).lag(2, 5000);
    assert!(matches!(c.plan(), Action::Wait(Wait::CatchingUp { .. })));
    assert_eq!(
        cluster(3, &[1, 2], &[], 1).plan(),
        Action::ScaleStatefulSet { replicas: 3 }
    );
}

#[test]
fn promotion_waits_when_the_current_voters_have_no_quorum() {
    // Voters {1, 2} with 2 down cannot commit the change.
    let c = cluster(3, &[1, 2], &[3], 1).down(1);
    assert_eq!(c.plan(), Action::Wait(Wait::QuorumAtRisk { node_id: 3 }));
}

#[test]
fn desired_size_comes_from_the_spec_not_from_running_pods() {
    let mut c = cluster(3, &[1, 2, 3], &[], 1).new_pod(3).new_pod(4);
    c.obs.volumes.clear();
    c.obs.volumes.extend([0, 1, 2, 3, 4]);
    assert_eq!(c.plan(), Action::ScaleStatefulSet { replicas: 3 });
}

#[test]
fn scale_in_removes_learners_first() {
    let c = cluster(3, &[1, 2, 3], &[4], 1);
    assert_eq!(c.plan(), op(Operation::RemoveLearner { node_id: 4 }));
}

#[test]
fn scale_in_removes_member_before_pod() {
    let c = cluster(3, &[1, 2, 3, 4, 5], &[], 1);
    assert_eq!(c.plan(), op(Operation::RemoveVoter { node_id: 5 }));
}

#[test]
fn scale_in_transfers_leadership_before_removing_the_leader() {
    let c = cluster(1, &[1, 2, 3], &[], 3).lag(2, 7);
    assert_eq!(
        c.plan(),
        op(Operation::TransferLeadership { from: 3, to: 1 })
    );
}

#[test]
fn leadership_goes_only_to_a_caught_up_voter_that_stays() {
    let c = cluster(2, &[1, 2, 3], &[], 3).lag(1, 500).lag(2, 500);
    assert_eq!(c.plan(), Action::Wait(Wait::NoTransferTarget { leader: 3 }));
    let c = cluster(2, &[1, 2, 3], &[], 3).lag(1, 500).lag(2, 3);
    assert_eq!(
        c.plan(),
        op(Operation::TransferLeadership { from: 3, to: 2 })
    );
}

#[test]
fn removal_waits_when_it_would_lose_quorum() {
    // Voters {1..5}, 3 and 4 down: removing 5 leaves {1,2,3,4} with 2 healthy.
    let c = cluster(4, &[1, 2, 3, 4, 5], &[], 1).down(2).down(3);
    assert_eq!(c.plan(), Action::Wait(Wait::QuorumAtRisk { node_id: 5 }));
    // With only 5 itself down, {1,2,3,4} keeps all four healthy.
    let c = cluster(4, &[1, 2, 3, 4, 5], &[], 1).down(4);
    assert_eq!(c.plan(), op(Operation::RemoveVoter { node_id: 5 }));
}

#[test]
fn two_voters_can_shrink_to_one() {
    let c = cluster(1, &[1, 2], &[], 1);
    assert_eq!(c.plan(), op(Operation::RemoveVoter { node_id: 2 }));
}

#[test]
fn statefulset_shrinks_once_members_have_left() {
    let c = cluster(3, &[1, 2, 3, 4, 5], &[], 1)
        .removed(4, true)
        .removed(3, false);
    assert_eq!(c.plan(), Action::ScaleStatefulSet { replicas: 3 });
}

#[test]
fn volumes_of_departed_members_are_retained_by_default() {
    let mut c = cluster(3, &[1, 2, 3], &[], 1);
    c.obs.volumes.extend([3, 4]);
    assert_eq!(c.plan(), Action::Converged);
}

#[test]
fn volumes_of_departed_members_are_deleted_per_policy() {
    let mut c = cluster(3, &[1, 2, 3], &[], 1);
    c.obs.volumes.extend([3, 4]);
    c.obs.when_scaled = Retention::Delete;
    assert_eq!(
        c.plan(),
        Action::DeleteVolume {
            ordinal: 3,
            why: VolumeDeletion::Policy
        }
    );
}

#[test]
fn volume_is_deleted_only_after_its_pod_terminated() {
    let mut c = cluster(3, &[1, 2, 3], &[], 1);
    c.obs.volumes.insert(3);
    c.obs.pods.insert(
        3,
        PodState {
            running: false,
            ready: false,
        },
    );
    c.obs.when_scaled = Retention::Delete;
    assert_eq!(c.plan(), Action::Wait(Wait::PodTerminating { ordinal: 3 }));
}

#[test]
fn stale_volume_is_wiped_before_its_ordinal_is_reused_even_when_retained() {
    let mut c = cluster(5, &[1, 2, 3], &[], 1);
    c.obs.volumes.extend([3, 4]);
    assert_eq!(
        c.plan(),
        Action::DeleteVolume {
            ordinal: 3,
            why: VolumeDeletion::Stale
        }
    );
}

#[test]
fn removed_node_is_retired_instead_of_rejoining() {
    // Node 5 was removed, then the spec went back to 5 replicas.
    let c = cluster(5, &[1, 2, 3, 4, 5], &[], 1).removed(4, true);
    assert_eq!(c.plan(), Action::ScaleStatefulSet { replicas: 4 });
    // A node that missed its removal is just as stale.
    let c = cluster(5, &[1, 2, 3, 4, 5], &[], 1).removed(4, false);
    assert_eq!(c.plan(), Action::ScaleStatefulSet { replicas: 4 });
}

#[test]
fn stale_node_below_a_member_needs_a_human() {
    let c = cluster(5, &[1, 2, 3, 4, 5], &[], 1).removed(2, true);
    assert_eq!(c.plan(), Action::Wait(Wait::StaleMember { ordinal: 2 }));
    assert!(Wait::StaleMember { ordinal: 2 }.is_degraded());
}

#[test]
fn voter_that_lost_its_volume_is_removed_then_rejoins() {
    let mut c = cluster(3, &[1, 2, 3], &[], 1);
    let node = c.obs.nodes.get_mut(&1).expect("node 2");
    node.initialized = false;
    assert_eq!(c.plan(), op(Operation::RemoveVoter { node_id: 2 }));
    let mut c = cluster(3, &[1, 3], &[], 1).new_pod(1);
    c.obs.statefulset_replicas = 3;
    assert_eq!(c.plan(), op(Operation::AddLearner { node_id: 2 }));
}

#[test]
fn member_without_a_pod_gets_it_back() {
    let mut c = cluster(3, &[1, 2, 3], &[], 1).pod_gone(2);
    c.obs.statefulset_replicas = 2;
    assert_eq!(c.plan(), Action::ScaleStatefulSet { replicas: 3 });
}

#[test]
fn nothing_changes_while_a_change_is_uncommitted() {
    let mut c = cluster(5, &[1, 2, 3], &[], 1);
    c.leader_mut().committed_index = Some(9);
    c.obs.record.operation = Some(Operation::Promote { node_id: 3 });
    let plan = plan(&c.obs);
    assert_eq!(plan.action, Action::Wait(Wait::ChangeInFlight));
    assert_eq!(
        plan.record.operation,
        Some(Operation::Promote { node_id: 3 })
    );
}

#[test]
fn committed_joint_change_is_driven_to_its_end() {
    let mut c = cluster(2, &[1, 2, 3], &[], 1);
    c.leader_mut().membership.joint = true;
    c.obs.record.operation = Some(Operation::RemoveVoter { node_id: 3 });
    assert_eq!(c.plan(), op(Operation::RemoveVoter { node_id: 3 }));
    c.obs.record.operation = None;
    assert_eq!(c.plan(), Action::Wait(Wait::ChangeInFlight));
}

#[test]
fn record_is_cleared_once_the_operation_is_done() {
    let mut c = cluster(3, &[1, 2, 3], &[], 1);
    let promote = Operation::Promote { node_id: 3 };
    c.obs.record.operation = Some(promote);
    assert!(promote.is_done(&c.obs));
    let plan = plan(&c.obs);
    assert_eq!(plan.action, Action::Converged);
    assert_eq!(plan.record.operation, None);
}

#[test]
fn abandoned_operation_is_not_done() {
    // Learner 4 was being added when the spec went down to 3.
    let c = cluster(3, &[1, 2, 3], &[], 1);
    assert!(!Operation::AddLearner { node_id: 4 }.is_done(&c.obs));
    assert!(Operation::RemoveLearner { node_id: 4 }.is_done(&c.obs));
}

#[test]
fn converged_when_the_cluster_matches_the_spec() {
    assert_eq!(cluster(3, &[1, 2, 3], &[], 2).plan(), Action::Converged);
}

#[test]
fn leader_of_the_highest_term_wins() {
    let mut c = cluster(3, &[1, 2, 3], &[], 1);
    let stale = c.obs.nodes.get_mut(&2).expect("node 3");
    stale.role = Role::Leader;
    stale.term = 2;
    assert_eq!(leader(&c.obs).map(|n| n.node_id), Some(1));
}

#[test]
fn quorum_is_a_strict_majority() {
    assert_eq!(
        (1..=9).map(quorum).collect::<Vec<_>>(),
        vec![1, 2, 2, 3, 3, 4, 4, 5, 5]
    );
}
