//! The deployment state machine. A deployment's [`DeploymentState`] is derived from two things:
//! the registry (what the operator asked for: desired state, promotion) and what is [`Observed`]
//! of its processes (who announced an address, why they last died, the Kafka lag). Operator
//! commands ([`deploy`], [`promote`], [`rollback`], [`stop`]) are pure functions from those facts
//! to a [`Change`] of the registry or a [`Refusal`]; observations ([`Observation`]: launched,
//! adopted, ready, died, progress, halted) are pure updates of [`Observed`]. When a server starts,
//! [`resume`] decides what it does with the processes an earlier server left running: adopt them,
//! or stop them and start afresh. Nothing here does I/O: the control plane makes a change durable,
//! then starts and stops processes as it says.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::registry::{Deployment, Desired, RegistryData};
use crate::kafka::PartitionLag;
use crate::values::GroupId;

/// The state of a deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DeploymentState {
    /// Its processes are starting and have not all said they serve yet.
    Starting,
    /// Serving, and applying an archive of its topics before it reads Kafka (`--backfill`).
    Backfilling,
    /// Serving, but its Kafka lag is above the catch-up threshold (or not known yet).
    CatchingUp,
    /// Serving and caught up.
    Running,
    /// Serving, caught up, and the version that answers its topology's queries by default.
    Promoted,
    /// Stopped by `stop` or a rollback; its committed offsets and checkpoints stay.
    Stopped,
    /// Its processes died and have not served again since; they are being restarted.
    Failed,
}

impl DeploymentState {
    /// Every state.
    pub const ALL: [DeploymentState; 7] = [
        DeploymentState::Starting,
        DeploymentState::Backfilling,
        DeploymentState::CatchingUp,
        DeploymentState::Running,
        DeploymentState::Promoted,
        DeploymentState::Stopped,
        DeploymentState::Failed,
    ];

    /// The state's name in the API: `starting`, `backfilling`, `catching-up`, `running`,
    /// `promoted`, `stopped`, `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentState::Starting => "starting",
            DeploymentState::Backfilling => "backfilling",
            DeploymentState::CatchingUp => "catching-up",
            DeploymentState::Running => "running",
            DeploymentState::Promoted => "promoted",
            DeploymentState::Stopped => "stopped",
            DeploymentState::Failed => "failed",
        }
    }

    /// Whether every process of the deployment answers queries.
    pub fn serving(self) -> bool {
        matches!(
            self,
            DeploymentState::Backfilling
                | DeploymentState::CatchingUp
                | DeploymentState::Running
                | DeploymentState::Promoted
        )
    }
}

impl std::fmt::Display for DeploymentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// What the control plane observes of one deployment's processes; kept in memory only.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    /// Each process of the current run; empty when no run is under way.
    pub processes: Vec<ProcessSlot>,
    /// Whether the current run was started by an earlier server and adopted by this one.
    pub adopted: bool,
    /// Times its processes died and were restarted.
    pub restarts: u32,
    /// Why its processes last died.
    pub last_error: Option<String>,
    /// Per partition: committed offset, high watermark, lag (the last reading that succeeded).
    pub lag: Vec<PartitionLag>,
    /// Why the last lag reading failed, if it did.
    pub lag_error: Option<String>,
    /// Events applied per second (last reading).
    pub events_per_sec: f64,
    /// Whether its processes said they still read an archive (last reading since the run
    /// started; none yet: a version deployed with a backfill counts as backfilling, so it is not
    /// shown catching up on Kafka before its first reading).
    pub backfilling: Option<bool>,
}

/// One process of a deployment's current run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessSlot {
    /// The id it was launched with: the server names it to renew the process's lease.
    pub launch_id: String,
    /// The HTTP address it announced (`None`: not yet).
    pub url: Option<String>,
    /// Its process id on this host, when the server knows it.
    pub pid: Option<u32>,
}

