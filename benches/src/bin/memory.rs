//! Resident memory per user of the v1 attributes, and per retained event id of the dedup state:
//! `cargo run --release -p squall-benches --bin memory -- --users 1000000,10000000`.
//! Each size runs in a fresh child process (so freed memory from a previous size cannot hide
//! growth); prints `memory users=.. bytes_per_user=..` and, for the dedup state and for the
//! `HashMap<u128, i64>` it replaced (issue 16), `memory_dedup structure=.. ids=.. bytes_per_id=..`.

use std::time::Instant;

use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use squall::generate::CatalogueGen;
use squall_enrichment::Symbols;
use squall_operators::dedup::{Dedup, dedup_key};
use squall_operators::{EventKind, UserStore};

#[derive(Parser)]
struct Args {
    /// User counts; more than one runs each in its own child process.
    #[arg(long, value_delimiter = ',', default_value = "1000000,10000000")]
    users: Vec<u64>,
    /// Song completions per user: uniform in 1..=2*plays-1 (mean `plays`), tracks Zipf over 100k.
    #[arg(long, default_value_t = 12)]
    plays: u64,
    /// Ad impressions per user: uniform in 0..=2*ads (mean `ads`).
    #[arg(long, default_value_t = 2)]
    ads: u64,
    /// Retained event ids for the dedup measurement (0: skip).
    #[arg(long, default_value_t = 10_000_000)]
    dedup_ids: u64,
    /// Workers.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// With `--users 0`: which dedup state to measure, `buckets` (squall's) or `hashmap` (the
    /// `HashMap<u128, i64>` it replaced).
    #[arg(long, default_value = "buckets")]
    dedup_structure: String,
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()).unwrap_or(0) * 4096
}

fn main() {
    let a = Args::parse();
    if a.users.len() > 1 {
        for users in &a.users {
            let status = std::process::Command::new(std::env::current_exe().expect("own path"))
                .args(["--users", &users.to_string(), "--plays", &a.plays.to_string(), "--ads", &a.ads.to_string()])
                .args(["--workers", &a.workers.to_string()])
                .args(["--dedup-ids", "0"])
                .status()
                .expect("child");
            assert!(status.success(), "child for {users} users failed");
        }
        if a.dedup_ids > 0 {
            for structure in ["buckets", "hashmap"] {
                let status = std::process::Command::new(std::env::current_exe().expect("own path"))
                    .args(["--users", "0", "--dedup-ids", &a.dedup_ids.to_string(), "--dedup-structure", structure])
                    .status()
                    .expect("child");
                assert!(status.success(), "child for the dedup state failed");
            }
        }
        return;
    }
    if a.users[0] == 0 {
        match a.dedup_structure.as_str() {
            "hashmap" => dedup_hashmap(a.dedup_ids),
            _ => dedup(a.dedup_ids),
        }
        return;
    }
    let users = a.users[0];
    let catalogue = CatalogueGen { tracks: 100_000, ads: 2_000, seed: 7 };
    let symbols = Symbols::default();
    let genres: Vec<_> = squall::generate::GENRES.iter().map(|g| symbols.intern(g)).collect();
    let categories: Vec<_> = squall::generate::CATEGORIES.iter().map(|c| symbols.intern(c)).collect();
    let tracks = Zipf::new(catalogue.tracks as f64, 1.0).expect("zipf");
    let mut rng = StdRng::seed_from_u64(11);
    let plan = squall_benches::fixtures::plan(1, &symbols);
    let unknown = symbols.unknown();
    let before = rss_bytes();
    let store = UserStore::new(std::sync::Arc::clone(&plan), symbols.clone(), a.workers);
    let started = Instant::now();
    let (mut events, mut genre_entries) = (0u64, 0u64);
    for u in 1..=users {
        let id = format!("u{u}");
        let mut state = store.map_of(&id).entry(id.as_str().into()).or_default();
        for _ in 0..rng.random_range(1..2 * a.plays) {
            let track = tracks.sample(&mut rng) as u64 - 1;
            let g = catalogue.genre(track);
            let genre = genres[squall::generate::GENRES.iter().position(|x| *x == g).unwrap_or(0)];
            let ms = if rng.random_bool(0.3) { 1_000 } else { 60_000 };
            state.apply(&plan, "u", &squall_benches::fixtures::play(genre, ms, 1_763_750_000_000, unknown), &symbols);
            events += 1;
        }
        for _ in 0..rng.random_range(0..=2 * a.ads) {
            let c = categories[rng.random_range(0..categories.len())];
            state.apply(&plan, "u", &squall_benches::fixtures::ad(c, 1_763_750_000_000, unknown), &symbols);
            events += 1;
        }
        genre_entries += squall_operators::attributes::AttributesView::new(&state, &plan, &symbols)
            .to_attributes()
            .get("genre_plays")
            .map_or(0, |g| if let squall_operators::Value::Map(m) = g { m.len() as u64 } else { 0 });
    }
    let after = rss_bytes();
    println!(
        "memory users={users} events={events} genres_per_user={:.2} rss_delta_bytes={} bytes_per_user={:.1} build_s={:.2}",
        genre_entries as f64 / users as f64,
        after - before,
        (after - before) as f64 / users as f64,
        started.elapsed().as_secs_f64()
    );
    drop(store);
    if a.dedup_ids > 0 {
        dedup(a.dedup_ids);
    }
}

/// Resident bytes per retained event id in the dedup state (one time bucket, the default horizon).
fn dedup(ids: u64) {
    let mut d = Dedup::new(10 * 60 * 1000);
    dedup_figures("buckets", ids, |key| {
        d.first_time(key, 1_763_750_000_000);
    });
    println!(
        "memory_dedup structure=buckets retained={} table_bytes_per_id={:.2}",
        d.len(),
        d.table_bytes() as f64 / ids as f64
    );
}

/// The same for the state before issue 16: every key with its event time in a `HashMap`.
fn dedup_hashmap(ids: u64) {
    #[derive(Default, Clone, Copy)]
    struct Low(u64);
    impl std::hash::Hasher for Low {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, _: &[u8]) {
            unreachable!("u128 keys only")
        }
        fn write_u128(&mut self, i: u128) {
            self.0 = i as u64;
        }
    }
    let mut seen: std::collections::HashMap<u128, i64, std::hash::BuildHasherDefault<Low>> = Default::default();
    dedup_figures("hashmap", ids, |key| {
        seen.entry(key).or_insert(1_763_750_000_000);
    });
}

/// Inserts `ids` keys with `insert` and prints the resident bytes it took per id.
fn dedup_figures(structure: &str, ids: u64, mut insert: impl FnMut(u128)) {
    let before = rss_bytes();
    let started = Instant::now();
    for i in 0..ids {
        insert(dedup_key(EventKind::Song, "u1", &i.to_string()));
    }
    let after = rss_bytes();
    println!(
        "memory_dedup structure={structure} ids={ids} rss_delta_bytes={} bytes_per_id={:.1} insert_s={:.2}",
        after - before,
        (after - before) as f64 / ids as f64,
        started.elapsed().as_secs_f64()
    );
}
