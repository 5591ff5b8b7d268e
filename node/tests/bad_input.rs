//! Bad input gets a clear 4xx with a JSON error, and the node keeps serving.

mod support;

use aspen_node::api::{ErrorBody, ErrorCode};
use aspen_node::client::http_client;
use aspen_node::network::CLUSTER_HEADER;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use support::TestCluster;

struct Raw {
    http: aspen_node::client::HttpClient,
    base: String,
}

impl Raw {
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: impl Into<Bytes>,
        headers: &[(&str, &str)],
    ) -> (u16, Bytes) {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .body(Full::new(body.into()))
            .unwrap();
        for (name, value) in headers {
            request.headers_mut().insert(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_str(value).unwrap(),
            );
        }
        let response = self.http.request(request).await.expect("the node answers");
        let status = response.status().as_u16();
        (
            status,
            response.into_body().collect().await.unwrap().to_bytes(),
        )
    }

    /// Sends and expects a JSON error with `status` and `code`.
    async fn expect(
        &self,
        method: Method,
        path: &str,
        body: impl Into<Bytes>,
        status: u16,
        code: ErrorCode,
    ) {
        let (got, bytes) = self.send(method.clone(), path, body, &[]).await;
        let error: ErrorBody = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{method} {path}: not a JSON error ({e}): {bytes:?}"));
        assert_eq!(
            (got, error.code),
            (status, code),
            "{method} {path}: {}",
            error.message
        );
        assert!(!error.message.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_4xx_json_errors_and_the_node_keeps_serving() {
    let mut cluster = TestCluster::new();
    cluster.start(1).await;
    cluster.client(1).init(&Default::default()).await.unwrap();
    cluster.wait_leader(&[1]).await;
    let raw = Raw {
        http: http_client(std::time::Duration::from_secs(1)),
        base: format!("http://{}", cluster.client_addr(1)),
    };
    use ErrorCode::*;

    // Malformed and mistyped bodies.
    raw.expect(Method::PUT, "/v1/kv/k", "{not json", 400, BadRequest)
        .await;
    raw.expect(Method::PUT, "/v1/kv/k", r#"{"value": 5}"#, 400, BadRequest)
        .await;
    raw.expect(
        Method::PUT,
        "/v1/kv/k",
        r#"{"value": "v", "ttl": 1}"#,
        400,
        BadRequest,
    )
    .await;
    raw.expect(Method::PUT, "/v1/kv/k", "", 400, BadRequest)
        .await;
    raw.expect(
        Method::PUT,
        "/v1/kv/k",
        &b"{\"value\": \"\xff\xfe\"}"[..],
        400,
        BadRequest,
    )
    .await;
    raw.expect(
        Method::POST,
        "/v1/txn",
        r#"{"success": [{"upsert": {"key": "a"}}]}"#,
        400,
        BadRequest,
    )
    .await;
    raw.expect(Method::POST, "/v1/txn", "{}", 400, BadRequest)
        .await;
    raw.expect(Method::POST, "/v1/cas", r#"{"key": "k"}"#, 400, BadRequest)
        .await;

    // Keys: empty, not UTF-8, too long.
    raw.expect(Method::GET, "/v1/kv/", "", 400, BadRequest)
        .await;
    raw.expect(Method::GET, "/v1/kv/%ff%fe", "", 400, BadRequest)
        .await;
    let long_key = "k".repeat(aspen_node::limits::MAX_KEY_BYTES + 1);
    raw.expect(
        Method::GET,
        &format!("/v1/kv/{long_key}"),
        "",
        413,
        TooLarge,
    )
    .await;

    // Values, commands and bodies over their limits.
    let big_value = format!(
        r#"{{"value": "{}"}}"#,
        "v".repeat(aspen_node::limits::MAX_VALUE_BYTES + 1)
    );
    raw.expect(Method::PUT, "/v1/kv/k", big_value, 413, TooLarge)
        .await;
    let huge_body = vec![b' '; aspen_node::limits::MAX_REQUEST_BODY_BYTES + 1];
    raw.expect(Method::PUT, "/v1/kv/k", huge_body, 413, TooLarge)
        .await;
    let ops: Vec<String> = (0..=aspen_node::limits::MAX_TXN_OPS)
        .map(|i| format!(r#"{{"delete": {{"key": "k{i}"}}}}"#))
        .collect();
    let many_ops = format!(r#"{{"success": [{}]}}"#, ops.join(","));
    raw.expect(Method::POST, "/v1/txn", many_ops, 413, TooLarge)
        .await;

    // Routes, methods and parameters.
    raw.expect(Method::GET, "/v2/kv/k", "", 404, NotFound).await;
    raw.expect(Method::POST, "/v1/kv/k", "", 405, MethodNotAllowed)
        .await;
    raw.expect(Method::GET, "/v1/kv?prefix=a&limit=0", "", 400, BadRequest)
        .await;
    raw.expect(
        Method::GET,
        "/v1/kv?prefix=a&limit=many",
        "",
        400,
        BadRequest,
    )
    .await;
    raw.expect(Method::GET, "/v1/kv?prefx=a", "", 400, BadRequest)
        .await;
    raw.expect(
        Method::GET,
        "/v1/kv/k?consistency=eventual",
        "",
        400,
        BadRequest,
    )
    .await;
    raw.expect(Method::GET, "/v1/kv/missing", "", 404, KeyNotFound)
        .await;

    // Admin requests that cannot be right.
    raw.expect(Method::POST, "/v1/admin/init", "", 409, AlreadyInitialized)
        .await;
    raw.expect(
        Method::POST,
        "/v1/admin/learners",
        r#"{"node_id": 0, "peer_addr": "a:1", "client_addr": "a:2"}"#,
        400,
        BadRequest,
    )
    .await;
    raw.expect(
        Method::POST,
        "/v1/admin/learners",
        r#"{"node_id": 9, "peer_addr": "nowhere", "client_addr": "a:2"}"#,
        400,
        BadRequest,
    )
    .await;
    raw.expect(
        Method::POST,
        "/v1/admin/membership",
        r#"{"add_voters": [42]}"#,
        409,
        InvalidMembership,
    )
    .await;
    raw.expect(
        Method::POST,
        "/v1/admin/membership",
        r#"{"remove_voters": [1]}"#,
        409,
        InvalidMembership,
    )
    .await;

    // A failed compare-and-swap is a 409 that says what the key holds.
    cluster.client(1).put("cas", "actual").await.unwrap();
    let (status, bytes) = raw
        .send(
            Method::POST,
            "/v1/cas",
            r#"{"key": "cas", "expected": "other", "value": "x"}"#,
            &[],
        )
        .await;
    let error: ErrorBody = serde_json::from_slice(&bytes).unwrap();
    assert_eq!((status, error.code), (409, CasFailed));
    assert_eq!(error.current.unwrap().value, "actual");

    // Peer RPCs from another cluster, without a cluster, or malformed.
    let peer = Raw {
        http: http_client(std::time::Duration::from_secs(1)),
        base: format!("http://{}", cluster.node(1).peer_addr()),
    };
    let (status, _) = peer
        .send(
            Method::POST,
            "/raft/vote",
            "x",
            &[(CLUSTER_HEADER, "other-cluster")],
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = peer.send(Method::POST, "/raft/append", "x", &[]).await;
    assert_eq!(status, 403);
    let (status, _) = peer
        .send(
            Method::POST,
            "/raft/append",
            &[0xffu8, 0xff, 0xff][..],
            &[(CLUSTER_HEADER, "test")],
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = peer
        .send(
            Method::POST,
            "/raft/nothing",
            "",
            &[(CLUSTER_HEADER, "test")],
        )
        .await;
    assert_eq!(status, 404);

    // Any token is a method to HTTP; each must not become a metrics series.
    for method in ["BREW", "WHEN"] {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        raw.expect(method, "/v1/kv/k", "", 405, MethodNotAllowed)
            .await;
    }

    // After all that, the node serves as before.
    let client = cluster.client(1);
    client.put("still", "serving").await.unwrap();
    let kv = client
        .get("still", aspen_node::api::Consistency::Linearizable)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kv.value, "serving");
    let (_, metrics) = client.get_text("/metrics").await.unwrap();
    assert!(
        metrics.contains(r#"aspen_http_requests_total{code="413""#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"code="405",method="other""#),
        "{metrics}"
    );
    assert!(!metrics.contains("BREW") && !metrics.contains("WHEN"));
    cluster.stop_all().await;
}
