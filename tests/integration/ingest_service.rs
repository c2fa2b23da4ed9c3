//! The ingest service end to end against real Kafka and Cassandra: events
//! in (structured and binary mode), notifications in the store, delivery
//! jobs and dead letters out, offsets committed only behind durable work.
//! Each test has its own topics (a unique topic prefix), group and keyspace.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::Utc;
use herald_core::{DeliveryJob, NotificationId, NotificationState, Status, Webhooks};
use herald_ingest::IngestConfig;
use herald_kafka::{KafkaConfig, headers};
use herald_store::cql::{CqlConfig, CqlStore, Replication, connect_session, migrate};
use herald_store::{ListQuery, NotificationStore, StoreLimits, TimeRange};
use herald_tests::{cql_node, kafka_bootstrap, unique_name};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const SOURCE: &str = "/core/test";
const WAIT: Duration = Duration::from_secs(120);
const MAX_EVENT_BYTES: usize = 4096;

const WEBHOOKS: &str = r#"
[[webhooks]]
id = "crm"
events = ["bank.loan.*"]
url = "https://crm.example.com/loans/{{subject}}"
body = '{"event": {{json id}}, "amount": {{json data.amount}}}'

[[webhooks]]
id = "ledger"
events = ["bank.loan.disbursed"]
body_format = "text"
url = "https://ledger.example.com/postings"
body = "disbursed {{subject}} {{data.amount}}"

[[webhooks]]
id = "broken"
events = ["bank.card.*"]
url = "https://cards.example.com/"
body = '{"card": "{{data.no_such_field}}"}'
"#;

/// The event types the tests cycle through, with the mode they are sent in.
const KINDS: &[(&str, Mode)] = &[
    ("bank.loan.disbursed", Mode::Structured),
    ("bank.loan.repaid", Mode::Binary),
    ("bank.client.created", Mode::Structured),
    ("bank.loan.disbursed", Mode::Binary),
    ("bank.card.blocked", Mode::Structured),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Structured,
    Binary,
}

/// One input message.
#[derive(Debug, Clone)]
struct Input {
    key: String,
    value: Vec<u8>,
    headers: Vec<(String, String)>,
}

/// A CloudEvent `evt-<i>` of type `ty` about loan `LN-<i % 7>`.
fn event(i: usize, ty: &str, mode: Mode) -> Input {
    let subject = format!("LN-{}", i % 7);
    let data = serde_json::json!({ "amount": i, "currency": "EUR" });
    match mode {
        Mode::Structured => Input {
            key: subject.clone(),
            value: serde_json::to_vec(&serde_json::json!({
                "specversion": "1.0",
                "id": format!("evt-{i}"),
                "source": SOURCE,
                "type": ty,
                "subject": subject,
                "time": "2024-05-01T10:00:00Z",
                "data": data,
            }))
            .unwrap(),
            headers: vec![],
        },
        Mode::Binary => Input {
            key: subject.clone(),
            value: serde_json::to_vec(&data).unwrap(),
            headers: vec![
                ("ce_specversion".into(), "1.0".into()),
                ("ce_id".into(), format!("evt-{i}")),
                ("ce_source".into(), SOURCE.into()),
                ("ce_type".into(), ty.into()),
                ("ce_subject".into(), subject),
                ("content-type".into(), "application/json".into()),
            ],
        },
    }
}

fn mixed_events(n: usize) -> Vec<(usize, &'static str, Input)> {
    (0..n)
        .map(|i| {
            let (ty, mode) = KINDS[i % KINDS.len()];
            (i, ty, event(i, ty, mode))
        })
        .collect()
}

