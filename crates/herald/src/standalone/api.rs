//! Standalone mode's HTTP surface: `POST /v1/events`, the notification API
//! (bearer-token auth), `/metrics`, `/healthz` and `/readyz`. Errors are JSON
//! of one stable shape: `{"error": {"code": "...", "message": "..."}}`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use herald_core::{NotificationId, Status};
use herald_store::{ListQuery, NotificationStore, Page, TimeRange};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use super::engine::{AcceptError, Engine};

/// What the API needs besides the engine.
pub struct ApiState {
    pub engine: Engine,
    /// Accepted bearer tokens; never empty (checked at start-up).
    pub tokens: Vec<String>,
    /// Largest accepted request body.
    pub max_request_bytes: usize,
}

type Resp = Response<Full<Bytes>>;

pub async fn handle(state: Arc<ApiState>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let resp = match (req.method(), segments.as_slice()) {
        (&Method::GET, ["healthz"]) => text(StatusCode::OK, "ok"),
        (&Method::GET, ["readyz"]) => text(StatusCode::OK, "ready"),
        (&Method::GET, ["metrics"]) => text(StatusCode::OK, &state.engine.metrics.render()),
        (_, ["v1", ..]) if !authorized(&state, &req) => error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        ),
        (&Method::POST, ["v1", "events"]) => events(&state, req).await,
        (&Method::GET, ["v1", "notifications"]) => {
            list(&state, req.uri().query().unwrap_or("")).await
        }
        (&Method::POST, ["v1", "notifications", "resend"]) => bulk_resend(&state, req).await,
        (&Method::GET, ["v1", "notifications", id]) => get(&state, id).await,
        (&Method::POST, ["v1", "notifications", id, "resend"]) => resend(&state, id).await,
        _ => error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no route for {} {path}", req.method()),
        ),
    };
    Ok(resp)
}

fn authorized(state: &ApiState, req: &Request<Incoming>) -> bool {
    let Some(given) = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    // Compare every token in full so timing does not reveal a prefix.
    state.tokens.iter().fold(false, |ok, t| {
        ok | constant_time_eq(t.as_bytes(), given.as_bytes())
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn read_json(state: &ApiState, req: Request<Incoming>) -> Result<Value, ApiError> {
    let body = Limited::new(req.into_body(), state.max_request_bytes)
        .collect()
        .await
        .map_err(|_| {
            ApiError(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("request body over {} bytes", state.max_request_bytes),
            )
        })?;
    serde_json::from_slice(&body.to_bytes()).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("body is not JSON: {e}"),
        )
    })
}

async fn events(state: &ApiState, req: Request<Incoming>) -> Resp {
    let value = match read_json(state, req).await {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let batch = match value {
        Value::Array(items) => items,
        one => vec![one],
    };
    let count = batch.len();
    match state.engine.accept(batch).await {
        Ok(ids) => json_resp(
            StatusCode::ACCEPTED,
            json!({ "accepted": count, "notifications": ids }),
        ),
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
    match state.engine.store().get(id).await {
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
    match state.engine.resend(id).await {
        Ok(true) => json_resp(StatusCode::ACCEPTED, json!({ "queued": 1 })),
        Ok(false) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no sendable notification {id}"),
        ),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            &e.to_string(),
        ),
    }
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
        .ok_or_else(|| bad("webhook is required".into()))?
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
            .map_err(|_| bad(format!("limit={l:?} is not a number")))?,
    };
    Ok(Filter {
        webhook,
        status,
        range,
        limit,
        cursor: get("cursor").map(str::to_owned),
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
    match state.engine.store().list(&q).await {
        Ok(page) => json_resp(StatusCode::OK, page_json(&page)),
        Err(e) if !e.is_retriable() => {
            error(StatusCode::BAD_REQUEST, "invalid_query", &e.to_string())
        }
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            &e.to_string(),
        ),
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
    let params: Vec<(String, String)> = body
        .as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    let mut f = match filter(&params) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let status = f.status.unwrap_or(Status::Failed);
    let mut queued = 0u64;
    loop {
        let q = ListQuery::new(f.webhook.clone(), f.range, 500)
            .with_status(status)
            .with_cursor(f.cursor.take());
        let page = match state.engine.store().list(&q).await {
            Ok(p) => p,
            Err(e) => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    &e.to_string(),
                );
            }
        };
        for item in &page.items {
            match state.engine.resend(item.notification.id).await {
                Ok(true) => queued += 1,
                Ok(false) => {}
                Err(e) => {
                    return error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "store_unavailable",
                        &e.to_string(),
                    );
                }
            }
        }
        match page.next_cursor {
            Some(c) => f.cursor = Some(c),
            None => break,
        }
    }
    json_resp(StatusCode::ACCEPTED, json!({ "queued": queued }))
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
    resp
}

/// An error answer, before it becomes a response.
struct ApiError(StatusCode, &'static str, String);

impl ApiError {
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
