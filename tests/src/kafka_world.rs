//! One test's Kafka-mode world: its own topic prefix, consumer group and
//! keyspace on the real broker and CQL node, the store and a producer, plus
//! the Kafka delivery service started in-process. Tests store notifications
//! and produce their first jobs themselves (standing in for ingest), then
//! read what the store holds, which offsets are committed and what went over
//! the dead-letter and circuits topics.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use herald_core::signing::SigningSecret;
use herald_core::{
    Attempt, CircuitChange, CloudEvent, DeliveryJob, Notification, NotificationId, SecretRef,
    SecretSource, Status, Tiers, Webhooks,
};
use herald_delivery::{CircuitBoard, Metrics};
use herald_delivery::{DeliveryConfig, DeliveryService};
use herald_kafka::topics::{TopicSettings, create_all};
use herald_kafka::{KafkaConfig, Topics};
use herald_store::cql::{CqlConfig, CqlStore, Replication, connect_session, migrate};
use herald_store::{NotificationStore, StoreLimits};
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{cql_node, kafka_bootstrap, unique_name};

/// The retry tiers of every world's topics and delivery config.
pub const TIERS: [&str; 2] = ["1s", "3s"];
/// The environment variable the `whsec` secret of [`definitions`] names; the
/// services get its value from [`secrets`], never from the environment.
pub const WHSEC_ENV: &str = "HERALD_TEST_WHSEC";

/// The key every webhook of [`definitions`] signs with.
pub fn signing_key() -> SigningSecret {
    SigningSecret::from_bytes(vec![7u8; 32])
}

/// The secrets a service started by [`start`] resolves: `whsec` only.
pub fn secrets() -> Arc<dyn SecretSource + Send + Sync> {
    Arc::new(HashMap::from([(
        SecretRef::Env(WHSEC_ENV.into()),
        signing_key().to_whsec(),
    )]))
}

/// Webhook definitions (TOML `[[webhooks]]` tables) after the `[secrets]`
/// table that declares `whsec`.
pub fn definitions(hooks: &[String]) -> String {
    format!(
        "[secrets]\nwhsec = {{ env = \"{WHSEC_ENV}\" }}\n{}",
        hooks.concat()
    )
}

/// One test's world: topics under its own prefix, its own keyspace.
pub struct KafkaWorld {
    /// The unique name: topic prefix (with a dot), keyspace, group prefix.
    pub name: String,
    pub kafka: KafkaConfig,
    pub topics: Topics,
    pub cql: CqlConfig,
    pub store: Arc<CqlStore>,
    pub producer: FutureProducer,
    /// Partitions of every topic.
    pub partitions: i32,
    /// The retry tiers of the topics and of [`KafkaWorld::config`].
    pub tiers: Vec<String>,
}

impl KafkaWorld {
    /// Creates the topics (`partitions` each, retry tiers [`TIERS`]) and the
    /// migrated keyspace, or `None` when the infrastructure is missing and
    /// not required (see [`kafka_bootstrap`]).
    pub async fn new(test: &str, partitions: i32) -> Option<Self> {
        Self::with_tiers(test, partitions, &TIERS).await
    }

    /// [`KafkaWorld::new`] with these retry tiers.
    pub async fn with_tiers(test: &str, partitions: i32, tiers: &[&str]) -> Option<Self> {
        let bootstrap = kafka_bootstrap(test)?;
        let node = cql_node(test)?;
        let name = unique_name(test);
        let kafka = KafkaConfig {
            bootstrap_servers: bootstrap,
            topic_prefix: format!("{name}."),
            ..KafkaConfig::default()
        };
        create_all(
            &kafka,
            &TopicSettings {
                partitions,
                ..TopicSettings::default()
            },
            &Tiers::parse(tiers).unwrap(),
        )
        .await
        .expect("create topics");
        let cql = CqlConfig::new(vec![node], name.clone());
        let session = Arc::new(connect_session(&cql).await.expect("cql connect"));
        migrate(
            &session,
            &name,
            &Replication::Simple {
                replication_factor: 1,
            },
        )
        .await
        .expect("migrate");
        let store = Arc::new(
            CqlStore::new(session, &cql, StoreLimits::default())
                .await
                .expect("cql store"),
        );
        let producer = kafka.producer_config().create().expect("producer");
        Some(Self {
            topics: Topics::new(&kafka),
            name,
            kafka,
            cql,
            store,
            producer,
            partitions,
            tiers: tiers.iter().map(|t| t.to_string()).collect(),
        })
    }

    /// A delivery service config for this world: its topics, keyspace and
    /// consumer group, loopback receivers allowed, HTTP on a free port.
    pub fn config(&self) -> DeliveryConfig {
        DeliveryConfig {
            kafka: self.kafka.clone(),
            group_id: format!("{}_delivery", self.name),
            tiers: self.tiers.clone(),
            cql: self.cql.clone(),
            listen: "127.0.0.1:0".parse().unwrap(),
            max_in_flight: 64,
            max_in_flight_per_partition: 16,
            max_in_flight_per_webhook: 8,
            ssrf_allow: vec!["127.0.0.0/8".into()],
            drain_timeout: Duration::from_secs(10),
            stats_interval: Duration::from_millis(500),
            ..DeliveryConfig::default()
        }
    }

