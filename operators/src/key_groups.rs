//! Who owns a user, and how a version's state is cut into key groups: the one rule the exchange,
//! the store, the checkpoints, recovery and query routing all use.
//!
//! # Notes
//! A user's position is `x = user_hash(user) / 2^64`, a point in `[0, 1)`. Worker `w` of `peers`
//! owns the users with `x` in `[w / peers, (w + 1) / peers)` ([`owner`]); key group `g` of `K`
//! holds the users with `x` in `[g / K, (g + 1) / K)` ([`KeyGroups::of`]). Both are "fast range"
//! reductions (the high half of a 64 x 64-bit product), so a worker owns a contiguous range of key
//! groups for every layout, and a key group is split between two workers only where a worker
//! boundary falls inside it (at most `peers - 1` key groups, none when `peers` divides `K`).
//!
//! Ownership does not depend on `K`, so routing a query needs only the layout (workers and
//! processes), while checkpoints are stored per key group: a process reads the key groups its
//! workers' range covers ([`KeyGroups::covering`]), which for any layout is its share plus at most
//! the two key groups cut by its range's ends. `K` (`state.key_groups`) is fixed for a version's
//! life, since stored rows are keyed by it; the number of workers and processes may change.

use std::ops::Range;

/// The hash that places a user: which worker owns them and which key group holds them.
#[inline]
pub fn user_hash(user_id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(user_id.as_bytes())
}

/// The worker, of `peers`, that owns the user with hash `hash`.
#[inline]
pub fn owner_of_hash(hash: u64, peers: usize) -> usize {
    ((u128::from(hash) * peers as u128) >> 64) as usize
}

/// The worker, of `peers`, that owns `user_id`: what the exchange routes on and what query
/// routing follows.
#[inline]
pub fn owner(user_id: &str, peers: usize) -> usize {
    owner_of_hash(user_hash(user_id), peers)
}

/// The hash interval worker `worker` of `peers` owns, as the first hash of `worker` and of
/// `worker + 1` (`u128` so that the last end, `2^64`, fits).
fn hash_bounds(worker: usize, peers: usize) -> (u128, u128) {
    // The least h with floor(h * peers / 2^64) >= w is ceil(w * 2^64 / peers).
    let start = |w: usize| ((w as u128) << 64).div_ceil(peers as u128);
    (start(worker), start(worker + 1))
}

/// A number of key groups outside `1..=`[`KeyGroups::MAX`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("state.key_groups = {0}: use 1..={max}", max = KeyGroups::MAX)]
pub struct KeyGroupsError(pub u32);

/// A version's number of key groups: `state.key_groups`, fixed for the version's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct KeyGroups(u32);

impl Default for KeyGroups {
    fn default() -> Self {
        KeyGroups(Self::DEFAULT)
    }
}

impl KeyGroups {
    /// The default, 4096: a key group of 100 M users holds about 24k of them (5 MB of state).
    pub const DEFAULT: u32 = 4096;
    /// The most a version may have.
    pub const MAX: u32 = 1 << 16;

    /// `count` key groups, `1..=MAX`.
    pub fn new(count: u32) -> Result<Self, KeyGroupsError> {
        if (1..=Self::MAX).contains(&count) { Ok(KeyGroups(count)) } else { Err(KeyGroupsError(count)) }
    }

    /// How many there are.
    pub fn count(self) -> u32 {
        self.0
    }

    /// The key group of the user with hash `hash`.
    #[inline]
    pub fn of_hash(self, hash: u64) -> u32 {
        ((u128::from(hash) * u128::from(self.0)) >> 64) as u32
    }

    /// The key group of `user_id`.
    #[inline]
    pub fn of(self, user_id: &str) -> u32 {
        self.of_hash(user_hash(user_id))
    }

    /// The key groups holding some user of workers `workers` (of `peers`): contiguous.
    pub fn covering(self, workers: Range<usize>, peers: usize) -> Range<u32> {
        if workers.is_empty() {
            return 0..0;
        }
        let (lo, _) = hash_bounds(workers.start, peers);
        let (_, hi) = hash_bounds(workers.end - 1, peers);
        // Key group g holds hashes [ceil(g 2^64 / K), ceil((g + 1) 2^64 / K)): the first is the
        // group of `lo`, the last the group of `hi - 1`.
        let k = u128::from(self.0);
        let first = (lo * k) >> 64;
        let last = ((hi - 1) * k) >> 64;
        first as u32..last as u32 + 1
    }

    /// The worker, of `peers`, that compacts key group `group`: the owner of its first hash.
    /// Exactly one worker compacts each group, also when two share it.
    pub fn compactor(self, group: u32, peers: usize) -> usize {
        let first = (u128::from(group) << 64).div_ceil(u128::from(self.0));
        owner_of_hash(first as u64, peers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_user_belongs_to_a_group_its_owner_covers() {
        for (k, peers) in [(4096, 1), (4096, 2), (4096, 3), (64, 7), (5, 8), (1, 3), (65536, 160)] {
            let kg = KeyGroups::new(k).unwrap();
            let ranges: Vec<Range<u32>> = (0..peers).map(|w| kg.covering(w..w + 1, peers)).collect();
            // The ranges tile 0..K, overlapping by at most one group at each boundary.
            assert_eq!(ranges[0].start, 0);
            assert_eq!(ranges[peers - 1].end, k);
            for w in 1..peers {
                let (prev, next) = (&ranges[w - 1], &ranges[w]);
                assert!(next.start == prev.end || next.start + 1 == prev.end, "{k} {peers} {w}: {prev:?} {next:?}");
            }
            for i in 0..2000u32 {
                let user = format!("u{i}");
                let (w, g) = (owner(&user, peers), kg.of(&user));
                assert!(ranges[w].contains(&g), "{user}: worker {w} of {peers} does not cover group {g} of {k}");
            }
            // A process's range is the union of its workers'.
            assert_eq!(kg.covering(0..peers, peers), 0..k);
            // Each group has one compactor, and it covers the group.
            for g in 0..k.min(300) {
                assert!(ranges[kg.compactor(g, peers)].contains(&g));
            }
        }
    }

    #[test]
    fn ownership_ignores_the_number_of_groups_and_groups_split_only_at_worker_boundaries() {
        // 4 workers and 4096 groups: no group is split.
        let kg = KeyGroups::new(4096).unwrap();
        let r: Vec<_> = (0..4).map(|w| kg.covering(w..w + 1, 4)).collect();
        assert_eq!(r, vec![0..1024, 1024..2048, 2048..3072, 3072..4096]);
        // 3 workers: the groups at 1/3 and 2/3 are shared by two workers each.
        let r: Vec<_> = (0..3).map(|w| kg.covering(w..w + 1, 3)).collect();
        assert_eq!(r, vec![0..1366, 1365..2731, 2730..4096]);
        assert_eq!(owner_of_hash(0, 3), 0);
        assert_eq!(owner_of_hash(u64::MAX, 3), 2);
        assert!(KeyGroups::new(0).is_err() && KeyGroups::new(KeyGroups::MAX + 1).is_err());
    }
}
