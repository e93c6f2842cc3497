//! Event-id deduplication within a horizon of event time, in about 10 bytes per retained id.
//!
//! # Notes
//! An event is dropped as a resend when an event with the same key (topic kind, user, event_id)
//! was counted before and has not expired. Event time is cut into buckets of `horizon / 8`; an id
//! is kept while its bucket is *live*: not older than the bucket of `watermark - horizon`. The
//! watermark is given from outside ([`Dedup::advance`]): the maintainer passes the event time no
//! unread event can be behind (the least, over the input partitions still being read, of the
//! newest `ts` each has delivered; see [`crate::watermark`]), never the newest `ts` seen. So a
//! resend is always dropped while its own partition has not moved a horizon past it, in whatever
//! order the partitions are read; an event already older than the horizon when it arrives is
//! counted and not kept. Ids expire by whole buckets. A horizon of zero turns deduplication off.
//!
//! The tables' 4-bit tags name 15 buckets at a time: from the oldest live one, or, before the
//! first watermark, from 7 buckets before the first id's. Ids outside that window (inputs read
//! unevenly: before the first watermark, or catching up) wait in a side map, exactly as well,
//! and move into the tables when the window reaches them.
//!
//! **Structure.** The 128-bit key is reduced to an 80-bit [`Fingerprint`] (what checkpoints
//! store, 10 bytes). In memory its top 14 bits pick one of 16384 sub-tables, and the next 60 are
//! kept in a 64-bit word together with 4 bits of the id's bucket number (`bucket mod 16`). A
//! sub-table is a bucketized cuckoo hash table: cache-line buckets of 8 words, each word in one
//! of two buckets chosen from its bits, so a lookup reads two cache lines (independently, so
//! they load in parallel); a new word goes to the emptier of its two, which keeps buckets evenly
//! filled and halves how often both are full and words must move; a sub-table grows by a quarter
//! when it is 95% full, so tables are 76-95% full (under 10 bytes per id from about 2 M ids a
//! worker on). A word whose bucket has expired counts as free; a sub-table is swept (expired
//! words cleared) lazily before the 4-bit tags could wrap, and otherwise a few sub-tables per
//! [`Dedup::sweep`] call.
//!
//! **Exactness.** Two different events are taken for each other only when their keys agree in
//! the 74 bits compared (14 of them implicit in the sub-table): for a new event the chance is
//! about `n / 2^60`, where `n` is the number of ids retained in its sub-table, i.e. `N / 2^74` for
//! `N` ids retained by the worker. At 8 M events/s over 160 workers with a 10-minute horizon
//! (`N` = 30 M) that is 1.6e-15 per event: one event in 600 trillion, about once in two and a half
//! years for the whole cluster. The figures for the chosen horizon are in ARCHITECTURE.md.

use std::collections::{BTreeMap, HashSet};

use crate::event::EventKind;

/// The key of an event for deduplication.
///
/// # Notes
/// The xxh3-128 of `kind, len(user_id) as u32 LE, user_id, event_id`. Checkpoints store these
/// keys (their [`Fingerprint`]), so the bytes hashed must never change.
#[inline]
pub fn dedup_key(kind: EventKind, user_id: &str, event_id: &str) -> u128 {
    let (user, event) = (user_id.as_bytes(), event_id.as_bytes());
    let len = 5 + user.len() + event.len();
    // One-shot hashing of a stack copy: the streaming hasher's set-up cost more than the hash.
    let mut buf = [0u8; 128];
    if len > buf.len() {
        return dedup_key_streamed(kind, user, event);
    }
    buf[0] = kind as u8;
    buf[1..5].copy_from_slice(&(user.len() as u32).to_le_bytes());
    buf[5..5 + user.len()].copy_from_slice(user);
    buf[5 + user.len()..len].copy_from_slice(event);
    xxhash_rust::xxh3::xxh3_128(&buf[..len])
}

fn dedup_key_streamed(kind: EventKind, user: &[u8], event: &[u8]) -> u128 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&[kind as u8]);
    h.update(&(user.len() as u32).to_le_bytes());
    h.update(user);
    h.update(event);
    h.digest128()
}

/// Time buckets per horizon: ids expire in steps of `horizon / BUCKETS`.
pub const BUCKETS: i64 = 8;

/// Sub-tables per worker (`2^SUB_BITS`).
const SUB_BITS: u32 = 14;

