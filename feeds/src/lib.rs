//! Attribute feeds: a version's changed users, once per complete cut, to a readable CQL profile
//! table ([`profile`]) and a compacted changelog topic ([`changelog`]), so that models, exports
//! and other services read attributes without calling squall per user.
//!
//! # Notes
//! - **What is written.** Each worker's checkpoint part of cut `c` names the users it changed in
//!   the epochs before `c`, with their state at `c`. A feed keeps those parts until cut `c` is
//!   complete (durable in the checkpoint store; without checkpoints, when every local worker has
//!   produced its part), then writes every user it holds once, with their latest state, tagged
//!   with the latest complete cut. A user changed in many epochs while a feed is behind is written
//!   once when it catches up.
//! - **Order and idempotence.** A feed writes its batches one after the other, so a user's rows
//!   and messages go out in cut order; a batch that fails is retried whole (users changed again
//!   meanwhile are written with their newer state), and a replay after a crash rewrites a user's
//!   state at a cut, never an older state over a newer one. The changelog is at least once: a
//!   consumer drops a message whose `cut` header is not above the last it kept for that user.
//! - **Backpressure.** Feeds run on their own threads and never hold up the dataflow or its
//!   checkpoints: a slow or unavailable store or broker only makes the feed lag (epochs not yet
//!   written, `squall_feed_lag_cuts`); pending users are coalesced, so memory is bounded by the
//!   users that changed, not by the time the feed is down. A feed failing for longer than
//!   `feed.deadline` is reported (log, `squall_feed_failing`, `/v1/status`) and keeps retrying.
//! - **Recovery.** Each feed of each process records the last cut it wrote (`feed_progress`, one
//!   row per process of a multi-process version, since each writes its own share); a process
//!   recovered from a later checkpoint, or with a share it has no row for (the version's number of
//!   processes changed), writes every recovered user of its share again at that cut.
#![warn(missing_docs)]

pub mod changelog;
mod counters;
pub mod profile;
pub mod progress;
pub mod replica;

pub use progress::now_ms;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use squall_enrichment::Symbols;
use squall_operators::Epoch;
use squall_operators::checkpoint::Part;
use squall_operators::{Plan, UserSnapshot, UserState};

use self::counters::FeedCounters;

/// `[feed]` of a topology file: which feeds a version writes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeedSpec {
    /// Write changed users to the CQL table `attributes_<topology>_v<version>` in the `[cql]` keyspace.
    pub profile: bool,
    /// Publish changed users to the compacted topic `<group id>.attributes`.
    pub changelog: bool,
    /// Partitions of the changelog topic when squall creates it.
    pub changelog_partitions: i32,
    /// Replication factor of the changelog topic when squall creates it.
    pub changelog_replication: i32,
    /// A feed failing for longer than this is reported (it keeps retrying).
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
    /// Profile rows written at once.
    pub max_in_flight: usize,
}

impl Default for FeedSpec {
    fn default() -> Self {
        FeedSpec {
            profile: false,
            changelog: false,
            changelog_partitions: 6,
            changelog_replication: 1,
            deadline: Duration::from_secs(30),
            max_in_flight: 256,
        }
    }
}

impl FeedSpec {
    /// Whether any feed is on.
    pub fn any(&self) -> bool {
        self.profile || self.changelog
    }
}

/// Why a feed could not start or write. Every variant may pass when retried.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The CQL store refused or did not answer.
    #[error("CQL profile feed, `{statement}`: {message}")]
    Cql {
        /// The statement, shortened.
        statement: String,
        /// The driver's error.
        message: String,
    },
    /// The broker refused or did not answer.
    #[error("changelog feed, topic {topic}: {message}")]
    Kafka {
        /// The topic.
        topic: String,
        /// What failed.
        message: String,
    },
    /// A state could not be read back from its snapshot (a bug, or another declaration).
    #[error("feed: user {user:?}: {message}")]
    State {
        /// The user.
        user: String,
        /// What failed.
        message: String,
    },
}

pub(crate) fn cql_error(statement: &str, e: impl std::fmt::Display) -> FeedError {
    let statement = match statement.char_indices().nth(120) {
        Some((i, _)) => format!("{}...", &statement[..i]),
        None => statement.to_owned(),
    };
    FeedError::Cql { statement, message: e.to_string() }
}

