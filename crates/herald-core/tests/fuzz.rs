//! Fuzzing on stable Rust: every decoder and loader that takes outside input
//! (CloudEvents in structured and binary mode, webhook files, templates) is
//! fed a seed corpus and then generated and mutated inputs. The properties:
//! no panic, every rejection is an error with a non-empty message, and what
//! is accepted stays bounded (output sizes within the configured limits).
//!
//! The corpus lives in `tests/fixtures/fuzz/<target>/` at the repository
//! root and is replayed on every run; a finding is added there as a file, so
//! it stays a regression test. `HERALD_FUZZ_CASES` sets the generated cases
//! per target (default 256, well under a minute in CI); set it high for a
//! longer soak: `HERALD_FUZZ_CASES=100000 cargo test -p herald-core --test fuzz --release`.

use std::path::PathBuf;

use chrono::{TimeZone, Utc};
use herald_core::{CloudEvent, Webhooks};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};

fn cases() -> u32 {
    std::env::var("HERALD_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    })
}

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/fuzz")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "empty corpus {}", dir.display());
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect()
}

/// Byte-level mutations of a seed: flip, insert, delete, duplicate a slice.
fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let ops = prop::collection::vec(
        (
            0u8..4,
            any::<prop::sample::Index>(),
            any::<u8>(),
            1usize..64,
        ),
        1..8,
    );
    (prop::sample::select(seeds), ops).prop_map(|(mut bytes, ops)| {
        for (op, at, byte, len) in ops {
            let i = if bytes.is_empty() {
                0
            } else {
                at.index(bytes.len())
            };
            match op {
                0 if !bytes.is_empty() => bytes[i] = byte,
                1 => bytes.insert(i.min(bytes.len()), byte),
                2 if !bytes.is_empty() => {
                    let end = (i + len).min(bytes.len());
                    bytes.drain(i..end);
                }
                _ => {
                    let end = (i + len).min(bytes.len());
                    let slice = bytes[i.min(end)..end].to_vec();
                    bytes.splice(i.min(bytes.len())..i.min(bytes.len()), slice);
                }
            }
        }
        bytes
    })
}

// ---- CloudEvents, structured mode ------------------------------------------

fn check_event_json(input: &[u8]) {
    match CloudEvent::from_json(input) {
        Err(e) => assert!(!e.to_string().is_empty(), "empty error for {input:?}"),
        Ok(event) => {
            // What was accepted encodes back, decodes to the same event, and
            // is not much larger than what came in.
            let back = event.to_json();
            let encoded = serde_json::to_vec(&back).unwrap();
            assert!(
                encoded.len() <= 2 * input.len() + 256,
                "{} bytes in, {} out",
                input.len(),
                encoded.len()
            );
            assert_eq!(CloudEvent::from_value(back).as_ref(), Ok(&event));
        }
    }
}

fn core_attribute() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("specversion"),
        Just("id"),
        Just("source"),
        Just("type"),
        Just("subject"),
        Just("time"),
        Just("datacontenttype"),
        Just("dataschema"),
        Just("data"),
        Just("data_base64"),
        Just("tenant"),
        Just("Bad-Name"),
        Just(""),
    ]
    .prop_map(str::to_owned)
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        prop_oneof![
            Just("1.0".to_owned()),
            Just("2024-05-01T10:15:30Z".to_owned()),
            Just("AAEC/w==".to_owned()),
            Just("application/json".to_owned()),
            Just("text/plain".to_owned()),
            ".{0,24}",
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(core_attribute(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Mostly-valid events: the required attributes, then random attributes.
fn event_object() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(core_attribute(), json_value(), 0..10).prop_map(|extra| {
        let mut obj = json!({"specversion": "1.0", "id": "e", "source": "s", "type": "t"});
        for (k, v) in extra {
            obj[k] = v;
        }
        obj
    })
}

#[test]
fn event_json_corpus() {
    for (name, bytes) in corpus("event_json") {
        eprintln!("event_json/{name}");
        check_event_json(&bytes);
    }
}

#[test]
fn event_json_fuzz() {
    let seeds: Vec<Vec<u8>> = corpus("event_json").into_iter().map(|(_, b)| b).collect();
    let input = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        mutated(seeds),
        event_object().prop_map(|v| serde_json::to_vec(&v).unwrap()),
    ];
    runner()
        .run(&input, |bytes| {
            check_event_json(&bytes);
            Ok(())
        })
        .unwrap();
}

// ---- CloudEvents, binary mode (Kafka headers) ------------------------------

/// A corpus file: `name: value` header lines (values are raw bytes), a blank
/// line, then the message value (absent when the file ends at the blank line).
type KafkaMessage = (Vec<(String, Vec<u8>)>, Option<Vec<u8>>);

fn parse_binary(bytes: &[u8]) -> KafkaMessage {
    let mut headers = Vec::new();
    let mut rest = bytes;
    loop {
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            return (headers, None);
        };
        let line = &rest[..nl];
        rest = &rest[nl + 1..];
        if line.is_empty() {
            return (headers, (!rest.is_empty()).then(|| rest.to_vec()));
        }
        let colon = line.iter().position(|&b| b == b':').unwrap_or(line.len());
        let name = String::from_utf8_lossy(&line[..colon]).into_owned();
        let value = line.get(colon + 1..).unwrap_or_default();
        let value = value.strip_prefix(b" ").unwrap_or(value);
        headers.push((name, value.to_vec()));
    }
}

