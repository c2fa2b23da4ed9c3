//! The circuit breakers of one process: consulted before every automatic
//! attempt, told every outcome, and each state change logged and counted
//! once. Kafka mode shares the changes between workers
//! (`service::circuit`); standalone has one process and shares nothing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use herald_core::circuit::CircuitView;
use herald_core::{Admission, CircuitChange, CircuitState, Circuits, Outcome, Webhooks};
use tracing::{info, warn};

use crate::Metrics;

/// This worker's breakers. Cheap to clone; the lock is never held across
/// an await.
#[derive(Clone)]
pub struct CircuitBoard {
    circuits: Arc<Mutex<Circuits>>,
    metrics: Metrics,
}

impl CircuitBoard {
    pub fn new(instance: &str, webhooks: &Webhooks, metrics: Metrics) -> Self {
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
    pub fn admit(&self, webhook_id: &str, due_at: chrono::DateTime<Utc>) -> Admission {
        self.lock().admit(webhook_id, Utc::now(), due_at)
    }

    /// The end of the cool-down if the circuit is open (read-only).
    pub fn open_until(&self, webhook_id: &str) -> Option<chrono::DateTime<Utc>> {
        self.lock().open_until(webhook_id, Utc::now())
    }

    /// Report an attempt admitted by [`CircuitBoard::admit`].
    pub fn record(&self, webhook_id: &str, outcome: Outcome, took: Duration, probe: bool) {
        self.lock()
            .record(webhook_id, Utc::now(), outcome, took, probe);
    }

    /// Changes made here since the last call: log and count each once.
    /// Returns those to publish (open and closed; half-open is local).
    pub fn take_changes(&self) -> Vec<CircuitChange> {
        let changes = self.lock().take_changes();
        changes
            .into_iter()
            .filter(|c| {
                self.noted(c, "local");
                c.state != CircuitState::HalfOpen
            })
            .collect()
    }

    /// Force a webhook's circuit closed in this process only, as
    /// `operator:{by}`, and note the change. `None` for an unknown webhook.
    /// For standalone: Kafka mode publishes a `closed` change that every
    /// worker follows instead ([`crate::service::force_close_circuit`]).
    pub fn force_close(&self, webhook_id: &str, by: &str) -> Option<CircuitChange> {
        let change = self
            .lock()
            .force_close(webhook_id, Utc::now(), &format!("operator:{by}"))?;
        self.take_changes();
        Some(change)
    }

    /// Follow a change published by another worker or an operator.
    pub fn apply(&self, change: &CircuitChange) {
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
