//! The standalone pipeline: accept events (durably), render and store their
//! notifications, and deliver them with delayed retries as timers in memory
//! backed by due times in SQLite. A crash loses nothing: on start, every
//! stored notification without an outcome is scheduled again.
//!
//! Each webhook has a circuit breaker ([`Circuits`]): while it is open, an
//! attempt that comes due is not made; its due time moves to the end of the
//! cool-down, with its attempt number unchanged. Breaker state lives in
//! memory: after a restart every circuit starts closed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use herald_core::circuit::CircuitView;
use herald_core::pipeline::{self, History, Verdict};
use herald_core::{
    Accepted, Admission, CircuitChange, CircuitState, Circuits, CloudEvent, Decision, Notification,
    NotificationId, Status, Trigger, Webhooks,
};
use herald_delivery::{AttemptPlan, AttemptResult, Deliverer, ResendLocks};
use herald_store::sqlite::SqliteStore;
use herald_store::{NotificationStore, StoreError};
use tokio::sync::{Semaphore, broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::time::DelayQueue;
use tracing::{debug, error, info, warn};

use super::metrics::Metrics;

/// One attempt waiting for its due time.
#[derive(Debug, Clone)]
struct Work {
    notification: Arc<Notification>,
    /// For automatic work its step (1 for the first attempt); the recorded
    /// number comes from the attempts on record when it runs.
    attempt_no: u32,
    trigger: Trigger,
    first_failure_at: Option<DateTime<Utc>>,
    due_at: DateTime<Utc>,
    /// Read the state before sending; send only if still owed
    /// ([`pipeline::verdict`]).
    check_state: bool,
    /// The durable re-send request a manual attempt carries out.
    resend_request: Option<i64>,
}

/// One notification of an accepted batch, as the API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedNotification {
    pub id: NotificationId,
    pub webhook_id: String,
    /// The initial status of a new notification, the stored one of a known.
    pub status: Status,
    /// Stored before (the event was submitted earlier).
    pub known: bool,
}

/// Shared handle on the running pipeline.
#[derive(Clone)]
pub struct Engine {
    store: Arc<SqliteStore>,
    webhooks: Arc<Webhooks>,
    schedule: mpsc::UnboundedSender<Work>,
    attempts: broadcast::Sender<(Arc<Notification>, AttemptResult)>,
    circuits: Arc<Mutex<Circuits>>,
    resend_locks: Arc<ResendLocks>,
    pub(crate) metrics: Metrics,
}

/// Why an event batch was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("event {index}: {source}")]
    Invalid {
        index: usize,
        source: herald_core::EventError,
    },
    #[error("store unavailable: {0}")]
    Store(#[from] StoreError),
}

