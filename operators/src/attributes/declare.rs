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

use std::time::Duration;

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

/// A declaration that cannot be used: which attribute, what is wrong, what to write instead.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("attribute {index} (`{name}`): {message}")]
pub struct DeclError {
    /// Index of the attribute in the list it was declared in.
    pub index: usize,
    /// Its name as written.
    pub name: String,
    /// What is wrong and what to write instead.
    pub message: String,
}

/// Most tiles a window may have.
pub const MAX_TILES: u32 = 1024;
/// Default `distinct` limit.
pub const DEFAULT_DISTINCT_LIMIT: u32 = 1000;
/// Largest `distinct` limit.
pub const MAX_DISTINCT_LIMIT: u32 = 100_000;
/// Largest `k` of `top_k`.
pub const MAX_K: u32 = 1000;

const OPS: &str = "count, sum, min, max, last, distinct, decayed_count, decayed_sum, top_k, ratio";

fn duration(key: &str, text: &str) -> Result<i64, String> {
    let d: Duration = humantime::parse_duration(text)
        .map_err(|e| format!("{key} = {text:?}: {e}; write a duration such as \"30s\", \"1h\" or \"7d\""))?;
    let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    if ms <= 0 {
        return Err(format!("{key} = {text:?}: must be at least 1ms"));
    }
    Ok(ms)
}

fn field(key: &str, text: &str) -> Result<Field, String> {
    Field::parse(text).ok_or_else(|| format!("{key}: {}", Field::unknown(text)))
}

