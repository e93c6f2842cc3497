//! Backfill speed from a local-directory archive, against the engine harness on the same events in
//! the same run, and whether the two end in the same state:
//! `cargo run --release -p squall-benches --bin backfill -- --workers 2 --events 4000000`.
//! The engine's generated events (`engine::generate`: Zipf users and tracks, 1% resends) are
//! archived through the archive's writer, one song and one ad partition per worker; then the
//! personalization dataflow runs twice over them with a warm cache: fed from memory (the engine
//! harness), and from the archive through the source's backfill (no broker in the path: the
//! source is pointed at a closed port and never reads Kafka before the end). Every user's
//! attributes must be equal in both, as JSON, byte for byte.
//! Prints `backfill engine_events_per_s=.. backfill_events_per_s=.. ratio=.. users=.. equal=..`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use clap::Parser;
use squall_archive::{Archive, ArchiveBacklog, FileBuilder, RawRecord};
use squall_benches::engine::{EngineRun, generate, key_of, memory_catalogue, process_cpu_seconds, run_keeping_store};
use squall_enrichment::{EnrichConfig, Enricher, Symbols};
use squall_operators::backfill::Backfill;
use squall_operators::event::DecodeLimits;
use squall_operators::source::{Alignment, ConsumeKafka, Partition, SourceConfig, StartFrom};
use squall_operators::{Epoch, Event, EventKind, UserStore};
use squall_topologies::personalization::{self, Context};
use timely::dataflow::operators::Probe;

#[derive(Parser)]
struct Args {
    /// timely workers.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Events in total.
    #[arg(long, default_value_t = 4_000_000)]
    events: usize,
    /// Distinct users (Zipf).
    #[arg(long, default_value_t = 1_000_000)]
    users: u64,
    /// Records per archive file.
    #[arg(long, default_value_t = 250_000)]
    rows_per_file: usize,
    /// The source's epoch (`state.epoch`). The run ends when the last epoch closes, so up to one
    /// epoch of wall time is waiting for the clock, not work: short runs measure with a short epoch.
    #[arg(long, default_value_t = 1000)]
    epoch_ms: u64,
    /// The broker the source switches to once the archive is read (it reads nothing there: the
    /// topics are the archive's own). Without one, the source's wait for a closed port's metadata
    /// at the switch (2 s per topic) is part of the time.
    #[arg(long, default_value = "127.0.0.1:9")]
    brokers: String,
}

/// Archives worker `w`'s events as partition `w` of `songs` and of `ads`, in order.
fn write_archive(archive: &Archive, inputs: &[Vec<Event>], rows_per_file: usize, rt: &tokio::runtime::Runtime) {
    for (w, events) in inputs.iter().enumerate() {
        for (topic, kind) in [("songs", EventKind::Song), ("ads", EventKind::Ad)] {
            let mut offset = 0i64;
            let mut file = FileBuilder::new(topic, w as i32, kind, DecodeLimits::default(), 0);
            for e in events.iter().filter(|e| e.kind() == kind) {
                let value = e.to_json();
                let key = e.user_id().as_bytes();
                file.push(RawRecord { offset, timestamp: Some(e.ts()), key: Some(key), value: &value });
                offset += 1;
                if file.rows() >= rows_per_file {
                    let full = std::mem::replace(
                        &mut file,
                        FileBuilder::new(topic, w as i32, kind, DecodeLimits::default(), offset),
                    );
                    let encoded = full.finish().expect("encode").expect("rows");
                    rt.block_on(archive.put_file(&encoded)).expect("store");
                }
            }
            if let Some(encoded) = file.finish().expect("encode") {
                rt.block_on(archive.put_file(&encoded)).expect("store");
            }
        }
    }
}

/// Every user's attributes as JSON.
fn state(store: &UserStore, users: &[String]) -> BTreeMap<String, String> {
    users
        .iter()
        .filter_map(|u| store.attributes(u).map(|a| (u.clone(), serde_json::to_string(&a).expect("json"))))
        .collect()
}

