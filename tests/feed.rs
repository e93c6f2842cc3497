//! Attribute feeds against the real broker and CQL server: the profile table read with the scylla
//! driver and the changelog topic read with a plain Kafka consumer equal the oracle for every user,
//! through `kill -9`s of the version processes and through an outage of the CQL store.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers as _;
use scylla::client::session::Session;
use scylla::value::{CqlValue, Row};
use squall::generate::{CatalogueGen, EventGen, Generated};
use squall_feeds::profile::table_name;
use squall_operators::attributes::ValueType;
use squall_operators::{Attributes, Declaration, Event, EventKind, Value};
use squall_tests::outage::{Broker, CqlServer, PrivateFixture};
use squall_tests::{Fixture, Record, Squall, brokers, cql, produce, stream_config_without_resends, unique, wait_for};
use squall_topologies::oracle;

const T0: i64 = 1_763_750_000_000;

/// A generated stream: the valid events and every record, split into `batches`.
fn stream(
    catalogue: CatalogueGen,
    songs: &str,
    ads: &str,
    users: u64,
    n: usize,
    batches: usize,
    seed: u64,
) -> (Vec<Event>, Vec<Vec<Record>>) {
    let config = stream_config_without_resends(users, catalogue);
    let mut generator = EventGen::new(config, seed);
    let mut events = Vec::new();
    let mut out: Vec<Vec<Record>> = vec![Vec::new(); batches];
    for i in 0..n {
        let record = match generator.next_at(T0 + i as i64 * 37) {
            Generated::Event(e) => {
                let topic = if e.kind() == EventKind::Song { songs } else { ads };
                let r = (topic.to_owned(), e.user_id().to_owned(), e.to_json());
                events.push(e);
                r
            }
            Generated::Malformed(_, bytes) => (songs.to_owned(), "x".into(), bytes),
        };
        out[i * batches / n].push(record);
    }
    (events, out)
}

/// A profile column read back as the attribute value it was written from (CQL stores empty
/// collections as null).
fn value(t: ValueType, v: Option<CqlValue>) -> Value {
    let number = |v: CqlValue| match v {
        CqlValue::BigInt(n) => Value::Int(n),
        CqlValue::Double(f) => Value::Float(f),
        other => panic!("not a number: {other:?}"),
    };
    match (t, v) {
        (ValueType::IntMap | ValueType::FloatMap, None) => Value::Map(BTreeMap::new()),
        (ValueType::List, None) => Value::List(Vec::new()),
        (_, None) => Value::Null,
        (_, Some(CqlValue::Text(s))) => Value::Text(s),
        (_, Some(CqlValue::List(l))) => Value::List(
            l.into_iter()
                .map(|v| match v {
                    CqlValue::Text(s) => s,
                    other => panic!("not text: {other:?}"),
                })
                .collect(),
        ),
        (_, Some(CqlValue::Map(m))) => Value::Map(
            m.into_iter()
                .map(|(k, v)| match k {
                    CqlValue::Text(k) => (k, number(v)),
                    other => panic!("not a text key: {other:?}"),
                })
                .collect(),
        ),
        (_, Some(v)) => number(v),
    }
}

/// Every row of a version's profile table: user -> (cut, attributes).
async fn profile(
    session: &Session,
    keyspace: &str,
    table: &str,
    d: &Declaration,
) -> BTreeMap<String, (i64, Attributes)> {
    let shown: Vec<(usize, &str)> =
        d.attributes.iter().enumerate().filter(|(_, a)| !a.hidden).map(|(i, a)| (i, a.name.as_str())).collect();
    let columns = shown.iter().map(|(_, n)| *n).collect::<Vec<_>>().join(", ");
    let query = format!("SELECT user_id, cut, {columns} FROM {keyspace}.{table}");
    let mut out = BTreeMap::new();
    let mut pager =
        session.query_iter(query, ()).await.expect("scan the profile table").rows_stream::<Row>().expect("rows");
    use futures::StreamExt as _;
    while let Some(row) = pager.next().await {
        let mut cols = row.expect("row").columns.into_iter();
        let Some(Some(CqlValue::Text(user))) = cols.next() else { panic!("user_id") };
        let Some(Some(CqlValue::BigInt(cut))) = cols.next() else { panic!("cut") };
        let attrs = shown.iter().zip(cols).map(|((i, n), v)| (n.to_string(), value(d.value_type(*i), v))).collect();
        out.insert(user, (cut, Attributes(attrs)));
    }
    out
}