/// The notifications an event causes, by webhook, and the expected body
/// (`None` for `render_failed`).
fn expected_for(i: usize, ty: &str) -> Vec<(&'static str, Option<String>)> {
    let crm = || Some(format!(r#"{{"event": "evt-{i}", "amount": {i}}}"#));
    match ty {
        "bank.loan.disbursed" => vec![
            ("crm", crm()),
            ("ledger", Some(format!("disbursed LN-{} {i}", i % 7))),
        ],
        "bank.loan.repaid" => vec![("crm", crm())],
        "bank.card.blocked" => vec![("broken", None)],
        _ => vec![],
    }
}

/// Everything one test owns.
struct Env {
    bootstrap: String,
    prefix: String,
    input: String,
    partitions: i32,
    cql: CqlConfig,
    store: CqlStore,
}

impl Env {
    async fn new(test: &str, partitions: i32) -> Option<Self> {
        let bootstrap = kafka_bootstrap(test)?;
        let node = cql_node(test)?;
        let prefix = format!("{}.", unique_name(test));
        let input = format!("{prefix}banking.events");
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .expect("admin");
        let deliveries = format!("{prefix}herald.deliveries");
        let dlq = format!("{prefix}herald.ingest.dlq");
        let topics = [
            NewTopic::new(&input, partitions, TopicReplication::Fixed(1)),
            NewTopic::new(&deliveries, 3, TopicReplication::Fixed(1)),
            NewTopic::new(&dlq, 1, TopicReplication::Fixed(1)),
        ];
        let created = admin
            .create_topics(&topics, &AdminOptions::new())
            .await
            .expect("create topics");
        assert!(created.iter().all(|r| r.is_ok()), "{created:?}");

        let keyspace = unique_name("ingest");
        let cql = CqlConfig::new(vec![node], keyspace.clone());
        let session = connect_session(&cql).await.expect("cql session");
        let rf1 = Replication::Simple {
            replication_factor: 1,
        };
        migrate(&session, &keyspace, &rf1).await.expect("migrate");
        let store = CqlStore::connect(&cql, StoreLimits::default())
            .await
            .expect("store");
        Some(Self {
            bootstrap,
            prefix,
            input,
            partitions,
            cql,
            store,
        })
    }

    fn deliveries(&self) -> String {
        format!("{}herald.deliveries", self.prefix)
    }

    fn dlq(&self) -> String {
        format!("{}herald.ingest.dlq", self.prefix)
    }

    fn config(&self, group: &str) -> IngestConfig {
        let mut kafka = KafkaConfig {
            bootstrap_servers: self.bootstrap.clone(),
            topic_prefix: self.prefix.clone(),
            ..KafkaConfig::default()
        };
        // A killed instance's partitions move on sooner.
        kafka
            .client
            .insert("session.timeout.ms".into(), "6000".into());
        IngestConfig {
            kafka,
            input_topics: vec![self.input.clone()],
            group_id: group.into(),
            cql: self.cql.clone(),
            listen: "127.0.0.1:0".parse().unwrap(),
            batch_max_events: 100,
            max_event_bytes: MAX_EVENT_BYTES,
            retry_initial: Duration::from_millis(50),
            retry_max: Duration::from_secs(1),
            stats_interval: Duration::from_millis(500),
            ..IngestConfig::default()
        }
    }

    /// Start the service on a task; returns the task and its endpoint address.
    async fn start(
        &self,
        group: &str,
        shutdown: &CancellationToken,
    ) -> (JoinHandle<herald_ingest::Result<()>>, std::net::SocketAddr) {
        self.start_with(self.config(group), shutdown).await
    }

    async fn start_with(
        &self,
        config: IngestConfig,
        shutdown: &CancellationToken,
    ) -> (JoinHandle<herald_ingest::Result<()>>, std::net::SocketAddr) {
        let webhooks = Webhooks::from_toml(WEBHOOKS).expect("webhooks");
        let running = herald_ingest::start(config, webhooks, shutdown.clone())
            .await
            .expect("ingest starts");
        let addr = running.addr();
        (tokio::spawn(running.wait()), addr)
    }

    async fn produce(&self, inputs: &[Input]) -> Vec<(i32, i64)> {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("enable.idempotence", "true")
            .create()
            .expect("producer");
        let sends = inputs.iter().map(|input| {
            let mut headers = OwnedHeaders::new();
            for (k, v) in &input.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v),
                });
            }
            let record = FutureRecord::to(&self.input)
                .key(&input.key)
                .payload(&input.value)
                .headers(headers);
            producer.send(record, Duration::from_secs(30))
        });
        futures::future::join_all(sends)
            .await
            .into_iter()
            .map(|r| {
                let d = r.map_err(|(e, _)| e).expect("produce acknowledged");
                (d.partition, d.offset)
            })
            .collect()
    }

    fn client(&self, group: &str) -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer")
    }

    /// End offsets of every partition of `topic`.
    fn end_offsets(&self, topic: &str, partitions: i32) -> Vec<i64> {
        let c = self.client("herald-test-watermarks");
        (0..partitions)
            .map(|p| {
                c.fetch_watermarks(topic, p, Duration::from_secs(10))
                    .expect("watermarks")
                    .1
            })
            .collect()
    }

    /// Committed offsets of `group` on the input topic (-1 when none).
    fn committed(&self, group: &str) -> Vec<i64> {
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions {
            tpl.add_partition(&self.input, p);
        }
        let committed = self
            .client(group)
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("committed offsets");
        committed
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => o,
                _ => -1,
            })
            .collect()
    }

    /// Wait until `group` has committed the end of every input partition.
    async fn wait_committed_to_end(&self, group: &str) {
        let end = self.end_offsets(&self.input, self.partitions);
        eventually("offsets committed to the end", || async {
            let committed = self.committed(group);
            (committed == end)
                .then_some(())
                .ok_or(format!("committed {committed:?}, end {end:?}"))
        })
        .await;
    }

    /// Every message of `topic` (partitions 0..`partitions`) once `want`
    /// are there.
    async fn read_all(&self, topic: &str, partitions: i32, want: usize) -> Vec<OwnedMessage> {
        eventually("topic filled", || async {
            let n: i64 = self.end_offsets(topic, partitions).iter().sum();
            (n as usize >= want)
                .then_some(())
                .ok_or(format!("{topic} holds {n} of {want}"))
        })
        .await;
        let c = self.client(&unique_name("reader"));
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
        c.assign(&tpl).expect("assign");
        let total: i64 = self.end_offsets(topic, partitions).iter().sum();
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + WAIT;
        while (out.len() as i64) < total {
            assert!(std::time::Instant::now() < deadline, "reading {topic}");
            if let Some(m) = c.poll(Duration::from_millis(200)) {
                out.push(m.expect("consume").detach());
            }
        }
        out
    }

    /// Every notification of `webhook` the store lists.
    async fn listed(&self, webhook: &str) -> Vec<herald_core::Notification> {
        let range = TimeRange::new(
            Utc::now() - chrono::Duration::days(1),
            Utc::now() + chrono::Duration::days(1),
        );
        let mut out = Vec::new();
        let mut cursor = None;
        loop {
            let page = self
                .store
                .list(&ListQuery::new(webhook, range, 1000).with_cursor(cursor))
                .await
                .expect("list");
            out.extend(page.items.into_iter().map(|i| i.notification));
            cursor = page.next_cursor;
            if cursor.is_none() {
                return out;
            }
        }
    }
}

