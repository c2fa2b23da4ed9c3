//! Herald's Kafka glue, in one place: topic names, client settings and
//! contexts (logs, lag), the headers Herald puts on its messages (dead
//! letters included), the producer path that waits for acknowledgements,
//! topic creation, and the tracker that commits only the contiguous prefix
//! of finished offsets.

pub mod client;
pub mod config;
pub mod headers;
pub mod offsets;
pub mod produce;
pub mod topics;

pub use config::{DEFAULT_MAX_MESSAGE_BYTES, HEADROOM_BYTES, KafkaConfig};
pub use offsets::OffsetTracker;
pub use topics::Topics;