fn check_event_binary(headers: &[(String, Vec<u8>)], value: Option<&[u8]>) {
    let borrowed: Vec<(&str, &[u8])> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_slice()))
        .collect();
    match CloudEvent::from_kafka(&borrowed, value) {
        Err(e) => assert!(!e.to_string().is_empty()),
        Ok(event) => {
            let back = event.to_json();
            let size: usize = headers
                .iter()
                .map(|(n, v)| n.len() + v.len())
                .sum::<usize>()
                + value.map_or(0, <[u8]>::len);
            let encoded = serde_json::to_vec(&back).unwrap();
            // Control bytes in a header become `\u00XX` escapes: 6 bytes each.
            assert!(
                encoded.len() <= 6 * size + 256,
                "{size} in, {} out",
                encoded.len()
            );
            assert_eq!(CloudEvent::from_value(back).as_ref(), Ok(&event));
        }
    }
}

#[test]
fn event_binary_corpus() {
    for (name, bytes) in corpus("event_binary") {
        eprintln!("event_binary/{name}");
        let (headers, value) = parse_binary(&bytes);
        assert!(!headers.is_empty(), "{name}: no headers parsed");
        check_event_binary(&headers, value.as_deref());
    }
}

#[test]
fn event_binary_fuzz() {
    let seeds: Vec<Vec<u8>> = corpus("event_binary").into_iter().map(|(_, b)| b).collect();
    let name = prop_oneof![
        core_attribute().prop_map(|a| format!("ce_{a}")),
        Just("content-type".to_owned()),
        Just("CE_SPECVERSION".to_owned()),
        "[a-zA-Z_-]{0,12}",
    ];
    let header_value = prop_oneof![
        Just(b"1.0".to_vec()),
        Just(b"application/json".to_vec()),
        Just(b"application/octet-stream".to_vec()),
        Just(b"2024-05-01T10:15:30Z".to_vec()),
        prop::collection::vec(any::<u8>(), 0..24),
    ];
    let generated = (
        prop::collection::vec((name, header_value), 0..10),
        prop::option::of(prop_oneof![
            prop::collection::vec(any::<u8>(), 0..256),
            json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        ]),
    )
        .prop_map(|(mut headers, value)| {
            headers.insert(0, ("ce_specversion".to_owned(), b"1.0".to_vec()));
            (headers, value)
        });
    let input = prop_oneof![generated, mutated(seeds).prop_map(|b| parse_binary(&b))];
    runner()
        .run(&input, |(headers, value)| {
            check_event_binary(&headers, value.as_deref());
            Ok(())
        })
        .unwrap();
}

// ---- webhook definitions ---------------------------------------------------

fn check_webhooks(text: &str) -> Option<Webhooks> {
    match Webhooks::from_toml(text) {
        Err(errors) => {
            assert!(
                !errors.0.is_empty(),
                "a rejection names at least one problem"
            );
            for e in &errors.0 {
                assert!(!e.location.is_empty() && !e.message.is_empty(), "{e:?}");
            }
            assert!(!errors.to_string().is_empty());
            None
        }
        Ok(w) => Some(w),
    }
}

#[test]
fn webhooks_toml_corpus() {
    for (name, bytes) in corpus("webhooks_toml") {
        eprintln!("webhooks_toml/{name}");
        check_webhooks(&String::from_utf8_lossy(&bytes));
    }
}

#[test]
fn webhooks_toml_fuzz() {
    let seeds: Vec<Vec<u8>> = corpus("webhooks_toml")
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    runner()
        .run(&mutated(seeds), |bytes| {
            check_webhooks(&String::from_utf8_lossy(&bytes));
            Ok(())
        })
        .unwrap();
}