impl AttributeDecl {
    /// The keys set besides `name` and `op`, by name.
    fn set_keys(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut key = |set: bool, k: &'static str| {
            if set {
                out.push(k);
            }
        };
        key(self.events.is_some(), "events");
        key(self.field.is_some(), "field");
        key(self.filter.is_some(), "where");
        key(self.by.is_some(), "by");
        key(self.k.is_some(), "k");
        key(self.of.is_some(), "of");
        key(self.num.is_some(), "num");
        key(self.den.is_some(), "den");
        key(self.half_life.is_some(), "half_life");
        key(self.window.is_some(), "window");
        key(self.tile.is_some(), "tile");
        key(self.lateness.is_some(), "lateness");
        key(self.late.is_some(), "late");
        key(self.limit.is_some(), "limit");
        out
    }

    /// Checks everything that does not depend on the other attributes.
    fn check(&self) -> Result<Def, String> {
        let allowed: &[&str] = match self.op.as_str() {
            "count" => &["events", "where", "by", "window", "tile", "lateness", "late"],
            "sum" | "decayed_sum" | "decayed_count" => {
                &["events", "where", "by", "field", "half_life", "window", "tile", "lateness", "late"]
            }
            "min" | "max" => &["events", "where", "field", "window", "tile", "lateness", "late"],
            "last" => &["events", "where", "field", "window", "tile"],
            "distinct" => &["events", "where", "field", "limit", "window", "tile", "lateness", "late"],
            "top_k" => &["of", "k"],
            "ratio" => &["num", "den"],
            other => return Err(format!("unknown op `{other}`; use one of {OPS}")),
        };
        let needs_field = matches!(self.op.as_str(), "sum" | "min" | "max" | "last" | "distinct" | "decayed_sum");
        let needs_half_life = self.op.starts_with("decayed_");
        for key in self.set_keys() {
            let misplaced =
                !allowed.contains(&key) || (key == "field" && !needs_field) || (key == "half_life" && !needs_half_life);
            if misplaced {
                let why = match key {
                    "lateness" | "late" if self.op == "last" => {
                        "`last` keeps the latest event by time, so no event is late for it".to_owned()
                    }
                    "by" if matches!(self.op.as_str(), "min" | "max" | "last" | "distinct") => {
                        "only count, sum and decayed sums group into maps".to_owned()
                    }
                    "window" | "tile" | "lateness" | "late" if matches!(self.op.as_str(), "top_k" | "ratio") => {
                        format!("`{}` reads other attributes: put the window on those", self.op)
                    }
                    "field" if self.op == "count" || self.op == "decayed_count" => {
                        format!("`{}` counts events; use `sum` / `decayed_sum` to add up a field", self.op)
                    }
                    _ => format!("`{}` takes {}", self.op, allowed.join(", ")),
                };
                return Err(format!("`{key}` does not apply to op `{}`: {why}", self.op));
            }
        }
        match self.op.as_str() {
            "top_k" => {
                let k = self.k.ok_or("top_k needs `k`, e.g. k = 3")?;
                if !(1..=MAX_K).contains(&k) {
                    return Err(format!("k = {k}: use 1..={MAX_K}"));
                }
                self.of.as_ref().ok_or("top_k needs `of`: the map attribute to rank, e.g. of = \"genre_plays\"")?;
                return Ok(Def::TopK { of: usize::MAX, k: k as usize });
            }
            "ratio" => {
                self.num.as_ref().ok_or("ratio needs `num`: the numerator attribute, e.g. num = \"skips\"")?;
                self.den.as_ref().ok_or("ratio needs `den`: the denominator attribute, e.g. den = \"plays\"")?;
                return Ok(Def::Ratio { num: usize::MAX, den: usize::MAX });
            }
            _ => {}
        }
        let value = match &self.field {
            Some(text) => Some(field("field", text)?),
            None if needs_field => {
                return Err(format!("`{}` needs `field`, e.g. field = \"ms_played\"", self.op));
            }
            None => None,
        };
        let by = self.by.as_deref().map(|t| field("by", t)).transpose()?;
        if let Some(b) = by
            && !b.categorical()
        {
            return Err(format!(
                "by = \"{}\": group by a catalogue id or column (track_id, ad_id, track.genre, track.artist_id, ad.category, ad.advertiser_id){}",
                b.name(),
                if b.ty() == Type::Int { "; numbers are not keys" } else { "; its values are unbounded" }
            ));
        }
        let filter = match &self.filter {
            Some(text) => Some(Expr::parse(text).map_err(|e| format!("where = {text:?}: {e}"))?),
            None => None,
        };
        let numeric = |f: Field| -> Result<Field, String> {
            if f.ty() == Type::Int {
                Ok(f)
            } else {
                Err(format!(
                    "`{}` needs a number; `{}` is text{}",
                    self.op,
                    f.name(),
                    if f.categorical() {
                        format!(": count it per value with op = \"count\", by = \"{}\"", f.name())
                    } else {
                        String::new()
                    }
                ))
            }
        };
        let categorical_or_number = |f: Field| -> Result<Field, String> {
            if f.ty() == Type::Int || f.categorical() {
                Ok(f)
            } else {
                Err(format!(
                    "`{}` of `{}`: its values are unbounded; use a catalogue id or column, or a number",
                    self.op,
                    f.name()
                ))
            }
        };
        let op = match (self.op.as_str(), value) {
            ("count", _) => Op::Count,
            ("sum", Some(f)) => Op::Sum(numeric(f)?),
            ("min", Some(f)) => Op::Min(numeric(f)?),
            ("max", Some(f)) => Op::Max(numeric(f)?),
            ("last", Some(f)) => Op::Last(categorical_or_number(f)?),
            ("distinct", Some(f)) => {
                let limit = self.limit.unwrap_or(DEFAULT_DISTINCT_LIMIT);
                if !(1..=MAX_DISTINCT_LIMIT).contains(&limit) {
                    return Err(format!("limit = {limit}: use 1..={MAX_DISTINCT_LIMIT}"));
                }
                Op::Distinct { field: categorical_or_number(f)?, limit }
            }
            ("decayed_count" | "decayed_sum", f) => {
                let text = self.half_life.as_deref().ok_or("decayed sums need `half_life`, e.g. half_life = \"7d\"")?;
                Op::Decayed { field: f.map(numeric).transpose()?, half_life_ms: duration("half_life", text)? }
            }
            _ => unreachable!("ops and their fields are checked above"),
        };
        // Which events: what the fields imply, checked against what is declared.
        let mut implied: Option<Field> = None;
        let used = filter.iter().flat_map(Expr::fields).chain(value).chain(by);
        for f in used {
            if f.events() == Events::All {
                continue;
            }
            match implied {
                Some(g) if g.events() != f.events() => {
                    return Err(format!(
                        "`{}` is on {} events and `{}` on {} events: one attribute counts one kind; declare two",
                        g.name(),
                        g.events().name(),
                        f.name(),
                        f.events().name()
                    ));
                }
                _ => implied = Some(f),
            }
        }
        let declared = match self.events.as_deref() {
            None => None,
            Some("song") => Some(Events::Song),
            Some("ad") => Some(Events::Ad),
            Some("all") => Some(Events::All),
            Some(other) => return Err(format!("events = {other:?}: use \"song\", \"ad\" or \"all\"")),
        };
        let events = match (declared, implied) {
            (Some(d), Some(f)) if d != f.events() => {
                return Err(format!(
                    "events = \"{}\", but `{}` is only on {} events: write events = \"{}\" (or leave events out)",
                    d.name(),
                    f.name(),
                    f.events().name(),
                    f.events().name()
                ));
            }
            (Some(d), _) => d,
            (None, Some(f)) => f.events(),
            (None, None) => Events::All,
        };
        let window = match (&self.window, &self.tile) {
            (None, None) => {
                if self.lateness.is_some() || self.late.is_some() {
                    return Err("`lateness` and `late` apply to windows: add window and tile".into());
                }
                None
            }
            (None, Some(_)) => return Err("`tile` without `window`: add e.g. window = \"7d\"".into()),
            (Some(w), None) => {
                return Err(format!(
                    "window = {w:?} needs `tile`, the step it slides by, e.g. tile = \"1d\" (at most {MAX_TILES} tiles per window)"
                ));
            }
            (Some(w), Some(t)) => {
                let (window_ms, tile_ms) = (duration("window", w)?, duration("tile", t)?);
                if window_ms % tile_ms != 0 {
                    return Err(format!(
                        "window = {w:?} is not a whole number of tiles of {t:?}: pick a tile that divides it (e.g. \"1d\" or \"1h\")"
                    ));
                }
                if tile_ms < 1000 {
                    return Err(format!("tile = {t:?}: use at least \"1s\""));
                }
                let tiles = window_ms / tile_ms;
                if tiles > i64::from(MAX_TILES) {
                    return Err(format!(
                        "window = {w:?} in tiles of {t:?} is {tiles} tiles; use at most {MAX_TILES} (a longer tile)"
                    ));
                }
                let lateness_ms = match &self.lateness {
                    Some(l) if l.trim() == "0s" || l.trim() == "0" => 0,
                    Some(l) => duration("lateness", l)?,
                    None => window_ms,
                };
                let late = match self.late.as_deref() {
                    None | Some("drop") => Late::Drop,
                    Some("current_tile") => Late::CurrentTile,
                    Some(other) => return Err(format!("late = {other:?}: use \"drop\" or \"current_tile\"")),
                };
                Some(Window { tile_ms, tiles: tiles as u32, lateness_ms, late })
            }
        };
        Ok(Def::Aggregate(Aggregate { events, filter, op, by, window }))
    }
}

