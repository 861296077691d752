//! The durable outbox: records and source cursors in an append-only segment
//! log ([`log`]); the epoch and the quarantine in sled.
//!
//! - Records (readings, alerts, quarantine reports) get increasing sequence
//!   numbers, never reused — not even after every record was uploaded and
//!   deleted, or across a restart. (The sink de-duplicates on
//!   `(gateway, epoch, seq)`; a reused number would drop new data.)
//! - Nothing is durable until [`Outbox::flush`] returns (one `fdatasync` of
//!   the log): the ingest stage appends many envelopes, flushes once (group
//!   commit), then acknowledges. Deletions after an upload are not flushed
//!   eagerly: if a crash loses them, the records are sent again and the sink
//!   drops the duplicates.
//! - A source's durable cursor ([`Checkpoint`]) is written in the same log
//!   frame as the records of the envelope that carried it
//!   ([`Outbox::append_with_checkpoints`]), so a crash leaves both or neither.
//!   Record deletion never touches a cursor. Read with [`Outbox::checkpoint`].
//! - `m:epoch` in the sled tree `outbox`: a random u64 chosen when the outbox
//!   is created. It travels with every batch; if the gateway's storage is
//!   wiped, the new outbox has a new epoch, so restarting sequence numbers at
//!   1 cannot collide with the keys the sink already holds.
//! - The sled tree `quarantine` keeps rejected payloads with a reason code,
//!   capped in bytes (oldest dropped first: quarantine is diagnostic data),
//!   under increasing ids (u64 BE). `m:quarantine_next`, written by a purge,
//!   keeps ids from being reused after the newest entries were purged.
//!
//! Outboxes written before the log (records as sled segments under `r` keys,
//! cursors under `c:`) are moved into the log when opened ([`migrate`]).

mod log;
mod migrate;
#[cfg(test)]
mod model_test;

use std::fs::File;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytesize::ByteSize;
use protocol::batch::{OutboxItem, OutboxRecord};
use protocol::{Reading, Timestamp};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::config::{StorageConfig, WhenFull};
use crate::envelope::Checkpoint;
use log::RecordLog;

const EPOCH_KEY: &[u8] = b"m:epoch";
/// The next quarantine id, stored by a purge (which may delete the newest
/// entries) so that ids are not reused after it.
const QUARANTINE_NEXT_KEY: &[u8] = b"m:quarantine_next";
/// Bytes counted against the cap per record besides its CBOR (its length
/// prefix and a share of its frame's header).
const RECORD_OVERHEAD: u64 = 8;
/// The log's segment files, under the outbox directory.
const LOG_DIR: &str = "segments";
/// Segment size bounds; between them a segment is 1/16 of the cap, so that
/// the disk holds at most a few segments more than the cap counts.
const SEGMENT_MIN_BYTES: u64 = 64 * 1024;
const SEGMENT_MAX_BYTES: u64 = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("storage: {0}")]
    Storage(#[from] sled::Error),
    #[error("outbox log: {0}")]
    Io(#[from] std::io::Error),
    /// Another process (normally the running gateway) holds the database lock.
    #[error("{path} is locked by another process")]
    Locked { path: std::path::PathBuf },
    #[error("outbox is full ({used} of {cap} bytes used, {needed} more needed)")]
    Full { used: u64, cap: u64, needed: u64 },
    #[error("a batch of {needed} bytes can never fit in an outbox of {cap} bytes")]
    TooBigForOutbox { needed: u64, cap: u64 },
    #[error("record {seq} is corrupt: {detail}")]
    Corrupt { seq: u64, detail: String },
    #[error("encoding: {0}")]
    Encode(String),
}

/// What an append did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Sequence numbers given to the appended records (`first..=last`), if any.
    pub seqs: Option<(u64, u64)>,
    /// Oldest records deleted to make room (`drop_oldest` policy).
    pub dropped: u64,
}

#[derive(Debug, Default)]
struct QuarantineCounters {
    bytes: u64,
    next: u64,
}

/// A quarantined payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuarantineEntry {
    pub received: Timestamp,
    /// Where it came from, e.g. `mqtt:outpost/sensors/pump-1`.
    pub origin: String,
    /// Stable reason code, e.g. `syntax`, `non_finite_value`.
    pub reason: String,
    /// Human-readable detail.
    pub detail: String,
    /// The first bytes of the payload.
    #[serde(with = "protocol::cbor_bytes")]
    pub payload: Vec<u8>,
    /// The payload's full length.
    pub payload_len: usize,
}

/// Which quarantine entries a listing or a purge covers; every field that is
/// set must match (the default matches everything).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QuarantineFilter {
    /// Only entries with this reason code.
    pub reason: Option<String>,
    /// Only entries received strictly before this instant.
    pub before: Option<Timestamp>,
}

impl QuarantineFilter {
    pub fn matches(&self, entry: &QuarantineEntry) -> bool {
        self.reason.as_ref().is_none_or(|r| *r == entry.reason)
            && self.before.is_none_or(|b| entry.received < b)
    }
}

fn quarantine_decode(key: &[u8], value: &[u8]) -> Result<(u64, QuarantineEntry), OutboxError> {
    let id = <[u8; 8]>::try_from(key)
        .map(u64::from_be_bytes)
        .unwrap_or(0);
    let entry = ciborium::from_reader(value).map_err(|e| OutboxError::Corrupt {
        seq: id,
        detail: e.to_string(),
    })?;
    Ok((id, entry))
}

