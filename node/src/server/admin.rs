//! The admin API the operator drives: initialise, add and remove learners,
//! change voters, transfer leadership, and status.
//!
//! Membership changes run on the leader; a follower forwards them. Leadership
//! transfer, which openraft 0.9 lacks, is done in these steps (each bounded):
//!
//! 1. the leader picks the target (asked for, or the most up-to-date voter)
//!    and waits for it to hold the whole log;
//! 2. every other voter pauses its elections (`/v1/admin/elections`);
//! 3. the leader stops heartbeats and new proposals, so followers' leader
//!    leases lapse after one election timeout;
//! 4. the target campaigns (`/v1/admin/campaign`) until it wins: with the
//!    others paused, only it can;
//! 5. elections resume everywhere and heartbeats are re-enabled.
//!
//! Every pause ends on its own timer, so a coordinator that dies half way
//! cannot leave the cluster unable to elect.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use http::StatusCode;
use http_body_util::Full;
use openraft::ChangeMembers;
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use serde::Serialize;
use tokio::time::Instant;

use super::http::{ApiError, parse_json};
use super::metrics::role_label;
use super::{Failure, Handled, ok};
use crate::api::{
    AddLearnerRequest, ChangeMembershipRequest, ErrorCode, InitRequest, Member, MemberProgress,
    MembershipView, NodeStatus, PauseElectionsRequest, RemoveLearnersRequest, RemovedNotice, Role,
    StorageStatus, TransferLeaderRequest, TransferLeaderResponse,
};
use crate::node::NodeState;
use crate::types::{Membership, NodeAddr, NodeId, RaftMetrics, is_voter};

/// Longest a blocking `add learner` waits for the learner to catch up.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);

pub fn membership_view(membership: &Membership, log_index: Option<u64>) -> MembershipView {
    let member = |id: NodeId| {
        let node = membership.get_node(&id).cloned().unwrap_or_default();
        Member {
            node_id: id,
            peer_addr: node.peer_addr,
            client_addr: node.client_addr,
        }
    };
    MembershipView {
        voters: membership.voter_ids().map(member).collect(),
        learners: membership.learner_ids().map(member).collect(),
        joint: membership.get_joint_config().len() > 1,
        log_index,
    }
}

fn role(metrics: &RaftMetrics) -> Role {
    match role_label(metrics) {
        "leader" => Role::Leader,
        "candidate" => Role::Candidate,
        "shutdown" => Role::Shutdown,
        "follower" => Role::Follower,
        _ => Role::Learner,
    }
}

/// Builds this node's status from Raft's metrics and the store.
pub async fn node_status(state: &NodeState) -> NodeStatus {
    let metrics = state.raft_metrics();
    let committed_index = state
        .raft
        .with_raft_state(|st| st.committed.map(|id| id.index))
        .await
        .unwrap_or(None);
    let last = metrics.last_log_index.unwrap_or(0);
    let replication = metrics.replication.as_ref().map(|replication| {
        replication
            .iter()
            .filter(|(id, _)| **id != state.id)
            .map(|(id, matched)| MemberProgress {
                node_id: *id,
                matched_index: matched.map(|m| m.index),
                lag: last.saturating_sub(matched.map_or(0, |m| m.index)),
            })
            .collect()
    });
    let usage = state.reader.usage();
    NodeStatus {
        node_id: state.id,
        cluster_id: state.cluster_id.clone(),
        role: if state.is_removed() {
            Role::Shutdown
        } else {
            role(&metrics)
        },
        term: metrics.current_term,
        leader_id: metrics.current_leader,
        leader_addr: metrics
            .current_leader
            .and_then(|id| state.client_addr_of(id)),
        last_log_index: metrics.last_log_index,
        committed_index,
        last_applied_index: metrics.last_applied.map(|id| id.index),
        membership: membership_view(
            metrics.membership_config.membership(),
            metrics.membership_config.log_id().map(|id| id.index),
        ),
        replication,
        storage: StorageStatus {
            backend: state.backend.to_owned(),
            file_bytes: usage.file_bytes,
            disk_bytes: usage.disk_bytes,
            max_bytes: usage.max_bytes,
            live_bytes: usage.live_bytes,
        },
        initialized: metrics.membership_config.log_id().is_some(),
        removed: state.is_removed(),
    }
}

