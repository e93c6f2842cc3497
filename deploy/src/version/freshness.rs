//! How fresh this process's answers are: the latest cut its workers have applied, the event-time
//! watermark there, the bounds a read may ask for (`?min_cut=`, `?max_staleness_ms=`), and the
//! event-to-servable delay of the events each cut makes visible, judged against
//! `[slo] freshness`.
//!
//! # Notes
//! - Cut `c` is *published* on this process when every local worker's dataflow frontier has
//!   passed epoch `c - 1`: every event read from Kafka in the epochs before `c` is then in the
//!   state (answers may already hold some later ones). The frontier is timely's, over every worker
//!   of the version, so all processes publish the same cuts. Before the first one, the cut is the
//!   recovered checkpoint's (0 without one).
//! - The *staleness* of an answer is wall-clock now minus `cut × state.epoch`, the end of the last
//!   epoch its cut covers: the answer reflects every record the version had read by then. It does
//!   not see records not yet read (consumer lag); the event-time `watermark_ms` and the delay
//!   histogram do.
//! - The *delay* of the events a cut makes visible is its publication time minus the event-time
//!   watermark at the cut: the newest event time its slowest active partition had delivered (with
//!   every partition at its end, the newest of all). That is the delay of the freshest events of
//!   that partition; the events read earlier in the cut's last epoch waited up to an epoch more.
//!   Until the sources have reported, it is measured from the start of the cut's last epoch. It
//!   is measured from event time (`ts`) because the source does not hand on Kafka timestamps;
//!   [`Freshness::record`] takes any (time, events) samples, so a source that reports them per
//!   cut can replace the estimate.
//! - Everything here happens once per cut per worker or once per query, never per event.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// No watermark yet (no event-time progress reported).
pub const NO_WATERMARK: i64 = i64::MIN;

/// What an attribute answer reflects.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, utoipa::ToSchema)]
pub struct AsOf {
    /// The cut: every event the version read in the epochs before it is reflected (later ones may
    /// be too). Cuts are epoch numbers: cut `c` ends at Unix time `c × state.epoch`.
    pub cut: u64,
    /// The event-time watermark of the process that answered at that cut, Unix milliseconds: no
    /// event still unread is older (null until the sources have reported).
    pub watermark_ms: Option<i64>,
    /// Whether a standby replica answered (false: every answer comes from the active process).
    pub standby: bool,
}

/// The longest `max_staleness_ms` a read may ask for (a day).
pub const MAX_STALENESS_MS: u64 = 86_400_000;

/// How far ahead of the current epoch a `min_cut` may be, in wall-clock milliseconds (an hour).
const MIN_CUT_AHEAD_MS: u64 = 3_600_000;

/// `?min_cut=` and `?max_staleness_ms=` of an attribute read, as the query gives them.
#[derive(Deserialize, Debug, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BoundsQuery {
    /// Answer only from this cut on (an earlier answer's `as_of.cut`, to read your writes);
    /// otherwise 503 with `Retry-After`.
    #[param(value_type = Option<u64>, nullable = false, minimum = 0)]
    pub min_cut: Option<String>,
    /// Answer only if the cut answered ended at most this many milliseconds ago (1 to 86400000);
    /// otherwise 503 with `Retry-After`.
    #[param(value_type = Option<u64>, nullable = false, minimum = 1, maximum = 86400000)]
    pub max_staleness_ms: Option<String>,
}

/// The bounds a read asked for, checked for form.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadBounds {
    /// The least cut the answer may reflect.
    pub min_cut: Option<u64>,
    /// The most staleness the answer may have, in milliseconds.
    pub max_staleness_ms: Option<u64>,
}

/// A bound that is not a bound: the request is wrong (400).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadBound {
    /// Not a whole number.
    #[error("{key} = {value:?} is not a whole number")]
    NotANumber {
        /// The parameter.
        key: &'static str,
        /// Its text.
        value: String,
    },
    /// Below zero.
    #[error("{key} = {value} is negative")]
    Negative {
        /// The parameter.
        key: &'static str,
        /// Its text.
        value: String,
    },
    /// Outside what can ever be met.
    #[error("{key} = {value} is out of range: {range}")]
    OutOfRange {
        /// The parameter.
        key: &'static str,
        /// Its text.
        value: String,
        /// What is accepted.
        range: String,
    },
}

