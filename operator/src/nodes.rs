//! How the operator talks to nodes: the admin calls it needs, behind a trait
//! so that the controller can be tested with a fake, implemented over the
//! same client `aspenctl` uses; the translation of a node's status into the
//! planner's view; and the two things both the controller and local mode do
//! with nodes: ask each for its status, and run one membership operation.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use aspen_node::api::Role as NodeRole;
use aspen_node::api::{
    AddLearnerRequest, ChangeMembershipRequest, ErrorCode, InitRequest, MembershipView, NodeStatus,
    RemoveLearnersRequest, TransferLeaderRequest, TransferLeaderResponse,
};
use aspen_node::client::{AspenClient, ClientError};
use futures::future::join_all;

use crate::membership::{
    self, Membership, NodeView, Observed, Operation, Ordinal, Role, node_id_of, ordinal_of,
};

/// The admin API of one node, addressed by its client address (`host:port`).
/// A follower forwards membership calls to the leader.
pub trait NodeAdmin: Send + Sync + 'static {
    fn status(
        &self,
        endpoint: &str,
    ) -> impl Future<Output = Result<NodeStatus, ClientError>> + Send;
    fn init(
        &self,
        endpoint: &str,
        request: &InitRequest,
    ) -> impl Future<Output = Result<MembershipView, ClientError>> + Send;
    fn add_learner(
        &self,
        endpoint: &str,
        request: &AddLearnerRequest,
    ) -> impl Future<Output = Result<MembershipView, ClientError>> + Send;
    fn change_membership(
        &self,
        endpoint: &str,
        request: &ChangeMembershipRequest,
    ) -> impl Future<Output = Result<MembershipView, ClientError>> + Send;
    fn remove_learners(
        &self,
        endpoint: &str,
        request: &RemoveLearnersRequest,
    ) -> impl Future<Output = Result<MembershipView, ClientError>> + Send;
    fn transfer_leader(
        &self,
        endpoint: &str,
        request: &TransferLeaderRequest,
    ) -> impl Future<Output = Result<TransferLeaderResponse, ClientError>> + Send;
}

/// Longest wait for a status answer: a node answers it from memory, so a
/// slower one is as good as down, and every reconcile waits for the slowest.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(3);

/// [`NodeAdmin`] over HTTP, with a timeout on every call so that one hung
/// node cannot stall a reconcile.
#[derive(Debug, Clone)]
pub struct HttpNodeAdmin {
    timeout: Duration,
}

impl HttpNodeAdmin {
    /// `timeout` bounds membership calls, which wait for a commit; status
    /// calls use at most [`STATUS_TIMEOUT`].
    pub fn new(timeout: Duration) -> Self {
        HttpNodeAdmin { timeout }
    }

    fn client(&self, endpoint: &str, timeout: Duration) -> AspenClient {
        AspenClient::new(vec![endpoint.to_owned()]).with_timeout(timeout)
    }

    fn admin(&self, endpoint: &str) -> AspenClient {
        self.client(endpoint, self.timeout)
    }
}

impl NodeAdmin for HttpNodeAdmin {
    async fn status(&self, endpoint: &str) -> Result<NodeStatus, ClientError> {
        self.client(endpoint, self.timeout.min(STATUS_TIMEOUT))
            .status()
            .await
    }

    async fn init(
        &self,
        endpoint: &str,
        request: &InitRequest,
    ) -> Result<MembershipView, ClientError> {
        self.admin(endpoint).init(request).await
    }

    async fn add_learner(
        &self,
        endpoint: &str,
        request: &AddLearnerRequest,
    ) -> Result<MembershipView, ClientError> {
        self.admin(endpoint).add_learner(request).await
    }

    async fn change_membership(
        &self,
        endpoint: &str,
        request: &ChangeMembershipRequest,
    ) -> Result<MembershipView, ClientError> {
        self.admin(endpoint).change_membership(request).await
    }

    async fn remove_learners(
        &self,
        endpoint: &str,
        request: &RemoveLearnersRequest,
    ) -> Result<MembershipView, ClientError> {
        self.admin(endpoint).remove_learners(request).await
    }

    async fn transfer_leader(
        &self,
        endpoint: &str,
        request: &TransferLeaderRequest,
    ) -> Result<TransferLeaderResponse, ClientError> {
        self.admin(endpoint).transfer_leader(request).await
    }
}

/// Where the node at each ordinal is reached: pod DNS names in Kubernetes,
/// loopback ports in local mode.
pub trait NodeAddresses {
    /// Client address (`host:port`): KV, admin, health and metrics.
    fn client_address(&self, ordinal: Ordinal) -> String;
    /// Peer address (`host:port`): Raft RPC.
    fn peer_address(&self, ordinal: Ordinal) -> String;
}

/// The status of the node at each of `ordinals`, asked concurrently. A node
/// that does not answer, or answers with another node id than its ordinal's
/// (so is not the node the planner thinks it is), is left out.
pub async fn statuses<A: NodeAdmin>(
    admin: &A,
    addresses: &impl NodeAddresses,
    ordinals: impl IntoIterator<Item = Ordinal>,
) -> BTreeMap<Ordinal, NodeStatus> {
    let answers = join_all(ordinals.into_iter().map(|ordinal| {
        let endpoint = addresses.client_address(ordinal);
        async move { (ordinal, admin.status(&endpoint).await) }
    }))
    .await;
    let mut statuses = BTreeMap::new();
    for (ordinal, answer) in answers {
        match answer {
            Ok(status) if status.node_id == node_id_of(ordinal) => {
                statuses.insert(ordinal, status);
            }
            Ok(status) => tracing::warn!(
                ordinal,
                node_id = status.node_id,
                "node reports an id that does not match its ordinal"
            ),
            Err(error) => tracing::debug!(ordinal, %error, "node did not answer"),
        }
    }
    statuses
}

