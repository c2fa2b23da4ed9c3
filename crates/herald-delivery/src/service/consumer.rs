//! The dispatch loop: one consumer for the deliveries, retry-tier and resend
//! topics. It decodes each message, holds back those not yet due (see
//! `flow`), starts the rest as jobs within the in-flight bounds, and commits
//! the contiguous prefix of finished offsets per partition.
//!
//! Everything runs inside this one future: jobs live in a `JoinSet` it owns,
//! so dropping the service (a crash, an aborted task) abandons in-flight work
//! uncommitted, and the partitions' next owner redoes it (at least once).

use std::collections::{HashMap, HashSet};
use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use herald_core::{DeliveryJob, ResendCommand, Tier, TierStep};
use herald_kafka::{OffsetTracker, headers};
use rdkafka::client::ClientContext;
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedHeaders, BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::flow::{Admit, Flow, Partitions, Tp};
use super::job::{self, Shared, Work};
use super::{DeliveryConfig, Result};
use crate::Metrics;

/// Sleep until the wall clock reads `at` (never wakes early, even if the
/// clock is stepped back meanwhile).
async fn until(at: DateTime<Utc>) {
    while let Ok(left) = (at - Utc::now()).to_std() {
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left).await;
    }
}

/// A job held in memory until it is due, counted in
/// `herald_delivery_scheduled` while it waits (also when its task is
/// aborted by a rebalance).
struct Scheduled(prometheus::IntGauge);

impl Scheduled {
    fn new(gauge: &prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for Scheduled {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A message's headers for its next tier: all of them, with the hop count
/// one higher.
fn hopped(m: &BorrowedMessage<'_>) -> OwnedHeaders {
    let hops = headers::get(m.headers(), headers::HOPS)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let mut out = OwnedHeaders::new();
    if let Some(hs) = m.headers() {
        for h in hs.iter().filter(|h| h.key != headers::HOPS) {
            out = out.insert(Header {
                key: h.key,
                value: h.value,
            });
        }
    }
    out.insert(Header {
        key: headers::HOPS,
        value: Some(&(hops + 1).to_string()),
    })
}

/// How often finished offsets are committed (asynchronously).
const COMMIT_INTERVAL: Duration = Duration::from_millis(200);

/// A rebalance, as seen by the consumer callbacks, for the loop to apply.
#[derive(Debug)]
enum Event {
    Assign(Vec<Tp>),
    Revoke(Vec<Tp>),
}

/// The consumer's context: rebalance hooks, commit results and statistics.
/// Callbacks run inside the consumer's poll, i.e. on the dispatch loop's
/// task; they only record what happened.
pub(super) struct Context {
    metrics: Metrics,
    events: Mutex<Vec<Event>>,
    /// Next offset to commit per partition, not yet committed.
    pending: Mutex<HashMap<Tp, i64>>,
    assigned: Mutex<HashSet<Tp>>,
}

fn tps(tpl: &TopicPartitionList) -> Vec<Tp> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

impl ClientContext for Context {
    fn stats(&self, statistics: Statistics) {
        for (name, topic) in &statistics.topics {
            let lag: i64 = topic
                .partitions
                .iter()
                .filter(|(p, _)| **p >= 0)
                .map(|(_, p)| p.consumer_lag.max(0))
                .sum();
            self.metrics
                .consumer_lag
                .with_label_values(&[name])
                .set(lag);
        }
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let revoked = tps(tpl);
        // Commit what is durable before the partitions move, so the next
        // owner repeats as little as possible.
        let mut commit = TopicPartitionList::new();
        {
            let mut pending = self.pending.lock().expect("pending lock");
            let mut assigned = self.assigned.lock().expect("assigned lock");
            for tp in &revoked {
                assigned.remove(tp);
                if let Some(next) = pending.remove(tp) {
                    let _ = commit.add_partition_offset(&tp.0, tp.1, Offset::Offset(next));
                }
            }
        }
        if commit.count() > 0
            && let Err(e) = consumer.commit(&commit, CommitMode::Sync)
        {
            warn!(error = %e, "commit before revoke failed; the next owner repeats those jobs");
        }
        info!(partitions = ?revoked, "partitions revoked");
        self.events
            .lock()
            .expect("events lock")
            .push(Event::Revoke(revoked));
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let assigned = tps(tpl);
                self.assigned
                    .lock()
                    .expect("assigned lock")
                    .extend(assigned.iter().cloned());
                info!(partitions = ?assigned, "partitions assigned");
                self.events
                    .lock()
                    .expect("events lock")
                    .push(Event::Assign(assigned));
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => warn!(error = %e, "rebalance failed"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        let Err(e) = result else { return };
        // Put the offsets back unless a later one is pending or the partition
        // is gone: the next tick tries again.
        let assigned = self.assigned.lock().expect("assigned lock");
        let mut pending = self.pending.lock().expect("pending lock");
        for el in offsets.elements() {
            let tp = (el.topic().to_owned(), el.partition());
            if let Offset::Offset(o) = el.offset()
                && assigned.contains(&tp)
            {
                let entry = pending.entry(tp).or_insert(o);
                *entry = (*entry).max(o);
            }
        }
        warn!(error = %e, "offset commit failed; will retry");
    }
}

/// The consumer in the group, with statistics for the lag metric.
pub(super) fn create(
    config: &DeliveryConfig,
    metrics: Metrics,
) -> KafkaResult<StreamConsumer<Context>> {
    let mut cc = config.kafka.consumer_config(&config.group_id);
    if !config.kafka.client.contains_key("statistics.interval.ms") {
        cc.set(
            "statistics.interval.ms",
            config.stats_interval.as_millis().to_string(),
        );
    }
    // A partition resumed at its head's due time is fetched in the next
    // fetch request, which waits for the one in flight: with librdkafka's
    // 500 ms long poll, a retry was up to half a second late per head, and
    // heads queued behind each other. 50 ms costs an idle worker about 20
    // small fetch requests a second per broker.
    if !config.kafka.client.contains_key("fetch.wait.max.ms") {
        cc.set("fetch.wait.max.ms", "50");
    }
    StreamConsumer::from_config_and_context(
        &cc,
        Context {
            metrics,
            events: Mutex::default(),
            pending: Mutex::default(),
            assigned: Mutex::default(),
        },
    )
}

/// Pause, resume and seek on the real consumer. Errors are logged: the
/// worst case is a partition that is fetched again (and re-checked).
struct KafkaFlow<'a>(&'a StreamConsumer<Context>);

impl KafkaFlow<'_> {
    fn one(topic: &str, partition: i32) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, partition);
        tpl
    }
}

