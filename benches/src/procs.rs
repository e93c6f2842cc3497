//! Child processes of the harnesses: a running `squall`, `squall-gen`, and peers that mark their
//! first and last record.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::DevEnv;
use crate::cpu::tree_cpu_seconds;
use crate::http_load::{http_get, metric};

/// A `squall run` child process.
pub struct Squall {
    child: Child,
    /// `host:port` of its HTTP server.
    pub addr: String,
    /// When it printed "serving on".
    pub serving_at: Instant,
    /// When it was spawned.
    pub spawned_at: Instant,
}

impl Squall {
    /// Writes a topology file for the topics (plus the TOML `extra`, e.g. an `[enrichment]`
    /// section) and starts `squall run` on it.
    pub fn start(bin_dir: &Path, name: &str, env: &DevEnv, topics: (&str, &str), workers: usize, extra: &str) -> Self {
        Self::start_on(bin_dir, name, env, topics, workers, extra, None)
    }

    /// As [`Squall::start`], on the CPUs `cpus` (a `taskset -c` list) when given.
    pub fn start_on(
        bin_dir: &Path,
        name: &str,
        env: &DevEnv,
        topics: (&str, &str),
        workers: usize,
        extra: &str,
        cpus: Option<&str>,
    ) -> Self {
        let DevEnv { brokers, cql } = env;
        let topo = std::env::temp_dir().join(format!("{name}.toml"));
        std::fs::write(
            &topo,
            format!(
                "name = \"{name}\"\nversion = 1\nattributes = \"personalization_v1\"\n[kafka]\nbrokers = \"{brokers}\"\n\
                 song_completions = \"{}\"\nad_impressions = \"{}\"\n[cql]\nnodes = \"{cql}\"\n[http]\nlisten = \"127.0.0.1:0\"\n{extra}",
                topics.0, topics.1
            ),
        )
        .expect("write topology");
        let spawned_at = Instant::now();
        let mut command = match cpus {
            // taskset execs squall: the child's pid is squall's.
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpus]).arg(bin_dir.join("squall"));
                c
            }
            None => Command::new(bin_dir.join("squall")),
        };
        let mut child = command
            .args(["run", "--topology"])
            .arg(&topo)
            .args(["--workers", &workers.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn squall");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let addr = loop {
            let line = lines.next().expect("squall exited before serving").expect("read stdout");
            if let Some((_, url)) = line.split_once("serving on ") {
                break url.trim().trim_start_matches("http://").to_owned();
            }
        };
        let serving_at = Instant::now();
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Squall { child, addr, serving_at, spawned_at }
    }

    /// Events applied plus resends dropped, from `/metrics`.
    pub fn processed(&self) -> f64 {
        match http_get(&self.addr, "/metrics") {
            Ok((200, text)) => {
                metric(&text, "squall_events_applied_total") + metric(&text, "squall_events_duplicate_total")
            }
            _ => 0.0,
        }
    }

    /// Records read from the topics so far, from `/metrics`.
    pub fn consumed(&self) -> f64 {
        match http_get(&self.addr, "/metrics") {
            Ok((200, text)) => metric(&text, "squall_events_consumed_total"),
            _ => 0.0,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The CPU time squall has used so far (all its threads).
    pub fn cpu_seconds(&self) -> f64 {
        crate::engine::cpu_seconds_of(&self.child.id().to_string())
    }

    /// Waits until `n` events are processed; the instant it saw them.
    pub fn wait_for(&self, n: f64, timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.processed() >= n {
                return Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Squall {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a `squall-gen` subcommand, panicking with its output on failure.
pub fn squall_gen(bin_dir: &Path, args: &[&str]) {
    let out = Command::new(bin_dir.join("squall-gen")).args(args).output().expect("spawn squall-gen");
    assert!(out.status.success(), "squall-gen {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A peer run as a child process that prints a marker line at its first record and another once it
/// has processed every event: when they came (from the spawn) and the CPU time of its process tree
/// then.
#[derive(Clone, Debug)]
pub struct Marked {
    /// Spawn -> first-record marker.
    pub seconds_to_first: f64,
    /// Spawn -> done marker.
    pub seconds: f64,
    /// CPU-seconds of the process tree at the first-record marker.
    pub cpu_s_to_first: f64,
    /// CPU-seconds of the process tree at the done marker.
    pub cpu_s: f64,
    /// Every line it printed on stdout.
    pub stdout: Vec<String>,
}

fn kill_group(pgid: u32) {
    let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pgid}")]).stderr(Stdio::null()).status();
}

/// Runs `command` in its own process group (stdout read here, stderr to `log`) until it prints a
/// line starting with `done`; then kills the group (`kill_after_done`) or waits for it to exit.
/// Gives up after `timeout`, killing the group.
pub fn run_marked(
    mut command: Command,
    first: &str,
    done: &str,
    timeout: Duration,
    kill_after_done: bool,
    log: &Path,
) -> Result<Marked, String> {
    use std::os::unix::process::CommandExt;
    let stderr = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let spawned_at = Instant::now();
    let mut child = command
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("spawn {command:?}: {e}"))?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel::<(String, Instant, f64)>();
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let markers = (first.to_owned(), done.to_owned());
    let reader = std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let at = Instant::now();
            // The CPU time is read at once for the two marker lines only (a /proc scan each).
            let marker = line.starts_with(&markers.0) || line.starts_with(&markers.1);
            let cpu = if marker { tree_cpu_seconds(pid) } else { 0.0 };
            if tx.send((line, at, cpu)).is_err() {
                break;
            }
        }
    });
    let deadline = spawned_at + timeout;
    let (mut to_first, mut to_done, mut lines) = (None, None, Vec::new());
    let failure = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((line, at, cpu)) => {
                if to_first.is_none() && line.starts_with(first) {
                    to_first = Some(((at - spawned_at).as_secs_f64(), cpu));
                }
                if to_done.is_none() && line.starts_with(done) {
                    to_done = Some(((at - spawned_at).as_secs_f64(), cpu));
                    if kill_after_done {
                        kill_group(pid);
                    }
                }
                lines.push(line);
            }
            // Stdout closed: the process has exited (or closed it).
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break None,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break Some(format!("no exit after {timeout:?}")),
        }
    };
    kill_group(pid);
    let status = child.wait();
    let _ = reader.join();
    let tail = || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    };
    match (to_first, to_done, failure) {
        (Some((seconds_to_first, cpu_s_to_first)), Some((seconds, cpu_s)), None) => {
            Ok(Marked { seconds_to_first, seconds, cpu_s_to_first, cpu_s, stdout: lines })
        }
        (Some((seconds_to_first, cpu_s_to_first)), Some((seconds, cpu_s)), Some(_)) if kill_after_done => {
            Ok(Marked { seconds_to_first, seconds, cpu_s_to_first, cpu_s, stdout: lines })
        }
        (_, _, failure) => Err(format!(
            "{command:?}: {} (status {status:?}); stdout: {lines:?}; end of {}:\n{}",
            failure.as_deref().unwrap_or("exited before its done marker"),
            log.display(),
            tail()
        )),
    }
}

/// The directory of this executable (where cargo puts the other binaries).
pub fn bin_dir() -> PathBuf {
    std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)).unwrap_or_else(|| ".".into())
}
