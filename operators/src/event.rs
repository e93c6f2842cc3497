//! The two input events, and the decoder that turns a Kafka payload into one or a dead-letter reason.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

/// Which input topic an event came from.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    /// `song-completions`.
    Song,
    /// `ad-impressions`.
    Ad,
}

/// `{"event_id", "user_id", "track_id", "ms_played", "ts"}` from `song-completions`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SongCompletion {
    /// Client-assigned id; a resend carries the same one.
    pub event_id: CompactString,
    /// The listener.
    pub user_id: CompactString,
    /// The track played.
    pub track_id: CompactString,
    /// How long it played, milliseconds.
    pub ms_played: u64,
    /// Event time, epoch milliseconds.
    pub ts: i64,
}

/// `{"event_id", "user_id", "ad_id", "ts"}` from `ad-impressions`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdImpression {
    /// Client-assigned id; a resend carries the same one.
    pub event_id: CompactString,
    /// The listener.
    pub user_id: CompactString,
    /// The ad shown.
    pub ad_id: CompactString,
    /// Event time, epoch milliseconds.
    pub ts: i64,
}

/// One decoded input event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// From `song-completions`.
    Song(SongCompletion),
    /// From `ad-impressions`.
    Ad(AdImpression),
}

impl Event {
    /// The user the event belongs to.
    pub fn user_id(&self) -> &str {
        match self {
            Event::Song(e) => &e.user_id,
            Event::Ad(e) => &e.user_id,
        }
    }

    /// The client's event id.
    pub fn event_id(&self) -> &str {
        match self {
            Event::Song(e) => &e.event_id,
            Event::Ad(e) => &e.event_id,
        }
    }

    /// Event time, epoch milliseconds.
    pub fn ts(&self) -> i64 {
        match self {
            Event::Song(e) => e.ts,
            Event::Ad(e) => e.ts,
        }
    }

    /// The topic kind.
    pub fn kind(&self) -> EventKind {
        match self {
            Event::Song(_) => EventKind::Song,
            Event::Ad(_) => EventKind::Ad,
        }
    }

    /// The JSON a producer writes for this event.
    pub fn to_json(&self) -> Vec<u8> {
        match self {
            Event::Song(e) => serde_json::to_vec(e),
            Event::Ad(e) => serde_json::to_vec(e),
        }
        .expect("events always serialize")
    }
}

/// Why a record was sent to the dead-letter topic. `as_str` is the `reason` header and metric label.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum DlqReason {
    /// Larger than `max_message_bytes`.
    Oversized,
    /// Not valid UTF-8.
    NotUtf8,
    /// Not a JSON object.
    MalformedJson,
    /// A required field is absent or null.
    MissingField,
    /// A field has the wrong JSON type.
    WrongType,
    /// A field is present and typed right, but its value is out of range.
    InvalidValue,
}

impl DlqReason {
    /// Every reason, for metrics registration and tests.
    pub const ALL: [DlqReason; 6] = [
        DlqReason::Oversized,
        DlqReason::NotUtf8,
        DlqReason::MalformedJson,
        DlqReason::MissingField,
        DlqReason::WrongType,
        DlqReason::InvalidValue,
    ];

    /// Stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            DlqReason::Oversized => "oversized",
            DlqReason::NotUtf8 => "not_utf8",
            DlqReason::MalformedJson => "malformed_json",
            DlqReason::MissingField => "missing_field",
            DlqReason::WrongType => "wrong_type",
            DlqReason::InvalidValue => "invalid_value",
        }
    }
}

/// A record that could not be decoded: its reason and a human-readable detail.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {detail}", reason.as_str())]
pub struct DecodeError {
    /// The category.
    pub reason: DlqReason,
    /// What exactly was wrong.
    pub detail: String,
}

impl DecodeError {
    fn new(reason: DlqReason, detail: impl Into<String>) -> Self {
        DecodeError { reason, detail: detail.into() }
    }
}

