//! The circuit breaker in standalone mode, in-process against real HTTP
//! receivers on loopback: a failing endpoint opens its circuit, sees only
//! probes while it is open, and gets every parked notification with its
//! attempt numbers unchanged once it recovers; a second webhook keeps
//! flowing meanwhile.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use herald::standalone::{self, StandaloneConfig};
use herald_core::{CircuitState, Outcome, SecretRef, Status, Webhooks};
use herald_store::NotificationStore;
use herald_tests::{Failing, Reply, TestReceiver};
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn definitions(dead: &TestReceiver, live: &TestReceiver) -> String {
    format!(
        r#"
[defaults.retry]
max_attempts = 50
initial_delay = "500ms"
multiplier = 1.0
max_delay = "500ms"
jitter = 0.0

[[webhooks]]
id = "dead"
events = ["bank.loan.*"]
url = "{dead}"
body = '{{"loan": {{{{json subject}}}}}}'
[webhooks.circuit]
failure_threshold = 3
window = "1s"
cooldown = "1s"
max_cooldown = "1s"
half_open_probes = 1

[[webhooks]]
id = "live"
events = ["bank.loan.*"]
url = "{live}"
body = '{{"loan": {{{{json subject}}}}}}'
"#,
        dead = dead.url("/dead"),
        live = live.url("/live"),
    )
}

