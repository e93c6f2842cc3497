//! The replica feed: what a standby replica needs to hold a process's state one complete cut
//! behind it and to take over its consumption without reading the checkpoint store: each
//! complete cut's changed users (their whole [`UserSnapshot`]), expired users, new dedup ids, and
//! the cut's event-time watermark and input offsets, on the internal topic `<group id>.replica`,
//! process `p` of a version on partition `p`.
//!
//! # Notes
//! - **Batches.** Like the other feeds, the replica writes what changed once a cut is complete
//!   (durable in the checkpoint store), coalescing cuts while it is behind. A batch is a run of
//!   messages whose key is the batch's cut (8 bytes, big-endian), each holding [`Record`]s, and
//!   whose last record is a [`Marker`]: a reader applies a batch's records only once it reads its
//!   marker, so a batch cut short by a crash or a failed write is never applied alone; the retry
//!   holds every record of the failed one (newer states win).
//! - **Continuity.** A marker says the cut its batch starts from: the batch holds every change
//!   after `from`. A reader at a cut below `from` has missed changes (the active recovered from a
//!   later checkpoint than the replica had written) and must bootstrap again from the checkpoint
//!   store; a reader at or above `from` applies the batch (the changes it already has come again,
//!   with the same values).
//! - **Position.** Keys never decrease along a partition (batches go out in cut order), so a
//!   reader that bootstrapped from the checkpoint store at cut `c` starts at the first message
//!   whose key is above `c` ([`first_after`]), found by a binary search.
//! - **Retention.** The topic is deleted by time, not compacted (a reader bootstraps from the
//!   checkpoint store, not from the topic): it must keep what a standby bootstrapping needs, the
//!   batches written since the checkpoint it reads, which an hour covers many times over.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminOptions, NewPartitions};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use squall_operators::checkpoint::{DedupRun, Part};
use squall_operators::{Epoch, Partition, UserSnapshot};
use tokio::runtime::Handle;

use crate::changelog::Deliveries;
use crate::counters::FeedCounters;
use crate::progress::Progress;
use crate::{FeedError, FeedStatus};

/// The replica topic of `group_id`.
pub fn topic(group_id: &str) -> String {
    format!("{group_id}.replica")
}

/// The feed's name in `feed_progress`, metrics and `/v1/status`.
pub const NAME: &str = "replica";

/// How long the topic keeps a batch.
const RETENTION: Duration = Duration::from_secs(3600);

/// Encoded records per message, at most (a message stays well under the broker's 1 MB default).
const MESSAGE_BYTES: usize = 256 * 1024;

/// One thing a batch carries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Record {
    /// A user's whole state at the batch's cut.
    User(String, UserSnapshot),
    /// A user who expired (`state.user_ttl`) and was not seen again.
    Expired(String),
    /// Dedup ids added.
    Ids(DedupRun),
    /// The end of a batch.
    Cut(Marker),
}

/// The last record of a batch: the cut it brings a reader to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Marker {
    /// The batch holds every change after this cut (0: since the version began).
    pub from: Epoch,
    /// The cut a reader is at once it applied the batch.
    pub cut: Epoch,
    /// The newest event time the process's workers had applied at the cut (`i64::MIN`: none).
    pub watermark: i64,
    /// Event-time milliseconds per dedup bucket (0: deduplication off).
    pub bucket_ms: i64,
    /// The next offset, at the cut, of every input partition the process's workers own.
    pub offsets: Vec<(Partition, i64)>,
}

/// The key of every message of a batch to `cut`.
pub fn key(cut: Epoch) -> [u8; 8] {
    cut.to_be_bytes()
}

/// The cut of a message's key, if it is one.
pub fn cut_of(key: &[u8]) -> Option<Epoch> {
    key.try_into().ok().map(Epoch::from_be_bytes)
}

/// A message's records.
pub fn decode(payload: &[u8]) -> Result<Vec<Record>, String> {
    bincode::deserialize(payload).map_err(|e| e.to_string())
}

