//! The server's [`Launcher`]: each process of a version is a `squall run` process on an HTTP port
//! of its own choosing, detached from the server so that it outlives it:
//!
//! - in a process group of its own (a Ctrl-C or a signal to the server's group does not reach it),
//!   with stdout and stderr appended to the deployment's log file itself (no pipe to the server);
//! - announcing itself in its runtime file ([`crate::version::runfile`]): pid, start time, launch id, and
//!   its HTTP address once it serves, which is its readiness;
//! - with a lease (`--adopt-timeout`) that the server's heartbeats renew, so that it stops itself
//!   cleanly if no server comes back.
//!
//! [`Launcher::find`] reads the runtime files of a deployment, keeps the processes that are
//! certainly the ones launched (same pid, start time, boot and launch id, see
//! [`RunFile::identify`]), watches each for exit through a pidfd (the restarted server is not
//! their parent) and verifies it over HTTP (`/v1/status` answers with its launch id).
//!
//! [`Launcher::take_over`] asks a standby of each process of a version whose run died to become
//! that process in place (`POST /v1/take-over`; a cluster's standbys all at once, as a new timely
//! cluster), then adopts them like survivors. The
//! standby's own watcher notices the handover when the version's runtime file names its process
//! (`promoted`): it lets the process go without signalling it, so that the standby's supervisor
//! starts a fresh standby while the version's supervisor watches the promoted process.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use futures::future::BoxFuture;
use rustix::process::{Pid, PidfdFlags, Signal as UnixSignal};
use tokio::io::unix::AsyncFd;

use super::archives::ArchiveDeployment;
use super::launcher::{
    LaunchSpec, Launcher, Origin, ProcessEvent, ProcessHandle, ProcessSide, Signal, StandbyOf, Survivor, Unverified,
    launch_id,
};
use super::statedir::{DeploymentDir, StateDir, tail};
use crate::values::GroupId;
use crate::version::cluster::Cluster;
use crate::version::counters::RunStatus;
use crate::version::runfile::{Identity, RunFile};
use crate::version::standby::TakeOver;
use squall_feeds::now_ms;

/// How often a starting process's runtime file is read until it names the process's address.
const READY_POLL: Duration = Duration::from_millis(20);
/// How long a process found running has to answer `/v1/status` before it counts as unverified.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a standby's watcher reads its version's runtime file, to notice that it took over.
const PROMOTION_POLL: Duration = Duration::from_millis(100);
/// How long a standby has to answer `POST /v1/take-over` (it takes a few seconds at worst).
const TAKE_OVER_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a standby that may have taken over, but cannot be adopted, has to exit once killed.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// Starts versions as detached `squall run` processes, and finds the ones an earlier server left.
#[derive(Clone, Debug)]
pub struct ChildLauncher {
    state: StateDir,
    brokers: Option<String>,
    cql: Option<String>,
    log_json: bool,
    adopt_timeout: Duration,
    http: reqwest::Client,
}

impl ChildLauncher {
    /// A launcher for the server with state directory `state`: the processes it starts use the
    /// server's `brokers` and `cql` when given, log JSON lines with `log_json`, and stop
    /// themselves once no server has renewed their lease for `adopt_timeout`.
    pub fn new(
        state: StateDir,
        brokers: Option<String>,
        cql: Option<String>,
        log_json: bool,
        adopt_timeout: Duration,
    ) -> anyhow::Result<ChildLauncher> {
        let http = reqwest::Client::builder()
            .timeout(VERIFY_TIMEOUT)
            .build()
            .map_err(|e| anyhow::anyhow!("http client: {e}"))?;
        Ok(ChildLauncher { state, brokers, cql, log_json, adopt_timeout, http })
    }
}

