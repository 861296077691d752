//! SQL polling source: new rows of a PostgreSQL or SQLite table, by cursor.
//!
//! - [`config`] — `[[sql]]`, validated with every problem's key.
//! - [`query`] — identifier checks and the two polling queries (values are
//!   always bound parameters: `WHERE cursor > $1 ORDER BY cursor LIMIT $2`).
//! - [`mapping`] — row cells → readings (long or wide form), the cursor and
//!   its checkpoint encoding; no I/O.
//! - [`postgres`] / [`sqlite`] — the drivers.
//!
//! **Exactly once.** Each polled batch becomes one readings envelope carrying
//! the checkpoint `sql:<name>` = the cursor of the batch's last row; the ingest
//! stage stores it in the same atomic outbox write as the readings. On start
//! the cursor is read back with [`Outbox::checkpoint`]. A crash before the
//! commit loses both the readings and the cursor advance (the batch is read
//! again); after it, both are there (the batch is not read again). Rows that
//! cannot be mapped go to quarantine first, in their own envelopes, and the
//! cursor still moves past them.
//!
//! **Bounded.** One batch (at most `batch_size` rows) in flight per source:
//! the next query runs only after the previous batch's commit. A full batch
//! is followed by the next poll at once; otherwise the source waits
//! `poll_interval`. Connection and query errors drop the connection and retry
//! with exponential backoff and jitter.

pub mod config;
pub mod mapping;
pub mod postgres;
pub mod query;
pub mod sqlite;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use protocol::{DecodeError, Timestamp};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

pub use config::SqlSourceConfig;

use self::config::SqlDriver;
use self::mapping::{Cell, Cursor, CursorError, Mapper};
use self::query::Queries;
use crate::backoff::Backoff;
use crate::envelope::{Commit, Content, Envelope};
use crate::metrics::Metrics;
use crate::outbox::Outbox;

/// Metric label: the source's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct SourceLabel {
    pub source: String,
}

/// Metric label: the source's name and an error kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct SourceKindLabel {
    pub source: String,
    pub kind: &'static str,
}

impl Metrics {
    fn sql_rows(&self, source: &str, n: u64) {
        self.sql_rows
            .get_or_create(&SourceLabel {
                source: source.to_owned(),
            })
            .inc_by(n);
    }

    fn sql_error(&self, source: &str, kind: &'static str) {
        self.sql_errors
            .get_or_create(&SourceKindLabel {
                source: source.to_owned(),
                kind,
            })
            .inc();
    }
}

/// Why an SQL source stopped for good (everything else is retried).
#[derive(Debug, thiserror::Error)]
pub enum SqlSourceError {
    #[error("sql source {name}: cannot read its checkpoint: {detail}")]
    Checkpoint { name: String, detail: String },
}

/// A failed poll; the source logs it, backs off and reconnects.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("query failed: {0}")]
    Query(String),
    #[error("the table does not fit the config: {0}")]
    Schema(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error(transparent)]
    Cursor(#[from] CursorError),
}

impl SqlError {
    fn kind(&self) -> &'static str {
        match self {
            SqlError::Connect(_) => "connect",
            SqlError::Query(_) => "query",
            SqlError::Schema(_) => "schema",
            SqlError::Timeout(_) => "timeout",
            SqlError::Checkpoint(_) => "checkpoint",
            SqlError::Cursor(_) => "cursor",
        }
    }
}

/// An open connection and what it needs to map its rows.
#[derive(Debug)]
enum Conn {
    Postgres(postgres::PgConn, Mapper),
    /// The connection is moved into each blocking call and back; `None` only
    /// after a call that did not return it (timeout).
    Sqlite(Option<rusqlite::Connection>, Arc<Queries>, Mapper),
}

impl Conn {
    fn mapper(&self) -> &Mapper {
        match self {
            Conn::Postgres(_, m) | Conn::Sqlite(_, _, m) => m,
        }
    }
}

#[derive(Debug)]
pub struct SqlSource {
    cfg: SqlSourceConfig,
    outbox: Arc<Outbox>,
    metrics: Metrics,
    origin: String,
}

/// How handing one batch to ingest ended.
#[derive(Debug)]
pub(crate) enum Delivery {
    Durable,
    Failed(String),
    Shutdown,
}

impl SqlSource {
    pub fn new(cfg: SqlSourceConfig, outbox: Arc<Outbox>, metrics: Metrics) -> Self {
        let origin = cfg.checkpoint_key();
        SqlSource {
            cfg,
            outbox,
            metrics,
            origin,
        }
    }

