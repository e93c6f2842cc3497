//! Checkpoints in the CQL store (ScyllaDB/Cassandra): a partition per key group, so a process
//! reads only the rows of the key groups its workers own, and compaction rewrites a key group only
//! once it has changed enough.
//!
//! # Tables (in the `[cql]` keyspace, created at start when missing)
//! ```text
//! checkpoint_marks  (group_id text, cut bigint, worker int, peers int, key_groups int, bucket_ms bigint,
//!                    watermark bigint, offsets blob,                PRIMARY KEY ((group_id), cut, worker))
//! checkpoint_groups (group_id text, key_group int, cut bigint, writer int, users blob,
//!                                                   PRIMARY KEY ((group_id, key_group), cut, writer))
//! checkpoint_ids    (group_id text, key_group int, bucket bigint, cut bigint, writer int, ids blob,
//!                                                   PRIMARY KEY ((group_id, key_group), bucket, cut, writer))
//! ```
//! A part `(cut, worker)` writes one `checkpoint_groups` row per key group it changed (its users'
//! snapshots, `None` for an expired user), one `checkpoint_ids` row per (key group, time bucket) it
//! added dedup ids to, all at once, and *then* its `checkpoint_marks` row: the mark is the commit
//! marker, a cut is complete when its `peers` marks exist; marks are written in cut order.
//!
//! # Notes
//! The cut is part of every row's key, so rows of a cut that is not complete never replace what an
//! earlier complete cut needs: recovery takes, per key group, the newest *base* row (`writer = -1`)
//! with `cut <=` the latest complete cut and folds the newer rows up to it in cut order, and
//! deletes rows of later cuts (a process reads every row of its key groups, so none escapes: a
//! stale row would otherwise count once a later cut completed). Each process compacts the key
//! groups it owns (one process per group, [`crate::key_groups::KeyGroups::compactor`]): once the
//! rows newer than a group's base add up to a quarter of it (at least 32 KiB), it reads the group,
//! writes a new base at the latest complete cut and deletes the rows it folded (the most overdue
//! first, rewriting at most eight times what was written since the last compaction); and it
//! deletes the `checkpoint_ids` rows of expired buckets (all of them: it knows every row of its
//! groups from recovery and its own writes). Process 0 deletes marks older than the compacted
//! cut. Until a deletion the older rows fold to the same state, so every crash point is safe.
//!
//! A standby's [`read`](CheckpointStore::read) folds as recovery does but deletes nothing, beside
//! the active process's writer and compactor. A rebase writes its base before it deletes what the
//! base folds, and the fold takes the newest base up to the cut and only the rows after it, so a
//! compaction seen half done (base written, older rows still there) folds to the same state.
//! What a read cannot see in the rows it gets is a rebase that deleted rows it needs before or
//! while it read them: so it reads each key group's keys again afterwards, folds the group again
//! if a newer base has appeared, and starts over (at the later cut, complete by then) if a base
//! lies beyond its cut. Expired dedup buckets go whole at a later cut's watermark: once done, it
//! reads the marks again and starts over if a bucket it kept has expired by the latest complete
//! cut since. [`resume`](CheckpointStore::resume) reads the marks and only the key columns of the
//! rows of the key groups it compacts (`cut, writer`; `bucket, cut, writer`) to delete those
//! beyond the cut, and leaves the compaction bookkeeping (bytes per key group, ids rows per bucket)
//! to its first compaction, which reads those key groups' rows once.
//!
//! Partitions stay bounded: a group's holds its base plus changes worth a quarter of it, an ids
//! partition the ids of one group within the horizon, the marks partition the cuts since the last
//! compaction. Deletes leave tombstones until `gc_grace_seconds`; every row here is replaced
//! within minutes, so a short `gc_grace_seconds` (an hour) suits these tables in production
//! (recovery ignores a resurrected row: its cut is older than the base or the latest complete cut).
//!
//! The statements are plain CQL: partition-key equality, full-key deletes, no ranges, `IN`, `ORDER BY`, lightweight transactions or TTLs, so they run unchanged on
//! ScyllaDB/Cassandra and within what the kassandra-based dev server handles correctly (two or
//! three clustering columns in every table; equality on a single clustering column is never used).
//! Writes use the session's default consistency (`LOCAL_QUORUM` in the scylla driver).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use tokio::runtime::Handle;

use crate::attributes::UserSnapshot;
use crate::checkpoint::{
    CheckpointError, CheckpointStore, DedupRun, Part, RebaseCandidate, Recovered, RecoveryScope, UserRows,
    due_for_rebase, fold_rows, oldest_live_bucket,
};
use crate::cql_schema::{CqlStatementError, create_tables_unless_they_exist};
use crate::dedup::{BUCKETS, Fingerprint};
use crate::epoch::Epoch;
use crate::partition::Partition;

/// The `writer` of a base row.
const BASE: i32 = -1;

/// Statements in flight at once while writing or deleting rows.
const PARALLELISM: usize = 256;

