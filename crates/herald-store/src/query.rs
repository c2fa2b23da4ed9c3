//! Listing queries: time ranges, pages and the opaque cursor.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use herald_core::{Notification, NotificationId, NotificationState, Status};

use crate::{Result, StoreError};

/// The largest page a listing returns; larger limits are clamped.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// A half-open range of `created_at`: `from` inclusive, `to` exclusive, so
/// consecutive ranges (`[a, b)`, `[b, c)`) neither overlap nor leave gaps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

impl TimeRange {
    pub fn new(from: DateTime<Utc>, to: DateTime<Utc>) -> Self {
        Self { from, to }
    }

    /// Bounds in milliseconds since the epoch. Like stored times, bounds
    /// are truncated to the millisecond before comparing.
    pub(crate) fn millis(&self) -> (i64, i64) {
        (to_ms(self.from), to_ms(self.to))
    }
}

/// What to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub webhook_id: String,
    pub range: TimeRange,
    /// Only notifications whose projected status is this one.
    pub status: Option<Status>,
    /// Page size, 1 to [`MAX_PAGE_SIZE`] (larger values are clamped).
    pub limit: u32,
    /// `next_cursor` of the previous page; `None` for the first page.
    pub cursor: Option<String>,
}

impl ListQuery {
    /// The first page of `webhook_id` in `range`, unfiltered.
    pub fn new(webhook_id: impl Into<String>, range: TimeRange, limit: u32) -> Self {
        Self {
            webhook_id: webhook_id.into(),
            range,
            status: None,
            limit,
            cursor: None,
        }
    }

    pub fn with_status(mut self, status: Status) -> Self {
        self.status = Some(status);
        self
    }

    pub fn with_cursor(mut self, cursor: Option<String>) -> Self {
        self.cursor = cursor;
        self
    }

    /// Validated limit and decoded cursor.
    pub(crate) fn checked(&self) -> Result<(usize, Option<Cursor>)> {
        if self.limit == 0 {
            return Err(StoreError::Invalid("limit must be at least 1".into()));
        }
        if self.webhook_id.is_empty() {
            return Err(StoreError::Invalid("webhook id must not be empty".into()));
        }
        let cursor = self.cursor.as_deref().map(Cursor::decode).transpose()?;
        Ok((self.limit.min(MAX_PAGE_SIZE) as usize, cursor))
    }
}

/// One listed notification with its projected state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedNotification {
    pub notification: Notification,
    pub state: NotificationState,
}

/// How many notifications of one webhook in a range have each status, as
/// [`crate::NotificationStore::count_statuses`] counts them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StatusCounts {
    /// By status; statuses with no notification are absent.
    pub counts: std::collections::BTreeMap<&'static str, u64>,
    /// Notifications looked at.
    pub scanned: u64,
    /// `false`: the scan stopped at its bound, so every count is a lower
    /// bound.
    pub complete: bool,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Page {
    pub items: Vec<ListedNotification>,
    /// Pass back as [`ListQuery::cursor`] for the next page; `None` at the end.
    pub next_cursor: Option<String>,
}

/// A position in a listing: the last row seen, as (created_at in ms, id).
/// The next page holds rows strictly before it in listing order. Opaque to
/// callers: it is handed out as a URL-safe string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub created_at_ms: i64,
    pub id: NotificationId,
}

impl Cursor {
    const VERSION: &'static str = "v1";

    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!(
            "{}:{}:{}",
            Self::VERSION,
            self.created_at_ms,
            self.id
        ))
    }

    pub fn decode(s: &str) -> Result<Self> {
        let bad = |why: &str| StoreError::InvalidCursor(why.to_string());
        let raw = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| bad("not base64url"))?;
        let raw = String::from_utf8(raw).map_err(|_| bad("not utf-8"))?;
        let mut parts = raw.splitn(3, ':');
        if parts.next() != Some(Self::VERSION) {
            return Err(bad("unknown version"));
        }
        let created_at_ms = parts
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| bad("bad time"))?;
        let id = parts
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| bad("bad id"))?;
        Ok(Self { created_at_ms, id })
    }
}

/// Milliseconds since the epoch, the store's time precision.
pub(crate) fn to_ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn from_ms(ms: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
        .ok_or_else(|| StoreError::corrupt(format!("time out of range: {ms} ms")))
}

/// Write time (µs) of the state an attempt implies: its start time, but
/// always after the initial state written at `created_at`, so that a clock
/// running slightly behind on the delivery host cannot lose a delivery to
/// the initial `pending`.
pub(crate) fn attempt_write_ts(started_at: DateTime<Utc>, created_at_ms: i64) -> i64 {
    started_at.timestamp_micros().max(created_at_ms * 1000 + 1)
}

/// Added to the write timestamp of a `delivered` status: no other status an
/// attempt implies can overwrite it, whatever its start time (a copy of an
/// earlier step that two workers both made can finish, and fail, after the
/// success). About 36,000 years in microseconds, far above any real time.
const DELIVERED_TS_OFFSET: i64 = 1 << 60;

/// The write timestamp of the status (and next due time) an attempt implies.
pub(crate) fn status_write_ts(status: Status, attempt_ts: i64) -> i64 {
    if status == Status::Delivered {
        attempt_ts.saturating_add(DELIVERED_TS_OFFSET)
    } else {
        attempt_ts
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use uuid::Uuid;

    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let c = Cursor {
            created_at_ms: -5,
            id: NotificationId(Uuid::from_u128(42)),
        };
        assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        for bad in ["", "!!", "djI6eA", &URL_SAFE_NO_PAD.encode("v2:1:x")] {
            assert!(matches!(
                Cursor::decode(bad),
                Err(StoreError::InvalidCursor(_))
            ));
        }
    }

    #[test]
    fn range_bounds_are_truncated_to_the_millisecond() {
        let t = Utc.timestamp_opt(10, 1_500_000).unwrap();
        assert_eq!(TimeRange::new(t, t).millis(), (10_001, 10_001));
    }

    #[test]
    fn attempt_write_time_follows_creation() {
        let t = Utc.timestamp_opt(10, 0).unwrap();
        assert_eq!(attempt_write_ts(t, 9_000), 10_000_000);
        assert_eq!(attempt_write_ts(t, 10_000), 10_000_001);
        assert_eq!(attempt_write_ts(t, 11_000), 11_000_001);
    }
}
