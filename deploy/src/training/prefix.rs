//! Which of a user's archived events a running version has applied, found from its evidence
//! alone (the count and the wrapping sum of the events' dedup keys, [`Evidence`]).
//!
//! # Notes
//! - **Prefixes per partition.** A version reads each partition in offset order, and its
//!   partitions at their own paces, so what it has applied for a user is, in every partition
//!   holding their events, a prefix in offset order. The search tries every combination of
//!   prefix lengths whose counts add up to the live count (one loop for a user in two partitions,
//!   a song and an ad partition) and takes the one whose keys add up to the live sum. Evidence is
//!   order-independent, so the order the version applied the events in does not matter.
//! - **Resends.** Before the search, a resend (an event whose dedup key came earlier in the
//!   training replay's order, within the dedup horizon of the first copy's time) is left out, as
//!   the version's dedup left it out of its evidence. With the horizon 0 (dedup off) every copy
//!   counts.
//! - **Not comparable** is never a difference: the live count exceeds the archived events
//!   (the archive is behind), no combination matches (the archive lacks events the version
//!   applied, or they disagree on what was a resend), or more than [`BUDGET`] combinations
//!   would be tried (a user spread over many partitions).

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use squall_operators::Evidence;

/// Combinations of prefix lengths tried at most per user.
pub const BUDGET: u64 = 1_000_000;

/// One of a user's archived events, as the search sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The topic's index among the version's inputs, and the partition.
    pub stream: (u8, i32),
    /// The offset in the partition.
    pub offset: i64,
    /// Event time, epoch ms.
    pub ts: i64,
    /// The event's dedup key.
    pub key: u128,
}

/// Why a user's live evidence matches no prefixes of their archived events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unmatched {
    /// The version applied more events than the archive holds for the user.
    ArchiveBehind,
    /// No prefixes add up to the live evidence.
    NoPrefix,
    /// More than [`BUDGET`] combinations to try.
    TooManyCombinations,
}

/// What the version applied of a user's archived events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The indices into the entries of the events it applied, in no particular order.
    pub events: Vec<usize>,
    /// The archived events it would apply, resends left out: more than `events` when the
    /// archive goes further than the version has read.
    pub archived: usize,
}

/// The events the version applied (resends left out); `horizon_ms` is the version's dedup
/// horizon (0: off).
pub fn applied(entries: &[Entry], live: Evidence, horizon_ms: i64) -> Result<Applied, Unmatched> {
    // Resends out, in the replay's order (event time, then place in the archive).
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| (entries[i].ts, entries[i].stream, entries[i].offset));
    let mut first: HashMap<u128, i64> = HashMap::new();
    let mut streams: BTreeMap<(u8, i32), Vec<usize>> = BTreeMap::new();
    for i in order {
        let e = &entries[i];
        if horizon_ms > 0 {
            match first.get(&e.key) {
                Some(t) if e.ts.saturating_sub(*t) < horizon_ms => continue,
                _ => {
                    first.insert(e.key, e.ts);
                }
            }
        }
        streams.entry(e.stream).or_default().push(i);
    }
    let mut streams: Vec<Vec<usize>> = streams.into_values().collect();
    for s in &mut streams {
        s.sort_by_key(|&i| entries[i].offset);
    }
    // sums[p][l]: the wrapping sum of the first l keys of stream p.
    let sums: Vec<Vec<u64>> = streams
        .iter()
        .map(|s| {
            let mut acc = 0u64;
            std::iter::once(0)
                .chain(s.iter().map(|&i| {
                    acc = acc.wrapping_add(entries[i].key as u64);
                    acc
                }))
                .collect()
        })
        .collect();
    let total: usize = streams.iter().map(Vec::len).sum();
    let count = live.events as usize;
    if count > total {
        return Err(Unmatched::ArchiveBehind);
    }
    let mut lengths = vec![0; streams.len()];
    let mut budget = BUDGET;
    if !search(&sums, 0, count, live.hash, &mut budget, &mut lengths) {
        return Err(if budget == 0 { Unmatched::TooManyCombinations } else { Unmatched::NoPrefix });
    }
    let events = streams.iter().zip(&lengths).flat_map(|(s, &l)| s[..l].iter().copied()).collect();
    Ok(Applied { events, archived: total })
}

