//! The labels file: rows of `(user_id, ts, any other columns)`, as Parquet or CSV, read and
//! checked whole before anything runs, so that a bad file is refused with the row and column
//! that are wrong and nothing is written. The job keeps only each row's user and time
//! ([`Rows`]); the other columns are read again from the file while the output is written
//! ([`Labels::batches`]), checked to be the same rows.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{LargeStringBuilder, StringBuilder};
use arrow_array::{Array, ArrayRef, Int64Array, LargeStringArray, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// The column naming the user.
pub const USER_ID: &str = "user_id";
/// The column holding the label's time.
pub const TS: &str = "ts";

/// Label rows a CSV file is read into a batch at a time.
const CSV_BATCH_ROWS: usize = 8 * 1024;

/// A labels file, read and checked: where it is and its columns, and each row's user and time.
#[derive(Debug)]
pub struct Labels {
    /// The file.
    pub path: PathBuf,
    /// Parquet (else CSV).
    parquet: bool,
    /// The file's columns (Parquet: as typed in the file; CSV: text).
    pub schema: SchemaRef,
    /// Each row's user and time.
    pub rows: Rows,
}

/// Each label row's user and time, in file order: about 20 bytes a row (the user ids in one
/// buffer), what the job keeps of the labels while it runs.
#[derive(Clone, Debug)]
pub struct Rows {
    /// Each row's user.
    pub users: LargeStringArray,
    /// Each row's time, epoch milliseconds.
    pub ts: Vec<i64>,
}

impl Rows {
    /// No rows.
    pub fn empty() -> Rows {
        Rows { users: LargeStringArray::from(Vec::<&str>::new()), ts: Vec::new() }
    }

    /// Rows.
    pub fn len(&self) -> usize {
        self.ts.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ts.is_empty()
    }

    /// Row `row`'s user.
    pub fn user(&self, row: usize) -> &str {
        self.users.value(row)
    }
}

/// What a labels file is read into: each row's user and time, checked.
struct Collect<'p> {
    path: &'p Path,
    users: LargeStringBuilder,
    ts: Vec<i64>,
}

impl Collect<'_> {
    fn rows(mut self) -> Rows {
        Rows { users: self.users.finish(), ts: self.ts }
    }
}

impl Labels {
    /// Rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Every row again, every column, at most `batch_rows` rows a batch, in file order; each
    /// batch checked to hold the users and times of `rows` (what the job answered), so a file
    /// changed since it was read is an error naming the first row that differs.
    pub fn batches<'a>(
        &'a self,
        rows: &'a Rows,
        batch_rows: usize,
    ) -> Result<Box<dyn Iterator<Item = Result<RecordBatch, String>> + 'a>, LabelsError> {
        let batches: Box<dyn Iterator<Item = Result<RecordBatch, LabelsError>>> = if self.parquet {
            let file = std::fs::File::open(&self.path)
                .map_err(|source| LabelsError::Read { path: self.path.clone(), source })?;
            let parquet = |e: parquet::errors::ParquetError| LabelsError::Parquet {
                path: self.path.clone(),
                detail: e.to_string(),
            };
            let reader = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet)?;
            let reader = reader.with_batch_size(batch_rows).build().map_err(parquet)?;
            let path = self.path.clone();
            Box::new(
                reader.map(move |b| b.map_err(|e| LabelsError::Parquet { path: path.clone(), detail: e.to_string() })),
            )
        } else {
            Box::new(csv_batches(&self.path, batch_rows)?.1.map(|b| b.map(|(batch, _)| batch)))
        };
        let mut first = 0usize;
        Ok(Box::new(batches.map(move |b| {
            let b = b.map_err(|e| e.to_string())?;
            let mut again =
                Collect { path: &self.path, users: LargeStringBuilder::new(), ts: Vec::with_capacity(b.num_rows()) };
            again.users_of(&b, first as u64 + 1).map_err(|e| e.to_string())?;
            again.times_of(&b, first as u64 + 1).map_err(|e| e.to_string())?;
            let again = again.rows();
            for i in 0..b.num_rows() {
                let row = first + i;
                if row >= rows.len() || again.user(i) != rows.user(row) || again.ts[i] != rows.ts[row] {
                    return Err(format!(
                        "{}: row {}: the labels file changed while the job ran; run it again",
                        self.path.display(),
                        row + 1
                    ));
                }
            }
            first += b.num_rows();
            Ok(b)
        })))
    }
}

