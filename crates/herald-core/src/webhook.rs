//! Webhook definitions: the TOML file format, its validation (every error at
//! once, with its location), matching events to webhooks, rendering, and
//! building notification records.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use globset::{Glob, GlobSet, GlobSetBuilder};
use handlebars::Context;
use serde::Deserialize;
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

// ---- the file format -------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default)]
    secrets: BTreeMap<String, SecretRef>,
    #[serde(default)]
    webhooks: Vec<RawWebhook>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    timeout: Option<String>,
    max_body_bytes: Option<usize>,
    #[serde(default)]
    retry: RawRetry,
    #[serde(default)]
    circuit: RawCircuit,
}

/// `[defaults.circuit]` and `[webhooks.circuit]`: the circuit breaker.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCircuit {
    enabled: Option<bool>,
    window: Option<String>,
    failure_threshold: Option<u32>,
    failure_ratio: Option<f64>,
    /// A duration, or `"off"`.
    slow_threshold: Option<String>,
    cooldown: Option<String>,
    max_cooldown: Option<String>,
    half_open_probes: Option<u32>,
}

impl RawCircuit {
    /// `self` with unset fields taken from `base`.
    fn over(&self, base: &RawCircuit) -> RawCircuit {
        RawCircuit {
            enabled: self.enabled.or(base.enabled),
            window: self.window.clone().or_else(|| base.window.clone()),
            failure_threshold: self.failure_threshold.or(base.failure_threshold),
            failure_ratio: self.failure_ratio.or(base.failure_ratio),
            slow_threshold: self
                .slow_threshold
                .clone()
                .or_else(|| base.slow_threshold.clone()),
            cooldown: self.cooldown.clone().or_else(|| base.cooldown.clone()),
            max_cooldown: self
                .max_cooldown
                .clone()
                .or_else(|| base.max_cooldown.clone()),
            half_open_probes: self.half_open_probes.or(base.half_open_probes),
        }
    }
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    max_attempts: Option<u32>,
    max_age: Option<String>,
    initial_delay: Option<String>,
    multiplier: Option<f64>,
    max_delay: Option<String>,
    jitter: Option<f64>,
    retry_after_max: Option<String>,
    retry_on: Option<Vec<String>>,
    on_gone: Option<String>,
}

