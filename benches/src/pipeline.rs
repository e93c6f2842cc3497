//! The `pipeline` and `compare` harnesses' measurements of a running squall: the rate it keeps up
//! with under a producer in this process, and event-to-HTTP latency under a steady background load.
//! The helpers they are built from: [`crate::procs`], [`crate::kafka_load`], [`crate::http_load`],
//! [`crate::cpu`].

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::producer::Producer;
use squall::generate::{CatalogueGen, EventGen, EventGenConfig, Generated};
use squall_operators::event::SongCompletion;
use squall_operators::{Event, EventKind};

use crate::DevEnv;
use crate::cpu::Pinned;
use crate::http_load::{KeepAlive, quantile};
use crate::kafka_load::{create_topics, producer, send};
use crate::procs::Squall;

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as i64
}

/// A producer of generated events at a steady rate, for the latency and HTTP phases.
pub struct Load {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Load {
    /// Produces `config`'s events to `topics` at `rate` per second until stopped (none at a rate
    /// of 0 or less; as fast as it can at `f64::INFINITY`).
    pub fn start(brokers: &str, topics: (&str, &str), config: EventGenConfig, rate: f64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        if rate <= 0.0 || rate.is_nan() {
            return Load { stop, thread: None };
        }
        let (stopped, brokers) = (Arc::clone(&stop), brokers.to_owned());
        let (songs, ads) = (topics.0.to_owned(), topics.1.to_owned());
        let thread = std::thread::spawn(move || {
            // The background load's own latency is not measured (the probes have their own
            // producer, linger 0), so it batches like a production producer would: 20 ms, so that
            // its requests leave the load core to the probes (`benches/RESULTS.md`).
            let p = producer(&brokers, "20");
            let mut g = EventGen::new(config, 99);
            let started = Instant::now();
            let mut n = 0u64;
            while !stopped.load(Relaxed) {
                let due = Duration::from_secs_f64(n as f64 / rate);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait.min(Duration::from_millis(5)));
                    continue;
                }
                if let Generated::Event(e) = g.next_at(now_ms()) {
                    let topic = if e.kind() == EventKind::Song { &songs } else { &ads };
                    send(&p, topic, e.user_id(), &e.to_json());
                }
                n += 1;
            }
            let _ = p.flush(Duration::from_secs(10));
            n
        });
        Load { stop, thread: Some(thread) }
    }

    /// Stops producing; how many events were produced.
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Relaxed);
        self.thread.take().map_or(0, |t| t.join().unwrap_or(0))
    }
}

