//! `scope.consume_kafka(..)`: the topics' partitions, spread over the workers, decoded into events.
//!
//! Each worker owns a fixed set of partitions (`assign`, no group rebalancing), so the owner of a
//! partition is a pure function of the partition list and the worker count. Their messages are
//! read a batch at a time from a queue of their own (`squall-kafka-batch`); errors and events stay
//! on the consumer's queue. Offsets are not committed here: the checkpoint path commits them once
//! the state that covers them is durable. Each partition's event-time progress is reported at
//! every epoch's end for the watermark ([`crate::watermark`]), and partitions that run too far
//! ahead of the process's slowest are paused ([`Alignment`]).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::Offset;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::TopicPartitionList;
use serde::{Deserialize, Serialize};
use squall_kafka_batch::{BatchConsumer, TopicId};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::{Scope, Stream};
use timely::scheduling::SyncActivator;

use crate::backfill::{Archived, Backfill, BacklogError, Cursor};
use crate::counters::{self, Counter};
use crate::epoch::Epoch;
use crate::event::{DecodeError, DecodeLimits, DlqReason, Event, EventKind, decode};
use crate::watermark::{PartitionClock, Progress, Report, progress, to_every};

/// Most messages taken from librdkafka in one call (the source reads up to `max_batch` per activation).
const BATCH: usize = 1024;

/// How long a worker waits for its topics' metadata before assigning its partitions.
const METADATA_TIMEOUT: Duration = Duration::from_secs(2);

/// Most archived records read from one partition before the one furthest behind is picked again.
const ARCHIVE_SLICE: usize = 256;

/// How often a worker with paused partitions looks whether the slowest one has caught up.
const ALIGN_CHECK: Duration = Duration::from_millis(5);

pub use crate::partition::Partition;

/// Where a partition starts when there is no checkpoint for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    /// The oldest retained offset.
    Earliest,
    /// Only messages produced from now on.
    Latest,
}

/// What the source needs; one per dataflow, shared by its workers.
#[derive(Clone)]
pub struct SourceConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// The version's consumer group id (offsets are committed under it).
    pub group_id: String,
    /// Every input partition with its topic's event kind, in a fixed order.
    pub partitions: Vec<(Partition, EventKind)>,
    /// Per partition, the next offset to read, from a checkpoint; others use `start_from`.
    pub resume_at: BTreeMap<Partition, i64>,
    /// Where partitions without a resume offset start.
    pub start_from: StartFrom,
    /// Decoder limits.
    pub limits: DecodeLimits,
    /// Length of an epoch (the checkpoint interval).
    pub epoch_interval: Duration,
    /// Most messages read in one activation before yielding to other operators.
    pub max_batch: usize,
    /// Events received by this process's enrichment and not yet applied; the source pauses above `max_pending`.
    pub pending: Arc<AtomicUsize>,
    /// Backpressure threshold for `pending`.
    pub max_pending: usize,
    /// Set to stop reading; the source then closes its outputs and the dataflow drains.
    pub shutdown: Arc<AtomicBool>,
    /// Extra librdkafka properties, applied last.
    pub properties: Vec<(String, String)>,
    /// How far the process's partitions may run apart in event time; shared by its workers.
    pub alignment: Arc<Alignment>,
    /// A partition at its end counts as idle once nothing has come for this long.
    pub idle_after: Duration,
    /// An archive to apply first, each partition up to its last archived offset, before Kafka.
    pub backfill: Option<Backfill>,
    /// How the backfill is going, for status and metrics; shared by the process's workers.
    pub backfilled: Arc<BackfillProgress>,
}

/// How a process's backfill is going.
#[derive(Debug, Default)]
pub struct BackfillProgress {
    /// Owned partitions with archived records left to read (over all of the process's workers).
    pub partitions_left: AtomicI64,
    /// Archived records read.
    pub records: std::sync::atomic::AtomicU64,
    /// Set once every worker has opened its partitions' archives.
    pub opened: std::sync::atomic::AtomicUsize,
    /// The first error reading the archive (a partition that hit it stops, and reads no Kafka).
    pub error: std::sync::Mutex<Option<String>>,
}

impl BackfillProgress {
    /// Whether some worker still reads the archive (or has not opened it yet, of `workers`).
    pub fn backfilling(&self, workers: usize) -> bool {
        self.opened.load(Relaxed) < workers || self.partitions_left.load(Relaxed) > 0
    }
}

