//! The operator console in a real headless Chromium (Debian's `chromium`,
//! driven by Playwright for Python from the bootstrap venv), against a real
//! standalone Herald and against Kafka mode (`herald delivery` with its API,
//! on the real broker and CQL node), with real HTTP receivers on loopback.
//!
//! Each test stores the same world: a delivered loan, two client
//! notifications whose retries ran out, and a partner webhook whose circuit
//! is open. Then `console/drive.py` works through the six areas of the
//! console as an operator would (see its docstring), and this side checks
//! what the receivers got: the manual and bulk re-sends carried the stored
//! bytes. Screenshots of every page are saved under
//! `$CARGO_TARGET_TMPDIR/console/<mode>/` (target/tmp).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use herald::standalone::{self, StandaloneConfig};
use herald_core::{CloudEvent, SecretRef, SecretSource, Webhooks};
use herald_tests::{KafkaWorld, Received, Reply, TestReceiver};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const TOKEN: &str = "console-token-5d1f0a9c";
/// The value behind the clients' `Authorization` header: it must appear
/// nowhere in the console.
const CRM_TOKEN: &str = "crm-secret-value-7731";
const DRIVER: &str = include_str!("console/drive.py");

fn definitions(loans: &TestReceiver, clients: &TestReceiver, partners: &TestReceiver) -> String {
    format!(
        r#"
[defaults.retry]
max_attempts = 2
initial_delay = "200ms"
multiplier = 1.0
max_delay = "200ms"
jitter = 0.0

[secrets]
whsec = {{ env = "HERALD_CONSOLE_WHSEC" }}
crm_token = {{ env = "HERALD_CONSOLE_CRM_TOKEN" }}

[[webhooks]]
id = "loans"
events = ["bank.loan.*"]
url = "{loans}"
signing_secrets = ["whsec"]
body = '{{"loan": {{{{json subject}}}}, "amount": {{{{json data.amount}}}}}}'

[[webhooks]]
id = "clients"
events = ["bank.client.*"]
url = "{clients}"
signing_secrets = ["whsec"]
body = '{{"client": {{{{json subject}}}}, "name": {{{{json data.name}}}}, "note": "ünïcode ✓"}}'
[webhooks.headers]
Authorization = {{ secret = "crm_token", prefix = "Bearer " }}

[[webhooks]]
id = "partners"
events = ["bank.partner.*"]
url = "{partners}"
signing_secrets = ["whsec"]
body = '{{"partner": {{{{json subject}}}}}}'
[webhooks.retry]
max_attempts = 20
initial_delay = "300ms"
multiplier = 1.0
max_delay = "300ms"
jitter = 0.0
[webhooks.circuit]
failure_threshold = 1
window = "1s"
cooldown = "10m"
max_cooldown = "10m"
"#,
        loans = loans.url("/loans"),
        clients = clients.url("/clients"),
        partners = partners.url("/partners"),
    )
}

fn secrets() -> HashMap<SecretRef, String> {
    HashMap::from([
        (
            SecretRef::Env("HERALD_CONSOLE_WHSEC".into()),
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
        ),
        (
            SecretRef::Env("HERALD_CONSOLE_CRM_TOKEN".into()),
            CRM_TOKEN.into(),
        ),
    ])
}

fn events() -> Vec<Value> {
    let ev = |id: &str, ty: &str, subject: &str, data: Value| {
        json!({"specversion": "1.0", "id": id, "source": "/core", "type": ty,
               "subject": subject, "time": "2026-12-01T10:00:00Z", "data": data})
    };
    vec![
        ev(
            "l1",
            "bank.loan.disbursed",
            "L-1",
            json!({"amount": 125000}),
        ),
        ev("c1", "bank.client.created", "C-1", json!({"name": "Ada"})),
        ev("c2", "bank.client.created", "C-2", json!({"name": "Grace"})),
        ev("p1", "bank.partner.updated", "P-1", json!({})),
    ]
}

