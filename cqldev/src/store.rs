//! The one kassandra session every connection shares, and the request handling around it.
//!
//! Invariants kept here:
//! * every request gets exactly one response frame, even when kassandra panics (the panic is
//!   answered with ServerError and the poisoned lock is recovered);
//! * no reply is a ProtocolError except "unsupported protocol version" (and compression
//!   requests): drivers drop the whole pool on a ProtocolError;
//! * `system.local` always describes this node (address, port, Murmur3 partitioner, one token)
//!   and its `schema_version` changes on every successful DDL;
//! * the keyspace set by `USE` belongs to the connection, not to the shared session;
//! * every write and delete goes through [`bound`] first (a bound null writes a null, keys are
//!   never null), and result rows carry null, not kassandra's empty cell, for a null column;
//! * the wrapper knows every prepared statement it executes: an id it did not prepare (e.g. one
//!   from before a restart) is answered Unprepared, and the driver prepares it again;
//! * writes with a client-side timestamp are refused: kassandra applies writes in arrival order.

use std::{
    borrow::Cow,
    collections::HashMap,
    hash::{BuildHasher, DefaultHasher, Hash, Hasher, RandomState},
    net::IpAddr,
    panic::{self, AssertUnwindSafe},
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::BytesMut;
use kassandra::{
    KassandraSession,
    cql::{
        query::{QueryString, QueryValue},
        value::CqlValue,
    },
    error::DbError,
    frame::{
        FrameParams,
        request::{
            QueryFlags, QueryParameters, Request, RequestOpcode,
            batch::{Batch, BatchStatement},
            query::Query,
        },
        response::{
            Response, ResponseFrameCodec,
            error::Error,
            result::{PartitionKeyIndex, PreparedMetadata, QueryResult, Rows, SetKeyspace},
        },
        value::FrameValue,
    },
};
use tokio_util::codec::Encoder;
use tracing::{debug, warn};

use crate::{
    bound::{self, KeyColumns},
    cql_text,
};

/// What `system.local` says about this node.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// Address drivers connect to (they pair it with the port of their contact point).
    pub rpc_address: IpAddr,
    /// The port the server is bound to.
    pub port: u16,
    /// Stable for the life of the process.
    pub host_id: [u8; 16],
    /// Reported as `cluster_name`.
    pub cluster_name: String,
}

/// Per-connection state.
#[derive(Debug, Default)]
pub struct Connection {
    /// Set by `USE`; statements without a keyspace resolve against it.
    keyspace: Option<String>,
}

/// The shared kassandra session behind one lock.
pub struct Store {
    session: Mutex<KassandraSession>,
    node: NodeInfo,
    /// Set when a statement may have changed data; cleared by [`Store::take_dirty`].
    dirty: AtomicBool,
    /// Every statement prepared since start-up, by id. Locked after `session`, never before.
    prepared: Mutex<HashMap<u128, QueryString>>,
    /// Primary-key columns by (keyspace, table). Tables cannot be dropped or altered here, so an
    /// entry never goes stale. Locked after `session`, never before.
    keys: Mutex<HashMap<(String, String), KeyColumns>>,
}

/// Keyspace name used when a connection has not chosen one: kassandra then fails to find the
/// table instead of silently using another connection's keyspace.
const NO_KEYSPACE: &str = "";

impl Store {
    /// Wraps `session` and writes this node's `system.local` row into it.
    pub fn new(session: KassandraSession, node: NodeInfo) -> anyhow::Result<Self> {
        let store = Self {
            session: Mutex::new(session),
            node,
            dirty: AtomicBool::new(false),
            prepared: Mutex::default(),
            keys: Mutex::default(),
        };
        {
            let mut session = store.lock();
            write_local_row(&mut session, &store.node, random_uuid())
                .map_err(|e| anyhow::anyhow!("could not write the system.local row: {e}"))?;
        }
        Ok(store)
    }

