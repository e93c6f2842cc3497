//! The catalogue (`tracks`, `ads`) read whole from the version's store, as the enrichment of a
//! running version sees it: an id missing from it enriches as `unknown`.

use std::collections::HashMap;

use compact_str::CompactString;
use futures::StreamExt as _;
use squall_enrichment::{Catalogue as _, CatalogueError, CqlCatalogue, Info, Sym, Symbols};
use squall_operators::{Activity, Event};

/// Every catalogue row by id, as symbols of one process.
#[derive(Debug)]
pub struct Catalogue {
    tracks: HashMap<CompactString, Info>,
    ads: HashMap<CompactString, Info>,
    unknown: Sym,
}

impl Catalogue {
    /// Reads both tables of `keyspace` at `nodes` (paged scans), interning names in `symbols`.
    pub async fn load(nodes: &str, keyspace: &str, symbols: &Symbols) -> Result<Catalogue, CatalogueError> {
        let store = CqlCatalogue::connect(nodes, keyspace).await?;
        let intern = |s: Option<String>| s.map_or(symbols.unknown(), |s| symbols.intern(&s));
        let mut tracks = HashMap::new();
        let mut rows = store.scan_tracks();
        while let Some(row) = rows.next().await {
            let (id, row) = row?;
            let info =
                Info::Track { genre: intern(row.genre), artist: intern(row.artist_id), duration_ms: row.duration_ms };
            tracks.insert(CompactString::from(id), info);
        }
        let mut ads = HashMap::new();
        let mut rows = store.scan_ads();
        while let Some(row) = rows.next().await {
            let (id, row) = row?;
            ads.insert(
                CompactString::from(id),
                Info::Ad { category: intern(row.category), advertiser: intern(row.advertiser_id) },
            );
        }
        Ok(Catalogue { tracks, ads, unknown: symbols.unknown() })
    }

    /// Rows of tracks and of ads.
    pub fn sizes(&self) -> (usize, usize) {
        (self.tracks.len(), self.ads.len())
    }

    /// `event` joined with its row, as the dataflow's enrichment joins it.
    pub fn join(&self, event: Event) -> Activity {
        let u = self.unknown;
        let info = match &event {
            Event::Song(s) => {
                self.tracks.get(&s.track_id).copied().unwrap_or(Info::Track { genre: u, artist: u, duration_ms: None })
            }
            Event::Ad(a) => self.ads.get(&a.ad_id).copied().unwrap_or(Info::Ad { category: u, advertiser: u }),
        };
        squall_operators::enrich::join(event, info, u)
    }
}
