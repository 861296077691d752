//! SQLite storage: one file, zero set-up.
//!
//! - WAL journal, so queries do not block ingest.
//! - `synchronous = FULL`: the sink answers 200 only after COMMIT, and the
//!   gateway then deletes the batch. With WAL, `NORMAL` skips the fsync at
//!   commit and can lose the last transactions on power loss — a batch the
//!   sink confirmed would be gone from both sides. `FULL` syncs the WAL on every
//!   commit; one batch is one transaction, so that is one fsync per batch.
//! - Two connections: one for writes, one for reads, each behind a mutex.
//! - Readings are keyed by their identity `(device, channel, ts_ns)`;
//!   `INSERT OR IGNORE` makes a re-sent batch or reading a counted no-op.
//!   `(gateway, outbox_epoch, seq)` is indexed but not unique: a reused
//!   sequence number (a gateway bug) is counted as a conflict and the reading
//!   is still stored — an alarm must never cost data.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use protocol::{Reading, Timestamp, UplinkBatch};
use rusqlite::{Connection, OptionalExtension, ToSql, TransactionBehavior, params};

use super::{
    Activity, AlertId, AlertLabel, AlertQuery, AlertSpan, GatewayStats, IngestOutcome,
    QuarantineQuery, ReadingQuery, Storage, StorageError, StoredAlert, StoredQuarantine,
    StoredReading, Totals,
};
use crate::auth::TokenHash;

/// The schema version this code creates and reads (`PRAGMA user_version`).
/// 2 added the `alerts` and `quarantine` tables (created on open of a
/// version-1 database). 3 added the `alert_labels` table (operator verdicts)
/// and the `readings_received` index (what arrived since when, for the
/// training scheduler); opening a version-2 database builds the index once.
const SCHEMA_VERSION: i64 = 3;

