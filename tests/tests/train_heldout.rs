//! Issue 5, measured: train on simulated pumps with ground truth, evaluate on
//! pumps the training never saw.
//!
//! 1. `outpost-firmware-sim dataset` writes devices 0..12 (training) and
//!    devices 12..20 (held out) of the same seed: the same fleet model, signal
//!    and anomaly injection as `run`, offline in simulated time, labelled
//!    from the ground truth.
//! 2. `outpost-cloud-sink train --family auto` compares the families by
//!    by-device cross-validation on the training file only and says which
//!    won and why. The features include `repeats` (a stuck sensor repeats
//!    its value exactly) and log-scaled spreads (`--log-spread`).
//! 3. `outpost-cloud-sink evaluate` scores the held-out pumps; its JSON
//!    metrics are asserted.
//!
//! The issue asks for F1 ≥ 0.9 on held-out devices. With these settings the
//! measured F1 is 0.86–0.89 over four seeds (0.74 without `repeats` and log
//! spreads): **not yet 0.9**. The floors below sit under the measured values
//! so a regression fails the test. What is missed: level shifts that last
//! longer than a window (the middle of a temperature step, the plateau of a
//! slow drift) — a fleet model scoring a pump it never saw cannot tell them
//! from a pump that runs warmer; that needs the device's own baseline.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use outpost_tests::{bin, test_dir};

/// Simulated time per device; 1 s ticks. Short enough for a debug build.
const DURATION: &str = "2h";
const SEED: &str = "7";
const WINDOW: &str = "16";
const STATS: &str = "mean,std,min,max,slope,peak_to_peak,repeats";
/// Floors on the held-out pumps. Measured with these settings: F1 0.864,
/// precision 0.980, recall 0.772; `pca` chosen. (Seeds 1, 2, 3: F1 0.885,
/// 0.890, 0.862.)
const MIN_F1: f64 = 0.83;
const MIN_PRECISION: f64 = 0.95;
const MIN_RECALL: f64 = 0.72;

fn sim_dataset(out: &Path, devices: &str, first: &str) {
    let o = Command::new(bin("outpost-firmware-sim"))
        .args(["dataset", "--devices", devices, "--first-device", first])
        .args(["--duration", DURATION, "--seed", SEED, "--out"])
        .arg(out)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "dataset failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn devices_of(csv: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(csv)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().to_owned())
        .collect()
}

#[test]
fn a_model_chosen_by_validation_is_measured_on_pumps_it_never_saw() {
    let started = Instant::now();
    let dir = test_dir();
    let dir = dir.path();
    let train = dir.join("train.csv");
    let heldout = dir.join("heldout.csv");
    sim_dataset(&train, "12", "0");
    sim_dataset(&heldout, "8", "12");
    let (tr, he) = (devices_of(&train), devices_of(&heldout));
    assert_eq!(tr.len(), 12);
    assert_eq!(
        he.iter().map(String::as_str).collect::<Vec<_>>(),
        (12..20).map(|i| format!("pump-{i:04}")).collect::<Vec<_>>()
    );
    assert!(tr.is_disjoint(&he), "held-out pumps must be other pumps");

    let model = dir.join("model");
    let out = Command::new(bin("outpost-cloud-sink"))
        .args(["train", "--input"])
        .arg(&train)
        .args(["--time-column", "time", "--label-column", "label"])
        .args(["--family", "auto", "--window", WINDOW, "--stats", STATS])
        .arg("--log-spread")
        .arg("--out")
        .arg(&model)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "train failed:\n{stderr}");

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("report.json")).unwrap()).unwrap();
    let chosen = report["chosen"].as_str().unwrap();
    let reason = report["reason"].as_str().unwrap();
    assert!(
        [
            "pca",
            "gaussian",
            "weighted_gaussian",
            "forecast",
            "classifier"
        ]
        .contains(&chosen),
        "{chosen}"
    );
    assert!(
        reason.starts_with(&format!("{chosen} has the highest mean cross-validated F1")),
        "{reason}"
    );
    assert!(
        reason.contains("validation with by-device folds"),
        "{reason}"
    );
    assert!(reason.contains("Runner-up: "), "{reason}");
    // The CLI says it too.
    assert!(
        stderr.contains(&format!("family {chosen} — {reason}")),
        "{stderr}"
    );
    // The candidates were validated by device, as the reason says.
    let candidates = report["candidates"].as_array().unwrap();
    assert!(
        candidates.iter().any(|c| c["family"] == chosen
            && c["fold_kind"] == "by_device"
            && c["error"].is_null())
    );

    let out = Command::new(bin("outpost-cloud-sink"))
        .args(["evaluate", "--model"])
        .arg(&model)
        .arg("--input")
        .arg(&heldout)
        .args(["--label-column", "label"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "evaluate failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let get = |k: &str| m[k].as_f64().unwrap();
    let (f1, precision, recall) = (get("f1"), get("precision"), get("recall"));
    let c = &m["confusion"];
    eprintln!(
        "held-out pumps 12..20: family {chosen}, F1 {f1:.4}, precision {precision:.4}, recall {recall:.4} \
         (tp {} fp {} fn {} tn {}); {:.1} s",
        c["tp"],
        c["fp"],
        c["fn"],
        c["tn"],
        started.elapsed().as_secs_f64()
    );
    assert!(
        c["tp"].as_u64().unwrap() + c["fn"].as_u64().unwrap() > 500,
        "too few anomalous windows to measure: {c}"
    );
    assert!(f1 >= MIN_F1, "F1 {f1} < {MIN_F1}");
    assert!(precision >= MIN_PRECISION, "precision {precision}");
    assert!(recall >= MIN_RECALL, "recall {recall}");
}