/// What a batch of complete cuts carries, coalesced.
#[derive(Debug, Default)]
struct Changes {
    /// Each changed user's latest state; `None` for a user who expired.
    users: HashMap<String, Option<UserSnapshot>>,
    /// Dedup ids added, in cut order.
    ids: Vec<DedupRun>,
    watermark: Option<i64>,
    bucket_ms: i64,
    offsets: BTreeMap<Partition, i64>,
}

impl Changes {
    /// Adds a worker's part (of a later cut than what `self` holds, or of the same cut).
    fn add(&mut self, part: &Part) {
        for (user, snapshot) in &part.users {
            self.users.insert(user.clone(), Some(snapshot.clone()));
        }
        for user in &part.expired {
            self.users.insert(user.clone(), None);
        }
        self.ids.extend(part.dedup.iter().cloned());
        self.watermark = Some(self.watermark.map_or(part.watermark, |w| w.max(part.watermark)));
        if part.bucket_ms > 0 {
            self.bucket_ms = part.bucket_ms;
        }
        self.offsets.extend(part.offsets.iter().cloned());
    }

    /// Adds `later`'s changes on top of these.
    fn absorb(&mut self, later: Changes) {
        self.users.extend(later.users);
        self.ids.extend(later.ids);
        self.watermark = match (self.watermark, later.watermark) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        if later.bucket_ms > 0 {
            self.bucket_ms = later.bucket_ms;
        }
        self.offsets.extend(later.offsets);
    }

    /// Puts back a batch that could not be written, under the changes that came since
    /// (`self`): a user changed again keeps the newer state.
    fn put_back(&mut self, earlier: Changes) {
        let mut merged = earlier;
        merged.absorb(std::mem::take(self));
        *self = merged;
    }
}

#[derive(Default)]
struct State {
    /// Changes of parts whose cut is not complete yet, by cut.
    incomplete: BTreeMap<Epoch, Changes>,
    /// Local parts seen per cut (without a checkpoint store, a cut completes with them all).
    parts: BTreeMap<Epoch, usize>,
    /// Changes of complete cuts not yet written.
    pending: Changes,
    /// The latest complete cut.
    latest: Option<Epoch>,
    /// The last cut written and recorded.
    written: Option<Epoch>,
    /// The cut the pending changes start from.
    from: Epoch,
    /// The cut a standby that took over held: every standby reaches it (see [`Replica::taken_over`]).
    floor: Option<Epoch>,
    /// Records of the batch being written.
    in_flight: usize,
    failing_since: Option<Instant>,
    reported: bool,
    last_error: Option<String>,
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    complete_on_parts: Option<usize>,
    deadline: Duration,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Where a batch goes: the replica topic, or a test's recorder.
pub trait Writer: Send + 'static {
    /// Writes the records of a batch to `cut`, its marker last, durably.
    fn write(&mut self, cut: Epoch, records: Vec<Record>) -> Result<(), FeedError>;
    /// Records that everything up to `cut` is written.
    fn save_progress(&mut self, cut: Epoch) -> Result<(), FeedError>;
}

