//! The `retry` scenario: the receiver answers 503 to the first request of
//! one event in ten; Herald retries it about a second later. For every retry
//! the lateness is its arrival at the receiver minus the due time Herald
//! recorded with the failed attempt (`next_attempt_at`, read back through the
//! notification API). An early arrival (negative lateness) is a bug; the
//! scenario counts them.

use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::e2e::{Accepted, drive, warm_up};
use crate::measure::{Percentiles, Receiver, client};
use crate::pipeline::Pipeline;
use crate::{Opts, TOKEN};

/// Events per second while the scenario runs: a steady moderate load, so
/// retries compete with first attempts.
const RATE: f64 = 400.0;
/// `--mixed`: notifications for the hostile neighbour, submitted first.
const HOSTILE: u64 = 300;

pub struct Figures {
    pub events: usize,
    pub retries: usize,
    pub early: usize,
    pub lateness_ms: Percentiles,
}

pub async fn run(p: &Pipeline, rx: &Receiver, opts: &Opts) -> anyhow::Result<Figures> {
    let submitted = AtomicU64::new(0);
    warm_up(p, rx, &submitted).await?;
    if opts.mixed {
        // The neighbour's notifications first: their retries, due 90 s
        // later, are at the heads of the tier partitions when the bench
        // webhook's retries arrive behind them.
        let hostile: Vec<Value> = (0..HOSTILE)
            .map(|i| {
                let mut e = crate::pipeline::event(&format!("hostile-{i}"), i);
                e["type"] = "bank.hostile.posted".into();
                e
            })
            .collect();
        p.submit(&hostile).await?;
    }
    let accepted = Accepted::default();
    drive(p, rx, &submitted, &accepted, opts, Some(RATE), "r").await?;
    let accepted = accepted.into_inner().unwrap();
    // Every event arrives in the end: first time, or at its retry.
    // Generous: before the cascade, a mixed run's retries waited behind the
    // neighbour's 90 s heads.
    let arrived = rx.wait_arrived(&accepted, Duration::from_secs(180)).await;
    if arrived < accepted.len() {
        bail!(
            "{}: {} of {} events never arrived",
            p.name,
            accepted.len() - arrived,
            accepted.len()
        );
    }
    let retries: Vec<(String, SystemTime)> = rx.retries.lock().unwrap().clone();
    let failed = rx.failed.lock().unwrap().len();
    if retries.len() < failed {
        bail!(
            "{}: {failed} first attempts failed but only {} retries arrived",
            p.name,
            retries.len()
        );
    }
    let http = client();
    let headers = [("authorization".to_owned(), format!("Bearer {TOKEN}"))];
    let mut lateness = Vec::with_capacity(retries.len());
    for (webhook_id, arrival) in &retries {
        let due = due_of_retry(&http, &headers, &p.api, webhook_id).await?;
        let arrival: DateTime<Utc> = (*arrival).into();
        lateness.push((arrival - due).num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0);
    }
    let early = lateness.iter().filter(|l| **l < 0.0).count();
    Ok(Figures {
        events: accepted.len(),
        retries: retries.len(),
        early,
        lateness_ms: Percentiles::of(lateness).context("no retry happened")?,
    })
}

/// The due time recorded with attempt 1 of a notification.
async fn due_of_retry(
    http: &herald_delivery::HttpSender,
    headers: &[(String, String)],
    api: &str,
    id: &str,
) -> anyhow::Result<DateTime<Utc>> {
    let url = format!("{api}/v1/notifications/{id}");
    let r = http
        .send("GET", &url, headers, Bytes::new(), Duration::from_secs(10))
        .await;
    let body: Value = serde_json::from_str(r.response_excerpt.as_deref().unwrap_or(""))
        .with_context(|| format!("GET {url}: {r:?}"))?;
    let first = body["attempts"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["attempt_no"] == 1))
        .with_context(|| format!("{id}: no attempt 1 on record: {body}"))?;
    let due = first["next_attempt_at"]
        .as_str()
        .with_context(|| format!("{id}: attempt 1 has no due time: {first}"))?;
    Ok(DateTime::parse_from_rfc3339(due)?.with_timezone(&Utc))
}
