//! The end-to-end scenarios (`standalone`, `kafka`): events in, webhooks out
//! at the receiver. Phase 1 drives Herald as fast as it sustains (a bounded
//! backlog, so the figure is a steady state, not a burst into a queue);
//! phase 2 drives it at half that rate, the submitters taking evenly spaced
//! turns, and measures latency from the event
//! being accepted (standalone: the `202`; Kafka: the produce acknowledged)
//! to the webhook arriving.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::Opts;
use crate::measure::{Percentiles, Receiver, busy_jiffies, infra_pids, process_cpu_ms};
use crate::pipeline::{Pipeline, event};

/// Events per submission (one POST, or one round of produces) unless
/// `--batch N` says otherwise.
pub const BATCH: usize = 100;
/// Concurrent submitters at the default batch size. Smaller batches get
/// more (the same events in flight), up to [`MAX_SUBMITTERS`]: many
/// adapters posting one event each, as core-banking adapters often do.
const SUBMITTERS: usize = 8;
const MAX_SUBMITTERS: usize = 64;
/// Accepted but not yet delivered events allowed before submitters wait.
const MAX_BACKLOG: u64 = 5_000;

pub struct Figures {
    pub rate: f64,
    pub cpu_ms_per_delivery: f64,
    /// CPU-ms per delivery of each process involved: Herald's, the bench
    /// itself (load generator and receiver), and Kafka and Cassandra.
    pub cpu_by_process: Vec<(String, f64)>,
    pub half_rate: f64,
    pub latency: Percentiles,
    pub rss: Vec<(&'static str, f64)>,
    pub lag: Option<i64>,
    /// Kafka mode: CQL requests per delivered notification, by service,
    /// over the whole run (`herald_store_requests_total`).
    pub cql_requests: Vec<(&'static str, f64)>,
}

/// Accepted-at instants by event id.
pub type Accepted = Mutex<HashMap<String, Instant>>;

/// Submit events for a phase, `opts.batch` per submission, at most `rate`
/// events/s when given, keeping at most [`MAX_BACKLOG`] undelivered. Every
/// event id starts with `tag`.
pub async fn drive(
    p: &Pipeline,
    rx: &Receiver,
    submitted: &AtomicU64,
    accepted: &Accepted,
    opts: &Opts,
    rate: Option<f64>,
    tag: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + opts.phase();
    let batch = opts.batch.max(1);
    let submitters = (SUBMITTERS * BATCH / batch).clamp(SUBMITTERS, MAX_SUBMITTERS);
    let interval = rate.map(|r| Duration::from_secs_f64((batch * submitters) as f64 / r));
    let start = tokio::time::Instant::now();
    let spread = submitters as u32;
    let submitters = (0..submitters).map(|s| async move {
        // Submitters take turns, evenly spaced, so a rate is a steady
        // stream of submissions rather than all of them in one burst.
        let mut ticker =
            interval.map(|i| tokio::time::interval_at(start + i * s as u32 / spread, i));
        for round in 0u64.. {
            if let Some(t) = ticker.as_mut() {
                t.tick().await;
            }
            while submitted.load(Ordering::Relaxed) > rx.count.load(Ordering::Relaxed) + MAX_BACKLOG
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            if Instant::now() >= deadline {
                break;
            }
            // Ids end in the submitter's sequence number: `..0` marks one
            // in ten (retry scenario), whatever the batch size.
            let seqs = (0..batch as u64).map(|i| round * batch as u64 + i);
            let ids: Vec<String> = seqs.clone().map(|n| format!("{tag}-{s}-{n}")).collect();
            let events: Vec<_> = ids.iter().zip(seqs).map(|(id, n)| event(id, n)).collect();
            p.submit(&events).await?;
            submitted.fetch_add(batch as u64, Ordering::Relaxed);
            let now = Instant::now();
            let mut a = accepted.lock().unwrap();
            for id in ids {
                a.insert(id, now);
            }
        }
        anyhow::Ok(())
    });
    futures::future::try_join_all(submitters).await?;
    Ok(())
}

/// Submit one batch and wait until it arrives: connections are open and, in
/// Kafka mode, both consumer groups have their partitions.
pub async fn warm_up(p: &Pipeline, rx: &Receiver, submitted: &AtomicU64) -> anyhow::Result<()> {
    let ids: Vec<String> = (0..BATCH).map(|i| format!("warm-{i}1")).collect();
    let events: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| event(id, i as u64))
        .collect();
    p.submit(&events).await?;
    submitted.fetch_add(BATCH as u64, Ordering::Relaxed);
    let want: HashMap<String, Instant> = ids.into_iter().map(|id| (id, Instant::now())).collect();
    if rx.wait_arrived(&want, Duration::from_secs(90)).await < want.len() {
        bail!("{}: the warm-up batch never arrived", p.name);
    }
    Ok(())
}

pub async fn run(p: &Pipeline, rx: &Receiver, opts: &Opts) -> anyhow::Result<Figures> {
    let submitted = AtomicU64::new(0);
    warm_up(p, rx, &submitted).await?;

    // Phase 1: sustained rate.
    let ignored = Accepted::default();
    let mut processes: Vec<(String, u32)> = p
        .pids()
        .into_iter()
        .map(|(r, pid)| (r.to_owned(), pid))
        .collect();
    processes.push(("bench (load + receiver)".into(), std::process::id()));
    if p.name == "kafka" {
        processes.extend(infra_pids());
    }
    let cpu_before: Vec<f64> = processes
        .iter()
        .map(|(_, pid)| process_cpu_ms(*pid).unwrap_or(f64::NAN))
        .collect();
    let before = (busy_jiffies(), rx.count.load(Ordering::Relaxed));
    let started = Instant::now();
    drive(p, rx, &submitted, &ignored, opts, None, "s").await?;
    let elapsed = started.elapsed().as_secs_f64();
    let delivered = rx.count.load(Ordering::Relaxed) - before.1;
    let busy_ms = (busy_jiffies() - before.0) as f64 * 10.0;
    let rate = delivered as f64 / elapsed;
    let cpu_ms_per_delivery = busy_ms / delivered.max(1) as f64;
    let cpu_by_process = processes
        .iter()
        .zip(cpu_before)
        .map(|((name, pid), before)| {
            let used = process_cpu_ms(*pid).unwrap_or(f64::NAN) - before;
            (name.clone(), used / delivered.max(1) as f64)
        })
        .collect();

    // Drain the backlog before measuring latency.
    let drain = Instant::now() + Duration::from_secs(180);
    while rx.count.load(Ordering::Relaxed) < submitted.load(Ordering::Relaxed) {
        if Instant::now() > drain {
            bail!("{}: backlog did not drain in 180 s", p.name);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Phase 2: half the sustained rate, for latency.
    let half_rate = (rate / 2.0).max(100.0);
    let accepted = Accepted::default();
    drive(p, rx, &submitted, &accepted, opts, Some(half_rate), "l").await?;
    let accepted = accepted.into_inner().unwrap();
    let arrived = rx.wait_arrived(&accepted, Duration::from_secs(60)).await;
    if arrived < accepted.len() {
        bail!(
            "{}: {} of {} latency events never arrived",
            p.name,
            accepted.len() - arrived,
            accepted.len()
        );
    }
    let lag = p.consumer_lag();
    let sample: Vec<f64> = {
        let a = rx.arrivals.lock().unwrap();
        accepted
            .iter()
            .filter_map(|(id, t)| {
                a.get(id)
                    .map(|r| r.saturating_duration_since(*t).as_secs_f64() * 1000.0)
            })
            .collect()
    };
    let Some(latency) = Percentiles::of(sample) else {
        bail!("{}: no latency sample", p.name);
    };
    // Every notification of the run was delivered once (no failures): the
    // requests of the whole run per delivery.
    let total = rx.count.load(Ordering::Relaxed).max(1) as f64;
    let mut cql_requests = Vec::new();
    for (role, addr) in &p.ops {
        let metrics = crate::measure::scrape(addr, "/metrics").await?;
        let sent = herald_tests::kafka_world::metric_sum(&metrics, "herald_store_requests_total");
        cql_requests.push((*role, sent as f64 / total));
    }
    Ok(Figures {
        rate,
        cpu_ms_per_delivery,
        cpu_by_process,
        half_rate,
        latency,
        rss: p.peak_rss_mb(),
        lag,
        cql_requests,
    })
}
