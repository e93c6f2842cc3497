//! `squall archive`: the archiver and the import of `squall-archive` as a command line (the
//! `squall` binary embeds [`ArchiveArgs`] and calls [`main`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use squall_operators::event::DecodeLimits;

use crate::client::ClientArgs;
use squall_archive::archiver::{self, ArchiverConfig, ArchiverError, TopicSpec};
use squall_archive::import::{ImportError, import};
use squall_archive::store::{Archive, OpenError};

/// Archive the input topics to Parquet files in a directory or object store, until SIGINT or
/// SIGTERM (then store what it holds, commit and exit 0).
///
/// Records are archived with their offsets, Kafka timestamp, key and value, plus the decoded
/// columns or the dead-letter reason. Offsets are committed under --group only after the file
/// holding them is stored; on restart each partition resumes after the archive's last offset.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ArchiveArgs {
    #[command(subcommand)]
    command: Option<ArchiveCommand>,
    /// The archive: a directory, or file://, s3://BUCKET/PREFIX, gs://, az:// (credentials and
    /// AWS_ENDPOINT / AWS_ALLOW_HTTP from the environment).
    #[arg(long, required = true)]
    url: Option<String>,
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Group id the archived offsets are committed under.
    #[arg(long, default_value = "squall-archive")]
    group: String,
    /// Topics, comma-separated: NAME for song-completions and ad-impressions, NAME=song|ad for others.
    #[arg(long, value_delimiter = ',', default_value = "song-completions,ad-impressions")]
    topics: Vec<TopicSpec>,
    /// Close a partition's file at this many records.
    #[arg(long, default_value_t = 1_000_000)]
    rows_per_file: usize,
    /// Close a partition's file this long after its first record, e.g. 60s or 5m.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    max_file_age: Duration,
    /// The id the squall server started this archiver with; it answers `/v1/status` with it.
    #[arg(long, hide = true)]
    launch_id: Option<String>,
    /// Record this process (pid, start time, launch id, status address) in this file, for the
    /// squall server that starts it and any server started after that one.
    #[arg(long, hide = true, requires = "launch_id")]
    runtime_file: Option<PathBuf>,
    /// Stop cleanly (as on SIGTERM) once no squall server has renewed this process's lease for
    /// this long, e.g. 5m. Set by the squall server.
    #[arg(long, hide = true, value_parser = humantime::parse_duration, requires = "launch_id")]
    adopt_timeout: Option<Duration>,
    /// Serve `/v1/status` (for the squall server that runs it) on this address.
    #[arg(long, hide = true, default_value = "127.0.0.1:0", requires = "launch_id")]
    listen: String,
}

/// How a squall server runs an archiver: what `squall archive` needs to serve its status, keep
/// its runtime file and stop when its lease runs out (none when it is run by hand).
#[derive(Clone, Debug)]
pub struct Managed {
    /// The archiver's group id (its name in the server).
    pub group: String,
    /// The id the server started it with.
    pub launch_id: String,
    /// Its runtime file.
    pub runtime_file: Option<PathBuf>,
    /// Its lease's timeout.
    pub adopt_timeout: Option<Duration>,
    /// Where it serves `/v1/status`.
    pub listen: String,
}

/// What a `squall archive start|stop` asks the squall server.
#[derive(Clone, Debug)]
pub enum Remote {
    /// `squall archive start`.
    Start {
        /// The archive's URL.
        url: String,
        /// Its group id.
        group: String,
        /// Its topics (none: the two standard ones).
        topics: Vec<String>,
        /// Records per file.
        rows_per_file: Option<usize>,
        /// File age, as written.
        max_file_age: Option<String>,
    },
    /// `squall archive stop GROUP`.
    Stop {
        /// The archiver's group id.
        group: String,
    },
}

impl ArchiveArgs {
    /// The server command this is, with the server to send it to; none for a local archiver or import.
    pub fn remote(&self) -> Option<(Remote, ClientArgs)> {
        match &self.command {
            Some(ArchiveCommand::Start { url, group, topics, rows_per_file, max_file_age, client }) => Some((
                Remote::Start {
                    url: url.clone(),
                    group: group.clone(),
                    topics: topics.clone(),
                    rows_per_file: *rows_per_file,
                    max_file_age: max_file_age.clone(),
                },
                client.clone(),
            )),
            Some(ArchiveCommand::Stop { group, client }) => {
                Some((Remote::Stop { group: group.clone() }, client.clone()))
            }
            _ => None,
        }
    }

