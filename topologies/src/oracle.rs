//! A from-scratch recomputation of any declaration's attributes, written independently of the
//! dataflow and of the compiled plan, for tests (and the demo's self-check) to compare against:
//! plain maps and loops over each user's whole history, no incrementality, no shared state layout.
//! It shares only the declaration's parsed form (`squall_operators::attributes::declare`) with the engine.

use std::collections::{BTreeMap, HashMap, HashSet};

use squall_enrichment::{AdRow, TrackRow};
use squall_operators::attributes::declare::{Aggregate, Def, Late, Op, Window};
use squall_operators::attributes::predicate::{CmpOp, Expr, Literal};
use squall_operators::attributes::{Events, Field};
use squall_operators::{Attributes, Declaration, Event, Value};

/// The catalogue as the oracle sees it: every row of `tracks` and `ads` by id.
#[derive(Clone, Debug, Default)]
pub struct Catalogue {
    /// track_id -> row.
    pub tracks: HashMap<String, TrackRow>,
    /// ad_id -> row.
    pub ads: HashMap<String, AdRow>,
}

/// The relative tolerance the comparisons of floats allow (sums taken in different orders).
pub const FLOAT_TOLERANCE: f64 = 1e-9;

/// A field's value in one event.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum V {
    Null,
    Int(i64),
    Text(String),
}

/// One counted event with its catalogue row, read field by field.
struct Row<'a> {
    event: &'a Event,
    catalogue: &'a Catalogue,
}

impl Row<'_> {
    fn get(&self, f: Field) -> Option<V> {
        let unknown = || V::Text("unknown".into());
        let text = |s: &Option<String>| s.clone().map_or_else(unknown, V::Text);
        Some(match (f, self.event) {
            (Field::EventId, e) => V::Text(e.event_id().to_owned()),
            (Field::UserId, e) => V::Text(e.user_id().to_owned()),
            (Field::Ts, e) => V::Int(e.ts()),
            (Field::TrackId, Event::Song(s)) => V::Text(s.track_id.to_string()),
            (Field::MsPlayed, Event::Song(s)) => V::Int(s.ms_played as i64),
            (Field::AdId, Event::Ad(a)) => V::Text(a.ad_id.to_string()),
            (Field::TrackGenre | Field::TrackArtistId | Field::TrackDurationMs, Event::Song(s)) => {
                match (f, self.catalogue.tracks.get(s.track_id.as_str())) {
                    (Field::TrackGenre, Some(r)) => text(&r.genre),
                    (Field::TrackArtistId, Some(r)) => text(&r.artist_id),
                    (Field::TrackDurationMs, Some(r)) => r.duration_ms.map_or(V::Null, |d| V::Int(i64::from(d))),
                    (Field::TrackDurationMs, None) => V::Null,
                    _ => unknown(),
                }
            }
            (Field::AdCategory | Field::AdAdvertiserId, Event::Ad(a)) => {
                match (f, self.catalogue.ads.get(a.ad_id.as_str())) {
                    (Field::AdCategory, Some(r)) => text(&r.category),
                    (Field::AdAdvertiserId, Some(r)) => text(&r.advertiser_id),
                    _ => unknown(),
                }
            }
            _ => return None,
        })
    }

    fn holds(&self, e: &Expr) -> bool {
        match e {
            Expr::And(a, b) => self.holds(a) && self.holds(b),
            Expr::Or(a, b) => self.holds(a) || self.holds(b),
            Expr::Not(a) => !self.holds(a),
            Expr::Cmp { field, op, value } => {
                let v = self.get(*field);
                let ord = match (&v, value) {
                    (Some(V::Int(a)), Literal::Int(b)) => a.cmp(b),
                    (Some(V::Text(a)), Literal::Text(b)) => a.as_str().cmp(b.as_str()),
                    _ => return false,
                };
                match op {
                    CmpOp::Eq => ord.is_eq(),
                    CmpOp::Ne => ord.is_ne(),
                    CmpOp::Lt => ord.is_lt(),
                    CmpOp::Le => ord.is_le(),
                    CmpOp::Gt => ord.is_gt(),
                    CmpOp::Ge => ord.is_ge(),
                }
            }
        }
    }

    fn counts_for(&self, a: &Aggregate) -> bool {
        let kind_ok = matches!(
            (a.events, self.event),
            (Events::All, _) | (Events::Song, Event::Song(_)) | (Events::Ad, Event::Ad(_))
        );
        kind_ok && a.filter.as_ref().is_none_or(|f| self.holds(f))
    }
}