/// Whether streams `p..` have prefixes of `count` events in all whose keys sum to `hash`; if so
/// their lengths are in `lengths[p..]`. Each combination tried takes one from `budget`.
fn search(sums: &[Vec<u64>], p: usize, count: usize, hash: u64, budget: &mut u64, lengths: &mut [usize]) -> bool {
    let Some(mine) = sums.get(p) else { return count == 0 && hash == 0 };
    let here = mine.len() - 1;
    if p + 1 == sums.len() {
        *budget = budget.saturating_sub(1);
        lengths[p] = count;
        return count <= here && mine[count] == hash;
    }
    let rest: usize = sums[p + 1..].iter().map(|s| s.len() - 1).sum();
    let least = count.saturating_sub(rest);
    for (l, sum) in mine.iter().enumerate().take(count.min(here) + 1).skip(least) {
        if *budget == 0 {
            return false;
        }
        lengths[p] = l;
        if search(sums, p + 1, count - l, hash.wrapping_sub(*sum), budget, lengths) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(topic: u8, partition: i32, offset: i64, ts: i64, key: u128) -> Entry {
        Entry { stream: (topic, partition), offset, ts, key }
    }

    fn evidence(entries: &[Entry], picked: &[usize]) -> Evidence {
        let hash = picked.iter().fold(0u64, |h, &i| h.wrapping_add(entries[i].key as u64));
        Evidence { events: picked.len() as u32, hash }
    }

    fn sorted(mut v: Vec<usize>) -> Vec<usize> {
        v.sort_unstable();
        v
    }

    /// A user's songs in one partition and ads in another, with real dedup keys (keys linear in
    /// a counter would make sums of different sets equal).
    fn two_streams() -> Vec<Entry> {
        let k = |i: u32| squall_operators::dedup::dedup_key(squall_operators::EventKind::Song, "u1", &i.to_string());
        vec![
            entry(0, 1, 10, 100, k(1)),
            entry(1, 3, 5, 150, k(2)),
            entry(0, 1, 11, 200, k(3)),
            entry(0, 1, 12, 300, k(4)),
            entry(1, 3, 6, 400, k(5)),
        ]
    }

    #[test]
    fn finds_the_prefix_of_each_partition_the_version_read() {
        let e = two_streams();
        // Songs read up to offset 11, ads to 6: not a prefix in event time (300 before 400 is missing).
        let picked = [0, 2, 1, 4];
        assert_eq!(sorted(applied(&e, evidence(&e, &picked), 0).unwrap().events), sorted(picked.to_vec()));
        // Everything, nothing, songs only.
        assert_eq!(sorted(applied(&e, evidence(&e, &[0, 1, 2, 3, 4]), 0).unwrap().events), vec![0, 1, 2, 3, 4]);
        assert_eq!(applied(&e, Evidence::default(), 0).unwrap().events, Vec::<usize>::new());
        assert_eq!(sorted(applied(&e, evidence(&e, &[0, 2, 3]), 0).unwrap().events), vec![0, 2, 3]);
    }

    #[test]
    fn prefixes_follow_offsets_not_event_time() {
        // Out of order in event time within the partition: offset 21 has the earlier time.
        let e = vec![entry(0, 0, 20, 500, 7), entry(0, 0, 21, 100, 11), entry(0, 0, 22, 300, 13)];
        assert_eq!(applied(&e, evidence(&e, &[0]), 0).unwrap(), Applied { events: vec![0], archived: 3 });
        // The event-time prefix {100} is not an offset prefix: nothing matches it.
        assert_eq!(applied(&e, evidence(&e, &[1]), 0), Err(Unmatched::NoPrefix));
    }

    #[test]
    fn resends_the_version_dropped_are_left_out() {
        // The same key again at a later offset with the original's time (a resend), then a new event.
        let e = vec![entry(0, 0, 1, 100, 7), entry(0, 0, 2, 200, 9), entry(0, 0, 3, 100, 7), entry(0, 0, 4, 300, 5)];
        // The version applied 1, 2 and 4 (3 dropped): its evidence is 3 events.
        let live = evidence(&e, &[0, 1, 3]);
        assert_eq!(sorted(applied(&e, live, 60_000).unwrap().events), vec![0, 1, 3]);
        // Read up to offset 3: the resend changed nothing.
        assert_eq!(sorted(applied(&e, evidence(&e, &[0, 1]), 60_000).unwrap().events), vec![0, 1]);
        // Dedup off: the copy counts, and a version that counted it matches with it.
        assert_eq!(sorted(applied(&e, evidence(&e, &[0, 1, 2]), 0).unwrap().events), vec![0, 1, 2]);
        // A copy later than the horizon counts again.
        let late = vec![entry(0, 0, 1, 100, 7), entry(0, 0, 2, 100 + 60_000, 7)];
        assert_eq!(sorted(applied(&late, evidence(&late, &[0, 1]), 60_000).unwrap().events), vec![0, 1]);
    }

    #[test]
    fn what_the_archive_lacks_is_not_comparable() {
        let e = two_streams();
        let all = evidence(&e, &[0, 1, 2, 3, 4]);
        // One more event than archived.
        let more = Evidence { events: all.events + 1, hash: all.hash.wrapping_add(99) };
        assert_eq!(applied(&e, more, 0), Err(Unmatched::ArchiveBehind));
        // As many events, but one the archive does not have.
        let other = Evidence { events: 2, hash: (e[0].key as u64).wrapping_add(12345) };
        assert_eq!(applied(&e, other, 0), Err(Unmatched::NoPrefix));
        // No events archived at all.
        assert_eq!(applied(&[], Evidence { events: 1, hash: 1 }, 0), Err(Unmatched::ArchiveBehind));
    }

    #[test]
    fn a_search_too_large_gives_up() {
        // 40 partitions of 2 events each, and evidence that matches nothing: 3^40 combinations.
        let e: Vec<Entry> = (0..80).map(|i| entry(0, i / 2, i as i64, i as i64, u128::from(i as u32) + 1)).collect();
        assert_eq!(applied(&e, Evidence { events: 40, hash: 1 }, 0), Err(Unmatched::TooManyCombinations));
    }
}
