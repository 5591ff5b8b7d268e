//! What a write or a read must pass before it reaches Raft: limits, the
//! storage budget, a leadership transfer in progress. Then the batcher.

use super::Failure;
use super::http::ApiError;
use super::metrics::Proposal;
use crate::api::{Consistency, ErrorCode};
use crate::limits::LimitError;
use crate::node::NodeState;
use crate::types::{Command, Response};

pub fn limit_error(e: LimitError) -> Failure {
    let code = if e.is_too_large() {
        ErrorCode::TooLarge
    } else {
        ErrorCode::BadRequest
    };
    Failure::Api(ApiError::new(code, e.to_string()))
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
    let result = state.batcher.write(command).await;
    state.metrics.proposal(match &result {
        Ok(_) => Proposal::Committed,
        Err(Failure::Forward { .. }) => Proposal::Forwarded,
        Err(Failure::Api(e)) => match e.code {
            ErrorCode::NoLeader => Proposal::NoLeader,
            ErrorCode::Timeout => Proposal::Timeout,
            _ => Proposal::Failed,
        },
    });
    result
}

/// Makes a read at `consistency` safe to serve from this node's state
/// machine: for a linearizable read, leadership is confirmed with a quorum
/// and everything committed before the read is applied here first.
pub async fn read_barrier(state: &NodeState, consistency: Consistency) -> Result<(), Failure> {
    if consistency == Consistency::Stale {
        return Ok(());
    }
    refuse_during_transfer(state)?;
    state.batcher.read_barrier().await
}
