//! The producer path of messages whose offsets wait for them: send, and
//! wait for the broker's acknowledgement, retrying until it comes.

use std::time::Duration;

use herald_ops::Backoff;
use rdkafka::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Send one message and wait for Kafka's acknowledgement, retrying (capped
/// exponential backoff, 100 ms to 5 s) until it comes; `on_retry` is told
/// of each failure (to log and count it). For messages an uncommitted
/// offset waits for: giving up would lose them.
pub async fn send_until_acked<C: ClientContext + 'static>(
    producer: &FutureProducer<C>,
    topic: &str,
    key: Option<&[u8]>,
    payload: &[u8],
    headers: Option<OwnedHeaders>,
    mut on_retry: impl FnMut(&KafkaError),
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let mut record = FutureRecord::<[u8], [u8]>::to(topic).payload(payload);
        if let Some(h) = &headers {
            record = record.headers(h.clone());
        }
        if let Some(k) = key {
            record = record.key(k);
        }
        match producer.send(record, Duration::from_secs(10)).await {
            Ok(_) => return,
            Err((e, _)) => {
                on_retry(&e);
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}
