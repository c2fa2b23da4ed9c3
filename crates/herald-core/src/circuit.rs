//! Per-destination circuit breaker: a webhook whose endpoint keeps failing is
//! paused (its jobs parked, not attempted) for a cool-down, then tried with a
//! few probes, and closed again when they succeed.
//!
//! Pure state: every call takes `now`, so the machine is tested without
//! sleeping, and the services decide how to park (retry tier or due time)
//! and how to share state changes between workers ([`CircuitChange`]).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::Outcome;

/// Most outcomes kept in one webhook's window, so a busy endpoint's window
/// stays bounded in memory; the oldest fall out first.
const MAX_WINDOW_ENTRIES: usize = 10_000;

/// A webhook's breaker settings (`[webhooks.circuit]`, defaults in
/// `[defaults.circuit]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CircuitConfig {
    /// `false` turns the breaker off: every job is attempted.
    pub enabled: bool,
    /// How far back failures are counted.
    #[serde(with = "millis")]
    pub window: Duration,
    /// Failures within `window` needed to open (together with the ratio).
    pub failure_threshold: u32,
    /// Share of the attempts within `window` that must have failed to open,
    /// in `(0, 1]`.
    pub failure_ratio: f64,
    /// A 2xx slower than this counts as a failure. `None`: never.
    #[serde(with = "opt_millis")]
    pub slow_threshold: Option<Duration>,
    /// How long the circuit stays open before probing.
    #[serde(with = "millis")]
    pub cooldown: Duration,
    /// Trial requests let through when half-open; all must succeed to close.
    pub half_open_probes: u32,
}

impl Default for CircuitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            window: Duration::from_secs(60),
            failure_threshold: 10,
            failure_ratio: 0.5,
            slow_threshold: None,
            cooldown: Duration::from_secs(30),
            half_open_probes: 1,
        }
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

mod opt_millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<u64>::deserialize(d).map(|o| o.map(Duration::from_millis))
    }
}

/// Where a circuit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    /// Normal: every job is attempted.
    Closed,
    /// Failing: jobs are parked until the cool-down ends.
    Open,
    /// Cool-down over: a few probes go through, the rest stay parked.
    HalfOpen,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }

    /// The value of the state gauge: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> i64 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::HalfOpen => 1,
            CircuitState::Open => 2,
        }
    }
}

/// What to do with a job of this webhook now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Attempt it.
    Send,
    /// Attempt it as a half-open trial; report its result with `probe`.
    Probe,
    /// Do not attempt it: park it until `until`, attempt number unchanged.
    Park { until: DateTime<Utc> },
}

/// What an attempt says about the endpoint's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Success,
    Failure,
    /// Says nothing about the endpoint (refused before sending: SSRF guard,
    /// missing secret, unknown webhook).
    Neutral,
}

impl Signal {
    /// Non-2xx, timeouts, connection, TLS and invalid responses are
    /// failures; a 2xx slower than `slow_threshold` is one too.
    pub fn of(outcome: Outcome, duration: Duration, config: &CircuitConfig) -> Self {
        match outcome {
            Outcome::Success => match config.slow_threshold {
                Some(t) if duration > t => Signal::Failure,
                _ => Signal::Success,
            },
            Outcome::Refused => Signal::Neutral,
            Outcome::HttpError
            | Outcome::Timeout
            | Outcome::ConnectionError
            | Outcome::TlsError
            | Outcome::InvalidResponse => Signal::Failure,
        }
    }
}

/// A state change: logged once, counted, and in Kafka mode published to the
/// compacted circuits topic (key: webhook id) so every worker follows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CircuitChange {
    pub webhook_id: String,
    pub state: CircuitState,
    /// When the state was entered. Later changes win.
    pub since: DateTime<Utc>,
    /// End of the cool-down (open only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    /// The worker (or `operator:<name>`) that made the change.
    pub changed_by: String,
    /// Why, for operators: the failure counts, a probe's result, a command.
    pub reason: String,
}

