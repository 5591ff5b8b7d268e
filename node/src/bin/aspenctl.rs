//! aspenctl: the command line for Aspen clusters.

use std::io::Read;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use aspen_node::api::{
    AddLearnerRequest, CasRequest, ChangeMembershipRequest, Consistency, InitRequest, KeyValue,
    Member, MembershipView, NodeStatus, RemoveLearnersRequest, TransferLeaderRequest, TxnRequest,
};
use aspen_node::client::AspenClient;
use aspen_node::ctl::{self, Output};
use clap::{Parser, Subcommand};
use serde::Serialize;

/// Command-line client for Aspen, the replicated key-value store.
///
/// Talks to the client API of one or more nodes (--endpoints, tried in turn).
/// Any member serves any request: followers forward writes and linearizable
/// reads to the leader. Output is a table for people, or JSON with -o json.
#[derive(Debug, Parser)]
#[command(name = "aspenctl", version, about, long_about)]
struct Cli {
    /// Client addresses of nodes (host:port), comma separated, tried in turn.
    #[arg(long, env = "ASPEN_ENDPOINTS", default_value = "127.0.0.1:7000", value_delimiter = ',', action = clap::ArgAction::Set, global = true)]
    endpoints: Vec<String>,

    /// Output format.
    #[arg(short, long, value_enum, default_value = "table", global = true)]
    output: Output,

    /// Give up on a request after this many seconds.
    #[arg(long, default_value_t = 10, global = true)]
    timeout_secs: u64,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read and write keys.
    #[command(subcommand)]
    Kv(KvCommand),
    /// Inspect and change cluster membership.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Measure throughput and latency of a cluster (or of etcd, to compare).
    Bench(Box<aspen_node::bench::BenchArgs>),
}

#[derive(Debug, Subcommand)]
enum KvCommand {
    /// Print a key's value (exit status 1 if it has none).
    Get {
        key: String,
        /// Read this node's state without confirming with the leader (may be stale).
        #[arg(long)]
        stale: bool,
    },
    /// Set a key; VALUE "-" reads the value from standard input.
    Put { key: String, value: String },
    /// Delete a key.
    Del { key: String },
    /// List keys under a prefix, in order.
    Scan {
        /// Key prefix (empty: all keys).
        #[arg(default_value = "")]
        prefix: String,
        /// Items per page (1 to 10000).
        #[arg(long)]
        limit: Option<u32>,
        /// Start after this key (the `next_cursor` of a previous page).
        #[arg(long)]
        cursor: Option<String>,
        /// Follow cursors until every key under the prefix is listed.
        #[arg(long)]
        all: bool,
        /// Read without confirming with the leader (may be stale).
        #[arg(long)]
        stale: bool,
    },
    /// Compare-and-swap: set KEY to NEW only if it holds the expected value.
    Cas {
        key: String,
        new: String,
        /// The value KEY must hold.
        #[arg(long, required_unless_present = "expect_absent")]
        expect: Option<String>,
        /// KEY must have no value.
        #[arg(long, conflicts_with = "expect")]
        expect_absent: bool,
    },
    /// Run a transaction from a JSON file ("-": standard input), e.g.
    /// {"compare":[{"key":"a","check":"absent"}],"success":[{"put":{"key":"a","value":"1"}}]}
    Txn { file: String },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Initialise a new cluster on the first endpoint: alone, or with the given members.
    Init {
        /// A member as ID=PEER_ADDR,CLIENT_ADDR; repeat for each.
        #[arg(long = "member", value_parser = parse_member)]
        members: Vec<Member>,
    },
    /// Status of every endpoint's node.
    Status,
    /// Voters and learners, as the leader sees them, with replication lag.
    Members,
    /// Add a node as a learner (it receives the log but does not vote).
    AddLearner {
        node_id: u64,
        /// The node's peer address (host:port).
        #[arg(long)]
        peer: String,
        /// The node's client address (host:port).
        #[arg(long)]
        client: String,
        /// Return only once the learner has caught up with the log.
        #[arg(long)]
        wait: bool,
    },
    /// Make learners voters.
    Promote {
        #[arg(required = true)]
        node_ids: Vec<u64>,
    },
    /// Remove members (voters first stop voting, then leave).
    Remove {
        #[arg(required = true)]
        node_ids: Vec<u64>,
    },
    /// Hand leadership to another voter (the most up-to-date one by default).
    TransferLeader {
        #[arg(long)]
        to: Option<u64>,
    },
    /// Ask the first endpoint's node to hand leadership away if it leads.
    StepDown,
}

