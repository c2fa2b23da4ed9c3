//! What every Herald Kafka client shares: librdkafka's logs routed to
//! `tracing`, a producer context that does only that, and the consumer lag
//! librdkafka's statistics report.

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use tracing::{debug, info, warn};

/// Send one librdkafka log line to `tracing`. Broker connection errors are
/// transient (librdkafka reconnects and retries), so they are warnings, not
/// errors.
pub fn log(level: RDKafkaLogLevel, facility: &str, message: &str) {
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

/// The context of Herald's producers: logs to `tracing`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProducerContext;

impl ClientContext for ProducerContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        warn!(error = %error, reason, "kafka producer error");
    }
}

/// The consumer lag of every assigned partition in `statistics`: (topic,
/// partition, lag). librdkafka reports -1 when it does not know (yet);
/// partition -1 is its internal unassigned queue: both are left out.
pub fn partition_lags(statistics: &Statistics) -> Vec<(String, i32, i64)> {
    statistics
        .topics
        .values()
        .flat_map(|topic| {
            topic
                .partitions
                .values()
                .filter(|p| p.partition >= 0 && p.consumer_lag >= 0)
                .map(move |p| (topic.topic.clone(), p.partition, p.consumer_lag))
        })
        .collect()
}
