//! `squall training-data` on a generated archive, and the files the DuckDB peer reads
//! (`benches/peers/duckdb/`): `cargo run --release -p squall-benches --bin training -- --dir
//! /tmp/training --events 10000000 --users 1000000 --labels 1000000 --cql 127.0.0.1:9042`.
//!
//! Writes under `--dir`: `archive/` (both topics through the archive's writer, `--partitions`
//! partitions each, keyed by user, `--days` of event time, 1% resends), `labels.parquet`
//! (user_id, ts, label: one row per `events / labels` events, at that event's user, up to two days
//! after it), `tracks.parquet` and `ads.parquet` (the catalogue, also written to the CQL keyspace
//! `training_bench`) and `topology.toml` (the attributes SQL can express). Then, unless
//! `--generate-only`, runs the job in this process on `--workers` and prints
//! `training rows=.. events=.. seconds=.. events_per_s=.. rows_per_s=.. users=.. state_mb=..`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow_array::{ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray};
use clap::Parser;
use parquet::arrow::ArrowWriter;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use squall::generate::{CatalogueGen, EventGen, EventGenConfig, Generated};
use squall_archive::{Archive, FileBuilder, RawRecord};
use squall_operators::event::DecodeLimits;
use squall_operators::{EventKind, user_hash};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The attributes both squall and the DuckDB peer compute.
pub const VERSIONS: &str = r#"
[versions.1]
attributes = [
    { name = "plays",          op = "count", events = "song" },
    { name = "ms_played",      op = "sum",   field = "ms_played" },
    { name = "skips",          op = "count", events = "song", where = "ms_played < 30000" },
    { name = "genre_plays",    op = "count", by = "track.genre" },
    { name = "top_genres",     op = "top_k", of = "genre_plays", k = 3 },
    { name = "plays_7d",       op = "count", events = "song", window = "7d", tile = "1d" },
    { name = "ad_impressions", op = "count", events = "ad" },
]
"#;

const T0: i64 = 1_763_750_000_000;
const DAY: i64 = 86_400_000;
const KEYSPACE: &str = "training_bench";

#[derive(Parser)]
struct Args {
    /// Where the files go.
    #[arg(long)]
    dir: PathBuf,
    /// Events in total (valid ones, resends included).
    #[arg(long, default_value_t = 10_000_000)]
    events: usize,
    /// Distinct users (Zipf).
    #[arg(long, default_value_t = 1_000_000)]
    users: u64,
    /// Label rows.
    #[arg(long, default_value_t = 1_000_000)]
    labels: usize,
    /// Days of event time the events span.
    #[arg(long, default_value_t = 30)]
    days: i64,
    /// Partitions per topic.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Records per archive file.
    #[arg(long, default_value_t = 500_000)]
    rows_per_file: usize,
    /// Tracks in the catalogue.
    #[arg(long, default_value_t = 100_000)]
    tracks: u64,
    /// CQL contact point for the catalogue.
    #[arg(long, default_value = "127.0.0.1:9042")]
    cql: String,
    /// timely workers of the job.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Write the files and the catalogue, do not run the job.
    #[arg(long)]
    generate_only: bool,
}

fn write_parquet(path: &Path, columns: Vec<(&str, ArrayRef)>) {
    let batch = RecordBatch::try_from_iter(columns).expect("columns");
    let file = std::fs::File::create(path).expect("create");
    let mut w = ArrowWriter::try_new(file, batch.schema(), None).expect("writer");
    w.write(&batch).expect("write");
    w.close().expect("close");
}