/// The outbox. Cheap to share behind an `Arc`; methods are blocking (file
/// I/O), call them from `spawn_blocking` in async code when they may flush.
#[derive(Debug)]
pub struct Outbox {
    db: sled::Db,
    /// sled's data file, synced after sled's own flush (see [`Outbox::flush`]).
    db_file: File,
    meta: sled::Tree,
    quarantine: sled::Tree,
    log: RecordLog,
    quarantine_counters: Mutex<QuarantineCounters>,
    /// The quarantine changed since the last flush.
    quarantine_dirty: AtomicBool,
    /// Every record with a lower seq is durable (see [`Outbox::read_batch`]).
    durable_next: AtomicU64,
    max_bytes: u64,
    max_quarantine_bytes: u64,
    epoch: u64,
    when_full: WhenFull,
    /// Also append a [`QuarantineReport`] record per quarantine entry, for
    /// the sink (`storage.uplink_quarantine`).
    uplink_quarantine: bool,
    /// Signalled after records were deleted (room for a blocked ingest).
    pub space_freed: Notify,
    /// Signalled after records were appended and flushed (work for the uplink).
    pub data_added: Notify,
}

fn record_cost(value_len: usize) -> u64 {
    value_len as u64 + RECORD_OVERHEAD
}

/// The segment size for an outbox capped at `max_bytes`.
fn segment_bytes(max_bytes: u64) -> u64 {
    (max_bytes / 16).clamp(SEGMENT_MIN_BYTES, SEGMENT_MAX_BYTES)
}

fn open_sled(path: &Path, cfg: &StorageConfig) -> Result<sled::Db, OutboxError> {
    sled::Config::new()
        .path(path)
        .cache_capacity(cfg.cache_capacity.as_u64())
        // We decide when to flush; no background flusher.
        .flush_every_ms(None)
        .mode(sled::Mode::LowSpace)
        .open()
        .map_err(|e| match e {
            // sled 0.34 reports a held flock only as an `Other` I/O error
            // with this text (config.rs `try_lock`).
            sled::Error::Io(io)
                if io.kind() == std::io::ErrorKind::Other
                    && io.to_string().contains("could not acquire lock") =>
            {
                OutboxError::Locked {
                    path: path.to_owned(),
                }
            }
            e => OutboxError::Storage(e),
        })
}

impl Outbox {
    pub fn open(path: &Path, cfg: &StorageConfig) -> Result<Self, OutboxError> {
        // sled first: its file lock keeps a second process out of the log too.
        let db = open_sled(path, cfg)?;
        let db_file = File::open(path.join("db"))?;
        let meta = db.open_tree("outbox")?;
        let quarantine = db.open_tree("quarantine")?;
        let max_bytes = cfg.max_outbox_bytes.as_u64();
        let log = RecordLog::open(&path.join(LOG_DIR), segment_bytes(max_bytes))?;
        migrate::from_sled_segments(&meta, &log)?;
        let epoch = match meta.get(EPOCH_KEY)? {
            Some(v) => <[u8; 8]>::try_from(v.as_ref())
                .map(u64::from_be_bytes)
                .unwrap_or(0),
            None => {
                let epoch = rand::random::<u64>().max(1);
                meta.insert(EPOCH_KEY, &epoch.to_be_bytes())?;
                db.flush()?;
                db_file.sync_all()?;
                epoch
            }
        };
        let mut q = QuarantineCounters::default();
        for kv in quarantine.iter() {
            let (k, v) = kv?;
            q.bytes += v.len() as u64;
            if let Ok(id) = <[u8; 8]>::try_from(k.as_ref()).map(u64::from_be_bytes) {
                q.next = q.next.max(id + 1);
            }
        }
        if let Some(v) = meta.get(QUARANTINE_NEXT_KEY)?
            && let Ok(b) = <[u8; 8]>::try_from(v.as_ref())
        {
            q.next = q.next.max(u64::from_be_bytes(b));
        }
        let (_, _, next_seq) = log.counts();
        Ok(Outbox {
            db,
            db_file,
            meta,
            quarantine,
            log,
            quarantine_counters: Mutex::new(q),
            quarantine_dirty: AtomicBool::new(false),
            durable_next: AtomicU64::new(next_seq),
            max_bytes,
            max_quarantine_bytes: cfg.max_quarantine_bytes.as_u64(),
            epoch,
            when_full: cfg.when_full,
            uplink_quarantine: cfg.uplink_quarantine,
            space_freed: Notify::new(),
            data_added: Notify::new(),
        })
    }

    fn quarantine_counters(&self) -> std::sync::MutexGuard<'_, QuarantineCounters> {
        // A poisoned lock only means another thread panicked mid-update of plain
        // integers; the numbers are still usable.
        self.quarantine_counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// This outbox's epoch (see the module docs).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Records waiting to be uploaded.
    pub fn depth(&self) -> u64 {
        self.log.counts().0
    }