    /// Whether data may have changed since the last call.
    pub fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::AcqRel)
    }

    /// kassandra's state as bytes for [`KassandraSession::load_state`].
    pub fn save_state(&self) -> anyhow::Result<Vec<u8>> {
        let session = self.lock();
        panic::catch_unwind(AssertUnwindSafe(|| session.save_state()))
            .map_err(|payload| anyhow::anyhow!("kassandra panicked saving its state: {}", panic_message(&*payload)))
    }

    fn lock(&self) -> MutexGuard<'_, KassandraSession> {
        self.session.lock().unwrap_or_else(|poisoned| {
            warn!("recovering the session lock after a panic in kassandra");
            self.session.clear_poison();
            poisoned.into_inner()
        })
    }

    /// The session, switched to `conn`'s keyspace.
    fn session_for(&self, conn: &Connection) -> MutexGuard<'_, KassandraSession> {
        let mut session = self.lock();
        session.use_keyspace(conn.keyspace.as_deref().unwrap_or(NO_KEYSPACE));
        session
    }

    /// Handles one request frame and returns the encoded response frame.
    pub fn handle_frame(
        &self,
        conn: &mut Connection,
        params: FrameParams,
        opcode: RequestOpcode,
        body: &[u8],
    ) -> BytesMut {
        let response = panic::catch_unwind(AssertUnwindSafe(|| self.respond(conn, params, opcode, body)))
            .unwrap_or_else(|payload| {
                let message = panic_message(&*payload);
                warn!(?opcode, panic = %message, "kassandra panicked; answering ServerError");
                server_error(format!(
                    "the kassandra engine behind squall-cql-dev panicked on this request ({message}); \
                     the statement shape is not supported by the dev server, which keeps running"
                ))
            });
        if let Response::Error(error) = &response {
            let statement = match opcode {
                RequestOpcode::Query | RequestOpcode::Prepare => split_long_string(body).map(|(text, _)| text),
                _ => None,
            };
            debug!(?opcode, code = error.error.code(), reason = %error.reason, statement, "request failed");
        }
        encode(response, params.stream)
    }

    fn respond(&self, conn: &mut Connection, params: FrameParams, opcode: RequestOpcode, body: &[u8]) -> Response {
        if params.version.is_unsupported() {
            // The one legitimate ProtocolError: drivers downgrade to v4 on it.
            return Response::unsupported_version();
        }

        if opcode == RequestOpcode::AuthResponse {
            // kassandra cannot even decode it.
            return Response::Error(Error::new(
                DbError::AuthenticationError,
                "squall-cql-dev has no authentication; connect without credentials",
            ));
        }

        // QUERY and PREPARE start with the statement text: fix it up before kassandra parses it.
        let mut statement_text = None;
        let rewritten: Vec<u8>;
        let body = match opcode {
            RequestOpcode::Query | RequestOpcode::Prepare => match split_long_string(body) {
                Some((text, rest)) => {
                    let normalized = cql_text::normalize(text);
                    if let Err(message) = cql_text::check(&normalized) {
                        return Response::Error(Error::new(DbError::Invalid, message));
                    }
                    let body = match &normalized {
                        Cow::Borrowed(_) => body,
                        Cow::Owned(text) => {
                            rewritten = join_long_string(text, rest);
                            &rewritten[..]
                        }
                    };
                    statement_text = Some(normalized);
                    body
                }
                None => {
                    return Response::Error(Error::new(DbError::SyntaxError, "the statement text is not valid UTF-8"));
                }
            },
            _ => body,
        };

        let request = match Request::deserialize(opcode, body, params.flags) {
            Ok(request) => request,
            Err(error) => return Response::Error(decode_error(error)),
        };

        match request {
            Request::StartUp(options) => match options.get("COMPRESSION") {
                Some(algorithm) => Response::Error(Error::new(
                    DbError::ProtocolError,
                    format!("compression ({algorithm}) is not supported by squall-cql-dev"),
                )),
                None => Response::Ready,
            },
            Request::Options => Response::options(),
            Request::Register { .. } => Response::Ready,
            Request::AuthResponse => unreachable!("answered before decoding"),
            Request::Query(mut query) => {
                if let QueryString::Use { keyspace } = &query.query {
                    return self.use_keyspace(conn, keyspace);
                }
                unpaged_means_everything(&mut query.parameters);
                let conn = &*conn;
                self.run(conn, |session| {
                    refuse_client_timestamp(query.parameters.default_timestamp)?;
                    self.write_like_cassandra(session, conn, &mut query.query, &mut query.parameters.data)?;
                    session.process(query)
                })
            }
            Request::Prepare(statement) => {
                let text = statement_text.as_deref().unwrap_or_default();
                self.prepare(conn, statement, text)
            }
            Request::Execute(mut execute) => {
                unpaged_means_everything(&mut execute.parameters);
                let conn = &*conn;
                self.run(conn, |session| {
                    refuse_client_timestamp(execute.parameters.default_timestamp)?;
                    let mut statement = self.prepared_statement(execute.id)?;
                    self.write_like_cassandra(session, conn, &mut statement, &mut execute.parameters.data)?;
                    session.process(Query { query: statement, raw_query: "", parameters: execute.parameters })
                })
            }
            Request::Batch(batch) => {
                let conn = &*conn;
                self.run(conn, |session| {
                    let batch = self.batch_like_cassandra(session, conn, batch)?;
                    session.process_batch(batch)
                })
            }
        }
    }

    /// Runs a statement in `conn`'s keyspace and keeps `system.local` and the dirty flag current.
    fn run(
        &self,
        conn: &Connection,
        statement: impl FnOnce(&mut KassandraSession) -> Result<QueryResult, Error>,
    ) -> Response {
        let mut session = self.session_for(conn);
        match statement(&mut session) {
            Ok(mut result) => {
                match &mut result {
                    QueryResult::SchemaChange(_) => {
                        let version = random_uuid();
                        if let Err(error) = write_schema_version(&mut session, version) {
                            warn!(%error, "could not update system.local schema_version");
                        }
                        self.dirty.store(true, Ordering::Release);
                    }
                    QueryResult::Void => self.dirty.store(true, Ordering::Release),
                    QueryResult::Rows(rows) => {
                        fix_schema_type_names(rows);
                        for row in &mut rows.rows {
                            bound::null_cells(&mut row.columns);
                        }
                    }
                    QueryResult::SetKeyspace(_) | QueryResult::Prepared(_) => {}
                }
                Response::Result(result)
            }
            Err(error) => Response::Error(execution_error(error)),
        }
    }

    fn use_keyspace(&self, conn: &mut Connection, keyspace: &str) -> Response {
        let exists = {
            let mut session = self.lock();
            let value = keyspace.as_bytes();
            let query = bound_query(
                "SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = ?",
                vec![FrameValue::Some(value)],
            );
            match query.and_then(|query| session.process(query)) {
                Ok(QueryResult::Rows(rows)) => !rows.rows.is_empty(),
                Ok(_) => false,
                Err(error) => return Response::Error(execution_error(error)),
            }
        };
        if !exists {
            return Response::Error(Error::new(DbError::Invalid, format!("Keyspace '{keyspace}' does not exist")));
        }
        conn.keyspace = Some(keyspace.to_owned());
        Response::Result(QueryResult::SetKeyspace(SetKeyspace { keyspace_name: keyspace.to_owned() }))
    }

    fn prepare(&self, conn: &Connection, statement: QueryString, text: &str) -> Response {
        let markers = bind_marker_mask(&statement);
        // Same text in the same keyspace gets the same id on every connection (as in Cassandra),
        // so the driver's "prepared ids differ" check holds across its pool.
        let id = statement_id(conn.keyspace.as_deref(), text);
        let mut session = self.session_for(conn);
        match session.prepare_with_id(statement.clone(), id) {
            Ok(QueryResult::Prepared(mut prepared)) => {
                self.prepared.lock().unwrap_or_else(|p| p.into_inner()).insert(id, statement);
                if let Some(markers) = markers {
                    fix_prepared_metadata(&mut prepared.prepared_metadata, &markers);
                }
                Response::Result(QueryResult::Prepared(prepared))
            }
            Ok(other) => Response::Result(other),
            Err(error) => Response::Error(execution_error(error)),
        }
    }

    /// The statement prepared as `id`, or Unprepared (the driver then prepares it again).
    fn prepared_statement(&self, id: &[u8]) -> Result<QueryString, Error> {
        let unprepared = || {
            Error::new(
                DbError::Unprepared { statement_id: bytes::Bytes::copy_from_slice(id) },
                "squall-cql-dev has not prepared this statement (since it started); prepare it again",
            )
        };
        let key = u128::from_be_bytes(id.try_into().map_err(|_| unprepared())?);
        self.prepared.lock().unwrap_or_else(|p| p.into_inner()).get(&key).cloned().ok_or_else(unprepared)
    }

    /// Applies [`bound`]'s rules to one statement and its bound values.
    fn write_like_cassandra(
        &self,
        session: &mut KassandraSession,
        conn: &Connection,
        statement: &mut QueryString,
        data: &mut Vec<FrameValue<'_>>,
    ) -> Result<(), Error> {
        if !bound::needs_keys(statement, data) {
            return Ok(());
        }
        let Some((keyspace, table)) = bound::target(statement) else {
            return Ok(());
        };
        let Some(keyspace) = keyspace.or(conn.keyspace.as_deref()) else {
            return Ok(()); // kassandra reports the missing keyspace
        };
        let key = (keyspace.to_owned(), table.to_owned());
        let cached = self.keys.lock().unwrap_or_else(|p| p.into_inner()).get(&key).cloned();
        let keys = match cached {
            Some(keys) => keys,
            None => match key_columns(session, keyspace, table)? {
                Some(keys) => {
                    self.keys.lock().unwrap_or_else(|p| p.into_inner()).insert(key, keys.clone());
                    keys
                }
                None => return Ok(()), // no such table: kassandra reports it
            },
        };
        bound::apply(statement, data, &keys)
    }

    /// Checks and rewrites every statement of a batch as if it came alone; prepared statements
    /// are resolved here, so kassandra gets them as parsed statements.
    fn batch_like_cassandra<'a>(
        &self,
        session: &mut KassandraSession,
        conn: &Connection,
        mut batch: Batch<'a>,
    ) -> Result<Batch<'a>, Error> {
        refuse_client_timestamp(batch.timestamp)?;
        let statements = std::mem::take(&mut batch.statements);
        for statement in statements {
            let (mut query, raw_query, mut values) = match statement {
                BatchStatement::Query { query, raw_query, values } => {
                    cql_text::check(raw_query).map_err(|message| Error::new(DbError::Invalid, message))?;
                    (query, raw_query, values)
                }
                BatchStatement::Prepared { id, values } => (self.prepared_statement(id)?, "", values),
            };
            self.write_like_cassandra(session, conn, &mut query, &mut values)?;
            batch.statements.push(BatchStatement::Query { query, raw_query, values });
        }
        Ok(batch)
    }
}