/// Key groups read at once during recovery and compaction.
const READ_PARALLELISM: usize = 64;

/// The `CREATE TABLE` statements of the checkpoint tables in `keyspace`.
pub fn schema(keyspace: &str) -> [String; 3] {
    [
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.checkpoint_marks (group_id text, cut bigint, worker int, \
             peers int, key_groups int, bucket_ms bigint, watermark bigint, offsets blob, \
             PRIMARY KEY (group_id, cut, worker))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.checkpoint_groups (group_id text, key_group int, cut bigint, \
             writer int, users blob, PRIMARY KEY ((group_id, key_group), cut, writer))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.checkpoint_ids (group_id text, key_group int, bucket bigint, \
             cut bigint, writer int, ids blob, PRIMARY KEY ((group_id, key_group), bucket, cut, writer))"
        ),
    ]
}

const TABLES: [&str; 3] = ["checkpoint_marks", "checkpoint_groups", "checkpoint_ids"];

/// Creates the checkpoint tables in `keyspace` (which must exist) unless they exist already.
pub async fn create_tables(session: &Session, keyspace: &str) -> Result<(), CheckpointError> {
    check_keyspace(keyspace)?;
    let tables: Vec<(&str, String)> = TABLES.into_iter().zip(schema(keyspace)).collect();
    for table in create_tables_unless_they_exist(session, keyspace, &tables).await? {
        tracing::info!(keyspace, table, "created checkpoint table");
    }
    Ok(())
}

fn check_keyspace(keyspace: &str) -> Result<(), CheckpointError> {
    squall_enrichment::schema::check_keyspace(keyspace)
        .map_err(|e| CheckpointError::Cql { statement: format!("keyspace {keyspace:?}"), message: e.to_string() })
}

fn cql(statement: &str, e: impl std::fmt::Display) -> CheckpointError {
    CqlStatementError::new(statement, e).into()
}

fn corrupt(what: String, e: impl std::fmt::Display) -> CheckpointError {
    CheckpointError::Corrupt { what, message: e.to_string() }
}

fn cut_value(cut: Epoch) -> Result<i64, CheckpointError> {
    i64::try_from(cut).map_err(|e| corrupt(format!("cut {cut}"), e))
}

fn encode<T: serde::Serialize>(value: &T, what: impl FnOnce() -> String) -> Result<Vec<u8>, CheckpointError> {
    bincode::serialize(value).map_err(|e| corrupt(what(), e))
}

/// A `checkpoint_marks` row.
#[derive(Clone, Debug)]
struct Mark {
    cut: Epoch,
    worker: i32,
    peers: i32,
    key_groups: i32,
    bucket_ms: i64,
    watermark: i64,
    offsets: Vec<u8>,
}

type MarkTuple = (i64, i32, i32, i32, i64, i64, Vec<u8>);

/// A row of a group partition: (cut, writer, blob).
type Row = (i64, i32, Vec<u8>);

/// A row of an ids partition: (bucket, cut, writer, blob).
type IdsRow = (i64, i64, i32, Vec<u8>);

/// The key of a row within a group partition: (cut, writer).
type GroupKey = (i64, i32);

/// The key of a row within an ids partition: (bucket, cut, writer).
type IdsKey = (i64, i64, i32);

/// What the compacting process knows of a key group it compacts.
#[derive(Clone, Debug, Default)]
struct GroupStats {
    /// Bytes of the base row (or of the oldest row, when there is no base yet).
    base: u64,
    /// Bytes of the rows newer than it.
    newer: u64,
    /// The keys (cut, writer) of its ids rows, by bucket.
    ids: BTreeMap<i64, Vec<(i64, i32)>>,
}

struct Statements {
    insert_mark: PreparedStatement,
    insert_group: PreparedStatement,
    insert_ids: PreparedStatement,
    select_marks: PreparedStatement,
    select_group: PreparedStatement,
    select_ids: PreparedStatement,
    select_group_keys: PreparedStatement,
    select_ids_keys: PreparedStatement,
    delete_mark: PreparedStatement,
    delete_group_row: PreparedStatement,
    delete_ids_row: PreparedStatement,
}

