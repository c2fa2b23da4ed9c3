//! Standalone mode: ingest and delivery in one process on embedded SQLite.
//! No Kafka, no ScyllaDB. Events arrive by `POST /v1/events`.

pub mod engine;
pub mod metrics;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use herald_core::{SecretSource, Tiers, Webhooks};
use herald_delivery::{Deliverer, HttpSender, SenderConfig, SsrfGuard};
use herald_store::StoreLimits;
use herald_store::sqlite::{SqliteConfig, SqliteStore, Synchronous};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::api;

pub use engine::Engine;

/// Configuration of `herald standalone` (section `[standalone]` of the config
/// file, or `HERALD_STANDALONE__*` environment variables).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandaloneConfig {
    /// Address of the HTTP API.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The SQLite database file (created when missing).
    #[serde(default = "default_database")]
    pub database: PathBuf,
    /// The webhook definitions (TOML).
    #[serde(default = "default_webhooks")]
    pub webhooks: PathBuf,
    /// Bearer tokens accepted by the API. At least one is required.
    #[serde(default)]
    pub api_tokens: Vec<String>,
    /// Attempts in flight at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Requests in flight to one webhook, so a slow endpoint cannot take
    /// every slot; further attempts of that webhook wait for one (as in
    /// Kafka mode).
    #[serde(default = "default_max_in_flight_per_webhook")]
    pub max_in_flight_per_webhook: usize,
    /// Internal address ranges webhooks may reach despite the SSRF guard,
    /// e.g. `["127.0.0.0/8"]` for a receiver on the same host.
    #[serde(default)]
    pub ssrf_allow: Vec<String>,
    /// Retry tiers (standalone uses them only to label retry metrics).
    #[serde(default = "default_tiers")]
    pub tiers: Vec<String>,
    /// Largest accepted API request body, in bytes.
    #[serde(default = "default_max_request")]
    pub max_request_bytes: usize,
    /// Durability of a commit: `normal` survives a killed process; `full`
    /// also survives a power cut or an OS crash, at an fsync per group
    /// commit.
    #[serde(default)]
    pub synchronous: Synchronous,
    /// Page cache of the SQLite writer connection, in MiB.
    #[serde(default = "default_writer_cache_mib")]
    pub writer_cache_mib: u32,
}

fn default_listen() -> SocketAddr {
    "127.0.0.1:8080".parse().expect("static address")
}
fn default_database() -> PathBuf {
    ".herald/herald.db".into()
}
fn default_webhooks() -> PathBuf {
    "deploy/webhooks.example.toml".into()
}
fn default_concurrency() -> usize {
    256
}
fn default_max_in_flight_per_webhook() -> usize {
    32
}
fn default_tiers() -> Vec<String> {
    ["10s", "1m", "10m", "1h", "6h"].map(String::from).to_vec()
}
fn default_writer_cache_mib() -> u32 {
    SqliteConfig::new("").writer_cache_mib
}
fn default_max_request() -> usize {
    api::default_max_request()
}

impl Default for StandaloneConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every field has a default")
    }
}

/// A running standalone Herald.
pub struct Standalone {
    /// Where the API listens (the real port when configured with port 0).
    pub addr: SocketAddr,
    pub engine: Engine,
    tracker: TaskTracker,
}

impl Standalone {
    /// Wait until every task has stopped (after the shutdown token fired).
    pub async fn wait(self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// Start standalone mode with webhook definitions already loaded.
pub async fn start(
    config: StandaloneConfig,
    webhooks: Webhooks,
    secrets: Arc<dyn SecretSource + Send + Sync>,
    shutdown: CancellationToken,
) -> anyhow::Result<Standalone> {
    let setting = "standalone.api_tokens (HERALD_STANDALONE__API_TOKENS)";
    if crate::api::checked_tokens(&config.api_tokens, setting)?.is_none() {
        bail!("no API token configured: set {setting}");
    }
    let webhooks = Arc::new(webhooks);
    let (keys_webhooks, keys_secrets) = (webhooks.clone(), secrets.clone());
    let tiers = Tiers::parse(&config.tiers).context("standalone.tiers")?;
    let ssrf = SsrfGuard::from_allow_list(&config.ssrf_allow).map_err(anyhow::Error::msg)?;
    let sender = HttpSender::new(SenderConfig {
        ssrf,
        ..SenderConfig::default()
    });
    let deliverer = Deliverer::new(sender, webhooks.clone(), secrets, tiers);
    let sqlite = SqliteConfig {
        synchronous: config.synchronous,
        writer_cache_mib: config.writer_cache_mib,
        ..SqliteConfig::new(&config.database)
    };
    let store = SqliteStore::open(sqlite, StoreLimits::default())
        .await
        .with_context(|| format!("opening {}", config.database.display()))?;
    let tracker = TaskTracker::new();
    let metrics = metrics::StandaloneMetrics::new();
    let engine = Engine::start(
        Arc::new(store),
        deliverer,
        webhooks,
        config.concurrency.max(1),
        config.max_in_flight_per_webhook.max(1),
        metrics,
        shutdown.clone(),
        &tracker,
    )
    .await
    .context("resuming stored deliveries")?;

    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let state = Arc::new(api::ApiState {
        backend: api::Backend::Standalone(engine.clone()),
        definitions: api::Definitions {
            webhooks: keys_webhooks,
            secrets: keys_secrets,
        },
        tokens: config.api_tokens.clone(),
        max_request_bytes: config.max_request_bytes,
    });
    api::spawn(listener, state, shutdown, &tracker);
    info!(%addr, database = %config.database.display(), "standalone herald listening");
    Ok(Standalone {
        addr,
        engine,
        tracker,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durability_and_the_writer_cache_are_configurable() {
        let d = StandaloneConfig::default();
        assert_eq!(
            (d.synchronous, d.writer_cache_mib),
            (Synchronous::Normal, 64)
        );
        let c: StandaloneConfig =
            serde_json::from_str(r#"{"synchronous": "full", "writer_cache_mib": 16}"#).unwrap();
        assert_eq!((c.synchronous, c.writer_cache_mib), (Synchronous::Full, 16));
        assert!(serde_json::from_str::<StandaloneConfig>(r#"{"synchronous": "off"}"#).is_err());
    }
}
