//! Keeps one deployment's processes running. A supervisor starts a run through the [`Launcher`],
//! reports what happens as [`Observation`]s, restarts a run that died with exponential backoff
//! (the whole run: the processes of a multi-process version fail as a unit), and stops the run
//! when told to. A supervisor started by a server that resumes its registry first looks for the
//! run an earlier server left running and adopts it, or stops what is left of it
//! ([`super::state::resume`] decides); [`retire`] does the same for a stopped deployment.
//!
//! When a process of a version deployed with standbys dies, the supervisor first asks standbys to
//! take over as its processes ([`Launcher::take_over`]: one standby, or one per process of a
//! cluster), at once, and supervises the promoted processes as an adopted run; only if the
//! standbys cannot does it restart the run, with backoff.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::launcher::{LaunchSpec, Launcher, ProcessEvent, ProcessHandle, Signal, Survivor};
use super::registry::Desired;
use super::state::{self, Found, Observation, Resume};

/// How long a stopped process may take to exit before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// Where a supervisor reports observations.
pub type Report = Arc<dyn Fn(Observation) + Send + Sync>;

/// How a supervisor begins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Begin {
    /// Start a run (a new deployment).
    Start,
    /// Adopt the run an earlier server left running, if it is whole; else start one.
    Resume,
}

/// A running supervisor.
pub struct Supervisor {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Supervisor {
    /// Starts supervising `spec`'s processes.
    pub fn spawn(launcher: Arc<dyn Launcher>, spec: LaunchSpec, begin: Begin, report: Report) -> Supervisor {
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(supervise(launcher, spec, begin, report, rx));
        Supervisor { stop, task }
    }

    /// Stops the processes and waits until they have exited.
    pub async fn halt(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }

