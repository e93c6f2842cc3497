//! Oracle test: seeded random events through the real dataflow (2 timely workers, asynchronous
//! enrichment), compared user by user, field by field, with `oracle::expected`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use squall_enrichment::{AdRow, EnrichConfig, Enricher, MemoryCatalogue, Symbols, TrackRow};
use squall_operators::event::{AdImpression, SongCompletion};
use squall_operators::watermark::ReportProgress;
use squall_operators::{Declaration, Event, Plan, UserStore};
use squall_topologies::oracle::{self, Catalogue};
use squall_topologies::personalization::{self, Context};
use timely::dataflow::operators::{Input, Probe};

const T0: i64 = 1_763_750_000_000;

fn catalogue(rng: &mut StdRng) -> (MemoryCatalogue, Catalogue) {
    let genres = ["rock", "jazz", "pop", "blues", "metal"];
    let mut mem = MemoryCatalogue::default();
    let mut oracle = Catalogue::default();
    let (mut tracks, mut ads) = (HashMap::new(), HashMap::new());
    // t0..t39 exist (a few with a null genre); t40..t49 are unknown to the store.
    for i in 0..40 {
        let genre = (i % 13 != 5).then(|| genres[rng.random_range(0..genres.len())].to_owned());
        // A few with no artist or length; lengths vary.
        let artist_id = (i % 11 != 3).then(|| format!("ar{}", i % 17));
        let duration_ms = (i % 7 != 2).then(|| rng.random_range(60_000..400_000));
        let row = TrackRow { genre, artist_id, duration_ms };
        oracle.tracks.insert(format!("t{i}"), row.clone());
        tracks.insert(format!("t{i}"), row);
    }
    for i in 0..8 {
        let category = Some(["cars", "food", "travel"][i % 3].to_owned());
        let row = AdRow { advertiser_id: Some(format!("adv{i}")), category };
        oracle.ads.insert(format!("a{i}"), row.clone());
        ads.insert(format!("a{i}"), row);
    }
    mem.tracks = Arc::new(tracks);
    mem.ads = Arc::new(ads);
    (mem, oracle)
}

fn events(rng: &mut StdRng, n: usize) -> Vec<Event> {
    let mut out: Vec<Event> = Vec::with_capacity(n);
    for i in 0..n {
        // Resend an earlier event now and then, exactly as a client would.
        if i > 0 && rng.random_bool(0.05) {
            let again = out[rng.random_range(0..out.len())].clone();
            out.push(again);
            continue;
        }
        let user = format!("u{}", rng.random_range(0..60));
        // Event times within a week, out of order.
        let ts = T0 + rng.random_range(0..7 * 24 * 3600 * 1000);
        out.push(if rng.random_bool(0.7) {
            Event::Song(SongCompletion {
                event_id: format!("s{i}").into(),
                user_id: user.into(),
                track_id: format!("t{}", rng.random_range(0..50)).into(),
                ms_played: rng.random_range(0..300_000),
                ts,
            })
        } else {
            Event::Ad(AdImpression {
                event_id: format!("s{i}").into(),
                user_id: user.into(),
                ad_id: format!("a{}", rng.random_range(0..10)).into(),
                ts,
            })
        });
    }
    out
}

/// Version `version` of the topology file `file` (in `topologies/`).
fn declaration(file: &str, version: u32) -> Arc<Declaration> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    let spec = squall_topologies::TopologySpec::load(&path).unwrap().with_version(version).unwrap();
    spec.attributes
}

fn run(declaration: &Declaration, seed: u64, workers: usize, n: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let (mem, oracle_catalogue) = catalogue(&mut rng);
    let input = Arc::new(events(&mut rng, n));
    let expected = oracle::expected(declaration, input.iter(), &oracle_catalogue);

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let symbols = Symbols::default();
    // A tiny cache with a short TTL, so that the asynchronous miss path is taken over and over.
    let config = EnrichConfig { cache_capacity: 8, cache_ttl: Duration::from_millis(2), ..Default::default() };
    let enricher = Enricher::new(Arc::new(mem), symbols.clone(), config, runtime.handle().clone());
    let plan = Arc::new(Plan::compile(declaration, &symbols));
    let store = Arc::new(UserStore::new(plan, symbols, workers));
    let ctx = Context {
        enricher: enricher.clone(),
        store: Arc::clone(&store),
        pending: Arc::new(AtomicUsize::new(0)),
        // The events span a week and resend any earlier one: every resend is within the horizon.
        dedup_horizon_ms: 8 * 24 * 3600 * 1000,
    };
    let pending = Arc::clone(&ctx.pending);

    timely::execute(timely::Config::process(workers), move |worker| {
        let (mut handle, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (handle, events) = scope.new_input::<Vec<Event>>();
            let progress = events.report_progress();
            let (probe, _) = personalization::dataflow(events, progress, &ctx, None).probe();
            (handle, probe)
        });
        // Each worker feeds a share of the input, over several epochs.
        let peers = worker.peers();
        for (i, chunk) in input.chunks(97).enumerate() {
            handle.advance_to(i as u64 / 3);
            for e in chunk.iter().skip(worker.index()).step_by(peers) {
                handle.send(e.clone());
            }
            worker.step();
        }
        drop(handle);
        while !probe.done() {
            worker.step_or_park(Some(Duration::from_millis(5)));
        }
    })
    .unwrap()
    .join()
    .into_iter()
    .for_each(|r| r.unwrap());

    assert_eq!(pending.load(Ordering::Relaxed), 0, "every event received was applied");
    assert!(enricher.stats().misses.load(Ordering::Relaxed) > 0, "the asynchronous path was exercised");
    assert_eq!(store.users(), expected.len(), "users");
    for (user, want) in &expected {
        let got = store.attributes(user).unwrap_or_else(|| panic!("{user} missing"));
        if let Some(diff) = oracle::difference(&got, want) {
            panic!("seed {seed}, {user}: {diff}");
        }
    }
}

#[test]
fn v1_equals_the_oracle_on_seeded_random_events() {
    let v1 = declaration("personalization.toml", 1);
    for seed in 0..4 {
        run(&v1, seed, 2, 3000);
    }
}

#[test]
fn v2_equals_the_oracle_on_seeded_random_events() {
    let v2 = declaration("personalization.toml", 2);
    for seed in 10..14 {
        run(&v2, seed, 2, 3000);
    }
}

#[test]
fn a_windowed_declaration_equals_the_oracle() {
    let v3 = declaration("tests/windowed.toml", 3);
    for seed in 20..24 {
        run(&v3, seed, 2, 3000);
    }
}

#[test]
fn one_and_three_workers_agree_with_the_oracle() {
    run(&declaration("personalization.toml", 2), 99, 1, 2000);
    run(&declaration("personalization.toml", 1), 98, 3, 2000);
    run(&declaration("tests/windowed.toml", 3), 97, 3, 2000);
}
