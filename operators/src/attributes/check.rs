//! Checking declarations: each attribute on its own (its operation's keys, fields, types,
//! events and window), then the references between them. Every error names what to write instead.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::declare::{
    Aggregate, Attribute, AttributeDecl, DEFAULT_DISTINCT_LIMIT, Declaration, Def, Late, MAX_DISTINCT_LIMIT, MAX_K,
    MAX_TILES, Op, ValueType, Window,
};
use super::field::{Events, Field, Type};
use super::predicate::{Expr, ExprError};

/// An operation, as `op = "..."` names it: parsed once, then matched on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpName {
    /// `count`
    Count,
    /// `sum`
    Sum,
    /// `min`
    Min,
    /// `max`
    Max,
    /// `last`
    Last,
    /// `distinct`
    Distinct,
    /// `decayed_count`
    DecayedCount,
    /// `decayed_sum`
    DecayedSum,
    /// `top_k`
    TopK,
    /// `ratio`
    Ratio,
}

impl OpName {
    /// Every operation, in the order the docs list them.
    pub const ALL: [OpName; 10] = [
        OpName::Count,
        OpName::Sum,
        OpName::Min,
        OpName::Max,
        OpName::Last,
        OpName::Distinct,
        OpName::DecayedCount,
        OpName::DecayedSum,
        OpName::TopK,
        OpName::Ratio,
    ];

    /// The name declarations use.
    pub fn name(self) -> &'static str {
        match self {
            OpName::Count => "count",
            OpName::Sum => "sum",
            OpName::Min => "min",
            OpName::Max => "max",
            OpName::Last => "last",
            OpName::Distinct => "distinct",
            OpName::DecayedCount => "decayed_count",
            OpName::DecayedSum => "decayed_sum",
            OpName::TopK => "top_k",
            OpName::Ratio => "ratio",
        }
    }

    /// The keys it takes besides `name`, `op` and `hidden`.
    fn keys(self) -> &'static [&'static str] {
        match self {
            OpName::Count => &["events", "where", "by", "window", "tile", "lateness", "late"],
            OpName::Sum | OpName::DecayedSum | OpName::DecayedCount => {
                &["events", "where", "by", "field", "half_life", "window", "tile", "lateness", "late"]
            }
            OpName::Min | OpName::Max => &["events", "where", "field", "window", "tile", "lateness", "late"],
            OpName::Last => &["events", "where", "field", "window", "tile"],
            OpName::Distinct => &["events", "where", "field", "limit", "window", "tile", "lateness", "late"],
            OpName::TopK => &["of", "k"],
            OpName::Ratio => &["num", "den"],
        }
    }

    /// Whether it aggregates a `field` (which it then needs).
    fn needs_field(self) -> bool {
        matches!(self, OpName::Sum | OpName::Min | OpName::Max | OpName::Last | OpName::Distinct | OpName::DecayedSum)
    }

    fn decayed(self) -> bool {
        matches!(self, OpName::DecayedCount | OpName::DecayedSum)
    }
}

impl fmt::Display for OpName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for OpName {
    type Err = CheckError;

    fn from_str(s: &str) -> Result<Self, CheckError> {
        OpName::ALL.into_iter().find(|op| op.name() == s).ok_or_else(|| CheckError::UnknownOp(s.to_owned()))
    }
}

impl Serialize for OpName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for OpName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

const OPS: &str = "count, sum, min, max, last, distinct, decayed_count, decayed_sum, top_k, ratio";

