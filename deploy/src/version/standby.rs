//! A standby replica of one process of a version (`squall standby`): it holds the process's state
//! one complete cut behind it, answers `GET /v1/users/{user_id}/attributes` while that process is
//! down, and takes over its consumption when the squall server asks (`POST /v1/take-over`),
//! without reading the state back from the checkpoint store.
//!
//! # Notes
//! - **What it holds.** The same [`UserStore`] a version process holds (every user of its process,
//!   as [`squall_operators::UserState`]), the dedup ids of the process's key groups within the
//!   horizon, and the input offsets and event-time watermark of its cut: what recovery from a
//!   checkpoint gives a process. No enrichment, no dedup work, no checkpoints of its own.
//! - **Bootstrap, then follow.** It reads the process's key groups at the latest complete
//!   checkpoint (without changing anything in the store, [`CheckpointStore::read`]), then follows
//!   partition `process` of the replica topic (`squall_feeds::replica`) from the first batch after
//!   that cut, applying each batch whole when its marker arrives. A batch that starts beyond its
//!   cut (the active recovered from a later checkpoint than the replica had written) makes it
//!   bootstrap again.
//! - **Its cut.** A *sync* reads the partition's high watermark and completes once it has read
//!   up to it: every batch acknowledged before the sync started is then applied. Every
//!   [`SYNC_EVERY`] a sync first reads the cut the replica feed of its process has recorded as
//!   written (`feed_progress`), for its lag; a query's sync, started at once when a query asks,
//!   needs only the high watermark.
//! - **Answers never go back.** An active process with standbys answers at most the replica's
//!   written cut (`version/http.rs`). Each answer of a standby waits for a sync that *started*
//!   after the query arrived, so it reflects at least every cut recorded before then. A restarted
//!   active recovers at the latest complete checkpoint, which is at least the replica's written
//!   cut. Attribute values the active held beyond its `as_of` cut may go back (see the README's
//!   "Guarantees").
//! - **Taking over.** Asked by the server once its active has died, it reads the partition to its
//!   end (nothing more can come), hands its state to the runner ([`runner::take_over`]: the
//!   checkpoint store is only told where to continue from, [`CheckpointStore::resume`], and falls
//!   back to a recovery if its latest complete cut is beyond the standby's), and serves the
//!   version's API on the same address, as the version's process: the server adopts it through
//!   the runtime file it writes.
//! - **Lag.** `lag_cuts` is the latest written cut read minus the standby's cut. The control plane
//!   routes to a standby only within `runtime.standby_max_lag` cuts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::future::BoxFuture;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use squall_enrichment::Symbols;
use squall_feeds::replica::{self, Marker, Record};
use squall_operators::checkpoint::{CheckpointStore, DedupRun, RecoveryScope, oldest_live_bucket};
use squall_operators::dedup::{BUCKETS, Fingerprint};
use squall_operators::{Epoch, KeyGroups, Partition, Plan, UserState, UserStore};
use squall_topologies::TopologySpec;
use tokio::sync::{oneshot, watch};
use tower::ServiceExt as _;

use crate::version::cluster::{Cluster, owner_process};
use crate::version::counters::RunStatus;
use crate::version::freshness::{AsOf, Freshness, NO_WATERMARK, ReadBounds};
use crate::version::http::{ApiError, Bounds, UserAttributesBody, UserPath, bad_bound, unmet};
use crate::version::lease::Lease;
use crate::version::runner::{self, Warm};

/// How often a standby syncs when no query asks.
pub const SYNC_EVERY: Duration = Duration::from_millis(200);
/// How long a query waits for its sync before the answer is a 503.
const SYNC_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the broker and the CQL store have to answer a sync's requests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// A sync's requests, or a query's wait for its sync, taking longer than this are logged.
const SLOW_REQUESTS: Duration = Duration::from_millis(20);

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

impl Replicated {
    /// The workers of its process among the version's.
    fn local(&self) -> std::ops::Range<usize> {
        self.process * self.workers..(self.process + 1) * self.workers
    }
}

