//! Fixtures shared by the integration tests: the dev broker and CQL server, unique names, the `squall` binary.
//!
//! The tests need a running broker and CQL server, named by `SQUALL_TEST_BROKERS` and
//! `SQUALL_TEST_CQL`; `scripts/test.sh` starts both and sets them. A test run without them fails
//! at once with a message saying so; it never skips.
#![warn(missing_docs)]

pub mod deployment;
pub mod outage;
pub mod parts;
pub mod server;

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::Consumer as _;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, FutureProducer, FutureRecord, Producer, ThreadedProducer};

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: these integration tests need the dev broker and CQL server. \
             Run `scripts/test.sh`, or `scripts/devenv.sh up` and export \
             SQUALL_TEST_BROKERS=127.0.0.1:9092 SQUALL_TEST_CQL=127.0.0.1:9042"
        )
    })
}

/// The test broker's `bootstrap.servers`.
pub fn brokers() -> String {
    required_env("SQUALL_TEST_BROKERS")
}

/// The test CQL server's contact point.
pub fn cql() -> String {
    required_env("SQUALL_TEST_CQL")
}

/// A name no other test (in this or a concurrent run) uses: `<prefix>_<pid>_<n>`.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{prefix}_{}_{}_{nanos}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `timeout` with `what` and the last `Err`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) if Instant::now() > deadline => panic!("timed out after {timeout:?} waiting for {what}: {last}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Waits until the offsets committed under `group`, read with a plain Kafka consumer (as any Kafka
/// tool would), equal the high watermarks of partitions `0..partitions` of `topics`.
pub async fn wait_for_committed_at_end(
    brokers: &str,
    group: &str,
    topics: &[&str],
    partitions: i32,
    timeout: Duration,
) {
    let consumer: rdkafka::consumer::BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .expect("consumer");
    wait_for("committed offsets at the end of every partition", timeout, || async {
        let mut tpl = rdkafka::TopicPartitionList::new();
        for topic in topics {
            for p in 0..partitions {
                tpl.add_partition(topic, p);
            }
        }
        let committed = consumer.committed_offsets(tpl, Duration::from_secs(5)).map_err(|e| e.to_string())?;
        for e in committed.elements() {
            let (_, high) = consumer
                .fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(5))
                .map_err(|e| e.to_string())?;
            if e.offset() != rdkafka::Offset::Offset(high) {
                return Err(format!(
                    "{}/{}: committed {:?}, high watermark {high}",
                    e.topic(),
                    e.partition(),
                    e.offset()
                ));
            }
        }
        Ok(())
    })
    .await;
}

/// Produces `(topic, key, payload)` records and waits for every delivery.
pub async fn produce(records: impl IntoIterator<Item = (String, String, Vec<u8>)>) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", "5")
        // Retries keep each partition's order.
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    send_all(&producer, records, Duration::from_secs(30)).await;
}

/// Sends `(topic, key, payload)` records with `producer` in the order given (each partition gets
/// its records in that order: a resend stays behind its original, as the generators place it),
/// each waiting at most `queue_timeout` for room in the producer's queue, then waits for every
/// delivery; panics on a failed one.
///
/// The records are enqueued one after the other here; sending each from a task of its own, as
/// this once did, let the runtime's threads enqueue them out of order, by more than a day of
/// event time on a loaded machine, and tests then saw resends outside the dedup horizon.
pub async fn send_all(
    producer: &FutureProducer,
    records: impl IntoIterator<Item = (String, String, Vec<u8>)>,
    queue_timeout: Duration,
) {
    let mut pending = Vec::new();
    for (topic, key, payload) in records {
        let waited = Instant::now();
        let delivery = loop {
            match producer.send_result(FutureRecord::to(&topic).key(&key).payload(&payload)) {
                Ok(delivery) => break delivery,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                    if waited.elapsed() < queue_timeout =>
                {
                    // The queue drains as deliveries complete (the producer polls on a thread
                    // of its own): wait for room.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => panic!("produce to {topic}: {e}"),
            }
        };
        pending.push((topic, delivery));
    }
    for (topic, delivery) in pending {
        match delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => panic!("produce to {topic}: {e}"),
            Err(_) => panic!("produce to {topic}: the delivery was cancelled"),
        }
    }
}

/// Produces records `from..from + n` to each of `partitions` of `topic`, in order (idempotent, so
/// retries cannot reorder them); `record(partition, i)` gives each one's key and payload. Blocks
/// until every record is delivered.
pub fn produce_to_partitions(
    topic: &str,
    partitions: &[i32],
    from: usize,
    n: usize,
    record: impl Fn(i32, usize) -> (String, String),
) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    for &p in partitions {
        for i in from..from + n {
            let (key, payload) = record(p, i);
            producer.send(BaseRecord::to(topic).partition(p).key(&key).payload(&payload)).expect("enqueue");
        }
    }
    producer.flush(Duration::from_secs(30)).expect("every record delivered");
}

