//! `activities.maintain_attributes(..)`: deduplicates and applies events to the per-user state, epoch by epoch.

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use compact_str::CompactString;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use crate::activity::Activity;
use crate::attributes::UserState;
use crate::checkpoint::{DedupRun, Part};
use crate::dedup::{Dedup, Fingerprint};
use crate::epoch::Epoch;
use crate::key_groups::{self, KeyGroups};
use crate::source::{EpochOffsets, offsets_at};
use crate::store::{Slot, UserStore};
use crate::watermark::{Report, Watermark};

/// The least time between two sweeps (expired dedup ids, expired users), each bounded.
const SWEEP_EVERY: Duration = Duration::from_millis(10);

/// Events [`Maintainer::apply`] looks up together before it applies them.
const CHUNK: usize = 16;

/// Dedup sub-tables swept per sweep.
const DEDUP_SWEEP_BUDGET: usize = 32;

/// Users looked at per sweep for expiry, at most (a map is swept whole: see
/// [`crate::store::MAPS`]).
const USER_SWEEP_BUDGET: usize = 8192;

/// Emptied stash buffers kept for the next epochs that arrive ahead of the frontier.
const SPARE_STASHES: usize = 4;

/// The largest stash buffer kept for reuse, in bytes (a burst's larger buffer is freed).
const SPARE_STASH_BYTES: usize = 8 << 20;

/// What a worker takes back from the recovered cut.
#[derive(Clone, Debug)]
pub struct Restore {
    /// Dedup ids of the key groups this worker covers.
    pub dedup: Vec<DedupRun>,
    /// Event-time milliseconds per bucket they were written with (0: none).
    pub bucket_ms: i64,
    /// The watermark at the cut.
    pub watermark: i64,
}

impl Default for Restore {
    fn default() -> Self {
        Restore { dedup: Vec::new(), bucket_ms: 0, watermark: i64::MIN }
    }
}

/// What a worker needs to checkpoint its state.
pub struct CheckpointHook {
    /// This worker's source offsets per epoch.
    pub offsets: EpochOffsets,
    /// Where parts go to be written.
    pub parts: crossbeam_channel::Sender<Part>,
    /// What this worker takes back from the recovered cut.
    pub restore: Restore,
    /// No cut below this epoch is written (the epochs before the run started).
    pub first_epoch: Epoch,
}

/// Maintains per-user attributes.
pub trait MaintainAttributes<'scope> {
    /// Applies each activity to the state of its user in `store`, dropping resends seen within
    /// `dedup_horizon_ms` of event time, and decrements `pending` for every activity consumed.
    /// `progress` carries every source worker's event-time progress at each epoch's end, from
    /// which the watermark that ids and users expire against is folded ([`crate::watermark`]).
    /// With a `checkpoint` hook, writes a [`Part`] for every cut (see [`crate::checkpoint`]).
    ///
    /// # Notes
    /// Activities are applied in epoch order: those of a later epoch wait until every earlier
    /// epoch is complete on all workers. So when the input frontier passes an epoch, the state
    /// holds exactly the events of the epochs before it: a consistent cut with the source offsets
    /// recorded at those epochs' ends. The output carries no data; its frontier says which
    /// epochs are fully applied.
    ///
    /// With a user TTL ([`UserStore::with_user_ttl`]) a user whose newest event is more than the
    /// TTL of event time behind the watermark is expired: forgotten, and listed in the next part
    /// so that recovery forgets them too. The watermark is one no unread event is behind, so a
    /// user is never expired while an event of theirs within the TTL is still to be read, in
    /// whatever order the partitions are read. It is checked when the user's next event arrives
    /// (an expired user who returns starts fresh) and by a sweep over the maps of this worker's
    /// key groups, a few thousand users per step (at least one map), each time the watermark has
    /// moved on by an eighth of the TTL. Dedup ids are kept for the horizon whatever happens to
    /// users (the TTL is at least the horizon).
    fn maintain_attributes(
        self,
        progress: Stream<'scope, Epoch, Vec<Report>>,
        store: Arc<UserStore>,
        dedup_horizon_ms: i64,
        pending: Arc<AtomicUsize>,
        checkpoint: Option<CheckpointHook>,
    ) -> Stream<'scope, Epoch, Vec<()>>;
}

/// Progress of the sweep for expired users.
struct UserSweep {
    /// This worker's key groups.
    covering: Range<u32>,
    /// The next of the maps holding them to sweep, while a pass runs.
    next: Option<usize>,
    /// The watermark when the last pass started.
    started_at: i64,
}

