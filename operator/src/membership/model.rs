//! A simulated cluster that executes the planner's actions the way the
//! controller and the nodes would, with faults, and a property test over
//! random spec changes and faults: never two membership changes in flight,
//! never a voter change that leaves fewer healthy voters than a quorum, never
//! a pod or volume of a member dropped, never stale data reused, and
//! convergence to the spec once every node responds.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

/// What an ordinal's volume holds.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Data {
    Empty,
    Member,
    /// A former member: it may or may not have learnt of its removal, and it
    /// remembers the configuration it last saw.
    Removed {
        knows: bool,
        last_seen: Membership,
    },
}

/// How a membership call ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    /// Applied but not committed yet: commits at the next step.
    Uncommitted,
    /// Voter changes only: the joint configuration committed, then the call
    /// was cut short; only repeating it reaches the final configuration.
    StuckJoint,
    /// Refused or lost before it reached the leader.
    Failed,
}

#[derive(Clone, Debug)]
enum Event {
    Step(Outcome),
    SetDesired(u32),
    Down(Ordinal),
    Up(Ordinal),
    LoseVolume(Ordinal),
}

#[derive(Clone, Debug)]
struct World {
    desired: u32,
    sts: u32,
    volumes: BTreeMap<Ordinal, Data>,
    voters: BTreeSet<NodeId>,
    learners: BTreeSet<NodeId>,
    leader: Option<NodeId>,
    term: u64,
    membership_index: u64,
    uncommitted: bool,
    joint: Option<Operation>,
    lag: BTreeMap<NodeId, u64>,
    down: BTreeSet<Ordinal>,
    record: Record,
    when_scaled: Retention,
    initialized: bool,
}

impl World {
    fn new(desired: u32, when_scaled: Retention) -> Self {
        World {
            desired,
            sts: 0,
            volumes: BTreeMap::new(),
            voters: BTreeSet::new(),
            learners: BTreeSet::new(),
            leader: None,
            term: 0,
            membership_index: 0,
            uncommitted: false,
            joint: None,
            lag: BTreeMap::new(),
            down: BTreeSet::new(),
            record: Record::default(),
            when_scaled,
            initialized: false,
        }
    }

    fn data(&self, id: NodeId) -> Option<&Data> {
        self.volumes.get(&ordinal_of(id))
    }

    fn is_up(&self, id: NodeId) -> bool {
        let o = ordinal_of(id);
        o < self.sts && !self.down.contains(&o)
    }

    fn healthy(&self, voters: &BTreeSet<NodeId>) -> usize {
        voters
            .iter()
            .filter(|&&id| self.is_up(id) && self.data(id) == Some(&Data::Member))
            .count()
    }

    fn membership(&self) -> Membership {
        Membership {
            voters: self.voters.clone(),
            learners: self.learners.clone(),
            joint: self.joint.is_some(),
            log_index: Some(self.membership_index),
        }
    }

    /// Raft's side: elect a leader among healthy voters when there is none.
    fn elect(&mut self) {
        let current_ok = self.leader.is_some_and(|l| {
            self.voters.contains(&l) && self.is_up(l) && self.data(l) == Some(&Data::Member)
        });
        if current_ok {
            return;
        }
        self.leader = None;
        if self.healthy(&self.voters) >= quorum(self.voters.len()) {
            self.leader = self
                .voters
                .iter()
                .copied()
                .find(|&id| self.is_up(id) && self.data(id) == Some(&Data::Member));
            self.term += 1;
        }
    }

    fn observe(&self) -> Observed {
        let mut pods = BTreeMap::new();
        let mut nodes = BTreeMap::new();
        for o in 0..self.sts {
            let up = !self.down.contains(&o);
            pods.insert(
                o,
                PodState {
                    running: up,
                    ready: up,
                },
            );
            if !up {
                continue;
            }
            let id = node_id_of(o);
            let view = match self.volumes.get(&o).expect("every pod has a volume") {
                Data::Empty => tests::empty_node(o),
                Data::Removed { knows, last_seen } => NodeView {
                    node_id: id,
                    role: if *knows {
                        Role::Shutdown
                    } else {
                        Role::Follower
                    },
                    term: self.term.saturating_sub(1),
                    leader_id: None,
                    initialized: true,
                    removed: *knows,
                    membership: last_seen.clone(),
                    committed_index: last_seen.log_index,
                    lag: BTreeMap::new(),
                },
                Data::Member => {
                    let is_leader = self.leader == Some(id);
                    NodeView {
                        node_id: id,
                        role: if is_leader {
                            Role::Leader
                        } else if self.voters.contains(&id) {
                            Role::Follower
                        } else {
                            Role::Learner
                        },
                        term: self.term,
                        leader_id: self.leader,
                        initialized: true,
                        removed: false,
                        membership: self.membership(),
                        committed_index: Some(self.membership_index - u64::from(self.uncommitted)),
                        lag: if is_leader {
                            self.voters
                                .iter()
                                .chain(&self.learners)
                                .filter(|&&m| m != id)
                                .map(|&m| (m, self.lag.get(&m).copied().unwrap_or(0)))
                                .collect()
                        } else {
                            BTreeMap::new()
                        },
                    }
                }
            };
            nodes.insert(o, view);
        }
        Observed {
            desired_replicas: self.desired,
            statefulset_replicas: self.sts,
            pods,
            nodes,
            volumes: self.volumes.keys().copied().collect(),
            when_scaled: self.when_scaled,
            record: self.record,
        }
    }

