//! Checkpoints: each worker's state changes, cut at epoch boundaries, written to a
//! [`CheckpointStore`] (a local directory, [`crate::checkpoint_dir::CheckpointDir`], or the CQL
//! store in [`crate::checkpoint_cql`]) together with the source offsets they cover; recovery folds them
//! back, each process reading only the key groups its workers own.
//!
//! # Notes
//! Epochs are dense (every source steps through every epoch number) and every worker writes a
//! part for every cut `c`: the users it changed with events of epochs `< c` since its previous
//! part, the users it expired, the event ids it added to its dedup state (by key group and time
//! bucket), its event-time watermark, and the next offset of each partition it owns after all
//! messages of epochs `< c`. A cut is *complete* when all workers wrote their part; only then are
//! its offsets committed to Kafka. Parts are written in cut order by each process; below a
//! complete cut, only the first cuts of a cluster's life may be incomplete (its processes may
//! begin sealing at different cuts), and a process's writer then reports the complete one.
//!
//! Stores keep a part's users per key group ([`crate::key_groups`]): recovery of a process reads
//! the rows of the key groups its workers cover, takes the latest complete cut, folds per user
//! the newest row up to it (an expired user's row removes the user), restarts the sources at that
//! cut's offsets, and deletes rows beyond it. The layout (processes and workers) may differ from
//! the one that wrote the rows; the number of key groups may not. Compaction costs what changed:
//! a key group's rows are folded into a new base row only once its newer rows add up to a quarter
//! of its base (amortized, each change is rewritten a bounded number of times), and dedup ids go
//! with their time bucket, whole, when it expires.
//!
//! A standby reads the same state without changing anything ([`CheckpointStore::read`]) while the
//! active process writes and compacts; taking over, it [`resume`](CheckpointStore::resume)s the
//! store from the cut its state is at, which deletes what lies beyond that cut as recovery does,
//! without reading the users again.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::attributes::UserSnapshot;
use crate::counters::{Counter, Gauge, Histogram};
use crate::dedup::Fingerprint;
use crate::epoch::Epoch;
use crate::key_groups::KeyGroups;
use crate::partition::Partition;

/// New dedup ids of one key group in one time bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupRun {
    /// The key group of the events' users.
    pub key_group: u32,
    /// The time bucket (`ts / bucket_ms`, rounded down).
    pub bucket: i64,
    /// The ids.
    pub ids: Vec<Fingerprint>,
}

/// One worker's contribution to one cut.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Part {
    /// The cut: the part covers events of epochs `< cut`.
    pub cut: Epoch,
    /// Writing worker.
    pub worker: usize,
    /// Workers of the run that wrote it.
    pub peers: usize,
    /// The version's key groups (`state.key_groups`).
    pub key_groups: KeyGroups,
    /// Users changed since the worker's previous part, with their whole state.
    pub users: Vec<(String, UserSnapshot)>,
    /// Users expired (`state.user_ttl`) since the previous part and not seen again: recovery
    /// forgets them. Disjoint from `users`.
    pub expired: Vec<String>,
    /// Dedup ids added since the previous part, by key group and bucket.
    pub dedup: Vec<DedupRun>,
    /// Event-time milliseconds per dedup bucket (0: deduplication off).
    pub bucket_ms: i64,
    /// The newest event time the worker has applied (`i64::MIN`: none yet).
    pub watermark: i64,
    /// Next offset of each partition the worker owns, at the cut.
    pub offsets: Vec<(Partition, i64)>,
}

impl Default for Part {
    fn default() -> Self {
        Part {
            cut: 0,
            worker: 0,
            peers: 1,
            key_groups: KeyGroups::default(),
            users: Vec::new(),
            expired: Vec::new(),
            dedup: Vec::new(),
            bucket_ms: 0,
            watermark: i64::MIN,
            offsets: Vec::new(),
        }
    }
}

/// The rows of one key group in one part or base: users with their state, or `None` for a user
/// who expired.
pub type UserRows = Vec<(String, Option<UserSnapshot>)>;

