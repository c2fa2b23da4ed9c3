//! The notification store: one port, a ScyllaDB adapter and an embedded SQLite adapter.
//!
//! Records are immutable: a [`Notification`] is written once, [`Attempt`]s
//! are appended. The [`NotificationState`] projection is derived from them and
//! written with the time of the record that caused it as its write time, so
//! replays and out-of-order appends converge on the same state. See
//! `docs/store.md` for the schema and the exact semantics.

mod error;
mod limits;
mod query;

pub mod cql;
pub mod sqlite;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use herald_core::{Accepted, Attempt, Notification, NotificationId, NotificationState};

pub use crate::error::{Result, StoreError};
pub use crate::limits::{StoreLimits, truncate_marked};
pub use crate::query::{
    Cursor, ListQuery, ListedNotification, MAX_PAGE_SIZE, Page, StatusCounts, TimeRange,
};

/// What a caller recording an attempt knows of its stored notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptOf<'a> {
    pub webhook_id: &'a str,
    /// The stored notification's `created_at`.
    pub created_at: DateTime<Utc>,
}

impl<'a> AttemptOf<'a> {
    pub fn notification(n: &'a Notification) -> Self {
        Self {
            webhook_id: &n.webhook_id,
            created_at: n.created_at,
        }
    }
}

/// A notification with all its attempts, as `GET /v1/notifications/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationRecord {
    pub notification: Notification,
    /// Ordered by start time, then attempt id.
    pub attempts: Vec<Attempt>,
    /// Derived from `attempts` with [`NotificationState::derive`], so it is
    /// exact even when the projection has not caught up.
    pub state: NotificationState,
}

/// The port every service talks to. Both adapters pass the same conformance
/// suite (`tests/integration/store_conformance.rs`).
///
/// Times are stored with millisecond precision: every `DateTime` read back is
/// the written one truncated to the millisecond.
///
/// Every write is idempotent, so on a retriable error
/// ([`StoreError::is_retriable`]) the caller repeats the same call.
#[async_trait]
pub trait NotificationStore: Send + Sync {
    /// Store notifications, their initial state (`pending`, or
    /// `render_failed`) and their by-webhook index entries. Returns once all
    /// of it is durable.
    ///
    /// Idempotent by id: appending an id that is already stored changes
    /// nothing (the first record wins; the audit record is immutable), and it
    /// never creates a second listing entry.
    ///
    /// Returns what was found for each notification, in order: stored now
    /// ([`Accepted::New`]), or stored before, with the stored record and its
    /// state ([`Accepted::Existing`]), from which the caller decides whether
    /// anything is owed ([`Accepted::owed`]). Without lightweight
    /// transactions two concurrent first appends of one id may both see
    /// `New` (CQL); they carry the same id, and the first record wins.
    ///
    /// Fails with [`StoreError::TooLarge`] if a body is above
    /// [`StoreLimits::max_request_body_bytes`]; nothing of the batch is
    /// written by the SQLite adapter, and the CQL adapter may have written
    /// the other notifications of the batch.
    async fn append_notifications(&self, batch: &[Notification]) -> Result<Vec<Accepted>>;

    /// Store attempts and fold each into the state projection (status and
    /// next attempt time from [`Attempt::implied_status`], unless it implies
    /// none, as a failed manual re-send does; attempt count from
    /// `attempt_no` and last attempt time), with the attempt's `started_at`
    /// as the write time: the latest attempt wins whatever the order of
    /// arrival. Response
    /// excerpts and error texts are bounded by
    /// [`StoreLimits::max_response_excerpt_bytes`].
    ///
    /// Idempotent by (notification id, started_at, attempt id). Fails with
    /// [`StoreError::NotFound`] for an unknown notification and
    /// [`StoreError::Invalid`] for a `render_failed` one.
    async fn append_attempts(&self, batch: &[Attempt]) -> Result<()>;

