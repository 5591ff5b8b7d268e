//! aspen-node: one member of an Aspen cluster.
//!
//! Serves the client API (KV, admin, health, metrics) and the peer API (Raft
//! RPC) on two ports, keeps its state in a redb file in the data directory,
//! and stops gracefully on SIGTERM or SIGINT: leadership is handed over,
//! requests in flight finish, and the database is closed.

use std::process::ExitCode;

use anyhow::Context;
use aspen_node::config::NodeConfig;
use aspen_node::logging;
use aspen_node::node::bootstrap_node;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

/// Run one member of an Aspen cluster.
///
/// Every flag can also be set through its environment variable. A new node
/// starts empty and waits: the operator (or `aspenctl cluster init` and
/// `cluster add-learner`) makes it a member.
#[derive(Debug, Parser)]
#[command(name = "aspen-node", version, about, long_about)]
struct Args {
    #[command(flatten)]
    config: NodeConfig,
}

async fn run(config: NodeConfig) -> anyhow::Result<()> {
    let node = bootstrap_node(config).await?;
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut metrics = node.raft().metrics();
    // Weak: a strong handle here would keep the database open past shutdown.
    let state = std::sync::Arc::downgrade(node.state());
    // A fatal Raft error (a storage failure, say) ends the process so that it
    // is restarted; Raft stopped on purpose, after removal, does not: the
    // node stays up to answer that it was removed.
    let fatal = async {
        loop {
            let fatal = match &metrics.borrow().running_state {
                Err(fatal) if !state.upgrade().is_some_and(|s| s.is_removed()) => {
                    Some(fatal.to_string())
                }
                _ => None,
            };
            if let Some(fatal) = fatal {
                return fatal;
            }
            if metrics.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM: stopping"),
        _ = interrupt.recv() => tracing::info!("SIGINT: stopping"),
        reason = fatal => {
            tracing::error!(%reason, "Raft stopped with a fatal error");
            node.shutdown().await?;
            anyhow::bail!("Raft stopped with a fatal error: {reason}");
        }
    }
    node.shutdown().await?;
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    logging::init(args.config.log_format, "ASPEN_LOG", "info,openraft=warn");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("aspen-node: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args.config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "aspen-node stopped");
            eprintln!("aspen-node: {e:#}");
            ExitCode::FAILURE
        }
    }
}
