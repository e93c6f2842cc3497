//! One data file: its Arrow schema, the builder that encodes records into Parquet bytes, and the
//! decoder that reads them back as record batches or [`ArchivedRecord`]s.

use std::io::Write as _;
use std::sync::{Arc, LazyLock};

use arrow_array::builder::{BinaryBuilder, Int64Builder, StringBuilder, UInt64Builder};
use arrow_array::{Array, ArrayRef, BinaryArray, Int32Array, Int64Array, RecordBatch, StringArray, UInt64Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterVersion};
use parquet::schema::types::ColumnPath;
use squall_operators::event::{DecodeLimits, DlqReason, Event, EventKind, decode};

use crate::layout::{FileEntry, data_path};

/// The archive's columns, in file order.
///
/// | column | type | null when |
/// |---|---|---|
/// | `topic` | utf8 | never |
/// | `partition` | int32 | never |
/// | `offset` | int64 | never |
/// | `timestamp` | int64 (Kafka timestamp, epoch ms) | the record has none |
/// | `key` | binary | the record has no key |
/// | `value` | binary | the value is exactly the canonical JSON of the decoded columns ([`canonical_json`]) |
/// | `event_id`, `user_id`, `ts` | utf8, utf8, int64 | the record did not decode |
/// | `track_id`, `ms_played` | utf8, uint64 | not a song completion |
/// | `ad_id` | utf8 | not an ad impression |
/// | `dlq_reason` | utf8 ([`DlqReason::as_str`]) | the record decoded |
pub fn schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        Arc::new(Schema::new(vec![
            Field::new("topic", DataType::Utf8, false),
            Field::new("partition", DataType::Int32, false),
            Field::new("offset", DataType::Int64, false),
            Field::new("timestamp", DataType::Int64, true),
            Field::new("key", DataType::Binary, true),
            Field::new("value", DataType::Binary, true),
            Field::new("event_id", DataType::Utf8, true),
            Field::new("user_id", DataType::Utf8, true),
            Field::new("ts", DataType::Int64, true),
            Field::new("track_id", DataType::Utf8, true),
            Field::new("ms_played", DataType::UInt64, true),
            Field::new("ad_id", DataType::Utf8, true),
            Field::new("dlq_reason", DataType::Utf8, true),
        ]))
    });
    SCHEMA.clone()
}

/// Dictionary pages for the repetitive columns, delta encoding for the increasing or clustered
/// integers and the event ids (which share prefixes), zstd over everything. Measured in
/// `benches/RESULTS.md` ("Archive").
fn writer_properties(rows: usize) -> WriterProperties {
    let col = ColumnPath::from;
    WriterProperties::builder()
        .set_writer_version(WriterVersion::PARQUET_2_0)
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("valid level")))
        .set_max_row_group_row_count(Some(rows.max(1)))
        .set_data_page_size_limit(4 << 20)
        .set_dictionary_page_size_limit(4 << 20)
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_column_dictionary_enabled(col("offset"), false)
        .set_column_encoding(col("offset"), Encoding::DELTA_BINARY_PACKED)
        .set_column_dictionary_enabled(col("timestamp"), false)
        .set_column_encoding(col("timestamp"), Encoding::DELTA_BINARY_PACKED)
        .set_column_dictionary_enabled(col("ts"), false)
        .set_column_encoding(col("ts"), Encoding::DELTA_BINARY_PACKED)
        .set_column_dictionary_enabled(col("event_id"), false)
        .set_column_encoding(col("event_id"), Encoding::DELTA_BYTE_ARRAY)
        .set_column_dictionary_enabled(col("value"), false)
        .build()
}