impl Engine {
    /// Start the scheduler and its workers. They stop when `shutdown` fires,
    /// after in-flight attempts are recorded.
    pub async fn start(
        store: Arc<SqliteStore>,
        deliverer: Deliverer,
        webhooks: Arc<Webhooks>,
        concurrency: usize,
        metrics: Metrics,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<Self, StoreError> {
        let (schedule, rx) = mpsc::unbounded_channel();
        let (attempts, _) = broadcast::channel(1024);
        let circuits = Circuits::for_webhooks("standalone", &webhooks, Utc::now());
        for v in circuits.views() {
            metrics
                .circuit_state
                .with_label_values(&[&v.webhook_id])
                .set(v.state.gauge());
        }
        let engine = Self {
            store,
            webhooks,
            schedule,
            attempts,
            circuits: Arc::new(Mutex::new(circuits)),
            resend_locks: Arc::default(),
            metrics,
        };
        let runner = engine.clone();
        tracker.spawn(runner.schedule_loop(
            rx,
            deliverer,
            concurrency,
            shutdown.clone(),
            tracker.clone(),
        ));
        engine.recover().await?;
        Ok(engine)
    }

    pub fn store(&self) -> &Arc<SqliteStore> {
        &self.store
    }

    pub fn webhooks(&self) -> &Webhooks {
        &self.webhooks
    }

    /// Every webhook's circuit, by webhook id.
    pub fn circuits(&self) -> Vec<CircuitView> {
        self.circuits.lock().expect("circuits lock").views()
    }

    /// Force a webhook's circuit closed. `None` for an unknown webhook.
    pub fn force_close_circuit(&self, webhook_id: &str, by: &str) -> Option<CircuitChange> {
        let change = self.circuits.lock().expect("circuits lock").force_close(
            webhook_id,
            Utc::now(),
            &format!("operator:{by}"),
        )?;
        self.circuit_changes();
        Some(change)
    }

    /// Log and count the circuit state changes made since the last call.
    fn circuit_changes(&self) {
        let changes = self.circuits.lock().expect("circuits lock").take_changes();
        for c in changes {
            self.metrics
                .circuit_state
                .with_label_values(&[&c.webhook_id])
                .set(c.state.gauge());
            self.metrics
                .circuit_changes
                .with_label_values(&[&c.webhook_id, c.state.as_str()])
                .inc();
            let until = c.until.map(|u| u.to_rfc3339()).unwrap_or_default();
            match c.state {
                CircuitState::Open => {
                    warn!(webhook = %c.webhook_id, %until, reason = %c.reason, "circuit opened: deliveries to this webhook are parked")
                }
                CircuitState::HalfOpen => {
                    info!(webhook = %c.webhook_id, reason = %c.reason, "circuit half-open: probing")
                }
                CircuitState::Closed => {
                    info!(webhook = %c.webhook_id, changed_by = %c.changed_by, reason = %c.reason, "circuit closed: deliveries resume")
                }
            }
        }
    }

    /// A feed of every attempt made, for the demo's live view.
    pub fn subscribe(&self) -> broadcast::Receiver<(Arc<Notification>, AttemptResult)> {
        self.attempts.subscribe()
    }

    /// Decode, render and durably store a batch of events. Returns every
    /// notification of the batch once committed; nothing of an invalid
    /// batch is stored. A re-submitted event finds its notifications stored:
    /// the stored records win and nothing new is scheduled for them, unless
    /// one was never attempted ([`Accepted::owed`]).
    pub async fn accept(
        &self,
        events: Vec<serde_json::Value>,
    ) -> Result<Vec<AcceptedNotification>, AcceptError> {
        let now = Utc::now();
        let mut notifications = Vec::new();
        for (index, value) in events.into_iter().enumerate() {
            let event = CloudEvent::from_value(value)
                .map_err(|source| AcceptError::Invalid { index, source })?;
            let created = self.webhooks.notifications(&event, now);
            if created.is_empty() {
                self.metrics.events.with_label_values(&["unmatched"]).inc();
            } else {
                self.metrics.events.with_label_values(&["matched"]).inc();
            }
            notifications.extend(created);
        }
        let found = self.store.append_notifications(&notifications).await?;
        let mut out = Vec::with_capacity(notifications.len());
        for (n, accepted) in notifications.iter().zip(&found) {
            let known = matches!(accepted, Accepted::Existing { .. });
            let status = accepted.status(n);
            let label = if known { "known" } else { status.as_str() };
            self.metrics
                .notifications
                .with_label_values(&[&n.webhook_id, label])
                .inc();
            // A known notification is never owed a job here: this process
            // queued one when it first stored it, or recovered it at start
            // (`recover` schedules every unattempted notification), so a
            // second job could only race the first. (Kafka-mode ingest
            // cannot know, and sends a job that checks the store.)
            if let Some(owed) = accepted.owed(n).filter(|_| !known) {
                let work = Work {
                    notification: Arc::new(owed.notification.clone()),
                    attempt_no: 1,
                    trigger: Trigger::Auto,
                    first_failure_at: None,
                    due_at: now,
                    check_state: owed.check_state,
                    resend_request: None,
                };
                self.enqueue(work);
            } else if status == Status::RenderFailed && !known {
                warn!(webhook = %n.webhook_id, notification = %n.id, "template failed to render: recorded as render_failed");
            }
            out.push(AcceptedNotification {
                id: n.id,
                webhook_id: n.webhook_id.clone(),
                status,
                known,
            });
        }
        Ok(out)
    }

    /// Queue a manual re-send of the stored request: one attempt, now.
    /// Returns `Ok(false)` when there is no such notification or it has no
    /// request (render failed). The request is durable when this returns
    /// `Ok(true)`: a crash before its attempt is recorded runs it again
    /// after the restart.
    pub async fn resend(&self, id: NotificationId) -> Result<bool, StoreError> {
        let Some(record) = self.store.get(id).await? else {
            return Ok(false);
        };
        if record.notification.request().is_none() {
            return Ok(false);
        }
        let request = self.store.queue_resend(id).await?;
        self.enqueue(Self::resend_work(record.notification, request));
        Ok(true)
    }

    /// The work of a queued re-send; numbered when it runs (see `deliver`),
    /// since re-sends queued together would all read the same count here.
    fn resend_work(notification: Notification, request: i64) -> Work {
        Work {
            notification: Arc::new(notification),
            attempt_no: 0,
            trigger: Trigger::Manual,
            first_failure_at: None,
            due_at: Utc::now(),
            check_state: false,
            resend_request: Some(request),
        }
    }

    fn enqueue(&self, work: Work) {
        // The receiver only goes away at shutdown; what is not sent then is
        // still pending in the store and is scheduled again on the next start.
        let _ = self.schedule.send(work);
    }

    /// Schedule everything the store says is still owed: notifications never
    /// attempted, and retries with their due times.
    async fn recover(&self) -> Result<(), StoreError> {
        let now = Utc::now();
        let unattempted = self.store.list_unattempted(now, u32::MAX).await?;
        let due = self
            .store
            .list_due(DateTime::<Utc>::MAX_UTC, u32::MAX)
            .await?;
        if !unattempted.is_empty() || !due.is_empty() {
            info!(
                unattempted = unattempted.len(),
                retrying = due.len(),
                "resuming deliveries stored before the restart"
            );
        }
        for n in unattempted {
            self.enqueue(Work {
                notification: Arc::new(n),
                attempt_no: 1,
                trigger: Trigger::Auto,
                first_failure_at: None,
                due_at: now,
                // A failed re-send may have been made meanwhile: number it
                // after the attempts on record.
                check_state: true,
                resend_request: None,
            });
        }
        for (n, state) in due {
            // The next step and where the age limit counts from, from the
            // attempts on record (manual re-sends are no steps).
            let history = History::of(&self.store.attempts(n.id).await?);
            let at = state.next_attempt_at.unwrap_or(now);
            self.enqueue(Work {
                notification: Arc::new(n),
                attempt_no: history.automatic + 1,
                trigger: Trigger::Retry,
                first_failure_at: history.first_failure_at,
                due_at: at,
                check_state: false,
                resend_request: None,
            });
        }
        for (request, id) in self.store.pending_resends().await? {
            match self.store.get(id).await? {
                Some(r) if r.notification.request().is_some() => {
                    info!(notification = %id, "re-send accepted before the restart: sending it");
                    self.enqueue(Self::resend_work(r.notification, request));
                }
                _ => {
                    warn!(notification = %id, request, "queued re-send of a notification that cannot be sent: left as is")
                }
            }
        }
        Ok(())
    }

    async fn schedule_loop(
        self,
        mut rx: mpsc::UnboundedReceiver<Work>,
        deliverer: Deliverer,
        concurrency: usize,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) {
        let mut timers: DelayQueue<Work> = DelayQueue::new();
        let permits = Arc::new(Semaphore::new(concurrency));
        loop {
            let work = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(work) = rx.recv() => {
                    let wait = (work.due_at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                    if !wait.is_zero() {
                        self.metrics.scheduled.inc();
                        timers.insert(work, wait);
                        continue;
                    }
                    work
                }
                Some(expired) = std::future::poll_fn(|cx| timers.poll_expired(cx)) => {
                    self.metrics.scheduled.dec();
                    expired.into_inner()
                }
            };
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = permits.clone().acquire_owned() => p.expect("semaphore never closed"),
            };
            let (engine, deliverer) = (self.clone(), deliverer.clone());
            tracker.spawn(async move {
                engine.deliver(&deliverer, work).await;
                drop(permit);
            });
        }
        debug!(
            pending_timers = timers.len(),
            "scheduler stopped; pending retries stay due in the store"
        );
    }

