//! `squall server`: the control plane. It keeps a durable registry of deployments, runs each
//! deployed version as its own `squall run` process tree (restarted when it dies), watches their
//! progress in Kafka, and serves the deployments and user attributes over one HTTP API.
//!
//! Each version is isolated in its own processes, so a crash or a slow store in one version does
//! not stop another. The server talks to its children only over their HTTP API and stdout.

use std::collections::{HashMap, VecDeque};
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use squall_operators::{EventKind, Partition};
use squall_topologies::TopologySpec;
use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;

use crate::counters::RunStatus;
use crate::http::{ApiError, check_user_id};
use crate::kafka::{self, PartitionLag};
use crate::registry::{Deployment, Desired, Registry, now_ms};
use crate::values::{GroupId, StartPosition};

/// How the server runs.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where the registry, the deployments' files, logs and checkpoints live.
    pub state_dir: PathBuf,
    /// Bearer token required by every mutation.
    pub token: String,
    /// Kafka brokers for every deployment (else each topology file's, or `SQUALL__KAFKA__BROKERS`).
    pub brokers: Option<String>,
    /// CQL contact points for every deployment.
    pub cql: Option<String>,
    /// The `squall` executable the children run.
    pub program: PathBuf,
    /// A running version whose Kafka lag is above this many messages is `catching-up`.
    pub catch_up_lag: i64,
    /// Whether the versions log JSON lines (as the server does with `--log-json`).
    pub log_json: bool,
}

/// A deployment as the API shows it: the record plus what is observed now.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeploymentView {
    /// The recorded deployment.
    #[serde(flatten)]
    pub deployment: Deployment,
    /// `starting`, `catching-up`, `running`, `promoted`, `stopped` or `failed`.
    pub state: String,
    /// Whether this version answers queries of its topology by default.
    pub promoted: bool,
    /// Total Kafka lag over its partitions (messages not covered by a committed checkpoint).
    pub lag: Option<i64>,
    /// Events applied per second (last second).
    pub events_per_sec: f64,
    /// Records sent to dead-letter topics.
    pub dead_letters: u64,
    /// Times its processes died and were restarted.
    pub restarts: u32,
    /// Why its processes last died, with the end of their log.
    pub last_error: Option<String>,
    /// HTTP addresses of its processes (when serving).
    pub urls: Vec<String>,
}

/// `GET /v1/deployments/{group_id}`: the view plus per-partition progress and recent history.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeploymentDetail {
    /// The deployment.
    #[serde(flatten)]
    pub view: DeploymentView,
    /// Per partition: committed offset, high watermark, lag.
    pub partitions: Vec<PartitionLag>,
    /// Why the lag could not be read, if it could not.
    pub lag_error: Option<String>,
    /// Counters of its processes.
    pub status: Option<RunStatus>,
    /// One sample per second for the last 10 minutes.
    pub history: Vec<Sample>,
}

/// One second of a deployment's history.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Sample {
    /// Unix milliseconds.
    pub at_ms: u64,
    /// Total lag, when known.
    pub lag: Option<i64>,
    /// Events applied per second.
    pub events_per_sec: f64,
}

/// `POST /v1/deployments`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// The topology file's text (TOML).
    pub topology_toml: String,
    /// Which version of the file to run; default: the file's `version`.
    pub version: Option<u32>,
    /// `earliest` (default), `latest` or `group:<group id>` (start at that group's committed offsets).
    pub start_from: Option<String>,
    /// Worker threads per process; default: the file's `runtime.workers`.
    pub workers: Option<usize>,
    /// Processes (timely cluster mode on this host when > 1); default 1.
    pub processes: Option<usize>,
}

/// `POST /v1/deployments/{group_id}/rollback`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RollbackResponse {
    /// The version now promoted.
    pub promoted: DeploymentView,
    /// Newer versions of the topology that were stopped.
    pub stopped: Vec<String>,
}

/// What the server observes of one deployment.
#[derive(Default)]
struct Live {
    urls: Vec<Option<String>>,
    restarts: u32,
    last_error: Option<String>,
    lag: Vec<PartitionLag>,
    lag_error: Option<String>,
    status: Option<RunStatus>,
    last_applied: Option<(Instant, u64)>,
    events_per_sec: f64,
    history: VecDeque<Sample>,
    stop: Option<watch::Sender<bool>>,
    supervisor: Option<tokio::task::JoinHandle<()>>,
}

const HISTORY: usize = 600;

/// The server's shared state.
pub struct Server {
    cfg: ServerConfig,
    registry: tokio::sync::Mutex<Registry>,
    live: Mutex<HashMap<String, Live>>,
    http: reqwest::Client,
    readers: Mutex<HashMap<String, Arc<rdkafka::consumer::BaseConsumer>>>,
}

