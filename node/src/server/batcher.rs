//! Sharing Raft round trips between concurrent requests.
//!
//! openraft 0.9 appends and fsyncs each proposal on its own, so a node that
//! proposed every client write separately would pay one fsync per write.
//! Instead, writes queue here, and whenever one of `MAX_BATCHES_IN_FLIGHT`
//! slots is free, everything queued (up to `MAX_BATCH_COMMANDS` commands or
//! `MAX_BATCH_BYTES`) becomes one log entry: one append, one fsync and one
//! replication round for the lot, each command still applied at its own
//! revision. Under light load a batch is a single command and nothing waits.
//!
//! Linearizable reads are shared the same way: every read queued while no
//! leadership confirmation is in flight is answered by the next one (a read
//! never uses a confirmation that started before it arrived).

use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use super::Failure;
use super::http::ApiError;
use crate::api::ErrorCode;
use crate::limits::{MAX_BATCH_BYTES, MAX_BATCH_COMMANDS, MAX_BATCHES_IN_FLIGHT};
use crate::types::{Command, NodeAddr, NodeId, Raft, Response};

/// Requests waiting to be batched; past this, submitters wait for room.
const QUEUE_CAPACITY: usize = 8192;

type Reply<T> = oneshot::Sender<Result<T, Failure>>;

/// Timing the batchers need from the node's configuration.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub request_timeout: Duration,
    pub leader_wait: Duration,
}

/// Entry point for writes and linearizable reads.
#[derive(Debug)]
pub struct Batcher {
    writes: mpsc::Sender<(Command, Reply<Response>)>,
    reads: mpsc::Sender<Reply<()>>,
}

impl Batcher {
    pub fn start(raft: Raft, timing: Timing) -> Self {
        let (writes, write_queue) = mpsc::channel(QUEUE_CAPACITY);
        let (reads, read_queue) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(batch_writes(raft.clone(), timing, write_queue));
        tokio::spawn(batch_reads(raft, timing, read_queue));
        Batcher { writes, reads }
    }

    /// Proposes `command` (already validated) and waits for its result.
    pub async fn write(&self, command: Command) -> Result<Response, Failure> {
        let (reply, answer) = oneshot::channel();
        self.writes
            .send((command, reply))
            .await
            .map_err(|_| stopping())?;
        answer.await.unwrap_or_else(|_| Err(stopping()))
    }

    /// Waits until a read may be served linearizably from this node's state.
    pub async fn read_barrier(&self) -> Result<(), Failure> {
        let (reply, answer) = oneshot::channel();
        self.reads.send(reply).await.map_err(|_| stopping())?;
        answer.await.unwrap_or_else(|_| Err(stopping()))
    }
}

fn stopping() -> Failure {
    Failure::Api(ApiError::new(
        ErrorCode::Unavailable,
        "the node is shutting down",
    ))
}

fn no_leader(timing: Timing) -> Failure {
    Failure::Api(ApiError::new(
        ErrorCode::NoLeader,
        format!(
            "no leader was elected within {:?}; the cluster may have lost its quorum",
            timing.leader_wait
        ),
    ))
}

fn timed_out(timing: Timing) -> Failure {
    Failure::Api(ApiError::new(
        ErrorCode::Timeout,
        format!(
            "not completed within {:?}; it may or may not have been applied",
            timing.request_timeout
        ),
    ))
}

fn raft_stopped(e: impl std::fmt::Display) -> Failure {
    Failure::Api(ApiError::new(
        ErrorCode::Unavailable,
        format!("Raft has stopped on this node: {e}"),
    ))
}

/// Where the leader is, if openraft knows.
fn forward(f: ForwardToLeader<NodeId, NodeAddr>) -> Option<Failure> {
    match (f.leader_id, f.leader_node) {
        (Some(leader), Some(node)) => Some(Failure::Forward {
            leader,
            addr: node.client_addr,
        }),
        _ => None,
    }
}

