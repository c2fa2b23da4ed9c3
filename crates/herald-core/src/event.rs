//! The CloudEvents 1.0 envelope, decoded from structured JSON or from the
//! Kafka binary mode (`ce_*` headers, data as the value).

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::engine::{GeneralPurpose, GeneralPurposeConfig};

/// Decodes `data_base64` as RFC 4648 permits: unused trailing bits of the
/// last symbol need not be zero (several producers leave them set).
const BASE64_IN: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};
use thiserror::Error;

/// Why an event was rejected. Every variant names the attribute.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EventError {
    #[error("event is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("event must be a JSON object")]
    NotAnObject,
    #[error("missing required attribute `{0}`")]
    MissingAttribute(&'static str),
    #[error("invalid attribute `{name}`: {reason}")]
    InvalidAttribute { name: String, reason: String },
    #[error("unsupported specversion {0:?}: only \"1.0\" is supported")]
    UnsupportedSpecVersion(String),
    #[error("invalid data: {0}")]
    InvalidData(String),
}

pub type Result<T, E = EventError> = std::result::Result<T, E>;

/// The payload of an event.
#[derive(Debug, Clone, PartialEq)]
pub enum EventData {
    /// JSON data (`datacontenttype` absent or a JSON type).
    Json(Value),
    /// Any other textual data, kept as a string.
    Text(String),
    /// Binary data (`data_base64`, or non-UTF-8 bytes in binary mode).
    Binary(Vec<u8>),
}

/// A validated CloudEvents 1.0 event.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudEvent {
    pub id: String,
    pub source: String,
    /// `type` in CloudEvents.
    pub ty: String,
    /// The entity the event is about, e.g. a loan account id.
    pub subject: Option<String>,
    pub time: Option<DateTime<Utc>>,
    pub datacontenttype: Option<String>,
    pub dataschema: Option<String>,
    pub data: Option<EventData>,
    /// Extension attributes: strings, numbers or booleans.
    pub extensions: BTreeMap<String, Value>,
}

const SPEC_VERSION: &str = "1.0";
const CORE: &[&str] = &[
    "id",
    "source",
    "type",
    "specversion",
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
    "data",
    "data_base64",
];

/// Where a binary-mode event's attributes travel.
#[derive(Clone, Copy)]
enum Binding {
    /// `ce_*` headers, UTF-8 as is.
    Kafka,
    /// `ce-*` headers, percent-encoded (RFC 3986) beyond printable ASCII.
    Http,
}

impl Binding {
    fn prefix(self) -> &'static str {
        match self {
            Binding::Kafka => "ce_",
            Binding::Http => "ce-",
        }
    }
}

