//! The Kafka delivery service: consumes the deliveries, retry-tier and resend
//! topics in one consumer group, sends each job with [`Deliverer`], records
//! the attempt in the store and republishes failures to the right
//! delayed-retry tier or the dead-letter topic. Workers scale by starting
//! more processes in the same group.
//!
//! - `consumer`: the one dispatch loop (messages, completions, timers,
//!   rebalances, commits).
//! - `flow`: per-partition flow control: waiting on a head that is not due
//!   (pause + seek + timed resume) and the in-flight bounds.
//! - `job`: one message's work, through the [`Pipeline`] with Kafka as its
//!   next hops.
//! - `resend`: publishing resend commands, one or in bulk.
//! - `circuit`: how workers share their circuit breakers.

mod circuit;
mod consumer;
mod flow;
mod job;
mod resend;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use herald_core::{SecretSource, Tiers, Webhooks};
use herald_kafka::client::ProducerContext;
use herald_kafka::{KafkaConfig, Topics};
use herald_store::cql::{CqlConfig, CqlStore};
use herald_store::{NotificationStore, StoreError, StoreLimits};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::FutureProducer;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use circuit::{force_close as force_close_circuit, read_all as read_circuits};
pub use resend::{BulkResend, publish_bulk_resend, publish_resend};

use crate::pipeline::{self, Pipeline};
use crate::{CircuitBoard, Deliverer, HttpSender, Metrics, SenderConfig, SsrfGuard};

/// Configuration of `herald delivery` (section `[delivery]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Kafka connection and topic prefix.
    #[serde(default)]
    pub kafka: KafkaConfig,
    /// Consumer group shared by every delivery worker.
    #[serde(default = "default_group_id")]
    pub group_id: String,
    /// Delayed-retry tiers: one topic `herald.retry.<tier>` each. Must match
    /// the tiers the topics were created with.
    #[serde(default = "default_tiers")]
    pub tiers: Vec<String>,
    /// The notification store (ScyllaDB or Cassandra).
    #[serde(default = "default_cql")]
    pub cql: CqlConfig,
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Jobs in flight in this process, waiting for a webhook slot included.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Jobs in flight from one partition. More lets one partition's
    /// deliveries overlap; commits still follow offset order.
    #[serde(default = "default_max_in_flight_per_partition")]
    pub max_in_flight_per_partition: usize,
    /// Requests in flight to one webhook, so a slow endpoint cannot take
    /// every connection. Further jobs of that webhook wait for a slot.
    #[serde(default = "default_max_in_flight_per_webhook")]
    pub max_in_flight_per_webhook: usize,
    /// Internal address ranges webhooks may reach despite the SSRF guard,
    /// e.g. `["10.20.0.0/16"]`. Empty: only public addresses.
    #[serde(default)]
    pub ssrf_allow: Vec<String>,
    /// The webhook definitions (TOML).
    #[serde(default = "default_webhooks")]
    pub webhooks: PathBuf,
    /// On shutdown, how long in-flight attempts may take to finish before
    /// they are abandoned (uncommitted, so the next owner redoes them).
    #[serde(
        default = "default_drain_timeout",
        with = "herald_core::duration::text"
    )]
    pub drain_timeout: Duration,
    /// How often consumer statistics (lag per topic) are refreshed.
    #[serde(
        default = "default_stats_interval",
        with = "herald_core::duration::text"
    )]
    pub stats_interval: Duration,
    /// This worker's name in the circuit state changes it publishes. Default:
    /// `delivery-` and a random suffix, new at every start.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// Deprecated spellings, in milliseconds, of `drain_timeout` and
    /// `stats_interval`; still read, with a warning at start.
    #[doc(hidden)]
    #[serde(default)]
    pub drain_timeout_ms: Option<u64>,
    #[doc(hidden)]
    #[serde(default)]
    pub stats_interval_ms: Option<u64>,
}

fn default_group_id() -> String {
    "herald-delivery".into()
}
fn default_tiers() -> Vec<String> {
    ["10s", "1m", "10m", "1h", "6h"].map(String::from).to_vec()
}
fn default_cql() -> CqlConfig {
    CqlConfig::new(vec!["127.0.0.1:9042".into()], "herald")
}
fn default_listen() -> SocketAddr {
    "127.0.0.1:9102".parse().expect("static address")
}
fn default_max_in_flight() -> usize {
    1024
}
fn default_max_in_flight_per_partition() -> usize {
    128
}
fn default_max_in_flight_per_webhook() -> usize {
    32
}
fn default_webhooks() -> PathBuf {
    "deploy/webhooks.example.toml".into()
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_stats_interval() -> Duration {
    Duration::from_secs(5)
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every field has a default")
    }
}