impl Launcher for ChildLauncher {
    fn start(&self, spec: &LaunchSpec) -> Result<Vec<ProcessHandle>, String> {
        let dir = self.state.deployment(&spec.group_id);
        let log_path = log_of(&dir, spec);
        let open = || OpenOptions::new().create(true).append(true).open(&log_path);
        let mut log = open().map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
        let _ = writeln!(
            log,
            "=== squall server: starting {} ({} process(es), {}) at {} ms",
            spec.group_id,
            spec.processes,
            spec.program.display(),
            now_ms() as u64
        );
        let hostfile = dir.hostfile();
        if spec.processes > 1 {
            // A timely address and an HTTP address per process: each process answers every user
            // (forwarding to the owner), so each address serves while the server is down too.
            let ports = free_ports(2 * spec.processes).map_err(|e| format!("no free ports for the cluster: {e}"))?;
            let hosts: String = ports.chunks(2).map(|p| format!("127.0.0.1:{} 127.0.0.1:{}\n", p[0], p[1])).collect();
            std::fs::write(&hostfile, hosts).map_err(|e| format!("cannot write {}: {e}", hostfile.display()))?;
        }
        let mut handles: Vec<ProcessHandle> = Vec::with_capacity(spec.processes);
        // The processes already started are killed if a later one cannot be.
        let failed = |handles: Vec<ProcessHandle>, why: String| {
            handles.iter().for_each(|h| h.signal(Signal::Kill));
            Err(why)
        };
        for index in 0..spec.processes {
            let id = launch_id();
            let runfile = runfile_of(&dir, spec, index);
            let mut cmd = self.command(spec, index, &hostfile, &runfile, &id);
            let (out, err) = match (log.try_clone(), log.try_clone()) {
                (Ok(out), Ok(err)) => (out, err),
                (Err(e), _) | (_, Err(e)) => {
                    return failed(handles, format!("cannot share {}: {e}", log_path.display()));
                }
            };
            cmd.stdin(Stdio::null()).stdout(Stdio::from(out)).stderr(Stdio::from(err)).process_group(0);
            let child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => return failed(handles, format!("cannot start {}: {e}", spec.program.display())),
            };
            let (handle, side) = ProcessHandle::new(Origin::Spawned { pid: child.id() }, id.clone());
            let promotion = promotion_of(&dir, spec);
            tokio::spawn(watch(Watched::Child(child), index, runfile, id, log_path.clone(), promotion, side));
            handles.push(handle);
        }
        Ok(handles)
    }

    fn find(&self, spec: &LaunchSpec) -> BoxFuture<'static, Vec<Survivor>> {
        let (dir, spec, http) = (self.state.deployment(&spec.group_id), spec.clone(), self.http.clone());
        Box::pin(async move {
            let mut found = Vec::new();
            for index in 0..spec.processes {
                let path = runfile_of(&dir, &spec, index);
                let file = match RunFile::read(&path) {
                    Ok(Some(f)) => f,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!(group_id = %spec.group_id, error = %e, "unreadable runtime file: ignored");
                        continue;
                    }
                };
                // A standby records the process whose users it holds.
                let process = spec.standby.map_or(index, |s| s.process);
                let Some((pidfd, file)) = survivor(&spec.group_id, process, file) else { continue };
                let verified = match &file.url {
                    Some(url) => verify(&http, url, &file).await,
                    None => Ok(()), // still starting: its readiness will come through the file
                };
                let watching =
                    Watching { index, runfile: path, log: log_of(&dir, &spec), promotion: promotion_of(&dir, &spec) };
                let handle = match adopt(pidfd, &file, watching) {
                    Ok(h) => h,
                    Err(e) => {
                        tracing::warn!(group_id = %spec.group_id, error = %e, "cannot watch a pidfd");
                        continue;
                    }
                };
                found.push(Survivor { index, handle, verified });
            }
            found
        })
    }

    fn take_over(&self, spec: &LaunchSpec) -> BoxFuture<'static, Option<Vec<ProcessHandle>>> {
        let (dir, spec, http) = (self.state.deployment(&spec.group_id), spec.clone(), self.http.clone());
        Box::pin(async move {
            let g = &spec.group_id;
            if !spec.standby_may_take_over() || !(0..spec.processes).all(|p| clear_for_take_over(g, p, &dir.runfile(p)))
            {
                return None;
            }
            let asked = Instant::now();
            if spec.processes == 1 {
                for replica in 0..spec.standbys {
                    match take_over_by(&http, &dir, g, (0, replica), None).await {
                        Ok(handle) => {
                            tracing::info!(
                                group_id = %g, replica, origin = ?handle.origin, launch_id = %handle.launch_id,
                                elapsed_ms = asked.elapsed().as_millis() as u64,
                                "a standby took over as process 0"
                            );
                            return Some(vec![handle]);
                        }
                        Err(why) => tracing::warn!(group_id = %g, replica, %why, "the standby did not take over"),
                    }
                }
                return None;
            }
            let handles = take_over_cluster(&http, &dir, &spec).await;
            match &handles {
                Ok(h) => tracing::info!(
                    group_id = %g, processes = h.len(), elapsed_ms = asked.elapsed().as_millis() as u64,
                    "every process's standby took over, as one cluster"
                ),
                Err(why) => tracing::warn!(group_id = %g, %why, "the standbys did not take over"),
            }
            handles.ok()
        })
    }
}

/// Asks one standby of every process of the multi-process version `spec` to take over at once, as
/// a new timely cluster of the standbys (fresh timely ports; each keeps its HTTP address): the
/// handles, in process order, once all of them did. If one did not, those that did (or may have)
/// are killed, and the version restarts from its checkpoint.
async fn take_over_cluster(
    http: &reqwest::Client,
    dir: &DeploymentDir,
    spec: &LaunchSpec,
) -> Result<Vec<ProcessHandle>, String> {
    let mut chosen = Vec::with_capacity(spec.processes);
    for process in 0..spec.processes {
        // The first standby of the process that serves (the others, if any, stay standbys).
        let serving = (0..spec.standbys).find_map(|replica| {
            let file = RunFile::read(&dir.standby_runfile(process, replica)).ok().flatten()?;
            let url = file.url.as_deref()?;
            Some((replica, url.strip_prefix("http://")?.to_owned()))
        });
        let Some((replica, addr)) = serving else {
            return Err(format!("process {process} has no standby that serves"));
        };
        chosen.push((replica, addr));
    }
    let ports = free_ports(spec.processes).map_err(|e| format!("no free ports for the cluster: {e}"))?;
    let addresses: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let web: Vec<Option<String>> = chosen.iter().map(|(_, addr)| Some(addr.clone())).collect();
    let asks = chosen.iter().enumerate().map(|(process, (replica, _))| {
        let cluster = Cluster { process, addresses: addresses.clone(), http: web.clone() };
        take_over_by(http, dir, &spec.group_id, (process, *replica), Some(cluster))
    });
    let answers = futures::future::join_all(asks).await;
    if answers.iter().all(Result::is_ok) {
        return Ok(answers.into_iter().flatten().collect());
    }
    let why: Vec<String> =
        answers.iter().enumerate().filter_map(|(p, a)| a.as_ref().err().map(|e| format!("process {p}: {e}"))).collect();
    // The ones that took over cannot form the cluster without the others.
    for mut h in answers.into_iter().flatten() {
        h.signal(Signal::Kill);
        let _ = tokio::time::timeout(KILL_GRACE, h.exited()).await;
    }
    Err(why.join("; "))
}

