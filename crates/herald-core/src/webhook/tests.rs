use std::collections::HashMap;

use chrono::TimeZone;
use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::event::EventData;

const MINIMAL: &str = r#"
[secrets]
token = { env = "TOKEN" }
whsec = { env = "WHSEC" }

[[webhooks]]
id = "crm"
events = ["bank.loan.*"]
url = "https://crm.example.com/loans/{{subject}}"
signing_secrets = ["whsec"]
body = '{"id": {{json id}}, "amount": {{json data.amount}}, "name": "{{data.name}}"}'
[webhooks.headers]
Authorization = { secret = "token", prefix = "Bearer " }
X-Tenant = "{{tenant}}"
"#;

fn event(v: Value) -> CloudEvent {
    let mut base = json!({
        "specversion": "1.0", "id": "e-1", "source": "/core", "type": "bank.loan.disbursed",
        "subject": "LN/1", "tenant": "acme", "data": {"amount": 12.5, "name": "A \"B\""}
    });
    for (k, x) in v.as_object().unwrap() {
        base[k] = x.clone();
    }
    CloudEvent::from_value(base).unwrap()
}

fn errors(toml: &str) -> Vec<String> {
    Webhooks::from_toml(toml)
        .unwrap_err()
        .0
        .into_iter()
        .map(|e| e.to_string())
        .collect()
}

#[test]
fn webhook_sets_can_be_shared_between_tasks() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Webhooks>();
}

#[test]
fn loads_and_renders_a_minimal_file() {
    let set = Webhooks::from_toml(MINIMAL).unwrap();
    let w = set.get("crm").unwrap();
    assert_eq!(w.method, Method::Post);
    assert_eq!(w.timeout, DEFAULT_TIMEOUT);
    assert_eq!(w.retry, RetryPolicy::default());
    let e = event(json!({}));
    assert_eq!(set.matching(&e).count(), 1);
    let r = set.render(w, &e).unwrap();
    assert_eq!(r.url, "https://crm.example.com/loans/LN%2F1");
    assert_eq!(r.content_type, "application/json");
    assert_eq!(
        r.body,
        r#"{"id": "e-1", "amount": 12.5, "name": "A \"B\""}"#
    );
    assert_eq!(
        r.headers,
        vec![
            RenderedHeader {
                name: "Authorization".into(),
                value: HeaderValue::Secret {
                    name: "token".into(),
                    prefix: "Bearer ".into()
                }
            },
            RenderedHeader {
                name: "X-Tenant".into(),
                value: HeaderValue::Text("acme".into())
            },
        ]
    );
}

#[test]
fn waits_are_bounded() {
    let errs = errors(
        r#"
[[webhooks]]
id = "a"
events = ["x"]
url = "https://a.example/"
body = "{}"
retry = { max_delay = "40d", retry_after_max = "31d", max_age = "365d" }
circuit = { max_cooldown = "60d" }
"#,
    );
    assert_eq!(
        errs,
        [
            "webhooks.a.retry.max_age: must be at most 30d",
            "webhooks.a.retry.max_delay: must be at most 30d",
            "webhooks.a.retry.retry_after_max: must be at most 30d",
            "webhooks.a.circuit.max_cooldown: must be at most 30d",
        ]
    );
}

