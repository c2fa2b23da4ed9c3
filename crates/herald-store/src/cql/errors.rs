//! Driver errors as [`StoreError`]s: which are worth retrying.

use super::*;
pub(super) fn db_error_retriable(e: &DbError) -> bool {
    !matches!(
        e,
        DbError::SyntaxError
            | DbError::Invalid
            | DbError::AlreadyExists { .. }
            | DbError::FunctionFailure { .. }
            | DbError::AuthenticationError
            | DbError::Unauthorized
            | DbError::ConfigError
            | DbError::ProtocolError
    )
}

pub(super) fn execution_retriable(e: &ExecutionError) -> bool {
    match e {
        ExecutionError::BadQuery(_) => false,
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(db, _)) => {
            db_error_retriable(db)
        }
        ExecutionError::LastAttemptError(RequestAttemptError::SerializationError(_)) => false,
        _ => true,
    }
}

pub(super) fn cql(message: impl std::fmt::Display, retriable: bool) -> StoreError {
    StoreError::Cql {
        message: message.to_string(),
        retriable,
    }
}

impl From<ExecutionError> for StoreError {
    fn from(e: ExecutionError) -> Self {
        let retriable = execution_retriable(&e);
        cql(e, retriable)
    }
}

impl From<PrepareError> for StoreError {
    fn from(e: PrepareError) -> Self {
        // A prepare fails for a bad statement (schema missing: permanent
        // until migrated) or an unreachable cluster (transient).
        let retriable = !matches!(
            &e,
            PrepareError::AllAttemptsFailed {
                first_attempt: RequestAttemptError::DbError(db, _)
            } if !db_error_retriable(db)
        );
        cql(e, retriable)
    }
}

impl From<NewSessionError> for StoreError {
    fn from(e: NewSessionError) -> Self {
        let retriable = !matches!(
            e,
            NewSessionError::EmptyKnownNodesList | NewSessionError::IllegalConfig(_)
        );
        cql(e, retriable)
    }
}

impl From<IntoRowsResultError> for StoreError {
    fn from(e: IntoRowsResultError) -> Self {
        cql(e, false)
    }
}

impl From<RowsError> for StoreError {
    fn from(e: RowsError) -> Self {
        cql(e, false)
    }
}

impl From<MaybeFirstRowError> for StoreError {
    fn from(e: MaybeFirstRowError) -> Self {
        cql(e, false)
    }
}

impl From<scylla::deserialize::DeserializationError> for StoreError {
    fn from(e: scylla::deserialize::DeserializationError) -> Self {
        cql(e, false)
    }
}