/// A bound the process cannot meet now: 503, and when to try again.
#[derive(Debug, PartialEq, Eq)]
pub enum Unmet {
    /// The cut asked for is not published yet.
    Cut {
        /// `min_cut`.
        wanted: u64,
        /// The cut this process has.
        has: u64,
        /// Seconds until that cut can first be published (at least 1).
        retry_after_s: u64,
    },
    /// The cut this process has is staler than asked.
    Staleness {
        /// `max_staleness_ms`.
        wanted_ms: u64,
        /// The staleness of the cut this process has.
        has_ms: u64,
        /// That cut.
        cut: u64,
        /// Seconds until the next cut can first be published (at least 1).
        retry_after_s: u64,
    },
}

impl Unmet {
    /// The `Retry-After` seconds.
    pub fn retry_after_s(&self) -> u64 {
        match self {
            Unmet::Cut { retry_after_s, .. } | Unmet::Staleness { retry_after_s, .. } => *retry_after_s,
        }
    }
}

fn parse_bound(key: &'static str, value: &str) -> Result<u64, BadBound> {
    let text = value.trim();
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BadBound::NotANumber { key, value: value.to_owned() });
    }
    if text.starts_with('-') && digits.bytes().any(|b| b != b'0') {
        return Err(BadBound::Negative { key, value: value.to_owned() });
    }
    digits.parse::<u64>().map_err(|_| BadBound::OutOfRange {
        key,
        value: value.to_owned(),
        range: format!("at most {}", u64::MAX),
    })
}

impl BoundsQuery {
    /// The bounds, or the first one that is malformed.
    pub fn bounds(&self) -> Result<ReadBounds, BadBound> {
        let min_cut = self.min_cut.as_deref().map(|v| parse_bound("min_cut", v)).transpose()?;
        let max_staleness_ms = match self.max_staleness_ms.as_deref() {
            None => None,
            Some(v) => match parse_bound("max_staleness_ms", v)? {
                ms @ 1..=MAX_STALENESS_MS => Some(ms),
                _ => {
                    return Err(BadBound::OutOfRange {
                        key: "max_staleness_ms",
                        value: v.to_owned(),
                        range: format!("use 1..={MAX_STALENESS_MS}"),
                    });
                }
            },
        };
        Ok(ReadBounds { min_cut, max_staleness_ms })
    }

    /// The query string that passes these bounds on (`?min_cut=..&max_staleness_ms=..`), or "".
    pub fn forward(bounds: &ReadBounds) -> String {
        let parts: Vec<String> = [("min_cut", bounds.min_cut), ("max_staleness_ms", bounds.max_staleness_ms)]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| format!("{k}={v}")))
            .collect();
        if parts.is_empty() { String::new() } else { format!("?{}", parts.join("&")) }
    }
}

/// The delay histogram's upper bounds, in milliseconds (the objective is added).
const BOUNDS_MS: [u64; 13] =
    [50, 100, 250, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000, 300_000, 900_000, 3_600_000];

/// Warnings about a breached objective, at most one per this long.
const WARN_EVERY_MS: u64 = 60_000;

/// The freshness of one process, shared by its workers (which publish cuts) and its HTTP API.
pub struct Freshness {
    epoch_ms: u64,
    objective_ms: Option<u64>,
    /// The process's cut and watermark, read by every answer without a lock.
    cut: AtomicU64,
    watermark: AtomicI64,
    account: Mutex<Account>,
}

/// What publication keeps, under the lock.
struct Account {
    workers: Vec<WorkerCut>,
    /// Upper bounds (ms) of the delay buckets; one more bucket counts the rest.
    bounds: Vec<u64>,
    counts: Vec<u64>,
    sum_ms: u128,
    events: u64,
    /// Events and events within the objective, per minute of the last hour (a ring).
    minutes: [Minute; 60],
    warned_at_ms: Option<u64>,
    /// Whether a worker has published a cut yet: until then the cut is the recovered one, and
    /// its age says nothing about this process.
    published: bool,
}

