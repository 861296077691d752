//! `outpost-gateway self-test`: a short end-to-end check of the parts of the
//! gateway that depend on the platform it runs on (outbox storage and fsync,
//! the decoders, CBOR, the async runtime), without touching the network or
//! the real outbox. Used to prove a cross build works (under qemu in CI, or
//! on the Pi itself after installing).
//!
//! Steps: create a temporary outbox (removed afterwards), decode SenML JSON
//! payloads with the real decoder, push them through the real ingest stage
//! (group commit, fsync, commit results), read every record back in sequence
//! order and compare it with what went in. Then score windows of those
//! readings with an ONNX model built here and run by tract (its kernels are
//! per CPU architecture), through the analysis worker's code, and compare the
//! scores with the plain-Rust reference evaluation of the same graph.

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
    #[error("model: {0}")]
    Model(String),
    #[error(
        "model scores differ from the reference: window {window}: tract {tract}, reference {reference}"
    )]
    ModelParity {
        window: usize,
        tract: f64,
        reference: f64,
    },
}

/// What the self-test did.
#[derive(Debug, Clone, PartialEq)]
pub struct SelfTestReport {
    /// Messages (SenML packs) pushed through ingest.
    pub messages: usize,
    /// Readings committed and read back identical.
    pub readings: usize,
    /// Wall time of ingest + read-back.
    pub elapsed: Duration,
    /// Windows the test model scored through the analysis worker.
    pub windows_scored: u64,
    /// Largest |tract − reference| / max(|reference|, 1) over those windows' scores.
    pub max_score_diff: f64,
}

/// Tract must match the reference evaluation this closely (relative to the
/// score's magnitude above 1), as the training export check demands.
const PARITY: f64 = 1e-5;

/// Scores windows of `readings` (those of the self-test packs) with a
/// standardised-energy ONNX model through [`Shard`], the analysis worker's
/// core, and checks each score against [`ReferenceModel`].
///
/// [`Shard`]: crate::analysis::worker::Shard
/// [`ReferenceModel`]: outpost_models::ReferenceModel
fn score_windows(readings: &[Reading]) -> Result<(u64, f64), SelfTestError> {
    use crate::analysis::config::AnalysisConfig;
    use crate::analysis::detector::ModelSlots;
    use crate::analysis::metrics::{AnalysisMetrics, ScorerLabel};
    use crate::analysis::worker::Shard;
    use outpost_models::builder::graphs;
    use outpost_models::{Model, ReferenceModel};
    use protocol::features::{FeatureExtractor, FeatureSpec, Stat, Window};
    use protocol::manifest::{
        Hysteresis, InputSpec, MANIFEST_FORMAT, ModelFamily, ModelManifest, ModelMetadata,
        ScoreSpec,
    };

    const WINDOW: usize = 10;
    let channels: Vec<String> = ["temperature", "humidity", "vibration"]
        .map(String::from)
        .to_vec();
    let features = FeatureSpec {
        channels: channels.clone(),
        stats: vec![Stat::Mean, Stat::Std],
        bands: None,
        raw: false,
        categorical: Vec::new(),
        baseline: None,
    };
    let manifest = ModelManifest {
        format: MANIFEST_FORMAT,
        name: "self-test".into(),
        version: 1,
        family: ModelFamily::Other,
        input: InputSpec {
            channels: channels.clone(),
            window_len: WINDOW,
            hop: WINDOW,
            frame_period: Duration::from_secs(1),
        },
        features: features.clone(),
        score: ScoreSpec {
            threshold: 1e9,
            threshold_rule: None,
            smoothing: Default::default(),
            hysteresis: Hysteresis { k: 1, n: 1 },
        },
        metadata: ModelMetadata::default(),
    };
    let model_err = |e: &dyn std::fmt::Display| SelfTestError::Model(e.to_string());
    let means = [21.0, 43.0, 0.0, 1.0, 3.0, 0.5];
    let scales = [1.0, 2.0, 0.7, 0.5, 2.0, 0.3];
    let onnx = graphs::standardized_energy(&means, &scales).map_err(|e| model_err(&e))?;
    let model = Model::load(&onnx, manifest).map_err(|e| model_err(&e))?;
    let reference = ReferenceModel::from_bytes(&onnx).map_err(|e| model_err(&e))?;

    // The worker's path: frames, windows, features, batched tract inference.
    let metrics = AnalysisMetrics::new(&mut prometheus_client::registry::Registry::default());
    let slots = std::sync::Arc::new(ModelSlots::new(Some(model), None, metrics.clone()));
    let cfg = AnalysisConfig {
        batch_size: 8,
        hold: Duration::from_secs(1),
        reorder: Duration::ZERO,
        ..AnalysisConfig::default()
    };
    let mut shard = Shard::new(cfg, slots.clone(), metrics.clone()).map_err(|e| model_err(&e))?;
    let now = Instant::now();
    for r in readings {
        shard.push(r, now, &mut |_| {});
    }
    shard.flush(now, &mut |_| {});
    let scored = metrics
        .windows_scored
        .get_or_create(&ScorerLabel { scorer: "model" })
        .get();
    if scored == 0 {
        return Err(SelfTestError::Model("no window was scored".into()));
    }

    // The same windows, scored directly by tract and by the reference.
    let mut extractor = FeatureExtractor::new(&features, WINDOW).map_err(|e| model_err(&e))?;
    let width = extractor.len();
    let frames = readings.len() / channels.len();
    let mut rows: Vec<f32> = Vec::new();
    let mut buf = vec![0.0f64; width];
    for w in 0..frames / WINDOW {
        let values: Vec<f64> = readings[w * WINDOW * 3..(w + 1) * WINDOW * 3]
            .iter()
            .map(|r| r.value)
            .collect();
        let window = Window::try_new(&values, channels.len(), 1.0).map_err(|e| model_err(&e))?;
        extractor
            .extract(&window, &mut buf)
            .map_err(|e| model_err(&e))?;
        rows.extend(buf.iter().map(|&v| v as f32));
    }
    let active = slots
        .active()
        .ok_or_else(|| SelfTestError::Model("the model slot is empty".into()))?;
    let tract = active.score(&rows).map_err(|e| model_err(&e))?;
    let want = reference.scores(&rows, width).map_err(|e| model_err(&e))?;
    let mut max_diff = 0.0f64;
    for (window, (&t, &r)) in tract.iter().zip(&want).enumerate() {
        let diff = (f64::from(t) - r).abs() / r.abs().max(1.0);
        if diff > PARITY {
            return Err(SelfTestError::ModelParity {
                window,
                tract: f64::from(t),
                reference: r,
            });
        }
        max_diff = max_diff.max(diff);
    }
    Ok((scored, max_diff))
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
            max_commit_delay: Duration::ZERO,
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
    let elapsed = started.elapsed();
    let (windows_scored, max_score_diff) =
        tokio::task::spawn_blocking(move || score_windows(&sent))
            .await
            .map_err(|e| SelfTestError::Task(e.to_string()))??;
    Ok(SelfTestReport {
        messages,
        readings: expected,
        elapsed,
        windows_scored,
        max_score_diff,
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
        // 20 frames, windows of 10: the second is cut when frame 20 closes it.
        assert!(report.windows_scored >= 1, "{report:?}");
        assert!(report.max_score_diff <= PARITY, "{report:?}");
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
