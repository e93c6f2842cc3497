//! The runtime file: how a version process started by a squall server tells that server, and any
//! server started after it, who it is and where it serves. [`RunFile::write`] (the process) is the
//! only writer and [`RunFile::read`] (the server) the only reader.
//!
//! The process writes the file when it starts (no address yet) and again once it serves HTTP, each
//! time atomically, and removes it when it exits cleanly. The file names the process by its pid,
//! its start time (in clock ticks after boot, as `/proc/<pid>/stat` has it) and the boot it
//! belongs to, so that a pid the kernel has since given to another process is told apart from the
//! process that wrote the file ([`RunFile::identify`]); its launch id is on its command line and on
//! its `/v1/status`.

use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::files::write_atomically;

/// What a version process records about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunFile {
    /// The version's consumer group id.
    pub group_id: String,
    /// The process's index in its version (0 for a single-process version).
    pub process: usize,
    /// The id the server started it with (`--launch-id`).
    pub launch_id: String,
    /// Its process id.
    pub pid: u32,
    /// When it started, in clock ticks after boot (field 22 of `/proc/<pid>/stat`).
    pub start_time: u64,
    /// The boot it started in (`/proc/sys/kernel/random/boot_id`).
    pub boot_id: String,
    /// Its HTTP address, once it serves.
    pub url: Option<String>,
}

/// Whether the process a [`RunFile`] names is still the one running under its pid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// The same process: same pid, start time and boot, and its command line has the launch id.
    Same,
    /// No process has that pid any more.
    Gone,
    /// The pid belongs to another process now (or the machine has rebooted); why.
    Other(String),
}

impl RunFile {
    /// The record of this process, not serving yet.
    pub fn of_this_process(group_id: &str, process: usize, launch_id: &str) -> io::Result<RunFile> {
        let pid = std::process::id();
        Ok(RunFile {
            group_id: group_id.to_owned(),
            process,
            launch_id: launch_id.to_owned(),
            pid,
            start_time: start_time(pid)?,
            boot_id: boot_id()?,
            url: None,
        })
    }

    /// Replaces the file at `path` with this record, atomically.
    pub fn write(&self, path: &Path) -> io::Result<()> {
        write_atomically(path, &serde_json::to_vec_pretty(self).map_err(io::Error::other)?)
    }

