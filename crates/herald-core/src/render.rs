//! Handlebars rendering: one strict registry per escaping mode, Herald's
//! helpers, and the mapping of Handlebars errors to readable messages.

use std::fmt::Write as _;
use std::io;

use chrono::format::StrftimeItems;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use handlebars::{
    Context, Handlebars, Helper, HelperDef, HelperResult, JsonRender, Output, RenderContext,
    RenderErrorReason, ScopedJson, Template, TemplateError,
};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

/// Why a request could not be rendered. Stored as the notification's
/// `render_failed` reason, so messages say where and why.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RenderError {
    #[error("{part}: {reason}")]
    Template { part: String, reason: String },
    #[error("url: rendered URL {url:?} is not an absolute http(s) URL: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("header {name}: rendered value contains a control character")]
    InvalidHeaderValue { name: String },
    #[error("{part}: rendered output exceeds the limit of {limit} bytes")]
    TooLarge { part: String, limit: usize },
    #[error("body: rendered body is not valid JSON ({reason}); use {{{{json ...}}}} for values")]
    InvalidJsonBody { reason: String },
    #[error("webhook {0:?} is not part of this webhook set")]
    UnknownWebhook(String),
}

impl RenderError {
    /// Where in which template the error is, when the template engine knew:
    /// (part, line, column), 1-based, as the message says it.
    pub fn position(&self) -> Option<(&str, u32, u32)> {
        let RenderError::Template { part, reason } = self else {
            return None;
        };
        let at = reason.find("line ")?;
        let rest = &reason[at + "line ".len()..];
        let (line, rest) = rest.split_once(", column ")?;
        let column: String = rest.chars().take_while(char::is_ascii_digit).collect();
        Some((part, line.parse().ok()?, column.parse().ok()?))
    }
}

/// The format of a body template, which decides the default escaping of
/// `{{value}}` and the `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyFormat {
    /// `{{x}}` is escaped as JSON string content; the result must parse as JSON.
    #[default]
    Json,
    /// `{{x}}` is XML-escaped.
    Xml,
    /// `{{x}}` is inserted as is.
    Text,
}

impl BodyFormat {
    pub fn default_content_type(self) -> &'static str {
        match self {
            BodyFormat::Json => "application/json",
            BodyFormat::Xml => "application/xml",
            BodyFormat::Text => "text/plain; charset=utf-8",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BodyFormat::Json => "json",
            BodyFormat::Xml => "xml",
            BodyFormat::Text => "text",
        }
    }
}

/// Which registry (escaping mode) a template is rendered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// URL templates: values are percent-encoded.
    Url,
    /// Header templates and text bodies: no escaping.
    Plain,
    Json,
    Xml,
}

impl From<BodyFormat> for Mode {
    fn from(f: BodyFormat) -> Self {
        match f {
            BodyFormat::Json => Mode::Json,
            BodyFormat::Xml => Mode::Xml,
            BodyFormat::Text => Mode::Plain,
        }
    }
}

/// Strict Handlebars registries, one per escaping mode, with Herald's
/// helpers registered in each.
pub(crate) struct Engines {
    url: Handlebars<'static>,
    plain: Handlebars<'static>,
    json: Handlebars<'static>,
    xml: Handlebars<'static>,
}

impl std::fmt::Debug for Engines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engines").finish_non_exhaustive()
    }
}

impl Engines {
    pub(crate) fn new() -> Self {
        Self {
            url: registry(percent_encode_value),
            plain: registry(handlebars::no_escape),
            json: registry(json_escape),
            xml: registry(xml_escape),
        }
    }

