//! `squall training-data` over a real archive in a local directory (imported from NDJSON files,
//! as a user would import an export) and the catalogue in the dev CQL server: a generated
//! workload with resends, events out of order within their partitions and a 7-day window in
//! daily tiles. Every label row equals the oracle over the user's events strictly before the
//! label's time (applied in event-time order, ties in archive order), with 1 and 2 workers and
//! for Parquet and CSV labels; `--at` equals the oracle for every user; bad labels files are
//! refused with the row and column named, and nothing is written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, Float64Array, Int64Array, ListArray, MapArray, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use squall::generate::{CatalogueGen, EventGen, EventGenConfig, Generated};
use squall_archive::archiver::TopicSpec;
use squall_archive::{Archive, import};
use squall_operators::{Attributes, DecodeLimits, Event, EventKind, Value};
use squall_tests::{binary, cql, unique};
use squall_topologies::{TopologySpec, oracle};

const T0: i64 = 1_763_750_000_000;
const DAY: i64 = 86_400_000;
const USERS: u64 = 120;
const EVENTS: usize = 6000;
const PARTITIONS: i32 = 2;
/// Event time between consecutive generated events: 6000 events span 25 days.
const STEP_MS: i64 = 6 * 60_000;
const LABELS: usize = 600;

const VERSIONS: &str = r#"
[versions.1]
attributes = [
    { name = "plays",          op = "count", events = "song" },
    { name = "ms_played",      op = "sum",   field = "ms_played" },
    { name = "skips",          op = "count", events = "song", where = "ms_played < 30000" },
    { name = "genre_plays",    op = "count", by = "track.genre" },
    { name = "top_genres",     op = "top_k", of = "genre_plays", k = 3 },
    { name = "plays_7d",       op = "count", events = "song", window = "7d", tile = "1d" },
    { name = "genre_plays_7d", op = "count", by = "track.genre", window = "7d", tile = "1d" },
    { name = "ad_impressions", op = "count", events = "ad" },
    { name = "skip_rate",      op = "ratio", num = "skips", den = "plays" },
    { name = "last_track",     op = "last",  field = "track_id" },
    { name = "last_seen_ts",   op = "max",   field = "ts" },
    { name = "artists",        op = "distinct", field = "track.artist_id", limit = 20 },
    { name = "genre_affinity", op = "decayed_count", by = "track.genre", half_life = "7d" },
]
"#;

/// One archived event with its place in the archive.
#[derive(Clone, Debug)]
struct Archived {
    topic: u8,
    partition: i32,
    offset: i64,
    event: Event,
}

/// A line of an NDJSON export, and the event it holds (`None`: malformed).
type Line = (Vec<u8>, Option<Event>);

/// What one test case shares: the catalogue in CQL, the archive, the topology file.
struct World {
    dir: PathBuf,
    archive: PathBuf,
    topology: PathBuf,
    catalogue: oracle::Catalogue,
    events: Vec<Archived>,
}

