//! Rows as the driver reads them, and the records they become.

use super::*;
pub(super) const N_COLS: &str = "notification_id, webhook_id, event_source, event_id, event_type, \
     subject, event_time, created_at, template_hash, content";
pub(super) const A_COLS: &str = "notification_id, started_at, attempt_id, attempt_no, trigger, \
     duration_ms, outcome, http_status, error, response_excerpt, next_attempt_at";

pub(super) type NotificationRow = (
    Uuid,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<CqlTimestamp>,
    Option<CqlTimestamp>,
    Option<String>,
    Option<String>,
);
pub(super) type AttemptRow = (
    Uuid,
    CqlTimestamp,
    Uuid,
    Option<i32>,
    Option<String>,
    Option<i32>,
    Option<String>,
    Option<i32>,
    Option<String>,
    Option<String>,
    Option<CqlTimestamp>,
);
pub(super) type StateRow = (
    Option<String>,
    Option<i32>,
    Option<CqlTimestamp>,
    Option<CqlTimestamp>,
);

pub(super) fn to_i32(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

pub(super) fn day_of(ms: i64) -> Result<NaiveDate> {
    Ok(from_ms(ms)?.date_naive())
}

pub(super) fn day_start_ms(day: NaiveDate) -> i64 {
    day.and_hms_opt(0, 0, 0)
        .map_or(i64::MIN, |t| t.and_utc().timestamp_millis())
}

pub(super) fn ts(t: Option<CqlTimestamp>, what: &str) -> Result<DateTime<Utc>> {
    from_ms(
        t.ok_or_else(|| StoreError::corrupt(format!("{what} is null")))?
            .0,
    )
}

pub(super) fn req<T>(v: Option<T>, what: &str) -> Result<T> {
    v.ok_or_else(|| StoreError::corrupt(format!("{what} is null")))
}

pub(super) fn parse<T: std::str::FromStr>(s: Option<String>, what: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    let s = req(s, what)?;
    s.parse()
        .map_err(|e| StoreError::corrupt(format!("{what} {s:?}: {e}")))
}

pub(super) fn notification_from_row(r: NotificationRow) -> Result<Notification> {
    let id = NotificationId(r.0);
    let content: NotificationContent = serde_json::from_str(&req(r.9, "content")?)
        .map_err(|e| StoreError::corrupt(format!("content of {id}: {e}")))?;
    Ok(Notification {
        id,
        webhook_id: req(r.1, "webhook_id")?,
        event_source: req(r.2, "event_source")?,
        event_id: req(r.3, "event_id")?,
        event_type: req(r.4, "event_type")?,
        subject: r.5,
        event_time: ts(r.6, "event_time")?,
        created_at: ts(r.7, "created_at")?,
        template_hash: r.8.unwrap_or_default(),
        content,
    })
}

pub(super) fn attempt_from_row(r: AttemptRow) -> Result<Attempt> {
    let u32_of = |v: Option<i32>, what: &str| {
        req(v, what).and_then(|v| {
            u32::try_from(v).map_err(|_| StoreError::corrupt(format!("{what} is {v}")))
        })
    };
    Ok(Attempt {
        notification_id: NotificationId(r.0),
        started_at: from_ms(r.1.0)?,
        attempt_id: r.2,
        attempt_no: u32_of(r.3, "attempt_no")?,
        trigger: parse(r.4, "trigger")?,
        duration_ms: u32_of(r.5, "duration_ms")?,
        outcome: parse(r.6, "outcome")?,
        http_status: r
            .7
            .map(|s| u16::try_from(s).map_err(|_| StoreError::corrupt(format!("http status {s}"))))
            .transpose()?,
        error: r.8,
        response_excerpt: r.9,
        next_attempt_at: r.10.map(|t| from_ms(t.0)).transpose()?,
    })
}

pub(super) fn state_from_row(r: StateRow) -> Result<NotificationState> {
    Ok(NotificationState {
        status: parse(r.0, "status")?,
        attempts: u32::try_from(r.1.unwrap_or(0))
            .map_err(|_| StoreError::corrupt("negative attempt count"))?,
        last_attempt_at: r.2.map(|t| from_ms(t.0)).transpose()?,
        next_attempt_at: r.3.map(|t| from_ms(t.0)).transpose()?,
    })
}
