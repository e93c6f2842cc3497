//! `squall diff <a> <b>`: a live, exact comparison of two versions, read from their changelog
//! topics (`[feed] changelog = true`) so that it costs the versions nothing but the feed, and
//! works whatever their number of processes. A [`DiffSession`] reads both topics from the start
//! and keeps reading; each user's latest message per side feeds the comparison of
//! [`squall_operators::compare`], whose counts make the [`DiffReport`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use serde::{Deserialize, Serialize};
use squall_operators::compare::{Comparer, Pending, Record, Side as Which};
use squall_operators::{Epoch, Evidence};

/// The relative tolerance float attributes are compared with.
pub const TOLERANCE: f64 = 1e-9;
/// Messages read from each side at a time.
const BATCH: usize = 5_000;
/// The share of its thread's time a session works while catching up, by default (it sleeps the
/// rest): at 0.1 a diff cost the version it read 2% of its events/s on 2 shared cores, at 0.25
/// 13%, unthrottled 18.5% (`benches/RESULTS.md`).
pub const DUTY: f64 = 0.1;
/// Differing values a session keeps (the smallest user ids first).
pub const SAMPLE: usize = 1000;
/// Differing values a report lists unless asked for more.
pub const SAMPLE_SHOWN: usize = 20;

/// Agreement of one attribute present in both versions, over the users compared.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttributeAgreement {
    /// The attribute.
    pub name: String,
    /// Users whose values agree.
    pub agree: u64,
    /// Users whose values differ.
    pub differ: u64,
}

/// Users in both versions not compared yet, by why.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NotComparable {
    /// Version `a` applied more of the user's events (b is behind).
    pub a_ahead: u64,
    /// Version `b` applied more of the user's events.
    pub b_ahead: u64,
    /// As many events, but not the same ones (e.g. different dedup horizons).
    pub other_events: u64,
    /// Only in `a` so far.
    pub only_in_a: u64,
    /// Only in `b` so far.
    pub only_in_b: u64,
}

/// One differing value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DifferingValue {
    /// The user.
    pub user_id: String,
    /// The attribute.
    pub attribute: String,
    /// Its value in `a`: any JSON value (a number, a string, a map, a list, or null).
    pub a: serde_json::Value,
    /// Its value in `b`: any JSON value.
    pub b: serde_json::Value,
}

/// `GET /v1/diff`: two versions compared over the users for which both applied the same events.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DiffReport {
    /// Group id of version `a`.
    pub a: String,
    /// Group id of version `b`.
    pub b: String,
    /// Whether the diff has read both changelogs up to their ends as of `checked_at_ms`.
    pub caught_up: bool,
    /// When the ends were last checked (Unix milliseconds).
    pub checked_at_ms: u64,
    /// Changelog messages read so far.
    pub messages: u64,
    /// Users compared: in both versions, with the same events applied.
    pub users_compared: u64,
    /// Compared users whose every shared attribute agrees.
    pub users_agreeing: u64,
    /// `users_agreeing / users_compared` in percent (none before a user is compared).
    pub agreement_percent: Option<f64>,
    /// Users not compared yet, and why.
    pub not_comparable: NotComparable,
    /// Per attribute present in both versions: users agreeing and differing.
    pub attributes: Vec<AttributeAgreement>,
    /// Attributes only `a` answers.
    pub only_in_a: Vec<String>,
    /// Attributes only `b` answers.
    pub only_in_b: Vec<String>,
    /// Relative tolerance of float comparisons.
    pub tolerance: f64,
    /// Some differing values (the smallest user ids first).
    pub sample: Vec<DifferingValue>,
}

/// One side's changelog consumer and what it has read.
struct Side {
    topic: String,
    consumer: BaseConsumer,
    partitions: Vec<i32>,
    /// Next offset to read per partition.
    position: HashMap<i32, i64>,
    names: Option<Vec<String>>,
}

/// A consumer of `group_id`'s changelog topic for `reader` (e.g. `squall-diff`, its group id's
/// prefix), and the topic's name and partitions; the topic must exist.
pub fn changelog_consumer(
    brokers: &str,
    group_id: &str,
    reader: &str,
) -> Result<(String, BaseConsumer, Vec<i32>), DiffError> {
    let topic = squall_feeds::changelog::topic(group_id);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        // Never joins a group or commits: it assigns every partition itself.
        .set("group.id", format!("{reader}-{group_id}"))
        .set("enable.auto.commit", "false")
        // Low latency on a broker that waits the whole fetch.max.wait.ms for drained partitions.
        .set("fetch.wait.max.ms", "20")
        .create()
        .map_err(|error| DiffError::Kafka { topic: topic.clone(), error })?;
    let md = consumer
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .map_err(|error| DiffError::Kafka { topic: topic.clone(), error })?;
    let partitions: Vec<i32> =
        md.topics().iter().filter(|t| t.name() == topic).flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
    if partitions.is_empty() {
        return Err(DiffError::NoChangelog { group_id: group_id.to_owned(), topic });
    }
    Ok((topic, consumer, partitions))
}

