//! Webhook definitions: the compiled definitions (matching events to
//! webhooks, rendering, building notification records), read from the TOML
//! file format (`file`) through its validation (`loader`: every error at
//! once, with its location), each with a hash of what it does (`hash`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use globset::{Glob, GlobSet, GlobSetBuilder};
use handlebars::Context;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::circuit::CircuitConfig;
use crate::duration::{format_duration, parse_duration};
use crate::event::CloudEvent;
use crate::model::{
    HeaderValue, Method, Notification, NotificationContent, NotificationId, RenderedHeader,
    RenderedRequest,
};
use crate::render::{BodyFormat, Engines, Mode, RenderError};
use crate::retry::{Backoff, FailureClass, LONGEST_WAIT, OnGone, RetryPolicy};
use crate::secret::{SecretError, SecretRef, SecretSource, SecretValue};
use crate::signing::SigningSecret;

mod file;
mod hash;
mod loader;
#[cfg(test)]
mod tests;
mod tls;

pub use tls::{ClientIdentity, Roots, TlsMaterial, TlsSettings};

use file::RawFile;
use loader::Loader;

/// Default request timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest timeout a webhook may set.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(300);
/// Default limit of a rendered body, in bytes.
pub const DEFAULT_MAX_BODY_BYTES: usize = 256 * 1024;
/// Limit of a rendered URL or header value, in bytes.
pub const MAX_URL_BYTES: usize = 8 * 1024;

/// Headers Herald sets itself; a webhook may not define them.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "connection",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

/// One problem in a webhook file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionError {
    /// A path such as `webhooks.crm-loans.url` or `defaults.retry.jitter`;
    /// `file` for syntax errors.
    pub location: String,
    pub message: String,
}

impl fmt::Display for DefinitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// Every problem found in a webhook file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionErrors(pub Vec<DefinitionError>);

impl std::error::Error for DefinitionErrors {}

impl fmt::Display for DefinitionErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid webhook definitions ({} errors)", self.0.len())?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

// ---- compiled definitions --------------------------------------------------

/// A header of a webhook definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderSpec {
    /// A Handlebars template.
    Template(String),
    /// `prefix` + the named secret, resolved at send time.
    Secret { name: String, prefix: String },
}

/// A signing key of a webhook: a `[secrets]` name and the window in which
/// it signs (open at either end when unset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKeyRef {
    pub name: String,
    pub not_before: Option<DateTime<Utc>>,
    pub not_after: Option<DateTime<Utc>>,
}

impl SigningKeyRef {
    /// Whether it signs a request made at `now`.
    pub fn signs_at(&self, now: DateTime<Utc>) -> bool {
        self.not_before.is_none_or(|b| b <= now) && self.not_after.is_none_or(|a| now < a)
    }
}

/// A public key receivers verify `v1a` signatures with.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PublishedKey {
    /// A stable id of the key ([`SigningSecret::key_id`]).
    pub kid: String,
    pub alg: &'static str,
    /// `whpk_<base64>`.
    pub public_key: String,
    pub not_before: Option<DateTime<Utc>>,
    pub not_after: Option<DateTime<Utc>>,
    /// Whether it signs requests now.
    pub signing: bool,
}

/// A filter condition: the value at a JSON pointer into the template
/// context must equal one of `any_of`.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub pointer: String,
    pub any_of: Vec<Value>,
}

impl Condition {
    fn matches(&self, context: &Value) -> bool {
        context
            .pointer(&self.pointer)
            .is_some_and(|v| self.any_of.iter().any(|want| json_eq(v, want)))
    }
}

/// Equality where `5` and `5.0` are the same number.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// A validated, compiled webhook.
#[derive(Debug)]
pub struct Webhook {
    pub id: String,
    pub description: Option<String>,
    /// A disabled webhook matches no event.
    pub enabled: bool,
    /// Event type globs, as written.
    pub events: Vec<String>,
    matcher: GlobSet,
    /// All conditions must hold.
    pub filter: Vec<Condition>,
    pub method: Method,
    pub url: String,
    pub headers: Vec<(String, HeaderSpec)>,
    pub body_format: BodyFormat,
    pub content_type: String,
    pub body: String,
    pub timeout: Duration,
    pub max_body_bytes: usize,
    pub retry: RetryPolicy,
    /// The endpoint's circuit breaker. Not part of `template_hash`: it
    /// changes when a request is sent, never what is sent.
    pub circuit: CircuitConfig,
    /// How the receiver is verified and who Herald is to it (mutual TLS).
    /// Not part of `template_hash` either: it changes how, not what, is sent.
    pub tls: TlsSettings,
    /// Entries of `[secrets]` that sign its requests: every one whose
    /// window holds at the time of the attempt.
    pub signing_secrets: Vec<SigningKeyRef>,
    /// sha256 (hex) of the canonical form of the resolved definition.
    pub template_hash: String,
}

