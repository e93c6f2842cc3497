//! A standby replica of one process of a version (`squall standby`): it follows the version's
//! changelog topic `<group id>.attributes` instead of the input topics, keeps for each user its
//! process owns ([`super::cluster::owner_process`], the one rule) the latest message by `cut`, and
//! answers `GET /v1/users/{user_id}/attributes` with the active process's JSON while that process
//! is down. No enrichment, no dedup, no checkpoints: what it holds is what the active wrote.
//!
//! # Notes
//! - **Reading.** Every partition from the earliest offset, assigned (no group membership, no
//!   commits: a restarted standby reads the compacted topic again). The changelog is at least
//!   once: a message whose `cut` is not above the one kept for its user is dropped.
//! - **Its cut.** A *sync* reads the cut the changelog feed of its process has recorded as
//!   durably written (`feed_progress`, [`squall_feeds::progress::written`]) and only then the
//!   topic's high watermarks, and completes once every partition is read up to them: every
//!   message of a cut up to that written cut is then applied, so the standby's cut is that
//!   written cut. A sync runs every [`SYNC_EVERY`], and at once when a query asks.
//! - **Answers never go back.** An active process with standbys answers at most its changelog's
//!   written cut (`version/http.rs`). Each answer of a standby waits for a sync that *started*
//!   after the query arrived, so it reflects at least every cut recorded before then, which is at
//!   least any cut the active answered before the query. A restarted active recovers at the latest
//!   complete checkpoint, which is at least the changelog's written cut (the feed writes complete
//!   cuts only). Attribute values the active held beyond its `as_of` cut may go back (see the
//!   README's "Guarantees").
//! - **Lag.** `lag_cuts` is the latest written cut read minus the standby's cut: how far it is
//!   behind the changelog. The control plane routes to a standby only within
//!   `runtime.standby_max_lag` cuts.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::watch;

use crate::version::cluster::owner_process;
use crate::version::counters::RunStatus;
use crate::version::freshness::{AsOf, Freshness, NO_WATERMARK, ReadBounds};
use crate::version::http::{ApiError, Bounds, UserAttributesBody, UserPath, bad_bound, unmet};
use crate::version::lease::Lease;

/// How often a standby syncs when no query asks.
pub const SYNC_EVERY: Duration = Duration::from_millis(200);
/// How long a query waits for its sync before the answer is a 503.
const SYNC_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the broker and the CQL store have to answer a sync's requests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// What a standby replicates.
#[derive(Clone, Debug)]
pub struct Replicated {
    /// Topology name.
    pub topology: String,
    /// Version number.
    pub version: u32,
    /// The version's group id.
    pub group_id: String,
    /// The process whose users it holds.
    pub process: usize,
    /// The version's processes.
    pub processes: usize,
    /// The version's workers per process (the owner rule needs them).
    pub workers: usize,
    /// The version's epoch.
    pub epoch: Duration,
}

/// What `/v1/status` shows of a standby.
#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq, utoipa::ToSchema)]
pub struct StandbyStatus {
    /// The process of the version whose users it holds.
    pub process: usize,
    /// The cut it answers at: the changelog's written cut its last sync completed.
    pub cut: u64,
    /// The changelog's latest written cut it has read.
    pub written_cut: Option<u64>,
    /// `written_cut - cut`: cuts it is behind the changelog.
    pub lag_cuts: u64,
    /// Messages behind the high watermarks of its sync under way, if one is.
    pub behind_messages: Option<i64>,
    /// Messages read from the changelog.
    pub messages: u64,
    /// Of those, messages dropped because their cut was not above the one kept.
    pub dropped: u64,
    /// Why its last sync failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A user's latest message.
struct Kept {
    cut: u64,
    attributes: Box<RawValue>,
}

/// The part of a changelog message a standby keeps.
#[derive(Deserialize)]
struct Incoming {
    cut: u64,
    attributes: Box<RawValue>,
}

/// A standby's state, shared by its reader thread and its HTTP API.
pub struct Standby {
    what: Replicated,
    users: RwLock<HashMap<Box<str>, Kept>>,
    cut: AtomicU64,
    /// The latest written cut read, `u64::MAX` for none.
    written: AtomicU64,
    /// Messages behind the current sync's targets, -1 when no sync is under way.
    behind: AtomicI64,
    messages: AtomicU64,
    dropped: AtomicU64,
    error: RwLock<Option<String>>,
    /// Syncs started; a query waits for the completion of the one after those it saw started.
    started: AtomicU64,
    completed: watch::Sender<u64>,
    asked: AtomicBool,
    freshness: Freshness,
}

impl Standby {
    /// An empty standby of `what`.
    pub fn new(what: Replicated) -> Standby {
        let freshness = Freshness::new(what.epoch, None, 1, None, NO_WATERMARK);
        Standby {
            what,
            users: RwLock::new(HashMap::new()),
            cut: AtomicU64::new(0),
            written: AtomicU64::new(u64::MAX),
            behind: AtomicI64::new(-1),
            messages: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            error: RwLock::new(None),
            started: AtomicU64::new(0),
            completed: watch::Sender::new(0),
            asked: AtomicBool::new(false),
            freshness,
        }
    }