/// A generated stream of `users` users over `catalogue` with a run id of its own: 2% unknown
/// ids, 3% resends, 1% malformed records.
pub fn stream_config(users: u64, catalogue: squall::generate::CatalogueGen) -> squall::generate::EventGenConfig {
    squall::generate::EventGenConfig {
        users,
        catalogue,
        run_id: unique("run"),
        unknown_share: 0.02,
        duplicate_share: 0.03,
        malformed_share: 0.01,
        ..Default::default()
    }
}

/// [`stream_config`] without resends, for tests that run with deduplication off (an event
/// applied twice must show up as a difference from the oracle).
pub fn stream_config_without_resends(
    users: u64,
    catalogue: squall::generate::CatalogueGen,
) -> squall::generate::EventGenConfig {
    squall::generate::EventGenConfig { duplicate_share: 0.0, ..stream_config(users, catalogue) }
}

/// A record to produce: (topic, key, payload).
pub type Record = (String, String, Vec<u8>);

/// A topology's inputs, made unique for one test.
pub struct Fixture {
    /// `song-completions` stand-in.
    pub songs: String,
    /// `ad-impressions` stand-in.
    pub ads: String,
    /// CQL keyspace with `tracks` and `ads`.
    pub keyspace: String,
}

impl Fixture {
    /// Creates the topics (with DLQs) and the keyspace with the given catalogue rows.
    pub async fn new(
        partitions: i32,
        tracks: Vec<(String, squall_enrichment::TrackRow)>,
        ads: Vec<(String, squall_enrichment::AdRow)>,
    ) -> Fixture {
        let f = Fixture { songs: unique("songs"), ads: unique("ads"), keyspace: unique("ks") };
        let topics = [f.songs.clone(), f.ads.clone(), format!("{}.dlq", f.songs), format!("{}.dlq", f.ads)];
        squall::kafka::create_topics(&brokers(), &topics, partitions).await.expect("create topics");
        let session = squall_enrichment::schema::connect(&cql()).await.expect("connect to the CQL server");
        squall_enrichment::schema::create(&session, &f.keyspace, 1).await.expect("schema");
        squall_enrichment::schema::insert_tracks(&session, &f.keyspace, tracks, 64).await.expect("tracks");
        squall_enrichment::schema::insert_ads(&session, &f.keyspace, ads, 64).await.expect("ads");
        f
    }

    /// A fixture whose catalogue is every track and ad of `catalogue`.
    pub async fn with_catalogue(partitions: i32, catalogue: &squall::generate::CatalogueGen) -> Fixture {
        Fixture::new(
            partitions,
            (0..catalogue.tracks).map(|i| catalogue.track(i)).collect(),
            (0..catalogue.ads).map(|i| catalogue.ad(i)).collect(),
        )
        .await
    }

    /// The next `n` records of `generator` (event times after `*at`, which advances), addressed to
    /// this fixture's topics (malformed ones to the songs topic), and the valid events among them.
    pub fn batch(
        &self,
        generator: &mut squall::generate::EventGen,
        at: &mut i64,
        n: usize,
    ) -> (Vec<Record>, Vec<squall_operators::Event>) {
        use squall::generate::Generated;
        let (mut records, mut events) = (Vec::new(), Vec::new());
        for _ in 0..n {
            *at += 1;
            match generator.next_at(*at) {
                Generated::Event(e) => {
                    let topic = if e.kind() == squall_operators::EventKind::Song { &self.songs } else { &self.ads };
                    records.push((topic.clone(), e.user_id().to_owned(), e.to_json()));
                    events.push(e);
                }
                Generated::Malformed(_, bytes) => records.push((self.songs.clone(), "x".into(), bytes)),
            }
        }
        (records, events)
    }

    /// A topology file for this fixture: the built-in declaration `attributes` (e.g.
    /// `personalization_v1`) as its default version, and extra `key = value` lines per section,
    /// e.g. `&[("kafka", "max_message_bytes = 1024")]`.
    pub fn topology(&self, name: &str, version: u32, attributes: &str, extra: &[(&str, &str)]) -> PathBuf {
        self.topology_text(name, version, &format!("attributes = \"{attributes}\"\n"), "", extra)
    }

    /// A topology file for this fixture whose versions are `versions` (TOML `[versions.N]`
    /// tables, appended at the end of the file).
    pub fn topology_with_versions(&self, name: &str, version: u32, versions: &str, extra: &[(&str, &str)]) -> PathBuf {
        self.topology_text(name, version, "", versions, extra)
    }

    fn topology_text(&self, name: &str, version: u32, head: &str, tail: &str, extra: &[(&str, &str)]) -> PathBuf {
        let inputs =
            Inputs { brokers: &brokers(), cql: &cql(), songs: &self.songs, ads: &self.ads, keyspace: &self.keyspace };
        write_topology(&format!("name = \"{name}\"\nversion = {version}\n{head}"), &inputs, extra, tail)
    }
}

/// Where a test topology reads from: the broker and its topics, the CQL server and its keyspace.
pub(crate) struct Inputs<'a> {
    pub brokers: &'a str,
    pub cql: &'a str,
    pub songs: &'a str,
    pub ads: &'a str,
    pub keyspace: &'a str,
}

