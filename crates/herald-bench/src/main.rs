//! Herald's end-to-end benchmarks. `cargo run --release -p herald-bench --
//! <scenario> [--quick]` starts what it measures, drives it, prints a table
//! and one final JSON line with every figure.
//!
//! Scenarios: `baseline` (load generator straight to the receiver: the
//! machine's physical limit) and `standalone` (CloudEvents POSTed to a
//! `herald standalone` child process on SQLite, delivered to the receiver).
//! Every scenario runs the baseline first and reports itself as a ratio of
//! it, so figures survive a noisy machine.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use herald_delivery::{HttpSender, SenderConfig, SsrfGuard};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;

/// Attempts Herald keeps in flight (its default); the baseline uses the same.
const CONCURRENCY: usize = 256;
const TOKEN: &str = "bench-token";

struct Opts {
    quick: bool,
}

impl Opts {
    fn phase(&self) -> Duration {
        Duration::from_secs(if self.quick { 5 } else { 30 })
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Runtime::new()?;
    match args.first().map(String::as_str) {
        // Internal: the Herald process the standalone scenario measures.
        Some("serve-standalone") => runtime.block_on(serve_standalone(&args[1], &args[2])),
        Some(scenario @ ("baseline" | "standalone")) => {
            let opts = Opts {
                quick: args.iter().any(|a| a == "--quick"),
            };
            runtime.block_on(run(scenario, &opts))
        }
        _ => {
            eprintln!("usage: herald-bench <baseline|standalone> [--quick]");
            std::process::exit(2);
        }
    }
}

async fn run(scenario: &str, opts: &Opts) -> anyhow::Result<()> {
    println!(
        "herald-bench {scenario}{}: {} cores, phases of {:?}",
        if opts.quick { " --quick" } else { "" },
        cores(),
        opts.phase()
    );
    let mut figures = serde_json::Map::new();
    let base = baseline(opts).await?;
    println!("{:<40} {:>12.0}", "baseline requests/s", base);
    figures.insert("baseline_rps".into(), json!(base));
    if scenario == "standalone" {
        let s = standalone(opts).await?;
        println!(
            "{:<40} {:>12.0}",
            "standalone deliveries/s (sustained)", s.rate
        );
        println!("{:<40} {:>12.2}", "  as a ratio of baseline", s.rate / base);
        println!(
            "{:<40} {:>12.3}",
            "  whole-machine CPU-ms per delivery", s.cpu_ms_per_delivery
        );
        println!("{:<40} {:>12.0}", "  herald peak RSS (MB)", s.peak_rss_mb);
        println!(
            "{:<40} {:>12.0}",
            "latency phase rate (events/s, half peak)", s.half_rate
        );
        for (name, v) in [
            ("p50", s.p50),
            ("p95", s.p95),
            ("p99", s.p99),
            ("max", s.max),
        ] {
            println!(
                "{:<40} {:>12.1}",
                format!("  accepted->received {name} (ms)"),
                v
            );
        }
        figures.insert("standalone".into(), json!({
            "deliveries_per_s": s.rate, "ratio_to_baseline": s.rate / base,
            "cpu_ms_per_delivery": s.cpu_ms_per_delivery, "peak_rss_mb": s.peak_rss_mb,
            "latency_rate_per_s": s.half_rate, "p50_ms": s.p50, "p95_ms": s.p95, "p99_ms": s.p99, "max_ms": s.max,
        }));
    }
    figures.insert("scenario".into(), json!(scenario));
    figures.insert("cores".into(), json!(cores()));
    figures.insert("phase_s".into(), json!(opts.phase().as_secs()));
    println!("{}", serde_json::Value::Object(figures));
    Ok(())
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Busy jiffies of the whole machine (user + nice + system + irq + softirq + steal).
fn busy_jiffies() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| cpu.get(i)).sum()
}

/// The fast receiver: 200 OK, keep-alive; counts requests and records when
/// each event id (from the body `{"id": ...}`) arrived.
struct Receiver {
    addr: SocketAddr,
    count: Arc<AtomicU64>,
    arrivals: Arc<Mutex<HashMap<String, Instant>>>,
}