pub async fn status(state: &NodeState) -> Handled {
    ok(&node_status(state).await)
}

fn check_member(member: &Member) -> Result<(), ApiError> {
    if member.node_id == 0 {
        return Err(ApiError::bad_request("node_id must be 1 or more"));
    }
    for (what, addr) in [
        ("peer_addr", &member.peer_addr),
        ("client_addr", &member.client_addr),
    ] {
        let valid = addr
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !valid {
            return Err(ApiError::bad_request(format!(
                "{what} of node {} must be host:port, not {addr:?}",
                member.node_id
            )));
        }
    }
    Ok(())
}

fn node_addr(member: &Member) -> NodeAddr {
    NodeAddr {
        peer_addr: member.peer_addr.clone(),
        client_addr: member.client_addr.clone(),
    }
}

/// Maps a failed membership write to an answer (or a forward).
fn write_failure(e: RaftError<NodeId, ClientWriteError<NodeId, NodeAddr>>) -> Failure {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            match (f.leader_id, f.leader_node) {
                (Some(leader), Some(node)) => Failure::Forward {
                    leader,
                    addr: node.client_addr,
                },
                _ => ApiError::new(ErrorCode::NoLeader, "no leader is known; retry shortly").into(),
            }
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ApiError::new(ErrorCode::InvalidMembership, e.to_string()).into()
        }
        RaftError::Fatal(e) => {
            ApiError::new(ErrorCode::Unavailable, format!("Raft has stopped: {e}")).into()
        }
    }
}

fn written_view(
    response: &openraft::raft::ClientWriteResponse<crate::types::TypeConfig>,
) -> Handled {
    let membership = response
        .membership
        .as_ref()
        .ok_or_else(|| ApiError::internal("a membership change returned no membership"))?;
    ok(&membership_view(membership, Some(response.log_id.index)))
}

pub async fn init(state: &NodeState, body: &[u8]) -> Handled {
    let request: InitRequest = if body.is_empty() {
        InitRequest::default()
    } else {
        parse_json(body)?
    };
    let mut members: BTreeMap<NodeId, NodeAddr> = BTreeMap::new();
    for member in &request.members {
        check_member(member)?;
        if members.insert(member.node_id, node_addr(member)).is_some() {
            return Err(
                ApiError::bad_request(format!("node {} is listed twice", member.node_id)).into(),
            );
        }
    }
    if members.is_empty() {
        members.insert(state.id, state.addr.clone());
    }
    if !members.contains_key(&state.id) {
        return Err(ApiError::bad_request(format!(
            "the initial members must include this node ({})",
            state.id
        ))
        .into());
    }
    let voters: BTreeSet<NodeId> = members.keys().copied().collect();
    match state.raft.initialize(members.clone()).await {
        Ok(()) => {
            tracing::info!(?voters, "cluster initialised");
            let membership = Membership::new(vec![voters], members);
            ok(&membership_view(&membership, None))
        }
        Err(RaftError::APIError(InitializeError::NotAllowed(e))) => Err(ApiError::new(
            ErrorCode::AlreadyInitialized,
            format!("this node already belongs to an initialised cluster: {e}"),
        )
        .into()),
        Err(RaftError::APIError(InitializeError::NotInMembers(e))) => {
            Err(ApiError::bad_request(e.to_string()).into())
        }
        Err(RaftError::Fatal(e)) => {
            Err(ApiError::new(ErrorCode::Unavailable, format!("Raft has stopped: {e}")).into())
        }
    }
}

