//! Per-user attribute state: what each event changes, and how the state reads as attributes.
//!
//! # Notes
//! - Counts saturate at `u32::MAX` instead of wrapping.
//! - `top_genres`: up to three genres by play count, descending; ties by genre name ascending.
//! - `last_seen_ts` is the largest `ts` of any counted event, whatever the arrival order.
//! - `genre_affinity` (version 2): per genre, the sum over its plays of `2^((ts - last_seen_ts) / 7 days)`.
//!   It is kept as a sum relative to a per-user reference time, so it does not depend on the order
//!   in which events arrive, and is rescaled to `last_seen_ts` when read.

use std::collections::BTreeMap;

use compact_str::CompactString;
use serde::ser::{SerializeMap, SerializeSeq, SerializeStruct};
use serde::{Deserialize, Serialize, Serializer};
use squall_enrichment::{Sym, Symbols};

/// Plays shorter than this many milliseconds are skips.
pub const SKIP_BELOW_MS: u64 = 30_000;
/// Half-life of `genre_affinity`, in event-time milliseconds.
pub const AFFINITY_HALF_LIFE_MS: f64 = 7.0 * 24.0 * 3600.0 * 1000.0;
/// How many half-lives a new play may lie beyond the reference time before the sums are rebased.
const REBASE_HALF_LIVES: f64 = 64.0;

/// Which attributes a topology version maintains: the code a topology file names.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttributeSet {
    /// plays, skips, genre_plays, top_genres, ad_impressions, ad_categories, last_seen_ts.
    PersonalizationV1,
    /// Version 1 plus skip_rate and genre_affinity.
    PersonalizationV2,
}

impl AttributeSet {
    fn keeps_affinity(self) -> bool {
        self == AttributeSet::PersonalizationV2
    }
}

/// An enriched, keyed event: the only input the attribute state sees.
#[derive(Clone, Debug, PartialEq)]
pub struct Activity {
    /// The user.
    pub user: CompactString,
    /// Hash of (kind, user, event_id), for deduplication.
    pub dedup_key: u128,
    /// Event time, epoch milliseconds.
    pub ts: i64,
    /// What happened.
    pub what: What,
}

/// The enriched content of an [`Activity`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum What {
    /// A song completion.
    Play {
        /// The track's genre (`unknown` if the track is not in the catalogue).
        genre: Sym,
        /// `ms_played < 30000`.
        skip: bool,
    },
    /// An ad impression.
    Ad {
        /// The ad's category (`unknown` if the ad is not in the catalogue).
        category: Sym,
    },
}

/// The attributes of one user, as they are served.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attributes {
    /// Song completions.
    pub plays: u64,
    /// Song completions with `ms_played < 30000`.
    pub skips: u64,
    /// Genre -> song completions.
    pub genre_plays: BTreeMap<String, u64>,
    /// Up to three genres by plays, descending; ties by name ascending.
    pub top_genres: Vec<String>,
    /// Ad impressions.
    pub ad_impressions: u64,
    /// Category -> ad impressions.
    pub ad_categories: BTreeMap<String, u64>,
    /// Largest `ts` of the user's events.
    pub last_seen_ts: i64,
    /// Version 2: skips / plays, 0 when there are no plays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_rate: Option<f64>,
    /// Version 2: genre -> decayed play weight relative to `last_seen_ts` (7-day half-life).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub genre_affinity: Option<BTreeMap<String, f64>>,
}

/// The state kept per user, in process-local symbols: 48 bytes, plus one exact-size allocation of
/// 8 bytes per genre and category (version 2: plus a boxed weight per entry). Compact because a
/// process holds millions of these (see the memory figures in `benches/RESULTS.md`).
#[derive(Clone, Debug, Default)]
pub struct UserState {
    plays: u32,
    skips: u32,
    ads: u32,
    last_seen_ts: i64,
    /// Genre and category play counts in first-seen order; a category's symbol has [`CATEGORY`] set.
    counts: Box<[(u32, u32)]>,
    /// Version 2 only.
    affinity: Option<Box<Affinity>>,
}