fn parse_member(text: &str) -> Result<Member, String> {
    let usage =
        || format!("{text:?} is not ID=PEER_ADDR,CLIENT_ADDR (e.g. 2=10.0.0.2:7001,10.0.0.2:7000)");
    let (id, addrs) = text.split_once('=').ok_or_else(usage)?;
    let (peer, client) = addrs.split_once(',').ok_or_else(usage)?;
    Ok(Member {
        node_id: id.trim().parse().map_err(|_| usage())?,
        peer_addr: peer.trim().to_owned(),
        client_addr: client.trim().to_owned(),
    })
}

fn consistency(stale: bool) -> Consistency {
    if stale {
        Consistency::Stale
    } else {
        Consistency::Linearizable
    }
}

fn read_input(source: &str) -> anyhow::Result<String> {
    if source == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading standard input")?;
        Ok(text)
    } else {
        std::fs::read_to_string(source).with_context(|| format!("reading {source}"))
    }
}

fn print<T: Serialize>(output: Output, value: &T, table: impl FnOnce(&T) -> String) {
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(value).expect("API types serialise")
        ),
        Output::Table => print!("{}", table(value)),
    }
}

async fn kv(client: &AspenClient, output: Output, command: KvCommand) -> anyhow::Result<ExitCode> {
    match command {
        KvCommand::Get { key, stale } => match client.get(&key, consistency(stale)).await? {
            Some(kv) => print(output, &kv, |kv| format!("{}\n", kv.value)),
            None => {
                if output == Output::Json {
                    println!("null");
                }
                eprintln!("aspenctl: key {key:?} has no value");
                return Ok(ExitCode::from(1));
            }
        },
        KvCommand::Put { key, value } => {
            let value = if value == "-" {
                read_input("-")?
            } else {
                value
            };
            let written = client.put(&key, &value).await?;
            print(output, &written, |w| {
                format!("OK revision {}\n", w.revision)
            });
        }
        KvCommand::Del { key } => {
            let deleted = client.delete(&key).await?;
            print(output, &deleted, |d| {
                if d.deleted {
                    format!("deleted (revision {})\n", d.revision)
                } else {
                    format!("no such key (revision {})\n", d.revision)
                }
            });
        }
        KvCommand::Scan {
            prefix,
            limit,
            mut cursor,
            all,
            stale,
        } => {
            let mut items: Vec<KeyValue> = Vec::new();
            let next = loop {
                let page = client
                    .scan(&prefix, cursor.as_deref(), limit, consistency(stale))
                    .await?;
                items.extend(page.items);
                match page.next_cursor {
                    Some(next) if all => cursor = Some(next),
                    other => break other,
                }
            };
            let page = aspen_node::api::ScanResponse {
                items,
                next_cursor: next,
            };
            print(output, &page, ctl::scan_table);
        }
        KvCommand::Cas {
            key,
            new,
            expect,
            expect_absent,
        } => {
            let request = CasRequest {
                key,
                expected: if expect_absent { None } else { expect },
                value: new,
            };
            let answer = client.cas(&request).await?;
            print(output, &answer, |a| {
                if a.succeeded {
                    format!("OK revision {}\n", a.revision)
                } else {
                    match &a.current {
                        Some(kv) => format!(
                            "FAILED: the key holds {:?} (revision {})\n",
                            kv.value, kv.revision
                        ),
                        None => "FAILED: the key has no value\n".to_owned(),
                    }
                }
            });
            if !answer.succeeded {
                return Ok(ExitCode::from(1));
            }
        }
        KvCommand::Txn { file } => {
            let text = read_input(&file)?;
            let request: TxnRequest = serde_json::from_str(&text)
                .with_context(|| format!("{file} is not a transaction"))?;
            let answer = client.txn(&request).await?;
            print(output, &answer, |a| {
                let branch = if a.succeeded { "success" } else { "failure" };
                format!("{branch} branch applied at revision {}\n", a.revision)
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Status of every endpoint, each asked alone (not forwarded).
async fn statuses(
    client: &AspenClient,
    timeout: Duration,
) -> Vec<(String, Result<NodeStatus, String>)> {
    let mut out = Vec::new();
    for endpoint in client.endpoints() {
        let one = AspenClient::new(vec![endpoint.clone()]).with_timeout(timeout);
        out.push((
            endpoint.clone(),
            one.status().await.map_err(|e| e.to_string()),
        ));
    }
    out
}

async fn cluster(
    client: &AspenClient,
    output: Output,
    timeout: Duration,
    command: ClusterCommand,
) -> anyhow::Result<ExitCode> {
    let view = |view: &MembershipView| ctl::membership_table(view, None);
    match command {
        ClusterCommand::Init { members } => {
            let first = AspenClient::new(client.endpoints()[..1].to_vec()).with_timeout(timeout);
            let answer = first.init(&InitRequest { members }).await?;
            print(output, &answer, view);
        }
        ClusterCommand::Status => {
            let all = statuses(client, timeout).await;
            let failed = all.iter().any(|(_, s)| s.is_err());
            match output {
                Output::Json => {
                    let json: Vec<_> = all
                        .iter()
                        .map(|(endpoint, status)| match status {
                            Ok(status) => {
                                serde_json::json!({ "endpoint": endpoint, "status": status })
                            }
                            Err(error) => {
                                serde_json::json!({ "endpoint": endpoint, "error": error })
                            }
                        })
                        .collect();
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&json).expect("JSON values serialise")
                    );
                }
                Output::Table => print!("{}", ctl::status_table(&all)),
            }
            if failed {
                return Ok(ExitCode::from(1));
            }
        }
        ClusterCommand::Members => {
            let status = client.status().await?;
            let leader = match status.leader_addr.clone() {
                Some(addr) if status.leader_id != Some(status.node_id) => {
                    AspenClient::new(vec![addr])
                        .with_timeout(timeout)
                        .status()
                        .await
                        .unwrap_or(status)
                }
                _ => status,
            };
            print(output, &leader, |s| {
                ctl::membership_table(&s.membership, s.replication.as_deref())
            });
        }
        ClusterCommand::AddLearner {
            node_id,
            peer,
            client: client_addr,
            wait,
        } => {
            let request = AddLearnerRequest {
                node_id,
                peer_addr: peer,
                client_addr,
                wait,
            };
            let answer = client
                .clone()
                .with_timeout(if wait {
                    Duration::from_secs(130)
                } else {
                    timeout
                })
                .add_learner(&request)
                .await?;
            print(output, &answer, view);
        }
        ClusterCommand::Promote { node_ids } => {
            let request = ChangeMembershipRequest {
                add_voters: node_ids,
                ..Default::default()
            };
            print(output, &client.change_membership(&request).await?, view);
        }
        ClusterCommand::Remove { node_ids } => {
            let status = client.status().await?;
            let (voters, learners): (Vec<u64>, Vec<u64>) = node_ids
                .iter()
                .partition(|id| status.membership.is_voter(**id));
            let mut answer = status.membership.clone();
            if !voters.is_empty() {
                let request = ChangeMembershipRequest {
                    remove_voters: voters,
                    ..Default::default()
                };
                answer = client.change_membership(&request).await?;
            }
            if !learners.is_empty() {
                answer = client
                    .remove_learners(&RemoveLearnersRequest { node_ids: learners })
                    .await?;
            }
            print(output, &answer, view);
        }
        ClusterCommand::TransferLeader { to } => {
            let answer = client
                .transfer_leader(&TransferLeaderRequest { to })
                .await?;
            print(output, &answer, |a| format!("node {} leads\n", a.leader));
        }
        ClusterCommand::StepDown => {
            let first = AspenClient::new(client.endpoints()[..1].to_vec()).with_timeout(timeout);
            let answer = first.step_down().await?;
            print(output, &answer, |a| format!("node {} leads\n", a.leader));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if cli.endpoints.is_empty() {
        bail!("no endpoints: pass --endpoints host:port[,host:port...]");
    }
    let timeout = Duration::from_secs(cli.timeout_secs);
    let client = AspenClient::new(cli.endpoints.clone()).with_timeout(timeout);
    match cli.command {
        Command::Kv(command) => kv(&client, cli.output, command).await,
        Command::Cluster(command) => cluster(&client, cli.output, timeout, command).await,
        Command::Bench(args) => aspen_node::bench::run(&cli.endpoints, cli.output, *args).await,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("aspenctl: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("aspenctl: {e:#}");
            ExitCode::from(2)
        }
    }
}
