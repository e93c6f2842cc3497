//! The counters of one `squall run` process. Each is kept once, as an atomic next to the code that
//! counts (the store per worker, the enricher, the dead letters here); `/v1/status` reads them
//! and [`Counters::export`] publishes them as Prometheus series when the metrics are scraped.
//! Every `metrics::` series of the version runtime is made here: also the HTTP latencies
//! ([`record_request`]) and the offset commits ([`OffsetCommits`]).

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, LazyLock, OnceLock};

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use squall_enrichment::{Enricher, EnricherStats};
use squall_feeds::FeedStatus;
use squall_operators::DlqReason;
use squall_operators::UserStore;
use squall_operators::source::BackfillProgress;

use crate::version::freshness::{Freshness, FreshnessStatus};

/// `GET /v1/status` of one `squall run` process: what it has done so far.
#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq, utoipa::ToSchema)]
pub struct RunStatus {
    /// Consumer group id.
    pub group_id: String,
    /// Events applied to attributes.
    pub applied: u64,
    /// Events dropped as resends.
    pub duplicates: u64,
    /// Records sent to a dead-letter topic.
    pub dead_letters: u64,
    /// Users with state in this process.
    pub users: u64,
    /// Enrichment lookups answered from the cache.
    pub cache_hits: u64,
    /// Enrichment lookups that went to the store.
    pub cache_misses: u64,
    /// Failed store requests (retries included).
    pub enrich_errors: u64,
    /// Lookups enriched as `unknown` after the deadline.
    pub enrich_degraded: u64,
    /// The checkpoint cut the state was recovered from at start.
    pub recovered_cut: Option<u64>,
    /// The id the starter gave this process (`--launch-id`), so that it can tell its own
    /// processes from others at the same address.
    #[serde(default)]
    pub launch_id: Option<String>,
    /// The version's attribute feeds: lag in epochs, users waiting, whether failing.
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub feeds: Vec<FeedStatus>,
    /// The process id of the process that answered.
    #[serde(default)]
    pub pid: Option<u32>,
    /// How its backfill from an archive is going (`--backfill`); none without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfill: Option<BackfillStatus>,
    /// The cut its answers reflect and the event-to-servable delays (`[slo] freshness`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freshness: Option<FreshnessStatus>,
    /// A standby replica's cut and lag behind the replica feed (`squall standby`); none for a version process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby: Option<crate::version::standby::StandbyStatus>,
}

/// How a version's backfill from an archive is going.
#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq, utoipa::ToSchema)]
pub struct BackfillStatus {
    /// Archived records read so far (applied, dropped as resends or dead-lettered).
    pub records_done: u64,
    /// Archived records its partitions had left to read when it started.
    pub records_total: u64,
    /// The archive's files those records are in.
    pub files_total: u64,
    /// Partitions still reading the archive; 0: every one reads Kafka.
    pub partitions_left: u64,
    /// The first error reading the archive: that partition stopped (nothing of the file applied,
    /// nothing read past it) until the archive is repaired and the version restarted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl BackfillStatus {
    /// Whether it still reads the archive, or a partition stopped on an archive error (it stays
    /// there until the archive is repaired and the version restarted).
    pub fn under_way(&self) -> bool {
        self.partitions_left > 0 || self.error.is_some()
    }
}

/// A process's backfill: its progress, and what it had to read when it started.
#[derive(Clone, Debug)]
pub struct BackfillRun {
    /// Shared with the sources of its workers.
    pub progress: Arc<BackfillProgress>,
    /// Its local workers (the source counts them as they open the archive).
    pub workers: usize,
    /// Files left to read when it started.
    pub files: u64,
    /// Records left to read when it started.
    pub records: u64,
}

