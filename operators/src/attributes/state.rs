//! One user's state under a [`Plan`]: applying an event (the hot path: no allocation but a new
//! map entry, no string of the declaration looked at), reading values, and snapshots for
//! checkpoints. The layout is in [`super::plan`]'s notes.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};
use squall_enrichment::{Sym, Symbols};

use super::declare::Late;
use super::plan::{Cell, IntOf, KeyOf, Plan, Pred, Reader, Store, Stored, StrOf, Update, ValueOf};
use crate::activity::{Activity, What};

/// How many half-lives a new event may lie beyond a decayed sum's reference time before its
/// weights are rebased to the new time (keeps the weights finite over years of event time).
const REBASE_HALF_LIVES: f64 = 64.0;

/// One user's state under a [`Plan`]: an exact-size array of words (see the module notes); empty
/// until the first event. 16 bytes plus the array.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserState {
    words: Box<[u32]>,
}

/// Offset of the count of events applied.
const EVENTS: u32 = 2;
/// Offset of the sum of the applied events' dedup keys.
const EVENTS_HASH: u32 = 3;

/// What a [`UserState`] has applied; see [`UserState::evidence`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Evidence {
    /// Events applied (saturating at 2^32 - 1).
    pub events: u32,
    /// Sum of the low 64 bits of their dedup keys.
    pub hash: u64,
}

/// A [`UserState`] with symbols replaced by names: what checkpoints store.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSnapshot {
    /// [`Plan::fingerprint`] of the plan that wrote it.
    pub plan: u64,
    /// The state's words, symbols replaced by indices into `names`.
    pub words: Vec<u32>,
    /// The names of the symbols the state held.
    pub names: Vec<String>,
}

/// Why a snapshot cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// It was written under another declaration.
    #[error(
        "the state was written by another declaration of this version (plan {found:016x}, expected {expected:016x})"
    )]
    OtherPlan {
        /// The snapshot's plan.
        found: u64,
        /// This plan.
        expected: u64,
    },
    /// Its words do not fit the plan's layout.
    #[error("the state's layout is damaged: {0}")]
    Damaged(String),
}

#[inline]
fn get64(w: &[u32], at: u32) -> u64 {
    u64::from(w[at as usize]) | (u64::from(w[at as usize + 1]) << 32)
}

#[inline]
fn set64(w: &mut [u32], at: u32, v: u64) {
    w[at as usize] = v as u32;
    w[at as usize + 1] = (v >> 32) as u32;
}

#[inline]
fn int_value(of: IntOf, a: &Activity) -> Option<i64> {
    match (of, &a.what) {
        (IntOf::Ts, _) => Some(a.ts),
        (IntOf::MsPlayed, What::Play { ms_played, .. }) => Some(i64::try_from(*ms_played).unwrap_or(i64::MAX)),
        (IntOf::DurationMs, What::Play { track, .. }) => track.duration_ms.map(i64::from),
        _ => None,
    }
}

#[inline]
fn key_value(of: KeyOf, a: &Activity, symbols: &Symbols) -> Option<Sym> {
    match (of, &a.what) {
        (KeyOf::Genre, What::Play { track, .. }) => Some(track.genre),
        (KeyOf::Artist, What::Play { track, .. }) => Some(track.artist),
        (KeyOf::Category, What::Ad { ad, .. }) => Some(ad.category),
        (KeyOf::Advertiser, What::Ad { ad, .. }) => Some(ad.advertiser),
        (KeyOf::TrackId, What::Play { track_id, .. }) => Some(symbols.intern(track_id)),
        (KeyOf::AdId, What::Ad { ad_id, .. }) => Some(symbols.intern(ad_id)),
        _ => None,
    }
}

fn str_value<'a>(of: StrOf, a: &'a Activity, user: &'a str) -> Option<&'a str> {
    match (of, &a.what) {
        (StrOf::Event, _) => Some(&a.event_id),
        (StrOf::User, _) => Some(user),
        (StrOf::Track, What::Play { track_id, .. }) => Some(track_id),
        (StrOf::Ad, What::Ad { ad_id, .. }) => Some(ad_id),
        _ => None,
    }
}

impl Pred {
    fn holds(&self, a: &Activity, user: &str) -> bool {
        match self {
            Pred::And(x, y) => x.holds(a, user) && y.holds(a, user),
            Pred::Or(x, y) => x.holds(a, user) || y.holds(a, user),
            Pred::Not(x) => !x.holds(a, user),
            Pred::Int { of, op, value } => int_value(*of, a).is_some_and(|v| op.holds(v, *value)),
            Pred::Sym { of, eq, sym } => {
                let v = match (of, &a.what) {
                    (KeyOf::Genre, What::Play { track, .. }) => track.genre,
                    (KeyOf::Artist, What::Play { track, .. }) => track.artist,
                    (KeyOf::Category, What::Ad { ad, .. }) => ad.category,
                    (KeyOf::Advertiser, What::Ad { ad, .. }) => ad.advertiser,
                    _ => return false,
                };
                (v == *sym) == *eq
            }
            Pred::Str { of, eq, value } => str_value(*of, a, user).is_some_and(|v| (v == value.as_str()) == *eq),
        }
    }
}

