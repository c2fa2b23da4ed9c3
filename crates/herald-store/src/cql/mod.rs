//! The ScyllaDB (and Apache Cassandra) adapter, on the `scylla` driver.
//!
//! The schema is the CQL in `schemas/cql/`, compiled in with `include_str!`
//! and applied by [`migrate`]. Every statement is prepared with all its
//! partition-key columns bound (token-aware routing); writes are plain
//! idempotent upserts (no LWT, no logged batch: a 1 MiB body would exceed
//! the batch size limits). The state projection is written `USING
//! TIMESTAMP` of the event that caused it, so it converges under replays and
//! reordering. See `docs/store.md`.
//!
//! - `config`: the adapter's configuration, the schema and migrations, the
//!   session;
//! - here: the prepared statements and the [`NotificationStore`] port;
//! - `rows`: rows as the driver reads them, and the records they become;
//! - `errors`: driver errors as [`StoreError`]s, retriable or not.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use futures::future::try_join_all;
use futures::{StreamExt, TryStreamExt};
use herald_core::{
    Accepted, Attempt, Notification, NotificationContent, NotificationId, NotificationState,
    Status, Trigger,
};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{
    DbError, ExecutionError, IntoRowsResultError, MaybeFirstRowError, NewSessionError,
    PrepareError, RequestAttemptError, RowsError,
};
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::response::query_result::QueryResult;
use scylla::serialize::batch::BatchValues;
use scylla::serialize::row::SerializeRow;
use scylla::statement::Consistency;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimestamp;
use serde::Deserialize;
use uuid::Uuid;

use crate::query::{attempt_write_ts, from_ms, status_write_ts, to_ms};
use crate::{
    AttemptOf, Cursor, ListQuery, ListedNotification, NotificationRecord, NotificationStore, Page,
    Result, StoreError, StoreLimits,
};

mod config;
mod errors;
mod rows;

pub use config::*;
use rows::*;

/// Index rows a listing inspects at most per page (a filtered listing may
/// return a short page with a cursor rather than scan without bound).
const SCAN_BUDGET_ROWS: usize = 2000;
/// Partition queries a listing makes at most per page: bounds the cost of a
/// long, sparse time range (one query per day).
const SCAN_BUDGET_QUERIES: usize = 400;
/// Index rows fetched per query when a status filter is applied.
const FILTERED_CHUNK: usize = 200;
/// Appends run concurrently within one batch.
const WRITE_CONCURRENCY: usize = 16;
/// Notification ids looked up per request when a batch is appended (a
/// multi-partition `IN`: one request instead of one per notification, and
/// small enough not to load one coordinator).
const HEADS_PER_READ: usize = 100;
/// Largest record (`content` JSON, bytes) appended in one batch with its
/// index entry. Batches spanning partitions are checked against
/// `batch_size_warn_threshold` (Cassandra's default: 5 KiB) and
/// `batch_size_fail_threshold` (50 KiB); a larger record is sent next to its
/// index entry instead.
const BATCHED_CONTENT_MAX: usize = 3 * 1024;

/// A prepared statement and how many times this store has sent it.
struct Stmt {
    prepared: PreparedStatement,
    /// The `statement` label of `herald_store_requests_total`.
    name: &'static str,
    sent: AtomicU64,
}

/// An unlogged batch of prepared statements, counted like a [`Stmt`]: one
/// request whatever it holds.
struct Batched {
    batch: Batch,
    name: &'static str,
    sent: AtomicU64,
}

/// The batches of the write path. Each holds statements of one
/// notification, in the order their values are given.
struct Batches {
    /// A new notification: its record, its initial state and its index
    /// entry (two partitions).
    append: Batched,
    /// A new notification too large for [`Batches::append`]: its record and
    /// its initial state (one partition).
    append_record: Batched,
    /// A delivering attempt: the attempt, the status, the count.
    delivered: Batched,
    /// An attempt that implies another status: the attempt and the state.
    moved: Batched,
    /// An attempt that implies no status (a failed manual re-send): the
    /// attempt and the count.
    counted: Batched,
}