/// Generates the workload and imports it: per topic, the events keyed to partitions by user,
/// shuffled within windows of 40 (out of order by up to hours), resends included (the generator's,
/// plus copies of earlier events appended much later), 1% malformed lines.
async fn world() -> World {
    let dir = std::env::temp_dir().join(unique("training"));
    std::fs::create_dir_all(&dir).unwrap();
    let keyspace = unique("ks");
    let gen_catalogue = CatalogueGen { tracks: 400, ads: 40, seed: 11 };
    let session = squall_enrichment::schema::connect(&cql()).await.expect("connect to the CQL server");
    squall_enrichment::schema::create(&session, &keyspace, 1).await.expect("schema");
    let tracks: Vec<_> = (0..gen_catalogue.tracks).map(|i| gen_catalogue.track(i)).collect();
    squall_enrichment::schema::insert_tracks(&session, &keyspace, tracks, 64).await.expect("tracks");
    let ads: Vec<_> = (0..gen_catalogue.ads).map(|i| gen_catalogue.ad(i)).collect();
    squall_enrichment::schema::insert_ads(&session, &keyspace, ads, 64).await.expect("ads");

    let config = EventGenConfig {
        users: USERS,
        catalogue: gen_catalogue,
        run_id: unique("run"),
        duplicate_share: 0.05,
        unknown_share: 0.02,
        malformed_share: 0.01,
        ..Default::default()
    };
    let mut generator = EventGen::new(config, 7);
    let mut rng = StdRng::seed_from_u64(99);
    // Lines per (topic, partition), in the order they are archived.
    let mut lines: BTreeMap<(u8, i32), Vec<Line>> = BTreeMap::new();
    let mut produced: Vec<(u8, i32, Vec<u8>, Option<Event>)> = Vec::new();
    for i in 0..EVENTS {
        match generator.next_at(T0 + i as i64 * STEP_MS) {
            Generated::Event(e) => {
                let topic = u8::from(e.kind() == EventKind::Ad);
                let partition = (squall_operators::user_hash(e.user_id()) % PARTITIONS as u64) as i32;
                produced.push((topic, partition, e.to_json(), Some(e)));
            }
            Generated::Malformed(kind, bytes) => {
                let bytes: Vec<u8> = bytes.into_iter().filter(|b| *b != b'\n').collect();
                produced.push((u8::from(kind == EventKind::Ad), 0, bytes, None));
            }
        }
    }
    // Late resends: copies of earlier events, appended at the end.
    for _ in 0..40 {
        let (t, p, bytes, e) = produced[rng.random_range(0..produced.len())].clone();
        if e.is_some() {
            produced.push((t, p, bytes, e));
        }
    }
    for chunk in produced.chunks_mut(40) {
        for i in (1..chunk.len()).rev() {
            chunk.swap(i, rng.random_range(0..=i));
        }
    }
    for (t, p, bytes, e) in produced {
        lines.entry((t, p)).or_default().push((bytes, e));
    }

    let archive_dir = dir.join("archive");
    let archive = Archive::open(archive_dir.to_str().unwrap()).expect("open the archive");
    let songs = unique("songs");
    let ads = unique("ads");
    let mut events = Vec::new();
    for ((topic, partition), records) in &lines {
        let name = if *topic == 0 { &songs } else { &ads };
        let kind = if *topic == 0 { EventKind::Song } else { EventKind::Ad };
        let file = dir.join(format!("{name}-{partition}.ndjson"));
        let mut text = Vec::new();
        for (offset, (bytes, event)) in records.iter().enumerate() {
            text.extend_from_slice(bytes);
            text.push(b'\n');
            if let Some(event) = event {
                events.push(Archived {
                    topic: *topic,
                    partition: *partition,
                    offset: offset as i64,
                    event: event.clone(),
                });
            }
        }
        std::fs::write(&file, text).unwrap();
        let spec = TopicSpec { name: name.clone(), kind };
        import(&archive, &spec, *partition, &[file], 250, DecodeLimits::default()).await.expect("import");
    }

    let topology = dir.join("topology.toml");
    std::fs::write(
        &topology,
        format!(
            "name = \"training\"\nversion = 1\n[kafka]\nbrokers = \"127.0.0.1:1\"\nsong_completions = \"{songs}\"\nad_impressions = \"{ads}\"\n[cql]\nnodes = \"{}\"\nkeyspace = \"{keyspace}\"\n{VERSIONS}",
            cql()
        ),
    )
    .unwrap();
    World { dir, archive: archive_dir, topology, catalogue: gen_catalogue.oracle(), events }
}

impl World {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(binary("squall"))
            .arg("training-data")
            .args(["--topology", self.topology.to_str().unwrap(), "--archive", self.archive.to_str().unwrap()])
            .args(args)
            .output()
            .expect("run squall training-data")
    }

    fn run_ok(&self, args: &[&str]) {
        let out = self.run(args);
        assert!(out.status.success(), "squall training-data {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The oracle's attributes of `user` over their events strictly before `ts`, applied in
    /// event-time order, ties in archive order; `None` if they have none.
    fn expected(&self, declaration: &squall_operators::Declaration, user: &str, ts: i64) -> Option<Attributes> {
        let mut before: Vec<&Archived> =
            self.events.iter().filter(|a| a.event.user_id() == user && a.event.ts() < ts).collect();
        before.sort_by_key(|a| (a.event.ts(), a.topic, a.partition, a.offset));
        oracle::expected(declaration, before.iter().map(|a| &a.event), &self.catalogue).remove(user)
    }

    fn users(&self) -> Vec<String> {
        let mut u: Vec<String> = self.events.iter().map(|a| a.event.user_id().to_owned()).collect();
        u.sort();
        u.dedup();
        u
    }
}

/// The label rows: most at random times over the span, some exactly at an event's time (which
/// must not see it), some before a user's first event, some of users with no events.
fn label_rows(w: &World) -> Vec<(String, i64)> {
    let mut rng = StdRng::seed_from_u64(5);
    let span = EVENTS as i64 * STEP_MS;
    (0..LABELS)
        .map(|i| match i % 10 {
            0 => {
                let a = &w.events[rng.random_range(0..w.events.len())];
                (a.event.user_id().to_owned(), a.event.ts())
            }
            1 => (format!("nobody{i}"), T0 + rng.random_range(0..span)),
            2 => (format!("u{}", rng.random_range(1..=USERS)), T0 - DAY),
            _ => (format!("u{}", rng.random_range(1..=USERS / 4)), T0 + rng.random_range(0..span + DAY)),
        })
        .collect()
}

/// Labels as Parquet: user_id, ts, and two columns to pass through (an integer and a float).
fn write_parquet_labels(path: &Path, rows: &[(String, i64)]) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Utf8, false),
        Field::new("ts", DataType::Int64, false),
        Field::new("label", DataType::Int64, true),
        Field::new("weight", DataType::Float64, true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0.as_str()))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
        Arc::new(Int64Array::from_iter((0..rows.len()).map(|i| (i % 7 != 3).then_some(i as i64 % 2)))),
        Arc::new(Float64Array::from_iter_values((0..rows.len()).map(|i| i as f64 / 4.0))),
    ];
    write_batch(path, RecordBatch::try_new(schema, columns).unwrap());
}

