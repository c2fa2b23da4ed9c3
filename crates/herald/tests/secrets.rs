//! Nobody gets in, and secrets stay secret: the real `herald standalone`
//! binary delivers with a secret `Authorization` header and a signing key,
//! retries and exhausts a failing webhook, and serves an operator's re-send
//! and listings. The receiver gets the secret header and a valid signature;
//! the database files, the process's log (at `debug`), `/metrics` and every
//! API answer hold none of the secret values nor the API token.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_core::signing::{self, SigningSecret};
use herald_delivery::{HttpSender, SenderConfig, SsrfGuard};
use herald_tests::{Reply, TestReceiver};
use serde_json::{Value, json};

const API_TOKEN: &str = "api-token-7c1f9e3a5b";
const RX_TOKEN: &str = "rx-token-4d2b8f6e0a";
/// A signing secret that is not valid base64: its attempts are refused,
/// and the refusal must not quote it.
const BAD_WHSEC: &str = "whsec_!!malformed-secret-5e4d";

fn signing_key() -> SigningSecret {
    SigningSecret::from_bytes(b"signing-key-bytes-0123456789abcdef".to_vec())
}

/// The strings that must never leave the process except on the wire.
fn secret_values() -> Vec<String> {
    let whsec = signing_key().to_whsec();
    vec![
        API_TOKEN.to_owned(),
        RX_TOKEN.to_owned(),
        whsec.clone(),
        whsec.trim_start_matches("whsec_").to_owned(),
        "signing-key-bytes-0123456789abcdef".to_owned(),
        "malformed-secret-5e4d".to_owned(),
    ]
}

fn leaked(haystack: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(haystack);
    secret_values()
        .into_iter()
        .filter(|s| text.contains(s.as_str()))
        .collect()
}