/// Which index table a listing scans.
#[derive(Debug, Clone, Copy)]
enum Index {
    ByWebhook,
    Failed,
}

struct Statements {
    select_head: Stmt,
    /// The heads of many notifications (`IN`), for appends.
    select_heads: Stmt,
    select_notification: Stmt,
    select_attempts: Stmt,
    select_state: Stmt,
    insert_notification: Stmt,
    insert_by_webhook: Stmt,
    insert_initial_state: Stmt,
    insert_state: Stmt,
    /// The count alone: a failed manual re-send changes no status.
    insert_count: Stmt,
    /// A `delivered` status alone, at [`status_write_ts`]: the count and the
    /// last attempt time go with [`Statements::insert_count`].
    insert_status: Stmt,
    insert_attempt: Stmt,
    insert_failed: Stmt,
    delete_failed: Stmt,
    /// [ByWebhook, Failed] × first page of a day / continuing after a cursor.
    list_first: [Stmt; 2],
    list_after: [Stmt; 2],
}

/// The CQL [`NotificationStore`].
pub struct CqlStore {
    session: Arc<Session>,
    st: Statements,
    batches: Batches,
    limits: StoreLimits,
}

impl std::fmt::Debug for CqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CqlStore").finish_non_exhaustive()
    }
}

impl CqlStore {
    /// Connect with `config` and prepare the statements. The schema must
    /// exist (see [`migrate`]).
    pub async fn connect(config: &CqlConfig, limits: StoreLimits) -> Result<Self> {
        let session = connect_session(config).await?;
        Self::new(Arc::new(session), config, limits).await
    }

