//! The Herald being measured, as child processes of the bench (so their
//! memory is their own): standalone mode on a fresh SQLite file, or Kafka
//! mode's ingest and delivery services on fresh topics and a fresh keyspace
//! of the Kafka and Cassandra that `scripts/infra up` runs. The children are
//! this same executable, re-run with an internal `serve-*` command; each
//! stops when its stdin closes.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use herald_core::signing::SigningSecret;
use herald_core::{SecretRef, SecretSource, Tiers, Webhooks};
use herald_delivery::HttpSender;
use herald_kafka::topics::{TopicSettings, create_all};
use herald_kafka::{KafkaConfig, Topics};
use herald_store::cql::{CqlConfig, Replication, connect_session, migrate};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::{CONCURRENCY, TOKEN};

/// Partitions of every topic in the Kafka pipeline.
const PARTITIONS: i32 = 6;
/// What the pipeline under measurement is configured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One webhook for every bench event, retried after about a second;
    /// retry tiers 1s and 5s.
    Plain,
    /// `retry --mixed`: default-shaped tiers scaled down (1s, 10s, 100s),
    /// the bench webhook retried after 12 s (longer than one 10s-tier
    /// stay), and a neighbour, `hostile`, whose receiver answers every
    /// request 503 with `Retry-After: 90`, just under its 95 s cap: its
    /// retries are the heads of the 10s tier's partitions.
    Mixed,
}

impl Shape {
    fn tiers(self) -> &'static [&'static str] {
        match self {
            Shape::Plain => &["1s", "5s"],
            Shape::Mixed => &["1s", "10s", "100s"],
        }
    }

    fn webhooks_toml(self, receiver_port: u16) -> String {
        let (retry, hostile) = match self {
            Shape::Plain => (
                "initial_delay = \"1s\"\nmultiplier = 2.0\nmax_delay = \"5s\"\nmax_attempts = 5",
                String::new(),
            ),
            Shape::Mixed => (
                "initial_delay = \"12s\"\nmultiplier = 2.0\nmax_delay = \"100s\"\nmax_attempts = 5\nretry_after_max = \"95s\"",
                format!(
                    r#"
[[webhooks]]
id = "hostile"
events = ["bank.hostile.*"]
url = "http://127.0.0.1:{receiver_port}{HOSTILE_PATH}"
body = '{{"id": {{{{json id}}}}}}'
[webhooks.circuit]
enabled = false
"#
                ),
            ),
        };
        format!(
            r#"[secrets]
bench = {{ env = "HERALD_BENCH_WHSEC" }}

[defaults.retry]
{retry}

[[webhooks]]
id = "bench"
events = ["bank.deposit.*"]
url = "http://127.0.0.1:{receiver_port}/hook"
signing_secrets = ["bench"]
body = '{{"id": {{{{json id}}}}, "account": {{{{json subject}}}}, "amount": "{{{{money data.amount_minor data.currency}}}}"}}'
{hostile}"#
        )
    }
}

/// Where the `hostile` webhook of [`Shape::Mixed`] posts.
pub const HOSTILE_PATH: &str = "/hostile";
const KAFKA: &str = "127.0.0.1:9092";
const CQL: &str = "127.0.0.1:9042";

fn secrets() -> Arc<dyn SecretSource + Send + Sync> {
    Arc::new(HashMap::from([(
        SecretRef::Env("HERALD_BENCH_WHSEC".into()),
        SigningSecret::from_bytes(vec![7u8; 32]).to_whsec(),
    )]))
}

fn load_webhooks(path: &Path) -> anyhow::Result<Webhooks> {
    Webhooks::from_toml(&std::fs::read_to_string(path)?).map_err(|e| anyhow!("{e}"))
}

/// A bench event (1 KiB class: a deposit with a short narrative).
pub fn event(id: &str, n: u64) -> Value {
    json!({
        "specversion": "1.0", "id": id, "source": "/core-banking/deposits",
        "type": "bank.deposit.posted", "subject": format!("ACC-{:06}", n % 100_000),
        "time": "2026-11-26T10:00:00Z", "datacontenttype": "application/json",
        "data": {"amount_minor": 1000 + n % 9000, "currency": "EUR",
                 "narrative": "salary payment november", "channel": "sepa"}
    })
}

