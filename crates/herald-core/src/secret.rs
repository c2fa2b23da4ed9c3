//! Secrets by reference: webhook files name where a secret lives (an
//! environment variable or a file), and the caller resolves it at send time.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Where a secret lives. Webhook files hold only these references, never
/// the secret itself. In TOML: `{ env = "CRM_API_KEY" }` or
/// `{ file = "/run/secrets/crm_api_key" }`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SecretRef {
    /// The value of an environment variable.
    Env(String),
    /// The contents of a file, with one trailing newline removed.
    File(PathBuf),
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "env:{name}"),
            SecretRef::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

/// A resolved secret value. Its `Debug` never shows the value, so it can sit
/// inside structs that get logged.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(String);

impl SecretValue {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself. Call this only where the value is put on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Why a secret could not be resolved. Messages name the reference, never
/// the value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SecretError {
    #[error("unknown secret {name:?}: not declared in [secrets]")]
    Unknown { name: String },
    #[error("secret {reference} is not set")]
    NotFound { reference: SecretRef },
    #[error("secret {reference} cannot be read: {reason}")]
    Unreadable {
        reference: SecretRef,
        reason: String,
    },
    #[error("secret {name:?} is invalid: {reason}")]
    Invalid { name: String, reason: String },
}

/// Resolves secret references. The library never reads the environment or
/// files itself; each service passes an implementation in (tests pass a map).
pub trait SecretSource {
    fn resolve(&self, reference: &SecretRef) -> Result<SecretValue, SecretError>;
}

impl<F> SecretSource for F
where
    F: Fn(&SecretRef) -> Result<SecretValue, SecretError>,
{
    fn resolve(&self, reference: &SecretRef) -> Result<SecretValue, SecretError> {
        self(reference)
    }
}

/// A fixed map of references to values: for tests and for `herald template
/// render`, which shows secret headers without resolving them.
impl SecretSource for HashMap<SecretRef, String> {
    fn resolve(&self, reference: &SecretRef) -> Result<SecretValue, SecretError> {
        self.get(reference)
            .map(|v| SecretValue::new(v.clone()))
            .ok_or_else(|| SecretError::NotFound {
                reference: reference.clone(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_the_value() {
        let v = SecretValue::new("hunter2");
        assert_eq!(format!("{v:?}"), "Secret(***)");
        assert_eq!(v.expose(), "hunter2");
    }

    #[test]
    fn references_display_where_not_what() {
        assert_eq!(SecretRef::Env("API_KEY".into()).to_string(), "env:API_KEY");
        assert_eq!(
            SecretRef::File("/run/secrets/k".into()).to_string(),
            "file:/run/secrets/k"
        );
        let err = SecretError::NotFound {
            reference: SecretRef::Env("API_KEY".into()),
        };
        assert_eq!(err.to_string(), "secret env:API_KEY is not set");
    }

    #[test]
    fn closures_and_maps_are_sources() {
        let source = |r: &SecretRef| match r {
            SecretRef::Env(n) if n == "A" => Ok(SecretValue::new("a")),
            other => Err(SecretError::NotFound {
                reference: other.clone(),
            }),
        };
        assert_eq!(
            source
                .resolve(&SecretRef::Env("A".into()))
                .unwrap()
                .expose(),
            "a"
        );
        assert!(source.resolve(&SecretRef::Env("B".into())).is_err());
        let map = HashMap::from([(SecretRef::Env("A".into()), "x".to_owned())]);
        assert_eq!(
            map.resolve(&SecretRef::Env("A".into())).unwrap().expose(),
            "x"
        );
    }

    #[test]
    fn references_parse_from_toml() {
        #[derive(Deserialize)]
        struct T {
            a: SecretRef,
            b: SecretRef,
        }
        let t: T = toml::from_str("a = { env = \"X\" }\nb = { file = \"/s/y\" }").unwrap();
        assert_eq!(t.a, SecretRef::Env("X".into()));
        assert_eq!(t.b, SecretRef::File("/s/y".into()));
        assert!(toml::from_str::<T>("a = { inline = \"X\" }\nb = { env = \"Y\" }").is_err());
    }
}
