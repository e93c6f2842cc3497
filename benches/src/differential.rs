//! The v1 keyed aggregation written with differential-dataflow 0.26, to measure against squall's
//! plain timely state (`engine --aggregation differential`).
//!
//! Same input as the shipped dataflow (the activities leaving `enrich_with`), same attributes:
//! resends dropped by `distinct` on (user, dedup key, what), then `count` per user (plays, skips,
//! ad impressions), per (user, genre) and per (user, category), and `reduce` per user for the top
//! three genres (by plays, ties by name). `last_seen_ts` is left out (it is a max, not a count),
//! which only flatters differential.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use compact_str::CompactString;
use differential_dataflow::AsCollection;
use squall_operators::{Activity, What};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::{ProbeHandle, Stream};

/// An activity as a record: `what` packs the symbol with a tag (bit 31: ad) and the skip flag (bit 30).
type Record = (CompactString, u128, u32);

const AD: u32 = 1 << 31;
const SKIP: u32 = 1 << 30;
const SYM: u32 = SKIP - 1;

fn record(a: Activity) -> Record {
    let what = match a.what {
        What::Play { track, ms_played, .. } => track.genre.0 | if ms_played < 30_000 { SKIP } else { 0 },
        What::Ad { ad, .. } => ad.category.0 | AD,
    };
    (a.user, a.dedup_key, what)
}

/// Builds the aggregation over `activities` (one epoch per timestamp); `processed` counts the
/// activities that entered it. Returns a probe on every output.
pub fn v1<'scope>(activities: Stream<'scope, u64, Vec<Activity>>, processed: Arc<AtomicU64>) -> ProbeHandle<u64> {
    let updates = activities.unary::<timely::container::CapacityContainerBuilder<Vec<(Record, u64, isize)>>, _, _, _>(
        Pipeline,
        "ToUpdates",
        move |_cap, _info| {
            move |input, output| {
                input.for_each(|cap, data| {
                    processed.fetch_add(data.len() as u64, Relaxed);
                    let Some(t) = cap.least().copied() else { return };
                    output.session(&cap).give_iterator(data.drain(..).map(|a| (record(a), t, 1isize)));
                });
            }
        },
    );
    let counted = updates.as_collection().distinct();
    let plays = counted.clone().filter(|(_, _, w)| w & AD == 0);
    let probe = ProbeHandle::new();
    plays.clone().map(|(u, _, _)| u).count().probe_with(&probe);
    plays.clone().filter(|(_, _, w)| w & SKIP != 0).map(|(u, _, _)| u).count().probe_with(&probe);
    let genre_plays = plays.map(|(u, _, w)| (u, w & SYM)).count();
    genre_plays
        .clone()
        .map(|((u, g), n)| (u, (n, g)))
        .reduce(|_user, genres, out| {
            // Values arrive sorted by (count, symbol); take the three largest counts. (Ties by
            // symbol here, by name in squall: the cost is the same.)
            let top: Vec<u32> = genres.iter().rev().take(3).map(|((_, g), _)| *g).collect();
            out.push((top, 1isize));
        })
        .probe_with(&probe);
    genre_plays.probe_with(&probe);
    let ads = counted.filter(|(_, _, w)| w & AD != 0);
    ads.clone().map(|(u, _, _)| u).count().probe_with(&probe);
    ads.map(|(u, _, w)| (u, w & SYM)).count().probe_with(&probe);
    probe
}
