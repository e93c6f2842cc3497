//! The archive of the input topics: Parquet files in an object store, written by the archiver
//! (or imported from NDJSON), listed from a manifest and read back record by record.
//!
//! # Layout
//! Under the archive's root (a local directory, or `s3://`, `gs://`, `az://` by URL):
//!
//! ```text
//! <topic>/date=YYYY-MM-DD/partition=<p>/<first_offset:020>-<last_offset:020>.parquet
//! <topic>/manifest/partition=<p>/<first_offset:020>-<last_offset:020>.json   one FileEntry per data file
//! <topic>/manifest/partition=<p>/pending.json                                a write in progress
//! ```
//!
//! The date is the UTC day of the file's first record's Kafka timestamp (its first event time
//! when it has none, as imported records). Each row is one Kafka record with its topic,
//! partition, offset, timestamp, key and value, and the columns `squall_operators::event::decode`
//! gives it (`event_id`, `user_id`, `ts`, `track_id`, `ms_played`, `ad_id`) or its `dlq_reason`
//! ([`file::schema`]). A value that is exactly the canonical JSON of its decoded columns (what the
//! producers write, [`file::canonical_json`]) is stored as null and rebuilt on read, so the
//! archive holds each event's content once; any other value is stored as it was.
//!
//! # Invariants
//! - A manifest entry names a complete data file, with its size and XXH3 checksum; a reader
//!   lists a partition from the manifest alone, and refuses overlapping files or a gap between
//!   files ([`store::ListError`]). Reading a file checks size and checksum and decodes it
//!   completely before returning anything ([`store::ReadError`] names the file).
//! - A file is stored as: pending marker, data file, manifest entry, marker removed
//!   ([`Archive::put_file`]); a crash anywhere is finished or undone by [`Archive::recover`].
//!   File names and bytes depend only on the records, so storing a file again is idempotent.
//! - The archiver commits a partition's offsets to Kafka only after the file holding them is
//!   stored. On start, each partition resumes after the archive's last offset (the archive, not
//!   the group, is the source of truth), at the group's committed offset or the earliest retained
//!   one when the archive has none. It refuses to start when that would leave a gap: the group
//!   committed past the archive, or Kafka no longer holds the next offset.
//! - Run one archiver per archive: it assigns itself every partition (no rebalancing).

#![warn(missing_docs)]

pub mod archiver;
pub mod backlog;
pub mod file;
pub mod import;
pub mod layout;
pub mod store;

pub use archiver::{ArchiverConfig, ArchiverError, TopicSpec};
pub use backlog::ArchiveBacklog;
pub use file::{ArchivedRecord, EncodedFile, FileBuilder, RawRecord};
pub use import::{ImportError, Imported, import};
pub use layout::FileEntry;
pub use store::{Archive, ArchivedFile, ListError, OpenError, PutError, ReadError};
