//! The fault-injection suite behind `scripts/chaos`: each scenario drives a
//! few thousand events through the real `herald` binary (Kafka + CQL, or
//! standalone on SQLite) to real loopback receivers, injects one fault
//! mid-load, then reconciles from the outside: every input event id → its
//! notification ids in the store → what the receivers answered 2xx to and
//! the attempts on record. One line per scenario; exit 1 when anything was
//! lost.
//!
//! A notification counts as delivered when a receiver answered 2xx to it, as
//! failed when it is not delivered and its record is `failed` with attempts
//! on record, and as lost otherwise. `unsettled` counts records whose state
//! did not converge (delivered but not recorded so, or still pending) by the
//! deadline; it fails the run too, since the audit record must be complete.
//!
//!   chaos --herald PATH [--soak] [--events N] [scenario ...]
//!
//! Kafka and CQL come from HERALD_TEST_KAFKA / HERALD_TEST_CQL (defaults
//! 127.0.0.1:9092 / 127.0.0.1:9042). Broker and database restarts call
//! `scripts/infra restart kafka|cassandra`, which inherits this process's
//! environment (HERALD_INFRA_HOME, HERALD_KAFKA_PORT, ...).

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use herald_core::{NotificationId, Status};
use herald_delivery::{HttpSender, SenderConfig, SsrfGuard};
use herald_store::cql::{CqlConfig, CqlStore};
use herald_store::sqlite::{SqliteConfig, SqliteStore};
use herald_store::{NotificationStore, StoreLimits};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use tokio::net::TcpListener;

const SOURCE: &str = "/chaos/core";
const WEBHOOKS: [&str; 2] = ["ledger", "crm"];
const TOKEN: &str = "chaos-token";
/// Webhook timeout; the flapping receiver's "timeout" waits longer.
const TIMEOUT: Duration = Duration::from_secs(2);

type Result<T, E = Box<dyn std::error::Error + Send + Sync>> = std::result::Result<T, E>;

// ---- receivers -----------------------------------------------------------

/// What one receiver saw for one notification id.
#[derive(Debug, Default, Clone, Copy)]
struct Arrivals {
    requests: u32,
    /// Requests it answered with a 2xx status.
    ok: u32,
}

/// A loopback webhook receiver that misbehaves on a share of requests: a
/// 500, a timeout (answers 503 after the sender gave up), a reset (closes
/// unanswered), or a 200 whose body trickles for longer than the timeout.
#[derive(Clone)]
struct Receiver {
    addr: SocketAddr,
    failure_rate: Arc<Mutex<f64>>,
    seen: Arc<Mutex<HashMap<String, Arrivals>>>,
    ok_total: Arc<AtomicUsize>,
}

type Body = UnsyncBoxBody<Bytes, Infallible>;

impl Receiver {
    async fn start(failure_rate: f64) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let rx = Self {
            addr: listener.local_addr()?,
            failure_rate: Arc::new(Mutex::new(failure_rate)),
            seen: Arc::default(),
            ok_total: Arc::default(),
        };
        let server = rx.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let rx = server.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| rx.clone().handle(req));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(rx)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn ok_total(&self) -> usize {
        self.ok_total.load(Ordering::Relaxed)
    }

    fn arrivals(&self) -> HashMap<String, Arrivals> {
        self.seen.lock().unwrap().clone()
    }

    async fn handle(self, req: Request<Incoming>) -> Result<Response<Body>, std::io::Error> {
        let id = req
            .headers()
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        req.into_body()
            .collect()
            .await
            .map_err(std::io::Error::other)?;
        let rate = *self.failure_rate.lock().unwrap();
        let roll: f64 = rand::random();
        let kind = if roll < rate {
            (roll / rate * 4.0) as u8
        } else {
            4
        };
        let ok = matches!(kind, 3 | 4);
        {
            let mut seen = self.seen.lock().unwrap();
            let a = seen.entry(id).or_default();
            a.requests += 1;
            a.ok += u32::from(ok);
        }
        if ok {
            self.ok_total.fetch_add(1, Ordering::Relaxed);
        }
        match kind {
            0 => Ok(respond(
                500,
                Full::new(Bytes::from_static(b"flap")).boxed_unsync(),
            )),
            1 => {
                tokio::time::sleep(TIMEOUT + Duration::from_millis(500)).await;
                Ok(respond(503, Full::new(Bytes::new()).boxed_unsync()))
            }
            2 => Err(std::io::Error::other("reset")),
            3 => {
                // The status goes out at once; the body takes 3 s.
                let chunks = futures::stream::unfold(0u8, |i| async move {
                    if i == 3 {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    Some((Ok(Frame::data(Bytes::from_static(b"slow "))), i + 1))
                });
                Ok(respond(
                    200,
                    StreamBody::new(Box::pin(chunks)).boxed_unsync(),
                ))
            }
            _ => Ok(respond(200, Full::new(Bytes::new()).boxed_unsync())),
        }
    }
}