impl RawRetry {
    /// `self` with unset fields taken from `base`.
    fn over(&self, base: &RawRetry) -> RawRetry {
        RawRetry {
            max_attempts: self.max_attempts.or(base.max_attempts),
            max_age: self.max_age.clone().or_else(|| base.max_age.clone()),
            initial_delay: self
                .initial_delay
                .clone()
                .or_else(|| base.initial_delay.clone()),
            multiplier: self.multiplier.or(base.multiplier),
            max_delay: self.max_delay.clone().or_else(|| base.max_delay.clone()),
            jitter: self.jitter.or(base.jitter),
            retry_after_max: self
                .retry_after_max
                .clone()
                .or_else(|| base.retry_after_max.clone()),
            retry_on: self.retry_on.clone().or_else(|| base.retry_on.clone()),
            on_gone: self.on_gone.clone().or_else(|| base.on_gone.clone()),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    id: String,
    description: Option<String>,
    #[serde(default = "yes")]
    enabled: bool,
    events: Vec<String>,
    #[serde(default)]
    filter: BTreeMap<String, Value>,
    method: Option<String>,
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, RawHeader>,
    body_format: Option<BodyFormat>,
    content_type: Option<String>,
    body: String,
    timeout: Option<String>,
    max_body_bytes: Option<usize>,
    #[serde(default)]
    signing_secrets: Vec<String>,
    #[serde(default)]
    retry: RawRetry,
    #[serde(default)]
    circuit: RawCircuit,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum RawHeader {
    Template(String),
    Secret(RawSecretHeader),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecretHeader {
    secret: String,
    #[serde(default)]
    prefix: String,
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
    /// Names of entries in `[secrets]`; all of them sign each request.
    pub signing_secrets: Vec<String>,
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

    /// The signing keys of a webhook, resolved and parsed (`whsec_...`).
    pub fn signing_secrets(
        &self,
        webhook: &Webhook,
        source: &dyn SecretSource,
    ) -> Result<Vec<SigningSecret>, SecretError> {
        webhook
            .signing_secrets
            .iter()
            .map(|name| {
                let value = self.resolve_secret(name, source)?;
                SigningSecret::parse(value.expose()).map_err(|e| SecretError::Invalid {
                    name: name.clone(),
                    reason: e.to_string(),
                })
            })
            .collect()
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

// ---- validation ------------------------------------------------------------

#[derive(Default)]
struct Loader {
    errors: Vec<DefinitionError>,
}

impl Loader {
    fn error(&mut self, location: impl Into<String>, message: impl Into<String>) {
        self.errors.push(DefinitionError {
            location: location.into(),
            message: message.into(),
        });
    }

    fn duration(&mut self, location: &str, value: Option<&str>, default: Duration) -> Duration {
        match value.map(parse_duration) {
            None => default,
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                self.error(location, e.to_string());
                default
            }
        }
    }

    fn load(mut self, raw: RawFile) -> Result<Webhooks, DefinitionErrors> {
        let defaults = &raw.defaults;
        let default_timeout = self.timeout(
            "defaults.timeout",
            defaults.timeout.as_deref(),
            DEFAULT_TIMEOUT,
        );
        let default_max_body = self.max_body(
            "defaults.max_body_bytes",
            defaults.max_body_bytes,
            DEFAULT_MAX_BODY_BYTES,
        );
        // Validate the defaults on their own so their errors are reported
        // once, not again under every webhook.
        let before = self.errors.len();
        self.retry("defaults.retry", &defaults.retry);
        let retry_base = if self.errors.len() == before {
            defaults.retry.clone()
        } else {
            RawRetry::default()
        };
        let before = self.errors.len();
        self.circuit("defaults.circuit", &defaults.circuit);
        let circuit_base = if self.errors.len() == before {
            defaults.circuit.clone()
        } else {
            RawCircuit::default()
        };

        for name in raw.secrets.keys() {
            if !valid_name(name) {
                self.error(
                    format!("secrets.{name}"),
                    "secret names may contain only letters, digits, '-' and '_'",
                );
            }
        }

        let mut engines = Engines::new();
        let mut webhooks = Vec::new();
        let mut seen = BTreeSet::new();
        for (index, w) in raw.webhooks.into_iter().enumerate() {
            let at = if w.id.is_empty() {
                format!("webhooks[{index}]")
            } else {
                format!("webhooks.{}", w.id)
            };
            if w.id.is_empty() {
                self.error(format!("{at}.id"), "must not be empty");
            } else if !valid_name(&w.id) {
                self.error(
                    format!("{at}.id"),
                    "webhook ids may contain only letters, digits, '-' and '_'",
                );
            } else if !seen.insert(w.id.clone()) {
                self.error(
                    format!("{at}.id"),
                    format!("duplicate webhook id {:?}", w.id),
                );
                continue;
            }
            let errors_before = self.errors.len();
            let timeout = self.timeout(
                &format!("{at}.timeout"),
                w.timeout.as_deref(),
                default_timeout,
            );
            let max_body_bytes = self.max_body(
                &format!("{at}.max_body_bytes"),
                w.max_body_bytes,
                default_max_body,
            );
            let retry = self.retry(&format!("{at}.retry"), &w.retry.over(&retry_base));
            let circuit = self.circuit(&format!("{at}.circuit"), &w.circuit.over(&circuit_base));
            let matcher = self.globs(&at, &w.events);
            let filter = self.filter(&at, &w.filter);
            let method = match w.method.as_deref().unwrap_or("POST").parse::<Method>() {
                Ok(m) => m,
                Err(e) => {
                    self.error(format!("{at}.method"), e);
                    Method::Post
                }
            };
            let body_format = w.body_format.unwrap_or_default();
            let content_type = w
                .content_type
                .clone()
                .unwrap_or_else(|| body_format.default_content_type().to_owned());
            if content_type.is_empty() || content_type.chars().any(char::is_control) {
                self.error(
                    format!("{at}.content_type"),
                    "must be a non-empty header value",
                );
            }
            self.url_shape(&format!("{at}.url"), &w.url);
            let headers = self.headers(&at, &w.headers, &raw.secrets);
            for (i, name) in w.signing_secrets.iter().enumerate() {
                if !raw.secrets.contains_key(name) {
                    self.error(
                        format!("{at}.signing_secrets[{i}]"),
                        format!("unknown secret {name:?}: declare it in [secrets]"),
                    );
                }
            }
            if w.signing_secrets.iter().collect::<BTreeSet<_>>().len() != w.signing_secrets.len() {
                self.error(format!("{at}.signing_secrets"), "lists a secret twice");
            }

            let webhook = Webhook {
                template_hash: String::new(),
                id: w.id,
                description: w.description,
                enabled: w.enabled,
                events: w.events,
                matcher,
                filter,
                method,
                url: w.url,
                headers,
                body_format,
                content_type,
                body: w.body,
                timeout,
                max_body_bytes,
                retry,
                circuit,
                signing_secrets: w.signing_secrets,
            };
            self.compile(&mut engines, &at, &webhook);
            if self.errors.len() == errors_before {
                let template_hash = canonical_hash(&webhook, &raw.secrets);
                webhooks.push(Webhook {
                    template_hash,
                    ..webhook
                });
            }
        }
        if !self.errors.is_empty() {
            return Err(DefinitionErrors(self.errors));
        }
        Ok(Webhooks {
            webhooks,
            secrets: raw.secrets,
            engines,
        })
    }

    fn timeout(&mut self, at: &str, value: Option<&str>, default: Duration) -> Duration {
        let t = self.duration(at, value, default);
        if t.is_zero() || t > MAX_TIMEOUT {
            self.error(
                at,
                format!(
                    "must be more than 0s and at most {}",
                    format_duration(MAX_TIMEOUT)
                ),
            );
            return default;
        }
        t
    }

    fn max_body(&mut self, at: &str, value: Option<usize>, default: usize) -> usize {
        match value {
            None => default,
            Some(0) => {
                self.error(at, "must be more than 0");
                default
            }
            Some(n) => n,
        }
    }

    /// Waits are bounded: a due time further away than [`LONGEST_WAIT`] is
    /// refused by the delivery service as forged, and timers have a range.
    fn at_most_longest_wait(&mut self, at: &str, d: Duration) {
        if d > LONGEST_WAIT {
            self.error(
                at.to_owned(),
                format!("must be at most {}", format_duration(LONGEST_WAIT)),
            );
        }
    }

    fn retry(&mut self, at: &str, raw: &RawRetry) -> RetryPolicy {
        let d = RetryPolicy::default();
        let max_attempts = raw.max_attempts.unwrap_or(d.max_attempts);
        if max_attempts == 0 {
            self.error(format!("{at}.max_attempts"), "must be at least 1");
        }
        let max_age = self.duration(&format!("{at}.max_age"), raw.max_age.as_deref(), d.max_age);
        if max_age.is_zero() {
            self.error(format!("{at}.max_age"), "must be more than 0s");
        }
        let initial_delay = self.duration(
            &format!("{at}.initial_delay"),
            raw.initial_delay.as_deref(),
            d.backoff.initial_delay,
        );
        if initial_delay.is_zero() {
            self.error(format!("{at}.initial_delay"), "must be more than 0s");
        }
        let max_delay = self.duration(
            &format!("{at}.max_delay"),
            raw.max_delay.as_deref(),
            d.backoff.max_delay,
        );
        if max_delay < initial_delay {
            self.error(
                format!("{at}.max_delay"),
                "must not be shorter than initial_delay",
            );
        }
        let retry_after_max = self.duration(
            &format!("{at}.retry_after_max"),
            raw.retry_after_max.as_deref(),
            d.backoff.retry_after_max,
        );
        for (name, d) in [
            ("max_age", max_age),
            ("max_delay", max_delay),
            ("retry_after_max", retry_after_max),
        ] {
            self.at_most_longest_wait(&format!("{at}.{name}"), d);
        }
        let multiplier = raw.multiplier.unwrap_or(d.backoff.multiplier);
        if !(multiplier.is_finite() && (1.0..=100.0).contains(&multiplier)) {
            self.error(format!("{at}.multiplier"), "must be between 1 and 100");
        }
        let jitter = raw.jitter.unwrap_or(d.backoff.jitter);
        if !(0.0..1.0).contains(&jitter) {
            self.error(format!("{at}.jitter"), "must be at least 0 and less than 1");
        }
        let mut retry_on = d.retry_on;
        if let Some(names) = &raw.retry_on {
            retry_on.classes.clear();
            for (i, name) in names.iter().enumerate() {
                match FailureClass::ALL.iter().find(|c| c.as_str() == name) {
                    Some(c) => retry_on.classes.push(*c),
                    None => self.error(
                        format!("{at}.retry_on[{i}]"),
                        format!(
                            "unknown failure class {name:?}: expected one of {}",
                            FailureClass::ALL.map(FailureClass::as_str).join(", ")
                        ),
                    ),
                }
            }
        }
        if let Some(gone) = &raw.on_gone {
            match gone.as_str() {
                "retry" => retry_on.on_gone = OnGone::Retry,
                "stop" => retry_on.on_gone = OnGone::Stop,
                other => self.error(
                    format!("{at}.on_gone"),
                    format!("unknown value {other:?}: expected \"retry\" or \"stop\""),
                ),
            }
        }
        RetryPolicy {
            retry_on,
            backoff: Backoff {
                initial_delay,
                multiplier,
                max_delay,
                jitter,
                retry_after_max,
            },
            max_attempts,
            max_age,
        }
    }

    fn circuit(&mut self, at: &str, raw: &RawCircuit) -> CircuitConfig {
        let d = CircuitConfig::default();
        let window = self.duration(&format!("{at}.window"), raw.window.as_deref(), d.window);
        if window.is_zero() {
            self.error(format!("{at}.window"), "must be more than 0s");
        }
        let cooldown = self.duration(
            &format!("{at}.cooldown"),
            raw.cooldown.as_deref(),
            d.cooldown,
        );
        if cooldown.is_zero() {
            self.error(format!("{at}.cooldown"), "must be more than 0s");
        }
        // Unset: ten minutes, or the cool-down itself if that is longer.
        let max_cooldown = match raw.max_cooldown.as_deref() {
            None => d.max_cooldown.max(cooldown),
            Some(v) => {
                let m = self.duration(&format!("{at}.max_cooldown"), Some(v), d.max_cooldown);
                if m < cooldown {
                    self.error(
                        format!("{at}.max_cooldown"),
                        "must be at least the cool-down",
                    );
                }
                m
            }
        };
        self.at_most_longest_wait(&format!("{at}.cooldown"), cooldown);
        self.at_most_longest_wait(&format!("{at}.max_cooldown"), max_cooldown);
        let failure_threshold = raw.failure_threshold.unwrap_or(d.failure_threshold);
        if failure_threshold == 0 {
            self.error(format!("{at}.failure_threshold"), "must be at least 1");
        }
        let failure_ratio = raw.failure_ratio.unwrap_or(d.failure_ratio);
        if !(failure_ratio > 0.0 && failure_ratio <= 1.0) {
            self.error(
                format!("{at}.failure_ratio"),
                "must be more than 0 and at most 1",
            );
        }
        let half_open_probes = raw.half_open_probes.unwrap_or(d.half_open_probes);
        if half_open_probes == 0 {
            self.error(format!("{at}.half_open_probes"), "must be at least 1");
        }
        let slow_threshold = match raw.slow_threshold.as_deref() {
            None | Some("off") => None,
            Some(v) => {
                let t = self.duration(&format!("{at}.slow_threshold"), Some(v), Duration::ZERO);
                (!t.is_zero()).then_some(t)
            }
        };
        CircuitConfig {
            enabled: raw.enabled.unwrap_or(d.enabled),
            window,
            failure_threshold,
            failure_ratio,
            slow_threshold,
            cooldown,
            max_cooldown,
            half_open_probes,
        }
    }

    fn globs(&mut self, at: &str, events: &[String]) -> GlobSet {
        if events.is_empty() {
            self.error(
                format!("{at}.events"),
                "at least one event type (glob) is required",
            );
        }
        let mut builder = GlobSetBuilder::new();
        for (i, pattern) in events.iter().enumerate() {
            if pattern.is_empty() {
                self.error(format!("{at}.events[{i}]"), "must not be empty");
                continue;
            }
            match Glob::new(pattern) {
                Ok(g) => {
                    builder.add(g);
                }
                Err(e) => self.error(
                    format!("{at}.events[{i}]"),
                    format!("invalid glob {pattern:?}: {}", e.kind()),
                ),
            }
        }
        builder.build().unwrap_or_else(|e| {
            self.error(format!("{at}.events"), e.to_string());
            GlobSet::empty()
        })
    }

    fn filter(&mut self, at: &str, filter: &BTreeMap<String, Value>) -> Vec<Condition> {
        let mut out = Vec::new();
        for (pointer, value) in filter {
            let loc = format!("{at}.filter.\"{pointer}\"");
            if !pointer.starts_with('/') {
                self.error(loc, "keys are JSON pointers into the event and start with '/', e.g. \"/data/product_type\"");
                continue;
            }
            let any_of = match value {
                Value::Array(values) if values.is_empty() => {
                    self.error(loc, "an empty list matches nothing");
                    continue;
                }
                Value::Array(values) => values.clone(),
                other => vec![other.clone()],
            };
            out.push(Condition {
                pointer: pointer.clone(),
                any_of,
            });
        }
        out
    }

    /// The scheme and host of a URL template must be literal: event data
    /// may fill in the path and query, never choose the destination.
    fn url_shape(&mut self, at: &str, url: &str) {
        let Some(rest) = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
        else {
            self.error(at, "must start with http:// or https://");
            return;
        };
        let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
        if authority.contains("{{") {
            self.error(at, "the host must be literal, not a template");
        } else if authority.contains('@') {
            self.error(
                at,
                "credentials in the URL would be stored with every notification; use a secret header",
            );
        } else if authority.is_empty() || authority.parse::<http::uri::Authority>().is_err() {
            self.error(at, format!("invalid host {authority:?}"));
        }
    }

    fn headers(
        &mut self,
        at: &str,
        headers: &BTreeMap<String, RawHeader>,
        secrets: &BTreeMap<String, SecretRef>,
    ) -> Vec<(String, HeaderSpec)> {
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        for (name, raw) in headers {
            let loc = format!("{at}.headers.{name}");
            let lower = name.to_ascii_lowercase();
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                self.error(loc, "invalid header name");
                continue;
            }
            if RESERVED_HEADERS.contains(&lower.as_str()) {
                self.error(loc, "is set by Herald and cannot be defined");
                continue;
            }
            if !seen.insert(lower) {
                self.error(loc, "defined twice (header names are case-insensitive)");
                continue;
            }
            let spec = match raw {
                RawHeader::Template(t) => HeaderSpec::Template(t.clone()),
                RawHeader::Secret(s) => {
                    if !secrets.contains_key(&s.secret) {
                        self.error(
                            format!("{loc}.secret"),
                            format!("unknown secret {:?}: declare it in [secrets]", s.secret),
                        );
                    }
                    if s.prefix.chars().any(char::is_control) {
                        self.error(format!("{loc}.prefix"), "contains a control character");
                    }
                    HeaderSpec::Secret {
                        name: s.secret.clone(),
                        prefix: s.prefix.clone(),
                    }
                }
            };
            out.push((name.clone(), spec));
        }
        out
    }

    fn compile(&mut self, engines: &mut Engines, at: &str, w: &Webhook) {
        let mut templates = vec![
            (
                Mode::Url,
                "url".to_owned(),
                format!("{at}.url"),
                w.url.as_str(),
            ),
            (
                Mode::from(w.body_format),
                "body".to_owned(),
                format!("{at}.body"),
                w.body.as_str(),
            ),
        ];
        for (name, spec) in &w.headers {
            if let HeaderSpec::Template(t) = spec {
                templates.push((
                    Mode::Plain,
                    format!("header {name}"),
                    format!("{at}.headers.{name}"),
                    t,
                ));
            }
        }
        for (mode, part, loc, source) in templates {
            if let Err(e) = engines.register(mode, &w.template_name(&part), source) {
                self.error(loc, e);
            }
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// sha256 of the resolved definition, serialised with sorted keys, so the
/// hash changes exactly when what the webhook does changes (including the
/// defaults it inherits), and not with formatting or key order.
fn canonical_hash(w: &Webhook, secrets: &BTreeMap<String, SecretRef>) -> String {
    let headers: Vec<Value> = w
        .headers
        .iter()
        .map(|(name, spec)| match spec {
            HeaderSpec::Template(t) => json!({"name": name, "template": t}),
            HeaderSpec::Secret { name: s, prefix } => json!({
                "name": name, "secret": s, "prefix": prefix,
                "ref": secrets.get(s).map(ToString::to_string),
            }),
        })
        .collect();
    let r = &w.retry;
    let canonical = json!({
        "format": "herald.webhook.v1",
        "id": w.id,
        "enabled": w.enabled,
        "events": w.events,
        "filter": w.filter.iter().map(|c| json!({"pointer": c.pointer, "any_of": c.any_of})).collect::<Vec<_>>(),
        "method": w.method.as_str(),
        "url": w.url,
        "headers": headers,
        "body_format": w.body_format.as_str(),
        "content_type": w.content_type,
        "body": w.body,
        "timeout_ms": w.timeout.as_millis() as u64,
        "max_body_bytes": w.max_body_bytes,
        "signing_secrets": w.signing_secrets.iter().map(|s| json!({"name": s, "ref": secrets.get(s).map(ToString::to_string)})).collect::<Vec<_>>(),
        "retry": {
            "max_attempts": r.max_attempts,
            "max_age_ms": r.max_age.as_millis() as u64,
            "initial_delay_ms": r.backoff.initial_delay.as_millis() as u64,
            "multiplier": r.backoff.multiplier,
            "max_delay_ms": r.backoff.max_delay.as_millis() as u64,
            "jitter": r.backoff.jitter,
            "retry_after_max_ms": r.backoff.retry_after_max.as_millis() as u64,
            "retry_on": r.retry_on.classes.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
            "on_gone": match r.retry_on.on_gone { OnGone::Retry => "retry", OnGone::Stop => "stop" },
        },
    });
    let mut text = String::new();
    write_canonical(&canonical, &mut text);
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// JSON with object keys sorted, independent of serde_json's map order.
fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            out.push('{');
            let mut keys: Vec<_> = map.keys().collect();
            keys.sort();
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use chrono::TimeZone;
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::event::EventData;

    const MINIMAL: &str = r#"
[secrets]
token = { env = "TOKEN" }
whsec = { env = "WHSEC" }

[[webhooks]]
id = "crm"
events = ["bank.loan.*"]
url = "https://crm.example.com/loans/{{subject}}"
signing_secrets = ["whsec"]
body = '{"id": {{json id}}, "amount": {{json data.amount}}, "name": "{{data.name}}"}'
[webhooks.headers]
Authorization = { secret = "token", prefix = "Bearer " }
X-Tenant = "{{tenant}}"
"#;

    fn event(v: Value) -> CloudEvent {
        let mut base = json!({
            "specversion": "1.0", "id": "e-1", "source": "/core", "type": "bank.loan.disbursed",
            "subject": "LN/1", "tenant": "acme", "data": {"amount": 12.5, "name": "A \"B\""}
        });
        for (k, x) in v.as_object().unwrap() {
            base[k] = x.clone();
        }
        CloudEvent::from_value(base).unwrap()
    }

    fn errors(toml: &str) -> Vec<String> {
        Webhooks::from_toml(toml)
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn webhook_sets_can_be_shared_between_tasks() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Webhooks>();
    }

    #[test]
    fn loads_and_renders_a_minimal_file() {
        let set = Webhooks::from_toml(MINIMAL).unwrap();
        let w = set.get("crm").unwrap();
        assert_eq!(w.method, Method::Post);
        assert_eq!(w.timeout, DEFAULT_TIMEOUT);
        assert_eq!(w.retry, RetryPolicy::default());
        let e = event(json!({}));
        assert_eq!(set.matching(&e).count(), 1);
        let r = set.render(w, &e).unwrap();
        assert_eq!(r.url, "https://crm.example.com/loans/LN%2F1");
        assert_eq!(r.content_type, "application/json");
        assert_eq!(
            r.body,
            r#"{"id": "e-1", "amount": 12.5, "name": "A \"B\""}"#
        );
        assert_eq!(
            r.headers,
            vec![
                RenderedHeader {
                    name: "Authorization".into(),
                    value: HeaderValue::Secret {
                        name: "token".into(),
                        prefix: "Bearer ".into()
                    }
                },
                RenderedHeader {
                    name: "X-Tenant".into(),
                    value: HeaderValue::Text("acme".into())
                },
            ]
        );
    }

    #[test]
    fn waits_are_bounded() {
        let errs = errors(
            r#"
[[webhooks]]
id = "a"
events = ["x"]
url = "https://a.example/"
body = "{}"
retry = { max_delay = "40d", retry_after_max = "31d", max_age = "365d" }
circuit = { max_cooldown = "60d" }
"#,
        );
        assert_eq!(
            errs,
            [
                "webhooks.a.retry.max_age: must be at most 30d",
                "webhooks.a.retry.max_delay: must be at most 30d",
                "webhooks.a.retry.retry_after_max: must be at most 30d",
                "webhooks.a.circuit.max_cooldown: must be at most 30d",
            ]
        );
    }

    #[test]
    fn circuit_settings_have_defaults_and_inherit_from_defaults() {
        let set = Webhooks::from_toml(MINIMAL).unwrap();
        assert_eq!(set.get("crm").unwrap().circuit, CircuitConfig::default());
        let toml = r#"
[defaults.circuit]
cooldown = "2m"
slow_threshold = "3s"

[[webhooks]]
id = "a"
events = ["x"]
url = "https://a.example/"
body = "{}"
[webhooks.circuit]
failure_threshold = 4
failure_ratio = 0.25
half_open_probes = 2

[[webhooks]]
id = "b"
events = ["x"]
url = "https://b.example/"
body = "{}"
circuit = { enabled = false, slow_threshold = "off" }
"#;
        let set = Webhooks::from_toml(toml).unwrap();
        let a = &set.get("a").unwrap().circuit;
        assert_eq!(
            *a,
            CircuitConfig {
                failure_threshold: 4,
                failure_ratio: 0.25,
                half_open_probes: 2,
                cooldown: Duration::from_secs(120),
                slow_threshold: Some(Duration::from_secs(3)),
                ..CircuitConfig::default()
            }
        );
        let b = &set.get("b").unwrap().circuit;
        assert!(!b.enabled);
        assert_eq!(b.slow_threshold, None);
        assert_eq!(b.cooldown, Duration::from_secs(120));
        let errs = errors(
            r#"
[defaults.circuit]
window = "0s"
[[webhooks]]
id = "a"
events = ["x"]
url = "https://a.example/"
body = "{}"
circuit = { failure_ratio = 1.5, failure_threshold = 0, half_open_probes = 0, cooldown = "1x" }
[[webhooks]]
id = "b"
events = ["x"]
url = "https://b.example/"
body = "{}"
circuit = { cooldown = "1m", max_cooldown = "30s" }
"#,
        );
        assert_eq!(
            errs,
            [
                "defaults.circuit.window: must be more than 0s",
                "webhooks.a.circuit.cooldown: invalid duration \"1x\": unknown unit \"x\" (expected ms, s, m, h or d)",
                "webhooks.a.circuit.failure_threshold: must be at least 1",
                "webhooks.a.circuit.failure_ratio: must be more than 0 and at most 1",
                "webhooks.a.circuit.half_open_probes: must be at least 1",
                "webhooks.b.circuit.max_cooldown: must be at least the cool-down",
            ]
        );
    }

    #[test]
    fn collects_every_error_with_its_location() {
        let toml = r#"
[defaults]
timeout = "0s"
[defaults.retry]
jitter = 1.5
retry_on = ["http_5xx", "teapot"]

[secrets]
"bad name" = { env = "X" }

[[webhooks]]
id = "a"
events = ["bank.[", ""]
filter = { "data/x" = 1, "/y" = [] }
method = "GET"
url = "https://{{host}}/x"
body = "{{#if}"
timeout = "10x"
signing_secrets = ["nope"]
[webhooks.headers]
Content-Type = "x"
"X A" = "y"
Authorization = { secret = "missing" }
[webhooks.retry]
max_attempts = 0
initial_delay = "1h"
max_delay = "1m"

[[webhooks]]
id = "a"
events = ["x"]
url = "ftp://x"
body = ""

[[webhooks]]
id = ""
events = []
url = "https://user:pw@h/"
body = ""
"#;
        let errs = errors(toml);
        let expected = [
            "defaults.timeout: must be more than 0s and at most 5m",
            "defaults.retry.jitter: must be at least 0 and less than 1",
            "defaults.retry.retry_on[1]: unknown failure class \"teapot\": expected one of http_3xx, http_4xx, http_5xx, timeout, connection_error, tls_error, invalid_response, refused",
            "secrets.bad name: secret names may contain only letters, digits, '-' and '_'",
            "webhooks.a.timeout: invalid duration \"10x\": unknown unit \"x\" (expected ms, s, m, h or d)",
            "webhooks.a.retry.max_attempts: must be at least 1",
            "webhooks.a.retry.max_delay: must not be shorter than initial_delay",
            "webhooks.a.events[1]: must not be empty",
            "webhooks.a.filter.\"/y\": an empty list matches nothing",
            "webhooks.a.filter.\"data/x\": keys are JSON pointers into the event and start with '/', e.g. \"/data/product_type\"",
            "webhooks.a.method: unsupported method \"GET\": expected POST, PUT or PATCH",
            "webhooks.a.url: the host must be literal, not a template",
            "webhooks.a.headers.Authorization.secret: unknown secret \"missing\": declare it in [secrets]",
            "webhooks.a.headers.Content-Type: is set by Herald and cannot be defined",
            "webhooks.a.headers.X A: invalid header name",
            "webhooks.a.signing_secrets[0]: unknown secret \"nope\": declare it in [secrets]",
            "webhooks.a.id: duplicate webhook id \"a\"",
            "webhooks[2].id: must not be empty",
            "webhooks[2].events: at least one event type (glob) is required",
            "webhooks[2].url: credentials in the URL would be stored with every notification; use a secret header",
        ];
        for want in expected {
            assert!(
                errs.iter().any(|e| e == want),
                "missing {want:?} in {errs:#?}"
            );
        }
        assert!(
            errs.iter()
                .any(|e| e.starts_with("webhooks.a.events[0]: invalid glob \"bank.[\"")),
            "{errs:#?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("webhooks.a.body: invalid template at line 1")),
            "{errs:#?}"
        );
        assert_eq!(errs.len(), expected.len() + 2, "{errs:#?}");
        let display = Webhooks::from_toml(toml).unwrap_err().to_string();
        assert!(display.starts_with(&format!(
            "invalid webhook definitions ({} errors)\n  defaults.timeout",
            errs.len()
        )));
    }

    #[test]
    fn unknown_fields_and_syntax_errors_are_rejected() {
        let errs = errors(
            "[[webhooks]]\nid = \"a\"\nevents = [\"x\"]\nurl = \"https://h\"\nbody = \"\"\nretries = 3\n",
        );
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with("file: "), "{errs:?}");
        assert!(errs[0].contains("unknown field `retries`"), "{errs:?}");
        let errs = errors("[defaults]\ntimeuot = \"1s\"\n");
        assert!(errs[0].contains("unknown field `timeuot`"), "{errs:?}");
        let errs = errors("[secrets]\nk = { value = \"inline-secret\" }\n");
        assert!(errs[0].starts_with("file: "), "{errs:?}");
        assert!(errors("this is not toml").len() == 1);
    }

    #[test]
    fn matching_uses_globs_filters_and_enabled() {
        let toml = r#"
[[webhooks]]
id = "all-loans"
events = ["bank.loan.*"]
url = "https://h/"
body = "{}"
[[webhooks]]
id = "mortgages"
events = ["bank.loan.disbursed", "bank.mortgage.?"]
filter = { "/data/product" = ["MORTGAGE", "HELOC"], "/tenant" = "acme", "/data/n" = 5 }
url = "https://h/"
body = "{}"
[[webhooks]]
id = "off"
enabled = false
events = ["*"]
url = "https://h/"
body = "{}"
"#;
        let set = Webhooks::from_toml(toml).unwrap();
        let ids = |e: &CloudEvent| set.matching(e).map(|w| w.id.as_str()).collect::<Vec<_>>();
        let mortgage = event(json!({"data": {"product": "HELOC", "n": 5.0}}));
        assert_eq!(ids(&mortgage), ["all-loans", "mortgages"]);
        assert_eq!(
            ids(&event(json!({"data": {"product": "CAR", "n": 5}}))),
            ["all-loans"]
        );
        assert_eq!(
            ids(&event(json!({"data": {"product": "HELOC"}}))),
            ["all-loans"]
        );
        assert_eq!(
            ids(&event(
                json!({"tenant": "other", "data": {"product": "HELOC", "n": 5}})
            )),
            ["all-loans"]
        );
        assert_eq!(
            ids(&event(json!({"type": "bank.client.created"}))),
            Vec::<&str>::new()
        );
        assert_eq!(
            ids(&event(
                json!({"type": "bank.mortgage.x", "data": {"product": "HELOC", "n": 5}})
            )),
            ["mortgages"]
        );
        assert!(set.get("mortgages").unwrap().matches(&mortgage));
    }

    #[test]
    fn render_failures_are_specific() {
        let set = Webhooks::from_toml(MINIMAL).unwrap();
        let w = set.get("crm").unwrap();
        let missing = event(json!({"data": {"name": "x"}}));
        assert_eq!(
            set.render(w, &missing).unwrap_err().to_string(),
            "body: line 1, column 31: helper `json`: missing field `data.amount`"
        );
        let no_tenant = CloudEvent {
            extensions: BTreeMap::new(),
            ..event(json!({}))
        };
        assert_eq!(
            set.render(w, &no_tenant).unwrap_err().to_string(),
            "header X-Tenant: line 1, column 1: missing field `tenant` (templates are strict: guard optional fields with {{#if}} or the default helper)"
        );
        let newline = event(json!({"tenant": "a\r\nX-Evil: 1"}));
        assert_eq!(
            set.render(w, &newline).unwrap_err().to_string(),
            "header X-Tenant: rendered value contains a control character"
        );

        let other = Webhooks::from_toml(MINIMAL).unwrap();
        assert_eq!(
            set.render(other.get("crm").unwrap(), &event(json!({})))
                .unwrap_err(),
            RenderError::UnknownWebhook("crm".into())
        );
    }

    #[test]
    fn json_bodies_must_be_valid_and_bodies_are_bounded() {
        let toml = r#"
[defaults]
max_body_bytes = 30
[[webhooks]]
id = "raw"
events = ["*"]
url = "https://h/{{subject}}"
body = '{"amount": {{data.name}} }'
[[webhooks]]
id = "big"
events = ["*"]
url = "https://h/"
body_format = "text"
body = "{{data.name}}{{data.name}}{{data.name}}{{data.name}}{{data.name}}{{data.name}}{{data.name}}"
"#;
        let set = Webhooks::from_toml(toml).unwrap();
        let e = event(json!({}));
        let err = set
            .render(set.get("raw").unwrap(), &e)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("body: rendered body is not valid JSON ("),
            "{err}"
        );
        assert!(err.ends_with("); use {{json ...}} for values"), "{err}");
        assert_eq!(
            set.render(set.get("big").unwrap(), &e)
                .unwrap_err()
                .to_string(),
            "body: rendered output exceeds the limit of 30 bytes"
        );
    }

    #[test]
    fn notifications_are_rendered_or_render_failed() {
        let set = Webhooks::from_toml(MINIMAL).unwrap();
        let now = Utc.with_ymd_and_hms(2024, 5, 1, 0, 0, 0).unwrap();
        let e = event(json!({"time": "2024-04-30T23:00:00Z"}));
        let n = set.notifications(&e, now);
        assert_eq!(n.len(), 1);
        let n = &n[0];
        assert_eq!(n.id, NotificationId::derive("/core", "e-1", "crm"));
        assert_eq!(
            n.event_time,
            Utc.with_ymd_and_hms(2024, 4, 30, 23, 0, 0).unwrap()
        );
        assert_eq!(n.created_at, now);
        assert_eq!(n.subject.as_deref(), Some("LN/1"));
        assert_eq!(n.template_hash, set.get("crm").unwrap().template_hash);
        assert!(n.request().is_some());

        let broken = event(json!({"data": {}}));
        let n = set.notification(set.get("crm").unwrap(), &broken, now);
        assert_eq!(n.event_time, now);
        assert_eq!(
            n.content,
            NotificationContent::RenderFailed {
                error: "body: line 1, column 31: helper `json`: missing field `data.amount`".into()
            }
        );
    }

    #[test]
    fn template_hash_is_stable_and_tracks_the_definition() {
        let hash = |toml: &str| {
            Webhooks::from_toml(toml)
                .unwrap()
                .get("crm")
                .unwrap()
                .template_hash
                .clone()
        };
        let h = hash(MINIMAL);
        assert_eq!(h.len(), 64);
        assert_eq!(h, hash(MINIMAL));
        // Formatting and comments do not matter ...
        assert_eq!(
            h,
            hash(&MINIMAL.replace("[secrets]", "# comment\n[secrets]\n"))
        );
        // ... the template, inherited defaults and secret references do.
        assert_ne!(h, hash(&MINIMAL.replace("{{json id}}", "{{json source}}")));
        assert_ne!(h, hash(&format!("[defaults]\ntimeout = \"3s\"\n{MINIMAL}")));
        assert_ne!(
            h,
            hash(&MINIMAL.replace("env = \"TOKEN\"", "env = \"TOKEN2\""))
        );
    }

    #[test]
    fn secrets_resolve_through_the_callers_source() {
        let set = Webhooks::from_toml(MINIMAL).unwrap();
        let w = set.get("crm").unwrap();
        let whsec = SigningSecret::from_bytes(vec![4u8; 32]).to_whsec();
        let source = HashMap::from([
            (SecretRef::Env("TOKEN".into()), "t0ps3cret".to_owned()),
            (SecretRef::Env("WHSEC".into()), whsec.clone()),
        ]);
        let keys = set.signing_secrets(w, &source).unwrap();
        assert_eq!(keys[0].to_whsec(), whsec);
        let request = set.render(w, &event(json!({}))).unwrap();
        let headers = set.resolve_headers(&request, &source).unwrap();
        assert_eq!(headers[0].name, "content-type");
        assert_eq!(headers[1].value, "Bearer t0ps3cret");
        assert!(headers[1].sensitive);
        assert!(!format!("{headers:?}").contains("t0ps3cret"));

        let empty: HashMap<SecretRef, String> = HashMap::new();
        assert_eq!(
            set.resolve_headers(&request, &empty)
                .unwrap_err()
                .to_string(),
            "secret env:TOKEN is not set"
        );
        let bad = HashMap::from([(SecretRef::Env("WHSEC".into()), "not-base64!".to_owned())]);
        assert!(
            set.signing_secrets(w, &bad)
                .unwrap_err()
                .to_string()
                .starts_with("secret \"whsec\" is invalid: invalid signing secret: ")
        );
        assert_eq!(
            set.resolve_secret("nope", &empty).unwrap_err().to_string(),
            "unknown secret \"nope\": not declared in [secrets]"
        );
    }

    fn example() -> Webhooks {
        Webhooks::from_toml(include_str!("../../../deploy/webhooks.example.toml"))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_example_file_loads_and_renders_every_fixture_event() {
        let set = example();
        assert_eq!(set.len(), 5);
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/events");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        assert!(files.len() >= 4, "fixtures in {}", dir.display());
        let mut fired = BTreeSet::new();
        for file in files {
            let event = CloudEvent::from_json(&std::fs::read(&file).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let matched: Vec<_> = set.matching(&event).collect();
            assert!(!matched.is_empty(), "{} fires no webhook", file.display());
            for w in matched {
                let r = set
                    .render(w, &event)
                    .unwrap_or_else(|e| panic!("{} x {}: {e}", file.display(), w.id));
                check_url(&r.url).unwrap();
                if w.body_format == BodyFormat::Json {
                    serde_json::from_str::<Value>(&r.body).unwrap();
                }
                fired.insert(w.id.clone());
            }
        }
        assert_eq!(
            fired.len(),
            set.len(),
            "every example webhook fires: {fired:?}"
        );
    }

    #[test]
    fn the_example_renders_what_the_receivers_expect() {
        let set = example();
        let read = |name: &str| {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../tests/fixtures/events")
                .join(name);
            CloudEvent::from_json(&std::fs::read(path).unwrap()).unwrap()
        };
        let loan = read("loan-disbursed.json");
        let r = set
            .render(set.get("crm-loan-disbursed").unwrap(), &loan)
            .unwrap();
        let body: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["amount"], json!("250000.00"));
        assert_eq!(body["display"], json!("250000.00 EUR"));
        assert_eq!(body["disbursedAt"], json!("2024-05-01T08:15:30Z"));
        assert_eq!(body["client"]["name"], json!("Zoë O'Brien \"Jr.\""));
        assert_eq!(
            r.url,
            "https://crm.example.com/api/v1/loans/LN-2024-000042/disbursements"
        );

        let deposit = read("deposit-posted.json");
        let r = set
            .render(set.get("ledger-deposit-posted").unwrap(), &deposit)
            .unwrap();
        assert_eq!(r.method, Method::Put);
        assert_eq!(r.content_type, "application/xml; charset=utf-8");
        assert_eq!(
            r.url,
            "https://ledger.example.net/postings/TX%202024%2F05%2F02-0001?source=herald"
        );
        assert!(
            r.body.contains("<amount currency=\"KWD\">1.234</amount>"),
            "{}",
            r.body
        );
        assert!(
            r.body
                .contains("<reference>Salary &lt;May&gt; &amp; bonus</reference>"),
            "{}",
            r.body
        );

        let overdue = read("repayment-overdue.json");
        let r = set
            .render(set.get("sms-repayment-overdue").unwrap(), &overdue)
            .unwrap();
        assert_eq!(
            r.body,
            "Dear Zoë O'Brien, your repayment of 1543.21 EUR due on 01.05.2024 is overdue."
        );
        assert_eq!(r.content_type, "text/plain; charset=utf-8");
        let w = set.get("collections-repayment-overdue").unwrap();
        assert_eq!(w.retry.max_attempts, 5);
        assert_eq!(w.retry.retry_on.on_gone, OnGone::Stop);
        assert_eq!(w.retry.max_age, Duration::from_secs(86_400));
        let mut not_due = overdue.clone();
        if let Some(EventData::Json(d)) = &mut not_due.data {
            d["days_overdue"] = json!(3);
        }
        assert!(!w.matches(&not_due));
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| json!(f)),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("amount_minor".to_owned()),
                        Just("currency".to_owned()),
                        Just("client".to_owned()),
                        Just("days_overdue".to_owned()),
                        Just("due_date".to_owned()),
                        "[a-z_]{1,8}"
                    ],
                    inner,
                    0..5
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn rendering_never_panics_on_arbitrary_event_data(data in arb_json(), subject in ".{1,10}") {
            let set = example();
            let mut e = event(json!({}));
            e.data = Some(EventData::Json(data));
            e.subject = Some(subject);
            let now = Utc::now();
            for w in set.iter() {
                let n = set.notification(w, &e, now);
                if let Some(r) = n.request() {
                    prop_assert!(check_url(&r.url).is_ok());
                    if w.body_format == BodyFormat::Json {
                        prop_assert!(serde_json::from_str::<Value>(&r.body).is_ok());
                    }
                }
            }
        }

        #[test]
        fn notification_ids_are_stable(source in ".{1,20}", id in ".{1,20}", webhook in "[a-z-]{1,12}") {
            let a = NotificationId::derive(&source, &id, &webhook);
            prop_assert_eq!(a, NotificationId::derive(&source, &id, &webhook));
            prop_assert_eq!(a.to_string().parse::<NotificationId>().unwrap(), a);
            prop_assert_ne!(a, NotificationId::derive(&source, &id, &format!("{webhook}x")));
        }
    }
}
