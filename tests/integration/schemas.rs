//! Keeps the message schemas in `schemas/json/` honest: real messages built
//! by the code (a delivery job rendered from a webhook definition, a resend
//! command, the Kafka headers Herald writes) must validate against them, and
//! a job that drifts from the wire format must not.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{TimeZone, Utc};
use herald_core::{CloudEvent, DeliveryJob, NotificationId, ResendCommand, Trigger, Webhooks};
use herald_kafka::headers;
use jsonschema::{Draft, Registry, Validator};
use serde_json::{Value, json};

/// The `$id` prefix of every schema in `schemas/json/`.
const BASE: &str = "https://herald.invalid/schemas/json/";
const SCHEMAS: &[&str] = &[
    "delivery-job.schema.json",
    "resend-command.schema.json",
    "retry-headers.schema.json",
    "ingest-dlq-headers.schema.json",
    "dead-letter.schema.json",
];

const WEBHOOKS: &str = r#"
[secrets]
crm_token = { env = "HERALD_TEST_CRM_TOKEN" }
crm_key = { env = "HERALD_TEST_CRM_KEY" }
crm_whsec = { env = "HERALD_TEST_CRM_WHSEC" }

[[webhooks]]
id = "crm-loan-disbursed"
events = ["bank.loan.*"]
method = "POST"
url = "https://crm.example.com/loans/{{subject}}"
signing_secrets = ["crm_whsec"]
body = '{"id": {{json id}}, "amount": {{json data.amount_minor}}}'

[webhooks.headers]
Authorization = { secret = "crm_token", prefix = "Bearer " }
X-Api-Key = { secret = "crm_key" }
X-Tenant = "{{tenant}}"
"#;

fn schema_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas/json")
}

fn load(name: &str) -> Value {
    let path = schema_dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every schema of the directory, by file name.
fn all_schemas() -> BTreeMap<&'static str, Value> {
    SCHEMAS.iter().map(|name| (*name, load(name))).collect()
}

/// A 2020-12 validator for `name` that resolves the cross-file `$ref`s from
/// the directory itself (offline: nothing is fetched) and checks formats.
fn validator(name: &str) -> Validator {
    let schemas = all_schemas();
    for (file, schema) in &schemas {
        assert_eq!(
            schema["$id"],
            format!("{BASE}{file}"),
            "{file}: $id must match its file name"
        );
        assert_eq!(
            schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{file}"
        );
    }
    let registry = Registry::new()
        .extend(
            schemas
                .iter()
                .map(|(file, schema)| (format!("{BASE}{file}"), schema.clone())),
        )
        .and_then(|r| r.prepare())
        .expect("schemas form a registry");
    jsonschema::options()
        .with_draft(Draft::Draft202012)
        .should_validate_formats(true)
        .with_registry(&registry)
        .build(&json!({ "$ref": format!("{BASE}{name}") }))
        .unwrap_or_else(|e| panic!("{name} does not compile: {e}"))
}

#[track_caller]
fn assert_valid(v: &Validator, instance: &Value) {
    let errors: Vec<String> = v
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "instance does not match its schema:\n  {}\ninstance: {instance:#}",
        errors.join("\n  ")
    );
}

#[track_caller]
fn assert_invalid(v: &Validator, instance: &Value, why: &str) {
    assert!(
        !v.is_valid(instance),
        "schema accepted a message it must reject ({why}): {instance:#}"
    );
}

/// The first delivery job of a loan event, rendered by the real webhook code.
fn rendered_job() -> DeliveryJob {
    let webhooks = Webhooks::from_toml(WEBHOOKS).expect("test webhooks are valid");
    let event = CloudEvent::from_json(
        json!({
            "specversion": "1.0",
            "id": "evt-42",
            "source": "/corebanking/loans",
            "type": "bank.loan.disbursed",
            "subject": "LN-2024-000042",
            "tenant": "acme-bank",
            "data": {"amount_minor": 25_000_000}
        })
        .to_string()
        .as_bytes(),
    )
    .expect("a valid CloudEvent");
    let now = Utc.with_ymd_and_hms(2024, 5, 1, 8, 15, 31).unwrap()
        + chrono::Duration::nanoseconds(123_456_789);
    let notifications = webhooks.notifications(&event, now);
    assert_eq!(notifications.len(), 1, "one webhook matches");
    DeliveryJob::first(&notifications[0]).expect("the notification rendered")
}

