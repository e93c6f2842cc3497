//! `a.compare_with(b)`: an exact, continuously maintained comparison of two versions' latest
//! attributes per user, in differential dataflow: each side is a collection of `(user, record)`
//! that changes as users change (the old record retracted, the new one added), the two are joined
//! on the user, and every count of the report is maintained incrementally, consistent at every
//! timestamp.
//!
//! # Notes
//! - **No false alarms.** A user is compared only when both sides applied exactly the same events
//!   for them: the same [`crate::Evidence`] (count and order-independent hash of the event keys).
//!   A user whose sides differ in evidence is *not comparable yet*: one side is ahead (more events)
//!   or they saw different events (same count, different hash: e.g. different dedup horizons).
//! - **Agreement.** An attribute agrees when its values are equal, floats within the relative
//!   tolerance given (sums of floats taken in different orders differ in the last bits).
//! - A user agrees when every attribute present in both sides agrees; attributes present in only
//!   one side are reported by name and do not count against agreement.

use std::collections::BTreeMap;

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};

use crate::attributes::Value;
use crate::plan::Evidence;

/// One side's latest record of a user: what it applied and its attributes (name, JSON value).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Record {
    /// What the side applied for the user.
    pub evidence: Evidence,
    /// Attribute name and value as JSON text, in answer order.
    pub attributes: Vec<(String, String)>,
}

/// Why a user in both sides is not compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pending {
    /// Side `a` applied more of the user's events than `b` (b is behind).
    AAhead,
    /// Side `b` applied more of the user's events than `a`.
    BAhead,
    /// Both applied as many events, but not the same ones.
    OtherEvents,
    /// Only side `a` has the user yet.
    OnlyA,
    /// Only side `b` has the user yet.
    OnlyB,
}

/// One attribute of one user on which the sides differ.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Difference {
    /// The user.
    pub user: String,
    /// The attribute.
    pub attribute: String,
    /// Side `a`'s value (JSON).
    pub a: String,
    /// Side `b`'s value (JSON).
    pub b: String,
}

/// The comparison's outputs, as collections whose accumulated contents are the report.
pub struct Comparison<'scope, T: timely::progress::Timestamp + differential_dataflow::lattice::Lattice> {
    /// `((attribute, agrees), users)` over the comparable users.
    pub per_attribute: VecCollection<'scope, T, ((String, bool), isize), isize>,
    /// `(agrees, users)`: comparable users whose every shared attribute agrees, or not.
    pub users: VecCollection<'scope, T, (bool, isize), isize>,
    /// `(why, users)` not compared yet.
    pub pending: VecCollection<'scope, T, (Pending, isize), isize>,
    /// Up to `sample` differences of the smallest user ids.
    pub sample: VecCollection<'scope, T, ((), Vec<Difference>), isize>,
}

/// Whether two attribute values (JSON text) agree within `tolerance`.
pub fn agree(a: &str, b: &str, tolerance: f64) -> bool {
    if a == b {
        return true;
    }
    match (serde_json::from_str::<Value>(a), serde_json::from_str::<Value>(b)) {
        (Ok(x), Ok(y)) => x.agrees(&y, tolerance),
        _ => false,
    }
}

/// The attributes present in both records, with whether they agree.
fn shared<'r>(a: &'r Record, b: &'r Record, tolerance: f64) -> impl Iterator<Item = (&'r str, &'r str, &'r str, bool)> {
    let b: BTreeMap<&str, &str> = b.attributes.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    a.attributes.iter().filter_map(move |(n, va)| {
        let vb = *b.get(n.as_str())?;
        Some((n.as_str(), va.as_str(), vb, agree(va, vb, tolerance)))
    })
}

/// Compares two versions' collections of `(user, latest record)`.
pub trait CompareWith<'scope, T: timely::progress::Timestamp + differential_dataflow::lattice::Lattice> {
    /// Joins the sides on the user and maintains the report's counts; `tolerance` is the relative
    /// tolerance of float attributes; `sample` how many differences to keep.
    fn compare_with(
        self,
        b: VecCollection<'scope, T, (String, Record), isize>,
        tolerance: f64,
        sample: usize,
    ) -> Comparison<'scope, T>;
}

