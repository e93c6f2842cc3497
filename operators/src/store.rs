//! The per-user state of one topology version, kept per key group and readable while it changes.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use compact_str::CompactString;
use dashmap::DashMap;
use smallvec::SmallVec;
use squall_enrichment::Symbols;
pub use squall_enrichment::{StrHash, StrHasher};

use std::sync::Arc;

use crate::attributes::{Attributes, AttributesView, Plan, UserState};
use crate::key_groups::{self, KeyGroups};

/// The users of a contiguous range of key groups and their state.
pub type Shard = DashMap<CompactString, UserState, StrHash>;

/// At most this many maps hold a store's users: each holds a contiguous range of key groups.
///
/// # Notes
/// Fewer maps than key groups keep the maps' lock words (which every write takes) in the
/// worker's cache, where one map per key group (4096, 8192 locks) would not (`benches/RESULTS.md`,
/// "hot path"). A sweep for expired users
/// goes over a whole map at a time, so at 100 M users per process a map holds about 400k users.
pub const MAPS: u32 = 256;

/// Inner shards (locks) per map: DashMap's least.
const SHARDS_PER_MAP: usize = 2;

/// Shards in a store at most, `MAPS * SHARDS_PER_MAP`: the size of [`UserStore::lock`]'s bit set.
const PLACES: usize = MAPS as usize * SHARDS_PER_MAP;

/// The table inside each shard of a [`Shard`] (dashmap's `raw-api`).
type Table = hashbrown::raw::RawTable<(CompactString, dashmap::SharedValue<UserState>)>;

/// Where a user lives in a [`UserStore`]: see [`UserStore::slot`].
#[derive(Clone, Copy, Debug)]
pub struct Slot {
    map: usize,
    shard: usize,
    hash: u64,
    /// The user's key group.
    pub key_group: u32,
}

/// A shard, `(map, shard)`, and its write lock.
type Locked<'a> = ((usize, usize), dashmap::RwLockWriteGuard<'a, Table>);

/// The shards of a few users, write-locked together, so that the lookups of all of them come
/// before any state is changed and their cache misses overlap. Each write to a [`Shard`] through
/// its own API takes and releases a lock, and a locked instruction waits for every load before
/// it, so lookups one by one cannot overlap.
/// Readers of these users wait until the chunk is dropped.
pub struct Chunk<'a> {
    store: &'a UserStore,
    guards: SmallVec<[Locked<'a>; 16]>,
}

impl Chunk<'_> {
    fn table(&mut self, slot: &Slot) -> &mut Table {
        let place = (slot.map, slot.shard);
        &mut self.guards.iter_mut().find(|(p, _)| *p == place).expect("the chunk locked the user's shard").1
    }

    /// Looks `user_id` up and reads the first word of their state: a value to feed to
    /// [`std::hint::black_box`], so that the loads happen now.
    #[inline]
    pub fn touch(&mut self, slot: &Slot, user_id: &str) -> u64 {
        let table = self.table(slot);
        table
            .get(slot.hash, |(k, _)| k.as_str() == user_id)
            .map_or(0, |(_, v)| v.get().words().first().copied().map_or(1, u64::from))
    }

    /// The state of `user_id`, empty if they had none.
    #[inline]
    pub fn state(&mut self, slot: &Slot, user_id: &str) -> &mut UserState {
        let store = self.store;
        let map = &store.groups[slot.map];
        let table = self.table(slot);
        if table.get(slot.hash, |(k, _)| k.as_str() == user_id).is_none() {
            let entry = (CompactString::from(user_id), dashmap::SharedValue::new(UserState::default()));
            table.insert(slot.hash, entry, |(k, _)| map.hash_usize(k) as u64);
        }
        table.get_mut(slot.hash, |(k, _)| k.as_str() == user_id).expect("just inserted").1.get_mut()
    }
}

/// Per-user state, in [`MAPS`] maps over the key groups. A map's users are written by the worker
/// that owns each of them (two workers share a map only at a boundary, never a user); HTTP readers
/// take short read locks, so an attribute is readable as soon as its event is applied.
pub struct UserStore {
    plan: Arc<Plan>,
    symbols: Symbols,
    key_groups: KeyGroups,
    peers: usize,
    user_ttl_ms: i64,
    groups: Vec<Shard>,
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
    /// An empty store for `peers` workers, keeping the attributes of `plan` (compiled with
    /// `symbols`) in the default number of key groups.
    pub fn new(plan: Arc<Plan>, symbols: Symbols, peers: usize) -> Self {
        Self::with_key_groups(plan, symbols, peers, KeyGroups::default())
    }

