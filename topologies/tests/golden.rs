//! Versions 1 and 2, now declarations, answer byte for byte the JSON that the hand-written code
//! they replace answered. `golden/v1.jsonl` and `golden/v2.jsonl` were written by that code (at
//! commit bd7e419) for the events in `golden/events.tsv` (400 users, names with quotes and
//! non-ASCII, events out of order and years apart, so that the decayed weights are rebased).

use std::path::Path;
use std::sync::Arc;

use squall_enrichment::Symbols;
use squall_operators::activity::{AdInfo, TrackInfo};
use squall_operators::attributes::AttributesView;
use squall_operators::{Activity, Plan, UserState, What};
use squall_topologies::TopologySpec;

fn golden(version: u32) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let spec = TopologySpec::load(&dir.join("personalization.toml")).unwrap().with_version(version).unwrap();
    let symbols = Symbols::default();
    let plan = Arc::new(Plan::compile(&spec.attributes, &symbols));
    let events = std::fs::read_to_string(dir.join("tests/golden/events.tsv")).unwrap();
    let expected = std::fs::read_to_string(dir.join(format!("tests/golden/v{version}.jsonl"))).unwrap();
    let mut states: Vec<UserState> = Vec::new();
    let unknown = symbols.unknown();
    for (n, line) in events.lines().enumerate() {
        let f: Vec<&str> = line.split('\t').collect();
        let (user, kind, name, ms, ts): (usize, &str, &str, u64, i64) =
            (f[0].parse().unwrap(), f[1], f[2], f[3].parse().unwrap(), f[4].parse().unwrap());
        if states.len() <= user {
            states.resize(user + 1, UserState::default());
        }
        let what = if kind == "ad" {
            What::Ad { ad_id: "a".into(), ad: AdInfo { category: symbols.intern(name), advertiser: unknown } }
        } else {
            let track = TrackInfo { genre: symbols.intern(name), artist: unknown, duration_ms: None };
            What::Play { track_id: "t".into(), ms_played: ms, track }
        };
        let a = Activity { user: "u".into(), dedup_key: n as u128, ts, event_id: "e".into(), what };
        states[user].apply(&plan, "u", &a, &symbols);
    }
    let mut got = String::new();
    for s in &states {
        got.push_str(&serde_json::to_string(&AttributesView::new(s, &plan, &symbols)).unwrap());
        got.push('\n');
    }
    for (i, (g, e)) in got.lines().zip(expected.lines()).enumerate() {
        assert_eq!(g, e, "version {version}, user {i}");
    }
    assert_eq!(got.lines().count(), expected.lines().count());
}

#[test]
fn declared_v1_answers_what_the_hand_written_v1_answered() {
    golden(1);
}

#[test]
fn declared_v2_answers_what_the_hand_written_v2_answered() {
    golden(2);
}

#[test]
fn snapshots_restore_into_another_symbol_table() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (file, version) in [("personalization.toml", 2), ("tests/windowed.toml", 3)] {
        let spec = TopologySpec::load(&dir.join(file)).unwrap().with_version(version).unwrap();
        let (a, b) = (Symbols::default(), Symbols::default());
        b.intern("padding");
        let (pa, pb) = (Plan::compile(&spec.attributes, &a), Plan::compile(&spec.attributes, &b));
        let mut s = UserState::default();
        let t0 = 1_763_750_000_000;
        for i in 0..50i64 {
            let what = if i % 3 == 0 {
                What::Ad {
                    ad_id: format!("a{}", i % 4).into(),
                    ad: AdInfo { category: a.intern(["cars", "food"][i as usize % 2]), advertiser: a.intern("adv") },
                }
            } else {
                let track = TrackInfo {
                    genre: a.intern(["rock", "jazz", "pop"][i as usize % 3]),
                    artist: a.intern(&format!("ar{}", i % 5)),
                    duration_ms: (i % 4 != 0).then_some(100_000 + i as i32),
                };
                What::Play { track_id: format!("t{}", i % 7).into(), ms_played: (i as u64) * 7_000, track }
            };
            let act =
                Activity { user: "u".into(), dedup_key: i as u128, ts: t0 + i * 3_600_000, event_id: "e".into(), what };
            s.apply(&pa, "u", &act, &a);
        }
        let restored = UserState::restore(&s.snapshot(&pa, &a), &pb, &b).unwrap();
        let json =
            |s: &UserState, p: &Plan, sy: &Symbols| serde_json::to_string(&AttributesView::new(s, p, sy)).unwrap();
        assert_eq!(json(&restored, &pb, &b), json(&s, &pa, &a), "{file}");
        // Under another declaration it is refused.
        let other = TopologySpec::load(&dir.join("personalization.toml")).unwrap().with_version(1).unwrap();
        if version != 1 {
            let e = UserState::restore(&s.snapshot(&pa, &a), &Plan::compile(&other.attributes, &b), &b).unwrap_err();
            assert!(e.to_string().contains("another declaration"), "{e}");
        }
    }
}