/// Whether standbys may be asked to take over as process `process` of `group_id`, whose runtime
/// file is `runfile`: not if the file names a process that still runs (the process did not die,
/// so a standby taking over would make two). A stale or unreadable file is removed, so that
/// whatever the file says afterwards was written by the standby asked.
fn clear_for_take_over(group_id: &GroupId, process: usize, runfile: &Path) -> bool {
    match RunFile::read(runfile) {
        Ok(None) => return true,
        Ok(Some(file)) => {
            if let Some((_, file)) = survivor(group_id, process, file) {
                tracing::warn!(%group_id, process, pid = file.pid, launch_id = %file.launch_id, "the process still runs: no standby is asked to take over");
                return false;
            }
        }
        Err(e) => tracing::warn!(%group_id, process, error = %e, "unreadable runtime file: removed"),
    }
    match std::fs::remove_file(runfile) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => {
            tracing::warn!(%group_id, process, error = %e, "cannot remove a stale runtime file: no standby is asked to take over");
            false
        }
    }
}

/// Asks standby `replica` of process `process` of `group_id` to take over as that process (in
/// `cluster` when the version has several), and adopts it if it did: the handle to it, or why not.
async fn take_over_by(
    http: &reqwest::Client,
    dir: &DeploymentDir,
    group_id: &GroupId,
    (process, replica): (usize, usize),
    cluster: Option<Cluster>,
) -> Result<ProcessHandle, String> {
    let standby = match RunFile::read(&dir.standby_runfile(process, replica)) {
        Ok(Some(f)) => f,
        Ok(None) => return Err("it has no runtime file (not running)".into()),
        Err(e) => return Err(format!("its runtime file is unreadable: {e}")),
    };
    let Some(url) = standby.url.clone() else { return Err("it does not serve yet".into()) };
    // Its pidfd before the request: the process asked is the process adopted, or killed.
    let Some((pidfd, standby)) = survivor(group_id, process, standby) else {
        return Err("its runtime file is stale".into());
    };
    let runfile = dir.runfile(process);
    // It keeps its launch id (the one on its command line, which a later server's `find` checks).
    let request = TakeOver { launch_id: standby.launch_id.clone(), runtime_file: runfile.clone(), cluster };
    let answer = http.post(format!("{url}/v1/take-over")).json(&request).timeout(TAKE_OVER_TIMEOUT).send().await;
    // What the version's runtime file says now, if it names the standby.
    let version = || match RunFile::read(&runfile) {
        Ok(Some(f)) if f.launch_id == standby.launch_id && promoted(&f, &standby) => Some(f),
        _ => None,
    };
    // Watched under the version's runtime file, and with its own log (its output goes there).
    let watching = || Watching {
        index: process,
        runfile: runfile.clone(),
        log: dir.standby_log(process, replica),
        promotion: None,
    };
    let file = match answer {
        Ok(resp) if resp.status() == reqwest::StatusCode::OK => match version() {
            Some(f) => f,
            None => {
                let why = format!(
                    "it answered 200 but {} does not name it as launch {}",
                    runfile.display(),
                    standby.launch_id
                );
                return Err(kill(pidfd, &standby, watching(), why).await);
            }
        },
        Ok(resp) => {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            return Err(format!("it answered {status}: {}", body.chars().take(500).collect::<String>()));
        }
        // The request never reached it: it is still a standby (or gone).
        Err(e) if e.is_connect() => return Err(format!("it cannot be reached: {e}")),
        // No answer: it may still be taking over. Adopt it if it did, else it must not later.
        Err(e) => match version() {
            Some(f) => f,
            None => return Err(kill(pidfd, &standby, watching(), format!("it did not answer: {e}")).await),
        },
    };
    let Some(url) = file.url.clone() else {
        return Err(kill(pidfd, &standby, watching(), "it took over without an address".into()).await);
    };
    if let Err(e) = verify(http, &url, &file).await {
        return Err(kill(pidfd, &standby, watching(), format!("it took over but is not verified: {e}")).await);
    }
    adopt(pidfd, &file, watching()).map_err(|e| format!("it took over but cannot be watched: {e}"))
}

/// Kills a standby that may have taken over but is not adopted (a fresh run of the version is
/// about to start), waits a little for it to exit, and says why (`why`, and what became of it).
async fn kill(pidfd: OwnedFd, standby: &RunFile, watching: Watching, why: String) -> String {
    match adopt(pidfd, standby, watching) {
        Ok(mut handle) => {
            handle.signal(Signal::Kill);
            match tokio::time::timeout(KILL_GRACE, handle.exited()).await {
                Ok(_) => format!("{why}; killed it"),
                Err(_) => format!("{why}; killed it, but it had not exited {KILL_GRACE:?} later"),
            }
        }
        Err(e) => format!("{why}; cannot kill it ({e})"),
    }
}