/// What a feed knows of the version it writes.
#[derive(Clone)]
pub struct Version {
    /// Topology name.
    pub topology: String,
    /// Version number.
    pub version: u32,
    /// Consumer group id.
    pub group_id: String,
    /// The version's compiled declaration.
    pub plan: Arc<Plan>,
    /// The process's symbols (the snapshots' names are interned here to read them).
    pub symbols: Symbols,
    /// This process's index and the version's number of processes: each process feeds the users
    /// of its share, so its progress is its own ([`progress`]).
    pub share: (usize, usize),
}

impl Version {
    /// The state a snapshot describes.
    pub fn restore(&self, user: &str, snapshot: &UserSnapshot) -> Result<UserState, FeedError> {
        UserState::restore(snapshot, &self.plan, &self.symbols)
            .map_err(|e| FeedError::State { user: user.to_owned(), message: e.to_string() })
    }
}

/// Where a feed writes: the CQL profile table or the changelog topic.
pub trait Sink: Send + 'static {
    /// `profile` or `changelog`: the feed's name in metrics, status and `feed_progress`.
    fn name(&self) -> &'static str;
    /// Writes `users` (their state at `cut`) durably; all or nothing from the caller's view (a
    /// failed batch is retried whole).
    fn write(&mut self, cut: Epoch, users: &[(String, UserSnapshot)]) -> Result<(), FeedError>;
    /// Records that everything up to `cut` is written.
    fn save_progress(&mut self, cut: Epoch) -> Result<(), FeedError>;
}

/// What `/v1/status` shows of a feed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FeedStatus {
    /// `profile` or `changelog`.
    pub feed: String,
    /// The latest complete cut it holds users of.
    pub latest_cut: Option<Epoch>,
    /// The last cut it wrote.
    pub written_cut: Option<Epoch>,
    /// Epochs (cuts) not yet written.
    pub lag_cuts: u64,
    /// Users waiting to be written.
    pub pending_users: u64,
    /// Seconds it has been failing, if it is.
    pub failing_for_s: Option<f64>,
    /// Its last error, while failing.
    pub last_error: Option<String>,
}

#[derive(Default)]
struct State {
    /// Users of parts whose cut is not complete yet, by cut.
    incomplete: BTreeMap<Epoch, Vec<(String, UserSnapshot)>>,
    /// Local parts seen per cut (cuts complete when all local workers' parts arrived).
    parts: BTreeMap<Epoch, usize>,
    /// Users to write: each with their latest state as of `latest`.
    pending: HashMap<String, UserSnapshot>,
    /// Users of the batch being written.
    in_flight: usize,
    latest: Option<Epoch>,
    written: Option<Epoch>,
    failing_since: Option<Instant>,
    reported: bool,
    last_error: Option<String>,
    stop: bool,
}

struct Shared {
    name: &'static str,
    state: Mutex<State>,
    wake: Condvar,
    /// Complete a cut once this many local parts arrived (no checkpoint store), else `None`.
    complete_on_parts: Option<usize>,
    deadline: Duration,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn complete(&self, s: &mut State, cut: Epoch) {
        if s.latest.is_some_and(|l| l >= cut) {
            return;
        }
        let later = s.incomplete.split_off(&(cut + 1));
        for (_, users) in std::mem::replace(&mut s.incomplete, later) {
            s.pending.extend(users);
        }
        s.parts = s.parts.split_off(&(cut + 1));
        s.latest = Some(cut);
        self.wake.notify_all();
    }
}

/// The feeds of one version in one process.
pub struct Feeds {
    feeds: Vec<Arc<Shared>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// The replica feed, for a version with standbys.
    replica: Option<replica::Replica>,
}