#[test]
fn circuit_settings_have_defaults_and_inherit_from_defaults() {
    let set = Webhooks::from_toml(MINIMAL).unwrap();
    assert_eq!(set.get("crm").unwrap().circuit, CircuitConfig::default());
    let toml = r#"
[defaults.circuit]
cooldown = "2m"
slow_threshold = "3s"

[[webhooks]]
id = "a"
events = ["x"]
url = "https://a.example/"
body = "{}"
[webhooks.circuit]
failure_threshold = 4
failure_ratio = 0.25
half_open_probes = 2

[[webhooks]]
id = "b"
events = ["x"]
url = "https://b.example/"
body = "{}"
circuit = { enabled = false, slow_threshold = "off" }
"#;
    let set = Webhooks::from_toml(toml).unwrap();
    let a = &set.get("a").unwrap().circuit;
    assert_eq!(
        *a,
        CircuitConfig {
            failure_threshold: 4,
            failure_ratio: 0.25,
            half_open_probes: 2,
            cooldown: Duration::from_secs(120),
            slow_threshold: Some(Duration::from_secs(3)),
            ..CircuitConfig::default()
        }
    );
    let b = &set.get("b").unwrap().circuit;
    assert!(!b.enabled);
    assert_eq!(b.slow_threshold, None);
    assert_eq!(b.cooldown, Duration::from_secs(120));
    let errs = errors(
        r#"
[defaults.circuit]
window = "0s"
[[webhooks]]
id = "a"
events = ["x"]
url = "https://a.example/"
body = "{}"
circuit = { failure_ratio = 1.5, failure_threshold = 0, half_open_probes = 0, cooldown = "1x" }
[[webhooks]]
id = "b"
events = ["x"]
url = "https://b.example/"
body = "{}"
circuit = { cooldown = "1m", max_cooldown = "30s" }
"#,
    );
    assert_eq!(
        errs,
        [
            "defaults.circuit.window: must be more than 0s",
            "webhooks.a.circuit.cooldown: invalid duration \"1x\": unknown unit \"x\" (expected ms, s, m, h or d)",
            "webhooks.a.circuit.failure_threshold: must be at least 1",
            "webhooks.a.circuit.failure_ratio: must be more than 0 and at most 1",
            "webhooks.a.circuit.half_open_probes: must be at least 1",
            "webhooks.b.circuit.max_cooldown: must be at least the cool-down",
        ]
    );
}

#[test]
fn collects_every_error_with_its_location() {
    let toml = r#"
[defaults]
timeout = "0s"
[defaults.retry]
jitter = 1.5
retry_on = ["http_5xx", "teapot"]

[secrets]
"bad name" = { env = "X" }

[[webhooks]]
id = "a"
events = ["bank.[", ""]
filter = { "data/x" = 1, "/y" = [] }
method = "GET"
url = "https://{{host}}/x"
body = "{{#if}"
timeout = "10x"
signing_secrets = ["nope"]
[webhooks.headers]
Content-Type = "x"
"X A" = "y"
Authorization = { secret = "missing" }
[webhooks.retry]
max_attempts = 0
initial_delay = "1h"
max_delay = "1m"

[[webhooks]]
id = "a"
events = ["x"]
url = "ftp://x"
body = ""

[[webhooks]]
id = ""
events = []
url = "https://user:pw@h/"
body = ""
"#;
    let errs = errors(toml);
    let expected = [
        "defaults.timeout: must be more than 0s and at most 5m",
        "defaults.retry.jitter: must be at least 0 and less than 1",
        "defaults.retry.retry_on[1]: unknown failure class \"teapot\": expected one of http_3xx, http_4xx, http_5xx, timeout, connection_error, tls_error, invalid_response, refused",
        "secrets.bad name: secret names may contain only letters, digits, '-' and '_'",
        "webhooks.a.timeout: invalid duration \"10x\": unknown unit \"x\" (expected ms, s, m, h or d)",
        "webhooks.a.retry.max_attempts: must be at least 1",
        "webhooks.a.retry.max_delay: must not be shorter than initial_delay",
        "webhooks.a.events[1]: must not be empty",
        "webhooks.a.filter.\"/y\": an empty list matches nothing",
        "webhooks.a.filter.\"data/x\": keys are JSON pointers into the event and start with '/', e.g. \"/data/product_type\"",
        "webhooks.a.method: unsupported method \"GET\": expected POST, PUT or PATCH",
        "webhooks.a.url: the host must be literal, not a template",
        "webhooks.a.headers.Authorization.secret: unknown secret \"missing\": declare it in [secrets]",
        "webhooks.a.headers.Content-Type: is set by Herald and cannot be defined",
        "webhooks.a.headers.X A: invalid header name",
        "webhooks.a.signing_secrets[0]: unknown secret \"nope\": declare it in [secrets]",
        "webhooks.a.id: duplicate webhook id \"a\"",
        "webhooks[2].id: must not be empty",
        "webhooks[2].events: at least one event type (glob) is required",
        "webhooks[2].url: credentials in the URL would be stored with every notification; use a secret header",
    ];
    for want in expected {
        assert!(
            errs.iter().any(|e| e == want),
            "missing {want:?} in {errs:#?}"
        );
    }
    assert!(
        errs.iter()
            .any(|e| e.starts_with("webhooks.a.events[0]: invalid glob \"bank.[\"")),
        "{errs:#?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("webhooks.a.body: invalid template at line 1")),
        "{errs:#?}"
    );
    assert_eq!(errs.len(), expected.len() + 2, "{errs:#?}");
    let display = Webhooks::from_toml(toml).unwrap_err().to_string();
    assert!(display.starts_with(&format!(
        "invalid webhook definitions ({} errors)\n  defaults.timeout",
        errs.len()
    )));
}