/// Whether `version`, a version's runtime file, records the process that `standby` records (the
/// standby's own runtime file, read while it was one): same pid, start time and boot. A stale file whose pid the kernel has since given to the standby has another start
/// time.
fn promoted(version: &RunFile, standby: &RunFile) -> bool {
    version.pid == standby.pid && version.start_time == standby.start_time && version.boot_id == standby.boot_id
}

/// The process `file` records as process `process` of `group_id` (or a standby of it), with a
/// pidfd for it, if it is still the process that was launched. Stale records (the process is
/// gone, or its pid now names another process) are logged and dropped; their pids are never
/// signalled.
fn survivor(group_id: &GroupId, process: usize, file: RunFile) -> Option<(OwnedFd, RunFile)> {
    if file.group_id != group_id.as_str() || file.process != process {
        tracing::warn!(%group_id, process, recorded = ?(&file.group_id, file.process), "runtime file of another process: ignored");
        return None;
    }
    let pid = i32::try_from(file.pid).ok().and_then(Pid::from_raw)?;
    // The pidfd first, then the identity: if the pid was reused before the pidfd was opened, the
    // identity check sees the new process and rejects it; after, the pidfd keeps naming ours.
    let pidfd = match rustix::process::pidfd_open(pid, PidfdFlags::NONBLOCK) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::info!(%group_id, process, pid = file.pid, error = %e, "stale runtime file: its process is gone");
            return None;
        }
    };
    match file.identify() {
        Identity::Same => Some((pidfd, file)),
        Identity::Gone => {
            tracing::info!(%group_id, process, pid = file.pid, "stale runtime file: its process is gone");
            None
        }
        Identity::Other(why) => {
            tracing::warn!(%group_id, process, pid = file.pid, %why, "stale runtime file: its pid belongs to another process now");
            None
        }
    }
}

/// The runtime file of process `index` of `spec` (a standby's is its own).
fn runfile_of(dir: &DeploymentDir, spec: &LaunchSpec, index: usize) -> PathBuf {
    match spec.standby {
        Some(s) => dir.standby_runfile(s.process, s.replica),
        None => dir.runfile(index),
    }
}

/// The runtime file of the version process that `spec`'s process may become: a standby's version's
/// process it stands by for (see [`promoted`]); none for a version's or archiver's process.
fn promotion_of(dir: &DeploymentDir, spec: &LaunchSpec) -> Option<PathBuf> {
    spec.standby.map(|s| dir.runfile(s.process))
}

/// The log `spec`'s processes append to (a standby's is its own).
fn log_of(dir: &DeploymentDir, spec: &LaunchSpec) -> PathBuf {
    match spec.standby {
        Some(s) => dir.standby_log(s.process, s.replica),
        None => dir.log(),
    }
}

/// Whether the process `file` records answers at its address as the process launched with its
/// launch id (the request also renews its lease).
async fn verify(http: &reqwest::Client, url: &str, file: &RunFile) -> Result<(), Unverified> {
    let resp = http
        .get(format!("{url}/v1/status"))
        .query(&[("launch_id", &file.launch_id)])
        .send()
        .await
        .map_err(|error| Unverified::NoAnswer { url: url.to_owned(), error })?;
    let status: RunStatus = resp.json().await.map_err(|error| Unverified::BadAnswer { url: url.to_owned(), error })?;
    if status.launch_id.as_deref() != Some(file.launch_id.as_str()) || status.pid != Some(file.pid) {
        return Err(Unverified::Other {
            url: url.to_owned(),
            launch_id: status.launch_id,
            pid: status.pid,
            expected_launch_id: file.launch_id.clone(),
            expected_pid: file.pid,
        });
    }
    Ok(())
}

impl ChildLauncher {
    /// The command line of process `index` of `spec`.
    fn command(
        &self,
        spec: &LaunchSpec,
        index: usize,
        hostfile: &Path,
        runfile: &Path,
        launch_id: &str,
    ) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&spec.program);
        if let Some(a) = &spec.archiver {
            self.archiver_command(&mut cmd, a, runfile, launch_id);
            return cmd;
        }
        if let Some(s) = &spec.standby {
            self.standby_command(&mut cmd, spec, s, runfile, launch_id);
            return cmd;
        }
        cmd.arg("run")
            .arg("--topology")
            .arg(&spec.topology)
            .args(["--version", &spec.version.to_string()])
            .args(["--workers", &spec.workers.to_string()])
            .arg("--checkpoint-dir")
            .arg(self.state.checkpoints())
            .args(["--start-from", &spec.start_from.to_string()])
            .args(["--launch-id", launch_id])
            .arg("--runtime-file")
            .arg(runfile)
            .args(["--adopt-timeout", &humantime::format_duration(self.adopt_timeout).to_string()]);
        if spec.standbys > 0 {
            cmd.args(["--standbys", &spec.standbys.to_string()]);
        }
        if let Some(b) = &spec.backfill {
            cmd.args(["--backfill", &b.archive]);
            if let Some(since) = b.since_ms {
                cmd.args(["--backfill-since", &since.to_string()]);
            }
        }
        if spec.processes > 1 {
            // Each process listens on the HTTP address the hostfile gives it.
            cmd.args(["--processes", &spec.processes.to_string(), "--process", &index.to_string()])
                .arg("--hostfile")
                .arg(hostfile);
        } else {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        self.server_wide(&mut cmd);
        cmd
    }

    /// What every version and standby process takes from the server: its log format, brokers and
    /// CQL contact points.
    fn server_wide(&self, cmd: &mut tokio::process::Command) {
        if self.log_json {
            cmd.arg("--log-json");
        }
        if let Some(b) = &self.brokers {
            cmd.args(["--brokers", b]);
        }
        if let Some(c) = &self.cql {
            cmd.args(["--cql", c]);
        }
    }
}

