//! An archive in an object store: writing a file durably, listing the manifest, reading files.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::RecordBatch;
use futures::TryStreamExt as _;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};

use crate::file::{ArchivedRecord, EncodedFile, FileError, decode_file, records};
use crate::layout::{FileEntry, is_entry_name, manifest_dir, manifest_path, partition_of_manifest_dir, pending_path};

/// Why an archive URL could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The URL is not one `object_store` understands.
    #[error("archive URL {url}: {detail} (use a directory path, file://, s3://, gs:// or az://)")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A local directory could not be created.
    #[error("archive directory {path}: {source}")]
    Dir {
        /// The directory.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Why a file could not be stored.
#[derive(Debug, thiserror::Error)]
#[error("storing {path}: {source} (nothing was committed; a retry or restart writes it again)")]
pub struct PutError {
    /// The object that failed.
    pub path: String,
    /// The store's error.
    pub source: object_store::Error,
}

/// Why the manifest could not be listed, or is inconsistent.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// The store failed.
    #[error("listing {path}: {source}")]
    Store {
        /// The prefix or entry.
        path: String,
        /// The store's error.
        source: object_store::Error,
    },
    /// An entry is not valid JSON of a [`FileEntry`].
    #[error("manifest entry {path}: {detail}")]
    Entry {
        /// The entry.
        path: String,
        /// The parse error.
        detail: String,
    },
    /// Two files hold some of the same offsets.
    #[error(
        "{topic} partition {partition}: {a} and {b} overlap (offsets {overlap_from}..={overlap_to} are in both); \
         the archive was written by two archivers or altered by hand"
    )]
    Overlap {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The earlier file.
        a: String,
        /// The later file.
        b: String,
        /// First offset in both.
        overlap_from: i64,
        /// Last offset in both.
        overlap_to: i64,
    },
    /// Offsets between two files are in neither.
    #[error(
        "{topic} partition {partition}: offsets {gap_from}..={gap_to} are missing between {a} and {b}; \
         the archive is incomplete there"
    )]
    Gap {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The earlier file.
        a: String,
        /// The later file.
        b: String,
        /// First missing offset.
        gap_from: i64,
        /// Last missing offset.
        gap_to: i64,
    },
}

/// Why a data file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The store failed (or the file is missing).
    #[error("reading {path}: {source}")]
    Store {
        /// The data file.
        path: String,
        /// The store's error.
        source: object_store::Error,
    },
    /// The file is corrupted, truncated or not an archive file; nothing from it was returned.
    #[error("archive file {path} is unusable: {source}")]
    File {
        /// The data file.
        path: String,
        /// What is wrong.
        source: FileError,
    },
}

/// An archive: a root in an object store holding data files and their manifest.
#[derive(Clone, Debug)]
pub struct Archive {
    store: Arc<dyn ObjectStore>,
    root: Path,
    url: String,
    /// The directory, when the store is a local one: what it writes is synced to disk.
    local: Option<std::path::PathBuf>,
}

/// A data file read and checked: its record batches, all decoded before any is handed out.
#[derive(Clone, Debug)]
pub struct ArchivedFile {
    /// Its manifest entry.
    pub entry: FileEntry,
    /// Its rows (the archive's schema, [`crate::file::schema`]), in offset order.
    pub batches: Vec<RecordBatch>,
}

impl ArchivedFile {
    /// Its records, values rebuilt byte for byte, in offset order.
    pub fn records(&self) -> impl Iterator<Item = ArchivedRecord> + '_ {
        records(&self.batches)
    }
}

impl Archive {
    /// Opens the archive at `url`: a local directory (created if absent) or `file://`, `s3://`,
    /// `gs://`, `az://` URLs, configured from the environment the way `object_store`'s builders
    /// name their options: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
    /// `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, `GOOGLE_*`, `AZURE_*`.
    pub fn open(url: &str) -> Result<Archive, OpenError> {
        let options = std::env::vars()
            .filter(|(k, _)| k.starts_with("AWS_") || k.starts_with("GOOGLE_") || k.starts_with("AZURE_"));
        Archive::open_with(url, options)
    }

