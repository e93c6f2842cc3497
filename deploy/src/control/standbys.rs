//! The standby replicas of versions deployed with `standbys` (`squall standby` processes, see
//! `version/standby.rs`): what the server runs for them, what it observes of each, which may
//! answer queries, and how the API shows them. They run through the same launcher and supervisor
//! as a version's processes, one supervisor per standby, so that a standby that dies is restarted
//! alone while its active keeps answering, and an active that dies is answered for by its standby.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::launcher::{LaunchSpec, StandbyOf};
use super::registry::Deployment;
use super::state::{Observation, Observed};
use crate::values::GroupId;
use crate::version::standby::StandbyStatus;

/// One standby: its version and which standby of which process it is.
pub(super) type Key = (GroupId, StandbyOf);

/// What is observed of one standby.
#[derive(Debug, Default)]
pub(super) struct Watched {
    /// Its process (one slot), restarts and last error, as for a version.
    pub(super) observed: Observed,
    /// Its last `/v1/status` reading since it was (re)started.
    pub(super) status: Option<StandbyStatus>,
    /// The users it held then.
    pub(super) users: Option<u64>,
    /// `runtime.standby_max_lag` of its version.
    pub(super) max_lag: u64,
    /// The address it served at when it took over as its version's process: still routed to
    /// as a standby until the version's supervisor, which adopts it, reports the version serving
    /// (else queries would have nowhere to go in between).
    pub(super) handed_over: Option<String>,
}

impl Watched {
    /// Applies `o`. A takeover keeps the address it served at as [`Watched::handed_over`], unless
    /// the version serves already (`version_serves`: the version's supervisor adopted it first).
    pub(super) fn apply(&mut self, o: Observation, version_serves: bool) {
        if matches!(o, Observation::TookOver { .. }) && !version_serves {
            self.handed_over = self.url().map(str::to_owned);
        }
        if matches!(
            o,
            Observation::Launched { .. }
                | Observation::Adopted { .. }
                | Observation::Died { .. }
                | Observation::TookOver { .. }
        ) {
            self.status = None;
        }
        self.observed.apply(o);
    }

    /// Its address, when it serves.
    fn url(&self) -> Option<&str> {
        self.observed.processes.first().and_then(|p| p.url.as_deref())
    }

    /// Whether it may answer queries: it serves, and its last reading is within `max_lag` cuts of
    /// a changelog that has written a cut.
    pub(super) fn answers(&self) -> bool {
        self.url().is_some()
            && self.status.as_ref().is_some_and(|s| s.written_cut.is_some() && s.lag_cuts <= self.max_lag)
    }
}

/// What the launcher runs for each standby of `d`, from `version`, the launch of its processes.
pub(super) fn specs(d: &Deployment, version: &LaunchSpec) -> Vec<(StandbyOf, LaunchSpec)> {
    let mut out = Vec::new();
    for process in 0..d.processes {
        for replica in 0..d.standbys {
            let of = StandbyOf { process, replica, processes: d.processes };
            out.push((
                of,
                LaunchSpec { processes: 1, standby: Some(of), standbys: 0, backfill: None, ..version.clone() },
            ));
        }
    }
    out
}

/// The standbys of `g` that may answer, per process of its `processes`.
pub(super) fn answering(g: &GroupId, processes: usize, all: &HashMap<Key, Watched>) -> Vec<Vec<String>> {
    let mut out = vec![Vec::new(); processes];
    let mut mine: Vec<(&StandbyOf, &Watched)> =
        all.iter().filter(|((k, _), _)| k == g).map(|((_, s), w)| (s, w)).collect();
    mine.sort_by_key(|(s, _)| **s);
    for (s, w) in mine {
        let Some(slot) = out.get_mut(s.process) else { continue };
        if let (true, Some(url)) = (w.answers(), w.url()) {
            slot.push(url.to_owned());
        } else if let Some(url) = &w.handed_over {
            slot.push(url.clone());
        }
    }
    out
}