/// The most a sub-table is filled to, in percent of its words: past about 90% a cuckoo insert
/// moves words more and more often, each move a cache miss; 95 gives up a little speed to keep
/// the 10-byte budget (`benches/RESULTS.md`)...
const MAX_LOAD: usize = 95;
/// ...when it is full and still this full after a sweep, it grows...
const GROW_LOAD: usize = 90;
/// ...by `1 / GROWTH` (every growth moves each word again: about `GROWTH + 1` moves per id over
/// a table's growth, against a table between `GROW_LOAD * GROWTH / (GROWTH + 1)` and `MAX_LOAD`
/// full)...
const GROWTH: usize = 4;
/// ...and a sparse one (under 60%) is rebuilt to this.
const REBUILT_LOAD: usize = 85;

/// Buckets are tagged modulo this in memory (4 bits).
const TAGS: i64 = 16;

/// The top 80 bits of a dedup key: what checkpoints keep of an id (10 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Fingerprint {
    /// Bits 64..128 of the key.
    pub hi: u64,
    /// Bits 48..64.
    pub lo: u16,
}

impl Fingerprint {
    /// The fingerprint of `key`.
    #[inline]
    pub fn of(key: u128) -> Self {
        Fingerprint { hi: (key >> 64) as u64, lo: (key >> 48) as u16 }
    }

    /// The sub-table and the 60 bits kept in it (never zero: zero marks an empty slot).
    #[inline]
    fn split(self) -> (usize, u64) {
        let sub = (self.hi >> (64 - SUB_BITS)) as usize;
        let rest = ((self.hi & ((1 << (64 - SUB_BITS)) - 1)) << (SUB_BITS - 4)) | u64::from(self.lo >> 6);
        (sub, rest.max(1))
    }
}

/// A cache line of 8 words: `fingerprint bits << 4 | bucket tag`, or 0 when empty.
#[derive(Clone, Copy, Default)]
#[repr(align(64))]
struct Slots([u64; 8]);

/// What [`SubTable::probe`] found.
enum Probe {
    /// The fingerprint, live.
    Found,
    /// Not the fingerprint; a free slot (bucket, word) for it.
    Free(usize, usize),
    /// Neither.
    Full,
}

/// One sub-table: a bucketized cuckoo hash table.
#[derive(Clone, Default)]
struct SubTable {
    slots: Vec<Slots>,
    /// Occupied words, expired ones included until they are swept or reused.
    used: u32,
    /// Every word of a bucket older than this is gone; every word left is of a bucket in
    /// `swept..swept + TAGS`, so its tag names its bucket.
    swept: i64,
}

#[inline]
fn reduce(bits60: u64, n: usize) -> usize {
    ((u128::from(bits60) * n as u128) >> 60) as usize
}

/// The two buckets a word's fingerprint bits may live in.
#[inline]
fn homes(fp: u64, n: usize) -> (usize, usize) {
    let other = fp.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 4;
    (reduce(fp, n), reduce(other, n))
}

impl SubTable {
    /// The bucket a word's tag names (valid while the sweep rule holds).
    #[inline]
    fn bucket_of(&self, word: u64) -> i64 {
        let tag = (word & 15) as i64;
        self.swept + (tag - self.swept).rem_euclid(TAGS)
    }

    #[inline]
    fn live(&self, word: u64, oldest: i64) -> bool {
        word != 0 && self.bucket_of(word) >= oldest
    }

    fn find(&self, fp: u64, oldest: i64) -> bool {
        if self.slots.is_empty() {
            return false;
        }
        let (a, b) = homes(fp, self.slots.len());
        let hit = |i: usize| self.slots[i].0.iter().any(|&w| w >> 4 == fp && self.live(w, oldest));
        hit(a) || hit(b)
    }

