//! The retry tiers in Kafka mode, end to end (real Kafka and CQL, loopback
//! receivers): a message waits in its tier at most the tier's delay and then
//! hops to the tier that fits what is left, so a neighbour's long wait never
//! holds another webhook's retries back; nothing is ever sent before its
//! due time; a due time no retry could have produced is dead-lettered while
//! the partition keeps flowing. Timings are printed, never asserted.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use herald_core::{DeliveryJob, Notification, NotificationId, Status, Webhooks};
use herald_kafka::headers;
use herald_store::NotificationStore;
use herald_tests::kafka_world::{definitions, start};
use herald_tests::{KafkaWorld, Received, Reply, TestReceiver, eventually};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use serde_json::json;

/// Default-shaped tiers, scaled down (10s / 1m / 10m / 1h / 6h → 1s / 10s /
/// 100s), and one partition per topic: every webhook's retries share each
/// tier partition, the worst case.
const TIERS: [&str; 3] = ["1s", "10s", "100s"];

fn hook(id: &str, url: &str, retry: &str) -> String {
    format!(
        r#"
[[webhooks]]
id = "{id}"
events = ["bank.{id}.*"]
url = "{url}"
signing_secrets = ["whsec"]
body = '{{"event": {{{{json id}}}}}}'
[webhooks.retry]
{retry}
[webhooks.circuit]
enabled = false
"#
    )
}

fn events(webhook: &str, n: usize) -> impl Iterator<Item = serde_json::Value> {
    let webhook = webhook.to_owned();
    (0..n).map(move |i| {
        json!({"specversion": "1.0", "id": format!("{webhook}-{i}"), "source": "/core",
               "type": format!("bank.{webhook}.posted"), "subject": format!("S-{i}")})
    })
}

fn at(t: SystemTime) -> DateTime<Utc> {
    t.into()
}

fn webhook_id(r: &Received) -> NotificationId {
    r.header("webhook-id").unwrap().parse().unwrap()
}

