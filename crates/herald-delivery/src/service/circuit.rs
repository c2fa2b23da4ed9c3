//! How Kafka-mode workers share their circuit breakers.
//!
//! Each worker keeps a [`CircuitBoard`] in memory and consults it before
//! every attempt. When a breaker opens or closes here, the change is logged
//! once, counted, and published to the compacted `herald.circuits` topic (key:
//! webhook id). Every worker reads that topic from the beginning with its own
//! group-less consumer and follows the other workers' changes, so a circuit
//! opened by one worker stops the others within the time it takes a message
//! to go through Kafka (about `linger.ms` + a fetch; see the docs for the
//! measured figure). Half-open is local: each worker probes on its own when
//! the cool-down it knows of ends.

use std::time::Duration;

use chrono::Utc;
use herald_core::{CircuitChange, CircuitState};
use herald_kafka::produce::send_until_acked;
use herald_kafka::{KafkaConfig, Topics};
use rdkafka::ClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::CircuitBoard;

/// Publish a state change (and wait for Kafka's acknowledgement).
pub(super) async fn publish<C: ClientContext + 'static>(
    producer: &FutureProducer<C>,
    topic: &str,
    change: &CircuitChange,
) {
    let payload = serde_json::to_vec(change).expect("a circuit change always encodes");
    let key = Some(change.webhook_id.as_bytes());
    send_until_acked(producer, topic, key, &payload, None, |e| {
        warn!(error = %e, %topic, "publishing a circuit change failed; retrying");
    })
    .await;
}

/// Force a webhook's circuit closed on every worker: publish a `closed`
/// change, which every worker applies (it is newer than what they hold).
pub async fn force_close(
    kafka: &KafkaConfig,
    webhook_id: &str,
    requested_by: &str,
) -> Result<CircuitChange, rdkafka::error::KafkaError> {
    let producer: FutureProducer = kafka.producer_config().create()?;
    let change = CircuitChange {
        webhook_id: webhook_id.to_owned(),
        state: CircuitState::Closed,
        since: Utc::now(),
        until: None,
        changed_by: format!("operator:{requested_by}"),
        reason: "closed by an operator".into(),
        reopens: 0,
    };
    let payload = serde_json::to_vec(&change).expect("a circuit change always encodes");
    producer
        .send(
            FutureRecord::<str, [u8]>::to(&Topics::new(kafka).circuits())
                .key(webhook_id)
                .payload(&payload),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)?;
    Ok(change)
}

/// The latest state change of every webhook on the circuits topic, read
/// from its beginning up to its end (for `herald circuits`).
pub async fn read_all(
    kafka: &KafkaConfig,
    timeout: Duration,
) -> Result<Vec<CircuitChange>, rdkafka::error::KafkaError> {
    let consumer = watcher(kafka, "herald-circuits-reader")?;
    let topic = Topics::new(kafka).circuits();
    // Blocks briefly; this runs once, in an operator command.
    let (low, high) = consumer.fetch_watermarks(&topic, 0, timeout)?;
    let mut latest = std::collections::BTreeMap::new();
    if high > low {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let Ok(msg) = tokio::time::timeout_at(deadline, consumer.recv()).await else {
                break;
            };
            let msg = msg?;
            if let Some(change) = msg
                .payload()
                .and_then(|p| serde_json::from_slice::<CircuitChange>(p).ok())
            {
                latest.insert(change.webhook_id.clone(), change);
            }
            if msg.offset() + 1 >= high {
                break;
            }
        }
    }
    Ok(latest.into_values().collect())
}

/// A consumer of the whole circuits topic, without a group: it is assigned
/// the one partition from the beginning and never commits.
fn watcher(kafka: &KafkaConfig, group: &str) -> Result<StreamConsumer, rdkafka::error::KafkaError> {
    let mut cc = kafka.consumer_config(group);
    // Changes should reach the other workers fast; the broker answers an
    // empty fetch after this long.
    cc.set("fetch.wait.max.ms", "50");
    let consumer: StreamConsumer = cc.create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&Topics::new(kafka).circuits(), 0, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    Ok(consumer)
}

/// Follows the circuits topic for one worker.
pub(super) struct Watcher {
    consumer: StreamConsumer,
    board: CircuitBoard,
}

impl Watcher {
    pub(super) fn new(
        kafka: &KafkaConfig,
        group: &str,
        board: CircuitBoard,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        Ok(Self {
            consumer: watcher(kafka, &format!("{group}.circuits"))?,
            board,
        })
    }

    /// Apply what is already on the topic (up to its end when called, at
    /// most `timeout`), so a starting worker knows the open circuits before
    /// it delivers.
    pub(super) async fn catch_up(&self, topic: &str, timeout: Duration) {
        // Blocks briefly, once, before the worker starts consuming.
        let high = {
            match self.consumer.fetch_watermarks(topic, 0, timeout) {
                Ok((low, high)) if high > low => high,
                Ok(_) => return,
                Err(e) => {
                    warn!(error = %e, "circuits topic unreadable at start; following it later");
                    return;
                }
            }
        };
        let deadline = tokio::time::Instant::now() + timeout;
        while let Ok(msg) = tokio::time::timeout_at(deadline, self.consumer.recv()).await {
            match msg {
                Ok(m) => {
                    self.handle(&m);
                    if m.offset() + 1 >= high {
                        return;
                    }
                }
                Err(e) => warn!(error = %e, "circuits consumer error"),
            }
        }
        warn!("circuits topic not read to its end at start; following it in the background");
    }

    fn handle(&self, m: &rdkafka::message::BorrowedMessage<'_>) {
        match m.payload().map(serde_json::from_slice::<CircuitChange>) {
            Some(Ok(change)) => self.board.apply(&change),
            Some(Err(e)) => {
                debug!(error = %e, offset = m.offset(), "undecodable circuit change ignored")
            }
            None => {}
        }
    }

    /// Follow the topic until `shutdown`.
    pub(super) async fn run(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                msg = self.consumer.recv() => match msg {
                    Ok(m) => self.handle(&m),
                    Err(e) => warn!(error = %e, "circuits consumer error"),
                },
            }
        }
    }
}
