//! The labels file: rows of `(user_id, ts, any other columns)`, as Parquet or CSV, read and
//! checked whole before anything runs, so that a bad file is refused with the row and column
//! that are wrong and nothing is written.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, Int64Array, LargeStringArray, RecordBatch, RecordBatchReader as _, StringArray};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use compact_str::CompactString;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// The column naming the user.
pub const USER_ID: &str = "user_id";
/// The column holding the label's time.
pub const TS: &str = "ts";

/// A labels file, read and checked.
#[derive(Debug)]
pub struct Labels {
    /// The rows as read, every column (Parquet: as typed in the file; CSV: text), in file order.
    pub batches: Vec<RecordBatch>,
    /// Each row's user.
    pub users: Vec<CompactString>,
    /// Each row's time, epoch milliseconds.
    pub ts: Vec<i64>,
}

impl Labels {
    /// Rows.
    pub fn len(&self) -> usize {
        self.ts.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ts.is_empty()
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
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("parquet") => read_parquet(path),
        Some("csv") => read_csv(path),
        _ => Err(LabelsError::Format { path: path.to_owned() }),
    }
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
    let reader = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet)?.with_batch_size(64 * 1024).build();
    let reader = reader.map_err(parquet)?;
    let schema = reader.schema();
    for column in [USER_ID, TS] {
        if schema.field_with_name(column).is_err() {
            return Err(LabelsError::MissingColumn { path: path.to_owned(), column });
        }
    }
    let mut labels = Labels { batches: Vec::new(), users: Vec::new(), ts: Vec::new() };
    for batch in reader {
        let batch = batch.map_err(|e| LabelsError::Parquet { path: path.to_owned(), detail: e.to_string() })?;
        let first = labels.ts.len() as u64 + 1;
        users_of(path, &batch, first, &mut labels.users)?;
        times_of(path, &batch, first, &mut labels.ts)?;
        labels.batches.push(batch);
    }
    if labels.batches.is_empty() {
        // No rows: the output still has the file's columns (and the attributes').
        labels.batches.push(RecordBatch::new_empty(schema));
    }
    Ok(labels)
}

fn users_of(path: &Path, batch: &RecordBatch, first: u64, out: &mut Vec<CompactString>) -> Result<(), LabelsError> {
    let column = batch.column_by_name(USER_ID).expect("checked");
    let null = |i: usize| LabelsError::Row {
        path: path.to_owned(),
        row: first + i as u64,
        column: USER_ID.into(),
        problem: "no user id (null)".into(),
    };
    let mut push = |i: usize, valid: bool, v: &str| {
        if !valid || v.is_empty() {
            return Err(null(i));
        }
        out.push(v.into());
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

fn times_of(path: &Path, batch: &RecordBatch, first: u64, out: &mut Vec<i64>) -> Result<(), LabelsError> {
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

/// CSV as RFC 4180 has it: a header line, comma-separated fields, fields in double quotes may
/// hold commas, line breaks and doubled quotes. Every column is read as text and passes through
/// unchanged; `ts` is parsed as epoch milliseconds or RFC 3339.
fn read_csv(path: &Path) -> Result<Labels, LabelsError> {
    let text = std::fs::read(path).map_err(|source| LabelsError::Read { path: path.to_owned(), source })?;
    let text = String::from_utf8(text).map_err(|e| LabelsError::Read {
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })?;
    let mut records = csv_records(&text);
    let header = match records.next() {
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
    let (user_at, ts_at) = (find(USER_ID)?, find(TS)?);
    let mut columns: Vec<Vec<String>> = vec![Vec::new(); header.len()];
    let mut labels = Labels { batches: Vec::new(), users: Vec::new(), ts: Vec::new() };
    for (n, record) in records.enumerate() {
        let row = n as u64 + 1;
        let bad = |column: &str, problem: String| LabelsError::Row {
            path: path.to_owned(),
            row,
            column: column.to_owned(),
            problem,
        };
        let (line, fields) = record.map_err(|(line, problem)| bad("(any)", format!("line {line}: {problem}")))?;
        if fields.len() != header.len() {
            return Err(bad(
                header.get(fields.len()).map_or("(beyond the header)", String::as_str),
                format!("line {line} has {} fields, the header {}", fields.len(), header.len()),
            ));
        }
        let user = &fields[user_at];
        if user.is_empty() {
            return Err(bad(USER_ID, "no user id (empty)".into()));
        }
        labels.users.push(user.as_str().into());
        labels.ts.push(parse_time(&fields[ts_at]).map_err(|p| bad(TS, p))?);
        for (c, f) in columns.iter_mut().zip(fields) {
            c.push(f);
        }
    }
    let fields: Vec<Field> = header.iter().map(|h| Field::new(h, DataType::Utf8, false)).collect();
    let arrays: Vec<ArrayRef> = columns.into_iter().map(|c| Arc::new(StringArray::from(c)) as ArrayRef).collect();
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema, arrays)
        .map_err(|e| LabelsError::Parquet { path: path.to_owned(), detail: e.to_string() })?;
    labels.batches.push(batch);
    Ok(labels)
}

/// The records of a CSV text, each with the line it starts on; an error names the line.
fn csv_records(text: &str) -> impl Iterator<Item = Result<(usize, Vec<String>), (usize, String)>> + '_ {
    let mut chars = text.chars().peekable();
    let mut line = 1usize;
    std::iter::from_fn(move || {
        chars.peek()?;
        let start = line;
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        let mut was_quoted = false;
        loop {
            let Some(c) = chars.next() else {
                if quoted {
                    return Some(Err((start, "a quoted field is not closed".into())));
                }
                fields.push(std::mem::take(&mut field));
                return Some(Ok((start, fields)));
            };
            match (quoted, c) {
                (true, '"') if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                (true, '"') => quoted = false,
                (true, c) => {
                    line += usize::from(c == '\n');
                    field.push(c);
                }
                (false, '"') if field.is_empty() && !was_quoted => {
                    quoted = true;
                    was_quoted = true;
                }
                (false, '"') => return Some(Err((start, "a quote inside an unquoted field".into()))),
                (false, ',') => {
                    fields.push(std::mem::take(&mut field));
                    was_quoted = false;
                }
                (false, '\r') if chars.peek() == Some(&'\n') => {}
                (false, '\n') => {
                    line += 1;
                    fields.push(std::mem::take(&mut field));
                    return Some(Ok((start, fields)));
                }
                (false, c) => field.push(c),
            }
        }
    })
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