/// Why one attribute cannot be used on its own (what it refers to is checked by
/// [`Declaration::new`]): what is wrong, and what to write instead.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum CheckError {
    /// `op` names no operation.
    #[error("unknown op `{0}`; use one of {OPS}")]
    UnknownOp(String),
    /// A key the operation does not take.
    #[error("`{key}` does not apply to op `{op}`: {}", misplaced(*.op, .key))]
    Misplaced {
        /// The key.
        key: &'static str,
        /// The operation.
        op: OpName,
    },
    /// An aggregate of a field without `field`.
    #[error("`{0}` needs `field`, e.g. field = \"ms_played\"")]
    MissingField(OpName),
    /// A decayed sum without `half_life`.
    #[error("decayed sums need `half_life`, e.g. half_life = \"7d\"")]
    MissingHalfLife,
    /// `top_k` without `k`.
    #[error("top_k needs `k`, e.g. k = 3")]
    MissingK,
    /// `top_k` without `of`.
    #[error("top_k needs `of`: the map attribute to rank, e.g. of = \"genre_plays\"")]
    MissingOf,
    /// `ratio` without `num`.
    #[error("ratio needs `num`: the numerator attribute, e.g. num = \"skips\"")]
    MissingNum,
    /// `ratio` without `den`.
    #[error("ratio needs `den`: the denominator attribute, e.g. den = \"plays\"")]
    MissingDen,
    /// A count (`k`, `limit`) outside `1..=max`.
    #[error("{key} = {value}: use 1..={max}")]
    OutOfRange {
        /// The key.
        key: &'static str,
        /// Its value.
        value: u32,
        /// The largest allowed.
        max: u32,
    },
    /// A name that is no field.
    #[error("{key}: {}", Field::unknown(.name))]
    UnknownField {
        /// The key (`field`, `by`).
        key: &'static str,
        /// The name written.
        name: String,
    },
    /// `by` a field whose values are no keys.
    #[error(
        "by = \"{}\": group by a catalogue id or column (track_id, ad_id, track.genre, track.artist_id, ad.category, ad.advertiser_id){}",
        .0.name(),
        if .0.ty() == Type::Int { "; numbers are not keys" } else { "; its values are unbounded" }
    )]
    NotAKey(Field),
    /// A `where` that does not parse or type-check.
    #[error("where = {text:?}: {error}")]
    Where {
        /// The predicate as written.
        text: String,
        /// What is wrong with it.
        #[source]
        error: ExprError,
    },
    /// A numeric aggregate of a text field.
    #[error("`{op}` needs a number; `{}` is text{}", .field.name(), count_it(*.field))]
    NotANumber {
        /// The operation.
        op: OpName,
        /// The field.
        field: Field,
    },
    /// `last` or `distinct` of a field with unbounded values.
    #[error("`{op}` of `{}`: its values are unbounded; use a catalogue id or column, or a number", .field.name())]
    Unbounded {
        /// The operation.
        op: OpName,
        /// The field.
        field: Field,
    },
    /// A duration that does not parse.
    #[error("{key} = {text:?}: {error}; write a duration such as \"30s\", \"1h\" or \"7d\"")]
    Duration {
        /// The key.
        key: &'static str,
        /// The duration as written.
        text: String,
        /// Why it does not parse.
        #[source]
        error: humantime::DurationError,
    },
    /// A duration of zero.
    #[error("{key} = {text:?}: must be at least 1ms")]
    ZeroDuration {
        /// The key.
        key: &'static str,
        /// The duration as written.
        text: String,
    },
    /// Fields of song events and of ad events in one attribute.
    #[error(
        "`{}` is on {} events and `{}` on {} events: one attribute counts one kind; declare two",
        .0.name(), .0.events().name(), .1.name(), .1.events().name()
    )]
    MixedEvents(Field, Field),
    /// `events` names no kind of event.
    #[error("events = {0:?}: use \"song\", \"ad\" or \"all\"")]
    UnknownEvents(String),
    /// `events` other than the kind a field it reads is on.
    #[error(
        "events = \"{}\", but `{}` is only on {} events: write events = \"{}\" (or leave events out)",
        .declared.name(), .field.name(), .field.events().name(), .field.events().name()
    )]
    OtherEvents {
        /// The events declared.
        declared: Events,
        /// The field that implies others.
        field: Field,
    },
    /// `lateness` or `late` without a window.
    #[error("`lateness` and `late` apply to windows: add window and tile")]
    LateWithoutWindow,
    /// `tile` without `window`.
    #[error("`tile` without `window`: add e.g. window = \"7d\"")]
    TileWithoutWindow,
    /// `window` without `tile`.
    #[error(
        "window = {0:?} needs `tile`, the step it slides by, e.g. tile = \"1d\" (at most {max} tiles per window)",
        max = MAX_TILES
    )]
    WindowWithoutTile(String),
    /// A window that is not a whole number of tiles.
    #[error(
        "window = {window:?} is not a whole number of tiles of {tile:?}: pick a tile that divides it (e.g. \"1d\" or \"1h\")"
    )]
    PartTile {
        /// The window as written.
        window: String,
        /// The tile as written.
        tile: String,
    },
    /// A tile shorter than a second.
    #[error("tile = {0:?}: use at least \"1s\"")]
    ShortTile(String),
    /// A window of more than [`MAX_TILES`] tiles.
    #[error("window = {window:?} in tiles of {tile:?} is {tiles} tiles; use at most {max} (a longer tile)", max = MAX_TILES)]
    TooManyTiles {
        /// The window as written.
        window: String,
        /// The tile as written.
        tile: String,
        /// How many tiles that is.
        tiles: i64,
    },
    /// `late` names no policy.
    #[error("late = {0:?}: use \"drop\" or \"current_tile\"")]
    UnknownLate(String),
}

