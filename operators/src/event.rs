//! The two input events, and the decoder that turns a Kafka payload into one or a dead-letter reason.

use std::borrow::Cow;

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
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

/// The JSON fields, typed loosely so that each problem gets its own reason (the general path).
#[derive(Default, Deserialize)]
struct Wire<'a> {
    event_id: Option<Cow<'a, str>>,
    user_id: Option<Cow<'a, str>>,
    track_id: Option<Cow<'a, str>>,
    ad_id: Option<Cow<'a, str>>,
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
    match decode_plain(kind, text, limits) {
        Some(event) => Ok(event),
        None => validate(kind, Wire::parse(text)?, limits),
    }
}

/// [`decode`] through serde_json only, to check the fast path against.
#[cfg(test)]
fn decode_general(kind: EventKind, payload: &[u8], limits: &DecodeLimits) -> Result<Event, DecodeError> {
    let text = std::str::from_utf8(payload).map_err(|_| DecodeError::new(DlqReason::NotUtf8, ""))?;
    validate(kind, Wire::parse(text)?, limits)
}

impl<'a> Wire<'a> {
    /// The general parser: any JSON, with serde_json's error messages.
    fn parse(text: &'a str) -> Result<Wire<'a>, DecodeError> {
        // From the checked `str`: serde_json does not validate the UTF-8 of every string again.
        serde_json::from_str(text).map_err(|e| {
            let reason = match e.classify() {
                serde_json::error::Category::Data => DlqReason::WrongType,
                _ => DlqReason::MalformedJson,
            };
            DecodeError::new(reason, e.to_string())
        })
    }
}

/// The fast path, for what producers send: one flat object whose strings are printable ASCII
/// without escapes and whose numbers are plain integers, describing a valid event. It reads the
/// text once and builds the event from it directly. `None` for anything else (nested values,
/// escapes, other characters, fractions, exponents, `-0`, repeated fields, bad syntax, a missing,
/// mistyped or out-of-range field), which then goes through [`Wire::parse`] and [`validate`], so
/// every record gets the same answer, and every error the same reason and message, whichever path
/// reads it (property-tested below). Known keys written as producers write them cost one compare
/// each, and strings are scanned eight bytes at a time, without filling a `Wire` first
/// (`benches/RESULTS.md`).
fn decode_plain<'t>(kind: EventKind, text: &'t str, limits: &DecodeLimits) -> Option<Event> {
    let mut r = Plain { text, at: 0 };
    let (mut event_id, mut user_id, mut track_id, mut ad_id) = (None, None, None, None);
    let (mut ms_played, mut ts) = (None, None);
    // Which known fields were read (a null counts): a repeated one is an error the general path words.
    let mut seen = 0u8;
    r.skip_ws();
    r.eat(b'{')?;
    loop {
        r.skip_ws();
        let bit = match r.known_key() {
            Some(bit) => bit,
            None => {
                let key = r.string()?;
                r.skip_ws();
                r.eat(b':')?;
                Plain::bit(key)
            }
        };
        r.skip_ws();
        let value = r.scalar()?;
        if bit != 0 {
            if seen & bit != 0 {
                return None;
            }
            seen |= bit;
            match (bit, value) {
                (_, Scalar::Null) => {}
                (1, Scalar::Str(v)) => event_id = Some(v),
                (2, Scalar::Str(v)) => user_id = Some(v),
                (4, Scalar::Str(v)) => track_id = Some(v),
                (8, Scalar::Str(v)) => ad_id = Some(v),
                (16, Scalar::Int(v)) => ms_played = Some(v),
                (32, Scalar::Int(v)) => ts = Some(v),
                // A known field of the wrong type.
                _ => return None,
            }
        }
        r.skip_ws();
        match r.next()? {
            b',' => {}
            b'}' => break,
            _ => return None,
        }
    }
    r.skip_ws();
    if r.at != text.len() {
        return None;
    }
    // Printable ASCII has no control characters: only the length is left to check. Everything is
    // checked before the ids are copied, and each is pushed into an empty id already in the event:
    // building them apart and moving them in cost store-forwarding stalls (108 vs 100 ns a decode).
    let id = |v: Option<&'t str>| v.filter(|v| !v.is_empty() && v.len() <= limits.max_id_bytes);
    let ts = ts.filter(|ts| (limits.ts_range.0..=limits.ts_range.1).contains(ts))?;
    let (event_id, user_id) = (id(event_id)?, id(user_id)?);
    Some(match kind {
        EventKind::Song => {
            let ms_played = ms_played.filter(|&m| m >= 0 && m as u64 <= limits.max_ms_played)? as u64;
            let track_id = id(track_id)?;
            let mut e = SongCompletion {
                event_id: CompactString::const_new(""),
                user_id: CompactString::const_new(""),
                track_id: CompactString::const_new(""),
                ms_played,
                ts,
            };
            e.event_id.push_str(event_id);
            e.user_id.push_str(user_id);
            e.track_id.push_str(track_id);
            Event::Song(e)
        }
        EventKind::Ad => {
            let ad_id = id(ad_id)?;
            let mut e = AdImpression {
                event_id: CompactString::const_new(""),
                user_id: CompactString::const_new(""),
                ad_id: CompactString::const_new(""),
                ts,
            };
            e.event_id.push_str(event_id);
            e.user_id.push_str(user_id);
            e.ad_id.push_str(ad_id);
            Event::Ad(e)
        }
    })
}