    fn get(&self, mode: Mode) -> &Handlebars<'static> {
        match mode {
            Mode::Url => &self.url,
            Mode::Plain => &self.plain,
            Mode::Json => &self.json,
            Mode::Xml => &self.xml,
        }
    }

    fn get_mut(&mut self, mode: Mode) -> &mut Handlebars<'static> {
        match mode {
            Mode::Url => &mut self.url,
            Mode::Plain => &mut self.plain,
            Mode::Json => &mut self.json,
            Mode::Xml => &mut self.xml,
        }
    }

    /// Compile and register a template; the error is a readable message.
    pub(crate) fn register(&mut self, mode: Mode, name: &str, source: &str) -> Result<(), String> {
        // Handlebars parses, renders and drops templates recursively: a
        // deeply nested template overflows the stack and aborts the process,
        // so depth is checked before the parser sees the source.
        check_nesting(source)?;
        let template = Template::compile(source).map_err(template_error)?;
        reject_partials(&template)?;
        self.get_mut(mode).register_template(name, template);
        Ok(())
    }

    /// Render template `name`, stopping as soon as the output exceeds
    /// `limit` bytes so a runaway `{{#each}}` cannot exhaust memory.
    pub(crate) fn render(
        &self,
        mode: Mode,
        name: &str,
        part: &str,
        context: &Context,
        limit: usize,
    ) -> Result<String, RenderError> {
        let mut out = LimitedWriter {
            buf: Vec::new(),
            limit,
            exceeded: false,
        };
        let result = self
            .get(mode)
            .render_with_context_to_write(name, context, &mut out);
        if out.exceeded {
            return Err(RenderError::TooLarge {
                part: part.to_owned(),
                limit,
            });
        }
        result.map_err(|e| RenderError::Template {
            part: part.to_owned(),
            reason: render_error(&e),
        })?;
        // Handlebars writes whole `&str` segments, so the bytes are UTF-8.
        String::from_utf8(out.buf).map_err(|e| RenderError::Template {
            part: part.to_owned(),
            reason: e.to_string(),
        })
    }
}

/// Deepest nesting of blocks (`{{#if}}`, `{{#each}}`, `{{else if}}` chains)
/// a template may have.
pub const MAX_BLOCK_DEPTH: usize = 32;
/// Deepest nesting of sub-expressions, `(money (lookup ...) ...)`.
pub const MAX_SUBEXPRESSION_DEPTH: usize = 16;

/// Reject templates nested deeper than the limits. A conservative scan of
/// the source (parentheses inside string literals count too): it only has to
/// be cheap, iterative and never under-count.
fn check_nesting(source: &str) -> Result<(), String> {
    let mut blocks = 0usize;
    let mut rest = source;
    while let Some(open) = rest.find("{{") {
        let inner = &rest[open + 2..];
        let Some(close) = inner.find("}}") else {
            break;
        };
        let tag = inner[..close].trim_start_matches(['{', '~']).trim_start();
        if tag.starts_with('#') || (tag.starts_with('^') && tag.len() > 1) {
            blocks += 1;
        } else if tag.starts_with('/') {
            blocks = blocks.saturating_sub(1);
        } else if let Some(chain) = tag.strip_prefix("else") {
            // `{{else if x}}` nests one more block inside the previous one.
            if chain.starts_with(char::is_whitespace) && !chain.trim().is_empty() {
                blocks += 1;
            }
        }
        if blocks > MAX_BLOCK_DEPTH {
            return Err(format!(
                "invalid template: blocks nested more than {MAX_BLOCK_DEPTH} deep"
            ));
        }
        let mut parens = 0usize;
        for c in tag.chars() {
            match c {
                '(' => parens += 1,
                ')' => parens = parens.saturating_sub(1),
                _ => {}
            }
            if parens > MAX_SUBEXPRESSION_DEPTH {
                return Err(format!(
                    "invalid template: sub-expressions nested more than {MAX_SUBEXPRESSION_DEPTH} deep"
                ));
            }
        }
        rest = &inner[close + 2..];
    }
    Ok(())
}

