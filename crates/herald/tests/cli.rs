//! Every operator command of the `herald` binary, run for real: template
//! check and render against the shipped example, and history and re-send
//! against a running standalone Herald. Exit codes are part of the contract.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use herald::standalone::{self, StandaloneConfig};
use herald_core::Webhooks;
use herald_store::NotificationStore;
use herald_tests::{Reply, TestReceiver};
use tokio_util::sync::CancellationToken;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn herald(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.current_dir(root()).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run herald")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Poll `herald history --json` (the first line) until its notification has
/// `n` attempts recorded.
async fn wait_for_attempts<F>(history: &F, n: u64)
where
    F: Fn() -> Output + Clone + Send + 'static,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let o = tokio::task::spawn_blocking(history.clone()).await.unwrap();
        let line: serde_json::Value =
            serde_json::from_str(stdout(&o).lines().next().unwrap()).unwrap();
        if line["state"]["attempts"] == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} attempts never recorded: {line}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A standalone Herald on a fresh database with these definitions, its API
/// taking the token `cli-token`; and the API's URL, leaked so the blocking CLI
/// calls can borrow it for the whole test.
async fn standalone_api(
    defs: &str,
    test: &str,
) -> (standalone::Standalone, CancellationToken, &'static str) {
    let dir = std::env::temp_dir().join(herald_tests::unique_name(test));
    let config = StandaloneConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database: dir.join("herald.db"),
        api_tokens: vec!["cli-token".into()],
        ssrf_allow: vec!["127.0.0.0/8".into()],
        ..StandaloneConfig::default()
    };
    let shutdown = CancellationToken::new();
    let running = standalone::start(
        config,
        Webhooks::from_toml(defs).unwrap(),
        Arc::new(HashMap::<herald_core::SecretRef, String>::new()),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let api: &'static str = Box::leak(format!("http://{}", running.addr).into_boxed_str());
    (running, shutdown, api)
}

#[test]
fn help_lists_every_command() {
    let o = herald(&["--help"], &[]);
    assert!(o.status.success());
    for cmd in [
        "demo",
        "standalone",
        "template",
        "history",
        "resend",
        "circuits",
    ] {
        assert!(
            stdout(&o).contains(cmd),
            "--help lacks {cmd}: {}",
            stdout(&o)
        );
    }
}

