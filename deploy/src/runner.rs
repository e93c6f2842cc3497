//! Starts one topology version: connects to the store and the brokers, then runs its timely workers.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use squall_enrichment::{CatalogueError, CqlCatalogue, Enricher, Symbols};
use squall_operators::checkpoint::{self, CheckpointDir, CheckpointError, CheckpointStore};
use squall_operators::checkpoint_cql::CqlCheckpoints;
use squall_operators::source::epoch_now;
use squall_operators::{
    CheckpointHook, ConsumeKafka, DeadLetterTo, DecodeLimits, Epoch, EventKind, Partition, SourceConfig, UserState,
    UserStore,
};
use squall_topologies::TopologySpec;
use squall_topologies::personalization::{self, Context};
use squall_topologies::spec::CheckpointTarget;
use timely::communication::WorkerGuards;
use timely::dataflow::operators::{Inspect, Probe};

use crate::cluster::Cluster;
use crate::counters::DeadLetters;
use crate::kafka::{self, KafkaSetupError};

/// Why a topology could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The CQL store is unreachable or lacks the schema.
    #[error(transparent)]
    Store(#[from] CatalogueError),
    /// Kafka is unreachable or lacks a topic.
    #[error(transparent)]
    Kafka(#[from] KafkaSetupError),
    /// timely could not start its workers.
    #[error("cannot start timely workers: {0}")]
    Workers(String),
    /// The checkpoint store cannot be opened, read or written.
    #[error("cannot recover from checkpoints: {0}")]
    Checkpoint(#[from] CheckpointError),
}

/// A running topology version.
pub struct Running {
    /// Its specification, after overrides.
    pub spec: TopologySpec,
    /// Its per-user state.
    pub store: Arc<UserStore>,
    /// Its enrichment service.
    pub enricher: Enricher,
    /// Events in enrichment.
    pub pending: Arc<AtomicUsize>,
    /// The cut the state was recovered from, if any.
    pub recovered_cut: Option<Epoch>,
    /// Records it sent to the dead-letter topics.
    pub dead_letters: Arc<DeadLetters>,
    /// The workers this process runs.
    pub local: std::ops::Range<usize>,
    shutdown: Arc<AtomicBool>,
    guards: WorkerGuards<Result<(), String>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Asks the workers to stop reading; they finish what is in flight and exit.
    pub fn shutdown(&self) {
        self.shutdown.store(true, Relaxed);
    }

    /// Waits for every worker to exit; the first worker error, if any.
    pub fn join(self) -> Result<(), String> {
        let result =
            self.guards.join().into_iter().map(|r| r.and_then(|w| w)).collect::<Result<Vec<()>, String>>().map(|_| ());
        if let Some(writer) = self.writer {
            let _ = writer.join();
        }
        result
    }
}

/// Warms the enrichment cache with the whole catalogue before the dataflow starts (`preload`),
/// then reloads it every half `cache_ttl` in the background so that entries are refreshed before
/// they expire. A load that fails or takes longer than the enrichment `deadline` is logged and
/// does not stop anything: lookups then go to the store one id at a time, as without preload.
async fn preload_catalogue(
    enricher: &Enricher,
    group_id: &str,
    stop: Arc<AtomicBool>,
    runtime: &tokio::runtime::Handle,
) {
    async fn load(enricher: &Enricher, group_id: &str) {
        let started = std::time::Instant::now();
        match tokio::time::timeout(enricher.config().deadline, enricher.preload()).await {
            Ok(Ok(p)) => tracing::info!(
                %group_id, tracks = p.tracks, ads = p.ads, truncated = p.truncated,
                seconds = started.elapsed().as_secs_f64(), "catalogue preloaded into the enrichment cache"
            ),
            Ok(Err(error)) => {
                tracing::warn!(%group_id, %error, "catalogue preload failed; ids are looked up one at a time")
            }
            Err(_) => tracing::warn!(
                %group_id, deadline = ?enricher.config().deadline,
                "catalogue preload did not finish within the enrichment deadline; ids are looked up one at a time"
            ),
        }
    }
    load(enricher, group_id).await;
    let (enricher, group_id) = (enricher.clone(), group_id.to_owned());
    let every = (enricher.config().cache_ttl / 2).max(Duration::from_secs(1));
    runtime.spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            if stop.load(Relaxed) {
                return;
            }
            load(&enricher, &group_id).await;
        }
    });
}

