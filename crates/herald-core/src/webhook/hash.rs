//! The definition hash: what a webhook does, independent of formatting.

use super::*;
/// sha256 of the resolved definition, serialised with sorted keys, so the
/// hash changes exactly when what the webhook does changes (including the
/// defaults it inherits), and not with formatting or key order.
pub(super) fn canonical_hash(w: &Webhook, secrets: &BTreeMap<String, SecretRef>) -> String {
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
        "signing_secrets": w.signing_secrets.iter().map(|k| {
            // Windows only when set: a plain list hashes as it always did.
            let mut entry = json!({"name": k.name, "ref": secrets.get(&k.name).map(ToString::to_string)});
            if let Some(b) = k.not_before { entry["not_before"] = json!(b.to_rfc3339()); }
            if let Some(a) = k.not_after { entry["not_after"] = json!(a.to_rfc3339()); }
            entry
        }).collect::<Vec<_>>(),
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
