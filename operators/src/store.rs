//! The per-user state of one topology version, sharded by worker and readable while it changes.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use compact_str::CompactString;
use dashmap::DashMap;
use squall_enrichment::Symbols;

use crate::attributes::{AttributeSet, Attributes, UserState};

/// The hash that decides which worker owns a user; the dataflow exchanges on it.
#[inline]
pub fn user_hash(user_id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(user_id.as_bytes())
}

/// Per-user state, one shard per worker. The owning worker writes its shard; HTTP readers take
/// short read locks on it, so an attribute is readable as soon as its event is applied.
pub struct UserStore {
    set: AttributeSet,
    symbols: Symbols,
    shards: Vec<DashMap<CompactString, UserState>>,
    applied: AtomicU64,
    duplicates: AtomicU64,
}

impl UserStore {
    /// An empty store for `peers` workers.
    pub fn new(set: AttributeSet, symbols: Symbols, peers: usize) -> Self {
        UserStore {
            set,
            symbols,
            shards: (0..peers.max(1)).map(|_| DashMap::new()).collect(),
            applied: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
        }
    }

    /// The attribute set this store maintains.
    pub fn attribute_set(&self) -> AttributeSet {
        self.set
    }

    /// The symbols its state is written in.
    pub fn symbols(&self) -> &Symbols {
        &self.symbols
    }

    /// The index of the worker that owns `user_id`.
    pub fn owner(&self, user_id: &str) -> usize {
        (user_hash(user_id) % self.shards.len() as u64) as usize
    }

    /// The shard of worker `index`.
    pub fn shard(&self, index: usize) -> &DashMap<CompactString, UserState> {
        &self.shards[index]
    }

    /// The attributes of `user_id`, if any event of theirs was applied.
    pub fn attributes(&self, user_id: &str) -> Option<Attributes> {
        let state = self.shards[self.owner(user_id)].get(user_id)?;
        Some(state.attributes(self.set, &self.symbols))
    }

    /// Adds to the counts of applied events and of resends dropped.
    pub fn record(&self, applied: u64, duplicates: u64) {
        self.applied.fetch_add(applied, Relaxed);
        self.duplicates.fetch_add(duplicates, Relaxed);
    }

    /// Events applied so far (resends not included).
    pub fn applied(&self) -> u64 {
        self.applied.load(Relaxed)
    }

    /// Resends dropped so far.
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Relaxed)
    }

    /// Users with state.
    pub fn users(&self) -> usize {
        self.shards.iter().map(DashMap::len).sum()
    }
}
