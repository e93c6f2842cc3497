//! Warming the enrichment cache with the whole catalogue (`enrichment.preload`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use squall_enrichment::Enricher;

/// Warms the enrichment cache with the whole catalogue before the dataflow starts, then reloads
/// it every half `cache_ttl` in the background so that entries are refreshed before they expire.
/// A load that fails or takes longer than the enrichment `deadline` is logged and does not stop
/// anything: lookups then go to the store one id at a time, as without preload.
pub async fn preload_catalogue(
    enricher: &Enricher,
    group_id: &str,
    stop: Arc<AtomicBool>,
    runtime: &tokio::runtime::Handle,
) {
    async fn load(enricher: &Enricher, group_id: &str) {
        let started = std::time::Instant::now();
        match tokio::time::timeout(enricher.config().deadline, enricher.preload()).await {
            Ok(Ok(p)) => tracing::info!(
                %group_id, tracks = p.tracks, ads = p.ads, truncated = p.truncated,
                seconds = started.elapsed().as_secs_f64(), "catalogue preloaded into the enrichment cache"
            ),
            Ok(Err(error)) => {
                tracing::warn!(%group_id, %error, "catalogue preload failed; ids are looked up one at a time")
            }
            Err(_) => tracing::warn!(
                %group_id, deadline = ?enricher.config().deadline,
                "catalogue preload did not finish within the enrichment deadline; ids are looked up one at a time"
            ),
        }
    }
    load(enricher, group_id).await;
    let (enricher, group_id) = (enricher.clone(), group_id.to_owned());
    let every = (enricher.config().cache_ttl / 2).max(Duration::from_secs(1));
    runtime.spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            if stop.load(Relaxed) {
                return;
            }
            load(&enricher, &group_id).await;
        }
    });
}
