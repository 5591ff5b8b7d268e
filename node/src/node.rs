//! A running node: configuration to storage to openraft to the two HTTP
//! listeners, and the orderly way back down.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::client::{HttpClient, http_client};
use crate::config::{ConfigError, NodeConfig};
use crate::network::PeerNetwork;
use crate::server::batcher::{Batcher, Timing};
use crate::server::metrics::Metrics;
use crate::server::{self, elections::ElectionPause};
use crate::storage::{KvReader, OpenedStore, RedbStore, StoreError};
use crate::types::{NodeAddr, NodeId, Raft, RaftMetrics};

/// Why a node could not start.
#[derive(Debug, Error)]
pub enum NodeError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "{path}: node {node_id} was removed from cluster {cluster_id:?} (membership at log index {log_index}); its data never rejoins: wipe the data directory to add this node again as a new member"
    )]
    Removed {
        path: String,
        node_id: NodeId,
        cluster_id: String,
        log_index: u64,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid Raft configuration: {0}")]
    RaftConfig(String),
    #[error("Raft failed to start: {0}")]
    RaftStart(String),
}

/// Everything the request handlers share.
pub struct NodeState {
    pub id: NodeId,
    pub cluster_id: String,
    /// The addresses this node advertises.
    pub addr: NodeAddr,
    pub raft: Raft,
    pub reader: Arc<dyn KvReader>,
    /// `redb` or `memory`.
    pub backend: &'static str,
    pub config: NodeConfig,
    pub metrics: Arc<Metrics>,
    /// Client for forwarding requests to the leader and for admin fan-out.
    pub http: HttpClient,
    pub elections: ElectionPause,
    /// Shares log entries and leadership confirmations between requests.
    pub batcher: Batcher,
    store: Option<RedbStore>,
    removed: AtomicBool,
    stopping: AtomicBool,
}

impl std::fmt::Debug for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeState")
            .field("id", &self.id)
            .field("cluster_id", &self.cluster_id)
            .field("addr", &self.addr)
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl NodeState {
    pub fn raft_metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow().clone()
    }

    /// Whether this node saw itself removed from the cluster.
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
    }

    /// Whether the node is shutting down and refuses new work.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// The client address of `id`, from the membership configuration.
    pub fn client_addr_of(&self, id: NodeId) -> Option<String> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        metrics
            .membership_config
            .membership()
            .get_node(&id)
            .map(|node| node.client_addr.clone())
    }

    /// Records that this node is no longer a member, durably where the store
    /// allows, and stops its Raft participation.
    pub(crate) async fn mark_removed(&self, log_index: u64) {
        if self.removed.swap(true, Ordering::Relaxed) {
            return;
        }
        tracing::warn!(
            log_index,
            "this node was removed from the cluster; stopping Raft"
        );
        if let Some(store) = &self.store {
            let store = store.clone();
            let result = tokio::task::spawn_blocking(move || store.mark_removed(log_index)).await;
            match result {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "could not record the removal"),
                Err(e) => tracing::error!(error = %e, "could not record the removal"),
            }
        }
        if let Err(e) = self.raft.shutdown().await {
            tracing::error!(error = %e, "Raft did not shut down cleanly");
        }
    }
}

