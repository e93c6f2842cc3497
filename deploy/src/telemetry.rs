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
            // Fails only if another recorder was installed first; then ours just renders nothing.
            builder.install_recorder().unwrap_or_else(|_| PrometheusBuilder::new().build_recorder().handle())
        })
        .clone()
}
