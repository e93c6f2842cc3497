//! The seam between the source and an archive of its topics: a version applies the archived
//! records of its partitions first, then reads Kafka from exactly the offset after the last one.
//!
//! # Notes
//! The archive keeps each record's Kafka offset, so a backfilled record moves its partition's
//! next offset exactly as the same record read from Kafka would: checkpoints cut through a
//! backfill as through a stream, and a recovery resumes from the archive when its offsets are
//! still inside it. A worker reads the partition whose event time is behind the others' first (a
//! batch at a time), so its partitions advance together without pausing anything.

use std::collections::BTreeMap;
use std::fmt;

use crate::event::{DecodeError, DecodeLimits, Event, EventKind};
use crate::partition::Partition;

/// One archived record of a partition.
#[derive(Clone, Debug, PartialEq)]
pub struct Archived {
    /// Its Kafka offset.
    pub offset: i64,
    /// The original key bytes (may be left out when `decoded` is `Some(Ok(_))`, like the payload).
    pub key: Option<Vec<u8>>,
    /// The original payload bytes (may be left empty when `decoded` is `Some(Ok(_))`: only a
    /// dead letter carries them on).
    pub payload: Vec<u8>,
    /// What the decoder made of the payload when it was archived; `None`: decode it now.
    pub decoded: Option<Result<Event, DecodeError>>,
}

/// Why an archive could not be read. The message names the file.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct BacklogError {
    /// What went wrong, with the file or object it concerns.
    pub what: String,
}

/// What a partition's archive holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// The first archived offset.
    pub first: i64,
    /// The last archived offset.
    pub last: i64,
}

/// An archive of the input topics, read by every worker of a version.
pub trait Backlog: Send + Sync + fmt::Debug {
    /// Per partition, the offsets it holds (a partition it does not name holds nothing).
    fn extents(&self) -> BTreeMap<Partition, Extent>;

    /// The records of `partition` (topic of `kind`) from offset `from` on, in offset order.
    ///
    /// With `since_ms`, a file whose events are all older may be skipped whole (the source drops
    /// older events of the files it reads). `Archived::decoded` may be filled only when the
    /// archive decoded the payload with exactly `limits`.
    fn open(
        &self,
        partition: &Partition,
        kind: EventKind,
        from: i64,
        since_ms: Option<i64>,
        limits: &DecodeLimits,
    ) -> Result<Box<dyn Cursor>, BacklogError>;
}

/// One partition's archived records, read in order.
pub trait Cursor {
    /// Appends up to `max` next records to `out`; none appended: the partition's archive is done.
    fn next_batch(&mut self, max: usize, out: &mut Vec<Archived>) -> Result<(), BacklogError>;
}

/// What a version reads from an archive before Kafka.
#[derive(Clone, Debug)]
pub struct Backfill {
    /// The archive.
    pub backlog: std::sync::Arc<dyn Backlog>,
    /// Events with an earlier event time are not applied (`--since`); their offsets are passed.
    pub since_ms: Option<i64>,
}

/// Why a version cannot backfill from an archive and then read Kafka without a gap.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SeamError {
    /// Kafka no longer holds the offset after the archive's last one.
    #[error(
        "{topic}[{partition}]: the archive ends at offset {archived_to} but Kafka's earliest retained offset is {kafka_from}: offsets {first_missing}..{last_missing} are in neither; archive the topic before its retention passes, or deploy without --backfill"
    )]
    Gap {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The archive's last offset of it (-1: none archived).
        archived_to: i64,
        /// The oldest offset Kafka still holds.
        kafka_from: i64,
        /// The first offset in neither.
        first_missing: i64,
        /// The last offset in neither.
        last_missing: i64,
    },
}

/// Checks that, per partition, Kafka still holds the offset after the archive's end (its
/// earliest retained offset, `kafka_low`, is at most one past the archive's last); partitions
/// resumed from a checkpoint past the archive (`resume_at`) need nothing of it.
pub fn check_seam(
    extents: &BTreeMap<Partition, Extent>,
    kafka_low: &BTreeMap<Partition, i64>,
    resume_at: &BTreeMap<Partition, i64>,
) -> Result<(), Vec<SeamError>> {
    let gaps: Vec<SeamError> = kafka_low
        .iter()
        .filter_map(|(p, &low)| {
            let archived_to = extents.get(p).map_or(-1, |e| e.last);
            let next = resume_at.get(p).copied().unwrap_or(0).max(archived_to + 1);
            (low > next).then(|| SeamError::Gap {
                topic: p.topic.clone(),
                partition: p.partition,
                archived_to,
                kafka_from: low,
                first_missing: next,
                last_missing: low - 1,
            })
        })
        .collect();
    if gaps.is_empty() { Ok(()) } else { Err(gaps) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: i32) -> Partition {
        Partition { topic: "t".into(), partition: n }
    }

    #[test]
    fn the_seam_is_refused_only_where_kafka_lost_offsets_the_archive_lacks() {
        let extents = BTreeMap::from([(p(0), Extent { first: 0, last: 99 }), (p(1), Extent { first: 0, last: 49 })]);
        // p0: Kafka from 100, exactly after the archive. p1: Kafka from 60, 50..59 lost. p2: no
        // archive, Kafka from 0.
        let low = BTreeMap::from([(p(0), 100), (p(1), 60), (p(2), 0)]);
        let err = check_seam(&extents, &low, &BTreeMap::new()).unwrap_err();
        assert_eq!(
            err,
            vec![SeamError::Gap {
                topic: "t".into(),
                partition: 1,
                archived_to: 49,
                kafka_from: 60,
                first_missing: 50,
                last_missing: 59
            }]
        );
        assert!(
            err[0]
                .to_string()
                .starts_with("t[1]: the archive ends at offset 49 but Kafka's earliest retained offset is 60")
        );
        // Overlap is fine; a checkpoint past the gap needs nothing of it.
        let low = BTreeMap::from([(p(0), 10), (p(1), 60)]);
        assert_eq!(check_seam(&extents, &low, &BTreeMap::from([(p(1), 70)])), Ok(()));
    }
}
