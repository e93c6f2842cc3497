//! The archive as a version's backlog (`squall deploy --backfill`): per partition, its files from
//! an offset on, each read and checked whole on the runtime a file ahead of the worker, and handed
//! to the source a batch of rows at a time.
//!
//! # Notes
//! A file is read whole and checked (size, checksum, every row) before any of its rows is given,
//! so a corrupted or truncated file gives an error naming it and nothing of it. Rows carry the
//! decoded event only when the version decodes with the limits the archive used
//! (`DecodeLimits::default()`); otherwise the source decodes the value itself, as from Kafka.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use arrow_array::{Array, BinaryArray, Int64Array, RecordBatch, StringArray, UInt64Array};
use squall_operators::backfill::{Archived, Backlog, BacklogError, Cursor, Extent};
use squall_operators::event::{AdImpression, DecodeLimits, Event, EventKind, SongCompletion};
use squall_operators::source::Partition;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use crate::file::canonical_json;
use crate::layout::FileEntry;
use crate::store::{Archive, ArchivedFile, ListError, ReadError};

/// Files read ahead of the one being handed out, per partition.
const AHEAD: usize = 2;

/// The files of an archive for a version's partitions, listed once from the manifest.
#[derive(Debug)]
pub struct ArchiveBacklog {
    archive: Archive,
    files: BTreeMap<Partition, Vec<FileEntry>>,
    runtime: Handle,
}

impl ArchiveBacklog {
    /// Lists `archive`'s files of `partitions` (checked to be contiguous); files are read on `runtime`.
    pub async fn list(
        archive: Archive,
        partitions: &[(Partition, EventKind)],
        runtime: Handle,
    ) -> Result<ArchiveBacklog, ListError> {
        let wanted: BTreeSet<&Partition> = partitions.iter().map(|(p, _)| p).collect();
        let topics: BTreeSet<&str> = wanted.iter().map(|p| p.topic.as_str()).collect();
        let mut files = BTreeMap::new();
        for topic in topics {
            for (partition, entries) in archive.list_topic(topic).await? {
                let p = Partition { topic: topic.to_owned(), partition };
                if wanted.contains(&p) && !entries.is_empty() {
                    files.insert(p, entries);
                }
            }
        }
        Ok(ArchiveBacklog { archive, files, runtime })
    }

    /// Files and records of `partition` left to read from offset `from` on (all of them without).
    pub fn remaining(&self, partition: &Partition, from: Option<i64>) -> (u64, u64) {
        let from = from.unwrap_or(i64::MIN);
        self.files
            .get(partition)
            .into_iter()
            .flatten()
            .filter(|f| f.last_offset >= from)
            .fold((0, 0), |(files, rows), f| (files + 1, rows + f.rows))
    }
}

impl Backlog for ArchiveBacklog {
    fn extents(&self) -> BTreeMap<Partition, Extent> {
        self.files
            .iter()
            .filter_map(|(p, files)| {
                let (first, last) = (files.first()?, files.last()?);
                Some((p.clone(), Extent { first: first.from_offset, last: last.last_offset }))
            })
            .collect()
    }

    fn open(
        &self,
        partition: &Partition,
        kind: EventKind,
        from: i64,
        since_ms: Option<i64>,
        limits: &DecodeLimits,
    ) -> Result<Box<dyn Cursor>, BacklogError> {
        let files: VecDeque<FileEntry> = self
            .files
            .get(partition)
            .into_iter()
            .flatten()
            .filter(|f| f.last_offset >= from)
            // A file whose events are all older than `since` is skipped whole.
            .filter(|f| match (since_ms, f.ts_range) {
                (Some(since), Some((_, newest))) => newest >= since,
                _ => true,
            })
            .cloned()
            .collect();
        Ok(Box::new(ArchiveCursor {
            archive: self.archive.clone(),
            files,
            from,
            kind,
            use_decoded: *limits == DecodeLimits::default(),
            runtime: self.runtime.clone(),
            ahead: VecDeque::new(),
            current: None,
        }))
    }
}

/// One partition's files, a file read ahead.
struct ArchiveCursor {
    archive: Archive,
    files: VecDeque<FileEntry>,
    from: i64,
    kind: EventKind,
    use_decoded: bool,
    runtime: Handle,
    ahead: VecDeque<JoinHandle<Result<ArchivedFile, ReadError>>>,
    /// The file being handed out: its batches, and the next (batch, row).
    current: Option<(ArchivedFile, usize, usize)>,
}