impl Statements {
    async fn prepare(session: &Session, ks: &str) -> Result<Self, CheckpointError> {
        let p = |text: String| async move {
            let mut stmt = session.prepare(text.clone()).await.map_err(|e| cql(&text, e))?;
            // Every statement here writes or deletes fixed values: the driver may retry it.
            stmt.set_is_idempotent(true);
            Ok::<_, CheckpointError>(stmt)
        };
        Ok(Statements {
            insert_mark: p(format!(
                "INSERT INTO {ks}.checkpoint_marks (group_id, cut, worker, peers, key_groups, bucket_ms, watermark, \
                 offsets) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            ))
            .await?,
            insert_group: p(format!(
                "INSERT INTO {ks}.checkpoint_groups (group_id, key_group, cut, writer, users) VALUES (?, ?, ?, ?, ?)"
            ))
            .await?,
            insert_ids: p(format!(
                "INSERT INTO {ks}.checkpoint_ids (group_id, key_group, bucket, cut, writer, ids) VALUES (?, ?, ?, ?, ?, ?)"
            ))
            .await?,
            select_marks: p(format!(
                "SELECT cut, worker, peers, key_groups, bucket_ms, watermark, offsets \
                 FROM {ks}.checkpoint_marks WHERE group_id = ?"
            ))
            .await?,
            select_group: p(format!(
                "SELECT cut, writer, users FROM {ks}.checkpoint_groups WHERE group_id = ? AND key_group = ?"
            ))
            .await?,
            select_ids: p(format!(
                "SELECT bucket, cut, writer, ids FROM {ks}.checkpoint_ids WHERE group_id = ? AND key_group = ?"
            ))
            .await?,
            select_group_keys: p(format!(
                "SELECT cut, writer FROM {ks}.checkpoint_groups WHERE group_id = ? AND key_group = ?"
            ))
            .await?,
            select_ids_keys: p(format!(
                "SELECT bucket, cut, writer FROM {ks}.checkpoint_ids WHERE group_id = ? AND key_group = ?"
            ))
            .await?,
            delete_mark: p(format!("DELETE FROM {ks}.checkpoint_marks WHERE group_id = ? AND cut = ? AND worker = ?"))
                .await?,
            delete_group_row: p(format!(
                "DELETE FROM {ks}.checkpoint_groups WHERE group_id = ? AND key_group = ? AND cut = ? AND writer = ?"
            ))
            .await?,
            delete_ids_row: p(format!(
                "DELETE FROM {ks}.checkpoint_ids WHERE group_id = ? AND key_group = ? AND bucket = ? AND cut = ? \
                 AND writer = ?"
            ))
            .await?,
        })
    }
}

/// One version's checkpoints in the CQL store. See the module notes.
pub struct CqlCheckpoints {
    session: Arc<Session>,
    runtime: Handle,
    keyspace: String,
    group_id: String,
    stmts: Statements,
    /// Set by recovery; without it (a store only written and compacted, as in benchmarks) this
    /// process compacts every key group and tidies.
    scope: Option<RecoveryScope>,
    /// The key groups this process compacts.
    groups: HashMap<u32, GroupStats>,
    /// Whether `groups` is to be built from the rows before the next compaction: a resume did not
    /// read them.
    stale: bool,
    /// Bytes of group rows written since the last compaction, for the rebase budget.
    written: u64,
}

/// Where a key group's rows stand at a cut: the base and the rows after it, the rows beyond the
/// cut, and the group's users.
struct Folded {
    users: HashMap<String, UserSnapshot>,
    /// Keys (cut, writer) of the rows up to the cut, the base included.
    upto: Vec<(i64, i32)>,
    /// Keys of the rows beyond the cut.
    beyond: Vec<(i64, i32)>,
    stats: GroupStats,
    bytes: u64,
}

/// Folds a key group's rows up to cut `limit` (-1: none is complete, every row is beyond).
fn fold_group(rows: Vec<Row>, limit: i64, key_group: u32) -> Result<Folded, CheckpointError> {
    let (live, mut f) = split_group(rows, limit);
    for (c, w, blob) in live {
        let rows: UserRows = bincode::deserialize(&blob)
            .map_err(|e| corrupt(format!("key group {key_group} at cut {c} by writer {w}"), e))?;
        fold_rows(&mut f.users, rows);
    }
    Ok(f)
}

/// Splits a key group's rows at cut `limit`: the rows a fold up to it reads, oldest first (the
/// newest base up to it and the rows after that base), and the rest of a [`Folded`] without its
/// users: the keys up to and beyond the cut and the compaction bookkeeping.
fn split_group(rows: Vec<Row>, limit: i64) -> (Vec<Row>, Folded) {
    let base = rows.iter().filter(|r| r.1 == BASE && r.0 <= limit).map(|r| r.0).max();
    let mut f = Folded {
        users: HashMap::new(),
        upto: Vec::new(),
        beyond: Vec::new(),
        stats: GroupStats::default(),
        bytes: rows.iter().map(|r| r.2.len() as u64 + 12).sum(),
    };
    let mut live: Vec<Row> = Vec::new();
    for row in rows {
        if row.0 > limit {
            f.beyond.push((row.0, row.1));
        } else {
            f.upto.push((row.0, row.1));
            // Rows older than the base (or older bases) are folded into it already. So a
            // compaction seen half done, its base written and the rows it folds not yet all
            // deleted, folds to the same state: those rows are left out whether still there or not.
            let newer = match base {
                Some(b) => row.0 > b || (row.0 == b && row.1 == BASE),
                None => true,
            };
            if newer {
                live.push(row);
            }
        }
    }
    // Oldest first; the base of a cut before the part rows of that cut (it folds them).
    live.sort_by_key(|r| (r.0, r.1 != BASE, r.1));
    for (i, (_, _, blob)) in live.iter().enumerate() {
        if i == 0 {
            f.stats.base = blob.len() as u64;
        } else {
            f.stats.newer += blob.len() as u64;
        }
    }
    (live, f)
}

/// The cut of the newest base among `keys` (cut, writer).
fn newest_base<'k>(keys: impl IntoIterator<Item = &'k GroupKey>) -> Option<i64> {
    keys.into_iter().filter(|k| k.1 == BASE).map(|k| k.0).max()
}

/// The newest event time any worker had applied at `cut`, by the marks up to it.
fn watermark_at(marks: &[Mark], cut: Epoch) -> i64 {
    marks.iter().filter(|m| m.cut <= cut).map(|m| m.watermark).max().unwrap_or(i64::MIN)
}

/// What a fold of the checkpoints is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fold {
    /// Recovery: sets the scope, deletes what lies beyond the cut among what it tidies or
    /// compacts, and builds the compaction bookkeeping.
    Recover,
    /// A read that changes nothing, beside a writer and compactor in another process.
    Read,
}

