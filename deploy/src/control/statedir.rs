//! The layout of the server's state directory: every path the control plane reads or writes.
//!
//! ```text
//! <state dir>/registry.json                      the registry (control/registry.rs)
//! <state dir>/token                              the bearer token, when none is configured
//! <state dir>/server.lock                        held (flock) by the server using the directory
//! <state dir>/checkpoints/<group id>/            checkpoints of every version (`--checkpoint-dir`)
//! <state dir>/binaries/<sha256>                  uploaded executables (`squall deploy --binary`)
//! <state dir>/deployments/<group id>/topology.toml   the file as deployed
//! <state dir>/deployments/<group id>/squall.log      its processes' stdout and stderr
//! <state dir>/deployments/<group id>/hosts.txt       its cluster's hostfile (processes > 1)
//! <state dir>/deployments/<group id>/process-<i>.json   process i's runtime file (crate::version::runfile)
//! ```

use std::path::{Path, PathBuf};

use crate::values::{BinaryHash, GroupId};

/// The server's state directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateDir(PathBuf);

impl StateDir {
    /// The state directory at `path`.
    pub fn new(path: impl Into<PathBuf>) -> StateDir {
        StateDir(path.into())
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The registry file.
    pub fn registry(&self) -> PathBuf {
        self.0.join("registry.json")
    }

    /// The bearer token file.
    pub fn token(&self) -> PathBuf {
        self.0.join("token")
    }

    /// The root of every version's checkpoints.
    pub fn checkpoints(&self) -> PathBuf {
        self.0.join("checkpoints")
    }

    /// Where uploaded executables are kept.
    pub fn binaries(&self) -> PathBuf {
        self.0.join("binaries")
    }

    /// The uploaded executable `hash` names.
    pub fn binary(&self, hash: &BinaryHash) -> PathBuf {
        self.binaries().join(hash.as_str())
    }

    /// The lock file a server holds while it uses the directory.
    pub fn lock_file(&self) -> PathBuf {
        self.0.join("server.lock")
    }

    /// Takes the directory for this server: fails if another server holds it. The lock lasts as
    /// long as the returned file is open (the kernel releases it when the server dies).
    pub fn lock(&self) -> std::io::Result<std::fs::File> {
        use std::io::{Read as _, Seek as _, Write as _};
        let path = self.lock_file();
        let mut file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        if let Err(e) = rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                format!("another squall server ({}) uses {}: {e}", holder.trim(), self.0.display()),
            ));
        }
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "pid {}", std::process::id())?;
        Ok(file)
    }

    /// The files of one deployment.
    pub fn deployment(&self, group_id: &GroupId) -> DeploymentDir {
        DeploymentDir(self.0.join("deployments").join(group_id.as_str()))
    }
}

/// The directory of one deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeploymentDir(PathBuf);

impl DeploymentDir {
    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The topology file as deployed.
    pub fn topology(&self) -> PathBuf {
        self.0.join("topology.toml")
    }

    /// Its processes' log.
    pub fn log(&self) -> PathBuf {
        self.0.join("squall.log")
    }

    /// Its cluster's hostfile.
    pub fn hostfile(&self) -> PathBuf {
        self.0.join("hosts.txt")
    }

    /// The runtime file of its process `index`.
    pub fn runfile(&self, index: usize) -> PathBuf {
        self.0.join(format!("process-{index}.json"))
    }

    /// The runtime file of standby `replica` of its process `process`.
    pub fn standby_runfile(&self, process: usize, replica: usize) -> PathBuf {
        self.0.join(format!("standby-{process}-{replica}.json"))
    }

    /// The log of standby `replica` of its process `process`.
    pub fn standby_log(&self, process: usize, replica: usize) -> PathBuf {
        self.0.join(format!("standby-{process}-{replica}.log"))
    }
}

/// The last `n` lines of a file (empty if it cannot be read).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_server_at_a_time_uses_a_state_directory() {
        let dir = StateDir::new(std::env::temp_dir().join(format!("squall-statedir-{}", std::process::id())));
        std::fs::create_dir_all(dir.path()).unwrap();
        let held = dir.lock().unwrap();
        let e = dir.lock().unwrap_err();
        assert!(e.to_string().contains(&format!("another squall server (pid {})", std::process::id())), "{e}");
        drop(held);
        drop(dir.lock().unwrap());
        std::fs::remove_dir_all(dir.path()).unwrap();
    }
}