/// The canonical JSON of an event: what `squall-gen` and well-behaved producers write
/// (`{"event_id":..,"user_id":..,"track_id":..,"ms_played":..,"ts":..}` for songs,
/// `{"event_id":..,"user_id":..,"ad_id":..,"ts":..}` for ads, strings escaped as serde_json does).
///
/// A record whose value is byte for byte this is archived with a null `value`; readers rebuild it
/// from this function, which is fixed by the layout version (it does not follow later changes of
/// `Event::to_json`).
pub fn canonical_json(event: &Event, out: &mut Vec<u8>) {
    let string = |out: &mut Vec<u8>, s: &str| serde_json::to_writer(&mut *out, s).expect("writing to a Vec");
    out.extend_from_slice(b"{\"event_id\":");
    string(out, event.event_id());
    out.extend_from_slice(b",\"user_id\":");
    string(out, event.user_id());
    match event {
        Event::Song(e) => {
            out.extend_from_slice(b",\"track_id\":");
            string(out, &e.track_id);
            write!(out, ",\"ms_played\":{},\"ts\":{}}}", e.ms_played, e.ts).expect("writing to a Vec");
        }
        Event::Ad(e) => {
            out.extend_from_slice(b",\"ad_id\":");
            string(out, &e.ad_id);
            write!(out, ",\"ts\":{}}}", e.ts).expect("writing to a Vec");
        }
    }
}

/// One Kafka record to archive.
#[derive(Clone, Copy, Debug)]
pub struct RawRecord<'a> {
    /// Its offset in the partition.
    pub offset: i64,
    /// Its Kafka timestamp, epoch ms, if it has one.
    pub timestamp: Option<i64>,
    /// Its key.
    pub key: Option<&'a [u8]>,
    /// Its value (the payload); an absent value is archived as empty bytes.
    pub value: &'a [u8],
}

/// Accumulates one topic partition's records into the columns of one file.
pub struct FileBuilder {
    topic: String,
    partition: i32,
    kind: EventKind,
    limits: DecodeLimits,
    from_offset: i64,
    first_offset: Option<i64>,
    last_offset: i64,
    rows: usize,
    dlq_rows: u64,
    ts_range: Option<(i64, i64)>,
    timestamp_range: Option<(i64, i64)>,
    first_timestamp: Option<i64>,
    offset: Int64Builder,
    timestamp: Int64Builder,
    key: BinaryBuilder,
    value: BinaryBuilder,
    event_id: StringBuilder,
    user_id: StringBuilder,
    ts: Int64Builder,
    track_id: StringBuilder,
    ms_played: UInt64Builder,
    ad_id: StringBuilder,
    dlq_reason: StringBuilder,
    scratch: Vec<u8>,
}

fn widen(range: &mut Option<(i64, i64)>, v: i64) {
    *range = Some(match *range {
        None => (v, v),
        Some((lo, hi)) => (lo.min(v), hi.max(v)),
    });
}

impl FileBuilder {
    /// An empty file of `topic` (events of `kind`) partition `partition` that covers offsets from
    /// `from_offset` on.
    pub fn new(topic: &str, partition: i32, kind: EventKind, limits: DecodeLimits, from_offset: i64) -> Self {
        FileBuilder {
            topic: topic.to_owned(),
            partition,
            kind,
            limits,
            from_offset,
            first_offset: None,
            last_offset: from_offset - 1,
            rows: 0,
            dlq_rows: 0,
            ts_range: None,
            timestamp_range: None,
            first_timestamp: None,
            offset: Int64Builder::new(),
            timestamp: Int64Builder::new(),
            key: BinaryBuilder::new(),
            value: BinaryBuilder::new(),
            event_id: StringBuilder::new(),
            user_id: StringBuilder::new(),
            ts: Int64Builder::new(),
            track_id: StringBuilder::new(),
            ms_played: UInt64Builder::new(),
            ad_id: StringBuilder::new(),
            dlq_reason: StringBuilder::new(),
            scratch: Vec::with_capacity(256),
        }
    }

    /// Records added so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The first offset this file covers.
    pub fn from_offset(&self) -> i64 {
        self.from_offset
    }

    /// The offset after the last record added (where the next file begins).
    pub fn next_offset(&self) -> i64 {
        self.last_offset + 1
    }

