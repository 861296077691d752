//! Analysis wired to the real ingest stage and outbox: ring overflow is
//! counted while every envelope is still acknowledged; alerts are raised by
//! the worker threads; a model swap keeps the windows; a model with a
//! categorical channel scores its one-hot codes; a model with a running
//! baseline scores each device against its own level; a model's smoothing
//! decides on the smoothed score, as offline scoring does.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use outpost_gateway::analysis::alerts::Alert;
use outpost_gateway::analysis::config::{AnalysisConfig, FallbackConfig};
use outpost_gateway::analysis::detector::ModelSlots;
use outpost_gateway::analysis::metrics::ScorerLabel;
use outpost_gateway::analysis::runtime::Analysis;
use outpost_gateway::analysis::worker::Shard;
use outpost_gateway::analysis::{AnalysisMetrics, Feed, Span};
use outpost_gateway::config::{IngestConfig, StorageConfig};
use outpost_gateway::envelope::{Commit, Content, Envelope};
use outpost_gateway::ingest::Ingest;
use outpost_gateway::metrics::Metrics;
use outpost_gateway::outbox::Outbox;
use outpost_models::Model;
use outpost_models::builder::graphs;
use prometheus_client::registry::Registry;
use protocol::decision::{Decider, DecisionSpec, Smoothing};
use protocol::features::{BaselineSpec, CategoricalSpec, FeatureSpec, Stat};
use protocol::manifest::{
    Hysteresis, InputSpec, MANIFEST_FORMAT, ModelFamily, ModelManifest, ModelMetadata, ScoreSpec,
};
use protocol::{Reading, Timestamp};
use tokio::sync::{mpsc, watch};

fn outbox(dir: &tempfile::TempDir) -> Arc<Outbox> {
    let cfg = StorageConfig {
        path: dir.path().join("outbox"),
        ..StorageConfig::default()
    };
    Arc::new(Outbox::open(&cfg.path, &cfg).unwrap())
}

/// `pump-{d}` at second `t`: channels a ≈ 10, b ≈ 100, plus `bump` on a.
fn pack(device: &str, t: i64, bump: f64) -> Vec<Reading> {
    let wobble = ((t * 7919) % 13) as f64 / 13.0 - 0.5;
    vec![
        Reading::new(
            device,
            "a",
            Timestamp(t * 1_000_000_000),
            10.0 + wobble + bump,
        )
        .unwrap(),
        Reading::new(device, "b", Timestamp(t * 1_000_000_000), 100.0 - wobble).unwrap(),
    ]
}

