//! The pipeline's promises in Kafka mode, through the real ingest and
//! delivery services, Kafka and Cassandra: an input replay of known events
//! schedules nothing new (no job is produced, no request sent, delivered and
//! failed notifications stay closed), and a known notification that was
//! never attempted is sent once, with its *stored* request, never a fresh
//! render. The standalone counterpart is in `crates/herald/tests/api.rs`.

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use herald_core::{CloudEvent, NotificationId, Status, Trigger, Webhooks};
use herald_ingest::IngestConfig;
use herald_store::NotificationStore;
use herald_tests::kafka_world::{definitions, start};
use herald_tests::{KafkaWorld, Received, Reply, TestReceiver, eventually};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureRecord;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(120);
const SOURCE: &str = "/core/loans";

fn hooks(ok: &TestReceiver, down: &TestReceiver) -> String {
    let hook = |id: &str, url: String| {
        format!(
            r#"
[[webhooks]]
id = "{id}"
events = ["bank.loan.*"]
url = "{url}"
signing_secrets = ["whsec"]
body = '{{"event": {{{{json id}}}}, "amount": {{{{json data.amount}}}}}}'
[webhooks.retry]
max_attempts = 2
initial_delay = "1s"
multiplier = 1.0
max_delay = "1s"
jitter = 0.0
[webhooks.circuit]
enabled = false
"#
        )
    };
    definitions(&[hook("ok", ok.url("/ok")), hook("down", down.url("/down"))])
}

fn event(id: &str, amount: u64) -> Value {
    json!({"specversion": "1.0", "id": id, "source": SOURCE, "type": "bank.loan.disbursed",
           "subject": "LN-1", "data": {"amount": amount}})
}

fn id_of(event_id: &str, webhook: &str) -> NotificationId {
    NotificationId::derive(SOURCE, event_id, webhook)
}

fn by_id(received: &[Received]) -> HashMap<NotificationId, Vec<&Received>> {
    let mut out: HashMap<NotificationId, Vec<&Received>> = HashMap::new();
    for r in received {
        let id = r.header("webhook-id").unwrap().parse().unwrap();
        out.entry(id).or_default().push(r);
    }
    out
}

