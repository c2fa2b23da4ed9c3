//! `POST /v1/events` takes every CloudEvents HTTP content mode as the
//! official CloudEvents Python SDK (`cloudevents` on PyPI, pinned in the
//! bootstrap venv) writes it: binary mode (its default: `ce-*` headers,
//! percent-encoded, the data as the body), structured mode, and a batch. A
//! standalone Herald on loopback stores each event's attributes and sends
//! the rendered data.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald::standalone::{self, StandaloneConfig};
use herald_core::{SecretRef, Webhooks};
use herald_delivery::{HttpSender, SenderConfig, SsrfGuard};
use herald_store::NotificationStore;
use herald_tests::{TestReceiver, python, run_python};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "ce-test-token";

/// Reads events on stdin; answers, per event, the HTTP request the SDK
/// makes of it in binary and in structured mode, and one batch request of
/// all of them.
const SCRIPT: &str = r#"
import base64, json, sys
from cloudevents.core.v1.event import CloudEvent
from cloudevents.core.bindings import http
from cloudevents.core.formats.json import JSONFormat
def msg(m):
    return {"headers": dict(m.headers), "body_b64": base64.b64encode(m.body).decode()}
out = {"binary": [], "structured": []}
events = []
for e in json.load(sys.stdin):
    ev = CloudEvent(e["attributes"], e.get("data"))
    events.append(ev)
    out["binary"].append(msg(http.to_binary_event(ev)))
    out["structured"].append(msg(http.to_structured_event(ev)))
batch = b"[" + b",".join(JSONFormat().write(ev) for ev in events) + b"]"
out["batch"] = {"headers": {"content-type": "application/cloudevents-batch+json"},
                "body_b64": base64.b64encode(batch).decode()}
print(json.dumps(out))
"#;

fn b64decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64 from python")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_content_mode_of_the_python_sdk_is_accepted() {
    let Some(py) = python("cloudevents_http", "cloudevents.core", "cloudevents") else {
        return;
    };
    let rx = TestReceiver::start().await;
    let defs = format!(
        "[[webhooks]]\nid = \"loans\"\nevents = [\"bank.loan.*\"]\nurl = \"{}\"\nbody = '{{\"id\": {{{{json id}}}}, \"subject\": {{{{json subject}}}}, \"amount\": {{{{json data.amount}}}}, \"tenant\": {{{{json tenant}}}}}}'\n",
        rx.url("/loans")
    );
    let dir = std::env::temp_dir().join(herald_tests::unique_name("herald_ce_http"));
    let shutdown = CancellationToken::new();
    let running = standalone::start(
        StandaloneConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            database: dir.join("herald.db"),
            api_tokens: vec![TOKEN.into()],
            ssrf_allow: vec!["127.0.0.0/8".into()],
            ..StandaloneConfig::default()
        },
        Webhooks::from_toml(&defs).unwrap(),
        Arc::new(HashMap::<SecretRef, String>::new()),
        shutdown.clone(),
    )
    .await
    .expect("start");

    // One event per mode, each with a subject that needs percent-encoding
    // in binary mode and an extension attribute.
    let events: Vec<Value> = (0..3)
        .map(|i| {
            json!({"attributes": {"specversion": "1.0", "id": format!("sdk-{i}"), "source": "/core/loans",
                    "type": "bank.loan.disbursed", "subject": format!("LN %{i} é"), "tenant": "acme",
                    "datacontenttype": "application/json"},
                   "data": {"amount": 100 + i}})
        })
        .collect();
    let made = run_python(&py, SCRIPT, &Value::from(events.clone()));
    let requests = [
        ("binary", &made["binary"][0], 1),
        ("structured", &made["structured"][1], 1),
        ("batch", &made["batch"], 3),
    ];
    let http = HttpSender::new(SenderConfig {
        ssrf: SsrfGuard::from_allow_list(&["127.0.0.0/8"]).unwrap(),
        ..SenderConfig::default()
    });
    let url = format!("http://{}/v1/events", running.addr);
    let mut ids = Vec::new();
    for (mode, request, count) in requests {
        let mut headers: Vec<(String, String)> = request["headers"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect();
        headers.push(("authorization".into(), format!("Bearer {TOKEN}")));
        let body = Bytes::from(b64decode(request["body_b64"].as_str().unwrap()));
        let r = http
            .send("POST", &url, &headers, body, Duration::from_secs(10))
            .await;
        assert_eq!(r.http_status, Some(202), "{mode}: {r:?}");
        let answer: Value = serde_json::from_str(r.response_excerpt.as_deref().unwrap()).unwrap();
        assert_eq!(answer["accepted"], count, "{mode}: {answer}");
        for id in answer["notifications"].as_array().unwrap() {
            ids.push((mode, id.as_str().unwrap().parse().unwrap()));
        }
    }
    // Binary: event 0; structured: event 1; the batch: all three again
    // (known by then, so nothing new for 0 and 1).
    let got = rx.wait_for(3, Duration::from_secs(30)).await;
    let mut bodies: Vec<Value> = got
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    bodies.sort_by_key(|b| b["id"].as_str().unwrap().to_owned());
    for (i, body) in bodies.iter().enumerate() {
        assert_eq!(
            *body,
            json!({"id": format!("sdk-{i}"), "subject": format!("LN %{i} é"), "amount": 100 + i, "tenant": "acme"}),
            "what the receiver got for event {i}"
        );
    }
    for (mode, id) in &ids {
        let record = running.engine.store().get(*id).await.unwrap().unwrap();
        assert_eq!(record.notification.event_source, "/core/loans", "{mode}");
        assert!(
            record
                .notification
                .subject
                .as_deref()
                .unwrap()
                .starts_with("LN %"),
            "{mode}"
        );
    }
    assert_eq!(rx.received().len(), 3, "each event delivered once");
    shutdown.cancel();
    running.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
}