pub async fn add_learner(state: &NodeState, body: &[u8]) -> Handled {
    let request: AddLearnerRequest = parse_json(body)?;
    let member = request.member();
    check_member(&member)?;
    let metrics = state.raft_metrics();
    if is_voter(metrics.membership_config.membership(), member.node_id) {
        return Err(ApiError::new(
            ErrorCode::InvalidMembership,
            format!("node {} is already a voter", member.node_id),
        )
        .into());
    }
    let call = state
        .raft
        .add_learner(member.node_id, node_addr(&member), false);
    let response = match tokio::time::timeout(state.config.request_timeout(), call).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => return Err(write_failure(e)),
        Err(_) => {
            return Err(ApiError::new(
                ErrorCode::Timeout,
                "adding the learner did not commit in time",
            )
            .into());
        }
    };
    tracing::info!(node = member.node_id, "learner added");
    if request.wait {
        wait_caught_up(state, member.node_id).await?;
    }
    written_view(&response)
}

/// Waits until `id` holds the leader's whole log as of now. (openraft's own
/// blocking add counts a learner within 5000 entries as caught up.)
async fn wait_caught_up(state: &NodeState, id: NodeId) -> Result<(), Failure> {
    let target = state.raft_metrics().last_log_index;
    state
        .raft
        .wait(Some(CATCH_UP_TIMEOUT))
        .metrics(
            |m| {
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&id).copied().flatten())
                    .map(|l| l.index);
                // Leadership lost: the caller must ask the new leader.
                m.replication.is_none() || matched >= target
            },
            "learner caught up",
        )
        .await
        .map_err(|_| {
            Failure::Api(ApiError::new(
                ErrorCode::Timeout,
                format!("node {id} did not catch up within {CATCH_UP_TIMEOUT:?}; it stays a learner and keeps catching up"),
            ))
        })?;
    if state.raft_metrics().current_leader != Some(state.id) {
        return Err(ApiError::new(
            ErrorCode::NoLeader,
            "leadership changed while the learner caught up; check status and retry",
        )
        .into());
    }
    tracing::info!(node = id, "learner caught up");
    Ok(())
}

/// Forwards to the leader unless this node leads.
fn leader_only(state: &NodeState, metrics: &RaftMetrics) -> Result<(), Failure> {
    match metrics.current_leader {
        Some(leader) if leader == state.id => Ok(()),
        Some(leader) => match state.client_addr_of(leader) {
            Some(addr) => Err(Failure::Forward { leader, addr }),
            None => {
                Err(ApiError::new(ErrorCode::NoLeader, "the leader's address is unknown").into())
            }
        },
        None => Err(ApiError::new(ErrorCode::NoLeader, "no leader is known; retry shortly").into()),
    }
}

pub async fn change_membership(state: &NodeState, body: &[u8]) -> Handled {
    let request: ChangeMembershipRequest = parse_json(body)?;
    let metrics = state.raft_metrics();
    leader_only(state, &metrics)?;
    let membership = metrics.membership_config.membership();
    for id in &request.add_voters {
        if membership.get_node(id).is_none() {
            return Err(ApiError::new(
                ErrorCode::InvalidMembership,
                format!("node {id} is not a member; add it as a learner first"),
            )
            .into());
        }
    }
    if let Some(id) = request
        .add_voters
        .iter()
        .find(|id| request.remove_voters.contains(id))
    {
        return Err(ApiError::bad_request(format!("node {id} is both added and removed")).into());
    }
    let mut voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    voters.extend(request.add_voters.iter().copied());
    for id in &request.remove_voters {
        voters.remove(id);
    }
    if voters.is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidMembership,
            "a cluster needs at least one voter",
        )
        .into());
    }
    let call = state.raft.change_membership(
        ChangeMembers::ReplaceAllVoters(voters.clone()),
        request.retain_as_learners,
    );
    match tokio::time::timeout(state.config.request_timeout(), call).await {
        Ok(Ok(response)) => {
            tracing::info!(?voters, "voters changed");
            notify_removed(state, membership, response.membership.as_ref());
            written_view(&response)
        }
        Ok(Err(e)) => Err(write_failure(e)),
        Err(_) => Err(ApiError::new(
            ErrorCode::Timeout,
            "the membership change did not commit in time; check status before retrying",
        )
        .into()),
    }
}

