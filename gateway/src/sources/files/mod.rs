//! File drop: CSV, JSON, NDJSON and SenML files renamed into a watched
//! directory, read in chunks, each chunk stored together with its cursor.
//!
//! - [`config`] — `[[files]]` and the writers' contract (rename complete files in).
//! - [`detect`] — the format, from the content.
//! - [`reader`] — bounded streaming row readers that resume from a [`reader::Cursor`].
//! - [`report`] — `<name>.report.json` beside each finished file.
//!
//! **Watching** is a timed directory listing (`scan_interval`), not inotify:
//! a listing every few seconds costs nothing on a Pi, works on every
//! filesystem (including network and FUSE mounts where inotify sees nothing),
//! cannot overflow an event queue, and the settle check (size and mtime
//! unchanged for `settle_time`) needs timed re-checks anyway.
//!
//! **Exactly once.** Chunk after chunk, one at a time: the chunk's readings
//! go to ingest as one envelope carrying the checkpoint
//! `file:<source>/<file>` = the cursor after the chunk, which ingest writes
//! in the same atomic outbox batch as the readings. The next chunk is read
//! only after that envelope is durable. After a crash the cursor is the
//! last durable one (if the file's identity — size, mtime, inode — still
//! matches) and reading continues at its byte offset: no row lost, none
//! repeated. Missing timestamps and relative SenML times resolve against the
//! file's mtime, so a re-read chunk gives identical readings.
//!
//! **Finishing** a file whose cursor says end-of-file: the report is written
//! (temp file + rename) into `done/` or `failed/`, then the file is renamed
//! there, then the checkpoint is removed. A crash in between repeats the
//! finishing steps on restart (the report is rewritten); a checkpoint whose
//! file has gone is removed at startup.
//!
//! **Bad rows** are quarantined (the first `max_report_errors` per file,
//! origin `file:<source>/<file>:<line>`) and listed in the report; the rest
//! of the file is still read. Quarantine envelopes go to ingest before the
//! chunk's envelope, so they are durable no later than its cursor; a crash
//! between the two may quarantine a bad row twice (diagnostic data only).

pub mod config;
pub mod detect;
pub mod reader;
pub mod report;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use protocol::Timestamp;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

pub use config::FileSourceConfig;
use detect::{FileFormat, HEAD_BYTES};
use reader::{Chunk, Cursor, FileIdentity, ReadSettings};
use report::{Outcome, Report};

use crate::envelope::{Commit, Content, Envelope};
use crate::metrics::Metrics;
use crate::outbox::{Outbox, OutboxError};

/// Metric label: the source's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct FileSourceLabel {
    pub source: String,
}

/// Metric label: the source's name and a file outcome (`done`, `failed`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct FileOutcomeLabel {
    pub source: String,
    pub outcome: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum FileSourceError {
    #[error("file source {source_name}: cannot create {path}: {error}")]
    Directory {
        source_name: String,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("file source {source_name}: checkpoint storage: {error}")]
    Checkpoint {
        source_name: String,
        error: OutboxError,
    },
}

/// Why one file could not be handled this time (it is tried again later).
#[derive(Debug, thiserror::Error)]
enum FileError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("checkpoint storage: {0}")]
    Outbox(#[from] OutboxError),
    #[error("ingest refused the chunk: {0}")]
    Commit(String),
    #[error("background task failed: {0}")]
    Join(String),
    /// Shutdown, or ingest is gone: stop without finishing the file.
    #[error("stopping")]
    Stopping,
}

/// One `[[files]]` source.
#[derive(Debug)]
pub struct FileSource {
    cfg: FileSourceConfig,
    outbox: Arc<Outbox>,
    metrics: Metrics,
    settings: ReadSettings,
}

/// What a scan saw of a file, for the settle check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    size: u64,
    mtime: Option<SystemTime>,
    since: Instant,
}

