//! The control plane's API types: what its endpoints take and answer, how a deployment's view is
//! assembled from the registry, the state machine and the monitor's readings, and the schemas of
//! the values a request names (a group id, a user id, an executable's bytes).

use serde::{Deserialize, Serialize};

use super::monitor::{Progress, Sample};
use super::registry::Deployment;
use super::state::{DeploymentState, Facts};
use crate::kafka::PartitionLag;
use crate::values::GroupId;
use crate::version::counters::RunStatus;

/// A deployment as the API shows it: the record plus what is observed now.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeploymentView {
    /// The recorded deployment.
    #[serde(flatten)]
    pub deployment: Deployment,
    /// Its state.
    pub state: DeploymentState,
    /// Whether this version answers queries of its topology by default.
    pub promoted: bool,
    /// Total Kafka lag over its partitions (messages not covered by a committed checkpoint).
    pub lag: Option<i64>,
    /// Events applied per second (last second).
    pub events_per_sec: f64,
    /// Records sent to dead-letter topics.
    pub dead_letters: u64,
    /// Times its processes died and were restarted.
    pub restarts: u32,
    /// Why its processes last died, with the end of their log.
    pub last_error: Option<String>,
    /// HTTP addresses of its processes (those that serve), in process order. Each answers
    /// `GET /v1/users/{user_id}/attributes` itself, also while the server is down.
    pub urls: Vec<String>,
    /// Whether its current processes were started by an earlier server and adopted by this one.
    pub adopted: bool,
    /// Its diff against its topology's promoted version (when both publish a changelog).
    #[serde(default)]
    pub diff: Option<super::diff_runs::DiffSummary>,
    /// Its standby replicas (deployed with `standbys`), in process order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub standby_replicas: Vec<super::standbys::StandbyView>,
}

/// `GET /v1/deployments/{group_id}`: the view plus per-partition progress and recent history.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeploymentDetail {
    /// The deployment.
    #[serde(flatten)]
    pub view: DeploymentView,
    /// Per partition: committed offset, high watermark, lag.
    pub partitions: Vec<PartitionLag>,
    /// Why the lag could not be read, if it could not.
    pub lag_error: Option<String>,
    /// Counters of its processes.
    pub status: Option<RunStatus>,
    /// One sample per second for the last 10 minutes.
    pub history: Vec<Sample>,
}

/// `POST /v1/deployments`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// The topology file's text (TOML).
    pub topology_toml: String,
    /// Which version of the file to run; default: the file's `version`.
    pub version: Option<u32>,
    /// `earliest` (default), `latest` or `group:<group id>` (start at that group's committed offsets).
    #[schema(pattern = r"^(earliest|latest|group:[^\u0000-\u001F\u007F-\u009F]{1,255})$")]
    pub start_from: Option<String>,
    /// Worker threads per process (1 to 256); default: the file's `runtime.workers`.
    #[schema(minimum = 1, maximum = 256)]
    pub workers: Option<usize>,
    /// Processes (timely cluster mode on this host when > 1; 1 to 64); default 1.
    #[schema(minimum = 1, maximum = 64)]
    pub processes: Option<usize>,
    /// The SHA-256 of an executable uploaded with `POST /v1/binaries`: the version's processes
    /// run it, across server restarts and upgrades. Default: the server's own executable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[0-9A-Fa-f]{64}$")]
    pub binary: Option<String>,
    /// Apply this archive of the topics first (a directory on the server's host, or `s3://`,
    /// `gs://`, `az://`), then read Kafka from the offset after each partition's last archived
    /// one. Refused when Kafka no longer holds that offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1)]
    pub backfill: Option<String>,
    /// With `backfill`: only archived events of this long before the deploy, e.g. `90d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1)]
    pub since: Option<String>,
    /// Standby replicas per process (0 to 4); default: the
    /// file's `runtime.standbys`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 4)]
    pub standbys: Option<usize>,
}

/// `POST /v1/deployments/{group_id}/rollback`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RollbackResponse {
    /// The version now promoted.
    pub promoted: DeploymentView,
    /// Newer versions of the topology that were stopped.
    pub stopped: Vec<GroupId>,
}

