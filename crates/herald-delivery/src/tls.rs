//! TLS identities of the sender: the rustls configuration a webhook's
//! [`TlsMaterial`] asks for (roots, client certificate, server name), why a
//! handshake failed, as a reason an operator can act on, and when a client
//! certificate expires.
//!
//! Verification is always on: there is no configuration that skips it.

use chrono::{DateTime, TimeZone, Utc};
use herald_core::webhook::Roots;
use herald_core::{SecretSource, TlsMaterial, Webhook, Webhooks};
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

/// The default identity every webhook without `[webhooks.tls]` uses: the
/// public roots, no client certificate.
pub(crate) fn default_config() -> ClientConfig {
    ClientConfig::builder()
        .with_root_certificates(public_roots())
        .with_no_client_auth()
}

/// Mozilla's roots, built in.
fn public_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    roots
}

/// The rustls client configuration of `m`, and the name to verify when it
/// is not the URL's host. Errors name the setting, never key material.
pub(crate) fn client_config(
    m: &TlsMaterial,
) -> Result<(ClientConfig, Option<ServerName<'static>>), String> {
    let mut roots = match m.roots {
        Roots::Public | Roots::Both => public_roots(),
        Roots::Custom => RootCertStore::empty(),
    };
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

/// When the client certificate of `webhook` expires (`notAfter` of the
/// first certificate of its chain): `None` without a client certificate,
/// an error naming the setting when it cannot be read. The metric
/// `herald_delivery_client_certificate_days_left` and `herald template
/// check` read it.
pub fn client_certificate_not_after(
    webhooks: &Webhooks,
    webhook: &Webhook,
    secrets: &dyn SecretSource,
) -> Option<Result<DateTime<Utc>, String>> {
    // Only the certificate: the key and the CA bundle are not needed here.
    let client = webhook.tls.client.as_ref()?;
    Some(
        webhooks
            .resolve_secret(&client.cert, secrets)
            .map_err(|e| e.to_string())
            .and_then(|cert| certificates(cert.expose(), "tls.client_cert"))
            .and_then(|chain| {
                not_after(&chain[0])
                    .ok_or_else(|| "tls.client_cert: no readable validity period".to_owned())
            }),
    )
}

/// The end of a certificate's validity period (`notAfter`), read from its
/// DER: Certificate → TBSCertificate → (version), serial, signature,
/// issuer, validity → notAfter (RFC 5280, 4.1).
pub(crate) fn not_after(der: &[u8]) -> Option<DateTime<Utc>> {
    const SEQUENCE: u8 = 0x30;
    let (cert, _) = expect(der, SEQUENCE)?;
    let (tbs, _) = expect(cert, SEQUENCE)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = element(rest)?.2;
    }
    for _ in 0..3 {
        rest = element(rest)?.2;
    }
    let (validity, _) = expect(rest, SEQUENCE)?;
    let (tag, value, _) = element(element(validity)?.2)?;
    time(tag, value)
}

/// One DER element: its tag, its contents and what follows it.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *input.first()?;
    let first = *input.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | usize::from(*input.get(2 + i)?);
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    Some((tag, input.get(header..end)?, input.get(end..)?))
}

fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (t, value, rest) = element(input)?;
    (t == tag).then_some((value, rest))
}

/// UTCTime (`YYMMDDHHMMSSZ`, years 1950 to 2049) or GeneralizedTime
/// (`YYYYMMDDHHMMSSZ`), the two forms RFC 5280 allows.
fn time(tag: u8, value: &[u8]) -> Option<DateTime<Utc>> {
    let text = std::str::from_utf8(value).ok()?.strip_suffix('Z')?;
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (year, rest) = match (tag, text.len()) {
        (0x17, 12) => {
            let yy: i32 = text[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        (0x18, 14) => (text[..4].parse().ok()?, &text[4..]),
        _ => return None,
    };
    let n = |i: usize| rest[i..i + 2].parse::<u32>().ok();
    Utc.with_ymd_and_hms(year, n(0)?, n(2)?, n(4)?, n(6)?, n(8)?)
        .single()
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, KeyPair, date_time_ymd};

    use super::*;

    fn issued(year: i32, month: u8, day: u8) -> Vec<u8> {
        let mut params = CertificateParams::new(vec!["herald.test".to_owned()]).unwrap();
        params.not_before = date_time_ymd(1975, 1, 1);
        params.not_after = date_time_ymd(year, month, day);
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn not_after_reads_both_time_forms() {
        // UTCTime up to 2049, GeneralizedTime from 2050 (RFC 5280).
        for (y, m, d) in [
            (1999, 12, 31),
            (2026, 12, 2),
            (2049, 12, 31),
            (2050, 1, 1),
            (2400, 2, 29),
        ] {
            let want = Utc
                .with_ymd_and_hms(y, u32::from(m), u32::from(d), 0, 0, 0)
                .unwrap();
            assert_eq!(not_after(&issued(y, m, d)), Some(want), "{y}-{m}-{d}");
        }
    }

    #[test]
    fn not_after_of_anything_else_is_none_not_a_panic() {
        let der = issued(2030, 6, 1);
        for cut in 0..der.len() {
            assert_eq!(not_after(&der[..cut]), None, "cut at {cut}");
        }
        assert_eq!(not_after(b""), None);
        assert_eq!(not_after(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(time(0x17, b"2612020000Z"), None);
        assert_eq!(time(0x18, b"2026130200000Z"), None);
    }

    #[test]
    fn alerts_known_only_by_their_text_keep_their_reason() {
        assert_eq!(
            reason_in_text("received fatal alert: CertificateRequired"),
            Some("client_certificate_required")
        );
        assert_eq!(
            reason_in_text("connection error: received fatal alert: UnknownCA"),
            Some("client_certificate_refused")
        );
        assert_eq!(
            reason_in_text("received fatal alert: DecodeError"),
            Some("handshake_failed")
        );
        assert_eq!(reason_in_text("connection reset by peer"), None);
    }
}
