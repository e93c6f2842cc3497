//! Benchmark harnesses for squall; each binary's `//!` line says what it measures and how to run it.
#![warn(missing_docs)]

/// The allocator the `squall` binary uses (see `deploy/src/main.rs`), so that the in-process
/// harnesses measure what the server runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod diff_dataflow;
pub mod differential;
pub mod engine;
pub mod fixtures;
pub mod pipeline;

/// Where the dev broker and CQL server are: the arguments of every harness that needs them.
#[derive(clap::Args, Clone, Debug)]
pub struct DevEnv {
    /// The Kafka-protocol broker.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// The CQL store.
    #[arg(long, default_value = "127.0.0.1:9042")]
    pub cql: String,
}