    /// Opens the archive at `url` with these object store options (e.g. `("aws_endpoint", ..)`;
    /// names are case-insensitive, unknown ones are ignored) instead of the environment's.
    pub fn open_with(url: &str, options: impl IntoIterator<Item = (String, String)>) -> Result<Archive, OpenError> {
        let bad = |detail: String| OpenError::Url { url: url.to_owned(), detail };
        let parsed = if url.contains("://") {
            url::Url::parse(url).map_err(|e| bad(e.to_string()))?
        } else {
            std::fs::create_dir_all(url).map_err(|source| OpenError::Dir { path: url.to_owned(), source })?;
            let abs = std::fs::canonicalize(url).map_err(|source| OpenError::Dir { path: url.to_owned(), source })?;
            url::Url::from_directory_path(&abs).map_err(|()| bad("not an absolute directory".into()))?
        };
        let mut local = None;
        if parsed.scheme() == "file" {
            let dir = parsed.to_file_path().map_err(|()| bad("not a local path".into()))?;
            std::fs::create_dir_all(&dir)
                .map_err(|source| OpenError::Dir { path: dir.display().to_string(), source })?;
            local = Some(dir);
        }
        let options = options.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v));
        let (store, root) = object_store::parse_url_opts(&parsed, options).map_err(|e| bad(e.to_string()))?;
        Ok(Archive { store: Arc::from(store), root, url: url.to_owned(), local })
    }

    /// An archive in `store` under `root` (for tests and embedding).
    pub fn new(store: Arc<dyn ObjectStore>, root: Path) -> Archive {
        Archive { store, root, url: "(in memory)".into(), local: None }
    }

    /// The URL it was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn path(&self, rel: &Path) -> Path {
        self.root.parts().chain(rel.parts()).collect()
    }

    async fn put(&self, rel: &Path, bytes: impl Into<PutPayload>) -> Result<(), PutError> {
        self.store
            .put(&self.path(rel), bytes.into())
            .await
            .map(|_| ())
            .map_err(|source| PutError { path: rel.to_string(), source })?;
        if let Some(dir) = &self.local {
            // The local store writes a temporary file and renames it, with no sync: a power loss
            // could lose a file whose offsets were then committed. Sync the file, then its
            // directory (the rename).
            let file = dir.join(rel.as_ref());
            sync(&file, false).await.map_err(|e| PutError { path: rel.to_string(), source: e })?;
            if let Some(parent) = file.parent() {
                sync(parent, true).await.map_err(|e| PutError { path: rel.to_string(), source: e })?;
            }
        }
        Ok(())
    }

    /// Stores a data file, then its manifest entry.
    ///
    /// A pending marker holding the entry is written first and removed last, so a crash at any
    /// point leaves either no trace in the manifest or the complete file:
    /// [`Archive::recover`] finishes or undoes the interrupted write. Storing the same file again
    /// writes the same objects (names and bytes depend only on the records).
    pub async fn put_file(&self, file: &EncodedFile) -> Result<(), PutError> {
        let e = &file.entry;
        let entry = serde_json::to_vec_pretty(e).expect("entries serialize");
        let pending = pending_path(&e.topic, e.partition);
        self.put(&pending, entry.clone()).await?;
        self.put(&Path::from(e.path.as_str()), file.bytes.clone()).await?;
        self.put(&manifest_path(&e.topic, e.partition, e.first_offset, e.last_offset), entry).await?;
        self.store.delete(&self.path(&pending)).await.map_err(|source| PutError { path: pending.to_string(), source })
    }

    /// Finishes or undoes a write a crash interrupted in `topic` partition `partition`: if the
    /// pending marker's data file is there with the size it names, its entry is written;
    /// otherwise the partial data file is deleted. Returns whether there was one.
    pub async fn recover(&self, topic: &str, partition: i32) -> Result<bool, PutError> {
        let pending = pending_path(topic, partition);
        let err = |path: &Path| {
            let path = path.to_string();
            move |source| PutError { path, source }
        };
        let bytes = match self.store.get(&self.path(&pending)).await {
            Ok(got) => got.bytes().await.map_err(err(&pending))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(err(&pending)(e)),
        };
        let entry: Option<FileEntry> = serde_json::from_slice(&bytes).ok();
        if let Some(e) = entry {
            let data = Path::from(e.path.as_str());
            match self.store.head(&self.path(&data)).await {
                Ok(meta) if meta.size == e.bytes => {
                    let m = manifest_path(topic, partition, e.first_offset, e.last_offset);
                    self.put(&m, serde_json::to_vec_pretty(&e).expect("entries serialize")).await?;
                    tracing::info!(topic, partition, file = %e.path, "recovered a file written before a crash");
                }
                Ok(_) => {
                    self.store.delete(&self.path(&data)).await.map_err(err(&data))?;
                    tracing::info!(topic, partition, file = %e.path, "deleted a partial file written before a crash");
                }
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(err(&data)(e)),
            }
        }
        self.store.delete(&self.path(&pending)).await.map_err(err(&pending))?;
        Ok(true)
    }

    /// The partitions of `topic` that have manifest entries.
    pub async fn partitions(&self, topic: &str) -> Result<Vec<i32>, ListError> {
        let dir = Path::from(format!("{topic}/manifest"));
        let listed = self
            .store
            .list_with_delimiter(Some(&self.path(&dir)))
            .await
            .map_err(|source| ListError::Store { path: dir.to_string(), source })?;
        let mut out: Vec<i32> =
            listed.common_prefixes.iter().filter_map(|p| p.filename().and_then(partition_of_manifest_dir)).collect();
        out.sort_unstable();
        Ok(out)
    }

    /// The files of `topic` partition `partition`, in offset order, checked to be contiguous:
    /// each begins right after the previous one ends.
    pub async fn list(&self, topic: &str, partition: i32) -> Result<Vec<FileEntry>, ListError> {
        let dir = manifest_dir(topic, partition);
        let store_err = |path: &Path| {
            let path = path.to_string();
            move |source| ListError::Store { path, source }
        };
        let metas: Vec<_> = self.store.list(Some(&self.path(&dir))).try_collect().await.map_err(store_err(&dir))?;
        let mut names: Vec<Path> =
            metas.into_iter().map(|m| m.location).filter(|p| p.filename().is_some_and(is_entry_name)).collect();
        names.sort();
        let mut entries = Vec::with_capacity(names.len());
        for name in names {
            let bytes =
                self.store.get(&name).await.map_err(store_err(&name))?.bytes().await.map_err(store_err(&name))?;
            let entry: FileEntry = serde_json::from_slice(&bytes)
                .map_err(|e| ListError::Entry { path: name.to_string(), detail: e.to_string() })?;
            entries.push(entry);
        }
        entries.sort_by_key(|e| e.first_offset);
        for w in entries.windows(2) {
            let (a, b) = (&w[0], &w[1]);
            let (pa, pb) = (a.path.clone(), b.path.clone());
            if b.from_offset <= a.last_offset {
                return Err(ListError::Overlap {
                    topic: topic.into(),
                    partition,
                    a: pa,
                    b: pb,
                    overlap_from: b.from_offset,
                    overlap_to: a.last_offset.min(b.last_offset),
                });
            }
            if b.from_offset > a.last_offset + 1 {
                return Err(ListError::Gap {
                    topic: topic.into(),
                    partition,
                    a: pa,
                    b: pb,
                    gap_from: a.last_offset + 1,
                    gap_to: b.from_offset - 1,
                });
            }
        }
        Ok(entries)
    }

    /// Every partition's files of `topic` (see [`Archive::list`]).
    pub async fn list_topic(&self, topic: &str) -> Result<BTreeMap<i32, Vec<FileEntry>>, ListError> {
        let mut out = BTreeMap::new();
        for p in self.partitions(topic).await? {
            out.insert(p, self.list(topic, p).await?);
        }
        Ok(out)
    }

    /// The last archived offset of each partition of `topic` that has files; the next record to
    /// archive (or to read from Kafka after the archive) is this plus one.
    pub async fn last_offsets(&self, topic: &str) -> Result<BTreeMap<i32, i64>, ListError> {
        Ok(self
            .list_topic(topic)
            .await?
            .into_iter()
            .filter_map(|(p, files)| files.last().map(|f| (p, f.last_offset)))
            .collect())
    }

    /// Reads and checks one data file: its size and checksum must match the entry, and it must
    /// decode completely, or nothing from it is returned and the error names it.
    pub async fn read(&self, entry: &FileEntry) -> Result<ArchivedFile, ReadError> {
        let batches = self.checked(entry, decode_file).await?;
        Ok(ArchivedFile { entry: entry.clone(), batches })
    }

    /// Fetches and checks one data file, to be decoded `block` rows at a time
    /// ([`crate::file::FileBlocks`]): only its compressed bytes are held until then. A local
    /// archive's file is checked and then read from disk a page at a time as it is decoded.
    pub async fn read_blocks(&self, entry: &FileEntry, block: usize) -> Result<crate::file::FileBlocks, ReadError> {
        self.read_blocks_of(entry, block, None).await
    }

    /// [`Archive::read_blocks`] decoding only `columns` (and `offset`): what a reader that needs
    /// a few columns holds is those columns' pages, not every column's.
    pub async fn read_blocks_of(
        &self,
        entry: &FileEntry,
        block: usize,
        columns: Option<&'static [&'static str]>,
    ) -> Result<crate::file::FileBlocks, ReadError> {
        use crate::file::FileBlocks;
        let Some(dir) = &self.local else {
            return self
                .checked(entry, move |e, bytes| match columns {
                    None => FileBlocks::open(e, bytes, block),
                    Some(c) => FileBlocks::open_columns(e, bytes, block, c),
                })
                .await;
        };
        let (e, path) = (entry.clone(), dir.join(&entry.path));
        tokio::task::spawn_blocking(move || match columns {
            None => FileBlocks::open_file(&e, &path, block),
            Some(c) => FileBlocks::open_file_columns(&e, &path, block, c),
        })
        .await
        .expect("checking a file does not panic")
        .map_err(|source| ReadError::File { path: entry.path.clone(), source })
    }

    /// Fetches a data file's bytes and hands them with its entry to `check` (size, checksum,
    /// decoding) off the runtime's threads; its error names the file.
    async fn checked<T: Send + 'static>(
        &self,
        entry: &FileEntry,
        check: impl FnOnce(&FileEntry, bytes::Bytes) -> Result<T, FileError> + Send + 'static,
    ) -> Result<T, ReadError> {
        let path = Path::from(entry.path.as_str());
        let store_err = |source| ReadError::Store { path: entry.path.clone(), source };
        let bytes = self.store.get(&self.path(&path)).await.map_err(store_err)?.bytes().await.map_err(store_err)?;
        let e = entry.clone();
        tokio::task::spawn_blocking(move || check(&e, bytes))
            .await
            .expect("checking a file does not panic")
            .map_err(|source| ReadError::File { path: entry.path.clone(), source })
    }
}

