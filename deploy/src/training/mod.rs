//! `squall training-data`: point-in-time attributes for training, computed from the archive with
//! a version's own declarations, as a timely dataflow. Its replay ([`asof`]) also serves
//! `squall consistency` ([`consistency`]): a running version checked against the archive.
//!
//! For every row `(user_id, ts, ...)` of a labels file, the output row holds the label's columns
//! unchanged and the user's attributes **as of `ts`**: the state after applying, with version
//! N's plan, dedup and window rules, exactly the user's archived events whose event time is
//! strictly before `ts` (so no label leaks into its own features), read with the user's clock as
//! of then (the largest `ts` of those events), and answered as the HTTP API answers them (the
//! same view code, then one typed column per attribute). With `--at T` every user's attributes
//! as of `T` are written instead.
//!
//! # Notes
//! - **Order.** A user's events are applied in event-time order; events with equal times in
//!   archive order (topic: song completions before ad impressions, then partition, then offset).
//!   A label at time `T` comes before every event at `T`. So the answer for a label equals the
//!   from-scratch recomputation (`squall_topologies::oracle::expected`) over the user's events
//!   with `ts < T` in that order, which is what `tests/training.rs` checks row by row. Applied in
//!   event-time order, no event is ever late, so `lateness` never drops one (a running version
//!   may drop an event that arrives later than the lateness; the archive keeps it).
//! - **Dedup.** The version's dedup runs with the watermark at each event's own time (every
//!   earlier event is applied): a resend (same kind, user and event id) is dropped when it is
//!   within `state.dedup_horizon` of the first copy's time; resends carry the original's time, so
//!   they are adjacent in this order and always dropped. The first copy in the order above counts.
//! - **User TTL** (`state.user_ttl`, when on): a user whose previous event is more than the TTL
//!   before the next one starts fresh, and a label more than the TTL after the user's last event
//!   gets nulls, as the API answers 404 for an expired user. A user with no event before a label
//!   gets nulls in every attribute column too.
//! - **Catalogue.** Events are enriched from the catalogue tables as they are now (read whole at
//!   start): the archive does not keep the catalogue's history.
//! - **Memory** is the users' state plus the events of the files being read, not every event:
//!   events are exchanged to their user's worker with their event time's minute as the timely
//!   timestamp; each worker reads its files in order of their first event time and holds back
//!   only the minutes some worker has not passed, then applies a minute's items sorted and drops
//!   them. A minute is passed once no unread file starts before it, so what is held is the events
//!   of the files whose event-time ranges overlap the oldest unapplied minute: small with the
//!   archiver's files (a file per partition per minute by default), but all of them when each
//!   file spans the whole history (one imported file per partition): measured in
//!   `benches/RESULTS.md` ("Training data"). Of the labels, each row's user and time are held
//!   from the start (about 20 bytes a row); the file's other columns are read again, a batch at
//!   a time, while the output is written. Each worker turns its answers into typed
//!   columns and sends them to worker 0 of process 0 a batch at a time, which spills them in
//!   sorted runs beside the output ([`spill`]), merged into label order (or user order) at the
//!   end: a run of rows in memory, not every answer. A `--at` snapshot answers a share of each
//!   worker's users at a time, freeing their states as it goes, a share once worker 0 has written
//!   all but a few before it.
//! - **Output** is written under a temporary name in the same folder and renamed once complete:
//!   a failed run (a bad labels file, an unreadable archive file) writes nothing.

pub mod asof;
pub mod catalogue;
pub mod consistency;
pub mod dataflow;
pub mod labels;
pub mod output;
pub mod prefix;
pub mod spill;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use squall_archive::{Archive, ListError, OpenError};
use squall_enrichment::{CatalogueError, Symbols};
use squall_operators::Plan;
use squall_topologies::{SpecError, TopologySpec};

use crate::version::cluster::{Cluster, HostfileError};
use labels::LabelsError;
use output::OutputError;