/// A value [`decode_plain`] reads.
enum Scalar<'a> {
    Str(&'a str),
    Int(i64),
    Null,
    Bool,
}

/// Where the plain characters at the start of `bytes` end: the index of the first closing quote,
/// backslash, control character, DEL or non-ASCII byte (everything the fast path leaves to the
/// general one); `None` if there is none. Eight bytes at a time.
#[inline]
fn plain_len(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // Per byte, the high bit set where the byte is zero: exact for the lowest such byte, which is
    // all that is used (borrows only run towards higher bytes).
    let zero = |w: u64| w.wrapping_sub(ONES) & !w & HIGH;
    let mut chunks = bytes.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let w = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        let stop = zero(w ^ (ONES * u64::from(b'"')))
            | zero(w ^ (ONES * u64::from(b'\\')))
            | zero(w ^ (ONES * 0x7f))
            // Below 0x20: subtracting 0x20 borrows into the high bit, which `!w` keeps for ASCII.
            | (w.wrapping_sub(ONES * 0x20) & !w & HIGH)
            // Non-ASCII.
            | (w & HIGH);
        if stop != 0 {
            return Some(at + (stop.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let tail = chunks.remainder();
    tail.iter().position(|&c| !(0x20..0x7f).contains(&c) || c == b'"' || c == b'\\').map(|i| at + i)
}

/// A cursor over a payload for [`decode_plain`]; every method returns `None` where the fast path
/// gives up.
struct Plain<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Plain<'a> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    #[inline]
    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.at += 1;
        Some(c)
    }

    #[inline]
    fn eat(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    #[inline]
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.at += 1;
        }
    }

    /// The field of a known key written as producers write it (`"ts":`, no space before the
    /// colon), and the cursor after the colon; `None` (cursor unmoved) for anything else. This
    /// costs a compare per field instead of a scan.
    #[inline]
    fn known_key(&mut self) -> Option<u8> {
        let rest = self.text.as_bytes().get(self.at..)?;
        let (key, bit): (&[u8], u8) = match *rest.get(1)? {
            b'e' => (b"\"event_id\":", 1),
            b'u' => (b"\"user_id\":", 2),
            b't' if rest.get(2) == Some(&b's') => (b"\"ts\":", 32),
            b't' => (b"\"track_id\":", 4),
            b'a' => (b"\"ad_id\":", 8),
            b'm' => (b"\"ms_played\":", 16),
            _ => return None,
        };
        rest.starts_with(key).then(|| {
            self.at += key.len();
            bit
        })
    }

    /// The bit of a known field's name in [`decode_plain`]'s `seen`; 0 for other names.
    fn bit(key: &str) -> u8 {
        match key {
            "event_id" => 1,
            "user_id" => 2,
            "track_id" => 4,
            "ad_id" => 8,
            "ms_played" => 16,
            "ts" => 32,
            _ => 0,
        }
    }

    /// A string of printable ASCII without escapes; its contents.
    #[inline]
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let rest = &self.text.as_bytes()[self.at..];
        let len = plain_len(rest)?;
        if rest[len] != b'"' {
            return None;
        }
        // Both ends are next to ASCII bytes, so this only checks bounds.
        let s = self.text.get(self.at..self.at + len)?;
        self.at += len + 1;
        Some(s)
    }

    /// A plain string, a plain integer that fits in an `i64` (at most 18 digits), `null`, `true`
    /// or `false`.
    #[inline]
    fn scalar(&mut self) -> Option<Scalar<'a>> {
        match self.peek()? {
            b'"' => self.string().map(Scalar::Str),
            b'n' => self.word(b"null").map(|()| Scalar::Null),
            b't' => self.word(b"true").map(|()| Scalar::Bool),
            b'f' => self.word(b"false").map(|()| Scalar::Bool),
            _ => self.int().map(Scalar::Int),
        }
    }

    fn word(&mut self, w: &[u8]) -> Option<()> {
        let end = self.at + w.len();
        (self.text.as_bytes().get(self.at..end)? == w).then(|| self.at = end)
    }

    #[inline]
    fn int(&mut self) -> Option<i64> {
        let negative = self.peek()? == b'-';
        if negative {
            self.at += 1;
        }
        let start = self.at;
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
        let digits = &self.text.as_bytes()[start..self.at];
        // No digits, a leading zero, or too long to be sure to fit: not plain.
        if digits.is_empty() || digits.len() > 18 || (digits.len() > 1 && digits[0] == b'0') {
            return None;
        }
        let n = digits.iter().fold(0i64, |n, c| n * 10 + i64::from(c - b'0'));
        // serde_json reads `-0` as a float.
        if matches!(self.peek(), Some(b'.' | b'e' | b'E')) || (negative && n == 0) {
            return None;
        }
        Some(if negative { -n } else { n })
    }
}