    /// An empty store for `peers` workers with `key_groups` groups.
    pub fn with_key_groups(plan: Arc<Plan>, symbols: Symbols, peers: usize, key_groups: KeyGroups) -> Self {
        // Two inner shards per map: hundreds of maps keep contention low.
        let group = || Shard::with_hasher_and_shard_amount(StrHash::default(), SHARDS_PER_MAP);
        UserStore {
            plan,
            symbols,
            key_groups,
            peers: peers.max(1),
            user_ttl_ms: 0,
            groups: (0..key_groups.count().min(MAPS)).map(|_| group()).collect(),
            counts: (0..peers.max(1)).map(|_| WorkerCounts::default()).collect(),
        }
    }

    /// Keeps a user only while their newest event is at most `ttl_ms` of event time behind the
    /// newest event of their worker (`state.user_ttl`; 0 keeps every user). See
    /// [`crate::maintain`].
    pub fn with_user_ttl(mut self, ttl_ms: i64) -> Self {
        self.user_ttl_ms = ttl_ms.max(0);
        self
    }

    /// `state.user_ttl` in milliseconds (0: off).
    pub fn user_ttl_ms(&self) -> i64 {
        self.user_ttl_ms
    }

    /// The plan of the attributes this store keeps.
    pub fn plan(&self) -> &Arc<Plan> {
        &self.plan
    }

    /// The symbols its state is written in.
    pub fn symbols(&self) -> &Symbols {
        &self.symbols
    }

    /// The index of the worker that owns `user_id`.
    pub fn owner(&self, user_id: &str) -> usize {
        key_groups::owner(user_id, self.peers)
    }

    /// Workers of the version.
    pub fn peers(&self) -> usize {
        self.peers
    }

    /// The version's key groups.
    pub fn key_groups(&self) -> KeyGroups {
        self.key_groups
    }

    /// The map holding the users of key group `group` (and of its neighbours in the same map).
    #[inline]
    pub fn group(&self, group: u32) -> &Shard {
        &self.groups[self.map_index(group)]
    }

    #[inline]
    fn map_index(&self, group: u32) -> usize {
        (u64::from(group) * self.groups.len() as u64 / u64::from(self.key_groups.count())) as usize
    }

    /// The maps holding the users of key groups `groups`, in order.
    pub fn maps_covering(&self, groups: Range<u32>) -> &[Shard] {
        if groups.is_empty() {
            return &[];
        }
        &self.groups[self.map_index(groups.start)..=self.map_index(groups.end - 1)]
    }

    /// Where `user_id` lives: its key group, map, the map's shard, and its hash.
    #[inline]
    pub fn slot(&self, user_id: &str) -> Slot {
        let key_group = self.key_groups.of(user_id);
        let map = self.map_index(key_group);
        let hash = self.groups[map].hash_usize(&user_id);
        Slot { map, shard: self.groups[map].determine_shard(hash), hash: hash as u64, key_group }
    }

    /// Write-locks the shards holding `slots` for a [`Chunk`] of writes.
    pub fn lock<'a>(&'a self, slots: impl Iterator<Item = &'a Slot>) -> Chunk<'a> {
        // One order for every worker: two that share a map at a boundary cannot deadlock. The
        // shards are numbered `map * SHARDS_PER_MAP + shard` (fewer than `PLACES`); a bit set puts
        // them in order and drops repeats without sorting.
        let mut places = [0u64; PLACES / 64];
        for s in slots {
            let place = s.map * SHARDS_PER_MAP + s.shard;
            places[place / 64] |= 1 << (place % 64);
        }
        let mut guards = SmallVec::new();
        for (word, mut bits) in places.into_iter().enumerate() {
            while bits != 0 {
                let place = word * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let (m, s) = (place / SHARDS_PER_MAP, place % SHARDS_PER_MAP);
                guards.push(((m, s), self.groups[m].shards()[s].write()));
            }
        }
        Chunk { store: self, guards }
    }

    /// The map that holds `user_id`.
    pub fn map_of(&self, user_id: &str) -> &Shard {
        self.group(self.key_groups.of(user_id))
    }

    /// The attributes of `user_id`, if any event of theirs was applied.
    pub fn attributes(&self, user_id: &str) -> Option<Attributes> {
        self.view(user_id, |v| v.to_attributes())
    }

    /// Calls `f` with the attributes of `user_id` as they serialise, if any event of theirs was
    /// applied: what queries use, as it copies nothing. `f` runs under a read lock of the user's key
    /// group (which holds up the owning worker's writes to that part of the group), so it should
    /// only serialise.
    pub fn view<R>(&self, user_id: &str, f: impl FnOnce(AttributesView<'_>) -> R) -> Option<R> {
        let state = self.map_of(user_id).get(user_id)?;
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
        self.groups.iter().map(DashMap::len).sum()
    }
}
