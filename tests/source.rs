//! The Kafka source against the real dev broker: what it records as the end of each epoch.
//!
//! A checkpoint cut's offsets come from these records (`offsets_at`), so a record that is missing
//! or stale makes a recovery read some events a second time.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use squall_operators::Epoch;
use squall_operators::backfill::{Archived, Backfill, Backlog, BacklogError, Cursor, Extent};
use squall_operators::event::{DecodeLimits, EventKind};
use squall_operators::source::{Alignment, ConsumeKafka, Partition, SourceConfig, StartFrom, offsets_at};
use squall_tests::{brokers, produce_to_partitions, unique};
use timely::dataflow::operators::{Inspect, Probe};

/// A process that stops in the middle of an epoch records where that epoch ended.
///
/// Its peers may still seal cuts past that epoch (they hold the frontier only at their own
/// epochs), and such a cut takes this process's offsets from the last epoch it recorded. Before
/// the fix the source dropped its capability without a record, the cut fell back to the previous
/// epoch's ends, and recovery from it counted the stopped epoch's events twice (seen once in CI,
/// `adopt::versions_no_server_adopts_stop_themselves_and_resume_from_their_checkpoints`). Here the
/// source stops right after it has read every message, and the last cut must cover them all: the
/// source sees the flag at the next boundary, before it records the end of the epoch under way,
/// so without the record at shutdown that cut held the ends of an earlier epoch.
#[tokio::test(flavor = "multi_thread")]
async fn a_source_stopped_mid_epoch_records_that_epochs_end_offsets() {
    const PER_PARTITION: usize = 300;
    let topic = songs_topic("source-stop", 2, PER_PARTITION).await;
    let shutdown = Arc::new(AtomicBool::new(false));
    // Short, since the source sees the shutdown flag only when it wakes (at the latest at the
    // next epoch boundary).
    let config = song_source(&topic, 2, Duration::from_millis(500), Arc::clone(&shutdown));
    let recorded = tokio::task::block_in_place(|| {
        timely::execute_directly(move |worker| {
            let received = Rc::new(Cell::new(0usize));
            let seen = Rc::clone(&received);
            let (probe, offsets) = worker.dataflow::<Epoch, _, _>(|scope| {
                let source = scope.consume_kafka(&config, 0).expect("source");
                source.dead.inspect(|d| panic!("a valid event went to the dead letters: {d:?}"));
                let (probe, _) = source.events.inspect(move |_| seen.set(seen.get() + 1)).probe();
                (probe, source.offsets)
            });
            let deadline = Instant::now() + Duration::from_secs(60);
            while received.get() < 2 * PER_PARTITION {
                assert!(Instant::now() < deadline, "only {} of {} events read", received.get(), 2 * PER_PARTITION);
                worker.step_or_park(Some(Duration::from_millis(10)));
            }
            shutdown.store(true, Ordering::Relaxed);
            while !probe.done() {
                assert!(Instant::now() < deadline, "the source did not close after shutdown");
                worker.step_or_park(Some(Duration::from_millis(10)));
            }
            // The last cut: after the epoch the source stopped in, whichever it was.
            offsets_at(&offsets, Epoch::MAX)
        })
    });
    let expected: Vec<(Partition, i64)> =
        (0..2).map(|p| (Partition { topic: topic.clone(), partition: p }, PER_PARTITION as i64)).collect();
    assert_eq!(recorded, expected, "the offsets after the epoch the source stopped in");
}