/// Connects to the store and brokers named by `spec` and starts its workers on this process, alone
/// or as process `cluster.process` of a timely cluster. Lookups run on `runtime`.
pub async fn start(
    spec: TopologySpec,
    runtime: tokio::runtime::Handle,
    cluster: Option<Cluster>,
) -> Result<Running, StartError> {
    let catalogue = CqlCatalogue::connect(&spec.cql.nodes, &spec.cql.keyspace).await?;
    let session = Arc::clone(catalogue.session());
    let topics = vec![
        (spec.kafka.song_completions.clone(), EventKind::Song),
        (spec.kafka.ad_impressions.clone(), EventKind::Ad),
    ];
    let brokers = spec.kafka.brokers.clone();
    let partitions = tokio::task::spawn_blocking(move || kafka::partitions(&brokers, &topics))
        .await
        .map_err(|e| StartError::Workers(e.to_string()))??;

    let workers = spec.runtime.workers;
    // Workers are numbered process by process; this process runs `local`, out of `peers` in all.
    let (process, processes) = cluster.as_ref().map(|c| (c.process, c.processes())).unwrap_or((0, 1));
    let peers = workers * processes;
    let local = process * workers..(process + 1) * workers;
    let symbols = Symbols::default();
    let enricher = Enricher::new(Arc::new(catalogue), symbols.clone(), spec.enrichment.clone(), runtime.clone());
    let store = Arc::new(UserStore::new(spec.attributes, symbols.clone(), peers));
    let pending = Arc::new(AtomicUsize::new(0));
    let shutdown = Arc::new(AtomicBool::new(false));
    let group_id = spec.group_id();
    if spec.enrichment.preload {
        preload_catalogue(&enricher, &group_id, Arc::clone(&shutdown), &runtime).await;
    }
    let dedup_horizon_ms = spec.state.dedup_horizon.as_millis() as i64;

    // Recover from the latest complete checkpoint, if checkpoints are on and there is one.
    let mut resume_at = std::collections::BTreeMap::new();
    let mut first_epoch = 0;
    let mut recovered_cut = None;
    let mut checkpoints = None;
    let checkpoint_store: Option<Box<dyn CheckpointStore>> = match spec.state.checkpoints() {
        CheckpointTarget::None => None,
        CheckpointTarget::Dir(root) => Some(Box::new(
            CheckpointDir::open(&root, &group_id)
                .map_err(|source| CheckpointError::Io { dir: root.display().to_string(), source })?,
        )),
        CheckpointTarget::Cql => {
            Some(Box::new(CqlCheckpoints::open(session, &spec.cql.keyspace, &group_id, runtime.clone()).await?))
        }
    };
    if let Some(mut ckpt) = checkpoint_store {
        let mut dedup_shares: Vec<Vec<(u64, u128, i64)>> = vec![Vec::new(); peers];
        let started = std::time::Instant::now();
        // Off the runtime's worker threads: the stores block (the CQL one on this same runtime).
        let (ckpt, recovered) = tokio::task::spawn_blocking(move || {
            // Process 0 tidies what recovery makes redundant; the others only read.
            let recovered = if process == 0 { ckpt.recover() } else { ckpt.recover_shared() };
            (ckpt, recovered)
        })
        .await
        .map_err(|e| StartError::Workers(e.to_string()))?;
        if let Some(rec) = recovered? {
            tracing::info!(group_id = %group_id, store = %ckpt.location(), cut = rec.cut, users = rec.users.len(), dedup_ids = rec.dedup.len(), elapsed = ?started.elapsed(), "recovered from checkpoint");
            // Every process reads the whole cut and keeps what its own workers own.
            for (user, snapshot) in &rec.users {
                let owner = store.owner(user);
                if local.contains(&owner) {
                    store.shard(owner).insert(user.as_str().into(), UserState::restore(snapshot, &symbols));
                }
            }
            for entry in rec.dedup {
                let owner = (entry.0 % peers as u64) as usize;
                if local.contains(&owner) {
                    dedup_shares[owner].push(entry);
                }
            }
            resume_at = rec.offsets.into_iter().filter(|(_, o)| *o >= 0).collect();
            first_epoch = rec.cut;
            recovered_cut = Some(rec.cut);
        }
        let committer = offset_committer(&spec.kafka.brokers, &group_id)?;
        let (tx, writer) = checkpoint::spawn_writer(
            ckpt,
            group_id.clone(),
            // Process 0 alone tidies and compacts a multi-process version's checkpoints.
            checkpoint::Layout { local: workers, global: peers, compacts: process == 0 },
            spec.state.compact_every,
            dedup_horizon_ms,
            committer,
        );
        checkpoints = Some((tx, Arc::new(Mutex::new(dedup_shares)), writer));
    }
    // A version without a checkpoint may start where another version's group committed.
    if recovered_cut.is_none()
        && let Some(from) = spec.kafka.start_from_group.clone()
    {
        let brokers = spec.kafka.brokers.clone();
        let wanted: Vec<Partition> = partitions.iter().map(|(p, _)| p.clone()).collect();
        resume_at = tokio::task::spawn_blocking(move || {
            kafka::committed(&kafka::group_reader(&brokers, &from)?, &brokers, &wanted)
        })
        .await
        .map_err(|e| StartError::Workers(e.to_string()))??;
        tracing::info!(group_id = %group_id, from = ?spec.kafka.start_from_group, partitions = resume_at.len(), "starting at another group's committed offsets");
    }
    let start_epoch = first_epoch.max(epoch_now(spec.state.epoch));
    let ctx = Context {
        enricher: enricher.clone(),
        store: Arc::clone(&store),
        pending: Arc::clone(&pending),
        dedup_horizon_ms,
    };
    let source = SourceConfig {
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
    };
    let (parts_tx, dedup_shares, writer) = match checkpoints {
        Some((tx, shares, writer)) => (Some(tx), Some(shares), Some(writer)),
        None => (None, None, None),
    };
    let (brokers, dlq_suffix) = (spec.kafka.brokers.clone(), spec.kafka.dlq_suffix.clone());
    let dead_letters = Arc::new(DeadLetters::default());
    let counts = Arc::clone(&dead_letters);
    let stop = Arc::clone(&shutdown);
    tracing::info!(group_id = %source.group_id, workers, process, processes, partitions = source.partitions.len(), "starting workers");
    let config = match cluster {
        None => timely::Config::process(workers),
        Some(c) => timely::Config {
            communication: timely::CommunicationConfig::Cluster {
                threads: workers,
                process: c.process,
                addresses: c.addresses,
                report: false,
                zerocopy: false,
            },
            worker: timely::WorkerConfig::default(),
        },
    };
    // In a cluster this returns once every process has connected.
    let guards = timely::execute(config, move |worker| {
        let built = worker.dataflow::<Epoch, _, _>(|scope| {
            let (events, dead, offsets) = scope.consume_kafka(&source, start_epoch).map_err(|e| e.to_string())?;
            let counts = Arc::clone(&counts);
            dead.inspect(move |letter| counts.record(&letter.reason))
                .dead_letter_to(&brokers, &dlq_suffix)
                .map_err(|e| e.to_string())?;
            let hook = parts_tx.as_ref().map(|parts| CheckpointHook {
                offsets,
                parts: parts.clone(),
                restore_dedup: dedup_shares
                    .as_ref()
                    .map(|s| std::mem::take(&mut s.lock().unwrap_or_else(|p| p.into_inner())[scope.index()]))
                    .unwrap_or_default(),
                first_epoch: start_epoch,
            });
            let (probe, _) = personalization::dataflow(events, &ctx, hook).probe();
            Ok::<_, String>(probe)
        });
        let probe = built.inspect_err(|e| {
            tracing::error!(worker = worker.index(), error = %e, "cannot build the dataflow");
            stop.store(true, Relaxed);
        })?;
        while !probe.done() {
            worker.step_or_park(Some(Duration::from_secs(1)));
        }
        Ok(())
    })
    .map_err(StartError::Workers)?;
    Ok(Running { spec, store, enricher, pending, recovered_cut, dead_letters, local, shutdown, guards, writer })
}

