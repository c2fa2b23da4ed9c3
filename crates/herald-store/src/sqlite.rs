//! The embedded adapter: one SQLite file in WAL mode, written by a single
//! writer thread that group-commits many appends in one transaction, and
//! read through a small pool of connections on the blocking thread pool.
//!
//! An append returns `Ok` only after the transaction holding it committed.
//! With `synchronous = NORMAL` (the default) a commit survives a kill of the
//! process at any instant, but the last commits may be lost on a power
//! failure or OS crash; [`Synchronous::Full`] also survives those, at the
//! cost of an fsync per group commit.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use herald_core::{
    Accepted, Attempt, Notification, NotificationContent, NotificationId, NotificationState, Status,
};
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use crate::query::{attempt_write_ts, from_ms, status_write_ts, to_ms};
use crate::{
    AttemptOf, Cursor, ListQuery, ListedNotification, NotificationRecord, NotificationStore, Page,
    Result, StatusCounts, StoreError, StoreLimits, TimeRange,
};

const SCHEMA: &str = include_str!("sqlite_schema.sql");
/// `PRAGMA user_version` once [`SCHEMA`] is applied.
const SCHEMA_VERSION: i64 = 3;
/// From version 1: the state projection's status keeps its own write time.
const MIGRATE_1_TO_2: &str = "ALTER TABLE notification_state \
     ADD COLUMN status_ts INTEGER NOT NULL DEFAULT 0; \
     UPDATE notification_state SET status_ts = write_ts;";
/// From version 2, before [`SCHEMA`] creates the version-3 tables: the old
/// tables step aside (their indexes go; the new tables reuse the names).
const MIGRATE_2_TO_3_BEFORE: &str = "DROP INDEX IF EXISTS notifications_by_webhook; \
     DROP INDEX IF EXISTS notification_state_due; \
     ALTER TABLE notifications RENAME TO v2_notifications; \
     ALTER TABLE notification_state RENAME TO v2_notification_state; \
     ALTER TABLE attempts RENAME TO v2_attempts;";
/// ... and after: every row copied over, keyed by its notification's new
/// `seq` (given in creation order), then the old tables dropped. All in
/// the transaction that sets the new version.
const MIGRATE_2_TO_3_AFTER: &str = "INSERT INTO notifications (notification_id, webhook_id, \
     event_source, event_id, event_type, subject, event_time, created_at, template_hash, content) \
     SELECT notification_id, webhook_id, event_source, event_id, event_type, subject, \
     event_time, created_at, template_hash, content FROM v2_notifications \
     ORDER BY created_at, notification_id; \
     INSERT INTO notification_state (seq, status, attempts, last_attempt_at, next_attempt_at, \
     write_ts, status_ts) SELECT n.seq, s.status, s.attempts, s.last_attempt_at, \
     s.next_attempt_at, s.write_ts, s.status_ts FROM v2_notification_state s \
     JOIN notifications n ON n.notification_id = s.notification_id; \
     INSERT INTO attempts (seq, started_at, attempt_id, attempt_no, trigger, duration_ms, \
     outcome, http_status, error, response_excerpt, next_attempt_at) \
     SELECT n.seq, a.started_at, a.attempt_id, a.attempt_no, a.trigger, a.duration_ms, \
     a.outcome, a.http_status, a.error, a.response_excerpt, a.next_attempt_at \
     FROM v2_attempts a JOIN notifications n ON n.notification_id = a.notification_id; \
     DROP TABLE v2_attempts; DROP TABLE v2_notification_state; DROP TABLE v2_notifications;";

/// How hard SQLite works to make a commit durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Synchronous {
    /// Durable against a process kill, not against power loss or an OS crash.
    #[default]
    Normal,
    /// Durable against power loss too: an fsync per group commit.
    Full,
}

impl Synchronous {
    /// The value of `PRAGMA synchronous`.
    fn pragma(self) -> &'static str {
        match self {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        }
    }
}

