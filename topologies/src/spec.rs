//! A topology file, typed: embedded defaults, then the TOML file, then `SQUALL__*` variables.
//!
//! The file declares its versions' attributes (`[versions.N] attributes = [...]`, see
//! [`squall_operators::attributes::declare`]); they are checked here, and an error names the file's line.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use squall_enrichment::EnrichConfig;
use squall_feeds::FeedSpec;
use squall_operators::{Declaration, StartFrom};

pub use crate::versions::VersionSpec;
use crate::versions::VersionsError;

/// A topology version: what it reads, what it computes, where it keeps and serves it.
#[derive(Clone, Debug, PartialEq)]
pub struct TopologySpec {
    /// Topology name, e.g. `personalization`; with the version it makes the group id.
    pub name: String,
    /// Version number, >= 1.
    pub version: u32,
    /// The attributes this version keeps.
    pub attributes: Arc<Declaration>,
    /// Every version the file declares, by number.
    pub versions: BTreeMap<u32, VersionSpec>,
    /// Kafka settings.
    pub kafka: KafkaSpec,
    /// CQL store settings.
    pub cql: CqlSpec,
    /// Enrichment cache and lookup settings.
    pub enrichment: EnrichConfig,
    /// State settings.
    pub state: StateSpec,
    /// Worker settings.
    pub runtime: RuntimeSpec,
    /// HTTP settings.
    pub http: HttpSpec,
    /// Attribute feeds: the CQL profile table and the changelog topic.
    pub feed: FeedSpec,
    /// Service-level objectives.
    pub slo: SloSpec,
}

/// The file as figment reads it: the settings, with the version declarations left to [`Decls`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    name: String,
    version: u32,
    #[serde(default)]
    #[allow(dead_code)] // Read with line numbers by `Decls`.
    attributes: Option<IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    versions: Option<IgnoredAny>,
    kafka: KafkaSpec,
    cql: CqlSpec,
    enrichment: EnrichConfig,
    state: StateSpec,
    runtime: RuntimeSpec,
    http: HttpSpec,
    feed: FeedSpec,
    slo: SloSpec,
}

/// `[kafka]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSpec {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Topic of song completions.
    pub song_completions: String,
    /// Topic of ad impressions.
    pub ad_impressions: String,
    /// Start of a version that has no checkpoint.
    pub start_from: StartFrom,
    /// Start a version that has no checkpoint at the offsets this other group committed
    /// (partitions it never committed start at `start_from`). Wins over `start_from`.
    pub start_from_group: Option<String>,
    /// Dead letters of topic `t` go to `t` + this suffix.
    pub dlq_suffix: String,
    /// Larger messages are dead-lettered as `oversized`.
    pub max_message_bytes: usize,
    /// `[kafka.consumer]`: librdkafka properties of the source consumers (not the dead-letter
    /// producer or the offset committer), applied after squall's own, e.g. fetch tuning. The
    /// properties that exactly-once depends on (offsets are committed only with a complete
    /// checkpoint) cannot be set here.
    pub consumer: std::collections::BTreeMap<String, String>,
    /// An archive of the topics (a directory, or an `s3://`, `gs://`, `az://` URL) to apply
    /// first, each partition up to its last archived offset, before reading Kafka from the next
    /// one (`squall deploy --backfill`). A checkpoint past the archive wins.
    pub backfill: Option<String>,
    /// With `backfill`: archived events older than this event time (epoch ms) are not applied.
    pub backfill_since_ms: Option<i64>,
}

/// librdkafka properties squall sets itself and `[kafka.consumer]` may not change.
pub const RESERVED_CONSUMER_PROPERTIES: [&str; 4] =
    ["group.id", "enable.auto.commit", "enable.auto.offset.store", "bootstrap.servers"];

impl Default for KafkaSpec {
    fn default() -> Self {
        KafkaSpec {
            brokers: "127.0.0.1:9092".into(),
            song_completions: "song-completions".into(),
            ad_impressions: "ad-impressions".into(),
            start_from: StartFrom::Earliest,
            start_from_group: None,
            dlq_suffix: ".dlq".into(),
            max_message_bytes: 64 * 1024,
            consumer: Default::default(),
            backfill: None,
            backfill_since_ms: None,
        }
    }
}

