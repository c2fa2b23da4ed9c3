//! Proves the Kafka harness is a real broker: topics with partitions, an
//! idempotent producer with keys and headers, and a consumer group that
//! resumes exactly after its committed offsets.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use herald_tests::{kafka_bootstrap, unique_name};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

const MESSAGES: usize = 1_000;
const FIRST_RUN: usize = 400;

fn consumer(bootstrap: &str, group: &str) -> StreamConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer")
}

/// Consume until `want` messages were processed; store each processed offset.
async fn consume(c: &StreamConsumer, want: usize) -> Vec<(String, u32, String)> {
    let mut seen = Vec::with_capacity(want);
    while seen.len() < want {
        let msg = tokio::time::timeout(Duration::from_secs(60), c.recv())
            .await
            .expect("no message within 60s")
            .expect("consumer error");
        let key = String::from_utf8(msg.key().expect("key").to_vec()).unwrap();
        let headers = msg.headers().expect("headers");
        let seq: u32 = std::str::from_utf8(headers.get(0).value.unwrap())
            .unwrap()
            .parse()
            .unwrap();
        let payload = String::from_utf8(msg.payload().unwrap().to_vec()).unwrap();
        seen.push((key, seq, payload));
        c.store_offset_from_message(&msg).expect("store offset");
    }
    seen
}

#[tokio::test]
async fn consumer_group_resumes_after_committed_offsets() {
    let Some(bootstrap) = kafka_bootstrap("smoke_kafka") else {
        return;
    };
    let topic = unique_name("smoke_kafka");
    let group = unique_name("smoke_group");

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("admin");
    let created = admin
        .create_topics(
            &[NewTopic::new(&topic, 3, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("create topic");
    assert!(
        created.iter().all(|r| r.is_ok()),
        "create topic: {created:?}"
    );

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let sends = (0..MESSAGES).map(|i| {
        let (producer, topic) = (&producer, &topic);
        async move {
            let key = format!("loan-{}", i % 37);
            let seq = i.to_string();
            let headers = OwnedHeaders::new().insert(Header {
                key: "seq",
                value: Some(&seq),
            });
            let record = FutureRecord::to(topic)
                .key(&key)
                .payload(&seq)
                .headers(headers);
            producer
                .send(record, Duration::from_secs(30))
                .await
                .map_err(|(e, _)| e)
        }
    });
    let delivered = futures::future::join_all(sends).await;
    let mut per_partition: HashMap<i32, usize> = HashMap::new();
    for d in &delivered {
        let d = d.as_ref().expect("produce acknowledged");
        *per_partition.entry(d.partition).or_default() += 1;
    }
    assert_eq!(
        per_partition.len(),
        3,
        "keys spread over all 3 partitions: {per_partition:?}"
    );

    // First consumer: process 400 messages, commit what it stored, go away.
    let first = {
        let c = consumer(&bootstrap, &group);
        c.subscribe(&[&topic]).unwrap();
        let seen = consume(&c, FIRST_RUN).await;
        c.commit_consumer_state(CommitMode::Sync).expect("commit");
        seen
    };

    // Second consumer in the same group: must start exactly after the commit.
    let c = consumer(&bootstrap, &group);
    c.subscribe(&[&topic]).unwrap();
    let second = consume(&c, MESSAGES - FIRST_RUN).await;
    c.commit_consumer_state(CommitMode::Sync).expect("commit");

    let mut all: Vec<u32> = first
        .iter()
        .chain(&second)
        .map(|(_, seq, _)| *seq)
        .collect();
    all.sort_unstable();
    let unique: BTreeSet<u32> = all.iter().copied().collect();
    assert_eq!(
        unique.len(),
        all.len(),
        "a message was seen twice across the restart"
    );
    assert_eq!(
        unique,
        (0..MESSAGES as u32).collect(),
        "every message seen exactly once"
    );
    for (key, seq, payload) in first.iter().chain(&second) {
        assert_eq!(key, &format!("loan-{}", seq % 37), "key kept");
        assert_eq!(payload, &seq.to_string(), "payload kept");
    }

    // The broker holds the committed end offsets for the group.
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition(&topic, p);
    }
    let committed = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    let total: i64 = committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            other => panic!(
                "partition {} has no committed offset: {other:?}",
                e.partition()
            ),
        })
        .sum();
    assert_eq!(
        total, MESSAGES as i64,
        "committed offsets cover every message"
    );
}
