//! `squall`: run topology versions and serve their attributes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use squall::http::{self, Api};
use squall::{runner, telemetry};
use squall_operators::StartFrom;
use squall_topologies::TopologySpec;
use tokio::net::TcpListener;

/// Real-time personalization on timely dataflow: Kafka in, per-user attributes out over HTTP.
#[derive(Parser)]
#[command(version, propagate_version = true)]
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
}

#[derive(clap::Args)]
struct RunArgs {
    /// The topology file, e.g. topologies/personalization.toml.
    #[arg(long, short)]
    topology: PathBuf,
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
    /// Where partitions without a checkpoint start.
    #[arg(long, value_enum)]
    start_from: Option<StartFromArg>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum StartFromArg {
    Earliest,
    Latest,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init_logging(cli.log_json);
    let result = match cli.command {
        Command::Run(args) => run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut spec = TopologySpec::load(&args.topology)?;
    if let Some(w) = args.workers {
        anyhow::ensure!((1..=256).contains(&w), "--workers {w}: use 1..=256");
        spec.runtime.workers = w;
    }
    if let Some(b) = args.brokers {
        spec.kafka.brokers = b;
    }
    if let Some(c) = args.cql {
        spec.cql.nodes = c;
    }
    if let Some(k) = args.keyspace {
        spec.cql.keyspace = k;
    }
    if let Some(d) = args.checkpoint_dir {
        spec.state.checkpoint_dir = Some(d);
    }
    if let Some(l) = args.listen {
        spec.http.listen = l;
    }
    if let Some(s) = args.start_from {
        spec.kafka.start_from = match s {
            StartFromArg::Earliest => StartFrom::Earliest,
            StartFromArg::Latest => StartFrom::Latest,
        };
    }
    let metrics = telemetry::metrics();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(&spec.http.listen)
            .await
            .with_context(|| format!("cannot listen on {} (http.listen / --listen)", spec.http.listen))?;
        let running = runner::start(spec.clone(), tokio::runtime::Handle::current()).await?;
        let api = Arc::new(Api {
            topology: spec.name.clone(),
            version: spec.version,
            group_id: spec.group_id(),
            store: Arc::clone(&running.store),
            metrics,
        });
        let addr = listener.local_addr()?;
        // One line on stdout that scripts and tests wait for.
        if let Some(cut) = running.recovered_cut {
            println!("squall: {} recovered from checkpoint cut {cut}", spec.group_id());
        }
        println!("squall: {} serving on http://{addr}", spec.group_id());
        tracing::info!(group_id = %spec.group_id(), %addr, "serving attributes");
        let server = tokio::spawn(http::serve(listener, http::router(api), shutdown_signal()));
        let reporter = tokio::spawn(report(Arc::clone(&running.store), running.enricher.clone(), spec.group_id()));
        server.await??;
        reporter.abort();
        tracing::info!("stopping workers");
        running.shutdown();
        tokio::task::spawn_blocking(move || running.join()).await?.map_err(anyhow::Error::msg)?;
        Ok(())
    })
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
async fn report(store: Arc<squall_operators::UserStore>, enricher: squall_enrichment::Enricher, group_id: String) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut last = (Instant::now(), store.applied() + store.duplicates());
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    loop {
        tick.tick().await;
        let now = (Instant::now(), store.applied() + store.duplicates());
        let rate = (now.1 - last.1) as f64 / now.0.duration_since(last.0).as_secs_f64();
        let s = enricher.stats();
        let (hits, misses) = (s.hits.load(Relaxed), s.misses.load(Relaxed));
        let hit_ratio = if hits + misses == 0 { 0.0 } else { hits as f64 / (hits + misses) as f64 };
        tracing::info!(
            group_id = %group_id,
            events_per_sec = rate.round(),
            applied = store.applied(),
            duplicates = store.duplicates(),
            users = store.users(),
            cache_hit_ratio = format!("{hit_ratio:.3}"),
            "throughput"
        );
        last = now;
    }
}
