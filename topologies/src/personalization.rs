//! The `personalization` topology's dataflow: enrich each event, key it by user, maintain attributes.
//!
//! Every version runs this dataflow; they differ in the declared attributes the store keeps (its
//! [`squall_operators::Plan`], compiled from the topology file's `[versions]`).

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use squall_enrichment::Enricher;
use squall_operators::watermark::Report;
use squall_operators::{CheckpointHook, EnrichWith, Epoch, Event, MaintainAttributes, UserStore};
use timely::dataflow::Stream;

/// What the dataflow's operators share within one process.
#[derive(Clone)]
pub struct Context {
    /// Catalogue lookups.
    pub enricher: Enricher,
    /// Per-user state, one shard per worker.
    pub store: Arc<UserStore>,
    /// Events in enrichment, for source backpressure.
    pub pending: Arc<AtomicUsize>,
    /// Dedup horizon, event-time milliseconds.
    pub dedup_horizon_ms: i64,
}

/// Builds the dataflow over `events`, whose sources report their event-time `progress` (see
/// `squall_operators::watermark`), checkpointing through `checkpoint` if given; the returned
/// stream's frontier tells which epochs are applied.
pub fn dataflow<'scope>(
    events: Stream<'scope, Epoch, Vec<Event>>,
    progress: Stream<'scope, Epoch, Vec<Report>>,
    ctx: &Context,
    checkpoint: Option<CheckpointHook>,
) -> Stream<'scope, Epoch, Vec<()>> {
    events.enrich_with(&ctx.enricher, Arc::clone(&ctx.pending)).maintain_attributes(
        progress,
        Arc::clone(&ctx.store),
        ctx.dedup_horizon_ms,
        Arc::clone(&ctx.pending),
        checkpoint,
    )
}
