//! Exactly once while catching up, against the real broker, CQL server and `squall server`: a
//! version deployed from the earliest offsets over a backlog of 7 days of event time, read a
//! partition at a time, counts every resend once and expires nobody the oracle keeps, like the
//! live version beside it; through `kill -9`s of the catching-up version on 2 processes too
//! (regression: "resends count once whatever order the partitions are read in").

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use squall_operators::{Attributes, Event};
use squall_tests::deployment::{Deployment, Span, backlog, state_dir};
use squall_tests::server::{SquallServer, find_process, wait_equal_to_oracle};
use squall_tests::{produce, unique, wait_for};
use squall_topologies::oracle;

const T0: i64 = 1_763_750_000_000;
const USERS: u64 = 400;
const TOKEN: &str = "catch-up-token-0123456789";

/// Versions 1 and 2 declare the same attributes: they must agree on every user.
const VERSIONS: &str = "[versions]\n1 = \"personalization_v1\"\n2 = \"personalization_v1\"\n";

/// The deployment (versions 1 and 2 of [`VERSIONS`], checkpoints in a directory) and a state
/// directory.
struct Setup {
    d: Deployment,
    dir: PathBuf,
}

impl Setup {
    async fn new(seed: u64) -> Setup {
        let d = Deployment::new("cu", seed, 4, |f, name| {
            let checkpoints = std::env::temp_dir().join(unique("catch-up-ckpt"));
            let state = format!(
                "epoch = \"200ms\"\ndedup_horizon = \"1d\"\nuser_ttl = \"3d\"\ncheckpoint_dir = \"{}\"",
                checkpoints.display()
            );
            f.topology_with_versions(
                name,
                1,
                VERSIONS,
                &[
                    ("state", &state),
                    ("runtime", "workers = 2"),
                    ("feed", "changelog = true\nchangelog_partitions = 2"),
                ],
            )
        })
        .await;
        Setup { d, dir: state_dir("squall-server") }
    }

    fn expected(&self, events: &[Event]) -> BTreeMap<String, Attributes> {
        oracle::expected(&squall_tests::declaration(1), events.iter(), &self.d.catalogue.oracle())
    }
}

/// Waits until the diff of `a` and `b` has caught up and compares every one of `users`; returns it.
async fn diff_of_all(server: &SquallServer, a: &str, b: &str, users: u64) -> serde_json::Value {
    wait_for(&format!("the diff of {a} and {b} to compare all {users} users"), Duration::from_secs(120), || async {
        let (status, r) = server.get(&format!("/v1/diff?a={a}&b={b}&wait_ms=0&sample=1000")).await;
        if status != 200 {
            return Err(format!("{status} {r}"));
        }
        if r["caught_up"] == true && r["users_compared"].as_u64() == Some(users) { Ok(r) } else { Err(r.to_string()) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_version_catching_up_on_7_days_counts_resends_once_and_agrees_with_the_live_one() {
    let s = Setup::new(26).await;
    let (records, events) = backlog(
        &s.d.f,
        &s.d.catalogue,
        Span { events: 30_000, days: 7, users: USERS, start_ms: T0, resends: 0.05 },
        26,
    );
    let expected = s.expected(&events);
    assert_eq!(expected.len() as u64, USERS);
    let server = SquallServer::start(&s.dir, TOKEN);
    let (v1, v2) = (s.d.group(1), s.d.group(2));

    // Version 1 reads the stream live, a few thousand events at a time.
    server.cli_ok(&["deploy", s.d.file(), "--version", "1"]);
    server.wait_serving(&v1).await;
    for chunk in records.chunks(3000) {
        produce(chunk.to_vec()).await;
    }
    wait_equal_to_oracle(&server.url, &format!("?group={v1}"), &expected, Duration::from_secs(120)).await;

    // Version 2 catches up on the whole backlog from the earliest offsets.
    server.cli_ok(&["deploy", s.d.file(), "--version", "2", "--start-from", "earliest"]);
    wait_equal_to_oracle(&server.url, &format!("?group={v2}"), &expected, Duration::from_secs(120)).await;

    // The diff compares every user, and all agree.
    let r = diff_of_all(&server, &v1, &v2, USERS).await;
    assert_eq!(r["users_agreeing"], r["users_compared"], "{r}");
    println!(
        "catch-up: {} events ({} records), {} users, v1 live and v2 caught up both equal the oracle; diff {}/{} agree",
        events.len(),
        records.len(),
        expected.len(),
        r["users_agreeing"],
        r["users_compared"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_version_catching_up_on_2_processes_through_kill_9s_counts_every_event_once() {
    let s = Setup::new(126).await;
    let (records, events) = backlog(
        &s.d.f,
        &s.d.catalogue,
        Span { events: 120_000, days: 7, users: USERS, start_ms: T0, resends: 0.05 },
        126,
    );
    let expected = s.expected(&events);
    produce(records.clone()).await;
    let server = SquallServer::start(&s.dir, TOKEN);
    let v2 = s.d.group(2);
    server.cli_ok(&["deploy", s.d.file(), "--version", "2", "--start-from", "earliest", "--processes", "2"]);
    let topology_arg = s.dir.join("deployments").join(&v2).join("topology.toml");
    // Two kills of process 1, each once the processes running then have applied a twelfth of
    // the backlog (the figures printed say how far each had got of the 120,000).
    let mut applied_at_kill = Vec::new();
    for kill in 1..=2u64 {
        let applied =
            wait_for(&format!("{v2} to apply events before kill {kill}"), Duration::from_secs(60), || async {
                let (_, d) = server.get(&format!("/v1/deployments/{v2}")).await;
                let applied = d["status"]["applied"].as_u64().unwrap_or(0);
                let restarts = d["restarts"].as_u64().unwrap_or(0);
                // After a restart the counters are the new processes' (from the cut they
                // recovered, or from the start when the kill came before the first complete cut).
                if restarts == kill - 1 && applied >= events.len() as u64 / 12 {
                    Ok(applied)
                } else {
                    Err(d.to_string())
                }
            })
            .await;
        let pid = wait_for("process 1 of the version", Duration::from_secs(60), || async {
            find_process(&["run", "--process", "1", topology_arg.to_str().unwrap()])
                .ok_or_else(|| "not running".to_owned())
        })
        .await;
        let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        applied_at_kill.push(applied);
        wait_for(&format!("{v2} restarted after kill {kill}"), Duration::from_secs(60), || async {
            let (_, d) = server.get(&format!("/v1/deployments/{v2}")).await;
            if d["restarts"].as_u64().unwrap_or(0) >= kill { Ok(()) } else { Err(d.to_string()) }
        })
        .await;
    }
    wait_equal_to_oracle(&server.url, &format!("?group={v2}"), &expected, Duration::from_secs(180)).await;
    println!(
        "catch-up with 2 kill -9s on 2 processes: {} events, {} users equal the oracle; events applied by the \
         processes killed: {applied_at_kill:?}",
        events.len(),
        expected.len()
    );
}
