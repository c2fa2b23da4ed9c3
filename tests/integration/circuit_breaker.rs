//! The per-webhook circuit breaker in Kafka mode, end to end: real Kafka, a
//! real CQL node and scripted receivers. Each test has its own topics,
//! consumer group and keyspace, stores notifications and produces their
//! first jobs itself (standing in for ingest), and asserts what the
//! receivers got, what the store holds and what went over the circuits
//! topic. Timings are printed, never asserted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use herald_core::signing::SigningSecret;
use herald_core::{
    CircuitChange, CircuitState, CloudEvent, DeliveryJob, Notification, NotificationId, SecretRef,
    SecretSource, Status, Webhooks,
};
use herald_delivery::service::CircuitBoard;
use herald_delivery::{DeliveryConfig, DeliveryService};
use herald_kafka::topics::{TopicSettings, create_all};
use herald_kafka::{KafkaConfig, Topics};
use herald_store::cql::{CqlConfig, CqlStore, Replication, connect_session, migrate};
use herald_store::{NotificationStore, StoreLimits};
use herald_tests::{Received, Reply, TestReceiver, cql_node, kafka_bootstrap, unique_name};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const PARTITIONS: i32 = 3;
const TIERS: [&str; 2] = ["1s", "3s"];
const WHSEC_ENV: &str = "HERALD_TEST_WHSEC";

fn secrets() -> Arc<dyn SecretSource + Send + Sync> {
    Arc::new(HashMap::from([(
        SecretRef::Env(WHSEC_ENV.into()),
        SigningSecret::from_bytes(vec![7u8; 32]).to_whsec(),
    )]))
}

struct World {
    name: String,
    kafka: KafkaConfig,
    topics: Topics,
    cql: CqlConfig,
    store: Arc<CqlStore>,
    producer: FutureProducer,
}

async fn world(test: &str) -> Option<World> {
    let bootstrap = kafka_bootstrap(test)?;
    let node = cql_node(test)?;
    let name = unique_name(test);
    let kafka = KafkaConfig {
        bootstrap_servers: bootstrap,
        topic_prefix: format!("{name}."),
        ..KafkaConfig::default()
    };
    create_all(
        &kafka,
        &TopicSettings {
            partitions: PARTITIONS,
            ..TopicSettings::default()
        },
        &herald_core::Tiers::parse(&TIERS).unwrap(),
    )
    .await
    .expect("create topics");
    let cql = CqlConfig::new(vec![node], name.clone());
    let session = Arc::new(connect_session(&cql).await.expect("cql connect"));
    migrate(
        &session,
        &name,
        &Replication::Simple {
            replication_factor: 1,
        },
    )
    .await
    .expect("migrate");
    let store = Arc::new(
        CqlStore::new(session, &cql, StoreLimits::default())
            .await
            .expect("cql store"),
    );
    let producer = kafka.producer_config().create().expect("producer");
    Some(World {
        topics: Topics::new(&kafka),
        name,
        kafka,
        cql,
        store,
        producer,
    })
}

impl World {
    fn config(&self, instance: &str) -> DeliveryConfig {
        DeliveryConfig {
            kafka: self.kafka.clone(),
            group_id: format!("{}_delivery", self.name),
            tiers: TIERS.map(String::from).to_vec(),
            cql: self.cql.clone(),
            listen: "127.0.0.1:0".parse().unwrap(),
            max_in_flight: 64,
            max_in_flight_per_partition: 16,
            // One request at a time per webhook and worker: no request is in
            // flight when a circuit opens, so the counts below are exact.
            max_in_flight_per_webhook: 1,
            ssrf_allow: vec!["127.0.0.0/8".into()],
            drain_timeout_ms: 10_000,
            stats_interval_ms: 500,
            instance_id: Some(instance.into()),
            ..DeliveryConfig::default()
        }
    }

