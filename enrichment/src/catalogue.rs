//! Where enrichment values come from: the CQL `tracks` and `ads` tables, or a map in memory.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::{BoxStream, StreamExt};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::prepared::PreparedStatement;

/// A `tracks` row: the attributes a song completion is enriched with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrackRow {
    /// Genre name; `None` when the column is null.
    pub genre: Option<String>,
    /// Artist id; `None` when the column is null.
    pub artist_id: Option<String>,
    /// Track length in milliseconds.
    pub duration_ms: Option<i32>,
}

/// An `ads` row: the attributes an ad impression is enriched with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdRow {
    /// Advertiser id; `None` when the column is null.
    pub advertiser_id: Option<String>,
    /// Ad category; `None` when the column is null.
    pub category: Option<String>,
}

/// Failure of one catalogue lookup or schema operation.
#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    /// Connecting to the CQL cluster failed; check the `cql.nodes` address and that the server runs.
    #[error("cannot connect to the CQL store at {nodes}: {source}")]
    Connect {
        /// The contact points tried.
        nodes: String,
        /// The driver's error.
        source: Box<scylla::errors::NewSessionError>,
    },
    /// Preparing a statement failed; usually the keyspace or table does not exist.
    #[error("cannot prepare `{statement}` (does the keyspace/table exist? run `squall-gen schema`): {source}")]
    Prepare {
        /// The statement text.
        statement: String,
        /// The driver's error.
        source: Box<scylla::errors::PrepareError>,
    },
    /// A request failed or timed out; retrying may help.
    #[error("CQL request failed: {0}")]
    Request(String),
    /// The keyspace name cannot be used in a statement.
    #[error("invalid keyspace name {0:?}: use 1-48 characters from [A-Za-z0-9_], starting with a letter")]
    InvalidKeyspace(String),
}

impl CatalogueError {
    /// Whether trying the same request again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, CatalogueError::Request(_) | CatalogueError::Connect { .. })
    }
}

/// A source of catalogue rows: looked up one id at a time, or read whole to warm a cache.
pub trait Catalogue: Send + Sync + 'static {
    /// The `tracks` row of `track_id`, `None` if there is none.
    fn track(&self, track_id: &str) -> BoxFuture<'static, Result<Option<TrackRow>, CatalogueError>>;
    /// The `ads` row of `ad_id`, `None` if there is none.
    fn ad(&self, ad_id: &str) -> BoxFuture<'static, Result<Option<AdRow>, CatalogueError>>;
    /// Every `tracks` row with its id, in pages, in no particular order.
    fn scan_tracks(&self) -> BoxStream<'static, Result<(String, TrackRow), CatalogueError>>;
    /// Every `ads` row with its id, in pages, in no particular order.
    fn scan_ads(&self) -> BoxStream<'static, Result<(String, AdRow), CatalogueError>>;
}

/// Rows per page of a [`Catalogue`] scan.
pub const SCAN_PAGE_ROWS: i32 = 5000;

/// The catalogue in a Cassandra-compatible store, read through prepared statements.
///
/// Plain scylla-driver code: it runs unchanged against ScyllaDB, Cassandra or the dev server.
pub struct CqlCatalogue {
    session: Arc<Session>,
    track: PreparedStatement,
    ad: PreparedStatement,
    scan_tracks: PreparedStatement,
    scan_ads: PreparedStatement,
}

impl CqlCatalogue {
    /// Connects to `nodes` (comma separated `host:port`) and prepares the lookups in `keyspace`.
    pub async fn connect(nodes: &str, keyspace: &str) -> Result<Self, CatalogueError> {
        let session = Arc::new(schema::connect(nodes).await?);
        Self::with_session(session, keyspace).await
    }

    /// Prepares the lookups on an existing session.
    pub async fn with_session(session: Arc<Session>, keyspace: &str) -> Result<Self, CatalogueError> {
        schema::check_keyspace(keyspace)?;
        let track = schema::prepare(
            &session,
            format!("SELECT genre, artist_id, duration_ms FROM {keyspace}.tracks WHERE track_id = ?"),
        )
        .await?;
        let ad =
            schema::prepare(&session, format!("SELECT advertiser_id, category FROM {keyspace}.ads WHERE ad_id = ?"))
                .await?;
        let mut scan_tracks =
            schema::prepare(&session, format!("SELECT track_id, genre, artist_id, duration_ms FROM {keyspace}.tracks"))
                .await?;
        let mut scan_ads =
            schema::prepare(&session, format!("SELECT ad_id, advertiser_id, category FROM {keyspace}.ads")).await?;
        scan_tracks.set_page_size(SCAN_PAGE_ROWS);
        scan_ads.set_page_size(SCAN_PAGE_ROWS);
        Ok(CqlCatalogue { session, track, ad, scan_tracks, scan_ads })
    }

