//! Checkpoint write, compaction and recovery cost:
//! `cargo run --release -p squall-benches --bin checkpoint -- --users 1000000 [--store cql --cql 127.0.0.1:9042]`.
//!
//! Phases (each prints `checkpoint kind=<phase> ...` lines):
//! - `whole`: the first checkpoint after every user changed (one part of `--users` users, one
//!   dedup id each), written durably; `incremental`: one epoch in which `--changed` users changed.
//! - `lag`: through the checkpoint writer, the whole part at t = 0 and then an incremental part
//!   every `--epoch-ms`: when each cut completes, and how long after the first.
//! - `compact`: compaction right after the incremental part, then `--rounds` more rounds of
//!   (`--changed` changed users, compaction): the mean and the largest.
//! - `recover`: a fresh store read back by each process of a version of 1, 2 and 4 processes
//!   (one worker each): seconds and bytes read per process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use squall_enrichment::Symbols;
use squall_operators::UserState;
use squall_operators::checkpoint::{self, CheckpointStore, DedupRun, Part, RecoveryScope};
use squall_operators::checkpoint_cql::CqlCheckpoints;
use squall_operators::checkpoint_dir::CheckpointDir;
use squall_operators::dedup::Fingerprint;
use squall_operators::{KeyGroups, UserSnapshot};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Store {
    /// Part files with fsync + rename, compacted into segment files.
    Dir,
    /// The CQL tables `checkpoint_*`: a partition per key group.
    Cql,
}

#[derive(Parser)]
struct Args {
    /// Users in the whole-state part.
    #[arg(long, default_value_t = 1_000_000)]
    users: usize,
    /// Users changed in one epoch, for the incremental parts.
    #[arg(long, default_value_t = 20_000)]
    changed: usize,
    /// Compaction rounds after the first.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Epoch length for the `lag` phase, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    epoch_ms: u64,
    /// Incremental parts after the whole one in the `lag` phase.
    #[arg(long, default_value_t = 5)]
    lag_parts: usize,
    /// Key groups (`state.key_groups`).
    #[arg(long, default_value_t = KeyGroups::DEFAULT)]
    key_groups: u32,
    /// Process counts to recover with.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    processes: Vec<usize>,
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

const T0: i64 = 1_763_750_000_000;

/// A typical user (3-7 genres and an ad category) as a snapshot, by index; `round` varies plays.
struct Users {
    snapshots: Vec<UserSnapshot>,
}

impl Users {
    fn new() -> Self {
        let symbols = Symbols::default();
        let genres: Vec<_> =
            ["pop", "rock", "jazz", "hip-hop", "indie", "metal"].iter().map(|g| symbols.intern(g)).collect();
        let categories: Vec<_> = ["food", "travel", "retail"].iter().map(|c| symbols.intern(c)).collect();
        let plan = squall_benches::fixtures::plan(1, &symbols);
        let unknown = symbols.unknown();
        // 15 shapes; users differ by name only, which is what the stores' costs depend on.
        let snapshots = (0..15)
            .map(|i| {
                let mut s = UserState::default();
                for k in 0..(3 + i % 5) {
                    let ms = if k % 3 == 0 { 1_000 } else { 60_000 };
                    let play = squall_benches::fixtures::play(genres[(i + k) % 6], ms, T0 + k as i64, unknown);
                    s.apply(&plan, "u", &play, &symbols);
                }
                s.apply(&plan, "u", &squall_benches::fixtures::ad(categories[i % 3], T0, unknown), &symbols);
                s.snapshot(&plan, &symbols)
            })
            .collect();
        Users { snapshots }
    }

