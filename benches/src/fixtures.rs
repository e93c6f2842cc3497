//! What several harnesses share: the shipped declarations and activities made from symbols.

use std::sync::Arc;

use squall_enrichment::{Sym, Symbols};
use squall_operators::activity::{AdInfo, TrackInfo};
use squall_operators::{Activity, Declaration, Plan, What};
use squall_topologies::TopologySpec;

/// Version `version` of the shipped `topologies/personalization.toml`.
pub fn declaration(version: u32) -> Arc<Declaration> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../topologies/personalization.toml");
    let spec = TopologySpec::load(&path).and_then(|s| s.with_version(version));
    spec.unwrap_or_else(|e| panic!("topologies/personalization.toml: {e}")).attributes
}

/// Version `version` of the shipped file, compiled for `symbols`.
pub fn plan(version: u32, symbols: &Symbols) -> Arc<Plan> {
    Arc::new(Plan::compile(&declaration(version), symbols))
}

/// A play of a track of `genre` at `ts` (a skip when `ms_played < 30000`).
pub fn play(genre: Sym, ms_played: u64, ts: i64, unknown: Sym) -> Activity {
    let track = TrackInfo { genre, artist: unknown, duration_ms: None };
    let what = What::Play { track_id: "t".into(), ms_played, track };
    Activity { user: "u".into(), dedup_key: 0, ts, event_id: "e".into(), what }
}

/// An impression of an ad of `category` at `ts`.
pub fn ad(category: Sym, ts: i64, unknown: Sym) -> Activity {
    let what = What::Ad { ad_id: "a".into(), ad: AdInfo { category, advertiser: unknown } };
    Activity { user: "u".into(), dedup_key: 0, ts, event_id: "e".into(), what }
}
