//! The answers on their way to the output file, in bounded memory (an external sort).
//!
//! Worker 0 receives every answer in the order the users' event time reaches its label, not in
//! the order the output needs (label rows in file order, or users by id with `--at`). Each worker
//! turns its answers into typed columns ([`Rows`]) and sends them to worker 0 a batch at a time;
//! worker 0 ([`Spill::push`]), every [`RUN_ROWS`] rows, sorts them by their key and appends them
//! to a spill file next to the output as one sorted run of Arrow IPC batches. Once the dataflow is done the runs are merged by key
//! ([`Merge::next_batch`]), one batch of each run in memory at a time. So the answers cost a run
//! in memory while the job runs and a batch per run at the end, not a few hundred bytes per row
//! for the whole job. The spill file is removed when the [`Spill`] or [`Merge`] is dropped.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, RecordBatch, StringArray, UInt64Array};
use arrow_ipc::reader::FileReader;
use arrow_ipc::writer::FileWriter;
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use compact_str::CompactString;
use squall_operators::{Attributes, Declaration};

use super::output::{Column, OutputError, columns};

/// Rows sorted together into one run.
pub const RUN_ROWS: usize = 64 * 1024;
/// Rows per batch of a run, and per merged batch.
pub const BATCH_ROWS: usize = 8 * 1024;

/// What orders the rows: the label row, or the user (with `--at`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    /// Label row, from 0.
    Row(u64),
    /// A user.
    User(CompactString),
}

/// The key column's name.
pub fn key_name(by_user: bool) -> &'static str {
    if by_user { super::labels::USER_ID } else { "row" }
}

/// Answers being built on a worker: each row's key and its attributes in typed columns, sent
/// to worker 0 a batch at a time as Arrow IPC bytes ([`encode`]).
pub struct Rows {
    by_user: bool,
    keys: Vec<Key>,
    cols: Vec<Column>,
}

impl Rows {
    /// Rows of `declaration`'s answered attributes keyed by label row (or by user with
    /// `by_user`).
    pub fn new(declaration: &Declaration, by_user: bool) -> Rows {
        Rows { by_user, keys: Vec::new(), cols: columns(declaration) }
    }

    /// Adds a row: `json` is the answer as the HTTP API gives it (`None`: nulls).
    pub fn push(&mut self, key: Key, json: Option<&[u8]>) -> Result<(), String> {
        let attrs: Option<Attributes> = match json {
            Some(j) => Some(serde_json::from_slice(j).map_err(|e| format!("an answer's JSON: {e}"))?),
            None => None,
        };
        for c in &mut self.cols {
            c.push(attrs.as_ref().and_then(|a| a.get(c.name()))).map_err(|e| e.to_string())?;
        }
        self.keys.push(key);
        Ok(())
    }

    /// Rows pushed since the last batch.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The rows pushed since the last batch, in the order pushed: the key column, then one
    /// column per answered attribute.
    pub fn batch(&mut self) -> Result<RecordBatch, String> {
        let keys = std::mem::take(&mut self.keys);
        let key_array: ArrayRef = if self.by_user {
            Arc::new(StringArray::from_iter_values(keys.iter().map(|k| match k {
                Key::User(u) => u.as_str(),
                Key::Row(_) => "",
            })))
        } else {
            Arc::new(UInt64Array::from_iter_values(keys.iter().map(|k| match k {
                Key::Row(r) => *r,
                Key::User(_) => 0,
            })))
        };
        let arrays: Vec<ArrayRef> =
            std::iter::once(key_array).chain(self.cols.iter_mut().map(|c| c.finish())).collect();
        // The key, then the attributes with their builders' types.
        let key_type = if self.by_user { DataType::Utf8 } else { DataType::UInt64 };
        let fields = std::iter::once(Field::new(key_name(self.by_user), key_type, false))
            .chain(self.cols.iter().zip(&arrays[1..]).map(|(c, a)| Field::new(c.name(), a.data_type().clone(), true)));
        let schema = Arc::new(Schema::new(fields.collect::<Vec<_>>()));
        RecordBatch::try_new(schema, arrays).map_err(|e| e.to_string())
    }
}