/// What `/v1/status` shows of a standby.
#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq, utoipa::ToSchema)]
pub struct StandbyStatus {
    /// The process of the version whose users it holds.
    pub process: usize,
    /// The cut it answers at: the last batch it applied.
    pub cut: u64,
    /// The replica feed's latest written cut it has read.
    pub written_cut: Option<u64>,
    /// `written_cut - cut`: cuts it is behind the replica feed.
    pub lag_cuts: u64,
    /// Messages behind the high watermark of its sync under way, if one is.
    pub behind_messages: Option<i64>,
    /// Messages read from the replica topic.
    pub messages: u64,
    /// Of the records read, those dropped: records of a batch cut short (never followed by its
    /// marker; its retry brings them again).
    pub dropped: u64,
    /// Why its last sync failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The state a standby holds: what a recovery from the checkpoint at `cut` would give its process.
struct Held {
    store: Arc<UserStore>,
    cut: Epoch,
    /// Dedup ids by key group and bucket.
    dedup: BTreeMap<(u32, i64), Vec<Fingerprint>>,
    bucket_ms: i64,
    watermark: i64,
    offsets: BTreeMap<Partition, i64>,
}

impl Held {
    fn empty(plan: &Arc<Plan>, symbols: &Symbols, what: &Replicated, key_groups: KeyGroups, ttl_ms: i64) -> Held {
        let store =
            UserStore::with_key_groups(Arc::clone(plan), symbols.clone(), what.workers * what.processes, key_groups)
                .with_user_ttl(ttl_ms);
        Held {
            store: Arc::new(store),
            cut: 0,
            dedup: BTreeMap::new(),
            bucket_ms: 0,
            watermark: i64::MIN,
            offsets: BTreeMap::new(),
        }
    }

    fn add_ids(&mut self, run: DedupRun) {
        self.dedup.entry((run.key_group, run.bucket)).or_default().extend(run.ids);
    }

    /// Forgets the dedup buckets the process's workers have forgotten (the same horizon as
    /// recovery's).
    fn expire_ids(&mut self) {
        let oldest = oldest_live_bucket(self.watermark, self.bucket_ms * BUCKETS, self.bucket_ms);
        self.dedup.retain(|(_, bucket), _| *bucket >= oldest);
    }

    /// What the runner takes over.
    fn warm(&self) -> Warm {
        Warm {
            store: Arc::clone(&self.store),
            cut: self.cut,
            watermark: self.watermark,
            bucket_ms: self.bucket_ms,
            offsets: self.offsets.clone(),
            dedup: self
                .dedup
                .iter()
                .map(|((key_group, bucket), ids)| DedupRun { key_group: *key_group, bucket: *bucket, ids: ids.clone() })
                .collect(),
        }
    }
}

/// A standby's state, shared by its follower thread and its HTTP API.
pub struct Standby {
    what: Replicated,
    spec: TopologySpec,
    plan: Arc<Plan>,
    symbols: Symbols,
    key_groups: KeyGroups,
    held: RwLock<Held>,
    cut: AtomicU64,
    /// The latest written cut read, `u64::MAX` for none.
    written: AtomicU64,
    /// Messages behind the current sync's target, -1 when no sync is under way.
    behind: AtomicI64,
    messages: AtomicU64,
    dropped: AtomicU64,
    error: RwLock<Option<String>>,
    /// Syncs started; a query waits for the completion of the one after those it saw started.
    started: AtomicU64,
    completed: watch::Sender<u64>,
    asked: AtomicBool,
    freshness: Freshness,
    /// A takeover the server asked for, waiting for the follower.
    take_over: Mutex<Option<oneshot::Sender<Result<Warm, String>>>>,
    /// Whether it read the replica to its end for a takeover: what it holds is final, and
    /// queries no longer wait for a sync.
    handed_over: AtomicBool,
}

impl Standby {
    /// An empty standby of `what`, for the version `spec` describes.
    pub fn new(what: Replicated, spec: TopologySpec) -> anyhow::Result<Standby> {
        let symbols = Symbols::default();
        let plan = Arc::new(Plan::compile(&spec.attributes, &symbols));
        let key_groups = KeyGroups::new(spec.state.key_groups).map_err(|e| anyhow::anyhow!("state.key_groups: {e}"))?;
        let ttl = spec.state.user_ttl.as_millis() as i64;
        let held = Held::empty(&plan, &symbols, &what, key_groups, ttl);
        let freshness = Freshness::new(what.epoch, None, 1, None, NO_WATERMARK);
        Ok(Standby {
            what,
            spec,
            plan,
            symbols,
            key_groups,
            held: RwLock::new(held),
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
            take_over: Mutex::new(None),
            handed_over: AtomicBool::new(false),
        })
    }

    /// Whether `user_id` is one of the users this standby holds.
    pub fn holds(&self, user_id: &str) -> bool {
        let w = &self.what;
        owner_process(user_id, w.workers, w.processes) == w.process
    }

    fn held(&self) -> std::sync::RwLockReadGuard<'_, Held> {
        self.held.read().unwrap_or_else(|p| p.into_inner())
    }

