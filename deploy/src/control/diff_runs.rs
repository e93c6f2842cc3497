//! Diffs between versions, held by the control plane: `GET /v1/diff`, the gate of
//! `promote --require-agreement`, and the status page's diff of each running candidate against
//! its topology's promoted version. Each pair of versions has at most one running
//! [`DiffSession`] (it reads both changelog topics from the start and keeps reading); a session
//! nobody asked for within [`IDLE`] and that the status page does not need is stopped.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::changelog_diff::{DiffReport, DiffSession, NotComparable};
use crate::values::{GroupId, InvalidGroupId};

/// A session not asked for in this long is stopped (unless the status page keeps it).
pub const IDLE: Duration = Duration::from_secs(600);
/// Compared users a gated promotion needs by default.
pub const MIN_COMPARED: u64 = 100;
/// How long a gated promotion waits for the diff to catch up with both changelogs by default.
pub const GATE_WAIT: Duration = Duration::from_secs(30);

/// A pair of versions: `(a, b)`.
pub type Pair = (GroupId, GroupId);

struct Entry {
    session: Arc<DiffSession>,
    used: Instant,
}

/// The running diff sessions.
#[derive(Default)]
pub struct Diffs {
    sessions: Mutex<HashMap<Pair, Entry>>,
}

impl Diffs {
    fn lock(&self) -> MutexGuard<'_, HashMap<Pair, Entry>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session of `pair`, if one runs; marks it used.
    pub fn get(&self, pair: &Pair) -> Option<Arc<DiffSession>> {
        let mut s = self.lock();
        let e = s.get_mut(pair)?;
        e.used = Instant::now();
        Some(Arc::clone(&e.session))
    }

    /// Keeps `session` for `pair`; if another was started meanwhile, that one is kept and returned.
    pub fn insert(&self, pair: Pair, session: DiffSession) -> Arc<DiffSession> {
        let mut s = self.lock();
        let e = s.entry(pair).or_insert_with(|| Entry { session: Arc::new(session), used: Instant::now() });
        e.used = Instant::now();
        Arc::clone(&e.session)
    }

    /// Whether `pair` has a session.
    pub fn has(&self, pair: &Pair) -> bool {
        self.lock().contains_key(pair)
    }

    /// The current report of `pair`, without marking it used.
    pub fn report(&self, pair: &Pair) -> Option<DiffReport> {
        self.lock().get(pair).map(|e| e.session.report())
    }

    /// Stops the sessions idle for [`IDLE`] that are not in `keep`, and those whose versions are
    /// gone; the stopped ones are dropped outside the lock (dropping joins their thread).
    pub fn sweep(&self, keep: &HashSet<Pair>, deployed: impl Fn(&GroupId) -> bool) {
        let stopped: Vec<Entry> = {
            let mut s = self.lock();
            let gone: Vec<Pair> = s
                .iter()
                .filter(|(p, e)| !(deployed(&p.0) && deployed(&p.1)) || (!keep.contains(*p) && e.used.elapsed() > IDLE))
                .map(|(p, _)| p.clone())
                .collect();
            gone.iter().filter_map(|p| s.remove(p)).collect()
        };
        drop(stopped);
    }
}

/// `POST /v1/deployments/{group_id}/promote`: optional; without `require_agreement` the
/// promotion is not gated.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromoteRequest {
    /// Refuse unless at least this percentage (0-100) of the compared users agree on every
    /// attribute both versions answer.
    #[schema(minimum = 0, maximum = 100)]
    pub require_agreement: Option<f64>,
    /// The version (group id) to compare with, usually the promoted one. Required with
    /// `require_agreement`.
    #[schema(value_type = Option<GroupId>)]
    pub against: Option<String>,
    /// Refuse unless at least this many users were compared (default 100).
    pub min_compared: Option<u64>,
    /// How long to wait for the diff to catch up with both changelogs, in milliseconds (default
    /// 30000, at most 600000).
    #[schema(maximum = 600_000)]
    pub wait_ms: Option<u64>,
}