impl BackfillRun {
    /// The status now.
    pub fn status(&self) -> BackfillStatus {
        let p = &self.progress;
        BackfillStatus {
            records_done: p.records.load(Relaxed),
            records_total: self.records,
            files_total: self.files,
            partitions_left: if p.backfilling(self.workers) {
                p.partitions_left.load(Relaxed).max(1) as u64
            } else {
                0
            },
            error: p.error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }
}

impl RunStatus {
    /// The status of a version across its processes: counters summed, the first recovered cut.
    pub fn total<'a>(processes: impl IntoIterator<Item = &'a RunStatus>) -> RunStatus {
        let processes: Vec<&RunStatus> = processes.into_iter().collect();
        let mut sum = RunStatus::default();
        for s in &processes {
            // Destructured whole, so that a new field cannot be forgotten here.
            let RunStatus {
                group_id,
                applied,
                duplicates,
                dead_letters,
                users,
                cache_hits,
                cache_misses,
                enrich_errors,
                enrich_degraded,
                recovered_cut,
                launch_id: _,
                feeds,
                pid: _,
                backfill,
                freshness: _,
                standby: _,
            } = s;
            if let Some(b) = backfill {
                let t = sum.backfill.get_or_insert_with(BackfillStatus::default);
                t.records_done += b.records_done;
                t.records_total += b.records_total;
                t.files_total += b.files_total;
                t.partitions_left += b.partitions_left;
                t.error = t.error.take().or_else(|| b.error.clone());
            }
            sum.group_id.clone_from(group_id);
            sum.applied += applied;
            sum.duplicates += duplicates;
            sum.dead_letters += dead_letters;
            sum.users += users;
            sum.cache_hits += cache_hits;
            sum.cache_misses += cache_misses;
            sum.enrich_errors += enrich_errors;
            sum.enrich_degraded += enrich_degraded;
            sum.recovered_cut = sum.recovered_cut.or(*recovered_cut);
            for f in feeds {
                match sum.feeds.iter_mut().find(|t| t.feed == f.feed) {
                    None => sum.feeds.push(f.clone()),
                    // A version's feed is as far as its slowest process's.
                    Some(t) => {
                        t.latest_cut = t.latest_cut.max(f.latest_cut);
                        t.written_cut = t.written_cut.min(f.written_cut);
                        t.lag_cuts = t.lag_cuts.max(f.lag_cuts);
                        t.pending_users += f.pending_users;
                        t.failing_for_s = match (t.failing_for_s, f.failing_for_s) {
                            (Some(a), Some(b)) => Some(a.max(b)),
                            (a, b) => a.or(b),
                        };
                        if t.last_error.is_none() {
                            t.last_error.clone_from(&f.last_error);
                        }
                    }
                }
            }
        }
        sum.freshness = FreshnessStatus::total(processes.iter().filter_map(|s| s.freshness.as_ref()));
        sum
    }
}

/// Records sent to the dead-letter topics, per reason: the only record of them.
#[derive(Debug, Default)]
pub struct DeadLetters([AtomicU64; DlqReason::ALL.len()]);

impl DeadLetters {
    /// Counts one dead letter with `reason`.
    pub fn record(&self, reason: DlqReason) {
        self.0[reason as usize].fetch_add(1, Relaxed);
    }

    /// Dead letters so far, of every reason.
    pub fn total(&self) -> u64 {
        self.0.iter().map(|c| c.load(Relaxed)).sum()
    }
}

