//! The Kafka delivery service end to end: real Kafka, a real CQL node and
//! scripted receivers. Each test has its own topic prefix, consumer group and
//! keyspace; it stores notifications and produces their first jobs itself
//! (standing in for ingest), runs the service in-process and asserts what
//! the receivers got, what the store holds and which offsets are committed.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use herald_core::signing;
use herald_core::{
    Attempt, DeliveryJob, Notification, NotificationId, Outcome, ResendCommand, Status, Trigger,
    Webhooks,
};
use herald_delivery::DeliveryConfig;
use herald_delivery::service::{BulkResend, publish_bulk_resend, publish_resend};
use herald_kafka::headers;
use herald_store::{NotificationStore, TimeRange};
use herald_tests::kafka_world::{TIERS, definitions, metric_sum, signing_key, start};
use herald_tests::{KafkaWorld, Received, Reply, TestReceiver, eventually};
use rdkafka::message::Message;
use serde_json::json;

const PARTITIONS: i32 = 3;

/// `events` loan events tagged `tag`: 17 subjects, a note that needs escaping.
fn loans(tag: &str, events: usize) -> impl Iterator<Item = serde_json::Value> {
    (0..events).map(move |i| {
        json!({
            "specversion": "1.0", "id": format!("{tag}-{i}"), "source": "/core/loans",
            "type": "bank.loan.disbursed", "subject": format!("LN-{}", i % 17),
            "data": {"amount": i, "note": "ünïcödé \"quoted\""}
        })
    })
}

/// The total of `herald_delivery_attempts_total` in a metrics text.
fn attempts_made(metrics: &str) -> u64 {
    metric_sum(metrics, "herald_delivery_attempts_total{")
}

/// A webhook definition in TOML.
fn webhook(id: &str, url: &str, timeout: &str, retry: &str) -> String {
    format!(
        r#"
[[webhooks]]
id = "{id}"
events = ["bank.loan.*"]
url = "{url}"
signing_secrets = ["whsec"]
body = '{{"event": {{{{json id}}}}, "amount": {{{{json data.amount}}}}, "note": {{{{json data.note}}}}}}'
timeout = "{timeout}"
[webhooks.retry]
{retry}
"#
    )
}

const FAST_RETRY: &str =
    "max_attempts = 2\ninitial_delay = \"1s\"\nmultiplier = 1.0\nmax_delay = \"1s\"\njitter = 0.0";

fn webhook_id(r: &Received) -> NotificationId {
    r.header("webhook-id")
        .expect("webhook-id header")
        .parse()
        .expect("webhook-id is a notification id")
}

fn verify(r: &Received) {
    signing::verify(
        &[signing_key()],
        r.header("webhook-id").unwrap(),
        r.header("webhook-timestamp").unwrap(),
        r.header("webhook-signature").unwrap(),
        &r.body,
        Utc::now(),
        Duration::from_secs(300),
    )
    .expect("signature verifies");
}

