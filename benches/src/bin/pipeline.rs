//! End to end through the Kafka-protocol broker, all figures from one run:
//! `cargo run --release -p squall-benches --bin pipeline -- --brokers 127.0.0.1:9092 --cql 127.0.0.1:9042`.
//! Needs the dev environment (`scripts/devenv.sh up`) and `cargo build --release --bins` (it runs
//! `squall` and `squall-gen` from its own directory). Phases, in order, on one pre-produced topic pair:
//! 1. `ceiling`: bare rdkafka consumers read everything (as many as squall has workers);
//! 2. `squall`: `squall run` from the earliest offsets until every event is applied: the ratio to 1;
//! 3. `bytewax`: `benches/bytewax/run.sh` on the same topics (squall idle): squall/Bytewax;
//! 4. `latency`: events produced at 50% of a maximum rate, plus a probe event for a fresh user every
//!    20 ms whose attributes are polled over HTTP until they show it: p50/p99 production -> visible;
//! 5. `http`: under the same 50% load, a keep-alive HTTP load on `GET /v1/users/{id}/attributes`.
//!
//! Phases 4 and 5 run once per `--load-base`: `batch` takes the maximum from phase 2; `live` first
//! measures the rate squall keeps up with while the harness produces flat out on the same cores.
//! 6. `pinned` (not by default): a fresh squall (`--pinned-workers`) on fresh topics with the broker,
//!    the CQL dev server and this harness pinned to `--load-cpus` and squall to `--squall-cpus`
//!    (`taskset`): the live maximum in that configuration, then latency at `--load-share` of it.
//!
//! Prints one `key=value` line per phase (`pipeline_ceiling`, `pipeline_squall`, `pipeline_live_max`,
//! `pipeline_latency`, `pipeline_http`, `pipeline_bytewax`).

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use squall::generate::{CatalogueGen, EventGenConfig};
use squall_benches::http_load::{http_load, quantile};
use squall_benches::kafka_load::{bare_consume, pre_produce, write_catalogue_json};
use squall_benches::pipeline::{LatencyRun, Load, latency_run, latency_under_load, live_max};
use squall_benches::procs::Squall;
use squall_benches::{Bins, DevEnv, Pinning, Workload};

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    env: DevEnv,
    #[command(flatten)]
    load: Workload,
    /// squall workers (and bare consumers).
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Phases to run (ceiling and squall always run; the others need squall's rate).
    #[arg(long, value_delimiter = ',', default_value = "latency,http,bytewax")]
    phases: Vec<String>,
    #[arg(long, default_value_t = 20)]
    latency_secs: u64,
    /// Background load of the latency and HTTP phases, as a share of a maximum rate (`--load-base`);
    /// 0: none (HTTP lookups alone).
    #[arg(long, default_value_t = 0.5)]
    load_share: f64,
    /// Which maximum rate `--load-share` is taken of, each in turn: `batch`, squall's rate on the
    /// pre-produced events (nothing else running); `live`, the rate squall keeps up with while the
    /// harness produces as fast as it can on the same machine (measured for `--live-secs`).
    #[arg(long, value_delimiter = ',', default_value = "batch,live")]
    load_base: Vec<String>,
    #[arg(long, default_value_t = 8)]
    live_secs: u64,
    #[arg(long, default_value_t = 10)]
    http_secs: u64,
    #[arg(long, default_value_t = 32)]
    http_connections: usize,
    /// Threads of the HTTP load generator.
    #[arg(long, default_value_t = 1)]
    http_threads: usize,
    /// Bytewax worker processes' `-w`.
    #[arg(long, default_value_t = 2)]
    bytewax_workers: usize,
    /// Whether squall reads the whole catalogue into its cache before consuming
    /// (`[enrichment] preload`); false: every id's first event waits for a lookup.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    preload: bool,
    /// librdkafka consumer properties for squall (`[kafka.consumer]`), as `key=value`; repeatable.
    #[arg(long = "consumer-property")]
    consumer_properties: Vec<String>,
    /// The `pinned` phase.
    #[command(flatten)]
    pinning: Pinning,
    #[command(flatten)]
    bins: Bins,
}