/// Settings of the embedded store.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqliteConfig {
    /// The database file; created, with its directory, when missing.
    pub path: PathBuf,
    /// Durability of a commit (see [`Synchronous`]).
    #[serde(default)]
    pub synchronous: Synchronous,
    /// Most appends (calls) committed together in one transaction.
    #[serde(default = "default_max_group")]
    pub max_group_commit: usize,
    /// Appends waiting for the writer before callers are slowed down.
    #[serde(default = "default_queue")]
    pub write_queue: usize,
    /// Read connections kept open.
    #[serde(default = "default_readers")]
    pub readers: usize,
    /// How long a connection waits on a lock held by another process
    /// (e.g. an operator's `sqlite3` shell) before failing, in milliseconds.
    #[serde(default = "default_busy_ms")]
    pub busy_timeout_ms: u64,
    /// Page cache of the writer connection, in MiB. SQLite's default (2 MiB)
    /// made the writer re-read index pages from the OS on every insert.
    #[serde(default = "default_cache_mib")]
    pub writer_cache_mib: u32,
}

fn default_max_group() -> usize {
    256
}
fn default_queue() -> usize {
    1024
}
fn default_readers() -> usize {
    4
}
fn default_busy_ms() -> u64 {
    5000
}
fn default_cache_mib() -> u32 {
    64
}

impl SqliteConfig {
    /// Defaults for a database at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            synchronous: Synchronous::default(),
            max_group_commit: default_max_group(),
            write_queue: default_queue(),
            readers: default_readers(),
            busy_timeout_ms: default_busy_ms(),
            writer_cache_mib: default_cache_mib(),
        }
    }
}

enum WriteOp {
    Notifications(Vec<Notification>, Reply),
    /// Attempts, and the queued re-send request they carry out (removed in
    /// the same transaction).
    Attempts(Vec<Attempt>, Option<i64>, Reply),
    /// Queue a re-send request of a notification.
    Resend(NotificationId, Reply),
}

/// The writer's answer.
#[derive(Debug)]
enum Written {
    /// What each appended notification found.
    Notifications(Vec<Accepted>),
    Attempts,
    /// The id of the queued re-send request.
    Resend(i64),
}

type Reply = oneshot::Sender<Result<Written>>;

