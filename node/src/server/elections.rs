//! Pausing elections on a node for a bounded time, the building block of
//! leadership transfer (openraft 0.9 has no transfer call of its own).
//!
//! A pause always ends by itself: if the node coordinating a transfer dies
//! half way, elections resume when the timer fires, so a cluster can never be
//! left unable to elect a leader.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::types::Raft;

/// Longest pause a request may ask for.
pub const MAX_PAUSE: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct ElectionPause {
    resume: Mutex<Option<JoinHandle<()>>>,
    transferring: AtomicBool,
}

impl ElectionPause {
    /// Stops this node from starting elections for `duration` (at most `MAX_PAUSE`).
    pub fn pause(&self, raft: &Raft, duration: Duration) {
        let duration = duration.min(MAX_PAUSE);
        raft.runtime_config().elect(false);
        let raft = raft.clone();
        let timer = tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            raft.runtime_config().elect(true);
        });
        if let Some(previous) = self.lock().replace(timer) {
            previous.abort();
        }
    }

    /// Lets this node start elections again now.
    pub fn resume(&self, raft: &Raft) {
        self.cancel();
        raft.runtime_config().elect(true);
    }

    /// Drops a pending resume timer (at shutdown).
    pub fn cancel(&self) {
        if let Some(timer) = self.lock().take() {
            timer.abort();
        }
    }

    /// Marks this node, as leader, handing leadership over: it refuses new
    /// proposals meanwhile so that followers' leader leases can lapse.
    pub fn set_transferring(&self, transferring: bool) {
        self.transferring.store(transferring, Ordering::Relaxed);
    }

    pub fn transferring(&self) -> bool {
        self.transferring.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<JoinHandle<()>>> {
        self.resume.lock().expect("election pause lock poisoned")
    }
}