#[test]
fn unknown_fields_and_syntax_errors_are_rejected() {
    let errs = errors(
        "[[webhooks]]\nid = \"a\"\nevents = [\"x\"]\nurl = \"https://h\"\nbody = \"\"\nretries = 3\n",
    );
    assert_eq!(errs.len(), 1);
    assert!(errs[0].starts_with("file: "), "{errs:?}");
    assert!(errs[0].contains("unknown field `retries`"), "{errs:?}");
    let errs = errors("[defaults]\ntimeuot = \"1s\"\n");
    assert!(errs[0].contains("unknown field `timeuot`"), "{errs:?}");
    let errs = errors("[secrets]\nk = { value = \"inline-secret\" }\n");
    assert!(errs[0].starts_with("file: "), "{errs:?}");
    assert!(errors("this is not toml").len() == 1);
}

#[test]
fn matching_uses_globs_filters_and_enabled() {
    let toml = r#"
[[webhooks]]
id = "all-loans"
events = ["bank.loan.*"]
url = "https://h/"
body = "{}"
[[webhooks]]
id = "mortgages"
events = ["bank.loan.disbursed", "bank.mortgage.?"]
filter = { "/data/product" = ["MORTGAGE", "HELOC"], "/tenant" = "acme", "/data/n" = 5 }
url = "https://h/"
body = "{}"
[[webhooks]]
id = "off"
enabled = false
events = ["*"]
url = "https://h/"
body = "{}"
"#;
    let set = Webhooks::from_toml(toml).unwrap();
    let ids = |e: &CloudEvent| set.matching(e).map(|w| w.id.as_str()).collect::<Vec<_>>();
    let mortgage = event(json!({"data": {"product": "HELOC", "n": 5.0}}));
    assert_eq!(ids(&mortgage), ["all-loans", "mortgages"]);
    assert_eq!(
        ids(&event(json!({"data": {"product": "CAR", "n": 5}}))),
        ["all-loans"]
    );
    assert_eq!(
        ids(&event(json!({"data": {"product": "HELOC"}}))),
        ["all-loans"]
    );
    assert_eq!(
        ids(&event(
            json!({"tenant": "other", "data": {"product": "HELOC", "n": 5}})
        )),
        ["all-loans"]
    );
    assert_eq!(
        ids(&event(json!({"type": "bank.client.created"}))),
        Vec::<&str>::new()
    );
    assert_eq!(
        ids(&event(
            json!({"type": "bank.mortgage.x", "data": {"product": "HELOC", "n": 5}})
        )),
        ["mortgages"]
    );
    assert!(set.get("mortgages").unwrap().matches(&mortgage));
}

