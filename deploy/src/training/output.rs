//! The output file: the label columns as they were, then one typed column per answered
//! attribute, written as Parquet under a temporary name and renamed when complete.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{Float64Builder, Int64Builder, ListBuilder, MapBuilder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema};
use compact_str::CompactString;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use squall_operators::attributes::ValueType;
use squall_operators::{Attributes, Declaration, Value};

use super::labels::Labels;

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
struct Column {
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

    /// Appends `v` (`None`: the user had no attributes).
    fn push(&mut self, v: Option<&Value>) -> Result<(), ArrowError> {
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

    fn finish(&mut self) -> ArrayRef {
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
fn columns(declaration: &Declaration) -> Vec<Column> {
    (declaration.attributes.iter().enumerate())
        .filter(|(_, a)| !a.hidden)
        .map(|(i, a)| Column::new(&a.name, declaration.value_type(i)))
        .collect()
}

/// The names of the answered attributes.
pub fn attribute_names(declaration: &Declaration) -> Vec<&str> {
    declaration.attributes.iter().filter(|a| !a.hidden).map(|a| a.name.as_str()).collect()
}

fn parse(json: Option<&[u8]>) -> Option<Attributes> {
    json.map(|j| serde_json::from_slice(j).expect("the attributes' own JSON parses"))
}

/// One batch: `front` columns, then the attributes of each row.
fn batch(
    front: Vec<(Field, ArrayRef)>,
    declaration: &Declaration,
    rows: impl Iterator<Item = Option<Attributes>>,
) -> Result<RecordBatch, ArrowError> {
    let mut cols = columns(declaration);
    for attrs in rows {
        for c in &mut cols {
            c.push(attrs.as_ref().and_then(|a| a.get(&c.name)))?;
        }
    }
    let (mut fields, mut arrays): (Vec<Field>, Vec<ArrayRef>) = front.into_iter().unzip();
    for c in &mut cols {
        let array = c.finish();
        fields.push(Field::new(&c.name, array.data_type().clone(), true));
        arrays.push(array);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
}

/// Writes `batches` to `path` through a temporary file in the same folder, renamed at the end.
fn write(path: &Path, batches: impl Iterator<Item = Result<RecordBatch, ArrowError>>) -> Result<u64, OutputError> {
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
        for b in batches {
            let b = b.map_err(|e| e.to_string())?;
            if writer.is_none() {
                let w =
                    ArrowWriter::try_new(file.try_clone().map_err(|e| e.to_string())?, b.schema(), Some(props.clone()));
                writer = Some(w.map_err(|e| e.to_string())?);
            }
            rows += b.num_rows() as u64;
            writer.as_mut().expect("set above").write(&b).map_err(|e| e.to_string())?;
        }
        let writer = writer.ok_or("nothing to write")?;
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

/// Writes every label row with its attributes (`answers[row]`, JSON as the API answers them).
pub fn write_labels(
    path: &Path,
    labels: &Labels,
    declaration: &Declaration,
    answers: &[Option<Vec<u8>>],
) -> Result<u64, OutputError> {
    let mut start = 0;
    let batches = labels.batches.iter().map(|b| {
        let front = b.schema().fields().iter().map(|f| f.as_ref().clone()).zip(b.columns().iter().cloned()).collect();
        let rows = answers[start..start + b.num_rows()].iter().map(|j| parse(j.as_deref()));
        start += b.num_rows();
        batch(front, declaration, rows)
    });
    write(path, batches)
}

/// Writes every user's attributes as of `at`, by user id: columns `user_id`, `ts`, then the
/// attributes.
pub fn write_snapshot(
    path: &Path,
    at: i64,
    declaration: &Declaration,
    mut users: Vec<(CompactString, Vec<u8>)>,
) -> Result<u64, OutputError> {
    users.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let batches = users.chunks(64 * 1024).map(|chunk| {
        let ids = arrow_array::StringArray::from_iter_values(chunk.iter().map(|(u, _)| u.as_str()));
        let ts = arrow_array::Int64Array::from_value(at, chunk.len());
        let front = vec![
            (Field::new("user_id", DataType::Utf8, false), Arc::new(ids) as ArrayRef),
            (Field::new("ts", DataType::Int64, false), Arc::new(ts) as ArrayRef),
        ];
        batch(front, declaration, chunk.iter().map(|(_, j)| parse(Some(j))))
    });
    let empty = users.is_empty().then(|| batch(snapshot_front_empty(), declaration, std::iter::empty()));
    write(path, empty.into_iter().chain(batches))
}

fn snapshot_front_empty() -> Vec<(Field, ArrayRef)> {
    vec![
        (Field::new("user_id", DataType::Utf8, false), Arc::new(arrow_array::StringArray::new_null(0)) as ArrayRef),
        (Field::new("ts", DataType::Int64, false), Arc::new(arrow_array::Int64Array::new_null(0)) as ArrayRef),
    ]
}