fn spawn(dir: &std::path::Path) -> (Child, String, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("standalone")
        .env("HERALD_STANDALONE__LISTEN", "127.0.0.1:0")
        .env("HERALD_STANDALONE__DATABASE", dir.join("herald.db"))
        .env("HERALD_STANDALONE__WEBHOOKS", dir.join("webhooks.toml"))
        .env(
            "HERALD_STANDALONE__API_TOKENS",
            format!("[\"{API_TOKEN}\"]"),
        )
        .env("HERALD_STANDALONE__SSRF_ALLOW", "[\"127.0.0.0/8\"]")
        .env("HERALD_TEST_RX_TOKEN", RX_TOKEN)
        .env("HERALD_TEST_WHSEC", signing_key().to_whsec())
        .env("HERALD_TEST_BAD_WHSEC", BAD_WHSEC)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn herald standalone");
    // Both streams, line by line, to one channel: the whole log.
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stream)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let addr = loop {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("herald never said where it listens");
        if let Some(rest) = line.split("\"addr\":\"").nth(1) {
            seen.push(line.clone());
            break rest.split('"').next().unwrap().to_owned();
        }
        seen.push(line);
    };
    let (relay, out) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in seen.into_iter().chain(lines.iter()) {
            if relay.send(l).is_err() {
                break;
            }
        }
    });
    (child, addr, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_reach_the_receiver_and_nowhere_else() {
    let ok = TestReceiver::start().await;
    let down = TestReceiver::start().await;
    down.set_default(Reply::status(503));
    let dir = std::env::temp_dir().join(herald_tests::unique_name("herald_secrets"));
    std::fs::create_dir_all(&dir).unwrap();
    let hook = |id: &str, url: String| {
        let key = if id == "broken" { "bad" } else { "sign" };
        format!(
            r#"
[[webhooks]]
id = "{id}"
events = ["bank.{id}.*"]
url = "{url}"
signing_secrets = ["{key}"]
body = '{{"id": {{{{json id}}}}}}'
[webhooks.headers]
Authorization = {{ secret = "rx", prefix = "Bearer " }}
[webhooks.retry]
max_attempts = 2
initial_delay = "200ms"
max_delay = "200ms"
jitter = 0.0
"#
        )
    };
    std::fs::write(
        dir.join("webhooks.toml"),
        format!(
            "[secrets]\nrx = {{ env = \"HERALD_TEST_RX_TOKEN\" }}\nsign = {{ env = \"HERALD_TEST_WHSEC\" }}\nbad = {{ env = \"HERALD_TEST_BAD_WHSEC\" }}\n{}{}{}",
            hook("ok", ok.url("/ok")),
            hook("down", down.url("/down")),
            hook("broken", ok.url("/broken"))
        ),
    )
    .unwrap();
    let (mut child, addr, log) = spawn(&dir);
    let api = format!("http://{addr}");
    let http = HttpSender::new(SenderConfig {
        ssrf: SsrfGuard::from_allow_list(&["127.0.0.0/8"]).unwrap(),
        max_response_excerpt: 1 << 20,
        ..SenderConfig::default()
    });
    let auth = vec![
        ("authorization".to_owned(), format!("Bearer {API_TOKEN}")),
        ("content-type".to_owned(), "application/json".to_owned()),
    ];
    let mut answers = Vec::new();
    let mut call = async |method: &str, path: &str, body: Value| {
        let body = if body.is_null() {
            Bytes::new()
        } else {
            Bytes::from(body.to_string())
        };
        let r = http
            .send(
                method,
                &format!("{api}{path}"),
                &auth,
                body,
                Duration::from_secs(10),
            )
            .await;
        let text = r.response_excerpt.clone().unwrap_or_default();
        answers.push(text.clone());
        (r.http_status, text)
    };

    // A wrong or missing token gets nothing, and says nothing.
    let no_token = http
        .send(
            "GET",
            &format!("{api}/v1/notifications?webhook=ok"),
            &[],
            Bytes::new(),
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(no_token.http_status, Some(401));
    let events: Vec<Value> = ["ok", "down", "broken"]
        .iter()
        .map(|w| json!({"specversion": "1.0", "id": format!("{w}-1"), "source": "/core", "type": format!("bank.{w}.posted")}))
        .collect();
    let (status, accepted) = call("POST", "/v1/events", json!(events)).await;
    assert_eq!(status, Some(202), "{accepted}");
    let got = ok.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(
        got[0].header("authorization"),
        Some(format!("Bearer {RX_TOKEN}").as_str()),
        "the receiver gets the secret header"
    );
    signing::verify(
        &[signing_key()],
        got[0].header("webhook-id").unwrap(),
        got[0].header("webhook-timestamp").unwrap(),
        got[0].header("webhook-signature").unwrap(),
        &got[0].body,
        chrono::Utc::now(),
        Duration::from_secs(300),
    )
    .expect("signed with the key");
    // The detector sees a secret where there is one.
    assert_eq!(
        leaked(format!("{:?}", got[0].headers).as_bytes()),
        [RX_TOKEN.to_owned()]
    );
    // The failing webhook exhausts its two attempts; then an operator
    // re-sends it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let down_id = loop {
        assert!(
            Instant::now() < deadline,
            "the failing webhook never exhausted"
        );
        let (_, page) = call(
            "GET",
            "/v1/notifications?webhook=down&status=failed",
            Value::Null,
        )
        .await;
        let page: Value = serde_json::from_str(&page).unwrap();
        if let Some(id) = page["items"][0]["notification"]["id"].as_str() {
            break id.to_owned();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (status, _) = call(
        "POST",
        &format!("/v1/notifications/{down_id}/resend"),
        json!({"reason": "test"}),
    )
    .await;
    assert_eq!(status, Some(202));
    down.wait_for(3, Duration::from_secs(30)).await;
    // The malformed key's attempt is refused before sending, and recorded.
    let deadline = Instant::now() + Duration::from_secs(30);
    let broken = loop {
        assert!(
            Instant::now() < deadline,
            "the broken webhook's attempt was never recorded"
        );
        let (_, page) = call("GET", "/v1/notifications?webhook=broken", Value::Null).await;
        let page: Value = serde_json::from_str(&page).unwrap();
        let id = page["items"][0]["notification"]["id"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        if !id.is_empty() {
            let (_, record) = call("GET", &format!("/v1/notifications/{id}"), Value::Null).await;
            let record: Value = serde_json::from_str(&record).unwrap();
            if let Some(error) = record["attempts"][0]["error"].as_str() {
                break error.to_owned();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(broken.contains("invalid signing secret"), "{broken}");
    assert!(
        ok.received().iter().all(|r| r.path != "/broken"),
        "nothing is sent with a malformed key"
    );
    for path in [
        format!("/v1/notifications/{down_id}"),
        "/v1/notifications?webhook=ok".to_owned(),
        "/v1/circuits".to_owned(),
        "/metrics".to_owned(),
    ] {
        let (status, _) = call("GET", &path, Value::Null).await;
        assert_eq!(status, Some(200), "{path}");
    }
    child.kill().unwrap();
    child.wait().unwrap();

    for (i, answer) in answers.iter().enumerate() {
        assert!(
            leaked(answer.as_bytes()).is_empty(),
            "API answer {i} leaks {:?}: {answer}",
            leaked(answer.as_bytes())
        );
    }
    let log: Vec<String> = log.try_iter().collect();
    assert!(log.len() > 10, "the debug log was captured: {log:?}");
    let log = log.join("\n");
    assert!(
        leaked(log.as_bytes()).is_empty(),
        "the log leaks {:?}",
        leaked(log.as_bytes())
    );
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("herald.db"))
        {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                leaked(&bytes).is_empty(),
                "{} leaks {:?}",
                path.display(),
                leaked(&bytes)
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
