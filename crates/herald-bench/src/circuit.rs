//! `herald-bench circuit`: the breaker's table, from the discrete-event
//! model in `herald_core::circuit::sim` (simulated time, so the figures do
//! not depend on the machine). One row per receiver behaviour, each run
//! without and with the breaker at a steady input rate.

use std::time::Duration;

use herald_core::CircuitConfig;
use herald_core::RetryPolicy;
use herald_core::circuit::sim::{Receiver, Scenario, compare, matrix};
use serde_json::{Value, json};

const MIN: Duration = Duration::from_secs(60);

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(|| "never".into(), |d| format!("{:.0} s", d.as_secs_f64()))
}

/// Print the table for `breaker`; returns its rows as JSON.
fn table(title: &str, breaker: &CircuitConfig, rate: f64) -> Value {
    println!("\n{title}");
    println!(
        "{:<34} {:>13} {:>17} {:>15} {:>9} {:>7}",
        "receiver", "delivered", "all delivered at", "requests", "latest +", "opened"
    );
    let mut rows = Vec::new();
    for receiver in matrix() {
        // A hard-down receiver: an hour of steady input, counted over it.
        let (input_for, horizon) = if receiver == Receiver::Down {
            (60 * MIN, 60 * MIN)
        } else {
            (10 * MIN, 8 * 60 * MIN)
        };
        let s = Scenario {
            receiver,
            rate,
            input_for,
            horizon,
            breaker: breaker.clone(),
            retry: RetryPolicy::default(),
            seed: 7,
        };
        let c = compare(&s);
        let (off, on) = (&c.without, &c.with);
        println!(
            "{:<34} {:>6}/{:<6} {:>8}/{:<8} {:>7}/{:<7} {:>7.0} s {:>7}",
            receiver.label(),
            off.delivered(),
            on.delivered(),
            secs(off.all_delivered_at(rate)),
            secs(on.all_delivered_at(rate)),
            off.requests,
            on.requests,
            on.most_later_than(off).as_secs_f64(),
            on.opened,
        );
        rows.push(json!({
            "receiver": receiver.label(),
            "delivered_without": off.delivered(), "delivered_with": on.delivered(),
            "all_delivered_s_without": off.all_delivered_at(rate).map(|d| d.as_secs()),
            "all_delivered_s_with": on.all_delivered_at(rate).map(|d| d.as_secs()),
            "requests_without": off.requests, "requests_with": on.requests,
            "most_later_s": on.most_later_than(off).as_secs(), "opened": on.opened,
        }));
    }
    Value::Array(rows)
}

pub fn run() -> Value {
    let rate = 5.0;
    println!(
        "{rate} notifications/s for 10 min (hard down: 60 min), default retry policy, \
         simulated for 8 h (hard down: 1 h); columns: without/with the breaker; \
         'latest +': the most any notification was delivered later with it"
    );
    let now = table("default breaker", &CircuitConfig::default(), rate);
    let before = CircuitConfig {
        window: MIN,
        failure_threshold: 10,
        failure_ratio: 0.5,
        half_open_probes: 1,
        max_cooldown: Duration::from_secs(30),
        ..CircuitConfig::default()
    };
    let old = table(
        "the previous defaults (60 s window, 10 failures, ratio 0.5, one probe, fixed cool-down)",
        &before,
        rate,
    );
    json!({ "rate_per_s": rate, "default": now, "previous_defaults": old })
}