#[test]
fn render_failures_are_specific() {
    let set = Webhooks::from_toml(MINIMAL).unwrap();
    let w = set.get("crm").unwrap();
    let missing = event(json!({"data": {"name": "x"}}));
    assert_eq!(
        set.render(w, &missing).unwrap_err().to_string(),
        "body: line 1, column 31: helper `json`: missing field `data.amount`"
    );
    let no_tenant = CloudEvent {
        extensions: BTreeMap::new(),
        ..event(json!({}))
    };
    assert_eq!(
        set.render(w, &no_tenant).unwrap_err().to_string(),
        "header X-Tenant: line 1, column 1: missing field `tenant` (templates are strict: guard optional fields with {{#if}} or the default helper)"
    );
    let newline = event(json!({"tenant": "a\r\nX-Evil: 1"}));
    assert_eq!(
        set.render(w, &newline).unwrap_err().to_string(),
        "header X-Tenant: rendered value contains a control character"
    );

    let other = Webhooks::from_toml(MINIMAL).unwrap();
    assert_eq!(
        set.render(other.get("crm").unwrap(), &event(json!({})))
            .unwrap_err(),
        RenderError::UnknownWebhook("crm".into())
    );
}

#[test]
fn json_bodies_must_be_valid_and_bodies_are_bounded() {
    let toml = r#"
[defaults]
max_body_bytes = 30
[[webhooks]]
id = "raw"
events = ["*"]
url = "https://h/{{subject}}"
body = '{"amount": {{data.name}} }'
[[webhooks]]
id = "big"
events = ["*"]
url = "https://h/"
body_format = "text"
body = "{{data.name}}{{data.name}}{{data.name}}{{data.name}}{{data.name}}{{data.name}}{{data.name}}"
"#;
    let set = Webhooks::from_toml(toml).unwrap();
    let e = event(json!({}));
    let err = set
        .render(set.get("raw").unwrap(), &e)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("body: rendered body is not valid JSON ("),
        "{err}"
    );
    assert!(err.ends_with("); use {{json ...}} for values"), "{err}");
    assert_eq!(
        set.render(set.get("big").unwrap(), &e)
            .unwrap_err()
            .to_string(),
        "body: rendered output exceeds the limit of 30 bytes"
    );
}

#[test]
fn notifications_are_rendered_or_render_failed() {
    let set = Webhooks::from_toml(MINIMAL).unwrap();
    let now = Utc.with_ymd_and_hms(2024, 5, 1, 0, 0, 0).unwrap();
    let e = event(json!({"time": "2024-04-30T23:00:00Z"}));
    let n = set.notifications(&e, now);
    assert_eq!(n.len(), 1);
    let n = &n[0];
    assert_eq!(n.id, NotificationId::derive("/core", "e-1", "crm"));
    assert_eq!(
        n.event_time,
        Utc.with_ymd_and_hms(2024, 4, 30, 23, 0, 0).unwrap()
    );
    assert_eq!(n.created_at, now);
    assert_eq!(n.subject.as_deref(), Some("LN/1"));
    assert_eq!(n.template_hash, set.get("crm").unwrap().template_hash);
    assert!(n.request().is_some());

    let broken = event(json!({"data": {}}));
    let n = set.notification(set.get("crm").unwrap(), &broken, now);
    assert_eq!(n.event_time, now);
    assert_eq!(
        n.content,
        NotificationContent::RenderFailed {
            error: "body: line 1, column 31: helper `json`: missing field `data.amount`".into()
        }
    );
}

#[test]
fn template_hash_is_stable_and_tracks_the_definition() {
    let hash = |toml: &str| {
        Webhooks::from_toml(toml)
            .unwrap()
            .get("crm")
            .unwrap()
            .template_hash
            .clone()
    };
    let h = hash(MINIMAL);
    assert_eq!(h.len(), 64);
    assert_eq!(h, hash(MINIMAL));
    // Formatting and comments do not matter ...
    assert_eq!(
        h,
        hash(&MINIMAL.replace("[secrets]", "# comment\n[secrets]\n"))
    );
    // ... the template, inherited defaults and secret references do.
    assert_ne!(h, hash(&MINIMAL.replace("{{json id}}", "{{json source}}")));
    assert_ne!(h, hash(&format!("[defaults]\ntimeout = \"3s\"\n{MINIMAL}")));
    assert_ne!(
        h,
        hash(&MINIMAL.replace("env = \"TOKEN\"", "env = \"TOKEN2\""))
    );
}