/// Something observed of a deployment's processes.
#[derive(Clone, Debug, PartialEq)]
pub enum Observation {
    /// A run was started: a process per launch id, in process order.
    Launched {
        /// The processes' launch ids.
        launch_ids: Vec<String>,
    },
    /// The run an earlier server started was found running and taken over, whole.
    Adopted {
        /// The processes' launch ids.
        launch_ids: Vec<String>,
    },
    /// Process `process` of the current run serves at `url`.
    Ready {
        /// Its index.
        process: usize,
        /// Its HTTP address.
        url: String,
        /// Its process id on this host, when known.
        pid: Option<u32>,
    },
    /// The run ended against the operator's wishes (a process exited, or the run could not
    /// start); it will be restarted.
    Died {
        /// Why, with the end of the log.
        why: String,
    },
    /// The run's process, a standby, took over as its version's process: it ended as a standby
    /// (like [`Observation::Died`]: a fresh standby starts), and lives on as the version's.
    TookOver {
        /// Which process it became, and its pid.
        why: String,
    },
    /// The run was stopped on purpose.
    Halted,
    /// A reading of whether its processes still read an archive of the topics (`--backfill`).
    Backfilling(bool),
    /// A reading of the Kafka lag and the throughput.
    Progress {
        /// Per partition lag, or why it could not be read.
        lag: Result<Vec<PartitionLag>, String>,
        /// Events applied per second.
        events_per_sec: f64,
    },
}

impl Observed {
    /// Applies an observation.
    pub fn apply(&mut self, o: Observation) {
        let slots = |ids: Vec<String>| {
            ids.into_iter().map(|launch_id| ProcessSlot { launch_id, url: None, pid: None }).collect()
        };
        match o {
            Observation::Launched { launch_ids } => {
                self.processes = slots(launch_ids);
                self.adopted = false;
                self.backfilling = None;
            }
            Observation::Adopted { launch_ids } => {
                self.processes = slots(launch_ids);
                self.adopted = true;
                self.backfilling = None;
            }
            Observation::Ready { process, url, pid } => {
                if let Some(slot) = self.processes.get_mut(process) {
                    slot.url = Some(url);
                    slot.pid = pid;
                }
            }
            Observation::Died { why } | Observation::TookOver { why } => {
                self.processes.clear();
                self.restarts += 1;
                self.last_error = Some(why);
            }
            Observation::Halted => self.processes.clear(),
            Observation::Backfilling(b) => self.backfilling = Some(b),
            Observation::Progress { lag, events_per_sec } => {
                match lag {
                    Ok(lag) => {
                        self.lag = lag;
                        self.lag_error = None;
                    }
                    Err(e) => self.lag_error = Some(e),
                }
                self.events_per_sec = events_per_sec;
            }
        }
    }

    /// The addresses of every process, once all of them serve.
    pub fn serving(&self) -> Option<Vec<String>> {
        if self.processes.is_empty() {
            return None;
        }
        self.processes.iter().map(|p| p.url.clone()).collect()
    }

    /// The total lag, when the last reading succeeded.
    pub fn total_lag(&self) -> Option<i64> {
        (self.lag_error.is_none() && !self.lag.is_empty()).then(|| self.lag.iter().map(|p| p.lag).sum())
    }
}

/// What the transitions decide on: the registry, and what is observed of each deployment.
#[derive(Clone, Copy)]
pub struct Facts<'a> {
    /// The registry.
    pub registry: &'a RegistryData,
    /// Observations by group id (a deployment without any is starting).
    pub observed: &'a HashMap<GroupId, Observed>,
    /// A serving version whose lag is above this (or two seconds of its throughput, if more) is catching up.
    pub catch_up_lag: i64,
}

