//! The harness every integration test shares: finding the real infrastructure
//! (or skipping loudly without it), unique resource names, one scriptable
//! HTTP receiver, a scriptable DNS server, a throw-away PKI, waiting with a deadline, the bootstrap venv's Python for
//! interop tests, and a Kafka-mode world (topics,
//! keyspace, store, producer, an in-process delivery service) per test.

pub mod api_client;
pub mod dns;
pub mod infra;
pub mod kafka_world;
pub mod pki;
pub mod poll;
pub mod python;
pub mod receiver;

pub use api_client::ApiClient;
pub use dns::StubDns;
pub use infra::{cql_node, free_port, kafka_bootstrap, unique_name};
pub use kafka_world::KafkaWorld;
pub use poll::{eventually, eventually_every};
pub use python::{python, run_python};
pub use receiver::{Failing, Received, Reply, TestReceiver};
