//! The monitor, two loops. Every `poll_every`, [`heartbeats`] asks each process of every
//! deployment for its `/v1/status`, naming its launch id, which renews the process's lease
//! (`squall run --adopt-timeout`), and keeps the counters (summed over the processes); [`run`]
//! reads each deployment's Kafka lag (from the [`super::lag::LagSource`]) and records it with the
//! throughput as an [`Observation::Progress`], in a 10-minute history and as `squall_consumer_lag`
//! series. A broker that does not answer stalls the lag readings only, never the heartbeats.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::archives::ArchiveDeployment;
use super::registry::Deployment;
use super::state::{Observation, ProcessSlot};
use super::{Control, counters};
use crate::kafka::{Inputs, PartitionLag};
use crate::values::GroupId;
use crate::version::counters::RunStatus;
use squall_feeds::now_ms;

/// One second of a deployment's history.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Sample {
    /// Unix milliseconds.
    pub at_ms: u64,
    /// Total lag, when known.
    pub lag: Option<i64>,
    /// Events applied per second.
    pub events_per_sec: f64,
}

/// Samples kept per deployment: 10 minutes at one a second.
const HISTORY: usize = 600;

/// What the monitor read of one deployment, besides what the state machine observes.
#[derive(Debug, Default)]
pub struct Progress {
    /// The counters of its processes (the last reading that succeeded).
    pub status: Option<RunStatus>,
    /// Recent samples, oldest first.
    pub history: VecDeque<Sample>,
    /// When the last counters were read, and the events applied then.
    last_applied: Option<(Instant, u64)>,
    /// Events applied per second between the last two readings.
    events_per_sec: f64,
}

impl Progress {
    /// Takes a reading of the counters (`None`: the processes did not answer), and from it the
    /// events applied per second since the last reading that had them. A reading missed (a
    /// heartbeat that timed out under load) keeps that baseline, so the events applied meanwhile
    /// still show in the next rate instead of vanishing from the history.
    fn read(&mut self, status: Option<RunStatus>, now: Instant) {
        let Some(s) = status else {
            self.events_per_sec = 0.0;
            return;
        };
        self.events_per_sec = match self.last_applied {
            Some((at, applied)) if now > at => s.applied.saturating_sub(applied) as f64 / (now - at).as_secs_f64(),
            _ => 0.0,
        };
        self.last_applied = Some((now, s.applied));
        self.status = Some(s);
    }

    fn sample(&mut self, sample: Sample) {
        self.history.push_back(sample);
        while self.history.len() > HISTORY {
            self.history.pop_front();
        }
    }
}

/// Keeps each running candidate's diff against its topology's promoted version, every `every`,
/// until the control plane is gone (apart from the lag loop: starting a diff asks the broker).
pub(super) async fn diffs(control: Weak<Control>, every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(control) = control.upgrade() else { return };
        control.keep_diffs().await;
    }
}

/// How long a process has to answer a heartbeat.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);

/// Renews the lease of every process of every deployment and reads its counters, every `every`,
/// until the control plane is gone.
pub(super) async fn heartbeats(control: Weak<Control>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(control) = control.upgrade() else { return };
        // Each deployment's processes: launch ids, and addresses of those that serve.
        let targets: Vec<(GroupId, Vec<ProcessSlot>)> = control
            .book()
            .observed
            .iter()
            .filter(|(_, o)| !o.processes.is_empty())
            .map(|(g, o)| (g.clone(), o.processes.clone()))
            .collect();
        let http = &control.http;
        let readings = futures::future::join_all(targets.into_iter().map(|(g, slots)| async move {
            let each = futures::future::join_all(
                slots.iter().map(|slot| async move { heartbeat(http, slot.url.as_ref()?, &slot.launch_id).await }),
            )
            .await;
            // Counters only when every process answered (a partial sum would look like a drop).
            let all: Option<Vec<RunStatus>> = each.into_iter().collect();
            (g, all.map(|s| RunStatus::total(&s)))
        }))
        .await;
        standby_heartbeats(&control).await;
        let now = Instant::now();
        let mut book = control.book();
        for (g, status) in readings {
            // Until every process has said it is past the archive, the version is backfilling.
            if let (Some(s), Some(o)) = (&status, book.observed.get_mut(&g)) {
                o.apply(Observation::Backfilling(s.backfill.as_ref().is_some_and(|b| b.under_way())));
            }
            book.progress.entry(g).or_default().read(status, now);
        }
    }
}

/// Renews the lease of every standby and reads its cut and lag.
async fn standby_heartbeats(control: &Control) {
    let targets: Vec<(super::standbys::Key, ProcessSlot)> = control
        .book()
        .standbys
        .iter()
        .filter_map(|(k, w)| w.observed.processes.first().map(|slot| (k.clone(), slot.clone())))
        .collect();
    let http = &control.http;
    let readings = futures::future::join_all(targets.into_iter().map(|(key, slot)| async move {
        let status = match &slot.url {
            Some(url) => heartbeat(http, url, &slot.launch_id).await,
            None => None,
        };
        (key, status)
    }))
    .await;
    control.standby_readings(readings);
}

