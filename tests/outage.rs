//! Outage tests: the broker and the CQL server go away and come back while events flow, and
//! squall is killed with checkpoints in the CQL store. Each test starts its own broker (nisshi,
//! durable SQLite storage) and CQL dev server on private loopback ports, so it can stop them.
//! Deduplication is off and the streams have no resends: an event applied twice, lost, or
//! enriched as `unknown` by mistake shows up as a user differing from the oracle.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use squall::generate::{CatalogueGen, EventGen, Generated};
use squall_enrichment::schema;
use squall_operators::checkpoint::{CheckpointError, CheckpointStore, Part, RecoveryScope};
use squall_operators::checkpoint_cql::CqlCheckpoints;
use squall_operators::{Event, EventKind, KeyGroups};
use squall_tests::outage::{Broker, CqlServer, PrivateFixture, metric};
use squall_tests::parts::{id, key_groups, off, part, snapshot};
use squall_tests::{Squall, stream_config_without_resends, unique, wait_for, wait_for_committed_at_end};
use squall_topologies::oracle;

const T0: i64 = 1_763_750_000_000;
const PARTITIONS: i32 = 4;

type Record = (String, String, Vec<u8>);

/// `n` generated events (2% unknown ids, 1% malformed records, no resends) for `f`'s topics: the
/// events, their records in order, and the number of malformed records.
fn stream(
    f: &PrivateFixture,
    catalogue: CatalogueGen,
    users: u64,
    n: i64,
    seed: u64,
) -> (Vec<Event>, Vec<Record>, usize) {
    let config = stream_config_without_resends(users, catalogue);
    let mut generator = EventGen::new(config, seed);
    let (mut events, mut records, mut malformed) = (Vec::new(), Vec::new(), 0);
    for i in 0..n {
        match generator.next_at(T0 + i) {
            Generated::Event(e) => {
                let topic = if e.kind() == EventKind::Song { f.songs.clone() } else { f.ads.clone() };
                records.push((topic, e.user_id().to_owned(), e.to_json()));
                events.push(e);
            }
            Generated::Malformed(_, bytes) => {
                malformed += 1;
                records.push((f.songs.clone(), "x".into(), bytes));
            }
        }
    }
    (events, records, malformed)
}

fn catalogue() -> CatalogueGen {
    CatalogueGen { tracks: 200, ads: 20, seed: 5 }
}

async fn fixture(broker: &Broker, cql: &CqlServer) -> PrivateFixture {
    let c = catalogue();
    PrivateFixture::new(
        broker.addr(),
        cql.addr(),
        PARTITIONS,
        (0..c.tracks).map(|i| c.track(i)).collect(),
        (0..c.ads).map(|i| c.ad(i)).collect(),
    )
    .await
}

/// The users whose served attributes differ from the oracle over `events`, with the difference.
async fn mismatches(squall: &Squall, events: &[Event]) -> BTreeMap<String, String> {
    let expected = oracle::expected(&squall_tests::declaration(1), events.iter(), &catalogue().oracle());
    squall.oracle_mismatches(&expected).await
}

/// Waits until every user's attributes equal the oracle over `events`.
async fn wait_for_oracle(what: &str, squall: &Squall, events: &[Event], timeout: Duration) {
    wait_for(what, timeout, || async {
        let m = mismatches(squall, events).await;
        if m.is_empty() { Ok(()) } else { Err(format!("{} users differ, e.g. {:?}", m.len(), m.iter().next())) }
    })
    .await;
}

async fn metrics_text(squall: &Squall) -> String {
    reqwest::get(format!("{}/metrics", squall.url)).await.expect("GET /metrics").text().await.expect("metrics body")
}

/// Waits until the metric `name` (summed over its series) is at least `at_least`; its value.
async fn wait_for_metric(squall: &Squall, name: &str, at_least: f64, timeout: Duration) -> f64 {
    wait_for(&format!("{name} >= {at_least}"), timeout, || async {
        let v = metric(&metrics_text(squall).await, name, "");
        if v >= at_least { Ok(v) } else { Err(format!("{name} = {v}")) }
    })
    .await
}

