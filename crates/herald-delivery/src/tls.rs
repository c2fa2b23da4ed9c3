//! TLS identities of the sender: the rustls configuration a webhook's
//! [`TlsMaterial`] asks for (roots, client certificate, server name), and
//! why a handshake failed, as a reason an operator can act on.
//!
//! Verification is always on: there is no configuration that skips it.

use herald_core::TlsMaterial;
use herald_core::webhook::Roots;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore};
use sha2::{Digest, Sha256};

/// A digest of everything that makes a TLS identity: two attempts with the
/// same digest may share connections, two with different ones never do.
pub(crate) type IdentityKey = [u8; 32];

pub(crate) fn identity_key(m: &TlsMaterial) -> IdentityKey {
    let mut h = Sha256::new();
    let mut part = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    part(m.roots.as_str().as_bytes());
    part(
        m.ca_pem
            .as_ref()
            .map_or(&b""[..], |c| c.expose().as_bytes()),
    );
    let (cert, key) = m.client.as_ref().map_or((&b""[..], &b""[..]), |(c, k)| {
        (c.expose().as_bytes(), k.expose().as_bytes())
    });
    part(cert);
    part(key);
    part(m.server_name.as_deref().unwrap_or("").as_bytes());
    h.finalize().into()
}

/// The rustls client configuration of `m`, and the name to verify when it
/// is not the URL's host. Errors name the setting, never key material.
pub(crate) fn client_config(
    m: &TlsMaterial,
) -> Result<(ClientConfig, Option<ServerName<'static>>), String> {
    let mut roots = RootCertStore::empty();
    if matches!(m.roots, Roots::Public | Roots::Both) {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if let Some(ca) = &m.ca_pem {
        let certs = certificates(ca.expose(), "tls.ca")?;
        let (added, _ignored) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err("tls.ca: no usable CA certificate in the bundle".into());
        }
    }
    let builder = ClientConfig::builder().with_root_certificates(roots);
    let config = match &m.client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = certificates(cert.expose(), "tls.client_cert")?;
            // The key's parse error could quote it: say only what is wrong.
            let key = PrivateKeyDer::from_pem_slice(key.expose().as_bytes())
                .map_err(|_| "tls.client_key: no PEM private key".to_owned())?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("tls.client_cert and tls.client_key: {e}"))?
        }
    };
    let name = match &m.server_name {
        None => None,
        Some(n) => Some(
            ServerName::try_from(n.clone())
                .map_err(|_| format!("tls.server_name {n:?} is no DNS name or IP address"))?,
        ),
    };
    Ok((config, name))
}

fn certificates(pem: &str, setting: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{setting}: unreadable PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{setting}: no PEM certificate"));
    }
    Ok(certs)
}

/// Why a handshake failed, as a stable reason: the attempt's error starts
/// with `tls <reason>:`.
pub(crate) fn reason(e: &rustls::Error) -> &'static str {
    use rustls::Error as E;
    match e {
        E::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => "unknown_ca",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "certificate_expired"
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "certificate_not_yet_valid"
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "name_mismatch"
            }
            CertificateError::Revoked => "certificate_revoked",
            _ => "invalid_certificate",
        },
        E::AlertReceived(a) => alert_reason(*a),
        _ => "handshake_failed",
    }
}

/// The receiver's alerts about the certificate Herald presented. In TLS 1.3
/// the receiver judges it after the handshake, so the alert comes with the
/// first read.
fn alert_reason(a: AlertDescription) -> &'static str {
    match a {
        AlertDescription::CertificateRequired => "client_certificate_required",
        AlertDescription::CertificateExpired => "client_certificate_expired",
        AlertDescription::UnknownCA
        | AlertDescription::BadCertificate
        | AlertDescription::CertificateUnknown
        | AlertDescription::CertificateRevoked
        | AlertDescription::UnsupportedCertificate
        | AlertDescription::AccessDenied => "client_certificate_refused",
        _ => "handshake_failed",
    }
}

/// The reason of an alert known only by its text: HTTP/2 keeps an I/O
/// error's message, not the rustls error inside it.
pub(crate) fn reason_in_text(text: &str) -> Option<&'static str> {
    const ALERTS: [AlertDescription; 8] = [
        AlertDescription::CertificateRequired,
        AlertDescription::CertificateExpired,
        AlertDescription::UnknownCA,
        AlertDescription::BadCertificate,
        AlertDescription::CertificateUnknown,
        AlertDescription::CertificateRevoked,
        AlertDescription::UnsupportedCertificate,
        AlertDescription::AccessDenied,
    ];
    let name = text.split("received fatal alert: ").nth(1)?;
    let name = name.split(|c: char| !c.is_ascii_alphanumeric()).next()?;
    Some(
        ALERTS
            .into_iter()
            .find(|a| format!("{a:?}") == name)
            .map_or("handshake_failed", alert_reason),
    )
}