    /// Decodes and appends one record.
    ///
    /// # Panics
    /// If `record.offset` is not above the previous record's (Kafka offsets only increase within
    /// a partition; the archiver and the import never do otherwise).
    pub fn push(&mut self, record: RawRecord<'_>) {
        assert!(
            record.offset > self.last_offset,
            "offsets must increase: {} after {}",
            record.offset,
            self.last_offset
        );
        if self.first_offset.is_none() {
            self.first_offset = Some(record.offset);
            self.first_timestamp = record.timestamp;
        }
        self.last_offset = record.offset;
        self.rows += 1;
        self.offset.append_value(record.offset);
        self.timestamp.append_option(record.timestamp);
        if let Some(t) = record.timestamp {
            widen(&mut self.timestamp_range, t);
        }
        self.key.append_option(record.key);
        match decode(self.kind, record.value, &self.limits) {
            Ok(event) => {
                self.scratch.clear();
                canonical_json(&event, &mut self.scratch);
                if self.scratch == record.value {
                    self.value.append_null();
                } else {
                    self.value.append_value(record.value);
                }
                self.event_id.append_value(event.event_id());
                self.user_id.append_value(event.user_id());
                self.ts.append_value(event.ts());
                widen(&mut self.ts_range, event.ts());
                match &event {
                    Event::Song(e) => {
                        self.track_id.append_value(&e.track_id);
                        self.ms_played.append_value(e.ms_played);
                        self.ad_id.append_null();
                    }
                    Event::Ad(e) => {
                        self.track_id.append_null();
                        self.ms_played.append_null();
                        self.ad_id.append_value(&e.ad_id);
                    }
                }
                self.dlq_reason.append_null();
            }
            Err(e) => {
                self.dlq_rows += 1;
                self.value.append_value(record.value);
                self.event_id.append_null();
                self.user_id.append_null();
                self.ts.append_null();
                self.track_id.append_null();
                self.ms_played.append_null();
                self.ad_id.append_null();
                self.dlq_reason.append_value(e.reason.as_str());
            }
        }
    }

    /// Encodes the records as one Parquet file and describes it; `None` if there are none.
    pub fn finish(mut self) -> Result<Option<EncodedFile>, parquet::errors::ParquetError> {
        let Some(first_offset) = self.first_offset else { return Ok(None) };
        let n = self.rows;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n(self.topic.as_str(), n))),
            Arc::new(Int32Array::from_value(self.partition, n)),
            Arc::new(self.offset.finish()),
            Arc::new(self.timestamp.finish()),
            Arc::new(self.key.finish()),
            Arc::new(self.value.finish()),
            Arc::new(self.event_id.finish()),
            Arc::new(self.user_id.finish()),
            Arc::new(self.ts.finish()),
            Arc::new(self.track_id.finish()),
            Arc::new(self.ms_played.finish()),
            Arc::new(self.ad_id.finish()),
            Arc::new(self.dlq_reason.finish()),
        ];
        let batch = RecordBatch::try_new(schema(), columns)?;
        let mut out = Vec::with_capacity(n * 16 + 4096);
        let mut writer = ArrowWriter::try_new(&mut out, schema(), Some(writer_properties(n)))?;
        writer.write(&batch)?;
        writer.close()?;
        let day = self.first_timestamp.or(self.ts_range.map(|r| r.0));
        let entry = FileEntry {
            version: 1,
            path: data_path(&self.topic, self.partition, day, first_offset, self.last_offset),
            topic: self.topic,
            partition: self.partition,
            from_offset: self.from_offset,
            first_offset,
            last_offset: self.last_offset,
            rows: n as u64,
            dlq_rows: self.dlq_rows,
            ts_range: self.ts_range,
            timestamp_range: self.timestamp_range,
            bytes: out.len() as u64,
            xxh3: format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&out)),
        };
        Ok(Some(EncodedFile { entry, bytes: Bytes::from(out) }))
    }
}

/// A data file encoded in memory, and its manifest entry.
#[derive(Clone, Debug)]
pub struct EncodedFile {
    /// What the manifest will say about it.
    pub entry: FileEntry,
    /// The Parquet bytes.
    pub bytes: Bytes,
}

