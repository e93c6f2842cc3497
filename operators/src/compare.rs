//! [`Comparer`]: an exact, continuously maintained comparison of two versions' latest attributes
//! per user. Each side's latest record of a user replaces the previous one; the comparer takes the
//! user's old contribution out of every count and puts the new one in, so the counts are always
//! those of the latest records. (Differential dataflow does the same with retractions, slower and
//! in far more memory: `benches/RESULTS.md`.)
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

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::attributes::{Evidence, Value};

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

/// The attributes of `user` on which `a` and `b` differ, with both values.
pub fn differences(user: &str, a: &Record, b: &Record, tolerance: f64) -> Vec<Difference> {
    shared(a, b, tolerance)
        .filter(|(_, _, _, ok)| !ok)
        .map(|(n, va, vb, _)| Difference {
            user: user.to_owned(),
            attribute: n.to_owned(),
            a: va.to_owned(),
            b: vb.to_owned(),
        })
        .collect()
}

/// The attributes present in both records, with whether they agree.
pub fn shared<'r>(
    a: &'r Record,
    b: &'r Record,
    tolerance: f64,
) -> impl Iterator<Item = (&'r str, &'r str, &'r str, bool)> {
    let b: BTreeMap<&str, &str> = b.attributes.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    a.attributes.iter().filter_map(move |(n, va)| {
        let vb = *b.get(n.as_str())?;
        Some((n.as_str(), va.as_str(), vb, agree(va, vb, tolerance)))
    })
}

/// Which version a record belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Version `a`.
    A,
    /// Version `b`.
    B,
}

/// The latest record of each user on each side, and the counts of the report over them.
#[derive(Debug, Default)]
pub struct Comparer {
    tolerance: f64,
    users: HashMap<String, (Option<Record>, Option<Record>)>,
    /// Per shared attribute: comparable users agreeing, differing.
    per_attribute: HashMap<String, (i64, i64)>,
    compared: i64,
    agreeing: i64,
    pending: [i64; 5],
    /// Comparable users with a differing attribute, in order (the sample is their first ones).
    differing: BTreeSet<String>,
}

fn reason_index(p: Pending) -> usize {
    match p {
        Pending::AAhead => 0,
        Pending::BAhead => 1,
        Pending::OtherEvents => 2,
        Pending::OnlyA => 3,
        Pending::OnlyB => 4,
    }
}

impl Comparer {
    /// An empty comparison; `tolerance` is the relative tolerance of float attributes.
    pub fn new(tolerance: f64) -> Comparer {
        Comparer { tolerance, ..Comparer::default() }
    }

    /// `record` is now `side`'s latest of `user`.
    pub fn set(&mut self, side: Side, user: String, record: Record) {
        let mut pair = self.users.remove(&user).unwrap_or_default();
        self.contribute(&user, &pair, -1);
        match side {
            Side::A => pair.0 = Some(record),
            Side::B => pair.1 = Some(record),
        }
        self.contribute(&user, &pair, 1);
        self.users.insert(user, pair);
    }

    /// Adds (`sign` 1) or takes out (-1) what `user`'s pair of records counts for.
    fn contribute(&mut self, user: &str, pair: &(Option<Record>, Option<Record>), sign: i64) {
        let reason = match pair {
            (Some(a), Some(b)) if a.evidence == b.evidence => {
                let mut all = true;
                for (name, _, _, ok) in shared(a, b, self.tolerance) {
                    all &= ok;
                    let counts = match self.per_attribute.get_mut(name) {
                        Some(c) => c,
                        None => self.per_attribute.entry(name.to_owned()).or_default(),
                    };
                    if ok { counts.0 += sign } else { counts.1 += sign }
                }
                self.compared += sign;
                if all {
                    self.agreeing += sign;
                } else if sign > 0 {
                    self.differing.insert(user.to_owned());
                } else {
                    self.differing.remove(user);
                }
                return;
            }
            (Some(a), Some(b)) => match a.evidence.events.cmp(&b.evidence.events) {
                std::cmp::Ordering::Greater => Pending::AAhead,
                std::cmp::Ordering::Less => Pending::BAhead,
                std::cmp::Ordering::Equal => Pending::OtherEvents,
            },
            (Some(_), None) => Pending::OnlyA,
            (None, Some(_)) => Pending::OnlyB,
            (None, None) => return,
        };
        self.pending[reason_index(reason)] += sign;
    }

    /// Users compared (both sides applied the same events), and those agreeing on every shared attribute.
    pub fn compared(&self) -> (u64, u64) {
        (self.compared.max(0) as u64, self.agreeing.max(0) as u64)
    }

    /// Users in both sides not comparable yet, or in one side only, by why.
    pub fn pending(&self, why: Pending) -> u64 {
        self.pending[reason_index(why)].max(0) as u64
    }

