//! Standalone mode survives kill -9: the real binary is killed while events
//! are being posted and delivered, restarted on the same database, and every
//! event it acknowledged (202) is delivered at least once afterwards.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use herald_delivery::{HttpSender, SenderConfig, SsrfGuard};
use herald_tests::{Reply, TestReceiver};
use serde_json::{Value, json};

const TOKEN: &str = "crash-test-token";

/// Start `herald standalone` and return it with the address it listens on,
/// read from its start-up log line.
fn spawn(dir: &std::path::Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("standalone")
        .env("HERALD_STANDALONE__LISTEN", "127.0.0.1:0")
        .env("HERALD_STANDALONE__DATABASE", dir.join("herald.db"))
        .env("HERALD_STANDALONE__WEBHOOKS", dir.join("webhooks.toml"))
        .env("HERALD_STANDALONE__API_TOKENS", format!("[\"{TOKEN}\"]"))
        .env("HERALD_STANDALONE__SSRF_ALLOW", "[\"127.0.0.0/8\"]")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn herald standalone");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("herald exited before listening")
            .expect("read log");
        if let Some(rest) = line.split("\"addr\":\"").nth(1) {
            break rest.split('"').next().unwrap().to_owned();
        }
    };
    // Keep draining the log so the child never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_mid_load_loses_nothing() {
    let rx = TestReceiver::start().await;
    // Slow enough that the kill lands with deliveries in flight.
    rx.set_default(Reply::slow(200, Duration::from_millis(20)));
    let dir = std::env::temp_dir().join(herald_tests::unique_name("herald_crash"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("webhooks.toml"),
        format!(
            "[[webhooks]]\nid = \"postings\"\nevents = [\"bank.*\"]\nurl = \"{}\"\nbody = '{{\"id\": {{{{json id}}}}}}'\n",
            rx.url("/postings")
        ),
    )
    .unwrap();

    let http = HttpSender::new(SenderConfig {
        ssrf: SsrfGuard::from_allow_list(&["127.0.0.0/8"]).unwrap(),
        max_response_excerpt: 1 << 20,
        ..SenderConfig::default()
    });
    let headers = vec![
        ("authorization".to_owned(), format!("Bearer {TOKEN}")),
        ("content-type".to_owned(), "application/json".to_owned()),
    ];

    let (mut child, addr) = spawn(&dir);
    let mut accepted: HashSet<String> = HashSet::new();
    let mut killed = false;
    for batch in 0..40 {
        let events: Vec<Value> = (0..25)
            .map(|i| json!({"specversion": "1.0", "id": format!("e-{batch}-{i}"), "source": "/core", "type": "bank.deposit.posted"}))
            .collect();
        let r = http
            .send(
                "POST",
                &format!("http://{addr}/v1/events"),
                &headers,
                Bytes::from(json!(events).to_string()),
                Duration::from_secs(10),
            )
            .await;
        if r.http_status == Some(202) {
            let body: Value = serde_json::from_str(r.response_excerpt.as_deref().unwrap()).unwrap();
            accepted.extend(
                body["notifications"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_owned()),
            );
        }
        if !killed && rx.received().len() >= 100 {
            child.kill().expect("kill -9"); // SIGKILL: no shutdown hooks run
            child.wait().unwrap();
            killed = true;
            break;
        }
    }
    assert!(
        killed,
        "the receiver never saw 100 deliveries before the events ran out"
    );
    let before_restart = rx.received().len();
    assert!(
        before_restart < accepted.len(),
        "the kill must land before everything was delivered"
    );

    // Restart on the same database: every acknowledged notification arrives.
    let (mut child, _addr) = spawn(&dir);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let arrivals = loop {
        let mut per_id: HashMap<String, usize> = HashMap::new();
        for r in rx.received() {
            *per_id
                .entry(r.header("webhook-id").unwrap().to_owned())
                .or_default() += 1;
        }
        if accepted.iter().all(|id| per_id.contains_key(id)) {
            break per_id;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "lost: {} of {} acknowledged notifications never arrived",
            accepted
                .iter()
                .filter(|id| !per_id.contains_key(*id))
                .count(),
            accepted.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Requests that had arrived but were not yet answered when the process
    // died are sent again: at least once, deduplicated by webhook-id.
    let duplicates: usize = arrivals.values().map(|n| n - 1).sum();
    eprintln!(
        "crash test: accepted={} delivered_before_kill={before_restart} lost=0 duplicates={duplicates}",
        accepted.len()
    );
    assert!(
        arrivals.keys().all(|id| accepted.contains(id)),
        "only acknowledged notifications were sent"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
