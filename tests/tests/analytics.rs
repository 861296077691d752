//! Edge analytics end to end: the simulator injects anomalies and writes
//! their ground truth; the gateway's analysis raises alerts on
//! `outpost/alerts/{device}`, which a `mosquitto_sub` records, and the sink
//! holds the same alerts (outbox → uplink → `GET /v1/alerts`). Precision and
//! recall are measured against the ground truth and printed; the asserted
//! floors are below the measured values with a margin (see the constants).
//!
//! Two detectors: the fallback (robust z-score, no model installed), and a
//! Gaussian (Mahalanobis) model trained by `outpost-cloud-sink train` on
//! normal data the same gateway delivered to the sink, exported as ONNX and
//! installed on the gateway.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use outpost_tests::{
    Gateway, GatewayOpts, Identity, Mosquitto, Proc, Sink, bin, free_port, run_sim, test_dir,
};

/// Simulated seconds per device; one reading pack per second per device.
const TICKS: u64 = 1500;
const DEVICES: u64 = 4;
/// Frames per window, hop, warm-up windows (the `[analysis.fallback]` below).
const WINDOW: i64 = 30;
const HOP: i64 = 10;
const WARMUP: i64 = 20;
/// Floors asserted on the fallback detector's quality; measured values are
/// printed. Measured on this seed (session 3): precision 0.60, recall 0.44
/// (16 anomalies after warm-up). The fallback scores each channel's window
/// mean and standard deviation on their own, while the simulated pump's
/// channels all follow one wandering load (time constant 60 s), so a step or
/// a stuck channel inside the load's range is often missed; that is what the
/// trained models (PCA, Mahalanobis) are for. The floors sit below the
/// measured values with room for frame-assembly timing differences.
const MIN_PRECISION: f64 = 0.4;
const MIN_RECALL: f64 = 0.3;
const CHANNELS: [&str; 5] = ["current", "flow", "pressure", "temperature", "vibration"];

#[derive(Debug)]
struct Truth {
    device: String,
    start: i64,
    end: i64,
    kind: String,
}

#[derive(Debug)]
struct AlertSeen {
    device: String,
    start: i64,
    end: i64,
}

fn read_truth(path: &Path) -> Vec<Truth> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            Truth {
                device: f[0].to_owned(),
                start: f[2].parse().unwrap(),
                end: f[3].parse().unwrap(),
                kind: f[4].to_owned(),
            }
        })
        .collect()
}

fn read_alerts(path: &Path) -> Vec<AlertSeen> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (topic, json) = l.split_once(' ')?;
            let v: serde_json::Value = serde_json::from_str(json).ok()?;
            let device = v["device"].as_str()?.to_owned();
            assert_eq!(topic, format!("outpost/alerts/{device}"));
            Some(AlertSeen {
                device,
                start: v["start"].as_i64()?,
                end: v["end"].as_i64()?,
            })
        })
        .collect()
}