type Shared = Arc<Server>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Server {
    /// Opens the registry in the state directory and starts every deployment it records as running.
    pub async fn start(cfg: ServerConfig) -> anyhow::Result<Shared> {
        let registry = Registry::open(&cfg.state_dir)
            .map_err(|e| anyhow::anyhow!("registry in {}: {e}", cfg.state_dir.display()))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| anyhow::anyhow!("http client: {e}"))?;
        let resume: Vec<Deployment> =
            registry.data.deployments.values().filter(|d| d.desired == Desired::Running).cloned().collect();
        let server = Arc::new(Server {
            cfg,
            registry: tokio::sync::Mutex::new(registry),
            live: Mutex::new(HashMap::new()),
            http,
            readers: Mutex::new(HashMap::new()),
        });
        for d in resume {
            tracing::info!(group_id = %d.group_id, "resuming deployment");
            server.launch(d);
        }
        tokio::spawn(monitor(Arc::clone(&server)));
        Ok(server)
    }

    fn deployment_dir(&self, group_id: &str) -> PathBuf {
        self.cfg.state_dir.join("deployments").join(group_id)
    }

    /// Starts the supervisor of `d`.
    fn launch(self: &Arc<Self>, d: Deployment) {
        let (tx, rx) = watch::channel(false);
        let group = d.group_id.clone();
        let handle = tokio::spawn(supervise(Arc::clone(self), d, rx));
        let mut live = lock(&self.live);
        let entry = live.entry(group).or_default();
        entry.stop = Some(tx);
        entry.supervisor = Some(handle);
        entry.last_error = None;
    }

    /// Stops the processes of `group_id` and waits until they are gone.
    async fn halt(&self, group_id: &str) {
        let (stop, handle) = {
            let mut live = lock(&self.live);
            match live.get_mut(group_id) {
                Some(l) => (l.stop.take(), l.supervisor.take()),
                None => (None, None),
            }
        };
        if let Some(stop) = stop {
            let _ = stop.send(true);
        }
        if let Some(handle) = handle {
            let _ = handle.await;
        }
    }

    /// Stops every deployment's processes (the registry keeps them as running, so a restart resumes them).
    pub async fn shutdown(&self) {
        let groups: Vec<String> = lock(&self.live).keys().cloned().collect();
        for g in groups {
            self.halt(&g).await;
        }
    }

    fn view(&self, reg: &Registry, d: &Deployment) -> DeploymentView {
        let promoted = reg.promoted(&d.topology) == Some(d.group_id.as_str());
        let live = lock(&self.live);
        let l = live.get(&d.group_id);
        let urls: Vec<String> = l.map(|l| l.urls.iter().flatten().cloned().collect()).unwrap_or_default();
        let serving = l.is_some_and(|l| !l.urls.is_empty() && l.urls.iter().all(Option::is_some));
        let lag = l.filter(|l| l.lag_error.is_none() && !l.lag.is_empty()).map(|l| l.lag.iter().map(|p| p.lag).sum());
        let eps = l.map(|l| l.events_per_sec).unwrap_or(0.0);
        let state = match d.desired {
            Desired::Stopped => "stopped",
            Desired::Running if !serving => {
                if l.is_some_and(|l| l.last_error.is_some()) {
                    "failed"
                } else {
                    "starting"
                }
            }
            Desired::Running => {
                let threshold = self.cfg.catch_up_lag.max((eps * 2.0) as i64);
                if lag.is_none_or(|lag: i64| lag > threshold) {
                    "catching-up"
                } else if promoted {
                    "promoted"
                } else {
                    "running"
                }
            }
        };
        DeploymentView {
            deployment: d.clone(),
            state: state.into(),
            promoted,
            lag,
            events_per_sec: eps,
            dead_letters: l.and_then(|l| l.status.as_ref()).map(|s| s.dead_letters).unwrap_or(0),
            restarts: l.map(|l| l.restarts).unwrap_or(0),
            last_error: l.and_then(|l| l.last_error.clone()),
            urls,
        }
    }

    fn detail(&self, reg: &Registry, d: &Deployment) -> DeploymentDetail {
        let view = self.view(reg, d);
        let live = lock(&self.live);
        let l = live.get(&d.group_id);
        DeploymentDetail {
            view,
            partitions: l.map(|l| l.lag.clone()).unwrap_or_default(),
            lag_error: l.and_then(|l| l.lag_error.clone()),
            status: l.and_then(|l| l.status.clone()),
            history: l.map(|l| l.history.iter().copied().collect()).unwrap_or_default(),
        }
    }

    fn urls(&self, group_id: &str) -> Option<Vec<String>> {
        let live = lock(&self.live);
        let l = live.get(group_id)?;
        if l.urls.is_empty() {
            return None;
        }
        l.urls.iter().cloned().collect()
    }

    /// The effective spec of a deployment: its stored file, environment overrides, the server's flags.
    fn spec_of(&self, d: &Deployment) -> Result<TopologySpec, String> {
        let path = self.deployment_dir(&d.group_id).join("topology.toml");
        let mut spec =
            TopologySpec::load(&path).map_err(|e| e.to_string())?.with_version(d.version).map_err(|e| e.to_string())?;
        if let Some(b) = &self.cfg.brokers {
            spec.kafka.brokers = b.clone();
        }
        if let Some(c) = &self.cfg.cql {
            spec.cql.nodes = c.clone();
        }
        Ok(spec)
    }
}

/// How one run of a deployment's processes ended.
enum Ended {
    Stopped,
    Died(String),
}

