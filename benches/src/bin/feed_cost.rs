//! What the attribute feeds and `squall diff` cost the version they belong to: events/s of
//! `squall run` over the same pre-produced events with the feeds off, the changelog on, the CQL
//! profile table on, and the changelog on while a [`squall::changelog_diff::DiffSession`] compares
//! it with a reference version's, alternating, `--rounds` times each; and how fast each feed writes (users
//! written per second until it has caught up with the last cut).
//! `cargo run --release -p squall-benches --bin feed_cost -- --brokers 127.0.0.1:9092 --cql 127.0.0.1:9042`
//! Needs the dev environment and `cargo build --release --bins` (it runs `squall` and `squall-gen`
//! from its own directory). `--pin` runs squall on CPU 1 and the broker, the CQL dev server and this
//! harness (the diff) on CPU 0, as in production, where the stores and the diff (in `squall
//! server`) are not on the versions' hosts; without it everything shares every CPU.
//!
//! Prints `feed_cost_run ...` per run and one `feed_cost ...` summary line per mode.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Parser;
use squall::changelog_diff::DiffSession;
use squall_benches::cpu::Pinned;
use squall_benches::engine::cpu_seconds_of;
use squall_benches::http_load::{http_get, metric};
use squall_benches::kafka_load::pre_produce;
use squall_benches::procs::{Squall, bin_dir};
use squall_benches::{DevEnv, Workload};

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    env: DevEnv,
    #[command(flatten)]
    load: Workload,
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Runs of each mode.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Modes, run in this order in every round (rotated each round): off, changelog, profile, diff.
    #[arg(long, value_delimiter = ',', default_value = "off,changelog,profile,diff")]
    modes: Vec<String>,
    /// squall on CPU 1; broker, CQL server and the diff on CPU 0.
    #[arg(long)]
    pin: bool,
    /// The share of its time the diff works while catching up (`squall server --diff-duty`).
    #[arg(long, default_value_t = squall::changelog_diff::DUTY)]
    diff_duty: f64,
}

fn extra(mode: &str) -> &'static str {
    match mode {
        "off" => "[enrichment]\npreload = true\n[state]\nepoch = \"1s\"\n",
        "changelog" | "diff" => {
            "[enrichment]\npreload = true\n[state]\nepoch = \"1s\"\n[feed]\nchangelog = true\nchangelog_partitions = 6\n"
        }
        "profile" => "[enrichment]\npreload = true\n[state]\nepoch = \"1s\"\n[feed]\nprofile = true\n",
        other => panic!("unknown mode {other:?}: use off, changelog, profile or diff"),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Users written by the feeds, and whether every feed has caught up (no lag, nothing pending).
fn feed_progress(s: &Squall) -> (f64, bool) {
    match http_get(&s.addr, "/metrics") {
        Ok((200, text)) => {
            let written = metric(&text, "squall_feed_users_written_total");
            let lag = metric(&text, "squall_feed_lag_cuts");
            (written, lag == 0.0)
        }
        _ => (0.0, false),
    }
}

fn main() {
    let a = Args::parse();
    let bins = bin_dir();
    let run = format!("fc{}", std::process::id());
    let (songs, ads, _) = pre_produce(&bins, &a.env, &run, a.load.events, a.load.users);
    let _pinned = a.pin.then(|| Pinned::new(&a.env, "0").expect("pin the broker, CQL server and harness"));
    let cpus = a.pin.then_some("1");

    // The reference version a diff compares with: the same declaration, run once to the end.
    let reference = format!("{run}ref");
    if a.modes.iter().any(|m| m == "diff") {
        let s = Squall::start_on(&bins, &reference, &a.env, (&songs, &ads), a.workers, extra("diff"), cpus);
        s.wait_for(a.load.events as f64, Duration::from_secs(900)).expect("the reference applied every event");
    }
    let reference = format!("{reference}-v1");

    let mut rates: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut rows: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for round in 0..a.rounds {
        // Rotate the order, so that a drift in the machine's load favours no mode.
        let mut order = a.modes.clone();
        order.rotate_left(round % a.modes.len());
        for mode in order {
            let name = format!("{run}r{round}{mode}");
            let s = Squall::start_on(&bins, &name, &a.env, (&songs, &ads), a.workers, extra(&mode), cpus);
            let cpu_at_serving = s.cpu_seconds();
            let me_at_start = cpu_seconds_of(&std::process::id().to_string());
            let session = (mode == "diff").then(|| {
                // The version creates its changelog topic as it starts.
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    match DiffSession::start(&a.env.brokers, &reference, &format!("{name}-v1"), a.diff_duty) {
                        Ok(session) => break session,
                        Err(e) if Instant::now() < deadline => {
                            eprintln!("waiting for the changelog: {e}");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
            });
            let done = s.wait_for(a.load.events as f64, Duration::from_secs(900)).expect("squall applied every event");
            let secs = (done - s.serving_at).as_secs_f64();
            let rate = a.load.events as f64 / secs;
            let squall_cpu = s.cpu_seconds() - cpu_at_serving;
            let harness_cpu = cpu_seconds_of(&std::process::id().to_string()) - me_at_start;
            let compared = session.as_ref().map(|d| d.report().users_compared).unwrap_or(0);
            // The feeds: until they have written the last cut (no lag, nothing new for 2 s).
            let mut feed = String::new();
            if mode != "off" {
                let deadline = Instant::now() + Duration::from_secs(600);
                let (mut last, mut since) = (f64::NAN, Instant::now());
                let caught_up = loop {
                    let (written, no_lag) = feed_progress(&s);
                    if written != last {
                        (last, since) = (written, Instant::now());
                    } else if no_lag && written > 0.0 && since.elapsed() > Duration::from_secs(2) {
                        break since;
                    }
                    if Instant::now() > deadline {
                        break since;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                };
                let feed_secs = (caught_up - s.serving_at).as_secs_f64();
                let per_sec = last / feed_secs;
                rows.entry(mode.clone()).or_default().push(per_sec);
                feed = format!(
                    " users_written={last:.0} feed_caught_up_s={feed_secs:.2} users_written_per_sec={per_sec:.0} feed_behind_events_s={:.2}",
                    feed_secs - secs
                );
            }
            println!(
                "feed_cost_run round={round} mode={mode} events={} seconds={secs:.2} events_per_sec={rate:.0} squall_cpu_s={squall_cpu:.2} harness_cpu_s={harness_cpu:.2} users_compared_by_then={compared}{feed}",
                a.load.events
            );
            rates.entry(mode).or_default().push(rate);
            drop(session);
        }
    }
    let off = rates.get("off").map(|v| median(v.clone()));
    for (mode, v) in &rates {
        let m = median(v.clone());
        println!(
            "feed_cost pinned={} workers={} events={} users={} mode={mode} runs={} median_events_per_sec={m:.0} vs_off={} median_users_written_per_sec={} all={v:?}",
            a.pin,
            a.workers,
            a.load.events,
            a.load.users,
            v.len(),
            off.map_or("-".into(), |o| format!("{:.3}", m / o)),
            rows.get(mode).map_or("-".into(), |r| format!("{:.0}", median(r.clone()))),
        );
    }
}
