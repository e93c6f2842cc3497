//! The server's registry of deployments, kept in one JSON file replaced atomically on every change.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What the operator asked a deployment to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Desired {
    /// Keep its processes running (restart them when they die).
    Running,
    /// Stopped by `squall stop` or a rollback; its offsets and checkpoints stay.
    Stopped,
}

/// One deployed topology version, as recorded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Deployment {
    /// `<topology>-v<version>`: the Kafka consumer group id, and the deployment's name.
    pub group_id: String,
    /// Topology name.
    pub topology: String,
    /// Version number.
    pub version: u32,
    /// What the version computes: `declared: <attribute names>`, or the built-in declaration it
    /// names (e.g. `personalization_v2`).
    pub attributes: String,
    /// Where the version started: `earliest`, `latest` or `group:<group id>`.
    pub start_from: String,
    /// timely worker threads per process.
    pub workers: usize,
    /// timely processes (cluster mode when > 1).
    pub processes: usize,
    /// What the operator asked for.
    pub desired: Desired,
    /// When it was deployed (Unix milliseconds).
    pub created_at_ms: u64,
    /// When it was last promoted (Unix milliseconds).
    pub promoted_at_ms: Option<u64>,
    /// When it was last stopped (Unix milliseconds).
    pub stopped_at_ms: Option<u64>,
    /// The topology file as deployed (its config), kept so that a restart runs the same thing.
    pub topology_toml: String,
}

/// Everything the server persists.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RegistryData {
    /// Deployments by group id.
    pub deployments: BTreeMap<String, Deployment>,
    /// The promoted group id of each topology: the version that answers queries by default.
    pub promoted: BTreeMap<String, String>,
}

/// The registry file `<state dir>/registry.json`.
#[derive(Debug)]
pub struct Registry {
    path: PathBuf,
    /// The current contents; call [`Registry::save`] after changing them.
    pub data: RegistryData,
}

impl Registry {
    /// Opens the registry in `state_dir` (creating the directory), or an empty one.
    pub fn open(state_dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(state_dir)?;
        let path = state_dir.join("registry.json");
        let data = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => RegistryData::default(),
            Err(e) => return Err(e),
        };
        Ok(Registry { path, data })
    }

    /// Writes the registry durably: a temporary file, fsync, rename over the old one, fsync of the directory.
    /// A crash at any point leaves either the old or the new file, never a torn one.
    pub fn save(&self) -> io::Result<()> {
        write_atomically(&self.path, &serde_json::to_vec_pretty(&self.data).map_err(io::Error::other)?)
    }

    /// Applies `change` and saves; if the save fails, the change is undone, so memory and disk
    /// never disagree.
    pub fn update(&mut self, change: impl FnOnce(&mut RegistryData)) -> io::Result<()> {
        let before = self.data.clone();
        change(&mut self.data);
        self.save().inspect_err(|_| self.data = before)
    }

    /// The promoted group id of `topology`, if any.
    pub fn promoted(&self, topology: &str) -> Option<&str> {
        self.data.promoted.get(topology).map(String::as_str)
    }
}

/// Replaces `path` with `bytes` atomically and durably.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(group: &str) -> Deployment {
        Deployment {
            group_id: group.into(),
            topology: "p".into(),
            version: 1,
            attributes: "personalization_v1".into(),
            start_from: "earliest".into(),
            workers: 2,
            processes: 1,
            desired: Desired::Running,
            created_at_ms: 1,
            promoted_at_ms: None,
            stopped_at_ms: None,
            topology_toml: "name = \"p\"".into(),
        }
    }

    #[test]
    fn survives_reopen_and_leaves_no_temporary_file() {
        let dir = std::env::temp_dir().join(format!("squall-registry-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut r = Registry::open(&dir).unwrap();
        assert_eq!(r.data, RegistryData::default());
        r.data.deployments.insert("p-v1".into(), deployment("p-v1"));
        r.data.promoted.insert("p".into(), "p-v1".into());
        r.save().unwrap();
        r.data.deployments.insert("p-v2".into(), deployment("p-v2"));
        r.save().unwrap();
        let again = Registry::open(&dir).unwrap();
        assert_eq!(again.data, r.data);
        assert_eq!(again.promoted("p"), Some("p-v1"));
        let names: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("registry.json")]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_file_is_an_error_not_an_empty_registry() {
        let dir = std::env::temp_dir().join(format!("squall-registry-bad-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("registry.json"), b"{not json").unwrap();
        let e = Registry::open(&dir).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("registry.json"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
