//! A discrete-event model of one webhook's deliveries through the breaker
//! and the retry policy, with a modelled receiver and simulated time: what
//! the breaker's guarantees are checked against (unit tests here) and what
//! `herald-bench circuit` prints.
//!
//! The model: notifications arrive at a steady rate; each due job asks the
//! breaker ([`Circuits::admit`]), is parked to the breaker's time (same
//! attempt, its due time moved, as both services do) or attempted; a failed
//! attempt is retried by [`RetryPolicy::decide`]. Responses are instant and
//! nothing limits concurrency, so the figures are the breaker's and the
//! policy's, not the network's. The receiver's answer depends only on the
//! notification, the attempt number and the time, and the backoff jitter
//! only on the notification and attempt, so a run with the breaker and one
//! without see the same receiver and can be compared notification by
//! notification.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

use super::{Admission, CircuitConfig, Circuits};
use crate::model::Outcome;
use crate::retry::{AttemptReport, Decision, RetryPolicy, Tiers};

/// How the modelled receiver answers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Receiver {
    /// Each attempt fails with this probability (`0.0`: always accepts).
    Random { fail: f64 },
    /// The first `k` attempts of every notification fail, the next succeeds
    /// (receivers that lock or deduplicate behave so).
    FirstFail { k: u32 },
    /// Every attempt fails (5xx, refused or timing out: all are failures).
    Down,
    /// Every attempt fails until `up_after`, then every attempt succeeds.
    DownUntil { up_after: Duration },
    /// Every attempt succeeds, each taking `took`.
    Slow { took: Duration },
}

impl Receiver {
    /// A short name for tables.
    pub fn label(&self) -> String {
        match self {
            Receiver::Random { fail } => format!("{:.0} % random failures", fail * 100.0),
            Receiver::FirstFail { k } => format!("first {k} attempt(s) of each fail"),
            Receiver::Down => "hard down".into(),
            Receiver::DownUntil { up_after } => format!(
                "down for {}, then up",
                crate::duration::format_duration(*up_after)
            ),
            Receiver::Slow { took } => format!(
                "every 2xx takes {}",
                crate::duration::format_duration(*took)
            ),
        }
    }

    fn answer(
        &self,
        seed: u64,
        notification: u64,
        attempt: u32,
        at: Duration,
    ) -> (Outcome, Duration) {
        let ms = Duration::from_millis(20);
        let ok = match *self {
            Receiver::Random { fail } => uniform(seed, notification, attempt, 1) >= fail,
            Receiver::FirstFail { k } => attempt > k,
            Receiver::Down => false,
            Receiver::DownUntil { up_after } => at >= up_after,
            Receiver::Slow { took } => return (Outcome::Success, took),
        };
        if ok {
            (Outcome::Success, ms)
        } else {
            (Outcome::HttpError, ms)
        }
    }
}

/// The receivers of `herald-bench circuit`'s table, one per row.
pub fn matrix() -> Vec<Receiver> {
    let min = Duration::from_secs(60);
    vec![
        Receiver::Random { fail: 0.0 },
        Receiver::Random { fail: 0.3 },
        Receiver::Random { fail: 0.6 },
        Receiver::Random { fail: 2.0 / 3.0 },
        Receiver::FirstFail { k: 1 },
        Receiver::FirstFail { k: 2 },
        Receiver::FirstFail { k: 3 },
        Receiver::Random { fail: 0.8 },
        Receiver::Slow {
            took: Duration::from_secs(8),
        },
        Receiver::DownUntil { up_after: 20 * min },
        Receiver::Down,
    ]
}

/// One run's setting.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub receiver: Receiver,
    /// Notifications per second, from time 0 until `input_for`.
    pub rate: f64,
    pub input_for: Duration,
    /// Nothing after this is simulated.
    pub horizon: Duration,
    pub breaker: CircuitConfig,
    pub retry: RetryPolicy,
    pub seed: u64,
}

/// What a run produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// Requests that reached the receiver within the horizon.
    pub requests: u64,
    /// Per notification: when it was delivered, from its creation.
    pub delivered_after: Vec<Option<Duration>>,
    /// Notifications whose retries were exhausted.
    pub exhausted: u64,
    /// Times the circuit opened (from closed or half-open).
    pub opened: u64,
}

impl Run {
    pub fn delivered(&self) -> usize {
        self.delivered_after.iter().flatten().count()
    }

    /// When the last notification was delivered, from time 0, if every one
    /// was.
    pub fn all_delivered_at(&self, rate: f64) -> Option<Duration> {
        self.delivered_after
            .iter()
            .enumerate()
            .map(|(i, d)| d.map(|d| created(i as u64, rate) + d))
            .try_fold(Duration::ZERO, |max, d| d.map(|d| max.max(d)))
    }

