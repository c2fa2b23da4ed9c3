//! The notification API (bearer-token auth) with `/healthz` and `/readyz`,
//! served by standalone mode (which adds `POST /v1/events` and `/metrics`)
//! and, in Kafka mode, by `herald delivery` when `[api] tokens` are set.
//! Errors are JSON of one stable shape:
//! `{"error": {"code": "...", "message": "..."}}`.
//!
//! The routes are the same in both modes; only where a re-send goes differs
//! ([`Backend`]): standalone queues it in the local engine, Kafka mode
//! produces a [`ResendCommand`] to the resend topic for the delivery workers.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use herald_core::{CloudEvent, NotificationId, ResendCommand, SecretSource, Status, Webhooks};
use herald_delivery::DeliveryConfig;
use herald_delivery::service::{BulkResend, publish_bulk_resend, publish_resend};
use herald_kafka::{KafkaConfig, Topics};
use herald_store::cql::CqlStore;
use herald_store::{
    ListQuery, MAX_PAGE_SIZE, NotificationStore, Page, StatusCounts, StoreError, StoreLimits,
    TimeRange,
};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use rdkafka::producer::FutureProducer;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};

use crate::console;
use crate::standalone::engine::{AcceptError, Engine};

/// Section `[api]`: the notification API of Kafka mode, served by every
/// `herald delivery` process (or `HERALD_API__*` environment variables).
/// Standalone mode configures its API in `[standalone]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address of the API.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Accepted bearer tokens. Empty: the API is not served.
    #[serde(default)]
    pub tokens: Vec<String>,
    /// Largest accepted request body, in bytes.
    #[serde(default = "default_max_request")]
    pub max_request_bytes: usize,
}

fn default_listen() -> SocketAddr {
    "127.0.0.1:8081".parse().expect("static address")
}
pub(crate) fn default_max_request() -> usize {
    4 * 1024 * 1024
}

impl Default for ApiConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every field has a default")
    }
}

impl ApiConfig {
    /// The configured tokens, `None` when the API is off (no token), or an
    /// error when a token is blank.
    pub fn enabled_tokens(&self) -> anyhow::Result<Option<Vec<String>>> {
        checked_tokens(&self.tokens, "api.tokens (HERALD_API__TOKENS)")
    }
}

/// Bearer tokens as configured in `setting`: `None` for none, an error for
/// a blank one. A blank token would let in a request whose
/// `Authorization: Bearer ` carries nothing; it is what an unset variable
/// in a templated environment value produces, so it is refused at start-up
/// rather than dropped quietly.
pub fn checked_tokens(tokens: &[String], setting: &str) -> anyhow::Result<Option<Vec<String>>> {
    if let Some(i) = tokens.iter().position(|t| t.trim().is_empty()) {
        anyhow::bail!(
            "{setting}: token {} of {} is blank (an unset variable?); remove it or set a value",
            i + 1,
            tokens.len()
        );
    }
    Ok((!tokens.is_empty()).then(|| tokens.to_vec()))
}

/// Where the API reads notifications and sends re-sends.
pub enum Backend {
    /// Standalone: events are accepted here and re-sends are queued in the
    /// local engine.
    Standalone(Engine),
    /// Kafka mode: reads from the notification store; re-sends are produced
    /// to the resend topic and carried out by the delivery workers.
    Kafka {
        store: Arc<dyn NotificationStore>,
        producer: FutureProducer,
        topics: Topics,
        /// For the circuits topic (read whole, or a forced close produced).
        kafka: KafkaConfig,
        /// The delivery worker's metrics, for `GET /v1/stats`.
        metrics: herald_delivery::Metrics,
    },
}

impl Backend {
    fn store(&self) -> &dyn NotificationStore {
        match self {
            Backend::Standalone(engine) => engine.store().as_ref(),
            Backend::Kafka { store, .. } => store.as_ref(),
        }
    }

    /// The delivery metrics of this process.
    fn metrics(&self) -> &herald_delivery::Metrics {
        match self {
            Backend::Standalone(engine) => &engine.metrics.delivery,
            Backend::Kafka { metrics, .. } => metrics,
        }
    }