/// `[cql]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CqlSpec {
    /// Contact points, comma separated `host:port`.
    pub nodes: String,
    /// Keyspace of the `tracks` and `ads` tables.
    pub keyspace: String,
}

impl Default for CqlSpec {
    fn default() -> Self {
        CqlSpec { nodes: "127.0.0.1:9042".into(), keyspace: "squall".into() }
    }
}

/// `[state]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateSpec {
    /// Resends within this much event time are counted once.
    #[serde(with = "humantime_serde")]
    pub dedup_horizon: Duration,
    /// Length of an epoch: the unit of consistent cuts, and the checkpoint interval.
    #[serde(with = "humantime_serde")]
    pub epoch: Duration,
    /// Where checkpoints go: `"dir"` (files under `checkpoint_dir`) or `"cql"` (the
    /// `checkpoint_*` tables in the `[cql]` keyspace). Unset: `"dir"` if `checkpoint_dir` is set,
    /// otherwise no checkpoints, and a restart rebuilds the state from `kafka.start_from`.
    pub checkpoint_store: Option<CheckpointStoreKind>,
    /// Checkpoints go to `<checkpoint_dir>/<group id>/` (with `checkpoint_store = "dir"`).
    pub checkpoint_dir: Option<std::path::PathBuf>,
    /// Complete cuts between compactions of the checkpoints (key groups that changed enough
    /// folded into new bases, expired dedup buckets deleted).
    pub compact_every: usize,
    /// Key groups: the units checkpoints are stored and read back in (a process reads those of
    /// its workers). Fixed for a version's life; the number of processes and workers may change.
    pub key_groups: u32,
    /// A user not seen for this long (event time, behind the watermark) is expired: forgotten
    /// in memory and in the checkpoints; if they return they start fresh. `"0s"` keeps every
    /// user. At least `dedup_horizon`.
    #[serde(with = "humantime_serde")]
    pub user_ttl: Duration,
    /// How far ahead in event time a partition may read of the slowest active partition of its
    /// process before it is paused (watermark alignment). Unset: half the shorter of
    /// `dedup_horizon` and `user_ttl` that is on; `"0s"`: never paused.
    #[serde(default, with = "humantime_serde")]
    pub alignment: Option<Duration>,
    /// A partition read to its end stops holding the watermark back only once nothing has come
    /// for this long (wall time, like Flink's `withIdleness`). Default 30 s: a burst of events
    /// reaches a consumer's partitions a fetch at a time, so a partition that is empty for a
    /// moment (or has never had data) must not let the watermark jump to where the first of them
    /// has got; `"0s"` makes a partition idle at its end at once.
    #[serde(with = "humantime_serde")]
    pub idle_after: Duration,
}

impl StateSpec {
    /// The alignment bound in milliseconds (0: off).
    pub fn alignment_ms(&self) -> i64 {
        match self.alignment {
            Some(d) => d.as_millis() as i64,
            None => {
                let on = [self.dedup_horizon, self.user_ttl].into_iter().filter(|d| !d.is_zero()).min();
                on.map_or(0, |d| d.as_millis() as i64 / 2)
            }
        }
    }
}

/// `state.checkpoint_store`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointStoreKind {
    /// Files on local disk, under `state.checkpoint_dir`.
    Dir,
    /// The CQL store of `[cql]`: state rows per user per version (`operators/src/checkpoint_cql.rs`).
    Cql,
}

/// Where a topology's checkpoints go, resolved from `[state]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckpointTarget {
    /// No checkpoints.
    None,
    /// `<dir>/<group id>/`.
    Dir(std::path::PathBuf),
    /// The `checkpoint_*` tables in the `[cql]` keyspace.
    Cql,
}

impl StateSpec {
    /// Where checkpoints go (see [`StateSpec::checkpoint_store`]).
    pub fn checkpoints(&self) -> CheckpointTarget {
        match (self.checkpoint_store, &self.checkpoint_dir) {
            (Some(CheckpointStoreKind::Cql), _) => CheckpointTarget::Cql,
            (_, Some(dir)) => CheckpointTarget::Dir(dir.clone()),
            _ => CheckpointTarget::None,
        }
    }
}

