//! The ingest service's configuration (section `[ingest]`), with defaults
//! and a one-time validation.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use herald_core::duration;
use herald_kafka::{HEADROOM_BYTES, KafkaConfig};
use herald_store::StoreLimits;
use herald_store::cql::CqlConfig;
use serde::Deserialize;

use crate::{IngestError, Result};

/// Everything `herald ingest` needs. Loaded by the CLI from the `[ingest]`
/// section of the config file and `HERALD_INGEST__*` variables.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Kafka connection settings and the prefix of Herald's own topics.
    #[serde(default)]
    pub kafka: KafkaConfig,
    /// The core-banking topics to consume (not prefixed: Herald does not
    /// own them).
    #[serde(default = "default_input_topics")]
    pub input_topics: Vec<String>,
    /// Consumer group of the ingest service. Every instance of one
    /// deployment uses the same group; the partitions are shared among them.
    #[serde(default = "default_group_id")]
    pub group_id: String,
    /// The webhook definitions file (TOML). Read by the CLI, which passes
    /// the parsed definitions to [`crate::run`].
    #[serde(default = "default_webhooks")]
    pub webhooks: PathBuf,
    /// How to reach the CQL cluster (ScyllaDB or Cassandra).
    #[serde(default = "default_cql")]
    pub cql: CqlConfig,
    /// Size limits of stored records. A rendered body above
    /// `max_request_body_bytes` is recorded as `render_failed`. Every body
    /// also travels in a delivery job, so the default is 960 KiB: it has to
    /// fit the producer's `message.max.bytes` (see [`IngestConfig::validate`]).
    #[serde(default = "default_store_limits")]
    pub store_limits: StoreLimits,
    /// Address of the `/metrics`, `/healthz` and `/readyz` endpoints.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Most input messages processed as one batch (one store append, one
    /// round of produce acknowledgements, one commit).
    #[serde(default = "default_batch_max_events")]
    pub batch_max_events: usize,
    /// Store appends a batch is split into, run concurrently. The CQL store
    /// runs 16 writes at a time per append, so this multiplies the writes
    /// in flight.
    #[serde(default = "default_store_write_parallelism")]
    pub store_write_parallelism: usize,
    /// Batches between the consumer and the commit at once: while one is
    /// produced and committed, the next ones are rendered and stored.
    /// Offsets are still committed, and jobs produced, in input order. At
    /// most `batches_in_flight + 2` batches are held in memory.
    #[serde(default = "default_batches_in_flight")]
    pub batches_in_flight: usize,
    /// Longest wait for a batch to fill once its first message arrived.
    #[serde(default = "default_batch_max_wait", with = "duration::text")]
    pub batch_max_wait: Duration,
    /// Largest input message accepted, value and headers, in bytes. A larger
    /// one is dead-lettered unread, its value cut to its first KiB, with
    /// `herald-original-size`. Its dead letter has to fit the producer's
    /// `message.max.bytes` (see [`IngestConfig::validate`]).
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: usize,
    /// First delay before a failed store write is retried.
    #[serde(default = "default_retry_initial", with = "duration::text")]
    pub retry_initial: Duration,
    /// Longest delay between retries of a store write (and of a produce that
    /// librdkafka gave up on).
    #[serde(default = "default_retry_max", with = "duration::text")]
    pub retry_max: Duration,
    /// On shutdown, how long the batches in flight may take to finish (stored,
    /// produced, committed) before they are abandoned uncommitted, to be redone
    /// by the next owner of its partitions.
    #[serde(default = "default_drain_timeout", with = "duration::text")]
    pub drain_timeout: Duration,
    /// Interval of librdkafka's statistics, which feed the consumer lag
    /// gauge. `"0s"` turns them (and the gauge) off.
    #[serde(default = "default_stats_interval", with = "duration::text")]
    pub stats_interval: Duration,
    /// Deprecated spellings, in milliseconds, of the durations above; still
    /// read, with a warning at start ([`IngestConfig::deprecations`]).
    #[doc(hidden)]
    #[serde(default)]
    pub batch_max_wait_ms: Option<u64>,
    #[doc(hidden)]
    #[serde(default)]
    pub retry_initial_ms: Option<u64>,
    #[doc(hidden)]
    #[serde(default)]
    pub retry_max_ms: Option<u64>,
    /// Deprecated: `drain_timeout` (the delivery service's name).
    #[doc(hidden)]
    #[serde(default)]
    pub shutdown_grace_ms: Option<u64>,
    /// Deprecated: `stats_interval` (the delivery service's name).
    #[doc(hidden)]
    #[serde(default)]
    pub statistics_interval_ms: Option<u64>,
}

