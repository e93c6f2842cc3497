//! The fields of events and of the catalogue rows they are enriched with, and their types: the
//! words declarations and predicates are written in.

use serde::{Deserialize, Serialize};

/// A field of an event or a column of the catalogue row it is enriched with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    /// `event_id` (both events).
    EventId,
    /// `user_id` (both events).
    UserId,
    /// `ts`, event time in epoch milliseconds (both events).
    Ts,
    /// `track_id` (song completions).
    TrackId,
    /// `ms_played` (song completions).
    MsPlayed,
    /// `ad_id` (ad impressions).
    AdId,
    /// `track.genre`: the `tracks` row's genre.
    TrackGenre,
    /// `track.artist_id`.
    TrackArtistId,
    /// `track.duration_ms` (null when the track is unknown or the column is null).
    TrackDurationMs,
    /// `ad.category`: the `ads` row's category.
    AdCategory,
    /// `ad.advertiser_id`.
    AdAdvertiserId,
}

/// Which events an attribute counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Events {
    /// Song completions and ad impressions.
    All,
    /// Song completions.
    Song,
    /// Ad impressions.
    Ad,
}

impl Events {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Events::All => "all",
            Events::Song => "song",
            Events::Ad => "ad",
        }
    }
}

/// The type of a field's values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    /// An integer.
    Int,
    /// Text.
    Text,
}

impl Field {
    /// Every field, in the order the docs list them.
    pub const ALL: [Field; 11] = [
        Field::EventId,
        Field::UserId,
        Field::Ts,
        Field::TrackId,
        Field::MsPlayed,
        Field::AdId,
        Field::TrackGenre,
        Field::TrackArtistId,
        Field::TrackDurationMs,
        Field::AdCategory,
        Field::AdAdvertiserId,
    ];

    /// The name declarations use.
    pub fn name(self) -> &'static str {
        match self {
            Field::EventId => "event_id",
            Field::UserId => "user_id",
            Field::Ts => "ts",
            Field::TrackId => "track_id",
            Field::MsPlayed => "ms_played",
            Field::AdId => "ad_id",
            Field::TrackGenre => "track.genre",
            Field::TrackArtistId => "track.artist_id",
            Field::TrackDurationMs => "track.duration_ms",
            Field::AdCategory => "ad.category",
            Field::AdAdvertiserId => "ad.advertiser_id",
        }
    }

    /// The field called `name`.
    pub fn parse(name: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.name() == name)
    }

    /// The error for a name that is no field, listing the ones there are.
    pub fn unknown(name: &str) -> String {
        let names =
            |e: Events| Field::ALL.iter().filter(|f| f.events() == e).map(|f| f.name()).collect::<Vec<_>>().join(", ");
        format!(
            "unknown field `{name}`; every event has {}, song events {}, ad events {}",
            names(Events::All),
            names(Events::Song),
            names(Events::Ad)
        )
    }

    /// The events that carry it.
    pub fn events(self) -> Events {
        match self {
            Field::EventId | Field::UserId | Field::Ts => Events::All,
            Field::TrackId | Field::MsPlayed | Field::TrackGenre | Field::TrackArtistId | Field::TrackDurationMs => {
                Events::Song
            }
            Field::AdId | Field::AdCategory | Field::AdAdvertiserId => Events::Ad,
        }
    }

    /// The type of its values.
    pub fn ty(self) -> Type {
        match self {
            Field::Ts | Field::MsPlayed | Field::TrackDurationMs => Type::Int,
            _ => Type::Text,
        }
    }

    /// Whether its values come from a bounded vocabulary (catalogue ids and columns), so that
    /// they can be map keys, `last` values and `distinct` members. `event_id` and `user_id` are not.
    pub fn categorical(self) -> bool {
        self.ty() == Type::Text && !matches!(self, Field::EventId | Field::UserId)
    }
}
