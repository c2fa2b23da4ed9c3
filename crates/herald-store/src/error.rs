//! The store's one error type, and whether an error is worth retrying.

use herald_core::model::NotificationId;

/// Result alias for store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Everything a store operation can fail with.
///
/// [`StoreError::is_retriable`] separates transient failures (the database
/// is unreachable, overloaded or timed out: try again later, the operation is
/// idempotent) from permanent ones (the input is invalid or too large:
/// retrying the same call can never succeed).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A request body is larger than the configured maximum. Never truncated.
    #[error("request body of notification {id} is {size} bytes, above the limit of {max} bytes")]
    TooLarge {
        id: NotificationId,
        size: usize,
        max: usize,
    },

    /// The input breaks an invariant of the store (e.g. an empty webhook id,
    /// an attempt on a notification that could not be rendered).
    #[error("invalid input: {0}")]
    Invalid(String),

    /// A cursor that this store did not hand out.
    #[error("invalid cursor: {0}")]
    InvalidCursor(String),

    /// An attempt refers to a notification the store does not hold.
    #[error("notification {0} not found")]
    NotFound(NotificationId),

    /// A stored row could not be decoded. Permanent: an operator must look.
    #[error("corrupt record: {0}")]
    Corrupt(String),

    /// An error from the CQL driver or the CQL database.
    #[error("cql: {message}")]
    Cql { message: String, retriable: bool },

    /// An error from SQLite.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),

    /// A group commit of the embedded store failed; none of its appends is
    /// durable.
    #[error("commit failed: {0}")]
    CommitFailed(String),

    /// The embedded store's writer has stopped (shut down or crashed).
    #[error("store is closed")]
    Closed,

    /// An I/O error around the store (e.g. creating the database directory).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl StoreError {
    /// Whether the same call may succeed later. Every write is an idempotent
    /// upsert, so a retriable failure can simply be retried.
    /// Whether the operation's input is at fault (too large, invalid, an
    /// unknown notification, a corrupt record): repeating the same call can
    /// never succeed, whatever an operator does to the store. Any other
    /// error that is not retriable is the store's own fault (authorization,
    /// a missing table): callers wait for an operator rather than skip the
    /// work.
    pub fn is_input_fault(&self) -> bool {
        matches!(
            self,
            StoreError::TooLarge { .. }
                | StoreError::Invalid(_)
                | StoreError::InvalidCursor(_)
                | StoreError::NotFound(_)
                | StoreError::Corrupt(_)
        )
    }

    pub fn is_retriable(&self) -> bool {
        match self {
            StoreError::Cql { retriable, .. } => *retriable,
            StoreError::Sqlite(e) => sqlite_is_retriable(e),
            StoreError::Closed | StoreError::Io(_) | StoreError::CommitFailed(_) => true,
            StoreError::TooLarge { .. }
            | StoreError::Invalid(_)
            | StoreError::InvalidCursor(_)
            | StoreError::NotFound(_)
            | StoreError::Corrupt(_) => false,
        }
    }

    pub(crate) fn corrupt(what: impl std::fmt::Display) -> Self {
        StoreError::Corrupt(what.to_string())
    }

    /// A re-send request given to a store that queues none (see
    /// [`crate::NotificationStore::record_attempt`]).
    pub(crate) fn no_queued_resends() -> Self {
        StoreError::Invalid("this store queues no re-send requests".into())
    }
}

fn sqlite_is_retriable(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode;
    match e {
        rusqlite::Error::SqliteFailure(f, _) => matches!(
            f.code,
            ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::SystemIoFailure
                | ErrorCode::DiskFull
                | ErrorCode::OutOfMemory
                | ErrorCode::CannotOpen
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanent_and_transient_errors_are_told_apart() {
        let id = NotificationId(uuid::Uuid::nil());
        assert!(
            !StoreError::TooLarge {
                id,
                size: 2,
                max: 1
            }
            .is_retriable()
        );
        assert!(!StoreError::InvalidCursor("x".into()).is_retriable());
        assert!(!StoreError::NotFound(id).is_retriable());
        assert!(StoreError::Closed.is_retriable());
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        );
        assert!(StoreError::from(busy).is_retriable());
        let msg = StoreError::TooLarge {
            id,
            size: 2,
            max: 1,
        }
        .to_string();
        assert!(msg.starts_with("request body"), "{msg}");
    }
}
