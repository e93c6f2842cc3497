//! Versions outlive the control plane, against the real broker and CQL server (issue 19), and run
//! the executables they were deployed with (issue 13, part 2):
//!
//! - a SIGKILLed server restarted at once adopts its versions: same pids, no failed query to a
//!   version's own address, queries through the server answered again within a second;
//! - versions that no server adopts stop themselves cleanly after the adopt timeout, and a server
//!   started later resumes them from their checkpoints with nothing lost or counted twice;
//! - a stale runtime file whose pid now names another process is not adopted (nor is that
//!   process touched): the version starts afresh;
//! - versions pinned to their own executables keep them across a server upgrade, and rollback
//!   returns to the old binary's answers.
//!
//! Deduplication is off and no event is resent, so an event applied twice shows up as a mismatch.
//! `SQUALL_ADOPT_USERS` sets the users in state of the restart test (20,000 by default, so that CI
//! stays short on 2 cores; the figure for 1M users is in benches/RESULTS.md, with its command).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use squall::generate::{CatalogueGen, EventGen, EventGenConfig};
use squall_operators::event::SongCompletion;
use squall_operators::{Attributes, Event};
use squall_tests::deployment::{Deployment, Stream, state_dir};
use squall_tests::server::{SquallServer, alive, exe_of, free_ports, pid_at, wait_equal_to_oracle};
use squall_tests::{Fixture, Record, binary, produce, stream_config_without_resends, unique, wait_for};
use squall_topologies::oracle;

const T0: i64 = 1_763_750_000_000;
const TOKEN: &str = "adopt-token-0123456789abcdef";
const PARTITIONS: i32 = 4;

/// The deployment (versions 1 and 3 = personalization_v1, 2 = personalization_v2; dedup off), a
/// state directory and a generated stream over `users`.
struct Setup {
    d: Deployment,
    dir: PathBuf,
    stream: Stream,
    users: u64,
}

impl Setup {
    async fn new(seed: u64, users: u64) -> Setup {
        let d = Deployment::new("ad", seed, PARTITIONS, |f, name| {
            f.topology(
                name,
                1,
                "personalization_v1",
                &[
                    ("versions", "1 = \"personalization_v1\"\n2 = \"personalization_v2\"\n3 = \"personalization_v1\""),
                    ("state", "epoch = \"200ms\"\ndedup_horizon = \"0s\""),
                    ("runtime", "workers = 1"),
                ],
            )
        })
        .await;
        let stream = Stream::new(stream(users, d.catalogue, "run"), seed, T0);
        Setup { d, dir: state_dir("squall-adopt"), stream, users }
    }

    /// The next `n` generated records, and the valid events among them.
    fn batch(&mut self, n: usize) -> (Vec<Record>, Vec<Event>) {
        self.stream.batch(&self.d.f, n)
    }

    /// One song completion for every user `u1..=users`: every user has state.
    fn everyone(&mut self) -> (Vec<Record>, Vec<Event>) {
        let (mut records, mut events) = (Vec::new(), Vec::new());
        for u in 1..=self.users {
            self.stream.at += 1;
            let e = Event::Song(SongCompletion {
                event_id: format!("base-{}-{u}", self.d.name).into(),
                user_id: format!("u{u}").into(),
                track_id: format!("t{}", u % self.d.catalogue.tracks).into(),
                ms_played: 40_000 + u % 1000,
                ts: self.stream.at,
            });
            records.push((self.d.f.songs.clone(), e.user_id().to_owned(), e.to_json()));
            events.push(e);
        }
        (records, events)
    }

    /// What version `version`'s declaration makes of `events`.
    fn oracle(&self, version: u32, events: &[Event]) -> BTreeMap<String, Attributes> {
        let declaration = if version == 2 { 2 } else { 1 };
        oracle::expected(&squall_tests::declaration(declaration), events.iter(), &self.d.catalogue.oracle())
    }

