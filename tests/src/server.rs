//! A `squall server` child process and the `squall` CLI that talks to it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::{binary, terminate, wait_until_serving};

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
    pub fn start(state_dir: &Path, token: &str) -> SquallServer {
        let mut child = Command::new(binary("squall"))
            .args(["server", "--listen", "127.0.0.1:0", "--catch-up-lag", "0", "--token", token])
            .arg("--state-dir")
            .arg(state_dir)
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

    /// Kills the server with SIGKILL and waits for it.
    pub fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("wait");
    }

    /// Stops the server with SIGTERM and waits (it stops its deployments' processes first).
    pub fn stop(mut self) -> std::process::ExitStatus {
        terminate(&mut self.child, Duration::from_secs(60)).expect("squall server did not exit within 60 s of SIGTERM")
    }
}

impl Drop for SquallServer {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SIGTERM first so that the server stops its children; SIGKILL if it does not exit.
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