/// Why `key` does not apply to `op`.
fn misplaced(op: OpName, key: &str) -> String {
    match key {
        "lateness" | "late" if op == OpName::Last => {
            "`last` keeps the latest event by time, so no event is late for it".to_owned()
        }
        "by" if matches!(op, OpName::Min | OpName::Max | OpName::Last | OpName::Distinct) => {
            "only count, sum and decayed sums group into maps".to_owned()
        }
        "window" | "tile" | "lateness" | "late" if matches!(op, OpName::TopK | OpName::Ratio) => {
            format!("`{op}` reads other attributes: put the window on those")
        }
        "field" if matches!(op, OpName::Count | OpName::DecayedCount) => {
            format!("`{op}` counts events; use `sum` / `decayed_sum` to add up a field")
        }
        _ => format!("`{op}` takes {}", op.keys().join(", ")),
    }
}

/// What to write instead of a numeric aggregate of text field `f`.
fn count_it(f: Field) -> String {
    if f.categorical() {
        format!(": count it per value with op = \"count\", by = \"{}\"", f.name())
    } else {
        String::new()
    }
}

fn duration(key: &'static str, text: &str) -> Result<i64, CheckError> {
    let d: Duration =
        humantime::parse_duration(text).map_err(|error| CheckError::Duration { key, text: text.to_owned(), error })?;
    let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    if ms <= 0 {
        return Err(CheckError::ZeroDuration { key, text: text.to_owned() });
    }
    Ok(ms)
}

fn field(key: &'static str, text: &str) -> Result<Field, CheckError> {
    Field::parse(text).ok_or_else(|| CheckError::UnknownField { key, name: text.to_owned() })
}

/// `f`, which `op` needs to be a number.
fn numeric(op: OpName, f: Field) -> Result<Field, CheckError> {
    if f.ty() == Type::Int { Ok(f) } else { Err(CheckError::NotANumber { op, field: f }) }
}

/// `f`, which `op` needs to be a number or to have a bounded vocabulary.
fn bounded(op: OpName, f: Field) -> Result<Field, CheckError> {
    if f.ty() == Type::Int || f.categorical() { Ok(f) } else { Err(CheckError::Unbounded { op, field: f }) }
}

