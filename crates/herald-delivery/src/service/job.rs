//! One message's work, from the attempt to a durable next hop. A job returns
//! only when its outcome is durable: the attempt recorded, and the retry or
//! dead-letter message acknowledged by Kafka. Only then may its offset be
//! committed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use herald_core::pipeline::{self, History, SkipReason, Verdict};
use herald_core::text::one_line;
use herald_core::{
    Admission, Attempt, Decision, DeliveryJob, Outcome, ResendCommand, Tiers, Trigger, Webhooks,
};
use herald_kafka::{Topics, headers};
use herald_store::NotificationStore;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::Semaphore;
use tracing::{debug, error, info, warn};

use super::circuit::{self, CircuitBoard};
use super::metrics::{Metrics, status_class};
use crate::{AttemptPlan, AttemptResult, Deliverer, ResendLocks};

/// Longest `herald-last-error` header written; the store keeps the full text.
const MAX_ERROR_HEADER: usize = 1024;

/// What every job needs. Shared by all jobs.
pub(super) struct Shared {
    pub(super) deliverer: Deliverer,
    pub(super) store: Arc<dyn NotificationStore>,
    pub(super) producer: FutureProducer,
    pub(super) topics: Topics,
    pub(super) metrics: Metrics,
    pub(super) circuits: CircuitBoard,
    resend_locks: ResendLocks,
    pub(super) tiers: Tiers,
    /// How far ahead a due time can believably be: the longest wait any
    /// definition may set ([`herald_core::retry::LONGEST_WAIT`]) plus an
    /// hour for clocks, whatever today's definitions say, so shortening a
    /// delay never dead-letters the retries already scheduled with the old
    /// one. A message due later is dead-lettered.
    pub(super) longest_wait: chrono::Duration,
    /// One semaphore per defined webhook: its concurrent requests.
    webhook_slots: HashMap<String, Arc<Semaphore>>,
}

impl Shared {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        deliverer: Deliverer,
        store: Arc<dyn NotificationStore>,
        producer: FutureProducer,
        topics: Topics,
        metrics: Metrics,
        circuits: CircuitBoard,
        tiers: Tiers,
        webhooks: &Webhooks,
        per_webhook: usize,
    ) -> Self {
        let webhook_slots = webhooks
            .iter()
            .map(|w| (w.id.clone(), Arc::new(Semaphore::new(per_webhook))))
            .collect();
        Self {
            deliverer,
            store,
            producer,
            topics,
            metrics,
            circuits,
            resend_locks: ResendLocks::default(),
            tiers,
            longest_wait: chrono::Duration::from_std(herald_core::retry::LONGEST_WAIT)
                .expect("30 days fit")
                + chrono::Duration::hours(1),
            webhook_slots,
        }
    }

    /// The metrics label of a webhook id: ids from messages are untrusted,
    /// only configured ones become label values.
    fn label<'a>(&self, webhook_id: &'a str) -> &'a str {
        if self.webhook_slots.contains_key(webhook_id) {
            webhook_id
        } else {
            "unknown"
        }
    }
}

/// A decoded message.
#[derive(Debug)]
pub(super) enum Work {
    Deliver {
        job: Box<DeliveryJob>,
        /// The partition's previous owner may have done it already: check the
        /// store before sending.
        maybe_done: bool,
    },
    Resend(ResendCommand),
    /// A retry-tier message whose time in its tier is over: republished
    /// unchanged (payload, key and headers) to `topic`.
    Hop {
        from_tier: String,
        topic: String,
        key: Option<Vec<u8>>,
        payload: Vec<u8>,
        headers: OwnedHeaders,
    },
    /// Undecodable: dead-lettered as is, with the reason.
    Invalid {
        topic: String,
        partition: i32,
        offset: i64,
        key: Option<Vec<u8>>,
        payload: Vec<u8>,
        error: String,
    },
}

/// Do the work; returns once its outcome is durable.
pub(super) async fn execute(shared: Arc<Shared>, work: Work) {
    match work {
        Work::Deliver { job, maybe_done } => {
            // A fresh first job is attempt 1 by construction. A retry, or a
            // job that may have been done, reads the attempts on record: it
            // is numbered after all of them (manual re-sends included) and
            // is made only while still owed.
            let number = if maybe_done || job.check_state || job.trigger == Trigger::Retry {
                match still_owed(&shared, &job, maybe_done).await {
                    Some(number) => number,
                    None => return,
                }
            } else {
                job.attempt
            };
            deliver(&shared, &job, number).await
        }
        Work::Resend(cmd) => resend(&shared, &cmd).await,
        Work::Hop {
            from_tier,
            topic,
            key,
            payload,
            headers,
        } => {
            publish(&shared, &topic, key.as_deref(), &payload, headers).await;
            shared
                .metrics
                .tier_hops
                .with_label_values(&[&from_tier])
                .inc();
        }
        Work::Invalid {
            topic,
            partition,
            offset,
            key,
            payload,
            error,
        } => {
            shared.metrics.invalid.with_label_values(&[&topic]).inc();
            warn!(%topic, partition, offset, %error, "undecodable message dead-lettered");
            let hdrs = OwnedHeaders::new()
                .insert(header(headers::ERROR, &error))
                .insert(header(headers::ORIGIN_TOPIC, &topic))
                .insert(header(headers::ORIGIN_PARTITION, &partition.to_string()))
                .insert(header(headers::ORIGIN_OFFSET, &offset.to_string()));
            publish(
                &shared,
                &shared.topics.dead(),
                key.as_deref(),
                &payload,
                hdrs,
            )
            .await;
        }
    }
}

