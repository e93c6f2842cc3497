//! Checkpoints: each worker's state changes, cut at epoch boundaries, written to a
//! [`CheckpointStore`] (a local directory here, or the CQL store in [`crate::checkpoint_cql`])
//! together with the source offsets they cover; recovery folds them back.
//!
//! # Notes
//! Epochs are dense (every source steps through every epoch number) and every worker writes a
//! part for every cut `c`: the users it changed with events of epochs `< c` since its previous
//! part, the event ids it added to its dedup state, and the next offset of each partition it owns
//! after all messages of epochs `< c`. A cut is *complete* when all workers wrote their part; only
//! then are its offsets committed to Kafka. Recovery takes the latest complete cut, folds every
//! part up to it in cut order (a user's latest snapshot wins, dedup ids accumulate), restarts the
//! sources at that cut's offsets, and deletes parts beyond it. A part's size is proportional to
//! what changed in its epoch, not to the whole state.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::plan::UserSnapshot;
use crate::source::{Epoch, Partition};

/// One worker's contribution to one cut.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Part {
    /// The cut: the part covers events of epochs `< cut`.
    pub cut: Epoch,
    /// Writing worker.
    pub worker: usize,
    /// Workers of the run that wrote it.
    pub peers: usize,
    /// Users changed since the worker's previous part, with their whole state.
    pub users: Vec<(String, UserSnapshot)>,
    /// Dedup ids added since the previous part: (user hash, key, event ts).
    pub dedup: Vec<(u64, u128, i64)>,
    /// Next offset of each partition the worker owns, at the cut.
    pub offsets: Vec<(Partition, i64)>,
}

/// The state at the latest complete cut.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The cut.
    pub cut: Epoch,
    /// Every user's state.
    pub users: HashMap<String, UserSnapshot>,
    /// Every dedup id: (user hash, key, event ts).
    pub dedup: Vec<(u64, u128, i64)>,
    /// Next offset of every partition.
    pub offsets: BTreeMap<Partition, i64>,
}

/// Why a checkpoint could not be written, read or compacted. Every variant may succeed when
/// retried once the store is back (the writer retries with backoff); at start-up it stops squall.
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
}

/// Where checkpoint parts go: a directory ([`CheckpointDir`]) or the CQL store
/// ([`crate::checkpoint_cql::CqlCheckpoints`]). Both keep the semantics in the module notes.
pub trait CheckpointStore: Send + 'static {
    /// Where the parts are, for logs.
    fn location(&self) -> String;
    /// Writes `part` durably (it survives a crash of this process once this returns); the bytes written.
    fn write_part(&mut self, part: &Part) -> Result<u64, CheckpointError>;
    /// Folds every part up to the latest complete cut and deletes what lies beyond it (parts of
    /// cuts that never completed). `None` when no cut is complete.
    fn recover(&mut self) -> Result<Option<Recovered>, CheckpointError>;
    /// Folds every part up to the latest complete cut and changes nothing: what the processes of a
    /// multi-process version other than process 0 do while process 0 runs [`recover`](Self::recover).
    fn recover_shared(&mut self) -> Result<Option<Recovered>, CheckpointError>;
    /// Whether the parts of all `peers` workers (of every process) of `cut` are durable.
    fn is_complete(&mut self, cut: Epoch, peers: usize) -> Result<bool, CheckpointError>;
    /// Folds what precedes the latest complete cut into it and removes what that makes
    /// redundant; dedup ids older than `dedup_horizon_ms` behind the newest are dropped. Safe at
    /// any crash point. The cut compacted and the number of parts or rows removed.
    fn compact(&mut self, dedup_horizon_ms: i64) -> Result<Option<(Epoch, usize)>, CheckpointError>;
}

/// A version's checkpoint directory: `<root>/<group_id>/`.
#[derive(Clone, Debug)]
pub struct CheckpointDir {
    dir: PathBuf,
}

/// A part file on disk: (cut, worker, path).
type PartFile = (Epoch, usize, PathBuf);

fn part_name(cut: Epoch, worker: usize) -> String {
    format!("{cut:020}-w{worker:04}.part")
}