    /// Store one notification per (event, matching webhook) and produce the
    /// first job of each to the deliveries topic.
    pub async fn ingest(
        &self,
        webhooks: &Webhooks,
        events: impl IntoIterator<Item = serde_json::Value>,
    ) -> Vec<Notification> {
        let now = Utc::now();
        let notifications: Vec<Notification> = events
            .into_iter()
            .flat_map(|event| {
                let event = CloudEvent::from_value(event).unwrap();
                webhooks.notifications(&event, now)
            })
            .collect();
        self.store
            .append_notifications(&notifications)
            .await
            .expect("store notifications");
        let topic = self.topics.deliveries();
        let sends = notifications.iter().map(|n| {
            let job = DeliveryJob::first(n).expect("rendered");
            let (key, payload) = (job.key(), serde_json::to_vec(&job).unwrap());
            let (producer, topic) = (&self.producer, &topic);
            async move {
                producer
                    .send(
                        FutureRecord::to(topic).key(&key).payload(&payload),
                        Duration::from_secs(30),
                    )
                    .await
                    .map_err(|(e, _)| e)
            }
        });
        for r in futures::future::join_all(sends).await {
            r.expect("produce job");
        }
        notifications
    }

    /// The attempts recorded for a stored notification.
    pub async fn attempts(&self, id: NotificationId) -> Vec<Attempt> {
        self.store
            .get(id)
            .await
            .expect("store get")
            .expect("notification stored")
            .attempts
    }

    /// The notification's status, `None` while it cannot be read.
    pub async fn status(&self, id: NotificationId) -> Option<Status> {
        self.store
            .get(id)
            .await
            .ok()
            .flatten()
            .map(|r| r.state.status)
    }

    /// High watermark minus committed offset of `group`, summed over the
    /// deliveries topic's partitions: 0 when every job's offset is committed.
    pub fn uncommitted_deliveries(&self, group: &str) -> i64 {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.kafka.bootstrap_servers)
            .set("group.id", group)
            .create()
            .unwrap();
        let topic = self.topics.deliveries();
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions {
            tpl.add_partition(&topic, p);
        }
        let committed = c
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("committed offsets");
        (0..self.partitions)
            .map(|p| {
                let (_, high) = c
                    .fetch_watermarks(&topic, p, Duration::from_secs(10))
                    .unwrap();
                let done = match committed.find_partition(&topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    _ => 0,
                };
                high - done
            })
            .sum()
    }

    /// A consumer of the dead-letter topic from its start.
    pub fn dead_letters(&self) -> StreamConsumer {
        let c: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.kafka.bootstrap_servers)
            .set("group.id", format!("{}_dead_reader", self.name))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        c.subscribe(&[&self.topics.dead()]).unwrap();
        c
    }

    /// Every state change on the circuits topic so far, in order.
    pub fn circuit_changes(&self) -> Vec<CircuitChange> {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.kafka.bootstrap_servers)
            .set("group.id", format!("{}_circuits_reader", self.name))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let topic = self.topics.circuits();
        let (_, high) = c
            .fetch_watermarks(&topic, 0, Duration::from_secs(10))
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Beginning)
            .unwrap();
        c.assign(&tpl).unwrap();
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while (out.len() as i64) < high && Instant::now() < deadline {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
                out.push(serde_json::from_slice(m.payload().unwrap()).expect("a circuit change"));
            }
        }
        assert_eq!(out.len() as i64, high, "read the whole circuits topic");
        out
    }
}

/// A delivery service running in-process: its task, shutdown token, HTTP
/// address, circuit board and metrics.
pub struct DeliveryWorker {
    pub task: JoinHandle<herald_delivery::service::Result<()>>,
    pub shutdown: CancellationToken,
    pub addr: SocketAddr,
    pub circuits: CircuitBoard,
    pub metrics: Metrics,
}

/// Binds a delivery service with these webhooks and [`secrets`] and runs it.
pub async fn start(config: DeliveryConfig, webhooks_toml: &str) -> DeliveryWorker {
    let webhooks = Webhooks::from_toml(webhooks_toml).expect("webhooks");
    let service = DeliveryService::bind(config, webhooks, secrets())
        .await
        .expect("bind delivery service");
    let addr = service.local_addr();
    let circuits = service.circuits();
    let metrics = service.metrics().clone();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(service.run(shutdown.clone()));
    DeliveryWorker {
        task,
        shutdown,
        addr,
        circuits,
        metrics,
    }
}

impl DeliveryWorker {
    /// Shuts down gracefully and asserts the service ended without error.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("graceful shutdown within 60s")
            .expect("service task")
            .expect("service result");
    }

    /// The raw HTTP/1.0 response to `GET path` on the service's listener.
    pub async fn get(&self, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    /// The sum of the in-process metrics whose lines start with `prefix`.
    pub fn metric_sum(&self, prefix: &str) -> u64 {
        metric_sum(&self.metrics.render(), prefix)
    }
}

/// The sum of the samples in a Prometheus text whose lines start with
/// `prefix` (a metric name with `{`, or with some of its labels).
pub fn metric_sum(metrics: &str, prefix: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}