/// Latency probes: every `every`, produce one song completion for a fresh user and poll its
/// attributes over HTTP (every 0.5 ms, one keep-alive connection) until they show it. Returns the
/// latencies in microseconds.
pub fn probe_latency(brokers: &str, song_topic: &str, http: &str, every: Duration, total: Duration) -> Vec<u64> {
    let p = producer(brokers, "0");
    let started = Instant::now();
    let run = format!("lat{}", now_ms());
    let mut out = Vec::new();
    let mut i = 0u64;
    let mut client = KeepAlive::new(http);
    while started.elapsed() < total {
        let next = started + every * i as u32;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        i += 1;
        let user = format!("{run}-{i}");
        let e = Event::Song(SongCompletion {
            event_id: format!("{run}-e{i}").into(),
            user_id: user.as_str().into(),
            track_id: "t1".into(),
            ms_played: 100_000,
            ts: now_ms(),
        });
        let sent = Instant::now();
        // No flush: with linger 0 the record leaves at once, and flush() would wait for the
        // delivery report, which the producer's polling thread serves only every 100 ms.
        send(&p, song_topic, &user, &e.to_json());
        let path = format!("/v1/users/{user}/attributes");
        loop {
            if let Ok(200) = client.get(&path) {
                out.push(sent.elapsed().as_micros() as u64);
                break;
            }
            if sent.elapsed() > Duration::from_secs(30) {
                eprintln!("probe {user} not visible after 30 s");
                break;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }
    out
}

/// The rate squall applies events at while a producer in this process produces as fast as it can
/// to `topics`, over `secs` seconds after a 2 s warm-up: the most the configuration sustains with
/// its load generator, broker and squall sharing the cores. Waits until squall has caught up.
#[derive(Clone, Copy, Debug)]
pub struct LiveMax {
    /// squall's rate over the window.
    pub events_per_sec: f64,
    /// Events produced in all.
    pub produced: u64,
    /// The producer's rate.
    pub produced_per_sec: f64,
    /// Events produced but not yet applied at the end of the window.
    pub lag_at_end: f64,
    /// Whether squall caught up afterwards (within 10 minutes).
    pub caught_up: bool,
}

/// See [`LiveMax`].
pub fn live_max(squall: &Squall, brokers: &str, topics: (&str, &str), config: EventGenConfig, secs: u64) -> LiveMax {
    let before = squall.processed();
    let started = Instant::now();
    let load = Load::start(brokers, topics, config, f64::INFINITY);
    std::thread::sleep(Duration::from_secs(2));
    let (p1, t1) = (squall.processed(), Instant::now());
    std::thread::sleep(Duration::from_secs(secs));
    let (p2, t2) = (squall.processed(), Instant::now());
    let produced = load.stop();
    let produced_per_sec = produced as f64 / started.elapsed().as_secs_f64();
    let caught_up = squall.wait_for(before + produced as f64, Duration::from_secs(600)).is_some();
    LiveMax {
        events_per_sec: (p2 - p1) / (t2 - t1).as_secs_f64(),
        produced,
        produced_per_sec,
        lag_at_end: (before + produced as f64 - p2).max(0.0),
        caught_up,
    }
}

/// Event -> visible-over-HTTP latency under a steady background load.
#[derive(Clone, Copy, Debug)]
pub struct Latency {
    /// The background load's target rate.
    pub load_events_per_sec: f64,
    /// Background events produced.
    pub load_events: u64,
    /// Probes that became visible.
    pub probes: usize,
    /// Median, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile, milliseconds.
    pub p99_ms: f64,
    /// Largest, milliseconds.
    pub max_ms: f64,
    /// Events produced (background and probes) but not yet processed when the probing ended:
    /// more than a second's worth means squall was falling behind.
    pub lag_at_end: f64,
}

/// Produces `config`'s events at `rate` to `topics` and, after 2 s, probes for `secs` seconds
/// (one probe every 20 ms, see [`probe_latency`]).
pub fn latency_under_load(
    squall: &Squall,
    brokers: &str,
    topics: (&str, &str),
    config: EventGenConfig,
    rate: f64,
    secs: u64,
) -> Latency {
    let before = squall.processed();
    let load = Load::start(brokers, topics, config, rate);
    std::thread::sleep(Duration::from_secs(2));
    let mut lat = probe_latency(brokers, topics.0, &squall.addr, Duration::from_millis(20), Duration::from_secs(secs));
    let processed = squall.processed();
    let load_events = load.stop();
    let lag_at_end = (before + load_events as f64 + lat.len() as f64 - processed).max(0.0);
    lat.sort_unstable();
    Latency {
        load_events_per_sec: rate,
        load_events,
        probes: lat.len(),
        p50_ms: quantile(&lat, 0.5) as f64 / 1000.0,
        p99_ms: quantile(&lat, 0.99) as f64 / 1000.0,
        max_ms: lat.last().copied().unwrap_or(0) as f64 / 1000.0,
        lag_at_end,
    }
}

/// A squall on fresh topics, pinned or not, for [`latency_run`].
pub struct LatencyRun<'a> {
    /// Where `squall` and `squall-gen` are.
    pub bin_dir: &'a Path,
    /// Topology name and topic prefix; unique per run.
    pub name: &'a str,
    /// The dev broker and CQL dev server (holding `catalogue`).
    pub env: &'a DevEnv,
    /// Users of the generated load.
    pub users: u64,
    /// The catalogue the load refers to.
    pub catalogue: CatalogueGen,
    /// squall workers.
    pub workers: usize,
    /// Extra TOML for the topology (see [`Squall::start`]).
    pub extra: &'a str,
    /// `(cpus of the broker, the CQL dev server and this process, cpus of squall)` as `taskset -c`
    /// lists; `None`: nothing pinned.
    pub pin: Option<(&'a str, &'a str)>,
    /// The background load as a share of [`live_max`].
    pub load_share: f64,
    /// Window of [`live_max`].
    pub live_secs: u64,
    /// Probing time of [`latency_under_load`].
    pub latency_secs: u64,
    /// Run between the maximum and the latency measurement (see [`latency_run`]).
    pub restart: Option<&'a dyn Fn()>,
}

/// Starts squall on two fresh topics (pinned as `r.pin` says, the broker, CQL dev server and this
/// process first), measures the rate it keeps up with ([`live_max`]), then the latency with a
/// background load at `r.load_share` of that ([`latency_under_load`]). Unpins before returning.
///
/// With `r.restart`, the maximum is measured with one squall and the latency with another, and
/// `restart` runs between them: it should give a fresh broker (and CQL server with the catalogue),
/// so that the latency is not measured on a broker grown by the millions of events of the maximum.
pub fn latency_run(r: &LatencyRun) -> Result<(LiveMax, Latency), String> {
    let config = |what: &str| EventGenConfig {
        users: r.users,
        catalogue: r.catalogue,
        run_id: format!("{}-{what}", r.name),
        ..Default::default()
    };
    // What one squall of the run holds: its pins (dropped after it), itself, its topics.
    type Started = (Option<Pinned>, Squall, (String, String));
    let start = |part: &str| -> Result<Started, String> {
        let name = format!("{}{part}", r.name);
        let topics = (format!("{name}-songs"), format!("{name}-ads"));
        create_topics(r.bin_dir, &r.env.brokers, (&topics.0, &topics.1), 6);
        // Pinned first, so that every thread squall and the load generator start is placed from the beginning.
        let pins = r.pin.map(|(load, _)| Pinned::new(r.env, load)).transpose()?;
        let squall =
            Squall::start_on(r.bin_dir, &name, r.env, (&topics.0, &topics.1), r.workers, r.extra, r.pin.map(|p| p.1));
        Ok((pins, squall, topics))
    };
    let (mut pins, mut squall, mut topics) = start("")?;
    let max = live_max(&squall, &r.env.brokers, (&topics.0, &topics.1), config("max"), r.live_secs);
    if let Some(restart) = r.restart {
        drop(squall);
        drop(pins);
        restart();
        (pins, squall, topics) = start("-lat")?;
    }
    let rate = max.events_per_sec * r.load_share;
    let latency =
        latency_under_load(&squall, &r.env.brokers, (&topics.0, &topics.1), config("load"), rate, r.latency_secs);
    drop(squall);
    drop(pins);
    Ok((max, latency))
}