impl Feeds {
    /// Starts a thread per sink. `local_workers`: with `Some(n)` (no checkpoint store) a cut is
    /// complete once the parts of the process's `n` workers arrived; with `None` the checkpoint
    /// writer says so through [`Feeds::complete`]. `written` is each sink's last written cut, as
    /// recorded (see [`progress`]).
    pub fn start(
        sinks: Vec<(Box<dyn Sink>, Option<Epoch>)>,
        local_workers: Option<usize>,
        deadline: Duration,
    ) -> std::io::Result<Feeds> {
        let mut feeds = Vec::new();
        let mut threads = Vec::new();
        for (sink, written) in sinks {
            let shared = Arc::new(Shared {
                name: sink.name(),
                state: Mutex::new(State { written, ..State::default() }),
                wake: Condvar::new(),
                complete_on_parts: local_workers,
                deadline,
            });
            let s = Arc::clone(&shared);
            threads
                .push(std::thread::Builder::new().name(format!("feed-{}", sink.name())).spawn(move || run(s, sink))?);
            feeds.push(shared);
        }
        Ok(Feeds { feeds, threads: Mutex::new(threads), replica: None })
    }

    /// The process is a standby that took over at `cut` ([`replica::Replica::taken_over`]).
    pub fn taken_over(&self, cut: Epoch) {
        if let Some(r) = &self.replica {
            r.taken_over(cut);
        }
    }

    /// The highest cut an answer of a process with standbys may claim
    /// ([`replica::Replica::claimable`]); `None` without the replica feed or before it wrote one.
    pub fn claimable(&self) -> Option<Epoch> {
        self.replica.as_ref().and_then(replica::Replica::claimable)
    }

    /// Adds the replica feed (a version with standbys).
    pub fn with_replica(mut self, replica: replica::Replica) -> Feeds {
        self.replica = Some(replica);
        self
    }

    /// Whether any feed is on.
    pub fn any(&self) -> bool {
        !self.feeds.is_empty() || self.replica.is_some()
    }

    /// Whether a feed that rewrites recovered users (profile, changelog) wrote less than `cut`:
    /// [`Feeds::recovered`] then needs every user's snapshot.
    pub fn behind(&self, cut: Epoch) -> bool {
        self.feeds.iter().any(|f| f.lock().written.is_none_or(|w| w < cut))
    }

    /// A worker's checkpoint part: the users it changed before `part.cut`.
    pub fn part(&self, part: &Part) {
        if let Some(r) = &self.replica {
            r.part(part);
        }
        for f in &self.feeds {
            let mut s = f.lock();
            if s.latest.is_some_and(|l| l >= part.cut) {
                // A part of a cut already complete (recovery resynced it): nothing newer in it.
                continue;
            }
            if !part.users.is_empty() {
                s.incomplete.entry(part.cut).or_default().extend(part.users.iter().cloned());
            }
            if let Some(n) = f.complete_on_parts {
                let seen = s.parts.entry(part.cut).or_default();
                *seen += 1;
                if *seen >= n {
                    f.complete(&mut s, part.cut);
                }
            }
        }
    }

    /// Every part of `cut` is durable.
    pub fn complete(&self, cut: Epoch) {
        if let Some(r) = &self.replica {
            r.complete(cut);
        }
        for f in &self.feeds {
            let mut s = f.lock();
            f.complete(&mut s, cut);
        }
    }