/// A worker's first record arrives without waiting out librdkafka's fixed 500 ms retry of a
/// partition assigned before its leader is known, and wakes a worker parked until the next
/// epoch boundary (a minute away here): only the queue's callback can wake it in time. The source
/// asks for its topics' metadata ahead of the assignment for this (`benches/RESULTS.md`).
#[tokio::test(flavor = "multi_thread")]
async fn the_first_record_does_not_wait_for_a_leader_retry() {
    let topic = songs_topic("source-first", 1, 1).await;
    let config = song_source(&topic, 1, Duration::from_secs(60), Arc::new(AtomicBool::new(false)));
    let waited = tokio::task::block_in_place(|| {
        timely::execute_directly(move |worker| {
            let received = Rc::new(Cell::new(0usize));
            let seen = Rc::clone(&received);
            let started = Instant::now();
            worker.dataflow::<Epoch, _, _>(|scope| {
                let source = scope.consume_kafka(&config, 0).expect("source");
                source.events.inspect(move |_| seen.set(seen.get() + 1));
            });
            while received.get() == 0 {
                assert!(started.elapsed() < Duration::from_secs(30), "no record read");
                // No timeout of our own: the worker sleeps until an activation is due.
                worker.step_or_park(None);
            }
            let waited = started.elapsed();
            // The source never ends by itself: drop it, or `execute_directly` waits for it.
            for id in worker.installed_dataflows() {
                worker.drop_dataflow(id);
            }
            waited
        })
    });
    assert!(waited < Duration::from_millis(450), "the first record took {waited:?}");
}

/// Partition 0 holds a week of event time in a few seconds' worth of messages, partition 1 the
/// same week: read by one worker with an alignment of 12 hours, neither runs far ahead of the
/// other (without it, librdkafka hands one partition's backlog over first), pausing and resuming
/// loses and repeats no message, and once both are read to their end the progress report says
/// they are idle and gives the newest event time.
#[tokio::test(flavor = "multi_thread")]
async fn partitions_read_aligned_in_event_time_lose_nothing_and_report_idle_at_their_end() {
    const N: usize = 20_000;
    const T0: i64 = 1_763_750_000_000;
    const DAY: i64 = 24 * 3600 * 1000;
    let ts = |i: usize| T0 + i as i64 * 7 * DAY / N as i64;
    let topic = unique("source-align");
    squall::kafka::create_topics(&brokers(), std::slice::from_ref(&topic), 2).await.expect("create topic");
    tokio::task::block_in_place(|| {
        produce_to_partitions(&topic, &[0, 1], 0, N, |p, i| {
            let payload = format!(
                r#"{{"event_id":"e{p}-{i}","user_id":"u{i}","track_id":"t1","ms_played":1000,"ts":{}}}"#,
                ts(i)
            );
            (format!("u{i}"), payload)
        })
    });
    let mut config = song_source(&topic, 2, Duration::from_millis(100), Arc::new(AtomicBool::new(false)));
    config.alignment = Arc::new(Alignment::new(DAY / 2));
    let (skew, offsets, last) = tokio::task::block_in_place(|| {
        timely::execute_directly(move |worker| {
            // Per partition, the next offset expected (from the event id) and the newest ts read
            // (a partition not read yet is at its first event's); the largest skew seen.
            let read = Rc::new(std::cell::RefCell::new(([0usize; 2], [ts(0); 2], 0i64)));
            let progress = Rc::new(std::cell::RefCell::new(Vec::new()));
            let (seen, reports) = (Rc::clone(&read), Rc::clone(&progress));
            worker.dataflow::<Epoch, _, _>(|scope| {
                let source = scope.consume_kafka(&config, 0).expect("source");
                source.events.inspect(move |e| {
                    let (next, newest, skew) = &mut *seen.borrow_mut();
                    let id = e.event_id();
                    let (p, i) = id[1..].split_once('-').expect("e<p>-<i>");
                    let (p, i): (usize, usize) = (p.parse().unwrap(), i.parse().unwrap());
                    assert_eq!(i, next[p], "partition {p}: message {i} read out of turn");
                    next[p] += 1;
                    newest[p] = newest[p].max(e.ts());
                    // While both still have messages to give, how far apart they are.
                    if next.iter().all(|n| *n < N) {
                        *skew = (*skew).max((newest[0] - newest[1]).abs());
                    }
                });
                source.progress.inspect(move |(_, p)| reports.borrow_mut().push(*p));
            });
            let deadline = Instant::now() + Duration::from_secs(60);
            let done = |r: &([usize; 2], [i64; 2], i64), reports: &[squall_operators::Progress]| {
                r.0 == [N, N] && reports.last().is_some_and(|p| p.low == i64::MAX)
            };
            while !done(&read.borrow(), &progress.borrow()) {
                assert!(
                    Instant::now() < deadline,
                    "read {:?} of {N} each; reports {:?}",
                    read.borrow().0,
                    progress.borrow().last()
                );
                worker.step_or_park(Some(Duration::from_millis(10)));
            }
            for id in worker.installed_dataflows() {
                worker.drop_dataflow(id);
            }
            let r = read.borrow();
            (r.2, r.0, *progress.borrow().last().expect("a report"))
        })
    });
    assert_eq!(offsets, [N, N], "every message read once");
    assert_eq!((last.low, last.high), (i64::MAX, ts(N - 1)), "both idle at their end, newest ts {}", ts(N - 1));
    println!("alignment: partitions at most {:.1} h apart in event time (bound 12 h)", skew as f64 / 3.6e6);
    // The bound, plus what one activation reads before the check (1024 messages, 8.6 h here);
    // without the alignment they ran the whole week apart.
    assert!(skew <= DAY, "partitions ran {:.1} h apart with a 12 h alignment", skew as f64 / 3.6e6);
}