/// The bootstrap venv's Python with Playwright, and Chromium; `None` (a
/// loud skip) when missing and not required.
fn browser(test: &str) -> Option<(String, String)> {
    let py = herald_tests::python(test, "playwright", "playwright")?;
    let chromium = std::env::var("HERALD_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if Path::new(&chromium).exists() {
        return Some((py, chromium));
    }
    let required = std::env::var("HERALD_REQUIRE_INFRA").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "{test}: no Chromium at {chromium} and HERALD_REQUIRE_INFRA=1; run `scripts/test` (it installs Debian's chromium)"
    );
    eprintln!("\n!!!!!!!! SKIPPED {test}: no Chromium at {chromium} (apt-get install chromium)\n");
    None
}

/// The API under test, called with [`TOKEN`].
struct Api {
    client: herald_tests::ApiClient,
    base: String,
}

impl Api {
    fn new(base: String) -> Self {
        let client = herald_tests::ApiClient::new(base.clone());
        Self { client, base }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.client.call(method, path, Some(TOKEN), body).await
    }

    async fn status(&self, id: &str) -> Option<String> {
        let (code, r) = self
            .call("GET", &format!("/v1/notifications/{id}"), None)
            .await;
        (code == 200).then(|| r["state"]["status"].as_str().unwrap_or("").to_owned())
    }

    /// Waits until every notification has its expected status and the
    /// partners' circuit is open: the world the browser is shown.
    async fn wait_for_world(&self, ids: &Ids) {
        for (id, want) in [
            (&ids.loan, "delivered"),
            (&ids.c1, "failed"),
            (&ids.c2, "failed"),
        ] {
            herald_tests::eventually(
                &format!("{id} {want}"),
                Duration::from_secs(60),
                async || (self.status(id).await.as_deref() == Some(want)).then_some(()),
            )
            .await;
        }
        herald_tests::eventually(
            "the partners' circuit open",
            Duration::from_secs(60),
            async || {
                let (_, c) = self.call("GET", "/v1/circuits", None).await;
                c["circuits"]
                    .as_array()?
                    .iter()
                    .any(|c| c["webhook_id"] == "partners" && c["state"] == "open")
                    .then_some(())
            },
        )
        .await;
    }
}

struct Ids {
    loan: String,
    c1: String,
    c2: String,
}

fn ids(webhooks: &Webhooks) -> Ids {
    let id = |event: &Value| {
        let event = CloudEvent::from_value(event.clone()).unwrap();
        webhooks.notifications(&event, chrono::Utc::now())[0]
            .id
            .to_string()
    };
    let e = events();
    Ids {
        loan: id(&e[0]),
        c1: id(&e[1]),
        c2: id(&e[2]),
    }
}

fn bodies_of(received: &[Received], id: &str) -> Vec<String> {
    received
        .iter()
        .filter(|r| r.header("webhook-id") == Some(id))
        .map(|r| String::from_utf8(r.body.to_vec()).expect("UTF-8 body"))
        .collect()
}

