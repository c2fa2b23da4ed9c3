//! The circuit breakers of one worker, and how workers share them.
//!
//! Each worker keeps a [`Circuits`] in memory and consults it before every
//! attempt. When a breaker opens or closes here, the change is logged once,
//! counted, and published to the compacted `herald.circuits` topic (key:
//! webhook id). Every worker reads that topic from the beginning with its own
//! group-less consumer and follows the other workers' changes, so a circuit
//! opened by one worker stops the others within the time it takes a message
//! to go through Kafka (about `linger.ms` + a fetch; see the docs for the
//! measured figure). Half-open is local: each worker probes on its own when
//! the cool-down it knows of ends.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use herald_core::circuit::CircuitView;
use herald_core::{Admission, CircuitChange, CircuitState, Circuits, Outcome, Webhooks};
use herald_kafka::{KafkaConfig, Topics};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::metrics::Metrics;

/// This worker's breakers. Cheap to clone; the lock is never held across
/// an await.
#[derive(Clone)]
pub struct CircuitBoard {
    circuits: Arc<Mutex<Circuits>>,
    metrics: Metrics,
}

impl CircuitBoard {
    pub(super) fn new(instance: &str, webhooks: &Webhooks, metrics: Metrics) -> Self {
        let circuits = Circuits::for_webhooks(instance, webhooks, Utc::now());
        for v in circuits.views() {
            metrics
                .circuit_state
                .with_label_values(&[&v.webhook_id])
                .set(v.state.gauge());
        }
        Self {
            circuits: Arc::new(Mutex::new(circuits)),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Circuits> {
        self.circuits.lock().expect("circuits lock")
    }

    /// May a job of this webhook, due since `due_at`, be attempted now?
    pub(super) fn admit(&self, webhook_id: &str, due_at: chrono::DateTime<Utc>) -> Admission {
        self.lock().admit(webhook_id, Utc::now(), due_at)
    }

    /// The end of the cool-down if the circuit is open (read-only).
    pub(super) fn open_until(&self, webhook_id: &str) -> Option<chrono::DateTime<Utc>> {
        self.lock().open_until(webhook_id, Utc::now())
    }

    /// Report an attempt admitted by [`CircuitBoard::admit`].
    pub(super) fn record(&self, webhook_id: &str, outcome: Outcome, took: Duration, probe: bool) {
        self.lock()
            .record(webhook_id, Utc::now(), outcome, took, probe);
    }

    /// Changes made here since the last call: log and count each once.
    /// Returns those to publish (open and closed; half-open is local).
    pub(super) fn take_changes(&self) -> Vec<CircuitChange> {
        let changes = self.lock().take_changes();
        changes
            .into_iter()
            .filter(|c| {
                self.noted(c, "local");
                c.state != CircuitState::HalfOpen
            })
            .collect()
    }

    /// Follow a change published by another worker or an operator.
    pub(super) fn apply(&self, change: &CircuitChange) {
        if self.lock().apply(change) {
            self.noted(change, "remote");
        }
    }

    fn noted(&self, c: &CircuitChange, source: &str) {
        self.metrics
            .circuit_state
            .with_label_values(&[&c.webhook_id])
            .set(c.state.gauge());
        self.metrics
            .circuit_changes
            .with_label_values(&[&c.webhook_id, c.state.as_str(), source])
            .inc();
        let until = c.until.map(|u| u.to_rfc3339()).unwrap_or_default();
        match c.state {
            CircuitState::Open => warn!(
                webhook = %c.webhook_id, %until, changed_by = %c.changed_by, reason = %c.reason, source,
                "circuit opened: deliveries to this webhook are parked"
            ),
            CircuitState::HalfOpen => info!(
                webhook = %c.webhook_id, changed_by = %c.changed_by, reason = %c.reason, source,
                "circuit half-open: probing"
            ),
            CircuitState::Closed => info!(
                webhook = %c.webhook_id, changed_by = %c.changed_by, reason = %c.reason, source,
                "circuit closed: deliveries resume"
            ),
        }
    }

    /// Every circuit of this worker, by webhook id.
    pub fn views(&self) -> Vec<CircuitView> {
        self.lock().views()
    }

    /// The state of one webhook's circuit here.
    pub fn state(&self, webhook_id: &str) -> Option<CircuitState> {
        self.lock().state(webhook_id)
    }
}

/// Publish a state change (and wait for Kafka's acknowledgement).
pub(super) async fn publish(producer: &FutureProducer, topic: &str, change: &CircuitChange) {
    let payload = serde_json::to_vec(change).expect("a circuit change always encodes");
    let mut backoff = Duration::from_millis(100);
    loop {
        let record = FutureRecord::<str, [u8]>::to(topic)
            .key(&change.webhook_id)
            .payload(&payload);
        match producer.send(record, Duration::from_secs(10)).await {
            Ok(_) => return,
            Err((e, _)) => {
                warn!(error = %e, %topic, "publishing a circuit change failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
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
