//! Issue 5, measured: train on simulated pumps with ground truth, evaluate on
//! pumps the training never saw.
//!
//! 1. `outpost-firmware-sim dataset` writes devices 0..24 (training) and
//!    devices 24..48 (held out) of the same seed: the same fleet model, signal
//!    and anomaly injection as `run`, offline in simulated time, labelled
//!    from the ground truth.
//! 2. `outpost-cloud-sink train --family auto` compares the families by
//!    by-device cross-validation on the training file only and says which
//!    won and why. The features include `repeats` (a stuck sensor repeats
//!    its value exactly), log-scaled spreads (`--log-spread`) and each
//!    channel's deviation from the pump's own running baseline
//!    (`--baseline 10m`), which the gateway keeps per device the same way.
//! 3. `outpost-cloud-sink evaluate` scores the held-out pumps; its JSON
//!    metrics are asserted.
//!
//! The issue asks for F1 ≥ 0.9 on held-out devices. Measured with these
//! settings (24 training pumps, 24 held-out pumps, 2 h each), F1 on the
//! held-out pumps for seeds 7, 3, 1, 2: 0.925, 0.918, 0.901, 0.914 with the
//! running baseline; 0.914, 0.921, 0.891, 0.903 without it. With 12
//! training and 8 held-out pumps the figure was 0.86–0.89 and swung by
//! ±0.04 with which 8 pumps were held out: too few of either to measure
//! 0.9. What the baseline fixes: a temperature step's plateau on a pump the
//! model never saw (a fleet model cannot tell it from a pump that runs
//! warmer) went from 32 % of its windows detected to 95 % (seed 7). Still
//! missed: the first part of slow drifts (70 % of drift windows are
//! caught), while a drift is smaller than the spread the load puts on a
//! channel.
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
const BASELINE: &str = "10m";
const TRAINING_PUMPS: usize = 24;
const HELD_OUT_PUMPS: usize = 24;
/// The bar, and floors under what was measured with these settings:
/// F1 0.925, precision 0.975, recall 0.880; `pca` chosen.
const MIN_F1: f64 = 0.90;
const MIN_PRECISION: f64 = 0.95;
const MIN_RECALL: f64 = 0.85;

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
    let (n_train, n_held) = (TRAINING_PUMPS.to_string(), HELD_OUT_PUMPS.to_string());
    sim_dataset(&train, &n_train, "0");
    sim_dataset(&heldout, &n_held, &n_train);
    let (tr, he) = (devices_of(&train), devices_of(&heldout));
    assert_eq!(tr.len(), TRAINING_PUMPS);
    assert_eq!(
        he.iter().map(String::as_str).collect::<Vec<_>>(),
        (TRAINING_PUMPS..TRAINING_PUMPS + HELD_OUT_PUMPS)
            .map(|i| format!("pump-{i:04}"))
            .collect::<Vec<_>>()
    );
    assert!(tr.is_disjoint(&he), "held-out pumps must be other pumps");

    let model = dir.join("model");
    let out = Command::new(bin("outpost-cloud-sink"))
        .args(["train", "--input"])
        .arg(&train)
        .args(["--time-column", "time", "--label-column", "label"])
        .args(["--family", "auto", "--window", WINDOW, "--stats", STATS])
        .arg("--log-spread")
        .args(["--baseline", BASELINE])
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
        "held-out pumps {TRAINING_PUMPS}..{}: family {chosen}, F1 {f1:.4}, precision {precision:.4}, recall {recall:.4} \
         (tp {} fp {} fn {} tn {}); {:.1} s",
        TRAINING_PUMPS + HELD_OUT_PUMPS,
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