    /// Use an existing session (e.g. shared with other components).
    pub async fn new(
        session: Arc<Session>,
        config: &CqlConfig,
        limits: StoreLimits,
    ) -> Result<Self> {
        let ks = config.keyspace.as_str();
        check_keyspace(ks)?;
        let read = Consistency::from(config.read_consistency);
        let write = Consistency::from(config.write_consistency);
        let s = &session;
        let prep = |name: &'static str, cql: String, consistency: Consistency| async move {
            let mut p = s.prepare(cql).await?;
            p.set_consistency(consistency);
            p.set_is_idempotent(true);
            Ok::<_, StoreError>(Stmt {
                prepared: p,
                name,
                sent: AtomicU64::new(0),
            })
        };
        let reader = |name, cql: String| prep(name, cql, read);
        let writer = |name, cql: String| prep(name, cql, write);
        let list_first = |name, table: &str| {
            reader(
                name,
                format!(
                    "SELECT created_at, notification_id FROM {ks}.{table} \
                 WHERE webhook_id = ? AND day = ? AND created_at >= ? AND created_at < ? LIMIT ?"
                ),
            )
        };
        // Multi-column relations on both ends: CQL does not allow mixing a
        // tuple relation with a single-column one on the same clustering key.
        let list_after = |name, table: &str| {
            reader(
                name,
                format!(
                    "SELECT created_at, notification_id FROM {ks}.{table} \
                 WHERE webhook_id = ? AND day = ? AND (created_at, notification_id) < (?, ?) \
                 AND (created_at) >= (?) LIMIT ?"
                ),
            )
        };
        let st = Statements {
            select_head: reader("select_head", format!(
                "SELECT webhook_id, created_at FROM {ks}.notifications WHERE notification_id = ?"
            ))
            .await?,
            select_heads: reader("select_heads", format!(
                "SELECT notification_id, webhook_id, created_at FROM {ks}.notifications \
                 WHERE notification_id IN ?"
            ))
            .await?,
            select_notification: reader("select_notification", format!(
                "SELECT {N_COLS} FROM {ks}.notifications WHERE notification_id = ?"
            ))
            .await?,
            select_attempts: reader("select_attempts", format!(
                "SELECT {A_COLS} FROM {ks}.attempts WHERE notification_id = ?"
            ))
            .await?,
            select_state: reader("select_state", format!(
                "SELECT status, attempts, last_attempt_at, next_attempt_at \
                 FROM {ks}.notification_state WHERE notification_id = ?"
            ))
            .await?,
            insert_notification: writer("insert_notification", format!(
                "INSERT INTO {ks}.notifications ({N_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 USING TIMESTAMP ?"
            ))
            .await?,
            insert_by_webhook: writer("insert_by_webhook", format!(
                "INSERT INTO {ks}.notifications_by_webhook \
                 (webhook_id, day, created_at, notification_id) VALUES (?, ?, ?, ?) \
                 USING TIMESTAMP ?"
            ))
            .await?,
            insert_initial_state: writer("insert_initial_state", format!(
                "INSERT INTO {ks}.notification_state (notification_id, status, attempts) \
                 VALUES (?, ?, 0) USING TIMESTAMP ?"
            ))
            .await?,
            insert_state: writer("insert_state", format!(
                "INSERT INTO {ks}.notification_state \
                 (notification_id, status, attempts, last_attempt_at, next_attempt_at) \
                 VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?"
            ))
            .await?,
            insert_status: writer("insert_status", format!(
                "INSERT INTO {ks}.notification_state \
                 (notification_id, status, next_attempt_at) VALUES (?, ?, ?) USING TIMESTAMP ?"
            ))
            .await?,
            insert_count: writer("insert_count", format!(
                "INSERT INTO {ks}.notification_state \
                 (notification_id, attempts, last_attempt_at) VALUES (?, ?, ?) USING TIMESTAMP ?"
            ))
            .await?,
            insert_attempt: writer("insert_attempt", format!(
                "INSERT INTO {ks}.attempts ({A_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ))
            .await?,
            insert_failed: writer("insert_failed", format!(
                "INSERT INTO {ks}.failed_by_webhook \
                 (webhook_id, day, created_at, notification_id) VALUES (?, ?, ?, ?) \
                 USING TIMESTAMP ?"
            ))
            .await?,
            delete_failed: writer("delete_failed", format!(
                "DELETE FROM {ks}.failed_by_webhook USING TIMESTAMP ? \
                 WHERE webhook_id = ? AND day = ? AND created_at = ? AND notification_id = ?"
            ))
            .await?,
            list_first: [
                list_first("list_first_by_webhook", "notifications_by_webhook").await?,
                list_first("list_first_failed", "failed_by_webhook").await?,
            ],
            list_after: [
                list_after("list_after_by_webhook", "notifications_by_webhook").await?,
                list_after("list_after_failed", "failed_by_webhook").await?,
            ],
        };
        let batched = |name: &'static str, statements: &[&Stmt]| {
            let mut batch = Batch::new(BatchType::Unlogged);
            for st in statements {
                batch.append_statement(st.prepared.clone());
            }
            batch.set_consistency(write);
            batch.set_is_idempotent(true);
            Batched {
                batch,
                name,
                sent: AtomicU64::new(0),
            }
        };
        let batches = Batches {
            append: batched(
                "append_batch",
                &[
                    &st.insert_notification,
                    &st.insert_initial_state,
                    &st.insert_by_webhook,
                ],
            ),
            append_record: batched(
                "append_record_batch",
                &[&st.insert_notification, &st.insert_initial_state],
            ),
            delivered: batched(
                "attempt_delivered_batch",
                &[&st.insert_attempt, &st.insert_status, &st.insert_count],
            ),
            moved: batched(
                "attempt_state_batch",
                &[&st.insert_attempt, &st.insert_state],
            ),
            counted: batched(
                "attempt_count_batch",
                &[&st.insert_attempt, &st.insert_count],
            ),
        };
        Ok(Self {
            session,
            st,
            batches,
            limits,
        })
    }

