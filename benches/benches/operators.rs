//! Operator micro-benchmarks: decoding, dedup, and applying an event to user state.
//! Run: `cargo bench -p squall-benches --bench operators`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use squall_enrichment::Symbols;
use squall_operators::dedup::{Dedup, dedup_key};
use squall_operators::event::{DecodeLimits, EventKind, decode};
use squall_operators::{AttributeSet, UserState, What};

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
    g.bench_function("apply_play_v1", |b| {
        b.iter(|| {
            n += 1;
            state.apply(
                AttributeSet::PersonalizationV1,
                1_763_750_000_000,
                What::Play { genre: genres[n % 8], skip: n.is_multiple_of(3) },
            )
        })
    });
    g.finish();
}

criterion_group!(benches, operators);
criterion_main!(benches);
