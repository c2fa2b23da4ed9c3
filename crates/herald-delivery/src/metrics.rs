//! Every delivery metric, declared in one place and named the same in both
//! modes (`herald_delivery_*`). Labels are low cardinality: webhook id
//! (bounded by configuration; ids not defined there are reported as
//! `unknown`), outcome, status class, tier and topic. Some only move in
//! Kafka mode (consumer lag, waiting partitions, tier hops, invalid
//! messages).

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;
use herald_core::{SecretSource, Webhooks};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use tracing::debug;

use crate::tls;

/// The delivery metrics. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Attempts, by webhook, outcome and status class (`2xx`..`5xx`, `none`).
    pub attempts: IntCounterVec,
    /// Duration of one attempt (request sent to response read), by webhook.
    pub attempt_duration: HistogramVec,
    /// From the job's due time to its attempt starting, by trigger: how late
    /// deliveries are (tier granularity, queueing, webhook limits).
    pub start_delay: HistogramVec,
    /// Retries scheduled, by webhook and tier.
    pub retries: IntCounterVec,
    /// Notifications whose automatic retries ran out, by webhook.
    pub exhausted: IntCounterVec,
    /// Resend commands handled, by result.
    pub resends: IntCounterVec,
    /// Messages that could not be decoded, by topic.
    pub invalid: IntCounterVec,
    /// Store or Kafka operations retried, by operation.
    pub retried_ops: IntCounterVec,
    /// Jobs in flight in this process.
    pub in_flight: IntGauge,
    /// Partitions paused because their head is not yet due.
    pub waiting_partitions: IntGauge,
    /// Consumer lag (high watermark minus committed offset), by topic.
    pub consumer_lag: IntGaugeVec,
    /// Circuit state by webhook: 0 closed, 1 half-open, 2 open.
    pub circuit_state: IntGaugeVec,
    /// Circuit state changes, by webhook, new state and source (`local`:
    /// decided here; `remote`: followed from another worker or an operator).
    pub circuit_changes: IntCounterVec,
    /// Jobs parked (not attempted, attempt number unchanged) because their
    /// webhook's circuit was open, by webhook.
    pub parked: IntCounterVec,
    /// Jobs skipped because the store says they are no longer owed: redone
    /// after a rebalance or a crash, before their offset was committed.
    pub skipped: IntCounterVec,
    /// Retry-tier messages moved on, unchanged, to the tier that fits what
    /// is left of their wait, by the tier they left.
    pub tier_hops: IntCounterVec,
    /// Jobs waiting in this process's memory for their due time
    /// (standalone: every scheduled retry and parked attempt; Kafka mode:
    /// jobs due within the smallest tier's delay).
    pub scheduled: IntGauge,
}

impl Metrics {
    /// The delivery metrics in a registry of their own.
    pub fn new() -> Self {
        Self::register(&Registry::new())
    }

    /// The delivery metrics, registered in `registry` (standalone shares
    /// one registry with the ingest metrics). [`Metrics::render`] renders
    /// all of that registry.
    pub fn register(registry: &Registry) -> Self {
        let r = herald_ops::Registrar(registry);
        let counter = |name: &str, help: &str, labels: &[&str]| r.counters(name, help, labels);
        let attempts = counter(
            "herald_delivery_attempts_total",
            "Delivery attempts, by webhook, outcome and HTTP status class.",
            &["webhook", "outcome", "status_class"],
        );
        let retries = counter(
            "herald_delivery_retries_scheduled_total",
            "Retries scheduled (Kafka mode: published to a delayed-retry tier), by webhook and tier.",
            &["webhook", "tier"],
        );
        let exhausted = counter(
            "herald_delivery_exhausted_total",
            "Notifications whose automatic retries ran out (Kafka mode: dead-lettered), by webhook.",
            &["webhook"],
        );
        let resends = counter(
            "herald_delivery_resends_total",
            "Resend commands handled, by result (sent, unknown, not_rendered).",
            &["result"],
        );
        let invalid = counter(
            "herald_delivery_invalid_messages_total",
            "Messages that could not be decoded and were dead-lettered, by topic.",
            &["topic"],
        );
        let retried_ops = counter(
            "herald_delivery_retried_operations_total",
            "Store operations or Kafka publishes that failed and were retried: transient failures, and store faults that wait for an operator (authorization, a missing table).",
            &["operation"],
        );
        let circuit_changes = counter(
            "herald_delivery_circuit_changes_total",
            "Circuit breaker state changes, by webhook, new state and source (local or remote).",
            &["webhook", "state", "source"],
        );
        let parked = counter(
            "herald_delivery_parked_total",
            "Jobs parked to the end of a cool-down because their webhook's circuit was open, by webhook.",
            &["webhook"],
        );
        let skipped = counter(
            "herald_delivery_skipped_total",
            "Automatic jobs not sent because the store says the attempt is no longer owed (a job redone after a rebalance or crash, a replayed or re-submitted event), by webhook and reason: delivered, already_attempted (another copy made it) or closed (retries exhausted).",
            &["webhook", "reason"],
        );
        let tier_hops = counter(
            "herald_delivery_tier_hops_total",
            "Retry-tier messages whose time in their tier was over before they were due, republished unchanged to the tier that fits the rest, by the tier they left.",
            &["tier"],
        );
        let attempt_duration = r.histograms(
            "herald_delivery_attempt_duration_seconds",
            "Duration of one delivery attempt.",
            &["webhook"],
            &[
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ],
        );
        let start_delay = r.histograms(
            "herald_delivery_start_delay_seconds",
            "Time from a job's due time to the start of its attempt.",
            &["trigger"],
            &[
                0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
            ],
        );
        let in_flight = r.gauge(
            "herald_delivery_in_flight",
            "Jobs in flight in this process.",
        );
        let scheduled = r.gauge(
            "herald_delivery_scheduled",
            "Jobs waiting in this process's memory for their due time (standalone: every scheduled retry and parked attempt; Kafka mode: jobs due within the smallest tier's delay).",
        );
        let waiting_partitions = r.gauge(
            "herald_delivery_waiting_partitions",
            "Partitions paused until their head message is due.",
        );
        let consumer_lag = r.gauges(
            "herald_delivery_consumer_lag",
            "Messages not yet committed (high watermark minus committed offset) on the partitions this process owns, by topic.",
            &["topic"],
        );
        let circuit_state = r.gauges(
            "herald_delivery_circuit_state",
            "Circuit breaker state by webhook, as this worker sees it: 0 closed, 1 half-open, 2 open.",
            &["webhook"],
        );
        Self {
            registry: registry.clone(),
            circuit_state,
            circuit_changes,
            parked,
            skipped,
            tier_hops,
            attempts,
            attempt_duration,
            start_delay,
            retries,
            exhausted,
            resends,
            invalid,
            retried_ops,
            in_flight,
            waiting_partitions,
            consumer_lag,
            scheduled,
        }
    }