#[derive(Clone, Copy, Debug)]
struct WorkerCut {
    cut: u64,
    watermark: i64,
    /// The delay of the events of its latest cut that made any visible; none when its latest
    /// cut made none visible (nothing waits).
    delay_ms: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Minute {
    minute: u64,
    events: u64,
    within: u64,
}

/// What `/v1/status` shows of a process's freshness; a version's combines its processes'.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, utoipa::ToSchema)]
pub struct FreshnessStatus {
    /// The cut published (a version's: the least of its processes').
    pub cut: u64,
    /// The event-time watermark at that cut, Unix ms (a version's: the least).
    pub watermark_ms: Option<i64>,
    /// `[slo] freshness` in milliseconds, if the version declares one.
    pub objective_ms: Option<u64>,
    /// Events made visible in the last hour.
    pub events_last_hour: u64,
    /// Of those, the ones within the objective (all of them without an objective).
    pub within_last_hour: u64,
    /// The delay of the latest cut that made events visible (a version's: the longest).
    pub delay_ms: Option<u64>,
    /// Whether the objective is breached now: the latest delay is over it, or no cut has been
    /// published for longer than it (since the first one).
    pub breaching: bool,
}

impl FreshnessStatus {
    /// The share of the last hour's events made visible within the objective, if any was.
    pub fn share_within(&self) -> Option<f64> {
        (self.events_last_hour > 0).then(|| self.within_last_hour as f64 / self.events_last_hour as f64)
    }

    /// A version's freshness from its processes'.
    pub fn total<'a>(processes: impl IntoIterator<Item = &'a FreshnessStatus>) -> Option<FreshnessStatus> {
        let mut out: Option<FreshnessStatus> = None;
        for p in processes {
            let Some(t) = &mut out else {
                out = Some(p.clone());
                continue;
            };
            t.cut = t.cut.min(p.cut);
            t.watermark_ms = t.watermark_ms.zip(p.watermark_ms).map(|(a, b)| a.min(b));
            t.objective_ms = t.objective_ms.or(p.objective_ms);
            t.events_last_hour += p.events_last_hour;
            t.within_last_hour += p.within_last_hour;
            t.delay_ms = t.delay_ms.max(p.delay_ms);
            t.breaching |= p.breaching;
        }
        out
    }
}

/// The delay histogram, cumulative as Prometheus has it.
#[derive(Debug, PartialEq)]
pub struct DelayHistogram {
    /// (upper bound in seconds, events at or below it), ascending; `+Inf` is `events`.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of the delays, seconds.
    pub sum_s: f64,
    /// Events measured.
    pub events: u64,
}

impl Freshness {
    /// The freshness of a process with `workers` local workers and epochs of `epoch`, judged
    /// against `objective`, starting from a recovered cut and watermark.
    pub fn new(
        epoch: Duration,
        objective: Option<Duration>,
        workers: usize,
        recovered: Option<u64>,
        watermark: i64,
    ) -> Freshness {
        let objective_ms = objective.map(|o| o.as_millis() as u64);
        let mut bounds: Vec<u64> = BOUNDS_MS.iter().copied().chain(objective_ms).collect();
        bounds.sort_unstable();
        bounds.dedup();
        let cut = recovered.unwrap_or(0);
        Freshness {
            epoch_ms: (epoch.as_millis() as u64).max(1),
            objective_ms,
            cut: AtomicU64::new(cut),
            watermark: AtomicI64::new(watermark),
            account: Mutex::new(Account {
                workers: vec![WorkerCut { cut, watermark, delay_ms: None }; workers.max(1)],
                counts: vec![0; bounds.len() + 1],
                bounds,
                sum_ms: 0,
                events: 0,
                minutes: [Minute::default(); 60],
                warned_at_ms: None,
                published: false,
            }),
        }
    }

    /// The epoch length, milliseconds.
    pub fn epoch_ms(&self) -> u64 {
        self.epoch_ms
    }

    /// What an answer given now reflects.
    pub fn as_of(&self) -> AsOf {
        let watermark = self.watermark.load(Relaxed);
        AsOf {
            cut: self.cut.load(Relaxed),
            watermark_ms: (watermark != NO_WATERMARK).then_some(watermark),
            standby: false,
        }
    }

    /// How long ago, at `now_ms`, the last epoch of `cut` ended.
    pub fn staleness_ms(&self, cut: u64, now_ms: u64) -> u64 {
        now_ms.saturating_sub(cut.saturating_mul(self.epoch_ms))
    }