/// Watermark alignment within a process: how far ahead of the slowest active partition of the
/// process a partition may read, and where each local worker's partitions are.
///
/// A partition that has delivered nothing yet counts as being at the oldest `ts` any partition
/// of the process has delivered: the others do not run more than the bound past where the
/// process's data starts before it has spoken (without this, librdkafka handed over a whole
/// partition's backlog first), and a backlog spanning less than the bound pauses nothing.
#[derive(Debug, Default)]
pub struct Alignment {
    /// Event-time milliseconds a partition may be ahead before it is paused (0: never paused).
    pub max_ahead_ms: i64,
    /// Per worker: the least newest `ts` of its active partitions that delivered (`i64::MAX`:
    /// none), the oldest `ts` any of its partitions delivered (`i64::MAX`: none), and whether an
    /// active partition of it has delivered nothing yet (1) or not (0).
    workers: OnceLock<Box<[[AtomicI64; 3]]>>,
}

impl Alignment {
    /// Partitions more than `max_ahead_ms` ahead of the slowest are paused (0: never).
    pub fn new(max_ahead_ms: i64) -> Self {
        Alignment { max_ahead_ms: max_ahead_ms.max(0), workers: OnceLock::new() }
    }

    /// Sets `worker`'s (of `peers`) partitions' positions; the slowest of the process
    /// (`i64::MAX`: nothing to wait for).
    fn publish(&self, worker: usize, peers: usize, clocks: impl IntoIterator<Item = PartitionClock>) -> i64 {
        let (mut low, mut oldest, mut waiting) = (i64::MAX, i64::MAX, 0);
        for c in clocks {
            if c.newest == i64::MIN {
                waiting |= i64::from(!c.idle);
            } else {
                oldest = oldest.min(c.oldest);
                if !c.idle {
                    low = low.min(c.newest);
                }
            }
        }
        let all = self.workers.get_or_init(|| (0..peers).map(|_| [(); 3].map(|_| AtomicI64::new(i64::MAX))).collect());
        if let Some(slot) = all.get(worker) {
            for (s, v) in slot.iter().zip([low, oldest, waiting]) {
                s.store(v, Relaxed);
            }
        }
        let (mut floor, mut oldest, mut waiting) = (i64::MAX, i64::MAX, false);
        for [l, o, w] in all.iter() {
            floor = floor.min(l.load(Relaxed));
            oldest = oldest.min(o.load(Relaxed));
            waiting |= w.load(Relaxed) == 1;
        }
        if waiting { floor.min(oldest) } else { floor }
    }
}

/// A record that could not be decoded, on its way to the dead-letter topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// The original key bytes.
    pub key: Option<Vec<u8>>,
    /// The original payload bytes.
    pub payload: Vec<u8>,
    /// Reason category (`reason` header).
    pub reason: DlqReason,
    /// What exactly was wrong (`detail` header).
    pub detail: String,
}

/// Per epoch, the next offset of each partition this worker owns at the end of that epoch
/// (-1: nothing read yet and no resume offset).
pub type EpochOffsets = Rc<RefCell<BTreeMap<Epoch, Vec<(Partition, i64)>>>>;

/// The offsets of this worker's partitions at cut `cut` (after every message of epochs `< cut`).
pub fn offsets_at(offsets: &EpochOffsets, cut: Epoch) -> Vec<(Partition, i64)> {
    offsets.borrow().range(..cut).next_back().map(|(_, o)| o.clone()).unwrap_or_default()
}

/// The current epoch of wall-clock time.
pub fn epoch_now(interval: Duration) -> Epoch {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
    ms / (interval.as_millis().max(1) as u64)
}

/// The partitions (indexes into `partitions`) owned by `worker` of `peers`.
pub fn owned_by(n_partitions: usize, worker: usize, peers: usize) -> impl Iterator<Item = usize> {
    (0..n_partitions).filter(move |i| i % peers == worker)
}

/// Errors building the source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The consumer could not be created or assigned.
    #[error("kafka consumer for group {group}: {source}")]
    Kafka {
        /// The group id.
        group: String,
        /// librdkafka's error.
        source: rdkafka::error::KafkaError,
    },
}

/// What [`ConsumeKafka::consume_kafka`] makes.
pub struct SourceStreams<'scope> {
    /// The decoded events.
    pub events: Stream<'scope, Epoch, Vec<Event>>,
    /// The records that could not be decoded.
    pub dead: Stream<'scope, Epoch, Vec<DeadLetter>>,
    /// This worker's event-time progress at the end of every epoch, addressed to every worker
    /// (see [`crate::watermark`]).
    pub progress: Stream<'scope, Epoch, Vec<Report>>,
    /// The offsets this worker read, per epoch.
    pub offsets: EpochOffsets,
}