/// A running Herald under measurement.
pub struct Pipeline {
    pub name: &'static str,
    children: Vec<Child>,
    /// Where its notification API answers (with [`TOKEN`]).
    pub api: String,
    input: Input,
    dir: PathBuf,
    /// Kafka mode: where each service serves `/metrics`, by role.
    pub ops: Vec<(&'static str, String)>,
    kafka: Option<KafkaParts>,
}

enum Input {
    Http {
        http: Box<HttpSender>,
        url: String,
    },
    Kafka {
        producer: FutureProducer,
        topic: String,
    },
}

struct KafkaParts {
    keyspace: String,
    ingest_group: String,
    delivery_group: String,
    input_topic: String,
    deliveries_topic: String,
}

fn spawn_child(args: &[&str]) -> anyhow::Result<(Child, String)> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().context("child stdout")?).lines();
    loop {
        let line = lines
            .next()
            .with_context(|| format!("{} exited before it was ready", args[0]))??;
        if let Some(rest) = line.strip_prefix("READY ") {
            return Ok((child, rest.to_owned()));
        }
    }
}

fn bench_dir(tag: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("herald-bench-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

impl Pipeline {
    pub async fn standalone(receiver_port: u16, shape: Shape) -> anyhow::Result<Self> {
        let dir = bench_dir("standalone")?;
        std::fs::write(
            dir.join("webhooks.toml"),
            shape.webhooks_toml(receiver_port),
        )?;
        let (child, addr) = spawn_child(&["serve-standalone", dir.to_str().context("utf-8")?])?;
        Ok(Self {
            name: "standalone",
            children: vec![child],
            api: format!("http://{addr}"),
            input: Input::Http {
                http: Box::new(crate::measure::client()),
                url: format!("http://{addr}/v1/events"),
            },
            dir,
            ops: Vec::new(),
            kafka: None,
        })
    }

    /// Kafka mode: fresh topics and keyspace, then `ingest` and `delivery`
    /// as two child processes.
    pub async fn kafka(receiver_port: u16, shape: Shape) -> anyhow::Result<Self> {
        let name = format!("bench_{}_{}", std::process::id(), rand_suffix());
        let dir = bench_dir("kafka")?;
        let webhooks = dir.join("webhooks.toml");
        std::fs::write(&webhooks, shape.webhooks_toml(receiver_port))?;
        let kafka = KafkaConfig {
            bootstrap_servers: KAFKA.into(),
            topic_prefix: format!("{name}."),
            ..KafkaConfig::default()
        };
        let tiers: Vec<String> = shape.tiers().iter().map(|t| t.to_string()).collect();
        create_all(
            &kafka,
            &TopicSettings {
                partitions: PARTITIONS,
                ..TopicSettings::default()
            },
            &Tiers::parse(&tiers)?,
        )
        .await
        .context("creating topics: is Kafka up (scripts/infra up)?")?;
        let input_topic = format!("{name}.banking.events");
        let admin: AdminClient<DefaultClientContext> = kafka.admin_config().create()?;
        admin
            .create_topics(
                &[NewTopic::new(
                    &input_topic,
                    PARTITIONS,
                    TopicReplication::Fixed(1),
                )],
                &AdminOptions::new(),
            )
            .await?;
        let cql = CqlConfig::new(vec![CQL.into()], name.clone());
        let session = connect_session(&cql)
            .await
            .context("connecting to Cassandra: is it up (scripts/infra up)?")?;
        migrate(
            &session,
            &name,
            &Replication::Simple {
                replication_factor: 1,
            },
        )
        .await?;

        let (ingest_group, delivery_group) = (format!("{name}-ingest"), format!("{name}-delivery"));
        let common = json!({
            "kafka": {"bootstrap_servers": KAFKA, "topic_prefix": kafka.topic_prefix},
            "cql": {"contact_points": [CQL], "keyspace": name},
            "webhooks": webhooks,
            "listen": "127.0.0.1:0",
        });
        let mut ingest = common.clone();
        ingest["group_id"] = json!(ingest_group);
        ingest["input_topics"] = json!([input_topic]);
        let mut delivery = common;
        delivery["group_id"] = json!(delivery_group);
        delivery["tiers"] = json!(tiers);
        delivery["ssrf_allow"] = json!(["127.0.0.0/8"]);
        let (ingest_child, ingest_ops) = spawn_child(&["serve-ingest", &ingest.to_string()])?;
        let (delivery_child, ready) = spawn_child(&["serve-delivery", &delivery.to_string()])?;
        let (api, delivery_ops) = ready.split_once(' ').context("delivery's READY line")?;
        Ok(Self {
            name: "kafka",
            children: vec![ingest_child, delivery_child],
            api: format!("http://{api}"),
            input: Input::Kafka {
                producer: kafka.producer_config().create()?,
                topic: input_topic.clone(),
            },
            dir,
            ops: vec![
                ("ingest", ingest_ops),
                ("delivery", delivery_ops.to_owned()),
            ],
            kafka: Some(KafkaParts {
                keyspace: name,
                ingest_group,
                delivery_group,
                input_topic,
                deliveries_topic: Topics::new(&kafka).deliveries(),
            }),
        })
    }

    /// Hand a batch of events to Herald; returns once it has accepted them
    /// (standalone: the `202`; Kafka: every produce acknowledged).
    pub async fn submit(&self, events: &[Value]) -> anyhow::Result<()> {
        match &self.input {
            Input::Http { http, url } => {
                let headers = [
                    ("authorization".to_owned(), format!("Bearer {TOKEN}")),
                    ("content-type".to_owned(), "application/json".to_owned()),
                ];
                let body = Bytes::from(Value::from(events.to_vec()).to_string());
                let r = http
                    .send("POST", url, &headers, body, Duration::from_secs(30))
                    .await;
                if r.http_status != Some(202) {
                    bail!("POST /v1/events: {r:?}");
                }
            }
            Input::Kafka { producer, topic } => {
                let payloads: Vec<(String, Vec<u8>)> = events
                    .iter()
                    .map(|e| {
                        let key = e["subject"].as_str().unwrap_or_default().to_owned();
                        (key, serde_json::to_vec(e).expect("json"))
                    })
                    .collect();
                let sends = payloads.iter().map(|(key, payload)| {
                    producer.send(
                        FutureRecord::to(topic).key(key).payload(payload),
                        Duration::from_secs(30),
                    )
                });
                for sent in futures::future::join_all(sends).await {
                    sent.map_err(|(e, _)| e)?;
                }
            }
        }
        Ok(())
    }

    /// Each Herald process, by role.
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        let roles: &[&'static str] = if self.children.len() == 1 {
            &["herald"]
        } else {
            &["ingest", "delivery"]
        };
        roles
            .iter()
            .zip(&self.children)
            .map(|(role, c)| (*role, c.id()))
            .collect()
    }

    /// Peak RSS of each Herald process, by role.
    pub fn peak_rss_mb(&self) -> Vec<(&'static str, f64)> {
        self.pids()
            .into_iter()
            .map(|(role, pid)| (role, crate::measure::peak_rss_mb(pid)))
            .collect()
    }

    /// Kafka mode: messages not yet committed by the ingest group on the
    /// input topic plus by the delivery group on the deliveries topic.
    pub fn consumer_lag(&self) -> Option<i64> {
        let k = self.kafka.as_ref()?;
        Some(
            uncommitted(&k.ingest_group, &k.input_topic).ok()?
                + uncommitted(&k.delivery_group, &k.deliveries_topic).ok()?,
        )
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        for mut child in self.children.drain(..) {
            drop(child.stdin.take());
            child.wait()?;
        }
        if let Some(k) = &self.kafka {
            // Leave Cassandra as it was; topics are small and prefixed.
            let session =
                connect_session(&CqlConfig::new(vec![CQL.into()], k.keyspace.clone())).await?;
            session
                .query_unpaged(format!("DROP KEYSPACE IF EXISTS {}", k.keyspace), &[])
                .await?;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }
}

fn rand_suffix() -> String {
    format!("{:06x}", rand::random::<u32>() & 0xff_ffff)
}

fn uncommitted(group: &str, topic: &str) -> anyhow::Result<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", KAFKA)
        .set("group.id", group)
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topic, p);
    }
    let committed = c.committed_offsets(tpl, Duration::from_secs(10))?;
    let mut lag = 0;
    for p in 0..PARTITIONS {
        let (_, high) = c.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        let done = match committed.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => 0,
        };
        lag += high - done;
    }
    Ok(lag)
}