impl Flow for KafkaFlow<'_> {
    fn pause(&self, topic: &str, partition: i32) {
        if let Err(e) = self.0.pause(&Self::one(topic, partition)) {
            warn!(error = %e, %topic, partition, "pause failed");
        }
    }

    fn resume(&self, topic: &str, partition: i32) {
        if let Err(e) = self.0.resume(&Self::one(topic, partition)) {
            warn!(error = %e, %topic, partition, "resume failed");
        }
    }

    fn seek(&self, topic: &str, partition: i32, offset: i64) {
        // A zero timeout makes the seek asynchronous; its version barrier is
        // set at once, so nothing fetched earlier is handed out after it.
        if let Err(e) = self
            .0
            .seek(topic, partition, Offset::Offset(offset), Duration::ZERO)
        {
            warn!(error = %e, %topic, partition, offset, "seek failed");
        }
    }
}

/// Which job a task is.
#[derive(Debug)]
struct JobKey {
    topic: String,
    partition: i32,
    offset: i64,
    generation: u64,
}

/// The loop's state, apart from the consumer (messages borrow it).
struct Core {
    shared: Arc<Shared>,
    parts: Partitions,
    offsets: OffsetTracker,
    jobs: JoinSet<()>,
    running: HashMap<tokio::task::Id, JobKey>,
    resend_topic: String,
}

pub(super) struct Dispatcher {
    consumer: StreamConsumer<Context>,
    core: Core,
    drain_timeout: Duration,
}

impl Dispatcher {
    pub(super) fn new(
        consumer: StreamConsumer<Context>,
        shared: Arc<Shared>,
        config: &DeliveryConfig,
    ) -> Self {
        let resend_topic = shared.topics().resend();
        Self {
            consumer,
            core: Core {
                shared,
                parts: Partitions::new(config.max_in_flight, config.max_in_flight_per_partition),
                offsets: OffsetTracker::new(),
                jobs: JoinSet::new(),
                running: HashMap::new(),
                resend_topic,
            },
            drain_timeout: config.drain_timeout,
        }
    }

    pub(super) async fn run(
        self,
        shutdown: CancellationToken,
        health: Arc<herald_ops::Health>,
    ) -> Result<()> {
        let Self {
            consumer,
            mut core,
            drain_timeout,
        } = self;
        let mut commit_tick = tokio::time::interval(COMMIT_INTERVAL);
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        health.set_ready(true);
        loop {
            core.apply_events(&consumer);
            core.gauges();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(done) = core.jobs.join_next_with_id() => core.finished(&consumer, done),
                Some(tp) = poll_fn(|cx| core.parts.poll_due(cx)) => {
                    core.apply_events(&consumer);
                    core.parts.due(&KafkaFlow(&consumer), &tp);
                }
                _ = commit_tick.tick() => core.commit(&consumer, CommitMode::Async),
                msg = consumer.recv() => match msg {
                    Ok(m) => core.on_message(&consumer, &m),
                    Err(e) => warn!(error = %e, "consumer error"),
                },
            }
        }