#[test]
fn secrets_resolve_through_the_callers_source() {
    let set = Webhooks::from_toml(MINIMAL).unwrap();
    let w = set.get("crm").unwrap();
    let whsec = SigningSecret::from_bytes(vec![4u8; 32]).to_whsec();
    let source = HashMap::from([
        (SecretRef::Env("TOKEN".into()), "t0ps3cret".to_owned()),
        (SecretRef::Env("WHSEC".into()), whsec.clone()),
    ]);
    let keys = set.signing_secrets(w, &source, Utc::now()).unwrap();
    assert_eq!(keys[0].to_whsec(), whsec);
    let request = set.render(w, &event(json!({}))).unwrap();
    let headers = set.resolve_headers(&request, &source).unwrap();
    assert_eq!(headers[0].name, "content-type");
    assert_eq!(headers[1].value, "Bearer t0ps3cret");
    assert!(headers[1].sensitive);
    assert!(!format!("{headers:?}").contains("t0ps3cret"));

    let empty: HashMap<SecretRef, String> = HashMap::new();
    assert_eq!(
        set.resolve_headers(&request, &empty)
            .unwrap_err()
            .to_string(),
        "secret env:TOKEN is not set"
    );
    let bad = HashMap::from([(SecretRef::Env("WHSEC".into()), "not-base64!".to_owned())]);
    assert!(
        set.signing_secrets(w, &bad, Utc::now())
            .unwrap_err()
            .to_string()
            .starts_with("secret \"whsec\" is invalid: invalid signing secret: ")
    );
    assert_eq!(
        set.resolve_secret("nope", &empty).unwrap_err().to_string(),
        "unknown secret \"nope\": not declared in [secrets]"
    );
}

