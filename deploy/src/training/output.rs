//! The output file: the label columns as they were, then one typed column per answered
//! attribute, written as Parquet under a temporary name and renamed when complete. The typed
//! columns are built as the answers arrive ([`super::spill`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{Float64Builder, Int64Builder, ListBuilder, MapBuilder, StringBuilder};
use arrow_array::{Array, ArrayRef, Int64Array, RecordBatch, UInt64Array};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use squall_operators::attributes::ValueType;
use squall_operators::{Declaration, Value};

use super::labels::{self as label, Labels};
use super::spill::{BATCH_ROWS, Merge};

/// Why the output was not written.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// Writing or renaming the file failed.
    #[error("cannot write {path}: {detail}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
}

/// One answered attribute's column.
pub(super) struct Column {
    name: String,
    builder: Builder,
}

enum Builder {
    Int(Int64Builder),
    Float(Float64Builder),
    Text(StringBuilder),
    IntMap(MapBuilder<StringBuilder, Int64Builder>),
    FloatMap(MapBuilder<StringBuilder, Float64Builder>),
    List(ListBuilder<StringBuilder>),
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Int(n) => Some(*n as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        Value::Float(f) => Some(*f as i64),
        _ => None,
    }
}

impl Column {
    fn new(name: &str, ty: ValueType) -> Column {
        let builder = match ty {
            ValueType::Int => Builder::Int(Int64Builder::new()),
            ValueType::Float => Builder::Float(Float64Builder::new()),
            ValueType::Text => Builder::Text(StringBuilder::new()),
            ValueType::IntMap => Builder::IntMap(MapBuilder::new(None, StringBuilder::new(), Int64Builder::new())),
            ValueType::FloatMap => {
                Builder::FloatMap(MapBuilder::new(None, StringBuilder::new(), Float64Builder::new()))
            }
            ValueType::List => Builder::List(ListBuilder::new(StringBuilder::new())),
        };
        Column { name: name.to_owned(), builder }
    }

    /// The attribute's name.
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// Appends `v` (`None`: the user had no attributes).
    pub(super) fn push(&mut self, v: Option<&Value>) -> Result<(), ArrowError> {
        let v = v.filter(|v| **v != Value::Null);
        match &mut self.builder {
            Builder::Int(b) => b.append_option(v.and_then(int)),
            Builder::Float(b) => b.append_option(v.and_then(number)),
            Builder::Text(b) => b.append_option(v.and_then(|v| if let Value::Text(t) = v { Some(t) } else { None })),
            Builder::IntMap(b) => {
                if let Some(Value::Map(m)) = v {
                    for (k, x) in m {
                        b.keys().append_value(k);
                        b.values().append_option(int(x));
                    }
                }
                b.append(matches!(v, Some(Value::Map(_))))?;
            }
            Builder::FloatMap(b) => {
                if let Some(Value::Map(m)) = v {
                    for (k, x) in m {
                        b.keys().append_value(k);
                        b.values().append_option(number(x));
                    }
                }
                b.append(matches!(v, Some(Value::Map(_))))?;
            }
            Builder::List(b) => match v {
                Some(Value::List(names)) => b.append_value(names.iter().map(Some)),
                _ => b.append_null(),
            },
        }
        Ok(())
    }

    /// The values appended since the last `finish`.
    pub(super) fn finish(&mut self) -> ArrayRef {
        match &mut self.builder {
            Builder::Int(b) => Arc::new(b.finish()),
            Builder::Float(b) => Arc::new(b.finish()),
            Builder::Text(b) => Arc::new(b.finish()),
            Builder::IntMap(b) => Arc::new(b.finish()),
            Builder::FloatMap(b) => Arc::new(b.finish()),
            Builder::List(b) => Arc::new(b.finish()),
        }
    }
}

/// The answered attributes of `declaration`, in answer order, each a column.
pub(super) fn columns(declaration: &Declaration) -> Vec<Column> {
    (declaration.attributes.iter().enumerate())
        .filter(|(_, a)| !a.hidden)
        .map(|(i, a)| Column::new(&a.name, declaration.value_type(i)))
        .collect()
}

/// The names of the answered attributes.
pub fn attribute_names(declaration: &Declaration) -> Vec<&str> {
    declaration.attributes.iter().filter(|a| !a.hidden).map(|a| a.name.as_str()).collect()
}

/// Writes `batches` to `path` through a temporary file in the same folder, renamed at the end;
/// an empty file of `empty`'s schema when there are none.
fn write(
    path: &Path,
    empty: SchemaRef,
    batches: impl Iterator<Item = Result<RecordBatch, String>>,
) -> Result<u64, OutputError> {
    let err = |detail: String| OutputError::Write { path: path.to_owned(), detail };
    let name = path.file_name().ok_or_else(|| err("not a file name".into()))?.to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| -> Result<u64, String> {
        let file = std::fs::File::create(&tmp).map_err(|e| e.to_string())?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("valid level")))
            .build();
        let mut writer: Option<ArrowWriter<std::fs::File>> = None;
        let mut rows = 0u64;
        let open = |schema: SchemaRef| {
            let file = file.try_clone().map_err(|e| e.to_string())?;
            ArrowWriter::try_new(file, schema, Some(props.clone())).map_err(|e| e.to_string())
        };
        for b in batches {
            let b = b?;
            if writer.is_none() {
                writer = Some(open(b.schema())?);
            }
            rows += b.num_rows() as u64;
            writer.as_mut().expect("set above").write(&b).map_err(|e| e.to_string())?;
        }
        let writer = match writer {
            Some(w) => w,
            None => open(empty)?,
        };
        writer.close().map_err(|e| e.to_string())?;
        file.sync_all().map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, path).map_err(|e| e.to_string())?;
        Ok(rows)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// `front`'s columns, then `merged`'s without its key.
