//! `scope.consume_kafka(..)`: the topics' partitions, spread over the workers, decoded into events.
//!
//! Each worker owns a fixed set of partitions (`assign`, no group rebalancing), so the owner of a
//! partition is a pure function of the partition list and the worker count. Their messages are
//! read a batch at a time from a queue of their own (`squall-kafka-batch`); errors and events stay
//! on the consumer's queue. Offsets are not committed here: the checkpoint path commits them once
//! the state that covers them is durable.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::Offset;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::TopicPartitionList;
use serde::{Deserialize, Serialize};
use squall_kafka_batch::{BatchConsumer, TopicId};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::{Scope, Stream};

use crate::event::{DecodeLimits, Event, EventKind, decode};

/// Most messages taken from librdkafka in one call (the source reads up to `max_batch` per activation).
const BATCH: usize = 1024;

/// How long a worker waits for its topics' metadata before assigning its partitions.
const METADATA_TIMEOUT: Duration = Duration::from_secs(2);

/// The timely timestamp: a checkpoint epoch, `unix_ms / epoch_interval`.
pub type Epoch = u64;

/// One input partition.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Partition {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
}

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
    pub reason: String,
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

/// The next offset of each of a worker's owned partitions: what an epoch's end records.
fn next_offsets(owned: &[(Partition, EventKind, i64)]) -> Vec<(Partition, i64)> {
    owned.iter().map(|(p, _, next)| (p.clone(), *next)).collect()
}

/// The slot of `topic`'s `partition` among a worker's owned partitions.
fn slot_of(owned: &[(Partition, EventKind, i64)], topic: &str, partition: i32) -> Option<usize> {
    owned.iter().position(|(p, _, _)| p.partition == partition && p.topic == topic)
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

/// Reads Kafka into a dataflow.
pub trait ConsumeKafka<'scope> {
    /// Consumes this worker's share of `config.partitions`, from epoch `first_epoch` on.
    /// Returns the decoded events, the dead letters, and the per-epoch offsets this worker read.
    #[allow(clippy::type_complexity)]
    fn consume_kafka(
        &self,
        config: &SourceConfig,
        first_epoch: Epoch,
    ) -> Result<(Stream<'scope, Epoch, Vec<Event>>, Stream<'scope, Epoch, Vec<DeadLetter>>, EpochOffsets), SourceError>;
}