impl FileSource {
    pub fn new(cfg: FileSourceConfig, outbox: Arc<Outbox>, metrics: Metrics) -> Self {
        let settings = ReadSettings {
            chunk_rows: cfg.chunk_rows,
            max_row_bytes: usize::try_from(cfg.max_row_bytes.as_u64()).unwrap_or(usize::MAX),
            max_report_errors: cfg.max_report_errors,
            device: cfg.device.clone(),
            csv: cfg.csv.clone(),
        };
        FileSource {
            cfg,
            outbox,
            metrics,
            settings,
        }
    }

    fn key(&self, file: &str) -> String {
        format!("file:{}/{}", self.cfg.name, file)
    }

    /// Creates the directories and forgets checkpoints of files that are
    /// gone; called at startup, before the gateway reports ready.
    pub fn prepare(&self) -> Result<(), FileSourceError> {
        for dir in [
            self.cfg.directory.clone(),
            self.cfg.done_dir(),
            self.cfg.failed_dir(),
        ] {
            std::fs::create_dir_all(&dir).map_err(|error| FileSourceError::Directory {
                source_name: self.cfg.name.clone(),
                path: dir.clone(),
                error,
            })?;
        }
        self.forget_vanished_files()
            .map_err(|error| FileSourceError::Checkpoint {
                source_name: self.cfg.name.clone(),
                error,
            })?;
        Ok(())
    }

