//! `aspen-operator`: run the controller, print the CRD, or run a manifest
//! as local processes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use aspen_operator::controller::{self, Context};
use aspen_operator::crd::{self, AspenCluster};
use aspen_operator::http;
use aspen_operator::local::{self, Storage};
use aspen_operator::metrics::Metrics;
use aspen_operator::nodes::HttpNodeAdmin;
use aspen_operator::telemetry::{self, LogFormat};
use clap::{Parser, Subcommand};
use kube::api::ListParams;
use kube::runtime::events::{Recorder, Reporter};
use kube::{Api, Client};
use kube_lease_manager::LeaseManagerBuilder;
use tokio::signal::unix::{SignalKind, signal};

/// The Kubernetes operator of Aspen clusters: it turns AspenCluster resources
/// into StatefulSets and Services and alone drives their Raft membership.
#[derive(Debug, Parser)]
#[command(name = "aspen-operator", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the controller, in a pod or against the current kubeconfig.
    Run(RunArgs),
    /// Print the AspenCluster CustomResourceDefinition as YAML
    /// (apply it with `kubectl apply --server-side -f -`).
    Crd,
    /// Run an AspenCluster manifest as aspen-node processes on 127.0.0.1,
    /// with the membership planner the controller uses. Edit the manifest's
    /// spec.replicas while it runs to scale; Ctrl-C stops the nodes, and
    /// running it again on the same data directory resumes the cluster.
    Local(LocalArgs),
}

#[derive(Debug, clap::Args)]
struct LocalArgs {
    /// The AspenCluster manifest: the file `kubectl apply -f` takes.
    manifest: PathBuf,
    /// Node data, logs, the state file, status.json and the endpoints file
    /// [default: aspen-local/<metadata.name>].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The aspen-node binary [default: aspen-node next to this executable].
    #[arg(long)]
    node_bin: Option<PathBuf>,
    /// Where nodes keep their Raft state.
    #[arg(long, value_enum, default_value = "redb")]
    storage: Storage,
    /// Format of local mode's own log, on stderr (nodes log to files in
    /// the data directory).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Address of the /metrics and /healthz endpoint.
    #[arg(
        long,
        env = "ASPEN_OPERATOR_METRICS_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    metrics_addr: SocketAddr,
    #[arg(
        long,
        env = "ASPEN_OPERATOR_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    /// Watch only this namespace; all namespaces when absent.
    #[arg(long, env = "ASPEN_OPERATOR_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Namespace of the leader-election Lease; the pod's own namespace
    /// (POD_NAMESPACE) or else the kubeconfig's default.
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "aspen-operator")]
    lease_name: String,
    /// This replica's identity in the Lease and in events; the pod name
    /// (POD_NAME) or else the host name and process id.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds a Lease holder stays leader without renewing.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(5..=300))]
    lease_duration_seconds: u64,
    /// Timeout of each call to a node, in milliseconds.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=120_000))]
    node_timeout_ms: u64,
    /// Skip leader election: only safe with a single operator replica.
    #[arg(long)]
    no_leader_election: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crd => crd::crd_yaml()
            .map(|yaml| print!("{yaml}"))
            .context("serializing the CRD"),
        Command::Run(args) => run(args).await,
        Command::Local(args) => run_local(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The context and its direct cause: kube's errors already repeat
            // their own sources in their text.
            let text: Vec<String> = error.chain().take(2).map(ToString::to_string).collect();
            eprintln!("aspen-operator: {}", text.join(": "));
            ExitCode::FAILURE
        }
    }
}