impl Facts<'_> {
    /// The state of `d`.
    pub fn state(&self, d: &Deployment) -> DeploymentState {
        if d.desired == Desired::Stopped {
            return DeploymentState::Stopped;
        }
        let Some(o) = self.observed.get(&d.group_id) else { return DeploymentState::Starting };
        if o.serving().is_none() {
            return if o.last_error.is_some() { DeploymentState::Failed } else { DeploymentState::Starting };
        }
        if o.backfilling.unwrap_or(d.backfill.is_some()) {
            return DeploymentState::Backfilling;
        }
        let threshold = self.catch_up_lag.max((o.events_per_sec * 2.0) as i64);
        match o.total_lag() {
            Some(lag) if lag <= threshold && self.registry.is_promoted(d) => DeploymentState::Promoted,
            Some(lag) if lag <= threshold => DeploymentState::Running,
            _ => DeploymentState::CatchingUp,
        }
    }

    fn deployment(&self, g: &GroupId) -> Result<&Deployment, Refusal> {
        self.registry.deployments.get(g).ok_or_else(|| Refusal::Unknown(g.clone()))
    }

    /// `g`, if it is serving queries.
    fn serving(&self, g: &GroupId) -> Result<&Deployment, Refusal> {
        let d = self.deployment(g)?;
        match self.state(d) {
            DeploymentState::Stopped => Err(Refusal::Stopped(g.clone())),
            s if !s.serving() => Err(Refusal::NotServing { group_id: g.clone(), state: s }),
            _ => Ok(d),
        }
    }
}

/// A decided change: the registry as it is to be, and the deployments whose processes are to be
/// started and stopped once it is durable.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// The registry after the change.
    pub registry: RegistryData,
    /// A deployment to start.
    pub start: Option<GroupId>,
    /// Deployments to stop.
    pub stop: Vec<GroupId>,
}

/// Why a command was refused; the message says what was wrong.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Refusal {
    /// No deployment has this group id.
    #[error("no deployment with group id {:?}", .0.as_str())]
    Unknown(GroupId),
    /// That version is deployed already.
    #[error("{} is already deployed", .0.group_id)]
    AlreadyDeployed(Box<Deployment>),
    /// A deployment cannot start at its own offsets.
    #[error("start_from group:{0} names the deployment itself")]
    StartsFromItself(GroupId),
    /// A stopped version cannot answer queries.
    #[error("{0} is stopped")]
    Stopped(GroupId),
    /// Not every process of the version serves yet.
    #[error("{group_id} is not serving yet")]
    NotServing {
        /// The deployment.
        group_id: GroupId,
        /// Its state.
        state: DeploymentState,
    },
    /// Stopping a stopped version.
    #[error("{0} is already stopped")]
    AlreadyStopped(GroupId),
    /// Stopping the promoted version would leave its topology without one.
    #[error("{group_id} is the promoted version of {topology}")]
    IsPromoted {
        /// The deployment.
        group_id: GroupId,
        /// Its topology.
        topology: String,
    },
}

/// Records `d` (to be running) and starts it.
pub fn deploy(f: &Facts, d: Deployment) -> Result<Change, Refusal> {
    if let Some(existing) = f.registry.deployments.get(&d.group_id) {
        return Err(Refusal::AlreadyDeployed(Box::new(existing.clone())));
    }
    if d.start_from.group() == Some(&d.group_id) {
        return Err(Refusal::StartsFromItself(d.group_id));
    }
    let mut registry = f.registry.clone();
    let g = d.group_id.clone();
    registry.deployments.insert(g.clone(), d);
    Ok(Change { registry, start: Some(g), stop: Vec::new() })
}

/// Makes the serving version `g` the one that answers its topology's queries by default.
pub fn promote(f: &Facts, g: &GroupId, now_ms: u64) -> Result<Change, Refusal> {
    let d = f.serving(g)?;
    let mut registry = f.registry.clone();
    set_promoted(&mut registry, &d.topology, g, now_ms);
    Ok(Change { registry, start: None, stop: Vec::new() })
}

/// Promotes the serving (older) version `g` again and stops every newer running version of its
/// topology, in one change.
pub fn rollback(f: &Facts, g: &GroupId, now_ms: u64) -> Result<Change, Refusal> {
    let d = f.serving(g)?;
    let newer: Vec<GroupId> = f
        .registry
        .deployments
        .values()
        .filter(|o| o.topology == d.topology && o.version > d.version && o.desired == Desired::Running)
        .map(|o| o.group_id.clone())
        .collect();
    let mut registry = f.registry.clone();
    set_promoted(&mut registry, &d.topology, g, now_ms);
    for n in &newer {
        set_stopped(&mut registry, n, now_ms);
    }
    Ok(Change { registry, start: None, stop: newer })
}