/// The Prometheus series of the enricher's counters, each with the field that is its source.
type EnrichField = fn(&EnricherStats) -> &AtomicU64;
const ENRICHMENT: [(&str, EnrichField); 10] = [
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

/// Where one process's counters are kept, and the series they are exported as.
pub struct Counters {
    store: Arc<UserStore>,
    enricher: Enricher,
    dead_letters: Arc<DeadLetters>,
    /// `squall_events_applied_total` and `squall_events_duplicate_total` of each local worker.
    workers: Vec<(usize, metrics::Counter, metrics::Counter)>,
    dead_lettered: Vec<metrics::Counter>,
    enrichment: Vec<(metrics::Counter, EnrichField)>,
    in_flight: metrics::Gauge,
    backfill: Option<BackfillRun>,
    freshness: Arc<Freshness>,
    /// `squall_freshness_breached`: 1 while `[slo] freshness` is breached.
    breached: metrics::Gauge,
    /// `squall_freshness_within_objective_ratio`: the share of the last hour's events within it.
    within: metrics::Gauge,
    group_id: String,
}

impl Counters {
    /// The counters of a version whose workers `local` run in this process, labelled `group_id`.
    pub fn new(
        group_id: &str,
        local: Range<usize>,
        store: Arc<UserStore>,
        enricher: Enricher,
        dead_letters: Arc<DeadLetters>,
    ) -> Counters {
        // Handles belong to the recorder present when they are made: make sure it is the process's.
        let _ = crate::telemetry::metrics();
        let g = group_id.to_owned();
        Counters {
            workers: local
                .map(|w| {
                    let label = w.to_string();
                    let applied = metrics::counter!("squall_events_applied_total", "worker" => label.clone());
                    (w, applied, metrics::counter!("squall_events_duplicate_total", "worker" => label))
                })
                .collect(),
            dead_lettered: DlqReason::ALL
                .iter()
                .map(|r| metrics::counter!("squall_events_dead_lettered_total", "group_id" => g.clone(), "reason" => r.as_str()))
                .collect(),
            enrichment: ENRICHMENT
                .iter()
                .map(|(name, field)| (metrics::counter!(*name, "group_id" => g.clone()), *field))
                .collect(),
            in_flight: metrics::gauge!("squall_enrichment_in_flight", "group_id" => g.clone()),
            breached: metrics::gauge!("squall_freshness_breached", "group_id" => g.clone()),
            within: metrics::gauge!("squall_freshness_within_objective_ratio", "group_id" => g.clone()),
            group_id: g,
            backfill: None,
            freshness: Arc::default(),
            store,
            enricher,
            dead_letters,
        }
    }

    /// The counters as `/v1/status` shows them (identity fields left empty).
    pub fn status(&self) -> RunStatus {
        let e = self.enricher.stats();
        RunStatus {
            applied: self.store.applied(),
            duplicates: self.store.duplicates(),
            dead_letters: self.dead_letters.total(),
            users: self.store.users() as u64,
            cache_hits: e.hits.load(Relaxed),
            cache_misses: e.misses.load(Relaxed),
            enrich_errors: e.errors.load(Relaxed),
            enrich_degraded: e.degraded.load(Relaxed),
            backfill: self.backfill.as_ref().map(BackfillRun::status),
            freshness: Some(self.freshness.status(crate::version::freshness::now_ms())),
            ..RunStatus::default()
        }
    }

    /// Reports and exports `freshness` (the process's cuts and delays).
    pub fn with_freshness(mut self, freshness: Arc<Freshness>) -> Counters {
        self.freshness = freshness;
        self
    }

    /// The process's cuts and delays.
    pub fn freshness(&self) -> &Freshness {
        &self.freshness
    }

    /// Reports `run` in the status.
    pub fn with_backfill(mut self, run: Option<BackfillRun>) -> Counters {
        self.backfill = run;
        self
    }

    /// Sets every series to its source's current value (called before the metrics are rendered).
    pub fn export(&self) {
        for (worker, applied, duplicates) in &self.workers {
            let (a, d) = self.store.worker_counts(*worker);
            applied.absolute(a);
            duplicates.absolute(d);
        }
        for (counter, source) in self.dead_lettered.iter().zip(&self.dead_letters.0) {
            counter.absolute(source.load(Relaxed));
        }
        let stats = self.enricher.stats();
        for (counter, field) in &self.enrichment {
            counter.absolute(field(stats).load(Relaxed));
        }
        self.in_flight.set(stats.in_flight.load(Relaxed) as f64);
        let freshness = self.freshness.status(crate::version::freshness::now_ms());
        self.breached.set(if freshness.breaching { 1.0 } else { 0.0 });
        if let Some(share) = freshness.share_within() {
            self.within.set(share);
        }
    }

    /// Appends `squall_freshness_delay_seconds`, the event-to-servable delays, to `out` (a
    /// Prometheus exposition), with `labels` and the group id. Kept as counts per bucket rather
    /// than a `metrics` histogram, which keeps every sample until the next scrape: a cut adds its
    /// events to a bucket at once, whatever their number.
    pub fn render_freshness(&self, out: &mut String, labels: &[(&str, &str)]) {
        use std::fmt::Write as _;
        let h = self.freshness.histogram();
        let name = "squall_freshness_delay_seconds";
        let mut labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
        labels.push(format!("group_id=\"{}\"", escape(&self.group_id)));
        let labels = labels.join(",");
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "# HELP {name} From an event to the publication of the cut that makes it visible (from the cut's event-time watermark)."
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (le, count) in &h.buckets {
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.events);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum_s);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.events);
    }
}