impl Part {
    /// Its users and expired users, by key group.
    pub fn rows_by_key_group(&self) -> BTreeMap<u32, UserRows> {
        let mut out: BTreeMap<u32, UserRows> = BTreeMap::new();
        for (user, snapshot) in &self.users {
            out.entry(self.key_groups.of(user)).or_default().push((user.clone(), Some(snapshot.clone())));
        }
        for user in &self.expired {
            out.entry(self.key_groups.of(user)).or_default().push((user.clone(), None));
        }
        out
    }
}

/// Folds `rows` (newer than what `users` holds) into `users`.
pub fn fold_rows(users: &mut HashMap<String, UserSnapshot>, rows: UserRows) {
    for (user, snapshot) in rows {
        match snapshot {
            Some(s) => {
                users.insert(user, s);
            }
            None => {
                users.remove(&user);
            }
        }
    }
}

/// What a process reads back: the state of the key groups it covers at the latest complete cut.
#[derive(Debug)]
pub struct Recovered {
    /// The cut.
    pub cut: Epoch,
    /// The users of the key groups read (the process's workers' users, plus the neighbours' in a
    /// key group shared at a boundary).
    pub users: HashMap<String, UserSnapshot>,
    /// Retained dedup ids of those key groups.
    pub dedup: Vec<DedupRun>,
    /// Event-time milliseconds per dedup bucket when they were written (0: none).
    pub bucket_ms: i64,
    /// The newest event time any worker had applied at the cut.
    pub watermark: i64,
    /// Next offset of every partition.
    pub offsets: BTreeMap<Partition, i64>,
    /// Bytes read from the store.
    pub bytes_read: u64,
}

impl Default for Recovered {
    fn default() -> Self {
        Recovered {
            cut: 0,
            users: HashMap::new(),
            dedup: Vec::new(),
            bucket_ms: 0,
            watermark: i64::MIN,
            offsets: BTreeMap::new(),
            bytes_read: 0,
        }
    }
}

/// Which part of a version's checkpoints a process is responsible for (in recovery and
/// compaction).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveryScope {
    /// The version's key groups.
    pub key_groups: KeyGroups,
    /// Workers of every process.
    pub peers: usize,
    /// This process's workers.
    pub local: Range<usize>,
    /// Whether this process tidies what belongs to no key group (part rows of incomplete cuts,
    /// a directory store's files): process 0 of a version.
    pub tidy: bool,
}

impl RecoveryScope {
    /// One process with every worker.
    pub fn single(key_groups: KeyGroups, workers: usize) -> Self {
        RecoveryScope { key_groups, peers: workers, local: 0..workers, tidy: true }
    }

    /// The key groups this process reads: those its workers cover.
    pub fn reads(&self) -> Range<u32> {
        self.key_groups.covering(self.local.clone(), self.peers)
    }

    /// Whether this process compacts key group `group`.
    pub fn compacts(&self, group: u32) -> bool {
        self.local.contains(&self.key_groups.compactor(group, self.peers))
    }
}

/// Why a checkpoint could not be written, read or compacted. Every variant but
/// [`KeyGroups`](Self::KeyGroups) and [`NotLatest`](Self::NotLatest) may succeed when retried once
/// the store is back (the writer retries with backoff); at start-up it stops squall.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Local disk.
    #[error("checkpoint directory {dir}: {source}")]
    Io {
        /// The directory.
        dir: String,
        /// The error.
        source: io::Error,
    },
    /// The CQL store refused or did not answer a statement.
    #[error("CQL checkpoint store, `{statement}`: {message} (is the CQL store up and the keyspace created?)")]
    Cql {
        /// The statement, shortened.
        statement: String,
        /// The driver's error.
        message: String,
    },
    /// A stored part or row cannot be decoded: written by an incompatible squall, or damaged.
    #[error("checkpoint data {what} cannot be decoded: {message}")]
    Corrupt {
        /// Which part or row.
        what: String,
        /// The decoder's error.
        message: String,
    },
    /// The checkpoints were written with another number of key groups.
    #[error(
        "the checkpoints were written with state.key_groups = {written}, the topology says {configured}; \
         it is fixed for a version's life: set it back, or deploy a new version"
    )]
    KeyGroups {
        /// What the checkpoints say.
        written: u32,
        /// What the topology says.
        configured: u32,
    },
    /// [`CheckpointStore::resume`] was asked to continue from a cut that is not the latest
    /// complete one: the state held is older (or newer) than what the checkpoints say.
    #[error("the state held is at cut {cut} but the latest complete checkpoint is {latest:?}; recover instead")]
    NotLatest {
        /// The cut of the state held.
        cut: Epoch,
        /// The latest complete cut in the store.
        latest: Option<Epoch>,
    },
    /// A compaction by another process changed the rows while [`CheckpointStore::read`] read
    /// them, more often than it reads again: a new read will see the compacted rows.
    #[error("a compaction changed the checkpoints while they were read ({what}); read again")]
    Compacted {
        /// What changed.
        what: String,
    },
}