/// Block until stdin closes (the bench dropped our pipe, or died).
async fn until_stdin_closes() -> anyhow::Result<()> {
    tokio::task::spawn_blocking(|| std::io::stdin().lines().for_each(drop)).await?;
    Ok(())
}

fn ready(detail: &str) -> anyhow::Result<()> {
    println!("READY {detail}");
    std::io::stdout().flush()?;
    Ok(())
}

/// Child: standalone Herald on `dir/herald.db`.
pub async fn serve_standalone(dir: &str) -> anyhow::Result<()> {
    let dir = Path::new(dir);
    let config = herald::standalone::StandaloneConfig {
        listen: "127.0.0.1:0".parse()?,
        database: dir.join("herald.db"),
        api_tokens: vec![TOKEN.into()],
        ssrf_allow: vec!["127.0.0.0/8".into()],
        concurrency: CONCURRENCY,
        // Standalone's timer needs no tier topics; only names for metrics.
        tiers: Shape::Plain.tiers().iter().map(|t| t.to_string()).collect(),
        ..Default::default()
    };
    let webhooks = load_webhooks(&dir.join("webhooks.toml"))?;
    let shutdown = CancellationToken::new();
    let running = herald::standalone::start(config, webhooks, secrets(), shutdown.clone()).await?;
    ready(&running.addr.to_string())?;
    until_stdin_closes().await?;
    shutdown.cancel();
    running.wait().await;
    Ok(())
}