/// Why a data file's bytes are not a valid archive file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Size or checksum differ from the manifest entry: the file was truncated or altered.
    #[error("{got} bytes with xxh3 {got_hash}, but the manifest says {want} bytes with xxh3 {want_hash}")]
    Checksum {
        /// Bytes read.
        got: u64,
        /// Their hash.
        got_hash: String,
        /// Bytes in the entry.
        want: u64,
        /// The entry's hash.
        want_hash: String,
    },
    /// Not a Parquet file this archive can read.
    #[error("not a readable Parquet file: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// The file's columns are not the archive's.
    #[error("unexpected schema: {0}")]
    Schema(String),
    /// The file's rows disagree with the manifest entry.
    #[error("{0}")]
    Content(String),
    /// A local file could not be read.
    #[error("cannot read the file: {0}")]
    Read(#[from] std::io::Error),
}

/// Checks `bytes` against `entry` and decodes them (every batch, before any is returned).
pub fn decode_file(entry: &FileEntry, bytes: Bytes) -> Result<Vec<RecordBatch>, FileError> {
    verify(entry, &bytes)?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?.with_batch_size(64 * 1024).build()?;
    let batches = reader.collect::<Result<Vec<_>, _>>().map_err(parquet::errors::ParquetError::from)?;
    let mut check = Rows::new(entry);
    for b in &batches {
        check.next(b)?;
    }
    check.end(entry)?;
    Ok(batches)
}

/// Size and checksum of `bytes` against the manifest entry.
fn verify(entry: &FileEntry, bytes: &Bytes) -> Result<(), FileError> {
    verify_sum(entry, bytes.len() as u64, xxhash_rust::xxh3::xxh3_64(bytes))
}

/// Checks the local file at `path` against `entry` as [`verify`] checks bytes, reading it a MiB
/// at a time (its bytes are not held).
fn verify_file(entry: &FileEntry, path: &std::path::Path) -> Result<(), FileError> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    let (mut hasher, mut buf, mut len) = (xxhash_rust::xxh3::Xxh3::new(), vec![0; 1 << 20], 0u64);
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    verify_sum(entry, len, hasher.digest())
}

fn verify_sum(entry: &FileEntry, len: u64, hash: u64) -> Result<(), FileError> {
    let got_hash = format!("{hash:016x}");
    if len != entry.bytes || got_hash != entry.xxh3 {
        return Err(FileError::Checksum { got: len, got_hash, want: entry.bytes, want_hash: entry.xxh3.clone() });
    }
    Ok(())
}

/// The checks of a file's rows as they are decoded: the archive's schema, increasing offsets, and
/// at the end the rows and last offset the manifest entry gives.
struct Rows {
    rows: u64,
    last: i64,
    /// The columns decoded: the archive's, or those of a projection.
    fields: arrow_schema::Fields,
}

impl Rows {
    fn new(entry: &FileEntry) -> Self {
        Rows { rows: 0, last: entry.from_offset - 1, fields: schema().fields().clone() }
    }

    fn next(&mut self, b: &RecordBatch) -> Result<(), FileError> {
        if *b.schema().fields() != self.fields {
            return Err(FileError::Schema(format!("{:?}", b.schema())));
        }
        for o in column::<Int64Array>(b, "offset").values().iter() {
            if *o <= self.last {
                return Err(FileError::Content(format!("offset {o} after {}", self.last)));
            }
            self.last = *o;
        }
        self.rows += b.num_rows() as u64;
        Ok(())
    }

    fn end(&self, entry: &FileEntry) -> Result<(), FileError> {
        if self.rows != entry.rows || self.last != entry.last_offset {
            return Err(FileError::Content(format!(
                "{} rows ending at offset {}, the manifest says {} ending at {}",
                self.rows, self.last, entry.rows, entry.last_offset
            )));
        }
        Ok(())
    }
}