/// Poll `check` until it succeeds, or fail after [`WAIT`] with its last
/// complaint.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match check().await {
            Ok(()) => return,
            Err(why) if tokio::time::Instant::now() > deadline => {
                panic!("{what}: not within {WAIT:?}: {why}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn jobs(messages: &[OwnedMessage]) -> Vec<DeliveryJob> {
    messages
        .iter()
        .map(|m| {
            let job: DeliveryJob =
                serde_json::from_slice(m.payload().expect("job payload")).expect("a job");
            let key = std::str::from_utf8(m.key().expect("job key")).unwrap();
            assert_eq!(key, job.key(), "keyed webhook_id/subject");
            job
        })
        .collect()
}

async fn metrics(addr: std::net::SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    text
}

/// Expected (notification id → (webhook, body)) of `events`, and the ids
/// that must have a job.
type Expected = BTreeMap<NotificationId, (&'static str, Option<String>)>;

fn expected(events: &[(usize, &'static str, Input)]) -> Expected {
    let mut out = BTreeMap::new();
    for (i, ty, _) in events {
        for (webhook, body) in expected_for(*i, ty) {
            let id = NotificationId::derive(SOURCE, &format!("evt-{i}"), webhook);
            out.insert(id, (webhook, body));
        }
    }
    out
}

fn with_jobs(expected: &Expected) -> BTreeSet<NotificationId> {
    expected
        .iter()
        .filter(|(_, (_, body))| body.is_some())
        .map(|(id, _)| *id)
        .collect()
}

/// The store holds exactly `expected`: the listed ids per webhook, and each
/// record's content.
async fn assert_store_holds(env: &Env, expected: &Expected) {
    for webhook in ["crm", "ledger", "broken"] {
        let listed: BTreeSet<NotificationId> =
            env.listed(webhook).await.iter().map(|n| n.id).collect();
        let want: BTreeSet<NotificationId> = expected
            .iter()
            .filter(|(_, (w, _))| *w == webhook)
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(listed, want, "notifications of {webhook}");
    }
    for (id, (webhook, body)) in expected {
        let record = env.store.get(*id).await.expect("get").expect("stored");
        assert_eq!(record.notification.webhook_id, *webhook);
        match body {
            Some(body) => {
                let request = record.notification.request().expect("rendered");
                assert_eq!(&request.body, body);
                assert_eq!(record.state.status, Status::Pending);
            }
            None => assert_eq!(
                NotificationState::initial(&record.notification.content).status,
                Status::RenderFailed
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_become_notifications_and_jobs_and_offsets_are_committed_on_shutdown() {
    let Some(env) = Env::new("ingest_happy", 3).await else {
        return;
    };
    let events = mixed_events(100);
    let inputs: Vec<Input> = events.iter().map(|(_, _, e)| e.clone()).collect();
    env.produce(&inputs).await;
    let expected = expected(&events);
    let job_ids = with_jobs(&expected);

    let group = unique_name("ingest_happy");
    let shutdown = CancellationToken::new();
    let (task, addr) = env.start(&group, &shutdown).await;

    // Wait for the observable output only, not for the commit: the graceful
    // shutdown must then commit whatever is still uncommitted.
    let messages = env.read_all(&env.deliveries(), 3, job_ids.len()).await;
    let produced = jobs(&messages);
    let ids: Vec<NotificationId> = produced.iter().map(|j| j.notification_id).collect();
    assert_eq!(
        ids.len(),
        job_ids.len(),
        "one job per rendered notification"
    );
    assert_eq!(ids.iter().copied().collect::<BTreeSet<_>>(), job_ids);
    for job in &produced {
        let (_, body) = &expected[&job.notification_id];
        assert_eq!(Some(&job.request.body), body.as_ref(), "job body");
        assert_eq!(job.attempt, 1);
    }
    assert_store_holds(&env, &expected).await;

    // Counters are updated after the produce acks: poll, the jobs may be
    // visible a moment before them.
    eventually("render failures and unmatched events counted", || async {
        let text = metrics(addr).await;
        (text.contains("herald_ingest_render_failures_total{webhook=\"broken\"} 20")
            && text.contains("herald_ingest_events_total{outcome=\"unmatched\"} 20"))
        .then_some(())
        .ok_or(text)
    })
    .await;

    shutdown.cancel();
    tokio::time::timeout(WAIT, task)
        .await
        .expect("graceful shutdown in time")
        .expect("no panic")
        .expect("clean exit");
    assert_eq!(
        env.committed(&group),
        env.end_offsets(&env.input, 3),
        "after a graceful shutdown the group has committed the end of every partition"
    );
}

/// Batches are stored concurrently (`batches_in_flight`), and a later one's
/// append may finish first: its jobs must still follow the earlier
/// batches' on every deliveries partition, and the commit reach the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_stored_at_once_are_produced_and_committed_in_input_order() {
    let Some(env) = Env::new("ingest_order", 1).await else {
        return;
    };
    // Only the `crm` webhook fires: one job per event, its body naming it.
    let inputs: Vec<Input> = (0..300)
        .map(|i| event(i, "bank.loan.repaid", KINDS[i % 2].1))
        .collect();
    // All of it is in the topic before ingest starts, so its batches queue
    // up behind each other.
    env.produce(&inputs).await;

    let group = unique_name("ingest_order");
    let shutdown = CancellationToken::new();
    let config = IngestConfig {
        batch_max_events: 5,
        batches_in_flight: 8,
        ..env.config(&group)
    };
    let (task, _) = env.start_with(config, &shutdown).await;
    let messages = env.read_all(&env.deliveries(), 3, inputs.len()).await;
    assert_eq!(messages.len(), inputs.len(), "one job per event");
    let mut by_partition: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
    for m in &messages {
        let job: DeliveryJob = serde_json::from_slice(m.payload().unwrap()).unwrap();
        let body: serde_json::Value = serde_json::from_str(&job.request.body).unwrap();
        let n = body["event"].as_str().unwrap()["evt-".len()..]
            .parse()
            .unwrap();
        by_partition.entry(m.partition()).or_default().push(n);
    }
    for (partition, events) in &by_partition {
        assert!(
            events.is_sorted(),
            "deliveries partition {partition} holds its jobs in input order: {events:?}"
        );
    }
    shutdown.cancel();
    tokio::time::timeout(WAIT, task)
        .await
        .expect("graceful shutdown in time")
        .expect("no panic")
        .expect("clean exit");
    assert_eq!(env.committed(&group), env.end_offsets(&env.input, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_the_input_creates_no_new_notifications_and_the_same_job_ids() {
    let Some(env) = Env::new("ingest_replay", 2).await else {
        return;
    };
    let events = mixed_events(40);
    let inputs: Vec<Input> = events.iter().map(|(_, _, e)| e.clone()).collect();
    env.produce(&inputs).await;
    let expected = expected(&events);
    let job_ids = with_jobs(&expected);

    let first_group = unique_name("ingest_replay_a");
    let shutdown = CancellationToken::new();
    let (task, _) = env.start(&first_group, &shutdown).await;
    env.wait_committed_to_end(&first_group).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
    let first: BTreeMap<NotificationId, chrono::DateTime<Utc>> = env
        .listed("crm")
        .await
        .into_iter()
        .map(|n| (n.id, n.created_at))
        .collect();

    // A second group reads the same input from the beginning.
    let second_group = unique_name("ingest_replay_b");
    let shutdown = CancellationToken::new();
    let (task, _) = env.start(&second_group, &shutdown).await;
    env.wait_committed_to_end(&second_group).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();

    assert_store_holds(&env, &expected).await;
    let again: BTreeMap<NotificationId, chrono::DateTime<Utc>> = env
        .listed("crm")
        .await
        .into_iter()
        .map(|n| (n.id, n.created_at))
        .collect();
    assert_eq!(
        again, first,
        "the first record wins: same ids, same created_at"
    );

    let messages = env.read_all(&env.deliveries(), 3, 2 * job_ids.len()).await;
    let mut count: BTreeMap<NotificationId, usize> = BTreeMap::new();
    for job in jobs(&messages) {
        *count.entry(job.notification_id).or_default() += 1;
    }
    assert_eq!(count.keys().copied().collect::<BTreeSet<_>>(), job_ids);
    assert!(
        count.values().all(|&c| c == 2),
        "each job id once per pass: {count:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_dead_lettered_or_recorded_and_the_partition_keeps_flowing() {
    let Some(env) = Env::new("ingest_bad", 1).await else {
        return;
    };
    let good = |i| event(i, "bank.loan.repaid", Mode::Structured);
    let malformed = Input {
        key: "LN-x".into(),
        value: b"{not json".to_vec(),
        headers: vec![("trace".into(), "t-1".into())],
    };
    let bad_binary = Input {
        key: "LN-y".into(),
        value: b"{}".to_vec(),
        headers: vec![
            ("ce_specversion".into(), "0.3".into()),
            ("ce_id".into(), "evt-b".into()),
        ],
    };
    let mut oversized = good(3);
    oversized.value = format!(
        r#"{{"specversion":"1.0","id":"evt-3","source":"{SOURCE}","type":"bank.loan.repaid","data":"{}"}}"#,
        "x".repeat(MAX_EVENT_BYTES)
    )
    .into_bytes();
    let inputs = vec![
        good(0),
        malformed.clone(),
        good(1),
        event(2, "bank.card.blocked", Mode::Binary),
        oversized.clone(),
        bad_binary.clone(),
        good(4),
    ];
    let offsets = env.produce(&inputs).await;

    let group = unique_name("ingest_bad");
    let shutdown = CancellationToken::new();
    let (task, addr) = env.start(&group, &shutdown).await;
    env.wait_committed_to_end(&group).await;

    // The events after the bad ones were processed.
    let messages = env.read_all(&env.deliveries(), 3, 3).await;
    let ids: BTreeSet<NotificationId> = jobs(&messages).iter().map(|j| j.notification_id).collect();
    let want: BTreeSet<NotificationId> = [0, 1, 4]
        .iter()
        .map(|i| NotificationId::derive(SOURCE, &format!("evt-{i}"), "crm"))
        .collect();
    assert_eq!(ids, want);

    // The template error is a render_failed record in the history.
    let failed = env
        .store
        .get(NotificationId::derive(SOURCE, "evt-2", "broken"))
        .await
        .unwrap()
        .expect("render_failed record");
    assert_eq!(failed.state.status, Status::RenderFailed);

    // Three dead letters, with the original key, bytes and headers.
    let dead = env.read_all(&env.dlq(), 1, 3).await;
    assert_eq!(dead.len(), 3);
    for (m, (input, index)) in
        dead.iter()
            .zip([(&malformed, 1usize), (&oversized, 4), (&bad_binary, 5)])
    {
        let h = m.headers();
        assert_eq!(m.key(), Some(input.key.as_bytes()));
        if index == 4 {
            // Oversized: the first KiB, and the size it had.
            assert_eq!(m.payload(), Some(&input.value[..1024]));
            assert_eq!(
                headers::get(h, headers::ORIGINAL_SIZE),
                Some(input.value.len().to_string().as_str())
            );
        } else {
            assert_eq!(m.payload(), Some(input.value.as_slice()));
        }
        assert!(!headers::get(h, headers::ERROR).unwrap_or("").is_empty());
        assert_eq!(
            headers::get(h, headers::ORIGIN_TOPIC),
            Some(env.input.as_str())
        );
        assert_eq!(headers::get(h, headers::ORIGIN_PARTITION), Some("0"));
        let offset = offsets[index].1.to_string();
        assert_eq!(
            headers::get(h, headers::ORIGIN_OFFSET),
            Some(offset.as_str())
        );
        for (k, v) in &input.headers {
            assert_eq!(headers::get(h, k), Some(v.as_str()), "original header {k}");
        }
    }
    let error = |i: usize| {
        headers::get(dead[i].headers(), headers::ERROR)
            .unwrap()
            .to_owned()
    };
    assert!(error(1).contains("above the limit"), "{}", error(1));
    assert!(error(2).contains("specversion"), "{}", error(2));

    eventually("dead letters and render failures counted", || async {
        let text = metrics(addr).await;
        (text.contains("herald_ingest_events_total{outcome=\"dead_lettered\"} 3")
            && text.contains("herald_ingest_render_failures_total{webhook=\"broken\"} 1"))
        .then_some(())
        .ok_or(text)
    })
    .await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_service_loses_nothing_after_a_restart() {
    let Some(env) = Env::new("ingest_kill", 3).await else {
        return;
    };
    let events = mixed_events(1500);
    let inputs: Vec<Input> = events.iter().map(|(_, _, e)| e.clone()).collect();
    // A third of the events is produced only after the kill, so the kill
    // lands before the end by construction, however fast the machine.
    let (first, rest) = inputs.split_at(1000);
    env.produce(first).await;
    let expected = expected(&events);
    let job_ids = with_jobs(&expected);

    let group = unique_name("ingest_kill");
    let shutdown = CancellationToken::new();
    let (task, _) = env.start(&group, &shutdown).await;
    // Kill it mid-stream: some jobs are out, not all.
    eventually("some jobs produced", || async {
        let n: i64 = env.end_offsets(&env.deliveries(), 3).iter().sum();
        (n > 100).then_some(()).ok_or(format!("{n} jobs"))
    })
    .await;
    task.abort();
    let _ = task.await;
    let done: i64 = env.end_offsets(&env.deliveries(), 3).iter().sum();
    eprintln!("killed with {done} of {} jobs produced", job_ids.len());
    env.produce(rest).await;

    let shutdown = CancellationToken::new();
    let (task, _) = env.start(&group, &shutdown).await;
    env.wait_committed_to_end(&group).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();

    assert_store_holds(&env, &expected).await;
    let total: i64 = env.end_offsets(&env.deliveries(), 3).iter().sum();
    let messages = env.read_all(&env.deliveries(), 3, total as usize).await;
    let ids: BTreeSet<NotificationId> = jobs(&messages).iter().map(|j| j.notification_id).collect();
    assert_eq!(ids, job_ids, "every rendered notification has its job");
}