    /// Queue a re-send of the stored request. `false`: no such notification,
    /// or it was never rendered (nothing to send).
    async fn resend(&self, id: NotificationId) -> Result<bool, ApiError> {
        match self {
            Backend::Standalone(engine) => engine.resend(id).await.map_err(ApiError::store),
            Backend::Kafka {
                store,
                producer,
                topics,
                ..
            } => {
                let sendable = store
                    .get(id)
                    .await
                    .map_err(ApiError::store)?
                    .is_some_and(|r| r.notification.request().is_some());
                if !sendable {
                    return Ok(false);
                }
                let cmd = ResendCommand {
                    notification_id: id,
                    reason: "api".into(),
                    requested_by: "api".into(),
                };
                publish_resend(producer, topics, &cmd)
                    .await
                    .map_err(ApiError::broker)?;
                Ok(true)
            }
        }
    }

    /// Queue a re-send of every notification `f` selects (status default
    /// `failed`). Returns how many were queued.
    async fn bulk_resend(&self, mut f: Filter) -> Result<u64, ApiError> {
        let status = f.status.unwrap_or(Status::Failed);
        match self {
            Backend::Standalone(engine) => {
                let mut queued = 0u64;
                loop {
                    let q = ListQuery::new(f.webhook.clone(), f.range, 500)
                        .with_status(status)
                        .with_cursor(f.cursor.take());
                    let page = engine.store().list(&q).await.map_err(ApiError::store)?;
                    for item in &page.items {
                        if engine
                            .resend(item.notification.id)
                            .await
                            .map_err(ApiError::store)?
                        {
                            queued += 1;
                        }
                    }
                    match page.next_cursor {
                        Some(c) => f.cursor = Some(c),
                        None => return Ok(queued),
                    }
                }
            }
            Backend::Kafka {
                store,
                producer,
                topics,
                ..
            } => {
                let request = BulkResend {
                    webhook_id: f.webhook,
                    range: f.range,
                    status: Some(status),
                    reason: "api bulk re-send".into(),
                    requested_by: "api".into(),
                };
                publish_bulk_resend(store.as_ref(), producer, topics, &request)
                    .await
                    .map(|n| n as u64)
                    .map_err(ApiError::broker)
            }
        }
    }
}

/// The process's webhook definitions and secret source: what the published
/// signing keys, the webhook list and template previews come from. Secrets
/// are read at each request (a rotated key file shows at once).
#[derive(Clone)]
pub struct Definitions {
    pub webhooks: Arc<Webhooks>,
    pub secrets: Arc<dyn SecretSource + Send + Sync>,
}

/// What the API needs.
pub struct ApiState {
    pub backend: Backend,
    pub definitions: Definitions,
    /// Accepted bearer tokens; never empty (checked at start-up).
    pub tokens: Vec<String>,
    /// Largest accepted request body.
    pub max_request_bytes: usize,
}

/// Kafka mode: serve the API next to a delivery worker, reading the same
/// store and producing re-sends to the resend topic of `delivery`'s Kafka.
/// Returns the bound address, or `None` when no token is configured (the API
/// is then off; it never runs without authentication).
pub async fn start_kafka(
    config: &ApiConfig,
    delivery: &DeliveryConfig,
    definitions: Definitions,
    metrics: herald_delivery::Metrics,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<Option<SocketAddr>> {
    let Some(tokens) = config.enabled_tokens()? else {
        info!("notification API off: set api.tokens (HERALD_API__TOKENS) to serve it");
        return Ok(None);
    };
    let store = CqlStore::connect(&delivery.cql, StoreLimits::default())
        .await
        .context("api: connecting to the notification store")?;
    let producer: FutureProducer = delivery
        .kafka
        .producer_config()
        .create()
        .context("api: creating the resend producer")?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("api: binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let state = Arc::new(ApiState {
        backend: Backend::Kafka {
            store: Arc::new(store),
            producer,
            topics: Topics::new(&delivery.kafka),
            kafka: delivery.kafka.clone(),
            metrics,
        },
        definitions,
        tokens,
        max_request_bytes: config.max_request_bytes,
    });
    spawn(listener, state, shutdown, tracker);
    info!(%addr, "notification API listening");
    Ok(Some(addr))
}