/// kassandra ignores client-side write timestamps (it applies writes in arrival order), so a
/// write that carries one would be answered differently from Cassandra.
fn refuse_client_timestamp(timestamp: Option<i64>) -> Result<(), Error> {
    match timestamp {
        None => Ok(()),
        Some(_) => Err(Error::new(
            DbError::Invalid,
            "squall-cql-dev does not support client-side write timestamps (kassandra applies writes in \
             arrival order, whatever their timestamp); send the request without one",
        )),
    }
}

/// The primary-key columns of `keyspace.table` from `system_schema.columns`; `None` if the table
/// does not exist.
fn key_columns(session: &mut KassandraSession, keyspace: &str, table: &str) -> Result<Option<KeyColumns>, Error> {
    // A scan: kassandra finds no rows of system_schema.columns by `keyspace_name = ?` (it files
    // them under a clustering key of another shape than the table declares).
    let mut query =
        Query::simple("SELECT keyspace_name, table_name, column_name, kind, position FROM system_schema.columns")?;
    unpaged_means_everything(&mut query.parameters);
    let QueryResult::Rows(rows) = session.process(query)? else {
        return Ok(None);
    };
    let mut partition = Vec::new();
    let mut clustering = Vec::new();
    let mut found = false;
    for row in rows.rows {
        let [
            Some(CqlValue::Text(ks)),
            Some(CqlValue::Text(t)),
            Some(CqlValue::Text(column)),
            Some(CqlValue::Text(kind)),
            position,
        ] = <[Option<CqlValue>; 5]>::try_from(row.columns).unwrap_or_default()
        else {
            continue;
        };
        if ks != keyspace || t != table {
            continue;
        }
        found = true;
        let position = match position {
            Some(CqlValue::Int(p)) => p,
            _ => 0,
        };
        match kind.as_str() {
            "partition_key" => partition.push((position, column)),
            "clustering" => clustering.push((position, column)),
            _ => {}
        }
    }
    partition.sort();
    clustering.sort();
    let names = |v: Vec<(i32, String)>| v.into_iter().map(|(_, c)| c).collect();
    Ok(found.then(|| KeyColumns { partition: names(partition), clustering: names(clustering) }))
}

