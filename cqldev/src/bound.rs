//! Writes read the way Cassandra reads them, before kassandra sees them.
//!
//! * **A bound null writes a null.** kassandra leaves a column out of the write when its bound
//!   value is null, so the old value stays; Cassandra writes a tombstone. A bound null for a
//!   regular column is therefore turned into the literal `null` of the statement, which kassandra
//!   stores as an empty cell; [`null_cells`] makes such cells read back as null.
//! * **A bound unset (protocol v4, length -2) leaves the column alone**, as kassandra already
//!   does for regular columns.
//! * **Key columns are never null or unset**: Cassandra refuses both with Invalid; kassandra
//!   would store a null clustering value or report an error without a message.
//! * **An empty collection is a null**, as in Cassandra (non-frozen collections): [`null_cells`].
//! * **A DELETE names the whole partition key and either no clustering column or all of them**:
//!   kassandra deletes the whole partition when only a prefix of the clustering key is given
//!   (Cassandra deletes only the rows under that prefix), so that shape is refused.
//!
//! UPDATE statements reach kassandra as inserts, so the same rules cover them.

use kassandra::{
    cql::{
        literal::Literal,
        query::{InsertQuery, QueryString, QueryValue},
        value::CqlValue,
    },
    error::DbError,
    frame::{response::error::Error, value::FrameValue},
};

/// The primary-key columns of one table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyColumns {
    /// Partition-key columns.
    pub partition: Vec<String>,
    /// Clustering columns.
    pub clustering: Vec<String>,
}

impl KeyColumns {
    fn is_key(&self, column: &str) -> bool {
        self.partition.iter().chain(&self.clustering).any(|c| c == column)
    }
}

/// The table a write or delete names, if the statement is one that this module checks.
pub fn target(statement: &QueryString) -> Option<(Option<&str>, &str)> {
    match statement {
        QueryString::Insert(insert) => Some((insert.keyspace.as_deref(), insert.table.as_str())),
        QueryString::Delete(delete) => Some((delete.keyspace.as_deref(), delete.table.as_str())),
        _ => None,
    }
}

