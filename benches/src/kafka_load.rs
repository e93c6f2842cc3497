//! The harnesses' Kafka inputs: topics pre-produced with generated events, a producer that waits
//! out a full queue, the bare rdkafka consumers that set the ceiling, and the catalogue file the
//! peers read.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::Offset;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::TopicPartitionList;
use squall::generate::CatalogueGen;

use crate::DevEnv;
use crate::procs::squall_gen;

/// The pre-produced input of a run named `run`: creates `<run>-songs` and `<run>-ads` (6 partitions
/// each), loads the generated catalogue, and produces `events` valid events over `users` users as
/// fast as the broker takes them. The two topics, and the seconds the producing took.
pub fn pre_produce(bins: &Path, env: &DevEnv, run: &str, events: u64, users: u64) -> (String, String, f64) {
    let (songs, ads) = (format!("{run}-songs"), format!("{run}-ads"));
    create_topics(bins, &env.brokers, (&songs, &ads), 6);
    squall_gen(bins, &["catalogue", "--cql", &env.cql]);
    let t = Instant::now();
    produce_events(bins, &env.brokers, (&songs, &ads), events, users, &[]);
    (songs, ads, t.elapsed().as_secs_f64())
}

/// The arguments of `squall-gen` naming the broker and the song and ad topics.
fn topic_args<'a>(brokers: &'a str, topics: (&'a str, &'a str)) -> [&'a str; 6] {
    ["--brokers", brokers, "--song-topic", topics.0, "--ad-topic", topics.1]
}

/// Creates the song and ad topics `topics` with `partitions` partitions each (`squall-gen topics`).
pub fn create_topics(bins: &Path, brokers: &str, topics: (&str, &str), partitions: u32) {
    let partitions = partitions.to_string();
    let mut args = vec!["topics"];
    args.extend(topic_args(brokers, topics));
    args.extend(["--partitions", &partitions]);
    squall_gen(bins, &args);
}

/// Produces `events` valid events (no malformed records) over `users` users to `topics` as fast
/// as the broker takes them (`squall-gen events`, with `extra` arguments).
pub fn produce_events(bins: &Path, brokers: &str, topics: (&str, &str), events: u64, users: u64, extra: &[&str]) {
    let (n, users) = (events.to_string(), users.to_string());
    let mut args = vec!["events"];
    args.extend(topic_args(brokers, topics));
    args.extend(["--rate", "0", "--count", &n, "--users", &users, "--malformed", "0"]);
    args.extend(extra);
    squall_gen(bins, &args);
}

/// The partitions of `topics` (ids 0..n each).
fn partitions(consumer: &BaseConsumer, topics: &[&str]) -> Vec<(String, i32)> {
    let mut out = Vec::new();
    for t in topics {
        let md = consumer.fetch_metadata(Some(t), Duration::from_secs(10)).expect("metadata");
        for topic in md.topics() {
            for p in topic.partitions() {
                out.push((t.to_string(), p.id()));
            }
        }
    }
    out.sort();
    out
}

/// What the bare consumers of [`bare_consume`] did.
#[derive(Clone, Copy, Debug)]
pub struct Consumed {
    /// Records read.
    pub messages: u64,
    /// Payload bytes read.
    pub bytes: u64,
    /// From creating the consumers to the last record.
    pub seconds: f64,
    /// From creating the consumers to the first record.
    pub seconds_to_first: f64,
    /// CPU-seconds of this process over `seconds`.
    pub cpu_s: f64,
    /// Of which before the first record.
    pub cpu_s_to_first: f64,
}