    /// Whether `user_id` is one of the users this standby holds.
    pub fn holds(&self, user_id: &str) -> bool {
        let w = &self.what;
        owner_process(user_id, w.workers, w.processes) == w.process
    }

    /// Keeps `attributes` at `cut` for `user_id` unless what is kept is as new; whether it was kept.
    fn apply(users: &mut HashMap<Box<str>, Kept>, user_id: &str, cut: u64, attributes: Box<RawValue>) -> bool {
        match users.get_mut(user_id) {
            Some(k) if k.cut >= cut => false,
            Some(k) => {
                *k = Kept { cut, attributes };
                true
            }
            None => {
                users.insert(user_id.into(), Kept { cut, attributes });
                true
            }
        }
    }

    /// Applies a batch of (user, message value) read from the changelog.
    fn apply_batch(&self, batch: Vec<(String, Vec<u8>)>) {
        let parsed: Vec<(String, Incoming)> = batch
            .into_iter()
            .filter(|(user, _)| self.holds(user))
            .filter_map(|(user, value)| match serde_json::from_slice::<Incoming>(&value) {
                Ok(m) => Some((user, m)),
                Err(e) => {
                    tracing::warn!(user_id = %user, error = %e, "standby: a changelog message it cannot read: skipped");
                    None
                }
            })
            .collect();
        let mut users = self.users.write().unwrap_or_else(|p| p.into_inner());
        for (user, m) in parsed {
            if !Standby::apply(&mut users, &user, m.cut, m.attributes) {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The status `/v1/status` shows.
    pub fn status(&self) -> StandbyStatus {
        let cut = self.cut.load(Ordering::SeqCst);
        let written = Some(self.written.load(Ordering::SeqCst)).filter(|w| *w != u64::MAX);
        let behind = self.behind.load(Ordering::Relaxed);
        StandbyStatus {
            process: self.what.process,
            cut,
            written_cut: written,
            lag_cuts: written.map_or(0, |w| w.saturating_sub(cut)),
            behind_messages: (behind >= 0).then_some(behind),
            messages: self.messages.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            error: self.error.read().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }

    /// Waits for a sync that starts after now; false if none completed within [`SYNC_TIMEOUT`].
    pub async fn synced(&self) -> bool {
        let want = self.started.load(Ordering::SeqCst) + 1;
        let mut rx = self.completed.subscribe();
        self.asked.store(true, Ordering::SeqCst);
        matches!(tokio::time::timeout(SYNC_TIMEOUT, rx.wait_for(|c| *c >= want)).await, Ok(Ok(_)))
    }

    fn set_error(&self, e: Option<String>) {
        *self.error.write().unwrap_or_else(|p| p.into_inner()) = e;
    }
}

/// Where a standby reads from.
#[derive(Clone, Debug)]
pub struct Sources {
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// CQL contact points.
    pub cql: String,
    /// The keyspace of `feed_progress`.
    pub keyspace: String,
}

/// A sync under way: what it read, and the offsets to reach.
struct Target {
    number: u64,
    written: Option<u64>,
    highs: HashMap<i32, i64>,
}

/// Follows the changelog into `standby` until `stop` is set (on a thread of its own; CQL reads go
/// through `runtime`). An error is one retrying cannot mend (the consumer cannot be made or
/// assigned): the process should exit, and its supervisor start it again.
pub fn follow(
    standby: Arc<Standby>,
    sources: Sources,
    runtime: tokio::runtime::Handle,
    stop: Arc<AtomicBool>,
) -> Result<(), String> {
    let Some(mut f) = Follower::open(standby, &sources, runtime, &stop)? else { return Ok(()) };
    while !stop.load(Ordering::Relaxed) {
        if f.target.is_none()
            && (f.standby.asked.swap(false, Ordering::SeqCst) || f.last_sync.is_none_or(|t| t.elapsed() >= SYNC_EVERY))
        {
            f.start_sync();
        }
        // A standby that is caught up completes its sync without waiting for a poll.
        complete_if_reached(&f.standby, &mut f.target, &f.next, &mut f.last_sync);
        f.read();
        complete_if_reached(&f.standby, &mut f.target, &f.next, &mut f.last_sync);
    }
    Ok(())
}

/// What follows the changelog: the consumer, where it is, and the sync under way.
struct Follower {
    standby: Arc<Standby>,
    runtime: tokio::runtime::Handle,
    session: scylla::client::session::Session,
    keyspace: String,
    progress_key: String,
    consumer: BaseConsumer,
    topic: String,
    partitions: Vec<i32>,
    /// The next offset to read per partition.
    next: HashMap<i32, i64>,
    target: Option<Target>,
    last_sync: Option<Instant>,
}

impl Follower {
    /// Connects to the store and the broker and assigns every partition of the changelog from
    /// the beginning, retrying until they answer and the topic exists; `None` if stopped first.
    fn open(
        standby: Arc<Standby>,
        sources: &Sources,
        runtime: tokio::runtime::Handle,
        stop: &AtomicBool,
    ) -> Result<Option<Follower>, String> {
        let topic = squall_feeds::changelog::topic(&standby.what.group_id);
        let progress_key = squall_feeds::progress::key("changelog", (standby.what.process, standby.what.processes));
        let session = loop {
            match runtime.block_on(squall_feeds::profile::connect(&sources.cql)) {
                Ok(s) => break s,
                Err(e) => standby.set_error(Some(format!("CQL {}: {e}", sources.cql))),
            }
            if wait_or_stop(stop, Duration::from_secs(1)) {
                return Ok(None);
            }
        };
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &sources.brokers)
            // Never joins a group or commits: it assigns every partition itself, from the beginning.
            .set("group.id", format!("squall-standby-{}", standby.what.group_id))
            .set("enable.auto.commit", "false")
            // Low latency on a broker that waits the whole fetch.max.wait.ms for drained partitions.
            .set("fetch.wait.max.ms", "10")
            .create()
            .map_err(|e| format!("the changelog consumer: {e}"))?;
        // The topic appears when the active starts its feed.
        let partitions = loop {
            match partitions_of(&consumer, &topic) {
                Ok(p) if !p.is_empty() => break p,
                Ok(_) => standby.set_error(Some(format!("no topic {topic} yet"))),
                Err(e) => standby.set_error(Some(format!("{topic}: {e}"))),
            }
            if wait_or_stop(stop, Duration::from_millis(500)) {
                return Ok(None);
            }
        };
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            tpl.add_partition_offset(&topic, *p, Offset::Beginning).map_err(|e| format!("{topic} [{p}]: {e}"))?;
        }
        consumer.assign(&tpl).map_err(|e| format!("assign {topic}: {e}"))?;
        standby.set_error(None);
        tracing::info!(%topic, partitions = partitions.len(), process = standby.what.process, "standby: following the changelog");
        Ok(Some(Follower {
            standby,
            runtime,
            session,
            keyspace: sources.keyspace.clone(),
            progress_key,
            consumer,
            topic,
            partitions,
            next: HashMap::new(),
            target: None,
            last_sync: None,
        }))
    }

    /// Starts a sync: the written cut first, then the high watermarks, so that every message of a
    /// cut up to that one is below them.
    fn start_sync(&mut self) {
        let number = self.standby.started.fetch_add(1, Ordering::SeqCst) + 1;
        let what = &self.standby.what;
        let written =
            squall_feeds::progress::written(&self.session, &self.keyspace, &what.group_id, &self.progress_key);
        let read = self
            .runtime
            .block_on(async { tokio::time::timeout(REQUEST_TIMEOUT, written).await })
            .map_err(|_| "feed_progress did not answer in time".to_owned())
            .and_then(|r| r.map_err(|e| e.to_string()))
            .and_then(|written| {
                let highs =
                    crate::kafka::high_watermarks(&self.consumer, &self.topic, &self.partitions, REQUEST_TIMEOUT)
                        .map_err(|e| format!("{} high watermarks: {e}", self.topic))?;
                Ok((written, highs))
            });
        match read {
            Ok((written, highs)) => {
                if let Some(w) = written {
                    self.standby.written.store(w, Ordering::SeqCst);
                }
                self.target = Some(Target { number, written, highs });
            }
            Err(e) => {
                tracing::warn!(error = %e, "standby: a sync failed; retrying");
                self.standby.set_error(Some(e));
                self.last_sync = Some(Instant::now());
            }
        }
    }

    /// Reads what the changelog has (up to 4096 messages), waiting briefly for the first, and
    /// applies it.
    fn read(&mut self) {
        let hurry = self.target.is_some() || self.standby.asked.load(Ordering::Relaxed);
        let mut timeout = Duration::from_millis(if hurry { 1 } else { 10 });
        let mut batch = Vec::new();
        while batch.len() < 4096 {
            let Some(m) = self.consumer.poll(timeout) else { break };
            timeout = Duration::ZERO;
            match m {
                Ok(m) => {
                    self.next.insert(m.partition(), m.offset() + 1);
                    self.standby.messages.fetch_add(1, Ordering::Relaxed);
                    if let (Some(Ok(user)), Some(value)) = (m.key().map(std::str::from_utf8), m.payload()) {
                        batch.push((user.to_owned(), value.to_vec()));
                    }
                }
                Err(e) => tracing::debug!(error = %e, "standby: changelog read error"),
            }
        }
        if !batch.is_empty() {
            self.standby.apply_batch(batch);
        }
    }
}

/// Completes the sync under way once every partition is read up to its targets.
fn complete_if_reached(
    standby: &Standby,
    target: &mut Option<Target>,
    next: &HashMap<i32, i64>,
    last_sync: &mut Option<Instant>,
) {
    let Some(t) = target else { return };
    let behind: i64 = t.highs.iter().map(|(p, h)| (h - next.get(p).copied().unwrap_or(0)).max(0)).sum();
    standby.behind.store(behind, Ordering::Relaxed);
    if behind > 0 {
        return;
    }
    if let Some(w) = t.written {
        standby.cut.fetch_max(w, Ordering::SeqCst);
    }
    standby.set_error(None);
    standby.completed.send_replace(t.number);
    standby.behind.store(-1, Ordering::Relaxed);
    *last_sync = Some(Instant::now());
    *target = None;
}

/// Sleeps `d` unless `stop` is set; whether it is.
fn wait_or_stop(stop: &AtomicBool, d: Duration) -> bool {
    std::thread::sleep(d);
    stop.load(Ordering::Relaxed)
}

fn partitions_of(consumer: &BaseConsumer, topic: &str) -> Result<Vec<i32>, rdkafka::error::KafkaError> {
    let md = consumer.fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
    let mut ps: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    ps.sort_unstable();
    Ok(ps)
}

/// What a standby's HTTP API serves.
pub struct StandbyApi {
    /// The standby.
    pub standby: Arc<Standby>,
    /// The id it was started with (`--launch-id`).
    pub launch_id: Option<String>,
    /// Its lease on the server that started it.
    pub lease: Option<Arc<Lease>>,
    /// Prometheus metrics of the process.
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
}

/// The standby's routes: the attribute read, `/v1/status`, health and metrics.
pub fn router(api: Arc<StandbyApi>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(serde_json::json!({ "status": "ok" })) }))
        .route("/metrics", get(|State(api): State<Arc<StandbyApi>>| async move { api.metrics.render() }))
        .route("/v1/status", get(status))
        .route("/v1/users/{user_id}/attributes", get(attributes))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "no such endpoint").hint("GET /v1/users/{user_id}/attributes")
        })
        .route_layer(axum::middleware::from_fn(crate::version::http::track_latency))
        .with_state(api)
}