    /// Send one prepared statement, counted ([`NotificationStore::requests`]).
    async fn exec(
        &self,
        st: &Stmt,
        values: impl SerializeRow,
    ) -> std::result::Result<QueryResult, ExecutionError> {
        st.sent.fetch_add(1, Ordering::Relaxed);
        self.session.execute_unpaged(&st.prepared, values).await
    }

    /// Send one batch, counted as one request.
    async fn exec_batch(
        &self,
        b: &Batched,
        values: impl BatchValues,
    ) -> std::result::Result<QueryResult, ExecutionError> {
        b.sent.fetch_add(1, Ordering::Relaxed);
        self.session.batch(&b.batch, values).await
    }

    /// Every request this store sends, by name, with its count.
    fn counters(&self) -> impl Iterator<Item = (&'static str, &AtomicU64)> {
        let st = &self.st;
        let b = &self.batches;
        let batches = [
            &b.append,
            &b.append_record,
            &b.delivered,
            &b.moved,
            &b.counted,
        ];
        [
            &st.select_head,
            &st.select_heads,
            &st.select_notification,
            &st.select_attempts,
            &st.select_state,
            &st.insert_notification,
            &st.insert_by_webhook,
            &st.insert_initial_state,
            &st.insert_state,
            &st.insert_count,
            &st.insert_status,
            &st.insert_attempt,
            &st.insert_failed,
            &st.delete_failed,
        ]
        .into_iter()
        .chain(&st.list_first)
        .chain(&st.list_after)
        .map(|s| (s.name, &s.sent))
        .chain(batches.into_iter().map(|b| (b.name, &b.sent)))
    }

    /// The driver session, e.g. for [`migrate`] or health checks.
    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    /// (webhook id, created_at in ms) of a stored notification.
    async fn head(&self, id: NotificationId) -> Result<Option<(String, i64)>> {
        let row = self
            .exec(&self.st.select_head, (id.0,))
            .await?
            .into_rows_result()?
            .maybe_first_row::<(Option<String>, Option<CqlTimestamp>)>()?;
        Ok(row.map(|(w, c)| head_of(w, c)))
    }

