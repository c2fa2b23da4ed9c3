//! Herald's end-to-end benchmarks. `cargo run --release -p herald-bench --
//! <scenario> [--quick]` starts what it measures, drives it, prints a table
//! and one final JSON line with every figure.
//!
//! - `baseline`: the load generator straight to the receiver, the machine's
//!   physical limit. Every scenario runs it first and reports itself as a
//!   ratio of it, so figures survive a noisy machine.
//! - `standalone`: CloudEvents POSTed to standalone Herald (SQLite).
//! - `kafka`: CloudEvents produced to the input topic, through `ingest`,
//!   Cassandra and `delivery` as separate processes (needs `scripts/infra up`).
//! - `retry`: one first attempt in ten fails; lateness of every retry against
//!   its recorded due time, in both modes. `--mixed`: the same next to a
//!   neighbour webhook whose receiver always asks for `Retry-After: 90`,
//!   with retries crossing tier boundaries ([`pipeline::Shape::Mixed`]).
//! - `store`: sustained notification + attempt writes of each store adapter.
//! - `circuit`: the circuit breaker against modelled receivers, without and
//!   with it, in simulated time (no baseline: nothing here depends on the
//!   machine).
//! - `tls`: Herald's sender to a TLS receiver with a private CA, with and
//!   without mutual TLS: pooled (steady state) and with a new connection per
//!   request (`Connection: close`: the handshake cost).
//! - `console`: the console's history page in headless Chromium with
//!   100,000 notifications in the store (`--quick`: 10,000), both modes:
//!   time to the first render against the same page with an empty history,
//!   and API calls per page view (needs the bootstrap venv's Playwright).
//! - `all`: every scenario, one after the other (what `scripts/test` runs
//!   with `--quick`).
//!
//! Phases last 30 s (`--quick`: 5 s); a full `all` run takes about five
//! minutes, `--quick` about one. `--batch N` sets the events per submission
//! of `standalone`, `kafka` and `retry` (default 100: one POST of 100
//! events). `standalone --batch 1` is one event per POST, as many
//! core-banking adapters send them, with up to 64 submitters.

mod circuit;
mod console;
mod e2e;
mod measure;
mod pipeline;
mod retry;
mod store;
mod tls;

use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use measure::{Percentiles, cores, receiver};
use pipeline::{Pipeline, Shape};

/// Attempts Herald keeps in flight (its default); the baseline uses the same.
const CONCURRENCY: usize = 256;
/// The API token of the Herald under measurement.
const TOKEN: &str = "bench-token";
const SCENARIOS: [&str; 9] = [
    "baseline",
    "standalone",
    "kafka",
    "retry",
    "store",
    "circuit",
    "tls",
    "console",
    "all",
];

struct Opts {
    quick: bool,
    /// `retry --mixed`: see [`pipeline::Shape::Mixed`].
    mixed: bool,
    /// `--batch N`: events per submission in the end-to-end scenarios
    /// (default [`e2e::BATCH`]).
    batch: usize,
}

