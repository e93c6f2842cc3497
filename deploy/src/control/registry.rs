//! The control plane's durable state: the registry of deployments, kept in one JSON file replaced
//! atomically on every change.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use squall_topologies::TopologySpec;

use crate::files::write_atomically;
use crate::values::{BinaryHash, GroupId, StartPosition};

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
    #[schema(value_type = String)]
    pub group_id: GroupId,
    /// Topology name.
    pub topology: String,
    /// Version number.
    pub version: u32,
    /// What the version computes: `declared: <attribute names>`, or the built-in declaration it
    /// names (e.g. `personalization_v2`).
    pub attributes: String,
    /// Where the version started: `earliest`, `latest` or `group:<group id>`.
    #[schema(value_type = String)]
    pub start_from: StartPosition,
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
    /// The SHA-256 of the executable its processes run (uploaded with `POST /v1/binaries`);
    /// none: the server's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub binary: Option<BinaryHash>,
    /// The archive the version applies first (`--backfill`), before reading Kafka.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfill: Option<BackfillFrom>,
    /// Standby replicas per process (`runtime.standbys`, or `squall deploy --standbys`): each
    /// follows the changelog for its process's users and answers while that process is down.
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schema(minimum = 0, maximum = 4)]
    pub standbys: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Where a deployment's backfill comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackfillFrom {
    /// The archive's URL (a directory on the server's host, or `s3://`, `gs://`, `az://`).
    pub archive: String,
    /// Archived events older than this event time (Unix milliseconds) are not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<i64>,
}

impl Deployment {
    /// A new deployment of `spec` (its file's text `topology_toml`), to be running. The one place
    /// that reads the code a topology version runs.
    pub fn new(
        spec: &TopologySpec,
        topology_toml: String,
        start_from: StartPosition,
        workers: usize,
        processes: usize,
        now_ms: u64,
    ) -> Deployment {
        Deployment {
            group_id: GroupId::of_spec(spec),
            topology: spec.name.clone(),
            version: spec.version,
            attributes: spec.describe_attributes(),
            start_from,
            workers,
            processes,
            desired: Desired::Running,
            created_at_ms: now_ms,
            promoted_at_ms: None,
            stopped_at_ms: None,
            topology_toml,
            binary: None,
            backfill: None,
            standbys: spec.runtime.standbys,
        }
    }

    /// The code the version runs, as people read it.
    pub fn code(&self) -> &str {
        &self.attributes
    }

    /// A running deployment `group` of topology `p` for tests: version `version`, 2 workers per
    /// process, `processes` processes, starting from the earliest offsets.
    #[cfg(test)]
    pub(crate) fn example(group: &str, version: u32, processes: usize) -> Deployment {
        Deployment {
            group_id: group.parse().expect("a group id"),
            topology: group.split('-').next().unwrap_or(group).into(),
            version,
            attributes: "personalization_v1".into(),
            start_from: StartPosition::Earliest,
            workers: 2,
            processes,
            desired: Desired::Running,
            created_at_ms: 1,
            promoted_at_ms: None,
            stopped_at_ms: None,
            topology_toml: String::new(),
            binary: None,
            backfill: None,
            standbys: 0,
        }
    }
}

/// Everything the server persists.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RegistryData {
    /// Deployments by group id.
    pub deployments: BTreeMap<GroupId, Deployment>,
    /// The promoted group id of each topology: the version that answers queries by default.
    pub promoted: BTreeMap<String, GroupId>,
    /// The archivers the server runs, by group id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub archives: BTreeMap<GroupId, super::archives::ArchiveDeployment>,
}

impl RegistryData {
    /// The promoted group id of `topology`, if any.
    pub fn promoted(&self, topology: &str) -> Option<&GroupId> {
        self.promoted.get(topology)
    }

    /// Whether `d` is the promoted version of its topology.
    pub fn is_promoted(&self, d: &Deployment) -> bool {
        self.promoted(&d.topology) == Some(&d.group_id)
    }
}

/// The registry file.
#[derive(Debug)]
pub struct Registry {
    path: PathBuf,
    data: RegistryData,
}

impl Registry {
    /// Opens the registry at `path` (creating its directory), or an empty one.
    pub fn open(path: &Path) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let path = path.to_owned();
        let data = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => RegistryData::default(),
            Err(e) => return Err(e),
        };
        Ok(Registry { path, data })
    }

    /// The current contents.
    pub fn data(&self) -> &RegistryData {
        &self.data
    }

    /// Makes `data` the registry's contents, durably: a temporary file, fsync, rename over the
    /// old one, fsync of the directory. A crash at any point leaves either the old or the new
    /// file, never a torn one; if the write fails, the contents stay as they were, so memory and
    /// disk never disagree.
    pub fn commit(&mut self, data: RegistryData) -> io::Result<()> {
        write_atomically(&self.path, &serde_json::to_vec_pretty(&data).map_err(io::Error::other)?)?;
        self.data = data;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(group: &str) -> Deployment {
        Deployment::example(group, 1, 1)
    }

    #[test]
    fn survives_reopen_and_leaves_no_temporary_file() {
        let dir = std::env::temp_dir().join(format!("squall-registry-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("registry.json");
        let mut r = Registry::open(&path).unwrap();
        assert_eq!(r.data(), &RegistryData::default());
        let mut data = RegistryData::default();
        let v1 = deployment("p-v1");
        data.deployments.insert(v1.group_id.clone(), v1.clone());
        data.promoted.insert("p".into(), v1.group_id.clone());
        r.commit(data.clone()).unwrap();
        let v2 = deployment("p-v2");
        data.deployments.insert(v2.group_id.clone(), v2);
        r.commit(data).unwrap();
        let again = Registry::open(&path).unwrap();
        assert_eq!(again.data(), r.data());
        assert_eq!(again.data().promoted("p"), Some(&v1.group_id));
        assert!(again.data().is_promoted(&v1));
        let names: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("registry.json")]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reads_the_files_written_before_values_were_typed() {
        let text = r#"{"deployments": {"p-v2": {"group_id": "p-v2", "topology": "p", "version": 2,
            "attributes": "personalization_v2", "start_from": "group:p-v1", "workers": 2, "processes": 1,
            "desired": "running", "created_at_ms": 1, "promoted_at_ms": null, "stopped_at_ms": null,
            "topology_toml": ""}}, "promoted": {"p": "p-v2"}}"#;
        let data: RegistryData = serde_json::from_str(text).unwrap();
        let d = &data.deployments[&"p-v2".parse::<GroupId>().unwrap()];
        assert_eq!(d.start_from, StartPosition::Group("p-v1".parse().unwrap()));
        assert!(data.is_promoted(d));
        let again: serde_json::Value = serde_json::to_value(&data).unwrap();
        assert_eq!(again, serde_json::from_str::<serde_json::Value>(text).unwrap());
    }

    #[test]
    fn a_corrupt_file_is_an_error_not_an_empty_registry() {
        let dir = std::env::temp_dir().join(format!("squall-registry-bad-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("registry.json"), b"{not json").unwrap();
        let e = Registry::open(&dir.join("registry.json")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("registry.json"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