    /// The heads of every stored notification among `ids`: one request per
    /// [`HEADS_PER_READ`] ids (a multi-partition `IN`), run concurrently.
    async fn heads(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, (String, i64)>> {
        let reads = ids.chunks(HEADS_PER_READ).map(|chunk| async move {
            let result = self.exec(&self.st.select_heads, (chunk,)).await?;
            let rows = result
                .into_rows_result()?
                .rows::<(Uuid, Option<String>, Option<CqlTimestamp>)>()?
                .map(|r| r.map(|(id, w, c)| (id, head_of(w, c))))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            Ok::<_, StoreError>(rows)
        });
        Ok(try_join_all(reads).await?.into_iter().flatten().collect())
    }

    /// Append one notification, given what [`CqlStore::heads`] found of it.
    async fn append_one(&self, n: &Notification, head: Option<(String, i64)>) -> Result<Accepted> {
        let status = NotificationState::initial(&n.content).status;
        let Some((webhook, created)) = head else {
            let content = serde_json::to_string(&n.content)
                .map_err(|e| StoreError::Invalid(format!("notification {}: {e}", n.id)))?;
            let created = to_ms(n.created_at);
            let ts = created * 1000;
            let big = content.len() > BATCHED_CONTENT_MAX;
            let record = (
                n.id.0,
                &n.webhook_id,
                &n.event_source,
                &n.event_id,
                &n.event_type,
                &n.subject,
                CqlTimestamp(to_ms(n.event_time)),
                CqlTimestamp(created),
                &n.template_hash,
                content,
                ts,
            );
            let state = (n.id.0, status.as_str(), ts);
            let index = (
                &n.webhook_id,
                day_of(created)?,
                CqlTimestamp(created),
                n.id.0,
                ts,
            );
            // The record and its initial state share a partition key: one
            // mutation. The index entry is another partition: batched with
            // them while the batch stays small, sent alongside otherwise. A
            // half-applied batch is harmless either way (see `docs/store.md`).
            if big {
                futures::try_join!(
                    self.exec_batch(&self.batches.append_record, (record, state)),
                    self.exec(&self.st.insert_by_webhook, index),
                )?;
            } else {
                self.exec_batch(&self.batches.append, (record, state, index))
                    .await?;
            }
            return Ok(Accepted::New);
        };
        // The first record wins: a replay reuses the stored created_at, so
        // the index and initial-state writes hit the same keys again (they
        // repair an earlier append cut short between its writes), and never
        // rewrites the record.
        let ts = created * 1000;
        let index = self.exec(
            &self.st.insert_by_webhook,
            (
                &webhook,
                day_of(created)?,
                CqlTimestamp(created),
                n.id.0,
                ts,
            ),
        );
        let state = self.exec(&self.st.insert_initial_state, (n.id.0, status.as_str(), ts));
        futures::try_join!(index, state)?;
        let listed = self.load_listed(n.id).await?.ok_or_else(|| {
            StoreError::corrupt(format!("notification {} vanished while appended", n.id))
        })?;
        Ok(Accepted::Existing {
            stored: Box::new(listed.notification),
            state: listed.state,
        })
    }

    /// Check an attempt against the stored notification and write it: the
    /// port's [`NotificationStore::append_attempts`], for callers that know
    /// nothing of the notification.
    async fn append_attempt(&self, a: &Attempt) -> Result<()> {
        let id = a.notification_id;
        let (head, state) = futures::try_join!(self.head(id), self.state(id))?;
        let Some((webhook, created)) = head else {
            return Err(StoreError::NotFound(id));
        };
        let current = state.map(|s| s.status);
        if current == Some(Status::RenderFailed) {
            return Err(StoreError::Invalid(format!(
                "notification {id} failed to render and cannot have attempts"
            )));
        }
        self.write_attempt(a, &webhook, created, current).await
    }

    /// Write an attempt and the state it implies in one single-partition
    /// batch (the `attempts` and `notification_state` rows share the
    /// notification's partition key), plus the failed index when the attempt
    /// changes it. `current`: the projected status before this attempt, when
    /// read.
    async fn write_attempt(
        &self,
        a: &Attempt,
        webhook: &str,
        created: i64,
        current: Option<Status>,
    ) -> Result<()> {
        let id = a.notification_id;
        let started = to_ms(a.started_at);
        let next = a.next_attempt_at.map(|t| CqlTimestamp(to_ms(t)));
        let row = (
            id.0,
            CqlTimestamp(started),
            a.attempt_id,
            to_i32(a.attempt_no),
            a.trigger.as_str(),
            to_i32(a.duration_ms),
            a.outcome.as_str(),
            a.http_status.map(i32::from),
            &a.error,
            &a.response_excerpt,
            next,
        );
        let ts = attempt_write_ts(a.started_at, created);
        let implied = a.implied_status();
        let count = (id.0, to_i32(a.attempt_no), CqlTimestamp(started), ts);
        let state = async {
            match implied {
                Some(Status::Delivered) => {
                    let status = (
                        id.0,
                        Status::Delivered.as_str(),
                        None::<CqlTimestamp>,
                        status_write_ts(Status::Delivered, ts),
                    );
                    self.exec_batch(&self.batches.delivered, (row, status, count))
                        .await
                }
                Some(status) => {
                    let moved = (
                        id.0,
                        status.as_str(),
                        to_i32(a.attempt_no),
                        CqlTimestamp(started),
                        next,
                        ts,
                    );
                    self.exec_batch(&self.batches.moved, (row, moved)).await
                }
                None => self.exec_batch(&self.batches.counted, (row, count)).await,
            }
        };
        let day = day_of(created)?;
        let failed = async {
            if implied == Some(Status::Failed) {
                self.exec(
                    &self.st.insert_failed,
                    (webhook, day, CqlTimestamp(created), id.0, ts),
                )
                .await?;
            } else if implied.is_some()
                && (current == Some(Status::Failed) || a.trigger == Trigger::Manual)
            {
                // Only when this attempt may supersede a failure: deleting
                // on every delivery would fill the partitions with tombstones.
                // A failed row left behind by reordering is filtered on read.
                self.exec(
                    &self.st.delete_failed,
                    (ts, webhook, day, CqlTimestamp(created), id.0),
                )
                .await?;
            }
            Ok::<_, StoreError>(())
        };
        futures::try_join!(async { Ok::<_, StoreError>(state.await?) }, failed)?;
        Ok(())
    }

    async fn load_notification(&self, id: NotificationId) -> Result<Option<Notification>> {
        let row = self
            .exec(&self.st.select_notification, (id.0,))
            .await?
            .into_rows_result()?
            .maybe_first_row::<NotificationRow>()?;
        row.map(notification_from_row).transpose()
    }

    async fn load_listed(&self, id: NotificationId) -> Result<Option<ListedNotification>> {
        let (n, s) = futures::try_join!(self.load_notification(id), self.state(id))?;
        Ok(n.map(|notification| {
            let state = s.unwrap_or_else(|| NotificationState::initial(&notification.content));
            ListedNotification {
                notification,
                state,
            }
        }))
    }

    /// Walk the index table day by day, newest first, from the cursor, and
    /// keep the rows whose notification matches. See [`NotificationStore::list`].
    async fn scan(&self, query: &ListQuery, index: Index, status: Option<Status>) -> Result<Page> {
        let (limit, cursor) = query.checked()?;
        let (from, to) = query.range.millis();
        if from >= to {
            return Ok(Page::default());
        }
        let webhook = query.webhook_id.as_str();
        let first_day = day_of(from)?;
        let mut pos = cursor;
        let mut day = day_of(to - 1)?;
        if let Some(c) = pos {
            day = day.min(day_of(c.created_at_ms)?);
        }
        let (mut rows_left, mut queries_left) = (SCAN_BUDGET_ROWS, SCAN_BUDGET_QUERIES);
        let mut items = Vec::with_capacity(limit);
        while day >= first_day {
            loop {
                if queries_left == 0 {
                    return Ok(page(items, pos));
                }
                queries_left -= 1;
                let want = match status {
                    Some(_) => FILTERED_CHUNK.min(rows_left),
                    None => limit - items.len(),
                };
                let want = want.max(1);
                let i = index as usize;
                let result = match pos.filter(|c| day_of(c.created_at_ms).ok() == Some(day)) {
                    Some(c) => {
                        self.exec(
                            &self.st.list_after[i],
                            (
                                webhook,
                                day,
                                CqlTimestamp(c.created_at_ms),
                                c.id.0,
                                CqlTimestamp(from),
                                want as i32,
                            ),
                        )
                        .await?
                    }
                    None => {
                        self.exec(
                            &self.st.list_first[i],
                            (
                                webhook,
                                day,
                                CqlTimestamp(from),
                                CqlTimestamp(to),
                                want as i32,
                            ),
                        )
                        .await?
                    }
                };
                let rows = result
                    .into_rows_result()?
                    .rows::<(CqlTimestamp, Uuid)>()?
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                let fetched = try_join_all(
                    rows.iter()
                        .map(|(_, id)| self.load_listed(NotificationId(*id))),
                )
                .await?;
                for ((created, id), item) in rows.iter().zip(fetched) {
                    pos = Some(Cursor {
                        created_at_ms: created.0,
                        id: NotificationId(*id),
                    });
                    rows_left = rows_left.saturating_sub(1);
                    // An index row whose notification is missing (a write
                    // still being retried) or has another created_at (lost a
                    // race of two first appends) is not a listing entry.
                    let keep = item.filter(|it| {
                        it.notification.webhook_id == webhook
                            && to_ms(it.notification.created_at) == created.0
                            && status.is_none_or(|s| it.state.status == s)
                    });
                    if let Some(it) = keep {
                        items.push(it);
                    }
                    if items.len() == limit || rows_left == 0 {
                        return Ok(page(items, pos));
                    }
                }
                if rows.len() < want {
                    break;
                }
            }
            // Resume before this day: nothing sorts below (day start, nil id).
            pos = Some(Cursor {
                created_at_ms: day_start_ms(day),
                id: NotificationId(Uuid::nil()),
            });
            day = match day.pred_opt() {
                Some(d) => d,
                None => break,
            };
        }
        Ok(page(items, None))
    }
}

/// (webhook id, created_at in ms) from a head row's columns.
fn head_of(webhook: Option<String>, created: Option<CqlTimestamp>) -> (String, i64) {
    (webhook.unwrap_or_default(), created.map_or(0, |c| c.0))
}

fn page(items: Vec<ListedNotification>, pos: Option<Cursor>) -> Page {
    Page {
        items,
        next_cursor: pos.map(|c| c.encode()),
    }
}

#[async_trait]
impl NotificationStore for CqlStore {
    async fn append_notifications(&self, batch: &[Notification]) -> Result<Vec<Accepted>> {
        for n in batch {
            self.limits.check_notification(n)?;
        }
        let ids: Vec<Uuid> = batch.iter().map(|n| n.id.0).collect();
        let mut heads = self.heads(&ids).await?;
        // An id repeated within the batch is appended once, by its first
        // occurrence; the later ones find it stored, as they would in a
        // later batch.
        let mut first: HashMap<Uuid, usize> = HashMap::with_capacity(batch.len());
        // A loop, not a closure: a closure here trips the higher-ranked
        // `Send` check of `async_trait` futures.
        let mut writes = Vec::with_capacity(batch.len());
        for (i, n) in batch.iter().enumerate() {
            if *first.entry(n.id.0).or_insert(i) == i {
                writes.push(self.append_one(n, heads.remove(&n.id.0)));
            }
        }
        // Ordered: the answers line up with the first occurrences.
        let mut found = futures::stream::iter(writes)
            .buffered(WRITE_CONCURRENCY)
            .try_collect::<Vec<_>>()
            .await?
            .into_iter();
        let mut answers: Vec<Accepted> = Vec::with_capacity(batch.len());
        for (i, n) in batch.iter().enumerate() {
            let of = first.get(&n.id.0).copied().unwrap_or(i);
            let answer = match of == i {
                true => found.next(),
                false => answers.get(of).map(|a| match a {
                    Accepted::New => Accepted::Existing {
                        stored: Box::new(batch[of].clone()),
                        state: NotificationState::initial(&batch[of].content),
                    },
                    known => known.clone(),
                }),
            };
            answers.push(answer.ok_or_else(|| StoreError::corrupt("an append went unanswered"))?);
        }
        Ok(answers)
    }