/// A read starts over, or folds a key group again, at most this many times when a compaction
/// changes what it reads.
const READ_ATTEMPTS: usize = 5;

impl CqlCheckpoints {
    /// Creates the tables if missing and prepares the statements. The blocking
    /// [`CheckpointStore`] methods run their requests on `runtime`; call them from a thread that is
    /// not a runtime worker (the checkpoint writer, `spawn_blocking`).
    pub async fn open(
        session: Arc<Session>,
        keyspace: &str,
        group_id: &str,
        runtime: Handle,
    ) -> Result<Self, CheckpointError> {
        create_tables(&session, keyspace).await?;
        let stmts = Statements::prepare(&session, keyspace).await?;
        Ok(CqlCheckpoints {
            session,
            runtime,
            keyspace: keyspace.to_owned(),
            group_id: group_id.to_owned(),
            stmts,
            scope: None,
            groups: HashMap::new(),
            stale: false,
            written: 0,
        })
    }

    fn compacts(&self, key_group: u32) -> bool {
        self.scope.as_ref().is_none_or(|s| s.compacts(key_group))
    }

    fn tidies(&self) -> bool {
        self.scope.as_ref().is_none_or(|s| s.tidy)
    }

    /// Runs `statement` with each of `values`, up to [`PARALLELISM`] at once.
    async fn run_all<V>(&self, statement: &PreparedStatement, values: Vec<V>) -> Result<usize, CheckpointError>
    where
        V: scylla::serialize::row::SerializeRow,
    {
        let n = values.len();
        let session = &self.session;
        futures::stream::iter(values)
            .map(|v| async move { session.execute_unpaged(statement, v).await.map(|_| ()) })
            .buffer_unordered(PARALLELISM)
            .try_collect::<Vec<()>>()
            .await
            .map_err(|e| cql(statement.get_statement(), e))?;
        Ok(n)
    }

    /// Every row `statement` selects with `values`, paged.
    async fn select<V, R>(&self, statement: &PreparedStatement, values: V) -> Result<Vec<R>, CheckpointError>
    where
        V: scylla::serialize::row::SerializeRow,
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm> + Send + 'static,
    {
        let text = statement.get_statement();
        self.session
            .execute_iter(statement.clone(), values)
            .await
            .map_err(|e| cql(text, e))?
            .rows_stream::<R>()
            .map_err(|e| cql(text, e))?
            .try_collect()
            .await
            .map_err(|e| cql(text, e))
    }

    async fn marks(&self) -> Result<Vec<Mark>, CheckpointError> {
        let rows: Vec<MarkTuple> = self.select(&self.stmts.select_marks, (&self.group_id,)).await?;
        Ok(rows
            .into_iter()
            .map(|(cut, worker, peers, key_groups, bucket_ms, watermark, offsets)| Mark {
                cut: cut.max(0) as Epoch,
                worker,
                peers,
                key_groups,
                bucket_ms,
                watermark,
                offsets,
            })
            .collect())
    }

    /// The latest complete cut among `marks`.
    fn latest_complete_in(marks: &[Mark]) -> Option<Epoch> {
        let mut by_cut: BTreeMap<Epoch, (usize, i32)> = BTreeMap::new();
        for m in marks.iter().filter(|m| m.worker >= 0 && m.worker < m.peers) {
            by_cut.entry(m.cut).or_insert((0, m.peers)).0 += 1;
        }
        by_cut.iter().rev().find(|(_, (n, peers))| *n as i32 == *peers).map(|(c, _)| *c)
    }

    async fn group_rows(&self, key_group: u32) -> Result<Vec<Row>, CheckpointError> {
        self.select(&self.stmts.select_group, (&self.group_id, key_group as i32)).await
    }

    async fn ids_rows(&self, key_group: u32) -> Result<Vec<IdsRow>, CheckpointError> {
        self.select(&self.stmts.select_ids, (&self.group_id, key_group as i32)).await
    }

