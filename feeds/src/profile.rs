//! The profile feed: one CQL table per version, one row per user, one native column per
//! attribute, readable by any CQL client; and `promoted_versions`, which tells readers which
//! version of a topology is live.
//!
//! ```text
//! attributes_<topology>_v<version> (user_id text PRIMARY KEY, cut bigint, written_at_ms bigint,
//!     events bigint, events_hash bigint, <attribute> <type>, ...)
//! promoted_versions (topology text PRIMARY KEY, group_id text, version int, table_name text, promoted_at_ms bigint)
//! ```
//! Column types: counts, sums, `min`/`max` and numeric `last` are `bigint`; ratios and decayed
//! sums `double`; text `last` `text`; maps `map<text, bigint>` or `map<text, double>`; `top_k`
//! `list<text>`. `cut` is the cut the row's state belongs to; `events` and `events_hash` are the
//! user's [`squall_operators::Evidence`]. A partition is one user, so partitions stay small on
//! ScyllaDB/Cassandra whatever the number of users; the dev CQL server answers these statements
//! correctly (single-column primary keys, prepared inserts, collections bound as values).
//! Hyphens in a topology's name become underscores in the table's; a name that would make the
//! table's longer than 48 characters is cut and ends with a hash of the whole name.

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlValue;
use squall_operators::Epoch;
use squall_operators::attributes::AttributesView;
use squall_operators::attributes::ValueType;
use squall_operators::{UserSnapshot, Value};
use tokio::runtime::Handle;

use crate::progress::{Progress, create_table, now_ms};
use crate::{FeedError, Sink, Version, cql_error};

/// The profile table of version `version` of `topology`.
pub fn table_name(topology: &str, version: u32) -> String {
    let clean = topology.to_ascii_lowercase().replace('-', "_");
    let name = format!("attributes_{clean}_v{version}");
    if name.len() <= 48 {
        return name;
    }
    let hash = xxhash_rust::xxh3::xxh3_64(topology.as_bytes()) as u32;
    let keep = 48 - format!("attributes__{hash:08x}_v{version}").len();
    format!("attributes_{}_{hash:08x}_v{version}", &clean[..keep])
}

fn cql_type(t: ValueType) -> &'static str {
    match t {
        ValueType::Int => "bigint",
        ValueType::Float => "double",
        ValueType::Text => "text",
        ValueType::IntMap => "map<text, bigint>",
        ValueType::FloatMap => "map<text, double>",
        ValueType::List => "list<text>",
    }
}

fn cql_value(t: ValueType, v: &Value) -> Option<CqlValue> {
    let number = |v: &Value| match (t, v) {
        (ValueType::FloatMap | ValueType::Float, Value::Int(n)) => Some(CqlValue::Double(*n as f64)),
        (_, Value::Int(n)) => Some(CqlValue::BigInt(*n)),
        (_, Value::Float(f)) => Some(CqlValue::Double(*f)),
        _ => None,
    };
    match v {
        Value::Null => None,
        Value::Int(_) | Value::Float(_) => number(v),
        Value::Text(s) => Some(CqlValue::Text(s.clone())),
        Value::List(l) => Some(CqlValue::List(l.iter().map(|s| CqlValue::Text(s.clone())).collect())),
        Value::Map(m) => {
            Some(CqlValue::Map(m.iter().filter_map(|(k, v)| Some((CqlValue::Text(k.clone()), number(v)?))).collect()))
        }
    }
}

/// The columns of a version's profile table: the attributes it answers, with their types.
fn columns(version: &Version) -> Vec<(String, ValueType)> {
    let d = version.plan.declaration();
    d.attributes.iter().enumerate().filter(|(_, a)| !a.hidden).map(|(i, a)| (a.name.clone(), d.value_type(i))).collect()
}

/// Writes changed users to the version's profile table.
pub struct ProfileSink {
    version: Version,
    session: Arc<Session>,
    runtime: Handle,
    insert: PreparedStatement,
    columns: Vec<(String, ValueType)>,
    progress: Progress,
    max_in_flight: usize,
}

