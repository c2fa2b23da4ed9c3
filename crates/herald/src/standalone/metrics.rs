//! Standalone's metrics: the ingest and the delivery metrics, named as in
//! Kafka mode (`herald_ingest_*`, `herald_delivery_*`) so that one set of
//! alert rules and one dashboard serve both modes, in one registry.

use prometheus::Registry;

/// What the standalone process measures: the ingest and delivery metrics,
/// named as in Kafka mode, in one registry.
#[derive(Clone)]
pub struct StandaloneMetrics {
    pub ingest: herald_ingest::Metrics,
    pub delivery: herald_delivery::Metrics,
}

impl StandaloneMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        Self {
            ingest: herald_ingest::Metrics::register(&registry),
            delivery: herald_delivery::Metrics::register(&registry),
        }
    }

    /// The Prometheus text exposition of both.
    pub fn render(&self) -> String {
        // One registry: either renders all of it.
        self.delivery.render()
    }
}

impl Default for StandaloneMetrics {
    fn default() -> Self {
        Self::new()
    }
}
