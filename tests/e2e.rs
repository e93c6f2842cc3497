//! End to end against the real broker and CQL server: produce events, run `squall run`, query HTTP.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use serde_json::json;
use squall::generate::{CatalogueGen, EventGen, Generated};
use squall_enrichment::{AdRow, TrackRow};
use squall_operators::{Attributes, Event, EventKind};
use squall_tests::{Fixture, Squall, brokers, cql, produce, stream_config, unique, wait_for};
use squall_topologies::oracle;

const T0: i64 = 1_763_750_000_000;

fn track(genre: &str) -> TrackRow {
    TrackRow { genre: Some(genre.into()), artist_id: Some("ar".into()), duration_ms: Some(200_000) }
}

fn ad(category: &str) -> AdRow {
    AdRow { advertiser_id: Some("adv".into()), category: Some(category.into()) }
}

fn song(f: &Fixture, event_id: &str, user: &str, track: &str, ms_played: u64, ts: i64) -> (String, String, Vec<u8>) {
    let payload = json!({"event_id": event_id, "user_id": user, "track_id": track, "ms_played": ms_played, "ts": ts});
    (f.songs.clone(), user.into(), payload.to_string().into_bytes())
}

fn impression(f: &Fixture, event_id: &str, user: &str, ad_id: &str, ts: i64) -> (String, String, Vec<u8>) {
    let payload = json!({"event_id": event_id, "user_id": user, "ad_id": ad_id, "ts": ts});
    (f.ads.clone(), user.into(), payload.to_string().into_bytes())
}

