//! Import of newline-delimited JSON exports (one event per line, no Kafka metadata) into the
//! archive's layout.

use std::io::BufRead as _;
use std::path::PathBuf;

use squall_operators::event::DecodeLimits;

use crate::archiver::TopicSpec;
use crate::file::{FileBuilder, RawRecord};
use crate::store::{Archive, ListError, PutError};

/// Why an import stopped. Files stored before the error stay in the archive (each is complete
/// and in the manifest); importing the rest continues after them.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// An input file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The input file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The archive's manifest could not be read or is inconsistent.
    #[error(transparent)]
    List(#[from] ListError),
    /// A file could not be stored.
    #[error(transparent)]
    Put(#[from] PutError),
    /// A file could not be encoded.
    #[error("encoding: {0}")]
    Encode(#[from] parquet::errors::ParquetError),
}

/// What an import wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Imported {
    /// Lines archived (empty lines are skipped).
    pub records: u64,
    /// Of which did not decode (archived with their dead-letter reason).
    pub dead_letters: u64,
    /// Data files written.
    pub files: u64,
    /// The offsets the records were given.
    pub offsets: Option<(i64, i64)>,
}

/// Archives the lines of `inputs`, in order, as records of `topic` partition `partition`.
///
/// Each non-empty line is one record's value (without its line ending, `\n` or `\r\n`), with no
/// key and no Kafka timestamp; offsets continue after the partition's last archived offset (from
/// 0 in an empty partition), so importing more files later appends to them. The date folder
/// is the first decoded event time of each data file.
pub async fn import(
    archive: &Archive,
    topic: &TopicSpec,
    partition: i32,
    inputs: &[PathBuf],
    rows_per_file: usize,
    limits: DecodeLimits,
) -> Result<Imported, ImportError> {
    archive.recover(&topic.name, partition).await?;
    let start = archive.list(&topic.name, partition).await?.last().map_or(0, |f| f.last_offset + 1);
    let mut file = FileBuilder::new(&topic.name, partition, topic.kind, limits, start);
    let mut done = Imported { records: 0, dead_letters: 0, files: 0, offsets: None };
    let mut offset = start;
    let store = async |file: FileBuilder, done: &mut Imported| -> Result<(), ImportError> {
        if let Some(encoded) = file.finish()? {
            archive.put_file(&encoded).await?;
            done.files += 1;
            done.dead_letters += encoded.entry.dlq_rows;
        }
        Ok(())
    };
    for path in inputs {
        let read_err = |source| ImportError::Read { path: path.clone(), source };
        let reader = std::io::BufReader::new(std::fs::File::open(path).map_err(read_err)?);
        for line in reader.split(b'\n') {
            let mut line = line.map_err(read_err)?;
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.is_empty() {
                continue;
            }
            file.push(RawRecord { offset, timestamp: None, key: None, value: &line });
            done.offsets = Some((start, offset));
            done.records += 1;
            offset += 1;
            if file.rows() >= rows_per_file {
                let next = FileBuilder::new(&topic.name, partition, topic.kind, limits, offset);
                store(std::mem::replace(&mut file, next), &mut done).await?;
            }
        }
    }
    store(file, &mut done).await?;
    Ok(done)
}