impl Side {
    fn open(brokers: &str, group_id: &str) -> Result<Side, DiffError> {
        let (topic, consumer, partitions) = changelog_consumer(brokers, group_id, "squall-diff")?;
        let mut side = Side { topic, consumer, partitions: Vec::new(), position: HashMap::new(), names: None };
        side.assign(partitions)?;
        Ok(side)
    }

    /// The partitions of the topic the broker knows now.
    fn partitions_now(&self) -> Result<Vec<i32>, KafkaError> {
        let md = self.consumer.fetch_metadata(Some(&self.topic), Duration::from_secs(5))?;
        let mut ps: Vec<i32> = md
            .topics()
            .iter()
            .filter(|t| t.name() == self.topic)
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        ps.sort_unstable();
        Ok(ps)
    }

    /// Reads `partitions`: those already read from where they are, new ones from the beginning.
    fn assign(&mut self, mut partitions: Vec<i32>) -> Result<(), DiffError> {
        partitions.sort_unstable();
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in &partitions {
            let at = self.position.get(p).map_or(rdkafka::Offset::Beginning, |o| rdkafka::Offset::Offset(*o));
            tpl.add_partition_offset(&self.topic, *p, at).map_err(DiffError::Partition)?;
        }
        self.consumer.assign(&tpl).map_err(|error| DiffError::Kafka { topic: self.topic.clone(), error })?;
        self.partitions = partitions;
        Ok(())
    }

    /// Whether every partition is read up to its high watermark (asked of the broker now). A
    /// topic seen while it was being created may show fewer partitions than it has: partitions
    /// that appear since are assigned here (and the side is not caught up until they are read).
    fn caught_up(&mut self) -> bool {
        match self.partitions_now() {
            Ok(now) if now.len() > self.partitions.len() => {
                tracing::info!(topic = %self.topic, partitions = ?now, "diff: the changelog has more partitions; reading them too");
                if let Err(e) = self.assign(now) {
                    tracing::warn!(topic = %self.topic, error = %e, "diff: cannot assign the new partitions");
                }
                return false;
            }
            Ok(_) => {}
            Err(_) => return false,
        }
        crate::kafka::high_watermarks(&self.consumer, &self.topic, &self.partitions, Duration::from_secs(5)).is_ok_and(
            |highs| {
                self.partitions
                    .iter()
                    .all(|p| highs.get(p).is_some_and(|high| self.position.get(p).copied().unwrap_or(0) >= *high))
            },
        )
    }

    /// Reads up to `max` messages (waiting at most `wait` for the first) into `comparer` as
    /// `which` side's latest records. A message that repeats what is known (delivery is at least
    /// once) changes nothing.
    fn read(&mut self, which: Which, comparer: &mut Comparer, max: usize, wait: Duration) -> u64 {
        let mut n = 0;
        let mut timeout = wait;
        while n < max as u64 {
            let Some(m) = self.consumer.poll(timeout) else { break };
            timeout = Duration::ZERO;
            let Ok(m) = m else { continue };
            self.position.insert(m.partition(), m.offset() + 1);
            n += 1;
            let Some((user, _, record)) = m.payload().and_then(parse) else {
                tracing::warn!(topic = %self.topic, offset = m.offset(), "diff: a changelog message it cannot read");
                continue;
            };
            if self.names.is_none() {
                self.names = Some(record.attributes.iter().map(|(n, _)| n.clone()).collect());
            }
            comparer.set(which, user, record);
        }
        n
    }
}

/// A changelog message's user, cut and record.
pub fn parse(payload: &[u8]) -> Option<(String, Epoch, Record)> {
    #[derive(Deserialize)]
    struct Message {
        user_id: String,
        attributes: serde_json::Map<String, serde_json::Value>,
        cut: Epoch,
        events: u32,
        events_hash: String,
    }
    let m: Message = serde_json::from_slice(payload).ok()?;
    let hash = u64::from_str_radix(&m.events_hash, 16).ok()?;
    let attributes = m.attributes.into_iter().map(|(k, v)| (k, v.to_string())).collect();
    Some((m.user_id, m.cut, Record { evidence: Evidence { events: m.events, hash }, attributes }))
}

/// Why a diff cannot start (or read a new partition). Each cause is part of the message, so none
/// is repeated as a source.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    /// The duty is not in (0, 1].
    #[error("diff duty {0}: use a share of the time above 0 and at most 1")]
    Duty(f64),
    /// The broker could not be asked about a changelog topic.
    #[error("{topic}: {error}")]
    Kafka {
        /// The changelog topic.
        topic: String,
        /// The client's error.
        error: KafkaError,
    },
    /// The version has not created its changelog topic (yet).
    #[error(
        "{group_id} has no changelog topic {topic} yet: a version with `[feed] changelog = true` creates it when it starts"
    )]
    NoChangelog {
        /// The version.
        group_id: String,
        /// Its changelog topic.
        topic: String,
    },
    /// A partition could not be named for assignment.
    #[error("{0}")]
    Partition(KafkaError),
    /// The session's thread could not start.
    #[error("{0}")]
    Thread(std::io::Error),
}

