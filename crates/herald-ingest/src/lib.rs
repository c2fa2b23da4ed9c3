//! The ingest service: consumes banking events from Kafka, renders and
//! stores notifications, produces delivery jobs.
//!
//! A pipeline of batches, which keeps every partition in order:
//!
//! 1. poll up to `batch_max_events` messages (or until `batch_max_wait`);
//! 2. decode each (structured or binary CloudEvents), match it against the
//!    webhooks and render every match ([`batch`]);
//! 3. append all notifications to the store in one call, retried with capped
//!    exponential backoff while the store is unavailable;
//! 4. produce one delivery job per rendered notification, and one dead
//!    letter per bad input message, and wait for every acknowledgement;
//! 5. store and commit the batch's offsets.
//!
//! Steps 2 and 3 run for up to `batches_in_flight` batches at once; steps 4
//! and 5 run one batch at a time, in input order.
//!
//! An offset is therefore committed only once everything it caused is
//! durable (at least once). See `README.md` in this crate for the decisions.

mod batch;
mod config;
mod error;
mod kafka;
pub mod metrics;
mod service;

pub use config::IngestConfig;
pub use error::{IngestError, Result};
pub use metrics::Metrics;
pub use service::{IngestService, run, start};