/// Keeps the processes of `d` running until `stop` says true; restarts them with backoff when they die.
async fn supervise(server: Shared, d: Deployment, mut stop: watch::Receiver<bool>) {
    let mut quick_failures = 0u32;
    loop {
        if *stop.borrow() {
            break;
        }
        let started = Instant::now();
        match run_processes(&server, &d, &mut stop).await {
            Ended::Stopped => break,
            Ended::Died(why) => {
                tracing::warn!(group_id = %d.group_id, why = %why, "deployment processes died; restarting");
                {
                    let mut live = lock(&server.live);
                    let l = live.entry(d.group_id.clone()).or_default();
                    l.restarts += 1;
                    l.last_error = Some(why);
                    l.urls.clear();
                }
                if started.elapsed() > Duration::from_secs(60) {
                    quick_failures = 0;
                }
                quick_failures += 1;
                let backoff = Duration::from_millis(250 * (1u64 << quick_failures.min(7))).min(Duration::from_secs(30));
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }
    let mut live = lock(&server.live);
    if let Some(l) = live.get_mut(&d.group_id) {
        l.urls.clear();
    }
}

/// A fresh launch id: 16 hex digits, different for every process started.
fn launch_id() -> String {
    use rand::Rng as _;
    format!("{:016x}", rand::rng().random::<u64>())
}

/// Picks `n` free loopback ports (for timely's cluster addresses).
fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let listeners: Vec<std::net::TcpListener> =
        (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0")).collect::<Result<_, _>>()?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// Runs the processes of `d` once, until one dies or `stop` says true.
async fn run_processes(server: &Shared, d: &Deployment, stop: &mut watch::Receiver<bool>) -> Ended {
    let dir = server.deployment_dir(&d.group_id);
    let log_path = dir.join("squall.log");
    let open_log = || OpenOptions::new().create(true).append(true).open(&log_path);
    let mut log = match open_log() {
        Ok(f) => f,
        Err(e) => return Ended::Died(format!("cannot open {}: {e}", log_path.display())),
    };
    let _ =
        writeln!(log, "=== squall server: starting {} ({} process(es)) at {} ms", d.group_id, d.processes, now_ms());
    let hostfile = dir.join("hosts.txt");
    if d.processes > 1 {
        let ports = match free_ports(d.processes) {
            Ok(p) => p,
            Err(e) => return Ended::Died(format!("no free ports for the cluster: {e}")),
        };
        let hosts: String = ports.iter().map(|p| format!("127.0.0.1:{p}\n")).collect();
        if let Err(e) = std::fs::write(&hostfile, hosts) {
            return Ended::Died(format!("cannot write {}: {e}", hostfile.display()));
        }
    }
    {
        let mut live = lock(&server.live);
        live.entry(d.group_id.clone()).or_default().urls = vec![None; d.processes];
    }
    let mut children = Vec::new();
    for index in 0..d.processes {
        let mut cmd = tokio::process::Command::new(&server.cfg.program);
        cmd.arg("run")
            .arg("--topology")
            .arg(dir.join("topology.toml"))
            .args(["--version", &d.version.to_string()])
            .args(["--workers", &d.workers.to_string()])
            .args(["--listen", "127.0.0.1:0"])
            .arg("--checkpoint-dir")
            .arg(server.cfg.state_dir.join("checkpoints"))
            .args(["--start-from", &d.start_from])
            .args(["--launch-id", &launch_id()])
            .arg("--exit-with-parent")
            .env("SQUALL_PARENT_PID", std::process::id().to_string());
        if d.processes > 1 {
            cmd.args(["--processes", &d.processes.to_string(), "--process", &index.to_string()])
                .arg("--hostfile")
                .arg(&hostfile);
        }
        if server.cfg.log_json {
            cmd.arg("--log-json");
        }
        if let Some(b) = &server.cfg.brokers {
            cmd.args(["--brokers", b]);
        }
        if let Some(c) = &server.cfg.cql {
            cmd.args(["--cql", c]);
        }
        let stderr = match log.try_clone() {
            Ok(f) => Stdio::from(f),
            Err(e) => return Ended::Died(format!("cannot share {}: {e}", log_path.display())),
        };
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(stderr).kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return Ended::Died(format!("cannot start {}: {e}", server.cfg.program.display())),
        };
        if let Some(out) = child.stdout.take() {
            let (server, group, mut log) = (Arc::clone(server), d.group_id.clone(), log.try_clone().ok());
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(out).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(log) = log.as_mut() {
                        let _ = writeln!(log, "{line}");
                    }
                    if let Some(url) = crate::ready::url(&line) {
                        let mut live = lock(&server.live);
                        if let Some(slot) = live.get_mut(&group).and_then(|l| l.urls.get_mut(index)) {
                            *slot = Some(url.to_owned());
                        }
                    }
                }
            });
        }
        children.push(child);
    }
    let died = {
        let waits = children.iter_mut().map(|c| Box::pin(c.wait()));
        tokio::select! {
            (status, index, _) = futures::future::select_all(waits) => Some((index, status)),
            _ = stop.changed() => None,
        }
    };
    match died {
        Some((index, status)) => {
            for c in &mut children {
                let _ = c.start_kill();
            }
            for c in &mut children {
                let _ = c.wait().await;
            }
            let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
            Ended::Died(format!("process {index} exited ({status}); log tail:\n{}", tail(&log_path, 8)))
        }
        None => {
            for c in &children {
                if let Some(pid) = c.id() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGTERM,
                    );
                }
            }
            for c in &mut children {
                if tokio::time::timeout(Duration::from_secs(30), c.wait()).await.is_err() {
                    let _ = c.kill().await;
                }
            }
            let _ = writeln!(log, "=== squall server: stopped {} at {} ms", d.group_id, now_ms());
            Ended::Stopped
        }
    }
}

