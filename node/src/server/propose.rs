//! Putting commands through Raft and confirming reads: admission checks,
//! waiting out elections, and deciding when to forward to the leader.

use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use tokio::time::Instant;

use super::Failure;
use super::http::ApiError;
use super::metrics::Proposal;
use crate::api::{Consistency, ErrorCode};
use crate::limits::LimitError;
use crate::node::NodeState;
use crate::types::{Command, NodeAddr, NodeId, Response};

pub fn limit_error(e: LimitError) -> Failure {
    let code = if e.is_too_large() {
        ErrorCode::TooLarge
    } else {
        ErrorCode::BadRequest
    };
    Failure::Api(ApiError::new(code, e.to_string()))
}

fn no_leader(state: &NodeState) -> Failure {
    Failure::Api(ApiError::new(
        ErrorCode::NoLeader,
        format!(
            "no leader was elected within {:?}; the cluster may have lost its quorum",
            state.config.leader_wait()
        ),
    ))
}

fn timed_out(state: &NodeState) -> Failure {
    Failure::Api(ApiError::new(
        ErrorCode::Timeout,
        format!(
            "not completed within {:?}; it may or may not have been applied",
            state.config.request_timeout()
        ),
    ))
}

fn stopped(e: impl std::fmt::Display) -> Failure {
    Failure::Api(ApiError::new(
        ErrorCode::Unavailable,
        format!("Raft has stopped on this node: {e}"),
    ))
}

/// What to do about a `ForwardToLeader`: forward, or wait for an election.
fn forward_or_wait(f: ForwardToLeader<NodeId, NodeAddr>) -> Option<Failure> {
    match (f.leader_id, f.leader_node) {
        (Some(leader), Some(node)) => Some(Failure::Forward {
            leader,
            addr: node.client_addr,
        }),
        _ => None,
    }
}

/// Waits, at most until `deadline` and one election's time, for a leader.
async fn wait_for_leader(state: &NodeState, deadline: Instant) -> Result<(), Failure> {
    let wait = state
        .config
        .leader_wait()
        .min(deadline.saturating_duration_since(Instant::now()));
    state
        .raft
        .wait(Some(wait))
        .metrics(|m| m.current_leader.is_some(), "a leader is known")
        .await
        .map(drop)
        .map_err(|_| no_leader(state))
}

fn refuse_during_transfer(state: &NodeState) -> Result<(), Failure> {
    if state.elections.transferring() {
        return Err(Failure::Api(ApiError::new(
            ErrorCode::Unavailable,
            "leadership is being handed over; retry shortly",
        )));
    }
    Ok(())
}

/// Proposes `command` and waits until it is applied; or says where the
/// leader is.
pub async fn propose(state: &NodeState, command: Command) -> Result<Response, Failure> {
    if let Err(e) = command.validate() {
        state.metrics.proposal(Proposal::Rejected);
        return Err(limit_error(e));
    }
    if command.may_grow_storage() {
        let usage = state.reader.usage();
        if !usage.admits(command.payload_bytes()) {
            state.metrics.proposal(Proposal::StorageFull);
            return Err(Failure::Api(ApiError::new(
                ErrorCode::StorageFull,
                format!(
                    "storage full: {} bytes of data stored, the limit of {} bytes allows {}%; delete keys or raise the limit",
                    usage.live_bytes,
                    usage.max_bytes,
                    crate::limits::LIVE_DATA_PERCENT_OF_LIMIT
                ),
            )));
        }
    }
    refuse_during_transfer(state)?;
    let deadline = Instant::now() + state.config.request_timeout();
    loop {
        let write = state.raft.client_write(command.clone());
        match tokio::time::timeout_at(deadline, write).await {
            Err(_) => {
                state.metrics.proposal(Proposal::Timeout);
                return Err(timed_out(state));
            }
            Ok(Ok(written)) => {
                state.metrics.proposal(Proposal::Committed);
                return Ok(written.data);
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                if let Some(forward) = forward_or_wait(f) {
                    state.metrics.proposal(Proposal::Forwarded);
                    return Err(forward);
                }
                if let Err(e) = wait_for_leader(state, deadline).await {
                    state.metrics.proposal(Proposal::NoLeader);
                    return Err(e);
                }
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                state.metrics.proposal(Proposal::Failed);
                return Err(Failure::Api(ApiError::internal(e.to_string())));
            }
            Ok(Err(RaftError::Fatal(e))) => {
                state.metrics.proposal(Proposal::Failed);
                return Err(stopped(e));
            }
        }
    }
}

/// Makes a read at `consistency` safe to serve from this node's state
/// machine: for a linearizable read, confirms leadership with a quorum and
/// waits until everything committed before the read is applied.
pub async fn read_barrier(state: &NodeState, consistency: Consistency) -> Result<(), Failure> {
    if consistency == Consistency::Stale {
        return Ok(());
    }
    refuse_during_transfer(state)?;
    let deadline = Instant::now() + state.config.request_timeout();
    loop {
        match tokio::time::timeout_at(deadline, state.raft.ensure_linearizable()).await {
            Err(_) => return Err(timed_out(state)),
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                if let Some(forward) = forward_or_wait(f) {
                    return Err(forward);
                }
                wait_for_leader(state, deadline).await?;
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)))) => {
                return Err(Failure::Api(ApiError::new(
                    ErrorCode::NoLeader,
                    format!("the leader could not confirm its leadership with a quorum: {e}"),
                )));
            }
            Ok(Err(RaftError::Fatal(e))) => return Err(stopped(e)),
        }
    }
}
