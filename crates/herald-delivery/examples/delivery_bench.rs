//! Benchmark of the Kafka delivery service against real Kafka and a real CQL
//! node, with a fast local receiver (200 at once).
//!
//! 1. Burst: N jobs produced to the deliveries topic as fast as possible;
//!    throughput is N divided by the time from the first produce until the
//!    group's committed offsets cover all of them (each job: received with a
//!    2xx, attempt recorded in the store, offset committed).
//! 2. Paced: jobs produced at half the burst throughput; latency from the
//!    produce call to the receiver getting the request (p50/p99).
//!
//! ```text
//! scripts/infra up
//! CARGO_TARGET_DIR=/work/target-kafka cargo run --release -p herald-delivery --example delivery_bench -- 5000
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use herald_core::signing::SigningSecret;
use herald_core::{
    CloudEvent, DeliveryJob, Notification, SecretRef, SecretSource, Tiers, Webhooks,
};
use herald_delivery::{DeliveryConfig, DeliveryService};
use herald_kafka::topics::{TopicSettings, create_all};
use herald_kafka::{KafkaConfig, Topics};
use herald_store::cql::{CqlConfig, CqlStore, Replication, connect_session, migrate};
use herald_store::{NotificationStore, StoreLimits};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const PARTITIONS: i32 = 6;

/// Produce-call instants by notification id, and what the receiver measured.
#[derive(Default)]
struct Clock {
    produced: Mutex<HashMap<String, Instant>>,
    latencies: Mutex<Vec<Duration>>,
    received: AtomicUsize,
}

async fn receiver(clock: Arc<Clock>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let clock = clock.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let now = Instant::now();
                    let id = req
                        .headers()
                        .get("webhook-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    if let Some(t) = clock.produced.lock().unwrap().get(&id) {
                        clock.latencies.lock().unwrap().push(now - *t);
                    }
                    clock.received.fetch_add(1, Ordering::Relaxed);
                    async { Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::new()))) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn uncommitted(kafka: &KafkaConfig, group: &str, topic: &str) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topic, p);
    }
    let committed = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    (0..PARTITIONS)
        .map(|p| {
            let (_, high) = c
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap();
            let done = match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => 0,
            };
            high - done
        })
        .sum()
}

fn notifications(webhooks: &Webhooks, tag: &str, n: usize) -> Vec<Notification> {
    let now = Utc::now();
    (0..n)
        .flat_map(|i| {
            let event = CloudEvent::from_value(json!({
                "specversion": "1.0", "id": format!("{tag}-{i}"), "source": "/bench",
                "type": "bank.loan.disbursed", "subject": format!("LN-{i}"),
                "data": {"amount": i, "currency": "EUR", "note": "x".repeat(200)}
            }))
            .unwrap();
            webhooks.notifications(&event, now)
        })
        .collect()
}

