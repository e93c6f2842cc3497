//! A [`Declaration`] compiled into the typed plan the workers run: where each attribute lives in
//! a user's state, and which updates each kind of event makes. Compiled once per process and
//! shared by its workers; no name or string of the declaration is looked at per event.
//!
//! # Notes
//! A user's state is one exact-size array of 32-bit words ([`UserState`]): a fixed area (the
//! user's clock, then each attribute's counters, sums, window rings and the entry counts of its
//! maps), followed by one section per map or `distinct` set, entries of a fixed width each. A new
//! map key grows the array by exactly one entry, so memory follows what the user did:
//!
//! | attribute | words (4 bytes each) |
//! |---|---|
//! | the user's clock (always) | 2 |
//! | the evidence of what was applied (always): events and a hash of their keys | 3 |
//! | `count` | 1; windowed: 1 per tile |
//! | `sum`, `min`, `max` | 2; windowed: 2 per tile |
//! | `last` | 4 |
//! | `decayed_*` | 4; windowed: 2 + 2 per tile |
//! | `count` / `sum` / `decayed_*` `by` a field | 1, plus per key 2 / 3 / 3 (`decayed_*`: plus 2); windowed: per key and tile 3 / 4 / 4 |
//! | `distinct` | 1, plus 2 per value; windowed: 3 per value (at most `limit` values) |
//! | `top_k`, `ratio`, and `max` of `ts` over all events (it is the clock) | 0 |

use compact_str::CompactString;
use squall_enrichment::{Sym, Symbols};

use crate::counters::{self, Counter};

use super::declare::{Aggregate, Declaration, Def, Late, Op, Window};
use super::field::{Events, Field};
use super::predicate::{CmpOp, Expr, Literal};

/// Where an integer comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IntOf {
    Ts,
    MsPlayed,
    DurationMs,
}

/// Where a key (a symbol) comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyOf {
    Genre,
    Artist,
    Category,
    Advertiser,
    TrackId,
    AdId,
}

/// Where a `last` or `distinct` value comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ValueOf {
    Int(IntOf),
    Key(KeyOf),
}

/// Where a text compared by a predicate comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum StrOf {
    Event,
    User,
    Track,
    Ad,
}

/// A compiled predicate.
#[derive(Clone, Debug)]
pub(super) enum Pred {
    And(Box<Pred>, Box<Pred>),
    Or(Box<Pred>, Box<Pred>),
    Not(Box<Pred>),
    Int { of: IntOf, op: CmpOp, value: i64 },
    Sym { of: KeyOf, eq: bool, sym: Sym },
    Str { of: StrOf, eq: bool, value: CompactString },
}

/// The kind of value a cell keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cell {
    /// u32, saturating.
    Count,
    /// i64, saturating.
    Sum,
    /// i64; `i64::MAX` when empty.
    Min,
    /// i64; `i64::MIN` when empty.
    Max,
    /// f64 weight relative to the attribute's reference time.
    Decayed,
}

impl Cell {
    pub(crate) fn words(self) -> u32 {
        if self == Cell::Count { 1 } else { 2 }
    }

    pub(super) fn empty(self) -> u64 {
        match self {
            Cell::Count | Cell::Sum => 0,
            Cell::Min => i64::MAX as u64,
            Cell::Max => i64::MIN as u64,
            Cell::Decayed => 0f64.to_bits(),
        }
    }
}

/// A decayed sum's reference time and half-life.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Decay {
    /// Offset of the reference time (2 words; `i64::MIN` until the first event).
    pub(crate) reference: u32,
    pub(crate) half_life_ms: f64,
}

/// Where an attribute's values are kept.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Store {
    /// The user's clock (`max` of `ts` over every event).
    Clock,
    /// One cell at `at`.
    Scalar { at: u32, cell: Cell },
    /// One cell per tile at `at`, cell of tile `t` at index `t % tiles`.
    Ring { at: u32, cell: Cell, tiles: u32 },
    /// `(ts, value)` of the latest event: 4 words at `at`.
    Last { at: u32 },
    /// A map: section entries `[key sym, (tile), cell]`.
    Map { section: u32, cell: Cell },
    /// A set: section entries `[lo, hi, (tile)]` of a 64-bit value.
    Distinct { section: u32, limit: u32 },
}

/// One section of the variable area.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Section {
    /// Offset of its entry count in the fixed area.
    pub(crate) len_at: u32,
    /// Words per entry.
    pub(crate) width: u32,
    /// Whether word 0 of an entry is a symbol (translated to a name in snapshots).
    pub(crate) key_sym: bool,
    /// The word of an entry holding its tile, when windowed.
    pub(crate) tile_word: Option<u32>,
    /// Whether entries are kept sorted by their 64-bit value (sets).
    pub(crate) sorted: bool,
}

/// How an aggregate attribute is kept and updated.
#[derive(Clone, Debug)]
pub(crate) struct Stored {
    pub(crate) store: Store,
    pub(crate) window: Option<Window>,
    pub(crate) decay: Option<Decay>,
    /// Whether `last`'s or `distinct`'s value is a symbol (else an integer).
    pub(crate) text: bool,
}