/// Serve the API on `listener` until `shutdown` fires; connections finish
/// their current request. Every task is tracked by `tracker`. At most 1024
/// connections at once, and a client that trickles its head is cut off
/// after 10 s ([`herald_ops::Limits`]).
pub fn spawn(
    listener: TcpListener,
    state: Arc<ApiState>,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) {
    let handler = move |req| handle(state.clone(), req);
    tracker.spawn(herald_ops::serve(
        listener,
        herald_ops::Limits::default(),
        handler,
        shutdown,
    ));
}

type Resp = Response<Full<Bytes>>;

/// How long a client may take to send a request body.
const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

pub async fn handle(state: Arc<ApiState>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method(), segments.as_slice()) {
        (&Method::GET, ["healthz"]) => text(StatusCode::OK, "ok"),
        (&Method::GET, ["readyz"]) => text(StatusCode::OK, "ready"),
        (&Method::GET, ["metrics"]) => match &state.backend {
            Backend::Standalone(engine) => {
                let mut resp = text(StatusCode::OK, &engine.metrics.render());
                resp.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static(herald_ops::METRICS_CONTENT_TYPE),
                );
                resp
            }
            // Kafka mode: the service's own listener serves /metrics.
            Backend::Kafka { .. } => not_found(&req),
        },
        // Public keys are public: receivers fetch them without a token.
        (&Method::GET, ["v1", "webhooks", webhook, "signing-keys"]) => {
            signing_keys(&state.definitions, webhook)
        }
        // The console's static files hold no data: every answer it shows
        // comes from a /v1 call with the operator's token.
        (&Method::GET, ["console", rest @ ..]) => match console::asset(rest) {
            Some(resp) => resp,
            None => not_found(&req),
        },
        (_, ["v1", ..]) if !authorized(&state, &req) => error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        ),
        (&Method::POST, ["v1", "events"]) => events(&state, req).await,
        (&Method::GET, ["v1", "notifications"]) => {
            list(&state, req.uri().query().unwrap_or("")).await
        }
        (&Method::GET, ["v1", "notifications", "counts"]) => {
            counts(&state, req.uri().query().unwrap_or("")).await
        }
        (&Method::POST, ["v1", "notifications", "resend"]) => bulk_resend(&state, req).await,
        // Not a notification id: the bulk route, with another method.
        (_, ["v1", "notifications", "resend"]) => method_not_allowed(&req, "POST"),
        (&Method::GET, ["v1", "notifications", id]) => get(&state, id).await,
        (&Method::POST, ["v1", "notifications", id, "resend"]) => resend(&state, id).await,
        (&Method::GET, ["v1", "circuits"]) => circuits(&state).await,
        (&Method::GET, ["v1", "webhooks"]) => webhooks(&state.definitions),
        (&Method::POST, ["v1", "webhooks", webhook, "preview"]) => {
            preview(&state, webhook, req).await
        }
        (&Method::GET, ["v1", "stats"]) => stats(&state),
        (&Method::POST, ["v1", "circuits", webhook, "close"]) => {
            close_circuit(&state, webhook).await
        }
        _ => match allowed(segments.as_slice()) {
            Some(allow) => method_not_allowed(&req, allow),
            None => not_found(&req),
        },
    }
}

/// The methods a known path answers to, for a 405's `Allow`.
fn allowed(segments: &[&str]) -> Option<&'static str> {
    Some(match segments {
        ["healthz"] | ["readyz"] | ["metrics"] => "GET",
        ["v1", "events"] => "POST",
        ["v1", "notifications"] => "GET",
        ["v1", "notifications", "resend"] => "POST",
        ["v1", "notifications", _] => "GET",
        ["v1", "notifications", _, "resend"] => "POST",
        ["v1", "circuits"] => "GET",
        ["v1", "circuits", _, "close"] => "POST",
        ["v1", "webhooks", _, "signing-keys"] => "GET",
        ["v1", "webhooks"] | ["v1", "stats"] => "GET",
        ["v1", "webhooks", _, "preview"] => "POST",
        ["console", ..] => "GET",
        _ => return None,
    })
}

fn method_not_allowed(req: &Request<Incoming>, allow: &'static str) -> Resp {
    let mut resp = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &format!(
            "{} {} is not served; use {allow}",
            req.method(),
            req.uri().path()
        ),
    );
    resp.headers_mut().insert(
        hyper::header::ALLOW,
        hyper::header::HeaderValue::from_static(allow),
    );
    resp
}