    fn held_mut(&self) -> std::sync::RwLockWriteGuard<'_, Held> {
        self.held.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces what it holds with the checkpoint `store` holds of its process at the latest
    /// complete cut (nothing, if none is complete); the cut.
    fn bootstrap(&self, store: &mut dyn CheckpointStore) -> Result<Epoch, String> {
        let w = &self.what;
        let scope = RecoveryScope {
            key_groups: self.key_groups,
            peers: w.workers * w.processes,
            local: w.local(),
            tidy: false,
        };
        let started = Instant::now();
        let recovered = store.read(&scope).map_err(|e| format!("read the checkpoint ({}): {e}", store.location()))?;
        let mut held =
            Held::empty(&self.plan, &self.symbols, w, self.key_groups, self.spec.state.user_ttl.as_millis() as i64);
        let Some(rec) = recovered else {
            *self.held_mut() = held;
            self.cut.store(0, Ordering::SeqCst);
            return Ok(0);
        };
        let local = w.local();
        for (user, snapshot) in &rec.users {
            if local.contains(&held.store.owner(user)) {
                let state = UserState::restore(snapshot, &self.plan, &self.symbols)
                    .map_err(|e| format!("user {user:?} of checkpoint cut {}: {e}", rec.cut))?;
                held.store.map_of(user).insert(user.as_str().into(), state);
            }
        }
        let covers = self.key_groups.covering(local, scope.peers);
        for run in rec.dedup {
            if covers.contains(&run.key_group) {
                held.add_ids(run);
            }
        }
        held.cut = rec.cut;
        held.watermark = rec.watermark;
        held.bucket_ms = rec.bucket_ms;
        held.offsets = rec.offsets;
        tracing::info!(
            group_id = %w.group_id, process = w.process, cut = rec.cut, users = held.store.users(),
            bytes_read = rec.bytes_read, elapsed = ?started.elapsed(), "standby: bootstrapped from the checkpoint"
        );
        *self.held_mut() = held;
        self.cut.store(rec.cut, Ordering::SeqCst);
        Ok(rec.cut)
    }