/// Compares two `last` values: symbols by name, integers by value.
fn value_cmp(text: bool, a: u64, b: u64, symbols: &Symbols) -> Ordering {
    if text { symbols.name(Sym(a as u32)).cmp(symbols.name(Sym(b as u32))) } else { (a as i64).cmp(&(b as i64)) }
}

impl UserState {
    /// The state's words (for tests and size figures).
    pub fn words(&self) -> &[u32] {
        &self.words
    }

    /// What was applied to this state: how many events, and the sum (mod 2^64) of the low 64 bits
    /// of their dedup keys. Two states that applied the same events have the same evidence
    /// whatever order the events came in; different events give different evidence but for a
    /// 2^-64 chance. 12 bytes per user; what a diff of two versions compares users on.
    pub fn evidence(&self) -> Evidence {
        if self.words.is_empty() {
            return Evidence::default();
        }
        Evidence { events: self.words[EVENTS as usize], hash: get64(&self.words, EVENTS_HASH) }
    }

    /// The user's clock: the largest `ts` of their events; `None` before the first.
    pub fn clock(&self) -> Option<i64> {
        if self.words.is_empty() {
            return None;
        }
        let c = get64(&self.words, 0) as i64;
        (c != i64::MIN).then_some(c)
    }

    fn init(&mut self, plan: &Plan) {
        let mut words = vec![0u32; plan.fixed as usize];
        for (at, v) in &plan.inits {
            set64(&mut words, *at, *v);
        }
        self.words = words.into_boxed_slice();
    }

    /// Start (in words) of `section`'s entries, and its entry count.
    #[inline]
    pub(crate) fn section(&self, plan: &Plan, section: u32) -> (usize, usize) {
        let mut start = plan.fixed as usize;
        for s in &plan.sections[..section as usize] {
            start += self.words[s.len_at as usize] as usize * s.width as usize;
        }
        let s = &plan.sections[section as usize];
        (start, self.words[s.len_at as usize] as usize)
    }

    /// Inserts `entry` as entry `index` of `section`.
    fn insert(&mut self, plan: &Plan, section: u32, index: usize, entry: &[u32]) {
        let (start, len) = self.section(plan, section);
        let s = &plan.sections[section as usize];
        let at = start + index * s.width as usize;
        // Grown by `realloc`, which keeps the block when its slack holds the entry (the
        // allocator's size classes leave some), instead of a new block and a copy.
        let mut grown = std::mem::take(&mut self.words).into_vec();
        grown.reserve_exact(entry.len());
        grown.splice(at..at, entry.iter().copied());
        grown[s.len_at as usize] = (len + 1) as u32;
        self.words = grown.into_boxed_slice();
    }

    /// Applies one (already deduplicated) event of `user` under `plan`.
    #[inline]
    pub fn apply(&mut self, plan: &Plan, user: &str, a: &Activity, symbols: &Symbols) {
        if self.words.is_empty() {
            self.init(plan);
        }
        let before = get64(&self.words, 0) as i64;
        if a.ts > before {
            if before != i64::MIN && !plan.windowed.is_empty() {
                self.roll(plan, before, a.ts);
            }
            set64(&mut self.words, 0, a.ts as u64);
        }
        self.words[EVENTS as usize] = self.words[EVENTS as usize].saturating_add(1);
        let hash = get64(&self.words, EVENTS_HASH).wrapping_add(a.dedup_key as u64);
        set64(&mut self.words, EVENTS_HASH, hash);
        let updates = match a.what {
            What::Play { .. } => &plan.song,
            What::Ad { .. } => &plan.ad,
        };
        for u in updates {
            if u.filter.as_ref().is_none_or(|f| f.holds(a, user)) {
                self.update(plan, u, a, before, symbols);
            }
        }
    }

    /// Moves every window from the tile of `before` to the tile of `now`: empties the ring cells
    /// and drops the section entries of the tiles that leave the window.
    fn roll(&mut self, plan: &Plan, before: i64, now: i64) {
        for &i in &plan.windowed {
            let Some(s) = plan.stored(i as usize) else { continue };
            let Some(w) = s.window else { continue };
            let (from, to) = (w.tile(before), w.tile(now));
            if to <= from {
                continue;
            }
            match s.store {
                Store::Ring { at, cell, tiles } => {
                    let n = (to - from).min(tiles);
                    for t in 0..n {
                        let index = (to - t) % tiles;
                        let c = at + index * cell.words();
                        if cell == Cell::Count {
                            self.words[c as usize] = 0;
                        } else {
                            set64(&mut self.words, c, cell.empty());
                        }
                    }
                }
                Store::Map { section, .. } | Store::Distinct { section, .. } => {
                    let oldest = to.saturating_sub(w.tiles - 1);
                    self.retain(plan, section, |entry, tile_word| entry[tile_word] >= oldest);
                }
                Store::Clock | Store::Scalar { .. } | Store::Last { .. } => {}
            }
        }
    }