fn tile(w: &Window, ts: i64) -> i64 {
    ts.div_euclid(w.tile_ms)
}

/// Every user's expected attributes after `events` (in consumption order per user), counting
/// the first event of each (kind, user, event_id) only.
pub fn expected<'a>(
    declaration: &Declaration,
    events: impl IntoIterator<Item = &'a Event>,
    catalogue: &Catalogue,
) -> BTreeMap<String, Attributes> {
    let mut seen = HashSet::new();
    let mut counted: BTreeMap<String, Vec<&Event>> = BTreeMap::new();
    for e in events {
        if seen.insert((e.kind(), e.user_id().to_owned(), e.event_id().to_owned())) {
            counted.entry(e.user_id().to_owned()).or_default().push(e);
        }
    }
    counted.into_iter().map(|(user, events)| (user, of_user(declaration, &events, catalogue))).collect()
}

/// One user's attributes after their counted `events`, in arrival order.
pub fn of_user(declaration: &Declaration, events: &[&Event], catalogue: &Catalogue) -> Attributes {
    let rows: Vec<Row<'_>> = events.iter().map(|e| Row { event: e, catalogue }).collect();
    let clock = events.iter().map(|e| e.ts()).max().expect("a user has an event");
    let values: Vec<Value> = declaration
        .attributes
        .iter()
        .map(|a| match &a.def {
            Def::Aggregate(agg) => aggregate(agg, &rows, clock),
            // Derived attributes are filled in below, from the stored ones.
            _ => Value::Null,
        })
        .collect();
    let mut out = Vec::new();
    for (i, a) in declaration.attributes.iter().enumerate() {
        let v = match &a.def {
            Def::Aggregate(_) => values[i].clone(),
            Def::TopK { of, k } => {
                let Value::Map(m) = &values[*of] else { unreachable!("top_k of a map") };
                let mut ranked: Vec<(&String, f64)> = m.iter().map(|(n, v)| (n, number(v).unwrap_or(0.0))).collect();
                ranked.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(y.0)));
                Value::List(ranked.into_iter().take(*k).map(|(n, _)| n.clone()).collect())
            }
            Def::Ratio { num, den } => match (number(&values[*num]), number(&values[*den])) {
                (Some(_), Some(0.0)) => Value::Float(0.0),
                (Some(n), Some(d)) => Value::Float(n / d),
                _ => Value::Null,
            },
        };
        if !a.hidden {
            out.push((a.name.clone(), v));
        }
    }
    Attributes(out)
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Int(n) => Some(*n as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    }
}

/// The events an aggregate counts (with their arrival index), after its window and lateness.
fn included<'r, 'a>(a: &Aggregate, rows: &'r [Row<'a>], clock: i64) -> Vec<&'r Row<'a>> {
    let mut out = Vec::new();
    let mut before: Option<i64> = None;
    for r in rows {
        let ts = r.event.ts();
        if r.counts_for(a) {
            match &a.window {
                None => out.push(r),
                Some(w) => {
                    let late = before.is_some_and(|b| ts < b.saturating_sub(w.lateness_ms));
                    let effective = match (late, w.late) {
                        (true, Late::Drop) => None,
                        (true, Late::CurrentTile) => before.map(|b| tile(w, b)),
                        (false, _) => Some(tile(w, ts)),
                    };
                    if effective.is_some_and(|t| t + i64::from(w.tiles) > tile(w, clock)) {
                        out.push(r);
                    }
                }
            }
        }
        before = Some(before.map_or(ts, |b| b.max(ts)));
    }
    out
}