impl ChildLauncher {
    /// The command line of a standby: `squall standby` for process `s.process` of `spec`'s version,
    /// serving on a port of its own choosing, with a runtime file and a lease like a version process.
    fn standby_command(
        &self,
        cmd: &mut tokio::process::Command,
        spec: &LaunchSpec,
        s: &StandbyOf,
        runfile: &Path,
        launch_id: &str,
    ) {
        cmd.arg("standby")
            .arg("--topology")
            .arg(&spec.topology)
            .args(["--version", &spec.version.to_string()])
            .args(["--workers", &spec.workers.to_string()])
            .args(["--process", &s.process.to_string(), "--processes", &s.processes.to_string()])
            .arg("--checkpoint-dir")
            .arg(self.state.checkpoints())
            .args(["--launch-id", launch_id])
            .arg("--runtime-file")
            .arg(runfile)
            .args(["--adopt-timeout", &humantime::format_duration(self.adopt_timeout).to_string()])
            .args(["--listen", "127.0.0.1:0"]);
        self.server_wide(cmd);
    }

    /// The command line of archiver `a`: `squall archive`, serving its status on a port of its
    /// own choosing, with the same runtime file and lease as a version process.
    fn archiver_command(
        &self,
        cmd: &mut tokio::process::Command,
        a: &ArchiveDeployment,
        runfile: &Path,
        launch_id: &str,
    ) {
        cmd.arg("archive")
            .args(["--url", &a.url, "--group", a.group_id.as_str()])
            .args(["--topics", &a.topics.join(",")])
            .args(["--launch-id", launch_id])
            .arg("--runtime-file")
            .arg(runfile)
            .args(["--adopt-timeout", &humantime::format_duration(self.adopt_timeout).to_string()])
            .args(["--listen", "127.0.0.1:0"]);
        if let Some(n) = a.rows_per_file {
            cmd.args(["--rows-per-file", &n.to_string()]);
        }
        if let Some(age) = &a.max_file_age {
            cmd.args(["--max-file-age", age]);
        }
        if let Some(b) = &self.brokers {
            cmd.args(["--brokers", b]);
        }
        if self.log_json {
            cmd.arg("--log-json");
        }
    }
}

/// A process being watched: a child of this server, or a process adopted through its pidfd.
enum Watched {
    Child(tokio::process::Child),
    Pidfd(AsyncFd<OwnedFd>),
}

impl Watched {
    /// Waits until the process has exited; how, as far as this server can tell.
    async fn exited(&mut self) -> String {
        match self {
            Watched::Child(child) => child.wait().await.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
            // A pidfd turns readable when its process exits; only its parent learns the status.
            Watched::Pidfd(fd) => match fd.readable().await {
                Ok(_) => "exit status unknown to a server that is not its parent".into(),
                Err(e) => format!("cannot watch it any more: {e}"),
            },
        }
    }

    /// Whether the process still runs, as far as can be told without waiting.
    fn running(&mut self) -> bool {
        match self {
            Watched::Child(child) => matches!(child.try_wait(), Ok(None)),
            Watched::Pidfd(fd) => fd.readable().now_or_never().is_none(),
        }
    }

    /// Stops watching the process and leaves it running; a child is still reaped when it exits.
    fn let_go(self) {
        if let Watched::Child(mut child) = self {
            tokio::spawn(async move {
                let _ = child.wait().await;
            });
        }
    }
}

/// How a watched process is known: its index in its run, its runtime file, its log, and the
/// runtime file of the version process it may become (a standby's).
struct Watching {
    index: usize,
    runfile: PathBuf,
    log: PathBuf,
    promotion: Option<PathBuf>,
}

/// A handle to the running process `file` records, which `pidfd` names: watched (and signalled)
/// through the pidfd, as this server is not its parent or does not watch it as its child.
fn adopt(pidfd: OwnedFd, file: &RunFile, watching: Watching) -> std::io::Result<ProcessHandle> {
    // `AsyncFd::new` is deprecated because a `T` could close or swap its descriptor while
    // registered (tokio#8587); an `OwnedFd` moved into it cannot, and the safe replacement,
    // `AsyncFd::register`, is `unsafe` to call.
    #[allow(deprecated)]
    let watched = Watched::Pidfd(AsyncFd::new(pidfd)?);
    let (handle, side) = ProcessHandle::new(Origin::Adopted { pid: file.pid }, file.launch_id.clone());
    let Watching { index, runfile, log, promotion } = watching;
    tokio::spawn(watch(watched, index, runfile, file.launch_id.clone(), log, promotion, side));
    Ok(handle)
}

/// What signals the process: its pid while it is a child that has not been reaped (so the pid
/// cannot have been reused), else its pidfd.
enum Signaller {
    Pid(Option<u32>),
    Pidfd(OwnedFd),
}

