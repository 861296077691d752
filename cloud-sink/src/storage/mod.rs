//! Storage behind one trait, so PostgreSQL can join SQLite later.
//!
//! Methods are synchronous and may block (disk, locks); async callers run them
//! on `tokio::task::spawn_blocking`. Every method is safe to call from many
//! threads at once.
//!
//! Contract for [`Storage::ingest`]: the whole batch is stored in one
//! transaction that is durable when the method returns `Ok`; a reading whose
//! identity `(device, channel, ts)` is already stored is counted as a
//! duplicate and not stored again.

pub mod sqlite;

use protocol::UplinkBatch;
use serde::Serialize;

use crate::auth::TokenHash;

/// Why storage failed. Every variant maps to HTTP 503 at ingest: the gateway
/// keeps the batch and retries.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database schema version {found} is newer than this program understands ({supported})")]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("journal mode is {0:?}, expected \"wal\"")]
    NotWal(String),
    #[error("gateway {0:?} already exists")]
    GatewayExists(String),
    #[error("gateway {0:?} is not registered")]
    UnknownGateway(String),
    #[error("storage task failed: {0}")]
    Task(String),
}

/// What [`Storage::ingest`] did with a batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IngestOutcome {
    /// Readings newly stored.
    pub stored: u64,
    /// Readings already stored (same identity).
    pub duplicates: u64,
    /// Of the stored: readings whose `(gateway, outbox_epoch, seq)` another
    /// reading with a *different* identity already has. Should be 0; non-zero
    /// means a gateway reused sequence numbers within one outbox epoch (a
    /// gateway bug). The readings are stored all the same.
    #[serde(skip)]
    pub seq_conflicts: u64,
    /// Alerts newly stored (a batch sent twice stores them once).
    pub alerts: u64,
    /// Quarantine reports newly stored.
    pub quarantined: u64,
}

/// A gateway's report of input it quarantined, as the query API returns it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StoredQuarantine {
    pub gateway: String,
    /// When the gateway received the input, nanoseconds since the Unix epoch.
    pub received_ns: i64,
    pub origin: String,
    pub reason: String,
    pub detail: String,
    /// The first bytes of the payload (lossy UTF-8).
    pub payload: String,
    /// The payload's full length in bytes.
    pub payload_len: u64,
    /// The gateway's outbox sequence number.
    pub seq: u64,
}

/// Filter for [`Storage::query_quarantine`], newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QuarantineQuery {
    pub gateway: Option<String>,
    pub reason: Option<String>,
    pub limit: u32,
}

/// An alert's identity in the API: `{gateway}:{outbox_epoch}:{seq}` (the
/// key it is stored under; gateway names cannot contain `:`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AlertId {
    pub gateway: String,
    pub outbox_epoch: u64,
    pub seq: u64,
}

impl AlertId {
    /// Parses `{gateway}:{outbox_epoch}:{seq}` (both numbers decimal).
    pub fn parse(s: &str) -> Result<AlertId, String> {
        let bad = || format!("alert id {s:?} is not `gateway:epoch:seq`");
        let mut parts = s.rsplitn(3, ':');
        let seq = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        let outbox_epoch = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        let gateway = parts.next().ok_or_else(bad)?;
        crate::auth::check_gateway_name(gateway).map_err(|e| format!("{}: {e}", bad()))?;
        Ok(AlertId {
            gateway: gateway.to_owned(),
            outbox_epoch,
            seq,
        })
    }
}

impl std::fmt::Display for AlertId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.gateway, self.outbox_epoch, self.seq)
    }
}

/// An operator's verdict on an alert: a true alarm or a false one. The
/// latest verdict per alert is kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AlertLabel {
    pub true_alarm: bool,
    /// Who said so (free text, bounded).
    pub by: String,
    /// When, nanoseconds since the Unix epoch (the sink's clock).
    pub labelled_ns: i64,
}

/// An alert's span and its operator label, for labelling training data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertSpan {
    pub device: String,
    pub start_ns: i64,
    pub end_ns: i64,
    /// `None`: no operator has reviewed it.
    pub true_alarm: Option<bool>,
}

/// What arrived in a set of devices since a point in time, each count
/// capped (see [`Storage::new_activity`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    /// Readings stored (by the sink's receive time).
    pub readings: u64,
    /// Operator labels given or changed.
    pub labels: u64,
}

