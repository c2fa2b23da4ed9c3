//! The pipeline's decisions that both modes share, without I/O: whether an
//! accepted notification is owed a first attempt, and whether an automatic
//! job (a retry, or one that may already have been done: replayed,
//! re-submitted or redone after a crash) is still owed, and under which
//! number, given the attempts on record.
//!
//! These are the rules behind two promises: a receiver only ever gets the
//! stored request, and after exhaustion nothing is sent automatically. A
//! replay or a re-POST of a known event never opens a new retry chain.

use chrono::{DateTime, Utc};

use crate::{Attempt, DeliveryJob, Notification, NotificationState, Outcome, Status, Trigger};

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

/// What the attempts on record say about a notification: how the next
/// attempt is numbered, and where its automatic chain stands. Read before
/// every automatic retry (and before a job that may have been done), so
/// that numbers stay unique and gapless across automatic attempts and
/// manual re-sends, and so that at most one retry chain stays alive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// The highest attempt number on record, of every trigger: the next is
    /// `recorded + 1`.
    pub recorded: u32,
    /// Automatic steps (first attempt and retries) on record: distinct
    /// attempt numbers, so an attempt two workers both made (one lost its
    /// partition with the attempt in flight, the other found nothing on
    /// record yet) counts once.
    pub automatic: u32,
    /// Some attempt got a 2xx.
    pub delivered: bool,
    /// The latest automatic attempt failed and scheduled no retry.
    pub exhausted: bool,
    /// The retry the latest automatic attempt scheduled, if any.
    pub next_due: Option<DateTime<Utc>>,
    /// Start of the first failed automatic attempt: the retry age limit
    /// counts from here.
    pub first_failure_at: Option<DateTime<Utc>>,
}

impl History {
    /// The history of `attempts` (any order).
    pub fn of(attempts: &[Attempt]) -> Self {
        let mut automatic: Vec<&Attempt> = attempts
            .iter()
            .filter(|a| a.trigger != Trigger::Manual)
            .collect();
        automatic.sort_by_key(|a| (a.started_at, a.attempt_id));
        let latest = automatic.last();
        let failed = |a: &&&Attempt| a.outcome != Outcome::Success;
        let mut steps: Vec<u32> = automatic.iter().map(|a| a.attempt_no).collect();
        steps.sort_unstable();
        steps.dedup();
        Self {
            recorded: attempts
                .iter()
                .map(|a| a.attempt_no)
                .max()
                .unwrap_or(0)
                .min(u32::MAX - 1),
            automatic: u32::try_from(steps.len()).unwrap_or(u32::MAX - 1),
            delivered: attempts.iter().any(|a| a.outcome == Outcome::Success),
            exhausted: latest
                .is_some_and(|a| a.outcome != Outcome::Success && a.next_attempt_at.is_none()),
            next_due: latest.and_then(|a| a.next_attempt_at),
            first_failure_at: automatic.iter().find(failed).map(|a| a.started_at),
        }
    }

    /// The number of the next attempt, whatever its trigger.
    pub fn next_number(&self) -> u32 {
        self.recorded.saturating_add(1)
    }
}

/// What to do with an automatic job whose notification's history was read
/// before sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Still owed: make the attempt, numbered [`History::next_number`].
    Send,
    /// Not owed: the notification is delivered or exhausted, or this
    /// automatic step is already on record (another copy of the job made it).
    Skip(SkipReason),
    /// This step is on record and scheduled a retry, but the job was redone
    /// after a crash or rebalance, so that retry may never have been
    /// published: schedule automatic step `step` at `due_at` (checked again
    /// when it runs) instead of sending this one again.
    Resume { step: u32, due_at: DateTime<Utc> },
}

/// Why a job was skipped (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    Delivered,
    /// The step is on record already: another copy of the job made it.
    AlreadyAttempted,
    /// Retries exhausted.
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