    /// Looks for `fp` among the live words of its two buckets, and for a free (empty or expired)
    /// slot to put it in: [`SubTable::find`] and the first step of [`SubTable::place`] in one pass.
    #[inline]
    fn probe(&self, fp: u64, oldest: i64) -> Probe {
        if self.slots.is_empty() {
            return Probe::Full;
        }
        let (a, b) = homes(fp, self.slots.len());
        // The free slot goes in the emptier of the two buckets (ties: the first), which keeps
        // buckets evenly filled, so that both are full, and words must move, far less often.
        let mut free = [(0usize, 0usize); 2];
        for (k, i) in [a, b].into_iter().enumerate() {
            for (j, &w) in self.slots[i].0.iter().enumerate() {
                if !self.live(w, oldest) {
                    if free[k].0 == 0 {
                        free[k].1 = j;
                    }
                    free[k].0 += 1;
                } else if w >> 4 == fp {
                    return Probe::Found;
                }
            }
        }
        match free {
            [(0, _), (0, _)] => Probe::Full,
            [(fa, ja), (fb, jb)] => {
                if fa >= fb {
                    Probe::Free(a, ja)
                } else {
                    Probe::Free(b, jb)
                }
            }
        }
    }

    /// Puts `word` in a free (empty or expired) slot of one of its buckets, moving others to
    /// their other bucket if both are full. False if no place was found.
    fn place(&mut self, mut word: u64, oldest: i64, rng: &mut u64) -> Result<(), u64> {
        let n = self.slots.len();
        if n == 0 {
            return Err(word);
        }
        let mut at = homes(word >> 4, n).0;
        for kick in 0..128 {
            let (a, b) = homes(word >> 4, n);
            // Its two buckets (callers come here when both are full, or nearly: no choice to
            // make), then the one it was sent to.
            for i in if kick == 0 { [a, b] } else { [at, at] } {
                if let Some(j) = (0..8).find(|&j| !self.live(self.slots[i].0[j], oldest)) {
                    if self.slots[i].0[j] == 0 {
                        self.used += 1;
                    }
                    self.slots[i].0[j] = word;
                    return Ok(());
                }
            }
            if kick == 0 {
                // Both full: first look one step further, at every word's other bucket (sixteen
                // independent loads, which overlap, instead of a walk of dependent ones).
                for i in [a, b] {
                    for j in 0..8 {
                        let w = self.slots[i].0[j];
                        let (wa, wb) = homes(w >> 4, n);
                        let other = if wa == i { wb } else { wa };
                        if other == i {
                            continue;
                        }
                        if let Some(k) = (0..8).find(|&k| !self.live(self.slots[other].0[k], oldest)) {
                            if self.slots[other].0[k] == 0 {
                                self.used += 1;
                            }
                            self.slots[other].0[k] = w;
                            self.slots[i].0[j] = word;
                            return Ok(());
                        }
                    }
                }
            }
            // Evict a victim from one of them and send it to its other bucket.
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            let i = if kick == 0 { if *rng & 8 == 0 { a } else { b } } else { at };
            let j = (*rng & 7) as usize;
            let victim = std::mem::replace(&mut self.slots[i].0[j], word);
            word = victim;
            let (va, vb) = homes(word >> 4, n);
            at = if va == i { vb } else { va };
        }
        Err(word)
    }

    /// Clears expired words; shrinks a table that became sparse.
    fn sweep(&mut self, oldest: i64, work: &mut Work) {
        let mut used = 0;
        for s in &mut self.slots {
            for w in &mut s.0 {
                if *w != 0 {
                    let tag = (*w & 15) as i64;
                    if self.swept + (tag - self.swept).rem_euclid(TAGS) < oldest {
                        *w = 0;
                    } else {
                        used += 1;
                    }
                }
            }
        }
        self.used = used;
        self.swept = self.swept.max(oldest);
        let capacity = self.slots.len() * 8;
        if capacity > 8 && (used as usize) * 10 < capacity * 6 {
            let target = ((used as usize) * 100).div_ceil(8 * REBUILT_LOAD).max(1);
            self.rebuild(target, oldest, work, None);
        }
    }