/// Why a labels file is refused. Rows are counted from 1, the header of a CSV file not included.
#[derive(Debug, thiserror::Error)]
pub enum LabelsError {
    /// The file cannot be read.
    #[error("cannot read the labels file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Neither `.parquet` nor `.csv`.
    #[error("{path}: a labels file is a .parquet or a .csv file")]
    Format {
        /// The file.
        path: PathBuf,
    },
    /// Not a Parquet file this reader can read.
    #[error("{path}: not a readable Parquet file: {detail}")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The reader's message.
        detail: String,
    },
    /// A required column is missing.
    #[error(
        "{path}: no column `{column}`; a labels file has a column `user_id` (text) and a column `ts` (epoch milliseconds, a timestamp, or an RFC 3339 time), then any others"
    )]
    MissingColumn {
        /// The file.
        path: PathBuf,
        /// The column.
        column: &'static str,
    },
    /// A required column has a type that cannot be read as what it must be.
    #[error("{path}: column `{column}` is {found}; use {expected}")]
    ColumnType {
        /// The file.
        path: PathBuf,
        /// The column.
        column: &'static str,
        /// Its type in the file.
        found: String,
        /// What it can be.
        expected: &'static str,
    },
    /// One value is wrong.
    #[error("{path}: row {row}, column `{column}`: {problem}")]
    Row {
        /// The file.
        path: PathBuf,
        /// The row, from 1.
        row: u64,
        /// The column.
        column: String,
        /// What is wrong.
        problem: String,
    },
}

/// Reads and checks a labels file: `.parquet` or `.csv` by its name.
pub fn read(path: &Path) -> Result<Labels, LabelsError> {
    let labels = match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("parquet") => read_parquet(path),
        Some("csv") => read_csv(path),
        _ => Err(LabelsError::Format { path: path.to_owned() }),
    }?;
    if labels.len() > u32::MAX as usize {
        return Err(LabelsError::Row {
            path: path.to_owned(),
            row: u64::from(u32::MAX) + 1,
            column: "(any)".into(),
            problem: format!("more than {} label rows; split the file", u32::MAX),
        });
    }
    Ok(labels)
}

/// An event time: epoch milliseconds, or an RFC 3339 time (`2026-09-01T00:00:00Z`).
pub fn parse_time(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    humantime::parse_rfc3339_weak(s)
        .map_err(|e| format!("{s:?} is not a time ({e}); use epoch milliseconds or RFC 3339 (2026-09-01T00:00:00Z)"))
        .map(|t| match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => d.as_millis() as i64,
            Err(e) => -(e.duration().as_millis() as i64),
        })
}

fn read_parquet(path: &Path) -> Result<Labels, LabelsError> {
    let file = std::fs::File::open(path).map_err(|source| LabelsError::Read { path: path.to_owned(), source })?;
    let parquet =
        |e: parquet::errors::ParquetError| LabelsError::Parquet { path: path.to_owned(), detail: e.to_string() };
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet)?;
    let schema = Arc::clone(builder.schema());
    for column in [USER_ID, TS] {
        if schema.field_with_name(column).is_err() {
            return Err(LabelsError::MissingColumn { path: path.to_owned(), column });
        }
    }
    // Only the user and the time now: the other columns are read again for the output.
    let mask = ProjectionMask::columns(builder.parquet_schema(), [USER_ID, TS]);
    let reader = builder.with_projection(mask).with_batch_size(64 * 1024).build().map_err(parquet)?;
    let mut collect = Collect { path, users: LargeStringBuilder::new(), ts: Vec::new() };
    for batch in reader {
        let batch = batch.map_err(|e| LabelsError::Parquet { path: path.to_owned(), detail: e.to_string() })?;
        let first = collect.ts.len() as u64 + 1;
        collect.users_of(&batch, first)?;
        collect.times_of(&batch, first)?;
    }
    Ok(Labels { path: path.to_owned(), parquet: true, schema, rows: collect.rows() })
}