impl Signaller {
    fn of(watched: &Watched) -> Option<Signaller> {
        match watched {
            Watched::Child(child) => Some(Signaller::Pid(child.id())),
            Watched::Pidfd(fd) => fd.get_ref().try_clone().ok().map(Signaller::Pidfd),
        }
    }

    fn send(&self, s: Signal) {
        let sig = match s {
            Signal::Terminate => UnixSignal::TERM,
            Signal::Kill => UnixSignal::KILL,
        };
        let _ = match self {
            Signaller::Pid(pid) => match pid.and_then(|p| i32::try_from(p).ok()).and_then(Pid::from_raw) {
                Some(pid) => rustix::process::kill_process(pid, sig),
                None => Ok(()),
            },
            Signaller::Pidfd(fd) => rustix::process::pidfd_send_signal(fd, sig),
        };
    }
}

/// Watches process `index`: reports its readiness (its runtime file names its address) and its
/// exit, and signals it as asked. When the handle is dropped the process is left running (a
/// child is still reaped when it exits).
///
/// A standby is given `promotion`, the runtime file of the version process it stands by for:
/// once that file records this very process ([`promoted`]) while it runs, the standby took over.
/// Then it is reported `Exited` (its supervisor starts a fresh standby) and let go, never
/// signalled again by this watcher: the version's supervisor watches it now.
async fn watch(
    mut watched: Watched,
    index: usize,
    runfile: PathBuf,
    launch_id: String,
    log_path: PathBuf,
    promotion: Option<PathBuf>,
    side: ProcessSide,
) {
    let ProcessSide { events, mut signals } = side;
    let Some(signaller) = Signaller::of(&watched) else {
        let _ = events.send(ProcessEvent::Exited(format!("process {index}: cannot signal it")));
        return;
    };
    let ready = ready(&runfile, &launch_id);
    tokio::pin!(ready);
    // Its own record, once it serves (a standby takes over only then).
    let mut record: Option<RunFile> = None;
    let mut poll = tokio::time::interval(PROMOTION_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut announced, mut detached, mut terminated) = (false, false, false);
    let end = loop {
        tokio::select! {
            // Its exit first: a process that exited is reported exited, never taken over.
            biased;
            status = watched.exited() => break End::Exited(status),
            (url, file) = &mut ready, if !announced => {
                announced = true;
                record = Some(file);
                let _ = events.send(ProcessEvent::Ready(url));
            }
            signal = signals.recv(), if !detached => match signal {
                Some(s) => {
                    terminated |= s == Signal::Terminate;
                    signaller.send(s);
                }
                // Nobody supervises it any more: leave it running for a later server.
                None => detached = true,
            },
            _ = poll.tick(), if record.is_some() && promotion.is_some() => {
                if let (Some(me), Some(path)) = (&record, &promotion)
                    && let Ok(Some(version)) = RunFile::read(path)
                    && promoted(&version, me)
                {
                    break End::TookOver { pid: me.pid, process: version.process };
                }
            }
        }
    };
    let status = match end {
        End::TookOver { pid, process } if watched.running() => {
            tracing::info!(pid, process, "a standby took over as a version process: no longer watched as a standby");
            let why = format!("standby (pid {pid}) took over as process {process} of the version");
            // Routing keeps its address until the version's supervisor, which adopts it, reports it
            // serving (`Control::observe_standby`).
            let _ = events.send(ProcessEvent::TookOver(why));
            watched.let_go();
            return;
        }
        // It exited meanwhile: reported as any exit.
        End::TookOver { .. } => watched.exited().await,
        End::Exited(status) => status,
    };
    if terminated && let Ok(mut log) = OpenOptions::new().append(true).open(&log_path) {
        let _ = writeln!(log, "=== squall server: process {index} stopped ({status}) at {} ms", now_ms());
    }
    let why = format!("process {index} exited ({status}); log tail:\n{}", tail(&log_path, 8));
    let _ = events.send(ProcessEvent::Exited(why));
}

/// The address of the process launched as `launch_id`, once its runtime file names it, and the
/// file.
async fn ready(runfile: &Path, launch_id: &str) -> (String, RunFile) {
    let mut poll = tokio::time::interval(READY_POLL);
    loop {
        poll.tick().await;
        if let Ok(Some(file)) = RunFile::read(runfile)
            && file.launch_id == launch_id
            && let Some(url) = file.url.clone()
        {
            return (url, file);
        }
    }
}

/// Why [`watch`] stopped watching for events.
enum End {
    /// The process exited, so.
    Exited(String),
    /// The standby (pid `pid`) took over as process `process` of its version.
    TookOver { pid: u32, process: usize },
}