/// Waits, at most until `deadline` and one election's time, for a leader.
async fn wait_for_leader(raft: &Raft, timing: Timing, deadline: Instant) -> Result<(), Failure> {
    let wait = timing
        .leader_wait
        .min(deadline.saturating_duration_since(Instant::now()));
    raft.wait(Some(wait))
        .metrics(|m| m.current_leader.is_some(), "a leader is known")
        .await
        .map(drop)
        .map_err(|_| no_leader(timing))
}

async fn batch_writes(
    raft: Raft,
    timing: Timing,
    mut queue: mpsc::Receiver<(Command, Reply<Response>)>,
) {
    let slots = std::sync::Arc::new(Semaphore::new(MAX_BATCHES_IN_FLIGHT));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = queue.recv().await else {
            return;
        };
        let mut bytes = first.0.payload_bytes();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_COMMANDS && bytes < MAX_BATCH_BYTES {
            match queue.try_recv() {
                Ok(next) => {
                    bytes += next.0.payload_bytes();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let _slot = slot;
            propose_batch(&raft, timing, batch).await;
        });
    }
}

/// Proposes the batch as one entry and hands each caller its own result.
async fn propose_batch(raft: &Raft, timing: Timing, batch: Vec<(Command, Reply<Response>)>) {
    let (mut commands, replies): (Vec<Command>, Vec<Reply<Response>>) = batch.into_iter().unzip();
    let command = if commands.len() == 1 {
        commands.pop().expect("one command")
    } else {
        Command::Batch(commands)
    };
    match propose(raft, timing, command).await {
        Ok(Response::Batch(responses)) if responses.len() == replies.len() => {
            for (reply, response) in replies.into_iter().zip(responses) {
                let _ = reply.send(Ok(response));
            }
        }
        Ok(response) if replies.len() == 1 => {
            let _ = replies
                .into_iter()
                .next()
                .expect("one reply")
                .send(Ok(response));
        }
        Ok(other) => {
            let failure = Failure::Api(ApiError::internal(format!(
                "unexpected batch result {other:?}"
            )));
            for reply in replies {
                let _ = reply.send(Err(failure.clone()));
            }
        }
        Err(failure) => {
            for reply in replies {
                let _ = reply.send(Err(failure.clone()));
            }
        }
    }
}

async fn propose(raft: &Raft, timing: Timing, command: Command) -> Result<Response, Failure> {
    let deadline = Instant::now() + timing.request_timeout;
    loop {
        match tokio::time::timeout_at(deadline, raft.client_write(command.clone())).await {
            Err(_) => return Err(timed_out(timing)),
            Ok(Ok(written)) => return Ok(written.data),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                if let Some(failure) = forward(f) {
                    return Err(failure);
                }
                wait_for_leader(raft, timing, deadline).await?;
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                return Err(Failure::Api(ApiError::internal(e.to_string())));
            }
            Ok(Err(RaftError::Fatal(e))) => return Err(raft_stopped(e)),
        }
    }
}

async fn batch_reads(raft: Raft, timing: Timing, mut queue: mpsc::Receiver<Reply<()>>) {
    loop {
        let Some(first) = queue.recv().await else {
            return;
        };
        let mut waiting = vec![first];
        while let Ok(next) = queue.try_recv() {
            waiting.push(next);
        }
        let outcome = confirm_leadership(&raft, timing).await;
        for reply in waiting {
            let _ = reply.send(outcome.clone());
        }
    }
}

/// Confirms leadership with a quorum and waits until everything committed
/// so far is applied here.
async fn confirm_leadership(raft: &Raft, timing: Timing) -> Result<(), Failure> {
    let deadline = Instant::now() + timing.request_timeout;
    loop {
        match tokio::time::timeout_at(deadline, raft.ensure_linearizable()).await {
            Err(_) => return Err(timed_out(timing)),
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                if let Some(failure) = forward(f) {
                    return Err(failure);
                }
                wait_for_leader(raft, timing, deadline).await?;
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)))) => {
                return Err(Failure::Api(ApiError::new(
                    ErrorCode::NoLeader,
                    format!("the leader could not confirm its leadership with a quorum: {e}"),
                )));
            }
            Ok(Err(RaftError::Fatal(e))) => return Err(raft_stopped(e)),
        }
    }
}
