//! `squall diff` and gated promotion through `squall server`, against the real broker and CQL
//! server, with events flowing while the diff runs: no false alarms while versions lag each
//! other, exact differences once they have applied the same events, the promotion gate, and the
//! `promoted_versions` row following promote and rollback (issue "attributes feed the models").

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use squall_operators::{Attributes, Event};
use squall_tests::deployment::{Deployment, Stream, state_dir};
use squall_tests::server::SquallServer;
use squall_tests::{cql, produce, stream_config, wait_for};
use squall_topologies::oracle;

const T0: i64 = 1_763_750_000_000;
const TOKEN: &str = "test-token-0123456789abcdef";
const USERS: u64 = 150;

/// Versions 1 and 3 declare the same attributes; 2 is v1 plus `skip_rate` and `genre_affinity`;
/// 4 is v1 with one deliberate change, skips under 20 s instead of 30 s.
const VERSIONS: &str = r#"
[versions]
1 = "personalization_v1"
2 = "personalization_v2"
3 = "personalization_v1"

[versions.4]
attributes = [
    { name = "plays",          op = "count", events = "song" },
    { name = "skips",          op = "count", events = "song", where = "ms_played < 20000" },
    { name = "genre_plays",    op = "count", by = "track.genre" },
    { name = "top_genres",     op = "top_k", of = "genre_plays", k = 3 },
    { name = "ad_impressions", op = "count", events = "ad" },
    { name = "ad_categories",  op = "count", by = "ad.category" },
    { name = "last_seen_ts",   op = "max",   field = "ts" },
]
"#;

/// The deployment (versions of [`VERSIONS`], both feeds on), a generated stream and every valid
/// event produced.
struct Setup {
    d: Deployment,
    stream: Stream,
    events: Vec<Event>,
}

impl Setup {
    async fn new(seed: u64) -> Setup {
        let d = Deployment::new("d", seed, 4, |f, name| {
            f.topology_with_versions(
                name,
                1,
                VERSIONS,
                &[
                    ("state", "epoch = \"200ms\""),
                    ("runtime", "workers = 2"),
                    ("feed", "profile = true\nchangelog = true\nchangelog_partitions = 2"),
                ],
            )
        })
        .await;
        let stream = Stream::new(stream_config(USERS, d.catalogue), seed, T0);
        Setup { d, stream, events: Vec::new() }
    }

    /// Produces the next `n` generated records (and keeps their valid events).
    async fn produce(&mut self, n: usize) {
        let (records, events) = self.stream.batch(&self.d.f, n);
        self.events.extend(events);
        produce(records).await;
    }

    /// The oracle's answers for version `version` of the file over every event produced.
    fn expected(&self, version: u32) -> BTreeMap<String, Attributes> {
        let declaration = squall_topologies::TopologySpec::load(&self.d.file)
            .and_then(|s| s.with_version(version))
            .expect("the test's topology file")
            .attributes;
        oracle::expected(&declaration, self.events.iter(), &self.d.catalogue.oracle())
    }
}

/// `GET /v1/diff?a=&b=` right now (no waiting): the report, or `None` while a version has not
/// created its changelog topic yet (503).
async fn diff_now(server: &SquallServer, a: &str, b: &str) -> Option<serde_json::Value> {
    let (status, body) = server.get(&format!("/v1/diff?a={a}&b={b}&wait_ms=0&sample=1000")).await;
    if status == 503 {
        return None;
    }
    assert_eq!(status, 200, "{body}");
    Some(body)
}

/// Users with a differing value of some attribute, by attribute.
fn differing(report: &serde_json::Value) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for d in report["sample"].as_array().expect("sample") {
        out.entry(d["attribute"].as_str().expect("attribute").to_owned())
            .or_default()
            .insert(d["user_id"].as_str().expect("user").to_owned());
    }
    out
}

/// Sum of `differ` over the report's attributes.
fn differ_total(report: &serde_json::Value) -> u64 {
    report["attributes"].as_array().expect("attributes").iter().map(|a| a["differ"].as_u64().expect("differ")).sum()
}

/// Waits until the diff of `a` and `b` has caught up and compares at least `min` users.
async fn settled(server: &SquallServer, a: &str, b: &str, min: u64) -> serde_json::Value {
    wait_for(&format!("the diff of {a} and {b} to compare {min} users"), Duration::from_secs(120), || async {
        let r = diff_now(server, a, b).await.ok_or("no changelog topic yet")?;
        let compared = r["users_compared"].as_u64().expect("users_compared");
        if r["caught_up"] == true && compared >= min {
            Ok(r)
        } else {
            Err(format!("caught_up {} compared {compared} not comparable {}", r["caught_up"], r["not_comparable"]))
        }
    })
    .await
}

