//! The `herald` crate: standalone mode, the demo and the operator's tools,
//! as a library so tests can start them in-process; `main.rs` is the CLI.

pub mod api;
pub mod console;
pub mod demo;
pub mod ops;
pub mod standalone;

/// Every process built on this crate (the `herald` binary in each of its
/// modes, the bench's servers, the tests) allocates with mimalloc. glibc's
/// allocator was about a seventh of standalone Herald's CPU time
/// (`_int_malloc`, `_int_free`, `malloc_consolidate`) with many small,
/// short-lived allocations handed between threads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
