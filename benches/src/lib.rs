//! Benchmark harnesses for squall; each binary's `//!` line says what it measures and how to run it.
#![warn(missing_docs)]

use std::path::PathBuf;

/// The allocator the `squall` binary uses (see `deploy/src/main.rs`), so that the in-process
/// harnesses measure what the server runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod cpu;
pub mod diff_dataflow;
pub mod differential;
pub mod engine;
pub mod fixtures;
pub mod http_load;
pub mod kafka_load;
pub mod pipeline;
pub mod procs;

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

/// The pre-produced input of a harness: how many events, over how many users.
#[derive(clap::Args, Clone, Debug)]
pub struct Workload {
    /// Events pre-produced for the throughput runs.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Users the events are spread over.
    #[arg(long, default_value_t = 1_000_000)]
    pub users: u64,
}

/// The pinned latency run: the broker, the CQL dev server and the harness on some CPUs, squall on
/// others (`taskset -c` lists).
#[derive(clap::Args, Clone, Debug)]
pub struct Pinning {
    /// CPUs of the broker, CQL dev server and this harness (the load generator) in the pinned run.
    #[arg(long, default_value = "0")]
    pub load_cpus: String,
    /// CPUs of squall in the pinned run.
    #[arg(long, default_value = "1")]
    pub squall_cpus: String,
    /// squall workers in the pinned run (it has the cores of `--squall-cpus`).
    #[arg(long, default_value_t = 1)]
    pub pinned_workers: usize,
}

/// Where the harness finds the `squall` and `squall-gen` it runs.
#[derive(clap::Args, Clone, Debug)]
pub struct Bins {
    /// Where `squall` and `squall-gen` are (default: next to this binary).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
}

impl Bins {
    /// The directory: `--bin-dir`, or this executable's.
    pub fn dir(&self) -> PathBuf {
        self.bin_dir.clone().unwrap_or_else(procs::bin_dir)
    }
}
