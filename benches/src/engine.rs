//! The engine harness: generated events straight into the dataflow (no broker), enrichment from a
//! warm in-memory cache or a cold cache over any [`Catalogue`] (the CQL store for `enrichment`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use squall::generate::{CatalogueGen, EventGen, EventGenConfig, Generated};
use squall_enrichment::{Catalogue, EnrichConfig, Enricher, Key, MemoryCatalogue, Symbols};
use squall_operators::watermark::ReportProgress;
use squall_operators::{EnrichWith, Event, UserStore};
use squall_topologies::personalization::{self, Context};
use timely::dataflow::operators::{Input, Probe};

use crate::differential;

/// Which implementation of the v1 keyed aggregation runs behind enrichment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aggregation {
    /// squall's operators: dedup + per-user state in the worker's `DashMap` shard (what ships).
    Timely,
    /// differential-dataflow 0.26: `distinct` for dedup, `count`/`reduce` for the counts and top genres.
    Differential,
}

impl Aggregation {
    /// The name printed in result lines.
    pub fn name(self) -> &'static str {
        match self {
            Aggregation::Timely => "timely",
            Aggregation::Differential => "differential",
        }
    }
}

/// Where enrichment answers come from.
#[derive(Clone)]
pub enum Source {
    /// The generated catalogue in memory, every id cached before the clock starts.
    Warm,
    /// A catalogue behind an empty cache: every first use of an id is a lookup.
    Cold(Arc<dyn Catalogue>, EnrichConfig),
}

/// What to run.
#[derive(Clone)]
pub struct EngineRun {
    /// timely workers.
    pub workers: usize,
    /// Events in total.
    pub events: usize,
    /// Distinct users.
    pub users: u64,
    /// Catalogue tracks.
    pub tracks: u64,
    /// Events per input batch (one epoch per batch).
    pub batch: usize,
    /// The aggregation behind enrichment.
    pub aggregation: Aggregation,
    /// Where enrichment answers come from.
    pub source: Source,
    /// Which version of `topologies/personalization.toml` the timely aggregation keeps.
    pub version: u32,
}

impl EngineRun {
    /// The defaults of the workload: 1M users, 100k tracks, Zipf skew, warm cache.
    pub fn new(workers: usize, events: usize) -> Self {
        EngineRun {
            workers,
            events,
            users: 1_000_000,
            tracks: 100_000,
            batch: 10_000,
            aggregation: Aggregation::Timely,
            source: Source::Warm,
            version: 1,
        }
    }
}

/// What was measured.
#[derive(Clone, Debug)]
pub struct EngineResult {
    /// Events fed in (what the generator produced).
    pub generated: usize,
    /// Events that left the aggregation's input, counted by the aggregation (resends included).
    pub processed: u64,
    /// Wall time from the first event in to the last event applied.
    pub elapsed: Duration,
    /// Events per second.
    pub events_per_sec: f64,
    /// Process CPU seconds (all threads) during the timed part.
    pub cpu_s: f64,
    /// Users with state at the end (timely aggregation only).
    pub users: usize,
    /// Events applied (resends excluded; timely aggregation only).
    pub applied: u64,
    /// Cache hits and misses counted by the enrichment operator.
    pub hits: u64,
    /// See `hits`.
    pub misses: u64,
    /// Requests sent to the store.
    pub requests: u64,
}

/// The events every worker feeds, generated before the clock starts: worker `w`'s share is the
/// stream of seed `w + 1`, so a run with the same worker count sees the same events.
pub fn generate(r: &EngineRun) -> Vec<Vec<Event>> {
    let catalogue = CatalogueGen { tracks: r.tracks, ads: 2_000, seed: 7 };
    let config = EventGenConfig { users: r.users, catalogue, duplicate_share: 0.01, ..Default::default() };
    let per_worker = r.events / r.workers.max(1);
    (0..r.workers)
        .map(|w| {
            // Ids unique across the workers' streams: with one run id, two workers' events of a
            // user could share an id and count as a resend of each other in either order.
            let mut g = EventGen::new(EventGenConfig { run_id: format!("w{w}"), ..config.clone() }, w as u64 + 1);
            (0..per_worker)
                .filter_map(|i| match g.next_at(1_763_750_000_000 + i as i64) {
                    Generated::Event(e) => Some(e),
                    Generated::Malformed(..) => None,
                })
                .collect()
        })
        .collect()
}

/// The generated catalogue in memory.
pub fn memory_catalogue(tracks: u64) -> MemoryCatalogue {
    let catalogue = CatalogueGen { tracks, ads: 2_000, seed: 7 };
    MemoryCatalogue {
        tracks: Arc::new((0..catalogue.tracks).map(|i| catalogue.track(i)).collect::<HashMap<_, _>>()),
        ads: Arc::new((0..catalogue.ads).map(|i| catalogue.ad(i)).collect::<HashMap<_, _>>()),
    }
}