/// The scheduling headers exactly as the services write them
/// (`herald_kafka::headers`, Unix milliseconds as decimal text).
fn job_headers(job: &DeliveryJob, error: Option<&str>) -> Value {
    let mut h = serde_json::Map::new();
    h.insert(
        headers::DUE_AT.into(),
        job.due_at.timestamp_millis().to_string().into(),
    );
    h.insert(headers::ATTEMPT.into(), job.attempt.to_string().into());
    if let Some(first) = job.first_failure_at {
        h.insert(
            headers::FIRST_FAILURE_AT.into(),
            first.timestamp_millis().to_string().into(),
        );
    }
    if let Some(e) = &job.last_error {
        h.insert(headers::LAST_ERROR.into(), e.clone().into());
    }
    if let Some(e) = error {
        h.insert(headers::ERROR.into(), e.into());
    }
    Value::Object(h)
}

/// The job after two failed attempts: what a retry tier, then the dead-letter
/// topic, carries.
fn failed_job(job: &DeliveryJob) -> DeliveryJob {
    DeliveryJob {
        attempt: 3,
        trigger: Trigger::Retry,
        due_at: job.created_at + chrono::Duration::seconds(90),
        first_failure_at: Some(job.created_at + chrono::Duration::milliseconds(250)),
        last_error: Some("http 503 Service Unavailable".into()),
        ..job.clone()
    }
}

#[test]
fn every_schema_compiles_offline_with_its_id() {
    for name in SCHEMAS {
        validator(name);
    }
}

