//! CPU accounting and placement: CPU time of a process tree from `/proc`, and pinning processes
//! to CPUs with `taskset`.

use std::process::Command;

use crate::DevEnv;

/// CPU-seconds (user + system, all threads) used so far by process `pid` and its live descendants,
/// from `/proc`.
pub fn tree_cpu_seconds(pid: u32) -> f64 {
    let mut children: std::collections::HashMap<u32, Vec<u32>> = std::collections::HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(p) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
        // After the parenthesised command name: state, then the parent's id.
        let ppid = stat.rfind(')').and_then(|i| stat[i + 2..].split_whitespace().nth(1)?.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            children.entry(ppid).or_default().push(p);
        }
    }
    let (mut total, mut todo) = (0.0, vec![pid]);
    while let Some(p) = todo.pop() {
        total += crate::engine::cpu_seconds_of(&p.to_string());
        todo.extend(children.get(&p).into_iter().flatten());
    }
    total
}

/// Pins every thread of process `pid` to `cpus` (a `taskset -c` list, e.g. `0` or `0-1`).
pub fn pin(pid: u32, cpus: &str) -> Result<(), String> {
    let out = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .output()
        .map_err(|e| format!("taskset: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("taskset -a -p -c {cpus} {pid}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// The id of the process (not this one) whose command line contains every one of `needles`.
pub fn pid_with_args(needles: &[&str]) -> Option<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc").into_iter().flatten().flatten().find_map(|entry| {
        let pid = entry.file_name().to_str()?.parse::<u32>().ok().filter(|p| *p != me)?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        needles.iter().all(|n| cmdline.contains(n)).then_some(pid)
    })
}

/// The broker and CQL dev server (found by their command lines) and this process pinned to some
/// CPUs, until dropped; then all three may use every online CPU again.
pub struct Pinned {
    pids: Vec<u32>,
    online: String,
}

impl Pinned {
    /// Pins the dev broker and the CQL dev server of `env` (if running here) and this process (the
    /// load generator and prober) to `cpus`.
    pub fn new(env: &DevEnv, cpus: &str) -> Result<Self, String> {
        let DevEnv { brokers, cql } = env;
        let online = std::fs::read_to_string("/sys/devices/system/cpu/online")
            .map_err(|e| format!("/sys/devices/system/cpu/online: {e}"))?
            .trim()
            .to_owned();
        let broker = pid_with_args(&["--listener-url", &format!("tcp://{brokers}")])
            .ok_or_else(|| format!("no broker process with --listener-url tcp://{brokers} on this machine"))?;
        let mut pids = vec![broker, std::process::id()];
        pids.extend(pid_with_args(&["squall-cql-dev", cql]));
        let pinned = Pinned { pids, online };
        for pid in &pinned.pids {
            pin(*pid, cpus)?;
        }
        Ok(pinned)
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        for pid in &self.pids {
            if let Err(e) = pin(*pid, &self.online) {
                eprintln!("unpinning: {e}");
            }
        }
    }
}
