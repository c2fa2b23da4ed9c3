//! The per-webhook circuit breaker in Kafka mode, end to end: real Kafka, a
//! real CQL node and scripted receivers. Each test has its own topics,
//! consumer group and keyspace, stores notifications and produces their
//! first jobs itself (standing in for ingest), and asserts what the
//! receivers got, what the store holds and what went over the circuits
//! topic. Timings are printed, never asserted.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use herald_core::{CircuitState, Status, Webhooks};
use herald_delivery::DeliveryConfig;
use herald_tests::kafka_world::{DeliveryWorker, definitions, start};
use herald_tests::{Failing, KafkaWorld, Received, Reply, TestReceiver, eventually_every};
use serde_json::json;

const PARTITIONS: i32 = 3;

/// Worker `instance`'s config in this world.
fn worker(w: &KafkaWorld, instance: &str) -> DeliveryConfig {
    DeliveryConfig {
        // One request at a time per webhook and worker: no request is in
        // flight when a circuit opens, so the counts below are exact.
        max_in_flight_per_webhook: 1,
        instance_id: Some(instance.into()),
        ..w.config()
    }
}

/// `events` loan events tagged `tag`, each with its own subject.
fn loans(tag: &str, events: usize) -> impl Iterator<Item = serde_json::Value> {
    (0..events).map(move |i| {
        json!({
            "specversion": "1.0", "id": format!("{tag}-{i}"), "source": "/core/loans",
            "type": "bank.loan.disbursed", "subject": format!("LN-{i}"),
            "data": {"amount": i}
        })
    })
}

/// Polls every 20 ms: the follow lag printed below is measured by it.
async fn eventually<T>(what: &str, timeout: Duration, f: impl AsyncFnMut() -> Option<T>) -> T {
    eventually_every(what, timeout, Duration::from_millis(20), f).await
}

/// A webhook with a fast retry policy and the given `[webhooks.circuit]`.
fn webhook(id: &str, url: &str, circuit: &str) -> String {
    format!(
        r#"
[[webhooks]]
id = "{id}"
events = ["bank.loan.*"]
url = "{url}"
signing_secrets = ["whsec"]
body = '{{"event": {{{{json id}}}}}}'
timeout = "2s"
[webhooks.retry]
max_attempts = 50
initial_delay = "1s"
multiplier = 1.0
max_delay = "1s"
jitter = 0.0
[webhooks.circuit]
{circuit}
"#
    )
}

/// Requests per second from the first to the last of `got`.
fn rate(got: &[Received]) -> f64 {
    let span = got[got.len() - 1]
        .at
        .duration_since(got[0].at)
        .unwrap_or_default();
    (got.len() - 1) as f64 / span.as_secs_f64().max(0.001)
}

