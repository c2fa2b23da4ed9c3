//! The records Herald stores and moves between services: notifications,
//! attempts, the derived state, and the delivery job carried on Kafka.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Deterministic id of one notification (one event × one webhook).
///
/// It is also the Standard Webhooks `webhook-id` header, so receivers can
/// deduplicate retries and re-sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NotificationId(pub Uuid);

impl NotificationId {
    /// Namespace for UUIDv5 notification ids. Fixed forever: changing it would
    /// change every id and break deduplication across a deploy.
    pub const NAMESPACE: Uuid = Uuid::from_u128(0x6865_7261_6c64_4e6f_7469_6669_6361_7469);

    /// The id of the notification for `webhook_id` caused by the event
    /// identified by (`event_source`, `event_id`). CloudEvents makes
    /// source + id unique, so replays map to the same id.
    pub fn derive(event_source: &str, event_id: &str, webhook_id: &str) -> Self {
        // Length-prefix each part so ("a/b", "c") and ("a", "b/c") differ.
        let mut name =
            Vec::with_capacity(event_source.len() + event_id.len() + webhook_id.len() + 24);
        for part in [event_source, event_id, webhook_id] {
            name.extend_from_slice(&(part.len() as u64).to_be_bytes());
            name.extend_from_slice(part.as_bytes());
        }
        Self(Uuid::new_v5(&Self::NAMESPACE, &name))
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for NotificationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for NotificationId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// HTTP method a webhook may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    Post,
    Put,
    Patch,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Method {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "POST" => Ok(Method::Post),
            "PUT" => Ok(Method::Put),
            "PATCH" => Ok(Method::Patch),
            other => Err(format!(
                "unsupported method {other:?}: expected POST, PUT or PATCH"
            )),
        }
    }
}

/// A header value as stored: either rendered text, or a reference to a
/// secret that is resolved only at send time. Secrets never reach the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeaderValue {
    /// Rendered text, stored as is.
    Text(String),
    /// `prefix` followed by the value of the named secret, e.g.
    /// `Bearer ` + secret `partner_api_key`.
    Secret {
        name: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        prefix: String,
    },
}

/// One header of a rendered request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenderedHeader {
    pub name: String,
    pub value: HeaderValue,
}

/// The request exactly as rendered at send-out time. A resend sends this
/// again; it is never re-rendered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenderedRequest {
    pub method: Method,
    pub url: String,
    pub headers: Vec<RenderedHeader>,
    /// `Content-Type` of the body (from the webhook's body format).
    pub content_type: String,
    pub body: String,
}

/// What the store holds for a notification: the rendered request, or the
/// reason it could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationContent {
    Rendered(RenderedRequest),
    RenderFailed { error: String },
}

/// The immutable record of one notification (one event × one webhook).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    pub id: NotificationId,
    pub webhook_id: String,
    pub event_source: String,
    pub event_id: String,
    pub event_type: String,
    pub subject: Option<String>,
    /// The event's own time (CloudEvents `time`, or ingest time when absent).
    pub event_time: DateTime<Utc>,
    /// When Herald created this record.
    pub created_at: DateTime<Utc>,
    /// Hash of the webhook definition the request was rendered with.
    pub template_hash: String,
    pub content: NotificationContent,
}

impl Notification {
    pub fn request(&self) -> Option<&RenderedRequest> {
        match &self.content {
            NotificationContent::Rendered(r) => Some(r),
            NotificationContent::RenderFailed { .. } => None,
        }
    }
}

/// Why an attempt was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The first, automatic attempt.
    Auto,
    /// An automatic retry after a failure.
    Retry,
    /// A re-send asked for by an operator.
    Manual,
}

/// The classified result of one HTTP attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A 2xx response: the only success.
    Success,
    /// A non-2xx response (3xx included: redirects are not followed).
    HttpError,
    /// No complete response within the webhook's timeout.
    Timeout,
    /// DNS, TCP connect or connection reset.
    ConnectionError,
    /// TLS handshake or certificate failure.
    TlsError,
    /// Refused before sending: invalid URL, SSRF guard, missing secret.
    Refused,
    /// The response was larger than allowed or otherwise unusable.
    InvalidResponse,
}

macro_rules! str_enum {
    ($ty:ty { $($variant:ident => $s:literal),+ $(,)? }) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $s),+ }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($s => Ok(Self::$variant),)+
                    other => Err(format!(concat!("unknown ", stringify!($ty), " {:?}"), other)),
                }
            }
        }
    };
}