    /// The state was recovered at `cut` with `users` (this process's): every feed that wrote less
    /// than `cut` writes them all again at `cut`.
    pub fn recovered<'a>(&self, cut: Epoch, users: impl IntoIterator<Item = (&'a String, &'a UserSnapshot)> + Clone) {
        if let Some(r) = &self.replica {
            r.recovered(cut);
        }
        for f in &self.feeds {
            let mut s = f.lock();
            if s.written.is_some_and(|w| w >= cut) {
                continue;
            }
            tracing::info!(feed = f.name, cut, written = ?s.written, "feed: writing the recovered users again");
            s.pending.extend(users.clone().into_iter().map(|(u, snap)| (u.clone(), snap.clone())));
            s.latest = Some(cut);
            f.wake.notify_all();
        }
    }

    /// The last cut feed `name` wrote and recorded durably (`feed_progress`), if it is on and
    /// wrote one.
    pub fn written(&self, name: &str) -> Option<Epoch> {
        if name == replica::NAME {
            return self.replica.as_ref().and_then(replica::Replica::written);
        }
        self.feeds.iter().find(|f| f.name == name).and_then(|f| f.lock().written)
    }

    /// Each feed's progress.
    pub fn statuses(&self) -> Vec<FeedStatus> {
        self.feeds
            .iter()
            .map(|f| {
                let s = f.lock();
                FeedStatus {
                    feed: f.name.to_owned(),
                    latest_cut: s.latest,
                    written_cut: s.written,
                    lag_cuts: lag(&s),
                    pending_users: (s.pending.len() + s.in_flight) as u64,
                    failing_for_s: s.failing_since.map(|t| t.elapsed().as_secs_f64()),
                    last_error: s.failing_since.and(s.last_error.clone()),
                }
            })
            .chain(self.replica.as_ref().map(replica::Replica::status))
            .collect()
    }

    /// Writes what is complete (waiting at most `grace`), then stops the feeds.
    pub fn stop(&self, grace: Duration) {
        let until = Instant::now() + grace;
        for f in &self.feeds {
            let mut s = f.lock();
            while !s.pending.is_empty() && s.failing_since.is_none() && Instant::now() < until {
                s = f
                    .wake
                    .wait_timeout(s, Duration::from_millis(50))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            s.stop = true;
            f.wake.notify_all();
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
        if let Some(r) = &self.replica {
            r.stop(until.saturating_duration_since(Instant::now()).max(Duration::from_secs(1)));
        }
    }
}

fn lag(s: &State) -> u64 {
    match (s.latest, s.written) {
        (Some(l), Some(w)) => l.saturating_sub(w),
        (Some(_), None) => 1,
        _ => 0,
    }
}

/// One feed's thread: takes what is pending, writes it, records progress; retries with backoff.
fn run(f: Arc<Shared>, mut sink: Box<dyn Sink>) {
    let counters = FeedCounters::new(f.name);
    let mut backoff = Duration::from_millis(100);
    loop {
        let (batch, cut) = {
            let mut s = f.lock();
            loop {
                counters.lag_cuts.set(lag(&s) as f64);
                if s.stop {
                    return;
                }
                if !s.pending.is_empty() || s.latest > s.written {
                    break;
                }
                s = f.wake.wait_timeout(s, Duration::from_secs(1)).map(|(g, _)| g).unwrap_or_else(|p| p.into_inner().0);
            }
            let Some(cut) = s.latest else { continue };
            let batch: Vec<_> = std::mem::take(&mut s.pending).into_iter().collect();
            s.in_flight = batch.len();
            (batch, cut)
        };
        let started = Instant::now();
        let result =
            if batch.is_empty() { Ok(()) } else { sink.write(cut, &batch) }.and_then(|()| sink.save_progress(cut));
        let mut s = f.lock();
        s.in_flight = 0;
        match result {
            Ok(()) => {
                counters.writes_ok.increment(1);
                counters.users_written.increment(batch.len() as u64);
                if s.reported {
                    tracing::info!(feed = f.name, cut, "feed: writing again");
                }
                s.written = Some(cut);
                s.failing_since = None;
                s.reported = false;
                s.last_error = None;
                counters.failing.set(0.0);
                backoff = Duration::from_millis(100);
                tracing::debug!(
                    feed = f.name,
                    cut,
                    users = batch.len(),
                    seconds = started.elapsed().as_secs_f64(),
                    "feed wrote a cut"
                );
                f.wake.notify_all();
            }
            Err(e) => {
                counters.writes_failed.increment(1);
                // Put the batch back; users changed meanwhile keep their newer state.
                for (user, snapshot) in batch {
                    s.pending.entry(user).or_insert(snapshot);
                }
                let since = *s.failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() > f.deadline && !s.reported {
                    tracing::error!(feed = f.name, error = %e, failing_for = ?since.elapsed(), "feed failing past its deadline; retrying");
                    s.reported = true;
                    counters.failing.set(1.0);
                } else {
                    tracing::warn!(feed = f.name, error = %e, "feed write failed; retrying");
                }
                s.last_error = Some(e.to_string());
                let wait = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                drop(f.wake.wait_timeout(s, wait));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cuts written and the users of each.
    type Written = Arc<Mutex<Vec<(Epoch, Vec<String>)>>>;

    /// A sink that records what it was asked to write and fails while told to.
    #[derive(Clone, Default)]
    struct Recorder {
        writes: Written,
        fail: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Sink for Recorder {
        fn name(&self) -> &'static str {
            "profile"
        }
        fn write(&mut self, cut: Epoch, users: &[(String, UserSnapshot)]) -> Result<(), FeedError> {
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(FeedError::Kafka { topic: "t".into(), message: "down".into() });
            }
            let mut names: Vec<String> = users.iter().map(|(u, _)| u.clone()).collect();
            names.sort();
            self.writes.lock().unwrap().push((cut, names));
            Ok(())
        }
        fn save_progress(&mut self, _cut: Epoch) -> Result<(), FeedError> {
            Ok(())
        }
    }

    fn part(cut: Epoch, worker: usize, users: &[&str]) -> Part {
        let users = users.iter().map(|u| (u.to_string(), UserSnapshot { plan: cut, ..Default::default() })).collect();
        Part { cut, worker, peers: 2, users, ..Default::default() }
    }

    fn wait_written(feeds: &Feeds, cut: Epoch) {
        let until = Instant::now() + Duration::from_secs(10);
        while feeds.statuses()[0].written_cut < Some(cut) {
            assert!(Instant::now() < until, "{:?}", feeds.statuses());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn users_are_written_once_per_complete_cut_and_coalesce_while_failing() {
        let r = Recorder::default();
        let feeds = Feeds::start(vec![(Box::new(r.clone()), None)], None, Duration::from_millis(50)).unwrap();
        feeds.part(&part(1, 0, &["a", "b"]));
        feeds.part(&part(1, 1, &["c"]));
        feeds.part(&part(2, 0, &["a"]));
        // Nothing is written before its cut is complete.
        assert_eq!(feeds.statuses()[0].written_cut, None);
        feeds.complete(1);
        wait_written(&feeds, 1);
        assert_eq!(r.writes.lock().unwrap().clone(), vec![(1, vec!["a".into(), "b".into(), "c".into()])]);
        // The store goes away: cuts 2 and 3 pile up, each user once, and are written together.
        r.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        feeds.complete(2);
        feeds.part(&part(3, 0, &["a", "d"]));
        feeds.complete(3);
        let until = Instant::now() + Duration::from_secs(10);
        while feeds.statuses()[0].failing_for_s.is_none_or(|s| s < 0.06) {
            assert!(Instant::now() < until);
            std::thread::sleep(Duration::from_millis(5));
        }
        let st = feeds.statuses().remove(0);
        assert_eq!((st.lag_cuts, st.pending_users), (2, 2), "{st:?}");
        assert!(st.last_error.is_some_and(|e| e.contains("down")));
        r.fail.store(false, std::sync::atomic::Ordering::SeqCst);
        wait_written(&feeds, 3);
        assert_eq!(r.writes.lock().unwrap()[1], (3, vec!["a".into(), "d".into()]));
        assert_eq!(feeds.statuses()[0].failing_for_s, None);
        feeds.stop(Duration::from_secs(1));
    }

    #[test]
    fn without_checkpoints_a_cut_completes_with_every_local_part_and_recovery_resyncs() {
        let r = Recorder::default();
        let feeds = Feeds::start(vec![(Box::new(r.clone()), Some(4))], Some(2), Duration::from_secs(1)).unwrap();
        let users: HashMap<String, UserSnapshot> =
            [("x".to_owned(), UserSnapshot::default()), ("y".to_owned(), UserSnapshot::default())].into();
        feeds.recovered(7, users.iter());
        wait_written(&feeds, 7);
        feeds.part(&part(8, 0, &["x"]));
        assert_eq!(feeds.statuses()[0].written_cut, Some(7));
        feeds.part(&part(8, 1, &[]));
        wait_written(&feeds, 8);
        assert_eq!(r.writes.lock().unwrap().clone(), vec![(7, vec!["x".into(), "y".into()]), (8, vec!["x".into()])]);
        // A feed that already wrote the recovered cut does not write it again.
        feeds.recovered(8, users.iter());
        feeds.stop(Duration::from_secs(1));
        assert_eq!(r.writes.lock().unwrap().len(), 2);
    }
}
