//! Catalogue enrichment: track and ad lookups through prepared CQL statements, behind a TTL cache, never blocking a caller.
#![warn(missing_docs)]

mod catalogue;
mod counters;
mod enricher;
mod hash;
mod symbols;

pub use catalogue::{
    AdRow, Catalogue, CatalogueError, CqlCatalogue, MemoryCatalogue, SCAN_PAGE_ROWS, TrackRow, schema,
};
pub use enricher::{EnrichConfig, Enricher, EnricherStats, Info, Key, OnTimeout, Preloaded, Snapshot};
pub use hash::{StrHash, StrHasher, touch};
pub use symbols::{Sym, Symbols, UNKNOWN};
