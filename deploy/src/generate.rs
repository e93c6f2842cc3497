//! Generated catalogues and event streams with a realistic skew, for the demo, tests and benchmarks.
//!
//! Everything is a pure function of a seed: a track's genre is the same whenever it is asked for,
//! so the catalogue need not be kept in memory to compute expected attributes.

use std::collections::VecDeque;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use squall_enrichment::{AdRow, TrackRow};
use squall_operators::event::{AdImpression, SongCompletion};
use squall_operators::{Event, EventKind};
use squall_topologies::oracle;

/// Genres of the generated catalogue; earlier ones are more common.
pub const GENRES: [&str; 20] = [
    "pop",
    "rock",
    "hip-hop",
    "electronic",
    "indie",
    "latin",
    "r&b",
    "country",
    "jazz",
    "classical",
    "metal",
    "folk",
    "k-pop",
    "reggae",
    "blues",
    "soul",
    "punk",
    "ambient",
    "funk",
    "gospel",
];
/// Ad categories of the generated catalogue.
pub const CATEGORIES: [&str; 10] =
    ["automotive", "food", "travel", "finance", "gaming", "fashion", "telecom", "health", "retail", "entertainment"];

fn mix(seed: u64, i: u64) -> u64 {
    xorshift(seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// A catalogue of `tracks` tracks `t0..` and `ads` ads `a0..`.
#[derive(Clone, Copy, Debug)]
pub struct CatalogueGen {
    /// Number of tracks.
    pub tracks: u64,
    /// Number of ads.
    pub ads: u64,
    /// Seed.
    pub seed: u64,
}

impl CatalogueGen {
    /// Genre of track `i`: skewed towards the first genres.
    pub fn genre(&self, i: u64) -> &'static str {
        let h = mix(self.seed, i);
        // Squaring a uniform number skews towards 0.
        let u = (h % 10_000) as f64 / 10_000.0;
        GENRES[((u * u) * GENRES.len() as f64) as usize]
    }

    /// The `tracks` row of track `i`.
    pub fn track(&self, i: u64) -> (String, TrackRow) {
        let h = mix(self.seed, i);
        (
            format!("t{i}"),
            TrackRow {
                genre: Some(self.genre(i).to_owned()),
                artist_id: Some(format!("ar{}", i / 8)),
                duration_ms: Some(90_000 + (h % 300_000) as i32),
            },
        )
    }

    /// Category of ad `i`.
    pub fn category(&self, i: u64) -> &'static str {
        CATEGORIES[(mix(self.seed ^ 0xad, i) % CATEGORIES.len() as u64) as usize]
    }

    /// The `ads` row of ad `i`.
    pub fn ad(&self, i: u64) -> (String, AdRow) {
        (
            format!("a{i}"),
            AdRow { advertiser_id: Some(format!("adv{}", i / 4)), category: Some(self.category(i).to_owned()) },
        )
    }

    /// The catalogue as the oracle sees it.
    pub fn oracle(&self) -> oracle::Catalogue {
        oracle::Catalogue {
            tracks: (0..self.tracks).map(|i| self.track(i)).collect(),
            ads: (0..self.ads).map(|i| self.ad(i)).collect(),
        }
    }
}

/// Shape of a generated event stream.
#[derive(Clone, Debug)]
pub struct EventGenConfig {
    /// Distinct users (`u1..=users`, Zipf-distributed: u1 is the most active).
    pub users: u64,
    /// The catalogue the events refer to.
    pub catalogue: CatalogueGen,
    /// Prefix of every event id, unique per run so that runs never look like resends of each other.
    pub run_id: String,
    /// Share of events that are ad impressions.
    pub ad_share: f64,
    /// Share of song completions that are skips (< 30 s).
    pub skip_share: f64,
    /// Share of events naming an id that is not in the catalogue.
    pub unknown_share: f64,
    /// Share of events that are resends of a recent event.
    pub duplicate_share: f64,
    /// Share of records that are malformed (they go to the dead-letter topic).
    pub malformed_share: f64,
    /// Zipf exponent of user and track popularity.
    pub zipf_exponent: f64,
}

impl Default for EventGenConfig {
    fn default() -> Self {
        EventGenConfig {
            users: 100_000,
            catalogue: CatalogueGen { tracks: 100_000, ads: 2_000, seed: 7 },
            run_id: "run".into(),
            ad_share: 0.2,
            skip_share: 0.3,
            unknown_share: 0.005,
            duplicate_share: 0.01,
            malformed_share: 0.0,
            zipf_exponent: 1.0,
        }
    }
}

/// One generated record.
#[derive(Clone, Debug)]
pub enum Generated {
    /// A valid event (possibly a resend of an earlier one).
    Event(Event),
    /// Bytes that are not a valid event of the kind's topic.
    Malformed(EventKind, Vec<u8>),
}