/// [`live_max`], printed.
fn print_live_max(squall: &Squall, a: &Args, topics: (&str, &str), config: EventGenConfig) -> f64 {
    let m = live_max(squall, &a.env.brokers, topics, config, a.live_secs);
    println!(
        "pipeline_live_max events_per_sec={:.0} produced={} produced_events_per_sec={:.0} lag_at_end={:.0} caught_up={}",
        m.events_per_sec, m.produced, m.produced_per_sec, m.lag_at_end, m.caught_up,
    );
    m.events_per_sec
}

fn main() {
    let a = Args::parse();
    let bins = a.bins.dir();
    let run = format!("bench{}", std::process::id());
    let n = a.load.events.to_string();
    let (songs, ads, produce_s) = pre_produce(&bins, &a.env, &run, a.load.events, a.load.users);
    println!("pipeline_produce events={n} seconds={produce_s:.2}");

    let c = bare_consume(&a.env.brokers, &[&songs, &ads], a.workers, 10);
    let (read, bytes, secs, ceiling_cpu) = (c.messages, c.bytes, c.seconds, c.cpu_s);
    let ceiling = read as f64 / secs;
    println!(
        "pipeline_ceiling consumers={} events={read} bytes={bytes} seconds={secs:.2} events_per_sec={ceiling:.0} cpu_s={ceiling_cpu:.2} events_per_cpu_s={:.0}",
        a.workers,
        read as f64 / ceiling_cpu.max(1e-9),
    );

    let mut extra = format!("[enrichment]\npreload = {}\n[kafka.consumer]\n", a.preload);
    for kv in &a.consumer_properties {
        let (k, v) = kv.split_once('=').expect("--consumer-property key=value");
        extra.push_str(&format!("{k:?} = {v:?}\n"));
    }
    let squall = Squall::start(&bins, &run, &a.env, (&songs, &ads), a.workers, &extra);
    let cpu_at_serving = squall.cpu_seconds();
    let done = squall.wait_for(a.load.events as f64, Duration::from_secs(600)).expect("squall applied every event");
    let squall_cpu = squall.cpu_seconds() - cpu_at_serving;
    let from_serving = (done - squall.serving_at).as_secs_f64();
    let from_spawn = (done - squall.spawned_at).as_secs_f64();
    let rate = a.load.events as f64 / from_serving;
    println!(
        "pipeline_squall workers={} preload={} events={n} seconds={from_serving:.2} seconds_from_spawn={from_spawn:.2} events_per_sec={rate:.0} ratio_to_ceiling={:.3} ratio_from_spawn={:.3} cpu_s={squall_cpu:.2} events_per_cpu_s={:.0} cpu_ratio_to_ceiling={:.3}",
        a.workers,
        a.preload,
        rate / ceiling,
        (a.load.events as f64 / from_spawn) / ceiling,
        a.load.events as f64 / squall_cpu.max(1e-9),
        (a.load.events as f64 / squall_cpu.max(1e-9)) / (read as f64 / ceiling_cpu.max(1e-9)),
    );

    let catalogue = CatalogueGen { tracks: 100_000, ads: 2_000, seed: 7 };
    // Bytewax reads the same pre-produced topics while squall, done with them, idles.
    if a.phases.iter().any(|p| p == "bytewax") {
        let file = std::env::temp_dir().join(format!("{run}-catalogue.json"));
        write_catalogue_json(&file, &catalogue);
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let out = std::process::Command::new(root.join("bytewax/run.sh"))
            .arg(a.bytewax_workers.to_string())
            .env("BROKERS", &a.env.brokers)
            .env("SONG_TOPIC", &songs)
            .env("AD_TOPIC", &ads)
            .env("CATALOGUE", &file)
            .env("EVENTS", &n)
            .output()
            .expect("run bytewax");
        let text = String::from_utf8_lossy(&out.stdout);
        let applied: u64 = text
            .lines()
            .filter(|l| l.starts_with("bytewax_worker"))
            .filter_map(|l| l.rsplit("applied=").next()?.trim().parse::<u64>().ok())
            .sum();
        let line = text.lines().find(|l| l.starts_with("bytewax ")).unwrap_or("");
        let secs: f64 =
            line.split_whitespace().find_map(|kv| kv.strip_prefix("seconds=")?.parse().ok()).unwrap_or(f64::NAN);
        let bw = a.load.events as f64 / secs;
        println!(
            "pipeline_bytewax workers={} events={n} applied={applied} seconds={secs:.2} events_per_sec={bw:.0} squall_from_spawn_events_per_sec={:.0} ratio_squall_over_bytewax={:.2}",
            a.bytewax_workers,
            a.load.events as f64 / from_spawn,
            (a.load.events as f64 / from_spawn) / bw
        );
        if !out.status.success() {
            eprintln!("bytewax failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    let load_config = |name: &str| EventGenConfig {
        users: a.load.users,
        catalogue,
        run_id: format!("{run}-{name}"),
        ..Default::default()
    };
    let loaded = a.phases.iter().any(|p| p == "latency" || p == "http");
    for base in a.load_base.iter().filter(|_| loaded) {
        let max = match base.as_str() {
            "batch" => rate,
            "live" => print_live_max(&squall, &a, (&songs, &ads), load_config("max")),
            other => panic!("--load-base {other}: expected batch or live"),
        };
        let share = max * a.load_share;
        if a.phases.iter().any(|p| p == "latency") {
            let l = latency_under_load(
                &squall,
                &a.env.brokers,
                (&songs, &ads),
                load_config(&format!("lat-{base}")),
                share,
                a.latency_secs,
            );
            println!(
                "pipeline_latency load_base={base} max_events_per_sec={max:.0} load_events_per_sec={share:.0} load_events={} probes={} p50_ms={:.1} p99_ms={:.1} max_ms={:.1} epoch_s=1 checkpoints=off",
                l.load_events, l.probes, l.p50_ms, l.p99_ms, l.max_ms,
            );
        }
        if a.phases.iter().any(|p| p == "http") {
            let load = Load::start(&a.env.brokers, (&songs, &ads), load_config(&format!("http-{base}")), share);
            let r = http_load(
                &squall.addr,
                a.load.users.min(1_000_000),
                a.http_connections,
                a.http_threads,
                Duration::from_secs(a.http_secs),
            );
            load.stop();
            println!(
                "pipeline_http load_base={base} connections={} threads={} requests={} ok={} not_found={} errors={} seconds={:.2} requests_per_sec={:.0} p50_ms={:.2} p99_ms={:.2} load_events_per_sec={share:.0}",
                a.http_connections,
                a.http_threads,
                r.requests,
                r.ok,
                r.not_found,
                r.errors,
                r.seconds,
                r.requests as f64 / r.seconds,
                quantile(&r.latencies_us, 0.5) as f64 / 1000.0,
                quantile(&r.latencies_us, 0.99) as f64 / 1000.0,
            );
        }
    }
    drop(squall);
    if a.phases.iter().any(|p| p == "pinned") {
        let name = format!("{run}-pinned");
        let (max, l) = latency_run(&LatencyRun {
            bin_dir: &bins,
            name: &name,
            env: &a.env,
            users: a.load.users,
            catalogue,
            workers: a.pinning.pinned_workers,
            extra: &extra,
            pin: Some((&a.pinning.load_cpus, &a.pinning.squall_cpus)),
            load_share: a.load_share,
            live_secs: a.live_secs,
            latency_secs: a.latency_secs,
            restart: None,
        })
        .expect("pinned latency run");
        println!(
            "pipeline_latency load_base=pinned load_cpus={} squall_cpus={} workers={} max_events_per_sec={:.0} lag_at_end={:.0} load_events_per_sec={:.0} load_events={} probes={} p50_ms={:.1} p99_ms={:.1} max_ms={:.1} epoch_s=1 checkpoints=off",
            a.pinning.load_cpus,
            a.pinning.squall_cpus,
            a.pinning.pinned_workers,
            max.events_per_sec,
            max.lag_at_end,
            l.load_events_per_sec,
            l.load_events,
            l.probes,
            l.p50_ms,
            l.p99_ms,
            l.max_ms,
        );
    }
}