/// The replica feed of one process.
pub struct Replica {
    shared: Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Replica {
    /// Starts the feed's thread. `written`: its last recorded cut. `local_workers`: with `Some(n)`
    /// (no checkpoint store) a cut is complete once the parts of the process's `n` workers
    /// arrived; with `None` the checkpoint writer says so through [`Replica::complete`].
    pub fn start(
        writer: Box<dyn Writer>,
        written: Option<Epoch>,
        local_workers: Option<usize>,
        deadline: Duration,
    ) -> std::io::Result<Replica> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State { written, from: written.unwrap_or(0), ..State::default() }),
            wake: Condvar::new(),
            complete_on_parts: local_workers,
            deadline,
        });
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new().name("feed-replica".into()).spawn(move || run(s, writer))?;
        Ok(Replica { shared, thread: Mutex::new(Some(thread)) })
    }

    /// A worker's checkpoint part.
    pub fn part(&self, part: &Part) {
        let mut s = self.shared.lock();
        if s.latest.is_some_and(|l| l >= part.cut) {
            return;
        }
        s.incomplete.entry(part.cut).or_default().add(part);
        if let Some(n) = self.shared.complete_on_parts {
            let seen = s.parts.entry(part.cut).or_default();
            *seen += 1;
            if *seen >= n {
                self.complete_locked(&mut s, part.cut);
            }
        }
    }

    /// Every part of `cut` is durable.
    pub fn complete(&self, cut: Epoch) {
        let mut s = self.shared.lock();
        self.complete_locked(&mut s, cut);
    }

    fn complete_locked(&self, s: &mut State, cut: Epoch) {
        if s.latest.is_some_and(|l| l >= cut) {
            return;
        }
        let later = s.incomplete.split_off(&(cut + 1));
        for (_, changes) in std::mem::replace(&mut s.incomplete, later) {
            s.pending.absorb(changes);
        }
        s.parts = s.parts.split_off(&(cut + 1));
        s.latest = Some(cut);
        self.shared.wake.notify_all();
    }

    /// The process starts from state recovered at `cut`: if the feed wrote less, a reader behind
    /// `cut` cannot catch up from the topic, and the next batch says so (`from = cut`).
    pub fn recovered(&self, cut: Epoch) {
        let mut s = self.shared.lock();
        if s.written.is_none_or(|w| w < cut) {
            tracing::info!(cut, written = ?s.written, "replica feed: recovered beyond what it wrote; standbys behind bootstrap again");
            s.from = cut;
            s.latest = Some(cut);
            self.shared.wake.notify_all();
        }
    }

    /// The last cut it wrote and recorded.
    pub fn written(&self) -> Option<Epoch> {
        self.shared.lock().written
    }

    /// The process is a standby that took over at `cut`, which it had answered at: every standby
    /// of the process reaches `cut` (a new one bootstraps from the checkpoint at or after it, and
    /// another that follows read the batch to `cut` before the takeover), so answers may claim it
    /// at once, before the feed records a batch to it.
    pub fn taken_over(&self, cut: Epoch) {
        let mut s = self.shared.lock();
        s.floor = s.floor.max(Some(cut));
    }

    /// The highest cut an answer of the process may claim: what the feed wrote, or the cut it took
    /// over at.
    pub fn claimable(&self) -> Option<Epoch> {
        let s = self.shared.lock();
        s.written.max(s.floor)
    }

    /// Its progress, as `/v1/status` shows it.
    pub fn status(&self) -> FeedStatus {
        let s = self.shared.lock();
        FeedStatus {
            feed: NAME.to_owned(),
            latest_cut: s.latest,
            written_cut: s.written,
            lag_cuts: lag(&s),
            pending_users: (s.pending.users.len() + s.in_flight) as u64,
            failing_for_s: s.failing_since.map(|t| t.elapsed().as_secs_f64()),
            last_error: s.failing_since.and(s.last_error.clone()),
        }
    }

    /// Writes what is complete (waiting at most `grace`), then stops.
    pub fn stop(&self, grace: Duration) {
        let until = Instant::now() + grace;
        let mut s = self.shared.lock();
        while (s.latest > s.written || s.in_flight > 0) && s.failing_since.is_none() && Instant::now() < until {
            s = self
                .shared
                .wake
                .wait_timeout(s, Duration::from_millis(50))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        s.stop = true;
        self.shared.wake.notify_all();
        drop(s);
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

fn lag(s: &State) -> u64 {
    match (s.latest, s.written) {
        (Some(l), Some(w)) => l.saturating_sub(w),
        (Some(_), None) => 1,
        _ => 0,
    }
}

/// The records of a batch of `changes` from `from` to `cut`, the marker last.
fn records(from: Epoch, cut: Epoch, changes: &Changes) -> Vec<Record> {
    let mut out = Vec::with_capacity(changes.users.len() + changes.ids.len() + 1);
    for (user, snapshot) in &changes.users {
        out.push(match snapshot {
            Some(s) => Record::User(user.clone(), s.clone()),
            None => Record::Expired(user.clone()),
        });
    }
    out.extend(changes.ids.iter().cloned().map(Record::Ids));
    out.push(Record::Cut(Marker {
        from,
        cut,
        watermark: changes.watermark.unwrap_or(i64::MIN),
        bucket_ms: changes.bucket_ms,
        offsets: changes.offsets.iter().map(|(p, o)| (p.clone(), *o)).collect(),
    }));
    out
}

/// The feed's thread: takes what is complete, writes it as one batch, records progress; retries
/// with backoff.
fn run(f: Arc<Shared>, mut writer: Box<dyn Writer>) {
    let counters = FeedCounters::new(NAME);
    let mut backoff = Duration::from_millis(100);
    loop {
        let (changes, from, cut) = {
            let mut s = f.lock();
            loop {
                counters.lag_cuts.set(lag(&s) as f64);
                if s.stop {
                    return;
                }
                if s.latest > s.written {
                    break;
                }
                s = f.wake.wait_timeout(s, Duration::from_secs(1)).map(|(g, _)| g).unwrap_or_else(|p| p.into_inner().0);
            }
            let Some(cut) = s.latest else { continue };
            let changes = std::mem::take(&mut s.pending);
            s.in_flight = changes.users.len();
            (changes, s.from, cut)
        };
        let batch = records(from, cut, &changes);
        let result = writer.write(cut, batch).and_then(|()| writer.save_progress(cut));
        let mut s = f.lock();
        s.in_flight = 0;
        match result {
            Ok(()) => {
                counters.writes_ok.increment(1);
                counters.users_written.increment(changes.users.len() as u64);
                if s.reported {
                    tracing::info!(feed = NAME, cut, "feed: writing again");
                }
                s.written = Some(cut);
                s.from = cut;
                s.failing_since = None;
                s.reported = false;
                s.last_error = None;
                counters.failing.set(0.0);
                backoff = Duration::from_millis(100);
                f.wake.notify_all();
            }
            Err(e) => {
                counters.writes_failed.increment(1);
                s.pending.put_back(changes);
                let since = *s.failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() > f.deadline && !s.reported {
                    tracing::error!(feed = NAME, error = %e, failing_for = ?since.elapsed(), "feed failing past its deadline; retrying");
                    s.reported = true;
                    counters.failing.set(1.0);
                } else {
                    tracing::warn!(feed = NAME, error = %e, "feed write failed; retrying");
                }
                s.last_error = Some(e.to_string());
                let wait = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                drop(f.wake.wait_timeout(s, wait));
            }
        }
    }
}

/// Writes batches to partition `process` of the replica topic and records progress in
/// `feed_progress`.
pub struct TopicWriter {
    topic: String,
    partition: i32,
    producer: ThreadedProducer<Deliveries>,
    failed: Arc<AtomicU64>,
    progress: Progress,
    runtime: Handle,
}

impl TopicWriter {
    /// Creates the topic with a partition per process when missing (adding partitions when it
    /// has fewer), and the producer; the last cut the feed of this process wrote, if any.
    pub async fn open(
        brokers: &str,
        group_id: &str,
        (process, processes): (usize, usize),
        replication: i32,
        session: Arc<scylla::client::session::Session>,
        keyspace: &str,
        runtime: Handle,
    ) -> Result<(TopicWriter, Option<Epoch>), FeedError> {
        let topic = topic(group_id);
        ensure_topic(brokers, &topic, processes as i32, replication).await?;
        let failed = Arc::new(AtomicU64::new(0));
        let producer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            // No duplicates or reordering from the producer's own retries: a batch's marker
            // follows every record of the batch.
            .set("enable.idempotence", "true")
            .set("linger.ms", "2")
            .set("message.max.bytes", (2 * MESSAGE_BYTES).to_string())
            .create_with_context(Deliveries { feed: NAME, failed: Arc::clone(&failed) })
            .map_err(|e| FeedError::Kafka { topic: topic.clone(), message: e.to_string() })?;
        let (progress, written) = Progress::open(session, keyspace, group_id, NAME, (process, processes)).await?;
        let writer = TopicWriter { topic, partition: process as i32, producer, failed, progress, runtime };
        Ok((writer, written))
    }

    fn send(&self, cut: Epoch, records: &[Record]) -> Result<(), FeedError> {
        let err = |message: String| FeedError::Kafka { topic: self.topic.clone(), message };
        let payload = bincode::serialize(records).map_err(|e| err(e.to_string()))?;
        let key = key(cut);
        let mut record = BaseRecord::to(&self.topic).partition(self.partition).key(&key[..]).payload(&payload);
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(err(e.to_string())),
            }
        }
    }
}