/// The number to make this automatic job's attempt under, or `None` when it
/// is no longer owed ([`pipeline::verdict`] on the attempts on record). A
/// job that is not owed is counted and skipped; a redone one whose next hop
/// may be missing schedules that hop instead of sending again. When the
/// store cannot say, the job runs under its own number (a duplicate, never
/// a loss).
async fn still_owed(shared: &Shared, job: &DeliveryJob, redone: bool) -> Option<u32> {
    let id = job.notification_id;
    let Some(attempts) = retry_store("attempts", shared, || shared.store.attempts(id)).await else {
        return Some(job.attempt);
    };
    let history = History::of(&attempts);
    let label = shared.label(&job.webhook_id);
    let reason = match pipeline::verdict(&history, job.attempt, redone) {
        Verdict::Send => return Some(history.next_number()),
        Verdict::Skip(reason) => reason,
        Verdict::Resume { step, due_at } => {
            let next = DeliveryJob {
                attempt: step,
                trigger: Trigger::Retry,
                due_at,
                first_failure_at: job.first_failure_at.or(history.first_failure_at),
                check_state: true,
                ..job.clone()
            };
            let delay = (due_at - Utc::now()).to_std().unwrap_or_default();
            let tier = shared.tiers.for_delay(delay);
            publish_job(shared, &shared.topics.retry(&tier.name), &next, None).await;
            debug!(webhook = %job.webhook_id, notification = %id, step = job.attempt, next = step, "redone job already attempted: its retry scheduled again");
            SkipReason::AlreadyAttempted
        }
    };
    shared
        .metrics
        .skipped
        .with_label_values(&[label, reason.as_str()])
        .inc();
    debug!(webhook = %job.webhook_id, notification = %id, step = job.attempt, reason = reason.as_str(), "job no longer owed: skipped");
    None
}

/// Attempt a delivery job as attempt `number`, record it and publish its
/// next hop. The job's own `attempt` is its automatic step, which the retry
/// policy counts.
async fn deliver(shared: &Shared, job: &DeliveryJob, number: u32) {
    let plan = AttemptPlan {
        notification_id: job.notification_id,
        webhook_id: &job.webhook_id,
        attempt_no: number,
        step: job.attempt,
        trigger: job.trigger,
        first_failure_at: job.first_failure_at,
        request: &job.request,
    };
    let result = match attempt(shared, &plan, job.due_at, true).await {
        Attempted::Done(result) => result,
        Attempted::Parked { until } => return park(shared, job, until).await,
    };
    record(shared, &result.attempt).await;
    let a = &result.attempt;
    let label = shared.label(&job.webhook_id);
    match &result.decision {
        Decision::Delivered => {
            debug!(webhook = %job.webhook_id, notification = %job.notification_id, attempt = a.attempt_no, "delivered");
        }
        Decision::Retry { due_at, tier, .. } => {
            let next = DeliveryJob {
                attempt: job.attempt + 1,
                trigger: Trigger::Retry,
                due_at: *due_at,
                first_failure_at: Some(job.first_failure_at.unwrap_or(a.started_at)),
                last_error: a.error.clone(),
                // Made right after its predecessor was recorded.
                check_state: false,
                ..job.clone()
            };
            let topic = shared.topics.retry(&tier.name);
            publish_job(shared, &topic, &next, None).await;
            shared
                .metrics
                .retries
                .with_label_values(&[label, &tier.name])
                .inc();
            debug!(webhook = %job.webhook_id, notification = %job.notification_id, attempt = a.attempt_no, tier = %tier.name, error = a.error.as_deref().unwrap_or(""), "attempt failed; retry scheduled");
        }
        Decision::Exhausted { reason } => {
            let dead = DeliveryJob {
                attempt: job.attempt,
                first_failure_at: Some(job.first_failure_at.unwrap_or(a.started_at)),
                last_error: a.error.clone(),
                ..job.clone()
            };
            publish_job(
                shared,
                &shared.topics.dead(),
                &dead,
                Some(&reason.to_string()),
            )
            .await;
            shared.metrics.exhausted.with_label_values(&[label]).inc();
            warn!(webhook = %job.webhook_id, notification = %job.notification_id, attempt = a.attempt_no, %reason, error = a.error.as_deref().unwrap_or(""), "delivery failed: no further automatic attempt");
        }
    }
}