fn at(t: SystemTime) -> DateTime<Utc> {
    t.into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_delivers_each_job_once_and_commits() {
    let Some(w) = KafkaWorld::new("dsvc_happy", PARTITIONS).await else {
        return;
    };
    let rx = TestReceiver::start().await;
    let toml = definitions(&[webhook("crm", &rx.url("/hook"), "5s", FAST_RETRY)]);
    let webhooks = Webhooks::from_toml(&toml).unwrap();
    let config = w.config();
    let group = config.group_id.clone();
    let svc = start(config, &toml).await;
    let notifications = w.ingest(&webhooks, loans("happy", 30)).await;

    let got = rx.wait_for(30, Duration::from_secs(60)).await;
    let by_id: HashMap<NotificationId, &Notification> =
        notifications.iter().map(|n| (n.id, n)).collect();
    let mut seen = HashSet::new();
    for r in &got {
        let id = webhook_id(r);
        assert!(seen.insert(id), "{id} delivered twice");
        verify(r);
        let stored = by_id[&id].request().unwrap();
        assert_eq!(r.body.as_ref(), stored.body.as_bytes(), "stored body sent");
        assert_eq!(r.method, "POST");
    }
    assert_eq!(seen.len(), notifications.len());

    for n in &notifications {
        eventually(
            "attempt recorded as delivered",
            Duration::from_secs(30),
            async || (w.status(n.id).await == Some(Status::Delivered)).then_some(()),
        )
        .await;
        let attempts = w.attempts(n.id).await;
        assert_eq!(attempts.len(), 1);
        assert_eq!(
            (
                attempts[0].trigger,
                attempts[0].outcome,
                attempts[0].http_status
            ),
            (Trigger::Auto, Outcome::Success, Some(200))
        );
    }
    eventually("offsets committed", Duration::from_secs(30), async || {
        (w.uncommitted_deliveries(&group) == 0).then_some(())
    })
    .await;

    let metrics = svc.get("/metrics").await;
    assert!(
        metrics.contains(
            r#"herald_delivery_attempts_total{outcome="success",status_class="2xx",webhook="crm"} 30"#
        ),
        "{metrics}"
    );
    // The store's own requests are reported: one batch written for each
    // delivery (the attempt with its state), and nothing else but the
    // attempts read before a job produced before this worker had its
    // partitions (it may have been done already).
    let sent = |statement: &str| {
        let name = format!(r#"herald_store_requests_total{{statement="{statement}"}}"#);
        metric_sum(&metrics, &name)
    };
    assert_eq!(sent("attempt_delivered_batch"), 30, "{metrics}");
    assert_eq!(
        metric_sum(&metrics, "herald_store_requests_total") - sent("select_attempts"),
        30,
        "{metrics}"
    );
    for path in ["/healthz", "/readyz"] {
        let r = svc.get(path).await;
        assert_eq!(r.split_whitespace().nth(1), Some("200"), "{path}: {r}");
    }
    svc.stop().await;
    assert_eq!(rx.received().len(), 30, "nothing sent twice");
    // The signing key signed every request and reached neither the store
    // nor the metrics.
    let whsec = signing_key().to_whsec();
    let key = whsec.trim_start_matches("whsec_");
    assert!(!metrics.contains(key));
    for n in &notifications {
        let record = format!("{:?}", w.store.get(n.id).await.unwrap());
        assert!(record.contains(&n.id.to_string()), "the record was read");
        assert!(
            !record.contains(key),
            "the store holds the signing key: {record}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_a_previous_owner_delivered_without_committing_are_skipped() {
    let Some(w) = KafkaWorld::new("dsvc_redo", PARTITIONS).await else {
        return;
    };
    let rx = TestReceiver::start().await;
    let toml = definitions(&[webhook("crm", &rx.url("/hook"), "5s", FAST_RETRY)]);
    let webhooks = Webhooks::from_toml(&toml).unwrap();
    let notifications = w.ingest(&webhooks, loans("redo", 20)).await;
    // A previous owner of the partitions delivered the first ten and
    // recorded it, then died before committing: their jobs are still ahead
    // of the group's offsets. The eleventh failed and was recorded as
    // retrying; whether its retry went out is unknown, so the redone job
    // schedules that retry (attempt 2) instead of making attempt 1 again:
    // one chain, no duplicate attempt number.
    let (done, rest) = notifications.split_at(10);
    let recorded = |n: &Notification, ok: bool| Attempt {
        notification_id: n.id,
        attempt_id: uuid::Uuid::now_v7(),
        attempt_no: 1,
        trigger: Trigger::Auto,
        started_at: Utc::now(),
        duration_ms: 5,
        outcome: if ok {
            Outcome::Success
        } else {
            Outcome::HttpError
        },
        http_status: Some(if ok { 200 } else { 503 }),
        error: (!ok).then(|| "http 503".to_owned()),
        response_excerpt: None,
        next_attempt_at: (!ok).then(Utc::now),
    };
    let mut earlier: Vec<Attempt> = done.iter().map(|n| recorded(n, true)).collect();
    earlier.push(recorded(&rest[0], false));
    w.store.append_attempts(&earlier).await.unwrap();

    let config = w.config();
    let group = config.group_id.clone();
    let svc = start(config, &toml).await;
    rx.wait_for(rest.len(), Duration::from_secs(60)).await;
    eventually(
        "every job's offset committed",
        Duration::from_secs(60),
        async || (w.uncommitted_deliveries(&group) == 0).then_some(()),
    )
    .await;
    let metrics = svc.get("/metrics").await;
    svc.stop().await;

    let sent: HashSet<NotificationId> = rx.received().iter().map(webhook_id).collect();
    let want: HashSet<NotificationId> = rest.iter().map(|n| n.id).collect();
    assert_eq!(rx.received().len(), rest.len(), "nothing sent twice");
    assert_eq!(
        sent, want,
        "only the notifications not yet delivered were sent"
    );
    for n in done {
        assert_eq!(
            w.attempts(n.id).await.len(),
            1,
            "no second attempt for {}",
            n.id
        );
    }
    assert_eq!(w.status(rest[0].id).await, Some(Status::Delivered));
    let numbers: Vec<u32> = w
        .attempts(rest[0].id)
        .await
        .iter()
        .map(|a| a.attempt_no)
        .collect();
    assert_eq!(numbers, [1, 2], "the cut chain resumed at attempt 2");
    assert!(
        metrics.contains(r#"herald_delivery_skipped_total{reason="delivered",webhook="crm"} 10"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"herald_delivery_skipped_total{reason="already_attempted",webhook="crm"} 1"#
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_are_retried_through_the_tiers_never_early() {
    let Some(w) = KafkaWorld::new("dsvc_retry", PARTITIONS).await else {
        return;
    };
    let rx = TestReceiver::start().await;
    // Delays 1s then 3s: the first retry waits in tier 1s, the second in 3s.
    rx.push_replies([Reply::status(503), Reply::status(500)]);
    let retry = "max_attempts = 5\ninitial_delay = \"1s\"\nmultiplier = 3.0\nmax_delay = \"10s\"\njitter = 0.0";
    let toml = definitions(&[webhook("crm", &rx.url("/hook"), "5s", retry)]);
    let webhooks = Webhooks::from_toml(&toml).unwrap();
    let svc = start(w.config(), &toml).await;
    let n = w.ingest(&webhooks, loans("retry", 1)).await.remove(0);

    let got = rx.wait_for(3, Duration::from_secs(60)).await;
    eventually(
        "delivered on attempt 3",
        Duration::from_secs(30),
        async || (w.status(n.id).await == Some(Status::Delivered)).then_some(()),
    )
    .await;
    let mut attempts = w.attempts(n.id).await;
    attempts.sort_by_key(|a| a.attempt_no);
    let summary: Vec<_> = attempts
        .iter()
        .map(|a| (a.attempt_no, a.trigger, a.outcome, a.http_status))
        .collect();
    assert_eq!(
        summary,
        [
            (1, Trigger::Auto, Outcome::HttpError, Some(503)),
            (2, Trigger::Retry, Outcome::HttpError, Some(500)),
            (3, Trigger::Retry, Outcome::Success, Some(200)),
        ]
    );
    for i in 1..3 {
        let due = attempts[i - 1]
            .next_attempt_at
            .expect("retry was scheduled");
        assert!(
            at(got[i].at) >= due,
            "request {i} arrived at {} before its due time {due}",
            at(got[i].at)
        );
        assert_eq!(got[i].body, got[0].body, "same body on retry");
        assert_eq!(webhook_id(&got[i]), n.id, "same webhook-id on retry");
        verify(&got[i]);
    }
    let metrics = svc.get("/metrics").await;
    for tier in TIERS {
        assert!(
            metrics.contains(&format!(
                r#"herald_delivery_retries_scheduled_total{{tier="{tier}",webhook="crm"}} 1"#
            )),
            "{metrics}"
        );
    }
    svc.stop().await;
    assert_eq!(rx.received().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_failures_are_dead_lettered_and_resend_recovers() {
    let Some(w) = KafkaWorld::new("dsvc_fail", PARTITIONS).await else {
        return;
    };
    let always_500 = TestReceiver::start().await;
    always_500.set_default(Reply::status(500));
    let slow = TestReceiver::start().await;
    slow.set_default(Reply::slow(200, Duration::from_secs(3)));
    let redirect = TestReceiver::start().await;
    redirect.set_default(Reply::WithHeaders {
        status: 302,
        headers: vec![("Location".into(), "http://elsewhere.test/".into())],
    });
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let toml = definitions(&[
        webhook("always-500", &always_500.url("/h"), "5s", FAST_RETRY),
        webhook("timeout", &slow.url("/h"), "300ms", FAST_RETRY),
        webhook("refused", &format!("http://{closed}/h"), "5s", FAST_RETRY),
        webhook("redirect", &redirect.url("/h"), "5s", FAST_RETRY),
    ]);
    let webhooks = Webhooks::from_toml(&toml).unwrap();
    let svc = start(w.config(), &toml).await;
    let ns = w.ingest(&webhooks, loans("fail", 1)).await;
    assert_eq!(ns.len(), 4);

    let expected: HashMap<&str, (Outcome, Option<u16>)> = HashMap::from([
        ("always-500", (Outcome::HttpError, Some(500))),
        ("timeout", (Outcome::Timeout, None)),
        ("refused", (Outcome::ConnectionError, None)),
        ("redirect", (Outcome::HttpError, Some(302))),
    ]);
    for n in &ns {
        eventually(
            &format!("{} failed", n.webhook_id),
            Duration::from_secs(60),
            async || (w.status(n.id).await == Some(Status::Failed)).then_some(()),
        )
        .await;
        let attempts = w.attempts(n.id).await;
        assert_eq!(
            attempts.len(),
            2,
            "{}: retried once, then failed",
            n.webhook_id
        );
        for a in &attempts {
            assert_eq!(
                (a.outcome, a.http_status),
                expected[n.webhook_id.as_str()],
                "{}",
                n.webhook_id
            );
        }
        assert!(attempts.iter().any(|a| a.trigger == Trigger::Retry));
    }

    // Every exhausted notification is on the dead-letter topic, with headers.
    let dead = w.dead_letters();
    let mut dead_ids = HashMap::new();
    while dead_ids.len() < ns.len() {
        let m = tokio::time::timeout(Duration::from_secs(30), dead.recv())
            .await
            .expect("dead letter within 30s")
            .unwrap();
        let job: DeliveryJob = serde_json::from_slice(m.payload().unwrap()).unwrap();
        assert_eq!(headers::get(m.headers(), headers::ATTEMPT), Some("2"));
        let last_error = headers::get(m.headers(), headers::LAST_ERROR).expect("last error");
        assert!(headers::get(m.headers(), headers::FIRST_FAILURE_AT).is_some());
        assert_eq!(job.last_error.as_deref(), Some(last_error));
        dead_ids.insert(job.notification_id, last_error.to_owned());
    }
    for n in &ns {
        assert!(
            dead_ids.contains_key(&n.id),
            "{} dead-lettered",
            n.webhook_id
        );
    }
    assert!(
        dead_ids[&ns.iter().find(|n| n.webhook_id == "redirect").unwrap().id]
            .contains("not followed")
    );

    // The receivers recover; one resend by id, one in bulk.
    always_500.set_default(Reply::ok());
    redirect.set_default(Reply::ok());
    let by_hook = |id: &str| ns.iter().find(|n| n.webhook_id == id).unwrap().id;
    publish_resend(
        &w.producer,
        &w.topics,
        &ResendCommand {
            notification_id: by_hook("always-500"),
            reason: "receiver fixed".into(),
            requested_by: "test".into(),
        },
    )
    .await
    .unwrap();
    let published = publish_bulk_resend(
        w.store.as_ref(),
        &w.producer,
        &w.topics,
        &BulkResend {
            webhook_id: "redirect".into(),
            range: TimeRange::new(Utc::now() - chrono::Duration::hours(1), Utc::now()),
            status: Some(Status::Failed),
            reason: "bulk".into(),
            requested_by: "test".into(),
        },
    )
    .await
    .unwrap();
    assert_eq!(published, 1);
    for (rx, hook) in [(&always_500, "always-500"), (&redirect, "redirect")] {
        let got = rx.wait_for(3, Duration::from_secs(30)).await;
        assert_eq!(got[2].body, got[0].body, "{hook}: byte-identical body");
        assert_eq!(
            webhook_id(&got[2]),
            by_hook(hook),
            "{hook}: same webhook-id"
        );
        verify(&got[2]);
        let id = by_hook(hook);
        eventually(
            &format!("{hook} delivered by resend"),
            Duration::from_secs(30),
            async || (w.status(id).await == Some(Status::Delivered)).then_some(()),
        )
        .await;
        let attempts = w.attempts(id).await;
        let last = attempts.iter().max_by_key(|a| a.attempt_no).unwrap();
        assert_eq!(
            (last.attempt_no, last.trigger, last.outcome),
            (3, Trigger::Manual, Outcome::Success)
        );
    }
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssrf_guard_refuses_loopback_without_allow_list() {
    let Some(w) = KafkaWorld::new("dsvc_ssrf", PARTITIONS).await else {
        return;
    };
    let rx = TestReceiver::start().await;
    let toml = definitions(&[webhook("internal", &rx.url("/h"), "5s", "max_attempts = 1")]);
    let webhooks = Webhooks::from_toml(&toml).unwrap();
    let svc = start(
        DeliveryConfig {
            ssrf_allow: vec![],
            ..w.config()
        },
        &toml,
    )
    .await;
    let n = w.ingest(&webhooks, loans("ssrf", 1)).await.remove(0);
    eventually(
        "refused attempt recorded",
        Duration::from_secs(60),
        async || (w.status(n.id).await == Some(Status::Failed)).then_some(()),
    )
    .await;
    let attempts = w.attempts(n.id).await;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome, Outcome::Refused);
    let error = attempts[0].error.as_deref().unwrap();
    assert!(error.contains("127.0.0.1"), "{error}");
    assert!(error.to_lowercase().contains("loopback"), "{error}");
    svc.stop().await;
    assert!(
        rx.received().is_empty(),
        "nothing reached the internal address"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_webhook_does_not_hold_up_the_others() {
    let Some(w) = KafkaWorld::new("dsvc_slow", PARTITIONS).await else {
        return;
    };
    let slow = TestReceiver::start().await;
    // Held far longer than the test runs: no slot of "slow" frees up.
    slow.set_default(Reply::slow(200, Duration::from_secs(600)));
    let fast = TestReceiver::start().await;
    let toml = definitions(&[
        webhook("slow", &slow.url("/h"), "300s", FAST_RETRY),
        webhook("fast", &fast.url("/h"), "5s", FAST_RETRY),
    ]);
    let webhooks = Webhooks::from_toml(&toml).unwrap();
    let svc = start(
        DeliveryConfig {
            max_in_flight_per_webhook: 2,
            ..w.config()
        },
        &toml,
    )
    .await;
    w.ingest(&webhooks, loans("slow", 10)).await;
    // All of "fast" arrives while "slow" has only its two slots in use.
    fast.wait_for(10, Duration::from_secs(60)).await;
    slow.wait_for(2, Duration::from_secs(60)).await;
    assert_eq!(slow.received().len(), 2, "the webhook limit holds");
    svc.shutdown.cancel();
    // Draining waits for the slow requests (bounded by drain_timeout_ms);
    // dropping instead is also fine for this test.
    svc.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_partitions_and_survive_one_crashing() {
    const PARTS: i32 = 6;
    const EVENTS: usize = 300;
    let Some(w) = KafkaWorld::new("dsvc_crash", PARTS).await else {
        return;
    };
    let rx = TestReceiver::start().await;
    // Slow enough that both workers are mid-load when one of them dies.
    rx.set_default(Reply::slow(200, Duration::from_millis(100)));
    let toml = definitions(&[webhook("crm", &rx.url("/h"), "5s", FAST_RETRY)]);
    let webhooks = Webhooks::from_toml(&toml).unwrap();
    let config = DeliveryConfig {
        max_in_flight: 8,
        max_in_flight_per_partition: 2,
        ..w.config()
    };
    let group = config.group_id.clone();
    let a = start(config.clone(), &toml).await;
    let b = start(config, &toml).await;
    let notifications = w.ingest(&webhooks, loans("crash", EVENTS)).await;

    rx.wait_for(EVENTS / 3, Duration::from_secs(60)).await;
    let by_a = attempts_made(&a.get("/metrics").await);
    a.task.abort(); // no graceful shutdown: in-flight work is abandoned
    let _ = a.task.await;

    let want: HashSet<NotificationId> = notifications.iter().map(|n| n.id).collect();
    let got = eventually(
        "every notification delivered",
        Duration::from_secs(120),
        async || {
            let got = rx.received();
            let ids: HashSet<_> = got.iter().map(webhook_id).collect();
            want.is_subset(&ids).then_some(got)
        },
    )
    .await;
    for n in &notifications {
        eventually(
            "recorded as delivered",
            Duration::from_secs(30),
            async || (w.status(n.id).await == Some(Status::Delivered)).then_some(()),
        )
        .await;
    }
    eventually("offsets committed", Duration::from_secs(60), async || {
        (w.uncommitted_deliveries(&group) == 0).then_some(())
    })
    .await;
    let by_b = attempts_made(&b.get("/metrics").await);
    assert!(
        by_a > 0 && by_b > 0,
        "both workers delivered: {by_a} and {by_b}"
    );
    let duplicates = got.len() - want.len();
    println!(
        "two_workers_share_partitions_and_survive_one_crashing: {EVENTS} notifications, {} requests, {duplicates} duplicates; attempts recorded by the crashed worker before the crash {by_a}, by the survivor {by_b}",
        got.len()
    );
    b.stop().await;
}

/// A store that refuses attempts for good (here: its attempts table is
/// gone) stalls the job visibly: the request was sent, the failure to record
/// it is counted, and nothing is committed past it until the store is fixed;
/// then the attempt is recorded and the offset committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_refuses_attempts_stalls_and_commits_nothing() {
    let Some(w) = KafkaWorld::new("dsvc_refuses", PARTITIONS).await else {
        return;
    };
    let rx = TestReceiver::start().await;
    let toml = definitions(&[webhook("crm", &rx.url("/hook"), "5s", FAST_RETRY)]);
    let webhooks = Webhooks::from_toml(&toml).unwrap();
    let config = w.config();
    let group = config.group_id.clone();
    let svc = start(config, &toml).await;
    // After the service prepared its statements.
    let session = w.store.session().clone();
    session
        .query_unpaged(format!("DROP TABLE {}.attempts", w.name), ())
        .await
        .expect("drop the attempts table");
    let notifications = w.ingest(&webhooks, loans("refused", 1)).await;
    rx.wait_for(1, Duration::from_secs(60)).await;
    let retried = r#"herald_delivery_retried_operations_total{operation="append_attempts"}"#;
    eventually(
        "the refused record counted",
        Duration::from_secs(60),
        async || (svc.metric_sum(retried) >= 2).then_some(()),
    )
    .await;
    // Failed at least twice, so it is being retried, not given up: the
    // job's offset is not committed.
    assert_eq!(
        w.uncommitted_deliveries(&group),
        1,
        "nothing committed past it"
    );

    herald_store::cql::migrate(
        &session,
        &w.name,
        &herald_store::cql::Replication::Simple {
            replication_factor: 1,
        },
    )
    .await
    .expect("the operator restores the table");
    eventually(
        "committed once recorded",
        Duration::from_secs(60),
        async || (w.uncommitted_deliveries(&group) == 0).then_some(()),
    )
    .await;
    svc.stop().await;
    let attempts = w.attempts(notifications[0].id).await;
    assert_eq!(attempts.len(), 1, "the attempt is on record");
    assert_eq!(attempts[0].outcome, Outcome::Success);
    assert_eq!(rx.received().len(), 1, "sent once");
}

/// A failed manual re-send between automatic attempts (Kafka mode): it takes
/// the next number, closes nothing, and the retry chain goes on under the
/// numbers after it; the policy counts automatic attempts only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_resend_between_retries_takes_the_next_number_and_closes_nothing() {
    let Some(w) = KafkaWorld::new("dsvc_interleave", PARTITIONS).await else {
        return;
    };
    let rx = TestReceiver::start().await;
    rx.set_default(Reply::status(503));
    let retry = "max_attempts = 2\ninitial_delay = \"3s\"\nmultiplier = 1.0\nmax_delay = \"3s\"\njitter = 0.0";
    let hook = format!(
        "{}[webhooks.circuit]\nenabled = false\n",
        webhook("crm", &rx.url("/h"), "5s", retry)
    );
    let toml = definitions(&[hook]);
    let webhooks = Webhooks::from_toml(&toml).unwrap();
    let svc = start(w.config(), &toml).await;
    let n = w.ingest(&webhooks, loans("interleave", 1)).await.remove(0);
    eventually("the first attempt", Duration::from_secs(60), async || {
        (w.attempts(n.id).await.len() == 1).then_some(())
    })
    .await;
    publish_resend(
        &w.producer,
        &w.topics,
        &ResendCommand {
            notification_id: n.id,
            reason: "test".into(),
            requested_by: "test".into(),
        },
    )
    .await
    .unwrap();
    eventually("exhausted", Duration::from_secs(60), async || {
        (w.attempts(n.id).await.len() == 3 && w.status(n.id).await == Some(Status::Failed))
            .then_some(())
    })
    .await;
    svc.stop().await;
    let attempts = w.attempts(n.id).await;
    let rows: Vec<(u32, Trigger)> = attempts.iter().map(|a| (a.attempt_no, a.trigger)).collect();
    assert_eq!(
        rows,
        [
            (1, Trigger::Auto),
            (2, Trigger::Manual),
            (3, Trigger::Retry)
        ],
        "unique, gapless, and the re-send is no automatic step"
    );
    // The precondition, checked: the re-send came between the two.
    assert!(attempts[1].started_at < attempts[2].started_at);
    assert_eq!(rx.received().len(), 3);
}

/// A receiver whose `302` carries a `Location` of 350 KB of obs-text bytes
/// (each becomes a 3-byte U+FFFD when decoded): the error is bounded before
/// it reaches the record or the retry job, so the job still fits the
/// producer's limit, the partition's offsets advance and the chain ends.
/// Before, the retry job exceeded `message.max.bytes` and its publish was
/// retried for ever, freezing the partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_obs_text_location_is_bounded_and_the_partition_flows() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(w) = KafkaWorld::new("dsvc_location", PARTITIONS).await else {
        return;
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/h", listener.local_addr().unwrap());
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = served.clone();
    let server = tokio::spawn(async move {
        let mut head = b"HTTP/1.1 302 Found\r\nLocation: https://x/".to_vec();
        head.extend(std::iter::repeat_n(0xffu8, 350 * 1024));
        head.extend_from_slice(b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let head = std::sync::Arc::new(head);
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let head = head.clone();
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let _ = socket.read(&mut buf).await;
                let _ = socket.write_all(&head).await;
            });
        }
    });
    let toml = definitions(&[webhook("crm", &url, "5s", FAST_RETRY)]);
    let webhooks = Webhooks::from_toml(&toml).unwrap();
    let config = w.config();
    let group = config.group_id.clone();
    let svc = start(config, &toml).await;
    let n = w.ingest(&webhooks, loans("location", 1)).await.remove(0);
    eventually("exhausted", Duration::from_secs(60), async || {
        (w.status(n.id).await == Some(Status::Failed)).then_some(())
    })
    .await;
    eventually(
        "every offset committed",
        Duration::from_secs(60),
        async || (w.uncommitted_deliveries(&group) == 0).then_some(()),
    )
    .await;
    svc.stop().await;
    server.abort();
    let attempts = w.attempts(n.id).await;
    assert_eq!(attempts.len(), 2, "both attempts recorded");
    for a in &attempts {
        let error = a.error.as_deref().unwrap();
        assert!(
            error.starts_with("http 302: redirect to https://x/"),
            "{error:.80}"
        );
        assert!(error.len() <= 1100, "error bounded: {} bytes", error.len());
    }
    assert_eq!(served.load(std::sync::atomic::Ordering::Relaxed), 2);
}