    /// Stops supervising and leaves the processes running, for a server started later to adopt.
    pub async fn detach(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Stops whatever an earlier server left running of the stopped deployment `spec`.
pub async fn retire(launcher: Arc<dyn Launcher>, spec: LaunchSpec) {
    let found = launcher.find(&spec).await;
    if let Resume::Stop { stop } = state::resume(Desired::Stopped, spec.processes, &findings(&found))
        && !stop.is_empty()
    {
        tracing::info!(group_id = %spec.group_id, processes = ?stop, "stopping the processes of a stopped deployment");
        halt_all(&mut handles(found)).await;
    }
}

fn findings(found: &[Survivor]) -> Vec<Found> {
    found.iter().map(|s| Found { index: s.index, verified: s.verified.is_ok() }).collect()
}

fn handles(found: Vec<Survivor>) -> Vec<ProcessHandle> {
    found.into_iter().map(|s| s.handle).collect()
}

/// The run of `spec` to adopt, if an earlier server left a whole one running; anything less is
/// stopped first (then a new run starts).
async fn adopt(launcher: &dyn Launcher, spec: &LaunchSpec) -> Option<Vec<ProcessHandle>> {
    let found = launcher.find(spec).await;
    match state::resume(Desired::Running, spec.processes, &findings(&found)) {
        Resume::Adopt => {
            tracing::info!(group_id = %spec.group_id, processes = found.len(), "adopted the running processes");
            Some(handles(found))
        }
        Resume::Replace { stop } | Resume::Stop { stop } => {
            if !stop.is_empty() {
                let why: Vec<String> = found
                    .iter()
                    .map(|s| {
                        format!(
                            "process {}: {}",
                            s.index,
                            s.verified.as_ref().err().map_or_else(|| "verified".to_owned(), |e| e.to_string())
                        )
                    })
                    .collect();
                tracing::warn!(group_id = %spec.group_id, found = ?why, "cannot adopt an incomplete or unverified run: stopping it and starting afresh");
                halt_all(&mut handles(found)).await;
            }
            None
        }
    }
}

/// How one run ended.
enum Ended {
    Stopped,
    Died(String),
    /// Its process (a standby) took over as its version's process.
    TookOver(String),
}

async fn supervise(
    launcher: Arc<dyn Launcher>,
    spec: LaunchSpec,
    begin: Begin,
    report: Report,
    mut stop: watch::Receiver<bool>,
) {
    let mut adopted = match begin {
        Begin::Resume => adopt(launcher.as_ref(), &spec).await,
        Begin::Start => None,
    };
    let mut quick_failures = 0u32;
    // Whatever is adopted is run (and so stopped, if a stop came meanwhile) before the loop ends.
    while !*stop.borrow() || adopted.is_some() {
        let started = Instant::now();
        match run_once(launcher.as_ref(), &spec, &report, &mut stop, adopted.take()).await {
            Ended::Stopped => break,
            Ended::TookOver(why) => {
                // Not a failure: a fresh standby starts at once, with no backoff.
                tracing::info!(group_id = %spec.group_id, why = %why, "standby took over; starting a fresh one");
                report(Observation::TookOver { why });
            }
            Ended::Died(why) => {
                tracing::warn!(group_id = %spec.group_id, why = %why, "deployment processes died");
                report(Observation::Died { why });
                // Not raced against a stop: a standby asked may be taking over, and what took
                // over is run above and stopped there.
                if spec.standby_may_take_over() && !*stop.borrow() {
                    adopted = launcher.take_over(&spec).await;
                    if adopted.is_some() {
                        // Not a restart: no backoff, and no quick failure.
                        continue;
                    }
                }
                if started.elapsed() > Duration::from_secs(60) {
                    quick_failures = 0;
                }
                quick_failures += 1;
                let backoff = Duration::from_millis(250 * (1u64 << quick_failures.min(7))).min(Duration::from_secs(30));
                tracing::info!(group_id = %spec.group_id, backoff_ms = backoff.as_millis() as u64, "restarting the deployment's processes");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }
    report(Observation::Halted);
}

/// Runs the processes of `spec` once (the `adopted` ones, else a run it starts), until one exits
/// or `stop` says so.
async fn run_once(
    launcher: &dyn Launcher,
    spec: &LaunchSpec,
    report: &Report,
    stop: &mut watch::Receiver<bool>,
    adopted: Option<Vec<ProcessHandle>>,
) -> Ended {
    let mut processes = match adopted {
        Some(p) => {
            report(Observation::Adopted { launch_ids: p.iter().map(|h| h.launch_id.clone()).collect() });
            p
        }
        None => match launcher.start(spec) {
            Ok(p) => {
                report(Observation::Launched { launch_ids: p.iter().map(|h| h.launch_id.clone()).collect() });
                p
            }
            Err(why) => return Ended::Died(why),
        },
    };
    if *stop.borrow() {
        halt_all(&mut processes).await;
        return Ended::Stopped;
    }
    loop {
        let next = {
            let events =
                processes.iter_mut().enumerate().map(|(i, p)| Box::pin(async move { (i, p.next_event().await) }));
            tokio::select! {
                ((i, event), _, _) = futures::future::select_all(events) => Some((i, event)),
                _ = stop.changed() => None,
            }
        };
        match next {
            Some((process, ProcessEvent::Ready(url))) => {
                let pid = processes[process].origin.pid();
                report(Observation::Ready { process, url, pid })
            }
            // A standby's run has one process, and it lives on as the version's.
            Some((_, ProcessEvent::TookOver(why))) => return Ended::TookOver(why),
            Some((dead, ProcessEvent::Exited(why))) => {
                // The others cannot go on without it: take them down before the restart.
                for (i, p) in processes.iter().enumerate() {
                    if i != dead {
                        p.signal(Signal::Kill);
                    }
                }
                for (i, p) in processes.iter_mut().enumerate() {
                    if i != dead {
                        p.exited().await;
                    }
                }
                return Ended::Died(why);
            }
            None => {
                halt_all(&mut processes).await;
                return Ended::Stopped;
            }
        }
    }
}

/// Asks every process to terminate, then waits for each (killing it after [`STOP_GRACE`]).
async fn halt_all(processes: &mut [ProcessHandle]) {
    for p in processes.iter() {
        p.signal(Signal::Terminate);
    }
    for p in processes.iter_mut() {
        p.stop(STOP_GRACE).await;
    }
}