/// Stops `g`, unless it is stopped already or is its topology's promoted version.
pub fn stop(f: &Facts, g: &GroupId, now_ms: u64) -> Result<Change, Refusal> {
    let d = f.deployment(g)?;
    if d.desired == Desired::Stopped {
        return Err(Refusal::AlreadyStopped(g.clone()));
    }
    if f.registry.is_promoted(d) {
        return Err(Refusal::IsPromoted { group_id: g.clone(), topology: d.topology.clone() });
    }
    let mut registry = f.registry.clone();
    set_stopped(&mut registry, g, now_ms);
    Ok(Change { registry, start: None, stop: vec![g.clone()] })
}

/// A process of a deployment found running when the server starts (see
/// [`super::launcher::Launcher::find`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    /// Its index in the run.
    pub index: usize,
    /// Whether it proved to be the process that was launched (answered `/v1/status` with its
    /// launch id, or is still starting).
    pub verified: bool,
}

/// What a starting server does with the processes of a deployment it finds running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resume {
    /// Every process of the run is there and verified: take them over; nothing restarts.
    Adopt,
    /// Stop these processes (a run with a process missing cannot go on, and a process that cannot
    /// be verified is not trusted), then start a new run, which resumes from the checkpoint.
    Replace {
        /// The indices of the processes to stop (none: nothing was found).
        stop: Vec<usize>,
    },
    /// The deployment is stopped: stop these processes (a stop the earlier server recorded but
    /// did not finish).
    Stop {
        /// The indices of the processes to stop.
        stop: Vec<usize>,
    },
}

/// Decides what to do with what is `found` of a deployment that wants to be `desired` with
/// `processes` processes.
pub fn resume(desired: Desired, processes: usize, found: &[Found]) -> Resume {
    let all: Vec<usize> = found.iter().map(|f| f.index).collect();
    if desired == Desired::Stopped {
        return Resume::Stop { stop: all };
    }
    let whole = (0..processes).all(|i| found.iter().any(|f| f.index == i && f.verified));
    if whole && found.len() == processes { Resume::Adopt } else { Resume::Replace { stop: all } }
}

fn set_promoted(registry: &mut RegistryData, topology: &str, g: &GroupId, now_ms: u64) {
    registry.promoted.insert(topology.to_owned(), g.clone());
    if let Some(rec) = registry.deployments.get_mut(g) {
        rec.promoted_at_ms = Some(now_ms);
    }
}