impl From<crate::cql_schema::CqlStatementError> for CheckpointError {
    fn from(e: crate::cql_schema::CqlStatementError) -> Self {
        CheckpointError::Cql { statement: e.statement, message: e.message }
    }
}

/// Where checkpoint parts go: a directory ([`crate::checkpoint_dir::CheckpointDir`]) or the CQL store
/// ([`crate::checkpoint_cql::CqlCheckpoints`]). Both keep the semantics in the module notes.
pub trait CheckpointStore: Send + 'static {
    /// Where the parts are, for logs.
    fn location(&self) -> String;
    /// Writes `parts` durably (they survive a crash of this process once this returns), each
    /// worker's in cut order; the bytes written.
    fn write_parts(&mut self, parts: &[Part]) -> Result<u64, CheckpointError>;
    /// Writes one part.
    fn write_part(&mut self, part: &Part) -> Result<u64, CheckpointError> {
        self.write_parts(std::slice::from_ref(part))
    }
    /// Reads the key groups `scope` covers at the latest complete cut, and deletes what lies
    /// beyond it (rows of cuts that never completed) among what `scope` tidies or compacts.
    /// `None` when no cut is complete. Sets the scope for later compactions.
    fn recover(&mut self, scope: &RecoveryScope) -> Result<Option<Recovered>, CheckpointError>;
    /// Reads the key groups `scope` covers at the latest complete cut, as `recover` does, but
    /// changes nothing: no deletes, and the store's scope and compaction bookkeeping are left as
    /// they were. For a standby that bootstraps while the active process writes and compacts: a
    /// compaction seen half done still folds to the state at the cut returned, and one that
    /// removes what the read needs makes it read again (or fail, when that keeps happening).
    fn read(&mut self, scope: &RecoveryScope) -> Result<Option<Recovered>, CheckpointError>;
    /// The latest complete cut, if any; reads no users or ids.
    fn latest_complete(&mut self) -> Result<Option<Epoch>, CheckpointError>;
    /// Makes the store ready for a writer that continues from `cut`, whose state the caller
    /// already holds (a standby taking over), without reading any user or dedup-id blob: deletes
    /// what lies beyond `cut` among what `scope` tidies or compacts, exactly as `recover` does for
    /// rows of cuts that never completed, and sets the scope for later compactions. The
    /// compaction bookkeeping `recover` builds from the rows it reads is rebuilt by the first
    /// `compact` after it (which may read rows, on the checkpoint writer's thread). Errs with
    /// [`CheckpointError::NotLatest`] if `cut` is not the latest complete cut; then nothing was
    /// changed.
    fn resume(&mut self, scope: &RecoveryScope, cut: Epoch) -> Result<(), CheckpointError>;
    /// Whether the parts of all `peers` workers (of every process) of `cut` are durable.
    fn is_complete(&mut self, cut: Epoch, peers: usize) -> Result<bool, CheckpointError>;
    /// Folds, among what the scope compacts, what precedes the latest complete cut where that
    /// pays (see the module notes) and removes what that makes redundant, with the dedup buckets
    /// older than `dedup_horizon_ms` behind the newest event. Safe at any crash point. The cut
    /// compacted and the number of rows or files removed.
    fn compact(&mut self, dedup_horizon_ms: i64) -> Result<Option<(Epoch, usize)>, CheckpointError>;
}

