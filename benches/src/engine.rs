//! The engine harness: generated events straight into the dataflow (no broker), enrichment from a warm cache.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use squall::generate::{CatalogueGen, EventGen, EventGenConfig, Generated};
use squall_enrichment::{EnrichConfig, Enricher, Key, MemoryCatalogue, Symbols};
use squall_operators::{AttributeSet, Event, UserStore};
use squall_topologies::personalization::{self, Context};
use timely::dataflow::operators::{Input, Probe};

/// What to run.
#[derive(Clone, Debug)]
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
}

/// What was measured.
#[derive(Clone, Debug)]
pub struct EngineResult {
    /// Wall time from the first event in to the last event applied.
    pub elapsed: Duration,
    /// Events per second.
    pub events_per_sec: f64,
    /// Users with state at the end.
    pub users: usize,
    /// Events applied (resends excluded).
    pub applied: u64,
}

/// Runs the personalization dataflow over generated events and times it.
pub fn run(r: &EngineRun) -> EngineResult {
    let catalogue = CatalogueGen { tracks: r.tracks, ads: 2_000, seed: 7 };
    let config = EventGenConfig { users: r.users, catalogue, duplicate_share: 0.01, ..Default::default() };
    // Pre-generate each worker's share so generation is not timed.
    let per_worker = r.events / r.workers;
    let inputs: Arc<Vec<Vec<Event>>> = Arc::new(
        (0..r.workers)
            .map(|w| {
                let mut g = EventGen::new(config.clone(), w as u64 + 1);
                (0..per_worker)
                    .filter_map(|i| match g.next_at(1_763_750_000_000 + i as i64) {
                        Generated::Event(e) => Some(e),
                        Generated::Malformed(..) => None,
                    })
                    .collect()
            })
            .collect(),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let mem = MemoryCatalogue {
        tracks: Arc::new((0..catalogue.tracks).map(|i| catalogue.track(i)).collect::<HashMap<_, _>>()),
        ads: Arc::new((0..catalogue.ads).map(|i| catalogue.ad(i)).collect::<HashMap<_, _>>()),
    };
    let symbols = Symbols::default();
    let enricher = Enricher::new(Arc::new(mem), symbols.clone(), EnrichConfig::default(), runtime.handle().clone());
    // Warm the cache: every id the events use.
    runtime.block_on(async {
        for e in inputs.iter().flatten() {
            let key = match e {
                Event::Song(s) => Key::Track(s.track_id.clone()),
                Event::Ad(a) => Key::Ad(a.ad_id.clone()),
            };
            if enricher.cached(&key).is_none() {
                enricher.lookup(key).await;
            }
        }
    });
    let store = Arc::new(UserStore::new(AttributeSet::PersonalizationV1, symbols, r.workers));
    let ctx = Context {
        enricher,
        store: Arc::clone(&store),
        pending: Arc::new(AtomicUsize::new(0)),
        dedup_horizon_ms: 24 * 3600 * 1000,
    };
    let batch = r.batch.max(1);
    let started = Instant::now();
    timely::execute(timely::Config::process(r.workers), move |worker| {
        let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (input, events) = scope.new_input::<Vec<Event>>();
            let (probe, _) = personalization::dataflow(events, &ctx, None).probe();
            (input, probe)
        });
        let mine = &inputs[worker.index()];
        for (epoch, chunk) in mine.chunks(batch).enumerate() {
            input.advance_to(epoch as u64);
            for e in chunk {
                input.send(e.clone());
            }
            // Keep at most a few epochs in flight.
            while probe.less_than(&(epoch as u64).saturating_sub(2)) {
                worker.step();
            }
        }
        drop(input);
        while !probe.done() {
            worker.step();
        }
    })
    .expect("timely")
    .join();
    let elapsed = started.elapsed();
    EngineResult {
        elapsed,
        events_per_sec: (per_worker * r.workers) as f64 / elapsed.as_secs_f64(),
        users: store.users(),
        applied: store.applied(),
    }
}