/// The last `n` lines of a file.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Once a second: each deployment's counters (from its processes) and Kafka lag (from the brokers).
/// What the monitor keeps per deployment between ticks: its effective spec (read once) and its
/// input partitions (looked up again every [`PARTITIONS_EVERY`], since topics can grow).
struct Watched {
    spec: TopologySpec,
    partitions: Option<LookedUp>,
}

/// Input partitions and when they were looked up.
type LookedUp = (Instant, Vec<Partition>);

/// How often the monitor looks up a deployment's input partitions again.
const PARTITIONS_EVERY: Duration = Duration::from_secs(60);

async fn monitor(server: Shared) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watched: HashMap<String, Watched> = HashMap::new();
    loop {
        tick.tick().await;
        let deployments: Vec<Deployment> = server.registry.lock().await.data.deployments.values().cloned().collect();
        watched.retain(|group, _| deployments.iter().any(|d| &d.group_id == group));
        for d in deployments {
            let status = match server.urls(&d.group_id) {
                Some(urls) => child_status(&server.http, &urls).await,
                None => None,
            };
            let lag = match watched.entry(d.group_id.clone()) {
                std::collections::hash_map::Entry::Occupied(o) => Ok(o.into_mut()),
                std::collections::hash_map::Entry::Vacant(v) => {
                    server.spec_of(&d).map(|spec| v.insert(Watched { spec, partitions: None }))
                }
            };
            let lag = match lag {
                Ok(w) => {
                    let server = Arc::clone(&server);
                    let (group, spec) = (d.group_id.clone(), w.spec.clone());
                    let known = w.partitions.clone().filter(|(at, _)| at.elapsed() < PARTITIONS_EVERY);
                    let read = tokio::task::spawn_blocking(move || read_lag(&server, &group, &spec, known))
                        .await
                        .unwrap_or_else(|e| Err(e.to_string()));
                    read.map(|(partitions, lag)| {
                        w.partitions = Some(partitions);
                        lag
                    })
                }
                Err(e) => Err(e),
            };
            let now = Instant::now();
            let mut live = lock(&server.live);
            let l = live.entry(d.group_id.clone()).or_default();
            match lag {
                Ok(lag) => {
                    for p in &lag {
                        metrics::gauge!("squall_consumer_lag", "topology" => d.topology.clone(), "version" => d.version.to_string(), "group_id" => d.group_id.clone(), "topic" => p.topic.clone(), "partition" => p.partition.to_string()).set(p.lag as f64);
                    }
                    l.lag = lag;
                    l.lag_error = None;
                }
                Err(e) => l.lag_error = Some(e),
            }
            match status {
                Some(s) => {
                    if let Some((at, applied)) = l.last_applied {
                        let secs = now.duration_since(at).as_secs_f64();
                        if secs > 0.0 {
                            l.events_per_sec = (s.applied.saturating_sub(applied)) as f64 / secs;
                        }
                    }
                    l.last_applied = Some((now, s.applied));
                    l.status = Some(s);
                }
                None => {
                    l.events_per_sec = 0.0;
                    l.last_applied = None;
                }
            }
            let lag_total = (l.lag_error.is_none() && !l.lag.is_empty()).then(|| l.lag.iter().map(|p| p.lag).sum());
            l.history.push_back(Sample { at_ms: now_ms(), lag: lag_total, events_per_sec: l.events_per_sec });
            while l.history.len() > HISTORY {
                l.history.pop_front();
            }
        }
    }
}

/// Sums the `/v1/status` of a deployment's processes; `None` if any does not answer.
async fn child_status(http: &reqwest::Client, urls: &[String]) -> Option<RunStatus> {
    let mut each = Vec::with_capacity(urls.len());
    for url in urls {
        each.push(http.get(format!("{url}/v1/status")).send().await.ok()?.json::<RunStatus>().await.ok()?);
    }
    Some(RunStatus::total(&each))
}

/// The lag of `group_id` on every partition of `spec`'s topics, through one cached client per
/// group; `known` partitions (and when they were looked up) are used if given, else looked up.
fn read_lag(
    server: &Server,
    group_id: &str,
    spec: &TopologySpec,
    known: Option<LookedUp>,
) -> Result<(LookedUp, Vec<PartitionLag>), String> {
    let brokers = &spec.kafka.brokers;
    let reader = {
        let mut readers = lock(&server.readers);
        match readers.get(group_id) {
            Some(r) => Arc::clone(r),
            None => {
                let r = Arc::new(kafka::group_reader(brokers, group_id).map_err(|e| e.to_string())?);
                readers.insert(group_id.to_owned(), Arc::clone(&r));
                r
            }
        }
    };
    let partitions = match known {
        Some(k) => k,
        None => (Instant::now(), topic_partitions(brokers, spec, Some(&reader))?),
    };
    let lag = kafka::lag(&reader, brokers, &partitions.1).map_err(|e| e.to_string())?;
    Ok((partitions, lag))
}