async fn run_local(args: LocalArgs) -> anyhow::Result<()> {
    telemetry::init(args.log_format);
    let options = local::Options {
        manifest: args.manifest,
        data_dir: args.data_dir,
        node_bin: args.node_bin,
        storage: args.storage,
    };
    local::run(options).await?;
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    telemetry::init(args.log_format);
    let client = Client::try_default()
        .await
        .context("connecting to Kubernetes (in-cluster config or KUBECONFIG)")?;
    // Only what the operator watches, so a namespace-scoped install (a Role
    // instead of a ClusterRole) passes this check too.
    let clusters: Api<AspenCluster> = match &args.watch_namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    };
    clusters
        .list(&ListParams::default().limit(1))
        .await
        .context("listing AspenClusters; is the CRD installed? (aspen-operator crd | kubectl apply --server-side -f -)")?;

    let metrics = Arc::new(Metrics::new());
    let listener = http::bind(args.metrics_addr)
        .await
        .with_context(|| format!("binding {}", args.metrics_addr))?;
    let mut server = tokio::spawn(http::serve(listener, metrics.clone()));
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "aspen-operator".to_owned());
        format!("{host}-{}", std::process::id())
    });
    let reporter = Reporter {
        controller: "aspen-operator".to_owned(),
        instance: Some(identity.clone()),
    };
    let context = Arc::new(Context::new(
        client.clone(),
        HttpNodeAdmin::new(Duration::from_millis(args.node_timeout_ms)),
        metrics,
        Recorder::new(client.clone(), reporter),
    ));
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let namespace = args.watch_namespace.as_deref();

    if args.no_leader_election {
        tracing::warn!("leader election is off: run a single replica only");
        return tokio::select! {
            () = controller::run(context, namespace) => bail!("the controller stopped watching"),
            served = &mut server => served_error(served),
            _ = terminate.recv() => Ok(()),
            _ = tokio::signal::ctrl_c() => Ok(()),
        };
    }

    let lease_namespace = args
        .lease_namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let manager = LeaseManagerBuilder::new(client.clone(), &args.lease_name)
        .with_namespace(&lease_namespace)
        .with_identity(&identity)
        .with_duration(args.lease_duration_seconds)
        .with_grace(args.lease_duration_seconds / 3)
        .build()
        .await
        .with_context(|| format!("preparing Lease {lease_namespace}/{}", args.lease_name))?;
    let (mut leading, lease_task) = manager.watch().await;
    tracing::info!(lease = %args.lease_name, namespace = %lease_namespace, %identity, "waiting to lead");
    let outcome = tokio::select! {
        led = lead(&mut leading, context, namespace) => led,
        served = &mut server => served_error(served),
        _ = terminate.recv() => Ok(()),
        _ = tokio::signal::ctrl_c() => Ok(()),
    };
    // Closing the channel makes the lease task release the Lease, so that a
    // standby takes over at once rather than after the Lease expires.
    drop(leading);
    match tokio::time::timeout(Duration::from_secs(5), lease_task).await {
        Ok(Ok(Ok(_))) => tracing::info!("lease released"),
        Ok(Ok(Err(error))) => tracing::warn!(%error, "could not release the lease"),
        Ok(Err(error)) => tracing::warn!(%error, "lease task failed"),
        Err(_) => tracing::warn!("lease release timed out; it expires by itself"),
    }
    outcome
}

/// Wait for the Lease, then reconcile while holding it. Returns an error
/// when the Lease is lost: the process exits so that only one replica ever
/// acts on clusters, and Kubernetes restarts it as a standby.
async fn lead(
    leading: &mut tokio::sync::watch::Receiver<bool>,
    context: Arc<Context<HttpNodeAdmin>>,
    namespace: Option<&str>,
) -> anyhow::Result<()> {
    while !*leading.borrow_and_update() {
        leading.changed().await.context("the lease task stopped")?;
    }
    tracing::info!("leading: reconciling AspenClusters");
    let lost = async {
        while *leading.borrow_and_update() {
            if leading.changed().await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        () = controller::run(context, namespace) => bail!("the controller stopped watching"),
        () = lost => bail!("lost the leader lease; exiting so that another replica takes over"),
    }
}

fn served_error(served: Result<(), tokio::task::JoinError>) -> anyhow::Result<()> {
    match served {
        Ok(()) => bail!("the metrics server stopped"),
        Err(error) => Err(error).context("the metrics server task failed"),
    }
}
