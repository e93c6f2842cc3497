//! What the attribute state sees of an event: an enriched, keyed [`Activity`], produced by
//! enrichment ([`crate::enrich`]) and read by the attribute language ([`crate::attributes`]).

use compact_str::CompactString;
use squall_enrichment::Sym;

/// A song completion's catalogue row, as symbols.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrackInfo {
    /// `track.genre` (`unknown` when the track is not in the catalogue).
    pub genre: Sym,
    /// `track.artist_id` (`unknown` likewise).
    pub artist: Sym,
    /// `track.duration_ms` (`None` when unknown or null).
    pub duration_ms: Option<i32>,
}

/// An ad impression's catalogue row, as symbols.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdInfo {
    /// `ad.category` (`unknown` when the ad is not in the catalogue).
    pub category: Sym,
    /// `ad.advertiser_id` (`unknown` likewise).
    pub advertiser: Sym,
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
    /// The client's event id.
    pub event_id: CompactString,
    /// What happened.
    pub what: What,
}

/// The enriched content of an [`Activity`].
#[derive(Clone, Debug, PartialEq)]
pub enum What {
    /// A song completion.
    Play {
        /// The track.
        track_id: CompactString,
        /// How long it played.
        ms_played: u64,
        /// Its catalogue row.
        track: TrackInfo,
    },
    /// An ad impression.
    Ad {
        /// The ad.
        ad_id: CompactString,
        /// Its catalogue row.
        ad: AdInfo,
    },
}