/// The partitions of `spec`'s input topics, through `client` if given (else a new one).
fn topic_partitions(
    brokers: &str,
    spec: &TopologySpec,
    client: Option<&rdkafka::consumer::BaseConsumer>,
) -> Result<Vec<Partition>, String> {
    let topics =
        [(spec.kafka.song_completions.clone(), EventKind::Song), (spec.kafka.ad_impressions.clone(), EventKind::Ad)];
    let found = match client {
        Some(c) => kafka::partitions_with(c, brokers, &topics),
        None => kafka::partitions(brokers, &topics),
    };
    Ok(found.map_err(|e| e.to_string())?.into_iter().map(|(p, _)| p).collect())
}

// ---------------------------------------------------------------- HTTP

/// The server's routes.
pub fn router(server: Shared) -> Router {
    Router::new()
        .route("/", get(|| async { axum::response::Html(include_str!("status.html")) }))
        .route("/healthz", get(|| async { Json(serde_json::json!({ "status": "ok" })) }))
        .route("/metrics", get(server_metrics))
        .route("/openapi.json", get(|| async { ([(header::CONTENT_TYPE, "application/json")], openapi_json()) }))
        .route("/v1/deployments", get(list).post(deploy))
        .route("/v1/deployments/{group_id}", get(detail))
        .route("/v1/deployments/{group_id}/logs", get(logs))
        .route("/v1/deployments/{group_id}/promote", post(promote))
        .route("/v1/deployments/{group_id}/rollback", post(rollback))
        .route("/v1/deployments/{group_id}/stop", post(stop))
        .route("/v1/users/{user_id}/attributes", get(user_attributes))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "no such endpoint").hint("see GET /openapi.json for the API")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
                .hint("see GET /openapi.json for the API")
        })
        .route_layer(axum::middleware::from_fn(crate::http::track_latency))
        .with_state(server)
}

/// The server's own metrics (consumer lag per partition per group) merged with every serving
/// version process's metrics (labelled `topology`, `version`, `group_id` by the process), each
/// series of a version also labelled with its `process` index.
async fn server_metrics(State(server): State<Shared>) -> Response {
    let own = crate::telemetry::metrics().render();
    let mut children: Vec<(String, Vec<(&str, String)>)> = Vec::new();
    let deployments: Vec<Deployment> = server.registry.lock().await.data.deployments.values().cloned().collect();
    for d in &deployments {
        for (index, url) in server.urls(&d.group_id).unwrap_or_default().iter().enumerate() {
            if let Ok(resp) = server.http.get(format!("{url}/metrics")).send().await
                && let Ok(body) = resp.text().await
            {
                // Each version's series carry its topology and version already; add the process.
                let labels = vec![("process", index.to_string())];
                children.push((body, labels));
            }
        }
    }
    let mut sources: Vec<(&str, Vec<(&str, String)>)> = vec![(own.as_str(), Vec::new())];
    sources.extend(children.iter().map(|(t, l)| (t.as_str(), l.clone())));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], crate::promtext::merge(&sources)).into_response()
}

fn authorize(server: &Server, headers: &HeaderMap) -> Result<(), ApiError> {
    let hint = "send `Authorization: Bearer <token>`; the CLI reads it from --token or SQUALL_TOKEN";
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this request changes deployments and needs a bearer token",
        )
        .hint(hint));
    };
    let given = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
    // Compare without an early exit, so the time taken does not tell how much of the token matched.
    let expected = server.cfg.token.as_bytes();
    let same = given.len() == expected.len() && given.bytes().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if !same {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "wrong bearer token").hint(hint));
    }
    Ok(())
}

fn group_path(p: Result<UrlPath<String>, PathRejection>) -> Result<String, ApiError> {
    let UrlPath(g) = p.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid group id").detail(e.body_text()))?;
    g.parse::<GroupId>()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid group id").detail(e.to_string()))?;
    Ok(g)
}

fn unknown_group(g: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no deployment with group id {g:?}")).hint("`squall list` shows them")
}

fn io_error(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot {what}")).detail(e.to_string())
}

#[utoipa::path(get, path = "/v1/deployments", tag = "deployments",
    responses((status = 200, description = "Every deployment", body = [DeploymentView])))]
async fn list(State(server): State<Shared>) -> Json<Vec<DeploymentView>> {
    let reg = server.registry.lock().await;
    Json(reg.data.deployments.values().map(|d| server.view(&reg, d)).collect())
}

#[utoipa::path(get, path = "/v1/deployments/{group_id}", tag = "deployments",
    params(("group_id" = String, Path, description = "e.g. personalization-v2")),
    responses((status = 200, body = DeploymentDetail), (status = 404, description = "Unknown group id")))]
