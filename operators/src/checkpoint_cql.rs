//! Checkpoints in the CQL store (ScyllaDB/Cassandra): state rows per user per version, so a part
//! writes only the users that changed.
//!
//! # Tables (in the `[cql]` keyspace, created at start when missing)
//! ```text
//! checkpoint_parts (group_id text, cut bigint, worker int, peers int, shards int, users int,
//!                   dedup_chunks int, offsets blob,          PRIMARY KEY ((group_id), cut, worker))
//! checkpoint_users (group_id text, shard int, user_id text, cut bigint, state blob,
//!                                                      PRIMARY KEY ((group_id, shard), user_id, cut))
//! checkpoint_dedup (group_id text, cut bigint, worker int, chunk int, ids blob,
//!                                                      PRIMARY KEY ((group_id, cut), worker, chunk))
//! ```
//! A part `(cut, worker)` writes one `checkpoint_users` row per changed user (`shard` =
//! xxh3(user) % [`USER_SHARDS`], so a version's users are spread over that many partitions), its
//! new dedup ids in chunks of [`DEDUP_CHUNK`], and *then* its `checkpoint_parts` row: the part row
//! is the commit marker, a cut is complete when its `peers` part rows exist.
//!
//! # Notes
//! The cut is part of each user row's key, so rows written for a cut that is not complete never
//! overwrite the row an earlier complete cut needs: recovery takes, per user, the newest row with
//! `cut <=` the latest complete cut, and deletes the rows (users, dedup chunks, part rows) of later
//! cuts. A row becomes *superseded* once a newer row of the same user belongs to a complete cut;
//! compaction deletes superseded rows (the writer remembers which rows it superseded, so this costs
//! what changed, not the whole state), folds older dedup chunks into a base part (`worker = -1`)
//! of the compacted cut, and deletes older part rows. Until a deletion happens the older rows fold
//! to the same state, so every crash point is safe.
//!
//! The statements are plain CQL: partition-key equality, full-key deletes, no ranges, `IN`,
//! `ORDER BY`, lightweight transactions or TTLs, so they run unchanged on ScyllaDB/Cassandra and
//! within what the kassandra-based dev server handles correctly (two clustering columns in every
//! table; equality on a single clustering column is never used). Writes use the session's default
//! consistency (`LOCAL_QUORUM` in the scylla driver).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use tokio::runtime::Handle;

use crate::checkpoint::{CheckpointError, CheckpointStore, Part, Recovered};
use crate::plan::UserSnapshot;
use crate::source::{Epoch, Partition};
use crate::store::user_hash;

/// Partitions of `checkpoint_users` per version: a user's rows live in partition
/// `(group_id, xxh3(user_id) % USER_SHARDS)`. Recorded in every part row, so recovery reads the
/// shards a part was written with even if this constant changes.
pub const USER_SHARDS: i32 = 64;

/// Dedup ids per `checkpoint_dedup` row (32 bytes each: a 128 KiB blob).
pub const DEDUP_CHUNK: usize = 4096;

/// The `worker` of a base part written by compaction: the dedup ids of every older cut.
const BASE_WORKER: i32 = -1;

/// Statements in flight at once while writing or deleting rows.
const PARALLELISM: usize = 128;

/// The `CREATE TABLE` statements of the checkpoint tables in `keyspace`.
pub fn schema(keyspace: &str) -> [String; 3] {
    [
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.checkpoint_parts (group_id text, cut bigint, worker int, \
             peers int, shards int, users int, dedup_chunks int, offsets blob, PRIMARY KEY (group_id, cut, worker))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.checkpoint_users (group_id text, shard int, user_id text, \
             cut bigint, state blob, PRIMARY KEY ((group_id, shard), user_id, cut))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.checkpoint_dedup (group_id text, cut bigint, worker int, \
             chunk int, ids blob, PRIMARY KEY ((group_id, cut), worker, chunk))"
        ),
    ]
}

