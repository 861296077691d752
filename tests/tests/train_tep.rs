//! Issue 15: detection that holds on a real plant, the Tennessee Eastman
//! process (`tests/data/tep`: 52 variables, one sample every 3 minutes;
//! README and LICENSE there), with the options a user gets by default.
//!
//! 1. `outpost-cloud-sink train --input train_normal.csv --time-column time`
//!    — no family, no labels: `auto` compares the one-class families on
//!    simulated sensor shifts, calibrates the threshold on out-of-fold
//!    scores and smooths the scores (EWMA) the way the gateway will. The
//!    ONNX export must pass its tract parity check.
//! 2. `outpost-cloud-sink score` on `test_normal.csv` (every alarm is
//!    false) and the 21 fault files (fault on from row 161): the alarm
//!    column is what a gateway decides on the same windows.
//!
//! Asserted, as the issue asks: false alarms on `test_normal.csv` ≤ 2 % and
//! mean detection over the 18 detectable faults ≥ 0.85. Measured with these
//! defaults (BENCHMARKS.md, "Detection on a real plant"): 0.6 % and 0.93.
//! The textbook PCA of the literature, on the same files: 7.2 % and 0.81.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use outpost_tests::{bin, test_dir};

const MAX_FALSE_ALARM_RATE: f64 = 0.02;
const MIN_MEAN_DETECTION: f64 = 0.85;
/// Faults the literature leaves out of the mean.
const UNDETECTABLE: [usize; 3] = [3, 9, 15];

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/tep")
}

fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The `anomaly` label of every data row of a TEP CSV.
fn labels(csv: &Path) -> Vec<bool> {
    std::fs::read_to_string(csv)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.rsplit(',').next().unwrap() == "1")
        .collect()
}

/// Alarm shares of one file: (among fault rows, among normal rows).
fn score(model: &Path, input: &Path, out: &Path) -> (f64, f64) {
    run(Command::new(bin("outpost-cloud-sink"))
        .args(["score", "--model"])
        .arg(model)
        .arg("--input")
        .arg(input)
        .arg("--out")
        .arg(out));
    let labels = labels(input);
    let text = std::fs::read_to_string(out).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        "row,device,time_ns,score,smoothed,alarm,status"
    );
    let (mut pos, mut pos_alarm, mut neg, mut neg_alarm) = (0u32, 0u32, 0u32, 0u32);
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        if f[6] != "scored" {
            continue;
        }
        let row: usize = f[0].parse().unwrap();
        let alarm = f[5] == "1";
        if labels[row] {
            pos += 1;
            pos_alarm += u32::from(alarm);
        } else {
            neg += 1;
            neg_alarm += u32::from(alarm);
        }
    }
    assert!(neg > 0, "{}: no normal row was scored", input.display());
    (
        f64::from(pos_alarm) / f64::from(pos.max(1)),
        f64::from(neg_alarm) / f64::from(neg),
    )
}

#[test]
fn a_default_model_trained_on_normal_plant_data_alarms_on_faults_not_on_normal_operation() {
    let dir = test_dir();
    let out = dir.path().join("model");
    let log = run(Command::new(bin("outpost-cloud-sink"))
        .args(["train", "--input"])
        .arg(data().join("train_normal.csv"))
        .args(["--time-column", "time", "--out"])
        .arg(&out));
    eprintln!("{log}");
    assert!(!log.contains("Some("), "debug text in the output: {log}");
    assert!(log.contains("expected false-alarm rate"), "{log}");

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["export"]["passed"], true, "{}", report["export"]);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        manifest["score"]["smoothing"],
        serde_json::json!({"ewma": 0.1}),
        "the gateway smooths as training calibrated"
    );
    // Both one-class families were compared on the simulated shifts.
    let compared: Vec<&serde_json::Value> = report["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["shift_detection"].is_number())
        .collect();
    assert_eq!(compared.len(), 2, "{}", report["candidates"]);

    let (_, far_normal) = score(
        &out,
        &data().join("test_normal.csv"),
        &dir.path().join("normal.csv"),
    );
    let mut detections = Vec::new();
    let mut far_before = Vec::new();
    for k in 1..=21 {
        let (det, far) = score(
            &out,
            &data().join(format!("test_fault{k:02}.csv")),
            &dir.path().join(format!("fault{k:02}.csv")),
        );
        eprintln!("fault {k:2}: detection {det:.3}, false alarms before it {far:.3}");
        far_before.push(far);
        if !UNDETECTABLE.contains(&k) {
            detections.push(det);
        }
    }
    let mean_detection = detections.iter().sum::<f64>() / detections.len() as f64;
    let mean_far_before = far_before.iter().sum::<f64>() / far_before.len() as f64;
    eprintln!(
        "test_normal false alarms {far_normal:.4}, before the faults {mean_far_before:.4}, mean detection (18) {mean_detection:.3}"
    );
    assert!(
        far_normal <= MAX_FALSE_ALARM_RATE,
        "false-alarm rate on test_normal.csv {far_normal:.4} > {MAX_FALSE_ALARM_RATE}"
    );
    assert!(
        mean_far_before <= MAX_FALSE_ALARM_RATE,
        "false-alarm rate before the faults {mean_far_before:.4} > {MAX_FALSE_ALARM_RATE}"
    );
    assert!(
        mean_detection >= MIN_MEAN_DETECTION,
        "mean detection {mean_detection:.3} < {MIN_MEAN_DETECTION}"
    );
}
