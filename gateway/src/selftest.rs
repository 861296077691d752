//! `outpost-gateway self-test`: a short end-to-end check of the parts of the
//! gateway that depend on the platform it runs on (sled storage and fsync,
//! the decoders, CBOR, the async runtime), without touching the network or
//! the real outbox. Used to prove a cross build works (under qemu in CI, or
//! on the Pi itself after installing).
//!
//! Steps: create a temporary outbox (removed afterwards), decode SenML JSON
//! payloads with the real decoder, push them through the real ingest stage
//! (group commit, fsync, commit results), read every record back in sequence
//! order and compare it with what went in.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::batch::OutboxItem;
use protocol::{DecodeContext, DecodeLimits, PayloadFormat, Reading, Timestamp};
use tokio::sync::{mpsc, watch};

use crate::config::{IngestConfig, StorageConfig};
use crate::envelope::{Commit, Content, Envelope};
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::outbox::{Outbox, OutboxError};

/// How long the whole self-test may take (qemu on a slow machine included).
const DEADLINE: Duration = Duration::from_secs(120);

/// Why the self-test failed.
#[derive(Debug, thiserror::Error)]
pub enum SelfTestError {
    #[error("cannot create the temporary directory {path}: {source}")]
    TempDir {
        path: String,
        source: std::io::Error,
    },
    #[error("outbox: {0}")]
    Outbox(#[from] OutboxError),
    #[error("decoding the test payload failed: {0}")]
    Decode(#[from] protocol::DecodeError),
    #[error("the ingest stage did not commit message {index}: {reason}")]
    Commit { index: usize, reason: String },
    #[error("read back {got} records, expected {expected}")]
    Count { got: usize, expected: usize },
    #[error("record {seq} differs: stored {stored:?}, sent {sent:?}")]
    Mismatch {
        seq: u64,
        stored: Box<Reading>,
        sent: Box<Reading>,
    },
    #[error("record {seq} is not a reading")]
    NotAReading { seq: u64 },
    #[error("the self-test did not finish within {0:?}")]
    Timeout(Duration),
    #[error("a blocking task failed: {0}")]
    Task(String),
}

/// What the self-test did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelfTestReport {
    /// Messages (SenML packs) pushed through ingest.
    pub messages: usize,
    /// Readings committed and read back identical.
    pub readings: usize,
    /// Wall time of ingest + read-back.
    pub elapsed: Duration,
}

/// Removes the temporary outbox directory when dropped.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn create() -> Result<Self, SelfTestError> {
        let nanos = Timestamp::now().0;
        let path =
            std::env::temp_dir().join(format!("outpost-self-test-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(|source| SelfTestError::TempDir {
            path: path.display().to_string(),
            source,
        })?;
        Ok(TempDir(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A SenML JSON pack a sensor could send: `channels` readings at one instant.
fn senml_pack(device: &str, t_seconds: i64, i: usize) -> String {
    format!(
        r#"[{{"bn":"{device}:","bt":{t_seconds},"n":"temperature","u":"Cel","v":{}}},{{"n":"humidity","u":"%RH","v":{}}},{{"n":"vibration","u":"m/s2","v":{}}}]"#,
        20.0 + (i % 10) as f64 * 0.25,
        40.0 + (i % 7) as f64,
        (i as f64 * 0.7).sin(),
    )
}

/// Runs the self-test with `messages` SenML packs (3 readings each).
pub async fn run(messages: usize) -> Result<SelfTestReport, SelfTestError> {
    match tokio::time::timeout(DEADLINE, run_inner(messages)).await {
        Ok(r) => r,
        Err(_) => Err(SelfTestError::Timeout(DEADLINE)),
    }
}

async fn run_inner(messages: usize) -> Result<SelfTestReport, SelfTestError> {
    let dir = TempDir::create()?;
    let started = Instant::now();
    let storage = StorageConfig {
        path: dir.path().join("outbox"),
        ..StorageConfig::default()
    };
    let path = storage.path.clone();
    let outbox = tokio::task::spawn_blocking(move || Outbox::open(&path, &storage))
        .await
        .map_err(|e| SelfTestError::Task(e.to_string()))??;
    let outbox = Arc::new(outbox);

    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::new(&mut registry);
    let ingest = Ingest::new(
        outbox.clone(),
        metrics,
        IngestConfig {
            queue_capacity: 64,
            max_commit_batch: 16,
            min_commit_interval: Duration::ZERO,
        },
        4096,
    );
    let (tx, rx) = mpsc::channel(64);
    let (_shutdown_tx, shutdown_rx) = watch::channel(false);
    let ingest_task = tokio::spawn(ingest.run(rx, shutdown_rx));

    // Decode with the real decoder, as the MQTT source does.
    let limits = DecodeLimits::default();
    let base = Timestamp::now().0 / 1_000_000_000;
    let mut sent: Vec<Reading> = Vec::new();
    let mut pending = Vec::with_capacity(messages);
    for i in 0..messages {
        let received = Timestamp::now();
        let payload = senml_pack("selftest-dev", base + i as i64, i);
        let readings = PayloadFormat::SenmlJson.decode(
            payload.as_bytes(),
            &DecodeContext::new(received),
            &limits,
        )?;
        sent.extend(readings.iter().cloned());
        let (envelope, done) =
            Envelope::new("self-test".into(), received, Content::Readings(readings));
        if tx.send(envelope).await.is_err() {
            return Err(SelfTestError::Commit {
                index: i,
                reason: "the ingest stage stopped".into(),
            });
        }
        pending.push(done);
    }
    drop(tx);
    for (index, done) in pending.into_iter().enumerate() {
        match done.await {
            Ok(Commit::Durable) => {}
            Ok(Commit::Failed(reason)) => return Err(SelfTestError::Commit { index, reason }),
            Err(_) => {
                return Err(SelfTestError::Commit {
                    index,
                    reason: "no commit result".into(),
                });
            }
        }
    }
    ingest_task
        .await
        .map_err(|e| SelfTestError::Task(e.to_string()))?;

    let o = outbox.clone();
    let expected = sent.len();
    let records = tokio::task::spawn_blocking(move || o.read_batch(0, expected + 1, u64::MAX))
        .await
        .map_err(|e| SelfTestError::Task(e.to_string()))??;
    if records.len() != expected {
        return Err(SelfTestError::Count {
            got: records.len(),
            expected,
        });
    }
    for (record, sent) in records.iter().zip(&sent) {
        #[allow(unreachable_patterns)] // OutboxItem may gain variants.
        let stored = match &record.item {
            OutboxItem::Reading(r) => r,
            _ => return Err(SelfTestError::NotAReading { seq: record.seq }),
        };
        // Identity and value must survive; quality flags may be added on the
        // way (e.g. an unsynchronised clock), and are not compared.
        let same = stored.device == sent.device
            && stored.channel == sent.channel
            && stored.ts == sent.ts
            && stored.value.to_bits() == sent.value.to_bits();
        if !same {
            return Err(SelfTestError::Mismatch {
                seq: record.seq,
                stored: Box::new(stored.clone()),
                sent: Box::new(sent.clone()),
            });
        }
    }
    let o = outbox.clone();
    tokio::task::spawn_blocking(move || o.flush())
        .await
        .map_err(|e| SelfTestError::Task(e.to_string()))??;
    // Close the database before its directory is removed.
    drop(outbox);
    Ok(SelfTestReport {
        messages,
        readings: expected,
        elapsed: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_self_test_passes_on_this_machine() {
        let report = run(20).await.unwrap();
        assert_eq!(report.messages, 20);
        assert_eq!(report.readings, 60);
    }

    #[test]
    fn the_test_payload_is_valid_senml() {
        let limits = DecodeLimits::default();
        let r = PayloadFormat::SenmlJson
            .decode(
                senml_pack("d", 1_700_000_000, 3).as_bytes(),
                &DecodeContext::new(Timestamp::now()),
                &limits,
            )
            .unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].device, "d");
        assert_eq!(r[0].channel, "temperature");
    }
}