/// Bursts produced while the source reads, each partition's burst a different length of event
/// time, so that partitions are skewed and alignment (a 1-hour bound) pauses and resumes them
/// hundreds of times, and partitions keep reaching their end between bursts (idle after 1 s):
/// every message of every partition is read exactly once and in offset order (issue 26: the
/// pause path once lost a record and repeated another).
#[tokio::test(flavor = "multi_thread")]
async fn bursts_read_under_alignment_pauses_lose_and_repeat_no_message() {
    use rand::{Rng, SeedableRng};
    const PARTITIONS: usize = 4;
    const BURSTS: usize = 6;
    const T0: i64 = 1_763_750_000_000;
    const HOUR: i64 = 3600 * 1000;
    let topic = unique("source-bursts");
    squall::kafka::create_topics(&brokers(), std::slice::from_ref(&topic), PARTITIONS as i32)
        .await
        .expect("create topic");
    // Per burst and partition: how many messages, spread over a day of event time from the
    // burst's start (so a short burst runs through its day faster than a long one).
    let mut rng = rand::rngs::StdRng::seed_from_u64(26);
    let sizes: Vec<[usize; PARTITIONS]> =
        (0..BURSTS).map(|_| std::array::from_fn(|_| rng.random_range(300..4000))).collect();
    let totals: [usize; PARTITIONS] = std::array::from_fn(|p| sizes.iter().map(|s| s[p]).sum());
    let producer = {
        let (topic, sizes) = (topic.clone(), sizes.clone());
        std::thread::spawn(move || {
            use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
            let producer: ThreadedProducer<DefaultProducerContext> = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", brokers())
                .set("enable.idempotence", "true")
                .set("linger.ms", "5")
                .create()
                .expect("producer");
            let mut from = [0usize; PARTITIONS];
            for (b, size) in sizes.iter().enumerate() {
                // A burst: every partition's share at once, then the next burst once it is delivered.
                for (p, &n) in size.iter().enumerate() {
                    for k in 0..n {
                        let i = from[p] + k;
                        let ts = T0 + b as i64 * 24 * HOUR + k as i64 * 24 * HOUR / n as i64;
                        let (key, payload) = (
                            format!("u{i}"),
                            format!(
                                r#"{{"event_id":"e{p}-{i}","user_id":"u{i}","track_id":"t1","ms_played":1000,"ts":{ts}}}"#
                            ),
                        );
                        let record = BaseRecord::to(&topic).partition(p as i32).key(&key).payload(&payload);
                        producer.send(record).expect("enqueue");
                    }
                    from[p] += n;
                }
                producer.flush(Duration::from_secs(30)).expect("every record delivered");
            }
        })
    };
    let mut config =
        song_source(&topic, PARTITIONS as i32, Duration::from_millis(50), Arc::new(AtomicBool::new(false)));
    config.alignment = Arc::new(Alignment::new(HOUR));
    config.idle_after = Duration::from_secs(1);
    config.max_batch = 256;
    let (read, problems) = tokio::task::block_in_place(|| {
        timely::execute_directly(move |worker| {
            // Per partition, the next message expected; what went wrong.
            let state = Rc::new(std::cell::RefCell::new(([0usize; PARTITIONS], Vec::<String>::new())));
            let seen = Rc::clone(&state);
            worker.dataflow::<Epoch, _, _>(|scope| {
                let source = scope.consume_kafka(&config, 0).expect("source");
                source.events.inspect(move |e| {
                    let (next, problems) = &mut *seen.borrow_mut();
                    let (p, i) = e.event_id()[1..].split_once('-').expect("e<p>-<i>");
                    let (p, i): (usize, usize) = (p.parse().unwrap(), i.parse().unwrap());
                    if i != next[p] && problems.len() < 20 {
                        problems.push(format!("partition {p}: message {i} read when {} was next", next[p]));
                    }
                    next[p] = next[p].max(i + 1);
                });
            });
            let deadline = Instant::now() + Duration::from_secs(120);
            while state.borrow().0 != totals && state.borrow().1.is_empty() {
                assert!(Instant::now() < deadline, "read {:?} of {totals:?}", state.borrow().0);
                worker.step_or_park(Some(Duration::from_millis(10)));
            }
            for id in worker.installed_dataflows() {
                worker.drop_dataflow(id);
            }
            state.take()
        })
    });
    producer.join().expect("the producer");
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(read, totals, "every message read once");
}