/// A batch as Arrow IPC stream bytes (what crosses between workers and processes).
pub fn encode(batch: &RecordBatch) -> Result<Vec<u8>, String> {
    let mut w = arrow_ipc::writer::StreamWriter::try_new(Vec::new(), &batch.schema()).map_err(|e| e.to_string())?;
    w.write(batch).map_err(|e| e.to_string())?;
    w.into_inner().map_err(|e| e.to_string())
}

/// The batch [`encode`] wrote.
pub fn decode(bytes: &[u8]) -> Result<RecordBatch, String> {
    let mut r = arrow_ipc::reader::StreamReader::try_new(bytes, None).map_err(|e| e.to_string())?;
    r.next().ok_or("an empty answers message")?.map_err(|e| e.to_string())
}

/// Answers being received on worker 0: the current run's batches, and the runs written.
pub struct Spill {
    file: SpillFile,
    by_user: bool,
    schema: SchemaRef,
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    writer: Option<FileWriter<BufWriter<File>>>,
    /// Batches written, and each run's.
    batches: usize,
    runs: Vec<Range<usize>>,
}

/// The spill file, removed when dropped.
struct SpillFile(PathBuf);

impl Drop for SpillFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl SpillFile {
    fn err(&self, detail: impl ToString) -> OutputError {
        OutputError::Write { path: self.0.clone(), detail: detail.to_string() }
    }
}

impl Spill {
    /// Batches of [`Rows`] of `declaration` keyed by label row (or by user with `by_user`),
    /// spilled beside `out`.
    pub fn new(out: &Path, declaration: &Declaration, by_user: bool) -> Spill {
        let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let path = out.with_file_name(format!(".{name}.spill-{}", std::process::id()));
        let empty = Rows::new(declaration, by_user).batch().expect("an empty batch of its own schema");
        Spill {
            file: SpillFile(path),
            by_user,
            schema: empty.schema(),
            pending: Vec::new(),
            pending_rows: 0,
            writer: None,
            batches: 0,
            runs: Vec::new(),
        }
    }

    /// Adds a batch of [`Rows`].
    pub fn push(&mut self, batch: RecordBatch) -> Result<(), OutputError> {
        if batch.schema() != self.schema {
            return Err(self.file.err(format!("answers of another schema: {:?}", batch.schema())));
        }
        self.pending_rows += batch.num_rows();
        self.pending.push(batch);
        if self.pending_rows >= RUN_ROWS {
            self.write_run()?;
        }
        Ok(())
    }

