//! Human-friendly durations for configuration files: `"30s"`, `"5m"`, `"1h30m"`.

use std::fmt::Write as _;
use std::time::Duration;

use thiserror::Error;

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DurationError {
    #[error("empty duration: expected e.g. \"30s\", \"5m\" or \"1h30m\"")]
    Empty,
    #[error("invalid duration {input:?}: {reason}")]
    Invalid { input: String, reason: String },
}

const UNITS: &[(&str, u64)] = &[
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

/// Parse a duration such as `"250ms"`, `"30s"`, `"5m"`, `"1h30m"` or `"2d"`.
///
/// Units are `ms`, `s`, `m`, `h` and `d`; every number needs a unit, and
/// whitespace between parts is not allowed. Deliberately tiny: config files
/// need nothing more.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let invalid = |reason: String| DurationError::Invalid {
        input: input.to_owned(),
        reason,
    };
    if input.is_empty() {
        return Err(DurationError::Empty);
    }
    let mut rest = input;
    let mut total_ms: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(invalid(format!("expected a number at {rest:?}")));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| invalid("number too large".to_owned()))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        if unit.is_empty() {
            return Err(invalid(
                "missing unit (expected ms, s, m, h or d)".to_owned(),
            ));
        }
        let Some(&(_, factor)) = UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(invalid(format!(
                "unknown unit {unit:?} (expected ms, s, m, h or d)"
            )));
        };
        total_ms = number
            .checked_mul(factor)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(|| invalid("duration too large".to_owned()))?;
        rest = &rest[unit_len..];
    }
    Ok(Duration::from_millis(total_ms))
}

/// Format a duration the way [`parse_duration`] reads it, using the fewest
/// parts: `10s`, `1m`, `1h30m`, `250ms`, `0s`.
pub fn format_duration(duration: Duration) -> String {
    let mut ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for &(name, factor) in UNITS.iter().rev() {
        if ms >= factor {
            let _ = write!(out, "{}{name}", ms / factor);
            ms %= factor;
        }
    }
    out
}

/// Serde for a [`Duration`] in a configuration file, written as
/// [`parse_duration`] reads it: `#[serde(with = "herald_core::duration::text")]`.
/// Every duration of the service configurations uses it, so that one style
/// holds everywhere (`drain_timeout = "30s"`).
pub mod text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text).map_err(de::Error::custom)
    }
}

/// A key renamed from its millisecond spelling (`drain_timeout_ms = 30000`)
/// to a duration (`drain_timeout = "30s"`): the old key still works, and
/// says so once. `old` holds the old key's value if it was set; it wins
/// over the new key's default, and is cleared. Returns the deprecation
/// warning to log, naming both keys.
pub fn fold_deprecated_ms(
    section: &str,
    new_key: &str,
    new: &mut Duration,
    old: &mut Option<u64>,
) -> Option<String> {
    let ms = old.take()?;
    *new = Duration::from_millis(ms);
    Some(format!(
        "{section}.{new_key}_ms is deprecated: write {section}.{new_key} = \"{}\"",
        format_duration(*new)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_durations_and_their_deprecated_millisecond_keys() {
        #[derive(Debug, serde::Deserialize)]
        struct C {
            #[serde(with = "text")]
            t: Duration,
        }
        let c: C = serde_json::from_str(r#"{"t": "1m30s"}"#).unwrap();
        assert_eq!(c.t, Duration::from_secs(90));
        let e = serde_json::from_str::<C>(r#"{"t": "90"}"#).unwrap_err();
        assert!(e.to_string().contains("missing unit"), "{e}");
        let mut new = Duration::from_secs(30);
        assert_eq!(fold_deprecated_ms("d", "t", &mut new, &mut None), None);
        let mut old = Some(2500);
        let warning = fold_deprecated_ms("d", "t", &mut new, &mut old).unwrap();
        assert_eq!(
            (new, old, warning.as_str()),
            (
                Duration::from_millis(2500),
                None,
                r#"d.t_ms is deprecated: write d.t = "2s500ms""#
            )
        );
    }

    #[test]
    fn parses_simple_and_compound_durations() {
        let s = Duration::from_secs;
        assert_eq!(parse_duration("30s").unwrap(), s(30));
        assert_eq!(parse_duration("5m").unwrap(), s(300));
        assert_eq!(parse_duration("1h").unwrap(), s(3600));
        assert_eq!(parse_duration("1h30m").unwrap(), s(5400));
        assert_eq!(parse_duration("2d").unwrap(), s(172_800));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
    }

    #[test]
    fn rejects_malformed_durations_with_a_reason() {
        assert_eq!(
            parse_duration("").unwrap_err().to_string(),
            "empty duration: expected e.g. \"30s\", \"5m\" or \"1h30m\""
        );
        assert_eq!(
            parse_duration("30").unwrap_err().to_string(),
            "invalid duration \"30\": missing unit (expected ms, s, m, h or d)"
        );
        assert_eq!(
            parse_duration("5x").unwrap_err().to_string(),
            "invalid duration \"5x\": unknown unit \"x\" (expected ms, s, m, h or d)"
        );
        assert_eq!(
            parse_duration("1h 30m").unwrap_err().to_string(),
            "invalid duration \"1h 30m\": expected a number at \" 30m\""
        );
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn format_round_trips() {
        for s in ["10s", "1m", "10m", "1h", "6h", "1h30m", "250ms", "1d", "0s"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
    }
}
