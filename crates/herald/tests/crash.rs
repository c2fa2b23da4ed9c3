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

/// A fresh directory holding a webhook file that posts every bank event to
/// `rx`.
fn workdir(name: &str, rx: &TestReceiver) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(herald_tests::unique_name(name));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("webhooks.toml"),
        format!(
            "[[webhooks]]\nid = \"postings\"\nevents = [\"bank.*\"]\nurl = \"{}\"\nbody = '{{\"id\": {{{{json id}}}}}}'\n",
            rx.url("/postings")
        ),
    )
    .unwrap();
    dir
}

/// An HTTP client for the API on loopback, and the headers of its calls.
fn client() -> (HttpSender, Vec<(String, String)>) {
    let http = HttpSender::new(SenderConfig {
        ssrf: SsrfGuard::from_allow_list(&["127.0.0.0/8"]).unwrap(),
        max_response_excerpt: 1 << 20,
        ..SenderConfig::default()
    });
    let headers = vec![
        ("authorization".to_owned(), format!("Bearer {TOKEN}")),
        ("content-type".to_owned(), "application/json".to_owned()),
    ];
    (http, headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_mid_load_loses_nothing() {
    let rx = TestReceiver::start().await;
    // The first 100 requests are answered; every later one hangs, so when the
    // kill lands some notifications are delivered and others are in flight,
    // unanswered, whatever the machine's speed.
    const ANSWERED: usize = 100;
    rx.push_replies((0..ANSWERED).map(|_| Reply::slow(200, Duration::from_millis(5))));
    rx.set_default(Reply::slow(200, Duration::from_secs(300)));
    let dir = workdir("herald_crash", &rx);
    let (http, headers) = client();

    let (mut child, addr) = spawn(&dir);
    let mut accepted: HashSet<String> = HashSet::new();
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
        assert_eq!(r.http_status, Some(202), "batch {batch}: {r:?}");
        let body: Value = serde_json::from_str(r.response_excerpt.as_deref().unwrap()).unwrap();
        accepted.extend(
            body["notifications"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned()),
        );
        if rx.received().len() > ANSWERED {
            break;
        }
    }
    // At least ten requests past the answered ones are hanging: the kill
    // lands with deliveries in flight and events still to deliver.
    rx.wait_for(ANSWERED + 10, Duration::from_secs(30)).await;
    child.kill().expect("kill -9"); // SIGKILL: no shutdown hooks run
    child.wait().unwrap();
    let before_restart = rx.received().len();
    assert!(
        accepted.len() > ANSWERED,
        "only {} notifications were acknowledged before the kill",
        accepted.len()
    );
    rx.set_default(Reply::ok());

    // Restart on the same database. A notification counts as delivered
    // when a request for it was answered 200: one of the first ANSWERED
    // requests, or one that arrives after the restart. The hanging requests
    // of the killed process were never answered.
    let (mut child, _addr) = spawn(&dir);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let arrivals = loop {
        let received = rx.received();
        let mut per_id: HashMap<String, usize> = HashMap::new();
        let mut delivered: HashSet<String> = HashSet::new();
        for (i, r) in received.iter().enumerate() {
            let id = r.header("webhook-id").unwrap().to_owned();
            if i < ANSWERED || i >= before_restart {
                delivered.insert(id.clone());
            }
            *per_id.entry(id).or_default() += 1;
        }
        if accepted.is_subset(&delivered) {
            break per_id;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "lost: {} of {} acknowledged notifications were never answered 200",
            accepted.difference(&delivered).count(),
            accepted.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let hung = before_restart - ANSWERED;
    let duplicates: usize = arrivals.values().map(|n| n - 1).sum();
    eprintln!(
        "crash test: accepted={} answered_before_kill={ANSWERED} hung_at_kill={hung} lost=0 duplicates={duplicates}",
        accepted.len()
    );
    // Every request that hung when the process died is sent again, so there
    // are at least that many duplicates (receivers dedupe by webhook-id).
    assert!(
        duplicates >= hung,
        "{hung} requests hung at the kill, only {duplicates} duplicates"
    );
    assert!(
        arrivals.keys().all(|id| accepted.contains(id)),
        "only acknowledged notifications were sent"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A re-send is durable once acknowledged: killed with its request in
/// flight (the receiver holds it unanswered, by construction), the
/// restarted process sends the stored request again and records it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_acknowledged_before_a_kill_is_sent_after_the_restart() {
    let rx = TestReceiver::start().await;
    rx.push_replies([Reply::ok()]);
    rx.set_default(Reply::slow(200, Duration::from_secs(300)));
    let dir = workdir("herald_resend_kill", &rx);
    let (http, headers) = client();
    let call = async |addr: &str, method: &str, path: &str, body: Option<Value>| {
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let r = http
            .send(
                method,
                &format!("http://{addr}{path}"),
                &headers,
                body,
                Duration::from_secs(10),
            )
            .await;
        let text = r.response_excerpt.unwrap_or_default();
        (
            r.http_status,
            serde_json::from_str::<Value>(&text).unwrap_or(Value::Null),
        )
    };
    let attempts_of = async |addr: &str, id: &str, n: usize| {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (_, record) = call(addr, "GET", &format!("/v1/notifications/{id}"), None).await;
            if record["attempts"].as_array().is_some_and(|a| a.len() >= n) {
                return record;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{n} attempts not reached: {record}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };

    let (mut child, addr) = spawn(&dir);
    let event = json!({"specversion": "1.0", "id": "r-1", "source": "/core", "type": "bank.deposit.posted"});
    let (status, body) = call(&addr, "POST", "/v1/events", Some(event)).await;
    assert_eq!(status, Some(202), "{body}");
    let id = body["notifications"][0].as_str().unwrap().to_owned();
    attempts_of(&addr, &id, 1).await;
    let (status, body) = call(
        &addr,
        "POST",
        &format!("/v1/notifications/{id}/resend"),
        None,
    )
    .await;
    assert_eq!(status, Some(202), "{body}");
    // The re-send is in flight, held unanswered by the receiver: kill.
    rx.wait_for(2, Duration::from_secs(30)).await;
    child.kill().expect("kill -9");
    child.wait().unwrap();
    rx.set_default(Reply::ok());

    let (mut child, addr) = spawn(&dir);
    let record = attempts_of(&addr, &id, 2).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let rows: Vec<(u64, &str)> = record["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["attempt_no"].as_u64().unwrap(),
                a["trigger"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(rows, [(1, "auto"), (2, "manual")], "{record}");
    let got = rx.received();
    assert_eq!(
        got.len(),
        3,
        "first attempt, the re-send cut by the kill, the re-send again"
    );
    for r in &got {
        assert_eq!(r.body, got[0].body, "the stored bytes every time");
        assert_eq!(r.header("webhook-id"), Some(id.as_str()));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