/// Waits until `topic` holds `n` records in all.
async fn wait_for_records(brokers: &str, topic: &str, n: i64) {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", brokers).create().expect("consumer");
    wait_for(&format!("{n} records in {topic}"), Duration::from_secs(60), || async {
        let mut total = 0;
        for p in 0..PARTITIONS {
            let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(5)).map_err(|e| e.to_string())?;
            total += high - low;
        }
        if total == n { Ok(()) } else { Err(format!("{total} records")) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_killed_and_restarted_mid_run_loses_nothing() {
    let mut broker = Broker::start();
    let cql = CqlServer::start();
    let f = fixture(&broker, &cql).await;
    let checkpoints = std::env::temp_dir().join(unique("checkpoints"));
    let topology = f.topology(
        "brokerout",
        &[(
            "state",
            &format!("epoch = \"100ms\"\ndedup_horizon = \"0s\"\ncheckpoint_dir = \"{}\"", checkpoints.display()),
        )],
    );
    let (events, records, malformed) = stream(&f, catalogue(), 300, 9_000, 11);
    let (first, rest) = records.split_at(3_000);
    let (during, after) = rest.split_at(3_000);
    // Each third's events: records minus the malformed ones, in order.
    let events_in = |rs: &[Record]| rs.iter().filter(|(_, k, _)| k != "x").count();
    let (n1, n2) = (events_in(first), events_in(during));

    let squall = Squall::run(&topology, &["--workers", "2"]);
    f.produce(first.to_vec()).await;
    wait_for_oracle("the first third applied", &squall, &events[..n1], Duration::from_secs(60)).await;
    let errors_before = metric(&metrics_text(&squall).await, "squall_source_errors_total", "");

    broker.kill9();
    let outage = Instant::now();
    // The sources notice (librdkafka reports the lost connection) and keep polling.
    wait_for_metric(&squall, "squall_source_errors_total", errors_before + 1.0, Duration::from_secs(30)).await;
    // The length of the outage (not a synchronisation): long enough for reconnect attempts to
    // fail and for cuts completing meanwhile to try to commit their offsets.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Records produced while the broker is down wait in the producer and are delivered after the restart.
    let producing = {
        let (g, during) = (f.clone(), during.to_vec());
        tokio::spawn(async move { g.produce(during).await })
    };
    broker.restart();
    let down_for = outage.elapsed();
    producing.await.expect("producer");
    f.produce(after.to_vec()).await;

    wait_for_oracle("every event applied after the broker restart", &squall, &events, Duration::from_secs(90)).await;
    let applied = metric(&metrics_text(&squall).await, "squall_events_applied_total", "");
    assert_eq!(applied as usize, events.len(), "each event applied exactly once ({n1} + {n2} + the rest)");
    // The offset committer and the dead-letter producer came through the outage too.
    wait_for_committed_at_end(&f.brokers, "brokerout-v1", &[&f.songs, &f.ads], PARTITIONS, Duration::from_secs(60))
        .await;
    wait_for_records(&f.brokers, &format!("{}.dlq", f.songs), malformed as i64).await;
    let text = metrics_text(&squall).await;
    println!(
        "broker outage: down {down_for:?}, events={} users=300 malformed={malformed} source_errors={} commit_errors={}",
        events.len(),
        metric(&text, "squall_source_errors_total", ""),
        metric(&text, "squall_offset_commits_total", "result=\"error\""),
    );
    squall.stop();
    let _ = std::fs::remove_dir_all(&checkpoints);
}

#[tokio::test(flavor = "multi_thread")]
async fn cql_server_stopped_and_restarted_mid_run_waits_and_enriches_everything() {
    let broker = Broker::start();
    let mut cql = CqlServer::start();
    let f = fixture(&broker, &cql).await;
    // A cache that forgets at once: every lookup goes to the store. The store's outage outlasts the
    // deadline, and `wait` must hold the events instead of enriching them as unknown.
    let topology = f.topology(
        "cqlout",
        &[
            (
                "enrichment",
                "cache_capacity = 16\ncache_ttl = \"1ms\"\nrequest_timeout = \"300ms\"\ndeadline = \"1s\"\non_timeout = \"wait\"",
            ),
            ("state", "epoch = \"100ms\"\ndedup_horizon = \"0s\"\ncheckpoint_store = \"cql\"\ncompact_every = 10"),
        ],
    );
    let (events, records, _) = stream(&f, catalogue(), 300, 6_000, 12);
    let (first, second) = records.split_at(2_000);
    let n1 = first.iter().filter(|(_, k, _)| k != "x").count();

    let squall = Squall::run(&topology, &["--workers", "2"]);
    f.produce(first.to_vec()).await;
    wait_for_oracle("the first third applied", &squall, &events[..n1], Duration::from_secs(60)).await;

    cql.stop();
    let outage = Instant::now();
    f.produce(second.to_vec()).await;
    // Lookups fail, are retried, and pass the deadline still waiting.
    wait_for_metric(&squall, "squall_enrichment_deadline_waits_total", 1.0, Duration::from_secs(30)).await;
    // The length of the outage beyond the deadline (not a synchronisation).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let text = metrics_text(&squall).await;
    let applied_during = metric(&text, "squall_events_applied_total", "");
    assert!(
        (applied_during as usize) < events.len(),
        "events needing the store must wait while it is down ({applied_during} of {} applied)",
        events.len()
    );
    cql.restart();
    let down_for = outage.elapsed();

    wait_for_oracle(
        "every event enriched and applied after the CQL restart",
        &squall,
        &events,
        Duration::from_secs(90),
    )
    .await;
    let text = metrics_text(&squall).await;
    assert_eq!(metric(&text, "squall_enrichment_degraded_total", ""), 0.0, "on_timeout = wait never degrades");
    assert!(metric(&text, "squall_enrichment_retries_total", "") >= 1.0);
    assert_eq!(metric(&text, "squall_events_applied_total", "") as usize, events.len());
    // Checkpoint writes failed during the outage and were retried; the cuts kept completing.
    let cut_then = metric(&text, "squall_checkpoint_last_complete_cut", "");
    wait_for_metric(&squall, "squall_checkpoint_last_complete_cut", cut_then + 1.0, Duration::from_secs(30)).await;
    println!(
        "CQL outage: down {down_for:?}, events={} applied while down={applied_during} requests={} request_errors={} \
         retries={} deadline_waits={} degraded=0 checkpoint_errors={}",
        events.len(),
        metric(&text, "squall_enrichment_requests_total", ""),
        metric(&text, "squall_enrichment_request_errors_total", ""),
        metric(&text, "squall_enrichment_retries_total", ""),
        metric(&text, "squall_enrichment_deadline_waits_total", ""),
        metric(&text, "squall_checkpoint_errors_total", ""),
    );
    squall.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_with_cql_checkpoints_loses_nothing_and_counts_nothing_twice() {
    let seed: u64 = std::env::var("SQUALL_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    println!("CQL crash test seed {seed} (rerun with SQUALL_CRASH_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let broker = Broker::start();
    let cql = CqlServer::start();
    let f = fixture(&broker, &cql).await;
    let topology = f.topology(
        "cqlcrash",
        &[("state", "epoch = \"100ms\"\ncompact_every = 5\ndedup_horizon = \"0s\"\ncheckpoint_store = \"cql\"")],
    );
    let (events, records, _) = stream(&f, catalogue(), 300, 24_000, seed);
    let mut batches: Vec<Vec<Record>> = records.chunks(records.len().div_ceil(8)).map(<[Record]>::to_vec).collect();
    let last = batches.pop().expect("8 batches");

    let (mut kills, mut recoveries) = (0, 0);
    for batch in batches {
        let squall = Squall::run(&topology, &["--workers", "2"]);
        recoveries += squall.stdout().iter().filter(|l| l.contains("recovered from checkpoint")).count();
        let producing = {
            let g = f.clone();
            tokio::spawn(async move { g.produce(batch).await })
        };
        // The moment of the kill is random by design; nothing is awaited here.
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..1500))).await;
        squall.kill9();
        kills += 1;
        producing.await.expect("producer");
    }
    let started = Instant::now();
    let squall = Squall::run(&topology, &["--workers", "2"]);
    let restart = started.elapsed();
    recoveries += squall.stdout().iter().filter(|l| l.contains("recovered from checkpoint")).count();
    f.produce(last).await;
    wait_for_oracle("every user equal to the oracle", &squall, &events, Duration::from_secs(120)).await;
    wait_for_committed_at_end(&f.brokers, "cqlcrash-v1", &[&f.songs, &f.ads], PARTITIONS, Duration::from_secs(60))
        .await;
    let text = metrics_text(&squall).await;
    let (writes, write_s) = (
        metric(&text, "squall_checkpoint_write_seconds_count", ""),
        metric(&text, "squall_checkpoint_write_seconds_sum", ""),
    );
    println!(
        "CQL crash test: kills={kills} recoveries={recoveries} events={} users=300 mismatches=0 \
         last start (recovery + catch-up to serving)={restart:?} parts written={writes} mean part write={:.1} ms \
         checkpoint bytes={}",
        events.len(),
        1000.0 * write_s / writes.max(1.0),
        metric(&text, "squall_checkpoint_bytes_total", ""),
    );
    assert!(recoveries >= 1, "at least one restart resumed from a CQL checkpoint");
    squall.stop();
}

/// Every stored row of `table` in `keyspace` (a full scan; small test tables only).
async fn rows(session: &scylla::client::session::Session, keyspace: &str, select: &str) -> Vec<(String, i64)> {
    let q = format!("SELECT {select} FROM {keyspace}");
    session
        .query_unpaged(q, ())
        .await
        .expect("scan")
        .into_rows_result()
        .expect("rows")
        .rows::<(String, i64)>()
        .expect("typed rows")
        .map(|r| r.expect("row"))
        .collect()
}

/// The CQL store keeps the directory's semantics: rows of an incomplete cut never change what
/// recovery returns and are deleted by it; an expired user is forgotten; compaction folds a key
/// group that changed enough into a base and deletes expired dedup buckets whole; each process of
/// another layout reads only its key groups; a reopened store (a restart) recovers the same state.
#[tokio::test(flavor = "multi_thread")]
async fn cql_checkpoint_store_recovers_the_latest_complete_cut_and_compacts() {
    let cql = CqlServer::start();
    let session = Arc::new(schema::connect(&cql.addr()).await.expect("connect"));
    let ks = unique("ks");
    schema::create(&session, &ks, 1).await.expect("keyspace");
    let open = || CqlCheckpoints::open(Arc::clone(&session), &ks, "g-v1", tokio::runtime::Handle::current());
    let all = RecoveryScope::single(key_groups(), 2);
    let mut store = open().await.expect("open");
    // Another version's rows in the same tables must never be touched.
    let mut other = CqlCheckpoints::open(Arc::clone(&session), &ks, "g-v2", tokio::runtime::Handle::current())
        .await
        .expect("open v2");
    let groups_table = format!("{ks}.checkpoint_groups");
    let group_cuts = |rows: Vec<(String, i64)>, group: &str| {
        let mut cuts: Vec<i64> = rows.into_iter().filter(|(g, _)| g == group).map(|(_, c)| c).collect();
        cuts.sort();
        cuts
    };
    let all_group_rows = || rows(&session, &groups_table, "group_id, cut");
    off(|| {
        assert!(store.recover(&all).unwrap().is_none());
        // Rows of a cut that never completed are deleted even when no cut is complete: a later
        // complete cut must not fold them in.
        store.write_part(&part(5, 0, &[("ghost", 7)], 3)).unwrap();
        assert!(store.recover(&all).unwrap().is_none());
        other.write_part(&Part { peers: 1, ..part(10, 0, &[("a", 9)], 1) }).unwrap();
        store.write_part(&part(10, 0, &[("a", 1)], 5)).unwrap();
        store.write_part(&part(10, 1, &[("b", 1)], 7)).unwrap();
        store.write_parts(&[part(11, 0, &[("a", 2)], 6), part(11, 1, &[], 7)]).unwrap();
        // Cut 12 never completed: worker 1 crashed before writing it.
        store.write_part(&part(12, 0, &[("a", 3), ("z", 1)], 9)).unwrap();
    });
    // A row per key group per part: a's and b's at 10, a's at 11, a's and z's at 12.
    let groups_of =
        |users: &[&str]| users.iter().map(|u| key_groups().of(u)).collect::<std::collections::BTreeSet<_>>().len();
    let mut want: Vec<i64> = vec![10; groups_of(&["a", "b"])];
    want.push(11);
    want.extend(vec![12; groups_of(&["a", "z"])]);
    assert_eq!(group_cuts(all_group_rows().await, "g-v1"), want);

    let mut store = open().await.expect("reopen (a restart)");
    let rec = off(|| store.recover(&all)).unwrap().expect("a complete cut");
    assert_eq!(rec.cut, 11);
    assert_eq!(rec.users.len(), 2, "z was only in the incomplete cut");
    assert_eq!(rec.users["a"], snapshot(2));
    assert_eq!(rec.users["b"], snapshot(1));
    assert_eq!(rec.dedup.iter().map(|r| r.ids.len()).sum::<usize>(), 4);
    assert_eq!((rec.watermark, rec.bucket_ms), (11_000, 1000));
    assert_eq!(rec.offsets.values().copied().collect::<Vec<_>>(), vec![6, 7]);
    // Recovery deleted the incomplete cut's rows and marks; v2's rows stay.
    assert_eq!(group_cuts(all_group_rows().await, "g-v1"), want[..want.len() - groups_of(&["a", "z"])]);
    let marks = rows(&session, &format!("{ks}.checkpoint_marks"), "group_id, cut").await;
    assert!(marks.iter().all(|(g, c)| g == "g-v2" || *c <= 11), "{marks:?}");

    // b expires at cut 13, a changes; then a key group with 2000 users that changes by more than
    // a quarter is folded into a base at compaction, and bucket 10 expires.
    let taken: Vec<u32> = ["a", "b", "c", "x", "z"].iter().map(|u| key_groups().of(u)).collect();
    let target = (0..64).find(|g| !taken.contains(g)).unwrap();
    let crowd: Vec<String> =
        (0..400_000).map(|i| format!("u{i}")).filter(|u| key_groups().of(u) == target).take(2000).collect();
    let with = |cut: u64, worker: usize, users: &[String], plays: usize| Part {
        users: users.iter().map(|u| (u.clone(), snapshot(plays))).collect(),
        ..part(cut, worker, &[], 0)
    };
    let (cut, removed) = off(|| {
        let mut expired = part(13, 0, &[("c", 4)], 10);
        expired.expired = vec!["b".into()];
        store.write_parts(&[expired, part(13, 1, &[("a", 5)], 8)]).unwrap();
        store.write_parts(&[with(14, 0, &crowd, 1), with(14, 1, &[], 0)]).unwrap();
        store.write_parts(&[with(15, 0, &crowd[..1500], 2), with(15, 1, &[], 0)]).unwrap();
        store.compact(3000).unwrap().expect("compacted")
    });
    assert_eq!(cut, 15);
    // Marks of cuts 10, 11, 13 and 14 (8); the crowd's group rows of cuts 14 and 15 (2); the ids
    // rows of buckets 10 and 11 (4).
    assert_eq!(removed, 14);
    let crowd_rows = session
        .query_unpaged(
            format!("SELECT cut, writer FROM {groups_table} WHERE group_id = ? AND key_group = ?"),
            ("g-v1", target as i32),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows::<(i64, i32)>()
        .unwrap()
        .map(|r| r.unwrap())
        .collect::<Vec<_>>();
    assert_eq!(crowd_rows, vec![(15, -1)], "one base at the compacted cut");
    let marks = rows(&session, &format!("{ks}.checkpoint_marks"), "group_id, cut").await;
    assert!(marks.iter().all(|(g, c)| g == "g-v2" || *c == 15), "only cut 15 remains: {marks:?}");

    let mut fresh = open().await.expect("reopen");
    let after = off(|| fresh.recover(&all)).unwrap().unwrap();
    assert_eq!(after.cut, 15);
    assert_eq!((after.users["a"].clone(), after.users["c"].clone()), (snapshot(5), snapshot(4)));
    assert!(!after.users.contains_key("b"), "b expired");
    assert_eq!(after.users.len(), 2 + crowd.len());
    assert_eq!(after.users[&crowd[0]], snapshot(2));
    assert_eq!(after.users[&crowd[1999]], snapshot(1));
    assert!(after.dedup.iter().all(|r| r.bucket >= 12), "buckets older than 15 s - 3 s are gone: {:?}", after.dedup);
    // The incomplete cut 12's id (in its own bucket) was deleted by the first recovery, so the
    // later complete cuts do not bring it in.
    assert!(after.dedup.iter().any(|r| r.bucket == 13) && !after.dedup.iter().any(|r| r.ids.contains(&id(120))));

    // Two processes of one worker each: disjoint key groups, the same users in all.
    let mut users = std::collections::HashMap::new();
    let mut bytes = Vec::new();
    for process in 0..2 {
        let scope =
            RecoveryScope { key_groups: key_groups(), peers: 2, local: process..process + 1, tidy: process == 0 };
        let mut s = open().await.expect("open");
        let rec = off(|| s.recover(&scope)).unwrap().unwrap();
        bytes.push(rec.bytes_read);
        assert!(rec.users.keys().all(|u| scope.reads().contains(&key_groups().of(u))));
        users.extend(rec.users);
    }
    assert_eq!(users, after.users);
    assert!(
        bytes.iter().all(|b| *b < after.bytes_read),
        "each reads less than the whole: {bytes:?} of {}",
        after.bytes_read
    );
    // Another number of key groups is refused.
    let wrong = RecoveryScope { key_groups: KeyGroups::new(128).unwrap(), ..all };
    assert!(matches!(off(|| fresh.recover(&wrong)), Err(CheckpointError::KeyGroups { written: 64, configured: 128 })));

    // The other version was never touched.
    let v2 = off(|| other.recover(&RecoveryScope::single(key_groups(), 1))).unwrap().expect("v2's cut");
    assert_eq!((v2.cut, v2.users["a"].clone()), (10, snapshot(9)));
}
