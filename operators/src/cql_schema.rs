//! CQL schema steps shared by the checkpoint store and the feeds: tables created unless they
//! exist, and the error of a refused statement.

use scylla::client::session::Session;

/// A statement the CQL store refused or did not answer.
#[derive(Debug, thiserror::Error)]
#[error("`{statement}`: {message}")]
pub struct CqlStatementError {
    /// The statement, shortened to 120 characters.
    pub statement: String,
    /// The driver's error.
    pub message: String,
}

impl CqlStatementError {
    /// The error `e` of `statement`, shortened for a message.
    pub fn new(statement: &str, e: impl std::fmt::Display) -> Self {
        let statement = match statement.char_indices().nth(120) {
            Some((i, _)) => format!("{}...", &statement[..i]),
            None => statement.to_owned(),
        };
        CqlStatementError { statement, message: e.to_string() }
    }
}

/// Creates each `(table, ddl)` of `tables` in `keyspace` (which must exist) whose table is not
/// there yet; the tables it created. The existing tables are looked up first, so a `CREATE TABLE`
/// of an existing table is never sent, whatever a server makes of `IF NOT EXISTS`.
pub async fn create_tables_unless_they_exist<'t>(
    session: &Session,
    keyspace: &str,
    tables: &'t [(&'t str, String)],
) -> Result<Vec<&'t str>, CqlStatementError> {
    let existing = "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?";
    let err = |e: &dyn std::fmt::Display| CqlStatementError::new(existing, e);
    let rows = session
        .query_unpaged(existing, (keyspace,))
        .await
        .map_err(|e| err(&e))?
        .into_rows_result()
        .map_err(|e| err(&e))?;
    let have: Vec<String> = rows
        .rows::<(String,)>()
        .map_err(|e| err(&e))?
        .map(|r| r.map(|(t,)| t))
        .collect::<Result<_, _>>()
        .map_err(|e| err(&e))?;
    let mut created = Vec::new();
    for (table, ddl) in tables {
        if !have.iter().any(|t| t == table) {
            session.query_unpaged(ddl.as_str(), ()).await.map_err(|e| CqlStatementError::new(ddl, e))?;
            created.push(*table);
        }
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::CqlStatementError;

    #[test]
    fn a_long_statement_is_shortened_to_120_characters() {
        let long = "é".repeat(200);
        let e = CqlStatementError::new(&long, "refused");
        assert_eq!(e.statement, format!("{}...", "é".repeat(120)));
        assert_eq!(CqlStatementError::new("SELECT 1", "x").to_string(), "`SELECT 1`: x");
    }
}