    /// Sorts the rows received since the last run by key and writes them as a run, a batch at a
    /// time taken from the received batches (no sorted copy of the whole run in memory).
    fn write_run(&mut self) -> Result<(), OutputError> {
        if self.pending_rows == 0 {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        self.pending_rows = 0;
        // Every row as (batch, row), by key (keys are distinct: label rows, or users).
        let mut order: Vec<(usize, usize)> =
            pending.iter().enumerate().flat_map(|(b, batch)| (0..batch.num_rows()).map(move |r| (b, r))).collect();
        if self.by_user {
            let keys: Vec<&StringArray> = pending
                .iter()
                .map(|b| b.column(0).as_any().downcast_ref::<StringArray>().expect("its own key column"))
                .collect();
            order.sort_unstable_by(|a, b| keys[a.0].value(a.1).cmp(keys[b.0].value(b.1)));
        } else {
            let keys: Vec<&UInt64Array> = pending
                .iter()
                .map(|b| b.column(0).as_any().downcast_ref::<UInt64Array>().expect("its own key column"))
                .collect();
            order.sort_unstable_by_key(|(b, r)| keys[*b].value(*r));
        }
        if self.writer.is_none() {
            let file = File::create(&self.file.0).map_err(|e| self.file.err(e))?;
            let w = FileWriter::try_new(BufWriter::new(file), &self.schema).map_err(|e| self.file.err(e))?;
            self.writer = Some(w);
        }
        let writer = self.writer.as_mut().expect("created above");
        let refs: Vec<&RecordBatch> = pending.iter().collect();
        let start = self.batches;
        for rows in order.chunks(BATCH_ROWS) {
            let batch = arrow_select::interleave::interleave_record_batch(&refs, rows).map_err(|e| self.file.err(e))?;
            writer.write(&batch).map_err(|e| self.file.err(e))?;
            self.batches += 1;
        }
        self.runs.push(start..self.batches);
        Ok(())
    }

    /// Writes the last run and starts merging.
    pub fn finish(mut self) -> Result<Merge, OutputError> {
        self.write_run()?;
        let reader = match self.writer.take() {
            Some(mut w) => {
                w.finish().map_err(|e| self.file.err(e))?;
                drop(w);
                let file = File::open(&self.file.0).map_err(|e| self.file.err(e))?;
                Some(FileReader::try_new(BufReader::new(file), None).map_err(|e| self.file.err(e))?)
            }
            None => None,
        };
        let cursors = self.runs.iter().map(|r| Cursor { next: r.start, end: r.end, batch: None, row: 0 }).collect();
        let schema = self.schema;
        let mut merge =
            Merge { file: self.file, by_user: self.by_user, schema, reader, cursors, heap: BinaryHeap::new() };
        for run in 0..merge.cursors.len() {
            merge.advance(run)?;
        }
        Ok(merge)
    }
}

/// Where one run is read.
struct Cursor {
    /// Its next batch to read, and the end of its batches.
    next: usize,
    end: usize,
    /// Its current batch and row.
    batch: Option<RecordBatch>,
    row: usize,
}

/// The runs of a [`Spill`], merged by key.
pub struct Merge {
    file: SpillFile,
    by_user: bool,
    schema: SchemaRef,
    reader: Option<FileReader<BufReader<File>>>,
    cursors: Vec<Cursor>,
    /// Each run's current key.
    heap: BinaryHeap<Reverse<(Key, usize)>>,
}

impl Merge {
    /// The key column, then one column per answered attribute.
    pub fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn key_at(&self, batch: &RecordBatch, row: usize) -> Key {
        let col = batch.column(0);
        if self.by_user {
            let s = col.as_any().downcast_ref::<StringArray>().expect("the spill's own key column");
            Key::User(s.value(row).into())
        } else {
            let r = col.as_any().downcast_ref::<UInt64Array>().expect("the spill's own key column");
            Key::Row(r.value(row))
        }
    }

    /// Moves run `run` to its next row (reading its next batch when its current one is done) and
    /// puts that row's key in the heap.
    fn advance(&mut self, run: usize) -> Result<(), OutputError> {
        let c = &mut self.cursors[run];
        if c.batch.as_ref().is_some_and(|b| c.row + 1 < b.num_rows()) {
            c.row += 1;
        } else {
            c.batch = None;
            if c.next == c.end {
                return Ok(());
            }
            let reader = self.reader.as_mut().expect("runs were written");
            reader.set_index(c.next).map_err(|e| self.file.err(e))?;
            let batch =
                reader.next().ok_or_else(|| self.file.err("a run ends early"))?.map_err(|e| self.file.err(e))?;
            c.next += 1;
            c.row = 0;
            c.batch = Some(batch);
        }
        let c = &self.cursors[run];
        let key = self.key_at(c.batch.as_ref().expect("set above"), c.row);
        self.heap.push(Reverse((key, run)));
        Ok(())
    }

