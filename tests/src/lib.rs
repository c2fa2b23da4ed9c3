//! The harness every integration test shares: finding the real infrastructure
//! (or skipping loudly without it), unique resource names, and one scriptable
//! HTTP receiver.

pub mod infra;
pub mod receiver;

pub use infra::{cql_node, kafka_bootstrap, unique_name};
pub use receiver::{Received, Reply, TestReceiver};