/// The ceiling: `workers` bare rdkafka consumers (one thread each, partitions spread as squall
/// spreads them, the fetch settings of squall's source with `fetch.wait.max.ms` = `fetch_wait_ms`)
/// read both topics from the beginning, touching every payload.
pub fn bare_consume(brokers: &str, topics: &[&str], workers: usize, fetch_wait_ms: u32) -> Consumed {
    let config = |w: usize| {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", brokers)
            .set("group.id", format!("bare-{}", std::process::id()))
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", fetch_wait_ms.to_string())
            .set("queued.max.messages.kbytes", "65536")
            .set("fetch.queue.backoff.ms", "1")
            .set("client.id", format!("bare-w{w}"));
        c
    };
    let cpu0 = crate::engine::process_cpu_seconds();
    let started = Instant::now();
    let first: Arc<OnceLock<(Instant, f64)>> = Arc::default();
    let probe: BaseConsumer = config(99).create().expect("consumer");
    let all = partitions(&probe, topics);
    let threads: Vec<_> = (0..workers)
        .map(|w| {
            let mine: Vec<(String, i32)> =
                all.iter().enumerate().filter(|(i, _)| i % workers == w).map(|(_, p)| p.clone()).collect();
            let consumer: BaseConsumer = config(w).create().expect("consumer");
            let first = Arc::clone(&first);
            std::thread::spawn(move || {
                let mut tpl = TopicPartitionList::new();
                let mut want = 0i64;
                for (t, p) in &mine {
                    let (lo, hi) = consumer.fetch_watermarks(t, *p, Duration::from_secs(10)).expect("watermarks");
                    want += hi - lo;
                    tpl.add_partition_offset(t, *p, Offset::Beginning).expect("tpl");
                }
                consumer.assign(&tpl).expect("assign");
                let (mut n, mut bytes) = (0i64, 0u64);
                while n < want {
                    match consumer.poll(Duration::from_millis(100)) {
                        Some(Ok(m)) => {
                            if n == 0 {
                                first.get_or_init(|| (Instant::now(), crate::engine::process_cpu_seconds()));
                            }
                            n += 1;
                            bytes += m.payload().map_or(0, |p| std::hint::black_box(p).len() as u64);
                        }
                        Some(Err(e)) => eprintln!("bare consumer: {e}"),
                        None => {}
                    }
                }
                (n as u64, bytes)
            })
        })
        .collect();
    let (mut messages, mut bytes) = (0, 0);
    for t in threads {
        let (a, b) = t.join().expect("consumer thread");
        messages += a;
        bytes += b;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_s = crate::engine::process_cpu_seconds() - cpu0;
    let (first_at, cpu_at_first) = first.get().copied().unwrap_or((Instant::now(), cpu0));
    Consumed {
        messages,
        bytes,
        seconds,
        seconds_to_first: (first_at - started).as_secs_f64(),
        cpu_s,
        cpu_s_to_first: cpu_at_first - cpu0,
    }
}

/// A producer to `brokers` that lingers `linger_ms` and queues up to a million messages.
pub fn producer(brokers: &str, linger_ms: &str) -> ThreadedProducer<DefaultProducerContext> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", linger_ms)
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer")
}

/// Sends one record, waiting while the producer's queue is full.
pub fn send(p: &ThreadedProducer<DefaultProducerContext>, topic: &str, key: &str, payload: &[u8]) {
    let mut record = BaseRecord::to(topic).key(key).payload(payload);
    loop {
        match p.send(record) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, _)) => panic!("produce to {topic}: {e}"),
        }
    }
}

/// Writes the catalogue as `{"tracks": {id: genre}, "ads": {id: category}}`, the file the peers
/// (Bytewax, Flink) load instead of reading the CQL store.
pub fn write_catalogue_json(path: &Path, catalogue: &CatalogueGen) {
    let tracks: serde_json::Map<String, serde_json::Value> =
        (0..catalogue.tracks).map(|i| (format!("t{i}"), catalogue.genre(i).into())).collect();
    let ads: serde_json::Map<String, serde_json::Value> =
        (0..catalogue.ads).map(|i| (format!("a{i}"), catalogue.category(i).into())).collect();
    std::fs::write(path, serde_json::json!({"tracks": tracks, "ads": ads}).to_string()).expect("write catalogue");
}