/// One webhook's breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    config: CircuitConfig,
    state: CircuitState,
    since: DateTime<Utc>,
    until: Option<DateTime<Utc>>,
    changed_by: String,
    reason: String,
    /// Closed: recent outcomes (time, failed).
    window: VecDeque<(DateTime<Utc>, bool)>,
    failures: u32,
    /// Half-open: probes let through and probes that succeeded.
    probes_started: u32,
    probes_ok: u32,
}

/// What a breaker's state looks like from outside.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CircuitView {
    pub webhook_id: String,
    pub state: CircuitState,
    pub since: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    pub changed_by: String,
    pub reason: String,
    /// Attempts and failures in the current window (closed only).
    pub window_attempts: usize,
    pub window_failures: u32,
    pub config: CircuitConfig,
}

impl Breaker {
    pub fn new(config: CircuitConfig, now: DateTime<Utc>) -> Self {
        Self {
            config,
            state: CircuitState::Closed,
            since: now,
            until: None,
            changed_by: String::new(),
            reason: "start".into(),
            window: VecDeque::new(),
            failures: 0,
            probes_started: 0,
            probes_ok: 0,
        }
    }

    pub fn state(&self) -> CircuitState {
        self.state
    }

    pub fn config(&self) -> &CircuitConfig {
        &self.config
    }

    fn cooldown_end(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now + chrono::Duration::from_std(self.config.cooldown).unwrap_or(chrono::Duration::MAX)
    }

    fn enter(
        &mut self,
        state: CircuitState,
        now: DateTime<Utc>,
        until: Option<DateTime<Utc>>,
        by: &str,
        reason: String,
    ) -> (CircuitState, DateTime<Utc>, Option<DateTime<Utc>>, String) {
        self.state = state;
        self.since = now;
        self.until = until;
        self.changed_by = by.to_owned();
        self.reason = reason.clone();
        self.window.clear();
        self.failures = 0;
        self.probes_started = 0;
        self.probes_ok = 0;
        (state, now, until, reason)
    }

    /// May a job be attempted now? Moves an open circuit whose cool-down is
    /// over to half-open (the returned change).
    fn admit(&mut self, now: DateTime<Utc>, by: &str) -> (Admission, Option<Change>) {
        if !self.config.enabled {
            return (Admission::Send, None);
        }
        let mut change = None;
        if self.state == CircuitState::Open && self.until.is_none_or(|u| now >= u) {
            change = Some(self.enter(
                CircuitState::HalfOpen,
                now,
                None,
                by,
                "cool-down over: probing".into(),
            ));
        }
        let admission = match self.state {
            CircuitState::Closed => Admission::Send,
            CircuitState::Open => Admission::Park {
                until: self.until.unwrap_or(now),
            },
            CircuitState::HalfOpen => {
                // A probe that never reported (its worker died) must not keep
                // the circuit half-open for ever: after a cool-down, probe again.
                if self.probes_started >= self.config.half_open_probes
                    && now >= self.cooldown_end(self.since)
                {
                    self.since = now;
                    self.probes_started = self.probes_ok;
                }
                if self.probes_started < self.config.half_open_probes {
                    self.probes_started += 1;
                    Admission::Probe
                } else {
                    Admission::Park {
                        until: self.cooldown_end(now),
                    }
                }
            }
        };
        (admission, change)
    }