/// The schema of versions 1 and 2. Never edit it: a later version adds its
/// own statements ([`SCHEMA_V3`]), and the migration tests build a
/// version-2 database from this text.
const SCHEMA_V2: &str = "
CREATE TABLE IF NOT EXISTS gateways (
    name            TEXT PRIMARY KEY NOT NULL,
    token_sha256    BLOB NOT NULL UNIQUE,
    created_ns      INTEGER NOT NULL,
    last_seen_ns    INTEGER,
    batches         INTEGER NOT NULL DEFAULT 0,
    readings_stored INTEGER NOT NULL DEFAULT 0,
    duplicates      INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS readings (
    device      TEXT NOT NULL,
    channel     TEXT NOT NULL,
    ts_ns       INTEGER NOT NULL,
    value       REAL NOT NULL,
    unit        TEXT,
    sensor_seq  INTEGER,
    quality     INTEGER NOT NULL,
    gateway     TEXT NOT NULL,
    outbox_epoch INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    received_ns INTEGER NOT NULL,
    PRIMARY KEY (device, channel, ts_ns)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS readings_gateway_seq ON readings (gateway, outbox_epoch, seq);
CREATE TABLE IF NOT EXISTS alerts (
    gateway       TEXT NOT NULL,
    outbox_epoch  INTEGER NOT NULL,
    seq           INTEGER NOT NULL,
    device        TEXT NOT NULL,
    start_ns      INTEGER NOT NULL,
    end_ns        INTEGER NOT NULL,
    score         REAL NOT NULL,
    threshold     REAL NOT NULL,
    model         TEXT NOT NULL,
    model_version INTEGER NOT NULL,
    channels      TEXT NOT NULL,
    raised_ns     INTEGER NOT NULL,
    received_ns   INTEGER NOT NULL,
    PRIMARY KEY (gateway, outbox_epoch, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS alerts_start ON alerts (start_ns, device);
CREATE TABLE IF NOT EXISTS quarantine (
    gateway      TEXT NOT NULL,
    outbox_epoch INTEGER NOT NULL,
    seq          INTEGER NOT NULL,
    received_ns  INTEGER NOT NULL,
    origin       TEXT NOT NULL,
    reason       TEXT NOT NULL,
    detail       TEXT NOT NULL,
    payload      BLOB NOT NULL,
    payload_len  INTEGER NOT NULL,
    stored_ns    INTEGER NOT NULL,
    PRIMARY KEY (gateway, outbox_epoch, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS quarantine_received ON quarantine (received_ns);
";

/// Added by version 3. `alert_labels` is keyed like `alerts`; only the
/// latest verdict per alert is kept. The `readings_received` index lets
/// "readings received since T" count only the new rows (it covers `device`
/// too: a WITHOUT ROWID table's index holds the primary key).
const SCHEMA_V3: &str = "
CREATE TABLE IF NOT EXISTS alert_labels (
    gateway      TEXT NOT NULL,
    outbox_epoch INTEGER NOT NULL,
    seq          INTEGER NOT NULL,
    true_alarm   INTEGER NOT NULL CHECK (true_alarm IN (0, 1)),
    labelled_by  TEXT NOT NULL,
    labelled_ns  INTEGER NOT NULL,
    PRIMARY KEY (gateway, outbox_epoch, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS alert_labels_time ON alert_labels (labelled_ns);
CREATE INDEX IF NOT EXISTS readings_received ON readings (received_ns);
";

/// Columns of an alert row joined with its label (see [`alert_from_row`]).
const ALERT_COLUMNS: &str = "a.gateway, a.device, a.start_ns, a.end_ns, a.score, a.threshold,
    a.model, a.model_version, a.channels, a.raised_ns, a.seq, a.outbox_epoch,
    l.true_alarm, l.labelled_by, l.labelled_ns
  FROM alerts a LEFT JOIN alert_labels l
    ON l.gateway = a.gateway AND l.outbox_epoch = a.outbox_epoch AND l.seq = a.seq";

fn alert_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredAlert> {
    let gateway: String = row.get(0)?;
    let channels: String = row.get(8)?;
    let seq = sql_to_u64(row.get(10)?);
    let epoch = sql_to_u64(row.get(11)?);
    let label = match row.get::<_, Option<bool>>(12)? {
        Some(true_alarm) => Some(AlertLabel {
            true_alarm,
            by: row.get(13)?,
            labelled_ns: row.get(14)?,
        }),
        None => None,
    };
    Ok(StoredAlert {
        id: AlertId {
            gateway: gateway.clone(),
            outbox_epoch: epoch,
            seq,
        }
        .to_string(),
        gateway,
        device: row.get(1)?,
        start_ns: row.get(2)?,
        end_ns: row.get(3)?,
        score: row.get(4)?,
        threshold: row.get(5)?,
        model: row.get(6)?,
        model_version: sql_to_u64(row.get(7)?),
        // Written by this program from a typed list; unreadable only
        // if edited by hand, and then shown empty rather than failing.
        channels: serde_json::from_str(&channels).unwrap_or_default(),
        raised_ns: row.get(9)?,
        seq,
        label,
    })
}

/// A device list as the JSON array the queries read with `json_each`
/// (`None`: every device).
fn devices_json(devices: Option<&[String]>) -> Option<String> {
    devices.map(|d| serde_json::Value::from(d.to_vec()).to_string())
}

/// SQLite INTEGER is i64; sequence numbers are u64. Store the bit pattern so
/// every u64 round-trips and stays unique.
/// Readings per multi-row INSERT: 64 × 11 parameters stays far below
/// SQLite's bound-parameter limit (32766).
const INSERT_CHUNK: usize = 64;
const INSERT_COLUMNS: usize = 11;

/// `INSERT OR IGNORE ... VALUES (?,..), (?,..)` for `rows` readings.
fn insert_sql(rows: usize) -> String {
    let row = format!("({})", ["?"; INSERT_COLUMNS].join(", "));
    format!(
        "INSERT OR IGNORE INTO readings
           (device, channel, ts_ns, value, unit, sensor_seq, quality, gateway, outbox_epoch, seq, received_ns)
         VALUES {}",
        vec![row; rows].join(", ")
    )
}

fn u64_to_sql(v: u64) -> i64 {
    i64::from_ne_bytes(v.to_ne_bytes())
}
fn sql_to_u64(v: i64) -> u64 {
    u64::from_ne_bytes(v.to_ne_bytes())
}
/// Counters are never negative; clamp defensively instead of wrapping.
fn count(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// SQLite-backed [`Storage`].
#[derive(Debug)]
pub struct SqliteStorage {
    path: PathBuf,
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
}

impl SqliteStorage {
    /// Opens (creating when missing) the database at `path` and migrates it.
    pub fn open(path: &Path, busy_timeout: Duration) -> Result<Self, StorageError> {
        let writer = Connection::open(path)?;
        configure(&writer, busy_timeout)?;
        migrate(&writer)?;
        let reader = Connection::open(path)?;
        configure(&reader, busy_timeout)?;
        Ok(SqliteStorage {
            path: path.to_owned(),
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn writer(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves the connection usable: an open
        // transaction is rolled back when its guard drops during unwinding.
        self.writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn reader(&self) -> MutexGuard<'_, Connection> {
        self.reader
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn configure(conn: &Connection, busy_timeout: Duration) -> Result<(), StorageError> {
    conn.busy_timeout(busy_timeout)?;
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StorageError::NotWal(mode));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(())
}

fn migrate(conn: &Connection) -> Result<(), StorageError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StorageError::SchemaTooNew {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    // Every statement is idempotent (IF NOT EXISTS), so running all of them
    // migrates any older version; one transaction makes it all or nothing.
    conn.execute_batch(&format!("BEGIN; {SCHEMA_V2} {SCHEMA_V3} COMMIT;"))?;
    if version < SCHEMA_VERSION {
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    }
    Ok(())
}

impl Storage for SqliteStorage {
    fn add_gateway(&self, name: &str, token_hash: &TokenHash) -> Result<(), StorageError> {
        let conn = self.writer();
        let result = conn.execute(
            "INSERT INTO gateways (name, token_sha256, created_ns) VALUES (?1, ?2, ?3)",
            params![name, token_hash.as_slice(), Timestamp::now().as_nanos()],
        );
        match result {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(StorageError::GatewayExists(name.to_owned()))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn gateway_for_token(&self, token_hash: &TokenHash) -> Result<Option<String>, StorageError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached("SELECT name FROM gateways WHERE token_sha256 = ?1")?;
        Ok(stmt
            .query_row(params![token_hash.as_slice()], |row| row.get(0))
            .optional()?)
    }

    fn ingest(&self, gateway: &str, batch: &UplinkBatch) -> Result<IngestOutcome, StorageError> {
        let now = Timestamp::now().as_nanos();
        let mut conn = self.writer();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut outcome = IngestOutcome::default();
        {
            // Sequence-number reuse is counted per batch, not per reading: rows
            // sharing a seq in this batch's range, before and after the insert.
            // One indexed range scan each. Seqs are stored as i64 bit patterns,
            // so a batch whose range crosses 2^63 is split in two.
            let (lo, hi) = (u64_to_sql(batch.first_seq), u64_to_sql(batch.last_seq));
            let ranges: &[(i64, i64)] = if lo <= hi {
                &[(lo, hi)]
            } else {
                &[(lo, i64::MAX), (i64::MIN, hi)]
            };
            let epoch = u64_to_sql(batch.outbox_epoch);
            let mut extra_rows = tx.prepare_cached(
                "SELECT COUNT(*) - COUNT(DISTINCT seq) FROM readings
                 WHERE gateway = ?1 AND outbox_epoch = ?2 AND seq BETWEEN ?3 AND ?4",
            )?;
            let mut count_extra = || -> rusqlite::Result<i64> {
                let mut total = 0;
                for &(from, to) in ranges {
                    total += extra_rows.query_row(params![gateway, epoch, from, to], |row| {
                        row.get::<_, i64>(0)
                    })?;
                }
                Ok(total)
            };
            let extra_before = count_extra()?;
            // Multi-row INSERTs: one statement per INSERT_CHUNK readings costs far
            // less than one per reading. `changes()` tells how many were new.
            let readings: Vec<(u64, &Reading)> = batch.readings().collect();
            for chunk in readings.chunks(INSERT_CHUNK) {
                let mut insert = tx.prepare_cached(&insert_sql(chunk.len()))?;
                let mut values: Vec<&dyn ToSql> = Vec::with_capacity(chunk.len() * INSERT_COLUMNS);
                let extra: Vec<[i64; 3]> = chunk
                    .iter()
                    .map(|(seq, r)| {
                        [
                            r.ts.as_nanos(),
                            u64_to_sql(batch.outbox_epoch),
                            u64_to_sql(*seq),
                        ]
                    })
                    .collect();
                let sensor_seqs: Vec<Option<i64>> =
                    chunk.iter().map(|(_, r)| r.seq.map(u64_to_sql)).collect();
                let qualities: Vec<u16> = chunk.iter().map(|(_, r)| r.quality.bits()).collect();
                for (i, (_, r)) in chunk.iter().enumerate() {
                    values.extend_from_slice(&[
                        &r.device as &dyn ToSql,
                        &r.channel,
                        &extra[i][0],
                        &r.value,
                        &r.unit,
                        &sensor_seqs[i],
                        &qualities[i],
                        &gateway,
                        &extra[i][1],
                        &extra[i][2],
                        &now,
                    ]);
                }
                let changed = insert.execute(values.as_slice())? as u64;
                outcome.stored += changed;
                outcome.duplicates += chunk.len() as u64 - changed;
            }
            // Alerts are keyed by where they came from: a batch sent twice
            // stores each once.
            let mut insert_alert = tx.prepare_cached(
                "INSERT OR IGNORE INTO alerts
                   (gateway, outbox_epoch, seq, device, start_ns, end_ns, score, threshold,
                    model, model_version, channels, raised_ns, received_ns)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )?;
            for (seq, a) in batch.alerts() {
                let channels = serde_json::to_string(&a.channels).unwrap_or_else(|_| "[]".into());
                outcome.alerts += insert_alert.execute(params![
                    gateway,
                    u64_to_sql(batch.outbox_epoch),
                    u64_to_sql(seq),
                    a.device,
                    a.start.as_nanos(),
                    a.end.as_nanos(),
                    a.score,
                    a.threshold,
                    a.model,
                    u64_to_sql(a.model_version),
                    channels,
                    a.raised.as_nanos(),
                    now
                ])? as u64;
            }
            let mut insert_quarantine = tx.prepare_cached(
                "INSERT OR IGNORE INTO quarantine
                   (gateway, outbox_epoch, seq, received_ns, origin, reason, detail,
                    payload, payload_len, stored_ns)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?;
            for (seq, q) in batch.quarantine_reports() {
                outcome.quarantined += insert_quarantine.execute(params![
                    gateway,
                    u64_to_sql(batch.outbox_epoch),
                    u64_to_sql(seq),
                    q.received.as_nanos(),
                    q.origin,
                    q.reason,
                    q.detail,
                    q.payload,
                    u64_to_sql(q.payload_len),
                    now
                ])? as u64;
            }
            // A stored reading whose (gateway, epoch, seq) another reading
            // already has means the gateway reused a sequence number: an alarm,
            // never a reason to drop data.
            let extra_after = count_extra()?;
            outcome.seq_conflicts = u64::try_from(extra_after - extra_before).unwrap_or(0);
            let updated = tx.execute(
                "UPDATE gateways SET batches = batches + 1,
                        readings_stored = readings_stored + ?2,
                        duplicates = duplicates + ?3,
                        last_seen_ns = ?4
                 WHERE name = ?1",
                params![
                    gateway,
                    i64::try_from(outcome.stored).unwrap_or(i64::MAX),
                    i64::try_from(outcome.duplicates).unwrap_or(i64::MAX),
                    now
                ],
            )?;
            if updated != 1 {
                return Err(StorageError::UnknownGateway(gateway.to_owned()));
            }
        }
        tx.commit()?;
        Ok(outcome)
    }

    fn query_alerts(&self, q: &AlertQuery) -> Result<Vec<StoredAlert>, StorageError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {ALERT_COLUMNS}
              WHERE (?1 IS NULL OR a.device = ?1)
                AND (?2 IS NULL OR a.start_ns >= ?2)
                AND (?3 IS NULL OR a.start_ns < ?3)
              ORDER BY a.start_ns, a.device
              LIMIT ?4"
        ))?;
        let rows = stmt.query_map(
            params![q.device, q.from_ns, q.to_ns, q.limit],
            alert_from_row,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn label_alert(
        &self,
        id: &AlertId,
        label: &AlertLabel,
    ) -> Result<Option<StoredAlert>, StorageError> {
        let key = params![id.gateway, u64_to_sql(id.outbox_epoch), u64_to_sql(id.seq)];
        let mut conn = self.writer();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let alert = {
            let mut select = tx.prepare_cached(&format!(
                "SELECT {ALERT_COLUMNS} WHERE a.gateway = ?1 AND a.outbox_epoch = ?2 AND a.seq = ?3"
            ))?;
            let Some(mut alert) = select.query_row(key, alert_from_row).optional()? else {
                return Ok(None);
            };
            tx.execute(
                "INSERT INTO alert_labels (gateway, outbox_epoch, seq, true_alarm, labelled_by, labelled_ns)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (gateway, outbox_epoch, seq) DO UPDATE SET
                   true_alarm = excluded.true_alarm,
                   labelled_by = excluded.labelled_by,
                   labelled_ns = excluded.labelled_ns",
                params![
                    id.gateway,
                    u64_to_sql(id.outbox_epoch),
                    u64_to_sql(id.seq),
                    label.true_alarm,
                    label.by,
                    label.labelled_ns
                ],
            )?;
            alert.label = Some(label.clone());
            alert
        };
        tx.commit()?;
        Ok(Some(alert))
    }

    fn alert_spans(
        &self,
        devices: Option<&[String]>,
        from_ns: Option<i64>,
        to_ns: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AlertSpan>, StorageError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT a.device, a.start_ns, a.end_ns, l.true_alarm
               FROM alerts a LEFT JOIN alert_labels l
                 ON l.gateway = a.gateway AND l.outbox_epoch = a.outbox_epoch AND l.seq = a.seq
              WHERE (?1 IS NULL OR a.device IN (SELECT value FROM json_each(?1)))
                AND (?2 IS NULL OR a.end_ns >= ?2)
                AND (?3 IS NULL OR a.start_ns < ?3)
              ORDER BY a.device, a.start_ns
              LIMIT ?4",
        )?;
        let rows = stmt.query_map(
            params![devices_json(devices), from_ns, to_ns, limit],
            |row| {
                Ok(AlertSpan {
                    device: row.get(0)?,
                    start_ns: row.get(1)?,
                    end_ns: row.get(2)?,
                    true_alarm: row.get(3)?,
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn new_activity(
        &self,
        devices: Option<&[String]>,
        since_ns: i64,
        cap: u64,
    ) -> Result<Activity, StorageError> {
        let conn = self.reader();
        let cap = i64::try_from(cap).unwrap_or(i64::MAX);
        let devices = devices_json(devices);
        // The inner LIMIT bounds the rows visited; `readings_received` and
        // `alert_labels_time` make those rows the new ones only.
        let readings: i64 = conn
            .prepare_cached(
                "SELECT COUNT(*) FROM (
                   SELECT 1 FROM readings INDEXED BY readings_received
                    WHERE received_ns >= ?1
                      AND (?2 IS NULL OR device IN (SELECT value FROM json_each(?2)))
                    LIMIT ?3)",
            )?
            .query_row(params![since_ns, devices, cap], |row| row.get(0))?;
        let labels: i64 = conn
            .prepare_cached(
                "SELECT COUNT(*) FROM (
                   SELECT 1 FROM alert_labels l JOIN alerts a
                     ON a.gateway = l.gateway AND a.outbox_epoch = l.outbox_epoch AND a.seq = l.seq
                    WHERE l.labelled_ns >= ?1
                      AND (?2 IS NULL OR a.device IN (SELECT value FROM json_each(?2)))
                    LIMIT ?3)",
            )?
            .query_row(params![since_ns, devices, cap], |row| row.get(0))?;
        Ok(Activity {
            readings: count(readings),
            labels: count(labels),
        })
    }

    fn query_quarantine(&self, q: &QuarantineQuery) -> Result<Vec<StoredQuarantine>, StorageError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT gateway, received_ns, origin, reason, detail, payload, payload_len, seq
               FROM quarantine
              WHERE (?1 IS NULL OR gateway = ?1)
                AND (?2 IS NULL OR reason = ?2)
              ORDER BY received_ns DESC
              LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![q.gateway, q.reason, q.limit], |row| {
            let payload: Vec<u8> = row.get(5)?;
            Ok(StoredQuarantine {
                gateway: row.get(0)?,
                received_ns: row.get(1)?,
                origin: row.get(2)?,
                reason: row.get(3)?,
                detail: row.get(4)?,
                payload: String::from_utf8_lossy(&payload).into_owned(),
                payload_len: sql_to_u64(row.get(6)?),
                seq: sql_to_u64(row.get(7)?),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn query_readings(&self, q: &ReadingQuery) -> Result<Vec<StoredReading>, StorageError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT device, channel, ts_ns, value, unit, sensor_seq, quality, gateway, seq
               FROM readings
              WHERE (?1 IS NULL OR device = ?1)
                AND (?2 IS NULL OR channel = ?2)
                AND (?3 IS NULL OR ts_ns >= ?3)
                AND (?4 IS NULL OR ts_ns < ?4)
              ORDER BY ts_ns, device, channel
              LIMIT ?5",
        )?;
        let rows = stmt.query_map(
            params![q.device, q.channel, q.from_ns, q.to_ns, q.limit],
            |row| {
                Ok(StoredReading {
                    device: row.get(0)?,
                    channel: row.get(1)?,
                    ts_ns: row.get(2)?,
                    value: row.get(3)?,
                    unit: row.get(4)?,
                    sensor_seq: row.get::<_, Option<i64>>(5)?.map(sql_to_u64),
                    quality: row.get(6)?,
                    gateway: row.get(7)?,
                    seq: sql_to_u64(row.get(8)?),
                })
            },
        )?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn gateways(&self) -> Result<Vec<GatewayStats>, StorageError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT name, created_ns, last_seen_ns, batches, readings_stored, duplicates
               FROM gateways ORDER BY name",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok(GatewayStats {
                name: row.get(0)?,
                created_ns: row.get(1)?,
                last_seen_ns: row.get(2)?,
                batches: count(row.get(3)?),
                readings_stored: count(row.get(4)?),
                duplicates: count(row.get(5)?),
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn totals(&self) -> Result<Totals, StorageError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT COUNT(*), COALESCE(SUM(batches), 0), COALESCE(SUM(readings_stored), 0),
                    COALESCE(SUM(duplicates), 0)
               FROM gateways",
        )?;
        Ok(stmt.query_row([], |row| {
            Ok(Totals {
                gateways: count(row.get(0)?),
                batches: count(row.get(1)?),
                readings_stored: count(row.get(2)?),
                duplicates: count(row.get(3)?),
            })
        })?)
    }

    fn ping(&self) -> Result<(), StorageError> {
        let conn = self.reader();
        conn.query_row("SELECT COUNT(*) FROM gateways", [], |row| {
            row.get::<_, i64>(0)
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::hash_token;
    use protocol::Reading;
    use protocol::batch::{OutboxItem, OutboxRecord};

    fn batch(gateway: &str, seqs: std::ops::RangeInclusive<u64>, ts_offset: i64) -> UplinkBatch {
        let records = seqs
            .map(|seq| OutboxRecord {
                seq,
                item: OutboxItem::Reading(
                    Reading::new(
                        "dev-1",
                        "temp",
                        Timestamp(seq as i64 + ts_offset),
                        seq as f64,
                    )
                    .unwrap(),
                ),
            })
            .collect();
        UplinkBatch::new(gateway, records).unwrap()
    }

    /// An edge alert of `device` from `start_s` for 30 s, with one
    /// contributing channel.
    fn alert(device: &str, start_s: i64) -> protocol::alert::Alert {
        protocol::alert::Alert {
            device: device.into(),
            start: Timestamp(start_s * 1_000_000_000),
            end: Timestamp((start_s + 30) * 1_000_000_000),
            score: 12.5,
            threshold: 8.0,
            model: "fallback".into(),
            model_version: 0,
            channels: vec![protocol::alert::Contribution {
                channel: "current".into(),
                z: 12.5,
            }],
            raised: Timestamp(1),
        }
    }

    fn open() -> (tempfile::TempDir, SqliteStorage) {
        let dir = tempfile::tempdir().unwrap();
        let storage =
            SqliteStorage::open(&dir.path().join("sink.db"), Duration::from_secs(1)).unwrap();
        storage.add_gateway("gw", &hash_token("t")).unwrap();
        (dir, storage)
    }

    #[test]
    fn opening_sets_wal_and_full_synchronous() {
        let (_dir, storage) = open();
        let conn = storage.writer();
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        let sync: i64 = conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(sync, 2, "FULL is 2");
    }

    #[test]
    fn a_batch_stored_twice_is_stored_once_and_counted_as_duplicates() {
        let (_dir, storage) = open();
        let b = batch("gw", 1..=5, 0);
        assert_eq!(
            storage.ingest("gw", &b).unwrap(),
            IngestOutcome {
                stored: 5,
                duplicates: 0,
                seq_conflicts: 0,
                alerts: 0,
                quarantined: 0
            }
        );
        assert_eq!(
            storage.ingest("gw", &b).unwrap(),
            IngestOutcome {
                stored: 0,
                duplicates: 5,
                seq_conflicts: 0,
                alerts: 0,
                quarantined: 0
            }
        );
        let totals = storage.totals().unwrap();
        assert_eq!(
            (totals.readings_stored, totals.duplicates, totals.batches),
            (5, 5, 2)
        );
        let all = storage
            .query_readings(&ReadingQuery {
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(all.len(), 5);
    }

    #[test]
    fn alerts_are_stored_once_per_outbox_seq_and_queried_by_device_and_start() {
        let (_dir, storage) = open();
        let mut records = batch("gw", 1..=2, 0).records;
        for (seq, (d, t)) in [(3, ("pump-1", 100)), (4, ("pump-2", 50))] {
            records.push(alert_record(seq, d, t));
        }
        let b = UplinkBatch::new("gw", records).unwrap();
        assert_eq!(storage.ingest("gw", &b).unwrap().alerts, 2);
        assert_eq!(
            storage.ingest("gw", &b).unwrap().alerts,
            0,
            "sent twice, stored once"
        );
        let all = storage
            .query_alerts(&AlertQuery {
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(
            (all[0].device.as_str(), all[0].seq),
            ("pump-2", 4),
            "by start"
        );
        assert_eq!(all[1].channels[0].channel, "current");
        let one = storage
            .query_alerts(&AlertQuery {
                device: Some("pump-1".into()),
                from_ns: Some(100 * 1_000_000_000),
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].start_ns, 100 * 1_000_000_000);
    }

    #[test]
    fn a_reused_sequence_number_with_a_new_identity_is_stored_and_reported_as_a_conflict() {
        let (_dir, storage) = open();
        storage.ingest("gw", &batch("gw", 1..=3, 0)).unwrap();
        let outcome = storage.ingest("gw", &batch("gw", 1..=3, 1000)).unwrap();
        assert_eq!(
            outcome,
            IngestOutcome {
                stored: 3,
                duplicates: 0,
                seq_conflicts: 3,
                alerts: 0,
                quarantined: 0
            }
        );
        let again = storage.ingest("gw", &batch("gw", 1..=3, 1000)).unwrap();
        assert_eq!(
            (again.stored, again.duplicates, again.seq_conflicts),
            (0, 3, 0)
        );
    }

    #[test]
    fn sequence_numbers_above_i64_max_round_trip() {
        let (_dir, storage) = open();
        storage
            .ingest("gw", &batch("gw", u64::MAX - 1..=u64::MAX, -(1 << 40)))
            .unwrap();
        let all = storage
            .query_readings(&ReadingQuery {
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            all.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [u64::MAX - 1, u64::MAX]
        );
    }

    #[test]
    fn query_filters_by_device_channel_and_half_open_time_range() {
        let (_dir, storage) = open();
        storage.ingest("gw", &batch("gw", 1..=10, 0)).unwrap();
        let q = ReadingQuery {
            device: Some("dev-1".into()),
            channel: Some("temp".into()),
            from_ns: Some(3),
            to_ns: Some(6),
            limit: 100,
        };
        let got: Vec<i64> = storage
            .query_readings(&q)
            .unwrap()
            .iter()
            .map(|r| r.ts_ns)
            .collect();
        assert_eq!(got, [3, 4, 5]);
        let q = ReadingQuery {
            device: Some("other".into()),
            limit: 100,
            ..Default::default()
        };
        assert!(storage.query_readings(&q).unwrap().is_empty());
        let q = ReadingQuery {
            limit: 2,
            ..Default::default()
        };
        assert_eq!(storage.query_readings(&q).unwrap().len(), 2);
    }

    #[test]
    fn adding_a_gateway_twice_fails_and_tokens_resolve_to_their_gateway() {
        let (_dir, storage) = open();
        assert!(matches!(
            storage.add_gateway("gw", &hash_token("u")),
            Err(StorageError::GatewayExists(_))
        ));
        assert_eq!(
            storage
                .gateway_for_token(&hash_token("t"))
                .unwrap()
                .as_deref(),
            Some("gw")
        );
        assert_eq!(
            storage.gateway_for_token(&hash_token("nope")).unwrap(),
            None
        );
    }

    #[test]
    fn ingest_for_an_unregistered_gateway_stores_nothing() {
        let (_dir, storage) = open();
        assert!(matches!(
            storage.ingest("ghost", &batch("ghost", 1..=2, 0)),
            Err(StorageError::UnknownGateway(_))
        ));
        assert!(
            storage
                .query_readings(&ReadingQuery {
                    limit: 10,
                    ..Default::default()
                })
                .unwrap()
                .is_empty()
        );
    }

    fn alert_record(seq: u64, device: &str, start_s: i64) -> OutboxRecord {
        OutboxRecord {
            seq,
            item: OutboxItem::Alert(alert(device, start_s)),
        }
    }

    fn label(true_alarm: bool, by: &str, at: i64) -> AlertLabel {
        AlertLabel {
            true_alarm,
            by: by.into(),
            labelled_ns: at,
        }
    }

    #[test]
    fn operator_labels_are_stored_replaced_shown_with_alerts_and_counted_per_device() {
        let (_dir, storage) = open();
        let b = UplinkBatch::new(
            "gw",
            vec![
                alert_record(1, "pump-1", 100),
                alert_record(2, "pump-2", 200),
            ],
        )
        .unwrap();
        storage.ingest("gw", &b).unwrap();
        let alerts = storage
            .query_alerts(&AlertQuery {
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(alerts[0].id, "gw:0:1");
        assert_eq!(alerts[0].label, None);

        let ghost = AlertId::parse("gw:0:99").unwrap();
        assert_eq!(
            storage.label_alert(&ghost, &label(true, "ann", 5)).unwrap(),
            None
        );
        let id = AlertId::parse(&alerts[0].id).unwrap();
        let labelled = storage
            .label_alert(&id, &label(true, "ann", 10))
            .unwrap()
            .unwrap();
        assert_eq!(labelled.label, Some(label(true, "ann", 10)));
        // A second verdict replaces the first.
        storage
            .label_alert(&id, &label(false, "bob", 20))
            .unwrap()
            .unwrap();
        let alerts = storage
            .query_alerts(&AlertQuery {
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(alerts[0].label, Some(label(false, "bob", 20)));
        assert_eq!(alerts[1].label, None);

        let spans = storage.alert_spans(None, None, None, 10).unwrap();
        assert_eq!(
            spans
                .iter()
                .map(|s| (s.device.as_str(), s.true_alarm))
                .collect::<Vec<_>>(),
            [("pump-1", Some(false)), ("pump-2", None)]
        );
        let only = ["pump-2".to_owned()];
        assert_eq!(
            storage
                .alert_spans(Some(&only), None, None, 10)
                .unwrap()
                .len(),
            1
        );
        // Overlap with [from, to): pump-1's alert spans 100..130 s.
        let s = 1_000_000_000;
        assert_eq!(
            storage
                .alert_spans(None, Some(130 * s), Some(150 * s), 10)
                .unwrap()
                .len(),
            1
        );
        assert!(
            storage
                .alert_spans(None, Some(131 * s), Some(150 * s), 10)
                .unwrap()
                .is_empty()
        );

        let pump1 = ["pump-1".to_owned()];
        assert_eq!(storage.new_activity(None, 20, 100).unwrap().labels, 1);
        assert_eq!(storage.new_activity(None, 21, 100).unwrap().labels, 0);
        assert_eq!(storage.new_activity(Some(&only), 0, 100).unwrap().labels, 0);
        assert_eq!(
            storage.new_activity(Some(&pump1), 0, 100).unwrap().labels,
            1
        );
    }

    #[test]
    fn new_readings_are_counted_by_receive_time_device_and_cap() {
        let (_dir, storage) = open();
        let before = Timestamp::now().as_nanos();
        storage.ingest("gw", &batch("gw", 1..=10, 0)).unwrap();
        let dev = ["dev-1".to_owned()];
        let other = ["dev-2".to_owned()];
        assert_eq!(
            storage.new_activity(None, before, 100).unwrap().readings,
            10
        );
        assert_eq!(storage.new_activity(None, before, 4).unwrap().readings, 4);
        assert_eq!(
            storage
                .new_activity(Some(&dev), before, 100)
                .unwrap()
                .readings,
            10
        );
        assert_eq!(
            storage
                .new_activity(Some(&other), before, 100)
                .unwrap()
                .readings,
            0
        );
        let after = Timestamp::now().as_nanos() + 1;
        assert_eq!(
            storage.new_activity(None, after, 100).unwrap(),
            Activity::default()
        );
    }

    #[test]
    fn alert_ids_round_trip_and_malformed_ids_are_refused() {
        let id = AlertId::parse("gw-1:18446744073709551615:7").unwrap();
        assert_eq!(id.outbox_epoch, u64::MAX);
        assert_eq!(id.to_string(), "gw-1:18446744073709551615:7");
        for bad in [
            "", "gw", "gw:1", "gw:x:1", "gw:1:-1", ":1:2", "g w:1:2", "a:b:1:2",
        ] {
            assert!(AlertId::parse(bad).is_err(), "{bad}");
        }
    }

    /// Builds a version-2 database the way version 2 of this program left it.
    fn version_2_database(path: &Path) {
        let conn = Connection::open(path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch(SCHEMA_V2).unwrap();
        conn.pragma_update(None, "user_version", 2).unwrap();
        conn.execute(
            "INSERT INTO gateways (name, token_sha256, created_ns) VALUES ('gw', ?1, 1)",
            params![hash_token("t").as_slice()],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO readings (device, channel, ts_ns, value, unit, sensor_seq, quality,
               gateway, outbox_epoch, seq, received_ns)
             VALUES ('dev-1', 'temp', 5, 1.5, NULL, NULL, 0, 'gw', 0, 1, 1000)",
            [],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO alerts (gateway, outbox_epoch, seq, device, start_ns, end_ns, score,
               threshold, model, model_version, channels, raised_ns, received_ns)
             VALUES ('gw', 0, 2, 'dev-1', 3, 9, 10.0, 8.0, 'fallback', 0, '[]', 9, 1000)",
            [],
        )
        .unwrap();
    }

    #[test]
    fn a_version_2_database_is_migrated_to_version_3_with_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sink.db");
        version_2_database(&path);
        let storage = SqliteStorage::open(&path, Duration::from_secs(1)).unwrap();
        {
            let conn = storage.reader();
            let version: i64 = conn
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .unwrap();
            assert_eq!(version, 3);
            let objects: Vec<String> = conn
                .prepare("SELECT name FROM sqlite_master WHERE name IN ('alert_labels', 'readings_received', 'alert_labels_time') ORDER BY name")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(
                objects,
                ["alert_labels", "alert_labels_time", "readings_received"]
            );
        }
        // The old data is all there and usable with the new features.
        assert_eq!(
            storage
                .query_readings(&ReadingQuery {
                    limit: 10,
                    ..Default::default()
                })
                .unwrap()
                .len(),
            1
        );
        assert_eq!(storage.new_activity(None, 1000, 10).unwrap().readings, 1);
        assert_eq!(storage.new_activity(None, 1001, 10).unwrap().readings, 0);
        let alerts = storage
            .query_alerts(&AlertQuery {
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            (alerts[0].id.as_str(), alerts[0].label.clone()),
            ("gw:0:2", None)
        );
        let id = AlertId::parse("gw:0:2").unwrap();
        assert!(
            storage
                .label_alert(&id, &label(true, "ann", 7))
                .unwrap()
                .is_some()
        );
        assert_eq!(
            storage
                .ingest("gw", &batch("gw", 2..=3, 100))
                .unwrap()
                .stored,
            2
        );
        drop(storage);
        // Opening again is a no-op migration that keeps the label.
        let storage = SqliteStorage::open(&path, Duration::from_secs(1)).unwrap();
        let spans = storage.alert_spans(None, None, None, 10).unwrap();
        assert_eq!(spans[0].true_alarm, Some(true));
    }

    #[test]
    fn a_database_from_a_newer_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sink.db");
        version_2_database(&path);
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        assert!(matches!(
            SqliteStorage::open(&path, Duration::from_secs(1)),
            Err(StorageError::SchemaTooNew {
                found: 4,
                supported: 3
            })
        ));
    }

    #[test]
    fn data_survives_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sink.db");
        {
            let s = SqliteStorage::open(&path, Duration::from_secs(1)).unwrap();
            s.add_gateway("gw", &hash_token("t")).unwrap();
            s.ingest("gw", &batch("gw", 1..=4, 0)).unwrap();
        }
        let s = SqliteStorage::open(&path, Duration::from_secs(1)).unwrap();
        assert_eq!(s.totals().unwrap().readings_stored, 4);
        assert_eq!(
            s.ingest("gw", &batch("gw", 1..=4, 0)).unwrap().duplicates,
            4
        );
    }
}
