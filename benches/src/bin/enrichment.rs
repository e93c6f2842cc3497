//! Enrichment against the CQL store with a cold cache: the dataflow's asynchronous path against a
//! sequential one-lookup-at-a-time baseline, on the same events in the same run:
//! `cargo run --release -p squall-benches --bin enrichment -- --cql 127.0.0.1:9042`.
//! Needs the CQL dev server with the generated catalogue (`squall-gen catalogue --cql ..`).
//! Prints `enrichment_sequential ..`, `enrichment_async ..` (with the cache hit ratio) and `enrichment_ratio ..`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::BoxStream;

use clap::Parser;
use squall_benches::engine::{EngineRun, Source, generate, key_of, run_on};
use squall_enrichment::{AdRow, Catalogue, CatalogueError, CqlCatalogue, EnrichConfig, Enricher, Symbols, TrackRow};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9042")]
    cql: String,
    #[arg(long, default_value = "squall")]
    keyspace: String,
    /// Events (Zipf over 1M users and 100k tracks).
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Added to every store request (a network round trip to a remote store; 0: none).
    #[arg(long, default_value_t = 0.0)]
    added_latency_ms: f64,
}

/// A catalogue whose answers arrive `delay` later, as from a store across a network.
struct Delayed {
    inner: Arc<dyn Catalogue>,
    delay: Duration,
}

impl Catalogue for Delayed {
    fn track(&self, id: &str) -> BoxFuture<'static, Result<Option<TrackRow>, CatalogueError>> {
        let (f, d) = (self.inner.track(id), self.delay);
        Box::pin(async move {
            tokio::time::sleep(d).await;
            f.await
        })
    }
    fn ad(&self, id: &str) -> BoxFuture<'static, Result<Option<AdRow>, CatalogueError>> {
        let (f, d) = (self.inner.ad(id), self.delay);
        Box::pin(async move {
            tokio::time::sleep(d).await;
            f.await
        })
    }
    // The harness measures lookups with a cold cache: it never preloads.
    fn scan_tracks(&self) -> BoxStream<'static, Result<(String, TrackRow), CatalogueError>> {
        self.inner.scan_tracks()
    }
    fn scan_ads(&self) -> BoxStream<'static, Result<(String, AdRow), CatalogueError>> {
        self.inner.scan_ads()
    }
}

fn main() {
    let a = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let mut catalogue: Arc<dyn Catalogue> =
        Arc::new(runtime.block_on(CqlCatalogue::connect(&a.cql, &a.keyspace)).expect("connect to the CQL store"));
    if a.added_latency_ms > 0.0 {
        catalogue = Arc::new(Delayed { inner: catalogue, delay: Duration::from_secs_f64(a.added_latency_ms / 1000.0) });
    }
    let base = EngineRun::new(a.workers, a.events);
    let inputs = Arc::new(generate(&base));
    let n: usize = inputs.iter().map(Vec::len).sum();

    // Baseline: one event after another, each miss awaited before the next event.
    let config = EnrichConfig { max_in_flight: 1, ..Default::default() };
    let seq = Enricher::new(Arc::clone(&catalogue), Symbols::default(), config, runtime.handle().clone());
    let started = Instant::now();
    runtime.block_on(async {
        for e in inputs.iter().flatten() {
            std::hint::black_box(seq.lookup(key_of(e)).await);
        }
    });
    let seq_s = started.elapsed().as_secs_f64();
    let s = seq.stats();
    let (hits, misses) =
        (s.hits.load(std::sync::atomic::Ordering::Relaxed), s.misses.load(std::sync::atomic::Ordering::Relaxed));
    println!(
        "enrichment_sequential added_latency_ms={} events={n} seconds={seq_s:.2} events_per_sec={:.0} hits={hits} misses={misses} hit_ratio={:.4}",
        a.added_latency_ms,
        n as f64 / seq_s,
        hits as f64 / (hits + misses) as f64
    );

    // The dataflow: cold cache, lookups in flight up to the default bound, workers never wait.
    let r =
        run_on(&EngineRun { source: Source::Cold(catalogue, EnrichConfig::default()), ..base }, Arc::clone(&inputs));
    assert_eq!(r.processed, n as u64, "every event enriched and applied");
    println!(
        "enrichment_async workers={} events={n} seconds={:.2} events_per_sec={:.0} hits={} misses={} store_requests={} hit_ratio={:.4}",
        a.workers,
        r.elapsed.as_secs_f64(),
        r.events_per_sec,
        r.hits,
        r.misses,
        r.requests,
        r.hits as f64 / (r.hits + r.misses) as f64
    );
    println!("enrichment_ratio async_over_sequential={:.2}", r.events_per_sec / (n as f64 / seq_s));
}
