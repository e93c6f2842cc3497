//! The CLI side of the control plane: `squall deploy|list|status|promote|rollback|stop|logs` talk
//! to a `squall server` over its HTTP API.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use serde::de::DeserializeOwned;
use squall_topologies::TopologySpec;

use crate::changelog_diff::DiffReport;
use crate::control::archives::{ArchiveView, StartArchiveRequest};
use crate::control::binaries::StoredBinary;
use crate::control::diff_runs::PromoteRequest;
use crate::control::standbys::StandbyView;
use crate::control::state::DeploymentState;
use crate::control::views::{DeployRequest, DeploymentDetail, DeploymentView, RollbackResponse};
use crate::values::StartPosition;

/// How long an upload of an executable may take (it is checked to run before the server answers).
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(600);

/// Where the server is and how to authenticate.
#[derive(clap::Args, Clone, Debug)]
pub struct ClientArgs {
    /// The squall server's base URL.
    #[arg(long, env = "SQUALL_SERVER", default_value = "http://127.0.0.1:7070", global = true)]
    pub server: String,
    /// Bearer token for deploy/promote/rollback/stop (else read from --token-file).
    #[arg(long, env = "SQUALL_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// File holding the token; `squall server` writes one to `<state dir>/token` when none is configured.
    #[arg(long, default_value = ".squall/token", global = true)]
    pub token_file: PathBuf,
}

/// A client of one server.
pub struct Client {
    base: reqwest::Url,
    args: ClientArgs,
    http: reqwest::Client,
}

/// What `squall deploy` asks for besides the topology file.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct DeployOptions {
    /// Which version of the file to deploy (default: the file's `version`).
    #[arg(long)]
    pub version: Option<u32>,
    /// earliest (default), latest, or group:<group id> to start at that group's committed offsets.
    #[arg(long)]
    pub start_from: Option<StartPosition>,
    /// Worker threads per process (default: the file's runtime.workers).
    #[arg(long, short)]
    pub workers: Option<usize>,
    /// timely processes on this host (cluster mode when > 1).
    #[arg(long)]
    pub processes: Option<usize>,
    /// Run the version with this executable (a build of squall with custom code) instead of
    /// the server's own: it is uploaded to the server, kept under its SHA-256, and runs the
    /// version's processes across server restarts and upgrades.
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// Apply this archive of the topics first (`squall archive`; a directory on the server's
    /// host, or s3://, gs://, az://), then read Kafka from the offset after each partition's last
    /// archived one. Refused when Kafka no longer holds that offset.
    #[arg(long, value_name = "ARCHIVE_URL")]
    pub backfill: Option<String>,
    /// With --backfill: only archived events of this long before the deploy, e.g. 90d.
    #[arg(long, requires = "backfill", value_parser = humantime::parse_duration)]
    pub since: Option<std::time::Duration>,
    /// Standby replicas per process (default: the file's runtime.standbys): each follows the
    /// version's changelog and answers for its process's users while that process is down.
    #[arg(long)]
    pub standbys: Option<usize>,
}

impl Client {
    /// Checks the server URL.
    pub fn new(args: ClientArgs) -> anyhow::Result<Self> {
        let base = reqwest::Url::parse(&args.server)
            .with_context(|| format!("--server {:?} is not a URL (e.g. http://127.0.0.1:7070)", args.server))?;
        if !matches!(base.scheme(), "http" | "https") {
            bail!("--server {:?}: use an http:// or https:// URL", args.server);
        }
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
        Ok(Client { base, args, http })
    }

    fn token(&self) -> anyhow::Result<String> {
        if let Some(t) = &self.args.token {
            return Ok(t.clone());
        }
        std::fs::read_to_string(&self.args.token_file).map(|t| t.trim().to_owned()).map_err(|e| {
            anyhow!(
                "this command needs the server's token: pass --token or set SQUALL_TOKEN (cannot read {}: {e})",
                self.args.token_file.display()
            )
        })
    }