/// What is wrong with a promotion's gate.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidGate {
    /// `against` or `min_compared` without `require_agreement`.
    #[error("against and min_compared apply only with require_agreement")]
    WithoutBar,
    /// A bar outside 0..=100.
    #[error("require_agreement = {0}: use a percentage from 0 to 100")]
    Percent(f64),
    /// A bar without the version to compare with.
    #[error("require_agreement needs against: the group id to compare with (e.g. the promoted version)")]
    NoAgainst,
    /// `against` is not a group id.
    #[error("against: {0}")]
    Against(InvalidGroupId),
    /// `against` is the version promoted.
    #[error("against = {0}: compare with another version than the one promoted")]
    AgainstItself(GroupId),
    /// A wait over 10 minutes.
    #[error("wait_ms: at most 600000 (10 minutes)")]
    Wait,
}

/// Why a diff does not clear a promotion's gate.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GateRefusal {
    /// The diff had not read both changelogs to their ends within the wait.
    #[error("the diff did not catch up with both changelogs within {0:?}; try again, or pass a longer wait")]
    NotCaughtUp(Duration),
    /// Fewer users compared than the gate needs.
    #[error(
        "only {compared} users compared, {needed} needed (users not comparable yet: {} behind in {b}, {} behind in \
         {a}, {} with other events, {} only in {a}, {} only in {b})",
        .not_comparable.a_ahead, .not_comparable.b_ahead, .not_comparable.other_events, .not_comparable.only_in_a,
        .not_comparable.only_in_b
    )]
    TooFew {
        /// Users compared.
        compared: u64,
        /// Users the gate needs.
        needed: u64,
        /// The users not comparable yet, by why.
        not_comparable: NotComparable,
        /// Version `a` of the diff.
        a: String,
        /// Version `b` of the diff.
        b: String,
    },
    /// Agreement below the bar.
    #[error(
        "{percent:.2}% of {compared} compared users agree with {a}, below the {required}% required; differing \
         attributes (users): {}",
        .differing.join(", ")
    )]
    Disagree {
        /// The agreement, in percent.
        percent: f64,
        /// Users compared.
        compared: u64,
        /// The version compared with.
        a: String,
        /// The bar, in percent.
        required: f64,
        /// Each differing attribute, `name (users)`.
        differing: Vec<String>,
    },
}

/// A checked gate.
#[derive(Clone, Debug, PartialEq)]
pub struct Gate {
    /// The version compared with.
    pub against: GroupId,
    /// The bar, in percent.
    pub percent: f64,
    /// Compared users needed.
    pub min_compared: u64,
    /// How long to wait for the diff to catch up.
    pub wait: Duration,
}

impl PromoteRequest {
    /// The gate it asks for, if any, or what is wrong with it.
    pub fn gate(&self, promoting: &GroupId) -> Result<Option<Gate>, InvalidGate> {
        let Some(percent) = self.require_agreement else {
            if self.against.is_some() || self.min_compared.is_some() {
                return Err(InvalidGate::WithoutBar);
            }
            return Ok(None);
        };
        if !(0.0..=100.0).contains(&percent) {
            return Err(InvalidGate::Percent(percent));
        }
        let against: GroupId =
            self.against.as_deref().ok_or(InvalidGate::NoAgainst)?.parse().map_err(InvalidGate::Against)?;
        if &against == promoting {
            return Err(InvalidGate::AgainstItself(against));
        }
        let wait = Duration::from_millis(self.wait_ms.unwrap_or(GATE_WAIT.as_millis() as u64));
        if wait > Duration::from_secs(600) {
            return Err(InvalidGate::Wait);
        }
        Ok(Some(Gate { against, percent, min_compared: self.min_compared.unwrap_or(MIN_COMPARED), wait }))
    }
}

impl Gate {
    /// Whether `report` (of `against` and the version promoted) clears the gate; if not, why.
    pub fn check(&self, report: &DiffReport) -> Result<(), GateRefusal> {
        if !report.caught_up {
            return Err(GateRefusal::NotCaughtUp(self.wait));
        }
        if report.users_compared < self.min_compared {
            return Err(GateRefusal::TooFew {
                compared: report.users_compared,
                needed: self.min_compared,
                not_comparable: report.not_comparable.clone(),
                a: report.a.clone(),
                b: report.b.clone(),
            });
        }
        let percent = report.agreement_percent.unwrap_or(0.0);
        if percent < self.percent {
            let differing = report
                .attributes
                .iter()
                .filter(|a| a.differ > 0)
                .map(|a| format!("{} ({})", a.name, a.differ))
                .collect();
            return Err(GateRefusal::Disagree {
                percent,
                compared: report.users_compared,
                a: report.a.clone(),
                required: self.percent,
                differing,
            });
        }
        Ok(())
    }
}