/// Park a job whose webhook's circuit is open: republish it unchanged to
/// the retry tier that fits, due at the end of the cool-down. The attempt
/// number stays; the first failure moves forward by the time parked, so
/// parking does not count against the retry age limit either.
async fn park(shared: &Shared, job: &DeliveryJob, until: DateTime<Utc>) {
    let now = Utc::now();
    let parked_for = (until - now).max(chrono::Duration::zero());
    let next = DeliveryJob {
        due_at: until,
        first_failure_at: job.first_failure_at.map(|f| f + parked_for),
        ..job.clone()
    };
    let tier = shared
        .tiers
        .for_delay(parked_for.to_std().unwrap_or_default());
    publish_job(shared, &shared.topics.retry(&tier.name), &next, None).await;
    shared
        .metrics
        .parked
        .with_label_values(&[shared.label(&job.webhook_id)])
        .inc();
    debug!(webhook = %job.webhook_id, notification = %job.notification_id, attempt = job.attempt, until = %until, tier = %tier.name, "circuit open: job parked");
}

/// A manual re-send of the stored request: one attempt, no next hop.
async fn resend(shared: &Shared, cmd: &ResendCommand) {
    let id = cmd.notification_id;
    // Held until the attempt is recorded: the next re-send of this
    // notification numbers its attempt after this one.
    let _turn = shared.resend_locks.lock(id).await;
    let record = retry_store("load", shared, || shared.store.get(id)).await;
    let Some(Some(record)) = record else {
        shared.metrics.resends.with_label_values(&["unknown"]).inc();
        warn!(notification = %id, requested_by = %cmd.requested_by, "resend of an unknown notification ignored");
        return;
    };
    let Some(request) = record.notification.request() else {
        shared
            .metrics
            .resends
            .with_label_values(&["not_rendered"])
            .inc();
        warn!(notification = %id, requested_by = %cmd.requested_by, "resend of a notification that was never rendered ignored");
        return;
    };
    let attempt_no = History::of(&record.attempts).next_number();
    let plan = AttemptPlan {
        notification_id: id,
        webhook_id: &record.notification.webhook_id,
        attempt_no,
        step: attempt_no,
        trigger: Trigger::Manual,
        first_failure_at: None,
        request,
    };
    // An operator's explicit re-send goes through an open circuit.
    let Attempted::Done(result) = attempt(shared, &plan, Utc::now(), false).await else {
        unreachable!("ungated attempts are never parked");
    };
    record_attempt_and_log_resend(shared, cmd, &result).await;
}

async fn record_attempt_and_log_resend(
    shared: &Shared,
    cmd: &ResendCommand,
    result: &AttemptResult,
) {
    record(shared, &result.attempt).await;
    shared.metrics.resends.with_label_values(&["sent"]).inc();
    let a = &result.attempt;
    info!(
        notification = %cmd.notification_id,
        requested_by = %cmd.requested_by,
        reason = %cmd.reason,
        attempt = a.attempt_no,
        outcome = %a.outcome,
        "manual resend attempted"
    );
}

/// What became of an attempt.
enum Attempted {
    Done(AttemptResult),
    /// Not made: the webhook's circuit is open until then.
    Parked {
        until: DateTime<Utc>,
    },
}

/// One attempt, within the webhook's concurrency limit and, when `gated`,
/// its circuit breaker.
async fn attempt(
    shared: &Shared,
    plan: &AttemptPlan<'_>,
    due_at: DateTime<Utc>,
    gated: bool,
) -> Attempted {
    // An open circuit parks at once, without queueing for a slot.
    if gated && let Some(until) = shared.circuits.open_until(plan.webhook_id) {
        return Attempted::Parked { until };
    }
    // Held only around the request: a slow webhook queues its own jobs here
    // while other webhooks' jobs go straight through.
    let permit = match shared.webhook_slots.get(plan.webhook_id) {
        Some(s) => Some(s.clone().acquire_owned().await.expect("never closed")),
        None => None,
    };
    // Asked after the slot is ours: the circuit may have opened while this
    // job queued for it.
    let admission = if gated {
        shared.circuits.admit(plan.webhook_id, due_at)
    } else {
        Admission::Send
    };
    if let Admission::Park { until } = admission {
        drop(permit);
        publish_circuit_changes(shared).await;
        return Attempted::Parked { until };
    }
    let late = (Utc::now() - due_at).to_std().unwrap_or(Duration::ZERO);
    shared
        .metrics
        .start_delay
        .with_label_values(&[plan.trigger.as_str()])
        .observe(late.as_secs_f64());
    let result = shared.deliverer.attempt(plan).await;
    let a = &result.attempt;
    if gated {
        // Before the slot is released: the next job of this webhook must
        // see the state this result leads to.
        shared.circuits.record(
            plan.webhook_id,
            a.outcome,
            Duration::from_millis(a.duration_ms.into()),
            admission == Admission::Probe,
        );
    }
    drop(permit);
    if gated {
        publish_circuit_changes(shared).await;
    }
    let label = shared.label(plan.webhook_id);
    shared
        .metrics
        .attempts
        .with_label_values(&[label, a.outcome.as_str(), status_class(a.http_status)])
        .inc();
    shared
        .metrics
        .attempt_duration
        .with_label_values(&[label])
        .observe(f64::from(a.duration_ms) / 1000.0);
    if a.outcome == Outcome::Refused {
        debug!(webhook = %plan.webhook_id, notification = %plan.notification_id, error = a.error.as_deref().unwrap_or(""), "attempt refused before sending");
    }
    Attempted::Done(result)
}

