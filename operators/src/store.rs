//! The per-user state of one topology version, sharded by worker and readable while it changes.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use compact_str::CompactString;
use dashmap::DashMap;
use squall_enrichment::Symbols;

use std::sync::Arc;

use crate::attributes::{Attributes, AttributesView};
use crate::plan::{Plan, UserState};

/// The hash that places a user: which worker owns them and which key group holds them
/// ([`crate::key_groups`]).
#[inline]
pub fn user_hash(user_id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(user_id.as_bytes())
}

/// A fast hasher for string keys (user ids, catalogue ids): seeded xxh3 over the bytes, several
/// times faster than the default SipHash on short ids (measured in `benches/RESULTS.md`).
#[derive(Clone, Copy)]
pub struct StrHasher(u64);

impl Hasher for StrHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        // `str` hashes as its bytes then 0xff: keep the low bits a bijection of xxh3's and mix them upwards.
        self.0 = (self.0 ^ u64::from(i)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Builds [`StrHasher`]s with a seed drawn per map, so that colliding ids cannot be precomputed.
#[derive(Clone, Copy)]
pub struct StrHash(u64);

impl Default for StrHash {
    fn default() -> Self {
        StrHash(RandomState::new().hash_one(0x5ba1u64))
    }
}

impl BuildHasher for StrHash {
    type Hasher = StrHasher;
    #[inline]
    fn build_hasher(&self) -> StrHasher {
        StrHasher(self.0)
    }
}

/// One worker's users and their state.
pub type Shard = DashMap<CompactString, UserState, StrHash>;

/// Per-user state, one shard per worker. The owning worker writes its shard; HTTP readers take
/// short read locks on it, so an attribute is readable as soon as its event is applied.
pub struct UserStore {
    plan: Arc<Plan>,
    symbols: Symbols,
    shards: Vec<Shard>,
    counts: Vec<WorkerCounts>,
}

/// One worker's counts: the only record of events applied and resends dropped (exported as
/// metrics by whoever serves the store). Aligned so that workers never share a cache line.
#[derive(Default)]
#[repr(align(64))]
struct WorkerCounts {
    applied: AtomicU64,
    duplicates: AtomicU64,
}

impl UserStore {
    /// An empty store for `peers` workers, keeping the attributes of `plan` (compiled with `symbols`).
    pub fn new(plan: Arc<Plan>, symbols: Symbols, peers: usize) -> Self {
        UserStore {
            plan,
            symbols,
            shards: (0..peers.max(1)).map(|_| Shard::default()).collect(),
            counts: (0..peers.max(1)).map(|_| WorkerCounts::default()).collect(),
        }
    }

    /// The plan of the attributes this store keeps.
    pub fn plan(&self) -> &Arc<Plan> {
        &self.plan
    }

    /// The symbols its state is written in.
    pub fn symbols(&self) -> &Symbols {
        &self.symbols
    }

    /// The index of the worker that owns `user_id` ([`crate::key_groups::owner`]).
    pub fn owner(&self, user_id: &str) -> usize {
        crate::key_groups::owner(user_id, self.shards.len())
    }

    /// The shard of worker `index`.
    pub fn shard(&self, index: usize) -> &Shard {
        &self.shards[index]
    }

    /// The attributes of `user_id`, if any event of theirs was applied.
    pub fn attributes(&self, user_id: &str) -> Option<Attributes> {
        self.view(user_id, |v| v.to_attributes())
    }

    /// Calls `f` with the attributes of `user_id` as they serialise, if any event of theirs was
    /// applied: what queries use, as it copies nothing. `f` runs under the read lock of the user's
    /// shard (which holds up the owning worker's writes to that part of the shard), so it should
    /// only serialise.
    pub fn view<R>(&self, user_id: &str, f: impl FnOnce(AttributesView<'_>) -> R) -> Option<R> {
        let state = self.shards[self.owner(user_id)].get(user_id)?;
        Some(f(AttributesView::new(&state, &self.plan, &self.symbols)))
    }

    /// Adds to worker `worker`'s counts of applied events and of resends dropped.
    pub fn record(&self, worker: usize, applied: u64, duplicates: u64) {
        let c = &self.counts[worker];
        c.applied.fetch_add(applied, Relaxed);
        c.duplicates.fetch_add(duplicates, Relaxed);
    }

    /// Events applied so far by worker `worker`, and resends it dropped.
    pub fn worker_counts(&self, worker: usize) -> (u64, u64) {
        let c = &self.counts[worker];
        (c.applied.load(Relaxed), c.duplicates.load(Relaxed))
    }

    /// Events applied so far (resends not included).
    pub fn applied(&self) -> u64 {
        self.counts.iter().map(|c| c.applied.load(Relaxed)).sum()
    }

    /// Resends dropped so far.
    pub fn duplicates(&self) -> u64 {
        self.counts.iter().map(|c| c.duplicates.load(Relaxed)).sum()
    }

    /// Users with state.
    pub fn users(&self) -> usize {
        self.shards.iter().map(DashMap::len).sum()
    }
}