    /// Polls until `shutdown` turns true. Fails only when the stored
    /// checkpoint cannot be read (a guess could skip or repeat rows).
    pub async fn run(
        self,
        tx: mpsc::Sender<Envelope>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), SqlSourceError> {
        let name = self.cfg.name.clone();
        let mut cursor = load_checkpoint(&self.outbox, &self.cfg.checkpoint_key())
            .await
            .map_err(|detail| {
                error!(source = %name, %detail, "SQL source cannot read its checkpoint; it stays stopped.");
                SqlSourceError::Checkpoint {
                    name: name.clone(),
                    detail,
                }
            })?
            .map(|b| Cursor::decode(&b))
            .transpose()
            .map_err(|detail| {
                error!(source = %name, %detail, "SQL source checkpoint is unreadable; it stays stopped.");
                SqlSourceError::Checkpoint {
                    name: name.clone(),
                    detail,
                }
            })?;
        info!(source = %name, driver = ?self.cfg.driver, table = %self.cfg.table, cursor = ?cursor, "SQL source starting.");
        let mut backoff = Backoff::new(self.cfg.backoff_min, self.cfg.backoff_max);
        let mut conn: Option<Conn> = None;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let polled = self.poll(&mut conn, cursor.as_ref()).await;
            let rows = match polled {
                Ok(rows) => rows,
                Err(e) => {
                    conn = None;
                    self.metrics.sql_error(&name, e.kind());
                    let delay = backoff.next_delay();
                    if matches!(
                        e,
                        SqlError::Schema(_) | SqlError::Checkpoint(_) | SqlError::Cursor(_)
                    ) {
                        error!(source = %name, error = %e, retry_in = ?delay, "SQL source cannot go on until this is fixed.");
                    } else {
                        warn!(source = %name, error = %e, retry_in = ?delay, attempt = backoff.attempts(), "SQL poll failed; reconnecting after a pause.");
                    }
                    if sleep_or_shutdown(delay, &mut shutdown).await {
                        break;
                    }
                    continue;
                }
            };
            let full = rows.len() >= self.cfg.batch_size;
            if !rows.is_empty() {
                let Some(mapper) = conn.as_ref().map(|c| c.mapper().clone()) else {
                    continue;
                };
                match self.hand_over(rows, &mapper, &tx, &mut shutdown).await {
                    Ok((Delivery::Durable, last)) => {
                        backoff.reset();
                        debug!(source = %name, cursor = ?last, "SQL batch durable.");
                        cursor = Some(last);
                    }
                    Ok((Delivery::Shutdown, _)) => break,
                    Ok((Delivery::Failed(reason), _)) => {
                        let delay = backoff.next_delay();
                        warn!(source = %name, %reason, retry_in = ?delay, "SQL batch not stored; reading it again after a pause.");
                        if sleep_or_shutdown(delay, &mut shutdown).await {
                            break;
                        }
                        continue;
                    }
                    Err(e) => {
                        self.metrics.sql_error(&name, e.kind());
                        let delay = backoff.next_delay();
                        error!(source = %name, error = %e, retry_in = ?delay, "SQL source cannot move past a row.");
                        if sleep_or_shutdown(delay, &mut shutdown).await {
                            break;
                        }
                        continue;
                    }
                }
            } else {
                backoff.reset();
            }
            if !full && sleep_or_shutdown(self.cfg.poll_interval, &mut shutdown).await {
                break;
            }
        }
        info!(source = %name, "SQL source stopped.");
        Ok(())
    }

    /// Connects when needed, then reads the next batch.
    async fn poll(
        &self,
        conn: &mut Option<Conn>,
        cursor: Option<&Cursor>,
    ) -> Result<Vec<Vec<Cell>>, SqlError> {
        let timeout = self.cfg.query_timeout;
        if conn.is_none() {
            *conn = Some(self.connect().await?);
            info!(source = %self.cfg.name, "SQL source connected.");
        }
        let limit = self.cfg.batch_size;
        let rows = match conn {
            Some(Conn::Postgres(pg, _)) => tokio::time::timeout(timeout, pg.fetch(cursor, limit))
                .await
                .map_err(|_| SqlError::Timeout(timeout))??,
            Some(Conn::Sqlite(slot, queries, _)) => {
                let Some(c) = slot.take() else {
                    return Err(SqlError::Connect("connection lost".into()));
                };
                let interrupt = c.get_interrupt_handle();
                let queries = queries.clone();
                let cursor = cursor.cloned();
                let task = tokio::task::spawn_blocking(move || {
                    let r = sqlite::fetch(&c, &queries, cursor.as_ref(), limit);
                    (c, r)
                });
                match tokio::time::timeout(timeout, task).await {
                    Err(_) => {
                        interrupt.interrupt();
                        return Err(SqlError::Timeout(timeout));
                    }
                    Ok(Err(e)) => return Err(SqlError::Query(format!("query task: {e}"))),
                    Ok(Ok((c, r))) => {
                        *slot = Some(c);
                        r?
                    }
                }
            }
            None => return Err(SqlError::Connect("not connected".into())),
        };
        self.metrics.sql_rows(&self.cfg.name, rows.len() as u64);
        Ok(rows)
    }

    async fn connect(&self) -> Result<Conn, SqlError> {
        let timeout = self.cfg.query_timeout;
        match self.cfg.driver {
            SqlDriver::Postgres => {
                let (pg, layout) =
                    tokio::time::timeout(timeout, postgres::PgConn::connect(&self.cfg))
                        .await
                        .map_err(|_| SqlError::Timeout(timeout))??;
                Ok(Conn::Postgres(pg, Mapper::new(&self.cfg, layout)))
            }
            SqlDriver::Sqlite => {
                let queries = Arc::new(query::build(
                    query::Dialect::Sqlite,
                    &self.cfg.table,
                    &self.cfg.columns(),
                ));
                let path = PathBuf::from(&self.cfg.url);
                let q = queries.clone();
                let c = tokio::task::spawn_blocking(move || sqlite::open(&path, timeout, &q))
                    .await
                    .map_err(|e| SqlError::Connect(format!("open task: {e}")))??;
                let mapper = Mapper::new(&self.cfg, queries.layout.clone());
                Ok(Conn::Sqlite(Some(c), queries, mapper))
            }
        }
    }

    /// Maps a batch, sends its rejects and then its readings with the
    /// checkpoint, and waits for the commit. Returns the batch's last cursor.
    async fn hand_over(
        &self,
        rows: Vec<Vec<Cell>>,
        mapper: &Mapper,
        tx: &mpsc::Sender<Envelope>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(Delivery, Cursor), SqlError> {
        // Every row's cursor first: the batch ends before the first row whose
        // position cannot be read (that row is reported, not skipped).
        let mut cursors = Vec::with_capacity(rows.len());
        for row in &rows {
            match mapper.cursor(row) {
                Ok(c) => cursors.push(c),
                Err(e) if cursors.is_empty() => return Err(e.into()),
                Err(e) => {
                    warn!(source = %self.cfg.name, error = %e, "Batch cut before a row whose cursor cannot be read.");
                    break;
                }
            }
        }
        let Some(last) = cursors.last().cloned() else {
            return Err(SqlError::Query("empty batch".into()));
        };
        let received = Timestamp::now();
        let mut readings = Vec::new();
        let mut envelopes = Vec::new();
        for (i, row) in rows.iter().take(cursors.len()).enumerate() {
            match mapper.map_row(i, row) {
                Ok(r) => readings.extend(r),
                Err(error) => {
                    debug!(source = %self.cfg.name, %error, cursor = ?cursors[i], "Row quarantined.");
                    envelopes.push(self.reject(received, error, mapper.row_json(row)));
                }
            }
        }
        self.metrics.messages_received.inc();
        self.metrics.readings_received.inc_by(readings.len() as u64);
        let (env, rx) = Envelope::new(self.origin.clone(), received, Content::Readings(readings));
        envelopes.push((
            env.with_checkpoint(self.cfg.checkpoint_key(), last.encode()),
            rx,
        ));
        Ok((deliver(tx, envelopes, shutdown).await, last))
    }

    fn reject(
        &self,
        received: Timestamp,
        error: DecodeError,
        payload: Vec<u8>,
    ) -> (Envelope, oneshot::Receiver<Commit>) {
        let payload_len = payload.len();
        Envelope::new(
            self.origin.clone(),
            received,
            Content::Rejected {
                error,
                payload,
                payload_len,
            },
        )
    }
}

