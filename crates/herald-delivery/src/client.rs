//! The HTTP sender: a pooled hyper client (rustls, HTTP/1.1 and HTTP/2) that
//! resolves names through the SSRF guard (asynchronously, so the attempt's
//! timeout cancels a lookup too), connects only to the addresses it checked,
//! never follows redirects, bounds every attempt by a timeout and reads at
//! most a bounded excerpt of the response.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use herald_core::text::one_line;
use herald_core::{Outcome, TlsMaterial};
use http_body_util::{BodyExt, Full};
use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::ServerName;

use crate::dns::{DnsConfig, GuardedResolver};
use crate::ssrf::{SsrfGuard, SsrfRefused};
use crate::tls::{self, IdentityKey};

/// Longest error text of an attempt (the store bounds it again).
pub const MAX_ERROR_BYTES: usize = 1024;
/// Longest part of a redirect's `Location` quoted in the error.
const MAX_LOCATION_BYTES: usize = 512;
/// A `Retry-After` longer than this is no date or number: ignored.
const MAX_RETRY_AFTER_BYTES: usize = 64;

/// Settings of the sender shared by every webhook.
#[derive(Debug, Clone)]
pub struct SenderConfig {
    pub ssrf: SsrfGuard,
    /// Response bytes kept for the attempt record; the rest is never read.
    pub max_response_excerpt: usize,
    /// Idle keep-alive connections kept per host.
    pub max_idle_per_host: usize,
    /// `User-Agent` sent with every request.
    pub user_agent: String,
    /// Where webhook hosts are looked up.
    pub dns: DnsConfig,
}

impl Default for SenderConfig {
    fn default() -> Self {
        Self {
            ssrf: SsrfGuard::default(),
            max_response_excerpt: 4096,
            // At least the attempts a worker keeps in flight to one host: fewer
            // idle slots close connections that are about to be reused.
            max_idle_per_host: 256,
            user_agent: concat!("Herald/", env!("CARGO_PKG_VERSION")).to_owned(),
            dns: DnsConfig::System,
        }
    }
}

/// The classified result of one HTTP attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendResult {
    pub outcome: Outcome,
    pub http_status: Option<u16>,
    pub duration: Duration,
    /// A one-line, human-readable cause for anything but success.
    pub error: Option<String>,
    pub response_excerpt: Option<String>,
    /// The raw `Retry-After` header, if the receiver sent one.
    pub retry_after: Option<String>,
}

type Connector = HttpsConnector<HttpConnector<GuardedResolver>>;
type PooledClient = Client<Connector, Full<Bytes>>;

/// TLS identities other than the default kept at once; beyond it the
/// least recently used one (and its idle connections) is dropped.
const MAX_IDENTITIES: usize = 256;

/// A pooled, SSRF-guarded HTTP client. Cheap to clone.
#[derive(Clone)]
pub struct HttpSender {
    /// The default identity: public roots, no client certificate.
    client: PooledClient,
    /// One pool per other TLS identity, so connections are never shared
    /// across identities. Keyed by a digest of the material: a certificate
    /// replaced on disk is a new identity on the next attempt.
    identities: Arc<Mutex<HashMap<IdentityKey, (PooledClient, u64)>>>,
    /// Orders the identities by last use.
    uses: Arc<AtomicU64>,
    resolver: GuardedResolver,
    guard: Arc<SsrfGuard>,
    config: Arc<SenderConfig>,
}

impl HttpSender {
    pub fn new(config: SenderConfig) -> Self {
        let guard = Arc::new(config.ssrf.clone());
        let resolver = GuardedResolver::new(&config.dns, guard.clone());
        // TLS verification is always on: webpki roots, no opt-out.
        let client = pooled(&config, resolver.clone(), tls::default_config(), None);
        Self {
            client,
            identities: Arc::default(),
            uses: Arc::default(),
            resolver,
            guard,
            config: Arc::new(config),
        }
    }