    /// Store one attempt, as [`NotificationStore::append_attempts`] does,
    /// and close the durable re-send request it carried out, if any, in
    /// the same write: standalone queues re-sends in its store
    /// ([`sqlite::SqliteStore::queue_resend`]); Kafka mode's are messages
    /// on the resend topic and pass `None`. Adapters without queued
    /// re-sends refuse a request with [`StoreError::Invalid`].
    ///
    /// `of` is what the caller knows of the stored notification (the
    /// delivery job carries it), so an adapter may write without reading
    /// first: the CQL adapter then checks neither that the notification
    /// exists nor that it was rendered, which the job's origin vouches for.
    async fn record_attempt(
        &self,
        attempt: &Attempt,
        of: AttemptOf<'_>,
        resend_request: Option<i64>,
    ) -> Result<()> {
        let _ = of;
        match resend_request {
            None => self.append_attempts(std::slice::from_ref(attempt)).await,
            Some(_) => Err(StoreError::no_queued_resends()),
        }
    }

    /// The attempts of one notification, ordered by start time then attempt
    /// id (empty for an unknown one): what [`herald_core::History`] reads
    /// before an automatic retry, without the stored request.
    async fn attempts(&self, id: NotificationId) -> Result<Vec<Attempt>>;

    /// One notification with its attempts, or `None`.
    async fn get(&self, id: NotificationId) -> Result<Option<NotificationRecord>>;

    /// The state projection of one notification, or `None`.
    async fn state(&self, id: NotificationId) -> Result<Option<NotificationState>>;

    /// Notifications of one webhook created in `[from, to)`, newest first
    /// (ties on `created_at` broken by id, descending), optionally only those
    /// whose projected status is `query.status`.
    ///
    /// A page holds at most `query.limit` items and may hold fewer even when
    /// more follow (a filtered scan stops after a bounded amount of work);
    /// only `next_cursor == None` means the end. Passing `next_cursor` back
    /// in an otherwise identical query continues exactly after the last row
    /// seen: no row is skipped or repeated, even among rows with identical
    /// `created_at`, and rows appended meanwhile at newer times do not shift
    /// the pages.
    async fn list(&self, query: &ListQuery) -> Result<Page>;

    /// The notifications of one webhook whose retries are exhausted (status
    /// `failed`), created in `[from, to)`: the input of a bulk re-send. Same
    /// order and pagination as [`NotificationStore::list`]; `query.status`
    /// is ignored.
    async fn list_exhausted(&self, query: &ListQuery) -> Result<Page>;

    /// Requests sent to the database since this store was opened, by
    /// statement: what `herald_store_requests_total` reports. Empty for a
    /// store that does not count them (SQLite: no network round trips).
    fn requests(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }

    /// How many notifications of `webhook_id` created in `range` have each
    /// projected status, looking at no more than `bound` of them (rounded
    /// up to whole pages of up to [`MAX_PAGE_SIZE`], and reading no more
    /// than twice the pages that takes): past it the counts are lower bounds
    /// ([`StatusCounts::complete`] is `false`). Pages through
    /// [`NotificationStore::list`], newest first.
    async fn count_statuses(
        &self,
        webhook_id: &str,
        range: TimeRange,
        bound: u64,
    ) -> Result<StatusCounts> {
        let mut counts = StatusCounts::default();
        let mut cursor = None;
        let page_size = bound.clamp(1, u64::from(MAX_PAGE_SIZE)) as u32;
        // Pages may come back empty (a page is bounded work, not a number
        // of rows): those count against the bound too.
        let mut pages = 0u64;
        let max_pages = bound.div_ceil(u64::from(page_size)) * 2;
        loop {
            pages += 1;
            let query = ListQuery::new(webhook_id, range, page_size).with_cursor(cursor);
            let page = self.list(&query).await?;
            for item in &page.items {
                *counts.counts.entry(item.state.status.as_str()).or_default() += 1;
            }
            counts.scanned += page.items.len() as u64;
            match page.next_cursor {
                None => {
                    counts.complete = true;
                    return Ok(counts);
                }
                Some(_) if counts.scanned >= bound || pages >= max_pages => return Ok(counts),
                next => cursor = next,
            }
        }
    }
}
