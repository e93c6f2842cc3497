//! The archiver: consumes the topics and writes their records into the archive, committing each
//! partition's offsets to Kafka only after the file holding them is stored.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use squall_operators::event::{DecodeLimits, EventKind};

use crate::file::{FileBuilder, RawRecord};
use crate::store::{Archive, ListError, PutError};

/// A topic to archive and the kind of events it carries: `NAME` for the two standard topics
/// (`song-completions`, `ad-impressions`), `NAME=song` or `NAME=ad` for others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicSpec {
    /// The topic.
    pub name: String,
    /// How its records decode.
    pub kind: EventKind,
}

impl FromStr for TopicSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, kind) = match s.split_once('=') {
            Some((n, "song")) => (n, EventKind::Song),
            Some((n, "ad")) => (n, EventKind::Ad),
            Some((_, k)) => return Err(format!("{s}: unknown event kind {k:?} (song or ad)")),
            None if s == "song-completions" => (s, EventKind::Song),
            None if s == "ad-impressions" => (s, EventKind::Ad),
            None => return Err(format!("{s}: say which events it carries: {s}=song or {s}=ad")),
        };
        if name.is_empty() {
            return Err(format!("{s}: empty topic name"));
        }
        Ok(TopicSpec { name: name.to_owned(), kind })
    }
}

/// How the archiver runs.
#[derive(Clone, Debug)]
pub struct ArchiverConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// The group id its offsets are committed under (for lag tools; the archive decides where to resume).
    pub group: String,
    /// The topics.
    pub topics: Vec<TopicSpec>,
    /// A partition's file is closed when it holds this many records...
    pub rows_per_file: usize,
    /// ...or when its first record was read this long ago.
    pub max_file_age: Duration,
    /// The decoder's limits (the same as the versions' `[limits]` for identical dead letters).
    pub limits: DecodeLimits,
}

/// Why the archiver stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ArchiverError {
    /// The Kafka client failed.
    #[error("kafka ({what}): {source}")]
    Kafka {
        /// What it was doing.
        what: String,
        /// The client's error.
        source: KafkaError,
    },
    /// The archive's manifest could not be read or is inconsistent.
    #[error(transparent)]
    List(#[from] ListError),
    /// A file could not be stored (nothing past the previous file was committed).
    #[error(transparent)]
    Put(#[from] PutError),
    /// A file could not be encoded.
    #[error("encoding {topic} partition {partition}: {source}")]
    Encode {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The Parquet error.
        source: parquet::errors::ParquetError,
    },
    /// Continuing would leave offsets out of the archive.
    #[error("{topic} partition {partition}: {detail}")]
    Gap {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// Which offsets and why.
        detail: String,
    },
}

fn kafka(what: impl Into<String>) -> impl FnOnce(KafkaError) -> ArchiverError {
    let what = what.into();
    move |source| ArchiverError::Kafka { what, source }
}

struct Open {
    kind: EventKind,
    file: FileBuilder,
    opened: Option<Instant>,
}

const TIMEOUT: Duration = Duration::from_secs(10);

/// Where each partition of `topic` resumes: after the archive's last offset, or at the committed
/// offset or the earliest retained one when the archive has none; refused when that would leave
/// a gap (the group committed past the archive, or Kafka no longer holds the next offset).
fn resume_points(
    consumer: &BaseConsumer,
    topic: &str,
    archived: &BTreeMap<i32, i64>,
) -> Result<Vec<(i32, i64)>, ArchiverError> {
    let meta = consumer.fetch_metadata(Some(topic), TIMEOUT).map_err(kafka(format!("metadata of {topic}")))?;
    let mut partitions: Vec<i32> = meta.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
    partitions.sort_unstable();
    if partitions.is_empty() {
        return Err(ArchiverError::Gap {
            topic: topic.into(),
            partition: -1,
            detail: "the topic does not exist".into(),
        });
    }
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition(topic, *p);
    }
    let committed = consumer.committed_offsets(tpl, TIMEOUT).map_err(kafka(format!("committed offsets of {topic}")))?;
    let mut out = Vec::with_capacity(partitions.len());
    for p in partitions {
        let gap = |detail: String| ArchiverError::Gap { topic: topic.into(), partition: p, detail };
        let committed = match committed.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => Some(o),
            _ => None,
        };
        let (low, _high) =
            consumer.fetch_watermarks(topic, p, TIMEOUT).map_err(kafka(format!("watermarks of {topic}/{p}")))?;
        let start = match (archived.get(&p).map(|l| l + 1), committed) {
            (Some(next), Some(c)) if c > next => {
                return Err(gap(format!(
                    "group committed offset {c} but the archive ends at {}: offsets {next}..={} are not archived",
                    next - 1,
                    c - 1
                )));
            }
            (Some(next), _) => next,
            (None, Some(c)) => c,
            (None, None) => low,
        };
        if start < low {
            return Err(gap(format!(
                "the archive continues at offset {start} but Kafka now begins at {low} (retention): \
                 offsets {start}..={} are lost",
                low - 1
            )));
        }
        out.push((p, start));
    }
    Ok(out)
}

