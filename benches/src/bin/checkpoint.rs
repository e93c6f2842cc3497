//! Checkpoint write cost: `cargo run --release -p squall-benches --bin checkpoint -- --users 1000000`.
//! Writes one whole-state part (what compaction writes) and one incremental part (the users one
//! epoch changed), durably, and prints their sizes and durations as `key=value` lines.

use std::time::Instant;

use clap::Parser;
use squall_enrichment::Symbols;
use squall_operators::checkpoint::{CheckpointDir, Part};
use squall_operators::{AttributeSet, UserState, What};

#[derive(Parser)]
struct Args {
    /// Users in the whole-state part.
    #[arg(long, default_value_t = 1_000_000)]
    users: usize,
    /// Users changed in one epoch, for the incremental part.
    #[arg(long, default_value_t = 20_000)]
    changed: usize,
    /// Directory to write to (a temporary one by default).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

fn main() {
    let a = Args::parse();
    let symbols = Symbols::default();
    let genres: Vec<_> =
        ["pop", "rock", "jazz", "hip-hop", "indie", "metal"].iter().map(|g| symbols.intern(g)).collect();
    let categories: Vec<_> = ["food", "travel", "retail"].iter().map(|c| symbols.intern(c)).collect();
    // A typical user: a handful of genres and categories.
    let user = |i: usize| {
        let mut s = UserState::default();
        for k in 0..(3 + i % 5) {
            s.apply(
                AttributeSet::PersonalizationV1,
                1_763_750_000_000 + k as i64,
                What::Play { genre: genres[(i + k) % 6], skip: k % 3 == 0 },
            );
        }
        s.apply(AttributeSet::PersonalizationV1, 1_763_750_000_000, What::Ad { category: categories[i % 3] });
        (format!("u{i}"), s.snapshot(&symbols))
    };
    let root = a.dir.unwrap_or_else(|| std::env::temp_dir().join(format!("squall-ckpt-bench-{}", std::process::id())));
    let dir = CheckpointDir::open(&root, "bench-v1").expect("checkpoint dir");
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
        let bytes = dir.write_part(&part).expect("write");
        let write_s = started.elapsed().as_secs_f64();
        println!(
            "checkpoint kind={label} users={n} bytes={bytes} bytes_per_user={:.1} build_s={build_s:.3} write_s={write_s:.3}",
            bytes as f64 / n as f64
        );
    }
    let started = Instant::now();
    let rec = dir.recover().expect("recover").expect("a complete cut");
    println!("checkpoint kind=recover users={} read_fold_s={:.3}", rec.users.len(), started.elapsed().as_secs_f64());
    let _ = std::fs::remove_dir_all(root);
}
