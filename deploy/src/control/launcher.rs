//! The seam between the control plane and the processes of a version: a [`Launcher`] starts the
//! processes of one run and hands back a [`ProcessHandle`] per process, through which the
//! supervisor observes it (ready, exited) and stops it. The server uses [`super::child::ChildLauncher`]
//! (`squall run` children); tests use fakes, so the control plane runs in-process without a broker.
//!
//! A handle does not say how its process came to be ours: [`Origin`] is `Spawned` for a child of
//! this server, and `Adopted` for a process an earlier server started and this one took over
//! ([`Launcher::find`] hands those back as [`Survivor`]s), or for a standby that became the
//! run's process ([`Launcher::take_over`]). Dropping a handle leaves its process
//! running: only [`Signal`]s stop it, so a server that exits without stopping its versions leaves
//! them to the next one.

use std::path::PathBuf;

use futures::future::BoxFuture;
use tokio::sync::mpsc;

use super::archives::ArchiveDeployment;
use super::registry::BackfillFrom;
use crate::values::{GroupId, StartPosition};

/// What to run: one deployment's processes, with everything the launcher needs to start them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchSpec {
    /// The deployment.
    pub group_id: GroupId,
    /// The executable its processes run (the server's own unless the deployment pins one).
    pub program: PathBuf,
    /// The topology file as deployed.
    pub topology: PathBuf,
    /// The version of the file to run.
    pub version: u32,
    /// Worker threads per process.
    pub workers: usize,
    /// Processes (a timely cluster on this host when > 1).
    pub processes: usize,
    /// Where a version without a checkpoint starts.
    pub start_from: StartPosition,
    /// The archive it applies first.
    pub backfill: Option<BackfillFrom>,
    /// An archiver, not a version: run `squall archive` with this record (one process; the
    /// topology, version and workers above are unused).
    pub archiver: Option<ArchiveDeployment>,
    /// A standby of one of the version's processes, not the version: run `squall standby` (one
    /// process; `workers` are the version's, `start_from` and `backfill` unused).
    pub standby: Option<StandbyOf>,
    /// The version's standbys per process, which its processes are told (`--standbys`).
    pub standbys: usize,
}

impl LaunchSpec {
    /// Whether standbys may take over when this run's processes die ([`Launcher::take_over`]): a
    /// version (not a standby or an archiver) deployed with standbys. A multi-process version's
    /// processes fail as a unit (a timely cluster cannot lose a member), so one standby of every
    /// process takes over at once, as a new cluster.
    pub fn standby_may_take_over(&self) -> bool {
        self.standby.is_none() && self.archiver.is_none() && self.standbys > 0
    }
}

/// Which standby a [`LaunchSpec`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StandbyOf {
    /// The process of the version whose users it holds.
    pub process: usize,
    /// Which of that process's standbys (0..standbys).
    pub replica: usize,
    /// The version's processes.
    pub processes: usize,
}

/// How a process came to be managed by this server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Started by this server, as its child.
    Spawned {
        /// Its process id.
        pid: Option<u32>,
    },
    /// Not started as this run's process by this server: started by an earlier server and
    /// taken over by this one, or a standby that took over as the run's process.
    Adopted {
        /// Its process id.
        pid: u32,
    },
}

impl Origin {
    /// Its process id, if known.
    pub fn pid(&self) -> Option<u32> {
        match *self {
            Origin::Spawned { pid } => pid,
            Origin::Adopted { pid } => Some(pid),
        }
    }
}

/// What a process reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProcessEvent {
    /// It serves HTTP at this address.
    Ready(String),
    /// It exited (or can no longer be watched); why, with the end of its log when there is one.
    Exited(String),
    /// A standby that took over as its version's process: it runs on, no longer this run's (the
    /// version's supervisor watches it); not a failure, so a fresh standby starts at once.
    TookOver(String),
}

/// How the supervisor asks a process to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// Finish what is in flight and exit (SIGTERM).
    Terminate,
    /// Exit now (SIGKILL).
    Kill,
}

/// One process of a run, as the supervisor holds it.
#[derive(Debug)]
pub struct ProcessHandle {
    /// How it came to be ours.
    pub origin: Origin,
    /// The id it was given and reports on `/v1/status`.
    pub launch_id: String,
    events: mpsc::UnboundedReceiver<ProcessEvent>,
    signals: mpsc::UnboundedSender<Signal>,
}

/// The launcher's side of a [`ProcessHandle`]: where it reports events and receives signals.
#[derive(Debug)]
pub struct ProcessSide {
    /// Events for the supervisor.
    pub events: mpsc::UnboundedSender<ProcessEvent>,
    /// Signals from the supervisor.
    pub signals: mpsc::UnboundedReceiver<Signal>,
}