    /// Watches the directory until `shutdown` turns true.
    pub async fn run(
        self,
        tx: mpsc::Sender<Envelope>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), FileSourceError> {
        info!(source = %self.cfg.name, directory = %self.cfg.directory.display(), "File source watching.");
        let mut seen: HashMap<String, Seen> = HashMap::new();
        while !*shutdown.borrow() {
            let ready = self.scan(&mut seen);
            for name in ready {
                if *shutdown.borrow() {
                    break;
                }
                match self.process(&name, &tx, &mut shutdown).await {
                    Ok(()) => {
                        seen.remove(&name);
                    }
                    Err(FileError::Stopping) => return Ok(()),
                    Err(e) => {
                        warn!(source = %self.cfg.name, file = %name, error = %e, "File not finished; trying again later.");
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(self.cfg.scan_interval) => {}
                _ = shutdown.changed() => {}
            }
        }
        Ok(())
    }

    /// Removes checkpoints of files no longer in the directory (finished
    /// just before a crash, or removed by hand).
    fn forget_vanished_files(&self) -> Result<(), OutboxError> {
        let prefix = self.key("");
        for (key, _) in self.outbox.checkpoints(&prefix)? {
            let name = &key[prefix.len()..];
            if !self.cfg.directory.join(name).is_file() {
                debug!(source = %self.cfg.name, file = %name, "Removing the checkpoint of a file that is gone.");
                self.outbox.remove_checkpoint(&key)?;
            }
        }
        Ok(())
    }

    /// Files ready to read, oldest mtime first: complete names whose size and
    /// mtime have been stable for `settle_time`, or that have a checkpoint.
    fn scan(&self, seen: &mut HashMap<String, Seen>) -> Vec<String> {
        let entries = match std::fs::read_dir(&self.cfg.directory) {
            Ok(e) => e,
            Err(e) => {
                warn!(source = %self.cfg.name, error = %e, "Cannot list the drop directory.");
                return Vec::new();
            }
        };
        let now = Instant::now();
        let settle = self.cfg.settle_time;
        let mut ready = Vec::new();
        let mut present = Vec::new();
        for entry in entries.flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if !is_complete_name(&name) {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            present.push(name.clone());
            let mtime = meta.modified().ok();
            let current = Seen {
                size: meta.len(),
                mtime,
                since: now,
            };
            let stable_since = match seen.get(&name) {
                Some(s) if s.size == current.size && s.mtime == current.mtime => s.since,
                _ => {
                    seen.insert(name.clone(), current);
                    now
                }
            };
            let old_enough = mtime
                .and_then(|m| SystemTime::now().duration_since(m).ok())
                .is_some_and(|age| age >= settle);
            let has_checkpoint = matches!(self.outbox.checkpoint(&self.key(&name)), Ok(Some(_)));
            if has_checkpoint || (now.duration_since(stable_since) >= settle && old_enough) {
                ready.push((mtime, name));
            }
        }
        seen.retain(|k, _| present.contains(k));
        ready.sort();
        ready.into_iter().map(|(_, n)| n).collect()
    }

    /// Reads `name` chunk by chunk until it is finished (or stopping).
    async fn process(
        &self,
        name: &str,
        tx: &mpsc::Sender<Envelope>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), FileError> {
        let path = self.cfg.directory.join(name);
        let key = self.key(name);
        let meta = std::fs::metadata(&path)?;
        let identity = FileIdentity::of(&meta);
        let stored = self
            .outbox
            .checkpoint(&key)?
            .and_then(|v| Cursor::decode(&v));
        let (mut cursor, detected) = match stored {
            Some(c) if c.identity == identity => {
                info!(source = %self.cfg.name, file = %name, offset = c.offset, line = c.line, "Resuming a file from its checkpoint.");
                (c, true)
            }
            _ => self.start(&path, identity).await?,
        };
        let origin = format!("file:{}/{}", self.cfg.name, name);
        while !cursor.eof {
            if *shutdown.borrow() {
                return Err(FileError::Stopping);
            }
            let (p, c, s) = (path.clone(), cursor.clone(), self.settings.clone());
            let chunk: Chunk = tokio::task::spawn_blocking(move || reader::read_chunk(&p, &c, &s))
                .await
                .map_err(|e| FileError::Join(e.to_string()))??;
            self.commit_chunk(&origin, &key, &chunk, tx, shutdown)
                .await?;
            cursor = chunk.cursor;
        }
        self.finish(name, &key, &cursor, detected).await
    }

    /// A new file: refuse it when too large or unreadable, else detect its format.
    async fn start(
        &self,
        path: &Path,
        identity: FileIdentity,
    ) -> Result<(Cursor, bool), FileError> {
        if identity.size > self.cfg.max_file_bytes.as_u64() {
            return Ok((
                Cursor::failed(
                    identity,
                    FileFormat::Json,
                    "too_large",
                    format!(
                        "{} bytes; max_file_bytes is {}",
                        identity.size,
                        self.cfg.max_file_bytes.as_u64()
                    ),
                ),
                false,
            ));
        }
        let p = path.to_owned();
        let head = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            let mut head = Vec::with_capacity(HEAD_BYTES.min(1 << 16));
            std::fs::File::open(&p)?
                .take(HEAD_BYTES as u64)
                .read_to_end(&mut head)?;
            Ok(head)
        })
        .await
        .map_err(|e| FileError::Join(e.to_string()))??;
        let complete = (head.len() as u64) >= identity.size;
        let delimiter = self.cfg.csv.delimiter.and_then(|c| u8::try_from(c).ok());
        Ok(
            match detect::detect(&head, complete, self.cfg.format, delimiter) {
                Ok(format) => (Cursor::new(identity, format), true),
                Err(e) => (
                    Cursor::failed(identity, FileFormat::Json, e.reason_code(), e.to_string()),
                    false,
                ),
            },
        )
    }

