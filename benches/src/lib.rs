//! Benchmark harnesses for squall; each binary's `//!` line says what it measures and how to run it.
#![warn(missing_docs)]

pub mod differential;
pub mod engine;
pub mod pipeline;

/// The allocator the `squall` binary runs with (deploy/src/main.rs), so that the harnesses that
/// run the dataflow in their own process (engine, memory, enrichment, checkpoint) measure what
/// squall does.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