/// Starts the thread that writes the parts of `peers` workers to `store` and calls `on_complete`
/// with each cut's offsets once all its parts are durable; every `compact_every` complete cuts it
/// compacts the store. Parts that queue while a write is in flight are written together at the
/// next one, so a long write (a first checkpoint of every user) holds later cuts back by no more
/// than one more write. A failed write is retried with backoff (100 ms doubling to 5 s) until it
/// succeeds: a cut's offsets are never reported before its parts are durable. The thread ends
/// when every sender is dropped.
pub fn spawn_writer(
    mut store: Box<dyn CheckpointStore>,
    group_id: String,
    layout: Layout,
    compact_every: usize,
    dedup_horizon_ms: i64,
    mut on_complete: impl FnMut(Epoch, &[(Partition, i64)]) + Send + 'static,
) -> (crossbeam_channel::Sender<Part>, std::thread::JoinHandle<()>) {
    let (tx, rx) = crossbeam_channel::unbounded::<Part>();
    let handle = std::thread::Builder::new()
        .name(format!("checkpoint-{group_id}"))
        .spawn(move || {
            let (duration, size, completed, errors, queued, compaction) = crate::counters::checkpoint(&group_id);
            // Cuts whose local parts are not all written yet: (parts written, offsets).
            let mut waiting: BTreeMap<Epoch, (usize, Vec<(Partition, i64)>)> = BTreeMap::new();
            // Cuts whose local parts are durable, waiting for the other processes' parts.
            let mut local_done: BTreeMap<Epoch, Vec<(Partition, i64)>> = BTreeMap::new();
            let mut since_compaction = 0usize;
            loop {
                let next = if local_done.is_empty() {
                    rx.recv().ok()
                } else {
                    match rx.recv_timeout(std::time::Duration::from_millis(50)) {
                        Ok(part) => Some(part),
                        Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
                        Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                    }
                };
                // Without a new part (a timeout), check again whether the other processes have finished.
                if next.is_none() && local_done.is_empty() {
                    break;
                }
                if let Some(first) = next {
                    // Everything queued behind it goes in the same write.
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter().take(MAX_BATCH - 1));
                    queued.set(rx.len() as f64);
                    let started = std::time::Instant::now();
                    let bytes = write_with_retry(&mut *store, &batch, &group_id, &errors);
                    duration.record(started.elapsed().as_secs_f64());
                    size.increment(bytes);
                    for part in batch {
                        let entry = waiting.entry(part.cut).or_insert((0, Vec::new()));
                        entry.0 += 1;
                        entry.1.extend(part.offsets);
                        if entry.0 == layout.local {
                            let (_, offsets) = waiting.remove(&part.cut).expect("present");
                            local_done.insert(part.cut, offsets);
                        }
                    }
                }
                report_complete(
                    &mut local_done,
                    &mut *store,
                    &layout,
                    &mut on_complete,
                    &completed,
                    &errors,
                    &group_id,
                    &mut since_compaction,
                );
                if layout.compacts && since_compaction >= compact_every.max(1) {
                    since_compaction = 0;
                    compact(&mut *store, dedup_horizon_ms, &group_id, &compaction, &errors);
                }
            }
        })
        .expect("spawn the checkpoint writer");
    (tx, handle)
}

/// Parts written together at most.
const MAX_BATCH: usize = 256;

/// Who writes a version's checkpoints: this process's workers, all workers, and whether this
/// process compacts (each compacts the key groups it owns; process 0 also what belongs to none).
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// Workers of this process (parts this writer receives per cut).
    pub local: usize,
    /// Workers of every process (parts that make a cut complete).
    pub global: usize,
    /// Whether this writer compacts the store.
    pub compacts: bool,
}

impl Layout {
    /// One process with `workers` workers.
    pub fn single(workers: usize) -> Self {
        Layout { local: workers, global: workers, compacts: true }
    }
}