/// Syncs a local file (or directory) to disk.
async fn sync(path: &std::path::Path, dir: bool) -> Result<(), object_store::Error> {
    let what = if dir { "directory" } else { "file" };
    let failed = |source: std::io::Error| object_store::Error::Generic {
        store: "LocalFileSystem",
        source: format!("cannot sync the {what} {}: {source}", path.display()).into(),
    };
    let f = tokio::fs::File::open(path).await.map_err(failed)?;
    f.sync_all().await.map_err(failed)
}

#[cfg(test)]
mod tests {
    use squall_operators::event::{DecodeLimits, DlqReason, EventKind, decode};

    use super::*;
    use crate::archiver::TopicSpec;
    use crate::file::{FileBuilder, RawRecord};

    const SONG: &str = "song-completions";

    fn song(i: i64) -> Vec<u8> {
        format!(
            r#"{{"event_id":"e{i}","user_id":"u{}","track_id":"t{}","ms_played":{},"ts":{}}}"#,
            i % 7,
            i % 5,
            1000 + i,
            1_763_750_000_000 + i
        )
        .into_bytes()
    }

    /// Offsets `from..to` of partition 0: canonical songs, with a few oddities mixed in.
    fn values(from: i64, to: i64) -> Vec<(i64, Vec<u8>)> {
        (from..to)
            .map(|i| {
                let v = match i % 10 {
                    3 => b"{not json".to_vec(),
                    5 => format!(
                        r#"{{ "ts": {}, "event_id": "e{i}", "user_id": "u1", "track_id": "t1", "ms_played": 5 }}"#,
                        1_763_750_000_000 + i
                    )
                    .into_bytes(),
                    7 => r#"{"event_id":"x","user_id":"u1","track_id":"t1","ms_played":-1,"ts":1}"#.as_bytes().to_vec(),
                    _ => song(i),
                };
                (i, v)
            })
            .collect()
    }

