//! `activities.maintain_attributes(..)`: deduplicates and applies events to the per-user state, epoch by epoch.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use crate::attributes::Activity;
use crate::dedup::Dedup;
use crate::source::Epoch;
use crate::store::UserStore;

/// How often retained event ids are checked for expiry.
const EXPIRE_EVERY: Duration = Duration::from_secs(30);

/// Maintains per-user attributes.
pub trait MaintainAttributes<'scope> {
    /// Applies each activity to this worker's shard of `store`, dropping resends seen within
    /// `dedup_horizon_ms` of event time, and decrements `pending` for every activity consumed.
    ///
    /// # Notes
    /// Activities are applied in epoch order: those of a later epoch wait until every earlier
    /// epoch is complete on all workers. So when the input frontier passes an epoch, the state
    /// holds exactly the events of the epochs before it: a consistent cut with the source offsets
    /// recorded at those epochs' ends. The output carries no data; its frontier says which
    /// epochs are fully applied.
    fn maintain_attributes(
        self,
        store: Arc<UserStore>,
        dedup_horizon_ms: i64,
        pending: Arc<AtomicUsize>,
    ) -> Stream<'scope, Epoch, Vec<()>>;
}

impl<'scope> MaintainAttributes<'scope> for Stream<'scope, Epoch, Vec<Activity>> {
    fn maintain_attributes(
        self,
        store: Arc<UserStore>,
        dedup_horizon_ms: i64,
        pending: Arc<AtomicUsize>,
    ) -> Stream<'scope, Epoch, Vec<()>> {
        let scope = self.scope();
        let worker = scope.index();
        let mut builder = OperatorBuilder::new("MaintainAttributes".to_owned(), scope);
        let mut input = builder.new_input(self, Pipeline);
        let (output, stream) = builder.new_output::<Vec<()>>();
        let _output = OutputBuilder::<_, CapacityContainerBuilder<Vec<()>>>::from(output);
        let duplicates = metrics::counter!("squall_events_duplicate_total", "worker" => worker.to_string());
        let applied = metrics::counter!("squall_events_applied_total", "worker" => worker.to_string());

        builder.build(move |mut caps| {
            // Held at the least epoch not yet applied everywhere, so the output frontier follows the input's.
            let mut cap = caps.pop();
            let mut stash: BTreeMap<Epoch, Vec<Activity>> = BTreeMap::new();
            let mut dedup = Dedup::new(dedup_horizon_ms);
            let mut last_expiry = Instant::now();
            let set = store.attribute_set();
            let apply = move |batch: &mut Vec<Activity>, dedup: &mut Dedup| {
                let shard = store.shard(worker);
                let n = batch.len();
                let mut dups = 0u64;
                for a in batch.drain(..) {
                    if !dedup.first_time(a.dedup_key, a.ts) {
                        dups += 1;
                        continue;
                    }
                    shard.entry(a.user).or_default().apply(set, a.ts, a.what);
                }
                pending.fetch_sub(n, Relaxed);
                store.record(n as u64 - dups, dups);
                duplicates.increment(dups);
                applied.increment(n as u64 - dups);
            };
            move |frontiers| {
                let frontier = frontiers[0].frontier();
                let least = frontier.iter().min().copied();
                input.for_each(|time, data| {
                    let Some(epoch) = time.least().copied() else { return };
                    if least.is_none_or(|l| l >= epoch) {
                        apply(data, &mut dedup);
                    } else {
                        stash.entry(epoch).or_default().append(data);
                    }
                });
                while let Some(entry) = stash.first_entry() {
                    if least.is_some_and(|l| l < *entry.key()) {
                        break;
                    }
                    apply(&mut entry.remove(), &mut dedup);
                }
                if last_expiry.elapsed() > EXPIRE_EVERY {
                    dedup.expire();
                    last_expiry = Instant::now();
                }
                match (least, cap.as_mut()) {
                    (Some(l), Some(c)) if *c.time() < l => c.downgrade(&l),
                    (None, Some(_)) => cap = None,
                    _ => {}
                }
            }
        });
        stream
    }
}