    /// Keeps the entries of `section` for which `keep(entry, tile word)` holds.
    fn retain(&mut self, plan: &Plan, section: u32, keep: impl Fn(&[u32], usize) -> bool) {
        let s = plan.sections[section as usize];
        let Some(tile_word) = s.tile_word else { return };
        let (start, len) = self.section(plan, section);
        let width = s.width as usize;
        let end = start + len * width;
        let kept: usize = self.words[start..end].chunks(width).filter(|e| keep(e, tile_word as usize)).count();
        if kept == len {
            return;
        }
        let mut words = Vec::with_capacity(self.words.len() - (len - kept) * width);
        words.extend_from_slice(&self.words[..start]);
        for e in self.words[start..end].chunks(width) {
            if keep(e, tile_word as usize) {
                words.extend_from_slice(e);
            }
        }
        words.extend_from_slice(&self.words[end..]);
        words[s.len_at as usize] = kept as u32;
        self.words = words.into_boxed_slice();
    }

    fn update(&mut self, plan: &Plan, u: &Update, a: &Activity, before: i64, symbols: &Symbols) {
        let Reader::Stored(s) = &plan.readers[u.attribute as usize] else { return };
        let Some(tile) = Self::tile(s, u, a.ts, before) else { return };
        let amount = match u.amount {
            Some(of) => match int_value(of, a) {
                Some(v) => v,
                None => return,
            },
            None => 1,
        };
        match s.store {
            Store::Clock => {}
            Store::Scalar { at, cell } => self.add(plan, s, at, cell, amount, a.ts),
            Store::Ring { at, cell, tiles } => {
                self.add(plan, s, at + (tile % tiles) * cell.words(), cell, amount, a.ts)
            }
            Store::Last { at } => {
                let Some(value) = u.value else { return };
                let v = match value {
                    ValueOf::Int(of) => int_value(of, a).unwrap_or(i64::MIN) as u64,
                    ValueOf::Key(of) => match key_value(of, a, symbols) {
                        Some(sym) => u64::from(sym.0),
                        None => return,
                    },
                };
                let (ts, cur) = (get64(&self.words, at) as i64, get64(&self.words, at + 2));
                if a.ts > ts || (a.ts == ts && value_cmp(s.text, v, cur, symbols) == Ordering::Greater) {
                    set64(&mut self.words, at, a.ts as u64);
                    set64(&mut self.words, at + 2, v);
                }
            }
            Store::Map { section, cell } => {
                let Some(key) = u.key.and_then(|k| key_value(k, a, symbols)) else { return };
                let at = self.map_entry(plan, section, cell, key, tile);
                self.add(plan, s, at, cell, amount, a.ts);
            }
            Store::Distinct { section, limit } => {
                let Some(value) = u.value else { return };
                let v = match value {
                    ValueOf::Int(of) => match int_value(of, a) {
                        Some(v) => v as u64,
                        None => return,
                    },
                    ValueOf::Key(of) => match key_value(of, a, symbols) {
                        Some(sym) => u64::from(sym.0),
                        None => return,
                    },
                };
                self.distinct_insert(plan, section, limit, v, tile);
            }
        }
    }

    /// The tile an event at `ts` counts in (0 without a window), the clock having been `before`;
    /// `None` when it counts nowhere (late and dropped, or older than the window). Counts late
    /// events in `u`'s counter.
    #[inline]
    fn tile(s: &Stored, u: &Update, ts: i64, before: i64) -> Option<u32> {
        let Some(w) = s.window else { return Some(0) };
        let now = before.max(ts);
        let late = before != i64::MIN && ts < before.saturating_sub(w.lateness_ms);
        if late {
            if let Some(c) = &u.late {
                c.increment(1);
            }
            return if w.late == Late::Drop { None } else { Some(w.tile(now)) };
        }
        let tile = w.tile(ts);
        // Older than the window: it cannot count any more.
        (tile + w.tiles > w.tile(now)).then_some(tile)
    }

    /// The offset of the cell of map `section`'s entry for `key` (in `tile`, if windowed), the
    /// entry added empty if missing.
    #[inline]
    fn map_entry(&mut self, plan: &Plan, section: u32, cell: Cell, key: Sym, tile: u32) -> u32 {
        let sec = plan.sections[section as usize];
        let (start, len) = self.section(plan, section);
        let width = sec.width as usize;
        let windowed = sec.tile_word.is_some();
        let cell_word = if windowed { 2 } else { 1 };
        let found = (0..len).find(|&e| {
            let at = start + e * width;
            self.words[at] == key.0 && (!windowed || self.words[at + 1] == tile)
        });
        let at = match found {
            Some(e) => start + e * width,
            None => {
                let mut entry = [0u32; 4];
                entry[0] = key.0;
                entry[1] = tile;
                if cell != Cell::Count {
                    let e = cell.empty();
                    entry[cell_word] = e as u32;
                    entry[cell_word + 1] = (e >> 32) as u32;
                }
                self.insert(plan, section, len, &entry[..width]);
                start + len * width
            }
        };
        (at + cell_word) as u32
    }