    /// The driver session, for callers that share it.
    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }
}

type TrackTuple = (Option<String>, Option<String>, Option<i32>);
type AdTuple = (Option<String>, Option<String>);

/// Pages through every row of `stmt` (a `SELECT` with no bind markers), decoded as `Row`.
fn scan_rows<Row>(session: &Arc<Session>, stmt: &PreparedStatement) -> BoxStream<'static, Result<Row, CatalogueError>>
where
    Row: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm> + Send + 'static,
{
    let (session, stmt) = (Arc::clone(session), stmt.clone());
    let request = |e: &dyn std::fmt::Display| CatalogueError::Request(e.to_string());
    futures::stream::once(async move {
        let pager = session.execute_iter(stmt, ()).await.map_err(|e| request(&e))?;
        Ok::<_, CatalogueError>(
            pager.rows_stream::<Row>().map_err(|e| request(&e))?.map(move |r| r.map_err(|e| request(&e))),
        )
    })
    .map(|pages| match pages {
        Ok(rows) => rows.boxed(),
        Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
    })
    .flatten()
    .boxed()
}

impl Catalogue for CqlCatalogue {
    fn track(&self, track_id: &str) -> BoxFuture<'static, Result<Option<TrackRow>, CatalogueError>> {
        let session = Arc::clone(&self.session);
        let stmt = self.track.clone();
        let id = track_id.to_owned();
        Box::pin(async move {
            let result =
                session.execute_unpaged(&stmt, (id,)).await.map_err(|e| CatalogueError::Request(e.to_string()))?;
            let rows = result.into_rows_result().map_err(|e| CatalogueError::Request(e.to_string()))?;
            let row = rows.maybe_first_row::<TrackTuple>().map_err(|e| CatalogueError::Request(e.to_string()))?;
            Ok(row.map(|(genre, artist_id, duration_ms)| TrackRow { genre, artist_id, duration_ms }))
        })
    }

    fn ad(&self, ad_id: &str) -> BoxFuture<'static, Result<Option<AdRow>, CatalogueError>> {
        let session = Arc::clone(&self.session);
        let stmt = self.ad.clone();
        let id = ad_id.to_owned();
        Box::pin(async move {
            let result =
                session.execute_unpaged(&stmt, (id,)).await.map_err(|e| CatalogueError::Request(e.to_string()))?;
            let rows = result.into_rows_result().map_err(|e| CatalogueError::Request(e.to_string()))?;
            let row = rows.maybe_first_row::<AdTuple>().map_err(|e| CatalogueError::Request(e.to_string()))?;
            Ok(row.map(|(advertiser_id, category)| AdRow { advertiser_id, category }))
        })
    }

    fn scan_tracks(&self) -> BoxStream<'static, Result<(String, TrackRow), CatalogueError>> {
        scan_rows::<(String, Option<String>, Option<String>, Option<i32>)>(&self.session, &self.scan_tracks)
            .map(|r| r.map(|(id, genre, artist_id, duration_ms)| (id, TrackRow { genre, artist_id, duration_ms })))
            .boxed()
    }

    fn scan_ads(&self) -> BoxStream<'static, Result<(String, AdRow), CatalogueError>> {
        scan_rows::<(String, Option<String>, Option<String>)>(&self.session, &self.scan_ads)
            .map(|r| r.map(|(id, advertiser_id, category)| (id, AdRow { advertiser_id, category })))
            .boxed()
    }
}

/// A catalogue held in memory: for the engine benchmark and unit tests of the dataflow, which
/// measure or check the dataflow alone. Integration tests use [`CqlCatalogue`] against a real server.
#[derive(Default, Clone)]
pub struct MemoryCatalogue {
    /// Track rows by id.
    pub tracks: Arc<HashMap<String, TrackRow>>,
    /// Ad rows by id.
    pub ads: Arc<HashMap<String, AdRow>>,
}

impl Catalogue for MemoryCatalogue {
    fn track(&self, track_id: &str) -> BoxFuture<'static, Result<Option<TrackRow>, CatalogueError>> {
        let row = self.tracks.get(track_id).cloned();
        Box::pin(async move { Ok(row) })
    }

    fn ad(&self, ad_id: &str) -> BoxFuture<'static, Result<Option<AdRow>, CatalogueError>> {
        let row = self.ads.get(ad_id).cloned();
        Box::pin(async move { Ok(row) })
    }

    fn scan_tracks(&self) -> BoxStream<'static, Result<(String, TrackRow), CatalogueError>> {
        let rows: Vec<_> = self.tracks.iter().map(|(k, v)| Ok((k.clone(), v.clone()))).collect();
        futures::stream::iter(rows).boxed()
    }

    fn scan_ads(&self) -> BoxStream<'static, Result<(String, AdRow), CatalogueError>> {
        let rows: Vec<_> = self.ads.iter().map(|(k, v)| Ok((k.clone(), v.clone()))).collect();
        futures::stream::iter(rows).boxed()
    }
}