#[test]
fn rendered_delivery_jobs_match_the_schema() {
    let v = validator("delivery-job.schema.json");
    let job = rendered_job();
    let value = serde_json::to_value(&job).unwrap();
    // The job really carries both header kinds and the nulls of a first job.
    let hdrs = value["request"]["headers"].to_string();
    assert!(
        hdrs.contains(r#"{"secret":{"name":"crm_token","prefix":"Bearer "}}"#),
        "{hdrs}"
    );
    assert!(hdrs.contains(r#"{"secret":{"name":"crm_key"}}"#), "{hdrs}");
    assert!(hdrs.contains(r#"{"text":"acme-bank"}"#), "{hdrs}");
    assert!(value["first_failure_at"].is_null() && value["last_error"].is_null());
    assert_valid(&v, &value);

    let retry = serde_json::to_value(failed_job(&job)).unwrap();
    assert_valid(&v, &retry);
    let no_subject = DeliveryJob {
        subject: None,
        trigger: Trigger::Manual,
        ..job
    };
    assert_valid(&v, &serde_json::to_value(no_subject).unwrap());
}

#[test]
fn drifted_jobs_fail_validation() {
    let v = validator("delivery-job.schema.json");
    let good = serde_json::to_value(rendered_job()).unwrap();
    type Mutation = fn(&mut Value);
    let cases: &[(&str, Mutation)] = &[
        ("renamed field", |j| {
            let id = j
                .as_object_mut()
                .unwrap()
                .remove("notification_id")
                .unwrap();
            j["notificationId"] = id;
        }),
        ("missing null field", |j| {
            j.as_object_mut().unwrap().remove("last_error");
        }),
        ("lowercase method", |j| {
            j["request"]["method"] = "post".into()
        }),
        ("unknown trigger", |j| j["trigger"] = "Auto".into()),
        ("attempt zero", |j| j["attempt"] = 0.into()),
        ("attempt as text", |j| j["attempt"] = "1".into()),
        ("due_at as millis", |j| {
            j["due_at"] = 1_714_551_331_000_i64.into()
        }),
        ("untagged header value", |j| {
            j["request"]["headers"][0]["value"] = "plain".into()
        }),
        ("secret value inlined", |j| {
            j["request"]["headers"][0]["value"] =
                json!({"secret": {"name": "k", "value": "s3cr3t"}})
        }),
        ("both tags", |j| {
            j["request"]["headers"][0]["value"] = json!({"text": "a", "secret": {"name": "k"}})
        }),
        ("not a uuid", |j| j["notification_id"] = "evt-42".into()),
        ("extra field", |j| j["priority"] = 1.into()),
    ];
    assert_valid(&v, &good);
    for (why, mutate) in cases {
        let mut bad = good.clone();
        mutate(&mut bad);
        assert_invalid(&v, &bad, why);
    }
}

#[test]
fn resend_commands_match_the_schema() {
    let v = validator("resend-command.schema.json");
    let cmd = ResendCommand {
        notification_id: NotificationId::derive("/corebanking/loans", "evt-42", "crm"),
        reason: "receiver restored after outage".into(),
        requested_by: "ops@bank".into(),
    };
    let value = serde_json::to_value(&cmd).unwrap();
    assert_valid(&v, &value);
    // Minimal input the service accepts (serde defaults) is valid too.
    let minimal = json!({ "notification_id": cmd.notification_id });
    assert!(serde_json::from_value::<ResendCommand>(minimal.clone()).is_ok());
    assert_valid(&v, &minimal);
    assert_invalid(&v, &json!({"id": cmd.notification_id}), "wrong field name");
    assert_invalid(&v, &json!({}), "no id");
}

#[test]
fn scheduling_headers_match_the_schema() {
    let v = validator("retry-headers.schema.json");
    let job = rendered_job();
    assert_valid(&v, &job_headers(&job, None));
    assert_valid(&v, &job_headers(&failed_job(&job), None));
    let mut bad = job_headers(&job, None);
    bad[headers::DUE_AT] = job.due_at.to_rfc3339().into();
    assert_invalid(&v, &bad, "due-at as RFC 3339 instead of millis");
    let mut bad = job_headers(&job, None);
    bad.as_object_mut().unwrap().remove(headers::ATTEMPT);
    assert_invalid(&v, &bad, "no attempt header");
}

#[test]
fn dead_letters_match_the_schema() {
    let v = validator("dead-letter.schema.json");
    let job = failed_job(&rendered_job());
    let exhausted = json!({
        "key": job.key(),
        "headers": job_headers(&job, Some("reached the maximum of 3 attempts")),
        "value": job,
    });
    assert_valid(&v, &exhausted);
    let origin: serde_json::Map<String, Value> = [
        (headers::ERROR, "expected value at line 1 column 1"),
        (headers::ORIGIN_TOPIC, "herald.deliveries"),
        (headers::ORIGIN_PARTITION, "3"),
        (headers::ORIGIN_OFFSET, "42"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into()))
    .collect();
    let undecodable = json!({ "key": null, "headers": origin, "value": "not json" });
    assert_valid(&v, &undecodable);
    let mut no_reason = exhausted.clone();
    no_reason["headers"]
        .as_object_mut()
        .unwrap()
        .remove(headers::ERROR);
    assert_invalid(&v, &no_reason, "exhausted job without herald-error");

    let dlq = validator("ingest-dlq-headers.schema.json");
    assert_valid(&dlq, &undecodable["headers"]);
    let mut with_ce = undecodable["headers"].clone();
    with_ce["ce_type"] = "bank.loan.disbursed".into();
    assert_valid(&dlq, &with_ce);
    let mut bad = undecodable["headers"].clone();
    bad[headers::ORIGIN_OFFSET] = "-1".into();
    assert_invalid(&dlq, &bad, "negative offset");
}

/// The webhook definitions shipped with the compose stack and the Kubernetes
/// manifests load (the services refuse to start otherwise).
#[test]
fn deploy_webhook_definitions_load() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    for rel in [
        "deploy/docker/webhooks.compose.toml",
        "deploy/k8s/webhooks.toml",
    ] {
        let text = std::fs::read_to_string(root.join(rel)).unwrap();
        let webhooks =
            Webhooks::from_toml(&text).unwrap_or_else(|e| panic!("{rel} does not load:\n{e}"));
        assert!(!webhooks.is_empty(), "{rel} defines no webhook");
    }
}