    /// The result of an attempt admitted by [`Breaker::admit`].
    fn record(
        &mut self,
        now: DateTime<Utc>,
        signal: Signal,
        probe: bool,
        by: &str,
    ) -> Option<Change> {
        if !self.config.enabled {
            return None;
        }
        match (self.state, probe) {
            (CircuitState::HalfOpen, true) => match signal {
                Signal::Success => {
                    self.probes_ok += 1;
                    (self.probes_ok >= self.config.half_open_probes).then(|| {
                        self.enter(
                            CircuitState::Closed,
                            now,
                            None,
                            by,
                            format!("{} probe(s) succeeded", self.probes_ok),
                        )
                    })
                }
                Signal::Failure => {
                    let until = self.cooldown_end(now);
                    Some(self.enter(
                        CircuitState::Open,
                        now,
                        Some(until),
                        by,
                        "probe failed".into(),
                    ))
                }
                Signal::Neutral => {
                    // Give the slot back: this probe told us nothing.
                    self.probes_started = self.probes_started.saturating_sub(1);
                    None
                }
            },
            (CircuitState::Closed, false) => {
                let failed = match signal {
                    Signal::Success => false,
                    Signal::Failure => true,
                    Signal::Neutral => return None,
                };
                self.window.push_back((now, failed));
                self.failures += u32::from(failed);
                let horizon = now
                    - chrono::Duration::from_std(self.config.window)
                        .unwrap_or(chrono::Duration::MAX);
                while let Some(&(t, f)) = self.window.front() {
                    if t >= horizon && self.window.len() <= MAX_WINDOW_ENTRIES {
                        break;
                    }
                    self.window.pop_front();
                    self.failures -= u32::from(f);
                }
                let total = self.window.len() as f64;
                if failed
                    && self.failures >= self.config.failure_threshold
                    && f64::from(self.failures) >= self.config.failure_ratio * total
                {
                    let reason = format!(
                        "{} of {} attempts failed within {}",
                        self.failures,
                        self.window.len(),
                        crate::duration::format_duration(self.config.window)
                    );
                    let until = self.cooldown_end(now);
                    return Some(self.enter(CircuitState::Open, now, Some(until), by, reason));
                }
                None
            }
            // Results of attempts that started before the state changed say
            // nothing about the current state.
            _ => None,
        }
    }
}

type Change = (CircuitState, DateTime<Utc>, Option<DateTime<Utc>>, String);

/// Every webhook's breaker, and the changes not yet published or logged.
#[derive(Debug)]
pub struct Circuits {
    /// This worker's name in [`CircuitChange::changed_by`].
    instance: String,
    breakers: BTreeMap<String, Breaker>,
    changes: Vec<CircuitChange>,
}