impl Writer for TopicWriter {
    fn write(&mut self, cut: Epoch, records: Vec<Record>) -> Result<(), FeedError> {
        let before = self.failed.load(Ordering::Relaxed);
        let mut chunk: Vec<Record> = Vec::new();
        let mut size = 0usize;
        let mut messages = 0usize;
        for r in records {
            let len = bincode::serialized_size(&r).unwrap_or(0) as usize;
            if !chunk.is_empty() && size + len > MESSAGE_BYTES {
                self.send(cut, &chunk)?;
                messages += 1;
                chunk.clear();
                size = 0;
            }
            size += len;
            chunk.push(r);
        }
        if !chunk.is_empty() {
            self.send(cut, &chunk)?;
            messages += 1;
        }
        let err = |message: String| FeedError::Kafka { topic: self.topic.clone(), message };
        self.producer.flush(Duration::from_secs(30)).map_err(|e| err(format!("flush: {e}")))?;
        let failed = self.failed.load(Ordering::Relaxed) - before;
        if failed > 0 {
            return Err(err(format!("{failed} of {messages} messages were not delivered")));
        }
        Ok(())
    }

    fn save_progress(&mut self, cut: Epoch) -> Result<(), FeedError> {
        self.runtime.block_on(self.progress.save(cut))
    }
}

