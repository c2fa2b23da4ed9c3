//! Connection settings and the client configurations Herald uses: an
//! idempotent producer, and consumers that store and commit offsets only
//! when Herald says the work is durable.

use std::collections::BTreeMap;

use rdkafka::ClientConfig;
use serde::Deserialize;

/// Kafka settings shared by ingest and delivery (section `[kafka]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, e.g. `kafka-1:9092,kafka-2:9092`.
    #[serde(default = "default_bootstrap")]
    pub bootstrap_servers: String,
    /// Prefix for every Herald topic, e.g. `prod.` gives `prod.herald.deliveries`.
    #[serde(default)]
    pub topic_prefix: String,
    /// Extra librdkafka properties for every client (security.protocol,
    /// sasl.*, ssl.*). Values here are not logged.
    #[serde(default)]
    pub client: BTreeMap<String, String>,
}

/// librdkafka's default `message.max.bytes`: the largest message a Herald
/// producer sends unless `client` says otherwise.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_000_000;

/// What Herald adds to a value it produces (the key, its own headers, a dead
/// letter's error and origin): every limit on a value Herald produces stays
/// this far below [`KafkaConfig::max_message_bytes`].
pub const HEADROOM_BYTES: usize = 16 * 1024;

fn default_bootstrap() -> String {
    "127.0.0.1:9092".into()
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: default_bootstrap(),
            topic_prefix: String::new(),
            client: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    /// The largest message the producers send: `message.max.bytes` of
    /// `client`, or librdkafka's default. A larger one fails at once and
    /// for good, so Herald's own limits are checked against this.
    pub fn max_message_bytes(&self) -> usize {
        self.client
            .get("message.max.bytes")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES)
    }

    fn base(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers);
        for (k, v) in &self.client {
            c.set(k, v);
        }
        c
    }

    /// An idempotent producer: no duplicates or reordering from its own
    /// retries, every send acknowledged by all in-sync replicas.
    pub fn producer_config(&self) -> ClientConfig {
        let mut c = self.base();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("compression.type", "lz4")
            // A broker outage is waited out by retrying, not by failing sends.
            .set("message.timeout.ms", "300000");
        c
    }

    /// A consumer in `group` that never commits on its own: offsets are
    /// stored and committed by Herald once the work behind them is durable.
    pub fn consumer_config(&self, group: &str) -> ClientConfig {
        let mut c = self.base();
        c.set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "cooperative-sticky");
        c
    }

    pub fn admin_config(&self) -> ClientConfig {
        self.base()
    }
}