#[test]
fn template_check_and_render() {
    let o = herald(
        &[
            "template",
            "check",
            "--webhooks",
            "deploy/webhooks.example.toml",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("5 webhooks, all valid"),
        "{}",
        stdout(&o)
    );

    // Client certificates: valid, about to expire, expired, not readable
    // here. An expired one fails the check.
    let ca = herald_tests::pki::TestCa::new("cli CA");
    let dir = std::env::temp_dir().join(herald_tests::unique_name("herald_cli_tls"));
    std::fs::create_dir_all(&dir).unwrap();
    let day = |days: i64| {
        let d = chrono::Utc::now().date_naive() + chrono::Duration::days(days);
        use chrono::Datelike;
        (d.year(), d.month() as u8, d.day() as u8)
    };
    let mut toml = String::from("[secrets]\nmissing = { env = \"HERALD_CLI_NO_SUCH_CERT\" }\n");
    for (name, until) in [("far", day(400)), ("soon", day(10)), ("gone", (2020, 1, 1))] {
        let issued = ca.client_until(name, until);
        for (ext, pem) in [("crt", &issued.cert_pem), ("key", &issued.key_pem)] {
            let path = dir.join(format!("{name}.{ext}"));
            std::fs::write(&path, pem).unwrap();
            toml.push_str(&format!(
                "{name}_{ext} = {{ file = {:?} }}\n",
                path.display().to_string()
            ));
        }
    }
    for (id, cert, key) in [
        ("far", "far_crt", "far_key"),
        ("soon", "soon_crt", "soon_key"),
        ("gone", "gone_crt", "gone_key"),
        ("unreadable", "missing", "far_key"),
    ] {
        toml.push_str(&format!(
            "[[webhooks]]\nid = \"{id}\"\nevents = [\"x\"]\nurl = \"https://{id}.example\"\nbody = \"{{}}\"\n[webhooks.tls]\nclient_cert = \"{cert}\"\nclient_key = \"{key}\"\n"
        ));
    }
    let file = dir.join("tls.toml");
    std::fs::write(&file, toml).unwrap();
    let o = herald(
        &["template", "check", "--webhooks", file.to_str().unwrap()],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let out = stdout(&o);
    for line in [
        "webhooks.far.tls.client_cert: valid until ",
        "webhooks.soon.tls.client_cert: expires on ",
        "webhooks.gone.tls.client_cert: EXPIRED on 2020-01-01 00:00 UTC",
        "webhooks.unreadable.tls.client_cert: not checked here: secret env:HERALD_CLI_NO_SUCH_CERT is not set",
    ] {
        assert!(out.contains(line), "{line:?} not in:\n{out}");
    }
    assert!(
        out.contains("in 9 days") || out.contains("in 10 days"),
        "{out}"
    );
    assert!(
        stderr(&o).contains("1 client certificate(s) expired"),
        "{}",
        stderr(&o)
    );
    let _ = std::fs::remove_dir_all(&dir);

    // A broken file: exit 2, every error with its location.
    let dir = std::env::temp_dir().join(herald_tests::unique_name("herald_cli"));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[[webhooks]]\nid = \"a\"\nevents = [\"x\"]\nurl = \"ftp://x\"\nbody = \"{{#if}}\"\n\n[[webhooks]]\nid = \"a\"\nevents = [\"y\"]\nurl = \"https://ok.example\"\nbody = \"{}\"\n",
    )
    .unwrap();
    let o = herald(
        &["template", "check", "--webhooks", bad.to_str().unwrap()],
        &[],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("webhooks.a.url") && err.contains("duplicate"),
        "{err}"
    );

    let o = herald(
        &[
            "template",
            "render",
            "--webhooks",
            "deploy/webhooks.example.toml",
            "--webhook",
            "crm-loan-disbursed",
            "--event",
            "tests/fixtures/events/loan-disbursed.json",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.starts_with("POST https://crm.example.com/api/v1/loans/LN-2024-000042/disbursements"),
        "{out}"
    );
    assert!(
        out.contains("Authorization: Bearer <secret crm_api_token>"),
        "secrets are masked: {out}"
    );
    assert!(
        out.contains("\"loanAccountId\": \"LN-2024-000042\""),
        "{out}"
    );

    let o = herald(
        &[
            "template",
            "render",
            "--webhook",
            "nope",
            "--event",
            "tests/fixtures/events/loan-disbursed.json",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no webhook \"nope\""), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_resend_through_the_api() {
    let rx = TestReceiver::start().await;
    rx.set_default(Reply::status(500));
    let defs = format!(
        "[defaults.retry]\nmax_attempts = 1\n\n[[webhooks]]\nid = \"cards\"\nevents = [\"bank.card.*\"]\nurl = \"{}\"\nbody = '{{\"card\": {{{{json subject}}}}}}'\n",
        rx.url("/cards")
    );
    let (running, shutdown, api) = standalone_api(&defs, "herald_cli").await;
    let event = serde_json::json!({"specversion": "1.0", "id": "c1", "source": "/cards", "type": "bank.card.blocked", "subject": "CARD-1"});
    let ids: Vec<_> = running
        .engine
        .accept(vec![event])
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.id)
        .collect();
    rx.wait_for(1, Duration::from_secs(10)).await;
    let env = [("HERALD_API_URL", api), ("HERALD_API_TOKEN", "cli-token")];

    // Wait until the single attempt is on record as failed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let table = loop {
        let o =
            tokio::task::spawn_blocking(move || herald(&["history", "--webhook", "cards"], &env))
                .await
                .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        if stdout(&o).contains("failed") {
            break stdout(&o);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never failed: {}",
            stdout(&o)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        table.contains(&ids[0].to_string()) && table.contains("bank.card.blocked"),
        "{table}"
    );

    let o = tokio::task::spawn_blocking(move || {
        herald(&["history", "--webhook", "cards", "--json"], &env)
    })
    .await
    .unwrap();
    let line: serde_json::Value = serde_json::from_str(stdout(&o).lines().next().unwrap()).unwrap();
    assert_eq!(line["state"]["status"], "failed");

    // Bulk re-send of the failed ones, then by id: two manual attempts arrive.
    rx.set_default(Reply::ok());
    let o = tokio::task::spawn_blocking(move || {
        herald(
            &["resend", "--webhook", "cards", "--status", "failed"],
            &env,
        )
    })
    .await
    .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "queued 1 re-send(s)");
    let id = ids[0].to_string();
    let o = tokio::task::spawn_blocking(move || herald(&["resend", &id], &env))
        .await
        .unwrap();
    assert_eq!(stdout(&o).trim(), "queued 1 re-send(s)");
    let got = rx.wait_for(3, Duration::from_secs(10)).await;
    assert!(
        got.iter().all(|r| r.body == got[0].body),
        "every re-send carries the stored bytes"
    );

    // A bad token: exit 1 and the API's message.
    let bad = [("HERALD_API_URL", api), ("HERALD_API_TOKEN", "wrong")];
    let o = tokio::task::spawn_blocking(move || herald(&["history", "--webhook", "cards"], &bad))
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("http 401"), "{}", stderr(&o));
    // No ids and no filter: a usage error.
    let o = tokio::task::spawn_blocking(move || herald(&["resend"], &env))
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));

    shutdown.cancel();
    running.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuits_are_listed_and_closed_through_the_api() {
    let rx = TestReceiver::start().await;
    rx.set_default(Reply::status(503));
    let defs = format!(
        "[[webhooks]]\nid = \"cards\"\nevents = [\"bank.card.*\"]\nurl = \"{}\"\nbody = '{{}}'\n[webhooks.circuit]\nfailure_threshold = 1\nwindow = \"1ms\"\ncooldown = \"1h\"\n",
        rx.url("/cards")
    );
    let (running, shutdown, api) = standalone_api(&defs, "herald_cli_circuits").await;
    // Failures held for a window (1 ms) open the circuit: two failures, the
    // second accepted 2 ms after the first was recorded (the breaker hears
    // of an attempt before the store does).
    for id in ["c1", "c2"] {
        let event = serde_json::json!({"specversion": "1.0", "id": id, "source": "/cards", "type": "bank.card.blocked", "subject": "CARD-1"});
        let accepted = running.engine.accept(vec![event]).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while running
            .engine
            .store()
            .attempts(accepted[0].id)
            .await
            .unwrap()
            .is_empty()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{id} never attempted"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let env = [("HERALD_API_URL", api), ("HERALD_API_TOKEN", "cli-token")];
    let json = move || {
        let o = herald(&["circuits", "--json"], &env);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_str::<serde_json::Value>(stdout(&o).lines().next().unwrap()).unwrap()
    };

    // The second failure opens the circuit.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let c = tokio::task::spawn_blocking(json).await.unwrap();
        if c["state"] == "open" {
            assert_eq!(c["webhook_id"], "cards");
            assert!(c["until"].is_string(), "{c}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never opened: {c}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let o = tokio::task::spawn_blocking(move || herald(&["circuits"], &env))
        .await
        .unwrap();
    let table = stdout(&o);
    assert!(table.contains("cards") && table.contains("open"), "{table}");

    let o = tokio::task::spawn_blocking(move || herald(&["circuits", "--close", "cards"], &env))
        .await
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with("circuit of cards closed at"),
        "{}",
        stdout(&o)
    );
    let c = tokio::task::spawn_blocking(json).await.unwrap();
    assert_eq!(
        (c["state"].as_str(), c["changed_by"].as_str()),
        (Some("closed"), Some("operator:api"))
    );
    // An unknown webhook: exit 1 and the API's 404.
    let o = tokio::task::spawn_blocking(move || herald(&["circuits", "--close", "nope"], &env))
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("http 404"), "{}", stderr(&o));

    shutdown.cancel();
    running.wait().await;
}

#[test]
fn migrate_applies_the_cql_schema_idempotently() {
    let Some(node) = herald_tests::cql_node("cli migrate") else {
        return;
    };
    let keyspace = herald_tests::unique_name("cli_migrate");
    let o = herald(&["migrate", "--keyspace", &keyspace, "--print"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.notifications"
        )),
        "{}",
        stdout(&o)
    );
    for _ in 0..2 {
        let o = herald(
            &["migrate", "--contact-point", &node, "--keyspace", &keyspace],
            &[],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(
            stdout(&o).trim(),
            format!("keyspace {keyspace}: schema applied")
        );
    }
    // The schema is usable: the store can write and read a notification in it.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use herald_store::NotificationStore;
        let config = herald_store::cql::CqlConfig::new(vec![node.clone()], &keyspace);
        let store = herald_store::cql::CqlStore::connect(&config, herald_store::StoreLimits::default()).await.unwrap();
        let webhooks = Webhooks::from_toml(
            "[[webhooks]]\nid = \"w\"\nevents = [\"t\"]\nurl = \"https://example.com/\"\nbody = \"{}\"\n",
        )
        .unwrap();
        let event = herald_core::CloudEvent::from_json(br#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#).unwrap();
        let n = webhooks.notifications(&event, chrono::Utc::now());
        store.append_notifications(&n).await.unwrap();
        assert_eq!(store.get(n[0].id).await.unwrap().unwrap().notification.webhook_id, "w");
    });
}

