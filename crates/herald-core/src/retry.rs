//! Retry policy: which failures are retried ([`RetryOn`]), when
//! ([`Backoff`]), for how long (attempts and age), and which delayed-retry
//! tier topic a delay waits in ([`Tiers`]).

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::duration::{format_duration, parse_duration};
use crate::model::Outcome;

/// Configuration problems of a retry policy or tier list.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RetryConfigError {
    #[error("{0}")]
    Invalid(String),
}

/// The class of a failed attempt, as named in `retry_on`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// A 3xx response (redirects are not followed).
    Http3xx,
    /// A 4xx response.
    Http4xx,
    /// A 5xx response (and any other non-2xx status).
    Http5xx,
    Timeout,
    ConnectionError,
    TlsError,
    InvalidResponse,
    /// Refused before sending (SSRF guard, invalid URL, missing secret).
    Refused,
}

impl FailureClass {
    pub const ALL: [FailureClass; 8] = [
        FailureClass::Http3xx,
        FailureClass::Http4xx,
        FailureClass::Http5xx,
        FailureClass::Timeout,
        FailureClass::ConnectionError,
        FailureClass::TlsError,
        FailureClass::InvalidResponse,
        FailureClass::Refused,
    ];

    /// The name used in `retry_on`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Http3xx => "http_3xx",
            FailureClass::Http4xx => "http_4xx",
            FailureClass::Http5xx => "http_5xx",
            FailureClass::Timeout => "timeout",
            FailureClass::ConnectionError => "connection_error",
            FailureClass::TlsError => "tls_error",
            FailureClass::InvalidResponse => "invalid_response",
            FailureClass::Refused => "refused",
        }
    }

    /// The class of an outcome; `None` for success.
    pub fn of(outcome: Outcome, http_status: Option<u16>) -> Option<Self> {
        Some(match outcome {
            Outcome::Success => return None,
            Outcome::HttpError => match http_status {
                Some(300..=399) => FailureClass::Http3xx,
                Some(400..=499) => FailureClass::Http4xx,
                _ => FailureClass::Http5xx,
            },
            Outcome::Timeout => FailureClass::Timeout,
            Outcome::ConnectionError => FailureClass::ConnectionError,
            Outcome::TlsError => FailureClass::TlsError,
            Outcome::Refused => FailureClass::Refused,
            Outcome::InvalidResponse => FailureClass::InvalidResponse,
        })
    }
}

/// Classify an HTTP response status: only 2xx is a success; everything
/// else, 3xx included, is an [`Outcome::HttpError`].
pub fn classify_status(status: u16) -> Outcome {
    if (200..300).contains(&status) {
        Outcome::Success
    } else {
        Outcome::HttpError
    }
}

/// What a `410 Gone` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnGone {
    /// Treat it like any other 4xx (the reference product's behaviour).
    #[default]
    Retry,
    /// The endpoint is gone for good: stop retrying this notification.
    Stop,
}

/// "Should we retry?": which failure classes are retried, and what 410 does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryOn {
    pub classes: Vec<FailureClass>,
    pub on_gone: OnGone,
}

impl Default for RetryOn {
    fn default() -> Self {
        Self {
            classes: FailureClass::ALL.to_vec(),
            on_gone: OnGone::Retry,
        }
    }
}

impl RetryOn {
    /// `Ok` when the failure is worth another attempt, otherwise the reason
    /// not to.
    pub fn check(&self, outcome: Outcome, http_status: Option<u16>) -> Result<(), ExhaustedReason> {
        let Some(class) = FailureClass::of(outcome, http_status) else {
            return Err(ExhaustedReason::NotAFailure);
        };
        if http_status == Some(410) && self.on_gone == OnGone::Stop {
            return Err(ExhaustedReason::Gone);
        }
        if self.classes.contains(&class) {
            Ok(())
        } else {
            Err(ExhaustedReason::NotRetried { class })
        }
    }
}