/// Write point-in-time attributes for training: for each label row (user_id, ts, ...) the
/// version's attributes from the archived events strictly before ts, as a Parquet file.
///
/// The output holds the label columns unchanged, then one column per attribute (int64, double,
/// text, map<string, int64|double>, list<string>; null where the user had no events yet).
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("rows").required(true).args(["labels", "at"])))]
pub struct TrainingArgs {
    /// The topology file, e.g. topologies/personalization.toml.
    #[arg(long, short)]
    pub topology: PathBuf,
    /// Which version's declarations (default: the file's `version`).
    #[arg(long)]
    pub version: Option<u32>,
    /// The archive of the topics (a directory, or s3://, gs://, az:// URL).
    #[arg(long, value_name = "URL")]
    pub archive: String,
    /// The labels: a .parquet or .csv file with columns user_id, ts (epoch ms or RFC 3339), and any others.
    #[arg(long, value_name = "FILE")]
    pub labels: Option<PathBuf>,
    /// Instead of labels: every user's attributes as of this time (RFC 3339 or epoch ms).
    #[arg(long, value_name = "TIMESTAMP", value_parser = labels::parse_time)]
    pub at: Option<i64>,
    /// The Parquet file to write.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// timely worker threads per process.
    #[arg(long, short)]
    pub workers: Option<usize>,
    /// Processes of the job's timely cluster (with --process and --hostfile).
    #[arg(long, default_value_t = 1)]
    pub processes: usize,
    /// This process's index in the cluster, 0..processes; process 0 writes the output.
    #[arg(long, default_value_t = 0)]
    pub process: usize,
    /// One line per process: `<timely host:port>`.
    #[arg(long)]
    pub hostfile: Option<PathBuf>,
    /// Where the catalogue is read.
    #[command(flatten)]
    pub catalogue: CatalogueArgs,
}

/// Where the catalogue is read, over the topology file's `[cql]`: the flags `training-data` and
/// `consistency` share.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct CatalogueArgs {
    /// CQL contact points of the catalogue, comma separated host:port (default: the topology file's).
    #[arg(long)]
    pub cql: Option<String>,
    /// CQL keyspace of the catalogue tables (default: the topology file's).
    #[arg(long)]
    pub keyspace: Option<String>,
}

impl CatalogueArgs {
    /// Puts the flags given into `spec`.
    pub fn apply(&self, spec: &mut TopologySpec) {
        self.cql.iter().for_each(|v| v.clone_into(&mut spec.cql.nodes));
        self.keyspace.iter().for_each(|v| v.clone_into(&mut spec.cql.keyspace));
    }
}

