//! The ingest consumer's context: librdkafka logs routed to `tracing`,
//! rebalances logged, statistics turned into the consumer lag gauge.

use herald_kafka::client;
use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use tracing::{info, warn};

use crate::metrics::Metrics;

/// Context of the input consumer.
pub(crate) struct IngestConsumerContext {
    pub(crate) metrics: Metrics,
}

impl ClientContext for IngestConsumerContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        client::log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        warn!(error = %error, reason, "kafka consumer error");
    }

    fn stats(&self, statistics: Statistics) {
        self.metrics.set_lag(client::partition_lags(&statistics));
    }
}

impl ConsumerContext for IngestConsumerContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => info!(partitions = tpl.count(), "partitions assigned"),
            Rebalance::Revoke(tpl) => info!(partitions = tpl.count(), "partitions revoked"),
            Rebalance::Error(e) => warn!(error = %e, "rebalance failed"),
        }
    }
}
