//! Operator micro-benchmarks: decoding, dedup, applying an event to user state, and the two costs
//! the engine profile pointed at (a shared-cache get, hashing user ids).
//! Run: `cargo bench -p squall-benches --bench operators`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hash::BuildHasher;

use squall_enrichment::{EnrichConfig, Enricher, Key, Symbols};
use squall_operators::UserState;
use squall_operators::dedup::{Dedup, dedup_key};
use squall_operators::event::{DecodeLimits, EventKind, decode};

fn operators(c: &mut Criterion) {
    let payload =
        br#"{"event_id":"r1-123456","user_id":"u48213","track_id":"t9121","ms_played":183000,"ts":1763750000123}"#;
    let limits = DecodeLimits::default();
    let mut g = c.benchmark_group("operators");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode_song", |b| {
        b.iter(|| decode(EventKind::Song, std::hint::black_box(payload), &limits).unwrap())
    });
    let mut dedup = Dedup::new(24 * 3600 * 1000);
    let mut i = 0u64;
    g.bench_function("dedup_first_time", |b| {
        b.iter(|| {
            i += 1;
            dedup.first_time(dedup_key(EventKind::Song, "u48213", &i.to_string()), 1_763_750_000_000)
        })
    });
    let symbols = Symbols::default();
    let genres: Vec<_> = (0..8).map(|i| symbols.intern(&format!("g{i}"))).collect();
    let mut state = UserState::default();
    let mut n = 0usize;
    let plan = squall_benches::fixtures::plan(1, &symbols);
    let plays: Vec<_> = (0..24)
        .map(|n| {
            squall_benches::fixtures::play(
                genres[n % 8],
                if n % 3 == 0 { 1_000 } else { 60_000 },
                1_763_750_000_000,
                symbols.unknown(),
            )
        })
        .collect();
    g.bench_function("apply_play_v1", |b| {
        b.iter(|| {
            n += 1;
            state.apply(&plan, "u", &plays[n % 24], &symbols)
        })
    });
    let ids: Vec<String> = (0..1024).map(|i| format!("u{}", i * 7919)).collect();
    let sip = std::collections::hash_map::RandomState::new();
    let xxh = squall_operators::store::StrHash::default();
    g.bench_function("hash_user_id_siphash", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % ids.len();
            sip.hash_one(ids[i].as_str())
        })
    });
    g.bench_function("hash_user_id_xxh3", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % ids.len();
            xxh.hash_one(ids[i].as_str())
        })
    });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let catalogue = squall_benches::engine::memory_catalogue(1_000);
    let enricher =
        Enricher::new(std::sync::Arc::new(catalogue), Symbols::default(), EnrichConfig::default(), rt.handle().clone());
    let keys: Vec<Key> = (0..1_000).map(|i| Key::Track(format!("t{i}").into())).collect();
    rt.block_on(async {
        for k in &keys {
            enricher.lookup(k.clone()).await;
        }
    });
    g.bench_function("shared_cache_get_moka", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % keys.len();
            enricher.cached(&keys[i])
        })
    });
    g.finish();
}

criterion_group!(benches, operators);
criterion_main!(benches);