    /// Applies a batch whose marker is `marker`; `false` (nothing applied) when the batch starts
    /// beyond its cut and it must bootstrap again.
    fn apply(&self, records: Vec<Record>, marker: Marker) -> Result<bool, String> {
        let cut = self.held().cut;
        if marker.cut <= cut {
            // A batch it has (the bootstrap's checkpoint was later than it).
            return Ok(true);
        }
        if marker.from > cut {
            tracing::warn!(group_id = %self.what.group_id, cut, from = marker.from, "standby: a batch starts beyond its cut; bootstrapping again");
            return Ok(false);
        }
        // Users go in under the read lock (the maps lock themselves); the cut moves last.
        let mut ids = Vec::new();
        {
            let held = self.held();
            for r in records {
                match r {
                    Record::User(user, snapshot) => {
                        let state = UserState::restore(&snapshot, &self.plan, &self.symbols)
                            .map_err(|e| format!("user {user:?} of replica cut {}: {e}", marker.cut))?;
                        held.store.map_of(&user).insert(user.as_str().into(), state);
                    }
                    Record::Expired(user) => {
                        held.store.map_of(&user).remove(user.as_str());
                    }
                    Record::Ids(run) => ids.push(run),
                    Record::Cut(_) => {}
                }
            }
        }
        let mut held = self.held_mut();
        for run in ids {
            held.add_ids(run);
        }
        held.cut = marker.cut;
        held.watermark = held.watermark.max(marker.watermark);
        if marker.bucket_ms > 0 {
            held.bucket_ms = marker.bucket_ms;
        }
        held.offsets.extend(marker.offsets);
        held.expire_ids();
        drop(held);
        self.cut.store(marker.cut, Ordering::SeqCst);
        Ok(true)
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

    /// Users it holds.
    pub fn users(&self) -> u64 {
        self.held().store.users() as u64
    }

    /// Waits for a sync that starts after now; false if none completed within [`SYNC_TIMEOUT`].
    pub async fn synced(&self) -> bool {
        if self.handed_over.load(Ordering::SeqCst) {
            return true;
        }
        let want = self.started.load(Ordering::SeqCst) + 1;
        let mut rx = self.completed.subscribe();
        self.asked.store(true, Ordering::SeqCst);
        matches!(tokio::time::timeout(SYNC_TIMEOUT, rx.wait_for(|c| *c >= want)).await, Ok(Ok(_)))
    }

    fn set_error(&self, e: Option<String>) {
        *self.error.write().unwrap_or_else(|p| p.into_inner()) = e;
    }

    /// Asks the follower for the state to take over with, once it has read the replica to its end.
    async fn take_state(&self) -> Result<Warm, String> {
        let (tx, rx) = oneshot::channel();
        *self.take_over.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        match tokio::time::timeout(Duration::from_secs(10), rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err("the standby's follower has stopped".into()),
            Err(_) => Err("the standby did not read the replica to its end within 10 s".into()),
        }
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

/// A sync under way: what it read, and the offset to reach.
struct Target {
    number: u64,
    written: Option<u64>,
    high: i64,
}

/// Follows the replica into `standby` until `stop` is set or it hands its state over (on a thread
/// of its own; CQL reads go through `runtime`). An error is one retrying cannot mend (the consumer
/// cannot be made): the process should exit, and its supervisor start it again.
pub fn follow(
    standby: Arc<Standby>,
    sources: Sources,
    runtime: tokio::runtime::Handle,
    stop: Arc<AtomicBool>,
) -> Result<(), String> {
    let Some(mut f) = Follower::open(standby, &sources, runtime, &stop)? else { return Ok(()) };
    while !stop.load(Ordering::Relaxed) {
        if !f.positioned {
            if let Err(e) = f.bootstrap() {
                tracing::warn!(error = %e, "standby: cannot bootstrap; retrying");
                f.standby.set_error(Some(e));
                if wait_or_stop(&stop, Duration::from_secs(1)) {
                    break;
                }
            }
            continue;
        }
        let asked = f.standby.take_over.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(reply) = asked {
            let drained = f.drain();
            if drained.is_ok() {
                f.standby.handed_over.store(true, Ordering::SeqCst);
                f.standby.completed.send_replace(u64::MAX);
            }
            let failed = drained.is_err();
            let _ = reply.send(drained.map(|()| f.standby.held().warm()));
            if failed {
                continue;
            }
            return Ok(());
        }
        if f.target.is_none() {
            let due = |t: Option<Instant>| t.is_none_or(|t| t.elapsed() >= SYNC_EVERY);
            if f.standby.asked.swap(false, Ordering::SeqCst) || due(f.last_sync) {
                f.start_sync(due(f.last_progress));
            }
        }
        // A standby that is caught up completes its sync without waiting for a poll.
        f.complete_if_reached();
        if let Err(e) = f.read(None) {
            tracing::warn!(error = %e, "standby: bootstrapping again");
            f.standby.set_error(Some(e));
            f.positioned = false;
            continue;
        }
        f.complete_if_reached();
    }
    Ok(())
}

/// What follows the replica: the checkpoint store it bootstraps from, the consumer, where it is,
/// and the sync under way.
struct Follower {
    standby: Arc<Standby>,
    runtime: tokio::runtime::Handle,
    session: Arc<scylla::client::session::Session>,
    checkpoints: Box<dyn CheckpointStore>,
    keyspace: String,
    progress_key: String,
    consumer: BaseConsumer,
    topic: String,
    partition: i32,
    /// Whether it bootstrapped and reads from the batch after its cut.
    positioned: bool,
    /// The next offset to read.
    next: i64,
    /// Records of the batch being read, until its marker.
    batch: Vec<Record>,
    target: Option<Target>,
    last_sync: Option<Instant>,
    /// When a sync last read the written cut.
    last_progress: Option<Instant>,
}

impl Follower {
    /// Connects to the store and the broker, retrying until they answer; `None` if stopped first.
    fn open(
        standby: Arc<Standby>,
        sources: &Sources,
        runtime: tokio::runtime::Handle,
        stop: &AtomicBool,
    ) -> Result<Option<Follower>, String> {
        let what = &standby.what;
        let topic = replica::topic(&what.group_id);
        let progress_key = squall_feeds::progress::key(replica::NAME, (what.process, what.processes));
        let (session, checkpoints) = loop {
            let opened = runtime.block_on(async {
                let session = Arc::new(squall_feeds::profile::connect(&sources.cql).await.map_err(|e| e.to_string())?);
                let store = runner::open_checkpoints(&standby.spec, Arc::clone(&session), &what.group_id, &runtime)
                    .await
                    .map_err(|e| format!("{:#}", anyhow::Error::from(e)))?;
                Ok::<_, String>((session, store))
            });
            match opened {
                Ok((session, Some(store))) => break (session, store),
                Ok((_, None)) => return Err("the version has no checkpoint store to bootstrap from".into()),
                Err(e) => standby.set_error(Some(format!("CQL {}: {e}", sources.cql))),
            }
            if wait_or_stop(stop, Duration::from_secs(1)) {
                return Ok(None);
            }
        };
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &sources.brokers)
            // Never joins a group or commits: it assigns its partition itself.
            .set("group.id", format!("squall-standby-{}", what.group_id))
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .set("fetch.message.max.bytes", (4 << 20).to_string())
            .create()
            .map_err(|e| format!("the replica consumer: {e}"))?;
        tracing::info!(%topic, process = what.process, "standby: following the replica feed");
        Ok(Some(Follower {
            runtime,
            session,
            checkpoints,
            keyspace: sources.keyspace.clone(),
            progress_key,
            consumer,
            topic,
            partition: what.process as i32,
            positioned: false,
            next: 0,
            batch: Vec::new(),
            target: None,
            last_sync: None,
            last_progress: None,
            standby,
        }))
    }

    /// Reads the checkpoint, then finds the first batch after its cut on the replica topic (which
    /// the active creates when it starts).
    fn bootstrap(&mut self) -> Result<(), String> {
        let cut = self.standby.bootstrap(&mut *self.checkpoints)?;
        let start = replica::first_after(&self.consumer, &self.topic, self.partition, cut, REQUEST_TIMEOUT)?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, self.partition, Offset::Offset(start)).map_err(|e| e.to_string())?;
        self.consumer.assign(&tpl).map_err(|e| format!("assign {}: {e}", self.topic))?;
        self.next = start;
        self.batch.clear();
        self.positioned = true;
        self.standby.set_error(None);
        tracing::info!(topic = %self.topic, partition = self.partition, cut, offset = start, "standby: reading the replica from the batch after its cut");
        Ok(())
    }

    /// Starts a sync: with `progress`, the written cut first (for the lag and a check), then the
    /// high watermark, so that every batch up to that cut is below it. A query's sync needs only
    /// the high watermark: the active claims a cut only once its batch is acknowledged, so every
    /// cut claimed before the sync started lies below it.
    fn start_sync(&mut self, progress: bool) {
        let number = self.standby.started.fetch_add(1, Ordering::SeqCst) + 1;
        let t = Instant::now();
        let written = match progress {
            true => {
                self.last_progress = Some(t);
                let group_id = &self.standby.what.group_id;
                let written =
                    squall_feeds::progress::written(&self.session, &self.keyspace, group_id, &self.progress_key);
                self.runtime
                    .block_on(async { tokio::time::timeout(REQUEST_TIMEOUT, written).await })
                    .map_err(|_| "feed_progress did not answer in time".to_owned())
                    .and_then(|r| r.map_err(|e| e.to_string()))
            }
            false => Ok(None),
        };
        let read = written.and_then(|written| {
            let (_, high) = self
                .consumer
                .fetch_watermarks(&self.topic, self.partition, REQUEST_TIMEOUT)
                .map_err(|e| format!("{} [{}] high watermark: {e}", self.topic, self.partition))?;
            Ok((written, high))
        });
        if t.elapsed() > SLOW_REQUESTS {
            tracing::info!(elapsed = ?t.elapsed(), "standby: a sync's requests were slow");
        }
        match read {
            Ok((written, high)) => {
                if let Some(w) = written {
                    self.standby.written.store(w, Ordering::SeqCst);
                }
                self.target = Some(Target { number, written, high });
            }
            Err(e) => {
                tracing::warn!(error = %e, "standby: a sync failed; retrying");
                self.standby.set_error(Some(e));
                self.last_sync = Some(Instant::now());
            }
        }
    }

    /// Completes the sync under way once the partition is read up to its target.
    fn complete_if_reached(&mut self) {
        let Some(t) = &self.target else { return };
        let behind = (t.high - self.next).max(0);
        self.standby.behind.store(behind, Ordering::Relaxed);
        if behind > 0 {
            return;
        }
        if let Some(w) = t.written
            && self.standby.cut.load(Ordering::SeqCst) < w
        {
            // Read up to the high watermark read after the written cut, and still below it: the
            // feed recorded a cut it had not written (it cannot), or the topic was recreated.
            self.standby.set_error(Some(format!("the replica feed recorded cut {w} but the topic ends before it")));
        } else {
            self.standby.set_error(None);
        }
        self.standby.completed.send_replace(t.number);
        self.standby.behind.store(-1, Ordering::Relaxed);
        self.last_sync = Some(Instant::now());
        self.target = None;
    }

    /// Reads what the partition has (up to 256 messages, waiting briefly for the first) and
    /// applies every batch whose marker it read; with `until`, reads nothing at or beyond it.
    /// An error means it must bootstrap again.
    fn read(&mut self, until: Option<i64>) -> Result<(), String> {
        let hurry = self.target.is_some() || self.standby.asked.load(Ordering::Relaxed) || until.is_some();
        let mut timeout = Duration::from_millis(if hurry { 1 } else { 10 });
        for _ in 0..256 {
            if until.is_some_and(|u| self.next >= u) {
                break;
            }
            let Some(m) = self.consumer.poll(timeout) else { break };
            timeout = Duration::ZERO;
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!(error = %e, "standby: replica read error");
                    continue;
                }
            };
            self.next = m.offset() + 1;
            self.standby.messages.fetch_add(1, Ordering::Relaxed);
            let records = match m.payload().map(replica::decode) {
                Some(Ok(r)) => r,
                Some(Err(e)) => return Err(format!("{} @{}: cannot decode: {e}", self.topic, m.offset())),
                None => continue,
            };
            for r in records {
                if let Record::Cut(marker) = r {
                    let batch = std::mem::take(&mut self.batch);
                    if !self.standby.apply(batch, marker)? {
                        return Err("the replica continues from a later checkpoint".into());
                    }
                } else {
                    self.batch.push(r);
                }
            }
        }
        Ok(())
    }

    /// Reads the partition to its end and drops a batch cut short: the active has died, nothing
    /// more comes.
    fn drain(&mut self) -> Result<(), String> {
        let (_, high) = self
            .consumer
            .fetch_watermarks(&self.topic, self.partition, REQUEST_TIMEOUT)
            .map_err(|e| format!("{} [{}] high watermark: {e}", self.topic, self.partition))?;
        let until = Instant::now() + Duration::from_secs(8);
        while self.next < high {
            if Instant::now() > until {
                return Err(format!("{} [{}]: read to {} of {high} in time", self.topic, self.partition, self.next));
            }
            self.read(Some(high))?;
        }
        let dropped = std::mem::take(&mut self.batch).len();
        self.standby.dropped.fetch_add(dropped as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// Sleeps `d` unless `stop` is set; whether it is.
fn wait_or_stop(stop: &AtomicBool, d: Duration) -> bool {
    std::thread::sleep(d);
    stop.load(Ordering::Relaxed)
}

/// What the server sends to make a standby its version's process.
#[derive(Deserialize, Serialize, Debug)]
pub struct TakeOver {
    /// The standby's own launch id (proof that the request comes from its server).
    pub launch_id: String,
    /// The runtime file of the version's process it becomes.
    pub runtime_file: PathBuf,
    /// For a version of several processes: the timely cluster it forms with the other processes'
    /// standbys, asked at the same time (its `process` is the standby's; the HTTP addresses are
    /// the standbys' own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Cluster>,
}

impl TakeOver {
    /// Why `self` cannot make the standby of `what` its version's process, if it cannot.
    fn mismatch(&self, what: &Replicated) -> Option<String> {
        match &self.cluster {
            None if what.processes > 1 => {
                Some(format!("the version has {} processes: the request must give the cluster", what.processes))
            }
            Some(c) if c.process != what.process || c.processes() != what.processes => Some(format!(
                "the cluster names process {} of {}; this standby holds process {} of {}",
                c.process,
                c.processes(),
                what.process,
                what.processes
            )),
            _ => None,
        }
    }
}

/// The answer to a takeover: where it serves as the version's process.
#[derive(Deserialize, Serialize, Debug)]
pub struct TookOver {
    /// Its address (the same as a standby's).
    pub url: String,
    /// The cut it took over at.
    pub cut: Epoch,
    /// Whether it continued from the state it held (else it recovered from the checkpoint).
    pub warm: bool,
    /// Milliseconds from the request to consuming.
    pub elapsed_ms: f64,
}

/// Makes a process of the version, serving at the standby's address (the `String`), from the state
/// handed over: starts its workers and returns the version's router, the cut and whether the state
/// was used (provided by `squall standby`'s main).
pub type Promote =
    Arc<dyn Fn(Warm, TakeOver, String) -> BoxFuture<'static, Result<(Router, Epoch, bool), String>> + Send + Sync>;

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
    /// Its address.
    pub url: OnceLock<String>,
    /// Turns it into a version process.
    pub promote: Promote,
    /// The version's router once it took over.
    pub promoted: OnceLock<Router>,
    /// Whether a takeover has begun.
    pub taking_over: AtomicBool,
}

/// The standby's routes: the attribute read, `/v1/status`, `/v1/take-over`, health and metrics;
/// once it took over, every request goes to the version's routes.
pub fn router(api: Arc<StandbyApi>) -> Router {
    let standby = Router::new()
        .route("/healthz", get(|| async { Json(serde_json::json!({ "status": "ok" })) }))
        .route("/metrics", get(|State(api): State<Arc<StandbyApi>>| async move { api.metrics.render() }))
        .route("/v1/status", get(status))
        .route("/v1/users/{user_id}/attributes", get(attributes))
        .route("/v1/take-over", post(take_over))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "no such endpoint").hint("GET /v1/users/{user_id}/attributes")
        })
        .route_layer(axum::middleware::from_fn(crate::version::http::track_latency))
        .with_state(Arc::clone(&api));
    Router::new().fallback(move |req: Request| {
        let to = api.promoted.get().cloned().unwrap_or_else(|| standby.clone());
        async move { to.oneshot(req).await.into_response() }
    })
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
        users: s.users(),
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
    let t = Instant::now();
    let synced = s.synced().await;
    if t.elapsed() > SLOW_REQUESTS {
        tracing::info!(elapsed = ?t.elapsed(), "standby: a query waited for its sync");
    }
    if !synced {
        let error = s.error.read().unwrap_or_else(|p| p.into_inner()).clone();
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the standby cannot read the replica feed now")
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
    let store = Arc::clone(&s.held().store);
    let body = store.view(&user_id, |attributes| {
        let body = UserAttributesBody {
            user_id: &user_id,
            topology: &w.topology,
            version: w.version,
            group_id: &w.group_id,
            attributes,
            as_of,
        };
        serde_json::to_vec(&body)
    });
    match body {
        Some(Ok(json)) => Ok(crate::version::http::json_answer(json)),
        Some(Err(e)) => {
            Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "cannot serialise the attributes")
                .detail(e.to_string()))
        }
        None => Err(crate::version::http::no_attributes(&w.topology, w.version, &user_id)),
    }
}