fn default_input_topics() -> Vec<String> {
    vec!["banking.events".into()]
}
fn default_group_id() -> String {
    "herald-ingest".into()
}
fn default_webhooks() -> PathBuf {
    "deploy/webhooks.example.toml".into()
}
fn default_cql() -> CqlConfig {
    CqlConfig::new(vec!["127.0.0.1:9042".into()], "herald")
}
fn default_listen() -> SocketAddr {
    "127.0.0.1:9181".parse().expect("static address")
}
fn default_batch_max_events() -> usize {
    500
}
fn default_batches_in_flight() -> usize {
    4
}
fn default_store_write_parallelism() -> usize {
    4
}
fn default_batch_max_wait() -> Duration {
    Duration::from_millis(20)
}
fn default_max_event_bytes() -> usize {
    960 * 1024
}
fn default_store_limits() -> StoreLimits {
    StoreLimits {
        max_request_body_bytes: 960 * 1024,
        ..StoreLimits::default()
    }
}
fn default_retry_initial() -> Duration {
    Duration::from_millis(100)
}
fn default_retry_max() -> Duration {
    Duration::from_secs(10)
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_stats_interval() -> Duration {
    Duration::from_secs(5)
}

impl Default for IngestConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every field has a default")
    }
}

impl IngestConfig {
    /// Fold the deprecated millisecond keys (`shutdown_grace_ms = 30000`)
    /// into their durations (`drain_timeout = "30s"`), and return one
    /// warning per key that was used. Called by [`crate::start`].
    pub fn deprecations(&mut self) -> Vec<String> {
        let fold = duration::fold_deprecated_ms;
        let renamed = |old: &str, new: &str| {
            format!("ingest.{old} is deprecated: write ingest.{new}, as the delivery service does")
        };
        let mut out: Vec<String> = [
            fold(
                "ingest",
                "batch_max_wait",
                &mut self.batch_max_wait,
                &mut self.batch_max_wait_ms,
            ),
            fold(
                "ingest",
                "retry_initial",
                &mut self.retry_initial,
                &mut self.retry_initial_ms,
            ),
            fold(
                "ingest",
                "retry_max",
                &mut self.retry_max,
                &mut self.retry_max_ms,
            ),
        ]
        .into_iter()
        .flatten()
        .collect();
        if fold(
            "ingest",
            "drain_timeout",
            &mut self.drain_timeout,
            &mut self.shutdown_grace_ms,
        )
        .is_some()
        {
            out.push(renamed("shutdown_grace_ms", "drain_timeout"));
        }
        if fold(
            "ingest",
            "stats_interval",
            &mut self.stats_interval,
            &mut self.statistics_interval_ms,
        )
        .is_some()
        {
            out.push(renamed("statistics_interval_ms", "stats_interval"));
        }
        out.extend(self.cql.deprecations("ingest.cql"));
        out
    }