/// Writes a topology file under a unique name: `head` (name, version, ...), the `[kafka]`, `[cql]`
/// and `[http]` sections for `inputs` with `extra` `key = value` lines per section (new sections
/// after them), then `tail`; its path.
pub(crate) fn write_topology(head: &str, inputs: &Inputs, extra: &[(&str, &str)], tail: &str) -> PathBuf {
    let mut sections: Vec<(String, String)> = vec![
        (
            "kafka".into(),
            format!(
                "brokers = \"{}\"\nsong_completions = \"{}\"\nad_impressions = \"{}\"\n",
                inputs.brokers, inputs.songs, inputs.ads
            ),
        ),
        ("cql".into(), format!("nodes = \"{}\"\nkeyspace = \"{}\"\n", inputs.cql, inputs.keyspace)),
        ("http".into(), "listen = \"127.0.0.1:0\"\n".into()),
    ];
    for (section, lines) in extra {
        match sections.iter_mut().find(|(s, _)| s == section) {
            Some((_, body)) => body.push_str(&format!("{lines}\n")),
            None => sections.push((section.to_string(), format!("{lines}\n"))),
        }
    }
    let mut text = head.to_owned();
    for (section, body) in sections {
        text.push_str(&format!("[{section}]\n{body}"));
    }
    text.push_str(tail);
    let path = std::env::temp_dir().join(format!("{}.toml", unique("topology")));
    std::fs::write(&path, text).expect("write topology");
    path
}

/// Reads `child`'s stdout on a thread until its readiness line (`squall::ready::url`) and
/// returns the URL it announces, with every line it prints kept; kills it and panics if no
/// readiness line comes within `timeout`.
pub fn wait_until_serving(child: &mut Child, what: &str, timeout: Duration) -> (String, Arc<Mutex<Vec<String>>>) {
    let stdout = child.stdout.take().expect("a piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = squall::ready::url(&line) {
                let _ = tx.send(url.to_owned());
            }
            kept.lock().unwrap().push(line);
        }
    });
    match rx.recv_timeout(timeout) {
        Ok(url) => (url, lines),
        Err(_) => {
            let _ = child.kill();
            panic!("{what} did not start serving within {timeout:?} (exit: {:?})", child.try_wait());
        }
    }
}

/// Sends SIGTERM to `child` and waits up to `timeout` for it to exit: its exit status, or
/// `None` if it is still running.
pub fn terminate(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// The path of a binary of this workspace, built by `cargo build` before the tests run.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let path = exe.parent().and_then(|deps| deps.parent()).expect("target dir").join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A `squall run` child process, killed on drop.
pub struct Squall {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    stdout: Arc<Mutex<Vec<String>>>,
}

impl Squall {
    /// Runs `squall run --topology <topology> <args>` and waits until it serves HTTP.
    pub fn run(topology: &std::path::Path, args: &[&str]) -> Squall {
        let mut child = Command::new(binary("squall"))
            .arg("run")
            .arg("--topology")
            .arg(topology)
            .args(args)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn squall");
        let (url, lines) = wait_until_serving(&mut child, "squall", Duration::from_secs(60));
        Squall { child, url, stdout: lines }
    }

    /// The lines the process printed on stdout so far.
    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Kills the process with SIGKILL (no chance to clean up) and waits for it.
    pub fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("wait");
    }

    /// GET `path`; the status and the JSON body.
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let resp = reqwest::get(format!("{}{path}", self.url)).await.expect("HTTP request");
        let status = resp.status().as_u16();
        let body = resp.json().await.unwrap_or(serde_json::Value::Null);
        (status, body)
    }

    /// The users whose served attributes differ from `expected` (the oracle's), with the
    /// difference, or the status and error of an answer that holds no attributes.
    pub async fn oracle_mismatches(
        &self,
        expected: &BTreeMap<String, squall_operators::Attributes>,
    ) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (user, want) in expected {
            let (status, body) = self.get(&format!("/v1/users/{user}/attributes")).await;
            let diff = match serde_json::from_value::<squall_operators::Attributes>(body["attributes"].clone()) {
                Ok(got) => squall_topologies::oracle::difference(&got, want),
                Err(e) => Some(format!("{status}: {e}")),
            };
            if let Some(d) = diff {
                out.insert(user.clone(), d);
            }
        }
        out
    }

    /// Stops the process with SIGTERM and waits for it; its exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        terminate(&mut self.child, Duration::from_secs(30)).expect("squall did not exit within 30 s of SIGTERM")
    }
}

impl Drop for Squall {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Version `version` of the shipped `topologies/personalization.toml`.
pub fn declaration(version: u32) -> std::sync::Arc<squall_operators::Declaration> {
    topology_version("personalization.toml", version)
}

/// Version `version` of topology file `file` under `topologies/` (e.g. `tests/windowed.toml`).
pub fn topology_version(file: &str, version: u32) -> std::sync::Arc<squall_operators::Declaration> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../topologies").join(file);
    let spec = squall_topologies::TopologySpec::load(&path).and_then(|s| s.with_version(version));
    spec.unwrap_or_else(|e| panic!("{}: {e}", path.display())).attributes
}