/// Asks the process at `url` for its status, naming its launch id (which renews its lease); the
/// status, if the process answered as the one launched with that id.
async fn heartbeat(http: &reqwest::Client, url: &str, launch_id: &str) -> Option<RunStatus> {
    let resp = http
        .get(format!("{url}/v1/status"))
        .query(&[("launch_id", launch_id)])
        .timeout(HEARTBEAT_TIMEOUT)
        .send()
        .await
        .ok()?;
    let status: RunStatus = resp.json().await.ok()?;
    (status.launch_id.as_deref() == Some(launch_id)).then_some(status)
}

/// Reads every deployment's lag, every `every`, until the control plane is gone.
pub(super) async fn run(control: Weak<Control>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The inputs of each deployment, read once from its stored topology file.
    let mut inputs: HashMap<GroupId, Inputs> = HashMap::new();
    loop {
        tick.tick().await;
        let Some(control) = control.upgrade() else { return };
        let routes = control.routes.load();
        inputs.retain(|g, _| routes.registry().deployments.contains_key(g));
        let mut reads = Vec::new();
        for d in routes.registry().deployments.values() {
            let found = match inputs.entry(d.group_id.clone()) {
                Entry::Occupied(o) => Ok(o.get().clone()),
                Entry::Vacant(v) => control.stored_inputs(d).map(|i| v.insert(i).clone()).map_err(|e| e.to_string()),
            };
            let control = &control;
            reads.push(async move {
                let lag = match found {
                    Ok(i) => read_lag(control, &d.group_id, i).await,
                    Err(e) => Err(e),
                };
                (d, lag)
            });
        }
        for (d, lag) in futures::future::join_all(reads).await {
            record(&control, d, lag);
        }
        archivers(&control).await;
    }
}

/// Reads each archiver's progress: its group's lag (it commits only what is stored) and the
/// data files its archive's manifest lists.
async fn archivers(control: &Control) {
    let routes = control.routes.load();
    let reads = routes.registry().archives.values().map(|a| async move {
        let lag = read_lag(control, &a.group_id, control.archive_inputs(a)).await;
        (a.group_id.clone(), lag, archived_files(a).await)
    });
    for (g, lag, files) in futures::future::join_all(reads).await {
        // Not for an archiver stopped meanwhile.
        if !control.routes.load().registry().archives.contains_key(&g) {
            continue;
        }
        let mut book = control.book();
        book.observed.entry(g.clone()).or_default().apply(Observation::Progress { lag, events_per_sec: 0.0 });
        book.archive_files.insert(g, files);
    }
}

/// The data files of `a`'s topics in its archive's manifest.
async fn archived_files(a: &ArchiveDeployment) -> Result<u64, String> {
    let archive = squall_archive::Archive::open(&a.url).map_err(|e| e.to_string())?;
    let mut files = 0;
    for t in a.topics.iter().filter_map(|t| t.parse::<squall_archive::TopicSpec>().ok()) {
        let listed = archive.list_topic(&t.name).await.map_err(|e| e.to_string())?;
        files += listed.values().map(|f| f.len() as u64).sum::<u64>();
    }
    Ok(files)
}

async fn read_lag(control: &Control, group: &GroupId, inputs: Inputs) -> Result<Vec<PartitionLag>, String> {
    let (source, group) = (Arc::clone(&control.lag), group.clone());
    tokio::task::spawn_blocking(move || source.lag(&group, &inputs).map_err(|e| e.to_string()))
        .await
        .unwrap_or_else(|e| Err(e.to_string()))
}

fn record(control: &Control, d: &Deployment, lag: Result<Vec<PartitionLag>, String>) {
    if let Ok(lag) = &lag {
        for p in lag {
            counters::consumer_lag(d, p);
        }
    }
    let mut book = control.book();
    let events_per_sec = book.progress.entry(d.group_id.clone()).or_default().events_per_sec;
    let observed = book.observed.entry(d.group_id.clone()).or_default();
    observed.apply(Observation::Progress { lag, events_per_sec });
    let sample = Sample { at_ms: now_ms() as u64, lag: observed.total_lag(), events_per_sec };
    book.progress.entry(d.group_id.clone()).or_default().sample(sample);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missed_reading_keeps_the_baseline_of_the_rate() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let applied = |n: u64| Some(RunStatus { applied: n, ..Default::default() });
        let mut p = Progress::default();
        p.read(applied(100), at(0));
        assert_eq!(p.events_per_sec, 0.0, "no rate from a first reading");
        p.read(None, at(1));
        assert_eq!(p.events_per_sec, 0.0, "no rate from a missed reading");
        p.read(applied(400), at(3));
        assert_eq!(p.events_per_sec, 100.0, "300 events over the 3 s since the last reading that had them");
        p.read(applied(400), at(4));
        assert_eq!(p.events_per_sec, 0.0);
    }
}