    /// Comparable users agreeing and differing on attribute `name`.
    pub fn attribute(&self, name: &str) -> (u64, u64) {
        self.per_attribute.get(name).map_or((0, 0), |(a, d)| ((*a).max(0) as u64, (*d).max(0) as u64))
    }

    /// Up to `n` differing values, of the smallest differing user ids, by attribute name.
    pub fn sample(&self, n: usize) -> Vec<Difference> {
        let mut out = Vec::new();
        for user in &self.differing {
            let Some((Some(a), Some(b))) = self.users.get(user) else { continue };
            let mut diffs = differences(user, a, b, self.tolerance);
            diffs.sort();
            for d in diffs {
                if out.len() == n {
                    return out;
                }
                out.push(d);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(events: u32, hash: u64, attrs: &[(&str, &str)]) -> Record {
        Record {
            evidence: Evidence { events, hash },
            attributes: attrs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn counts_follow_users_as_they_change_and_lag_is_not_a_difference() {
        let mut c = Comparer::new(1e-9);
        let set = |c: &mut Comparer, side, user: &str, r| c.set(side, user.into(), r);
        // u1 agrees (floats within tolerance), u2 differs on rate, u3 is ahead in a, u4 only in b.
        set(&mut c, Side::A, "u1", rec(2, 7, &[("plays", "2"), ("rate", "0.30000000000000004"), ("only_a", "1")]));
        set(&mut c, Side::B, "u1", rec(2, 7, &[("plays", "2"), ("rate", "0.3"), ("only_b", "{}")]));
        set(&mut c, Side::A, "u2", rec(1, 5, &[("plays", "1"), ("rate", "1.0")]));
        set(&mut c, Side::B, "u2", rec(1, 5, &[("plays", "1"), ("rate", "0.0")]));
        set(&mut c, Side::A, "u3", rec(3, 1, &[("plays", "3")]));
        set(&mut c, Side::B, "u3", rec(2, 9, &[("plays", "2")]));
        set(&mut c, Side::B, "u4", rec(1, 2, &[("plays", "1")]));
        assert_eq!((c.attribute("plays"), c.attribute("rate"), c.attribute("only_a")), ((2, 0), (1, 1), (0, 0)));
        assert_eq!(c.compared(), (2, 1));
        let pending: Vec<u64> =
            [Pending::AAhead, Pending::BAhead, Pending::OtherEvents, Pending::OnlyA, Pending::OnlyB]
                .into_iter()
                .map(|p| c.pending(p))
                .collect();
        assert_eq!(pending, [1, 0, 0, 0, 1]);
        assert_eq!(
            c.sample(10),
            vec![Difference { user: "u2".into(), attribute: "rate".into(), a: "1.0".into(), b: "0.0".into() }]
        );
        // b catches up on u3 and u2 changes in b: every count moves.
        set(&mut c, Side::B, "u3", rec(3, 1, &[("plays", "3")]));
        set(&mut c, Side::B, "u2", rec(1, 5, &[("plays", "1"), ("rate", "1.0")]));
        assert_eq!((c.attribute("plays"), c.attribute("rate")), ((3, 0), (2, 0)));
        assert_eq!(c.compared(), (3, 3));
        assert_eq!((c.pending(Pending::AAhead), c.pending(Pending::OnlyB)), (0, 1));
        assert!(c.sample(10).is_empty());
        // a moves ahead again on u1: it leaves the comparison, as not comparable, not as a difference.
        set(&mut c, Side::A, "u1", rec(3, 8, &[("plays", "3"), ("rate", "0.5")]));
        assert_eq!(c.compared(), (2, 2));
        assert_eq!((c.attribute("plays"), c.pending(Pending::AAhead)), ((2, 0), 1));
        // Same count, other events: not comparable either.
        set(&mut c, Side::B, "u1", rec(3, 9, &[("plays", "3"), ("rate", "0.5")]));
        assert_eq!((c.compared(), c.pending(Pending::OtherEvents)), ((2, 2), 1));
    }

    #[test]
    fn the_sample_takes_the_smallest_users_first() {
        let mut c = Comparer::new(1e-9);
        for u in ["u3", "u1", "u2"] {
            c.set(Side::A, u.into(), rec(1, 1, &[("x", "1"), ("y", "1")]));
            c.set(Side::B, u.into(), rec(1, 1, &[("x", "2"), ("y", "2")]));
        }
        let s: Vec<(String, String)> = c.sample(3).into_iter().map(|d| (d.user, d.attribute)).collect();
        assert_eq!(s, [("u1".into(), "x".into()), ("u1".into(), "y".into()), ("u2".into(), "x".into())]);
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
