//! `herald demo`: standalone Herald with the banking webhooks of
//! `deploy/demo/webhooks.toml`, a demo receiver on loopback that misbehaves
//! at first, a handful of realistic events, live progress, and the history
//! of what was sent. The newcomer's first five minutes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine as _;
use bytes::Bytes;
use chrono::Utc;
use herald_core::signing::{self, SigningSecret};
use herald_core::{Decision, SecretRef, Status, Webhooks};
use herald_delivery::{HttpSender, SenderConfig, SsrfGuard};
use herald_store::{ListQuery, NotificationStore, TimeRange};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::standalone::{self, StandaloneConfig};

const DEFINITIONS: &str = include_str!("../../../deploy/demo/webhooks.toml");

/// How the demo receiver behaves, per path prefix.
struct ReceiverState {
    secret: SigningSecret,
    /// Requests seen per notification id (`webhook-id`), for "fail at first".
    seen: Mutex<HashMap<String, u32>>,
    /// The KYC endpoint is down until the operator "fixes" it.
    kyc_up: AtomicBool,
    /// Requests whose signature verified.
    verified: AtomicU32,
}

pub async fn run(keep_running: bool) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("herald-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let key: [u8; 32] = rand::random();
    let whsec = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    );
    let receiver = Arc::new(ReceiverState {
        secret: SigningSecret::parse(&whsec)?,
        seen: Mutex::new(HashMap::new()),
        kyc_up: AtomicBool::new(false),
        verified: AtomicU32::new(0),
    });
    let rx_addr = start_receiver(receiver.clone()).await?;
    let definitions = DEFINITIONS.replace("@PORT@", &rx_addr.port().to_string());
    let webhooks =
        Webhooks::from_toml(&definitions).map_err(|e| anyhow::anyhow!("demo definitions: {e}"))?;
    let secrets: HashMap<SecretRef, String> = HashMap::from([
        (SecretRef::Env("HERALD_DEMO_WHSEC".into()), whsec.clone()),
        (
            SecretRef::Env("HERALD_DEMO_CRM_TOKEN".into()),
            "demo-crm-token".into(),
        ),
    ]);
    let token = format!("demo-{:x}", rand::random::<u64>());
    let config = StandaloneConfig {
        listen: "127.0.0.1:0".parse()?,
        database: dir.join("herald.db"),
        api_tokens: vec![token.clone()],
        // The demo receiver lives on loopback, which the SSRF guard refuses by default.
        ssrf_allow: vec!["127.0.0.0/8".into()],
        ..StandaloneConfig::default()
    };
    let shutdown = CancellationToken::new();
    let running = standalone::start(config, webhooks, Arc::new(secrets), shutdown.clone()).await?;
    let api = format!("http://{}", running.addr);

    println!(
        "Herald demo: standalone mode (SQLite at {}), API on {api}",
        dir.join("herald.db").display()
    );
    println!(
        "Demo receiver on http://{rx_addr}: the CRM answers 503 twice before accepting, KYC is down,"
    );
    println!(
        "the ledger and collections are healthy. Every request is signed (Standard Webhooks) and verified.\n"
    );

    let mut feed = running.engine.subscribe();
    let client = HttpSender::new(SenderConfig {
        ssrf: SsrfGuard::from_allow_list(&["127.0.0.0/8"]).map_err(anyhow::Error::msg)?,
        ..SenderConfig::default()
    });
    let auth = vec![
        ("authorization".to_owned(), format!("Bearer {token}")),
        ("content-type".to_owned(), "application/json".to_owned()),
    ];
    let events = demo_events();
    println!(
        "-> POST {api}/v1/events with {} core-banking events",
        events.len()
    );
    let sent = client
        .send(
            "POST",
            &format!("{api}/v1/events"),
            &auth,
            Bytes::from(json!(events).to_string()),
            Duration::from_secs(10),
        )
        .await;
    if sent.http_status != Some(202) {
        bail!("posting events failed: {sent:?}");
    }
    let expected = running.engine.webhooks().len(); // one notification per webhook in this data set
    println!("   202 Accepted: events are durable, {expected} notifications stored\n");

    let store = running.engine.store().clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut resent = false;
    loop {
        let (webhook_id, result) = tokio::select! {
            r = feed.recv() => r.context("attempt feed closed")?,
            _ = tokio::time::sleep_until(deadline) => bail!("demo did not settle within 60s"),
        };
        let a = &result.attempt;
        let status = a
            .http_status
            .map_or_else(|| a.outcome.to_string(), |s| s.to_string());
        let next = match &result.decision {
            Decision::Delivered => "delivered".to_owned(),
            Decision::Retry { delay, .. } => format!("retry in {:.1}s", delay.as_secs_f64()),
            Decision::Exhausted { reason } => format!("failed: {reason}"),
        };
        println!(
            "   {} {:<30} attempt {} ({:<6}) -> {:<4} {}",
            a.started_at.format("%H:%M:%S%.3f"),
            webhook_id,
            a.attempt_no,
            a.trigger,
            status,
            next
        );
        let settled = settled(store.as_ref(), running.engine.webhooks()).await?;
        if settled.failed_kyc && !resent {
            resent = true;
            receiver.kyc_up.store(true, Ordering::SeqCst);
            let failed = settled
                .failed_ids
                .first()
                .cloned()
                .context("a failed notification")?;
            println!(
                "\n-> KYC is back. Operator re-sends the stored request: POST {api}/v1/notifications/{failed}/resend"
            );
            let r = client
                .send(
                    "POST",
                    &format!("{api}/v1/notifications/{failed}/resend"),
                    &auth,
                    Bytes::new(),
                    Duration::from_secs(10),
                )
                .await;
            println!(
                "   {} {}\n",
                r.http_status.unwrap_or(0),
                if r.http_status == Some(202) {
                    "queued"
                } else {
                    "refused"
                }
            );
        }
        if a.trigger == herald_core::Trigger::Manual && settled.all_final {
            break;
        }
    }

    println!("\nCommunication history (from the store):");
    println!(
        "{:<30} {:<36} {:<13} {:>8}  last error",
        "webhook", "notification", "status", "attempts"
    );
    for w in running.engine.webhooks().iter() {
        let range = TimeRange::new(
            Utc::now() - chrono::Duration::hours(1),
            Utc::now() + chrono::Duration::hours(1),
        );
        let page = store
            .list(&ListQuery::new(w.id.clone(), range, 100))
            .await?;
        for item in page.items {
            let record = store
                .get(item.notification.id)
                .await?
                .context("listed notification")?;
            let last_error = match (&item.notification.content, record.state.status) {
                (herald_core::NotificationContent::RenderFailed { error }, _) => error.clone(),
                (_, Status::Delivered) => String::new(),
                _ => record
                    .attempts
                    .iter()
                    .rev()
                    .find_map(|a| a.error.clone())
                    .unwrap_or_default(),
            };
            println!(
                "{:<30} {:<36} {:<13} {:>8}  {}",
                w.id,
                item.notification.id,
                record.state.status,
                record.attempts.len(),
                last_error.chars().take(60).collect::<String>()
            );
        }
    }
    let received = receiver.seen.lock().unwrap().values().sum::<u32>();
    let verified = receiver.verified.load(Ordering::SeqCst);
    println!(
        "\nThe receiver got {received} requests; {verified} carried a valid Standard Webhooks signature."
    );
    println!(
        "Notification ids are deterministic (event source + id + webhook): receivers deduplicate on webhook-id."
    );
    println!(
        "Try the API while it runs with --keep-running: curl -H 'Authorization: Bearer {token}' {api}/v1/notifications?webhook=crm-loan-disbursed"
    );
    println!("or the console in a browser: {api}/console (token {token})");

    if keep_running {
        println!("\nKeeping Herald running; Ctrl-C to stop.");
        tokio::signal::ctrl_c().await?;
    }
    shutdown.cancel();
    running.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