/// The catalogue schema, and the statements that create and fill it.
pub mod schema {
    use super::*;

    /// Opens a driver session to `nodes` (comma separated `host:port`).
    pub async fn connect(nodes: &str) -> Result<Session, CatalogueError> {
        let list: Vec<&str> = nodes.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
        SessionBuilder::new()
            .known_nodes(&list)
            .connection_timeout(std::time::Duration::from_secs(5))
            .build()
            .await
            .map_err(|source| CatalogueError::Connect { nodes: nodes.to_owned(), source: Box::new(source) })
    }

    /// Refuses keyspace names that would not be a plain CQL identifier.
    pub fn check_keyspace(keyspace: &str) -> Result<(), CatalogueError> {
        let ok = (1..=48).contains(&keyspace.len())
            && keyspace.starts_with(|c: char| c.is_ascii_alphabetic())
            && keyspace.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if ok { Ok(()) } else { Err(CatalogueError::InvalidKeyspace(keyspace.to_owned())) }
    }

    pub(crate) async fn prepare(session: &Session, statement: String) -> Result<PreparedStatement, CatalogueError> {
        session
            .prepare(statement.clone())
            .await
            .map_err(|source| CatalogueError::Prepare { statement, source: Box::new(source) })
    }

    /// Creates the keyspace (SimpleStrategy, `replication_factor`) and the `tracks` and `ads` tables.
    pub async fn create(session: &Session, keyspace: &str, replication_factor: u32) -> Result<(), CatalogueError> {
        check_keyspace(keyspace)?;
        let ddl = [
            format!(
                "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = \
                 {{'class': 'SimpleStrategy', 'replication_factor': {replication_factor}}}"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {keyspace}.tracks \
                 (track_id text PRIMARY KEY, genre text, artist_id text, duration_ms int)"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {keyspace}.ads \
                 (ad_id text PRIMARY KEY, advertiser_id text, category text)"
            ),
        ];
        for statement in ddl {
            session.query_unpaged(statement, ()).await.map_err(|e| CatalogueError::Request(e.to_string()))?;
        }
        Ok(())
    }

    /// Writes tracks `(track_id, row)` with up to `parallelism` prepared inserts in flight.
    pub async fn insert_tracks(
        session: &Session,
        keyspace: &str,
        rows: impl IntoIterator<Item = (String, TrackRow)>,
        parallelism: usize,
    ) -> Result<usize, CatalogueError> {
        check_keyspace(keyspace)?;
        let stmt = prepare(
            session,
            format!("INSERT INTO {keyspace}.tracks (track_id, genre, artist_id, duration_ms) VALUES (?, ?, ?, ?)"),
        )
        .await?;
        run_inserts(rows, parallelism, |(id, r)| {
            let stmt = &stmt;
            async move { session.execute_unpaged(stmt, (id, r.genre, r.artist_id, r.duration_ms)).await }
        })
        .await
    }

    /// Writes ads `(ad_id, row)` with up to `parallelism` prepared inserts in flight.
    pub async fn insert_ads(
        session: &Session,
        keyspace: &str,
        rows: impl IntoIterator<Item = (String, AdRow)>,
        parallelism: usize,
    ) -> Result<usize, CatalogueError> {
        check_keyspace(keyspace)?;
        let stmt =
            prepare(session, format!("INSERT INTO {keyspace}.ads (ad_id, advertiser_id, category) VALUES (?, ?, ?)"))
                .await?;
        run_inserts(rows, parallelism, |(id, r)| {
            let stmt = &stmt;
            async move { session.execute_unpaged(stmt, (id, r.advertiser_id, r.category)).await }
        })
        .await
    }

    async fn run_inserts<R, F, Fut, T>(rows: R, parallelism: usize, insert: F) -> Result<usize, CatalogueError>
    where
        R: IntoIterator,
        F: FnMut(R::Item) -> Fut,
        Fut: std::future::Future<Output = Result<T, scylla::errors::ExecutionError>>,
    {
        use futures::StreamExt;
        let mut written = 0;
        let mut results = futures::stream::iter(rows).map(insert).buffer_unordered(parallelism.max(1));
        while let Some(r) = results.next().await {
            r.map_err(|e| CatalogueError::Request(e.to_string()))?;
            written += 1;
        }
        Ok(written)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn keyspace_names_are_checked() {
            assert!(check_keyspace("squall").is_ok());
            assert!(check_keyspace("t_123").is_ok());
            for bad in ["", "1abc", "a-b", "a;DROP", "a b", &"x".repeat(49)] {
                assert!(check_keyspace(bad).is_err(), "{bad:?} accepted");
            }
        }
    }
}
