//! Every metric of standalone mode, declared in one place. Labels are low
//! cardinality: webhook id (bounded by configuration), outcome, status, tier.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub events: IntCounterVec,
    pub notifications: IntCounterVec,
    pub attempts: IntCounterVec,
    pub latency: HistogramVec,
    pub retries: IntCounterVec,
    pub exhausted: IntCounterVec,
    pub scheduled: IntGauge,
    /// Circuit state by webhook: 0 closed, 1 half-open, 2 open.
    pub circuit_state: IntGaugeVec,
    /// Circuit state changes, by webhook and new state.
    pub circuit_changes: IntCounterVec,
    /// Attempts parked (due time moved, attempt unchanged) because their
    /// webhook's circuit was open, by webhook.
    pub parked: IntCounterVec,
    /// Automatic attempts not made because the store says they are no
    /// longer owed, by webhook and reason (the Kafka-mode name).
    pub skipped: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let events = counter(
            "herald_events_accepted_total",
            "Events accepted, by whether any webhook matched.",
            &["outcome"],
        );
        let notifications = counter(
            "herald_notifications_created_total",
            "Notifications of accepted events, by webhook and status: the initial status of a new record, or `known` when it was stored before (a re-submitted event: the first record wins and nothing new is scheduled unless it was never attempted).",
            &["webhook", "status"],
        );
        let attempts = counter(
            "herald_attempts_total",
            "Delivery attempts, by webhook and outcome.",
            &["webhook", "outcome"],
        );
        let retries = counter(
            "herald_retries_scheduled_total",
            "Retries scheduled, by webhook and tier.",
            &["webhook", "tier"],
        );
        let exhausted = counter(
            "herald_exhausted_total",
            "Notifications whose automatic retries are exhausted.",
            &["webhook"],
        );
        let circuit_changes = counter(
            "herald_circuit_changes_total",
            "Circuit breaker state changes, by webhook and new state.",
            &["webhook", "state"],
        );
        let parked = counter(
            "herald_parked_total",
            "Attempts parked to the end of a cool-down because their webhook's circuit was open.",
            &["webhook"],
        );
        let skipped = counter(
            "herald_delivery_skipped_total",
            "Automatic attempts not made because the store says they are no longer owed (a re-submitted event whose first attempt another job made), by webhook and reason.",
            &["webhook", "reason"],
        );
        let circuit_state = IntGaugeVec::new(
            Opts::new(
                "herald_circuit_state",
                "Circuit breaker state by webhook: 0 closed, 1 half-open, 2 open.",
            ),
            &["webhook"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(circuit_state.clone()))
            .expect("unique metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "herald_attempt_duration_seconds",
                "Duration of one delivery attempt.",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["webhook"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(latency.clone()))
            .expect("unique metric");
        let scheduled = IntGauge::new(
            "herald_retries_waiting",
            "Attempts waiting for their due time.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(scheduled.clone()))
            .expect("unique metric");
        Self {
            registry,
            events,
            notifications,
            attempts,
            latency,
            retries,
            exhausted,
            scheduled,
            circuit_state,
            circuit_changes,
            parked,
            skipped,
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding");
        String::from_utf8(buf).expect("prometheus text is utf-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
