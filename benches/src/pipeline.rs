//! Helpers of the `pipeline` and `compare` harnesses: a running `squall`, a bare rdkafka consumer
//! (the ceiling), peers run as child processes that mark their first and last record, CPU time of a
//! process tree, CPU pinning, a paced producer with latency probes, and an HTTP load generator.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Zipf};
use rdkafka::Offset;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::TopicPartitionList;
use squall::generate::{CatalogueGen, EventGen, EventGenConfig, Generated};
use squall_operators::event::SongCompletion;
use squall_operators::{Event, EventKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One blocking HTTP/1.1 GET (connection closed after): status and body.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

/// The sum of every sample of the Prometheus metric `name` in `text`.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A `squall run` child process.
pub struct Squall {
    child: Child,
    /// `host:port` of its HTTP server.
    pub addr: String,
    /// When it printed "serving on".
    pub serving_at: Instant,
    /// When it was spawned.
    pub spawned_at: Instant,
}

impl Squall {
    /// Writes a topology file for the topics (plus the TOML `extra`, e.g. an `[enrichment]`
    /// section) and starts `squall run` on it.
    pub fn start(
        bin_dir: &Path,
        name: &str,
        brokers: &str,
        cql: &str,
        topics: (&str, &str),
        workers: usize,
        extra: &str,
    ) -> Self {
        Self::start_on(bin_dir, name, brokers, cql, topics, workers, extra, None)
    }

    /// As [`Squall::start`], on the CPUs `cpus` (a `taskset -c` list) when given.
    #[allow(clippy::too_many_arguments)]
    pub fn start_on(
        bin_dir: &Path,
        name: &str,
        brokers: &str,
        cql: &str,
        topics: (&str, &str),
        workers: usize,
        extra: &str,
        cpus: Option<&str>,
    ) -> Self {
        let topo = std::env::temp_dir().join(format!("{name}.toml"));
        std::fs::write(
            &topo,
            format!(
                "name = \"{name}\"\nversion = 1\nattributes = \"personalization_v1\"\n[kafka]\nbrokers = \"{brokers}\"\n\
                 song_completions = \"{}\"\nad_impressions = \"{}\"\n[cql]\nnodes = \"{cql}\"\n[http]\nlisten = \"127.0.0.1:0\"\n{extra}",
                topics.0, topics.1
            ),
        )
        .expect("write topology");
        let spawned_at = Instant::now();
        let mut command = match cpus {
            // taskset execs squall: the child's pid is squall's.
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpus]).arg(bin_dir.join("squall"));
                c
            }
            None => Command::new(bin_dir.join("squall")),
        };
        let mut child = command
            .args(["run", "--topology"])
            .arg(&topo)
            .args(["--workers", &workers.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn squall");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let addr = loop {
            let line = lines.next().expect("squall exited before serving").expect("read stdout");
            if let Some((_, url)) = line.split_once("serving on ") {
                break url.trim().trim_start_matches("http://").to_owned();
            }
        };
        let serving_at = Instant::now();
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Squall { child, addr, serving_at, spawned_at }
    }

    /// Events applied plus resends dropped, from `/metrics`.
    pub fn processed(&self) -> f64 {
        match http_get(&self.addr, "/metrics") {
            Ok((200, text)) => {
                metric(&text, "squall_events_applied_total") + metric(&text, "squall_events_duplicate_total")
            }
            _ => 0.0,
        }
    }

    /// Records read from the topics so far, from `/metrics`.
    pub fn consumed(&self) -> f64 {
        match http_get(&self.addr, "/metrics") {
            Ok((200, text)) => metric(&text, "squall_events_consumed_total"),
            _ => 0.0,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The CPU time squall has used so far (all its threads).
    pub fn cpu_seconds(&self) -> f64 {
        crate::engine::cpu_seconds_of(&self.child.id().to_string())
    }

    /// Waits until `n` events are processed; the instant it saw them.
    pub fn wait_for(&self, n: f64, timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.processed() >= n {
                return Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Squall {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pre-produced input of a run named `run`: creates `<run>-songs` and `<run>-ads` (6 partitions
/// each), loads the generated catalogue, and produces `events` valid events over `users` users as
/// fast as the broker takes them. The two topics, and the seconds the producing took.
pub fn pre_produce(bins: &Path, brokers: &str, cql: &str, run: &str, events: u64, users: u64) -> (String, String, f64) {
    let (songs, ads) = (format!("{run}-songs"), format!("{run}-ads"));
    squall_gen(
        bins,
        &["topics", "--brokers", brokers, "--song-topic", &songs, "--ad-topic", &ads, "--partitions", "6"],
    );
    squall_gen(bins, &["catalogue", "--cql", cql]);
    let (n, users) = (events.to_string(), users.to_string());
    let t = Instant::now();
    squall_gen(
        bins,
        &[
            "events",
            "--brokers",
            brokers,
            "--song-topic",
            &songs,
            "--ad-topic",
            &ads,
            "--rate",
            "0",
            "--count",
            &n,
            "--users",
            &users,
            "--malformed",
            "0",
        ],
    );
    (songs, ads, t.elapsed().as_secs_f64())
}

/// Runs a `squall-gen` subcommand, panicking with its output on failure.
pub fn squall_gen(bin_dir: &Path, args: &[&str]) {
    let out = Command::new(bin_dir.join("squall-gen")).args(args).output().expect("spawn squall-gen");
    assert!(out.status.success(), "squall-gen {args:?}: {}", String::from_utf8_lossy(&out.stderr));
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

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as i64
}

/// A producer of generated events at a steady rate, for the latency and HTTP phases.
pub struct Load {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
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

impl Load {
    /// Produces `config`'s events to `topics` at `rate` per second until stopped (none at a rate
    /// of 0 or less; as fast as it can at `f64::INFINITY`).
    pub fn start(brokers: &str, topics: (&str, &str), config: EventGenConfig, rate: f64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        if rate <= 0.0 || rate.is_nan() {
            return Load { stop, thread: None };
        }
        let (stopped, brokers) = (Arc::clone(&stop), brokers.to_owned());
        let (songs, ads) = (topics.0.to_owned(), topics.1.to_owned());
        let thread = std::thread::spawn(move || {
            // The background load's own latency is not measured (the probes have their own
            // producer, linger 0), so it batches like a production producer would: 20 ms. With
            // 1 ms its produce requests and the broker's handling of them took the whole load
            // core at half the rate squall keeps up with, and the probes queued behind them.
            let p = producer(&brokers, "20");
            let mut g = EventGen::new(config, 99);
            let started = Instant::now();
            let mut n = 0u64;
            while !stopped.load(Relaxed) {
                let due = Duration::from_secs_f64(n as f64 / rate);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait.min(Duration::from_millis(5)));
                    continue;
                }
                if let Generated::Event(e) = g.next_at(now_ms()) {
                    let topic = if e.kind() == EventKind::Song { &songs } else { &ads };
                    send(&p, topic, e.user_id(), &e.to_json());
                }
                n += 1;
            }
            let _ = p.flush(Duration::from_secs(10));
            n
        });
        Load { stop, thread: Some(thread) }
    }

    /// Stops producing; how many events were produced.
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Relaxed);
        self.thread.take().map_or(0, |t| t.join().unwrap_or(0))
    }
}

/// A blocking HTTP/1.1 client on one keep-alive connection, reconnecting after an error. The
/// prober polls thousands of times a second: a connection per request ran the machine out of
/// ephemeral ports (sockets in TIME_WAIT) within a minute.
pub struct KeepAlive {
    addr: String,
    conn: Option<TcpStream>,
    buf: Vec<u8>,
}

impl KeepAlive {
    /// A client of `addr` (`host:port`); it connects on the first request.
    pub fn new(addr: &str) -> Self {
        KeepAlive { addr: addr.to_owned(), conn: None, buf: Vec::with_capacity(4096) }
    }

    /// The status of `GET path`.
    pub fn get(&mut self, path: &str) -> std::io::Result<u16> {
        self.get_body(path).map(|(status, _)| status)
    }

    /// The status and body of `GET path`.
    pub fn get_body(&mut self, path: &str) -> std::io::Result<(u16, &[u8])> {
        match self.exchange(path) {
            Ok((status, body)) => Ok((status, &self.buf[body])),
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }

    fn exchange(&mut self, path: &str) -> std::io::Result<(u16, std::ops::Range<usize>)> {
        let s = match &mut self.conn {
            Some(s) => s,
            None => {
                let s = TcpStream::connect(&self.addr)?;
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                self.conn.insert(s)
            }
        };
        write!(s, "GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.addr)?;
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        let mut fill = |s: &mut TcpStream, buf: &mut Vec<u8>| -> std::io::Result<()> {
            match s.read(&mut chunk)? {
                0 => Err(std::io::ErrorKind::UnexpectedEof.into()),
                n => {
                    buf.extend_from_slice(&chunk[..n]);
                    Ok(())
                }
            }
        };
        loop {
            fill(s, &mut self.buf)?;
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let (status, len) = response_head(&self.buf[..end]);
                while self.buf.len() < end + 4 + len {
                    fill(s, &mut self.buf)?;
                }
                return Ok((status, end + 4..end + 4 + len));
            }
        }
    }
}

/// Latency probes: every `every`, produce one song completion for a fresh user and poll its
/// attributes over HTTP (every 0.5 ms, one keep-alive connection) until they show it. Returns the
/// latencies in microseconds.
pub fn probe_latency(brokers: &str, song_topic: &str, http: &str, every: Duration, total: Duration) -> Vec<u64> {
    let p = producer(brokers, "0");
    let started = Instant::now();
    let run = format!("lat{}", now_ms());
    let mut out = Vec::new();
    let mut i = 0u64;
    let mut client = KeepAlive::new(http);
    while started.elapsed() < total {
        let next = started + every * i as u32;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        i += 1;
        let user = format!("{run}-{i}");
        let e = Event::Song(SongCompletion {
            event_id: format!("{run}-e{i}").into(),
            user_id: user.as_str().into(),
            track_id: "t1".into(),
            ms_played: 100_000,
            ts: now_ms(),
        });
        let sent = Instant::now();
        // No flush: with linger 0 the record leaves at once, and flush() would wait for the
        // delivery report, which the producer's polling thread serves only every 100 ms.
        send(&p, song_topic, &user, &e.to_json());
        let path = format!("/v1/users/{user}/attributes");
        loop {
            if let Ok(200) = client.get(&path) {
                out.push(sent.elapsed().as_micros() as u64);
                break;
            }
            if sent.elapsed() > Duration::from_secs(30) {
                eprintln!("probe {user} not visible after 30 s");
                break;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }
    out
}

/// The `q` quantile of sorted `v`.
pub fn quantile(v: &[u64], q: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// What the HTTP load generator measured.
#[derive(Debug, Default)]
pub struct HttpLoad {
    /// Requests completed.
    pub requests: u64,
    /// Of which 200.
    pub ok: u64,
    /// Of which 404 (a user with no events yet).
    pub not_found: u64,
    /// Other statuses or errors.
    pub errors: u64,
    /// Seconds.
    pub seconds: f64,
    /// Latencies, microseconds, sorted.
    pub latencies_us: Vec<u64>,
}

/// The status and `Content-Length` (0 if absent) of an HTTP/1.1 response head.
fn response_head(head: &[u8]) -> (u16, usize) {
    let number = |b: &[u8]| b.iter().filter(|c| c.is_ascii_digit()).fold(0usize, |n, c| n * 10 + usize::from(c - b'0'));
    let status = head.get(9..12).map_or(0, |b| number(b) as u16);
    let len = head
        .split(|&c| c == b'\n')
        .find(|l| l.len() > 15 && l[..15].eq_ignore_ascii_case(b"content-length:"))
        .map_or(0, |l| number(&l[15..]));
    (status, len)
}

/// `connections` keep-alive connections each sending `GET /v1/users/u<n>/attributes` (n Zipf over
/// `users`) back to back for `duration`, on a tokio runtime of `threads` threads (the load
/// generator shares the machine with squall; one thread keeps its share fixed).
pub fn http_load(addr: &str, users: u64, connections: usize, threads: usize, duration: Duration) -> HttpLoad {
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()
    }
    .expect("runtime");
    rt.block_on(async {
        let started = Instant::now();
        let tasks: Vec<_> = (0..connections)
            .map(|c| {
                let addr = addr.to_owned();
                tokio::spawn(async move {
                    let mut r = HttpLoad::default();
                    let mut rng = StdRng::seed_from_u64(c as u64);
                    let zipf = Zipf::new(users as f64, 1.0).expect("zipf");
                    let mut s = tokio::net::TcpStream::connect(&addr).await.expect("connect");
                    s.set_nodelay(true).ok();
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut have = 0usize;
                    let mut req = Vec::with_capacity(128);
                    while started.elapsed() < duration {
                        let u = zipf.sample(&mut rng) as u64;
                        req.clear();
                        write!(req, "GET /v1/users/u{u}/attributes HTTP/1.1\r\nHost: {addr}\r\n\r\n")
                            .expect("to a Vec");
                        let sent = Instant::now();
                        if s.write_all(&req).await.is_err() {
                            r.errors += 1;
                            break;
                        }
                        // Read one response: headers, then Content-Length bytes of body. Parsed in
                        // place, without copies: the generator shares the cores with squall.
                        let mut scanned = 0usize;
                        let status = loop {
                            let from = scanned.saturating_sub(3);
                            if let Some(end) =
                                buf[from..have].windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + from)
                            {
                                let (status, len) = response_head(&buf[..end]);
                                while have < end + 4 + len {
                                    match s.read(&mut buf[have..]).await {
                                        Ok(0) | Err(_) => break,
                                        Ok(n) => have += n,
                                    }
                                }
                                let used = (end + 4 + len).min(have);
                                buf.copy_within(used..have, 0);
                                have -= used;
                                break Some(status);
                            }
                            scanned = have;
                            match s.read(&mut buf[have..]).await {
                                Ok(0) | Err(_) => break None,
                                Ok(n) => have += n,
                            }
                        };
                        r.requests += 1;
                        r.latencies_us.push(sent.elapsed().as_micros() as u64);
                        match status {
                            Some(200) => r.ok += 1,
                            Some(404) => r.not_found += 1,
                            Some(_) => r.errors += 1,
                            None => {
                                r.errors += 1;
                                break;
                            }
                        }
                    }
                    r
                })
            })
            .collect();
        let mut total = HttpLoad::default();
        for t in tasks {
            let r = t.await.expect("load task");
            total.requests += r.requests;
            total.ok += r.ok;
            total.not_found += r.not_found;
            total.errors += r.errors;
            total.latencies_us.extend(r.latencies_us);
        }
        total.seconds = started.elapsed().as_secs_f64();
        total.latencies_us.sort_unstable();
        total
    })
}

/// The rate squall applies events at while a producer in this process produces as fast as it can
/// to `topics`, over `secs` seconds after a 2 s warm-up: the most the configuration sustains with
/// its load generator, broker and squall sharing the cores. Waits until squall has caught up.
#[derive(Clone, Copy, Debug)]
pub struct LiveMax {
    /// squall's rate over the window.
    pub events_per_sec: f64,
    /// Events produced in all.
    pub produced: u64,
    /// The producer's rate.
    pub produced_per_sec: f64,
    /// Events produced but not yet applied at the end of the window.
    pub lag_at_end: f64,
    /// Whether squall caught up afterwards (within 10 minutes).
    pub caught_up: bool,
}

/// See [`LiveMax`].
pub fn live_max(squall: &Squall, brokers: &str, topics: (&str, &str), config: EventGenConfig, secs: u64) -> LiveMax {
    let before = squall.processed();
    let started = Instant::now();
    let load = Load::start(brokers, topics, config, f64::INFINITY);
    std::thread::sleep(Duration::from_secs(2));
    let (p1, t1) = (squall.processed(), Instant::now());
    std::thread::sleep(Duration::from_secs(secs));
    let (p2, t2) = (squall.processed(), Instant::now());
    let produced = load.stop();
    let produced_per_sec = produced as f64 / started.elapsed().as_secs_f64();
    let caught_up = squall.wait_for(before + produced as f64, Duration::from_secs(600)).is_some();
    LiveMax {
        events_per_sec: (p2 - p1) / (t2 - t1).as_secs_f64(),
        produced,
        produced_per_sec,
        lag_at_end: (before + produced as f64 - p2).max(0.0),
        caught_up,
    }
}

/// Event -> visible-over-HTTP latency under a steady background load.
#[derive(Clone, Copy, Debug)]
pub struct Latency {
    /// The background load's target rate.
    pub load_events_per_sec: f64,
    /// Background events produced.
    pub load_events: u64,
    /// Probes that became visible.
    pub probes: usize,
    /// Median, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile, milliseconds.
    pub p99_ms: f64,
    /// Largest, milliseconds.
    pub max_ms: f64,
    /// Events produced (background and probes) but not yet processed when the probing ended:
    /// more than a second's worth means squall was falling behind.
    pub lag_at_end: f64,
}

/// Produces `config`'s events at `rate` to `topics` and, after 2 s, probes for `secs` seconds
/// (one probe every 20 ms, see [`probe_latency`]).
pub fn latency_under_load(
    squall: &Squall,
    brokers: &str,
    topics: (&str, &str),
    config: EventGenConfig,
    rate: f64,
    secs: u64,
) -> Latency {
    let before = squall.processed();
    let load = Load::start(brokers, topics, config, rate);
    std::thread::sleep(Duration::from_secs(2));
    let mut lat = probe_latency(brokers, topics.0, &squall.addr, Duration::from_millis(20), Duration::from_secs(secs));
    let processed = squall.processed();
    let load_events = load.stop();
    let lag_at_end = (before + load_events as f64 + lat.len() as f64 - processed).max(0.0);
    lat.sort_unstable();
    Latency {
        load_events_per_sec: rate,
        load_events,
        probes: lat.len(),
        p50_ms: quantile(&lat, 0.5) as f64 / 1000.0,
        p99_ms: quantile(&lat, 0.99) as f64 / 1000.0,
        max_ms: lat.last().copied().unwrap_or(0) as f64 / 1000.0,
        lag_at_end,
    }
}

/// A squall on fresh topics, pinned or not, for [`latency_run`].
pub struct LatencyRun<'a> {
    /// Where `squall` and `squall-gen` are.
    pub bin_dir: &'a Path,
    /// Topology name and topic prefix; unique per run.
    pub name: &'a str,
    /// The dev broker (`host:port`).
    pub brokers: &'a str,
    /// The CQL dev server (`host:port`), holding `catalogue`.
    pub cql: &'a str,
    /// Users of the generated load.
    pub users: u64,
    /// The catalogue the load refers to.
    pub catalogue: CatalogueGen,
    /// squall workers.
    pub workers: usize,
    /// Extra TOML for the topology (see [`Squall::start`]).
    pub extra: &'a str,
    /// `(cpus of the broker, the CQL dev server and this process, cpus of squall)` as `taskset -c`
    /// lists; `None`: nothing pinned.
    pub pin: Option<(&'a str, &'a str)>,
    /// The background load as a share of [`live_max`].
    pub load_share: f64,
    /// Window of [`live_max`].
    pub live_secs: u64,
    /// Probing time of [`latency_under_load`].
    pub latency_secs: u64,
    /// Run between the maximum and the latency measurement (see [`latency_run`]).
    pub restart: Option<&'a dyn Fn()>,
}

/// Starts squall on two fresh topics (pinned as `r.pin` says, the broker, CQL dev server and this
/// process first), measures the rate it keeps up with ([`live_max`]), then the latency with a
/// background load at `r.load_share` of that ([`latency_under_load`]). Unpins before returning.
///
/// With `r.restart`, the maximum is measured with one squall and the latency with another, and
/// `restart` runs between them: it should give a fresh broker (and CQL server with the catalogue),
/// so that the latency is not measured on a broker grown by the millions of events of the maximum.
pub fn latency_run(r: &LatencyRun) -> Result<(LiveMax, Latency), String> {
    let config = |what: &str| EventGenConfig {
        users: r.users,
        catalogue: r.catalogue,
        run_id: format!("{}-{what}", r.name),
        ..Default::default()
    };
    // What one squall of the run holds: its pins (dropped after it), itself, its topics.
    type Started = (Option<Pinned>, Squall, (String, String));
    let start = |part: &str| -> Result<Started, String> {
        let name = format!("{}{part}", r.name);
        let topics = (format!("{name}-songs"), format!("{name}-ads"));
        squall_gen(
            r.bin_dir,
            &[
                "topics",
                "--brokers",
                r.brokers,
                "--song-topic",
                &topics.0,
                "--ad-topic",
                &topics.1,
                "--partitions",
                "6",
            ],
        );
        // Pinned first, so that every thread squall and the load generator start is placed from the beginning.
        let pins = r.pin.map(|(load, _)| Pinned::new(r.brokers, r.cql, load)).transpose()?;
        let squall = Squall::start_on(
            r.bin_dir,
            &name,
            r.brokers,
            r.cql,
            (&topics.0, &topics.1),
            r.workers,
            r.extra,
            r.pin.map(|p| p.1),
        );
        Ok((pins, squall, topics))
    };
    let (mut pins, mut squall, mut topics) = start("")?;
    let max = live_max(&squall, r.brokers, (&topics.0, &topics.1), config("max"), r.live_secs);
    if let Some(restart) = r.restart {
        drop(squall);
        drop(pins);
        restart();
        (pins, squall, topics) = start("-lat")?;
    }
    let rate = max.events_per_sec * r.load_share;
    let latency = latency_under_load(&squall, r.brokers, (&topics.0, &topics.1), config("load"), rate, r.latency_secs);
    drop(squall);
    drop(pins);
    Ok((max, latency))
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

/// CPU-seconds (user + system, all threads) used so far by process `pid` and its live descendants,
/// from `/proc`.
pub fn tree_cpu_seconds(pid: u32) -> f64 {
    let mut children: std::collections::HashMap<u32, Vec<u32>> = std::collections::HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(p) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
        // After the parenthesised command name: state, then the parent's id.
        let ppid = stat.rfind(')').and_then(|i| stat[i + 2..].split_whitespace().nth(1)?.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            children.entry(ppid).or_default().push(p);
        }
    }
    let (mut total, mut todo) = (0.0, vec![pid]);
    while let Some(p) = todo.pop() {
        total += crate::engine::cpu_seconds_of(&p.to_string());
        todo.extend(children.get(&p).into_iter().flatten());
    }
    total
}

/// A peer run as a child process that prints a marker line at its first record and another once it
/// has processed every event: when they came (from the spawn) and the CPU time of its process tree
/// then.
#[derive(Clone, Debug)]
pub struct Marked {
    /// Spawn -> first-record marker.
    pub seconds_to_first: f64,
    /// Spawn -> done marker.
    pub seconds: f64,
    /// CPU-seconds of the process tree at the first-record marker.
    pub cpu_s_to_first: f64,
    /// CPU-seconds of the process tree at the done marker.
    pub cpu_s: f64,
    /// Every line it printed on stdout.
    pub stdout: Vec<String>,
}

fn kill_group(pgid: u32) {
    let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pgid}")]).stderr(Stdio::null()).status();
}

/// Runs `command` in its own process group (stdout read here, stderr to `log`) until it prints a
/// line starting with `done`; then kills the group (`kill_after_done`) or waits for it to exit.
/// Gives up after `timeout`, killing the group.
pub fn run_marked(
    mut command: Command,
    first: &str,
    done: &str,
    timeout: Duration,
    kill_after_done: bool,
    log: &Path,
) -> Result<Marked, String> {
    use std::os::unix::process::CommandExt;
    let stderr = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let spawned_at = Instant::now();
    let mut child = command
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("spawn {command:?}: {e}"))?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel::<(String, Instant, f64)>();
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let markers = (first.to_owned(), done.to_owned());
    let reader = std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let at = Instant::now();
            // The CPU time is read at once for the two marker lines only (a /proc scan each).
            let marker = line.starts_with(&markers.0) || line.starts_with(&markers.1);
            let cpu = if marker { tree_cpu_seconds(pid) } else { 0.0 };
            if tx.send((line, at, cpu)).is_err() {
                break;
            }
        }
    });
    let deadline = spawned_at + timeout;
    let (mut to_first, mut to_done, mut lines) = (None, None, Vec::new());
    let failure = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((line, at, cpu)) => {
                if to_first.is_none() && line.starts_with(first) {
                    to_first = Some(((at - spawned_at).as_secs_f64(), cpu));
                }
                if to_done.is_none() && line.starts_with(done) {
                    to_done = Some(((at - spawned_at).as_secs_f64(), cpu));
                    if kill_after_done {
                        kill_group(pid);
                    }
                }
                lines.push(line);
            }
            // Stdout closed: the process has exited (or closed it).
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break None,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break Some(format!("no exit after {timeout:?}")),
        }
    };
    kill_group(pid);
    let status = child.wait();
    let _ = reader.join();
    let tail = || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    };
    match (to_first, to_done, failure) {
        (Some((seconds_to_first, cpu_s_to_first)), Some((seconds, cpu_s)), None) => {
            Ok(Marked { seconds_to_first, seconds, cpu_s_to_first, cpu_s, stdout: lines })
        }
        (Some((seconds_to_first, cpu_s_to_first)), Some((seconds, cpu_s)), Some(_)) if kill_after_done => {
            Ok(Marked { seconds_to_first, seconds, cpu_s_to_first, cpu_s, stdout: lines })
        }
        (_, _, failure) => Err(format!(
            "{command:?}: {} (status {status:?}); stdout: {lines:?}; end of {}:\n{}",
            failure.as_deref().unwrap_or("exited before its done marker"),
            log.display(),
            tail()
        )),
    }
}

