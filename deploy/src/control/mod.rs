//! `squall server`: the control plane. It keeps a durable registry of deployments, runs each
//! deployed version in its own processes (restarted when they die), watches their progress in
//! Kafka, and serves the deployments and user attributes over one HTTP API.
//!
//! One job per file:
//! - [`registry`]: the durable state (`registry.json`); [`statedir`]: where every file lives.
//! - [`state`]: the deployment state machine, pure: states, commands, observations.
//! - [`launcher`]: the seam to processes (the [`launcher::Launcher`] trait); [`child`]: the
//!   launcher that runs `squall run` children; [`supervisor`]: restarts and stops a deployment's runs.
//! - [`lag`]: the seam to Kafka (the [`lag::LagSource`] trait); [`monitor`]: lag, child status
//!   and the heartbeats that renew the processes' leases.
//! - [`archives`]: the archivers the server runs (`squall archive start`): their record, views
//!   and the decisions of start and stop; they run through the same launcher and supervisor.
//! - [`standbys`]: the standby replicas of versions deployed with `standbys`: their launches,
//!   what is observed of them, which may answer; supervised one by one like versions.
//! - [`binaries`]: executables uploaded for versions that run custom code.
//! - [`routing`]: which process answers which query, from a lock-free snapshot.
//! - [`promotions`]: the CQL store's `promoted_versions` rows, following the registry.
//! - [`diff_runs`]: the running diffs of pairs of versions (`GET /v1/diff`, gated promotion).
//! - [`api`]: the routes; [`handlers`]: thin HTTP handlers; [`views`]: the API's types;
//!   [`openapi`]: its document.
//! - `counters`: the server's own metrics; `promtext`: its `/metrics`, merged with its versions'.
//!
//! This module ties them together: [`Control`] decides each command with the state machine,
//! makes the change durable, publishes it for routing, then starts and stops processes.
//! Versions are isolated in their own processes, so a crash or a slow store in one version does
//! not stop another; the control plane reaches them only through the two seams and their HTTP API.

pub mod api;
pub mod archives;
pub mod binaries;
pub mod child;
mod counters;
pub mod diff_runs;
pub mod handlers;
pub mod lag;
pub mod launcher;
pub mod monitor;
pub mod openapi;
pub mod promotions;
mod promtext;
pub mod registry;
pub mod routing;
pub mod standbys;
pub mod state;
pub mod statedir;
pub mod supervisor;
pub mod views;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use squall_topologies::{SpecError, TopologySpec};

use crate::changelog_diff::{DiffError, DiffReport, DiffSession};

use self::archives::{ArchiveDeployment, ArchiveRefusal, ArchiveView, StartArchiveRequest};
use self::diff_runs::{DiffSummary, Diffs, Gate, GateRefusal, InvalidGate, PromoteRequest};
use self::lag::LagSource;
use self::launcher::{LaunchSpec, Launcher};
use self::monitor::Progress;
use self::registry::{BackfillFrom, Deployment, Registry, RegistryData};
use self::routing::Routing;
use self::state::{Change, Facts, Observation, Observed, Refusal};
use self::statedir::StateDir;
use self::supervisor::{Begin, Supervisor};
use self::views::{DeployRequest, DeploymentDetail, DeploymentView, RollbackResponse};
use crate::kafka::Inputs;
use crate::values::{BinaryHash, GroupId, StartPosition};
use squall_feeds::now_ms;

/// How the server runs.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where the registry, the deployments' files, logs and checkpoints live.
    pub state_dir: StateDir,
    /// Bearer token required by every mutation.
    pub token: String,
    /// Kafka brokers for every deployment (else each topology file's, or `SQUALL__KAFKA__BROKERS`).
    pub brokers: Option<String>,
    /// CQL contact points for every deployment.
    pub cql: Option<String>,
    /// The `squall` executable the versions run.
    pub program: PathBuf,
    /// A running version whose Kafka lag is above this many messages is `catching-up`.
    pub catch_up_lag: i64,
    /// How often the monitor reads each deployment's lag and counters.
    pub poll_every: Duration,
    /// The largest executable `POST /v1/binaries` accepts, in bytes.
    pub max_binary_bytes: u64,
    /// The share of its time a diff works while catching up (`squall server --diff-duty`).
    pub diff_duty: f64,
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The state machine refused it.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The request is malformed or names something impossible.
    #[error("{0}")]
    Invalid(String),
    /// A promotion's gate is malformed.
    #[error("{0}")]
    InvalidGate(InvalidGate),
    /// A deployment's stored topology file cannot be read at its version.
    #[error("{0}")]
    Spec(SpecError),
    /// The backfill's archive ends before the offsets Kafka still holds: events would be lost.
    #[error("{0}")]
    Seam(String),
    /// Kafka could not be asked what the command depends on.
    #[error("cannot read committed offsets: {0}")]
    Kafka(String),
    /// What the command needs is not there yet (e.g. a version has published no changelog yet).
    #[error("{0}")]
    Unavailable(DiffError),
    /// A gated promotion whose diff is below the bar: nothing changed.
    #[error("promotion refused: {0}")]
    Gate(GateRefusal),
    /// An archive command was refused.
    #[error(transparent)]
    Archive(#[from] ArchiveRefusal),
    /// The change could not be made durable.
    #[error("cannot {what}: {error}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        error: String,
    },
}