fn not_found(req: &Request<Incoming>) -> Resp {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("no route for {} {}", req.method(), req.uri().path()),
    )
}

fn authorized(state: &ApiState, req: &Request<Incoming>) -> bool {
    let Some(given) = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .filter(|t| !t.is_empty())
    else {
        return false;
    };
    // Compare every token in full so timing does not reveal a prefix.
    state.tokens.iter().fold(false, |ok, t| {
        ok | constant_time_eq(t.as_bytes(), given.as_bytes())
    })
}

/// Equality whose time depends on neither the position of the first
/// difference nor the lengths: both sides are hashed to 32 bytes first.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let (a, b) = (Sha256::digest(a), Sha256::digest(b));
    a.iter().zip(&b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn read_json(state: &ApiState, req: Request<Incoming>) -> Result<Value, ApiError> {
    let body = read_body(state, req).await?;
    serde_json::from_slice(&body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("body is not JSON: {e}"),
        )
    })
}

/// The request body, bounded in size and time.
async fn read_body(state: &ApiState, req: Request<Incoming>) -> Result<bytes::Bytes, ApiError> {
    let collect = Limited::new(req.into_body(), state.max_request_bytes).collect();
    let body = tokio::time::timeout(BODY_READ_TIMEOUT, collect)
        .await
        .map_err(|_| {
            ApiError(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "request body not received within {}s",
                    BODY_READ_TIMEOUT.as_secs()
                ),
            )
        })?
        .map_err(|_| {
            ApiError(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("request body over {} bytes", state.max_request_bytes),
            )
        })?;
    Ok(body.to_bytes())
}

/// A CloudEvent in HTTP binary mode (`ce-*` headers, the data as the body),
/// as the JSON value the standalone engine accepts.
async fn read_binary_event(state: &ApiState, req: Request<Incoming>) -> Result<Value, ApiError> {
    let headers: Vec<(String, Vec<u8>)> = req
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect();
    let body = read_body(state, req).await?;
    let pairs: Vec<(&str, &[u8])> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_slice()))
        .collect();
    CloudEvent::from_http_binary(&pairs, Some(&body))
        .map(|e| e.to_json())
        .map_err(|e| {
            ApiError(
                StatusCode::BAD_REQUEST,
                "invalid_event",
                format!("binary-mode event: {e}"),
            )
        })
}

async fn events(state: &ApiState, req: Request<Incoming>) -> Resp {
    let Backend::Standalone(engine) = &state.backend else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "in Kafka mode events are consumed from the input topics: produce them there",
        );
    };
    // Binary mode when a `ce-specversion` header is present; otherwise the
    // body is one structured event or a batch (a JSON array).
    let binary = req.headers().contains_key("ce-specversion");
    let value = match if binary {
        read_binary_event(state, req).await
    } else {
        read_json(state, req).await
    } {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let batch = match value {
        Value::Array(items) => items,
        one => vec![one],
    };
    let count = batch.len();
    match engine.accept(batch).await {
        Ok(accepted) => {
            let ids: Vec<_> = accepted.iter().map(|a| a.id).collect();
            let results: Vec<Value> = accepted
                .iter()
                .map(|a| {
                    json!({
                        "id": a.id,
                        "webhook": a.webhook_id,
                        "status": a.status.as_str(),
                        "known": a.known,
                    })
                })
                .collect();
            json_resp(
                StatusCode::ACCEPTED,
                json!({ "accepted": count, "notifications": ids, "results": results }),
            )
        }
        Err(e @ AcceptError::Invalid { .. }) => {
            error(StatusCode::BAD_REQUEST, "invalid_event", &e.to_string())
        }
        Err(e @ AcceptError::Store(_)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            &e.to_string(),
        ),
    }
}

fn parse_id(id: &str) -> Result<NotificationId, ApiError> {
    id.parse().map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            "invalid_id",
            format!("{id:?} is not a notification id (a UUID)"),
        )
    })
}

async fn get(state: &ApiState, id: &str) -> Resp {
    let id = match parse_id(id) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    match state.backend.store().get(id).await {
        Ok(Some(r)) => json_resp(
            StatusCode::OK,
            json!({ "notification": r.notification, "state": r.state, "attempts": r.attempts }),
        ),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no notification {id}"),
        ),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            &e.to_string(),
        ),
    }
}

