//! Herald's delivery: the guarded HTTP sender, the rules that turn one
//! delivery job into one recorded attempt, and the Kafka delivery service.

pub mod attempt;
pub mod client;
pub mod resend_lock;
pub mod secrets;
pub mod service;
pub mod ssrf;

pub use attempt::{AttemptPlan, AttemptResult, Deliverer};
pub use client::{HttpSender, SendResult, SenderConfig};
pub use resend_lock::ResendLocks;
pub use secrets::EnvAndFileSecrets;
pub use service::{DeliveryConfig, DeliveryService};
pub use ssrf::SsrfGuard;
