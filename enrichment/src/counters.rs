//! The metrics enrichment records, named once: the only file of this crate that calls `metrics`.

use std::time::Duration;

/// Records one catalogue lookup's time in `squall_enrichment_lookup_seconds`.
pub(crate) fn lookup_took(elapsed: Duration) {
    metrics::histogram!("squall_enrichment_lookup_seconds").record(elapsed.as_secs_f64());
}