pub async fn remove_learners(state: &NodeState, body: &[u8]) -> Handled {
    let request: RemoveLearnersRequest = parse_json(body)?;
    let metrics = state.raft_metrics();
    leader_only(state, &metrics)?;
    let membership = metrics.membership_config.membership();
    if let Some(id) = request
        .node_ids
        .iter()
        .find(|id| is_voter(membership, **id))
    {
        return Err(ApiError::new(
            ErrorCode::InvalidMembership,
            format!("node {id} is a voter; remove it from the voters first"),
        )
        .into());
    }
    let ids: BTreeSet<NodeId> = request
        .node_ids
        .iter()
        .copied()
        .filter(|id| membership.get_node(id).is_some())
        .collect();
    if ids.is_empty() {
        let log_index = metrics.membership_config.log_id().map(|id| id.index);
        return ok(&membership_view(membership, log_index));
    }
    let call = state
        .raft
        .change_membership(ChangeMembers::RemoveNodes(ids.clone()), false);
    match tokio::time::timeout(state.config.request_timeout(), call).await {
        Ok(Ok(response)) => {
            tracing::info!(?ids, "learners removed");
            notify_removed(state, membership, response.membership.as_ref());
            written_view(&response)
        }
        Ok(Err(e)) => Err(write_failure(e)),
        Err(_) => {
            Err(ApiError::new(ErrorCode::Timeout, "the removal did not commit in time").into())
        }
    }
}

pub async fn transfer_leader(state: &NodeState, body: &[u8]) -> Handled {
    let request: TransferLeaderRequest = if body.is_empty() {
        TransferLeaderRequest::default()
    } else {
        parse_json(body)?
    };
    let metrics = state.raft_metrics();
    leader_only(state, &metrics)?;
    if request.to == Some(state.id) {
        return ok(&TransferLeaderResponse { leader: state.id });
    }
    let leader = transfer_leadership(state, request.to).await?;
    ok(&TransferLeaderResponse { leader })
}

/// Hands leadership away if this node leads; otherwise does nothing.
pub async fn step_down(state: &NodeState) -> Handled {
    let metrics = state.raft_metrics();
    if metrics.current_leader != Some(state.id) {
        let leader = metrics.current_leader.unwrap_or(0);
        return ok(&TransferLeaderResponse { leader });
    }
    let leader = transfer_leadership(state, None).await?;
    ok(&TransferLeaderResponse { leader })
}

pub async fn pause_elections(state: &NodeState, body: &[u8]) -> Handled {
    let request: PauseElectionsRequest = parse_json(body)?;
    if request.pause_ms == 0 {
        state.elections.resume(&state.raft);
    } else {
        state
            .elections
            .pause(&state.raft, Duration::from_millis(request.pause_ms));
    }
    ok(&request)
}

pub async fn campaign(state: &NodeState) -> Handled {
    let metrics = state.raft_metrics();
    if !is_voter(metrics.membership_config.membership(), state.id) {
        return Err(
            ApiError::new(ErrorCode::InvalidMembership, "only a voter can campaign").into(),
        );
    }
    state
        .raft
        .trigger()
        .elect()
        .await
        .map_err(|e| ApiError::new(ErrorCode::Unavailable, format!("Raft has stopped: {e}")))?;
    ok(&serde_json::json!({ "campaigning": state.id }))
}