    /// Whether an answer reflecting `as_of` meets `bounds` at `now_ms`; a bound no process could
    /// meet within the hour is malformed.
    pub fn check(&self, bounds: &ReadBounds, as_of: &AsOf, now_ms: u64) -> Result<Result<(), Unmet>, BadBound> {
        let e = self.epoch_ms;
        let seconds_until = |ms: u64| ms.saturating_sub(now_ms).div_ceil(1000).max(1);
        if let Some(wanted) = bounds.min_cut {
            let latest = (now_ms + MIN_CUT_AHEAD_MS) / e + 1;
            if wanted > latest {
                return Err(BadBound::OutOfRange {
                    key: "min_cut",
                    value: wanted.to_string(),
                    range: format!("at most {latest}, the cut that ends an hour from now ({e} ms epochs)"),
                });
            }
            if as_of.cut < wanted {
                let retry_after_s = seconds_until(wanted.saturating_mul(e));
                return Ok(Err(Unmet::Cut { wanted, has: as_of.cut, retry_after_s }));
            }
        }
        if let Some(wanted_ms) = bounds.max_staleness_ms {
            let has_ms = self.staleness_ms(as_of.cut, now_ms);
            if has_ms > wanted_ms {
                let retry_after_s = seconds_until((as_of.cut + 1).saturating_mul(e));
                return Ok(Err(Unmet::Staleness { wanted_ms, has_ms, cut: as_of.cut, retry_after_s }));
            }
        }
        Ok(Ok(()))
    }

    /// Local worker `slot` has seen cut `cut` published, with `watermark` its event-time
    /// watermark there, `events` applied since its previous cut, at `now_ms`. The events are
    /// measured from that watermark (see the module's notes).
    pub fn publish(&self, slot: usize, cut: u64, watermark: i64, events: u64, now_ms: u64) {
        if self.lock().workers.get(slot).is_none_or(|w| cut <= w.cut) {
            return;
        }
        let since = if watermark == NO_WATERMARK { (cut - 1).saturating_mul(self.epoch_ms) as i64 } else { watermark };
        self.record(slot, now_ms, [(since, events)]);
        let mut account = self.lock();
        if let Some(w) = account.workers.get_mut(slot) {
            w.cut = cut;
            w.watermark = w.watermark.max(watermark);
        }
        account.published = true;
        let cut = account.workers.iter().map(|w| w.cut).min().unwrap_or(cut);
        let watermark = account.workers.iter().map(|w| w.watermark).min().unwrap_or(NO_WATERMARK);
        self.cut.fetch_max(cut, Relaxed);
        self.watermark.fetch_max(watermark, Relaxed);
        drop(account);
        self.check_objective(now_ms);
    }

    /// Records the events local worker `slot` made visible at `published_ms`, as (time they
    /// entered Kafka or happened, Unix ms; events) samples: the seam through which a source's
    /// own timestamps can be measured.
    pub fn record(&self, slot: usize, published_ms: u64, samples: impl IntoIterator<Item = (i64, u64)>) {
        let minute = published_ms / 60_000;
        let mut account = self.lock();
        let mut latest: Option<u64> = None;
        for (since, events) in samples {
            if events == 0 {
                continue;
            }
            let delay = (published_ms as i64).saturating_sub(since).max(0) as u64;
            latest = latest.max(Some(delay));
            let bucket = account.bounds.partition_point(|b| *b < delay);
            account.counts[bucket] += events;
            account.sum_ms += u128::from(delay) * u128::from(events);
            account.events += events;
            let within = self.objective_ms.is_none_or(|o| delay <= o);
            let m = &mut account.minutes[(minute % 60) as usize];
            if m.minute != minute {
                *m = Minute { minute, events: 0, within: 0 };
            }
            m.events += events;
            m.within += if within { events } else { 0 };
        }
        if let Some(w) = account.workers.get_mut(slot) {
            w.delay_ms = latest;
        }
    }

    /// Whether the objective is breached at `now_ms`; logs a warning, at most once a minute, while it is.
    pub fn check_objective(&self, now_ms: u64) -> bool {
        let Some(objective) = self.objective_ms else { return false };
        let cut = self.cut.load(Relaxed);
        let staleness = self.staleness_ms(cut, now_ms);
        let mut account = self.lock();
        let delay = account.workers.iter().filter_map(|w| w.delay_ms).max();
        let breaching = delay.is_some_and(|d| d > objective) || (account.published && staleness > objective);
        if breaching && account.warned_at_ms.is_none_or(|at| now_ms.saturating_sub(at) >= WARN_EVERY_MS) {
            account.warned_at_ms = Some(now_ms);
            tracing::warn!(
                objective_ms = objective,
                delay_ms = ?delay,
                cut,
                staleness_ms = staleness,
                "freshness objective ([slo] freshness) breached: events take longer than it to become visible"
            );
        }
        breaching
    }