    /// The keys (cut, writer) of a key group's rows, without their blobs.
    async fn group_keys(&self, key_group: u32) -> Result<Vec<GroupKey>, CheckpointError> {
        self.select(&self.stmts.select_group_keys, (&self.group_id, key_group as i32)).await
    }

    /// The keys (bucket, cut, writer) of a key group's ids rows, without their blobs.
    async fn ids_keys(&self, key_group: u32) -> Result<Vec<IdsKey>, CheckpointError> {
        self.select(&self.stmts.select_ids_keys, (&self.group_id, key_group as i32)).await
    }

    fn check_key_groups(scope: &RecoveryScope, marks: &[Mark]) -> Result<(), CheckpointError> {
        let configured = scope.key_groups.count();
        match marks.iter().find(|m| m.key_groups as u32 != configured) {
            Some(m) => Err(CheckpointError::KeyGroups { written: m.key_groups as u32, configured }),
            None => Ok(()),
        }
    }

    /// Deletes the marks of cuts after `latest` (all, without a complete cut): cuts that never
    /// completed.
    async fn delete_marks_beyond(&self, marks: &[Mark], latest: Option<Epoch>) -> Result<(), CheckpointError> {
        let beyond: Vec<_> = marks
            .iter()
            .filter(|m| latest.is_none_or(|l| m.cut > l))
            .map(|m| Ok((&self.group_id, cut_value(m.cut)?, m.worker)))
            .collect::<Result<_, CheckpointError>>()?;
        if !beyond.is_empty() {
            tracing::info!(group_id = %self.group_id, marks = beyond.len(), "removing the marks of incomplete cuts");
        }
        self.run_all(&self.stmts.delete_mark, beyond).await?;
        Ok(())
    }

    async fn write_parts_async(&mut self, parts: &[Part]) -> Result<u64, CheckpointError> {
        let mut bytes = 0u64;
        let mut groups = Vec::new();
        let mut ids = Vec::new();
        for part in parts {
            let cut = cut_value(part.cut)?;
            let worker = part.worker as i32;
            for (kg, rows) in part.rows_by_key_group() {
                let blob = encode(&rows, || format!("key group {kg} of part {cut}/{worker}"))?;
                bytes += blob.len() as u64 + 24;
                if self.compacts(kg) {
                    self.written += blob.len() as u64;
                }
                if self.compacts(kg) && !self.stale {
                    let s = self.groups.entry(kg).or_default();
                    // A group's first row stands for its base until it has one.
                    if s.base == 0 { s.base = blob.len() as u64 } else { s.newer += blob.len() as u64 }
                }
                groups.push((&self.group_id, kg as i32, cut, worker, blob));
            }
            for run in &part.dedup {
                let blob = encode(&run.ids, || format!("ids of part {cut}/{worker}"))?;
                bytes += blob.len() as u64 + 32;
                if self.compacts(run.key_group) && !self.stale {
                    self.groups
                        .entry(run.key_group)
                        .or_default()
                        .ids
                        .entry(run.bucket)
                        .or_default()
                        .push((cut, worker));
                }
                ids.push((&self.group_id, run.key_group as i32, run.bucket, cut, worker, blob));
            }
        }
        // Every part's rows at once, then the marks, a cut at a time in cut order.
        let (a, b) =
            futures::join!(self.run_all(&self.stmts.insert_group, groups), self.run_all(&self.stmts.insert_ids, ids));
        a?;
        b?;
        let mut by_cut: BTreeMap<Epoch, Vec<_>> = BTreeMap::new();
        for part in parts {
            let offsets = encode(&part.offsets, || format!("offsets of part {}", part.cut))?;
            bytes += (offsets.len() + 48) as u64;
            by_cut.entry(part.cut).or_default().push((
                &self.group_id,
                cut_value(part.cut)?,
                part.worker as i32,
                part.peers as i32,
                part.key_groups.count() as i32,
                part.bucket_ms,
                part.watermark,
                offsets,
            ));
        }
        for (_, marks) in by_cut {
            self.run_all(&self.stmts.insert_mark, marks).await?;
        }
        Ok(bytes)
    }