/// A standby as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StandbyView {
    /// The process of the version whose users it holds.
    pub process: usize,
    /// Which of that process's standbys.
    pub replica: usize,
    /// Its HTTP address, once it serves.
    pub url: Option<String>,
    /// Whether it may answer queries now (serving, within `runtime.standby_max_lag` cuts).
    pub answers: bool,
    /// The cut it answers at (last reading).
    pub cut: Option<u64>,
    /// Cuts it is behind the changelog (last reading).
    pub lag_cuts: Option<u64>,
    /// Users it holds (last reading).
    pub users: Option<u64>,
    /// Times it died and was restarted.
    pub restarts: u32,
    /// Why it last died, or why its last sync failed.
    pub last_error: Option<String>,
}

/// The standbys of `g`, in process and replica order.
pub(super) fn views(g: &GroupId, all: &HashMap<Key, Watched>) -> Vec<StandbyView> {
    let mut out: Vec<StandbyView> = all
        .iter()
        .filter(|((k, _), _)| k == g)
        .map(|(key, w)| StandbyView {
            process: key.1.process,
            replica: key.1.replica,
            url: w.url().map(str::to_owned),
            answers: w.answers(),
            cut: w.status.as_ref().map(|s| s.cut),
            lag_cuts: w.status.as_ref().map(|s| s.lag_cuts),
            users: w.users,
            restarts: w.observed.restarts,
            last_error: w.status.as_ref().and_then(|s| s.error.clone()).or_else(|| w.observed.last_error.clone()),
        })
        .collect();
    out.sort_by_key(|v| (v.process, v.replica));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watched(url: Option<&str>, lag: Option<u64>) -> Watched {
        let mut w = Watched { max_lag: 3, ..Watched::default() };
        w.observed.apply(Observation::Launched { launch_ids: vec!["id".into()] });
        if let Some(u) = url {
            w.observed.apply(Observation::Ready { process: 0, url: u.into(), pid: None });
        }
        w.status = lag.map(|l| StandbyStatus { written_cut: Some(10), lag_cuts: l, ..StandbyStatus::default() });
        w
    }

    #[test]
    fn only_a_serving_standby_within_its_lag_answers() {
        let g: GroupId = "p-v1".parse().unwrap();
        let of = |process, replica| StandbyOf { process, replica, processes: 2 };
        let mut all = HashMap::new();
        all.insert((g.clone(), of(0, 0)), watched(Some("http://a"), Some(3)));
        all.insert((g.clone(), of(0, 1)), watched(Some("http://b"), Some(4)));
        all.insert((g.clone(), of(1, 0)), watched(None, None));
        all.insert(("q-v1".parse().unwrap(), of(1, 0)), watched(Some("http://q"), Some(0)));
        assert_eq!(answering(&g, 2, &all), vec![vec!["http://a".to_owned()], vec![]]);
        let v = views(&g, &all);
        assert_eq!(
            v.iter().map(|v| (v.process, v.replica, v.answers)).collect::<Vec<_>>(),
            [(0, 0, true), (0, 1, false), (1, 0, false)]
        );
    }

    #[test]
    fn a_standby_that_took_over_is_routed_to_until_the_version_serves() {
        let g: GroupId = "p-v1".parse().unwrap();
        let of = StandbyOf { process: 0, replica: 0, processes: 1 };
        let mut all = HashMap::new();
        all.insert((g.clone(), of), watched(Some("http://a"), Some(0)));
        let w = all.get_mut(&(g.clone(), of)).unwrap();
        w.apply(Observation::TookOver { why: "took over".into() }, false);
        assert!(!w.answers(), "it is no longer a standby");
        // A fresh standby is launched at once; it does not serve yet.
        w.observed.apply(Observation::Launched { launch_ids: vec!["id2".into()] });
        assert_eq!(answering(&g, 1, &all), vec![vec!["http://a".to_owned()]]);
        all.get_mut(&(g.clone(), of)).unwrap().handed_over = None;
        assert_eq!(answering(&g, 1, &all), vec![Vec::<String>::new()]);
        // Adopted and serving before its standby's watcher noticed: nothing to keep.
        let mut w = watched(Some("http://a"), Some(0));
        w.apply(Observation::TookOver { why: "took over".into() }, true);
        assert_eq!(w.handed_over, None);
    }
}