async fn ingest_all(ingest: Ingest, packs: Vec<Vec<Reading>>) -> usize {
    let (tx, rx) = mpsc::channel(64);
    let (_stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(ingest.run(rx, stop_rx));
    let mut waiting = Vec::new();
    for readings in packs {
        let (env, done) =
            Envelope::new("test".into(), Timestamp::now(), Content::Readings(readings));
        tx.send(env).await.unwrap();
        waiting.push(done);
    }
    drop(tx);
    let mut acked = 0;
    for done in waiting {
        if done.await.unwrap() == Commit::Durable {
            acked += 1;
        }
    }
    task.await.unwrap();
    acked
}

#[tokio::test]
async fn a_burst_overflows_the_ring_is_counted_and_every_envelope_is_still_acked() {
    let dir = tempfile::tempdir().unwrap();
    let ob = outbox(&dir);
    let metrics = Metrics::new(&mut Registry::default());
    let am = AnalysisMetrics::new(&mut Registry::default());
    // No consumer drains this ring: everything past 64 readings overflows.
    let (feed, _consumers) = Feed::new(1, 64, am.clone());
    let ingest = Ingest::new(ob.clone(), metrics.clone(), IngestConfig::default(), 4096)
        .with_analysis(Arc::new(feed));
    let packs: Vec<Vec<Reading>> = (0..500).map(|t| pack("pump-1", t, 0.0)).collect();
    let acked = ingest_all(ingest, packs).await;
    assert_eq!(
        acked, 500,
        "ingest must ack every envelope whatever the rings do"
    );
    assert_eq!(metrics.readings_committed.get(), 1000);
    assert_eq!(am.ring_pushed.get(), 64);
    assert_eq!(am.ring_dropped.get(), 1000 - 64);
}

fn fallback_cfg() -> AnalysisConfig {
    AnalysisConfig {
        shards: 2,
        batch_size: 8,
        batch_latency: Duration::from_millis(5),
        hold: Duration::from_secs(1),
        reorder: Duration::ZERO,
        fallback: FallbackConfig {
            channels: vec!["a".into(), "b".into()],
            frame_period: Duration::from_secs(1),
            window_len: Span::Frames(4),
            hop: Span::Frames(4),
            warmup_windows: 13,
            threshold: 6.0,
            k: 1,
            n: 1,
        },
        ..AnalysisConfig::default()
    }
}

#[tokio::test]
async fn worker_threads_raise_one_alert_per_injected_spike_from_committed_readings() {
    let dir = tempfile::tempdir().unwrap();
    let ob = outbox(&dir);
    let metrics = Metrics::new(&mut Registry::default());
    let am = AnalysisMetrics::new(&mut Registry::default());
    let analysis = Analysis::start(&fallback_cfg(), None, Some(ob.clone()), am.clone()).unwrap();
    let ingest = Ingest::new(ob.clone(), metrics, IngestConfig::default(), 4096)
        .with_analysis(analysis.feed.clone());
    let mut packs = Vec::new();
    for t in 0..300 {
        for d in 0..4 {
            let bump = if d == 2 && (150..152).contains(&t) {
                50.0
            } else {
                0.0
            };
            packs.push(pack(&format!("pump-{d}"), t, bump));
        }
    }
    assert_eq!(ingest_all(ingest, packs).await, 1200);
    let deadline = Instant::now() + Duration::from_secs(60);
    while am.anomalies.get() < 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    analysis.stop().await;
    assert_eq!(am.anomalies.get(), 1, "one spike on one device, one alert");
    assert_eq!(am.ring_dropped.get(), 0);
    // The alert is in the outbox after the readings, for the uplink.
    assert_eq!(am.alerts_stored.get(), 1);
    let records = ob.read_batch(1, 10_000, u64::MAX).unwrap();
    let alerts: Vec<&protocol::alert::Alert> = records
        .iter()
        .filter_map(|r| match &r.item {
            protocol::batch::OutboxItem::Alert(a) => Some(a),
            _ => None,
        })
        .collect();
    assert_eq!(alerts.len(), 1, "{} records", records.len());
    assert_eq!(alerts[0].device, "pump-2");
    assert_eq!(records.len(), 1200 * 2 + 1, "every reading and the alert");
    let scored = am
        .windows_scored
        .get_or_create(&ScorerLabel { scorer: "fallback" })
        .get();
    // 4 devices × (75 windows − 13 warm-up − the last, not yet final).
    assert!(scored >= 4 * 61, "{scored}");
}

fn manifest(threshold: f64) -> ModelManifest {
    let channels = vec!["a".to_string(), "b".to_string()];
    ModelManifest {
        format: MANIFEST_FORMAT,
        name: "energy".into(),
        version: 3,
        family: ModelFamily::Other,
        input: InputSpec {
            channels: channels.clone(),
            window_len: 4,
            hop: 4,
            frame_period: Duration::from_secs(1),
        },
        features: FeatureSpec {
            channels,
            stats: vec![Stat::Mean],
            bands: None,
            raw: false,
            categorical: Vec::new(),
            baseline: None,
        },
        score: ScoreSpec {
            threshold,
            threshold_rule: None,
            smoothing: Default::default(),
            hysteresis: Hysteresis { k: 1, n: 1 },
        },
        metadata: ModelMetadata::default(),
    }
}

#[test]
fn a_hot_swapped_model_with_the_same_input_keeps_the_windows_and_takes_over_scoring() {
    let am = AnalysisMetrics::new(&mut Registry::default());
    let slots = Arc::new(ModelSlots::new(None, None, am.clone()));
    let mut shard = Shard::new(fallback_cfg(), slots.clone(), am.clone()).unwrap();
    let mut alerts: Vec<Alert> = Vec::new();
    let now = Instant::now();
    for t in 0..40 {
        for r in pack("pump-1", t, 0.0) {
            shard.push(&r, now, &mut |a| alerts.push(a));
        }
    }
    shard.flush(now, &mut |a| alerts.push(a));
    assert_eq!(shard.devices(), 1);
    // Mean squared z of (mean a, mean b) around (10, 100).
    let onnx = graphs::standardized_energy(&[10.0, 100.0], &[1.0, 1.0]).unwrap();
    slots.swap_active(Some(Model::load(&onnx, manifest(100.0)).unwrap()));
    assert_eq!(am.model_version.get(), 3);
    for t in 40..80 {
        let bump = if (60..64).contains(&t) { 50.0 } else { 0.0 };
        for r in pack("pump-1", t, bump) {
            shard.push(&r, now, &mut |a| alerts.push(a));
        }
    }
    shard.flush(now, &mut |a| alerts.push(a));
    assert_eq!(shard.devices(), 1, "the device's state survived the swap");
    let by_model = am
        .windows_scored
        .get_or_create(&ScorerLabel { scorer: "model" })
        .get();
    assert_eq!(
        by_model, 10,
        "windows ending at 43, 47, …, 79 are the model's"
    );
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].model, "energy");
    assert_eq!(alerts[0].model_version, 3);
    assert_eq!(alerts[0].start, Timestamp(60 * 1_000_000_000));
}