#[test]
fn topics_create_makes_every_herald_topic_once() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let Some(bootstrap) = herald_tests::kafka_bootstrap("cli topics create") else {
        return;
    };
    let prefix = format!("{}.", herald_tests::unique_name("cli_topics"));
    let args = [
        "topics",
        "create",
        "--bootstrap",
        &bootstrap,
        "--prefix",
        &prefix,
        "--partitions",
        "3",
        "--tiers",
        "5s,1m",
    ];
    let o = herald(&args, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with("created 7 topic(s)"),
        "{}",
        stdout(&o)
    );
    assert!(
        stdout(&o).contains("retry tiers 5s, 1m: a message waits in a tier at most its delay"),
        "{}",
        stdout(&o)
    );
    let o = herald(&args, &[]);
    assert_eq!(
        stdout(&o).lines().next(),
        Some("created 0 topic(s)"),
        "idempotent"
    );

    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    // The circuits topic is compacted and has one partition (every worker
    // reads all of it).
    let expected: Vec<(String, usize)> = [
        ("herald.circuits", 1),
        ("herald.dead", 3),
        ("herald.deliveries", 3),
        ("herald.ingest.dlq", 3),
        ("herald.resend", 3),
        ("herald.retry.1m", 3),
        ("herald.retry.5s", 3),
    ]
    .iter()
    .map(|(t, p)| (t.to_string(), *p))
    .collect();
    // A created topic reaches the broker's metadata cache a moment after the
    // controller acknowledged it: read until it is there.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let meta = consumer
            .fetch_metadata(None, Duration::from_secs(10))
            .unwrap();
        let mut ours: Vec<(String, usize)> = meta
            .topics()
            .iter()
            .filter(|t| t.name().starts_with(&prefix))
            .map(|t| {
                (
                    t.name().trim_start_matches(&prefix).to_owned(),
                    t.partitions().len(),
                )
            })
            .collect();
        ours.sort();
        if ours == expected {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "topics after 30 s: {ours:?}, expected {expected:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Kafka mode through the binary: `herald ingest` and `herald delivery` as
/// two processes, configured by environment, carry an event from the input
/// topic to a receiver; the delivery process serves the notification API,
/// through which `herald history` and `herald resend` work; SIGTERM stops
/// both cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_and_delivery_run_from_the_cli() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let Some(bootstrap) = herald_tests::kafka_bootstrap("cli ingest+delivery") else {
        return;
    };
    let Some(node) = herald_tests::cql_node("cli ingest+delivery") else {
        return;
    };
    let name = herald_tests::unique_name("cli_kafka");
    let (prefix, input, keyspace) = (
        format!("{name}."),
        format!("{name}.banking.events"),
        name.clone(),
    );
    let o = herald(
        &["migrate", "--contact-point", &node, "--keyspace", &keyspace],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = herald(
        &[
            "topics",
            "create",
            "--bootstrap",
            &bootstrap,
            "--prefix",
            &prefix,
            "--partitions",
            "2",
            "--tiers",
            "1s,5s",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .unwrap();
    let topic =
        rdkafka::admin::NewTopic::new(&input, 2, rdkafka::admin::TopicReplication::Fixed(1));
    admin
        .create_topics(&[topic], &rdkafka::admin::AdminOptions::new())
        .await
        .unwrap();

    let rx = TestReceiver::start().await;
    let dir = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    let webhooks = dir.join("webhooks.toml");
    std::fs::write(
        &webhooks,
        format!("[[webhooks]]\nid = \"loans\"\nevents = [\"bank.loan.*\"]\nurl = \"{}\"\nbody = '{{\"loan\": {{{{json subject}}}}}}'\n", rx.url("/loans")),
    )
    .unwrap();

    let spawn = |service: &str, extra: &[(&str, String)]| {
        let upper = service.to_uppercase();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
        cmd.arg(service)
            .current_dir(root())
            .env(
                format!("HERALD_{upper}__KAFKA__BOOTSTRAP_SERVERS"),
                &bootstrap,
            )
            .env(format!("HERALD_{upper}__KAFKA__TOPIC_PREFIX"), &prefix)
            .env(
                format!("HERALD_{upper}__GROUP_ID"),
                format!("{name}-{service}"),
            )
            .env(format!("HERALD_{upper}__WEBHOOKS"), &webhooks)
            .env(
                format!("HERALD_{upper}__CQL__CONTACT_POINTS"),
                format!("[\"{node}\"]"),
            )
            .env(format!("HERALD_{upper}__CQL__KEYSPACE"), &keyspace)
            .env(
                format!("HERALD_{upper}__LISTEN"),
                format!("127.0.0.1:{}", herald_tests::free_port()),
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        for (k, v) in extra {
            if k.starts_with("HERALD_") {
                cmd.env(k, v);
            } else {
                cmd.env(format!("HERALD_{upper}__{k}"), v);
            }
        }
        cmd.spawn().expect("spawn herald service")
    };
    let ingest = spawn("ingest", &[("INPUT_TOPICS", format!("[\"{input}\"]"))]);
    let api_port = herald_tests::free_port();
    let delivery = spawn(
        "delivery",
        &[
            ("SSRF_ALLOW", "[\"127.0.0.0/8\"]".into()),
            ("TIERS", "[\"1s\",\"5s\"]".into()),
            ("HERALD_API__LISTEN", format!("127.0.0.1:{api_port}")),
            ("HERALD_API__TOKENS", "[\"kafka-token\"]".into()),
        ],
    );

    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let event = r#"{"specversion":"1.0","id":"cli-1","source":"/core","type":"bank.loan.disbursed","subject":"LN-7"}"#;
    producer
        .send(
            FutureRecord::to(&input).key("LN-7").payload(event),
            Duration::from_secs(10),
        )
        .await
        .unwrap();

    let got = rx.wait_for(1, Duration::from_secs(60)).await;
    assert_eq!(got[0].body.as_ref(), br#"{"loan": "LN-7"}"#);

    // The delivery process's API: history from Cassandra, once the attempt
    // is recorded.
    let api: &'static str = Box::leak(format!("http://127.0.0.1:{api_port}").into_boxed_str());
    let env = [("HERALD_API_URL", api), ("HERALD_API_TOKEN", "kafka-token")];
    let history = move || herald(&["history", "--webhook", "loans", "--json"], &env);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let line = loop {
        let o = tokio::task::spawn_blocking(history).await.unwrap();
        let out = stdout(&o);
        if let Some(line) = out.lines().next() {
            let line: serde_json::Value = serde_json::from_str(line).unwrap();
            if line["state"]["status"] == "delivered" {
                break line;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never recorded as delivered: {out} {}",
            stderr(&o)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(line["state"]["attempts"], 1);
    let id = line["notification"]["id"].as_str().unwrap().to_owned();

    // Re-send by id, then in bulk: both go through the resend topic and the
    // delivery worker sends the stored bytes under the same webhook-id.
    let o = tokio::task::spawn_blocking(move || herald(&["resend", &id], &env))
        .await
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "queued 1 re-send(s)");
    let o = tokio::task::spawn_blocking(move || {
        herald(
            &["resend", "--webhook", "loans", "--status", "delivered"],
            &env,
        )
    })
    .await
    .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "queued 1 re-send(s)");
    let got = rx.wait_for(3, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 3, "one delivery and two re-sends");
    for r in &got {
        assert_eq!(r.body, got[0].body, "a re-send carries the stored bytes");
        assert_eq!(r.header("webhook-id"), got[0].header("webhook-id"));
    }
    // Issued back to back, the two re-sends still take turns in the worker:
    // attempts 2 and 3, so the history counts 3.
    wait_for_attempts(&history, 3).await;
    // Circuits: closing one goes through the shared circuits topic, and the
    // listing reads it back.
    let o = tokio::task::spawn_blocking(move || herald(&["circuits", "--close", "loans"], &env))
        .await
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = tokio::task::spawn_blocking(move || herald(&["circuits", "--json"], &env))
        .await
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let c: serde_json::Value = serde_json::from_str(stdout(&o).lines().next().unwrap()).unwrap();
    assert_eq!(
        (
            c["webhook_id"].as_str(),
            c["state"].as_str(),
            c["changed_by"].as_str()
        ),
        (Some("loans"), Some("closed"), Some("operator:api"))
    );
    // Without a valid token the API refuses, and nothing was queued.
    let bad = [("HERALD_API_URL", api), ("HERALD_API_TOKEN", "wrong")];
    let o = tokio::task::spawn_blocking(move || herald(&["resend", "--webhook", "loans"], &bad))
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("http 401"), "{}", stderr(&o));

    for mut child in [ingest, delivery] {
        let ok = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap();
        assert!(status.success(), "graceful shutdown exits 0: {status}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