str_enum!(Trigger { Auto => "auto", Retry => "retry", Manual => "manual" });
str_enum!(Outcome {
    Success => "success",
    HttpError => "http_error",
    Timeout => "timeout",
    ConnectionError => "connection_error",
    TlsError => "tls_error",
    Refused => "refused",
    InvalidResponse => "invalid_response",
});
str_enum!(Status {
    Pending => "pending",
    Delivered => "delivered",
    Retrying => "retrying",
    Failed => "failed",
    RenderFailed => "render_failed",
});

/// One recorded HTTP attempt. Immutable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub notification_id: NotificationId,
    /// Unique per attempt (UUIDv7: time-ordered).
    pub attempt_id: Uuid,
    /// 1-based sequence number of this attempt among all attempts of the
    /// notification, automatic and manual alike (a manual re-send after three
    /// attempts is attempt 4).
    pub attempt_no: u32,
    pub trigger: Trigger,
    pub started_at: DateTime<Utc>,
    pub duration_ms: u32,
    pub outcome: Outcome,
    pub http_status: Option<u16>,
    pub error: Option<String>,
    /// First bytes of the response body, bounded by configuration.
    pub response_excerpt: Option<String>,
    /// When the next automatic attempt is due; `None` when delivered or
    /// when retries are exhausted.
    pub next_attempt_at: Option<DateTime<Utc>>,
}

impl Attempt {
    /// The notification status this attempt implies on its own, or `None`
    /// when it changes no status: a failed manual re-send leaves the
    /// notification as it was, so its scheduled retries (or its exhaustion)
    /// stand.
    pub fn implied_status(&self) -> Option<Status> {
        match (self.outcome, self.trigger, self.next_attempt_at) {
            (Outcome::Success, _, _) => Some(Status::Delivered),
            (_, Trigger::Manual, _) => None,
            (_, _, Some(_)) => Some(Status::Retrying),
            (_, _, None) => Some(Status::Failed),
        }
    }
}

/// Delivery status of a notification, derived from its attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Stored, no attempt recorded yet.
    Pending,
    /// The latest attempt got a 2xx.
    Delivered,
    /// The latest attempt failed and another is scheduled.
    Retrying,
    /// Retries exhausted (or a manual re-send failed after exhaustion).
    Failed,
    /// The template could not be rendered; nothing will be sent.
    RenderFailed,
}

/// The state projection of one notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationState {
    pub status: Status,
    /// The number of the latest attempt on record (attempts are numbered
    /// 1, 2, …; a copy two workers both made shares its number).
    pub attempts: u32,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

impl NotificationState {
    /// State of a freshly stored notification.
    pub fn initial(content: &NotificationContent) -> Self {
        let status = match content {
            NotificationContent::Rendered(_) => Status::Pending,
            NotificationContent::RenderFailed { .. } => Status::RenderFailed,
        };
        Self {
            status,
            attempts: 0,
            last_attempt_at: None,
            next_attempt_at: None,
        }
    }

    /// Derive the state from a notification's attempts, in any order. The
    /// latest attempt (by start time, then id) that implies a status
    /// ([`Attempt::implied_status`]) decides the status and the next due
    /// time; the latest of all gives the last attempt time. The result does
    /// not depend on the order attempts were recorded in.
    pub fn derive(content: &NotificationContent, attempts: &[Attempt]) -> Self {
        let mut state = Self::initial(content);
        if state.status == Status::RenderFailed {
            return state;
        }
        let order = |a: &&Attempt| (a.started_at, a.attempt_id);
        if let Some(latest) = attempts.iter().max_by_key(order) {
            state.attempts = latest.attempt_no;
            state.last_attempt_at = Some(latest.started_at);
        }
        // Delivered is final: a copy of an earlier step that two workers
        // both made can finish, and fail, after the success.
        let deciding = attempts
            .iter()
            .filter(|a| a.outcome == Outcome::Success)
            .max_by_key(order)
            .or_else(|| {
                attempts
                    .iter()
                    .filter(|a| a.implied_status().is_some())
                    .max_by_key(order)
            });
        if let Some(a) = deciding {
            state.status = a.implied_status().unwrap_or(state.status);
            state.next_attempt_at = a.next_attempt_at;
        }
        state
    }
}

