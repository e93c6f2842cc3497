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

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures::future::BoxFuture;
use rustix::process::{Pid, PidfdFlags, Signal as UnixSignal};
use tokio::io::unix::AsyncFd;

use super::archives::ArchiveDeployment;
use super::launcher::{
    LaunchSpec, Launcher, Origin, ProcessEvent, ProcessHandle, ProcessSide, Signal, StandbyOf, Survivor, Unverified,
    launch_id,
};
use super::statedir::{DeploymentDir, StateDir, tail};
use crate::version::counters::RunStatus;
use crate::version::runfile::{Identity, RunFile};
use squall_feeds::now_ms;

/// How often a starting process's runtime file is read until it names the process's address.
const READY_POLL: Duration = Duration::from_millis(20);
/// How long a process found running has to answer `/v1/status` before it counts as unverified.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(5);

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
            tokio::spawn(watch(Watched::Child(child), index, runfile, id, log_path.clone(), side));
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
                let Some((pidfd, file)) = survivor(&spec, index, file) else { continue };
                let verified = match &file.url {
                    Some(url) => verify(&http, url, &file).await,
                    None => Ok(()), // still starting: its readiness will come through the file
                };
                let (handle, side) = ProcessHandle::new(Origin::Adopted { pid: file.pid }, file.launch_id.clone());
                // `AsyncFd::new` is deprecated because a `T` could close or swap its descriptor
                // while registered (tokio#8587); an `OwnedFd` moved into it cannot, and the safe
                // replacement, `AsyncFd::register`, is `unsafe` to call.
                #[allow(deprecated)]
                let watched = match AsyncFd::new(pidfd) {
                    Ok(fd) => Watched::Pidfd(fd),
                    Err(e) => {
                        tracing::warn!(group_id = %spec.group_id, error = %e, "cannot watch a pidfd");
                        continue;
                    }
                };
                tokio::spawn(watch(watched, index, path, file.launch_id.clone(), log_of(&dir, &spec), side));
                found.push(Survivor { index, handle, verified });
            }
            found
        })
    }
}

/// The process `file` records as process `index` of `spec`, with a pidfd for it, if it is still
/// the process that was launched. Stale records (the process is gone, or its pid now names
/// another process) are logged and dropped; their pids are never signalled.
fn survivor(spec: &LaunchSpec, index: usize, file: RunFile) -> Option<(OwnedFd, RunFile)> {
    let group_id = &spec.group_id;
    // A standby records the process whose users it holds.
    let process = spec.standby.map_or(index, |s| s.process);
    if file.group_id != group_id.as_str() || file.process != process {
        tracing::warn!(%group_id, index, recorded = ?(&file.group_id, file.process), "runtime file of another process: ignored");
        return None;
    }
    let pid = i32::try_from(file.pid).ok().and_then(Pid::from_raw)?;
    // The pidfd first, then the identity: if the pid was reused before the pidfd was opened, the
    // identity check sees the new process and rejects it; after, the pidfd keeps naming ours.
    let pidfd = match rustix::process::pidfd_open(pid, PidfdFlags::NONBLOCK) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::info!(%group_id, index, pid = file.pid, error = %e, "stale runtime file: its process is gone");
            return None;
        }
    };
    match file.identify() {
        Identity::Same => Some((pidfd, file)),
        Identity::Gone => {
            tracing::info!(%group_id, index, pid = file.pid, "stale runtime file: its process is gone");
            None
        }
        Identity::Other(why) => {
            tracing::warn!(%group_id, index, pid = file.pid, %why, "stale runtime file: its pid belongs to another process now");
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
async fn watch(
    mut watched: Watched,
    index: usize,
    runfile: PathBuf,
    launch_id: String,
    log_path: PathBuf,
    side: ProcessSide,
) {
    let ProcessSide { events, mut signals } = side;
    let Some(signaller) = Signaller::of(&watched) else {
        let _ = events.send(ProcessEvent::Exited(format!("process {index}: cannot signal it")));
        return;
    };
    let ready = ready(&runfile, &launch_id);
    tokio::pin!(ready);
    let (mut announced, mut detached, mut terminated) = (false, false, false);
    let status = loop {
        tokio::select! {
            status = watched.exited() => break status,
            url = &mut ready, if !announced => {
                announced = true;
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
        }
    };
    if terminated && let Ok(mut log) = OpenOptions::new().append(true).open(&log_path) {
        let _ = writeln!(log, "=== squall server: process {index} stopped ({status}) at {} ms", now_ms());
    }
    let why = format!("process {index} exited ({status}); log tail:\n{}", tail(&log_path, 8));
    let _ = events.send(ProcessEvent::Exited(why));
}

/// The address of the process launched as `launch_id`, once its runtime file names it.
async fn ready(runfile: &Path, launch_id: &str) -> String {
    let mut poll = tokio::time::interval(READY_POLL);
    loop {
        poll.tick().await;
        if let Ok(Some(RunFile { launch_id: id, url: Some(url), .. })) = RunFile::read(runfile)
            && id == launch_id
        {
            return url;
        }
    }
}

/// Picks `n` free loopback ports (for timely's cluster addresses and the processes' HTTP).
fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let listeners: Vec<std::net::TcpListener> =
        (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0")).collect::<Result<_, _>>()?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}