    async fn append_attempts(&self, batch: &[Attempt]) -> Result<()> {
        let bounded: Vec<Attempt> = batch.iter().map(|a| self.limits.bound_attempt(a)).collect();
        let mut writes = Vec::with_capacity(bounded.len());
        for a in &bounded {
            writes.push(self.append_attempt(a));
        }
        futures::stream::iter(writes)
            .buffer_unordered(WRITE_CONCURRENCY)
            .try_collect::<()>()
            .await
    }

    async fn record_attempt(
        &self,
        attempt: &Attempt,
        of: AttemptOf<'_>,
        resend_request: Option<i64>,
    ) -> Result<()> {
        if resend_request.is_some() {
            return Err(StoreError::no_queued_resends());
        }
        // The caller knows the notification: no read before the write.
        let a = self.limits.bound_attempt(attempt);
        self.write_attempt(&a, of.webhook_id, to_ms(of.created_at), None)
            .await
    }

    async fn attempts(&self, id: NotificationId) -> Result<Vec<Attempt>> {
        let rows = self
            .exec(&self.st.select_attempts, (id.0,))
            .await?
            .into_rows_result()?;
        rows.rows::<AttemptRow>()?
            .map(|r| attempt_from_row(r?))
            .collect::<Result<Vec<_>>>()
    }