/// Writes `parts`, retrying with backoff (100 ms doubling to 5 s) until they are durable; their bytes.
fn write_with_retry(store: &mut dyn CheckpointStore, parts: &[Part], group_id: &str, errors: &Counter) -> u64 {
    let mut backoff = std::time::Duration::from_millis(100);
    loop {
        match store.write_parts(parts) {
            Ok(bytes) => return bytes,
            Err(e) => {
                errors.increment(1);
                let (first, last) = (parts[0].cut, parts[parts.len() - 1].cut);
                tracing::error!(group_id = %group_id, first, last, parts = parts.len(), error = %e, retry_in = ?backoff, "cannot write checkpoint parts; retrying");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
            }
        }
    }
}

/// Reports, oldest first, the cuts of `local_done` that are complete in every process.
#[allow(clippy::too_many_arguments)]
fn report_complete(
    local_done: &mut BTreeMap<Epoch, Vec<(Partition, i64)>>,
    store: &mut dyn CheckpointStore,
    layout: &Layout,
    on_complete: &mut impl FnMut(Epoch, &[(Partition, i64)]),
    completed: &Gauge,
    errors: &Counter,
    group_id: &str,
    since_compaction: &mut usize,
) {
    while let Some((&cut, _)) = local_done.first_key_value() {
        let complete = layout.global == layout.local || store.is_complete(cut, layout.global).unwrap_or_else(|e| {
            errors.increment(1);
            tracing::warn!(group_id = %group_id, cut, error = %e, "cannot check whether the cut is complete; retrying");
            false
        });
        if !complete {
            // A cut only this process wrote parts of never completes: at start, the processes of
            // a cluster may begin sealing at different cuts (each worker's first cut is the first
            // frontier it sees). A later complete cut supersedes it (recovery folds each user's
            // newest row up to the latest complete cut), so report that one instead of waiting.
            let Some((&newest, _)) = local_done.last_key_value() else { return };
            if newest == cut || !store.is_complete(newest, layout.global).unwrap_or(false) {
                return;
            }
            let skipped: Vec<Epoch> = local_done.range(..newest).map(|(c, _)| *c).collect();
            tracing::info!(group_id = %group_id, newest, skipped = ?skipped, "cuts other processes wrote no parts of are superseded by a complete cut");
            let offsets = local_done.remove(&newest).expect("present");
            local_done.clear();
            completed.set(newest as f64);
            on_complete(newest, &offsets);
            *since_compaction += 1;
            return;
        }
        let offsets = local_done.remove(&cut).expect("present");
        completed.set(cut as f64);
        on_complete(cut, &offsets);
        *since_compaction += 1;
    }
}

fn compact(
    store: &mut dyn CheckpointStore,
    dedup_horizon_ms: i64,
    group_id: &str,
    compaction: &Histogram,
    errors: &Counter,
) {
    let started = std::time::Instant::now();
    match store.compact(dedup_horizon_ms) {
        Ok(Some((cut, removed))) => {
            compaction.record(started.elapsed().as_secs_f64());
            tracing::info!(group_id = %group_id, cut, removed, elapsed = ?started.elapsed(), "compacted checkpoints")
        }
        Ok(None) => {}
        Err(e) => {
            errors.increment(1);
            tracing::warn!(group_id = %group_id, error = %e, "checkpoint compaction failed; the next one will retry")
        }
    }
}

/// The oldest live dedup bucket at `watermark` for a horizon of `horizon_ms` and buckets of
/// `bucket_ms` (`i64::MIN` when nothing expires).
pub fn oldest_live_bucket(watermark: i64, horizon_ms: i64, bucket_ms: i64) -> i64 {
    if watermark == i64::MIN || horizon_ms <= 0 || bucket_ms <= 0 {
        return i64::MIN;
    }
    watermark.saturating_sub(horizon_ms).div_euclid(bucket_ms)
}

/// Rebase a key group once its rows newer than the base add up to this share of the base...
const REBASE_SHARE: u64 = 4;
/// ...and at least this many bytes (small groups are not rewritten for every few changes).
const REBASE_MIN_BYTES: u64 = 32 * 1024;