impl Default for StateSpec {
    fn default() -> Self {
        StateSpec {
            // The documented contract for resends; at Spotify's scale set 10 minutes, about 0.8 GB
            // per process of a 10-process version at 1.5 M events/s (ARCHITECTURE.md).
            dedup_horizon: Duration::from_secs(24 * 3600),
            epoch: Duration::from_secs(1),
            checkpoint_store: None,
            checkpoint_dir: None,
            compact_every: 60,
            key_groups: squall_operators::KeyGroups::DEFAULT,
            user_ttl: Duration::ZERO,
            alignment: None,
            idle_after: Duration::from_secs(30),
        }
    }
}

/// `[runtime]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeSpec {
    /// timely worker threads in this process.
    pub workers: usize,
    /// Events in enrichment before the sources pause.
    pub max_pending: usize,
    /// Standby replicas per process: each holds the state of its process one complete cut behind
    /// it (bootstrapped from the checkpoint, then following the version's replica feed), answers
    /// for its users while that process is down, and takes over its consumption when it dies.
    pub standbys: usize,
    /// A standby more than this many cuts behind its active process answers no query.
    pub standby_max_lag: u64,
}

/// The most standby replicas a process may have.
pub const MAX_STANDBYS: usize = 4;

impl Default for RuntimeSpec {
    fn default() -> Self {
        RuntimeSpec { workers: 2, max_pending: 200_000, standbys: 0, standby_max_lag: 10 }
    }
}

/// `[http]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSpec {
    /// Address the attribute API listens on; port 0 picks a free port.
    pub listen: String,
}

impl Default for HttpSpec {
    fn default() -> Self {
        HttpSpec { listen: "127.0.0.1:8080".into() }
    }
}

/// `[slo]`: the objectives a version is measured against (reported, never enforced).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SloSpec {
    /// The event-to-servable delay objective: from an event to the publication of the cut that
    /// makes it visible in answers. Unset: the delay is measured, nothing is judged against it.
    /// More than `state.epoch` (a cut is published only after its epoch has ended).
    #[serde(default, with = "humantime_serde")]
    pub freshness: Option<Duration>,
}

/// A topology file that cannot be used, with what to fix.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file is missing, not TOML, or has a wrong or unknown field.
    #[error("topology {path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong, including the field.
        message: String,
    },
}

/// What is wrong with a topology file that parses: the `message` of [`SpecError::Invalid`].
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    /// Its `[versions]`.
    #[error(transparent)]
    Versions(#[from] VersionsError),
    /// A librdkafka property squall sets itself.
    #[error(
        "kafka.consumer.\"{key}\": squall sets this itself ({}); offsets are committed only with a complete checkpoint",
        set_from(.key)
    )]
    ConsumerProperty {
        /// The property.
        key: String,
    },
    /// `kafka.start_from_group` is no group id.
    #[error("kafka.start_from_group: a group id has 1..=255 characters")]
    StartFromGroup,
    /// `name` is no topology name.
    #[error("name {0:?}: use 1-64 characters from [A-Za-z0-9_-]")]
    Name(String),
    /// `version` is 0.
    #[error("version must be >= 1")]
    Version,
    /// `runtime.workers` out of range.
    #[error("runtime.workers = {0}: use 1..=256")]
    Workers(usize),
    /// Too many standbys.
    #[error("runtime.standbys = {0}: use 0..={MAX_STANDBYS}")]
    Standbys(usize),
    /// A directory store without its directory.
    #[error("state.checkpoint_store = \"dir\" needs state.checkpoint_dir")]
    NoCheckpointDir,
    /// A checkpoint directory for another store.
    #[error("state.checkpoint_dir is only used with checkpoint_store = \"dir\"; remove one of them")]
    CheckpointDirUnused,
    /// `state.epoch` too short.
    #[error("state.epoch must be at least 10ms")]
    Epoch,
    /// `state.key_groups` out of range.
    #[error(transparent)]
    KeyGroups(#[from] squall_operators::key_groups::KeyGroupsError),
    /// `state.user_ttl` shorter than what it must outlive.
    #[error(
        "state.user_ttl = {ttl:?}: use \"0s\" (keep every user) or at least state.dedup_horizon ({horizon:?}) and state.epoch"
    )]
    UserTtl {
        /// The ttl.
        ttl: Duration,
        /// The dedup horizon.
        horizon: Duration,
    },
    /// One topic for both kinds of event.
    #[error("kafka.song_completions and kafka.ad_impressions must be different topics")]
    SameTopics,
    /// `slo.freshness` that no cut can meet.
    #[error(
        "slo.freshness = {freshness:?}: use more than state.epoch ({epoch:?}); a cut is published only after its epoch ends"
    )]
    Freshness {
        /// The objective.
        freshness: Duration,
        /// The epoch.
        epoch: Duration,
    },
}

