//! Fixture: the real `squall-cql-dev` binary on a free port, and a scylla session to it.
#![allow(dead_code)] // shared by several test binaries, each of which uses part of it

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use scylla::{
    client::{session::Session, session_builder::SessionBuilder},
    errors::{DbError, ExecutionError, RequestAttemptError},
};

const START_TIMEOUT: Duration = Duration::from_secs(30);
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// A running server process; killed on drop.
pub struct DevServer {
    child: Child,
    pub addr: SocketAddr,
}

impl DevServer {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Starts the binary with `--listen 127.0.0.1:0` and waits (bounded) for its
    /// `squall-cql-dev listening on <addr>` line.
    pub fn start_with(state_file: Option<&Path>) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_squall-cql-dev"));
        command
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", std::env::var("CQLDEV_TEST_LOG").unwrap_or_else(|_| "warn,kassandra=off".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(path) = state_file {
            command.arg("--state-file").arg(path);
        }
        let mut child = command.spawn().expect("spawn squall-cql-dev");
        let stdout = child.stdout.take().expect("piped stdout");
        let (lines, first_line) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let line = match first_line.recv_timeout(START_TIMEOUT) {
            Ok(line) => line,
            Err(error) => {
                let _ = child.kill();
                panic!("squall-cql-dev printed no listening line within {START_TIMEOUT:?}: {error}");
            }
        };
        let addr = line
            .strip_prefix("squall-cql-dev listening on ")
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first stdout line: {line:?}"));
        Self { child, addr }
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit.
    pub fn terminate(mut self) -> ExitStatus {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "squall-cql-dev did not exit within {EXIT_TIMEOUT:?} of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A driver session with the default `SessionBuilder` settings.
    pub async fn session(&self) -> Session {
        SessionBuilder::new()
            .known_node_addr(self.addr)
            .build()
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.addr))
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A path in the temp dir that no other test (or run) uses.
pub fn unique_path(name: &str) -> PathBuf {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_nanos();
    std::env::temp_dir().join(format!("squall-cql-dev-{name}-{}-{nanos}", std::process::id()))
}

/// Creates `keyspace` (SimpleStrategy, rf 1) with the application's tables and makes it current.
pub async fn create_app_schema(session: &Session, keyspace: &str) {
    let statements = [
        format!(
            "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH REPLICATION = \
             {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.tracks \
             (track_id text PRIMARY KEY, genre text, artist_id text, duration_ms int)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.ads (ad_id text PRIMARY KEY, advertiser_id text, category text)"
        ),
        format!("CREATE TABLE IF NOT EXISTS {keyspace}.kv (ns text, k text, v blob, PRIMARY KEY ((ns, k)))"),
    ];
    for statement in statements {
        session.query_unpaged(statement.as_str(), ()).await.unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    session.use_keyspace(keyspace, false).await.expect("USE keyspace");
}

/// The server-side error inside a driver error, if the server sent one.
pub fn db_error(error: &ExecutionError) -> Option<&DbError> {
    match error {
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(db_error, _)) => Some(db_error),
        _ => None,
    }
}
