//! What every scenario measures with: the fast receiver, the HTTP client,
//! machine CPU, process memory and percentiles.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use herald_delivery::{HttpSender, SenderConfig, SsrfGuard};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::CONCURRENCY;

pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Busy jiffies of the whole machine (user + nice + system + irq + softirq + steal).
pub fn busy_jiffies() -> u64 {
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

/// CPU time a process has used (user + system), in ms.
pub fn process_cpu_ms(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may contain spaces: state is
    // field 3, utime 14 and stime 15 (in clock ticks of 10 ms).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks * 10.0)
}

/// The Kafka and Cassandra processes `scripts/infra up` started, by name.
pub fn infra_pids() -> Vec<(String, u32)> {
    let home = std::env::var("HERALD_INFRA_HOME").unwrap_or_else(|_| {
        let cache = std::env::var("XDG_CACHE_HOME")
            .unwrap_or_else(|_| format!("{}/.cache", std::env::var("HOME").unwrap_or_default()));
        format!("{cache}/herald-infra")
    });
    ["kafka", "cassandra"]
        .iter()
        .filter_map(|name| {
            let pid = std::fs::read_to_string(format!("{home}/{name}/run.pid")).ok()?;
            Some((name.to_string(), pid.trim().parse().ok()?))
        })
        .filter(|(_, pid)| process_cpu_ms(*pid).is_some())
        .collect()
}

/// Peak resident memory of a process (VmHWM), in MB.
pub fn peak_rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// p50/p95/p99/max of a sample, in its unit.
#[derive(Debug, Clone, Copy)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(mut sample: Vec<f64>) -> Option<Self> {
        if sample.is_empty() {
            return None;
        }
        sample.sort_by(f64::total_cmp);
        let at = |p: f64| sample[((sample.len() - 1) as f64 * p).round() as usize];
        Some(Self {
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max: sample[sample.len() - 1],
        })
    }
}

/// The fast receiver: 200 OK, keep-alive. Counts 2xx answers and records
/// when each event id (from the body `{"id": ...}`) first arrived. With
/// `fail_first` set, the first request of every event whose id ends in `0`
/// (one in ten of the load generator's ids) is answered 503, and every later
/// request for such an event is logged with its `webhook-id` and wall-clock
/// arrival, for the retry scenario. Requests to
/// [`crate::pipeline::HOSTILE_PATH`] are answered 503 with `Retry-After: 90`
/// and not counted.
pub struct Receiver {
    pub addr: SocketAddr,
    pub count: Arc<AtomicU64>,
    pub arrivals: Arc<Mutex<HashMap<String, Instant>>>,
    pub retries: Arc<Mutex<Vec<(String, SystemTime)>>>,
    pub failed: Arc<Mutex<HashSet<String>>>,
}

pub async fn receiver(fail_first: bool) -> anyhow::Result<Receiver> {
    receiver_with(fail_first, None, false).await
}

/// The receiver over TLS (`tls`), and answering `Connection: close` when
/// `close`, so every request opens a new connection: what a handshake costs.
pub async fn receiver_with(
    fail_first: bool,
    tls: Option<tokio_rustls::TlsAcceptor>,
    close: bool,
) -> anyhow::Result<Receiver> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let rx = Receiver {
        addr: listener.local_addr()?,
        count: Arc::default(),
        arrivals: Arc::default(),
        retries: Arc::default(),
        failed: Arc::default(),
    };
    let (count, arrivals, retries, failed) = (
        rx.count.clone(),
        rx.arrivals.clone(),
        rx.retries.clone(),
        rx.failed.clone(),
    );
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (count, arrivals, retries, failed, tls) = (
                count.clone(),
                arrivals.clone(),
                retries.clone(),
                failed.clone(),
                tls.clone(),
            );
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (count, arrivals, retries, failed) = (
                        count.clone(),
                        arrivals.clone(),
                        retries.clone(),
                        failed.clone(),
                    );
                    async move {
                        if req.uri().path() == crate::pipeline::HOSTILE_PATH {
                            let mut r = Response::new(Full::new(Bytes::from_static(b"later")));
                            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                            r.headers_mut().insert(
                                hyper::header::RETRY_AFTER,
                                hyper::header::HeaderValue::from_static("90"),
                            );
                            return Ok::<_, hyper::Error>(r);
                        }
                        let webhook_id = req
                            .headers()
                            .get("webhook-id")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        let body = req.into_body().collect().await?.to_bytes();
                        let (now, wall) = (Instant::now(), SystemTime::now());
                        let id = serde_json::from_slice::<serde_json::Value>(&body)
                            .ok()
                            .and_then(|v| v["id"].as_str().map(str::to_owned))
                            .unwrap_or_default();
                        if fail_first {
                            let mut failed = failed.lock().unwrap();
                            if failed.contains(&id) {
                                retries.lock().unwrap().push((webhook_id, wall));
                            } else if id.ends_with('0') {
                                failed.insert(id);
                                let mut r = Response::new(Full::new(Bytes::from_static(b"busy")));
                                *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                                return Ok::<_, hyper::Error>(r);
                            }
                        }
                        count.fetch_add(1, Ordering::Relaxed);
                        arrivals.lock().unwrap().entry(id).or_insert(now);
                        let mut r = Response::new(Full::new(Bytes::from_static(b"ok")));
                        if close {
                            r.headers_mut().insert(
                                hyper::header::CONNECTION,
                                hyper::header::HeaderValue::from_static("close"),
                            );
                        }
                        Ok(r)
                    }
                });
                match tls {
                    None => serve(TokioIo::new(stream), svc).await,
                    Some(tls) => {
                        if let Ok(stream) = tls.accept(stream).await {
                            serve(TokioIo::new(stream), svc).await;
                        }
                    }
                }
            });
        }
    });
    Ok(rx)
}

async fn serve<I, S>(io: TokioIo<I>, svc: S)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = Response<Full<Bytes>>,
            Error = hyper::Error,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection(io, svc)
        .await;
}

impl Receiver {
    /// Wait until every id in `ids` has arrived, or `timeout`. Returns how
    /// many arrived.
    pub async fn wait_arrived(&self, ids: &HashMap<String, Instant>, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let arrived = {
                let a = self.arrivals.lock().unwrap();
                ids.keys().filter(|k| a.contains_key(*k)).count()
            };
            if arrived >= ids.len() || Instant::now() > deadline {
                return arrived;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The load generator's HTTP client: Herald's own sender, SSRF guard off
/// (everything here is on loopback), as many idle connections as workers.
/// The body of `GET path` at `addr` (HTTP/1.0: the server closes).
pub async fn scrape(addr: &str, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out)).await??;
    Ok(out
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default())
}

pub fn client() -> HttpSender {
    HttpSender::new(SenderConfig {
        ssrf: SsrfGuard::disabled(),
        max_response_excerpt: 1 << 20,
        max_idle_per_host: CONCURRENCY,
        ..SenderConfig::default()
    })
}