/// The worker-local state of the operator.
struct Maintainer {
    store: Arc<UserStore>,
    worker: usize,
    peers: usize,
    key_groups: KeyGroups,
    dedup: Dedup,
    /// What ids and users expire against.
    watermark: Watermark,
    pending: Arc<AtomicUsize>,
    checkpoint: Option<CheckpointHook>,
    /// The last cut written (or the first one observed).
    sealed: Option<Epoch>,
    /// Users changed since the last cut.
    dirty: HashSet<CompactString>,
    /// Users expired since the last cut.
    expired: Vec<String>,
    /// Dedup ids added since the last cut: (key group, bucket, id).
    new_ids: Vec<(u32, i64, Fingerprint)>,
    users: UserSweep,
}

impl Maintainer {
    /// Before the activities of `epoch` are applied: writes the cuts up to it, then moves the
    /// watermark to what the reports of the epochs before it say.
    fn enter(&mut self, epoch: Epoch) {
        self.seal_through(epoch);
        let w = self.watermark.before(epoch);
        self.dedup.advance(w);
    }

    fn apply(&mut self, batch: &mut Vec<Activity>) {
        let store = Arc::clone(&self.store);
        let (plan, symbols) = (store.plan(), store.symbols());
        let ttl = store.user_ttl_ms();
        let expired_before = self.watermark.get().saturating_sub(ttl);
        let n = batch.len();
        let mut dups = 0u64;
        // A chunk at a time, in phases, so that the cache misses of its events overlap instead of
        // following one another (`benches/RESULTS.md`, "hot path"): the dedup
        // sub-tables' headers, then their lines, then the dedup decisions (in order), then the
        // users' shards locked and their entries and states looked up, then the updates.
        let mut touched = 0u64;
        let mut slots: [Option<Slot>; CHUNK] = [None; CHUNK];
        for chunk in batch.chunks_mut(CHUNK) {
            for a in chunk.iter() {
                touched ^= self.dedup.touch_header(a.dedup_key);
            }
            for a in chunk.iter() {
                touched ^= self.dedup.touch_slots(a.dedup_key);
            }
            for (a, slot) in chunk.iter().zip(&mut slots) {
                *slot = if self.dedup.first_time(a.dedup_key, a.ts) {
                    Some(store.slot(&a.user))
                } else {
                    dups += 1;
                    None
                };
            }
            let mut users = store.lock(slots[..chunk.len()].iter().flatten());
            for (a, slot) in chunk.iter().zip(&slots) {
                if let Some(slot) = slot {
                    touched ^= users.touch(slot, &a.user);
                }
            }
            std::hint::black_box(touched);
            for (a, slot) in chunk.iter().zip(&slots) {
                let Some(slot) = slot else { continue };
                if self.checkpoint.is_some() {
                    if let Some(bucket) = self.dedup.kept_in(a.ts) {
                        self.new_ids.push((slot.key_group, bucket, Fingerprint::of(a.dedup_key)));
                    }
                    if !self.dirty.contains(&a.user) {
                        self.dirty.insert(a.user.clone());
                    }
                }
                let state = users.state(slot, &a.user);
                if ttl > 0 && state.clock().is_some_and(|c| c < expired_before) {
                    // Expired since their previous event: they start fresh.
                    *state = UserState::default();
                }
                state.apply(plan, &a.user, a, symbols);
            }
        }
        batch.clear();
        self.pending.fetch_sub(n, Relaxed);
        store.record(self.worker, n as u64 - dups, dups);
    }

    /// Expires users of the next maps of this worker's key groups (up to [`USER_SWEEP_BUDGET`]
    /// users, at least one map), if a pass is due or under way.
    fn sweep_users(&mut self) {
        let ttl = self.store.user_ttl_ms();
        if ttl <= 0 || self.users.covering.is_empty() {
            return;
        }
        let watermark = self.watermark.get();
        let mut next = match self.users.next {
            Some(m) => m,
            None if watermark.saturating_sub(self.users.started_at) >= (ttl / 8).max(1) => {
                self.users.started_at = watermark;
                0
            }
            None => return,
        };
        let horizon = watermark.saturating_sub(ttl);
        let (worker, peers, expired) = (self.worker, self.peers, &mut self.expired);
        let maps = self.store.maps_covering(self.users.covering.clone());
        let mut users = 0;
        while next < maps.len() && users < USER_SWEEP_BUDGET {
            let map = &maps[next];
            users += map.len();
            map.retain(|user, state| {
                // A map shared with a neighbour at a boundary: only this worker's users.
                let gone = state.clock().is_some_and(|c| c < horizon) && key_groups::owner(user, peers) == worker;
                if gone {
                    expired.push(user.to_string());
                }
                !gone
            });
            next += 1;
        }
        self.users.next = Some(next).filter(|n| *n < maps.len());
    }