const TABLES: [&str; 3] = ["checkpoint_parts", "checkpoint_users", "checkpoint_dedup"];

/// Creates the checkpoint tables in `keyspace` (which must exist) unless they exist already.
pub async fn create_tables(session: &Session, keyspace: &str) -> Result<(), CheckpointError> {
    check_keyspace(keyspace)?;
    // Look before creating: a CREATE TABLE of an existing table is then never sent, whatever a
    // server makes of IF NOT EXISTS.
    let existing = "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?";
    let rows = session
        .query_unpaged(existing, (keyspace,))
        .await
        .map_err(|e| cql(existing, e))?
        .into_rows_result()
        .map_err(|e| cql(existing, e))?;
    let have: Vec<String> = rows
        .rows::<(String,)>()
        .map_err(|e| cql(existing, e))?
        .map(|r| r.map(|(t,)| t))
        .collect::<Result<_, _>>()
        .map_err(|e| cql(existing, e))?;
    for (table, ddl) in TABLES.iter().zip(schema(keyspace)) {
        if !have.iter().any(|t| t == table) {
            session.query_unpaged(ddl.clone(), ()).await.map_err(|e| cql(&ddl, e))?;
            tracing::info!(keyspace, table, "created checkpoint table");
        }
    }
    Ok(())
}

fn check_keyspace(keyspace: &str) -> Result<(), CheckpointError> {
    squall_enrichment::schema::check_keyspace(keyspace)
        .map_err(|e| CheckpointError::Cql { statement: format!("keyspace {keyspace:?}"), message: e.to_string() })
}

fn cql(statement: &str, e: impl std::fmt::Display) -> CheckpointError {
    let statement = match statement.char_indices().nth(120) {
        Some((i, _)) => format!("{}...", &statement[..i]),
        None => statement.to_owned(),
    };
    CheckpointError::Cql { statement, message: e.to_string() }
}

fn corrupt(what: String, e: impl std::fmt::Display) -> CheckpointError {
    CheckpointError::Corrupt { what, message: e.to_string() }
}

fn cut_value(cut: Epoch) -> Result<i64, CheckpointError> {
    i64::try_from(cut).map_err(|e| corrupt(format!("cut {cut}"), e))
}

fn shard_of(user: &str) -> i32 {
    (user_hash(user) % USER_SHARDS as u64) as i32
}

/// A `checkpoint_parts` row.
#[derive(Clone, Debug)]
struct PartRow {
    cut: Epoch,
    worker: i32,
    peers: i32,
    shards: i32,
    dedup_chunks: i32,
    offsets: Vec<u8>,
}

type PartTuple = (i64, i32, i32, i32, i32, i32, Vec<u8>);

/// A user row that a newer row replaces once the newer one's cut is complete.
#[derive(Clone, Debug)]
struct Superseded {
    shard: i32,
    user: String,
    cut: Epoch,
    by: Epoch,
}