/// A partition and its next offset.
type PartitionOffset = (Partition, i64);

/// Commits complete cuts' offsets under the version's group id, so that ordinary Kafka tools see
/// the version's progress; called only after a cut's checkpoint is durable. The commits run on
/// their own thread, so a broker outage never holds up checkpoint writes: while a commit waits,
/// newer cuts replace the queued one (a newer cut's offsets are never behind an older one's), and
/// a failed commit is retried every second until it succeeds or a newer cut arrives. The thread
/// ends when the returned function is dropped (after one last attempt).
fn offset_committer(
    brokers: &str,
    group_id: &str,
) -> Result<impl FnMut(Epoch, &[PartitionOffset]) + Send + 'static, StartError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group_id)
        // This consumer only commits; it never reads or joins the group.
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|source| StartError::Kafka(KafkaSetupError::Metadata { brokers: brokers.into(), source }))?;
    let group = group_id.to_owned();
    let (tx, rx) = std::sync::mpsc::channel::<(Epoch, Vec<PartitionOffset>)>();
    let ok = metrics::counter!("squall_offset_commits_total", "group_id" => group.clone(), "result" => "ok");
    let failed = metrics::counter!("squall_offset_commits_total", "group_id" => group.clone(), "result" => "error");
    std::thread::Builder::new()
        .name(format!("commit-{group}"))
        .spawn(move || {
            let mut pending: Option<(Epoch, Vec<PartitionOffset>)> = None;
            let mut closed = false;
            loop {
                // Take the newest cut queued; wait for one if nothing is pending.
                let next = if pending.is_some() {
                    match rx.recv_timeout(Duration::from_secs(1)) {
                        Ok(c) => Some(c),
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                            closed = true;
                            None
                        }
                    }
                } else {
                    match rx.recv() {
                        Ok(c) => Some(c),
                        Err(_) => return,
                    }
                };
                if let Some(c) = next {
                    pending = Some(rx.try_iter().last().unwrap_or(c));
                }
                let Some((cut, offsets)) = &pending else { continue };
                let mut tpl = TopicPartitionList::new();
                for (p, next) in offsets.iter().filter(|(_, o)| *o >= 0) {
                    let _ = tpl.add_partition_offset(&p.topic, p.partition, Offset::Offset(*next));
                }
                if tpl.count() == 0 {
                    pending = None;
                } else {
                    match consumer.commit(&tpl, CommitMode::Sync) {
                        Ok(()) => {
                            ok.increment(1);
                            pending = None;
                        }
                        Err(e) => {
                            failed.increment(1);
                            tracing::warn!(group_id = %group, cut, error = %e, "cannot commit offsets; retrying");
                        }
                    }
                }
                if closed {
                    return;
                }
            }
        })
        .map_err(|e| StartError::Workers(format!("cannot start the offset committer thread: {e}")))?;
    Ok(move |cut: Epoch, offsets: &[PartitionOffset]| {
        // Only fails once the thread is gone, which happens only after this function is dropped.
        let _ = tx.send((cut, offsets.to_vec()));
    })
}
