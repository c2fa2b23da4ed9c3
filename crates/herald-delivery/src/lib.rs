//! Herald's delivery: the guarded HTTP sender and the rules that turn one
//! delivery job into one recorded attempt.

pub mod client;
pub mod ssrf;

pub use client::{HttpSender, SendResult, SenderConfig};
pub use ssrf::SsrfGuard;