    /// Writes a part for every cut in `(sealed, target]`; the first carries the changes.
    fn seal_through(&mut self, target: Epoch) {
        let Some(hook) = &self.checkpoint else { return };
        if target < hook.first_epoch {
            return;
        }
        let Some(sealed) = self.sealed else {
            // The first cut this worker writes must come after its own source started: a part
            // holds this worker's partitions' offsets at its cut, and an earlier cut has none
            // (each process, and each worker, starts its source at its own wall-clock epoch, so
            // the frontier may pass cuts before it). Such a part, completed by the other workers'
            // parts, made a cut whose recovery restarted these partitions from `start_from`.
            let source_started = hook.offsets.borrow().keys().next().copied();
            if source_started.is_none_or(|started| target < started) {
                return;
            }
            self.sealed = Some(target);
            return;
        };
        if target <= sealed {
            return;
        }
        let (plan, symbols) = (self.store.plan(), self.store.symbols());
        let bucket_ms = if self.dedup.is_on() { self.dedup.bucket_ms() } else { 0 };
        let watermark = self.watermark.get();
        for cut in sealed + 1..=target {
            let store = &self.store;
            let users: Vec<(String, _)> = self
                .dirty
                .drain()
                .filter_map(|u| store.map_of(&u).get(&u).map(|s| (u.to_string(), s.snapshot(plan, symbols))))
                .collect();
            // An expired user who came back within the epoch is written with their new state.
            let mut expired = std::mem::take(&mut self.expired);
            expired.retain(|u| !store.map_of(u).contains_key(u.as_str()));
            let part = Part {
                cut,
                worker: self.worker,
                peers: self.peers,
                key_groups: self.key_groups,
                users,
                expired,
                dedup: runs(std::mem::take(&mut self.new_ids)),
                bucket_ms,
                watermark,
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

/// Groups new dedup ids by key group and bucket.
fn runs(mut ids: Vec<(u32, i64, Fingerprint)>) -> Vec<DedupRun> {
    ids.sort_unstable_by_key(|(kg, b, _)| (*kg, *b));
    let mut out: Vec<DedupRun> = Vec::new();
    for (key_group, bucket, id) in ids {
        match out.last_mut() {
            Some(r) if r.key_group == key_group && r.bucket == bucket => r.ids.push(id),
            _ => out.push(DedupRun { key_group, bucket, ids: vec![id] }),
        }
    }
    out
}

/// The deduplication state and the watermark a worker starts from: the checkpoint's, if it
/// restores one, else empty at `i64::MIN`.
fn restored_dedup(checkpoint: Option<&CheckpointHook>, dedup_horizon_ms: i64) -> (Dedup, i64) {
    let mut dedup = Dedup::new(dedup_horizon_ms);
    let Some(hook) = checkpoint else { return (dedup, i64::MIN) };
    let r = &hook.restore;
    dedup.advance(r.watermark);
    for run in &r.dedup {
        // Written with another horizon: the bucket that holds the old bucket's start.
        let bucket = if r.bucket_ms == dedup.bucket_ms() || r.bucket_ms <= 0 {
            run.bucket
        } else {
            dedup.bucket_of(run.bucket.saturating_mul(r.bucket_ms))
        };
        dedup.restore(bucket, run.ids.iter().copied());
    }
    (dedup, r.watermark)
}

impl<'scope> MaintainAttributes<'scope> for Stream<'scope, Epoch, Vec<Activity>> {
    fn maintain_attributes(
        self,
        progress: Stream<'scope, Epoch, Vec<Report>>,
        store: Arc<UserStore>,
        dedup_horizon_ms: i64,
        pending: Arc<AtomicUsize>,
        checkpoint: Option<CheckpointHook>,
    ) -> Stream<'scope, Epoch, Vec<()>> {
        let scope = self.scope();
        let (worker, peers) = (scope.index(), scope.peers());
        let mut builder = OperatorBuilder::new("MaintainAttributes".to_owned(), scope);
        let mut input = builder.new_input(self, Pipeline);
        let mut reports = builder.new_input(progress, Exchange::new(|r: &Report| u64::from(r.0)));
        let (output, stream) = builder.new_output::<Vec<()>>();
        let _output = OutputBuilder::<_, CapacityContainerBuilder<Vec<()>>>::from(output);
        let (dedup, restored) = restored_dedup(checkpoint.as_ref(), dedup_horizon_ms);
        let key_groups = store.key_groups();
        let mut m = Maintainer {
            users: UserSweep {
                covering: key_groups.covering(worker..worker + 1, peers),
                next: None,
                started_at: restored,
            },
            store,
            worker,
            peers,
            key_groups,
            dedup,
            watermark: Watermark::new(peers, restored),
            pending,
            checkpoint,
            sealed: None,
            dirty: HashSet::new(),
            expired: Vec::new(),
            new_ids: Vec::new(),
        };

        builder.build(move |mut caps| {
            // Held at the least epoch not yet applied everywhere, so the output frontier follows the input's.
            let mut cap = caps.pop();
            let mut stash: BTreeMap<Epoch, Vec<Activity>> = BTreeMap::new();
            // Emptied stash buffers, reused: a fresh one per epoch would grow by doubling and,
            // freed after its epoch, give its pages back to the OS for the next one to fault in
            // anew (`benches/RESULTS.md`).
            let mut spare: Vec<Vec<Activity>> = Vec::new();
            let mut last_sweep = Instant::now();
            move |frontiers| {
                // The least epoch the activities may still bring. Reports are not waited for: the
                // watermark folds those of earlier epochs that are here (waiting for the reports'
                // frontier would stash most batches, `benches/RESULTS.md`).
                let least = frontiers[0].frontier().iter().min().copied();
                reports.for_each(|time, data| {
                    if let Some(epoch) = time.least().copied() {
                        m.watermark.receive(epoch, data.drain(..));
                    }
                });
                // Epochs are applied in order, each after the cuts up to it are sealed: first the
                // stashed epochs the frontier has passed (they are older than anything in the
                // input, which the frontier still counts), then the input. Applying the input
                // first sealed the cuts up to its epoch without the stashed epochs before it, so
                // a cut's state lacked events its offsets covered (lost at a recovery from it),
                // and those events were applied with a watermark their epoch must not see
                // (resends counted twice, users expired early).
                while let Some(entry) = stash.first_entry() {
                    if least.is_some_and(|l| l < *entry.key()) {
                        break;
                    }
                    m.enter(*entry.key());
                    let mut batch = entry.remove();
                    m.apply(&mut batch);
                    if spare.len() < SPARE_STASHES && batch.capacity() * size_of::<Activity>() <= SPARE_STASH_BYTES {
                        spare.push(batch);
                    }
                }
                input.for_each(|time, data| {
                    let Some(epoch) = time.least().copied() else { return };
                    if least.is_none_or(|l| l >= epoch) {
                        m.enter(epoch);
                        m.apply(data);
                    } else {
                        stash.entry(epoch).or_insert_with(|| spare.pop().unwrap_or_default()).append(data);
                    }
                });
                if let Some(l) = least {
                    m.enter(l);
                }
                if last_sweep.elapsed() >= SWEEP_EVERY {
                    m.dedup.sweep(DEDUP_SWEEP_BUDGET);
                    m.sweep_users();
                    last_sweep = Instant::now();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activity::{TrackInfo, What};
    use crate::attributes::{AttributeDecl, Declaration, Plan};
    use crate::partition::Partition;
    use squall_enrichment::Symbols;
    use std::rc::Rc;
    use timely::dataflow::operators::{Concat, Input, Operator, Probe};

    fn play(user: &str, n: u128, symbols: &Symbols) -> Activity {
        let track = TrackInfo { genre: symbols.intern("rock"), artist: symbols.unknown(), duration_ms: None };
        let what = What::Play { track_id: "t".into(), ms_played: 200_000, track };
        // Ids are hashes in the dataflow: spread them over all bits.
        let dedup_key = n.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
        Activity { user: user.into(), dedup_key, ts: 1_000 * n as i64, event_id: n.to_string().into(), what }
    }

    /// Regression (issue 26, the 2-process catch-up through kills): epoch 3 waits in the stash
    /// while the frontier is at 2; the frontier then jumps to 5 while epoch 5's data is in the
    /// input. Cut 4 must hold epoch 3's user, and no cut up to 5 epoch 5's: the input used to be
    /// applied first, sealing cuts 3-5 without the stashed epoch, whose events a recovery from
    /// those cuts (offsets past them) then lost.
    #[test]
    fn a_cut_holds_the_stashed_epochs_before_it_when_the_frontier_jumps() {
        let (tx, rx) = crossbeam_channel::unbounded::<Part>();
        timely::execute_directly(move |worker| {
            let symbols = Symbols::default();
            let decl = AttributeDecl {
                name: "plays".into(),
                op: "count".into(),
                events: Some("song".into()),
                ..Default::default()
            };
            let plan = Arc::new(Plan::compile(&Declaration::new(&[decl]).unwrap(), &symbols));
            let store = Arc::new(UserStore::new(plan, symbols.clone(), 1));
            let offsets: EpochOffsets = Rc::default();
            let partition = Partition { topic: "t".into(), partition: 0 };
            for epoch in 0..8 {
                offsets.borrow_mut().insert(epoch, vec![(partition.clone(), epoch as i64 * 10)]);
            }
            let hook = CheckpointHook { offsets, parts: tx.clone(), restore: Restore::default(), first_epoch: 0 };
            let (mut slow, mut fast, mut reports, probe) = worker.dataflow::<Epoch, _, _>(|scope| {
                let (slow, first) = scope.new_input::<Vec<Activity>>();
                let (fast, second) = scope.new_input::<Vec<Activity>>();
                let (reports, progress) = scope.new_input::<Vec<Report>>();
                let pending = Arc::new(AtomicUsize::new(0));
                // `slow`'s data reaches the maintainer only once the frontier is at its epoch,
                // as a remote process's can, after the progress that moved the frontier.
                let first = first.unary_frontier::<CapacityContainerBuilder<Vec<Activity>>, _, _, _>(
                    Pipeline,
                    "Late",
                    |_, _| {
                        let mut held: Vec<(timely::dataflow::operators::Capability<Epoch>, Vec<Activity>)> = Vec::new();
                        move |(input, frontier), output| {
                            input.for_each(|cap, data| {
                                held.push((cap.retain_least(0).expect("a time"), std::mem::take(data)))
                            });
                            held.retain_mut(|(cap, data)| {
                                if frontier.frontier().iter().any(|f| f < cap.time()) {
                                    return true;
                                }
                                output.session(&*cap).give_iterator(data.drain(..));
                                false
                            });
                        }
                    },
                );
                let (probe, _) =
                    first.concat(second).maintain_attributes(progress, store, 60_000, pending, Some(hook)).probe();
                (slow, fast, reports, probe)
            });
            let run_until = |worker: &mut timely::worker::Worker, epoch: Epoch| {
                while probe.less_than(&epoch) {
                    worker.step();
                }
            };
            for input in [&mut slow, &mut fast] {
                input.advance_to(2);
            }
            reports.advance_to(2);
            slow.send(play("first", 1, &symbols));
            slow.flush();
            run_until(worker, 2);
            // Epoch 3 arrives while `slow` holds the frontier at 2: stashed.
            fast.advance_to(3);
            fast.send(play("stashed", 2, &symbols));
            fast.flush();
            for _ in 0..10 {
                worker.step();
            }
            fast.advance_to(5);
            for _ in 0..10 {
                worker.step();
            }
            // The frontier jumps to 5 with epoch 5's data in the input at once.
            slow.advance_to(5);
            slow.send(play("later", 3, &symbols));
            slow.flush();
            reports.advance_to(5);
            run_until(worker, 5);
            for input in [&mut slow, &mut fast] {
                input.advance_to(7);
            }
            reports.advance_to(7);
            run_until(worker, 7);
        });
        let parts: Vec<Part> = rx.try_iter().collect();
        let users_of = |cut: Epoch| -> Vec<&str> {
            parts.iter().filter(|p| p.cut == cut).flat_map(|p| p.users.iter().map(|(u, _)| u.as_str())).collect()
        };
        let through = |cut: Epoch| -> Vec<&str> { (0..=cut).flat_map(users_of).collect() };
        assert!(through(4).contains(&"stashed"), "cut 4 lacks epoch 3's user: {:?}", through(4));
        assert!(!through(5).contains(&"later"), "a cut up to 5 holds epoch 5's user: {:?}", through(5));
        assert!(users_of(6).contains(&"later"), "cut 6 lacks epoch 5's user: {:?}", users_of(6));
    }

    #[test]
    fn new_ids_are_grouped_by_key_group_and_bucket() {
        let id = |n: u64| Fingerprint { hi: n, lo: 0 };
        let r = runs(vec![(2, 5, id(1)), (1, 5, id(2)), (2, 5, id(3)), (2, 4, id(4))]);
        assert_eq!(
            r,
            vec![
                DedupRun { key_group: 1, bucket: 5, ids: vec![id(2)] },
                DedupRun { key_group: 2, bucket: 4, ids: vec![id(4)] },
                DedupRun { key_group: 2, bucket: 5, ids: vec![id(1), id(3)] },
            ]
        );
    }
}