/// Picks `n` free loopback ports (for timely's cluster addresses and the processes' HTTP).
fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let listeners: Vec<std::net::TcpListener> =
        (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0")).collect::<Result<_, _>>()?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::version::runfile::start_time;

    /// A scratch directory of this test process.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("squall-child-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A stand-in for a standby: a shell that runs until its stdin closes, and the runtime file it
    /// would write once it serves.
    fn standby(launch_id: &str) -> (tokio::process::Child, RunFile) {
        let child =
            tokio::process::Command::new("sh").args(["-c", "read x; :"]).stdin(Stdio::piped()).spawn().expect("sh");
        let pid = child.id().unwrap();
        let file = RunFile {
            launch_id: launch_id.into(),
            pid,
            start_time: start_time(pid).unwrap(),
            url: Some("http://127.0.0.1:9".into()),
            ..RunFile::of_this_process("p-v1", 0, launch_id).unwrap()
        };
        (child, file)
    }

    async fn next(handle: &mut ProcessHandle) -> ProcessEvent {
        tokio::time::timeout(Duration::from_secs(10), handle.next_event()).await.expect("an event in time")
    }

    /// A shell standing in for the standby launched as `launch_id` (its command line has
    /// `--launch-id <launch_id>`), and its runtime file, serving at `url`, once its identity is
    /// readable.
    async fn identified_standby(launch_id: &str, url: String) -> (tokio::process::Child, RunFile) {
        let child = tokio::process::Command::new("sh")
            .args(["-c", "read x; :", "sh", "--launch-id", launch_id])
            .stdin(Stdio::piped())
            .spawn()
            .expect("sh");
        let pid = child.id().unwrap();
        let file = RunFile {
            pid,
            start_time: start_time(pid).unwrap(),
            url: Some(url),
            ..RunFile::of_this_process("p-v1", 0, launch_id).unwrap()
        };
        // The kernel fills in a new command line a moment after `spawn` returns.
        let deadline = Instant::now() + Duration::from_secs(10);
        while file.identify() != Identity::Same {
            assert!(Instant::now() < deadline, "{:?}", file.identify());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (child, file)
    }

    /// A standby's HTTP side that takes over as asked (writing the version's runtime file as the
    /// process `me`), and serves `/v1/status` as whoever its runtime file says; the take-over
    /// requests it received.
    async fn taking_over(me: RunFile) -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
        use axum::extract::State;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let asked = Arc::new(Mutex::new(Vec::new()));
        let state = (Arc::new(Mutex::new(RunFile { url: Some(url.clone()), ..me })), Arc::clone(&asked));
        type Shared = (Arc<Mutex<RunFile>>, Arc<Mutex<Vec<serde_json::Value>>>);
        let router = axum::Router::new()
            .route(
                "/v1/take-over",
                axum::routing::post(
                    |State((me, asked)): State<Shared>, body: axum::Json<serde_json::Value>| async move {
                        asked.lock().unwrap().push(body.0.clone());
                        let me = me.lock().unwrap();
                        me.write(Path::new(body["runtime_file"].as_str().unwrap())).unwrap();
                        axum::Json(serde_json::json!({ "url": me.url }))
                    },
                ),
            )
            .route(
                "/v1/status",
                axum::routing::get(|State((me, _)): State<Shared>| async move {
                    let me = me.lock().unwrap();
                    axum::Json(RunStatus {
                        launch_id: Some(me.launch_id.clone()),
                        pid: Some(me.pid),
                        ..Default::default()
                    })
                }),
            )
            .with_state(state);
        tokio::spawn(crate::version::http::serve(listener, router, std::future::pending()));
        (url, asked)
    }

    /// A standby's HTTP side that answers every request with `status`.
    async fn answering(status: u16) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let status = axum::http::StatusCode::from_u16(status).unwrap();
        let router = axum::Router::new().fallback(move || async move { (status, "not caught up") });
        tokio::spawn(crate::version::http::serve(listener, router, std::future::pending()));
        url
    }

    /// A standby's HTTP side that hangs up on every request without answering.
    async fn hanging_up() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 4096];
                let _ = tokio::io::AsyncReadExt::read(&mut conn, &mut buf).await;
            }
        });
        url
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_first_standby_that_can_takes_over_and_is_adopted_as_process_0() {
        let state = StateDir::new(scratch("take-over"));
        let launcher = ChildLauncher::new(state.clone(), None, None, false, Duration::from_secs(60)).unwrap();
        let spec = LaunchSpec {
            group_id: "p-v1".parse().unwrap(),
            program: "/nonexistent/squall".into(),
            topology: "/nonexistent/topology.toml".into(),
            version: 1,
            workers: 1,
            processes: 1,
            start_from: Default::default(),
            backfill: None,
            archiver: None,
            standby: None,
            standbys: 4,
        };
        let dir = state.deployment(&spec.group_id);
        std::fs::create_dir_all(dir.path()).unwrap();
        // Process 0 died and left its runtime file.
        let dead = RunFile { pid: 4_194_305 + 7, ..RunFile::of_this_process("p-v1", 0, "0000dead00000000").unwrap() };
        dead.write(&dir.runfile(0)).unwrap();
        // Replica 0 is not caught up, replica 1 hangs up (it may be taking over: it is killed),
        // replica 2 takes over, replica 3 is never asked.
        let (mut refusing, refusing_file) = identified_standby("0000standby0000", answering(409).await).await;
        let (mut hanging, hanging_file) = identified_standby("0000standby0001", hanging_up().await).await;
        let (mut taking, taking_file) = identified_standby("0000standby0002", String::new()).await;
        let (url, asked) = taking_over(taking_file.clone()).await;
        let taking_file = RunFile { url: Some(url.clone()), ..taking_file };
        let (mut unasked, unasked_file) = identified_standby("0000standby0003", answering(500).await).await;
        for (replica, f) in [&refusing_file, &hanging_file, &taking_file, &unasked_file].into_iter().enumerate() {
            f.write(&dir.standby_runfile(0, replica)).unwrap();
        }

        let mut handles = launcher.take_over(&spec).await.expect("a standby took over");
        let asked = asked.lock().unwrap().clone();
        assert_eq!(
            asked,
            [serde_json::json!({
                "launch_id": "0000standby0002",
                "runtime_file": dir.runfile(0),
            })]
        );
        let file = RunFile::read(&dir.runfile(0)).unwrap().unwrap();
        assert_eq!((file.pid, &file.launch_id), (taking_file.pid, &taking_file.launch_id));
        assert_eq!(handles[0].launch_id, taking_file.launch_id, "it keeps the launch id on its command line");
        assert_eq!(handles[0].origin, Origin::Adopted { pid: taking_file.pid });
        let mut handle = handles.pop().unwrap();
        assert_eq!(next(&mut handle).await, ProcessEvent::Ready(url));
        // The one that hung up was killed; the others run on as standbys.
        let hung = hanging.wait().await.unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&hung), Some(9), "{hung}");
        assert_eq!(refusing.try_wait().unwrap(), None);
        assert_eq!(unasked.try_wait().unwrap(), None);
        // The adopted process is signalled through its pidfd.
        handle.signal(Signal::Kill);
        assert!(handle.exited().await.starts_with("process 0 exited"));
        let killed = taking.wait().await.unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&killed), Some(9), "{killed}");
        for mut c in [refusing, unasked] {
            drop(c.stdin.take());
            c.wait().await.unwrap();
        }

        // With process 0's runtime file naming a live process, no standby is asked.
        let (mut running, running_file) = identified_standby("0000running0000", String::new()).await;
        running_file.write(&dir.runfile(0)).unwrap();
        assert!(launcher.take_over(&spec).await.is_none());
        assert!(dir.runfile(0).exists(), "a live process's file stays");
        drop(running.stdin.take());
        running.wait().await.unwrap();
        std::fs::remove_dir_all(state.path()).unwrap();
    }

    #[test]
    fn the_version_file_names_a_standby_that_took_over_by_pid_start_time_and_boot() {
        let standby = RunFile::of_this_process("p-v1", 0, "aaaa").unwrap();
        let version = RunFile { launch_id: "bbbb".into(), url: Some("http://127.0.0.1:1".into()), ..standby.clone() };
        assert!(promoted(&version, &standby), "another launch id, the same process");
        // A stale file whose pid the kernel has since given to the standby.
        assert!(!promoted(&RunFile { start_time: standby.start_time + 1, ..version.clone() }, &standby));
        assert!(!promoted(&RunFile { pid: standby.pid + 1, ..version.clone() }, &standby));
        assert!(!promoted(&RunFile { boot_id: "another-boot".into(), ..version }, &standby));
    }

    #[tokio::test]
    async fn a_standby_that_took_over_is_let_go_unsignalled_and_still_reaped() {
        let dir = scratch("took-over");
        let (own, version) = (dir.join("standby-0-0.json"), dir.join("process-0.json"));
        let (mut child, file) = standby("0000standby0000");
        let stdin = child.stdin.take();
        file.write(&own).unwrap();
        let (mut handle, side) = ProcessHandle::new(Origin::Spawned { pid: Some(file.pid) }, file.launch_id.clone());
        let watched = Watched::Child(child);
        tokio::spawn(watch(watched, 0, own, file.launch_id.clone(), dir.join("log"), Some(version.clone()), side));
        assert_eq!(next(&mut handle).await, ProcessEvent::Ready("http://127.0.0.1:9".into()));
        // A stale version file (another process, its pid) changes nothing.
        RunFile { pid: file.pid + 1, ..file.clone() }.write(&version).unwrap();
        assert!(tokio::time::timeout(PROMOTION_POLL * 3, handle.next_event()).await.is_err());
        RunFile { launch_id: "0000version00000".into(), ..file.clone() }.write(&version).unwrap();
        let why = format!("standby (pid {}) took over as process 0 of the version", file.pid);
        assert_eq!(next(&mut handle).await, ProcessEvent::TookOver(why));
        // No longer signalled by its standby's supervisor.
        handle.signal(Signal::Kill);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(start_time(file.pid).unwrap(), file.start_time, "it runs on");
        // When it exits, it is reaped (no zombie left).
        drop(stdin);
        let deadline = Instant::now() + Duration::from_secs(10);
        while start_time(file.pid).is_ok() {
            assert!(Instant::now() < deadline, "pid {} was not reaped", file.pid);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_standby_that_exits_is_reported_exited_even_when_the_version_file_names_it() {
        let dir = scratch("exited");
        let (own, version) = (dir.join("standby-0-0.json"), dir.join("process-0.json"));
        let (mut child, file) = standby("0000standby0001");
        file.write(&own).unwrap();
        RunFile { launch_id: "0000version00001".into(), ..file.clone() }.write(&version).unwrap();
        // It has exited (a zombie, not reaped yet) before its watcher looks at anything.
        drop(child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(format!("/proc/{}/stat", file.pid)).unwrap().contains(") Z ") {
            assert!(Instant::now() < deadline, "pid {} did not exit", file.pid);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (mut handle, side) = ProcessHandle::new(Origin::Spawned { pid: Some(file.pid) }, file.launch_id.clone());
        tokio::spawn(watch(
            Watched::Child(child),
            0,
            own,
            file.launch_id.clone(),
            dir.join("log"),
            Some(version),
            side,
        ));
        let why = handle.exited().await;
        assert!(why.starts_with("process 0 exited (exit status: 0)"), "{why}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
