//! The delivery pipeline, once for both modes: from a job to its recorded
//! attempt and its next hop.
//!
//! - **number**: a retry, or a job that may have been done already, reads
//!   the attempts on record; it is numbered after all of them and made only
//!   while still owed ([`pipeline::verdict`]). A fresh first job is
//!   attempt 1 by construction.
//! - **gate**: the webhook's circuit breaker, then one of the webhook's
//!   concurrency slots, then the breaker again (it may have opened while
//!   the job queued).
//! - **send** the stored request ([`Deliverer`]) and **record** the attempt,
//!   waiting for the store while it is unavailable.
//! - **decide**: delivered, a retry, or exhausted; an open circuit parks
//!   the job, same attempt, later.
//! - **resend**: an operator's explicit re-send, one attempt of the stored
//!   request, numbered under a per-notification lock.
//!
//! The modes differ only behind [`NextHops`]: where a scheduled job goes
//! (Kafka: a delayed-retry tier topic; standalone: a timer backed by the
//! due time the attempt recorded in SQLite), what exhaustion publishes,
//! and how circuit changes reach other workers. Where jobs come from is
//! the caller's: the Kafka consumer, or standalone's scheduler.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use herald_core::pipeline::{self, History, SkipReason, Verdict};
use herald_core::{
    Admission, Attempt, CircuitChange, Decision, DeliveryJob, Outcome, ResendCommand, Tier, Tiers,
    Trigger, Webhooks,
};
use herald_store::{AttemptOf, NotificationStore};
use tokio::sync::Semaphore;
use tracing::{debug, error, info, warn};

use crate::metrics::status_class;
use crate::{AttemptPlan, AttemptResult, CircuitBoard, Deliverer, Metrics, ResendLocks};

/// Where a mode sends what a job leads to. Each call returns once its
/// effect is durable (or, in standalone, backed by what the store holds).
#[async_trait]
pub trait NextHops: Send + Sync {
    /// Schedule an automatic job for `job.due_at`: a retry, a job parked by
    /// an open circuit, or a chain resumed after a redo. `tier` is the
    /// delayed-retry tier that fits its delay.
    async fn schedule(&self, job: DeliveryJob, tier: &Tier);

    /// The job's automatic retries ran out: the last attempt is recorded
    /// (`failed`); `job` carries its last error.
    async fn exhausted(&self, job: DeliveryJob, reason: &str);

    /// Circuit state changes decided in this process (opened or closed;
    /// half-open is local), already logged and counted.
    async fn share_circuits(&self, changes: Vec<CircuitChange>);

    /// An attempt to a webhook was made and recorded (standalone's live
    /// feed).
    fn attempted(&self, _webhook_id: &str, _result: &AttemptResult) {}
}

/// What the pipeline is made of.
pub struct Parts {
    pub deliverer: Deliverer,
    pub store: Arc<dyn NotificationStore>,
    pub hops: Arc<dyn NextHops>,
    pub metrics: Metrics,
    pub circuits: CircuitBoard,
    pub tiers: Tiers,
    pub webhooks: Arc<Webhooks>,
    /// Requests in flight to one webhook.
    pub per_webhook: usize,
}

/// The delivery pipeline. Shared by every job of a process.
pub struct Pipeline {
    deliverer: Deliverer,
    store: Arc<dyn NotificationStore>,
    hops: Arc<dyn NextHops>,
    metrics: Metrics,
    circuits: CircuitBoard,
    tiers: Tiers,
    resend_locks: ResendLocks,
    /// One semaphore per defined webhook: its concurrent requests.
    webhook_slots: HashMap<String, Arc<Semaphore>>,
}