/// The embedded [`NotificationStore`]. Cheap to share behind an `Arc`;
/// dropping the last handle stops the writer thread after it has committed
/// what it was given.
pub struct SqliteStore {
    writer: mpsc::Sender<WriteOp>,
    readers: Arc<ReaderPool>,
    limits: StoreLimits,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.readers.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Open (or create) the database, apply the schema, start the writer.
    pub async fn open(config: SqliteConfig, limits: StoreLimits) -> Result<Self> {
        let cfg = config.clone();
        let conn = tokio::task::spawn_blocking(move || open_writer(&cfg))
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))??;
        let (tx, rx) = mpsc::channel(config.write_queue.max(1));
        let max_group = config.max_group_commit.max(1);
        std::thread::Builder::new()
            .name("herald-sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx, max_group))?;
        Ok(Self {
            writer: tx,
            readers: Arc::new(ReaderPool {
                path: config.path,
                busy: Duration::from_millis(config.busy_timeout_ms),
                max_idle: config.readers.max(1),
                idle: Mutex::new(Vec::new()),
            }),
            limits,
        })
    }

    /// Notifications due for an automatic retry: status `retrying` and
    /// `next_attempt_at <= now`, earliest due first. The standalone retry
    /// scheduler polls this.
    pub async fn list_due(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<(Notification, NotificationState)>> {
        let now = to_ms(now);
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {N_COLS}, {S_COLS} FROM notification_state s \
                 JOIN notifications n ON n.seq = s.seq \
                 WHERE s.status = 'retrying' AND s.next_attempt_at <= ?1 \
                 ORDER BY s.next_attempt_at, n.notification_id LIMIT ?2"
            ))?;
            let rows = stmt.query_map(params![now, limit], |r| Ok(read_listed(r)))?;
            rows.map(|r| r?.map(|l| (l.notification, l.state)))
                .collect()
        })
        .await
    }

    /// Notifications still `pending` (no attempt recorded) that were created
    /// before `created_before`, oldest first: after a crash, standalone
    /// re-queues these for their first attempt.
    pub async fn list_unattempted(
        &self,
        created_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Notification>> {
        let before = to_ms(created_before);
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {N_COLS}, {S_COLS} FROM notification_state s \
                 JOIN notifications n ON n.seq = s.seq \
                 WHERE s.status = 'pending' AND n.created_at < ?1 \
                 ORDER BY n.created_at, n.notification_id LIMIT ?2"
            ))?;
            let rows = stmt.query_map(params![before, limit], |r| Ok(read_listed(r)))?;
            rows.map(|r| r?.map(|l| l.notification)).collect()
        })
        .await
    }

    /// The limits every append is checked against.
    pub fn limits(&self) -> &StoreLimits {
        &self.limits
    }

    /// Queue a re-send of a notification, durably: the request survives a
    /// crash until [`NotificationStore::record_attempt`] records its attempt.
    /// Returns the request's id. (Standalone's re-sends; Kafka mode queues
    /// them on the resend topic instead.)
    pub async fn queue_resend(&self, id: NotificationId) -> Result<i64> {
        match self.write(|tx| WriteOp::Resend(id, tx)).await? {
            Written::Resend(request) => Ok(request),
            _ => unreachable!("a resend write answers with its request id"),
        }
    }

    /// Re-send requests queued and not yet carried out (request id and
    /// notification), oldest first: standalone runs them again after a
    /// restart.
    pub async fn pending_resends(&self) -> Result<Vec<(i64, NotificationId)>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT request_id, notification_id FROM resend_requests ORDER BY request_id",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
            rows.map(|r| {
                let (request, id) = r?;
                Ok((request, parse(&id, "notification id")?))
            })
            .collect()
        })
        .await
    }

    async fn write(&self, op: impl FnOnce(Reply) -> WriteOp) -> Result<Written> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(op(tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let conn = pool.take()?;
            let out = f(&conn);
            pool.give_back(conn);
            out
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
    }

    async fn list_where(&self, query: &ListQuery, status: Option<Status>) -> Result<Page> {
        let (limit, cursor) = query.checked()?;
        let (from, to) = query.range.millis();
        let webhook = query.webhook_id.clone();
        let status = status.map(|s| s.as_str());
        self.read(move |c| {
            let mut sql = format!(
                "SELECT {N_COLS}, {S_COLS} FROM notifications n \
                 JOIN notification_state s ON s.seq = n.seq \
                 WHERE n.webhook_id = ?1 AND n.created_at >= ?2 AND n.created_at < ?3 \
                 AND (?4 IS NULL OR s.status = ?4)"
            );
            if cursor.is_some() {
                sql.push_str(" AND (n.created_at, n.notification_id) < (?6, ?7)");
            }
            sql.push_str(" ORDER BY n.created_at DESC, n.notification_id DESC LIMIT ?5");
            let mut stmt = c.prepare_cached(&sql)?;
            // One row more than asked tells whether another page follows.
            let fetch = limit as i64 + 1;
            let mut rows = match cursor {
                Some(cur) => stmt.query(params![
                    webhook,
                    from,
                    to,
                    status,
                    fetch,
                    cur.created_at_ms,
                    cur.id.to_string()
                ])?,
                None => stmt.query(params![webhook, from, to, status, fetch])?,
            };
            let mut items = Vec::with_capacity(limit);
            let mut more = false;
            while let Some(row) = rows.next()? {
                if items.len() == limit {
                    more = true;
                    break;
                }
                items.push(read_listed(row)?);
            }
            let next_cursor = match (more, items.last()) {
                (true, Some(last)) => Some(cursor_of(&last.notification).encode()),
                _ => None,
            };
            Ok(Page { items, next_cursor })
        })
        .await
    }
}

fn cursor_of(n: &Notification) -> Cursor {
    Cursor {
        created_at_ms: to_ms(n.created_at),
        id: n.id,
    }
}

