//! The async client of Aspen's HTTP API, used by `aspenctl`, the operator and
//! the tests.
//!
//! A client holds several endpoints and tries them in turn: a request moves on
//! to the next endpoint when it could not be delivered, or when the node
//! answered that it could not serve it (`no_leader`, `unavailable`), which
//! happens before anything is proposed, so moving on never applies a write
//! twice. The endpoint that last answered is tried first next time.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

use crate::api::{
    AddLearnerRequest, CasRequest, CasResponse, ChangeMembershipRequest, Consistency,
    DeleteResponse, ErrorBody, ErrorCode, InitRequest, KeyValue, MembershipView, NodeStatus,
    PutRequest, PutResponse, RemoveLearnersRequest, ScanResponse, TransferLeaderRequest,
    TransferLeaderResponse, TxnRequest, TxnResponse,
};
use crate::limits::MAX_FORWARDED_RESPONSE_BYTES;

/// The pooled HTTP/1.1 client every part of Aspen uses.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A pooled HTTP/1.1 client with keep-alive, Nagle off and connect timeout.
pub fn http_client(connect_timeout: Duration) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(256)
        .build(connector)
}

/// Characters escaped in a key placed in a URL path: everything but
/// unreserved characters and `/`.
const KEY_ESCAPES: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// Percent-encodes a key or query value for a URL.
pub fn encode_component(text: &str) -> String {
    utf8_percent_encode(text, KEY_ESCAPES).to_string()
}

#[derive(Debug, Error)]
pub enum ClientError {
    /// The node answered with an error.
    #[error("{}: {} ({})", body.code_str(), body.message, status)]
    Api { status: u16, body: ErrorBody },
    /// No endpoint could be reached.
    #[error("cannot reach {endpoint}: {message}")]
    Transport { endpoint: String, message: String },
    /// The request did not complete within the client's timeout.
    #[error("no answer from {endpoint} within {timeout:?}")]
    Timeout { endpoint: String, timeout: Duration },
    /// The answer was not what the API promises.
    #[error("unexpected answer from {endpoint}: {message}")]
    Decode { endpoint: String, message: String },
    #[error("no endpoints given")]
    NoEndpoints,
}

impl ErrorBody {
    fn code_str(&self) -> String {
        serde_json::to_value(self.code)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("{:?}", self.code))
    }
}

impl ClientError {
    /// The API error code, when the node answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { body, .. } => Some(body.code),
            _ => None,
        }
    }

    /// Whether trying another endpoint may succeed and cannot apply twice.
    fn try_next(&self) -> bool {
        match self {
            ClientError::Transport { .. } => true,
            ClientError::Api { body, .. } => {
                matches!(body.code, ErrorCode::NoLeader | ErrorCode::Unavailable)
            }
            _ => false,
        }
    }
}

/// Client of one Aspen cluster (or one node, with one endpoint).
#[derive(Debug, Clone)]
pub struct AspenClient {
    endpoints: Arc<Vec<String>>,
    preferred: Arc<AtomicUsize>,
    http: HttpClient,
    timeout: Duration,
}

/// Normalises `host:port` or `http://host:port` to a base URL.
fn base_url(endpoint: &str) -> String {
    let trimmed = endpoint.trim().trim_end_matches('/');
    if trimmed.starts_with("http://") || trimmed.starts_with("https://") {
        trimmed.to_owned()
    } else {
        format!("http://{trimmed}")
    }
}

