//! Standalone mode end to end, in-process, against real HTTP receivers on
//! loopback: auth, delivery, retries at their due times, exhaustion, a
//! manual re-send of the stored bytes, and every route of
//! `schemas/openapi.json` answering as the document says.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use herald::standalone::{self, StandaloneConfig};
use herald_core::signing::{self, SigningSecret};
use herald_core::{SecretRef, Webhooks};
use herald_tests::{Reply, TestReceiver};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "test-token-0123456789";
const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn definitions(ok: &TestReceiver, down: &TestReceiver) -> String {
    format!(
        r#"
[defaults.retry]
max_attempts = 3
initial_delay = "300ms"
multiplier = 2.0
max_delay = "2s"
jitter = 0.1

[secrets]
signing = {{ env = "TEST_WHSEC" }}

[[webhooks]]
id = "loans"
events = ["bank.loan.*"]
url = "{ok}"
signing_secrets = ["signing"]
body = '{{"loan": {{{{json subject}}}}, "amount": {{{{json data.amount}}}}}}'

[[webhooks]]
id = "clients"
events = ["bank.client.created"]
url = "{down}"
signing_secrets = ["signing"]
body = '{{"client": {{{{json subject}}}}}}'
"#,
        ok = ok.url("/loans"),
        down = down.url("/clients"),
    )
}

struct Api {
    client: herald_tests::ApiClient,
    base: String,
    /// The SQLite file of the Herald under test.
    database: std::path::PathBuf,
}