    /// Folds the key groups `scope` covers at the latest complete cut, for recovery or for a
    /// read that changes nothing (see [`Fold`]).
    async fn fold_async(&mut self, scope: &RecoveryScope, fold: Fold) -> Result<Option<Recovered>, CheckpointError> {
        let recover = fold == Fold::Recover;
        if recover {
            self.scope = Some(scope.clone());
            self.groups.clear();
            self.stale = false;
        }
        let marks = self.marks().await?;
        Self::check_key_groups(scope, &marks)?;
        let latest = Self::latest_complete_in(&marks);
        if recover && scope.tidy {
            self.delete_marks_beyond(&marks, latest).await?;
        }
        if !recover && latest.is_none() {
            // Recovery reads on only to delete the rows of cuts that never completed.
            return Ok(None);
        }
        // Without a complete cut every row is of a cut that never completed: the reads below
        // still find and delete them, so that they never count once a later cut completes.
        let cut = latest.unwrap_or(0);
        let limit = latest.map_or(Ok(-1), cut_value)?;
        let mut rec = Recovered { cut, ..Default::default() };
        for m in marks.iter().filter(|m| latest.is_some_and(|l| m.cut <= l)) {
            rec.watermark = rec.watermark.max(m.watermark);
            if m.bucket_ms > 0 {
                rec.bucket_ms = m.bucket_ms;
            }
            if m.cut == cut {
                let offsets: Vec<(Partition, i64)> = bincode::deserialize(&m.offsets)
                    .map_err(|e| corrupt(format!("offsets of the mark of cut {cut}/{}", m.worker), e))?;
                rec.offsets.extend(offsets);
            }
        }
        let oldest = oldest_live_bucket(rec.watermark, rec.bucket_ms * BUCKETS, rec.bucket_ms);

        // Every key group this process reads, a few at a time; every row of each, so that rows of
        // cuts that never completed are all found.
        let this = &*self;
        let mut reads = futures::stream::iter(scope.reads())
            .map(|kg| async move {
                let folded = this.fold_key_group(kg, limit, fold).await?;
                Ok::<_, CheckpointError>((kg, folded, this.ids_rows(kg).await?))
            })
            .buffer_unordered(READ_PARALLELISM);
        let mut beyond_groups = Vec::new();
        let mut beyond_ids = Vec::new();
        let mut stats = HashMap::new();
        while let Some(read) = reads.next().await {
            let (kg, mut folded, ids) = read?;
            rec.bytes_read += folded.bytes;
            rec.users.extend(folded.users.drain());
            let compacts = recover && scope.compacts(kg);
            if compacts {
                beyond_groups.extend(folded.beyond.iter().map(|(c, w)| (&this.group_id, kg as i32, *c, *w)));
            }
            let mut runs: BTreeMap<i64, Vec<Fingerprint>> = BTreeMap::new();
            for (bucket, c, w, blob) in ids {
                rec.bytes_read += blob.len() as u64 + 20;
                if c > limit {
                    if compacts {
                        beyond_ids.push((&this.group_id, kg as i32, bucket, c, w));
                    }
                    continue;
                }
                if compacts {
                    // Expired or not: compaction deletes the rows of expired buckets.
                    folded.stats.ids.entry(bucket).or_default().push((c, w));
                }
                if bucket < oldest {
                    continue;
                }
                let list: Vec<Fingerprint> = bincode::deserialize(&blob)
                    .map_err(|e| corrupt(format!("ids of key group {kg} bucket {bucket} cut {c}"), e))?;
                runs.entry(bucket).or_default().extend(list);
            }
            rec.dedup.extend(runs.into_iter().map(|(bucket, ids)| DedupRun { key_group: kg, bucket, ids }));
            if compacts {
                stats.insert(kg, folded.stats);
            }
        }
        drop(reads);
        rec.dedup.sort_by_key(|r| (r.key_group, r.bucket));
        if !recover {
            // A compaction at a later cut deletes the dedup buckets expired by its watermark,
            // possibly before this read got to them: if a bucket kept here has expired by the
            // latest complete cut now (every compaction that started before now is at that cut or
            // an earlier one), read again.
            let now = self.marks().await?;
            if let Some(newest) = Self::latest_complete_in(&now).filter(|n| latest.is_some_and(|l| *n > l)) {
                let expired = oldest_live_bucket(watermark_at(&now, newest), rec.bucket_ms * BUCKETS, rec.bucket_ms);
                if expired > oldest {
                    return Err(CheckpointError::Compacted {
                        what: format!(
                            "dedup buckets before {expired} may have expired at cut {newest}, after cut {cut}"
                        ),
                    });
                }
            }
            tracing::debug!(group_id = %self.group_id, cut, bytes = rec.bytes_read, "read CQL checkpoint");
            return Ok(latest.map(|_| rec));
        }
        let removed = beyond_groups.len() + beyond_ids.len();
        self.run_all(&self.stmts.delete_group_row, beyond_groups).await?;
        self.run_all(&self.stmts.delete_ids_row, beyond_ids).await?;
        self.groups = stats;
        tracing::debug!(group_id = %self.group_id, cut, removed, bytes = rec.bytes_read, "folded CQL checkpoint");
        Ok(latest.map(|_| rec))
    }