/// A data file decoded a block of rows at a time, in offset order, so that only its compressed
/// bytes (or, read from a local file, each column's current page) and one block are held.
/// Before any block is decoded, the `ts` column alone is read to know, for every block, the least
/// event time of it and of every block after it: a reader merging several files by event time
/// knows how far each could still reach back.
pub struct FileBlocks {
    entry: FileEntry,
    reader: parquet::arrow::arrow_reader::ParquetRecordBatchReader,
    /// Per block: the least `ts` of it and every later block (`i64::MAX`: none).
    least_from: Vec<i64>,
    next: usize,
    check: Rows,
    /// The end was reached (and checked) or a block failed: nothing more.
    ended: bool,
}

impl FileBlocks {
    /// Checks `bytes` against `entry` and prepares to decode them `block` rows at a time.
    pub fn open(entry: &FileEntry, bytes: Bytes, block: usize) -> Result<FileBlocks, FileError> {
        verify(entry, &bytes)?;
        FileBlocks::decoding(entry, || Ok(bytes.clone()), block, None)
    }

    /// Checks the local file at `path` against `entry` and prepares to decode it `block` rows at
    /// a time, reading its pages from the file as they are decoded: neither its whole bytes nor
    /// their compressed form are held, only each column's current page.
    pub fn open_file(entry: &FileEntry, path: &std::path::Path, block: usize) -> Result<FileBlocks, FileError> {
        verify_file(entry, path)?;
        FileBlocks::decoding(entry, || Ok(std::fs::File::open(path)?), block, None)
    }

    /// [`FileBlocks::open_file`] decoding only `columns` (and `offset`, which the checks read), in
    /// the archive's column order: a column not decoded holds no page (nor dictionary) in memory.
    pub fn open_file_columns(
        entry: &FileEntry,
        path: &std::path::Path,
        block: usize,
        columns: &[&str],
    ) -> Result<FileBlocks, FileError> {
        verify_file(entry, path)?;
        FileBlocks::decoding(entry, || Ok(std::fs::File::open(path)?), block, Some(columns))
    }

    /// [`FileBlocks::open`] decoding only `columns`, as [`FileBlocks::open_file_columns`].
    pub fn open_columns(
        entry: &FileEntry,
        bytes: Bytes,
        block: usize,
        columns: &[&str],
    ) -> Result<FileBlocks, FileError> {
        verify(entry, &bytes)?;
        FileBlocks::decoding(entry, || Ok(bytes.clone()), block, Some(columns))
    }

    /// Reads the `ts` column of what `source` gives, then prepares to decode it all (or `columns`).
    fn decoding<T: parquet::file::reader::ChunkReader + 'static>(
        entry: &FileEntry,
        source: impl Fn() -> Result<T, FileError>,
        block: usize,
        columns: Option<&[&str]>,
    ) -> Result<FileBlocks, FileError> {
        let builder = ParquetRecordBatchReaderBuilder::try_new(source()?)?;
        let mask = parquet::arrow::ProjectionMask::columns(builder.parquet_schema(), ["ts"]);
        let mut least_from = Vec::new();
        for b in builder.with_projection(mask).with_batch_size(block).build()? {
            let b = b.map_err(parquet::errors::ParquetError::from)?;
            let ts = b
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .ok_or_else(|| FileError::Schema(format!("{:?}", b.schema())))?;
            least_from.push(ts.iter().flatten().min().unwrap_or(i64::MAX));
        }
        for i in (1..least_from.len()).rev() {
            least_from[i - 1] = least_from[i - 1].min(least_from[i]);
        }
        let builder = ParquetRecordBatchReaderBuilder::try_new(source()?)?.with_batch_size(block);
        let mut check = Rows::new(entry);
        let reader = match columns {
            None => builder.build()?,
            Some(columns) => {
                let wanted = |name: &str| name == "offset" || columns.contains(&name);
                let mask = parquet::arrow::ProjectionMask::columns(
                    builder.parquet_schema(),
                    schema().fields().iter().map(|f| f.name().as_str()).filter(|n| wanted(n)),
                );
                check.fields = schema().fields().iter().filter(|f| wanted(f.name())).cloned().collect();
                builder.with_projection(mask).build()?
            }
        };
        Ok(FileBlocks { entry: entry.clone(), reader, least_from, next: 0, check, ended: false })
    }

    /// Its manifest entry.
    pub fn entry(&self) -> &FileEntry {
        &self.entry
    }

    /// The least `ts` of the rows not decoded yet (`i64::MAX`: none left, or none has one).
    pub fn least_ahead(&self) -> i64 {
        self.least_from.get(self.next).copied().unwrap_or(i64::MAX)
    }

    /// The next block, checked as [`decode_file`] checks a file; after the last, the file's rows
    /// and last offset are checked against the entry (an error then, else `None`). After an
    /// error or the end, `None`.
    pub fn next_block(&mut self) -> Option<Result<RecordBatch, FileError>> {
        if self.ended {
            return None;
        }
        let next = match self.reader.next() {
            Some(Ok(b)) => {
                self.next += 1;
                Some(self.check.next(&b).map(|()| b))
            }
            Some(Err(e)) => Some(Err(FileError::Parquet(e.into()))),
            None => {
                self.next = self.least_from.len();
                self.check.end(&self.entry).err().map(Err)
            }
        };
        self.ended = !matches!(next, Some(Ok(_)));
        next
    }
}