/// The catalogue key an event needs.
pub fn key_of(e: &Event) -> Key {
    match e {
        Event::Song(s) => Key::Track(s.track_id.clone()),
        Event::Ad(a) => Key::Ad(a.ad_id.clone()),
    }
}

/// Process CPU time (user + system, all threads), from `/proc/self/stat`; 0 where unavailable.
pub fn process_cpu_seconds() -> f64 {
    cpu_seconds_of("self")
}

/// CPU time (user + system, all threads, exited ones included) of process `pid` (a number or
/// `self`), from `/proc/<pid>/stat`; 0 where unavailable.
pub fn cpu_seconds_of(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else { return 0.0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    // Linux reports in USER_HZ, which is 100 on every mainstream configuration.
    (ticks(11) + ticks(12)) / 100.0
}

/// Runs the personalization dataflow (or its differential twin) over pre-generated events and times it.
pub fn run(r: &EngineRun) -> EngineResult {
    run_on(r, Arc::new(generate(r)))
}

/// As [`run`], over events generated by [`generate`] (so several runs can share them).
pub fn run_on(r: &EngineRun, inputs: Arc<Vec<Vec<Event>>>) -> EngineResult {
    run_keeping_store(r, inputs).0
}

/// As [`run_on`], and the store the timely aggregation kept (empty for the differential one).
pub fn run_keeping_store(r: &EngineRun, inputs: Arc<Vec<Vec<Event>>>) -> (EngineResult, Arc<UserStore>) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let symbols = Symbols::default();
    let (catalogue, config): (Arc<dyn Catalogue>, EnrichConfig) = match &r.source {
        Source::Warm => (Arc::new(memory_catalogue(r.tracks)), EnrichConfig::default()),
        Source::Cold(c, config) => (Arc::clone(c), config.clone()),
    };
    let enricher = Enricher::new(catalogue, symbols.clone(), config, runtime.handle().clone());
    if matches!(r.source, Source::Warm) {
        runtime.block_on(async {
            for e in inputs.iter().flatten() {
                let key = key_of(e);
                if enricher.cached(&key).is_none() {
                    enricher.lookup(key).await;
                }
            }
        });
        enricher.stats().hits.store(0, Relaxed);
        enricher.stats().misses.store(0, Relaxed);
        enricher.stats().requests.store(0, Relaxed);
    }
    let plan = crate::fixtures::plan(r.version, &symbols);
    let store = Arc::new(UserStore::new(plan, symbols, r.workers));
    let ctx = Context {
        enricher: enricher.clone(),
        store: Arc::clone(&store),
        pending: Arc::new(AtomicUsize::new(0)),
        dedup_horizon_ms: 24 * 3600 * 1000,
    };
    let processed = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&processed);
    let (batch, aggregation) = (r.batch.max(1), r.aggregation);
    let generated: usize = inputs.iter().map(Vec::len).sum();
    let cpu0 = process_cpu_seconds();
    let started = Instant::now();
    timely::execute(timely::Config::process(r.workers), move |worker| {
        let counted = Arc::clone(&counted);
        let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (input, events) = scope.new_input::<Vec<Event>>();
            let probe = match aggregation {
                Aggregation::Timely => {
                    let progress = events.report_progress();
                    let (probe, _) = personalization::dataflow(events, progress, &ctx, None).probe();
                    probe
                }
                Aggregation::Differential => {
                    let activities = events.enrich_with(&ctx.enricher, Arc::clone(&ctx.pending));
                    differential::v1(activities, counted)
                }
            };
            (input, probe)
        });
        let mine = &inputs[worker.index()];
        for (epoch, chunk) in mine.chunks(batch).enumerate() {
            input.advance_to(epoch as u64);
            for e in chunk {
                input.send(e.clone());
            }
            // Keep at most a few epochs in flight; park (not spin) while the peer catches up.
            while probe.less_than(&(epoch as u64).saturating_sub(2)) {
                worker.step_or_park(Some(Duration::from_millis(1)));
            }
        }
        drop(input);
        while !probe.done() {
            worker.step_or_park(Some(Duration::from_millis(1)));
        }
    })
    .expect("timely")
    .join()
    .into_iter()
    .for_each(|r| r.expect("worker"));
    let elapsed = started.elapsed();
    let cpu_s = process_cpu_seconds() - cpu0;
    let stats = enricher.stats();
    let processed = match aggregation {
        Aggregation::Timely => store.applied() + store.duplicates(),
        Aggregation::Differential => processed.load(Relaxed),
    };
    let result = EngineResult {
        generated,
        processed,
        elapsed,
        events_per_sec: generated as f64 / elapsed.as_secs_f64(),
        cpu_s,
        users: store.users(),
        applied: store.applied(),
        hits: stats.hits.load(Relaxed),
        misses: stats.misses.load(Relaxed),
        requests: stats.requests.load(Relaxed),
    };
    (result, store)
}