/// Log, count and share this worker's circuit state changes.
async fn publish_circuit_changes(shared: &Shared) {
    let changes = shared.circuits.take_changes();
    if changes.is_empty() {
        return;
    }
    let topic = shared.topics.circuits();
    for change in &changes {
        circuit::publish(&shared.producer, &topic, change).await;
    }
}

/// Record an attempt, retrying while the store is unavailable: an attempt
/// that is not on record must not have its offset committed.
async fn record(shared: &Shared, attempt: &Attempt) {
    let done = retry_store("append_attempts", shared, || {
        shared.store.append_attempts(std::slice::from_ref(attempt))
    })
    .await;
    if done.is_none() {
        // Permanent: the notification is unknown to the store (or not
        // rendered). Redoing the job cannot fix it; an operator must look.
        error!(notification = %attempt.notification_id, attempt = attempt.attempt_no, "attempt could not be recorded");
    }
}

/// Run a store operation until it succeeds, or fails because of its input
/// (`None`: repeating it can never succeed). Transient errors are retried,
/// and so are the store's own permanent faults (authorization, a missing
/// table): the job then waits, loudly, and nothing is committed past it
/// until an operator fixes the store, as ingest does.
async fn retry_store<T, F, Fut>(op: &'static str, shared: &Shared, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = herald_store::Result<T>>,
{
    let mut backoff = Duration::from_millis(50);
    loop {
        match f().await {
            Ok(v) => return Some(v),
            Err(e) if e.is_input_fault() => {
                error!(error = %e, operation = op, "store operation refused for this input");
                return None;
            }
            Err(e) => {
                shared.metrics.retried_ops.with_label_values(&[op]).inc();
                if e.is_retriable() {
                    warn!(error = %e, operation = op, "store unavailable; retrying");
                } else {
                    error!(error = %e, operation = op, "store refuses the operation: an operator must act; the job waits and its partition commits nothing past it");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Publish a job with its scheduling headers (and `herald-error` for the
/// dead-letter topic).
async fn publish_job(shared: &Shared, topic: &str, job: &DeliveryJob, reason: Option<&str>) {
    let payload = serde_json::to_vec(job).expect("a delivery job always encodes");
    let mut hdrs = OwnedHeaders::new()
        .insert(header(
            headers::DUE_AT,
            &job.due_at.timestamp_millis().to_string(),
        ))
        .insert(header(headers::ATTEMPT, &job.attempt.to_string()));
    if let Some(first) = job.first_failure_at {
        hdrs = hdrs.insert(header(
            headers::FIRST_FAILURE_AT,
            &first.timestamp_millis().to_string(),
        ));
    }
    if let Some(e) = &job.last_error {
        hdrs = hdrs.insert(header(headers::LAST_ERROR, &one_line(e, MAX_ERROR_HEADER)));
    }
    if let Some(r) = reason {
        hdrs = hdrs.insert(header(headers::ERROR, r));
    }
    publish(shared, topic, Some(job.key().as_bytes()), &payload, hdrs).await;
}

/// Publish and wait for Kafka's acknowledgement, retrying until it comes.
async fn publish(
    shared: &Shared,
    topic: &str,
    key: Option<&[u8]>,
    payload: &[u8],
    headers: OwnedHeaders,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut record = FutureRecord::<[u8], [u8]>::to(topic)
            .payload(payload)
            .headers(headers.clone());
        if let Some(k) = key {
            record = record.key(k);
        }
        match shared.producer.send(record, Duration::from_secs(10)).await {
            Ok(_) => return,
            Err((e, _)) => {
                shared
                    .metrics
                    .retried_ops
                    .with_label_values(&["publish"])
                    .inc();
                warn!(error = %e, %topic, "publish failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}