impl<'scope, T> CompareWith<'scope, T> for VecCollection<'scope, T, (String, Record), isize>
where
    T: timely::progress::Timestamp + differential_dataflow::lattice::Lattice + Ord,
{
    fn compare_with(
        self,
        b: VecCollection<'scope, T, (String, Record), isize>,
        tolerance: f64,
        sample: usize,
    ) -> Comparison<'scope, T> {
        let a = self;
        let joined = a.clone().join(b.clone());
        let comparable = joined.clone().filter(|(_, (ra, rb))| ra.evidence == rb.evidence);
        let per_attribute = comparable
            .clone()
            .flat_map(move |(_, (ra, rb))| {
                shared(&ra, &rb, tolerance).map(|(n, _, _, ok)| (n.to_owned(), ok)).collect::<Vec<_>>()
            })
            .count();
        let users =
            comparable.clone().map(move |(_, (ra, rb))| shared(&ra, &rb, tolerance).all(|(_, _, _, ok)| ok)).count();
        let behind = joined.filter(|(_, (ra, rb))| ra.evidence != rb.evidence).map(|(_, (ra, rb))| {
            match ra.evidence.events.cmp(&rb.evidence.events) {
                std::cmp::Ordering::Greater => Pending::AAhead,
                std::cmp::Ordering::Less => Pending::BAhead,
                std::cmp::Ordering::Equal => Pending::OtherEvents,
            }
        });
        let a_users = a.map(|(u, _)| u).distinct();
        let b_users = b.map(|(u, _)| u).distinct();
        let only_a = a_users.clone().map(|u| (u, ())).antijoin(b_users.clone()).map(|_| Pending::OnlyA);
        let only_b = b_users.map(|u| (u, ())).antijoin(a_users).map(|_| Pending::OnlyB);
        let pending = behind.concat(only_a).concat(only_b).count();
        let sample = comparable
            .flat_map(move |(user, (ra, rb))| {
                shared(&ra, &rb, tolerance)
                    .filter(|(_, _, _, ok)| !ok)
                    .map(|(n, va, vb, _)| Difference {
                        user: user.clone(),
                        attribute: n.to_owned(),
                        a: va.to_owned(),
                        b: vb.to_owned(),
                    })
                    .collect::<Vec<_>>()
            })
            .map(|d| ((), d))
            .reduce(move |_, differences, out| {
                // Sorted by (user, attribute): the first `sample` are the smallest user ids.
                let kept: Vec<Difference> = differences.iter().take(sample).map(|(d, _)| (*d).clone()).collect();
                out.push((kept, 1));
            });
        Comparison { per_attribute, users, pending, sample }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use differential_dataflow::input::Input;

    use super::*;

    fn rec(events: u32, hash: u64, attrs: &[(&str, &str)]) -> Record {
        Record {
            evidence: Evidence { events, hash },
            attributes: attrs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
        }
    }

    /// Accumulated `(key, count)` outputs: the latest count of each key.
    type Counts<K> = Arc<Mutex<BTreeMap<(K, isize), isize>>>;

    fn live<K: Clone + Ord>(c: &Counts<K>) -> BTreeMap<K, isize> {
        c.lock().unwrap().iter().filter(|(_, m)| **m > 0).map(|((k, n), _)| (k.clone(), *n)).collect()
    }

    #[test]
    fn counts_follow_users_as_they_change_and_lag_is_not_a_difference() {
        let per_attr: Counts<(String, bool)> = Default::default();
        let pending: Counts<Pending> = Default::default();
        let users: Counts<bool> = Default::default();
        let sample: Arc<Mutex<BTreeMap<Vec<Difference>, isize>>> = Default::default();
        let (pa, pe, us, sa) = (per_attr.clone(), pending.clone(), users.clone(), sample.clone());
        timely::execute_directly(move |worker| {
            let (mut a, mut b, probe) = worker.dataflow::<u64, _, _>(|scope| {
                let (a_in, a) = scope.new_collection::<(String, Record), isize>();
                let (b_in, b) = scope.new_collection::<(String, Record), isize>();
                let c = a.compare_with(b, 1e-9, 10);
                c.per_attribute
                    .inspect(move |((k, n), _, d)| *pa.lock().unwrap().entry((k.clone(), *n)).or_default() += d);
                c.pending.inspect(move |((k, n), _, d)| *pe.lock().unwrap().entry((*k, *n)).or_default() += d);
                c.users.inspect(move |((k, n), _, d)| *us.lock().unwrap().entry((*k, *n)).or_default() += d);
                let (probe, _) = c
                    .sample
                    .inspect(move |(((), v), _, d)| *sa.lock().unwrap().entry(v.clone()).or_default() += d)
                    .probe();
                (a_in, b_in, probe)
            });
            let mut step =
                |a: &mut differential_dataflow::input::InputSession<u64, (String, Record), isize>,
                 b: &mut differential_dataflow::input::InputSession<u64, (String, Record), isize>| {
                    let t = *a.time() + 1;
                    a.advance_to(t);
                    b.advance_to(t);
                    a.flush();
                    b.flush();
                    while probe.less_than(&t) {
                        worker.step();
                    }
                };
            // u1 agrees (floats within tolerance), u2 differs on skips, u3 is ahead in a, u4 only in b.
            a.insert(("u1".into(), rec(2, 7, &[("plays", "2"), ("rate", "0.30000000000000004"), ("only_a", "1")])));
            b.insert(("u1".into(), rec(2, 7, &[("plays", "2"), ("rate", "0.3"), ("only_b", "{}")])));
            a.insert(("u2".into(), rec(1, 5, &[("plays", "1"), ("rate", "1.0")])));
            b.insert(("u2".into(), rec(1, 5, &[("plays", "1"), ("rate", "0.0")])));
            a.insert(("u3".into(), rec(3, 1, &[("plays", "3")])));
            b.insert(("u3".into(), rec(2, 9, &[("plays", "2")])));
            b.insert(("u4".into(), rec(1, 2, &[("plays", "1")])));
            step(&mut a, &mut b);
            assert_eq!(
                live(&per_attr),
                BTreeMap::from([(("plays".into(), true), 2), (("rate".into(), true), 1), (("rate".into(), false), 1)])
            );
            assert_eq!(live(&users), BTreeMap::from([(true, 1), (false, 1)]));
            assert_eq!(live(&pending), BTreeMap::from([(Pending::AAhead, 1), (Pending::OnlyB, 1)]));
            let s: Vec<Vec<Difference>> =
                sample.lock().unwrap().iter().filter(|(_, m)| **m > 0).map(|(v, _)| v.clone()).collect();
            assert_eq!(
                s,
                vec![vec![Difference {
                    user: "u2".into(),
                    attribute: "rate".into(),
                    a: "1.0".into(),
                    b: "0.0".into()
                }]]
            );
            // b catches up on u3 and u2 changes in b: retractions move every count.
            b.remove(("u3".into(), rec(2, 9, &[("plays", "2")])));
            b.insert(("u3".into(), rec(3, 1, &[("plays", "3")])));
            b.remove(("u2".into(), rec(1, 5, &[("plays", "1"), ("rate", "0.0")])));
            b.insert(("u2".into(), rec(1, 5, &[("plays", "1"), ("rate", "1.0")])));
            step(&mut a, &mut b);
            assert_eq!(live(&per_attr), BTreeMap::from([(("plays".into(), true), 3), (("rate".into(), true), 2)]));
            assert_eq!(live(&users), BTreeMap::from([(true, 3)]));
            assert_eq!(live(&pending), BTreeMap::from([(Pending::OnlyB, 1)]));
        });
    }

    #[test]
    fn floats_agree_within_the_tolerance_only() {
        assert!(agree("1.0", "1.0000000000000002", 1e-9));
        assert!(!agree("1.0", "1.001", 1e-9));
        assert!(agree(r#"{"a":1.0}"#, r#"{"a":1.0000000000000002}"#, 1e-9));
        assert!(agree("2", "2.0", 1e-9));
        assert!(!agree(r#"["a","b"]"#, r#"["b","a"]"#, 1e-9));
        assert!(!agree("null", "0", 1e-9));
    }
}
