//! Starts one topology version in this process, in named steps: the [`Layout`] of its workers,
//! connect to the store and find the input partitions, open the checkpoints, recover, choose the
//! start offsets, configure timely, build the dataflow. A [`StartError`] names the step that failed.

mod committer;
mod connect;
mod preload;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ops::Range;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use squall_enrichment::{CatalogueError, CqlCatalogue, Enricher, Symbols};
use squall_operators::checkpoint::{self, CheckpointError, CheckpointStore, Part, RecoveryScope};
use squall_operators::checkpoint_cql::CqlCheckpoints;
use squall_operators::checkpoint_dir::CheckpointDir;
use squall_operators::source::epoch_now;
use squall_operators::watermark::{Report, Watermark};
use squall_operators::{
    Alignment, CheckpointHook, ConsumeKafka, DeadLetterTo, DecodeLimits, Epoch, EventKind, KeyGroups, Partition, Plan,
    Restore, SourceConfig, UserState, UserStore,
};
use squall_topologies::TopologySpec;
use squall_topologies::personalization::{self, Context};
use squall_topologies::spec::CheckpointTarget;
use timely::communication::WorkerGuards;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::{Exchange, Inspect, Probe};

pub use self::committer::CommitterError;
use crate::version::counters::BackfillRun;
use squall_feeds::Feeds;
use squall_feeds::changelog::ChangelogSink;
use squall_feeds::profile::ProfileSink;
use squall_operators::backfill::Backfill;
use squall_operators::source::BackfillProgress;

use crate::kafka::{self, Inputs, KafkaSetupError};
use crate::version::cluster::Cluster;
use crate::version::counters::DeadLetters;
use crate::version::freshness::{self, Freshness, NO_WATERMARK};