    async fn deliver(&self, deliverer: &Deliverer, work: Work) {
        let n = &work.notification;
        let Some(request) = n.request() else { return };
        // Retries, re-sends and work for a known notification are numbered
        // after the attempts on record, one attempt of a notification at a
        // time until it is recorded; automatic ones only while still owed.
        // A fresh first attempt is number 1 by construction.
        let (_turn, attempt_no) = if work.trigger != Trigger::Auto || work.check_state {
            let turn = self.resend_locks.lock(n.id).await;
            match self.number(&work).await {
                Some(number) => (Some(turn), number),
                None => return,
            }
        } else {
            (None, work.attempt_no)
        };
        // A manual re-send is an operator's explicit request: it goes
        // through an open circuit and says nothing about it.
        let gated = work.trigger != Trigger::Manual;
        let admission = if gated {
            let a = self.circuits.lock().expect("circuits lock").admit(
                &n.webhook_id,
                Utc::now(),
                work.due_at,
            );
            self.circuit_changes();
            a
        } else {
            Admission::Send
        };
        if let Admission::Park { until } = admission {
            // Same attempt, later; the first failure moves forward by the
            // time parked so parking does not count against the age limit.
            let parked_for = (until - Utc::now()).max(chrono::Duration::zero());
            self.metrics
                .parked
                .with_label_values(&[&n.webhook_id])
                .inc();
            debug!(webhook = %n.webhook_id, notification = %n.id, attempt = work.attempt_no, %until, "circuit open: attempt parked");
            self.enqueue(Work {
                first_failure_at: work.first_failure_at.map(|f| f + parked_for),
                due_at: until,
                ..work
            });
            return;
        }
        let plan = AttemptPlan {
            notification_id: n.id,
            webhook_id: &n.webhook_id,
            attempt_no,
            step: work.attempt_no,
            trigger: work.trigger,
            first_failure_at: work.first_failure_at,
            request,
        };
        let result = deliverer.attempt(&plan).await;
        let a = &result.attempt;
        if gated {
            self.circuits.lock().expect("circuits lock").record(
                &n.webhook_id,
                Utc::now(),
                a.outcome,
                Duration::from_millis(a.duration_ms.into()),
                admission == Admission::Probe,
            );
            self.circuit_changes();
        }
        self.record(&result, work.resend_request).await;
        let a = &result.attempt;
        self.metrics
            .attempts
            .with_label_values(&[&n.webhook_id, a.outcome.as_str()])
            .inc();
        self.metrics
            .latency
            .with_label_values(&[&n.webhook_id])
            .observe(f64::from(a.duration_ms) / 1000.0);
        match &result.decision {
            Decision::Delivered => {
                debug!(webhook = %n.webhook_id, notification = %n.id, attempt = a.attempt_no, "delivered")
            }
            Decision::Retry { due_at, tier, .. } => {
                self.metrics
                    .retries
                    .with_label_values(&[&n.webhook_id, &tier.name])
                    .inc();
                debug!(webhook = %n.webhook_id, notification = %n.id, attempt = a.attempt_no, error = a.error.as_deref().unwrap_or(""), "attempt failed; retry scheduled");
                let first = work.first_failure_at.unwrap_or(a.started_at);
                self.enqueue(Work {
                    notification: work.notification.clone(),
                    attempt_no: work.attempt_no + 1,
                    trigger: Trigger::Retry,
                    first_failure_at: Some(first),
                    due_at: *due_at,
                    check_state: false,
                    resend_request: None,
                });
            }
            Decision::Exhausted { reason } => {
                if a.outcome != herald_core::Outcome::Success {
                    self.metrics
                        .exhausted
                        .with_label_values(&[&n.webhook_id])
                        .inc();
                    warn!(webhook = %n.webhook_id, notification = %n.id, attempt = a.attempt_no, %reason, error = a.error.as_deref().unwrap_or(""), "delivery failed: no further automatic attempt");
                }
            }
        }
        let _ = self.attempts.send((work.notification.clone(), result));
    }