/// Names an attribute may not take: the profile table's own columns (`squall_feeds`) and the
/// words CQL reserves (an attribute is a column of that table, and the dev CQL server cannot
/// quote identifiers).
const RESERVED: [&str; 5] = ["user_id", "cut", "written_at_ms", "events", "events_hash"];
const CQL_RESERVED: [&str; 71] = [
    "add",
    "aggregate",
    "all",
    "allow",
    "alter",
    "and",
    "any",
    "apply",
    "as",
    "asc",
    "authorize",
    "batch",
    "begin",
    "by",
    "columnfamily",
    "create",
    "delete",
    "desc",
    "describe",
    "drop",
    "each_quorum",
    "entries",
    "execute",
    "from",
    "full",
    "grant",
    "if",
    "in",
    "index",
    "inet",
    "infinity",
    "insert",
    "into",
    "keyspace",
    "keyspaces",
    "limit",
    "local_one",
    "local_quorum",
    "materialized",
    "modify",
    "nan",
    "norecursive",
    "not",
    "of",
    "on",
    "one",
    "order",
    "partition",
    "password",
    "per",
    "primary",
    "quorum",
    "rename",
    "revoke",
    "schema",
    "select",
    "set",
    "table",
    "to",
    "token",
    "three",
    "truncate",
    "two",
    "unlogged",
    "update",
    "use",
    "using",
    "view",
    "where",
    "with",
    "null",
];

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl Declaration {
    /// Checks `decls` (names, ops, fields, types, windows, references) and resolves references.
    pub fn new(decls: &[AttributeDecl]) -> Result<Declaration, DeclError> {
        let err = |index: usize, message: String| DeclError { index, name: decls[index].name.clone(), message };
        if decls.is_empty() {
            return Err(DeclError {
                index: 0,
                name: String::new(),
                message: "a version declares at least one attribute".into(),
            });
        }
        let mut attributes: Vec<Attribute> = Vec::with_capacity(decls.len());
        for (i, d) in decls.iter().enumerate() {
            if !valid_name(&d.name) {
                return Err(err(
                    i,
                    format!("name {:?}: use 1-64 characters from [a-z0-9_], starting with a letter", d.name),
                ));
            }
            if RESERVED.contains(&d.name.as_str()) || CQL_RESERVED.contains(&d.name.as_str()) {
                return Err(err(
                    i,
                    format!(
                        "name {:?} is reserved (a column of the profile table, or a CQL keyword): pick another, e.g. {:?}",
                        d.name,
                        format!("{}_n", d.name)
                    ),
                ));
            }
            if let Some(j) = decls[..i].iter().position(|o| o.name == d.name) {
                return Err(err(i, format!("the name is already used by attribute {j}: pick another")));
            }
            let def = d.check().map_err(|m| err(i, m))?;
            attributes.push(Attribute { name: d.name.clone(), hidden: d.hidden, def });
        }
        let find = |i: usize, key: &str, name: &str| -> Result<usize, DeclError> {
            decls.iter().position(|o| o.name == name).ok_or_else(|| {
                let names: Vec<&str> = decls.iter().map(|o| o.name.as_str()).collect();
                err(i, format!("{key} = {name:?}: no such attribute in this version; there are {}", names.join(", ")))
            })
        };
        for i in 0..attributes.len() {
            let d = &decls[i];
            let resolved = match attributes[i].def {
                Def::TopK { k, .. } => {
                    let of = find(i, "of", d.of.as_deref().unwrap_or_default())?;
                    match &attributes[of].def {
                        Def::Aggregate(a) if a.by.is_some() => {}
                        _ => {
                            return Err(err(
                                i,
                                format!(
                                    "of = {:?}: top_k ranks a map attribute (one with `by`), and `{}` is not one",
                                    attributes[of].name, attributes[of].name
                                ),
                            ));
                        }
                    }
                    Def::TopK { of, k }
                }
                Def::Ratio { .. } => {
                    let pick = |key: &str, name: Option<&String>| -> Result<usize, DeclError> {
                        let j = find(i, key, name.map(String::as_str).unwrap_or_default())?;
                        match &attributes[j].def {
                            Def::Aggregate(a) if matches!(a.value_type(), ValueType::Int | ValueType::Float) => Ok(j),
                            _ => Err(err(
                                i,
                                format!(
                                    "{key} = {:?}: a ratio divides numbers (count, sum, min, max, distinct, decayed sums without `by`)",
                                    attributes[j].name
                                ),
                            )),
                        }
                    };
                    Def::Ratio { num: pick("num", d.num.as_ref())?, den: pick("den", d.den.as_ref())? }
                }
                ref other => other.clone(),
            };
            attributes[i].def = resolved;
        }
        Ok(Declaration { attributes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl(op: &str) -> AttributeDecl {
        AttributeDecl { name: "a".into(), op: op.into(), ..Default::default() }
    }

    fn check(d: AttributeDecl) -> Result<Def, String> {
        d.check()
    }

    #[test]
    fn events_are_implied_by_fields_and_checked() {
        let d = AttributeDecl { by: Some("track.genre".into()), ..decl("count") };
        match check(d).unwrap() {
            Def::Aggregate(a) => assert_eq!((a.events, a.by), (Events::Song, Some(Field::TrackGenre))),
            other => panic!("{other:?}"),
        }
        let d = AttributeDecl { events: Some("ad".into()), by: Some("track.genre".into()), ..decl("count") };
        assert!(check(d).unwrap_err().contains("write events = \"song\""));
        let d = AttributeDecl {
            filter: Some("ad.category == 'x'".into()),
            by: Some("track.genre".into()),
            ..decl("count")
        };
        assert!(check(d).unwrap_err().contains("declare two"));
        match check(decl("count")).unwrap() {
            Def::Aggregate(a) => assert_eq!(a.events, Events::All),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn mistakes_name_what_to_write() {
        let e = |d: AttributeDecl| check(d).unwrap_err();
        assert!(e(decl("cnt")).contains("unknown op `cnt`; use one of count"));
        assert!(e(AttributeDecl { field: Some("ms_played".into()), ..decl("count") }).contains("use `sum`"));
        assert!(e(decl("sum")).contains("needs `field`"));
        assert!(e(AttributeDecl { field: Some("track.genre".into()), ..decl("sum") }).contains("by = \"track.genre\""));
        assert!(e(AttributeDecl { field: Some("event_id".into()), ..decl("last") }).contains("unbounded"));
        assert!(e(AttributeDecl { by: Some("user_id".into()), ..decl("count") }).contains("unbounded"));
        assert!(e(AttributeDecl { by: Some("ms_played".into()), ..decl("count") }).contains("numbers are not keys"));
        assert!(e(AttributeDecl { by: Some("track.gnre".into()), ..decl("count") }).contains("unknown field"));
        let w = |window: &str, tile: &str| AttributeDecl {
            window: Some(window.into()),
            tile: Some(tile.into()),
            ..decl("count")
        };
        assert!(e(w("7d", "5d")).contains("not a whole number of tiles"));
        assert!(e(w("7d", "1s")).contains("at most 1024"));
        assert!(e(w("7 parsecs", "1d")).contains("write a duration"));
        assert!(e(AttributeDecl { window: Some("7d".into()), ..decl("count") }).contains("needs `tile`"));
        assert!(e(AttributeDecl { late: Some("drop".into()), ..decl("count") }).contains("add window"));
        assert!(e(AttributeDecl { late: Some("later".into()), ..w("7d", "1d") }).contains("current_tile"));
        assert!(e(decl("decayed_count")).contains("half_life"));
        assert!(e(AttributeDecl { window: Some("1d".into()), ..decl("ratio") }).contains("put the window on those"));
        assert!(e(decl("top_k")).contains("needs `k`"));
        assert!(e(AttributeDecl { k: Some(0), ..decl("top_k") }).contains("1..="));
        let bad_where = AttributeDecl { filter: Some("ms_played < 'x'".into()), ..decl("count") };
        assert!(e(bad_where).contains("where = \"ms_played < 'x'\": `ms_played` is a number"));
    }

    #[test]
    fn windows_default_their_lateness_to_the_window() {
        let d = AttributeDecl { window: Some("7d".into()), tile: Some("1d".into()), ..decl("count") };
        match check(d).unwrap() {
            Def::Aggregate(Aggregate { window: Some(w), .. }) => {
                assert_eq!(w, Window { tile_ms: 86_400_000, tiles: 7, lateness_ms: 7 * 86_400_000, late: Late::Drop });
                assert_eq!(w.tile(86_400_000 * 3 + 5), 3);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn references_resolve_and_are_checked() {
        let decls = vec![
            AttributeDecl {
                name: "plays".into(),
                op: "count".into(),
                events: Some("song".into()),
                ..Default::default()
            },
            AttributeDecl {
                name: "g".into(),
                op: "count".into(),
                by: Some("track.genre".into()),
                ..Default::default()
            },
            AttributeDecl {
                name: "top".into(),
                op: "top_k".into(),
                of: Some("g".into()),
                k: Some(3),
                ..Default::default()
            },
            AttributeDecl {
                name: "r".into(),
                op: "ratio".into(),
                num: Some("plays".into()),
                den: Some("plays".into()),
                ..Default::default()
            },
        ];
        let d = Declaration::new(&decls).unwrap();
        assert_eq!(d.attributes[2].def, Def::TopK { of: 1, k: 3 });
        assert_eq!(d.attributes[3].def, Def::Ratio { num: 0, den: 0 });
        assert_eq!(d.summary(), "plays, g, top, r");

        let mut bad = decls.clone();
        bad[2].of = Some("plays".into());
        let e = Declaration::new(&bad).unwrap_err();
        assert_eq!((e.index, e.name.as_str()), (2, "top"));
        assert!(e.message.contains("ranks a map attribute"), "{e}");
        let mut bad = decls.clone();
        bad[3].den = Some("g".into());
        assert!(Declaration::new(&bad).unwrap_err().message.contains("divides numbers"));
        let mut bad = decls.clone();
        bad[3].num = Some("nope".into());
        assert!(
            Declaration::new(&bad).unwrap_err().message.contains("no such attribute in this version; there are plays")
        );
        let mut bad = decls.clone();
        bad[1].name = "plays".into();
        assert!(Declaration::new(&bad).unwrap_err().message.contains("already used"));
        let mut bad = decls.clone();
        bad[0].name = "Plays".into();
        assert!(Declaration::new(&bad).unwrap_err().message.contains("[a-z0-9_]"));
        for reserved in ["limit", "events", "user_id"] {
            let mut bad = decls.clone();
            bad[1].name = reserved.into();
            assert!(Declaration::new(&bad).unwrap_err().message.contains("is reserved"), "{reserved}");
        }
    }
}