fn beside(front: &RecordBatch, merged: &RecordBatch) -> Result<RecordBatch, String> {
    let (front_schema, merged_schema) = (front.schema(), merged.schema());
    let fields = front_schema.fields().iter().chain(merged_schema.fields().iter().skip(1)).cloned();
    let schema = Arc::new(Schema::new(fields.collect::<Vec<_>>()));
    let columns = front.columns().iter().chain(merged.columns().iter().skip(1)).cloned().collect();
    RecordBatch::try_new(schema, columns).map_err(|e| e.to_string())
}

/// The label rows a merged batch at a time, read again from the labels file.
struct LabelRows<'a> {
    batches: Box<dyn Iterator<Item = Result<RecordBatch, String>> + 'a>,
    schema: SchemaRef,
    /// The rest of the batch read last.
    rest: Option<RecordBatch>,
}

impl LabelRows<'_> {
    /// The next `n` rows.
    fn take(&mut self, n: usize) -> Result<RecordBatch, String> {
        let mut parts = Vec::new();
        let mut need = n;
        while need > 0 {
            let b = match self.rest.take() {
                Some(b) => b,
                None => self.batches.next().ok_or("more answers than label rows")??,
            };
            let len = b.num_rows().min(need);
            parts.push(b.slice(0, len));
            need -= len;
            if len < b.num_rows() {
                self.rest = Some(b.slice(len, b.num_rows() - len));
            }
        }
        arrow_select::concat::concat_batches(&self.schema, &parts).map_err(|e| e.to_string())
    }
}

/// Writes every label row with its attributes, merged from the answers' spill in row order:
/// the labels file's columns read again (checked to hold `rows`, what was answered), then the
/// attributes.
pub fn write_labels(path: &Path, labels: &Labels, rows: &label::Rows, merge: Merge) -> Result<u64, OutputError> {
    write_labels_in(path, labels, rows, merge, BATCH_ROWS)
}

/// [`write_labels`], the labels file read `label_batch_rows` rows at a time.
pub(super) fn write_labels_in(
    path: &Path,
    labels: &Labels,
    rows: &label::Rows,
    mut merge: Merge,
    label_batch_rows: usize,
) -> Result<u64, OutputError> {
    let failed = |detail: String| OutputError::Write { path: path.to_owned(), detail };
    let empty = beside(&RecordBatch::new_empty(Arc::clone(&labels.schema)), &RecordBatch::new_empty(merge.schema()))
        .map_err(failed)?;
    let (total, mut next) = (rows.len() as u64, 0u64);
    let batches = labels.batches(rows, label_batch_rows).map_err(|e| failed(e.to_string()))?;
    let mut label_rows = LabelRows { batches, schema: Arc::clone(&labels.schema), rest: None };
    let mut merged = std::iter::from_fn(|| merge.next_batch().map_err(|e| e.to_string()).transpose());
    let batches = std::iter::from_fn(|| {
        let Some(merged) = merged.next() else {
            return (next != total).then(|| Err(format!("label row {next} has no answer")));
        };
        let with_labels = || -> Result<RecordBatch, String> {
            let merged = merged?;
            let keys = merged.column(0).as_any().downcast_ref::<UInt64Array>().ok_or("the spill's rows are not u64")?;
            for r in keys.values() {
                if *r != next {
                    return Err(format!("label row {next} answered as {r}"));
                }
                next += 1;
            }
            beside(&label_rows.take(merged.num_rows())?, &merged)
        };
        Some(with_labels())
    });
    write(path, empty.schema(), batches)
}

/// Writes every user's attributes as of `at`, merged from the answers' spill by user id:
/// columns `user_id`, `ts`, then the attributes.
pub fn write_snapshot(path: &Path, at: i64, mut merge: Merge) -> Result<u64, OutputError> {
    let ts = Field::new("ts", DataType::Int64, false);
    let with_ts = move |merged: RecordBatch| -> Result<RecordBatch, String> {
        let schema = merged.schema();
        let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.insert(1, ts.clone());
        let mut columns = merged.columns().to_vec();
        columns.insert(1, Arc::new(Int64Array::from_value(at, merged.num_rows())) as ArrayRef);
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| e.to_string())
    };
    let empty = with_ts(RecordBatch::new_empty(merge.schema()))
        .map_err(|detail| OutputError::Write { path: path.to_owned(), detail })?;
    let batches = std::iter::from_fn(|| merge.next_batch().map_err(|e| e.to_string()).transpose());
    write(path, empty.schema(), batches.map(|b| b.and_then(&with_ts)))
}