impl CommandError {
    fn io(what: &'static str, e: impl std::fmt::Display) -> CommandError {
        CommandError::Io { what, error: e.to_string() }
    }
}

/// What is observed of every deployment: what the state machine uses, and the monitor's readings.
#[derive(Default)]
struct Book {
    observed: HashMap<GroupId, Observed>,
    progress: HashMap<GroupId, Progress>,
    /// Each archiver's data files, from the last listing of its archive.
    archive_files: HashMap<GroupId, Result<u64, String>>,
    /// Every standby of every running version.
    standbys: HashMap<standbys::Key, standbys::Watched>,
}

/// The control plane's shared state.
pub struct Control {
    cfg: ServerConfig,
    /// Held while a command decides and commits, so commands apply one at a time. Nothing else
    /// takes it: readers use the routing snapshot.
    registry: tokio::sync::Mutex<Registry>,
    book: Mutex<Book>,
    routes: Routing,
    supervisors: Mutex<HashMap<GroupId, Supervisor>>,
    standby_supervisors: Mutex<HashMap<standbys::Key, Supervisor>>,
    launcher: Arc<dyn Launcher>,
    lag: Arc<dyn LagSource>,
    http: reqwest::Client,
    diffs: Diffs,
    promotions: promotions::Promotions,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Control {
    /// Opens the registry in the state directory, starts every deployment it records as running
    /// through `launcher`, and starts the monitor, which reads lag from `lag`.
    pub async fn start(
        cfg: ServerConfig,
        launcher: Arc<dyn Launcher>,
        lag: Arc<dyn LagSource>,
    ) -> anyhow::Result<Arc<Control>> {
        let registry = Registry::open(&cfg.state_dir.registry())
            .map_err(|e| anyhow::anyhow!("registry in {}: {e}", cfg.state_dir.path().display()))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| anyhow::anyhow!("http client: {e}"))?;
        let routes = Routing::default();
        routes.set_registry(registry.data());
        let recorded: Vec<Deployment> = registry.data().deployments.values().cloned().collect();
        let archivers: Vec<ArchiveDeployment> = registry.data().archives.values().cloned().collect();
        let control = Arc::new(Control {
            registry: tokio::sync::Mutex::new(registry),
            book: Mutex::new(Book::default()),
            routes,
            supervisors: Mutex::new(HashMap::new()),
            standby_supervisors: Mutex::new(HashMap::new()),
            launcher,
            lag,
            http,
            diffs: Diffs::default(),
            promotions: promotions::Promotions::start(),
            cfg,
        });
        control.publish_promotions(control.routes.load().registry());
        for d in recorded {
            match d.desired {
                registry::Desired::Running => {
                    tracing::info!(group_id = %d.group_id, "resuming deployment");
                    control.launch(&d, Begin::Resume);
                }
                registry::Desired::Stopped => {
                    let spec = control.launch_spec(&d);
                    for (_, s) in standbys::specs(&d, &spec) {
                        tokio::spawn(supervisor::retire(Arc::clone(&control.launcher), s));
                    }
                    tokio::spawn(supervisor::retire(Arc::clone(&control.launcher), spec));
                }
            }
        }
        for a in archivers {
            tracing::info!(group_id = %a.group_id, url = %a.url, "resuming archiver");
            control.launch_spec_as(control.archiver_spec(&a), Begin::Resume);
        }
        tokio::spawn(monitor::run(Arc::downgrade(&control), control.cfg.poll_every));
        tokio::spawn(monitor::heartbeats(Arc::downgrade(&control), control.cfg.poll_every));
        tokio::spawn(monitor::diffs(Arc::downgrade(&control), control.cfg.poll_every));
        Ok(control)
    }

    /// Stops every deployment's processes (the registry keeps them as running, so a restart resumes them).
    pub async fn shutdown(&self) {
        let mut all: Vec<Supervisor> = lock(&self.supervisors).drain().map(|(_, s)| s).collect();
        all.extend(lock(&self.standby_supervisors).drain().map(|(_, s)| s));
        futures::future::join_all(all.into_iter().map(Supervisor::halt)).await;
    }