/// Partials and decorators are not part of Herald's template language: a
/// partial can include another webhook's template, or itself through an
/// inline partial, and recurse without bound.
fn reject_partials(template: &Template) -> Result<(), String> {
    use handlebars::template::TemplateElement as E;
    let mut stack = vec![template];
    while let Some(t) = stack.pop() {
        for element in &t.elements {
            match element {
                E::PartialExpression(_) | E::PartialBlock(_) => {
                    return Err("invalid template: partials ({{> name}}) are not supported".into());
                }
                E::DecoratorExpression(_) | E::DecoratorBlock(_) => {
                    return Err(
                        "invalid template: decorators ({{* name}}, {{#* inline}}) are not supported"
                            .into(),
                    );
                }
                E::HelperBlock(h) | E::Expression(h) | E::HtmlExpression(h) => {
                    stack.extend(h.template.iter().chain(h.inverse.iter()));
                }
                // Text, comments and any element a later Handlebars adds:
                // none of them includes another template.
                _ => {}
            }
        }
    }
    Ok(())
}

fn registry(escape: fn(&str) -> String) -> Handlebars<'static> {
    let mut hb = Handlebars::new();
    hb.set_strict_mode(true);
    hb.register_escape_fn(escape);
    hb.register_helper("json", Box::new(JsonHelper));
    hb.register_helper("xml", Box::new(XmlHelper));
    hb.register_helper(
        "money",
        Box::new(MoneyHelper {
            with_currency: true,
        }),
    );
    hb.register_helper(
        "decimal",
        Box::new(MoneyHelper {
            with_currency: false,
        }),
    );
    hb.register_helper("rfc3339", Box::new(Rfc3339Helper));
    hb.register_helper("format_date", Box::new(FormatDateHelper));
    hb.register_helper("default", Box::new(DefaultHelper));
    hb
}

struct LimitedWriter {
    buf: Vec<u8>,
    limit: usize,
    exceeded: bool,
}

impl io::Write for LimitedWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if self.buf.len() + bytes.len() > self.limit {
            self.exceeded = true;
            return Err(io::Error::other("output limit exceeded"));
        }
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn template_error(e: TemplateError) -> String {
    match e.pos() {
        Some((line, col)) => format!(
            "invalid template at line {line}, column {col}: {}",
            e.reason()
        ),
        None => format!("invalid template: {}", e.reason()),
    }
}

fn render_error(e: &handlebars::RenderError) -> String {
    let reason = match e.reason() {
        RenderErrorReason::MissingVariable(Some(path)) => format!(
            "missing field `{path}` (templates are strict: guard optional fields with {{{{#if}}}} or the default helper)"
        ),
        RenderErrorReason::MissingVariable(None) => "missing value".to_owned(),
        RenderErrorReason::HelperNotFound(name) => format!("unknown helper `{name}`"),
        RenderErrorReason::Other(msg) => msg.clone(),
        other => other.to_string(),
    };
    match (e.line_no, e.column_no) {
        (Some(line), Some(col)) => format!("line {line}, column {col}: {reason}"),
        _ => reason,
    }
}

fn helper_error(msg: String) -> handlebars::RenderError {
    RenderErrorReason::Other(msg).into()
}

/// Parameter `idx` of helper `helper`, failing on a missing field (strict
/// mode hands missing values to helpers, which must reject them).
fn param<'a>(
    h: &'a Helper<'_>,
    idx: usize,
    helper: &str,
) -> Result<&'a Value, handlebars::RenderError> {
    let p = h.param(idx).ok_or_else(|| {
        helper_error(format!(
            "helper `{helper}` needs a parameter at position {}",
            idx + 1
        ))
    })?;
    if p.is_value_missing() {
        let path = p.relative_path().map_or("?", String::as_str);
        return Err(helper_error(format!(
            "helper `{helper}`: missing field `{path}`"
        )));
    }
    Ok(p.value())
}

fn write_raw(out: &mut dyn Output, s: &str) -> HelperResult {
    out.write(s).map_err(RenderErrorReason::from)?;
    Ok(())
}

/// `{{json value}}`: the value as a JSON literal, never escaped again.
struct JsonHelper;

impl HelperDef for JsonHelper {
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        let value = param(h, 0, "json")?;
        let text = serde_json::to_string(value)
            .map_err(|e| helper_error(format!("helper `json`: {e}")))?;
        write_raw(out, &text)
    }
}

/// `{{xml value}}`: the value XML-escaped, never escaped again.
struct XmlHelper;