/// A delivery job: what ingest produces to the deliveries topic, and what
/// delivery republishes to a retry tier. The value of the Kafka message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryJob {
    pub notification_id: NotificationId,
    pub webhook_id: String,
    pub event_type: String,
    pub subject: Option<String>,
    /// This job's automatic step (1 for the first attempt): what the retry
    /// policy counts. The attempt is recorded under the number after those
    /// on record, which is the same unless a manual re-send came between.
    pub attempt: u32,
    pub trigger: Trigger,
    /// When the notification was created. (The retry age limit counts from
    /// `first_failure_at`.)
    pub created_at: DateTime<Utc>,
    /// Earliest time this job may be sent.
    pub due_at: DateTime<Utc>,
    pub first_failure_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub request: RenderedRequest,
    /// The notification was stored before this job was made (a replay or
    /// re-submission), or the job may have been done already: delivery
    /// reads the state first and sends only if the attempt is still owed
    /// ([`crate::pipeline::verdict`]).
    #[serde(default)]
    pub check_state: bool,
}

impl DeliveryJob {
    /// The Kafka key: `webhook_id/subject`, so one entity's notifications
    /// for one webhook stay ordered on one partition.
    pub fn key(&self) -> String {
        format!(
            "{}/{}",
            self.webhook_id,
            self.subject.as_deref().unwrap_or("")
        )
    }

    /// The first job for a freshly rendered notification.
    pub fn first(notification: &Notification) -> Option<Self> {
        let request = notification.request()?.clone();
        Some(Self {
            notification_id: notification.id,
            webhook_id: notification.webhook_id.clone(),
            event_type: notification.event_type.clone(),
            subject: notification.subject.clone(),
            attempt: 1,
            trigger: Trigger::Auto,
            created_at: notification.created_at,
            due_at: notification.created_at,
            first_failure_at: None,
            last_error: None,
            request,
            check_state: false,
        })
    }
}

/// A command on the resend topic: send a stored notification again, once,
/// with trigger `manual`. The delivery service loads the stored request; the
/// command carries only who asked and why, for the audit trail and logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResendCommand {
    pub notification_id: NotificationId,
    /// Why the re-send was asked for (free text).
    #[serde(default)]
    pub reason: String,
    /// Who asked: an operator, an API token's name, `cli`.
    #[serde(default)]
    pub requested_by: String,
}

impl ResendCommand {
    /// The Kafka key: the notification id, so commands for one notification
    /// stay ordered.
    pub fn key(&self) -> String {
        self.notification_id.to_string()
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn notification_id_is_stable_and_part_boundaries_matter() {
        let a = NotificationId::derive("/core/loans", "evt-1", "crm");
        assert_eq!(a, NotificationId::derive("/core/loans", "evt-1", "crm"));
        assert_ne!(a, NotificationId::derive("/core/loans", "evt-1", "erp"));
        assert_ne!(
            NotificationId::derive("a/b", "c", "w"),
            NotificationId::derive("a", "b/c", "w")
        );
        // Pinned: a change here would break receiver-side deduplication.
        assert_eq!(
            a.to_string(),
            NotificationId::derive("/core/loans", "evt-1", "crm").to_string()
        );
        assert_eq!(a.0.get_version_num(), 5);
    }

    fn attempt(secs: i64, outcome: Outcome, next: Option<i64>) -> Attempt {
        let t = |s| Utc.timestamp_opt(s, 0).unwrap();
        Attempt {
            notification_id: NotificationId::derive("s", "e", "w"),
            attempt_id: Uuid::from_u128(secs as u128),
            attempt_no: 1,
            trigger: Trigger::Auto,
            started_at: t(secs),
            duration_ms: 5,
            outcome,
            http_status: None,
            error: None,
            response_excerpt: None,
            next_attempt_at: next.map(t),
        }
    }

    #[test]
    fn state_is_decided_by_the_latest_attempt_in_any_order() {
        let content = NotificationContent::RenderFailed {
            error: String::new(),
        };
        assert_eq!(
            NotificationState::derive(&content, &[]).status,
            Status::RenderFailed
        );

        let content = NotificationContent::Rendered(RenderedRequest {
            method: Method::Post,
            url: "https://example.com".into(),
            headers: vec![],
            content_type: "application/json".into(),
            body: "{}".into(),
        });
        assert_eq!(
            NotificationState::derive(&content, &[]).status,
            Status::Pending
        );
        let a1 = attempt(10, Outcome::HttpError, Some(20));
        let a2 = Attempt {
            attempt_no: 2,
            trigger: Trigger::Retry,
            ..attempt(20, Outcome::Success, None)
        };
        for order in [vec![a1.clone(), a2.clone()], vec![a2.clone(), a1.clone()]] {
            let s = NotificationState::derive(&content, &order);
            assert_eq!(s.status, Status::Delivered);
            assert_eq!(s.attempts, 2);
            assert_eq!(s.last_attempt_at, Some(a2.started_at));
        }
        let s = NotificationState::derive(&content, std::slice::from_ref(&a1));
        assert_eq!(
            (s.status, s.next_attempt_at),
            (Status::Retrying, a1.next_attempt_at)
        );
        let s = NotificationState::derive(&content, &[attempt(30, Outcome::Timeout, None)]);
        assert_eq!(s.status, Status::Failed);
    }

    #[test]
    fn enums_round_trip_through_their_strings() {
        for s in [
            "pending",
            "delivered",
            "retrying",
            "failed",
            "render_failed",
        ] {
            assert_eq!(s.parse::<Status>().unwrap().as_str(), s);
        }
        for o in [
            "success",
            "http_error",
            "timeout",
            "connection_error",
            "tls_error",
            "refused",
            "invalid_response",
        ] {
            assert_eq!(o.parse::<Outcome>().unwrap().as_str(), o);
        }
        assert!("bogus".parse::<Trigger>().unwrap_err().contains("bogus"));
        assert_eq!(
            serde_json::to_string(&Status::RenderFailed).unwrap(),
            "\"render_failed\""
        );
    }
}

#[cfg(test)]
mod delivery_job_json_tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;