    /// The record at `path`; `None` if there is no file.
    pub fn read(path: &Path) -> io::Result<Option<RunFile>> {
        match std::fs::read(path) {
            Ok(bytes) => Self::parse(&bytes)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn parse(bytes: &[u8]) -> Result<RunFile, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Removes the file at `path` if it still records this process (a later run's file stays).
    pub fn remove(&self, path: &Path) -> io::Result<()> {
        match Self::read(path) {
            Ok(Some(f)) if f.launch_id == self.launch_id => std::fs::remove_file(path),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Whether the process this file names still runs under its pid.
    pub fn identify(&self) -> Identity {
        match boot_id() {
            Ok(b) if b == self.boot_id => {}
            Ok(b) => return Identity::Other(format!("written in boot {}, this is boot {b}", self.boot_id)),
            Err(e) => return Identity::Other(format!("cannot read the boot id: {e}")),
        }
        let started = match start_time(self.pid) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Identity::Gone,
            Err(e) => return Identity::Other(format!("cannot read /proc/{}/stat: {e}", self.pid)),
        };
        if started != self.start_time {
            return Identity::Other(format!(
                "pid {} started at tick {started}, the recorded process at tick {}",
                self.pid, self.start_time
            ));
        }
        match std::fs::read(format!("/proc/{}/cmdline", self.pid)) {
            Ok(cmdline) if has_launch_id(&cmdline, &self.launch_id) => Identity::Same,
            Ok(_) => Identity::Other(format!("pid {} was not started with --launch-id {}", self.pid, self.launch_id)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Identity::Gone,
            Err(e) => Identity::Other(format!("cannot read /proc/{}/cmdline: {e}", self.pid)),
        }
    }
}

/// Whether a NUL-separated command line has `--launch-id <id>`.
fn has_launch_id(cmdline: &[u8], id: &str) -> bool {
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.windows(2).any(|w| w[0] == b"--launch-id" && w[1] == id.as_bytes())
}

/// When process `pid` started, in clock ticks after boot; `NotFound` if there is no such process.
pub fn start_time(pid: u32) -> io::Result<u64> {
    parse_start_time(&std::fs::read_to_string(format!("/proc/{pid}/stat"))?)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("/proc/{pid}/stat has no start time")))
}

/// Field 22 of a `/proc/<pid>/stat` line. The command name (field 2) is in parentheses and may
/// hold spaces and parentheses itself, so fields are counted from the last `)`.
fn parse_start_time(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    // `rest` starts with field 3 (the state): field 22 is the 20th after the parenthesis.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether process `pid` is gone or on its way out: no such process, a zombie, or exiting (the
/// kernel's `PF_EXITING`, set as soon as a `kill -9` is acted on, while the process's memory is
/// still being freed and its sockets are still open).
pub fn exiting(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => parse_exiting(&stat).unwrap_or(false),
        Err(e) => e.kind() == io::ErrorKind::NotFound,
    }
}

/// `PF_EXITING` in `include/linux/sched.h`.
const PF_EXITING: u64 = 0x4;

/// Whether a `/proc/<pid>/stat` line says zombie, dead or exiting (field 3, the state, and field
/// 9, the flags).
fn parse_exiting(stat: &str) -> Option<bool> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    let flags: u64 = fields.nth(5)?.parse().ok()?;
    Some(matches!(state, "Z" | "X" | "x") || flags & PF_EXITING != 0)
}

fn boot_id() -> io::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_exiting_when_its_flags_or_state_say_so() {
        let line = |state: &str, flags: u64| format!("1234 (squall (x) y) {state} 1 1234 1234 0 -1 {flags} 5 0 0 0");
        assert_eq!(parse_exiting(&line("S", 0x400040)), Some(false));
        assert_eq!(parse_exiting(&line("R", 0x400044)), Some(true), "PF_EXITING");
        assert_eq!(parse_exiting(&line("Z", 0x400040)), Some(true), "a zombie");
        assert_eq!(parse_exiting("garbage"), None);
        assert!(!exiting(std::process::id()), "this test is not exiting");
        assert!(exiting(u32::MAX), "no such process");
    }

    fn file() -> RunFile {
        RunFile::of_this_process("p-v1", 0, "0123456789abcdef").expect("this process")
    }

    #[test]
    fn the_reader_reads_what_the_writer_writes() {
        let dir = std::env::temp_dir().join(format!("squall-runfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("process-0.json");
        assert_eq!(RunFile::read(&path).unwrap(), None, "no file yet");
        let mut f = file();
        f.write(&path).unwrap();
        assert_eq!(RunFile::read(&path).unwrap(), Some(f.clone()));
        f.url = Some("http://127.0.0.1:4321".into());
        f.write(&path).unwrap();
        assert_eq!(RunFile::read(&path).unwrap().and_then(|f| f.url), Some("http://127.0.0.1:4321".into()));
        // Another run's process does not remove this run's file.
        let other = RunFile { launch_id: "fedcba9876543210".into(), ..f.clone() };
        other.remove(&path).unwrap();
        assert!(path.exists());
        f.remove(&path).unwrap();
        assert!(!path.exists());
        f.remove(&path).unwrap();
        std::fs::write(&path, b"{\"pid\": ").unwrap();
        let e = RunFile::read(&path).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("process-0.json"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn start_times_are_read_past_odd_command_names() {
        let stat = "4242 (squall (v1) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 9 0 987654 1000 50";
        assert_eq!(parse_start_time(stat), Some(987_654));
        assert_eq!(parse_start_time("4242 (squall) S 1"), None);
        let me = start_time(std::process::id()).unwrap();
        assert!(me > 0);
        assert_eq!(start_time(std::process::id()).unwrap(), me, "stable");
    }

    #[test]
    fn a_recycled_pid_or_a_dead_process_is_not_the_one_recorded() {
        // This test process was not started with --launch-id.
        let me = file();
        assert!(matches!(me.identify(), Identity::Other(why) if why.contains("--launch-id")), "{:?}", me.identify());
        let earlier = RunFile { start_time: me.start_time - 1, ..me.clone() };
        assert!(matches!(earlier.identify(), Identity::Other(why) if why.contains("started at tick")));
        let rebooted = RunFile { boot_id: "another-boot".into(), ..me.clone() };
        assert!(matches!(rebooted.identify(), Identity::Other(why) if why.contains("boot")));
        // pid_max is at most 2^22: this pid is never in use.
        let gone = RunFile { pid: 4_194_305 + 7, ..me };
        assert_eq!(gone.identify(), Identity::Gone);
        assert!(has_launch_id(b"squall\0run\0--launch-id\0abc\0--workers\0two\0", "abc"));
        assert!(!has_launch_id(b"squall\0run\0--launch-id\0abcd\0", "abc"));
        assert!(!has_launch_id(b"squall\0abc\0--launch-id\0", "abc"));
    }

    #[test]
    fn the_process_that_wrote_the_file_is_the_same_until_it_exits() {
        // A shell whose own command line carries `--launch-id cafe`, standing in for a version.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read x; :", "sh", "--launch-id", "cafe"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let f = RunFile { launch_id: "cafe".into(), pid, start_time: start_time(pid).unwrap(), ..file() };
        // The kernel fills in a new command line a moment after `spawn` returns.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while f.identify() != Identity::Same && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(f.identify(), Identity::Same);
        assert!(matches!(RunFile { launch_id: "cafe0".into(), ..f.clone() }.identify(), Identity::Other(_)));
        drop(child.stdin.take());
        child.wait().unwrap();
        assert_eq!(f.identify(), Identity::Gone);
    }
}
