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

#[cfg(test)]
mod tests {
    use super::*;

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