fn write_batch(path: &Path, batch: RecordBatch) {
    let file = std::fs::File::create(path).unwrap();
    let mut writer = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

fn read_output(path: &Path) -> RecordBatch {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let reader = ParquetRecordBatchReaderBuilder::try_new(file).unwrap().with_batch_size(1 << 20).build().unwrap();
    let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
    assert_eq!(batches.len(), 1, "one batch for the whole (small) file");
    batches.into_iter().next().unwrap()
}

/// Row `i`'s value of an attribute column, as the API would answer it.
fn value(column: &ArrayRef, i: usize) -> Value {
    if column.is_null(i) {
        return Value::Null;
    }
    match column.data_type() {
        DataType::Int64 => Value::Int(column.as_any().downcast_ref::<Int64Array>().unwrap().value(i)),
        DataType::Float64 => Value::Float(column.as_any().downcast_ref::<Float64Array>().unwrap().value(i)),
        DataType::Utf8 => Value::Text(column.as_any().downcast_ref::<StringArray>().unwrap().value(i).to_owned()),
        DataType::List(_) => {
            let list = column.as_any().downcast_ref::<ListArray>().unwrap().value(i);
            let names = list.as_any().downcast_ref::<StringArray>().unwrap();
            Value::List(names.iter().map(|n| n.unwrap().to_owned()).collect())
        }
        DataType::Map(_, _) => {
            let map = column.as_any().downcast_ref::<MapArray>().unwrap();
            let entries = map.value(i);
            let keys = entries.column(0).as_any().downcast_ref::<StringArray>().unwrap();
            let values = entries.column(1);
            Value::Map((0..entries.len()).map(|j| (keys.value(j).to_owned(), value(values, j))).collect())
        }
        other => panic!("unexpected column type {other}"),
    }
}

/// Row `i`'s attributes; `None` when every attribute column is null (no events yet).
fn attributes_at(batch: &RecordBatch, names: &[String], i: usize) -> Option<Attributes> {
    let values: Vec<(String, Value)> =
        names.iter().map(|n| (n.clone(), value(batch.column_by_name(n).unwrap(), i))).collect();
    values.iter().any(|(_, v)| *v != Value::Null).then_some(Attributes(values))
}

fn declaration(w: &World) -> Arc<squall_operators::Declaration> {
    Arc::clone(&TopologySpec::load(&w.topology).unwrap().attributes)
}

fn names(d: &squall_operators::Declaration) -> Vec<String> {
    d.attributes.iter().filter(|a| !a.hidden).map(|a| a.name.clone()).collect()
}

/// Compares every row of `out` (label rows `rows`, in order) with the oracle.
fn check_labels(w: &World, out: &Path, rows: &[(String, i64)]) {
    let d = declaration(w);
    let names = names(&d);
    let batch = read_output(out);
    assert_eq!(batch.num_rows(), rows.len());
    let users = batch.column_by_name("user_id").unwrap();
    let mut with_attributes = 0;
    for (i, (user, ts)) in rows.iter().enumerate() {
        assert_eq!(value(users, i), Value::Text(user.clone()), "row {i}: the label columns pass through in order");
        let actual = attributes_at(&batch, &names, i);
        let expected = w.expected(&d, user, *ts);
        match (&actual, &expected) {
            (None, None) => {}
            (Some(a), Some(e)) => {
                with_attributes += 1;
                if let Some(diff) = oracle::difference(a, e) {
                    panic!("row {i} ({user} at {ts}): {diff}\nactual   {a:?}\nexpected {e:?}");
                }
            }
            _ => panic!("row {i} ({user} at {ts}): {actual:?}, the oracle {expected:?}"),
        }
    }
    assert!(with_attributes > rows.len() / 2, "most labels see events ({with_attributes} of {})", rows.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_label_row_equals_the_oracle_over_the_events_strictly_before_it() {
    let w = world().await;
    let rows = label_rows(&w);
    // Resends were archived: the oracle drops them, and so must the job.
    let ids: std::collections::HashSet<_> = w
        .events
        .iter()
        .map(|a| (a.event.kind(), a.event.user_id().to_owned(), a.event.event_id().to_owned()))
        .collect();
    assert!(ids.len() + 100 < w.events.len(), "the workload has resends");

    let labels = w.dir.join("labels.parquet");
    write_parquet_labels(&labels, &rows);
    for workers in ["1", "2"] {
        let out = w.dir.join(format!("out-{workers}.parquet"));
        w.run_ok(&["--labels", labels.to_str().unwrap(), "--out", out.to_str().unwrap(), "--workers", workers]);
        check_labels(&w, &out, &rows);
        let batch = read_output(&out);
        assert_eq!(value(batch.column_by_name("label").unwrap(), 3), Value::Null, "nulls pass through");
        assert_eq!(value(batch.column_by_name("weight").unwrap(), 6), Value::Float(1.5), "floats pass through");
    }

    // The same rows as CSV (RFC 3339 times for some, a quoted column): the same attributes.
    let csv = w.dir.join("labels.csv");
    let mut text = String::from("user_id,ts,note\n");
    for (i, (user, ts)) in rows.iter().enumerate() {
        let t = if i % 3 == 0 { rfc3339(*ts) } else { ts.to_string() };
        text.push_str(&format!("{user},{t},\"a, \"\"quoted\"\" note {i}\"\n"));
    }
    std::fs::write(&csv, text).unwrap();
    let out = w.dir.join("out-csv.parquet");
    w.run_ok(&["--labels", csv.to_str().unwrap(), "--out", out.to_str().unwrap(), "--workers", "2"]);
    check_labels(&w, &out, &rows);
    let batch = read_output(&out);
    assert_eq!(value(batch.column_by_name("note").unwrap(), 4), Value::Text("a, \"quoted\" note 4".into()));
    assert_eq!(batch.schema().field(1).data_type(), &DataType::Utf8, "CSV columns pass through as text");
    std::fs::remove_dir_all(&w.dir).ok();
}

/// `ms` as RFC 3339 in UTC with milliseconds (`2025-11-21T18:33:20.000Z`).
fn rfc3339(ms: i64) -> String {
    let (secs, ms) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let rem = secs.rem_euclid(86_400);
    let date = squall_archive::layout::date(secs.div_euclid(86_400) * DAY);
    format!("{date}T{:02}:{:02}:{:02}.{ms:03}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_a_time_every_user_equals_the_oracle() {
    let w = world().await;
    let d = declaration(&w);
    let names = names(&d);
    let at = T0 + 17 * DAY + 12_345;
    let out = w.dir.join("snapshot.parquet");
    w.run_ok(&["--at", &at.to_string(), "--out", out.to_str().unwrap(), "--workers", "2"]);
    let batch = read_output(&out);
    let expected_users: Vec<String> = w
        .users()
        .into_iter()
        .filter(|u| w.events.iter().any(|a| a.event.user_id() == u && a.event.ts() < at))
        .collect();
    let users: Vec<String> = (0..batch.num_rows())
        .map(|i| match value(batch.column_by_name("user_id").unwrap(), i) {
            Value::Text(u) => u,
            v => panic!("{v:?}"),
        })
        .collect();
    assert_eq!(users, expected_users, "every user with an event before --at, by user id");
    for (i, user) in users.iter().enumerate() {
        assert_eq!(value(batch.column_by_name("ts").unwrap(), i), Value::Int(at));
        let actual = attributes_at(&batch, &names, i).expect("a user with events has attributes");
        let expected = w.expected(&d, user, at).unwrap();
        if let Some(diff) = oracle::difference(&actual, &expected) {
            panic!("{user}: {diff}");
        }
    }
    // Before every event: no user has attributes, so the file has the columns and no rows (this
    // once hung, waiting on a capability still at the least time).
    let first = w.events.iter().map(|a| a.event.ts()).min().unwrap();
    w.run_ok(&["--at", &(first - DAY).to_string(), "--out", out.to_str().unwrap(), "--workers", "2"]);
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&out).unwrap()).unwrap();
    assert_eq!(reader.metadata().file_metadata().num_rows(), 0);
    let columns: Vec<String> = reader.schema().fields().iter().map(|f| f.name().clone()).collect();
    assert_eq!(&columns[..3], ["user_id", "ts", names[0].as_str()]);
    std::fs::remove_dir_all(&w.dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_labels_files_are_refused_naming_the_row_and_column_and_nothing_is_written() {
    let w = world().await;
    let out = w.dir.join("out.parquet");
    let refuse = |name: &str, content: &[u8], expected: &str| {
        let labels = w.dir.join(name);
        std::fs::write(&labels, content).unwrap();
        let o = w.run(&["--labels", labels.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{name}: accepted");
        assert_eq!(stderr.trim(), format!("error: {}: {expected}", labels.display()), "{name}");
        assert!(!out.exists(), "{name}: an output was written");
        let left: Vec<_> = std::fs::read_dir(&w.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("tmp"))
            .collect();
        assert!(left.is_empty(), "{name}: temporary files left: {left:?}");
    };
    refuse(
        "no-ts.csv",
        b"user_id,time\nu1,1763750000000\n",
        "no column `ts`; a labels file has a column `user_id` (text) and a column `ts` (epoch milliseconds, a timestamp, or an RFC 3339 time), then any others",
    );
    refuse(
        "bad-ts.csv",
        b"user_id,ts\nu1,1763750000000\nu2,2025-11-21T18:33:20Z\nu3,yesterday\n",
        "row 3, column `ts`: \"yesterday\" is not a time (timestamp format is invalid); use epoch milliseconds or RFC 3339 (2026-09-01T00:00:00Z)",
    );
    refuse(
        "short-row.csv",
        b"user_id,ts,label\nu1,1763750000000,1\nu2,1763750000000\n",
        "row 2, column `label`: line 3 has 2 fields, the header 3",
    );
    refuse(
        "no-user.csv",
        b"user_id,ts\nu1,1763750000000\n,1763750000000\n",
        "row 2, column `user_id`: no user id (empty)",
    );
    refuse("labels.json", b"{}", "a labels file is a .parquet or a .csv file");

    // Parquet: a user id that is a number, a null time.
    let numbers = w.dir.join("numbers.parquet");
    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, false),
        Field::new("ts", DataType::Int64, false),
    ]));
    let columns: Vec<ArrayRef> = vec![Arc::new(Int64Array::from(vec![1, 2])), Arc::new(Int64Array::from(vec![T0, T0]))];
    write_batch(&numbers, RecordBatch::try_new(schema, columns).unwrap());
    let bytes = std::fs::read(&numbers).unwrap();
    refuse("numbers.parquet", &bytes, "column `user_id` is Int64; use text (string)");
    let nulls = w.dir.join("nulls.parquet");
    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Utf8, false),
        Field::new("ts", DataType::Int64, true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec!["u1", "u2", "u3"])),
        Arc::new(Int64Array::from(vec![Some(T0), Some(T0), None])),
    ];
    write_batch(&nulls, RecordBatch::try_new(schema, columns).unwrap());
    let bytes = std::fs::read(&nulls).unwrap();
    refuse("nulls.parquet", &bytes, "row 3, column `ts`: no time (null)");

    // A label column named like an attribute.
    refuse(
        "clash.csv",
        b"user_id,ts,plays\nu1,1763750000000,3\n",
        "the label column `plays` has the name of an attribute of version 1; rename it",
    );

    // A header and no rows is not an error: the output has the columns and no rows.
    let empty = w.dir.join("empty.csv");
    std::fs::write(&empty, "user_id,ts,note\n").unwrap();
    w.run_ok(&["--labels", empty.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&out).unwrap()).unwrap();
    assert_eq!(reader.metadata().file_metadata().num_rows(), 0);
    let columns: Vec<String> = reader.schema().fields().iter().map(|f| f.name().clone()).collect();
    assert_eq!(&columns[..4], ["user_id", "ts", "note", "plays"]);
    std::fs::remove_dir_all(&w.dir).ok();
}