/// Version 2's decayed genre weights.
#[derive(Clone, Debug, Default, PartialEq)]
struct Affinity {
    /// Per entry of `counts` (0 for categories), the sum of `2^((ts - reference) / half-life)`.
    weights: Vec<f64>,
    reference: i64,
}

/// Marks a category in [`UserState`]'s counts (symbols are dense and far below 2^31).
const CATEGORY: u32 = 1 << 31;

impl PartialEq for UserState {
    /// Equal when they hold the same counts and weights, whatever order genres were first seen in.
    fn eq(&self, other: &Self) -> bool {
        let sorted = |s: &UserState| {
            let w = |i: usize| s.affinity.as_ref().and_then(|a| a.weights.get(i).copied()).unwrap_or(0.0);
            let mut v: Vec<(u32, u32, u64)> =
                s.counts.iter().enumerate().map(|(i, (k, n))| (*k, *n, w(i).to_bits())).collect();
            v.sort_unstable();
            v
        };
        (self.plays, self.skips, self.ads, self.last_seen_ts)
            == (other.plays, other.skips, other.ads, other.last_seen_ts)
            && self.affinity.as_ref().map(|a| a.reference) == other.affinity.as_ref().map(|a| a.reference)
            && sorted(self) == sorted(other)
    }
}

/// A [`UserState`] with names instead of symbols: what checkpoints store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserSnapshot {
    plays: u32,
    skips: u32,
    ads: u32,
    last_seen_ts: i64,
    genres: Vec<(String, u32)>,
    categories: Vec<(String, u32)>,
    affinity: Vec<f64>,
    affinity_ref: i64,
}

impl UserState {
    /// Applies one (already deduplicated) event.
    #[inline]
    pub fn apply(&mut self, set: AttributeSet, ts: i64, what: What) {
        let first = self.plays == 0 && self.ads == 0;
        self.last_seen_ts = if first { ts } else { self.last_seen_ts.max(ts) };
        match what {
            What::Play { genre, skip } => {
                self.plays = self.plays.saturating_add(1);
                self.skips = self.skips.saturating_add(u32::from(skip));
                let i = self.bump(genre.0);
                if set.keeps_affinity() {
                    self.add_affinity(i, ts);
                }
            }
            What::Ad { category } => {
                self.ads = self.ads.saturating_add(1);
                self.bump(category.0 | CATEGORY);
            }
        }
    }

    /// Counts one more for `key`; its index in `counts`.
    #[inline]
    fn bump(&mut self, key: u32) -> usize {
        if let Some(i) = self.counts.iter().position(|(k, _)| *k == key) {
            self.counts[i].1 = self.counts[i].1.saturating_add(1);
            return i;
        }
        // A new genre or category: grow to the exact size (rare next to counting, and no slack).
        let mut grown = Vec::with_capacity(self.counts.len() + 1);
        grown.extend_from_slice(&self.counts);
        grown.push((key, 1));
        self.counts = grown.into_boxed_slice();
        self.counts.len() - 1
    }

