//! Validation: the file as written to compiled definitions, with every
//! error at once and its location.

use super::file::{RawCircuit, RawFile, RawHeader, RawRetry, RawSigningKey};
use super::hash::canonical_hash;
use super::*;

#[derive(Default)]
pub(super) struct Loader {
    errors: Vec<DefinitionError>,
}

impl Loader {
    pub(super) fn error(&mut self, location: impl Into<String>, message: impl Into<String>) {
        self.errors.push(DefinitionError {
            location: location.into(),
            message: message.into(),
        });
    }

    pub(super) fn duration(
        &mut self,
        location: &str,
        value: Option<&str>,
        default: Duration,
    ) -> Duration {
        match value.map(parse_duration) {
            None => default,
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                self.error(location, e.to_string());
                default
            }
        }
    }

    pub(super) fn load(mut self, raw: RawFile) -> Result<Webhooks, DefinitionErrors> {
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
            let tls = self.tls(&at, &w.url, w.tls.as_ref(), &raw.secrets);
            let headers = self.headers(&at, &w.headers, &raw.secrets);
            let signing_secrets = self.signing_keys(&at, &w.signing_secrets, &raw.secrets);

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
                tls,
                signing_secrets,
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

    pub(super) fn timeout(&mut self, at: &str, value: Option<&str>, default: Duration) -> Duration {
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

    pub(super) fn max_body(&mut self, at: &str, value: Option<usize>, default: usize) -> usize {
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
    pub(super) fn at_most_longest_wait(&mut self, at: &str, d: Duration) {
        if d > LONGEST_WAIT {
            self.error(
                at.to_owned(),
                format!("must be at most {}", format_duration(LONGEST_WAIT)),
            );
        }
    }

    pub(super) fn retry(&mut self, at: &str, raw: &RawRetry) -> RetryPolicy {
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

    pub(super) fn circuit(&mut self, at: &str, raw: &RawCircuit) -> CircuitConfig {
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

    pub(super) fn globs(&mut self, at: &str, events: &[String]) -> GlobSet {
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

    pub(super) fn filter(&mut self, at: &str, filter: &BTreeMap<String, Value>) -> Vec<Condition> {
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
    /// `signing_secrets`: declared names, each once, with windows whose
    /// ends are RFC 3339 times in order.
    pub(super) fn signing_keys(
        &mut self,
        at: &str,
        raw: &[RawSigningKey],
        secrets: &BTreeMap<String, SecretRef>,
    ) -> Vec<SigningKeyRef> {
        let mut keys = Vec::new();
        for (i, entry) in raw.iter().enumerate() {
            let at = format!("{at}.signing_secrets[{i}]");
            let (name, not_before, not_after) = match entry {
                RawSigningKey::Name(name) => (name.clone(), None, None),
                RawSigningKey::Windowed(w) => (
                    w.secret.clone(),
                    w.not_before.as_deref(),
                    w.not_after.as_deref(),
                ),
            };
            if !secrets.contains_key(&name) {
                self.error(
                    at.clone(),
                    format!("unknown secret {name:?}: declare it in [secrets]"),
                );
            }
            let mut time = |key: &str, value: Option<&str>| {
                let value = value?;
                match DateTime::parse_from_rfc3339(value) {
                    Ok(t) => Some(t.with_timezone(&Utc)),
                    Err(_) => {
                        self.error(
                            format!("{at}.{key}"),
                            format!(
                                "{value:?} is not an RFC 3339 time such as \"2027-01-01T00:00:00Z\""
                            ),
                        );
                        None
                    }
                }
            };
            let not_before = time("not_before", not_before);
            let not_after = time("not_after", not_after);
            if let (Some(b), Some(a)) = (not_before, not_after)
                && a <= b
            {
                self.error(format!("{at}.not_after"), "must be later than not_before");
            }
            keys.push(SigningKeyRef {
                name,
                not_before,
                not_after,
            });
        }
        if keys.iter().map(|k| &k.name).collect::<BTreeSet<_>>().len() != keys.len() {
            self.error(format!("{at}.signing_secrets"), "lists a secret twice");
        }
        keys
    }

    pub(super) fn url_shape(&mut self, at: &str, url: &str) {
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

    pub(super) fn headers(
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

    pub(super) fn compile(&mut self, engines: &mut Engines, at: &str, w: &Webhook) {
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

pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