    /// Stops supervising and leaves every deployment's processes running: a server started later
    /// on the same state directory adopts them, and each stops itself if none has renewed its
    /// lease within its adopt timeout.
    pub async fn detach(&self) {
        let all: Vec<(GroupId, Supervisor)> = lock(&self.supervisors).drain().collect();
        for (g, s) in all {
            s.detach().await;
            // No longer watched, heartbeaten or routed to by this server.
            self.observe(&g, Observation::Halted);
        }
        let all: Vec<(standbys::Key, Supervisor)> = lock(&self.standby_supervisors).drain().collect();
        for (key, s) in all {
            s.detach().await;
            self.observe_standby(&key, Observation::Halted);
        }
    }

    /// The bearer token mutations need.
    pub fn token(&self) -> &str {
        &self.cfg.token
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        lock(&self.book)
    }

    /// Runs `f` over the facts: `registry` and the observations.
    fn with_facts<T>(&self, registry: &RegistryData, f: impl FnOnce(&Facts, &HashMap<GroupId, Progress>) -> T) -> T {
        let book = self.book();
        let facts = Facts { registry, observed: &book.observed, catch_up_lag: self.cfg.catch_up_lag };
        f(&facts, &book.progress)
    }

    /// Records an observation of `g` and republishes its addresses if they changed.
    fn observe(&self, g: &GroupId, o: Observation) {
        let mut book = self.book();
        let observed = book.observed.entry(g.clone()).or_default();
        let before = observed.serving();
        observed.apply(o);
        let after = observed.serving();
        if after != before {
            // Under the book's lock, so that the snapshot follows the observations in order.
            let serves = after.is_some();
            let pids = observed.processes.iter().map(|p| p.pid).collect();
            self.routes.set_serving_at(g, after, pids);
            // A standby that took over is routed to as one until now (`Watched::handed_over`).
            let mut handed_over = false;
            if serves {
                for (_, w) in book.standbys.iter_mut().filter(|((k, _), _)| k == g) {
                    handed_over |= w.handed_over.take().is_some();
                }
            }
            if handed_over {
                self.publish_standbys(g, &book);
            }
        }
    }

    /// Starts the supervisor of `d`, and one per standby of it.
    fn launch(self: &Arc<Self>, d: &Deployment, begin: Begin) {
        let spec = self.launch_spec(d);
        let max_lag = self.stored_spec(d).map(|s| s.runtime.standby_max_lag).unwrap_or(10);
        for (of, s) in standbys::specs(d, &spec) {
            let key = (d.group_id.clone(), of);
            self.book().standbys.insert(key.clone(), standbys::Watched { max_lag, ..Default::default() });
            let control = Arc::downgrade(self);
            let k = key.clone();
            let report = Arc::new(move |o: Observation| {
                if let Some(c) = control.upgrade() {
                    c.observe_standby(&k, o);
                }
            });
            let supervisor = Supervisor::spawn(Arc::clone(&self.launcher), s, begin, report);
            lock(&self.standby_supervisors).insert(key, supervisor);
        }
        self.launch_spec_as(spec, begin);
    }

    /// Records an observation of a standby and republishes the standbys of its version that may answer.
    fn observe_standby(&self, key: &standbys::Key, o: Observation) {
        let mut book = self.book();
        let Some(w) = book.standbys.get_mut(key) else { return };
        w.apply(o, self.routes.load().serving(&key.0).is_some());
        self.publish_standbys(&key.0, &book);
    }

    /// Records the `/v1/status` readings of standbys (`None`: it did not answer) and republishes.
    fn standby_readings(&self, readings: Vec<(standbys::Key, Option<crate::version::counters::RunStatus>)>) {
        let mut book = self.book();
        let mut groups = std::collections::BTreeSet::new();
        for (key, status) in readings {
            let Some(w) = book.standbys.get_mut(&key) else { continue };
            w.users = status.as_ref().map(|s| s.users);
            w.status = status.and_then(|s| s.standby);
            groups.insert(key.0);
        }
        for g in groups {
            self.publish_standbys(&g, &book);
        }
    }

    /// Publishes the standbys of `g` that may answer, under the book's lock (so that the
    /// snapshot follows the observations in order).
    fn publish_standbys(&self, g: &GroupId, book: &Book) {
        let processes = self.routes.load().registry().deployments.get(g).map_or(0, |d| d.processes);
        let any = book.standbys.keys().any(|(k, _)| k == g);
        self.routes.set_standbys(g, any.then(|| standbys::answering(g, processes, &book.standbys)));
    }

    /// Starts the supervisor of `spec` (a version's or an archiver's).
    fn launch_spec_as(self: &Arc<Self>, spec: LaunchSpec, begin: Begin) {
        let control = Arc::downgrade(self);
        let g = spec.group_id.clone();
        let report = Arc::new(move |o: Observation| {
            if let Some(c) = control.upgrade() {
                c.observe(&g, o);
            }
        });
        let group_id = spec.group_id.clone();
        let supervisor = Supervisor::spawn(Arc::clone(&self.launcher), spec, begin, report);
        lock(&self.supervisors).insert(group_id, supervisor);
    }