impl HelperDef for XmlHelper {
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        let value = param(h, 0, "xml")?;
        write_raw(out, &xml_escape(&value.render()))
    }
}

/// `{{money minor currency}}` → `1234.56 EUR`; `{{decimal minor currency}}`
/// → `1234.56`.
struct MoneyHelper {
    with_currency: bool,
}

impl HelperDef for MoneyHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, handlebars::RenderError> {
        let name = if self.with_currency {
            "money"
        } else {
            "decimal"
        };
        let amount = param(h, 0, name)?;
        let currency = param(h, 1, name)?;
        let text = format_money(amount, currency, self.with_currency)
            .map_err(|e| helper_error(format!("helper `{name}`: {e}")))?;
        Ok(ScopedJson::Derived(Value::String(text)))
    }
}

/// `{{rfc3339 time}}`: a timestamp normalised to UTC RFC 3339.
struct Rfc3339Helper;

impl HelperDef for Rfc3339Helper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, handlebars::RenderError> {
        let t = parse_instant(param(h, 0, "rfc3339")?)
            .map_err(|e| helper_error(format!("helper `rfc3339`: {e}")))?;
        Ok(ScopedJson::Derived(Value::String(
            t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        )))
    }
}

/// `{{format_date time "%d.%m.%Y"}}`: chrono strftime, in UTC.
struct FormatDateHelper;

impl HelperDef for FormatDateHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, handlebars::RenderError> {
        let t = parse_instant(param(h, 0, "format_date")?)
            .map_err(|e| helper_error(format!("helper `format_date`: {e}")))?;
        let Value::String(fmt) = param(h, 1, "format_date")? else {
            return Err(helper_error(
                "helper `format_date`: the format must be a string such as \"%Y-%m-%d\"".into(),
            ));
        };
        let text = format_instant(t, fmt)
            .map_err(|e| helper_error(format!("helper `format_date`: {e}")))?;
        Ok(ScopedJson::Derived(Value::String(text)))
    }
}

/// `{{default value fallback}}`: `value` unless it is missing or null.
struct DefaultHelper;

impl HelperDef for DefaultHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, handlebars::RenderError> {
        let first = h
            .param(0)
            .ok_or_else(|| helper_error("helper `default` needs a value and a fallback".into()))?;
        if !first.is_value_missing() && !first.value().is_null() {
            return Ok(ScopedJson::Derived(first.value().clone()));
        }
        let fallback = param(h, 1, "default")?;
        Ok(ScopedJson::Derived(fallback.clone()))
    }
}

/// ISO 4217 minor-unit exponents that differ from the usual 2.
fn currency_exponent(code: &str) -> u32 {
    match code {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
        | "UYI" | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        "CLF" | "UYW" => 4,
        _ => 2,
    }
}

/// Format an amount in minor units as a decimal with the currency's
/// exponent. Works on the digits, so any size is exact.
pub fn format_money(
    amount: &Value,
    currency: &Value,
    with_currency: bool,
) -> Result<String, String> {
    let Value::String(code) = currency else {
        return Err(format!(
            "currency must be a three-letter ISO 4217 code, got {currency}"
        ));
    };
    let code = code.to_ascii_uppercase();
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "currency must be a three-letter ISO 4217 code, got {code:?}"
        ));
    }
    let digits = match amount {
        Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
        Value::String(s) => s.trim().to_owned(),
        other => {
            return Err(format!(
                "amount must be an integer in minor units, got {other}"
            ));
        }
    };
    let (negative, digits) = match digits.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, digits.as_str()),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "amount must be an integer in minor units, got {amount}"
        ));
    }
    let digits = digits.trim_start_matches('0');
    let exp = currency_exponent(&code) as usize;
    let padded = format!("{digits:0>width$}", width = exp + 1);
    let (int, frac) = padded.split_at(padded.len() - exp);
    let mut text = String::new();
    if negative && !digits.is_empty() {
        text.push('-');
    }
    text.push_str(int);
    if exp > 0 {
        text.push('.');
        text.push_str(frac);
    }
    if with_currency {
        text.push(' ');
        text.push_str(&code);
    }
    Ok(text)
}