/// A partition paused by the alignment while at its end resumes at its next message: librdkafka's
/// batch read moves its resume position one past a partition-EOF event, so without the source's
/// own seek the first message produced to it after the pause was never read (issue 26).
///
/// Partition 1 is read to its end two days ahead in event time; then partition 0 gets a backlog
/// two days behind, which pauses partition 1 while it sits at its end; then partition 1 gets one
/// more message, which must be read once partition 0 has caught up.
#[tokio::test(flavor = "multi_thread")]
async fn a_partition_paused_at_its_end_loses_no_message_when_resumed() {
    const T0: i64 = 1_763_750_000_000;
    const HOUR: i64 = 3600 * 1000;
    const BACKLOG: usize = 5_000;
    let topic = unique("source-paused-end");
    squall::kafka::create_topics(&brokers(), std::slice::from_ref(&topic), 2).await.expect("create topic");
    let payload = |p: i32, i: usize, ts: i64| {
        let json = format!(r#"{{"event_id":"e{p}-{i}","user_id":"u{i}","track_id":"t1","ms_played":1000,"ts":{ts}}}"#);
        (format!("u{i}"), json)
    };
    tokio::task::block_in_place(|| produce_to_partitions(&topic, &[1], 0, 3, |p, i| payload(p, i, T0 + 48 * HOUR)));
    let mut config = song_source(&topic, 2, Duration::from_millis(50), Arc::new(AtomicBool::new(false)));
    config.alignment = Arc::new(Alignment::new(HOUR));
    // Not idle for the watermark meanwhile: an idle partition is never paused.
    config.idle_after = Duration::from_secs(600);
    let read = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let producer = {
        let (topic, read) = (topic.clone(), Arc::clone(&read));
        std::thread::spawn(move || {
            let wait = |what: &str, n: usize| {
                let deadline = Instant::now() + Duration::from_secs(60);
                while read.lock().unwrap().len() < n {
                    assert!(Instant::now() < deadline, "{what}: read {:?}", read.lock().unwrap().len());
                    std::thread::sleep(Duration::from_millis(5));
                }
            };
            wait("partition 1's first messages", 3);
            produce_to_partitions(&topic, &[0], 0, BACKLOG, |p, i| payload(p, i, T0 + i as i64 * 1000));
            wait("partition 0's backlog", 3 + BACKLOG);
            produce_to_partitions(&topic, &[1], 3, 1, |p, i| payload(p, i, T0 + 49 * HOUR));
        })
    };
    let seen = Arc::clone(&read);
    let ids = tokio::task::block_in_place(move || {
        timely::execute_directly(move |worker| {
            let inspect = Arc::clone(&seen);
            worker.dataflow::<Epoch, _, _>(|scope| {
                let source = scope.consume_kafka(&config, 0).expect("source");
                source.events.inspect(move |e| inspect.lock().unwrap().push(e.event_id().to_owned()));
            });
            let deadline = Instant::now() + Duration::from_secs(90);
            while !seen.lock().unwrap().iter().any(|id| id == "e1-3") {
                assert!(
                    Instant::now() < deadline,
                    "partition 1's message after the pause was not read ({} read)",
                    seen.lock().unwrap().len()
                );
                worker.step_or_park(Some(Duration::from_millis(10)));
            }
            for id in worker.installed_dataflows() {
                worker.drop_dataflow(id);
            }
            seen.lock().unwrap().clone()
        })
    });
    producer.join().expect("the producer");
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), ids.len(), "a message read twice");
    assert_eq!(ids.len(), 4 + BACKLOG, "every message read once");
}

