//! squall side by side with its peers on the same pre-produced events, one after the other in one
//! run: `cargo build --release --workspace --bins && target/release/compare --brokers 127.0.0.1:9092 --cql 127.0.0.1:9042`.
//!
//! Needs the dev environment (`scripts/devenv.sh up`), Java 17 for the Flink peer
//! (`benches/peers/flink/build.sh` fetches its jars from PyPI once and compiles it) and Python 3 for
//! Bytewax (`benches/bytewax/run.sh` makes its venv once). Phases:
//! 1. `throughput`: produces `--events` events once (6 partitions per topic, `--users` users, the
//!    generator of `squall-gen`), then every `--runs` entry reads all of them from the earliest
//!    offsets, alone on the machine: the bare rdkafka consumer (the ceiling), `squall run`, the
//!    Flink 2.0 job (`benches/peers/flink/`) and Bytewax, with `fetch.wait.max.ms` =
//!    `--fetch-wait-ms` everywhere and checkpoints off or on (squall: the `dir` store; Flink:
//!    exactly-once, heap state backend, to a `file://` directory). For each: events/s from the
//!    first record and from the process start, CPU-seconds of the process tree (`/proc`) and per
//!    million events, in total and from the first record on. `--check` (for small runs, e.g.
//!    `--events 20000`) compares every user's final attributes from squall and Flink with
//!    `squall_topologies::oracle` over the produced events.
//! 2. `latency-unpinned`, `latency-pinned` (`latency`: both): squall alone on fresh topics,
//!    unpinned, or with the broker, the CQL dev server and this harness (load generator and prober)
//!    pinned to `--load-cpus` and squall to `--squall-cpus` (`taskset`): the rate squall keeps up
//!    with while the harness produces flat out, then event -> visible-over-HTTP latency p50/p99
//!    with a background load at `--load-share` of it, on a fresh broker with `--restart-devenv`.
//!    The broker keeps every record in memory and slows as it grows: `benches/compare.sh` restarts
//!    it before each phase, and passes `--restart-devenv`.
//!
//! Prints `compare_run`, `compare_check`, `compare_ratio` and `compare_latency` lines, then the
//! table of medians over `--rounds` in Markdown.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::time::{Duration, Instant};

use clap::Parser;
use squall::generate::CatalogueGen;
use squall::version::http::UserAttributes;
use squall_benches::cpu::tree_cpu_seconds;
use squall_benches::http_load::KeepAlive;
use squall_benches::kafka_load::{bare_consume, create_topics, produce_events, write_catalogue_json};
use squall_benches::pipeline::{LatencyRun, latency_run};
use squall_benches::procs::{Marked, Squall, run_marked, squall_gen};
use squall_benches::{Bins, DevEnv, Pinning, Workload};
use squall_operators::Attributes;
use squall_topologies::oracle;

/// One engine configuration to run, written `engine:workers[:ckpt]`, e.g. `flink:2:ckpt`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct RunSpec {
    engine: Engine,
    /// squall workers, Flink parallelism, Bytewax workers, bare consumers.
    workers: usize,
    checkpoints: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Engine {
    Ceiling,
    Squall,
    /// `squall run` from `--before-bin-dir`: an earlier build, for a before/after in one run.
    Before,
    Flink,
    Bytewax,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::Ceiling => "bare consumer",
            Engine::Squall => "squall",
            Engine::Before => "squall, earlier build (`--before-bin-dir`)",
            Engine::Flink => "Flink 2.0",
            Engine::Bytewax => "Bytewax 0.21",
        }
    }
}

