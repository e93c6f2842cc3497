//! Backfilling a version from an archive of its topics (`squall deploy --backfill`): whether the
//! archive reaches the offsets Kafka still holds, asked by the server before it deploys and by
//! the version before it starts; and the archive opened as the version's source's backlog.

use std::collections::BTreeMap;
use std::sync::Arc;

use squall_archive::{Archive, ArchiveBacklog, ListError, OpenError};
use squall_operators::Partition;
use squall_operators::backfill::{Extent, SeamError, check_seam};

use crate::kafka::{self, Inputs, KafkaSetupError};

/// Why a backfill cannot start.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The archive's URL cannot be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The archive's manifest cannot be listed, or it has a hole or an overlap.
    #[error(transparent)]
    List(#[from] ListError),
    /// Kafka could not say what it holds.
    #[error(transparent)]
    Kafka(#[from] KafkaSetupError),
    /// Kafka no longer holds offsets the archive does not have.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Gap(Vec<SeamError>),
    /// The archive's directory does not exist (a deploy never creates one).
    #[error("no archive at {0}: a directory written by `squall archive`, or an s3://, gs://, az:// URL")]
    Missing(String),
    /// A blocking step failed to run.
    #[error("{0}")]
    Blocking(String),
}

/// The archive at `url`, listed for the partitions of `inputs`, and Kafka's earliest offsets of them.
async fn read(url: &str, inputs: &Inputs) -> Result<(ArchiveBacklog, BTreeMap<Partition, i64>), CheckError> {
    let local = match url.strip_prefix("file://") {
        Some(path) => Some(path),
        None => (!url.contains("://")).then_some(url),
    };
    if local.is_some_and(|path| !std::path::Path::new(path).is_dir()) {
        return Err(CheckError::Missing(url.to_owned()));
    }
    let archive = Archive::open(url)?;
    let inputs = inputs.clone();
    let (partitions, low) = tokio::task::spawn_blocking(move || -> Result<_, KafkaSetupError> {
        let partitions = inputs.partitions()?;
        let reader = kafka::group_reader(&inputs.brokers, "squall-backfill-check")?;
        let names: Vec<Partition> = partitions.iter().map(|(p, _)| p.clone()).collect();
        Ok((partitions, kafka::earliest(&reader, &inputs.brokers, &names)?))
    })
    .await
    .map_err(|e| CheckError::Blocking(e.to_string()))??;
    let backlog = ArchiveBacklog::list(archive, &partitions, tokio::runtime::Handle::current()).await?;
    Ok((backlog, low))
}

/// Whether a version deployed with `--backfill url` can apply the archive and then read Kafka
/// without losing an offset (before it has a checkpoint).
pub async fn check(url: &str, inputs: &Inputs) -> Result<(), CheckError> {
    let (backlog, low) = read(url, inputs).await?;
    check_seam(&squall_operators::backfill::Backlog::extents(&backlog), &low, &BTreeMap::new()).map_err(CheckError::Gap)
}

/// The archive at `url` as the source's backlog for a version resuming at `resume_at`, checked
/// to reach the offsets Kafka holds.
pub async fn open(
    url: &str,
    inputs: &Inputs,
    resume_at: &BTreeMap<Partition, i64>,
) -> Result<Arc<ArchiveBacklog>, CheckError> {
    let (backlog, low) = read(url, inputs).await?;
    let extents: BTreeMap<Partition, Extent> = squall_operators::backfill::Backlog::extents(&backlog);
    check_seam(&extents, &low, resume_at).map_err(CheckError::Gap)?;
    Ok(Arc::new(backlog))
}