fn parse_part_name(name: &str) -> Option<(Epoch, usize)> {
    let stem = name.strip_suffix(".part")?;
    let (cut, worker) = stem.split_once("-w")?;
    Some((cut.parse().ok()?, worker.parse().ok()?))
}

impl CheckpointDir {
    /// Opens (creating) the directory of `group_id` under `root`.
    pub fn open(root: &Path, group_id: &str) -> io::Result<Self> {
        let dir = root.join(group_id);
        fs::create_dir_all(&dir)?;
        Ok(CheckpointDir { dir })
    }

    /// Where the parts are.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn error(&self, source: io::Error) -> CheckpointError {
        CheckpointError::Io { dir: self.dir.display().to_string(), source }
    }

    /// Writes a part durably (temporary file, fsync, rename, fsync of the directory); its size in bytes.
    pub fn write_part(&self, part: &Part) -> io::Result<u64> {
        let bytes = bincode::serialize(part).map_err(io::Error::other)?;
        let name = part_name(part.cut, part.worker);
        let tmp = self.dir.join(format!("{name}.tmp"));
        {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, self.dir.join(&name))?;
        fs::File::open(&self.dir)?.sync_all()?;
        Ok(bytes.len() as u64)
    }

    /// Every part file: (cut, worker, path), sorted by cut then worker.
    fn parts(&self) -> io::Result<Vec<PartFile>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            if let Some((cut, worker)) = entry.file_name().to_str().and_then(parse_part_name) {
                out.push((cut, worker, entry.path()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Whether all `peers` parts of `cut` are written.
    pub fn is_complete(&self, cut: Epoch, peers: usize) -> bool {
        (0..peers).all(|w| self.dir.join(part_name(cut, w)).is_file())
    }

    /// Reads every part and folds those up to the latest complete cut. `None` when no cut is complete.
    fn fold(&self) -> io::Result<Option<(Recovered, Vec<PartFile>)>> {
        let parts = self.parts()?;
        let mut read: Vec<Part> = Vec::with_capacity(parts.len());
        for (_, _, path) in &parts {
            let bytes = match fs::read(path) {
                Ok(b) => b,
                // Deleted since the listing by another process's recovery: a part of a cut that
                // never completed, so not part of the fold.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let part: Part = bincode::deserialize(&bytes)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display())))?;
            read.push(part);
        }
        let mut by_cut: BTreeMap<Epoch, (usize, usize)> = BTreeMap::new();
        for p in &read {
            let e = by_cut.entry(p.cut).or_insert((0, p.peers));
            e.0 += 1;
        }
        let Some(latest) = by_cut.iter().rev().find(|(_, (n, peers))| n == peers).map(|(c, _)| *c) else {
            return Ok(None);
        };
        let mut rec = Recovered { cut: latest, ..Default::default() };
        for part in read {
            if part.cut > latest {
                continue;
            }
            rec.users.extend(part.users);
            rec.dedup.extend(part.dedup);
            if part.cut == latest {
                rec.offsets.extend(part.offsets);
            }
        }
        Ok(Some((rec, parts)))
    }

    /// Folds every part up to the latest complete cut; deletes the parts after it (they belong to
    /// cuts that never completed). `None` when there is no complete cut.
    pub fn recover(&self) -> io::Result<Option<Recovered>> {
        let Some((rec, parts)) = self.fold()? else {
            // No cut ever completed: these parts can never be recovered, and a later complete cut
            // must not fold them in.
            for (_, _, path) in self.parts()? {
                fs::remove_file(path)?;
            }
            return Ok(None);
        };
        for (cut, _, path) in parts {
            if cut > rec.cut {
                fs::remove_file(path)?;
            }
        }
        Ok(Some(rec))
    }

    /// Replaces every part up to the latest complete cut `c` by one part of `c` holding the whole
    /// state (dedup ids older than `dedup_horizon_ms` behind the newest dropped), then deletes the
    /// older parts. Safe at any crash point: until the deletions, the older parts fold to the same
    /// state. Returns the cut compacted and the parts removed.
    pub fn compact(&self, dedup_horizon_ms: i64) -> io::Result<Option<(Epoch, usize)>> {
        let Some((rec, parts)) = self.fold()? else { return Ok(None) };
        let peers = parts.iter().filter(|(c, _, _)| *c == rec.cut).count();
        let newest = rec.dedup.iter().map(|d| d.2).max().unwrap_or(i64::MIN);
        let cutoff = if dedup_horizon_ms <= 0 { i64::MAX } else { newest.saturating_sub(dedup_horizon_ms) };
        let mut whole = Part {
            cut: rec.cut,
            worker: 0,
            peers,
            users: rec.users.into_iter().collect(),
            dedup: rec.dedup.into_iter().filter(|d| d.2 >= cutoff).collect(),
            offsets: rec.offsets.into_iter().collect(),
        };
        self.write_part(&whole)?;
        for worker in 1..peers {
            whole = Part { cut: rec.cut, worker, peers, ..Default::default() };
            self.write_part(&whole)?;
        }
        let mut removed = 0;
        for (cut, _, path) in parts {
            if cut < rec.cut {
                fs::remove_file(path)?;
                removed += 1;
            }
        }
        Ok(Some((rec.cut, removed)))
    }
}

impl CheckpointStore for CheckpointDir {
    fn location(&self) -> String {
        self.dir.display().to_string()
    }

    fn write_part(&mut self, part: &Part) -> Result<u64, CheckpointError> {
        CheckpointDir::write_part(self, part).map_err(|source| self.error(source))
    }

    fn recover(&mut self) -> Result<Option<Recovered>, CheckpointError> {
        CheckpointDir::recover(self).map_err(|source| self.error(source))
    }

    fn recover_shared(&mut self) -> Result<Option<Recovered>, CheckpointError> {
        Ok(self.fold().map_err(|source| self.error(source))?.map(|(rec, _)| rec))
    }

    fn is_complete(&mut self, cut: Epoch, peers: usize) -> Result<bool, CheckpointError> {
        Ok(CheckpointDir::is_complete(self, cut, peers))
    }

    fn compact(&mut self, dedup_horizon_ms: i64) -> Result<Option<(Epoch, usize)>, CheckpointError> {
        CheckpointDir::compact(self, dedup_horizon_ms).map_err(|source| self.error(source))
    }
}

/// Starts the thread that writes the parts of `peers` workers to `store` and calls `on_complete`
/// with each cut's offsets once all its parts are durable; every `compact_every` complete cuts it
/// compacts the store. A failed write is retried with backoff (100 ms doubling to 5 s) until it
/// succeeds: a cut's offsets are never reported before its parts are durable. The thread ends when
/// every sender is dropped.
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
            let g = group_id.clone();
            let duration = metrics::histogram!("squall_checkpoint_write_seconds", "group_id" => g.clone());
            let size = metrics::counter!("squall_checkpoint_bytes_total", "group_id" => g.clone());
            let completed = metrics::gauge!("squall_checkpoint_last_complete_cut", "group_id" => g.clone());
            let errors = metrics::counter!("squall_checkpoint_errors_total", "group_id" => g.clone());
            let queued = metrics::gauge!("squall_checkpoint_parts_queued", "group_id" => g.clone());
            let compaction = metrics::histogram!("squall_checkpoint_compaction_seconds", "group_id" => g);
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
                if let Some(part) = next {
                    queued.set(rx.len() as f64);
                    let started = std::time::Instant::now();
                    let bytes = write_with_retry(&mut *store, &part, &group_id, &errors);
                    duration.record(started.elapsed().as_secs_f64());
                    size.increment(bytes);
                    let entry = waiting.entry(part.cut).or_insert((0, Vec::new()));
                    entry.0 += 1;
                    entry.1.extend(part.offsets);
                    if entry.0 == layout.local {
                        let (_, offsets) = waiting.remove(&part.cut).expect("present");
                        local_done.insert(part.cut, offsets);
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

/// Who writes a version's checkpoints: this process's workers, all workers, and whether this
/// process compacts (one process of a multi-process version does).
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

/// Writes `part`, retrying with backoff (100 ms doubling to 5 s) until it is durable; its bytes.
fn write_with_retry(store: &mut dyn CheckpointStore, part: &Part, group_id: &str, errors: &metrics::Counter) -> u64 {
    let mut backoff = std::time::Duration::from_millis(100);
    loop {
        match store.write_part(part) {
            Ok(bytes) => return bytes,
            Err(e) => {
                errors.increment(1);
                tracing::error!(group_id = %group_id, cut = part.cut, worker = part.worker, error = %e, retry_in = ?backoff, "cannot write checkpoint part; retrying");
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
    completed: &metrics::Gauge,
    errors: &metrics::Counter,
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
    compaction: &metrics::Histogram,
    errors: &metrics::Counter,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A user's state as checkpoints keep it; the store treats it as opaque, so any words do.
    fn snapshot(plays: usize) -> UserSnapshot {
        UserSnapshot { plan: 7, words: vec![plays as u32, 1, 2], names: vec!["rock".into()] }
    }

    fn p(cut: Epoch, worker: usize, users: &[(&str, usize)], offset: i64) -> Part {
        Part {
            cut,
            worker,
            peers: 2,
            users: users.iter().map(|(u, n)| (u.to_string(), snapshot(*n))).collect(),
            dedup: vec![(worker as u64, cut as u128, 0)],
            offsets: vec![(Partition { topic: "t".into(), partition: worker as i32 }, offset)],
        }
    }

    #[test]
    fn recovery_folds_up_to_the_latest_complete_cut() {
        let root = std::env::temp_dir().join(format!("squall-ckpt-{}-{}", std::process::id(), line!()));
        let dir = CheckpointDir::open(&root, "g-v1").unwrap();
        assert!(dir.recover().unwrap().is_none());
        // Parts of a cut that never completed are deleted even when no cut is complete: a later
        // complete cut must not fold them in.
        dir.write_part(&p(9, 0, &[("ghost", 7)], 3)).unwrap();
        assert!(dir.recover().unwrap().is_none());
        assert!(dir.parts().unwrap().is_empty());
        dir.write_part(&p(10, 0, &[("a", 1)], 5)).unwrap();
        dir.write_part(&p(10, 1, &[("b", 1)], 7)).unwrap();
        dir.write_part(&p(11, 0, &[("a", 2)], 6)).unwrap();
        dir.write_part(&p(11, 1, &[], 7)).unwrap();
        // Cut 12 never completed: worker 1 crashed before writing it.
        dir.write_part(&p(12, 0, &[("a", 3)], 9)).unwrap();
        assert!(dir.is_complete(11, 2) && !dir.is_complete(12, 2));
        let rec = dir.recover().unwrap().unwrap();
        assert_eq!(rec.cut, 11);
        assert_eq!(rec.users["a"], snapshot(2));
        assert_eq!(rec.users["b"], snapshot(1));
        assert_eq!(rec.dedup.len(), 4);
        assert_eq!(rec.offsets.values().copied().collect::<Vec<_>>(), vec![6, 7]);
        assert!(!dir.path().join(part_name(12, 0)).exists(), "the incomplete cut is deleted");

        // Compaction leaves one cut that folds to the same state.
        dir.write_part(&p(13, 0, &[("c", 4)], 10)).unwrap();
        dir.write_part(&p(13, 1, &[], 8)).unwrap();
        let before = dir.recover().unwrap().unwrap();
        assert_eq!(dir.compact(1000).unwrap(), Some((13, 4)));
        assert_eq!(dir.parts().unwrap().len(), 2);
        let after = dir.recover().unwrap().unwrap();
        assert_eq!((after.cut, &after.users, &after.offsets), (before.cut, &before.users, &before.offsets));
        let sorted = |mut d: Vec<(u64, u128, i64)>| {
            d.sort();
            d
        };
        assert_eq!(sorted(after.dedup), sorted(before.dedup));
        fs::remove_dir_all(root).unwrap();
    }
}
