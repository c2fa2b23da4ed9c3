//! The `store` scenario: sustained writes of each store adapter, without
//! HTTP or Kafka in the way. Writers append batches of fresh notifications
//! and then one attempt for each (what a delivered notification costs the
//! store), concurrently, for the phase.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use herald_core::{Attempt, CloudEvent, Outcome, Trigger, Webhooks};
use herald_store::cql::{CqlConfig, CqlStore, Replication, connect_session, migrate};
use herald_store::sqlite::{SqliteConfig, SqliteStore};
use herald_store::{NotificationStore, StoreLimits};
use uuid::Uuid;

use crate::Opts;
use crate::pipeline::event;

/// Notifications per append, as ingest batches them.
pub(crate) const BATCH: usize = 100;
/// Concurrent writers.
const WRITERS: usize = 16;

pub struct Figures {
    pub adapter: &'static str,
    pub notifications_per_s: f64,
    pub attempts_per_s: f64,
}

pub async fn run(opts: &Opts) -> anyhow::Result<Vec<Figures>> {
    let mut out = Vec::new();
    let dir = std::env::temp_dir().join(format!("herald-bench-store-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let sqlite = SqliteStore::open(
        SqliteConfig::new(dir.join("herald.db")),
        StoreLimits::default(),
    )
    .await?;
    out.push(measure("sqlite", Arc::new(sqlite), opts.phase()).await?);
    let _ = std::fs::remove_dir_all(&dir);

    let keyspace = Keyspace::create("bench_store").await?;
    let cql = CqlStore::connect(&keyspace.config, StoreLimits::default()).await?;
    out.push(measure("cql (cassandra)", Arc::new(cql), opts.phase()).await?);
    keyspace.drop().await?;
    Ok(out)
}

/// A fresh, migrated keyspace on the `scripts/infra` Cassandra, named after
/// the scenario and this process.
pub(crate) struct Keyspace {
    pub config: CqlConfig,
    session: scylla::client::session::Session,
}

impl Keyspace {
    pub async fn create(scenario: &str) -> anyhow::Result<Self> {
        let name = format!("{scenario}_{}", std::process::id());
        let config = CqlConfig::new(vec!["127.0.0.1:9042".into()], name.clone());
        let session = connect_session(&config).await?;
        let replication = Replication::Simple {
            replication_factor: 1,
        };
        migrate(&session, &name, &replication).await?;
        Ok(Self { config, session })
    }

    pub async fn drop(self) -> anyhow::Result<()> {
        let name = &self.config.keyspace;
        self.session
            .query_unpaged(format!("DROP KEYSPACE IF EXISTS {name}"), &[])
            .await?;
        Ok(())
    }
}

/// The webhook every bench write is for.
pub(crate) const WEBHOOK: &str = "[[webhooks]]\nid = \"bench\"\nevents = [\"bank.*\"]\nurl = \"https://receiver.example/hook\"\nbody = '{\"id\": {{json id}}, \"amount\": \"{{money data.amount_minor data.currency}}\"}'\n";

pub(crate) fn webhooks(toml: &str) -> anyhow::Result<Webhooks> {
    Webhooks::from_toml(toml).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Appends [`BATCH`] fresh notifications (events `{prefix}-{i}`), then one
/// attempt for each, answered 2xx where `delivered(i)` and exhausting its
/// retries otherwise: what a settled notification costs the store. Returns
/// how many notifications it wrote.
pub(crate) async fn write_batch(
    store: &dyn NotificationStore,
    webhooks: &Webhooks,
    prefix: &str,
    delivered: impl Fn(u64) -> bool,
) -> anyhow::Result<usize> {
    let now = Utc::now();
    let batch: Vec<_> = (0..BATCH as u64)
        .flat_map(|i| {
            let e =
                CloudEvent::from_value(event(&format!("{prefix}-{i}"), i)).expect("bench event");
            webhooks.notifications(&e, now)
        })
        .collect();
    store.append_notifications(&batch).await?;
    let attempts: Vec<Attempt> = batch
        .iter()
        .zip(0u64..)
        .map(|(n, i)| {
            let ok = delivered(i);
            Attempt {
                notification_id: n.id,
                attempt_id: Uuid::now_v7(),
                attempt_no: 1,
                trigger: Trigger::Auto,
                started_at: now,
                duration_ms: 3,
                outcome: if ok {
                    Outcome::Success
                } else {
                    Outcome::HttpError
                },
                http_status: Some(if ok { 200 } else { 500 }),
                error: (!ok).then(|| "http 500".into()),
                response_excerpt: Some("ok".into()),
                next_attempt_at: None,
            }
        })
        .collect();
    store.append_attempts(&attempts).await?;
    Ok(batch.len())
}

async fn measure(
    adapter: &'static str,
    store: Arc<dyn NotificationStore>,
    phase: Duration,
) -> anyhow::Result<Figures> {
    let webhooks = Arc::new(webhooks(WEBHOOK)?);
    let (notifications, attempts) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let deadline = Instant::now() + phase;
    let started = Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (store, webhooks) = (store.clone(), webhooks.clone());
            let (notifications, attempts) = (notifications.clone(), attempts.clone());
            tokio::spawn(async move {
                for round in 0u64.. {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let prefix = format!("{adapter}-{w}-{round}");
                    let n = write_batch(store.as_ref(), &webhooks, &prefix, |_| true).await?;
                    notifications.fetch_add(n as u64, Ordering::Relaxed);
                    attempts.fetch_add(n as u64, Ordering::Relaxed);
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for w in writers {
        w.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(Figures {
        adapter,
        notifications_per_s: notifications.load(Ordering::Relaxed) as f64 / elapsed,
        attempts_per_s: attempts.load(Ordering::Relaxed) as f64 / elapsed,
    })
}
