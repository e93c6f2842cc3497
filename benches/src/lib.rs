//! Benchmark harnesses for squall; each binary's `//!` line says what it measures and how to run it.
#![warn(missing_docs)]

pub mod diff_dataflow;
pub mod differential;
pub mod engine;
pub mod fixtures;
pub mod pipeline;