/// Waits until the profile table holds `expected` exactly (every user, and no other).
async fn profile_equals(
    session: &Session,
    keyspace: &str,
    table: &str,
    d: &Declaration,
    expected: &BTreeMap<String, Attributes>,
) {
    wait_for(&format!("{table} to equal the oracle"), Duration::from_secs(90), || async {
        let rows = profile(session, keyspace, table, d).await;
        if rows.len() != expected.len() {
            return Err(format!("{} rows, {} users expected", rows.len(), expected.len()));
        }
        for (user, want) in expected {
            let (_, got) = rows.get(user).ok_or_else(|| format!("{user} has no row"))?;
            if let Some(d) = oracle::difference(got, want) {
                return Err(format!("{user}: {d}"));
            }
        }
        Ok(())
    })
    .await;
}

/// One changelog message as a consumer keeps it.
struct Change {
    cut: u64,
    events: u64,
    attributes: Attributes,
}

/// Every message of `topic` from the beginning: per user, in order.
fn changelog(brokers: &str, topic: &str) -> HashMap<String, Vec<Change>> {
    let consumer: BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("changelog-reader"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let partitions = md.topics()[0].partitions().len() as i32;
    let mut tpl = rdkafka::TopicPartitionList::new();
    let mut ends = HashMap::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning).expect("partition");
        let (_, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).expect("watermarks");
        ends.insert(p, high);
    }
    consumer.assign(&tpl).expect("assign");
    let mut out: HashMap<String, Vec<Change>> = HashMap::new();
    let mut at: HashMap<i32, i64> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ends.iter().any(|(p, high)| at.get(p).copied().unwrap_or(0) < *high) {
        assert!(Instant::now() < deadline, "reading {topic}: at {at:?} of {ends:?}");
        let Some(m) = consumer.poll(Duration::from_millis(200)) else { continue };
        let m = m.expect("message");
        at.insert(m.partition(), m.offset() + 1);
        let body: serde_json::Value = serde_json::from_slice(m.payload().expect("payload")).expect("json");
        let header = m.headers().and_then(|h| h.iter().find(|h| h.key == "cut")).and_then(|h| h.value);
        let cut: u64 = std::str::from_utf8(header.expect("a cut header")).expect("utf-8").parse().expect("a number");
        assert_eq!(body["cut"].as_u64(), Some(cut), "the header and the body agree on the cut");
        let user = std::str::from_utf8(m.key().expect("key")).expect("utf-8").to_owned();
        assert_eq!(body["user_id"], user.as_str());
        let attributes: Attributes = serde_json::from_value(body["attributes"].clone()).expect("attributes");
        let events = body["events"].as_u64().expect("events");
        out.entry(user).or_default().push(Change { cut, events, attributes });
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn profile_table_and_changelog_equal_the_oracle_through_kills() {
    let seed: u64 = std::env::var("SQUALL_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    println!("feed crash test seed {seed} (rerun with SQUALL_CRASH_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let catalogue = CatalogueGen { tracks: 200, ads: 20, seed: 9 };
    let f = Fixture::with_catalogue(4, &catalogue).await;
    let checkpoints = std::env::temp_dir().join(unique("checkpoints"));
    let name = unique("feed").replace('_', "-");
    let topology = f.topology(
        &name,
        1,
        "personalization_v1",
        &[
            ("versions", "1 = \"personalization_v1\"\n2 = \"personalization_v2\""),
            (
                "state",
                &format!("epoch = \"100ms\"\ndedup_horizon = \"0s\"\ncheckpoint_dir = \"{}\"", checkpoints.display()),
            ),
            ("feed", "profile = true\nchangelog = true\nchangelog_partitions = 2"),
        ],
    );
    let (events, mut batches) = stream(catalogue, &f.songs, &f.ads, 200, 12_000, 5, seed);
    let last = batches.pop().expect("batches");
    let mut kills = 0;
    for batch in batches {
        let v1 = Squall::run(&topology, &["--workers", "2", "--version", "1"]);
        let v2 = Squall::run(&topology, &["--workers", "2", "--version", "2"]);
        let producing = tokio::spawn(produce(batch));
        // The moment of the kill is random by design; nothing is awaited here.
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..1500))).await;
        v1.kill9();
        v2.kill9();
        kills += 2;
        producing.await.expect("producer");
    }
    let v1 = Squall::run(&topology, &["--workers", "2", "--version", "1"]);
    let v2 = Squall::run(&topology, &["--workers", "2", "--version", "2"]);
    produce(last).await;

    let session = squall_enrichment::schema::connect(&cql()).await.expect("connect");
    for (version, squall) in [(1, &v1), (2, &v2)] {
        let declaration = squall_tests::declaration(version);
        let expected = oracle::expected(&declaration, events.iter(), &catalogue.oracle());
        let table = table_name(&name, version);
        profile_equals(&session, &f.keyspace, &table, &declaration, &expected).await;
        // The changelog: the last message of each user is their attributes; cuts never go back.
        let group = format!("{name}-v{version}");
        let topic = squall_feeds::changelog::topic(&group);
        // The changelog has its own sink: it may trail the profile table by a cut.
        let log = wait_for(&format!("{topic} to end at the oracle"), Duration::from_secs(90), || async {
            let log = changelog(&brokers(), &topic);
            if log.len() != expected.len() {
                return Err(format!("{} users on the changelog, {} expected", log.len(), expected.len()));
            }
            for (user, want) in &expected {
                let last = &log[user].last().expect("a message").attributes;
                if let Some(d) = oracle::difference(last, want) {
                    return Err(format!("{user}: {d}"));
                }
            }
            Ok(log)
        })
        .await;
        let mut messages = 0;
        for (user, want) in &expected {
            let changes = &log[user];
            messages += changes.len();
            assert!(changes.windows(2).all(|w| w[0].cut <= w[1].cut), "{user}: a cut went back");
            if let Some(d) = oracle::difference(&changes.last().expect("a message").attributes, want) {
                panic!("{group} changelog, {user}: {d}");
            }
        }
        let (_, status) = squall.get("/v1/status").await;
        println!(
            "feed crash test {group}: kills={kills} users={} changelog messages={messages} feeds={}",
            expected.len(),
            status["feeds"]
        );
        let feeds = status["feeds"].as_array().expect("feeds");
        assert_eq!(feeds.len(), 2, "{status}");
        assert!(feeds.iter().all(|f| f["last_error"].is_null()), "{status}");
    }
    let _ = std::fs::remove_dir_all(&checkpoints);
}

