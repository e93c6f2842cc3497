//! Memory of a version catching up on days of backlog against the same events read live:
//! `cargo run --release -p squall-benches --bin catch_up -- --brokers 127.0.0.1:9092 --cql 127.0.0.1:9042`.
//! Needs the dev environment and `cargo build --release --bins` (it runs `squall` and
//! `squall-gen` from its own directory). The events (`--events`, spread over `--days` of event
//! time, `--users` users, 1% resends) go to fresh topics of 4 partitions each, keyed by user:
//! - `live`: `squall run` starts on the empty topics, and the events are produced a chunk at a
//!   time, each once the previous one is applied, so the partitions advance together;
//! - `backlog`: every event is produced first, then `squall run` reads them from the earliest
//!   offsets, a partition's backlog at a time as librdkafka hands them over, aligned by squall;
//! - `unaligned`: the same as `backlog` with `state.alignment = "0s"` (no partition paused).
//!
//! Prints `catch_up mode=.. events=.. peak_rss_mb=.. rss_mb=.. secs=.. cpu_s=..` per mode, with
//! `dedup_horizon` 24 h and 2 workers, in one run.

use std::path::Path;
use std::time::{Duration, Instant};

use clap::Parser;
use squall::generate::{CatalogueGen, EventGen, EventGenConfig, Generated};
use squall_benches::DevEnv;
use squall_benches::kafka_load::{create_topics, producer, send};
use squall_benches::procs::{Squall, bin_dir, squall_gen};
use squall_operators::EventKind;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    env: DevEnv,
    #[arg(long, default_value_t = 2_000_000)]
    events: u64,
    #[arg(long, default_value_t = 7)]
    days: i64,
    #[arg(long, default_value_t = 200_000)]
    users: u64,
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Events produced per chunk in the live mode.
    #[arg(long, default_value_t = 50_000)]
    chunk: u64,
    /// Modes, in order.
    #[arg(long, value_delimiter = ',', default_value = "live,backlog,unaligned")]
    modes: Vec<String>,
}

const T0: i64 = 1_763_750_000_000;
const DAY: i64 = 24 * 3600 * 1000;

/// `VmHWM` and `VmRSS` of `pid`, in MB.
fn rss_mb(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kb("VmHWM:") / 1024.0, kb("VmRSS:") / 1024.0)
}

/// Produces events `from..to` of the run (event time spread evenly over the days) to `topics`.
fn produce(a: &Args, topics: (&str, &str), generator: &mut EventGen, from: u64, to: u64) -> u64 {
    let p = producer(&a.env.brokers, "20");
    let mut valid = 0;
    for i in from..to {
        let ts = T0 + (i as i64) * a.days * DAY / a.events as i64;
        if let Generated::Event(e) = generator.next_at(ts) {
            let topic = if e.kind() == EventKind::Song { topics.0 } else { topics.1 };
            send(&p, topic, e.user_id(), &e.to_json());
            valid += 1;
        }
    }
    rdkafka::producer::Producer::flush(&p, Duration::from_secs(60)).expect("flush");
    valid
}

fn run(a: &Args, bins: &Path, mode: &str) {
    let run = format!("catchup-{mode}-{}", std::process::id());
    let (songs, ads) = (format!("{run}-songs"), format!("{run}-ads"));
    create_topics(bins, &a.env.brokers, (&songs, &ads), 4);
    let config = EventGenConfig {
        users: a.users,
        catalogue: CatalogueGen { tracks: 100_000, ads: 2_000, seed: 7 },
        run_id: run.clone(),
        duplicate_share: 0.01,
        malformed_share: 0.0,
        unknown_share: 0.0,
        ..Default::default()
    };
    let mut generator = EventGen::new(config, 5);
    // The default start is the earliest offsets.
    let extra = match mode {
        "unaligned" => "[state]\ndedup_horizon = \"24h\"\nalignment = \"0s\"\n",
        _ => "[state]\ndedup_horizon = \"24h\"\n",
    };
    let topics = (songs.as_str(), ads.as_str());
    let (squall, produced, started) = if mode == "live" {
        let squall = Squall::start(bins, &run, &a.env, topics, a.workers, extra);
        let started = Instant::now();
        let mut produced = 0;
        let mut at = 0;
        while at < a.events {
            let to = (at + a.chunk).min(a.events);
            produced += produce(a, topics, &mut generator, at, to);
            squall.wait_for(produced as f64, Duration::from_secs(300)).expect("live chunk applied");
            at = to;
        }
        (squall, produced, started)
    } else {
        let produced = produce(a, topics, &mut generator, 0, a.events);
        let squall = Squall::start(bins, &run, &a.env, topics, a.workers, extra);
        let started = Instant::now();
        squall.wait_for(produced as f64, Duration::from_secs(600)).expect("backlog applied");
        (squall, produced, started)
    };
    let secs = started.elapsed().as_secs_f64();
    let (peak, now) = rss_mb(squall.pid());
    println!(
        "catch_up mode={mode} events={produced} days={} users={} workers={} peak_rss_mb={peak:.0} rss_mb={now:.0} \
         secs={secs:.1} cpu_s={:.1}",
        a.days,
        a.users,
        a.workers,
        squall.cpu_seconds()
    );
}

fn main() {
    let a = Args::parse();
    let bins = bin_dir();
    squall_gen(&bins, &["catalogue", "--cql", &a.env.cql]);
    for mode in &a.modes {
        assert!(
            ["live", "backlog", "unaligned"].contains(&mode.as_str()),
            "--modes takes live, backlog and unaligned, not {mode}"
        );
        run(&a, &bins, mode);
    }
}
