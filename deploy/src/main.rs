//! `squall`: run topology versions and serve their attributes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use squall::client::{Client, ClientArgs, DeployOptions};
use squall::control::child::ChildLauncher;
use squall::control::lag::KafkaLag;
use squall::control::statedir::StateDir;
use squall::control::{Control, ServerConfig, api, openapi};
use squall::values::StartPosition;
use squall::version::cluster::Cluster;
use squall::version::counters::Counters;
use squall::version::http::{self, Api};
use squall::version::lease::Lease;
use squall::version::runfile::RunFile;
use squall::version::runner;
use squall::{ready, telemetry};
use squall_topologies::TopologySpec;
use tokio::net::TcpListener;

/// mimalloc: the per-user states, dedup tables and timely's containers allocate and free small
/// and few-kB blocks on every worker. Against glibc's allocator: about 10% less CPU per event end
/// to end (`benches/RESULTS.md`, 2026-11-30 night, "Allocator"). Built with `no_thp` (the
/// workspace's `Cargo.toml`): with transparent huge pages every purge of freed memory cost a 2 MB
/// page cleared anew, and resident memory per user was 11% higher (2026-11-30 late night). And with
/// `override`: librdkafka's `malloc`/`free` come here too (2-5% less CPU per event, 2026-12-01).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Real-time personalization on timely dataflow: Kafka in, per-user attributes out over HTTP.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Log lines as JSON instead of text (filter with RUST_LOG, e.g. RUST_LOG=squall=debug).
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one topology version in this process and serve its attributes over HTTP.
    ///
    /// Consumes under the group id `<name>-v<version>` of the topology file. Settings come from the
    /// file, then `SQUALL__SECTION__FIELD` environment variables, then these flags.
    Run(RunArgs),
    /// Follow a version's changelog for the users of one of its processes and answer for them
    /// while that process is down (a standby replica; `squall server` starts these for versions
    /// deployed with standbys).
    Standby(squall::version::standby::StandbyArgs),
    /// Run the control plane: a durable registry of deployments, each version in its own processes,
    /// one HTTP API for deployments and attributes.
    Server(ServerArgs),
    /// Deploy a topology version beside the running ones, under group `<name>-v<version>`.
    Deploy {
        /// The topology file, e.g. topologies/personalization.toml.
        file: PathBuf,
        #[command(flatten)]
        options: DeployOptions,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Every deployment: state, group id, lag.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// One deployment: per-partition committed offset, high watermark and lag, events/s, errors.
    Status {
        /// Group id, e.g. personalization-v2.
        group_id: String,
        /// While it catches up, show a progress bar and return once it has.
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Make this version the one that answers queries of its topology by default.
    Promote {
        /// Group id.
        group_id: String,
        /// Refuse (exit non-zero, nothing changes) unless at least this percentage of the users
        /// compared with --against agree on every attribute both versions answer.
        #[arg(long, value_name = "PERCENT", requires = "against")]
        require_agreement: Option<f64>,
        /// The version (group id) the gate compares with, usually the promoted one.
        #[arg(long, value_name = "GROUP_ID", requires = "require_agreement")]
        against: Option<String>,
        /// Users the gate needs compared [default: 100].
        #[arg(long, requires = "require_agreement")]
        min_compared: Option<u64>,
        /// Seconds the gate waits for the diff to catch up with both changelogs [default: 30].
        #[arg(long, value_name = "SECONDS", requires = "require_agreement")]
        wait: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Compare two versions' attributes over the users both applied the same events for, while
    /// they keep consuming (both must publish a changelog: `[feed] changelog = true`).
    Diff {
        /// Group id of one version (e.g. the promoted one).
        a: String,
        /// Group id of the other.
        b: String,
        /// Keep printing the report every 2 seconds until interrupted.
        #[arg(long)]
        watch: bool,
        /// Print the report as JSON (one line per report with --watch).
        #[arg(long)]
        json: bool,
        /// Differing values listed (at most 1000).
        #[arg(long, default_value_t = 20)]
        sample: usize,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Promote this (older) version again and stop every newer version of the same topology.
    Rollback {
        /// Group id.
        group_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop a version; its committed offsets and checkpoints stay.
    Stop {
        /// Group id.
        group_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The end of a version's log.
    Logs {
        /// Group id.
        group_id: String,
        /// Lines to show.
        #[arg(long, default_value_t = 200)]
        tail: usize,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Archive the input topics to Parquet files in a directory or object store until SIGINT or
    /// SIGTERM; `squall archive import` files newline-delimited JSON exports into the same layout.
    Archive(squall::archive_cli::ArchiveArgs),
    /// Print the server API's OpenAPI document (kept in docs/openapi.json).
    Openapi,
    /// Write point-in-time training data: each label row with the version's attributes from the
    /// archived events strictly before its time, as Parquet (or every user's with --at).
    TrainingData(squall::training::TrainingArgs),
    /// Check a running version exactly against the archive: recompute each user's attributes
    /// from the archived events its changelog's evidence names, and report per attribute the
    /// users agreeing, differing and not comparable (exit status 1 when any user differs).
    Consistency(squall::training::consistency::ConsistencyArgs),
}

#[derive(clap::Args)]
struct ServerArgs {
    /// HTTP listen address.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: String,
    /// Registry, deployment files, logs and checkpoints.
    #[arg(long, default_value = ".squall")]
    state_dir: PathBuf,
    /// Bearer token for mutations; default: the one in `<state dir>/token`, created on first start.
    #[arg(long, env = "SQUALL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Kafka bootstrap servers for every deployment (default: each topology file's).
    #[arg(long)]
    brokers: Option<String>,
    /// CQL contact points for every deployment (default: each topology file's).
    #[arg(long)]
    cql: Option<String>,
    /// A running version lagging by more messages than this is shown as catching-up.
    #[arg(long, default_value_t = 10_000)]
    catch_up_lag: i64,
    /// How long a version process keeps running without a server: the processes this server
    /// starts stop themselves cleanly once no server has renewed their lease for this long (a
    /// server started on the same state directory within it adopts them).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    adopt_timeout: Duration,
    /// The largest executable `squall deploy --binary` may upload, in bytes (default 512 MiB).
    #[arg(long, default_value_t = 512 << 20)]
    max_binary_bytes: u64,
    /// The share of its time a diff (`squall diff`, gated promotion, the status page's diffs)
    /// works while it catches up with the changelogs; it sleeps the rest, so that it takes little
    /// from versions and a broker on the same machines. 1: as fast as it can.
    #[arg(long, default_value_t = squall::changelog_diff::DUTY, value_parser = parse_duty)]
    diff_duty: f64,
    /// On SIGTERM or Ctrl-C, stop every version's processes too. Without it the server exits
    /// alone and its versions keep serving, to be adopted by the next server (an upgrade).
    #[arg(long)]
    stop_versions_on_exit: bool,
}

#[derive(clap::Args)]
struct RunArgs {
    /// The topology file, e.g. topologies/personalization.toml.
    #[arg(long, short)]
    topology: PathBuf,
    /// Which version of the file to run (default: the file's `version`).
    #[arg(long)]
    version: Option<u32>,
    /// timely worker threads; Kafka partitions are spread across them.
    #[arg(long, short)]
    workers: Option<usize>,
    /// Kafka bootstrap servers.
    #[arg(long)]
    brokers: Option<String>,
    /// CQL contact points, comma separated host:port.
    #[arg(long)]
    cql: Option<String>,
    /// CQL keyspace of the catalogue tables.
    #[arg(long)]
    keyspace: Option<String>,
    /// HTTP listen address (port 0 picks a free port, printed at start).
    #[arg(long)]
    listen: Option<String>,
    /// Checkpoint state and offsets to `<dir>/<group id>/` every epoch, and resume from there.
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// Where partitions without a checkpoint start: earliest, latest, or group:<group id> (that
    /// group's committed offsets).
    #[arg(long)]
    start_from: Option<StartPosition>,
    /// Apply this archive of the topics first (a directory, or s3://, gs://, az:// URL), then
    /// read Kafka from the offset after each partition's last archived one.
    #[arg(long, value_name = "ARCHIVE_URL")]
    backfill: Option<String>,
    /// With --backfill: archived events older than this event time are not applied: an RFC 3339
    /// time (2026-09-01T00:00:00Z) or epoch milliseconds.
    #[arg(long, requires = "backfill", value_parser = parse_event_time)]
    backfill_since: Option<i64>,
    /// Processes of this version's timely cluster (with --process and --hostfile); Kafka partitions
    /// and users are spread over all workers of all processes.
    #[arg(long, default_value_t = 1)]
    processes: usize,
    /// This process's index in the cluster, 0..processes.
    #[arg(long, default_value_t = 0)]
    process: usize,
    /// One line per process: `<timely host:port> [<http host:port>]`. With HTTP addresses listed,
    /// each process listens on its own and forwards queries for users kept by another process.
    #[arg(long)]
    hostfile: Option<PathBuf>,
    /// The id this process was started with, reported on /v1/status (set by the squall server).
    #[arg(long, hide = true)]
    launch_id: Option<String>,
    /// Record this process (pid, start time, launch id, HTTP address) in this file, atomically,
    /// for the squall server that starts it and any server started after that one.
    #[arg(long, hide = true, requires = "launch_id")]
    runtime_file: Option<PathBuf>,
    /// Stop cleanly (as on SIGTERM) once no squall server has renewed this process's lease
    /// (`GET /v1/status?launch_id=<its launch id>`) for this long, e.g. 5m. Set by the squall
    /// server; without it the process runs until it is stopped.
    #[arg(long, value_parser = humantime::parse_duration, requires = "launch_id")]
    adopt_timeout: Option<Duration>,
    /// Standby replicas the version has (overrides `runtime.standbys`): with any, the process
    /// writes the replica feed, and answers claim no later cut than it has durably written, which
    /// a standby can reach.
    #[arg(long)]
    standbys: Option<usize>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init_logging(cli.log_json);
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Standby(args) => standby(args),
        Command::Server(args) => serve(args, cli.log_json),
        Command::Archive(args) => archive(args),
        Command::TrainingData(args) => squall::training::cli(args).map_err(anyhow::Error::from),
        Command::Consistency(args) => squall::training::consistency::cli(args).map_err(anyhow::Error::from),
        Command::Openapi => {
            println!("{}", openapi::openapi_json());
            Ok(())
        }
        Command::Deploy { file, options, client } => {
            client_call(client, |c| async move { c.deploy(&file, &options).await })
        }
        Command::List { client } => client_call(client, |c| async move { c.list().await }),
        Command::Status { group_id, watch, client } => {
            client_call(client, |c| async move { c.status(&group_id, watch).await })
        }
        Command::Promote { group_id, require_agreement, against, min_compared, wait, client } => {
            let req = squall::control::diff_runs::PromoteRequest {
                require_agreement,
                against,
                min_compared,
                wait_ms: wait.map(|s| s.saturating_mul(1000)),
            };
            client_call(client, |c| async move { c.promote(&group_id, &req).await })
        }
        Command::Diff { a, b, watch, json, sample, client } => {
            client_call(client, |c| async move { c.diff(&a, &b, watch, json, sample).await })
        }
        Command::Rollback { group_id, client } => client_call(client, |c| async move { c.rollback(&group_id).await }),
        Command::Stop { group_id, client } => client_call(client, |c| async move { c.stop(&group_id).await }),
        Command::Logs { group_id, tail, client } => {
            client_call(client, |c| async move { c.logs(&group_id, tail).await })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn client_call<F, Fut>(args: ClientArgs, f: F) -> anyhow::Result<()>
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let client = Client::new(args)?;
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(f(client))
}

fn serve(args: ServerArgs, log_json: bool) -> anyhow::Result<()> {
    let state_dir = StateDir::new(&args.state_dir);
    std::fs::create_dir_all(state_dir.path())
        .with_context(|| format!("cannot create the state directory {}", args.state_dir.display()))?;
    let _lock = state_dir.lock().context("cannot take the state directory")?;
    let token = match args.token {
        Some(t) if t.len() >= 16 => t,
        Some(_) => anyhow::bail!("--token / SQUALL_TOKEN: use at least 16 characters"),
        None => token_in(&state_dir.token())?,
    };
    let cfg = ServerConfig {
        state_dir: state_dir.clone(),
        token,
        brokers: args.brokers.clone(),
        cql: args.cql.clone(),
        program: std::env::current_exe().context("cannot find the squall executable")?,
        catch_up_lag: args.catch_up_lag,
        poll_every: Duration::from_secs(1),
        max_binary_bytes: args.max_binary_bytes,
        diff_duty: args.diff_duty,
    };
    let launcher = ChildLauncher::new(state_dir, args.brokers, args.cql, log_json, args.adopt_timeout)?;
    let _metrics = telemetry::metrics();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("cannot listen on {} (--listen)", args.listen))?;
        let control = Control::start(cfg, Arc::new(launcher), Arc::new(KafkaLag::default())).await?;
        let addr = listener.local_addr()?;
        let url = format!("http://{addr}");
        println!("{} (state in {})", ready::line("squall server:", &url), args.state_dir.display());
        tracing::info!(%addr, "control plane serving");
        http::serve(listener, api::router(Arc::clone(&control)), shutdown_signal()).await?;
        if args.stop_versions_on_exit {
            tracing::info!("stopping every deployment's processes");
            control.shutdown().await;
        } else {
            control.detach().await;
            tracing::info!(
                adopt_timeout = ?args.adopt_timeout,
                "the versions keep running: a server started on this state directory within their adopt timeout adopts them"
            );
        }
        Ok(())
    })
}

/// The token in `path`, created (readable by the owner only) when missing.
fn token_in(path: &std::path::Path) -> anyhow::Result<String> {
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Ok(t) = std::fs::read_to_string(path) {
        return Ok(t.trim().to_owned());
    }
    let token: String = {
        use rand::Rng as _;
        let mut rng = rand::rng();
        (0..32).map(|_| format!("{:x}", rng.random_range(0..16u8))).collect()
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    std::io::Write::write_all(&mut f, token.as_bytes())?;
    eprintln!("squall server: created a bearer token in {} (the CLI reads it from there)", path.display());
    Ok(token)
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let (spec, cluster) = args.settings()?;
    let metrics =
        telemetry::metrics_with_labels(&[("topology", spec.name.clone()), ("version", spec.version.to_string())]);
    let mut managed = Managed::start(&args, &spec, cluster.as_ref())?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let result = rt.block_on(serve_version(spec, cluster, metrics, &mut managed));
    managed.exited();
    result
}

/// What a process started by a squall server keeps for it: its launch id, its runtime file and
/// its lease (all optional: `squall run` by hand has none of them).
struct Managed {
    launch_id: Option<String>,
    runfile: Option<(PathBuf, RunFile)>,
    adopt_timeout: Option<Duration>,
}

impl Managed {
    /// Records the process as starting in its runtime file, if it has one.
    fn start(args: &RunArgs, spec: &TopologySpec, cluster: Option<&Cluster>) -> anyhow::Result<Managed> {
        let runfile = match (&args.runtime_file, &args.launch_id) {
            (Some(path), Some(id)) => {
                let process = cluster.map_or(0, |c| c.process);
                let file = RunFile::of_this_process(&spec.group_id(), process, id)
                    .context("cannot read this process's start time from /proc")?;
                file.write(path).with_context(|| format!("cannot write --runtime-file {}", path.display()))?;
                Some((path.clone(), file))
            }
            _ => None,
        };
        Ok(Managed { launch_id: args.launch_id.clone(), runfile, adopt_timeout: args.adopt_timeout })
    }

    /// Records the process as serving at `url`.
    fn serving(&mut self, url: &str) -> anyhow::Result<()> {
        if let Some((path, file)) = &mut self.runfile {
            file.url = Some(url.to_owned());
            file.write(path).with_context(|| format!("cannot write --runtime-file {}", path.display()))?;
        }
        Ok(())
    }

    /// Removes the runtime file: the process has stopped.
    fn exited(&self) {
        if let Some((path, file)) = &self.runfile
            && let Err(e) = file.remove(path)
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove the runtime file");
        }
    }
}

impl RunArgs {
    /// The topology file, then `SQUALL__*` variables (applied by `load`), then these flags; and
    /// the version's cluster, if it has several processes.
    fn settings(&self) -> anyhow::Result<(TopologySpec, Option<Cluster>)> {
        let mut spec = TopologySpec::load(&self.topology)?;
        if let Some(v) = self.version {
            spec = spec.with_version(v)?;
        }
        if let Some(w) = self.workers {
            anyhow::ensure!((1..=256).contains(&w), "--workers {w}: use 1..=256");
            spec.runtime.workers = w;
        }
        let set = |to: &mut String, from: &Option<String>| from.iter().for_each(|v| v.clone_into(to));
        set(&mut spec.kafka.brokers, &self.brokers);
        set(&mut spec.cql.nodes, &self.cql);
        set(&mut spec.cql.keyspace, &self.keyspace);
        set(&mut spec.http.listen, &self.listen);
        if let Some(n) = self.standbys {
            spec.runtime.standbys = n;
        }
        if let Some(d) = &self.checkpoint_dir {
            spec.state.checkpoint_dir = Some(d.clone());
        }
        if let Some(p) = &self.start_from {
            p.apply_to(&mut spec.kafka);
        }
        if let Some(url) = &self.backfill {
            spec.kafka.backfill = Some(url.clone());
            spec.kafka.backfill_since_ms = self.backfill_since;
        }
        let cluster = match (&self.hostfile, self.processes) {
            (None, 1) => None,
            (None, n) => anyhow::bail!("--processes {n} needs --hostfile with the {n} processes' addresses"),
            (Some(file), n) => {
                anyhow::ensure!((1..=64).contains(&n), "--processes {n}: use 1..=64");
                Some(Cluster::from_hostfile(file, n, self.process)?)
            }
        };
        // A process listed with an HTTP address in the hostfile listens there, unless told otherwise.
        if let Some(c) = &cluster
            && self.listen.is_none()
            && let Some(Some(addr)) = c.http.get(c.process)
        {
            spec.http.listen = addr.clone();
        }
        Ok((spec, cluster))
    }
}

/// Starts the version and serves its HTTP API until SIGTERM or Ctrl-C, or until its lease
/// expires, then stops its workers.
async fn serve_version(
    spec: TopologySpec,
    cluster: Option<Cluster>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    managed: &mut Managed,
) -> anyhow::Result<()> {
    let group_id = spec.group_id();
    let listener = TcpListener::bind(&spec.http.listen)
        .await
        .with_context(|| format!("cannot listen on {} (http.listen / --listen)", spec.http.listen))?;
    let routing = cluster.clone().map(|cluster| http::Routing {
        cluster,
        workers: spec.runtime.workers,
        client: reqwest::Client::new(),
    });
    let running = runner::start(spec.clone(), tokio::runtime::Handle::current(), cluster)
        .await
        .with_context(|| format!("cannot start {group_id}"))?;
    let lease = managed.adopt_timeout.map(|t| Arc::new(Lease::new(t)));
    let api = version_api(&spec, &running, metrics, managed.launch_id.clone(), lease, routing);
    let addr = listener.local_addr()?;
    if let Some(cut) = running.recovered_cut {
        println!("squall: {group_id} recovered from checkpoint cut {cut}");
    }
    let url = format!("http://{addr}");
    // The readiness the server waits for (the runtime file), and the line people and tests read.
    managed.serving(&url)?;
    println!("{}", ready::line(&format!("squall: {group_id}"), &url));
    tracing::info!(group_id = %group_id, %addr, "serving attributes");
    let stop = {
        let lease = api.lease.clone();
        async move {
            let Some(lease) = lease else { return shutdown_signal().await };
            tokio::select! {
                _ = shutdown_signal() => {}
                _ = lease.expired() => tracing::warn!(
                    timeout = ?lease.timeout(),
                    "no squall server has renewed this process's lease (--adopt-timeout): stopping; \
                     a server started later resumes the version from its last complete checkpoint"
                ),
            }
        }
    };
    let server = tokio::spawn(http::serve(listener, http::router(Arc::clone(&api)), stop));
    let reporter = tokio::spawn(report(api, group_id));
    server.await??;
    reporter.abort();
    tracing::info!("stopping workers");
    running.shutdown();
    // The worker's message only: `error: {e:#}` would add its causes to the line.
    tokio::task::spawn_blocking(move || running.join()).await?.map_err(|e| anyhow::Error::msg(e.to_string()))?;
    Ok(())
}

/// The HTTP API of a running version process.
fn version_api(
    spec: &TopologySpec,
    running: &runner::Running,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    launch_id: Option<String>,
    lease: Option<Arc<Lease>>,
    routing: Option<http::Routing>,
) -> Arc<Api> {
    let group_id = spec.group_id();
    let counters = Counters::new(
        &group_id,
        running.layout.local(),
        Arc::clone(&running.store),
        running.enricher.clone(),
        Arc::clone(&running.dead_letters),
    )
    .with_backfill(running.backfill.clone())
    .with_freshness(Arc::clone(&running.freshness));
    Arc::new(Api {
        topology: spec.name.clone(),
        version: spec.version,
        group_id,
        store: Arc::clone(&running.store),
        metrics,
        counters,
        recovered_cut: running.recovered_cut,
        launch_id,
        feeds: running.feeds.clone(),
        lease,
        routing,
        standbys: spec.runtime.standbys,
    })
}

/// `squall standby`: follows the replica feed on a thread of its own and serves the users of its
/// process until SIGTERM, Ctrl-C or the end of its lease; asked to take over, it becomes the
/// version's process on the same address and runs until the same.
fn standby(args: squall::version::standby::StandbyArgs) -> anyhow::Result<()> {
    use squall::version::standby::{self, Promote, Standby, StandbyApi};
    let (what, spec, sources) = args.settings()?;
    let metrics = telemetry::metrics_with_labels(&[
        ("topology", what.topology.clone()),
        ("version", what.version.to_string()),
        ("standby_of", what.process.to_string()),
    ]);
    let mut runfile = match (&args.runtime_file, &args.launch_id) {
        (Some(path), Some(id)) => {
            let file = RunFile::of_this_process(&what.group_id, what.process, id)
                .context("cannot read this process's start time from /proc")?;
            file.write(path).with_context(|| format!("cannot write --runtime-file {}", path.display()))?;
            Some((path.clone(), file))
        }
        _ => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let state = Arc::new(Standby::new(what.clone(), spec.clone())?);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (state, stop, handle) = (Arc::clone(&state), Arc::clone(&stop), rt.handle().clone());
        std::thread::Builder::new().name("standby-follow".into()).spawn(move || {
            if let Err(e) = standby::follow(state, sources, handle, stop) {
                // Nothing to save: the server starts a standby that exits again.
                tracing::error!(error = %e, "standby: cannot follow the replica feed; exiting");
                std::process::exit(1);
            }
        })?
    };
    let lease = args.adopt_timeout.map(|t| Arc::new(Lease::new(t)));
    // What it runs once it took over: the version, its runtime file, and its API.
    let promoted: Arc<std::sync::Mutex<Option<Promoted>>> = Arc::default();
    let promote: Promote = {
        let (spec, metrics, lease, promoted) = (spec.clone(), metrics.clone(), lease.clone(), Arc::clone(&promoted));
        let standby_file = runfile.clone();
        let process = what.process;
        Arc::new(move |warm, req, url| {
            let (spec, metrics, lease, promoted, standby_file) =
                (spec.clone(), metrics.clone(), lease.clone(), Arc::clone(&promoted), standby_file.clone());
            Box::pin(async move {
                let group_id = spec.group_id();
                let routing = req.cluster.clone().map(|cluster| http::Routing {
                    cluster,
                    workers: spec.runtime.workers,
                    client: reqwest::Client::new(),
                });
                let rt = tokio::runtime::Handle::current();
                let (running, used) = runner::take_over(spec.clone(), rt, warm, req.cluster.clone())
                    .await
                    .map_err(|e| format!("{:#}", anyhow::Error::from(e)))?;
                let cut = running.recovered_cut.unwrap_or(0);
                let api = version_api(&spec, &running, metrics, Some(req.launch_id.clone()), lease, routing);
                let router = http::router(Arc::clone(&api));
                // The server adopts it as the version's process through this file.
                let mut file =
                    RunFile::of_this_process(&group_id, process, &req.launch_id).map_err(|e| e.to_string())?;
                file.url = Some(url);
                file.write(&req.runtime_file)
                    .map_err(|e| format!("cannot write {}: {e}", req.runtime_file.display()))?;
                if let Some((path, f)) = &standby_file
                    && let Err(e) = f.remove(path)
                {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove the standby's runtime file");
                }
                let reporter = tokio::spawn(report(api, group_id));
                *promoted.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(Promoted { running, runfile: (req.runtime_file, file), reporter });
                Ok((router, cut, used))
            })
        })
    };
    let api = Arc::new(StandbyApi {
        standby: state,
        launch_id: args.launch_id.clone(),
        lease,
        metrics,
        url: std::sync::OnceLock::new(),
        promote,
        promoted: std::sync::OnceLock::new(),
        taking_over: std::sync::atomic::AtomicBool::new(false),
    });
    let result = rt.block_on(async {
        let listener =
            TcpListener::bind(&args.listen).await.with_context(|| format!("cannot listen on {} (--listen)", args.listen))?;
        let url = format!("http://{}", listener.local_addr()?);
        let _ = api.url.set(url.clone());
        if let Some((path, file)) = &mut runfile {
            file.url = Some(url.clone());
            file.write(path).with_context(|| format!("cannot write --runtime-file {}", path.display()))?;
        }
        println!("{}", ready::line(&format!("squall: standby of {} process {}", what.group_id, what.process), &url));
        let lease = api.lease.clone();
        let stop_serving = async move {
            let Some(lease) = lease else { return shutdown_signal().await };
            tokio::select! {
                _ = shutdown_signal() => {}
                _ = lease.expired() => tracing::warn!(timeout = ?lease.timeout(), "no squall server has renewed this process's lease: stopping"),
            }
        };
        http::serve(listener, standby::router(api), stop_serving).await?;
        anyhow::Ok(())
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = reader.join();
    if let Some((path, file)) = &runfile
        && let Err(e) = file.remove(path)
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove the runtime file");
    }
    let promoted = promoted.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(p) = promoted {
        p.reporter.abort();
        tracing::info!("stopping workers");
        p.running.shutdown();
        let running = p.running;
        let joined = rt.block_on(async { tokio::task::spawn_blocking(move || running.join()).await });
        let (path, file) = &p.runfile;
        if let Err(e) = file.remove(path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove the runtime file");
        }
        joined?.map_err(|e| anyhow::Error::msg(e.to_string()))?;
    }
    result
}

/// A standby that took over: the version it runs, the runtime file it records it in, and the
/// throughput log's task.
struct Promoted {
    running: runner::Running,
    runfile: (PathBuf, RunFile),
    reporter: tokio::task::JoinHandle<()>,
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

/// Logs throughput every 5 seconds.
async fn report(api: Arc<Api>, group_id: String) {
    let seen = |s: &squall::version::counters::RunStatus| s.applied + s.duplicates;
    let mut last = (Instant::now(), seen(&api.counters.status()));
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    loop {
        tick.tick().await;
        let s = api.counters.status();
        let now = (Instant::now(), seen(&s));
        let rate = (now.1 - last.1) as f64 / now.0.duration_since(last.0).as_secs_f64();
        let (hits, misses) = (s.cache_hits, s.cache_misses);
        let hit_ratio = if hits + misses == 0 { 0.0 } else { hits as f64 / (hits + misses) as f64 };
        tracing::info!(
            group_id = %group_id,
            events_per_sec = rate.round(),
            applied = s.applied,
            duplicates = s.duplicates,
            users = s.users,
            cache_hit_ratio = format!("{hit_ratio:.3}"),
            "throughput"
        );
        last = now;
    }
}

/// `--diff-duty`: a share of the time, above 0 and at most 1.
fn parse_duty(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{s:?} is not a number: {e}"))?;
    if v > 0.0 && v <= 1.0 {
        Ok(v)
    } else {
        Err(format!("{v}: use a share of the time above 0 and at most 1, e.g. 0.1"))
    }
}

/// An event time given on the command line: RFC 3339 or epoch milliseconds.
fn parse_event_time(s: &str) -> Result<i64, String> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    humantime::parse_rfc3339_weak(s)
        .map(|t| t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64))
        .map_err(|e| format!("{s:?}: {e}; use an RFC 3339 time (2026-09-01T00:00:00Z) or epoch milliseconds"))
}

/// `squall archive`: `start` and `stop` go to the server; else the archiver (or an import) runs
/// here, and when a server started it, it serves `/v1/status` for that server (which renews its
/// lease) and records itself in its runtime file, as a version process does.
fn archive(args: squall::archive_cli::ArchiveArgs) -> anyhow::Result<()> {
    use squall::archive_cli::Remote;
    use std::sync::atomic::AtomicBool;
    match args.remote() {
        Some((Remote::Start { url, group, topics, rows_per_file, max_file_age }, client)) => {
            // A directory is sent absolute, as the server requires: relative to where this runs.
            let url = match url.contains("://") {
                true => url,
                false => std::path::absolute(&url).with_context(|| format!("--url {url}"))?.display().to_string(),
            };
            let req = squall::control::archives::StartArchiveRequest {
                url,
                group: Some(group),
                topics: (!topics.is_empty()).then_some(topics),
                rows_per_file,
                max_file_age,
            };
            return client_call(client, |c| async move { c.start_archive(&req).await });
        }
        Some((Remote::Stop { group }, client)) => {
            return client_call(client, |c| async move { c.stop_archive(&group).await });
        }
        None => {}
    }
    let stop = Arc::new(AtomicBool::new(false));
    let runfile = match args.managed() {
        Some(m) => archiver_status(m, Arc::clone(&stop))?,
        None => None,
    };
    let result = squall::archive_cli::main(args, stop).map_err(anyhow::Error::from);
    if let Some(path) = runfile
        && result.is_ok()
    {
        // A clean exit: nothing is left for a later server to adopt.
        let _ = std::fs::remove_file(path);
    }
    result
}

/// Serves a server-run archiver's `/v1/status` on a thread of its own, records the process in
/// its runtime file once it serves, and sets `stop` when its lease runs out; returns the runtime
/// file's path.
fn archiver_status(
    m: squall::archive_cli::Managed,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<Option<PathBuf>> {
    use axum::extract::{Query, State};
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let listener = runtime
        .block_on(TcpListener::bind(&m.listen))
        .with_context(|| format!("cannot listen on {} (--listen)", m.listen))?;
    let url = format!("http://{}", listener.local_addr()?);
    if let Some(path) = &m.runtime_file {
        let mut file = RunFile::of_this_process(&m.group, 0, &m.launch_id)
            .with_context(|| format!("cannot describe this process for {}", path.display()))?;
        file.url = Some(url.clone());
        file.write(path).with_context(|| format!("cannot write the runtime file {}", path.display()))?;
    }
    let lease = m.adopt_timeout.map(|t| Arc::new(Lease::new(t)));
    #[derive(Clone)]
    struct Own {
        group: String,
        launch_id: String,
        lease: Option<Arc<Lease>>,
    }
    let own = Own { group: m.group.clone(), launch_id: m.launch_id.clone(), lease: lease.clone() };
    async fn status(
        State(own): State<Own>,
        Query(q): Query<std::collections::HashMap<String, String>>,
    ) -> axum::Json<squall::version::counters::RunStatus> {
        if let (Some(lease), Some(given)) = (&own.lease, q.get("launch_id"))
            && *given == own.launch_id
        {
            lease.renew();
        }
        axum::Json(squall::version::counters::RunStatus {
            group_id: own.group.clone(),
            launch_id: Some(own.launch_id.clone()),
            pid: Some(std::process::id()),
            ..Default::default()
        })
    }
    let router = axum::Router::new().route("/v1/status", axum::routing::get(status)).with_state(own);
    tracing::info!(group_id = %m.group, %url, "serving the archiver's status");
    std::thread::spawn(move || {
        runtime.block_on(async move {
            let serve = axum::serve(listener, router);
            let Some(lease) = lease else {
                let _ = serve.await;
                return;
            };
            tokio::select! {
                _ = serve => {}
                _ = lease.expired() => {
                    tracing::warn!(timeout = ?lease.timeout(), "no squall server has renewed this archiver's lease (--adopt-timeout): stopping");
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
    });
    Ok(m.runtime_file)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory as _;
        super::Cli::command().debug_assert();
    }

    #[test]
    fn the_diff_duty_is_a_share_of_the_time() {
        assert_eq!(super::parse_duty("0.1"), Ok(0.1));
        assert_eq!(super::parse_duty("1"), Ok(1.0));
        for bad in ["0", "-0.5", "1.5", "NaN", "fast"] {
            assert!(super::parse_duty(bad).is_err(), "{bad}");
        }
    }
}
