//! SQLite driver (rusqlite, blocking: always called on a blocking thread).
//! The database is opened read-only; SQLite's dynamic types arrive as they
//! are stored, and the mapper decides per row.

use std::path::Path;
use std::time::Duration;

use rusqlite::types::{Value, ValueRef};
use rusqlite::{Connection, OpenFlags};

use super::SqlError;
use super::mapping::{Cell, Cursor, CursorValue};
use super::query::Queries;

/// Opens `path` read-only and checks that both queries prepare (table and
/// columns exist).
pub fn open(path: &Path, busy: Duration, queries: &Queries) -> Result<Connection, SqlError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| SqlError::Connect(format!("{}: {e}", path.display())))?;
    conn.busy_timeout(busy)
        .map_err(|e| SqlError::Connect(e.to_string()))?;
    for sql in [&queries.first, &queries.next] {
        conn.prepare_cached(sql)
            .map_err(|e| SqlError::Query(e.to_string()))?;
    }
    Ok(conn)
}

/// Up to `limit` rows after `cursor` (from the start without one).
pub fn fetch(
    conn: &Connection,
    queries: &Queries,
    cursor: Option<&Cursor>,
    limit: usize,
) -> Result<Vec<Vec<Cell>>, SqlError> {
    let limit = Value::Integer(i64::try_from(limit).unwrap_or(i64::MAX));
    let (sql, params) = match cursor {
        None => (&queries.first, vec![limit]),
        Some(c) => {
            let key = match &c.key {
                CursorValue::Int(i) => Value::Integer(*i),
                CursorValue::Text(s) => Value::Text(s.clone()),
                CursorValue::Real(f) => Value::Real(*f),
                CursorValue::Time(_) => {
                    return Err(SqlError::Checkpoint(
                        "the stored cursor is a PostgreSQL timestamp, this is an SQLite source \
                         (reset the source's checkpoint)"
                            .into(),
                    ));
                }
            };
            let mut p = vec![key];
            if let Some(t) = c.tie {
                p.push(Value::Integer(t));
            }
            p.push(limit);
            (&queries.next, p)
        }
    };
    let err = |e: rusqlite::Error| SqlError::Query(e.to_string());
    let mut stmt = conn.prepare_cached(sql).map_err(err)?;
    let n = stmt.column_count();
    let mut rows = stmt
        .query(rusqlite::params_from_iter(params))
        .map_err(err)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(err)? {
        let mut cells = Vec::with_capacity(n);
        for i in 0..n {
            let cell = match row.get_ref(i).map_err(err)? {
                ValueRef::Null => Cell::Null,
                ValueRef::Integer(v) => Cell::Int(v),
                ValueRef::Real(v) => Cell::Real(v),
                ValueRef::Text(t) => Cell::Text(String::from_utf8_lossy(t).into_owned()),
                ValueRef::Blob(_) => Cell::Other("blob".into()),
            };
            cells.push(cell);
        }
        out.push(cells);
    }
    Ok(out)
}
