//! The `herald` binary: one entry point for standalone mode, the demo and
//! the operator's tools. `herald --help` is the map.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use figment::Figment;
use figment::providers::{Env, Format, Toml};
use herald::ops::{self, ApiClient};
use herald::{api, demo, standalone};
use herald_core::{CloudEvent, HeaderValue, Tiers, Webhooks};
use herald_delivery::EnvAndFileSecrets;
use herald_kafka::KafkaConfig;
use herald_kafka::topics::{self, TopicSettings};
use herald_store::cql::{self, Replication};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Parser)]
#[command(
    name = "herald",
    version,
    about = "Webhook delivery for banking events"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run standalone mode with example banking webhooks, a demo receiver and
    /// a handful of events; show deliveries, retries and the history.
    Demo {
        /// Keep Herald and the receiver running after the demo (Ctrl-C stops).
        #[arg(long)]
        keep_running: bool,
    },
    /// Run ingest and delivery in one process on SQLite (no Kafka, no Scylla).
    Standalone {
        /// Configuration file (TOML); `HERALD_*` environment variables override it.
        #[arg(long, short, env = "HERALD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Run the ingest service: banking events on Kafka to stored
    /// notifications and delivery jobs (section `[ingest]`).
    Ingest {
        /// Configuration file (TOML); `HERALD_INGEST__*` variables override it.
        #[arg(long, short, env = "HERALD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Run the delivery service: delivery, retry-tier and resend topics to
    /// webhook receivers (section `[delivery]`). Scale by starting more.
    /// With `[api] tokens` set it also serves the notification API.
    Delivery {
        /// Configuration file (TOML); `HERALD_DELIVERY__*` and `HERALD_API__*`
        /// variables override it.
        #[arg(long, short, env = "HERALD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Check and render webhook templates.
    #[command(subcommand)]
    Template(TemplateCommand),
    /// Show the communication history of a webhook (newest first).
    History {
        #[command(flatten)]
        api: ApiArgs,
        #[arg(long)]
        webhook: String,
        /// pending, delivered, retrying, failed or render_failed.
        #[arg(long)]
        status: Option<String>,
        /// RFC 3339 start (inclusive); default 7 days ago.
        #[arg(long)]
        since: Option<String>,
        /// RFC 3339 end (exclusive); default now.
        #[arg(long)]
        until: Option<String>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show every webhook's circuit breaker (which are open, since when and
    /// why), or force one closed with --close.
    Circuits {
        #[command(flatten)]
        api: ApiArgs,
        /// Force this webhook's circuit closed (every worker follows).
        #[arg(long)]
        close: Option<String>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Apply the CQL schema (schemas/cql) to ScyllaDB or Cassandra. Idempotent.
    Migrate {
        /// `host:port` of a node; repeat or comma-separate for several.
        #[arg(
            long = "contact-point",
            env = "HERALD_CQL_CONTACT_POINTS",
            value_delimiter = ',',
            default_value = "127.0.0.1:9042"
        )]
        contact_points: Vec<String>,
        #[arg(long, env = "HERALD_CQL_KEYSPACE", default_value = "herald")]
        keyspace: String,
        /// SimpleStrategy replication factor (development); use --datacenter for production.
        #[arg(long, default_value_t = 1)]
        replication_factor: u32,
        /// NetworkTopologyStrategy replicas, `dc=n`; repeatable. Overrides --replication-factor.
        #[arg(long = "datacenter", value_parser = parse_dc)]
        datacenters: Vec<(String, u32)>,
        /// Print the statements instead of applying them.
        #[arg(long)]
        print: bool,
    },
    /// Manage Kafka topics.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Re-send stored notifications (the stored bytes, trigger manual): by
    /// id, or in bulk by webhook, status (default failed) and time range.
    Resend {
        #[command(flatten)]
        api: ApiArgs,
        /// Notification ids.
        ids: Vec<String>,
        #[arg(long, conflicts_with = "ids")]
        webhook: Option<String>,
        #[arg(long, requires = "webhook")]
        status: Option<String>,
        #[arg(long, requires = "webhook")]
        since: Option<String>,
        #[arg(long, requires = "webhook")]
        until: Option<String>,
    },
}

#[derive(Subcommand)]
enum TopicsCommand {
    /// Create every Herald topic (deliveries, retry tiers, resend, dead
    /// letters, ingest DLQ, circuits) that does not exist yet. Idempotent.
    Create {
        #[arg(long, env = "HERALD_KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
        bootstrap: String,
        /// Prefix of every Herald topic name.
        #[arg(long, env = "HERALD_TOPIC_PREFIX", default_value = "")]
        prefix: String,
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        #[arg(long, default_value_t = 1)]
        replication_factor: i32,
        /// Retry tiers, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "10s,1m,10m,1h,6h")]
        tiers: Vec<String>,
    },
}

/// Where Herald's API is and how to authenticate.
#[derive(clap::Args)]
struct ApiArgs {
    /// Base URL of a Herald API (standalone, or a Kafka-mode service).
    #[arg(long, env = "HERALD_API_URL", default_value = "http://127.0.0.1:8080")]
    api: String,
    /// Bearer token (prefer the environment variable: arguments show in `ps`).
    #[arg(long, env = "HERALD_API_TOKEN", hide_env_values = true)]
    token: String,
}

#[derive(Subcommand)]
enum TemplateCommand {
    /// Validate a webhook definitions file; every error is listed.
    Check {
        #[arg(long, default_value = "deploy/webhooks.example.toml")]
        webhooks: PathBuf,
    },
    /// Print exactly the request a webhook would send for an event (secrets masked).
    Render {
        #[arg(long, default_value = "deploy/webhooks.example.toml")]
        webhooks: PathBuf,
        /// The webhook id.
        #[arg(long)]
        webhook: String,
        /// A CloudEvents JSON file.
        #[arg(long)]
        event: PathBuf,
    },
}

/// The configuration file: one section per mode.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    standalone: standalone::StandaloneConfig,
    #[serde(default)]
    ingest: herald_ingest::IngestConfig,
    #[serde(default)]
    delivery: herald_delivery::DeliveryConfig,
    /// The notification API of Kafka mode, served by `herald delivery`.
    #[serde(default)]
    api: api::ApiConfig,
}

/// Exit codes scripts can rely on.
const EXIT_USAGE: u8 = 2;
const EXIT_FAILURE: u8 = 1;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Demo { keep_running } => {
                init_logs("error");
                demo::run(keep_running).await
            }
            Command::Standalone { config } => {
                init_logs("info");
                run_standalone(config.as_deref()).await
            }
            Command::Ingest { config } => {
                init_logs("info");
                let file = load_config(config.as_deref())?;
                let webhooks = load_webhooks(&file.ingest.webhooks)?;
                let shutdown = CancellationToken::new();
                tokio::spawn(shutdown_on_signal(shutdown.clone()));
                herald_ingest::run(file.ingest, webhooks, shutdown).await?;
                Ok(())
            }
            Command::Delivery { config } => {
                init_logs("info");
                let file = load_config(config.as_deref())?;
                let webhooks = load_webhooks(&file.delivery.webhooks)?;
                let shutdown = CancellationToken::new();
                tokio::spawn(shutdown_on_signal(shutdown.clone()));
                let api_tasks = TaskTracker::new();
                // The API publishes the same definitions' signing keys.
                let definitions = api::Definitions {
                    webhooks: Arc::new(load_webhooks(&file.delivery.webhooks)?),
                    secrets: Arc::new(EnvAndFileSecrets),
                };
                let service = herald_delivery::DeliveryService::bind(
                    file.delivery.clone(),
                    webhooks,
                    Arc::new(EnvAndFileSecrets),
                )
                .await?;
                // The API's live counters are this worker's own metrics.
                api::start_kafka(
                    &file.api,
                    &file.delivery,
                    definitions,
                    service.metrics().clone(),
                    shutdown.clone(),
                    &api_tasks,
                )
                .await?;
                let worker = service.run(shutdown.clone()).await;
                // The worker may stop on its own (an error): the API stops too.
                shutdown.cancel();
                api_tasks.close();
                api_tasks.wait().await;
                worker?;
                Ok(())
            }
            Command::Template(TemplateCommand::Check { webhooks }) => {
                let w = load_webhooks(&webhooks)?;
                println!("{}: {} webhooks, all valid", webhooks.display(), w.len());
                check_client_certificates(&w, chrono::Utc::now())
            }
            Command::Template(TemplateCommand::Render {
                webhooks,
                webhook,
                event,
            }) => render(&webhooks, &webhook, &event),
            Command::Migrate {
                contact_points,
                keyspace,
                replication_factor,
                datacenters,
                print,
            } => {
                let replication = if datacenters.is_empty() {
                    Replication::Simple { replication_factor }
                } else {
                    Replication::NetworkTopology {
                        datacenters: datacenters.into_iter().collect(),
                    }
                };
                if print {
                    for stmt in cql::schema_statements(&keyspace, &replication)? {
                        println!("{stmt};");
                    }
                    return Ok(());
                }
                let session =
                    cql::connect_session(&cql::CqlConfig::new(contact_points, &keyspace)).await?;
                cql::migrate(&session, &keyspace, &replication).await?;
                println!("keyspace {keyspace}: schema applied");
                Ok(())
            }
            Command::Topics(TopicsCommand::Create {
                bootstrap,
                prefix,
                partitions,
                replication_factor,
                tiers,
            }) => {
                let kafka = KafkaConfig {
                    bootstrap_servers: bootstrap,
                    topic_prefix: prefix,
                    ..KafkaConfig::default()
                };
                let settings = TopicSettings {
                    partitions,
                    replication_factor,
                    ..TopicSettings::default()
                };
                let tiers =
                    Tiers::parse(&tiers).map_err(|e| UsageError(format!("--tiers: {e}")))?;
                let created = topics::create_all(&kafka, &settings, &tiers).await?;
                println!(
                    "created {} topic(s){}{}",
                    created.len(),
                    if created.is_empty() { "" } else { ": " },
                    created.join(", ")
                );
                let longest = tiers
                    .as_slice()
                    .last()
                    .map(|t| t.name.as_str())
                    .unwrap_or("");
                println!(
                    "retry tiers {}: a message waits in a tier at most its delay, then moves on \
                     to the tier that fits the rest; each tier topic keeps messages for the \
                     longest tier ({longest}) plus {} h and orders them by append time",
                    tiers
                        .as_slice()
                        .iter()
                        .map(|t| t.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    settings.retention_slack_hours
                );
                Ok(())
            }
            Command::History {
                api,
                webhook,
                status,
                since,
                until,
                json,
            } => {
                let filter = ops::Filter {
                    webhook: &webhook,
                    status: status.as_deref(),
                    since: since.as_deref(),
                    until: until.as_deref(),
                };
                ops::history(&ApiClient::new(&api.api, &api.token), &filter, json).await
            }
            Command::Circuits { api, close, json } => {
                let client = ApiClient::new(&api.api, &api.token);
                match close {
                    Some(webhook) => ops::close_circuit(&client, &webhook).await,
                    None => ops::circuits(&client, json).await,
                }
            }
            Command::Resend {
                api,
                ids,
                webhook,
                status,
                since,
                until,
            } => {
                let client = ApiClient::new(&api.api, &api.token);
                let queued = match &webhook {
                    Some(w) => {
                        let filter = ops::Filter {
                            webhook: w,
                            status: status.as_deref(),
                            since: since.as_deref(),
                            until: until.as_deref(),
                        };
                        ops::resend_bulk(&client, &filter).await?
                    }
                    None if ids.is_empty() => {
                        return Err(UsageError(
                            "name notification ids, or --webhook for a bulk re-send".into(),
                        )
                        .into());
                    }
                    None => ops::resend_ids(&client, &ids).await?,
                };
                println!("queued {queued} re-send(s)");
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: {e:#}");
            ExitCode::from(if e.is::<UsageError>() {
                EXIT_USAGE
            } else {
                EXIT_FAILURE
            })
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

fn parse_dc(s: &str) -> Result<(String, u32), String> {
    let (dc, n) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected dc=replicas"))?;
    Ok((
        dc.to_owned(),
        n.parse()
            .map_err(|_| format!("{s:?}: replicas must be a number"))?,
    ))
}

fn init_logs(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Client certificates expiring within this are reported as such.
const RENEW_WITHIN_DAYS: i64 = 30;

/// One line per client certificate (valid until, expiring soon, expired,
/// or not readable here); an expired one fails the check, since every
/// attempt with it would be refused by the receiver.
fn check_client_certificates(
    webhooks: &Webhooks,
    now: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<()> {
    let mut expired = 0;
    for w in webhooks.iter() {
        let Some(at) =
            herald_delivery::tls::client_certificate_not_after(webhooks, w, &EnvAndFileSecrets)
        else {
            continue;
        };
        let setting = format!("webhooks.{}.tls.client_cert", w.id);
        match at {
            Err(e) => println!("{setting}: not checked here: {e}"),
            Ok(at) => {
                let date = at.format("%Y-%m-%d %H:%M UTC");
                let days = (at - now).num_days();
                if at <= now {
                    expired += 1;
                    println!(
                        "{setting}: EXPIRED on {date}; the receiver will refuse every attempt"
                    );
                } else if days < RENEW_WITHIN_DAYS {
                    println!("{setting}: expires on {date}, in {days} days: renew it");
                } else {
                    println!("{setting}: valid until {date} ({days} days)");
                }
            }
        }
    }
    if expired > 0 {
        anyhow::bail!("{expired} client certificate(s) expired");
    }
    Ok(())
}

fn load_webhooks(path: &Path) -> anyhow::Result<Webhooks> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Webhooks::from_toml(&text)
        .map_err(|e| anyhow::Error::new(UsageError(format!("{}:\n{e}", path.display()))))
}

/// The configuration: the file when given, then `HERALD_<SECTION>__<KEY>`
/// environment variables over it.
fn load_config(config: Option<&Path>) -> anyhow::Result<FileConfig> {
    let mut figment = Figment::new();
    if let Some(path) = config {
        figment = figment.merge(Toml::file_exact(path));
    }
    let file = figment
        .merge(
            // Only the sections: other HERALD_* variables (HERALD_API_TOKEN,
            // HERALD_CONFIG, ...) belong to commands, not to this file.
            Env::prefixed("HERALD_")
                .filter(|k| {
                    ["standalone__", "ingest__", "delivery__", "api__"]
                        .iter()
                        .any(|s| k.as_str().to_ascii_lowercase().starts_with(s))
                })
                .split("__"),
        )
        .extract()
        .map_err(|e| UsageError(format!("configuration: {e}")))?;
    Ok(file)
}

async fn run_standalone(config: Option<&Path>) -> anyhow::Result<()> {
    let file = load_config(config)?;
    let webhooks = load_webhooks(&file.standalone.webhooks)?;
    let shutdown = CancellationToken::new();
    let running = standalone::start(
        file.standalone,
        webhooks,
        Arc::new(EnvAndFileSecrets),
        shutdown.clone(),
    )
    .await?;
    shutdown_on_signal(shutdown).await;
    running.wait().await;
    Ok(())
}

async fn shutdown_on_signal(shutdown: CancellationToken) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down: finishing in-flight attempts");
    shutdown.cancel();
}

fn render(webhooks: &Path, id: &str, event: &Path) -> anyhow::Result<()> {
    let set = load_webhooks(webhooks)?;
    let webhook = set
        .get(id)
        .ok_or_else(|| UsageError(format!("no webhook {id:?} in {}", webhooks.display())))?;
    let bytes = std::fs::read(event).with_context(|| format!("reading {}", event.display()))?;
    let event = CloudEvent::from_json(&bytes)
        .map_err(|e| UsageError(format!("{}: {e}", event.display())))?;
    if !webhook.matches(&event) {
        println!(
            "# note: webhook {id} does not match this event (type or filter); rendering anyway"
        );
    }
    let request = set
        .render(webhook, &event)
        .map_err(|e| UsageError(format!("render failed: {e}")))?;
    println!("{} {}", request.method, request.url);
    println!("content-type: {}", request.content_type);
    for h in &request.headers {
        match &h.value {
            HeaderValue::Text(v) => println!("{}: {v}", h.name),
            HeaderValue::Secret { name, prefix } => println!("{}: {prefix}<secret {name}>", h.name),
        }
    }
    println!(
        "webhook-id: <notification id>\nwebhook-timestamp: <send time>\nwebhook-signature: <v1,… per signing secret>\n"
    );
    println!("{}", request.body);
    Ok(())
}
