//! `squall consistency` (run as the CLI) after a version ran with `kill -9`s and resends while
//! `squall archive` archived its inputs: every user in the changelog is compared and agrees with
//! the recomputation from the archive, 0 differing, none left not comparable; `--sample` checks
//! the same users every time. It must fail, naming the user, attribute and both values, for a
//! different declaration under the same archive and for a tampered changelog message, and count
//! a user claiming an event the archive lacks as not comparable; a bad group, a missing changelog
//! and an empty archive are refused with what to do.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use squall::generate::{CatalogueGen, EventGen};
use squall_archive::Archive;
use squall_tests::{
    Fixture, Squall, binary, brokers, stream_config, terminate, unique, wait_for, wait_for_committed_at_end,
};

const T0: i64 = 1_763_750_000_000;
const PARTITIONS: i32 = 4;
const USERS: u64 = 300;
const EVENTS: usize = 16_000;
const RUNS: usize = 6;

/// Order-independent counts, and `last` (each user's songs are in one partition, in time order).
const VERSIONS: &str = r#"
[versions.1]
attributes = [
    { name = "plays",          op = "count", events = "song" },
    { name = "ms_played",      op = "sum",   field = "ms_played" },
    { name = "skips",          op = "count", events = "song", where = "ms_played < 30000" },
    { name = "genre_plays",    op = "count", by = "track.genre" },
    { name = "top_genres",     op = "top_k", of = "genre_plays", k = 3 },
    { name = "ad_impressions", op = "count", events = "ad" },
    { name = "ad_categories",  op = "count", by = "ad.category" },
    { name = "last_track",     op = "last",  field = "track_id" },
    { name = "last_seen_ts",   op = "max",   field = "ts" },
]
"#;

fn consistency(args: &[&str]) -> Output {
    Command::new(binary("squall"))
        .arg("consistency")
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run squall consistency")
}