impl DeliveryConfig {
    /// Fold the deprecated millisecond keys (`drain_timeout_ms = 30000`)
    /// into their durations (`drain_timeout = "30s"`); one warning per key
    /// used. Called by [`DeliveryService::bind_with_store`].
    pub fn deprecations(&mut self) -> Vec<String> {
        let fold = herald_core::duration::fold_deprecated_ms;
        let mut out: Vec<String> = [
            fold(
                "delivery",
                "drain_timeout",
                &mut self.drain_timeout,
                &mut self.drain_timeout_ms,
            ),
            fold(
                "delivery",
                "stats_interval",
                &mut self.stats_interval,
                &mut self.stats_interval_ms,
            ),
        ]
        .into_iter()
        .flatten()
        .collect();
        out.extend(self.cql.deprecations("delivery.cql"));
        out
    }
}

/// Why the delivery service could not start or stopped early.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("encoding: {0}")]
    Json(#[from] serde_json::Error),
}

/// Result alias of the service.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Run the delivery service until `shutdown` fires, then drain in-flight
/// attempts, commit, flush the producer and return.
pub async fn run(
    config: DeliveryConfig,
    webhooks: Webhooks,
    secrets: Arc<dyn SecretSource + Send + Sync>,
    shutdown: CancellationToken,
) -> Result<()> {
    DeliveryService::bind(config, webhooks, secrets)
        .await?
        .run(shutdown)
        .await
}

/// A delivery service that is connected and listening but not yet consuming.
/// [`DeliveryService::run`] does all the work inside its own future, so
/// dropping (or aborting) that future stops everything, like a crash.
pub struct DeliveryService {
    config: Arc<DeliveryConfig>,
    listener: TcpListener,
    consumer: StreamConsumer<consumer::Context>,
    shared: Arc<job::Shared>,
    watcher: circuit::Watcher,
}

impl DeliveryService {
    /// Validate the configuration, connect to the store and Kafka, subscribe
    /// and bind the HTTP listener.
    pub async fn bind(
        config: DeliveryConfig,
        webhooks: Webhooks,
        secrets: Arc<dyn SecretSource + Send + Sync>,
    ) -> Result<Self> {
        let store = CqlStore::connect(&config.cql, StoreLimits::default()).await?;
        Self::bind_with_store(config, webhooks, secrets, Arc::new(store)).await
    }

