//! A client that writes keys in the background and remembers which writes
//! were acknowledged, and the check that each of them can be read back.
//!
//! A write that fails or times out may or may not have been applied, so it
//! is not counted; one that succeeded must survive anything the cluster goes
//! through.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use aspen_node::api::Consistency;
use aspen_node::client::AspenClient;
use aspen_operator::local::LocalStatus;
use tokio::task::JoinHandle;

use crate::cluster::running_endpoints;

/// Pause between two writes: the writer is load, not a benchmark, and
/// leaves the two cores to the cluster's membership changes.
const WRITE_PAUSE: Duration = Duration::from_millis(5);
/// Most writes one writer makes.
const MAX_WRITES: u64 = 100_000;
/// Timeout of each write.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Keys read back per scan page.
const SCAN_PAGE: u32 = 1000;

/// What a writer did.
#[derive(Debug, Default)]
pub struct Writes {
    /// Acknowledged writes: key -> value.
    pub acked: BTreeMap<String, String>,
    /// Writes that failed or timed out (outcome unknown).
    pub failed: u64,
}

/// A background writer of `<prefix><n>` keys.
#[derive(Debug)]
pub struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    task: JoinHandle<Writes>,
}

impl Writer {
    /// Write to the running nodes of local mode's `data_dir`, following
    /// status.json as nodes come and go.
    pub fn start(data_dir: PathBuf, prefix: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(write(
            data_dir,
            prefix.to_owned(),
            stop.clone(),
            acked.clone(),
        ));
        Writer { stop, acked, task }
    }

    /// Writes acknowledged so far.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Stop writing and return what was written.
    pub async fn finish(self) -> Writes {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the writer does not panic")
    }
}

fn client_of(data_dir: &std::path::Path) -> Option<AspenClient> {
    let endpoints = running_endpoints(&LocalStatus::read(data_dir).ok()?);
    (!endpoints.is_empty()).then(|| AspenClient::new(endpoints).with_timeout(WRITE_TIMEOUT))
}

async fn write(
    data_dir: PathBuf,
    prefix: String,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> Writes {
    let mut writes = Writes::default();
    let mut client = None;
    for n in 0..MAX_WRITES {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if client.is_none() {
            client = client_of(&data_dir);
        }
        let Some(current) = &client else {
            tokio::time::sleep(WRITE_PAUSE).await;
            continue;
        };
        let key = format!("{prefix}{n:08}");
        let value = format!("value-{n}");
        match current.put(&key, &value).await {
            Ok(_) => {
                writes.acked.insert(key, value);
                acked.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                writes.failed += 1;
                // Nodes may have come or gone: read their addresses again.
                client = None;
            }
        }
        tokio::time::sleep(WRITE_PAUSE).await;
    }
    writes
}

/// Read every key under `prefix` (linearizably) and check that each
/// acknowledged write is there with its value.
pub async fn verify(client: &AspenClient, prefix: &str, acked: &BTreeMap<String, String>) {
    let mut stored = BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = client
            .scan(
                prefix,
                cursor.as_deref(),
                Some(SCAN_PAGE),
                Consistency::Linearizable,
            )
            .await
            .unwrap_or_else(|e| panic!("scanning {prefix}: {e}"));
        stored.extend(page.items.into_iter().map(|kv| (kv.key, kv.value)));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let lost: Vec<&String> = acked
        .iter()
        .filter(|(key, value)| stored.get(*key) != Some(*value))
        .map(|(key, _)| key)
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes are lost or wrong, first {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(10)]
    );
}
