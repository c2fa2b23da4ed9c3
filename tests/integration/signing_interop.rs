//! Herald's Standard Webhooks signatures verify with the official Python
//! library (`standardwebhooks` on PyPI), and its signatures verify with ours.
//!
//! The interpreter comes from `HERALD_PY` (`scripts/test` builds a venv).
//! Without it the test skips loudly, or fails under `HERALD_REQUIRE_INFRA=1`.

use std::time::Duration;

use chrono::Utc;
use herald_core::signing::{self, SigningSecret};
use herald_tests::{python, run_python};
use serde_json::{Value, json};

/// Reads cases as JSON on stdin and answers one result per case. A case
/// either asks Python to verify our signature, or to sign for us.
const SCRIPT: &str = r#"
import base64, json, sys
from datetime import datetime, timezone
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
out = []
for case in json.load(sys.stdin):
    body = base64.b64decode(case["body_b64"]).decode("utf-8")
    if case["op"] == "verify":
        headers = {"webhook-id": case["id"], "webhook-timestamp": str(case["timestamp"]),
                   "webhook-signature": case["signature"]}
        try:
            Webhook(case["secret"]).verify(body, headers, json_parse=False)
            out.append("ok")
        except WebhookVerificationError as e:
            out.append("rejected: " + str(e))
    else:
        ts = datetime.fromtimestamp(case["timestamp"], tz=timezone.utc)
        out.append(Webhook(case["secret"]).sign(case["id"], ts, body))
print(json.dumps(out))
"#;

fn run(py: &str, cases: &[Value]) -> Vec<String> {
    serde_json::from_value(run_python(py, SCRIPT, &Value::from(cases.to_vec())))
        .expect("python answers a list of strings")
}

fn b64(bytes: &[u8]) -> String {
    use base64_engine::encode;
    encode(bytes)
}

/// A tiny standard base64 encoder, so this test needs no extra dev-dependency.
mod base64_engine {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(bytes: &[u8]) -> String {
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

#[test]
fn herald_signatures_verify_with_the_python_reference_library() {
    let Some(py) = python("signing_interop", "standardwebhooks", "standardwebhooks") else {
        return;
    };
    let current = SigningSecret::from_bytes((0u8..32).collect::<Vec<_>>());
    let next = SigningSecret::from_bytes(vec![0xA5u8; 24]);
    let now = Utc::now().timestamp();
    let bodies: [&str; 4] = [
        r#"{"loanAccountId":"LN-42","amount":"1234.56","currency":"EUR"}"#,
        "",
        "{\"name\":\"Zoë O'Brien ✓ 🏦\",\"note\":\"line\\nbreak\"}",
        "<posting><amount currency=\"KWD\">1.234</amount></posting>",
    ];

    let mut cases = Vec::new();
    let mut expected = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let id = format!("4b0f5c1e-7d1a-5e55-9c2f-00000000000{i}");
        let secrets = if i % 2 == 0 {
            vec![current.clone()]
        } else {
            vec![current.clone(), next.clone()]
        };
        let h = signing::sign(&id, now, body.as_bytes(), &secrets);
        // Every secret of a rotation verifies on its own.
        for secret in &secrets {
            cases.push(json!({
                "op": "verify", "secret": secret.to_whsec(), "id": id, "timestamp": now,
                "signature": h.signature, "body_b64": b64(body.as_bytes()),
            }));
            expected.push(true);
        }
        // A tampered body is rejected.
        let tampered = format!("{body} ");
        cases.push(json!({
            "op": "verify", "secret": current.to_whsec(), "id": id, "timestamp": now,
            "signature": h.signature, "body_b64": b64(tampered.as_bytes()),
        }));
        expected.push(false);
    }
    // A secret that signed nothing is rejected.
    let h = signing::sign("msg", now, b"{}", std::slice::from_ref(&current));
    cases.push(json!({
        "op": "verify", "secret": next.to_whsec(), "id": "msg", "timestamp": now,
        "signature": h.signature, "body_b64": b64(b"{}"),
    }));
    expected.push(false);

