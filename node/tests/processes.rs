//! The binaries as users run them: `aspen-node` processes driven by
//! `aspenctl`, and SIGTERM handled gracefully.

mod support;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use support::eventually;
use tempfile::TempDir;

const NODE: &str = env!("CARGO_BIN_EXE_aspen-node");
const CTL: &str = env!("CARGO_BIN_EXE_aspenctl");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct NodeProcess {
    id: u64,
    client: String,
    peer: String,
    child: Option<Child>,
}

impl NodeProcess {
    fn spawn(id: u64, dir: &Path, client: String, peer: String) -> Self {
        let child = Command::new(NODE)
            .args(["--node-id", &id.to_string()])
            .arg("--data-dir")
            .arg(dir.join(format!("node-{id}")))
            .args(["--client-listen", &client, "--peer-listen", &peer])
            .args(["--heartbeat-ms", "50", "--election-timeout-min-ms", "300"])
            .args([
                "--election-timeout-max-ms",
                "600",
                "--cluster-id",
                "proc-test",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("aspen-node starts");
        NodeProcess {
            id,
            client,
            peer,
            child: Some(child),
        }
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.child.as_ref().expect("running").id()).unwrap()
    }

    /// Sends SIGTERM and waits for the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let mut child = self.child.take().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "node {} ignored SIGTERM",
                self.id
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn ctl(endpoints: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(CTL)
        .args(["--endpoints", endpoints])
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

/// Runs aspenctl and returns its standard output, failing on a non-zero exit.
fn ctl_ok(endpoints: &str, args: &[&str]) -> String {
    let out = ctl(endpoints, args, None);
    assert!(
        out.status.success(),
        "aspenctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aspenctl_drives_node_processes_and_sigterm_stops_them_gracefully() {
    let dir = TempDir::new().unwrap();
    let mut nodes: Vec<NodeProcess> = (1..=3)
        .map(|id| {
            let (client, peer) = (
                format!("127.0.0.1:{}", free_port()),
                format!("127.0.0.1:{}", free_port()),
            );
            NodeProcess::spawn(id, dir.path(), client, peer)
        })
        .collect();
    let all = nodes
        .iter()
        .map(|n| n.client.clone())
        .collect::<Vec<_>>()
        .join(",");
    let first = nodes[0].client.clone();
    eventually("every node to answer", Duration::from_secs(20), || async {
        nodes
            .iter()
            .all(|n| {
                ctl(&n.client, &["cluster", "status"], None)
                    .status
                    .success()
            })
            .then_some(())
    })
    .await;

    // Form the cluster the operator's way, with the CLI.
    ctl_ok(&first, &["cluster", "init"]);
    for node in &nodes[1..] {
        let id = node.id.to_string();
        ctl_ok(
            &first,
            &[
                "cluster",
                "add-learner",
                &id,
                "--peer",
                &node.peer,
                "--client",
                &node.client,
                "--wait",
            ],
        );
        ctl_ok(&first, &["cluster", "promote", &id]);
    }
    let members = json(&ctl_ok(&all, &["-o", "json", "cluster", "members"]));
    assert_eq!(members["membership"]["voters"].as_array().unwrap().len(), 3);

    // Every kv command, through any endpoint.
    let last = nodes[2].client.clone();
    ctl_ok(&last, &["kv", "put", "greeting", "hello"]);
    assert_eq!(ctl_ok(&first, &["kv", "get", "greeting"]), "hello\n");
    let out = ctl(&first, &["kv", "get", "absent"], None);
    assert_eq!(out.status.code(), Some(1));
    ctl_ok(&all, &["kv", "put", "list/a", "1"]);
    ctl_ok(&all, &["kv", "put", "list/b", "2"]);
    let page = json(&ctl_ok(
        &all,
        &["-o", "json", "kv", "scan", "list/", "--limit", "1", "--all"],
    ));
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert!(ctl_ok(&all, &["kv", "scan", "list/"]).contains("list/b"));
    ctl_ok(&all, &["kv", "cas", "greeting", "hi", "--expect", "hello"]);
    let out = ctl(
        &all,
        &["kv", "cas", "greeting", "x", "--expect", "hello"],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "a failed swap exits 1");
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"hi\""));
    let txn = r#"{"compare": [{"key": "list/a", "check": {"value": "1"}}],
                  "success": [{"delete": {"key": "list/a"}}, {"put": {"key": "moved", "value": "1"}}]}"#;
    let out = ctl(&all, &["kv", "txn", "-"], Some(txn));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("success"));
    assert_eq!(ctl_ok(&all, &["kv", "get", "moved"]), "1\n");
    assert!(ctl_ok(&all, &["kv", "del", "moved"]).starts_with("deleted"));
    let status = json(&ctl_ok(&all, &["-o", "json", "cluster", "status"]));
    assert_eq!(status.as_array().unwrap().len(), 3);

    // Hand leadership to node 3, then stop it with SIGTERM: it hands over
    // again, exits 0, and comes back from its data directory as a follower.
    let moved = json(&ctl_ok(
        &all,
        &["-o", "json", "cluster", "transfer-leader", "--to", "3"],
    ));
    assert_eq!(moved["leader"], 3);
    let exit = nodes[2].terminate();
    assert!(exit.success(), "SIGTERM exit status {exit}");
    let two = format!("{},{}", nodes[0].client, nodes[1].client);
    let leader = eventually(
        "a leader among the other two",
        Duration::from_secs(10),
        || async {
            let status = json(
                &String::from_utf8(ctl(&two, &["-o", "json", "cluster", "status"], None).stdout)
                    .ok()?,
            );
            status[0]["status"]["leader_id"]
                .as_u64()
                .filter(|l| *l != 3)
        },
    )
    .await;
    ctl_ok(&two, &["kv", "put", "while-down", "yes"]);
    let (client, peer) = (nodes[2].client.clone(), nodes[2].peer.clone());
    nodes[2] = NodeProcess::spawn(3, dir.path(), client, peer);
    eventually("node 3 to catch up", Duration::from_secs(20), || async {
        let out = ctl(
            &nodes[2].client,
            &["kv", "get", "while-down", "--stale"],
            None,
        );
        (out.status.success() && out.stdout == b"yes\n").then_some(())
    })
    .await;
    let status = json(&ctl_ok(
        &nodes[2].client,
        &["-o", "json", "cluster", "status"],
    ));
    assert_eq!(status[0]["status"]["leader_id"].as_u64(), Some(leader));
    assert_eq!(status[0]["status"]["role"], "follower");
    for node in &mut nodes {
        assert!(node.terminate().success());
    }
}
