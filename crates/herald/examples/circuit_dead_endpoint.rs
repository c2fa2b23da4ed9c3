//! How many requests reach a dead endpoint with and without the circuit
//! breaker: standalone Herald, one webhook whose receiver answers 503 to
//! everything, events at a steady rate for a fixed time, the webhook's
//! default retry policy and breaker settings.
//!
//! `cargo run --release -p herald --example circuit_dead_endpoint -- [seconds] [events/s]`

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use herald::standalone::{self, StandaloneConfig};
use herald_core::{SecretRef, Webhooks};
use herald_tests::{Reply, TestReceiver};
use serde_json::json;
use tokio_util::sync::CancellationToken;

async fn run(breaker: bool, seconds: u64, rate: u64) -> (usize, usize) {
    let rx = TestReceiver::start().await;
    rx.set_default(Reply::status(503));
    let defs = format!(
        "[[webhooks]]\nid = \"dead\"\nevents = [\"bank.*\"]\nurl = \"{}\"\nbody = '{{}}'\n[webhooks.circuit]\nenabled = {breaker}\n",
        rx.url("/dead")
    );
    let dir = std::env::temp_dir().join(herald_tests::unique_name("circuit_dead_endpoint"));
    let config = StandaloneConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database: dir.join("herald.db"),
        api_tokens: vec!["x".into()],
        ssrf_allow: vec!["127.0.0.0/8".into()],
        ..StandaloneConfig::default()
    };
    let shutdown = CancellationToken::new();
    let running = standalone::start(
        config,
        Webhooks::from_toml(&defs).unwrap(),
        Arc::new(HashMap::<SecretRef, String>::new()),
        shutdown.clone(),
    )
    .await
    .expect("start");
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let start = tokio::time::Instant::now();
    let mut sent = 0;
    while start.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        let event = json!({"specversion": "1.0", "id": format!("e{sent}"), "source": "/bench",
                           "type": "bank.loan.disbursed", "subject": "L"});
        running.engine.accept(vec![event]).await.expect("accepted");
        sent += 1;
    }
    let requests = rx.received().len();
    shutdown.cancel();
    running.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
    (sent, requests)
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().map_or(60, |a| a.parse().expect("seconds"));
    let rate: u64 = args.next().map_or(10, |a| a.parse().expect("events/s"));
    for breaker in [false, true] {
        let (sent, requests) = run(breaker, seconds, rate).await;
        println!(
            "breaker {}: {requests} requests reached the dead endpoint in {seconds} s ({sent} notifications at {rate}/s)",
            if breaker { "on " } else { "off" }
        );
    }
}