fn aggregate(a: &Aggregate, rows: &[Row<'_>], clock: i64) -> Value {
    if let Op::Distinct { field, limit } = &a.op {
        return distinct(a, *field, *limit as usize, rows);
    }
    if let Op::Last(field) = &a.op {
        let mut best: Option<(i64, V)> = None;
        for r in rows.iter().filter(|r| r.counts_for(a)) {
            let v = r.get(*field).unwrap_or(V::Null);
            let newer = match &best {
                None => true,
                Some((ts, cur)) => r.event.ts() > *ts || (r.event.ts() == *ts && v > *cur),
            };
            if newer {
                best = Some((r.event.ts(), v));
            }
        }
        return match best {
            Some((ts, _)) if a.window.is_some_and(|w| tile(&w, ts) + i64::from(w.tiles) <= tile(&w, clock)) => {
                Value::Null
            }
            Some((_, V::Int(n))) => Value::Int(n),
            Some((_, V::Text(t))) => Value::Text(t),
            _ => Value::Null,
        };
    }
    let rows = included(a, rows, clock);
    let amount = |r: &Row<'_>| -> Option<i64> {
        match &a.op {
            Op::Count => Some(1),
            Op::Sum(f) | Op::Min(f) | Op::Max(f) => match r.get(*f) {
                Some(V::Int(n)) => Some(n),
                _ => None,
            },
            Op::Decayed { field: None, .. } => Some(1),
            Op::Decayed { field: Some(f), .. } => match r.get(*f) {
                Some(V::Int(n)) => Some(n),
                _ => None,
            },
            Op::Last(_) | Op::Distinct { .. } => unreachable!("handled above"),
        }
    };
    let fold = |rows: &[&Row<'_>]| -> Value {
        let amounts: Vec<(i64, i64)> = rows.iter().filter_map(|r| amount(r).map(|v| (r.event.ts(), v))).collect();
        match &a.op {
            Op::Count => Value::Int(amounts.len() as i64),
            Op::Sum(_) => Value::Int(amounts.iter().map(|(_, v)| *v).sum()),
            Op::Min(_) => amounts.iter().map(|(_, v)| *v).min().map_or(Value::Null, Value::Int),
            Op::Max(_) => amounts.iter().map(|(_, v)| *v).max().map_or(Value::Null, Value::Int),
            Op::Decayed { half_life_ms, .. } => Value::Float(
                amounts.iter().map(|(ts, v)| *v as f64 * ((ts - clock) as f64 / *half_life_ms as f64).exp2()).sum(),
            ),
            Op::Last(_) | Op::Distinct { .. } => unreachable!("handled above"),
        }
    };
    match a.by {
        None => fold(&rows),
        Some(by) => {
            let mut groups: BTreeMap<String, Vec<&Row<'_>>> = BTreeMap::new();
            for r in rows {
                if let Some(V::Text(key)) = r.get(by) {
                    groups.entry(key).or_default().push(r);
                }
            }
            Value::Map(groups.into_iter().map(|(k, rs)| (k, fold(&rs))).collect())
        }
    }
}

/// `distinct`, simulated in arrival order: the limit keeps the first values, and a windowed
/// set forgets values whose latest tile leaves the window as the user's clock advances.
fn distinct(a: &Aggregate, field: Field, limit: usize, rows: &[Row<'_>]) -> Value {
    let mut set: BTreeMap<V, i64> = BTreeMap::new();
    let mut clock: Option<i64> = None;
    for r in rows {
        let ts = r.event.ts();
        let before = clock;
        clock = Some(before.map_or(ts, |c| c.max(ts)));
        if let (Some(w), Some(now)) = (&a.window, clock) {
            set.retain(|_, t| *t + i64::from(w.tiles) > tile(w, now));
        }
        if !r.counts_for(a) {
            continue;
        }
        let effective = match &a.window {
            None => 0,
            Some(w) => {
                let late = before.is_some_and(|b| ts < b.saturating_sub(w.lateness_ms));
                match (late, w.late) {
                    (true, Late::Drop) => continue,
                    (true, Late::CurrentTile) => tile(w, before.unwrap_or(ts)),
                    (false, _) => tile(w, ts),
                }
            }
        };
        if let Some(w) = &a.window
            && effective + i64::from(w.tiles) <= tile(w, clock.unwrap_or(ts))
        {
            continue;
        }
        let v = match r.get(field) {
            Some(V::Null) | None => continue,
            Some(v) => v,
        };
        let room = set.len() < limit;
        match set.get_mut(&v) {
            Some(t) => *t = (*t).max(effective),
            None if room => {
                set.insert(v, effective);
            }
            None => {}
        }
    }
    Value::Int(set.len() as i64)
}

/// The first difference between two users' attributes; floats compare with a relative
/// tolerance of [`FLOAT_TOLERANCE`].
pub fn difference(actual: &Attributes, expected: &Attributes) -> Option<String> {
    actual.difference(expected, FLOAT_TOLERANCE)
}