/// The `promoted_versions` row of `topology`: (group id, version).
async fn promoted_row(keyspace: &str, topology: &str) -> Result<(String, i32), String> {
    let session = squall_enrichment::schema::connect(&cql()).await.map_err(|e| e.to_string())?;
    let rows = session
        .query_unpaged(
            format!("SELECT group_id, version FROM {keyspace}.promoted_versions WHERE topology = ?"),
            (topology,),
        )
        .await
        .map_err(|e| e.to_string())?
        .into_rows_result()
        .map_err(|e| e.to_string())?;
    let row = rows.maybe_first_row::<(String, i32)>().map_err(|e| e.to_string())?;
    row.ok_or_else(|| "no row".into())
}

async fn promoted_row_is(s: &Setup, group: &str, version: i32) {
    wait_for(&format!("promoted_versions to name {group}"), Duration::from_secs(30), || async {
        let got = promoted_row(&s.d.f.keyspace, &s.d.name).await?;
        if got == (group.to_owned(), version) { Ok(()) } else { Err(format!("{got:?}")) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_diff_has_no_false_alarms_names_exact_differences_and_gates_promotion() {
    let mut s = Setup::new(33).await;
    let dir = state_dir("squall-server");
    let server = SquallServer::start(&dir, TOKEN);
    let (v1, v2, v3, v4) = (s.d.group(1), s.d.group(2), s.d.group(3), s.d.group(4));

    // v1 runs and is promoted; the CQL store says so.
    server.cli_ok(&["deploy", s.d.file(), "--version", "1"]);
    s.produce(2000).await;
    server.wait_serving(&v1).await;
    server.cli_ok(&["promote", &v1]);
    promoted_row_is(&s, &v1, 1).await;

    // The same declaration under another group id (two processes), started later from the
    // earliest offsets, and v2; events keep flowing while the diff is read: it never reports a
    // difference, however far apart the versions are.
    server.cli_ok(&["deploy", s.d.file(), "--version", "3", "--start-from", "earliest", "--processes", "2"]);
    server.cli_ok(&["deploy", s.d.file(), "--version", "2", "--start-from", "earliest"]);
    // Events arrive in batches of 100, ten a second (the load's shape, not a synchronisation),
    // until both diffs have compared users while behind (or 60 batches).
    let (mut reads, mut lagging_reports) = (0, 0);
    let mut compared = [0u64; 2];
    for batch in 0..60 {
        s.produce(100).await;
        for (i, (a, b)) in [(&v1, &v3), (&v1, &v2)].into_iter().enumerate() {
            let Some(r) = diff_now(&server, a, b).await else { continue };
            assert_eq!(differ_total(&r), 0, "a false alarm while events flow: {r}");
            assert_eq!(r["users_compared"], r["users_agreeing"], "{r}");
            let nc = &r["not_comparable"];
            if nc["a_ahead"].as_u64().unwrap_or(0) + nc["b_ahead"].as_u64().unwrap_or(0) > 0 {
                lagging_reports += 1;
            }
            compared[i] = compared[i].max(r["users_compared"].as_u64().unwrap_or(0));
            reads += 1;
        }
        if batch >= 10 && compared.iter().all(|c| *c >= 20) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "diff while flowing: {reads} reports ({lagging_reports} with users not comparable because a version was ahead), \
         most users compared {compared:?}, none differing"
    );
    assert!(compared.iter().all(|c| *c > 0), "the diffs compared no user while events flowed");

    // Once the producer stops: at least 95% of the users compared, none differing.
    let users = s.expected(1).len() as u64;
    let min = users * 95 / 100;
    let same = settled(&server, &v1, &v3, min).await;
    assert_eq!(differ_total(&same), 0, "{same}");
    assert_eq!(same["users_agreeing"], same["users_compared"], "{same}");
    assert_eq!(same["agreement_percent"].as_f64(), Some(100.0), "{same}");
    assert!(same["only_in_a"].as_array().expect("only_in_a").is_empty(), "{same}");
    println!("diff {v1} {v3}: {same}");

    // v1 against v2: the shared attributes agree; v2's additions are named as only in v2.
    let v1v2 = settled(&server, &v1, &v2, min).await;
    assert_eq!(differ_total(&v1v2), 0, "{v1v2}");
    assert_eq!(v1v2["only_in_a"], serde_json::json!([]), "{v1v2}");
    assert_eq!(v1v2["only_in_b"], serde_json::json!(["skip_rate", "genre_affinity"]), "{v1v2}");
    let shared: Vec<&str> =
        v1v2["attributes"].as_array().expect("attributes").iter().map(|a| a["name"].as_str().expect("name")).collect();
    assert_eq!(
        shared,
        ["plays", "skips", "genre_plays", "top_genres", "ad_impressions", "ad_categories", "last_seen_ts"]
    );

    // The deliberate change: exactly the users whose skips differ by the oracle, and no others.
    server.cli_ok(&["deploy", s.d.file(), "--version", "4", "--start-from", "earliest"]);
    let (want1, want4) = (s.expected(1), s.expected(4));
    let skips = |a: &Attributes| a.0.iter().find(|(n, _)| n == "skips").map(|(_, v)| v.clone());
    let expected: BTreeSet<String> =
        want1.iter().filter(|(u, a)| skips(a) != skips(&want4[*u])).map(|(u, _)| u.clone()).collect();
    assert!(!expected.is_empty() && expected.len() < want1.len(), "the change must split the users");
    let changed = settled(&server, &v1, &v4, users).await;
    let named = differing(&changed);
    assert_eq!(named.keys().collect::<Vec<_>>(), ["skips"], "{changed}");
    assert_eq!(named["skips"], expected, "the users named differ from the oracle's");
    let skips_row =
        changed["attributes"].as_array().expect("attributes").iter().find(|a| a["name"] == "skips").cloned();
    assert_eq!(skips_row.expect("skips")["differ"].as_u64(), Some(expected.len() as u64), "{changed}");
    let out = server.cli_ok(&["diff", &v1, &v4]);
    assert!(out.contains("skips") && out.contains(&format!("{}", expected.len())), "{out}");

    // The status page shows each candidate's diff against the promoted version.
    wait_for("v4's diff against v1 on its detail", Duration::from_secs(30), || async {
        let (_, d) = server.get(&format!("/v1/deployments/{v4}")).await;
        let diff = &d["diff"];
        if diff["against"] == v1.as_str() && diff["differing_attributes"] == serde_json::json!(["skips"]) {
            Ok(())
        } else {
            Err(format!("{diff}"))
        }
    })
    .await;

    // Gated promotion: refused for the changed version (nothing changes), accepted for the same one.
    let refused = server.cli(&["promote", &v4, "--require-agreement", "99", "--against", &v1]);
    assert!(!refused.status.success(), "a gated promotion below the bar must fail");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("promotion refused") && stderr.contains("skips"), "{stderr}");
    let (_, list) = server.get("/v1/deployments").await;
    let promoted: Vec<&str> = list
        .as_array()
        .expect("deployments")
        .iter()
        .filter(|d| d["promoted"] == true)
        .map(|d| d["group_id"].as_str().expect("group"))
        .collect();
    assert_eq!(promoted, [v1.as_str()], "a refused promotion changed nothing");
    promoted_row_is(&s, &v1, 1).await;
    let out = server.cli_ok(&["promote", &v3, "--require-agreement", "99", "--against", &v1]);
    assert!(out.contains(&format!("promoted {v3}")), "{out}");
    promoted_row_is(&s, &v3, 3).await;

    // Rollback moves the row back.
    server.cli_ok(&["rollback", &v1]);
    promoted_row_is(&s, &v1, 1).await;
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_diff_and_gate_requests_get_precise_errors() {
    let mut s = Setup::new(34).await;
    let dir = state_dir("squall-server");
    let server = SquallServer::start(&dir, TOKEN);
    let v1 = s.d.group(1);
    server.cli_ok(&["deploy", s.d.file(), "--version", "1"]);
    s.produce(100).await;
    server.wait_serving(&v1).await;

    let (status, body) = server.get(&format!("/v1/diff?a={v1}&b={v1}")).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap_or("").contains("two different versions"), "{body}");
    let (status, body) = server.get(&format!("/v1/diff?a={v1}&b=nope-v9")).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = server.get(&format!("/v1/diff?a={v1}")).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = server.get(&format!("/v1/diff?a={v1}&b=nope-v9&sample=5000")).await;
    assert_eq!(status, 400, "{body}");

    let out = server.cli(&["promote", &v1, "--require-agreement", "101", "--against", "x-v1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("from 0 to 100"), "{out:?}");
    let out = server.cli(&["promote", &v1, "--require-agreement", "99"]);
    assert!(!out.status.success(), "--require-agreement without --against is refused by the CLI");
    let out = server.cli(&["diff", &v1]);
    assert!(!out.status.success());
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