/// A label value as the Prometheus text format writes it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Records one request's latency as `squall_http_request_seconds{route, status}`.
pub fn record_request(route: &str, status: StatusCode, seconds: f64) {
    match LATENCY.get(route, status) {
        Some(histogram) => histogram.record(seconds),
        None => {
            let (route, status) = (route.to_owned(), status.as_str().to_owned());
            metrics::histogram!("squall_http_request_seconds", "route" => route, "status" => status).record(seconds)
        }
    }
}

/// The `squall_http_request_seconds` series of the routes `squall run` serves, registered on first
/// use and kept, so that a request costs no label strings and no registry lookup. Other routes and
/// statuses go through the registry.
static LATENCY: LazyLock<Latency> = LazyLock::new(|| {
    // Handles belong to the recorder present when they are made: make sure it is the process's.
    let _ = crate::telemetry::metrics();
    Latency { series: std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new())) }
});

/// Routes with kept series (the ones of [`crate::version::http::router`]).
const ROUTES: [&str; 4] = ["/v1/users/{user_id}/attributes", "/healthz", "/metrics", "/v1/status"];
/// Statuses with kept series.
const STATUSES: [StatusCode; 7] = [
    StatusCode::OK,
    StatusCode::NOT_FOUND,
    StatusCode::BAD_REQUEST,
    StatusCode::METHOD_NOT_ALLOWED,
    StatusCode::MISDIRECTED_REQUEST,
    StatusCode::BAD_GATEWAY,
    StatusCode::SERVICE_UNAVAILABLE,
];

struct Latency {
    series: [[OnceLock<metrics::Histogram>; STATUSES.len()]; ROUTES.len()],
}

impl Latency {
    fn get(&self, route: &str, status: StatusCode) -> Option<&metrics::Histogram> {
        let r = ROUTES.iter().position(|r| *r == route)?;
        let s = STATUSES.iter().position(|s| *s == status)?;
        Some(self.series[r][s].get_or_init(|| {
            let status = status.as_str().to_owned();
            metrics::histogram!("squall_http_request_seconds", "route" => ROUTES[r], "status" => status)
        }))
    }
}

/// `squall_offset_commits_total{group_id, result}`: the offset commits of complete checkpoints.
pub struct OffsetCommits {
    /// Commits that succeeded.
    pub ok: metrics::Counter,
    /// Commits that failed (and are retried).
    pub failed: metrics::Counter,
}

impl OffsetCommits {
    /// The series of `group_id`.
    pub fn new(group_id: &str) -> OffsetCommits {
        let group = group_id.to_owned();
        OffsetCommits {
            ok: metrics::counter!("squall_offset_commits_total", "group_id" => group.clone(), "result" => "ok"),
            failed: metrics::counter!("squall_offset_commits_total", "group_id" => group, "result" => "error"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_versions_status_sums_its_processes() {
        let a = RunStatus { group_id: "p-v1".into(), applied: 3, dead_letters: 1, users: 2, ..Default::default() };
        let b = RunStatus { group_id: "p-v1".into(), applied: 4, recovered_cut: Some(9), ..Default::default() };
        let t = RunStatus::total([&a, &b]);
        assert_eq!((t.group_id.as_str(), t.applied, t.dead_letters, t.users), ("p-v1", 7, 1, 2));
        assert_eq!(t.recovered_cut, Some(9));
    }

    #[test]
    fn dead_letters_count_by_reason() {
        let d = DeadLetters::default();
        d.record(DlqReason::MalformedJson);
        d.record(DlqReason::MalformedJson);
        d.record(DlqReason::Oversized);
        assert_eq!(d.total(), 3);
        assert_eq!(d.0[DlqReason::MalformedJson as usize].load(Relaxed), 2);
        // `ALL` lists the reasons in declaration order, so `reason as usize` is its index there.
        assert!(DlqReason::ALL.iter().enumerate().all(|(i, r)| *r as usize == i));
    }
}