impl FromStr for RunSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split(':');
        let engine = match parts.next() {
            Some("ceiling") => Engine::Ceiling,
            Some("squall") => Engine::Squall,
            Some("before") => Engine::Before,
            Some("flink") => Engine::Flink,
            Some("bytewax") => Engine::Bytewax,
            _ => return Err(format!("{s}: the engine is one of ceiling, squall, before, flink, bytewax")),
        };
        let workers = parts
            .next()
            .and_then(|w| w.parse::<usize>().ok())
            .filter(|w| *w >= 1)
            .ok_or_else(|| format!("{s}: write engine:workers[:ckpt], workers >= 1"))?;
        let checkpoints = match parts.next() {
            None => false,
            Some("ckpt") if matches!(engine, Engine::Squall | Engine::Before | Engine::Flink) => true,
            Some(other) => return Err(format!("{s}: {other:?}: only squall, before and flink take `:ckpt`")),
        };
        if parts.next().is_some() {
            return Err(format!("{s}: write engine:workers[:ckpt]"));
        }
        Ok(RunSpec { engine, workers, checkpoints })
    }
}

impl std::fmt::Display for RunSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let engine = format!("{:?}", self.engine).to_lowercase();
        write!(f, "{engine}:{}{}", self.workers, if self.checkpoints { ":ckpt" } else { "" })
    }
}

/// squall and its peers on the same events, one after the other; see the module doc.
#[derive(Parser)]
// Smaller than the other harnesses' default: the peers are slower, and `--check` reads every user.
#[command(mut_arg("users", |a| a.default_value("100000")))]
struct Args {
    #[command(flatten)]
    env: DevEnv,
    #[command(flatten)]
    load: Workload,
    /// What to run, in order, each `engine:workers[:ckpt]` (engines: ceiling, squall, flink,
    /// bytewax, and `before`: the `squall` of `--before-bin-dir`).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ceiling:1,ceiling:2,squall:1,squall:2,flink:1,flink:2,bytewax:1,bytewax:2,squall:1:ckpt,squall:2:ckpt,flink:1:ckpt,flink:2:ckpt"
    )]
    runs: Vec<RunSpec>,
    /// Times to go through `--runs`; the table shows each configuration's median.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// `fetch.wait.max.ms` (librdkafka) / `fetch.max.wait.ms` (Java) for every engine.
    #[arg(long, default_value_t = 10)]
    fetch_wait_ms: u32,
    /// Checkpoint interval of Flink in ms; squall checkpoints every epoch (1 s).
    #[arg(long, default_value_t = 1000)]
    checkpoint_interval_ms: u64,
    /// Compare every user's final attributes from squall and Flink with the oracle (small runs).
    #[arg(long)]
    check: bool,
    /// Phases: `throughput`, `latency-unpinned`, `latency-pinned` (`latency`: both).
    #[arg(long, value_delimiter = ',', default_value = "throughput,latency")]
    phases: Vec<String>,
    #[command(flatten)]
    pinning: Pinning,
    /// squall workers in the unpinned latency run.
    #[arg(long, default_value_t = 2)]
    unpinned_workers: usize,
    /// Background load of the latency runs, as a share of the rate squall keeps up with.
    #[arg(long, default_value_t = 0.5)]
    load_share: f64,
    #[arg(long, default_value_t = 8)]
    live_secs: u64,
    #[arg(long, default_value_t = 20)]
    latency_secs: u64,
    /// Restart the dev broker and CQL server (`scripts/devenv.sh`, on the ports of `--brokers` and
    /// `--cql`, state in `$SQUALL_DEVENV_DIR` or `.devenv/bench`) between a latency run's maximum and
    /// its latency measurement, so that the latency is not measured on a broker grown by the maximum.
    #[arg(long)]
    restart_devenv: bool,
    /// Gives up on one run after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout_secs: u64,
    #[command(flatten)]
    bins: Bins,
    /// Where the `squall` of the `before` runs is: an earlier build, to measure a change's
    /// before and after in the same run as the peers.
    #[arg(long)]
    before_bin_dir: Option<PathBuf>,
}

/// One run's figures.
#[derive(Clone, Debug)]
struct Measured {
    spec: RunSpec,
    events: u64,
    /// Process start -> first record.
    to_first_s: f64,
    /// Process start -> every event processed.
    total_s: f64,
    cpu_to_first_s: f64,
    cpu_s: f64,
}