/// Call the node API for one membership operation: on ordinal 0 to
/// initialise, on the leader `observed` shows otherwise. The error text when
/// it failed.
pub async fn change_membership<A: NodeAdmin>(
    admin: &A,
    addresses: &impl NodeAddresses,
    observed: &Observed,
    op: Operation,
) -> Result<(), String> {
    if let Operation::Initialize { node_id } = op {
        let endpoint = addresses.client_address(ordinal_of(node_id));
        return match admin.init(&endpoint, &InitRequest::default()).await {
            Err(error) if error.code() != Some(ErrorCode::AlreadyInitialized) => {
                Err(error.to_string())
            }
            _ => Ok(()),
        };
    }
    let leader =
        membership::leader(observed).ok_or_else(|| "no leader to send the change to".to_owned())?;
    let endpoint = addresses.client_address(ordinal_of(leader.node_id));
    let result = match op {
        Operation::Initialize { .. } => unreachable!("handled above"),
        Operation::AddLearner { node_id } => {
            let ordinal = ordinal_of(node_id);
            let request = AddLearnerRequest {
                node_id,
                peer_addr: addresses.peer_address(ordinal),
                client_addr: addresses.client_address(ordinal),
                wait: false,
            };
            admin.add_learner(&endpoint, &request).await.map(drop)
        }
        Operation::Promote { node_id } => {
            let request = ChangeMembershipRequest {
                add_voters: vec![node_id],
                ..ChangeMembershipRequest::default()
            };
            admin.change_membership(&endpoint, &request).await.map(drop)
        }
        Operation::RemoveVoter { node_id } => {
            let request = ChangeMembershipRequest {
                remove_voters: vec![node_id],
                retain_as_learners: false,
                ..ChangeMembershipRequest::default()
            };
            admin.change_membership(&endpoint, &request).await.map(drop)
        }
        Operation::RemoveLearner { node_id } => {
            let request = RemoveLearnersRequest {
                node_ids: vec![node_id],
            };
            admin.remove_learners(&endpoint, &request).await.map(drop)
        }
        Operation::TransferLeadership { to, .. } => {
            let request = TransferLeaderRequest { to: Some(to) };
            admin.transfer_leader(&endpoint, &request).await.map(drop)
        }
    };
    result.map_err(|error| error.to_string())
}

/// The planner's view of a node's status.
pub fn view(status: &NodeStatus) -> NodeView {
    let ids = |members: &[aspen_node::api::Member]| members.iter().map(|m| m.node_id).collect();
    NodeView {
        node_id: status.node_id,
        role: match status.role {
            NodeRole::Leader => Role::Leader,
            NodeRole::Follower => Role::Follower,
            NodeRole::Candidate => Role::Candidate,
            NodeRole::Learner => Role::Learner,
            NodeRole::Shutdown => Role::Shutdown,
        },
        term: status.term,
        leader_id: status.leader_id,
        initialized: status.initialized,
        removed: status.removed,
        membership: Membership {
            voters: ids(&status.membership.voters),
            learners: ids(&status.membership.learners),
            joint: status.membership.joint,
            log_index: status.membership.log_index,
        },
        committed_index: status.committed_index,
        lag: status
            .replication
            .iter()
            .flatten()
            .map(|p| (p.node_id, p.lag))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use aspen_node::api::{Member, MemberProgress, StorageStatus};

    use super::*;

    fn member(node_id: u64) -> Member {
        Member {
            node_id,
            peer_addr: format!("n{node_id}:7001"),
            client_addr: format!("n{node_id}:7000"),
        }
    }

    #[test]
    fn leader_status_becomes_the_planners_view() {
        let status = NodeStatus {
            node_id: 1,
            cluster_id: "ns/c".into(),
            role: NodeRole::Leader,
            term: 4,
            leader_id: Some(1),
            leader_addr: Some("n1:7000".into()),
            last_log_index: Some(40),
            committed_index: Some(40),
            last_applied_index: Some(40),
            membership: MembershipView {
                voters: vec![member(1), member(2)],
                learners: vec![member(3)],
                joint: false,
                log_index: Some(12),
            },
            replication: Some(vec![
                MemberProgress {
                    node_id: 2,
                    matched_index: Some(40),
                    lag: 0,
                },
                MemberProgress {
                    node_id: 3,
                    matched_index: None,
                    lag: 40,
                },
            ]),
            storage: StorageStatus::default(),
            initialized: true,
            removed: false,
        };
        let view = view(&status);
        assert_eq!(view.role, Role::Leader);
        assert_eq!(view.membership.voters, [1, 2].into());
        assert_eq!(view.membership.learners, [3].into());
        assert_eq!(view.membership.log_index, Some(12));
        assert_eq!(view.lag, [(2, 0), (3, 40)].into());
        assert_eq!(view.committed_index, Some(40));
    }
}
