//! Standard Webhooks signing (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature`) with symmetric (`v1`, HMAC-SHA256, `whsec_`) and
//! asymmetric (`v1a`, ed25519, `whsk_` / `whpk_`) keys, and the matching
//! verification for receivers.
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
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use sha2::{Digest, Sha256};
use thiserror::Error;

type HmacSha256 = Hmac<Sha256>;

pub const HEADER_ID: &str = "webhook-id";
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
pub const HEADER_SIGNATURE: &str = "webhook-signature";

/// The prefix of Standard Webhooks symmetric secrets (`v1`, HMAC-SHA256).
pub const SECRET_PREFIX: &str = "whsec_";
/// The prefix of Standard Webhooks asymmetric secret keys (`v1a`, ed25519).
pub const ASYMMETRIC_SECRET_PREFIX: &str = "whsk_";
/// The prefix of Standard Webhooks public keys, for receivers.
pub const PUBLIC_KEY_PREFIX: &str = "whpk_";

/// Default verification tolerance of the spec: five minutes either way.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

const VERSION: &str = "v1";
const VERSION_ASYMMETRIC: &str = "v1a";

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

/// A signing key: a `whsec_` HMAC secret (`v1` signatures) or a `whsk_`
/// ed25519 secret key (`v1a`). `Debug` prints `Secret(***)`.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret(Key);

#[derive(Clone, PartialEq, Eq)]
enum Key {
    Hmac(Vec<u8>),
    Ed25519 { seed: [u8; 32], public: [u8; 32] },
}

