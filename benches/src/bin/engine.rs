//! Engine throughput without a broker: `cargo run --release -p squall-benches --bin engine -- --workers 2`.
//! Prints `key=value` lines for scripts.

use clap::Parser;
use squall_benches::engine::{EngineRun, run};

/// Generated events straight into the personalization dataflow, enrichment from a warm cache.
#[derive(Parser)]
struct Args {
    /// Worker counts to run, one after the other (e.g. 1,2 for scaling).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    workers: Vec<usize>,
    #[arg(long, default_value_t = 4_000_000)]
    events: usize,
    #[arg(long, default_value_t = 1_000_000)]
    users: u64,
    #[arg(long, default_value_t = 100_000)]
    tracks: u64,
    #[arg(long, default_value_t = 10_000)]
    batch: usize,
}

fn main() {
    let a = Args::parse();
    for workers in a.workers {
        let r = run(&EngineRun { workers, events: a.events, users: a.users, tracks: a.tracks, batch: a.batch });
        println!(
            "engine workers={workers} events={} users={} applied={} elapsed_s={:.3} events_per_sec={:.0}",
            a.events,
            r.users,
            r.applied,
            r.elapsed.as_secs_f64(),
            r.events_per_sec
        );
    }
}