    /// What the launcher runs for archiver `a`: `squall archive`, one process.
    fn archiver_spec(&self, a: &ArchiveDeployment) -> LaunchSpec {
        let dir = self.cfg.state_dir.deployment(&a.group_id);
        LaunchSpec {
            group_id: a.group_id.clone(),
            program: self.cfg.program.clone(),
            topology: dir.topology(),
            version: 0,
            workers: 1,
            processes: 1,
            start_from: StartPosition::default(),
            backfill: None,
            archiver: Some(a.clone()),
            standby: None,
            standbys: 0,
        }
    }

    /// What the launcher runs for `d`: its own executable if it names one, else the server's.
    fn launch_spec(&self, d: &Deployment) -> LaunchSpec {
        LaunchSpec {
            group_id: d.group_id.clone(),
            program: d.binary.as_ref().map_or_else(|| self.cfg.program.clone(), |h| self.cfg.state_dir.binary(h)),
            topology: self.cfg.state_dir.deployment(&d.group_id).topology(),
            version: d.version,
            workers: d.workers,
            processes: d.processes,
            start_from: d.start_from.clone(),
            backfill: d.backfill.clone(),
            archiver: None,
            standby: None,
            standbys: d.standbys,
        }
    }

    /// Stops the processes of `g` and its standbys, and waits until they are gone.
    async fn halt(&self, g: &GroupId) {
        let supervisor = lock(&self.supervisors).remove(g);
        let standbys: Vec<Supervisor> = {
            let mut all = lock(&self.standby_supervisors);
            let keys: Vec<standbys::Key> = all.keys().filter(|(k, _)| k == g).cloned().collect();
            keys.iter().filter_map(|k| all.remove(k)).collect()
        };
        if let Some(s) = supervisor {
            s.halt().await;
        }
        futures::future::join_all(standbys.into_iter().map(Supervisor::halt)).await;
        let mut book = self.book();
        book.standbys.retain(|(k, _), _| k != g);
        self.routes.set_standbys(g, None);
    }

    /// Makes `change` durable and visible, and starts what it starts; the deployments it stops
    /// are returned, to be halted once the registry lock is released.
    fn commit(self: &Arc<Self>, registry: &mut Registry, change: Change) -> Result<Vec<GroupId>, CommandError> {
        registry.commit(change.registry).map_err(|e| CommandError::io("save the registry", e))?;
        self.routes.set_registry(registry.data());
        self.publish_promotions(registry.data());
        if let Some(g) = &change.start
            && let Some(d) = registry.data().deployments.get(g)
        {
            self.launch(d, Begin::Start);
        }
        Ok(change.stop)
    }