/// Where squall takes consumer property `key` from.
fn set_from(key: &str) -> &'static str {
    match key {
        "group.id" => "from the topology name and version",
        "bootstrap.servers" => "from kafka.brokers",
        _ => "to false",
    }
}

impl TopologySpec {
    /// Loads `path`, then applies `SQUALL__SECTION__FIELD` environment variables (the version
    /// declarations come from the file only).
    pub fn load(path: &Path) -> Result<Self, SpecError> {
        let invalid = |message: String| SpecError::Invalid { path: path.display().to_string(), message };
        if !path.is_file() {
            return Err(invalid("no such file".into()));
        }
        let text = std::fs::read_to_string(path).map_err(|e| invalid(e.to_string()))?;
        let file: FileSpec = Figment::new()
            .merge(Serialized::defaults(Defaults::default()))
            .merge(Toml::string(&text))
            .merge(Env::prefixed("SQUALL__").split("__").lowercase(true))
            .extract()
            .map_err(|e| invalid(e.to_string()))?;
        TopologySpec::resolve(file, &text, true).map_err(|e| invalid(e.to_string()))
    }

    /// Parses TOML text (no environment), for the server, tests and tools.
    pub fn from_toml(text: &str) -> Result<Self, SpecError> {
        let invalid = |message: String| SpecError::Invalid { path: "<text>".into(), message };
        let file: FileSpec = Figment::new()
            .merge(Serialized::defaults(Defaults::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| invalid(e.to_string()))?;
        TopologySpec::resolve(file, text, true).map_err(|e| invalid(e.to_string()))
    }

    fn resolve(file: FileSpec, text: &str, builtins: bool) -> Result<Self, Invalid> {
        let versions = crate::versions::parse(text, file.version, builtins)?;
        let attributes = versions
            .get(&file.version)
            .map(|v| Arc::clone(&v.attributes))
            .ok_or_else(|| crate::versions::missing(file.version, &versions))?;
        let spec = TopologySpec {
            name: file.name,
            version: file.version,
            attributes,
            versions,
            kafka: file.kafka,
            cql: file.cql,
            enrichment: file.enrichment,
            state: file.state,
            runtime: file.runtime,
            http: file.http,
            feed: file.feed,
            slo: file.slo,
        };
        spec.validate()?;
        Ok(spec)
    }

    /// Selects version `version` of this topology (one of its `[versions]`).
    pub fn with_version(mut self, version: u32) -> Result<Self, SpecError> {
        let Some(v) = self.versions.get(&version) else {
            let message = crate::versions::missing(version, &self.versions).to_string();
            return Err(SpecError::Invalid { path: self.name.clone(), message });
        };
        self.attributes = Arc::clone(&v.attributes);
        self.version = version;
        Ok(self)
    }

    /// How listings describe the selected version's attributes.
    pub fn describe_attributes(&self) -> String {
        self.versions.get(&self.version).map(VersionSpec::describe).unwrap_or_default()
    }

    fn validate(&self) -> Result<(), Invalid> {
        if let Some(key) = self.kafka.consumer.keys().find(|k| RESERVED_CONSUMER_PROPERTIES.contains(&k.as_str())) {
            return Err(Invalid::ConsumerProperty { key: key.clone() });
        }
        if let Some(group) = &self.kafka.start_from_group
            && (group.is_empty() || group.len() > 255)
        {
            return Err(Invalid::StartFromGroup);
        }
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !name_ok {
            return Err(Invalid::Name(self.name.clone()));
        }
        if self.version == 0 {
            return Err(Invalid::Version);
        }
        if self.runtime.workers == 0 || self.runtime.workers > 256 {
            return Err(Invalid::Workers(self.runtime.workers));
        }
        if self.runtime.standbys > MAX_STANDBYS {
            return Err(Invalid::Standbys(self.runtime.standbys));
        }
        match (self.state.checkpoint_store, &self.state.checkpoint_dir) {
            (Some(CheckpointStoreKind::Dir), None) => return Err(Invalid::NoCheckpointDir),
            (Some(CheckpointStoreKind::Cql), Some(_)) => return Err(Invalid::CheckpointDirUnused),
            _ => {}
        }
        if self.state.epoch < Duration::from_millis(10) {
            return Err(Invalid::Epoch);
        }
        squall_operators::KeyGroups::new(self.state.key_groups)?;
        let ttl = self.state.user_ttl;
        if !ttl.is_zero() && (ttl < self.state.dedup_horizon || ttl < self.state.epoch) {
            return Err(Invalid::UserTtl { ttl, horizon: self.state.dedup_horizon });
        }
        if self.kafka.song_completions == self.kafka.ad_impressions {
            return Err(Invalid::SameTopics);
        }
        if let Some(freshness) = self.slo.freshness
            && freshness <= self.state.epoch
        {
            return Err(Invalid::Freshness { freshness, epoch: self.state.epoch });
        }
        Ok(())
    }

    /// The consumer group id of this version: `<name>-v<version>`.
    pub fn group_id(&self) -> String {
        format!("{}-v{}", self.name, self.version)
    }
}

/// Defaults for the sections, so a file needs only `name`, `version` and its versions.
#[derive(Default, Serialize)]
struct Defaults {
    kafka: KafkaSpec,
    cql: CqlSpec,
    enrichment: EnrichConfig,
    state: StateSpec,
    runtime: RuntimeSpec,
    http: HttpSpec,
    feed: FeedSpec,
    slo: SloSpec,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_files_load_and_differ_in_version_and_code() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let v1 = TopologySpec::load(&dir.join("personalization.toml")).unwrap();
        let v2 = v1.clone().with_version(2).unwrap();
        assert_eq!(v1.group_id(), "personalization-v1");
        assert_eq!(v2.group_id(), "personalization-v2");
        assert_eq!(v1.attributes.attributes.len(), 7);
        assert_eq!(v2.attributes.summary(), format!("{}, skip_rate, genre_affinity", v1.attributes.summary()));
        assert!(v2.describe_attributes().starts_with("declared: plays, skips"), "{}", v2.describe_attributes());
        assert_eq!(v1.state.dedup_horizon, Duration::from_secs(86_400));
        assert_eq!((v1.state.key_groups, v1.state.user_ttl), (4096, Duration::ZERO));
        assert_eq!(v1.enrichment.cache_ttl, Duration::from_secs(600));
    }

