//! Serves the in-memory `kassandra` CQL engine over the CQL native protocol v4 so the unmodified
//! scylla driver can use it: a development/test stand-in only; production uses ScyllaDB/Cassandra.
//!
//! Map: `main.rs` CLI, state file and signals; [`server`] accept loop and frame pump; [`store`]
//! the shared kassandra session, `system.local`, prepared-statement fixes and panic recovery;
//! [`cql_text`] statement-text normalisation and the guard against silently misread CQL.

mod bound;
mod cql_text;
mod server;
mod store;

use std::{
    io::Write,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use clap::Parser;
use kassandra::KassandraSession;
use tokio::net::TcpListener;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

use crate::store::{NodeInfo, Store};

/// A CQL v4 server for development and tests: kassandra's in-memory engine behind a TCP port.
/// Not a database: production uses ScyllaDB or Cassandra.
#[derive(Debug, Parser)]
#[command(name = "squall-cql-dev", version)]
struct Cli {
    /// Address to listen on. Port 0 picks a free port; the bound address is printed on stdout
    /// as `squall-cql-dev listening on <ip>:<port>`.
    #[arg(long, default_value = "127.0.0.1:9042")]
    listen: SocketAddr,

    /// State file: loaded at start if it exists, written on SIGTERM/SIGINT and every
    /// --save-interval-secs while data changes. Without it everything lives in memory only.
    #[arg(long)]
    state_file: Option<PathBuf>,

    /// Seconds between saves of changed data to --state-file; 0 saves only on shutdown.
    #[arg(long, default_value_t = 10)]
    save_interval_secs: u64,

    /// Address announced to drivers as `rpc_address` in system.local (drivers connect to it, with
    /// the port of their contact point). Defaults to the listen IP, or loopback if that is 0.0.0.0/::.
    #[arg(long)]
    rpc_address: Option<IpAddr>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kassandra=off")))
        .with_writer(std::io::stderr)
        .init();
    // Panics inside kassandra are answered as ServerError; log them once, through tracing.
    std::panic::set_hook(Box::new(|panic| warn!(%panic, "panic")));

    let session = match &cli.state_file {
        Some(path) if path.exists() => load_state(path)?,
        _ => KassandraSession::new(),
    };

    let listener =
        TcpListener::bind(cli.listen).await.with_context(|| format!("could not listen on {}", cli.listen))?;
    let bound = listener.local_addr()?;
    let rpc_address = cli.rpc_address.unwrap_or(match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => Ipv4Addr::LOCALHOST.into(),
        IpAddr::V6(ip) if ip.is_unspecified() => Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    });
    let host_id = store::random_uuid();
    let node = NodeInfo { rpc_address, port: bound.port(), host_id, cluster_name: "squall-cql-dev".to_owned() };
    let store = Arc::new(Store::new(session, node)?);
    let shutdown = shutdown_signal()?;

    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "squall-cql-dev listening on {bound}")?;
        stdout.flush()?;
    }
    info!(%bound, %rpc_address, host_id = %store::format_uuid(&host_id), state_file = ?cli.state_file, "serving CQL v4 (kassandra engine; dev/test only)");

    if let Some(path) = cli.state_file.clone()
        && cli.save_interval_secs > 0
    {
        tokio::spawn(save_periodically(Arc::clone(&store), path, Duration::from_secs(cli.save_interval_secs)));
    }

    server::serve(listener, Arc::clone(&store), shutdown).await;

    if let Some(path) = &cli.state_file {
        save_state(&store, path)?;
        info!(path = %path.display(), "state saved");
    }
    Ok(())
}

fn load_state(path: &Path) -> anyhow::Result<KassandraSession> {
    let bytes = std::fs::read(path).with_context(|| format!("could not read {}", path.display()))?;
    let session = KassandraSession::load_state(&bytes)
        .map_err(|e| anyhow::anyhow!("{} is not a kassandra state file: {e}", path.display()))?;
    info!(path = %path.display(), "state loaded");
    Ok(session)
}

/// Writes the state next to `path` and renames it over, so a crash never leaves half a file.
fn save_state(store: &Store, path: &Path) -> anyhow::Result<()> {
    let bytes = store.save_state()?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).with_context(|| format!("could not write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("could not replace {}", path.display()))?;
    Ok(())
}

async fn save_periodically(store: Arc<Store>, path: PathBuf, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if !store.take_dirty() {
            continue;
        }
        let (store, path) = (Arc::clone(&store), path.clone());
        match tokio::task::spawn_blocking(move || save_state(&store, &path)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => error!(error = %format!("{e:#}"), "periodic state save failed"),
            Err(e) => error!(error = %e, "periodic state save task failed"),
        }
    }
}

/// Completes on the first SIGINT or SIGTERM. The handlers are installed by the time this
/// returns, so a signal sent right after the "listening" line is never lost.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => info!("SIGINT"),
            _ = terminate.recv() => info!("SIGTERM"),
        }
    })
}
