-- Herald's embedded store (SQLite). The same tables as the CQL schema in
-- schemas/cql/, minus the index tables: an SQL index serves listing by
-- webhook, and a join on the state projection serves the status filter.
-- Times are INTEGER milliseconds since the epoch (UTC), like CQL timestamps;
-- notification_state.write_ts is in microseconds, like a CQL write time.
--
-- `seq` is the notification's key inside this file, given in append order:
-- the state and the attempts are keyed by it, so a delivery's writes land
-- at the end of their tables instead of at random places (a notification
-- id is a hash). Only `notification_id`'s own index is written at random.

CREATE TABLE IF NOT EXISTS notifications (
    seq             INTEGER PRIMARY KEY,
    notification_id TEXT NOT NULL UNIQUE,  -- lowercase hyphenated UUID
    webhook_id      TEXT NOT NULL,
    event_source    TEXT NOT NULL,
    event_id        TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    subject         TEXT,
    event_time      INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    template_hash   TEXT NOT NULL,
    content         TEXT NOT NULL      -- JSON of NotificationContent
);

CREATE INDEX IF NOT EXISTS notifications_by_webhook
    ON notifications (webhook_id, created_at, notification_id);

CREATE TABLE IF NOT EXISTS attempts (
    seq              INTEGER NOT NULL,  -- notifications.seq
    started_at       INTEGER NOT NULL,
    attempt_id       TEXT NOT NULL,
    attempt_no       INTEGER NOT NULL,
    trigger          TEXT NOT NULL,
    duration_ms      INTEGER NOT NULL,
    outcome          TEXT NOT NULL,
    http_status      INTEGER,
    error            TEXT,
    response_excerpt TEXT,
    next_attempt_at  INTEGER,
    PRIMARY KEY (seq, started_at, attempt_id)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS notification_state (
    seq             INTEGER PRIMARY KEY,  -- notifications.seq
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL,
    last_attempt_at INTEGER,
    next_attempt_at INTEGER,
    write_ts        INTEGER NOT NULL,  -- emulates the CQL write time of attempts, last_attempt_at
    status_ts       INTEGER NOT NULL   -- ... and of status, next_attempt_at
);

-- The standalone retry scheduler: due retries and crash recovery.
CREATE INDEX IF NOT EXISTS notification_state_due
    ON notification_state (status, next_attempt_at);

-- Standalone's re-send requests: durable before the API answers 202, removed
-- in the transaction that records the re-send's attempt, run again after a
-- restart.
CREATE TABLE IF NOT EXISTS resend_requests (
    request_id      INTEGER PRIMARY KEY AUTOINCREMENT,
    notification_id TEXT NOT NULL,
    requested_at    INTEGER NOT NULL
);
