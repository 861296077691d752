//! PostgreSQL driver (tokio-postgres, plain TCP): prepared statements, typed
//! parameters, rows as [`Cell`]s.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use protocol::Timestamp;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls, Row, Statement};

use super::SqlError;
use super::config::{CursorType, SqlSourceConfig};
use super::mapping::{Cell, Cursor, CursorValue};
use super::query::{self, Layout};

/// An open connection with the source's two statements prepared.
#[derive(Debug)]
pub struct PgConn {
    client: Client,
    first: Statement,
    next: Statement,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PgConn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn is_int(t: &Type) -> bool {
    matches!(*t, Type::INT2 | Type::INT4 | Type::INT8)
}

fn is_time(t: &Type) -> bool {
    matches!(*t, Type::TIMESTAMP | Type::TIMESTAMPTZ)
}

impl PgConn {
    /// Connects, prepares the queries and checks the column types. Returns the
    /// layout of the result rows (value columns of type `numeric` are read
    /// through a cast to double precision).
    pub async fn connect(cfg: &SqlSourceConfig) -> Result<(PgConn, Layout), SqlError> {
        let mut pg: tokio_postgres::Config = cfg
            .url
            .parse()
            .map_err(|e: tokio_postgres::Error| SqlError::Connect(e.to_string()))?;
        pg.connect_timeout(cfg.query_timeout)
            .application_name("outpost-gateway")
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(60));
        let (client, connection) = pg
            .connect(NoTls)
            .await
            .map_err(|e| SqlError::Connect(e.to_string()))?;
        let name = cfg.name.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(source = %name, error = %e, "PostgreSQL connection ended.");
            }
        });
        let prepare = |sql: String| {
            let client = &client;
            async move {
                client
                    .prepare(&sql)
                    .await
                    .map_err(|e| SqlError::Query(format!("{e}: {}", db_detail(&e))))
            }
        };
        let mut columns = cfg.columns();
        let plain = query::build(cfg.driver.dialect(), &cfg.table, &columns);
        let probe = prepare(plain.first.clone()).await?;
        let types: Vec<Type> = probe.columns().iter().map(|c| c.type_().clone()).collect();
        let layout = &plain.layout;
        let col = |i: usize| layout.columns[i].clone();
        let expect = |i: usize, ok: bool, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(SqlError::Schema(format!(
                    "column {:?} has type {}; {what}",
                    col(i),
                    types[i]
                )))
            }
        };
        match cfg.cursor_type {
            CursorType::Integer => expect(
                layout.cursor,
                is_int(&types[layout.cursor]),
                "an integer cursor must be smallint, integer or bigint",
            )?,
            CursorType::Timestamp => expect(
                layout.cursor,
                is_time(&types[layout.cursor]),
                "a timestamp cursor must be timestamp or timestamptz",
            )?,
        }
        if let Some(t) = layout.tie {
            expect(
                t,
                is_int(&types[t]),
                "tie_column must be smallint, integer or bigint",
            )?;
        }
        for (k, (_, i)) in layout.values.iter().enumerate() {
            let t = &types[*i];
            let ok = is_int(t) || matches!(*t, Type::FLOAT4 | Type::FLOAT8 | Type::NUMERIC);
            expect(
                *i,
                ok,
                "a value column must be a number (smallint, integer, bigint, real, double precision or numeric)",
            )?;
            if *t == Type::NUMERIC {
                let name = columns.values[k].1;
                columns.cast_to_double.push(name);
            }
        }
        let queries = if columns.cast_to_double.is_empty() {
            plain
        } else {
            query::build(cfg.driver.dialect(), &cfg.table, &columns)
        };
        let first = prepare(queries.first.clone()).await?;
        let next = prepare(queries.next.clone()).await?;
        Ok((
            PgConn {
                client,
                first,
                next,
                task,
            },
            queries.layout,
        ))
    }

    /// Up to `limit` rows after `cursor` (from the start without one).
    pub async fn fetch(
        &self,
        cursor: Option<&Cursor>,
        limit: usize,
    ) -> Result<Vec<Vec<Cell>>, SqlError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = match cursor {
            None => self.client.query(&self.first, &[&limit]).await,
            Some(c) => {
                let types = self.next.params();
                let key = bind(&c.key, types.first())?;
                let mut params: Vec<Box<dyn ToSql + Sync + Send>> = vec![key];
                if let Some(tie) = c.tie {
                    params.push(bind(&CursorValue::Int(tie), types.get(1))?);
                }
                params.push(Box::new(limit));
                let refs: Vec<&(dyn ToSql + Sync)> = params
                    .iter()
                    .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                    .collect();
                self.client.query(&self.next, &refs).await
            }
        }
        .map_err(|e| {
            if e.is_closed() {
                SqlError::Connect(e.to_string())
            } else {
                SqlError::Query(format!("{e}: {}", db_detail(&e)))
            }
        })?;
        Ok(rows.iter().map(cells).collect())
    }
}