    fn url(&self, segments: &[&str]) -> reqwest::Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = req.send().await.map_err(|e| {
            anyhow!(
                "cannot reach the squall server at {}: {e} (start it with `squall server`, or pass --server)",
                self.base
            )
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        let e = &body["error"];
        let mut msg = e["message"].as_str().map(str::to_owned).unwrap_or_else(|| format!("server answered {status}"));
        for key in ["detail", "hint"] {
            if let Some(v) = e[key].as_str() {
                msg.push_str(&format!("\n  {key}: {v}"));
            }
        }
        Err(anyhow!(msg))
    }

    async fn get<T: DeserializeOwned>(&self, segments: &[&str]) -> anyhow::Result<T> {
        Ok(self.send(self.http.get(self.url(segments))).await?.json().await?)
    }

    async fn post<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        body: Option<&impl serde::Serialize>,
    ) -> anyhow::Result<T> {
        let mut req = self.http.post(self.url(segments)).bearer_auth(self.token()?);
        if let Some(b) = body {
            req = req.json(b);
        }
        Ok(self.send(req).await?.json().await?)
    }

    /// `squall deploy`; with `binary`, the executable is uploaded first and the version pinned to it.
    pub async fn deploy(&self, file: &Path, o: &DeployOptions) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
        // Check the file here, so that a mistake is reported before anything is sent.
        let spec = TopologySpec::from_toml(&text).map_err(|e| anyhow!("{}: {e}", file.display()))?;
        if let Some(v) = o.version {
            spec.with_version(v).map_err(|e| anyhow!("{}: {e}", file.display()))?;
        }
        let binary = match &o.binary {
            Some(path) => Some(self.upload(path).await?.sha256.to_string()),
            None => None,
        };
        let req = DeployRequest {
            topology_toml: text,
            version: o.version,
            start_from: o.start_from.as_ref().map(|p| p.to_string()),
            workers: o.workers,
            processes: o.processes,
            binary,
            backfill: o.backfill.clone(),
            since: o.since.map(|d| humantime::format_duration(d).to_string()),
            standbys: o.standbys,
        };
        let view: DeploymentView = self.post(&["v1", "deployments"], Some(&req)).await?;
        println!(
            "deployed {} (topology {} version {}, {}, starting from {}{}); follow it with `squall status {}`",
            view.deployment.group_id,
            view.deployment.topology,
            view.deployment.version,
            view.deployment.code(),
            view.deployment.start_from,
            view.deployment.binary.as_ref().map(|h| format!(", binary {h}")).unwrap_or_default(),
            view.deployment.group_id
        );
        Ok(())
    }

    /// Uploads the executable at `path` (`POST /v1/binaries`).
    async fn upload(&self, path: &Path) -> anyhow::Result<StoredBinary> {
        let bytes = tokio::fs::read(path).await.with_context(|| format!("cannot read --binary {}", path.display()))?;
        let req = self
            .http
            .post(self.url(&["v1", "binaries"]))
            .bearer_auth(self.token()?)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .timeout(UPLOAD_TIMEOUT)
            .body(bytes);
        let stored: StoredBinary =
            self.send(req).await.with_context(|| format!("cannot upload {}", path.display()))?.json().await?;
        println!("uploaded {} as {} ({} bytes; {})", path.display(), stored.sha256, stored.bytes, stored.version);
        Ok(stored)
    }

    /// `squall list`.
    pub async fn list(&self) -> anyhow::Result<()> {
        let all: Vec<DeploymentView> = self.get(&["v1", "deployments"]).await?;
        let archivers: Vec<ArchiveView> = self.get(&["v1", "archives"]).await?;
        if !archivers.is_empty() {
            print_archives(&archivers);
        }
        if all.is_empty() {
            println!("no deployments (deploy one with `squall deploy topologies/personalization.toml`)");
            return Ok(());
        }
        println!(
            "{:<32} {:<12} {:>8} {:>10} {:>10} {:>8}  {:<8}",
            "GROUP ID", "STATE", "VERSION", "LAG", "EVENTS/S", "RESTARTS", "PROMOTED"
        );
        for v in all {
            println!(
                "{:<32} {:<12} {:>8} {:>10} {:>10.0} {:>8}  {:<8}",
                v.deployment.group_id,
                v.state,
                v.deployment.version,
                v.lag.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
                v.events_per_sec,
                v.restarts,
                if v.promoted { "yes" } else { "" }
            );
            for s in &v.standby_replicas {
                println!("  {}", standby_line(s));
            }
        }
        Ok(())
    }

    /// `squall status`; with `watch`, a progress bar until the version has caught up.
    pub async fn status(&self, group: &str, watch: bool) -> anyhow::Result<()> {
        if let Ok(a) = self.get::<ArchiveView>(&["v1", "archives", group]).await {
            print_archive(&a);
            return Ok(());
        }
        let mut d: DeploymentDetail = self.get(&["v1", "deployments", group]).await?;
        let catching_up =
            |d: &DeploymentDetail| matches!(d.view.state, DeploymentState::Starting | DeploymentState::CatchingUp);
        let backfilling = |d: &DeploymentDetail| d.view.state == DeploymentState::Backfilling;
        if watch && backfilling(&d) {
            d = self.watch_backfill(group, d, backfilling).await?;
        }
        if watch && catching_up(&d) {
            let bar = indicatif::ProgressBar::new(1);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{prefix} [{bar:40}] {pos}/{len} messages committed, {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.set_prefix(group.to_owned());
            while catching_up(&d) {
                let high: i64 = d.partitions.iter().map(|p| p.high_watermark).sum();
                let done: i64 = d.partitions.iter().map(|p| p.committed.unwrap_or(0)).sum();
                bar.set_length(high.max(1) as u64);
                bar.set_position(done.max(0) as u64);
                bar.set_message(format!("{}, {:.0} events/s", d.view.state, d.view.events_per_sec));
                tokio::time::sleep(Duration::from_millis(500)).await;
                d = self.get(&["v1", "deployments", group]).await?;
            }
            bar.finish_and_clear();
        }
        print_detail(&d);
        Ok(())
    }

    /// A progress bar of the archived records read, with their rate and ETA, while `backfilling`;
    /// the detail once it is not.
    async fn watch_backfill(
        &self,
        group: &str,
        mut d: DeploymentDetail,
        backfilling: impl Fn(&DeploymentDetail) -> bool,
    ) -> anyhow::Result<DeploymentDetail> {
        let bar = indicatif::ProgressBar::new(1);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} backfilling [{bar:40}] {human_pos}/{human_len} archived events, {per_sec}, ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(group.to_owned());
        while backfilling(&d) {
            if let Some(b) = d.status.as_ref().and_then(|s| s.backfill.as_ref()) {
                bar.set_length(b.records_total.max(1));
                bar.set_position(b.records_done);
                bar.set_message(format!(
                    "({} files){}",
                    b.files_total,
                    b.error.as_ref().map(|e| format!("; {e}")).unwrap_or_default()
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            d = self.get(&["v1", "deployments", group]).await?;
        }
        bar.finish_and_clear();
        Ok(d)
    }

    /// `squall promote`, gated when `req` asks for agreement.
    pub async fn promote(&self, group: &str, req: &PromoteRequest) -> anyhow::Result<()> {
        let body = req.require_agreement.is_some().then_some(req);
        let v: DeploymentView = self.post(&["v1", "deployments", group, "promote"], body).await?;
        if let (Some(p), Some(against)) = (req.require_agreement, &req.against) {
            println!("the diff against {against} cleared the gate ({p}% agreeing required)");
        }
        println!(
            "promoted {}: queries of topology {} now answer from it",
            v.deployment.group_id, v.deployment.topology
        );
        Ok(())
    }

    /// `squall diff`: once, or every 2 seconds with `watch`.
    pub async fn diff(&self, a: &str, b: &str, watch: bool, json: bool, sample: usize) -> anyhow::Result<()> {
        let mut url = self.url(&["v1", "diff"]);
        url.query_pairs_mut().append_pair("a", a).append_pair("b", b).append_pair("sample", &sample.to_string());
        loop {
            let r: DiffReport = self.send(self.http.get(url.clone())).await?.json().await?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                print_diff(&r);
            }
            if !watch {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            if !json {
                println!();
            }
        }
    }

    /// `squall rollback`.
    pub async fn rollback(&self, group: &str) -> anyhow::Result<()> {
        let r: RollbackResponse = self.post(&["v1", "deployments", group, "rollback"], None::<&()>).await?;
        println!("rolled back to {}: it answers queries now", r.promoted.deployment.group_id);
        if r.stopped.is_empty() {
            println!("no newer version was running");
        } else {
            println!("stopped {} (offsets and checkpoints kept for inspection)", r.stopped.join(", "));
        }
        Ok(())
    }

    /// `squall archive start`.
    pub async fn start_archive(&self, req: &StartArchiveRequest) -> anyhow::Result<()> {
        let a: ArchiveView = self.post(&["v1", "archives"], Some(req)).await?;
        println!(
            "archiving {} to {} under group {}; follow it with `squall status {}`",
            a.archive.topics.join(", "),
            a.archive.url,
            a.archive.group_id,
            a.archive.group_id
        );
        Ok(())
    }

    /// `squall archive stop`.
    pub async fn stop_archive(&self, group: &str) -> anyhow::Result<()> {
        let req = self.http.delete(self.url(&["v1", "archives", group])).bearer_auth(self.token()?);
        let a: ArchiveView = self.send(req).await?.json().await?;
        println!(
            "stopped archiver {} (what it read is stored and committed; {} stays)",
            a.archive.group_id, a.archive.url
        );
        Ok(())
    }

    /// `squall stop`.
    pub async fn stop(&self, group: &str) -> anyhow::Result<()> {
        let v: DeploymentView = self.post(&["v1", "deployments", group, "stop"], None::<&()>).await?;
        println!("stopped {} (offsets and checkpoints kept)", v.deployment.group_id);
        Ok(())
    }

    /// `squall logs`.
    pub async fn logs(&self, group: &str, tail: usize) -> anyhow::Result<()> {
        let mut url = self.url(&["v1", "deployments", group, "logs"]);
        url.query_pairs_mut().append_pair("tail", &tail.to_string());
        let text = self.send(self.http.get(url)).await?.text().await?;
        print!("{text}");
        if !text.is_empty() && !text.ends_with('\n') {
            println!();
        }
        Ok(())
    }
}

/// One standby: `process 0 standby 0: answers, cut 1234, lag 0 cuts, 20000 users, 0 restarts, http://...`.
fn standby_line(s: &StandbyView) -> String {
    let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
    format!(
        "process {} standby {}: {}, cut {}, lag {} cuts, {} users, {} restarts{}{}",
        s.process,
        s.replica,
        if s.answers {
            "answers"
        } else if s.url.is_some() {
            "behind"
        } else {
            "starting"
        },
        opt(s.cut),
        opt(s.lag_cuts),
        opt(s.users),
        s.restarts,
        s.url.as_ref().map(|u| format!(", {u}")).unwrap_or_default(),
        s.last_error.as_ref().map(|e| format!("; last error: {}", e.lines().next().unwrap_or(""))).unwrap_or_default()
    )
}

fn print_detail(d: &DeploymentDetail) {
    let v = &d.view;
    println!("group id:     {}", v.deployment.group_id);
    println!("topology:     {} version {} ({})", v.deployment.topology, v.deployment.version, v.deployment.code());
    println!("state:        {}{}", v.state, if v.promoted { " (promoted)" } else { "" });
    println!("started from: {}", v.deployment.start_from);
    if let Some(b) = &v.deployment.backfill {
        let since = b.since_ms.map(|ms| format!(", events from {ms} (Unix ms) on")).unwrap_or_default();
        println!("backfill:     {}{since}", b.archive);
    }
    if let Some(b) = d.status.as_ref().and_then(|s| s.backfill.as_ref()) {
        println!(
            "archive read: {} of {} events ({} files){}{}",
            b.records_done,
            b.records_total,
            b.files_total,
            if b.under_way() { "" } else { ", done: reading Kafka" },
            b.error.as_ref().map(|e| format!("; stopped: {e}")).unwrap_or_default()
        );
    }
    println!(
        "processes:    {} x {} workers{}",
        v.deployment.processes,
        v.deployment.workers,
        if v.adopted { " (adopted: started by an earlier server, or a standby that took over)" } else { "" }
    );
    match &v.deployment.binary {
        Some(h) => println!("binary:       {h}"),
        None => println!("binary:       the server's own"),
    }
    if !v.urls.is_empty() {
        println!("addresses:    {}", v.urls.join(" "));
    }
    println!("events/s:     {:.0}", v.events_per_sec);
    println!("lag:          {}", v.lag.map(|l| l.to_string()).unwrap_or_else(|| "-".into()));
    if let Some(s) = &d.status {
        println!(
            "errors:       {} dead letters, {} failed store requests, {} degraded lookups, {} restarts",
            s.dead_letters, s.enrich_errors, s.enrich_degraded, v.restarts
        );
        println!("applied:      {} events ({} resends dropped), {} users", s.applied, s.duplicates, s.users);
        if let Some(f) = &s.freshness {
            println!("freshness:    {}", freshness_line(f));
        }
        for f in &s.feeds {
            let cut = |c: Option<u64>| c.map(|c| c.to_string()).unwrap_or_else(|| "-".into());
            println!(
                "feed {:<8} lag {} epochs ({} users waiting), written cut {} of {}{}",
                f.feed,
                f.lag_cuts,
                f.pending_users,
                cut(f.written_cut),
                cut(f.latest_cut),
                match (&f.failing_for_s, &f.last_error) {
                    (Some(t), Some(e)) => format!(", FAILING for {t:.0} s: {e}"),
                    (Some(t), None) => format!(", failing for {t:.0} s"),
                    _ => String::new(),
                }
            );
        }
    } else {
        println!("errors:       {} restarts", v.restarts);
    }
    for s in &v.standby_replicas {
        println!("standby:      {}", standby_line(s));
    }
    if let Some(diff) = &v.diff {
        println!(
            "diff:         against {}: {} users compared, {} agree{}{}",
            diff.against,
            diff.users_compared,
            diff.users_agreeing,
            diff.agreement_percent.map(|p| format!(" ({p:.2}%)")).unwrap_or_default(),
            if diff.differing_attributes.is_empty() {
                String::new()
            } else {
                format!("; differing: {}", diff.differing_attributes.join(", "))
            }
        );
    }
    if let Some(e) = &v.last_error {
        println!("last error:   {e}");
    }
    if let Some(e) = &d.lag_error {
        println!("lag error:    {e}");
    }
    if !d.partitions.is_empty() {
        print_partitions(&d.partitions, "COMMITTED", 12);
    }
}

/// Per partition: the committed offset (under `committed`, `width` wide), high watermark, lag.
fn print_partitions(partitions: &[crate::kafka::PartitionLag], committed: &str, width: usize) {
    println!("{:<28} {:>9} {committed:>width$} {:>14} {:>10}", "TOPIC", "PARTITION", "HIGH WATERMARK", "LAG");
    for p in partitions {
        println!(
            "{:<28} {:>9} {:>width$} {:>14} {:>10}",
            p.topic,
            p.partition,
            p.committed.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
            p.high_watermark,
            p.lag
        );
    }
}

/// A version's freshness for people: its cut, and the share of the last hour's events made
/// visible within `[slo] freshness`.
fn freshness_line(f: &crate::version::freshness::FreshnessStatus) -> String {
    let delay = f.delay_ms.map(|d| format!(", latest delay {d} ms")).unwrap_or_default();
    let share = match (f.objective_ms, f.share_within()) {
        (Some(o), Some(share)) => format!(
            "{:.2}% of {} events in the last hour within {o} ms{}",
            share * 100.0,
            f.events_last_hour,
            if f.breaching { ", BREACHED now" } else { "" }
        ),
        (Some(o), None) => {
            format!("no events in the last hour (objective {o} ms){}", if f.breaching { ", BREACHED now" } else { "" })
        }
        (None, _) => format!("{} events in the last hour, no objective ([slo] freshness)", f.events_last_hour),
    };
    format!("cut {}{delay}; {share}", f.cut)
}

/// A diff report for people.
fn print_diff(r: &DiffReport) {
    let at = chrono_free_time(r.checked_at_ms);
    println!(
        "diff of a = {} and b = {}: {}",
        r.a,
        r.b,
        if r.caught_up {
            format!("caught up with both changelogs at {at}")
        } else {
            "still reading the changelogs (counts will grow)".to_owned()
        }
    );
    match r.agreement_percent {
        Some(p) => println!(
            "users compared: {} (both applied the same events); agreeing on every shared attribute: {} ({p:.2}%)",
            r.users_compared, r.users_agreeing
        ),
        None => println!("users compared: 0 (no user has the same events applied in both yet)"),
    }
    let n = &r.not_comparable;
    println!(
        "not comparable yet: {} (a applied more events), {} (b applied more), {} (as many, other events), {} only in a, {} only in b",
        n.a_ahead, n.b_ahead, n.other_events, n.only_in_a, n.only_in_b
    );
    let width = r.attributes.iter().map(|a| a.name.len()).max().unwrap_or(9).max(9);
    println!("{:<width$}  {:>10}  {:>10}", "attribute", "agree", "differ");
    for a in &r.attributes {
        println!("{:<width$}  {:>10}  {:>10}", a.name, a.agree, a.differ);
    }
    let list = |v: &[String]| if v.is_empty() { "-".to_owned() } else { v.join(", ") };
    println!("only in a: {}; only in b: {}", list(&r.only_in_a), list(&r.only_in_b));
    println!("floats agree within a relative tolerance of {:e}", r.tolerance);
    if !r.sample.is_empty() {
        println!("differing values (smallest user ids first):");
        for d in &r.sample {
            println!("  {}  {}: a = {}, b = {}", d.user_id, d.attribute, d.a, d.b);
        }
    }
}

/// `HH:MM:SS` UTC of Unix milliseconds.
fn chrono_free_time(ms: u64) -> String {
    let s = ms / 1000;
    format!("{:02}:{:02}:{:02} UTC", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

/// The archivers, a line each.
fn print_archives(all: &[ArchiveView]) {
    println!("{:<32} {:<12} {:>10} {:>8} {:>8}  ARCHIVE", "ARCHIVER", "STATE", "LAG", "FILES", "RESTARTS");
    for a in all {
        println!(
            "{:<32} {:<12} {:>10} {:>8} {:>8}  {}",
            a.archive.group_id,
            a.state.as_str(),
            a.lag.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
            a.files.map(|f| f.to_string()).unwrap_or_else(|| "-".into()),
            a.restarts,
            a.archive.url
        );
    }
    println!();
}

/// `squall status` of an archiver: its progress per partition.
fn print_archive(a: &ArchiveView) {
    println!("archiver:  {} ({})", a.archive.group_id, a.state.as_str());
    println!("archive:   {}", a.archive.url);
    println!("topics:    {}", a.archive.topics.join(", "));
    match (&a.files, &a.files_error) {
        (Some(n), _) => println!("files:     {n}"),
        (None, Some(e)) => println!("files:     cannot list the archive: {e}"),
        (None, None) => println!("files:     not listed yet"),
    }
    println!(
        "restarts:  {}{}",
        a.restarts,
        if a.adopted { " (adopted: started by an earlier server, or a standby that took over)" } else { "" }
    );
    if let Some(e) = &a.last_error {
        println!("last error: {e}");
    }
    if let Some(e) = &a.lag_error {
        println!("lag:       cannot read: {e}");
    }
    print_partitions(&a.partitions, "ARCHIVED TO", 14);
}
