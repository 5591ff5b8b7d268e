//! `/healthz`, `/readyz` and `/metrics`.
//!
//! Liveness only says the process serves HTTP: a member that lost its leader
//! is healthy and must not be restarted for it. Readiness says the node can
//! usefully take client traffic: it is a member, a leader is known and was
//! heard from recently, and it has applied what it knows to be committed.

use http::StatusCode;
use serde_json::json;

use super::http::{Body, json, text};
use crate::node::NodeState;

/// A member is ready while it has applied all but this many committed entries.
pub const READY_MAX_APPLY_LAG: u64 = 1_000;

pub fn healthz() -> http::Response<Body> {
    json(StatusCode::OK, &json!({ "status": "ok" }))
}

pub async fn readyz(state: &NodeState) -> http::Response<Body> {
    let metrics = state.raft_metrics();
    let lease_ms = state.config.election_timeout_max_ms * 2;
    let (committed, heard_recently) = state
        .raft
        .with_raft_state(move |st| {
            let heard = st
                .vote_last_modified()
                .is_some_and(|t| t.elapsed() <= std::time::Duration::from_millis(lease_ms));
            (st.committed.map(|id| id.index), heard)
        })
        .await
        .unwrap_or((None, false));
    let applied = metrics.last_applied.map_or(0, |id| id.index);
    let is_leader = metrics.current_leader == Some(state.id);
    let problem = if state.is_removed() {
        Some("removed from the cluster".to_owned())
    } else if state.is_stopping() {
        Some("shutting down".to_owned())
    } else if metrics
        .membership_config
        .membership()
        .get_node(&state.id)
        .is_none()
    {
        Some("not a member of an initialised cluster".to_owned())
    } else if metrics.current_leader.is_none() {
        Some("no leader is known".to_owned())
    } else if !is_leader && !heard_recently {
        Some("the leader has not been heard from recently".to_owned())
    } else if applied + READY_MAX_APPLY_LAG < committed.unwrap_or(0) {
        Some(format!(
            "applied index {applied} is behind committed index {}",
            committed.unwrap_or(0)
        ))
    } else {
        None
    };
    match problem {
        None => json(StatusCode::OK, &json!({ "ready": true })),
        Some(reason) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "ready": false, "reason": reason }),
        ),
    }
}

pub fn metrics(state: &NodeState) -> http::Response<Body> {
    let body = state
        .metrics
        .render(&state.raft_metrics(), &state.reader.usage());
    text(StatusCode::OK, "text/plain; version=0.0.4", body)
}
