//! Property tests of the decoder: no input makes it panic, every rejection has a reason, and
//! every valid event survives an encode/decode round trip.

use proptest::prelude::*;
use squall_operators::event::{AdImpression, DecodeLimits, Event, EventKind, SongCompletion, decode};

fn kind() -> impl Strategy<Value = EventKind> {
    prop_oneof![Just(EventKind::Song), Just(EventKind::Ad)]
}

/// JSON-ish text: objects with the real field names and arbitrary values, so the fuzzing reaches
/// past the syntax errors into the field checks.
fn jsonish() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| format!("{v:?}")),
        "[a-z0-9\\\\\"\\u{0}-\\u{1f}\\u{80}-\\u{10ffff}]{0,300}".prop_map(|s| format!("{s:?}")),
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("[1,{}]".to_owned()),
        Just("{\"a\":1}".to_owned()),
    ];
    let field = prop_oneof![
        Just("event_id"),
        Just("user_id"),
        Just("track_id"),
        Just("ad_id"),
        Just("ms_played"),
        Just("ts"),
        Just("extra")
    ];
    prop::collection::vec((field, value), 0..8).prop_map(|fields| {
        let body: Vec<String> = fields.into_iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        format!("{{{}}}", body.join(","))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn arbitrary_bytes_never_panic(kind in kind(), bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        if let Err(e) = decode(kind, &bytes, &DecodeLimits::default()) {
            prop_assert!(!e.detail.is_empty());
        }
    }

    #[test]
    fn jsonish_objects_decode_or_say_why(kind in kind(), text in jsonish()) {
        match decode(kind, text.as_bytes(), &DecodeLimits::default()) {
            Ok(event) => {
                prop_assert_eq!(event.kind(), kind);
                prop_assert!(!event.user_id().is_empty() && !event.event_id().is_empty());
            }
            Err(e) => prop_assert!(!e.detail.is_empty()),
        }
    }

    #[test]
    fn valid_events_round_trip(
        event_id in "[a-zA-Z0-9._-]{1,64}",
        user_id in "\\PC{1,40}",
        item in "[a-z0-9]{1,20}",
        ms_played in 0u64..=86_400_000,
        ts in 946_684_800_000i64..=4_102_444_800_000,
        song in any::<bool>(),
    ) {
        let event = if song {
            Event::Song(SongCompletion { event_id: event_id.into(), user_id: user_id.into(), track_id: item.into(), ms_played, ts })
        } else {
            Event::Ad(AdImpression { event_id: event_id.into(), user_id: user_id.into(), ad_id: item.into(), ts })
        };
        let decoded = decode(event.kind(), &event.to_json(), &DecodeLimits::default());
        prop_assert_eq!(decoded, Ok(event));
    }
}