/// "When?": exponential backoff with jitter, honouring `Retry-After`.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    /// Delay after the first failure.
    pub initial_delay: Duration,
    /// Growth per attempt.
    pub multiplier: f64,
    /// Upper bound of the computed delay.
    pub max_delay: Duration,
    /// Relative jitter: the delay is scaled by a uniform factor in
    /// `[1 - jitter, 1 + jitter]`, then capped by `max_delay`.
    pub jitter: f64,
    /// Upper bound for a receiver's `Retry-After`.
    pub retry_after_max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_secs(30),
            multiplier: 3.0,
            max_delay: Duration::from_secs(6 * 3600),
            jitter: 0.2,
            retry_after_max: Duration::from_secs(6 * 3600),
        }
    }
}

impl Backoff {
    /// The delay before the attempt after `failed_attempt` (1-based).
    ///
    /// `random` is a uniform sample from `[0, 1)`, passed in so the policy
    /// stays deterministic under test. A `Retry-After` (already parsed) is a
    /// lower bound: we never retry earlier than the receiver asked, but we
    /// never wait longer than `retry_after_max` because of it.
    pub fn delay(
        &self,
        failed_attempt: u32,
        retry_after: Option<Duration>,
        random: f64,
    ) -> Duration {
        let exp = failed_attempt.saturating_sub(1).min(64) as i32;
        let base = self.initial_delay.as_secs_f64() * self.multiplier.powi(exp);
        let random = if random.is_finite() {
            random.clamp(0.0, 1.0)
        } else {
            0.5
        };
        let factor = 1.0 + self.jitter * (2.0 * random - 1.0);
        let max = self.max_delay.as_secs_f64();
        let secs = (base * factor).clamp(0.0, max);
        let mut delay = Duration::try_from_secs_f64(secs).unwrap_or(self.max_delay);
        // Whole milliseconds: due times travel as epoch millis.
        delay = Duration::from_millis(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
        if let Some(asked) = retry_after {
            delay = delay.max(asked.min(self.retry_after_max));
        }
        delay
    }
}

/// Parse a `Retry-After` value: delay-seconds or an HTTP-date (IMF-fixdate,
/// RFC 850 or asctime). A date in the past means zero. `None` when the
/// value is neither.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = DateTime::parse_from_rfc2822(value)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            ["%A, %d-%b-%y %H:%M:%S GMT", "%a %b %e %H:%M:%S %Y"]
                .iter()
                .find_map(|fmt| NaiveDateTime::parse_from_str(value, fmt).ok())
                .map(|naive| naive.and_utc())
        })?;
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

/// Why no further automatic attempt is made.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ExhaustedReason {
    #[error("the attempt succeeded")]
    NotAFailure,
    #[error("{} failures are not retried by this webhook's policy", .class.as_str())]
    NotRetried { class: FailureClass },
    #[error("the endpoint answered 410 gone")]
    Gone,
    #[error("reached the maximum of {max_attempts} attempts")]
    MaxAttempts { max_attempts: u32 },
    #[error("the next attempt would be due after the maximum age of {}", format_duration(*.max_age))]
    MaxAge { max_age: Duration },
    #[error("a manual re-send is a single attempt")]
    ManualResend,
    #[error("the webhook is no longer defined")]
    UnknownWebhook,
}

/// The result of deciding about a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The attempt succeeded: nothing more to do.
    Delivered,
    /// Try again at `due_at` (exact), waiting in tier topic `tier`.
    Retry {
        delay: Duration,
        due_at: DateTime<Utc>,
        tier: Tier,
    },
    /// Stop: no further automatic attempt.
    Exhausted { reason: ExhaustedReason },
}