async fn detail(
    State(server): State<Shared>,
    group: Result<UrlPath<String>, PathRejection>,
) -> Result<Json<DeploymentDetail>, ApiError> {
    let g = group_path(group)?;
    let reg = server.registry.lock().await;
    let d = reg.data.deployments.get(&g).ok_or_else(|| unknown_group(&g))?;
    Ok(Json(server.detail(&reg, d)))
}

/// `?tail=N`.
#[derive(Deserialize, utoipa::IntoParams)]
struct LogsQuery {
    /// Last lines to return (default 200, at most 100000).
    tail: Option<usize>,
}

#[utoipa::path(get, path = "/v1/deployments/{group_id}/logs", tag = "deployments",
    params(("group_id" = String, Path, description = "Group id"), LogsQuery),
    responses((status = 200, description = "The end of the version's log", content_type = "text/plain", body = String),
              (status = 404, description = "Unknown group id")))]
async fn logs(
    State(server): State<Shared>,
    group: Result<UrlPath<String>, PathRejection>,
    query: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let g = group_path(group)?;
    let Query(q) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid query").detail(e.body_text()))?;
    let n = q.tail.unwrap_or(200).min(100_000);
    if !server.registry.lock().await.data.deployments.contains_key(&g) {
        return Err(unknown_group(&g));
    }
    let text = tail(&server.deployment_dir(&g).join("squall.log"), n);
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

#[utoipa::path(post, path = "/v1/deployments", tag = "deployments", request_body = DeployRequest,
    security(("bearer" = [])),
    responses((status = 201, body = DeploymentView), (status = 400, description = "Bad topology or arguments"),
              (status = 401, description = "No token"), (status = 403, description = "Wrong token"),
              (status = 409, description = "That version is already deployed")))]
async fn deploy(
    State(server): State<Shared>,
    headers: HeaderMap,
    body: Result<Json<DeployRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<DeploymentView>), ApiError> {
    authorize(&server, &headers)?;
    let Json(req) = body.map_err(|e| ApiError::new(e.status(), "invalid deploy request").detail(e.body_text()))?;
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    let spec = TopologySpec::from_toml(&req.topology_toml).map_err(|e| bad(e.to_string()))?;
    let version = req.version.unwrap_or(spec.version);
    let spec = spec.with_version(version).map_err(|e| bad(e.to_string()))?;
    let workers = req.workers.unwrap_or(spec.runtime.workers);
    if !(1..=256).contains(&workers) {
        return Err(bad(format!("workers = {workers}: use 1..=256")));
    }
    let processes = req.processes.unwrap_or(1);
    if !(1..=64).contains(&processes) {
        return Err(bad(format!("processes = {processes}: use 1..=64")));
    }
    let start_from: StartPosition = match &req.start_from {
        Some(s) => s.parse().map_err(|e| bad(format!("start_from {e}")))?,
        None => StartPosition::default(),
    };
    let from_group = start_from.group().map(GroupId::to_string);
    let start_from = start_from.to_string();
    let group_id = spec.group_id();
    let mut reg = server.registry.lock().await;
    if let Some(existing) = reg.data.deployments.get(&group_id) {
        return Err(ApiError::new(StatusCode::CONFLICT, format!("{group_id} is already deployed"))
            .detail(format!("topology {} version {} exists (state {:?})", spec.name, version, existing.desired))
            .hint("deploy another version number, or `squall rollback`/`squall promote` the existing one"));
    }
    if let Some(from) = &from_group
        && from == &group_id
    {
        return Err(bad(format!("start_from group:{from} names the deployment itself")));
    }
    if let Some(from) = from_group.clone()
        && !reg.data.deployments.contains_key(&from)
    {
        // Not ours: accept it only if Kafka has offsets committed under it.
        let mut probe = spec.clone();
        if let Some(b) = &server.cfg.brokers {
            probe.kafka.brokers = b.clone();
        }
        let found = tokio::task::spawn_blocking(move || -> Result<usize, String> {
            let parts = topic_partitions(&probe.kafka.brokers, &probe, None)?;
            let reader = kafka::group_reader(&probe.kafka.brokers, &from).map_err(|e| e.to_string())?;
            Ok(kafka::committed(&reader, &probe.kafka.brokers, &parts).map_err(|e| e.to_string())?.len())
        })
        .await
        .map_err(|e| io_error("check the group", e))?
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "cannot read committed offsets").detail(e))?;
        if found == 0 {
            return Err(bad(format!(
                "start_from {start_from}: group {:?} is not deployed here and has committed no offsets on the topology's topics",
                from_group.unwrap_or_default()
            )));
        }
    }
    let dir = server.deployment_dir(&group_id);
    std::fs::create_dir_all(&dir).map_err(|e| io_error("create the deployment directory", e))?;
    crate::registry::write_atomically(&dir.join("topology.toml"), req.topology_toml.as_bytes())
        .map_err(|e| io_error("store the topology file", e))?;
    let d = Deployment {
        group_id: group_id.clone(),
        topology: spec.name.clone(),
        version,
        attributes: serde_json::to_value(spec.attributes)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        start_from,
        workers,
        processes,
        desired: Desired::Running,
        created_at_ms: now_ms(),
        promoted_at_ms: None,
        stopped_at_ms: None,
        topology_toml: req.topology_toml,
    };
    reg.update(|data| {
        data.deployments.insert(group_id.clone(), d.clone());
    })
    .map_err(|e| io_error("save the registry", e))?;
    tracing::info!(group_id = %group_id, "deployed");
    server.launch(d.clone());
    Ok((StatusCode::CREATED, Json(server.view(&reg, &d))))
}