    fn genres(&self) -> impl Iterator<Item = (usize, Sym, u32)> + '_ {
        self.counts.iter().enumerate().filter(|(_, (k, _))| k & CATEGORY == 0).map(|(i, (k, n))| (i, Sym(*k), *n))
    }

    fn categories(&self) -> impl Iterator<Item = (Sym, u32)> + '_ {
        self.counts.iter().filter(|(k, _)| k & CATEGORY != 0).map(|(k, n)| (Sym(k & !CATEGORY), *n))
    }

    fn add_affinity(&mut self, i: usize, ts: i64) {
        let a = self.affinity.get_or_insert_with(|| Box::new(Affinity { weights: Vec::new(), reference: ts }));
        let ahead = (ts - a.reference) as f64 / AFFINITY_HALF_LIFE_MS;
        if ahead > REBASE_HALF_LIVES {
            let scale = (-ahead).exp2();
            a.weights.iter_mut().for_each(|w| *w *= scale);
            a.reference = ts;
        }
        a.weights.resize(self.counts.len(), 0.0);
        a.weights[i] += ((ts - a.reference) as f64 / AFFINITY_HALF_LIFE_MS).exp2();
    }

    /// This state with names instead of process-local symbols, for checkpoints.
    pub fn snapshot(&self, symbols: &Symbols) -> UserSnapshot {
        let name = |s: Sym| symbols.name(s).to_owned();
        let affinity = match &self.affinity {
            Some(a) => self.genres().map(|(i, _, _)| a.weights.get(i).copied().unwrap_or(0.0)).collect(),
            None => Vec::new(),
        };
        UserSnapshot {
            plays: self.plays,
            skips: self.skips,
            ads: self.ads,
            last_seen_ts: self.last_seen_ts,
            genres: self.genres().map(|(_, s, n)| (name(s), n)).collect(),
            categories: self.categories().map(|(s, n)| (name(s), n)).collect(),
            affinity,
            affinity_ref: self.affinity.as_ref().map_or(0, |a| a.reference),
        }
    }

    /// The state a snapshot describes, in `symbols`.
    pub fn restore(snapshot: &UserSnapshot, symbols: &Symbols) -> Self {
        let genres = snapshot.genres.iter().map(|(s, n)| (symbols.intern(s).0, *n));
        let categories = snapshot.categories.iter().map(|(s, n)| (symbols.intern(s).0 | CATEGORY, *n));
        let counts: Box<[(u32, u32)]> = genres.chain(categories).collect();
        let affinity = (!snapshot.affinity.is_empty()).then(|| {
            let mut weights = snapshot.affinity.clone();
            weights.resize(counts.len(), 0.0);
            Box::new(Affinity { weights, reference: snapshot.affinity_ref })
        });
        UserState {
            plays: snapshot.plays,
            skips: snapshot.skips,
            ads: snapshot.ads,
            last_seen_ts: snapshot.last_seen_ts,
            counts,
            affinity,
        }
    }

    /// Song completions so far.
    pub fn plays(&self) -> u64 {
        u64::from(self.plays)
    }

    /// The attributes of `set` as [`AttributesView`]: serialises like [`UserState::attributes`]
    /// without building it.
    pub fn view<'a>(&'a self, set: AttributeSet, symbols: &'a Symbols) -> AttributesView<'a> {
        AttributesView { state: self, set, symbols }
    }

    /// The attributes of `set`, names resolved through `symbols`.
    pub fn attributes(&self, set: AttributeSet, symbols: &Symbols) -> Attributes {
        let genre_plays: BTreeMap<String, u64> =
            self.genres().map(|(_, s, n)| (symbols.name(s).to_owned(), u64::from(n))).collect();
        let mut ranked: Vec<(&String, &u64)> = genre_plays.iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        let top_genres = ranked.into_iter().take(3).map(|(g, _)| g.clone()).collect();
        let (skip_rate, genre_affinity) = if set.keeps_affinity() {
            let rate = if self.plays == 0 { 0.0 } else { f64::from(self.skips) / f64::from(self.plays) };
            let affinity = match &self.affinity {
                Some(a) => {
                    let rescale = ((a.reference - self.last_seen_ts) as f64 / AFFINITY_HALF_LIFE_MS).exp2();
                    self.genres()
                        .filter_map(|(i, s, _)| Some((symbols.name(s).to_owned(), a.weights.get(i)? * rescale)))
                        .collect()
                }
                None => BTreeMap::new(),
            };
            (Some(rate), Some(affinity))
        } else {
            (None, None)
        };
        Attributes {
            plays: u64::from(self.plays),
            skips: u64::from(self.skips),
            genre_plays,
            top_genres,
            ad_impressions: u64::from(self.ads),
            ad_categories: self.categories().map(|(s, n)| (symbols.name(s).to_owned(), u64::from(n))).collect(),
            last_seen_ts: self.last_seen_ts,
            skip_rate,
            genre_affinity,
        }
    }
}

/// A user's attributes as they serialise: the same JSON as the [`Attributes`] that
/// [`UserState::attributes`] returns (same fields, same order, same values), written straight from
/// the state with names borrowed from the symbol table, so answering a query builds no maps and
/// copies no names. The HTTP API serialises this; `attributes_json_matches_the_attributes_type`
/// pins it to [`Attributes`].
#[derive(Clone, Copy)]
pub struct AttributesView<'a> {
    state: &'a UserState,
    set: AttributeSet,
    symbols: &'a Symbols,
}

