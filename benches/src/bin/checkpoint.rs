//! Checkpoint write and recovery cost:
//! `cargo run --release -p squall-benches --bin checkpoint -- --users 1000000 [--store cql --cql 127.0.0.1:9042]`.
//! Writes one whole-state part (with `--store dir` what compaction writes; with `--store cql` the
//! first checkpoint after every user changed: one row per user) and one incremental part (the users
//! one epoch changed), durably, then recovers from a freshly opened store (with `cql`, compacts
//! first: the incremental part's users supersede their first rows). Prints `key=value` lines.

use std::sync::Arc;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use squall_enrichment::Symbols;
use squall_operators::UserState;
use squall_operators::checkpoint::{CheckpointDir, CheckpointStore, Part};
use squall_operators::checkpoint_cql::CqlCheckpoints;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Store {
    /// bincode part files with fsync + rename.
    Dir,
    /// The CQL tables `checkpoint_*`: a row per changed user.
    Cql,
}

#[derive(Parser)]
struct Args {
    /// Users in the whole-state part.
    #[arg(long, default_value_t = 1_000_000)]
    users: usize,
    /// Users changed in one epoch, for the incremental part.
    #[arg(long, default_value_t = 20_000)]
    changed: usize,
    /// Where checkpoints go.
    #[arg(long, value_enum, default_value_t = Store::Dir)]
    store: Store,
    /// Directory to write to with `--store dir` (a temporary one by default).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// CQL contact point with `--store cql`; a fresh keyspace `ckpt_bench_<pid>` is created there.
    #[arg(long, default_value = "127.0.0.1:9042")]
    cql: String,
}

fn main() {
    let a = Args::parse();
    let symbols = Symbols::default();
    let genres: Vec<_> =
        ["pop", "rock", "jazz", "hip-hop", "indie", "metal"].iter().map(|g| symbols.intern(g)).collect();
    let categories: Vec<_> = ["food", "travel", "retail"].iter().map(|c| symbols.intern(c)).collect();
    // A typical user: a handful of genres and categories.
    let plan = squall_benches::fixtures::plan(1, &symbols);
    let unknown = symbols.unknown();
    let user = |i: usize| {
        let mut s = UserState::default();
        for k in 0..(3 + i % 5) {
            let ms = if k % 3 == 0 { 1_000 } else { 60_000 };
            let play = squall_benches::fixtures::play(genres[(i + k) % 6], ms, 1_763_750_000_000 + k as i64, unknown);
            s.apply(&plan, "u", &play, &symbols);
        }
        s.apply(&plan, "u", &squall_benches::fixtures::ad(categories[i % 3], 1_763_750_000_000, unknown), &symbols);
        (format!("u{i}"), s.snapshot(&plan, &symbols))
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let root = a.dir.unwrap_or_else(|| std::env::temp_dir().join(format!("squall-ckpt-bench-{}", std::process::id())));
    let keyspace = format!("ckpt_bench_{}", std::process::id());
    let open = || -> Box<dyn CheckpointStore> {
        match a.store {
            Store::Dir => Box::new(CheckpointDir::open(&root, "bench-v1").expect("checkpoint dir")),
            Store::Cql => runtime.block_on(async {
                let session = Arc::new(squall_enrichment::schema::connect(&a.cql).await.expect("connect"));
                squall_enrichment::schema::create(&session, &keyspace, 1).await.expect("keyspace");
                Box::new(
                    CqlCheckpoints::open(session, &keyspace, "bench-v1", runtime.handle().clone())
                        .await
                        .expect("checkpoint tables"),
                )
            }),
        }
    };
    let mut store = open();
    println!("checkpoint store={}", store.location());
    for (label, n, cut) in [("whole", a.users, 1), ("incremental", a.changed, 2)] {
        let built = Instant::now(); // includes making the users, not only snapshotting them
        let part = Part {
            cut,
            worker: 0,
            peers: 1,
            users: (0..n).map(user).collect(),
            dedup: (0..n as u64).map(|i| (i, u128::from(i) << 64 | 7, 1_763_750_000_000)).collect(),
            offsets: Vec::new(),
        };
        let build_s = built.elapsed().as_secs_f64();
        let started = Instant::now();
        let bytes = store.write_part(&part).expect("write");
        let write_s = started.elapsed().as_secs_f64();
        println!(
            "checkpoint kind={label} users={n} bytes={bytes} bytes_per_user={:.1} build_s={build_s:.3} write_s={write_s:.3} users_per_s={:.0}",
            bytes as f64 / n as f64,
            n as f64 / write_s
        );
    }
    if a.store == Store::Cql {
        let started = Instant::now();
        let (cut, removed) = store.compact(24 * 3600 * 1000).expect("compact").expect("a complete cut");
        println!(
            "checkpoint kind=compact cut={cut} rows_removed={removed} compact_s={:.3}",
            started.elapsed().as_secs_f64()
        );
    }
    drop(store);
    let mut fresh = open();
    let started = Instant::now();
    let rec = fresh.recover().expect("recover").expect("a complete cut");
    println!(
        "checkpoint kind=recover users={} dedup_ids={} read_fold_s={:.3}",
        rec.users.len(),
        rec.dedup.len(),
        started.elapsed().as_secs_f64()
    );
    if a.store == Store::Dir {
        let _ = std::fs::remove_dir_all(root);
    }
}