fn artifacts(mode: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("console")
        .join(mode);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the browser scenario against `api`, then checks the receivers.
async fn drive(mode: &str, api: &Api, ids: &Ids, browser: (String, String), rx: &Receivers) {
    api.wait_for_world(ids).await;
    // Both client notifications failed twice with the same stored bytes.
    let got = rx.clients.received();
    let c1 = bodies_of(&got, &ids.c1);
    assert_eq!(c1.len(), 2, "{c1:?}");
    assert_eq!(c1[0], c1[1]);
    assert_eq!(bodies_of(&got, &ids.c2).len(), 2);
    // From now on the clients' receiver accepts: re-sends succeed.
    rx.clients.set_default(Reply::ok());

    let input = json!({
        "mode": mode,
        "base": api.base,
        "token": TOKEN,
        "secret": CRM_TOKEN,
        "chromium": browser.1,
        "artifacts": artifacts(mode),
        "failed_webhook": "clients",
        "failed_id": ids.c1,
        "bulk_id": ids.c2,
        "received_body": c1[0],
        "delivered_webhook": "loans",
        "circuit_webhook": "partners",
    });
    let py = browser.0;
    let report = tokio::task::spawn_blocking(move || herald_tests::run_python(&py, DRIVER, &input))
        .await
        .unwrap();
    eprintln!("console {mode}: {report}");
    assert_eq!(report["ok"], true, "{report}");

    // What the receiver got from the manual and the bulk re-send is the
    // stored request, byte for byte.
    let got = rx.clients.received();
    let c1_after = bodies_of(&got, &ids.c1);
    assert_eq!(c1_after.len(), 3, "one manual re-send of c1");
    assert_eq!(c1_after[2], c1[0]);
    let c2 = bodies_of(&got, &ids.c2);
    assert_eq!(c2.len(), 3, "one bulk re-send of c2");
    assert_eq!(c2[2], c2[0]);
    // The secret header was sent, resolved at send time, and never shown.
    assert_eq!(
        got.last().unwrap().header("authorization"),
        Some(format!("Bearer {CRM_TOKEN}").as_str())
    );
}

struct Receivers {
    loans: TestReceiver,
    clients: TestReceiver,
    partners: TestReceiver,
}

async fn receivers() -> Receivers {
    let r = Receivers {
        loans: TestReceiver::start().await,
        clients: TestReceiver::start().await,
        partners: TestReceiver::start().await,
    };
    r.clients.set_default(Reply::status(503));
    r.partners.set_default(Reply::status(500));
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_in_a_browser_against_standalone() {
    let Some(browser) = browser("the_console_works_in_a_browser_against_standalone") else {
        return;
    };
    let rx = receivers().await;
    let toml = definitions(&rx.loans, &rx.clients, &rx.partners);
    let webhooks = Webhooks::from_toml(&toml).unwrap();
    let ids = ids(&webhooks);
    let dir = std::env::temp_dir().join(herald_tests::unique_name("herald_console"));
    let config = StandaloneConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database: dir.join("herald.db"),
        api_tokens: vec![TOKEN.into()],
        ssrf_allow: vec!["127.0.0.0/8".into()],
        ..StandaloneConfig::default()
    };
    let shutdown = CancellationToken::new();
    let running = standalone::start(config, webhooks, Arc::new(secrets()), shutdown.clone())
        .await
        .expect("start");
    let api = Api::new(format!("http://{}", running.addr));
    let (status, body) = api
        .call("POST", "/v1/events", Some(Value::Array(events())))
        .await;
    assert_eq!(status, 202, "{body}");
    drive("standalone", &api, &ids, browser, &rx).await;
    shutdown.cancel();
    running.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_in_a_browser_against_kafka_mode() {
    const TEST: &str = "the_console_works_in_a_browser_against_kafka_mode";
    let Some(browser) = browser(TEST) else {
        return;
    };
    let Some(world) = KafkaWorld::with_tiers("console", 1, &["1s"]).await else {
        return;
    };
    let rx = receivers().await;
    let toml = definitions(&rx.loans, &rx.clients, &rx.partners);
    let webhooks = Webhooks::from_toml(&toml).unwrap();
    let ids = ids(&webhooks);
    let secrets: Arc<dyn SecretSource + Send + Sync> = Arc::new(secrets());
    let config = world.config();
    let service = herald_delivery::DeliveryService::bind(
        config.clone(),
        Webhooks::from_toml(&toml).unwrap(),
        secrets.clone(),
    )
    .await
    .expect("bind delivery");
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let api_config = herald::api::ApiConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tokens: vec![TOKEN.into()],
        ..Default::default()
    };
    let definitions = herald::api::Definitions {
        webhooks: Arc::new(Webhooks::from_toml(&toml).unwrap()),
        secrets,
    };
    let addr = herald::api::start_kafka(
        &api_config,
        &config,
        definitions,
        service.metrics().clone(),
        shutdown.clone(),
        &tracker,
    )
    .await
    .expect("api")
    .expect("api on");
    let worker = tokio::spawn(service.run(shutdown.clone()));
    world.ingest(&webhooks, events()).await;
    let api = Api::new(format!("http://{addr}"));
    drive("kafka", &api, &ids, browser, &rx).await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(60), worker)
        .await
        .expect("graceful shutdown")
        .unwrap()
        .unwrap();
    tracker.close();
    tracker.wait().await;
}