    /// This process's running totals per webhook, as the console's live
    /// chart reads them: read from the counters above, so they are exactly
    /// what `/metrics` shows. Webhooks with no attempt yet are absent.
    pub fn webhook_totals(&self) -> BTreeMap<String, WebhookTotals> {
        let mut totals: BTreeMap<String, WebhookTotals> = BTreeMap::new();
        let mut add = |vec: &IntCounterVec, field: fn(&mut WebhookTotals, &str, u64)| {
            for family in vec.collect() {
                for m in family.get_metric() {
                    let label = |name: &str| {
                        m.get_label()
                            .iter()
                            .find(|l| l.name() == name)
                            .map(|l| l.value().to_owned())
                    };
                    let Some(webhook) = label("webhook") else {
                        continue;
                    };
                    let outcome = label("outcome").unwrap_or_default();
                    let value = m.get_counter().get_value() as u64;
                    field(totals.entry(webhook).or_default(), &outcome, value);
                }
            }
        };
        add(&self.attempts, |t, outcome, n| {
            if outcome == "success" {
                t.delivered += n;
            } else {
                t.failed_attempts += n;
            }
        });
        add(&self.retries, |t, _, n| t.retries_scheduled += n);
        add(&self.exhausted, |t, _, n| t.exhausted += n);
        totals
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        herald_ops::render(&self.registry)
    }

    /// Report the store's request counts (`herald_store_requests_total`).
    pub fn watch_store(&self, store: Arc<dyn herald_store::NotificationStore>) {
        herald_ops::watch_store_requests(&self.registry, move || store.requests());
    }

    /// Report, at every scrape, the days left on each webhook's client
    /// certificate (`herald_delivery_client_certificate_days_left`),
    /// read from its secret then, so a renewed file shows at once. A
    /// webhook whose certificate cannot be read has no sample; its attempts
    /// are `refused` with the reason. Registering twice is a no-op.
    pub fn watch_client_certificates(
        &self,
        webhooks: Arc<Webhooks>,
        secrets: Arc<dyn SecretSource + Send + Sync>,
    ) {
        let gauge = GaugeVec::new(
            Opts::new(
                "herald_delivery_client_certificate_days_left",
                "Days until the client certificate of a webhook with mutual TLS expires (negative: expired), by webhook.",
            ),
            &["webhook"],
        )
        .expect("valid metric");
        let collector = ClientCertificates {
            gauge,
            webhooks,
            secrets,
        };
        if self.registry.register(Box::new(collector)).is_err() {
            debug!("client certificate expiry already reported by this registry");
        }
    }
}

/// One webhook's running totals in this process ([`Metrics::webhook_totals`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct WebhookTotals {
    /// Attempts answered 2xx.
    pub delivered: u64,
    /// Attempts with any other outcome.
    pub failed_attempts: u64,
    pub retries_scheduled: u64,
    /// Notifications whose automatic retries ran out.
    pub exhausted: u64,
}

/// Computes `herald_delivery_client_certificate_days_left` when scraped.
struct ClientCertificates {
    gauge: GaugeVec,
    webhooks: Arc<Webhooks>,
    secrets: Arc<dyn SecretSource + Send + Sync>,
}

impl Collector for ClientCertificates {
    fn desc(&self) -> Vec<&Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.gauge.reset();
        let now = Utc::now();
        for w in self.webhooks.iter() {
            let at = tls::client_certificate_not_after(&self.webhooks, w, self.secrets.as_ref());
            if let Some(Ok(at)) = at {
                let days = (at - now).num_seconds() as f64 / 86_400.0;
                self.gauge.with_label_values(&[&w.id]).set(days);
            }
        }
        self.gauge.collect()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// `2xx`, `3xx`, `4xx`, `5xx`, or `none` when there was no HTTP response.
pub(crate) fn status_class(status: Option<u16>) -> &'static str {
    match status {
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        Some(_) => "other",
        None => "none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_declared_metrics() {
        let m = Metrics::new();
        m.attempts
            .with_label_values(&["crm", "success", status_class(Some(204))])
            .inc();
        m.consumer_lag
            .with_label_values(&["herald.deliveries"])
            .set(3);
        let text = m.render();
        assert!(text.contains(
            r#"herald_delivery_attempts_total{outcome="success",status_class="2xx",webhook="crm"} 1"#
        ));
        assert!(text.contains(r#"herald_delivery_consumer_lag{topic="herald.deliveries"} 3"#));
        assert_eq!(status_class(None), "none");
        assert_eq!(status_class(Some(302)), "3xx");
    }
}