/// An update one kind of event makes.
#[derive(Clone, Debug)]
pub(super) struct Update {
    pub(super) filter: Option<Pred>,
    /// Index of the attribute in the plan.
    pub(super) attribute: u32,
    /// What the cell adds or compares: `None` counts 1.
    pub(super) amount: Option<IntOf>,
    /// The map key, for maps.
    pub(super) key: Option<KeyOf>,
    /// The value, for `last` and `distinct`.
    pub(super) value: Option<ValueOf>,
    /// Late events of a window are counted here.
    pub(super) late: Option<Counter>,
}

/// How an attribute is read.
#[derive(Clone, Debug)]
pub(crate) enum Reader {
    Stored(Stored),
    TopK { of: usize, k: usize },
    Ratio { num: usize, den: usize },
}

/// A compiled declaration. See the module notes for the layout.
#[derive(Debug)]
pub struct Plan {
    declaration: Declaration,
    pub(super) fixed: u32,
    pub(crate) sections: Vec<Section>,
    pub(crate) readers: Vec<Reader>,
    /// The updates of a song completion.
    pub(super) song: Vec<Update>,
    /// The updates of an ad impression.
    pub(super) ad: Vec<Update>,
    /// `(offset, two-word value)` of every fixed cell that is not zero when empty.
    pub(super) inits: Vec<(u32, u64)>,
    /// Attributes with windows (whose storage rolls when the clock's tile advances).
    pub(super) windowed: Vec<u32>,
    /// Offsets of the `last` attributes whose value is a symbol.
    pub(super) sym_words: Vec<u32>,
    pub(super) fingerprint: u64,
}

fn int_of(f: Field) -> IntOf {
    match f {
        Field::Ts => IntOf::Ts,
        Field::MsPlayed => IntOf::MsPlayed,
        Field::TrackDurationMs => IntOf::DurationMs,
        other => unreachable!("{other:?} is not a number (checked by the declaration)"),
    }
}

fn key_of(f: Field) -> KeyOf {
    match f {
        Field::TrackGenre => KeyOf::Genre,
        Field::TrackArtistId => KeyOf::Artist,
        Field::AdCategory => KeyOf::Category,
        Field::AdAdvertiserId => KeyOf::Advertiser,
        Field::TrackId => KeyOf::TrackId,
        Field::AdId => KeyOf::AdId,
        other => unreachable!("{other:?} is not categorical (checked by the declaration)"),
    }
}

fn value_of(f: Field) -> ValueOf {
    if f.categorical() { ValueOf::Key(key_of(f)) } else { ValueOf::Int(int_of(f)) }
}

fn compile_pred(e: &Expr, symbols: &Symbols) -> Pred {
    match e {
        Expr::And(a, b) => Pred::And(Box::new(compile_pred(a, symbols)), Box::new(compile_pred(b, symbols))),
        Expr::Or(a, b) => Pred::Or(Box::new(compile_pred(a, symbols)), Box::new(compile_pred(b, symbols))),
        Expr::Not(a) => Pred::Not(Box::new(compile_pred(a, symbols))),
        Expr::Cmp { field, op, value: Literal::Int(n) } => Pred::Int { of: int_of(*field), op: *op, value: *n },
        Expr::Cmp { field, op, value: Literal::Text(t) } => {
            let eq = *op == CmpOp::Eq;
            match field {
                Field::EventId => Pred::Str { of: StrOf::Event, eq, value: t.into() },
                Field::UserId => Pred::Str { of: StrOf::User, eq, value: t.into() },
                Field::TrackId => Pred::Str { of: StrOf::Track, eq, value: t.into() },
                Field::AdId => Pred::Str { of: StrOf::Ad, eq, value: t.into() },
                f => Pred::Sym { of: key_of(*f), eq, sym: symbols.intern(t) },
            }
        }
    }
}

/// Builds the fixed area and the sections.
#[derive(Default)]
struct Layout {
    fixed: u32,
    sections: Vec<Section>,
    inits: Vec<(u32, u64)>,
    sym_words: Vec<u32>,
}

impl Layout {
    fn take(&mut self, words: u32) -> u32 {
        let at = self.fixed;
        self.fixed += words;
        at
    }

    fn cell(&mut self, cell: Cell) -> u32 {
        let at = self.take(cell.words());
        if cell.empty() != 0 {
            self.inits.push((at, cell.empty()));
        }
        at
    }

    fn section(&mut self, width: u32, key_sym: bool, tile_word: Option<u32>, sorted: bool) -> u32 {
        let len_at = self.take(1);
        self.sections.push(Section { len_at, width, key_sym, tile_word, sorted });
        (self.sections.len() - 1) as u32
    }
}

