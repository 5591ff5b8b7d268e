//! Raft RPC between members: openraft's `RaftNetwork` over HTTP/1.1 on the
//! peer port.
//!
//! Each RPC is a `POST /raft/{append,vote,snapshot}` whose body is the openraft
//! request encoded with postcard, and whose `x-aspen-cluster` header names the
//! sender's cluster; the answer is the postcard-encoded
//! `Result<response, RaftError>`. Connections are pooled and reused. Snapshots
//! travel in chunks of `limits::SNAPSHOT_CHUNK_BYTES` (openraft's chunked
//! transfer), so neither side holds a whole snapshot in memory.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::client::{HttpClient, error_chain, http_client};
use crate::limits::MAX_PEER_BODY_BYTES;
use crate::server::metrics::Metrics;
use crate::types::{NodeAddr, NodeId, TypeConfig};

/// Header carrying the sender's cluster id on every peer RPC.
pub const CLUSTER_HEADER: &str = "x-aspen-cluster";
/// Content type of peer RPC bodies.
pub const PEER_CONTENT_TYPE: &str = "application/x-aspen-raft";

pub const APPEND_PATH: &str = "/raft/append";
pub const VOTE_PATH: &str = "/raft/vote";
pub const SNAPSHOT_PATH: &str = "/raft/snapshot";

/// Creates connections to peers; one per target, sharing one HTTP pool.
#[derive(Debug, Clone)]
pub struct PeerNetwork {
    http: HttpClient,
    cluster_id: HeaderValue,
    metrics: Arc<Metrics>,
}

impl PeerNetwork {
    pub fn new(cluster_id: &str, metrics: Arc<Metrics>) -> Self {
        PeerNetwork {
            http: http_client(Duration::from_millis(500)),
            cluster_id: HeaderValue::from_str(cluster_id).expect("cluster ids are validated ASCII"),
            metrics,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> PeerConnection {
        PeerConnection {
            network: self.clone(),
            target,
            base: format!("http://{}", node.peer_addr),
        }
    }
}

/// RPCs to one peer.
#[derive(Debug)]
pub struct PeerConnection {
    network: PeerNetwork,
    target: NodeId,
    base: String,
}

/// How an RPC failed before the peer could answer it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct PeerError(String);

impl PeerConnection {
    async fn call<Req, Resp, E>(
        &self,
        rpc: &'static str,
        path: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<NodeId, NodeAddr, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let fail = |kind: &str, message: String| {
            self.network.metrics.peer_rpc_error(rpc, kind);
            PeerError(format!(
                "{rpc} to node {} at {}: {message}",
                self.target, self.base
            ))
        };
        let body = postcard::to_allocvec(request).expect("Raft messages encode with postcard");
        let mut http_request = Request::post(format!("{}{path}", self.base))
            .body(Full::new(Bytes::from(body)))
            .expect("peer URLs are valid");
        let headers = http_request.headers_mut();
        headers.insert(CLUSTER_HEADER, self.network.cluster_id.clone());
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(PEER_CONTENT_TYPE));

        let exchange = async {
            let response = self.network.http.request(http_request).await.map_err(|e| {
                let e = fail("unreachable", error_chain(&e));
                RPCError::Unreachable(Unreachable::new(&e))
            })?;
            let status = response.status();
            let bytes = Limited::new(response.into_body(), MAX_PEER_BODY_BYTES)
                .collect()
                .await
                .map_err(|e| RPCError::Network(NetworkError::new(&fail("network", e.to_string()))))?
                .to_bytes();
            if status != StatusCode::OK {
                let kind = if status == StatusCode::FORBIDDEN {
                    "wrong_cluster"
                } else {
                    "refused"
                };
                let text = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
                return Err(RPCError::Unreachable(Unreachable::new(&fail(
                    kind,
                    format!("status {status}: {text}"),
                ))));
            }
            let answer: Result<Resp, RaftError<NodeId, E>> =
                postcard::from_bytes(&bytes).map_err(|e| {
                    RPCError::Network(NetworkError::new(&fail("decode", e.to_string())))
                })?;
            answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => {
                let e = fail("timeout", format!("no answer within {timeout:?}"));
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeAddr, RaftError<NodeId>>> {
        self.call("append", APPEND_PATH, &rpc, option.hard_ttl())
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, NodeAddr, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call("snapshot", SNAPSHOT_PATH, &rpc, option.hard_ttl())
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeAddr, RaftError<NodeId>>> {
        self.call("vote", VOTE_PATH, &rpc, option.hard_ttl()).await
    }
}
