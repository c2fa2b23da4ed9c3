//! The ingest service's one error type: what stops it from starting or
//! running. Per-message problems are not errors here: they are counted,
//! dead-lettered or recorded, and the service carries on.

use herald_store::StoreError;

/// Result alias of the ingest service.
pub type Result<T, E = IngestError> = std::result::Result<T, E>;

/// Why the service could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A Kafka client could not be created, subscribed or committed with.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The store could not be opened (a permanent error: bad keyspace,
    /// missing schema, credentials).
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The HTTP listener could not be bound.
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}