impl Plan {
    /// Compiles `declaration`; text literals of predicates are interned in `symbols`, which must
    /// be the symbols of the events the plan is applied to.
    pub fn compile(declaration: &Declaration, symbols: &Symbols) -> Plan {
        let mut layout = Layout::default();
        // The clock: words 0..2.
        let clock = layout.take(2);
        layout.inits.push((clock, i64::MIN as u64));
        // The evidence of what was applied: words 2 (events) and 3..5 (their keys' hash sum).
        layout.take(3);
        let mut readers = Vec::with_capacity(declaration.attributes.len());
        let (mut song, mut ad, mut windowed) = (Vec::new(), Vec::new(), Vec::new());
        for (i, attribute) in declaration.attributes.iter().enumerate() {
            let a = match &attribute.def {
                Def::Aggregate(a) => a,
                Def::TopK { of, k } => {
                    readers.push(Reader::TopK { of: *of, k: *k });
                    continue;
                }
                Def::Ratio { num, den } => {
                    readers.push(Reader::Ratio { num: *num, den: *den });
                    continue;
                }
            };
            let is_clock = a.events == Events::All
                && a.filter.is_none()
                && a.op == Op::Max(Field::Ts)
                && a.by.is_none()
                && a.window.is_none();
            if is_clock {
                readers.push(Reader::Stored(Stored { store: Store::Clock, window: None, decay: None, text: false }));
                continue;
            }
            let stored = Plan::place(&mut layout, a);
            if a.window.is_some() {
                windowed.push(i as u32);
            }
            let late = a.window.map(|w| {
                let policy = if w.late == Late::Drop { "drop" } else { "current_tile" };
                counters::window_late_events(&attribute.name, policy)
            });
            let (amount, value) = match &a.op {
                Op::Sum(f) | Op::Min(f) | Op::Max(f) => (Some(int_of(*f)), None),
                Op::Decayed { field, .. } => (field.map(int_of), None),
                Op::Last(f) | Op::Distinct { field: f, .. } => (None, Some(value_of(*f))),
                Op::Count => (None, None),
            };
            let update = Update {
                filter: a.filter.as_ref().map(|e| compile_pred(e, symbols)),
                attribute: i as u32,
                amount,
                key: a.by.map(key_of),
                value,
                late,
            };
            if a.events != Events::Ad {
                song.push(update.clone());
            }
            if a.events != Events::Song {
                ad.push(update);
            }
            readers.push(Reader::Stored(stored));
        }
        let fingerprint = xxhash_rust::xxh3::xxh3_64(format!("{declaration:?}").as_bytes());
        Plan {
            declaration: declaration.clone(),
            fixed: layout.fixed,
            sections: layout.sections,
            readers,
            song,
            ad,
            inits: layout.inits,
            windowed,
            sym_words: layout.sym_words,
            fingerprint,
        }
    }

    fn place(layout: &mut Layout, a: &Aggregate) -> Stored {
        let cell = match &a.op {
            Op::Count => Cell::Count,
            Op::Sum(_) => Cell::Sum,
            Op::Min(_) => Cell::Min,
            Op::Max(_) => Cell::Max,
            Op::Decayed { .. } => Cell::Decayed,
            Op::Last(_) | Op::Distinct { .. } => Cell::Count,
        };
        let decay = match &a.op {
            Op::Decayed { half_life_ms, .. } => {
                let reference = layout.take(2);
                layout.inits.push((reference, i64::MIN as u64));
                Some(Decay { reference, half_life_ms: *half_life_ms as f64 })
            }
            _ => None,
        };
        let tiles = a.window.map(|w| w.tiles);
        let text = matches!(&a.op, Op::Last(f) | Op::Distinct { field: f, .. } if f.categorical());
        let store = match (&a.op, a.by) {
            (Op::Last(_), _) => {
                let at = layout.take(4);
                layout.inits.push((at, i64::MIN as u64));
                layout.inits.push((at + 2, i64::MIN as u64));
                if text {
                    layout.sym_words.push(at);
                }
                Store::Last { at }
            }
            (Op::Distinct { limit, .. }, _) => {
                let width = if tiles.is_some() { 3 } else { 2 };
                let section = layout.section(width, text, tiles.map(|_| 2), true);
                Store::Distinct { section, limit: *limit }
            }
            (_, Some(_)) => {
                let (tile_word, cell_at) = if tiles.is_some() { (Some(1), 2) } else { (None, 1) };
                let section = layout.section(cell_at + cell.words(), true, tile_word, false);
                Store::Map { section, cell }
            }
            (_, None) => match tiles {
                None => Store::Scalar { at: layout.cell(cell), cell },
                Some(tiles) => {
                    let at = layout.fixed;
                    for _ in 0..tiles {
                        layout.cell(cell);
                    }
                    Store::Ring { at, cell, tiles }
                }
            },
        };
        Stored { store, window: a.window, decay, text }
    }

    /// The declaration compiled.
    pub fn declaration(&self) -> &Declaration {
        &self.declaration
    }

    /// Words of the fixed area: a user's smallest state, in 4-byte words.
    pub fn fixed_words(&self) -> usize {
        self.fixed as usize
    }

    /// A hash of the declaration, kept in snapshots so that a state is never restored under
    /// another declaration.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    pub(crate) fn stored(&self, i: usize) -> Option<&Stored> {
        match &self.readers[i] {
            Reader::Stored(s) => Some(s),
            _ => None,
        }
    }
}