    /// Time passes: learners catch up, an uncommitted change commits if it can.
    fn tick(&mut self) {
        for lag in self.lag.values_mut() {
            *lag /= 4;
        }
        // The leader replicates to a learner whatever its volume holds.
        for &id in &self.learners {
            if self.is_up(id) && self.leader.is_some() {
                self.volumes.insert(ordinal_of(id), Data::Member);
            }
        }
        self.elect();
        if self.uncommitted && self.leader.is_some() {
            self.uncommitted = false;
        }
    }

    fn remove_member(&mut self, id: NodeId) {
        let last_seen = self.membership();
        self.voters.remove(&id);
        self.learners.remove(&id);
        self.lag.remove(&id);
        let o = ordinal_of(id);
        // A voter removed because its volume came back empty stays empty.
        if self.volumes.get(&o) == Some(&Data::Member) {
            let knows = id.is_multiple_of(2);
            self.volumes.insert(o, Data::Removed { knows, last_seen });
        }
    }

    /// Execute one action, asserting the safety properties.
    fn execute(&mut self, action: &Action, outcome: Outcome) {
        match *action {
            Action::ScaleStatefulSet { replicas } => {
                for o in replicas..self.sts {
                    let id = node_id_of(o);
                    assert!(
                        !self.voters.contains(&id) && !self.learners.contains(&id),
                        "dropped the pod of member {id}: {self:?}"
                    );
                }
                for o in self.sts..replicas {
                    self.volumes.entry(o).or_insert(Data::Empty);
                }
                self.sts = replicas;
            }
            Action::DeleteVolume { ordinal, .. } => {
                assert!(ordinal >= self.sts, "deleted the volume of a running pod");
                let id = node_id_of(ordinal);
                assert!(!self.voters.contains(&id) && !self.learners.contains(&id));
                self.volumes.remove(&ordinal);
            }
            Action::Membership(op) => self.change(op, outcome),
            Action::Wait(_) | Action::Converged => {}
        }
    }

    fn change(&mut self, op: Operation, outcome: Outcome) {
        let in_flight = self.uncommitted || self.joint.is_some();
        assert!(
            !in_flight || self.joint == Some(op),
            "{op:?} issued while another change is in flight: {self:?}"
        );
        if let Operation::Initialize { node_id } = op {
            assert!(!self.initialized, "initialized twice");
            assert_eq!(node_id, 1);
            assert!(
                self.volumes.values().all(|d| *d == Data::Empty),
                "initialized next to data of an older cluster"
            );
            self.initialized = true;
            self.volumes.insert(0, Data::Member);
            self.voters.insert(1);
            self.membership_index = 1;
            return;
        }
        if outcome == Outcome::Failed || self.leader.is_none() {
            return;
        }
        if let Some(joint) = self.joint.take() {
            // Repeating the cut-short change finishes it.
            if let Operation::RemoveVoter { node_id } = joint {
                self.remove_member(node_id);
            }
            self.membership_index += 1;
            return;
        }
        let outcome = match (op, outcome) {
            (Operation::Promote { .. } | Operation::RemoveVoter { .. }, Outcome::StuckJoint) => {
                Outcome::StuckJoint
            }
            (_, Outcome::StuckJoint) => Outcome::Ok,
            (_, other) => other,
        };
        match op {
            Operation::Initialize { .. } => unreachable!("handled above"),
            Operation::AddLearner { node_id } => {
                assert!(self.is_up(node_id), "added learner {node_id} without a pod");
                assert_eq!(
                    self.data(node_id),
                    Some(&Data::Empty),
                    "node {node_id} rejoined with stale data"
                );
                self.learners.insert(node_id);
                self.volumes.insert(ordinal_of(node_id), Data::Member);
                self.lag.insert(node_id, 1000 + node_id * 37);
            }
            Operation::Promote { node_id } => {
                assert!(self.learners.remove(&node_id));
                self.voters.insert(node_id);
                self.assert_quorum_after_change();
            }
            Operation::RemoveVoter { node_id } => {
                assert_ne!(Some(node_id), self.leader, "removed the leader");
                if outcome == Outcome::StuckJoint {
                    let mut after = self.voters.clone();
                    after.remove(&node_id);
                    assert!(self.healthy(&after) >= quorum(after.len()));
                } else {
                    self.remove_member(node_id);
                    self.assert_quorum_after_change();
                }
            }
            Operation::RemoveLearner { node_id } => {
                assert!(self.learners.contains(&node_id));
                self.remove_member(node_id);
            }
            Operation::TransferLeadership { from, to } => {
                assert_eq!(Some(from), self.leader);
                assert!(self.voters.contains(&to) && self.is_up(to));
                self.leader = Some(to);
                self.term += 1;
                return;
            }
        }
        self.membership_index += 1;
        match outcome {
            Outcome::Uncommitted => self.uncommitted = true,
            Outcome::StuckJoint => self.joint = Some(op),
            Outcome::Ok | Outcome::Failed => {}
        }
    }