/// Whether [`apply`] has anything to do: a write with a null or unset bound value or a literal
/// null, or a row delete (whose clustering columns must be checked).
pub fn needs_keys(statement: &QueryString, data: &[FrameValue<'_>]) -> bool {
    match statement {
        QueryString::Insert(insert) => {
            data.iter().any(|v| matches!(v, FrameValue::Null | FrameValue::NotSet))
                || insert.values.iter().any(|v| matches!(v, QueryValue::Literal(Literal::Null)))
        }
        QueryString::Delete(delete) => delete.columns.is_empty(),
        _ => false,
    }
}

/// Rewrites `statement` and `data` so that kassandra does what Cassandra does with them, or
/// answers the Invalid error Cassandra gives. `keys` are the primary-key columns of its table.
pub fn apply(statement: &mut QueryString, data: &mut Vec<FrameValue<'_>>, keys: &KeyColumns) -> Result<(), Error> {
    match statement {
        QueryString::Insert(insert) => write_nulls(insert, data, keys),
        QueryString::Delete(delete) if delete.columns.is_empty() => {
            let named = |column: &String| delete.r#where.statements.iter().any(|(c, _)| c == column);
            let clustering = keys.clustering.iter().filter(|c| named(c)).count();
            if clustering == 0 || clustering == keys.clustering.len() {
                Ok(())
            } else {
                Err(Error::new(
                    DbError::Invalid,
                    format!(
                        "squall-cql-dev refuses a DELETE that names only some clustering columns of {} \
                         (kassandra would delete the whole partition; Cassandra deletes only the rows under \
                         that prefix): name all of {} or none",
                        delete.table,
                        keys.clustering.join(", ")
                    ),
                ))
            }
        }
        _ => Ok(()),
    }
}

fn write_nulls(insert: &mut InsertQuery, data: &mut Vec<FrameValue<'_>>, keys: &KeyColumns) -> Result<(), Error> {
    let mut bound = std::mem::take(data).into_iter();
    let mut kept = Vec::with_capacity(bound.len());
    let mut result = Ok(());
    for (column, value) in insert.columns.iter().zip(insert.values.iter_mut()) {
        let is_key = keys.is_key(column);
        match value {
            QueryValue::Literal(Literal::Null) if is_key => {
                result = result.and(Err(null_key(column)));
            }
            QueryValue::Literal(_) => {}
            QueryValue::Blankslate => match bound.next() {
                Some(FrameValue::Null) if is_key => result = result.and(Err(null_key(column))),
                Some(FrameValue::NotSet) if is_key => {
                    result = result
                        .and(Err(Error::new(DbError::Invalid, format!("Invalid unset value for column {column}"))));
                }
                Some(FrameValue::Null) => *value = QueryValue::Literal(Literal::Null),
                Some(other) => kept.push(other),
                // Too few values: kassandra reports it.
                None => {}
            },
        }
    }
    // Values beyond the markers: kassandra ignores them; keep them for it all the same.
    kept.extend(bound);
    *data = kept;
    result
}

fn null_key(column: &str) -> Error {
    Error::new(DbError::Invalid, format!("Invalid null value for primary key column {column}"))
}

/// Result cells as Cassandra sends them.
///
/// kassandra stores a null (a literal `null`, a deleted column) as an empty cell and sends it as
/// a zero-length value, which drivers read as `""` or fail to decode; Cassandra sends null. And
/// Cassandra has no empty (non-frozen) collection: writing one writes a null. Frozen collections,
/// whose empty value is not null, are refused by [`crate::cql_text::check`].
pub fn null_cells(columns: &mut [Option<CqlValue>]) {
    for column in columns {
        let null = match column {
            Some(CqlValue::Empty) => true,
            Some(CqlValue::List(items) | CqlValue::Set(items)) => items.is_empty(),
            Some(CqlValue::Map(entries)) => entries.is_empty(),
            _ => false,
        };
        if null {
            *column = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> KeyColumns {
        KeyColumns { partition: vec!["id".into()], clustering: vec!["c1".into(), "c2".into()] }
    }

    fn insert(text: &str) -> QueryString {
        kassandra::cql::parser::query(text).unwrap()
    }

    #[test]
    fn a_bound_null_becomes_a_literal_null_and_unset_stays_unset() {
        let mut statement = insert("INSERT INTO t (id, c1, c2, a, b, c) VALUES (?, ?, ?, ?, ?, ?)");
        let mut data = vec![
            FrameValue::Some(b"k"),
            FrameValue::Some(b"x"),
            FrameValue::Some(b"y"),
            FrameValue::Null,
            FrameValue::NotSet,
            FrameValue::Some(b"z"),
        ];
        assert!(needs_keys(&statement, &data));
        apply(&mut statement, &mut data, &keys()).unwrap();
        let QueryString::Insert(insert) = &statement else { panic!("an insert") };
        assert!(matches!(insert.values[3], QueryValue::Literal(Literal::Null)));
        assert!(matches!(insert.values[4], QueryValue::Blankslate));
        let kept: Vec<_> = data.iter().map(|v| matches!(v, FrameValue::NotSet)).collect();
        assert_eq!(kept, [false, false, false, true, false], "the null is gone from the bound values");
    }

    #[test]
    fn null_or_unset_keys_are_refused() {
        for data in [
            vec![FrameValue::Null, FrameValue::Some(b"x"), FrameValue::Some(b"y")],
            vec![FrameValue::Some(b"k"), FrameValue::NotSet, FrameValue::Some(b"y")],
        ] {
            let mut statement = insert("INSERT INTO t (id, c1, c2) VALUES (?, ?, ?)");
            let mut data = data;
            let error = apply(&mut statement, &mut data, &keys()).unwrap_err();
            assert_eq!(error.error.code(), DbError::Invalid.code());
        }
        let mut statement = insert("INSERT INTO t (id, c1, c2) VALUES (?, null, ?)");
        assert!(apply(&mut statement, &mut vec![FrameValue::Some(b"k"), FrameValue::Some(b"y")], &keys()).is_err());
    }

    #[test]
    fn deletes_name_all_clustering_columns_or_none() {
        let delete = |text: &str| apply(&mut insert(text), &mut Vec::new(), &keys());
        assert!(delete("DELETE FROM t WHERE id = ?").is_ok());
        assert!(delete("DELETE FROM t WHERE id = ? AND c1 = ? AND c2 = ?").is_ok());
        assert!(delete("DELETE FROM t WHERE id = ? AND c1 = ?").is_err());
    }
}
