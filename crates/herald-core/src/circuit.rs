//! Per-destination circuit breaker: a webhook whose endpoint keeps failing is
//! paused (its jobs parked, not attempted) for a cool-down, then tried with a
//! sample of parked jobs, and closed again unless nearly all of them fail.
//!
//! The rules, and why (see `docs/architecture.md` for the measurements):
//! - **Closed → open** when, within the last `window`, at least
//!   `failure_threshold` attempts failed and they are at least
//!   `failure_ratio` of that window's attempts, and that has held without a
//!   break for a whole `window`. The window is longer than the time to a
//!   notification's third attempt (30 s + 90 s with the default backoff,
//!   ±20 %), so a receiver that rejects the first attempts of each
//!   notification and accepts a later one shows its successes before the
//!   breaker judges it, even when a burst arrives after a quiet time.
//! - **Open → half-open** when the cool-down is over. The cool-down doubles
//!   on each consecutive re-open, up to `max_cooldown`, and starts again
//!   from `cooldown` when the circuit closes.
//! - **Half-open** lets at most `half_open_probes` jobs through, and only
//!   jobs that were due before probing began (the parked ones, which come
//!   back oldest due first) while any of those is in flight; later jobs are
//!   parked. It decides as soon as the sample does: open again once
//!   `failure_ratio` of the sample has failed, closed once that can no
//!   longer happen.
//!
//! Pure state: every call takes `now`, so the machine is tested without
//! sleeping ([`sim`] drives it against modelled receivers), and the services
//! decide how to park (retry tier or due time) and how to share state
//! changes between workers ([`CircuitChange`]).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::Outcome;

pub mod sim;

/// Most outcomes kept in one webhook's window, so a busy endpoint's window
/// stays bounded in memory; the oldest fall out first.
const MAX_WINDOW_ENTRIES: usize = 10_000;

/// A webhook's breaker settings (`[webhooks.circuit]`, defaults in
/// `[defaults.circuit]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CircuitConfig {
    /// `false` turns the breaker off: every job is attempted.
    pub enabled: bool,
    /// How far back failures are counted, and how long the failures must
    /// have been over the threshold and ratio before the circuit opens.
    #[serde(with = "millis")]
    pub window: Duration,
    /// Failures within `window` needed to open (together with the ratio).
    pub failure_threshold: u32,
    /// Share of the attempts that must have failed, in `(0, 1]`: within
    /// `window` to open, within the half-open sample to open again.
    pub failure_ratio: f64,
    /// A 2xx slower than this counts as a failure. `None`: never.
    #[serde(with = "opt_millis")]
    pub slow_threshold: Option<Duration>,
    /// How long the circuit stays open the first time, before probing; also
    /// how long half-open waits for its sample before it probes anew.
    #[serde(with = "millis")]
    pub cooldown: Duration,
    /// The longest cool-down: each consecutive re-open doubles it up to this.
    #[serde(with = "millis", default = "default_max_cooldown")]
    pub max_cooldown: Duration,
    /// The half-open sample: at most this many probes decide.
    pub half_open_probes: u32,
}

fn default_max_cooldown() -> Duration {
    Duration::from_secs(600)
}

impl Default for CircuitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            window: Duration::from_secs(180),
            failure_threshold: 30,
            failure_ratio: 0.9,
            slow_threshold: None,
            cooldown: Duration::from_secs(30),
            max_cooldown: default_max_cooldown(),
            half_open_probes: 10,
        }
    }
}

impl CircuitConfig {
    /// Failures among the half-open sample that open the circuit again.
    pub fn probe_failures_to_open(&self) -> u32 {
        let n = f64::from(self.half_open_probes.max(1));
        ((self.failure_ratio * n).ceil() as u32).clamp(1, self.half_open_probes.max(1))
    }