/// A fresh topic named after `prefix` with `partitions` partitions, each holding `per_partition`
/// valid song completions (event ids unique across partitions).
async fn songs_topic(prefix: &str, partitions: i32, per_partition: usize) -> String {
    let topic = unique(prefix);
    squall::kafka::create_topics(&brokers(), std::slice::from_ref(&topic), partitions).await.expect("create topic");
    let all: Vec<i32> = (0..partitions).collect();
    tokio::task::block_in_place(|| {
        produce_to_partitions(&topic, &all, 0, per_partition, |p, i| {
            let payload = format!(
                r#"{{"event_id":"e{p}-{i}","user_id":"u{i}","track_id":"t1","ms_played":1000,"ts":1763750000123}}"#
            );
            (format!("u{i}"), payload)
        })
    });
    topic
}

/// A source reading song completions from every one of `partitions` partitions of `topic` from
/// the earliest offsets, under a group id of its own.
fn song_source(topic: &str, partitions: i32, epoch_interval: Duration, shutdown: Arc<AtomicBool>) -> SourceConfig {
    SourceConfig {
        brokers: brokers(),
        group_id: unique(&format!("{topic}-group")),
        partitions: (0..partitions)
            .map(|p| (Partition { topic: topic.to_owned(), partition: p }, EventKind::Song))
            .collect(),
        resume_at: Default::default(),
        start_from: StartFrom::Earliest,
        limits: DecodeLimits::default(),
        epoch_interval,
        max_batch: 1024,
        pending: Arc::new(AtomicUsize::new(0)),
        max_pending: usize::MAX,
        shutdown,
        properties: Vec::new(),
        alignment: Arc::new(Alignment::new(0)),
        idle_after: Duration::ZERO,
        backfill: None,
        backfilled: Default::default(),
    }
}

/// An archive of a topic held in memory: per partition, its records at their offsets.
#[derive(Debug)]
struct MemoryArchive {
    records: std::collections::BTreeMap<Partition, Vec<Archived>>,
    /// Partitions whose archive fails after this many records.
    fail_after: std::collections::BTreeMap<Partition, usize>,
}

struct MemoryCursor {
    records: std::vec::IntoIter<Archived>,
    fail_after: Option<usize>,
    given: usize,
}

