//! Standard Webhooks signing (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature`) and the matching verification for receivers.
//!
//! Implemented with `hmac` + `sha2` rather than the `standardwebhooks` crate:
//! its `verify` reads the system clock (we need `now` as a parameter), it
//! insists on UTF-8 payloads and it signs with one secret at a time. Its
//! output is cross-checked in the tests, and the Python reference library in
//! `tests/integration/signing_interop.rs`.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;

type HmacSha256 = Hmac<Sha256>;

pub const HEADER_ID: &str = "webhook-id";
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
pub const HEADER_SIGNATURE: &str = "webhook-signature";

/// The prefix of Standard Webhooks secrets.
pub const SECRET_PREFIX: &str = "whsec_";

/// Default verification tolerance of the spec: five minutes either way.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

const VERSION: &str = "v1";

/// Signing and verification failures.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SigningError {
    #[error("invalid signing secret: {0}")]
    InvalidSecret(String),
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("invalid webhook-timestamp {0:?}: expected unix seconds")]
    InvalidTimestamp(String),
    #[error("webhook-timestamp is too old ({age_secs}s, tolerance {tolerance_secs}s)")]
    TimestampTooOld { age_secs: i64, tolerance_secs: u64 },
    #[error(
        "webhook-timestamp is too far in the future ({ahead_secs}s, tolerance {tolerance_secs}s)"
    )]
    TimestampInFuture {
        ahead_secs: i64,
        tolerance_secs: u64,
    },
    #[error("no webhook-signature matches")]
    NoMatchingSignature,
}

pub type Result<T, E = SigningError> = std::result::Result<T, E>;

/// A signing key. `Debug` prints `Secret(***)`.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret(Vec<u8>);