#[async_trait]
impl NotificationStore for SqliteStore {
    async fn append_notifications(&self, batch: &[Notification]) -> Result<Vec<Accepted>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        for n in batch {
            self.limits.check_notification(n)?;
        }
        let batch = batch.to_vec();
        match self.write(|tx| WriteOp::Notifications(batch, tx)).await? {
            Written::Notifications(found) => Ok(found),
            _ => unreachable!("a notifications write answers with what it found"),
        }
    }

    async fn append_attempts(&self, batch: &[Attempt]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let batch = batch.iter().map(|a| self.limits.bound_attempt(a)).collect();
        self.write(|tx| WriteOp::Attempts(batch, None, tx))
            .await
            .map(drop)
    }

    /// The attempt and the removal of its queued re-send request are one
    /// transaction. The notification is checked in it, so `of` is not needed.
    async fn record_attempt(
        &self,
        attempt: &Attempt,
        _of: AttemptOf<'_>,
        resend_request: Option<i64>,
    ) -> Result<()> {
        let batch = vec![self.limits.bound_attempt(attempt)];
        self.write(|tx| WriteOp::Attempts(batch, resend_request, tx))
            .await
            .map(drop)
    }

    async fn attempts(&self, id: NotificationId) -> Result<Vec<Attempt>> {
        self.read(move |c| read_attempts(c, &id.to_string())).await
    }

    async fn get(&self, id: NotificationId) -> Result<Option<NotificationRecord>> {
        self.read(move |c| {
            let id_s = id.to_string();
            let notification = c
                .prepare_cached(&format!(
                    "SELECT {N_COLS} FROM notifications n WHERE n.notification_id = ?1"
                ))?
                .query_row([&id_s], |r| Ok(read_notification(r)))
                .optional()?
                .transpose()?;
            let Some(notification) = notification else {
                return Ok(None);
            };
            let attempts = read_attempts(c, &id_s)?;
            let state = NotificationState::derive(&notification.content, &attempts);
            Ok(Some(NotificationRecord {
                notification,
                attempts,
                state,
            }))
        })
        .await
    }

    async fn state(&self, id: NotificationId) -> Result<Option<NotificationState>> {
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {S_COLS} FROM notifications n \
                 JOIN notification_state s ON s.seq = n.seq WHERE n.notification_id = ?1"
            ))?
            .query_row([id.to_string()], |r| Ok(read_state(r, 0)))
            .optional()?
            .transpose()
        })
        .await
    }

    async fn list(&self, query: &ListQuery) -> Result<Page> {
        self.list_where(query, query.status).await
    }

    async fn list_exhausted(&self, query: &ListQuery) -> Result<Page> {
        self.list_where(query, Some(Status::Failed)).await
    }

    /// One grouped query on the listing index: exact whatever the bound.
    async fn count_statuses(
        &self,
        webhook_id: &str,
        range: TimeRange,
        _bound: u64,
    ) -> Result<StatusCounts> {
        let (from, to) = range.millis();
        let webhook = webhook_id.to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT s.status, count(*) FROM notifications n \
                 JOIN notification_state s ON s.seq = n.seq \
                 WHERE n.webhook_id = ?1 AND n.created_at >= ?2 AND n.created_at < ?3 \
                 GROUP BY s.status",
            )?;
            let mut rows = stmt.query(params![webhook, from, to])?;
            let mut counts = StatusCounts {
                complete: true,
                ..StatusCounts::default()
            };
            while let Some(row) = rows.next()? {
                let status: String = row.get(0)?;
                let n: i64 = row.get(1)?;
                let status = status
                    .parse::<Status>()
                    .map_err(|e| StoreError::Corrupt(format!("stored status: {e}")))?;
                counts.counts.insert(status.as_str(), n as u64);
                counts.scanned += n as u64;
            }
            Ok(counts)
        })
        .await
    }
}

struct ReaderPool {
    path: PathBuf,
    busy: Duration,
    max_idle: usize,
    idle: Mutex<Vec<Connection>>,
}

impl ReaderPool {
    fn take(&self) -> Result<Connection> {
        if let Some(c) = self.idle.lock().expect("reader pool poisoned").pop() {
            return Ok(c);
        }
        let c = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI,
        )?;
        c.busy_timeout(self.busy)?;
        Ok(c)
    }

    fn give_back(&self, c: Connection) {
        let mut idle = self.idle.lock().expect("reader pool poisoned");
        if idle.len() < self.max_idle {
            idle.push(c);
        }
    }
}