/// An RFC 3339 timestamp, or a `YYYY-MM-DD` date (midnight UTC).
fn parse_instant(value: &Value) -> Result<DateTime<Utc>, String> {
    let Value::String(s) = value else {
        return Err(format!(
            "expected an RFC 3339 timestamp or a date, got {value}"
        ));
    };
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| format!("{s:?} is not an RFC 3339 timestamp or a YYYY-MM-DD date"))
}

fn format_instant(t: DateTime<Utc>, fmt: &str) -> Result<String, String> {
    // Checked up front: formatting with an invalid item would panic in
    // `to_string`.
    let items = StrftimeItems::new(fmt)
        .parse()
        .map_err(|_| format!("invalid format string {fmt:?}"))?;
    let mut text = String::new();
    write!(text, "{}", t.format_with_items(items.iter()))
        .map_err(|_| format!("cannot format with {fmt:?}"))?;
    Ok(text)
}

/// Everything but RFC 3986 unreserved characters is encoded, so a value can
/// never add a path segment, a query or a fragment.
const URL_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

pub(crate) fn percent_encode_value(s: &str) -> String {
    // "." and ".." are path navigation, not data.
    if !s.is_empty() && s.bytes().all(|b| b == b'.') {
        return "%2E".repeat(s.len());
    }
    utf8_percent_encode(s, URL_VALUE).to_string()
}

pub(crate) fn json_escape(s: &str) -> String {
    let quoted = serde_json::to_string(s).unwrap_or_default();
    quoted[1..quoted.len() - 1].to_owned()
}