    /// The cool-down after `reopens` consecutive re-opens.
    pub fn cooldown_after(&self, reopens: u32) -> Duration {
        let factor = 1u32.checked_shl(reopens.min(31)).unwrap_or(u32::MAX);
        self.cooldown
            .saturating_mul(factor)
            .min(self.max_cooldown.max(self.cooldown))
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
    /// Cool-down over: a sample of parked jobs goes through, the rest stay
    /// parked.
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
    /// Consecutive re-opens without a close in between (open only): what
    /// the next cool-down grows from.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reopens: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
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
    /// Consecutive re-opens since the circuit last closed.
    reopens: u32,
    /// Closed: recent outcomes (time, failed).
    window: VecDeque<(DateTime<Utc>, bool)>,
    failures: u32,
    /// Closed: since when the window has been at the threshold and ratio
    /// without a break.
    tripping_since: Option<DateTime<Utc>>,
    /// Half-open: when the current sample began (jobs due by then may be
    /// probes), probes let through, and their results.
    sample_since: DateTime<Utc>,
    probes_started: u32,
    probes_ok: u32,
    probes_failed: u32,
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
    /// Consecutive re-opens since the circuit last closed.
    pub reopens: u32,
    /// Half-open: the sample's results so far.
    pub probes_succeeded: u32,
    pub probes_failed: u32,
    pub config: CircuitConfig,
}

fn after(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
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
            reopens: 0,
            window: VecDeque::new(),
            failures: 0,
            tripping_since: None,
            sample_since: now,
            probes_started: 0,
            probes_ok: 0,
            probes_failed: 0,
        }
    }

    pub fn state(&self) -> CircuitState {
        self.state
    }

    pub fn config(&self) -> &CircuitConfig {
        &self.config
    }

    fn enter(
        &mut self,
        state: CircuitState,
        now: DateTime<Utc>,
        until: Option<DateTime<Utc>>,
        by: &str,
        reason: String,
    ) -> Change {
        self.state = state;
        self.since = now;
        self.until = until;
        self.changed_by = by.to_owned();
        self.reason = reason.clone();
        if state == CircuitState::Closed {
            self.reopens = 0;
        }
        self.window.clear();
        self.failures = 0;
        self.tripping_since = None;
        self.sample_since = now;
        self.probes_started = 0;
        self.probes_ok = 0;
        self.probes_failed = 0;
        (state, now, until, reason, self.reopens)
    }

    /// Open for the cool-down that `reopens` earns.
    fn open(&mut self, now: DateTime<Utc>, by: &str, reason: String) -> Change {
        let cooldown = self.config.cooldown_after(self.reopens);
        let reason = format!(
            "{reason}; cool-down {}",
            crate::duration::format_duration(cooldown)
        );
        self.enter(
            CircuitState::Open,
            now,
            Some(after(now, cooldown)),
            by,
            reason,
        )
    }

    /// May a job that has been due since `due_at` be attempted now? Moves
    /// an open circuit whose cool-down is over to half-open (the returned
    /// change).
    fn admit(
        &mut self,
        now: DateTime<Utc>,
        due_at: DateTime<Utc>,
        by: &str,
    ) -> (Admission, Option<Change>) {
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
                "cool-down over: probing a sample".into(),
            ));
        }
        let admission = match self.state {
            CircuitState::Closed => Admission::Send,
            CircuitState::Open => Admission::Park {
                until: self.until.unwrap_or(now),
            },
            CircuitState::HalfOpen => {
                // Probes that never reported (their worker died) or a sample
                // the parked jobs could not fill must not keep the circuit
                // half-open for ever: after a cool-down, sample anew, with
                // every job due by now eligible. Results so far still count.
                let window_end = after(self.sample_since, self.config.cooldown);
                if now >= window_end {
                    self.sample_since = now;
                    self.probes_started = self.probes_ok + self.probes_failed;
                }
                // Jobs that were waiting when the sample began come first;
                // once none of those is in flight, any due job may fill the
                // sample (a sparse backlog must not hold later jobs back).
                let reported = self.probes_ok + self.probes_failed;
                let in_flight = self.probes_started.saturating_sub(reported);
                if (due_at <= self.sample_since || in_flight == 0)
                    && self.probes_started < self.config.half_open_probes
                {
                    self.probes_started += 1;
                    Admission::Probe
                } else {
                    Admission::Park {
                        until: after(self.sample_since, self.config.cooldown),
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
            (CircuitState::HalfOpen, true) => {
                let sample = self.config.half_open_probes;
                let to_open = self.config.probe_failures_to_open();
                match signal {
                    Signal::Success => {
                        self.probes_ok += 1;
                        (self.probes_ok > sample.saturating_sub(to_open)).then(|| {
                            let reason = format!(
                                "{} of {} probes succeeded",
                                self.probes_ok,
                                self.probes_ok + self.probes_failed
                            );
                            self.enter(CircuitState::Closed, now, None, by, reason)
                        })
                    }
                    Signal::Failure => {
                        self.probes_failed += 1;
                        (self.probes_failed >= to_open).then(|| {
                            let reason = format!(
                                "{} of {} probes failed",
                                self.probes_failed,
                                self.probes_ok + self.probes_failed
                            );
                            self.reopens = self.reopens.saturating_add(1);
                            self.open(now, by, reason)
                        })
                    }
                    Signal::Neutral => {
                        // Give the slot back: this probe told us nothing.
                        self.probes_started = self.probes_started.saturating_sub(1);
                        None
                    }
                }
            }
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
                let tripping = self.failures >= self.config.failure_threshold
                    && f64::from(self.failures) >= self.config.failure_ratio * total;
                if !tripping {
                    self.tripping_since = None;
                    return None;
                }
                let since = *self.tripping_since.get_or_insert(now);
                if failed && now >= after(since, self.config.window) {
                    let reason = format!(
                        "{} of {} attempts failed within {}",
                        self.failures,
                        self.window.len(),
                        crate::duration::format_duration(self.config.window)
                    );
                    return Some(self.open(now, by, reason));
                }
                None
            }
            // Results of attempts that started before the state changed say
            // nothing about the current state.
            _ => None,
        }
    }
}

