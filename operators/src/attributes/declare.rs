//! Declared attributes: what a topology version keeps per user, written as data (operation x
//! window x key, as in feature platforms such as Chronon and Tecton) and checked once, before
//! anything runs. [`super::Plan`] compiles a checked [`Declaration`] into the typed plan the
//! workers run.
//!
//! An attribute is either an aggregate over the user's events (`count`, `sum`, `min`, `max`,
//! `last`, `distinct`, `decayed_count`, `decayed_sum`), optionally filtered (`where`), grouped
//! into a map (`by`) and windowed in event time (`window` in `tile`s), or derived at read time from
//! other attributes (`top_k` of a map, `ratio` of two numbers).
//!
//! # Notes
//! - **Event time.** Each user has a clock: the largest `ts` of the events counted for them (after
//!   deduplication), whatever attribute they feed. Windows and decayed sums are read as of it, so a
//!   user's attributes depend only on their own events, not on when they are read.
//! - **Windows** are sliding, in tiles aligned to the Unix epoch: a window of `window` with tiles of
//!   `tile` covers the tile holding the clock and the `window / tile - 1` tiles before it. An event
//!   older than `lateness` behind the clock when it arrives is late: `late = "drop"` ignores it,
//!   `late = "current_tile"` counts it in the clock's tile; either way it is counted in the metric
//!   `squall_window_late_events_total`. With the default lateness (the window), nothing inside the
//!   window is ever late and a window's value does not depend on the order events arrive in.
//! - **Ties.** `last` keeps the value of the event with the largest `ts`; equal times keep the
//!   larger value. `top_k` ranks by value descending, then by name ascending.
//! - **Counts** saturate at 2^32 - 1; sums saturate at the `i64` range.
//! - A comparison with a missing value (null `track.duration_ms`) is false; `sum`, `min`, `max`
//!   and `distinct` skip missing values, `last` keeps them (it answers null).
//! - Catalogue ids missing from the store enrich as `"unknown"` (genre, artist, category, advertiser).

use serde::{Deserialize, Serialize};

use super::field::{Events, Field, Type};
use super::predicate::Expr;

/// What to do with an event later than a window's lateness.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Late {
    /// Ignore it.
    Drop,
    /// Count it in the tile of the user's clock.
    CurrentTile,
}

/// A sliding event-time window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Window {
    /// Length of a tile, milliseconds (at least 1 s, so tile numbers of event times up to the
    /// year 2106 fit in 32 bits).
    pub tile_ms: i64,
    /// Tiles in the window (`window / tile`).
    pub tiles: u32,
    /// How far behind the clock an event may be before it is late, milliseconds.
    pub lateness_ms: i64,
    /// What happens to a late event.
    pub late: Late,
}

impl Window {
    /// The tile holding event time `ts`.
    #[inline]
    pub fn tile(&self, ts: i64) -> u32 {
        ts.div_euclid(self.tile_ms).clamp(0, i64::from(u32::MAX)) as u32
    }
}

/// An aggregation over a user's events.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Events.
    Count,
    /// Sum of an integer field.
    Sum(Field),
    /// Smallest value of an integer field.
    Min(Field),
    /// Largest value of an integer field.
    Max(Field),
    /// The value of the field in the latest event.
    Last(Field),
    /// Distinct values of the field, exactly, up to `limit` values.
    Distinct {
        /// The field.
        field: Field,
        /// Most values kept; once reached, new values are not counted.
        limit: u32,
    },
    /// Sum over events of `field` (1 when `None`) times `2^((ts - clock) / half_life)`.
    Decayed {
        /// The field summed; `None` counts events.
        field: Option<Field>,
        /// The half-life, milliseconds.
        half_life_ms: i64,
    },
}

/// A checked aggregate attribute.
#[derive(Clone, Debug, PartialEq)]
pub struct Aggregate {
    /// Which events it counts.
    pub events: Events,
    /// Only events for which this holds.
    pub filter: Option<Expr>,
    /// The aggregation.
    pub op: Op,
    /// Group into a map keyed by this field's values.
    pub by: Option<Field>,
    /// Sliding event-time window.
    pub window: Option<Window>,
}