    /// The pool of a TLS identity, built on first use.
    fn identity(&self, material: &TlsMaterial) -> Result<PooledClient, String> {
        let key = tls::identity_key(material);
        let tick = self.uses.fetch_add(1, Ordering::Relaxed);
        let mut identities = self.identities.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((client, used)) = identities.get_mut(&key) {
            *used = tick;
            return Ok(client.clone());
        }
        let (config, server_name) = tls::client_config(material)?;
        let client = pooled(&self.config, self.resolver.clone(), config, server_name);
        if identities.len() >= MAX_IDENTITIES
            && let Some(oldest) = identities
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| *k)
        {
            identities.remove(&oldest);
        }
        identities.insert(key, (client.clone(), tick));
        Ok(client)
    }

    /// [`HttpSender::send_as`] with the default TLS identity.
    pub async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(String, String)],
        body: Bytes,
        timeout: Duration,
    ) -> SendResult {
        self.send_as(None, method, url, headers, body, timeout)
            .await
    }

    /// Send one request as `tls` (the default identity when `None`) and
    /// classify what happened. Never panics, never returns early without a
    /// result: every attempt has an outcome.
    pub async fn send_as(
        &self,
        tls: Option<&TlsMaterial>,
        method: &str,
        url: &str,
        headers: &[(String, String)],
        body: Bytes,
        timeout: Duration,
    ) -> SendResult {
        let started = Instant::now();
        let request = match self.build(method, url, headers, body) {
            Ok(r) => r,
            Err(error) => return refused(error, started),
        };
        let client = match tls {
            None => self.client.clone(),
            Some(material) => match self.identity(material) {
                Ok(client) => client,
                Err(error) => return refused(error, started),
            },
        };
        let max = self.config.max_response_excerpt;
        // One deadline for the whole exchange. It bounds the wait for the
        // response head; the excerpt is then read only until the same deadline.
        let deadline = tokio::time::Instant::now() + timeout;
        let head = tokio::time::timeout_at(deadline, client.request(request)).await;
        match head {
            Err(_) => SendResult {
                outcome: Outcome::Timeout,
                http_status: None,
                duration: started.elapsed(),
                error: Some(format!(
                    "no complete response within {}ms",
                    timeout.as_millis()
                )),
                response_excerpt: None,
                retry_after: None,
            },
            Ok(Err(e)) => classify_error(&e, started),
            Ok(Ok(response)) => {
                let (parts, mut body) = response.into_parts();
                // The status line decides the outcome: a body that is huge,
                // endless, slow or broken does not change what the receiver
                // answered. Only the excerpt is read; dropping the rest closes
                // the connection rather than draining it.
                let mut excerpt = BytesMut::new();
                let read = async {
                    while excerpt.len() < max {
                        match body.frame().await {
                            Some(Ok(frame)) => {
                                if let Some(data) = frame.data_ref() {
                                    let take = data.len().min(max - excerpt.len());
                                    excerpt.extend_from_slice(&data[..take]);
                                }
                            }
                            Some(Err(_)) | None => break,
                        }
                    }
                };
                let _ = tokio::time::timeout_at(deadline, read).await;
                drop(body);
                let head = Head::of(&parts);
                SendResult {
                    outcome: head.outcome,
                    http_status: Some(parts.status.as_u16()),
                    duration: started.elapsed(),
                    error: head.error,
                    response_excerpt: excerpt_text(&excerpt),
                    retry_after: head.retry_after,
                }
            }
        }
    }

    fn build(
        &self,
        method: &str,
        url: &str,
        headers: &[(String, String)],
        body: Bytes,
    ) -> Result<http::Request<Full<Bytes>>, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("invalid url {url:?}: {e}"))?;
        match uri.scheme_str() {
            Some("http" | "https") => {}
            _ => return Err(format!("invalid url {url:?}: scheme must be http or https")),
        }
        let host = uri
            .host()
            .ok_or_else(|| format!("invalid url {url:?}: no host"))?;
        // An IP literal never reaches the resolver: check it here.
        if let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            self.guard.check(ip).map_err(|e| e.to_string())?;
        }
        let mut builder = http::Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            let name = http::HeaderName::try_from(name.as_str())
                .map_err(|_| format!("invalid header name {name:?}"))?;
            let value = http::HeaderValue::try_from(value.as_str())
                .map_err(|_| format!("invalid value for header {name}"))?;
            builder = builder.header(name, value);
        }
        builder = builder.header(http::header::USER_AGENT, &self.config.user_agent);
        builder
            .body(Full::new(body))
            .map_err(|e| format!("invalid request: {e}"))
    }
}