    /// Bytes counted against `max_outbox_bytes`.
    pub fn bytes(&self) -> u64 {
        self.log.counts().1
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// The sequence number the next appended record will get.
    pub fn next_seq(&self) -> u64 {
        self.log.counts().2
    }

    /// Encodes readings for [`Outbox::append_encoded`]; separate so callers can
    /// size a commit before taking the write path.
    pub fn encode(readings: &[Reading]) -> Result<Vec<Vec<u8>>, OutboxError> {
        readings
            .iter()
            .map(|r| {
                let mut buf = Vec::with_capacity(96);
                ciborium::into_writer(&OutboxItem::Reading(r.clone()), &mut buf)
                    .map_err(|e| OutboxError::Encode(e.to_string()))?;
                Ok(buf)
            })
            .collect()
    }

    /// Bytes the encoded values will occupy against the cap.
    pub fn cost(encoded: &[Vec<u8>]) -> u64 {
        encoded.iter().map(|v| record_cost(v.len())).sum()
    }

    /// Appends encoded items atomically (not yet durable: call [`Outbox::flush`]).
    ///
    /// When the cap would be exceeded: `block` returns [`OutboxError::Full`] and
    /// writes nothing; `drop_oldest` deletes the oldest records in the same
    /// write and reports how many.
    pub fn append_encoded(&self, encoded: &[Vec<u8>]) -> Result<AppendOutcome, OutboxError> {
        self.append_with_checkpoints(encoded, &[])
    }

    /// Appends an event (an alert, a quarantine report) only if it fits:
    /// events never evict readings, whatever `when_full` says, so a full
    /// outbox returns [`OutboxError::Full`] and the caller counts the loss.
    pub fn append_event(&self, encoded: Vec<u8>) -> Result<(), OutboxError> {
        self.append_inner(&[encoded], &[], false).map(|_| ())
    }

    /// [`Outbox::append_encoded`], and in the same log frame the source
    /// cursors `checkpoints` (a later one with the same key wins). With no
    /// records the checkpoints alone are written. When the append fails
    /// (`Full`, `TooBigForOutbox`, storage), no checkpoint is written either.
    pub fn append_with_checkpoints(
        &self,
        encoded: &[Vec<u8>],
        checkpoints: &[Checkpoint],
    ) -> Result<AppendOutcome, OutboxError> {
        self.append_inner(encoded, checkpoints, self.when_full == WhenFull::DropOldest)
    }

    /// The append; `evict`: make room by deleting the oldest records.
    fn append_inner(
        &self,
        encoded: &[Vec<u8>],
        checkpoints: &[Checkpoint],
        evict: bool,
    ) -> Result<AppendOutcome, OutboxError> {
        if encoded.is_empty() && checkpoints.is_empty() {
            return Ok(AppendOutcome::default());
        }
        let cursors: Vec<(&str, &[u8])> = checkpoints
            .iter()
            .map(|cp| (cp.key.as_str(), cp.value.as_slice()))
            .collect();
        self.log.append(encoded, &cursors, self.max_bytes, evict)
    }

    /// The last value stored for the source cursor `key` (durable once the
    /// append that wrote it was flushed; the ingest stage acknowledges only
    /// after that flush), or `None` if there is none.
    pub fn checkpoint(&self, key: &str) -> Result<Option<Vec<u8>>, OutboxError> {
        Ok(self.log.cursor(key))
    }

    /// Every stored cursor whose key starts with `prefix` (e.g. `"file:"`),
    /// in key order.
    pub fn checkpoints(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, OutboxError> {
        Ok(self.log.cursors(prefix))
    }

    /// Deletes the cursor `key` (e.g. a file that was fully ingested and moved
    /// away). Not flushed by itself: it becomes durable with the next flush, and
    /// a removal lost in a crash leaves only a stale cursor, which a source
    /// must recognise anyway (the file source keys on the file's identity).
    pub fn remove_checkpoint(&self, key: &str) -> Result<(), OutboxError> {
        self.log.remove_cursor(key)
    }

    /// Makes everything written so far durable (one `fdatasync` of the log,
    /// and sled's file when the quarantine changed), and with it lets the
    /// uplink read those records.
    pub fn flush(&self) -> Result<(), OutboxError> {
        let synced = self.log.sync()?;
        if self.quarantine_dirty.swap(false, Ordering::AcqRel) {
            // sled 0.34's flush ends in `sync_file_range` on Linux, which
            // neither flushes the drive's cache nor the file's size; the
            // explicit sync does both.
            let flushed = self
                .db
                .flush()
                .map_err(OutboxError::from)
                .and_then(|_| Ok(self.db_file.sync_all()?));
            if let Err(e) = flushed {
                self.quarantine_dirty.store(true, Ordering::Release);
                return Err(e);
            }
        }
        self.durable_next
            .fetch_max(synced.next_seq, Ordering::AcqRel);
        Ok(())
    }

    /// Records below this sequence number are durable.
    pub fn durable_next(&self) -> u64 {
        self.durable_next.load(Ordering::Acquire)
    }

    /// Up to `max_records` records (and about `max_bytes`) with seq ≥ `from`,
    /// in order; at least one if any is readable.
    ///
    /// Only durable records are returned. Uploading a record that a crash could
    /// still undo would let its sequence number be given to another reading
    /// after the restart — and the sink would then hold two readings under one
    /// `(gateway, epoch, seq)`.
    pub fn read_batch(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: u64,
    ) -> Result<Vec<OutboxRecord>, OutboxError> {
        let end = self.durable_next();
        if from >= end {
            return Ok(Vec::new());
        }
        self.log
            .read(from, end, max_records, max_bytes)?
            .into_iter()
            .map(|(seq, bytes)| {
                let item: OutboxItem =
                    ciborium::from_reader(bytes.as_slice()).map_err(|e| OutboxError::Corrupt {
                        seq,
                        detail: e.to_string(),
                    })?;
                Ok(OutboxRecord { seq, item })
            })
            .collect()
    }

    /// Deletes records `first..=last` after the sink confirmed them.
    pub fn remove_range(&self, first: u64, last: u64) -> Result<u64, OutboxError> {
        let n = self.log.remove(first, last)?;
        // One waiter (ingest); a stored permit means no wakeup is lost.
        self.space_freed.notify_one();
        Ok(n)
    }

    /// Stores a rejected payload (not flushed by itself: the ingest stage
    /// flushes it with the next group commit, before acknowledging the sender).
    pub fn quarantine(&self, entry: &QuarantineEntry) -> Result<(), OutboxError> {
        let mut value = Vec::with_capacity(entry.payload.len() + 128);
        ciborium::into_writer(entry, &mut value).map_err(|e| OutboxError::Encode(e.to_string()))?;
        let mut c = self.quarantine_counters();
        let mut batch = sled::Batch::default();
        let mut freed = 0u64;
        if c.bytes + value.len() as u64 > self.max_quarantine_bytes {
            for kv in self.quarantine.iter() {
                if c.bytes - freed + value.len() as u64 <= self.max_quarantine_bytes {
                    break;
                }
                let (k, v) = kv?;
                freed += v.len() as u64;
                batch.remove(k);
            }
        }
        let id = c.next;
        batch.insert(&id.to_be_bytes(), value.as_slice());
        self.quarantine.apply_batch(batch)?;
        self.quarantine_dirty.store(true, Ordering::Release);
        c.next += 1;
        c.bytes = c.bytes + value.len() as u64 - freed;
        drop(c);
        if self.uplink_quarantine {
            self.report_quarantined(entry);
        }
        Ok(())
    }

    /// Appends the sink's copy of a quarantine entry as an outbox record. Best
    /// effort: the local quarantine is the record of truth, so a full outbox
    /// (it never evicts readings for a report) or a crash between the two
    /// writes only loses the report.
    fn report_quarantined(&self, entry: &QuarantineEntry) {
        let kept = entry.payload.len().min(protocol::alert::MAX_REPORT_PAYLOAD);
        let report = protocol::alert::QuarantineReport {
            received: entry.received,
            origin: entry.origin.clone(),
            reason: entry.reason.clone(),
            detail: entry.detail.chars().take(4096).collect(),
            payload: entry.payload[..kept].to_vec(),
            payload_len: entry.payload_len as u64,
        };
        let mut encoded = Vec::with_capacity(kept + 256);
        let appended = ciborium::into_writer(&OutboxItem::Quarantined(report), &mut encoded)
            .map_err(|e| OutboxError::Encode(e.to_string()))
            .and_then(|()| self.append_event(encoded));
        if let Err(e) = appended {
            tracing::debug!(error = %e, "Quarantine report not queued for the sink.");
        }
    }

    /// The newest `limit` quarantine entries with their ids, newest first.
    pub fn quarantine_list(
        &self,
        limit: usize,
    ) -> Result<Vec<(u64, QuarantineEntry)>, OutboxError> {
        self.quarantine_matching(&QuarantineFilter::default(), limit)
    }

    /// The newest `limit` quarantine entries that match `filter`, with their
    /// ids, newest first.
    pub fn quarantine_matching(
        &self,
        filter: &QuarantineFilter,
        limit: usize,
    ) -> Result<Vec<(u64, QuarantineEntry)>, OutboxError> {
        let mut out = Vec::new();
        for kv in self.quarantine.iter().rev() {
            if out.len() >= limit {
                break;
            }
            let (k, v) = kv?;
            let (id, entry) = quarantine_decode(&k, &v)?;
            if filter.matches(&entry) {
                out.push((id, entry));
            }
        }
        Ok(out)
    }

    /// The quarantine entry `id`, if it is still there.
    pub fn quarantine_get(&self, id: u64) -> Result<Option<QuarantineEntry>, OutboxError> {
        match self.quarantine.get(id.to_be_bytes())? {
            Some(v) => Ok(Some(quarantine_decode(&id.to_be_bytes(), &v)?.1)),
            None => Ok(None),
        }
    }

    /// Deletes every quarantine entry that matches `filter` in one atomic
    /// batch, makes the deletion durable, and returns how many went.
    ///
    /// An entry that does not decode cannot be checked against a filter: only
    /// a purge without one deletes it.
    pub fn quarantine_purge(&self, filter: &QuarantineFilter) -> Result<u64, OutboxError> {
        // Held across scan and delete, as in `quarantine`: a concurrent insert
        // dropping the oldest entries must not count them as freed twice.
        let mut c = self.quarantine_counters();
        let mut batch = sled::Batch::default();
        let (mut n, mut freed) = (0u64, 0u64);
        for kv in self.quarantine.iter() {
            let (k, v) = kv?;
            let matched = match quarantine_decode(&k, &v) {
                Ok((_, entry)) => filter.matches(&entry),
                // Unreadable: only a purge of everything removes it.
                Err(_) => *filter == QuarantineFilter::default(),
            };
            if matched {
                freed += v.len() as u64;
                n += 1;
                batch.remove(k);
            }
        }
        if n == 0 {
            return Ok(0);
        }
        // Before the deletion: a crash in between leaves entries, not reused ids.
        self.meta
            .insert(QUARANTINE_NEXT_KEY, &c.next.to_be_bytes())?;
        self.quarantine.apply_batch(batch)?;
        self.quarantine_dirty.store(true, Ordering::Release);
        c.bytes = c.bytes.saturating_sub(freed);
        drop(c);
        self.flush()?;
        Ok(n)
    }

    pub fn quarantine_bytes(&self) -> u64 {
        self.quarantine_counters().bytes
    }

    /// Human summary for logs.
    pub fn describe(&self) -> String {
        let (records, bytes, next_seq) = self.log.counts();
        let (segments, on_disk) = self.log.footprint();
        format!(
            "{records} records, {} of {} used, next seq {next_seq}, {segments} log segments ({} on disk)",
            ByteSize::b(bytes),
            ByteSize::b(self.max_bytes),
            ByteSize::b(on_disk),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens (or re-opens) with a 1 MiB cap. sled's worker threads may keep the
    /// previous handle's file lock for a moment after it is dropped, so a
    /// re-open in the same process retries briefly on `Locked`.
    fn reopen(dir: &Path) -> Outbox {
        reopen_with(dir, &cfg(1 << 20, WhenFull::Block))
    }

    /// Opens `dir` again after a drop: sled releases its file lock a moment
    /// after the last handle goes, which shows under load.
    fn reopen_with(dir: &Path, c: &StorageConfig) -> Outbox {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Outbox::open(dir, c) {
                Err(OutboxError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                r => return r.unwrap(),
            }
        }
    }

    fn cfg(max: u64, when_full: WhenFull) -> StorageConfig {
        StorageConfig {
            max_outbox_bytes: ByteSize::b(max),
            when_full,
            cache_capacity: ByteSize::mib(1),
            ..StorageConfig::default()
        }
    }

    fn readings(n: usize, base: i64) -> Vec<Reading> {
        (0..n)
            .map(|i| Reading::new("dev", "ch", Timestamp(base + i as i64), i as f64).unwrap())
            .collect()
    }

    #[test]
    fn appended_records_read_back_in_sequence_order() {
        let dir = tempfile::tempdir().unwrap();
        let ob = reopen(dir.path());
        let out = ob
            .append_encoded(&Outbox::encode(&readings(5, 0)).unwrap())
            .unwrap();
        assert_eq!(out.seqs, Some((1, 5)));
        assert!(
            ob.read_batch(0, 10, u64::MAX).unwrap().is_empty(),
            "nothing is readable before the flush"
        );
        ob.flush().unwrap();
        let batch = ob.read_batch(0, 3, u64::MAX).unwrap();
        assert_eq!(
            batch.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        let rest = ob.read_batch(4, 100, u64::MAX).unwrap();
        assert_eq!(rest.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![4, 5]);
        assert_eq!(ob.depth(), 5);
    }

    #[test]
    fn sequence_numbers_are_never_reused_after_everything_was_deleted_and_reopened() {
        let dir = tempfile::tempdir().unwrap();
        {
            let ob = reopen(dir.path());
            ob.append_encoded(&Outbox::encode(&readings(3, 0)).unwrap())
                .unwrap();
            ob.flush().unwrap();
            ob.remove_range(1, 3).unwrap();
            ob.flush().unwrap();
            assert_eq!(ob.depth(), 0);
        }
        let ob = reopen(dir.path());
        assert_eq!(ob.next_seq(), 4);
        assert_ne!(ob.epoch(), 0);
        let out = ob
            .append_encoded(&Outbox::encode(&readings(1, 10)).unwrap())
            .unwrap();
        assert_eq!(out.seqs, Some((4, 4)));
    }

    #[test]
    fn a_new_outbox_gets_a_new_epoch_and_a_reopened_one_keeps_it() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let first = Outbox::open(a.path(), &cfg(1 << 20, WhenFull::Block))
            .unwrap()
            .epoch();
        let again = Outbox::open(a.path(), &cfg(1 << 20, WhenFull::Block))
            .unwrap()
            .epoch();
        let other = Outbox::open(b.path(), &cfg(1 << 20, WhenFull::Block))
            .unwrap()
            .epoch();
        assert_eq!(first, again);
        assert_ne!(first, other);
    }

    #[test]
    fn block_policy_refuses_to_write_when_full() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outbox::open(dir.path(), &cfg(2_000, WhenFull::Block)).unwrap();
        let enc = Outbox::encode(&readings(10, 0)).unwrap();
        ob.append_encoded(&enc).unwrap();
        let before = ob.depth();
        let mut full = false;
        for i in 0..100 {
            match ob.append_encoded(&Outbox::encode(&readings(10, 100 * i)).unwrap()) {
                Ok(_) => {}
                Err(OutboxError::Full { .. }) => {
                    full = true;
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(full, "the cap was never reached");
        assert!(ob.bytes() <= 2_000);
        assert!(ob.depth() >= before);
        ob.flush().unwrap();
        // Nothing was dropped: every sequence number is still there.
        let all = ob.read_batch(0, usize::MAX, u64::MAX).unwrap();
        assert_eq!(all.len() as u64, ob.depth());
        assert_eq!(all[0].seq, 1);
    }

    #[test]
    fn an_event_never_evicts_readings_even_under_drop_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outbox::open(dir.path(), &cfg(2_000, WhenFull::DropOldest)).unwrap();
        // Fill to just under the cap with readings.
        let mut i = 0;
        while ob.bytes() + 200 < 2_000 {
            ob.append_encoded(&Outbox::encode(&readings(1, i)).unwrap())
                .unwrap();
            i += 1;
        }
        let (depth, bytes) = (ob.depth(), ob.bytes());
        let event = vec![0u8; 400];
        assert!(matches!(
            ob.append_event(event.clone()),
            Err(OutboxError::Full { .. })
        ));
        assert_eq!((ob.depth(), ob.bytes()), (depth, bytes), "nothing evicted");
        // With room, it is appended like any record.
        ob.remove_range(1, 3).unwrap();
        ob.append_event(vec![0u8; 40]).unwrap();
        assert_eq!(ob.depth(), depth - 3 + 1);
    }

    #[test]
    fn drop_oldest_policy_deletes_and_counts_the_oldest_records() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outbox::open(dir.path(), &cfg(2_000, WhenFull::DropOldest)).unwrap();
        let mut dropped = 0;
        for i in 0..50 {
            dropped += ob
                .append_encoded(&Outbox::encode(&readings(5, 10 * i)).unwrap())
                .unwrap()
                .dropped;
        }
        assert!(dropped > 0);
        assert!(ob.bytes() <= 2_000);
        ob.flush().unwrap();
        let all = ob.read_batch(0, usize::MAX, u64::MAX).unwrap();
        assert_eq!(all.len() as u64 + dropped, 250);
        // The newest records survive.
        assert_eq!(all.last().unwrap().seq, 250);
    }

    #[test]
    fn byte_accounting_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, depth) = {
            let ob = reopen(dir.path());
            ob.append_encoded(&Outbox::encode(&readings(7, 0)).unwrap())
                .unwrap();
            ob.flush().unwrap();
            (ob.bytes(), ob.depth())
        };
        let ob = reopen(dir.path());
        assert_eq!((ob.bytes(), ob.depth()), (bytes, depth));
    }

    fn seqs(records: &[OutboxRecord]) -> Vec<u64> {
        records.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn records_spanning_many_segments_read_back_from_any_point() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outbox::open(dir.path(), &cfg(1 << 24, WhenFull::Block)).unwrap();
        ob.append_encoded(&Outbox::encode(&readings(1000, 0)).unwrap())
            .unwrap();
        ob.flush().unwrap();
        let all = ob.read_batch(0, usize::MAX, u64::MAX).unwrap();
        assert_eq!(seqs(&all), (1..=1000).collect::<Vec<_>>());
        let r = all[999].item.reading().unwrap();
        assert_eq!(r.ts, Timestamp(999));
        // From the middle of a segment, across segment boundaries.
        assert_eq!(
            seqs(&ob.read_batch(300, 300, u64::MAX).unwrap()),
            (300..600).collect::<Vec<_>>()
        );
    }

    #[test]
    fn removing_part_of_a_segment_keeps_the_rest_readable_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outbox::open(dir.path(), &cfg(1 << 24, WhenFull::Block)).unwrap();
        ob.append_encoded(&Outbox::encode(&readings(600, 0)).unwrap())
            .unwrap();
        ob.flush().unwrap();
        let bytes_before = ob.bytes();
        assert_eq!(ob.remove_range(1, 100).unwrap(), 100);
        assert_eq!(
            ob.remove_range(201, 250).unwrap(),
            50,
            "a hole in the middle of a segment"
        );
        assert_eq!(ob.depth(), 450);
        assert!(ob.bytes() < bytes_before);
        let left = seqs(&ob.read_batch(0, usize::MAX, u64::MAX).unwrap());
        let expected: Vec<u64> = (101..=200).chain(251..=600).collect();
        assert_eq!(left, expected);
        // Counters agree with a fresh scan after a reopen.
        let (depth, bytes) = (ob.depth(), ob.bytes());
        ob.flush().unwrap();
        drop(ob);
        let ob = reopen_with(dir.path(), &cfg(1 << 24, WhenFull::Block));
        assert_eq!((ob.depth(), ob.bytes()), (depth, bytes));
        assert_eq!(
            seqs(&ob.read_batch(0, usize::MAX, u64::MAX).unwrap()),
            expected
        );
        assert_eq!(ob.next_seq(), 601);
    }

    #[test]
    fn quarantine_is_capped_and_lists_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(1 << 20, WhenFull::Block);
        c.max_quarantine_bytes = ByteSize::b(2_000);
        let ob = Outbox::open(dir.path(), &c).unwrap();
        for i in 0..50 {
            ob.quarantine(&QuarantineEntry {
                received: Timestamp(i),
                origin: "test".into(),
                reason: "syntax".into(),
                detail: format!("entry {i}"),
                payload: vec![b'x'; 100],
                payload_len: 100,
            })
            .unwrap();
        }
        assert!(ob.quarantine_bytes() <= 2_000);
        let list = ob.quarantine_list(3).unwrap();
        assert_eq!(list[0].1.detail, "entry 49");
        assert_eq!(list[0].1.payload, vec![b'x'; 100]);
    }