/// What an attribute is.
#[derive(Clone, Debug, PartialEq)]
pub enum Def {
    /// Kept per user, updated by events.
    Aggregate(Aggregate),
    /// The `k` keys with the largest values of map attribute `of` (an index into the declaration).
    TopK {
        /// The map attribute.
        of: usize,
        /// How many keys.
        k: usize,
    },
    /// `num / den` of two numeric attributes (indices), 0 when `den` is 0.
    Ratio {
        /// Numerator.
        num: usize,
        /// Denominator.
        den: usize,
    },
}

/// A checked attribute.
#[derive(Clone, Debug, PartialEq)]
pub struct Attribute {
    /// Its name in answers.
    pub name: String,
    /// Kept (for other attributes to read) but not answered.
    pub hidden: bool,
    /// What it is.
    pub def: Def,
}

/// The JSON type of an attribute's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueType {
    /// An integer (or null for a `min`/`max`/`last` with no event yet).
    Int,
    /// A float.
    Float,
    /// A text (or null).
    Text,
    /// An object of integers.
    IntMap,
    /// An object of floats.
    FloatMap,
    /// An array of texts.
    List,
}

impl Aggregate {
    /// The type of its value.
    pub fn value_type(&self) -> ValueType {
        let map = self.by.is_some();
        match &self.op {
            Op::Decayed { .. } if map => ValueType::FloatMap,
            Op::Decayed { .. } => ValueType::Float,
            _ if map => ValueType::IntMap,
            Op::Last(f) if f.ty() == Type::Text => ValueType::Text,
            _ => ValueType::Int,
        }
    }
}

/// A topology version's checked attributes, in answer order.
#[derive(Clone, Debug, PartialEq)]
pub struct Declaration {
    /// The attributes.
    pub attributes: Vec<Attribute>,
}

impl Declaration {
    /// The type of attribute `i`'s value.
    pub fn value_type(&self, i: usize) -> ValueType {
        match &self.attributes[i].def {
            Def::Aggregate(a) => a.value_type(),
            Def::TopK { .. } => ValueType::List,
            Def::Ratio { .. } => ValueType::Float,
        }
    }

    /// The names of the attributes answered, comma separated (for listings).
    pub fn summary(&self) -> String {
        self.attributes.iter().filter(|a| !a.hidden).map(|a| a.name.as_str()).collect::<Vec<_>>().join(", ")
    }
}

/// One attribute as written in a topology file: `{ name = "plays", op = "count", events = "song" }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttributeDecl {
    /// Name in answers: 1-64 characters from `[a-z0-9_]`, starting with a letter.
    pub name: String,
    /// `count`, `sum`, `min`, `max`, `last`, `distinct`, `decayed_count`, `decayed_sum`, `top_k`, `ratio`.
    pub op: String,
    /// `song`, `ad` or `all`; by default what the fields it reads imply, else `all`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<String>,
    /// The field aggregated (`sum`, `min`, `max`, `last`, `distinct`, `decayed_sum`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Only events for which this predicate holds, e.g. `"ms_played < 30000"`.
    #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Group into a map by this field, e.g. `"track.genre"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// `top_k`: how many keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<u32>,
    /// `top_k`: the map attribute ranked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub of: Option<String>,
    /// `ratio`: the numerator attribute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num: Option<String>,
    /// `ratio`: the denominator attribute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub den: Option<String>,
    /// `decayed_*`: the half-life in event time, e.g. `"7d"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub half_life: Option<String>,
    /// Sliding window length in event time, e.g. `"7d"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// Tile length; the window must be a whole number of tiles (at most 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tile: Option<String>,
    /// How far behind the user's clock an event may arrive before it is late (default: the window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lateness: Option<String>,
    /// `drop` (default) or `current_tile`: what happens to a late event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late: Option<String>,
    /// `distinct`: most values kept (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Kept for other attributes (`top_k`, `ratio`) but not answered.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hidden: bool,
}

/// Most tiles a window may have.
pub const MAX_TILES: u32 = 1024;
/// Default `distinct` limit.
pub const DEFAULT_DISTINCT_LIMIT: u32 = 1000;
/// Largest `distinct` limit.
pub const MAX_DISTINCT_LIMIT: u32 = 100_000;
/// Largest `k` of `top_k`.
pub const MAX_K: u32 = 1000;
