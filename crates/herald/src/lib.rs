//! The `herald` crate: standalone mode, the demo and the operator's tools,
//! as a library so tests can start them in-process; `main.rs` is the CLI.

pub mod api;
pub mod console;
pub mod demo;
pub mod ops;
pub mod standalone;