    /// The number of `work`'s attempt, after the attempts on record, or
    /// `None` when an automatic one is no longer owed ([`pipeline::verdict`]:
    /// delivered, exhausted, or made by another copy). When the store cannot
    /// say, the work keeps its own number (a duplicate, never a loss).
    async fn number(&self, work: &Work) -> Option<u32> {
        let n = &work.notification;
        let attempts = match self.store.attempts(n.id).await {
            Ok(attempts) => attempts,
            Err(e) => {
                warn!(error = %e, notification = %n.id, "attempts unreadable; using the queued number");
                return Some(work.attempt_no.max(1));
            }
        };
        let history = History::of(&attempts);
        if work.trigger == Trigger::Manual {
            return Some(history.next_number());
        }
        match pipeline::verdict(&history, work.attempt_no, false) {
            Verdict::Send => Some(history.next_number()),
            Verdict::Skip(reason) => {
                self.metrics
                    .skipped
                    .with_label_values(&[&n.webhook_id, reason.as_str()])
                    .inc();
                debug!(webhook = %n.webhook_id, notification = %n.id, step = work.attempt_no, reason = reason.as_str(), "attempt no longer owed: skipped");
                None
            }
            // Only a redone job resumes, and standalone redoes nothing: it
            // schedules from the store after a restart.
            Verdict::Resume { .. } => None,
        }
    }

    /// Record an attempt, retrying while the store is unavailable: an attempt
    /// that is not on record would be made again after a restart.
    async fn record(&self, result: &AttemptResult, resend_request: Option<i64>) {
        let mut backoff = Duration::from_millis(50);
        let attempt = &result.attempt;
        loop {
            let recorded = match resend_request {
                Some(request) => self.store.record_resend(attempt, request).await,
                None => {
                    self.store
                        .append_attempts(std::slice::from_ref(attempt))
                        .await
                }
            };
            match recorded {
                Ok(()) => return,
                Err(e) if e.is_input_fault() => {
                    error!(error = %e, notification = %result.attempt.notification_id, "attempt could not be recorded");
                    return;
                }
                // Transient, or the store's own fault (a read-only or full
                // disk): wait for it, as the Kafka mode does.
                Err(e) => {
                    if e.is_retriable() {
                        warn!(error = %e, "recording an attempt failed; retrying");
                    } else {
                        error!(error = %e, "the store refuses attempts: an operator must act; retrying");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
