//! `activities.maintain_attributes(..)`: deduplicates and applies events to the per-user state, epoch by epoch.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use compact_str::CompactString;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use crate::attributes::Activity;
use crate::checkpoint::Part;
use crate::dedup::Dedup;
use crate::source::{Epoch, EpochOffsets, offsets_at};
use crate::store::{UserStore, user_hash};

/// How often retained event ids are checked for expiry.
const EXPIRE_EVERY: Duration = Duration::from_secs(30);

/// What a worker needs to checkpoint its state.
pub struct CheckpointHook {
    /// This worker's source offsets per epoch.
    pub offsets: EpochOffsets,
    /// Where parts go to be written.
    pub parts: crossbeam_channel::Sender<Part>,
    /// Dedup ids recovered for this worker: (user hash, key, ts).
    pub restore_dedup: Vec<(u64, u128, i64)>,
    /// No cut below this epoch is written (the epochs before the run started).
    pub first_epoch: Epoch,
}

/// Maintains per-user attributes.
pub trait MaintainAttributes<'scope> {
    /// Applies each activity to this worker's shard of `store`, dropping resends seen within
    /// `dedup_horizon_ms` of event time, and decrements `pending` for every activity consumed.
    /// With a `checkpoint` hook, writes a [`Part`] for every cut (see [`crate::checkpoint`]).
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
        checkpoint: Option<CheckpointHook>,
    ) -> Stream<'scope, Epoch, Vec<()>>;
}

/// The worker-local state of the operator.
struct Maintainer {
    store: Arc<UserStore>,
    worker: usize,
    peers: usize,
    dedup: Dedup,
    pending: Arc<AtomicUsize>,
    checkpoint: Option<CheckpointHook>,
    /// The last cut written (or the first one observed).
    sealed: Option<Epoch>,
    /// Users changed since the last cut.
    dirty: HashSet<CompactString>,
    /// Dedup ids added since the last cut.
    new_ids: Vec<(u64, u128, i64)>,
}

impl Maintainer {
    fn apply(&mut self, batch: &mut Vec<Activity>) {
        let (plan, symbols) = (self.store.plan(), self.store.symbols());
        let shard = self.store.shard(self.worker);
        let n = batch.len();
        let mut dups = 0u64;
        for mut a in batch.drain(..) {
            if !self.dedup.first_time(a.dedup_key, a.ts) {
                dups += 1;
                continue;
            }
            if self.checkpoint.is_some() {
                self.new_ids.push((user_hash(&a.user), a.dedup_key, a.ts));
                if !self.dirty.contains(&a.user) {
                    self.dirty.insert(a.user.clone());
                }
            }
            let mut entry = shard.entry(std::mem::take(&mut a.user)).or_default();
            let (user, state) = entry.pair_mut();
            state.apply(plan, user, &a, symbols);
        }
        self.pending.fetch_sub(n, Relaxed);
        self.store.record(self.worker, n as u64 - dups, dups);
    }

    /// Writes a part for every cut in `(sealed, target]`; the first carries the changes.
    fn seal_through(&mut self, target: Epoch) {
        let Some(hook) = &self.checkpoint else { return };
        if target < hook.first_epoch {
            return;
        }
        let Some(sealed) = self.sealed else {
            self.sealed = Some(target);
            return;
        };
        if target <= sealed {
            return;
        }
        let (plan, symbols) = (self.store.plan(), self.store.symbols());
        let shard = self.store.shard(self.worker);
        for cut in sealed + 1..=target {
            let users = self
                .dirty
                .drain()
                .filter_map(|u| shard.get(&u).map(|s| (u.to_string(), s.snapshot(plan, symbols))))
                .collect();
            let part = Part {
                cut,
                worker: self.worker,
                peers: self.peers,
                users,
                dedup: std::mem::take(&mut self.new_ids),
                offsets: offsets_at(&hook.offsets, cut),
            };
            if hook.parts.send(part).is_err() {
                tracing::error!(worker = self.worker, "checkpoint writer is gone; no further checkpoints");
            }
        }
        // Offsets of epochs before the last cut are no longer needed.
        let keep = hook.offsets.borrow_mut().split_off(&(target - 1));
        *hook.offsets.borrow_mut() = keep;
        self.sealed = Some(target);
    }
}

impl<'scope> MaintainAttributes<'scope> for Stream<'scope, Epoch, Vec<Activity>> {
    fn maintain_attributes(
        self,
        store: Arc<UserStore>,
        dedup_horizon_ms: i64,
        pending: Arc<AtomicUsize>,
        checkpoint: Option<CheckpointHook>,
    ) -> Stream<'scope, Epoch, Vec<()>> {
        let scope = self.scope();
        let (worker, peers) = (scope.index(), scope.peers());
        let mut builder = OperatorBuilder::new("MaintainAttributes".to_owned(), scope);
        let mut input = builder.new_input(self, Pipeline);
        let (output, stream) = builder.new_output::<Vec<()>>();
        let _output = OutputBuilder::<_, CapacityContainerBuilder<Vec<()>>>::from(output);
        let mut dedup = Dedup::new(dedup_horizon_ms);
        if let Some(hook) = &checkpoint {
            dedup.restore(hook.restore_dedup.iter().map(|(_, k, ts)| (*k, *ts)));
        }
        let mut m = Maintainer {
            store,
            worker,
            peers,
            dedup,
            pending,
            checkpoint,
            sealed: None,
            dirty: HashSet::new(),
            new_ids: Vec::new(),
        };

        builder.build(move |mut caps| {
            // Held at the least epoch not yet applied everywhere, so the output frontier follows the input's.
            let mut cap = caps.pop();
            let mut stash: BTreeMap<Epoch, Vec<Activity>> = BTreeMap::new();
            let mut last_expiry = Instant::now();
            move |frontiers| {
                let frontier = frontiers[0].frontier();
                let least = frontier.iter().min().copied();
                input.for_each(|time, data| {
                    let Some(epoch) = time.least().copied() else { return };
                    if least.is_none_or(|l| l >= epoch) {
                        m.seal_through(epoch);
                        m.apply(data);
                    } else {
                        stash.entry(epoch).or_default().append(data);
                    }
                });
                while let Some(entry) = stash.first_entry() {
                    if least.is_some_and(|l| l < *entry.key()) {
                        break;
                    }
                    m.seal_through(*entry.key());
                    m.apply(&mut entry.remove());
                }
                if let Some(l) = least {
                    m.seal_through(l);
                }
                if last_expiry.elapsed() > EXPIRE_EVERY {
                    m.dedup.expire();
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