/// Reads Kafka into a dataflow.
pub trait ConsumeKafka<'scope> {
    /// Consumes this worker's share of `config.partitions`, from epoch `first_epoch` on.
    ///
    /// # Notes
    /// Partitions whose event time runs ahead of the slowest active partition of this process by
    /// more than [`Alignment::max_ahead_ms`] are paused until it has caught up to half of that
    /// (watermark alignment, as Flink's FLIP-182): a worker reading a backlog then keeps its
    /// partitions within that bound of each other instead of reading one whole before the next,
    /// and the ids and users waiting for the watermark stay bounded.
    fn consume_kafka(&self, config: &SourceConfig, first_epoch: Epoch) -> Result<SourceStreams<'scope>, SourceError>;
}

/// The librdkafka client of one worker, configured for squall's source.
fn client_config(config: &SourceConfig, worker: usize) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.brokers)
        .set("group.id", &config.group_id)
        // Offsets are committed by the checkpoint path only after the state covering them is durable.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Used only for partitions with neither a checkpoint nor an explicit start offset.
        .set(
            "auto.offset.reset",
            match config.start_from {
                StartFrom::Earliest => "earliest",
                StartFrom::Latest => "latest",
            },
        )
        // A partition read to its end says so: it is idle and stops holding the watermark back.
        .set("enable.partition.eof", "true")
        // Events are consumed as soon as they are fetched: a short fetch wait keeps latency low.
        .set("fetch.wait.max.ms", "10")
        // Prefetch, in all of this worker's partitions together (they share the batch queue):
        // about 50 ms of a worker's work, far more than a fetch takes; a larger prefetch costs
        // more and reads no faster (benches/RESULTS.md).
        .set("queued.max.messages.kbytes", "2048")
        // When a partition's prefetch queue is full, librdkafka waits this long before it
        // checks again (default 1 s). Events are consumed faster than that: with the default
        // the queues run dry between checks (benches/RESULTS.md).
        .set("fetch.queue.backoff.ms", "1")
        .set("client.id", format!("squall-{}-w{worker}", config.group_id));
    for (k, v) in &config.properties {
        client.set(k, v);
    }
    client
}

/// One partition a worker owns.
struct Owned {
    partition: Partition,
    kind: EventKind,
    /// The next offset to read (-1: nothing read yet and no resume offset).
    next: i64,
    clock: PartitionClock,
    /// Paused by the alignment.
    paused: bool,
    /// Since when it has been at its end (librdkafka's partition EOF) with nothing new.
    at_end_since: Option<Instant>,
    /// Its archive, while backfilling.
    archive: Option<Box<dyn Cursor>>,
    /// The archive's last offset of it (-1: none): Kafka is read from the next one on, even if
    /// the archive's last files were skipped (`since_ms`).
    archive_end: i64,
    /// Its archive failed: it reads nothing more (neither the archive nor Kafka).
    failed: bool,
}

/// The next offset of each of a worker's owned partitions: what an epoch's end records.
fn next_offsets(owned: &[Owned]) -> Vec<(Partition, i64)> {
    owned.iter().map(|o| (o.partition.clone(), o.next)).collect()
}

/// The slot of `topic`'s `partition` among a worker's owned partitions.
fn slot_of(owned: &[Owned], topic: &str, partition: i32) -> Option<usize> {
    owned.iter().position(|o| o.partition.partition == partition && o.partition.topic == topic)
}

/// One message of an owned partition: its next offset and clock, then the event or the dead letter.
#[allow(clippy::too_many_arguments)]
fn handle(
    owned: &mut Owned,
    limits: &DecodeLimits,
    per_topic: &mut [u64; 2],
    offset: i64,
    key: Option<&[u8]>,
    payload: &[u8],
    events: &mut impl FnMut(Event),
    dead: &mut impl FnMut(DeadLetter),
) {
    let decoded = decode(owned.kind, payload, limits);
    handle_decoded(owned, per_topic, offset, key, payload, decoded, events, dead);
}