/// What the status page shows of a candidate's diff against the promoted version.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DiffSummary {
    /// The promoted version it is compared with.
    pub against: String,
    /// Whether the diff had read both changelogs to their ends when last checked.
    pub caught_up: bool,
    /// Users compared.
    pub users_compared: u64,
    /// Compared users agreeing on every shared attribute.
    pub users_agreeing: u64,
    /// `users_agreeing / users_compared` in percent.
    pub agreement_percent: Option<f64>,
    /// Shared attributes on which some compared user differs.
    pub differing_attributes: Vec<String>,
}

impl DiffSummary {
    /// The summary of `report` (whose `a` is the promoted version).
    pub fn of(report: &DiffReport) -> DiffSummary {
        DiffSummary {
            against: report.a.clone(),
            caught_up: report.caught_up,
            users_compared: report.users_compared,
            users_agreeing: report.users_agreeing,
            agreement_percent: report.agreement_percent,
            differing_attributes: report.attributes.iter().filter(|a| a.differ > 0).map(|a| a.name.clone()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changelog_diff::AttributeAgreement;

    fn g(s: &str) -> GroupId {
        s.parse().expect("group id")
    }

    fn report(compared: u64, agreeing: u64, caught_up: bool) -> DiffReport {
        DiffReport {
            a: "p-v1".into(),
            b: "p-v2".into(),
            caught_up,
            users_compared: compared,
            users_agreeing: agreeing,
            agreement_percent: (compared > 0).then(|| 100.0 * agreeing as f64 / compared as f64),
            attributes: vec![
                AttributeAgreement { name: "plays".into(), agree: compared, differ: 0 },
                AttributeAgreement { name: "skips".into(), agree: agreeing, differ: compared - agreeing },
            ],
            ..DiffReport::default()
        }
    }

    #[test]
    fn requests_are_checked() {
        let me = g("p-v2");
        assert_eq!(PromoteRequest::default().gate(&me), Ok(None));
        let r = |p: f64, against: Option<&str>| PromoteRequest {
            require_agreement: Some(p),
            against: against.map(str::to_owned),
            ..PromoteRequest::default()
        };
        assert!(r(101.0, Some("p-v1")).gate(&me).unwrap_err().to_string().contains("0 to 100"));
        assert!(r(99.0, None).gate(&me).unwrap_err().to_string().contains("needs against"));
        assert!(r(99.0, Some("p-v2")).gate(&me).unwrap_err().to_string().contains("another version"));
        let only_against = PromoteRequest { against: Some("p-v1".into()), ..PromoteRequest::default() };
        assert!(only_against.gate(&me).unwrap_err().to_string().contains("only with require_agreement"));
        let gate = r(99.5, Some("p-v1")).gate(&me).expect("valid").expect("a gate");
        assert_eq!(
            (gate.against, gate.percent, gate.min_compared, gate.wait),
            (g("p-v1"), 99.5, MIN_COMPARED, GATE_WAIT)
        );
    }

    #[test]
    fn the_gate_needs_a_caught_up_diff_enough_users_and_the_bar() {
        let gate = Gate { against: g("p-v1"), percent: 99.0, min_compared: 100, wait: GATE_WAIT };
        assert_eq!(gate.check(&report(200, 200, true)), Ok(()));
        assert_eq!(gate.check(&report(200, 198, true)), Ok(()), "99% is the bar itself");
        let below = gate.check(&report(200, 150, true)).unwrap_err().to_string();
        assert!(below.contains("75.00% of 200") && below.contains("skips (50)") && !below.contains("plays"), "{below}");
        assert!(
            gate.check(&report(99, 99, true)).unwrap_err().to_string().contains("only 99 users compared, 100 needed")
        );
        assert!(gate.check(&report(200, 200, false)).unwrap_err().to_string().contains("did not catch up"));
        assert!(gate.check(&report(0, 0, true)).is_err(), "nothing compared never passes a bar above 0 users");
    }
}
