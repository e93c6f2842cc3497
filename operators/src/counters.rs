//! The metrics the operators record, named once: the only file of this crate that calls `metrics`.
//!
//! Names and label names are fixed here; each function registers (or finds) one series and hands
//! back its handle, which the hot paths keep and increment.

pub use metrics::{Counter, Gauge, Histogram};

/// `squall_events_consumed_total{group_id, topic}`: events a source read from `topic`.
pub fn events_consumed(group_id: &str, topic: String) -> Counter {
    metrics::counter!("squall_events_consumed_total", "group_id" => group_id.to_owned(), "topic" => topic)
}

/// `squall_source_errors_total{group_id}`: errors the source met reading.
pub fn source_errors(group_id: &str) -> Counter {
    metrics::counter!("squall_source_errors_total", "group_id" => group_id.to_owned())
}

/// `squall_window_late_events_total{attribute, late}`: events later than a window's lateness,
/// by attribute and the policy (`drop`, `current_tile`) applied to them.
pub fn window_late_events(attribute: &str, late: &'static str) -> Counter {
    metrics::counter!("squall_window_late_events_total", "attribute" => attribute.to_owned(), "late" => late)
}

/// The checkpoint writer's series, all labelled `group_id`: write duration
/// (`squall_checkpoint_write_seconds`), bytes written (`squall_checkpoint_bytes_total`), the
/// last complete cut (`squall_checkpoint_last_complete_cut`), errors
/// (`squall_checkpoint_errors_total`), parts queued (`squall_checkpoint_parts_queued`) and
/// compaction duration (`squall_checkpoint_compaction_seconds`).
pub fn checkpoint(group_id: &str) -> (Histogram, Counter, Gauge, Counter, Gauge, Histogram) {
    let g = group_id.to_owned();
    (
        metrics::histogram!("squall_checkpoint_write_seconds", "group_id" => g.clone()),
        metrics::counter!("squall_checkpoint_bytes_total", "group_id" => g.clone()),
        metrics::gauge!("squall_checkpoint_last_complete_cut", "group_id" => g.clone()),
        metrics::counter!("squall_checkpoint_errors_total", "group_id" => g.clone()),
        metrics::gauge!("squall_checkpoint_parts_queued", "group_id" => g.clone()),
        metrics::histogram!("squall_checkpoint_compaction_seconds", "group_id" => g),
    )
}
