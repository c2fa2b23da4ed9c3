//! The operator's commands: communication history and re-sends through the
//! HTTP API (the same in standalone and Kafka mode), CQL migration, and topic
//! creation.

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use herald_delivery::{HttpSender, SenderConfig, SsrfGuard};
use serde_json::{Value, json};

/// A client of Herald's own API. The SSRF guard is off: the operator points
/// it at their own deployment, usually on loopback.
pub struct ApiClient {
    base: String,
    token: String,
    http: HttpSender,
}

impl ApiClient {
    pub fn new(base: &str, token: &str) -> Self {
        let http = HttpSender::new(SenderConfig {
            ssrf: SsrfGuard::disabled(),
            max_response_excerpt: 16 << 20,
            ..SenderConfig::default()
        });
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            http,
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let headers = vec![
            ("authorization".to_owned(), format!("Bearer {}", self.token)),
            ("content-type".to_owned(), "application/json".to_owned()),
        ];
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let url = format!("{}{path}", self.base);
        let r = self
            .http
            .send(method, &url, &headers, body, Duration::from_secs(30))
            .await;
        let Some(status) = r.http_status else {
            bail!("{method} {url}: {}", r.error.unwrap_or_default());
        };
        let value: Value = serde_json::from_str(r.response_excerpt.as_deref().unwrap_or("null"))
            .unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            let msg = value["error"]["message"]
                .as_str()
                .unwrap_or("no error message");
            bail!("{method} {path}: http {status}: {msg}");
        }
        Ok(value)
    }
}

/// Filters of `herald history` and bulk `herald resend`.
pub struct Filter<'a> {
    pub webhook: &'a str,
    pub status: Option<&'a str>,
    pub since: Option<&'a str>,
    pub until: Option<&'a str>,
}

impl Filter<'_> {
    fn query(&self) -> String {
        let enc = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        let mut q = format!("webhook={}", enc(self.webhook));
        for (k, v) in [
            ("status", self.status),
            ("from", self.since),
            ("to", self.until),
        ] {
            if let Some(v) = v {
                q.push_str(&format!("&{k}={}", enc(v)));
            }
        }
        q
    }
}

/// Print the history of one webhook, newest first, every page.
pub async fn history(api: &ApiClient, filter: &Filter<'_>, as_json: bool) -> anyhow::Result<()> {
    let mut cursor: Option<String> = None;
    if !as_json {
        println!(
            "{:<24} {:<36} {:<28} {:<13} {:>8}  next attempt",
            "created", "notification", "event type", "status", "attempts"
        );
    }
    loop {
        let mut path = format!("/v1/notifications?{}&limit=500", filter.query());
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = api.call("GET", &path, None).await?;
        for item in page["items"].as_array().context("a page has items")? {
            if as_json {
                println!("{item}");
                continue;
            }
            let n = &item["notification"];
            let s = &item["state"];
            println!(
                "{:<24} {:<36} {:<28} {:<13} {:>8}  {}",
                n["created_at"].as_str().unwrap_or(""),
                n["id"].as_str().unwrap_or(""),
                n["event_type"].as_str().unwrap_or(""),
                s["status"].as_str().unwrap_or(""),
                s["attempts"],
                s["next_attempt_at"].as_str().unwrap_or("-"),
            );
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return Ok(()),
        }
    }
}

/// Print every circuit: webhook, state, since, until, who changed it and why.
pub async fn circuits(api: &ApiClient, as_json: bool) -> anyhow::Result<()> {
    let answer = api.call("GET", "/v1/circuits", None).await?;
    let items = answer["circuits"]
        .as_array()
        .context("an answer has circuits")?;
    if as_json {
        for c in items {
            println!("{c}");
        }
        return Ok(());
    }
    println!(
        "{:<24} {:<10} {:<32} {:<32} {:<24} reason",
        "webhook", "state", "since", "until", "changed by"
    );
    for c in items {
        println!(
            "{:<24} {:<10} {:<32} {:<32} {:<24} {}",
            c["webhook_id"].as_str().unwrap_or(""),
            c["state"].as_str().unwrap_or(""),
            c["since"].as_str().unwrap_or(""),
            c["until"].as_str().unwrap_or("-"),
            c["changed_by"].as_str().unwrap_or(""),
            c["reason"].as_str().unwrap_or(""),
        );
    }
    Ok(())
}

/// Force a webhook's circuit closed.
pub async fn close_circuit(api: &ApiClient, webhook: &str) -> anyhow::Result<()> {
    let enc = percent_encoding::utf8_percent_encode(webhook, percent_encoding::NON_ALPHANUMERIC);
    let answer = api
        .call("POST", &format!("/v1/circuits/{enc}/close"), None)
        .await?;
    println!(
        "circuit of {webhook} closed at {}",
        answer["change"]["since"].as_str().unwrap_or("?")
    );
    Ok(())
}

/// Re-send notifications by id; returns how many were queued.
pub async fn resend_ids(api: &ApiClient, ids: &[String]) -> anyhow::Result<u64> {
    for id in ids {
        api.call("POST", &format!("/v1/notifications/{id}/resend"), None)
            .await?;
    }
    Ok(ids.len() as u64)
}

/// Bulk re-send by filter (status defaults to failed); returns how many were queued.
pub async fn resend_bulk(api: &ApiClient, filter: &Filter<'_>) -> anyhow::Result<u64> {
    let mut body = json!({ "webhook": filter.webhook });
    for (k, v) in [
        ("status", filter.status),
        ("from", filter.since),
        ("to", filter.until),
    ] {
        if let Some(v) = v {
            body[k] = json!(v);
        }
    }
    let r = api
        .call("POST", "/v1/notifications/resend", Some(body))
        .await?;
    r["queued"]
        .as_u64()
        .context("the answer names how many were queued")
}
