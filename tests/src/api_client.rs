//! A client of the notification API under test, over real HTTP on loopback
//! with Herald's own sender (loopback allowed, 1 MiB answers).

use std::time::Duration;

use bytes::Bytes;
use herald_delivery::{HttpSender, SenderConfig, SsrfGuard};
use serde_json::Value;

pub struct ApiClient {
    /// `http://host:port`.
    pub base: String,
    http: HttpSender,
}

impl ApiClient {
    pub fn new(base: String) -> Self {
        let http = HttpSender::new(SenderConfig {
            ssrf: SsrfGuard::from_allow_list(&["127.0.0.0/8"]).expect("loopback range"),
            max_response_excerpt: 1 << 20,
            ..SenderConfig::default()
        });
        Self { base, http }
    }

    /// `method path` with a JSON body and, when given, the bearer token:
    /// the status and the answer as JSON (a string when it is not JSON).
    /// Panics when no HTTP answer comes.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
        if let Some(t) = token {
            headers.push(("authorization".to_owned(), format!("Bearer {t}")));
        }
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let url = format!("{}{path}", self.base);
        let r = self
            .http
            .send(method, &url, &headers, body, Duration::from_secs(30))
            .await;
        let status = r
            .http_status
            .unwrap_or_else(|| panic!("{method} {path}: {r:?}"));
        let text = r.response_excerpt.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}