    fn entry(received: i64, reason: &str, payload: &[u8]) -> QuarantineEntry {
        QuarantineEntry {
            received: Timestamp(received),
            origin: "test".into(),
            reason: reason.into(),
            detail: format!("{reason} at {received}"),
            payload: payload.to_vec(),
            payload_len: payload.len(),
        }
    }

    /// The quarantine's byte count as a fresh open computes it.
    fn reopened_quarantine_bytes(dir: &Path) -> u64 {
        reopen(dir).quarantine_bytes()
    }

    #[test]
    fn a_quarantine_entry_is_found_by_its_id_and_a_missing_id_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let ob = reopen(dir.path());
        ob.quarantine(&entry(1, "syntax", b"{oops")).unwrap();
        ob.quarantine(&entry(2, "too_large", &[0xff, 0x00]))
            .unwrap();
        let ids: Vec<u64> = ob
            .quarantine_list(10)
            .unwrap()
            .iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(ids.len(), 2);
        for (id, want) in ob.quarantine_list(10).unwrap() {
            assert_eq!(ob.quarantine_get(id).unwrap(), Some(want));
        }
        assert_eq!(ob.quarantine_get(ids[0] + 100).unwrap(), None);
    }

    #[test]
    fn listing_filters_by_reason_and_time() {
        let dir = tempfile::tempdir().unwrap();
        let ob = reopen(dir.path());
        for i in 0..6 {
            let reason = if i % 2 == 0 { "syntax" } else { "too_large" };
            ob.quarantine(&entry(i, reason, b"x")).unwrap();
        }
        let syntax = QuarantineFilter {
            reason: Some("syntax".into()),
            before: None,
        };
        let got: Vec<i64> = ob
            .quarantine_matching(&syntax, 10)
            .unwrap()
            .iter()
            .map(|(_, e)| e.received.0)
            .collect();
        assert_eq!(got, vec![4, 2, 0], "newest first, only syntax");
        let early_syntax = QuarantineFilter {
            before: Some(Timestamp(4)),
            ..syntax
        };
        let got: Vec<i64> = ob
            .quarantine_matching(&early_syntax, 1)
            .unwrap()
            .iter()
            .map(|(_, e)| e.received.0)
            .collect();
        assert_eq!(got, vec![2], "before is strict; the limit counts matches");
    }

    #[test]
    fn purging_by_reason_and_time_deletes_only_matches_and_keeps_the_byte_count_true() {
        let dir = tempfile::tempdir().unwrap();
        let ob = reopen(dir.path());
        for i in 0..10 {
            let reason = if i < 5 { "syntax" } else { "non_finite_value" };
            ob.quarantine(&entry(i, reason, &vec![b'p'; 10 + i as usize]))
                .unwrap();
        }
        ob.flush().unwrap();
        let before = ob.quarantine_bytes();
        let n = ob
            .quarantine_purge(&QuarantineFilter {
                reason: Some("syntax".into()),
                before: Some(Timestamp(3)),
            })
            .unwrap();
        assert_eq!(n, 3, "syntax entries received at 0, 1, 2");
        assert!(ob.quarantine_bytes() < before);
        let left: Vec<i64> = ob
            .quarantine_list(100)
            .unwrap()
            .iter()
            .map(|(_, e)| e.received.0)
            .collect();
        assert_eq!(left, (3..10).rev().collect::<Vec<_>>());
        assert_eq!(
            ob.quarantine_purge(&QuarantineFilter {
                reason: Some("no_such_reason".into()),
                before: None,
            })
            .unwrap(),
            0
        );
        let bytes = ob.quarantine_bytes();
        drop(ob);
        assert_eq!(reopened_quarantine_bytes(dir.path()), bytes);
    }

    #[test]
    fn purging_everything_empties_the_quarantine_durably_and_new_entries_still_fit() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(1 << 20, WhenFull::Block);
        c.max_quarantine_bytes = ByteSize::b(2_000);
        {
            let ob = Outbox::open(dir.path(), &c).unwrap();
            for i in 0..50 {
                ob.quarantine(&entry(i, "syntax", &[b'x'; 100])).unwrap();
            }
            let listed = ob.quarantine_list(usize::MAX).unwrap().len() as u64;
            assert_eq!(
                ob.quarantine_purge(&QuarantineFilter::default()).unwrap(),
                listed
            );
            assert_eq!(ob.quarantine_bytes(), 0);
            // No flush here: the purge made itself durable.
        }
        let ob = reopen_with(dir.path(), &c);
        assert_eq!(ob.quarantine_bytes(), 0);
        assert!(ob.quarantine_list(10).unwrap().is_empty());
        ob.quarantine(&entry(99, "syntax", b"after")).unwrap();
        let list = ob.quarantine_list(10).unwrap();
        assert_eq!(list.len(), 1);
        assert!(list[0].0 >= 50, "ids are not reused after a purge");
    }

    fn cp(key: &str, value: &[u8]) -> Checkpoint {
        Checkpoint {
            key: key.into(),
            value: value.to_vec(),
        }
    }

    #[test]
    fn a_checkpoint_written_with_readings_is_there_with_them_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let ob = reopen(dir.path());
            assert_eq!(ob.checkpoint("file:a.csv").unwrap(), None);
            let out = ob
                .append_with_checkpoints(
                    &Outbox::encode(&readings(4, 0)).unwrap(),
                    &[cp("file:a.csv", b"one"), cp("sql:s", b"x")],
                )
                .unwrap();
            assert_eq!(out.seqs, Some((1, 4)));
            // A later checkpoint with the same key in one batch wins.
            ob.append_with_checkpoints(
                &Outbox::encode(&readings(2, 10)).unwrap(),
                &[cp("file:a.csv", b"two"), cp("file:a.csv", b"three")],
            )
            .unwrap();
            ob.flush().unwrap();
        }
        let ob = reopen(dir.path());
        assert_eq!(ob.depth(), 6);
        assert_eq!(
            ob.checkpoint("file:a.csv").unwrap(),
            Some(b"three".to_vec())
        );
        assert_eq!(ob.checkpoint("sql:s").unwrap(), Some(b"x".to_vec()));
        assert_eq!(
            ob.checkpoints("file:").unwrap(),
            vec![("file:a.csv".to_owned(), b"three".to_vec())]
        );
        // Checkpoint keys are not records: counters and reads ignore them.
        assert_eq!(
            seqs(&ob.read_batch(0, usize::MAX, u64::MAX).unwrap()),
            (1..=6).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_checkpoint_without_readings_is_written_alone() {
        let dir = tempfile::tempdir().unwrap();
        {
            let ob = reopen(dir.path());
            let out = ob
                .append_with_checkpoints(&[], &[cp("rest:api", b"etag")])
                .unwrap();
            assert_eq!(out, AppendOutcome::default());
            ob.flush().unwrap();
        }
        let ob = reopen(dir.path());
        assert_eq!(ob.checkpoint("rest:api").unwrap(), Some(b"etag".to_vec()));
        assert_eq!((ob.depth(), ob.next_seq()), (0, 1));
        ob.remove_checkpoint("rest:api").unwrap();
        assert_eq!(ob.checkpoint("rest:api").unwrap(), None);
    }

    #[test]
    fn a_failed_append_writes_neither_readings_nor_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        {
            let ob = Outbox::open(dir.path(), &cfg(2_000, WhenFull::Block)).unwrap();
            ob.append_with_checkpoints(
                &Outbox::encode(&readings(10, 0)).unwrap(),
                &[cp("file:f", b"before")],
            )
            .unwrap();
            let depth = ob.depth();
            let mut full = false;
            let mut last_ok = b"before".to_vec();
            for i in 1..100 {
                let value = format!("at {i}").into_bytes();
                match ob.append_with_checkpoints(
                    &Outbox::encode(&readings(10, 100 * i)).unwrap(),
                    &[cp("file:f", &value)],
                ) {
                    Ok(_) => last_ok = value,
                    Err(OutboxError::Full { .. }) => {
                        full = true;
                        break;
                    }
                    Err(e) => panic!("{e}"),
                }
                assert_eq!(ob.checkpoint("file:f").unwrap(), Some(last_ok.clone()));
            }
            // The refused batch left the last cursor alone.
            assert_eq!(ob.checkpoint("file:f").unwrap(), Some(last_ok));
            assert!(full, "the cap was never reached");
            assert!(ob.depth() >= depth);
            // Too big for the whole outbox: refused up front, cursor untouched.
            let last = ob.checkpoint("file:f").unwrap();
            assert!(matches!(
                ob.append_with_checkpoints(
                    &Outbox::encode(&readings(500, 0)).unwrap(),
                    &[cp("file:f", b"never"), cp("file:g", b"never")],
                ),
                Err(OutboxError::TooBigForOutbox { .. })
            ));
            assert_eq!(ob.checkpoint("file:f").unwrap(), last);
            assert_eq!(ob.checkpoint("file:g").unwrap(), None);
            ob.flush().unwrap();
        }
        let ob = reopen_with(dir.path(), &cfg(2_000, WhenFull::Block));
        assert_eq!(ob.checkpoint("file:g").unwrap(), None);
        assert_ne!(ob.checkpoint("file:f").unwrap(), Some(b"never".to_vec()));
    }

    #[test]
    fn dropping_or_removing_records_never_touches_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outbox::open(dir.path(), &cfg(2_000, WhenFull::DropOldest)).unwrap();
        let mut dropped = 0;
        for i in 0..50 {
            dropped += ob
                .append_with_checkpoints(
                    &Outbox::encode(&readings(5, 10 * i)).unwrap(),
                    &[cp(&format!("file:{i}"), b"v")],
                )
                .unwrap()
                .dropped;
        }
        assert!(dropped > 0, "drop_oldest never ran");
        ob.flush().unwrap();
        let all = ob.read_batch(0, usize::MAX, u64::MAX).unwrap();
        let (first, last) = (all[0].seq, all.last().unwrap().seq);
        assert_eq!(ob.remove_range(first, last).unwrap(), all.len() as u64);
        assert_eq!(ob.depth(), 0);
        assert_eq!(ob.checkpoints("file:").unwrap().len(), 50);
        for i in 0..50 {
            assert_eq!(
                ob.checkpoint(&format!("file:{i}")).unwrap(),
                Some(b"v".to_vec())
            );
        }
        ob.flush().unwrap();
        drop(ob);
        let ob = reopen_with(dir.path(), &cfg(2_000, WhenFull::DropOldest));
        assert_eq!((ob.depth(), ob.bytes()), (0, 0));
        assert_eq!(ob.checkpoints("").unwrap().len(), 50);
    }

    #[test]
    fn a_second_open_of_a_locked_database_says_it_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _held = reopen(dir.path());
        match Outbox::open(dir.path(), &cfg(1 << 20, WhenFull::Block)) {
            Err(OutboxError::Locked { path }) => assert_eq!(path, dir.path()),
            other => panic!("expected Locked, got {other:?}"),
        }
    }
}