/// kassandra pages unpaged requests at 100/500 rows; an absent page size means "all rows".
fn unpaged_means_everything(parameters: &mut QueryParameters<'_>) {
    parameters.result_page_size.get_or_insert(usize::MAX);
}

/// kassandra writes some CQL type names wrongly into `system_schema.columns` (`bool`, `timyint`);
/// drivers then take them for user types and drop the keyspace from their metadata.
fn fix_schema_type_names(rows: &mut Rows) {
    let is_columns_table = rows
        .metadata
        .global_spec
        .as_ref()
        .is_some_and(|spec| spec.ks_name == "system_schema" && spec.table_name == "columns");
    let Some(type_column) = rows.metadata.col_specs.iter().position(|spec| spec.name == "type") else {
        return;
    };
    if !is_columns_table {
        return;
    }
    for row in &mut rows.rows {
        if let Some(Some(CqlValue::Text(name))) = row.columns.get_mut(type_column) {
            *name = cql_type_name(name);
        }
    }
}

/// Replaces kassandra's misspelt native type names inside a (possibly nested) type name.
fn cql_type_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 3);
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        out.push_str(match word.as_str() {
            "bool" => "boolean",
            "timyint" => "tinyint",
            other => other,
        });
        word.clear();
    };
    for c in name.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// Which of the statement's values are bind markers, in the order kassandra lists them in its