/// Limits applied by [`decode`].
#[derive(Clone, Copy, Debug)]
pub struct DecodeLimits {
    /// Largest accepted payload.
    pub max_message_bytes: usize,
    /// Longest accepted id (`event_id`, `user_id`, `track_id`, `ad_id`), in bytes.
    pub max_id_bytes: usize,
    /// Accepted `ts` range, epoch milliseconds, inclusive.
    pub ts_range: (i64, i64),
    /// Largest accepted `ms_played`.
    pub max_ms_played: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_message_bytes: 64 * 1024,
            max_id_bytes: 256,
            // 2000-01-01 .. 2100-01-01.
            ts_range: (946_684_800_000, 4_102_444_800_000),
            // One day.
            max_ms_played: 86_400_000,
        }
    }
}

/// The JSON fields, typed loosely so that each problem gets its own reason.
#[derive(Deserialize)]
struct Wire {
    event_id: Option<CompactString>,
    user_id: Option<CompactString>,
    track_id: Option<CompactString>,
    ad_id: Option<CompactString>,
    ms_played: Option<serde_json::Number>,
    ts: Option<serde_json::Number>,
}

/// Decodes one payload of topic `kind`.
///
/// # Notes
/// Unknown fields are ignored (producers may add fields). Ids must be 1..=`max_id_bytes` bytes
/// without control characters; `ts` and `ms_played` must be integers within the limits.
pub fn decode(kind: EventKind, payload: &[u8], limits: &DecodeLimits) -> Result<Event, DecodeError> {
    if payload.len() > limits.max_message_bytes {
        return Err(DecodeError::new(
            DlqReason::Oversized,
            format!("{} bytes > max_message_bytes {}", payload.len(), limits.max_message_bytes),
        ));
    }
    let text = std::str::from_utf8(payload)
        .map_err(|e| DecodeError::new(DlqReason::NotUtf8, format!("invalid UTF-8 at byte {}", e.valid_up_to())))?;
    // From the checked `str`: serde_json does not validate the UTF-8 of every string again.
    let wire: Wire = serde_json::from_str(text).map_err(|e| {
        let reason = match e.classify() {
            serde_json::error::Category::Data => DlqReason::WrongType,
            _ => DlqReason::MalformedJson,
        };
        DecodeError::new(reason, e.to_string())
    })?;
    let id = |name: &'static str, v: Option<CompactString>| -> Result<CompactString, DecodeError> {
        let v = v.ok_or_else(|| DecodeError::new(DlqReason::MissingField, format!("missing field `{name}`")))?;
        if v.is_empty() || v.len() > limits.max_id_bytes {
            return Err(DecodeError::new(
                DlqReason::InvalidValue,
                format!("`{name}` must be 1..={} bytes, got {}", limits.max_id_bytes, v.len()),
            ));
        }
        if v.chars().any(char::is_control) {
            return Err(DecodeError::new(DlqReason::InvalidValue, format!("`{name}` contains control characters")));
        }
        Ok(v)
    };
    let int = |name: &'static str, v: Option<serde_json::Number>| -> Result<i64, DecodeError> {
        let v = v.ok_or_else(|| DecodeError::new(DlqReason::MissingField, format!("missing field `{name}`")))?;
        v.as_i64()
            .ok_or_else(|| DecodeError::new(DlqReason::InvalidValue, format!("`{name}` must be an integer, got {v}")))
    };
    let event_id = id("event_id", wire.event_id)?;
    let user_id = id("user_id", wire.user_id)?;
    let ts = int("ts", wire.ts)?;
    if !(limits.ts_range.0..=limits.ts_range.1).contains(&ts) {
        return Err(DecodeError::new(
            DlqReason::InvalidValue,
            format!("`ts` {ts} is outside {}..={} (epoch milliseconds)", limits.ts_range.0, limits.ts_range.1),
        ));
    }
    Ok(match kind {
        EventKind::Song => {
            let track_id = id("track_id", wire.track_id)?;
            let ms_played = int("ms_played", wire.ms_played)?;
            if ms_played < 0 || ms_played as u64 > limits.max_ms_played {
                return Err(DecodeError::new(
                    DlqReason::InvalidValue,
                    format!("`ms_played` {ms_played} is outside 0..={}", limits.max_ms_played),
                ));
            }
            Event::Song(SongCompletion { event_id, user_id, track_id, ms_played: ms_played as u64, ts })
        }
        EventKind::Ad => {
            let ad_id = id("ad_id", wire.ad_id)?;
            Event::Ad(AdImpression { event_id, user_id, ad_id, ts })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn song(json: &str) -> Result<Event, DecodeError> {
        decode(EventKind::Song, json.as_bytes(), &DecodeLimits::default())
    }

    fn reason(r: Result<Event, DecodeError>) -> DlqReason {
        r.expect_err("should be rejected").reason
    }

    #[test]
    fn decodes_both_kinds_and_round_trips() {
        let e =
            song(r#"{"event_id":"e1","user_id":"u1","track_id":"t9","ms_played":183000,"ts":1763750000123}"#).unwrap();
        assert_eq!(
            e,
            Event::Song(SongCompletion {
                event_id: "e1".into(),
                user_id: "u1".into(),
                track_id: "t9".into(),
                ms_played: 183000,
                ts: 1763750000123
            })
        );
        assert_eq!(decode(EventKind::Song, &e.to_json(), &DecodeLimits::default()).unwrap(), e);
        let a = decode(
            EventKind::Ad,
            br#"{"event_id":"e2","user_id":"u1","ad_id":"a4","ts":1763750000456,"extra":[1,2]}"#,
            &DecodeLimits::default(),
        )
        .unwrap();
        assert_eq!((a.user_id(), a.event_id(), a.ts(), a.kind()), ("u1", "e2", 1763750000456, EventKind::Ad));
    }

    #[test]
    fn every_kind_of_bad_record_has_its_reason() {
        let ok = r#"{"event_id":"e1","user_id":"u1","track_id":"t9","ms_played":1,"ts":1763750000123}"#;
        assert_eq!(reason(decode(EventKind::Song, &[0xff, 0xfe, b'{'], &DecodeLimits::default())), DlqReason::NotUtf8);
        assert_eq!(reason(song("{not json")), DlqReason::MalformedJson);
        assert_eq!(reason(song("")), DlqReason::MalformedJson);
        assert_eq!(reason(song("[1,2]")), DlqReason::WrongType);
        assert_eq!(
            reason(song(r#"{"user_id":"u1","track_id":"t9","ms_played":1,"ts":1763750000123}"#)),
            DlqReason::MissingField
        );
        assert_eq!(reason(song(&ok.replace(r#""track_id":"t9","#, ""))), DlqReason::MissingField);
        assert_eq!(reason(song(&ok.replace(r#""u1""#, "null"))), DlqReason::MissingField);
        assert_eq!(reason(song(&ok.replace(r#""u1""#, "17"))), DlqReason::WrongType);
        assert_eq!(reason(song(&ok.replace(r#""ms_played":1"#, r#""ms_played":"1""#))), DlqReason::WrongType);
        assert_eq!(reason(song(&ok.replace(r#""ms_played":1"#, r#""ms_played":-5"#))), DlqReason::InvalidValue);
        assert_eq!(reason(song(&ok.replace(r#""ms_played":1"#, r#""ms_played":1.5"#))), DlqReason::InvalidValue);
        assert_eq!(
            reason(song(&ok.replace(r#""ms_played":1"#, r#""ms_played":999999999999"#))),
            DlqReason::InvalidValue
        );
        assert_eq!(reason(song(&ok.replace("1763750000123", "12"))), DlqReason::InvalidValue);
        assert_eq!(reason(song(&ok.replace("1763750000123", "1e30"))), DlqReason::InvalidValue);
        assert_eq!(reason(song(&ok.replace(r#""u1""#, r#""""#))), DlqReason::InvalidValue);
        assert_eq!(reason(song(&ok.replace("u1", &"u".repeat(300)))), DlqReason::InvalidValue);
        assert_eq!(reason(song(&ok.replace("u1", "u\\u0000"))), DlqReason::InvalidValue);
        let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(70 * 1024));
        assert_eq!(reason(song(&big)), DlqReason::Oversized);
    }
}
