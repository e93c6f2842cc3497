//! `squall archive` against the dev broker, into a local directory and into the dev S3 server
//! (`s3s-fs`, named by `SQUALL_TEST_S3`): every produced record is archived exactly once with the
//! decoder's columns or dead-letter reason, across a `kill -9` of the archiver and a restart.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use squall_archive::{Archive, ArchivedRecord};
use squall_operators::event::{AdImpression, DecodeLimits, Event, EventKind, SongCompletion, decode};
use squall_tests::{binary, brokers, terminate, unique, wait_for, wait_for_committed_at_end};

const PARTITIONS: i32 = 3;
/// Records per partition per phase (one before the kill, one after).
const PER_PHASE: usize = 700;

/// The payload of record `i` of partition `p` of a topic of `kind`: mostly what producers write,
/// some with other spacing (kept verbatim), some malformed (dead letters).
fn payload(kind: EventKind, p: i32, i: usize) -> (String, String) {
    let user = format!("u{}", (i * 7 + p as usize) % 50);
    let ts = 1_763_750_000_000 + i as i64 * 10;
    let event = match kind {
        EventKind::Song => Event::Song(SongCompletion {
            event_id: format!("s{p}-{i}").into(),
            user_id: user.as_str().into(),
            track_id: format!("t{}", i % 13).into(),
            ms_played: (i as u64 * 997) % 400_000,
            ts,
        }),
        EventKind::Ad => Event::Ad(AdImpression {
            event_id: format!("a{p}-{i}").into(),
            user_id: user.as_str().into(),
            ad_id: format!("a{}", i % 5).into(),
            ts,
        }),
    };
    let json = String::from_utf8(event.to_json()).unwrap();
    let value = match i % 50 {
        7 => "{\"event_id\": \"x\", \"user_id\": ".to_owned(),
        19 => r#"{"event_id":"x","user_id":"u1","track_id":"t1","ad_id":"a1","ms_played":-1,"ts":-5}"#.to_owned(),
        23 => json.replace(",", ", "),
        _ => json,
    };
    (user, value)
}

struct Topics {
    song: String,
    ad: String,
}

impl Topics {
    fn each(&self) -> [(&str, EventKind); 2] {
        [(self.song.as_str(), EventKind::Song), (self.ad.as_str(), EventKind::Ad)]
    }
}

fn produce_phase(topics: &Topics, phase: usize) {
    for (topic, kind) in topics.each() {
        let partitions: Vec<i32> = (0..PARTITIONS).collect();
        squall_tests::produce_to_partitions(topic, &partitions, phase * PER_PHASE, PER_PHASE, |p, i| {
            payload(kind, p, i)
        });
    }
}

fn start_archiver(url: &str, group: &str, topics: &Topics, env: &[(String, String)]) -> Child {
    Command::new(binary("squall"))
        .args(["archive", "--url", url, "--brokers", &brokers(), "--group", group])
        .args(["--topics", &format!("{}=song,{}=ad", topics.song, topics.ad)])
        .args(["--rows-per-file", "97", "--max-file-age", "200ms"])
        .envs(env.iter().map(|(k, v)| (k.to_uppercase(), v)))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start squall archive")
}

/// Waits until every partition of both topics is archived up to `last` (inclusive).
async fn wait_archived(archive: &Archive, topics: &Topics, last: i64) {
    wait_for(&format!("every partition archived up to offset {last}"), Duration::from_secs(90), || async {
        for (topic, _) in topics.each() {
            let offsets = archive.last_offsets(topic).await.map_err(|e| e.to_string())?;
            let want: BTreeMap<i32, i64> = (0..PARTITIONS).map(|p| (p, last)).collect();
            if offsets != want {
                return Err(format!("{topic}: {offsets:?}"));
            }
        }
        Ok(())
    })
    .await;
}