impl Cursor for MemoryCursor {
    fn next_batch(&mut self, max: usize, out: &mut Vec<Archived>) -> Result<(), BacklogError> {
        for _ in 0..max.min(100) {
            if self.fail_after == Some(self.given) {
                return Err(BacklogError { what: "file-7.parquet: truncated".into() });
            }
            let Some(r) = self.records.next() else { break };
            out.push(r);
            self.given += 1;
        }
        Ok(())
    }
}

impl Backlog for MemoryArchive {
    fn extents(&self) -> std::collections::BTreeMap<Partition, Extent> {
        self.records
            .iter()
            .map(|(p, r)| (p.clone(), Extent { first: r[0].offset, last: r[r.len() - 1].offset }))
            .collect()
    }

    fn open(
        &self,
        partition: &Partition,
        _kind: EventKind,
        from: i64,
        _since_ms: Option<i64>,
        _limits: &DecodeLimits,
    ) -> Result<Box<dyn Cursor>, BacklogError> {
        let records: Vec<Archived> = self.records[partition].iter().filter(|r| r.offset >= from).cloned().collect();
        Ok(Box::new(MemoryCursor {
            records: records.into_iter(),
            fail_after: self.fail_after.get(partition).copied(),
            given: 0,
        }))
    }
}

/// Reads `config` until `done(events read, dead letters)` holds; the event ids read and the
/// dead letters' offsets.
fn read_until(
    config: SourceConfig,
    done: impl Fn(usize, usize) -> bool + Send + Sync + 'static,
) -> (Vec<String>, Vec<(i32, i64)>) {
    tokio::task::block_in_place(|| {
        timely::execute_directly(move |worker| {
            let ids = Rc::new(std::cell::RefCell::new(Vec::new()));
            let dead = Rc::new(std::cell::RefCell::new(Vec::new()));
            let (seen, seen_dead) = (Rc::clone(&ids), Rc::clone(&dead));
            worker.dataflow::<Epoch, _, _>(|scope| {
                let source = scope.consume_kafka(&config, 0).expect("source");
                source.events.inspect(move |e| seen.borrow_mut().push(e.event_id().to_owned()));
                source.dead.inspect(move |d| seen_dead.borrow_mut().push((d.partition, d.offset)));
            });
            let deadline = Instant::now() + Duration::from_secs(60);
            while !done(ids.borrow().len(), dead.borrow().len()) {
                assert!(
                    Instant::now() < deadline,
                    "read {} events, {} dead letters",
                    ids.borrow().len(),
                    dead.borrow().len()
                );
                worker.step_or_park(Some(Duration::from_millis(10)));
            }
            for id in worker.installed_dataflows() {
                worker.drop_dataflow(id);
            }
            (ids.take(), dead.take())
        })
    })
}