/// prepared metadata (WHERE conditions; INSERT/UPDATE values).
fn bind_marker_mask(statement: &QueryString) -> Option<Vec<bool>> {
    let values: Vec<&QueryValue> = match statement {
        QueryString::Select(select) => select.r#where.statements.iter().map(|(_, v)| v).collect(),
        QueryString::Delete(delete) => delete.r#where.statements.iter().map(|(_, v)| v).collect(),
        QueryString::Insert(insert) => insert.values.iter().collect(),
        _ => return None,
    };
    Some(values.into_iter().map(|v| matches!(v, QueryValue::Blankslate)).collect())
}

/// kassandra lists literal values as bind variables; keep only the real markers, renumber the
/// partition-key indexes accordingly and put them in partition-key order (as the protocol says).
fn fix_prepared_metadata(metadata: &mut PreparedMetadata, markers: &[bool]) {
    if metadata.col_specs.len() != markers.len() {
        warn!(
            specs = metadata.col_specs.len(),
            values = markers.len(),
            "prepared metadata does not match the statement; leaving it as kassandra built it"
        );
        return;
    }
    let mut marker_index = Vec::with_capacity(markers.len());
    let mut next = 0u16;
    for &is_marker in markers {
        marker_index.push(is_marker.then_some(next));
        next += u16::from(is_marker);
    }
    let specs = std::mem::take(&mut metadata.col_specs);
    metadata.col_specs = specs.into_iter().zip(markers).filter(|(_, m)| **m).map(|(spec, _)| spec).collect();

    let mut pk: Vec<PartitionKeyIndex> = metadata
        .pk_indexes
        .iter()
        .filter_map(|p| {
            let index = marker_index.get(usize::from(p.index)).copied().flatten()?;
            Some(PartitionKeyIndex { index, sequence: p.sequence })
        })
        .collect();
    pk.sort_by_key(|p| p.sequence);
    // A routing key needs the partition key's leading components; with a gap there is none.
    if pk.iter().enumerate().any(|(i, p)| usize::from(p.sequence) != i) {
        pk.clear();
    }
    metadata.pk_indexes = pk;
}

fn statement_id(keyspace: Option<&str>, text: &str) -> u128 {
    let half = |salt: u8| {
        let mut hasher = DefaultHasher::new();
        salt.hash(&mut hasher);
        keyspace.hash(&mut hasher);
        text.hash(&mut hasher);
        hasher.finish()
    };
    (u128::from(half(1)) << 64) | u128::from(half(2))
}

/// Reads the leading `[long string]` of a QUERY/PREPARE body.
fn split_long_string(body: &[u8]) -> Option<(&str, &[u8])> {
    let len = usize::try_from(i32::from_be_bytes(body.get(..4)?.try_into().ok()?)).ok()?;
    let text = std::str::from_utf8(body.get(4..4 + len)?).ok()?;
    Some((text, &body[4 + len..]))
}

fn join_long_string(text: &str, rest: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(4 + text.len() + rest.len());
    body.extend_from_slice(&(text.len() as i32).to_be_bytes());
    body.extend_from_slice(text.as_bytes());
    body.extend_from_slice(rest);
    body
}