    let results = run(&py, &cases);
    assert_eq!(results.len(), expected.len());
    for (i, (result, ok)) in results.iter().zip(expected).enumerate() {
        if ok {
            assert_eq!(result, "ok", "case {i}: {}", cases[i]);
        } else {
            assert!(
                result.starts_with("rejected"),
                "case {i} should be rejected: {result}"
            );
        }
    }
}

#[test]
fn python_signatures_verify_with_herald() {
    let Some(py) = python("signing_interop", "standardwebhooks", "standardwebhooks") else {
        return;
    };
    let secret = SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    let now = Utc::now();
    let body = "{\"amount\":\"12.30 €\"}";
    let cases = [json!({
        "op": "sign", "secret": secret.to_whsec(), "id": "msg_1", "timestamp": now.timestamp(),
        "body_b64": b64(body.as_bytes()),
    })];
    let signature = run(&py, &cases).remove(0);
    assert_eq!(
        signature,
        signing::sign(
            "msg_1",
            now.timestamp(),
            body.as_bytes(),
            std::slice::from_ref(&secret)
        )
        .signature
    );
    signing::verify(
        std::slice::from_ref(&secret),
        "msg_1",
        &now.timestamp().to_string(),
        &signature,
        body.as_bytes(),
        now,
        Duration::from_secs(300),
    )
    .unwrap();
    assert!(
        signing::verify(
            &[secret],
            "msg_1",
            &now.timestamp().to_string(),
            &signature,
            b"{\"amount\":\"99.99 \xe2\x82\xac\"}",
            now,
            Duration::from_secs(300),
        )
        .is_err()
    );
}

/// Verifies `v1a` with an ed25519 implementation that is not Herald's
/// (Python `cryptography`), from the `whpk_` public key alone, following
/// the spec's signed content `id.timestamp.body`; and the `v1` signature
/// of the same dual-signed header with the official library.
const V1A_SCRIPT: &str = r#"
import base64, json, sys
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
out = []
for case in json.load(sys.stdin):
    body = base64.b64decode(case["body_b64"])
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(case["public_key"].removeprefix("whpk_")))
    content = case["id"].encode() + b"." + str(case["timestamp"]).encode() + b"." + body
    v1a = [s.split(",", 1)[1] for s in case["signature"].split(" ") if s.startswith("v1a,")]
    verdict = "rejected: no v1a"
    for sig in v1a:
        try:
            public.verify(base64.b64decode(sig), content)
            verdict = "ok"
            break
        except InvalidSignature:
            verdict = "rejected: bad v1a"
    headers = {"webhook-id": case["id"], "webhook-timestamp": str(case["timestamp"]),
               "webhook-signature": case["signature"]}
    try:
        Webhook(case["whsec"]).verify(body.decode("utf-8"), headers)
        v1 = "ok"
    except WebhookVerificationError as e:
        v1 = "rejected: " + str(e)
    out.append(verdict + " / v1 " + v1)
print(json.dumps(out))
"#;

#[test]
fn v1a_signatures_verify_with_an_independent_ed25519_implementation() {
    let Some(py) = python("signing_interop", "cryptography", "cryptography") else {
        return;
    };
    let hmac = SigningSecret::from_bytes((0u8..32).collect::<Vec<_>>());
    let old = SigningSecret::from_ed25519_seed([0x11; 32]).unwrap();
    let new = SigningSecret::parse(
        &SigningSecret::from_ed25519_seed([0x22; 32])
            .unwrap()
            .to_whsec(),
    )
    .unwrap();
    let now = Utc::now().timestamp();
    let body = "{\"name\":\"Zoë O'Brien ✓ 🏦\",\"amount\":\"1234.56\"}";
    // During a migration: v1 and v1a together; during a rotation: two v1a.
    let h = signing::sign(
        "msg_v1a",
        now,
        body.as_bytes(),
        &[hmac.clone(), old.clone(), new.clone()],
    );
    let case = |public: &SigningSecret, body: &str| {
        json!({
            "id": "msg_v1a", "timestamp": now, "signature": h.signature,
            "public_key": public.public_key().unwrap(), "whsec": hmac.to_whsec(),
            "body_b64": b64(body.as_bytes()),
        })
    };
    let stranger = SigningSecret::from_ed25519_seed([0x33; 32]).unwrap();
    let cases = [
        case(&old, body),
        case(&new, body),
        case(&new, &format!("{body} ")),
        case(&stranger, body),
    ];
    let results: Vec<String> =
        serde_json::from_value(run_python(&py, V1A_SCRIPT, &Value::from(cases.to_vec()))).unwrap();
    assert_eq!(results[0], "ok / v1 ok");
    assert_eq!(results[1], "ok / v1 ok");
    assert!(
        results[2].starts_with("rejected: bad v1a / v1 rejected"),
        "{}",
        results[2]
    );
    assert!(
        results[3].starts_with("rejected: bad v1a / v1 ok"),
        "{}",
        results[3]
    );
}