fn respond(status: u16, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    r
}

// ---- processes -----------------------------------------------------------

struct Proc {
    name: String,
    child: Option<Child>,
    cmd: Box<dyn Fn() -> Command + Send>,
    log: PathBuf,
}

impl Proc {
    fn start(name: &str, log: PathBuf, cmd: impl Fn() -> Command + Send + 'static) -> Result<Self> {
        let mut p = Self {
            name: name.to_owned(),
            child: None,
            cmd: Box::new(cmd),
            log,
        };
        p.spawn()?;
        Ok(p)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = File::options().create(true).append(true).open(&self.log)?;
        let child = (self.cmd)()
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", self.name))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL: no shutdown code runs.
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// SIGTERM and wait for the graceful exit.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(40);
            while Instant::now() < deadline {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

// ---- the run ---------------------------------------------------------------

#[derive(Clone)]
struct Settings {
    herald: PathBuf,
    root: PathBuf,
    work: PathBuf,
    kafka: String,
    cql: String,
    events: usize,
    /// How long a scenario may take to settle after its load.
    settle: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    KillDelivery,
    KillIngest,
    RestartKafka,
    RestartCassandra,
    None,
}

#[derive(Debug, Clone, Copy)]
enum Scenario {
    Kafka { fault: Fault, failure_rate: f64 },
    Standalone { failure_rate: f64 },
}

const SCENARIOS: &[(&str, Scenario)] = &[
    (
        "kill-delivery",
        Scenario::Kafka {
            fault: Fault::KillDelivery,
            failure_rate: 0.0,
        },
    ),
    (
        "kill-ingest",
        Scenario::Kafka {
            fault: Fault::KillIngest,
            failure_rate: 0.0,
        },
    ),
    (
        "flapping-receivers",
        Scenario::Kafka {
            fault: Fault::None,
            failure_rate: 0.3,
        },
    ),
    (
        "standalone-kill",
        Scenario::Standalone { failure_rate: 0.3 },
    ),
    (
        "restart-kafka",
        Scenario::Kafka {
            fault: Fault::RestartKafka,
            failure_rate: 0.0,
        },
    ),
    (
        "restart-cassandra",
        Scenario::Kafka {
            fault: Fault::RestartCassandra,
            failure_rate: 0.0,
        },
    ),
];

#[derive(Debug, Default)]
struct Report {
    events_in: usize,
    expected: usize,
    delivered: usize,
    failed: usize,
    lost: usize,
    unsettled: usize,
    duplicates: usize,
    fault_at: Option<f64>,
    secs: f64,
}

fn event(i: usize, run: &str) -> Value {
    json!({
        "specversion": "1.0",
        "id": format!("{run}-{i}"),
        "source": SOURCE,
        "type": "bank.deposit.posted",
        "subject": format!("AC-{}", i % 97),
        "time": "2026-01-01T00:00:00Z",
        "data": {"amount_minor": i, "currency": "EUR"}
    })
}

fn expected_ids(run: &str, events: &[usize]) -> HashSet<NotificationId> {
    events
        .iter()
        .flat_map(|i| {
            let id = format!("{run}-{i}");
            WEBHOOKS.map(|w| NotificationId::derive(SOURCE, &id, w))
        })
        .collect()
}

fn webhooks_file(dir: &Path, rx: &Receiver) -> Result<PathBuf> {
    let mut text = String::new();
    for w in WEBHOOKS {
        text.push_str(&format!(
            "[[webhooks]]\nid = \"{w}\"\nevents = [\"bank.*\"]\nurl = \"{}\"\ntimeout = \"{}s\"\nbody = '{{\"id\": {{{{json id}}}}, \"amount\": {{{{json data.amount_minor}}}}}}'\n[webhooks.retry]\nmax_attempts = 6\ninitial_delay = \"1s\"\nmultiplier = 1.0\nmax_delay = \"1s\"\njitter = 0.0\n\n",
            rx.url(&format!("/{w}")),
            TIMEOUT.as_secs()
        ));
    }
    let path = dir.join("webhooks.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Waits until `progress()` reaches `at`, or gives up at the deadline.
async fn reach(progress: impl Fn() -> usize, at: usize, deadline: Instant) -> bool {
    while progress() < at {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

fn infra_restart(s: &Settings, what: &str, log: &Path) -> Result<()> {
    let log = File::options().create(true).append(true).open(log)?;
    let status = Command::new(s.root.join("scripts/infra"))
        .args(["restart", what])
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .status()?;
    if !status.success() {
        return Err(format!("scripts/infra restart {what} failed: {status}").into());
    }
    Ok(())
}

/// Poll the store until every expected notification is settled (delivered
/// or failed) or the deadline passes, then reconcile.
async fn reconcile(
    store: &dyn NotificationStore,
    expected: &HashSet<NotificationId>,
    rx: &Receiver,
    deadline: Instant,
) -> Report {
    let mut open: Vec<NotificationId> = expected.iter().copied().collect();
    let mut settled: HashMap<NotificationId, (Status, usize)> = HashMap::new();
    loop {
        let arrivals = rx.arrivals();
        let results: Vec<_> = futures::stream::iter(open.iter().copied())
            .map(|id| async move { (id, store.get(id).await) })
            .buffer_unordered(32)
            .collect()
            .await;
        let mut still = Vec::new();
        for (id, r) in results {
            let ok = arrivals.get(&id.to_string()).is_some_and(|a| a.ok > 0);
            match r {
                Ok(Some(rec)) => {
                    let status = rec.state.status;
                    let done = match status {
                        Status::Delivered => ok,
                        Status::Failed => true,
                        _ => false,
                    };
                    if done {
                        settled.insert(id, (status, rec.attempts.len()));
                    } else {
                        still.push(id);
                    }
                }
                _ => still.push(id),
            }
        }
        open = still;
        if open.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let arrivals = rx.arrivals();
    let mut report = Report {
        expected: expected.len(),
        ..Report::default()
    };
    for id in expected {
        let a = arrivals.get(&id.to_string()).copied().unwrap_or_default();
        report.duplicates += a.ok.saturating_sub(1) as usize;
        match settled.get(id) {
            _ if a.ok > 0 => {
                report.delivered += 1;
                if !matches!(
                    settled.get(id),
                    Some((Status::Delivered | Status::Failed, _))
                ) {
                    report.unsettled += 1;
                }
            }
            Some((Status::Failed, attempts)) if *attempts > 0 => report.failed += 1,
            _ => report.lost += 1,
        }
    }
    explain_duplicates(store, expected, &arrivals).await;
    report
}

/// The services' `RUST_LOG`: `HERALD_CHAOS_RUST_LOG`, else `info`.
fn service_log_filter() -> String {
    std::env::var("HERALD_CHAOS_RUST_LOG").unwrap_or_else(|_| "info".into())
}

/// With `HERALD_CHAOS_EXPLAIN=N`, print the recorded attempts of up to N
/// notifications that a receiver answered 2xx more than once: the store's
/// side of each duplicate, to tell a sender bug from an at-least-once redo.
async fn explain_duplicates(
    store: &dyn NotificationStore,
    expected: &HashSet<NotificationId>,
    arrivals: &HashMap<String, Arrivals>,
) {
    let Some(n) = std::env::var("HERALD_CHAOS_EXPLAIN")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    else {
        return;
    };
    let dups = expected
        .iter()
        .filter(|id| arrivals.get(&id.to_string()).is_some_and(|a| a.ok > 1));
    for id in dups.take(n) {
        let a = arrivals[&id.to_string()];
        eprintln!(
            "duplicate {id}: receiver saw {} requests, {} answered 2xx",
            a.requests, a.ok
        );
        if let Ok(Some(rec)) = store.get(*id).await {
            for at in &rec.attempts {
                eprintln!(
                    "  attempt {} {:?} at {} took {} ms: {:?} http={:?} error={:?}",
                    at.attempt_no,
                    at.trigger,
                    at.started_at.format("%H:%M:%S%.3f"),
                    at.duration_ms,
                    at.outcome,
                    at.http_status,
                    at.error
                );
            }
        }
    }
}

async fn run_kafka(s: &Settings, name: &str, fault: Fault, failure_rate: f64) -> Result<Report> {
    let started = Instant::now();
    let run = herald_tests::unique_name(&format!("chaos_{}", name.replace('-', "_")));
    let dir = s.work.join(&run);
    std::fs::create_dir_all(&dir)?;
    let prefix = format!("{run}.");
    let input = format!("{run}.banking.events");
    let herald = |args: &[&str]| -> Result<()> {
        let o = Command::new(&s.herald)
            .args(args)
            .current_dir(&s.root)
            .output()?;
        if !o.status.success() {
            return Err(format!("herald {args:?}: {}", String::from_utf8_lossy(&o.stderr)).into());
        }
        Ok(())
    };
    herald(&["migrate", "--contact-point", &s.cql, "--keyspace", &run])?;
    herald(&[
        "topics",
        "create",
        "--bootstrap",
        &s.kafka,
        "--prefix",
        &prefix,
        "--partitions",
        "4",
        "--tiers",
        "1s,5s",
    ])?;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &s.kafka)
        .create()?;
    admin
        .create_topics(
            &[NewTopic::new(&input, 4, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await?
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|(t, e)| format!("create {t}: {e}"))?;

    let rx = Receiver::start(failure_rate).await?;
    let webhooks = webhooks_file(&dir, &rx)?;
    // A short session timeout makes a killed member's partitions move on
    // in seconds rather than 45 s. Broker restarts keep the default: a member
    // that outlives the outage keeps its partitions and commits what it
    // delivered meanwhile, instead of handing them over uncommitted.
    let client = if matches!(fault, Fault::KillDelivery | Fault::KillIngest) {
        "[{svc}.kafka.client]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"1000\"\n"
    } else {
        ""
    };
    let common = |svc: &str| {
        format!(
            "group_id = \"{run}-{svc}\"\nwebhooks = \"{}\"\nlisten = \"127.0.0.1:0\"\n[{svc}.kafka]\nbootstrap_servers = \"{}\"\ntopic_prefix = \"{prefix}\"\n{}[{svc}.cql]\ncontact_points = [\"{}\"]\nkeyspace = \"{run}\"\n",
            webhooks.display(),
            s.kafka,
            client.replace("{svc}", svc),
            s.cql
        )
    };
    let ingest_toml = dir.join("ingest.toml");
    std::fs::write(
        &ingest_toml,
        format!(
            "[ingest]\ninput_topics = [\"{input}\"]\n{}",
            common("ingest")
        ),
    )?;
    let delivery_toml = dir.join("delivery.toml");
    std::fs::write(
        &delivery_toml,
        format!(
            "[delivery]\ntiers = [\"1s\", \"5s\"]\nssrf_allow = [\"127.0.0.0/8\"]\n{}",
            common("delivery")
        ),
    )?;
    let service = |svc: &'static str, config: PathBuf, s: &Settings| {
        let (bin, root) = (s.herald.clone(), s.root.clone());
        move || {
            let mut c = Command::new(&bin);
            c.current_dir(&root)
                .args([svc, "--config"])
                .arg(&config)
                .env("RUST_LOG", service_log_filter());
            c
        }
    };
    let mut ingest = Proc::start(
        "ingest",
        dir.join("ingest.log"),
        service("ingest", ingest_toml, s),
    )?;
    let mut deliveries = Vec::new();
    for i in 0..2 {
        deliveries.push(Proc::start(
            &format!("delivery-{i}"),
            dir.join(format!("delivery-{i}.log")),
            service("delivery", delivery_toml.clone(), s),
        )?);
    }

    // The load: events produced in paced batches; an event is "in" once
    // Kafka acknowledged it.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &s.kafka)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "180000")
        .create()?;
    let expected_total = s.events * WEBHOOKS.len();
    let load_run = run.clone();
    let events = s.events;
    let loader = tokio::spawn(async move {
        let mut acked = Vec::new();
        for chunk in (0..events).collect::<Vec<_>>().chunks(100) {
            let sends = chunk.iter().map(|&i| {
                let payload = event(i, &load_run).to_string();
                let producer = producer.clone();
                let input = input.clone();
                async move {
                    let key = format!("AC-{}", i % 97);
                    let r = producer
                        .send(
                            FutureRecord::to(&input).key(&key).payload(&payload),
                            Duration::from_secs(180),
                        )
                        .await;
                    (i, r.is_ok())
                }
            });
            for (i, ok) in futures::future::join_all(sends).await {
                if ok {
                    acked.push(i);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        acked
    });

    // The fault, once a quarter of the notifications has arrived.
    let trigger = expected_total / 4;
    let load_deadline = Instant::now() + s.settle;
    let reached = reach(|| rx.ok_total(), trigger.max(1), load_deadline).await;
    let fault_at = started.elapsed().as_secs_f64();
    if !reached {
        return Err(format!(
            "only {} of {expected_total} arrived before the fault",
            rx.ok_total()
        )
        .into());
    }
    match fault {
        Fault::KillDelivery => {
            deliveries[0].kill9();
            tokio::time::sleep(Duration::from_secs(1)).await;
            deliveries[0].spawn()?;
        }
        Fault::KillIngest => {
            ingest.kill9();
            tokio::time::sleep(Duration::from_secs(1)).await;
            ingest.spawn()?;
        }
        Fault::RestartKafka | Fault::RestartCassandra => {
            let what = if fault == Fault::RestartKafka {
                "kafka"
            } else {
                "cassandra"
            };
            let (s2, log) = (s.clone(), dir.join("infra.log"));
            tokio::task::spawn_blocking(move || infra_restart(&s2, what, &log)).await??;
        }
        Fault::None => {}
    }
    let acked = loader.await?;
    let store = connect_cql(&s.cql, &run).await?;
    let procs = deliveries.iter_mut().chain([&mut ingest]).collect();
    let load = Load {
        run: &run,
        acked: &acked,
        fault_at,
        started,
    };
    Ok(settle(s, name, &store, &rx, procs, load).await)
}

/// What a scenario's load did: its run name, the events Kafka or the API
/// acknowledged, when the fault came and when the scenario started.
struct Load<'a> {
    run: &'a str,
    acked: &'a [usize],
    fault_at: f64,
    started: Instant,
}

/// The end of every scenario: reconcile from the outside, stop the
/// processes (naming any that died early), and complete the report.
async fn settle(
    s: &Settings,
    name: &str,
    store: &dyn NotificationStore,
    rx: &Receiver,
    procs: Vec<&mut Proc>,
    load: Load<'_>,
) -> Report {
    let expected = expected_ids(load.run, load.acked);
    let mut report = reconcile(store, &expected, rx, Instant::now() + s.settle).await;
    for p in procs {
        if !p.alive() {
            eprintln!(
                "chaos {name}: {} exited early; log {}",
                p.name,
                p.log.display()
            );
        }
        p.stop();
    }
    report.events_in = load.acked.len();
    report.fault_at = Some(load.fault_at);
    report.secs = load.started.elapsed().as_secs_f64();
    report
}

async fn connect_cql(node: &str, keyspace: &str) -> Result<CqlStore> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match CqlStore::connect(
            &CqlConfig::new(vec![node.to_owned()], keyspace),
            StoreLimits::default(),
        )
        .await
        {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

async fn run_standalone(s: &Settings, name: &str, failure_rate: f64) -> Result<Report> {
    let started = Instant::now();
    let run = herald_tests::unique_name("chaos_standalone");
    let dir = s.work.join(&run);
    std::fs::create_dir_all(&dir)?;
    let rx = Receiver::start(failure_rate).await?;
    let webhooks = webhooks_file(&dir, &rx)?;
    let port = herald_tests::free_port();
    let db = dir.join("herald.db");
    let (bin, root, db2) = (s.herald.clone(), s.root.clone(), db.clone());
    let mut herald = Proc::start("standalone", dir.join("standalone.log"), move || {
        let mut c = Command::new(&bin);
        c.current_dir(&root)
            .arg("standalone")
            .env("HERALD_STANDALONE__LISTEN", format!("127.0.0.1:{port}"))
            .env("HERALD_STANDALONE__DATABASE", &db2)
            .env("HERALD_STANDALONE__WEBHOOKS", &webhooks)
            .env("HERALD_STANDALONE__API_TOKENS", format!("[\"{TOKEN}\"]"))
            .env("HERALD_STANDALONE__SSRF_ALLOW", "[\"127.0.0.0/8\"]")
            .env("HERALD_STANDALONE__TIERS", "[\"1s\", \"5s\"]")
            .env("RUST_LOG", service_log_filter());
        c
    })?;

    // The load: batches of 25 posted until acknowledged (202); a batch is
    // posted again while Herald is down, which is idempotent by event id.
    let http = HttpSender::new(SenderConfig {
        ssrf: SsrfGuard::from_allow_list(&["127.0.0.0/8"]).map_err(|e| e.to_string())?,
        max_response_excerpt: 1 << 20,
        ..SenderConfig::default()
    });
    let headers = vec![
        ("authorization".to_owned(), format!("Bearer {TOKEN}")),
        ("content-type".to_owned(), "application/json".to_owned()),
    ];
    let expected_total = s.events * WEBHOOKS.len();
    let events = s.events;
    let load_run = run.clone();
    let loader = tokio::spawn(async move {
        let mut acked = Vec::new();
        let url = format!("http://127.0.0.1:{port}/v1/events");
        for chunk in (0..events).collect::<Vec<_>>().chunks(25) {
            let body = Bytes::from(
                json!(
                    chunk
                        .iter()
                        .map(|&i| event(i, &load_run))
                        .collect::<Vec<_>>()
                )
                .to_string(),
            );
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let r = http
                    .send(
                        "POST",
                        &url,
                        &headers,
                        body.clone(),
                        Duration::from_secs(10),
                    )
                    .await;
                if r.http_status == Some(202) {
                    acked.extend_from_slice(chunk);
                    break;
                }
                if Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        acked
    });

    let trigger = expected_total / 4;
    let reached = reach(|| rx.ok_total(), trigger.max(1), Instant::now() + s.settle).await;
    let fault_at = started.elapsed().as_secs_f64();
    if !reached {
        return Err(format!(
            "only {} of {expected_total} arrived before the fault",
            rx.ok_total()
        )
        .into());
    }
    herald.kill9();
    tokio::time::sleep(Duration::from_secs(1)).await;
    herald.spawn()?;
    let acked = loader.await?;
    let store = SqliteStore::open(SqliteConfig::new(&db), StoreLimits::default()).await?;
    let load = Load {
        run: &run,
        acked: &acked,
        fault_at,
        started,
    };
    Ok(settle(s, name, &store, &rx, vec![&mut herald], load).await)
}

fn usage() -> ! {
    eprintln!(
        "usage: chaos --herald PATH [--soak] [--events N] [--work DIR] [scenario ...]\nscenarios: {}",
        SCENARIOS
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(" ")
    );
    std::process::exit(2);
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mut herald = None;
    let mut soak = false;
    let mut events = None;
    let mut work = std::env::temp_dir().join("herald-chaos");
    let mut only = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--herald" => herald = args.next().map(PathBuf::from),
            "--soak" => soak = true,
            "--events" => events = args.next().and_then(|n| n.parse().ok()),
            "--work" => work = args.next().map(PathBuf::from).unwrap_or_else(|| usage()),
            "-h" | "--help" => usage(),
            name if SCENARIOS.iter().any(|(n, _)| *n == name) => only.push(name.to_owned()),
            _ => usage(),
        }
    }
    let Some(herald) = herald else { usage() };
    let s = Settings {
        herald,
        root: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/..")),
        work,
        kafka: std::env::var("HERALD_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into()),
        cql: std::env::var("HERALD_TEST_CQL").unwrap_or_else(|_| "127.0.0.1:9042".into()),
        events: events.unwrap_or(if soak { 20_000 } else { 2_000 }),
        settle: Duration::from_secs(if soak { 900 } else { 240 }),
    };
    let mut failed = false;
    let total = Instant::now();
    for (name, scenario) in SCENARIOS {
        if !only.is_empty() && !only.iter().any(|o| o == name) {
            continue;
        }
        let result = match *scenario {
            Scenario::Kafka {
                fault,
                failure_rate,
            } => run_kafka(&s, name, fault, failure_rate).await,
            Scenario::Standalone { failure_rate } => run_standalone(&s, name, failure_rate).await,
        };
        match result {
            Ok(r) => {
                println!(
                    "chaos {name:<19} events_in={} expected={} delivered={} failed={} lost={} unsettled={} duplicates={} fault_at={:.1}s took={:.1}s",
                    r.events_in,
                    r.expected,
                    r.delivered,
                    r.failed,
                    r.lost,
                    r.unsettled,
                    r.duplicates,
                    r.fault_at.unwrap_or(0.0),
                    r.secs
                );
                failed |= r.lost > 0 || r.unsettled > 0 || r.events_in == 0;
            }
            Err(e) => {
                println!("chaos {name:<19} error: {e}");
                failed = true;
            }
        }
    }
    println!("chaos finished in {:.1}s", total.elapsed().as_secs_f64());
    std::process::exit(i32::from(failed));
}
