//! A from-scratch recomputation of the attributes, written independently of the dataflow, for
//! tests (and the demo's self-check) to compare against. Plain maps and loops; no incrementality.

use std::collections::{BTreeMap, HashMap, HashSet};

use squall_operators::attributes::{AFFINITY_HALF_LIFE_MS, SKIP_BELOW_MS};
use squall_operators::{AttributeSet, Attributes, Event};

/// The catalogue as the oracle sees it: id -> genre / category (`None` for a null column).
#[derive(Clone, Debug, Default)]
pub struct Catalogue {
    /// track_id -> genre.
    pub tracks: HashMap<String, Option<String>>,
    /// ad_id -> category.
    pub ads: HashMap<String, Option<String>>,
}

/// Every user's expected attributes after `events` (in consumption order per user), counting
/// the first event of each (kind, user, event_id) only.
pub fn expected<'a>(
    set: AttributeSet,
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
    counted.into_iter().map(|(user, events)| (user, of_user(set, &events, catalogue))).collect()
}

fn of_user(set: AttributeSet, events: &[&Event], catalogue: &Catalogue) -> Attributes {
    let unknown = || "unknown".to_owned();
    let last_seen_ts = events.iter().map(|e| e.ts()).max().expect("a user has an event");
    let mut a = Attributes {
        plays: 0,
        skips: 0,
        genre_plays: BTreeMap::new(),
        top_genres: Vec::new(),
        ad_impressions: 0,
        ad_categories: BTreeMap::new(),
        last_seen_ts,
        skip_rate: None,
        genre_affinity: None,
    };
    let mut affinity: BTreeMap<String, f64> = BTreeMap::new();
    for e in events {
        match e {
            Event::Song(s) => {
                let genre = catalogue.tracks.get(s.track_id.as_str()).cloned().flatten().unwrap_or_else(unknown);
                a.plays += 1;
                if s.ms_played < SKIP_BELOW_MS {
                    a.skips += 1;
                }
                *a.genre_plays.entry(genre.clone()).or_default() += 1;
                *affinity.entry(genre).or_default() += ((s.ts - last_seen_ts) as f64 / AFFINITY_HALF_LIFE_MS).exp2();
            }
            Event::Ad(ad) => {
                let category = catalogue.ads.get(ad.ad_id.as_str()).cloned().flatten().unwrap_or_else(unknown);
                a.ad_impressions += 1;
                *a.ad_categories.entry(category).or_default() += 1;
            }
        }
    }
    let mut ranked: Vec<(String, u64)> = a.genre_plays.iter().map(|(g, n)| (g.clone(), *n)).collect();
    ranked.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));
    a.top_genres = ranked.into_iter().take(3).map(|(g, _)| g).collect();
    if set == AttributeSet::PersonalizationV2 {
        a.skip_rate = Some(if a.plays == 0 { 0.0 } else { a.skips as f64 / a.plays as f64 });
        a.genre_affinity = Some(affinity);
    }
    a
}

/// The first difference between two users' attributes, field by field; floats compare with a
/// relative tolerance of 1e-9 (their sums may be taken in different orders).
pub fn difference(actual: &Attributes, expected: &Attributes) -> Option<String> {
    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-300)
    }
    macro_rules! field {
        ($f:ident) => {
            if actual.$f != expected.$f {
                return Some(format!("{}: got {:?}, expected {:?}", stringify!($f), actual.$f, expected.$f));
            }
        };
    }
    field!(plays);
    field!(skips);
    field!(genre_plays);
    field!(top_genres);
    field!(ad_impressions);
    field!(ad_categories);
    field!(last_seen_ts);
    match (actual.skip_rate, expected.skip_rate) {
        (Some(a), Some(b)) if close(a, b) => {}
        (None, None) => {}
        (a, b) => return Some(format!("skip_rate: got {a:?}, expected {b:?}")),
    }
    match (&actual.genre_affinity, &expected.genre_affinity) {
        (None, None) => {}
        (Some(a), Some(b)) if a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.0 == y.0 && close(*x.1, *y.1)) => {}
        (a, b) => return Some(format!("genre_affinity: got {a:?}, expected {b:?}")),
    }
    None
}