    /// Store one notification per (event, matching webhook) and produce the
    /// first job of each.
    async fn ingest(&self, webhooks: &Webhooks, events: usize, tag: &str) -> Vec<Notification> {
        let now = Utc::now();
        let notifications: Vec<Notification> = (0..events)
            .flat_map(|i| {
                let event = CloudEvent::from_value(json!({
                    "specversion": "1.0", "id": format!("{tag}-{i}"), "source": "/core/loans",
                    "type": "bank.loan.disbursed", "subject": format!("LN-{i}"),
                    "data": {"amount": i}
                }))
                .unwrap();
                webhooks.notifications(&event, now)
            })
            .collect();
        self.store
            .append_notifications(&notifications)
            .await
            .expect("store notifications");
        let topic = self.topics.deliveries();
        let sends = notifications.iter().map(|n| {
            let job = DeliveryJob::first(n).expect("rendered");
            let (key, payload) = (job.key(), serde_json::to_vec(&job).unwrap());
            let (producer, topic) = (&self.producer, &topic);
            async move {
                producer
                    .send(
                        FutureRecord::to(topic).key(&key).payload(&payload),
                        Duration::from_secs(30),
                    )
                    .await
                    .map_err(|(e, _)| e)
            }
        });
        for r in futures::future::join_all(sends).await {
            r.expect("produce job");
        }
        notifications
    }

    async fn status(&self, id: NotificationId) -> Option<Status> {
        self.store
            .get(id)
            .await
            .ok()
            .flatten()
            .map(|r| r.state.status)
    }

    /// High watermark minus committed offset, summed over the deliveries
    /// topic's partitions: 0 when every first job's offset is committed.
    fn uncommitted_deliveries(&self, group: &str) -> i64 {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.kafka.bootstrap_servers)
            .set("group.id", group)
            .create()
            .unwrap();
        let topic = self.topics.deliveries();
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition(&topic, p);
        }
        let committed = c
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("committed offsets");
        (0..PARTITIONS)
            .map(|p| {
                let (_, high) = c
                    .fetch_watermarks(&topic, p, Duration::from_secs(10))
                    .unwrap();
                let done = match committed.find_partition(&topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    _ => 0,
                };
                high - done
            })
            .sum()
    }

    /// Every state change on the circuits topic so far, in order.
    fn circuit_changes(&self) -> Vec<CircuitChange> {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.kafka.bootstrap_servers)
            .set("group.id", format!("{}_circuits_reader", self.name))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let topic = self.topics.circuits();
        let (_, high) = c
            .fetch_watermarks(&topic, 0, Duration::from_secs(10))
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Beginning)
            .unwrap();
        c.assign(&tpl).unwrap();
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while (out.len() as i64) < high && Instant::now() < deadline {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
                out.push(serde_json::from_slice(m.payload().unwrap()).expect("a circuit change"));
            }
        }
        assert_eq!(out.len() as i64, high, "read the whole circuits topic");
        out
    }
}

struct Running {
    task: JoinHandle<herald_delivery::service::Result<()>>,
    shutdown: CancellationToken,
    circuits: CircuitBoard,
    metrics: herald_delivery::service::Metrics,
}

async fn start(config: DeliveryConfig, webhooks_toml: &str) -> Running {
    let webhooks = Webhooks::from_toml(webhooks_toml).expect("webhooks");
    let service = DeliveryService::bind(config, webhooks, secrets())
        .await
        .expect("bind delivery service");
    let circuits = service.circuits();
    let metrics = service.metrics().clone();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(service.run(shutdown.clone()));
    Running {
        task,
        shutdown,
        circuits,
        metrics,
    }
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("graceful shutdown within 60s")
            .expect("service task")
            .expect("service result");
    }

    fn metric_sum(&self, prefix: &str) -> u64 {
        self.metrics
            .render()
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }
}