/// The facts about an attempt that the policy decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptReport {
    /// 1-based number of the attempt that just finished.
    pub attempt_no: u32,
    pub outcome: Outcome,
    pub http_status: Option<u16>,
    /// The response's `Retry-After`, parsed with [`parse_retry_after`].
    pub retry_after: Option<Duration>,
    /// When the first failure of this notification happened; `None` when
    /// this attempt is the first failure. `max_age` counts from here.
    pub first_failure_at: Option<DateTime<Utc>>,
    /// When the attempt finished.
    pub now: DateTime<Utc>,
}

/// A complete retry policy.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub retry_on: RetryOn,
    pub backoff: Backoff,
    /// Total attempts, the first one included.
    pub max_attempts: u32,
    /// No retry is scheduled later than this after the first failure.
    pub max_age: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            retry_on: RetryOn::default(),
            backoff: Backoff::default(),
            max_attempts: 10,
            max_age: Duration::from_secs(24 * 3600),
        }
    }
}

impl RetryPolicy {
    /// Decide what happens after an attempt. `random` is a uniform sample
    /// from `[0, 1)` for the jitter.
    pub fn decide(&self, report: &AttemptReport, tiers: &Tiers, random: f64) -> Decision {
        if report.outcome == Outcome::Success {
            return Decision::Delivered;
        }
        if let Err(reason) = self.retry_on.check(report.outcome, report.http_status) {
            return Decision::Exhausted { reason };
        }
        if report.attempt_no >= self.max_attempts {
            return Decision::Exhausted {
                reason: ExhaustedReason::MaxAttempts {
                    max_attempts: self.max_attempts,
                },
            };
        }
        let delay = self
            .backoff
            .delay(report.attempt_no, report.retry_after, random);
        let chrono_delay = chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
        let Some(due_at) = report.now.checked_add_signed(chrono_delay) else {
            return Decision::Exhausted {
                reason: ExhaustedReason::MaxAge {
                    max_age: self.max_age,
                },
            };
        };
        let origin = report.first_failure_at.unwrap_or(report.now);
        let age = (due_at - origin).to_std().unwrap_or(Duration::ZERO);
        if age > self.max_age {
            return Decision::Exhausted {
                reason: ExhaustedReason::MaxAge {
                    max_age: self.max_age,
                },
            };
        }
        Decision::Retry {
            delay,
            due_at,
            tier: tiers.for_delay(delay).clone(),
        }
    }
}

/// One delayed-retry tier: a topic in which every message waits about
/// `delay`. Its name is the topic suffix (`herald.retry.<name>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tier {
    pub name: String,
    pub delay: Duration,
}

/// The tiers, sorted by delay. Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tiers(Vec<Tier>);

impl Default for Tiers {
    /// `10s`, `1m`, `10m`, `1h`, `6h`.
    fn default() -> Self {
        Self::parse(&["10s", "1m", "10m", "1h", "6h"]).expect("default tiers are valid")
    }
}