    /// The most any notification delivered in both runs was delivered later
    /// here than in `baseline`.
    pub fn most_later_than(&self, baseline: &Run) -> Duration {
        self.delivered_after
            .iter()
            .zip(&baseline.delivered_after)
            .filter_map(|(a, b)| Some(a.as_ref()?.saturating_sub(*b.as_ref()?)))
            .max()
            .unwrap_or_default()
    }
}

fn created(i: u64, rate: f64) -> Duration {
    Duration::from_secs_f64(i as f64 / rate)
}

/// A uniform sample in `[0, 1)` that depends only on its inputs.
fn uniform(seed: u64, notification: u64, attempt: u32, salt: u64) -> f64 {
    let mut z = seed
        ^ notification.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ u64::from(attempt).wrapping_mul(0xBF58_476D_1CE4_E5B9)
        ^ salt.wrapping_mul(0x94D0_49BB_1331_11EB);
    // splitmix64's finaliser.
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Job {
    notification: u64,
    attempt: u32,
    due_ms: i64,
    first_failure_ms: Option<i64>,
}

/// Simulate a scenario.
pub fn run(s: &Scenario) -> Run {
    let origin = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let at = |ms: i64| origin + chrono::Duration::milliseconds(ms);
    let ms_of = |t: DateTime<Utc>| (t - origin).num_milliseconds();
    let mut circuits = Circuits::new("sim", [("w".to_owned(), s.breaker.clone())], origin);
    let tiers = Tiers::default();
    let count = (s.rate * s.input_for.as_secs_f64()).floor() as u64;
    let horizon = i64::try_from(s.horizon.as_millis()).unwrap_or(i64::MAX);
    // (time, sequence): jobs due at the same time go in the order queued.
    let mut queue = BinaryHeap::new();
    let mut seq = 0u64;
    for n in 0..count {
        let due_ms = i64::try_from(created(n, s.rate).as_millis()).unwrap_or(i64::MAX);
        let job = Job {
            notification: n,
            attempt: 1,
            due_ms,
            first_failure_ms: None,
        };
        queue.push(Reverse((due_ms, seq, job)));
        seq += 1;
    }
    let mut out = Run {
        requests: 0,
        delivered_after: vec![None; count as usize],
        exhausted: 0,
        opened: 0,
    };
    while let Some(Reverse((now_ms, _, job))) = queue.pop() {
        if now_ms > horizon {
            break;
        }
        let now = at(now_ms);
        let admission = circuits.admit("w", now, at(job.due_ms));
        let next = match admission {
            Admission::Park { until } => {
                let parked = (ms_of(until) - now_ms).max(0);
                Some(Job {
                    due_ms: ms_of(until),
                    first_failure_ms: job.first_failure_ms.map(|f| f + parked),
                    ..job
                })
            }
            Admission::Send | Admission::Probe => {
                out.requests += 1;
                let since_start = Duration::from_millis(now_ms.unsigned_abs());
                let (outcome, took) =
                    s.receiver
                        .answer(s.seed, job.notification, job.attempt, since_start);
                circuits.record("w", now, outcome, took, admission == Admission::Probe);
                let report = AttemptReport {
                    attempt_no: job.attempt,
                    outcome,
                    http_status: (outcome == Outcome::HttpError).then_some(503),
                    retry_after: None,
                    first_failure_at: job.first_failure_ms.map(at),
                    now,
                };
                let random = uniform(s.seed, job.notification, job.attempt, 2);
                match s.retry.decide(&report, &tiers, random) {
                    Decision::Delivered => {
                        let made = created(job.notification, s.rate);
                        out.delivered_after[job.notification as usize] =
                            Some(since_start.saturating_sub(made));
                        None
                    }
                    Decision::Retry { due_at, .. } => Some(Job {
                        attempt: job.attempt + 1,
                        due_ms: ms_of(due_at),
                        first_failure_ms: Some(job.first_failure_ms.unwrap_or(now_ms)),
                        ..job
                    }),
                    Decision::Exhausted { .. } => {
                        out.exhausted += 1;
                        None
                    }
                }
            }
        };
        out.opened += circuits
            .take_changes()
            .iter()
            .filter(|c| c.state == super::CircuitState::Open)
            .count() as u64;
        if let Some(next) = next {
            queue.push(Reverse((next.due_ms, seq, next)));
            seq += 1;
        }
    }
    out
}

/// A row of the comparison: the same scenario without and with the breaker.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub without: Run,
    pub with: Run,
}

