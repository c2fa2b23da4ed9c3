//! The webhook definitions file as written (TOML), before validation.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::tls::RawTls;
use crate::render::BodyFormat;
use crate::secret::SecretRef;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    #[serde(default)]
    pub(super) defaults: RawDefaults,
    #[serde(default)]
    pub(super) secrets: BTreeMap<String, SecretRef>,
    #[serde(default)]
    pub(super) webhooks: Vec<RawWebhook>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDefaults {
    pub(super) timeout: Option<String>,
    pub(super) max_body_bytes: Option<usize>,
    #[serde(default)]
    pub(super) retry: RawRetry,
    #[serde(default)]
    pub(super) circuit: RawCircuit,
}

/// `[defaults.circuit]` and `[webhooks.circuit]`: the circuit breaker.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCircuit {
    pub(super) enabled: Option<bool>,
    pub(super) window: Option<String>,
    pub(super) failure_threshold: Option<u32>,
    pub(super) failure_ratio: Option<f64>,
    /// A duration, or `"off"`.
    pub(super) slow_threshold: Option<String>,
    pub(super) cooldown: Option<String>,
    pub(super) max_cooldown: Option<String>,
    pub(super) half_open_probes: Option<u32>,
}

impl RawCircuit {
    /// `self` with unset fields taken from `base`.
    pub(super) fn over(&self, base: &RawCircuit) -> RawCircuit {
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
pub(super) struct RawRetry {
    pub(super) max_attempts: Option<u32>,
    pub(super) max_age: Option<String>,
    pub(super) initial_delay: Option<String>,
    pub(super) multiplier: Option<f64>,
    pub(super) max_delay: Option<String>,
    pub(super) jitter: Option<f64>,
    pub(super) retry_after_max: Option<String>,
    pub(super) retry_on: Option<Vec<String>>,
    pub(super) on_gone: Option<String>,
}

impl RawRetry {
    /// `self` with unset fields taken from `base`.
    pub(super) fn over(&self, base: &RawRetry) -> RawRetry {
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
pub(super) struct RawWebhook {
    pub(super) id: String,
    pub(super) description: Option<String>,
    #[serde(default = "yes")]
    pub(super) enabled: bool,
    pub(super) events: Vec<String>,
    #[serde(default)]
    pub(super) filter: BTreeMap<String, Value>,
    pub(super) method: Option<String>,
    pub(super) url: String,
    #[serde(default)]
    pub(super) headers: BTreeMap<String, RawHeader>,
    pub(super) body_format: Option<BodyFormat>,
    pub(super) content_type: Option<String>,
    pub(super) body: String,
    pub(super) timeout: Option<String>,
    pub(super) max_body_bytes: Option<usize>,
    #[serde(default)]
    pub(super) signing_secrets: Vec<RawSigningKey>,
    #[serde(default)]
    pub(super) retry: RawRetry,
    #[serde(default)]
    pub(super) circuit: RawCircuit,
    pub(super) tls: Option<RawTls>,
}

pub(super) fn yes() -> bool {
    true
}

/// An entry of `signing_secrets`: a `[secrets]` name, or one with the
/// window in which it signs.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum RawSigningKey {
    Name(String),
    Windowed(RawWindowedKey),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWindowedKey {
    pub(super) secret: String,
    pub(super) not_before: Option<String>,
    pub(super) not_after: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum RawHeader {
    Template(String),
    Secret(RawSecretHeader),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSecretHeader {
    pub(super) secret: String,
    #[serde(default)]
    pub(super) prefix: String,
}