impl Webhook {
    /// Whether the event's type matches and the filter holds.
    pub fn matches(&self, event: &CloudEvent) -> bool {
        self.matches_context(event, &event.to_json())
    }

    fn matches_context(&self, event: &CloudEvent, context: &Value) -> bool {
        self.enabled
            && self.matcher.is_match(&event.ty)
            && self.filter.iter().all(|c| c.matches(context))
    }

    fn template_name(&self, part: &str) -> String {
        format!("{}\u{0}{part}", self.id)
    }
}

/// The compiled set of webhooks of one file, with their templates.
#[derive(Debug)]
pub struct Webhooks {
    webhooks: Vec<Webhook>,
    secrets: BTreeMap<String, SecretRef>,
    engines: Engines,
}

/// A header ready to put on the wire. `Debug` hides sensitive values.
#[derive(Clone, PartialEq, Eq)]
pub struct ResolvedHeader {
    pub name: String,
    pub value: String,
    /// Came from a secret: mark it sensitive, never log it.
    pub sensitive: bool,
}

impl fmt::Debug for ResolvedHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value: &dyn fmt::Debug = if self.sensitive { &"***" } else { &self.value };
        f.debug_struct("ResolvedHeader")
            .field("name", &self.name)
            .field("value", value)
            .finish()
    }
}