/// The field `op` aggregates (checked to be there before anything else is parsed).
fn required(op: OpName, value: Option<Field>) -> Result<Field, CheckError> {
    value.ok_or(CheckError::MissingField(op))
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
    pub fn check(&self) -> Result<Def, CheckError> {
        let op: OpName = self.op.parse()?;
        self.check_keys(op)?;
        match op {
            OpName::TopK => self.top_k(),
            OpName::Ratio => self.ratio(),
            OpName::Count => self.aggregate(op, |_| Ok(Op::Count)),
            OpName::Sum => self.aggregate(op, |f| Ok(Op::Sum(numeric(op, required(op, f)?)?))),
            OpName::Min => self.aggregate(op, |f| Ok(Op::Min(numeric(op, required(op, f)?)?))),
            OpName::Max => self.aggregate(op, |f| Ok(Op::Max(numeric(op, required(op, f)?)?))),
            OpName::Last => self.aggregate(op, |f| Ok(Op::Last(bounded(op, required(op, f)?)?))),
            OpName::Distinct => self.aggregate(op, |f| self.distinct(required(op, f)?)),
            OpName::DecayedCount | OpName::DecayedSum => self.aggregate(op, |f| self.decayed(op, f)),
        }
    }

    /// Every key set is one `op` takes.
    fn check_keys(&self, op: OpName) -> Result<(), CheckError> {
        let allowed = op.keys();
        match self.set_keys().into_iter().find(|key| {
            !allowed.contains(key) || (*key == "field" && !op.needs_field()) || (*key == "half_life" && !op.decayed())
        }) {
            Some(key) => Err(CheckError::Misplaced { key, op }),
            None => Ok(()),
        }
    }

    fn top_k(&self) -> Result<Def, CheckError> {
        let k = self.k.ok_or(CheckError::MissingK)?;
        if !(1..=MAX_K).contains(&k) {
            return Err(CheckError::OutOfRange { key: "k", value: k, max: MAX_K });
        }
        self.of.as_ref().ok_or(CheckError::MissingOf)?;
        Ok(Def::TopK { of: usize::MAX, k: k as usize })
    }

    fn ratio(&self) -> Result<Def, CheckError> {
        self.num.as_ref().ok_or(CheckError::MissingNum)?;
        self.den.as_ref().ok_or(CheckError::MissingDen)?;
        Ok(Def::Ratio { num: usize::MAX, den: usize::MAX })
    }

    fn distinct(&self, f: Field) -> Result<Op, CheckError> {
        let limit = self.limit.unwrap_or(DEFAULT_DISTINCT_LIMIT);
        if !(1..=MAX_DISTINCT_LIMIT).contains(&limit) {
            return Err(CheckError::OutOfRange { key: "limit", value: limit, max: MAX_DISTINCT_LIMIT });
        }
        Ok(Op::Distinct { field: bounded(OpName::Distinct, f)?, limit })
    }

    fn decayed(&self, op: OpName, f: Option<Field>) -> Result<Op, CheckError> {
        let text = self.half_life.as_deref().ok_or(CheckError::MissingHalfLife)?;
        let field = f.map(|f| numeric(op, f)).transpose()?;
        Ok(Op::Decayed { field, half_life_ms: duration("half_life", text)? })
    }

    /// An aggregate attribute of operation `name`, whose aggregation `op` builds from the field.
    fn aggregate(
        &self,
        name: OpName,
        op: impl FnOnce(Option<Field>) -> Result<Op, CheckError>,
    ) -> Result<Def, CheckError> {
        let value = match &self.field {
            Some(text) => Some(field("field", text)?),
            None if name.needs_field() => return Err(CheckError::MissingField(name)),
            None => None,
        };
        let by = self.by.as_deref().map(|t| field("by", t)).transpose()?;
        if let Some(b) = by
            && !b.categorical()
        {
            return Err(CheckError::NotAKey(b));
        }
        let filter = match &self.filter {
            Some(text) => Some(Expr::parse(text).map_err(|error| CheckError::Where { text: text.clone(), error })?),
            None => None,
        };
        let op = op(value)?;
        let events = self.events(filter.iter().flat_map(Expr::fields).chain(value).chain(by))?;
        let window = self.window()?;
        Ok(Def::Aggregate(Aggregate { events, filter, op, by, window }))
    }

    /// Which events: what the fields `used` imply, checked against what is declared.
    fn events(&self, used: impl Iterator<Item = Field>) -> Result<Events, CheckError> {
        let mut implied: Option<Field> = None;
        for f in used {
            if f.events() == Events::All {
                continue;
            }
            match implied {
                Some(g) if g.events() != f.events() => return Err(CheckError::MixedEvents(g, f)),
                _ => implied = Some(f),
            }
        }
        let declared = match self.events.as_deref() {
            None => None,
            Some("song") => Some(Events::Song),
            Some("ad") => Some(Events::Ad),
            Some("all") => Some(Events::All),
            Some(other) => return Err(CheckError::UnknownEvents(other.to_owned())),
        };
        Ok(match (declared, implied) {
            (Some(declared), Some(field)) if declared != field.events() => {
                return Err(CheckError::OtherEvents { declared, field });
            }
            (Some(d), _) => d,
            (None, Some(f)) => f.events(),
            (None, None) => Events::All,
        })
    }

    fn window(&self) -> Result<Option<Window>, CheckError> {
        match (&self.window, &self.tile) {
            (None, None) if self.lateness.is_some() || self.late.is_some() => Err(CheckError::LateWithoutWindow),
            (None, None) => Ok(None),
            (None, Some(_)) => Err(CheckError::TileWithoutWindow),
            (Some(w), None) => Err(CheckError::WindowWithoutTile(w.clone())),
            (Some(w), Some(t)) => self.sliding(w, t).map(Some),
        }
    }

    /// A window of `w` in tiles of `t`.
    fn sliding(&self, w: &str, t: &str) -> Result<Window, CheckError> {
        let (window_ms, tile_ms) = (duration("window", w)?, duration("tile", t)?);
        if window_ms % tile_ms != 0 {
            return Err(CheckError::PartTile { window: w.to_owned(), tile: t.to_owned() });
        }
        if tile_ms < 1000 {
            return Err(CheckError::ShortTile(t.to_owned()));
        }
        let tiles = window_ms / tile_ms;
        if tiles > i64::from(MAX_TILES) {
            return Err(CheckError::TooManyTiles { window: w.to_owned(), tile: t.to_owned(), tiles });
        }
        let lateness_ms = match &self.lateness {
            Some(l) if l.trim() == "0s" || l.trim() == "0" => 0,
            Some(l) => duration("lateness", l)?,
            None => window_ms,
        };
        let late = match self.late.as_deref() {
            None | Some("drop") => Late::Drop,
            Some("current_tile") => Late::CurrentTile,
            Some(other) => return Err(CheckError::UnknownLate(other.to_owned())),
        };
        Ok(Window { tile_ms, tiles: tiles as u32, lateness_ms, late })
    }
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
            let def = d.check().map_err(|e| err(i, e.to_string()))?;
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
        d.check().map_err(|e| e.to_string())
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