pub(crate) fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn render(mode: Mode, template: &str, data: Value) -> Result<String, RenderError> {
        let mut e = Engines::new();
        e.register(mode, "t", template)
            .map_err(|reason| RenderError::Template {
                part: "t".into(),
                reason,
            })?;
        e.render(mode, "t", "body", &Context::from(data), 1 << 20)
    }

    fn ok(mode: Mode, template: &str, data: Value) -> String {
        render(mode, template, data).unwrap()
    }

    fn err(mode: Mode, template: &str, data: Value) -> String {
        render(mode, template, data).unwrap_err().to_string()
    }

    #[test]
    fn an_error_knows_its_position_when_the_engine_does() {
        let e = render(Mode::Plain, "ok\n  {{data.name}}", json!({"data": {}})).unwrap_err();
        assert_eq!(e.position(), Some(("body", 2, 3)), "{e}");
        let e = render(Mode::Plain, "{{nope 1}}", json!({})).unwrap_err();
        assert_eq!(e.position(), Some(("body", 1, 1)), "{e}");
        let e = RenderError::InvalidHeaderValue { name: "x".into() };
        assert_eq!(e.position(), None);
    }

    #[test]
    fn strict_mode_rejects_missing_fields() {
        assert_eq!(
            err(Mode::Plain, "Hi {{data.name}}", json!({"data": {}})),
            "body: line 1, column 4: missing field `data.name` (templates are strict: guard optional fields with {{#if}} or the default helper)"
        );
        assert_eq!(
            ok(
                Mode::Plain,
                "{{#if subject}}x{{else}}none{{/if}}",
                json!({})
            ),
            "none"
        );
        assert_eq!(
            ok(Mode::Plain, "{{default subject \"n/a\"}}", json!({})),
            "n/a"
        );
        assert_eq!(
            ok(
                Mode::Plain,
                "{{default subject \"n/a\"}}",
                json!({"subject": null})
            ),
            "n/a"
        );
        assert_eq!(
            ok(
                Mode::Plain,
                "{{default subject \"n/a\"}}",
                json!({"subject": "LN-1"})
            ),
            "LN-1"
        );
        assert_eq!(
            err(Mode::Plain, "{{json data.x}}", json!({"data": {}})),
            "body: line 1, column 1: helper `json`: missing field `data.x`"
        );
        assert_eq!(
            err(Mode::Plain, "{{nope 1}}", json!({})),
            "body: line 1, column 1: unknown helper `nope`"
        );
    }

    #[test]
    fn json_helper_emits_valid_literals() {
        let data =
            json!({"s": "a \"quoted\"\n<tag> & ü", "n": 12.5, "o": {"k": [1, null]}, "b": true});
        assert_eq!(
            ok(
                Mode::Json,
                "{\"s\": {{json s}}, \"n\": {{json n}}, \"o\": {{json o}}, \"b\": {{json b}}}",
                data.clone()
            ),
            r#"{"s": "a \"quoted\"\n<tag> & ü", "n": 12.5, "o": {"k":[1,null]}, "b": true}"#
        );
        // Plain `{{x}}` in a JSON body is escaped as string content.
        assert_eq!(
            ok(Mode::Json, "\"{{s}}\"", data.clone()),
            r#""a \"quoted\"\n<tag> & ü""#
        );
        // No HTML escaping anywhere.
        assert_eq!(ok(Mode::Plain, "{{s}}", data), "a \"quoted\"\n<tag> & ü");
    }

    #[test]
    fn xml_escaping() {
        let data = json!({"s": "<a href='x'>&\"</a>"});
        let escaped = "&lt;a href=&apos;x&apos;&gt;&amp;&quot;&lt;/a&gt;";
        assert_eq!(
            ok(Mode::Xml, "<n>{{s}}</n>", data.clone()),
            format!("<n>{escaped}</n>")
        );
        // `xml` is not escaped twice inside an XML body.
        assert_eq!(
            ok(Mode::Xml, "<n>{{xml s}}</n>", data.clone()),
            format!("<n>{escaped}</n>")
        );
        assert_eq!(ok(Mode::Plain, "{{xml s}}", data), escaped);
    }

    #[test]
    fn money_uses_iso_4217_exponents() {
        let m = |a: Value, c: &str| ok(Mode::Plain, "{{money a c}}", json!({"a": a, "c": c}));
        assert_eq!(m(json!(123456), "EUR"), "1234.56 EUR");
        assert_eq!(m(json!(5), "EUR"), "0.05 EUR");
        assert_eq!(m(json!(-5), "usd"), "-0.05 USD");
        assert_eq!(m(json!(0), "EUR"), "0.00 EUR");
        assert_eq!(m(json!(1500), "JPY"), "1500 JPY");
        assert_eq!(m(json!(1234), "KWD"), "1.234 KWD");
        assert_eq!(m(json!(12345), "CLF"), "1.2345 CLF");
        assert_eq!(
            m(json!("99999999999999999999999"), "EUR"),
            "999999999999999999999.99 EUR"
        );
        assert_eq!(m(json!("-000"), "EUR"), "0.00 EUR");
        assert_eq!(
            ok(Mode::Plain, "{{decimal a \"EUR\"}}", json!({"a": 123456})),
            "1234.56"
        );
        assert_eq!(
            err(Mode::Plain, "{{money a \"EUR\"}}", json!({"a": 12.5})),
            "body: line 1, column 1: helper `money`: amount must be an integer in minor units, got 12.5"
        );
        assert_eq!(
            err(Mode::Plain, "{{money 1 \"EURO\"}}", json!({})),
            "body: line 1, column 1: helper `money`: currency must be a three-letter ISO 4217 code, got \"EURO\""
        );
        assert_eq!(
            err(Mode::Plain, "{{money a}}", json!({"a": 1})),
            "body: line 1, column 1: helper `money` needs a parameter at position 2"
        );
    }

    #[test]
    fn dates() {
        let data = json!({"t": "2024-05-01T23:30:00-02:00", "d": "2024-02-29"});
        assert_eq!(
            ok(Mode::Plain, "{{rfc3339 t}}", data.clone()),
            "2024-05-02T01:30:00Z"
        );
        assert_eq!(
            ok(Mode::Plain, "{{rfc3339 d}}", data.clone()),
            "2024-02-29T00:00:00Z"
        );
        assert_eq!(
            ok(
                Mode::Plain,
                "{{format_date t \"%d.%m.%Y %H:%M\"}}",
                data.clone()
            ),
            "02.05.2024 01:30"
        );
        assert_eq!(
            err(Mode::Plain, "{{format_date t \"%Q\"}}", data.clone()),
            "body: line 1, column 1: helper `format_date`: invalid format string \"%Q\""
        );
        assert_eq!(
            err(Mode::Plain, "{{rfc3339 x}}", json!({"x": "tomorrow"})),
            "body: line 1, column 1: helper `rfc3339`: \"tomorrow\" is not an RFC 3339 timestamp or a YYYY-MM-DD date"
        );
    }

    #[test]
    fn url_values_are_percent_encoded() {
        let data = json!({"a": "x/y?z#w &ü", "dots": ".."});
        assert_eq!(
            ok(Mode::Url, "https://h/{{a}}/{{dots}}", data),
            "https://h/x%2Fy%3Fz%23w%20%26%C3%BC/%2E%2E"
        );
        assert_eq!(percent_encode_value("LN-42_a.b~c"), "LN-42_a.b~c");
    }

    #[test]
    fn template_syntax_errors_have_a_position() {
        let e = err(Mode::Plain, "a\n{{#if x}}", json!({}));
        assert!(e.starts_with("t: invalid template at line "), "{e}");
    }

    #[test]
    fn output_is_bounded() {
        let mut e = Engines::new();
        e.register(Mode::Plain, "t", "{{#each items}}xxxxxxxxxx{{/each}}")
            .unwrap();
        let ctx = Context::from(json!({"items": vec![0; 100]}));
        assert_eq!(
            e.render(Mode::Plain, "t", "body", &ctx, 999).unwrap_err(),
            RenderError::TooLarge {
                part: "body".into(),
                limit: 999
            }
        );
        assert_eq!(
            e.render(Mode::Plain, "t", "body", &ctx, 1000)
                .unwrap()
                .len(),
            1000
        );
    }

    // Found by the fuzz harness (crates/herald-core/tests/fuzz.rs): 5,000
    // nested `{{#if}}` blocks overflowed the stack inside Handlebars' parser
    // and aborted the process. Regression corpus: tests/fixtures/fuzz/template.
    #[test]
    fn nesting_is_limited_before_parsing() {
        let deep = |n: usize| format!("{}x{}", "{{#if true}}".repeat(n), "{{/if}}".repeat(n));
        assert_eq!(ok(Mode::Plain, &deep(MAX_BLOCK_DEPTH), json!({})), "x");
        assert_eq!(
            err(Mode::Plain, &deep(5000), json!({})),
            "t: invalid template: blocks nested more than 32 deep"
        );
        let chain = format!(
            "{{{{#if a}}}}{}{{{{/if}}}}",
            "{{else if a}}".repeat(MAX_BLOCK_DEPTH + 1)
        );
        assert!(err(Mode::Plain, &chain, json!({})).contains("blocks nested"));
        let parens = format!(
            "{{{{json {}x{}}}}}",
            "(default ".repeat(100),
            " 1)".repeat(100)
        );
        assert!(err(Mode::Plain, &parens, json!({})).contains("sub-expressions nested"));
        // Sequential blocks are not nesting.
        let wide = "{{#if true}}y{{/if}}".repeat(1000);
        assert_eq!(ok(Mode::Plain, &wide, json!({})).len(), 1000);
    }

    #[test]
    fn partials_and_decorators_are_rejected() {
        for (template, what) in [
            ("{{> body}}", "partials"),
            ("{{#> layout}}x{{/layout}}", "partials"),
            ("{{#*inline \"p\"}}{{> p}}{{/inline}}{{> p}}", "decorators"),
            (
                "{{#if a}}x{{else}}{{#each b}}{{> p}}{{/each}}{{/if}}",
                "partials",
            ),
            ("{{*foo}}", "decorators"),
        ] {
            let e = err(Mode::Plain, template, json!({"a": true, "id": "t"}));
            assert!(e.contains(&format!("{what} (")), "{template}: {e}");
        }
    }
}