/// The dataflow fed by the source's backfill from `backlog`; the store, events/s and CPU seconds.
fn backfill(
    r: &EngineRun,
    backlog: Arc<ArchiveBacklog>,
    total: u64,
    epoch: Duration,
    brokers: &str,
    rt: &tokio::runtime::Runtime,
) -> (Arc<UserStore>, f64, f64) {
    let symbols = Symbols::default();
    let enricher = Enricher::new(
        Arc::new(memory_catalogue(r.tracks)),
        symbols.clone(),
        EnrichConfig::default(),
        rt.handle().clone(),
    );
    let catalogue_keys: Vec<_> = generate(r).iter().flatten().map(key_of).collect();
    rt.block_on(async {
        for key in catalogue_keys {
            if enricher.cached(&key).is_none() {
                enricher.lookup(key).await;
            }
        }
    });
    let store = Arc::new(UserStore::new(squall_benches::fixtures::plan(r.version, &symbols), symbols, r.workers));
    let ctx = Context {
        enricher,
        store: Arc::clone(&store),
        pending: Arc::new(AtomicUsize::new(0)),
        dedup_horizon_ms: 24 * 3600 * 1000,
    };
    let partitions: Vec<(Partition, EventKind)> = (0..r.workers as i32)
        .flat_map(|p| {
            [
                (Partition { topic: "songs".into(), partition: p }, EventKind::Song),
                (Partition { topic: "ads".into(), partition: p }, EventKind::Ad),
            ]
        })
        .collect();
    let shutdown = Arc::new(AtomicBool::new(false));
    let config = SourceConfig {
        // The source reads Kafka only after the archive, and the run ends before anything is
        // read there.
        brokers: brokers.into(),
        group_id: "backfill-bench".into(),
        partitions,
        resume_at: BTreeMap::new(),
        start_from: StartFrom::Earliest,
        limits: DecodeLimits::default(),
        epoch_interval: epoch,
        max_batch: 4096,
        pending: Arc::clone(&ctx.pending),
        max_pending: 1 << 20,
        shutdown: Arc::clone(&shutdown),
        properties: Vec::new(),
        alignment: Arc::new(Alignment::new(12 * 3600 * 1000)),
        idle_after: Duration::from_secs(5),
        backfill: Some(Backfill { backlog, since_ms: None }),
        backfilled: Default::default(),
    };
    let cpu0 = process_cpu_seconds();
    let started = Instant::now();
    let done = Arc::clone(&store);
    timely::execute(timely::Config::process(r.workers), move |worker| {
        let probe = worker.dataflow::<Epoch, _, _>(|scope| {
            let source = scope.consume_kafka(&config, 0).expect("source");
            let (probe, _) = personalization::dataflow(source.events, source.progress, &ctx, None).probe();
            probe
        });
        while done.applied() + done.duplicates() < total {
            worker.step_or_park(Some(Duration::from_millis(1)));
        }
        shutdown.store(true, Relaxed);
        while !probe.done() {
            worker.step_or_park(Some(Duration::from_millis(1)));
        }
    })
    .expect("timely")
    .join()
    .into_iter()
    .for_each(|r| r.expect("worker"));
    let secs = started.elapsed().as_secs_f64();
    (store, total as f64 / secs, process_cpu_seconds() - cpu0)
}

fn main() {
    let a = Args::parse();
    let r = EngineRun { users: a.users, ..EngineRun::new(a.workers, a.events) };
    let inputs = Arc::new(generate(&r));
    let total: u64 = inputs.iter().map(|v| v.len() as u64).sum();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let dir = std::env::temp_dir().join(format!("squall-backfill-bench-{}", std::process::id()));
    let archive = Archive::open(dir.to_str().expect("utf-8")).expect("open the archive");
    write_archive(&archive, &inputs, a.rows_per_file, &rt);
    let partitions: Vec<(Partition, EventKind)> = (0..a.workers as i32)
        .flat_map(|p| {
            [
                (Partition { topic: "songs".into(), partition: p }, EventKind::Song),
                (Partition { topic: "ads".into(), partition: p }, EventKind::Ad),
            ]
        })
        .collect();
    let backlog = Arc::new(
        rt.block_on(ArchiveBacklog::list(archive, &partitions, rt.handle().clone())).expect("list the archive"),
    );

    let (engine, engine_store) = run_keeping_store(&r, Arc::clone(&inputs));
    let (store, backfill_rate, backfill_cpu) =
        backfill(&r, backlog, total, Duration::from_millis(a.epoch_ms.max(1)), &a.brokers, &rt);
    let users: Vec<String> = {
        let mut u: Vec<String> = inputs.iter().flatten().map(|e| e.user_id().to_owned()).collect();
        u.sort_unstable();
        u.dedup();
        u
    };
    let (a_state, b_state) = (state(&engine_store, &users), state(&store, &users));
    let differing =
        a_state.iter().filter(|(u, v)| b_state.get(*u) != Some(*v)).count() + b_state.len().abs_diff(a_state.len());
    for (u, v) in a_state.iter().filter(|(u, v)| b_state.get(*u) != Some(*v)).take(3) {
        eprintln!("differs: {u}\n  engine:   {v}\n  backfill: {}", b_state.get(u).map_or("(none)", String::as_str));
    }
    println!(
        "backfill workers={} events={total} engine_events_per_s={:.0} backfill_events_per_s={backfill_rate:.0} ratio={:.2} \
         engine_cpu_s={:.2} backfill_cpu_s={backfill_cpu:.2} users={} equal={} differing={differing}",
        a.workers,
        engine.events_per_sec,
        backfill_rate / engine.events_per_sec,
        engine.cpu_s,
        a_state.len(),
        differing == 0 && a_state.len() == b_state.len(),
    );
    let _ = std::fs::remove_dir_all(dir);
}