fn must_serve(server: &Server, reg: &Registry, g: &str) -> Result<Deployment, ApiError> {
    let d = reg.data.deployments.get(g).ok_or_else(|| unknown_group(g))?;
    if d.desired == Desired::Stopped {
        return Err(ApiError::new(StatusCode::CONFLICT, format!("{g} is stopped"))
            .detail("a stopped version cannot answer queries")
            .hint("deploy a new version, or promote one that is running"));
    }
    if server.urls(g).is_none_or(|u| u.len() != d.processes) {
        return Err(ApiError::new(StatusCode::CONFLICT, format!("{g} is not serving yet"))
            .detail(format!("state: {}", server.view(reg, d).state))
            .hint("wait until `squall list` shows it running, then retry"));
    }
    Ok(d.clone())
}

#[utoipa::path(post, path = "/v1/deployments/{group_id}/promote", tag = "deployments", security(("bearer" = [])),
    params(("group_id" = String, Path, description = "Group id")),
    responses((status = 200, body = DeploymentView), (status = 404, description = "Unknown group id"),
              (status = 409, description = "Stopped or not serving"), (status = 401), (status = 403)))]
async fn promote(
    State(server): State<Shared>,
    headers: HeaderMap,
    group: Result<UrlPath<String>, PathRejection>,
) -> Result<Json<DeploymentView>, ApiError> {
    authorize(&server, &headers)?;
    let g = group_path(group)?;
    let mut reg = server.registry.lock().await;
    let d = must_serve(&server, &reg, &g)?;
    set_promoted(&mut reg, &d)?;
    let d = reg.data.deployments[&g].clone();
    tracing::info!(group_id = %g, "promoted");
    Ok(Json(server.view(&reg, &d)))
}

fn set_promoted(reg: &mut Registry, d: &Deployment) -> Result<(), ApiError> {
    reg.update(|data| {
        data.promoted.insert(d.topology.clone(), d.group_id.clone());
        if let Some(rec) = data.deployments.get_mut(&d.group_id) {
            rec.promoted_at_ms = Some(now_ms());
        }
    })
    .map_err(|e| io_error("save the registry", e))
}

#[utoipa::path(post, path = "/v1/deployments/{group_id}/rollback", tag = "deployments", security(("bearer" = [])),
    params(("group_id" = String, Path, description = "The older version to return to")),
    responses((status = 200, body = RollbackResponse), (status = 404, description = "Unknown group id"),
              (status = 409, description = "Stopped or not serving"), (status = 401), (status = 403)))]
async fn rollback(
    State(server): State<Shared>,
    headers: HeaderMap,
    group: Result<UrlPath<String>, PathRejection>,
) -> Result<Json<RollbackResponse>, ApiError> {
    authorize(&server, &headers)?;
    let g = group_path(group)?;
    let (view, stopped) = {
        let mut reg = server.registry.lock().await;
        let d = must_serve(&server, &reg, &g)?;
        let newer: Vec<String> = reg
            .data
            .deployments
            .values()
            .filter(|o| o.topology == d.topology && o.version > d.version && o.desired == Desired::Running)
            .map(|o| o.group_id.clone())
            .collect();
        // One registry write: the promotion and the stops land together or not at all.
        reg.update(|data| {
            data.promoted.insert(d.topology.clone(), g.clone());
            let now = now_ms();
            if let Some(rec) = data.deployments.get_mut(&g) {
                rec.promoted_at_ms = Some(now);
            }
            for n in &newer {
                if let Some(rec) = data.deployments.get_mut(n) {
                    rec.desired = Desired::Stopped;
                    rec.stopped_at_ms = Some(now);
                }
            }
        })
        .map_err(|e| io_error("save the registry", e))?;
        let d = reg.data.deployments[&g].clone();
        (server.view(&reg, &d), newer)
    };
    tracing::info!(group_id = %g, stopped = ?stopped, "rolled back");
    for n in &stopped {
        server.halt(n).await;
    }
    Ok(Json(RollbackResponse { promoted: view, stopped }))
}

#[utoipa::path(post, path = "/v1/deployments/{group_id}/stop", tag = "deployments", security(("bearer" = [])),
    params(("group_id" = String, Path, description = "Group id")),
    responses((status = 200, body = DeploymentView), (status = 404, description = "Unknown group id"),
              (status = 409, description = "Already stopped, or the promoted version"), (status = 401), (status = 403)))]