/// When each notification's retry (its second request) arrived, and when it
/// was due (the first attempt's recorded `next_attempt_at`).
async fn retries(
    w: &KafkaWorld,
    rx: &TestReceiver,
    ns: &[Notification],
) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let got = rx.received();
    let mut out = Vec::new();
    for n in ns {
        let mut attempts = w.attempts(n.id).await;
        attempts.sort_by_key(|a| a.attempt_no);
        let due = attempts[0].next_attempt_at.expect("a retry was scheduled");
        let second = got
            .iter()
            .filter(|r| webhook_id(r) == n.id)
            .nth(1)
            .expect("the retry arrived");
        out.push((at(second.at), due));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_neighbours_long_retry_after_never_holds_back_another_webhooks_retries() {
    let Some(w) = KafkaWorld::with_tiers("tiers_mixed", 1, &TIERS).await else {
        return;
    };
    // A answers 503 with Retry-After 40 s (its cap is 45 s): its retries
    // wait in the 10s tier, whose partition they reach first.
    let a_rx = TestReceiver::start().await;
    a_rx.push_replies((0..5).map(|_| Reply::WithHeaders {
        status: 503,
        headers: vec![("Retry-After".into(), "40".into())],
    }));
    // B fails once; its retry is due 12 s later: longer than one 10s-tier
    // stay, so it crosses a tier boundary.
    let b_rx = TestReceiver::start().await;
    b_rx.push_replies((0..5).map(|_| Reply::status(503)));
    let retry = |initial: &str| {
        format!(
            "max_attempts = 3\ninitial_delay = \"{initial}\"\nmultiplier = 1.0\nmax_delay = \"{initial}\"\njitter = 0.0\nretry_after_max = \"45s\""
        )
    };
    let toml = definitions(&[
        hook("a", &a_rx.url("/a"), &retry("2s")),
        hook("b", &b_rx.url("/b"), &retry("12s")),
    ]);
    let webhooks = Webhooks::from_toml(&toml).unwrap();
    let svc = start(w.config(), &toml).await;

    let a = w.ingest(&webhooks, events("a", 5)).await;
    a_rx.wait_for(5, Duration::from_secs(30)).await;
    let b = w.ingest(&webhooks, events("b", 5)).await;
    for n in a.iter().chain(&b) {
        eventually(
            "every notification delivered",
            Duration::from_secs(120),
            async || (w.status(n.id).await == Some(Status::Delivered)).then_some(()),
        )
        .await;
    }
    let metrics = svc.get("/metrics").await;
    svc.stop().await;

    let a_retries = retries(&w, &a_rx, &a).await;
    let b_retries = retries(&w, &b_rx, &b).await;
    let a_first_due = a_retries.iter().map(|(_, due)| *due).min().unwrap();
    // The precondition: B's retries are due well before A's.
    assert!(
        b_retries.iter().all(|(_, due)| *due < a_first_due),
        "B's retries must be due before A's: {b_retries:?} vs {a_first_due}"
    );
    for (arrived, due) in a_retries.iter().chain(&b_retries) {
        assert!(arrived >= due, "a retry arrived at {arrived}, before {due}");
    }
    // Waiting behind A's heads, B's retries would arrive only once A's are
    // due; with the cascade they are never held back by them.
    for (arrived, due) in &b_retries {
        assert!(
            *arrived < a_first_due,
            "B's retry due {due} arrived at {arrived}, after A's first was due ({a_first_due})"
        );
    }
    let lateness = |r: &[(DateTime<Utc>, DateTime<Utc>)]| {
        let mut ms: Vec<i64> = r
            .iter()
            .map(|(arrived, due)| (*arrived - *due).num_milliseconds())
            .collect();
        ms.sort();
        ms
    };
    eprintln!(
        "lateness (ms): B {:?}, A {:?}",
        lateness(&b_retries),
        lateness(&a_retries)
    );
    assert!(
        metrics.contains("herald_delivery_tier_hops_total{tier=\"10s\"}"),
        "A's and B's retries hopped out of the 10s tier: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forged_due_time_is_dead_lettered_and_the_partition_keeps_flowing() {
    let Some(w) = KafkaWorld::with_tiers("tiers_forged", 1, &TIERS).await else {
        return;
    };
    let rx = TestReceiver::start().await;
    let toml = definitions(&[hook(
        "a",
        &rx.url("/a"),
        "max_attempts = 3\ninitial_delay = \"1s\"\nmax_delay = \"1s\"",
    )]);
    let webhooks = Webhooks::from_toml(&toml).unwrap();
    let event = events("a", 1).next().unwrap();
    let event = herald_core::CloudEvent::from_value(event).unwrap();
    let notifications = webhooks.notifications(&event, Utc::now());
    w.store.append_notifications(&notifications).await.unwrap();
    let job = DeliveryJob::first(&notifications[0]).unwrap();
    let payload = serde_json::to_vec(&job).unwrap();
    let topic = w.topics.retry("10s");
    let far = (Utc::now() + chrono::Duration::days(365 * 100))
        .timestamp_millis()
        .to_string();
    let now = Utc::now().timestamp_millis().to_string();
    // Ahead of the real job in the same partition: a due time a century
    // away, then one that is not a number.
    for due in [far.as_str(), "soon", now.as_str()] {
        let hdrs = OwnedHeaders::new().insert(Header {
            key: headers::DUE_AT,
            value: Some(due),
        });
        w.producer
            .send(
                FutureRecord::to(&topic)
                    .key(&job.key())
                    .payload(&payload)
                    .headers(hdrs),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let svc = start(w.config(), &toml).await;
    let got = rx.wait_for(1, Duration::from_secs(60)).await;
    assert_eq!(webhook_id(&got[0]), notifications[0].id);
    eventually("delivered", Duration::from_secs(30), async || {
        (w.status(job.notification_id).await == Some(Status::Delivered)).then_some(())
    })
    .await;
    let dead = w.dead_letters();
    let mut reasons = Vec::new();
    while reasons.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(30), dead.recv())
            .await
            .expect("two dead letters")
            .unwrap();
        let error = m
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == headers::ERROR))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        reasons.push(error);
    }
    svc.stop().await;
    // Dead letters are produced asynchronously, so their order is not the
    // order the consumer met the forged messages in.
    for cause in [
        "later than any retry or cool-down allows",
        "missing or unreadable",
    ] {
        assert_eq!(
            reasons.iter().filter(|r| r.contains(cause)).count(),
            1,
            "one dead letter for {cause:?}: {reasons:?}"
        );
    }
    assert_eq!(rx.received().len(), 1, "the forged copies were never sent");
}