async fn resend(state: &ApiState, id: &str) -> Resp {
    let id = match parse_id(id) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    match state.backend.resend(id).await {
        Ok(true) => json_resp(StatusCode::ACCEPTED, json!({ "queued": 1 })),
        Ok(false) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no sendable notification {id}"),
        ),
        Err(e) => e.into_response(),
    }
}

/// The longest `from..to` of one bulk re-send or count.
pub const MAX_BULK_RANGE_DAYS: i64 = 366;

/// Refuses a `from..to` longer than [`MAX_BULK_RANGE_DAYS`] for what walks
/// the whole range (a bulk re-send, a count), so one request cannot walk
/// centuries of day partitions (the CQL index has one per webhook and day).
fn within_range_bound(range: &TimeRange, what: &str) -> Result<(), ApiError> {
    let span = range.to - range.from;
    if span <= chrono::Duration::days(MAX_BULK_RANGE_DAYS) {
        return Ok(());
    }
    Err(ApiError(
        StatusCode::BAD_REQUEST,
        "range_too_large",
        format!(
            "from..to spans {} days; {what} covers at most {MAX_BULK_RANGE_DAYS} days: split it into several",
            span.num_days()
        ),
    ))
}

/// Query parameters shared by listing and bulk re-send.
struct Filter {
    webhook: String,
    status: Option<Status>,
    range: TimeRange,
    limit: u32,
    cursor: Option<String>,
}

fn filter(params: &[(String, String)]) -> Result<Filter, ApiError> {
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let bad = |msg: String| ApiError(StatusCode::BAD_REQUEST, "invalid_query", msg);
    let time = |k: &str, default: DateTime<Utc>| match get(k) {
        None => Ok(default),
        Some(v) => DateTime::parse_from_rfc3339(v)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| bad(format!("{k}={v:?} is not an RFC 3339 time: {e}"))),
    };
    let webhook = get("webhook")
        .filter(|w| !w.is_empty())
        .ok_or_else(|| bad("webhook is required (a webhook id)".into()))?
        .to_owned();
    let status = match get("status") {
        None => None,
        Some(s) => Some(s.parse::<Status>().map_err(bad)?),
    };
    let now = Utc::now();
    let range = TimeRange::new(
        time("from", now - chrono::Duration::days(7))?,
        time("to", now + chrono::Duration::seconds(1))?,
    );
    let limit = match get("limit") {
        None => 100,
        Some(l) => l
            .parse()
            .ok()
            .filter(|n| (1..=MAX_PAGE_SIZE).contains(n))
            .ok_or_else(|| bad(format!("limit={l:?}: expected 1 to {MAX_PAGE_SIZE}")))?,
    };
    Ok(Filter {
        webhook,
        status,
        range,
        limit,
        // An empty cursor is the first page, like none.
        cursor: get("cursor").filter(|c| !c.is_empty()).map(str::to_owned),
    })
}

fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (decode(k), decode(v))
        })
        .collect()
}

async fn list(state: &ApiState, query: &str) -> Resp {
    let f = match filter(&query_pairs(query)) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let mut q = ListQuery::new(f.webhook, f.range, f.limit).with_cursor(f.cursor);
    if let Some(s) = f.status {
        q = q.with_status(s);
    }
    match state.backend.store().list(&q).await {
        Ok(page) => json_resp(StatusCode::OK, page_json(&page)),
        Err(e) => ApiError::store(e).into_response(),
    }
}

pub fn page_json(page: &Page) -> Value {
    let items: Vec<Value> = page
        .items
        .iter()
        .map(|i| json!({ "notification": i.notification, "state": i.state }))
        .collect();
    json!({ "items": items, "next_cursor": page.next_cursor })
}