#[derive(Deserialize)]
struct StatusQuery {
    launch_id: Option<String>,
}

async fn status(
    State(api): State<Arc<StandbyApi>>,
    query: Result<Query<StatusQuery>, QueryRejection>,
) -> Json<RunStatus> {
    let given = query.ok().and_then(|Query(q)| q.launch_id);
    if let (Some(lease), Some(given)) = (&api.lease, &given)
        && api.launch_id.as_ref() == Some(given)
    {
        lease.renew();
    }
    let s = &api.standby;
    Json(RunStatus {
        group_id: s.what.group_id.clone(),
        users: s.users.read().unwrap_or_else(|p| p.into_inner()).len() as u64,
        launch_id: api.launch_id.clone(),
        pid: Some(std::process::id()),
        standby: Some(s.status()),
        ..RunStatus::default()
    })
}

async fn attributes(
    State(api): State<Arc<StandbyApi>>,
    UserPath(user_id): UserPath,
    Bounds(bounds): Bounds,
) -> Result<Response, ApiError> {
    let s = &api.standby;
    let w = &s.what;
    if !s.holds(&user_id) {
        let owner = owner_process(&user_id, w.workers, w.processes);
        return Err(ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            format!("user {user_id:?} is kept by process {owner}; this standby holds process {}'s users", w.process),
        )
        .hint("query the squall server"));
    }
    if !s.synced().await {
        let error = s.error.read().unwrap_or_else(|p| p.into_inner()).clone();
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the standby cannot read the changelog now")
            .detail(error.unwrap_or_else(|| format!("no sync completed within {SYNC_TIMEOUT:?}")))
            .hint("retry; the version's active process answers once it serves again"));
    }
    let as_of = AsOf { cut: s.cut.load(Ordering::SeqCst), watermark_ms: None, standby: true };
    if bounds != ReadBounds::default() {
        match s.freshness.check(&bounds, &as_of, crate::version::freshness::now_ms()) {
            Err(bad) => return Err(bad_bound(bad)),
            Ok(Err(u)) => return Ok(unmet(u, s.freshness.epoch_ms())),
            Ok(Ok(())) => {}
        }
    }
    let users = s.users.read().unwrap_or_else(|p| p.into_inner());
    let Some(kept) = users.get(user_id.as_str()) else {
        return Err(crate::version::http::no_attributes(&w.topology, w.version, &user_id));
    };
    let body = UserAttributesBody {
        user_id: &user_id,
        topology: &w.topology,
        version: w.version,
        group_id: &w.group_id,
        attributes: &*kept.attributes,
        as_of,
    };
    let json = serde_json::to_vec(&body).map_err(|e| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "cannot serialise the attributes").detail(e.to_string())
    })?;
    drop(users);
    Ok(crate::version::http::json_answer(json))
}