    fn assert_quorum_after_change(&self) {
        assert!(
            self.healthy(&self.voters) >= quorum(self.voters.len()),
            "a voter change left fewer healthy voters than a quorum: {self:?}"
        );
    }

    fn apply(&mut self, event: &Event) {
        match *event {
            Event::Step(outcome) => {
                self.tick();
                let plan = plan(&self.observe());
                self.record = plan.record;
                self.execute(&plan.action, outcome);
            }
            Event::SetDesired(n) => self.desired = n,
            Event::Down(o) => {
                self.down.insert(o);
            }
            Event::Up(o) => {
                self.down.remove(&o);
            }
            Event::LoseVolume(o) => {
                let id = node_id_of(o);
                let mut with_data = self.voters.clone();
                with_data.retain(|&v| self.data(v) == Some(&Data::Member) && v != id);
                // Losing a majority of voters' data is a disaster no
                // operator can recover from; the model keeps a quorum, also
                // of the configuration a change in flight leads to.
                let settled = self.joint.is_none() && !self.uncommitted;
                if settled && o < self.sts && with_data.len() >= quorum(self.voters.len()) {
                    self.volumes.insert(o, Data::Empty);
                    if self.leader == Some(id) {
                        self.leader = None;
                    }
                }
            }
        }
    }

    /// Run with every node up and every call succeeding until converged.
    fn settle(&mut self) {
        self.down.clear();
        for _ in 0..300 {
            self.tick();
            let plan = plan(&self.observe());
            self.record = plan.record;
            if plan.action == Action::Converged {
                return;
            }
            self.execute(&plan.action, Outcome::Ok);
        }
        panic!(
            "did not converge: {self:?}\nlast plan: {:?}",
            plan(&self.observe())
        );
    }

    fn assert_matches_spec(&self) {
        let all: BTreeSet<NodeId> = (1..=u64::from(self.desired)).collect();
        assert_eq!(self.sts, self.desired);
        assert_eq!(self.voters, all);
        assert!(self.learners.is_empty());
        assert!(self.leader.is_some());
        for o in 0..self.desired {
            assert_eq!(self.volumes.get(&o), Some(&Data::Member));
        }
        if self.when_scaled == Retention::Delete {
            assert!(self.volumes.keys().all(|&o| o < self.desired));
        }
    }
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        6 => Just(Outcome::Ok),
        1 => Just(Outcome::Uncommitted),
        1 => Just(Outcome::StuckJoint),
        1 => Just(Outcome::Failed),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        12 => outcome().prop_map(Event::Step),
        2 => (1..=MAX_REPLICAS).prop_map(Event::SetDesired),
        1 => (0..MAX_REPLICAS).prop_map(Event::Down),
        2 => (0..MAX_REPLICAS).prop_map(Event::Up),
        1 => (0..MAX_REPLICAS).prop_map(Event::LoseVolume),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn planner_is_safe_and_converges(
        initial in 1..=MAX_REPLICAS,
        delete_volumes in any::<bool>(),
        events in proptest::collection::vec(event(), 0..120),
    ) {
        let policy = if delete_volumes { Retention::Delete } else { Retention::Retain };
        let mut world = World::new(initial, policy);
        for event in &events {
            world.apply(event);
        }
        world.settle();
        world.assert_matches_spec();
    }
}

#[test]
fn grows_to_nine_and_back_to_one() {
    let mut world = World::new(9, Retention::Delete);
    world.settle();
    world.assert_matches_spec();
    world.desired = 1;
    world.settle();
    world.assert_matches_spec();
    assert_eq!(world.volumes.len(), 1);
}