async fn receiver() -> anyhow::Result<Receiver> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let count = Arc::new(AtomicU64::new(0));
    let arrivals: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let (c, a) = (count.clone(), arrivals.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (c, a) = (c.clone(), a.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (c, a) = (c.clone(), a.clone());
                    async move {
                        let body = req.into_body().collect().await?.to_bytes();
                        let now = Instant::now();
                        c.fetch_add(1, Ordering::Relaxed);
                        if let Some(id) = serde_json::from_slice::<serde_json::Value>(&body)
                            .ok()
                            .and_then(|v| v["id"].as_str().map(str::to_owned))
                        {
                            a.lock().unwrap().entry(id).or_insert(now);
                        }
                        Ok::<_, hyper::Error>(hyper::Response::new(Full::new(Bytes::from_static(
                            b"ok",
                        ))))
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(Receiver {
        addr,
        count,
        arrivals,
    })
}

fn client() -> HttpSender {
    HttpSender::new(SenderConfig {
        ssrf: SsrfGuard::disabled(),
        max_response_excerpt: 1 << 20,
        max_idle_per_host: CONCURRENCY,
        ..SenderConfig::default()
    })
}

async fn baseline(opts: &Opts) -> anyhow::Result<f64> {
    let rx = receiver().await?;
    let http = client();
    let url = format!("http://{}/hook", rx.addr);
    let body = Bytes::from_static(br#"{"id": "baseline"}"#);
    let deadline = Instant::now() + opts.phase();
    let started = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (http, url, body) = (http.clone(), url.clone(), body.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    http.send("POST", &url, &[], body.clone(), Duration::from_secs(10))
                        .await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await?;
    }
    Ok(rx.count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

struct StandaloneFigures {
    rate: f64,
    cpu_ms_per_delivery: f64,
    peak_rss_mb: f64,
    half_rate: f64,
    p50: f64,
    p95: f64,
    p99: f64,
    max: f64,
}

async fn standalone(opts: &Opts) -> anyhow::Result<StandaloneFigures> {
    let rx = receiver().await?;
    let dir = std::env::temp_dir().join(format!("herald-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "serve-standalone",
            dir.to_str().context("utf-8 temp dir")?,
            &rx.addr.port().to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().context("child stdout")?).lines();
    let addr = loop {
        let line = lines.next().context("herald exited before listening")??;
        if let Some(a) = line.strip_prefix("LISTENING ") {
            break a.to_owned();
        }
    };
    let url = format!("http://{addr}/v1/events");
    let http = client();
    let accepted: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();

    // Phase 1: as fast as it goes, 8 posters of 100-event batches.
    let (rate, cpu_ms) = {
        let before = (busy_jiffies(), rx.count.load(Ordering::Relaxed));
        let started = Instant::now();
        post_load(&http, &url, &accepted, opts.phase(), None, "s").await?;
        let elapsed = started.elapsed().as_secs_f64();
        let delivered = rx.count.load(Ordering::Relaxed) - before.1;
        let busy_ms = (busy_jiffies() - before.0) as f64 * 10.0;
        (
            delivered as f64 / elapsed,
            busy_ms / delivered.max(1) as f64,
        )
    };
    // Let the backlog drain before measuring latency.
    let posted = accepted.lock().unwrap().len() as u64;
    let drain = Instant::now() + Duration::from_secs(120);
    while rx.count.load(Ordering::Relaxed) < posted && Instant::now() < drain {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Phase 2: half the sustained rate, for latency.
    let half = (rate / 2.0).max(100.0);
    let latency_ids: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    post_load(&http, &url, &latency_ids, opts.phase(), Some(half), "l").await?;
    let wait = Instant::now() + Duration::from_secs(30);
    let n = latency_ids.lock().unwrap().len();
    loop {
        let arrived = {
            let a = rx.arrivals.lock().unwrap();
            latency_ids
                .lock()
                .unwrap()
                .keys()
                .filter(|k| a.contains_key(*k))
                .count()
        };
        if arrived >= n || Instant::now() > wait {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut lat: Vec<f64> = {
        let a = rx.arrivals.lock().unwrap();
        latency_ids
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(id, t)| {
                a.get(id)
                    .map(|r| r.saturating_duration_since(*t).as_secs_f64() * 1000.0)
            })
            .collect()
    };
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    let peak_rss_mb = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0);
    drop(child.stdin.take());
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    if lat.is_empty() {
        bail!("no latency sample arrived");
    }
    Ok(StandaloneFigures {
        rate,
        cpu_ms_per_delivery: cpu_ms,
        peak_rss_mb,
        half_rate: half,
        p50: pct(0.50),
        p95: pct(0.95),
        p99: pct(0.99),
        max: *lat.last().unwrap(),
    })
}

/// POST batches of 100 events for `duration`, at most `rate` events/s when
/// given; record when each event was accepted (its 202).
async fn post_load(
    http: &HttpSender,
    url: &str,
    accepted: &Arc<Mutex<HashMap<String, Instant>>>,
    duration: Duration,
    rate: Option<f64>,
    tag: &str,
) -> anyhow::Result<()> {
    const BATCH: usize = 100;
    const POSTERS: usize = 8;
    let headers = vec![
        ("authorization".to_owned(), format!("Bearer {TOKEN}")),
        ("content-type".to_owned(), "application/json".to_owned()),
    ];
    let deadline = Instant::now() + duration;
    let interval = rate.map(|r| Duration::from_secs_f64(BATCH as f64 * POSTERS as f64 / r));
    let tasks: Vec<_> = (0..POSTERS)
        .map(|p| {
            let (http, url, headers, accepted, tag) = (http.clone(), url.to_owned(), headers.clone(), accepted.clone(), tag.to_owned());
            tokio::spawn(async move {
                let mut ticker = interval.map(tokio::time::interval);
                for round in 0u64.. {
                    if Instant::now() >= deadline {
                        break;
                    }
                    if let Some(t) = ticker.as_mut() {
                        t.tick().await;
                    }
                    let ids: Vec<String> = (0..BATCH).map(|i| format!("{tag}-{p}-{round}-{i}")).collect();
                    let events: Vec<_> = ids.iter().map(|id| json!({"specversion": "1.0", "id": id, "source": "/bench", "type": "bank.deposit.posted", "subject": "ACC-1", "data": {"amount_minor": 1000, "currency": "EUR"}})).collect();
                    let r = http.send("POST", &url, &headers, Bytes::from(json!(events).to_string()), Duration::from_secs(30)).await;
                    if r.http_status != Some(202) {
                        return Err(anyhow::anyhow!("POST /v1/events: {r:?}"));
                    }
                    let now = Instant::now();
                    let mut a = accepted.lock().unwrap();
                    for id in ids {
                        a.insert(id, now);
                    }
                }
                Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// The measured Herald: standalone mode on a fresh SQLite file, one webhook
/// to the bench receiver. Exits when its stdin closes.
async fn serve_standalone(dir: &str, port: &str) -> anyhow::Result<()> {
    let defs = format!(
        "[[webhooks]]\nid = \"bench\"\nevents = [\"bank.*\"]\nurl = \"http://127.0.0.1:{port}/hook\"\nbody = '{{\"id\": {{{{json id}}}}, \"amount\": \"{{{{money data.amount_minor data.currency}}}}\"}}'\n"
    );
    let webhooks = herald_core::Webhooks::from_toml(&defs).map_err(|e| anyhow::anyhow!("{e}"))?;
    let config = herald::standalone::StandaloneConfig {
        listen: "127.0.0.1:0".parse()?,
        database: std::path::Path::new(dir).join("herald.db"),
        api_tokens: vec![TOKEN.into()],
        ssrf_allow: vec!["127.0.0.0/8".into()],
        concurrency: CONCURRENCY,
        ..Default::default()
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let secrets = Arc::new(HashMap::<herald_core::SecretRef, String>::new());
    let running = herald::standalone::start(config, webhooks, secrets, shutdown.clone()).await?;
    println!("LISTENING {}", running.addr);
    std::io::stdout().flush()?;
    tokio::task::spawn_blocking(|| std::io::stdin().lines().for_each(drop)).await?;
    shutdown.cancel();
    running.wait().await;
    Ok(())
}
