//! The standalone pipeline: accept events (durably), render and store their
//! notifications, and deliver them through the same [`Pipeline`] as Kafka
//! mode. Its next hops are timers in memory, backed by the due times the
//! attempts record in SQLite, so a crash loses nothing: on start, every
//! stored notification without an outcome is scheduled again, and so is
//! every re-send request accepted and not yet carried out.
//!
//! Each webhook has a circuit breaker: while it is open, an attempt that
//! comes due is not made; its due time moves to the end of the cool-down,
//! with its attempt number unchanged. Breaker state lives in memory: after
//! a restart every circuit starts closed.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use herald_core::circuit::CircuitView;
use herald_core::pipeline::History;
use herald_core::{
    Accepted, CircuitChange, CloudEvent, DeliveryJob, NotificationContent, NotificationId,
    ResendCommand, Status, Tier, Trigger, Webhooks,
};
use herald_delivery::pipeline::{self, NextHops, Pipeline};
use herald_delivery::{AttemptResult, CircuitBoard, Deliverer};
use herald_store::sqlite::SqliteStore;
use herald_store::{NotificationStore, StoreError};
use tokio::sync::{Semaphore, broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::time::DelayQueue;
use tracing::{debug, info, warn};

use super::metrics::StandaloneMetrics;

/// One piece of work for the scheduler.
#[derive(Debug, Clone)]
enum Task {
    /// An automatic job, made when it is due.
    Deliver(DeliveryJob),
    /// A manual re-send, made now; `request` is its durable request.
    Resend { cmd: ResendCommand, request: i64 },
}

impl Task {
    /// How long it still waits at wall-clock time `now` (zero: due).
    fn wait(&self, now: DateTime<Utc>) -> Duration {
        match self {
            Task::Deliver(job) => (job.due_at - now).to_std().unwrap_or(Duration::ZERO),
            Task::Resend { .. } => Duration::ZERO,
        }
    }
}

/// Standalone's next hops: the scheduler's queue. A scheduled retry is
/// durable already (the attempt that scheduled it recorded its due time);
/// an exhausted notification is `failed` in the store; there are no other
/// workers to share circuit changes with.
struct Timers {
    queue: mpsc::UnboundedSender<Task>,
    attempts: broadcast::Sender<(String, AttemptResult)>,
}

impl Timers {
    fn enqueue(&self, task: Task) {
        // The receiver only goes away at shutdown; what is not sent then is
        // still owed in the store and is scheduled again on the next start.
        let _ = self.queue.send(task);
    }
}

#[async_trait]
impl NextHops for Timers {
    async fn schedule(&self, job: DeliveryJob, _tier: &Tier) {
        self.enqueue(Task::Deliver(job));
    }

    async fn exhausted(&self, _job: DeliveryJob, _reason: &str) {}

    async fn share_circuits(&self, _changes: Vec<CircuitChange>) {}

    fn attempted(&self, webhook_id: &str, result: &AttemptResult) {
        let _ = self.attempts.send((webhook_id.to_owned(), result.clone()));
    }
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
    pipeline: Arc<Pipeline>,
    timers: Arc<Timers>,
    pub(crate) metrics: StandaloneMetrics,
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
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        store: Arc<SqliteStore>,
        deliverer: Deliverer,
        webhooks: Arc<Webhooks>,
        concurrency: usize,
        per_webhook: usize,
        metrics: StandaloneMetrics,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<Self, StoreError> {
        let (queue, rx) = mpsc::unbounded_channel();
        let (attempts, _) = broadcast::channel(1024);
        let timers = Arc::new(Timers { queue, attempts });
        let circuits = CircuitBoard::new("standalone", &webhooks, metrics.delivery.clone());
        let pipeline = Pipeline::new(pipeline::Parts {
            tiers: deliverer.tiers().clone(),
            deliverer,
            store: store.clone(),
            hops: timers.clone(),
            metrics: metrics.delivery.clone(),
            circuits,
            webhooks: webhooks.clone(),
            per_webhook,
        });
        let engine = Self {
            store,
            webhooks,
            pipeline: Arc::new(pipeline),
            timers,
            metrics,
        };
        let runner = engine.clone();
        tracker.spawn(runner.schedule_loop(rx, concurrency, shutdown.clone(), tracker.clone()));
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
        self.pipeline.circuits().views()
    }

    /// Force a webhook's circuit closed. `None` for an unknown webhook.
    pub fn force_close_circuit(&self, webhook_id: &str, by: &str) -> Option<CircuitChange> {
        self.pipeline.circuits().force_close(webhook_id, by)
    }

    /// A feed of every attempt made (by webhook id), for the demo's live
    /// view.
    pub fn subscribe(&self) -> broadcast::Receiver<(String, AttemptResult)> {
        self.timers.attempts.subscribe()
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
        let ingest = &self.metrics.ingest;
        let mut notifications = Vec::new();
        for (index, value) in events.into_iter().enumerate() {
            let event = CloudEvent::from_value(value)
                .map_err(|source| AcceptError::Invalid { index, source })?;
            let mut created = self.webhooks.notifications(&event, now);
            for n in &mut created {
                self.store.limits().settle(n);
            }
            if created.is_empty() {
                ingest.event_unmatched(&event.ty);
            } else {
                ingest.event_matched(created.len());
            }
            notifications.extend(created);
        }
        let started = std::time::Instant::now();
        let found = self.store.append_notifications(&notifications).await?;
        ingest.store_written(started.elapsed());
        let mut out = Vec::with_capacity(notifications.len());
        for (n, accepted) in notifications.iter().zip(&found) {
            let known = matches!(accepted, Accepted::Existing { .. });
            let status = accepted.status(n);
            if known {
                ingest.notification_stored(&n.webhook_id, "known");
            } else {
                ingest.notification_stored(&n.webhook_id, status.as_str());
                if let NotificationContent::RenderFailed { error } = &n.content {
                    ingest.render_failed(&n.webhook_id, &n.event_id, error);
                }
            }
            // A known notification is never owed a job here: this process
            // queued one when it first stored it, or recovered it at start
            // (`recover` schedules every unattempted notification), so a
            // second job could only race the first. (Kafka-mode ingest
            // cannot know, and sends a job that checks the store.)
            if let Some(owed) = accepted.owed(n).filter(|_| !known) {
                let mut job = owed.job();
                job.due_at = now;
                self.timers.enqueue(Task::Deliver(job));
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
        self.timers.enqueue(Self::resend_task(id, request));
        Ok(true)
    }

    /// A queued re-send; numbered when it runs, after the attempts on
    /// record then.
    fn resend_task(notification_id: NotificationId, request: i64) -> Task {
        Task::Resend {
            cmd: ResendCommand {
                notification_id,
                reason: String::new(),
                requested_by: "api".into(),
            },
            request,
        }
    }

    /// Schedule everything the store says is still owed: notifications never
    /// attempted, retries with their due times, and re-sends accepted and
    /// not carried out.
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
            let Some(mut job) = DeliveryJob::first(&n) else {
                continue;
            };
            job.due_at = now;
            // A failed re-send may have been made meanwhile: number it
            // after the attempts on record.
            job.check_state = true;
            self.timers.enqueue(Task::Deliver(job));
        }
        for (n, state) in due {
            let Some(mut job) = DeliveryJob::first(&n) else {
                continue;
            };
            // The next step and where the age limit counts from, from the
            // attempts on record (manual re-sends are no steps).
            let history = History::of(&self.store.attempts(n.id).await?);
            job.attempt = history.automatic + 1;
            job.trigger = Trigger::Retry;
            job.first_failure_at = history.first_failure_at;
            job.due_at = state.next_attempt_at.unwrap_or(now);
            self.timers.enqueue(Task::Deliver(job));
        }
        for (request, id) in self.store.pending_resends().await? {
            match self.store.get(id).await? {
                Some(r) if r.notification.request().is_some() => {
                    info!(notification = %id, "re-send accepted before the restart: sending it");
                    self.timers.enqueue(Self::resend_task(id, request));
                }
                _ => {
                    warn!(notification = %id, request, "queued re-send of a notification that cannot be sent: left as is")
                }
            }
        }
        Ok(())
    }

    /// Hold every task until it is due, then run it through the pipeline,
    /// `concurrency` at a time.
    async fn schedule_loop(
        self,
        mut rx: mpsc::UnboundedReceiver<Task>,
        concurrency: usize,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) {
        let mut timers: DelayQueue<Task> = DelayQueue::new();
        let permits = Arc::new(Semaphore::new(concurrency));
        let scheduled = &self.metrics.delivery.scheduled;
        loop {
            let task = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(task) = rx.recv() => task,
                Some(expired) = std::future::poll_fn(|cx| timers.poll_expired(cx)) => {
                    scheduled.dec();
                    expired.into_inner()
                }
            };
            // Asked again when a timer fires: timers run on the monotonic
            // clock and due times are wall-clock times, so after the wall
            // clock stepped back a timer fires before its due time. Nothing
            // is sent before its due time: it waits the rest.
            let wait = task.wait(Utc::now());
            if !wait.is_zero() {
                scheduled.inc();
                timers.insert(task, wait);
                continue;
            }
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = permits.clone().acquire_owned() => p.expect("semaphore never closed"),
            };
            let pipeline = self.pipeline.clone();
            tracker.spawn(async move {
                match task {
                    Task::Deliver(job) => pipeline.deliver(&job, false).await,
                    Task::Resend { cmd, request } => pipeline.resend(&cmd, Some(request)).await,
                }
                drop(permit);
            });
        }
        debug!(
            pending_timers = timers.len(),
            "scheduler stopped; pending retries stay due in the store"
        );
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    /// Found by reading the code (issue 18): a timer fired on the monotonic
    /// clock was taken as due, so after a backward step of the wall clock
    /// an attempt went out before the due time its predecessor recorded.
    /// The scheduler asks [`Task::wait`] again when a timer fires.
    #[test]
    fn a_task_waits_for_its_wall_clock_due_time_whatever_fired_its_timer() {
        let webhooks = Webhooks::from_toml(
            "[[webhooks]]\nid = \"w\"\nevents = [\"bank.*\"]\nurl = \"https://example.com/h\"\nbody = '{}'\n",
        )
        .unwrap();
        let event = CloudEvent::from_value(serde_json::json!({
            "specversion": "1.0", "id": "e1", "source": "/core", "type": "bank.x"
        }))
        .unwrap();
        let t0 = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
        let n = webhooks.notifications(&event, t0).remove(0);
        let mut job = DeliveryJob::first(&n).unwrap();
        job.due_at = t0 + chrono::Duration::seconds(60);
        let task = Task::Deliver(job);
        // The timer fired 60 s after scheduling, but the wall clock was
        // stepped back 5 s meanwhile: 5 s to go.
        let stepped_back = t0 + chrono::Duration::seconds(55);
        assert_eq!(task.wait(stepped_back), Duration::from_secs(5));
        assert_eq!(
            task.wait(t0 + chrono::Duration::seconds(60)),
            Duration::ZERO
        );
        assert_eq!(
            task.wait(t0 + chrono::Duration::seconds(61)),
            Duration::ZERO
        );
        let resend = Engine::resend_task(n.id, 1);
        assert_eq!(resend.wait(t0), Duration::ZERO, "a re-send is due at once");
    }
}
