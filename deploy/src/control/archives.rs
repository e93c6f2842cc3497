//! Archivers the server runs: `squall archive` processes, one per archive, each with its own
//! consumer group, supervised like a version (restarted with the same backoff, adopted by a
//! server that restarts). This file holds their record in the registry, the API's types and the
//! pure decisions of `start` and `stop`; [`super::Control`] makes them durable and runs them.
//!
//! An archiver's progress is its consumer group's committed offsets against the topics' high
//! watermarks: it commits a partition's offset only once the file holding the records before it
//! is stored, so the committed offset is one past the last archived offset.

use serde::{Deserialize, Serialize};

use super::registry::RegistryData;
use super::state::Observed;
use crate::kafka::PartitionLag;
use crate::values::GroupId;

/// The topics an archiver reads when the request names none.
pub const DEFAULT_TOPICS: [&str; 2] = ["song-completions", "ad-impressions"];

/// One archiver, as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ArchiveDeployment {
    /// Its consumer group id, and the archiver's name.
    #[schema(value_type = String)]
    pub group_id: GroupId,
    /// The archive: an absolute directory on the server's host, or an `s3://`, `gs://`, `az://` URL.
    pub url: String,
    /// The topics it archives: `NAME` for song-completions and ad-impressions, `NAME=song|ad` for others.
    pub topics: Vec<String>,
    /// A partition's file is closed at this many records (none: the archiver's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows_per_file: Option<usize>,
    /// A partition's file is closed this long after its first record, e.g. `60s` (none: the
    /// archiver's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_file_age: Option<String>,
    /// When it was started (Unix milliseconds).
    pub created_at_ms: u64,
}

/// `POST /v1/archives`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StartArchiveRequest {
    /// The archive: a directory on the server's host, or an `s3://BUCKET/PREFIX`, `gs://`, `az://`
    /// URL (credentials from the server's environment).
    pub url: String,
    /// Its consumer group id (default `squall-archive`).
    #[serde(default)]
    pub group: Option<String>,
    /// The topics (default song-completions and ad-impressions).
    #[serde(default)]
    pub topics: Option<Vec<String>>,
    /// Close a partition's file at this many records.
    #[serde(default)]
    pub rows_per_file: Option<usize>,
    /// Close a partition's file this long after its first record, e.g. `60s`.
    #[serde(default)]
    pub max_file_age: Option<String>,
}

/// The state of an archiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ArchiveState {
    /// Its process has not said it serves its status yet.
    Starting,
    /// Archiving.
    Running,
    /// Its process died and has not come back yet; it is being restarted.
    Failed,
}

impl ArchiveState {
    /// The state's name in the API: `starting`, `running`, `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            ArchiveState::Starting => "starting",
            ArchiveState::Running => "running",
            ArchiveState::Failed => "failed",
        }
    }
}

/// An archiver as the API shows it: the record plus what is observed now.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ArchiveView {
    /// The recorded archiver.
    #[serde(flatten)]
    pub archive: ArchiveDeployment,
    /// Its state.
    pub state: ArchiveState,
    /// Per partition: the committed offset (one past the last archived offset), the high
    /// watermark, and the lag between them.
    pub partitions: Vec<PartitionLag>,
    /// Records not archived yet, over every partition (when the last reading succeeded).
    pub lag: Option<i64>,
    /// Why the lag could not be read, if it could not.
    pub lag_error: Option<String>,
    /// Data files in the archive (the manifest's entries over its topics), when it could be listed.
    pub files: Option<u64>,
    /// Why the archive could not be listed, if it could not.
    pub files_error: Option<String>,
    /// Times its process died and was restarted.
    pub restarts: u32,
    /// Why its process last died, with the end of its log.
    pub last_error: Option<String>,
    /// Whether its current process was started by an earlier server and adopted by this one.
    pub adopted: bool,
}

impl ArchiveView {
    /// The view of `a` from what is observed of it and the last listing of its files.
    pub fn of(a: &ArchiveDeployment, observed: Option<&Observed>, files: Option<&Result<u64, String>>) -> ArchiveView {
        let o = observed.cloned().unwrap_or_default();
        let state = match (o.serving(), &o.last_error) {
            (Some(_), _) => ArchiveState::Running,
            (None, Some(_)) => ArchiveState::Failed,
            (None, None) => ArchiveState::Starting,
        };
        ArchiveView {
            archive: a.clone(),
            state,
            lag: o.total_lag(),
            partitions: o.lag,
            lag_error: o.lag_error,
            files: files.and_then(|f| f.as_ref().ok().copied()),
            files_error: files.and_then(|f| f.as_ref().err().cloned()),
            restarts: o.restarts,
            last_error: o.last_error,
            adopted: o.adopted,
        }
    }
}