/// Messages ever produced to the deliveries topic (the sum of its end offsets).
fn jobs_produced(world: &KafkaWorld) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &world.kafka.bootstrap_servers)
        .create()
        .unwrap();
    let topic = world.topics.deliveries();
    (0..world.partitions)
        .map(|p| {
            c.fetch_watermarks(&topic, p, Duration::from_secs(10))
                .unwrap()
                .1
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_replay_schedules_nothing_new_and_sends_only_stored_requests() {
    let Some(world) = KafkaWorld::new("pipeline_replay", 3).await else {
        return;
    };
    let (ok, down) = (TestReceiver::start().await, TestReceiver::start().await);
    down.set_default(Reply::status(503));
    let toml = hooks(&ok, &down);
    let webhooks = Webhooks::from_toml(&toml).unwrap();

    let input = format!("{}banking.events", world.kafka.topic_prefix);
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &world.kafka.bootstrap_servers)
        .create()
        .unwrap();
    let created = admin
        .create_topics(
            &[NewTopic::new(&input, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert!(created.iter().all(|r| r.is_ok()), "{created:?}");

    let delivery = start(world.config(), &toml).await;
    let shutdown = CancellationToken::new();
    let ingest_config = IngestConfig {
        kafka: world.kafka.clone(),
        input_topics: vec![input.clone()],
        group_id: format!("{}_ingest", world.name),
        cql: world.cql.clone(),
        listen: "127.0.0.1:0".parse().unwrap(),
        retry_initial: Duration::from_millis(50),
        retry_max: Duration::from_secs(1),
        ..IngestConfig::default()
    };
    let ingest = herald_ingest::start(
        ingest_config,
        Webhooks::from_toml(&toml).unwrap(),
        shutdown.clone(),
    )
    .await
    .expect("ingest starts");
    let ingest = tokio::spawn(ingest.wait());

    // One input partition, one key: ingest sees the inputs in this order.
    let produce = async |events: &[Value]| {
        for e in events {
            let payload = e.to_string();
            world
                .producer
                .send(
                    FutureRecord::to(&input).key("LN-1").payload(&payload),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("produce event");
        }
    };
    let first: Vec<Value> = (0..5).map(|i| event(&format!("a{i}"), i)).collect();
    produce(&first).await;
    let closed = async |event_id: &str| {
        let (ok_id, down_id) = (id_of(event_id, "ok"), id_of(event_id, "down"));
        eventually(&format!("{event_id} settled"), WAIT, async || {
            let ok = world.status(ok_id).await?;
            let down = world.status(down_id).await?;
            (ok == Status::Delivered && down == Status::Failed).then_some(())
        })
        .await
    };
    for i in 0..5 {
        closed(&format!("a{i}")).await;
    }
    assert_eq!(jobs_produced(&world), 10, "one first job per notification");

    // A notification stored before its event arrives, never attempted (the
    // crash window between the store write and the job), from other data.
    let stored_earlier = CloudEvent::from_value(event("p", 1)).unwrap();
    let stored = webhooks.notifications(&stored_earlier, Utc::now());
    world.store.append_notifications(&stored).await.unwrap();

    // The replay: the same events with corrected data, then the pending
    // one with other data, then a new event that marks the end.
    let mut replay: Vec<Value> = (0..5).map(|i| event(&format!("a{i}"), 100 + i)).collect();
    replay.push(event("p", 2));
    replay.push(event("m", 7));
    produce(&replay).await;
    closed("p").await;
    closed("m").await;

    // Ingest produced jobs only for the pending and the new notifications,
    // and before the marker's: nothing is on its way for the replayed ones.
    assert_eq!(
        jobs_produced(&world),
        10 + 2 + 2,
        "no job for a known notification"
    );
    let (ok_all, down_all) = (ok.received(), down.received());
    let (ok_got, down_got) = (by_id(&ok_all), by_id(&down_all));
    for i in 0..5 {
        let e = format!("a{i}");
        assert_eq!(
            ok_got[&id_of(&e, "ok")].len(),
            1,
            "{e}: delivered once, never again"
        );
        assert_eq!(
            down_got[&id_of(&e, "down")].len(),
            2,
            "{e}: exhausted, never again"
        );
    }
    // What every receiver got is byte for byte the stored request: for the
    // pending notification the stored render (amount 1), not the replay's.
    for (got, webhook) in [(&ok_got, "ok"), (&down_got, "down")] {
        for (id, requests) in got {
            let record = world.store.get(*id).await.unwrap().unwrap();
            let body = &record.notification.request().unwrap().body;
            for r in requests {
                assert_eq!(
                    r.body,
                    body.as_bytes(),
                    "{webhook} {id}: bytes differ from the record"
                );
            }
            let numbers: Vec<u32> = record.attempts.iter().map(|a| a.attempt_no).collect();
            let expected: Vec<u32> = (1..=requests.len() as u32).collect();
            assert_eq!(
                numbers, expected,
                "{webhook} {id}: attempt numbers unique and gapless"
            );
            assert!(record.attempts.iter().all(|a| a.trigger != Trigger::Manual));
        }
    }
    let pending_ok = &ok_got[&id_of("p", "ok")];
    assert_eq!(pending_ok.len(), 1);
    assert_eq!(
        pending_ok[0].body,
        stored
            .iter()
            .find(|n| n.webhook_id == "ok")
            .unwrap()
            .request()
            .unwrap()
            .body
            .as_bytes(),
        "the stored request, not a fresh render"
    );
    assert!(
        std::str::from_utf8(&pending_ok[0].body)
            .unwrap()
            .contains("\"amount\": 1}"),
        "stored render sent"
    );

    shutdown.cancel();
    ingest.await.unwrap().unwrap();
    delivery.stop().await;
}
