//! Logging and the process's metrics recorder.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

/// Installs the `tracing` subscriber: `RUST_LOG`-style filtering (default `info`), text or JSON lines.
pub fn init_logging(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}

/// Latency buckets (seconds) of every histogram: 100 µs to 10 s.
const BUCKETS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The process-wide Prometheus recorder, installed on first use (without global labels).
pub fn metrics() -> PrometheusHandle {
    metrics_with_labels(&[])
}

/// The process-wide Prometheus recorder; the first call installs it, with `labels` on every
/// series (`squall run` passes `topology` and `version`). Histograms have fixed buckets.
pub fn metrics_with_labels(labels: &[(&str, String)]) -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let mut builder = PrometheusBuilder::new();
            for (k, v) in labels {
                builder = builder.add_global_label(*k, v.clone());
            }
            let builder = match builder.set_buckets(&BUCKETS) {
                Ok(b) => b,
                Err(_) => PrometheusBuilder::new(),
            };
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; then ours just renders nothing.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Publishes `enricher`'s counters as Prometheus metrics labelled `group_id`, refreshed every
/// second on `runtime` until `stop` is set: cache hits and misses, store requests, failed
/// requests, retries, ids not found, lookups degraded to `unknown` at the deadline
/// (`on_timeout = "degrade"`), lookups that kept waiting past the deadline (`on_timeout = "wait"`),
/// and lookups in flight.
pub fn export_enrichment(
    enricher: squall_enrichment::Enricher,
    group_id: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    runtime: &tokio::runtime::Handle,
) {
    use squall_enrichment::EnricherStats;
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    type Field = fn(&EnricherStats) -> &AtomicU64;
    let fields: [(&'static str, Field); 10] = [
        ("squall_enrichment_cache_hits_total", |s| &s.hits),
        ("squall_enrichment_cache_misses_total", |s| &s.misses),
        ("squall_enrichment_requests_total", |s| &s.requests),
        ("squall_enrichment_request_errors_total", |s| &s.errors),
        ("squall_enrichment_retries_total", |s| &s.retries),
        ("squall_enrichment_not_found_total", |s| &s.not_found),
        ("squall_enrichment_degraded_total", |s| &s.degraded),
        ("squall_enrichment_deadline_waits_total", |s| &s.deadline_waits),
        ("squall_enrichment_joined_total", |s| &s.joined),
        ("squall_enrichment_preloaded_rows_total", |s| &s.preloaded),
    ];
    let counters: Vec<(metrics::Counter, Field)> =
        fields.into_iter().map(|(name, f)| (metrics::counter!(name, "group_id" => group_id.clone()), f)).collect();
    let in_flight = metrics::gauge!("squall_enrichment_in_flight", "group_id" => group_id);
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let s = enricher.stats();
            for (counter, field) in &counters {
                counter.absolute(field(s).load(Relaxed));
            }
            in_flight.set(s.in_flight.load(Relaxed) as f64);
            if stop.load(Relaxed) {
                return;
            }
        }
    });
}