impl Collect<'_> {
    fn users_of(&mut self, batch: &RecordBatch, first: u64) -> Result<(), LabelsError> {
        let path = self.path;
        let column = batch.column_by_name(USER_ID).expect("checked");
        let null = |i: usize| LabelsError::Row {
            path: path.to_owned(),
            row: first + i as u64,
            column: USER_ID.into(),
            problem: "no user id (null)".into(),
        };
        let out = &mut self.users;
        let mut push = |i: usize, valid: bool, v: &str| {
            if !valid || v.is_empty() {
                return Err(null(i));
            }
            out.append_value(v);
            Ok(())
        };
        match column.data_type() {
            DataType::Utf8 => {
                let a = column.as_any().downcast_ref::<StringArray>().expect("utf8");
                (0..a.len()).try_for_each(|i| push(i, a.is_valid(i), a.value(i)))
            }
            DataType::LargeUtf8 => {
                let a = column.as_any().downcast_ref::<LargeStringArray>().expect("large utf8");
                (0..a.len()).try_for_each(|i| push(i, a.is_valid(i), a.value(i)))
            }
            other => Err(LabelsError::ColumnType {
                path: path.to_owned(),
                column: USER_ID,
                found: other.to_string(),
                expected: "text (string)",
            }),
        }
    }

    fn times_of(&mut self, batch: &RecordBatch, first: u64) -> Result<(), LabelsError> {
        let path = self.path;
        let out = &mut self.ts;
        let column = batch.column_by_name(TS).expect("checked");
        let row = |i: usize, problem: String| LabelsError::Row {
            path: path.to_owned(),
            row: first + i as u64,
            column: TS.into(),
            problem,
        };
        let per_ms = match column.data_type() {
            DataType::Int64 => Some((1, 1)),
            DataType::Timestamp(TimeUnit::Second, _) => Some((1000, 1)),
            DataType::Timestamp(TimeUnit::Millisecond, _) => Some((1, 1)),
            DataType::Timestamp(TimeUnit::Microsecond, _) => Some((1, 1000)),
            DataType::Timestamp(TimeUnit::Nanosecond, _) => Some((1, 1_000_000)),
            _ => None,
        };
        if let Some((mul, div)) = per_ms {
            let data = column.to_data();
            let a = Int64Array::from(data.into_builder().data_type(DataType::Int64).build().expect("an i64 layout"));
            for i in 0..a.len() {
                if !a.is_valid(i) {
                    return Err(row(i, "no time (null)".into()));
                }
                out.push(a.value(i).checked_mul(mul).ok_or_else(|| row(i, "out of range".into()))?.div_euclid(div));
            }
            return Ok(());
        }
        let text = |i: usize, valid: bool, v: &str| {
            if !valid {
                return Err(row(i, "no time (null)".into()));
            }
            parse_time(v).map_err(|p| row(i, p))
        };
        match column.data_type() {
            DataType::Utf8 => {
                let a = column.as_any().downcast_ref::<StringArray>().expect("utf8");
                for i in 0..a.len() {
                    out.push(text(i, a.is_valid(i), a.value(i))?);
                }
                Ok(())
            }
            DataType::LargeUtf8 => {
                let a = column.as_any().downcast_ref::<LargeStringArray>().expect("large utf8");
                for i in 0..a.len() {
                    out.push(text(i, a.is_valid(i), a.value(i))?);
                }
                Ok(())
            }
            other => Err(LabelsError::ColumnType {
                path: path.to_owned(),
                column: TS,
                found: other.to_string(),
                expected: "int64 epoch milliseconds, a timestamp, or RFC 3339 text",
            }),
        }
    }
}