/// Whether automatic step `step` (1 for the first attempt) is still owed,
/// given the notification's history.
///
/// Steps count automatic attempts only: a manual re-send in between takes
/// the next *number* but is not a step, so it neither closes the chain nor
/// makes the next retry look like a duplicate. `redone`: the job may have
/// been done by a worker that died or lost its partition before
/// committing. Only such a job resumes a chain whose next hop may be
/// missing; any other copy is a duplicate and is skipped.
pub fn verdict(history: &History, step: u32, redone: bool) -> Verdict {
    if history.delivered {
        return Verdict::Skip(SkipReason::Delivered);
    }
    if history.exhausted {
        return Verdict::Skip(SkipReason::Closed);
    }
    if history.automatic < step {
        return Verdict::Send;
    }
    match history.next_due {
        Some(due_at) if redone && history.automatic == step => Verdict::Resume {
            step: step + 1,
            due_at,
        },
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

    fn attempt(no: u32, trigger: Trigger, ok: bool, next: Option<i64>) -> Attempt {
        Attempt {
            notification_id: crate::NotificationId::derive("/s", "e", "w"),
            attempt_id: uuid::Uuid::from_u128(u128::from(no)),
            attempt_no: no,
            trigger,
            started_at: Utc.timestamp_opt(i64::from(no), 0).unwrap(),
            duration_ms: 1,
            outcome: if ok {
                Outcome::Success
            } else {
                Outcome::HttpError
            },
            http_status: None,
            error: None,
            response_excerpt: None,
            next_attempt_at: next.map(|s| Utc.timestamp_opt(s, 0).unwrap()),
        }
    }

    /// Found by the flapping-receivers chaos run: a worker lost its
    /// partition while its first attempt was in flight; the next owner,
    /// finding nothing on record yet, made the first attempt again. Both
    /// recorded attempt 1 and published a retry; both retries then took
    /// step 2 for done, and the notification was never attempted again.
    #[test]
    fn a_duplicated_attempt_is_one_step() {
        let mut dup = attempt(1, Trigger::Auto, false, Some(11));
        dup.attempt_id = uuid::Uuid::from_u128(99);
        dup.started_at = Utc.timestamp_opt(2, 0).unwrap();
        let h = History::of(&[attempt(1, Trigger::Auto, false, Some(10)), dup]);
        assert_eq!((h.recorded, h.automatic, h.next_number()), (1, 1, 2));
        assert_eq!(verdict(&h, 2, false), Verdict::Send, "step 2 is owed");
        assert_eq!(
            verdict(&h, 1, true),
            Verdict::Resume {
                step: 2,
                due_at: Utc.timestamp_opt(11, 0).unwrap()
            }
        );
    }

    #[test]
    fn history_counts_steps_apart_from_manual_resends() {
        let h = History::of(&[
            attempt(3, Trigger::Retry, false, Some(90)),
            attempt(1, Trigger::Auto, false, Some(10)),
            attempt(2, Trigger::Manual, false, None),
        ]);
        assert_eq!((h.recorded, h.automatic, h.next_number()), (3, 2, 4));
        assert!(
            !h.delivered && !h.exhausted,
            "a failed manual re-send closes nothing"
        );
        assert_eq!(h.next_due, Some(Utc.timestamp_opt(90, 0).unwrap()));
        assert_eq!(h.first_failure_at, Some(Utc.timestamp_opt(1, 0).unwrap()));
        assert_eq!(History::of(&[]), History::default());
        let exhausted = History::of(&[attempt(1, Trigger::Auto, false, None)]);
        assert!(exhausted.exhausted);
    }

    #[test]
    fn verdicts() {
        use Verdict::*;
        let a = |no, trigger, ok, next| attempt(no, trigger, ok, next);
        let h = |attempts: &[Attempt]| History::of(attempts);
        // Owed: the history expects exactly this step.
        assert_eq!(verdict(&History::default(), 1, false), Send);
        let one_failed = [a(1, Trigger::Auto, false, Some(9))];
        assert_eq!(verdict(&h(&one_failed), 2, false), Send);
        // A manual re-send in between is not a step.
        let with_manual = [
            a(1, Trigger::Auto, false, Some(9)),
            a(2, Trigger::Manual, false, None),
        ];
        assert_eq!(verdict(&h(&with_manual), 2, false), Send);
        for redone in [false, true] {
            // Delivered, by any attempt: never again automatically.
            let manual_ok = [
                a(1, Trigger::Auto, false, Some(9)),
                a(2, Trigger::Manual, true, None),
            ];
            assert_eq!(
                verdict(&h(&manual_ok), 2, redone),
                Skip(SkipReason::Delivered)
            );
            // Exhausted: nothing automatic, whatever the job's step.
            let closed = [
                a(1, Trigger::Auto, false, Some(9)),
                a(2, Trigger::Retry, false, None),
            ];
            assert_eq!(verdict(&h(&closed), 2, redone), Skip(SkipReason::Closed));
            assert_eq!(verdict(&h(&closed), 3, redone), Skip(SkipReason::Closed));
        }
        // A second copy of a step on record does not fork the chain...
        assert_eq!(
            verdict(&h(&one_failed), 1, false),
            Skip(SkipReason::AlreadyAttempted)
        );
        let two = [
            a(1, Trigger::Auto, false, Some(5)),
            a(2, Trigger::Retry, false, Some(9)),
        ];
        assert_eq!(
            verdict(&h(&two), 1, true),
            Skip(SkipReason::AlreadyAttempted)
        );
        // ...but a redone job resumes the chain its crash may have cut.
        assert_eq!(
            verdict(&h(&one_failed), 1, true),
            Resume {
                step: 2,
                due_at: Utc.timestamp_opt(9, 0).unwrap()
            }
        );
    }
}
