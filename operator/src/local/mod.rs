//! Local mode: `aspen-operator local FILE.yaml` runs an AspenCluster
//! manifest as `aspen-node` processes on 127.0.0.1 and drives their Raft
//! membership with the planner the controller uses.
//!
//! Each step observes (processes, data directories, every node's status),
//! asks the planner for one action, writes the planner's record to the state
//! file, and executes the action against processes instead of pods:
//!
//! | planner action        | Kubernetes              | local mode                                |
//! |-----------------------|-------------------------|-------------------------------------------|
//! | scale the StatefulSet | StatefulSet replicas    | start or stop node processes by ordinal   |
//! | delete a volume       | delete the PVC          | wipe the ordinal's data directory         |
//! | membership operation  | node admin API          | the same calls                            |
//!
//! Between steps it restarts nodes that exited on their own and rereads the
//! manifest, so that editing `spec.replicas` scales the cluster.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::signal::unix::{SignalKind, signal};

mod cluster;
mod manifest;
mod process;
mod report;
mod state;

pub use process::ProcessState;
pub use report::{ENDPOINTS_FILE, LocalNode, LocalStatus, STATUS_FILE};
pub use state::STATE_FILE;

use cluster::Local;

/// Pause between two steps.
const STEP_INTERVAL: Duration = Duration::from_millis(200);

/// Where the nodes keep their Raft state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// A redb file in each node's data directory: survives restarts.
    Redb,
    /// Process memory: a node that stops loses its data and rejoins as new.
    Memory,
}

impl Storage {
    pub fn as_str(self) -> &'static str {
        match self {
            Storage::Redb => "redb",
            Storage::Memory => "memory",
        }
    }
}

impl fmt::Display for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How to run local mode.
#[derive(Debug, Clone)]
pub struct Options {
    /// The AspenCluster manifest.
    pub manifest: PathBuf,
    /// Data, logs and state; `aspen-local/<name>` when absent.
    pub data_dir: Option<PathBuf>,
    /// The `aspen-node` binary; next to the running executable when absent.
    pub node_bin: Option<PathBuf>,
    pub storage: Storage,
}

/// Why local mode cannot start or go on.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("{}: {message}", path.display())]
    Manifest { path: PathBuf, message: String },
    #[error(
        "{}: {message}; move the data directory away to start a new cluster",
        path.display()
    )]
    State { path: PathBuf, message: String },
    #[error(
        "{} holds cluster {found:?}, not {expected:?} of this manifest; pass another --data-dir",
        dir.display()
    )]
    ForeignState {
        dir: PathBuf,
        found: String,
        expected: String,
    },
    #[error(
        "{} was run with --storage {found}; pass --storage {found} or another --data-dir",
        dir.display()
    )]
    StorageMismatch { dir: PathBuf, found: Storage },
    #[error("{} is in use by another aspen-operator local; stop that one first", dir.display())]
    Locked { dir: PathBuf },
    #[error(
        "aspen-node not found at {}: build it next to aspen-operator (cargo build -p aspen-node, with --release for a release aspen-operator) or pass --node-bin",
        path.display()
    )]
    NodeBinary { path: PathBuf },
    #[error(
        "port {port} of {node} is taken, perhaps by a node of an earlier run that still runs (its pid is in {}); stop it and start again",
        status.display()
    )]
    PortInUse {
        node: String,
        port: u16,
        status: PathBuf,
    },
    #[error("{what}: {error}")]
    Io { what: String, error: io::Error },
}

fn io_error(what: String) -> impl FnOnce(io::Error) -> LocalError {
    move |error| LocalError::Io { what, error }
}

/// Run the manifest until SIGINT or SIGTERM, then stop the nodes gracefully.
pub async fn run(options: Options) -> Result<(), LocalError> {
    let mut terminate = signal(SignalKind::terminate())
        .map_err(io_error("installing the SIGTERM handler".into()))?;
    let mut interrupt = signal(SignalKind::interrupt())
        .map_err(io_error("installing the SIGINT handler".into()))?;
    let mut local = Local::start(options)?;
    let outcome = loop {
        if let Err(error) = local.step().await {
            break Err(error);
        }
        let signal = tokio::select! {
            () = tokio::time::sleep(STEP_INTERVAL) => continue,
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        tracing::info!(signal, "stopping the nodes");
        break Ok(());
    };
    local.stop().await;
    outcome
}

/// The `aspen-node` to run: the flag's, or the one next to this executable.
fn node_binary(flag: Option<PathBuf>) -> Result<PathBuf, LocalError> {
    let path = match flag {
        Some(path) => path,
        None => std::env::current_exe()
            .map_err(io_error("finding this executable's directory".into()))?
            .with_file_name("aspen-node"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(LocalError::NodeBinary { path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_node_binary_says_how_to_build_it() {
        let error =
            node_binary(Some(PathBuf::from("/nonexistent/aspen-node"))).expect_err("no such file");
        assert!(
            error.to_string().contains("cargo build -p aspen-node"),
            "{error}"
        );
    }
}