impl AspenClient {
    /// A client for `endpoints` (`host:port` or `http://host:port`), with a
    /// 10 second timeout per request.
    pub fn new(endpoints: Vec<String>) -> Self {
        AspenClient {
            endpoints: Arc::new(endpoints.iter().map(|e| base_url(e)).collect()),
            preferred: Arc::new(AtomicUsize::new(0)),
            http: http_client(Duration::from_secs(2)),
            timeout: Duration::from_secs(10),
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Sends one request, trying endpoints in turn as the module explains.
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Req>,
    ) -> Result<Resp, ClientError> {
        let body = match body {
            Some(b) => Bytes::from(serde_json::to_vec(b).expect("API types serialise to JSON")),
            None => Bytes::new(),
        };
        let count = self.endpoints.len();
        if count == 0 {
            return Err(ClientError::NoEndpoints);
        }
        let first = self.preferred.load(Ordering::Relaxed) % count;
        let mut last_error = None;
        for attempt in 0..count {
            let index = (first + attempt) % count;
            match self
                .call_one(&self.endpoints[index], &method, path, body.clone())
                .await
            {
                Ok(answer) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok(answer);
                }
                Err(e) if e.try_next() => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.expect("at least one endpoint was tried"))
    }

    async fn call_one<Resp: DeserializeOwned>(
        &self,
        endpoint: &str,
        method: &Method,
        path: &str,
        body: Bytes,
    ) -> Result<Resp, ClientError> {
        let (status, bytes) = self.raw(endpoint, method, path, body).await?;
        let decode_err = |e: serde_json::Error| ClientError::Decode {
            endpoint: endpoint.to_owned(),
            message: e.to_string(),
        };
        if status.is_success() {
            serde_json::from_slice(&bytes).map_err(decode_err)
        } else {
            let body: ErrorBody =
                serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
                    endpoint: endpoint.to_owned(),
                    message: format!(
                        "status {status} with a body that is not an Aspen error ({e}): {}",
                        String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                    ),
                })?;
            Err(ClientError::Api {
                status: status.as_u16(),
                body,
            })
        }
    }

    /// Sends a request to one endpoint and returns the status and body.
    async fn raw(
        &self,
        endpoint: &str,
        method: &Method,
        path: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let transport = |message: String| ClientError::Transport {
            endpoint: endpoint.to_owned(),
            message,
        };
        let mut request = Request::builder()
            .method(method.clone())
            .uri(format!("{endpoint}{path}"))
            .body(Full::new(body))
            .map_err(|e| transport(format!("invalid request: {e}")))?;
        request
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| transport(error_chain(&e)))?;
            let status = response.status();
            let bytes = Limited::new(response.into_body(), MAX_FORWARDED_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| transport(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok((status, bytes))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout {
                endpoint: endpoint.to_owned(),
                timeout: self.timeout,
            })?
    }

    /// Reads a key; `None` when it has no value.
    pub async fn get(
        &self,
        key: &str,
        consistency: Consistency,
    ) -> Result<Option<KeyValue>, ClientError> {
        let path = format!(
            "/v1/kv/{}{}",
            encode_component(key),
            consistency_query(consistency, '?')
        );
        match self.call::<(), KeyValue>(Method::GET, &path, None).await {
            Ok(kv) => Ok(Some(kv)),
            Err(e) if e.code() == Some(ErrorCode::KeyNotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn put(&self, key: &str, value: &str) -> Result<PutResponse, ClientError> {
        let path = format!("/v1/kv/{}", encode_component(key));
        let body = PutRequest {
            value: value.to_owned(),
        };
        self.call(Method::PUT, &path, Some(&body)).await
    }

    pub async fn delete(&self, key: &str) -> Result<DeleteResponse, ClientError> {
        let path = format!("/v1/kv/{}", encode_component(key));
        self.call::<(), _>(Method::DELETE, &path, None).await
    }

    /// One page of keys under `prefix`, after `cursor` when given.
    pub async fn scan(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: Option<u32>,
        consistency: Consistency,
    ) -> Result<ScanResponse, ClientError> {
        let mut path = format!("/v1/kv?prefix={}", encode_component(prefix));
        if let Some(cursor) = cursor {
            path.push_str(&format!("&cursor={}", encode_component(cursor)));
        }
        if let Some(limit) = limit {
            path.push_str(&format!("&limit={limit}"));
        }
        path.push_str(&consistency_query(consistency, '&'));
        self.call::<(), _>(Method::GET, &path, None).await
    }

    /// Compare-and-swap; a failed comparison is `Ok` with `succeeded: false`.
    pub async fn cas(&self, request: &CasRequest) -> Result<CasResponse, ClientError> {
        match self.call(Method::POST, "/v1/cas", Some(request)).await {
            Err(ClientError::Api { body, .. }) if body.code == ErrorCode::CasFailed => {
                Ok(CasResponse {
                    succeeded: false,
                    revision: 0,
                    current: body.current,
                })
            }
            other => other,
        }
    }

    pub async fn txn(&self, request: &TxnRequest) -> Result<TxnResponse, ClientError> {
        self.call(Method::POST, "/v1/txn", Some(request)).await
    }

    pub async fn status(&self) -> Result<NodeStatus, ClientError> {
        self.call::<(), _>(Method::GET, "/v1/admin/status", None)
            .await
    }

    pub async fn init(&self, request: &InitRequest) -> Result<MembershipView, ClientError> {
        self.call(Method::POST, "/v1/admin/init", Some(request))
            .await
    }

    pub async fn add_learner(
        &self,
        request: &AddLearnerRequest,
    ) -> Result<MembershipView, ClientError> {
        self.call(Method::POST, "/v1/admin/learners", Some(request))
            .await
    }

    pub async fn remove_learners(
        &self,
        request: &RemoveLearnersRequest,
    ) -> Result<MembershipView, ClientError> {
        self.call(Method::POST, "/v1/admin/remove-learners", Some(request))
            .await
    }

    pub async fn change_membership(
        &self,
        request: &ChangeMembershipRequest,
    ) -> Result<MembershipView, ClientError> {
        self.call(Method::POST, "/v1/admin/membership", Some(request))
            .await
    }

    pub async fn transfer_leader(
        &self,
        request: &TransferLeaderRequest,
    ) -> Result<TransferLeaderResponse, ClientError> {
        self.call(Method::POST, "/v1/admin/transfer-leader", Some(request))
            .await
    }

    /// Asks the node at the first endpoint to hand leadership away if it
    /// leads (used before stopping a node); not forwarded.
    pub async fn step_down(&self) -> Result<TransferLeaderResponse, ClientError> {
        self.call::<(), _>(Method::POST, "/v1/admin/step-down", None)
            .await
    }

    /// `GET` of a plain-text path (`/metrics`, `/readyz`) on the first
    /// endpoint: the status and body, whatever the status.
    pub async fn get_text(&self, path: &str) -> Result<(u16, String), ClientError> {
        let endpoint = self.endpoints.first().ok_or(ClientError::NoEndpoints)?;
        let (status, body) = self.raw(endpoint, &Method::GET, path, Bytes::new()).await?;
        Ok((status.as_u16(), String::from_utf8_lossy(&body).into_owned()))
    }
}

fn consistency_query(consistency: Consistency, separator: char) -> String {
    match consistency {
        Consistency::Linearizable => String::new(),
        Consistency::Stale => format!("{separator}consistency=stale"),
    }
}

/// An error and its sources, on one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_slashes_and_escape_the_rest() {
        assert_eq!(encode_component("a/b c?d%é"), "a/b%20c%3Fd%25%C3%A9");
        assert_eq!(encode_component("plain-key_1.~"), "plain-key_1.~");
    }

    #[test]
    fn endpoints_are_normalised_to_urls() {
        assert_eq!(base_url("127.0.0.1:7000"), "http://127.0.0.1:7000");
        assert_eq!(base_url("http://node:7000/"), "http://node:7000");
    }
}
