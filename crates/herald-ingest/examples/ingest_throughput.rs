//! Measures ingest throughput end to end (consume → Cassandra/ScyllaDB →
//! produce jobs → commit) against a real broker and CQL node.
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-kafka cargo run --release -p herald-ingest \
//!     --example ingest_throughput -- [events] [batch_max_events] [store_write_parallelism]
//! ```
//!
//! Produces `events` (default 20 000) 1 KiB CloudEvents, each matching two
//! webhooks, to a fresh topic, then starts the service and reports events/s
//! from its first produced job to its commit of the last input offset
//! (so the consumer group join is not counted).

use std::time::{Duration, Instant};

use herald_core::Webhooks;
use herald_ingest::IngestConfig;
use herald_kafka::KafkaConfig;
use herald_store::cql::{CqlConfig, Replication, connect_session, migrate};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

const PARTITIONS: i32 = 6;

const WEBHOOKS: &str = r#"
[[webhooks]]
id = "crm"
events = ["bank.loan.disbursed"]
url = "https://crm.example.com/loans/{{subject}}"
body = '{"event": {{json id}}, "loan": {{json subject}}, "data": {{json data}}}'

[[webhooks]]
id = "ledger"
events = ["bank.loan.*"]
body_format = "text"
url = "https://ledger.example.com/postings"
body = "disbursed {{subject}} {{data.amount}} {{data.currency}}"
"#;

fn event(i: usize) -> (String, Vec<u8>) {
    let subject = format!("LN-{}", i % 997);
    let mut value = serde_json::to_vec(&serde_json::json!({
        "specversion": "1.0",
        "id": format!("evt-{i}"),
        "source": "/core/bench",
        "type": "bank.loan.disbursed",
        "subject": subject,
        "time": "2024-05-01T10:00:00Z",
        "data": { "amount": i, "currency": "EUR", "note": "" },
    }))
    .expect("json");
    // Pad the note to make the event 1 KiB.
    let pad = 1024usize.saturating_sub(value.len());
    let text = String::from_utf8(value).expect("utf-8");
    value = text
        .replace(r#""note":"""#, &format!(r#""note":"{}""#, "n".repeat(pad)))
        .into_bytes();
    (subject, value)
}

fn committed(bootstrap: &str, group: &str, topic: &str) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topic, p);
    }
    c.committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed")
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum()
}

fn end_offsets(bootstrap: &str, topic: &str) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("consumer");
    (0..PARTITIONS)
        .map(|p| {
            c.fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks")
                .1
        })
        .sum()
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let events: usize = args.next().map_or(20_000, |a| a.parse().expect("events"));
    let batch: usize = args.next().map_or(500, |a| a.parse().expect("batch size"));
    let parallelism: usize = args.next().map_or(4, |a| a.parse().expect("parallelism"));
    let bootstrap = std::env::var("HERALD_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let node = std::env::var("HERALD_TEST_CQL").unwrap_or_else(|_| "127.0.0.1:9042".into());
    let run = format!("bench_{}_{}", std::process::id(), rand_suffix());
    let prefix = format!("{run}.");
    let input = format!("{prefix}banking.events");

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("admin");
    let deliveries = format!("{prefix}herald.deliveries");
    let dlq = format!("{prefix}herald.ingest.dlq");
    let topics = [
        NewTopic::new(&input, PARTITIONS, TopicReplication::Fixed(1)),
        NewTopic::new(&deliveries, PARTITIONS, TopicReplication::Fixed(1)),
        NewTopic::new(&dlq, 1, TopicReplication::Fixed(1)),
    ];
    for r in admin
        .create_topics(&topics, &AdminOptions::new())
        .await
        .expect("create topics")
    {
        r.expect("topic created");
    }
    let cql = CqlConfig::new(vec![node], run.clone());
    let session = connect_session(&cql).await.expect("cql");
    migrate(
        &session,
        &run,
        &Replication::Simple {
            replication_factor: 1,
        },
    )
    .await
    .expect("migrate");

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "20")
        .create()
        .expect("producer");
    let started = Instant::now();
    let sends = (0..events).map(|i| {
        let (key, value) = event(i);
        let producer = &producer;
        let input = &input;
        async move {
            producer
                .send(
                    FutureRecord::to(input).key(&key).payload(&value),
                    Duration::from_secs(60),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("produce");
        }
    });
    futures::future::join_all(sends).await;
    println!(
        "produced {events} events of {} bytes in {:?}",
        event(0).1.len(),
        started.elapsed()
    );

    let group = format!("{run}_ingest");
    let config = IngestConfig {
        kafka: KafkaConfig {
            bootstrap_servers: bootstrap.clone(),
            topic_prefix: prefix.clone(),
            ..KafkaConfig::default()
        },
        input_topics: vec![input.clone()],
        group_id: group.clone(),
        cql,
        listen: "127.0.0.1:0".parse().expect("address"),
        batch_max_events: batch,
        store_write_parallelism: parallelism,
        ..IngestConfig::default()
    };
    let shutdown = CancellationToken::new();
    let running = herald_ingest::start(
        config,
        Webhooks::from_toml(WEBHOOKS).expect("webhooks"),
        shutdown.clone(),
    )
    .await
    .expect("start");
    let task = tokio::spawn(running.wait());

    // From the first job out (the group has joined) to the last commit.
    let (t0, jobs0) = loop {
        let jobs = end_offsets(&bootstrap, &deliveries);
        if jobs > 0 {
            break (Instant::now(), jobs);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let end = end_offsets(&bootstrap, &input);
    while committed(&bootstrap, &group, &input) < end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = t0.elapsed();
    let counted = events as f64 - jobs0 as f64 / 2.0;
    let jobs = end_offsets(&bootstrap, &deliveries);
    shutdown.cancel();
    task.await.expect("join").expect("ingest");
    assert_eq!(jobs as usize, 2 * events, "two jobs per event");
    println!(
        "ingested {events} events ({jobs} notifications and jobs) at {:.0} events/s \
         ({counted:.0} events in {elapsed:?}; batch_max_events = {batch}, \
         store_write_parallelism = {parallelism})",
        counted / elapsed.as_secs_f64()
    );
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() & 0xff_ffff)
}