impl Circuits {
    /// Breakers for the given webhooks, all closed.
    pub fn new(
        instance: impl Into<String>,
        configs: impl IntoIterator<Item = (String, CircuitConfig)>,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            instance: instance.into(),
            breakers: configs
                .into_iter()
                .map(|(id, c)| (id, Breaker::new(c, now)))
                .collect(),
            changes: Vec::new(),
        }
    }

    /// Breakers for every webhook of a definition file.
    pub fn for_webhooks(
        instance: impl Into<String>,
        webhooks: &crate::Webhooks,
        now: DateTime<Utc>,
    ) -> Self {
        Self::new(
            instance,
            webhooks.iter().map(|w| (w.id.clone(), w.circuit.clone())),
            now,
        )
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    fn push(&mut self, webhook_id: &str, change: Option<Change>, by: &str) {
        if let Some((state, since, until, reason)) = change {
            self.changes.push(CircuitChange {
                webhook_id: webhook_id.to_owned(),
                state,
                since,
                until,
                changed_by: by.to_owned(),
                reason,
            });
        }
    }

    /// May a job of `webhook_id` be attempted now? Unknown webhooks are
    /// never held back (their attempt is refused anyway).
    pub fn admit(&mut self, webhook_id: &str, now: DateTime<Utc>) -> Admission {
        let Some(b) = self.breakers.get_mut(webhook_id) else {
            return Admission::Send;
        };
        let (admission, change) = b.admit(now, &self.instance);
        let by = self.instance.clone();
        self.push(webhook_id, change, &by);
        admission
    }

    /// Report an attempt's result; `probe` when it was admitted as one.
    pub fn record(
        &mut self,
        webhook_id: &str,
        now: DateTime<Utc>,
        outcome: Outcome,
        duration: Duration,
        probe: bool,
    ) {
        let Some(b) = self.breakers.get_mut(webhook_id) else {
            return;
        };
        let signal = Signal::of(outcome, duration, &b.config);
        let change = b.record(now, signal, probe, &self.instance);
        let by = self.instance.clone();
        self.push(webhook_id, change, &by);
    }

    /// Follow a change made elsewhere (another worker, an operator). Changes
    /// this instance made itself and changes older than the current state
    /// are ignored. Returns whether it was applied.
    pub fn apply(&mut self, change: &CircuitChange) -> bool {
        if change.changed_by == self.instance || change.state == CircuitState::HalfOpen {
            return false;
        }
        let Some(b) = self.breakers.get_mut(&change.webhook_id) else {
            return false;
        };
        if change.since < b.since || (change.since == b.since && change.state == b.state) {
            return false;
        }
        b.enter(
            change.state,
            change.since,
            change.until,
            &change.changed_by,
            change.reason.clone(),
        );
        true
    }

    /// Close a circuit by hand. `None` for an unknown webhook.
    pub fn force_close(
        &mut self,
        webhook_id: &str,
        now: DateTime<Utc>,
        by: &str,
    ) -> Option<CircuitChange> {
        let b = self.breakers.get_mut(webhook_id)?;
        // Strictly later than the current state, so every worker applies it.
        let now = now.max(b.since + chrono::Duration::milliseconds(1));
        let change = b.enter(
            CircuitState::Closed,
            now,
            None,
            by,
            "closed by an operator".into(),
        );
        self.push(webhook_id, Some(change), by);
        self.changes.last().cloned()
    }

    /// The changes made since the last call, oldest first.
    pub fn take_changes(&mut self) -> Vec<CircuitChange> {
        std::mem::take(&mut self.changes)
    }

    pub fn state(&self, webhook_id: &str) -> Option<CircuitState> {
        self.breakers.get(webhook_id).map(Breaker::state)
    }

    /// The end of the cool-down when the circuit is open and it has not
    /// ended yet: a read-only check, so a job can be parked before it
    /// queues for its webhook's concurrency slot. [`Circuits::admit`] stays
    /// the authority.
    pub fn open_until(&self, webhook_id: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let b = self.breakers.get(webhook_id)?;
        match (b.config.enabled, b.state, b.until) {
            (true, CircuitState::Open, Some(until)) if now < until => Some(until),
            _ => None,
        }
    }

    /// Every circuit, by webhook id.
    pub fn views(&self) -> Vec<CircuitView> {
        self.breakers
            .iter()
            .map(|(id, b)| CircuitView {
                webhook_id: id.clone(),
                state: b.state,
                since: b.since,
                until: b.until,
                changed_by: b.changed_by.clone(),
                reason: b.reason.clone(),
                window_attempts: b.window.len(),
                window_failures: b.failures,
                config: b.config.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn t(ms: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap() + chrono::Duration::milliseconds(ms)
    }

    fn config() -> CircuitConfig {
        CircuitConfig {
            window: Duration::from_secs(10),
            failure_threshold: 3,
            failure_ratio: 0.5,
            cooldown: Duration::from_secs(5),
            ..CircuitConfig::default()
        }
    }

    fn circuits(c: CircuitConfig) -> Circuits {
        Circuits::new(
            "w1",
            [("a".to_owned(), c), ("b".to_owned(), config())],
            t(0),
        )
    }

    const FAIL: Outcome = Outcome::HttpError;
    const OK: Outcome = Outcome::Success;
    const MS: Duration = Duration::from_millis(5);

    fn fail(c: &mut Circuits, at: i64) {
        assert_eq!(c.admit("a", t(at)), Admission::Send);
        c.record("a", t(at), FAIL, MS, false);
    }

    #[test]
    fn opens_at_the_threshold_and_parks_until_the_cooldown_ends() {
        let mut c = circuits(config());
        fail(&mut c, 0);
        fail(&mut c, 100);
        assert_eq!(c.state("a"), Some(CircuitState::Closed));
        assert!(c.take_changes().is_empty());
        fail(&mut c, 200);
        assert_eq!(c.state("a"), Some(CircuitState::Open));
        let changes = c.take_changes();
        assert_eq!(changes.len(), 1, "logged once");
        assert_eq!(changes[0].state, CircuitState::Open);
        assert_eq!(changes[0].until, Some(t(5_200)));
        assert_eq!(changes[0].changed_by, "w1");
        assert_eq!(changes[0].reason, "3 of 3 attempts failed within 10s");
        for at in [300, 1_000, 5_199] {
            assert_eq!(c.admit("a", t(at)), Admission::Park { until: t(5_200) });
        }
        assert!(c.take_changes().is_empty(), "parking changes nothing");
        assert_eq!(c.open_until("a", t(300)), Some(t(5_200)));
        assert_eq!(c.open_until("a", t(5_200)), None, "cool-down over");
        assert_eq!(c.open_until("b", t(300)), None);
        // Another webhook is unaffected.
        assert_eq!(c.admit("b", t(300)), Admission::Send);
        assert_eq!(c.state("b"), Some(CircuitState::Closed));
    }

    #[test]
    fn the_ratio_must_also_be_reached() {
        let mut c = circuits(config());
        for i in 0..4 {
            c.admit("a", t(i));
            c.record("a", t(i), OK, MS, false);
        }
        fail(&mut c, 10);
        fail(&mut c, 11);
        fail(&mut c, 12);
        // 3 failures of 7 attempts < 50%.
        assert_eq!(c.state("a"), Some(CircuitState::Closed));
        fail(&mut c, 13);
        assert_eq!(c.state("a"), Some(CircuitState::Open), "4 of 8");
    }

    #[test]
    fn old_failures_fall_out_of_the_window() {
        let mut c = circuits(config());
        fail(&mut c, 0);
        fail(&mut c, 1);
        fail(&mut c, 10_002);
        assert_eq!(c.state("a"), Some(CircuitState::Closed));
        assert_eq!(c.views()[0].window_failures, 1);
        fail(&mut c, 10_003);
        fail(&mut c, 10_004);
        assert_eq!(c.state("a"), Some(CircuitState::Open));
    }

    #[test]
    fn half_open_lets_the_probes_through_and_closes_when_they_succeed() {
        let mut c = circuits(CircuitConfig {
            half_open_probes: 2,
            ..config()
        });
        for i in 0..3 {
            fail(&mut c, i);
        }
        c.take_changes();
        assert_eq!(c.admit("a", t(5_002)), Admission::Probe);
        assert_eq!(c.state("a"), Some(CircuitState::HalfOpen));
        assert_eq!(c.admit("a", t(5_003)), Admission::Probe);
        assert_eq!(
            c.admit("a", t(5_004)),
            Admission::Park { until: t(10_004) },
            "the rest stays parked to the end of the next cool-down"
        );
        c.record("a", t(5_010), OK, MS, true);
        assert_eq!(c.state("a"), Some(CircuitState::HalfOpen));
        c.record("a", t(5_011), OK, MS, true);
        assert_eq!(c.state("a"), Some(CircuitState::Closed));
        let states: Vec<_> = c.take_changes().into_iter().map(|c| c.state).collect();
        assert_eq!(states, [CircuitState::HalfOpen, CircuitState::Closed]);
        assert_eq!(c.admit("a", t(5_012)), Admission::Send);
        // The window starts empty again.
        fail(&mut c, 5_013);
        assert_eq!(c.state("a"), Some(CircuitState::Closed));
    }

    #[test]
    fn a_failed_probe_opens_again_for_another_cooldown() {
        let mut c = circuits(config());
        for i in 0..3 {
            fail(&mut c, i);
        }
        assert_eq!(c.admit("a", t(6_000)), Admission::Probe);
        c.record("a", t(6_100), Outcome::Timeout, MS, true);
        assert_eq!(c.state("a"), Some(CircuitState::Open));
        assert_eq!(c.admit("a", t(6_200)), Admission::Park { until: t(11_100) });
        let last = c.take_changes().pop().unwrap();
        assert_eq!(
            (last.state, last.reason.as_str()),
            (CircuitState::Open, "probe failed")
        );
    }

    #[test]
    fn stragglers_and_neutral_results_do_not_move_the_state() {
        let mut c = circuits(config());
        for i in 0..3 {
            fail(&mut c, i);
        }
        // An attempt that started before the circuit opened.
        c.record("a", t(10), OK, MS, false);
        assert_eq!(c.state("a"), Some(CircuitState::Open));
        assert_eq!(c.admit("a", t(5_002)), Admission::Probe);
        // A refused probe gives its slot back.
        c.record("a", t(5_003), Outcome::Refused, MS, true);
        assert_eq!(c.admit("a", t(5_004)), Admission::Probe);
        // Refusals never open a circuit.
        let mut c = circuits(config());
        for i in 0..10 {
            c.admit("a", t(i));
            c.record("a", t(i), Outcome::Refused, MS, false);
        }
        assert_eq!(c.state("a"), Some(CircuitState::Closed));
    }

    #[test]
    fn a_lost_probe_is_replaced_after_a_cooldown() {
        let mut c = circuits(config());
        for i in 0..3 {
            fail(&mut c, i);
        }
        assert_eq!(c.admit("a", t(5_002)), Admission::Probe);
        assert!(matches!(c.admit("a", t(9_000)), Admission::Park { .. }));
        assert_eq!(c.admit("a", t(10_002)), Admission::Probe);
    }

    #[test]
    fn slow_successes_count_as_failures_when_configured() {
        let mut c = circuits(CircuitConfig {
            slow_threshold: Some(Duration::from_secs(2)),
            ..config()
        });
        for i in 0..3 {
            c.admit("a", t(i));
            c.record("a", t(i), OK, Duration::from_secs(3), false);
        }
        assert_eq!(c.state("a"), Some(CircuitState::Open));
        assert_eq!(
            Signal::of(OK, Duration::from_secs(3), &config()),
            Signal::Success,
            "off by default"
        );
    }

    #[test]
    fn disabled_breakers_always_send() {
        let mut c = circuits(CircuitConfig {
            enabled: false,
            ..config()
        });
        for i in 0..20 {
            fail(&mut c, i);
        }
        assert_eq!(c.state("a"), Some(CircuitState::Closed));
        assert_eq!(c.admit("unknown", t(0)), Admission::Send);
    }

    #[test]
    fn remote_changes_are_followed_latest_first_and_own_ones_ignored() {
        let mut w1 = circuits(config());
        let mut w2 = Circuits::new("w2", [("a".to_owned(), config())], t(0));
        for i in 0..3 {
            fail(&mut w1, i);
        }
        let opened = w1.take_changes().pop().unwrap();
        assert!(!w1.apply(&opened), "own change");
        assert!(w2.apply(&opened));
        assert_eq!(w2.admit("a", t(100)), Admission::Park { until: t(5_002) });
        assert!(!w2.apply(&opened), "already applied");
        // w2 probes and closes; w1 follows.
        assert_eq!(w2.admit("a", t(5_002)), Admission::Probe);
        w2.record("a", t(5_050), OK, MS, true);
        let changes = w2.take_changes();
        assert_eq!(changes.len(), 2);
        assert!(!w1.apply(&changes[0]), "half-open is local");
        assert!(w1.apply(&changes[1]));
        assert_eq!(w1.state("a"), Some(CircuitState::Closed));
        // A stale open (older than the close) is ignored.
        assert!(!w1.apply(&opened));
        assert_eq!(w1.state("a"), Some(CircuitState::Closed));
    }

    #[test]
    fn operators_can_force_a_circuit_closed() {
        let mut c = circuits(config());
        for i in 0..3 {
            fail(&mut c, i);
        }
        c.take_changes();
        let change = c.force_close("a", t(2), "operator:alice").unwrap();
        assert_eq!(change.state, CircuitState::Closed);
        assert_eq!(change.changed_by, "operator:alice");
        assert!(change.since > t(2) - chrono::Duration::milliseconds(1));
        assert_eq!(c.admit("a", t(3)), Admission::Send);
        assert_eq!(c.take_changes(), std::slice::from_ref(&change));
        assert!(c.force_close("nope", t(3), "x").is_none());
        let mut other = Circuits::new("w2", [("a".to_owned(), config())], t(0));
        assert!(other.apply(&change));
    }

    #[test]
    fn changes_round_trip_as_json() {
        let change = CircuitChange {
            webhook_id: "a".into(),
            state: CircuitState::Open,
            since: t(0),
            until: Some(t(5_000)),
            changed_by: "w1".into(),
            reason: "probe failed".into(),
        };
        let text = serde_json::to_string(&change).unwrap();
        assert!(text.contains(r#""state":"open""#), "{text}");
        assert_eq!(
            serde_json::from_str::<CircuitChange>(&text).unwrap(),
            change
        );
    }
}