    fn get(&self, i: usize, round: usize) -> (String, UserSnapshot) {
        let mut s = self.snapshots[i % 15].clone();
        s.words[2] = s.words[2].wrapping_add(round as u32);
        (format!("u{i}"), s)
    }
}

/// A part of one worker (`peers` 1) with `users`, one new dedup id each.
fn part(key_groups: KeyGroups, cut: u64, users: Vec<(String, UserSnapshot)>) -> Part {
    let bucket_ms = 75_000;
    let ts = T0 + cut as i64 * 1000;
    let mut runs: std::collections::BTreeMap<u32, Vec<Fingerprint>> = Default::default();
    for (i, (u, _)) in users.iter().enumerate() {
        let key = squall_operators::dedup::dedup_key(squall_operators::EventKind::Song, u, &format!("{cut}-{i}"));
        runs.entry(key_groups.of(u)).or_default().push(Fingerprint::of(key));
    }
    let bucket = ts.div_euclid(bucket_ms);
    Part {
        cut,
        worker: 0,
        peers: 1,
        key_groups,
        users,
        dedup: runs.into_iter().map(|(key_group, ids)| DedupRun { key_group, bucket, ids }).collect(),
        bucket_ms,
        watermark: ts,
        offsets: Vec::new(),
        ..Default::default()
    }
}

fn main() {
    let a = Args::parse();
    let key_groups = KeyGroups::new(a.key_groups).expect("key groups");
    let users = Users::new();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let root =
        a.dir.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("squall-ckpt-bench-{}", std::process::id())));
    let keyspace = format!("ckpt_bench_{}", std::process::id());
    let session = (a.store == Store::Cql).then(|| {
        runtime.block_on(async {
            let session = Arc::new(squall_enrichment::schema::connect(&a.cql).await.expect("connect"));
            squall_enrichment::schema::create(&session, &keyspace, 1).await.expect("keyspace");
            session
        })
    });
    let open = |group: &str| -> Box<dyn CheckpointStore> {
        match &session {
            None => Box::new(CheckpointDir::open(&root, group).expect("checkpoint dir")),
            Some(session) => runtime.block_on(async {
                Box::new(
                    CqlCheckpoints::open(Arc::clone(session), &keyspace, group, runtime.handle().clone())
                        .await
                        .expect("checkpoint tables"),
                )
            }),
        }
    };
    let mut store = open("bench-v1");
    println!("checkpoint store={} key_groups={}", store.location(), key_groups.count());
    let mut cut = 1;
    for (label, n) in [("whole", a.users), ("incremental", a.changed)] {
        let built = Instant::now();
        let part = part(key_groups, cut, (0..n).map(|i| users.get(i * a.users / n.max(1), cut as usize)).collect());
        let build_s = built.elapsed().as_secs_f64();
        let started = Instant::now();
        let bytes = store.write_part(&part).expect("write");
        let write_s = started.elapsed().as_secs_f64();
        println!(
            "checkpoint kind={label} users={n} bytes={bytes} bytes_per_user={:.1} build_s={build_s:.3} write_s={write_s:.3} users_per_s={:.0}",
            bytes as f64 / n as f64,
            n as f64 / write_s
        );
        cut += 1;
    }

    // Compaction costs what changed since the last one.
    let horizon_ms = 10 * 60 * 1000;
    let started = Instant::now();
    let (_, removed) = store.compact(horizon_ms).expect("compact").expect("a complete cut");
    println!(
        "checkpoint kind=compact after=whole+incremental changed={} rows_removed={removed} compact_s={:.3}",
        a.changed,
        started.elapsed().as_secs_f64()
    );
    let (mut total, mut largest) = (0.0f64, 0.0f64);
    for round in 0..a.rounds {
        // A different slice of users each round.
        let first = (round + 1) * a.changed;
        let changed = (first..first + a.changed).map(|i| users.get(i % a.users, cut as usize)).collect();
        store.write_part(&part(key_groups, cut, changed)).expect("write");
        cut += 1;
        let started = Instant::now();
        store.compact(horizon_ms).expect("compact");
        let s = started.elapsed().as_secs_f64();
        total += s;
        largest = largest.max(s);
    }
    if a.rounds > 0 {
        println!(
            "checkpoint kind=compact_rounds rounds={} changed_per_round={} mean_s={:.3} max_s={largest:.3}",
            a.rounds,
            a.changed,
            total / a.rounds as f64
        );
    }

    // Recovery, split over processes.
    drop(store);
    for &processes in &a.processes {
        let (mut secs, mut bytes, mut users_read) = (Vec::new(), Vec::new(), 0usize);
        for p in 0..processes {
            let mut fresh = open("bench-v1");
            let scope = RecoveryScope { key_groups, peers: processes, local: p..p + 1, tidy: p == 0 };
            let started = Instant::now();
            let rec = fresh.recover(&scope).expect("recover").expect("a complete cut");
            secs.push(started.elapsed().as_secs_f64());
            bytes.push(rec.bytes_read);
            users_read += rec.users.len();
        }
        let max = secs.iter().copied().fold(0.0, f64::max);
        println!(
            "checkpoint kind=recover users={} processes={processes} users_read={users_read} max_s={max:.3} mean_s={:.3} \
             mean_bytes_per_process={} max_bytes_per_process={}",
            a.users,
            secs.iter().sum::<f64>() / processes as f64,
            bytes.iter().sum::<u64>() / processes as u64,
            bytes.iter().max().unwrap_or(&0)
        );
    }

    // A first checkpoint through the writer, then a part every epoch: when does each cut complete?
    if a.lag_parts > 0 {
        let (tx, rx) = std::sync::mpsc::channel();
        let (parts, writer) = checkpoint::spawn_writer(
            open("bench-lag-v1"),
            "bench-lag-v1".into(),
            checkpoint::Layout::single(1),
            1_000_000,
            horizon_ms,
            move |cut, _| {
                let _ = tx.send((cut, Instant::now()));
            },
        );
        let whole = part(key_groups, 100, (0..a.users).map(|i| users.get(i, 0)).collect());
        let epoch = Duration::from_millis(a.epoch_ms);
        let t0 = Instant::now();
        let mut sent = vec![(100u64, t0)];
        parts.send(whole).expect("writer");
        for k in 1..=a.lag_parts as u64 {
            std::thread::sleep((t0 + epoch * k as u32).saturating_duration_since(Instant::now()));
            let changed = (0..a.changed).map(|i| users.get((i * 7 + k as usize) % a.users, k as usize)).collect();
            sent.push((100 + k, Instant::now()));
            parts.send(part(key_groups, 100 + k, changed)).expect("writer");
        }
        drop(parts);
        writer.join().expect("writer thread");
        let done: Vec<(u64, Instant)> = rx.try_iter().collect();
        let first = done[0].1;
        for ((cut, at), (_, sent_at)) in done.iter().zip(&sent) {
            println!(
                "checkpoint kind=lag cut={cut} sent_s={:.3} complete_s={:.3} after_first_s={:.3}",
                (*sent_at - t0).as_secs_f64(),
                (*at - t0).as_secs_f64(),
                at.saturating_duration_since(first).as_secs_f64()
            );
        }
    }
    if a.store == Store::Dir && a.dir.is_none() {
        let _ = std::fs::remove_dir_all(root);
    }
}
