//! Herald's delivery: the guarded HTTP sender, the rules that turn one
//! delivery job into one recorded attempt, the delivery pipeline both modes
//! run, and the Kafka delivery service.

pub mod attempt;
pub mod circuit;
pub mod client;
pub mod dns;
pub mod metrics;
pub mod pipeline;
pub mod resend_lock;
pub mod secrets;
pub mod service;
pub mod ssrf;
pub mod tls;

pub use attempt::{AttemptPlan, AttemptResult, Deliverer};
pub use circuit::CircuitBoard;
pub use client::{HttpSender, SendResult, SenderConfig};
pub use dns::DnsConfig;
pub use metrics::Metrics;
pub use pipeline::{NextHops, Pipeline};
pub use resend_lock::ResendLocks;
pub use secrets::EnvAndFileSecrets;
pub use service::{DeliveryConfig, DeliveryService};
pub use ssrf::SsrfGuard;
