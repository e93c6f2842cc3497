//! Backfill, then stream, against the real broker, CQL server, `squall server` and `squall
//! archive`: the topics are archived (through a `kill -9` of the archiver), Kafka then loses its
//! first part (DeleteRecords), and a version deployed with `--backfill` applies the archive and
//! then Kafka from exactly the next offsets: through a `kill -9` of itself, it equals the oracle
//! over every event (a 30-day window, and resends that straddle the seam) and agrees with the version
//! that streamed them all. A deploy whose archive does not reach Kafka's retained offsets is
//! refused, naming the partition; a truncated file stops its partition with an error naming it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use squall_archive::Archive;
use squall_operators::Attributes;
use squall_tests::deployment::{Deployment, Span, backlog, state_dir};
use squall_tests::server::{SquallServer, find_process, status_at, wait_equal_to_oracle};
use squall_tests::{binary, brokers, produce, terminate, unique, wait_for};
use squall_topologies::{TopologySpec, oracle};

const T0: i64 = 1_763_750_000_000;
const USERS: u64 = 300;
const TOKEN: &str = "backfill-token-0123456789";
const PARTITIONS: i32 = 2;

/// Versions 2 (live), 3 (backfilled) and 4 (backfilled from a damaged copy) declare the same
/// attributes: version 1 plus plays in 7 days and plays per genre in 30 days, in daily tiles.
const VERSIONS: &str = r#"
[versions.1]
attributes = [
    { name = "plays",          op = "count", events = "song" },
    { name = "skips",          op = "count", events = "song", where = "ms_played < 30000" },
    { name = "genre_plays",    op = "count", by = "track.genre" },
    { name = "top_genres",     op = "top_k", of = "genre_plays", k = 3 },
    { name = "ad_impressions", op = "count", events = "ad" },
    { name = "ad_categories",  op = "count", by = "ad.category" },
    { name = "last_seen_ts",   op = "max",   field = "ts" },
]

[versions.2]
extends = 1
attributes = [
    { name = "plays_7d",        op = "count", events = "song", window = "7d", tile = "1d" },
    { name = "genre_plays_30d", op = "count", by = "track.genre", window = "30d", tile = "1d" },
]

[versions.3]
extends = 2
attributes = []

[versions.4]
extends = 2
attributes = []
"#;

/// A child process killed when the test ends, passed or not.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `squall archive` of the deployment's topics into `url`.
fn start_archiver(d: &Deployment, url: &Path, group: &str) -> Killed {
    let child = Command::new(binary("squall"))
        .args(["archive", "--url", url.to_str().unwrap(), "--brokers", &brokers(), "--group", group])
        .args(["--topics", &format!("{}=song,{}=ad", d.f.songs, d.f.ads)])
        .args(["--rows-per-file", "1000", "--max-file-age", "200ms"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start squall archive");
    Killed(child)
}

/// Per partition of both topics, the high watermark (the next offset to be written).
fn high_watermarks(d: &Deployment) -> BTreeMap<(String, i32), i64> {
    let reader = squall::kafka::group_reader(&brokers(), "backfill-test-watermarks").expect("a client");
    let mut out = BTreeMap::new();
    for topic in [&d.f.songs, &d.f.ads] {
        for p in 0..PARTITIONS {
            let (_, high) = reader.fetch_watermarks(topic, p, Duration::from_secs(10)).expect("watermarks");
            out.insert((topic.clone(), p), high);
        }
    }
    out
}

/// Waits until the archive at `url` holds every partition up to `high - 1`.
async fn wait_archived(url: &Path, high: &BTreeMap<(String, i32), i64>) {
    let archive = Archive::open(url.to_str().unwrap()).expect("open the archive");
    wait_for("the archive to hold every produced record", Duration::from_secs(120), || async {
        for ((topic, p), high) in high {
            let last = archive.last_offsets(topic).await.map_err(|e| e.to_string())?;
            if last.get(p).copied().unwrap_or(-1) != high - 1 {
                return Err(format!("{topic}[{p}]: archived to {:?}, produced to {}", last.get(p), high - 1));
            }
        }
        Ok(())
    })
    .await;
}

/// Deletes every record below `high` (DeleteRecords): Kafka no longer holds them.
async fn delete_below(high: &BTreeMap<(String, i32), i64>) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers()).create().expect("admin client");
    let mut tpl = TopicPartitionList::new();
    for ((topic, p), high) in high {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*high)).expect("offset");
    }
    let done = admin.delete_records(&tpl, &AdminOptions::new()).await.expect("DeleteRecords");
    for e in done.elements() {
        assert!(e.error().is_ok(), "DeleteRecords on {}[{}]: {:?}", e.topic(), e.partition(), e.error());
    }
}