impl<'scope> ConsumeKafka<'scope> for Scope<'scope, Epoch> {
    fn consume_kafka(
        &self,
        config: &SourceConfig,
        first_epoch: Epoch,
    ) -> Result<(Stream<'scope, Epoch, Vec<Event>>, Stream<'scope, Epoch, Vec<DeadLetter>>, EpochOffsets), SourceError>
    {
        let (worker, peers) = (self.index(), self.peers());
        let kafka_err = |source| SourceError::Kafka { group: config.group_id.clone(), source };

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
            // Events are consumed as soon as they are fetched: a short fetch wait keeps latency low.
            .set("fetch.wait.max.ms", "10")
            // Prefetch, in all of this worker's partitions together (they share the batch queue):
            // about 50 ms of a worker's work, far more than a fetch takes. Smaller is cheaper than
            // the 64 MB used before: less memory in flight is less memory faulted in anew (60k vs
            // 86k page faults and 1.17 vs 1.21 µs of CPU per event, benches/RESULTS.md).
            .set("queued.max.messages.kbytes", "2048")
            // When a partition's prefetch queue is full, librdkafka waits this long before it
            // checks again (default 1 s). Events are consumed faster than that: with the default
            // the queues ran dry and squall read at half the rate (benches/RESULTS.md).
            .set("fetch.queue.backoff.ms", "1")
            .set("client.id", format!("squall-{}-w{worker}", config.group_id));
        for (k, v) in &config.properties {
            client.set(k, v);
        }
        let mut consumer: BaseConsumer = client.create().map_err(kafka_err)?;

        let mut owned: Vec<(Partition, EventKind, i64)> = Vec::new();
        let mut tpl = TopicPartitionList::new();
        for i in owned_by(config.partitions.len(), worker, peers) {
            let (p, kind) = &config.partitions[i];
            let offset = match config.resume_at.get(p) {
                Some(o) => Offset::Offset(*o),
                None => match config.start_from {
                    StartFrom::Earliest => Offset::Beginning,
                    StartFrom::Latest => Offset::End,
                },
            };
            tpl.add_partition_offset(&p.topic, p.partition, offset).map_err(kafka_err)?;
            owned.push((p.clone(), *kind, config.resume_at.get(p).copied().unwrap_or(-1)));
        }
        let mut builder = OperatorBuilder::new(format!("KafkaSource({})", config.group_id), *self);
        let info = builder.operator_info();
        let (events_out, events) = builder.new_output::<Vec<Event>>();
        let (dlq_out, dead) = builder.new_output::<Vec<DeadLetter>>();
        let mut events_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Event>>>::from(events_out);
        let mut dlq_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<DeadLetter>>>::from(dlq_out);

        let activator = self.activator_for(Rc::clone(&info.address));
        let sync_activator = self.worker().sync_activator_for(info.address.to_vec());
        // librdkafka calls these when a queue turns non-empty: wake the worker. The consumer's
        // own queue carries errors and events; the batch queue carries the messages.
        let wake = sync_activator.clone();
        consumer.set_nonempty_callback(move || {
            let _ = wake.activate();
        });
        // The leaders of the owned partitions, before they are assigned: a partition assigned
        // while its leader is unknown has its start offset queried only after librdkafka's fixed
        // 500 ms retry ("no current leader"), and every worker's first record waited for it (0.5 s
        // of the 0.7 s from spawn to the first record, `benches/RESULTS.md` 2026-12-01). A broker
        // that does not answer in time changes nothing else: librdkafka retries by itself.
        let mut topics: Vec<&str> = owned.iter().map(|(p, _, _)| p.topic.as_str()).collect();
        topics.sort_unstable();
        topics.dedup();
        for topic in topics {
            if let Err(error) = consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT) {
                tracing::warn!(group_id = %config.group_id, %topic, %error, "no metadata before assigning; librdkafka retries");
            }
        }
        // The owned partitions' messages go to a queue of their own, read a batch at a time.
        let mut consumer = BatchConsumer::assign(consumer, &tpl, BATCH).map_err(kafka_err)?;
        consumer.set_nonempty_callback(move || {
            let _ = sync_activator.activate();
        });

        let epoch_offsets: EpochOffsets = Rc::default();
        let offsets_out = Rc::clone(&epoch_offsets);
        let config = config.clone();
        // Per topic: index 0 counts song completions, 1 ad impressions.
        let topic_of = |kind: EventKind| {
            config.partitions.iter().find(|(_, k)| *k == kind).map(|(p, _)| p.topic.clone()).unwrap_or_default()
        };
        let consumed = [EventKind::Song, EventKind::Ad].map(|kind| {
            metrics::counter!("squall_events_consumed_total", "group_id" => config.group_id.clone(), "topic" => topic_of(kind))
        });
        let errors = metrics::counter!("squall_source_errors_total", "group_id" => config.group_id.clone());

        builder.build(move |mut caps| {
            let mut dlq_cap = caps.pop();
            let mut ev_cap = caps.pop();
            let epoch = first_epoch.max(epoch_now(config.epoch_interval));
            if let (Some(e), Some(d)) = (ev_cap.as_mut(), dlq_cap.as_mut()) {
                e.downgrade(&epoch);
                d.downgrade(&epoch);
            }
            // The starting positions count as the end of the epoch before the first.
            let starts = next_offsets(&owned);
            offsets_out.borrow_mut().insert(epoch.saturating_sub(1), starts);
            let mut epoch = epoch;
            let mut warned_at = std::time::Instant::now() - Duration::from_secs(60);
            // The partition of the last message from the batch queue: (topic id, partition, slot).
            let mut last: Option<(TopicId, i32, usize)> = None;
            move |_frontiers| {
                let (Some(ev), Some(dl)) = (ev_cap.as_mut(), dlq_cap.as_mut()) else { return };
                if config.shutdown.load(Relaxed) {
                    // The ends of the epoch under way, before its capability goes: everything
                    // read in it has been sent. A peer process still running holds the frontier
                    // only at its own epoch, so cuts past this one may still be sealed, and their
                    // offsets (`offsets_at`) must cover what this epoch read; without this entry
                    // they fell back to the previous epoch's ends, and a recovery from such a cut
                    // read this epoch's events a second time.
                    let ends = next_offsets(&owned);
                    offsets_out.borrow_mut().insert(epoch, ends);
                    ev_cap = None;
                    dlq_cap = None;
                    return;
                }
                // Epochs are dense: step through every number, one per activation, so that every
                // cut exists on every worker (see `checkpoint`).
                let now = epoch_now(config.epoch_interval);
                if now > epoch {
                    let ends = next_offsets(&owned);
                    offsets_out.borrow_mut().insert(epoch, ends);
                    epoch += 1;
                    ev.downgrade(&epoch);
                    dl.downgrade(&epoch);
                    if now > epoch {
                        activator.activate();
                    }
                }
                if config.pending.load(Relaxed) > config.max_pending {
                    activator.activate_after(Duration::from_millis(1));
                    return;
                }
                let mut read = 0;
                let mut per_topic = [0u64; 2];
                {
                    let mut ev_out = events_out.activate();
                    let mut events = ev_out.session(ev);
                    let mut dl_out = dlq_out.activate();
                    let mut dead = dl_out.session(dl);
                    // One message of an owned partition: its next offset, then the event or the dead letter.
                    let mut handle =
                        |slot: &mut (Partition, EventKind, i64), offset: i64, key: Option<&[u8]>, payload: &[u8]| {
                            slot.2 = offset + 1;
                            per_topic[usize::from(slot.1 == EventKind::Ad)] += 1;
                            match decode(slot.1, payload, &config.limits) {
                                Ok(event) => events.give(event),
                                Err(e) => {
                                    dead.give(DeadLetter {
                                        topic: slot.0.topic.clone(),
                                        partition: slot.0.partition,
                                        offset,
                                        key: key.map(<[u8]>::to_vec),
                                        payload: payload.to_vec(),
                                        reason: e.reason.as_str().to_owned(),
                                        detail: e.detail,
                                    });
                                }
                            }
                        };
                    let mut warn = |e: &dyn std::fmt::Display| {
                        errors.increment(1);
                        // Broker down and similar: librdkafka retries by itself; say so now and then.
                        if warned_at.elapsed() > Duration::from_secs(10) {
                            tracing::warn!(group_id = %config.group_id, error = %e, "kafka consumer error; retrying");
                            warned_at = std::time::Instant::now();
                        }
                    };
                    while read < config.max_batch {
                        let batch = consumer.poll_batch(config.max_batch - read);
                        if batch.is_empty() {
                            break;
                        }
                        read += batch.len();
                        for m in batch.iter() {
                            if let Some(e) = m.error() {
                                warn(&e);
                                continue;
                            }
                            // Messages come in runs from one partition: find its slot by name only
                            // when the run changes.
                            let i = match last {
                                Some((id, p, i)) if id == m.topic_id() && p == m.partition() => Some(i),
                                _ => slot_of(&owned, m.topic(), m.partition()),
                            };
                            let Some(i) = i else { continue };
                            last = Some((m.topic_id(), m.partition(), i));
                            handle(&mut owned[i], m.offset(), m.key(), m.payload().unwrap_or_default());
                        }
                    }
                    // Errors that are not about one partition arrive on the consumer's own queue,
                    // polled on every activation. It carries no messages unless librdkafka routes
                    // one there after all; those are handled alike.
                    for _ in 0..config.max_batch {
                        match consumer.consumer().poll(Duration::ZERO) {
                            None => break,
                            Some(Ok(msg)) => {
                                read += 1;
                                if let Some(i) = slot_of(&owned, msg.topic(), msg.partition()) {
                                    handle(&mut owned[i], msg.offset(), msg.key(), msg.payload().unwrap_or_default());
                                }
                            }
                            Some(Err(e)) => {
                                warn(&e);
                                break;
                            }
                        }
                    }
                }
                for (counter, n) in consumed.iter().zip(per_topic) {
                    counter.increment(n);
                }
                if read >= config.max_batch {
                    activator.activate();
                } else {
                    // Wake for the next epoch boundary even if no message arrives.
                    let ms = config.epoch_interval.as_millis().max(1) as u64;
                    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
                    activator.activate_after(Duration::from_millis(ms - now_ms % ms + 1));
                }
            }
        });
        Ok((events, dead, epoch_offsets))
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