/// A started node. Drop it only after `shutdown`.
#[derive(Debug)]
pub struct RunningNode {
    state: Arc<NodeState>,
    client_addr: SocketAddr,
    peer_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Opens storage, starts openraft and both listeners.
pub async fn bootstrap_node(config: NodeConfig) -> Result<RunningNode, NodeError> {
    let id = config.validate()?;
    let opened = OpenedStore::open(&config.storage_backend())?;
    let reader = opened.reader();
    let (backend, store) = match &opened {
        OpenedStore::Memory { .. } => ("memory", None),
        OpenedStore::Redb { store, .. } => ("redb", Some(store.clone())),
    };
    if let Some(store) = &store {
        let identity = store.claim_identity(id, &config.cluster_id)?;
        if let Some(log_index) = identity.removed_at {
            return Err(NodeError::Removed {
                path: store.path().display().to_string(),
                node_id: id,
                cluster_id: config.cluster_id.clone(),
                log_index,
            });
        }
    }

    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| NodeError::Listen { addr, source })
    };
    let client_listener = bind(config.client_listen).await?;
    let peer_listener = bind(config.peer_listen).await?;
    let local = |l: &TcpListener, addr| {
        l.local_addr()
            .map_err(|source| NodeError::Listen { addr, source })
    };
    let client_addr = local(&client_listener, config.client_listen)?;
    let peer_addr = local(&peer_listener, config.peer_listen)?;
    let addr = NodeAddr {
        client_addr: config
            .client_advertise
            .clone()
            .unwrap_or_else(|| client_addr.to_string()),
        peer_addr: config
            .peer_advertise
            .clone()
            .unwrap_or_else(|| peer_addr.to_string()),
    };

    let metrics = Arc::new(Metrics::new(id, &config.cluster_id));
    let network = PeerNetwork::new(&config.cluster_id, metrics.clone());
    let raft_config = config
        .raft_config()
        .validate()
        .map_err(|e| NodeError::RaftConfig(e.to_string()))?;
    let raft_config = Arc::new(raft_config);
    let raft = match opened {
        OpenedStore::Memory {
            log, state_machine, ..
        } => Raft::new(id, raft_config, network, log, state_machine).await,
        OpenedStore::Redb {
            log, state_machine, ..
        } => Raft::new(id, raft_config, network, log, state_machine).await,
    }
    .map_err(|e| NodeError::RaftStart(e.to_string()))?;

    let batcher = Batcher::start(
        raft.clone(),
        Timing {
            request_timeout: config.request_timeout(),
            leader_wait: config.leader_wait(),
        },
    );
    let state = Arc::new(NodeState {
        id,
        cluster_id: config.cluster_id.clone(),
        addr,
        raft,
        reader,
        backend,
        http: http_client(Duration::from_secs(1)),
        elections: ElectionPause::default(),
        batcher,
        config,
        metrics,
        store,
        removed: AtomicBool::new(false),
        stopping: AtomicBool::new(false),
    });
    tracing::info!(
        node_id = id,
        cluster_id = %state.cluster_id,
        backend,
        client = %state.addr.client_addr,
        peer = %state.addr.peer_addr,
        "node started"
    );

    let (stop, stop_rx) = watch::channel(false);
    let client_state = state.clone();
    let peer_state = state.clone();
    let tasks = vec![
        tokio::spawn(server::http::serve(
            client_listener,
            move |req, _| server::handle_client(client_state.clone(), req),
            stop_rx.clone(),
        )),
        tokio::spawn(server::http::serve(
            peer_listener,
            move |req, _| server::raft::handle_peer(peer_state.clone(), req),
            stop_rx.clone(),
        )),
        tokio::spawn(watch_membership(state.clone(), stop_rx)),
    ];
    Ok(RunningNode {
        state,
        client_addr,
        peer_addr,
        stop,
        tasks,
    })
}

/// Closes the store once the last other handle to it is gone (bounded).
async fn close_when_released(mut store: RedbStore) -> Result<(), StoreError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match store.try_close() {
            Ok(result) => return result,
            Err(still_shared) if tokio::time::Instant::now() < deadline => {
                store = still_shared;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(still_shared) => return still_shared.close(),
        }
    }
}

/// Whether the current leader leads this cluster without this node. A node
/// that joins again after its data was wiped replays configurations of its
/// earlier self that list it and then drop it; only the leader knows it is
/// back.
async fn leader_confirms_removal(state: &NodeState) -> bool {
    let Some(leader) = state.raft_metrics().current_leader else {
        return false;
    };
    let Some(addr) = state.client_addr_of(leader) else {
        return false;
    };
    match crate::client::AspenClient::new(vec![addr])
        .with_timeout(Duration::from_secs(3))
        .status()
        .await
    {
        Ok(status) => {
            status.cluster_id == state.cluster_id
                && status.role == crate::api::Role::Leader
                && !status.membership.contains(state.id)
        }
        Err(_) => false,
    }
}