/// CSV as RFC 4180 has it: a header line, comma-separated fields, fields in double quotes may
/// hold commas, line breaks and doubled quotes. Every column is read as text and passes through
/// unchanged; `ts` is parsed as epoch milliseconds or RFC 3339.
fn read_csv(path: &Path) -> Result<Labels, LabelsError> {
    let mut collect = Collect { path, users: LargeStringBuilder::new(), ts: Vec::new() };
    let (schema, batches) = csv_batches(path, CSV_BATCH_ROWS)?;
    for batch in batches {
        let (batch, first) = batch?;
        collect.users_of(&batch, first)?;
        collect.times_of(&batch, first)?;
    }
    Ok(Labels { path: path.to_owned(), parquet: false, schema, rows: collect.rows() })
}

/// A CSV file's schema (every column text) and its rows as text columns, `batch_rows` at a
/// time, each batch with its first row's number (from 1). A row with the wrong number of fields
/// or an empty user id is an error naming it, after a batch of the rows before it (so the
/// caller's checks of those come first).
#[allow(clippy::type_complexity)]
fn csv_batches(
    path: &Path,
    batch_rows: usize,
) -> Result<(SchemaRef, impl Iterator<Item = Result<(RecordBatch, u64), LabelsError>>), LabelsError> {
    let bytes = std::fs::read(path).map_err(|source| LabelsError::Read { path: path.to_owned(), source })?;
    let text = String::from_utf8(bytes).map_err(|e| LabelsError::Read {
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })?;
    let mut lines = CsvCursor { text, at: 0, line: 1 };
    let header = match lines.next_record() {
        Some(Ok((_, h))) => h,
        Some(Err((line, problem))) => {
            return Err(LabelsError::Row { path: path.to_owned(), row: 0, column: format!("(line {line})"), problem });
        }
        None => return Err(LabelsError::MissingColumn { path: path.to_owned(), column: USER_ID }),
    };
    let header: Vec<String> = header.into_iter().map(|h| h.trim().to_owned()).collect();
    let find = |column: &'static str| {
        header.iter().position(|h| h == column).ok_or(LabelsError::MissingColumn { path: path.to_owned(), column })
    };
    let (user_at, _) = (find(USER_ID)?, find(TS)?);
    let fields: Vec<Field> = header.iter().map(|h| Field::new(h, DataType::Utf8, false)).collect();
    let schema = Arc::new(Schema::new(fields));
    let (path, width, out_schema) = (path.to_owned(), header.len(), Arc::clone(&schema));
    let mut n = 0u64;
    let mut failed: Option<LabelsError> = None;
    let batches = std::iter::from_fn(move || {
        if let Some(e) = failed.take() {
            lines.at = lines.text.len();
            return Some(Err(e));
        }
        let mut columns: Vec<StringBuilder> = (0..width).map(|_| StringBuilder::new()).collect();
        let first = n + 1;
        let mut len = 0;
        while len < batch_rows {
            let Some(record) = lines.next_record() else { break };
            let row = n + 1;
            let bad = |column: &str, problem: String| LabelsError::Row {
                path: path.clone(),
                row,
                column: column.to_owned(),
                problem,
            };
            let fields = match record {
                Err((line, problem)) => Err(bad("(any)", format!("line {line}: {problem}"))),
                Ok((line, fields)) if fields.len() != width => Err(bad(
                    header.get(fields.len()).map_or("(beyond the header)", String::as_str),
                    format!("line {line} has {} fields, the header {width}", fields.len()),
                )),
                Ok((_, fields)) if fields[user_at].is_empty() => Err(bad(USER_ID, "no user id (empty)".into())),
                Ok((_, fields)) => Ok(fields),
            };
            match fields {
                Ok(fields) => {
                    for (c, f) in columns.iter_mut().zip(&fields) {
                        c.append_value(f);
                    }
                    (n, len) = (n + 1, len + 1);
                }
                Err(e) if len == 0 => {
                    lines.at = lines.text.len();
                    return Some(Err(e));
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if len == 0 {
            return None;
        }
        let arrays: Vec<ArrayRef> = columns.iter_mut().map(|c| Arc::new(c.finish()) as ArrayRef).collect();
        Some(
            RecordBatch::try_new(Arc::clone(&schema), arrays)
                .map(|b| (b, first))
                .map_err(|e| LabelsError::Parquet { path: path.clone(), detail: e.to_string() }),
        )
    });
    Ok((out_schema, batches))
}

/// A CSV text read a record at a time.
struct CsvCursor<T> {
    text: T,
    /// The next byte to read.
    at: usize,
    /// Its line, from 1.
    line: usize,
}

/// A record and the line it starts on, or what is wrong and the line.
type Record = Result<(usize, Vec<String>), (usize, String)>;

impl<T: AsRef<str>> CsvCursor<T> {
    /// The next record; an error names the line.
    fn next_record(&mut self) -> Option<Record> {
        let text = self.text.as_ref();
        let rest = text.get(self.at..)?;
        let mut chars = rest.char_indices().peekable();
        chars.peek()?;
        let start = self.line;
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        let mut was_quoted = false;
        loop {
            let Some((i, c)) = chars.next() else {
                self.at = text.len();
                if quoted {
                    return Some(Err((start, "a quoted field is not closed".into())));
                }
                fields.push(field);
                return Some(Ok((start, fields)));
            };
            match (quoted, c) {
                (true, '"') if chars.peek().map(|p| p.1) == Some('"') => {
                    chars.next();
                    field.push('"');
                }
                (true, '"') => quoted = false,
                (true, c) => {
                    self.line += usize::from(c == '\n');
                    field.push(c);
                }
                (false, '"') if field.is_empty() && !was_quoted => {
                    quoted = true;
                    was_quoted = true;
                }
                (false, '"') => {
                    self.at = text.len();
                    return Some(Err((start, "a quote inside an unquoted field".into())));
                }
                (false, ',') => {
                    fields.push(std::mem::take(&mut field));
                    was_quoted = false;
                }
                (false, '\r') if chars.peek().map(|p| p.1) == Some('\n') => {}
                (false, '\n') => {
                    self.line += 1;
                    self.at += i + 1;
                    fields.push(field);
                    return Some(Ok((start, fields)));
                }
                (false, c) => field.push(c),
            }
        }
    }
}

/// The records of a CSV text, each with the line it starts on; an error names the line.
#[cfg(test)]
fn csv_records(text: &str) -> impl Iterator<Item = Record> + '_ {
    let mut cursor = CsvCursor { text, at: 0, line: 1 };
    std::iter::from_fn(move || cursor.next_record())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(text: &str) -> Vec<Vec<String>> {
        csv_records(text).map(|r| r.unwrap().1).collect()
    }

    #[test]
    fn csv_fields_follow_rfc_4180() {
        assert_eq!(records("a,b\r\n1,\"x, \"\"y\"\"\"\n"), vec![vec!["a", "b"], vec!["1", "x, \"y\""]]);
        assert_eq!(records("a\n\"two\nlines\"\n"), vec![vec!["a"], vec!["two\nlines"]]);
        assert_eq!(records("a,b\n1,"), vec![vec!["a", "b"], vec!["1", ""]]);
        assert!(csv_records("a\n\"open").nth(1).unwrap().is_err());
    }

    #[test]
    fn times_are_milliseconds_or_rfc_3339() {
        assert_eq!(parse_time("1763750000000"), Ok(1_763_750_000_000));
        assert_eq!(parse_time("2025-11-21T18:33:20Z"), Ok(1_763_750_000_000));
        assert!(parse_time("yesterday").unwrap_err().contains("RFC 3339"));
    }
}