    /// Asks for the `promoted_versions` rows of `registry`'s promoted versions that write a
    /// profile table.
    fn publish_promotions(&self, registry: &RegistryData) {
        let mut rows = std::collections::BTreeMap::new();
        for (topology, g) in &registry.promoted {
            let Some(d) = registry.deployments.get(g) else { continue };
            let spec = match TopologySpec::from_toml(&d.topology_toml).and_then(|s| s.with_version(d.version)) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(group_id = %g, error = %e, "cannot read the promoted version's topology file");
                    continue;
                }
            };
            if spec.feed.profile {
                rows.insert(
                    topology.clone(),
                    promotions::Promoted {
                        group_id: g.to_string(),
                        version: d.version,
                        nodes: self.cfg.cql.clone().unwrap_or_else(|| spec.cql.nodes.clone()),
                        keyspace: spec.cql.keyspace.clone(),
                    },
                );
            }
        }
        self.promotions.want(rows);
    }

    /// The input topics of a deployment, from its stored file with the server's overrides.
    fn stored_inputs(&self, d: &Deployment) -> Result<Inputs, SpecError> {
        Ok(self.inputs(&self.stored_spec(d)?))
    }

    /// A deployment's stored topology file, at its version.
    fn stored_spec(&self, d: &Deployment) -> Result<TopologySpec, SpecError> {
        let path = self.cfg.state_dir.deployment(&d.group_id).topology();
        TopologySpec::load(&path)?.with_version(d.version)
    }

    /// The input topics of `spec`, on the server's brokers if it was given them.
    fn inputs(&self, spec: &TopologySpec) -> Inputs {
        let mut inputs = Inputs::of(spec);
        if let Some(b) = &self.cfg.brokers {
            inputs.brokers = b.clone();
        }
        inputs
    }

    // ------------------------------------------------------------ commands

    /// Deploys a topology version beside the others.
    pub async fn deploy(self: &Arc<Self>, req: DeployRequest) -> Result<DeploymentView, CommandError> {
        let bad = CommandError::Invalid;
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
        let standbys = req.standbys.unwrap_or(spec.runtime.standbys);
        let max = squall_topologies::spec::MAX_STANDBYS;
        if standbys > max {
            return Err(bad(format!("standbys = {standbys}: use 0..={max}")));
        }
        let start_from: StartPosition = match &req.start_from {
            Some(s) => s.parse().map_err(|e| bad(format!("start_from {e}")))?,
            None => StartPosition::default(),
        };
        let binary: Option<BinaryHash> = match &req.binary {
            Some(h) => {
                let h: BinaryHash = h.parse().map_err(|e| bad(format!("binary {e}")))?;
                if !self.cfg.state_dir.binary(&h).is_file() {
                    return Err(bad(format!(
                        "binary {h}: no such executable on this server; upload it first with POST /v1/binaries \
                         (`squall deploy --binary PATH` does both)"
                    )));
                }
                Some(h)
            }
            None => None,
        };
        let now = now_ms();
        let backfill = match (&req.backfill, &req.since) {
            (None, None) => None,
            (None, Some(_)) => return Err(bad("since needs backfill: it limits what the archive gives".into())),
            (Some(archive), since) => {
                let since_ms = match since {
                    Some(s) => {
                        let d = humantime::parse_duration(s).map_err(|e| bad(format!("since {s:?}: {e}; e.g. 90d")))?;
                        Some(now - d.as_millis() as i64)
                    }
                    None => None,
                };
                Some(BackfillFrom { archive: archive.clone(), since_ms })
            }
        };
        let d = Deployment {
            binary,
            backfill,
            standbys,
            ..Deployment::new(&spec, req.topology_toml, start_from, workers, processes, now as u64)
        };
        if self.routes.load().registry().archives.contains_key(&d.group_id) {
            return Err(bad(format!("{} is the group id of an archiver this server runs", d.group_id)));
        }
        // Refusals first, as far as they can be seen without the lock; then what Kafka says.
        self.with_facts(self.routes.load().registry(), |f, _| state::deploy(f, d.clone()))?;
        self.check_start_group(&d, &spec).await?;
        self.check_backfill(&d, &spec).await?;
        let mut registry = self.registry.lock().await;
        let change = self.with_facts(registry.data(), |f, _| state::deploy(f, d.clone()))?;
        let dir = self.cfg.state_dir.deployment(&d.group_id);
        std::fs::create_dir_all(dir.path()).map_err(|e| CommandError::io("create the deployment directory", e))?;
        crate::files::write_atomically(&dir.topology(), d.topology_toml.as_bytes())
            .map_err(|e| CommandError::io("store the topology file", e))?;
        self.commit(&mut registry, change)?;
        tracing::info!(group_id = %d.group_id, "deployed");
        Ok(self.with_facts(registry.data(), |f, p| DeploymentView::of(f, &d, p.get(&d.group_id))))
    }

    /// A backfilled deployment's archive must be readable and reach the offsets Kafka still holds.
    async fn check_backfill(&self, d: &Deployment, spec: &TopologySpec) -> Result<(), CommandError> {
        let Some(b) = &d.backfill else { return Ok(()) };
        let inputs = self.inputs(spec);
        crate::backfill::check(&b.archive, &inputs).await.map_err(|e| match e {
            crate::backfill::CheckError::Kafka(e) => CommandError::Kafka(e.to_string()),
            e @ crate::backfill::CheckError::Gap(_) => CommandError::Seam(e.to_string()),
            e => CommandError::Invalid(format!("backfill: {e}")),
        })
    }

    /// A deployment that starts at another group's offsets must name a group deployed here or
    /// one that has committed offsets on the topology's topics.
    async fn check_start_group(&self, d: &Deployment, spec: &TopologySpec) -> Result<(), CommandError> {
        let Some(from) = d.start_from.group().cloned() else { return Ok(()) };
        if from == d.group_id || self.routes.load().registry().deployments.contains_key(&from) {
            return Ok(());
        }
        let (source, inputs, group) = (Arc::clone(&self.lag), self.inputs(spec), from.clone());
        let found = tokio::task::spawn_blocking(move || source.committed(&group, &inputs))
            .await
            .map_err(|e| CommandError::io("check the group", e))?
            .map_err(|e| CommandError::Kafka(e.to_string()))?;
        if found.is_empty() {
            return Err(CommandError::Invalid(format!(
                "start_from {}: group {:?} is not deployed here and has committed no offsets on the topology's topics",
                d.start_from,
                from.as_str()
            )));
        }
        Ok(())
    }

    /// Stores an uploaded executable (streamed as `body`) once it answers `--version`.
    pub async fn upload_binary<S, E>(&self, body: S) -> Result<binaries::StoredBinary, binaries::UploadError>
    where
        S: futures::Stream<Item = Result<axum::body::Bytes, E>>,
        E: std::fmt::Display,
    {
        let stored = binaries::store(&self.cfg.state_dir.binaries(), body, self.cfg.max_binary_bytes).await?;
        tracing::info!(sha256 = %stored.sha256, bytes = stored.bytes, version = %stored.version, "stored an executable");
        Ok(stored)
    }

    /// The largest executable [`Control::upload_binary`] accepts, in bytes.
    pub fn max_binary_bytes(&self) -> u64 {
        self.cfg.max_binary_bytes
    }

    /// Makes `g` the version that answers its topology's queries by default; with a gate in
    /// `req`, only if its diff against the gate's version clears the bar (else nothing changes).
    pub async fn promote_gated(
        self: &Arc<Self>,
        g: &GroupId,
        req: &PromoteRequest,
    ) -> Result<DeploymentView, CommandError> {
        let gate: Option<Gate> = req.gate(g).map_err(CommandError::InvalidGate)?;
        if let Some(gate) = gate {
            // The state machine's refusals (unknown, stopped, not serving) come before the diff.
            self.with_facts(self.routes.load().registry(), |f, _| state::promote(f, g, now_ms() as u64))?;
            let report = self.diff(&gate.against, g, gate.wait).await?;
            gate.check(&report).map_err(CommandError::Gate)?;
            tracing::info!(group_id = %g, against = %gate.against, agreement = ?report.agreement_percent,
                compared = report.users_compared, "promotion gate cleared");
        }
        self.promote(g).await
    }

    /// Makes `g` the version that answers its topology's queries by default.
    pub async fn promote(self: &Arc<Self>, g: &GroupId) -> Result<DeploymentView, CommandError> {
        let mut registry = self.registry.lock().await;
        let change = self.with_facts(registry.data(), |f, _| state::promote(f, g, now_ms() as u64))?;
        self.commit(&mut registry, change)?;
        tracing::info!(group_id = %g, "promoted");
        Ok(self.view_of(registry.data(), g))
    }

    /// Promotes the older version `g` again and stops every newer running version of its topology.
    pub async fn rollback(self: &Arc<Self>, g: &GroupId) -> Result<RollbackResponse, CommandError> {
        let (promoted, stopped) = {
            let mut registry = self.registry.lock().await;
            let change = self.with_facts(registry.data(), |f, _| state::rollback(f, g, now_ms() as u64))?;
            let stopped = self.commit(&mut registry, change)?;
            (self.view_of(registry.data(), g), stopped)
        };
        tracing::info!(group_id = %g, stopped = ?stopped, "rolled back");
        for n in &stopped {
            self.halt(n).await;
        }
        Ok(RollbackResponse { promoted, stopped })
    }

    /// Stops `g`; its committed offsets and checkpoints stay.
    pub async fn stop(self: &Arc<Self>, g: &GroupId) -> Result<DeploymentView, CommandError> {
        let stopped = {
            let mut registry = self.registry.lock().await;
            let change = self.with_facts(registry.data(), |f, _| state::stop(f, g, now_ms() as u64))?;
            self.commit(&mut registry, change)?
        };
        for n in &stopped {
            self.halt(n).await;
        }
        tracing::info!(group_id = %g, "stopped");
        Ok(self.view_of(self.routes.load().registry(), g))
    }

    // ------------------------------------------------------------ archivers

    /// Starts an archiver, supervised like a version.
    pub async fn start_archive(self: &Arc<Self>, req: StartArchiveRequest) -> Result<ArchiveView, CommandError> {
        let a = self.archive_record(req)?;
        let mut registry = self.registry.lock().await;
        let next = archives::start(registry.data(), a.clone())?;
        std::fs::create_dir_all(self.cfg.state_dir.deployment(&a.group_id).path())
            .map_err(|e| CommandError::io("create the archiver's directory", e))?;
        registry.commit(next).map_err(|e| CommandError::io("save the registry", e))?;
        self.routes.set_registry(registry.data());
        self.launch_spec_as(self.archiver_spec(&a), Begin::Start);
        tracing::info!(group_id = %a.group_id, url = %a.url, "archiver started");
        Ok(self.archive_view(&a))
    }

    /// The record of the archiver `req` asks for, checked.
    fn archive_record(&self, req: StartArchiveRequest) -> Result<ArchiveDeployment, CommandError> {
        let bad = CommandError::Invalid;
        let group = req.group.unwrap_or_else(|| "squall-archive".into());
        let group_id: GroupId = group.parse().map_err(|e| bad(format!("group {group:?}: {e}")))?;
        let topics = match req.topics {
            Some(t) if t.is_empty() => return Err(bad("topics is empty: name at least one topic".into())),
            Some(t) => t,
            None => archives::DEFAULT_TOPICS.iter().map(|t| t.to_string()).collect(),
        };
        for t in &topics {
            t.parse::<squall_archive::TopicSpec>().map_err(|e| bad(format!("topics: {e}")))?;
        }
        if req.rows_per_file == Some(0) {
            return Err(bad("rows_per_file = 0: use at least 1".into()));
        }
        if let Some(age) = &req.max_file_age {
            humantime::parse_duration(age).map_err(|e| bad(format!("max_file_age {age:?}: {e}; e.g. 60s")))?;
        }
        if req.url.trim().is_empty() {
            return Err(bad("url is empty: give a directory or an s3://, gs://, az:// URL".into()));
        }
        let url = req.url;
        match reqwest::Url::parse(&url) {
            Ok(u) if u.scheme() == "file" => {
                let path = u.to_file_path().map_err(|()| bad(format!("url {url:?}: not a local path")))?;
                check_archive_dir(&path.display().to_string()).map_err(bad)?;
            }
            // Parsed as the archiver will (no request is sent to the store).
            Ok(_) => drop(squall_archive::Archive::open(&url).map_err(|e| bad(format!("url: {e}")))?),
            Err(_) => check_archive_dir(&url).map_err(bad)?,
        }
        Ok(ArchiveDeployment {
            group_id,
            url,
            topics,
            rows_per_file: req.rows_per_file,
            max_file_age: req.max_file_age,
            created_at_ms: now_ms() as u64,
        })
    }

    /// Stops archiver `g` (it stores what it holds and commits) and forgets it; the archive stays.
    pub async fn stop_archive(self: &Arc<Self>, g: &GroupId) -> Result<ArchiveView, CommandError> {
        let a = {
            let mut registry = self.registry.lock().await;
            let a = registry.data().archives.get(g).cloned();
            let next = archives::stop(registry.data(), g)?;
            registry.commit(next).map_err(|e| CommandError::io("save the registry", e))?;
            self.routes.set_registry(registry.data());
            a.ok_or_else(|| ArchiveRefusal::Unknown(g.clone()))?
        };
        let view = self.archive_view(&a);
        self.halt(g).await;
        let mut book = self.book();
        book.observed.remove(g);
        book.progress.remove(g);
        book.archive_files.remove(g);
        tracing::info!(group_id = %g, "archiver stopped");
        Ok(view)
    }

    /// Every archiver.
    pub fn archives(&self) -> Vec<ArchiveView> {
        let routes = self.routes.load();
        routes.registry().archives.values().map(|a| self.archive_view(a)).collect()
    }

    /// Archiver `g`.
    pub fn archive(&self, g: &GroupId) -> Result<ArchiveView, CommandError> {
        let routes = self.routes.load();
        let a = routes.registry().archives.get(g).ok_or_else(|| ArchiveRefusal::Unknown(g.clone()))?;
        Ok(self.archive_view(a))
    }

    fn archive_view(&self, a: &ArchiveDeployment) -> ArchiveView {
        let book = self.book();
        ArchiveView::of(a, book.observed.get(&a.group_id), book.archive_files.get(&a.group_id))
    }

    /// The brokers an archiver reads: the server's, else the archiver's default.
    fn archive_inputs(&self, a: &ArchiveDeployment) -> Inputs {
        let topics = a.topics.iter().filter_map(|t| t.parse::<squall_archive::TopicSpec>().ok());
        Inputs {
            brokers: self.cfg.brokers.clone().unwrap_or_else(|| "127.0.0.1:9092".into()),
            topics: topics.map(|t| (t.name, t.kind)).collect(),
        }
    }

    // ------------------------------------------------------------ diffs

    /// The diff of `a` and `b` (group ids), caught up with both changelogs as they are now,
    /// waiting up to `wait` for that (the report says whether it did).
    pub async fn diff(&self, a: &GroupId, b: &GroupId, wait: Duration) -> Result<DiffReport, CommandError> {
        let session = self.diff_session(a, b).await?;
        Ok(session.caught_up_since(now_ms() as u64, wait).await)
    }

    /// The running diff of `a` and `b`, started if none runs.
    async fn diff_session(&self, a: &GroupId, b: &GroupId) -> Result<Arc<DiffSession>, CommandError> {
        if a == b {
            return Err(CommandError::Invalid(format!("a and b are both {a}: compare two different versions")));
        }
        let pair = (a.clone(), b.clone());
        if let Some(s) = self.diffs.get(&pair) {
            return Ok(s);
        }
        let brokers = {
            let routes = self.routes.load();
            let registry = routes.registry();
            let mut brokers = String::new();
            for g in [a, b] {
                let d = registry.deployments.get(g).ok_or_else(|| Refusal::Unknown(g.clone()))?;
                brokers = self.changelog_brokers(d)?;
            }
            brokers
        };
        let (sa, sb) = (a.to_string(), b.to_string());
        let duty = self.cfg.diff_duty;
        let session = tokio::task::spawn_blocking(move || DiffSession::start(&brokers, &sa, &sb, duty))
            .await
            .map_err(|e| CommandError::io("start the diff", e))?
            .map_err(CommandError::Unavailable)?;
        Ok(self.diffs.insert(pair, session))
    }

    /// The brokers of `d`'s changelog topic, or why it has none.
    fn changelog_brokers(&self, d: &Deployment) -> Result<String, CommandError> {
        let spec = self.stored_spec(d).map_err(CommandError::Spec)?;
        if !spec.feed.changelog {
            return Err(CommandError::Invalid(format!(
                "{} publishes no changelog, which the diff reads: set `changelog = true` under [feed] in its \
                 topology file and deploy it as a new version",
                d.group_id
            )));
        }
        Ok(self.inputs(&spec).brokers)
    }

    /// Keeps a diff of every running candidate against its topology's promoted version, for
    /// the status page (both must publish a changelog), and stops the idle ones.
    async fn keep_diffs(&self) {
        let routes = self.routes.load();
        let registry = routes.registry();
        let mut keep = std::collections::HashSet::new();
        for d in registry.deployments.values() {
            let Some(p) = registry.promoted(&d.topology) else { continue };
            if p == &d.group_id || d.desired != registry::Desired::Running {
                continue;
            }
            let Some(promoted) = registry.deployments.get(p) else { continue };
            let pair = (p.clone(), d.group_id.clone());
            keep.insert(pair.clone());
            if self.diffs.has(&pair) || self.changelog_brokers(d).is_err() || self.changelog_brokers(promoted).is_err()
            {
                continue;
            }
            if let Err(e) = self.diff_session(&pair.0, &pair.1).await {
                tracing::debug!(a = %pair.0, b = %pair.1, error = %e, "no diff against the promoted version yet");
            }
        }
        self.diffs.sweep(&keep, |g| registry.deployments.contains_key(g));
    }

    /// `v` with its standbys and its diff against the promoted version, if one runs.
    fn with_diff(&self, registry: &RegistryData, mut v: DeploymentView) -> DeploymentView {
        v.standby_replicas = standbys::views(&v.deployment.group_id, &self.book().standbys);
        if let Some(p) = registry.promoted(&v.deployment.topology)
            && p != &v.deployment.group_id
        {
            v.diff = self.diffs.report(&(p.clone(), v.deployment.group_id.clone())).map(|r| DiffSummary::of(&r));
        }
        v
    }

    // ------------------------------------------------------------ reads (no registry lock)

    /// The view of `g`, which `registry` holds.
    fn view_of(&self, registry: &RegistryData, g: &GroupId) -> DeploymentView {
        let d = &registry.deployments[g];
        self.with_diff(registry, self.with_facts(registry, |f, p| DeploymentView::of(f, d, p.get(g))))
    }

    /// Every deployment.
    pub fn list(&self) -> Vec<DeploymentView> {
        let routes = self.routes.load();
        let registry = routes.registry();
        let views: Vec<DeploymentView> = self.with_facts(registry, |f, p| {
            registry.deployments.values().map(|d| DeploymentView::of(f, d, p.get(&d.group_id))).collect()
        });
        views.into_iter().map(|v| self.with_diff(registry, v)).collect()
    }

    /// One deployment in detail.
    pub fn detail(&self, g: &GroupId) -> Result<DeploymentDetail, CommandError> {
        let routes = self.routes.load();
        let d = routes.registry().deployments.get(g).ok_or_else(|| Refusal::Unknown(g.clone()))?;
        let mut detail = self.with_facts(routes.registry(), |f, p| DeploymentDetail::of(f, d, p.get(g)));
        detail.view = self.with_diff(routes.registry(), detail.view);
        Ok(detail)
    }

    /// The state of `g`, if it is deployed.
    pub fn state_of(&self, g: &GroupId) -> Option<state::DeploymentState> {
        let routes = self.routes.load();
        let d = routes.registry().deployments.get(g)?;
        Some(self.with_facts(routes.registry(), |f, _| f.state(d)))
    }

    /// The last `n` lines of `g`'s log.
    pub fn logs(&self, g: &GroupId, n: usize) -> Result<String, CommandError> {
        if !self.routes.load().registry().deployments.contains_key(g) {
            return Err(Refusal::Unknown(g.clone()).into());
        }
        Ok(statedir::tail(&self.cfg.state_dir.deployment(g).log(), n))
    }

    /// The routing snapshot.
    pub fn routes(&self) -> Arc<routing::Routes> {
        self.routes.load()
    }

    /// The client the control plane talks to versions with.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

/// An archive directory on the server's host must be named by an absolute path (the server's and
/// the archiver's working directories are nobody's business), exist already (the server creates
/// nothing on a request's say-so), and not be the filesystem's root.
fn check_archive_dir(url: &str) -> Result<(), String> {
    let path = std::path::Path::new(url);
    if !path.is_absolute() {
        return Err(format!(
            "url {url:?}: a directory must be an absolute path on the server's host \
             (`squall archive start` makes a relative one absolute)"
        ));
    }
    if path.parent().is_none() {
        return Err(format!("url {url:?}: the filesystem's root; give the archive a directory of its own"));
    }
    if !path.is_dir() {
        return Err(format!("url {url:?}: no such directory on the server's host; create it first (mkdir -p)"));
    }
    Ok(())
}
