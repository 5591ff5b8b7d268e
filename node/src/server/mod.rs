//! The client listener: routing, forwarding to the leader, and per-route
//! metrics. The handlers live in `kv`, `admin` and `health`; Raft RPC from
//! peers is served on the other listener by `raft`.

pub mod admin;
pub mod batcher;
pub mod elections;
pub mod health;
pub mod http;
pub mod kv;
pub mod metrics;
mod propose;
pub mod raft;

use std::sync::Arc;
use std::time::Instant;

use ::http::header::{CONTENT_TYPE, HeaderValue};
use ::http::request::Parts;
use ::http::{Method, Request, Response, StatusCode};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use self::http::{ApiError, Body};
use crate::api::ErrorCode;
use crate::limits::{MAX_FORWARDED_RESPONSE_BYTES, MAX_REQUEST_BODY_BYTES};
use crate::node::NodeState;
use crate::types::NodeId;

/// Header a node adds when it forwards a request to the leader; a node never
/// forwards a request that carries it, so a stale leader hint cannot loop.
pub const FORWARDED_HEADER: &str = "x-aspen-forwarded-by";

/// Why a handler did not answer by itself.
#[derive(Debug, Clone)]
pub enum Failure {
    Api(ApiError),
    /// Only the leader can serve this; it is `leader`, at client address `addr`.
    Forward {
        leader: NodeId,
        addr: String,
    },
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Failure::Api(e)
    }
}

pub type Handled = Result<Response<Body>, Failure>;

/// The client API's routes. `label` names each for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Healthz,
    Readyz,
    Metrics,
    Key,
    Scan,
    Cas,
    Txn,
    Status,
    Init,
    Learners,
    RemoveLearners,
    Membership,
    TransferLeader,
    StepDown,
    Elections,
    Campaign,
    Removed,
    NotFound,
}

impl Route {
    fn of(path: &str) -> Route {
        match path {
            "/healthz" => Route::Healthz,
            "/readyz" => Route::Readyz,
            "/metrics" => Route::Metrics,
            "/v1/kv" => Route::Scan,
            "/v1/cas" => Route::Cas,
            "/v1/txn" => Route::Txn,
            "/v1/admin/status" => Route::Status,
            "/v1/admin/init" => Route::Init,
            "/v1/admin/learners" => Route::Learners,
            "/v1/admin/remove-learners" => Route::RemoveLearners,
            "/v1/admin/membership" => Route::Membership,
            "/v1/admin/transfer-leader" => Route::TransferLeader,
            "/v1/admin/step-down" => Route::StepDown,
            "/v1/admin/elections" => Route::Elections,
            "/v1/admin/campaign" => Route::Campaign,
            "/v1/admin/removed" => Route::Removed,
            p if p.starts_with("/v1/kv/") => Route::Key,
            _ => Route::NotFound,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Route::Healthz => "/healthz",
            Route::Readyz => "/readyz",
            Route::Metrics => "/metrics",
            Route::Key => "/v1/kv/{key}",
            Route::Scan => "/v1/kv",
            Route::Cas => "/v1/cas",
            Route::Txn => "/v1/txn",
            Route::Status => "/v1/admin/status",
            Route::Init => "/v1/admin/init",
            Route::Learners => "/v1/admin/learners",
            Route::RemoveLearners => "/v1/admin/remove-learners",
            Route::Membership => "/v1/admin/membership",
            Route::TransferLeader => "/v1/admin/transfer-leader",
            Route::StepDown => "/v1/admin/step-down",
            Route::Elections => "/v1/admin/elections",
            Route::Campaign => "/v1/admin/campaign",
            Route::Removed => "/v1/admin/removed",
            Route::NotFound => "unmatched",
        }
    }

    /// Routes that need Raft: refused once the node is removed or stopping.
    fn needs_raft(self) -> bool {
        !matches!(
            self,
            Route::Healthz | Route::Readyz | Route::Metrics | Route::Status | Route::NotFound
        )
    }
}

