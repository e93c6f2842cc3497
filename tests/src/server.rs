//! A `squall server` child process and the `squall` CLI that talks to it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use std::collections::BTreeMap;

use squall_operators::Attributes;
use squall_topologies::oracle;

use crate::{binary, terminate, wait_for, wait_until_serving};

/// A running `squall server`, killed on drop.
pub struct SquallServer {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// The bearer token it requires.
    pub token: String,
    /// Its state directory.
    pub state_dir: PathBuf,
}

impl SquallServer {
    /// Starts `squall server` on a free loopback port with `state_dir`, and waits until it serves.
    /// It stops its versions when it is stopped (`--stop-versions-on-exit`), and versions it
    /// leaves behind stop themselves a minute after it is gone (`--adopt-timeout 60s`).
    pub fn start(state_dir: &Path, token: &str) -> SquallServer {
        Self::start_with(
            &binary("squall"),
            state_dir,
            token,
            "127.0.0.1:0",
            &["--stop-versions-on-exit", "--adopt-timeout", "60s"],
        )
    }

    /// Starts the `squall` executable `program` as a server listening on `listen`, with
    /// `state_dir` and the extra arguments `args`, and waits until it serves.
    pub fn start_with(program: &Path, state_dir: &Path, token: &str, listen: &str, args: &[&str]) -> SquallServer {
        let mut child = Command::new(program)
            .args(["server", "--listen", listen, "--catch-up-lag", "0", "--token", token])
            .arg("--state-dir")
            .arg(state_dir)
            .args(args)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn squall server");
        let (url, _) = wait_until_serving(&mut child, "squall server", Duration::from_secs(30));
        SquallServer { child, url, token: token.into(), state_dir: state_dir.into() }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs `squall <args> --server <url> --token <token>` to completion.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_with_token(args, Some(&self.token))
    }

    /// Runs `squall <args> --server <url>` with the given token, or none.
    pub fn cli_with_token(&self, args: &[&str], token: Option<&str>) -> Output {
        let mut cmd = Command::new(binary("squall"));
        cmd.args(args).args(["--server", &self.url]).env_remove("SQUALL_TOKEN");
        // Never fall back to a token file in the test's working directory.
        cmd.args(["--token-file", "/nonexistent/squall-token"]);
        if let Some(t) = token {
            cmd.args(["--token", t]);
        }
        cmd.output().expect("run the squall CLI")
    }

    /// Runs the CLI and panics with its output unless it succeeds; its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "`squall {}` failed: {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// GET `path`: status and JSON body (Null when the body is not JSON).
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        match reqwest::get(format!("{}{path}", self.url)).await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                (status, resp.json().await.unwrap_or(serde_json::Value::Null))
            }
            Err(e) => (0, serde_json::Value::String(e.to_string())),
        }
    }

    /// POST `path` with an optional bearer token: status and JSON body.
    pub async fn post(&self, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
        let mut req = reqwest::Client::new().post(format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("HTTP request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Waits until `group` serves (running, promoted or catching-up, with its addresses); its detail.
    pub async fn wait_serving(&self, group: &str) -> serde_json::Value {
        wait_for(&format!("{group} to serve"), Duration::from_secs(60), || async {
            let (status, body) = self.get(&format!("/v1/deployments/{group}")).await;
            match body["state"].as_str() {
                Some("running" | "promoted" | "catching-up") if !body["urls"].as_array().is_none_or(Vec::is_empty) => {
                    Ok(body)
                }
                _ => Err(format!("{status} {body}")),
            }
        })
        .await
    }

    /// Kills the server with SIGKILL and waits for it.
    pub fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("wait");
    }

    /// Stops the server with SIGTERM and waits (with `--stop-versions-on-exit` it stops its
    /// deployments' processes first; else it leaves them running).
    pub fn stop(mut self) -> std::process::ExitStatus {
        terminate(&mut self.child, Duration::from_secs(60)).expect("squall server did not exit within 60 s of SIGTERM")
    }
}

impl Drop for SquallServer {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SIGTERM first so that the server stops its versions (when it was told to); SIGKILL if
        // it does not exit.
        if terminate(&mut self.child, Duration::from_secs(30)).is_some() {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a process with this id exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

/// The id of a process whose command line contains every one of `args` (as whole arguments, in
/// any order), if there is one.
pub fn find_process(args: &[&str]) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let argv: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if args.iter().all(|a| argv.iter().any(|x| x == a)) && alive(pid) {
            return Some(pid);
        }
    }
    None
}

/// `n` free loopback ports (free when this returns; nothing holds them).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> =
        (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
    listeners.iter().map(|l| l.local_addr().expect("addr").port()).collect()
}

/// `/v1/status` of the `squall run` process at `url`.
pub async fn status_at(url: &str) -> Result<serde_json::Value, String> {
    reqwest::get(format!("{url}/v1/status")).await.map_err(|e| e.to_string())?.json().await.map_err(|e| e.to_string())
}

/// The process id in `/v1/status` of the `squall run` process at `url`.
pub async fn pid_at(url: &str) -> Result<u32, String> {
    let status = status_at(url).await?;
    status["pid"].as_u64().map(|p| p as u32).ok_or_else(|| format!("no pid in {status}"))
}

/// The executable process `pid` runs (`/proc/<pid>/exe`).
pub fn exe_of(pid: u32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_else(|e| panic!("/proc/{pid}/exe: {e}"))
}

/// Waits until every user of `expected`, read at `url` (`query` appended: `""`, `?group=...`),
/// equals the oracle, asking 16 at a time and asking again only for those that do not yet;
/// panics after `timeout` with a few of the differences.
pub async fn wait_equal_to_oracle(url: &str, query: &str, expected: &BTreeMap<String, Attributes>, timeout: Duration) {
    use futures::StreamExt as _;
    let client = reqwest::Client::new();
    let deadline = std::time::Instant::now() + timeout;
    let mut pending: Vec<&String> = expected.keys().collect();
    loop {
        let checks = pending.iter().map(|user| {
            let client = &client;
            async move {
                let answer = async {
                    let resp = client
                        .get(format!("{url}/v1/users/{user}/attributes{query}"))
                        .send()
                        .await
                        .map_err(|e| e.to_string())?;
                    let status = resp.status();
                    let body: serde_json::Value = resp.json().await.map_err(|e| format!("{status}: {e}"))?;
                    let got: Attributes = serde_json::from_value(body["attributes"].clone())
                        .map_err(|e| format!("{status} {body}: {e}"))?;
                    oracle::difference(&got, &expected[*user]).map_or(Ok(()), Err)
                };
                answer.await.err().map(|why| (*user, why))
            }
        });
        let differing: Vec<(&String, String)> =
            futures::stream::iter(checks).buffer_unordered(16).filter_map(|d| async move { d }).collect().await;
        if differing.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after {timeout:?}, {} of {} users at {url}{query} differ from the oracle, e.g. {:?}",
            differing.len(),
            expected.len(),
            differing.iter().take(3).collect::<Vec<_>>()
        );
        pending = differing.into_iter().map(|(u, _)| u).collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
