//! The diff's comparison in differential dataflow, kept here as the measured alternative to the
//! plain comparer squall runs (`squall_operators::compare::Comparer`): `benches/src/bin/diff.rs`
//! times both on the same records (`benches/RESULTS.md`, the diff sections). Each side is a
//! collection of `(user, record)` that changes as users change (the old record retracted, the new
//! one added); the two are joined on the user and every count is maintained incrementally.

use differential_dataflow::VecCollection;
use squall_operators::compare::{Difference, Pending, Record, differences, shared};

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
            .flat_map(move |(user, (ra, rb))| differences(&user, &ra, &rb, tolerance))
            .map(|d| ((), d))
            .reduce(move |_, differences, out| {
                // Sorted by (user, attribute): the first `sample` are the smallest user ids.
                let kept: Vec<Difference> = differences.iter().take(sample).map(|(d, _)| (*d).clone()).collect();
                out.push((kept, 1));
            });
        Comparison { per_attribute, users, pending, sample }
    }
}