async fn produce(
    producer: &FutureProducer,
    topic: &str,
    ns: &[Notification],
    clock: &Clock,
    pace: Option<f64>,
) {
    let start = Instant::now();
    let mut pending = Vec::new();
    for (i, n) in ns.iter().enumerate() {
        if let Some(rate) = pace {
            let at = start + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(at.into()).await;
        }
        let job = DeliveryJob::first(n).unwrap();
        let (key, payload) = (job.key(), serde_json::to_vec(&job).unwrap());
        clock
            .produced
            .lock()
            .unwrap()
            .insert(n.id.to_string(), Instant::now());
        let producer = producer.clone();
        let topic = topic.to_owned();
        pending.push(tokio::spawn(async move {
            producer
                .send(
                    FutureRecord::to(&topic).key(&key).payload(&payload),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }));
    }
    for p in pending {
        p.await.unwrap();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5000);
    let name = format!(
        "bench_{}_{:06x}",
        std::process::id(),
        rand::random::<u32>() & 0xff_ffff
    );
    let kafka = KafkaConfig {
        topic_prefix: format!("{name}."),
        ..KafkaConfig::default()
    };
    let tiers = vec!["1s".to_owned(), "10s".to_owned()];
    create_all(
        &kafka,
        &TopicSettings {
            partitions: PARTITIONS,
            ..TopicSettings::default()
        },
        &Tiers::parse(&tiers).unwrap(),
    )
    .await
    .unwrap();
    let cql = CqlConfig::new(vec!["127.0.0.1:9042".into()], name.clone());
    let session = connect_session(&cql).await.unwrap();
    migrate(
        &session,
        &name,
        &Replication::Simple {
            replication_factor: 1,
        },
    )
    .await
    .unwrap();
    let store = CqlStore::connect(&cql, StoreLimits::default())
        .await
        .unwrap();

    let clock = Arc::new(Clock::default());
    let addr = receiver(clock.clone()).await;
    let toml = format!(
        r#"
[secrets]
whsec = {{ env = "BENCH_WHSEC" }}
[[webhooks]]
id = "bench"
events = ["bank.*"]
url = "http://{addr}/hook"
signing_secrets = ["whsec"]
body = '{{"id": {{{{json id}}}}, "data": {{{{json data}}}}}}'
"#
    );
    let webhooks = Webhooks::from_toml(&toml).unwrap();
    let secrets: Arc<dyn SecretSource + Send + Sync> = Arc::new(HashMap::from([(
        SecretRef::Env("BENCH_WHSEC".into()),
        SigningSecret::from_bytes(vec![9u8; 32]).to_whsec(),
    )]));
    let config = DeliveryConfig {
        kafka: kafka.clone(),
        group_id: format!("{name}_delivery"),
        tiers,
        cql,
        listen: "127.0.0.1:0".parse().unwrap(),
        ssrf_allow: vec!["127.0.0.0/8".into()],
        max_in_flight: 1024,
        max_in_flight_per_partition: 128,
        max_in_flight_per_webhook: 256,
        ..DeliveryConfig::default()
    };
    let group = config.group_id.clone();
    let service = DeliveryService::bind(config, Webhooks::from_toml(&toml).unwrap(), secrets)
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(service.run(shutdown.clone()));
    let producer: FutureProducer = kafka.producer_config().create().unwrap();
    let topic = Topics::new(&kafka).deliveries();

    // Warm up: the group is joined and connections are open.
    let warm = notifications(&webhooks, "warm", 50);
    store.append_notifications(&warm).await.unwrap();
    produce(&producer, &topic, &warm, &clock, None).await;
    while clock.received.load(Ordering::Relaxed) < warm.len() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    clock.latencies.lock().unwrap().clear();

    // 1. Burst.
    let burst = notifications(&webhooks, "burst", n);
    for chunk in burst.chunks(500) {
        store.append_notifications(chunk).await.unwrap();
    }
    let t0 = Instant::now();
    produce(&producer, &topic, &burst, &clock, None).await;
    while uncommitted(&kafka, &group, &topic) > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = t0.elapsed();
    let rate = n as f64 / elapsed.as_secs_f64();
    let mut burst_lat = std::mem::take(&mut *clock.latencies.lock().unwrap());
    burst_lat.sort();

    // 2. Paced at half the burst rate.
    let paced_n = (n / 2).max(100);
    let paced = notifications(&webhooks, "paced", paced_n);
    for chunk in paced.chunks(500) {
        store.append_notifications(chunk).await.unwrap();
    }
    let before = clock.received.load(Ordering::Relaxed);
    produce(&producer, &topic, &paced, &clock, Some(rate / 2.0)).await;
    while clock.received.load(Ordering::Relaxed) < before + paced_n {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut paced_lat = std::mem::take(&mut *clock.latencies.lock().unwrap());
    paced_lat.sort();

    shutdown.cancel();
    task.await.unwrap().unwrap();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "burst: {n} deliveries in {:.2}s = {rate:.0} deliveries/s (produced -> 2xx -> recorded -> committed); produce->request p50 {:.1}ms p99 {:.1}ms",
        elapsed.as_secs_f64(),
        ms(percentile(&burst_lat, 0.5)),
        ms(percentile(&burst_lat, 0.99)),
    );
    println!(
        "paced at {:.0}/s: {paced_n} deliveries; produce->request p50 {:.1}ms p99 {:.1}ms",
        rate / 2.0,
        ms(percentile(&paced_lat, 0.5)),
        ms(percentile(&paced_lat, 0.99)),
    );
}