/// [`handle`] for a message already decoded.
#[allow(clippy::too_many_arguments)]
#[inline]
fn handle_decoded(
    owned: &mut Owned,
    per_topic: &mut [u64; 2],
    offset: i64,
    key: Option<&[u8]>,
    payload: &[u8],
    decoded: Result<Event, DecodeError>,
    events: &mut impl FnMut(Event),
    dead: &mut impl FnMut(DeadLetter),
) {
    owned.next = offset + 1;
    owned.at_end_since = None;
    per_topic[usize::from(owned.kind == EventKind::Ad)] += 1;
    match decoded {
        Ok(event) => {
            owned.clock.read(Some(event.ts()));
            events(event);
        }
        Err(e) => {
            owned.clock.read(None);
            dead(DeadLetter {
                topic: owned.partition.topic.clone(),
                partition: owned.partition.partition,
                offset,
                key: key.map(<[u8]>::to_vec),
                payload: payload.to_vec(),
                reason: e.reason,
                detail: e.detail,
            });
        }
    }
}

/// Where a worker reads from.
enum Reader {
    /// Its partitions' archives; its consumer is made but assigned nothing yet.
    Archive { consumer: BaseConsumer, wake: SyncActivator, batch: Vec<Archived> },
    /// Kafka.
    Kafka(BatchConsumer),
    /// Nothing: a state only while switching from one to the other, or if the switch failed.
    Gone,
}

/// A worker's share of the source: its consumer and partitions, and the epoch under way.
struct KafkaSource {
    config: SourceConfig,
    worker: usize,
    peers: usize,
    reader: Reader,
    owned: Vec<Owned>,
    epoch: Epoch,
    offsets: EpochOffsets,
    /// The partition of the last message from the batch queue: (topic id, partition, slot).
    last: Option<(TopicId, i32, usize)>,
    warned_at: Instant,
    /// Per topic: index 0 counts song completions, 1 ad impressions.
    consumed: [Counter; 2],
    errors: Counter,
}

impl KafkaSource {
    /// Creates the consumer, which wakes the worker through `wake` when messages or events
    /// arrive, and assigns this worker's partitions at their resume offsets.
    fn new(config: &SourceConfig, worker: usize, peers: usize, wake: SyncActivator) -> Result<Self, SourceError> {
        let kafka_err = |source| SourceError::Kafka { group: config.group_id.clone(), source };
        let mut consumer: BaseConsumer = client_config(config, worker).create().map_err(kafka_err)?;
        let owned = owned_partitions(config, worker, peers)?;
        let backfilling = owned.iter().any(|o| o.archive.is_some());
        config
            .backfilled
            .partitions_left
            .fetch_add(owned.iter().filter(|o| o.archive.is_some()).count() as i64, Relaxed);
        config.backfilled.opened.fetch_add(1, Relaxed);
        // librdkafka calls these when a queue turns non-empty: wake the worker. The consumer's
        // own queue carries errors and events; the batch queue carries the messages.
        let wake_too = wake.clone();
        consumer.set_nonempty_callback(move || {
            let _ = wake_too.activate();
        });
        let reader = Reader::Archive { consumer, wake, batch: Vec::new() };
        let topic_of = |kind: EventKind| {
            config.partitions.iter().find(|(_, k)| *k == kind).map(|(p, _)| p.topic.clone()).unwrap_or_default()
        };
        let consumed =
            [EventKind::Song, EventKind::Ad].map(|kind| counters::events_consumed(&config.group_id, topic_of(kind)));
        let errors = counters::source_errors(&config.group_id);
        let mut source = KafkaSource {
            config: config.clone(),
            worker,
            peers,
            reader,
            owned,
            epoch: 0,
            offsets: Rc::default(),
            last: None,
            warned_at: Instant::now() - Duration::from_secs(60),
            consumed,
            errors,
        };
        if !backfilling {
            source.switch_to_kafka()?;
        }
        Ok(source)
    }

    /// Step: assigns the partitions to the Kafka consumer at their next offsets (those whose
    /// archive failed stay unread); from now on the worker reads Kafka.
    fn switch_to_kafka(&mut self) -> Result<(), SourceError> {
        let Reader::Archive { consumer, wake, .. } = std::mem::replace(&mut self.reader, Reader::Gone) else {
            return Ok(());
        };
        let kafka_err = |source| SourceError::Kafka { group: self.config.group_id.clone(), source };
        fetch_leaders(&consumer, &self.owned, &self.config.group_id);
        let mut tpl = TopicPartitionList::new();
        for o in self.owned.iter().filter(|o| !o.failed) {
            let offset = match (o.next, self.config.start_from) {
                (next, _) if next >= 0 => Offset::Offset(next),
                (_, StartFrom::Earliest) => Offset::Beginning,
                (_, StartFrom::Latest) => Offset::End,
            };
            tpl.add_partition_offset(&o.partition.topic, o.partition.partition, offset).map_err(kafka_err)?;
        }
        // The owned partitions' messages go to a queue of their own, read a batch at a time.
        let mut consumer = BatchConsumer::assign(consumer, &tpl, BATCH).map_err(kafka_err)?;
        consumer.set_nonempty_callback(move || {
            let _ = wake.activate();
        });
        self.reader = Reader::Kafka(consumer);
        Ok(())
    }