/// Sends `envelopes` in order (the last one carries the checkpoint) and waits
/// for every commit. The result is the last envelope's: it decides whether
/// the cursor advanced.
pub(crate) async fn deliver(
    tx: &mpsc::Sender<Envelope>,
    envelopes: Vec<(Envelope, oneshot::Receiver<Commit>)>,
    shutdown: &mut watch::Receiver<bool>,
) -> Delivery {
    let mut waiting = Vec::with_capacity(envelopes.len());
    for (env, rx) in envelopes {
        if *shutdown.borrow() {
            return Delivery::Shutdown;
        }
        tokio::select! {
            sent = tx.send(env) => {
                if sent.is_err() {
                    return Delivery::Failed("the ingest stage is gone".into());
                }
            }
            _ = shutdown.changed() => return Delivery::Shutdown,
        }
        waiting.push(rx);
    }
    // Ingest resolves every envelope it took (it drains its queue on
    // shutdown), so these waits end.
    let mut last = Delivery::Failed("nothing sent".into());
    let n = waiting.len();
    for (i, rx) in waiting.into_iter().enumerate() {
        let r = match rx.await {
            Ok(Commit::Durable) => Delivery::Durable,
            Ok(Commit::Failed(reason)) => Delivery::Failed(reason),
            Err(_) => Delivery::Failed("the ingest stage dropped the envelope".into()),
        };
        if i + 1 < n
            && let Delivery::Failed(reason) = &r
        {
            warn!(%reason, "A quarantine entry was not stored.");
        }
        last = r;
    }
    last
}

/// The stored checkpoint under `key` (read on a blocking thread).
pub(crate) async fn load_checkpoint(
    outbox: &Arc<Outbox>,
    key: &str,
) -> Result<Option<Vec<u8>>, String> {
    let outbox = outbox.clone();
    let key = key.to_owned();
    tokio::task::spawn_blocking(move || outbox.checkpoint(&key))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

/// Sleeps `d`; true when shutdown was requested meanwhile.
pub(crate) async fn sleep_or_shutdown(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    if *shutdown.borrow() {
        return true;
    }
    tokio::select! {
        () = tokio::time::sleep(d) => *shutdown.borrow(),
        r = shutdown.changed() => r.is_err() || *shutdown.borrow(),
    }
}