    /// Adds value `v` (seen in `tile`) to set `section`, unless it holds `limit` values already.
    #[inline]
    fn distinct_insert(&mut self, plan: &Plan, section: u32, limit: u32, v: u64, tile: u32) {
        let sec = plan.sections[section as usize];
        let (start, len) = self.section(plan, section);
        let width = sec.width as usize;
        let (mut lo, mut hi) = (0, len);
        let mut found = Err(len);
        while lo < hi {
            let mid = (lo + hi) / 2;
            match get64(&self.words, (start + mid * width) as u32).cmp(&v) {
                Ordering::Less => lo = mid + 1,
                Ordering::Greater => hi = mid,
                Ordering::Equal => {
                    found = Ok(mid);
                    break;
                }
            }
        }
        if found.is_err() {
            found = Err(lo);
        }
        match found {
            Ok(e) => {
                if let Some(tw) = sec.tile_word {
                    let at = start + e * width + tw as usize;
                    self.words[at] = self.words[at].max(tile);
                }
            }
            Err(e) if len < limit as usize => {
                let entry = [v as u32, (v >> 32) as u32, tile];
                self.insert(plan, section, e, &entry[..width]);
            }
            Err(_) => {}
        }
    }

    /// Adds `amount` (at event time `ts`) to the cell at `at` of attribute `s`.
    #[inline]
    fn add(&mut self, plan: &Plan, s: &Stored, at: u32, cell: Cell, amount: i64, ts: i64) {
        match cell {
            Cell::Count => {
                let c = &mut self.words[at as usize];
                *c = c.saturating_add(1);
            }
            Cell::Sum | Cell::Min | Cell::Max => {
                let old = get64(&self.words, at) as i64;
                let new = match cell {
                    Cell::Sum => old.saturating_add(amount),
                    Cell::Min => old.min(amount),
                    _ => old.max(amount),
                };
                set64(&mut self.words, at, new as u64);
            }
            Cell::Decayed => {
                let Some(d) = s.decay else { return };
                let mut reference = get64(&self.words, d.reference) as i64;
                if reference == i64::MIN {
                    reference = ts;
                    set64(&mut self.words, d.reference, ts as u64);
                }
                let ahead = (ts - reference) as f64 / d.half_life_ms;
                if ahead > REBASE_HALF_LIVES {
                    self.rebase(plan, s, (-ahead).exp2());
                    reference = ts;
                    set64(&mut self.words, d.reference, ts as u64);
                }
                let w = f64::from_bits(get64(&self.words, at));
                let add = amount as f64 * ((ts - reference) as f64 / d.half_life_ms).exp2();
                set64(&mut self.words, at, (w + add).to_bits());
            }
        }
    }

    /// Scales every weight of decayed attribute `s` by `scale` (in place: nothing moves).
    fn rebase(&mut self, plan: &Plan, s: &Stored, scale: f64) {
        let scale_at = |words: &mut [u32], c: usize| {
            let w = f64::from_bits(get64(words, c as u32));
            set64(words, c as u32, (w * scale).to_bits());
        };
        match s.store {
            Store::Scalar { at, .. } => scale_at(&mut self.words, at as usize),
            Store::Ring { at, tiles, .. } => {
                for t in 0..tiles {
                    scale_at(&mut self.words, (at + 2 * t) as usize);
                }
            }
            Store::Map { section, .. } => {
                let sec = plan.sections[section as usize];
                let (start, len) = self.section(plan, section);
                let cell_word = if sec.tile_word.is_some() { 2 } else { 1 };
                for e in 0..len {
                    scale_at(&mut self.words, start + e * sec.width as usize + cell_word);
                }
            }
            Store::Clock | Store::Last { .. } | Store::Distinct { .. } => {}
        }
    }
}

/// A number read from a state.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Num {
    Int(i64),
    Float(f64),
    Null,
}

impl Num {
    pub(crate) fn as_f64(self) -> Option<f64> {
        match self {
            Num::Int(n) => Some(n as f64),
            Num::Float(f) => Some(f),
            Num::Null => None,
        }
    }

    /// Orders values descending for `top_k` (integers and floats never mix in one map).
    pub(crate) fn rank(self, other: Num) -> Ordering {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => b.cmp(&a),
            (a, b) => b.as_f64().unwrap_or(f64::NEG_INFINITY).total_cmp(&a.as_f64().unwrap_or(f64::NEG_INFINITY)),
        }
    }
}

impl UserState {
    fn rescale(&self, s: &Stored) -> f64 {
        let Some(d) = s.decay else { return 1.0 };
        let reference = get64(&self.words, d.reference) as i64;
        let clock = get64(&self.words, 0) as i64;
        if reference == i64::MIN { 1.0 } else { ((reference - clock) as f64 / d.half_life_ms).exp2() }
    }

    fn cell(&self, at: u32, cell: Cell) -> Num {
        match cell {
            Cell::Count => Num::Int(i64::from(self.words[at as usize])),
            Cell::Sum => Num::Int(get64(&self.words, at) as i64),
            Cell::Min => match get64(&self.words, at) as i64 {
                i64::MAX => Num::Null,
                v => Num::Int(v),
            },
            Cell::Max => match get64(&self.words, at) as i64 {
                i64::MIN => Num::Null,
                v => Num::Int(v),
            },
            Cell::Decayed => Num::Float(f64::from_bits(get64(&self.words, at))),
        }
    }