impl SigningSecret {
    /// Parse `whsec_<base64>` (the prefix is optional, as in the reference
    /// libraries; the key must decode to 24..=64 bytes, the spec asks for
    /// at least 24) or `whsk_<base64>` (an ed25519 secret key: its 32-byte
    /// seed, or the 64 bytes of seed and public key).
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        if let Some(encoded) = text.strip_prefix(ASYMMETRIC_SECRET_PREFIX) {
            let key = decode(encoded, "whsk_")?;
            let seed: [u8; 32] = key
                .get(..32)
                .and_then(|s| s.try_into().ok())
                .filter(|_| key.len() == 32 || key.len() == 64)
                .ok_or_else(|| {
                    SigningError::InvalidSecret(format!(
                        "whsk_ key is {} bytes, expected 32 (seed) or 64 (seed and public key)",
                        key.len()
                    ))
                })?;
            let secret = Self::from_ed25519_seed(seed)?;
            if key.len() == 64 && secret.public_bytes() != Some(&key[32..]) {
                return Err(SigningError::InvalidSecret(
                    "whsk_ key: its public half does not belong to its seed".into(),
                ));
            }
            return Ok(secret);
        }
        let encoded = text.strip_prefix(SECRET_PREFIX).unwrap_or(text);
        let key = decode(encoded, "whsec_")?;
        if !(24..=64).contains(&key.len()) {
            return Err(SigningError::InvalidSecret(format!(
                "key is {} bytes, expected 24 to 64",
                key.len()
            )));
        }
        Ok(Self(Key::Hmac(key)))
    }

    /// A symmetric secret from raw key bytes (e.g. freshly generated).
    pub fn from_bytes(key: impl Into<Vec<u8>>) -> Self {
        Self(Key::Hmac(key.into()))
    }

    /// An ed25519 secret key from its 32-byte seed.
    pub fn from_ed25519_seed(seed: [u8; 32]) -> Result<Self> {
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|_| SigningError::InvalidSecret("not an ed25519 seed".into()))?;
        let public: [u8; 32] = pair
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| SigningError::InvalidSecret("unexpected ed25519 public key".into()))?;
        Ok(Self(Key::Ed25519 { seed, public }))
    }

    /// The serialized secret, to hand to a receiver (`whsec_…`) or to keep
    /// in a secret store (`whsk_…`, seed and public key).
    pub fn to_whsec(&self) -> String {
        match &self.0 {
            Key::Hmac(key) => format!("{SECRET_PREFIX}{}", BASE64.encode(key)),
            Key::Ed25519 { seed, public } => {
                let both: Vec<u8> = seed.iter().chain(public).copied().collect();
                format!("{ASYMMETRIC_SECRET_PREFIX}{}", BASE64.encode(both))
            }
        }
    }

    /// For an ed25519 key, the public key receivers verify with
    /// (`whpk_<base64>`); `None` for an HMAC secret, which has none.
    pub fn public_key(&self) -> Option<String> {
        self.public_bytes()
            .map(|p| format!("{PUBLIC_KEY_PREFIX}{}", BASE64.encode(p)))
    }

    /// For an ed25519 key, a stable id of its public key: the first 8 bytes
    /// of its SHA-256, in hex.
    pub fn key_id(&self) -> Option<String> {
        let digest = Sha256::digest(self.public_bytes()?);
        Some(digest[..8].iter().map(|b| format!("{b:02x}")).collect())
    }

    fn public_bytes(&self) -> Option<&[u8]> {
        match &self.0 {
            Key::Ed25519 { public, .. } => Some(public),
            Key::Hmac(_) => None,
        }
    }

    /// `v1,<base64>` or `v1a,<base64>` for this message.
    fn signature(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        match &self.0 {
            Key::Hmac(key) => {
                let tag = mac(key, msg_id, timestamp, body).finalize().into_bytes();
                format!("{VERSION},{}", BASE64.encode(tag))
            }
            Key::Ed25519 { seed, .. } => {
                // The seed was checked when the key was made.
                let pair = Ed25519KeyPair::from_seed_unchecked(seed).expect("a checked seed");
                let sig = pair.sign(&signed_content(msg_id, timestamp, body));
                format!("{VERSION_ASYMMETRIC},{}", BASE64.encode(sig.as_ref()))
            }
        }
    }

    /// Whether one of `candidates` (`(version, decoded signature)`) is this
    /// key's signature of the message. HMAC tags compare in constant time.
    fn matches(&self, candidates: &[(&str, Vec<u8>)], msg_id: &str, ts: i64, body: &[u8]) -> bool {
        match &self.0 {
            Key::Hmac(key) => {
                let mac = mac(key, msg_id, ts, body);
                candidates
                    .iter()
                    .filter(|(v, _)| *v == VERSION)
                    .any(|(_, sig)| mac.clone().verify_slice(sig).is_ok())
            }
            Key::Ed25519 { public, .. } => {
                let key = UnparsedPublicKey::new(&ED25519, public);
                let content = signed_content(msg_id, ts, body);
                candidates
                    .iter()
                    .filter(|(v, _)| *v == VERSION_ASYMMETRIC)
                    .any(|(_, sig)| key.verify(&content, sig).is_ok())
            }
        }
    }
}

/// The base64 of a secret; the decoder's own message names the offending
/// byte and where it is (secret material), so say only what is expected.
fn decode(encoded: &str, prefix: &str) -> Result<Vec<u8>> {
    BASE64.decode(encoded).map_err(|_| {
        SigningError::InvalidSecret(format!("expected {prefix}<base64>: not valid base64"))
    })
}