impl Measured {
    fn from_marked(spec: RunSpec, events: u64, m: &Marked) -> Self {
        Measured {
            spec,
            events,
            to_first_s: m.seconds_to_first,
            total_s: m.seconds,
            cpu_to_first_s: m.cpu_s_to_first,
            cpu_s: m.cpu_s,
        }
    }
    fn rate_from_first(&self) -> f64 {
        self.events as f64 / (self.total_s - self.to_first_s)
    }
    fn rate_from_start(&self) -> f64 {
        self.events as f64 / self.total_s
    }
    fn cpu_per_million(&self) -> f64 {
        self.cpu_s / self.events as f64 * 1e6
    }
    fn steady_cpu_per_million(&self) -> f64 {
        (self.cpu_s - self.cpu_to_first_s) / self.events as f64 * 1e6
    }
    fn print(&self, round: usize) {
        println!(
            "compare_run run={} round={round} events={} seconds_to_first={:.2} seconds={:.2} events_per_sec_from_first={:.0} events_per_sec_from_start={:.0} cpu_s={:.2} cpu_s_to_first={:.2} cpu_s_per_million={:.2} steady_cpu_s_per_million={:.2}",
            self.spec,
            self.events,
            self.to_first_s,
            self.total_s,
            self.rate_from_first(),
            self.rate_from_start(),
            self.cpu_s,
            self.cpu_to_first_s,
            self.cpu_per_million(),
            self.steady_cpu_per_million(),
        );
    }
}

/// Names, files and expectations shared by the runs.
struct Setup {
    bins: PathBuf,
    run: String,
    songs: String,
    ads: String,
    catalogue_json: PathBuf,
    /// Every user's expected v1 attributes (`--check`).
    expected: Option<BTreeMap<String, Attributes>>,
    flink_dir: PathBuf,
    bytewax: PathBuf,
}

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(name)
}

fn squall_extra(a: &Args, ckpt: Option<&Path>) -> String {
    let mut extra =
        format!("[enrichment]\npreload = true\n[kafka.consumer]\n\"fetch.wait.max.ms\" = \"{}\"\n", a.fetch_wait_ms);
    if let Some(dir) = ckpt {
        extra.push_str(&format!(
            "[state]\ncheckpoint_store = \"dir\"\ncheckpoint_dir = {:?}\n",
            dir.display().to_string()
        ));
    }
    extra
}