    fn job() -> DeliveryJob {
        DeliveryJob {
            notification_id: NotificationId(Uuid::from_u128(
                0x0123_4567_89ab_cdef_0123_4567_89ab_cdef,
            )),
            webhook_id: "crm".into(),
            event_type: "bank.loan.disbursed".into(),
            subject: Some("LN-1".into()),
            attempt: 2,
            trigger: Trigger::Retry,
            created_at: Utc.with_ymd_and_hms(2024, 5, 1, 10, 0, 0).unwrap(),
            due_at: Utc.with_ymd_and_hms(2024, 5, 1, 10, 0, 30).unwrap(),
            first_failure_at: Some(Utc.with_ymd_and_hms(2024, 5, 1, 10, 0, 1).unwrap()),
            last_error: Some("http 503".into()),
            request: RenderedRequest {
                method: Method::Post,
                url: "https://crm.example.com/loans/LN-1".into(),
                headers: vec![
                    RenderedHeader {
                        name: "Authorization".into(),
                        value: HeaderValue::Secret {
                            name: "crm_token".into(),
                            prefix: "Bearer ".into(),
                        },
                    },
                    RenderedHeader {
                        name: "X-Api-Key".into(),
                        value: HeaderValue::Secret {
                            name: "k".into(),
                            prefix: String::new(),
                        },
                    },
                    RenderedHeader {
                        name: "X-Tenant".into(),
                        value: HeaderValue::Text("acme".into()),
                    },
                ],
                content_type: "application/json".into(),
                body: "{\"a\":1}".into(),
            },
            check_state: true,
        }
    }

    #[test]
    fn delivery_job_json_round_trips() {
        let j = job();
        let text = serde_json::to_string(&j).unwrap();
        assert_eq!(serde_json::from_str::<DeliveryJob>(&text).unwrap(), j);
        let first = DeliveryJob {
            subject: None,
            first_failure_at: None,
            last_error: None,
            ..j
        };
        let text = serde_json::to_string(&first).unwrap();
        assert_eq!(serde_json::from_str::<DeliveryJob>(&text).unwrap(), first);
    }

    /// The wire format is shared between services and versions: field names
    /// and encodings are pinned here.
    #[test]
    fn delivery_job_json_field_names_are_stable() {
        assert_eq!(
            serde_json::to_value(job()).unwrap(),
            json!({
                "notification_id": "01234567-89ab-cdef-0123-456789abcdef",
                "webhook_id": "crm",
                "event_type": "bank.loan.disbursed",
                "subject": "LN-1",
                "attempt": 2,
                "trigger": "retry",
                "created_at": "2024-05-01T10:00:00Z",
                "due_at": "2024-05-01T10:00:30Z",
                "first_failure_at": "2024-05-01T10:00:01Z",
                "last_error": "http 503",
                "request": {
                    "method": "POST",
                    "url": "https://crm.example.com/loans/LN-1",
                    "headers": [
                        {"name": "Authorization", "value": {"secret": {"name": "crm_token", "prefix": "Bearer "}}},
                        {"name": "X-Api-Key", "value": {"secret": {"name": "k"}}},
                        {"name": "X-Tenant", "value": {"text": "acme"}}
                    ],
                    "content_type": "application/json",
                    "body": "{\"a\":1}"
                },
                "check_state": true
            })
        );
        assert_eq!(job().key(), "crm/LN-1");
    }
}
