//! Versioned deployments through `squall server` and the CLI, against the real broker and CQL server:
//! versions side by side, promote, rollback, `--start-from group:`, server restarts, bad arguments.
//! (Versions that outlive the server and are adopted by the next one: `tests/adopt.rs`.)

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use squall_operators::{Attributes, Event};
use squall_tests::deployment::{Deployment, Stream, state_dir};
use squall_tests::server::{SquallServer, alive, pid_at, wait_equal_to_oracle};
use squall_tests::{brokers, produce, stream_config, unique, wait_for};
use squall_topologies::oracle;

const T0: i64 = 1_763_750_000_000;
const TOKEN: &str = "test-token-0123456789abcdef";
type Records = Vec<(String, String, Vec<u8>)>;

/// The deployment (versions 1 = personalization_v1, 2 = personalization_v2) and a generated stream.
struct Setup {
    d: Deployment,
    stream: Stream,
}

impl Setup {
    async fn new(seed: u64) -> Setup {
        let d = Deployment::new("p", seed, 4, |f, name| {
            f.topology(
                name,
                1,
                "personalization_v1",
                &[
                    ("versions", "1 = \"personalization_v1\"\n2 = \"personalization_v2\""),
                    ("state", "epoch = \"200ms\""),
                    ("runtime", "workers = 2"),
                ],
            )
        })
        .await;
        let stream = Stream::new(stream_config(150, d.catalogue), seed, T0);
        Setup { d, stream }
    }

    /// The next `n` generated records, and the valid events among them.
    fn batch(&mut self, n: usize) -> (Records, Vec<Event>) {
        self.stream.batch(&self.d.f, n)
    }
}

/// Waits until `group` is serving (its state is running, promoted or catching-up).
async fn serving(server: &SquallServer, group: &str) {
    server.wait_serving(group).await;
}

/// Waits until every user of `expected` read through the server (`query` appended) equals the oracle.
async fn equals_oracle(server: &SquallServer, query: &str, expected: &BTreeMap<String, Attributes>) {
    wait_equal_to_oracle(&server.url, query, expected, Duration::from_secs(90)).await;
}