    /// The value of a `last` attribute: its 64-bit value if its event is visible (`None`: null).
    pub(crate) fn last(&self, s: &Stored) -> Option<u64> {
        let Store::Last { at } = s.store else { return None };
        if self.words.is_empty() {
            return None;
        }
        let ts = get64(&self.words, at) as i64;
        if ts == i64::MIN {
            return None;
        }
        if let Some(w) = s.window
            && w.tile(ts) + w.tiles <= w.tile(get64(&self.words, 0) as i64)
        {
            return None;
        }
        let v = get64(&self.words, at + 2);
        (s.text || v as i64 != i64::MIN).then_some(v)
    }

    /// The value of a numeric attribute.
    pub(crate) fn number(&self, plan: &Plan, s: &Stored) -> Num {
        if self.words.is_empty() {
            // No event yet: what an initialised state reads as.
            return match s.store {
                Store::Scalar { cell: Cell::Decayed, .. } | Store::Ring { cell: Cell::Decayed, .. } => Num::Float(0.0),
                Store::Scalar { cell: Cell::Count | Cell::Sum, .. }
                | Store::Ring { cell: Cell::Count | Cell::Sum, .. }
                | Store::Distinct { .. } => Num::Int(0),
                _ => Num::Null,
            };
        }
        match s.store {
            Store::Clock => Num::Int(get64(&self.words, 0) as i64),
            Store::Scalar { at, cell: Cell::Decayed } => {
                Num::Float(f64::from_bits(get64(&self.words, at)) * self.rescale(s))
            }
            Store::Scalar { at, cell } => self.cell(at, cell),
            Store::Ring { at, cell, tiles } => {
                let mut total = self.cell(at, cell);
                for t in 1..tiles {
                    let next = self.cell(at + t * cell.words(), cell);
                    total = match (cell, total, next) {
                        (_, Num::Null, n) | (_, n, Num::Null) => n,
                        (Cell::Count | Cell::Sum, Num::Int(a), Num::Int(b)) => Num::Int(a.saturating_add(b)),
                        (Cell::Min, Num::Int(a), Num::Int(b)) => Num::Int(a.min(b)),
                        (Cell::Max, Num::Int(a), Num::Int(b)) => Num::Int(a.max(b)),
                        (_, a, b) => Num::Float(a.as_f64().unwrap_or(0.0) + b.as_f64().unwrap_or(0.0)),
                    };
                }
                match total {
                    Num::Float(f) => Num::Float(f * self.rescale(s)),
                    other => other,
                }
            }
            Store::Last { .. } => match self.last(s) {
                Some(v) if !s.text => Num::Int(v as i64),
                _ => Num::Null,
            },
            Store::Distinct { section, .. } => Num::Int(self.section(plan, section).1 as i64),
            Store::Map { .. } => Num::Null,
        }
    }

    /// Appends the entries of a map attribute to `out` as `(key symbol, value)`, one per key
    /// (a windowed map's tiles added up), in no particular order.
    pub(crate) fn entries(&self, plan: &Plan, s: &Stored, out: &mut Vec<(u32, Num)>) {
        let Store::Map { section, cell } = s.store else { return };
        if self.words.is_empty() {
            return;
        }
        let sec = plan.sections[section as usize];
        let (start, len) = self.section(plan, section);
        let width = sec.width as usize;
        let cell_word = if sec.tile_word.is_some() { 2 } else { 1 };
        let rescale = self.rescale(s);
        let from = out.len();
        for e in 0..len {
            let at = start + e * width;
            let v = match self.cell((at + cell_word) as u32, cell) {
                Num::Float(f) => Num::Float(f * rescale),
                other => other,
            };
            out.push((self.words[at], v));
        }
        if sec.tile_word.is_some() {
            // One entry per key and tile: add each key's tiles up.
            let mine = &mut out[from..];
            mine.sort_unstable_by_key(|(k, _)| *k);
            let mut merged: Vec<(u32, Num)> = Vec::with_capacity(mine.len());
            for &(k, v) in mine.iter() {
                match merged.last_mut() {
                    Some((lk, lv)) if *lk == k => {
                        *lv = match (*lv, v) {
                            (Num::Int(a), Num::Int(b)) => Num::Int(a.saturating_add(b)),
                            (a, b) => Num::Float(a.as_f64().unwrap_or(0.0) + b.as_f64().unwrap_or(0.0)),
                        }
                    }
                    _ => merged.push((k, v)),
                }
            }
            out.truncate(from);
            out.extend(merged);
        }
    }

