//! Header names Herald writes on its messages. The retry and dead-letter
//! headers carry everything a tier consumer needs to wait without decoding
//! the value.

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
/// Why ingest dead-lettered an input message.
pub const ERROR: &str = "herald-error";
/// Where a dead-lettered input message came from.
pub const ORIGIN_TOPIC: &str = "herald-origin-topic";
pub const ORIGIN_PARTITION: &str = "herald-origin-partition";
pub const ORIGIN_OFFSET: &str = "herald-origin-offset";

/// The value of a header as UTF-8, if present.
pub fn get<'m, H: rdkafka::message::Headers>(
    headers: Option<&'m H>,
    name: &str,
) -> Option<&'m str> {
    let headers = headers?;
    (0..headers.count())
        .map(|i| headers.get(i))
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}