impl ArchiveCursor {
    /// Starts reading the next files, up to [`AHEAD`] at a time.
    fn read_ahead(&mut self) {
        while self.ahead.len() < AHEAD {
            let Some(entry) = self.files.pop_front() else { break };
            let archive = self.archive.clone();
            self.ahead.push_back(self.runtime.spawn(async move { archive.read(&entry).await }));
        }
    }

    /// The next file, read and checked; `None`: no file is left.
    fn next_file(&mut self) -> Result<Option<ArchivedFile>, BacklogError> {
        self.read_ahead();
        let Some(reading) = self.ahead.pop_front() else { return Ok(None) };
        let read = self.runtime.block_on(reading).map_err(|e| BacklogError { what: format!("reading a file: {e}") })?;
        let file = read.map_err(|e| BacklogError { what: e.to_string() })?;
        self.read_ahead();
        Ok(Some(file))
    }
}

impl Cursor for ArchiveCursor {
    fn next_batch(&mut self, max: usize, out: &mut Vec<Archived>) -> Result<(), BacklogError> {
        let mut given = 0;
        while given < max {
            if self.current.is_none() {
                match self.next_file()? {
                    Some(file) => self.current = Some((file, 0, 0)),
                    None => break,
                }
            }
            let Some((file, b, r)) = &mut self.current else { break };
            let Some(batch) = file.batches.get(*b) else {
                self.current = None;
                continue;
            };
            let rows = Rows::of(batch);
            while *r < batch.num_rows() && given < max {
                if rows.offset.value(*r) >= self.from {
                    out.push(rows.archived(*r, self.kind, self.use_decoded));
                    given += 1;
                }
                *r += 1;
            }
            if *r == batch.num_rows() {
                (*b, *r) = (*b + 1, 0);
            }
        }
        Ok(())
    }
}

/// The columns of a batch a replay reads (the schema was checked when the file was read).
struct Rows<'b> {
    offset: &'b Int64Array,
    key: &'b BinaryArray,
    value: &'b BinaryArray,
    event_id: &'b StringArray,
    user_id: &'b StringArray,
    ts: &'b Int64Array,
    track_id: &'b StringArray,
    ms_played: &'b UInt64Array,
    ad_id: &'b StringArray,
}

impl<'b> Rows<'b> {
    fn of(batch: &'b RecordBatch) -> Rows<'b> {
        fn col<'b, T: 'static>(batch: &'b RecordBatch, name: &str) -> &'b T {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<T>())
                .expect("the archive's schema, checked when the file was read")
        }
        Rows {
            offset: col(batch, "offset"),
            key: col(batch, "key"),
            value: col(batch, "value"),
            event_id: col(batch, "event_id"),
            user_id: col(batch, "user_id"),
            ts: col(batch, "ts"),
            track_id: col(batch, "track_id"),
            ms_played: col(batch, "ms_played"),
            ad_id: col(batch, "ad_id"),
        }
    }

    /// The event the archiver decoded from row `i`, if it decoded.
    fn event(&self, i: usize, kind: EventKind) -> Option<Event> {
        if !(self.event_id.is_valid(i) && self.user_id.is_valid(i) && self.ts.is_valid(i)) {
            return None;
        }
        let (event_id, user_id, ts) = (self.event_id.value(i).into(), self.user_id.value(i).into(), self.ts.value(i));
        Some(match kind {
            EventKind::Song => Event::Song(SongCompletion {
                event_id,
                user_id,
                track_id: self.track_id.value(i).into(),
                ms_played: self.ms_played.value(i),
                ts,
            }),
            EventKind::Ad => Event::Ad(AdImpression { event_id, user_id, ad_id: self.ad_id.value(i).into(), ts }),
        })
    }

    /// Row `i` as the source takes it: the decoded event (the value left out), or the value
    /// byte for byte for the source to decode (a dead letter, or other limits).
    fn archived(&self, i: usize, kind: EventKind, use_decoded: bool) -> Archived {
        let offset = self.offset.value(i);
        let event = self.event(i, kind);
        if use_decoded && let Some(e) = event {
            // The key only goes to the dead-letter topic, which a decoded event never reaches.
            return Archived { offset, key: None, payload: Vec::new(), decoded: Some(Ok(e)) };
        }
        let key = self.key.is_valid(i).then(|| self.key.value(i).to_vec());
        let payload = if self.value.is_valid(i) {
            self.value.value(i).to_vec()
        } else {
            let mut out = Vec::with_capacity(128);
            if let Some(e) = &event {
                canonical_json(e, &mut out);
            }
            out
        };
        Archived { offset, key, payload, decoded: None }
    }
}