/// A standalone Herald on a fresh database with these definitions;
/// `concurrency` 0 keeps the default.
async fn start(
    name: &str,
    definitions: &str,
    concurrency: usize,
) -> (
    std::path::PathBuf,
    CancellationToken,
    standalone::Standalone,
) {
    let dir = std::env::temp_dir().join(herald_tests::unique_name(name));
    let shutdown = CancellationToken::new();
    let mut config = StandaloneConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database: dir.join("herald.db"),
        api_tokens: vec!["t".into()],
        ssrf_allow: vec!["127.0.0.0/8".into()],
        ..StandaloneConfig::default()
    };
    if concurrency > 0 {
        config.concurrency = concurrency;
    }
    let secrets: HashMap<SecretRef, String> = HashMap::new();
    let running = standalone::start(
        config,
        Webhooks::from_toml(definitions).unwrap(),
        Arc::new(secrets),
        shutdown.clone(),
    )
    .await
    .expect("start");
    (dir, shutdown, running)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_parks_a_failing_endpoint_and_delivers_everything_on_recovery() {
    let (dead, live) = (TestReceiver::start().await, TestReceiver::start().await);
    dead.set_default(Reply::status(500));
    // One attempt at a time: none is in flight when the circuit opens, so
    // the request counts below are exact.
    let (_dir, shutdown, running) = start("herald_circuit", &definitions(&dead, &live), 1).await;
    let engine = running.engine.clone();

    let events: Vec<_> = (0..20)
        .map(|i| {
            json!({"specversion": "1.0", "id": format!("e{i}"), "source": "/core",
                   "type": "bank.loan.disbursed", "subject": format!("L-{i}"), "data": {}})
        })
        .collect();
    let ids: Vec<_> = engine
        .accept(events)
        .await
        .expect("accepted")
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(ids.len(), 40);

    // Let a probe fail once, then recover the endpoint.
    let deadline = Instant::now() + Duration::from_secs(30);
    let reopened = loop {
        if let Some(v) = engine
            .circuits()
            .into_iter()
            .find(|v| v.webhook_id == "dead" && v.reason.starts_with("1 of 1 probes failed"))
        {
            break v.since;
        }
        assert!(Instant::now() < deadline, "no probe failed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    dead.set_default(Reply::ok());
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in &ids {
        loop {
            let r = engine.store().get(*id).await.unwrap().unwrap();
            if r.state.status == Status::Delivered {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{id} not delivered: {:?}",
                r.state
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let view = engine
        .circuits()
        .into_iter()
        .find(|v| v.webhook_id == "dead")
        .unwrap();
    assert_eq!(view.state, CircuitState::Closed, "{view:?}");
    shutdown.cancel();
    running.wait().await;

    // The dead endpoint's attempts, in order: failures held for a window
    // open the circuit; from then on only one probe per cool-down (1 s)
    // goes out until one succeeds and closes it; then the parked ones are
    // delivered.
    let mut dead_log: Vec<(DateTime<Utc>, bool)> = Vec::new();
    for id in &ids {
        let r = engine.store().get(*id).await.unwrap().unwrap();
        if r.notification.webhook_id == "dead" {
            dead_log.extend(
                r.attempts
                    .iter()
                    .map(|a| (a.started_at, a.outcome == Outcome::Success)),
            );
        }
    }
    dead_log.sort();
    let failures = dead_log.iter().take_while(|(_, ok)| !ok).count();
    assert!(
        failures >= 4,
        "three to open, then a failed probe: {dead_log:?}"
    );
    // The probe that failed at `reopened` started within the cool-down
    // before it, when nothing else was sent.
    let probing = dead_log
        .iter()
        .position(|(at, _)| *at >= reopened - chrono::Duration::milliseconds(500))
        .unwrap();
    assert!(
        dead_log[failures..].iter().all(|(_, ok)| *ok),
        "no failure after the circuit closed: {dead_log:?}"
    );
    assert_eq!(
        dead_log.len(),
        failures + 20,
        "one success per notification"
    );
    // Requests sent while the circuit was open are the probes: from the
    // failed probe to the first success, each is at least a cool-down after
    // the one before.
    assert!(probing < failures, "{dead_log:?}");
    for pair in dead_log[probing..=failures].windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(
            gap >= chrono::Duration::milliseconds(999),
            "a request {gap} after the previous one while the circuit was open: {dead_log:?}"
        );
    }

    // Parking consumed no attempt; the live webhook delivered every
    // notification at its first attempt.
    let mut dead_attempts = 0;
    for id in &ids {
        let r = engine.store().get(*id).await.unwrap().unwrap();
        let mut numbers: Vec<u32> = r.attempts.iter().map(|a| a.attempt_no).collect();
        numbers.sort();
        assert_eq!(numbers, (1..=r.attempts.len() as u32).collect::<Vec<_>>());
        if r.notification.webhook_id == "live" {
            assert_eq!(r.attempts.len(), 1);
        } else {
            dead_attempts += r.attempts.len();
        }
    }
    assert_eq!(
        dead_attempts,
        dead.received().len(),
        "every request recorded"
    );
    assert_eq!(dead_attempts, dead_log.len());
    assert_eq!(live.received().len(), 20);
}

/// Receivers that accept at least one request in three (the first one or
/// two attempts of each notification rejected, or 30 % or 60 % of requests
/// at random) are never starved by the default breaker. Scaled down
/// (retries after 300 ms, a 1 s window, so the window is longer than the
/// time to the third attempt, as the defaults are): every notification is
/// delivered, its attempts are numbered 1..n with only the last a success
/// (parking, if the breaker ever parks, changes no attempt number), and
/// every request is a recorded attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_never_starves_a_receiver_that_accepts_one_request_in_three() {
    for failing in [
        Failing::First(1),
        Failing::First(2),
        Failing::Share(0.3),
        Failing::Share(0.6),
    ] {
        accepts_eventually(failing).await;
    }
}

async fn accepts_eventually(failing: Failing) {
    let rx = TestReceiver::start().await;
    rx.fail(failing, 503);
    let defs = format!(
        r#"
[[webhooks]]
id = "sometimes"
events = ["bank.loan.*"]
url = "{url}"
body = '{{"loan": {{{{json subject}}}}}}'
[webhooks.retry]
max_attempts = 40
initial_delay = "300ms"
multiplier = 1.0
max_delay = "300ms"
jitter = 0.0
[webhooks.circuit]
window = "1s"
failure_threshold = 3
cooldown = "1s"
"#,
        url = rx.url("/sometimes")
    );
    let (dir, shutdown, running) = start("herald_circuit_matrix", &defs, 0).await;
    let engine = running.engine.clone();
    // A steady input: 60 notifications, 20 a second.
    let mut ids = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    for i in 0..60 {
        tick.tick().await;
        let event = json!({"specversion": "1.0", "id": format!("k{i}"), "source": "/core",
                           "type": "bank.loan.disbursed", "subject": format!("L-{i}")});
        ids.extend(
            engine
                .accept(vec![event])
                .await
                .expect("accepted")
                .into_iter()
                .map(|a| a.id),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut attempts = 0;
    for id in &ids {
        loop {
            let r = engine.store().get(*id).await.unwrap().unwrap();
            if r.state.status == Status::Delivered {
                let mut numbers: Vec<(u32, bool)> = r
                    .attempts
                    .iter()
                    .map(|a| (a.attempt_no, a.outcome == Outcome::Success))
                    .collect();
                numbers.sort();
                let n = numbers.len() as u32;
                let expected: Vec<(u32, bool)> = (1..=n).map(|i| (i, i == n)).collect();
                assert_eq!(numbers, expected, "{failing:?}: {id}");
                if let Failing::First(k) = failing {
                    assert_eq!(n as usize, k + 1, "{failing:?}: {id}");
                }
                attempts += numbers.len();
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{failing:?}: {id} not delivered within 60 s: {:?}; circuits {:?}",
                r.state,
                engine.circuits()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(
        rx.received().len(),
        attempts,
        "{failing:?}: one request per attempt"
    );
    let view = engine.circuits().pop().unwrap();
    eprintln!(
        "{failing:?}: {attempts} attempts; circuit at the end: {:?} ({})",
        view.state, view.reason
    );
    shutdown.cancel();
    running.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
}