    /// Step, while backfilling: reads up to `max_batch` archived records of the partition furthest
    /// behind in event time, then the next furthest, into `events` and `dead`; the number read.
    /// Once every partition's archive is done, switches to Kafka.
    fn read_archive(&mut self, events: &mut impl FnMut(Event), dead: &mut impl FnMut(DeadLetter)) -> usize {
        let Reader::Archive { batch, .. } = &mut self.reader else { return 0 };
        let (max, since) = (self.config.max_batch, self.config.backfill.as_ref().and_then(|b| b.since_ms));
        let (mut read, mut per_topic) = (0, [0u64; 2]);
        let align = &self.config.alignment;
        let floor = if align.max_ahead_ms > 0 {
            // A partition done with its archive waits for the others before Kafka is read: it
            // holds none of them back.
            let clocks =
                self.owned.iter().map(|o| PartitionClock { idle: o.clock.idle || o.archive.is_none(), ..o.clock });
            align.publish(self.worker, self.peers, clocks)
        } else {
            i64::MAX
        };
        while read < max {
            let behind =
                self.owned.iter().enumerate().filter(|(_, o)| o.archive.is_some()).min_by_key(|(_, o)| o.clock.newest);
            let Some((i, o)) = behind else { break };
            // Another worker's partitions are too far behind: let them catch up (alignment).
            if floor != i64::MAX && o.clock.newest.saturating_sub(floor) > align.max_ahead_ms {
                break;
            }
            let owned = &mut self.owned[i];
            batch.clear();
            // A slice at a time, so that no partition runs far ahead of the others between picks.
            let next = owned.archive.as_mut().map(|c| c.next_batch((max - read).min(ARCHIVE_SLICE), batch));
            if let Some(Err(e)) = next {
                backfill_failed(&self.config, owned, &e);
                continue;
            }
            if batch.is_empty() {
                owned.archive = None;
                owned.next = owned.next.max(owned.archive_end + 1);
                self.config.backfilled.partitions_left.fetch_sub(1, Relaxed);
                continue;
            }
            read += batch.len();
            for rec in batch.drain(..) {
                let decoded = match rec.decoded {
                    Some(d) => d,
                    None => decode(owned.kind, &rec.payload, &self.config.limits),
                };
                if let (Some(since), Ok(e)) = (since, &decoded)
                    && e.ts() < since
                {
                    owned.next = rec.offset + 1;
                    continue;
                }
                handle_decoded(
                    owned,
                    &mut per_topic,
                    rec.offset,
                    rec.key.as_deref(),
                    &rec.payload,
                    decoded,
                    events,
                    dead,
                );
            }
        }
        self.config.backfilled.records.fetch_add(read as u64, Relaxed);
        for (counter, n) in self.consumed.iter().zip(per_topic) {
            counter.increment(n);
        }
        if self.owned.iter().all(|o| o.archive.is_none())
            && let Err(e) = self.switch_to_kafka()
        {
            tracing::error!(group_id = %self.config.group_id, error = %e, "cannot assign the partitions after the backfill");
            *self.config.backfilled.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
        }
        read
    }

    /// Step: the first epoch is `epoch`; the starting positions count as the end of the one before.
    fn start(&mut self, epoch: Epoch) {
        self.epoch = epoch;
        self.offsets.borrow_mut().insert(epoch.saturating_sub(1), next_offsets(&self.owned));
    }

    /// Step: records the end of the epoch under way (its next offsets) and its progress report.
    fn end_epoch(&mut self) -> Progress {
        self.offsets.borrow_mut().insert(self.epoch, next_offsets(&self.owned));
        self.mark_idle();
        progress(self.worker as u32, self.owned.iter().map(|o| &o.clock))
    }