// ---- templates -------------------------------------------------------------

/// The event every template is rendered against: a bit of everything the
/// helpers take, plus awkward strings.
fn template_event() -> CloudEvent {
    let mut event = CloudEvent::from_value(json!({
        "specversion": "1.0",
        "id": "evt-\"1\"",
        "source": "/core/loans",
        "type": "bank.loan.disbursed",
        "subject": "LN-1/../x?y#z",
        "time": "2024-05-01T10:15:30Z",
        "tenant": "acme",
        "data": {
            "amount_minor": 25000000,
            "currency": "EUR",
            "items": [1, "two", {"three": 3}, [4], null],
            "client": {"id": "CL-1", "name": "Zoë <O'Brien> & \"Jr.\"\u{0}\n"},
            "deep": {"a": {"b": {"c": {"d": {"e": "f"}}}}}
        }
    }))
    .unwrap();
    event.time = Some(Utc.with_ymd_and_hms(2024, 5, 1, 10, 15, 30).unwrap());
    event
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// Load `template` as the body (in each format), a header and a URL suffix,
/// and render it. Either the file is rejected with located errors, or the
/// render succeeds within the limits, or it fails with a message.
fn check_template(template: &str) {
    let event = template_event();
    for format in ["json", "xml", "text"] {
        let file = format!(
            "[[webhooks]]\nid = \"fuzz\"\nevents = [\"bank.*\"]\nurl = {}\nbody_format = \"{format}\"\nmax_body_bytes = 65536\nbody = {}\nheaders = {{ \"x-fuzz\" = {} }}\n",
            toml_string(&format!("https://example.com/{template}")),
            toml_string(template),
            toml_string(template),
        );
        let Some(webhooks) = check_webhooks(&file) else {
            continue;
        };
        let webhook = webhooks.get("fuzz").unwrap();
        match webhooks.render(webhook, &event) {
            Err(e) => assert!(!e.to_string().is_empty()),
            Ok(request) => {
                assert!(request.body.len() <= 65536);
                assert!(request.url.len() <= herald_core::webhook::MAX_URL_BYTES);
            }
        }
        // The notification record carries the same outcome, never a panic.
        let n = webhooks.notification(webhook, &event, Utc::now());
        assert_eq!(n.webhook_id, "fuzz");
    }
}

const TEMPLATE_TOKENS: &[&str] = &[
    "{{",
    "}}",
    "{{{",
    "}}}",
    "\\{{",
    "{{!-- c --}}",
    "{{id}}",
    "{{subject}}",
    "{{data.client.name}}",
    "{{data.missing}}",
    "{{json data}}",
    "{{json data.items}}",
    "{{xml data.client.name}}",
    "{{money data.amount_minor data.currency}}",
    "{{decimal data.amount_minor \"JPY\"}}",
    "{{money \"-0001\" \"kwd\"}}",
    "{{rfc3339 time}}",
    "{{format_date time \"%Y-%m-%d %Q\"}}",
    "{{format_date time \"%d.%m.%Y\"}}",
    "{{default data.missing \"x\"}}",
    "{{lookup data.items 2}}",
    "{{#each data.items}}",
    "{{/each}}",
    "{{@index}}{{this}}",
    "{{#if data.client}}",
    "{{else}}",
    "{{/if}}",
    "{{#with data.deep.a}}",
    "{{/with}}",
    "{{#unless @last}}",
    "{{/unless}}",
    "{{> body}}",
    "{{> (lookup . \"id\")}}",
    "{{#*inline \"p\"}}",
    "{{/inline}}",
    "{{> p}}",
    "{{#> p}}",
    "{{*foo}}",
    "{{../id}}",
    "{{this.[0]}}",
    "\"},",
    "<a>&",
    "{\"k\": ",
    "\u{0}\u{7f}\n",
];

fn template_token() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(TEMPLATE_TOKENS).prop_map(str::to_owned),
        "[a-z0-9 .\"{}<>&%-]{0,8}",
    ]
}

#[test]
fn template_corpus() {
    for (name, bytes) in corpus("template") {
        eprintln!("template/{name}");
        check_template(&String::from_utf8_lossy(&bytes));
    }
}

#[test]
fn template_fuzz() {
    let seeds: Vec<Vec<u8>> = corpus("template").into_iter().map(|(_, b)| b).collect();
    let input = prop_oneof![
        prop::collection::vec(template_token(), 0..24).prop_map(|t| t.concat()),
        mutated(seeds).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ];
    runner()
        .run(&input, |template| {
            check_template(&template);
            Ok(())
        })
        .unwrap();
}
