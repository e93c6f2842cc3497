//! `feed_progress`: the last cut each feed of each version wrote, so that a version recovered
//! from a later checkpoint knows to write its users again.
//!
//! ```text
//! feed_progress (group_id text, feed text, cut bigint, written_at_ms bigint, PRIMARY KEY ((group_id, feed)))
//! ```
//!
//! # Notes
//! A process of a multi-process version feeds only the users it owns, and its processes go at
//! their own pace, so each keeps its own row: `feed` is `profile` or `changelog` for a
//! single-process version and `<feed>@<process>/<processes>` otherwise ([`key`]). One row for the
//! whole version would let a process that is behind take another's progress for its own and skip
//! rewriting its recovered users. A process's share depends only on its index and the number of
//! processes, so after that number changes no process finds a row for its new share and each
//! writes its recovered users again (rows of the old layout are left behind, a few bytes each).

use std::sync::Arc;

use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use squall_operators::Epoch;
use squall_operators::cql_schema::create_tables_unless_they_exist;

use crate::{FeedError, cql_error};

/// Reads and records one feed's progress.
#[derive(Clone)]
pub struct Progress {
    session: Arc<Session>,
    group_id: String,
    key: String,
    save: PreparedStatement,
}

/// The `feed` column of the progress of `feed` written by process `process` of `processes`.
pub fn key(feed: &str, (process, processes): (usize, usize)) -> String {
    if processes <= 1 { feed.to_owned() } else { format!("{feed}@{process}/{processes}") }
}

/// Milliseconds since the Unix epoch (0 for a clock set before it): the one wall clock of the
/// feeds and of `squall`.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Creates `table` in `keyspace` with `ddl` unless it exists
/// ([`squall_operators::cql_schema::create_tables_unless_they_exist`]).
pub(crate) async fn create_table(session: &Session, keyspace: &str, table: &str, ddl: &str) -> Result<(), FeedError> {
    let tables = [(table, ddl.to_owned())];
    let created = create_tables_unless_they_exist(session, keyspace, &tables)
        .await
        .map_err(|e| FeedError::Cql { statement: e.statement, message: e.message })?;
    if !created.is_empty() {
        tracing::info!(keyspace, table, "created feed table");
    }
    Ok(())
}

/// The last cut recorded under `key` ([`key`]) for `group_id`, if any: what a reader of the feed
/// may take as durably written (a standby reads it before the changelog's high watermarks).
pub async fn written(session: &Session, keyspace: &str, group_id: &str, key: &str) -> Result<Option<Epoch>, FeedError> {
    let read = format!("SELECT cut FROM {keyspace}.feed_progress WHERE group_id = ? AND feed = ?");
    let rows = session
        .query_unpaged(read.clone(), (group_id, key))
        .await
        .map_err(|e| cql_error(&read, e))?
        .into_rows_result()
        .map_err(|e| cql_error(&read, e))?;
    Ok(rows
        .maybe_first_row::<(Option<i64>,)>()
        .map_err(|e| cql_error(&read, e))?
        .and_then(|(c,)| c)
        .map(|c| c.max(0) as Epoch))
}

impl Progress {
    /// Opens the progress of feed `feed` of `group_id` written by process `share.0` of `share.1`
    /// (creating the table when missing); the last cut it wrote, if any.
    pub async fn open(
        session: Arc<Session>,
        keyspace: &str,
        group_id: &str,
        feed: &str,
        share: (usize, usize),
    ) -> Result<(Progress, Option<Epoch>), FeedError> {
        let key = key(feed, share);
        let ddl = format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.feed_progress (group_id text, feed text, cut bigint, \
             written_at_ms bigint, PRIMARY KEY ((group_id, feed)))"
        );
        create_table(&session, keyspace, "feed_progress", &ddl).await?;
        let cut = written(&session, keyspace, group_id, &key).await?;
        let save =
            format!("INSERT INTO {keyspace}.feed_progress (group_id, feed, cut, written_at_ms) VALUES (?, ?, ?, ?)");
        let save = session.prepare(save.clone()).await.map_err(|e| cql_error(&save, e))?;
        Ok((Progress { session, group_id: group_id.to_owned(), key, save }, cut))
    }

    /// Records that everything up to `cut` is written.
    pub async fn save(&self, cut: Epoch) -> Result<(), FeedError> {
        let values = (&self.group_id, &self.key, cut as i64, now_ms());
        self.session.execute_unpaged(&self.save, values).await.map_err(|e| cql_error(self.save.get_statement(), e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::key;

    #[test]
    fn each_process_of_a_multi_process_version_keeps_its_own_row() {
        assert_eq!(key("profile", (0, 1)), "profile", "single-process rows keep their key");
        assert_eq!(key("changelog", (1, 2)), "changelog@1/2");
        assert_ne!(key("profile", (0, 2)), key("profile", (0, 4)), "a new layout starts afresh");
        assert_ne!(key("profile", (0, 2)), key("profile", (1, 2)));
    }
}
