//! `train --family autoencoder --fleet` from the command line: one model
//! directory per device (model.json, and model.onnx + manifest.json when
//! exporting) that `evaluate` and `score` accept, the fleet table in
//! report.json and report.html, `--fleet` refused without the autoencoder,
//! and device names that cannot escape the output directory.
#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cloud_sink::train::run::device_dir_name;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const BIN: &str = env!("CARGO_BIN_EXE_outpost-cloud-sink");

/// Devices of the fleet; two names try to leave the output directory.
const DEVICES: [&str; 4] = ["pump-a", "pump-b", "../escape", "site/pump"];
const ROWS: usize = 240;

fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.random_range(1e-12..1.0);
    let u2: f64 = rng.random_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// 1 s frames per device: `flow` cycles, `current` follows `flow` with the
/// device's own gain, `temp` has the device's own offset. With `label`,
/// rows from `ROWS / 2` on have `current` shifted by 3 and are labelled 1.
fn fleet_csv(path: &Path, devices: &[&str], label: bool, seed: u64) -> PathBuf {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut text = String::from("time,device,flow,current,temp");
    text.push_str(if label { ",label\n" } else { "\n" });
    let t0 = 1_767_225_600i64;
    for (d, name) in devices.iter().enumerate() {
        let gain = 0.3 + 0.25 * d as f64;
        let offset = 35.0 + 4.0 * d as f64;
        let mut temp = offset;
        for i in 0..ROWS {
            let flow = 10.0 + 3.0 * (i as f64 / 20.0 + d as f64).sin() + 0.2 * normal(&mut rng);
            temp = offset + 0.8 * (temp - offset) + 0.3 * normal(&mut rng);
            let anomalous = label && i >= ROWS / 2;
            let current =
                2.0 + gain * flow + 0.1 * normal(&mut rng) + if anomalous { 3.0 } else { 0.0 };
            write!(
                text,
                "{},{name},{flow:.5},{current:.5},{temp:.5}",
                t0 + i as i64
            )
            .unwrap();
            if label {
                write!(text, ",{}", u8::from(anomalous)).unwrap();
            }
            text.push('\n');
        }
    }
    std::fs::write(path, text).unwrap();
    path.to_owned()
}

fn run(args: &[&str], paths: &[(&str, &Path)]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args);
    for (flag, p) in paths {
        c.arg(flag).arg(p);
    }
    c.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const TRAIN: [&str; 10] = [
    "train",
    "--family",
    "autoencoder",
    "--time-column",
    "time",
    "--folds",
    "2",
    "--ae-fine-tune-epochs",
    "400",
    "--fleet",
];

/// Frames of the `tiny` device: 9 windows, too few to fine-tune.
const TINY_ROWS: usize = 12;