    /// Moves every live word into a table of `buckets` buckets (more if they do not fit), plus
    /// `extra`.
    fn rebuild(&mut self, mut buckets: usize, oldest: i64, work: &mut Work, extra: Option<u64>) {
        let Work { rng, words, fill } = work;
        words.clear();
        words.extend(self.slots.iter().flat_map(|s| s.0).filter(|&w| self.live(w, oldest)).chain(extra));
        'grow: loop {
            let mut t = SubTable { slots: vec![Slots::default(); buckets.max(1)], used: 0, swept: self.swept };
            let n = t.slots.len();
            // Words per bucket of `t`, each bucket filled from its first word on (every word of
            // `t` is live, so `place` too takes the first empty one).
            fill.clear();
            fill.resize(n, 0);
            for &w in words.iter() {
                // Into the emptier of its buckets, as `probe` does.
                let (a, b) = homes(w >> 4, n);
                let i = if fill[b] < fill[a] { b } else { a };
                if fill[i] < 8 {
                    t.slots[i].0[usize::from(fill[i])] = w;
                    fill[i] += 1;
                    t.used += 1;
                } else if t.place(w, oldest, rng).is_ok() {
                    // Moved by `place`: count again (rare, the table being at most 85% full).
                    for (f, s) in fill.iter_mut().zip(&t.slots) {
                        *f = s.0.iter().filter(|&&x| x != 0).count() as u8;
                    }
                } else {
                    buckets += buckets / 8 + 1;
                    continue 'grow;
                }
            }
            *self = t;
            return;
        }
    }
}

/// The event ids seen within the horizon. See the module notes.
#[derive(Clone)]
pub struct Dedup {
    horizon_ms: i64,
    bucket_ms: i64,
    tables: Box<[SubTable]>,
    watermark: i64,
    /// The oldest live bucket.
    oldest: i64,
    /// The tables' window, `base..=newest` (15 buckets), `base >= oldest`; set at the first
    /// watermark or the first id, whichever comes first.
    base: i64,
    newest: i64,
    anchored: bool,
    /// Ids of live buckets outside the window, by bucket: they move into the tables when the
    /// window reaches them.
    aside: BTreeMap<i64, HashSet<Fingerprint>>,
    /// Ids added to the tables per bucket, by `bucket mod TAGS`: (bucket, count).
    counts: [(i64, u64); TAGS as usize],
    cursor: usize,
    work: Work,
}

/// What sweeps and rebuilds of sub-tables reuse: the random state of `place`'s evictions, and
/// buffers (a sub-table of a few kB each time would go through the allocator's slow path).
#[derive(Clone, Default)]
struct Work {
    rng: u64,
    words: Vec<u64>,
    fill: Vec<u8>,
}

impl std::fmt::Debug for Dedup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dedup")
            .field("horizon_ms", &self.horizon_ms)
            .field("watermark", &self.watermark)
            .field("ids", &self.len())
            .finish()
    }
}

impl Dedup {
    /// Keeps ids for `horizon_ms` of event time behind the watermark (0: off).
    pub fn new(horizon_ms: i64) -> Self {
        let on = horizon_ms > 0;
        let bucket_ms = (horizon_ms / BUCKETS).max(1);
        let oldest = i64::MIN.div_euclid(bucket_ms);
        Dedup {
            horizon_ms,
            bucket_ms,
            tables: if on { vec![SubTable::default(); 1 << SUB_BITS].into() } else { Box::default() },
            watermark: i64::MIN,
            oldest,
            base: oldest,
            newest: oldest + TAGS - 2,
            anchored: false,
            aside: BTreeMap::new(),
            counts: [(i64::MIN, 0); TAGS as usize],
            cursor: 0,
            work: Work { rng: 0x2545_F491_4F6C_DD1D, ..Work::default() },
        }
    }

    /// Whether deduplication is on.
    pub fn is_on(&self) -> bool {
        self.horizon_ms > 0
    }

    /// Event-time milliseconds per bucket.
    pub fn bucket_ms(&self) -> i64 {
        self.bucket_ms
    }

    /// The bucket of event time `ts`.
    #[inline]
    pub fn bucket_of(&self, ts: i64) -> i64 {
        ts.div_euclid(self.bucket_ms)
    }

    /// Moves the watermark to `watermark` if it is newer: ids more than the horizon behind it
    /// expire, and ids kept aside move into the tables once their bucket is in the window.
    pub fn advance(&mut self, watermark: i64) {
        if watermark <= self.watermark || !self.is_on() {
            return;
        }
        self.watermark = watermark;
        self.oldest = self.bucket_of(watermark.saturating_sub(self.horizon_ms));
        let base = if self.anchored { self.base.max(self.oldest) } else { self.oldest };
        self.set_window(base);
        let expired: Vec<i64> = self.aside.range(..self.oldest).map(|(b, _)| *b).collect();
        for b in expired {
            self.aside.remove(&b);
        }
        let fitting: Vec<i64> = self.aside.range(self.base..=self.newest).map(|(b, _)| *b).collect();
        for b in fitting {
            let ids = self.aside.remove(&b).unwrap_or_default();
            self.restore(b, ids);
        }
    }