async fn eventually<T>(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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

fn definitions(hooks: &[String]) -> String {
    format!(
        "[secrets]\nwhsec = {{ env = \"{WHSEC_ENV}\" }}\n{}",
        hooks.concat()
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
    let Some(w) = world("circuit_parks").await else {
        return;
    };
    let receiver = TestReceiver::start().await;
    receiver.set_default(Reply::status(500));
    let hooks = definitions(&[webhook(
        "dead",
        &receiver.url("/hook"),
        "failure_threshold = 3\nfailure_ratio = 0.5\nwindow = \"30s\"\ncooldown = \"2s\"",
    )]);
    let webhooks = Webhooks::from_toml(&hooks).unwrap();
    let service = start(w.config("w1"), &hooks).await;
    let notifications = w.ingest(&webhooks, 20, "p").await;

    // The circuit opens after 3 failures; let at least one probe fail.
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
    assert_eq!(changes[0].reason, "3 of 3 attempts failed within 30s");

    // While open or half-open the receiver saw only the probes: one per
    // cool-down, the last of which closed the circuit.
    let got = receiver.received();
    let (opened, closed) = (changes[0].since, changes[opens].since);
    let probes = requests_between(&got, opened, closed);
    eprintln!(
        "circuit open {:.1}s: {probes} probe requests, {opens} opens, {} requests in all",
        (closed - opened).num_milliseconds() as f64 / 1000.0,
        got.len()
    );
    assert_eq!(probes, opens);

    // Parking consumed no attempt: every notification's attempts are
    // numbered 1..=n without gaps, and the only failed attempts are the 3
    // that opened the circuit and the failed probes.
    let mut total = 0;
    let mut single = 0;
    for n in &notifications {
        let attempts = w.store.get(n.id).await.unwrap().unwrap().attempts;
        let mut numbers: Vec<u32> = attempts.iter().map(|a| a.attempt_no).collect();
        numbers.sort();
        assert_eq!(numbers, (1..=attempts.len() as u32).collect::<Vec<_>>());
        total += attempts.len();
        single += usize::from(attempts.len() == 1);
    }
    assert_eq!(total, got.len(), "one recorded attempt per request");
    assert_eq!(total, 20 + 3 + (opens - 1));
    assert!(
        single >= 20 - 3 - (opens - 1),
        "{single} delivered at attempt 1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_webhook_on_the_same_partitions_keeps_flowing_while_the_first_is_open() {
    let Some(w) = world("circuit_neighbour").await else {
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
            "failure_threshold = 3\nfailure_ratio = 0.005\ncooldown = \"5s\"",
        ),
        webhook("live", &live.url("/live"), ""),
    ]);
    let webhooks = Webhooks::from_toml(&hooks).unwrap();
    let mut config = w.config("w1");
    config.max_in_flight_per_webhook = 16;
    let service = start(config, &hooks).await;

    // Baselines: the live webhook alone, then next to a healthy neighbour
    // (the same number of jobs as below).
    let live_only =
        Webhooks::from_toml(&definitions(&[webhook("live", &live.url("/live"), "")])).unwrap();
    const N: usize = 400;
    w.ingest(&live_only, N, "base").await;
    let alone = rate(&live.wait_for(N, Duration::from_secs(120)).await);
    dead.set_default(Reply::ok());
    w.ingest(&webhooks, N, "healthy").await;
    let got = live.wait_for(2 * N, Duration::from_secs(120)).await;
    let healthy = rate(&got[N..]);
    dead.wait_for(N, Duration::from_secs(120)).await;

    // Open the dead webhook's circuit.
    dead.set_default(Reply::status(503));
    w.ingest(&webhooks, 5, "warm").await;
    live.wait_for(2 * N + 5, Duration::from_secs(60)).await;
    eventually("the circuit opened", Duration::from_secs(30), async || {
        (service.circuits.state("dead") == Some(CircuitState::Open)).then_some(())
    })
    .await;

    // Both webhooks' jobs share every partition.
    let phase = SystemTime::now();
    let both = w.ingest(&webhooks, N, "both").await;
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
        let attempts = w.store.get(n.id).await.unwrap().unwrap().attempts;
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
    let Some(w) = world("circuit_shared").await else {
        return;
    };
    let receiver = TestReceiver::start().await;
    receiver.set_default(Reply::status(500));
    // Worker 2 could never open the circuit itself: it must learn it.
    let opener = definitions(&[webhook(
        "dead",
        &receiver.url("/hook"),
        "failure_threshold = 3\ncooldown = \"10m\"",
    )]);
    let follower = definitions(&[webhook(
        "dead",
        &receiver.url("/hook"),
        "failure_threshold = 100000\ncooldown = \"10m\"",
    )]);
    let webhooks = Webhooks::from_toml(&opener).unwrap();
    let w1 = start(w.config("w1"), &opener).await;
    let w2 = start(w.config("w2"), &follower).await;
    // Both workers own partitions before the jobs arrive.
    eventually(
        "both workers consuming",
        Duration::from_secs(60),
        async || {
            let lag = |r: &Running| r.metrics.render().contains("herald_delivery_consumer_lag");
            (lag(&w1) && lag(&w2)).then_some(())
        },
    )
    .await;
    w.ingest(&webhooks, 60, "s").await;

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
    let group = w.config("w1").group_id;
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