/// The database's message, when the error came from the server.
fn db_detail(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default()
}

/// A cursor value as a parameter of the type PostgreSQL inferred for it.
fn bind(v: &CursorValue, ty: Option<&Type>) -> Result<Box<dyn ToSql + Sync + Send>, SqlError> {
    let ty = ty.cloned().unwrap_or(Type::UNKNOWN);
    let out_of_range = || SqlError::Checkpoint(format!("cursor {v:?} does not fit a {ty}"));
    Ok(match (v, &ty) {
        (CursorValue::Int(i), &Type::INT2) => {
            Box::new(i16::try_from(*i).map_err(|_| out_of_range())?)
        }
        (CursorValue::Int(i), &Type::INT4) => {
            Box::new(i32::try_from(*i).map_err(|_| out_of_range())?)
        }
        (CursorValue::Int(i), &Type::INT8) => Box::new(*i),
        (CursorValue::Time(ns), t) if is_time(t) => Box::new(system_time(*ns)),
        _ => {
            return Err(SqlError::Checkpoint(format!(
                "the stored cursor {v:?} does not match the column type {ty} \
                 (did cursor_column or cursor_type change? reset the source's checkpoint)"
            )));
        }
    })
}

fn system_time(ns: i64) -> SystemTime {
    let d = Duration::from_nanos(ns.unsigned_abs());
    if ns >= 0 {
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH - d
    }
}

fn timestamp(t: SystemTime) -> Option<Timestamp> {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).ok().map(Timestamp),
        Err(e) => i64::try_from(e.duration().as_nanos())
            .ok()
            .map(|n| Timestamp(-n)),
    }
}

fn cells(row: &Row) -> Vec<Cell> {
    (0..row.len())
        .map(|i| {
            let ty = row.columns()[i].type_().clone();
            let cell = match ty {
                Type::INT2 => row
                    .try_get::<_, Option<i16>>(i)
                    .map(|v| v.map(|v| Cell::Int(v.into()))),
                Type::INT4 => row
                    .try_get::<_, Option<i32>>(i)
                    .map(|v| v.map(|v| Cell::Int(v.into()))),
                Type::INT8 => row.try_get::<_, Option<i64>>(i).map(|v| v.map(Cell::Int)),
                Type::FLOAT4 => row
                    .try_get::<_, Option<f32>>(i)
                    .map(|v| v.map(|v| Cell::Real(v.into()))),
                Type::FLOAT8 => row.try_get::<_, Option<f64>>(i).map(|v| v.map(Cell::Real)),
                Type::BOOL => row
                    .try_get::<_, Option<bool>>(i)
                    .map(|v| v.map(|b| Cell::Int(i64::from(b)))),
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => row
                    .try_get::<_, Option<String>>(i)
                    .map(|v| v.map(Cell::Text)),
                Type::TIMESTAMP | Type::TIMESTAMPTZ => {
                    row.try_get::<_, Option<SystemTime>>(i).map(|v| {
                        v.map(|t| {
                            timestamp(t).map_or_else(|| Cell::Other("timestamp".into()), Cell::Time)
                        })
                    })
                }
                ref other => return Cell::Other(other.name().to_owned()),
            };
            match cell {
                Ok(Some(c)) => c,
                Ok(None) => Cell::Null,
                // e.g. 'infinity' timestamps.
                Err(_) => Cell::Other(ty.name().to_owned()),
            }
        })
        .collect()
}