/// Serves one request on the client listener.
pub async fn handle_client(state: Arc<NodeState>, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let route = Route::of(parts.uri.path());
    let response = match http::read_body(body, MAX_REQUEST_BODY_BYTES).await {
        Ok(body) => match dispatch(&state, route, &parts, &body).await {
            Ok(response) => response,
            Err(Failure::Api(e)) => e.into_response(),
            Err(Failure::Forward { leader, addr }) => {
                forward(&state, &parts, body, leader, addr).await
            }
        },
        Err(e) => e.into_response(),
    };
    state.metrics.observe_request(
        route.label(),
        parts.method.as_str(),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

fn method_not_allowed(allowed: &str) -> Failure {
    Failure::Api(ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("this route accepts {allowed}"),
    ))
}

async fn dispatch(state: &Arc<NodeState>, route: Route, parts: &Parts, body: &Bytes) -> Handled {
    if route.needs_raft() {
        if state.is_removed() {
            return Err(ApiError::new(
                ErrorCode::Removed,
                format!(
                    "node {} was removed from the cluster and serves nothing",
                    state.id
                ),
            )
            .into());
        }
        if state.is_stopping() {
            return Err(ApiError::new(ErrorCode::Unavailable, "the node is shutting down").into());
        }
    }
    let query = parts.uri.query();
    let method = &parts.method;
    match (route, method) {
        (Route::Healthz, &Method::GET) => Ok(health::healthz()),
        (Route::Readyz, &Method::GET) => Ok(health::readyz(state).await),
        (Route::Metrics, &Method::GET) => Ok(health::metrics(state)),
        (Route::Key, &Method::GET) => kv::get(state, parts.uri.path(), query).await,
        (Route::Key, &Method::PUT) => kv::put(state, parts.uri.path(), query, body).await,
        (Route::Key, &Method::DELETE) => kv::delete(state, parts.uri.path(), query).await,
        (Route::Key, _) => Err(method_not_allowed("GET, PUT and DELETE")),
        (Route::Scan, &Method::GET) => kv::scan(state, query).await,
        (Route::Cas, &Method::POST) => kv::cas(state, body).await,
        (Route::Txn, &Method::POST) => kv::txn(state, body).await,
        (Route::Status, &Method::GET) => admin::status(state).await,
        (Route::Init, &Method::POST) => admin::init(state, body).await,
        (Route::Learners, &Method::POST) => admin::add_learner(state, body).await,
        (Route::RemoveLearners, &Method::POST) => admin::remove_learners(state, body).await,
        (Route::Membership, &Method::POST) => admin::change_membership(state, body).await,
        (Route::TransferLeader, &Method::POST) => admin::transfer_leader(state, body).await,
        (Route::StepDown, &Method::POST) => admin::step_down(state).await,
        (Route::Elections, &Method::POST) => admin::pause_elections(state, body).await,
        (Route::Campaign, &Method::POST) => admin::campaign(state).await,
        (Route::Removed, &Method::POST) => admin::removed_notice(state, body).await,
        (Route::NotFound, _) => Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no route {} {}; see docs/api.md", method, parts.uri.path()),
        )
        .into()),
        (Route::Healthz | Route::Readyz | Route::Metrics | Route::Scan | Route::Status, _) => {
            Err(method_not_allowed("GET"))
        }
        _ => Err(method_not_allowed("POST")),
    }
}

/// Sends the request on to the leader and relays its answer. A request that
/// was already forwarded once is refused instead, with the leader named.
async fn forward(
    state: &NodeState,
    parts: &Parts,
    body: Bytes,
    leader: NodeId,
    addr: String,
) -> Response<Body> {
    if parts.headers.contains_key(FORWARDED_HEADER) {
        return ApiError::new(
            ErrorCode::NoLeader,
            format!("node {} is not the leader; node {leader} is", state.id),
        )
        .with_leader(Some(addr))
        .into_response();
    }
    let path = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |p| p.as_str());
    let mut request = Request::builder()
        .method(parts.method.clone())
        .uri(format!("http://{addr}{path}"))
        .body(Full::new(body))
        .expect("a request built from a valid one is valid");
    let headers = request.headers_mut();
    headers.insert(
        FORWARDED_HEADER,
        HeaderValue::from_str(&state.id.to_string()).expect("digits are a valid header"),
    );
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));

    let timeout = state.config.request_timeout() + std::time::Duration::from_secs(1);
    let exchange = async {
        let response = state.http.request(request).await.map_err(|e| {
            if e.is_connect() {
                // Nothing was sent: the client may safely retry elsewhere.
                ApiError::new(
                    ErrorCode::NoLeader,
                    format!("the leader (node {leader} at {addr}) is unreachable: {e}"),
                )
            } else {
                ApiError::new(
                    ErrorCode::Timeout,
                    format!("the leader (node {leader} at {addr}) did not answer; the request may or may not have been applied: {e}"),
                )
            }
        })?;
        let (parts, body) = response.into_parts();
        let bytes = Limited::new(body, MAX_FORWARDED_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| ApiError::internal(format!("reading the leader's answer: {e}")))?
            .to_bytes();
        let mut relayed = Response::new(Full::new(bytes));
        *relayed.status_mut() = parts.status;
        if let Some(content_type) = parts.headers.get(CONTENT_TYPE) {
            relayed
                .headers_mut()
                .insert(CONTENT_TYPE, content_type.clone());
        }
        Ok::<_, ApiError>(relayed)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => e.into_response(),
        Err(_) => ApiError::new(
            ErrorCode::Timeout,
            format!("the leader (node {leader}) did not answer within {timeout:?}; the request may or may not have been applied"),
        )
        .into_response(),
    }
}

/// Builds a JSON `200 OK`.
pub fn ok<T: serde::Serialize>(value: &T) -> Handled {
    Ok(http::json(StatusCode::OK, value))
}