    /// Quarantines the chunk's listed bad rows, then stores its readings with
    /// its cursor, and waits until that is durable.
    async fn commit_chunk(
        &self,
        origin: &str,
        key: &str,
        chunk: &Chunk,
        tx: &mpsc::Sender<Envelope>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), FileError> {
        let received = Timestamp::now();
        let label = FileSourceLabel {
            source: self.cfg.name.clone(),
        };
        for bad in &chunk.bad {
            self.metrics.files_bad_rows.get_or_create(&label).inc();
            if !bad.listed {
                continue;
            }
            let envelope = Envelope::unacked(
                format!("{origin}:{}", bad.line),
                received,
                Content::Rejected {
                    error: bad.error.clone(),
                    payload: bad.payload.clone(),
                    payload_len: bad.payload_len,
                },
            );
            send(tx, envelope, shutdown).await?;
        }
        let readings = chunk.readings.len() as u64;
        loop {
            let (envelope, done) = Envelope::new(
                origin.to_owned(),
                received,
                Content::Readings(chunk.readings.clone()),
            );
            send(
                tx,
                envelope.with_checkpoint(key, chunk.cursor.encode()),
                shutdown,
            )
            .await?;
            match done.await {
                Ok(Commit::Durable) => break,
                Ok(Commit::Failed(why)) => {
                    if *shutdown.borrow() {
                        return Err(FileError::Stopping);
                    }
                    warn!(source = %self.cfg.name, origin, error = %why, "Chunk not stored; retrying it.");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.changed() => return Err(FileError::Stopping),
                    }
                }
                Err(_) => return Err(FileError::Commit("ingest stopped".into())),
            }
        }
        self.metrics
            .files_readings
            .get_or_create(&label)
            .inc_by(readings);
        Ok(())
    }

    /// Report, move, forget: see the module docs for the crash analysis.
    async fn finish(
        &self,
        name: &str,
        key: &str,
        cursor: &Cursor,
        detected: bool,
    ) -> Result<(), FileError> {
        let outcome = Outcome::of(cursor);
        let dir = match outcome {
            Outcome::Done => self.cfg.done_dir(),
            Outcome::Failed => self.cfg.failed_dir(),
        };
        let (source, from, name_owned) = (
            self.cfg.name.clone(),
            self.cfg.directory.join(name),
            name.to_owned(),
        );
        let c = cursor.clone();
        let stored_as = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
            let stored_as = free_name(&dir, &name_owned);
            let report = Report::new(&source, &name_owned, &stored_as, &c, detected).to_json();
            write_atomically(&dir.join(format!("{stored_as}.report.json")), &report)?;
            std::fs::rename(&from, dir.join(&stored_as))?;
            sync_dir(&dir);
            Ok(stored_as)
        })
        .await
        .map_err(|e| FileError::Join(e.to_string()))??;
        self.outbox.remove_checkpoint(key)?;
        self.metrics
            .files
            .get_or_create(&FileOutcomeLabel {
                source: self.cfg.name.clone(),
                outcome: outcome.name(),
            })
            .inc();
        info!(
            source = %self.cfg.name,
            file = %name,
            stored_as = %stored_as,
            outcome = outcome.name(),
            rows = cursor.rows,
            readings = cursor.readings,
            bad_rows = cursor.bad_rows,
            fatal = cursor.fatal.as_ref().map(|f| f.detail.as_str()),
            "File finished."
        );
        Ok(())
    }
}

async fn send(
    tx: &mpsc::Sender<Envelope>,
    envelope: Envelope,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), FileError> {
    tokio::select! {
        r = tx.send(envelope) => r.map_err(|_| FileError::Stopping),
        _ = shutdown.changed() => Err(FileError::Stopping),
    }
}

/// Whether a name is a finished file by the writers' contract: not hidden,
/// not a temporary or partial download.
pub fn is_complete_name(name: &str) -> bool {
    const PARTIAL: [&str; 5] = [".tmp", ".part", ".partial", ".swp", ".crdownload"];
    !name.starts_with('.')
        && !name.ends_with('~')
        && !PARTIAL
            .iter()
            .any(|s| name.to_ascii_lowercase().ends_with(s))
        && !name.ends_with(".report.json")
}

/// `name`, or `name.1`, `name.2`… if `dir` already holds a file of that name.
fn free_name(dir: &Path, name: &str) -> String {
    if !dir.join(name).exists() {
        return name.to_owned();
    }
    (1u32..)
        .map(|i| format!("{name}.{i}"))
        .find(|n| !dir.join(n).exists())
        .unwrap_or_else(|| name.to_owned())
}

/// Writes via a temporary file, fsync and rename.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Makes renames in `dir` durable (best effort).
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}
