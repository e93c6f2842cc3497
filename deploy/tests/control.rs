//! The control plane in-process, mini-redis style: a real `Control` and its HTTP API on a
//! loopback port, with a fake `Launcher` (each "process" is a tiny HTTP server on this runtime)
//! and a fake `LagSource`. No broker, no CQL server, no child processes: a test binary of its own,
//! so that the metrics it records are not mixed with the unit tests'.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use futures::future::BoxFuture;
use serde_json::{Value, json};
use squall_operators::Partition;
use tokio::sync::{mpsc, oneshot};

use squall::control::lag::LagSource;
use squall::control::launcher::{
    LaunchSpec, Launcher, Origin, ProcessEvent, ProcessHandle, ProcessSide, Signal, StandbyOf, Survivor, launch_id,
};
use squall::control::state::Observation;
use squall::control::statedir::StateDir;
use squall::control::supervisor::{Begin, Supervisor};
use squall::control::{Control, ServerConfig, api};
use squall::kafka::{Inputs, KafkaSetupError, PartitionLag};
use squall::values::GroupId;
use squall::version::counters::RunStatus;

const TOKEN: &str = "test-token-0123456789abcdef";
/// The shipped topology file: versions 1 and 2 of `personalization`.
const TOPOLOGY: &str = include_str!("../../topologies/personalization.toml");

fn g(s: &str) -> GroupId {
    s.parse().unwrap()
}

// ---------------------------------------------------------------- fakes

/// Starts "processes" that are HTTP servers on this runtime, and lets tests kill them.
#[derive(Default)]
struct FakeLauncher {
    state: Arc<Mutex<FakeState>>,
    /// While set, processes do not announce that they serve.
    hold_ready: AtomicBool,
}

#[derive(Default)]
struct FakeState {
    /// Starts that are to fail, from the next one on.
    fail_starts: usize,
    /// Runs started per deployment.
    starts: HashMap<GroupId, usize>,
    /// Processes alive per deployment.
    alive: HashMap<GroupId, usize>,
    /// How to kill each live process, by deployment and index.
    kills: HashMap<(GroupId, usize), oneshot::Sender<()>>,
    /// The launch ids handed out, by deployment.
    launch_ids: HashMap<GroupId, Vec<String>>,
    /// Each live process's launch id and how to hand it to a new supervisor (adoption), by
    /// deployment and index.
    adopters: HashMap<(GroupId, usize), (String, mpsc::UnboundedSender<ProcessSide>)>,
    /// Status requests that named the process's launch id (lease renewals), by deployment and index.
    heartbeats: HashMap<(GroupId, usize), usize>,
    /// The program of each deployment's last run.
    programs: HashMap<GroupId, PathBuf>,
    /// Whether a standby takes over when asked (`Launcher::take_over`): a new process 0, adopted.
    take_over: bool,
    /// How long a take-over takes.
    take_over_delay: Duration,
    /// Take-overs asked for, per deployment.
    take_overs: HashMap<GroupId, usize>,
}

impl FakeLauncher {
    fn with<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    fn starts(&self, group: &str) -> usize {
        self.with(|s| s.starts.get(&g(group)).copied().unwrap_or(0))
    }

    fn alive(&self, group: &str) -> usize {
        self.with(|s| s.alive.get(&g(group)).copied().unwrap_or(0))
    }

    /// Kills process `index` of `group` (as SIGKILL would).
    fn kill(&self, group: &str, index: usize) {
        let kill = self.with(|s| s.kills.remove(&(g(group), index))).expect("a live process to kill");
        let _ = kill.send(());
    }

    fn heartbeats(&self, group: &str, index: usize) -> usize {
        self.with(|s| s.heartbeats.get(&(g(group), index)).copied().unwrap_or(0))
    }

    fn take_overs(&self, group: &str) -> usize {
        self.with(|s| s.take_overs.get(&g(group)).copied().unwrap_or(0))
    }
}

/// Starts fake process `index` of `group` on this runtime (announcing that it serves unless
/// `hold_ready`), recorded in `state`, the state of `fleet`.
fn spawn_process(
    fleet: &Arc<Mutex<FakeState>>,
    state: &mut FakeState,
    group: &GroupId,
    index: usize,
    origin: Origin,
    announce: bool,
) -> Result<ProcessHandle, String> {
    let id = launch_id();
    let (handle, side) = ProcessHandle::new(origin, id.clone());
    let (kill, killed) = oneshot::channel();
    state.kills.insert((group.clone(), index), kill);
    let (adopter, adoptions) = mpsc::unbounded_channel();
    state.adopters.insert((group.clone(), index), (id.clone(), adopter));
    *state.alive.entry(group.clone()).or_default() += 1;
    state.launch_ids.entry(group.clone()).or_default().push(id.clone());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let process = FakeProcess { group: group.clone(), index, launch_id: id, fleet: Arc::clone(fleet) };
    tokio::spawn(run_process(process, listener, side, adoptions, killed, announce));
    Ok(handle)
}

impl Launcher for FakeLauncher {
    fn start(&self, spec: &LaunchSpec) -> Result<Vec<ProcessHandle>, String> {
        let mut handles = Vec::new();
        let mut state = self.state.lock().unwrap();
        if state.fail_starts > 0 {
            state.fail_starts -= 1;
            return Err(format!("cannot start {}: No such file or directory", spec.program.display()));
        }
        *state.starts.entry(spec.group_id.clone()).or_default() += 1;
        state.programs.insert(spec.group_id.clone(), spec.program.clone());
        let announce = !self.hold_ready.load(SeqCst);
        for index in 0..spec.processes {
            let origin = Origin::Spawned { pid: None };
            handles.push(spawn_process(&self.state, &mut state, &spec.group_id, index, origin, announce)?);
        }
        Ok(handles)
    }