/// Why a topology could not start, by step. The message names the step; the cause is its source
/// (print with `{:#}` through anyhow, or walk `source()`).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Connecting to the CQL store failed (unreachable, or the schema is missing).
    #[error("connect to the CQL store")]
    Connect(#[source] CatalogueError),
    /// The input partitions could not be found (Kafka unreachable, or a topic missing).
    #[error("find the input partitions")]
    Partitions(#[source] KafkaSetupError),
    /// The checkpoint store could not be opened.
    #[error("open the checkpoint store")]
    OpenCheckpoints(#[source] CheckpointError),
    /// The latest complete checkpoint could not be read back.
    #[error("recover from the latest checkpoint")]
    Recover(#[source] CheckpointError),
    /// `state.key_groups` is out of range.
    #[error("state.key_groups: {0}")]
    KeyGroups(squall_operators::key_groups::KeyGroupsError),
    /// The offset committer could not start.
    #[error("start the offset committer")]
    Committer(#[source] CommitterError),
    /// The offsets of `kafka.start_from_group` could not be read.
    #[error("read the offsets group {group} committed")]
    StartOffsets {
        /// The group.
        group: String,
        /// Why.
        #[source]
        source: Box<KafkaSetupError>,
    },
    /// The archive to backfill from cannot be read, or does not reach the offsets Kafka holds.
    #[error("backfill: {0}")]
    Backfill(#[source] crate::backfill::CheckError),
    /// An attribute feed could not start (its table, topic or progress).
    #[error("start the attribute feeds: {0}")]
    Feeds(#[source] squall_feeds::FeedError),
    /// timely could not start the workers or build the dataflow.
    #[error("start the timely workers: {0}")]
    Dataflow(String),
    /// A blocking step's thread failed.
    #[error("{step}: {error}")]
    Blocking {
        /// Which step.
        step: &'static str,
        /// The join error.
        error: String,
    },
}

/// A running topology version.
pub struct Running {
    /// Its specification, after overrides.
    pub spec: TopologySpec,
    /// Where this process's workers are in the version.
    pub layout: Layout,
    /// Its per-user state.
    pub store: Arc<UserStore>,
    /// Its enrichment service.
    pub enricher: Enricher,
    /// Records it sent to the dead-letter topics.
    pub dead_letters: Arc<DeadLetters>,
    /// The cut the state was recovered from, if any.
    pub recovered_cut: Option<Epoch>,
    /// Its attribute feeds, if any is on.
    pub feeds: Option<Arc<Feeds>>,
    /// Its backfill from an archive, if it has one.
    pub backfill: Option<BackfillRun>,
    /// The cuts its workers publish, and the delays of the events they make visible.
    pub freshness: Arc<Freshness>,
    shutdown: Arc<AtomicBool>,
    guards: WorkerGuards<Result<(), WorkerError>>,
    /// The threads that take the workers' parts: the tee to the feeds, then the checkpoint writer.
    writers: Vec<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Asks the workers to stop reading; they finish what is in flight and exit.
    pub fn shutdown(&self) {
        self.shutdown.store(true, Relaxed);
    }

    /// Waits for every worker to exit; the first worker error, if any.
    pub fn join(self) -> Result<(), WorkerError> {
        let result = self
            .guards
            .join()
            .into_iter()
            .map(|r| r.map_err(WorkerError::Panicked).and_then(|w| w))
            .collect::<Result<Vec<()>, WorkerError>>()
            .map(|_| ());
        for writer in self.writers {
            let _ = writer.join();
        }
        if let Some(feeds) = self.feeds {
            // What is complete goes out before the process exits.
            feeds.stop(FEED_GRACE);
        }
        result
    }
}

/// Why a worker stopped with an error; the message is its cause's own.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Its Kafka source could not be built.
    #[error(transparent)]
    Source(#[from] squall_operators::source::SourceError),
    /// Its dead-letter producer could not be created.
    #[error(transparent)]
    DeadLetters(#[from] rdkafka::error::KafkaError),
    /// It panicked (timely's message).
    #[error("{0}")]
    Panicked(String),
}

/// How long a stopping version waits for its feeds to write the cuts that are complete.
const FEED_GRACE: Duration = Duration::from_secs(10);

/// Where this process's workers sit among a version's: timely numbers workers process by
/// process, so process `p` runs workers `p * workers .. (p + 1) * workers` of `workers * processes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Worker threads per process.
    pub workers: usize,
    /// This process's index.
    pub process: usize,
    /// Processes of the version.
    pub processes: usize,
}

impl Layout {
    /// `workers` threads in this process, alone or as process `cluster.process` of a cluster.
    pub fn new(workers: usize, cluster: Option<&Cluster>) -> Layout {
        let (process, processes) = cluster.map(|c| (c.process, c.processes())).unwrap_or((0, 1));
        Layout { workers, process, processes }
    }

    /// Workers of every process.
    pub fn peers(&self) -> usize {
        self.workers * self.processes
    }

    /// The workers this process runs.
    pub fn local(&self) -> Range<usize> {
        self.process * self.workers..(self.process + 1) * self.workers
    }

    /// Process 0 alone tidies what belongs to no key group in a version's checkpoints (marks of
    /// incomplete cuts, a directory store's files); each process compacts its own key groups.
    pub fn tidies(&self) -> bool {
        self.process == 0
    }
}

/// The state of a version's process that a standby held, handed over to continue from
/// ([`take_over`]): what [`CheckpointStore::recover`] would give at `cut`.
pub struct Warm {
    /// Every user of the process, in the store its workers will use.
    pub store: Arc<UserStore>,
    /// The cut it is at.
    pub cut: Epoch,
    /// The event-time watermark at the cut (`i64::MIN`: none).
    pub watermark: i64,
    /// Event-time milliseconds per dedup bucket (0: none).
    pub bucket_ms: i64,
    /// The next offset of each input partition at the cut.
    pub offsets: BTreeMap<Partition, i64>,
    /// The retained dedup ids of the process's key groups.
    pub dedup: Vec<squall_operators::checkpoint::DedupRun>,
}

/// Connects to the store and brokers named by `spec` and starts its workers on this process, alone
/// or as process `cluster.process` of a timely cluster. Lookups run on `runtime`.
pub async fn start(
    spec: TopologySpec,
    runtime: tokio::runtime::Handle,
    cluster: Option<Cluster>,
) -> Result<Running, StartError> {
    launch(spec, runtime, cluster, None).await.map(|(running, _)| running)
}

/// Starts the workers of a version's process from the state a standby held, without reading it
/// back from the checkpoint store: the store is told to continue from the state's cut
/// ([`CheckpointStore::resume`]). If the store's latest complete cut is another (the process died
/// after completing a cut and before its replica feed wrote it), the state is dropped and the
/// process recovers from the checkpoint as [`start`] does. In a cluster (`cluster`, every process
/// taken over by its standby at once) each process decides so alone: all continue from the same
/// latest complete cut, some from the state they held, others from the checkpoint. The running
/// version, and whether the held state was used.
pub async fn take_over(
    spec: TopologySpec,
    runtime: tokio::runtime::Handle,
    warm: Warm,
    cluster: Option<Cluster>,
) -> Result<(Running, bool), StartError> {
    launch(spec, runtime, cluster, Some(warm)).await
}

async fn launch(
    spec: TopologySpec,
    runtime: tokio::runtime::Handle,
    cluster: Option<Cluster>,
    warm: Option<Warm>,
) -> Result<(Running, bool), StartError> {
    let layout = Layout::new(spec.runtime.workers, cluster.as_ref());
    let group_id = spec.group_id();
    let catalogue = CqlCatalogue::connect(&spec.cql.nodes, &spec.cql.keyspace).await.map_err(StartError::Connect)?;
    let session = Arc::clone(catalogue.session());
    let partitions = input_partitions(&spec).await?;

    let key_groups = KeyGroups::new(spec.state.key_groups).map_err(StartError::KeyGroups)?;
    let checkpoint_store = open_checkpoints(&spec, Arc::clone(&session), &group_id, &runtime).await?;
    // A standby's state, if the checkpoint store is where it was.
    let (warm, checkpoint_store) = match warm {
        None => (None, checkpoint_store),
        Some(w) => resume(w, checkpoint_store, &layout, &group_id).await?,
    };
    let store = match &warm {
        Some(w) => Arc::clone(&w.store),
        None => {
            let symbols = Symbols::default();
            // The declaration, compiled once for this process's workers.
            let plan = Arc::new(Plan::compile(&spec.attributes, &symbols));
            Arc::new(
                UserStore::with_key_groups(plan, symbols, layout.peers(), key_groups)
                    .with_user_ttl(spec.state.user_ttl.as_millis() as i64),
            )
        }
    };
    let symbols = store.symbols().clone();
    let enricher = Enricher::new(Arc::new(catalogue), symbols, spec.enrichment.clone(), runtime.clone());
    let shutdown = Arc::new(AtomicBool::new(false));
    if spec.enrichment.preload {
        preload::preload_catalogue(&enricher, &group_id, Arc::clone(&shutdown), &runtime).await;
    }

    let feeds = start_feeds(&spec, &store, session, &layout, checkpoint_store.is_none(), &runtime).await?;
    let used_warm = warm.is_some();
    let (recovery, writer) = match (checkpoint_store, warm) {
        (None, None) => (Recovery::default(), None),
        (None, Some(w)) => (Recovery::of(w, &layout, feeds.as_deref()), None),
        (Some(ckpt), None) => {
            let (ckpt, recovery) = recover(ckpt, &layout, &store, &group_id, feeds.as_deref()).await?;
            let writer = start_writer(ckpt, &spec, &layout, feeds.clone())?;
            (recovery, Some(writer))
        }
        (Some(ckpt), Some(w)) => {
            let recovery = Recovery::of(w, &layout, feeds.as_deref());
            let writer = start_writer(ckpt, &spec, &layout, feeds.clone())?;
            (recovery, Some(writer))
        }
    };
    let parts = tee_parts(writer, feeds.clone()).map_err(|e| StartError::Dataflow(e.to_string()))?;
    let resume_at = start_offsets(&spec, &partitions, &recovery).await?;
    let backfilled = Arc::new(BackfillProgress::default());
    let (backfill, backfill_run) = open_backfill(&spec, &layout, &partitions, &resume_at, &backfilled).await?;
    let start_epoch = recovery.cut.unwrap_or(0).max(epoch_now(spec.state.epoch));
    let recovery_cut = recovery.cut;
    let freshness = recovery.freshness(&spec, layout.workers);
    let dead_letters = Arc::new(DeadLetters::default());
    let pending = Arc::new(AtomicUsize::new(0));
    let dataflow = Dataflow {
        source: SourceConfig {
            brokers: spec.kafka.brokers.clone(),
            group_id: group_id.clone(),
            partitions,
            resume_at,
            start_from: spec.kafka.start_from,
            limits: DecodeLimits { max_message_bytes: spec.kafka.max_message_bytes, ..Default::default() },
            epoch_interval: spec.state.epoch,
            max_batch: 4096,
            pending: Arc::clone(&pending),
            max_pending: spec.runtime.max_pending,
            shutdown: Arc::clone(&shutdown),
            properties: spec.kafka.consumer.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            alignment: Arc::new(Alignment::new(spec.state.alignment_ms())),
            idle_after: spec.state.idle_after,
            backfill,
            backfilled: Arc::clone(&backfilled),
        },
        dlq_suffix: spec.kafka.dlq_suffix.clone(),
        ctx: Context {
            enricher: enricher.clone(),
            store: Arc::clone(&store),
            pending,
            dedup_horizon_ms: spec.state.dedup_horizon.as_millis() as i64,
        },
        checkpoints: parts
            .as_ref()
            .map(|w| CheckpointParts { parts: w.parts.clone(), restore: Mutex::new(recovery.restore) }),
        start_epoch,
        dead_letters: Arc::clone(&dead_letters),
        freshness: Arc::clone(&freshness),
        first_worker: layout.local().start,
        watermark: recovery.watermark,
    };
    tracing::info!(group_id = %group_id, workers = layout.workers, process = layout.process, processes = layout.processes, partitions = dataflow.source.partitions.len(), recovered_cut = ?recovery_cut, start_epoch = dataflow.start_epoch, "starting workers");
    let guards = build_dataflow(layout.workers, cluster.as_ref(), dataflow)?;
    let running = Running {
        spec,
        layout,
        store,
        enricher,
        dead_letters,
        recovered_cut: recovery.cut,
        feeds,
        backfill: backfill_run,
        freshness,
        shutdown,
        guards,
        writers: parts.map(|w| w.threads).unwrap_or_default(),
    };
    Ok((running, used_warm))
}

/// Step (a takeover): tells the checkpoint store to continue from the held state's cut, or, when
/// its latest complete cut is another, drops the state (`None`: recover as a restart does). Only
/// the latest complete cut is read here; what lies beyond it is deleted by the checkpoint writer
/// before its first write ([`ResumeFirst`]), so the workers need not wait for it.
async fn resume(
    warm: Warm,
    checkpoint_store: Option<Box<dyn CheckpointStore>>,
    layout: &Layout,
    group_id: &str,
) -> Result<(Option<Warm>, Option<Box<dyn CheckpointStore>>), StartError> {
    let Some(mut ckpt) = checkpoint_store else { return Ok((Some(warm), None)) };
    let scope = RecoveryScope {
        key_groups: warm.store.key_groups(),
        peers: layout.peers(),
        local: layout.local(),
        tidy: layout.tidies(),
    };
    let cut = warm.cut;
    let (ckpt, latest) = tokio::task::spawn_blocking(move || {
        let latest = ckpt.latest_complete();
        (ckpt, latest)
    })
    .await
    .map_err(|e| StartError::Blocking { step: "read the latest complete checkpoint", error: e.to_string() })?;
    let latest = latest.map_err(StartError::Recover)?;
    let resumed = latest == Some(cut) || (latest.is_none() && cut == 0);
    tracing::info!(%group_id, cut, ?latest, resumed, "taking over from a standby's state");
    if !resumed {
        tracing::warn!(%group_id, cut, ?latest, "the checkpoint is not at the held state's cut: recovering from it instead");
        return Ok((None, Some(ckpt)));
    }
    let ckpt: Box<dyn CheckpointStore> = match latest {
        // In a cluster every process resumes before its workers start, as a recovery does: process
        // 0 also deletes the marks of incomplete cuts of every worker, which must not race with
        // another process's first write (none comes before the cluster forms, which waits for
        // process 0's workers).
        Some(cut) if layout.processes > 1 => {
            let mut ckpt = ckpt;
            tokio::task::spawn_blocking(move || ckpt.resume(&scope, cut).map(|()| ckpt))
                .await
                .map_err(|e| StartError::Blocking { step: "resume the checkpoints", error: e.to_string() })?
                .map_err(StartError::Recover)?
        }
        Some(cut) => Box::new(ResumeFirst { inner: ckpt, pending: Some((scope, cut)) }),
        None => ckpt,
    };
    Ok((Some(warm), Some(ckpt)))
}

/// A checkpoint store that is [`resume`](CheckpointStore::resume)d from a cut before anything
/// else is done with it: on the checkpoint writer's thread, before its first write, so that a
/// takeover's workers start at once. A failed resume fails that write, which the writer retries.
struct ResumeFirst {
    inner: Box<dyn CheckpointStore>,
    pending: Option<(RecoveryScope, Epoch)>,
}

impl ResumeFirst {
    fn ensure(&mut self) -> Result<(), CheckpointError> {
        if let Some((scope, cut)) = &self.pending {
            let started = std::time::Instant::now();
            self.inner.resume(scope, *cut)?;
            tracing::info!(cut, elapsed = ?started.elapsed(), store = %self.inner.location(), "checkpoints resumed from the standby's cut");
            self.pending = None;
        }
        Ok(())
    }
}

impl CheckpointStore for ResumeFirst {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn write_parts(&mut self, parts: &[Part]) -> Result<u64, CheckpointError> {
        self.ensure()?;
        self.inner.write_parts(parts)
    }
    fn recover(&mut self, scope: &RecoveryScope) -> Result<Option<checkpoint::Recovered>, CheckpointError> {
        self.pending = None;
        self.inner.recover(scope)
    }
    fn read(&mut self, scope: &RecoveryScope) -> Result<Option<checkpoint::Recovered>, CheckpointError> {
        self.inner.read(scope)
    }
    fn latest_complete(&mut self) -> Result<Option<Epoch>, CheckpointError> {
        self.inner.latest_complete()
    }
    fn resume(&mut self, scope: &RecoveryScope, cut: Epoch) -> Result<(), CheckpointError> {
        self.pending = None;
        self.inner.resume(scope, cut)
    }
    fn is_complete(&mut self, cut: Epoch, peers: usize) -> Result<bool, CheckpointError> {
        self.ensure()?;
        self.inner.is_complete(cut, peers)
    }
    fn compact(&mut self, dedup_horizon_ms: i64) -> Result<Option<(Epoch, usize)>, CheckpointError> {
        self.ensure()?;
        self.inner.compact(dedup_horizon_ms)
    }
}

/// Step: the archive to apply first (`kafka.backfill`), checked against what Kafka still holds
/// from `resume_at` on, and what this process's workers have left to read of it (for the status).
async fn open_backfill(
    spec: &TopologySpec,
    layout: &Layout,
    partitions: &[(Partition, EventKind)],
    resume_at: &BTreeMap<Partition, i64>,
    progress: &Arc<BackfillProgress>,
) -> Result<(Option<Backfill>, Option<BackfillRun>), StartError> {
    let Some(url) = &spec.kafka.backfill else { return Ok((None, None)) };
    let backlog =
        crate::backfill::open(url, &crate::kafka::Inputs::of(spec), resume_at).await.map_err(StartError::Backfill)?;
    let (local, peers) = (layout.local(), layout.peers());
    let (files, records) = partitions
        .iter()
        .enumerate()
        .filter(|(i, _)| local.contains(&(i % peers)))
        .map(|(_, (p, _))| backlog.remaining(p, resume_at.get(p).copied()))
        .fold((0, 0), |(f, r), (f2, r2)| (f + f2, r + r2));
    tracing::info!(group_id = %spec.group_id(), archive = %url, files, records, "backfilling from the archive before reading Kafka");
    let run = BackfillRun { progress: Arc::clone(progress), workers: local.len(), files, records };
    Ok((Some(Backfill { backlog, since_ms: spec.kafka.backfill_since_ms }), Some(run)))
}

/// Step: every partition of the input topics.
async fn input_partitions(spec: &TopologySpec) -> Result<Vec<(Partition, EventKind)>, StartError> {
    let inputs = Inputs::of(spec);
    tokio::task::spawn_blocking(move || inputs.partitions())
        .await
        .map_err(|e| StartError::Blocking { step: "find the input partitions", error: e.to_string() })?
        .map_err(StartError::Partitions)
}

/// Step: the checkpoint store `spec` names, if checkpoints are on.
pub(crate) async fn open_checkpoints(
    spec: &TopologySpec,
    session: Arc<scylla::client::session::Session>,
    group_id: &str,
    runtime: &tokio::runtime::Handle,
) -> Result<Option<Box<dyn CheckpointStore>>, StartError> {
    let store: Box<dyn CheckpointStore> = match spec.state.checkpoints() {
        CheckpointTarget::None => return Ok(None),
        CheckpointTarget::Dir(root) => Box::new(CheckpointDir::open(&root, group_id).map_err(|source| {
            StartError::OpenCheckpoints(CheckpointError::Io { dir: root.display().to_string(), source })
        })?),
        CheckpointTarget::Cql => Box::new(
            CqlCheckpoints::open(session, &spec.cql.keyspace, group_id, runtime.clone())
                .await
                .map_err(StartError::OpenCheckpoints)?,
        ),
    };
    Ok(Some(store))
}

/// What recovery hands on: the cut recovered, where each partition resumes, and what each
/// worker of the version takes back (this process's workers' entries are filled).
struct Recovery {
    cut: Option<Epoch>,
    /// The event-time watermark at the cut (`NO_WATERMARK` without one).
    watermark: i64,
    resume_at: BTreeMap<Partition, i64>,
    restore: Vec<Restore>,
}

impl Recovery {
    /// Where `workers` workers starting from this recovery publish their cuts.
    fn freshness(&self, spec: &TopologySpec, workers: usize) -> Arc<Freshness> {
        Arc::new(Freshness::new(spec.state.epoch, spec.slo.freshness, workers, self.cut, self.watermark))
    }

    /// What a held state gives: as a recovery at its cut.
    fn of(w: Warm, layout: &Layout, feeds: Option<&Feeds>) -> Recovery {
        let key_groups = w.store.key_groups();
        let mut restore = vec![Restore::default(); layout.peers()];
        for worker in layout.local() {
            let covers = key_groups.covering(worker..worker + 1, layout.peers());
            restore[worker] = Restore {
                dedup: w.dedup.iter().filter(|run| covers.contains(&run.key_group)).cloned().collect(),
                bucket_ms: w.bucket_ms,
                watermark: w.watermark,
            };
        }
        if let Some(feeds) = feeds {
            if feeds.behind(w.cut) {
                // The profile or changelog feed wrote less than the cut: it writes every user again.
                let users = snapshots(&w.store);
                feeds.recovered(w.cut, users.iter().map(|(u, s)| (u, s)));
            } else {
                feeds.recovered(w.cut, std::iter::empty());
            }
            feeds.taken_over(w.cut);
        }
        Recovery {
            cut: (w.cut > 0).then_some(w.cut),
            watermark: w.watermark,
            resume_at: w.offsets.into_iter().filter(|(_, o)| *o >= 0).collect(),
            restore,
        }
    }
}

impl Default for Recovery {
    fn default() -> Self {
        Recovery { cut: None, watermark: NO_WATERMARK, resume_at: BTreeMap::new(), restore: Vec::new() }
    }
}

/// Step: reads the key groups this process's workers cover at the latest complete cut into
/// `store` (and each worker's dedup ids into its [`Restore`]), and hands back the store for the
/// writer.
async fn recover(
    mut ckpt: Box<dyn CheckpointStore>,
    layout: &Layout,
    store: &UserStore,
    group_id: &str,
    feeds: Option<&Feeds>,
) -> Result<(Box<dyn CheckpointStore>, Recovery), StartError> {
    let started = std::time::Instant::now();
    let scope = RecoveryScope {
        key_groups: store.key_groups(),
        peers: layout.peers(),
        local: layout.local(),
        tidy: layout.tidies(),
    };
    // Off the runtime's worker threads: the stores block (the CQL one on this same runtime).
    let (ckpt, recovered) = tokio::task::spawn_blocking(move || {
        let recovered = ckpt.recover(&scope);
        (ckpt, recovered)
    })
    .await
    .map_err(|e| StartError::Blocking { step: "recover from the latest checkpoint", error: e.to_string() })?;
    let mut recovery = Recovery { restore: vec![Restore::default(); layout.peers()], ..Recovery::default() };
    let Some(rec) = recovered.map_err(StartError::Recover)? else { return Ok((ckpt, recovery)) };
    let local = layout.local();
    let mut users = 0usize;
    for (user, snapshot) in &rec.users {
        // A key group shared with a neighbouring process at a boundary holds some of its users.
        if local.contains(&store.owner(user)) {
            let state = UserState::restore(snapshot, store.plan(), store.symbols()).map_err(|e| {
                StartError::Recover(CheckpointError::Corrupt {
                    what: format!("user {user:?} of cut {}", rec.cut),
                    message: e.to_string(),
                })
            })?;
            store.map_of(user).insert(user.as_str().into(), state);
            users += 1;
        }
    }
    if let Some(feeds) = feeds {
        feeds.recovered(rec.cut, rec.users.iter().filter(|(u, _)| local.contains(&store.owner(u))));
    }
    let key_groups = store.key_groups();
    let mut ids = 0usize;
    for w in local.clone() {
        let covers = key_groups.covering(w..w + 1, layout.peers());
        let r = &mut recovery.restore[w];
        r.watermark = rec.watermark;
        r.bucket_ms = rec.bucket_ms;
        r.dedup = rec.dedup.iter().filter(|run| covers.contains(&run.key_group)).cloned().collect();
        ids += r.dedup.iter().map(|run| run.ids.len()).sum::<usize>();
    }
    tracing::info!(group_id = %group_id, store = %ckpt.location(), cut = rec.cut, users, dedup_ids = ids, bytes_read = rec.bytes_read, elapsed = ?started.elapsed(), "recovered from checkpoint");
    recovery.resume_at = rec.offsets.into_iter().filter(|(_, o)| *o >= 0).collect();
    recovery.cut = Some(rec.cut);
    recovery.watermark = rec.watermark;
    Ok((ckpt, recovery))
}

/// Every user of `store` with their snapshot.
fn snapshots(store: &UserStore) -> Vec<(String, squall_operators::UserSnapshot)> {
    let (plan, symbols) = (store.plan(), store.symbols());
    store
        .maps_covering(0..store.key_groups().count())
        .iter()
        .flat_map(|map| {
            map.iter().map(|e| (e.key().to_string(), e.value().snapshot(plan, symbols))).collect::<Vec<_>>()
        })
        .collect()
}

/// Where the workers' parts go, and the threads that take them.
struct Parts {
    parts: crossbeam_channel::Sender<Part>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Step: the checkpoint writer, committing each complete cut's offsets and telling the feeds.
fn start_writer(
    ckpt: Box<dyn CheckpointStore>,
    spec: &TopologySpec,
    layout: &Layout,
    feeds: Option<Arc<Feeds>>,
) -> Result<Parts, StartError> {
    let group_id = spec.group_id();
    let mut committer = committer::offset_committer(&spec.kafka.brokers, &group_id).map_err(StartError::Committer)?;
    let on_complete = move |cut: Epoch, offsets: &[(Partition, i64)]| {
        committer(cut, offsets);
        if let Some(feeds) = &feeds {
            feeds.complete(cut);
        }
    };
    let (parts, thread) = checkpoint::spawn_writer(
        ckpt,
        group_id,
        checkpoint::Layout { local: layout.workers, global: layout.peers(), compacts: true },
        spec.state.compact_every,
        spec.state.dedup_horizon.as_millis() as i64,
        on_complete,
    );
    Ok(Parts { parts, threads: vec![thread] })
}

/// Step: the attribute feeds the topology turns on. Without a checkpoint store
/// (`complete_on_parts`), a cut is complete for the feeds once this process's workers produced it.
async fn start_feeds(
    spec: &TopologySpec,
    store: &UserStore,
    session: Arc<scylla::client::session::Session>,
    layout: &Layout,
    complete_on_parts: bool,
    runtime: &tokio::runtime::Handle,
) -> Result<Option<Arc<Feeds>>, StartError> {
    let f = &spec.feed;
    let standbys = spec.runtime.standbys > 0;
    if !f.any() && !standbys {
        return Ok(None);
    }
    let version = squall_feeds::Version {
        topology: spec.name.clone(),
        version: spec.version,
        group_id: spec.group_id(),
        plan: Arc::clone(store.plan()),
        symbols: store.symbols().clone(),
        share: (layout.process, layout.processes),
    };
    let keyspace = &spec.cql.keyspace;
    let mut sinks: Vec<(Box<dyn squall_feeds::Sink>, Option<Epoch>)> = Vec::new();
    if f.profile {
        let (sink, written) =
            ProfileSink::open(version.clone(), Arc::clone(&session), keyspace, f.max_in_flight, runtime.clone())
                .await
                .map_err(StartError::Feeds)?;
        sinks.push((Box::new(sink), written));
    }
    if f.changelog {
        let (sink, written) = ChangelogSink::open(
            version,
            &spec.kafka.brokers,
            f.changelog_partitions,
            f.changelog_replication,
            Arc::clone(&session),
            keyspace,
            runtime.clone(),
        )
        .await
        .map_err(StartError::Feeds)?;
        sinks.push((Box::new(sink), written));
    }
    let thread_error = |e: std::io::Error| StartError::Dataflow(format!("cannot start the feed threads: {e}"));
    let mut feeds =
        Feeds::start(sinks, complete_on_parts.then_some(layout.workers), f.deadline).map_err(thread_error)?;
    if standbys {
        let (writer, written) = squall_feeds::replica::TopicWriter::open(
            &spec.kafka.brokers,
            &spec.group_id(),
            (layout.process, layout.processes),
            f.changelog_replication,
            session,
            keyspace,
            runtime.clone(),
        )
        .await
        .map_err(StartError::Feeds)?;
        let replica = squall_feeds::replica::Replica::start(
            Box::new(writer),
            written,
            complete_on_parts.then_some(layout.workers),
            f.deadline,
        )
        .map_err(thread_error)?;
        feeds = feeds.with_replica(replica);
    }
    tracing::info!(group_id = %spec.group_id(), profile = f.profile, changelog = f.changelog, replica = standbys, "attribute feeds started");
    Ok(Some(Arc::new(feeds)))
}

/// Step: where the workers send their parts: straight to the checkpoint writer, or, with feeds,
/// through a thread that hands the feeds a copy first. `None` when neither is on.
fn tee_parts(writer: Option<Parts>, feeds: Option<Arc<Feeds>>) -> std::io::Result<Option<Parts>> {
    let Some(feeds) = feeds else { return Ok(writer) };
    let (tx, rx) = crossbeam_channel::unbounded::<Part>();
    let (to_writer, mut threads) = match writer {
        Some(w) => (Some(w.parts), w.threads),
        None => (None, Vec::new()),
    };
    let tee = std::thread::Builder::new().name("feed-tee".into()).spawn(move || {
        for part in rx {
            feeds.part(&part);
            if let Some(w) = &to_writer
                && w.send(part).is_err()
            {
                tracing::error!("checkpoint writer is gone; parts go to the feeds only");
            }
        }
    })?;
    // The tee first: it ends when the workers are done, and its end closes the writer's channel.
    threads.insert(0, tee);
    Ok(Some(Parts { parts: tx, threads }))
}

/// Step: where each partition starts. A recovered cut's offsets; without a checkpoint, the
/// offsets `kafka.start_from_group` committed, if it is set; otherwise none (`kafka.start_from`).
async fn start_offsets(
    spec: &TopologySpec,
    partitions: &[(Partition, EventKind)],
    recovery: &Recovery,
) -> Result<BTreeMap<Partition, i64>, StartError> {
    let from = match (&recovery.cut, &spec.kafka.start_from_group) {
        (Some(_), _) => return Ok(recovery.resume_at.clone()),
        (None, None) => return Ok(BTreeMap::new()),
        (None, Some(from)) => from.clone(),
    };
    let brokers = spec.kafka.brokers.clone();
    let wanted: Vec<Partition> = partitions.iter().map(|(p, _)| p.clone()).collect();
    let group = from.clone();
    let resume_at = tokio::task::spawn_blocking(move || {
        kafka::committed(&kafka::group_reader(&brokers, &group)?, &brokers, &wanted)
    })
    .await
    .map_err(|e| StartError::Blocking { step: "read the start offsets", error: e.to_string() })?
    .map_err(|source| StartError::StartOffsets { group: from.clone(), source: Box::new(source) })?;
    tracing::info!(group_id = %spec.group_id(), from = %from, partitions = resume_at.len(), "starting at another group's committed offsets");
    Ok(resume_at)
}

/// Every source worker's event-time progress, folded on this worker into the watermark the
/// freshness of its cuts is told with (the same fold as the maintaining workers'; an exchange of
/// a few reports per epoch, nothing per event).
fn event_clock<'scope>(
    progress: timely::dataflow::Stream<'scope, Epoch, Vec<Report>>,
    peers: usize,
    restored: i64,
) -> Rc<RefCell<Watermark>> {
    let clock = Rc::new(RefCell::new(Watermark::new(peers, restored)));
    let fold = Rc::clone(&clock);
    progress.exchange(|(to, _)| u64::from(*to)).sink(Pipeline, "EventClock", move |(input, _)| {
        input.for_each(|time, reports| {
            if let Some(epoch) = time.least().copied() {
                fold.borrow_mut().receive(epoch, reports.drain(..));
            }
        });
    });
    clock
}

/// What every worker's dataflow is built from.
struct Dataflow {
    source: SourceConfig,
    dlq_suffix: String,
    ctx: Context,
    checkpoints: Option<CheckpointParts>,
    start_epoch: Epoch,
    dead_letters: Arc<DeadLetters>,
    /// Where the workers publish the cuts they see.
    freshness: Arc<Freshness>,
    /// The index of this process's first worker.
    first_worker: usize,
    /// The recovered watermark (`NO_WATERMARK`: none).
    watermark: i64,
}

/// Where checkpoint parts go, and what each worker takes back from the recovered cut (each takes its own).
struct CheckpointParts {
    parts: crossbeam_channel::Sender<Part>,
    restore: Mutex<Vec<Restore>>,
}

/// Step: starts the workers and builds the dataflow on each; in a cluster this returns once
/// every process has connected.
fn build_dataflow(
    workers: usize,
    cluster: Option<&Cluster>,
    d: Dataflow,
) -> Result<WorkerGuards<Result<(), WorkerError>>, StartError> {
    let stop = Arc::clone(&d.source.shutdown);
    connect::execute(workers, cluster, move |worker| {
        let built = worker.dataflow::<Epoch, _, _>(|scope| {
            let source = scope.consume_kafka(&d.source, d.start_epoch)?;
            let counts = Arc::clone(&d.dead_letters);
            source
                .dead
                .inspect(move |letter| counts.record(letter.reason))
                .dead_letter_to(&d.source.brokers, &d.dlq_suffix)?;
            let hook = d.checkpoints.as_ref().map(|c| CheckpointHook {
                offsets: source.offsets,
                parts: c.parts.clone(),
                // No recovery (no checkpoint store, only feeds): nothing to restore.
                restore: c
                    .restore
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_mut(scope.index())
                    .map(std::mem::take)
                    .unwrap_or_default(),
                first_epoch: d.start_epoch,
            });
            let clock = event_clock(source.progress.clone(), scope.peers(), d.watermark);
            let (probe, _) = personalization::dataflow(source.events, source.progress, &d.ctx, hook).probe();
            Ok::<_, WorkerError>((probe, clock))
        });
        let (probe, clock) = built.inspect_err(|e| {
            tracing::error!(worker = worker.index(), error = %e, "cannot build the dataflow");
            stop.store(true, Relaxed);
        })?;
        let (slot, counts) = (worker.index() - d.first_worker, Arc::clone(&d.ctx.store));
        let (mut applied, mut seen) = (counts.worker_counts(worker.index()).0, 0);
        while !probe.done() {
            worker.step_or_park(Some(Duration::from_secs(1)));
            // Once per step, not per event: whether the frontier passed another epoch.
            if let Some(cut) = probe.with_frontier(|f| f.first().copied())
                && cut > seen
            {
                seen = cut;
                let now = counts.worker_counts(worker.index()).0;
                let watermark = clock.borrow_mut().before(cut);
                d.freshness.publish(slot, cut, watermark, now - applied, freshness::now_ms());
                applied = now;
            }
        }
        Ok(())
    })
    .map_err(StartError::Dataflow)
}