/// A pooled client that dials through `resolver` and speaks TLS as `tls`.
fn pooled(
    config: &SenderConfig,
    resolver: GuardedResolver,
    tls: rustls::ClientConfig,
    server_name: Option<ServerName<'static>>,
) -> PooledClient {
    let mut http = HttpConnector::new_with_resolver(resolver);
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let builder = match server_name {
        Some(name) => builder.with_server_name_resolver(FixedServerNameResolver::new(name)),
        None => builder,
    };
    let https = builder.enable_all_versions().wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(config.max_idle_per_host)
        .build(https)
}

/// What a response head says, bounded: every string a receiver supplies is
/// cut here, before it reaches a record, a log line or a retry job (hyper
/// takes heads of hundreds of KB, and obs-text bytes triple in size as
/// U+FFFD).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Head {
    outcome: Outcome,
    /// For a non-2xx answer: `http 503`, or where a redirect pointed.
    error: Option<String>,
    /// The raw `Retry-After`, when short enough to be one.
    retry_after: Option<String>,
}

impl Head {
    fn of(parts: &http::response::Parts) -> Self {
        let status = parts.status.as_u16();
        let success = parts.status.is_success();
        let error = (!success).then(|| match parts.headers.get(http::header::LOCATION) {
            Some(loc) if parts.status.is_redirection() => {
                let bytes = &loc.as_bytes()[..loc.len().min(MAX_LOCATION_BYTES)];
                let shown = one_line(&String::from_utf8_lossy(bytes), MAX_LOCATION_BYTES);
                let more = if loc.len() > MAX_LOCATION_BYTES {
                    "…"
                } else {
                    ""
                };
                format!("http {status}: redirect to {shown}{more} not followed")
            }
            _ => format!("http {status}"),
        });
        Self {
            outcome: if success {
                Outcome::Success
            } else {
                Outcome::HttpError
            },
            error,
            retry_after: parts
                .headers
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .filter(|v| v.len() <= MAX_RETRY_AFTER_BYTES)
                .map(str::to_owned),
        }
    }
}

/// The excerpt as text, never longer than the bytes read: a multi-byte
/// character cut at the limit is dropped rather than replaced by U+FFFD.
fn excerpt_text(bytes: &[u8]) -> Option<String> {
    let cut = match std::str::from_utf8(bytes) {
        Err(e) if e.error_len().is_none() => &bytes[..e.valid_up_to()],
        _ => bytes,
    };
    (!cut.is_empty()).then(|| String::from_utf8_lossy(cut).into_owned())
}

fn refused(error: String, started: Instant) -> SendResult {
    SendResult {
        outcome: Outcome::Refused,
        http_status: None,
        duration: started.elapsed(),
        error: Some(one_line(&error, MAX_ERROR_BYTES)),
        response_excerpt: None,
        retry_after: None,
    }
}

