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
//! Its topics, keyspace and service come from the test harness
//! (`herald_tests::KafkaWorld`), so it honours `HERALD_TEST_KAFKA` and
//! `HERALD_TEST_CQL` like the integration tests.
//!
//! ```text
//! scripts/infra up
//! cargo run --release -p herald-delivery --example delivery_bench -- 5000
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use herald_core::{CloudEvent, DeliveryJob, Notification, Webhooks};
use herald_delivery::DeliveryConfig;
use herald_store::NotificationStore;
use herald_tests::KafkaWorld;
use herald_tests::kafka_world::{definitions, start};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;

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
    let w = KafkaWorld::new("delivery_bench", PARTITIONS)
        .await
        .expect("delivery_bench needs Kafka and a CQL node: scripts/infra up");
    let clock = Arc::new(Clock::default());
    let addr = receiver(clock.clone()).await;
    let toml = definitions(&[format!(
        r#"
[[webhooks]]
id = "bench"
events = ["bank.*"]
url = "http://{addr}/hook"
signing_secrets = ["whsec"]
body = '{{"id": {{{{json id}}}}, "data": {{{{json data}}}}}}'
"#
    )]);
    let webhooks = Webhooks::from_toml(&toml).unwrap();
    let config = DeliveryConfig {
        max_in_flight: 1024,
        max_in_flight_per_partition: 128,
        max_in_flight_per_webhook: 256,
        // librdkafka statistics as often as in production, not as in tests.
        stats_interval: DeliveryConfig::default().stats_interval,
        ..w.config()
    };
    let group = config.group_id.clone();
    let service = start(config, &toml).await;
    let (producer, topic) = (&w.producer, w.topics.deliveries());

    // Warm up: the group is joined and connections are open.
    let warm = notifications(&webhooks, "warm", 50);
    w.store.append_notifications(&warm).await.unwrap();
    produce(producer, &topic, &warm, &clock, None).await;
    while clock.received.load(Ordering::Relaxed) < warm.len() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    clock.latencies.lock().unwrap().clear();

    // 1. Burst.
    let burst = notifications(&webhooks, "burst", n);
    for chunk in burst.chunks(500) {
        w.store.append_notifications(chunk).await.unwrap();
    }
    let t0 = Instant::now();
    produce(producer, &topic, &burst, &clock, None).await;
    while w.uncommitted_deliveries(&group) > 0 {
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
        w.store.append_notifications(chunk).await.unwrap();
    }
    let before = clock.received.load(Ordering::Relaxed);
    produce(producer, &topic, &paced, &clock, Some(rate / 2.0)).await;
    while clock.received.load(Ordering::Relaxed) < before + paced_n {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut paced_lat = std::mem::take(&mut *clock.latencies.lock().unwrap());
    paced_lat.sort();

    service.stop().await;
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