/// Pins every thread of process `pid` to `cpus` (a `taskset -c` list, e.g. `0` or `0-1`).
pub fn pin(pid: u32, cpus: &str) -> Result<(), String> {
    let out = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .output()
        .map_err(|e| format!("taskset: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("taskset -a -p -c {cpus} {pid}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// The id of the process (not this one) whose command line contains every one of `needles`.
pub fn pid_with_args(needles: &[&str]) -> Option<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc").into_iter().flatten().flatten().find_map(|entry| {
        let pid = entry.file_name().to_str()?.parse::<u32>().ok().filter(|p| *p != me)?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        needles.iter().all(|n| cmdline.contains(n)).then_some(pid)
    })
}

/// The broker and CQL dev server (found by their command lines) and this process pinned to some
/// CPUs, until dropped; then all three may use every online CPU again.
pub struct Pinned {
    pids: Vec<u32>,
    online: String,
}

impl Pinned {
    /// Pins the dev broker listening on `brokers`, the CQL dev server on `cql` (if running here)
    /// and this process (the load generator and prober) to `cpus`.
    pub fn new(brokers: &str, cql: &str, cpus: &str) -> Result<Self, String> {
        let online = std::fs::read_to_string("/sys/devices/system/cpu/online")
            .map_err(|e| format!("/sys/devices/system/cpu/online: {e}"))?
            .trim()
            .to_owned();
        let broker = pid_with_args(&["--listener-url", &format!("tcp://{brokers}")])
            .ok_or_else(|| format!("no broker process with --listener-url tcp://{brokers} on this machine"))?;
        let mut pids = vec![broker, std::process::id()];
        pids.extend(pid_with_args(&["squall-cql-dev", cql]));
        let pinned = Pinned { pids, online };
        for pid in &pinned.pids {
            pin(*pid, cpus)?;
        }
        Ok(pinned)
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        for pid in &self.pids {
            if let Err(e) = pin(*pid, &self.online) {
                eprintln!("unpinning: {e}");
            }
        }
    }
}

/// The directory of this executable (where cargo puts the other binaries).
pub fn bin_dir() -> PathBuf {
    std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)).unwrap_or_else(|| ".".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_heads_are_read_in_place() {
        assert_eq!(
            response_head(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 123"),
            (200, 123)
        );
        assert_eq!(response_head(b"HTTP/1.1 404 Not Found\r\nContent-Length:7\r\nx: y"), (404, 7));
        assert_eq!(response_head(b"HTTP/1.1 503 Service Unavailable"), (503, 0));
    }
}
