//! One version across two timely processes (4 workers in all) on loopback, against the real broker
//! and CQL server: attributes equal the oracle whichever process is asked, and after one process is
//! SIGKILLed the version recovers to a consistent cut with nothing lost or counted twice.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use squall::generate::{CatalogueGen, EventGen, EventGenConfig};
use squall_operators::{Attributes, Event};
use squall_tests::server::{SquallServer, find_process, free_ports};
use squall_tests::{Fixture, Squall, cql, produce, stream_config, unique, wait_for};
use squall_topologies::oracle;

const T0: i64 = 1_763_750_000_000;
type Records = Vec<(String, String, Vec<u8>)>;

struct Stream {
    generator: EventGen,
    at: i64,
}

impl Stream {
    fn batch(&mut self, f: &Fixture, n: usize) -> (Records, Vec<Event>) {
        f.batch(&mut self.generator, &mut self.at, n)
    }
}

/// `resends`: the share of events sent twice (the dedup state must then be on).
async fn setup(seed: u64, resends: f64) -> (Fixture, CatalogueGen, Stream) {
    let catalogue = CatalogueGen { tracks: 300, ads: 20, seed };
    let f = Fixture::with_catalogue(6, &catalogue).await;
    let config = EventGenConfig { duplicate_share: resends, ..stream_config(200, catalogue) };
    (f, catalogue, Stream { generator: EventGen::new(config, seed), at: T0 })
}