    /// Every live process of the deployment, handed to the caller (all verified: they answer).
    fn find(&self, spec: &LaunchSpec) -> BoxFuture<'static, Vec<Survivor>> {
        let state = self.state.lock().unwrap();
        let mut found = Vec::new();
        for index in 0..spec.processes {
            let Some((id, adopter)) = state.adopters.get(&(spec.group_id.clone(), index)) else { continue };
            let (handle, side) = ProcessHandle::new(Origin::Adopted { pid: 1000 + index as u32 }, id.clone());
            if adopter.send(side).is_ok() {
                found.push(Survivor { index, handle, verified: Ok(()) });
            }
        }
        Box::pin(async move { found })
    }

    /// New processes (one per process of the version) that stand for the standbys that took over,
    /// after `take_over_delay`, if `take_over` is set; else `None`. Every request is counted.
    fn take_over(&self, spec: &LaunchSpec) -> BoxFuture<'static, Option<Vec<ProcessHandle>>> {
        let (fleet, group, announce) = (Arc::clone(&self.state), spec.group_id.clone(), !self.hold_ready.load(SeqCst));
        let processes = spec.processes;
        let (succeeds, delay) = self.with(|s| {
            *s.take_overs.entry(group.clone()).or_default() += 1;
            (s.take_over, s.take_over_delay)
        });
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            if !succeeds {
                return None;
            }
            let mut state = fleet.lock().unwrap();
            let origin = Origin::Adopted { pid: 2000 };
            (0..processes).map(|i| spawn_process(&fleet, &mut state, &group, i, origin, announce).ok()).collect()
        })
    }
}

/// What a fake process answers with.
#[derive(Clone)]
struct FakeProcess {
    group: GroupId,
    index: usize,
    launch_id: String,
    fleet: Arc<Mutex<FakeState>>,
}