    /// This state with names instead of process-local symbols, for checkpoints.
    pub fn snapshot(&self, plan: &Plan, symbols: &Symbols) -> UserSnapshot {
        let mut words = self.words.to_vec();
        let mut names: Vec<String> = Vec::new();
        let mut index: std::collections::HashMap<u32, u32> = std::collections::HashMap::new();
        let mut name_of = |sym: u32| -> u32 {
            *index.entry(sym).or_insert_with(|| {
                names.push(symbols.name(Sym(sym)).to_owned());
                (names.len() - 1) as u32
            })
        };
        if !words.is_empty() {
            for &at in &plan.sym_words {
                if get64(&words, at) as i64 != i64::MIN {
                    let w = &mut words[at as usize + 2];
                    *w = name_of(*w);
                }
            }
            for (i, sec) in plan.sections.iter().enumerate() {
                if !sec.key_sym {
                    continue;
                }
                let (start, len) = self.section(plan, i as u32);
                for e in 0..len {
                    let w = &mut words[start + e * sec.width as usize];
                    *w = name_of(*w);
                }
            }
        }
        UserSnapshot { plan: plan.fingerprint, words, names }
    }

    /// The state a snapshot describes, its names interned in `symbols`.
    pub fn restore(snapshot: &UserSnapshot, plan: &Plan, symbols: &Symbols) -> Result<UserState, RestoreError> {
        if snapshot.plan != plan.fingerprint {
            return Err(RestoreError::OtherPlan { found: snapshot.plan, expected: plan.fingerprint });
        }
        let mut state = UserState { words: snapshot.words.clone().into_boxed_slice() };
        if state.words.is_empty() {
            return Ok(state);
        }
        let damaged = |what: String| RestoreError::Damaged(what);
        if state.words.len() < plan.fixed as usize {
            return Err(damaged(format!("{} words, the fixed area alone has {}", state.words.len(), plan.fixed)));
        }
        let total: usize = plan.fixed as usize
            + plan.sections.iter().map(|s| state.words[s.len_at as usize] as usize * s.width as usize).sum::<usize>();
        if total != state.words.len() {
            return Err(damaged(format!("{} words, its sections need {total}", state.words.len())));
        }
        let sym = |i: u32| -> Result<u32, RestoreError> {
            let name = snapshot.names.get(i as usize).ok_or_else(|| damaged(format!("no name {i}")))?;
            Ok(symbols.intern(name).0)
        };
        for &at in &plan.sym_words {
            if get64(&state.words, at) as i64 != i64::MIN {
                let w = &mut state.words[at as usize + 2];
                *w = sym(*w)?;
            }
        }
        for (i, sec) in plan.sections.iter().enumerate() {
            let (start, len) = state.section(plan, i as u32);
            let width = sec.width as usize;
            if sec.key_sym {
                for e in 0..len {
                    let w = &mut state.words[start + e * width];
                    *w = sym(*w)?;
                }
            }
            if sec.sorted {
                // Sets are sorted by value, and symbols differ between processes.
                let mut entries: Vec<Vec<u32>> =
                    state.words[start..start + len * width].chunks(width).map(<[u32]>::to_vec).collect();
                entries.sort_unstable_by_key(|e| u64::from(e[0]) | (u64::from(e[1]) << 32));
                for (e, entry) in entries.iter().enumerate() {
                    state.words[start + e * width..start + (e + 1) * width].copy_from_slice(entry);
                }
            }
        }
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::super::declare::{AttributeDecl, Declaration};
    use super::super::views::{AttributesView, Value};
    use super::*;
    use crate::activity::{AdInfo, TrackInfo};

    const T0: i64 = 1_763_750_000_000;
    const HOUR: i64 = 3_600_000;
    const DAY: i64 = 24 * HOUR;

    /// A declaration from `name op key=value ...` lines.
    fn declare(lines: &[&str]) -> Declaration {
        let decls: Vec<AttributeDecl> = lines
            .iter()
            .map(|line| {
                let mut words = line.split_whitespace();
                let mut d = AttributeDecl {
                    name: words.next().unwrap().into(),
                    op: words.next().unwrap().into(),
                    ..Default::default()
                };
                let rest: Vec<&str> = words.collect();
                for kv in rest.join(" ").split(';').filter(|s| !s.trim().is_empty()) {
                    let (k, v) = kv.split_once('=').unwrap();
                    let v = v.trim().to_owned();
                    match k.trim() {
                        "events" => d.events = Some(v),
                        "field" => d.field = Some(v),
                        "where" => d.filter = Some(v),
                        "by" => d.by = Some(v),
                        "of" => d.of = Some(v),
                        "k" => d.k = Some(v.parse().unwrap()),
                        "num" => d.num = Some(v),
                        "den" => d.den = Some(v),
                        "half_life" => d.half_life = Some(v),
                        "window" => d.window = Some(v),
                        "tile" => d.tile = Some(v),
                        "lateness" => d.lateness = Some(v),
                        "late" => d.late = Some(v),
                        "limit" => d.limit = Some(v.parse().unwrap()),
                        other => panic!("{other}"),
                    }
                }
                d
            })
            .collect();
        Declaration::new(&decls).unwrap()
    }

    struct User {
        plan: Plan,
        symbols: Symbols,
        state: UserState,
    }

    impl User {
        fn new(lines: &[&str]) -> User {
            let symbols = Symbols::default();
            User { plan: Plan::compile(&declare(lines), &symbols), symbols, state: UserState::default() }
        }

        fn play(&mut self, genre: &str, ms_played: u64, ts: i64) {
            let track =
                TrackInfo { genre: self.symbols.intern(genre), artist: self.symbols.unknown(), duration_ms: None };
            let what = What::Play { track_id: format!("t-{genre}").into(), ms_played, track };
            let a = Activity { user: "u".into(), dedup_key: 0, ts, event_id: "e".into(), what };
            self.state.apply(&self.plan, "u", &a, &self.symbols);
        }

        fn ad(&mut self, category: &str, ts: i64) {
            let ad = AdInfo { category: self.symbols.intern(category), advertiser: self.symbols.unknown() };
            let a = Activity {
                user: "u".into(),
                dedup_key: 0,
                ts,
                event_id: "e".into(),
                what: What::Ad { ad_id: "a".into(), ad },
            };
            self.state.apply(&self.plan, "u", &a, &self.symbols);
        }

        fn get(&self, name: &str) -> Value {
            AttributesView::new(&self.state, &self.plan, &self.symbols).to_attributes().get(name).cloned().unwrap()
        }

        fn json(&self) -> String {
            serde_json::to_string(&AttributesView::new(&self.state, &self.plan, &self.symbols)).unwrap()
        }
    }

    fn map(pairs: &[(&str, i64)]) -> Value {
        Value::Map(pairs.iter().map(|(k, v)| (k.to_string(), Value::Int(*v))).collect())
    }

    #[test]
    fn v1_keeps_seven_fixed_words_and_two_words_per_key() {
        let mut u = User::new(&[
            "plays count events=song",
            "skips count events=song; where=ms_played < 30000",
            "genre_plays count by=track.genre",
            "top_genres top_k of=genre_plays; k=3",
            "ad_impressions count events=ad",
            "ad_categories count by=ad.category",
            "last_seen_ts max field=ts",
        ]);
        assert_eq!(u.plan.fixed_words(), 10, "clock, evidence, 3 counters, 2 map lengths (last_seen_ts is the clock)");
        u.play("rock", 1_000, T0 + 5);
        u.play("rock", 60_000, T0);
        u.ad("cars", T0 + 1);
        assert_eq!(u.state.words().len(), 10 + 2 + 2);
        assert_eq!(u.state.evidence().events, 3);
        assert_eq!(
            u.json(),
            r#"{"plays":2,"skips":1,"genre_plays":{"rock":2},"top_genres":["rock"],"ad_impressions":1,"ad_categories":{"cars":1},"last_seen_ts":1763750000005}"#
        );
    }

    #[test]
    fn windows_slide_with_the_users_clock() {
        let mut u = User::new(&[
            "plays_2d count events=song; window=2d; tile=1d",
            "genres_2d count by=track.genre; window=2d; tile=1d",
            "top top_k of=genres_2d; k=1",
            "longest_1d max field=ms_played; window=1d; tile=1h",
        ]);
        let day0 = T0 - T0.rem_euclid(DAY);
        u.play("rock", 10, day0 + HOUR);
        u.play("rock", 20, day0 + 2 * HOUR);
        u.play("jazz", 30, day0 + DAY + HOUR);
        assert_eq!(u.get("plays_2d"), Value::Int(3));
        assert_eq!(u.get("genres_2d"), map(&[("jazz", 1), ("rock", 2)]));
        assert_eq!(u.get("top"), Value::List(vec!["rock".into()]));
        assert_eq!(u.get("longest_1d"), Value::Int(30));
        // Day 2: day 0 leaves the window (and hour 25 the hourly one).
        u.ad("cars", day0 + 2 * DAY + 2 * HOUR);
        assert_eq!(u.get("plays_2d"), Value::Int(1));
        assert_eq!(u.get("genres_2d"), map(&[("jazz", 1)]));
        assert_eq!(u.get("top"), Value::List(vec!["jazz".into()]));
        assert_eq!(u.get("longest_1d"), Value::Null, "no play in the last 24 hourly tiles");
        // An event older than the window counts nowhere; a day later, everything has left.
        u.play("rock", 40, day0);
        assert_eq!(u.get("plays_2d"), Value::Int(1));
        u.ad("cars", day0 + 10 * DAY);
        assert_eq!(u.get("plays_2d"), Value::Int(0));
        assert_eq!(u.get("genres_2d"), map(&[]));
        assert_eq!(u.state.words().len(), u.plan.fixed_words(), "expired entries are freed");
    }

    #[test]
    fn late_events_follow_the_declared_policy() {
        let mut drop = User::new(&["n count window=4h; tile=1h; lateness=1h; late=drop"]);
        let mut keep = User::new(&["n count window=4h; tile=1h; lateness=1h; late=current_tile"]);
        let hour0 = T0 - T0.rem_euclid(HOUR);
        for u in [&mut drop, &mut keep] {
            u.ad("x", hour0 + 3 * HOUR);
            u.ad("x", hour0 + 2 * HOUR + 30 * 60_000); // 30 min behind: not late
            u.ad("x", hour0 + HOUR + 30 * 60_000); // 90 min behind: late
        }
        assert_eq!(drop.get("n"), Value::Int(2));
        assert_eq!(keep.get("n"), Value::Int(3));
        // The late event counted in the clock's tile (hour 3), so it stays when its own tile
        // (hour 1) and hour 2 have left the window.
        for u in [&mut drop, &mut keep] {
            u.ad("x", hour0 + 6 * HOUR);
        }
        assert_eq!(drop.get("n"), Value::Int(2), "hours 3 and 6");
        assert_eq!(keep.get("n"), Value::Int(3), "hours 3 (twice) and 6");
    }

    #[test]
    fn last_distinct_sum_min_ratio_and_decay() {
        let mut u = User::new(&[
            "last_genre last field=track.genre",
            "last_ms last field=ms_played",
            "genres distinct field=track.genre; limit=2",
            "ms sum field=ms_played",
            "shortest min field=ms_played",
            "plays count events=song",
            "rate ratio num=ms; den=plays",
            "weight decayed_count events=song; half_life=1d",
            "ad_weight decayed_sum field=ts; events=ad; half_life=1h",
        ]);
        assert_eq!(u.get("rate"), Value::Float(0.0), "nothing yet reads as zeros");
        assert_eq!(u.get("last_genre"), Value::Null);
        u.ad("cars", T0);
        assert_eq!(u.get("last_genre"), Value::Null);
        assert_eq!(u.get("shortest"), Value::Null);
        assert_eq!(u.get("rate"), Value::Float(0.0), "no plays: a ratio over 0 is 0");
        u.play("rock", 100, T0 + DAY);
        u.play("jazz", 300, T0 + DAY);
        u.play("pop", 50, T0 - DAY);
        // Equal times: the larger value wins, by name for texts.
        assert_eq!(u.get("last_genre"), Value::Text("rock".into()));
        assert_eq!(u.get("last_ms"), Value::Int(300));
        assert_eq!(u.get("genres"), Value::Int(2), "the limit keeps the first two");
        assert_eq!(u.get("ms"), Value::Int(450));
        assert_eq!(u.get("shortest"), Value::Int(50));
        assert_eq!(u.get("rate"), Value::Float(150.0));
        let Value::Float(w) = u.get("weight") else { panic!() };
        assert!((w - (2.0 + 0.25)).abs() < 1e-12, "{w}");
        let Value::Float(a) = u.get("ad_weight") else { panic!() };
        assert!((a - T0 as f64 * 2f64.powi(-24)).abs() < 1e-3, "{a}");
    }

    #[test]
    fn decayed_sums_rebase_over_years_and_counts_saturate() {
        let mut u = User::new(&["w decayed_count half_life=1d", "n count"]);
        u.ad("x", T0);
        u.ad("x", T0 + 1000 * DAY);
        let Value::Float(w) = u.get("w") else { panic!() };
        assert!((w - 1.0).abs() < 1e-12 && w.is_finite(), "{w}");
        let Some(Stored { store: Store::Scalar { at, .. }, .. }) = u.plan.stored(1) else { panic!() };
        u.state.words[*at as usize] = u32::MAX - 1;
        u.ad("x", T0 + 1000 * DAY);
        u.ad("x", T0 + 1000 * DAY);
        assert_eq!(u.get("n"), Value::Int(i64::from(u32::MAX)));
    }

    #[test]
    fn predicates_compare_text_numbers_and_missing_values() {
        let mut u = User::new(&[
            "rock count where=track.genre == 'rock' and ms_played >= 10",
            "not_rock count where=not track.genre == 'rock'",
            "long count where=track.duration_ms > 5",
            "short_or_jazz count where=ms_played < 5 or track.genre == 'jazz'",
            "mine count where=user_id == 'u' and event_id != 'x' and track_id == 't-rock'",
        ]);
        u.play("rock", 10, T0);
        u.play("rock", 1, T0);
        u.play("jazz", 1, T0);
        u.ad("cars", T0);
        assert_eq!(u.get("rock"), Value::Int(1));
        assert_eq!(u.get("not_rock"), Value::Int(1), "jazz; the ad is not a song and does not count");
        assert_eq!(u.get("long"), Value::Int(0), "a missing duration compares false");
        assert_eq!(u.get("short_or_jazz"), Value::Int(2));
        assert_eq!(u.get("mine"), Value::Int(2));
    }

    #[test]
    fn windowed_distinct_forgets_values_that_leave_the_window() {
        let mut u = User::new(&["g distinct field=track.genre; window=2h; tile=1h; limit=2"]);
        let hour0 = T0 - T0.rem_euclid(HOUR);
        u.play("rock", 1, hour0);
        u.play("jazz", 1, hour0 + HOUR);
        u.play("pop", 1, hour0 + HOUR);
        assert_eq!(u.get("g"), Value::Int(2), "limit 2");
        u.play("pop", 1, hour0 + 2 * HOUR);
        assert_eq!(u.get("g"), Value::Int(2), "rock left, pop came in");
        let restored = UserState::restore(&u.state.snapshot(&u.plan, &u.symbols), &u.plan, &u.symbols).unwrap();
        assert_eq!(restored, u.state);
    }
}