/// Creates `topic` (deleted by time) with `partitions` partitions unless it exists, and adds
/// partitions if it has fewer.
async fn ensure_topic(brokers: &str, topic: &str, partitions: i32, replication: i32) -> Result<(), FeedError> {
    let err = |message: String| FeedError::Kafka { topic: topic.to_owned(), message };
    let retention = RETENTION.as_millis().to_string();
    let config = [("cleanup.policy", "delete"), ("retention.ms", retention.as_str())];
    let admin = crate::changelog::create_topic_with(brokers, topic, partitions, replication, &config).await?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let metadata = admin
        .inner()
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| err(format!("metadata: {e}")))?;
    let has = metadata.topics().iter().find(|t| t.name() == topic).map_or(0, |t| t.partitions().len()) as i32;
    if has < partitions {
        let more = NewPartitions::new(topic, partitions as usize);
        for r in admin.create_partitions([&more], &options).await.map_err(|e| err(e.to_string()))? {
            if let Err((_, code)) = r {
                return Err(err(format!("has {has} partitions, needs {partitions}: {code}")));
            }
        }
    }
    Ok(())
}

/// Where a reader at `cut` starts on `partition` of `topic`: the offset of the first message
/// whose key is above `cut` (the high watermark if there is none). A binary search over the
/// partition, reading one message per probe. Errs when the partition no longer holds the first
/// batch after `cut` (retention deleted it) or a probe is not answered within `timeout`.
pub fn first_after(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    cut: Epoch,
    timeout: Duration,
) -> Result<i64, String> {
    let (low, high) =
        consumer.fetch_watermarks(topic, partition, timeout).map_err(|e| format!("{topic} [{partition}]: {e}"))?;
    // The first offset whose key is above `cut` lies in `lo..=hi`.
    let (mut lo, mut hi) = (low, high);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let key_cut = key_cut_at(consumer, topic, partition, mid, timeout)?;
        if key_cut > cut {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    if lo == low && low > 0 {
        // Retention deleted what came before: the batch after `cut` may have begun there.
        let first = key_cut_at(consumer, topic, partition, low, timeout)?;
        if first > cut {
            return Err(format!(
                "{topic} [{partition}] starts at offset {low}, whose batch (cut {first}) may have begun before it: \
                 the batches after cut {cut} are no longer all there"
            ));
        }
    }
    Ok(lo)
}

/// The cut of the message at `offset` (of the next one if it is gone).
fn key_cut_at(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    offset: i64,
    timeout: Duration,
) -> Result<Epoch, String> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset)).map_err(|e| e.to_string())?;
    consumer.assign(&tpl).map_err(|e| format!("assign {topic} [{partition}]: {e}"))?;
    let until = Instant::now() + timeout;
    while Instant::now() < until {
        match consumer.poll(Duration::from_millis(50)) {
            Some(Ok(m)) if m.partition() == partition && m.offset() >= offset => {
                return m
                    .key()
                    .and_then(cut_of)
                    .ok_or_else(|| format!("{topic} [{partition}] @{}: not a replica key", m.offset()));
            }
            Some(Ok(_)) | None => {}
            Some(Err(e)) => return Err(format!("{topic} [{partition}] @{offset}: {e}")),
        }
    }
    Err(format!("{topic} [{partition}] @{offset}: no message within {timeout:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The batches written: their cut and records.
    type Batches = Arc<Mutex<Vec<(Epoch, Vec<Record>)>>>;

    /// Records what it is asked to write; fails while told to.
    #[derive(Clone, Default)]
    struct Recorder {
        batches: Batches,
        fail: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Writer for Recorder {
        fn write(&mut self, cut: Epoch, records: Vec<Record>) -> Result<(), FeedError> {
            if self.fail.load(Ordering::SeqCst) {
                return Err(FeedError::Kafka { topic: "t".into(), message: "down".into() });
            }
            self.batches.lock().unwrap().push((cut, records));
            Ok(())
        }
        fn save_progress(&mut self, _: Epoch) -> Result<(), FeedError> {
            Ok(())
        }
    }

    fn snap(n: u64) -> UserSnapshot {
        UserSnapshot { plan: n, ..Default::default() }
    }

    fn part(cut: Epoch, worker: usize, users: &[(&str, u64)], expired: &[&str], offset: i64) -> Part {
        Part {
            cut,
            worker,
            peers: 2,
            users: users.iter().map(|(u, n)| (u.to_string(), snap(*n))).collect(),
            expired: expired.iter().map(|u| u.to_string()).collect(),
            dedup: vec![DedupRun { key_group: worker as u32, bucket: cut as i64, ids: Vec::new() }],
            watermark: cut as i64 * 1000 + worker as i64,
            bucket_ms: 60_000,
            offsets: vec![(Partition { topic: "t".into(), partition: worker as i32 }, offset)],
            ..Default::default()
        }
    }

    fn wait_written(r: &Replica, cut: Epoch) {
        let until = Instant::now() + Duration::from_secs(10);
        while r.written() < Some(cut) {
            assert!(Instant::now() < until, "{:?}", r.status());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn marker(records: &[Record]) -> &Marker {
        match records.last() {
            Some(Record::Cut(m)) => m,
            other => panic!("a batch ends with its marker, not {other:?}"),
        }
    }

    fn users(records: &[Record]) -> Vec<(String, Option<u64>)> {
        let mut out: Vec<_> = records
            .iter()
            .filter_map(|r| match r {
                Record::User(u, s) => Some((u.clone(), Some(s.plan))),
                Record::Expired(u) => Some((u.clone(), None)),
                _ => None,
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn a_batch_holds_a_complete_cuts_changes_and_ends_with_its_marker() {
        let rec = Recorder::default();
        let r = Replica::start(Box::new(rec.clone()), Some(4), None, Duration::from_secs(1)).unwrap();
        r.part(&part(5, 0, &[("a", 1)], &[], 10));
        r.part(&part(5, 1, &[("b", 1)], &["z"], 20));
        r.part(&part(6, 0, &[("a", 2)], &[], 11));
        assert_eq!(r.written(), Some(4), "nothing goes out before its cut is complete");
        r.complete(5);
        wait_written(&r, 5);
        let batches = rec.batches.lock().unwrap().clone();
        assert_eq!(batches.len(), 1);
        let (cut, records) = &batches[0];
        assert_eq!(*cut, 5);
        assert_eq!(users(records), vec![("a".into(), Some(1)), ("b".into(), Some(1)), ("z".into(), None)]);
        let m = marker(records);
        assert_eq!((m.from, m.cut, m.watermark, m.bucket_ms), (4, 5, 5001, 60_000));
        assert_eq!(
            m.offsets,
            vec![
                (Partition { topic: "t".into(), partition: 0 }, 10),
                (Partition { topic: "t".into(), partition: 1 }, 20)
            ]
        );
        assert_eq!(records.iter().filter(|r| matches!(r, Record::Ids(_))).count(), 2);
        r.stop(Duration::from_secs(1));
    }

    #[test]
    fn a_failed_batch_is_retried_whole_under_newer_changes_and_continues_from_the_last_written_cut() {
        let rec = Recorder::default();
        let r = Replica::start(Box::new(rec.clone()), None, None, Duration::from_millis(50)).unwrap();
        rec.fail.store(true, Ordering::SeqCst);
        r.part(&part(1, 0, &[("a", 1), ("b", 1)], &[], 5));
        r.complete(1);
        let until = Instant::now() + Duration::from_secs(10);
        while r.status().last_error.is_none() {
            assert!(Instant::now() < until);
            std::thread::sleep(Duration::from_millis(5));
        }
        r.part(&part(2, 0, &[("a", 2)], &["b"], 6));
        r.complete(2);
        rec.fail.store(false, Ordering::SeqCst);
        wait_written(&r, 2);
        r.part(&part(3, 0, &[("c", 3)], &[], 7));
        r.complete(3);
        wait_written(&r, 3);
        let batches = rec.batches.lock().unwrap().clone();
        let (first, second) = (&batches[0].1, &batches.last().unwrap().1);
        // The failed batch's users come again with their newest state; b expired since.
        assert_eq!(users(first), vec![("a".into(), Some(2)), ("b".into(), None)]);
        assert_eq!((marker(first).from, marker(first).cut), (0, 2));
        assert_eq!(marker(first).offsets, vec![(Partition { topic: "t".into(), partition: 0 }, 6)]);
        assert_eq!(first.iter().filter(|r| matches!(r, Record::Ids(_))).count(), 2, "ids of both cuts");
        assert_eq!((marker(second).from, marker(second).cut), (2, 3));
        assert_eq!(users(second), vec![("c".into(), Some(3))]);
        r.stop(Duration::from_secs(1));
    }

    #[test]
    fn recovery_beyond_what_was_written_starts_the_next_batch_from_the_recovered_cut() {
        let rec = Recorder::default();
        let r = Replica::start(Box::new(rec.clone()), Some(3), Some(1), Duration::from_secs(1)).unwrap();
        r.recovered(7);
        wait_written(&r, 7);
        r.part(&part(8, 0, &[("a", 8)], &[], 1));
        wait_written(&r, 8);
        let batches = rec.batches.lock().unwrap().clone();
        assert_eq!((marker(&batches[0].1).from, marker(&batches[0].1).cut), (7, 7));
        assert_eq!(users(&batches[0].1), vec![]);
        assert_eq!((marker(&batches[1].1).from, marker(&batches[1].1).cut), (7, 8));
        // A feed that wrote the recovered cut goes on from it.
        let r2 = Replica::start(Box::new(Recorder::default()), Some(8), Some(1), Duration::from_secs(1)).unwrap();
        r2.recovered(8);
        assert_eq!(r2.status().lag_cuts, 0);
        r.stop(Duration::from_secs(1));
        r2.stop(Duration::from_secs(1));
    }

    #[test]
    fn keys_carry_the_cut_in_an_order_that_sorts_like_it() {
        assert_eq!(cut_of(&key(42)), Some(42));
        assert!(key(255) < key(256));
        assert_eq!(cut_of(b"abc"), None);
        let records = vec![
            Record::Expired("u".into()),
            Record::Cut(Marker { from: 1, cut: 2, watermark: 3, bucket_ms: 0, offsets: vec![] }),
        ];
        assert_eq!(decode(&bincode::serialize(&records).unwrap()).unwrap(), records);
        assert!(decode(b"\xff\xff").is_err());
    }
}
