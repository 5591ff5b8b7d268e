//! `aspenctl bench`: a closed-loop load generator for Aspen, and for etcd's
//! v3 JSON gateway with the very same client code, so that a comparison
//! measures the servers rather than the clients.
//!
//! Each of `--clients` tasks sends one request at a time over its own
//! keep-alive connection, to the endpoints in turn (client i uses endpoint
//! i mod n). Latencies go into an HDR histogram (microseconds, 3 significant
//! digits); errors are counted by kind and never retried.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde::Serialize;

use crate::client::{HttpClient, encode_component, http_client};
use crate::ctl::Output;
use crate::limits::{MAX_KEY_BYTES, MAX_VALUE_BYTES};

/// Longest wait for one response before it counts as a `timeout` error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Aspen's client API (`/v1/kv/{key}`).
    Aspen,
    /// etcd's v3 JSON gateway (`/v3/kv/put`, `/v3/kv/range`).
    Etcd,
}

/// Read consistency of the benchmark's reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadConsistency {
    /// Aspen's default; etcd's default range.
    Linearizable,
    /// Aspen's `consistency=stale`; etcd's `serializable: true`.
    Stale,
}

/// Measure throughput and latency against a running cluster.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Which server speaks on the endpoints.
    #[arg(long, value_enum, default_value = "aspen")]
    pub target: Target,
    /// Concurrent clients, each with one request in flight.
    #[arg(long, default_value_t = 16)]
    pub clients: u32,
    /// How long to run, in seconds (ignored with --requests).
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Stop after this many requests in total instead of after a duration.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Distinct keys the requests spread over.
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// Key length in bytes (at least 8).
    #[arg(long, default_value_t = 16)]
    pub key_bytes: usize,
    /// Value length in bytes.
    #[arg(long, default_value_t = 256)]
    pub value_bytes: usize,
    /// Percentage of requests that are reads (the rest are writes).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub read_percent: u8,
    /// Consistency of reads.
    #[arg(long, value_enum, default_value = "linearizable")]
    pub consistency: ReadConsistency,
    /// Write every key once before measuring, so that reads find values.
    #[arg(long)]
    pub preload: bool,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub target: Target,
    pub clients: u32,
    pub read_percent: u8,
    pub consistency: ReadConsistency,
    pub key_bytes: usize,
    pub value_bytes: usize,
    pub elapsed_secs: f64,
    pub requests: u64,
    pub succeeded: u64,
    pub throughput_per_sec: f64,
    pub latency_ms: Latency,
    pub errors: BTreeMap<String, u64>,
}

/// One request kind, built once per run.
struct Workload {
    target: Target,
    http: HttpClient,
    endpoints: Vec<String>,
    args: BenchArgs,
    value: String,
}

impl Workload {
    fn key(&self, n: u64) -> String {
        let digits = self.args.key_bytes.saturating_sub(1).max(1);
        format!("k{n:0digits$}")
    }

    fn request(&self, client: u32, n: u64, read: bool) -> Request<Full<Bytes>> {
        let endpoint = &self.endpoints[client as usize % self.endpoints.len()];
        let key = self.key(n);
        let stale = self.args.consistency == ReadConsistency::Stale;
        let (method, uri, body) = match (self.target, read) {
            (Target::Aspen, true) => {
                let query = if stale { "?consistency=stale" } else { "" };
                (Method::GET, format!("{endpoint}/v1/kv/{}{query}", encode_component(&key)), Bytes::new())
            }
            (Target::Aspen, false) => (
                Method::PUT,
                format!("{endpoint}/v1/kv/{}", encode_component(&key)),
                Bytes::from(serde_json::to_vec(&serde_json::json!({ "value": self.value })).expect("JSON")),
            ),
            (Target::Etcd, true) => (
                Method::POST,
                format!("{endpoint}/v3/kv/range"),
                Bytes::from(
                    serde_json::to_vec(&serde_json::json!({ "key": base64(key.as_bytes()), "serializable": stale }))
                        .expect("JSON"),
                ),
            ),
            (Target::Etcd, false) => (
                Method::POST,
                format!("{endpoint}/v3/kv/put"),
                Bytes::from(
                    serde_json::to_vec(&serde_json::json!({
                        "key": base64(key.as_bytes()),
                        "value": base64(self.value.as_bytes()),
                    }))
                    .expect("JSON"),
                ),
            ),
        };
        Request::builder()
            .method(method)
            .uri(uri)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .expect("valid request")
    }