    /// Reject settings the service cannot run with. Called once by
    /// [`crate::run`].
    pub fn validate(&self) -> Result<()> {
        let fail = |msg: &str| Err(IngestError::Config(msg.to_owned()));
        if self.input_topics.is_empty() || self.input_topics.iter().any(|t| t.trim().is_empty()) {
            return fail("ingest.input_topics must name at least one topic, none empty");
        }
        if self.group_id.trim().is_empty() {
            return fail("ingest.group_id must not be empty");
        }
        if self.batch_max_events == 0 {
            return fail("ingest.batch_max_events must be at least 1");
        }
        if self.batches_in_flight == 0 {
            return fail("ingest.batches_in_flight must be at least 1");
        }
        if self.store_write_parallelism == 0 {
            return fail("ingest.store_write_parallelism must be at least 1");
        }
        if self.max_event_bytes == 0 {
            return fail("ingest.max_event_bytes must be at least 1");
        }
        // What ingest produces must fit the producer's limit, or the
        // produce fails for good: an event's dead letter carries the event,
        // and a delivery job carries the body.
        let producer = self.kafka.max_message_bytes();
        let fits = producer.saturating_sub(HEADROOM_BYTES);
        for (key, value) in [
            ("max_event_bytes", self.max_event_bytes),
            (
                "store_limits.max_request_body_bytes",
                self.store_limits.max_request_body_bytes,
            ),
        ] {
            if value > fits {
                return Err(IngestError::Config(format!(
                    "ingest.{key} is {value} bytes, but what ingest produces must fit the producer's message.max.bytes ({producer} bytes, ingest.kafka.client) with {HEADROOM_BYTES} bytes to spare: set it to at most {fits}, or raise message.max.bytes (and the topics' max.message.bytes)"
                )));
            }
        }
        if self.retry_initial.is_zero() || self.retry_initial > self.retry_max {
            return fail("ingest.retry_initial must be more than 0s and at most retry_max");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = IngestConfig::default();
        c.validate().unwrap();
        assert_eq!(c.input_topics, ["banking.events"]);
        assert_eq!(c.max_event_bytes, 960 * 1024);
    }

    #[test]
    fn what_ingest_produces_must_fit_the_producer_limit() {
        let c: IngestConfig = toml::from_str("max_event_bytes = 1048576").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("ingest.max_event_bytes is 1048576 bytes") && e.contains("at most 983616"),
            "{e}"
        );
        let c: IngestConfig =
            toml::from_str("[store_limits]\nmax_request_body_bytes = 1114112").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("store_limits.max_request_body_bytes"), "{e}");
        // A larger producer limit allows more.
        let c: IngestConfig = toml::from_str(
            "max_event_bytes = 1048576\n[kafka.client]\n\"message.max.bytes\" = \"2000000\"",
        )
        .unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn unknown_fields_and_bad_values_are_rejected() {
        let err = toml::from_str::<IngestConfig>("input_topic = [\"x\"]").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        let c: IngestConfig = toml::from_str("input_topics = []").unwrap();
        assert!(c.validate().is_err());
        let c: IngestConfig =
            toml::from_str("retry_initial = \"5s\"\nretry_max = \"10ms\"").unwrap();
        assert!(c.validate().is_err());
    }

    #[test]
    fn deprecated_millisecond_keys_still_work_and_say_so() {
        let mut c: IngestConfig =
            toml::from_str("shutdown_grace_ms = 1500\nbatch_max_wait_ms = 5").unwrap();
        let warnings = c.deprecations();
        assert_eq!(c.drain_timeout, Duration::from_millis(1500));
        assert_eq!(c.batch_max_wait, Duration::from_millis(5));
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("shutdown_grace_ms") && w.contains("drain_timeout")),
            "{warnings:?}"
        );
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(c.deprecations().is_empty(), "folded once");
    }

    #[test]
    fn the_example_file_parses() {
        #[derive(Deserialize)]
        struct File {
            ingest: IngestConfig,
        }
        let text = include_str!("../../../deploy/ingest.example.toml");
        let file: File = toml::from_str(text).unwrap();
        file.ingest.validate().unwrap();
    }
}