/// A compaction rebases (rewrites) at most this many times the bytes that changed since the
/// previous one (and at least one key group or segment), so that it holds the writer up in
/// proportion to what changed; rebasing needs `REBASE_SHARE + 1` times the changes to keep up.
const REBASE_BUDGET: u64 = 8;

/// Whether a key group (or segment) with `base` bytes in its base and `newer` bytes in rows newer
/// than the base should be folded into a new base: amortized, every byte is rewritten at most
/// `REBASE_SHARE + 1` times.
fn rebase_pays(base: u64, newer: u64) -> bool {
    newer >= REBASE_MIN_BYTES.max(base / REBASE_SHARE)
}

/// A unit of compaction that may be folded into a new base: a CQL key group or a directory
/// segment.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RebaseCandidate<K> {
    /// Which key group or segment.
    pub key: K,
    /// Bytes of its base (or of its oldest row or file, when it has no base yet).
    pub base: u64,
    /// Bytes of what is newer than the base.
    pub newer: u64,
    /// Rebased whatever the budget (a directory segment at its last allowed delta file).
    pub forced: bool,
}

/// The one rebase rule both stores follow: which of `candidates` a compaction rebases, given the
/// bytes `changed` since the previous compaction. Those whose newer rows outweigh a quarter of
/// their base (and [`REBASE_MIN_BYTES`]) are due, and the forced ones; the forced go first, then
/// the most overdue (newer / base); the forced and the first are always taken, the others while
/// [`REBASE_BUDGET`] times `changed` lasts (so that no compaction holds the writer up for longer
/// than its changes warrant).
pub(crate) fn due_for_rebase<K>(candidates: impl IntoIterator<Item = RebaseCandidate<K>>, changed: u64) -> Vec<K> {
    let mut due: Vec<(bool, f64, K, u64)> = candidates
        .into_iter()
        .filter(|c| c.forced || rebase_pays(c.base, c.newer))
        .map(|c| (c.forced, c.newer as f64 / c.base.max(1) as f64, c.key, c.base + c.newer))
        .collect();
    due.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.total_cmp(&a.1)));
    let mut budget = REBASE_BUDGET * changed;
    let mut out = Vec::new();
    for (i, (forced, _, key, size)) in due.into_iter().enumerate() {
        if !forced && i > 0 && budget == 0 {
            break;
        }
        budget = budget.saturating_sub(size);
        out.push(key);
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A user's state as checkpoints keep it; the store treats it as opaque, so any words do.
    pub fn snapshot(plays: usize) -> UserSnapshot {
        UserSnapshot { plan: 7, words: vec![plays as u32, 1, 2], names: vec!["rock".into()] }
    }

    /// Asserts that two folds give the same state (all but the bytes read).
    pub fn assert_same_state(a: &Recovered, b: &Recovered) {
        assert_eq!((a.cut, a.bucket_ms, a.watermark, &a.offsets), (b.cut, b.bucket_ms, b.watermark, &b.offsets));
        assert_eq!(a.users, b.users, "users at cut {}", a.cut);
        assert_eq!(a.dedup, b.dedup, "dedup ids at cut {}", a.cut);
    }

    pub fn id(n: u64) -> Fingerprint {
        Fingerprint { hi: n.wrapping_mul(0x9E37_79B9_7F4A_7C15), lo: n as u16 }
    }

    /// A part of 2 workers, K = 64; each carries one dedup id in bucket `cut`.
    pub fn p(cut: Epoch, worker: usize, users: &[(&str, usize)], offset: i64) -> Part {
        let key_groups = KeyGroups::new(64).unwrap();
        let kg = key_groups.of(users.first().map_or("x", |u| u.0));
        Part {
            cut,
            worker,
            peers: 2,
            key_groups,
            users: users.iter().map(|(u, n)| (u.to_string(), snapshot(*n))).collect(),
            dedup: vec![DedupRun { key_group: kg, bucket: cut as i64, ids: vec![id(cut * 10 + worker as u64)] }],
            bucket_ms: 1000,
            watermark: cut as i64 * 1000,
            offsets: vec![(Partition { topic: "t".into(), partition: worker as i32 }, offset)],
            ..Default::default()
        }
    }

    #[test]
    fn rows_by_key_group_carry_expired_users_as_none() {
        let mut part = p(1, 0, &[("a", 1), ("b", 2)], 0);
        part.expired = vec!["c".into()];
        let rows = part.rows_by_key_group();
        let mut all: Vec<_> = rows.values().flatten().cloned().collect();
        all.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(all, vec![("a".into(), Some(snapshot(1))), ("b".into(), Some(snapshot(2))), ("c".into(), None)]);
        let mut users = HashMap::from([("c".to_string(), snapshot(9))]);
        for (_, r) in rows {
            fold_rows(&mut users, r);
        }
        assert_eq!(users.len(), 2);
    }

    #[test]
    fn a_process_that_began_sealing_first_reports_the_first_complete_cut() {
        let root = std::env::temp_dir().join(format!("squall-writers-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let layout = Layout { local: 1, global: 2, compacts: false };
        let writer = |name: &'static str| {
            let store = crate::checkpoint_dir::CheckpointDir::open(&root, "g").expect("store");
            let (tx, rx) = crossbeam_channel::unbounded();
            let (parts, thread) = spawn_writer(Box::new(store), name.into(), layout, 1000, 0, move |cut, _: &[_]| {
                let _ = tx.send(cut);
            });
            (parts, thread, rx)
        };
        let (early, early_thread, early_done) = writer("early");
        let (late, late_thread, late_done) = writer("late");
        // Process 0 saw the frontier first: parts for cuts 1 and 2, which process 1 never writes.
        for cut in [1, 2] {
            early.send(p(cut, 0, &[("a", cut as usize)], cut as i64)).expect("send");
        }
        for cut in [3, 4] {
            early.send(p(cut, 0, &[("a", cut as usize)], cut as i64)).expect("send");
            late.send(p(cut, 1, &[("b", cut as usize)], cut as i64)).expect("send");
        }
        let wait = std::time::Duration::from_secs(10);
        assert_eq!(late_done.recv_timeout(wait), Ok(3));
        assert_eq!(late_done.recv_timeout(wait), Ok(4));
        // The early process does not wait forever on cuts 1 and 2: it reports 3 (superseding
        // them) or, if 4 was written by then, 4; either way it reaches 4.
        let first = early_done.recv_timeout(wait).expect("a complete cut");
        assert!(first == 3 || first == 4, "{first}");
        if first == 3 {
            assert_eq!(early_done.recv_timeout(wait), Ok(4));
        }
        drop((early, late));
        early_thread.join().expect("writer");
        late_thread.join().expect("writer");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn rebasing_pays_after_a_quarter_of_the_base() {
        assert!(!rebase_pays(1 << 20, (1 << 18) - 1));
        assert!(rebase_pays(1 << 20, 1 << 18));
        assert!(!rebase_pays(100, 1000), "small groups wait for REBASE_MIN_BYTES");
        let c = |key: u32, base: u64, newer: u64, forced: bool| RebaseCandidate { key, base, newer, forced };
        // Most overdue first; the first is taken even with nothing changed, the rest while the budget lasts.
        let groups = [c(1, 1 << 20, 1 << 18, false), c(2, 1 << 20, 1 << 19, false), c(3, 1 << 20, 1, false)];
        assert_eq!(due_for_rebase(groups, 0), vec![2]);
        assert_eq!(due_for_rebase(groups, 1 << 17), vec![2]);
        assert_eq!(due_for_rebase(groups, 1 << 18), vec![2, 1]);
        // The forced go first and whatever the budget.
        let segments = [c(1, 1 << 20, 1 << 19, false), c(2, 1 << 20, 1, true), c(3, 1 << 20, 1, true)];
        assert_eq!(due_for_rebase(segments, 0), vec![2, 3]);
        assert_eq!(oldest_live_bucket(10_000, 4_000, 500), 12);
        assert_eq!(oldest_live_bucket(i64::MIN, 4_000, 500), i64::MIN);
    }
}