/// One stored alert, as the query API returns it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StoredAlert {
    /// `{gateway}:{outbox_epoch}:{seq}`, for `POST /v1/alerts/{id}/label`.
    pub id: String,
    pub gateway: String,
    pub device: String,
    /// The anomalous span, nanoseconds since the Unix epoch.
    pub start_ns: i64,
    pub end_ns: i64,
    pub score: f64,
    pub threshold: f64,
    pub model: String,
    pub model_version: u64,
    /// The channels that deviated most, largest first.
    pub channels: Vec<protocol::alert::Contribution>,
    /// When the gateway raised it.
    pub raised_ns: i64,
    /// The gateway's outbox sequence number.
    pub seq: u64,
    /// The operator label, if any.
    pub label: Option<AlertLabel>,
}

/// Filter for [`Storage::query_alerts`] (on the alert's start; `from`
/// inclusive, `to` exclusive).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AlertQuery {
    pub device: Option<String>,
    pub from_ns: Option<i64>,
    pub to_ns: Option<i64>,
    pub limit: u32,
}

/// One stored reading, as the query API returns it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StoredReading {
    pub device: String,
    pub channel: String,
    /// Nanoseconds since the Unix epoch.
    pub ts_ns: i64,
    pub value: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The sensor's own sequence number, when it sent one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sensor_seq: Option<u64>,
    /// `protocol::Quality` bits.
    pub quality: u16,
    /// The gateway that delivered it, and its outbox sequence number.
    pub gateway: String,
    pub seq: u64,
}

/// Filter for [`Storage::query_readings`]. `from` is inclusive, `to` exclusive.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadingQuery {
    pub device: Option<String>,
    pub channel: Option<String>,
    pub from_ns: Option<i64>,
    pub to_ns: Option<i64>,
    pub limit: u32,
}

/// Per-gateway counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GatewayStats {
    pub name: String,
    pub created_ns: i64,
    /// Last accepted batch, `None` before the first.
    pub last_seen_ns: Option<i64>,
    pub batches: u64,
    pub readings_stored: u64,
    pub duplicates: u64,
}

/// Totals across all gateways.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub gateways: u64,
    pub batches: u64,
    pub readings_stored: u64,
    pub duplicates: u64,
}

/// The sink's storage.
pub trait Storage: Send + Sync + 'static {
    /// Registers a gateway with the hash of its token.
    fn add_gateway(&self, name: &str, token_hash: &TokenHash) -> Result<(), StorageError>;
    /// The gateway a token hash belongs to.
    fn gateway_for_token(&self, token_hash: &TokenHash) -> Result<Option<String>, StorageError>;
    /// Stores a batch from `gateway` atomically and durably (see the module docs).
    fn ingest(&self, gateway: &str, batch: &UplinkBatch) -> Result<IngestOutcome, StorageError>;
    /// Readings matching `query`, ordered by time, then device, then channel.
    fn query_readings(&self, query: &ReadingQuery) -> Result<Vec<StoredReading>, StorageError>;
    /// Alerts matching `query`, ordered by start time, then device, each
    /// with its operator label.
    fn query_alerts(&self, query: &AlertQuery) -> Result<Vec<StoredAlert>, StorageError>;
    /// Records (or replaces) an operator's label on an alert, durably.
    /// `Ok(None)`: no such alert. Returns the alert with its new label.
    fn label_alert(
        &self,
        id: &AlertId,
        label: &AlertLabel,
    ) -> Result<Option<StoredAlert>, StorageError>;
    /// The alerts of `devices` (every device when `None`) whose span
    /// overlaps `[from_ns, to_ns)`, with their labels; at most `limit`.
    fn alert_spans(
        &self,
        devices: Option<&[String]>,
        from_ns: Option<i64>,
        to_ns: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AlertSpan>, StorageError>;
    /// Readings received and labels given at or after `since_ns` (sink
    /// clock) for `devices` (every device when `None`). Each count stops at
    /// `cap`, so the cost is bounded by `cap` rows, not by the table.
    fn new_activity(
        &self,
        devices: Option<&[String]>,
        since_ns: i64,
        cap: u64,
    ) -> Result<Activity, StorageError>;
    /// Quarantine reports matching `query`, newest (by receive time) first.
    fn query_quarantine(
        &self,
        query: &QuarantineQuery,
    ) -> Result<Vec<StoredQuarantine>, StorageError>;
    /// Every gateway with its counters, ordered by name.
    fn gateways(&self) -> Result<Vec<GatewayStats>, StorageError>;
    /// Totals across all gateways.
    fn totals(&self) -> Result<Totals, StorageError>;
    /// Cheap liveness check of the backing store.
    fn ping(&self) -> Result<(), StorageError>;
}
