//! The pipeline's decisions that both modes share, without I/O: whether an
//! accepted notification is owed a first attempt, and whether an automatic
//! job that may already have been done (replayed, re-submitted or redone
//! after a crash) is still owed, given the state on record.
//!
//! These are the rules behind two promises: a receiver only ever gets the
//! stored request, and after exhaustion nothing is sent automatically. A
//! replay or a re-POST of a known event never opens a new retry chain.

use chrono::{DateTime, Utc};

use crate::{DeliveryJob, Notification, NotificationState, Status};

/// What accepting one freshly rendered notification found in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// Stored by this accept.
    New,
    /// Stored before, by an earlier accept of the same event: the first
    /// record wins, so this is the stored notification and its state now.
    Existing {
        stored: Box<Notification>,
        state: NotificationState,
    },
}

/// A first attempt owed after an accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owed<'a> {
    /// The notification to send: the stored one when it existed.
    pub notification: &'a Notification,
    /// The first attempt may already be on its way (an earlier accept
    /// scheduled it): the delivery checks the store before sending.
    pub check_state: bool,
}

impl Owed<'_> {
    /// The first delivery job: the notification's request, attempt 1.
    pub fn job(&self) -> DeliveryJob {
        let mut job = DeliveryJob::first(self.notification)
            .expect("owed notifications are rendered (checked by Accepted::owed)");
        job.check_state = self.check_state;
        job
    }
}

impl Accepted {
    /// The first attempt this accept owes, if any.
    ///
    /// - A new notification is owed its first attempt.
    /// - A known one is owed nothing, unless it was never attempted (the
    ///   window between the store write and the job): then its *stored*
    ///   request is sent, never the fresh render, and the delivery checks
    ///   the store first so that two jobs make one attempt.
    /// - Never for a notification that failed to render.
    pub fn owed<'a>(&'a self, fresh: &'a Notification) -> Option<Owed<'a>> {
        let (notification, check_state) = match self {
            Accepted::New => (fresh, false),
            Accepted::Existing { stored, state }
                if state.status == Status::Pending && state.attempts == 0 =>
            {
                (stored.as_ref(), true)
            }
            Accepted::Existing { .. } => return None,
        };
        notification.request()?;
        Some(Owed {
            notification,
            check_state,
        })
    }

    /// The status to report for this accept: `pending` (or `render_failed`)
    /// for a new notification, the stored state for a known one.
    pub fn status(&self, fresh: &Notification) -> Status {
        match self {
            Accepted::New => NotificationState::initial(&fresh.content).status,
            Accepted::Existing { state, .. } => state.status,
        }
    }
}

/// What to do with an automatic job (first attempt or retry) whose
/// notification's state was read before sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Still owed: make the attempt.
    Send,
    /// Not owed: the notification is delivered, cannot be sent, or this
    /// attempt (or a later one) is already on record.
    Skip(SkipReason),
    /// This attempt is on record and the notification is `retrying`, but
    /// the job was redone after a crash or rebalance, so its next hop may
    /// never have been published: schedule `attempt` at `due_at` (checked
    /// again when it runs) instead of sending this one again.
    Resume { attempt: u32, due_at: DateTime<Utc> },
}

/// Why a job was skipped (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    Delivered,
    /// The attempt is on record already: another copy of the job made it.
    AlreadyAttempted,
    /// Retries exhausted, or the notification cannot be sent.
    Closed,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Delivered => "delivered",
            SkipReason::AlreadyAttempted => "already_attempted",
            SkipReason::Closed => "closed",
        }
    }
}