#[test]
fn a_fleet_run_writes_one_usable_model_directory_per_device_and_the_fleet_report() {
    let dir = tempfile::tempdir().unwrap();
    let input = fleet_csv(&dir.path().join("fleet.csv"), &DEVICES, false, 3);
    let mut text = std::fs::read_to_string(&input).unwrap();
    for i in 0..TINY_ROWS {
        writeln!(text, "{},tiny,10.0,5.0,40.{i}", 1_767_225_600 + i).unwrap();
    }
    std::fs::write(&input, text).unwrap();
    let out = dir.path().join("nested").join("out");
    let o = run(&TRAIN, &[("--input", &input), ("--out", &out)]);
    let err = stderr(&o);
    println!("{err}");
    assert!(o.status.success(), "{err}");
    assert!(err.contains("fleet: 4 devices fine-tuned"), "{err}");
    assert!(
        err.contains("fleet: left out tiny: 9 training windows"),
        "{err}"
    );

    // One directory per device, all directly under OUT/devices.
    let devices_dir = out.join("devices");
    let mut listed: Vec<String> = std::fs::read_dir(&devices_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    listed.sort();
    let mut expected: Vec<String> = DEVICES.iter().map(|d| device_dir_name(d)).collect();
    expected.sort();
    assert_eq!(listed, expected);
    for d in DEVICES {
        let model_dir = devices_dir.join(device_dir_name(d));
        for file in ["model.json", "model.onnx", "manifest.json"] {
            assert!(
                model_dir.join(file).is_file(),
                "{d}: no {file} in {}",
                model_dir.display()
            );
        }
        let saved: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(model_dir.join("model.json")).unwrap())
                .unwrap();
        assert_eq!(saved["family"], "autoencoder");
        assert_eq!(
            saved["threshold"]["rule"],
            serde_json::json!({"rule": "normal_quantile", "value": 0.99}),
            "{}",
            saved["threshold"]
        );
        assert!(saved["model"]["training"]["fine_tuned"].as_bool().unwrap());
    }
    // Nothing was written outside OUT by the `..` device.
    assert!(!dir.path().join("nested").join("escape").exists());
    assert!(!out.join("escape").exists());

    // report.json: one entry per device, finite gains.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let fleet = &report["fleet"];
    let entries = fleet["devices"].as_array().unwrap();
    assert_eq!(report["hyper_params"]["ae_fine_tune_epochs"], 400);
    let skipped = fleet["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{fleet}");
    assert!(
        skipped[0].as_str().unwrap().starts_with("tiny: "),
        "{fleet}"
    );
    assert_eq!(entries.len(), DEVICES.len(), "{fleet}");
    let mut names: Vec<&str> = entries
        .iter()
        .map(|e| e["device"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    let mut want = DEVICES.to_vec();
    want.sort_unstable();
    assert_eq!(names, want);
    println!(
        "base: {} epochs (best {}), hidden {}",
        fleet["base"]["epochs"], fleet["base"]["best_epoch"], fleet["hidden"]
    );
    for e in entries {
        let gain = e["gain"].as_f64().unwrap();
        println!(
            "{}: train {} held-out {} base {:.4} fine-tuned {:.4} gain {:.1}% epochs {}/{}",
            e["device"],
            e["train_rows"],
            e["heldout_rows"],
            e["base_heldout_loss"].as_f64().unwrap(),
            e["fine_tuned_heldout_loss"].as_f64().unwrap(),
            100.0 * gain,
            e["fine_tuning"]["best_epoch"],
            e["fine_tuning"]["epochs"]
        );
        assert!(gain.is_finite(), "{e}");
        let epochs = e["fine_tuning"]["epochs"].as_u64().unwrap();
        assert!((1..=400).contains(&epochs), "{e}");
        assert!(e["heldout_rows"].as_u64().unwrap() > 0, "{e}");
    }
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(
        html.contains("<h2>Fleet transfer learning</h2>"),
        "no fleet section"
    );
    assert!(html.contains("<th>fine-tuned loss</th>"), "no fleet table");
    assert!(html.contains("improved on "), "no summary");
    assert!(html.contains("Left out: tiny: "), "no skipped devices");
    // Device names are escaped in the HTML.
    assert!(html.contains("<td>../escape</td>") && html.contains("<td>site/pump</td>"));

    // `evaluate` and `score` accept a device's directory.
    let device_model = devices_dir.join(device_dir_name("pump-b"));
    let labelled = fleet_csv(&dir.path().join("eval.csv"), &DEVICES[..2], true, 9);
    let o = run(
        &["evaluate", "--label-column", "label"],
        &[("--model", &device_model), ("--input", &labelled)],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let metrics: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    println!("evaluate pump-b's model: {metrics}");
    // Every window of the two devices (3 rows each before the first full
    // window) at the device model's threshold.
    let c = &metrics["confusion"];
    let total: u64 = ["tp", "fp", "tn", "fn"]
        .iter()
        .map(|k| c[k].as_u64().unwrap())
        .sum();
    assert_eq!(total, 2 * (ROWS as u64 - 3), "{metrics}");
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(device_model.join("model.json")).unwrap())
            .unwrap();
    assert_eq!(metrics["threshold"], saved["threshold"]["value"]);
    // The shifted `current` scores higher than normal rows.
    assert!(metrics["roc_auc"].as_f64().unwrap() > 0.7, "{metrics}");
    let scored = dir.path().join("scores.csv");
    let o = run(
        &["score"],
        &[
            ("--model", &device_model),
            ("--input", &input),
            ("--out", &scored),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let lines = std::fs::read_to_string(&scored).unwrap().lines().count();
    assert_eq!(lines, 1 + DEVICES.len() * ROWS + TINY_ROWS);
}

#[test]
fn fleet_is_refused_without_the_autoencoder_family() {
    let dir = tempfile::tempdir().unwrap();
    let input = fleet_csv(&dir.path().join("fleet.csv"), &DEVICES[..2], false, 3);
    let out = dir.path().join("out");
    for family in ["pca", "auto"] {
        let o = run(
            &[
                "train",
                "--family",
                family,
                "--time-column",
                "time",
                "--fleet",
            ],
            &[("--input", &input), ("--out", &out)],
        );
        assert!(!o.status.success());
        let err = stderr(&o);
        assert!(err.contains("--fleet"), "{err}");
        assert!(err.contains("--family autoencoder"), "{err}");
    }
    assert!(!out.exists(), "nothing is written");
}

#[test]
fn device_directory_names_stay_inside_the_devices_directory() {
    for (device, dir) in [
        ("pump-1", "pump-1"),
        ("v1.2", "v1.2"),
        ("..", "%2E."),
        (".", "%2E"),
        (".hidden", "%2Ehidden"),
        ("../x", "%2E.%2Fx"),
        ("a/b", "a%2Fb"),
        ("a\\b", "a%5Cb"),
        ("tab\there", "tab%09here"),
        ("50%", "50%25"),
        ("", "%"),
        ("é", "%C3%A9"),
    ] {
        let got = device_dir_name(device);
        assert_eq!(got, dir, "{device:?}");
        let p = Path::new("/out/devices").join(&got);
        assert_eq!(p.parent(), Some(Path::new("/out/devices")), "{device:?}");
        assert_eq!(p.components().count(), 4, "{device:?}");
    }
    // Distinct names, distinct directories (`%` itself is escaped).
    assert_ne!(device_dir_name("a/b"), device_dir_name("a%2Fb"));
}
