//! What `squall diff` costs the versions it reads: events/s of `squall run` (changelog on) over
//! the same pre-produced events, without and with a [`squall::diff::DiffSession`] comparing its
//! changelog with a reference version's while it runs, alternating, `--rounds` times each.
//! `cargo run --release -p squall-benches --bin diff_slowdown -- --brokers 127.0.0.1:9092 --cql 127.0.0.1:9042`
//! Needs the dev environment and `cargo build --release --bins` (it runs `squall` and `squall-gen`
//! from its own directory). `--pin` runs squall on CPU 1 and the broker, the CQL dev server and this
//! harness (the diff) on CPU 0, as in production, where the diff runs in `squall server` and not
//! on the versions' hosts; without it everything shares every CPU.
//!
//! Prints `diff_slowdown_run ...` per run and one `diff_slowdown ...` summary line.

use std::time::{Duration, Instant};

use clap::Parser;
use squall::diff::DiffSession;
use squall_benches::engine::cpu_seconds_of;
use squall_benches::pipeline::{Pinned, Squall, bin_dir, squall_gen};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(long, default_value = "127.0.0.1:9042")]
    cql: String,
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    #[arg(long, default_value_t = 100_000)]
    users: u64,
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Runs with and without the diff, each.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// squall on CPU 1; broker, CQL server and the diff on CPU 0.
    #[arg(long)]
    pin: bool,
}

const EXTRA: &str =
    "[enrichment]\npreload = true\n[state]\nepoch = \"1s\"\n[feed]\nchangelog = true\nchangelog_partitions = 6\n";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let a = Args::parse();
    let bins = bin_dir();
    let run = format!("ds{}", std::process::id());
    let (songs, ads) = (format!("{run}-songs"), format!("{run}-ads"));
    squall_gen(
        &bins,
        &["topics", "--brokers", &a.brokers, "--song-topic", &songs, "--ad-topic", &ads, "--partitions", "6"],
    );
    squall_gen(&bins, &["catalogue", "--cql", &a.cql]);
    let (n, users) = (a.events.to_string(), a.users.to_string());
    squall_gen(
        &bins,
        &[
            "events",
            "--brokers",
            &a.brokers,
            "--song-topic",
            &songs,
            "--ad-topic",
            &ads,
            "--rate",
            "0",
            "--count",
            &n,
            "--users",
            &users,
            "--malformed",
            "0",
        ],
    );
    let _pinned = a.pin.then(|| Pinned::new(&a.brokers, &a.cql, "0").expect("pin the broker, CQL server and harness"));
    let cpus = a.pin.then_some("1");

    // The reference version the diff compares with: the same declaration, run once to the end.
    let reference = format!("{run}ref");
    {
        let s = Squall::start_on(&bins, &reference, &a.brokers, &a.cql, (&songs, &ads), a.workers, EXTRA, cpus);
        s.wait_for(a.events as f64, Duration::from_secs(600)).expect("the reference applied every event");
    }
    let reference = format!("{reference}-v1");

    let (mut without, mut with) = (Vec::new(), Vec::new());
    for round in 0..a.rounds {
        // Alternate which goes first, so that a drift in the machine's load favours neither.
        let order = if round % 2 == 0 { [false, true] } else { [true, false] };
        for diff in order {
            let name = format!("{run}r{round}{}", if diff { "d" } else { "n" });
            let s = Squall::start_on(&bins, &name, &a.brokers, &a.cql, (&songs, &ads), a.workers, EXTRA, cpus);
            let cpu_at_serving = s.cpu_seconds();
            let me_at_start = cpu_seconds_of(&std::process::id().to_string());
            let session = diff.then(|| {
                // The version creates its changelog topic as it starts.
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    match DiffSession::start(&a.brokers, &reference, &format!("{name}-v1")) {
                        Ok(session) => break session,
                        Err(e) if Instant::now() < deadline => {
                            eprintln!("waiting for the changelog: {e}");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
            });
            let done = s.wait_for(a.events as f64, Duration::from_secs(600)).expect("squall applied every event");
            let secs = (done - s.serving_at).as_secs_f64();
            let rate = a.events as f64 / secs;
            let squall_cpu = s.cpu_seconds() - cpu_at_serving;
            let diff_cpu = cpu_seconds_of(&std::process::id().to_string()) - me_at_start;
            let compared = session.as_ref().map(|d| d.report().users_compared).unwrap_or(0);
            println!(
                "diff_slowdown_run round={round} diff={diff} events={} seconds={secs:.2} events_per_sec={rate:.0} squall_cpu_s={squall_cpu:.2} harness_cpu_s={diff_cpu:.2} users_compared_by_then={compared}",
                a.events
            );
            if diff {
                with.push(rate)
            } else {
                without.push(rate)
            }
            drop(session);
        }
    }
    let (w, wo) = (median(with.clone()), median(without.clone()));
    println!(
        "diff_slowdown pinned={} workers={} events={} users={} runs={} median_without={wo:.0} median_with={w:.0} slowdown_percent={:.1} without={without:?} with={with:?}",
        a.pin,
        a.workers,
        a.events,
        a.users,
        a.rounds,
        100.0 * (1.0 - w / wo)
    );
}