impl Webhooks {
    /// Parse and validate a webhook file. Syntax errors and unknown fields
    /// stop parsing; everything else is collected and reported together.
    pub fn from_toml(text: &str) -> Result<Self, DefinitionErrors> {
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            DefinitionErrors(vec![DefinitionError {
                location: "file".into(),
                message: e.to_string().trim_end().replace('\n', "\n    "),
            }])
        })?;
        Loader::default().load(raw)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Webhook> {
        self.webhooks.iter()
    }

    pub fn len(&self) -> usize {
        self.webhooks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.webhooks.is_empty()
    }

    pub fn get(&self, id: &str) -> Option<&Webhook> {
        self.webhooks.iter().find(|w| w.id == id)
    }

    /// The webhooks an event fires, in file order.
    pub fn matching<'s, 'e>(
        &'s self,
        event: &'e CloudEvent,
    ) -> impl Iterator<Item = &'s Webhook> + use<'s, 'e> {
        let context = event.to_json();
        self.webhooks
            .iter()
            .filter(move |w| w.matches_context(event, &context))
    }

    /// Render the request `webhook` sends for `event`.
    pub fn render(
        &self,
        webhook: &Webhook,
        event: &CloudEvent,
    ) -> Result<RenderedRequest, RenderError> {
        self.render_context(webhook, Context::from(event.to_json()))
    }

    fn render_context(
        &self,
        webhook: &Webhook,
        context: Context,
    ) -> Result<RenderedRequest, RenderError> {
        if !self.webhooks.iter().any(|w| std::ptr::eq(w, webhook)) {
            return Err(RenderError::UnknownWebhook(webhook.id.clone()));
        }
        let e = &self.engines;
        let url = e.render(
            Mode::Url,
            &webhook.template_name("url"),
            "url",
            &context,
            MAX_URL_BYTES,
        )?;
        check_url(&url)?;
        let mut headers = Vec::with_capacity(webhook.headers.len());
        for (name, spec) in &webhook.headers {
            let value = match spec {
                HeaderSpec::Template(_) => {
                    let part = format!("header {name}");
                    let text = e.render(
                        Mode::Plain,
                        &webhook.template_name(&part),
                        &part,
                        &context,
                        MAX_URL_BYTES,
                    )?;
                    if text.chars().any(|c| c.is_control() && c != '\t') {
                        return Err(RenderError::InvalidHeaderValue { name: name.clone() });
                    }
                    HeaderValue::Text(text)
                }
                HeaderSpec::Secret { name, prefix } => HeaderValue::Secret {
                    name: name.clone(),
                    prefix: prefix.clone(),
                },
            };
            headers.push(RenderedHeader {
                name: name.clone(),
                value,
            });
        }
        let body = e.render(
            webhook.body_format.into(),
            &webhook.template_name("body"),
            "body",
            &context,
            webhook.max_body_bytes,
        )?;
        if webhook.body_format == BodyFormat::Json {
            serde_json::from_str::<serde::de::IgnoredAny>(&body).map_err(|e| {
                RenderError::InvalidJsonBody {
                    reason: e.to_string(),
                }
            })?;
        }
        Ok(RenderedRequest {
            method: webhook.method,
            url,
            headers,
            content_type: webhook.content_type.clone(),
            body,
        })
    }

    /// The notification record for (`event`, `webhook`): rendered, or
    /// `render_failed` with the error text. `now` is the creation time and
    /// stands in for the event time when the event has none.
    pub fn notification(
        &self,
        webhook: &Webhook,
        event: &CloudEvent,
        now: DateTime<Utc>,
    ) -> Notification {
        let content = match self.render(webhook, event) {
            Ok(request) => NotificationContent::Rendered(request),
            Err(e) => NotificationContent::RenderFailed {
                error: e.to_string(),
            },
        };
        Notification {
            id: NotificationId::derive(&event.source, &event.id, &webhook.id),
            webhook_id: webhook.id.clone(),
            event_source: event.source.clone(),
            event_id: event.id.clone(),
            event_type: event.ty.clone(),
            subject: event.subject.clone(),
            event_time: event.time.unwrap_or(now),
            created_at: now,
            template_hash: webhook.template_hash.clone(),
            content,
        }
    }

    /// One notification per matching webhook.
    pub fn notifications(&self, event: &CloudEvent, now: DateTime<Utc>) -> Vec<Notification> {
        self.matching(event)
            .map(|w| self.notification(w, event, now))
            .collect()
    }

    /// The reference behind a named secret.
    pub fn secret_ref(&self, name: &str) -> Option<&SecretRef> {
        self.secrets.get(name)
    }

    /// Resolve a named secret through the caller's source.
    pub fn resolve_secret(
        &self,
        name: &str,
        source: &dyn SecretSource,
    ) -> Result<SecretValue, SecretError> {
        let reference = self.secret_ref(name).ok_or_else(|| SecretError::Unknown {
            name: name.to_owned(),
        })?;
        source.resolve(reference)
    }

    /// The keys that sign a webhook's requests at `now` (those whose
    /// window holds), resolved and parsed (`whsec_...` or `whsk_...`).
    pub fn signing_secrets(
        &self,
        webhook: &Webhook,
        source: &dyn SecretSource,
        now: DateTime<Utc>,
    ) -> Result<Vec<SigningSecret>, SecretError> {
        webhook
            .signing_secrets
            .iter()
            .filter(|k| k.signs_at(now))
            .map(|k| self.signing_key(k, source))
            .collect()
    }

    /// The public keys of a webhook's ed25519 signing keys, with their ids
    /// and windows, for receivers (`GET /v1/webhooks/{id}/signing-keys`):
    /// past, current and scheduled ones alike, so a receiver can trust a
    /// key before it signs. HMAC secrets have no public half and are never
    /// listed. A key that cannot be resolved is left out and named in the
    /// second list (by its `[secrets]` name and why, never its value).
    pub fn published_keys(
        &self,
        webhook: &Webhook,
        source: &dyn SecretSource,
        now: DateTime<Utc>,
    ) -> (Vec<PublishedKey>, Vec<String>) {
        let mut keys = Vec::new();
        let mut problems = Vec::new();
        for k in &webhook.signing_secrets {
            match self.signing_key(k, source) {
                Ok(secret) => {
                    if let (Some(kid), Some(public_key)) = (secret.key_id(), secret.public_key()) {
                        keys.push(PublishedKey {
                            kid,
                            alg: "ed25519",
                            public_key,
                            not_before: k.not_before,
                            not_after: k.not_after,
                            signing: k.signs_at(now),
                        });
                    }
                }
                Err(e) => problems.push(e.to_string()),
            }
        }
        (keys, problems)
    }

    /// One signing key, resolved and parsed.
    pub fn signing_key(
        &self,
        key: &SigningKeyRef,
        source: &dyn SecretSource,
    ) -> Result<SigningSecret, SecretError> {
        let value = self.resolve_secret(&key.name, source)?;
        SigningSecret::parse(value.expose()).map_err(|e| SecretError::Invalid {
            name: key.name.clone(),
            reason: e.to_string(),
        })
    }

    /// The headers of a stored request with secret references resolved,
    /// for sending. `Content-Type` is included.
    pub fn resolve_headers(
        &self,
        request: &RenderedRequest,
        source: &dyn SecretSource,
    ) -> Result<Vec<ResolvedHeader>, SecretError> {
        let mut out = vec![ResolvedHeader {
            name: "content-type".into(),
            value: request.content_type.clone(),
            sensitive: false,
        }];
        for h in &request.headers {
            out.push(match &h.value {
                HeaderValue::Text(text) => ResolvedHeader {
                    name: h.name.clone(),
                    value: text.clone(),
                    sensitive: false,
                },
                HeaderValue::Secret { name, prefix } => ResolvedHeader {
                    name: h.name.clone(),
                    value: format!("{prefix}{}", self.resolve_secret(name, source)?.expose()),
                    sensitive: true,
                },
            });
        }
        Ok(out)
    }
}

fn check_url(url: &str) -> Result<(), RenderError> {
    let bad = |reason: &str| RenderError::InvalidUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(bad("the scheme must be http or https")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    Ok(())
}
