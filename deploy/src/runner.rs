//! Starts one topology version: connects to the store and the brokers, then runs its timely workers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use squall_enrichment::{CatalogueError, CqlCatalogue, Enricher, Symbols};
use squall_operators::{ConsumeKafka, DeadLetterTo, DecodeLimits, Epoch, EventKind, SourceConfig, UserStore};
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
    shutdown: Arc<AtomicBool>,
    guards: WorkerGuards<Result<(), String>>,
}

impl Running {
    /// Asks the workers to stop reading; they finish what is in flight and exit.
    pub fn shutdown(&self) {
        self.shutdown.store(true, Relaxed);
    }

    /// Waits for every worker to exit; the first worker error, if any.
    pub fn join(self) -> Result<(), String> {
        self.guards.join().into_iter().map(|r| r.and_then(|w| w)).collect::<Result<Vec<()>, String>>().map(|_| ())
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
    let store = Arc::new(UserStore::new(spec.attributes, symbols, workers));
    let pending = Arc::new(AtomicUsize::new(0));
    let shutdown = Arc::new(AtomicBool::new(false));
    let ctx = Context {
        enricher: enricher.clone(),
        store: Arc::clone(&store),
        pending: Arc::clone(&pending),
        dedup_horizon_ms: spec.state.dedup_horizon.as_millis() as i64,
    };
    let source = SourceConfig {
        brokers: spec.kafka.brokers.clone(),
        group_id: spec.group_id(),
        partitions,
        resume_at: Default::default(),
        start_from: spec.kafka.start_from,
        limits: DecodeLimits { max_message_bytes: spec.kafka.max_message_bytes, ..Default::default() },
        epoch_interval: spec.state.epoch,
        max_batch: 4096,
        pending: Arc::clone(&pending),
        max_pending: spec.runtime.max_pending,
        shutdown: Arc::clone(&shutdown),
        properties: Vec::new(),
    };
    let (brokers, dlq_suffix) = (spec.kafka.brokers.clone(), spec.kafka.dlq_suffix.clone());
    let stop = Arc::clone(&shutdown);
    tracing::info!(group_id = %source.group_id, workers, partitions = source.partitions.len(), "starting workers");
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let built = worker.dataflow::<Epoch, _, _>(|scope| {
            let (events, dead, _offsets) = scope.consume_kafka(&source, 0).map_err(|e| e.to_string())?;
            dead.dead_letter_to(&brokers, &dlq_suffix).map_err(|e| e.to_string())?;
            let (probe, _) = personalization::dataflow(events, &ctx).probe();
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
    Ok(Running { spec, store, enricher, pending, shutdown, guards })
}
