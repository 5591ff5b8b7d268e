#!/usr/bin/env python3
"""Aspen against etcd, side by side, on this machine.

Starts a 3-member etcd (Debian's etcd-server, default durability) and a
3-node Aspen cluster (redb, fsync on) on loopback, drives both with the same
client (`aspenctl bench`, which speaks etcd's v3 JSON gateway too) through
identical workloads, and prints a table with ratios. It also runs Aspen on the
in-memory backend, and reads the leader's fsync counter, for the storage
targets. Results go to JSON and, when matplotlib is installed, to two PNG
charts (throughput and p99 latency against clients).

    cargo build --release -p aspen-node
    python3 tests/perf/compare.py --out docs/performance

See docs/performance.md for what it measured.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

WORKLOADS = [
    # name, read percent, preload keys
    ("writes", 0, False),
    ("reads", 100, True),
    ("mixed 90% reads", 90, True),
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, check, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


def http_ok(url, data=None):
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    with urllib.request.urlopen(request, timeout=2) as response:
        return response.status == 200


class Processes:
    """Children that are all stopped on exit, whatever happens."""

    def __init__(self):
        self.children = []

    def start(self, args, log):
        child = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self.children.append(child)
        return child

    def stop_all(self):
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in self.children:
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self.children = []


def start_etcd(procs, work):
    members = []
    for i in range(1, 4):
        members.append((f"etcd{i}", free_port(), free_port()))
    initial = ",".join(f"{name}=http://127.0.0.1:{peer}" for name, _, peer in members)
    for name, client, peer in members:
        log = open(work / f"{name}.log", "w")
        procs.start(
            [
                "etcd",
                "--name", name,
                "--data-dir", str(work / name),
                "--listen-client-urls", f"http://127.0.0.1:{client}",
                "--advertise-client-urls", f"http://127.0.0.1:{client}",
                "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-cluster", initial,
                "--initial-cluster-state", "new",
                "--initial-cluster-token", "aspen-compare",
            ],
            log,
        )
    endpoints = [f"127.0.0.1:{client}" for _, client, _ in members]
    for endpoint in endpoints:
        wait_for(f"etcd at {endpoint}", lambda e=endpoint: http_ok(f"http://{e}/health"))
    return endpoints


def aspenctl(bin_dir, endpoints, *args):
    out = subprocess.run(
        [str(bin_dir / "aspenctl"), "--endpoints", ",".join(endpoints), *args],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise SystemExit(f"aspenctl {' '.join(args)} failed:\n{out.stderr}")
    return out.stdout


def start_aspen(procs, work, bin_dir, storage):
    nodes = []
    for i in range(1, 4):
        client, peer = free_port(), free_port()
        log = open(work / f"aspen-{storage}-{i}.log", "w")
        procs.start(
            [
                str(bin_dir / "aspen-node"),
                "--node-id", str(i),
                "--data-dir", str(work / f"aspen-{storage}-{i}"),
                "--storage", storage,
                "--client-listen", f"127.0.0.1:{client}",
                "--peer-listen", f"127.0.0.1:{peer}",
                "--cluster-id", f"compare-{storage}",
            ],
            log,
        )
        nodes.append((i, f"127.0.0.1:{client}", f"127.0.0.1:{peer}"))
    for _, client, _ in nodes:
        wait_for(f"aspen at {client}", lambda c=client: http_ok(f"http://{c}/healthz"))
    first = [nodes[0][1]]
    aspenctl(bin_dir, first, "cluster", "init")
    for i, client, peer in nodes[1:]:
        aspenctl(bin_dir, first, "cluster", "add-learner", str(i), "--peer", peer, "--client", client, "--wait")
        aspenctl(bin_dir, first, "cluster", "promote", str(i))
    return [client for _, client, _ in nodes]


def bench(bin_dir, target, endpoints, clients, read_percent, preload, duration):
    args = [
        "-o", "json", "bench",
        "--target", target,
        "--clients", str(clients),
        "--duration-secs", str(duration),
        "--read-percent", str(read_percent),
        "--keys", "10000",
    ]
    if preload:
        args.append("--preload")
    return json.loads(aspenctl(bin_dir, endpoints, *args))


def leader_metrics(endpoints):
    """The leader's durable commits, the time they took, and committed
    proposals, with its endpoint and term (to tell whether a run kept one
    leader throughout)."""
    for endpoint in endpoints:
        with urllib.request.urlopen(f"http://{endpoint}/v1/admin/status", timeout=2) as r:
            status = json.load(r)
        if status["role"] == "leader":
            with urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=2) as r:
                text = r.read().decode()
            values = {"leader": (endpoint, status["term"]), "fsyncs": 0.0, "fsync_seconds": 0.0, "writes": 0.0}
            for line in text.splitlines():
                if line.startswith("aspen_storage_durable_commits_total"):
                    values["fsyncs"] = float(line.split()[-1])
                if line.startswith("aspen_storage_durable_commit_seconds_total"):
                    values["fsync_seconds"] = float(line.split()[-1])
                if line.startswith("aspen_proposals_total") and 'outcome="committed"' in line:
                    values["writes"] = float(line.split()[-1])
            return values
    raise SystemExit("no Aspen leader found")


def chart(results, out):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no charts (pip install matplotlib)")
        return
    for metric, label, name in [
        ("throughput_per_sec", "requests per second", "throughput.png"),
        ("p99_ms", "p99 latency (ms)", "p99.png"),
    ]:
        fig, axes = plt.subplots(1, len(WORKLOADS), figsize=(5 * len(WORKLOADS), 4))
        for ax, (workload, _, _) in zip(axes, WORKLOADS):
            for system, style in [("aspen", "o-"), ("etcd", "s--")]:
                rows = [r for r in results if r["workload"] == workload and r["system"] == system]
                ax.plot([r["clients"] for r in rows], [r[metric] for r in rows], style, label=system)
            ax.set_xscale("log", base=2)
            ax.set_title(workload)
            ax.set_xlabel("clients")
            ax.set_ylabel(label)
            ax.grid(True, alpha=0.3)
            ax.legend()
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        print(f"wrote {out / name}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin-dir", type=Path, default=ROOT / "target" / "release")
    parser.add_argument("--duration", type=int, default=10, help="seconds per run")
    parser.add_argument("--clients", default="1,16,64,256")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "performance")
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so that `finally` stops every child.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if shutil.which("etcd") is None:
        raise SystemExit("etcd is not installed (apt-get install -y etcd-server etcd-client)")
    for binary in ("aspen-node", "aspenctl"):
        if not (args.bin_dir / binary).exists():
            raise SystemExit(f"{args.bin_dir / binary} is missing: cargo build --release -p aspen-node")
    clients = [int(c) for c in args.clients.split(",")]
    # The storage targets are stated at 64 clients.
    storage_clients = 64 if 64 in clients else max(clients)
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    extra = {}
    procs = Processes()
    work = Path(tempfile.mkdtemp(prefix="aspen-compare-"))
    try:
        for system in ("etcd", "aspen"):
            endpoints = start_etcd(procs, work) if system == "etcd" else start_aspen(procs, work, args.bin_dir, "redb")
            for workload, read_percent, preload in WORKLOADS:
                for n in clients:
                    before = leader_metrics(endpoints) if system == "aspen" and read_percent == 0 else None
                    report = bench(args.bin_dir, system, endpoints, n, read_percent, preload and n == clients[0], args.duration)
                    row = {
                        "system": system,
                        "workload": workload,
                        "clients": n,
                        "throughput_per_sec": report["throughput_per_sec"],
                        "p50_ms": report["latency_ms"]["p50"],
                        "p99_ms": report["latency_ms"]["p99"],
                        "errors": sum(report["errors"].values()),
                    }
                    after = leader_metrics(endpoints) if before is not None else None
                    if after is not None and after["leader"] != before["leader"]:
                        print(f"leadership moved during the run ({before['leader']} -> {after['leader']}): no fsync figures")
                    elif after is not None:
                        writes = after["writes"] - before["writes"]
                        fsyncs = after["fsyncs"] - before["fsyncs"]
                        row["fsyncs_per_write"] = fsyncs / writes if writes else None
                        row["leader_commit_ms"] = 1000 * (after["fsync_seconds"] - before["fsync_seconds"]) / fsyncs if fsyncs else None
                    results.append(row)
                    commit = ""
                    if row.get("leader_commit_ms") is not None and row.get("fsyncs_per_write") is not None:
                        commit = f"  leader commit {row['leader_commit_ms']:.2f} ms, {row['fsyncs_per_write']:.3f} per write"
                    print(f"{system:5} {workload:16} {n:4} clients: {row['throughput_per_sec']:9.0f}/s  p50 {row['p50_ms']:6.2f} ms  p99 {row['p99_ms']:7.2f} ms  errors {row['errors']}{commit}", flush=True)
            procs.stop_all()
        endpoints = start_aspen(procs, work, args.bin_dir, "memory")
        memory = bench(args.bin_dir, "aspen", endpoints, storage_clients, 0, False, args.duration)
        extra["aspen_memory_writes"] = {"clients": storage_clients, "throughput_per_sec": memory["throughput_per_sec"]}
        procs.stop_all()
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)

    out = {"machine": {"cpus": os.cpu_count()}, "duration_secs": args.duration, "results": results, **extra}
    (args.out / "results.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out / 'results.json'}")

    print()
    print(f"{'workload':18} {'clients':>7} {'aspen/s':>10} {'etcd/s':>10} {'ratio':>6} {'aspen p99':>10} {'etcd p99':>9}")
    for workload, _, _ in WORKLOADS:
        for n in clients:
            a = next(r for r in results if r["system"] == "aspen" and r["workload"] == workload and r["clients"] == n)
            e = next(r for r in results if r["system"] == "etcd" and r["workload"] == workload and r["clients"] == n)
            ratio = a["throughput_per_sec"] / e["throughput_per_sec"] if e["throughput_per_sec"] else float("inf")
            print(f"{workload:18} {n:7} {a['throughput_per_sec']:10.0f} {e['throughput_per_sec']:10.0f} {ratio:6.2f} {a['p99_ms']:9.2f}ms {e['p99_ms']:8.2f}ms")
    redb = next(r for r in results if r["system"] == "aspen" and r["workload"] == "writes" and r["clients"] == storage_clients)
    memory = extra["aspen_memory_writes"]["throughput_per_sec"]
    fsyncs = redb.get("fsyncs_per_write")
    ratio = f"{redb['throughput_per_sec'] / memory:.2f}" if memory else "n/a"
    fsyncs = f"{fsyncs:.3f}" if fsyncs is not None else "n/a"
    print(f"\naspen writes at {storage_clients} clients: redb {redb['throughput_per_sec']:.0f}/s, memory {memory:.0f}/s "
          f"(ratio {ratio}); fsyncs per write on the leader: {fsyncs}")
    chart(results, args.out)


if __name__ == "__main__":
    sys.exit(main())