    /// Sends one request; `Err` names the kind of failure.
    async fn send(&self, client: u32, n: u64, read: bool) -> Result<(), String> {
        let request = self.http.request(self.request(client, n, read));
        let response = tokio::time::timeout(REQUEST_TIMEOUT, request)
            .await
            .map_err(|_| "timeout".to_owned())?
            .map_err(|e| {
                if e.is_connect() {
                    "connect".to_owned()
                } else {
                    "transport".to_owned()
                }
            })?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|_| "transport".to_owned())?
            .to_bytes();
        // A read of a key never written is a valid answer.
        let ok = status.is_success()
            || (read && status == StatusCode::NOT_FOUND && self.target == Target::Aspen);
        if ok {
            Ok(())
        } else {
            let code = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("code").and_then(|c| c.as_str().map(str::to_owned)));
            Err(format!(
                "http_{}{}",
                status.as_u16(),
                code.map(|c| format!("_{c}")).unwrap_or_default()
            ))
        }
    }
}

/// Standard base64 with padding, as etcd's gateway expects for bytes.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A small fast generator per client: keys and read/write choices need to be
/// spread, not secret.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn millis(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}

/// Runs the benchmark and returns what it measured.
pub async fn measure(endpoints: &[String], args: BenchArgs) -> anyhow::Result<BenchReport> {
    anyhow::ensure!(args.clients > 0, "--clients must be at least 1");
    anyhow::ensure!(args.keys > 0, "--keys must be at least 1");
    anyhow::ensure!(
        (8..=MAX_KEY_BYTES).contains(&args.key_bytes),
        "--key-bytes must be between 8 and {MAX_KEY_BYTES}"
    );
    anyhow::ensure!(
        args.value_bytes <= MAX_VALUE_BYTES,
        "--value-bytes must be at most {MAX_VALUE_BYTES}"
    );
    // Keys are "k" and a zero-padded number: the number must fit.
    let key_digits = u32::try_from(args.key_bytes - 1).unwrap_or(u32::MAX);
    anyhow::ensure!(
        10u64
            .checked_pow(key_digits)
            .is_none_or(|room| args.keys <= room),
        "--keys {} do not fit in --key-bytes {}: raise --key-bytes",
        args.keys,
        args.key_bytes
    );
    anyhow::ensure!(!endpoints.is_empty(), "no endpoints");
    let workload = Arc::new(Workload {
        target: args.target,
        http: http_client(Duration::from_secs(2)),
        endpoints: endpoints
            .iter()
            .map(|e| {
                if e.starts_with("http") {
                    e.clone()
                } else {
                    format!("http://{e}")
                }
            })
            .collect(),
        value: "v".repeat(args.value_bytes),
        args: args.clone(),
    });
    if args.preload {
        preload(&workload).await?;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let issued = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..args.clients {
        let (workload, stop, issued, done) =
            (workload.clone(), stop.clone(), issued.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = SplitMix(u64::from(client).wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0xA5A5);
            let mut histogram = Histogram::<u64>::new(3).expect("valid histogram");
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            let limit = workload.args.requests;
            while !stop.load(Ordering::Relaxed) {
                if limit.is_some_and(|limit| issued.fetch_add(1, Ordering::Relaxed) >= limit) {
                    break;
                }
                let n = rng.next() % workload.args.keys;
                let read = rng.next() % 100 < u64::from(workload.args.read_percent);
                let sent = Instant::now();
                match workload.send(client, n, read).await {
                    Ok(()) => {
                        let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                        histogram
                            .record(micros.max(1))
                            .expect("an auto-resizing histogram takes any value");
                    }
                    Err(kind) => *errors.entry(kind).or_default() += 1,
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            (histogram, errors)
        }));
    }
    let progress = tokio::spawn(report_progress(done.clone(), stop.clone()));
    if args.requests.is_none() {
        tokio::time::sleep(Duration::from_secs(args.duration_secs)).await;
        stop.store(true, Ordering::Relaxed);
    }
    let mut histogram = Histogram::<u64>::new(3).expect("valid histogram");
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for task in tasks {
        let (h, e) = task.await?;
        histogram
            .add(h)
            .expect("histograms of equal precision merge");
        for (kind, count) in e {
            *errors.entry(kind).or_default() += count;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = progress.await;
    let succeeded = histogram.len();
    let failed: u64 = errors.values().sum();
    Ok(BenchReport {
        target: args.target,
        clients: args.clients,
        read_percent: args.read_percent,
        consistency: args.consistency,
        key_bytes: args.key_bytes,
        value_bytes: args.value_bytes,
        elapsed_secs: elapsed,
        requests: succeeded + failed,
        succeeded,
        throughput_per_sec: succeeded as f64 / elapsed,
        latency_ms: Latency {
            mean: histogram.mean() / 1000.0,
            p50: millis(&histogram, 0.5),
            p90: millis(&histogram, 0.9),
            p99: millis(&histogram, 0.99),
            p999: millis(&histogram, 0.999),
            max: histogram.max() as f64 / 1000.0,
        },
        errors,
    })
}

/// Writes every key once, 64 requests at a time.
async fn preload(workload: &Arc<Workload>) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for client in 0..64u32 {
        let (workload, next) = (workload.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= workload.args.keys {
                    return Ok::<(), anyhow::Error>(());
                }
                workload
                    .send(client, n, false)
                    .await
                    .map_err(|kind| anyhow::anyhow!("preloading key {n} failed: {kind}"))?;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// Prints a progress line to standard error every second.
async fn report_progress(done: Arc<AtomicU64>, stop: Arc<AtomicBool>) {
    let started = Instant::now();
    let mut last = 0;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = done.load(Ordering::Relaxed);
        eprint!(
            "\r[{:>4.0}s] {now} requests, {} /s      ",
            started.elapsed().as_secs_f64(),
            now - last
        );
        last = now;
    }
    eprintln!();
}

/// The report as the table `aspenctl bench` prints.
pub fn report_table(report: &BenchReport) -> String {
    let l = &report.latency_ms;
    let errors = if report.errors.is_empty() {
        "none".to_owned()
    } else {
        report
            .errors
            .iter()
            .map(|(kind, n)| format!("{kind}={n}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        "target        {:?}\nclients       {}\nmix           {}% reads ({:?}), {}-byte keys, {}-byte values\nrequests      {} in {:.1}s ({} ok)\nthroughput    {:.0} /s\nlatency (ms)  mean {:.2}  p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}\nerrors        {errors}\n",
        report.target,
        report.clients,
        report.read_percent,
        report.consistency,
        report.key_bytes,
        report.value_bytes,
        report.requests,
        report.elapsed_secs,
        report.succeeded,
        report.throughput_per_sec,
        l.mean,
        l.p50,
        l.p90,
        l.p99,
        l.p999,
        l.max,
    )
}

/// `aspenctl bench`.
pub async fn run(
    endpoints: &[String],
    output: Output,
    args: BenchArgs,
) -> anyhow::Result<std::process::ExitCode> {
    let report = measure(endpoints, args).await?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => print!("{}", report_table(&report)),
    }
    if report.succeeded == 0 {
        eprintln!("aspenctl bench: no request succeeded; see the errors above");
        return Ok(std::process::ExitCode::FAILURE);
    }
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> BenchArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            bench: BenchArgs,
        }
        let argv = std::iter::once("bench").chain(extra.iter().copied());
        <Cli as clap::Parser>::parse_from(argv).bench
    }

    #[tokio::test]
    async fn sizes_are_checked_before_anything_is_sent() {
        let endpoints = ["127.0.0.1:1".to_owned()];
        for (extra, expected) in [
            (&["--key-bytes", "5000"][..], "--key-bytes must be between"),
            (
                &["--value-bytes", "2000000"][..],
                "--value-bytes must be at most",
            ),
            (
                &["--key-bytes", "8", "--keys", "100000000"][..],
                "do not fit",
            ),
        ] {
            let error = measure(&endpoints, args(extra)).await.unwrap_err();
            assert!(error.to_string().contains(expected), "{error}");
        }
    }

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }
}