    /// Step: reads up to `max_batch` messages into `events` and `dead`; the number read.
    fn read(&mut self, events: &mut impl FnMut(Event), dead: &mut impl FnMut(DeadLetter)) -> usize {
        let consumer = match &mut self.reader {
            Reader::Kafka(consumer) => consumer,
            Reader::Archive { .. } => return self.read_archive(events, dead),
            Reader::Gone => return 0,
        };
        let max = self.config.max_batch;
        let (mut read, mut per_topic) = (0, [0u64; 2]);
        let limits = &self.config.limits;
        while read < max {
            let batch = consumer.poll_batch(max - read);
            if batch.is_empty() {
                break;
            }
            read += batch.len();
            for m in batch.iter() {
                // Messages come in runs from one partition: find its slot by name only when the
                // run changes.
                let i = match self.last {
                    Some((id, p, i)) if id == m.topic_id() && p == m.partition() => Some(i),
                    _ => slot_of(&self.owned, m.topic(), m.partition()),
                };
                if let Some(e) = m.error() {
                    match (e, i) {
                        (KafkaError::PartitionEOF(_), Some(i)) => {
                            let o = &mut self.owned[i];
                            o.at_end_since.get_or_insert_with(Instant::now);
                            // The end's offset is the next to read (a partition that delivered
                            // nothing yet now has a position too).
                            o.next = o.next.max(m.offset());
                        }
                        (e, _) => warn(&self.config, &self.errors, &mut self.warned_at, &e),
                    }
                    continue;
                }
                let Some(i) = i else { continue };
                self.last = Some((m.topic_id(), m.partition(), i));
                let payload = m.payload().unwrap_or_default();
                handle(&mut self.owned[i], limits, &mut per_topic, m.offset(), m.key(), payload, events, dead);
            }
        }
        // Errors that are not about one partition arrive on the consumer's own queue, polled on
        // every activation. It carries no messages unless librdkafka routes one there after all;
        // those are handled alike.
        for _ in 0..max {
            match consumer.consumer().poll(Duration::ZERO) {
                None => break,
                Some(Ok(msg)) => {
                    read += 1;
                    if let Some(i) = slot_of(&self.owned, msg.topic(), msg.partition()) {
                        let (key, payload) = (msg.key(), msg.payload().unwrap_or_default());
                        handle(&mut self.owned[i], limits, &mut per_topic, msg.offset(), key, payload, events, dead);
                    }
                }
                // The partitions' EOFs come on their own queues (forwarded to the batch queue);
                // one here names no topic, so it cannot say which partition is idle.
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => {
                    warn(&self.config, &self.errors, &mut self.warned_at, &e);
                    break;
                }
            }
        }
        for (counter, n) in self.consumed.iter().zip(per_topic) {
            counter.increment(n);
        }
        read
    }

    /// Step: a partition at its end for `idle_after` is idle (it stops holding the watermark and
    /// the alignment back) until its next message.
    fn mark_idle(&mut self) {
        let idle_after = self.config.idle_after;
        for o in &mut self.owned {
            if o.at_end_since.is_some_and(|t| t.elapsed() >= idle_after) {
                o.clock.idle = true;
            }
        }
    }

    /// Step: pauses the partitions too far ahead of the slowest of this process, resumes those
    /// it has caught up with; whether any is paused.
    fn align(&mut self) -> bool {
        self.mark_idle();
        let align = &self.config.alignment;
        let Reader::Kafka(consumer) = &self.reader else {
            // Backfilling: `read_archive` aligns by choosing which partition to read.
            return self.owned.iter().any(|o| o.archive.is_some());
        };
        if align.max_ahead_ms <= 0 {
            return false;
        }
        // A partition at its end has nothing to read: waiting for it would pause the others for
        // nothing, so alignment does not wait for it (the watermark does, for `idle_after`).
        let clocks =
            self.owned.iter().map(|o| PartitionClock { idle: o.clock.idle || o.at_end_since.is_some(), ..o.clock });
        let floor = align.publish(self.worker, self.peers, clocks);
        let (mut pause, mut resume) = (TopicPartitionList::new(), TopicPartitionList::new());
        // Where each partition paused now resumes: its next offset, as this worker counts it.
        let mut at = TopicPartitionList::new();
        for o in &mut self.owned {
            // None active: nothing to wait for.
            let ahead = if floor == i64::MAX { i64::MIN } else { o.clock.newest.saturating_sub(floor) };
            let list = if !o.paused && !o.clock.idle && ahead > align.max_ahead_ms {
                if o.next >= 0 {
                    // Cannot fail: the offset is absolute.
                    let _ = at.add_partition_offset(&o.partition.topic, o.partition.partition, Offset::Offset(o.next));
                }
                &mut pause
            } else if o.paused && ahead <= align.max_ahead_ms / 2 {
                &mut resume
            } else {
                continue;
            };
            o.paused = !o.paused;
            list.add_partition(&o.partition.topic, o.partition.partition);
        }
        let consumer = consumer.consumer();
        for (list, what) in [(&pause, "pause"), (&resume, "resume")] {
            if list.count() > 0 {
                let done = if what == "pause" { consumer.pause(list) } else { consumer.resume(list) };
                if let Err(error) = done {
                    tracing::warn!(group_id = %self.config.group_id, %error, "cannot {what} partitions for alignment");
                }
            }
        }
        // A pause makes librdkafka resume at its "application position", which its batch read
        // (`rd_kafka_consume_batch_queue`) also moves past a partition-EOF event: a partition
        // paused at its end resumed one past its next message, and lost that message. The
        // paused partitions are moved (asynchronously, ordered after the pause) to the offset
        // this worker counts instead; what was fetched before is discarded by librdkafka.
        if at.count() > 0
            && let Err(error) = consumer.seek_partitions(at, Duration::ZERO)
        {
            tracing::warn!(group_id = %self.config.group_id, %error, "cannot set where paused partitions resume");
        }
        self.owned.iter().any(|o| o.paused)
    }

