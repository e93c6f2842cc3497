//! The monitor: once every `poll_every`, each deployment's counters (the sum of its processes'
//! `/v1/status`) and its Kafka lag (from the [`super::lag::LagSource`]). It records them as a
//! [`Observation::Progress`], in a 10-minute history and as `squall_consumer_lag` series.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::Instant;

use super::Control;
use super::registry::{Deployment, now_ms};
use super::state::Observation;
use super::views::Sample;
use crate::counters::RunStatus;
use crate::kafka::{Inputs, PartitionLag};
use crate::values::GroupId;

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
}

impl Progress {
    /// Takes a reading of the counters (`None`: the processes did not answer); the events
    /// applied per second since the last reading.
    fn read(&mut self, status: Option<RunStatus>, now: Instant) -> f64 {
        let Some(s) = status else {
            self.last_applied = None;
            return 0.0;
        };
        let rate = match self.last_applied {
            Some((at, applied)) if now > at => s.applied.saturating_sub(applied) as f64 / (now - at).as_secs_f64(),
            _ => 0.0,
        };
        self.last_applied = Some((now, s.applied));
        self.status = Some(s);
        rate
    }

    fn sample(&mut self, sample: Sample) {
        self.history.push_back(sample);
        while self.history.len() > HISTORY {
            self.history.pop_front();
        }
    }
}

/// Runs until the control plane is gone.
pub(super) async fn run(control: Weak<Control>, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The inputs of each deployment, read once from its stored topology file.
    let mut inputs: HashMap<GroupId, Inputs> = HashMap::new();
    loop {
        tick.tick().await;
        let Some(control) = control.upgrade() else { return };
        let routes = control.routes.load();
        inputs.retain(|g, _| routes.registry().deployments.contains_key(g));
        for d in routes.registry().deployments.values() {
            let status = match routes.serving(&d.group_id) {
                Some(urls) => child_status(&control.http, urls).await,
                None => None,
            };
            let lag = match inputs.entry(d.group_id.clone()) {
                Entry::Occupied(o) => Ok(o.get().clone()),
                Entry::Vacant(v) => control.stored_inputs(d).map(|i| v.insert(i).clone()),
            };
            let lag = match lag {
                Ok(i) => read_lag(&control, &d.group_id, i).await,
                Err(e) => Err(e),
            };
            record(&control, d, lag, status);
        }
    }
}

async fn read_lag(control: &Control, group: &GroupId, inputs: Inputs) -> Result<Vec<PartitionLag>, String> {
    let (source, group) = (Arc::clone(&control.lag), group.clone());
    tokio::task::spawn_blocking(move || source.lag(&group, &inputs).map_err(|e| e.to_string()))
        .await
        .unwrap_or_else(|e| Err(e.to_string()))
}

/// Sums the `/v1/status` of a deployment's processes; `None` if any does not answer.
async fn child_status(http: &reqwest::Client, urls: &[String]) -> Option<RunStatus> {
    let mut each = Vec::with_capacity(urls.len());
    for url in urls {
        each.push(http.get(format!("{url}/v1/status")).send().await.ok()?.json::<RunStatus>().await.ok()?);
    }
    Some(RunStatus::total(&each))
}

fn record(control: &Control, d: &Deployment, lag: Result<Vec<PartitionLag>, String>, status: Option<RunStatus>) {
    if let Ok(lag) = &lag {
        for p in lag {
            metrics::gauge!("squall_consumer_lag", "topology" => d.topology.clone(), "version" => d.version.to_string(), "group_id" => d.group_id.to_string(), "topic" => p.topic.clone(), "partition" => p.partition.to_string()).set(p.lag as f64);
        }
    }
    let mut book = control.book();
    let events_per_sec = book.progress.entry(d.group_id.clone()).or_default().read(status, Instant::now());
    let observed = book.observed.entry(d.group_id.clone()).or_default();
    observed.apply(Observation::Progress { lag, events_per_sec });
    let sample = Sample { at_ms: now_ms(), lag: observed.total_lag(), events_per_sec };
    book.progress.entry(d.group_id.clone()).or_default().sample(sample);
}