/// The largest data file of `topic` partition 0 under the archive directory `dir`.
fn largest_file(dir: &Path, topic: &str) -> PathBuf {
    let mut files = Vec::new();
    for day in std::fs::read_dir(dir.join(topic)).expect("topic dir").flatten() {
        let part = day.path().join("partition=0");
        for f in std::fs::read_dir(&part).into_iter().flatten().flatten() {
            files.push((f.metadata().map(|m| m.len()).unwrap_or(0), f.path()));
        }
    }
    files.into_iter().max().map(|(_, p)| p).expect("a data file of partition 0")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_version_backfilled_from_the_archive_equals_the_oracle_over_events_kafka_no_longer_holds() {
    let d = Deployment::new("bf", 29, PARTITIONS, |f, name| {
        let checkpoints = std::env::temp_dir().join(unique("backfill-ckpt"));
        let state = format!("epoch = \"200ms\"\ncheckpoint_dir = \"{}\"", checkpoints.display());
        f.topology_with_versions(
            name,
            2,
            VERSIONS,
            &[("state", &state), ("runtime", "workers = 2"), ("feed", "changelog = true\nchangelog_partitions = 2")],
        )
    })
    .await;
    // 40 days of events, so that the 30-day window drops some.
    let (records, events) =
        backlog(&d.f, &d.catalogue, Span { events: 40_000, days: 40, users: USERS, start_ms: T0, resends: 0.05 }, 29);
    let declaration = TopologySpec::load(&d.file).and_then(|s| s.with_version(2)).expect("version 2").attributes;
    let expected: BTreeMap<String, Attributes> = oracle::expected(&declaration, events.iter(), &d.catalogue.oracle());
    assert_eq!(expected.len() as u64, USERS);
    let server = SquallServer::start(&state_dir("squall-server"), TOKEN);
    let (live, backfilled, damaged) = (d.group(2), d.group(3), d.group(4));
    server.cli_ok(&["deploy", d.file(), "--version", "2"]);
    server.wait_serving(&live).await;

    // The first three quarters of the stream are archived, through a kill -9 of the archiver and
    // a restart; then the archiver stops and the rest is only in Kafka.
    let archive_dir = std::env::temp_dir().join(unique("backfill-archive"));
    let archiver_group = unique("backfill-archiver");
    let split = records.len() * 3 / 4;
    let archiver = start_archiver(&d, &archive_dir, &archiver_group);
    produce(records[..split / 2].to_vec()).await;
    let archive = Archive::open(archive_dir.to_str().unwrap()).expect("open the archive");
    wait_for("a first archived file", Duration::from_secs(60), || async {
        let files = archive.list(&d.f.songs, 0).await.map_err(|e| e.to_string())?;
        if files.is_empty() { Err("none yet".to_owned()) } else { Ok(()) }
    })
    .await;
    drop(archiver); // kill -9
    let mut archiver = start_archiver(&d, &archive_dir, &archiver_group);
    produce(records[split / 2..split].to_vec()).await;
    let high = high_watermarks(&d);
    wait_archived(&archive_dir, &high).await;
    let stopped = terminate(&mut archiver.0, Duration::from_secs(30)).expect("the archiver stops on SIGTERM");
    assert!(stopped.success(), "squall archive exited with {stopped}");
    produce(records[split..].to_vec()).await;

    // Kafka loses the archived part (once the live version has read everything): from now on
    // it is only in the archive.
    d.fully_committed(&live, Duration::from_secs(120)).await;
    delete_below(&high).await;
    let reader = squall::kafka::group_reader(&brokers(), "backfill-test-low").expect("a client");
    for ((topic, p), high) in &high {
        let (low, end) = reader.fetch_watermarks(topic, *p, Duration::from_secs(10)).expect("watermarks");
        assert_eq!(low, *high, "{topic}[{p}] starts after the deleted records");
        assert!(end > low, "{topic}[{p}] holds the part that is not archived");
    }

    // A deploy whose archive does not reach what Kafka holds is refused, naming the partition.
    let empty = std::env::temp_dir().join(unique("backfill-empty"));
    let missing = server.cli(&["deploy", d.file(), "--version", "3", "--backfill", empty.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&missing.stderr).to_string();
    assert!(!missing.status.success() && said.contains("no archive at"), "{said}");
    std::fs::create_dir_all(&empty).unwrap();
    let refused = server.cli(&["deploy", d.file(), "--version", "3", "--backfill", empty.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&refused.stderr).to_string();
    assert!(!refused.status.success(), "deployed with an empty archive: {said}");
    assert!(
        said.contains(&format!(
            "{}[0]: the archive ends at offset -1 but Kafka's earliest retained offset is",
            d.f.songs
        )),
        "{said}"
    );
    let (status, _) = server.get(&format!("/v1/deployments/{backfilled}")).await;
    assert_eq!(status, 404, "a refused deploy records nothing");

    // The backfilled version: the archive, then Kafka from where it ends; killed once while it
    // reads the archive.
    server.cli_ok(&["deploy", d.file(), "--version", "3", "--backfill", archive_dir.to_str().unwrap()]);
    // Asked of the process itself (the server's view is a heartbeat late), as often as it answers.
    let topology_arg = server_topology(&server, &backfilled);
    let url = wait_for(&format!("{backfilled} to serve"), Duration::from_secs(60), || async {
        let (_, v) = server.get(&format!("/v1/deployments/{backfilled}")).await;
        v["urls"][0].as_str().map(str::to_owned).ok_or_else(|| v.to_string())
    })
    .await;
    let pid = find_process(&["run", topology_arg.to_str().unwrap()]).expect("the backfilling process");
    let at = wait_for(&format!("{backfilled} to read the archive"), Duration::from_secs(60), || async {
        let status = status_at(&url).await?;
        let b = &status["backfill"];
        match (b["records_done"].as_u64(), b["partitions_left"].as_u64()) {
            (Some(done), Some(left)) if done > 0 => Ok(format!("{done} archived records read, {left} partitions left")),
            _ => Err(status.to_string()),
        }
    })
    .await;
    let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    println!("killed {backfilled} at {at}");
    wait_for(&format!("{backfilled} restarted"), Duration::from_secs(60), || async {
        let (_, v) = server.get(&format!("/v1/deployments/{backfilled}")).await;
        if v["restarts"].as_u64().unwrap_or(0) >= 1 { Ok(()) } else { Err(v.to_string()) }
    })
    .await;

    for group in [&backfilled, &live] {
        wait_equal_to_oracle(&server.url, &format!("?group={group}"), &expected, Duration::from_secs(180)).await;
    }
    let diff = wait_for("the diff to compare every user", Duration::from_secs(120), || async {
        let (status, r) = server.get(&format!("/v1/diff?a={live}&b={backfilled}&wait_ms=0&sample=1000")).await;
        let all = r["caught_up"] == true && r["users_compared"].as_u64() == Some(USERS);
        if status == 200 && all { Ok(r) } else { Err(format!("{status} {r}")) }
    })
    .await;
    assert_eq!(diff["users_agreeing"].as_u64(), Some(USERS), "{diff}");
    let (_, v) = server.get(&format!("/v1/deployments/{backfilled}")).await;
    assert_ne!(v["state"], "backfilling", "{v}");
    assert_eq!(v["status"]["backfill"]["partitions_left"].as_u64(), Some(0), "{v}");

    // A truncated file: its partition stops with an error naming it; nothing else is lost.
    let damaged_dir = std::env::temp_dir().join(unique("backfill-damaged"));
    copy_dir(&archive_dir, &damaged_dir);
    let bad = largest_file(&damaged_dir, &d.f.songs);
    let bytes = std::fs::read(&bad).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    server.cli_ok(&["deploy", d.file(), "--version", "4", "--backfill", damaged_dir.to_str().unwrap()]);
    let name = bad.file_name().unwrap().to_str().unwrap().to_owned();
    let error = wait_for("the damaged file's error", Duration::from_secs(60), || async {
        let (_, v) = server.get(&format!("/v1/deployments/{damaged}")).await;
        match v["status"]["backfill"]["error"].as_str() {
            Some(e) => Ok((e.to_owned(), v["state"].clone())),
            None => Err(v.to_string()),
        }
    })
    .await;
    assert!(error.0.contains(&name), "the error names {name}: {}", error.0);
    assert_eq!(error.1, "backfilling", "the partition that stopped holds the version in backfilling");
    let _ = std::fs::remove_dir_all(&archive_dir);
    let _ = std::fs::remove_dir_all(&damaged_dir);
}

/// The topology file `squall server` wrote for `group` (it names the version's processes).
fn server_topology(server: &SquallServer, group: &str) -> PathBuf {
    server.state_dir.join("deployments").join(group).join("topology.toml")
}