/// The archive and the labels; returns (events archived, labels).
fn archive_and_labels(a: &Args, catalogue: CatalogueGen, rt: &tokio::runtime::Runtime) -> (usize, usize) {
    let archive = Archive::open(a.dir.join("archive").to_str().expect("utf-8 path")).expect("open the archive");
    let config = EventGenConfig { users: a.users, catalogue, duplicate_share: 0.01, ..Default::default() };
    let mut generator = EventGen::new(config, 1);
    let mut rng = StdRng::seed_from_u64(2);
    let kinds = [("song-completions", EventKind::Song), ("ad-impressions", EventKind::Ad)];
    let mut files: Vec<Vec<(FileBuilder, i64)>> = kinds
        .iter()
        .map(|(t, k)| (0..a.partitions).map(|p| (FileBuilder::new(t, p, *k, DecodeLimits::default(), 0), 0)).collect())
        .collect();
    let store = |b: FileBuilder| {
        if let Some(encoded) = b.finish().expect("encode") {
            rt.block_on(archive.put_file(&encoded)).expect("store");
        }
    };
    let step = (a.days * DAY / a.events.max(1) as i64).max(1);
    let every = (a.events / a.labels.max(1)).max(1);
    let (mut users, mut times, mut values) = (Vec::new(), Vec::new(), Vec::new());
    let mut n = 0;
    while n < a.events {
        let Generated::Event(e) = generator.next_at(T0 + n as i64 * step) else { continue };
        if n % every == 0 && users.len() < a.labels {
            users.push(e.user_id().to_owned());
            times.push(e.ts() + rng.random_range(0..2 * DAY));
            values.push(rng.random_range(0..2i32));
        }
        let t = usize::from(e.kind() == EventKind::Ad);
        let p = (user_hash(e.user_id()) % a.partitions as u64) as usize;
        let (builder, offset) = &mut files[t][p];
        let value = e.to_json();
        builder.push(RawRecord {
            offset: *offset,
            timestamp: Some(e.ts()),
            key: Some(e.user_id().as_bytes()),
            value: &value,
        });
        *offset += 1;
        if builder.rows() >= a.rows_per_file {
            let next = FileBuilder::new(kinds[t].0, p as i32, kinds[t].1, DecodeLimits::default(), *offset);
            store(std::mem::replace(builder, next));
        }
        n += 1;
    }
    for (builder, _) in files.into_iter().flatten() {
        store(builder);
    }
    let labels = users.len();
    write_parquet(
        &a.dir.join("labels.parquet"),
        vec![
            ("user_id", Arc::new(StringArray::from(users)) as ArrayRef),
            ("ts", Arc::new(Int64Array::from(times))),
            ("label", Arc::new(Int32Array::from(values))),
        ],
    );
    (n, labels)
}

/// The catalogue into CQL and as Parquet for the peer.
fn catalogue(a: &Args, c: CatalogueGen, rt: &tokio::runtime::Runtime) {
    let tracks: Vec<_> = (0..c.tracks).map(|i| c.track(i)).collect();
    let ads: Vec<_> = (0..c.ads).map(|i| c.ad(i)).collect();
    write_parquet(
        &a.dir.join("tracks.parquet"),
        vec![
            ("track_id", Arc::new(StringArray::from_iter_values(tracks.iter().map(|t| t.0.as_str()))) as ArrayRef),
            ("genre", Arc::new(StringArray::from_iter(tracks.iter().map(|t| t.1.genre.clone())))),
        ],
    );
    write_parquet(
        &a.dir.join("ads.parquet"),
        vec![
            ("ad_id", Arc::new(StringArray::from_iter_values(ads.iter().map(|t| t.0.as_str()))) as ArrayRef),
            ("category", Arc::new(StringArray::from_iter(ads.iter().map(|t| t.1.category.clone())))),
        ],
    );
    rt.block_on(async {
        let session = squall_enrichment::schema::connect(&a.cql).await.expect("connect to the CQL server");
        squall_enrichment::schema::create(&session, KEYSPACE, 1).await.expect("schema");
        squall_enrichment::schema::insert_tracks(&session, KEYSPACE, tracks, 256).await.expect("tracks");
        squall_enrichment::schema::insert_ads(&session, KEYSPACE, ads, 256).await.expect("ads");
    });
}

fn main() {
    let a = Args::parse();
    std::fs::create_dir_all(&a.dir).expect("create --dir");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let c = CatalogueGen { tracks: a.tracks, ads: 2_000, seed: 7 };
    let started = Instant::now();
    catalogue(&a, c, &rt);
    let (events, labels) = archive_and_labels(&a, c, &rt);
    let topology = a.dir.join("topology.toml");
    std::fs::write(
        &topology,
        format!(
            "name = \"training\"\nversion = 1\n[cql]\nnodes = \"{}\"\nkeyspace = \"{KEYSPACE}\"\n{VERSIONS}",
            a.cql
        ),
    )
    .expect("write the topology");
    eprintln!(
        "training: {events} events, {labels} labels written to {} in {:.1} s",
        a.dir.display(),
        started.elapsed().as_secs_f64()
    );
    drop(rt);
    if a.generate_only {
        return;
    }
    let out = a.dir.join("squall.parquet");
    let started = Instant::now();
    let s = squall::training::main(squall::training::TrainingArgs {
        topology,
        version: None,
        archive: a.dir.join("archive").to_string_lossy().into_owned(),
        labels: Some(a.dir.join("labels.parquet")),
        at: None,
        out,
        workers: Some(a.workers),
        processes: 1,
        process: 0,
        hostfile: None,
        catalogue: Default::default(),
    })
    .expect("training-data");
    let secs = started.elapsed().as_secs_f64();
    println!(
        "training rows={} events={} seconds={secs:.2} events_per_s={:.0} rows_per_s={:.0} users={} state_mb={:.0}",
        s.rows,
        s.applied + s.duplicates,
        (s.applied + s.duplicates) as f64 / secs,
        s.rows as f64 / secs,
        s.users,
        s.state_bytes as f64 / 1e6
    );
}