impl Pipeline {
    pub fn new(parts: Parts) -> Self {
        parts
            .metrics
            .watch_client_certificates(parts.webhooks.clone(), parts.deliverer.secrets());
        let webhook_slots = parts
            .webhooks
            .iter()
            .map(|w| {
                let slots = Arc::new(Semaphore::new(parts.per_webhook.max(1)));
                (w.id.clone(), slots)
            })
            .collect();
        Self {
            deliverer: parts.deliverer,
            store: parts.store,
            hops: parts.hops,
            metrics: parts.metrics,
            circuits: parts.circuits,
            tiers: parts.tiers,
            resend_locks: ResendLocks::default(),
            webhook_slots,
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn circuits(&self) -> &CircuitBoard {
        &self.circuits
    }

    pub fn tiers(&self) -> &Tiers {
        &self.tiers
    }

    /// The metrics label of a webhook id: ids from messages are untrusted,
    /// only configured ones become label values.
    pub fn label<'a>(&self, webhook_id: &'a str) -> &'a str {
        if self.webhook_slots.contains_key(webhook_id) {
            webhook_id
        } else {
            "unknown"
        }
    }

    /// Carry out an automatic job: returns once its outcome is durable (the
    /// attempt recorded and its next hop scheduled), or once it is found no
    /// longer owed. `redone`: the job may have been done by a worker that
    /// died or lost its partition before committing.
    pub async fn deliver(&self, job: &DeliveryJob, redone: bool) {
        // Retries, re-sends in between and redone jobs take the number after
        // those on record, one attempt of a notification at a time until it
        // is recorded.
        let checked = redone || job.check_state || job.trigger != Trigger::Auto;
        let _turn = match checked {
            true => Some(self.resend_locks.lock(job.notification_id).await),
            false => None,
        };
        let number = if checked {
            match self.still_owed(job, redone).await {
                Some(number) => number,
                None => return,
            }
        } else {
            job.attempt
        };
        let plan = AttemptPlan {
            notification_id: job.notification_id,
            webhook_id: &job.webhook_id,
            attempt_no: number,
            step: job.attempt,
            trigger: job.trigger,
            first_failure_at: job.first_failure_at,
            request: &job.request,
        };
        let result = match self.attempt(&plan, job.due_at, true).await {
            Attempted::Done(result) => result,
            Attempted::Parked { until } => return self.park(job, until).await,
        };
        let of = AttemptOf {
            webhook_id: &job.webhook_id,
            created_at: job.created_at,
        };
        self.record(&result.attempt, of, None).await;
        self.hops.attempted(&job.webhook_id, &result);
        let a = &result.attempt;
        let label = self.label(&job.webhook_id);
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
                self.hops.schedule(next, tier).await;
                self.metrics
                    .retries
                    .with_label_values(&[label, &tier.name])
                    .inc();
                debug!(webhook = %job.webhook_id, notification = %job.notification_id, attempt = a.attempt_no, tier = %tier.name, error = a.error.as_deref().unwrap_or(""), "attempt failed; retry scheduled");
            }
            Decision::Exhausted { reason } => {
                let dead = DeliveryJob {
                    first_failure_at: Some(job.first_failure_at.unwrap_or(a.started_at)),
                    last_error: a.error.clone(),
                    ..job.clone()
                };
                self.hops.exhausted(dead, &reason.to_string()).await;
                self.metrics.exhausted.with_label_values(&[label]).inc();
                warn!(webhook = %job.webhook_id, notification = %job.notification_id, attempt = a.attempt_no, %reason, error = a.error.as_deref().unwrap_or(""), "delivery failed: no further automatic attempt");
            }
        }
    }

    /// The number to make this automatic job's attempt under, or `None`
    /// when it is no longer owed ([`pipeline::verdict`] on the attempts on
    /// record). A job that is not owed is counted and skipped; a redone one
    /// whose next hop may be missing schedules that hop instead of sending
    /// again. When the store refuses to say for this input, the job runs
    /// under its own number (a duplicate, never a loss).
    async fn still_owed(&self, job: &DeliveryJob, redone: bool) -> Option<u32> {
        let id = job.notification_id;
        let Some(attempts) = self
            .retry_store("attempts", || self.store.attempts(id))
            .await
        else {
            return Some(job.attempt);
        };
        let history = History::of(&attempts);
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
                let tier = self.tier_until(due_at).clone();
                self.hops.schedule(next, &tier).await;
                debug!(webhook = %job.webhook_id, notification = %id, step = job.attempt, next = step, "redone job already attempted: its retry scheduled again");
                SkipReason::AlreadyAttempted
            }
        };
        self.metrics
            .skipped
            .with_label_values(&[self.label(&job.webhook_id), reason.as_str()])
            .inc();
        debug!(webhook = %job.webhook_id, notification = %id, step = job.attempt, reason = reason.as_str(), "job no longer owed: skipped");
        None
    }

    /// The tier that fits a wait until `at`.
    fn tier_until(&self, at: DateTime<Utc>) -> &Tier {
        self.tiers
            .for_delay((at - Utc::now()).to_std().unwrap_or_default())
    }

    /// Park a job whose webhook's circuit is open: the same job, due at the
    /// end of the cool-down. The attempt number stays; the first failure
    /// moves forward by the time parked, so parking does not count against
    /// the retry age limit either.
    async fn park(&self, job: &DeliveryJob, until: DateTime<Utc>) {
        let parked_for = (until - Utc::now()).max(chrono::Duration::zero());
        let next = DeliveryJob {
            due_at: until,
            first_failure_at: job.first_failure_at.map(|f| f + parked_for),
            ..job.clone()
        };
        let tier = self.tier_until(until).clone();
        self.hops.schedule(next, &tier).await;
        self.metrics
            .parked
            .with_label_values(&[self.label(&job.webhook_id)])
            .inc();
        debug!(webhook = %job.webhook_id, notification = %job.notification_id, attempt = job.attempt, until = %until, tier = %tier.name, "circuit open: job parked");
    }

    /// A manual re-send of the stored request: one attempt, no next hop.
    /// `request`: the durable re-send request it carries out, closed in the
    /// same write as its attempt (standalone; Kafka mode's is the resend
    /// message, committed after this returns).
    pub async fn resend(&self, cmd: &ResendCommand, request: Option<i64>) {
        let id = cmd.notification_id;
        // Held until the attempt is recorded: the next attempt of this
        // notification is numbered after this one.
        let _turn = self.resend_locks.lock(id).await;
        let record = self.retry_store("load", || self.store.get(id)).await;
        let Some(Some(record)) = record else {
            self.metrics.resends.with_label_values(&["unknown"]).inc();
            warn!(notification = %id, requested_by = %cmd.requested_by, "resend of an unknown notification ignored");
            return;
        };
        let Some(stored) = record.notification.request() else {
            self.metrics
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
            request: stored,
        };
        // An operator's explicit re-send goes through an open circuit.
        let Attempted::Done(result) = self.attempt(&plan, Utc::now(), false).await else {
            unreachable!("ungated attempts are never parked");
        };
        let of = AttemptOf::notification(&record.notification);
        self.record(&result.attempt, of, request).await;
        self.hops.attempted(plan.webhook_id, &result);
        self.metrics.resends.with_label_values(&["sent"]).inc();
        let a = &result.attempt;
        info!(
            notification = %id,
            requested_by = %cmd.requested_by,
            reason = %cmd.reason,
            attempt = a.attempt_no,
            outcome = %a.outcome,
            "manual resend attempted"
        );
    }

    /// One attempt, within the webhook's concurrency limit and, when
    /// `gated`, its circuit breaker.
    async fn attempt(
        &self,
        plan: &AttemptPlan<'_>,
        due_at: DateTime<Utc>,
        gated: bool,
    ) -> Attempted {
        // An open circuit parks at once, without queueing for a slot.
        if gated && let Some(until) = self.circuits.open_until(plan.webhook_id) {
            return Attempted::Parked { until };
        }
        // Held only around the request: a slow webhook queues its own jobs
        // here while other webhooks' jobs go straight through.
        let permit = match self.webhook_slots.get(plan.webhook_id) {
            Some(s) => Some(s.clone().acquire_owned().await.expect("never closed")),
            None => None,
        };
        // Asked after the slot is ours: the circuit may have opened while
        // this job queued for it.
        let admission = if gated {
            self.circuits.admit(plan.webhook_id, due_at)
        } else {
            Admission::Send
        };
        if let Admission::Park { until } = admission {
            drop(permit);
            self.share_circuit_changes().await;
            return Attempted::Parked { until };
        }
        let late = (Utc::now() - due_at).to_std().unwrap_or(Duration::ZERO);
        self.metrics
            .start_delay
            .with_label_values(&[plan.trigger.as_str()])
            .observe(late.as_secs_f64());
        let result = self.deliverer.attempt(plan).await;
        let a = &result.attempt;
        if gated {
            // Before the slot is released: the next job of this webhook
            // must see the state this result leads to.
            self.circuits.record(
                plan.webhook_id,
                a.outcome,
                Duration::from_millis(a.duration_ms.into()),
                admission == Admission::Probe,
            );
        }
        drop(permit);
        if gated {
            self.share_circuit_changes().await;
        }
        let label = self.label(plan.webhook_id);
        self.metrics
            .attempts
            .with_label_values(&[label, a.outcome.as_str(), status_class(a.http_status)])
            .inc();
        self.metrics
            .attempt_duration
            .with_label_values(&[label])
            .observe(f64::from(a.duration_ms) / 1000.0);
        if a.outcome == Outcome::Refused {
            debug!(webhook = %plan.webhook_id, notification = %plan.notification_id, error = a.error.as_deref().unwrap_or(""), "attempt refused before sending");
        }
        Attempted::Done(result)
    }

    /// Log, count and share this process's circuit state changes.
    async fn share_circuit_changes(&self) {
        let changes = self.circuits.take_changes();
        if !changes.is_empty() {
            self.hops.share_circuits(changes).await;
        }
    }

    /// Record an attempt (and close the re-send request it carried out),
    /// waiting while the store is unavailable: an attempt that is not on
    /// record would be made again, and nothing past it may be committed.
    async fn record(&self, attempt: &Attempt, of: AttemptOf<'_>, request: Option<i64>) {
        let done = self
            .retry_store("append_attempts", || {
                self.store.record_attempt(attempt, of, request)
            })
            .await;
        if done.is_none() {
            // The notification is unknown to the store (or not rendered).
            // Doing the job again cannot fix it; an operator must look.
            error!(notification = %attempt.notification_id, attempt = attempt.attempt_no, "attempt could not be recorded");
        }
    }

    /// Run a store operation until it succeeds, or fails because of its
    /// input (`None`: repeating it can never succeed). Transient errors are
    /// retried, and so are the store's own permanent faults (authorization,
    /// a missing table, a read-only disk): the job then waits, loudly, and
    /// nothing is committed past it until an operator fixes the store, as
    /// ingest does.
    async fn retry_store<T, F, Fut>(&self, op: &'static str, mut f: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = herald_store::Result<T>>,
    {
        let mut backoff =
            herald_ops::Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        loop {
            match f().await {
                Ok(v) => return Some(v),
                Err(e) if e.is_input_fault() => {
                    error!(error = %e, operation = op, "store operation refused for this input");
                    return None;
                }
                Err(e) => {
                    self.metrics.retried_ops.with_label_values(&[op]).inc();
                    if e.is_retriable() {
                        warn!(error = %e, operation = op, "store unavailable; retrying");
                    } else {
                        error!(error = %e, operation = op, "store refuses the operation: an operator must act; the job waits and nothing is committed past it");
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }
}

/// What became of an attempt.
enum Attempted {
    Done(AttemptResult),
    /// Not made: the webhook's circuit is open until then.
    Parked {
        until: DateTime<Utc>,
    },
}