    /// Folds key group `kg` up to cut `limit`. A read ([`Fold::Read`]) then reads the group's keys
    /// again: a rebase that ran meanwhile may have deleted rows it needed before it got to them
    /// (its new base is there by then, since it writes the base first), so it folds the group
    /// again if a newer base up to the cut has appeared, and errs if a base lies beyond the cut
    /// (a compaction at a later cut: rows the cut needs may be gone, so the read starts over).
    async fn fold_key_group(&self, kg: u32, limit: i64, fold: Fold) -> Result<Folded, CheckpointError> {
        let mut attempts = 0;
        loop {
            let folded = fold_group(self.group_rows(kg).await?, limit, kg)?;
            if fold == Fold::Recover {
                return Ok(folded);
            }
            let read = newest_base(folded.upto.iter().chain(&folded.beyond));
            let keys = self.group_keys(kg).await?;
            let now = newest_base(&keys);
            if let Some(base) = read.max(now).filter(|b| *b > limit) {
                return Err(CheckpointError::Compacted {
                    what: format!("key group {kg} was rebased at cut {base}, after cut {limit}"),
                });
            }
            if now == read {
                return Ok(folded);
            }
            attempts += 1;
            if attempts >= READ_ATTEMPTS {
                return Err(CheckpointError::Compacted {
                    what: format!("key group {kg} was rebased {attempts} times"),
                });
            }
        }
    }

    /// [`Fold::Read`], started over while a compaction changes what it reads.
    async fn read_async(&mut self, scope: &RecoveryScope) -> Result<Option<Recovered>, CheckpointError> {
        let mut attempts = 1;
        loop {
            match self.fold_async(scope, Fold::Read).await {
                Err(CheckpointError::Compacted { what }) if attempts < READ_ATTEMPTS => {
                    tracing::debug!(group_id = %self.group_id, what, attempts, "compacted while read; reading again");
                    attempts += 1;
                }
                other => return other,
            }
        }
    }

    async fn resume_async(&mut self, scope: &RecoveryScope, cut: Epoch) -> Result<(), CheckpointError> {
        let marks = self.marks().await?;
        Self::check_key_groups(scope, &marks)?;
        let latest = Self::latest_complete_in(&marks);
        if latest != Some(cut) {
            return Err(CheckpointError::NotLatest { cut, latest });
        }
        self.scope = Some(scope.clone());
        self.groups.clear();
        self.stale = true;
        if scope.tidy {
            self.delete_marks_beyond(&marks, latest).await?;
        }
        // As recovery: the rows of cuts that never completed, in the key groups this process
        // compacts; found by their keys alone.
        let limit = cut_value(cut)?;
        let this = &*self;
        let beyond: Vec<(u32, Vec<GroupKey>, Vec<IdsKey>)> =
            futures::stream::iter(scope.reads().filter(|kg| scope.compacts(*kg)))
                .map(|kg| async move {
                    let (mut groups, mut ids) = futures::try_join!(this.group_keys(kg), this.ids_keys(kg))?;
                    groups.retain(|(c, _)| *c > limit);
                    ids.retain(|(_, c, _)| *c > limit);
                    Ok::<_, CheckpointError>((kg, groups, ids))
                })
                .buffer_unordered(READ_PARALLELISM)
                .try_collect()
                .await?;
        let mut beyond_groups = Vec::new();
        let mut beyond_ids = Vec::new();
        for (kg, groups, ids) in &beyond {
            beyond_groups.extend(groups.iter().map(|(c, w)| (&self.group_id, *kg as i32, *c, *w)));
            beyond_ids.extend(ids.iter().map(|(b, c, w)| (&self.group_id, *kg as i32, *b, *c, *w)));
        }
        let removed = beyond_groups.len() + beyond_ids.len();
        let (a, b) = futures::join!(
            self.run_all(&self.stmts.delete_group_row, beyond_groups),
            self.run_all(&self.stmts.delete_ids_row, beyond_ids)
        );
        a?;
        b?;
        tracing::debug!(group_id = %self.group_id, cut, removed, "resumed CQL checkpoint");
        Ok(())
    }

    /// The compaction bookkeeping of the key groups this process compacts, from every row they
    /// hold: after a resume, which did not read them. Reads the groups' rows (not the ids blobs).
    async fn group_stats(&self) -> Result<HashMap<u32, GroupStats>, CheckpointError> {
        let Some(scope) = &self.scope else { return Ok(HashMap::new()) };
        futures::stream::iter(scope.reads().filter(|kg| scope.compacts(*kg)))
            .map(|kg| async move {
                // Every row counts, as the writes since the last compaction do.
                let (_, mut folded) = split_group(self.group_rows(kg).await?, i64::MAX);
                for (bucket, c, w) in self.ids_keys(kg).await? {
                    folded.stats.ids.entry(bucket).or_default().push((c, w));
                }
                Ok::<_, CheckpointError>((kg, folded.stats))
            })
            .buffer_unordered(READ_PARALLELISM)
            .try_collect()
            .await
    }