    /// Makes `base..=base + 14` the tables' window.
    fn set_window(&mut self, base: i64) {
        self.anchored = true;
        self.base = base;
        self.newest = base.saturating_add(TAGS - 2);
    }

    /// Whether ids of `bucket` (live) go to the tables; anchors the window at the first id.
    #[inline]
    fn in_window(&mut self, bucket: i64) -> bool {
        if !self.anchored {
            self.anchor(bucket);
        }
        bucket >= self.base && bucket <= self.newest
    }

    /// Places the window around the first id's `bucket`, before any watermark.
    #[cold]
    fn anchor(&mut self, bucket: i64) {
        self.set_window((bucket - (TAGS - 2) / 2).max(self.oldest));
    }

    /// Records `key`; true if it is new (count the event), false if it is a resend.
    #[inline]
    pub fn first_time(&mut self, key: u128, ts: i64) -> bool {
        if !self.is_on() {
            return true;
        }
        let bucket = self.bucket_of(ts);
        if bucket < self.oldest {
            // Older than the horizon already: counted, and not kept.
            return true;
        }
        if !self.in_window(bucket) {
            return self.first_time_aside(bucket, Fingerprint::of(key));
        }
        let (sub, fp) = Fingerprint::of(key).split();
        self.keep_sweep_rule(sub, bucket);
        match self.tables[sub].probe(fp, self.base) {
            Probe::Found => return false,
            Probe::Free(i, j) => {
                // One pass found it absent and a free slot in one of its buckets: take it.
                let t = &mut self.tables[sub];
                if (t.used as usize + 1) * 100 <= t.slots.len() * 8 * MAX_LOAD || t.slots[i].0[j] != 0 {
                    if t.slots[i].0[j] == 0 {
                        t.used += 1;
                    }
                    t.slots[i].0[j] = fp << 4 | bucket.rem_euclid(TAGS) as u64;
                    self.count(bucket);
                    return true;
                }
            }
            Probe::Full => {}
        }
        self.insert(sub, fp, bucket);
        true
    }

    /// [`Dedup::first_time`] for an id outside the tables' window: kept out of the hot path.
    #[cold]
    #[inline(never)]
    fn first_time_aside(&mut self, bucket: i64, id: Fingerprint) -> bool {
        self.aside.entry(bucket).or_default().insert(id)
    }

    /// Reads the first memory [`Dedup::first_time`] for `key` reads (its sub-table's header) and
    /// returns a value depending on it. Calling it some events ahead lets the misses of several
    /// events overlap instead of following one another (a load, not an `unsafe` prefetch).
    #[inline]
    pub fn touch_header(&self, key: u128) -> u64 {
        if !self.is_on() {
            return 0;
        }
        let (sub, _) = Fingerprint::of(key).split();
        self.tables[sub].slots.len() as u64
    }

    /// Reads the two cache lines [`Dedup::first_time`] for `key` compares against; see
    /// [`Dedup::touch_header`].
    #[inline]
    pub fn touch_slots(&self, key: u128) -> u64 {
        if !self.is_on() {
            return 0;
        }
        let (sub, fp) = Fingerprint::of(key).split();
        let slots = &self.tables[sub].slots;
        if slots.is_empty() {
            return 0;
        }
        let (a, b) = homes(fp, slots.len());
        slots[a].0[0] ^ slots[b].0[7]
    }

    /// The bucket an id with event time `ts` is kept in, if it is kept (what a checkpoint writes).
    #[inline]
    pub fn kept_in(&self, ts: i64) -> Option<i64> {
        let b = self.bucket_of(ts);
        (self.is_on() && b >= self.oldest).then_some(b)
    }

    /// Sweeps sub-table `sub` first if an id of `bucket` would make its tags wrap.
    ///
    /// The tables work from the window's `base`, not `oldest`: no word of a bucket in
    /// `oldest..base` is ever in them (the base moves up only with `oldest`), so the two agree
    /// on every word.
    #[inline]
    fn keep_sweep_rule(&mut self, sub: usize, bucket: i64) {
        if bucket - self.tables[sub].swept >= TAGS - 1 {
            let base = self.base;
            self.tables[sub].sweep(base, &mut self.work);
        }
    }