fn open_writer(cfg: &SqliteConfig) -> Result<Connection> {
    if let Some(dir) = cfg.path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let conn = Connection::open(&cfg.path)?;
    conn.busy_timeout(Duration::from_millis(cfg.busy_timeout_ms))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Invalid(format!(
            "{} cannot use WAL mode (got {mode})",
            display(&cfg.path)
        )));
    }
    let sync = cfg.synchronous.pragma();
    // Checkpoints stay SQLite's (every 1,000 WAL pages, by the writer): run
    // from a thread of their own they made the writer 30% faster but its
    // p99 latency 4 to 10 times longer (docs/store.md).
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {sync}; PRAGMA cache_size = -{};",
        u64::from(cfg.writer_cache_mib.max(2)) * 1024
    ))?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Invalid(format!(
            "{} has schema version {version}, newer than this build's {SCHEMA_VERSION}",
            display(&cfg.path)
        )));
    }
    // Version 0 is a new file: the schema alone.
    let (before, after) = match version {
        1 => (
            format!("{MIGRATE_1_TO_2} {MIGRATE_2_TO_3_BEFORE}"),
            MIGRATE_2_TO_3_AFTER,
        ),
        2 => (MIGRATE_2_TO_3_BEFORE.to_owned(), MIGRATE_2_TO_3_AFTER),
        _ => (String::new(), ""),
    };
    if !before.is_empty() {
        tracing::info!(path = %cfg.path.display(), from = version, to = SCHEMA_VERSION, "upgrading the store's schema");
    }
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE; {before} {SCHEMA} {after} \
         PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
    ))?;
    Ok(conn)
}

fn display(p: &Path) -> String {
    p.display().to_string()
}

/// The writer thread: take one append, then whatever else is already
/// queued (up to `max_group`), apply them in one transaction so that one
/// bad append fails alone ([`apply_group`]), commit once, then answer every
/// caller.
fn writer_loop(mut conn: Connection, mut rx: mpsc::Receiver<WriteOp>, max_group: usize) {
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while group.len() < max_group {
            match rx.try_recv() {
                Ok(op) => group.push(op),
                Err(_) => break,
            }
        }
        let outcome = apply_group(&mut conn, &group);
        match outcome {
            Ok(results) => {
                for (op, result) in group.into_iter().zip(results) {
                    let _ = reply(op).send(result);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, appends = group.len(), "sqlite group commit failed");
                let msg = e.to_string();
                for op in group {
                    let _ = reply(op).send(Err(StoreError::CommitFailed(msg.clone())));
                }
            }
        }
    }
}

fn reply(op: WriteOp) -> Reply {
    match op {
        WriteOp::Notifications(_, tx) | WriteOp::Attempts(_, _, tx) | WriteOp::Resend(_, tx) => tx,
    }
}

/// Apply a group in one transaction. First all together, without
/// savepoints: a savepoint per append made SQLite copy every page an append
/// touched to its sub-journal first (8% of the writer's time). If any
/// append fails, that transaction is rolled back and the group applied
/// again with a savepoint per append, so that a bad append fails alone.
fn apply_group(conn: &mut Connection, group: &[WriteOp]) -> Result<Vec<Result<Written>>> {
    {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut results = Vec::with_capacity(group.len());
        for op in group {
            match apply_op(&tx, op) {
                Ok(written) => results.push(Ok(written)),
                // Dropping the transaction rolls it back.
                Err(_) => break,
            }
        }
        if results.len() == group.len() {
            tx.commit()?;
            return Ok(results);
        }
    }
    apply_group_one_by_one(conn, group)
}

/// The slow path of [`apply_group`]: each append in its own savepoint.
fn apply_group_one_by_one(
    conn: &mut Connection,
    group: &[WriteOp],
) -> Result<Vec<Result<Written>>> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut results = Vec::with_capacity(group.len());
    // Savepoint statements are prepared once and cached: rusqlite's
    // `savepoint()` parses them again for every append, which was 15% of
    // the writer thread's time in standalone mode.
    let exec = |sql: &str| -> Result<()> {
        tx.prepare_cached(sql)?.execute([])?;
        Ok(())
    };
    for op in group {
        exec("SAVEPOINT herald_append")?;
        let r = apply_op(&tx, op);
        if r.is_err() {
            exec("ROLLBACK TO herald_append")?;
        }
        exec("RELEASE herald_append")?;
        results.push(r);
    }
    tx.commit()?;
    Ok(results)
}