fn report(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "a JSON report ({e}): stdout {} stderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn start_archiver(url: &Path, group: &str, f: &Fixture) -> Child {
    Command::new(binary("squall"))
        .args(["archive", "--url", url.to_str().unwrap(), "--brokers", &brokers(), "--group", group])
        .args(["--topics", &format!("{}=song,{}=ad", f.songs, f.ads)])
        .args(["--rows-per-file", "500", "--max-file-age", "200ms"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start squall archive")
}

#[tokio::test(flavor = "multi_thread")]
async fn after_kills_and_resends_every_user_agrees_with_the_archive_and_differences_are_caught() {
    let seed: u64 = std::env::var("SQUALL_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    println!("consistency test seed {seed} (rerun with SQUALL_CRASH_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let catalogue = CatalogueGen { tracks: 200, ads: 20, seed: 5 };
    let f = Fixture::with_catalogue(PARTITIONS, &catalogue).await;
    let dir = std::env::temp_dir().join(unique("consistency"));
    let (checkpoints, archive_dir) = (dir.join("checkpoints"), dir.join("archive"));
    std::fs::create_dir_all(&archive_dir).unwrap();
    let state = format!("epoch = \"100ms\"\ncompact_every = 5\ncheckpoint_dir = \"{}\"", checkpoints.display());
    let extra = [("state", state.as_str()), ("feed", "changelog = true")];
    let name = unique("cons");
    let topology = f.topology_with_versions(&name, 1, VERSIONS, &extra);
    let group = format!("{name}-v1");
    let archive_group = unique("cons_archive");
    let mut archiver = start_archiver(&archive_dir, &archive_group, &f);
    let (t, a) = (topology.to_str().unwrap(), archive_dir.to_str().unwrap());

    // Resends (the generator's) and kill -9 at random moments while the events flow.
    let mut generator = EventGen::new(stream_config(USERS, catalogue), seed);
    let mut at = T0;
    let mut batches: Vec<_> = (0..RUNS).map(|_| f.batch(&mut generator, &mut at, EVENTS / RUNS).0).collect();
    let last = batches.pop().expect("batches");
    let (mut kills, mut recoveries) = (0, 0);
    let recovered = |s: &Squall| s.stdout().iter().filter(|l| l.contains("recovered from checkpoint")).count();
    for batch in batches {
        let squall = Squall::run(&topology, &["--workers", "2"]);
        recoveries += recovered(&squall);
        let producing = tokio::spawn(squall_tests::produce(batch));
        if kills == 0 {
            // The first run lives until its changelog holds users: with some seeds every run was
            // killed before its feed had written any, and the mid-stream check had nothing to read.
            let cut = wait_for("events applied", Duration::from_secs(60), || async {
                let (_, s) = squall.get("/v1/status").await;
                match (s["applied"].as_u64(), s["freshness"]["cut"].as_u64()) {
                    (Some(a), Some(c)) if a > 0 => Ok(c),
                    _ => Err(s.to_string()),
                }
            })
            .await;
            wait_for("the changelog to hold them", Duration::from_secs(60), || async {
                let (_, s) = squall.get("/v1/status").await;
                let feeds = s["feeds"].as_array().cloned().unwrap_or_default();
                let written = feeds.iter().find(|f| f["feed"] == "changelog").and_then(|f| f["written_cut"].as_u64());
                if written.is_some_and(|w| w > cut) { Ok(()) } else { Err(s.to_string()) }
            })
            .await;
        }
        // The last of these kills comes early, so the version stops short of the batch's end.
        let early = kills + 2 == RUNS;
        tokio::time::sleep(Duration::from_millis(rng.random_range(if early { 0..100 } else { 50..1500 }))).await;
        squall.kill9();
        kills += 1;
        producing.await.expect("producer");
    }
    // Mid-stream (the version killed part way through a batch, each partition read to its own
    // offset): every user's evidence matches per-partition prefixes of the archive, and agrees.
    wait_for_committed_at_end(&brokers(), &archive_group, &[&f.songs, &f.ads], PARTITIONS, Duration::from_secs(120))
        .await;
    let out = consistency(&[&group, "--topology", t, "--archive", a, "--json"]);
    let r = report(&out);
    assert!(out.status.success(), "{r:#}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!((r["users_compared"].clone(), r["users_differing"].as_u64()), (r["users_checked"].clone(), Some(0)));
    let short = r["users_behind_archive"].as_u64().unwrap();
    assert!(short > 0, "the version stopped short of the archive's end for some users: {r:#}");
    println!(
        "consistency test: mid-stream, {} users compared, {short} short of the archive's end, all agreeing",
        r["users_compared"]
    );
    let squall = Squall::run(&topology, &["--workers", "2"]);
    recoveries += recovered(&squall);
    assert!(recoveries >= 1, "at least one restart resumed from a checkpoint");
    squall_tests::produce(last).await;
    wait_for_committed_at_end(&brokers(), &group, &[&f.songs, &f.ads], PARTITIONS, Duration::from_secs(120)).await;
    wait_for_committed_at_end(&brokers(), &archive_group, &[&f.songs, &f.ads], PARTITIONS, Duration::from_secs(120))
        .await;
    let status = terminate(&mut archiver, Duration::from_secs(30)).expect("the archiver exits on SIGTERM");
    assert!(status.success(), "squall archive exited with {status}");
    println!("consistency test: {kills} kills, {recoveries} recoveries from a checkpoint");

    // Every user: compared (the archive holds every event the version applied) and agreeing.
    let out = consistency(&[&group, "--topology", t, "--archive", a, "--json"]);
    let r = report(&out);
    assert!(out.status.success(), "{r:#}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(r["users_in_changelog"].as_u64().unwrap() >= USERS * 9 / 10, "{r:#}");
    assert_eq!(r["users_checked"], r["users_in_changelog"], "{r:#}");
    assert_eq!(r["users_compared"], r["users_checked"], "none not comparable: {r:#}");
    assert_eq!((r["users_differing"].as_u64(), r["users_agreeing"].clone()), (Some(0), r["users_compared"].clone()));
    for a in r["attributes"].as_array().unwrap() {
        assert_eq!((a["agree"].clone(), a["differ"].as_u64()), (r["users_compared"].clone(), Some(0)), "{a}");
    }
    assert_eq!(r["attributes"].as_array().unwrap().len(), 9, "{r:#}");

    // The table, as the README shows it.
    let out = consistency(&[&group, "--topology", t, "--archive", a, "--sample", "50"]);
    let table = String::from_utf8_lossy(&out.stdout);
    println!("{table}");
    assert!(out.status.success(), "{table}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(table.contains("50 users checked") && table.contains("differing 0"), "{table}");

    let out = consistency(&[&group, "--topology", t, "--archive", a, "--sample", "20", "--json"]);
    assert_eq!(report(&out)["users_checked"], 20);

    // Another declaration under the same name and version: skips counted below 10 s.
    let other = f.topology_with_versions(&name, 1, &VERSIONS.replace("ms_played < 30000", "ms_played < 10000"), &extra);
    let out = consistency(&[&group, "--topology", other.to_str().unwrap(), "--archive", a, "--json"]);
    let r = report(&out);
    assert!(!out.status.success(), "a different declaration must fail: {r:#}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("differ from the recomputation"));
    assert!(r["users_differing"].as_u64().unwrap() > 0, "{r:#}");
    let skips = r["attributes"].as_array().unwrap().iter().find(|a| a["name"] == "skips").unwrap().clone();
    assert!(skips["differ"].as_u64().unwrap() > 0, "{skips}");
    let plays = r["attributes"].as_array().unwrap().iter().find(|a| a["name"] == "plays").unwrap().clone();
    assert_eq!(plays["differ"], 0, "{plays}");
    let example = &r["examples"][0];
    assert_eq!(example["attribute"], "skips", "{r:#}");
    let out = consistency(&[&group, "--topology", other.to_str().unwrap(), "--archive", a, "--sample", "50"]);
    let table = String::from_utf8_lossy(&out.stdout);
    println!("{table}{}", String::from_utf8_lossy(&out.stderr));
    assert!(table.contains("differing values") && table.contains("skips: live"), "{table}");
    assert!(example["live"].as_u64().unwrap() > example["archive"].as_u64().unwrap(), "{example}");

    // Tampered changelog messages with a later cut: one with the same evidence and one more play
    // (a difference), one claiming more events than the archive holds (not comparable).
    let consumer: rdkafka::consumer::BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", brokers()).set("group.id", unique("peek")).create().unwrap();
    let topic = format!("{group}.attributes");
    let [mut tampered, mut ahead] = first_messages(&consumer, &topic);
    squall.kill9();
    let user = tampered["user_id"].as_str().unwrap().to_owned();
    tampered["attributes"]["plays"] = serde_json::json!(tampered["attributes"]["plays"].as_u64().unwrap() + 1);
    ahead["events"] = serde_json::json!(ahead["events"].as_u64().unwrap() + 1_000_000);
    ahead["events_hash"] = serde_json::json!("0123456789abcdef");
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", brokers()).create().unwrap();
    for mut m in [tampered, ahead] {
        m["cut"] = serde_json::json!(m["cut"].as_u64().unwrap() + 1_000_000_000);
        let (key, payload) = (m["user_id"].as_str().unwrap().to_owned(), serde_json::to_vec(&m).unwrap());
        producer.send(FutureRecord::to(&topic).key(&key).payload(&payload), Duration::from_secs(10)).await.unwrap();
    }
    let out = consistency(&[&group, "--topology", t, "--archive", a, "--json"]);
    let r = report(&out);
    assert!(!out.status.success(), "a tampered changelog must fail: {r:#}");
    assert_eq!(
        (r["users_differing"].as_u64(), r["not_comparable"]["archive_behind"].as_u64()),
        (Some(1), Some(1)),
        "{r:#}"
    );
    assert_eq!(r["users_compared"].as_u64().unwrap() + 1, r["users_checked"].as_u64().unwrap(), "{r:#}");
    let example = &r["examples"][0];
    assert_eq!((example["user_id"].as_str(), example["attribute"].as_str()), (Some(user.as_str()), Some("plays")));
    assert_eq!(example["live"].as_u64(), example["archive"].as_u64().map(|p| p + 1), "{example}");
    // A sample is the same users on every run: with the tampered user in it or not, the same report.
    let sample = || consistency(&[&group, "--topology", t, "--archive", a, "--sample", "60", "--json"]);
    let (s1, s2) = (sample(), sample());
    assert_eq!((report(&s1), s1.status), (report(&s2), s2.status), "the same sample");

    // Refusals: a group of another topology, a version with no changelog, an archive without the topics.
    let out = consistency(&["other-v1", "--topology", t, "--archive", a]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a group id of topology"), "{out:?}");
    let no_changelog = f.topology_with_versions(&unique("none"), 1, VERSIONS, &extra);
    let spec_name = squall_topologies::TopologySpec::load(&no_changelog).unwrap().name;
    let out = consistency(&[&format!("{spec_name}-v1"), "--topology", no_changelog.to_str().unwrap(), "--archive", a]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no changelog topic"), "{out:?}");
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = consistency(&[&group, "--topology", t, "--archive", empty.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds no files of"), "{out:?}");

    assert!(Archive::open(a).is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The first two messages read from `topic` (any partitions) of two different users, as JSON.
fn first_messages(consumer: &rdkafka::consumer::BaseConsumer, topic: &str) -> [serde_json::Value; 2] {
    use rdkafka::Message as _;
    use rdkafka::consumer::Consumer as _;
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in md.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())) {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut found: Vec<serde_json::Value> = Vec::new();
    for _ in 0..1000 {
        if let Some(Ok(m)) = consumer.poll(Duration::from_secs(1)) {
            let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            if found.iter().all(|f| f["user_id"] != v["user_id"]) {
                found.push(v);
            }
            if let Ok(two) = <[serde_json::Value; 2]>::try_from(found.clone()) {
                return two;
            }
        }
    }
    panic!("no two users in {topic}");
}