/// Checks the fields of `wire` for an event of `kind`.
fn validate(kind: EventKind, wire: Wire<'_>, limits: &DecodeLimits) -> Result<Event, DecodeError> {
    let id = |name: &'static str, v: Option<Cow<'_, str>>| -> Result<CompactString, DecodeError> {
        let v = v.ok_or_else(|| DecodeError::new(DlqReason::MissingField, format!("missing field `{name}`")))?;
        if v.is_empty() || v.len() > limits.max_id_bytes {
            return Err(DecodeError::new(
                DlqReason::InvalidValue,
                format!("`{name}` must be 1..={} bytes, got {}", limits.max_id_bytes, v.len()),
            ));
        }
        let control =
            if v.is_ascii() { v.bytes().any(|b| b < 0x20 || b == 0x7f) } else { v.chars().any(char::is_control) };
        if control {
            return Err(DecodeError::new(DlqReason::InvalidValue, format!("`{name}` contains control characters")));
        }
        Ok(CompactString::new(&v))
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

    #[test]
    fn the_fast_path_reads_what_producers_write() {
        let limits = DecodeLimits::default();
        let plain = |kind, text: &str| decode_plain(kind, text, &limits);
        let ok = r#"{"event_id":"e1","user_id":"u1","track_id":"t9","ms_played":183000,"ts":1763750000123}"#;
        for text in [
            ok,
            r#" { "event_id" : "e1", "user_id":"u1","track_id":"t9","ms_played":0,"ts":1763750000123,"x":null,"y":true,"z":-3 } "#,
            r#"{"ts":1763750000123,"ms_played":5,"track_id":"t","user_id":"u","event_id":"e","extra":"x","ad_id":null}"#,
        ] {
            let event = plain(EventKind::Song, text);
            assert!(event.is_some(), "{text}");
            assert_eq!(event, decode_general(EventKind::Song, text.as_bytes(), &limits).ok(), "{text}");
        }
        let ad = r#"{"event_id":"e2","user_id":"u1","ad_id":"a4","ts":1763750000456,"track_id":null}"#;
        assert_eq!(plain(EventKind::Ad, ad), decode_general(EventKind::Ad, ad.as_bytes(), &limits).ok());
        assert!(plain(EventKind::Ad, ad).is_some());
        // Escapes, other characters, nesting, floats, repeats, bad syntax and invalid events are
        // left to the general path: each of these is `ok` with one thing changed.
        for (from, to) in [
            ("\"e1\"", "\"e\\u0031\""),
            ("\"u1\"", "\"u\u{e9}\""),
            ("\"u1\"", "\"u\u{7f}\""),
            ("\"t9\"", "\"t9\",\"extra\":[1]"),
            ("183000", "1.5"),
            ("183000", "-0"),
            ("183000", "01"),
            ("183000", "1234567890123456789"),
            ("183000", "1,\"ms_played\":2"),
            ("183000", "\"183000\""),
            ("183000", "-1"),
            ("1763750000123}", "1763750000123}x"),
            ("1763750000123", "12"),
            ("\"u1\"", "\"\""),
            ("\"u1\"", "null"),
            ("\"track_id\":\"t9\",", ""),
        ] {
            let text = ok.replacen(from, to, 1);
            assert_ne!(text, ok);
            assert!(plain(EventKind::Song, &text).is_none(), "{text}");
        }
        // The same event on the other topic lacks `ad_id`.
        assert!(plain(EventKind::Ad, ok).is_none());
    }

    /// JSON-like text: mostly whole events with a field or two changed, in any order, with
    /// extra, repeated and escaped keys, the values the fast path refuses, and odd endings.
    fn payloads() -> impl Strategy<Value = String> {
        let odd = prop_oneof![
            "\"[a-z0-9 é\u{7f}\u{85}\\\\\u{1}]{0,6}\"",
            "-?[0-9]{1,20}",
            prop::sample::select(vec![
                "null", "true", "false", "-0", "0", "1.5", "1e3", "[1]", "{}", "\"\"", "-", "nul", "01"
            ])
            .prop_map(str::to_owned),
        ];
        let fields = vec![
            ("event_id", "\"e1\""),
            ("user_id", "\"u1\""),
            ("track_id", "\"t9\""),
            ("ad_id", "\"a4\""),
            ("ms_played", "183000"),
            ("ts", "1763750000123"),
        ];
        let ws = prop::sample::select(vec!["", "", "", " ", "\n", "\t ", "\r"]);
        let pair = |k: &'static str, v: String, w: &str| format!("\"{k}\"{w}:{w}{v}");
        let changed = prop::collection::vec((0usize..9, odd), 0..3);
        let extra = prop::sample::select(vec![
            "",
            "",
            ",\"extra\":\"x\"",
            ",\"t\\u0073\":1",
            ",\"ts\":1763750000124",
            ",\"n\":{\"a\":1}",
        ]);
        let tail = prop::sample::select(vec!["", "", "", "}", ",", "x", " "]);
        (Just(fields).prop_shuffle(), changed, ws.clone(), extra, tail, any::<prop::sample::Index>()).prop_map(
            move |(fields, changed, w, extra, tail, drop)| {
                let mut values: Vec<(&str, String)> = fields.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
                for (i, v) in changed {
                    if i < values.len() {
                        values[i].1 = v;
                    } else if i == values.len() {
                        values.remove(drop.index(values.len()));
                    }
                }
                let body: Vec<String> = values.into_iter().map(|(k, v)| pair(k, v, w)).collect();
                format!("{w}{{{}{extra}}}{w}{tail}", body.join(","))
            },
        )
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]
        #[test]
        fn the_fast_path_agrees_with_serde_json(text in payloads(), cut in 0usize..200) {
            for kind in [EventKind::Song, EventKind::Ad] {
                for t in [text.as_str(), &text[..text.floor_char_boundary(cut.min(text.len()))]] {
                    let limits = DecodeLimits::default();
                    prop_assert_eq!(decode(kind, t.as_bytes(), &limits), decode_general(kind, t.as_bytes(), &limits), "{}", t);
                }
            }
        }
    }
}