/// `POST /v1/notifications/resend` with a JSON body `{"webhook", "status"
/// (default "failed"), "from", "to"}`: queues every match, page by page.
async fn bulk_resend(state: &ApiState, req: Request<Incoming>) -> Resp {
    let body = match read_json(state, req).await {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let Some(object) = body.as_object() else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "expected a JSON object {\"webhook\", \"status\", \"from\", \"to\"}",
        );
    };
    let mut params = Vec::with_capacity(object.len());
    let mut dry_run = false;
    for (k, v) in object {
        if !["webhook", "status", "from", "to", "dry_run"].contains(&k.as_str()) {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                &format!("unknown field {k:?}: expected webhook, status, from, to and dry_run"),
            );
        }
        match v {
            Value::Bool(b) if k == "dry_run" => dry_run = *b,
            _ if k == "dry_run" => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_body",
                    &format!("dry_run: expected true or false, got {v}"),
                );
            }
            Value::String(s) => params.push((k.clone(), s.clone())),
            other => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_body",
                    &format!("{k}: expected a string, got {other}"),
                );
            }
        }
    }
    let f = match filter(&params) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    if dry_run {
        // What the re-send would select, counted the way the console's
        // status counts are: nothing is queued.
        let status = f.status.unwrap_or(Status::Failed);
        return match count(state, &f, "a bulk re-send").await {
            Ok(c) => json_resp(
                StatusCode::OK,
                json!({
                    "matched": c.counts.get(status.as_str()).copied().unwrap_or(0),
                    "complete": c.complete,
                }),
            ),
            Err(e) => e.into_response(),
        };
    }
    if let Err(e) = within_range_bound(&f.range, "a bulk re-send") {
        return e.into_response();
    }
    match state.backend.bulk_resend(f).await {
        Ok(queued) => json_resp(StatusCode::ACCEPTED, json!({ "queued": queued })),
        Err(e) => e.into_response(),
    }
}

/// The most notifications one count looks at (the SQLite store counts
/// exactly whatever the number; the CQL store pages through the listing).
pub const COUNT_BOUND: u64 = 50_000;

/// Statuses of the notifications `f` selects (its status aside), within
/// the range bound.
async fn count(state: &ApiState, f: &Filter, what: &str) -> Result<StatusCounts, ApiError> {
    within_range_bound(&f.range, what)?;
    state
        .backend
        .store()
        .count_statuses(&f.webhook, f.range, COUNT_BOUND)
        .await
        .map_err(ApiError::store)
}

/// `GET /v1/notifications/counts?webhook&from&to`: notifications per
/// status, for the console's filters.
async fn counts(state: &ApiState, query: &str) -> Resp {
    let f = match filter(&query_pairs(query)) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    match count(state, &f, "a count").await {
        Ok(c) => json_resp(
            StatusCode::OK,
            json!({
                "webhook": f.webhook,
                "counts": c.counts,
                "total": c.scanned,
                "complete": c.complete,
            }),
        ),
        Err(e) => e.into_response(),
    }
}

/// `GET /v1/webhooks`: the defined webhooks, without URLs or headers (a
/// URL may carry a receiver's credentials).
fn webhooks(definitions: &Definitions) -> Resp {
    let list: Vec<Value> = definitions
        .webhooks
        .iter()
        .map(|w| {
            json!({
                "id": w.id,
                "description": w.description,
                "enabled": w.enabled,
                "events": w.events,
            })
        })
        .collect();
    json_resp(StatusCode::OK, json!({ "webhooks": list }))
}

/// `POST /v1/webhooks/{webhook}/preview` with a CloudEvent as the body:
/// the request the webhook would send for it (`herald template render`),
/// or where its template fails. Nothing is stored or sent.
async fn preview(state: &ApiState, webhook: &str, req: Request<Incoming>) -> Resp {
    let set = &state.definitions.webhooks;
    let Some(w) = set.get(webhook) else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no webhook {:?}", herald_core::text::one_line(webhook, 128)),
        );
    };
    let body = match read_body(state, req).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let event = match CloudEvent::from_json(&body) {
        Ok(e) => e,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_event", &e.to_string()),
    };
    let matches = w.matches(&event);
    match set.render(w, &event) {
        Ok(request) => json_resp(
            StatusCode::OK,
            json!({ "webhook": w.id, "matches": matches, "request": request }),
        ),
        Err(e) => {
            let position = e.position().map(
                |(part, line, column)| json!({ "part": part, "line": line, "column": column }),
            );
            json_resp(
                StatusCode::OK,
                json!({
                    "webhook": w.id,
                    "matches": matches,
                    "error": { "message": e.to_string(), "position": position },
                }),
            )
        }
    }
}

