//! The offset committer of a version: commits complete cuts' offsets under the version's group id.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use squall_operators::{Epoch, Partition};

use crate::kafka::KafkaSetupError;
use crate::version::counters::OffsetCommits;

/// A partition and its next offset.
type PartitionOffset = (Partition, i64);

/// Why the committer could not start.
#[derive(Debug, thiserror::Error)]
pub enum CommitterError {
    /// The Kafka client could not be made.
    #[error(transparent)]
    Kafka(#[from] KafkaSetupError),
    /// Its thread could not be started.
    #[error("cannot start the offset committer thread")]
    Thread(#[source] std::io::Error),
}

/// Commits complete cuts' offsets under the version's group id, so that ordinary Kafka tools see
/// the version's progress; called only after a cut's checkpoint is durable. The commits run on
/// their own thread, so a broker outage never holds up checkpoint writes: while a commit waits,
/// newer cuts replace the queued one (a newer cut's offsets are never behind an older one's), and
/// a failed commit is retried every second until it succeeds or a newer cut arrives. The thread
/// ends when the returned function is dropped (after one last attempt).
pub fn offset_committer(
    brokers: &str,
    group_id: &str,
) -> Result<impl FnMut(Epoch, &[PartitionOffset]) + Send + 'static, CommitterError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group_id)
        // This consumer only commits; it never reads or joins the group.
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|source| KafkaSetupError::Metadata { brokers: brokers.into(), source })?;
    let group = group_id.to_owned();
    let (tx, rx) = std::sync::mpsc::channel::<(Epoch, Vec<PartitionOffset>)>();
    let commits = OffsetCommits::new(&group);
    std::thread::Builder::new()
        .name(format!("commit-{group}"))
        .spawn(move || {
            let mut pending: Option<(Epoch, Vec<PartitionOffset>)> = None;
            let mut closed = false;
            loop {
                // Take the newest cut queued; wait for one if nothing is pending.
                let next = if pending.is_some() {
                    match rx.recv_timeout(Duration::from_secs(1)) {
                        Ok(c) => Some(c),
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                            closed = true;
                            None
                        }
                    }
                } else {
                    match rx.recv() {
                        Ok(c) => Some(c),
                        Err(_) => return,
                    }
                };
                if let Some(c) = next {
                    pending = Some(rx.try_iter().last().unwrap_or(c));
                }
                let Some((cut, offsets)) = &pending else { continue };
                let mut tpl = TopicPartitionList::new();
                for (p, next) in offsets.iter().filter(|(_, o)| *o >= 0) {
                    let _ = tpl.add_partition_offset(&p.topic, p.partition, Offset::Offset(*next));
                }
                if tpl.count() == 0 {
                    pending = None;
                } else {
                    match consumer.commit(&tpl, CommitMode::Sync) {
                        Ok(()) => {
                            commits.ok.increment(1);
                            pending = None;
                        }
                        Err(e) => {
                            commits.failed.increment(1);
                            tracing::warn!(group_id = %group, cut, error = %e, "cannot commit offsets; retrying");
                        }
                    }
                }
                if closed {
                    return;
                }
            }
        })
        .map_err(CommitterError::Thread)?;
    Ok(move |cut: Epoch, offsets: &[PartitionOffset]| {
        // Only fails once the thread is gone, which happens only after this function is dropped.
        let _ = tx.send((cut, offsets.to_vec()));
    })
}