impl DeploymentView {
    /// The view of `d`, given the facts and the monitor's readings of it.
    pub(super) fn of(facts: &Facts, d: &Deployment, progress: Option<&Progress>) -> DeploymentView {
        let observed = facts.observed.get(&d.group_id);
        DeploymentView {
            deployment: d.clone(),
            state: facts.state(d),
            promoted: facts.registry.is_promoted(d),
            lag: observed.and_then(|o| o.total_lag()),
            events_per_sec: observed.map(|o| o.events_per_sec).unwrap_or(0.0),
            dead_letters: progress.and_then(|p| p.status.as_ref()).map(|s| s.dead_letters).unwrap_or(0),
            restarts: observed.map(|o| o.restarts).unwrap_or(0),
            last_error: observed.and_then(|o| o.last_error.clone()),
            urls: observed.map(|o| o.processes.iter().filter_map(|p| p.url.clone()).collect()).unwrap_or_default(),
            adopted: observed.is_some_and(|o| o.adopted),
            diff: None,
            standby_replicas: Vec::new(),
        }
    }
}

impl DeploymentDetail {
    /// The detail of `d`, given the facts and the monitor's readings of it.
    pub(super) fn of(facts: &Facts, d: &Deployment, progress: Option<&Progress>) -> DeploymentDetail {
        let observed = facts.observed.get(&d.group_id);
        DeploymentDetail {
            view: DeploymentView::of(facts, d, progress),
            partitions: observed.map(|o| o.lag.clone()).unwrap_or_default(),
            lag_error: observed.and_then(|o| o.lag_error.clone()),
            status: progress.and_then(|p| p.status.clone()),
            history: progress.map(|p| p.history.iter().copied().collect()).unwrap_or_default(),
        }
    }
}

/// Control characters (Unicode category Cc, what [`char::is_control`] tests), as a regular
/// expression's character class body: neither group ids nor user ids may contain them.
const CONTROL: &str = r"\u0000-\u001F\u007F-\u009F";

/// A string of `min..=max` characters, none of them a control character.
fn text_without_controls(min: usize, max: usize) -> utoipa::openapi::ObjectBuilder {
    use utoipa::openapi::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(min))
        .max_length(Some(max))
        .pattern(Some(format!("^[^{CONTROL}]{{{min},{max}}}$")))
}

/// The rules of [`GroupId`]'s `FromStr`: the API answers 400 for any other group id.
impl utoipa::PartialSchema for GroupId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        text_without_controls(1, GroupId::MAX_CHARS)
            .description(Some(
                "A deployment's name and Kafka consumer group id, `<topology>-v<version>` for the versions this \
                 server deploys: 1 to 255 characters, no control characters.",
            ))
            .examples([serde_json::json!("personalization-v1")])
            .into()
    }
}

impl utoipa::ToSchema for GroupId {}

/// A user id in a request, as [`crate::version::http::check_user_id`] takes it.
pub struct UserId;

impl utoipa::PartialSchema for UserId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use crate::version::http::MAX_USER_ID_BYTES;
        text_without_controls(1, MAX_USER_ID_BYTES)
            .description(Some(format!(
                "A user: 1 to {MAX_USER_ID_BYTES} bytes of UTF-8 (so fewer characters when some take several \
                 bytes), no control characters."
            )))
            .examples([serde_json::json!("u1")])
            .into()
    }
}

impl utoipa::ToSchema for UserId {}

/// The bytes of an uploaded executable.
pub struct Executable;

impl utoipa::PartialSchema for Executable {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .into()
    }
}

impl utoipa::ToSchema for Executable {}

#[cfg(test)]
mod tests {
    #[test]
    fn the_documented_control_characters_are_what_is_control_tests() {
        let ranges = [(0x00, 0x1F), (0x7F, 0x9F)];
        assert_eq!(super::CONTROL, r"\u0000-\u001F\u007F-\u009F");
        for c in (0..=0x10FFFF).filter_map(char::from_u32) {
            let listed = ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&u32::from(c)));
            assert_eq!(c.is_control(), listed, "{c:?}");
        }
    }
}
