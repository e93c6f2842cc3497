//! The control plane's API types: what its endpoints take and answer, and how a deployment's
//! view is assembled from the registry, the state machine and the monitor's readings.

use serde::{Deserialize, Serialize};

use super::monitor::Progress;
use super::registry::Deployment;
use super::state::{DeploymentState, Facts};
use crate::counters::RunStatus;
use crate::kafka::PartitionLag;
use crate::values::GroupId;

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
    pub diff: Option<super::diffs::DiffSummary>,
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

/// One second of a deployment's history.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Sample {
    /// Unix milliseconds.
    pub at_ms: u64,
    /// Total lag, when known.
    pub lag: Option<i64>,
    /// Events applied per second.
    pub events_per_sec: f64,
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