/// Why an archive command was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ArchiveRefusal {
    /// No archiver has this group id.
    #[error("no archiver with group id {:?}", .0.as_str())]
    Unknown(GroupId),
    /// An archiver with this group id runs already.
    #[error("an archiver with group id {:?} runs already (archive {url})", .group_id.as_str())]
    Duplicate {
        /// The group id.
        group_id: GroupId,
        /// The archive the running one writes.
        url: String,
    },
    /// Another archiver writes this archive: two would write the same files.
    #[error("archiver {:?} writes {url} already", .group_id.as_str())]
    SameArchive {
        /// The archiver that writes it.
        group_id: GroupId,
        /// The archive.
        url: String,
    },
    /// The group id is a deployed version's: they would commit over each other's offsets.
    #[error("{:?} is the group id of a deployed version", .0.as_str())]
    VersionGroup(GroupId),
}

/// The registry with archiver `a` added, or why not.
pub fn start(registry: &RegistryData, a: ArchiveDeployment) -> Result<RegistryData, ArchiveRefusal> {
    if let Some(existing) = registry.archives.get(&a.group_id) {
        return Err(ArchiveRefusal::Duplicate { group_id: a.group_id, url: existing.url.clone() });
    }
    if let Some(other) = registry.archives.values().find(|o| o.url == a.url) {
        return Err(ArchiveRefusal::SameArchive { group_id: other.group_id.clone(), url: a.url });
    }
    if registry.deployments.contains_key(&a.group_id) {
        return Err(ArchiveRefusal::VersionGroup(a.group_id));
    }
    let mut next = registry.clone();
    next.archives.insert(a.group_id.clone(), a);
    Ok(next)
}

/// The registry without archiver `g`, or why not.
pub fn stop(registry: &RegistryData, g: &GroupId) -> Result<RegistryData, ArchiveRefusal> {
    if !registry.archives.contains_key(g) {
        return Err(ArchiveRefusal::Unknown(g.clone()));
    }
    let mut next = registry.clone();
    next.archives.remove(g);
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::registry::Deployment;

    fn archive(group: &str, url: &str) -> ArchiveDeployment {
        ArchiveDeployment {
            group_id: group.parse().unwrap(),
            url: url.into(),
            topics: DEFAULT_TOPICS.iter().map(|t| t.to_string()).collect(),
            rows_per_file: None,
            max_file_age: None,
            created_at_ms: 1,
        }
    }

    #[test]
    fn start_refuses_a_duplicate_group_a_shared_archive_and_a_version_group() {
        let r = start(&RegistryData::default(), archive("a", "/x")).unwrap();
        assert!(r.archives.contains_key("a"));
        assert!(matches!(start(&r, archive("a", "/y")), Err(ArchiveRefusal::Duplicate { .. })));
        assert!(matches!(start(&r, archive("b", "/x")), Err(ArchiveRefusal::SameArchive { .. })));
        let mut with_version = r.clone();
        let v = Deployment::example("p-v1", 1, 1);
        with_version.deployments.insert(v.group_id.clone(), v);
        assert_eq!(
            start(&with_version, archive("p-v1", "/z")),
            Err(ArchiveRefusal::VersionGroup("p-v1".parse().unwrap()))
        );
    }

    #[test]
    fn stop_removes_it_and_refuses_an_unknown_group() {
        let r = start(&RegistryData::default(), archive("a", "/x")).unwrap();
        let g: GroupId = "a".parse().unwrap();
        assert!(stop(&r, &g).unwrap().archives.is_empty());
        assert_eq!(stop(&RegistryData::default(), &g), Err(ArchiveRefusal::Unknown(g)));
    }

    #[test]
    fn the_view_derives_the_state_from_the_observations() {
        use crate::control::state::Observation;
        let a = archive("a", "/x");
        assert_eq!(ArchiveView::of(&a, None, None).state, ArchiveState::Starting);
        let mut o = Observed::default();
        o.apply(Observation::Launched { launch_ids: vec!["1".into()] });
        o.apply(Observation::Ready { process: 0, url: "http://h".into(), pid: None });
        assert_eq!(ArchiveView::of(&a, Some(&o), Some(&Ok(3))).state, ArchiveState::Running);
        assert_eq!(ArchiveView::of(&a, Some(&o), Some(&Ok(3))).files, Some(3));
        o.apply(Observation::Died { why: "killed".into() });
        let v = ArchiveView::of(&a, Some(&o), None);
        assert_eq!((v.state, v.restarts), (ArchiveState::Failed, 1));
    }
}