    /// Like [`DeliveryService::bind`], with a store the caller opened.
    pub async fn bind_with_store(
        config: DeliveryConfig,
        webhooks: Webhooks,
        secrets: Arc<dyn SecretSource + Send + Sync>,
        store: Arc<dyn NotificationStore>,
    ) -> Result<Self> {
        let mut config = config;
        for warning in config.deprecations() {
            warn!("{warning}");
        }
        if config.max_in_flight == 0
            || config.max_in_flight_per_partition == 0
            || config.max_in_flight_per_webhook == 0
        {
            return Err(Error::Config(
                "max_in_flight, max_in_flight_per_partition and max_in_flight_per_webhook must be at least 1"
                    .into(),
            ));
        }
        let tiers = Tiers::parse(&config.tiers).map_err(|e| Error::Config(e.to_string()))?;
        for w in webhooks.iter() {
            let (initial, smallest) = (w.retry.backoff.initial_delay, tiers.smallest().delay);
            if initial < smallest {
                warn!(
                    webhook = %w.id,
                    initial_delay = %herald_core::duration::format_duration(initial),
                    smallest_tier = %tiers.smallest().name,
                    "a retry delay shorter than the smallest tier waits in that tier and can be up to its delay late behind a longer message; keep initial_delay at least the smallest tier"
                );
            }
        }
        let ssrf = SsrfGuard::from_allow_list(&config.ssrf_allow).map_err(Error::Config)?;
        let sender = HttpSender::new(SenderConfig {
            ssrf,
            ..SenderConfig::default()
        });
        let webhooks = Arc::new(webhooks);
        let topics = Topics::new(&config.kafka);
        let metrics = Metrics::new();
        metrics.watch_store(store.clone());
        let deliverer = Deliverer::new(sender, webhooks.clone(), secrets, tiers.clone());
        let producer: FutureProducer<ProducerContext> = config
            .kafka
            .producer_config()
            .create_with_context(ProducerContext)?;
        let consumer = consumer::create(&config, metrics.clone())?;
        let mut subscribed = vec![topics.deliveries(), topics.resend()];
        subscribed.extend(tiers.as_slice().iter().map(|t| topics.retry(&t.name)));
        let names: Vec<&str> = subscribed.iter().map(String::as_str).collect();
        consumer.subscribe(&names)?;
        let listener = TcpListener::bind(config.listen).await?;
        let instance = config.instance_id.clone().unwrap_or_else(|| {
            let id = uuid::Uuid::new_v4().simple().to_string();
            format!("delivery-{}", &id[..12])
        });
        let circuits = CircuitBoard::new(&instance, &webhooks, metrics.clone());
        let watcher = circuit::Watcher::new(&config.kafka, &config.group_id, circuits.clone())?;
        let hops = Arc::new(job::KafkaHops::new(producer, topics, metrics.clone()));
        let pipeline = Pipeline::new(pipeline::Parts {
            deliverer,
            store,
            hops: hops.clone(),
            metrics,
            circuits,
            tiers,
            webhooks,
            per_webhook: config.max_in_flight_per_webhook,
        });
        let shared = Arc::new(job::Shared::new(pipeline, hops));
        info!(
            group = %config.group_id,
            %instance,
            topics = ?subscribed,
            listen = %listener.local_addr()?,
            "delivery service connected"
        );
        Ok(Self {
            config: Arc::new(config),
            listener,
            consumer,
            shared,
            watcher,
        })
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served (the real port
    /// when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The service's metrics.
    pub fn metrics(&self) -> &Metrics {
        self.shared.metrics()
    }

    /// This worker's circuit breakers (a live handle).
    pub fn circuits(&self) -> CircuitBoard {
        self.shared.pipeline.circuits().clone()
    }

    /// Consume and deliver until `shutdown` fires; then stop consuming,
    /// drain in-flight attempts (up to `drain_timeout_ms`), commit, flush the
    /// producer and leave the group.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let Self {
            config,
            listener,
            consumer,
            shared,
            watcher,
        } = self;
        // Know the circuits other workers opened before delivering anything.
        watcher
            .catch_up(&shared.topics().circuits(), Duration::from_secs(5))
            .await;
        let watching = watcher.run(shutdown.clone());
        let health = Arc::new(herald_ops::Health::default());
        let metrics = shared.metrics().clone();
        let http = herald_ops::serve(
            listener,
            herald_ops::Limits::default(),
            herald_ops::endpoints(move || metrics.render(), health.clone()),
            shutdown.clone(),
        );
        let dispatch = consumer::Dispatcher::new(consumer, shared.clone(), &config)
            .run(shutdown.clone(), health);
        let (_, result, ()) = tokio::join!(http, dispatch, watching);
        let flushed = {
            let producer = shared.hops.producer.clone();
            tokio::task::spawn_blocking(move || {
                use rdkafka::producer::Producer as _;
                producer.flush(Duration::from_secs(30))
            })
            .await
        };
        match flushed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "producer flush incomplete at shutdown"),
            Err(e) => tracing::warn!(error = %e, "producer flush task failed"),
        }
        info!("delivery service stopped");
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_unknown_fields() {
        let c = DeliveryConfig::default();
        assert_eq!(c.tiers.len(), 5);
        assert_eq!(c.group_id, "herald-delivery");
        assert!(c.max_in_flight >= c.max_in_flight_per_partition);
        let e = serde_json::from_str::<DeliveryConfig>(r#"{"max_inflight": 3}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }

    #[test]
    fn deprecated_millisecond_keys_still_work() {
        let mut c: DeliveryConfig =
            serde_json::from_str(r#"{"drain_timeout_ms": 1200, "cql": {"contact_points": ["x:9042"], "keyspace": "k", "request_timeout_ms": 700}}"#)
                .unwrap();
        let warnings = c.deprecations();
        assert_eq!(c.drain_timeout, Duration::from_millis(1200));
        assert_eq!(c.cql.request_timeout, Duration::from_millis(700));
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[1].contains("delivery.cql.request_timeout"),
            "{warnings:?}"
        );
    }

    #[test]
    fn example_config_parses() {
        let text = include_str!("../../../../deploy/delivery.example.toml");
        #[derive(Deserialize)]
        struct File {
            delivery: DeliveryConfig,
        }
        let f: File = toml::from_str(text).expect("deploy/delivery.example.toml");
        assert_eq!(f.delivery.tiers, default_tiers());
    }
}