    /// The status at `now_ms`.
    pub fn status(&self, now_ms: u64) -> FreshnessStatus {
        let breaching = self.check_objective(now_ms);
        let as_of = self.as_of();
        let account = self.lock();
        let minute = now_ms / 60_000;
        let recent = account.minutes.iter().filter(|m| m.minute + 60 > minute && m.minute <= minute);
        let (events, within) = recent.fold((0, 0), |(e, w), m| (e + m.events, w + m.within));
        FreshnessStatus {
            cut: as_of.cut,
            watermark_ms: as_of.watermark_ms,
            objective_ms: self.objective_ms,
            events_last_hour: events,
            within_last_hour: within,
            delay_ms: account.workers.iter().filter_map(|w| w.delay_ms).max(),
            breaching,
        }
    }

    /// The delays measured so far.
    pub fn histogram(&self) -> DelayHistogram {
        let account = self.lock();
        let mut running = 0;
        let buckets = account
            .bounds
            .iter()
            .zip(&account.counts)
            .map(|(b, c)| {
                running += c;
                (*b as f64 / 1000.0, running)
            })
            .collect();
        DelayHistogram { buckets, sum_s: account.sum_ms as f64 / 1000.0, events: account.events }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Account> {
        self.account.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Default for Freshness {
    /// One worker, 1 s epochs, no objective, nothing published.
    fn default() -> Self {
        Freshness::new(Duration::from_secs(1), None, 1, None, NO_WATERMARK)
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(min_cut: Option<&str>, max_staleness_ms: Option<&str>) -> Result<ReadBounds, BadBound> {
        BoundsQuery { min_cut: min_cut.map(Into::into), max_staleness_ms: max_staleness_ms.map(Into::into) }.bounds()
    }

    #[test]
    fn bounds_are_whole_non_negative_numbers_in_range() {
        assert_eq!(query(Some("12"), Some("500")), Ok(ReadBounds { min_cut: Some(12), max_staleness_ms: Some(500) }));
        assert_eq!(query(None, None), Ok(ReadBounds::default()));
        assert_eq!(query(Some("-0"), None), Ok(ReadBounds { min_cut: Some(0), max_staleness_ms: None }));
        let msg = |r: Result<ReadBounds, BadBound>| r.unwrap_err().to_string();
        assert_eq!(msg(query(Some("x1"), None)), r#"min_cut = "x1" is not a whole number"#);
        assert_eq!(msg(query(Some(""), None)), r#"min_cut = "" is not a whole number"#);
        assert_eq!(msg(query(Some("1.5"), None)), r#"min_cut = "1.5" is not a whole number"#);
        assert_eq!(msg(query(Some("-3"), None)), "min_cut = -3 is negative");
        assert_eq!(msg(query(None, Some("-1"))), "max_staleness_ms = -1 is negative");
        assert_eq!(
            msg(query(Some("99999999999999999999"), None)),
            format!("min_cut = 99999999999999999999 is out of range: at most {}", u64::MAX)
        );
        assert_eq!(msg(query(None, Some("0"))), "max_staleness_ms = 0 is out of range: use 1..=86400000");
        assert_eq!(msg(query(None, Some("86400001"))), "max_staleness_ms = 86400001 is out of range: use 1..=86400000");
        let b = ReadBounds { min_cut: Some(7), max_staleness_ms: Some(250) };
        assert_eq!(BoundsQuery::forward(&b), "?min_cut=7&max_staleness_ms=250");
        assert_eq!(BoundsQuery::forward(&ReadBounds::default()), "");
    }

    #[test]
    fn unmet_bounds_say_what_the_process_has_and_when_to_retry() {
        let f = Freshness::new(Duration::from_secs(1), None, 1, Some(100), NO_WATERMARK);
        let as_of = f.as_of();
        assert_eq!(as_of, AsOf { cut: 100, watermark_ms: None, standby: false });
        let now = 100_400;
        let check = |min_cut, max_staleness_ms| f.check(&ReadBounds { min_cut, max_staleness_ms }, &as_of, now);
        assert_eq!(check(Some(100), Some(400)), Ok(Ok(())));
        // Cut 103 ends at 103 000 ms: 2.6 s from now, rounded up.
        assert_eq!(check(Some(103), None), Ok(Err(Unmet::Cut { wanted: 103, has: 100, retry_after_s: 3 })));
        // The next cut ends at 101 000 ms; at least a second.
        assert_eq!(
            check(None, Some(399)),
            Ok(Err(Unmet::Staleness { wanted_ms: 399, has_ms: 400, cut: 100, retry_after_s: 1 }))
        );
        // Less than a second away: at least a second.
        assert_eq!(check(Some(101), None).map(|r| r.unwrap_err().retry_after_s()), Ok(1));
        let far = check(Some(3_702), None).unwrap_err().to_string();
        assert_eq!(
            far,
            "min_cut = 3702 is out of range: at most 3701, the cut that ends an hour from now (1000 ms epochs)"
        );
    }

    #[test]
    fn the_cut_is_the_least_of_the_workers_and_delays_count_every_event_once() {
        let f = Freshness::new(Duration::from_secs(1), Some(Duration::from_secs(5)), 2, None, NO_WATERMARK);
        // Worker 0 publishes cut 10 with no watermark yet: measured from the start of epoch 9.
        f.publish(0, 10, NO_WATERMARK, 4, 10_200);
        assert_eq!(f.as_of().cut, 0, "worker 1 has not published");
        f.publish(1, 10, 9_500, 6, 10_300);
        assert_eq!(f.as_of(), AsOf { cut: 10, watermark_ms: None, standby: false });
        f.publish(0, 11, 10_400, 0, 11_100);
        f.publish(0, 11, 10_900, 3, 11_200);
        assert_eq!(f.as_of().cut, 10, "a cut is published once");
        // Worker 1's next cut, with its watermark at 9 500: 7.5 s, over the objective.
        f.publish(1, 12, 9_500, 5, 17_000);
        assert_eq!(f.as_of(), AsOf { cut: 11, watermark_ms: Some(9_500), standby: false });
        let h = f.histogram();
        assert_eq!(h.events, 15);
        // 4 events at 1.2 s, 6 at 0.8 s, 5 at 7.5 s.
        assert_eq!(h.sum_s, 4.0 * 1.2 + 6.0 * 0.8 + 5.0 * 7.5);
        let at = |s: f64| h.buckets.iter().find(|(b, _)| *b == s).map(|(_, c)| *c);
        assert_eq!((at(1.0), at(2.0), at(5.0), at(10.0)), (Some(6), Some(10), Some(10), Some(15)));
        let s = f.status(17_000);
        assert_eq!((s.events_last_hour, s.within_last_hour, s.delay_ms), (15, 10, Some(7_500)));
        assert!(s.breaching, "the latest delay is over the objective");
        // A worker's cut that makes nothing visible leaves nothing waiting.
        f.publish(1, 13, 12_000, 0, 13_100);
        assert!(!f.status(13_100).breaching);
        assert!(f.status(30_000).breaching, "no cut for longer than the objective");
        assert_eq!(f.status(17_000 + 3_600_000).events_last_hour, 0, "an hour later");
    }

    #[test]
    fn a_process_starting_from_an_old_cut_is_not_judged_by_its_age_until_it_publishes() {
        let f = Freshness::new(Duration::from_secs(1), Some(Duration::from_secs(5)), 1, Some(10), NO_WATERMARK);
        assert!(!f.status(3_600_000).breaching, "recovered cut 10 is an hour old, but nothing was published yet");
        f.publish(0, 3_600, 3_599_900, 1, 3_600_100);
        assert!(!f.status(3_600_100).breaching);
        assert!(f.status(3_610_000).breaching, "no cut for 10 s");
    }

    #[test]
    fn a_version_is_as_fresh_as_its_stalest_process() {
        let a = FreshnessStatus {
            cut: 9,
            watermark_ms: Some(5),
            events_last_hour: 10,
            within_last_hour: 9,
            delay_ms: Some(3),
            ..Default::default()
        };
        let b = FreshnessStatus {
            cut: 8,
            watermark_ms: Some(7),
            events_last_hour: 10,
            within_last_hour: 10,
            delay_ms: Some(9),
            breaching: true,
            ..Default::default()
        };
        let t = FreshnessStatus::total([&a, &b]).unwrap();
        assert_eq!((t.cut, t.watermark_ms, t.delay_ms, t.breaching), (8, Some(5), Some(9), true));
        assert_eq!(t.share_within(), Some(0.95));
        assert_eq!(FreshnessStatus::total([]), None);
    }
}