/// `mosquitto_sub` writing every alert (topic and JSON) to `log`.
fn subscribe_alerts(broker: &Mosquitto, log: &Path) -> Proc {
    let sub = Proc::spawn(
        "mosquitto_sub",
        Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
            .args(["-t", "outpost/alerts/#", "-q", "1", "-v"]),
        log.to_owned(),
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    sub
}

/// Runs the simulator (QoS 1, one pack per device per simulated second)
/// from `start` with `anomaly_rate`, writing its ground truth to `truth`.
fn simulate(
    dir: &Path,
    broker: &Mosquitto,
    start: &str,
    ticks: u64,
    anomaly_rate: &str,
    seed: &str,
    truth: &Path,
) -> HashSet<Identity> {
    let count = (ticks * DEVICES).to_string();
    let acked = run_sim(
        dir,
        &[
            "--broker",
            &format!("127.0.0.1:{}", broker.port),
            "--devices",
            &DEVICES.to_string(),
            "--rate",
            "400",
            "--count",
            &count,
            "--sim-step",
            "1s",
            "--start-time",
            start,
            "--anomaly-rate",
            anomaly_rate,
            "--seed",
            seed,
            "--qos",
            "1",
            "--ground-truth",
            truth.to_str().unwrap(),
        ],
    )
    .unwrap();
    assert!(!acked.is_empty());
    acked
}

/// Waits until analysis has taken every acked reading and its scored-window
/// count settles, then until every raised alert is on the MQTT topic and in
/// the sink (the same ones). Returns the alerts.
fn settled_alerts(
    gw: &Gateway,
    sink: &Sink,
    acked: usize,
    scorer: &str,
    alerts_log: &Path,
) -> Vec<AlertSeen> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = -1.0;
    loop {
        let pushed = gw.metric("outpost_gateway_analysis_ring_pushed_total");
        let scored = gw.metric(&format!(
            "outpost_gateway_analysis_windows_scored_total{{scorer=\"{scorer}\"}}"
        )) + gw
            .metric("outpost_gateway_analysis_windows_skipped_total{reason=\"warmup\"}");
        if pushed >= acked as f64 && scored == last && scored > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "analysis did not settle:\n{}",
            gw.log_tail(30)
        );
        last = scored;
        std::thread::sleep(Duration::from_secs(2));
    }
    assert_eq!(
        gw.metric("outpost_gateway_analysis_ring_dropped_total"),
        0.0
    );
    let raised = gw.metric("outpost_gateway_analysis_anomalies_total");
    let deadline = Instant::now() + Duration::from_secs(60);
    let alerts = loop {
        let alerts = read_alerts(alerts_log);
        if alerts.len() as f64 >= raised || Instant::now() > deadline {
            break alerts;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(
        alerts.len() as f64,
        raised,
        "every raised alert is on the MQTT topic"
    );

    // The same alerts reached the sink through the outbox and the uplink.
    assert_eq!(
        gw.metric("outpost_gateway_analysis_alerts_stored_total"),
        raised,
        "every alert went into the outbox"
    );
    let url = format!("{}/v1/alerts?limit=100000", sink.url());
    let in_sink = outpost_tests::wait_for(Duration::from_secs(60), "alerts in the sink", || {
        let text = outpost_tests::reqwest::blocking_get_text(&url).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        (v["count"].as_f64()? >= raised).then_some(v)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", gw.log_tail(30)));
    assert_eq!(in_sink["count"].as_f64(), Some(raised));
    let mut sink_spans: Vec<(String, i64, i64)> = in_sink["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["device"].as_str().unwrap().to_owned(),
                a["start_ns"].as_i64().unwrap(),
                a["end_ns"].as_i64().unwrap(),
            )
        })
        .collect();
    let mut mqtt_spans: Vec<(String, i64, i64)> = alerts
        .iter()
        .map(|a| (a.device.clone(), a.start, a.end))
        .collect();
    sink_spans.sort();
    mqtt_spans.sort();
    assert_eq!(
        sink_spans, mqtt_spans,
        "the sink and the MQTT topic saw the same alerts"
    );
    alerts
}

/// Precision (alerts overlapping an injected anomaly) and recall (injected
/// anomalies starting at least `blind_ns` after the device's first reading
/// that some alert overlaps), printed with a per-kind breakdown.
fn quality(
    name: &str,
    alerts: &[AlertSeen],
    truth: &[Truth],
    acked: &HashSet<Identity>,
    blind_ns: i64,
) -> (f64, f64, usize) {
    let first_ts: HashMap<&str, i64> = acked.iter().fold(HashMap::new(), |mut m, id| {
        let e = m.entry(id.0.as_str()).or_insert(i64::MAX);
        *e = (*e).min(id.2);
        m
    });
    let overlaps =
        |a: &AlertSeen, t: &Truth| a.device == t.device && a.start <= t.end && t.start <= a.end;
    let tp = alerts
        .iter()
        .filter(|a| truth.iter().any(|t| overlaps(a, t)))
        .count();
    let eligible: Vec<&Truth> = truth
        .iter()
        .filter(|t| {
            first_ts
                .get(t.device.as_str())
                .is_some_and(|&f| t.start >= f + blind_ns)
        })
        .collect();
    let found = eligible
        .iter()
        .filter(|t| alerts.iter().any(|a| overlaps(a, t)))
        .count();
    let precision = if alerts.is_empty() {
        0.0
    } else {
        tp as f64 / alerts.len() as f64
    };
    let recall = if eligible.is_empty() {
        1.0
    } else {
        found as f64 / eligible.len() as f64
    };
    let mut by_kind: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for t in &eligible {
        let e = by_kind.entry(t.kind.as_str()).or_default();
        e.1 += 1;
        if alerts.iter().any(|a| overlaps(a, t)) {
            e.0 += 1;
        }
    }
    println!(
        "{name}: {} alerts, {tp} true; {} injected anomalies, {} eligible, {found} found; \
         precision {precision:.3}, recall {recall:.3}; by kind (found/eligible): {by_kind:?}",
        alerts.len(),
        truth.len(),
        eligible.len()
    );
    (precision, recall, eligible.len())
}

#[test]
fn injected_anomalies_raise_alerts_on_mqtt_with_a_measured_precision_and_recall() {
    let dir = test_dir();
    let dir = dir.path();
    let broker = Mosquitto::start(dir).unwrap();
    let sink = Sink::start(dir, "gw-test", free_port()).unwrap();
    let mut opts = GatewayOpts::new(broker.port, &sink);
    opts.extra = format!(
        r#"
[analysis]
shards = 2
batch_size = 32
batch_latency = "20ms"
hold = "2s"
reorder = "0s"
[analysis.fallback]
channels = ["current", "vibration", "pressure", "temperature", "flow"]
frame_period = "1s"
window_len = {WINDOW}
hop = {HOP}
warmup_windows = {WARMUP}
threshold = 8.0
k = 1
n = 1
[analysis.alerts]
min_interval = "1ms"
"#
    );
    let mut gw = Gateway::start(dir, &opts).unwrap();
    let alerts_log = dir.join("alerts.txt");
    let _sub = subscribe_alerts(&broker, &alerts_log);
    let truth_path = dir.join("truth.csv");
    let acked = simulate(
        dir,
        &broker,
        "2026-01-01T00:00:00Z",
        TICKS,
        "0.004",
        "11",
        &truth_path,
    );
    let alerts = settled_alerts(&gw, &sink, acked.len(), "fallback", &alerts_log);
    let truth = read_truth(&truth_path);
    // Anomalies the detector could see: after the device's warm-up windows.
    let warm = (WINDOW + (WARMUP - 1) * HOP + HOP) * 1_000_000_000;
    let (precision, recall, eligible) = quality("fallback detector", &alerts, &truth, &acked, warm);
    assert!(eligible >= 5, "too few anomalies to measure: {eligible}");
    assert!(
        precision >= MIN_PRECISION,
        "precision {precision:.3} < {MIN_PRECISION}"
    );
    assert!(recall >= MIN_RECALL, "recall {recall:.3} < {MIN_RECALL}");
    gw.terminate().unwrap();
}

/// The sink's readings of `sink` as a wide CSV (`device,time,<channels>`),
/// one row per device and time — what a user exports to train offline.
fn export_csv(sink: &Sink, path: &Path) -> usize {
    let url = format!("{}/v1/readings?limit=100000", sink.url());
    let v: serde_json::Value =
        serde_json::from_str(&outpost_tests::reqwest::blocking_get_text(&url).unwrap()).unwrap();
    let mut rows: BTreeMap<(String, i64), BTreeMap<String, f64>> = BTreeMap::new();
    for r in v["readings"].as_array().unwrap() {
        rows.entry((
            r["device"].as_str().unwrap().to_owned(),
            r["ts_ns"].as_i64().unwrap(),
        ))
        .or_default()
        .insert(
            r["channel"].as_str().unwrap().to_owned(),
            r["value"].as_f64().unwrap(),
        );
    }
    let mut csv = format!("device,time,{}\n", CHANNELS.join(","));
    let mut n = 0;
    for ((device, ts), values) in &rows {
        if values.len() != CHANNELS.len() {
            continue;
        }
        let cells: Vec<String> = CHANNELS.iter().map(|c| values[*c].to_string()).collect();
        csv.push_str(&format!("{device},{ts},{}\n", cells.join(",")));
        n += 1;
    }
    std::fs::write(path, csv).unwrap();
    n
}

#[test]
fn a_model_trained_in_the_sink_on_normal_data_runs_on_the_gateway_with_a_measured_precision_and_recall()
 {
    let dir = test_dir();
    let dir = dir.path();
    let broker = Mosquitto::start(dir).unwrap();
    let sink = Sink::start(dir, "gw-test", free_port()).unwrap();

    // 1. Normal operation, no analysis: the data to learn from.
    let learn_dir = dir.join("learn");
    std::fs::create_dir_all(&learn_dir).unwrap();
    let mut gw = Gateway::start(&learn_dir, &GatewayOpts::new(broker.port, &sink)).unwrap();
    let normal = simulate(
        dir,
        &broker,
        "2026-01-01T00:00:00Z",
        1200,
        "0",
        "5",
        &dir.join("normal-truth.csv"),
    );
    outpost_tests::assert_exactly_once(&sink, &normal, Duration::from_secs(60), &gw);
    gw.terminate().unwrap();
    let csv = dir.join("train.csv");
    let rows = export_csv(&sink, &csv);
    assert_eq!(rows as u64, 1200 * DEVICES);

    // 2. Train, validate, export (the ONNX is checked in tract before it is written).
    let model_dir = dir.join("model");
    let out = Command::new(bin("outpost-cloud-sink"))
        .args(["train", "--input"])
        .arg(&csv)
        .args(["--time-column", "time", "--device-column", "device"])
        .args(["--family", "gaussian", "--window", &WINDOW.to_string()])
        .args(["--hop", &HOP.to_string(), "--stats", "mean,std"])
        .args(["--target-false-alarm-rate", "0.002"])
        // The simulator's anomalies last a few windows of 10 s; the
        // unlabelled default (an EWMA over about ten windows) is for
        // process faults that persist, and would average these away.
        .args(["--smoothing", "none", "--out"])
        .arg(&model_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "train failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // 3. The gateway runs it on a day with anomalies.
    let run_dir = dir.join("run");
    std::fs::create_dir_all(&run_dir).unwrap();
    let mut opts = GatewayOpts::new(broker.port, &sink);
    opts.extra = format!(
        r#"
[analysis]
batch_size = 32
batch_latency = "20ms"
hold = "2s"
reorder = "0s"
[analysis.model]
onnx = "{}"
manifest = "{}"
[analysis.alerts]
min_interval = "1ms"
"#,
        model_dir.join("model.onnx").display(),
        model_dir.join("manifest.json").display()
    );
    let mut gw = Gateway::start(&run_dir, &opts).unwrap();
    assert!(gw.metric("outpost_gateway_analysis_model_version") >= 1.0);
    let alerts_log = dir.join("alerts.txt");
    let _sub = subscribe_alerts(&broker, &alerts_log);
    let truth_path = dir.join("truth.csv");
    let acked = simulate(
        dir,
        &broker,
        "2026-01-03T00:00:00Z",
        TICKS,
        "0.004",
        "11",
        &truth_path,
    );
    let alerts = settled_alerts(&gw, &sink, acked.len(), "model", &alerts_log);
    let truth = read_truth(&truth_path);
    let (precision, recall, eligible) = quality(
        "gaussian model",
        &alerts,
        &truth,
        &acked,
        WINDOW * 1_000_000_000,
    );
    assert!(eligible >= 5, "too few anomalies to measure: {eligible}");
    assert!(
        precision >= MIN_MODEL_PRECISION,
        "precision {precision:.3} < {MIN_MODEL_PRECISION}"
    );
    assert!(
        recall >= MIN_MODEL_RECALL,
        "recall {recall:.3} < {MIN_MODEL_RECALL}"
    );
    gw.terminate().unwrap();
}

/// Floors for the trained Gaussian model. Measured (session 8, threshold on
/// out-of-fold scores): precision 0.80, recall 0.86 over 22 anomalies
/// (session 3, threshold on the model's own training scores: 0.51 / 0.77;
/// the fallback on a comparable day: 0.60 / 0.44): the model sees the
/// channels together, so a step, a stuck channel or a noise burst that
/// stays inside the load's range still breaks the learned correlation. Its
/// false alarms come from a threshold set for a 0.2 % false-alarm rate per
/// window on 20 minutes of training data. Floors below the measured values
/// with a margin.
const MIN_MODEL_PRECISION: f64 = 0.5;
const MIN_MODEL_RECALL: f64 = 0.55;