/// `pump-1` at second `t`: `a`, `b`, then `mode` read twice within the
/// second (at +0.2 s and +0.7 s; the frame at `t + 1` holds the later).
fn pack_with_mode(t: i64, early: f64, late: f64) -> Vec<Reading> {
    let mut readings = pack("pump-1", t, 0.0);
    for (offset, mode) in [(200_000_000, early), (700_000_000, late)] {
        readings.push(
            Reading::new(
                "pump-1",
                "mode",
                Timestamp(t * 1_000_000_000 + offset),
                mode,
            )
            .unwrap(),
        );
    }
    readings
}

/// Feeds `readings` to one shard scoring with `model`, then flushes it:
/// the alerts, and how many windows the model scored.
fn run_shard(model: Model, readings: impl IntoIterator<Item = Reading>) -> (Vec<Alert>, u64) {
    let am = AnalysisMetrics::new(&mut Registry::default());
    let slots = Arc::new(ModelSlots::new(Some(model), None, am.clone()));
    let mut shard = Shard::new(fallback_cfg(), slots, am.clone()).unwrap();
    let mut alerts: Vec<Alert> = Vec::new();
    let now = Instant::now();
    for r in readings {
        shard.push(&r, now, &mut |a| alerts.push(a));
    }
    shard.flush(now, &mut |a| alerts.push(a));
    let by_model = am
        .windows_scored
        .get_or_create(&ScorerLabel { scorer: "model" })
        .get();
    (alerts, by_model)
}

#[test]
fn a_model_with_a_categorical_channel_scores_the_mode_of_the_windows_last_frame() {
    // Features: mean a, mean b, mode=0, mode=1. The model's energy is the
    // mean squared z with centre (10, 100, 1, 0): mode 0 scores ≈ 0; mode 1
    // puts ±10 on both one-hot columns, (100 + 100) / 4 = 50; a mode of 0.5
    // (an average of two readings) would match no code: 100 / 4 = 25.
    let mut man = manifest(10.0);
    man.input.channels.push("mode".into());
    man.features.categorical = vec![CategoricalSpec {
        channel: "mode".into(),
        codes: vec![0, 1],
    }];
    let onnx =
        graphs::standardized_energy(&[10.0, 100.0, 1.0, 0.0], &[1.0, 1.0, 0.1, 0.1]).unwrap();
    let model = Model::load(&onnx, man).unwrap();
    assert_eq!(model.feature_count(), 4);
    // Seconds 60–62: mode 0 then 1 within each second. Frames 61–63 hold 1;
    // the window of frames 60–63 ends in mode 1.
    let (alerts, by_model) = run_shard(
        model,
        (0..80).flat_map(|t| {
            let late = if (60..63).contains(&t) { 1.0 } else { 0.0 };
            pack_with_mode(t, 0.0, late)
        }),
    );
    assert!(by_model >= 19, "windows ending at 3, 7, …, 79: {by_model}");
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let alert = &alerts[0];
    assert_eq!(alert.model, "energy");
    assert_eq!(alert.start, Timestamp(60 * 1_000_000_000));
    // The mode's one-hot moved the score, by exactly the code columns:
    // (mean a − 10)² + (mean b − 100)² ≤ 2 · 0.5², so within 0.125 of 50.
    assert!((alert.score - 50.0).abs() < 0.2, "score {}", alert.score);
}