    /// Step, at shutdown: the ends of the epoch under way, before its capability goes.
    ///
    /// Everything read in it has been sent. A peer process still running holds the frontier
    /// only at its own epoch, so cuts past this one may still be sealed, and their offsets
    /// (`offsets_at`) must cover what this epoch read; without this entry they fell back to the
    /// previous epoch's ends, and a recovery from such a cut read this epoch's events again.
    fn shut_down(&mut self) {
        self.offsets.borrow_mut().insert(self.epoch, next_offsets(&self.owned));
    }
}

/// This worker's partitions, each with its archive opened where it is backfilled from one.
fn owned_partitions(config: &SourceConfig, worker: usize, peers: usize) -> Result<Vec<Owned>, SourceError> {
    let extents = config.backfill.as_ref().map(|b| b.backlog.extents()).unwrap_or_default();
    let mut owned = Vec::new();
    for i in owned_by(config.partitions.len(), worker, peers) {
        let (p, kind) = &config.partitions[i];
        let mut o = Owned {
            partition: p.clone(),
            kind: *kind,
            next: config.resume_at.get(p).copied().unwrap_or(-1),
            clock: PartitionClock::default(),
            paused: false,
            at_end_since: None,
            archive: None,
            archive_end: -1,
            failed: false,
        };
        if let (Some(backfill), Some(extent)) = (&config.backfill, extents.get(p)) {
            o.archive_end = extent.last;
            let from = if o.next >= 0 { o.next } else { extent.first };
            if from <= extent.last {
                match backfill.backlog.open(p, *kind, from, backfill.since_ms, &config.limits) {
                    Ok(cursor) => o.archive = Some(cursor),
                    Err(e) => backfill_failed(config, &mut o, &e),
                }
            }
        }
        owned.push(o);
    }
    Ok(owned)
}

/// A partition's archive cannot be read: the partition stops (reading Kafka past the records the
/// archive could not give would lose them), and the error is kept for status and logged.
fn backfill_failed(config: &SourceConfig, owned: &mut Owned, e: &BacklogError) {
    tracing::error!(group_id = %config.group_id, topic = %owned.partition.topic, partition = owned.partition.partition,
        error = %e, "cannot read the archive; this partition stops until the archive is repaired and the version restarted");
    if owned.archive.take().is_some() {
        config.backfilled.partitions_left.fetch_sub(1, Relaxed);
    }
    owned.failed = true;
    let mut first = config.backfilled.error.lock().unwrap_or_else(|p| p.into_inner());
    first.get_or_insert_with(|| format!("{}[{}]: {e}", owned.partition.topic, owned.partition.partition));
}

/// Counts a consumer error and, now and then, says so (broker down and similar: librdkafka
/// retries by itself).
fn warn(config: &SourceConfig, errors: &Counter, warned_at: &mut Instant, e: &dyn std::fmt::Display) {
    errors.increment(1);
    if warned_at.elapsed() > Duration::from_secs(10) {
        tracing::warn!(group_id = %config.group_id, error = %e, "kafka consumer error; retrying");
        *warned_at = Instant::now();
    }
}