fn requests_between(got: &[Received], from: DateTime<Utc>, to: DateTime<Utc>) -> usize {
    let (from, to) = (SystemTime::from(from), SystemTime::from(to));
    got.iter().filter(|r| r.at > from && r.at <= to).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_endpoint_sees_only_probes_and_gets_every_parked_notification_on_recovery() {
    let Some(w) = KafkaWorld::new("circuit_parks", PARTITIONS).await else {
        return;
    };
    let receiver = TestReceiver::start().await;
    receiver.set_default(Reply::status(500));
    let hooks = definitions(&[webhook(
        "dead",
        &receiver.url("/hook"),
        "failure_threshold = 3\nfailure_ratio = 0.5\nwindow = \"1s\"\ncooldown = \"2s\"\nmax_cooldown = \"2s\"\nhalf_open_probes = 1",
    )]);
    let webhooks = Webhooks::from_toml(&hooks).unwrap();
    let service = start(worker(&w, "w1"), &hooks).await;
    let notifications = w.ingest(&webhooks, loans("p", 20)).await;

    // The circuit opens once the failures held for a window; let at least
    // one probe fail.
    eventually(
        "a failed probe re-opened the circuit",
        Duration::from_secs(60),
        async || {
            let opens = w
                .circuit_changes()
                .iter()
                .filter(|c| c.state == CircuitState::Open)
                .count();
            (opens >= 2).then_some(())
        },
    )
    .await;
    assert!(service.metric_sum("herald_delivery_parked_total") > 0);
    receiver.set_default(Reply::ok());
    for n in &notifications {
        eventually(
            "every notification delivered",
            Duration::from_secs(60),
            async || (w.status(n.id).await == Some(Status::Delivered)).then_some(()),
        )
        .await;
    }
    assert_eq!(service.circuits.state("dead"), Some(CircuitState::Closed));
    service.stop().await;

    let changes = w.circuit_changes();
    let states: Vec<_> = changes.iter().map(|c| c.state).collect();
    let opens = states.iter().filter(|s| **s == CircuitState::Open).count();
    assert!(opens >= 2, "{states:?}");
    assert_eq!(
        states[..opens],
        vec![CircuitState::Open; opens],
        "{states:?}"
    );
    assert_eq!(states[opens..], [CircuitState::Closed], "{states:?}");
    assert!(changes.iter().all(|c| c.changed_by == "w1"));
    assert!(
        changes[0]
            .reason
            .ends_with("attempts failed within 1s; cool-down 2s"),
        "{}",
        changes[0].reason
    );

    // While open or half-open the receiver saw only the probes: one per
    // cool-down, the last of which closed the circuit.
    let got = receiver.received();
    let (opened, closed) = (changes[0].since, changes[opens].since);
    let probes = requests_between(&got, opened, closed);
    // Every request before the circuit opened failed (the failures had to
    // hold for a window); one request at a time, so none was in flight.
    let to_open = requests_between(&got, DateTime::<Utc>::MIN_UTC, opened);
    eprintln!(
        "circuit open {:.1}s: {probes} probe requests, {opens} opens, {} requests in all",
        (closed - opened).num_milliseconds() as f64 / 1000.0,
        got.len()
    );
    assert_eq!(probes, opens);

    // Parking consumed no attempt: every notification's attempts are
    // numbered 1..=n without gaps, and the only failed attempts are those
    // that opened the circuit and the failed probes.
    let mut total = 0;
    let mut single = 0;
    for n in &notifications {
        let attempts = w.attempts(n.id).await;
        let mut numbers: Vec<u32> = attempts.iter().map(|a| a.attempt_no).collect();
        numbers.sort();
        assert_eq!(numbers, (1..=attempts.len() as u32).collect::<Vec<_>>());
        total += attempts.len();
        single += usize::from(attempts.len() == 1);
    }
    assert_eq!(total, got.len(), "one recorded attempt per request");
    assert_eq!(total, 20 + to_open + (opens - 1));
    assert!(
        single >= 20usize.saturating_sub(to_open + opens - 1),
        "{single} delivered at attempt 1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_webhook_on_the_same_partitions_keeps_flowing_while_the_first_is_open() {
    let Some(w) = KafkaWorld::new("circuit_neighbour", PARTITIONS).await else {
        return;
    };
    let dead = TestReceiver::start().await;
    dead.set_default(Reply::status(503));
    let live = TestReceiver::start().await;
    let hooks = definitions(&[
        webhook(
            "dead",
            &dead.url("/dead"),
            // The window still holds the healthy phase's successes.
            "failure_threshold = 3\nfailure_ratio = 0.005\nwindow = \"2s\"\ncooldown = \"5s\"\nhalf_open_probes = 1",
        ),
        webhook("live", &live.url("/live"), ""),
    ]);
    let webhooks = Webhooks::from_toml(&hooks).unwrap();
    let mut config = worker(&w, "w1");
    config.max_in_flight_per_webhook = 16;
    let service = start(config, &hooks).await;

    // Baselines: the live webhook alone, then next to a healthy neighbour
    // (the same number of jobs as below).
    let live_only =
        Webhooks::from_toml(&definitions(&[webhook("live", &live.url("/live"), "")])).unwrap();
    const N: usize = 400;
    w.ingest(&live_only, loans("base", N)).await;
    let alone = rate(&live.wait_for(N, Duration::from_secs(120)).await);
    dead.set_default(Reply::ok());
    w.ingest(&webhooks, loans("healthy", N)).await;
    let got = live.wait_for(2 * N, Duration::from_secs(120)).await;
    let healthy = rate(&got[N..]);
    dead.wait_for(N, Duration::from_secs(120)).await;

    // Open the dead webhook's circuit.
    dead.set_default(Reply::status(503));
    w.ingest(&webhooks, loans("warm", 5)).await;
    live.wait_for(2 * N + 5, Duration::from_secs(60)).await;
    eventually("the circuit opened", Duration::from_secs(30), async || {
        (service.circuits.state("dead") == Some(CircuitState::Open)).then_some(())
    })
    .await;

    // Both webhooks' jobs share every partition.
    let phase = SystemTime::now();
    let both = w.ingest(&webhooks, loans("both", N)).await;
    let got = live.wait_for(3 * N + 5, Duration::from_secs(120)).await;
    let with_open = rate(&got[2 * N + 5..]);
    let dead_during = dead.received().iter().filter(|r| r.at > phase).count();
    eprintln!(
        "live webhook: {alone:.0}/s alone, {healthy:.0}/s next to a healthy webhook, \
         {with_open:.0}/s next to an open circuit ({N} each); the dead endpoint got \
         {dead_during} requests meanwhile"
    );
    service.stop().await;

    // Every live notification went through at its first attempt, the dead
    // endpoint saw only probes (it never recovered, so the circuit never
    // closed), and no dead notification ran out of attempts.
    for n in both.iter().filter(|n| n.webhook_id == "live") {
        let attempts = w.attempts(n.id).await;
        assert_eq!(attempts.len(), 1);
        assert_eq!(w.status(n.id).await, Some(Status::Delivered));
    }
    let changes = w.circuit_changes();
    assert!(
        changes.iter().all(|c| c.state == CircuitState::Open),
        "{changes:?}"
    );
    assert!(
        dead_during <= changes.len(),
        "{dead_during} requests, {} opens",
        changes.len()
    );
    for n in both.iter().filter(|n| n.webhook_id == "dead") {
        assert_ne!(w.status(n.id).await, Some(Status::Failed));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_circuit_opened_by_one_worker_stops_the_other() {
    let Some(w) = KafkaWorld::new("circuit_shared", PARTITIONS).await else {
        return;
    };
    let receiver = TestReceiver::start().await;
    receiver.set_default(Reply::status(500));
    // Worker 2 could never open the circuit itself: it must learn it.
    let opener = definitions(&[webhook(
        "dead",
        &receiver.url("/hook"),
        "failure_threshold = 3\nwindow = \"1s\"\ncooldown = \"10m\"",
    )]);
    let follower = definitions(&[webhook(
        "dead",
        &receiver.url("/hook"),
        "failure_threshold = 100000\ncooldown = \"10m\"",
    )]);
    let webhooks = Webhooks::from_toml(&opener).unwrap();
    let w1 = start(worker(&w, "w1"), &opener).await;
    let w2 = start(worker(&w, "w2"), &follower).await;
    // Both workers own partitions before the jobs arrive.
    eventually(
        "both workers consuming",
        Duration::from_secs(60),
        async || {
            let lag =
                |r: &DeliveryWorker| r.metrics.render().contains("herald_delivery_consumer_lag");
            (lag(&w1) && lag(&w2)).then_some(())
        },
    )
    .await;
    w.ingest(&webhooks, loans("s", 60)).await;

    let seen_by_w2 = eventually(
        "worker 2 follows the open circuit",
        Duration::from_secs(60),
        async || (w2.circuits.state("dead") == Some(CircuitState::Open)).then(Utc::now),
    )
    .await;
    let opened = w
        .circuit_changes()
        .into_iter()
        .find(|c| c.state == CircuitState::Open)
        .expect("an open change");
    assert_eq!(opened.changed_by, "w1");
    let lag_ms = (seen_by_w2 - opened.since).num_milliseconds();
    eprintln!(
        "worker 2 followed worker 1's open circuit {lag_ms} ms after it opened (poll every 20 ms)"
    );
    assert!(w2.metric_sum("herald_delivery_circuit_changes_total{source=\"remote\"") >= 1);

    // Once both know, nothing reaches the endpoint until the cool-down ends:
    // wait until every first job was attempted or parked.
    let group = worker(&w, "w1").group_id;
    eventually(
        "every first job attempted or parked",
        Duration::from_secs(60),
        async || (w.uncommitted_deliveries(&group) == 0).then_some(()),
    )
    .await;
    // The cool-down (10 minutes) outlasts the test, whatever the machine's
    // speed: the window below ends when the test looks.
    let until = opened.until.expect("open until");
    assert!(Utc::now() < until, "the test outlived the cool-down");
    let got = receiver.received();
    let after = requests_between(&got, seen_by_w2, until);
    eprintln!("{} requests in all, {after} after worker 2 knew", got.len());
    // At most the one request worker 2 had in flight when it learned.
    assert!(after <= 1, "{after} requests after both workers knew");
    w1.stop().await;
    w2.stop().await;
}

/// Receivers that accept at least one request in three (the first one or
/// two attempts of each notification rejected, or 60 % of requests at
/// random) are never starved: a burst of notifications, retries after 1 s,
/// and a window (6 s) longer than the time to the third attempt, as the
/// defaults are. Every notification is delivered, its attempts are numbered
/// 1..n with only the last a success (parking, if the breaker ever parks,
/// changes no attempt number), and every request is a recorded attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn receivers_that_accept_one_request_in_three_are_never_starved() {
    for (i, failing) in [Failing::First(1), Failing::First(2), Failing::Share(0.6)]
        .into_iter()
        .enumerate()
    {
        let Some(w) = KafkaWorld::new(&format!("circuit_matrix{i}"), PARTITIONS).await else {
            return;
        };
        let receiver = TestReceiver::start().await;
        receiver.fail(failing, 503);
        let hooks = definitions(&[webhook(
            "sometimes",
            &receiver.url("/hook"),
            "failure_threshold = 3\nwindow = \"6s\"\ncooldown = \"1s\"",
        )]);
        let webhooks = Webhooks::from_toml(&hooks).unwrap();
        let mut config = worker(&w, "w1");
        config.max_in_flight_per_webhook = 16;
        let service = start(config, &hooks).await;
        let notifications = w.ingest(&webhooks, loans("k", 60)).await;
        for n in &notifications {
            eventually(
                "every notification delivered",
                Duration::from_secs(120),
                async || (w.status(n.id).await == Some(Status::Delivered)).then_some(()),
            )
            .await;
        }
        service.stop().await;
        let mut attempts = 0;
        for n in &notifications {
            let mut numbers: Vec<(u32, bool)> = w
                .attempts(n.id)
                .await
                .iter()
                .map(|a| (a.attempt_no, a.outcome == herald_core::Outcome::Success))
                .collect();
            numbers.sort();
            let last = numbers.len() as u32;
            let expected: Vec<(u32, bool)> = (1..=last).map(|i| (i, i == last)).collect();
            assert_eq!(numbers, expected, "{failing:?}: {}", n.id);
            if let Failing::First(k) = failing {
                assert_eq!(last as usize, k + 1, "{failing:?}: {}", n.id);
            }
            attempts += numbers.len();
        }
        assert_eq!(receiver.received().len(), attempts, "{failing:?}");
        eprintln!(
            "{failing:?}: {attempts} attempts; circuit changes {:?}",
            w.circuit_changes()
                .iter()
                .map(|c| (c.state, c.reason.clone()))
                .collect::<Vec<_>>()
        );
    }
}