fn column<'b, T: 'static>(batch: &'b RecordBatch, name: &str) -> &'b T {
    batch.column_by_name(name).and_then(|c| c.as_any().downcast_ref::<T>()).expect("decode_file checked the schema")
}

/// One archived record, as the topic held it, with its decoded columns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivedRecord {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The offset.
    pub offset: i64,
    /// The Kafka timestamp, epoch ms.
    pub timestamp: Option<i64>,
    /// The key.
    pub key: Option<Vec<u8>>,
    /// The value, byte for byte as it was in the topic.
    pub value: Vec<u8>,
    /// The decoded event, as `squall_operators::event::decode` made it; `None` for a dead letter.
    pub event: Option<Event>,
    /// Why the record did not decode (the dead-letter reason streaming gives it).
    pub dlq_reason: Option<DlqReason>,
}

/// The records of decoded batches, in offset order.
pub fn records(batches: &[RecordBatch]) -> impl Iterator<Item = ArchivedRecord> + '_ {
    batches.iter().flat_map(|b| (0..b.num_rows()).map(move |i| record_at(b, i)))
}

fn record_at(b: &RecordBatch, i: usize) -> ArchivedRecord {
    let s = |name: &str| {
        let c = column::<StringArray>(b, name);
        c.is_valid(i).then(|| c.value(i))
    };
    let bin = |name: &str| {
        let c = column::<BinaryArray>(b, name);
        c.is_valid(i).then(|| c.value(i).to_vec())
    };
    let int = |name: &str| {
        let c = column::<Int64Array>(b, name);
        c.is_valid(i).then(|| c.value(i))
    };
    let event = match (s("event_id"), s("user_id"), int("ts")) {
        (Some(event_id), Some(user_id), Some(ts)) => {
            let ms = column::<UInt64Array>(b, "ms_played");
            Some(match (s("track_id"), s("ad_id")) {
                (Some(track_id), _) => Event::Song(squall_operators::event::SongCompletion {
                    event_id: event_id.into(),
                    user_id: user_id.into(),
                    track_id: track_id.into(),
                    ms_played: ms.value(i),
                    ts,
                }),
                (None, ad_id) => Event::Ad(squall_operators::event::AdImpression {
                    event_id: event_id.into(),
                    user_id: user_id.into(),
                    ad_id: ad_id.unwrap_or_default().into(),
                    ts,
                }),
            })
        }
        _ => None,
    };
    let value = bin("value").unwrap_or_else(|| {
        let mut out = Vec::with_capacity(128);
        if let Some(e) = &event {
            canonical_json(e, &mut out);
        }
        out
    });
    ArchivedRecord {
        topic: s("topic").unwrap_or_default().to_owned(),
        partition: column::<Int32Array>(b, "partition").value(i),
        offset: column::<Int64Array>(b, "offset").value(i),
        timestamp: int("timestamp"),
        key: bin("key"),
        value,
        event,
        dlq_reason: s("dlq_reason").and_then(|r| DlqReason::ALL.into_iter().find(|d| d.as_str() == r)),
    }
}