/// `squall standby`'s arguments (set by the squall server, which starts and supervises standbys).
#[derive(clap::Args, Debug)]
pub struct StandbyArgs {
    /// The topology file the version was deployed with.
    #[arg(long, short)]
    pub topology: PathBuf,
    /// Which version of the file.
    #[arg(long)]
    pub version: Option<u32>,
    /// The process of the version whose users this standby holds, 0..processes.
    #[arg(long, default_value_t = 0)]
    pub process: usize,
    /// The version's processes.
    #[arg(long, default_value_t = 1)]
    pub processes: usize,
    /// The version's worker threads per process (default: the file's).
    #[arg(long, short)]
    pub workers: Option<usize>,
    /// Kafka bootstrap servers.
    #[arg(long)]
    pub brokers: Option<String>,
    /// CQL contact points of the store the version's feeds record their progress in.
    #[arg(long)]
    pub cql: Option<String>,
    /// HTTP listen address (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
    /// The id this process was started with, reported on /v1/status (set by the squall server).
    #[arg(long, hide = true)]
    pub launch_id: Option<String>,
    /// Record this process in this file (as `squall run --runtime-file`).
    #[arg(long, hide = true, requires = "launch_id")]
    pub runtime_file: Option<PathBuf>,
    /// Stop once no squall server has renewed this process's lease for this long.
    #[arg(long, value_parser = humantime::parse_duration, requires = "launch_id")]
    pub adopt_timeout: Option<Duration>,
}