struct Statements {
    insert_part: PreparedStatement,
    insert_user: PreparedStatement,
    insert_dedup: PreparedStatement,
    select_parts: PreparedStatement,
    select_users: PreparedStatement,
    select_dedup: PreparedStatement,
    delete_part: PreparedStatement,
    delete_user: PreparedStatement,
    delete_dedup: PreparedStatement,
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
            insert_part: p(format!(
                "INSERT INTO {ks}.checkpoint_parts (group_id, cut, worker, peers, shards, users, dedup_chunks, offsets) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            ))
            .await?,
            insert_user: p(format!(
                "INSERT INTO {ks}.checkpoint_users (group_id, shard, user_id, cut, state) VALUES (?, ?, ?, ?, ?)"
            ))
            .await?,
            insert_dedup: p(format!(
                "INSERT INTO {ks}.checkpoint_dedup (group_id, cut, worker, chunk, ids) VALUES (?, ?, ?, ?, ?)"
            ))
            .await?,
            select_parts: p(format!(
                "SELECT cut, worker, peers, shards, users, dedup_chunks, offsets FROM {ks}.checkpoint_parts \
                 WHERE group_id = ?"
            ))
            .await?,
            select_users: p(format!(
                "SELECT user_id, cut, state FROM {ks}.checkpoint_users WHERE group_id = ? AND shard = ?"
            ))
            .await?,
            select_dedup: p(format!(
                "SELECT worker, chunk, ids FROM {ks}.checkpoint_dedup WHERE group_id = ? AND cut = ?"
            ))
            .await?,
            delete_part: p(format!("DELETE FROM {ks}.checkpoint_parts WHERE group_id = ? AND cut = ? AND worker = ?"))
                .await?,
            delete_user: p(format!(
                "DELETE FROM {ks}.checkpoint_users WHERE group_id = ? AND shard = ? AND user_id = ? AND cut = ?"
            ))
            .await?,
            delete_dedup: p(format!(
                "DELETE FROM {ks}.checkpoint_dedup WHERE group_id = ? AND cut = ? AND worker = ? AND chunk = ?"
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
    /// Per user hash, the newest cut with a stored row. A hash collision only means a superseded
    /// row is kept (or a delete misses): never a wrong delete, since deletes name the user.
    latest: HashMap<u64, Epoch>,
    /// Rows that newer rows replace, waiting for the newer row's cut to be compacted.
    superseded: Vec<Superseded>,
}

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
            latest: HashMap::new(),
            superseded: Vec::new(),
        })
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

    async fn part_rows(&self) -> Result<Vec<PartRow>, CheckpointError> {
        let stmt = &self.stmts.select_parts;
        let rows: Vec<PartTuple> = self
            .session
            .execute_iter(stmt.clone(), (&self.group_id,))
            .await
            .map_err(|e| cql(stmt.get_statement(), e))?
            .rows_stream::<PartTuple>()
            .map_err(|e| cql(stmt.get_statement(), e))?
            .try_collect()
            .await
            .map_err(|e| cql(stmt.get_statement(), e))?;
        Ok(rows
            .into_iter()
            .map(|(cut, worker, peers, shards, _users, dedup_chunks, offsets)| PartRow {
                cut: cut.max(0) as Epoch,
                worker,
                peers,
                shards,
                dedup_chunks,
                offsets,
            })
            .collect())
    }

    /// The dedup rows of one cut: (worker, chunk, ids blob).
    async fn dedup_rows(&self, cut: Epoch) -> Result<Vec<(i32, i32, Vec<u8>)>, CheckpointError> {
        let stmt = &self.stmts.select_dedup;
        self.session
            .execute_iter(stmt.clone(), (&self.group_id, cut_value(cut)?))
            .await
            .map_err(|e| cql(stmt.get_statement(), e))?
            .rows_stream::<(i32, i32, Vec<u8>)>()
            .map_err(|e| cql(stmt.get_statement(), e))?
            .try_collect()
            .await
            .map_err(|e| cql(stmt.get_statement(), e))
    }

    /// The user rows of one shard: (user, cut, state blob).
    async fn user_rows(&self, shard: i32) -> Result<Vec<(String, i64, Vec<u8>)>, CheckpointError> {
        let stmt = &self.stmts.select_users;
        self.session
            .execute_iter(stmt.clone(), (&self.group_id, shard))
            .await
            .map_err(|e| cql(stmt.get_statement(), e))?
            .rows_stream::<(String, i64, Vec<u8>)>()
            .map_err(|e| cql(stmt.get_statement(), e))?
            .try_collect()
            .await
            .map_err(|e| cql(stmt.get_statement(), e))
    }

    /// The dedup ids the part rows `parts` reference (only chunks below each row's count).
    async fn fold_dedup(&self, parts: &[&PartRow]) -> Result<Vec<(u64, u128, i64)>, CheckpointError> {
        let mut by_cut: BTreeMap<Epoch, Vec<(i32, i32)>> = BTreeMap::new();
        for p in parts.iter().filter(|p| p.dedup_chunks > 0) {
            by_cut.entry(p.cut).or_default().push((p.worker, p.dedup_chunks));
        }
        let mut out = Vec::new();
        for (cut, workers) in by_cut {
            for (worker, chunk, ids) in self.dedup_rows(cut).await? {
                if workers.iter().any(|(w, n)| *w == worker && chunk < *n) {
                    let ids: Vec<(u64, u128, i64)> = bincode::deserialize(&ids)
                        .map_err(|e| corrupt(format!("dedup chunk {cut}/{worker}/{chunk}"), e))?;
                    out.extend(ids);
                }
            }
        }
        Ok(out)
    }

    /// Deletes the part rows and every dedup row of `cuts`; the rows deleted.
    async fn delete_cuts(&self, parts: &[&PartRow]) -> Result<usize, CheckpointError> {
        let mut cuts: Vec<Epoch> = parts.iter().map(|p| p.cut).collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut dedup_keys = Vec::new();
        for &cut in &cuts {
            for (worker, chunk, _) in self.dedup_rows(cut).await? {
                dedup_keys.push((self.group_id.clone(), cut_value(cut)?, worker, chunk));
            }
        }
        let part_keys = parts
            .iter()
            .map(|p| Ok((self.group_id.clone(), cut_value(p.cut)?, p.worker)))
            .collect::<Result<Vec<_>, CheckpointError>>()?;
        // Dedup rows first: a part row without its chunks would fold to fewer ids.
        let mut n = self.run_all(&self.stmts.delete_dedup, dedup_keys).await?;
        n += self.run_all(&self.stmts.delete_part, part_keys).await?;
        Ok(n)
    }

    async fn write_part_async(&mut self, part: &Part) -> Result<u64, CheckpointError> {
        let cut = cut_value(part.cut)?;
        let worker = i32::try_from(part.worker).map_err(|e| corrupt(format!("worker {}", part.worker), e))?;
        let mut bytes = 0u64;
        let mut users = Vec::with_capacity(part.users.len());
        for (user, snapshot) in &part.users {
            let state = bincode::serialize(snapshot).map_err(|e| corrupt(format!("user {user:?}"), e))?;
            bytes += (state.len() + user.len() + 8) as u64;
            users.push((&self.group_id, shard_of(user), user.as_str(), cut, state));
        }
        self.run_all(&self.stmts.insert_user, users).await?;
        let mut chunks = Vec::new();
        for (i, ids) in part.dedup.chunks(DEDUP_CHUNK).enumerate() {
            let blob = bincode::serialize(ids).map_err(|e| corrupt(format!("dedup of part {cut}/{worker}"), e))?;
            bytes += blob.len() as u64;
            chunks.push((&self.group_id, cut, worker, i as i32, blob));
        }
        let n_chunks = chunks.len() as i32;
        self.run_all(&self.stmts.insert_dedup, chunks).await?;
        let offsets = bincode::serialize(&part.offsets).map_err(|e| corrupt(format!("offsets of part {cut}"), e))?;
        bytes += offsets.len() as u64 + 32;
        // Last: the part row makes the part count towards its cut.
        let row =
            (&self.group_id, cut, worker, part.peers as i32, USER_SHARDS, part.users.len() as i32, n_chunks, offsets);
        let stmt = &self.stmts.insert_part;
        self.session.execute_unpaged(stmt, row).await.map_err(|e| cql(stmt.get_statement(), e))?;
        for (user, _) in &part.users {
            if let Some(old) = self.latest.insert(user_hash(user), part.cut)
                && old < part.cut
            {
                self.superseded.push(Superseded { shard: shard_of(user), user: user.clone(), cut: old, by: part.cut });
            }
        }
        Ok(bytes)
    }

    /// The latest complete cut among `parts` (only regular parts count).
    fn latest_complete(parts: &[PartRow]) -> Option<Epoch> {
        let mut by_cut: BTreeMap<Epoch, (usize, i32)> = BTreeMap::new();
        for p in parts.iter().filter(|p| p.worker >= 0 && p.worker < p.peers) {
            let e = by_cut.entry(p.cut).or_insert((0, p.peers));
            e.0 += 1;
        }
        by_cut.iter().rev().find(|(_, (n, peers))| *n as i32 == *peers).map(|(c, _)| *c)
    }

    /// Folds up to the latest complete cut; with `tidy`, also deletes the rows that fold made
    /// redundant or that belong to incomplete cuts.
    async fn recover_async(&mut self, tidy: bool) -> Result<Option<Recovered>, CheckpointError> {
        let parts = self.part_rows().await?;
        let latest = Self::latest_complete(&parts);
        let limit = latest.unwrap_or(0);
        let keep = |cut: Epoch| latest.is_some_and(|c| cut <= c);

        // Users: per user the newest row up to the cut; rows beyond it (and superseded ones) go.
        let shards = parts.iter().map(|p| p.shards).max().unwrap_or(USER_SHARDS).max(USER_SHARDS);
        let this = &*self;
        let mut scans = futures::stream::iter(0..shards)
            .map(|s| async move { this.user_rows(s).await.map(|rows| (s, rows)) })
            .buffer_unordered(8);
        let mut newest: HashMap<String, (Epoch, Vec<u8>)> = HashMap::new();
        let mut deletes = Vec::new();
        while let Some(scan) = scans.next().await {
            let (shard, rows) = scan?;
            for (user, cut, state) in rows {
                let cut_e = cut.max(0) as Epoch;
                if !keep(cut_e) {
                    deletes.push((this.group_id.clone(), shard, user, cut));
                    continue;
                }
                match newest.get_mut(&user) {
                    Some(best) if best.0 >= cut_e => deletes.push((this.group_id.clone(), shard, user, cut)),
                    Some(best) => {
                        let old = std::mem::replace(best, (cut_e, state));
                        deletes.push((this.group_id.clone(), shard, user, old.0 as i64));
                    }
                    None => {
                        newest.insert(user, (cut_e, state));
                    }
                }
            }
        }
        drop(scans);
        let (mut removed_users, mut removed_parts) = (0, 0);
        if tidy {
            removed_users = deletes.len();
            self.run_all(&self.stmts.delete_user, deletes).await?;
            // Part rows and dedup chunks beyond the cut.
            let beyond: Vec<&PartRow> = parts.iter().filter(|p| !keep(p.cut)).collect();
            removed_parts = self.delete_cuts(&beyond).await?;
        }
        self.superseded.clear();
        self.latest = newest.iter().map(|(u, (c, _))| (user_hash(u), *c)).collect();
        let Some(cut) = latest else {
            if removed_users + removed_parts > 0 {
                tracing::info!(group_id = %self.group_id, removed_users, removed_parts, "no complete checkpoint; removed the rows of incomplete cuts");
            }
            return Ok(None);
        };
        let mut rec = Recovered { cut, ..Default::default() };
        for (user, (c, state)) in newest {
            let snapshot: UserSnapshot =
                bincode::deserialize(&state).map_err(|e| corrupt(format!("user {user:?} at cut {c}"), e))?;
            rec.users.insert(user, snapshot);
        }
        let folded: Vec<&PartRow> = parts.iter().filter(|p| p.cut <= limit).collect();
        rec.dedup = self.fold_dedup(&folded).await?;
        for p in folded.iter().filter(|p| p.cut == cut && p.worker >= 0) {
            let offsets: Vec<(Partition, i64)> = bincode::deserialize(&p.offsets)
                .map_err(|e| corrupt(format!("offsets of part {cut}/{}", p.worker), e))?;
            rec.offsets.extend(offsets);
        }
        tracing::debug!(group_id = %self.group_id, cut, removed_users, removed_parts, "folded CQL checkpoint");
        Ok(Some(rec))
    }

    async fn compact_async(&mut self, dedup_horizon_ms: i64) -> Result<Option<(Epoch, usize)>, CheckpointError> {
        let parts = self.part_rows().await?;
        let Some(cut) = Self::latest_complete(&parts) else { return Ok(None) };
        let older: Vec<&PartRow> = parts.iter().filter(|p| p.cut < cut).collect();
        let mut removed = 0;
        if !older.is_empty() {
            // Dedup ids of every cut up to this one, as a base part of this cut.
            let upto: Vec<&PartRow> = parts.iter().filter(|p| p.cut <= cut).collect();
            let mut ids = self.fold_dedup(&upto).await?;
            ids.sort_unstable();
            ids.dedup();
            let newest = ids.iter().map(|d| d.2).max().unwrap_or(i64::MIN);
            let cutoff = if dedup_horizon_ms <= 0 { i64::MAX } else { newest.saturating_sub(dedup_horizon_ms) };
            ids.retain(|d| d.2 >= cutoff);
            let c = cut_value(cut)?;
            let mut chunks = Vec::new();
            for (i, chunk) in ids.chunks(DEDUP_CHUNK).enumerate() {
                let blob = bincode::serialize(chunk).map_err(|e| corrupt(format!("base dedup of cut {cut}"), e))?;
                chunks.push((&self.group_id, c, BASE_WORKER, i as i32, blob));
            }
            let n_chunks = chunks.len() as i32;
            self.run_all(&self.stmts.insert_dedup, chunks).await?;
            let peers = parts.iter().find(|p| p.cut == cut && p.worker >= 0).map_or(1, |p| p.peers);
            let offsets =
                bincode::serialize(&Vec::<(Partition, i64)>::new()).map_err(|e| corrupt("offsets".into(), e))?;
            let row = (&self.group_id, c, BASE_WORKER, peers, USER_SHARDS, 0i32, n_chunks, offsets);
            let stmt = &self.stmts.insert_part;
            self.session.execute_unpaged(stmt, row).await.map_err(|e| cql(stmt.get_statement(), e))?;
            removed += self.delete_cuts(&older).await?;
        }
        // User rows replaced by rows of complete cuts.
        let (due, later): (Vec<Superseded>, Vec<Superseded>) =
            std::mem::take(&mut self.superseded).into_iter().partition(|s| s.by <= cut);
        self.superseded = later;
        let keys = due
            .into_iter()
            .map(|s| Ok((self.group_id.clone(), s.shard, s.user, cut_value(s.cut)?)))
            .collect::<Result<Vec<_>, CheckpointError>>()?;
        removed += self.run_all(&self.stmts.delete_user, keys).await?;
        Ok(Some((cut, removed)))
    }
}

impl CheckpointStore for CqlCheckpoints {
    fn location(&self) -> String {
        format!("CQL {}.checkpoint_* group {}", self.keyspace, self.group_id)
    }

    fn write_part(&mut self, part: &Part) -> Result<u64, CheckpointError> {
        let runtime = self.runtime.clone();
        runtime.block_on(self.write_part_async(part))
    }

    fn recover(&mut self) -> Result<Option<Recovered>, CheckpointError> {
        let runtime = self.runtime.clone();
        runtime.block_on(self.recover_async(true))
    }

    fn recover_shared(&mut self) -> Result<Option<Recovered>, CheckpointError> {
        let runtime = self.runtime.clone();
        runtime.block_on(self.recover_async(false))
    }

    fn is_complete(&mut self, cut: Epoch, peers: usize) -> Result<bool, CheckpointError> {
        let runtime = self.runtime.clone();
        let parts = runtime.block_on(self.part_rows())?;
        let written = parts.iter().filter(|p| p.cut == cut && p.worker >= 0 && (p.worker as usize) < peers).count();
        Ok(written == peers)
    }

    fn compact(&mut self, dedup_horizon_ms: i64) -> Result<Option<(Epoch, usize)>, CheckpointError> {
        let runtime = self.runtime.clone();
        runtime.block_on(self.compact_async(dedup_horizon_ms))
    }
}