impl<'scope> ConsumeKafka<'scope> for Scope<'scope, Epoch> {
    fn consume_kafka(&self, config: &SourceConfig, first_epoch: Epoch) -> Result<SourceStreams<'scope>, SourceError> {
        let (worker, peers) = (self.index(), self.peers());
        let mut builder = OperatorBuilder::new(format!("KafkaSource({})", config.group_id), *self);
        let info = builder.operator_info();
        let (events_out, events) = builder.new_output::<Vec<Event>>();
        let (dlq_out, dead) = builder.new_output::<Vec<DeadLetter>>();
        let (progress_out, progress) = builder.new_output::<Vec<Report>>();
        let mut events_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Event>>>::from(events_out);
        let mut dlq_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<DeadLetter>>>::from(dlq_out);
        let mut progress_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Report>>>::from(progress_out);
        let activator = self.activator_for(Rc::clone(&info.address));
        let wake = self.worker().sync_activator_for(info.address.to_vec());
        let mut source = KafkaSource::new(config, worker, peers, wake)?;
        let offsets = Rc::clone(&source.offsets);

        builder.build(move |mut caps| {
            let mut progress_cap = caps.pop();
            let mut dlq_cap = caps.pop();
            let mut ev_cap = caps.pop();
            let epoch = first_epoch.max(epoch_now(source.config.epoch_interval));
            for cap in [&mut ev_cap, &mut dlq_cap, &mut progress_cap].into_iter().flatten() {
                cap.downgrade(&epoch);
            }
            source.start(epoch);
            move |_frontiers| {
                let (Some(ev), Some(dl), Some(pr)) = (ev_cap.as_mut(), dlq_cap.as_mut(), progress_cap.as_mut()) else {
                    return;
                };
                if source.config.shutdown.load(Relaxed) {
                    source.shut_down();
                    (ev_cap, dlq_cap, progress_cap) = (None, None, None);
                    return;
                }
                // Epochs are dense: step through every number, one per activation, so that every
                // cut exists on every worker (see `checkpoint`).
                let now = epoch_now(source.config.epoch_interval);
                if now > source.epoch {
                    let report = source.end_epoch();
                    progress_out.activate().session(pr).give_iterator(to_every(report, peers));
                    source.epoch += 1;
                    ev.downgrade(&source.epoch);
                    dl.downgrade(&source.epoch);
                    pr.downgrade(&source.epoch);
                    if now > source.epoch {
                        activator.activate();
                    }
                }
                if source.config.pending.load(Relaxed) > source.config.max_pending {
                    activator.activate_after(Duration::from_millis(1));
                    return;
                }
                let read = {
                    let (mut ev_out, mut dl_out) = (events_out.activate(), dlq_out.activate());
                    let (mut events, mut dead) = (ev_out.session(ev), dl_out.session(dl));
                    source.read(&mut |e| events.give(e), &mut |d| dead.give(d))
                };
                let paused = source.align();
                if read >= source.config.max_batch {
                    activator.activate();
                } else if paused {
                    // Woken by no message of the paused partitions: look again soon whether the
                    // slowest partition has caught up.
                    activator.activate_after(ALIGN_CHECK);
                } else {
                    // Wake for the next epoch boundary even if no message arrives.
                    let ms = source.config.epoch_interval.as_millis().max(1) as u64;
                    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
                    activator.activate_after(Duration::from_millis(ms - now_ms % ms + 1));
                }
            }
        });
        Ok(SourceStreams { events, dead, progress, offsets })
    }
}

/// Fetches the leaders of the owned partitions' topics, just before they are assigned (a
/// backfilling source reads its archive first without the broker): a partition assigned while
/// its leader is unknown has its start offset queried only after librdkafka's fixed 500 ms retry
/// ("no current leader"), and every worker's first record would wait for it (`benches/RESULTS.md`).
/// A broker that does not answer in time changes nothing else: librdkafka retries by itself.
fn fetch_leaders(consumer: &BaseConsumer, owned: &[Owned], group_id: &str) {
    let mut topics: Vec<&str> = owned.iter().map(|o| o.partition.topic.as_str()).collect();
    topics.sort_unstable();
    topics.dedup();
    for topic in topics {
        if let Err(error) = consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT) {
            tracing::warn!(group_id = %group_id, %topic, %error, "no metadata before assigning; librdkafka retries");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_spread_round_robin() {
        let all: Vec<Vec<usize>> = (0..3).map(|w| owned_by(8, w, 3).collect()).collect();
        assert_eq!(all, vec![vec![0, 3, 6], vec![1, 4, 7], vec![2, 5]]);
    }
}
