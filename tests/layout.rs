//! Changing a version's layout (1 process x 2 workers -> 2 x 2 -> 4 x 1 -> 1 x 3), restarting it
//! from its checkpoint each time, against the real broker and CQL server: every user equals the
//! oracle after each change, each process holds only its own users, and resends of events sent
//! before a change are still dropped after it (the dedup ids moved with their key groups).

use std::collections::BTreeMap;
use std::time::Duration;

use squall::generate::{CatalogueGen, EventGen};
use squall_operators::{Attributes, Event};
use squall_tests::server::free_ports;
use squall_tests::{Fixture, Record, Squall, produce, stream_config, unique, wait_for};
use squall_topologies::oracle;

const T0: i64 = 1_763_750_000_000;

/// The processes of one run of a version.
struct Run {
    processes: Vec<Squall>,
}

impl Run {
    /// Starts `processes` processes of `workers` workers; they start together (each waits for the
    /// others to connect before it serves).
    fn start(topology: &std::path::Path, processes: usize, workers: usize) -> Run {
        let w = workers.to_string();
        if processes == 1 {
            return Run { processes: vec![Squall::run(topology, &["--workers", &w])] };
        }
        let ports = free_ports(2 * processes);
        let hosts: String =
            (0..processes).map(|p| format!("127.0.0.1:{} 127.0.0.1:{}\n", ports[2 * p], ports[2 * p + 1])).collect();
        let hostfile = std::env::temp_dir().join(format!("{}.hosts", unique("layout")));
        std::fs::write(&hostfile, hosts).unwrap();
        let n = processes.to_string();
        let args = |p: usize| -> Vec<String> {
            ["--workers", &w, "--processes", &n, "--process", &p.to_string(), "--hostfile", hostfile.to_str().unwrap()]
                .iter()
                .map(|s| s.to_string())
                .collect()
        };
        let others: Vec<_> = (1..processes)
            .map(|p| {
                let (t, a) = (topology.to_owned(), args(p));
                std::thread::spawn(move || Squall::run(&t, &a.iter().map(String::as_str).collect::<Vec<_>>()))
            })
            .collect();
        let first = Squall::run(topology, &args(0).iter().map(String::as_str).collect::<Vec<_>>());
        let mut all = vec![first];
        all.extend(others.into_iter().map(|t| t.join().expect("a process of the version")));
        Run { processes: all }
    }

    /// Stops every process with SIGTERM at once (a process of a cluster finishes only when all do).
    fn stop(self) {
        let stopping: Vec<_> = self.processes.into_iter().map(|p| std::thread::spawn(move || p.stop())).collect();
        for s in stopping {
            s.join().expect("a process stopped");
        }
    }
}

/// Waits until every user read at `url` equals the oracle.
async fn equals_oracle(url: &str, expected: &BTreeMap<String, Attributes>) {
    wait_for(&format!("every user at {url} to equal the oracle"), Duration::from_secs(120), || async {
        for (user, want) in expected {
            let resp = reqwest::get(format!("{url}/v1/users/{user}/attributes")).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let body: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
            let got: Attributes = serde_json::from_value(body["attributes"].clone())
                .map_err(|e| format!("{user}: {status} {body}: {e}"))?;
            if let Some(d) = oracle::difference(&got, want) {
                return Err(format!("{user}: {d}"));
            }
        }
        Ok(())
    })
    .await;
}

async fn users_held(s: &Squall) -> u64 {
    let st: serde_json::Value = reqwest::get(format!("{}/v1/status", s.url)).await.unwrap().json().await.unwrap();
    st["users"].as_u64().unwrap()
}

async fn layout_changes(state: &str) {
    let catalogue = CatalogueGen { tracks: 300, ads: 20, seed: 41 };
    let f = Fixture::with_catalogue(6, &catalogue).await;
    let name = unique("layout").replace('_', "-");
    let topology = f.topology(&name, 1, "personalization_v1", &[("state", state)]);
    let mut generator = EventGen::new(stream_config(300, catalogue), 41);
    let mut at = T0;
    let mut events: Vec<Event> = Vec::new();
    let mut previous: Vec<Record> = Vec::new();
    for (step, (processes, workers)) in [(1, 2), (2, 2), (4, 1), (1, 3)].into_iter().enumerate() {
        let run = Run::start(&topology, processes, workers);
        if step > 0 {
            // Recovered, each process with its own users only.
            let want = oracle::expected(&squall_tests::declaration(1), events.iter(), &catalogue.oracle());
            let mut held = Vec::new();
            for p in &run.processes {
                held.push(users_held(p).await);
            }
            assert_eq!(held.iter().sum::<u64>(), want.len() as u64, "users per process after the change: {held:?}");
            assert!(processes == 1 || held.iter().all(|h| *h < want.len() as u64), "{held:?}");
        }
        let (mut records, batch) = f.batch(&mut generator, &mut at, 1500);
        // Resends of the previous run's events (applied and checkpointed before it stopped, so not
        // replayed): their ids must have moved with their users.
        let resent: Vec<Record> = previous.iter().filter(|(_, k, _)| k != "x").step_by(25).take(60).cloned().collect();
        records.splice(0..0, resent);
        produce(records.clone()).await;
        previous = records;
        events.extend(batch);
        let want = oracle::expected(&squall_tests::declaration(1), events.iter(), &catalogue.oracle());
        equals_oracle(&run.processes[0].url, &want).await;
        let recovered = run.processes[0].stdout().iter().any(|l| l.contains("recovered from checkpoint"));
        assert_eq!(recovered, step > 0, "step {step} resumed from the checkpoint");
        println!(
            "layout {state:?}: step {step} = {processes} x {workers}: events={} users={} equal to the oracle",
            events.len(),
            want.len()
        );
        run.stop();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn changing_the_layout_of_a_version_with_directory_checkpoints() {
    let dir = std::env::temp_dir().join(unique("layout-ckpt"));
    let state = format!("epoch = \"100ms\"\ncompact_every = 5\ncheckpoint_dir = \"{}\"", dir.display());
    layout_changes(&state).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn changing_the_layout_of_a_version_with_cql_checkpoints() {
    // Fewer key groups than the default: the dev server answers each partition read in turn.
    let state = "epoch = \"100ms\"\ncompact_every = 5\ncheckpoint_store = \"cql\"\nkey_groups = 256";
    layout_changes(state).await;
}
