//! Checkpoints in a directory (one host, or a directory every process of a version shares).
//!
//! # Files (in `<root>/<group_id>/`)
//! ```text
//! <cut>-w<worker>.part       a part: its meta, then one section per key group it changed and
//!                            one per (key group, dedup bucket) it added ids to, with an index
//! MANIFEST                   the last compaction: its cut, offsets and watermark, and the files below
//! s<segment>-<cut>.base      every user of a segment (a fixed range of key groups), by key group
//! s<segment>-<cut>.delta     a segment's changes between two compactions, by key group
//! d<bucket>-<cut>.ids        dedup ids of one time bucket added between two compactions, by key group
//! ```
//! Every file is an index (key group -> offset, length) followed by the sections, so a process
//! reads the index and then only the sections of the key groups it covers. Files are written to a
//! temporary name, fsynced and renamed; the directory is fsynced after each cut's parts and
//! after the manifest.
//!
//! # Notes
//! Recovery reads the manifest, the parts newer than it up to the latest complete cut, and of
//! each file the sections of its key groups, oldest first (base, deltas, parts). Compaction
//! (process 0 only: it owns the manifest) reads the parts since the last compaction, writes one
//! delta file per segment they touched, and folds a segment into a new base only once its deltas
//! add up to a quarter of its base (or number 64), rewriting at most eight times what changed per
//! compaction; dedup ids go to one file per bucket, deleted whole when the bucket expires. The manifest's rename is the commit: until then the old
//! manifest and the parts fold to the same state, and files it does not name are removed by the
//! next recovery.
//!
//! A standby's read folds as recovery does and removes nothing, so it may run beside process 0's
//! compaction (see the notes in the fold). A resume finds the latest complete cut from the part
//! files' names and the headers of the newest cuts' parts only, and removes what recovery would.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::attributes::UserSnapshot;
use crate::checkpoint::{
    CheckpointError, CheckpointStore, DedupRun, Part, RebaseCandidate, Recovered, RecoveryScope, UserRows,
    due_for_rebase, fold_rows, oldest_live_bucket,
};
use crate::dedup::{BUCKETS, Fingerprint};
use crate::epoch::Epoch;
use crate::partition::Partition;

const MANIFEST: &str = "MANIFEST";

/// Segments (units of compaction) at most; a segment is `K / SEGMENTS` key groups.
const SEGMENTS: u32 = 64;

/// A segment is folded into a new base at its this-many'th delta file at the latest.
const MAX_DELTAS: usize = 64;

/// A part's own fields (not in the other files).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct PartMeta {
    cut: Epoch,
    worker: u32,
    peers: u32,
    key_groups: u32,
    bucket_ms: i64,
    watermark: i64,
    offsets: Vec<(Partition, i64)>,
}

/// Where a key group's users are in a file's body.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Section {
    key_group: u32,
    offset: u64,
    len: u64,
}

/// Where a key group's ids of one bucket are in a file's body.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct IdSection {
    key_group: u32,
    bucket: i64,
    offset: u64,
    len: u64,
}

/// The index at the start of every file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Header {
    part: Option<PartMeta>,
    users: Vec<Section>,
    dedup: Vec<IdSection>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct FileRef {
    name: String,
    bytes: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Segment {
    base: Option<FileRef>,
    deltas: Vec<FileRef>,
}

/// The last compaction.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Manifest {
    cut: Epoch,
    key_groups: u32,
    peers: u32,
    bucket_ms: i64,
    watermark: i64,
    offsets: Vec<(Partition, i64)>,
    segments: Vec<Segment>,
    dedup: BTreeMap<i64, Vec<FileRef>>,
}

impl Manifest {
    fn files(&self) -> impl Iterator<Item = &FileRef> {
        self.segments.iter().flat_map(|s| s.base.iter().chain(s.deltas.iter())).chain(self.dedup.values().flatten())
    }
}

/// What the parts folded into a cut say about it, on top of the manifest's: the newest watermark,
/// the dedup bucket length, and the cut's own offsets and workers.
struct CutInfo {
    cut: Epoch,
    watermark: i64,
    bucket_ms: i64,
    offsets: Vec<(Partition, i64)>,
    peers: u32,
}

impl CutInfo {
    fn new(cut: Epoch, manifest: Option<&Manifest>) -> Self {
        let (watermark, bucket_ms, peers) = manifest.map_or((i64::MIN, 0, 0), |m| (m.watermark, m.bucket_ms, m.peers));
        // The manifest's offsets stand while no part of a later cut is folded.
        let offsets = manifest.filter(|m| m.cut == cut).map(|m| m.offsets.clone()).unwrap_or_default();
        CutInfo { cut, watermark, bucket_ms, offsets, peers }
    }

    fn absorb(&mut self, part: &PartFile, meta: &PartMeta) {
        self.watermark = self.watermark.max(meta.watermark);
        if meta.bucket_ms > 0 {
            self.bucket_ms = meta.bucket_ms;
        }
        if part.cut == self.cut {
            self.offsets.extend(meta.offsets.iter().cloned());
            self.peers = meta.peers;
        }
    }
}

fn segments(key_groups: u32) -> u32 {
    key_groups.min(SEGMENTS)
}

fn segment_of(key_group: u32, key_groups: u32) -> usize {
    (u64::from(key_group) * u64::from(segments(key_groups)) / u64::from(key_groups)) as usize
}

fn part_name(cut: Epoch, worker: usize) -> String {
    format!("{cut:020}-w{worker:04}.part")
}

fn parse_part_name(name: &str) -> Option<(Epoch, usize)> {
    let stem = name.strip_suffix(".part")?;
    let (cut, worker) = stem.split_once("-w")?;
    Some((cut.parse().ok()?, worker.parse().ok()?))
}

fn invalid(what: impl std::fmt::Display, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {e}"))
}