impl Api {
    fn new(addr: std::net::SocketAddr, database: std::path::PathBuf) -> Self {
        let base = format!("http://{addr}");
        Self {
            client: herald_tests::ApiClient::new(base.clone()),
            base,
            database,
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.client.call(method, path, token, body).await
    }

    /// `POST /v1/events` with the token; asserts the 202 and returns its body.
    async fn accept(&self, events: Value) -> Value {
        let (status, body) = self
            .call("POST", "/v1/events", Some(TOKEN), Some(events))
            .await;
        assert_eq!(status, 202, "{body}");
        body
    }

    /// Accept one event; its first notification's id.
    async fn accept_one(&self, event: Value) -> String {
        let body = self.accept(event).await;
        body["notifications"][0]
            .as_str()
            .unwrap_or_else(|| panic!("{body}"))
            .to_owned()
    }

    /// Poll a notification until `done` holds for its record, or panic.
    async fn wait_record(&self, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (status, record) = self
                .call("GET", &format!("/v1/notifications/{id}"), Some(TOKEN), None)
                .await;
            assert_eq!(status, 200, "{record}");
            if done(&record) {
                return record;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what} not reached: {record:#}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn start(
    ok: &TestReceiver,
    down: &TestReceiver,
    shutdown: CancellationToken,
) -> (Api, standalone::Standalone) {
    start_with(ok, down, shutdown, StandaloneConfig::default().concurrency).await
}

async fn start_with(
    ok: &TestReceiver,
    down: &TestReceiver,
    shutdown: CancellationToken,
    concurrency: usize,
) -> (Api, standalone::Standalone) {
    start_toml(&definitions(ok, down), shutdown, concurrency).await
}

async fn start_toml(
    toml: &str,
    shutdown: CancellationToken,
    concurrency: usize,
) -> (Api, standalone::Standalone) {
    start_with_secrets(toml, HashMap::new(), shutdown, concurrency).await
}

/// With `TEST_WHSEC` and `more` as the secret source.
async fn start_with_secrets(
    toml: &str,
    more: HashMap<SecretRef, String>,
    shutdown: CancellationToken,
    concurrency: usize,
) -> (Api, standalone::Standalone) {
    let dir = std::env::temp_dir().join(herald_tests::unique_name("herald_api"));
    let webhooks = Webhooks::from_toml(toml).expect("definitions");
    let mut secrets: HashMap<SecretRef, String> =
        HashMap::from([(SecretRef::Env("TEST_WHSEC".into()), WHSEC.into())]);
    secrets.extend(more);
    let config = StandaloneConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database: dir.join("herald.db"),
        api_tokens: vec![TOKEN.into()],
        ssrf_allow: vec!["127.0.0.0/8".into()],
        concurrency,
        ..StandaloneConfig::default()
    };
    let running = standalone::start(config, webhooks, Arc::new(secrets), shutdown)
        .await
        .expect("start");
    (Api::new(running.addr, dir.join("herald.db")), running)
}

fn event(id: &str, ty: &str, subject: &str) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "/core", "type": ty, "subject": subject,
           "time": "2026-11-26T10:00:00Z", "data": {"amount": 1250}})
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliver_retry_exhaust_and_resend_through_the_api() {
    let (ok, down) = (TestReceiver::start().await, TestReceiver::start().await);
    down.set_default(Reply::status(500));
    let shutdown = CancellationToken::new();
    let (api, running) = start(&ok, &down, shutdown.clone()).await;

    // No token, a blank or a wrong one: 401, and nothing was accepted.
    for token in [None, Some(""), Some("wrong")] {
        let (status, body) = api
            .call(
                "POST",
                "/v1/events",
                token,
                Some(event("e0", "bank.loan.disbursed", "L-0")),
            )
            .await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    // An invalid event rejects its batch and names the field.
    let (status, body) = api
        .call(
            "POST",
            "/v1/events",
            Some(TOKEN),
            Some(json!([event("e1", "bank.loan.disbursed", "L-1"), {"id": "x"}])),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("event 1:"),
        "{body}"
    );

    let (status, body) = api
        .call(
            "POST",
            "/v1/events",
            Some(TOKEN),
            Some(json!([
                event("e1", "bank.loan.disbursed", "L-1"),
                event("e2", "bank.client.created", "C-1")
            ])),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let ids: Vec<String> = body["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 2);

    // The healthy receiver got the rendered, signed body once.
    let got = ok.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(
        got[0].body,
        Bytes::from_static(br#"{"loan": "L-1", "amount": 1250}"#)
    );
    let key = SigningSecret::parse(WHSEC).unwrap();
    let verify = |r: &herald_tests::Received| {
        signing::verify(
            std::slice::from_ref(&key),
            r.header("webhook-id").unwrap(),
            r.header("webhook-timestamp").unwrap(),
            r.header("webhook-signature").unwrap(),
            &r.body,
            Utc::now(),
            signing::DEFAULT_TOLERANCE,
        )
    };
    verify(&got[0]).expect("signature verifies");
    assert_eq!(got[0].header("webhook-id"), Some(ids[0].as_str()));
    api.wait_record(&ids[0], "delivered", |r| {
        r["state"]["status"] == "delivered"
    })
    .await;

    // The failing receiver: 3 attempts, each retry no earlier than its due time, then failed.
    let record = api
        .wait_record(&ids[1], "failed", |r| r["state"]["status"] == "failed")
        .await;
    let attempts = record["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "{record:#}");
    assert_eq!(
        attempts
            .iter()
            .map(|a| (
                a["trigger"].as_str().unwrap(),
                a["http_status"].as_u64().unwrap()
            ))
            .collect::<Vec<_>>(),
        [("auto", 500), ("retry", 500), ("retry", 500)]
    );
    assert!(
        attempts[2]["next_attempt_at"].is_null(),
        "exhausted: nothing scheduled"
    );
    let arrivals: Vec<SystemTime> = down.received().iter().map(|r| r.at).collect();
    assert_eq!(arrivals.len(), 3);
    for (prev, arrival) in attempts.iter().zip(arrivals.iter().skip(1)) {
        let due: SystemTime = time(&prev["next_attempt_at"]).into();
        assert!(
            *arrival >= due,
            "a retry arrived before its due time: {arrival:?} < {due:?}"
        );
    }

    // The receiver recovers; the operator re-sends the stored request, twice
    // in a row (say, two operators at once).
    down.set_default(Reply::ok());
    for _ in 0..2 {
        let (status, body) = api
            .call(
                "POST",
                &format!("/v1/notifications/{}/resend", ids[1]),
                Some(TOKEN),
                None,
            )
            .await;
        assert_eq!((status, &body), (202, &json!({"queued": 1})));
    }
    let got = down.wait_for(5, Duration::from_secs(10)).await;
    for r in &got[3..] {
        assert_eq!(r.body, got[0].body, "byte-identical body");
        assert_eq!(
            r.header("webhook-id"),
            got[0].header("webhook-id"),
            "same webhook-id"
        );
        verify(r).expect("fresh signature verifies");
    }
    let record = api
        .wait_record(&ids[1], "both re-sends recorded", |r| {
            r["attempts"].as_array().is_some_and(|a| a.len() == 5)
        })
        .await;
    assert_eq!(record["state"]["status"], "delivered");
    // Each re-send numbers its attempt after the ones on record: 4 and 5,
    // never 4 twice.
    let manual: Vec<_> = record["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["trigger"] == "manual")
        .map(|a| a["attempt_no"].as_u64())
        .collect();
    assert_eq!(manual, [Some(4), Some(5)]);

    // History lists it, filters by status, and the bulk re-send finds nothing failed now.
    let (status, page) = api
        .call(
            "GET",
            "/v1/notifications?webhook=clients&status=delivered",
            Some(TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    let (status, body) = api
        .call(
            "POST",
            "/v1/notifications/resend",
            Some(TOKEN),
            Some(json!({"webhook": "clients"})),
        )
        .await;
    assert_eq!((status, body), (202, json!({"queued": 0})));

    shutdown.cancel();
    running.wait().await;
}

/// A failed manual re-send while retries are scheduled: it takes the next
/// number, closes nothing, and the automatic retries go on, also across a
/// restart; attempt numbers stay unique and gapless and the retry policy
/// counts the automatic attempts only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_resend_between_retries_closes_nothing_even_across_a_restart() {
    let down = TestReceiver::start().await;
    down.set_default(Reply::status(500));
    let dir = std::env::temp_dir().join(herald_tests::unique_name("herald_interleave"));
    let toml = format!(
        r#"
[[webhooks]]
id = "clients"
events = ["bank.client.created"]
url = "{url}"
body = '{{"client": {{{{json subject}}}}}}'
[webhooks.retry]
max_attempts = 3
initial_delay = "3s"
multiplier = 1.0
max_delay = "3s"
jitter = 0.0
[webhooks.circuit]
enabled = false
"#,
        url = down.url("/clients")
    );
    let boot = async |shutdown: CancellationToken| {
        let config = StandaloneConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            database: dir.join("herald.db"),
            api_tokens: vec![TOKEN.into()],
            ssrf_allow: vec!["127.0.0.0/8".into()],
            ..StandaloneConfig::default()
        };
        let webhooks = Webhooks::from_toml(&toml).unwrap();
        let secrets: HashMap<SecretRef, String> = HashMap::new();
        let running = standalone::start(config, webhooks, Arc::new(secrets), shutdown)
            .await
            .expect("start");
        let api = Api::new(running.addr, dir.join("herald.db"));
        (api, running)
    };
    let shutdown = CancellationToken::new();
    let (api, running) = boot(shutdown.clone()).await;
    let id = api
        .accept_one(event("i1", "bank.client.created", "C-1"))
        .await;
    api.wait_record(&id, "first attempt", |r| {
        r["attempts"].as_array().unwrap().len() == 1
    })
    .await;
    let (status, body) = api
        .call(
            "POST",
            &format!("/v1/notifications/{id}/resend"),
            Some(TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let record = api
        .wait_record(&id, "the re-send", |r| {
            r["attempts"].as_array().unwrap().len() == 2
        })
        .await;
    assert_eq!(record["state"]["status"], "retrying", "{record:#}");
    shutdown.cancel();
    running.wait().await;
    let restarted = Utc::now();

    let shutdown = CancellationToken::new();
    let (api, running) = boot(shutdown.clone()).await;
    let record = api
        .wait_record(&id, "exhausted", |r| r["state"]["status"] == "failed")
        .await;
    shutdown.cancel();
    running.wait().await;
    let attempts = record["attempts"].as_array().unwrap();
    let row = |a: &Value| {
        (
            a["attempt_no"].as_u64().unwrap(),
            a["trigger"].as_str().unwrap().to_owned(),
        )
    };
    let rows: Vec<_> = attempts.iter().map(row).collect();
    let expected =
        [(1, "auto"), (2, "manual"), (3, "retry"), (4, "retry")].map(|(n, t)| (n, t.to_owned()));
    assert_eq!(rows, expected, "{record:#}");
    // The precondition, checked rather than assumed: the re-send came
    // between the automatic attempts, and the restart before the retry.
    let started = |i: usize| time(&attempts[i]["started_at"]);
    assert!(started(1) < started(2), "the re-send came before the retry");
    assert!(
        started(2) > restarted,
        "the retry was made after the restart"
    );
    assert_eq!(down.received().len(), 4);
}

/// One raw HTTP/1.1 exchange (the sender shows no response headers).
async fn raw(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
        .await
        .expect("the server answers and closes")
        .unwrap();
    String::from_utf8_lossy(&out).to_ascii_lowercase()
}

/// What the caller got wrong gets a 4xx that says so, never a 5xx; an
/// undeclared method a 405 with `Allow`; a client trickling its head is
/// cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_caller_mistakes_with_4xx_and_bounds_slow_clients() {
    let (ok, down) = (TestReceiver::start().await, TestReceiver::start().await);
    let shutdown = CancellationToken::new();
    let (api, running) = start(&ok, &down, shutdown.clone()).await;
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    let put = raw(
        running.addr,
        &format!("PUT /v1/events HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(put.starts_with("http/1.1 405"), "{put}");
    assert!(put.contains("\r\nallow: post\r\n"), "{put}");
    let metrics = raw(
        running.addr,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        metrics.contains("\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\n"),
        "{metrics:.300}"
    );
    for query in ["limit=0", "limit=1001", "limit=x", "from=yesterday"] {
        let (status, body) = api
            .call(
                "GET",
                &format!("/v1/notifications?webhook=loans&{query}"),
                Some(TOKEN),
                None,
            )
            .await;
        assert_eq!(status, 400, "{query}: {body}");
    }
    // A cursor this API never handed out names no page.
    let (status, body) = api
        .call(
            "GET",
            "/v1/notifications?webhook=loans&cursor=not-a-cursor",
            Some(TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "cursor_not_found", "{body}");
    for bad in [
        json!({"webhook": "loans", "to": {}}),
        json!({"webhook": "loans", "to": null}),
        json!({"webhook": "loans", "cursor": "x"}),
        json!(["loans"]),
    ] {
        let (status, body) = api
            .call("POST", "/v1/notifications/resend", Some(TOKEN), Some(bad))
            .await;
        assert_eq!(status, 400, "{body}");
    }
    // A bulk range of centuries would walk a day partition per day: 400,
    // saying the limit; a year is fine.
    let bulk = async |from: &str, to: &str| {
        api.call(
            "POST",
            "/v1/notifications/resend",
            Some(TOKEN),
            Some(json!({"webhook": "loans", "from": from, "to": to})),
        )
        .await
    };
    let (status, body) = bulk("1900-01-01T00:00:00Z", "2900-01-01T00:00:00Z").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "range_too_large", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 366 days"),
        "{body}"
    );
    let (status, body) = bulk("2025-01-01T00:00:00Z", "2026-01-01T00:00:00Z").await;
    assert_eq!(status, 202, "{body}");
    // A head that never ends: the connection is closed after the
    // header-read timeout, not held.
    let started = tokio::time::Instant::now();
    let trickle = raw(running.addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n").await;
    assert!(!trickle.contains("200 ok"), "{trickle}");
    assert!(started.elapsed() < Duration::from_secs(25));
    shutdown.cancel();
    running.wait().await;
}

#[tokio::test]
async fn a_blank_token_is_refused_at_start_up() {
    let rx = TestReceiver::start().await;
    let dir = std::env::temp_dir().join(herald_tests::unique_name("herald_blank"));
    for tokens in [vec![TOKEN.to_owned(), String::new()], vec!["  ".to_owned()]] {
        let config = StandaloneConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            database: dir.join("herald.db"),
            api_tokens: tokens.clone(),
            ..StandaloneConfig::default()
        };
        let webhooks = Webhooks::from_toml(&definitions(&rx, &rx)).unwrap();
        let secrets: HashMap<SecretRef, String> = HashMap::new();
        let Err(e) = standalone::start(
            config,
            webhooks,
            Arc::new(secrets),
            CancellationToken::new(),
        )
        .await
        else {
            panic!("started with tokens {tokens:?}");
        };
        assert!(format!("{e:#}").contains("is blank"), "{e:#}");
    }
}

/// A re-submission that arrives while the first attempt is in flight sends
/// nothing: the receiver holds the first request unanswered until the
/// re-submission has been accepted, and gets exactly one request. (Found by
/// the CloudEvents SDK test: a batch re-submitting events still being
/// delivered sent them twice.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resubmission_during_the_first_attempt_sends_nothing_more() {
    let (ok, down) = (TestReceiver::start().await, TestReceiver::start().await);
    ok.push_replies([Reply::slow(200, Duration::from_secs(2))]);
    let shutdown = CancellationToken::new();
    let (api, running) = start(&ok, &down, shutdown.clone()).await;
    let submit = async || {
        api.accept_one(event("inflight", "bank.loan.disbursed", "L-1"))
            .await
    };
    let id = submit().await;
    // The first request has arrived and is not answered yet.
    ok.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(submit().await, id);
    api.wait_record(&id, "delivered", |r| r["state"]["status"] == "delivered")
        .await;
    // Anything the re-submission scheduled would go out at once; a marker
    // accepted after it and delivered shows the scheduler got past it.
    let marker = api
        .accept_one(event("marker", "bank.loan.disbursed", "L-2"))
        .await;
    api.wait_record(&marker, "delivered", |r| {
        r["state"]["status"] == "delivered"
    })
    .await;
    let sent = ok
        .received()
        .iter()
        .filter(|r| r.header("webhook-id") == Some(id.as_str()))
        .count();
    assert_eq!(sent, 1, "the in-flight notification was sent again");
    shutdown.cancel();
    running.wait().await;
}

/// Found by reading the code (issue 15, one plan step for both modes): a
/// webhook whose `max_body_bytes` allows a body above the store's limit
/// made standalone answer 503 for the whole batch, where Kafka-mode ingest
/// stored a `render_failed` record. Both now plan with
/// `StoreLimits::settle`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_store_limit_is_a_render_failed_record_not_a_refused_batch() {
    let rx = TestReceiver::start().await;
    let toml = format!(
        "[[webhooks]]\nid = \"big\"\nevents = [\"bank.*\"]\nurl = \"{}\"\nmax_body_bytes = 4194304\nbody = '{{\"blob\": {{{{json data.blob}}}}}}'\n",
        rx.url("/big")
    );
    let shutdown = CancellationToken::new();
    let (api, running) = start_toml(&toml, shutdown.clone(), 16).await;
    let event = json!({"specversion": "1.0", "id": "big-1", "source": "/core", "type": "bank.x",
                       "data": {"blob": "x".repeat(1200 * 1024)}});
    let (status, body) = api
        .call("POST", "/v1/events", Some(TOKEN), Some(event))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["results"][0]["status"], "render_failed", "{body}");
    let id = body["notifications"][0].as_str().unwrap().to_owned();
    let (status, record) = api
        .call("GET", &format!("/v1/notifications/{id}"), Some(TOKEN), None)
        .await;
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["state"]["status"], "render_failed", "{record}");
    assert!(record.to_string().contains("above"), "says why: {record}");
    assert!(rx.received().is_empty(), "nothing sent");
    shutdown.cancel();
    running.wait().await;
}

/// A store that refuses attempts for good (here: its attempts table is
/// gone) stalls the delivery visibly, as in Kafka mode
/// (`a_store_that_refuses_attempts_stalls_and_commits_nothing`): the request
/// was sent, the failure to record it is counted and retried, nothing is
/// skipped; once the table is back the attempt is recorded, and the
/// notification was sent once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_refuses_attempts_stalls_visibly_until_it_is_fixed() {
    let (ok, down) = (TestReceiver::start().await, TestReceiver::start().await);
    let shutdown = CancellationToken::new();
    let (api, running) = start(&ok, &down, shutdown.clone()).await;
    let side = rusqlite::Connection::open(&api.database).unwrap();
    side.busy_timeout(Duration::from_secs(10)).unwrap();
    side.execute_batch("ALTER TABLE attempts RENAME TO attempts_away")
        .unwrap();
    let id = api
        .accept_one(event("refused", "bank.loan.disbursed", "L-9"))
        .await;
    ok.wait_for(1, Duration::from_secs(30)).await;
    let retried = r#"herald_delivery_retried_operations_total{operation="append_attempts"}"#;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, metrics) = api.call("GET", "/metrics", None, None).await;
        let count = metrics
            .as_str()
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(retried))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        // Failed at least twice: being retried, not given up.
        if count >= 2.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the refused record is not retried: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    side.execute_batch("ALTER TABLE attempts_away RENAME TO attempts")
        .unwrap();
    let record = api
        .wait_record(&id, "delivered", |r| r["state"]["status"] == "delivered")
        .await;
    assert_eq!(
        record["attempts"].as_array().unwrap().len(),
        1,
        "{record:#}"
    );
    assert_eq!(ok.received().len(), 1, "sent once");
    shutdown.cancel();
    running.wait().await;
}

/// The pipeline's promises for a re-submitted event (same source and id,
/// other data): the stored record wins, delivered and failed notifications
/// stay closed, and nothing is sent again. The Kafka-mode counterpart (an
/// input replay) is `tests/integration/pipeline_invariants.rs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resubmitted_event_schedules_nothing_and_keeps_the_stored_request() {
    let (ok, down) = (TestReceiver::start().await, TestReceiver::start().await);
    down.set_default(Reply::status(500));
    let shutdown = CancellationToken::new();
    // One attempt at a time, in the order scheduled: the marker's first
    // request reaches its receiver only after anything the re-submission
    // scheduled before it was sent.
    let (api, running) = start_with(&ok, &down, shutdown.clone(), 1).await;
    let post = async |events: Value| api.accept(events).await;
    let first = post(json!([
        event("r1", "bank.loan.disbursed", "L-1"),
        event("r2", "bank.client.created", "C-1"),
    ]))
    .await;
    assert_eq!(first["results"][0]["known"], false, "{first}");
    let (loan, client) = (
        first["notifications"][0].as_str().unwrap().to_owned(),
        first["notifications"][1].as_str().unwrap().to_owned(),
    );
    api.wait_record(&loan, "delivered", |r| r["state"]["status"] == "delivered")
        .await;
    api.wait_record(&client, "failed", |r| r["state"]["status"] == "failed")
        .await;

    // The client resubmits both events, with corrected data.
    let mut changed = event("r1", "bank.loan.disbursed", "L-9");
    changed["data"]["amount"] = json!(9999);
    let again = post(json!([changed, event("r2", "bank.client.created", "C-9")])).await;
    assert_eq!(again["notifications"], first["notifications"], "{again}");
    for (i, status) in [(0, "delivered"), (1, "failed")] {
        assert_eq!(again["results"][i]["known"], true, "{again}");
        assert_eq!(again["results"][i]["status"], status, "{again}");
    }
    let marker = post(json!(event("r3", "bank.client.created", "C-3"))).await;
    let marker = marker["notifications"][0].as_str().unwrap().to_owned();
    api.wait_record(&marker, "failed", |r| r["state"]["status"] == "failed")
        .await;

    let count = |rx: &TestReceiver, id: &str| {
        rx.received()
            .iter()
            .filter(|r| r.header("webhook-id") == Some(id))
            .count()
    };
    assert_eq!(
        count(&ok, &loan),
        1,
        "a delivered notification is not sent again"
    );
    assert_eq!(
        count(&down, &client),
        3,
        "an exhausted one gets no automatic attempt"
    );
    assert_eq!(count(&down, &marker), 3);
    for (rx, id) in [(&ok, &loan), (&down, &client)] {
        let (_, record) = api
            .call("GET", &format!("/v1/notifications/{id}"), Some(TOKEN), None)
            .await;
        let stored = record["notification"]["content"]["rendered"]["body"]
            .as_str()
            .unwrap_or_else(|| panic!("{record}"));
        assert!(
            !stored.contains("9999") && !stored.contains("C-9"),
            "{stored}"
        );
        for r in rx
            .received()
            .iter()
            .filter(|r| r.header("webhook-id") == Some(id))
        {
            assert_eq!(r.body, stored.as_bytes(), "what was sent is what is stored");
        }
        let numbers: Vec<u64> = record["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["attempt_no"].as_u64().unwrap())
            .collect();
        let expected: Vec<u64> = (1..=numbers.len() as u64).collect();
        assert_eq!(numbers, expected, "{id}");
    }
    shutdown.cancel();
    running.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_answers_as_documented() {
    let doc: Value =
        serde_json::from_str(include_str!("../../../schemas/openapi.json")).expect("openapi.json");
    let (ok, down) = (TestReceiver::start().await, TestReceiver::start().await);
    let shutdown = CancellationToken::new();
    let (api, running) = start(&ok, &down, shutdown.clone()).await;
    let id = api
        .accept_one(event("e9", "bank.loan.disbursed", "L-9"))
        .await;

    let schemas = &doc["components"]["schemas"];
    let mut checked = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let method = method.to_uppercase();
            let concrete = path.replace("{id}", &id).replace("{webhook}", "loans");
            let url = if ["/v1/notifications", "/v1/notifications/counts"].contains(&path.as_str())
            {
                format!("{concrete}?webhook=loans")
            } else {
                concrete
            };
            let body = match (method.as_str(), path.as_str()) {
                ("POST", "/v1/events") => Some(event("e10", "bank.loan.disbursed", "L-10")),
                // The first documented 2xx is the dry run's 200.
                ("POST", "/v1/notifications/resend") => {
                    Some(json!({"webhook": "loans", "dry_run": true}))
                }
                ("POST", "/v1/webhooks/{webhook}/preview") => {
                    Some(event("e11", "bank.loan.disbursed", "L-11"))
                }
                _ => None,
            };
            let secured = op
                .get("security")
                .is_none_or(|s| s.as_array().is_some_and(|a| !a.is_empty()));
            let responses = op["responses"].as_object().unwrap();
            if secured {
                assert!(
                    responses.contains_key("401"),
                    "{method} {path} must document 401"
                );
                let (status, _) = api.call(&method, &url, None, body.clone()).await;
                assert_eq!(status, 401, "{method} {path} without a token");
            }
            let (status, value) = api.call(&method, &url, Some(TOKEN), body).await;
            let success = responses.keys().find(|k| k.starts_with('2')).unwrap();
            assert_eq!(status.to_string(), *success, "{method} {path}: {value}");
            // The answer carries every field the documented schema requires.
            let schema_ref =
                responses[success]["content"]["application/json"]["schema"]["$ref"].as_str();
            if let Some(name) = schema_ref.and_then(|r| r.strip_prefix("#/components/schemas/")) {
                for field in schemas[name]["required"].as_array().unwrap() {
                    assert!(
                        value.get(field.as_str().unwrap()).is_some(),
                        "{method} {path}: no {field} in {value}"
                    );
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 16, "every route of the document was exercised");
    // An unknown route is a JSON 404 of the documented error shape.
    let (status, value) = api.call("GET", "/v1/nope", Some(TOKEN), None).await;
    assert_eq!(
        (status, value["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    shutdown.cancel();
    running.wait().await;
}

/// What the console reads: status counts that agree with the listing, a
/// dry-run bulk re-send that queues nothing, a template preview that
/// renders the stored bytes or says where the template fails, this
/// process's totals, and its static files under a strict policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_routes_count_preview_and_report_without_side_effects() {
    let (ok, down) = (TestReceiver::start().await, TestReceiver::start().await);
    down.set_default(Reply::status(500));
    let shutdown = CancellationToken::new();
    let (api, running) = start(&ok, &down, shutdown.clone()).await;
    let body = api
        .accept(json!([
            event("c1", "bank.loan.disbursed", "L-1"),
            event("c2", "bank.client.created", "C-1")
        ]))
        .await;
    let (loan, client) = (
        body["notifications"][0].as_str().unwrap().to_owned(),
        body["notifications"][1].as_str().unwrap().to_owned(),
    );
    let stored = api
        .wait_record(&loan, "delivered", |r| r["state"]["status"] == "delivered")
        .await;
    api.wait_record(&client, "failed", |r| r["state"]["status"] == "failed")
        .await;

    let get = |path: String| {
        let api = &api;
        async move {
            let (status, v) = api.call("GET", &path, Some(TOKEN), None).await;
            assert_eq!(status, 200, "{path}: {v}");
            v
        }
    };
    let counts = get("/v1/notifications/counts?webhook=clients".into()).await;
    assert_eq!(counts["counts"], json!({"failed": 1}), "{counts}");
    assert_eq!(
        (counts["total"].as_u64(), counts["complete"].as_bool()),
        (Some(1), Some(true))
    );
    let counts = get("/v1/notifications/counts?webhook=loans".into()).await;
    assert_eq!(counts["counts"], json!({"delivered": 1}), "{counts}");
    // A count walks its whole range: bounded like a bulk re-send.
    let (status, long) = api
        .call(
            "GET",
            "/v1/notifications/counts?webhook=loans&from=1856-01-01T00:00:00Z",
            Some(TOKEN),
            None,
        )
        .await;
    assert_eq!(
        (status, long["error"]["code"].as_str()),
        (400, Some("range_too_large")),
        "{long}"
    );

    // A dry run counts and queues nothing: no re-send request is stored.
    let (status, dry) = api
        .call(
            "POST",
            "/v1/notifications/resend",
            Some(TOKEN),
            Some(json!({"webhook": "clients", "dry_run": true})),
        )
        .await;
    assert_eq!(
        (status, &dry),
        (200, &json!({"matched": 1, "complete": true}))
    );
    let db = rusqlite::Connection::open(&api.database).unwrap();
    let queued: i64 = db
        .query_row("SELECT count(*) FROM resend_requests", [], |r| r.get(0))
        .unwrap();
    assert_eq!(queued, 0, "a dry run queued a re-send");
    let (status, bad) = api
        .call(
            "POST",
            "/v1/notifications/resend",
            Some(TOKEN),
            Some(json!({"webhook": "clients", "dry_run": "yes"})),
        )
        .await;
    assert_eq!(
        (status, bad["error"]["code"].as_str()),
        (400, Some("invalid_body"))
    );

    // The preview of the same event is the stored request, byte for byte.
    let (status, preview) = api
        .call(
            "POST",
            "/v1/webhooks/loans/preview",
            Some(TOKEN),
            Some(event("c1", "bank.loan.disbursed", "L-1")),
        )
        .await;
    assert_eq!(status, 200, "{preview}");
    assert_eq!(preview["matches"], true);
    assert_eq!(
        preview["request"], stored["notification"]["content"]["rendered"],
        "{preview}"
    );
    // A template failure says where; a broken event is a 400 that says why.
    let mut no_amount = event("c3", "bank.loan.disbursed", "L-3");
    no_amount["data"] = json!({});
    let (status, preview) = api
        .call(
            "POST",
            "/v1/webhooks/loans/preview",
            Some(TOKEN),
            Some(no_amount),
        )
        .await;
    assert_eq!(status, 200, "{preview}");
    assert!(preview.get("request").is_none(), "{preview}");
    assert_eq!(
        preview["error"]["position"],
        json!({"part": "body", "line": 1, "column": 38}),
        "{preview}"
    );
    assert!(
        preview["error"]["message"]
            .as_str()
            .unwrap()
            .contains("missing field `data.amount`"),
        "{preview}"
    );
    let (status, bad) = api
        .call(
            "POST",
            "/v1/webhooks/loans/preview",
            Some(TOKEN),
            Some(json!({"id": "x"})),
        )
        .await;
    assert_eq!(
        (status, bad["error"]["code"].as_str()),
        (400, Some("invalid_event"))
    );
    let (status, _) = api
        .call(
            "POST",
            "/v1/webhooks/nope/preview",
            Some(TOKEN),
            Some(event("c1", "bank.loan.disbursed", "L-1")),
        )
        .await;
    assert_eq!(status, 404);

    // The totals are this process's counters: 1 delivery, 3 failed attempts.
    let stats = get("/v1/stats".into()).await;
    assert_eq!(stats["webhooks"]["loans"]["delivered"], 1, "{stats}");
    assert_eq!(
        stats["webhooks"]["clients"]["failed_attempts"], 3,
        "{stats}"
    );
    assert_eq!(
        stats["webhooks"]["clients"]["retries_scheduled"], 2,
        "{stats}"
    );
    assert_eq!(stats["webhooks"]["clients"]["exhausted"], 1, "{stats}");

    // The webhook list names the webhooks and never their URLs.
    let list = get("/v1/webhooks".into()).await;
    let ids: Vec<&str> = list["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["loans", "clients"]);
    assert!(!list.to_string().contains("127.0.0.1"), "{list}");

    // The console's files: no token needed, a same-origin policy.
    let addr: std::net::SocketAddr = api.base.trim_start_matches("http://").parse().unwrap();
    for path in ["/console", "/console/app.js", "/console/app.css"] {
        let resp = raw(
            addr,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(resp.starts_with("http/1.1 200"), "{path}: {resp:.200}");
        assert!(
            resp.contains("content-security-policy: default-src 'none'; script-src 'self';"),
            "{path}: {resp:.400}"
        );
    }
    let resp = raw(
        addr,
        "GET /console/../Cargo.toml HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("http/1.1 404"), "{resp:.200}");
    shutdown.cancel();
    running.wait().await;
}

/// `v1a` (ed25519) next to `v1` during a migration: each request carries
/// the signature of every key whose window holds now, and the public keys
/// of all of them (past, current, scheduled) are published without a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1a_keys_are_published_without_a_token_and_sign_within_their_windows() {
    let rx = TestReceiver::start().await;
    let seed = |b: u8| SigningSecret::from_ed25519_seed([b; 32]).unwrap();
    let (current, scheduled, retired) = (seed(1), seed(2), seed(3));
    let toml = format!(
        r#"
[secrets]
signing = {{ env = "TEST_WHSEC" }}
current = {{ env = "ED_CURRENT" }}
scheduled = {{ env = "ED_SCHEDULED" }}
retired = {{ env = "ED_RETIRED" }}

[[webhooks]]
id = "ledger"
events = ["bank.loan.*"]
url = "{url}"
body = '{{"loan": {{{{json subject}}}}}}'
signing_secrets = [
  "signing",
  "current",
  {{ secret = "scheduled", not_before = "2999-01-01T00:00:00Z" }},
  {{ secret = "retired", not_after = "2020-01-01T00:00:00Z" }},
]
"#,
        url = rx.url("/ledger")
    );
    let secrets = HashMap::from([
        (SecretRef::Env("ED_CURRENT".into()), current.to_whsec()),
        (SecretRef::Env("ED_SCHEDULED".into()), scheduled.to_whsec()),
        (SecretRef::Env("ED_RETIRED".into()), retired.to_whsec()),
    ]);
    let shutdown = CancellationToken::new();
    let (api, running) = start_with_secrets(&toml, secrets, shutdown.clone(), 8).await;

    let (status, doc) = api
        .call("GET", "/v1/webhooks/ledger/signing-keys", None, None)
        .await;
    assert_eq!(status, 200, "{doc}");
    let keys = doc["keys"].as_array().unwrap();
    let listed: Vec<(String, bool)> = keys
        .iter()
        .map(|k| {
            (
                k["public_key"].as_str().unwrap().to_owned(),
                k["signing"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            (current.public_key().unwrap(), true),
            (scheduled.public_key().unwrap(), false),
            (retired.public_key().unwrap(), false),
        ],
        "the HMAC secret has no public half and is not listed: {doc}"
    );
    assert_eq!(keys[0]["kid"], json!(current.key_id().unwrap()));
    assert_eq!(keys[1]["not_before"], json!("2999-01-01T00:00:00Z"));
    assert!(!doc.to_string().contains("whsk_") && !doc.to_string().contains("whsec_"));
    let (status, _) = api
        .call("GET", "/v1/webhooks/nope/signing-keys", None, None)
        .await;
    assert_eq!(status, 404);

    api.accept_one(event("v1a-1", "bank.loan.disbursed", "L-9"))
        .await;
    let got = rx.wait_for(1, Duration::from_secs(30)).await;
    let r = &got[0];
    let header = r.header("webhook-signature").unwrap();
    let versions: Vec<&str> = header
        .split(' ')
        .map(|s| s.split(',').next().unwrap())
        .collect();
    assert_eq!(versions, ["v1", "v1a"], "{header}");
    let verify = |key: &SigningSecret| {
        signing::verify(
            std::slice::from_ref(key),
            r.header("webhook-id").unwrap(),
            r.header("webhook-timestamp").unwrap(),
            header,
            &r.body,
            Utc::now(),
            signing::DEFAULT_TOLERANCE,
        )
    };
    verify(&current).unwrap();
    assert!(verify(&scheduled).is_err() && verify(&retired).is_err());
    verify(&SigningSecret::parse(WHSEC).unwrap()).unwrap();
    shutdown.cancel();
    running.wait().await;
}