/// One genre or category of a [`UserState`] with its name.
#[derive(Clone, Copy, Default)]
struct Named<'a> {
    /// The first 8 bytes of `name`, big-endian, zero-padded: ordering by `(prefix, name)` is
    /// ordering by `name`, mostly without reading the strings.
    prefix: u64,
    name: &'a str,
    count: u32,
    /// Its index in `UserState::counts` (for the affinity weight).
    index: u32,
}

/// Genres and categories of most users fit on the stack; more spill to the heap.
const ON_STACK: usize = 32;

impl AttributesView<'_> {
    /// Roughly how many bytes of JSON this is, to size a buffer.
    pub fn json_len_hint(&self) -> usize {
        let per_entry = if self.set.keeps_affinity() { 64 } else { 32 };
        200 + per_entry * self.state.counts.len()
    }
}

impl Serialize for AttributesView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let state = self.state;
        let mut stack = [Named::default(); ON_STACK];
        let mut heap = Vec::new();
        let all: &mut [Named<'_>] = if state.counts.len() <= ON_STACK {
            &mut stack[..state.counts.len()]
        } else {
            heap.resize(state.counts.len(), Named::default());
            &mut heap
        };
        // Genres first, then categories, each by name: the key order of `Attributes`' maps.
        let named = |(i, (k, n)): (usize, &(u32, u32))| {
            let name = self.symbols.name(Sym(k & !CATEGORY));
            let mut prefix = [0; 8];
            let len = name.len().min(8);
            prefix[..len].copy_from_slice(&name.as_bytes()[..len]);
            Named { prefix: u64::from_be_bytes(prefix), name, count: *n, index: i as u32 }
        };
        let genres = state.counts.iter().enumerate().filter(|(_, (k, _))| k & CATEGORY == 0).map(named);
        let categories = state.counts.iter().enumerate().filter(|(_, (k, _))| k & CATEGORY != 0).map(named);
        let mut split = 0;
        for (slot, entry) in all.iter_mut().zip(genres) {
            *slot = entry;
            split += 1;
        }
        for (slot, entry) in all[split..].iter_mut().zip(categories) {
            *slot = entry;
        }
        let (genres, categories) = all.split_at_mut(split);
        let by_name = |a: &Named<'_>, b: &Named<'_>| a.prefix.cmp(&b.prefix).then_with(|| a.name.cmp(b.name));
        genres.sort_unstable_by(by_name);
        categories.sort_unstable_by(by_name);

        let v2 = self.set.keeps_affinity();
        let mut out = serializer.serialize_struct("Attributes", if v2 { 9 } else { 7 })?;
        out.serialize_field("plays", &u64::from(state.plays))?;
        out.serialize_field("skips", &u64::from(state.skips))?;
        out.serialize_field("genre_plays", &Counts(genres))?;
        out.serialize_field("top_genres", &TopGenres(genres))?;
        out.serialize_field("ad_impressions", &u64::from(state.ads))?;
        out.serialize_field("ad_categories", &Counts(categories))?;
        out.serialize_field("last_seen_ts", &state.last_seen_ts)?;
        if v2 {
            let rate = if state.plays == 0 { 0.0 } else { f64::from(state.skips) / f64::from(state.plays) };
            out.serialize_field("skip_rate", &rate)?;
            out.serialize_field("genre_affinity", &Weights { genres, state })?;
        } else {
            out.skip_field("skip_rate")?;
            out.skip_field("genre_affinity")?;
        }
        out.end()
    }
}

/// Name -> count, in the given (name) order.
struct Counts<'a>(&'a [Named<'a>]);

impl Serialize for Counts<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for e in self.0 {
            map.serialize_entry(e.name, &u64::from(e.count))?;
        }
        map.end()
    }
}

