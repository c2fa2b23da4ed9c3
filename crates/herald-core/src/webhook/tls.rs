//! A webhook's TLS identity (`[webhooks.tls]`): which roots verify the
//! receiver, an optional client certificate for mutual TLS, and an optional
//! name to verify instead of the URL's host. Verification itself can never
//! be turned off. Certificates and keys are secret references, resolved at
//! send time like secret headers, so a file replaced on disk is used by the
//! next attempt without a restart.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::Webhook;
use super::loader::Loader;
use crate::secret::{SecretError, SecretRef, SecretSource, SecretValue};

/// Which trust anchors verify the receiver's certificate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Roots {
    /// The public web PKI (Mozilla's roots, built in).
    #[default]
    Public,
    /// Only the webhook's `ca` bundle: a private CA.
    Custom,
    /// The public roots and the webhook's `ca` bundle.
    Both,
}

impl Roots {
    pub fn as_str(self) -> &'static str {
        match self {
            Roots::Public => "public",
            Roots::Custom => "custom",
            Roots::Both => "both",
        }
    }
}

/// `[webhooks.tls]` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) roots: Option<String>,
    /// A `[secrets]` name: a PEM bundle of extra trust anchors.
    pub(super) ca: Option<String>,
    /// A `[secrets]` name: the client certificate chain (PEM).
    pub(super) client_cert: Option<String>,
    /// A `[secrets]` name: the client certificate's private key (PEM).
    pub(super) client_key: Option<String>,
    pub(super) server_name: Option<String>,
}

/// A webhook's validated TLS settings; the default is the public roots,
/// no client certificate and the URL's host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    pub roots: Roots,
    /// Name of the `[secrets]` entry holding the extra trust anchors.
    pub ca: Option<String>,
    /// Names of the `[secrets]` entries of the client certificate and key.
    pub client: Option<ClientIdentity>,
    /// Verify the receiver's certificate for this name, not the URL's host.
    pub server_name: Option<String>,
}

/// Names of the secrets that make up a client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pub cert: String,
    pub key: String,
}

impl TlsSettings {
    /// The default: what every webhook without `[webhooks.tls]` uses.
    pub fn is_default(&self) -> bool {
        *self == TlsSettings::default()
    }
}

/// A webhook's TLS identity with its secrets resolved, for the sender.
/// `Debug` shows no certificate or key.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsMaterial {
    pub roots: Roots,
    pub ca_pem: Option<SecretValue>,
    /// The client certificate chain and its key, both PEM.
    pub client: Option<(SecretValue, SecretValue)>,
    pub server_name: Option<String>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("roots", &self.roots)
            .field("ca", &self.ca_pem.is_some())
            .field("client_certificate", &self.client.is_some())
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl super::Webhooks {
    /// The webhook's TLS identity with its secrets resolved; `None` for the
    /// default identity (public roots, no client certificate).
    pub fn tls_material(
        &self,
        webhook: &Webhook,
        source: &dyn SecretSource,
    ) -> Result<Option<TlsMaterial>, SecretError> {
        let tls = &webhook.tls;
        if tls.is_default() {
            return Ok(None);
        }
        let resolve = |name: &String| self.resolve_secret(name, source);
        Ok(Some(TlsMaterial {
            roots: tls.roots,
            ca_pem: tls.ca.as_ref().map(resolve).transpose()?,
            client: match &tls.client {
                Some(c) => Some((resolve(&c.cert)?, resolve(&c.key)?)),
                None => None,
            },
            server_name: tls.server_name.clone(),
        }))
    }
}

impl Loader {
    /// Validate `[webhooks.tls]`; every problem is reported at its key.
    pub(super) fn tls(
        &mut self,
        at: &str,
        url: &str,
        raw: Option<&RawTls>,
        secrets: &BTreeMap<String, SecretRef>,
    ) -> TlsSettings {
        let Some(raw) = raw else {
            return TlsSettings::default();
        };
        let at = format!("{at}.tls");
        if url.starts_with("http://") {
            self.error(
                at.clone(),
                "TLS settings need an https:// url (the url is http://)",
            );
        }
        let mut secret = |key: &str, name: &Option<String>| -> Option<String> {
            let name = name.as_ref()?;
            if !secrets.contains_key(name) {
                self.error(
                    format!("{at}.{key}"),
                    format!("unknown secret {name:?}: declare it in [secrets]"),
                );
            }
            Some(name.clone())
        };
        let ca = secret("ca", &raw.ca);
        let cert = secret("client_cert", &raw.client_cert);
        let key = secret("client_key", &raw.client_key);
        let roots = match raw.roots.as_deref() {
            None if ca.is_some() => Roots::Both,
            None | Some("public") => Roots::Public,
            Some("custom") => Roots::Custom,
            Some("both") => Roots::Both,
            Some(other) => {
                self.error(
                    format!("{at}.roots"),
                    format!("unknown roots {other:?}: use \"public\", \"custom\" or \"both\""),
                );
                Roots::Public
            }
        };
        match (roots, &ca) {
            (Roots::Custom | Roots::Both, None) => self.error(
                format!("{at}.ca"),
                format!(
                    "roots = {:?} needs a ca bundle (a [secrets] name)",
                    roots.as_str()
                ),
            ),
            (Roots::Public, Some(_)) => self.error(
                format!("{at}.roots"),
                "roots = \"public\" ignores the ca bundle: use \"custom\" or \"both\"",
            ),
            _ => {}
        }
        let client = match (cert, key) {
            (Some(cert), Some(key)) => Some(ClientIdentity { cert, key }),
            (None, None) => None,
            (Some(_), None) => {
                self.error(format!("{at}.client_key"), "client_cert needs a client_key");
                None
            }
            (None, Some(_)) => {
                self.error(
                    format!("{at}.client_cert"),
                    "client_key needs a client_cert",
                );
                None
            }
        };
        let server_name = raw.server_name.clone();
        if let Some(name) = &server_name {
            let valid = !name.is_empty()
                && name.len() <= 253
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
            if !valid {
                self.error(
                    format!("{at}.server_name"),
                    "must be a DNS name or an IP address",
                );
            }
        }
        TlsSettings {
            roots,
            ca,
            client,
            server_name,
        }
    }
}