async fn archive_every_record_once(url: String, options: Vec<(String, String)>) {
    let topics = Topics { song: unique("arch_song"), ad: unique("arch_ad") };
    for (topic, _) in topics.each() {
        squall::kafka::create_topics(&brokers(), &[topic.to_owned()], PARTITIONS).await.expect("create topic");
    }
    let group = unique("arch_group");
    let archive = Archive::open_with(&url, options.clone()).expect("open the archive");

    // Phase 1, then kill -9 as soon as the archiver has stored something (it is still writing).
    produce_phase(&topics, 0);
    let mut archiver = start_archiver(&url, &group, &topics, &options);
    wait_for("a first archived file", Duration::from_secs(60), || async {
        let files = archive.list(&topics.song, 0).await.map_err(|e| e.to_string())?;
        if files.is_empty() { Err("none yet".to_string()) } else { Ok(()) }
    })
    .await;
    archiver.kill().expect("kill -9 the archiver");
    archiver.wait().expect("reap");

    // Phase 2 with a restarted archiver: it resumes where the archive ends.
    produce_phase(&topics, 1);
    let mut archiver = start_archiver(&url, &group, &topics, &options);
    let last = (2 * PER_PHASE - 1) as i64;
    wait_archived(&archive, &topics, last).await;
    let status = terminate(&mut archiver, Duration::from_secs(30)).expect("the archiver exits on SIGTERM");
    assert!(status.success(), "squall archive exited with {status}");
    wait_for_committed_at_end(&brokers(), &group, &[&topics.song, &topics.ad], PARTITIONS, Duration::from_secs(30))
        .await;

    let limits = DecodeLimits::default();
    let mut dead_letters = 0;
    for (topic, kind) in topics.each() {
        let files = archive.list_topic(topic).await.expect("a consistent manifest");
        assert_eq!(files.keys().copied().collect::<Vec<_>>(), (0..PARTITIONS).collect::<Vec<_>>());
        for (p, files) in files {
            assert_eq!(files[0].from_offset, 0, "{topic}/{p} archived from its start");
            let mut records: Vec<ArchivedRecord> = Vec::new();
            for f in &files {
                records.extend(archive.read(f).await.expect("a readable file").records());
            }
            let offsets: Vec<i64> = records.iter().map(|r| r.offset).collect();
            assert_eq!(offsets, (0..=last).collect::<Vec<_>>(), "{topic}/{p}: every offset exactly once");
            for r in &records {
                let (key, value) = payload(kind, p, r.offset as usize);
                assert_eq!((r.topic.as_str(), r.partition), (topic, p));
                assert_eq!(r.value, value.as_bytes(), "{topic}/{p}@{}", r.offset);
                assert_eq!(r.key.as_deref(), Some(key.as_bytes()));
                assert!(r.timestamp.is_some_and(|t| t > 1_700_000_000_000), "a Kafka timestamp");
                match decode(kind, value.as_bytes(), &limits) {
                    Ok(e) => assert_eq!((r.event.as_ref(), r.dlq_reason), (Some(&e), None)),
                    Err(e) => {
                        dead_letters += 1;
                        assert_eq!((r.event.as_ref(), r.dlq_reason), (None, Some(e.reason)))
                    }
                }
            }
        }
    }
    assert!(dead_letters > 0);
}

#[tokio::test]
async fn archives_every_record_once_in_a_local_directory_across_a_kill() {
    let dir = std::env::temp_dir().join(unique("squall_archive"));
    archive_every_record_once(dir.to_str().unwrap().to_owned(), Vec::new()).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn archives_every_record_once_in_s3_across_a_kill() {
    let s3 = std::env::var("SQUALL_TEST_S3").unwrap_or_else(|_| {
        panic!(
            "SQUALL_TEST_S3 is not set: this test needs the dev S3 server. Run `scripts/devenv.sh up` \
             and export SQUALL_TEST_S3=127.0.0.1:8014 (its SQUALL_S3_PORT)"
        )
    });
    let options = [
        ("aws_access_key_id", "squall".to_owned()),
        ("aws_secret_access_key", "squall-dev-secret".to_owned()),
        ("aws_region", "us-east-1".to_owned()),
        ("aws_endpoint", format!("http://{s3}")),
        ("aws_allow_http", "true".to_owned()),
    ];
    let options = options.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    archive_every_record_once(format!("s3://squall/{}", unique("archive")), options).await;
}