    async fn get(&self, id: NotificationId) -> Result<Option<NotificationRecord>> {
        let (notification, attempts) =
            futures::try_join!(self.load_notification(id), self.attempts(id))?;
        Ok(notification.map(|notification| {
            let state = NotificationState::derive(&notification.content, &attempts);
            NotificationRecord {
                notification,
                attempts,
                state,
            }
        }))
    }

    async fn state(&self, id: NotificationId) -> Result<Option<NotificationState>> {
        let row = self
            .exec(&self.st.select_state, (id.0,))
            .await?
            .into_rows_result()?
            .maybe_first_row::<StateRow>()?;
        row.map(state_from_row).transpose()
    }

    async fn list(&self, query: &ListQuery) -> Result<Page> {
        // The failed index is exact enough to drive a `failed` filter and
        // far smaller than the full listing.
        match query.status {
            Some(Status::Failed) => self.scan(query, Index::Failed, Some(Status::Failed)).await,
            status => self.scan(query, Index::ByWebhook, status).await,
        }
    }

    async fn list_exhausted(&self, query: &ListQuery) -> Result<Page> {
        self.scan(query, Index::Failed, Some(Status::Failed)).await
    }

    fn requests(&self) -> Vec<(&'static str, u64)> {
        self.counters()
            .map(|(name, sent)| (name, sent.load(Ordering::Relaxed)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_files_split_into_substituted_statements() {
        let stmts = schema_statements(
            "herald_t",
            &Replication::Simple {
                replication_factor: 1,
            },
        )
        .unwrap();
        assert_eq!(stmts.len(), 6, "{stmts:#?}");
        assert!(stmts[0].starts_with("CREATE KEYSPACE IF NOT EXISTS herald_t"));
        assert!(stmts[0].contains("'replication_factor': 1"));
        for s in &stmts {
            assert!(!s.contains("${"), "{s}");
            assert!(!s.contains("--"), "{s}");
        }
        for table in [
            "notifications ",
            "attempts ",
            "notifications_by_webhook ",
            "notification_state ",
            "failed_by_webhook ",
        ] {
            let t = format!("herald_t.{table}");
            assert!(stmts.iter().any(|s| s.contains(&t)), "missing {t}");
        }
        let opt = statements(OPTIONAL_COMPACTION_CQL, "herald_t", "");
        assert_eq!(opt.len(), 2);
    }

    #[test]
    fn replication_renders_and_names_are_checked() {
        let r = Replication::NetworkTopology {
            datacenters: [("dc1".to_string(), 3), ("dc2".to_string(), 2)].into(),
        };
        assert_eq!(
            r.to_cql().unwrap(),
            "{'class': 'NetworkTopologyStrategy', 'dc1': 3, 'dc2': 2}"
        );
        let bad = Replication::NetworkTopology {
            datacenters: [("x'; DROP".to_string(), 1)].into(),
        };
        assert!(bad.to_cql().is_err());
        assert!(check_keyspace("Herald").is_err());
        assert!(check_keyspace("1herald").is_err());
        assert!(check_keyspace("herald; drop").is_err());
        assert!(check_keyspace("herald_prod_1").is_ok());
    }

    #[test]
    fn days_start_at_utc_midnight() {
        let d = day_of(86_400_000 + 5).unwrap();
        assert_eq!(d, NaiveDate::from_ymd_opt(1970, 1, 2).unwrap());
        assert_eq!(day_start_ms(d), 86_400_000);
        assert_eq!(day_of(86_400_000 - 1).unwrap().to_string(), "1970-01-01");
    }

    #[test]
    fn auth_debug_hides_the_password() {
        let a = CqlAuth {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{a:?}").contains("hunter2"));
    }
}
