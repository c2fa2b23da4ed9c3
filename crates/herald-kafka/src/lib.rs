//! Herald's Kafka glue, in one place: topic names, client settings, the
//! headers Herald puts on its messages, topic creation, and the tracker
//! that commits only the contiguous prefix of finished offsets.

pub mod config;
pub mod headers;
pub mod offsets;
pub mod topics;

pub use config::KafkaConfig;
pub use offsets::OffsetTracker;
pub use topics::Topics;