impl SigningSecret {
    /// Parse the `whsec_<base64>` form. The prefix is optional, as in the
    /// reference libraries; the key must decode to 24..=64 bytes (the spec
    /// asks for at least 24).
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        let encoded = text.strip_prefix(SECRET_PREFIX).unwrap_or(text);
        // The decoder's own message names the offending byte and where it
        // is: secret material. Say only what is expected.
        let key = BASE64.decode(encoded).map_err(|_| {
            SigningError::InvalidSecret("expected whsec_<base64>: not valid base64".into())
        })?;
        if !(24..=64).contains(&key.len()) {
            return Err(SigningError::InvalidSecret(format!(
                "key is {} bytes, expected 24 to 64",
                key.len()
            )));
        }
        Ok(Self(key))
    }

    /// A secret from raw key bytes (e.g. freshly generated).
    pub fn from_bytes(key: impl Into<Vec<u8>>) -> Self {
        Self(key.into())
    }

    /// The `whsec_<base64>` form, to hand to a receiver.
    pub fn to_whsec(&self) -> String {
        format!("{SECRET_PREFIX}{}", BASE64.encode(&self.0))
    }

    fn mac(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("hmac takes any key length");
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The three headers of a signed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeaders {
    pub id: String,
    pub timestamp: i64,
    /// Space-separated `v1,<base64>` signatures, one per secret.
    pub signature: String,
}

impl SignatureHeaders {
    /// `(name, value)` pairs, ready to add to a request.
    pub fn to_pairs(&self) -> [(&'static str, String); 3] {
        [
            (HEADER_ID, self.id.clone()),
            (HEADER_TIMESTAMP, self.timestamp.to_string()),
            (HEADER_SIGNATURE, self.signature.clone()),
        ]
    }
}

/// Sign `body` for message `msg_id` (the notification id) at `timestamp`
/// (unix seconds) with every secret, so receivers holding either the old or
/// the new secret accept it during a rotation.
pub fn sign(
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
    secrets: &[SigningSecret],
) -> SignatureHeaders {
    let signature = secrets
        .iter()
        .map(|s| {
            let tag = s.mac(msg_id, timestamp, body).finalize().into_bytes();
            format!("{VERSION},{}", BASE64.encode(tag))
        })
        .collect::<Vec<_>>()
        .join(" ");
    SignatureHeaders {
        id: msg_id.to_owned(),
        timestamp,
        signature,
    }
}

/// Verify a request as a receiver would: the timestamp must be within
/// `tolerance` of `now`, and at least one `v1` signature in the header must
/// match one of `secrets`. Comparison is constant-time.
pub fn verify(
    secrets: &[SigningSecret],
    msg_id: &str,
    timestamp: &str,
    signature_header: &str,
    body: &[u8],
    now: DateTime<Utc>,
    tolerance: Duration,
) -> Result<()> {
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| SigningError::InvalidTimestamp(timestamp.to_owned()))?;
    let tolerance_secs = tolerance.as_secs();
    let tol = i64::try_from(tolerance_secs).unwrap_or(i64::MAX);
    let now = now.timestamp();
    if now.saturating_sub(ts) > tol {
        return Err(SigningError::TimestampTooOld {
            age_secs: now.saturating_sub(ts),
            tolerance_secs,
        });
    }
    if ts.saturating_sub(now) > tol {
        return Err(SigningError::TimestampInFuture {
            ahead_secs: ts.saturating_sub(now),
            tolerance_secs,
        });
    }
    let candidates: Vec<Vec<u8>> = signature_header
        .split(' ')
        .filter_map(|part| part.split_once(','))
        .filter(|(version, _)| *version == VERSION)
        .filter_map(|(_, sig)| BASE64.decode(sig).ok())
        .collect();
    for secret in secrets {
        let mac = secret.mac(msg_id, ts, body);
        for candidate in &candidates {
            // verify_slice compares in constant time.
            if mac.clone().verify_slice(candidate).is_ok() {
                return Ok(());
            }
        }
    }
    Err(SigningError::NoMatchingSignature)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    // The example from the Standard Webhooks spec test vectors.
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TS: i64 = 1614265330;
    const SPEC_BODY: &str = r#"{"test": 2432232314}"#;
    const SPEC_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn at(ts: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(ts, 0).unwrap()
    }

    #[test]
    fn matches_the_spec_test_vector() {
        let secret = SigningSecret::parse(SPEC_SECRET).unwrap();
        let headers = sign(
            SPEC_ID,
            SPEC_TS,
            SPEC_BODY.as_bytes(),
            std::slice::from_ref(&secret),
        );
        assert_eq!(headers.signature, SPEC_SIG);
        verify(
            &[secret],
            SPEC_ID,
            "1614265330",
            SPEC_SIG,
            SPEC_BODY.as_bytes(),
            at(SPEC_TS + 10),
            DEFAULT_TOLERANCE,
        )
        .unwrap();
    }

    #[test]
    fn agrees_with_the_standardwebhooks_crate() {
        let secret = SigningSecret::from_bytes(vec![7u8; 32]);
        let now = Utc::now().timestamp();
        let body = "{\"amount\":\"12.30 €\"}";
        let ours = sign("msg_1", now, body.as_bytes(), std::slice::from_ref(&secret));
        let theirs = standardwebhooks::Webhook::new(&secret.to_whsec()).unwrap();
        assert_eq!(
            theirs.sign("msg_1", now, body.as_bytes()).unwrap(),
            ours.signature
        );
        let mut headers = http::HeaderMap::new();
        for (name, value) in ours.to_pairs() {
            headers.insert(name, value.parse().unwrap());
        }
        theirs.verify(body.as_bytes(), &headers).unwrap();
    }

    #[test]
    fn several_secrets_produce_several_signatures_and_either_verifies() {
        let old = SigningSecret::from_bytes(vec![1u8; 24]);
        let new = SigningSecret::from_bytes(vec![2u8; 32]);
        let h = sign("id", 100, b"body", &[old.clone(), new.clone()]);
        assert_eq!(h.signature.split(' ').count(), 2);
        for s in [old, new] {
            verify(
                &[s],
                "id",
                "100",
                &h.signature,
                b"body",
                at(100),
                DEFAULT_TOLERANCE,
            )
            .unwrap();
        }
        let other = SigningSecret::from_bytes(vec![3u8; 32]);
        assert_eq!(
            verify(
                &[other],
                "id",
                "100",
                &h.signature,
                b"body",
                at(100),
                DEFAULT_TOLERANCE
            ),
            Err(SigningError::NoMatchingSignature)
        );
    }

    #[test]
    fn rejects_tampering_and_stale_or_future_timestamps() {
        let s = SigningSecret::from_bytes(vec![9u8; 32]);
        let h = sign("id", 1000, b"{}", std::slice::from_ref(&s));
        let check = |id: &str, ts: &str, body: &[u8], now: i64| {
            verify(
                std::slice::from_ref(&s),
                id,
                ts,
                &h.signature,
                body,
                at(now),
                DEFAULT_TOLERANCE,
            )
        };
        assert_eq!(
            check("id", "1000", b"{ }", 1000),
            Err(SigningError::NoMatchingSignature)
        );
        assert_eq!(
            check("id2", "1000", b"{}", 1000),
            Err(SigningError::NoMatchingSignature)
        );
        assert_eq!(
            check("id", "1000", b"{}", 1301).unwrap_err().to_string(),
            "webhook-timestamp is too old (301s, tolerance 300s)"
        );
        assert_eq!(
            check("id", "1000", b"{}", 699).unwrap_err().to_string(),
            "webhook-timestamp is too far in the future (301s, tolerance 300s)"
        );
        assert_eq!(
            check("id", "soon", b"{}", 1000).unwrap_err().to_string(),
            "invalid webhook-timestamp \"soon\": expected unix seconds"
        );
        assert!(check("id", "1000", b"{}", 1300).is_ok());
    }

    #[test]
    fn secrets_parse_and_never_print() {
        let s = SigningSecret::parse(SPEC_SECRET).unwrap();
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(s.to_whsec(), SPEC_SECRET);
        // No byte, offset or fragment of the secret in the message.
        for bad in [
            "whsec_!!",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw!",
            "whsec_abc",
            "Zm9v$",
        ] {
            assert_eq!(
                SigningSecret::parse(bad).unwrap_err().to_string(),
                "invalid signing secret: expected whsec_<base64>: not valid base64",
                "{bad}"
            );
        }
        assert_eq!(
            SigningSecret::parse("whsec_c2hvcnQ=")
                .unwrap_err()
                .to_string(),
            "invalid signing secret: key is 5 bytes, expected 24 to 64"
        );
    }

    #[test]
    fn ignores_unknown_signature_versions() {
        let s = SigningSecret::from_bytes(vec![5u8; 32]);
        let h = sign("id", 1, b"x", std::slice::from_ref(&s));
        let v2 = h.signature.replacen("v1,", "v2,", 1);
        assert!(verify(&[s], "id", "1", &v2, b"x", at(1), DEFAULT_TOLERANCE).is_err());
    }
}
