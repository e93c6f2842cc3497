//! The server's [`Launcher`]: each process of a version is a `squall run` child of the server,
//! on an HTTP port of its own choosing (announced with the [`crate::ready`] line on stdout), its
//! stdout and stderr appended to the deployment's log.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::AsyncBufReadExt;

use super::launcher::{LaunchSpec, Launcher, Origin, ProcessEvent, ProcessHandle, ProcessSide, Signal, launch_id};
use super::registry::now_ms;
use super::statedir::{StateDir, tail};

/// Starts versions as `squall run` children of this process.
#[derive(Clone, Debug)]
pub struct ChildLauncher {
    /// The server's state directory (logs, hostfiles, checkpoints).
    pub state: StateDir,
    /// Kafka brokers for every deployment, if the server was given them.
    pub brokers: Option<String>,
    /// CQL contact points for every deployment, if the server was given them.
    pub cql: Option<String>,
    /// Whether the children log JSON lines.
    pub log_json: bool,
}

impl Launcher for ChildLauncher {
    fn start(&self, spec: &LaunchSpec) -> Result<Vec<ProcessHandle>, String> {
        let dir = self.state.deployment(&spec.group_id);
        let log_path = dir.log();
        let open = || OpenOptions::new().create(true).append(true).open(&log_path);
        let mut log = open().map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
        let _ = writeln!(
            log,
            "=== squall server: starting {} ({} process(es)) at {} ms",
            spec.group_id,
            spec.processes,
            now_ms()
        );
        let hostfile = dir.hostfile();
        if spec.processes > 1 {
            let ports = free_ports(spec.processes).map_err(|e| format!("no free ports for the cluster: {e}"))?;
            let hosts: String = ports.iter().map(|p| format!("127.0.0.1:{p}\n")).collect();
            std::fs::write(&hostfile, hosts).map_err(|e| format!("cannot write {}: {e}", hostfile.display()))?;
        }
        // Handles dropped on an early return kill the processes already started.
        let mut handles = Vec::with_capacity(spec.processes);
        for index in 0..spec.processes {
            let id = launch_id();
            let mut cmd = self.command(spec, index, &hostfile, &id);
            let stderr = log.try_clone().map_err(|e| format!("cannot share {}: {e}", log_path.display()))?;
            cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::from(stderr)).kill_on_drop(true);
            let child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", spec.program.display()))?;
            let (handle, side) = ProcessHandle::new(Origin::Spawned { pid: child.id() }, id);
            let log = open().map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
            watch(child, index, log, log_path.clone(), side);
            handles.push(handle);
        }
        Ok(handles)
    }
}

impl ChildLauncher {
    /// The command line of process `index` of `spec`.
    fn command(&self, spec: &LaunchSpec, index: usize, hostfile: &Path, launch_id: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&spec.program);
        cmd.arg("run")
            .arg("--topology")
            .arg(&spec.topology)
            .args(["--version", &spec.version.to_string()])
            .args(["--workers", &spec.workers.to_string()])
            .args(["--listen", "127.0.0.1:0"])
            .arg("--checkpoint-dir")
            .arg(self.state.checkpoints())
            .args(["--start-from", &spec.start_from.to_string()])
            .args(["--launch-id", launch_id])
            .arg("--exit-with-parent")
            .env("SQUALL_PARENT_PID", std::process::id().to_string());
        if spec.processes > 1 {
            cmd.args(["--processes", &spec.processes.to_string(), "--process", &index.to_string()])
                .arg("--hostfile")
                .arg(hostfile);
        }
        if self.log_json {
            cmd.arg("--log-json");
        }
        if let Some(b) = &self.brokers {
            cmd.args(["--brokers", b]);
        }
        if let Some(c) = &self.cql {
            cmd.args(["--cql", c]);
        }
        cmd
    }
}

/// Watches child `index`: copies its stdout to `log`, reports its readiness line and its exit,
/// and signals it as asked. Dropping the handle kills it.
fn watch(mut child: tokio::process::Child, index: usize, mut log: std::fs::File, log_path: PathBuf, side: ProcessSide) {
    let ProcessSide { events, mut signals } = side;
    if let Some(out) = child.stdout.take() {
        let events = events.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = writeln!(log, "{line}");
                if let Some(url) = crate::ready::url(&line) {
                    let _ = events.send(ProcessEvent::Ready(url.to_owned()));
                }
            }
        });
    }
    tokio::spawn(async move {
        let mut terminated = false;
        let status = loop {
            tokio::select! {
                status = child.wait() => break status,
                signal = signals.recv() => match signal {
                    Some(Signal::Terminate) => {
                        terminated = true;
                        if let Some(pid) = child.id() {
                            let _ = nix::sys::signal::kill(
                                nix::unistd::Pid::from_raw(pid as i32),
                                nix::sys::signal::Signal::SIGTERM,
                            );
                        }
                    }
                    Some(Signal::Kill) => {
                        let _ = child.start_kill();
                    }
                    // The handle is gone: nobody supervises this process any more.
                    None => {
                        let _ = child.start_kill();
                        break child.wait().await;
                    }
                }
            }
        };
        let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
        if terminated && let Ok(mut log) = OpenOptions::new().append(true).open(&log_path) {
            let _ = writeln!(log, "=== squall server: process {index} stopped ({status}) at {} ms", now_ms());
        }
        let why = format!("process {index} exited ({status}); log tail:\n{}", tail(&log_path, 8));
        let _ = events.send(ProcessEvent::Exited(why));
    });
}

/// Picks `n` free loopback ports (for timely's cluster addresses).
fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let listeners: Vec<std::net::TcpListener> =
        (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0")).collect::<Result<_, _>>()?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}