/// A backfill reads each partition's archive and then Kafka from exactly the next offset: the
/// topic's first part here holds other events than the archive ("ghosts"), so an event read from
/// Kafka instead of the archive shows, and so does one read twice or lost at the seam. A resume
/// offset inside the archive starts there, one past it starts in Kafka; `--since` passes over
/// older archived events but not Kafka's. A malformed archived
/// record goes to the dead letters; a pre-decoded one is used as it is; a partition whose archive
/// fails stops (reading Kafka past a hole would lose the records in it) and says which file.
#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_reads_the_archive_then_kafka_from_the_next_offset_exactly() {
    const N: usize = 3000;
    const M: usize = 1000;
    let topic = unique("source-backfill");
    squall::kafka::create_topics(&brokers(), std::slice::from_ref(&topic), 2).await.expect("create topic");
    let payload = |p: i32, i: usize| {
        format!(
            r#"{{"event_id":"e{p}-{i}","user_id":"u{i}","track_id":"t1","ms_played":1000,"ts":{}}}"#,
            1_763_750_000_000 + i as i64
        )
    };
    tokio::task::block_in_place(|| {
        produce_to_partitions(&topic, &[0, 1], 0, N, |p, i| {
            let body = if i < M {
                format!(r#"{{"event_id":"ghost{p}-{i}","user_id":"ghost","track_id":"t1","ms_played":1,"ts":1}}"#)
            } else {
                payload(p, i)
            };
            (format!("u{i}"), body)
        })
    });
    let part = |p: i32| Partition { topic: topic.clone(), partition: p };
    let limits = DecodeLimits::default();
    let archived = |p: i32| -> Vec<Archived> {
        (0..M)
            .map(|i| {
                let body = if p == 1 && i == 10 { b"{not json".to_vec() } else { payload(p, i).into_bytes() };
                // Every other record as the archiver leaves it: decoded, the payload dropped.
                let decoded = (i % 2 == 0).then(|| squall_operators::event::decode(EventKind::Song, &body, &limits));
                let payload = if decoded.as_ref().is_some_and(|d| d.is_ok()) { Vec::new() } else { body };
                Archived { offset: i as i64, key: None, payload, decoded }
            })
            .collect()
    };
    let archive = |fail_after: &[(i32, usize)]| {
        Arc::new(MemoryArchive {
            records: (0..2).map(|p| (part(p), archived(p))).collect(),
            fail_after: fail_after.iter().map(|(p, n)| (part(*p), *n)).collect(),
        })
    };
    let expected = |from: [usize; 2]| -> Vec<String> {
        let mut ids: Vec<String> = (0..2)
            .flat_map(|p| (from[p]..N).filter(move |i| !(p == 1 && *i == 10)).map(move |i| format!("e{p}-{i}")))
            .collect();
        ids.sort();
        ids
    };
    let config = |backlog: Arc<MemoryArchive>, resume: &[(i32, i64)]| {
        let mut c = song_source(&topic, 2, Duration::from_millis(100), Arc::new(AtomicBool::new(false)));
        c.backfill = Some(Backfill { backlog, since_ms: None });
        c.resume_at = resume.iter().map(|(p, o)| (part(*p), *o)).collect();
        c
    };

    // From the start: the archive's 2 x 1000 (one of them malformed), then Kafka's 2 x 2000.
    let (mut ids, dead) = read_until(config(archive(&[]), &[]), |n, d| n + d >= 2 * N);
    ids.sort();
    assert_eq!(ids, expected([0, 0]), "every event once, none of Kafka's first part");
    assert_eq!(dead, vec![(1, 10)], "the malformed archived record is a dead letter");

    // Resumed inside the archive (p0 at 500) and past it (p1 at 1500).
    let (mut ids, _) = read_until(config(archive(&[]), &[(0, 500), (1, 1500)]), |n, _| n >= 2 * N - 2000);
    ids.sort();
    assert_eq!(ids, expected([500, 1500]));

    // `--since`: archived events older than it are passed over (their offsets too), Kafka's
    // are not; a malformed record is no event and goes to the dead letters whatever its age.
    let mut c = config(archive(&[]), &[]);
    c.backfill = Some(Backfill { backlog: archive(&[]), since_ms: Some(1_763_750_000_000 + 400) });
    let (mut ids, dead) = read_until(c, |n, d| n + d > 2 * (N - 400));
    ids.sort();
    assert_eq!(ids, expected([400, 400]), "archived events from the since bound on, then Kafka's");
    assert_eq!(dead, vec![(1, 10)]);

    // p1's archive fails after 300 records: p1 stops there, p0 goes on into Kafka.
    let c = config(archive(&[(1, 300)]), &[]);
    let progress = Arc::clone(&c.backfilled);
    let (mut ids, _) = read_until(c, |n, d| n + d >= N + 300);
    ids.sort();
    let mut want: Vec<String> =
        (0..N).map(|i| format!("e0-{i}")).chain((0..300).filter(|i| *i != 10).map(|i| format!("e1-{i}"))).collect();
    want.sort();
    assert_eq!(ids, want, "p0 whole, p1 up to the failure and nothing after it");
    let error = progress.error.lock().unwrap().clone();
    assert_eq!(error.as_deref(), Some(format!("{topic}[1]: file-7.parquet: truncated").as_str()));
}