/// A fake `squall run`: serves `/v1/status` and attributes (naming itself) until it is signalled
/// or killed, then reports its exit. A supervisor that lets go of it leaves it running until
/// another one adopts it (through `adoptions`).
async fn run_process(
    p: FakeProcess,
    listener: std::net::TcpListener,
    side: ProcessSide,
    mut adoptions: mpsc::UnboundedReceiver<ProcessSide>,
    mut killed: oneshot::Receiver<()>,
    announce: bool,
) {
    let ProcessSide { mut events, mut signals } = side;
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = Router::new()
        .route(
            "/v1/status",
            get(|State(p): State<FakeProcess>, Query(q): Query<HashMap<String, String>>| async move {
                if q.get("launch_id") == Some(&p.launch_id) {
                    *p.fleet.lock().unwrap().heartbeats.entry((p.group.clone(), p.index)).or_default() += 1;
                }
                axum::Json(RunStatus {
                    group_id: p.group.to_string(),
                    applied: 10,
                    launch_id: Some(p.launch_id),
                    ..Default::default()
                })
            }),
        )
        .route(
            "/v1/users/{user}/attributes",
            get(|State(p): State<FakeProcess>, Path(user): Path<String>| async move {
                axum::Json(json!({ "user_id": user, "group_id": p.group, "process": p.index }))
            }),
        )
        .with_state(p.clone());
    let (stop_server, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(squall::version::http::serve(listener, router, async {
        let _ = stopped.await;
    }));
    if announce {
        let _ = events.send(ProcessEvent::Ready(url.clone()));
    }
    let why = loop {
        tokio::select! {
            s = signals.recv() => match s {
                Some(Signal::Terminate) => break "exit status: 0",
                Some(Signal::Kill) => break "signal: 9 (SIGKILL)",
                // Let go of: keep serving, and wait for someone to adopt it.
                None => match tokio::select! { side = adoptions.recv() => side, _ = &mut killed => None } {
                    Some(side) => {
                        (events, signals) = (side.events, side.signals);
                        let _ = events.send(ProcessEvent::Ready(url.clone()));
                    }
                    None => break "signal: 9 (SIGKILL)",
                },
            },
            _ = &mut killed => break "signal: 9 (SIGKILL)",
        }
    };
    let _ = stop_server.send(());
    let _ = server.await;
    // Gone before it says so, as a real process is.
    {
        let mut fleet = p.fleet.lock().unwrap();
        fleet.kills.remove(&(p.group.clone(), p.index));
        fleet.adopters.remove(&(p.group.clone(), p.index));
        *fleet.alive.entry(p.group.clone()).or_default() -= 1;
    }
    let _ = events.send(ProcessEvent::Exited(format!("process {} exited ({why}); log tail:\n", p.index)));
}

/// Lag readings set by the test; a lag source that can hang, as a broker that does not answer.
#[derive(Default)]
struct FakeLag {
    lag: Mutex<HashMap<GroupId, i64>>,
    /// Groups that have committed offsets.
    committed: Mutex<HashSet<GroupId>>,
    hang: (Mutex<bool>, Condvar),
}

impl FakeLag {
    fn set(&self, group: &str, lag: i64) {
        self.lag.lock().unwrap().insert(g(group), lag);
    }

    fn hang(&self, on: bool) {
        *self.hang.0.lock().unwrap() = on;
        self.hang.1.notify_all();
    }
}

impl LagSource for FakeLag {
    fn lag(&self, group: &GroupId, inputs: &Inputs) -> Result<Vec<PartitionLag>, KafkaSetupError> {
        drop(self.hang.1.wait_while(self.hang.0.lock().unwrap(), |hung| *hung).unwrap());
        let lag = self.lag.lock().unwrap().get(group).copied().unwrap_or(0);
        let topic = inputs.topics[0].0.clone();
        Ok(vec![PartitionLag { topic, partition: 0, committed: Some(100 - lag), high_watermark: 100, lag }])
    }

    fn committed(&self, group: &GroupId, inputs: &Inputs) -> Result<BTreeMap<Partition, i64>, KafkaSetupError> {
        let mut found = BTreeMap::new();
        if self.committed.lock().unwrap().contains(group) {
            found.insert(Partition { topic: inputs.topics[0].0.clone(), partition: 0 }, 7);
        }
        Ok(found)
    }
}

// ---------------------------------------------------------------- harness

/// A control plane with fakes, serving its API on a loopback port.
struct Harness {
    control: Arc<Control>,
    url: String,
    launcher: Arc<FakeLauncher>,
    lag: Arc<FakeLag>,
    dir: PathBuf,
    http: reqwest::Client,
}

impl Harness {
    async fn start() -> Harness {
        let dir = std::env::temp_dir().join(format!(
            "squall-control-{}-{}",
            std::process::id(),
            launch_id() // unique enough for concurrent tests
        ));
        Harness::start_in(dir, Arc::default(), Arc::default()).await
    }

    async fn start_in(dir: PathBuf, launcher: Arc<FakeLauncher>, lag: Arc<FakeLag>) -> Harness {
        let cfg = ServerConfig {
            state_dir: StateDir::new(&dir),
            token: TOKEN.into(),
            brokers: Some("127.0.0.1:1".into()),
            cql: None,
            program: PathBuf::from("/fake/squall"),
            catch_up_lag: 10,
            poll_every: Duration::from_millis(10),
            max_binary_bytes: 4096,
            diff_duty: squall::changelog_diff::DUTY,
        };
        let control = Control::start(cfg, launcher.clone(), lag.clone()).await.expect("control plane");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(squall::version::http::serve(listener, api::router(control.clone()), std::future::pending()));
        Harness { control, url, launcher, lag, dir, http: reqwest::Client::new() }
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self.http.get(format!("{}{path}", self.url)).send().await.expect("GET");
        (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Option<Value>, token: Option<&str>) -> (u16, Value) {
        let mut req = self.http.post(format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("POST");
        (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
    }

    /// Deploys `version` of the shipped topology; the answer.
    async fn deploy(&self, body: Value) -> (u16, Value) {
        let mut body = body;
        body["topology_toml"] = TOPOLOGY.into();
        self.post("/v1/deployments", Some(body), Some(TOKEN)).await
    }

    /// Waits until `check` holds of `group`'s detail; the detail.
    async fn wait(&self, group: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, d) = self.get(&format!("/v1/deployments/{group}")).await;
            if check(&d) {
                return d;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {group} to be {what}: {d}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn wait_state(&self, group: &str, state: &str) -> Value {
        self.wait(group, state, |d| d["state"] == state).await
    }

    /// Who answers `user`'s query (with `query` appended): (status, group id, process).
    async fn ask(&self, user: &str, query: &str) -> (u16, Value) {
        self.get(&format!("/v1/users/{user}/attributes{query}")).await
    }
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_deploy_promote_answer_and_roll_back_in_process() {
    let h = Harness::start().await;
    let (status, v1) = h.deploy(json!({ "version": 1 })).await;
    assert_eq!(status, 201, "{v1}");
    assert_eq!((v1["group_id"].as_str(), v1["start_from"].as_str()), (Some("personalization-v1"), Some("earliest")));
    h.wait_state("personalization-v1", "running").await;
    h.wait("personalization-v1", "counted", |d| d["status"]["applied"] == 10).await;
    assert_eq!(h.ask("u1", "").await.0, 503, "nothing promoted yet");
    let (status, body) = h.post("/v1/deployments/personalization-v1/promote", None, Some(TOKEN)).await;
    assert_eq!((status, body["state"].as_str()), (200, Some("promoted")), "{body}");
    let (status, body) = h.ask("u1", "").await;
    assert_eq!((status, body["group_id"].as_str()), (200, Some("personalization-v1")));

    // Version 2 with two processes, beside version 1, catching up first.
    h.lag.set("personalization-v2", 1000);
    let (status, v2) = h.deploy(json!({ "version": 2, "processes": 2, "workers": 3 })).await;
    assert_eq!(status, 201, "{v2}");
    h.wait_state("personalization-v2", "catching-up").await;
    h.lag.set("personalization-v2", 5);
    let d = h.wait_state("personalization-v2", "running").await;
    assert_eq!(d["urls"].as_array().map(Vec::len), Some(2), "{d}");
    for user in ["u1", "u2", "u3", "alice", "bob"] {
        let (status, body) = h.ask(user, "?group=personalization-v2").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["process"],
            squall::version::cluster::owner_process(user, 3, 2),
            "{user} goes to its owner: {body}"
        );
    }
    h.post("/v1/deployments/personalization-v2/promote", None, Some(TOKEN)).await;
    assert_eq!(h.ask("u1", "").await.1["group_id"], "personalization-v2");
    assert_eq!(h.ask("u1", "?topology=personalization").await.1["group_id"], "personalization-v2");

    // Roll back: v1 answers at once, v2's processes are gone.
    let (status, r) = h.post("/v1/deployments/personalization-v1/rollback", None, Some(TOKEN)).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        (r["promoted"]["group_id"].as_str(), &r["stopped"]),
        (Some("personalization-v1"), &json!(["personalization-v2"]))
    );
    assert_eq!(h.launcher.alive("personalization-v2"), 0, "v2's processes exited before the answer");
    assert_eq!(h.ask("u1", "").await.1["group_id"], "personalization-v1");
    let (status, body) = h.ask("u1", "?group=personalization-v2").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["detail"], "state: stopped");
    let (_, d) = h.get("/v1/deployments/personalization-v2").await;
    assert_eq!((d["state"].as_str(), d["urls"].as_array().map(Vec::len)), (Some("stopped"), Some(0)), "{d}");

    // The promoted version cannot be stopped; a stopped one cannot be promoted or stopped again.
    let (status, body) = h.post("/v1/deployments/personalization-v1/stop", None, Some(TOKEN)).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["message"], "personalization-v1 is the promoted version of personalization");
    assert_eq!(h.post("/v1/deployments/personalization-v2/promote", None, Some(TOKEN)).await.0, 409);
    assert_eq!(h.post("/v1/deployments/personalization-v2/stop", None, Some(TOKEN)).await.0, 409);
    let (_, list) = h.get("/v1/deployments").await;
    let states: Vec<&str> = list.as_array().unwrap().iter().map(|d| d["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["promoted", "stopped"]);
    h.control.shutdown().await;
    assert_eq!(h.launcher.alive("personalization-v1"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_process_dies_is_restarted_whole() {
    let h = Harness::start().await;
    h.deploy(json!({ "processes": 2 })).await;
    let before = h.wait_state("personalization-v1", "running").await;
    let old_urls = before["urls"].clone();
    h.launcher.kill("personalization-v1", 1);
    let d =
        h.wait("personalization-v1", "restarted and serving", |d| d["restarts"] == 1 && d["state"] == "running").await;
    assert!(d["last_error"].as_str().unwrap().starts_with("process 1 exited (signal: 9 (SIGKILL))"), "{d}");
    assert_ne!(d["urls"], old_urls, "a new run, on new addresses");
    assert_eq!((h.launcher.starts("personalization-v1"), h.launcher.alive("personalization-v1")), (2, 2));
    h.control.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_cannot_start_fails_then_is_retried() {
    let h = Harness::start().await;
    h.launcher.with(|s| s.fail_starts = 1);
    h.deploy(json!({})).await;
    let d = h.wait("personalization-v1", "failed", |d| d["restarts"] == 1).await;
    assert!(d["last_error"].as_str().unwrap().contains("cannot start /fake/squall"), "{d}");
    h.wait_state("personalization-v1", "running").await;
    h.control.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_change_nothing_say_why() {
    let h = Harness::start().await;
    let deploy = json!({ "topology_toml": TOPOLOGY });
    let (status, body) = h.post("/v1/deployments", Some(deploy.clone()), None).await;
    assert_eq!((status, body["error"]["status"].as_u64()), (401, Some(401)), "{body}");
    assert_eq!(h.post("/v1/deployments", Some(deploy), Some("wrong-wrong-wrong-wrong")).await.0, 403);
    let (status, body) = h.post("/v1/deployments/a%0Ab/promote", None, Some(TOKEN)).await;
    assert_eq!((status, body["error"]["message"].as_str()), (400, Some("invalid group id")), "{body}");
    let (status, body) = h.post("/v1/deployments/nope-v1/promote", None, Some(TOKEN)).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["message"], "no deployment with group id \"nope-v1\"");
    let (status, body) = h.deploy(json!({ "start_from": "yesterday" })).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["message"], "start_from \"yesterday\": use earliest, latest or group:<group id>");
    let (status, body) = h.deploy(json!({ "start_from": "group:elsewhere-v1" })).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("has committed no offsets"), "{body}");
    let (status, body) = h.deploy(json!({ "workers": 0 })).await;
    assert_eq!((status, body["error"]["message"].as_str()), (400, Some("workers = 0: use 1..=256")));
    let (status, body) = h.deploy(json!({ "standbys": 5 })).await;
    assert_eq!((status, body["error"]["message"].as_str()), (400, Some("standbys = 5: use 0..=4")));
    assert_eq!(h.get("/v1/deployments").await.1, json!([]), "nothing changed");
    assert_eq!(h.launcher.starts("personalization-v1"), 0);

    // A group that committed offsets elsewhere is a valid start.
    h.lag.committed.lock().unwrap().insert(g("elsewhere-v1"));
    h.launcher.hold_ready.store(true, SeqCst);
    let (status, body) = h.deploy(json!({ "start_from": "group:elsewhere-v1" })).await;
    assert_eq!((status, body["start_from"].as_str()), (201, Some("group:elsewhere-v1")), "{body}");
    let (status, body) = h.deploy(json!({})).await;
    assert_eq!((status, body["error"]["message"].as_str()), (409, Some("personalization-v1 is already deployed")));
    // Not serving yet: cannot be promoted, and queries say so.
    let (status, body) = h.post("/v1/deployments/personalization-v1/promote", None, Some(TOKEN)).await;
    assert_eq!((status, body["error"]["detail"].as_str()), (409, Some("state: starting")), "{body}");
    let (status, body) = h.ask("u1", "?group=personalization-v1").await;
    assert_eq!((status, body["error"]["detail"].as_str()), (503, Some("state: starting")), "{body}");
    let (status, _) = h.get(&format!("/v1/users/{}/attributes", "u".repeat(300))).await;
    assert_eq!(status, 400);
    assert_eq!(h.get("/v1/deployments/nope-v1").await.0, 404);
    assert_eq!(h.get("/v1/deployments/personalization-v1/logs").await.0, 200);
    h.control.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_read_is_refused_when_the_version_cannot_say_what_it_reflects() {
    let h = Harness::start().await;
    h.deploy(json!({ "version": 1 })).await;
    h.wait_state("personalization-v1", "running").await;
    h.post("/v1/deployments/personalization-v1/promote", None, Some(TOKEN)).await;
    // These fake processes answer without `as_of`, as an executable older than read bounds does.
    assert_eq!(h.ask("u1", "").await.0, 200, "an unbounded read is passed on");
    let (status, body) = h.ask("u1", "?min_cut=0").await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["message"], "personalization-v1 cannot honour min_cut or max_staleness_ms");
    let (status, body) = h.ask("u1", "?max_staleness_ms=-3").await;
    assert_eq!((status, &body["error"]["detail"]), (400, &json!("max_staleness_ms = -3 is negative")), "{body}");
    h.control.shutdown().await;
}

/// Malformed requests answer the one JSON error shape (not axum's plain-text rejections), with a
/// status the OpenAPI document lists for the operation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_answer_documented_json_errors() {
    let h = Harness::start().await;
    let doc: Value = serde_json::from_str(&squall::control::openapi::openapi_json()).unwrap();
    let send = |method: reqwest::Method, path: &str, content_type: Option<&str>, body: &str| {
        let mut req = h.http.request(method, format!("{}{path}", h.url)).bearer_auth(TOKEN).body(body.to_owned());
        if let Some(c) = content_type {
            req = req.header("content-type", c);
        }
        async move {
            let resp = req.send().await.expect("request");
            let status = resp.status().as_u16();
            let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
            (status, content_type, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (get, post) = (reqwest::Method::GET, reqwest::Method::POST);
    let promote = "/v1/deployments/{group_id}/promote";
    let cases = [
        (post.clone(), "/v1/deployments", "/v1/deployments", Some("text/plain"), "{}", 415),
        (post.clone(), "/v1/deployments", "/v1/deployments", None, "{}", 415),
        (post.clone(), "/v1/deployments", "/v1/deployments", Some("application/json"), "{", 400),
        (post.clone(), "/v1/deployments", "/v1/deployments", Some("application/json"), r#"{"topology_toml": 1}"#, 422),
        (post.clone(), "/v1/deployments", "/v1/deployments", Some("application/json"), r#"{"x": 1}"#, 422),
        (post.clone(), "/v1/deployments/nope-v1/promote", promote, Some("text/plain"), "", 415),
        (post.clone(), "/v1/deployments/nope-v1/promote", promote, Some("application/json"), r#"{"wait_ms": -1}"#, 422),
        (post.clone(), "/v1/deployments/nope-v1/promote", promote, Some("application/json"), "[", 400),
        (post.clone(), "/v1/deployments/nope-v1/promote", promote, Some("application/json"), "null", 404),
        (post.clone(), "/v1/deployments/a%0Ab/rollback", "/v1/deployments/{group_id}/rollback", None, "", 400),
        (post.clone(), "/v1/deployments/a%0Ab/stop", "/v1/deployments/{group_id}/stop", None, "", 400),
        (get.clone(), "/v1/deployments/a%0Ab", "/v1/deployments/{group_id}", None, "", 400),
        (get.clone(), "/v1/deployments/a%0Ab/logs", "/v1/deployments/{group_id}/logs", None, "", 400),
        (get.clone(), "/v1/diff?a=x-v1&b=y-v1&sample=1001", "/v1/diff", None, "", 400),
        (get.clone(), "/v1/diff?a=x-v1&b=y-v1&wait_ms=600001", "/v1/diff", None, "", 400),
        (get.clone(), "/v1/diff?a=x-v1", "/v1/diff", None, "", 400),
        (get.clone(), "/v1/users/u1/attributes?group=", "/v1/users/{user_id}/attributes", None, "", 400),
        (get.clone(), "/v1/users/u1/attributes?topology=nope", "/v1/users/{user_id}/attributes", None, "", 404),
        (get.clone(), "/v1/users/u1/attributes?min_cut=x", "/v1/users/{user_id}/attributes", None, "", 400),
        (get.clone(), "/v1/users/u1/attributes?max_staleness_ms=0", "/v1/users/{user_id}/attributes", None, "", 400),
    ];
    for (method, path, operation, content_type, body, expected) in cases {
        let (status, answered_type, error) = send(method.clone(), path, content_type, body).await;
        assert_eq!((status, answered_type.as_str()), (expected, "application/json"), "{method} {path}: {error}");
        assert_eq!(error["error"]["status"], expected, "{method} {path}: {error}");
        let documented = &doc["paths"][operation][method.as_str().to_lowercase()]["responses"][status.to_string()];
        assert_eq!(
            documented["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/Error",
            "{method} {operation} does not document {status}"
        );
    }
    h.control.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_control_plane_resumes_its_deployments_and_promotion() {
    let h = Harness::start().await;
    h.deploy(json!({})).await;
    h.wait_state("personalization-v1", "running").await;
    h.post("/v1/deployments/personalization-v1/promote", None, Some(TOKEN)).await;
    h.deploy(json!({ "version": 2 })).await;
    h.wait_state("personalization-v2", "running").await;
    h.post("/v1/deployments/personalization-v2/stop", None, Some(TOKEN)).await;
    h.control.shutdown().await;
    assert_eq!(h.launcher.alive("personalization-v1"), 0);

    let again = Harness::start_in(h.dir.clone(), h.launcher.clone(), h.lag.clone()).await;
    again.wait_state("personalization-v1", "promoted").await;
    assert_eq!(again.ask("u1", "").await.1["group_id"], "personalization-v1");
    assert_eq!(again.get("/v1/deployments/personalization-v2").await.1["state"], "stopped");
    assert_eq!((h.launcher.starts("personalization-v1"), h.launcher.starts("personalization-v2")), (2, 1));
    again.control.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_and_commands_do_not_wait_for_a_hung_broker() {
    let h = Harness::start().await;
    h.lag.hang(true);
    h.deploy(json!({})).await;
    // The monitor is stuck in the lag source: the lag is unknown, so the version catches up.
    h.wait_state("personalization-v1", "catching-up").await;
    // The heartbeats that keep the version's lease go on meanwhile.
    let before = h.launcher.heartbeats("personalization-v1", 0);
    h.wait("personalization-v1", "heartbeaten", |_| h.launcher.heartbeats("personalization-v1", 0) > before + 2).await;
    let (status, body) = h.post("/v1/deployments/personalization-v1/promote", None, Some(TOKEN)).await;
    assert_eq!((status, body["state"].as_str(), body["promoted"].as_bool()), (200, Some("catching-up"), Some(true)));
    let (status, body) = h.ask("u1", "").await;
    assert_eq!((status, body["group_id"].as_str()), (200, Some("personalization-v1")), "{body}");
    h.lag.hang(false);
    h.wait_state("personalization-v1", "promoted").await;
    h.control.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_control_plane_adopts_the_processes_it_left_running() {
    let h = Harness::start().await;
    h.deploy(json!({ "processes": 2 })).await;
    let before = h.wait_state("personalization-v1", "running").await;
    h.post("/v1/deployments/personalization-v1/promote", None, Some(TOKEN)).await;
    h.control.detach().await;
    assert_eq!(h.launcher.alive("personalization-v1"), 2, "detaching stops nothing");
    // Without a server the processes' own addresses answer.
    for url in before["urls"].as_array().unwrap() {
        let resp = reqwest::get(format!("{}/v1/users/u1/attributes", url.as_str().unwrap())).await.unwrap();
        assert_eq!(resp.status(), 200);
    }

    let again = Harness::start_in(h.dir.clone(), h.launcher.clone(), h.lag.clone()).await;
    let d = again.wait_state("personalization-v1", "promoted").await;
    assert_eq!((&d["urls"], &d["adopted"], &d["restarts"]), (&before["urls"], &json!(true), &json!(0)), "{d}");
    assert_eq!(h.launcher.starts("personalization-v1"), 1, "nothing was started again");
    for user in ["u1", "u2", "u3", "alice", "bob"] {
        let (status, body) = again.ask(user, "").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["process"], squall::version::cluster::owner_process(user, 2, 2), "{user}: {body}");
    }
    // The new server renews every process's lease.
    let beats = [0, 1].map(|i| h.launcher.heartbeats("personalization-v1", i));
    again
        .wait("personalization-v1", "heartbeaten", |_| {
            (0..2).all(|i| h.launcher.heartbeats("personalization-v1", i) > beats[i] + 2)
        })
        .await;
    // An adopted run that loses a process is restarted whole, by this server.
    h.launcher.kill("personalization-v1", 0);
    let d = again.wait("personalization-v1", "restarted", |d| d["restarts"] == 1 && d["state"] == "promoted").await;
    assert_eq!(d["adopted"], false, "{d}");
    assert_eq!((h.launcher.starts("personalization-v1"), h.launcher.alive("personalization-v1")), (2, 2));
    again.control.shutdown().await;
    assert_eq!(h.launcher.alive("personalization-v1"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_lost_a_process_while_no_server_watched_is_replaced() {
    let h = Harness::start().await;
    h.deploy(json!({ "processes": 2 })).await;
    let before = h.wait_state("personalization-v1", "running").await;
    h.control.detach().await;
    h.launcher.kill("personalization-v1", 1);

    let again = Harness::start_in(h.dir.clone(), h.launcher.clone(), h.lag.clone()).await;
    let d =
        again.wait("personalization-v1", "replaced", |d| d["state"] == "running" && d["urls"] != before["urls"]).await;
    assert_eq!(d["adopted"], false, "{d}");
    assert_eq!((h.launcher.starts("personalization-v1"), h.launcher.alive("personalization-v1")), (2, 2));
    again.control.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_server_finishes_a_stop_the_last_one_recorded() {
    let h = Harness::start().await;
    h.deploy(json!({})).await;
    h.wait_state("personalization-v1", "running").await;
    h.control.detach().await;
    // As if the server had died between recording the stop and stopping the processes.
    let registry = h.dir.join("registry.json");
    let mut data: Value = serde_json::from_slice(&std::fs::read(&registry).unwrap()).unwrap();
    data["deployments"]["personalization-v1"]["desired"] = "stopped".into();
    std::fs::write(&registry, serde_json::to_vec(&data).unwrap()).unwrap();

    let again = Harness::start_in(h.dir.clone(), h.launcher.clone(), h.lag.clone()).await;
    again
        .wait("personalization-v1", "stopped, its process gone", |d| {
            d["state"] == "stopped" && h.launcher.alive("personalization-v1") == 0
        })
        .await;
    assert_eq!(h.launcher.starts("personalization-v1"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_runs_the_binary_it_was_deployed_with() {
    let h = Harness::start().await;
    let upload = |body: &'static [u8], token: Option<&'static str>| {
        let mut req = h.http.post(format!("{}/v1/binaries", h.url)).body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move {
            let resp = req.send().await.expect("POST");
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let script: &[u8] = b"#!/bin/sh\necho squall 9.9.9\n";
    assert_eq!(upload(script, None).await.0, 401);
    assert_eq!(upload(script, Some("wrong-wrong-wrong-wrong")).await.0, 403);
    let (status, body) = upload(&[b'x'; 5000], Some(TOKEN)).await;
    assert_eq!((status, body["error"]["message"].as_str()), (413, Some("the executable is larger than 4096 bytes")));
    let (status, body) = upload(b"#!/bin/sh\nexit 3\n", Some(TOKEN)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["message"], "the executable does not answer --version");
    assert_eq!(body["error"]["detail"], " (exit status: 3)");
    let (status, stored) = upload(script, Some(TOKEN)).await;
    assert_eq!(
        (status, stored["version"].as_str(), stored["bytes"].as_u64()),
        (201, Some("squall 9.9.9"), Some(script.len() as u64))
    );
    let sha = stored["sha256"].as_str().unwrap().to_owned();
    let path = h.dir.join("binaries").join(&sha);
    assert_eq!(std::fs::read(&path).unwrap(), script);

    let (status, body) = h.deploy(json!({ "binary": "0".repeat(64) })).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("upload it first with POST /v1/binaries"), "{body}");
    let (status, body) = h.deploy(json!({ "binary": "not-a-hash" })).await;
    assert_eq!(status, 400, "{body}");
    let (status, v1) = h.deploy(json!({ "version": 1, "binary": sha })).await;
    assert_eq!((status, v1["binary"].as_str()), (201, Some(sha.as_str())), "{v1}");
    let (status, v2) = h.deploy(json!({ "version": 2 })).await;
    assert_eq!((status, v2.get("binary")), (201, None), "{v2}");
    h.wait_state("personalization-v1", "running").await;
    h.wait_state("personalization-v2", "running").await;
    let programs = h.launcher.with(|s| s.programs.clone());
    assert_eq!(programs[&g("personalization-v1")], path, "pinned to its binary");
    assert_eq!(programs[&g("personalization-v2")], PathBuf::from("/fake/squall"), "the server's own");
    let (_, list) = h.get("/v1/deployments").await;
    assert_eq!(list[0]["binary"].as_str(), Some(sha.as_str()));
    h.control.shutdown().await;

    // Across a restart of the server (another executable of its own), the version keeps its binary.
    let again = Harness::start_in(h.dir.clone(), h.launcher.clone(), h.lag.clone()).await;
    again.wait_state("personalization-v1", "running").await;
    assert_eq!(h.launcher.with(|s| s.programs[&g("personalization-v1")].clone()), path);
    again.control.shutdown().await;
}

// ---------------------------------------------------------------- supervisor, standbys taking over

/// What a supervisor reported, each with when (on the test's clock).
type Reports = Arc<Mutex<Vec<(tokio::time::Instant, Observation)>>>;

/// A supervisor of `spec` that starts a run, and what it reports.
fn supervise(launcher: &Arc<FakeLauncher>, spec: LaunchSpec) -> (Supervisor, Reports) {
    let reports: Reports = Arc::default();
    let r = Arc::clone(&reports);
    let report = Arc::new(move |o| r.lock().unwrap().push((tokio::time::Instant::now(), o)));
    (Supervisor::spawn(launcher.clone(), spec, Begin::Start, report), reports)
}

/// Version 1 of `group` with `processes` and `standbys` per process.
fn version(group: &str, processes: usize, standbys: usize) -> LaunchSpec {
    LaunchSpec {
        group_id: g(group),
        program: PathBuf::from("/fake/squall"),
        topology: PathBuf::from("/fake/topology.toml"),
        version: 1,
        workers: 1,
        processes,
        start_from: Default::default(),
        backfill: None,
        archiver: None,
        standby: None,
        standbys,
    }
}

/// The observations reported so far, by kind.
fn kinds(reports: &Reports) -> Vec<&'static str> {
    let kind = |o: &Observation| match o {
        Observation::Launched { .. } => "launched",
        Observation::Adopted { .. } => "adopted",
        Observation::Ready { .. } => "ready",
        Observation::Died { .. } => "died",
        Observation::TookOver { .. } => "took over",
        Observation::Halted => "halted",
        Observation::Backfilling(_) => "backfilling",
        Observation::Progress { .. } => "progress",
    };
    reports.lock().unwrap().iter().map(|(_, o)| kind(o)).collect()
}

/// Waits until the supervisor has reported `n` observations.
async fn reported(reports: &Reports, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while reports.lock().unwrap().len() < n {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {n} observations: {:?}", kinds(reports));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// How long after observation `a` observation `b` was reported.
fn between(reports: &Reports, a: usize, b: usize) -> Duration {
    let r = reports.lock().unwrap();
    r[b].0 - r[a].0
}

/// The first backoff of a run that died young.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

#[tokio::test(start_paused = true)]
async fn a_standby_takes_over_a_dead_single_process_version_at_once_instead_of_a_restart() {
    let launcher = Arc::new(FakeLauncher::default());
    launcher.with(|s| s.take_over = true);
    let (supervisor, reports) = supervise(&launcher, version("p-v1", 1, 1));
    reported(&reports, 2).await;
    launcher.kill("p-v1", 0);
    reported(&reports, 5).await;
    assert_eq!(kinds(&reports), ["launched", "ready", "died", "adopted", "ready"]);
    let ids = launcher.with(|s| s.launch_ids[&g("p-v1")].clone());
    assert_eq!(reports.lock().unwrap()[3].1, Observation::Adopted { launch_ids: vec![ids[1].clone()] });
    assert!(between(&reports, 2, 3) < FIRST_BACKOFF, "no backoff: {:?}", between(&reports, 2, 3));
    assert_eq!((launcher.starts("p-v1"), launcher.take_overs("p-v1"), launcher.alive("p-v1")), (1, 1, 1));
    // The promoted process dies young too: another standby takes over, still at once.
    launcher.kill("p-v1", 0);
    reported(&reports, 8).await;
    assert_eq!(kinds(&reports)[5..], ["died", "adopted", "ready"]);
    assert!(between(&reports, 5, 6) < FIRST_BACKOFF, "no backoff: {:?}", between(&reports, 5, 6));
    assert_eq!((launcher.starts("p-v1"), launcher.take_overs("p-v1")), (1, 2));
    supervisor.halt().await;
    assert_eq!(kinds(&reports)[8..], ["halted"]);
    assert_eq!(launcher.alive("p-v1"), 0, "the adopted process is stopped like a started one");
}

#[tokio::test(start_paused = true)]
async fn a_dead_version_no_standby_takes_over_is_restarted_after_a_backoff() {
    let launcher = Arc::new(FakeLauncher::default());
    let (supervisor, reports) = supervise(&launcher, version("p-v1", 1, 2));
    reported(&reports, 2).await;
    launcher.kill("p-v1", 0);
    reported(&reports, 5).await;
    assert_eq!(kinds(&reports), ["launched", "ready", "died", "launched", "ready"]);
    assert!(between(&reports, 2, 3) >= FIRST_BACKOFF, "{:?}", between(&reports, 2, 3));
    assert_eq!((launcher.starts("p-v1"), launcher.take_overs("p-v1")), (2, 1));
    supervisor.halt().await;
    assert_eq!(launcher.alive("p-v1"), 0);
}

#[tokio::test(start_paused = true)]
async fn standbys_are_asked_only_for_versions_deployed_with_them() {
    let launcher = Arc::new(FakeLauncher::default());
    launcher.with(|s| s.take_over = true);
    let standby = StandbyOf { process: 0, replica: 0, processes: 1 };
    let specs =
        [version("no-standbys-v1", 1, 0), LaunchSpec { standby: Some(standby), ..version("a-standby-v1", 1, 1) }];
    for spec in specs {
        let group = spec.group_id.to_string();
        let ready = spec.processes;
        let (supervisor, reports) = supervise(&launcher, spec);
        reported(&reports, 1 + ready).await;
        launcher.kill(&group, 0);
        reported(&reports, 2 * (1 + ready) + 1).await;
        let run: Vec<&str> = std::iter::once("launched").chain(std::iter::repeat_n("ready", ready)).collect();
        assert_eq!(kinds(&reports), [&run[..], &["died"], &run[..]].concat(), "{group}");
        assert_eq!((launcher.starts(&group), launcher.take_overs(&group)), (2, 0), "{group}");
        supervisor.halt().await;
    }
    // A version of two processes: its standbys take over both, as one run.
    let (supervisor, reports) = supervise(&launcher, version("two-processes-v1", 2, 1));
    reported(&reports, 3).await;
    launcher.kill("two-processes-v1", 1);
    reported(&reports, 7).await;
    assert_eq!(kinds(&reports), ["launched", "ready", "ready", "died", "adopted", "ready", "ready"]);
    assert_eq!((launcher.starts("two-processes-v1"), launcher.take_overs("two-processes-v1")), (1, 1));
    supervisor.halt().await;
}

#[tokio::test(start_paused = true)]
async fn a_stop_while_a_standby_takes_over_stops_what_took_over() {
    for takes_over in [true, false] {
        let launcher = Arc::new(FakeLauncher::default());
        launcher.with(|s| (s.take_over, s.take_over_delay) = (takes_over, Duration::from_secs(3)));
        let (supervisor, reports) = supervise(&launcher, version("p-v1", 1, 1));
        reported(&reports, 2).await;
        launcher.kill("p-v1", 0);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while launcher.take_overs("p-v1") == 0 {
            assert!(tokio::time::Instant::now() < deadline, "no standby was asked: {:?}", kinds(&reports));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        supervisor.halt().await;
        let expected: &[&str] = if takes_over {
            &["launched", "ready", "died", "adopted", "halted"]
        } else {
            &["launched", "ready", "died", "halted"]
        };
        assert_eq!(kinds(&reports), expected);
        assert_eq!((launcher.starts("p-v1"), launcher.alive("p-v1")), (1, 0), "nothing left running");
    }
}
