//! One attempt, end to end and in one place: resolve the stored request's
//! secret headers, sign it (fresh timestamp, same `webhook-id`), send it,
//! classify the result and let the webhook's retry policy decide what comes
//! next. Standalone mode and the Kafka delivery service both call this; only
//! how they persist and schedule the result differs.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use herald_core::retry::parse_retry_after;
use herald_core::{
    Attempt, AttemptReport, Decision, ExhaustedReason, NotificationId, Outcome, RenderedRequest,
    SecretSource, Tiers, TlsMaterial, Trigger, Webhooks, signing,
};
use uuid::Uuid;

use crate::client::{HttpSender, SendResult};

/// What to attempt.
#[derive(Debug, Clone)]
pub struct AttemptPlan<'a> {
    pub notification_id: NotificationId,
    pub webhook_id: &'a str,
    /// 1-based number of this attempt among all of the notification's.
    pub attempt_no: u32,
    /// For an automatic attempt, its place among the automatic ones (1 for
    /// the first): what the retry policy counts. A manual re-send in between
    /// takes a number but is no step.
    pub step: u32,
    pub trigger: Trigger,
    /// First failure of the notification so far, for the retry age limit.
    pub first_failure_at: Option<DateTime<Utc>>,
    pub request: &'a RenderedRequest,
}

/// The recorded attempt and what the policy decided after it.
#[derive(Debug, Clone)]
pub struct AttemptResult {
    /// Ready to append to the store; `next_attempt_at` is set when a retry
    /// is scheduled.
    pub attempt: Attempt,
    pub decision: Decision,
}

/// Turns plans into attempts. Cheap to clone.
#[derive(Clone)]
pub struct Deliverer {
    sender: HttpSender,
    webhooks: Arc<Webhooks>,
    secrets: Arc<dyn SecretSource + Send + Sync>,
    tiers: Arc<Tiers>,
}

impl Deliverer {
    pub fn new(
        sender: HttpSender,
        webhooks: Arc<Webhooks>,
        secrets: Arc<dyn SecretSource + Send + Sync>,
        tiers: Tiers,
    ) -> Self {
        Self {
            sender,
            webhooks,
            secrets,
            tiers: Arc::new(tiers),
        }
    }

    pub fn webhooks(&self) -> &Webhooks {
        &self.webhooks
    }

    /// Where its secrets are resolved.
    pub fn secrets(&self) -> Arc<dyn SecretSource + Send + Sync> {
        self.secrets.clone()
    }

    /// The delayed-retry tiers its decisions name.
    pub fn tiers(&self) -> &Tiers {
        &self.tiers
    }

    /// Make the attempt. Always returns a result to record: a webhook that is
    /// no longer defined or a secret that cannot be resolved is a `refused`
    /// attempt, not an error that could lose the notification.
    pub async fn attempt(&self, plan: &AttemptPlan<'_>) -> AttemptResult {
        let started_at = Utc::now();
        let result = match self.prepare(plan, started_at) {
            Ok(Prepared {
                headers,
                timeout,
                tls,
            }) => {
                let body = Bytes::copy_from_slice(plan.request.body.as_bytes());
                self.sender
                    .send_as(
                        tls.as_ref(),
                        plan.request.method.as_str(),
                        &plan.request.url,
                        &headers,
                        body,
                        timeout,
                    )
                    .await
            }
            Err(error) => SendResult {
                outcome: Outcome::Refused,
                http_status: None,
                duration: Duration::ZERO,
                error: Some(error),
                response_excerpt: None,
                retry_after: None,
            },
        };
        let finished = started_at + chrono::Duration::from_std(result.duration).unwrap_or_default();
        let decision = match (plan.trigger, self.webhooks.get(plan.webhook_id)) {
            // A manual re-send is one attempt; it never schedules retries.
            (Trigger::Manual, _) if result.outcome != Outcome::Success => Decision::Exhausted {
                reason: ExhaustedReason::ManualResend,
            },
            (_, Some(webhook)) => webhook.retry.decide(
                &AttemptReport {
                    attempt_no: plan.step,
                    outcome: result.outcome,
                    http_status: result.http_status,
                    retry_after: result
                        .retry_after
                        .as_deref()
                        .and_then(|v| parse_retry_after(v, finished)),
                    first_failure_at: plan.first_failure_at,
                    now: finished,
                },
                &self.tiers,
                rand::random::<f64>(),
            ),
            (_, None) if result.outcome == Outcome::Success => Decision::Delivered,
            (_, None) => Decision::Exhausted {
                reason: ExhaustedReason::UnknownWebhook,
            },
        };
        let attempt = Attempt {
            notification_id: plan.notification_id,
            attempt_id: Uuid::now_v7(),
            attempt_no: plan.attempt_no,
            trigger: plan.trigger,
            started_at,
            duration_ms: u32::try_from(result.duration.as_millis()).unwrap_or(u32::MAX),
            outcome: result.outcome,
            http_status: result.http_status,
            error: result.error,
            response_excerpt: result.response_excerpt,
            next_attempt_at: match &decision {
                Decision::Retry { due_at, .. } => Some(*due_at),
                _ => None,
            },
        };
        AttemptResult { attempt, decision }
    }

    /// Headers to send (secrets resolved, signature added), the timeout and
    /// the TLS identity, all resolved now: a secret replaced on disk is used
    /// by the next attempt.
    fn prepare(&self, plan: &AttemptPlan<'_>, now: DateTime<Utc>) -> Result<Prepared, String> {
        let webhook = self
            .webhooks
            .get(plan.webhook_id)
            .ok_or_else(|| format!("webhook {:?} is no longer defined", plan.webhook_id))?;
        let resolved = self
            .webhooks
            .resolve_headers(plan.request, self.secrets.as_ref())
            .map_err(|e| e.to_string())?;
        let keys = self
            .webhooks
            .signing_secrets(webhook, self.secrets.as_ref(), now)
            .map_err(|e| e.to_string())?;
        let mut headers: Vec<(String, String)> =
            resolved.into_iter().map(|h| (h.name, h.value)).collect();
        if !keys.is_empty() {
            let id = plan.notification_id.to_string();
            let sig = signing::sign(&id, now.timestamp(), plan.request.body.as_bytes(), &keys);
            headers.extend(sig.to_pairs().into_iter().map(|(n, v)| (n.to_owned(), v)));
        } else {
            // Unsigned webhooks still carry the id receivers deduplicate on.
            headers.push((
                signing::HEADER_ID.to_owned(),
                plan.notification_id.to_string(),
            ));
        }
        let tls = self
            .webhooks
            .tls_material(webhook, self.secrets.as_ref())
            .map_err(|e| e.to_string())?;
        Ok(Prepared {
            headers,
            timeout: webhook.timeout,
            tls,
        })
    }
}

/// What [`Deliverer::prepare`] resolved for one attempt.
struct Prepared {
    headers: Vec<(String, String)>,
    timeout: Duration,
    tls: Option<TlsMaterial>,
}
