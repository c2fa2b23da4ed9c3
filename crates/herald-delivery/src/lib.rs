//! Herald's delivery: the guarded HTTP sender and the rules that turn one
//! delivery job into one recorded attempt.

pub mod attempt;
pub mod client;
pub mod secrets;
pub mod ssrf;

pub use attempt::{AttemptPlan, AttemptResult, Deliverer};
pub use client::{HttpSender, SendResult, SenderConfig};
pub use secrets::EnvAndFileSecrets;
pub use ssrf::SsrfGuard;