/// Map a client error to an outcome, with the whole cause chain as the text.
fn classify_error(error: &hyper_util::client::legacy::Error, started: Instant) -> SendResult {
    let mut chain = Vec::new();
    let mut ssrf = None;
    let mut tls = None;
    let mut source: Option<&(dyn StdError + 'static)> = error.source();
    while let Some(e) = source {
        chain.push(e.to_string());
        // The resolver's refusal and rustls' errors arrive wrapped in
        // io::Errors (hyper-rustls wraps tokio-rustls' io::Error in another),
        // whose `source()` skips the wrapped error itself: unwrap them all.
        let mut x = Some(e);
        while let Some(layer) = x {
            if let Some(s) = layer.downcast_ref::<SsrfRefused>() {
                ssrf = Some(s.to_string());
            }
            if let Some(t) = layer.downcast_ref::<rustls::Error>() {
                tls = Some(tls::reason(t));
            }
            x = layer
                .downcast_ref::<io::Error>()
                .and_then(|io| io.get_ref())
                .map(|i| i as &(dyn StdError + 'static));
        }
        if tls.is_none() {
            tls = tls::reason_in_text(chain.last().map_or("", String::as_str));
        }
        source = e.source();
    }
    if let Some(msg) = ssrf {
        return refused(msg, started);
    }
    chain.dedup();
    let detail = if chain.is_empty() {
        error.to_string()
    } else {
        chain.join(": ")
    };
    let outcome = if tls.is_some() {
        Outcome::TlsError
    } else {
        Outcome::ConnectionError
    };
    let kind = match (tls, error.is_connect()) {
        (Some(reason), _) => format!("tls {reason}"),
        (None, true) => "connect failed".to_owned(),
        (None, false) => "connection failed".to_owned(),
    };
    SendResult {
        outcome,
        http_status: None,
        duration: started.elapsed(),
        error: Some(one_line(&format!("{kind}: {detail}"), MAX_ERROR_BYTES)),
        response_excerpt: None,
        retry_after: None,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Bytes a header value may hold: visible ASCII, space, tab, obs-text.
    fn header_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![0x20u8..0x7f, Just(b'\t'), 0x80u8..=0xff],
            0..max,
        )
    }

    proptest! {
        /// Whatever head a receiver answers with (any status, a Location
        /// and a Retry-After of any length, obs-text included), what reaches
        /// the attempt is bounded, on one line, and only 2xx is a success.
        #[test]
        fn any_response_head_is_bounded_before_it_is_recorded(
            status in 100u16..1000,
            location in proptest::option::of(header_bytes(4096)),
            retry_after in proptest::option::of(header_bytes(256)),
        ) {
            let mut b = http::Response::builder().status(status);
            if let Some(l) = &location {
                b = b.header(http::header::LOCATION, http::HeaderValue::from_bytes(l).unwrap());
            }
            if let Some(r) = &retry_after {
                b = b.header(http::header::RETRY_AFTER, http::HeaderValue::from_bytes(r).unwrap());
            }
            let (parts, ()) = b.body(()).unwrap().into_parts();
            let head = Head::of(&parts);
            prop_assert_eq!(head.outcome == Outcome::Success, (200..300).contains(&status));
            prop_assert_eq!(head.error.is_none(), (200..300).contains(&status));
            if let Some(e) = &head.error {
                let bound = "http 999: redirect to ".len() + MAX_LOCATION_BYTES
                    + "…[truncated 99999 bytes]…".len() + " not followed".len();
                prop_assert!(e.len() <= bound, "{} bytes", e.len());
                prop_assert!(!e.chars().any(char::is_control), "{e:?}");
            }
            if let Some(r) = &head.retry_after {
                prop_assert!(r.len() <= MAX_RETRY_AFTER_BYTES);
            }
        }
    }

    #[test]
    fn an_excerpt_cut_inside_a_character_drops_the_fragment() {
        // "é" is two bytes; the limit cut it after the first.
        assert_eq!(excerpt_text(b"ab\xc3").as_deref(), Some("ab"));
        assert_eq!(excerpt_text("abé".as_bytes()).as_deref(), Some("abé"));
        assert_eq!(excerpt_text(b"\xc3"), None);
        assert_eq!(excerpt_text(b""), None);
        // Invalid bytes inside the excerpt are still shown, replaced.
        assert_eq!(excerpt_text(b"a\xffb").as_deref(), Some("a\u{fffd}b"));
    }
}
