//! Engine throughput without a broker, and the v1 aggregation in plain timely state against
//! differential-dataflow on the same events:
//! `cargo run --release -p squall-benches --bin engine -- --workers 1,2 --aggregation timely,differential`.
//! Prints `key=value` lines for scripts (`engine ...` per run, then `engine_scaling` and `engine_ratio`).

use std::sync::Arc;

use clap::Parser;
use squall_benches::engine::{Aggregation, EngineRun, generate, run_on};

/// Generated events straight into the personalization dataflow, enrichment from a warm cache.
#[derive(Parser)]
struct Args {
    /// Worker counts to run, one after the other (e.g. 1,2 for scaling).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    workers: Vec<usize>,
    /// Aggregations to run on the same events: timely (what ships), differential.
    #[arg(long, value_delimiter = ',', default_value = "timely")]
    aggregation: Vec<String>,
    /// Events in total (split evenly over the workers).
    #[arg(long, default_value_t = 4_000_000)]
    events: usize,
    /// Distinct users (Zipf).
    #[arg(long, default_value_t = 1_000_000)]
    users: u64,
    /// Catalogue tracks (Zipf).
    #[arg(long, default_value_t = 100_000)]
    tracks: u64,
    /// Events per epoch.
    #[arg(long, default_value_t = 10_000)]
    batch: usize,
    /// Runs of each configuration; the best is reported (the machine is shared).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// The version of topologies/personalization.toml the timely aggregation keeps.
    #[arg(long, default_value_t = 1)]
    version: u32,
}

fn main() {
    let a = Args::parse();
    let aggregations: Vec<Aggregation> = a
        .aggregation
        .iter()
        .map(|s| match s.as_str() {
            "timely" => Aggregation::Timely,
            "differential" | "dd" => Aggregation::Differential,
            other => panic!("unknown aggregation {other}: timely or differential"),
        })
        .collect();
    let mut best = Vec::new();
    for &workers in &a.workers {
        let base = EngineRun {
            users: a.users,
            tracks: a.tracks,
            batch: a.batch,
            version: a.version,
            ..EngineRun::new(workers, a.events)
        };
        let inputs = Arc::new(generate(&base));
        for &aggregation in &aggregations {
            let r = EngineRun { aggregation, ..base.clone() };
            let mut top: Option<f64> = None;
            for _ in 0..a.repeat.max(1) {
                let m = run_on(&r, Arc::clone(&inputs));
                println!(
                    "engine aggregation={} workers={workers} events={} processed={} users={} applied={} elapsed_s={:.3} cpu_s={:.2} events_per_sec={:.0} events_per_cpu_s={:.0}",
                    aggregation.name(),
                    m.generated,
                    m.processed,
                    m.users,
                    m.applied,
                    m.elapsed.as_secs_f64(),
                    m.cpu_s,
                    m.events_per_sec,
                    m.generated as f64 / m.cpu_s.max(1e-9),
                );
                top = Some(top.map_or(m.events_per_sec, |t: f64| t.max(m.events_per_sec)));
            }
            best.push((aggregation, workers, top.unwrap_or(0.0)));
        }
    }
    let get = |agg: Aggregation, w: usize| best.iter().find(|(a, x, _)| *a == agg && *x == w).map(|b| b.2);
    for &aggregation in &aggregations {
        let (min, max) = (a.workers.iter().min().copied(), a.workers.iter().max().copied());
        if let (Some(lo), Some(hi)) = (min, max)
            && lo != hi
            && let (Some(x), Some(y)) = (get(aggregation, lo), get(aggregation, hi))
        {
            println!("engine_scaling aggregation={} from={lo} to={hi} ratio={:.2}", aggregation.name(), y / x);
        }
    }
    if aggregations.len() > 1 {
        for &w in &a.workers {
            if let (Some(t), Some(d)) = (get(Aggregation::Timely, w), get(Aggregation::Differential, w)) {
                println!("engine_ratio timely_over_differential workers={w} ratio={:.2}", t / d);
            }
        }
    }
}