    /// How the squall server runs this archiver, if one started it.
    pub fn managed(&self) -> Option<Managed> {
        let launch_id = self.launch_id.clone()?;
        Some(Managed {
            group: self.group.clone(),
            launch_id,
            runtime_file: self.runtime_file.clone(),
            adopt_timeout: self.adopt_timeout,
            listen: self.listen.clone(),
        })
    }
}

#[derive(clap::Subcommand, Debug)]
enum ArchiveCommand {
    /// Import newline-delimited JSON exports (one event per line) as one topic partition's records.
    ///
    /// The lines get offsets in file order, continuing after the partition's last archived offset
    /// (0 when empty), no key and no Kafka timestamp.
    Import {
        /// The archive (as for `squall archive --url`).
        #[arg(long)]
        url: String,
        /// The topic the events belong to (NAME or NAME=song|ad).
        #[arg(long)]
        topic: TopicSpec,
        /// The partition to file them under.
        #[arg(long, default_value_t = 0)]
        partition: i32,
        /// Records per data file.
        #[arg(long, default_value_t = 1_000_000)]
        rows_per_file: usize,
        /// The NDJSON files, imported in this order.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Ask the squall server to run an archiver: supervised like a version (restarted when it
    /// dies, adopted by a restarted server), shown by `squall list`, `squall status GROUP` and the
    /// status page with its lag per partition and the files written.
    Start {
        /// The archive: a directory on the server's host, or s3://BUCKET/PREFIX, gs://, az://
        /// (credentials from the server's environment).
        #[arg(long)]
        url: String,
        /// The archiver's consumer group id, and its name.
        #[arg(long, default_value = "squall-archive")]
        group: String,
        /// Topics, comma-separated: NAME for song-completions and ad-impressions, NAME=song|ad
        /// for others (default: those two).
        #[arg(long, value_delimiter = ',')]
        topics: Vec<String>,
        /// Close a partition's file at this many records.
        #[arg(long)]
        rows_per_file: Option<usize>,
        /// Close a partition's file this long after its first record, e.g. 60s or 5m.
        #[arg(long)]
        max_file_age: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Ask the squall server to stop an archiver it runs and forget it (it stores what it holds
    /// and commits first; the archive stays).
    Stop {
        /// The archiver's group id.
        group: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Why `squall archive` failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The archive URL.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The archiver.
    #[error(transparent)]
    Archiver(#[from] ArchiverError),
    /// The import.
    #[error(transparent)]
    Import(#[from] ImportError),
    /// `start` and `stop` are sent to the server ([`ArchiveArgs::remote`]), not run here.
    #[error("squall archive start|stop are requests to the squall server")]
    Remote,
}

/// Runs `squall archive` or `squall archive import` (not `start` or `stop`, see
/// [`ArchiveArgs::remote`]); setting `stop` stops the archiver as SIGINT and SIGTERM do.
pub fn main(args: ArchiveArgs, stop: Arc<AtomicBool>) -> Result<(), CliError> {
    let limits = DecodeLimits::default();
    match args.command {
        Some(ArchiveCommand::Start { .. } | ArchiveCommand::Stop { .. }) => Err(CliError::Remote),
        Some(ArchiveCommand::Import { url, topic, partition, rows_per_file, files }) => {
            let archive = Archive::open(&url)?;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
            let done = rt.block_on(import(&archive, &topic, partition, &files, rows_per_file, limits))?;
            println!(
                "imported {} records ({} dead letters) into {} partition {partition} as {} files, offsets {:?}",
                done.records, done.dead_letters, topic.name, done.files, done.offsets
            );
            Ok(())
        }
        None => {
            let url = args.url.expect("clap requires --url");
            let archive = Archive::open(&url)?;
            let config = ArchiverConfig {
                brokers: args.brokers,
                group: args.group,
                topics: args.topics,
                rows_per_file: args.rows_per_file.max(1),
                max_file_age: args.max_file_age,
                limits,
            };
            let (registered, ready) = std::sync::mpsc::channel();
            let on_signal = stop.clone();
            std::thread::spawn(move || stop_on_signal(&on_signal, registered));
            let _ = ready.recv();
            archiver::run(&archive, &config, &stop)?;
            Ok(())
        }
    }
}

/// Sets `stop` at the first SIGINT or SIGTERM (signalling `registered` once both are caught).
fn stop_on_signal(stop: &AtomicBool, registered: std::sync::mpsc::Sender<()>) {
    use tokio::signal::unix::{SignalKind, signal};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    rt.block_on(async {
        let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
            return;
        };
        let _ = registered.send(());
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    });
    stop.store(true, Ordering::Relaxed);
    tracing::info!("stopping: storing open files and committing");
}