type Change = (
    CircuitState,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    String,
    u32,
);

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
        if let Some((state, since, until, reason, reopens)) = change {
            self.changes.push(CircuitChange {
                webhook_id: webhook_id.to_owned(),
                state,
                since,
                until,
                changed_by: by.to_owned(),
                reason,
                reopens: if state == CircuitState::Open {
                    reopens
                } else {
                    0
                },
            });
        }
    }

    /// May a job of `webhook_id`, due since `due_at`, be attempted now?
    /// Unknown webhooks are never held back (their attempt is refused
    /// anyway).
    pub fn admit(
        &mut self,
        webhook_id: &str,
        now: DateTime<Utc>,
        due_at: DateTime<Utc>,
    ) -> Admission {
        let Some(b) = self.breakers.get_mut(webhook_id) else {
            return Admission::Send;
        };
        let (admission, change) = b.admit(now, due_at, &self.instance);
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
        b.reopens = change.reopens;
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
                reopens: b.reopens,
                probes_succeeded: b.probes_ok,
                probes_failed: b.probes_failed,
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
            half_open_probes: 1,
            ..CircuitConfig::default()
        }
    }

    /// Breakers that have watched a whole window by `t(0)`.
    fn circuits(c: CircuitConfig) -> Circuits {
        Circuits::new(
            "w1",
            [("a".to_owned(), c), ("b".to_owned(), config())],
            t(-10_000),
        )
    }

    const FAIL: Outcome = Outcome::HttpError;
    const OK: Outcome = Outcome::Success;
    const MS: Duration = Duration::from_millis(5);

    /// Fail "a" every 500 ms so that the failures reach the threshold at
    /// `at - 10 s` and have held for a whole window (10 s) at `at + 2`,
    /// when the circuit opens.
    fn trip(c: &mut Circuits, at: i64) {
        for i in 0..=22 {
            fail(c, at - 10_998 + 500 * i);
        }
        assert_eq!(c.state("a"), Some(CircuitState::Open));
    }

    fn fail(c: &mut Circuits, at: i64) {
        assert_eq!(c.admit("a", t(at), t(at)), Admission::Send);
        c.record("a", t(at), FAIL, MS, false);
    }

    #[test]
    fn opens_when_the_failures_held_for_a_window_and_parks_until_the_cooldown_ends() {
        let mut c = circuits(config());
        for i in 0..22 {
            fail(&mut c, -10_998 + 500 * i);
        }
        assert_eq!(c.state("a"), Some(CircuitState::Closed), "held 9.5 s");
        assert!(c.take_changes().is_empty());
        fail(&mut c, 2);
        assert_eq!(c.state("a"), Some(CircuitState::Open));
        let changes = c.take_changes();
        assert_eq!(changes.len(), 1, "logged once");
        assert_eq!(changes[0].state, CircuitState::Open);
        assert_eq!(changes[0].until, Some(t(5_002)));
        assert_eq!(changes[0].changed_by, "w1");
        assert_eq!(
            changes[0].reason,
            "21 of 21 attempts failed within 10s; cool-down 5s"
        );
        for at in [300, 1_000, 5_001] {
            assert_eq!(
                c.admit("a", t(at), t(at)),
                Admission::Park { until: t(5_002) }
            );
        }
        assert!(c.take_changes().is_empty(), "parking changes nothing");
        assert_eq!(c.open_until("a", t(300)), Some(t(5_002)));
        assert_eq!(c.open_until("a", t(5_002)), None, "cool-down over");
        assert_eq!(c.open_until("b", t(300)), None);
        // Another webhook is unaffected.
        assert_eq!(c.admit("b", t(300), t(300)), Admission::Send);
        assert_eq!(c.state("b"), Some(CircuitState::Closed));
    }

    #[test]
    fn a_break_in_the_failures_restarts_the_hold() {
        let mut c = circuits(config());
        // Three failures reach the threshold at t(0) ...
        for at in [-2, -1, 0] {
            fail(&mut c, at);
        }
        for i in 1..10 {
            fail(&mut c, i * 1_000);
        }
        // ... and successes bring the ratio under 0.5 at t(9_500).
        for i in 0..14 {
            c.admit("a", t(9_500), t(9_500));
            c.record("a", t(9_500 + i), OK, MS, false);
        }
        for i in 0..40 {
            fail(&mut c, 10_000 + i * 250);
        }
        // Held again since t(11_000), not t(0): still closed at 19.75 s.
        assert_eq!(c.state("a"), Some(CircuitState::Closed));
        fail(&mut c, 21_000);
        assert_eq!(c.state("a"), Some(CircuitState::Open));
    }

    #[test]
    fn the_ratio_must_also_be_reached() {
        let mut c = circuits(config());
        for i in 0..60 {
            c.admit("a", t(i * 250), t(i * 250));
            let outcome = if i % 3 == 0 { OK } else { FAIL };
            c.record("a", t(i * 250), outcome, MS, false);
        }
        // Two thirds failed: over the ratio of 0.5, held for 10 s.
        assert_eq!(c.state("a"), Some(CircuitState::Open));
        let mut c = circuits(config());
        for i in 0..60 {
            c.admit("a", t(i * 250), t(i * 250));
            let outcome = if i % 3 == 0 { FAIL } else { OK };
            c.record("a", t(i * 250), outcome, MS, false);
        }
        assert_eq!(c.state("a"), Some(CircuitState::Closed), "a third failed");
        // Old failures fall out of the window.
        let mut c = circuits(config());
        for i in 0..30 {
            fail(&mut c, i * 5_001);
        }
        assert_eq!(
            c.state("a"),
            Some(CircuitState::Closed),
            "never 3 within 10 s"
        );
    }

    #[test]
    fn half_open_lets_the_probes_through_and_closes_when_they_succeed() {
        let mut c = circuits(CircuitConfig {
            half_open_probes: 2,
            ..config()
        });
        trip(&mut c, 0);
        c.take_changes();
        // Parked jobs come back due at the end of the cool-down.
        let parked = t(5_002);
        assert_eq!(c.admit("a", t(5_002), parked), Admission::Probe);
        assert_eq!(c.state("a"), Some(CircuitState::HalfOpen));
        assert_eq!(c.admit("a", t(5_003), parked), Admission::Probe);
        assert_eq!(
            c.admit("a", t(5_004), parked),
            Admission::Park { until: t(10_002) },
            "the rest stays parked to the end of the sample's cool-down"
        );
        c.record("a", t(5_010), OK, MS, true);
        assert_eq!(c.state("a"), Some(CircuitState::HalfOpen));
        c.record("a", t(5_011), OK, MS, true);
        assert_eq!(c.state("a"), Some(CircuitState::Closed));
        let changes = c.take_changes();
        let states: Vec<_> = changes.iter().map(|c| c.state).collect();
        assert_eq!(states, [CircuitState::HalfOpen, CircuitState::Closed]);
        assert_eq!(changes[1].reason, "2 of 2 probes succeeded");
        assert_eq!(c.admit("a", t(5_012), t(5_012)), Admission::Send);
        // The window starts empty again.
        for i in 0..5 {
            fail(&mut c, 5_013 + i);
        }
        assert_eq!(c.state("a"), Some(CircuitState::Closed));
    }

    #[test]
    fn jobs_waiting_before_the_sample_are_the_probes() {
        let mut c = circuits(CircuitConfig {
            half_open_probes: 3,
            failure_ratio: 0.9,
            ..config()
        });
        trip(&mut c, 0);
        let parked = t(5_002);
        assert_eq!(c.admit("a", t(5_100), parked), Admission::Probe);
        // A job that became due after probing began waits while a parked
        // job is in flight ...
        assert_eq!(
            c.admit("a", t(5_200), t(5_150)),
            Admission::Park { until: t(10_100) }
        );
        assert_eq!(c.admit("a", t(5_200), parked), Admission::Probe);
        c.record("a", t(5_300), FAIL, MS, true);
        c.record("a", t(5_300), FAIL, MS, true);
        assert_eq!(c.state("a"), Some(CircuitState::HalfOpen));
        // ... and fills the sample once none is.
        assert_eq!(c.admit("a", t(5_400), t(5_400)), Admission::Probe);
        assert_eq!(
            c.admit("a", t(5_401), t(5_401)),
            Admission::Park { until: t(10_100) }
        );
    }

    #[test]
    fn the_sample_decides_by_its_failure_ratio_and_the_cooldown_grows() {
        let config = CircuitConfig {
            failure_ratio: 0.9,
            half_open_probes: 10,
            max_cooldown: Duration::from_secs(12),
            ..config()
        };
        let mut c = circuits(config);
        trip(&mut c, 0);
        let _ = c.take_changes();
        let mut now = 2;
        let mut cooldowns = Vec::new();
        // Hard down: each sample fails 9 times and opens again, for a
        // cool-down twice as long, up to 12 s.
        for _ in 0..4 {
            let until = c.views()[0].until.unwrap();
            cooldowns.push((until - t(now)).num_milliseconds());
            now = (until - t(0)).num_milliseconds();
            for _ in 0..9 {
                assert_eq!(c.admit("a", t(now), t(now)), Admission::Probe);
                c.record("a", t(now), FAIL, MS, true);
            }
            assert_eq!(c.state("a"), Some(CircuitState::Open));
        }
        assert_eq!(cooldowns, [5_000, 10_000, 12_000, 12_000]);
        let last = c.take_changes().pop().unwrap();
        assert_eq!(last.reason, "9 of 9 probes failed; cool-down 12s");
        assert_eq!(last.reopens, 4);
        // A receiver that accepts some: 2 successes in the sample close it,
        // and the next opening starts from the first cool-down again.
        let until = c.views()[0].until.unwrap();
        now = (until - t(0)).num_milliseconds();
        for outcome in [FAIL, OK, FAIL, FAIL, OK] {
            assert_eq!(c.admit("a", t(now), t(now)), Admission::Probe);
            c.record("a", t(now), outcome, MS, true);
        }
        assert_eq!(c.state("a"), Some(CircuitState::Closed));
        assert_eq!(c.views()[0].reopens, 0);
        trip(&mut c, now + 20_000);
        assert_eq!(c.take_changes().pop().unwrap().until, Some(t(now + 25_002)));
    }

    #[test]
    fn a_failed_probe_opens_again_for_a_longer_cooldown() {
        let mut c = circuits(config());
        trip(&mut c, 0);
        assert_eq!(c.admit("a", t(6_000), t(5_002)), Admission::Probe);
        c.record("a", t(6_100), Outcome::Timeout, MS, true);
        assert_eq!(c.state("a"), Some(CircuitState::Open));
        assert_eq!(
            c.admit("a", t(6_200), t(6_200)),
            Admission::Park { until: t(16_100) }
        );
        let last = c.take_changes().pop().unwrap();
        assert_eq!(
            (last.state, last.reason.as_str(), last.reopens),
            (CircuitState::Open, "1 of 1 probes failed; cool-down 10s", 1)
        );
    }

    #[test]
    fn stragglers_and_neutral_results_do_not_move_the_state() {
        let mut c = circuits(config());
        trip(&mut c, 0);
        // An attempt that started before the circuit opened.
        c.record("a", t(10), OK, MS, false);
        assert_eq!(c.state("a"), Some(CircuitState::Open));
        assert_eq!(c.admit("a", t(5_002), t(5_002)), Admission::Probe);
        // A refused probe gives its slot back.
        c.record("a", t(5_003), Outcome::Refused, MS, true);
        assert_eq!(c.admit("a", t(5_004), t(5_004)), Admission::Probe);
        // Refusals never open a circuit.
        let mut c = circuits(config());
        for i in 0..10 {
            c.admit("a", t(i), t(i));
            c.record("a", t(i), Outcome::Refused, MS, false);
        }
        assert_eq!(c.state("a"), Some(CircuitState::Closed));
    }

    #[test]
    fn a_lost_probe_is_replaced_after_a_cooldown() {
        let mut c = circuits(config());
        trip(&mut c, 0);
        assert_eq!(c.admit("a", t(5_002), t(5_002)), Admission::Probe);
        assert!(matches!(
            c.admit("a", t(9_000), t(9_000)),
            Admission::Park { .. }
        ));
        assert_eq!(c.admit("a", t(10_002), t(10_002)), Admission::Probe);
    }

    #[test]
    fn slow_successes_count_as_failures_when_configured() {
        let mut c = circuits(CircuitConfig {
            slow_threshold: Some(Duration::from_secs(2)),
            ..config()
        });
        for i in 0..=22 {
            let at = t(-10_998 + 500 * i);
            c.admit("a", at, at);
            c.record("a", at, OK, Duration::from_secs(3), false);
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
        assert_eq!(c.admit("unknown", t(0), t(0)), Admission::Send);
    }

    #[test]
    fn remote_changes_are_followed_latest_first_and_own_ones_ignored() {
        let mut w1 = circuits(config());
        let mut w2 = Circuits::new("w2", [("a".to_owned(), config())], t(0));
        trip(&mut w1, 0);
        let opened = w1.take_changes().pop().unwrap();
        assert!(!w1.apply(&opened), "own change");
        assert!(w2.apply(&opened));
        assert_eq!(
            w2.admit("a", t(100), t(100)),
            Admission::Park { until: t(5_002) }
        );
        assert!(!w2.apply(&opened), "already applied");
        // w2 probes and closes; w1 follows.
        assert_eq!(w2.admit("a", t(5_002), t(5_002)), Admission::Probe);
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
        trip(&mut c, 0);
        c.take_changes();
        let change = c.force_close("a", t(2), "operator:alice").unwrap();
        assert_eq!(change.state, CircuitState::Closed);
        assert_eq!(change.changed_by, "operator:alice");
        assert!(change.since > t(2) - chrono::Duration::milliseconds(1));
        assert_eq!(c.admit("a", t(3), t(3)), Admission::Send);
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
            reopens: 2,
        };
        let text = serde_json::to_string(&change).unwrap();
        assert!(text.contains(r#""state":"open""#), "{text}");
        assert_eq!(
            serde_json::from_str::<CircuitChange>(&text).unwrap(),
            change
        );
    }
}