    #[test]
    fn unknown_version_is_named() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let v1 = TopologySpec::load(&dir.join("personalization.toml")).unwrap();
        let e = v1.clone().with_version(7).unwrap_err().to_string();
        assert!(e.contains("no version 7 (versions in this file: 1, 2, 3)"), "{e}");
        // The README's rollout walk deploys version 3: v1 plus a hidden map, top-k and windows.
        let v3 = v1.with_version(3).unwrap();
        let shown: Vec<&str> = v3.attributes.attributes.iter().filter(|a| !a.hidden).map(|a| a.name.as_str()).collect();
        assert_eq!(
            shown,
            [
                "plays",
                "skips",
                "genre_plays",
                "top_genres",
                "ad_impressions",
                "ad_categories",
                "last_seen_ts",
                "top_artists",
                "plays_7d",
                "genre_plays_30d"
            ]
        );
        assert!(v3.feed.changelog, "the shipped file publishes a changelog for `squall diff`");
        let e = TopologySpec::from_toml(
            "name = \"p\"\nversion = 1\nattributes = \"personalization_v1\"\n[versions]\nx = \"personalization_v2\"",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("versions.x"), "{e}");
    }

    #[test]
    fn checkpoint_store_is_resolved_and_checked() {
        let base = "name = \"p\"\nversion = 1\nattributes = \"personalization_v1\"\n[state]\n";
        let spec = |state: &str| TopologySpec::from_toml(&format!("{base}{state}"));
        assert_eq!(spec("").unwrap().state.checkpoints(), CheckpointTarget::None);
        assert_eq!(spec("checkpoint_dir = \"/c\"").unwrap().state.checkpoints(), CheckpointTarget::Dir("/c".into()));
        assert_eq!(
            spec("checkpoint_store = \"dir\"\ncheckpoint_dir = \"/c\"").unwrap().state.checkpoints(),
            CheckpointTarget::Dir("/c".into())
        );
        assert_eq!(spec("checkpoint_store = \"cql\"").unwrap().state.checkpoints(), CheckpointTarget::Cql);
        assert!(spec("checkpoint_store = \"dir\"").unwrap_err().to_string().contains("needs state.checkpoint_dir"));
        assert!(
            spec("checkpoint_store = \"cql\"\ncheckpoint_dir = \"/c\"").unwrap_err().to_string().contains("only used")
        );
        assert!(spec("checkpoint_store = \"s3\"").unwrap_err().to_string().contains("checkpoint_store"));
    }

    #[test]
    fn key_groups_and_user_ttl_are_checked() {
        let base = "name = \"p\"\nversion = 1\nattributes = \"personalization_v1\"\n[state]\n";
        let spec = |state: &str| TopologySpec::from_toml(&format!("{base}{state}"));
        let s = spec("key_groups = 64\nuser_ttl = \"30d\"").unwrap();
        assert_eq!((s.state.key_groups, s.state.user_ttl), (64, Duration::from_secs(30 * 86_400)));
        assert!(spec("key_groups = 0").unwrap_err().to_string().contains("state.key_groups = 0"));
        let e = spec("dedup_horizon = \"1h\"\nuser_ttl = \"5m\"").unwrap_err().to_string();
        assert!(e.contains("state.user_ttl") && e.contains("dedup_horizon"), "{e}");
        assert!(spec("dedup_horizon = \"0s\"\nuser_ttl = \"5m\"").is_ok());
    }

    #[test]
    fn the_alignment_defaults_to_half_the_shorter_of_horizon_and_ttl() {
        let base = "name = \"p\"\nversion = 1\nattributes = \"personalization_v1\"\n[state]\n";
        let ms = |state: &str| TopologySpec::from_toml(&format!("{base}{state}")).unwrap().state.alignment_ms();
        assert_eq!(ms(""), 12 * 3_600_000, "half the default 24 h horizon");
        assert_eq!(ms("dedup_horizon = \"2h\"\nuser_ttl = \"3d\""), 3_600_000);
        assert_eq!(ms("dedup_horizon = \"0s\"\nuser_ttl = \"4h\""), 2 * 3_600_000);
        assert_eq!(ms("dedup_horizon = \"0s\""), 0, "neither on: no alignment");
        assert_eq!(ms("alignment = \"30m\""), 1_800_000);
        assert_eq!(ms("alignment = \"0s\""), 0);
        assert!(TopologySpec::from_toml(&format!("{base}alignment = \"soon\"")).is_err());
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let s = TopologySpec::from_toml("name = \"p\"\nversion = 3\nattributes = \"personalization_v2\"").unwrap();
        assert_eq!(s.kafka, KafkaSpec::default());
        assert_eq!(s.group_id(), "p-v3");
    }

    #[test]
    fn mistakes_are_named() {
        let err = |t: &str| TopologySpec::from_toml(t).unwrap_err().to_string();
        assert!(err("name = \"p\"\nversion = 1\nattributes = \"v9\"").contains("unknown built-in attributes \"v9\""));
        assert!(err("name = \"p\"\nversion = 2\n[versions]\n1 = \"personalization_v1\"").contains("no version 2"));
        assert!(err("name = \"p\"\nversion = 0\nattributes = \"personalization_v1\"").contains("version must be"));
        assert!(err("name = \"p q\"\nversion = 1\nattributes = \"personalization_v1\"").contains("name"));
        assert!(
            err("name = \"p\"\nversion = 1\nattributes = \"personalization_v1\"\n[kafka]\nbrokerz = \"x\"")
                .contains("brokerz")
        );
        assert!(
            err("name = \"p\"\nversion = 1\nattributes = \"personalization_v1\"\n[state]\nepoch = \"soon\"")
                .contains("epoch")
        );
        assert!(err("version = 1").contains("name"));
    }

    #[test]
    fn the_freshness_objective_is_checked_and_named() {
        let base = "name = \"p\"\nversion = 1\nattributes = \"personalization_v1\"\n";
        let spec = TopologySpec::from_toml(&format!("{base}[slo]\nfreshness = \"5s\"")).unwrap();
        assert_eq!(spec.slo.freshness, Some(Duration::from_secs(5)));
        assert_eq!(TopologySpec::from_toml(base).unwrap().slo.freshness, None);
        let err = |t: &str| TopologySpec::from_toml(&format!("{base}{t}")).unwrap_err().to_string();
        for bad in ["[slo]\nfreshness = \"soon\"", "[slo]\nfreshness = 5", "[slo]\nfreshness = \"-1s\""] {
            assert!(err(bad).contains("slo.freshness"), "{bad}: {}", err(bad));
        }
        let short = err("[slo]\nfreshness = \"1s\"");
        assert!(short.contains("slo.freshness = 1s") && short.contains("more than state.epoch (1s)"), "{short}");
        assert!(err("[slo]\nfreshnes = \"5s\"").contains("freshnes"));
    }

    #[test]
    fn consumer_properties_pass_through_except_the_reserved_ones() {
        let base = "name = \"p\"\nversion = 1\nattributes = \"personalization_v1\"\n[kafka.consumer]\n";
        let spec = TopologySpec::from_toml(&format!("{base}\"fetch.wait.max.ms\" = \"50\"")).unwrap();
        assert_eq!(spec.kafka.consumer.get("fetch.wait.max.ms").map(String::as_str), Some("50"));
        for key in RESERVED_CONSUMER_PROPERTIES {
            let err = TopologySpec::from_toml(&format!("{base}\"{key}\" = \"x\"")).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains("squall sets this itself"), "{err}");
        }
    }

    #[test]
    fn standbys_are_bounded_and_need_no_feed() {
        let base = "name = \"p\"\nversion = 1\nattributes = \"personalization_v1\"\n";
        let spec = TopologySpec::from_toml(base).unwrap();
        assert_eq!((spec.runtime.standbys, spec.runtime.standby_max_lag), (0, 10));
        let ok = format!("{base}[runtime]\nstandbys = 1\nstandby_max_lag = 3\n");
        let spec = TopologySpec::from_toml(&ok).unwrap();
        assert_eq!((spec.runtime.standbys, spec.runtime.standby_max_lag), (1, 3));
        assert!(!spec.feed.changelog, "the replica feed is internal: no [feed] needed");
        let err = TopologySpec::from_toml(&format!("{base}[runtime]\nstandbys = 5\n")).unwrap_err().to_string();
        assert_eq!(err, "topology <text>: runtime.standbys = 5: use 0..=4");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API fixes the closure's error type.
    fn environment_overrides_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "t.toml",
                "name = \"p\"\nversion = 1\nattributes = \"personalization_v1\"\n[kafka]\nbrokers = \"file:1\"",
            )?;
            jail.set_env("SQUALL__KAFKA__BROKERS", "env:2");
            jail.set_env("SQUALL__RUNTIME__WORKERS", "3");
            let s = TopologySpec::load(Path::new("t.toml")).map_err(|e| e.to_string())?;
            assert_eq!(s.kafka.brokers, "env:2");
            assert_eq!(s.runtime.workers, 3);
            Ok(())
        });
    }
}