/// Waits until every user read at `url` (plus `query`) equals the oracle.
async fn equals_oracle(url: &str, query: &str, expected: &BTreeMap<String, Attributes>) {
    for (user, want) in expected {
        wait_for(&format!("{user} at {url} to equal the oracle"), Duration::from_secs(90), || async {
            let resp =
                reqwest::get(format!("{url}/v1/users/{user}/attributes{query}")).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let body: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
            let got: Attributes =
                serde_json::from_value(body["attributes"].clone()).map_err(|e| format!("{status} {body}: {e}"))?;
            oracle::difference(&got, want).map_or(Ok(()), Err)
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_processes_answer_every_user_from_either_process() {
    let (f, catalogue, mut stream) = setup(31, 0.03).await;
    let topology = f.topology(
        "personalization",
        1,
        "personalization_v1",
        &[("state", "epoch = \"200ms\""), ("feed", "profile = true")],
    );
    let ports = free_ports(4);
    let hostfile = std::env::temp_dir().join(format!("{}.hosts", unique("cluster")));
    std::fs::write(
        &hostfile,
        format!("127.0.0.1:{} 127.0.0.1:{}\n127.0.0.1:{} 127.0.0.1:{}\n", ports[0], ports[1], ports[2], ports[3]),
    )
    .unwrap();
    let checkpoints = std::env::temp_dir().join(unique("cluster-ckpt"));
    let args = |i: &str| -> Vec<String> {
        ["--workers", "2", "--processes", "2", "--process", i, "--hostfile", hostfile.to_str().unwrap()]
            .iter()
            .map(|s| s.to_string())
            .chain(["--checkpoint-dir".to_string(), checkpoints.display().to_string()])
            .collect()
    };
    // Both must start together: each waits for the other to connect before it serves.
    let (t, a1) = (topology.clone(), args("1"));
    let second = std::thread::spawn(move || Squall::run(&t, &a1.iter().map(String::as_str).collect::<Vec<_>>()));
    let first = Squall::run(&topology, &args("0").iter().map(String::as_str).collect::<Vec<_>>());
    let second = second.join().expect("process 1");
    assert_eq!(first.url, format!("http://127.0.0.1:{}", ports[1]));
    assert_eq!(second.url, format!("http://127.0.0.1:{}", ports[3]));

    let (records, events) = stream.batch(&f, 4000);
    produce(records).await;
    let want = oracle::expected(&squall_tests::declaration(1), events.iter(), &catalogue.oracle());
    // Each process answers for every user: its own, and the other's by forwarding.
    equals_oracle(&first.url, "", &want).await;
    equals_oracle(&second.url, "", &want).await;
    // Both processes hold a share of the users, and the shares add up.
    let users = |s: &Squall| {
        let s = s.url.clone();
        async move {
            let st: serde_json::Value = reqwest::get(format!("{s}/v1/status")).await.unwrap().json().await.unwrap();
            st["users"].as_u64().unwrap()
        }
    };
    let (u0, u1) = (users(&first).await, users(&second).await);
    assert!(u0 > 0 && u1 > 0, "users per process: {u0}, {u1}");
    assert_eq!(u0 + u1, want.len() as u64);
    // Each process feeds its own share and records its own progress (regression: one row for
    // both let a process that was behind take the other's progress after a recovery).
    for s in [&first, &second] {
        let st: serde_json::Value = reqwest::get(format!("{}/v1/status", s.url)).await.unwrap().json().await.unwrap();
        println!("cluster feeds at {}: {}", s.url, st["feeds"]);
    }
    let session = squall_enrichment::schema::connect(&cql()).await.expect("connect");
    let read = format!("SELECT cut FROM {}.feed_progress WHERE group_id = ? AND feed = ?", f.keyspace);
    for feed in ["profile@0/2", "profile@1/2", "profile"] {
        let cut = wait_for(&format!("{feed} progress"), Duration::from_secs(30), || async {
            let rows = session
                .query_unpaged(read.as_str(), ("personalization-v1", feed))
                .await
                .map_err(|e| e.to_string())?
                .into_rows_result()
                .map_err(|e| e.to_string())?;
            let cut = rows.maybe_first_row::<(i64,)>().map_err(|e| e.to_string())?.map(|(c,)| c);
            match (feed, cut) {
                ("profile", None) => Ok(None),
                ("profile", Some(c)) => panic!("a row for the whole version, at cut {c}"),
                (_, Some(c)) if c > 0 => Ok(Some(c)),
                (_, c) => Err(format!("cut {c:?}")),
            }
        })
        .await;
        println!("cluster feed progress {feed}: {cut:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_two_process_deployment_recovers_after_one_process_is_killed() {
    let (f, catalogue, mut stream) = setup(32, 0.0).await;
    let name = unique("cl").replace('_', "-");
    // Dedup off and no resends: a replay after recovery would show as double counting, not be hidden.
    let topology =
        f.topology(&name, 1, "personalization_v1", &[("state", "epoch = \"200ms\"\ndedup_horizon = \"0s\"")]);
    let dir: PathBuf = std::env::temp_dir().join(unique("squall-cluster"));
    let server = SquallServer::start(&dir, "cluster-token-0123456789");
    let group = format!("{name}-v1");
    server.cli_ok(&["deploy", topology.to_str().unwrap(), "--processes", "2", "--workers", "2"]);

    let (records, mut events) = stream.batch(&f, 3000);
    produce(records).await;
    let want = oracle::expected(&squall_tests::declaration(1), events.iter(), &catalogue.oracle());
    equals_oracle(&server.url, &format!("?group={group}"), &want).await;

    // SIGKILL process 1 while more events flow; the server restarts the whole version, which
    // resumes from its last complete checkpoint.
    let topology_arg = dir.join("deployments").join(&group).join("topology.toml");
    let pid =
        find_process(&["run", "--process", "1", topology_arg.to_str().unwrap()]).expect("process 1 of the version");
    let (records, more) = stream.batch(&f, 3000);
    let producing = tokio::spawn(produce(records));
    let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    producing.await.expect("produce");
    events.extend(more);
    wait_for("the version to be restarted", Duration::from_secs(60), || async {
        let (_, d) = server.get(&format!("/v1/deployments/{group}")).await;
        if d["restarts"].as_u64().unwrap_or(0) >= 1 { Ok(()) } else { Err(d.to_string()) }
    })
    .await;
    let want = oracle::expected(&squall_tests::declaration(1), events.iter(), &catalogue.oracle());
    equals_oracle(&server.url, &format!("?group={group}"), &want).await;
    // The restarted processes resumed from a checkpoint, not from the earliest offsets.
    let d = wait_for("the restarted version's counters", Duration::from_secs(30), || async {
        let (_, d) = server.get(&format!("/v1/deployments/{group}")).await;
        if d["status"]["recovered_cut"].is_u64() { Ok(d) } else { Err(d.to_string()) }
    })
    .await;
    println!(
        "cluster: 2 processes x 2 workers, process 1 SIGKILLed, restarts={}, recovered_cut={}, events={}, users={}, mismatches=0",
        d["restarts"],
        d["status"]["recovered_cut"],
        events.len(),
        want.len()
    );
}
