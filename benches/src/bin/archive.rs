//! Archive write speed on one core and bytes per event on disk, no broker:
//! `cargo run --release -p squall-benches --bin archive -- --events 4000000`.
//! Generated demo events (`squall-gen`'s stream: Zipf users and tracks, 20% ads, 1% resends,
//! 0.1% malformed), keyed by user with a Kafka timestamp a little after the event time, are held
//! in memory, then decoded, encoded (Parquet, dictionary + zstd) and stored through the archive's
//! writer into a local directory, one partition's files after another on this thread.
//! Prints `archive events=.. files=.. secs=.. events_per_s=.. bytes_per_event=..`.

use std::time::Instant;

use clap::Parser;
use squall::generate::{EventGen, EventGenConfig, Generated};
use squall_archive::{Archive, FileBuilder, RawRecord};
use squall_operators::EventKind;
use squall_operators::event::DecodeLimits;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    /// Events to archive.
    #[arg(long, default_value_t = 4_000_000)]
    events: u64,
    /// Records per data file.
    #[arg(long, default_value_t = 1_000_000)]
    rows_per_file: usize,
    /// Distinct users.
    #[arg(long, default_value_t = 100_000)]
    users: u64,
    /// Directory of the archive (default: a fresh one under the temporary directory, removed after).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

struct Record {
    timestamp: i64,
    key: Vec<u8>,
    value: Vec<u8>,
}

fn main() {
    let args = Args::parse();
    let config = EventGenConfig { users: args.users, malformed_share: 0.001, ..Default::default() };
    let mut generator = EventGen::new(config, 1);
    let (mut songs, mut ads) = (Vec::new(), Vec::new());
    let start_ms = 1_765_000_000_000;
    for i in 0..args.events as i64 {
        let now = start_ms + i / 10;
        let (kind, key, value) = match generator.next_at(now) {
            Generated::Event(e) => (e.kind(), e.user_id().as_bytes().to_vec(), e.to_json()),
            Generated::Malformed(kind, bytes) => (kind, b"bad".to_vec(), bytes),
        };
        let record = Record { timestamp: now + 5, key, value };
        if kind == EventKind::Song { songs.push(record) } else { ads.push(record) }
    }
    let temp = args.dir.is_none();
    let dir =
        args.dir.unwrap_or_else(|| std::env::temp_dir().join(format!("squall-archive-bench-{}", std::process::id())));
    let archive = Archive::open(dir.to_str().expect("a UTF-8 path")).expect("open the archive");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let started = Instant::now();
    let (mut files, mut bytes) = (0u64, 0u64);
    let (mut push_s, mut encode_s) = (0f64, 0f64);
    for (topic, kind, records) in
        [("song-completions", EventKind::Song, &songs), ("ad-impressions", EventKind::Ad, &ads)]
    {
        for (n, chunk) in records.chunks(args.rows_per_file.max(1)).enumerate() {
            let from = (n * args.rows_per_file) as i64;
            let phase = Instant::now();
            let mut file = FileBuilder::new(topic, 0, kind, DecodeLimits::default(), from);
            for (i, r) in chunk.iter().enumerate() {
                file.push(RawRecord {
                    offset: from + i as i64,
                    timestamp: Some(r.timestamp),
                    key: Some(&r.key),
                    value: &r.value,
                });
            }
            push_s += phase.elapsed().as_secs_f64();
            let phase = Instant::now();
            let encoded = file.finish().expect("encode").expect("rows");
            encode_s += phase.elapsed().as_secs_f64();
            rt.block_on(archive.put_file(&encoded)).expect("store");
            files += 1;
            bytes += encoded.entry.bytes;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "archive events={} files={files} secs={secs:.2} (decode and append {push_s:.2}, encode {encode_s:.2}, \
         store {:.2}) events_per_s={:.0} bytes_per_event={:.2}",
        args.events,
        secs - push_s - encode_s,
        args.events as f64 / secs,
        bytes as f64 / args.events as f64
    );
    if temp {
        let _ = std::fs::remove_dir_all(dir);
    }
}