    /// Writes a new base of `kg` at `cut` and deletes the rows it folded; the rows deleted.
    async fn rebase(&self, kg: u32, cut: Epoch) -> Result<(usize, GroupStats), CheckpointError> {
        let folded = fold_group(self.group_rows(kg).await?, cut_value(cut)?, kg)?;
        let mut rows: UserRows = folded.users.into_iter().map(|(u, s)| (u, Some(s))).collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        let blob = encode(&rows, || format!("base of key group {kg}"))?;
        let c = cut_value(cut)?;
        let base = blob.len() as u64;
        let stmt = &self.stmts.insert_group;
        self.session
            .execute_unpaged(stmt, (&self.group_id, kg as i32, c, BASE, blob))
            .await
            .map_err(|e| cql(stmt.get_statement(), e))?;
        let folded_keys: Vec<_> = folded
            .upto
            .into_iter()
            .filter(|k| *k != (c, BASE))
            .map(|(cut, writer)| (&self.group_id, kg as i32, cut, writer))
            .collect();
        let n = self.run_all(&self.stmts.delete_group_row, folded_keys).await?;
        Ok((n, GroupStats { base, newer: 0, ids: BTreeMap::new() }))
    }

    async fn compact_async(&mut self, horizon_ms: i64) -> Result<Option<(Epoch, usize)>, CheckpointError> {
        let marks = self.marks().await?;
        let Some(cut) = Self::latest_complete_in(&marks) else { return Ok(None) };
        if self.stale {
            self.groups = self.group_stats().await?;
            self.stale = false;
        }
        let watermark = watermark_at(&marks, cut);
        let bucket_ms = marks.iter().map(|m| m.bucket_ms).find(|b| *b > 0).unwrap_or(0);
        let mut removed = 0;
        let candidates =
            self.groups.iter().map(|(k, s)| RebaseCandidate { key: *k, base: s.base, newer: s.newer, forced: false });
        let due = due_for_rebase(candidates, std::mem::take(&mut self.written));
        let this = &*self;
        let rebased: Vec<(u32, usize, GroupStats)> = futures::stream::iter(due)
            .map(|kg| async move { this.rebase(kg, cut).await.map(|(n, s)| (kg, n, s)) })
            .buffer_unordered(READ_PARALLELISM / 4)
            .try_collect()
            .await?;
        for (kg, n, mut s) in rebased {
            removed += n;
            let old = self.groups.entry(kg).or_default();
            s.ids = std::mem::take(&mut old.ids);
            *old = s;
        }
        // Buckets past the horizon go whole.
        let oldest = oldest_live_bucket(watermark, horizon_ms, bucket_ms);
        let mut expired = Vec::new();
        for (kg, s) in &mut self.groups {
            let live = s.ids.split_off(&oldest);
            for (bucket, rows) in std::mem::replace(&mut s.ids, live) {
                expired.extend(rows.into_iter().map(|(c, w)| (&self.group_id, *kg as i32, bucket, c, w)));
            }
        }
        removed += self.run_all(&self.stmts.delete_ids_row, expired).await?;
        if self.tidies() {
            let older: Vec<_> = marks
                .iter()
                .filter(|m| m.cut < cut)
                .map(|m| Ok((&self.group_id, cut_value(m.cut)?, m.worker)))
                .collect::<Result<_, CheckpointError>>()?;
            removed += self.run_all(&self.stmts.delete_mark, older).await?;
        }
        Ok(Some((cut, removed)))
    }
}

impl CheckpointStore for CqlCheckpoints {
    fn location(&self) -> String {
        format!("CQL {}.checkpoint_* group {}", self.keyspace, self.group_id)
    }

    fn write_parts(&mut self, parts: &[Part]) -> Result<u64, CheckpointError> {
        let runtime = self.runtime.clone();
        runtime.block_on(self.write_parts_async(parts))
    }

    fn recover(&mut self, scope: &RecoveryScope) -> Result<Option<Recovered>, CheckpointError> {
        let runtime = self.runtime.clone();
        runtime.block_on(self.fold_async(scope, Fold::Recover))
    }

    fn read(&mut self, scope: &RecoveryScope) -> Result<Option<Recovered>, CheckpointError> {
        let runtime = self.runtime.clone();
        runtime.block_on(self.read_async(scope))
    }

    fn latest_complete(&mut self) -> Result<Option<Epoch>, CheckpointError> {
        let runtime = self.runtime.clone();
        Ok(Self::latest_complete_in(&runtime.block_on(self.marks())?))
    }

    fn resume(&mut self, scope: &RecoveryScope, cut: Epoch) -> Result<(), CheckpointError> {
        let runtime = self.runtime.clone();
        runtime.block_on(self.resume_async(scope, cut))
    }

    fn is_complete(&mut self, cut: Epoch, peers: usize) -> Result<bool, CheckpointError> {
        let runtime = self.runtime.clone();
        let marks = runtime.block_on(self.marks())?;
        let written = marks.iter().filter(|m| m.cut == cut && m.worker >= 0 && (m.worker as usize) < peers).count();
        Ok(written == peers)
    }

    fn compact(&mut self, dedup_horizon_ms: i64) -> Result<Option<(Epoch, usize)>, CheckpointError> {
        let runtime = self.runtime.clone();
        runtime.block_on(self.compact_async(dedup_horizon_ms))
    }
}