/// An endless, seeded event stream.
pub struct EventGen {
    config: EventGenConfig,
    rng: StdRng,
    users: Zipf<f64>,
    tracks: Zipf<f64>,
    ads: Zipf<f64>,
    recent: VecDeque<Event>,
    next_id: u64,
}

impl EventGen {
    /// A stream shaped by `config`, seeded by `seed`.
    pub fn new(config: EventGenConfig, seed: u64) -> Self {
        let zipf = |n: u64| Zipf::new(n.max(1) as f64, config.zipf_exponent).expect("valid Zipf parameters");
        EventGen {
            users: zipf(config.users),
            tracks: zipf(config.catalogue.tracks),
            ads: zipf(config.catalogue.ads),
            rng: StdRng::seed_from_u64(seed),
            recent: VecDeque::with_capacity(1024),
            next_id: 0,
            config,
        }
    }

    /// The next record, with event time `now_ms` (minus a little jitter).
    pub fn next_at(&mut self, now_ms: i64) -> Generated {
        let c = &self.config;
        if c.malformed_share > 0.0 && self.rng.random_bool(c.malformed_share) {
            return self.malformed();
        }
        if !self.recent.is_empty() && c.duplicate_share > 0.0 && self.rng.random_bool(c.duplicate_share) {
            let i = self.rng.random_range(0..self.recent.len());
            return Generated::Event(self.recent[i].clone());
        }
        self.next_id += 1;
        let event_id = format!("{}-{}", c.run_id, self.next_id).into();
        let user_id = format!("u{}", self.users.sample(&mut self.rng) as u64).into();
        let ts = now_ms - self.rng.random_range(0..2_000);
        let unknown = c.unknown_share > 0.0 && self.rng.random_bool(c.unknown_share);
        let event = if self.rng.random_bool(c.ad_share) {
            let ad = if unknown {
                c.catalogue.ads + self.rng.random_range(0..1000)
            } else {
                self.ads.sample(&mut self.rng) as u64 - 1
            };
            Event::Ad(AdImpression { event_id, user_id, ad_id: format!("a{ad}").into(), ts })
        } else {
            let track = if unknown {
                c.catalogue.tracks + self.rng.random_range(0..1000)
            } else {
                self.tracks.sample(&mut self.rng) as u64 - 1
            };
            let ms_played = if self.rng.random_bool(c.skip_share) {
                self.rng.random_range(0..30_000)
            } else {
                self.rng.random_range(30_000..420_000)
            };
            Event::Song(SongCompletion { event_id, user_id, track_id: format!("t{track}").into(), ms_played, ts })
        };
        if self.recent.len() == 1024 {
            self.recent.pop_front();
        }
        self.recent.push_back(event.clone());
        Generated::Event(event)
    }

    fn malformed(&mut self) -> Generated {
        let kind = if self.rng.random_bool(0.5) { EventKind::Song } else { EventKind::Ad };
        let bytes: Vec<u8> = match self.rng.random_range(0..5) {
            0 => b"{\"event_id\": \"x\", \"user_id\": ".to_vec(),
            1 => br#"{"event_id":"x","ts":1763750000000}"#.to_vec(),
            2 => {
                br#"{"event_id":"x","user_id":"u1","track_id":"t1","ad_id":"a1","ms_played":"long","ts":1763750000000}"#
                    .to_vec()
            }
            3 => br#"{"event_id":"x","user_id":"u1","track_id":"t1","ad_id":"a1","ms_played":-1,"ts":-5}"#.to_vec(),
            _ => vec![0xff, 0xfe, 0x00, 0x7b],
        };
        Generated::Malformed(kind, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_is_skewed_and_reproducible() {
        let config = EventGenConfig { users: 1000, duplicate_share: 0.0, ..Default::default() };
        let collect = || {
            let mut g = EventGen::new(config.clone(), 42);
            (0..20_000)
                .map(|_| match g.next_at(1_763_750_000_000) {
                    Generated::Event(e) => e,
                    Generated::Malformed(..) => unreachable!("malformed_share is 0"),
                })
                .collect::<Vec<_>>()
        };
        let a = collect();
        assert_eq!(a, collect());
        let top = a.iter().filter(|e| e.user_id() == "u1").count();
        let tail = a.iter().filter(|e| e.user_id() == "u500").count();
        assert!(top > 50 * tail.max(1), "u1 {top} vs u500 {tail}");
        let ads = a.iter().filter(|e| e.kind() == EventKind::Ad).count() as f64 / a.len() as f64;
        assert!((0.15..0.25).contains(&ads), "{ads}");
    }

    #[test]
    fn the_catalogue_is_a_function_of_the_seed() {
        let c = CatalogueGen { tracks: 100, ads: 10, seed: 3 };
        assert_eq!(c.track(5), c.track(5));
        assert_eq!(c.oracle().tracks["t5"], c.track(5).1);
        let rock_or_pop = (0..100).filter(|i| matches!(c.genre(*i), "pop" | "rock")).count();
        assert!(rock_or_pop > 10, "skewed towards the first genres: {rock_or_pop}");
    }
}
