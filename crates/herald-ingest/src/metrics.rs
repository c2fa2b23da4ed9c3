//! Every metric of the ingest service, declared in one place, and one
//! function per notable occurrence that writes both the log line and the
//! metric. Labels are low cardinality: outcome, reason, status, webhook id
//! (bounded by configuration), input topic and partition.

use std::time::Duration;

use prometheus::{Histogram, HistogramVec, IntCounterVec, IntGaugeVec, Registry};
use tracing::{debug, warn};

/// Why an input message went to the dead-letter topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeadLetterReason {
    /// Not a valid CloudEvent, in neither mode.
    Undecodable,
    /// The value is above `max_event_bytes`.
    Oversized,
    /// The store refused its notifications for good (not retriable).
    StoreRejected,
}

impl DeadLetterReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Undecodable => "undecodable",
            Self::Oversized => "oversized",
            Self::StoreRejected => "store_rejected",
        }
    }
}

/// The ingest service's metrics. Cheap to clone (the collectors are shared).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    events: IntCounterVec,
    notifications: IntCounterVec,
    render_failures: IntCounterVec,
    store_write: Histogram,
    store_errors: IntCounterVec,
    produce: HistogramVec,
    produce_errors: IntCounterVec,
    batches: Histogram,
    lag: IntGaugeVec,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Metrics {
    /// The ingest metrics in a registry of their own.
    pub fn new() -> Self {
        Self::register(&Registry::new())
    }

    /// Report the store's request counts (`herald_store_requests_total`).
    pub fn watch_store(&self, store: std::sync::Arc<dyn herald_store::NotificationStore>) {
        herald_ops::watch_store_requests(&self.registry, move || store.requests());
    }

    /// The ingest metrics, registered in `registry` (standalone shares one
    /// registry with the delivery metrics). [`Metrics::render`] renders all
    /// of that registry.
    pub fn register(registry: &Registry) -> Self {
        let r = herald_ops::Registrar(registry);
        let counter = |name: &str, help: &str, labels: &[&str]| r.counters(name, help, labels);
        let events = counter(
            "herald_ingest_events_total",
            "Input messages processed, by outcome: matched, unmatched, or dead_lettered.",
            &["outcome"],
        );
        // Present from the start, so dashboards and alerts see zeros.
        for outcome in ["matched", "unmatched", "dead_lettered"] {
            events.with_label_values(&[outcome]);
        }
        let notifications = counter(
            "herald_ingest_notifications_created_total",
            "Notifications of matched events, by webhook and status: the initial \
             status of a new record, or `known` when it was stored before (a replayed \
             or re-submitted event: the first record wins and nothing new is \
             scheduled unless it was never attempted).",
            &["webhook", "status"],
        );
        let render_failures = counter(
            "herald_ingest_render_failures_total",
            "Notifications recorded as render_failed, by webhook.",
            &["webhook"],
        );
        let store_write = r.histogram(
            "herald_ingest_store_write_seconds",
            "Duration of one successful store append of a batch of notifications.",
            LATENCY_BUCKETS,
        );
        let store_errors = counter(
            "herald_ingest_store_write_errors_total",
            "Failed store appends, by whether they are retried.",
            &["retriable"],
        );
        let produce = r.histograms(
            "herald_ingest_produce_seconds",
            "Time from enqueueing a message to its acknowledgement by Kafka, by topic kind.",
            &["kind"],
            LATENCY_BUCKETS,
        );
        let produce_errors = counter(
            "herald_ingest_produce_errors_total",
            "Messages librdkafka gave up on (they are produced again), by topic kind.",
            &["kind"],
        );
        let batches = r.histogram(
            "herald_ingest_batch_events",
            "Input messages per processed batch.",
            &[1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0],
        );
        let lag = r.gauges(
            "herald_ingest_consumer_lag",
            "Messages between the committed offset and the end of each assigned input partition.",
            &["topic", "partition"],
        );
        Self {
            registry: registry.clone(),
            events,
            notifications,
            render_failures,
            store_write,
            store_errors,
            produce,
            produce_errors,
            batches,
            lag,
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        herald_ops::render(&self.registry)
    }

    pub fn event_matched(&self, notifications: usize) {
        debug!(notifications, "event matched");
        self.events.with_label_values(&["matched"]).inc();
    }

    pub fn event_unmatched(&self, event_type: &str) {
        debug!(event_type, "event matched no webhook");
        self.events.with_label_values(&["unmatched"]).inc();
    }

    pub(crate) fn event_dead_lettered(
        &self,
        reason: DeadLetterReason,
        topic: &str,
        partition: i32,
        offset: i64,
        error: &str,
    ) {
        warn!(
            reason = reason.as_str(),
            topic, partition, offset, error, "input message dead-lettered"
        );
        self.events.with_label_values(&["dead_lettered"]).inc();
    }

    pub fn notification_stored(&self, webhook: &str, status: &str) {
        self.notifications
            .with_label_values(&[webhook, status])
            .inc();
    }

    pub fn render_failed(&self, webhook: &str, event_id: &str, error: &str) {
        warn!(webhook, event_id, error, "template render failed");
        self.render_failures.with_label_values(&[webhook]).inc();
    }

    pub fn store_written(&self, elapsed: Duration) {
        self.store_write.observe(elapsed.as_secs_f64());
    }

    pub(crate) fn store_failed(&self, retriable: bool, retry_in: Option<Duration>, error: &str) {
        let retry_in_ms = retry_in.map(|d| d.as_millis() as u64);
        warn!(retriable, retry_in_ms, error, "store append failed");
        self.store_errors
            .with_label_values(&[if retriable { "true" } else { "false" }])
            .inc();
    }

    pub(crate) fn produced(&self, kind: &'static str, elapsed: Duration) {
        self.produce
            .with_label_values(&[kind])
            .observe(elapsed.as_secs_f64());
    }

    pub(crate) fn produce_failed(&self, kind: &'static str, topic: &str, error: &str) {
        warn!(kind, topic, error, "produce failed, producing again");
        self.produce_errors.with_label_values(&[kind]).inc();
    }

    pub(crate) fn batch_done(&self, events: usize) {
        self.batches.observe(events as f64);
    }

    /// Replace the lag gauge with librdkafka's latest view of the assigned
    /// partitions, so revoked partitions disappear.
    pub(crate) fn set_lag(&self, lags: impl IntoIterator<Item = (String, i32, i64)>) {
        self.lag.reset();
        for (topic, partition, lag) in lags {
            self.lag
                .with_label_values(&[topic.as_str(), &partition.to_string()])
                .set(lag);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_renders_with_its_name() {
        let m = Metrics::new();
        m.event_matched(2);
        m.event_unmatched("t");
        m.event_dead_lettered(DeadLetterReason::Oversized, "in", 0, 1, "too big");
        m.notification_stored("crm", "pending");
        m.render_failed("crm", "e1", "boom");
        m.store_written(Duration::from_millis(3));
        m.store_failed(true, Some(Duration::from_millis(100)), "down");
        m.produced("job", Duration::from_millis(2));
        m.produce_failed("dead_letter", "dlq", "timeout");
        m.batch_done(10);
        m.set_lag([("in".to_owned(), 0, 5)]);
        let text = m.render();
        for name in [
            "herald_ingest_events_total{outcome=\"dead_lettered\"} 1",
            "herald_ingest_notifications_created_total{status=\"pending\",webhook=\"crm\"} 1",
            "herald_ingest_render_failures_total{webhook=\"crm\"} 1",
            "herald_ingest_store_write_seconds_count 1",
            "herald_ingest_store_write_errors_total{retriable=\"true\"} 1",
            "herald_ingest_produce_seconds_count{kind=\"job\"} 1",
            "herald_ingest_produce_errors_total{kind=\"dead_letter\"} 1",
            "herald_ingest_batch_events_count 1",
            "herald_ingest_consumer_lag{partition=\"0\",topic=\"in\"} 5",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
        m.set_lag([]);
        assert!(!m.render().contains("herald_ingest_consumer_lag{"));
    }
}