/// Up to three genres by count, descending; ties by name ascending (`genres` is by name).
struct TopGenres<'a>(&'a [Named<'a>]);

impl Serialize for TopGenres<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut top: [Option<Named<'_>>; 3] = [None; 3];
        for &e in self.0 {
            // By name, so an equal count ranks after the ones already placed.
            if let Some(at) = top.iter().position(|t| t.is_none_or(|t| e.count > t.count)) {
                top[at..].rotate_right(1);
                top[at] = Some(e);
            }
        }
        let n = top.iter().flatten().count();
        let mut seq = serializer.serialize_seq(Some(n))?;
        for e in top.iter().flatten() {
            seq.serialize_element(e.name)?;
        }
        seq.end()
    }
}

/// Version 2's genre -> decayed weight relative to `last_seen_ts`, by name.
struct Weights<'a> {
    genres: &'a [Named<'a>],
    state: &'a UserState,
}

impl Serialize for Weights<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Some(a) = &self.state.affinity else {
            return serializer.serialize_map(Some(0))?.end();
        };
        let rescale = ((a.reference - self.state.last_seen_ts) as f64 / AFFINITY_HALF_LIFE_MS).exp2();
        let weight = |e: &Named<'_>| a.weights.get(e.index as usize).map(|w| w * rescale);
        let n = self.genres.iter().filter(|e| weight(e).is_some()).count();
        let mut map = serializer.serialize_map(Some(n))?;
        for e in self.genres {
            if let Some(w) = weight(e) {
                map.serialize_entry(e.name, &w)?;
            }
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_763_750_000_000;
    const DAY: i64 = 24 * 3600 * 1000;

    fn play(s: &mut UserState, set: AttributeSet, genre: Sym, ms: u64, ts: i64) {
        s.apply(set, ts, What::Play { genre, skip: ms < SKIP_BELOW_MS });
    }

    #[test]
    fn the_state_stays_compact() {
        assert!(std::mem::size_of::<UserState>() <= 48, "{}", std::mem::size_of::<UserState>());
    }

    #[test]
    fn v1_counts_skips_maps_and_last_seen() {
        let sy = Symbols::default();
        let (rock, jazz, cars) = (sy.intern("rock"), sy.intern("jazz"), sy.intern("cars"));
        let mut s = UserState::default();
        let v1 = AttributeSet::PersonalizationV1;
        play(&mut s, v1, rock, 183_000, T0 + 5);
        play(&mut s, v1, rock, 29_999, T0 + 1);
        play(&mut s, v1, jazz, 30_000, T0 + 3);
        s.apply(v1, T0 + 9, What::Ad { category: cars });
        s.apply(v1, T0 - 100, What::Ad { category: sy.unknown() });
        let a = s.attributes(v1, &sy);
        assert_eq!((a.plays, a.skips, a.ad_impressions, a.last_seen_ts), (3, 1, 2, T0 + 9));
        assert_eq!(a.genre_plays, BTreeMap::from([("rock".into(), 2), ("jazz".into(), 1)]));
        assert_eq!(a.ad_categories, BTreeMap::from([("cars".into(), 1), ("unknown".into(), 1)]));
        assert_eq!(a.top_genres, vec!["rock", "jazz"]);
        assert_eq!((a.skip_rate, a.genre_affinity), (None, None));
    }

    #[test]
    fn snapshots_restore_into_another_symbol_table() {
        let (a, b) = (Symbols::default(), Symbols::default());
        b.intern("padding");
        let v2 = AttributeSet::PersonalizationV2;
        let mut s = UserState::default();
        play(&mut s, v2, a.intern("rock"), 10_000, T0);
        s.apply(v2, T0 + 5, What::Ad { category: a.intern("cars") });
        let restored = UserState::restore(&s.snapshot(&a), &b);
        assert_eq!(restored.attributes(v2, &b), s.attributes(v2, &a));
    }

    #[test]
    fn last_seen_of_an_only_event_in_the_past_is_that_event() {
        let sy = Symbols::default();
        let mut s = UserState::default();
        s.apply(AttributeSet::PersonalizationV1, 1_000_000_000_000, What::Ad { category: sy.unknown() });
        assert_eq!(s.attributes(AttributeSet::PersonalizationV1, &sy).last_seen_ts, 1_000_000_000_000);
    }

    #[test]
    fn top_genres_break_ties_by_name_and_keep_three() {
        let sy = Symbols::default();
        let mut s = UserState::default();
        let v1 = AttributeSet::PersonalizationV1;
        for (g, n) in [("pop", 2), ("blues", 2), ("rock", 5), ("ambient", 2), ("jazz", 1)] {
            for _ in 0..n {
                play(&mut s, v1, sy.intern(g), 60_000, T0);
            }
        }
        assert_eq!(s.attributes(v1, &sy).top_genres, vec!["rock", "ambient", "blues"]);
    }

    #[test]
    fn v2_skip_rate_and_affinity_decay_from_last_seen() {
        let sy = Symbols::default();
        let (rock, jazz) = (sy.intern("rock"), sy.intern("jazz"));
        let v2 = AttributeSet::PersonalizationV2;
        let mut s = UserState::default();
        assert_eq!(s.attributes(v2, &sy).skip_rate, Some(0.0));
        // Out of order on purpose: the result must not depend on arrival order.
        play(&mut s, v2, rock, 10_000, T0 + 14 * DAY);
        play(&mut s, v2, jazz, 60_000, T0);
        play(&mut s, v2, rock, 60_000, T0 + 7 * DAY);
        let a = s.attributes(v2, &sy);
        assert_eq!(a.skip_rate, Some(1.0 / 3.0));
        let aff = a.genre_affinity.unwrap();
        assert!((aff["rock"] - 1.5).abs() < 1e-12, "{aff:?}");
        assert!((aff["jazz"] - 0.25).abs() < 1e-12, "{aff:?}");
    }

    #[test]
    fn v2_affinity_survives_years_of_event_time() {
        let sy = Symbols::default();
        let g = sy.intern("rock");
        let v2 = AttributeSet::PersonalizationV2;
        let mut s = UserState::default();
        play(&mut s, v2, g, 60_000, T0);
        play(&mut s, v2, g, 60_000, T0 + 3000 * DAY);
        let aff = s.attributes(v2, &sy).genre_affinity.unwrap()["rock"];
        assert!((aff - 1.0).abs() < 1e-12 && aff.is_finite(), "{aff}");
    }

    fn json<T: Serialize>(t: &T) -> String {
        serde_json::to_string(t).expect("serialises")
    }

    #[test]
    fn attributes_json_matches_the_attributes_type() {
        let sy = Symbols::default();
        let (v1, v2) = (AttributeSet::PersonalizationV1, AttributeSet::PersonalizationV2);
        let mut s = UserState::default();
        // Ties on purpose (pop/blues/ambient), and names whose order differs from first-seen order.
        for (g, n, ms) in [("rock", 3, 60_000), ("pop", 2, 10_000), ("blues", 2, 60_000), ("ambient", 2, 45_000)] {
            for i in 0..n {
                play(&mut s, v2, sy.intern(g), ms, T0 + i * DAY);
            }
        }
        s.apply(v2, T0 + 2 * DAY, What::Ad { category: sy.intern("travel") });
        s.apply(v2, T0 - DAY, What::Ad { category: sy.intern("cars") });
        s.apply(v2, T0 - DAY, What::Ad { category: sy.intern("cars") });
        play(&mut s, v2, sy.unknown(), 1_000, T0 + 3 * DAY);
        assert_eq!(
            json(&s.view(v2, &sy)),
            concat!(
                r#"{"plays":10,"skips":3,"genre_plays":{"ambient":2,"blues":2,"pop":2,"rock":3,"unknown":1},"#,
                r#""top_genres":["rock","ambient","blues"],"ad_impressions":3,"ad_categories":{"cars":2,"travel":1},"#,
                r#""last_seen_ts":1764009200000,"skip_rate":0.3,"genre_affinity":{"ambient":1.5633325005761118,"#,
                r#""blues":1.5633325005761118,"pop":1.5633325005761118,"rock":2.4690561648400187,"unknown":1.0}}"#,
            )
        );
        assert_eq!(json(&s.view(v2, &sy)), json(&s.attributes(v2, &sy)));
        // The same state read as version 1: no skip_rate, no genre_affinity.
        assert_eq!(
            json(&s.view(v1, &sy)),
            concat!(
                r#"{"plays":10,"skips":3,"genre_plays":{"ambient":2,"blues":2,"pop":2,"rock":3,"unknown":1},"#,
                r#""top_genres":["rock","ambient","blues"],"ad_impressions":3,"ad_categories":{"cars":2,"travel":1},"#,
                r#""last_seen_ts":1764009200000}"#,
            )
        );
        assert_eq!(json(&s.view(v1, &sy)), json(&s.attributes(v1, &sy)));
        // And it reads back as the type the API documents.
        let back: Attributes = serde_json::from_str(&json(&s.view(v2, &sy))).expect("parses");
        assert_eq!(back, s.attributes(v2, &sy));
    }

    #[test]
    fn attributes_json_of_edge_cases_matches_the_attributes_type() {
        let sy = Symbols::default();
        let sets = [AttributeSet::PersonalizationV1, AttributeSet::PersonalizationV2];
        let mut cases = Vec::new();
        // No plays (v2: skip_rate 0, empty affinity), one genre, ads only.
        let mut ads_only = UserState::default();
        ads_only.apply(sets[1], T0, What::Ad { category: sy.intern("food") });
        cases.push(ads_only);
        let mut one = UserState::default();
        play(&mut one, sets[1], sy.intern("jazz"), 1, T0);
        cases.push(one);
        // More genres and categories than fit on the stack, with names that need escaping.
        let mut many = UserState::default();
        for i in 0..(ON_STACK as i64 + 9) {
            let genre = sy.intern(&format!("g\"{}\u{e9}", 50 - i));
            for _ in 0..(i % 4) + 1 {
                play(&mut many, sets[1], genre, 40_000, T0 + i * 3_600_000);
            }
            many.apply(sets[1], T0, What::Ad { category: sy.intern(&format!("c{}", i % 17)) });
        }
        cases.push(many);
        // Names that share their first 8 bytes, are prefixes of one another, or hold NUL bytes.
        let mut prefixes = UserState::default();
        for (i, g) in
            ["electronica", "electronic", "electro", "electro\0", "electro\0\0x", "electronic\u{0}", "é-électro"]
                .into_iter()
                .enumerate()
        {
            for _ in 0..=(i % 3) {
                play(&mut prefixes, sets[1], sy.intern(g), 60_000, T0 + i as i64);
            }
        }
        cases.push(prefixes);
        // A version 1 state read as version 2 (no affinity kept), and after a rebase far in the future.
        let mut v1_state = UserState::default();
        play(&mut v1_state, sets[0], sy.intern("rock"), 60_000, T0);
        cases.push(v1_state);
        let mut rebased = UserState::default();
        play(&mut rebased, sets[1], sy.intern("rock"), 60_000, T0);
        play(&mut rebased, sets[1], sy.intern("pop"), 60_000, T0 + 4000 * DAY);
        rebased.apply(sets[1], T0 + 4001 * DAY, What::Ad { category: sy.unknown() });
        cases.push(rebased);
        for (i, s) in cases.iter().enumerate() {
            for set in sets {
                assert_eq!(json(&s.view(set, &sy)), json(&s.attributes(set, &sy)), "case {i}, {set:?}");
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn attributes_json_of_random_users_matches_the_attributes_type(
            events in proptest::collection::vec((0u8..40, proptest::bool::ANY, 0u64..60_000, -40i64..40), 0..120),
        ) {
            let sy = Symbols::default();
            for set in [AttributeSet::PersonalizationV1, AttributeSet::PersonalizationV2] {
                let mut s = UserState::default();
                for &(key, ad, ms, day) in &events {
                    // Keys 0..20 are genres ("unknown" among them), 20..40 categories.
                    let ts = T0 + day * DAY / 3;
                    if ad {
                        s.apply(set, ts, What::Ad { category: sy.intern(&format!("c{}", key % 20)) });
                    } else {
                        let genre = if key == 0 { sy.unknown() } else { sy.intern(&format!("genre-{}", key % 20)) };
                        play(&mut s, set, genre, ms, ts);
                    }
                }
                proptest::prop_assert_eq!(json(&s.view(set, &sy)), json(&s.attributes(set, &sy)));
            }
        }
    }
}