/// Offsets committed under `group`, read with a plain Kafka consumer (as any Kafka tool would).
fn committed(group: &str, topics: &[&str], partitions: i32) -> BTreeMap<(String, i32), i64> {
    let consumer: BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for t in topics {
        for p in 0..partitions {
            tpl.add_partition(t, p);
        }
    }
    let got = consumer.committed_offsets(tpl, Duration::from_secs(10)).expect("committed offsets");
    got.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some(((e.topic().to_owned(), e.partition()), o)),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn versions_side_by_side_then_promote_and_rollback() {
    let mut s = Setup::new(21).await;
    let server = SquallServer::start(&state_dir("squall-server"), TOKEN);
    let (v1, v2) = (s.d.group(1), s.d.group(2));

    let out = server.cli_ok(&["deploy", s.d.file(), "--version", "1"]);
    assert!(out.contains(&format!("deployed {v1}")), "{out}");
    let (first, mut events) = s.batch(3000);
    produce(first).await;
    serving(&server, &v1).await;
    server.cli_ok(&["promote", &v1]);

    // Version 2 starts mid-stream, from the earliest offsets, beside version 1.
    let out = server.cli_ok(&["deploy", s.d.file(), "--version", "2"]);
    assert!(out.contains(&format!("deployed {v2}")) && out.contains("personalization_v2"), "{out}");
    let (second, more) = s.batch(3000);
    produce(second).await;
    events.extend(more);

    let want_v1 = oracle::expected(&squall_tests::declaration(1), events.iter(), &s.d.catalogue.oracle());
    let want_v2 = oracle::expected(&squall_tests::declaration(2), events.iter(), &s.d.catalogue.oracle());
    equals_oracle(&server, &format!("?group={v1}"), &want_v1).await;
    equals_oracle(&server, &format!("?group={v2}"), &want_v2).await;
    // Without ?group= the promoted version (v1) answers.
    let user = want_v2.keys().next().expect("a user");
    let (_, body) = server.get(&format!("/v1/users/{user}/attributes")).await;
    assert_eq!(body["group_id"], v1.as_str());
    assert!(body["attributes"].get("skip_rate").is_none(), "v1 has no skip_rate: {body}");

    server.cli_ok(&["promote", &v2]);
    let (_, body) = server.get(&format!("/v1/users/{user}/attributes")).await;
    assert_eq!(body["group_id"], v2.as_str());
    assert!(body["attributes"]["skip_rate"].is_number() && body["attributes"]["genre_affinity"].is_object(), "{body}");
    wait_for("`squall list` to show v2 promoted and caught up", Duration::from_secs(60), || async {
        let list = server.cli_ok(&["list"]);
        let row = list.lines().find(|l| l.starts_with(&v2)).unwrap_or_default().to_owned();
        if row.contains(" promoted ") && row.trim_end().ends_with("yes") { Ok(()) } else { Err(list) }
    })
    .await;

    // Committed offsets are visible under each version's group id to a plain Kafka consumer.
    s.d.fully_committed(&v1, Duration::from_secs(60)).await;
    s.d.fully_committed(&v2, Duration::from_secs(60)).await;

    // Roll back: v1 answers at once, v2 is stopped (its offsets stay).
    let v2_urls = server.get(&format!("/v1/deployments/{v2}")).await.1["urls"].clone();
    // Queries run continuously while the rollback happens; the first one answered by v1 says when
    // the rollback took effect.
    let stop_probe = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probe = {
        let (url, user, v1, stop) = (server.url.clone(), user.clone(), v1.clone(), stop_probe.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let body: serde_json::Value = match client.get(format!("{url}/v1/users/{user}/attributes")).send().await
                {
                    Ok(r) => r.json().await.unwrap_or_default(),
                    Err(_) => continue,
                };
                if body["group_id"] == v1.as_str() {
                    return Some(Instant::now());
                }
            }
            None
        })
    };
    let started = Instant::now();
    let out = server.cli_ok(&["rollback", &v1]);
    let returned = started.elapsed();
    let (_, body) = server.get(&format!("/v1/users/{user}/attributes")).await;
    assert_eq!(body["group_id"], v1.as_str(), "the first query after the rollback: {body}");
    stop_probe.store(true, std::sync::atomic::Ordering::Relaxed);
    let effective = probe.await.expect("probe").expect("a query answered by v1").duration_since(started);
    println!(
        "rollback: queries answered from {v1} {:.1} ms after `squall rollback` started (the CLI returned after {:.1} ms, once v2's processes had exited)",
        effective.as_secs_f64() * 1e3,
        returned.as_secs_f64() * 1e3
    );
    assert!(out.contains(&format!("stopped {v2}")), "{out}");
    let (_, d2) = server.get(&format!("/v1/deployments/{v2}")).await;
    assert_eq!(d2["state"], "stopped");
    // v2's processes are gone: its old address refuses connections.
    let old = v2_urls[0].as_str().expect("v2 url");
    assert!(reqwest::get(format!("{old}/healthz")).await.is_err(), "v2 still answers at {old}");
    let (status, body) = server.get(&format!("/v1/users/{user}/attributes?group={v2}")).await;
    assert_eq!(status, 503, "{body}");
    assert!(!committed(&v2, &[&s.d.f.songs, &s.d.f.ads], 4).is_empty(), "v2's offsets stay for inspection");
    // Nothing lost or double counted in v1 across all this.
    equals_oracle(&server, "", &want_v1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn start_from_another_groups_committed_offsets() {
    let mut s = Setup::new(22).await;
    let server = SquallServer::start(&state_dir("squall-server"), TOKEN);
    let (v1, v2) = (s.d.group(1), s.d.group(2));
    server.cli_ok(&["deploy", s.d.file(), "--version", "1"]);
    let (first, _) = s.batch(2000);
    produce(first).await;
    serving(&server, &v1).await;
    s.d.fully_committed(&v1, Duration::from_secs(60)).await;
    let at_deploy = committed(&v1, &[&s.d.f.songs, &s.d.f.ads], 4);

    server.cli_ok(&["deploy", s.d.file(), "--version", "2", "--start-from", &format!("group:{v1}")]);
    serving(&server, &v2).await;
    let (second, later) = s.batch(2000);
    produce(second).await;
    // v2 saw exactly the events after v1's committed offsets.
    let want = oracle::expected(&squall_tests::declaration(2), later.iter(), &s.d.catalogue.oracle());
    equals_oracle(&server, &format!("?group={v2}"), &want).await;
    s.d.fully_committed(&v2, Duration::from_secs(60)).await;
    // The server's monitor refreshes a deployment's status once a second: wait until it has seen
    // v2's events, then check it saw no more than those.
    let applied = wait_for("the monitor to report v2's events", Duration::from_secs(15), || async {
        let (_, d) = server.get(&format!("/v1/deployments/{v2}")).await;
        assert_eq!(d["start_from"], format!("group:{v1}"));
        let n = d["status"]["applied"].as_u64().unwrap_or(0) + d["status"]["duplicates"].as_u64().unwrap_or(0);
        if n >= later.len() as u64 { Ok(n) } else { Err(format!("{n} so far")) }
    })
    .await;
    assert_eq!(applied, later.len() as u64, "v2 read only what came after v1's offsets {at_deploy:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_server_resumes_its_deployments_and_promotion() {
    let mut s = Setup::new(23).await;
    let dir = state_dir("squall-server");
    let server = SquallServer::start(&dir, TOKEN);
    let v1 = s.d.group(1);
    server.cli_ok(&["deploy", s.d.file(), "--version", "1"]);
    let (first, mut events) = s.batch(2000);
    produce(first).await;
    serving(&server, &v1).await;
    server.cli_ok(&["promote", &v1]);
    let want = oracle::expected(&squall_tests::declaration(1), events.iter(), &s.d.catalogue.oracle());
    equals_oracle(&server, "", &want).await;

    // SIGKILL the server and its version's process, as a crash of the whole host would: nothing
    // is shut down cleanly, and there is no process left to adopt (tests/adopt.rs has those).
    let (_, d) = server.get(&format!("/v1/deployments/{v1}")).await;
    let child_url = d["urls"][0].as_str().expect("url").to_owned();
    let child = pid_at(&child_url).await.expect("the version's pid");
    server.kill9();
    let _ = std::process::Command::new("kill").args(["-KILL", &child.to_string()]).status();
    wait_for("the version's process to die", Duration::from_secs(10), || async {
        if alive(child) { Err(format!("{child} is alive")) } else { Ok(()) }
    })
    .await;
    let (second, more) = s.batch(2000);
    produce(second).await;
    events.extend(more);

    let server = SquallServer::start(&dir, TOKEN);
    let (_, list) = server.get("/v1/deployments").await;
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list[0]["promoted"], true, "{list}");
    let want = oracle::expected(&squall_tests::declaration(1), events.iter(), &s.d.catalogue.oracle());
    equals_oracle(&server, "", &want).await;
    let status = server.cli_ok(&["status", &v1]);
    assert!(status.contains("promoted") && status.contains(&s.d.f.songs), "{status}");
    let pid = server.pid();
    assert!(server.stop().success());
    assert!(!alive(pid));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_change_nothing_and_say_why() {
    let s = Setup::new(24).await;
    let server = SquallServer::start(&state_dir("squall-server"), TOKEN);
    let v1 = s.d.group(1);
    let fails = |args: &[&str], token: Option<&str>, needle: &str| {
        let out = server.cli_with_token(args, token);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "`squall {}` should fail", args.join(" "));
        assert!(stderr.contains(needle), "`squall {}`: expected {needle:?} in {stderr}", args.join(" "));
    };
    let bad = std::env::temp_dir().join(format!("{}.toml", unique("bad")));
    std::fs::write(&bad, "name = \"p\"\nversion = 1\nattributes = \"personalization_v9\"\n").expect("write");
    fails(&["deploy", bad.to_str().unwrap()], Some(TOKEN), "attributes");
    fails(&["deploy", "/nonexistent/topology.toml"], Some(TOKEN), "cannot read /nonexistent/topology.toml");
    fails(&["deploy", s.d.file(), "--version", "7"], Some(TOKEN), "no version 7");
    fails(&["deploy", s.d.file(), "--start-from", "yesterday"], Some(TOKEN), "earliest, latest or group:");
    fails(&["deploy", s.d.file(), "--start-from", "group:nobody-ever"], Some(TOKEN), "has committed no offsets");
    fails(&["deploy", s.d.file()], None, "needs the server's token");
    fails(&["deploy", s.d.file()], Some("wrong-token-0123456789"), "wrong bearer token");
    fails(&["promote", "nope-v1"], Some(TOKEN), "no deployment with group id \"nope-v1\"");
    fails(&["status", "nope-v1"], Some(TOKEN), "no deployment with group id");
    let (_, list) = server.get("/v1/deployments").await;
    assert_eq!(list, serde_json::json!([]), "failed commands changed nothing");

    server.cli_ok(&["deploy", s.d.file()]);
    fails(&["deploy", s.d.file(), "--version", "1"], Some(TOKEN), &format!("{v1} is already deployed"));
    serving(&server, &v1).await;
    server.cli_ok(&["promote", &v1]);
    fails(&["stop", &v1], Some(TOKEN), "is the promoted version");
    // Mutations over plain HTTP: no token 401, wrong token 403, unknown group 404.
    let (status, body) = server.post(&format!("/v1/deployments/{v1}/stop"), None).await;
    assert_eq!((status, body["error"]["status"].as_u64()), (401, Some(401)), "{body}");
    let (status, _) = server.post(&format!("/v1/deployments/{v1}/stop"), Some("nope-nope-nope-nope")).await;
    assert_eq!(status, 403);
    let (status, _) = server.post("/v1/deployments/x-v9/promote", Some(TOKEN)).await;
    assert_eq!(status, 404);
    let (status, _) = server.get(&format!("/v1/users/{}/attributes", "u".repeat(300))).await;
    assert_eq!(status, 400);
    let (status, body) = server.get("/v1/users/u1/attributes?group=nope-v1").await;
    assert_eq!(status, 404, "{body}");
    let out = server.cli_ok(&["logs", &v1, "--tail", "50"]);
    assert!(out.contains(&format!("{v1} serving on http://127.0.0.1:")), "{out}");
    let (status, doc) = server.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["paths"]["/v1/deployments/{group_id}/rollback"]["post"].is_object(), "{doc}");
    // The CLI says where it tried when there is no server.
    let out = std::process::Command::new(squall_tests::binary("squall"))
        .args(["list", "--server", "http://127.0.0.1:9"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the squall server at http://127.0.0.1:9/"));
}
