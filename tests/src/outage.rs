//! Fixtures for outage tests: a private broker (nisshi, durable SQLite storage) and a private CQL
//! dev server (with a state file), each on its own loopback port, that a test can stop and
//! restart on the same port and data. The shared servers of `SQUALL_TEST_BROKERS` /
//! `SQUALL_TEST_CQL` are never touched.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::producer::FutureProducer;

use crate::{Inputs, binary, send_all, unique, write_topology};

/// A free loopback port (bound, then released for the server to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind 127.0.0.1:0").port()
}

/// The `nisshi` broker binary: on `PATH` or in `~/.cargo/bin`. Panics when it is missing.
pub fn nisshi_binary() -> PathBuf {
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("nisshi")).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin/nisshi")));
    for c in candidates {
        if c.is_file() {
            return c;
        }
    }
    panic!(
        "the nisshi broker binary is missing (not on PATH nor in ~/.cargo/bin): the outage tests need it. \
         Install it with `scripts/devenv.sh install` (cargo install nisshi --version 0.8.1 --locked --ignore-rust-version)"
    )
}

fn wait_listening(port: u16, what: &str, child: &mut Child, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited with {status} before listening on {addr}");
        }
        assert!(Instant::now() < deadline, "{what} is not listening on {addr} after {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn terminate(child: &mut Child, what: &str) {
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "{what} did not exit within 30 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A private nisshi broker with SQLite storage in its own directory; killed on drop.
pub struct Broker {
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Broker {
    /// Starts a broker on a free port with a fresh data directory and waits until it listens.
    pub fn start() -> Broker {
        let dir = std::env::temp_dir().join(unique("broker"));
        std::fs::create_dir_all(&dir).expect("broker data dir");
        let mut b = Broker { port: free_port(), dir, child: None };
        b.restart();
        b
    }

    /// `bootstrap.servers`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the broker again on the same port and data (after [`Broker::kill9`] or [`Broker::stop`]).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the broker is running");
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::File::create(self.dir.join(format!("broker-{}.log", unique("run")))).expect("broker log");
        // `sqlite://n.db` is relative to the working directory: run from the data directory.
        let mut child = Command::new(nisshi_binary())
            .current_dir(&self.dir)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://n.db"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn nisshi");
        wait_listening(self.port, "nisshi", &mut child, Duration::from_secs(60));
        self.child = Some(child);
    }

    /// Kills the broker with SIGKILL and waits for it.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("the broker is not running");
        child.kill().expect("SIGKILL the broker");
        child.wait().expect("wait for the broker");
    }

    /// Stops the broker with SIGTERM and waits for it.
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("the broker is not running");
        terminate(&mut child, "nisshi");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private CQL dev server (`target/<profile>/squall-cql-dev`) with a state file; killed on drop.
pub struct CqlServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    state_file: PathBuf,
    child: Option<Child>,
}

impl CqlServer {
    /// Starts a server on a free port with a fresh state file and waits until it listens.
    pub fn start() -> CqlServer {
        let state_file = std::env::temp_dir().join(format!("{}.ron", unique("cql-state")));
        let mut s = CqlServer { port: free_port(), state_file, child: None };
        s.restart();
        s
    }

    /// The contact point.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the server again on the same port, loading the state file.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the CQL server is running");
        let mut child = Command::new(binary("squall-cql-dev"))
            .arg("--listen")
            .arg(self.addr())
            .arg("--state-file")
            .arg(&self.state_file)
            .args(["--save-interval-secs", "0"])
            .env("RUST_LOG", "warn,kassandra=off")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn squall-cql-dev");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line.starts_with("squall-cql-dev listening on") => {}
            other => {
                let _ = child.kill();
                panic!("squall-cql-dev did not start listening on {}: {other:?}", self.addr());
            }
        }
        self.child = Some(child);
    }

    /// Stops the server with SIGTERM (it saves its state file) and waits for it.
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("the CQL server is not running");
        terminate(&mut child, "squall-cql-dev");
    }
}

impl Drop for CqlServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.state_file);
    }
}

/// A topology's inputs on a private broker and CQL server.
#[derive(Clone)]
pub struct PrivateFixture {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// CQL contact point.
    pub cql: String,
    /// `song-completions` stand-in.
    pub songs: String,
    /// `ad-impressions` stand-in.
    pub ads: String,
    /// Keyspace with `tracks` and `ads`.
    pub keyspace: String,
}

impl PrivateFixture {
    /// Creates the topics (with DLQs) on `brokers` and the keyspace with the catalogue on `cql`.
    pub async fn new(
        brokers: String,
        cql: String,
        partitions: i32,
        tracks: Vec<(String, squall_enrichment::TrackRow)>,
        ads: Vec<(String, squall_enrichment::AdRow)>,
    ) -> PrivateFixture {
        let f = PrivateFixture { brokers, cql, songs: unique("songs"), ads: unique("ads"), keyspace: unique("ks") };
        let topics = [f.songs.clone(), f.ads.clone(), format!("{}.dlq", f.songs), format!("{}.dlq", f.ads)];
        squall::kafka::create_topics(&f.brokers, &topics, partitions).await.expect("create topics");
        let session = squall_enrichment::schema::connect(&f.cql).await.expect("connect to the CQL server");
        squall_enrichment::schema::create(&session, &f.keyspace, 1).await.expect("schema");
        squall_enrichment::schema::insert_tracks(&session, &f.keyspace, tracks, 64).await.expect("tracks");
        squall_enrichment::schema::insert_ads(&session, &f.keyspace, ads, 64).await.expect("ads");
        f
    }

    /// A topology file for this fixture, with extra `key = value` lines per section.
    pub fn topology(&self, name: &str, extra: &[(&str, &str)]) -> PathBuf {
        let inputs = Inputs {
            brokers: &self.brokers,
            cql: &self.cql,
            songs: &self.songs,
            ads: &self.ads,
            keyspace: &self.keyspace,
        };
        write_topology(
            &format!("name = \"{name}\"\nversion = 1\nattributes = \"personalization_v1\"\n"),
            &inputs,
            extra,
            "",
        )
    }

    /// Produces `(topic, key, payload)` records to this fixture's broker and waits for every
    /// delivery (librdkafka retries through a broker restart within the 60 s message timeout).
    pub async fn produce(&self, records: impl IntoIterator<Item = (String, String, Vec<u8>)>) {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("linger.ms", "5")
            .set("message.timeout.ms", "60000")
            // Retries through the restart keep each partition's order.
            .set("enable.idempotence", "true")
            .create()
            .expect("producer");
        send_all(&producer, records, Duration::from_secs(60)).await;
    }
}

/// The value of the Prometheus sample `name{labels}` (labels as rendered, e.g.
/// `group_id="g-v1"`; empty for any labels: the sum over every series of that name).
pub fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name && rest.contains(labels)).then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}