    fn insert(&mut self, sub: usize, fp: u64, bucket: i64) {
        let word = fp << 4 | bucket.rem_euclid(TAGS) as u64;
        let (oldest, work) = (self.base, &mut self.work);
        let t = &mut self.tables[sub];
        let full = (t.used as usize + 1) * 100 > t.slots.len() * 8 * MAX_LOAD;
        let placed = if full { Err(word) } else { t.place(word, oldest, &mut work.rng) };
        if let Err(pending) = placed {
            // Expired words may be what fills it: sweep, then grow if still needed.
            t.sweep(oldest, work);
            let n = t.slots.len();
            let grow = (t.used as usize + 1) * 100 > n * 8 * GROW_LOAD;
            t.rebuild(if grow { n + n / GROWTH + 1 } else { n }, oldest, work, Some(pending));
        }
        self.count(bucket);
    }

    /// Counts one more id of `bucket`.
    #[inline]
    fn count(&mut self, bucket: i64) {
        let c = &mut self.counts[bucket.rem_euclid(TAGS) as usize];
        if c.0 != bucket {
            *c = (bucket, 0);
        }
        c.1 += 1;
    }

    /// Restores ids of `bucket` from a checkpoint (after [`Dedup::advance`] to the recovered
    /// watermark); ids of expired buckets are skipped.
    pub fn restore(&mut self, bucket: i64, ids: impl IntoIterator<Item = Fingerprint>) {
        if !self.is_on() || bucket < self.oldest {
            return;
        }
        if !self.in_window(bucket) {
            self.aside.entry(bucket).or_default().extend(ids);
            return;
        }
        for id in ids {
            let (sub, fp) = id.split();
            self.keep_sweep_rule(sub, bucket);
            if !self.tables[sub].find(fp, self.base) {
                self.insert(sub, fp, bucket);
            }
        }
    }

    /// Sweeps up to `budget` sub-tables that may hold expired ids, resuming where the last call
    /// stopped; the number swept. Bounded work for a worker's idle moments.
    pub fn sweep(&mut self, budget: usize) -> usize {
        let (n, oldest) = (self.tables.len(), self.base);
        let mut swept = 0;
        for _ in 0..n.min(budget * 16) {
            if swept == budget {
                break;
            }
            let t = &mut self.tables[self.cursor];
            self.cursor = (self.cursor + 1) % n;
            if t.swept < oldest && t.used > 0 {
                t.sweep(oldest, &mut self.work);
                swept += 1;
            }
        }
        swept
    }

    /// The live buckets holding ids, oldest first.
    pub fn live_buckets(&self) -> Vec<i64> {
        let mut b: Vec<i64> =
            self.counts.iter().filter(|(b, n)| *n > 0 && *b >= self.base && *b <= self.newest).map(|c| c.0).collect();
        b.extend(self.aside.keys());
        b.sort_unstable();
        b
    }

    /// Ids retained (added to live buckets).
    pub fn len(&self) -> usize {
        let tables: usize =
            self.counts.iter().filter(|(b, _)| *b >= self.base && *b <= self.newest).map(|c| c.1 as usize).sum();
        tables + self.aside()
    }

    /// Ids kept aside because their bucket is outside the tables' window.
    pub fn aside(&self) -> usize {
        self.aside.values().map(HashSet::len).sum()
    }