        // Graceful shutdown: take no new messages, let in-flight attempts
        // finish and reach their next hop, commit, then leave the group.
        health.set_ready(false);
        info!(
            in_flight = core.jobs.len(),
            "shutting down: draining in-flight deliveries"
        );
        let deadline = tokio::time::Instant::now() + drain_timeout;
        while !core.jobs.is_empty() {
            tokio::select! {
                biased;
                Some(done) = core.jobs.join_next_with_id() => core.finished(&consumer, done),
                _ = tokio::time::sleep_until(deadline) => {
                    warn!(abandoned = core.jobs.len(), "drain timeout: abandoning in-flight jobs uncommitted; they will be redone");
                    core.jobs.abort_all();
                    while core.jobs.join_next().await.is_some() {}
                    break;
                }
            }
        }
        core.commit(&consumer, CommitMode::Sync);
        core.gauges();
        // Closing the consumer leaves the group (librdkafka blocks for it).
        let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
        Ok(())
    }
}

impl Core {
    fn gauges(&self) {
        let m = &self.shared.metrics();
        m.in_flight.set(self.parts.total_in_flight() as i64);
        m.waiting_partitions.set(self.parts.waiting() as i64);
    }

    fn apply_events(&mut self, consumer: &StreamConsumer<Context>) {
        let events = std::mem::take(&mut *consumer.context().events.lock().expect("events lock"));
        let flow = KafkaFlow(consumer);
        for event in events {
            match event {
                Event::Assign(tps) => {
                    for (topic, partition) in tps {
                        self.parts.assign(&flow, &topic, partition);
                    }
                }
                Event::Revoke(tps) => {
                    for (topic, partition) in tps {
                        self.parts.revoke(&topic, partition);
                        self.offsets.revoke(&topic, partition);
                    }
                }
            }
        }
    }

    fn on_message(&mut self, consumer: &StreamConsumer<Context>, m: &BorrowedMessage<'_>) {
        self.apply_events(consumer);
        let flow = KafkaFlow(consumer);
        let (topic, partition, offset) = (m.topic(), m.partition(), m.offset());
        let generation = match self.parts.admit(&flow, topic, partition) {
            Admit::Stale => return,
            Admit::Start { generation } => generation,
        };
        let now = Utc::now();
        let latest_due = now + self.shared.longest_wait;
        // A retry-tier message is judged by its headers first: a head that
        // waits or hops costs no decode.
        let step = self.tier_of(topic).map(|tier| {
            let due = headers::get(m.headers(), headers::DUE_AT)
                .and_then(|v| v.parse::<i64>().ok())
                .and_then(DateTime::from_timestamp_millis);
            let produced = m
                .timestamp()
                .to_millis()
                .and_then(DateTime::from_timestamp_millis)
                .unwrap_or(now);
            (
                tier.name.clone(),
                self.shared
                    .tiers()
                    .step(&tier, produced, due, now, latest_due),
            )
        });
        let (mut work, due) = match step {
            Some((_, TierStep::Wait { until })) => {
                return self.wait(&flow, m, until - now);
            }
            Some((_, TierStep::Refuse(reason))) => (self.invalid(m, reason), now),
            Some((from_tier, TierStep::Hop { tier })) => {
                let work = Work::Hop {
                    from_tier,
                    topic: self.shared.topics().retry(&tier.name),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers: hopped(m),
                };
                (work, now)
            }
            Some((_, TierStep::Run | TierStep::Hold { .. })) | None => self.decode(m, now),
        };
        // Not due yet (a hold, or a job whose own due time is later): held
        // in memory when within the smallest tier's delay, else waited on.
        let hold =
            chrono::Duration::from_std(self.shared.tiers().smallest().delay).unwrap_or_default();
        let mut held_until = None;
        if matches!(work, Work::Deliver { .. }) && due > now {
            if due > latest_due {
                work = self.invalid(
                    m,
                    format!(
                        "due at {} is later than any retry or cool-down allows",
                        due.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                    ),
                );
            } else if due - now <= hold {
                held_until = Some(due);
            } else {
                return self.wait(&flow, m, due - hold - now);
            }
        }
        if let Work::Deliver { maybe_done, .. } = &mut work {
            *maybe_done = self
                .parts
                .maybe_redone(topic, partition, m.timestamp().to_millis())
                || headers::get(m.headers(), headers::HOPS).is_some();
        }
        self.offsets.start(topic, partition, offset);
        self.parts.started(&flow, topic, partition);
        let job = job::execute(self.shared.clone(), work);
        let handle = match held_until {
            // In flight meanwhile: counted against the bounds, uncommitted.
            Some(at) => {
                let scheduled = Scheduled::new(&self.shared.metrics().scheduled);
                self.jobs.spawn(async move {
                    until(at).await;
                    drop(scheduled);
                    job.await
                })
            }
            None => self.jobs.spawn(job),
        };
        self.running.insert(
            handle.id(),
            JobKey {
                topic: topic.to_owned(),
                partition,
                offset,
                generation,
            },
        );
    }