/// One append. On an error it may have written part of its rows: the
/// caller rolls them back.
fn apply_op(tx: &Connection, op: &WriteOp) -> Result<Written> {
    match op {
        WriteOp::Notifications(ns, _) => ns
            .iter()
            .map(|n| insert_notification(tx, n))
            .collect::<Result<_>>()
            .map(Written::Notifications),
        WriteOp::Attempts(atts, request, _) => {
            for a in atts {
                insert_attempt(tx, a)?;
            }
            if let Some(r) = request {
                tx.prepare_cached("DELETE FROM resend_requests WHERE request_id = ?1")?
                    .execute([r])?;
            }
            Ok(Written::Attempts)
        }
        WriteOp::Resend(id, _) => {
            tx.prepare_cached(
                "INSERT INTO resend_requests (notification_id, requested_at) VALUES (?1, ?2)",
            )?
            .execute(params![id.to_string(), to_ms(Utc::now())])?;
            Ok(Written::Resend(tx.last_insert_rowid()))
        }
    }
}

/// Emulates CQL writes with `USING TIMESTAMP`, per column group as CQL
/// keeps a write time per column: the count (attempts, last attempt time)
/// and the status (status, next due time) are each replaced only by a write
/// with the same or a later write time. A failed manual re-send writes the
/// count alone (its status write time is -1, which never wins).
const UPSERT_STATE: &str = "INSERT INTO notification_state \
     (seq, status, attempts, last_attempt_at, next_attempt_at, write_ts, status_ts) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
     ON CONFLICT (seq) DO UPDATE SET \
     attempts = CASE WHEN excluded.write_ts >= write_ts THEN excluded.attempts ELSE attempts END, \
     last_attempt_at = CASE WHEN excluded.write_ts >= write_ts \
         THEN excluded.last_attempt_at ELSE last_attempt_at END, \
     write_ts = MAX(write_ts, excluded.write_ts), \
     status = CASE WHEN excluded.status_ts >= status_ts THEN excluded.status ELSE status END, \
     next_attempt_at = CASE WHEN excluded.status_ts >= status_ts \
         THEN excluded.next_attempt_at ELSE next_attempt_at END, \
     status_ts = MAX(status_ts, excluded.status_ts)";

fn insert_notification(tx: &Connection, n: &Notification) -> Result<Accepted> {
    let content = serde_json::to_string(&n.content)
        .map_err(|e| StoreError::Invalid(format!("notification {}: {e}", n.id)))?;
    let created = to_ms(n.created_at);
    let inserted = tx
        .prepare_cached(
            "INSERT INTO notifications (notification_id, webhook_id, event_source, event_id, \
             event_type, subject, event_time, created_at, template_hash, content) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
             ON CONFLICT (notification_id) DO NOTHING",
        )?
        .execute(params![
            n.id.to_string(),
            n.webhook_id,
            n.event_source,
            n.event_id,
            n.event_type,
            n.subject,
            to_ms(n.event_time),
            created,
            n.template_hash,
            content,
        ])?;
    if inserted == 1 {
        let seq = tx.last_insert_rowid();
        let s = NotificationState::initial(&n.content);
        tx.prepare_cached(UPSERT_STATE)?.execute(params![
            seq,
            s.status.as_str(),
            s.attempts,
            None::<i64>,
            None::<i64>,
            created * 1000,
            created * 1000,
        ])?;
        return Ok(Accepted::New);
    }
    // Known: the first record wins; report it with its state.
    let listed = tx
        .prepare_cached(&format!(
            "SELECT {N_COLS}, {S_COLS} FROM notifications n \
             JOIN notification_state s ON s.seq = n.seq \
             WHERE n.notification_id = ?1"
        ))?
        .query_row([n.id.to_string()], |r| Ok(read_listed(r)))??;
    Ok(Accepted::Existing {
        stored: Box::new(listed.notification),
        state: listed.state,
    })
}

