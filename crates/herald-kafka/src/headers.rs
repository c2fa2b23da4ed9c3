//! Header names Herald writes on its messages. The retry and dead-letter
//! headers carry everything a tier consumer needs to wait without decoding
//! the value.

use rdkafka::message::{Header, Headers, OwnedHeaders};

/// Unix milliseconds before which the job must not be sent.
pub const DUE_AT: &str = "herald-due-at";
/// The attempt the job will make (1-based, decimal).
pub const ATTEMPT: &str = "herald-attempt";
/// Unix milliseconds of the notification's first failed attempt.
pub const FIRST_FAILURE_AT: &str = "herald-first-failure-at";
/// The last attempt's error, one line.
pub const LAST_ERROR: &str = "herald-last-error";
/// How many times a retry-tier message was moved on to another tier (the
/// cascade), decimal. A hopped job is checked against the store before it
/// is sent: a hop redone after a crash leaves two copies.
pub const HOPS: &str = "herald-hops";
/// Why a message was dead-lettered.
pub const ERROR: &str = "herald-error";
/// The size in bytes (value and headers) of an input message that was
/// dead-lettered as oversized, with its value cut to its first bytes.
pub const ORIGINAL_SIZE: &str = "herald-original-size";
/// Where a dead-lettered message came from.
pub const ORIGIN_TOPIC: &str = "herald-origin-topic";
pub const ORIGIN_PARTITION: &str = "herald-origin-partition";
pub const ORIGIN_OFFSET: &str = "herald-origin-offset";

/// Longest value of `herald-error` and `herald-last-error`, in bytes; the
/// store keeps the full text.
pub const MAX_ERROR_BYTES: usize = 1024;

/// The headers of a dead letter: the original message's, then why
/// (`herald-error`, one line, bounded) and where it came from.
pub fn dead_letter<H: Headers>(
    original: Option<&H>,
    error: &str,
    topic: &str,
    partition: i32,
    offset: i64,
) -> OwnedHeaders {
    let mut out = OwnedHeaders::new();
    if let Some(original) = original {
        for h in original.iter() {
            out = out.insert(Header {
                key: h.key,
                value: h.value,
            });
        }
    }
    let error = herald_core::text::one_line(error, MAX_ERROR_BYTES);
    let (partition, offset) = (partition.to_string(), offset.to_string());
    [
        (ERROR, error.as_str()),
        (ORIGIN_TOPIC, topic),
        (ORIGIN_PARTITION, &partition),
        (ORIGIN_OFFSET, &offset),
    ]
    .into_iter()
    .fold(out, |out, (key, value)| {
        out.insert(Header {
            key,
            value: Some(value),
        })
    })
}

/// The value of a header as UTF-8, if present.
pub fn get<'m, H: Headers>(headers: Option<&'m H>, name: &str) -> Option<&'m str> {
    let headers = headers?;
    (0..headers.count())
        .map(|i| headers.get(i))
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}
