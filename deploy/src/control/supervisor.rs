//! Keeps one deployment's processes running. A supervisor starts a run through the [`Launcher`],
//! reports what happens as [`Observation`]s, restarts a run that died with exponential backoff
//! (the whole run: the processes of a multi-process version fail as a unit), and stops the run
//! when told to.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::launcher::{LaunchSpec, Launcher, ProcessEvent, ProcessHandle, Signal};
use super::state::Observation;

/// How long a stopped process may take to exit before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// Where a supervisor reports observations.
pub type Report = Arc<dyn Fn(Observation) + Send + Sync>;

/// A running supervisor.
pub struct Supervisor {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Supervisor {
    /// Starts supervising `spec`'s processes.
    pub fn spawn(launcher: Arc<dyn Launcher>, spec: LaunchSpec, report: Report) -> Supervisor {
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(supervise(launcher, spec, report, rx));
        Supervisor { stop, task }
    }

    /// Stops the processes and waits until they have exited.
    pub async fn halt(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// How one run ended.
enum Ended {
    Stopped,
    Died(String),
}

async fn supervise(launcher: Arc<dyn Launcher>, spec: LaunchSpec, report: Report, mut stop: watch::Receiver<bool>) {
    let mut quick_failures = 0u32;
    while !*stop.borrow() {
        let started = Instant::now();
        match run_once(launcher.as_ref(), &spec, &report, &mut stop).await {
            Ended::Stopped => break,
            Ended::Died(why) => {
                tracing::warn!(group_id = %spec.group_id, why = %why, "deployment processes died; restarting");
                report(Observation::Died { why });
                if started.elapsed() > Duration::from_secs(60) {
                    quick_failures = 0;
                }
                quick_failures += 1;
                let backoff = Duration::from_millis(250 * (1u64 << quick_failures.min(7))).min(Duration::from_secs(30));
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }
    report(Observation::Halted);
}

/// Runs the processes of `spec` once, until one exits or `stop` says so.
async fn run_once(
    launcher: &dyn Launcher,
    spec: &LaunchSpec,
    report: &Report,
    stop: &mut watch::Receiver<bool>,
) -> Ended {
    let mut processes = match launcher.start(spec) {
        Ok(p) => p,
        Err(why) => return Ended::Died(why),
    };
    report(Observation::Launched { processes: processes.len() });
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
            Some((process, ProcessEvent::Ready(url))) => report(Observation::Ready { process, url }),
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