impl ProcessHandle {
    /// A handle and the launcher's side of it.
    pub fn new(origin: Origin, launch_id: String) -> (ProcessHandle, ProcessSide) {
        let (events_tx, events) = mpsc::unbounded_channel();
        let (signals, signals_rx) = mpsc::unbounded_channel();
        (ProcessHandle { origin, launch_id, events, signals }, ProcessSide { events: events_tx, signals: signals_rx })
    }

    /// The next thing the process reports; `Exited` once the launcher's side is gone.
    pub async fn next_event(&mut self) -> ProcessEvent {
        self.events.recv().await.unwrap_or_else(|| ProcessEvent::Exited("its launcher stopped watching it".into()))
    }

    /// Asks the process to end (nothing happens if it has exited already).
    pub fn signal(&self, s: Signal) {
        let _ = self.signals.send(s);
    }

    /// Asks the process to terminate and waits until it has exited; kills it after `grace`.
    pub async fn stop(&mut self, grace: std::time::Duration) {
        self.signal(Signal::Terminate);
        if tokio::time::timeout(grace, self.exited()).await.is_err() {
            self.signal(Signal::Kill);
            self.exited().await;
        }
    }

    /// Waits until the process has exited.
    pub async fn exited(&mut self) -> String {
        loop {
            if let ProcessEvent::Exited(why) | ProcessEvent::TookOver(why) = self.next_event().await {
                return why;
            }
        }
    }
}

/// A process of a deployment that an earlier server started and left running, found by
/// [`Launcher::find`]: certainly the process that server launched (not another one that now has
/// its pid), so it may be adopted or stopped.
#[derive(Debug)]
pub struct Survivor {
    /// Its index in its deployment's run.
    pub index: usize,
    /// The handle to it (`Origin::Adopted`); it reports `Ready` (at once, if it serves already)
    /// and `Exited` like a spawned one.
    pub handle: ProcessHandle,
    /// Whether it answered `/v1/status` with its launch id (or is still starting, with no HTTP
    /// address yet); if not, why. A process that cannot be verified is replaced.
    pub verified: Result<(), Unverified>,
}

/// Why a process found running is not trusted as the one its runtime file records.
#[derive(Debug, thiserror::Error)]
pub enum Unverified {
    /// Its `/v1/status` did not answer.
    #[error("{url}/v1/status did not answer: {error}")]
    NoAnswer {
        /// Its address.
        url: String,
        /// The request's error.
        error: reqwest::Error,
    },
    /// Its `/v1/status` answered something other than a status.
    #[error("{url}/v1/status: {error}")]
    BadAnswer {
        /// Its address.
        url: String,
        /// Why the answer is not a status.
        error: reqwest::Error,
    },
    /// It answered as another process.
    #[error("{url} answered as launch {launch_id:?} pid {pid:?}, not launch {expected_launch_id} pid {expected_pid}")]
    Other {
        /// Its address.
        url: String,
        /// The launch id it answered with.
        launch_id: Option<String>,
        /// The pid it answered with.
        pid: Option<u32>,
        /// The launch id its runtime file records.
        expected_launch_id: String,
        /// The pid its runtime file records.
        expected_pid: u32,
    },
}

/// Starts the processes of deployments, and finds the ones an earlier server left running.
pub trait Launcher: Send + Sync + 'static {
    /// Starts one run of `spec`'s processes: a handle per process, in process order, each
    /// reporting `Ready` once it serves and `Exited` when it ends. An error says why the run could
    /// not start (then none of its processes runs).
    fn start(&self, spec: &LaunchSpec) -> Result<Vec<ProcessHandle>, String>;

    /// The processes of `spec`'s deployment that an earlier server started and that still run, in
    /// process order (records of processes that are gone, or whose pid now belongs to another
    /// process, are left out, and those processes are never signalled).
    fn find(&self, spec: &LaunchSpec) -> BoxFuture<'static, Vec<Survivor>>;

    /// Asks standbys of version `spec` to become its processes, in place, after its run died
    /// (only called when [`LaunchSpec::standby_may_take_over`]; every process, as one cluster,
    /// when it has several): the handles of the new run, adopted (`Origin::Adopted`), or `None`
    /// when the standbys could not (then the supervisor restarts the run as before). The default
    /// has no standbys to ask.
    fn take_over(&self, spec: &LaunchSpec) -> BoxFuture<'static, Option<Vec<ProcessHandle>>> {
        let _ = spec;
        Box::pin(async { None })
    }
}

/// A fresh launch id: 16 hex digits, different for every process started.
pub fn launch_id() -> String {
    use rand::Rng as _;
    format!("{:016x}", rand::rng().random::<u64>())
}