async fn stop(
    State(server): State<Shared>,
    headers: HeaderMap,
    group: Result<UrlPath<String>, PathRejection>,
) -> Result<Json<DeploymentView>, ApiError> {
    authorize(&server, &headers)?;
    let g = group_path(group)?;
    {
        let mut reg = server.registry.lock().await;
        let d = reg.data.deployments.get(&g).ok_or_else(|| unknown_group(&g))?.clone();
        if d.desired == Desired::Stopped {
            return Err(ApiError::new(StatusCode::CONFLICT, format!("{g} is already stopped")));
        }
        if reg.promoted(&d.topology) == Some(g.as_str()) {
            return Err(ApiError::new(StatusCode::CONFLICT, format!("{g} is the promoted version of {}", d.topology))
                .detail("stopping it would leave the topology without a version that answers queries")
                .hint("promote or roll back to another version first"));
        }
        reg.update(|data| {
            if let Some(rec) = data.deployments.get_mut(&g) {
                rec.desired = Desired::Stopped;
                rec.stopped_at_ms = Some(now_ms());
            }
        })
        .map_err(|e| io_error("save the registry", e))?;
    }
    server.halt(&g).await;
    tracing::info!(group_id = %g, "stopped");
    let reg = server.registry.lock().await;
    let d = reg.data.deployments[&g].clone();
    Ok(Json(server.view(&reg, &d)))
}

/// `?group=` and `?topology=`.
#[derive(Deserialize, utoipa::IntoParams)]
struct UserQuery {
    /// Read this version (group id) instead of the promoted one.
    group: Option<String>,
    /// The topology whose promoted version answers (needed only when several topologies are deployed).
    topology: Option<String>,
}

#[utoipa::path(get, path = "/v1/users/{user_id}/attributes", tag = "users",
    params(("user_id" = String, Path, description = "The user, percent-encoded"), UserQuery),
    responses((status = 200, body = crate::http::UserAttributes), (status = 400, description = "Invalid user id or query"),
              (status = 404, description = "Unknown user or group"), (status = 503, description = "No promoted or serving version")))]
async fn user_attributes(
    State(server): State<Shared>,
    user: Result<UrlPath<String>, PathRejection>,
    query: Result<Query<UserQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let UrlPath(user_id) = user.map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid user id")
            .detail(e.body_text())
            .hint("user ids are UTF-8, percent-encoded in the path")
    })?;
    check_user_id(&user_id)?;
    let Query(q) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid query").detail(e.body_text()))?;
    let (d, urls) = {
        let reg = server.registry.lock().await;
        let group = match (&q.group, &q.topology) {
            (Some(g), _) => g.clone(),
            (None, Some(t)) => reg.promoted(t).map(str::to_owned).ok_or_else(|| {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("topology {t:?} has no promoted version"))
                    .hint("`squall promote <group id>`, or ask a version with ?group=")
            })?,
            (None, None) => match reg.data.promoted.values().collect::<Vec<_>>().as_slice() {
                [one] => (*one).clone(),
                [] => {
                    return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no version is promoted")
                        .hint("`squall promote <group id>`, or ask a version with ?group=<group id>"));
                }
                _ => {
                    return Err(ApiError::new(StatusCode::BAD_REQUEST, "several topologies are promoted")
                        .hint("name one with ?topology=<name>"));
                }
            },
        };
        let d = reg.data.deployments.get(&group).ok_or_else(|| unknown_group(&group))?.clone();
        let urls = server.urls(&group).filter(|u| d.desired == Desired::Running && u.len() == d.processes);
        let urls = urls.ok_or_else(|| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("{group} is not serving"))
                .detail(format!("state: {}", server.view(&reg, &d).state))
        })?;
        (d, urls)
    };
    // Route to the process whose workers own the user.
    let owner = crate::cluster::owner_process(&user_id, d.workers, d.processes);
    let mut url = reqwest::Url::parse(&urls[owner]).map_err(|e| io_error("route the query", e))?;
    url.path_segments_mut().map_err(|_| io_error("route the query", "bad child url"))?.extend([
        "v1",
        "users",
        user_id.as_str(),
        "attributes",
    ]);
    let resp = server.http.get(url).send().await.map_err(|e| {
        ApiError::new(StatusCode::BAD_GATEWAY, format!("{} did not answer", d.group_id)).detail(e.to_string())
    })?;
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let body = resp.bytes().await.map_err(|e| {
        ApiError::new(StatusCode::BAD_GATEWAY, format!("{} did not answer", d.group_id)).detail(e.to_string())
    })?;
    Ok((status, [(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// The server API's OpenAPI document (served at `/openapi.json`, kept in `docs/openapi.json`).
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "squall", description = "Deploy topology versions side by side, promote, roll back, and query user attributes."),
    paths(list, detail, logs, deploy, promote, rollback, stop, user_attributes),
    components(schemas(
        DeploymentView, DeploymentDetail, DeployRequest, RollbackResponse, Sample, Deployment, Desired, PartitionLag,
        RunStatus, crate::http::UserAttributes
    )),
    modifiers(&BearerAuth),
    tags((name = "deployments", description = "Topology versions and their lifecycle"),
         (name = "users", description = "Per-user attributes"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document as pretty JSON.
pub fn openapi_json() -> String {
    use utoipa::OpenApi as _;
    ApiDoc::openapi().to_pretty_json().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_openapi_document_in_the_repo_is_current() {
        let kept = include_str!("../../docs/openapi.json");
        assert!(
            kept.trim_end() == super::openapi_json().trim_end(),
            "docs/openapi.json is stale: run `cargo run -p squall --bin squall -- openapi > docs/openapi.json`"
        );
    }
}