    /// The next rows by key, at most [`BATCH_ROWS`]; `None` once every run is merged.
    pub fn next_batch(&mut self) -> Result<Option<RecordBatch>, OutputError> {
        if self.heap.is_empty() {
            return Ok(None);
        }
        // Every batch a row is taken from, and the rows: (batch, row).
        let mut batches: Vec<RecordBatch> = Vec::new();
        let mut slot_of_run: Vec<Option<usize>> = vec![None; self.cursors.len()];
        let mut take = Vec::with_capacity(BATCH_ROWS);
        while take.len() < BATCH_ROWS
            && let Some(Reverse((_, run))) = self.heap.pop()
        {
            let slot = match slot_of_run[run] {
                Some(s) => s,
                None => {
                    batches.push(self.cursors[run].batch.clone().expect("a run in the heap has a batch"));
                    slot_of_run[run] = Some(batches.len() - 1);
                    batches.len() - 1
                }
            };
            take.push((slot, self.cursors[run].row));
            let before = self.cursors[run].next;
            self.advance(run)?;
            if self.cursors[run].next != before {
                // A new batch: later rows of this run are taken from it.
                slot_of_run[run] = None;
            }
        }
        let refs: Vec<&RecordBatch> = batches.iter().collect();
        arrow_select::interleave::interleave_record_batch(&refs, &take).map(Some).map_err(|e| self.file.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use squall_operators::Declaration;

    fn declaration() -> Arc<Declaration> {
        let plays = squall_operators::AttributeDecl {
            name: "plays".into(),
            op: "count".into(),
            events: Some("song".into()),
            ..Default::default()
        };
        Arc::new(Declaration::new(&[plays]).expect("a valid declaration"))
    }

    /// A folder of its own for one test.
    fn scratch(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("squall-spill-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch folder");
        dir
    }

    /// Feeds `rows` to `spill` as workers send them: 1000 at a time, through IPC bytes.
    fn feed(spill: &mut Spill, by_user: bool, rows: impl Iterator<Item = (Key, Option<String>)>) {
        let mut built = Rows::new(&declaration(), by_user);
        let mut send = |built: &mut Rows| {
            let bytes = encode(&built.batch().expect("a batch")).expect("encoded");
            spill.push(decode(&bytes).expect("decoded")).expect("pushed");
        };
        for (key, json) in rows {
            built.push(key, json.as_deref().map(str::as_bytes)).expect("pushed");
            if built.len() == 1000 {
                send(&mut built);
            }
        }
        if !built.is_empty() {
            send(&mut built);
        }
    }

    fn merged(m: &mut Merge) -> Vec<RecordBatch> {
        std::iter::from_fn(|| m.next_batch().expect("merges")).collect()
    }

    #[test]
    fn label_rows_come_back_in_row_order_across_runs_and_batches() {
        let dir = scratch("rows");
        let out = dir.join("out.parquet");
        let mut spill = Spill::new(&out, &declaration(), false);
        // Three runs and a part, rows in a scrambled order (a permutation: 7919 is prime to n).
        let n = 3 * RUN_ROWS as u64 + 1000;
        feed(
            &mut spill,
            false,
            (0..n)
                .map(|i| (i * 7919) % n)
                .map(|row| (Key::Row(row), (!row.is_multiple_of(5)).then(|| format!(r#"{{"plays":{row}}}"#)))),
        );
        let mut m = spill.finish().expect("finished");
        assert_eq!(m.schema().field(0).name(), "row");
        let batches = merged(&mut m);
        assert!(batches.iter().all(|b| b.num_rows() <= BATCH_ROWS));
        let mut next = 0u64;
        for b in &batches {
            let rows = b.column(0).as_any().downcast_ref::<UInt64Array>().expect("u64 rows");
            let plays = b.column(1).as_any().downcast_ref::<arrow_array::Int64Array>().expect("int plays");
            for i in 0..b.num_rows() {
                assert_eq!(rows.value(i), next);
                if next.is_multiple_of(5) {
                    assert!(plays.is_null(i), "row {next} had no answer");
                } else {
                    assert_eq!(plays.value(i), next as i64);
                }
                next += 1;
            }
        }
        assert_eq!(next, n);
        let spilled = dir.join(format!(".out.parquet.spill-{}", std::process::id()));
        assert!(spilled.exists(), "the runs were spilled to disk");
        drop(m);
        assert!(!spilled.exists(), "the spill file is removed");
        std::fs::remove_dir_all(dir).expect("removed");
    }

    #[test]
    fn users_come_back_sorted_and_nothing_spilled_means_no_rows() {
        let dir = scratch("users");
        let out = dir.join("snap.parquet");
        let mut m = Spill::new(&out, &declaration(), true).finish().expect("finished");
        assert_eq!(m.schema().field(0).name(), "user_id");
        assert!(m.next_batch().expect("merges").is_none());

        let mut spill = Spill::new(&out, &declaration(), true);
        let n = RUN_ROWS + 5;
        feed(
            &mut spill,
            true,
            (0..n).rev().map(|i| (Key::User(format!("u{i:07}").into()), Some(format!(r#"{{"plays":{i}}}"#)))),
        );
        let batches = merged(&mut spill.finish().expect("finished"));
        let users: Vec<String> = batches
            .iter()
            .flat_map(|b| {
                let s = b.column(0).as_any().downcast_ref::<StringArray>().expect("text users").clone();
                (0..s.len()).map(move |i| s.value(i).to_owned())
            })
            .collect();
        let expected: Vec<String> = (0..n).map(|i| format!("u{i:07}")).collect();
        assert_eq!(users, expected);
        std::fs::remove_dir_all(dir).expect("removed");
    }

    #[test]
    fn the_output_puts_each_answer_beside_its_label_row_across_uneven_label_batches() {
        use arrow_array::Int64Array;
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

        let dir = scratch("labels");
        let out = dir.join("train.parquet");
        let n = 2 * BATCH_ROWS + 50;
        let schema = Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Utf8, false),
            Field::new("ts", DataType::Int64, false),
            Field::new("label", DataType::Int64, false),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values((0..n).map(|r| format!("u{r}")))),
            Arc::new(Int64Array::from_iter_values((0..n).map(|r| r as i64 * 1000))),
            Arc::new(Int64Array::from_iter_values((0..n).map(|r| r as i64))),
        ];
        let file = dir.join("labels.parquet");
        let mut w =
            parquet::arrow::ArrowWriter::try_new(File::create(&file).expect("labels"), Arc::clone(&schema), None)
                .expect("a writer");
        w.write(&RecordBatch::try_new(Arc::clone(&schema), columns).expect("a batch")).expect("written");
        w.close().expect("closed");
        let labels = super::super::labels::read(&file).expect("labels read");
        assert_eq!(labels.len(), n);
        // The labels file read again in batches that do not line up with the merged ones.
        for label_batch in [3, 1000, BATCH_ROWS + 7] {
            let mut spill = Spill::new(&out, &declaration(), false);
            feed(
                &mut spill,
                false,
                (0..n as u64).rev().map(|row| (Key::Row(row), Some(format!(r#"{{"plays":{}}}"#, 2 * row)))),
            );
            let merge = spill.finish().expect("finished");
            let written = super::super::output::write_labels_in(&out, &labels, &labels.rows, merge, label_batch);
            assert_eq!(written.expect("written"), n as u64);
            let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&out).expect("the output"))
                .expect("a Parquet file")
                .build()
                .expect("a reader");
            let mut row = 0i64;
            for b in reader {
                let b = b.expect("a batch");
                let names: Vec<&str> = b.schema_ref().fields().iter().map(|f| f.name().as_str()).collect();
                assert_eq!(names, ["user_id", "ts", "label", "plays"]);
                let col = |i: usize| b.column(i).as_any().downcast_ref::<Int64Array>().expect("int64").clone();
                let users = b.column(0).as_any().downcast_ref::<StringArray>().expect("text").clone();
                let (label, plays) = (col(2), col(3));
                for i in 0..b.num_rows() {
                    assert_eq!(
                        (users.value(i), label.value(i), plays.value(i)),
                        (format!("u{row}").as_str(), row, 2 * row)
                    );
                    row += 1;
                }
            }
            assert_eq!(row, n as i64);
        }
        // A labels file changed after it was read: an error naming the first row that differs,
        // and no output.
        std::fs::remove_file(&out).expect("removed");
        let mut changed = labels.rows.clone();
        changed.ts[n - 5] += 1;
        let mut spill = Spill::new(&out, &declaration(), false);
        feed(&mut spill, false, (0..n as u64).map(|row| (Key::Row(row), None)));
        let e = super::super::output::write_labels(&out, &labels, &changed, spill.finish().expect("finished"))
            .expect_err("a changed file");
        assert!(e.to_string().contains(&format!("row {}: the labels file changed", n - 4)), "{e}");
        assert!(!out.exists());
        std::fs::remove_dir_all(dir).expect("removed");
    }
}
