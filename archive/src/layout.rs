//! Where files live in the archive, and the manifest entry that describes each data file.

use object_store::path::Path;
use serde::{Deserialize, Serialize};

/// The manifest entry of one data file: everything a reader needs without opening it.
///
/// Written as JSON to [`manifest_path`] after the data file is stored, so an entry always names a
/// complete file. Offsets `from_offset..=last_offset` are covered by this file: the records in it
/// are every record the topic partition held in that range (Kafka may skip offsets, e.g. after
/// compaction, so `first_offset` can be above `from_offset`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// The layout version, 1.
    pub version: u32,
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The first offset the file covers: the previous file's `last_offset + 1`, or where the
    /// archive of this partition begins.
    pub from_offset: i64,
    /// The offset of the file's first record.
    pub first_offset: i64,
    /// The offset of the file's last record.
    pub last_offset: i64,
    /// Records in the file.
    pub rows: u64,
    /// Records that failed to decode (they have a `dlq_reason`).
    pub dlq_rows: u64,
    /// Least and greatest event time (`ts`) of the decoded records, epoch ms; `None` if none decoded.
    pub ts_range: Option<(i64, i64)>,
    /// Least and greatest Kafka timestamp, epoch ms; `None` if no record has one.
    pub timestamp_range: Option<(i64, i64)>,
    /// The data file's path under the archive root.
    pub path: String,
    /// The data file's size in bytes.
    pub bytes: u64,
    /// XXH3-64 of the data file's bytes, hex; checked on every read.
    pub xxh3: String,
}

/// Manifest, data and pending-marker paths under the archive root.
///
/// ```text
/// <topic>/date=YYYY-MM-DD/partition=<p>/<first_offset:020>-<last_offset:020>.parquet
/// <topic>/manifest/partition=<p>/<first_offset:020>-<last_offset:020>.json
/// <topic>/manifest/partition=<p>/pending.json
/// ```
pub fn data_path(topic: &str, partition: i32, day_ms: Option<i64>, first: i64, last: i64) -> String {
    format!("{topic}/date={}/partition={partition}/{first:020}-{last:020}.parquet", date(day_ms.unwrap_or(0)))
}

/// The folder of a partition's manifest entries.
pub fn manifest_dir(topic: &str, partition: i32) -> Path {
    Path::from(format!("{topic}/manifest/partition={partition}"))
}

/// The manifest entry of the data file holding `first..=last`.
pub fn manifest_path(topic: &str, partition: i32, first: i64, last: i64) -> Path {
    manifest_dir(topic, partition).join(format!("{first:020}-{last:020}.json"))
}

/// The marker written before a data file and removed after its manifest entry: it holds the
/// entry, so a restart finishes (or undoes) a write that a crash interrupted.
pub fn pending_path(topic: &str, partition: i32) -> Path {
    manifest_dir(topic, partition).join("pending.json")
}

/// Whether a manifest object's file name is an entry (`<20 digits>-<20 digits>.json`).
pub fn is_entry_name(name: &str) -> bool {
    let Some(stem) = name.strip_suffix(".json") else { return false };
    let b = stem.as_bytes();
    b.len() == 41 && b[20] == b'-' && b.iter().enumerate().all(|(i, c)| i == 20 || c.is_ascii_digit())
}

/// The partition a manifest folder segment `partition=<p>` names.
pub fn partition_of_manifest_dir(segment: &str) -> Option<i32> {
    segment.strip_prefix("partition=")?.parse().ok()
}

/// `YYYY-MM-DD` (UTC) of an epoch-millisecond time.
pub fn date(ms: i64) -> String {
    // Howard Hinnant's days-to-civil algorithm.
    let z = ms.div_euclid(86_400_000) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_names() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(1_763_750_000_000), "2025-11-21");
        assert_eq!(date(951_782_400_000), "2000-02-29");
        assert_eq!(date(-1), "1969-12-31");
        assert_eq!(
            data_path("song-completions", 3, Some(0), 5, 12),
            "song-completions/date=1970-01-01/partition=3/00000000000000000005-00000000000000000012.parquet"
        );
        let m = manifest_path("t", 0, 5, 12);
        assert!(is_entry_name(m.filename().unwrap()));
        assert!(!is_entry_name("pending.json"));
    }
}