/// A file's bytes: the header's length, the header, the body.
fn container(header: &Header, body: &[u8]) -> io::Result<Vec<u8>> {
    let head = bincode::serialize(header).map_err(io::Error::other)?;
    let mut out = Vec::with_capacity(8 + head.len() + body.len());
    out.extend_from_slice(&(head.len() as u64).to_le_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(body);
    Ok(out)
}

/// Appends a key group's rows to `body`; their section.
fn push_users(body: &mut Vec<u8>, key_group: u32, rows: &UserRows) -> io::Result<Section> {
    let offset = body.len() as u64;
    bincode::serialize_into(&mut *body, rows).map_err(io::Error::other)?;
    Ok(Section { key_group, offset, len: body.len() as u64 - offset })
}

fn push_ids(body: &mut Vec<u8>, key_group: u32, bucket: i64, ids: &[Fingerprint]) -> io::Result<IdSection> {
    let offset = body.len() as u64;
    bincode::serialize_into(&mut *body, ids).map_err(io::Error::other)?;
    Ok(IdSection { key_group, bucket, offset, len: body.len() as u64 - offset })
}

/// An open file: its header read, sections read on demand; counts the bytes read.
struct Reader {
    file: fs::File,
    body: u64,
    path: PathBuf,
}

impl Reader {
    fn open(path: &Path, bytes: &mut u64) -> io::Result<(Reader, Header)> {
        let mut file = fs::File::open(path)?;
        let mut len = [0u8; 8];
        file.read_exact(&mut len)?;
        let len = u64::from_le_bytes(len);
        let mut head = vec![0u8; len as usize];
        file.read_exact(&mut head)?;
        *bytes += 8 + len;
        let header: Header = bincode::deserialize(&head).map_err(|e| invalid(path.display(), e))?;
        Ok((Reader { file, body: 8 + len, path: path.to_owned() }, header))
    }

    fn read(&mut self, offset: u64, len: u64, bytes: &mut u64) -> io::Result<Vec<u8>> {
        self.file.seek(SeekFrom::Start(self.body + offset))?;
        let mut buf = vec![0u8; len as usize];
        self.file.read_exact(&mut buf)?;
        *bytes += len;
        Ok(buf)
    }

    fn users(&mut self, s: &Section, bytes: &mut u64) -> io::Result<UserRows> {
        let buf = self.read(s.offset, s.len, bytes)?;
        bincode::deserialize(&buf).map_err(|e| invalid(format!("{} key group {}", self.path.display(), s.key_group), e))
    }

    fn ids(&mut self, s: &IdSection, bytes: &mut u64) -> io::Result<Vec<Fingerprint>> {
        let buf = self.read(s.offset, s.len, bytes)?;
        bincode::deserialize(&buf).map_err(|e| invalid(format!("{} ids {}", self.path.display(), s.key_group), e))
    }
}

/// A part file found in the directory.
struct PartFile {
    cut: Epoch,
    worker: usize,
    path: PathBuf,
}

/// A part file with its header read.
type Head = (PartFile, PartMeta, Header);

/// A version's checkpoint directory: `<root>/<group_id>/`. See the module notes.
#[derive(Clone, Debug)]
pub struct CheckpointDir {
    dir: PathBuf,
    scope: Option<RecoveryScope>,
}

impl CheckpointDir {
    /// Opens (creating) the directory of `group_id` under `root`.
    pub fn open(root: &Path, group_id: &str) -> io::Result<Self> {
        let dir = root.join(group_id);
        fs::create_dir_all(&dir)?;
        Ok(CheckpointDir { dir, scope: None })
    }

    /// Where the files are.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn error(&self, source: io::Error) -> CheckpointError {
        CheckpointError::Io { dir: self.dir.display().to_string(), source }
    }

    /// Writes `bytes` to `name` durably except for the directory entry (temporary file, fsync, rename).
    fn put(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let tmp = self.dir.join(format!("{name}.tmp"));
        {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, self.dir.join(name))
    }

    fn sync_dir(&self) -> io::Result<()> {
        fs::File::open(&self.dir)?.sync_all()
    }

    /// Writes parts durably, each cut's before the next's; their size in bytes.
    pub fn write_parts(&self, parts: &[Part]) -> io::Result<u64> {
        let mut bytes = 0;
        let mut sorted: Vec<&Part> = parts.iter().collect();
        sorted.sort_by_key(|p| (p.cut, p.worker));
        for (i, part) in sorted.iter().enumerate() {
            let mut body = Vec::new();
            let mut header = Header {
                part: Some(PartMeta {
                    cut: part.cut,
                    worker: part.worker as u32,
                    peers: part.peers as u32,
                    key_groups: part.key_groups.count(),
                    bucket_ms: part.bucket_ms,
                    watermark: part.watermark,
                    offsets: part.offsets.clone(),
                }),
                ..Default::default()
            };
            for (kg, rows) in part.rows_by_key_group() {
                header.users.push(push_users(&mut body, kg, &rows)?);
            }
            for run in &part.dedup {
                header.dedup.push(push_ids(&mut body, run.key_group, run.bucket, &run.ids)?);
            }
            let file = container(&header, &body)?;
            self.put(&part_name(part.cut, part.worker), &file)?;
            bytes += file.len() as u64;
            // A later cut's parts never become durable before an earlier cut's.
            if sorted.get(i + 1).is_none_or(|next| next.cut != part.cut) {
                self.sync_dir()?;
            }
        }
        Ok(bytes)
    }

    /// Writes one part.
    pub fn write_part(&self, part: &Part) -> io::Result<u64> {
        self.write_parts(std::slice::from_ref(part))
    }

    /// Every part file, sorted by cut then worker.
    fn parts(&self) -> io::Result<Vec<PartFile>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            if let Some((cut, worker)) = entry.file_name().to_str().and_then(parse_part_name) {
                out.push(PartFile { cut, worker, path: entry.path() });
            }
        }
        out.sort_by_key(|p| (p.cut, p.worker));
        Ok(out)
    }

    /// Whether all `peers` parts of `cut` are written.
    pub fn is_complete(&self, cut: Epoch, peers: usize) -> bool {
        (0..peers).all(|w| self.dir.join(part_name(cut, w)).is_file())
    }

    fn manifest(&self) -> io::Result<Option<Manifest>> {
        match fs::read(self.dir.join(MANIFEST)) {
            Ok(b) => bincode::deserialize(&b).map(Some).map_err(|e| invalid(MANIFEST, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The headers of the parts newer than `after`, skipping parts deleted since the listing.
    fn part_headers(&self, after: Option<Epoch>, bytes: &mut u64) -> io::Result<Vec<Head>> {
        let parts = self.parts()?.into_iter().filter(|p| after.is_none_or(|m| p.cut > m));
        Self::headers(parts, bytes)
    }

    /// The headers of `parts`, skipping parts deleted since they were listed.
    fn headers(parts: impl IntoIterator<Item = PartFile>, bytes: &mut u64) -> io::Result<Vec<Head>> {
        let mut out = Vec::new();
        for p in parts {
            match Reader::open(&p.path, bytes) {
                Ok((_, header)) => {
                    let meta = header.part.clone().ok_or_else(|| invalid(p.path.display(), "not a part"))?;
                    out.push((p, meta, header));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// The latest cut all of whose parts are among `heads`.
    fn latest_complete_in(heads: &[Head]) -> Option<Epoch> {
        let mut by_cut: BTreeMap<Epoch, (usize, u32)> = BTreeMap::new();
        for (p, meta, _) in heads {
            by_cut.entry(p.cut).or_insert((0, meta.peers)).0 += 1;
        }
        by_cut.iter().rev().find(|(_, (n, peers))| *n as u32 == *peers).map(|(c, _)| *c)
    }

    fn check_key_groups(scope: &RecoveryScope, written: u32) -> Result<(), CheckpointError> {
        let configured = scope.key_groups.count();
        if written == configured { Ok(()) } else { Err(CheckpointError::KeyGroups { written, configured }) }
    }

    /// Removes files that nothing refers to: parts outside `keep` and compaction files the
    /// manifest does not name (left by a compaction that crashed). The number removed.
    fn tidy(&self, manifest: Option<&Manifest>, keep: Range<Epoch>) -> io::Result<usize> {
        let named: std::collections::HashSet<&str> =
            manifest.iter().flat_map(|m| m.files()).map(|f| f.name.as_str()).collect();
        let mut removed = 0;
        for entry in fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            let stale = match parse_part_name(name) {
                Some((cut, _)) => !keep.contains(&cut),
                None => name != MANIFEST && !named.contains(name),
            };
            if stale {
                match fs::remove_file(self.dir.join(name)) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(removed)
    }

    /// Errs (NotFound: read again) if the manifest is no longer `read`.
    ///
    /// Process 0's compaction commits a new manifest and then deletes the parts it folded: if
    /// that happened between reading the manifest and listing the parts, the listing lacks parts
    /// the manifest read does not hold, and a fold would silently miss their changes (a restarted
    /// process recovering, or a standby reading, while process 0 compacts). Read again.
    fn same_manifest(&self, read: Option<&Manifest>) -> io::Result<()> {
        if self.manifest()?.map(|m| m.cut) != read.map(|m| m.cut) {
            return Err(io::Error::new(io::ErrorKind::NotFound, "a compaction replaced the manifest while reading"));
        }
        Ok(())
    }

    /// Runs `once` again, up to 20 times, while it fails on a file another process's compaction
    /// replaced or removed under it; then returns that error (the caller may retry).
    fn retrying<T>(&self, mut once: impl FnMut() -> Result<T, CheckpointError>) -> Result<T, CheckpointError> {
        let mut attempts = 0;
        loop {
            match once() {
                Err(CheckpointError::Io { source, .. })
                    if source.kind() == io::ErrorKind::NotFound && attempts < 20 =>
                {
                    attempts += 1;
                }
                other => return other,
            }
        }
    }

    /// The manifest, the latest complete cut, and the headers of that cut's parts (none when it
    /// is the manifest's cut). Lists the part files and reads the headers of the newest cuts'
    /// parts only, down to the first complete cut: the rule recovery follows, at the cost of a
    /// cut's headers or two.
    fn latest_once(&self) -> io::Result<(Option<Manifest>, Option<Epoch>, Vec<Head>)> {
        let manifest = self.manifest()?;
        let after = manifest.as_ref().map(|m| m.cut);
        let mut by_cut: BTreeMap<Epoch, Vec<PartFile>> = BTreeMap::new();
        for p in self.parts()?.into_iter().filter(|p| after.is_none_or(|m| p.cut > m)) {
            by_cut.entry(p.cut).or_default().push(p);
        }
        let mut bytes = 0;
        let mut latest = (after, Vec::new());
        for (cut, parts) in by_cut.into_iter().rev() {
            let heads = Self::headers(parts, &mut bytes)?;
            if Self::latest_complete_in(&heads) == Some(cut) {
                latest = (Some(cut), heads);
                break;
            }
        }
        self.same_manifest(manifest.as_ref())?;
        Ok((manifest, latest.0, latest.1))
    }

    /// Folds the key groups `scope` covers at the latest complete cut; with `tidy`, also removes
    /// the files nothing refers to (recovery by process 0). Without it, nothing is changed: a
    /// read-only fold, safe beside a writer and a compactor in other processes (see the notes in
    /// the body).
    fn fold_once(&self, scope: &RecoveryScope, tidy: bool) -> Result<Option<Recovered>, CheckpointError> {
        let mut bytes = 0u64;
        let io = |e| self.error(e);
        let manifest = self.manifest().map_err(io)?;
        if let Some(m) = &manifest {
            Self::check_key_groups(scope, m.key_groups)?;
        }
        let heads = self.part_headers(manifest.as_ref().map(|m| m.cut), &mut bytes).map_err(io)?;
        self.same_manifest(manifest.as_ref()).map_err(io)?;
        for (_, meta, _) in &heads {
            Self::check_key_groups(scope, meta.key_groups)?;
        }
        let latest = Self::latest_complete_in(&heads).or(manifest.as_ref().map(|m| m.cut));
        if tidy {
            // Parts beyond the latest complete cut belong to cuts that never completed; those at
            // or below the manifest's cut are folded into it.
            let from = manifest.as_ref().map_or(0, |m| m.cut + 1);
            let removed = self.tidy(manifest.as_ref(), from..latest.map_or(0, |l| l + 1)).map_err(io)?;
            if removed > 0 {
                tracing::info!(dir = %self.dir.display(), removed, "removed checkpoint files of incomplete cuts or compactions");
            }
        }
        let Some(cut) = latest else { return Ok(None) };
        let reads = scope.reads();
        let mut rec = Recovered { cut, ..Default::default() };
        let mut info = CutInfo::new(cut, manifest.as_ref());
        // Oldest first: the manifest's files, then the parts. A compaction in another process
        // that happens meanwhile is safe for the fold: its new files have names of their own and
        // count only once its manifest is renamed in (the manifest checked above is the one
        // whose files are read), and it deletes the parts and files it replaced only after that
        // rename; a part or file gone under this fold fails it with NotFound, and it reads again.
        // Parts the manifest already folded are skipped (`part_headers` takes those after its
        // cut), so a compaction committed but not yet tidied still folds to this cut's state.
        if let Some(m) = &manifest {
            for (s, segment) in m.segments.iter().enumerate() {
                if !(0..scope.key_groups.count()).any(|g| reads.contains(&g) && segment_of(g, m.key_groups) == s) {
                    continue;
                }
                for file in segment.base.iter().chain(&segment.deltas) {
                    let (mut r, header) = Reader::open(&self.dir.join(&file.name), &mut bytes).map_err(io)?;
                    for s in header.users.iter().filter(|s| reads.contains(&s.key_group)) {
                        fold_rows(&mut rec.users, r.users(s, &mut bytes).map_err(io)?);
                    }
                }
            }
        }
        let folded: Vec<&Head> = heads.iter().filter(|(p, _, _)| p.cut <= cut).collect();
        for (p, meta, header) in &folded {
            info.absorb(p, meta);
            let (mut r, _) = Reader::open(&p.path, &mut bytes).map_err(io)?;
            for s in header.users.iter().filter(|s| reads.contains(&s.key_group)) {
                fold_rows(&mut rec.users, r.users(s, &mut bytes).map_err(io)?);
            }
        }
        (rec.watermark, rec.bucket_ms) = (info.watermark, info.bucket_ms);
        rec.offsets = info.offsets.into_iter().collect();
        // Dedup ids of the live buckets.
        let oldest = oldest_live_bucket(rec.watermark, rec.bucket_ms * BUCKETS, rec.bucket_ms);
        let mut runs: BTreeMap<(u32, i64), Vec<Fingerprint>> = BTreeMap::new();
        let mut take = |path: &Path, header: &Header, bytes: &mut u64| -> io::Result<()> {
            let wanted: Vec<&IdSection> =
                header.dedup.iter().filter(|s| reads.contains(&s.key_group) && s.bucket >= oldest).collect();
            if wanted.is_empty() {
                return Ok(());
            }
            let (mut r, _) = Reader::open(path, bytes)?;
            for s in wanted {
                runs.entry((s.key_group, s.bucket)).or_default().extend(r.ids(s, bytes)?);
            }
            Ok(())
        };
        if let Some(m) = &manifest {
            for file in m.dedup.range(oldest..).flat_map(|(_, f)| f) {
                let path = self.dir.join(&file.name);
                let (_, header) = Reader::open(&path, &mut bytes).map_err(io)?;
                take(&path, &header, &mut bytes).map_err(io)?;
            }
        }
        for (p, _, header) in &folded {
            take(&p.path, header, &mut bytes).map_err(io)?;
        }
        rec.dedup = runs.into_iter().map(|((key_group, bucket), ids)| DedupRun { key_group, bucket, ids }).collect();
        rec.bytes_read = bytes;
        Ok(Some(rec))
    }

    /// Reads every section of `file` (a segment's base or delta) into `users`.
    fn fold_file(&self, name: &str, users: &mut BTreeMap<u32, HashMap<String, UserSnapshot>>) -> io::Result<()> {
        let mut bytes = 0;
        let (mut r, header) = Reader::open(&self.dir.join(name), &mut bytes)?;
        for s in &header.users {
            fold_rows(users.entry(s.key_group).or_default(), r.users(s, &mut bytes)?);
        }
        Ok(())
    }

    /// Writes a file of one section per key group of `groups` (a segment's delta or base); its reference.
    fn put_users(&self, name: String, groups: impl IntoIterator<Item = (u32, UserRows)>) -> io::Result<FileRef> {
        let (mut body, mut header) = (Vec::new(), Header::default());
        for (kg, rows) in groups {
            header.users.push(push_users(&mut body, kg, &rows)?);
        }
        let file = container(&header, &body)?;
        self.put(&name, &file)?;
        Ok(FileRef { name, bytes: file.len() as u64 })
    }

    /// Folds a segment's base and deltas into a new base at `cut`; the files it replaces.
    fn rebase_segment(&self, s: usize, segment: &mut Segment, cut: Epoch) -> io::Result<Vec<String>> {
        let mut users: BTreeMap<u32, HashMap<String, UserSnapshot>> = BTreeMap::new();
        let mut replaced = Vec::new();
        for f in segment.base.iter().chain(&segment.deltas) {
            self.fold_file(&f.name, &mut users)?;
            replaced.push(f.name.clone());
        }
        let groups = users.into_iter().filter(|(_, group)| !group.is_empty()).map(|(kg, group)| {
            let mut rows: UserRows = group.into_iter().map(|(u, s)| (u, Some(s))).collect();
            rows.sort_by(|a, b| a.0.cmp(&b.0));
            (kg, rows)
        });
        segment.base = Some(self.put_users(format!("s{s:04}-{cut:020}.base"), groups)?);
        segment.deltas.clear();
        Ok(replaced)
    }

    /// The segments of `manifest` a compaction that `changed` bytes folds into new bases: the
    /// rebase rule ([`due_for_rebase`]), and those with [`MAX_DELTAS`] delta files whatever it costs.
    fn due_segments(manifest: &Manifest, changed: u64) -> Vec<usize> {
        let candidates = manifest.segments.iter().enumerate().filter_map(|(s, segment)| {
            let sizes: Vec<u64> = segment.base.iter().chain(&segment.deltas).map(|f| f.bytes).collect();
            let (&base, newer) = sizes.split_first()?;
            let forced = segment.deltas.len() >= MAX_DELTAS;
            Some(RebaseCandidate { key: s, base, newer: newer.iter().sum(), forced })
        });
        due_for_rebase(candidates, changed)
    }

    fn compact_io(&self, horizon_ms: i64) -> io::Result<Option<(Epoch, usize)>> {
        let mut bytes = 0;
        let manifest = self.manifest()?;
        let heads = self.part_headers(manifest.as_ref().map(|m| m.cut), &mut bytes)?;
        let Some(cut) = Self::latest_complete_in(&heads) else { return Ok(None) };
        let folded: Vec<&Head> = heads.iter().filter(|(p, _, _)| p.cut <= cut).collect();
        let key_groups = folded[0].1.key_groups;
        let mut next = manifest.clone().unwrap_or_else(|| Manifest {
            cut,
            key_groups,
            peers: 0,
            bucket_ms: 0,
            watermark: i64::MIN,
            offsets: Vec::new(),
            segments: vec![Segment::default(); segments(key_groups) as usize],
            dedup: BTreeMap::new(),
        });
        let mut info = CutInfo::new(cut, manifest.as_ref());
        // What changed since the last compaction: the newest row per user, by segment and key
        // group; the new dedup ids by bucket and key group.
        let mut changes: BTreeMap<usize, BTreeMap<u32, BTreeMap<String, Option<UserSnapshot>>>> = BTreeMap::new();
        let mut ids: BTreeMap<i64, BTreeMap<u32, Vec<Fingerprint>>> = BTreeMap::new();
        for (p, meta, header) in &folded {
            info.absorb(p, meta);
            let (mut r, _) = Reader::open(&p.path, &mut bytes)?;
            for s in &header.users {
                let rows =
                    changes.entry(segment_of(s.key_group, key_groups)).or_default().entry(s.key_group).or_default();
                rows.extend(r.users(s, &mut bytes)?);
            }
            for s in &header.dedup {
                ids.entry(s.bucket).or_default().entry(s.key_group).or_default().extend(r.ids(s, &mut bytes)?);
            }
        }
        (next.cut, next.watermark, next.bucket_ms, next.peers) = (cut, info.watermark, info.bucket_ms, info.peers);
        next.offsets = info.offsets;
        let mut garbage: Vec<String> = Vec::new();
        let mut changed = 0u64;
        // One delta file per segment that changed: costs what changed.
        for (s, groups) in changes {
            let groups = groups.into_iter().map(|(kg, rows)| (kg, rows.into_iter().collect()));
            let delta = self.put_users(format!("s{s:04}-{cut:020}.delta"), groups)?;
            changed += delta.bytes;
            next.segments[s].deltas.push(delta);
        }
        for s in Self::due_segments(&next, changed) {
            garbage.extend(self.rebase_segment(s, &mut next.segments[s], cut)?);
        }
        for (bucket, groups) in ids {
            let (mut body, mut header) = (Vec::new(), Header::default());
            for (kg, list) in groups {
                header.dedup.push(push_ids(&mut body, kg, bucket, &list)?);
            }
            let name = format!("d{bucket}-{cut:020}.ids");
            let file = container(&header, &body)?;
            self.put(&name, &file)?;
            next.dedup.entry(bucket).or_default().push(FileRef { name, bytes: file.len() as u64 });
        }
        // Buckets past the horizon go whole.
        let oldest = oldest_live_bucket(next.watermark, horizon_ms, next.bucket_ms);
        let live = next.dedup.split_off(&oldest);
        garbage.extend(std::mem::replace(&mut next.dedup, live).into_values().flatten().map(|f| f.name));
        let m = bincode::serialize(&next).map_err(io::Error::other)?;
        self.put(MANIFEST, &m)?;
        self.sync_dir()?;
        // Committed: the parts up to the cut and the replaced files are redundant.
        let mut removed = 0;
        for (p, _, _) in &folded {
            fs::remove_file(&p.path)?;
            removed += 1;
        }
        for name in garbage {
            fs::remove_file(self.dir.join(name))?;
            removed += 1;
        }
        Ok(Some((cut, removed)))
    }
}

impl CheckpointStore for CheckpointDir {
    fn location(&self) -> String {
        self.dir.display().to_string()
    }

    fn write_parts(&mut self, parts: &[Part]) -> Result<u64, CheckpointError> {
        CheckpointDir::write_parts(self, parts).map_err(|source| self.error(source))
    }

    fn recover(&mut self, scope: &RecoveryScope) -> Result<Option<Recovered>, CheckpointError> {
        self.scope = Some(scope.clone());
        // Another process's compaction may replace the manifest, or a file, while this one reads
        // them: read again.
        self.retrying(|| self.fold_once(scope, scope.tidy))
    }

    fn read(&mut self, scope: &RecoveryScope) -> Result<Option<Recovered>, CheckpointError> {
        self.retrying(|| self.fold_once(scope, false))
    }

    fn latest_complete(&mut self) -> Result<Option<Epoch>, CheckpointError> {
        self.retrying(|| self.latest_once().map(|(_, latest, _)| latest).map_err(|e| self.error(e)))
    }

    fn resume(&mut self, scope: &RecoveryScope, cut: Epoch) -> Result<(), CheckpointError> {
        let (manifest, latest, heads) = self.retrying(|| self.latest_once().map_err(|e| self.error(e)))?;
        if let Some(m) = &manifest {
            Self::check_key_groups(scope, m.key_groups)?;
        }
        for (_, meta, _) in &heads {
            Self::check_key_groups(scope, meta.key_groups)?;
        }
        if latest != Some(cut) {
            return Err(CheckpointError::NotLatest { cut, latest });
        }
        self.scope = Some(scope.clone());
        if scope.tidy {
            // As recovery: parts beyond the cut belong to cuts that never completed, those at or
            // below the manifest's cut are folded into it, and files the manifest does not name
            // are left by a compaction that crashed. Compaction keeps no other bookkeeping here
            // (it reads the manifest and the parts each time).
            let from = manifest.as_ref().map_or(0, |m| m.cut + 1);
            let removed = self.tidy(manifest.as_ref(), from..cut + 1).map_err(|e| self.error(e))?;
            if removed > 0 {
                tracing::info!(dir = %self.dir.display(), removed, cut, "removed checkpoint files beyond the resumed cut");
            }
        }
        Ok(())
    }

    fn is_complete(&mut self, cut: Epoch, peers: usize) -> Result<bool, CheckpointError> {
        Ok(CheckpointDir::is_complete(self, cut, peers))
    }

    fn compact(&mut self, dedup_horizon_ms: i64) -> Result<Option<(Epoch, usize)>, CheckpointError> {
        // Process 0 owns the manifest.
        if self.scope.as_ref().is_some_and(|s| !s.tidy) {
            return Ok(None);
        }
        self.compact_io(dedup_horizon_ms).map_err(|source| self.error(source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::tests::{assert_same_state, id, p, snapshot};
    use crate::key_groups::KeyGroups;

    fn scope(local: Range<usize>, peers: usize, tidy: bool) -> RecoveryScope {
        RecoveryScope { key_groups: KeyGroups::new(64).unwrap(), peers, local, tidy }
    }

    fn dir(line: u32) -> (PathBuf, CheckpointDir) {
        let root = std::env::temp_dir().join(format!("squall-ckpt-{}-{line}", std::process::id()));
        let d = CheckpointDir::open(&root, "g-v1").unwrap();
        (root, d)
    }

    /// Complete cuts 1 to 3 of two workers (b expires at 3), and worker 0's part of cut 4, which
    /// never completes: it brings a new user, `ghost`, and changes `a`.
    fn three_cuts_and_a_part(dir: &CheckpointDir) {
        dir.write_parts(&[p(1, 0, &[("a", 1)], 1), p(1, 1, &[("b", 1)], 1)]).unwrap();
        dir.write_parts(&[p(2, 0, &[("a", 2)], 2), p(2, 1, &[("c", 1)], 2)]).unwrap();
        let mut expired = p(3, 1, &[], 3);
        expired.expired = vec!["b".into()];
        dir.write_parts(&[p(3, 0, &[("a", 3)], 3), expired]).unwrap();
        dir.write_part(&p(4, 0, &[("ghost", 4), ("a", 4)], 4)).unwrap();
    }

    /// The state of [`three_cuts_and_a_part`] at cut 3.
    fn check_cut_3(rec: &Recovered) {
        assert_eq!(rec.cut, 3);
        assert_eq!(rec.users, HashMap::from([("a".into(), snapshot(3)), ("c".into(), snapshot(1))]));
        assert_eq!(rec.offsets.values().copied().collect::<Vec<_>>(), vec![3, 3]);
        assert_eq!(rec.dedup.iter().map(|r| r.ids.len()).sum::<usize>(), 6);
    }

    #[test]
    fn a_read_folds_as_recovery_does_and_deletes_nothing() {
        let (root, mut dir) = dir(line!());
        let all = scope(0..2, 2, true);
        assert!(dir.read(&all).unwrap().is_none());
        three_cuts_and_a_part(&dir);
        let read = dir.read(&all).unwrap().unwrap();
        check_cut_3(&read);
        assert!(dir.path().join(part_name(4, 0)).exists(), "a read deletes nothing");
        assert_eq!(dir.scope, None, "nor sets the scope");
        // Recovery (of a fresh handle, as after a restart) returns the same, and does delete.
        let recovered = CheckpointDir::open(&root, "g-v1").unwrap().recover(&all).unwrap().unwrap();
        assert_same_state(&read, &recovered);
        assert_eq!(read.bytes_read, recovered.bytes_read);
        assert!(!dir.path().join(part_name(4, 0)).exists(), "recovery deletes the incomplete cut");

        // A compaction seen half done, its manifest committed and the parts it folded not yet
        // deleted (they are put back here), reads as before it.
        dir.write_parts(&[p(4, 0, &[("a", 4)], 4), p(4, 1, &[("d", 1)], 4)]).unwrap();
        dir.write_part(&p(5, 1, &[("d", 2)], 5)).unwrap();
        let before = dir.read(&all).unwrap().unwrap();
        assert_eq!(before.cut, 4);
        let folded: Vec<(PathBuf, Vec<u8>)> = dir
            .parts()
            .unwrap()
            .into_iter()
            .filter(|f| f.cut <= 4)
            .map(|f| {
                let bytes = fs::read(&f.path).unwrap();
                (f.path, bytes)
            })
            .collect();
        assert_eq!(CheckpointStore::compact(&mut dir, 1_000_000).unwrap().map(|c| c.0), Some(4));
        for (path, bytes) in &folded {
            fs::write(path, bytes).unwrap();
        }
        let half_done = dir.read(&all).unwrap().unwrap();
        assert_same_state(&before, &half_done);
        assert!(dir.path().join(part_name(5, 1)).exists());
        // Each process of another layout reads its own key groups; together, the same users.
        let mut users = HashMap::new();
        for w in 0..3 {
            users.extend(dir.read(&scope(w..w + 1, 3, w == 0)).unwrap().unwrap().users);
        }
        assert_eq!(users, before.users);
        fs::remove_dir_all(root).unwrap();
    }

    /// A standby's reads while the active process writes and compacts (every third cut) return
    /// the state at the cut they report, or an error (a file gone under them too often), never
    /// another state.
    #[test]
    fn a_read_beside_a_writer_and_a_compactor_gives_the_state_at_its_cut() {
        const CUTS: u64 = 120;
        let (root, mut active) = dir(line!());
        let all = scope(0..2, 2, true);
        let user = |cut: u64, worker: usize| format!("u{}", (cut as usize * 3 + worker) % 11);
        let part = |cut: u64, worker: usize| p(cut, worker, &[(user(cut, worker).as_str(), cut as usize)], cut as i64);
        // At cut c: each user's newest write up to it, and the ids of the live buckets (c - 8 on).
        let expected = |cut: u64| {
            let mut users = HashMap::new();
            let mut ids = Vec::new();
            for c in 1..=cut {
                for w in 0..2 {
                    users.insert(user(c, w), snapshot(c as usize));
                    if c + 8 >= cut {
                        ids.push(id(c * 10 + w as u64));
                    }
                }
            }
            ids.sort_by_key(|i| (i.hi, i.lo));
            (users, ids)
        };
        let done = std::sync::atomic::AtomicBool::new(false);
        let (checked, retried) = std::thread::scope(|s| {
            s.spawn(|| {
                for cut in 1..=CUTS {
                    active.write_parts(&[part(cut, 0), part(cut, 1)]).unwrap();
                    if cut % 3 == 0 {
                        CheckpointStore::compact(&mut active, 8_000).unwrap();
                    }
                }
                done.store(true, std::sync::atomic::Ordering::Release);
            });
            let mut standby = CheckpointDir::open(&root, "g-v1").unwrap();
            let (mut checked, mut retried) = (0, 0);
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                match standby.read(&all) {
                    Ok(Some(rec)) => {
                        let mut ids: Vec<Fingerprint> = rec.dedup.iter().flat_map(|r| r.ids.clone()).collect();
                        ids.sort_by_key(|i| (i.hi, i.lo));
                        assert_eq!((rec.users, ids), expected(rec.cut), "the state read at cut {}", rec.cut);
                        checked += 1;
                    }
                    Ok(None) => {}
                    Err(CheckpointError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => retried += 1,
                    Err(e) => panic!("{e}"),
                }
            }
            (checked, retried)
        });
        assert!(checked > 0, "no read completed ({retried} gave up)");
        let last = CheckpointDir::open(&root, "g-v1").unwrap().read(&all).unwrap().unwrap();
        assert_eq!(last.cut, CUTS);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn the_latest_complete_cut_is_the_newest_with_every_part() {
        let (root, mut dir) = dir(line!());
        assert_eq!(dir.latest_complete().unwrap(), None);
        dir.write_part(&p(1, 0, &[("a", 1)], 1)).unwrap();
        assert_eq!(dir.latest_complete().unwrap(), None);
        three_cuts_and_a_part(&dir);
        assert_eq!(dir.latest_complete().unwrap(), Some(3));
        // Compacted into the manifest, cut 3 is still the latest; then cut 4 completes.
        assert_eq!(CheckpointStore::compact(&mut dir, 1_000_000).unwrap().map(|c| c.0), Some(3));
        assert_eq!(dir.latest_complete().unwrap(), Some(3));
        dir.write_part(&p(4, 1, &[], 4)).unwrap();
        assert_eq!(dir.latest_complete().unwrap(), Some(4));
        assert_eq!(dir.latest_complete().unwrap(), dir.read(&scope(0..2, 2, true)).unwrap().map(|r| r.cut));
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_resume_deletes_what_lies_beyond_its_cut_and_writing_and_compaction_go_on() {
        let (root, mut dir) = dir(line!());
        let all = scope(0..2, 2, true);
        three_cuts_and_a_part(&dir);
        let held = dir.read(&all).unwrap().unwrap();
        // Another process (not process 0) tidies nothing.
        CheckpointDir::open(&root, "g-v1").unwrap().resume(&scope(1..2, 2, false), 3).unwrap();
        assert!(dir.path().join(part_name(4, 0)).exists());
        dir.resume(&all, 3).unwrap();
        assert_eq!(dir.scope.as_ref(), Some(&all));
        assert!(!dir.path().join(part_name(4, 0)).exists(), "cut 4's part is gone");
        let fresh = || CheckpointDir::open(&root, "g-v1").unwrap();
        let after = fresh().recover(&all).unwrap().unwrap();
        check_cut_3(&after);
        assert_same_state(&held, &after);

        // The writer goes on from cut 3: cuts 4 and 5 fold onto it.
        dir.write_parts(&[p(4, 0, &[("a", 40)], 4), p(4, 1, &[("c", 40)], 4)]).unwrap();
        let mut gone = p(5, 1, &[("d", 50)], 5);
        gone.expired = vec!["c".into()];
        dir.write_parts(&[p(5, 0, &[("a", 50)], 5), gone]).unwrap();
        let before = fresh().recover(&all).unwrap().unwrap();
        assert_eq!(before.cut, 5);
        assert_eq!(before.users, HashMap::from([("a".into(), snapshot(50)), ("d".into(), snapshot(50))]));
        assert_eq!(before.offsets.values().copied().collect::<Vec<_>>(), vec![5, 5]);
        // A compaction after the resume folds everything and keeps the state exactly.
        assert_eq!(CheckpointStore::compact(&mut dir, 1_000_000).unwrap().map(|c| c.0), Some(5));
        assert!(dir.parts().unwrap().is_empty());
        assert_same_state(&before, &fresh().recover(&all).unwrap().unwrap());
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_resume_from_a_cut_that_is_not_the_latest_complete_one_changes_nothing() {
        let (root, mut dir) = dir(line!());
        let all = scope(0..2, 2, true);
        assert!(matches!(dir.resume(&all, 1), Err(CheckpointError::NotLatest { cut: 1, latest: None })));
        three_cuts_and_a_part(&dir);
        for cut in [2, 4] {
            match dir.resume(&all, cut) {
                Err(CheckpointError::NotLatest { cut: c, latest: Some(3) }) if c == cut => {}
                other => panic!("resume at {cut}: {other:?}"),
            }
        }
        let message = dir.resume(&all, 2).unwrap_err().to_string();
        assert!(
            message.contains("at cut 2") && message.contains("Some(3)") && message.contains("recover"),
            "{message}"
        );
        assert!(dir.path().join(part_name(4, 0)).exists(), "nothing was deleted");
        assert_eq!(dir.scope, None, "nor the scope set");
        check_cut_3(&CheckpointDir::open(&root, "g-v1").unwrap().recover(&all).unwrap().unwrap());
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn recovery_folds_up_to_the_latest_complete_cut() {
        let (root, mut dir) = dir(line!());
        let all = scope(0..2, 2, true);
        assert!(dir.recover(&all).unwrap().is_none());
        // Parts of a cut that never completed are deleted even when no cut is complete: a later
        // complete cut must not fold them in.
        dir.write_part(&p(9, 0, &[("ghost", 7)], 3)).unwrap();
        assert!(dir.recover(&all).unwrap().is_none());
        assert!(dir.parts().unwrap().is_empty());
        dir.write_part(&p(10, 0, &[("a", 1)], 5)).unwrap();
        dir.write_part(&p(10, 1, &[("b", 1)], 7)).unwrap();
        dir.write_parts(&[p(11, 0, &[("a", 2)], 6), p(11, 1, &[], 7)]).unwrap();
        // Cut 12 never completed: worker 1 crashed before writing it.
        dir.write_part(&p(12, 0, &[("a", 3)], 9)).unwrap();
        assert!(dir.is_complete(11, 2) && !dir.is_complete(12, 2));
        let rec = dir.recover(&all).unwrap().unwrap();
        assert_eq!(rec.cut, 11);
        assert_eq!(rec.users["a"], snapshot(2));
        assert_eq!(rec.users["b"], snapshot(1));
        assert_eq!(rec.dedup.iter().map(|r| r.ids.len()).sum::<usize>(), 4);
        assert_eq!(rec.watermark, 11_000);
        assert_eq!(rec.offsets.values().copied().collect::<Vec<_>>(), vec![6, 7]);
        assert!(!dir.path().join(part_name(12, 0)).exists(), "the incomplete cut is deleted");

        // Compaction leaves a manifest and its files, which fold to the same state.
        let mut expired = p(13, 0, &[("c", 4)], 10);
        expired.expired = vec!["b".into()];
        dir.write_parts(&[expired, p(13, 1, &[], 8)]).unwrap();
        let before = dir.recover(&all).unwrap().unwrap();
        assert!(!before.users.contains_key("b"), "b expired at cut 13");
        let (cut, removed) = CheckpointStore::compact(&mut dir, 1_000_000).unwrap().unwrap();
        assert_eq!((cut, removed), (13, 6), "every part is folded into the manifest's files");
        assert!(dir.parts().unwrap().is_empty());
        let after = dir.recover(&all).unwrap().unwrap();
        assert_eq!((after.cut, &after.users, &after.offsets), (before.cut, &before.users, &before.offsets));
        assert_eq!(after.dedup, before.dedup);

        // Each process of another layout reads its own key groups, and together they read all.
        let (mut users, mut ids) = (HashMap::new(), 0);
        for w in 0..3 {
            let rec = dir.recover(&scope(w..w + 1, 3, w == 0)).unwrap().unwrap();
            assert!(rec.bytes_read < after.bytes_read || w == 0);
            ids += rec.dedup.iter().map(|r| r.ids.len()).sum::<usize>();
            users.extend(rec.users);
        }
        assert_eq!(users, after.users);
        assert!(ids >= 4);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn compaction_writes_deltas_until_a_rebase_pays_and_drops_expired_buckets() {
        let (root, mut dir) = dir(line!());
        let all = scope(0..1, 1, true);
        let key_groups = KeyGroups::new(64).unwrap();
        let one = |cut: Epoch, users: Vec<(String, UserSnapshot)>, ids: Vec<DedupRun>| Part {
            cut,
            key_groups,
            users,
            dedup: ids,
            bucket_ms: 1000,
            watermark: cut as i64 * 1000,
            ..Default::default()
        };
        let many: Vec<(String, UserSnapshot)> = (0..40_000).map(|i| (format!("u{i}"), snapshot(i))).collect();
        dir.write_part(&one(1, many.clone(), vec![DedupRun { key_group: 0, bucket: 1, ids: vec![id(1)] }])).unwrap();
        dir.compact(8_000).unwrap();
        // The first delta of each segment stands for its base: nothing is rewritten.
        let m = dir.manifest().unwrap().unwrap();
        assert!(m.segments.iter().all(|s| s.base.is_none() && s.deltas.len() == 1));
        // A few changes: one delta file for the segment touched.
        dir.write_part(&one(2, vec![("u7".into(), snapshot(70))], vec![])).unwrap();
        dir.compact(8_000).unwrap();
        let m2 = dir.manifest().unwrap().unwrap();
        let seven = segment_of(key_groups.of("u7"), 64);
        for (s, segment) in m2.segments.iter().enumerate() {
            assert_eq!(segment.deltas.len(), if s == seven { 2 } else { 1 }, "segment {s}");
        }
        // Every user of u7's segment changes twice: more than a quarter, so it is rebased alone.
        let theirs: Vec<(String, UserSnapshot)> =
            many.iter().filter(|(u, _)| segment_of(key_groups.of(u), 64) == seven).cloned().collect();
        for cut in [3, 4] {
            let changed = theirs.iter().map(|(u, _)| (u.clone(), snapshot(cut as usize))).collect();
            dir.write_part(&one(cut, changed, vec![])).unwrap();
            dir.compact(8_000).unwrap();
        }
        let m3 = dir.manifest().unwrap().unwrap();
        for (s, segment) in m3.segments.iter().enumerate() {
            assert_eq!(segment.base.is_some(), s == seven, "segment {s}");
        }
        let rec = dir.recover(&all).unwrap().unwrap();
        assert_eq!(rec.users["u7"], snapshot(4));
        assert_eq!(rec.users["u8"], snapshot(8));
        // Ten buckets later, bucket 1's ids are gone with their file.
        dir.write_part(&one(11, vec![], vec![DedupRun { key_group: 3, bucket: 11, ids: vec![id(2)] }])).unwrap();
        dir.compact(8_000).unwrap();
        let m4 = dir.manifest().unwrap().unwrap();
        assert_eq!(m4.dedup.keys().copied().collect::<Vec<_>>(), vec![11]);
        let rec = dir.recover(&all).unwrap().unwrap();
        assert_eq!(rec.users.len(), 40_000);
        assert_eq!(rec.dedup, vec![DedupRun { key_group: 3, bucket: 11, ids: vec![id(2)] }]);
        // A changed number of key groups is refused.
        let other = RecoveryScope { key_groups: KeyGroups::new(128).unwrap(), ..all };
        assert!(matches!(dir.recover(&other), Err(CheckpointError::KeyGroups { written: 64, configured: 128 })));
        fs::remove_dir_all(root).unwrap();
    }
}