/// Tells every node that `before` listed and `after` does not that it was
/// removed, so that it stops and its data never rejoins (best effort: a node
/// that is down learns nothing, and is refused by the cluster anyway).
fn notify_removed(state: &NodeState, before: &Membership, after: Option<&Membership>) {
    let Some(after) = after else { return };
    let notice = RemovedNotice {
        leader_addr: state.addr.client_addr.clone(),
    };
    for (id, node) in before.nodes() {
        if after.get_node(id).is_some() || *id == state.id {
            continue;
        }
        let (id, addr, http, notice) = (
            *id,
            node.client_addr.clone(),
            state.http.clone(),
            notice.clone(),
        );
        tokio::spawn(async move {
            let body = serde_json::to_vec(&notice).expect("notices serialise");
            for attempt in 0..3u64 {
                let request = http::Request::post(format!("http://{addr}/v1/admin/removed"))
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(Full::new(bytes::Bytes::from(body.clone())))
                    .expect("valid request");
                match tokio::time::timeout(Duration::from_secs(3), http.request(request)).await {
                    Ok(Ok(response)) if response.status() == StatusCode::OK => return,
                    _ => tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await,
                }
            }
            tracing::info!(
                node = id,
                "the removed node could not be told; it is refused by the cluster anyway"
            );
        });
    }
}

/// A leader says this node was removed: believe it once the leader's own
/// status confirms it leads this cluster without this node.
pub async fn removed_notice(state: &NodeState, body: &[u8]) -> Handled {
    let notice: RemovedNotice = parse_json(body)?;
    let leader = crate::client::AspenClient::new(vec![notice.leader_addr.clone()])
        .with_timeout(Duration::from_secs(3))
        .status()
        .await
        .map_err(|e| {
            ApiError::new(
                ErrorCode::Unavailable,
                format!("cannot confirm with {}: {e}", notice.leader_addr),
            )
        })?;
    let my_term = state.raft_metrics().current_term;
    let confirmed = leader.cluster_id == state.cluster_id
        && leader.role == Role::Leader
        && leader.term >= my_term
        && !leader.membership.contains(state.id);
    let Some(log_index) = leader.membership.log_index.filter(|_| confirmed) else {
        return Err(ApiError::new(
            ErrorCode::InvalidMembership,
            format!(
                "{} does not confirm that it leads this cluster without node {}",
                notice.leader_addr, state.id
            ),
        )
        .into());
    };
    state.mark_removed(log_index).await;
    ok(&serde_json::json!({ "removed": state.id }))
}

/// Whether another member answers `GET path` with 200 within a second.
async fn get_ok(state: &NodeState, addr: &str, path: &str) -> bool {
    let Ok(request) =
        http::Request::get(format!("http://{addr}{path}")).body(Full::new(bytes::Bytes::new()))
    else {
        return false;
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), state.http.request(request)).await,
        Ok(Ok(response)) if response.status() == StatusCode::OK
    )
}