struct Settled {
    all_final: bool,
    failed_kyc: bool,
    failed_ids: Vec<herald_core::NotificationId>,
}

/// Whether every notification reached a final state (delivered, failed or
/// render_failed), and which KYC notifications failed.
async fn settled(store: &dyn NotificationStore, webhooks: &Webhooks) -> anyhow::Result<Settled> {
    let range = TimeRange::new(
        Utc::now() - chrono::Duration::hours(1),
        Utc::now() + chrono::Duration::hours(1),
    );
    let mut all_final = true;
    let mut failed_ids = Vec::new();
    for w in webhooks.iter() {
        let page = store
            .list(&ListQuery::new(w.id.clone(), range, 100))
            .await?;
        for item in page.items {
            match item.state.status {
                Status::Pending | Status::Retrying => all_final = false,
                Status::Failed if w.id == "kyc-client-created" => {
                    failed_ids.push(item.notification.id)
                }
                _ => {}
            }
        }
    }
    Ok(Settled {
        all_final,
        failed_kyc: !failed_ids.is_empty(),
        failed_ids,
    })
}

fn demo_events() -> Vec<serde_json::Value> {
    let now = Utc::now().to_rfc3339();
    vec![
        json!({"specversion": "1.0", "id": "evt-loan-0001", "source": "/corebanking/loans", "type": "bank.loan.disbursed",
               "subject": "LN-2026-000042", "time": now, "datacontenttype": "application/json",
               "data": {"amount_minor": 25_000_000, "currency": "EUR", "client": {"id": "CL-1001", "name": "Zoë O'Brien"}}}),
        json!({"specversion": "1.0", "id": "evt-dep-0001", "source": "/corebanking/deposits", "type": "bank.deposit.posted",
               "subject": "DE-ACC-7781", "time": now,
               "data": {"transaction_id": "TX-99812", "amount_minor": 125_050, "currency": "EUR"}}),
        json!({"specversion": "1.0", "id": "evt-cli-0001", "source": "/corebanking/clients", "type": "bank.client.created",
               "subject": "CL-1002", "time": now,
               "data": {"full_name": "Ana Müller", "country": "DE"}}),
        // No `due_minor`: strict templates refuse to guess, so this one is
        // recorded as render_failed instead of sending a wrong amount.
        json!({"specversion": "1.0", "id": "evt-ovd-0001", "source": "/corebanking/loans", "type": "bank.loan.repayment_overdue",
               "subject": "LN-2026-000007", "time": now,
               "data": {"days_overdue": 7, "currency": "EUR"}}),
    ]
}

async fn start_receiver(state: Arc<ReceiverState>) -> anyhow::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let state = state.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| receive(state.clone(), req));
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn receive(
    state: Arc<ReceiverState>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    let header = |n: &str| {
        parts
            .headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let id = header(signing::HEADER_ID);
    let verified = signing::verify(
        std::slice::from_ref(&state.secret),
        &id,
        &header(signing::HEADER_TIMESTAMP),
        &header(signing::HEADER_SIGNATURE),
        &body,
        Utc::now(),
        signing::DEFAULT_TOLERANCE,
    )
    .is_ok();
    if verified {
        state.verified.fetch_add(1, Ordering::SeqCst);
    }
    let n = {
        let mut seen = state.seen.lock().unwrap();
        let n = seen.entry(id).or_default();
        *n += 1;
        *n
    };
    let path = parts.uri.path();
    let status = if !verified {
        401
    } else if path.starts_with("/crm/") && n <= 2 {
        503
    } else if path.starts_with("/kyc/") && !state.kyc_up.load(Ordering::SeqCst) {
        500
    } else {
        200
    };
    let mut resp = Response::new(Full::new(Bytes::from(if status == 200 {
        "ok"
    } else {
        "try later"
    })));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).expect("valid status");
    Ok(resp)
}