fn mac(key: &[u8], msg_id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(key).expect("hmac takes any key length");
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// What is signed: `{msg_id}.{timestamp}.{body}`.
fn signed_content(msg_id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    let ts = timestamp.to_string();
    let mut content = Vec::with_capacity(msg_id.len() + ts.len() + body.len() + 2);
    content.extend_from_slice(msg_id.as_bytes());
    content.push(b'.');
    content.extend_from_slice(ts.as_bytes());
    content.push(b'.');
    content.extend_from_slice(body);
    content
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
        .map(|s| s.signature(msg_id, timestamp, body))
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
    let candidates: Vec<(&str, Vec<u8>)> = signature_header
        .split(' ')
        .filter_map(|part| part.split_once(','))
        .filter_map(|(version, sig)| Some((version, BASE64.decode(sig).ok()?)))
        .collect();
    if secrets
        .iter()
        .any(|secret| secret.matches(&candidates, msg_id, ts, body))
    {
        return Ok(());
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

    /// RFC 8032, 7.1, test 2: a known seed, public key and signature.
    const RFC_SEED: &str = "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb";
    const RFC_PUBLIC: &str = "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c";
    const RFC_SIG: &str = "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00";

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn ed25519_keys_sign_v1a_as_rfc_8032_says() {
        let seed: [u8; 32] = hex(RFC_SEED).try_into().unwrap();
        let key = SigningSecret::from_ed25519_seed(seed).unwrap();
        assert_eq!(
            key.public_key().unwrap(),
            format!("whpk_{}", BASE64.encode(hex(RFC_PUBLIC)))
        );
        // RFC 8032 signs the single byte 0x72; here the signed content is
        // `id.ts.body`, so sign that byte's worth by hand and compare.
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed).unwrap();
        assert_eq!(pair.sign(&[0x72]).as_ref(), &hex(RFC_SIG)[..]);

        // The serialized forms round-trip: 64 bytes (seed and public) or 32.
        let whsk = key.to_whsec();
        assert!(whsk.starts_with("whsk_"));
        assert_eq!(SigningSecret::parse(&whsk).unwrap(), key);
        let seed_only = format!("whsk_{}", BASE64.encode(seed));
        assert_eq!(SigningSecret::parse(&seed_only).unwrap(), key);
        assert_eq!(key.key_id().unwrap().len(), 16);
        assert_eq!(SigningSecret::from_bytes(vec![1; 32]).public_key(), None);

        // A mismatched public half and a wrong length are refused, quoting
        // no key byte.
        let mut forged = seed.to_vec();
        forged.extend_from_slice(&[0u8; 32]);
        let err = SigningSecret::parse(&format!("whsk_{}", BASE64.encode(&forged))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid signing secret: whsk_ key: its public half does not belong to its seed"
        );
        let err = SigningSecret::parse(&format!("whsk_{}", BASE64.encode([1u8; 40]))).unwrap_err();
        assert!(err.to_string().contains("40 bytes"), "{err}");
        let err = SigningSecret::parse("whsk_!!!!").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid signing secret: expected whsk_<base64>: not valid base64"
        );
    }

    #[test]
    fn v1_and_v1a_together_each_verify_with_their_own_key() {
        let hmac = SigningSecret::from_bytes(vec![5u8; 32]);
        let ed = SigningSecret::from_ed25519_seed([6u8; 32]).unwrap();
        let h = sign("msg_1", 500, b"{\"a\":1}", &[hmac.clone(), ed.clone()]);
        let parts: Vec<&str> = h.signature.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert!(
            parts[0].starts_with("v1,") && parts[1].starts_with("v1a,"),
            "{parts:?}"
        );
        for key in [&hmac, &ed] {
            verify(
                std::slice::from_ref(key),
                "msg_1",
                "500",
                &h.signature,
                b"{\"a\":1}",
                at(500),
                DEFAULT_TOLERANCE,
            )
            .unwrap();
        }
        // A v1a signature over other content, or by another key, fails.
        let other = SigningSecret::from_ed25519_seed([7u8; 32]).unwrap();
        for (key, body) in [(&ed, &b"{\"a\":2}"[..]), (&other, &b"{\"a\":1}"[..])] {
            assert_eq!(
                verify(
                    std::slice::from_ref(key),
                    "msg_1",
                    "500",
                    &h.signature,
                    body,
                    at(500),
                    DEFAULT_TOLERANCE
                ),
                Err(SigningError::NoMatchingSignature)
            );
        }
        assert!(!format!("{ed:?}").contains("whsk"));
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
