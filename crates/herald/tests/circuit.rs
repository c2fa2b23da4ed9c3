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
use herald_tests::{Reply, TestReceiver};
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
window = "30s"
cooldown = "1s"

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_parks_a_failing_endpoint_and_delivers_everything_on_recovery() {
    let (dead, live) = (TestReceiver::start().await, TestReceiver::start().await);
    dead.set_default(Reply::status(500));
    let dir = std::env::temp_dir().join(herald_tests::unique_name("herald_circuit"));
    let shutdown = CancellationToken::new();
    let config = StandaloneConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database: dir.join("herald.db"),
        api_tokens: vec!["t".into()],
        ssrf_allow: vec!["127.0.0.0/8".into()],
        // One attempt at a time: none is in flight when the circuit opens,
        // so the request counts below are exact.
        concurrency: 1,
        ..StandaloneConfig::default()
    };
    let webhooks = Webhooks::from_toml(&definitions(&dead, &live)).unwrap();
    let secrets: HashMap<SecretRef, String> = HashMap::new();
    let running = standalone::start(config, webhooks, Arc::new(secrets), shutdown.clone())
        .await
        .expect("start");
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
    while !engine
        .circuits()
        .iter()
        .any(|v| v.webhook_id == "dead" && v.reason == "probe failed")
    {
        assert!(Instant::now() < deadline, "no probe failed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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

    // The dead endpoint's attempts, in order: three failures open the
    // circuit; from then on only one probe per cool-down (1 s) goes out
    // until one succeeds and closes it; then the parked ones are delivered.
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
    assert!(
        dead_log[failures..].iter().all(|(_, ok)| *ok),
        "no failure after the circuit closed: {dead_log:?}"
    );
    assert_eq!(
        dead_log.len(),
        failures + 20,
        "one success per notification"
    );
    // Requests sent while the circuit was open are the probes: from the third
    // failure to the first success, each is at least a cool-down after the
    // one before.
    for pair in dead_log[2..=failures].windows(2) {
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