/// Best-effort `POST` of `body` to another member's client API.
async fn post_to<T: Serialize>(
    state: &NodeState,
    addr: &str,
    path: &str,
    body: &T,
) -> Result<(), String> {
    let bytes = serde_json::to_vec(body).expect("admin requests serialise");
    let request = http::Request::post(format!("http://{addr}{path}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(bytes::Bytes::from(bytes)))
        .map_err(|e| e.to_string())?;
    let call = state.http.request(request);
    match tokio::time::timeout(Duration::from_secs(2), call).await {
        Ok(Ok(response)) if response.status() == StatusCode::OK => Ok(()),
        Ok(Ok(response)) => Err(format!("status {}", response.status())),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 2s".into()),
    }
}

/// Asks each of `ids` to pause its elections for `pause_ms` (0: resume).
/// Best effort: a pause ends on its own timer anyway.
async fn pause_elections_on(
    state: &NodeState,
    membership: &Membership,
    ids: &[NodeId],
    pause_ms: u64,
) {
    let request = PauseElectionsRequest { pause_ms };
    for id in ids {
        let Some(node) = membership.get_node(id) else {
            continue;
        };
        if let Err(e) = post_to(state, &node.client_addr, "/v1/admin/elections", &request).await {
            tracing::warn!(node = id, pause_ms, error = %e, "could not change elections on a voter");
        }
    }
}

/// Transfers leadership from this node (the leader) to `to`, or to the most
/// up-to-date other voter, as the module documentation describes. Returns
/// the new leader.
pub async fn transfer_leadership(
    state: &NodeState,
    to: Option<NodeId>,
) -> Result<NodeId, ApiError> {
    let metrics = state.raft_metrics();
    let membership = metrics.membership_config.membership().clone();
    let others: Vec<NodeId> = membership
        .voter_ids()
        .filter(|id| *id != state.id)
        .collect();
    let matched = |m: &RaftMetrics, id: NodeId| {
        m.replication
            .as_ref()
            .and_then(|r| r.get(&id).copied().flatten())
            .map(|l| l.index)
    };
    let target = match to {
        Some(id) if others.contains(&id) => id,
        Some(id) => {
            return Err(ApiError::new(
                ErrorCode::InvalidMembership,
                format!("node {id} is not another voter of this cluster"),
            ));
        }
        None => {
            // The most up-to-date voter that answers.
            let mut candidates = others.clone();
            candidates.sort_by_key(|id| std::cmp::Reverse(matched(&metrics, *id)));
            let mut chosen = None;
            for id in candidates {
                let Some(node) = membership.get_node(&id) else {
                    continue;
                };
                if get_ok(state, &node.client_addr, "/healthz").await {
                    chosen = Some(id);
                    break;
                }
            }
            chosen.ok_or_else(|| {
                ApiError::new(
                    ErrorCode::Unavailable,
                    "no other voter answers; leadership stays here",
                )
            })?
        }
    };
    let timeout_max = Duration::from_millis(state.config.election_timeout_max_ms);
    let pause = timeout_max * 6;
    let deadline = Instant::now() + pause;
    tracing::info!(target, "handing leadership over");

    state.elections.set_transferring(true);
    // 1. The target must hold the whole log before it can win.
    let caught_up = state
        .raft
        .wait(Some(timeout_max * 2))
        .metrics(
            |m| m.last_log_index.is_some() && matched(m, target) == m.last_log_index,
            "target caught up",
        )
        .await
        .is_ok();
    if !caught_up {
        state.elections.set_transferring(false);
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            format!("node {target} did not catch up with the log; leadership stays here"),
        ));
    }
    // 2. Only the target may campaign.
    let others_but_target: Vec<NodeId> =
        others.iter().copied().filter(|id| *id != target).collect();
    let pause_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX);
    pause_elections_on(state, &membership, &others_but_target, pause_ms).await;
    state.elections.pause(&state.raft, pause);
    // 3. Let the followers' leases lapse.
    state.raft.runtime_config().heartbeat(false);
    // 4. The target campaigns until it wins.
    let target_addr = membership
        .get_node(&target)
        .map(|n| n.client_addr.clone())
        .unwrap_or_default();
    let mut won = false;
    while Instant::now() < deadline {
        if let Err(e) = post_to(state, &target_addr, "/v1/admin/campaign", &()).await {
            // A target that stopped answering (it is shutting down too, say)
            // will not win: give up now rather than at the deadline.
            tracing::info!(target, error = %e, "the transfer target does not answer");
            break;
        }
        let wait = timeout_max.min(deadline.saturating_duration_since(Instant::now()));
        won = state
            .raft
            .wait(Some(wait))
            .metrics(|m| m.current_leader == Some(target), "target leads")
            .await
            .is_ok();
        if won {
            break;
        }
    }
    // 5. Back to normal everywhere.
    state.raft.runtime_config().heartbeat(true);
    state.elections.resume(&state.raft);
    state.elections.set_transferring(false);
    pause_elections_on(state, &membership, &others_but_target, 0).await;
    if won {
        tracing::info!(target, "leadership handed over");
        Ok(target)
    } else {
        Err(ApiError::new(
            ErrorCode::Unavailable,
            format!("node {target} did not win an election within {pause:?}"),
        ))
    }
}