    /// Events produced continuously from now on, until [`Flow::stop`].
    fn flow(&mut self) -> Flow {
        let f =
            Fixture { songs: self.d.f.songs.clone(), ads: self.d.f.ads.clone(), keyspace: self.d.f.keyspace.clone() };
        let config = stream(self.users, self.d.catalogue, "flow");
        let (mut generator, mut at) = (EventGen::new(config, self.stream.at as u64), self.stream.at + 1_000_000);
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let stop = Arc::clone(&stop);
            async move {
                let mut all = Vec::new();
                while !stop.load(Relaxed) {
                    let (records, events) = f.batch(&mut generator, &mut at, 200);
                    produce(records).await;
                    all.extend(events);
                    // About 4,000 events a second: a steady stream, not a flood of the 2 cores.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                all
            }
        });
        Flow { stop, task }
    }
}

/// A stream over `users` without resends (dedup is off), its event ids unique to this run.
fn stream(users: u64, catalogue: CatalogueGen, run: &str) -> EventGenConfig {
    EventGenConfig { run_id: unique(run), ..stream_config_without_resends(users, catalogue) }
}

/// A producer running in the background.
struct Flow {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Event>>,
}

impl Flow {
    /// Stops producing; every event produced (all delivered).
    async fn stop(self) -> Vec<Event> {
        self.stop.store(true, Relaxed);
        self.task.await.expect("producer")
    }
}

/// Produces `records` 50,000 at a time (the producer's queue holds 100,000).
async fn produce_all(records: Vec<Record>) {
    let mut records = records.into_iter().peekable();
    while records.peek().is_some() {
        produce(records.by_ref().take(50_000).collect::<Vec<_>>()).await;
    }
}

/// Queries that never stop while the test runs: users' attributes at one address.
struct Probe {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Probe {
    /// Asks `url` for the attributes of the users `u1..=users` in turn, one after another.
    fn start(url: &str, users: u64) -> Probe {
        let (stop, answered) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let task = tokio::spawn({
            let (url, stop, answered) = (url.to_owned(), Arc::clone(&stop), Arc::clone(&answered));
            async move {
                let client = reqwest::Client::new();
                let mut failures = Vec::new();
                let mut u = 0;
                while !stop.load(Relaxed) {
                    u = u % users + 1;
                    match client.get(format!("{url}/v1/users/u{u}/attributes")).send().await {
                        Ok(r) if r.status() == 200 => {
                            answered.fetch_add(1, Relaxed);
                        }
                        Ok(r) => failures.push(format!("u{u}: {}", r.status())),
                        Err(e) => failures.push(format!("u{u}: {e}")),
                    }
                }
                failures
            }
        });
        Probe { stop, answered, task }
    }

    fn answered(&self) -> u64 {
        self.answered.load(Relaxed)
    }

    /// Stops asking; (queries answered, failures).
    async fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Relaxed);
        let failures = self.task.await.expect("probe");
        (self.answered.load(Relaxed), failures)
    }
}

/// The `urls` of a deployment's detail.
fn urls(detail: &serde_json::Value) -> Vec<String> {
    detail["urls"].as_array().expect("urls").iter().map(|u| u.as_str().expect("url").to_owned()).collect()
}

async fn pids(urls: &[String]) -> Vec<u32> {
    let mut pids = Vec::new();
    for url in urls {
        pids.push(pid_at(url).await.expect("a version's pid"));
    }
    pids
}

