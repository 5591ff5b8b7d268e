//! The peer listener: Raft RPC from other members (`network` is the sender).
//!
//! Traffic whose `x-aspen-cluster` header names another cluster is refused
//! with 403 before its body is decoded, so two clusters sharing a network,
//! or a member pointed at the wrong peers, cannot corrupt each other.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Serialize;

use super::http::{Body, read_body, text};
use crate::limits::MAX_PEER_BODY_BYTES;
use crate::network::{APPEND_PATH, CLUSTER_HEADER, PEER_CONTENT_TYPE, SNAPSHOT_PATH, VOTE_PATH};
use crate::node::NodeState;

fn refuse(status: StatusCode, message: String) -> Response<Body> {
    text(status, "text/plain; charset=utf-8", message)
}

fn answer<T: Serialize>(value: &T) -> Response<Body> {
    let bytes = postcard::to_allocvec(value).expect("Raft messages encode with postcard");
    let mut response = Response::new(http_body_util::Full::new(Bytes::from(bytes)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(PEER_CONTENT_TYPE),
    );
    response
}

fn malformed(e: postcard::Error) -> Response<Body> {
    refuse(
        StatusCode::BAD_REQUEST,
        format!("malformed Raft message: {e}"),
    )
}

/// Serves one peer RPC.
pub async fn handle_peer(state: Arc<NodeState>, req: Request<Incoming>) -> Response<Body> {
    let started = std::time::Instant::now();
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let response = serve(&state, req).await;
    let route = match path.as_str() {
        APPEND_PATH | VOTE_PATH | SNAPSHOT_PATH => path.as_str(),
        _ => "unmatched",
    };
    state.metrics.observe_request(
        route,
        method.as_str(),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

async fn serve(state: &NodeState, req: Request<Incoming>) -> Response<Body> {
    let sender = req
        .headers()
        .get(CLUSTER_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if sender.as_deref() != Some(state.cluster_id.as_str()) {
        return refuse(
            StatusCode::FORBIDDEN,
            format!(
                "this node belongs to cluster {:?}; the request came from cluster {:?}",
                state.cluster_id,
                sender.unwrap_or_default()
            ),
        );
    }
    if state.is_removed() {
        return refuse(
            StatusCode::GONE,
            format!("node {} was removed from the cluster", state.id),
        );
    }
    if req.method() != Method::POST {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, "peer RPCs are POSTs".into());
    }
    let path = req.uri().path().to_owned();
    let body = match read_body(req.into_body(), MAX_PEER_BODY_BYTES).await {
        Ok(body) => body,
        Err(e) => return e.into_response(),
    };
    let raft = &state.raft;
    match path.as_str() {
        APPEND_PATH => match postcard::from_bytes(&body) {
            Ok(rpc) => answer(&raft.append_entries(rpc).await),
            Err(e) => malformed(e),
        },
        VOTE_PATH => match postcard::from_bytes(&body) {
            Ok(rpc) => answer(&raft.vote(rpc).await),
            Err(e) => malformed(e),
        },
        SNAPSHOT_PATH => match postcard::from_bytes(&body) {
            Ok(rpc) => answer(&raft.install_snapshot(rpc).await),
            Err(e) => malformed(e),
        },
        other => refuse(StatusCode::NOT_FOUND, format!("no peer RPC at {other}")),
    }
}
