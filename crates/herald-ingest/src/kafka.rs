//! The ingest service's Kafka clients: librdkafka logs routed to `tracing`,
//! rebalances logged, statistics turned into the consumer lag gauge.

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;

/// Sends librdkafka's logs and errors to `tracing`. Broker connection
/// errors are transient (librdkafka reconnects and retries), so they are
/// warnings, not errors.
pub(crate) fn log(level: RDKafkaLogLevel, facility: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error
        | RDKafkaLogLevel::Warning => warn!(facility, message, "librdkafka"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => info!(facility, message, "librdkafka"),
        RDKafkaLogLevel::Debug => debug!(facility, message, "librdkafka"),
    }
}

/// Context of the producer.
#[derive(Clone, Default)]
pub(crate) struct ProducerContext;

impl ClientContext for ProducerContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        warn!(error = %error, reason, "kafka producer error");
    }
}

/// Context of the input consumer.
pub(crate) struct IngestConsumerContext {
    pub(crate) metrics: Metrics,
}

impl ClientContext for IngestConsumerContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        warn!(error = %error, reason, "kafka consumer error");
    }

    fn stats(&self, statistics: Statistics) {
        // librdkafka reports -1 when it does not know (yet); partition -1
        // is its internal unassigned queue.
        let lags = statistics.topics.into_values().flat_map(|topic| {
            topic
                .partitions
                .into_values()
                .filter(|p| p.partition >= 0 && p.consumer_lag >= 0)
                .map(move |p| (topic.topic.clone(), p.partition, p.consumer_lag))
        });
        self.metrics.set_lag(lags);
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