    fn encode(from_offset: i64, records: &[(i64, Vec<u8>)]) -> EncodedFile {
        let mut b = FileBuilder::new(SONG, 0, EventKind::Song, DecodeLimits::default(), from_offset);
        for (o, v) in records {
            let key = (o % 4 != 0).then(|| format!("u{}", o % 7).into_bytes());
            b.push(RawRecord {
                offset: *o,
                timestamp: (o % 9 != 0).then_some(1_763_750_000_000 + o),
                key: key.as_deref(),
                value: v,
            });
        }
        b.finish().unwrap().unwrap()
    }

    fn local() -> (tempfile::TempDir, Archive) {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::open(dir.path().join("archive").to_str().unwrap()).unwrap();
        (dir, archive)
    }

    /// A file read a block at a time gives the rows `read` gives, and before each block the least
    /// `ts` of the rows left, however out of order the file is; a file whose rows disagree with
    /// its entry fails at its end.
    #[tokio::test]
    async fn a_file_read_in_blocks_knows_how_far_back_its_rest_reaches() {
        let (_dir, local) = local();
        let memory = Archive::new(Arc::new(object_store::memory::InMemory::new()), Path::from("archive"));
        // Read from disk a page at a time, and fetched whole from an object store.
        for archive in [local, memory] {
            blocks_know_how_far_back_their_rest_reaches(archive).await;
        }
    }