/// Waits until `user` has `plays` + `ad_impressions` == `events`, then returns the whole answer.
async fn attributes_after(squall: &Squall, user: &str, events: u64) -> serde_json::Value {
    wait_for(&format!("{events} events of {user}"), Duration::from_secs(30), || async {
        let (status, body) = squall.get(&format!("/v1/users/{user}/attributes")).await;
        let a = &body["attributes"];
        let seen = a["plays"].as_u64().unwrap_or(0) + a["ad_impressions"].as_u64().unwrap_or(0);
        if status == 200 && seen == events { Ok(body) } else { Err(format!("{status} {body}")) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn exact_attributes_with_resends_and_unknown_ids() {
    let f = Fixture::new(
        3,
        vec![("t1".into(), track("rock")), ("t2".into(), track("jazz")), ("t3".into(), track("pop"))],
        vec![("a1".into(), ad("cars"))],
    )
    .await;
    let squall = Squall::run(&f.topology("personalization", 1, "personalization_v1", &[]), &["--workers", "2"]);
    produce([
        song(&f, "e1", "alice", "t1", 183_000, T0 + 10),
        song(&f, "e2", "alice", "t1", 12_000, T0 + 20),
        song(&f, "e2", "alice", "t1", 12_000, T0 + 20), // a resend: counted once
        song(&f, "e3", "alice", "t2", 30_000, T0 + 5),
        song(&f, "e4", "alice", "t404", 50_000, T0 + 30), // not in the store: genre "unknown"
        song(&f, "e5", "alice", "t3", 40_000, T0 + 1),
        song(&f, "e6", "alice", "t2", 29_999, T0 + 2),
        impression(&f, "e7", "alice", "a1", T0 + 40),
        impression(&f, "e8", "alice", "a404", T0 + 3), // not in the store: category "unknown"
        impression(&f, "e7", "alice", "a1", T0 + 40),  // a resend
        song(&f, "e1", "bob", "t3", 200_000, T0 + 7),  // same event_id as alice's, other user: counted
    ])
    .await;

    let mut body = attributes_after(&squall, "alice", 8).await;
    // `as_of` (the cut answered) changes from run to run: `tests/freshness.rs` checks it.
    let as_of = body.as_object_mut().and_then(|b| b.remove("as_of")).expect("an as_of");
    assert_eq!(as_of["standby"], false, "{as_of}");
    assert_eq!(
        body,
        json!({
            "user_id": "alice",
            "topology": "personalization",
            "version": 1,
            "group_id": "personalization-v1",
            "attributes": {
                "plays": 6,
                "skips": 2,
                "genre_plays": {"rock": 2, "jazz": 2, "unknown": 1, "pop": 1},
                "top_genres": ["jazz", "rock", "pop"],
                "ad_impressions": 2,
                "ad_categories": {"cars": 1, "unknown": 1},
                "last_seen_ts": T0 + 40
            }
        })
    );
    let bob = attributes_after(&squall, "bob", 1).await;
    assert_eq!(bob["attributes"]["genre_plays"], json!({"pop": 1}));
    assert_eq!(squall.get("/healthz").await, (200, json!({"status": "ok"})));
    assert!(squall.stop().success(), "clean exit on SIGTERM");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_enrichment_cache_answers_hits_and_negative_results() {
    let f = Fixture::new(1, vec![("t1".into(), track("rock"))], vec![]).await;
    let squall = Squall::run(
        &f.topology("personalization", 1, "personalization_v1", &[("enrichment", "cache_ttl = \"10m\"")]),
        &[],
    );
    produce([song(&f, "e1", "carol", "t1", 60_000, T0), song(&f, "e2", "carol", "t9", 60_000, T0)]).await;
    attributes_after(&squall, "carol", 2).await;

    // Change the store behind the cache: t1 becomes jazz, t9 appears as blues.
    let session = squall_enrichment::schema::connect(&cql()).await.unwrap();
    squall_enrichment::schema::insert_tracks(
        &session,
        &f.keyspace,
        vec![("t1".into(), track("jazz")), ("t9".into(), track("blues"))],
        4,
    )
    .await
    .unwrap();
    produce([song(&f, "e3", "carol", "t1", 60_000, T0 + 1), song(&f, "e4", "carol", "t9", 60_000, T0 + 1)]).await;
    let body = attributes_after(&squall, "carol", 4).await;
    // Both answers came from the cache: the hit (rock) and the negative result (unknown).
    assert_eq!(body["attributes"]["genre_plays"], json!({"rock": 2, "unknown": 2}));

    // With a cache TTL shorter than the gap between events, the new rows are seen.
    let fresh = Squall::run(
        &f.topology("personalization", 2, "personalization_v1", &[("enrichment", "cache_ttl = \"1ms\"")]),
        &[],
    );
    let body = attributes_after(&fresh, "carol", 4).await;
    assert_eq!(body["attributes"]["genre_plays"], json!({"jazz": 2, "blues": 2}));
    let metrics = reqwest::get(format!("{}/metrics", fresh.url)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("squall_events_consumed_total"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn preload_reads_the_whole_catalogue_and_only_unknown_ids_are_looked_up() {
    // More rows than one scan page (squall_enrichment::SCAN_PAGE_ROWS), so paging is exercised.
    let tracks: Vec<(String, TrackRow)> =
        (0..12_000).map(|i| (format!("t{i}"), track(&format!("g{}", i % 7)))).collect();
    let ads = vec![("a1".to_owned(), ad("cars")), ("a2".to_owned(), ad("food"))];
    let f = Fixture::new(2, tracks, ads).await;
    let squall =
        Squall::run(&f.topology("personalization", 1, "personalization_v1", &[("enrichment", "preload = true")]), &[]);
    produce([
        song(&f, "e1", "dora", "t0", 60_000, T0),
        song(&f, "e2", "dora", "t11999", 60_000, T0 + 1),
        song(&f, "e3", "dora", "t5006", 60_000, T0 + 2),
        song(&f, "e4", "dora", "no-such-track", 60_000, T0 + 3),
        impression(&f, "e5", "dora", "a2", T0 + 4),
    ])
    .await;
    let body = attributes_after(&squall, "dora", 5).await;
    // Genre of t<i> is g<i % 7>: t0 -> g0, t11999 -> g1, t5006 -> g1.
    assert_eq!(body["attributes"]["genre_plays"], json!({"g0": 1, "g1": 2, "unknown": 1}));
    assert_eq!(body["attributes"]["ad_categories"], json!({"food": 1}));
    // Every row came from the scan; only the id the store does not have was looked up.
    let metrics = wait_for("the enrichment counters", Duration::from_secs(10), || async {
        let text = reqwest::get(format!("{}/metrics", squall.url))
            .await
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())?;
        if squall_tests::outage::metric(&text, "squall_enrichment_not_found_total", "") >= 1.0 {
            Ok(text)
        } else {
            Err(text)
        }
    })
    .await;
    let m = |name| squall_tests::outage::metric(&metrics, name, "");
    assert_eq!(m("squall_enrichment_preloaded_rows_total"), 12_002.0);
    assert_eq!(m("squall_enrichment_requests_total"), 1.0, "only no-such-track went to the store");
    assert_eq!(m("squall_enrichment_not_found_total"), 1.0);
    assert!(squall.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_records_go_to_the_dead_letter_topic_with_their_reason() {
    let f = Fixture::new(2, vec![("t1".into(), track("rock"))], vec![]).await;
    let squall = Squall::run(
        &f.topology("personalization", 1, "personalization_v1", &[("kafka", "max_message_bytes = 1024")]),
        &[],
    );
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("malformed_json", b"{\"event_id\": ".to_vec()),
        ("not_utf8", vec![0xff, 0xfe, 0x7b]),
        ("missing_field", br#"{"event_id":"b1","user_id":"dave","ms_played":1,"ts":1763750000000}"#.to_vec()),
        (
            "wrong_type",
            br#"{"event_id":"b2","user_id":"dave","track_id":"t1","ms_played":"x","ts":1763750000000}"#.to_vec(),
        ),
        (
            "invalid_value",
            br#"{"event_id":"b3","user_id":"dave","track_id":"t1","ms_played":-3,"ts":1763750000000}"#.to_vec(),
        ),
        ("oversized", format!(r#"{{"pad":"{}"}}"#, "x".repeat(2000)).into_bytes()),
    ];
    let mut records: Vec<(String, String, Vec<u8>)> =
        bad.iter().map(|(_, b)| (f.songs.clone(), "dave".to_owned(), b.clone())).collect();
    records.push(song(&f, "g1", "dave", "t1", 60_000, T0));
    produce(records).await;
    // The good event is counted despite the bad ones around it.
    attributes_after(&squall, "dave", 1).await;

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&format!("{}.dlq", f.songs)]).unwrap();
    let mut seen: BTreeMap<String, (Vec<u8>, String, i32, i64)> = BTreeMap::new();
    while seen.len() < bad.len() {
        let msg = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("dead letters within 30 s")
            .unwrap();
        let headers = msg.headers().expect("headers");
        let header = |name: &str| {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap()
        };
        assert!(!header("detail").is_empty());
        seen.insert(
            header("reason"),
            (
                msg.payload().unwrap().to_vec(),
                header("source_topic"),
                header("source_partition").parse().unwrap(),
                header("source_offset").parse().unwrap(),
            ),
        );
    }
    for (reason, payload) in &bad {
        let (got, topic, _, offset) =
            seen.get(*reason).unwrap_or_else(|| panic!("no dead letter for {reason}: {seen:?}"));
        assert_eq!(got, payload, "{reason}: original bytes");
        assert_eq!(topic, &f.songs);
        assert!(*offset >= 0);
    }
    let metrics = reqwest::get(format!("{}/metrics", squall.url)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"reason="not_utf8""#), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn generated_stream_equals_the_oracle_for_every_user() {
    let catalogue = CatalogueGen { tracks: 300, ads: 20, seed: 3 };
    let f = Fixture::new(
        4,
        (0..catalogue.tracks).map(|i| catalogue.track(i)).collect(),
        (0..catalogue.ads).map(|i| catalogue.ad(i)).collect(),
    )
    .await;
    let mut generator = EventGen::new(stream_config(200, catalogue), 11);
    let mut events: Vec<Event> = Vec::new();
    let mut records = Vec::new();
    for i in 0..4000 {
        match generator.next_at(T0 + i) {
            Generated::Event(e) => {
                let topic = if e.kind() == EventKind::Song { f.songs.clone() } else { f.ads.clone() };
                records.push((topic, e.user_id().to_owned(), e.to_json()));
                events.push(e);
            }
            Generated::Malformed(_, bytes) => records.push((f.songs.clone(), "x".into(), bytes)),
        }
    }
    // Versions 1 and 2 name the built-in declarations; version 3 declares windowed attributes in
    // the file itself.
    let windowed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../topologies/tests/windowed.toml"))
        .expect("windowed.toml");
    let v3_versions = &windowed[windowed.find("[versions.3]").expect("[versions.3]")..];
    for (version, declaration) in [
        (1, squall_tests::declaration(1)),
        (2, squall_tests::declaration(2)),
        (3, squall_tests::topology_version("tests/windowed.toml", 3)),
    ] {
        let expected = oracle::expected(&declaration, events.iter(), &catalogue.oracle());
        let file = match version {
            3 => f.topology_with_versions("windowed", 3, v3_versions, &[]),
            v => f.topology("personalization", v, &format!("personalization_v{v}"), &[]),
        };
        let squall = Squall::run(&file, &["--workers", "2"]);
        if version == 1 {
            produce(records.clone()).await;
        }
        for (user, want) in &expected {
            wait_for(&format!("{user} to equal the oracle (version {version})"), Duration::from_secs(60), || async {
                let (status, body) = squall.get(&format!("/v1/users/{user}/attributes")).await;
                let got: Attributes =
                    serde_json::from_value(body["attributes"].clone()).map_err(|e| format!("{status}: {e}"))?;
                oracle::difference(&got, want).map_or(Ok(()), Err)
            })
            .await;
        }
        let (status, body) = squall.get("/v1/users/nobody-at-all/attributes").await;
        assert_eq!(status, 404);
        assert_eq!(body["error"]["status"], 404);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn http_refuses_bad_requests_with_json_errors() {
    let f = Fixture::new(1, vec![], vec![]).await;
    let squall = Squall::run(&f.topology("personalization", 1, "personalization_v1", &[]), &[]);
    let long = "u".repeat(300);
    for (path, want) in [
        (format!("/v1/users/{long}/attributes"), 400),
        ("/v1/users/%FF%FE/attributes".to_owned(), 400),
        ("/v1/users/a%00b/attributes".to_owned(), 400),
        ("/v1/users/someone/attributes".to_owned(), 404),
        ("/v1/nothing".to_owned(), 404),
        ("/v1/users/../../etc/passwd/attributes".to_owned(), 404),
    ] {
        let (status, body) = squall.get(&path).await;
        assert_eq!(status, want, "{path}: {body}");
        assert_eq!(body["error"]["status"], want, "{path}: {body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{path}: {body}");
    }
    let resp = reqwest::Client::new().post(format!("{}/v1/users/x/attributes", squall.url)).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["status"], 405);
    // Still serving after all that.
    assert_eq!(squall.get("/healthz").await.0, 200);
}

#[test]
fn the_cli_names_what_is_wrong_and_exits_non_zero() {
    let squall = squall_tests::binary("squall");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&squall).args(args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = run(&["run", "--topology", "/nonexistent.toml"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("/nonexistent.toml") && err.contains("no such file"), "{err}");

    let bad = std::env::temp_dir().join(format!("{}.toml", unique("bad")));
    std::fs::write(&bad, "name = \"p\"\nversion = 1\nattributes = \"personalization_v9\"\n").unwrap();
    let (code, err) = run(&["run", "--topology", bad.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(err.contains("personalization_v9"), "{err}");

    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../topologies/personalization.toml");
    let (code, err) = run(&["run", "--topology", shipped, "--workers", "0"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("--workers 0"), "{err}");
    let (code, err) = run(&["run", "--topology", "x.toml", "--start-from", "yesterday"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("yesterday"), "{err}");
    let (code, _) = run(&["frobnicate"]);
    assert_eq!(code, Some(2));
}