/// `POST /v1/take-over`: become the version's process (see the module notes).
async fn take_over(
    State(api): State<Arc<StandbyApi>>,
    body: Result<Json<TakeOver>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => {
            return ApiError::new(StatusCode::BAD_REQUEST, "invalid takeover request")
                .detail(e.body_text())
                .into_response();
        }
    };
    if api.launch_id.as_deref() != Some(req.launch_id.as_str()) {
        return ApiError::new(StatusCode::BAD_REQUEST, "launch_id is not this standby's")
            .hint("only the squall server that started a standby asks it to take over")
            .into_response();
    }
    if let Some(why) = req.mismatch(&api.standby.what) {
        return ApiError::new(StatusCode::BAD_REQUEST, "invalid takeover request").detail(why).into_response();
    }
    if api.taking_over.swap(true, Ordering::SeqCst) {
        return ApiError::new(StatusCode::CONFLICT, "this standby is taking over already").into_response();
    }
    let started = Instant::now();
    let s = Arc::clone(&api.standby);
    let warm = match s.take_state().await {
        Ok(w) => w,
        Err(e) => {
            api.taking_over.store(false, Ordering::SeqCst);
            return ApiError::new(StatusCode::CONFLICT, "the standby cannot take over").detail(e).into_response();
        }
    };
    let held_cut = warm.cut;
    let url = api.url.get().cloned().unwrap_or_default();
    match (api.promote)(warm, req, url.clone()).await {
        Ok((router, cut, warm)) => {
            let _ = api.promoted.set(router);
            let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
            tracing::info!(group_id = %s.what.group_id, held_cut, cut, warm, elapsed_ms, "standby: took over as the version's process");
            // The line people and tests read, like a version's "recovered from checkpoint cut".
            let from = if warm { "from the state it held" } else { "recovered from the checkpoint" };
            println!(
                "squall: {} taken over by its standby at cut {cut} in {elapsed_ms:.0} ms, {from}",
                s.what.group_id
            );
            Json(TookOver { url, cut, warm, elapsed_ms }).into_response()
        }
        // The follower has stopped: this process is neither a standby nor the version now.
        Err(e) => {
            tracing::error!(group_id = %s.what.group_id, error = %e, "standby: the takeover failed; exiting");
            let resp =
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the takeover failed").detail(e).into_response();
            tokio::spawn(async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                std::process::exit(1);
            });
            resp
        }
    }
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
    /// The version's checkpoint directory (as `squall run --checkpoint-dir`).
    #[arg(long)]
    pub checkpoint_dir: Option<PathBuf>,
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
    /// What the standby replicates, the version's settings (the file, then these flags), and
    /// where it reads from.
    pub fn settings(&self) -> anyhow::Result<(Replicated, TopologySpec, Sources)> {
        let mut spec = TopologySpec::load(&self.topology)?;
        if let Some(v) = self.version {
            spec = spec.with_version(v)?;
        }
        anyhow::ensure!((1..=64).contains(&self.processes), "--processes {}: use 1..=64", self.processes);
        anyhow::ensure!(self.process < self.processes, "--process {}: use 0..{}", self.process, self.processes);
        let workers = self.workers.unwrap_or(spec.runtime.workers);
        anyhow::ensure!((1..=256).contains(&workers), "--workers {workers}: use 1..=256");
        spec.runtime.workers = workers;
        if let Some(b) = &self.brokers {
            spec.kafka.brokers.clone_from(b);
        }
        if let Some(c) = &self.cql {
            spec.cql.nodes.clone_from(c);
        }
        if let Some(d) = &self.checkpoint_dir {
            spec.state.checkpoint_dir = Some(d.clone());
        }
        anyhow::ensure!(
            spec.state.checkpoints() != squall_topologies::spec::CheckpointTarget::None,
            "{}: a standby bootstraps from the version's checkpoints; set state.checkpoint_dir (or --checkpoint-dir) \
             or state.checkpoint_store = \"cql\"",
            spec.group_id()
        );
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
            brokers: spec.kafka.brokers.clone(),
            cql: spec.cql.nodes.clone(),
            keyspace: spec.cql.keyspace.clone(),
        };
        Ok((what, spec, sources))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TopologySpec {
        TopologySpec::from_toml("name = \"p\"\nversion = 1\nattributes = \"personalization_v1\"\n").unwrap()
    }

    fn what(process: usize) -> Replicated {
        Replicated {
            topology: "p".into(),
            version: 1,
            group_id: "p-v1".into(),
            process,
            processes: 1,
            workers: 2,
            epoch: Duration::from_secs(1),
        }
    }

    fn marker(from: Epoch, cut: Epoch) -> Record {
        Record::Cut(Marker { from, cut, watermark: cut as i64 * 1000, bucket_ms: 1000, offsets: Vec::new() })
    }

    fn user(s: &Standby, name: &str) -> Record {
        let state = UserState::default();
        Record::User(name.into(), state.snapshot(&s.plan, &s.symbols))
    }

    fn apply(s: &Standby, mut records: Vec<Record>) -> bool {
        let Some(Record::Cut(m)) = records.pop() else { panic!("a batch ends with its marker") };
        s.apply(records, m).unwrap()
    }

    #[test]
    fn a_batch_moves_the_cut_and_its_users_and_one_from_beyond_the_cut_asks_for_a_bootstrap() {
        let s = Standby::new(what(0), spec()).unwrap();
        assert!(apply(&s, vec![user(&s, "a"), user(&s, "b"), marker(0, 3)]));
        assert_eq!((s.cut.load(Ordering::SeqCst), s.users()), (3, 2));
        assert!(apply(&s, vec![Record::Expired("a".into()), marker(3, 4)]));
        assert_eq!((s.cut.load(Ordering::SeqCst), s.users()), (4, 1));
        // A batch it has already: nothing changes.
        assert!(apply(&s, vec![user(&s, "z"), marker(2, 4)]));
        assert_eq!(s.users(), 1);
        // A batch from a later cut than its own: it must bootstrap again, and applies nothing.
        assert!(!apply(&s, vec![user(&s, "c"), marker(6, 7)]));
        assert_eq!((s.cut.load(Ordering::SeqCst), s.users()), (4, 1));
        // A batch from an earlier cut than its own (it bootstrapped past the batch's start).
        assert!(apply(&s, vec![user(&s, "d"), marker(2, 5)]));
        assert_eq!((s.cut.load(Ordering::SeqCst), s.users()), (5, 2));
    }

    #[test]
    fn dedup_ids_are_kept_by_key_group_and_bucket_and_forgotten_past_the_horizon() {
        let s = Standby::new(what(0), spec()).unwrap();
        let ids = |bucket| Record::Ids(DedupRun { key_group: 1, bucket, ids: vec![Fingerprint::default()] });
        assert!(apply(&s, vec![ids(1), ids(1), ids(2), marker(0, 3)]));
        let warm = s.held().warm();
        assert_eq!(warm.dedup.iter().map(|r| (r.bucket, r.ids.len())).collect::<Vec<_>>(), vec![(1, 2), (2, 1)]);
        assert_eq!((warm.cut, warm.watermark, warm.bucket_ms), (3, 3000, 1000));
        // The watermark moves BUCKETS buckets past bucket 1 and 2: both go.
        assert!(apply(&s, vec![ids(20), marker(3, 20)]));
        assert_eq!(s.held().warm().dedup.iter().map(|r| r.bucket).collect::<Vec<_>>(), vec![20]);
    }
}
