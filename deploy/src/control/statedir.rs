//! The layout of the server's state directory: every path the control plane reads or writes.
//!
//! ```text
//! <state dir>/registry.json                      the registry (control/registry.rs)
//! <state dir>/token                              the bearer token, when none is configured
//! <state dir>/checkpoints/<group id>/            checkpoints of every version (`--checkpoint-dir`)
//! <state dir>/deployments/<group id>/topology.toml   the file as deployed
//! <state dir>/deployments/<group id>/squall.log      its processes' stdout and stderr
//! <state dir>/deployments/<group id>/hosts.txt       its cluster's hostfile (processes > 1)
//! ```

use std::path::{Path, PathBuf};

use crate::values::GroupId;

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
}

/// The last `n` lines of a file (empty if it cannot be read).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