/// `%XX` sequences to bytes; `None` for a `%` not followed by two hex
/// digits.
fn percent_decode(raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let hex = raw.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Whether a content type denotes JSON data (absent means JSON, per the
/// CloudEvents JSON format).
pub fn is_json_content_type(content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else {
        return true;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

fn invalid(name: &str, reason: impl Into<String>) -> EventError {
    EventError::InvalidAttribute {
        name: name.to_owned(),
        reason: reason.into(),
    }
}

fn check_extension_name(name: &str) -> Result<()> {
    // CloudEvents: attribute names are lower-case ASCII letters and digits.
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(invalid(
            name,
            "extension names must be lower-case letters and digits only",
        ));
    }
    Ok(())
}

fn parse_time(raw: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| invalid("time", format!("{raw:?} is not an RFC 3339 timestamp: {e}")))
}

fn non_empty(name: &str, value: String) -> Result<String> {
    if value.is_empty() {
        Err(invalid(name, "must not be empty"))
    } else {
        Ok(value)
    }
}

impl CloudEvent {
    /// Decode a structured-mode event (`application/cloudevents+json`).
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| EventError::InvalidJson(e.to_string()))?;
        Self::from_value(value)
    }

    /// Decode a structured-mode event already parsed as JSON.
    pub fn from_value(value: Value) -> Result<Self> {
        let Value::Object(mut obj) = value else {
            return Err(EventError::NotAnObject);
        };
        let mut take_string = |name: &'static str| -> Result<Option<String>> {
            match obj.remove(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => non_empty(name, s).map(Some),
                Some(other) => Err(invalid(
                    name,
                    format!("expected a string, got {}", json_kind(&other)),
                )),
            }
        };
        let specversion =
            take_string("specversion")?.ok_or(EventError::MissingAttribute("specversion"))?;
        if specversion != SPEC_VERSION {
            return Err(EventError::UnsupportedSpecVersion(specversion));
        }
        let id = take_string("id")?.ok_or(EventError::MissingAttribute("id"))?;
        let source = take_string("source")?.ok_or(EventError::MissingAttribute("source"))?;
        let ty = take_string("type")?.ok_or(EventError::MissingAttribute("type"))?;
        let subject = take_string("subject")?;
        let time = take_string("time")?
            .as_deref()
            .map(parse_time)
            .transpose()?;
        let datacontenttype = take_string("datacontenttype")?;
        let dataschema = take_string("dataschema")?;
        let data_base64 = take_string("data_base64")?;
        let data = obj.remove("data");
        let data = match (data, data_base64) {
            (None | Some(Value::Null), None) => None,
            (None | Some(Value::Null), Some(b64)) => Some(EventData::Binary(
                BASE64_IN
                    .decode(b64.as_bytes())
                    .map_err(|e| invalid("data_base64", format!("not valid base64: {e}")))?,
            )),
            (Some(_), Some(_)) => {
                return Err(EventError::InvalidData(
                    "both `data` and `data_base64` are present".into(),
                ));
            }
            (Some(Value::String(s)), None) if !is_json_content_type(datacontenttype.as_deref()) => {
                Some(EventData::Text(s))
            }
            (Some(v), None) => Some(EventData::Json(v)),
        };
        let mut extensions = BTreeMap::new();
        for (name, value) in obj {
            check_extension_name(&name)?;
            match value {
                Value::String(_) | Value::Number(_) | Value::Bool(_) => {
                    extensions.insert(name, value);
                }
                Value::Null => {}
                other => {
                    return Err(invalid(
                        &name,
                        format!(
                            "extension values must be a string, number or boolean, got {}",
                            json_kind(&other)
                        ),
                    ));
                }
            }
        }
        Ok(Self {
            id,
            source,
            ty,
            subject,
            time,
            datacontenttype,
            dataschema,
            data,
            extensions,
        })
    }

    /// Decode a Kafka message: binary mode when a `ce_specversion` header is
    /// present, structured mode otherwise. Header names are matched
    /// case-insensitively; `content-type` carries `datacontenttype`.
    pub fn from_kafka(headers: &[(&str, &[u8])], value: Option<&[u8]>) -> Result<Self> {
        let binary = headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("ce_specversion"));
        if binary {
            Self::from_kafka_binary(headers, value)
        } else {
            Self::from_json(value.unwrap_or_default())
        }
    }

    /// Decode a binary-mode Kafka message: attributes in `ce_*` headers and
    /// the data as the message value.
    pub fn from_kafka_binary(headers: &[(&str, &[u8])], value: Option<&[u8]>) -> Result<Self> {
        Self::from_binary(Binding::Kafka, headers, value)
    }

    /// Decode an HTTP request in binary mode (the CloudEvents SDKs'
    /// default): attributes in percent-encoded `ce-*` headers, the data as
    /// the body, its type in `Content-Type`.
    pub fn from_http_binary(headers: &[(&str, &[u8])], body: Option<&[u8]>) -> Result<Self> {
        Self::from_binary(Binding::Http, headers, body)
    }

    fn from_binary(
        binding: Binding,
        headers: &[(&str, &[u8])],
        value: Option<&[u8]>,
    ) -> Result<Self> {
        let prefix = binding.prefix();
        let mut attrs = Map::new();
        for (name, raw) in headers {
            let lower = name.to_ascii_lowercase();
            let attr = if lower == "content-type" {
                "datacontenttype".to_owned()
            } else if let Some(attr) = lower.strip_prefix(prefix) {
                if matches!(attr, "data" | "data_base64" | "datacontenttype") {
                    return Err(invalid(attr, format!("not allowed as a {prefix} header")));
                }
                attr.to_owned()
            } else {
                continue;
            };
            let decoded;
            let raw: &[u8] = match binding {
                Binding::Kafka => raw,
                Binding::Http => {
                    decoded = percent_decode(raw)
                        .ok_or_else(|| invalid(&attr, "header value is not percent-encoded"))?;
                    &decoded
                }
            };
            let text = std::str::from_utf8(raw)
                .map_err(|_| invalid(&attr, "header value is not UTF-8"))?;
            attrs.insert(attr, Value::String(text.to_owned()));
        }
        let content_type = attrs.get("datacontenttype").and_then(Value::as_str);
        let data = match value {
            None | Some([]) => None,
            Some(bytes) if is_json_content_type(content_type) => Some(
                serde_json::from_slice::<Value>(bytes)
                    .map_err(|e| EventError::InvalidData(format!("expected JSON: {e}")))?,
            ),
            Some(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) => Some(Value::String(text.to_owned())),
                Err(_) => {
                    attrs.insert("data_base64".into(), Value::String(BASE64.encode(bytes)));
                    None
                }
            },
        };
        if let Some(data) = data {
            attrs.insert("data".into(), data);
        }
        Self::from_value(Value::Object(attrs))
    }

    /// The event in the CloudEvents JSON format. This is also the template
    /// context: `{{id}}`, `{{type}}`, `{{data.amount}}`, `{{tenant}}`.
    pub fn to_json(&self) -> Value {
        let mut obj = Map::new();
        // Extensions first so core attributes always win.
        for (k, v) in &self.extensions {
            obj.insert(k.clone(), v.clone());
        }
        obj.insert("specversion".into(), SPEC_VERSION.into());
        obj.insert("id".into(), self.id.clone().into());
        obj.insert("source".into(), self.source.clone().into());
        obj.insert("type".into(), self.ty.clone().into());
        let optional = [
            ("subject", self.subject.clone()),
            (
                "time",
                self.time
                    .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
            ),
            ("datacontenttype", self.datacontenttype.clone()),
            ("dataschema", self.dataschema.clone()),
        ];
        for (name, value) in optional {
            if let Some(v) = value {
                obj.insert(name.into(), v.into());
            }
        }
        match &self.data {
            None => {}
            Some(EventData::Json(v)) => {
                obj.insert("data".into(), v.clone());
            }
            Some(EventData::Text(s)) => {
                obj.insert("data".into(), s.clone().into());
            }
            Some(EventData::Binary(b)) => {
                obj.insert("data_base64".into(), BASE64.encode(b).into());
            }
        }
        Value::Object(obj)
    }

    /// Whether `name` is a core attribute rather than an extension.
    pub fn is_core_attribute(name: &str) -> bool {
        CORE.contains(&name)
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn base() -> Value {
        json!({
            "specversion": "1.0",
            "id": "evt-1",
            "source": "/core/loans",
            "type": "bank.loan.disbursed",
            "subject": "LN-42",
            "time": "2024-05-01T10:15:30+02:00",
            "tenant": "acme",
            "data": {"amount_minor": 123456, "currency": "EUR"}
        })
    }

    fn err(v: Value) -> String {
        CloudEvent::from_value(v).unwrap_err().to_string()
    }

    #[test]
    fn decodes_structured_json() {
        let e = CloudEvent::from_json(base().to_string().as_bytes()).unwrap();
        assert_eq!(e.id, "evt-1");
        assert_eq!(e.ty, "bank.loan.disbursed");
        assert_eq!(e.subject.as_deref(), Some("LN-42"));
        assert_eq!(e.time.unwrap().to_rfc3339(), "2024-05-01T08:15:30+00:00");
        assert_eq!(e.extensions["tenant"], json!("acme"));
        assert_eq!(
            e.data,
            Some(EventData::Json(
                json!({"amount_minor": 123456, "currency": "EUR"})
            ))
        );
        let ctx = e.to_json();
        assert_eq!(ctx["time"], json!("2024-05-01T08:15:30Z"));
        assert_eq!(ctx["tenant"], json!("acme"));
        assert_eq!(CloudEvent::from_value(ctx).unwrap(), e);
    }

    #[test]
    fn every_rejection_names_the_field() {
        let without = |k: &str| {
            let mut v = base();
            v.as_object_mut().unwrap().remove(k);
            v
        };
        let with = |k: &str, x: Value| {
            let mut v = base();
            v[k] = x;
            v
        };
        assert_eq!(err(without("id")), "missing required attribute `id`");
        assert_eq!(
            err(without("source")),
            "missing required attribute `source`"
        );
        assert_eq!(err(without("type")), "missing required attribute `type`");
        assert_eq!(
            err(without("specversion")),
            "missing required attribute `specversion`"
        );
        assert_eq!(
            err(with("specversion", json!("0.3"))),
            "unsupported specversion \"0.3\": only \"1.0\" is supported"
        );
        assert_eq!(
            err(with("id", json!(""))),
            "invalid attribute `id`: must not be empty"
        );
        assert_eq!(
            err(with("id", json!(7))),
            "invalid attribute `id`: expected a string, got a number"
        );
        assert_eq!(
            err(with("subject", json!(""))),
            "invalid attribute `subject`: must not be empty"
        );
        assert!(
            err(with("time", json!("yesterday"))).starts_with(
                "invalid attribute `time`: \"yesterday\" is not an RFC 3339 timestamp"
            )
        );
        assert_eq!(
            err(with("Tenant", json!("x"))),
            "invalid attribute `Tenant`: extension names must be lower-case letters and digits only"
        );
        assert_eq!(
            err(with("tenant", json!({"a": 1}))),
            "invalid attribute `tenant`: extension values must be a string, number or boolean, got an object"
        );
        assert_eq!(
            err(with("data_base64", json!("AA=="))),
            "invalid data: both `data` and `data_base64` are present"
        );
        assert_eq!(err(json!([1])), "event must be a JSON object");
        assert!(
            CloudEvent::from_json(b"{nope")
                .unwrap_err()
                .to_string()
                .starts_with("event is not valid JSON: ")
        );
    }

    #[test]
    fn keeps_non_json_data_as_text_or_binary() {
        let mut v = base();
        v["datacontenttype"] = json!("application/xml");
        v["data"] = json!("<loan id=\"1\"/>");
        let e = CloudEvent::from_value(v).unwrap();
        assert_eq!(e.data, Some(EventData::Text("<loan id=\"1\"/>".into())));

        let mut v = base();
        v.as_object_mut().unwrap().remove("data");
        v["data_base64"] = json!("AAEC");
        let e = CloudEvent::from_value(v).unwrap();
        assert_eq!(e.data, Some(EventData::Binary(vec![0, 1, 2])));
        assert_eq!(e.to_json()["data_base64"], json!("AAEC"));
    }

    #[test]
    fn decodes_http_binary_mode_with_percent_encoded_attributes() {
        let headers: Vec<(&str, &[u8])> = vec![
            ("ce-specversion", b"1.0"),
            ("CE-ID", b"e-1"),
            ("ce-source", b"/core"),
            ("ce-type", b"bank.loan.disbursed"),
            ("ce-subject", b"S%20%C3%A9%20%25"),
            ("ce-tenant", b"acme"),
            ("content-type", b"application/json"),
            ("user-agent", b"ignored"),
        ];
        let e = CloudEvent::from_http_binary(&headers, Some(br#"{"amount": 5}"#)).unwrap();
        assert_eq!(e.id, "e-1");
        assert_eq!(e.subject.as_deref(), Some("S \u{e9} %"));
        assert_eq!(e.datacontenttype.as_deref(), Some("application/json"));
        assert_eq!(e.to_json()["data"], json!({"amount": 5}));
        assert_eq!(e.to_json()["tenant"], "acme");
        let bad: Vec<(&str, &[u8])> = vec![
            ("ce-specversion", b"1.0"),
            ("ce-id", b"1"),
            ("ce-source", b"/s"),
            ("ce-type", b"t"),
            ("ce-subject", b"100%"),
        ];
        let err = CloudEvent::from_http_binary(&bad, None).unwrap_err();
        assert!(err.to_string().contains("percent-encoded"), "{err}");
        let missing: Vec<(&str, &[u8])> = vec![("ce-specversion", b"1.0"), ("ce-id", b"1")];
        assert!(CloudEvent::from_http_binary(&missing, None).is_err());
    }

    #[test]
    fn decodes_kafka_binary_mode() {
        let headers: Vec<(&str, &[u8])> = vec![
            ("ce_specversion", b"1.0"),
            ("ce_id", b"evt-9"),
            ("ce_source", b"/core/deposits"),
            ("ce_type", b"bank.deposit.posted"),
            ("ce_subject", b"DA-7"),
            ("ce_time", b"2024-05-01T10:00:00Z"),
            ("ce_tenant", b"acme"),
            ("content-type", b"application/json"),
            ("traceparent", b"ignored"),
        ];
        let e = CloudEvent::from_kafka(&headers, Some(&br#"{"amount":"10.00"}"#[..])).unwrap();
        assert_eq!(e.id, "evt-9");
        assert_eq!(e.subject.as_deref(), Some("DA-7"));
        assert_eq!(e.datacontenttype.as_deref(), Some("application/json"));
        assert_eq!(e.extensions["tenant"], json!("acme"));
        assert!(!e.extensions.contains_key("traceparent"));
        assert_eq!(e.data, Some(EventData::Json(json!({"amount": "10.00"}))));

        let text: Vec<(&str, &[u8])> = vec![
            ("ce_specversion", b"1.0"),
            ("ce_id", b"1"),
            ("ce_source", b"s"),
            ("ce_type", b"t"),
            ("content-type", b"text/plain"),
        ];
        let e = CloudEvent::from_kafka(&text, Some(&b"hello"[..])).unwrap();
        assert_eq!(e.data, Some(EventData::Text("hello".into())));
        let e = CloudEvent::from_kafka(&text, Some(&[0xff_u8, 0xfe][..])).unwrap();
        assert_eq!(e.data, Some(EventData::Binary(vec![0xff, 0xfe])));
        let e = CloudEvent::from_kafka(&text, None).unwrap();
        assert_eq!(e.data, None);

        let missing: Vec<(&str, &[u8])> = vec![("ce_specversion", b"1.0"), ("ce_id", b"1")];
        assert_eq!(
            CloudEvent::from_kafka(&missing, None).unwrap_err(),
            EventError::MissingAttribute("source")
        );
        let bad_json: Vec<(&str, &[u8])> = vec![
            ("ce_specversion", b"1.0"),
            ("ce_id", b"1"),
            ("ce_source", b"s"),
            ("ce_type", b"t"),
        ];
        assert!(
            CloudEvent::from_kafka(&bad_json, Some(&b"not json"[..]))
                .unwrap_err()
                .to_string()
                .starts_with("invalid data: expected JSON: ")
        );
        let not_utf8: Vec<(&str, &[u8])> = vec![("ce_specversion", b"1.0"), ("ce_id", &[0xff])];
        assert_eq!(
            CloudEvent::from_kafka(&not_utf8, None)
                .unwrap_err()
                .to_string(),
            "invalid attribute `id`: header value is not UTF-8"
        );
    }

    #[test]
    fn structured_mode_over_kafka() {
        let headers: Vec<(&str, &[u8])> = vec![("content-type", b"application/cloudevents+json")];
        let e = CloudEvent::from_kafka(&headers, Some(base().to_string().as_bytes())).unwrap();
        assert_eq!(e.id, "evt-1");
    }

    #[test]
    fn json_content_types() {
        assert!(is_json_content_type(None));
        assert!(is_json_content_type(Some(
            "application/json; charset=utf-8"
        )));
        assert!(is_json_content_type(Some("application/vnd.bank+json")));
        assert!(!is_json_content_type(Some("application/xml")));
    }
}