fn run_squall(a: &Args, s: &Setup, spec: &RunSpec, tag: &str) -> Result<Measured, String> {
    let ckpt = spec.checkpoints.then(|| tmp(&format!("{tag}-ckpt")));
    let bins = match spec.engine {
        Engine::Before => {
            a.before_bin_dir.as_deref().ok_or_else(|| "`before` runs need --before-bin-dir".to_owned())?
        }
        _ => s.bins.as_path(),
    };
    let squall = Squall::start(bins, tag, &a.env, (&s.songs, &s.ads), spec.workers, &squall_extra(a, ckpt.as_deref()));
    let deadline = squall.spawned_at + Duration::from_secs(a.timeout_secs);
    let (first_at, cpu_at_first) = loop {
        if squall.consumed() > 0.0 {
            break (Instant::now(), squall.cpu_seconds());
        }
        if Instant::now() > deadline {
            return Err(format!("{spec}: no record consumed"));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let done = squall
        .wait_for(a.load.events as f64, deadline.saturating_duration_since(Instant::now()))
        .ok_or_else(|| format!("{spec}: not every event processed within {} s", a.timeout_secs))?;
    let cpu = tree_cpu_seconds(squall.pid());
    let m = Measured {
        spec: spec.clone(),
        events: a.load.events,
        to_first_s: (first_at - squall.spawned_at).as_secs_f64(),
        total_s: (done - squall.spawned_at).as_secs_f64(),
        cpu_to_first_s: cpu_at_first,
        cpu_s: cpu,
    };
    if let Some(expected) = &s.expected {
        let mut client = KeepAlive::new(&squall.addr);
        let got = expected.keys().filter_map(|user| {
            let (status, body) = client.get_body(&format!("/v1/users/{user}/attributes")).ok()?;
            if status != 200 {
                return None;
            }
            let served: UserAttributes = serde_json::from_slice(body).ok()?;
            Some((user.clone(), served.attributes))
        });
        report_check(spec, expected, &got.collect());
    }
    drop(squall);
    if let Some(dir) = ckpt {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(m)
}

fn run_flink(a: &Args, s: &Setup, spec: &RunSpec, tag: &str) -> Result<Measured, String> {
    let ckpt = spec.checkpoints.then(|| tmp(&format!("{tag}-ckpt")));
    let out = s.expected.as_ref().map(|_| tmp(&format!("{tag}-out")));
    let mut cmd = Command::new(s.flink_dir.join("run.sh"));
    cmd.args(["--brokers", &a.env.brokers, "--song-topic", &s.songs, "--ad-topic", &s.ads])
        .arg("--catalogue")
        .arg(&s.catalogue_json)
        .args(["--events", &a.load.events.to_string(), "--parallelism", &spec.workers.to_string(), "--group", tag])
        .args(["--fetch-max-wait-ms", &a.fetch_wait_ms.to_string()]);
    if let Some(dir) = &ckpt {
        cmd.arg("--checkpoint-dir").arg(dir);
        cmd.args(["--checkpoint-interval-ms", &a.checkpoint_interval_ms.to_string()]);
    }
    if let Some(dir) = &out {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        cmd.arg("--out").arg(dir);
    }
    // With --out the job must reach the end of its bounded input to write the users out.
    let marked = run_marked(
        cmd,
        "flink_first",
        "flink_done",
        Duration::from_secs(a.timeout_secs),
        out.is_none(),
        &tmp(&format!("{tag}.log")),
    )?;
    if let (Some(expected), Some(dir)) = (&s.expected, &out) {
        let mut got = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?.flatten() {
            let text = std::fs::read_to_string(entry.path()).map_err(|e| e.to_string())?;
            for line in text.lines() {
                let user: FlinkUser = serde_json::from_str(line).map_err(|e| format!("{line}: {e}"))?;
                got.insert(user.user_id, user.attributes);
            }
        }
        report_check(spec, expected, &got);
        let _ = std::fs::remove_dir_all(dir);
    }
    if let Some(dir) = ckpt {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(Measured::from_marked(spec.clone(), a.load.events, &marked))
}

/// A line of the Flink job's `--out` files.
#[derive(serde::Deserialize)]
struct FlinkUser {
    user_id: String,
    #[serde(flatten)]
    attributes: Attributes,
}

fn run_bytewax(a: &Args, s: &Setup, spec: &RunSpec, tag: &str) -> Result<Measured, String> {
    let mut cmd = Command::new(&s.bytewax);
    cmd.arg(spec.workers.to_string())
        .env("BROKERS", &a.env.brokers)
        .env("SONG_TOPIC", &s.songs)
        .env("AD_TOPIC", &s.ads)
        .env("CATALOGUE", &s.catalogue_json)
        .env("EVENTS", a.load.events.to_string())
        .env("FETCH_WAIT_MAX_MS", a.fetch_wait_ms.to_string());
    let marked = run_marked(
        cmd,
        "bytewax_first",
        "bytewax_done",
        Duration::from_secs(a.timeout_secs),
        false,
        &tmp(&format!("{tag}.log")),
    )?;
    Ok(Measured::from_marked(spec.clone(), a.load.events, &marked))
}

fn run_ceiling(a: &Args, s: &Setup, spec: &RunSpec) -> Measured {
    let c = bare_consume(&a.env.brokers, &[&s.songs, &s.ads], spec.workers, a.fetch_wait_ms);
    assert_eq!(c.messages, a.load.events, "the bare consumers read every event");
    Measured {
        spec: spec.clone(),
        events: c.messages,
        to_first_s: c.seconds_to_first,
        total_s: c.seconds,
        cpu_to_first_s: c.cpu_s_to_first,
        cpu_s: c.cpu_s,
    }
}

/// Prints how many of the expected users `got` has exactly right, and the first differences.
fn report_check(spec: &RunSpec, expected: &BTreeMap<String, Attributes>, got: &BTreeMap<String, Attributes>) {
    let mut wrong = Vec::new();
    for (user, want) in expected {
        match got.get(user) {
            None => wrong.push(format!("{user}: missing")),
            Some(have) => {
                if let Some(d) = oracle::difference(have, want) {
                    wrong.push(format!("{user}: {d}"));
                }
            }
        }
    }
    let extra = got.keys().filter(|u| !expected.contains_key(*u)).count();
    println!(
        "compare_check run={spec} users={} matching={} wrong={} extra_users={extra} ok={}",
        expected.len(),
        expected.len() - wrong.len(),
        wrong.len(),
        wrong.is_empty() && extra == 0,
    );
    for w in wrong.iter().take(5) {
        println!("compare_check_difference run={spec} {w}");
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Medians per configuration, in the order first run.
struct Summary {
    spec: RunSpec,
    rounds: usize,
    from_first: f64,
    from_first_range: (f64, f64),
    from_start: f64,
    to_first_s: f64,
    cpu_s: f64,
    cpu_per_m: f64,
    steady_cpu_per_m: f64,
}

fn summarise(results: &[Measured]) -> Vec<Summary> {
    let mut order: Vec<RunSpec> = Vec::new();
    for r in results {
        if !order.contains(&r.spec) {
            order.push(r.spec.clone());
        }
    }
    order
        .into_iter()
        .map(|spec| {
            let mine: Vec<&Measured> = results.iter().filter(|r| r.spec == spec).collect();
            let of = |f: &dyn Fn(&Measured) -> f64| median(mine.iter().map(|r| f(r)).collect());
            let rates: Vec<f64> = mine.iter().map(|r| r.rate_from_first()).collect();
            Summary {
                rounds: mine.len(),
                from_first: of(&Measured::rate_from_first),
                from_first_range: (
                    rates.iter().copied().fold(f64::INFINITY, f64::min),
                    rates.iter().copied().fold(0.0, f64::max),
                ),
                from_start: of(&Measured::rate_from_start),
                to_first_s: of(&|r| r.to_first_s),
                cpu_s: of(&|r| r.cpu_s),
                cpu_per_m: of(&Measured::cpu_per_million),
                steady_cpu_per_m: of(&Measured::steady_cpu_per_million),
                spec,
            }
        })
        .collect()
}

fn thousands(x: f64) -> String {
    let s = format!("{:.0}", x);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn print_table(summary: &[Summary]) {
    println!();
    println!(
        "| engine | workers / parallelism | checkpoints | events/s from first record | events/s from process start | start -> first record s | CPU-s | CPU-s per M events | CPU-s per M from first record |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for s in summary {
        let range = if s.rounds > 1 {
            format!(" ({}-{})", thousands(s.from_first_range.0), thousands(s.from_first_range.1))
        } else {
            String::new()
        };
        println!(
            "| {} | {} | {} | {}{range} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            s.spec.engine.name(),
            s.spec.workers,
            if s.spec.checkpoints { "on" } else { "off" },
            thousands(s.from_first),
            thousands(s.from_start),
            s.to_first_s,
            s.cpu_s,
            s.cpu_per_m,
            s.steady_cpu_per_m,
        );
    }
}

/// squall over each peer at the same workers and checkpoint mode (Bytewax: checkpoints off).
fn print_ratios(summary: &[Summary]) {
    println!();
    let find = |e: Engine, w: usize, c: bool| {
        summary.iter().find(|s| s.spec.engine == e && s.spec.workers == w && s.spec.checkpoints == c)
    };
    for sq in summary.iter().filter(|s| s.spec.engine == Engine::Squall) {
        for peer in [Engine::Flink, Engine::Bytewax] {
            let Some(p) = find(peer, sq.spec.workers, sq.spec.checkpoints) else { continue };
            println!(
                "compare_ratio squall={} peer={} events_per_sec_from_first={:.2} events_per_sec_from_start={:.2} less_cpu_per_event={:.2} less_cpu_per_event_from_first={:.2}",
                sq.spec,
                p.spec,
                sq.from_first / p.from_first,
                sq.from_start / p.from_start,
                p.cpu_per_m / sq.cpu_per_m,
                p.steady_cpu_per_m / sq.steady_cpu_per_m,
            );
        }
    }
}

fn latency(a: &Args, s: &Setup, pinned: bool) -> Result<(), String> {
    let name = format!("{}-lat-{}", s.run, if pinned { "pinned" } else { "unpinned" });
    let workers = if pinned { a.pinning.pinned_workers } else { a.unpinned_workers };
    let (max, l) = latency_run(&LatencyRun {
        bin_dir: &s.bins,
        name: &name,
        env: &a.env,
        users: a.load.users,
        catalogue: CATALOGUE,
        workers,
        extra: &squall_extra(a, None),
        pin: pinned.then_some((a.pinning.load_cpus.as_str(), a.pinning.squall_cpus.as_str())),
        load_share: a.load_share,
        live_secs: a.live_secs,
        latency_secs: a.latency_secs,
        restart: a.restart_devenv.then_some(&|| restart_devenv(a, s)),
    })?;
    println!(
        "compare_latency pinned={pinned} load_cpus={} squall_cpus={} workers={workers} max_events_per_sec={:.0} produced_per_sec={:.0} lag_at_end={:.0} caught_up={} load_share={} load_events_per_sec={:.0} probes={} p50_ms={:.1} p99_ms={:.1} max_ms={:.1} lag_at_end_of_probes={:.0} checkpoints=off epoch_s=1 load_average={:?}",
        if pinned { a.pinning.load_cpus.as_str() } else { "all" },
        if pinned { a.pinning.squall_cpus.as_str() } else { "all" },
        max.events_per_sec,
        max.produced_per_sec,
        max.lag_at_end,
        max.caught_up,
        a.load_share,
        l.load_events_per_sec,
        l.probes,
        l.p50_ms,
        l.p99_ms,
        l.max_ms,
        l.lag_at_end,
        load_average(),
    );
    Ok(())
}

/// `scripts/devenv.sh down` and `up` on the ports of `--brokers` and `--cql` (state in
/// `$SQUALL_DEVENV_DIR`, default `.devenv/bench`), then the catalogue again.
fn restart_devenv(a: &Args, s: &Setup) {
    let port = |addr: &str| {
        let (host, port) = addr.rsplit_once(':').expect("host:port");
        assert_eq!(host, "127.0.0.1", "--restart-devenv restarts the dev environment on 127.0.0.1 only");
        port.to_owned()
    };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let state = std::env::var_os("SQUALL_DEVENV_DIR").map_or_else(|| root.join(".devenv/bench"), PathBuf::from);
    for step in ["down", "up"] {
        let out = Command::new(root.join("scripts/devenv.sh"))
            .arg(step)
            .env("SQUALL_KAFKA_PORT", port(&a.env.brokers))
            .env("SQUALL_CQL_PORT", port(&a.env.cql))
            .env("SQUALL_DEVENV_DIR", &state)
            .output()
            .expect("run scripts/devenv.sh");
        assert!(out.status.success(), "devenv.sh {step}: {}", String::from_utf8_lossy(&out.stderr));
    }
    squall_gen(&s.bins, &["catalogue", "--cql", &a.env.cql]);
}

/// The catalogue of `squall-gen catalogue`'s defaults, which the peers read from a file.
const CATALOGUE: CatalogueGen = CatalogueGen { tracks: 100_000, ads: 2_000, seed: 7 };

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() {
    let a = Args::parse();
    if a.runs.iter().any(|r| r.engine == Engine::Before) && a.before_bin_dir.is_none() {
        eprintln!("compare: the `before` runs of --runs need --before-bin-dir <directory of an earlier squall build>");
        std::process::exit(2);
    }
    let bins = a.bins.dir();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let run = format!("compare{}", std::process::id());
    let (songs, ads) = (format!("{run}-songs"), format!("{run}-ads"));
    let catalogue_json = tmp(&format!("{run}-catalogue.json"));
    println!("compare_start load_average={:?} events={} users={}", load_average(), a.load.events, a.load.users);
    squall_gen(&bins, &["catalogue", "--cql", &a.env.cql]);
    write_catalogue_json(&catalogue_json, &CATALOGUE);
    let mut s = Setup {
        bins,
        run,
        songs,
        ads,
        catalogue_json,
        expected: None,
        flink_dir: root.join("peers/flink"),
        bytewax: root.join("bytewax/run.sh"),
    };

    if a.phases.iter().any(|p| p == "throughput") {
        if a.runs.iter().any(|r| r.engine == Engine::Flink) {
            let out = Command::new(s.flink_dir.join("build.sh")).output().expect("run benches/peers/flink/build.sh");
            assert!(out.status.success(), "flink build: {}", String::from_utf8_lossy(&out.stderr));
        }
        create_topics(&s.bins, &a.env.brokers, (&s.songs, &s.ads), 6);
        let expect_file = tmp(&format!("{}-expected.json", s.run));
        let (n, users) = (a.load.events.to_string(), a.load.users.to_string());
        let expect_path = expect_file.display().to_string();
        let expect: &[&str] = if a.check { &["--expect-file", &expect_path, "--expect-users", &users] } else { &[] };
        let t = Instant::now();
        produce_events(&s.bins, &a.env.brokers, (&s.songs, &s.ads), a.load.events, a.load.users, expect);
        println!("compare_produce events={n} users={users} seconds={:.2}", t.elapsed().as_secs_f64());
        if a.check {
            let text = std::fs::read_to_string(&expect_file).expect("expectations");
            let mut all: BTreeMap<String, BTreeMap<String, Attributes>> =
                serde_json::from_str(&text).expect("expectations JSON");
            // squall-gen keys the expectations by version number ("1"), not "v1".
            s.expected = Some(all.remove("1").expect("the expectations of version 1"));
            let _ = std::fs::remove_file(&expect_file);
        }

        let mut results = Vec::new();
        for round in 1..=a.rounds {
            for (i, spec) in a.runs.iter().enumerate() {
                let tag = format!("{}-r{round}-{i}-{}", s.run, spec.to_string().replace(':', "-"));
                let measured = match spec.engine {
                    Engine::Ceiling => Ok(run_ceiling(&a, &s, spec)),
                    Engine::Squall | Engine::Before => run_squall(&a, &s, spec, &tag),
                    Engine::Flink => run_flink(&a, &s, spec, &tag),
                    Engine::Bytewax => run_bytewax(&a, &s, spec, &tag),
                };
                match measured {
                    Ok(m) => {
                        m.print(round);
                        results.push(m);
                    }
                    Err(e) => println!("compare_failed run={spec} round={round} error={e:?}"),
                }
            }
        }
        let summary = summarise(&results);
        print_ratios(&summary);
        print_table(&summary);
        println!("\ncompare_end load_average={:?}", load_average());
    }
    for (phase, pinned) in [("latency-unpinned", false), ("latency-pinned", true)] {
        if a.phases.iter().any(|p| p == phase || p == "latency")
            && let Err(e) = latency(&a, &s, pinned)
        {
            println!("compare_latency pinned={pinned} failed={e:?}");
        }
    }
    let _ = std::fs::remove_file(&s.catalogue_json);
}