    /// A local file read a page at a time is checked whole first: one byte changed on disk and
    /// nothing is decoded from it, the error names it.
    #[tokio::test]
    async fn a_local_file_altered_on_disk_is_refused_before_any_block() {
        let (dir, archive) = local();
        archive.put_file(&encode(0, &values(0, 100))).await.unwrap();
        let entry = archive.list(SONG, 0).await.unwrap().remove(0);
        let path = dir.path().join("archive").join(&entry.path);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[100] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let err = archive.read_blocks(&entry, 64).await.err().expect("refused").to_string();
        assert!(err.contains(&entry.path) && err.contains("xxh3"), "{err}");
    }

    async fn blocks_know_how_far_back_their_rest_reaches(archive: Archive) {
        // Event times out of order: a permutation of 1000 milliseconds.
        let input: Vec<(i64, Vec<u8>)> = (0..1000i64)
            .map(|i| {
                let ts = 1_763_750_000_000 + (i * 7919) % 1000;
                let v =
                    format!(r#"{{"event_id":"e{i}","user_id":"u{}","track_id":"t1","ms_played":9,"ts":{ts}}}"#, i % 7);
                (i, if i % 10 == 3 { b"{not json".to_vec() } else { v.into_bytes() })
            })
            .collect();
        archive.put_file(&encode(0, &input)).await.unwrap();
        let entry = archive.list(SONG, 0).await.unwrap().remove(0);
        let whole: Vec<ArchivedRecord> = archive.read(&entry).await.unwrap().records().collect();
        let mut blocks = archive.read_blocks(&entry, 64).await.unwrap();
        let mut read: Vec<ArchivedRecord> = Vec::new();
        loop {
            let left = whole[read.len()..].iter().filter_map(|r| r.event.as_ref().map(|e| e.ts())).min();
            assert_eq!(blocks.least_ahead(), left.unwrap_or(i64::MAX), "after {} rows", read.len());
            match blocks.next_block() {
                Some(b) => read.extend(records(&[b.unwrap()])),
                None => break,
            }
        }
        assert_eq!(read, whole);
        let mut wrong = entry.clone();
        wrong.rows += 1;
        // (The checksum is the file's, so only the rows can disagree.)
        let mut blocks = archive.read_blocks(&wrong, 64).await.unwrap();
        let last = std::iter::from_fn(|| blocks.next_block()).last().unwrap();
        assert!(last.unwrap_err().to_string().contains("the manifest says 1001"));

        // Some columns only: those and `offset`, in the archive's order, with the same values
        // and the same checks.
        use arrow_array::Array as _;
        const COLUMNS: &[&str] = &["ts", "user_id"];
        let mut blocks = archive.read_blocks_of(&entry, 64, Some(COLUMNS)).await.unwrap();
        let mut rows = 0;
        while let Some(b) = blocks.next_block() {
            let b = b.unwrap();
            let names: Vec<&str> = b.schema_ref().fields().iter().map(|f| f.name().as_str()).collect();
            assert_eq!(names, ["offset", "user_id", "ts"]);
            let (offset, user, ts) = (
                b.column(0).as_any().downcast_ref::<arrow_array::Int64Array>().unwrap(),
                b.column(1).as_any().downcast_ref::<arrow_array::StringArray>().unwrap(),
                b.column(2).as_any().downcast_ref::<arrow_array::Int64Array>().unwrap(),
            );
            for i in 0..b.num_rows() {
                let r = &whole[rows + i];
                assert_eq!(offset.value(i), r.offset);
                let event = r.event.as_ref().map(|e| (e.user_id().to_owned(), e.ts()));
                assert_eq!(user.is_valid(i).then(|| (user.value(i).to_owned(), ts.value(i))), event);
            }
            rows += b.num_rows();
        }
        assert_eq!(rows, whole.len());
        let mut blocks = archive.read_blocks_of(&wrong, 64, Some(COLUMNS)).await.unwrap();
        let last = std::iter::from_fn(|| blocks.next_block()).last().unwrap();
        assert!(last.unwrap_err().to_string().contains("the manifest says 1001"));
    }

    #[tokio::test]
    async fn a_file_reads_back_as_written_with_the_decoders_columns() {
        let (_dir, archive) = local();
        let input = values(0, 1000);
        archive.put_file(&encode(0, &input)).await.unwrap();
        let files = archive.list(SONG, 0).await.unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(
            (files[0].from_offset, files[0].first_offset, files[0].last_offset, files[0].rows),
            (0, 0, 999, 1000)
        );
        assert_eq!(files[0].dlq_rows, 200);
        assert!(files[0].path.starts_with("song-completions/date=2025-11-21/partition=0/"), "{}", files[0].path);
        let read = archive.read(&files[0]).await.unwrap();
        let records: Vec<_> = read.records().collect();
        assert_eq!(records.len(), input.len());
        for (r, (o, v)) in records.iter().zip(&input) {
            assert_eq!((r.topic.as_str(), r.partition, r.offset), (SONG, 0, *o));
            assert_eq!(&r.value, v, "offset {o}");
            assert_eq!(r.timestamp, (o % 9 != 0).then_some(1_763_750_000_000 + o));
            assert_eq!(r.key, (o % 4 != 0).then(|| format!("u{}", o % 7).into_bytes()));
            match decode(EventKind::Song, v, &DecodeLimits::default()) {
                Ok(e) => assert_eq!((r.event.as_ref(), r.dlq_reason), (Some(&e), None)),
                Err(e) => assert_eq!((r.event.as_ref(), r.dlq_reason), (None, Some(e.reason))),
            }
        }
        assert_eq!(records[3].dlq_reason, Some(DlqReason::MalformedJson));
        assert_eq!(records[7].dlq_reason, Some(DlqReason::InvalidValue));
        assert_eq!(archive.last_offsets(SONG).await.unwrap(), BTreeMap::from([(0, 999)]));
    }

    #[test]
    fn canonical_json_is_what_producers_write() {
        for v in [song(1), br#"{"event_id":"e\"1\u00e9","user_id":"u1","ad_id":"a1","ts":1763750000000}"#.to_vec()] {
            let kind = if v.windows(5).any(|w| w == b"ad_id") { EventKind::Ad } else { EventKind::Song };
            let e = decode(kind, &v, &DecodeLimits::default()).unwrap();
            let mut out = Vec::new();
            crate::file::canonical_json(&e, &mut out);
            assert_eq!(out, e.to_json());
        }
    }

    #[tokio::test]
    async fn storing_a_file_again_writes_the_same_name_and_bytes() {
        let (dir, archive) = local();
        let input = values(0, 500);
        let a = encode(0, &input);
        archive.put_file(&a).await.unwrap();
        let path = dir.path().join("archive").join(&a.entry.path);
        let first = std::fs::read(&path).unwrap();
        let b = encode(0, &input);
        assert_eq!((&a.entry, &a.bytes), (&b.entry, &b.bytes));
        archive.put_file(&b).await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), first);
        assert_eq!(archive.list(SONG, 0).await.unwrap(), vec![a.entry]);
    }

    #[tokio::test]
    async fn corrupted_and_truncated_files_are_refused_by_name() {
        let (dir, archive) = local();
        let f = encode(0, &values(0, 300));
        archive.put_file(&f).await.unwrap();
        let path = dir.path().join("archive").join(&f.entry.path);
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x55;
        std::fs::write(&path, &bytes).unwrap();
        let err = archive.read(&f.entry).await.unwrap_err();
        assert!(matches!(err, ReadError::File { .. }), "{err:?}");
        assert!(err.to_string().contains(&f.entry.path), "{err}");
        std::fs::write(&path, &f.bytes[..f.bytes.len() - 100]).unwrap();
        let err = archive.read(&f.entry).await.unwrap_err();
        assert!(err.to_string().contains(&f.entry.path) && err.to_string().contains("bytes"), "{err}");
        // A file that is not Parquet at all, with a manifest that matches it: the decoder refuses it.
        let mut entry = f.entry.clone();
        entry.bytes = 4;
        entry.xxh3 = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(b"PAR1"));
        std::fs::write(&path, b"PAR1").unwrap();
        let err = archive.read(&entry).await.unwrap_err();
        assert!(
            err.to_string().contains("not a readable Parquet file") && err.to_string().contains(&entry.path),
            "{err}"
        );
        std::fs::remove_file(&path).unwrap();
        let err = archive.read(&f.entry).await.unwrap_err();
        assert!(matches!(err, ReadError::Store { .. }) && err.to_string().contains(&f.entry.path), "{err}");
    }

    #[tokio::test]
    async fn overlapping_files_and_gaps_are_refused() {
        let (_dir, archive) = local();
        archive.put_file(&encode(0, &values(0, 10))).await.unwrap();
        archive.put_file(&encode(10, &values(10, 20))).await.unwrap();
        assert_eq!(archive.list(SONG, 0).await.unwrap().len(), 2);
        let overlap = encode(15, &values(15, 25));
        archive.put_file(&overlap).await.unwrap();
        let err = archive.list(SONG, 0).await.unwrap_err();
        assert!(matches!(err, ListError::Overlap { overlap_from: 15, overlap_to: 19, .. }), "{err}");
        let m = manifest_path(SONG, 0, 15, 24);
        archive.store.delete(&archive.path(&m)).await.unwrap();
        archive.put_file(&encode(30, &values(30, 40))).await.unwrap();
        let err = archive.list(SONG, 0).await.unwrap_err();
        assert!(matches!(err, ListError::Gap { gap_from: 20, gap_to: 29, .. }), "{err}");
        assert!(err.to_string().contains("00000000000000000010-00000000000000000019.parquet"), "{err}");
        // Kafka may skip offsets inside a file's range: from_offset says where it begins.
        let skipping = encode(20, &values(25, 30));
        assert_eq!((skipping.entry.from_offset, skipping.entry.first_offset), (20, 25));
        archive.put_file(&skipping).await.unwrap();
        assert_eq!(archive.list(SONG, 0).await.unwrap().len(), 4);
    }

    #[tokio::test]
    async fn an_interrupted_write_is_finished_or_undone() {
        let (_dir, archive) = local();
        let f = encode(0, &values(0, 100));
        let pending = pending_path(SONG, 0);
        // Crash after the data file, before its entry: recovery writes the entry.
        archive.put(&pending, serde_json::to_vec(&f.entry).unwrap()).await.unwrap();
        archive.put(&Path::from(f.entry.path.as_str()), f.bytes.clone()).await.unwrap();
        assert_eq!(archive.list(SONG, 0).await.unwrap(), vec![]);
        assert!(archive.recover(SONG, 0).await.unwrap());
        assert_eq!(archive.list(SONG, 0).await.unwrap(), vec![f.entry.clone()]);
        assert!(!archive.recover(SONG, 0).await.unwrap());
        // Crash while the data file was written (partial): recovery deletes it.
        let g = encode(100, &values(100, 200));
        archive.put(&pending, serde_json::to_vec(&g.entry).unwrap()).await.unwrap();
        archive.put(&Path::from(g.entry.path.as_str()), g.bytes.slice(..10)).await.unwrap();
        assert!(archive.recover(SONG, 0).await.unwrap());
        assert_eq!(archive.list(SONG, 0).await.unwrap(), vec![f.entry]);
        let data = archive.path(&Path::from(g.entry.path.as_str()));
        assert!(matches!(archive.store.head(&data).await, Err(object_store::Error::NotFound { .. })));
    }

    #[tokio::test]
    async fn ndjson_exports_import_as_consecutive_offsets() {
        let (dir, archive) = local();
        let a = dir.path().join("a.ndjson");
        let b = dir.path().join("b.ndjson");
        let ad =
            |i: i64| format!(r#"{{"event_id":"e{i}","user_id":"u1","ad_id":"a{i}","ts":{}}}"#, 1_763_750_000_000 + i);
        std::fs::write(&a, format!("{}\r\n\n{}\nnot json\n", ad(0), ad(1))).unwrap();
        std::fs::write(&b, format!("{}\n{}", ad(2), ad(3))).unwrap();
        let topic: TopicSpec = "ad-impressions".parse().unwrap();
        let done =
            crate::import(&archive, &topic, 2, &[a.clone(), b.clone()], 2, DecodeLimits::default()).await.unwrap();
        assert_eq!((done.records, done.dead_letters, done.files, done.offsets), (5, 1, 3, Some((0, 4))));
        let again = crate::import(&archive, &topic, 2, &[b], 10, DecodeLimits::default()).await.unwrap();
        assert_eq!(again.offsets, Some((5, 6)));
        let files = archive.list("ad-impressions", 2).await.unwrap();
        let mut records = Vec::new();
        for f in &files {
            records.extend(archive.read(f).await.unwrap().records());
        }
        let values: Vec<String> = records.iter().map(|r| String::from_utf8(r.value.clone()).unwrap()).collect();
        assert_eq!(values, [ad(0), ad(1), "not json".into(), ad(2), ad(3), ad(2), ad(3)]);
        assert_eq!(records.iter().map(|r| r.offset).collect::<Vec<_>>(), (0..7).collect::<Vec<_>>());
        assert_eq!(records[2].dlq_reason, Some(DlqReason::MalformedJson));
        assert!(records.iter().all(|r| r.key.is_none() && r.timestamp.is_none() && r.partition == 2));
        assert!(files[0].path.starts_with("ad-impressions/date=2025-11-21/partition=2/"), "{}", files[0].path);
    }

    #[test]
    fn topic_specs() {
        assert_eq!("song-completions".parse::<TopicSpec>().unwrap().kind, EventKind::Song);
        assert_eq!("x=ad".parse::<TopicSpec>().unwrap(), TopicSpec { name: "x".into(), kind: EventKind::Ad });
        assert!("x".parse::<TopicSpec>().unwrap_err().contains("x=song"));
    }
}