/// Run `s` with the breaker off and as configured.
pub fn compare(s: &Scenario) -> Comparison {
    let off = Scenario {
        breaker: CircuitConfig {
            enabled: false,
            ..s.breaker.clone()
        },
        ..s.clone()
    };
    Comparison {
        without: run(&off),
        with: run(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn steady(receiver: Receiver) -> Scenario {
        Scenario {
            receiver,
            rate: 5.0,
            input_for: 10 * MIN,
            horizon: 8 * 60 * MIN,
            breaker: CircuitConfig::default(),
            retry: RetryPolicy::default(),
            seed: 7,
        }
    }

    /// Everything delivered without the breaker is delivered with it, none
    /// more than 1.5 cool-downs later.
    fn assert_not_starved(s: &Scenario, label: &str) {
        let cooldown = s.breaker.cooldown;
        let c = compare(s);
        assert!(c.without.delivered() > 0, "{label}");
        assert_eq!(c.with.delivered(), c.without.delivered(), "{label}");
        let later = c.with.most_later_than(&c.without);
        assert!(
            later <= cooldown + cooldown / 2,
            "{label}: delivered up to {later:?} later than without the breaker"
        );
    }

    /// The progress guarantee: a receiver that accepts at least one request
    /// in three gets every notification it would get without the breaker,
    /// each no later than about one cool-down after.
    #[test]
    fn a_receiver_accepting_one_request_in_three_is_never_starved() {
        for receiver in [
            Receiver::Random { fail: 0.0 },
            Receiver::Random { fail: 0.3 },
            Receiver::Random { fail: 0.6 },
            Receiver::Random { fail: 2.0 / 3.0 },
            Receiver::FirstFail { k: 1 },
            Receiver::FirstFail { k: 2 },
            Receiver::Slow {
                took: Duration::from_secs(8),
            },
        ] {
            for (rate, seed) in [(1.0, 1), (5.0, 2), (5.0, 3), (20.0, 4)] {
                let s = Scenario {
                    rate,
                    seed,
                    ..steady(receiver)
                };
                assert_not_starved(
                    &s,
                    &format!("{} at {rate}/s, seed {seed}", receiver.label()),
                );
            }
        }
    }

    /// The same for a burst: 2,000 notifications in one second after a
    /// quiet time, so at first the window holds nothing but first attempts.
    #[test]
    fn a_burst_after_a_quiet_time_is_not_starved_either() {
        for receiver in [
            Receiver::Random { fail: 0.6 },
            Receiver::FirstFail { k: 1 },
            Receiver::FirstFail { k: 2 },
        ] {
            let s = Scenario {
                rate: 2_000.0,
                input_for: Duration::from_secs(1),
                ..steady(receiver)
            };
            assert_not_starved(&s, &receiver.label());
        }
    }

    /// The protection bound: a hard-down receiver gets at most 5 % of the
    /// requests it would get without the breaker, over an hour of steady
    /// input.
    #[test]
    fn a_hard_down_receiver_gets_a_twentieth_of_the_requests() {
        for rate in [0.5, 5.0, 50.0] {
            let s = Scenario {
                rate,
                input_for: 60 * MIN,
                horizon: 60 * MIN,
                ..steady(Receiver::Down)
            };
            let c = compare(&s);
            assert_eq!(c.with.delivered(), 0);
            let share = c.with.requests as f64 / c.without.requests as f64;
            assert!(
                share <= 0.05,
                "{rate}/s: {} of {} requests ({share:.3})",
                c.with.requests,
                c.without.requests
            );
        }
    }

    #[test]
    fn a_recovered_receiver_gets_everything_within_one_longest_cooldown() {
        let config = CircuitConfig::default();
        let s = steady(Receiver::DownUntil { up_after: 20 * MIN });
        let c = compare(&s);
        assert_eq!(c.with.delivered(), c.without.delivered());
        assert_eq!(c.with.delivered(), c.with.delivered_after.len());
        let later = c.with.most_later_than(&c.without);
        assert!(later <= config.max_cooldown, "{later:?}");
    }

    #[test]
    fn parking_never_changes_attempt_numbers_or_exhausts() {
        // Same receiver decisions per (notification, attempt): every
        // notification delivered without the breaker is delivered with it
        // (checked above); none is exhausted by parking.
        let c = compare(&steady(Receiver::FirstFail { k: 2 }));
        assert_eq!(c.with.exhausted, c.without.exhausted);
    }

    #[test]
    fn the_cooldown_doubles_to_its_cap_and_resets() {
        let c = CircuitConfig::default();
        let secs: Vec<u64> = (0..7).map(|r| c.cooldown_after(r).as_secs()).collect();
        assert_eq!(secs, [30, 60, 120, 240, 480, 600, 600]);
        assert_eq!(c.cooldown_after(u32::MAX).as_secs(), 600);
        assert_eq!(c.probe_failures_to_open(), 9);
    }
}