/// `GET /v1/stats`: this process's delivery totals per webhook, from its
/// own metrics; the console charts the differences between two reads.
fn stats(state: &ApiState) -> Resp {
    let totals = state.backend.metrics().webhook_totals();
    json_resp(
        StatusCode::OK,
        json!({ "at": Utc::now(), "webhooks": totals }),
    )
}

fn json_resp(status: StatusCode, value: Value) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(value.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        "application/json".parse().expect("static header"),
    );
    resp
}

fn text(status: StatusCode, body: &str) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_owned())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Every webhook's circuit breaker. Standalone: the engine's breakers, with
/// their current window and settings. Kafka mode: the latest state change
/// of each webhook on the compacted circuits topic, i.e. what every worker
/// follows (webhooks never opened are closed and not listed; an `open`
/// whose `until` has passed is being probed).
async fn circuits(state: &ApiState) -> Resp {
    match &state.backend {
        Backend::Standalone(engine) => {
            json_resp(StatusCode::OK, json!({ "circuits": engine.circuits() }))
        }
        Backend::Kafka { kafka, .. } => {
            match herald_delivery::service::read_circuits(kafka, std::time::Duration::from_secs(10))
                .await
            {
                Ok(changes) => json_resp(StatusCode::OK, json!({ "circuits": changes })),
                Err(e) => error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "broker_unavailable",
                    &e.to_string(),
                ),
            }
        }
    }
}

/// The public keys a webhook's `v1a` signatures verify with.
fn signing_keys(keys: &Definitions, webhook: &str) -> Resp {
    let Some(w) = keys.webhooks.get(webhook) else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no webhook {:?}", herald_core::text::one_line(webhook, 128)),
        );
    };
    let (published, problems) = keys
        .webhooks
        .published_keys(w, keys.secrets.as_ref(), Utc::now());
    // Debug, not warn: anyone may call this, and a log line per call would
    // let them flood the log. The attempts that key would sign are
    // refused with the same reason, recorded and visible.
    for problem in problems {
        debug!(webhook = %w.id, %problem, "a signing key cannot be published");
    }
    json_resp(
        StatusCode::OK,
        json!({ "webhook": w.id, "keys": published }),
    )
}

/// Force a webhook's circuit closed (on every worker in Kafka mode).
async fn close_circuit(state: &ApiState, webhook: &str) -> Resp {
    match &state.backend {
        Backend::Standalone(engine) => match engine.force_close_circuit(webhook, "api") {
            Some(change) => json_resp(StatusCode::OK, json!({ "change": change })),
            None => error(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("no webhook {webhook:?}"),
            ),
        },
        Backend::Kafka { kafka, .. } => {
            if !webhook
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                || webhook.is_empty()
            {
                return error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    &format!("no webhook {webhook:?}"),
                );
            }
            match herald_delivery::service::force_close_circuit(kafka, webhook, "api").await {
                Ok(change) => json_resp(StatusCode::OK, json!({ "change": change })),
                Err(e) => error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "broker_unavailable",
                    &e.to_string(),
                ),
            }
        }
    }
}

/// An error answer, before it becomes a response.
struct ApiError(StatusCode, &'static str, String);

impl ApiError {
    /// A store error: the caller's fault (a bad cursor or range) is a 400,
    /// anything else a 503.
    fn store(e: StoreError) -> Self {
        // Like a `starting_after` that names no object: the page a cursor
        // this API never handed out points to does not exist.
        if matches!(e, StoreError::InvalidCursor(_)) {
            return ApiError(StatusCode::NOT_FOUND, "cursor_not_found", e.to_string());
        }
        if e.is_input_fault() {
            return ApiError(StatusCode::BAD_REQUEST, "invalid_query", e.to_string());
        }
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            e.to_string(),
        )
    }

    fn broker(e: herald_delivery::service::Error) -> Self {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "broker_unavailable",
            e.to_string(),
        )
    }

    fn into_response(self) -> Resp {
        error(self.0, self.1, &self.2)
    }
}

pub fn error(status: StatusCode, code: &str, message: &str) -> Resp {
    json_resp(
        status,
        json!({ "error": { "code": code, "message": message } }),
    )
}