/// Marks the node removed once an applied membership, after one that listed
/// it, no longer does, and the leader confirms it (each configuration is
/// checked with the leader once).
async fn watch_membership(state: Arc<NodeState>, mut stop: watch::Receiver<bool>) {
    let mut metrics = state.raft.metrics();
    let mut was_member = false;
    let mut checked: Option<u64> = None;
    loop {
        if let Ok(applied) = state.reader.applied_state() {
            let listed = applied
                .membership
                .membership()
                .get_node(&state.id)
                .is_some();
            let latest_lists = state.client_addr_of(state.id).is_some();
            match applied.membership.log_id() {
                _ if listed => was_member = true,
                Some(log_id) if was_member && !latest_lists && checked != Some(log_id.index) => {
                    checked = Some(log_id.index);
                    if leader_confirms_removal(&state).await {
                        state.mark_removed(log_id.index).await;
                        return;
                    }
                }
                _ => {}
            }
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            () = server::http::stopped(&mut stop) => return,
        }
    }
}

impl RunningNode {
    /// Address the client API is bound to.
    pub fn client_addr(&self) -> SocketAddr {
        self.client_addr
    }

    /// Address the peer API is bound to.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    pub fn id(&self) -> NodeId {
        self.state.id
    }

    pub fn state(&self) -> &Arc<NodeState> {
        &self.state
    }

    pub fn raft(&self) -> &Raft {
        &self.state.raft
    }

    /// Stops at once, without handing leadership over: to peers this looks
    /// like the process dying. The database is still closed. For failure
    /// testing and for stopping a node that must not act any more.
    pub async fn stop_abruptly(self) -> Result<(), StoreError> {
        self.state.stopping.store(true, Ordering::Relaxed);
        self.finish().await
    }

    /// Stops the node in order: refuse new work, hand leadership away if
    /// leading, stop both listeners (letting requests in flight finish), stop
    /// Raft, and close the database so the data directory can be reopened at
    /// once.
    pub async fn shutdown(self) -> Result<(), StoreError> {
        self.state.stopping.store(true, Ordering::Relaxed);
        let state = &self.state;
        if !state.is_removed() && state.raft_metrics().current_leader == Some(state.id) {
            match server::admin::transfer_leadership(state, None).await {
                Ok(to) => tracing::info!(to, "handed leadership over before stopping"),
                Err(e) => tracing::warn!(error = %e.message, "could not hand leadership over"),
            }
        }
        self.finish().await
    }

    /// Stops the listeners and Raft, then closes the database.
    async fn finish(self) -> Result<(), StoreError> {
        let RunningNode {
            state, stop, tasks, ..
        } = self;
        let _ = stop.send(true);
        for task in tasks {
            let _ = task.await;
        }
        if let Err(e) = state.raft.shutdown().await {
            tracing::error!(error = %e, "Raft did not shut down cleanly");
        }
        state.elections.cancel();
        let store = state.store.clone();
        // Storage handles live in Raft's tasks and in `state`: wait for the
        // last of them before closing, so a reopen cannot find the file busy.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut state = Some(state);
        while let Some(s) = state.take() {
            match Arc::try_unwrap(s) {
                Ok(owned) => drop(owned),
                Err(shared) if tokio::time::Instant::now() < deadline => {
                    state = Some(shared);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(_) => {
                    tracing::warn!("request handlers still hold the node after 10 s");
                    break;
                }
            }
        }
        let closed = match store {
            Some(store) => close_when_released(store).await,
            None => Ok(()),
        };
        tracing::info!("node stopped");
        closed
    }
}
