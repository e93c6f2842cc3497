//! Starts one topology version: connects to the store and the brokers, then runs its timely workers.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use squall_enrichment::{CatalogueError, CqlCatalogue, Enricher, Symbols};
use squall_operators::checkpoint::{self, CheckpointDir};
use squall_operators::source::epoch_now;
use squall_operators::{
    CheckpointHook, ConsumeKafka, DeadLetterTo, DecodeLimits, Epoch, EventKind, Partition, SourceConfig, UserState,
    UserStore,
};
use squall_topologies::TopologySpec;
use squall_topologies::personalization::{self, Context};
use timely::communication::WorkerGuards;
use timely::dataflow::operators::Probe;

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
    /// The checkpoint directory cannot be read or written.
    #[error("checkpoints in {dir}: {source}")]
    Checkpoint {
        /// The directory.
        dir: String,
        /// The error.
        source: std::io::Error,
    },
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

/// Connects to the store and brokers named by `spec` and starts its workers on this process.
/// Lookups run on `runtime`.
pub async fn start(spec: TopologySpec, runtime: tokio::runtime::Handle) -> Result<Running, StartError> {
    let catalogue = CqlCatalogue::connect(&spec.cql.nodes, &spec.cql.keyspace).await?;
    let topics = vec![
        (spec.kafka.song_completions.clone(), EventKind::Song),
        (spec.kafka.ad_impressions.clone(), EventKind::Ad),
    ];
    let brokers = spec.kafka.brokers.clone();
    let partitions = tokio::task::spawn_blocking(move || kafka::partitions(&brokers, &topics))
        .await
        .map_err(|e| StartError::Workers(e.to_string()))??;

    let workers = spec.runtime.workers;
    let symbols = Symbols::default();
    let enricher = Enricher::new(Arc::new(catalogue), symbols.clone(), spec.enrichment.clone(), runtime);
    let store = Arc::new(UserStore::new(spec.attributes, symbols.clone(), workers));
    let pending = Arc::new(AtomicUsize::new(0));
    let shutdown = Arc::new(AtomicBool::new(false));
    let group_id = spec.group_id();
    let dedup_horizon_ms = spec.state.dedup_horizon.as_millis() as i64;

    // Recover from the latest complete checkpoint, if checkpoints are on and there is one.
    let mut resume_at = std::collections::BTreeMap::new();
    let mut first_epoch = 0;
    let mut recovered_cut = None;
    let mut checkpoints = None;
    if let Some(root) = &spec.state.checkpoint_dir {
        let io = |source| StartError::Checkpoint { dir: root.display().to_string(), source };
        let dir = CheckpointDir::open(root, &group_id).map_err(io)?;
        let mut dedup_shares: Vec<Vec<(u64, u128, i64)>> = vec![Vec::new(); workers];
        if let Some(rec) = tokio::task::block_in_place(|| dir.recover()).map_err(io)? {
            tracing::info!(group_id = %group_id, cut = rec.cut, users = rec.users.len(), dedup_ids = rec.dedup.len(), "recovered from checkpoint");
            for (user, snapshot) in &rec.users {
                store.shard(store.owner(user)).insert(user.as_str().into(), UserState::restore(snapshot, &symbols));
            }
            for entry in rec.dedup {
                dedup_shares[(entry.0 % workers as u64) as usize].push(entry);
            }
            resume_at = rec.offsets.into_iter().filter(|(_, o)| *o >= 0).collect();
            first_epoch = rec.cut;
            recovered_cut = Some(rec.cut);
        }
        let committer = offset_committer(&spec.kafka.brokers, &group_id)?;
        let (tx, writer) = checkpoint::spawn_writer(
            dir,
            group_id.clone(),
            workers,
            spec.state.compact_every,
            dedup_horizon_ms,
            committer,
        );
        checkpoints = Some((tx, Arc::new(Mutex::new(dedup_shares)), writer));
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
        properties: Vec::new(),
    };
    let (parts_tx, dedup_shares, writer) = match checkpoints {
        Some((tx, shares, writer)) => (Some(tx), Some(shares), Some(writer)),
        None => (None, None, None),
    };
    let (brokers, dlq_suffix) = (spec.kafka.brokers.clone(), spec.kafka.dlq_suffix.clone());
    let stop = Arc::clone(&shutdown);
    tracing::info!(group_id = %source.group_id, workers, partitions = source.partitions.len(), "starting workers");
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let built = worker.dataflow::<Epoch, _, _>(|scope| {
            let (events, dead, offsets) = scope.consume_kafka(&source, start_epoch).map_err(|e| e.to_string())?;
            dead.dead_letter_to(&brokers, &dlq_suffix).map_err(|e| e.to_string())?;
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
    Ok(Running { spec, store, enricher, pending, recovered_cut, shutdown, guards, writer })
}

/// A partition and its next offset.
type PartitionOffset = (Partition, i64);

/// Commits a complete cut's offsets under the version's group id, so that ordinary Kafka tools
/// see the version's progress. Called only after the cut's checkpoint is durable.
fn offset_committer(
    brokers: &str,
    group_id: &str,
) -> Result<impl Fn(Epoch, &[PartitionOffset]) + Send + 'static, StartError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group_id)
        // This consumer only commits; it never reads or joins the group.
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|source| StartError::Kafka(KafkaSetupError::Metadata { brokers: brokers.into(), source }))?;
    let group_id = group_id.to_owned();
    Ok(move |cut: Epoch, offsets: &[PartitionOffset]| {
        let mut tpl = TopicPartitionList::new();
        for (p, next) in offsets.iter().filter(|(_, o)| *o >= 0) {
            let _ = tpl.add_partition_offset(&p.topic, p.partition, Offset::Offset(*next));
        }
        if tpl.count() == 0 {
            return;
        }
        if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
            tracing::warn!(group_id = %group_id, cut, error = %e, "cannot commit offsets; the next cut will");
        }
    })
}