/// Archives until `stop` is set, then stores what it holds, commits and returns.
///
/// Run one archiver per archive: it assigns itself every partition of the topics (no group
/// rebalancing), and the archive, not the group's offsets, says where each partition resumes.
pub fn run(archive: &Archive, config: &ArchiverConfig, stop: &AtomicBool) -> Result<(), ArchiverError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("group.id", &config.group)
        // Offsets are committed by hand after the file holding them is stored.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // A partition whose next offset Kafka no longer holds must stop the archiver, not skip ahead.
        .set("auto.offset.reset", "error")
        // The dev broker answers a fetch of drained partitions only after this wait; shorter keeps
        // the archive's delay low without busy polling.
        .set("fetch.wait.max.ms", "100")
        .create()
        .map_err(kafka("create consumer"))?;
    let mut open: BTreeMap<(String, i32), Open> = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for t in &config.topics {
        let partitions = rt.block_on(archive.partitions(&t.name))?;
        for p in partitions {
            rt.block_on(archive.recover(&t.name, p))?;
        }
        let archived = rt.block_on(archive.last_offsets(&t.name))?;
        for (p, start) in resume_points(&consumer, &t.name, &archived)? {
            tracing::info!(topic = %t.name, partition = p, offset = start, "archiving from");
            tpl.add_partition_offset(&t.name, p, Offset::Offset(start)).map_err(kafka("assign"))?;
            let file = FileBuilder::new(&t.name, p, t.kind, config.limits, start);
            open.insert((t.name.clone(), p), Open { kind: t.kind, file, opened: None });
        }
    }
    consumer.assign(&tpl).map_err(kafka("assign"))?;
    let mut last_age_check = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if let Some(msg) = consumer.poll(Duration::from_millis(100)) {
            let msg = msg.map_err(kafka("consume"))?;
            let key = (msg.topic().to_owned(), msg.partition());
            let Some(o) = open.get_mut(&key) else { continue };
            o.file.push(RawRecord {
                offset: msg.offset(),
                timestamp: msg.timestamp().to_millis(),
                key: msg.key(),
                value: msg.payload().unwrap_or_default(),
            });
            o.opened.get_or_insert_with(Instant::now);
            if o.file.rows() >= config.rows_per_file {
                flush(&rt, archive, &consumer, config, &key, o)?;
            }
        }
        if last_age_check.elapsed() >= Duration::from_millis(100) {
            last_age_check = Instant::now();
            for (key, o) in open.iter_mut() {
                if o.opened.is_some_and(|t| t.elapsed() >= config.max_file_age) {
                    flush(&rt, archive, &consumer, config, key, o)?;
                }
            }
        }
    }
    for (key, o) in open.iter_mut() {
        flush(&rt, archive, &consumer, config, key, o)?;
    }
    tracing::info!("archiver stopped: every record read is archived and committed");
    Ok(())
}

fn flush(
    rt: &tokio::runtime::Runtime,
    archive: &Archive,
    consumer: &BaseConsumer,
    config: &ArchiverConfig,
    (topic, partition): &(String, i32),
    o: &mut Open,
) -> Result<(), ArchiverError> {
    if o.file.rows() == 0 {
        return Ok(());
    }
    let next = o.file.next_offset();
    let full = std::mem::replace(&mut o.file, FileBuilder::new(topic, *partition, o.kind, config.limits, next));
    o.opened = None;
    let encoded = full
        .finish()
        .map_err(|source| ArchiverError::Encode { topic: topic.clone(), partition: *partition, source })?
        .expect("the file has rows");
    rt.block_on(archive.put_file(&encoded))?;
    tracing::debug!(topic, partition, file = %encoded.entry.path, rows = encoded.entry.rows, "archived");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, *partition, Offset::Offset(next)).map_err(kafka("commit"))?;
    // The archive is the source of truth for resuming; a lost commit only delays lag tools.
    if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
        tracing::warn!(topic, partition, error = %e, "commit failed; the archive still says where to resume");
    }
    Ok(())
}