#[test]
fn a_model_with_a_running_baseline_scores_each_device_against_its_own_level() {
    // Features: a.baseline_dev, b.baseline_dev (τ = 60 s); the score is
    // their mean square. pump-2 runs 20 above pump-1 all along: a fleet
    // level would call it anomalous, its own baseline does not. pump-1
    // steps up by 5 at second 60: its window 60–63 deviates by 5 in `a`,
    // (25 + ~0) / 2 ≈ 12.5 against the threshold 2.
    let mut man = manifest(2.0);
    man.features.stats = Vec::new();
    man.features.baseline = Some(BaselineSpec {
        time_constant: Duration::from_secs(60),
    });
    let onnx = graphs::standardized_energy(&[0.0, 0.0], &[1.0, 1.0]).unwrap();
    let model = Model::load(&onnx, man).unwrap();
    assert_eq!(model.feature_count(), 2);
    let (alerts, by_model) = run_shard(
        model,
        (0..80).flat_map(|t| {
            let step = if t >= 60 { 5.0 } else { 0.0 };
            pack("pump-1", t, step)
                .into_iter()
                .chain(pack("pump-2", t, 20.0))
        }),
    );
    assert!(
        by_model >= 38,
        "two pumps, windows ending at 3, 7, …: {by_model}"
    );
    assert!(
        alerts.iter().all(|a| a.device == "pump-1"),
        "pump-2 is steady at its own level: {alerts:?}"
    );
    let first = alerts.first().expect("pump-1's step raises an alert");
    assert_eq!(first.start, Timestamp(60 * 1_000_000_000));
    // ±0.5 of wobble in the window means around the 5.
    assert!((first.score - 12.5).abs() < 3.0, "score {}", first.score);
}

#[test]
fn a_smoothed_model_ignores_a_one_window_spike_and_alarms_on_a_lasting_shift() {
    // Energy = (z_a² + z_b²) / 2 around (10, 100); `a` up by 6 scores ≈ 18
    // against the threshold 10. Windows of 4 s, one every 4 s.
    let spike_then_shift = |t: i64| {
        if (40..44).contains(&t) || t >= 80 {
            6.0
        } else {
            0.0
        }
    };
    let onnx = graphs::standardized_energy(&[10.0, 100.0], &[1.0, 1.0]).unwrap();
    let readings = || (0..120).flat_map(|t| pack("pump-1", t, spike_then_shift(t)));

    // The raw score alarms on the spike window 40–43.
    let (alerts, _) = run_shard(Model::load(&onnx, manifest(10.0)).unwrap(), readings());
    assert_eq!(alerts[0].start, Timestamp(40 * 1_000_000_000), "{alerts:?}");

    // EWMA 0.3: the spike moves the average to ≈ 5.4 (no alarm); under the
    // lasting shift it goes 5.4, 9.2, 11.8: over 10 in the shift's third
    // window (80–83, 84–87, 88–91).
    let mut man = manifest(10.0);
    man.score.smoothing = Smoothing::Ewma(0.3);
    let (alerts, _) = run_shard(Model::load(&onnx, man).unwrap(), readings());
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let alert = &alerts[0];
    let start_s = alert.start.0 / 1_000_000_000;
    assert!((80..=92).contains(&start_s), "alarm starts at {start_s} s");
    // The alert carries the smoothed score the threshold was applied to.
    assert!(
        alert.score > 10.0 && alert.score < 17.0,
        "score {}",
        alert.score
    );
    // The same raw scores through the offline decision give the same window.
    let raw: Vec<f64> = (0..30)
        .map(|w| if w == 10 || w >= 20 { 18.0 } else { 0.05 })
        .collect();
    let spec = DecisionSpec {
        smoothing: Smoothing::Ewma(0.3),
        threshold: 10.0,
        k: 1,
        n: 1,
    };
    let first = Decider::run(spec, &raw)
        .iter()
        .position(|d| d.anomalous)
        .unwrap();
    assert_eq!(first as i64 * 4, start_s, "offline and gateway agree");
}