/// Errors from decoding a request: a malformed statement or parameters is the client's
/// mistake, reported as SyntaxError rather than a pool-killing ProtocolError.
fn decode_error(error: Error) -> Error {
    match error.error {
        DbError::ProtocolError => Error::new(DbError::SyntaxError, error.reason),
        _ => error,
    }
}

/// Errors from executing a request: kassandra reports bad bound values as ProtocolError.
fn execution_error(error: Error) -> Error {
    match error.error {
        DbError::ProtocolError => Error::new(DbError::Invalid, error.reason),
        _ => error,
    }
}

fn server_error(message: String) -> Response {
    Response::Error(Error::new(DbError::ServerError, message))
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

/// Encodes with kassandra's codec; its serializers panic on shapes they don't support.
fn encode(response: Response, stream: i16) -> BytesMut {
    let mut frame = BytesMut::new();
    let encoded = panic::catch_unwind(AssertUnwindSafe(|| ResponseFrameCodec.encode((response, stream), &mut frame)));
    let failure = match encoded {
        Ok(Ok(())) => return frame,
        Ok(Err(error)) => format!("{error}"),
        Err(payload) => panic_message(&*payload),
    };
    warn!(%failure, "could not encode a response; answering ServerError");
    let mut frame = BytesMut::new();
    let fallback = server_error(format!("squall-cql-dev could not encode the result ({failure})"));
    if let Err(error) = ResponseFrameCodec.encode((fallback, stream), &mut frame) {
        warn!(%error, "could not encode the ServerError either");
    }
    frame
}

fn bound_query<'a>(text: &'a str, values: Vec<FrameValue<'a>>) -> Result<Query<'a>, Error> {
    let mut query = Query::simple(text)?;
    query.parameters.flags = QueryFlags::VALUES;
    query.parameters.data = values;
    Ok(query)
}

fn write_local_row(session: &mut KassandraSession, node: &NodeInfo, schema_version: [u8; 16]) -> Result<(), Error> {
    let ip = inet(node.rpc_address);
    let port = i32::from(node.port).to_be_bytes();
    let columns: [(&str, Vec<u8>); 18] = [
        ("bootstrapped", b"COMPLETED".to_vec()),
        ("broadcast_address", ip.clone()),
        ("broadcast_port", port.to_vec()),
        ("cluster_name", node.cluster_name.as_bytes().to_vec()),
        ("cql_version", b"3.4.5".to_vec()),
        ("data_center", b"datacenter1".to_vec()),
        ("host_id", node.host_id.to_vec()),
        ("listen_address", ip.clone()),
        ("listen_port", port.to_vec()),
        ("native_protocol_version", b"4".to_vec()),
        ("partitioner", b"org.apache.cassandra.dht.Murmur3Partitioner".to_vec()),
        ("rack", b"rack1".to_vec()),
        ("release_version", b"4.0.0".to_vec()),
        ("rpc_address", ip),
        ("rpc_port", port.to_vec()),
        ("schema_version", schema_version.to_vec()),
        // One node owns the whole Murmur3 ring.
        ("tokens", text_set(&["0"])),
        ("gossip_generation", 1i32.to_be_bytes().to_vec()),
    ];
    let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
    let text =
        format!("INSERT INTO system.local (key, {}) VALUES ('local'{})", names.join(", "), ", ?".repeat(columns.len()));
    let values = columns.iter().map(|(_, value)| FrameValue::Some(value.as_slice())).collect();
    session.process(bound_query(&text, values)?)?;
    Ok(())
}

fn write_schema_version(session: &mut KassandraSession, version: [u8; 16]) -> Result<(), Error> {
    let query = bound_query(
        "INSERT INTO system.local (key, schema_version) VALUES ('local', ?)",
        vec![FrameValue::Some(&version)],
    )?;
    session.process(query)?;
    Ok(())
}

fn inet(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// A `set<text>` in the v4 wire format.
fn text_set(items: &[&str]) -> Vec<u8> {
    let mut out = (items.len() as i32).to_be_bytes().to_vec();
    for item in items {
        out.extend_from_slice(&(item.len() as i32).to_be_bytes());
        out.extend_from_slice(item.as_bytes());
    }
    out
}

/// A random (version 4) UUID, from the standard library's per-process random hasher keys.
pub fn random_uuid() -> [u8; 16] {
    let high = RandomState::new().hash_one(0x5157_u64);
    let low = RandomState::new().hash_one(0xa11_u64);
    let mut bytes = ((u128::from(high) << 64) | u128::from(low)).to_be_bytes();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    bytes
}

/// `8-4-4-4-12` hex form.
pub fn format_uuid(bytes: &[u8; 16]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

#[cfg(test)]
mod tests {
    use kassandra::frame::response::result::ColumnSpec;

    use super::*;

    fn node() -> NodeInfo {
        NodeInfo { rpc_address: [127, 0, 0, 1].into(), port: 9042, host_id: random_uuid(), cluster_name: "t".into() }
    }

    #[test]
    fn literal_where_values_are_not_bind_markers() {
        let store = Store::new(KassandraSession::new(), node()).unwrap();
        let text = "SELECT host_id, rpc_address FROM system.local WHERE key='local'";
        let statement = kassandra::cql::parser::query(text).unwrap();
        let Response::Result(QueryResult::Prepared(prepared)) = store.prepare(&Connection::default(), statement, text)
        else {
            panic!("expected a Prepared result");
        };
        assert!(prepared.prepared_metadata.col_specs.is_empty());
        assert!(prepared.prepared_metadata.pk_indexes.is_empty());
        assert_eq!(prepared.result_metadata.col_specs.len(), 2);
    }

    #[test]
    fn pk_indexes_follow_markers_in_partition_key_order() {
        let spec = |name: &str| ColumnSpec::new(name, kassandra::cql::column::ColumnType::Text);
        let mut metadata = PreparedMetadata {
            // WHERE lit = 'x' AND k = ? AND ns = ?   with PRIMARY KEY ((ns, k))
            pk_indexes: vec![PartitionKeyIndex { index: 1, sequence: 1 }, PartitionKeyIndex { index: 2, sequence: 0 }],
            global_spec: None,
            col_specs: vec![spec("lit"), spec("k"), spec("ns")],
        };
        fix_prepared_metadata(&mut metadata, &[false, true, true]);
        let names: Vec<_> = metadata.col_specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["k", "ns"]);
        let pk: Vec<_> = metadata.pk_indexes.iter().map(|p| (p.index, p.sequence)).collect();
        assert_eq!(pk, [(1, 0), (0, 1)]);
    }

    #[test]
    fn misspelt_type_names_are_corrected() {
        assert_eq!(cql_type_name("bool"), "boolean");
        assert_eq!(cql_type_name("map<text, bool>"), "map<text, boolean>");
        assert_eq!(cql_type_name("list<timyint>"), "list<tinyint>");
        assert_eq!(cql_type_name("boolean_ish"), "boolean_ish");
    }

    #[test]
    fn statement_ids_depend_on_text_and_keyspace() {
        assert_eq!(statement_id(Some("a"), "SELECT 1"), statement_id(Some("a"), "SELECT 1"));
        assert_ne!(statement_id(Some("a"), "SELECT 1"), statement_id(Some("b"), "SELECT 1"));
        assert_ne!(statement_id(None, "SELECT 1"), statement_id(None, "SELECT 2"));
    }

    #[test]
    fn key_columns_come_from_system_schema_in_key_order() {
        let mut session = KassandraSession::new();
        for ddl in [
            "CREATE KEYSPACE ks WITH REPLICATION = {'class': 'SimpleStrategy'}",
            "CREATE TABLE ks.t (z text, a int, y bigint, b text, v text, PRIMARY KEY ((z, a), y, b))",
            "CREATE TABLE ks.u (k text PRIMARY KEY, v text)",
        ] {
            session.process(Query::simple(ddl).unwrap()).unwrap();
        }
        let keys = key_columns(&mut session, "ks", "t").unwrap().unwrap();
        assert_eq!(
            keys,
            KeyColumns { partition: vec!["z".into(), "a".into()], clustering: vec!["y".into(), "b".into()] }
        );
        let keys = key_columns(&mut session, "ks", "u").unwrap().unwrap();
        assert_eq!(keys, KeyColumns { partition: vec!["k".into()], clustering: vec![] });
        assert_eq!(key_columns(&mut session, "ks", "nope").unwrap(), None);
    }

    #[test]
    fn uuids_are_version_4() {
        let id = random_uuid();
        assert_ne!(id, random_uuid());
        assert_eq!(format_uuid(&id).len(), 36);
        assert_eq!(format_uuid(&id).as_bytes()[14], b'4');
    }
}