/// Whether automatic attempt `attempt` is still owed, given `state` (the
/// projection on record; `None` when the store has no such notification,
/// which the attempt's record then reports).
///
/// `redone`: the job may have been done by a worker that crashed or lost
/// its partition before committing. Only such a job resumes a chain whose
/// next hop may be missing; any other copy is a duplicate and is skipped,
/// so at most one retry chain stays alive per notification.
pub fn verdict(state: Option<&NotificationState>, attempt: u32, redone: bool) -> Verdict {
    let Some(state) = state else {
        return Verdict::Send;
    };
    match state.status {
        Status::Delivered => return Verdict::Skip(SkipReason::Delivered),
        Status::RenderFailed => return Verdict::Skip(SkipReason::Closed),
        Status::Pending | Status::Retrying | Status::Failed => {}
    }
    if state.attempts < attempt {
        // A failed notification with fewer attempts than this job's number
        // was closed by the attempt before it (exhausted): nothing is owed.
        if state.status == Status::Failed && state.attempts > 0 {
            return Verdict::Skip(SkipReason::Closed);
        }
        return Verdict::Send;
    }
    match (state.status, state.next_attempt_at, redone) {
        (Status::Retrying, Some(due_at), true) if state.attempts == attempt => Verdict::Resume {
            attempt: attempt + 1,
            due_at,
        },
        (Status::Failed, _, _) => Verdict::Skip(SkipReason::Closed),
        _ => Verdict::Skip(SkipReason::AlreadyAttempted),
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::{CloudEvent, Webhooks};

    fn notification(body_field: &str) -> Notification {
        let webhooks = Webhooks::from_toml(&format!(
            "[[webhooks]]\nid = \"w\"\nevents = [\"bank.*\"]\nurl = \"https://example.com/h\"\nbody = '{{\"v\": {{{{json data.{body_field}}}}}}}'\n"
        ))
        .unwrap();
        let event = CloudEvent::from_value(serde_json::json!({
            "specversion": "1.0", "id": "e1", "source": "/core", "type": "bank.x",
            "data": {"a": 1, "b": 2}
        }))
        .unwrap();
        webhooks
            .notifications(&event, Utc.timestamp_opt(1_700_000_000, 0).unwrap())
            .remove(0)
    }

    fn state(status: Status, attempts: u32, next: Option<i64>) -> NotificationState {
        NotificationState {
            status,
            attempts,
            last_attempt_at: None,
            next_attempt_at: next.map(|s| Utc.timestamp_opt(s, 0).unwrap()),
        }
    }

    #[test]
    fn a_new_notification_is_owed_its_fresh_render() {
        let fresh = notification("a");
        let owed = Accepted::New.owed(&fresh).unwrap();
        assert_eq!(owed.notification, &fresh);
        assert!(!owed.check_state);
    }

    #[test]
    fn a_known_notification_is_owed_only_when_never_attempted_and_then_as_stored() {
        let stored = notification("a");
        let fresh = notification("b");
        assert_ne!(stored.request(), fresh.request());
        let known = |s| Accepted::Existing {
            stored: Box::new(stored.clone()),
            state: s,
        };
        let pending = known(state(Status::Pending, 0, None));
        let owed = pending.owed(&fresh).unwrap();
        assert_eq!(
            owed.notification, &stored,
            "the stored request, not the fresh render"
        );
        assert!(owed.check_state);
        for s in [
            state(Status::Delivered, 1, None),
            state(Status::Failed, 3, None),
            state(Status::Retrying, 1, Some(1)),
        ] {
            assert_eq!(known(s.clone()).owed(&fresh), None, "{s:?}");
            assert_eq!(known(s.clone()).status(&fresh), s.status);
        }
        assert_eq!(Accepted::New.status(&fresh), Status::Pending);
    }

    #[test]
    fn a_render_failure_is_never_owed() {
        let mut failed = notification("a");
        failed.content = crate::NotificationContent::RenderFailed { error: "x".into() };
        assert_eq!(Accepted::New.owed(&failed), None);
        assert_eq!(Accepted::New.status(&failed), Status::RenderFailed);
    }

    #[test]
    fn verdicts() {
        use Verdict::*;
        let due = Utc.timestamp_opt(9, 0).unwrap();
        // Owed: the state expects exactly this attempt.
        assert_eq!(verdict(None, 1, false), Send);
        assert_eq!(
            verdict(Some(&state(Status::Pending, 0, None)), 1, false),
            Send
        );
        assert_eq!(
            verdict(Some(&state(Status::Retrying, 2, Some(9))), 3, false),
            Send
        );
        // Delivered: never again automatically.
        for redone in [false, true] {
            assert_eq!(
                verdict(Some(&state(Status::Delivered, 1, None)), 2, redone),
                Skip(SkipReason::Delivered)
            );
            // Exhausted: nothing automatic, whatever the job's number.
            assert_eq!(
                verdict(Some(&state(Status::Failed, 3, None)), 3, redone),
                Skip(SkipReason::Closed)
            );
            assert_eq!(
                verdict(Some(&state(Status::Failed, 3, None)), 4, redone),
                Skip(SkipReason::Closed)
            );
        }
        // A duplicate of an attempt on record does not fork the chain...
        assert_eq!(
            verdict(Some(&state(Status::Retrying, 2, Some(9))), 2, false),
            Skip(SkipReason::AlreadyAttempted)
        );
        assert_eq!(
            verdict(Some(&state(Status::Retrying, 3, Some(9))), 2, true),
            Skip(SkipReason::AlreadyAttempted)
        );
        // ...but a redone job resumes the chain its crash may have cut.
        assert_eq!(
            verdict(Some(&state(Status::Retrying, 2, Some(9))), 2, true),
            Resume {
                attempt: 3,
                due_at: due
            }
        );
    }
}