    /// Pause the message's partition for `delay`, then read it again.
    fn wait(&mut self, flow: &KafkaFlow<'_>, m: &BorrowedMessage<'_>, delay: chrono::Duration) {
        // A millisecond past: the wall clock is checked again when the
        // message comes back.
        let delay = delay.to_std().unwrap_or_default() + Duration::from_millis(1);
        let (topic, partition, offset) = (m.topic(), m.partition(), m.offset());
        debug!(%topic, partition, offset, ?delay, "head not due; partition paused");
        self.parts.wait(flow, topic, partition, offset, delay);
    }

    /// The retry tier a topic is, if it is one.
    fn tier_of(&self, topic: &str) -> Option<Tier> {
        let name = self.shared.topics().tier_of(topic)?;
        self.shared.tiers().by_name(name).cloned()
    }

    fn invalid(&self, m: &BorrowedMessage<'_>, error: String) -> Work {
        Work::Invalid {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().unwrap_or_default().to_vec(),
            headers: m.headers().map(BorrowedHeaders::detach),
            error,
        }
    }

    /// The message's work and the earliest time it may start. A job is due
    /// at the later of its own `due_at` and the `herald-due-at` header.
    fn decode(&self, m: &BorrowedMessage<'_>, now: DateTime<Utc>) -> (Work, DateTime<Utc>) {
        let payload = m.payload().unwrap_or_default();
        let invalid = |error: String| self.invalid(m, error);
        if m.topic() == self.resend_topic {
            return match serde_json::from_slice::<ResendCommand>(payload) {
                Ok(cmd) => (Work::Resend(cmd), now),
                Err(e) => (invalid(format!("invalid resend command: {e}")), now),
            };
        }
        match serde_json::from_slice::<DeliveryJob>(payload) {
            Ok(job) => {
                let header_due = headers::get(m.headers(), headers::DUE_AT)
                    .and_then(|v| v.parse::<i64>().ok())
                    .and_then(DateTime::from_timestamp_millis);
                let due = header_due.map_or(job.due_at, |h| h.max(job.due_at));
                let work = Work::Deliver {
                    job: Box::new(job),
                    // Decided when it starts (`Partitions::maybe_redone`).
                    maybe_done: false,
                };
                (work, due)
            }
            Err(e) => (invalid(format!("invalid delivery job: {e}")), now),
        }
    }

    fn finished(
        &mut self,
        consumer: &StreamConsumer<Context>,
        done: Result<(tokio::task::Id, ()), JoinError>,
    ) {
        let (id, failure) = match done {
            Ok((id, ())) => (id, None),
            Err(e) => (e.id(), Some(e)),
        };
        let Some(key) = self.running.remove(&id) else {
            return;
        };
        self.parts.finished(
            &KafkaFlow(consumer),
            &key.topic,
            key.partition,
            key.generation,
        );
        if let Some(e) = failure {
            // Never mark it finished: its partition stops committing here and
            // the job is redone after a restart or rebalance.
            if !e.is_cancelled() {
                error!(topic = %key.topic, partition = key.partition, offset = key.offset, error = %e, "delivery job panicked; its partition's commits stop until it is reassigned");
            }
            return;
        }
        if self.parts.generation(&key.topic, key.partition) != Some(key.generation) {
            return;
        }
        if let Some(next) = self.offsets.finish(&key.topic, key.partition, key.offset) {
            consumer
                .context()
                .pending
                .lock()
                .expect("pending lock")
                .insert((key.topic, key.partition), next);
        }
    }

    fn commit(&mut self, consumer: &StreamConsumer<Context>, mode: CommitMode) {
        let pending =
            std::mem::take(&mut *consumer.context().pending.lock().expect("pending lock"));
        if pending.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), next) in &pending {
            let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*next));
        }
        if let Err(e) = consumer.commit(&tpl, mode) {
            warn!(error = %e, "offset commit failed; will retry");
            let mut p = consumer.context().pending.lock().expect("pending lock");
            for (tp, next) in pending {
                let entry = p.entry(tp).or_insert(next);
                *entry = (*entry).max(next);
            }
        }
    }
}