fn insert_attempt(tx: &Connection, a: &Attempt) -> Result<()> {
    let id = a.notification_id.to_string();
    let found: Option<(i64, i64, String)> = tx
        .prepare_cached(
            "SELECT n.seq, n.created_at, s.status FROM notifications n \
             JOIN notification_state s ON s.seq = n.seq \
             WHERE n.notification_id = ?1",
        )?
        .query_row([&id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let Some((seq, created_ms, status)) = found else {
        return Err(StoreError::NotFound(a.notification_id));
    };
    if status == Status::RenderFailed.as_str() {
        return Err(StoreError::Invalid(format!(
            "notification {} failed to render and cannot have attempts",
            a.notification_id
        )));
    }
    tx.prepare_cached(
        "INSERT INTO attempts (seq, started_at, attempt_id, attempt_no, trigger, \
         duration_ms, outcome, http_status, error, response_excerpt, next_attempt_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
         ON CONFLICT DO NOTHING",
    )?
    .execute(params![
        seq,
        to_ms(a.started_at),
        a.attempt_id.to_string(),
        a.attempt_no,
        a.trigger.as_str(),
        a.duration_ms,
        a.outcome.as_str(),
        a.http_status,
        a.error,
        a.response_excerpt,
        a.next_attempt_at.map(to_ms),
    ])?;
    let ts = attempt_write_ts(a.started_at, created_ms);
    let (status, status_ts) = match a.implied_status() {
        Some(status) => (status, status_write_ts(status, ts)),
        None => (Status::Pending, -1),
    };
    tx.prepare_cached(UPSERT_STATE)?.execute(params![
        seq,
        status.as_str(),
        a.attempt_no,
        to_ms(a.started_at),
        a.next_attempt_at.map(to_ms),
        ts,
        status_ts,
    ])?;
    Ok(())
}

/// Notification columns, in the order [`read_notification`] reads them.
const N_COLS: &str = "n.notification_id, n.webhook_id, n.event_source, n.event_id, \
     n.event_type, n.subject, n.event_time, n.created_at, n.template_hash, n.content";
const N_COUNT: usize = 10;
/// State columns, in the order [`read_state`] reads them.
const S_COLS: &str = "s.status, s.attempts, s.last_attempt_at, s.next_attempt_at";

fn parse<T: std::str::FromStr>(s: &str, what: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    s.parse()
        .map_err(|e| StoreError::corrupt(format!("{what} {s:?}: {e}")))
}

fn read_notification(r: &Row<'_>) -> Result<Notification> {
    let id: String = r.get(0)?;
    let content: String = r.get(9)?;
    let content: NotificationContent = serde_json::from_str(&content)
        .map_err(|e| StoreError::corrupt(format!("content of {id}: {e}")))?;
    Ok(Notification {
        id: parse(&id, "notification id")?,
        webhook_id: r.get(1)?,
        event_source: r.get(2)?,
        event_id: r.get(3)?,
        event_type: r.get(4)?,
        subject: r.get(5)?,
        event_time: from_ms(r.get(6)?)?,
        created_at: from_ms(r.get(7)?)?,
        template_hash: r.get(8)?,
        content,
    })
}

fn read_state(r: &Row<'_>, at: usize) -> Result<NotificationState> {
    let status: String = r.get(at)?;
    Ok(NotificationState {
        status: parse(&status, "status")?,
        attempts: r.get(at + 1)?,
        last_attempt_at: r.get::<_, Option<i64>>(at + 2)?.map(from_ms).transpose()?,
        next_attempt_at: r.get::<_, Option<i64>>(at + 3)?.map(from_ms).transpose()?,
    })
}

fn read_listed(r: &Row<'_>) -> Result<ListedNotification> {
    Ok(ListedNotification {
        notification: read_notification(r)?,
        state: read_state(r, N_COUNT)?,
    })
}

fn read_attempts(c: &Connection, id: &str) -> Result<Vec<Attempt>> {
    let mut stmt = c.prepare_cached(
        "SELECT n.notification_id, a.started_at, a.attempt_id, a.attempt_no, a.trigger, \
         a.duration_ms, a.outcome, a.http_status, a.error, a.response_excerpt, \
         a.next_attempt_at FROM notifications n JOIN attempts a ON a.seq = n.seq \
         WHERE n.notification_id = ?1 ORDER BY a.started_at, a.attempt_id",
    )?;
    stmt.query_map([id], |r| Ok(read_attempt(r)))?
        .map(|r| r?)
        .collect()
}

fn read_attempt(r: &Row<'_>) -> Result<Attempt> {
    let nid: String = r.get(0)?;
    let aid: String = r.get(2)?;
    let trigger: String = r.get(4)?;
    let outcome: String = r.get(6)?;
    Ok(Attempt {
        notification_id: parse(&nid, "notification id")?,
        started_at: from_ms(r.get(1)?)?,
        attempt_id: parse(&aid, "attempt id")?,
        attempt_no: r.get(3)?,
        trigger: parse(&trigger, "trigger")?,
        duration_ms: r.get(5)?,
        outcome: parse(&outcome, "outcome")?,
        http_status: r.get(7)?,
        error: r.get(8)?,
        response_excerpt: r.get(9)?,
        next_attempt_at: r.get::<_, Option<i64>>(10)?.map(from_ms).transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use herald_core::{CloudEvent, Webhooks};

    use super::*;

    fn notification(id: &str) -> Notification {
        let webhooks = Webhooks::from_toml(
            "[[webhooks]]\nid = \"w\"\nevents = [\"bank.*\"]\nurl = \"https://example.com/h\"\nbody = '{\"id\": {{json id}}}'\n",
        )
        .unwrap();
        let event = CloudEvent::from_value(serde_json::json!({
            "specversion": "1.0", "id": id, "source": "/t", "type": "bank.x"
        }))
        .unwrap();
        webhooks.notifications(&event, Utc::now()).remove(0)
    }

    fn count(conn: &Connection, table: &str) -> i64 {
        conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    /// One group commit holding a bad append between two good ones: the bad
    /// one fails alone and leaves nothing behind; the others are committed.
    #[test]
    fn a_bad_append_in_a_group_fails_alone() {
        let dir = std::env::temp_dir().join(format!("herald-sqlite-group-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut conn = open_writer(&SqliteConfig::new(dir.join("t.db"))).unwrap();
        let (a, b) = (notification("a"), notification("b"));
        // An attempt for a notification that was never stored, after a
        // valid attempt in the same append: both must be rolled back.
        let stranger = notification("stranger");
        let attempt = |n: &Notification| Attempt {
            notification_id: n.id,
            attempt_id: uuid::Uuid::now_v7(),
            attempt_no: 1,
            trigger: herald_core::Trigger::Auto,
            started_at: Utc::now(),
            duration_ms: 1,
            outcome: herald_core::Outcome::Success,
            http_status: Some(200),
            error: None,
            response_excerpt: None,
            next_attempt_at: None,
        };
        let (t1, _r1) = oneshot::channel();
        let (t2, _r2) = oneshot::channel();
        let (t3, _r3) = oneshot::channel();
        let group = [
            WriteOp::Notifications(vec![a.clone()], t1),
            WriteOp::Attempts(vec![attempt(&a), attempt(&stranger)], None, t2),
            WriteOp::Notifications(vec![b], t3),
        ];
        let results = apply_group(&mut conn, &group).unwrap();
        assert!(results[0].is_ok());
        assert!(
            matches!(results[1], Err(StoreError::NotFound(id)) if id == stranger.id),
            "{:?}",
            results[1]
        );
        assert!(results[2].is_ok());
        assert_eq!(count(&conn, "notifications"), 2);
        assert_eq!(
            count(&conn, "attempts"),
            0,
            "the failed append left nothing"
        );
        let status: String = conn
            .query_row(
                "SELECT s.status FROM notifications n \
                 JOIN notification_state s ON s.seq = n.seq WHERE n.notification_id = ?1",
                [a.id.to_string()],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(status, "pending");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