#[tokio::test(flavor = "multi_thread")]
async fn changelog_messages_come_once_per_cut_in_which_a_user_changed() {
    let catalogue = CatalogueGen { tracks: 100, ads: 10, seed: 3 };
    let f = Fixture::with_catalogue(2, &catalogue).await;
    let name = unique("log").replace('_', "-");
    let topology = f.topology(
        &name,
        1,
        "personalization_v1",
        &[("state", "epoch = \"100ms\""), ("feed", "changelog = true\nchangelog_partitions = 2")],
    );
    let (events, batches) = stream(catalogue, &f.songs, &f.ads, 50, 3_000, 6, 77);
    let squall = Squall::run(&topology, &["--workers", "2"]);
    for batch in batches {
        produce(batch).await;
    }
    let expected = oracle::expected(&squall_tests::declaration(1), events.iter(), &catalogue.oracle());
    let group = format!("{name}-v1");
    let topic = squall_feeds::changelog::topic(&group);
    wait_for("the changelog to hold every user's attributes", Duration::from_secs(60), || async {
        let log = changelog(&brokers(), &topic);
        for (user, want) in &expected {
            let last = log.get(user).and_then(|c| c.last()).ok_or_else(|| format!("{user} not on the changelog"))?;
            oracle::difference(&last.attributes, want).map_or(Ok(()), Err)?;
        }
        Ok(())
    })
    .await;
    let log = changelog(&brokers(), &topic);
    let mut messages = 0;
    for (user, changes) in &log {
        messages += changes.len();
        for w in changes.windows(2) {
            assert!(w[0].cut < w[1].cut, "{user}: two messages for cut {}", w[1].cut);
            assert!(w[0].events < w[1].events, "{user}: published again without a change at cut {}", w[1].cut);
        }
    }
    println!("changelog: {} users, {messages} messages for {} events", log.len(), events.len());
    let (_, status) = squall.get("/v1/status").await;
    assert_eq!(status["feeds"][0]["feed"], "changelog", "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_profile_feed_lags_while_the_cql_store_is_down_and_catches_up() {
    let broker = Broker::start();
    let mut cql_server = CqlServer::start();
    let catalogue = CatalogueGen { tracks: 100, ads: 10, seed: 4 };
    let f = PrivateFixture::new(
        broker.addr(),
        cql_server.addr(),
        2,
        (0..catalogue.tracks).map(|i| catalogue.track(i)).collect(),
        (0..catalogue.ads).map(|i| catalogue.ad(i)).collect(),
    )
    .await;
    // Checkpoints on local disk and the whole catalogue in the cache: attributes and checkpoints
    // need nothing from the CQL store, so only the feed waits while it is down.
    let checkpoints = std::env::temp_dir().join(unique("checkpoints"));
    let topology = f.topology(
        "cqlfeed",
        &[
            // Ids missing from the catalogue (2% of the events) are looked up one by one: with the
            // store down they enrich as "unknown" after the deadline, which is what they are.
            ("enrichment", "preload = true\ncache_ttl = \"1h\"\ndeadline = \"1s\"\non_timeout = \"degrade\""),
            ("state", &format!("epoch = \"100ms\"\ncheckpoint_dir = \"{}\"", checkpoints.display())),
            ("feed", "profile = true\ndeadline = \"1s\""),
        ],
    );
    let (events, batches) = stream(catalogue, &f.songs, &f.ads, 100, 4_000, 2, 5);
    let squall = Squall::run(&topology, &["--workers", "2"]);
    let declaration = squall_tests::declaration(1);
    let table = table_name("cqlfeed", 1);
    let session = squall_enrichment::schema::connect(&cql_server.addr()).await.expect("connect");
    let n1 = batches[0].iter().filter(|(_, k, _)| k != "x").count();
    f.produce(batches[0].clone()).await;
    let expected = oracle::expected(&declaration, events[..n1].iter(), &catalogue.oracle());
    profile_equals(&session, &f.keyspace, &table, &declaration, &expected).await;
    drop(session);

    cql_server.stop();
    f.produce(batches[1].clone()).await;
    // Attributes keep up while the store is down, and the feed says it is failing and lagging.
    let all = oracle::expected(&declaration, events.iter(), &catalogue.oracle());
    let lagging = wait_for("the feed to report the outage", Duration::from_secs(60), || async {
        let (_, status) = squall.get("/v1/status").await;
        let feed = &status["feeds"][0];
        match (feed["failing_for_s"].as_f64(), feed["lag_cuts"].as_u64()) {
            (Some(s), Some(lag)) if s > 1.0 && lag > 0 => Ok(status.clone()),
            _ => Err(status.to_string()),
        }
    })
    .await;
    for (user, want) in &all {
        wait_for(&format!("{user} to equal the oracle while the store is down"), Duration::from_secs(60), || async {
            let (status, body) = squall.get(&format!("/v1/users/{user}/attributes")).await;
            let got: Attributes =
                serde_json::from_value(body["attributes"].clone()).map_err(|e| format!("{status} {e}"))?;
            oracle::difference(&got, want).map_or(Ok(()), Err)
        })
        .await;
    }
    let metrics = reqwest::get(format!("{}/metrics", squall.url)).await.expect("metrics").text().await.expect("body");
    assert!(metrics.contains("squall_feed_failing{") && metrics.contains("squall_feed_lag_cuts{"), "{metrics}");
    cql_server.restart();
    let session = squall_enrichment::schema::connect(&cql_server.addr()).await.expect("connect again");
    profile_equals(&session, &f.keyspace, &table, &declaration, &all).await;
    let (_, status) = squall.get("/v1/status").await;
    println!("CQL outage: while down {}; after {}", lagging["feeds"], status["feeds"]);
    let _ = std::fs::remove_dir_all(&checkpoints);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_windowed_attribute_that_becomes_null_is_null_in_the_profile_table() {
    const DAY: i64 = 86_400_000;
    let f = Fixture::new(1, vec![], vec![]).await;
    let name = unique("nulls").replace('_', "-");
    let versions = r#"
[versions.1]
attributes = [
    { name = "plays",          op = "count", events = "song" },
    { name = "ad_impressions", op = "count", events = "ad" },
    { name = "max_ms_5d",      op = "max",   field = "ms_played", window = "5d", tile = "1d" },
]
"#;
    let topology =
        f.topology_with_versions(&name, 1, versions, &[("state", "epoch = \"100ms\""), ("feed", "profile = true")]);
    let declaration = squall_topologies::TopologySpec::load(&topology)
        .and_then(|s| s.with_version(1))
        .expect("the test's topology")
        .attributes;
    let song = |id: &str, user: &str, ms: u64, ts: i64| {
        let json = serde_json::json!({"event_id": id, "user_id": user, "track_id": "t1", "ms_played": ms, "ts": ts});
        (f.songs.clone(), user.to_owned(), json.to_string().into_bytes())
    };
    let impression = |id: &str, user: &str, ts: i64| {
        let json = serde_json::json!({"event_id": id, "user_id": user, "ad_id": "ad1", "ts": ts});
        (f.ads.clone(), user.to_owned(), json.to_string().into_bytes())
    };
    let squall = Squall::run(&topology, &["--workers", "2"]);
    let session = squall_enrichment::schema::connect(&cql()).await.expect("connect");
    let table = table_name(&name, 1);
    let row = |user: &'static str| {
        let (session, keyspace, table, declaration) = (&session, &f.keyspace, &table, &declaration);
        async move { profile(session, keyspace, table, declaration).await.remove(user).map(|(_, a)| a) }
    };
    let column = |attributes: &Attributes, name: &str| attributes.get(name).cloned().expect("a column");

    // Both users' songs are in the table first, so that a stale number would have something to
    // stay behind from.
    produce([song("g1", "gone", 1000, T0), song("g2", "gone", 2000, T0 + 1), song("k1", "kept", 3000, T0)]).await;
    for (user, max) in [("gone", 2000), ("kept", 3000)] {
        wait_for(&format!("{user}'s first profile row"), Duration::from_secs(60), || async {
            let attributes = row(user).await.ok_or("no row yet")?;
            match column(&attributes, "max_ms_5d") {
                Value::Int(n) if n == max => Ok(()),
                other => Err(format!("max_ms_5d {other:?}")),
            }
        })
        .await;
    }

    // Six days later in event time, their songs fall out of the 5-day window: `gone` has no song
    // left in it (null), `kept` has a new, shorter one.
    produce([impression("g3", "gone", T0 + 6 * DAY), song("k2", "kept", 500, T0 + 6 * DAY)]).await;
    for (user, events, max) in [("gone", ("ad_impressions", 1), Value::Null), ("kept", ("plays", 2), Value::Int(500))] {
        let (status, body) = wait_for(&format!("{user}'s answer after the gap"), Duration::from_secs(60), || async {
            let (status, body) = squall.get(&format!("/v1/users/{user}/attributes")).await;
            match body["attributes"][events.0].as_i64() {
                Some(n) if n == events.1 => Ok((status, body)),
                _ => Err(format!("{status} {body}")),
            }
        })
        .await;
        let answer: Attributes = serde_json::from_value(body["attributes"].clone()).expect("attributes");
        assert_eq!(column(&answer, "max_ms_5d"), max, "{user}: the HTTP answer ({status})");
        let written = wait_for(&format!("{user}'s row after the gap"), Duration::from_secs(60), || async {
            let attributes = row(user).await.ok_or("no row")?;
            match column(&attributes, events.0) {
                Value::Int(n) if n == events.1 => Ok(attributes),
                other => Err(format!("{} {other:?}", events.0)),
            }
        })
        .await;
        // The row written with the new event carries the new value, not the old number.
        assert_eq!(column(&written, "max_ms_5d"), max, "{user}: the profile table");
        if let Some(d) = oracle::difference(&written, &answer) {
            panic!("{user}: the profile table and the HTTP answer differ: {d}");
        }
    }
}