/// Child: the ingest service.
pub async fn serve_ingest(config: &str) -> anyhow::Result<()> {
    let config: herald_ingest::IngestConfig = serde_json::from_str(config)?;
    let webhooks = load_webhooks(&config.webhooks)?;
    let shutdown = CancellationToken::new();
    let running = herald_ingest::start(config, webhooks, shutdown.clone()).await?;
    ready(&running.addr().to_string())?;
    // The service consumes inside `wait`.
    let service = tokio::spawn(running.wait());
    until_stdin_closes().await?;
    shutdown.cancel();
    service.await??;
    Ok(())
}

/// Child: the delivery service, with the notification API.
pub async fn serve_delivery(config: &str) -> anyhow::Result<()> {
    let config: herald_delivery::DeliveryConfig = serde_json::from_str(config)?;
    let webhooks = load_webhooks(&config.webhooks)?;
    let shutdown = CancellationToken::new();
    let api_tasks = tokio_util::task::TaskTracker::new();
    let api_config = herald::api::ApiConfig {
        listen: "127.0.0.1:0".parse()?,
        tokens: vec![TOKEN.into()],
        ..Default::default()
    };
    let definitions = herald::api::Definitions {
        webhooks: Arc::new(load_webhooks(&config.webhooks)?),
        secrets: secrets(),
    };
    let service =
        herald_delivery::DeliveryService::bind(config.clone(), webhooks, secrets()).await?;
    let api = herald::api::start_kafka(
        &api_config,
        &config,
        definitions,
        service.metrics().clone(),
        shutdown.clone(),
        &api_tasks,
    )
    .await?
    .context("api on")?;
    let ops = service.local_addr();
    let worker = tokio::spawn(service.run(shutdown.clone()));
    ready(&format!("{api} {ops}"))?;
    until_stdin_closes().await?;
    shutdown.cancel();
    worker.await??;
    api_tasks.close();
    api_tasks.wait().await;
    Ok(())
}