fn kill9(pid: u32) {
    let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_server_restarted_at_once_adopts_its_versions_without_a_gap_in_answers() {
    let users: u64 = std::env::var("SQUALL_ADOPT_USERS").ok().and_then(|u| u.parse().ok()).unwrap_or(20_000);
    let mut s = Setup::new(41, users).await;
    let g = s.d.group(1);
    // A fixed port, so that queries can be sent to the restarted server from the moment it starts.
    let listen = format!("127.0.0.1:{}", free_ports(1)[0]);
    let adopt_timeout = Duration::from_secs(4);
    let args = ["--adopt-timeout", "4s", "--stop-versions-on-exit"];
    let server = SquallServer::start_with(&binary("squall"), &s.dir, TOKEN, &listen, &args);
    server.cli_ok(&["deploy", s.d.file(), "--processes", "2", "--workers", "1"]);
    server.wait_serving(&g).await;
    server.cli_ok(&["promote", &g]);

    let loading = Instant::now();
    let (records, mut events) = s.everyone();
    produce_all(records).await;
    let want = s.oracle(1, &events);
    wait_equal_to_oracle(&server.url, "", &want, Duration::from_secs(600)).await;
    println!("adopt: {} users in state after {:.1} s", want.len(), loading.elapsed().as_secs_f64());
    let before = urls(&server.wait_serving(&g).await);
    let pids_before = pids(&before).await;

    // Events flow and the version's own address is queried throughout.
    let flow = s.flow();
    let probe = Probe::start(&before[0], users);
    wait_for("the probe's first answers", Duration::from_secs(10), || async {
        if probe.answered() > 10 { Ok(()) } else { Err(format!("{} answered", probe.answered())) }
    })
    .await;

    server.kill9();
    let killed = Instant::now();
    let during_outage = probe.answered();
    // Restart at once; ask the server for a user from the moment its process starts.
    let restarting = tokio::task::spawn_blocking({
        let (dir, listen) = (s.dir.clone(), listen.clone());
        move || {
            let started = Instant::now();
            let server = SquallServer::start_with(&binary("squall"), &dir, TOKEN, &listen, &args);
            (server, started.elapsed())
        }
    });
    let first_answer = {
        let client = reqwest::Client::new();
        loop {
            let answer = client.get(format!("http://{listen}/v1/users/u1/attributes")).send().await;
            if let Ok(r) = answer
                && r.status() == 200
                && r.json::<serde_json::Value>().await.is_ok_and(|b| b["group_id"] == g.as_str())
            {
                break killed.elapsed();
            }
            assert!(killed.elapsed() < Duration::from_secs(30), "the restarted server does not answer");
            // The measurement's resolution; asking without a pause would take a core from the server.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let (server, readiness) = restarting.await.expect("restart");
    let during_outage = probe.answered() - during_outage;

    // The same processes serve, adopted: nothing was restarted.
    let d = server.wait_serving(&g).await;
    assert_eq!(
        (urls(&d), &d["adopted"], &d["restarts"]),
        (before.clone(), &serde_json::json!(true), &serde_json::json!(0)),
        "{d}"
    );
    assert_eq!(pids(&before).await, pids_before);
    // The restarted server renews the leases: the processes outlive their adopt timeout. (Waiting
    // out the timeout is what is tested here.)
    tokio::time::sleep_until((killed + adopt_timeout + Duration::from_secs(2)).into()).await;
    assert!(pids_before.iter().all(|p| alive(*p)), "a version process stopped although it was adopted");
    assert_eq!(pids(&before).await, pids_before);

    events.extend(flow.stop().await);
    let want = s.oracle(1, &events);
    wait_equal_to_oracle(&server.url, "", &want, Duration::from_secs(600)).await;
    wait_equal_to_oracle(&before[1], "", &want, Duration::from_secs(60)).await;
    s.d.fully_committed(&g, Duration::from_secs(120)).await;
    let (answered, failures) = probe.stop().await;
    assert!(failures.is_empty(), "queries to {} failed: {:?}", before[0], &failures[..failures.len().min(5)]);
    assert!(during_outage > 0, "the version's address was queried while the server was down");
    println!(
        "adopt: server SIGKILLed and restarted with {} users in state ({} events): first query answered through \
         the server {:.0} ms after the kill (the new server's readiness line after {:.0} ms); version processes kept \
         pids {pids_before:?}; {answered} queries to {} during the test ({during_outage} while the server was down), 0 failed",
        want.len(),
        events.len(),
        first_answer.as_secs_f64() * 1e3,
        readiness.as_secs_f64() * 1e3,
        before[0],
    );
    assert!(first_answer < Duration::from_secs(1), "queries through the server answered again after {first_answer:?}");

    assert!(server.stop().success());
    wait_for("the versions to stop with the server (--stop-versions-on-exit)", Duration::from_secs(60), || async {
        if pids_before.iter().any(|p| alive(*p)) { Err(format!("{pids_before:?}")) } else { Ok(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn versions_no_server_adopts_stop_themselves_and_resume_from_their_checkpoints() {
    let mut s = Setup::new(42, 2000).await;
    let g = s.d.group(1);
    let args = ["--adopt-timeout", "3s", "--stop-versions-on-exit"];
    let server = SquallServer::start_with(&binary("squall"), &s.dir, TOKEN, "127.0.0.1:0", &args);
    server.cli_ok(&["deploy", s.d.file(), "--processes", "2", "--workers", "1"]);
    server.wait_serving(&g).await;
    server.cli_ok(&["promote", &g]);
    let (records, mut events) = s.batch(4000);
    produce(records).await;
    wait_equal_to_oracle(&server.url, "", &s.oracle(1, &events), Duration::from_secs(90)).await;
    let pids = pids(&urls(&server.wait_serving(&g).await)).await;

    // The server dies while events flow; nobody adopts the version.
    let flow = s.flow();
    server.kill9();
    let killed = Instant::now();
    wait_for("every process of the version to stop itself", Duration::from_secs(60), || async {
        if pids.iter().any(|p| alive(*p)) { Err(format!("{pids:?} still running")) } else { Ok(()) }
    })
    .await;
    let stopped_after = killed.elapsed();
    events.extend(flow.stop().await);
    // The lease runs from the last heartbeat, at most a monitor tick (1 s) before the kill.
    assert!(stopped_after >= Duration::from_secs(2), "stopped {stopped_after:?} after the server: before the timeout");
    // Cleanly: each said why, and removed its runtime file.
    let deployment = s.dir.join("deployments").join(&g);
    let log = std::fs::read_to_string(deployment.join("squall.log")).expect("the version's log");
    assert_eq!(log.matches("no squall server has renewed this process's lease").count(), 2, "{log}");
    for i in 0..2 {
        assert!(!deployment.join(format!("process-{i}.json")).exists(), "process {i}'s runtime file is left");
    }
    let (records, more) = s.batch(4000);
    produce(records).await;
    events.extend(more);

    // A server started later resumes the version from its last complete checkpoint.
    let outage = killed.elapsed();
    let server = SquallServer::start(&s.dir, TOKEN);
    let d = server.wait_serving(&g).await;
    assert_eq!((&d["adopted"], &d["restarts"]), (&serde_json::json!(false), &serde_json::json!(0)), "{d}");
    let want = s.oracle(1, &events);
    wait_equal_to_oracle(&server.url, "", &want, Duration::from_secs(120)).await;
    s.d.fully_committed(&g, Duration::from_secs(120)).await;
    let cut = wait_for("the resumed version's counters", Duration::from_secs(30), || async {
        let (_, d) = server.get(&format!("/v1/deployments/{g}")).await;
        d["status"]["recovered_cut"].as_u64().ok_or_else(|| d.to_string())
    })
    .await;
    println!(
        "adopt: no server for {:.1} s: the version's 2 processes stopped themselves {:.1} s after the server's \
         SIGKILL (adopt timeout 3 s); a later server resumed it from cut {cut}; {} events, {} users, 0 mismatches",
        outage.as_secs_f64(),
        stopped_after.as_secs_f64(),
        events.len(),
        want.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_runtime_file_naming_a_recycled_pid_starts_the_version_afresh() {
    let mut s = Setup::new(43, 500).await;
    let g = s.d.group(1);
    let server = SquallServer::start(&s.dir, TOKEN);
    server.cli_ok(&["deploy", s.d.file()]);
    server.wait_serving(&g).await;
    server.cli_ok(&["promote", &g]);
    let (records, mut events) = s.batch(2000);
    produce(records).await;
    wait_equal_to_oracle(&server.url, "", &s.oracle(1, &events), Duration::from_secs(90)).await;
    let old = pid_at(&urls(&server.wait_serving(&g).await)[0]).await.expect("pid");

    // The server and the version die; the version's pid goes to an unrelated process.
    server.kill9();
    kill9(old);
    wait_for("the version to die", Duration::from_secs(10), || async {
        if alive(old) { Err(format!("{old} alive")) } else { Ok(()) }
    })
    .await;
    let mut impostor = std::process::Command::new("sleep").arg("600").spawn().expect("sleep");
    let runfile = s.dir.join("deployments").join(&g).join("process-0.json");
    let mut record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&runfile).expect("runtime file")).unwrap();
    record["pid"] = impostor.id().into();
    std::fs::write(&runfile, serde_json::to_vec(&record).unwrap()).unwrap();
    let (records, more) = s.batch(2000);
    produce(records).await;
    events.extend(more);

    let server = SquallServer::start(&s.dir, TOKEN);
    let d = server.wait_serving(&g).await;
    let new = pid_at(&urls(&d)[0]).await.expect("pid");
    assert_eq!(d["adopted"], false, "{d}");
    assert!(new != old && new != impostor.id(), "the version runs as {new}");
    assert!(alive(impostor.id()), "the process that got the recorded pid was signalled");
    wait_equal_to_oracle(&server.url, "", &s.oracle(1, &events), Duration::from_secs(90)).await;
    let _ = impostor.kill();
    let _ = impostor.wait();
    println!(
        "adopt: a runtime file naming pid {} (now `sleep`) was not adopted; the version started afresh as {new}",
        impostor.id()
    );
}

/// A copy of the built `squall` that differs from it (and from the other copies) by `marker`
/// appended after the ELF image, which changes its hash but not what it does.
fn copy_of_squall(dir: &Path, marker: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(format!("squall-{marker}"));
    let mut bytes = std::fs::read(binary("squall")).expect("read squall");
    bytes.extend_from_slice(format!("squall-test-marker:{marker}").as_bytes());
    std::fs::write(&path, bytes).expect("write the copy");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// The executable the processes at `urls` run.
async fn exes(urls: &[String]) -> Vec<PathBuf> {
    pids(urls).await.into_iter().map(exe_of).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn versions_keep_their_own_binaries_across_a_server_upgrade_and_roll_back_to_the_old_answers() {
    let mut s = Setup::new(44, 300).await;
    let (v1, v2, v3) = (s.d.group(1), s.d.group(2), s.d.group(3));
    let bins = s.dir.join("copies");
    std::fs::create_dir_all(&bins).unwrap();
    let (b1, b2) = (copy_of_squall(&bins, "v1"), copy_of_squall(&bins, "v2"));

    // The old server, without --stop-versions-on-exit: stopping it for the upgrade stops no version.
    let server = SquallServer::start_with(&binary("squall"), &s.dir, TOKEN, "127.0.0.1:0", &["--adopt-timeout", "60s"]);
    let out = server.cli_ok(&["deploy", s.d.file(), "--version", "1", "--binary", b1.to_str().unwrap()]);
    assert!(out.contains("uploaded") && out.contains("binary "), "{out}");
    server.cli_ok(&["deploy", s.d.file(), "--version", "2", "--binary", b2.to_str().unwrap()]);
    let (d1, d2) = (server.wait_serving(&v1).await, server.wait_serving(&v2).await);
    server.cli_ok(&["promote", &v2]);
    std::fs::remove_file(&b1).unwrap();
    std::fs::remove_file(&b2).unwrap();
    let stored = |d: &serde_json::Value| {
        let hash = d["binary"].as_str().unwrap_or_else(|| panic!("no binary in {d}"));
        std::fs::canonicalize(s.dir.join("binaries").join(hash)).expect("the stored binary")
    };
    let (h1, h2) = (stored(&d1), stored(&d2));
    assert_ne!(h1, h2);
    assert!(std::fs::read(&h1).unwrap().ends_with(b"squall-test-marker:v1"));
    assert_eq!(exes(&urls(&d1)).await, vec![h1.clone()]);
    assert_eq!(exes(&urls(&d2)).await, vec![h2.clone()]);
    let (records, mut events) = s.batch(2000);
    produce(records).await;
    wait_equal_to_oracle(&server.url, &format!("?group={v1}"), &s.oracle(1, &events), Duration::from_secs(90)).await;
    wait_equal_to_oracle(&server.url, "", &s.oracle(2, &events), Duration::from_secs(90)).await;
    let pids_before = [pids(&urls(&d1)).await, pids(&urls(&d2)).await];

    // The upgrade: stop the old server, start the new executable on the same state directory.
    assert!(server.stop().success());
    let upgraded = copy_of_squall(&bins, "server-2");
    let args = ["--adopt-timeout", "60s", "--stop-versions-on-exit"];
    let server = SquallServer::start_with(&upgraded, &s.dir, TOKEN, "127.0.0.1:0", &args);
    assert_eq!(exe_of(server.pid()), std::fs::canonicalize(&upgraded).unwrap());
    let (d1, d2) = (server.wait_serving(&v1).await, server.wait_serving(&v2).await);
    assert_eq!([pids(&urls(&d1)).await, pids(&urls(&d2)).await], pids_before, "no version restarted");
    assert_eq!((&d1["adopted"], &d2["adopted"]), (&serde_json::json!(true), &serde_json::json!(true)));
    assert_eq!(exes(&urls(&d1)).await, vec![h1.clone()]);
    assert_eq!(exes(&urls(&d2)).await, vec![h2.clone()]);

    // A version the new server restarts still runs its own binary...
    kill9(pids_before[0][0]);
    let d1 = wait_for("v1 to be restarted", Duration::from_secs(60), || async {
        let (_, d) = server.get(&format!("/v1/deployments/{v1}")).await;
        if d["restarts"] == 1 && d["state"] == "running" { Ok(d) } else { Err(d.to_string()) }
    })
    .await;
    assert_eq!(exes(&urls(&d1)).await, vec![h1.clone()], "restarted with its own binary");
    // ... and one deployed without --binary runs the server's own, the new one.
    server.cli_ok(&["deploy", s.d.file(), "--version", "3"]);
    let d3 = server.wait_serving(&v3).await;
    assert_eq!(d3.get("binary"), None, "{d3}");
    assert_eq!(exes(&urls(&d3)).await, vec![std::fs::canonicalize(&upgraded).unwrap()]);

    // Roll back to v1: the newer versions stop, and v1 answers as its declaration says.
    let (records, more) = s.batch(2000);
    produce(records).await;
    events.extend(more);
    let out = server.cli_ok(&["rollback", &v1]);
    assert!(out.contains(&v2) && out.contains(&v3), "{out}");
    let (_, body) = server.get("/v1/users/u1/attributes").await;
    assert_eq!(body["group_id"], v1.as_str(), "{body}");
    wait_equal_to_oracle(&server.url, "", &s.oracle(1, &events), Duration::from_secs(90)).await;
    println!(
        "binaries: {v1} runs {} and {v2} runs {} under both servers (the new one from {}); v1 restarted by the new \
         server kept its binary; rollback to {v1} answers its declaration",
        h1.display(),
        h2.display(),
        upgraded.display()
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&s.dir);
}