fn example() -> Webhooks {
    Webhooks::from_toml(include_str!("../../../../deploy/webhooks.example.toml"))
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_example_file_loads_and_renders_every_fixture_event() {
    let set = example();
    assert_eq!(set.len(), 5);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/events");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "fixtures in {}", dir.display());
    let mut fired = BTreeSet::new();
    for file in files {
        let event = CloudEvent::from_json(&std::fs::read(&file).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let matched: Vec<_> = set.matching(&event).collect();
        assert!(!matched.is_empty(), "{} fires no webhook", file.display());
        for w in matched {
            let r = set
                .render(w, &event)
                .unwrap_or_else(|e| panic!("{} x {}: {e}", file.display(), w.id));
            check_url(&r.url).unwrap();
            if w.body_format == BodyFormat::Json {
                serde_json::from_str::<Value>(&r.body).unwrap();
            }
            fired.insert(w.id.clone());
        }
    }
    assert_eq!(
        fired.len(),
        set.len(),
        "every example webhook fires: {fired:?}"
    );
}

#[test]
fn the_example_renders_what_the_receivers_expect() {
    let set = example();
    let read = |name: &str| {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/events")
            .join(name);
        CloudEvent::from_json(&std::fs::read(path).unwrap()).unwrap()
    };
    let loan = read("loan-disbursed.json");
    let r = set
        .render(set.get("crm-loan-disbursed").unwrap(), &loan)
        .unwrap();
    let body: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["amount"], json!("250000.00"));
    assert_eq!(body["display"], json!("250000.00 EUR"));
    assert_eq!(body["disbursedAt"], json!("2024-05-01T08:15:30Z"));
    assert_eq!(body["client"]["name"], json!("Zoë O'Brien \"Jr.\""));
    assert_eq!(
        r.url,
        "https://crm.example.com/api/v1/loans/LN-2024-000042/disbursements"
    );

    let deposit = read("deposit-posted.json");
    let r = set
        .render(set.get("ledger-deposit-posted").unwrap(), &deposit)
        .unwrap();
    assert_eq!(r.method, Method::Put);
    assert_eq!(r.content_type, "application/xml; charset=utf-8");
    assert_eq!(
        r.url,
        "https://ledger.example.net/postings/TX%202024%2F05%2F02-0001?source=herald"
    );
    assert!(
        r.body.contains("<amount currency=\"KWD\">1.234</amount>"),
        "{}",
        r.body
    );
    assert!(
        r.body
            .contains("<reference>Salary &lt;May&gt; &amp; bonus</reference>"),
        "{}",
        r.body
    );

    let overdue = read("repayment-overdue.json");
    let r = set
        .render(set.get("sms-repayment-overdue").unwrap(), &overdue)
        .unwrap();
    assert_eq!(
        r.body,
        "Dear Zoë O'Brien, your repayment of 1543.21 EUR due on 01.05.2024 is overdue."
    );
    assert_eq!(r.content_type, "text/plain; charset=utf-8");
    let w = set.get("collections-repayment-overdue").unwrap();
    assert_eq!(w.retry.max_attempts, 5);
    assert_eq!(w.retry.retry_on.on_gone, OnGone::Stop);
    assert_eq!(w.retry.max_age, Duration::from_secs(86_400));
    let mut not_due = overdue.clone();
    if let Some(EventData::Json(d)) = &mut not_due.data {
        d["days_overdue"] = json!(3);
    }
    assert!(!w.matches(&not_due));
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("amount_minor".to_owned()),
                    Just("currency".to_owned()),
                    Just("client".to_owned()),
                    Just("days_overdue".to_owned()),
                    Just("due_date".to_owned()),
                    "[a-z_]{1,8}"
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    #[test]
    fn rendering_never_panics_on_arbitrary_event_data(data in arb_json(), subject in ".{1,10}") {
        let set = example();
        let mut e = event(json!({}));
        e.data = Some(EventData::Json(data));
        e.subject = Some(subject);
        let now = Utc::now();
        for w in set.iter() {
            let n = set.notification(w, &e, now);
            if let Some(r) = n.request() {
                prop_assert!(check_url(&r.url).is_ok());
                if w.body_format == BodyFormat::Json {
                    prop_assert!(serde_json::from_str::<Value>(&r.body).is_ok());
                }
            }
        }
    }

    #[test]
    fn notification_ids_are_stable(source in ".{1,20}", id in ".{1,20}", webhook in "[a-z-]{1,12}") {
        let a = NotificationId::derive(&source, &id, &webhook);
        prop_assert_eq!(a, NotificationId::derive(&source, &id, &webhook));
        prop_assert_eq!(a.to_string().parse::<NotificationId>().unwrap(), a);
        prop_assert_ne!(a, NotificationId::derive(&source, &id, &format!("{webhook}x")));
    }
}

#[test]
fn tls_settings_are_validated_and_resolved_by_reference() {
    let file = |tls: &str, url: &str| {
        format!(
            "[secrets]\nca = {{ file = \"/run/ca.pem\" }}\ncrt = {{ env = \"CRT\" }}\nkey = {{ env = \"KEY\" }}\n\
             [[webhooks]]\nid = \"w\"\nevents = [\"*\"]\nurl = \"{url}\"\nbody = '{{}}'\n[webhooks.tls]\n{tls}\n"
        )
    };
    let https = "https://receiver.bank.test/hook";
    assert_eq!(
        errors(&file("roots = \"custom\"\nclient_cert = \"crt\"", https)),
        [
            "webhooks.w.tls.ca: roots = \"custom\" needs a ca bundle (a [secrets] name)",
            "webhooks.w.tls.client_key: client_cert needs a client_key",
        ]
    );
    assert_eq!(
        errors(&file(
            "roots = \"public\"\nca = \"ca\"\nclient_key = \"nope\"\nserver_name = \"a b\"",
            "http://receiver.bank.test/"
        )),
        [
            "webhooks.w.tls: TLS settings need an https:// url (the url is http://)",
            "webhooks.w.tls.client_key: unknown secret \"nope\": declare it in [secrets]",
            "webhooks.w.tls.roots: roots = \"public\" ignores the ca bundle: use \"custom\" or \"both\"",
            "webhooks.w.tls.client_cert: client_key needs a client_cert",
            "webhooks.w.tls.server_name: must be a DNS name or an IP address",
        ]
    );
    assert_eq!(
        errors(&file("roots = \"none\"", https)),
        ["webhooks.w.tls.roots: unknown roots \"none\": use \"public\", \"custom\" or \"both\""]
    );

    // A ca alone means the public roots and the bundle.
    let set = Webhooks::from_toml(&file(
        "ca = \"ca\"\nclient_cert = \"crt\"\nclient_key = \"key\"",
        https,
    ))
    .unwrap();
    let w = set.get("w").unwrap();
    assert_eq!(w.tls.roots, Roots::Both);
    let source = HashMap::from([
        (SecretRef::File("/run/ca.pem".into()), "CA PEM".to_owned()),
        (SecretRef::Env("CRT".into()), "CERT PEM".to_owned()),
        (SecretRef::Env("KEY".into()), "KEY PEM".to_owned()),
    ]);
    let m = set.tls_material(w, &source).unwrap().unwrap();
    assert_eq!(m.ca_pem.as_ref().map(|c| c.expose()), Some("CA PEM"));
    let (cert, key) = m.client.as_ref().unwrap();
    assert_eq!((cert.expose(), key.expose()), ("CERT PEM", "KEY PEM"));
    assert!(!format!("{m:?}").contains("PEM"), "{m:?}");
    // Not what is sent: the template hash ignores it.
    let plain = Webhooks::from_toml(&file("", https).replace("[webhooks.tls]\n", "")).unwrap();
    let plain = plain.get("w").unwrap();
    assert_eq!(plain.template_hash, w.template_hash);
    assert!(set.tls_material(plain, &source).unwrap().is_none());
}

#[test]
fn signing_keys_sign_within_their_windows() {
    let file = |entries: &str| {
        format!(
            "[secrets]\nold = {{ env = \"OLD\" }}\nnew = {{ env = \"NEW\" }}\n\
             [[webhooks]]\nid = \"w\"\nevents = [\"*\"]\nurl = \"https://r.example/\"\nbody = '{{}}'\n\
             signing_secrets = [{entries}]\n"
        )
    };
    let set = Webhooks::from_toml(&file(
        "{ secret = \"old\", not_after = \"2027-01-01T00:00:00Z\" }, { secret = \"new\", not_before = \"2026-12-01T00:00:00Z\" }",
    ))
    .unwrap();
    let w = set.get("w").unwrap();
    let old = SigningSecret::from_bytes(vec![1u8; 32]);
    let new = SigningSecret::from_ed25519_seed([2u8; 32]).unwrap();
    let source = HashMap::from([
        (SecretRef::Env("OLD".into()), old.to_whsec()),
        (SecretRef::Env("NEW".into()), new.to_whsec()),
    ]);
    let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
    for (now, want) in [
        ("2026-11-30T23:59:59Z", vec![old.clone()]),
        ("2026-12-15T00:00:00Z", vec![old.clone(), new.clone()]),
        ("2027-01-01T00:00:00Z", vec![new.clone()]),
    ] {
        assert_eq!(
            set.signing_secrets(w, &source, at(now)).unwrap(),
            want,
            "{now}"
        );
    }
    // A plain list hashes as before windows existed; a window changes it.
    let plain = Webhooks::from_toml(&file("\"old\", \"new\"")).unwrap();
    let windowed = Webhooks::from_toml(&file("\"old\", { secret = \"new\" }")).unwrap();
    assert_eq!(
        plain.get("w").unwrap().template_hash,
        windowed.get("w").unwrap().template_hash
    );
    assert_ne!(plain.get("w").unwrap().template_hash, w.template_hash);

    assert_eq!(
        errors(&file(
            "{ secret = \"old\", not_before = \"tomorrow\" }, { secret = \"new\", not_before = \"2027-01-01T00:00:00Z\", not_after = \"2026-01-01T00:00:00Z\" }, \"new\""
        )),
        [
            "webhooks.w.signing_secrets[0].not_before: \"tomorrow\" is not an RFC 3339 time such as \"2027-01-01T00:00:00Z\"",
            "webhooks.w.signing_secrets[1].not_after: must be later than not_before",
            "webhooks.w.signing_secrets: lists a secret twice",
        ]
    );
}