/// A running comparison of two versions.
pub struct DiffSession {
    report: Arc<Mutex<DiffReport>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DiffSession {
    /// Starts comparing `a` and `b` (group ids) from their changelog topics on `brokers`, working
    /// at most `duty` (0 < duty <= 1) of the time while it catches up.
    pub fn start(brokers: &str, a: &str, b: &str, duty: f64) -> Result<DiffSession, DiffError> {
        if !(duty > 0.0 && duty <= 1.0) {
            return Err(DiffError::Duty(duty));
        }
        let sides = (Side::open(brokers, a)?, Side::open(brokers, b)?);
        let report = Arc::new(Mutex::new(DiffReport {
            a: a.to_owned(),
            b: b.to_owned(),
            tolerance: TOLERANCE,
            ..DiffReport::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (Arc::clone(&report), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name(format!("diff-{a}-{b}"))
            .spawn(move || run(sides, r, s, duty))
            .map_err(DiffError::Thread)?;
        Ok(DiffSession { report, stop, thread: Some(thread) })
    }

    /// The report as of now.
    pub fn report(&self) -> DiffReport {
        self.report.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The first report caught up with both changelogs as they were at least at `since`
    /// (Unix milliseconds), waiting up to `timeout`; the latest report if it does not catch up.
    pub async fn caught_up_since(&self, since: u64, timeout: Duration) -> DiffReport {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.report();
            if (r.caught_up && r.checked_at_ms >= since) || Instant::now() > deadline {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for DiffSession {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The session's thread: reads both changelogs into one [`Comparer`] and publishes its report
/// (at least every 200 ms while reading, and whenever both sides are idle).
fn run((mut a, mut b): (Side, Side), report: Arc<Mutex<DiffReport>>, stop: Arc<AtomicBool>, duty: f64) {
    let mut comparer = Comparer::new(TOLERANCE);
    let mut messages = 0u64;
    let mut last_check = Instant::now() - Duration::from_secs(1);
    let mut last_fill = Instant::now() - Duration::from_secs(1);
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let read = a.read(Which::A, &mut comparer, BATCH, Duration::from_millis(20))
            + b.read(Which::B, &mut comparer, BATCH, Duration::from_millis(20));
        messages += read;
        if read > 0 {
            // While catching up, work at most `duty` of the time: the versions it reads and their
            // broker may share the CPUs (a diff that falls behind only reports later).
            std::thread::sleep(started.elapsed().mul_f64((1.0 - duty) / duty));
        }
        // Whether both sides are at their ends: asked of the broker when nothing was read.
        let check = read == 0 && last_check.elapsed() > Duration::from_millis(100);
        let caught_up = check.then(|| {
            last_check = Instant::now();
            let (ready_a, ready_b) = (a.caught_up(), b.caught_up());
            (squall_feeds::now_ms() as u64, ready_a && ready_b)
        });
        if read > 0 && last_fill.elapsed() < Duration::from_millis(200) && caught_up.is_none() {
            continue;
        }
        last_fill = Instant::now();
        let mut r = report.lock().unwrap_or_else(|p| p.into_inner());
        fill(&mut r, &comparer, &a, &b, messages);
        match caught_up {
            Some((at, yes)) => {
                r.caught_up = yes;
                r.checked_at_ms = at;
            }
            None if read > 0 => r.caught_up = false,
            None => {}
        }
    }
}

/// The report from the comparer's counts.
fn fill(r: &mut DiffReport, c: &Comparer, a: &Side, b: &Side, messages: u64) {
    r.messages = messages;
    (r.users_compared, r.users_agreeing) = c.compared();
    r.agreement_percent = (r.users_compared > 0).then(|| 100.0 * r.users_agreeing as f64 / r.users_compared as f64);
    r.not_comparable = NotComparable {
        a_ahead: c.pending(Pending::AAhead),
        b_ahead: c.pending(Pending::BAhead),
        other_events: c.pending(Pending::OtherEvents),
        only_in_a: c.pending(Pending::OnlyA),
        only_in_b: c.pending(Pending::OnlyB),
    };
    let (an, bn) = (a.names.clone().unwrap_or_default(), b.names.clone().unwrap_or_default());
    r.attributes = an
        .iter()
        .filter(|n| bn.contains(n))
        .map(|name| {
            let (agree, differ) = c.attribute(name);
            AttributeAgreement { name: name.clone(), agree, differ }
        })
        .collect();
    r.only_in_a = an.iter().filter(|n| !bn.contains(n)).cloned().collect();
    r.only_in_b = bn.iter().filter(|n| !an.contains(n)).cloned().collect();
    let json = |s: &str| serde_json::from_str(s).unwrap_or(serde_json::Value::Null);
    r.sample = c
        .sample(SAMPLE)
        .into_iter()
        .map(|d| DifferingValue { user_id: d.user, attribute: d.attribute, a: json(&d.a), b: json(&d.b) })
        .collect();
}