impl StandbyArgs {
    /// What the standby replicates and where it reads from: the topology file, then these flags.
    pub fn settings(&self) -> anyhow::Result<(Replicated, Sources)> {
        let mut spec = squall_topologies::TopologySpec::load(&self.topology)?;
        if let Some(v) = self.version {
            spec = spec.with_version(v)?;
        }
        anyhow::ensure!(
            spec.feed.changelog,
            "{}: a standby follows the changelog; [feed] changelog is off",
            spec.group_id()
        );
        anyhow::ensure!((1..=64).contains(&self.processes), "--processes {}: use 1..=64", self.processes);
        anyhow::ensure!(self.process < self.processes, "--process {}: use 0..{}", self.process, self.processes);
        let workers = self.workers.unwrap_or(spec.runtime.workers);
        anyhow::ensure!((1..=256).contains(&workers), "--workers {workers}: use 1..=256");
        let what = Replicated {
            topology: spec.name.clone(),
            version: spec.version,
            group_id: spec.group_id(),
            process: self.process,
            processes: self.processes,
            workers,
            epoch: spec.state.epoch,
        };
        let sources = Sources {
            brokers: self.brokers.clone().unwrap_or(spec.kafka.brokers),
            cql: self.cql.clone().unwrap_or(spec.cql.nodes),
            keyspace: spec.cql.keyspace,
        };
        Ok((what, sources))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn a_message_whose_cut_is_not_above_the_kept_one_is_dropped() {
        let mut users = HashMap::new();
        assert!(Standby::apply(&mut users, "u", 5, raw(r#"{"plays":1}"#)));
        assert!(!Standby::apply(&mut users, "u", 5, raw(r#"{"plays":9}"#)), "the same cut again");
        assert!(!Standby::apply(&mut users, "u", 4, raw(r#"{"plays":0}"#)), "an older cut");
        assert_eq!(users["u"].attributes.get(), r#"{"plays":1}"#);
        assert!(Standby::apply(&mut users, "u", 6, raw(r#"{"plays":2}"#)));
        assert_eq!((users["u"].cut, users["u"].attributes.get()), (6, r#"{"plays":2}"#));
    }

    #[test]
    fn a_standby_keeps_only_the_users_of_its_process() {
        let what = |process| Replicated {
            topology: "p".into(),
            version: 1,
            group_id: "p-v1".into(),
            process,
            processes: 2,
            workers: 2,
            epoch: Duration::from_secs(1),
        };
        let (a, b) = (Standby::new(what(0)), Standby::new(what(1)));
        let batch: Vec<(String, Vec<u8>)> = (0..50)
            .map(|i| {
                (format!("u{i}"), format!(r#"{{"user_id":"u{i}","attributes":{{"plays":{i}}},"cut":3}}"#).into_bytes())
            })
            .collect();
        a.apply_batch(batch.clone());
        b.apply_batch(batch);
        let (na, nb) = (a.users.read().unwrap().len(), b.users.read().unwrap().len());
        assert_eq!(na + nb, 50);
        assert!(na > 0 && nb > 0);
        for i in 0..50 {
            let u = format!("u{i}");
            assert_eq!(a.users.read().unwrap().contains_key(u.as_str()), owner_process(&u, 2, 2) == 0);
        }
    }
}