impl ProfileSink {
    /// Creates the version's profile table when missing and prepares its insert; the last cut
    /// the feed wrote, if any.
    pub async fn open(
        version: Version,
        session: Arc<Session>,
        keyspace: &str,
        max_in_flight: usize,
        runtime: Handle,
    ) -> Result<(ProfileSink, Option<Epoch>), FeedError> {
        squall_enrichment::schema::check_keyspace(keyspace)
            .map_err(|e| FeedError::Cql { statement: format!("keyspace {keyspace:?}"), message: e.to_string() })?;
        let table = table_name(&version.topology, version.version);
        let columns = columns(&version);
        let typed: String = columns.iter().map(|(n, t)| format!(", {n} {}", cql_type(*t))).collect();
        let ddl = format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.{table} (user_id text PRIMARY KEY, cut bigint, written_at_ms bigint, \
             events bigint, events_hash bigint{typed})"
        );
        create_table(&session, keyspace, &table, &ddl).await?;
        let names: String = columns.iter().map(|(n, _)| format!(", {n}")).collect();
        let marks = ", ?".repeat(columns.len());
        let insert = format!(
            "INSERT INTO {keyspace}.{table} (user_id, cut, written_at_ms, events, events_hash{names}) VALUES (?, ?, ?, ?, ?{marks})"
        );
        let insert = session.prepare(insert.clone()).await.map_err(|e| cql_error(&insert, e))?;
        let (progress, written) =
            Progress::open(Arc::clone(&session), keyspace, &version.group_id, "profile", version.share).await?;
        Ok((
            ProfileSink { version, session, runtime, insert, columns, progress, max_in_flight: max_in_flight.max(1) },
            written,
        ))
    }

    fn row(
        &self,
        cut: Epoch,
        written_at: i64,
        user: &str,
        snapshot: &UserSnapshot,
    ) -> Result<Vec<Option<CqlValue>>, FeedError> {
        let state = self.version.restore(user, snapshot)?;
        let attributes = AttributesView::new(&state, &self.version.plan, &self.version.symbols).to_attributes();
        let evidence = state.evidence();
        let mut row = vec![
            Some(CqlValue::Text(user.to_owned())),
            Some(CqlValue::BigInt(cut as i64)),
            Some(CqlValue::BigInt(written_at)),
            Some(CqlValue::BigInt(i64::from(evidence.events))),
            Some(CqlValue::BigInt(evidence.hash as i64)),
        ];
        for (name, t) in &self.columns {
            row.push(attributes.get(name).and_then(|v| cql_value(*t, v)));
        }
        Ok(row)
    }
}

impl Sink for ProfileSink {
    fn name(&self) -> &'static str {
        "profile"
    }

    fn write(&mut self, cut: Epoch, users: &[(String, UserSnapshot)]) -> Result<(), FeedError> {
        let written_at = now_ms();
        let this = &*self;
        self.runtime.block_on(async move {
            futures::stream::iter(users)
                .map(|(user, snapshot)| async move {
                    let row = this.row(cut, written_at, user, snapshot)?;
                    this.session
                        .execute_unpaged(&this.insert, row)
                        .await
                        .map_err(|e| cql_error(this.insert.get_statement(), e))
                })
                .buffer_unordered(this.max_in_flight)
                .try_for_each(|_| async { Ok(()) })
                .await
        })
    }

    fn save_progress(&mut self, cut: Epoch) -> Result<(), FeedError> {
        self.runtime.block_on(self.progress.save(cut))
    }
}

/// Opens a driver session to `nodes` (comma separated `host:port`), e.g. for [`record_promotion`].
pub async fn connect(nodes: &str) -> Result<Session, FeedError> {
    squall_enrichment::schema::connect(nodes)
        .await
        .map_err(|e| FeedError::Cql { statement: format!("connect to {nodes}"), message: e.to_string() })
}

/// Records in `promoted_versions` that `group_id` (version `version` of `topology`) is the
/// version readers should use (creating the table when missing).
pub async fn record_promotion(
    session: &Session,
    keyspace: &str,
    topology: &str,
    group_id: &str,
    version: u32,
) -> Result<(), FeedError> {
    squall_enrichment::schema::check_keyspace(keyspace)
        .map_err(|e| FeedError::Cql { statement: format!("keyspace {keyspace:?}"), message: e.to_string() })?;
    let ddl = format!(
        "CREATE TABLE IF NOT EXISTS {keyspace}.promoted_versions (topology text PRIMARY KEY, group_id text, \
         version int, table_name text, promoted_at_ms bigint)"
    );
    create_table(session, keyspace, "promoted_versions", &ddl).await?;
    let insert = format!(
        "INSERT INTO {keyspace}.promoted_versions (topology, group_id, version, table_name, promoted_at_ms) VALUES (?, ?, ?, ?, ?)"
    );
    let values = (topology, group_id, version as i32, table_name(topology, version), now_ms());
    session.query_unpaged(insert.clone(), values).await.map_err(|e| cql_error(&insert, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_cql_identifiers_of_at_most_48_characters() {
        assert_eq!(table_name("personalization", 2), "attributes_personalization_v2");
        assert_eq!(table_name("My-Topo", 13), "attributes_my_topo_v13");
        let long = "p".repeat(64);
        let t = table_name(&long, 4_000_000_000);
        assert!(t.len() <= 48 && t.starts_with("attributes_ppp") && t.ends_with("_v4000000000"), "{t}");
        assert_ne!(t, table_name(&"p".repeat(63), 4_000_000_000), "the hash keeps cut names apart");
    }

    #[test]
    fn values_take_their_column_type() {
        let map = Value::Map([("rock".to_owned(), Value::Int(2))].into());
        assert_eq!(
            cql_value(ValueType::IntMap, &map),
            Some(CqlValue::Map(vec![(CqlValue::Text("rock".into()), CqlValue::BigInt(2))]))
        );
        assert_eq!(
            cql_value(ValueType::FloatMap, &map),
            Some(CqlValue::Map(vec![(CqlValue::Text("rock".into()), CqlValue::Double(2.0))]))
        );
        assert_eq!(cql_value(ValueType::Float, &Value::Int(0)), Some(CqlValue::Double(0.0)));
        assert_eq!(cql_value(ValueType::Int, &Value::Null), None);
        assert_eq!(
            cql_value(ValueType::List, &Value::List(vec!["a".into()])),
            Some(CqlValue::List(vec![CqlValue::Text("a".into())]))
        );
    }
}