/// Why no output was written.
#[derive(Debug, thiserror::Error)]
pub enum TrainingError {
    /// The topology file or version.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A flag.
    #[error("{0}")]
    Usage(String),
    /// The cluster's hostfile.
    #[error(transparent)]
    Hostfile(#[from] HostfileError),
    /// The labels file.
    #[error(transparent)]
    Labels(#[from] LabelsError),
    /// The archive cannot be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The archive cannot be listed.
    #[error(transparent)]
    List(#[from] ListError),
    /// The catalogue cannot be read.
    #[error("cannot read the catalogue: {0}")]
    Catalogue(#[from] CatalogueError),
    /// The dataflow failed (an archive file that cannot be read names it).
    #[error("{0}")]
    Dataflow(String),
    /// The output.
    #[error(transparent)]
    Output(#[from] OutputError),
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Rows written (0 on processes other than 0).
    pub rows: u64,
    /// Archive files read.
    pub files: usize,
    /// Events applied, and resends dropped (this process's workers).
    pub applied: u64,
    /// Resends dropped.
    pub duplicates: u64,
    /// Users held at the end (this process's workers).
    pub users: usize,
    /// Bytes of their states ([`asof::AsOf::state_bytes`]).
    pub state_bytes: usize,
}

/// `squall training-data` on the command line: runs it and prints what it wrote.
pub fn cli(args: TrainingArgs) -> Result<(), TrainingError> {
    let (out, process) = (args.out.clone(), args.process);
    let s = main(args)?;
    let what = format!(
        "{} archive files, {} events applied, {} resends dropped, {} users, {} MB of state",
        s.files,
        s.applied,
        s.duplicates,
        s.users,
        s.state_bytes >> 20
    );
    if process == 0 {
        println!("squall training-data: {} rows in {} ({what})", s.rows, out.display());
    } else {
        println!("squall training-data: process {process} done, process 0 writes the output ({what} here)");
    }
    Ok(())
}

/// Runs `squall training-data`.
pub fn main(args: TrainingArgs) -> Result<Summary, TrainingError> {
    let started = Instant::now();
    let mut spec = TopologySpec::load(&args.topology)?;
    if let Some(v) = args.version {
        spec = spec.with_version(v)?;
    }
    if let Some(w) = args.workers {
        if !(1..=256).contains(&w) {
            return Err(TrainingError::Usage(format!("--workers {w}: use 1..=256")));
        }
        spec.runtime.workers = w;
    }
    args.catalogue.apply(&mut spec);
    let cluster = match (&args.hostfile, args.processes) {
        (None, 1) => None,
        (None, n) => return Err(TrainingError::Usage(format!("--processes {n} needs --hostfile"))),
        (Some(file), n) => Some(Cluster::from_hostfile(file, n, args.process)?),
    };
    let declaration = Arc::clone(&spec.attributes);
    let mut labels = match &args.labels {
        Some(path) => {
            let labels = labels::read(path)?;
            let names = output::attribute_names(&declaration);
            if let Some(f) = labels.schema.fields().iter().find(|f| names.contains(&f.name().as_str())) {
                return Err(TrainingError::Usage(format!(
                    "{}: the label column `{}` has the name of an attribute of version {}; rename it",
                    path.display(),
                    f.name(),
                    spec.version
                )));
            }
            Some(labels)
        }
        None => None,
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| TrainingError::Dataflow(e.to_string()))?;
    let archive = Archive::open(&args.archive)?;
    let until = match (&labels, args.at) {
        (_, Some(at)) => at,
        (Some(l), None) => l.rows.ts.iter().copied().max().unwrap_or(i64::MIN),
        (None, None) => unreachable!("clap requires --labels or --at"),
    };
    let topics = [spec.kafka.song_completions.clone(), spec.kafka.ad_impressions.clone()];
    let mut files = Vec::new();
    for (i, topic) in topics.iter().enumerate() {
        for (_, entries) in runtime.block_on(archive.list_topic(topic))? {
            files.extend(entries.into_iter().filter(|e| e.ts_range.is_some_and(|r| r.0 < until)).map(|e| (i as u8, e)));
        }
    }
    files.sort_by_key(|(t, e)| (e.ts_range.map(|r| r.0), *t, e.partition, e.from_offset));
    let symbols = Symbols::default();
    let catalogue = runtime.block_on(catalogue::Catalogue::load(&spec.cql.nodes, &spec.cql.keyspace, &symbols))?;
    let plan = Arc::new(Plan::compile(&declaration, &symbols));
    let n_files = files.len();
    // The job takes the label rows' users and times; the other columns are read again for the output.
    let label_rows = labels.as_mut().map(|l| std::mem::replace(&mut l.rows, labels::Rows::empty()));
    let spill = (args.process == 0).then(|| spill::Spill::new(&args.out, &declaration, args.at.is_some()));
    let job = Arc::new(dataflow::Job {
        plan,
        symbols,
        catalogue: Arc::new(catalogue),
        archive,
        files,
        labels: label_rows.unwrap_or_else(labels::Rows::empty),
        at: args.at,
        until,
        dedup_horizon_ms: spec.state.dedup_horizon.as_millis() as i64,
        user_ttl_ms: spec.state.user_ttl.as_millis() as i64,
        runtime: runtime.handle().clone(),
        answers: Mutex::new(dataflow::Answers { spill, failed: None }),
        counts: Mutex::new(Vec::new()),
    });
    let workers = spec.runtime.workers;
    let config = match cluster {
        None => timely::Config::process(workers),
        Some(c) => timely::Config {
            communication: timely::CommunicationConfig::Cluster {
                threads: workers,
                process: c.process,
                addresses: c.addresses,
                report: false,
                zerocopy: false,
            },
            worker: timely::WorkerConfig::default(),
        },
    };
    dataflow::run(Arc::clone(&job), config).map_err(TrainingError::Dataflow)?;
    let answers = std::mem::take(&mut *job.answers.lock().unwrap_or_else(|p| p.into_inner()));
    let mut summary = Summary { rows: 0, files: n_files, applied: 0, duplicates: 0, users: 0, state_bytes: 0 };
    for c in job.counts.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        summary.applied += c.0;
        summary.duplicates += c.1;
        summary.users += c.2;
        summary.state_bytes += c.3;
    }
    if let Some(why) = answers.failed {
        return Err(TrainingError::Dataflow(why));
    }
    let Some(spill) = answers.spill else { return Ok(summary) };
    let merge = spill.finish()?;
    summary.rows = match (&labels, args.at) {
        (_, Some(at)) => output::write_snapshot(&args.out, at, merge)?,
        (Some(l), None) => output::write_labels(&args.out, l, &job.labels, merge)?,
        (None, None) => unreachable!("clap requires --labels or --at"),
    };
    tracing::info!(
        rows = summary.rows,
        files = summary.files,
        applied = summary.applied,
        duplicates = summary.duplicates,
        seconds = started.elapsed().as_secs_f64(),
        "training data written"
    );
    Ok(summary)
}
