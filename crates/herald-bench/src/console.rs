//! The `console` scenario: how long the console's history page takes to
//! render in headless Chromium with 100,000 notifications in the store
//! (`--quick`: 10,000), in both modes, and how many API calls one page view
//! makes. The baseline of the same run is the same page for a webhook with
//! no notification, on the same server: the figure is what the stored
//! history adds.
//!
//! The store is filled through the store port (a tenth of the
//! notifications failed, the rest delivered, so nothing is owed), then the
//! API is started on it: standalone mode in-process on SQLite, and the
//! Kafka-mode API (`herald delivery`'s) on Cassandra. `console.py` loads
//! the page three times per webhook, alternating, each in a fresh browser
//! context, and reads the times the page records (`performance.now()` at
//! the table's render and at the counts').

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use herald::api::{ApiConfig, Definitions};
use herald::standalone::{self, StandaloneConfig};
use herald_core::SecretSource;
use herald_delivery::DeliveryConfig;
use herald_kafka::KafkaConfig;
use herald_store::cql::CqlStore;
use herald_store::sqlite::{SqliteConfig, SqliteStore};
use herald_store::{NotificationStore, StoreLimits};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::store::{BATCH, Keyspace, WEBHOOK, webhooks, write_batch};
use crate::{Opts, TOKEN};

const DRIVER: &str = include_str!("console.py");
/// The same-run baseline: a webhook with no notification.
const EMPTY: &str = "[[webhooks]]\nid = \"empty\"\nevents = [\"none.*\"]\nurl = \"https://receiver.example/empty\"\nbody = '{}'\n";

pub struct Figures {
    pub mode: &'static str,
    pub notifications: usize,
    /// Medians of 3 page loads, ms from navigation start.
    pub empty_ms: f64,
    pub full_ms: f64,
    pub full_spread_ms: f64,
    pub counts_ms: f64,
    pub api_calls: u64,
}

/// `None` when Python with Playwright or Chromium is missing (a loud skip,
/// as in the tests; `HERALD_REQUIRE_INFRA=1` makes it an error).
pub async fn run(opts: &Opts) -> anyhow::Result<Option<Vec<Figures>>> {
    let Some(py) = herald_tests::python("herald-bench console", "playwright", "playwright") else {
        return Ok(None);
    };
    let chromium = std::env::var("HERALD_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    anyhow::ensure!(
        std::path::Path::new(&chromium).exists(),
        "no Chromium at {chromium}: run scripts/lib/bootstrap"
    );
    let n = if opts.quick { 10_000 } else { 100_000 };
    let toml = format!("{WEBHOOK}{EMPTY}");
    let mut out = Vec::new();

    // Standalone: fill the SQLite file, close it, start Herald on it.
    let dir = std::env::temp_dir().join(format!("herald-bench-console-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let database = dir.join("herald.db");
    {
        let store = SqliteStore::open(SqliteConfig::new(&database), StoreLimits::default()).await?;
        fill(&store, &toml, n).await?;
    }
    let shutdown = CancellationToken::new();
    let config = StandaloneConfig {
        listen: "127.0.0.1:0".parse()?,
        database: database.clone(),
        api_tokens: vec![TOKEN.into()],
        ..StandaloneConfig::default()
    };
    let running = standalone::start(
        config,
        webhooks(&toml)?,
        Arc::new(HashMap::new()),
        shutdown.clone(),
    )
    .await?;
    let result = measure(&py, &chromium, &format!("http://{}", running.addr)).await;
    shutdown.cancel();
    running.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
    out.push(figures("standalone", n, result?));

    // Kafka mode: fill a fresh keyspace, serve the delivery API on it.
    let keyspace = Keyspace::create("bench_console").await?;
    let cql = keyspace.config.clone();
    fill(
        &CqlStore::connect(&cql, StoreLimits::default()).await?,
        &toml,
        n,
    )
    .await?;
    let delivery = DeliveryConfig {
        kafka: KafkaConfig {
            bootstrap_servers: "127.0.0.1:9092".into(),
            topic_prefix: format!("{}.", cql.keyspace),
            ..KafkaConfig::default()
        },
        cql,
        ..DeliveryConfig::default()
    };
    let api = ApiConfig {
        listen: "127.0.0.1:0".parse()?,
        tokens: vec![TOKEN.into()],
        ..Default::default()
    };
    let secrets: Arc<dyn SecretSource + Send + Sync> = Arc::new(HashMap::new());
    let definitions = Definitions {
        webhooks: Arc::new(webhooks(&toml)?),
        secrets,
    };
    let (shutdown, tracker) = (CancellationToken::new(), TaskTracker::new());
    let addr = herald::api::start_kafka(
        &api,
        &delivery,
        definitions,
        herald_delivery::Metrics::new(),
        shutdown.clone(),
        &tracker,
    )
    .await?
    .ok_or_else(|| anyhow::anyhow!("the API did not start"))?;
    let result = measure(&py, &chromium, &format!("http://{addr}")).await;
    shutdown.cancel();
    tracker.close();
    tracker.wait().await;
    keyspace.drop().await?;
    out.push(figures("kafka", n, result?));
    Ok(Some(out))
}

/// `n` notifications for webhook `bench`, one in ten failed.
async fn fill(store: &dyn NotificationStore, toml: &str, n: usize) -> anyhow::Result<()> {
    let webhooks = webhooks(toml)?;
    let writes = (0..n.div_ceil(BATCH)).map(|round| {
        let webhooks = &webhooks;
        async move {
            write_batch(store, webhooks, &format!("console-{round}"), |i| {
                i % 10 != 0
            })
            .await
        }
    });
    // Eight batches at a time, as concurrent ingest workers write.
    let mut pending = futures::stream::iter(writes).buffer_unordered(8);
    while let Some(r) = pending.next().await {
        r?;
    }
    Ok(())
}

async fn measure(py: &str, chromium: &str, base: &str) -> anyhow::Result<Value> {
    let input = json!({ "base": base, "token": TOKEN, "chromium": chromium, "runs": 3,
                        "webhooks": ["empty", "bench"] });
    let py = py.to_owned();
    Ok(tokio::task::spawn_blocking(move || herald_tests::run_python(&py, DRIVER, &input)).await?)
}

fn figures(mode: &'static str, n: usize, v: Value) -> Figures {
    let runs = |w: &str, key: &str| -> Vec<f64> {
        v[w].as_array()
            .map(|a| a.iter().filter_map(|r| r[key].as_f64()).collect())
            .unwrap_or_default()
    };
    let median = |mut xs: Vec<f64>| {
        xs.sort_by(f64::total_cmp);
        xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let full = runs("bench", "rendered_ms");
    let spread = full.iter().copied().fold(f64::NAN, f64::max)
        - full.iter().copied().fold(f64::NAN, f64::min);
    Figures {
        mode,
        notifications: n,
        empty_ms: median(runs("empty", "rendered_ms")),
        full_ms: median(full),
        full_spread_ms: spread,
        counts_ms: median(runs("bench", "counted_ms")),
        api_calls: v["bench"][0]["api_calls"].as_u64().unwrap_or(0),
    }
}