impl Tiers {
    /// Tiers from duration strings; each tier is named by its canonical
    /// duration (`"60s"` becomes `1m`).
    pub fn parse<S: AsRef<str>>(delays: &[S]) -> Result<Self, RetryConfigError> {
        let delays = delays
            .iter()
            .map(|d| {
                parse_duration(d.as_ref())
                    .map_err(|e| RetryConfigError::Invalid(format!("retry tier: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(delays)
    }

    pub fn new(mut delays: Vec<Duration>) -> Result<Self, RetryConfigError> {
        if delays.is_empty() {
            return Err(RetryConfigError::Invalid(
                "at least one retry tier is required".into(),
            ));
        }
        delays.sort();
        if delays.windows(2).any(|w| w[0] == w[1]) {
            return Err(RetryConfigError::Invalid("duplicate retry tier".into()));
        }
        if delays[0].is_zero() {
            return Err(RetryConfigError::Invalid(
                "retry tiers must be longer than zero".into(),
            ));
        }
        if delays.iter().any(|d| *d > LONGEST_WAIT) {
            return Err(RetryConfigError::Invalid(format!(
                "retry tiers must be at most {}",
                format_duration(LONGEST_WAIT)
            )));
        }
        Ok(Self(
            delays
                .into_iter()
                .map(|delay| Tier {
                    name: format_duration(delay),
                    delay,
                })
                .collect(),
        ))
    }

    pub fn as_slice(&self) -> &[Tier] {
        &self.0
    }

    /// The largest tier not longer than `delay`; the smallest tier when the
    /// delay is shorter than all of them. The tier decides only where the job
    /// waits: its due time stays exact.
    pub fn for_delay(&self, delay: Duration) -> &Tier {
        self.0
            .iter()
            .rev()
            .find(|t| t.delay <= delay)
            .unwrap_or(&self.0[0])
    }

    pub fn by_name(&self, name: &str) -> Option<&Tier> {
        self.0.iter().find(|t| t.name == name)
    }

    /// The shortest tier: a job due within its delay is held in memory
    /// rather than waiting in a topic.
    pub fn smallest(&self) -> &Tier {
        &self.0[0]
    }

    /// The cascade: what a consumer of `tier` does with a message produced
    /// (appended) at `produced_at` and due at `due` (its `herald-due-at`
    /// header, `None` when missing or unreadable), decided without decoding
    /// the job. A message waits in its tier at most the tier's delay, then
    /// hops, unchanged, to the tier that fits what is left, so each tier
    /// partition is first in, first out by release time and a head never
    /// holds back a message behind it beyond that message's own time in the
    /// tier. `latest_due` bounds a believable due time: beyond it (a forged
    /// or corrupt header) the message is refused, never waited on for ever.
    pub fn step(
        &self,
        tier: &Tier,
        produced_at: DateTime<Utc>,
        due: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        latest_due: DateTime<Utc>,
    ) -> TierStep {
        let Some(due) = due else {
            return TierStep::Refuse(format!(
                "missing or unreadable {DUE_AT_HEADER} header on a retry-tier message"
            ));
        };
        if due > latest_due {
            return TierStep::Refuse(format!(
                "{DUE_AT_HEADER} {} is later than any retry or cool-down allows ({})",
                due.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                latest_due.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            ));
        }
        if due <= now {
            return TierStep::Run;
        }
        let hold = chrono::Duration::from_std(self.smallest().delay).unwrap_or_default();
        if due - now <= hold {
            return TierStep::Hold { at: due };
        }
        let stay = chrono::Duration::from_std(tier.delay).unwrap_or(chrono::Duration::MAX);
        let hop_at = produced_at.checked_add_signed(stay).unwrap_or(due);
        if hop_at <= now {
            let left = (due - now).to_std().unwrap_or_default();
            return TierStep::Hop {
                tier: self.for_delay(left).clone(),
            };
        }
        TierStep::Wait {
            until: hop_at.min(due - hold),
        }
    }
}

/// The longest any single wait may be: a retry tier, a retry delay, a
/// `Retry-After`, the retry age limit, a circuit cool-down. Longer settings
/// are refused: a due time further away is not one Herald wrote, and timers
/// have a range.
pub const LONGEST_WAIT: Duration = Duration::from_secs(30 * 24 * 3600);

/// The header a tier consumer reads the due time from (Unix milliseconds).
const DUE_AT_HEADER: &str = "herald-due-at";

/// What to do with a retry-tier message ([`Tiers::step`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TierStep {
    /// Due: decode it and attempt it now.
    Run,
    /// Due within the smallest tier's delay: take it now and attempt it at
    /// `at`, held in memory and uncommitted, so a crash redoes it.
    Hold { at: DateTime<Utc> },
    /// Its time in this tier is over and it is not due: republish it
    /// unchanged to `tier`.
    Hop { tier: Tier },
    /// Not yet: the partition waits until `until`.
    Wait { until: DateTime<Utc> },
    /// Dead-letter it with this reason.
    Refuse(String),
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap()
    }

    fn report(attempt_no: u32, outcome: Outcome, status: Option<u16>) -> AttemptReport {
        AttemptReport {
            attempt_no,
            outcome,
            http_status: status,
            retry_after: None,
            first_failure_at: None,
            now: t0(),
        }
    }

    fn no_jitter() -> RetryPolicy {
        let mut p = RetryPolicy::default();
        p.backoff.jitter = 0.0;
        p
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn the_cascade_waits_at_most_the_tier_then_hops_to_what_is_left() {
        let tiers = Tiers::parse(&["1s", "10s", "100s"]).unwrap();
        let tier = |n: &str| {
            let d = crate::duration::parse_duration(n).unwrap();
            tiers.for_delay(d).clone()
        };
        let at = |ms: i64| t0() + chrono::Duration::milliseconds(ms);
        let latest = at(6 * 3_600_000);
        let step = |t: &str, produced, due, now| {
            tiers.step(&tier(t), at(produced), Some(at(due)), at(now), latest)
        };
        // Produced at 0 into the 10s tier, due at 95 s: waits its 10 s,
        // then hops to the tier that fits the 85 s left.
        assert_eq!(
            step("10s", 0, 95_000, 0),
            TierStep::Wait { until: at(10_000) }
        );
        assert_eq!(
            step("10s", 0, 95_000, 10_000),
            TierStep::Hop { tier: tier("10s") }
        );
        assert_eq!(
            step("10s", 0, 250_000, 10_000),
            TierStep::Hop { tier: tier("100s") }
        );
        // A head due in 5 h waits 100 s in the 100s tier, not 5 h.
        assert_eq!(
            step("100s", 0, 5 * 3_600_000, 0),
            TierStep::Wait { until: at(100_000) }
        );
        // Near the end: the 1s tier, then held in memory for the last second.
        assert_eq!(
            step("100s", 0, 105_500, 100_000),
            TierStep::Hop { tier: tier("1s") }
        );
        assert_eq!(
            step("1s", 100_000, 105_500, 101_000),
            TierStep::Hop { tier: tier("1s") }
        );
        assert_eq!(
            step("1s", 104_000, 105_500, 104_800),
            TierStep::Hold { at: at(105_500) }
        );
        // Due before its time in the tier is over: waits until it is within
        // the hold window, never past its due time.
        assert_eq!(
            step("10s", 0, 5_000, 0),
            TierStep::Wait { until: at(4_000) }
        );
        assert_eq!(
            step("10s", 0, 5_000, 4_000),
            TierStep::Hold { at: at(5_000) }
        );
        assert_eq!(step("10s", 0, 5_000, 5_000), TierStep::Run);
        assert_eq!(step("10s", 0, 5_000, 9_000), TierStep::Run);
    }

    #[test]
    fn a_forged_or_missing_due_time_is_refused() {
        let tiers = Tiers::parse(&["1s", "10s"]).unwrap();
        let t = tiers.by_name("10s").unwrap();
        let latest = t0() + chrono::Duration::hours(7);
        let far = DateTime::<Utc>::MAX_UTC;
        let TierStep::Refuse(why) = tiers.step(t, t0(), Some(far), t0(), latest) else {
            panic!("a far-future due time must be refused");
        };
        assert!(why.contains("later than any retry"), "{why}");
        assert!(matches!(
            tiers.step(t, t0(), None, t0(), latest),
            TierStep::Refuse(_)
        ));
        // The bound itself is fine.
        assert_eq!(
            tiers.step(t, t0(), Some(latest), t0(), latest),
            TierStep::Wait {
                until: t0() + chrono::Duration::seconds(10)
            }
        );
    }

    proptest! {
        /// Following the steps from any tier for any delay ends exactly at
        /// the due time: never earlier, every wait within its tier's delay.
        #[test]
        fn the_cascade_ends_on_time(due_ms in 0i64..(6 * 3_600_000), late_ms in 0i64..50) {
            let tiers = Tiers::default();
            let at = |ms: i64| t0() + chrono::Duration::milliseconds(ms);
            let latest = at(7 * 3_600_000);
            let mut tier = tiers.for_delay(Duration::from_millis(due_ms as u64)).clone();
            let (mut produced, mut now) = (at(0), at(0));
            for _ in 0..200 {
                match tiers.step(&tier, produced, Some(at(due_ms)), now, latest) {
                    TierStep::Run => {
                        prop_assert!(now >= at(due_ms));
                        return Ok(());
                    }
                    TierStep::Hold { at: when } => {
                        prop_assert_eq!(when, at(due_ms));
                        prop_assert!(when - now <= chrono::Duration::seconds(10));
                        return Ok(());
                    }
                    TierStep::Wait { until } => {
                        prop_assert!(until > now);
                        prop_assert!(until <= produced + chrono::Duration::from_std(tier.delay).unwrap());
                        // The consumer wakes a little late, never early.
                        now = until + chrono::Duration::milliseconds(late_ms);
                    }
                    TierStep::Hop { tier: next } => {
                        tier = next;
                        produced = now;
                    }
                    TierStep::Refuse(why) => prop_assert!(false, "{}", why),
                }
            }
            prop_assert!(false, "did not end within 200 steps");
        }
    }

    #[test]
    fn classifies_statuses() {
        assert_eq!(classify_status(200), Outcome::Success);
        assert_eq!(classify_status(204), Outcome::Success);
        assert_eq!(classify_status(301), Outcome::HttpError);
        assert_eq!(classify_status(404), Outcome::HttpError);
        assert_eq!(classify_status(503), Outcome::HttpError);
        assert_eq!(
            FailureClass::of(Outcome::HttpError, Some(302)),
            Some(FailureClass::Http3xx)
        );
        assert_eq!(
            FailureClass::of(Outcome::HttpError, Some(429)),
            Some(FailureClass::Http4xx)
        );
        assert_eq!(
            FailureClass::of(Outcome::HttpError, Some(500)),
            Some(FailureClass::Http5xx)
        );
        assert_eq!(
            FailureClass::of(Outcome::Timeout, None),
            Some(FailureClass::Timeout)
        );
        assert_eq!(FailureClass::of(Outcome::Success, Some(200)), None);
    }

    #[test]
    fn everything_is_retried_by_default() {
        let on = RetryOn::default();
        for (o, s) in [
            (Outcome::HttpError, Some(301)),
            (Outcome::HttpError, Some(400)),
            (Outcome::HttpError, Some(410)),
            (Outcome::HttpError, Some(503)),
            (Outcome::Timeout, None),
            (Outcome::ConnectionError, None),
            (Outcome::TlsError, None),
            (Outcome::InvalidResponse, None),
            (Outcome::Refused, None),
        ] {
            assert_eq!(on.check(o, s), Ok(()), "{o} {s:?}");
        }
        assert_eq!(
            on.check(Outcome::Success, Some(200)),
            Err(ExhaustedReason::NotAFailure)
        );
    }

    #[test]
    fn retried_classes_and_gone_are_configurable() {
        let on = RetryOn {
            classes: vec![FailureClass::Http5xx, FailureClass::Timeout],
            on_gone: OnGone::Stop,
        };
        assert_eq!(on.check(Outcome::HttpError, Some(502)), Ok(()));
        let err = on.check(Outcome::HttpError, Some(400)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "http_4xx failures are not retried by this webhook's policy"
        );
        assert_eq!(
            on.check(Outcome::HttpError, Some(410)),
            Err(ExhaustedReason::Gone)
        );
        assert_eq!(
            ExhaustedReason::Gone.to_string(),
            "the endpoint answered 410 gone"
        );
    }

    #[test]
    fn backoff_grows_exponentially_up_to_the_cap() {
        let b = no_jitter().backoff;
        let delays: Vec<_> = (1..=8).map(|n| b.delay(n, None, 0.5)).collect();
        assert_eq!(
            delays,
            [
                S(30),
                S(90),
                S(270),
                S(810),
                S(2430),
                S(7290),
                S(21600),
                S(21600)
            ]
        );
        assert_eq!(b.delay(u32::MAX, None, 0.5), S(21600));
    }

    #[test]
    fn jitter_stays_within_its_band() {
        let b = Backoff::default();
        assert_eq!(b.delay(1, None, 0.0), S(24));
        assert_eq!(b.delay(1, None, 0.5), S(30));
        assert_eq!(b.delay(1, None, 0.999_999_9), Duration::from_millis(35_999));
        assert_eq!(b.delay(1, None, f64::NAN), S(30));
        assert_eq!(b.delay(1, None, 7.0), S(36));
    }

    #[test]
    fn retry_after_is_a_lower_bound_capped_by_the_maximum() {
        let mut b = no_jitter().backoff;
        b.retry_after_max = S(600);
        assert_eq!(b.delay(1, Some(S(120)), 0.5), S(120));
        assert_eq!(b.delay(1, Some(S(5)), 0.5), S(30));
        assert_eq!(b.delay(1, Some(S(86_400)), 0.5), S(600));
    }

    #[test]
    fn parses_retry_after_in_both_forms() {
        let now = Utc.with_ymd_and_hms(2015, 10, 21, 7, 28, 0).unwrap();
        assert_eq!(parse_retry_after("120", now), Some(S(120)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(S(0)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:30:00 GMT", now),
            Some(S(120))
        );
        assert_eq!(
            parse_retry_after("Wednesday, 21-Oct-15 07:30:00 GMT", now),
            Some(S(120))
        );
        assert_eq!(
            parse_retry_after("Wed Oct 21 07:30:00 2015", now),
            Some(S(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(S(0))
        );
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("", now), None);
    }

    #[test]
    fn decide_retries_with_an_exact_due_time_and_a_tier() {
        let p = no_jitter();
        let tiers = Tiers::default();
        let d = p.decide(&report(1, Outcome::HttpError, Some(503)), &tiers, 0.5);
        assert_eq!(
            d,
            Decision::Retry {
                delay: S(30),
                due_at: t0() + chrono::Duration::seconds(30),
                tier: tiers.by_name("10s").unwrap().clone(),
            }
        );
        let Decision::Retry { tier, .. } =
            p.decide(&report(4, Outcome::Timeout, None), &tiers, 0.5)
        else {
            panic!("expected a retry");
        };
        assert_eq!(tier.name, "10m"); // 810s
        assert_eq!(
            p.decide(&report(1, Outcome::Success, Some(200)), &tiers, 0.5),
            Decision::Delivered
        );
    }

    #[test]
    fn decide_stops_at_max_attempts_and_max_age() {
        let p = no_jitter();
        let tiers = Tiers::default();
        let d = p.decide(&report(10, Outcome::HttpError, Some(500)), &tiers, 0.5);
        assert_eq!(
            d,
            Decision::Exhausted {
                reason: ExhaustedReason::MaxAttempts { max_attempts: 10 }
            }
        );
        assert_eq!(
            ExhaustedReason::MaxAttempts { max_attempts: 10 }.to_string(),
            "reached the maximum of 10 attempts"
        );
        let mut r = report(7, Outcome::HttpError, Some(500));
        r.first_failure_at = Some(t0() - chrono::Duration::hours(20));
        let d = p.decide(&r, &tiers, 0.5);
        assert_eq!(
            d,
            Decision::Exhausted {
                reason: ExhaustedReason::MaxAge { max_age: S(86_400) }
            }
        );
        assert_eq!(
            ExhaustedReason::MaxAge { max_age: S(86_400) }.to_string(),
            "the next attempt would be due after the maximum age of 1d"
        );
        r.first_failure_at = Some(t0() - chrono::Duration::hours(10));
        assert!(matches!(p.decide(&r, &tiers, 0.5), Decision::Retry { .. }));
    }

    #[test]
    fn decide_keeps_should_separate_from_when() {
        let mut p = no_jitter();
        p.retry_on.classes = vec![FailureClass::Http5xx];
        let d = p.decide(
            &report(1, Outcome::HttpError, Some(404)),
            &Tiers::default(),
            0.5,
        );
        assert_eq!(
            d,
            Decision::Exhausted {
                reason: ExhaustedReason::NotRetried {
                    class: FailureClass::Http4xx
                }
            }
        );
    }

    #[test]
    fn tiers_map_to_the_largest_not_above_with_a_floor() {
        let tiers = Tiers::default();
        let names: Vec<_> = tiers.as_slice().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["10s", "1m", "10m", "1h", "6h"]);
        let name = |d| tiers.for_delay(d).name.clone();
        assert_eq!(name(S(1)), "10s");
        assert_eq!(name(S(10)), "10s");
        assert_eq!(name(S(59)), "10s");
        assert_eq!(name(S(60)), "1m");
        assert_eq!(name(S(3599)), "10m");
        assert_eq!(name(S(7 * 3600)), "6h");
        assert_eq!(
            Tiers::parse(&["60s", "5s"]).unwrap().as_slice()[1].name,
            "1m"
        );
        assert_eq!(
            Tiers::parse::<&str>(&[]).unwrap_err().to_string(),
            "at least one retry tier is required"
        );
        assert_eq!(
            Tiers::parse(&["1m", "60s"]).unwrap_err().to_string(),
            "duplicate retry tier"
        );
        assert_eq!(
            Tiers::parse(&["0s"]).unwrap_err().to_string(),
            "retry tiers must be longer than zero"
        );
        assert_eq!(
            Tiers::parse(&["1x"]).unwrap_err().to_string(),
            "retry tier: invalid duration \"1x\": unknown unit \"x\" (expected ms, s, m, h or d)"
        );
    }

    proptest! {
        #[test]
        fn tier_mapping_is_monotonic_and_never_longer_than_the_delay(
            tier_secs in proptest::collection::btree_set(1u64..100_000, 1..8),
            a in 0u64..200_000,
            b in 0u64..200_000,
        ) {
            let tiers = Tiers::new(tier_secs.into_iter().map(S).collect()).unwrap();
            let (lo, hi) = (a.min(b), a.max(b));
            let (tlo, thi) = (tiers.for_delay(S(lo)), tiers.for_delay(S(hi)));
            prop_assert!(tlo.delay <= thi.delay);
            let smallest = tiers.as_slice()[0].delay;
            for (d, t) in [(lo, tlo), (hi, thi)] {
                if S(d) >= smallest {
                    prop_assert!(t.delay <= S(d));
                    // and it is the largest such tier
                    prop_assert!(tiers.as_slice().iter().all(|x| x.delay > S(d) || x.delay <= t.delay));
                } else {
                    prop_assert_eq!(t.delay, smallest);
                }
            }
        }

        #[test]
        fn due_time_is_exact_and_never_before_now(
            attempt in 1u32..9,
            random in 0.0f64..1.0,
            retry_after in proptest::option::of(0u64..100_000),
        ) {
            let p = RetryPolicy { max_age: S(10 * 86_400), ..RetryPolicy::default() };
            let mut r = report(attempt, Outcome::HttpError, Some(503));
            r.retry_after = retry_after.map(S);
            match p.decide(&r, &Tiers::default(), random) {
                Decision::Retry { delay, due_at, .. } => {
                    prop_assert_eq!(due_at, t0() + chrono::Duration::from_std(delay).unwrap());
                    prop_assert!(delay <= p.backoff.max_delay.max(p.backoff.retry_after_max));
                }
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }
    }
}