fn set_stopped(registry: &mut RegistryData, g: &GroupId, now_ms: u64) {
    if let Some(rec) = registry.deployments.get_mut(g) {
        rec.desired = Desired::Stopped;
        rec.stopped_at_ms = Some(now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::DeploymentState::*;
    use super::*;

    const NOW: u64 = 1_000;
    const THRESHOLD: i64 = 100;

    fn g(s: &str) -> GroupId {
        s.parse().unwrap()
    }

    fn deployment(group: &str, version: u32, processes: usize) -> Deployment {
        Deployment::example(group, version, processes)
    }

    fn launched(processes: usize) -> Observation {
        Observation::Launched { launch_ids: (0..processes).map(|i| format!("{i:016x}")).collect() }
    }

    fn lag(total: i64) -> Vec<PartitionLag> {
        vec![PartitionLag { topic: "t".into(), partition: 0, committed: Some(0), high_watermark: total, lag: total }]
    }

    /// A world with `p-v1` (2 processes) in `state`, reached through observations and commands.
    struct World {
        registry: RegistryData,
        observed: HashMap<GroupId, Observed>,
    }

    impl World {
        fn with(state: DeploymentState) -> World {
            let mut w = World { registry: RegistryData::default(), observed: HashMap::new() };
            w.registry = deploy(&w.facts(), deployment("p-v1", 1, 2)).unwrap().registry;
            w.observe("p-v1", launched(2));
            match state {
                Starting => {}
                Failed => w.observe("p-v1", Observation::Died { why: "exit 1".into() }),
                Stopped => {
                    w.serve("p-v1", 0);
                    w.registry = stop(&w.facts(), &g("p-v1"), NOW).unwrap().registry;
                    w.observe("p-v1", Observation::Halted);
                }
                Backfilling => {
                    w.serve("p-v1", THRESHOLD + 1);
                    w.observe("p-v1", Observation::Backfilling(true));
                }
                CatchingUp => w.serve("p-v1", THRESHOLD + 1),
                Running => w.serve("p-v1", THRESHOLD),
                Promoted => {
                    w.serve("p-v1", 0);
                    w.registry = promote(&w.facts(), &g("p-v1"), NOW).unwrap().registry;
                }
            }
            assert_eq!(w.state("p-v1"), state, "setting up {state}");
            w
        }

        fn facts(&self) -> Facts<'_> {
            Facts { registry: &self.registry, observed: &self.observed, catch_up_lag: THRESHOLD }
        }

        fn observe(&mut self, group: &str, o: Observation) {
            self.observed.entry(g(group)).or_default().apply(o);
        }

        /// Every process announces itself, then a lag reading of `total`.
        fn serve(&mut self, group: &str, total: i64) {
            let n = self.registry.deployments[&g(group)].processes;
            self.observe(group, launched(n));
            for i in 0..n {
                self.observe(
                    group,
                    Observation::Ready { process: i, url: format!("http://127.0.0.1:{}", 9000 + i), pid: None },
                );
            }
            self.observe(group, Observation::Progress { lag: Ok(lag(total)), events_per_sec: 0.0 });
        }

        fn state(&self, group: &str) -> DeploymentState {
            self.facts().state(&self.registry.deployments[&g(group)])
        }
    }

    #[test]
    fn a_new_deployment_starts_then_catches_up_then_runs() {
        let mut w = World::with(Starting);
        w.observe("p-v1", Observation::Ready { process: 0, url: "http://a".into(), pid: None });
        assert_eq!(w.state("p-v1"), Starting, "one of two processes serves");
        w.observe("p-v1", Observation::Ready { process: 1, url: "http://b".into(), pid: None });
        assert_eq!(w.state("p-v1"), CatchingUp, "serving, lag not known yet");
        assert_eq!(w.observed[&g("p-v1")].serving(), Some(vec!["http://a".into(), "http://b".into()]));
        w.observe("p-v1", Observation::Progress { lag: Ok(lag(THRESHOLD + 1)), events_per_sec: 0.0 });
        assert_eq!(w.state("p-v1"), CatchingUp);
        // Caught up.
        w.observe("p-v1", Observation::Progress { lag: Ok(lag(THRESHOLD)), events_per_sec: 0.0 });
        assert_eq!(w.state("p-v1"), Running);
        // Two seconds of throughput count as caught up when that is more than the threshold.
        w.observe("p-v1", Observation::Progress { lag: Ok(lag(1000)), events_per_sec: 500.0 });
        assert_eq!(w.state("p-v1"), Running);
        // Fell behind; then the lag cannot be read: not known to be caught up.
        w.observe("p-v1", Observation::Progress { lag: Ok(lag(1001)), events_per_sec: 500.0 });
        assert_eq!(w.state("p-v1"), CatchingUp);
        w.serve("p-v1", 0);
        w.observe("p-v1", Observation::Progress { lag: Err("broker down".into()), events_per_sec: 0.0 });
        assert_eq!(w.state("p-v1"), CatchingUp);
        assert_eq!(w.observed[&g("p-v1")].lag, lag(0), "the last good reading stays for the detail view");
    }

    #[test]
    fn a_process_that_dies_fails_the_deployment_until_every_process_serves_again() {
        for from in [Starting, CatchingUp, Running, Promoted, Failed] {
            let mut w = World::with(from);
            let restarts = w.observed[&g("p-v1")].restarts;
            w.observe("p-v1", Observation::Died { why: "process 1 exited (signal 9)".into() });
            assert_eq!(w.state("p-v1"), Failed, "died in {from}");
            let o = &w.observed[&g("p-v1")];
            assert_eq!((o.restarts, o.last_error.as_deref()), (restarts + 1, Some("process 1 exited (signal 9)")));
            // The restart begins: still failed until all processes serve again.
            w.observe("p-v1", launched(2));
            w.observe("p-v1", Observation::Ready { process: 0, url: "http://a".into(), pid: None });
            assert_eq!(w.state("p-v1"), Failed);
            w.observe("p-v1", Observation::Ready { process: 1, url: "http://b".into(), pid: None });
            assert!(w.state("p-v1").serving(), "served again after dying in {from}");
        }
    }

    #[test]
    fn a_launch_that_fails_is_failed() {
        let mut w = World::with(Starting);
        w.observe("p-v1", Observation::Died { why: "cannot start squall: no such file".into() });
        assert_eq!(w.state("p-v1"), Failed);
    }

    #[test]
    fn nothing_observed_moves_a_stopped_deployment() {
        let mut w = World::with(Stopped);
        for o in [
            launched(2),
            Observation::Adopted { launch_ids: vec!["a".into(), "b".into()] },
            Observation::Ready { process: 0, url: "http://a".into(), pid: None },
            Observation::Ready { process: 1, url: "http://b".into(), pid: None },
            Observation::Progress { lag: Ok(lag(0)), events_per_sec: 1.0 },
            Observation::Died { why: "x".into() },
        ] {
            w.observe("p-v1", o);
            assert_eq!(w.state("p-v1"), Stopped);
        }
    }

    #[test]
    fn deploy_records_and_starts_a_new_version_only() {
        for state in DeploymentState::ALL {
            let w = World::with(state);
            let again = deploy(&w.facts(), deployment("p-v1", 1, 1));
            assert!(matches!(again, Err(Refusal::AlreadyDeployed(ref d)) if d.group_id == g("p-v1")), "{state}");
            let c = deploy(&w.facts(), deployment("p-v2", 2, 1)).unwrap();
            assert_eq!((c.start, c.stop), (Some(g("p-v2")), vec![]));
            assert_eq!(c.registry.deployments.len(), 2);
            assert_eq!(c.registry.promoted, w.registry.promoted, "deploying promotes nothing");
        }
        let w = World::with(Running);
        let mut itself = deployment("p-v2", 2, 1);
        itself.start_from = "group:p-v2".parse().unwrap();
        assert_eq!(deploy(&w.facts(), itself), Err(Refusal::StartsFromItself(g("p-v2"))));
    }

    #[test]
    fn promote_needs_a_serving_version() {
        for state in DeploymentState::ALL {
            let w = World::with(state);
            let got = promote(&w.facts(), &g("p-v1"), NOW);
            match state {
                Backfilling | CatchingUp | Running | Promoted => {
                    let c = got.unwrap_or_else(|e| panic!("promote in {state}: {e}"));
                    assert_eq!(c.registry.promoted("p"), Some(&g("p-v1")));
                    assert_eq!(c.registry.deployments[&g("p-v1")].promoted_at_ms, Some(NOW));
                    assert_eq!((c.start, c.stop), (None, vec![]));
                }
                Stopped => assert_eq!(got, Err(Refusal::Stopped(g("p-v1")))),
                Starting | Failed => {
                    assert_eq!(got, Err(Refusal::NotServing { group_id: g("p-v1"), state }));
                }
            }
        }
        let w = World::with(Running);
        assert_eq!(promote(&w.facts(), &g("nope-v1"), NOW), Err(Refusal::Unknown(g("nope-v1"))));
    }

    #[test]
    fn a_promoted_version_that_falls_behind_stays_promoted_but_catches_up() {
        let mut w = World::with(Promoted);
        w.observe("p-v1", Observation::Progress { lag: Ok(lag(THRESHOLD + 1)), events_per_sec: 0.0 });
        assert_eq!(w.state("p-v1"), CatchingUp);
        assert!(w.registry.is_promoted(&w.registry.deployments[&g("p-v1")]));
        w.observe("p-v1", Observation::Progress { lag: Ok(lag(0)), events_per_sec: 0.0 });
        assert_eq!(w.state("p-v1"), Promoted);
    }

    #[test]
    fn rollback_promotes_an_older_version_and_stops_the_newer_running_ones() {
        for state in DeploymentState::ALL {
            // p-v1 in `state`; p-v2 promoted and serving; p-v3 running; p-v4 already stopped.
            let mut w = World::with(state);
            for (group, v) in [("p-v2", 2), ("p-v3", 3), ("p-v4", 4)] {
                w.registry = deploy(&w.facts(), deployment(group, v, 1)).unwrap().registry;
                w.serve(group, 0);
            }
            if state != Promoted {
                w.registry = promote(&w.facts(), &g("p-v2"), NOW).unwrap().registry;
            }
            w.registry = stop(&w.facts(), &g("p-v4"), NOW).unwrap().registry;
            let got = rollback(&w.facts(), &g("p-v1"), NOW + 1);
            match state {
                Backfilling | CatchingUp | Running | Promoted => {
                    let c = got.unwrap_or_else(|e| panic!("rollback in {state}: {e}"));
                    assert_eq!(c.registry.promoted("p"), Some(&g("p-v1")));
                    assert_eq!(c.stop, vec![g("p-v2"), g("p-v3")], "newer running versions only");
                    for n in ["p-v2", "p-v3"] {
                        let d = &c.registry.deployments[&g(n)];
                        assert_eq!((d.desired, d.stopped_at_ms), (Desired::Stopped, Some(NOW + 1)));
                    }
                    assert_eq!(c.registry.deployments[&g("p-v4")].stopped_at_ms, Some(NOW), "untouched");
                }
                Stopped => assert_eq!(got, Err(Refusal::Stopped(g("p-v1")))),
                Starting | Failed => {
                    assert_eq!(got, Err(Refusal::NotServing { group_id: g("p-v1"), state }));
                }
            }
        }
        // Rolling back to the newest version stops nothing.
        let w = World::with(Running);
        assert_eq!(rollback(&w.facts(), &g("p-v1"), NOW).unwrap().stop, Vec::<GroupId>::new());
        assert_eq!(rollback(&w.facts(), &g("x-v9"), NOW), Err(Refusal::Unknown(g("x-v9"))));
    }

    #[test]
    fn stop_refuses_the_promoted_and_the_stopped() {
        for state in DeploymentState::ALL {
            let w = World::with(state);
            let got = stop(&w.facts(), &g("p-v1"), NOW);
            match state {
                Stopped => assert_eq!(got, Err(Refusal::AlreadyStopped(g("p-v1")))),
                Promoted => assert_eq!(got, Err(Refusal::IsPromoted { group_id: g("p-v1"), topology: "p".into() })),
                Starting | Backfilling | CatchingUp | Running | Failed => {
                    let c = got.unwrap_or_else(|e| panic!("stop in {state}: {e}"));
                    assert_eq!(c.stop, vec![g("p-v1")]);
                    let d = &c.registry.deployments[&g("p-v1")];
                    assert_eq!((d.desired, d.stopped_at_ms), (Desired::Stopped, Some(NOW)));
                    let after = Facts { registry: &c.registry, ..w.facts() };
                    assert_eq!(after.state(d), Stopped);
                }
            }
        }
        // The promoted version cannot be stopped even while it catches up.
        let mut w = World::with(Promoted);
        w.observe("p-v1", Observation::Progress { lag: Ok(lag(THRESHOLD + 1)), events_per_sec: 0.0 });
        assert!(matches!(stop(&w.facts(), &g("p-v1"), NOW), Err(Refusal::IsPromoted { .. })));
        assert_eq!(stop(&w.facts(), &g("q-v1"), NOW), Err(Refusal::Unknown(g("q-v1"))));
    }

    #[test]
    fn a_starting_server_adopts_a_whole_verified_run_and_replaces_anything_less() {
        let found =
            |v: &[(usize, bool)]| v.iter().map(|&(index, verified)| Found { index, verified }).collect::<Vec<_>>();
        let running = |n, f: &[(usize, bool)]| resume(Desired::Running, n, &found(f));
        assert_eq!(running(2, &[(0, true), (1, true)]), Resume::Adopt);
        assert_eq!(running(1, &[(0, true)]), Resume::Adopt);
        // Nothing found (no runtime file, or its pid is gone or belongs to another process now).
        assert_eq!(running(2, &[]), Resume::Replace { stop: vec![] });
        // One process of two died while no server watched: the other cannot go on alone.
        assert_eq!(running(2, &[(1, true)]), Resume::Replace { stop: vec![1] });
        // A process that did not answer with its launch id is not trusted, nor its run.
        assert_eq!(running(2, &[(0, true), (1, false)]), Resume::Replace { stop: vec![0, 1] });
        assert_eq!(running(1, &[(0, false)]), Resume::Replace { stop: vec![0] });
        // More processes than the deployment has are not its run.
        assert_eq!(running(1, &[(0, true), (1, true)]), Resume::Replace { stop: vec![0, 1] });
        // A stopped deployment's survivors are stopped, verified or not; nothing starts.
        assert_eq!(resume(Desired::Stopped, 2, &found(&[(0, true), (1, false)])), Resume::Stop { stop: vec![0, 1] });
        assert_eq!(resume(Desired::Stopped, 1, &[]), Resume::Stop { stop: vec![] });
    }

    #[test]
    fn an_adopted_run_serves_once_every_process_has_announced_itself() {
        let mut w = World::with(Starting);
        w.observe("p-v1", Observation::Adopted { launch_ids: vec!["a".into(), "b".into()] });
        let o = &w.observed[&g("p-v1")];
        assert!(o.adopted);
        assert_eq!(o.processes.iter().map(|p| p.launch_id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(w.state("p-v1"), Starting);
        w.observe("p-v1", Observation::Ready { process: 0, url: "http://a".into(), pid: None });
        w.observe("p-v1", Observation::Ready { process: 1, url: "http://b".into(), pid: None });
        assert_eq!(w.state("p-v1"), CatchingUp);
        assert_eq!(w.observed[&g("p-v1")].restarts, 0, "adopting is not a restart");
        // It dies later: failed, and the run that replaces it is this server's own.
        w.observe("p-v1", Observation::Died { why: "process 1 exited".into() });
        assert_eq!(w.state("p-v1"), Failed);
        w.observe("p-v1", launched(2));
        assert!(!w.observed[&g("p-v1")].adopted);
    }

    #[test]
    fn a_backfilled_version_is_backfilling_until_its_processes_say_otherwise() {
        let mut w = World::with(Starting);
        let v1 = w.registry.deployments.get_mut(&g("p-v1")).unwrap();
        v1.backfill = Some(crate::control::registry::BackfillFrom { archive: "/a".into(), since_ms: None });
        // Serving, with no reading of its processes yet: not catching up on Kafka before the archive.
        w.serve("p-v1", THRESHOLD + 1);
        assert_eq!(w.state("p-v1"), Backfilling);
        w.observe("p-v1", Observation::Backfilling(false));
        assert_eq!(w.state("p-v1"), CatchingUp);
        // A new run is read afresh.
        w.observe("p-v1", launched(2));
        w.serve("p-v1", THRESHOLD);
        assert_eq!(w.state("p-v1"), Backfilling);
    }

    #[test]
    fn states_have_their_api_names() {
        let names: Vec<String> =
            DeploymentState::ALL.iter().map(|s| serde_json::to_value(s).unwrap().as_str().unwrap().into()).collect();
        assert_eq!(names, ["starting", "backfilling", "catching-up", "running", "promoted", "stopped", "failed"]);
        for s in DeploymentState::ALL {
            assert_eq!(s.to_string(), s.as_str());
        }
    }
}