impl Opts {
    fn phase(&self) -> Duration {
        Duration::from_secs(if self.quick { 5 } else { 30 })
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Runtime::new()?;
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
    if arg(0).starts_with("serve-") {
        // The measured processes log warnings and errors to stderr.
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_writer(std::io::stderr)
            .init();
    }
    match arg(0) {
        // Internal: the Herald processes the scenarios measure.
        "serve-standalone" => runtime.block_on(pipeline::serve_standalone(arg(1))),
        "serve-ingest" => runtime.block_on(pipeline::serve_ingest(arg(1))),
        "serve-delivery" => runtime.block_on(pipeline::serve_delivery(arg(1))),
        "circuit" => {
            println!("{}", circuit::run());
            Ok(())
        }
        scenario if SCENARIOS.contains(&scenario) => {
            let batch = match args.iter().position(|a| a == "--batch") {
                None => e2e::BATCH,
                Some(i) => match args.get(i + 1).and_then(|n| n.parse::<usize>().ok()) {
                    Some(n @ 1..=1000) => n,
                    _ => {
                        eprintln!("--batch takes a number of events from 1 to 1000");
                        std::process::exit(2);
                    }
                },
            };
            let opts = Opts {
                quick: args.iter().any(|a| a == "--quick"),
                mixed: args.iter().any(|a| a == "--mixed"),
                batch,
            };
            runtime.block_on(run(scenario, &opts))
        }
        _ => {
            eprintln!(
                "usage: herald-bench <{}> [--quick] [--mixed (retry)] [--batch N (events per submission)]",
                SCENARIOS.join("|")
            );
            std::process::exit(2);
        }
    }
}

fn row(name: &str, value: f64, decimals: usize) {
    println!("{name:<44} {value:>12.decimals$}");
}

fn latency_rows(label: &str, p: &Percentiles) {
    for (name, v) in [
        ("p50", p.p50),
        ("p95", p.p95),
        ("p99", p.p99),
        ("max", p.max),
    ] {
        row(&format!("  {label} {name} (ms)"), v, 1);
    }
}

async fn run(scenario: &str, opts: &Opts) -> anyhow::Result<()> {
    let started = Instant::now();
    println!(
        "herald-bench {scenario}{}: {} cores, phases of {:?}, {} events per submission",
        if opts.quick { " --quick" } else { "" },
        cores(),
        opts.phase(),
        opts.batch,
    );
    let mut figures = Map::new();
    let base = baseline(opts).await?;
    row("baseline requests/s", base, 0);
    figures.insert("baseline_rps".into(), json!(base));
    let all = scenario == "all";
    for mode in ["standalone", "kafka"] {
        if scenario == mode || all {
            let rx = receiver(false).await?;
            let p = start(mode, rx.addr.port(), Shape::Plain).await?;
            let f = e2e::run(&p, &rx, opts).await;
            p.stop().await?;
            let f = f?;
            row(&format!("{mode} deliveries/s (sustained)"), f.rate, 0);
            row("  as a ratio of baseline", f.rate / base, 3);
            row(
                "  whole-machine CPU-ms per delivery",
                f.cpu_ms_per_delivery,
                3,
            );
            for (process, ms) in &f.cpu_by_process {
                row(&format!("    of which {process}"), *ms, 3);
            }
            // CPU per delivery scaled to the machine: CPU-ms per delivery
            // times what the same machine's baseline does per millisecond.
            let scaled = f.cpu_ms_per_delivery * base / 1000.0;
            row("  CPU per delivery x baseline requests/ms", scaled, 2);
            for (role, mb) in &f.rss {
                row(&format!("  {role} peak RSS (MB)"), *mb, 0);
            }
            row("latency phase rate (events/s, half peak)", f.half_rate, 0);
            latency_rows("accepted->received", &f.latency);
            if let Some(lag) = f.lag {
                row("  consumer lag at the end (messages)", lag as f64, 0);
            }
            if !f.cql_requests.is_empty() {
                let all: f64 = f.cql_requests.iter().map(|(_, n)| n).sum();
                row("  CQL requests per delivered notification", all, 2);
                for (role, n) in &f.cql_requests {
                    row(&format!("    of which {role}"), *n, 2);
                }
            }
            figures.insert(mode.into(), json!({
                "deliveries_per_s": f.rate, "ratio_to_baseline": f.rate / base,
                "cpu_ms_per_delivery": f.cpu_ms_per_delivery, "cpu_x_baseline_per_ms": f.cpu_ms_per_delivery * base / 1000.0,
                "cpu_ms_per_delivery_by_process": f.cpu_by_process.iter().map(|(p, ms)| (p.clone(), json!(ms))).collect::<Map<String, Value>>(),
                "peak_rss_mb": f.rss.iter().map(|(r, mb)| (r.to_string(), json!(mb))).collect::<Map<String, Value>>(),
                "latency_rate_per_s": f.half_rate, "p50_ms": f.latency.p50, "p95_ms": f.latency.p95,
                "p99_ms": f.latency.p99, "max_ms": f.latency.max, "consumer_lag": f.lag,
                "cql_requests_per_delivery": f.cql_requests.iter().map(|(r, n)| (r.to_string(), json!(n))).collect::<Map<String, Value>>(),
            }));
        }
    }
    if scenario == "retry" || all {
        let mut modes = Map::new();
        for mode in ["standalone", "kafka"] {
            let rx = receiver(true).await?;
            let shape = if opts.mixed {
                Shape::Mixed
            } else {
                Shape::Plain
            };
            let p = start(mode, rx.addr.port(), shape).await?;
            let f = retry::run(&p, &rx, opts).await;
            p.stop().await?;
            let f = f?;
            row(
                &format!(
                    "retry{} ({mode}): events / retries",
                    if opts.mixed { " --mixed" } else { "" }
                ),
                f.events as f64,
                0,
            );
            row(
                "  retries (first attempt answered 503)",
                f.retries as f64,
                0,
            );
            row("  early retries (must be 0)", f.early as f64, 0);
            latency_rows("lateness (arrival - due)", &f.lateness_ms);
            modes.insert(
                mode.into(),
                json!({
                    "events": f.events, "retries": f.retries, "early": f.early,
                    "lateness_p50_ms": f.lateness_ms.p50, "lateness_p99_ms": f.lateness_ms.p99,
                    "lateness_max_ms": f.lateness_ms.max,
                }),
            );
        }
        figures.insert("retry".into(), Value::Object(modes));
    }
    if scenario == "store" || all {
        let mut adapters = Map::new();
        for f in store::run(opts).await? {
            row(
                &format!("store {}: notifications/s", f.adapter),
                f.notifications_per_s,
                0,
            );
            row("  attempts/s (one per notification)", f.attempts_per_s, 0);
            adapters.insert(f.adapter.into(), json!({
                "notifications_per_s": f.notifications_per_s, "attempts_per_s": f.attempts_per_s,
            }));
        }
        figures.insert("store".into(), Value::Object(adapters));
    }
    if scenario == "tls" || all {
        let mut kinds = Map::new();
        for f in tls::run(opts).await? {
            row(&format!("tls {}: requests/s", f.kind), f.rate, 0);
            row("  as a ratio of baseline", f.rate / base, 3);
            kinds.insert(
                f.kind.into(),
                json!({ "requests_per_s": f.rate, "ratio_to_baseline": f.rate / base }),
            );
        }
        figures.insert("tls".into(), Value::Object(kinds));
    }
    if scenario == "console" || all {
        match console::run(opts).await? {
            None => println!("console: skipped (no Playwright; run scripts/lib/bootstrap)"),
            Some(modes) => {
                let mut by_mode = Map::new();
                for f in modes {
                    let stored = format!("console {}: notifications stored", f.mode);
                    row(&stored, f.notifications as f64, 0);
                    row("  history first render (ms)", f.full_ms, 0);
                    row("  spread of 3 (ms)", f.full_spread_ms, 0);
                    row("  empty history, same run (ms)", f.empty_ms, 0);
                    row(
                        "  as a ratio of the empty history",
                        f.full_ms / f.empty_ms,
                        2,
                    );
                    row("  status counts shown (ms)", f.counts_ms, 0);
                    row("  API calls per page view", f.api_calls as f64, 0);
                    by_mode.insert(
                        f.mode.into(),
                        json!({
                            "notifications": f.notifications, "first_render_ms": f.full_ms,
                            "spread_ms": f.full_spread_ms, "empty_ms": f.empty_ms,
                            "ratio_to_empty": f.full_ms / f.empty_ms, "counts_ms": f.counts_ms,
                            "api_calls": f.api_calls,
                        }),
                    );
                }
                figures.insert("console".into(), Value::Object(by_mode));
            }
        }
    }
    figures.insert("scenario".into(), json!(scenario));
    figures.insert("cores".into(), json!(cores()));
    figures.insert("phase_s".into(), json!(opts.phase().as_secs()));
    figures.insert("batch".into(), json!(opts.batch));
    figures.insert("wall_s".into(), json!(started.elapsed().as_secs()));
    println!("{}", Value::Object(figures));
    Ok(())
}

async fn start(mode: &str, receiver_port: u16, shape: Shape) -> anyhow::Result<Pipeline> {
    match mode {
        "standalone" => Pipeline::standalone(receiver_port, shape).await,
        _ => Pipeline::kafka(receiver_port, shape).await,
    }
}

/// The physical limit: [`CONCURRENCY`] workers POST straight to the
/// receiver over keep-alive connections.
async fn baseline(opts: &Opts) -> anyhow::Result<f64> {
    let rx = receiver(false).await?;
    load(&rx, &format!("http://{}/hook", rx.addr), None, opts).await
}

/// Requests per second that [`CONCURRENCY`] workers of Herald's sender get
/// through to `rx` at `url`, as `tls` (the default identity when `None`).
pub(crate) async fn load(
    rx: &measure::Receiver,
    url: &str,
    tls: Option<herald_core::TlsMaterial>,
    opts: &Opts,
) -> anyhow::Result<f64> {
    let http = measure::client();
    let body = bytes::Bytes::from_static(br#"{"id": "baseline"}"#);
    let tls = std::sync::Arc::new(tls);
    let before = rx.count.load(std::sync::atomic::Ordering::Relaxed);
    let deadline = Instant::now() + opts.phase();
    let started = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (http, url, body, tls) = (http.clone(), url.to_owned(), body.clone(), tls.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    http.send_as(
                        tls.as_ref().as_ref(),
                        "POST",
                        &url,
                        &[],
                        body.clone(),
                        Duration::from_secs(10),
                    )
                    .await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await?;
    }
    let delivered = rx.count.load(std::sync::atomic::Ordering::Relaxed) - before;
    Ok(delivered as f64 / started.elapsed().as_secs_f64())
}