    /// Whether no id is retained.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of the tables (slots and directory), for figures.
    pub fn table_bytes(&self) -> usize {
        self.tables.iter().map(|t| t.slots.capacity() * 64).sum::<usize>()
            + self.tables.len() * std::mem::size_of::<SubTable>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 8 * 3600 * 1000;

    fn key(u: &str, e: &str) -> u128 {
        dedup_key(EventKind::Song, u, e)
    }

    #[test]
    fn keys_do_not_depend_on_how_they_are_hashed() {
        for (u, e) in [("u1", "e1"), ("", ""), ("user-42", &"e".repeat(200) as &str), (&"u".repeat(123), "e")] {
            for kind in [EventKind::Song, EventKind::Ad] {
                assert_eq!(dedup_key(kind, u, e), dedup_key_streamed(kind, u.as_bytes(), e.as_bytes()), "{u} {e}");
            }
        }
        // The boundaries are part of the key.
        assert_ne!(dedup_key(EventKind::Song, "u1", "e1"), dedup_key(EventKind::Song, "u1e", "1"));
        assert_ne!(dedup_key(EventKind::Song, "u1", "e1"), dedup_key(EventKind::Ad, "u1", "e1"));
    }

    #[test]
    fn a_resend_is_dropped_and_kinds_and_users_are_separate() {
        let mut d = Dedup::new(H);
        d.advance(10);
        let k = key("u1", "e1");
        assert!(d.first_time(k, 10));
        assert!(!d.first_time(k, 10));
        assert!(d.first_time(dedup_key(EventKind::Ad, "u1", "e1"), 10));
        assert!(d.first_time(key("u2", "e1"), 10));
        // The length prefix keeps ("u1", "2e") and ("u12", "e") apart.
        assert_ne!(key("u1", "2e"), key("u12", "e"));
        assert_eq!(d.len(), 3);
    }

    #[test]
    fn a_zero_horizon_counts_everything() {
        let mut d = Dedup::new(0);
        let k = key("u1", "e1");
        assert!(d.first_time(k, 10) && d.first_time(k, 10));
        assert!(d.is_empty() && d.kept_in(10).is_none());
    }

    #[test]
    fn ids_expire_by_whole_buckets_beyond_the_horizon() {
        let mut d = Dedup::new(H);
        let b = H / BUCKETS;
        d.advance(b);
        d.first_time(key("u1", "old"), 0);
        d.first_time(key("u1", "edge"), b);
        // The watermark moves one bucket past the horizon of bucket 0 (but not of bucket 1).
        d.advance(H + b);
        d.first_time(key("u1", "new"), H + b);
        assert_eq!(d.live_buckets(), vec![1, 9]);
        assert!(!d.first_time(key("u1", "edge"), b), "within the horizon: still a resend");
        assert!(d.first_time(key("u1", "old"), 0), "beyond the horizon: forgotten, counted again");
        // Far ahead: everything expires, however far the tags wrapped.
        d.advance(40 * H);
        d.first_time(key("u1", "later"), 40 * H);
        assert!(d.first_time(key("u1", "new"), H + b));
        assert!(!d.first_time(key("u1", "later"), 40 * H));
        assert_eq!(d.live_buckets(), vec![40 * BUCKETS]);
    }

    #[test]
    fn exact_on_millions_of_ids_through_growth_sweeps_and_wrapping_tags() {
        let mut d = Dedup::new(H);
        let b = H / BUCKETS;
        let n = 400_000u64;
        // Ids spread over 40 horizons of event time, each resent a little later.
        for i in 0..n {
            let ts = (i as i64) * (40 * H / n as i64);
            let k = key(&format!("u{}", i % 977), &format!("e{i}"));
            d.advance(ts);
            assert!(d.first_time(k, ts), "new id {i}");
            if i >= 7 {
                let j = i - 7;
                let tj = (j as i64) * (40 * H / n as i64);
                let again = key(&format!("u{}", j % 977), &format!("e{j}"));
                // Within the horizon of the newest event: a resend.
                assert_eq!(d.first_time(again, tj), tj < d.oldest * b, "resend {j}");
            }
            if i % 1000 == 0 {
                d.sweep(64);
            }
        }
        // About one horizon (plus a bucket) of ids is retained.
        let per_horizon = n / 40;
        assert!(d.len() as u64 <= per_horizon * 9 / 8 + 1 && d.len() as u64 >= per_horizon, "{}", d.len());
        let words: usize = d.tables.iter().map(|t| t.used as usize).sum();
        assert!(words >= d.len());
    }

    #[test]
    fn no_id_is_lost_when_full_buckets_move_words_to_their_other_bucket() {
        // Enough ids in one horizon that inserts meet full buckets (tables 76-95% full) and move
        // words, one step and by random walks; every one must still be found.
        let mut d = Dedup::new(H);
        d.advance(5);
        let n = 1_000_000u64;
        for i in 0..n {
            assert!(d.first_time(key("u", &i.to_string()), 5), "new id {i}");
        }
        for i in 0..n {
            assert!(!d.first_time(key("u", &i.to_string()), 5), "id {i} was lost");
        }
        assert_eq!(d.len() as u64, n);
    }

    #[test]
    fn restored_ids_are_resends_and_expired_buckets_are_skipped() {
        let mut d = Dedup::new(H);
        let b = H / BUCKETS;
        let ids: Vec<Fingerprint> = (0..1000).map(|i| Fingerprint::of(key("u", &i.to_string()))).collect();
        d.advance(20 * b);
        d.restore(19, ids[..500].iter().copied());
        d.restore(3, ids[500..].iter().copied());
        assert_eq!(d.live_buckets(), vec![19]);
        assert!(!d.first_time(key("u", "7"), 19 * b));
        assert!(d.first_time(key("u", "700"), 19 * b), "its bucket had expired");
        assert_eq!(d.kept_in(19 * b), Some(19));
        assert_eq!(d.kept_in(b), None);
    }

    #[test]
    fn tables_stay_under_ten_bytes_per_id() {
        // Sampled across a growth of every sub-table (each grows by a quarter), once the
        // directory's 640 kB are a small part of it.
        let mut d = Dedup::new(H);
        d.advance(5);
        let (mut sizes, mut n) = (Vec::new(), 0u64);
        for step in [2_000_000u64, 250_000, 250_000, 250_000, 250_000] {
            for i in n..n + step {
                d.first_time(key("u1", &i.to_string()), 5);
            }
            n += step;
            sizes.push(d.table_bytes() as f64 / n as f64);
        }
        assert!(sizes.iter().all(|b| *b <= 10.0), "bytes per id: {sizes:?}");
    }

    #[test]
    fn ids_outside_the_tags_window_wait_aside_and_move_in_as_resends() {
        let mut d = Dedup::new(H);
        let b = H / BUCKETS;
        // No watermark yet: the first id anchors the window (buckets 93..=107).
        assert!(d.first_time(key("u", "a"), 100 * b));
        assert!(!d.first_time(key("u", "a"), 100 * b));
        assert_eq!((d.aside(), d.len(), d.live_buckets()), (0, 1, vec![100]));
        // Before and after the window: aside, and still resends.
        assert!(d.first_time(key("u", "early"), 80 * b));
        assert!(d.first_time(key("u", "late"), 120 * b));
        assert!(!d.first_time(key("u", "early"), 80 * b) && !d.first_time(key("u", "late"), 120 * b));
        assert_eq!((d.aside(), d.live_buckets()), (2, vec![80, 100, 120]));
        // The watermark: bucket 80 is live (oldest 80), the window stays at 93, so it stays aside.
        d.advance(88 * b);
        assert_eq!(d.aside(), 2);
        assert!(!d.first_time(key("u", "early"), 80 * b));
        // The window comes to bucket 120: it moves into the tables; 80 has expired.
        d.advance(115 * b);
        assert_eq!((d.aside(), d.live_buckets()), (0, vec![120]));
        assert!(!d.first_time(key("u", "late"), 120 * b));
        // Restored ids outside the window wait aside too.
        d.restore(200, [Fingerprint::of(key("u", "r"))]);
        assert_eq!(d.aside(), 1);
        assert!(!d.first_time(key("u", "r"), 200 * b));
        // Expired while aside: dropped when the watermark passes them.
        d.advance(300 * b);
        assert_eq!((d.aside(), d.len()), (0, 0));
        assert!(d.first_time(key("u", "r"), 200 * b), "beyond the horizon: counted again");
    }

    #[test]
    fn resends_count_once_whatever_order_partitions_are_read_in() {
        // Two partitions, each 7 days of events with a resend a little after each original; one
        // read whole before the other, as a worker catching up does. The watermark is the least
        // of their progress (the unread one holds it back), so no resend is counted twice.
        let day = 24 * 3600 * 1000;
        let mut d = Dedup::new(day);
        let events = |p: u32| -> Vec<(u128, i64, bool)> {
            let mut v = Vec::new();
            for i in 0..7000i64 {
                let ts = i * day / 1000;
                v.push((key(&format!("u{p}"), &format!("e{i}")), ts, true));
                if i >= 3 {
                    let j = i - 3;
                    v.push((key(&format!("u{p}"), &format!("e{j}")), j * day / 1000, false));
                }
            }
            v
        };
        let mut progress = [i64::MIN; 2];
        for p in [0usize, 1] {
            for (k, ts, first) in events(p as u32) {
                progress[p] = progress[p].max(ts);
                assert_eq!(d.first_time(k, ts), first, "partition {p} ts {ts}");
                d.advance(progress[0].min(progress[1]));
            }
        }
        assert_eq!(d.aside(), 0, "all moved into the tables once both were read");
    }
}
