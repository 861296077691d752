//! Training end to end on a synthetic labelled fleet: every family trains,
//! exports to ONNX, reloads with tract and matches the in-Rust scores; an
//! injected fault is refused; the registry keeps lineage and only promotes a
//! challenger that beats the champion by the margin; evaluate and score work
//! on the written model.
#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use cloud_sink::train::TrainError;
use cloud_sink::train::export;
use cloud_sink::train::families::{FamilyKind, FittedModel};
use cloud_sink::train::registry::{NewVersion, Registry, Status};
use cloud_sink::train::report::ExportCheck;
use cloud_sink::train::run::{self, TrainOptions};
use indicatif::ProgressBar;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.random_range(1e-12..1.0);
    let u2: f64 = rng.random_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Four pumps, 1 s frames: `flow` follows a slow cycle, `current` tracks
/// `flow`, `temp` is an AR(1). Anomalies: 12-frame segments where `current`
/// departs from `flow` by +2.5.
fn fleet_csv(dir: &Path, rows_per_device: usize) -> PathBuf {
    let mut rng = StdRng::seed_from_u64(42);
    let mut text = String::from("time,device,flow,current,temp,label\n");
    let t0 = 1_767_225_600i64;
    for d in 0..4 {
        let mut temp = 40.0;
        let mut anomaly_left = 0;
        for i in 0..rows_per_device {
            let flow = 10.0 + 3.0 * (i as f64 / 25.0 + d as f64).sin() + 0.2 * normal(&mut rng);
            temp = 40.0 + 0.8 * (temp - 40.0) + 0.3 * normal(&mut rng);
            if anomaly_left == 0 && i > 20 && rng.random_range(0.0..1.0) < 0.012 {
                anomaly_left = 12;
            }
            let mut current = 2.0 + 0.5 * flow + 0.1 * normal(&mut rng);
            let label = anomaly_left > 0;
            if label {
                current += 2.5;
                anomaly_left -= 1;
            }
            writeln!(
                text,
                "{},pump-{d},{flow:.5},{current:.5},{temp:.5},{}",
                t0 + i as i64,
                u8::from(label)
            )
            .unwrap();
        }
    }
    let path = dir.join("fleet.csv");
    std::fs::write(&path, text).unwrap();
    path
}

fn options(input: PathBuf, family: Option<FamilyKind>) -> TrainOptions {
    let mut o = TrainOptions::new(vec![input]);
    o.columns.time_column = Some("time".into());
    o.columns.label_column = Some("label".into());
    o.family = family;
    o.window_len = 4;
    o.folds = 3;
    o.hyper.lags = 2;
    o
}

#[test]
fn every_family_exports_to_onnx_that_tract_scores_like_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let input = fleet_csv(dir.path(), 600);
    for family in FamilyKind::ALL {
        let out = dir.path().join(family.name());
        std::fs::create_dir_all(&out).unwrap();
        let outcome = run::train(
            &options(input.clone(), Some(family)),
            &ProgressBar::hidden(),
        )
        .unwrap();
        assert_eq!(outcome.model.family, family);
        assert!(outcome.heldout.len() > 100);
        let check = export::export(
            &out,
            &outcome.model,
            &outcome.report,
            &outcome.heldout,
            "test",
        )
        .unwrap_or_else(|e| panic!("{}: {e}", family.name()));
        assert!(
            check.passed && check.max_abs_diff <= 1e-5,
            "{}: {check:?}",
            family.name()
        );
        assert_eq!(check.rows, outcome.heldout.len());
        assert!(out.join("model.onnx").exists() && out.join("manifest.json").exists());
        // The written files load with the runner the gateway uses.
        let m =
            outpost_models::Model::load_files(&out.join("model.onnx"), &out.join("manifest.json"))
                .unwrap();
        assert_eq!(m.feature_count(), outcome.heldout.x.ncols());
    }
}

/// The fleet plus `pressure`: 181 196.4 ± 0.3, written to 0.1 like a real
/// gauge's — a large offset next to small noise.
fn fleet_with_pressure_csv(dir: &Path, rows_per_device: usize) -> PathBuf {
    let input = fleet_csv(dir, rows_per_device);
    let text = std::fs::read_to_string(&input).unwrap();
    let mut rng = StdRng::seed_from_u64(9);
    let mut out = String::new();
    for (i, line) in text.lines().enumerate() {
        let (head, label) = line.rsplit_once(',').unwrap();
        if i == 0 {
            writeln!(out, "{head},pressure,{label}").unwrap();
        } else {
            let p = 181_196.4 + 0.3 * normal(&mut rng);
            writeln!(out, "{head},{p:.1},{label}").unwrap();
        }
    }
    std::fs::write(&input, out).unwrap();
    input
}

#[test]
fn log_spreads_repeat_counts_and_large_offsets_export_within_tolerance() {
    use protocol::features::Stat;
    let dir = tempfile::tempdir().unwrap();
    let input = fleet_with_pressure_csv(dir.path(), 600);
    for family in FamilyKind::ALL {
        let mut o = options(input.clone(), Some(family));
        o.log_spread = true;
        o.stats = vec![
            Stat::Mean,
            Stat::Std,
            Stat::Min,
            Stat::Max,
            Stat::PeakToPeak,
            Stat::Repeats,
        ];
        let outcome = run::train(&o, &ProgressBar::hidden())
            .unwrap_or_else(|e| panic!("{}: {e}", family.name()));
        let p = &outcome.model.pipeline;
        if family != FamilyKind::Forecast {
            // The spreads are log-scaled; `flow` (5 decimals) never repeats a
            // value, so its count is 0 in training and gets scale 1.
            for (j, name) in p.names.iter().enumerate() {
                let spread = name.ends_with(".std") || name.ends_with(".peak_to_peak");
                assert_eq!(p.log_offset[j].is_some(), spread, "{name}");
            }
            let j = p.names.iter().position(|n| n == "flow.repeats").unwrap();
            assert_eq!((p.center[j], p.scale[j]), (0.0, 1.0));
        }
        let out = dir.path().join(family.name());
        std::fs::create_dir_all(&out).unwrap();
        let check = export::export(
            &out,
            &outcome.model,
            &outcome.report,
            &outcome.heldout,
            "test",
        )
        .unwrap_or_else(|e| panic!("{}: {e}", family.name()));
        assert!(check.passed, "{}: {check:?}", family.name());
        let manifest = std::fs::read_to_string(out.join("manifest.json")).unwrap();
        assert!(manifest.contains("\"threshold_rule\""), "{manifest}");
    }
}

#[test]
fn an_export_that_does_not_match_the_reference_is_refused_and_cannot_be_registered() {
    let dir = tempfile::tempdir().unwrap();
    let input = fleet_csv(dir.path(), 400);
    let outcome = run::train(
        &options(input, Some(FamilyKind::Gaussian)),
        &ProgressBar::hidden(),
    )
    .unwrap();
    // Inject a fault: export a model whose whitening differs by 1e-3.
    let mut faulty = outcome.model.clone();
    let FittedModel::Gaussian(g) = &mut faulty.model else {
        panic!("gaussian")
    };
    g.whitening[(0, 0)] += 1e-3;
    let onnx = export::graph(&faulty).unwrap();
    let manifest = export::manifest(&outcome.model, &outcome.report, "t").unwrap();
    let check = export::check(&outcome.model, &onnx, &manifest, &outcome.heldout).unwrap();
    assert!(!check.passed, "{check:?}");
    assert!(check.max_abs_diff > 1e-5);
    let registry = Registry::open(&dir.path().join("sink.db")).unwrap();
    let err = registry.register(&version("fleet"), &check).unwrap_err();
    assert!(matches!(err, TrainError::Export(_)), "{err}");
    // The honest export passes and registers.
    let onnx = export::graph(&outcome.model).unwrap();
    let ok = export::check(&outcome.model, &onnx, &manifest, &outcome.heldout).unwrap();
    assert!(ok.passed, "{ok:?}");
    assert!(registry.register(&version("fleet"), &ok).is_ok());
}

fn version(scope: &str) -> NewVersion {
    NewVersion {
        scope: scope.into(),
        family: "gaussian".into(),
        data_from_ns: Some(1),
        data_to_ns: Some(2),
        hyper_params: serde_json::json!({"ridge": 0.01}),
        metrics: serde_json::json!({"f1": 0.9}),
        parent: None,
        artifact: "/models/x".into(),
    }
}

#[test]
fn champion_challenger_promotes_only_by_the_margin_and_keeps_lineage() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Registry::open(&dir.path().join("sink.db")).unwrap();
    let pass = ExportCheck {
        rows: 10,
        max_abs_diff: 1e-7,
        tolerance: 1e-5,
        passed: true,
    };
    let first = r.register(&version("pump-1"), &pass).unwrap();
    let d = r.challenge(first, 0.80, None, 0.01, true).unwrap();
    assert!(d.promoted, "{d:?}");
    assert_eq!(r.production("pump-1").unwrap().unwrap().id, first);
    // Better by less than the margin: champion kept.
    let second = r.register(&version("pump-1"), &pass).unwrap();
    assert_eq!(r.get(second).unwrap().unwrap().parent, Some(first));
    let d = r.challenge(second, 0.805, Some(0.80), 0.01, true).unwrap();
    assert!(!d.promoted, "{d:?}");
    assert_eq!(r.get(second).unwrap().unwrap().status, Status::Candidate);
    // Better by the margin: promoted, the champion retired.
    let third = r.register(&version("pump-1"), &pass).unwrap();
    let d = r.challenge(third, 0.85, Some(0.80), 0.01, true).unwrap();
    assert!(d.promoted);
    assert_eq!(r.get(first).unwrap().unwrap().status, Status::Retired);
    assert_eq!(r.production("pump-1").unwrap().unwrap().id, third);
    // Lower-is-better metrics point the other way.
    let fourth = r.register(&version("pump-1"), &pass).unwrap();
    let d = r.challenge(fourth, 0.20, Some(0.10), 0.01, false).unwrap();
    assert!(!d.promoted);
    // Other scopes are independent.
    let other = r.register(&version("pump-2"), &pass).unwrap();
    assert_eq!(r.get(other).unwrap().unwrap().parent, None);
    assert_eq!(r.list("pump-1").unwrap().len(), 4);
}

#[test]
fn auto_chooses_by_validation_and_evaluate_and_score_use_the_written_model() {
    let dir = tempfile::tempdir().unwrap();
    let input = fleet_csv(dir.path(), 600);
    let outcome = run::train(&options(input.clone(), None), &ProgressBar::hidden()).unwrap();
    let r = &outcome.report;
    // Four families plus the forecaster's k-fold and time-ordered runs.
    assert_eq!(r.candidates.len(), 6);
    assert!(
        r.reason.contains("highest mean cross-validated F1"),
        "{}",
        r.reason
    );
    assert!(
        r.data.holdout.starts_with("held-out devices"),
        "{}",
        r.data.holdout
    );
    let held = r.heldout.as_ref().unwrap();
    assert!(
        held.f1.unwrap() > 0.8,
        "held-out F1 {:?} of {}",
        held.f1,
        r.chosen.name()
    );
    for c in &r.candidates {
        assert!(c.error.is_none(), "{}: {:?}", c.family.name(), c.error);
        assert_eq!(c.folds.len(), 3);
    }
    let out = dir.path().join("model");
    run::write_outputs(&out, &outcome).unwrap();
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("ROC") && html.contains("Precision-recall"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["chosen"], r.chosen.name());

    let m = run::evaluate(&out, std::slice::from_ref(&input), "label").unwrap();
    assert!(m.f1.unwrap() > 0.8, "{m:?}");
    let scored = dir.path().join("scores.csv");
    let rows = run::score(&out, &input, &scored).unwrap();
    assert_eq!(rows.len(), 2400);
    let text = std::fs::read_to_string(&scored).unwrap();
    assert_eq!(text.lines().count(), 2401);
    let window = outcome.model.window.len;
    // The first rows of each device come before its first full window.
    assert!(
        rows[..window - 1]
            .iter()
            .all(|r| r.status == "before_first_full_window" && r.score.is_none())
    );
    assert!(rows[window - 1].score.is_some());
    assert!(rows.iter().filter(|r| r.score.is_some()).count() >= 2400 - 4 * window);
}

#[test]
fn auto_without_labels_compares_the_one_class_families_and_keeps_a_constant_channel() {
    let dir = tempfile::tempdir().unwrap();
    let csv = |name: &str, stuck: &dyn Fn(usize) -> f64| {
        let path = dir.path().join(name);
        let mut text = String::from("time,x,stuck\n");
        for i in 0..200 {
            let x = (i as f64 / 7.0).sin();
            writeln!(text, "{},{x},{}", 1_767_225_600 + i, stuck(i)).unwrap();
        }
        std::fs::write(&path, text).unwrap();
        path
    };
    let path = csv("c.csv", &|_| 5.0);
    let mut o = TrainOptions::new(vec![path]);
    o.columns.time_column = Some("time".into());
    o.window_len = 4;
    let outcome = run::train(&o, &ProgressBar::hidden()).unwrap();
    let r = &outcome.report;
    assert!(
        matches!(r.chosen, FamilyKind::Pca | FamilyKind::Gaussian),
        "{:?}",
        r.chosen
    );
    let compared: Vec<FamilyKind> = r
        .candidates
        .iter()
        .filter(|c| c.shift_detection.is_some() && c.expected_false_alarm_rate.is_some())
        .map(|c| c.family)
        .collect();
    assert_eq!(compared, [FamilyKind::Gaussian, FamilyKind::Pca]);
    assert!(r.reason.contains("simulated sensor shifts"), "{}", r.reason);
    // The stuck channel's window statistics are kept, not refused.
    let floored = &outcome.model.pipeline.floored;
    assert!(floored.contains(&"stuck.mean".to_owned()), "{floored:?}");
    // Any later movement of it is evidence: it alarms after it moves.
    let out = dir.path().join("model");
    run::write_outputs(&out, &outcome).unwrap();
    let moved = csv("moved.csv", &|i| if i < 100 { 5.0 } else { 5.5 });
    let rows = run::score(&out, &moved, &dir.path().join("s.csv")).unwrap();
    let alarms = |range: std::ops::Range<usize>| {
        rows[range].iter().filter(|r| r.alarm == Some(true)).count()
    };
    assert!(alarms(110..200) >= 85, "{}", alarms(110..200));
    assert!(alarms(0..100) <= 5, "{}", alarms(0..100));
}

/// The fleet plus `mode`, an operating mode 0/1/2 that changes every 40 to
/// 80 rows and raises `current` by 0.3 per step. pump-3 writes it as `2.0`
/// (a float column of whole numbers): the same codes.
fn fleet_with_mode_csv(dir: &Path, rows_per_device: usize) -> PathBuf {
    let input = fleet_csv(dir, rows_per_device);
    let text = std::fs::read_to_string(&input).unwrap();
    let mut rng = StdRng::seed_from_u64(5);
    let mut out = String::new();
    let (mut mode, mut left, mut device) = (0u8, 0usize, String::new());
    for (i, line) in text.lines().enumerate() {
        let (head, label) = line.rsplit_once(',').unwrap();
        if i == 0 {
            writeln!(out, "{head},mode,{label}").unwrap();
            continue;
        }
        let fields: Vec<&str> = head.split(',').collect();
        if fields[1] != device {
            (device, mode, left) = (fields[1].to_owned(), 0, 0);
        }
        if left == 0 {
            mode = rng.random_range(0..3u8);
            left = rng.random_range(40..80usize);
        }
        left -= 1;
        let current: f64 = fields[3].parse::<f64>().unwrap() + 0.3 * f64::from(mode);
        let mode_cell = if device == "pump-3" {
            format!("{mode}.0")
        } else {
            mode.to_string()
        };
        writeln!(
            out,
            "{},{},{},{current:.5},{},{mode_cell},{label}",
            fields[0], fields[1], fields[2], fields[4]
        )
        .unwrap();
    }
    std::fs::write(&input, out).unwrap();
    input
}

#[test]
fn a_numeric_column_declared_categorical_exports_its_codes_and_passes_the_parity_check() {
    let dir = tempfile::tempdir().unwrap();
    let input = fleet_with_mode_csv(dir.path(), 600);
    for family in [
        FamilyKind::Gaussian,
        FamilyKind::Pca,
        FamilyKind::Classifier,
    ] {
        let mut o = options(input.clone(), Some(family));
        o.columns.categorical = vec!["mode".into()];
        let outcome = run::train(&o, &ProgressBar::hidden())
            .unwrap_or_else(|e| panic!("{}: {e}", family.name()));
        assert_eq!(outcome.model.channels, ["flow", "current", "temp"]);
        assert_eq!(outcome.model.categorical, ["mode"]);
        assert_eq!(
            outcome.model.pipeline.one_hot[0].categories,
            ["0", "1", "2"],
            "`2.0` is the code 2"
        );
        let out = dir.path().join(family.name());
        std::fs::create_dir_all(&out).unwrap();
        let check = export::export(
            &out,
            &outcome.model,
            &outcome.report,
            &outcome.heldout,
            "test",
        )
        .unwrap_or_else(|e| panic!("{}: {e}", family.name()));
        assert!(
            check.passed && check.max_abs_diff <= 1e-5,
            "{}: {check:?}",
            family.name()
        );
        assert_eq!(check.rows, outcome.heldout.len());
        let manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap())
                .unwrap();
        assert_eq!(
            manifest["features"]["categorical"],
            serde_json::json!([{"channel": "mode", "codes": [0, 1, 2]}])
        );
        assert_eq!(
            manifest["input"]["channels"],
            serde_json::json!(["flow", "current", "temp", "mode"])
        );
        let m =
            outpost_models::Model::load_files(&out.join("model.onnx"), &out.join("manifest.json"))
                .unwrap();
        assert_eq!(m.feature_count(), outcome.heldout.x.ncols() + 3);
    }

    // The check feeds the graph what the gateway computes from the manifest:
    // codes listed in another order than the pipeline's columns fail it.
    let mut o = options(input.clone(), Some(FamilyKind::Gaussian));
    o.columns.categorical = vec!["mode".into()];
    let outcome = run::train(&o, &ProgressBar::hidden()).unwrap();
    let onnx = export::graph(&outcome.model).unwrap();
    let mut manifest = export::manifest(&outcome.model, &outcome.report, "t").unwrap();
    let ok = export::check(&outcome.model, &onnx, &manifest, &outcome.heldout).unwrap();
    assert!(ok.passed, "{ok:?}");
    manifest.features.categorical[0].codes.reverse();
    let swapped = export::check(&outcome.model, &onnx, &manifest, &outcome.heldout).unwrap();
    assert!(!swapped.passed, "{swapped:?}");

    // evaluate and score read `mode` as codes again from the model.
    let model_dir = dir.path().join("saved");
    run::write_outputs(&model_dir, &outcome).unwrap();
    let metrics = run::evaluate(&model_dir, std::slice::from_ref(&input), "label").unwrap();
    assert!(metrics.f1.is_some(), "{metrics:?}");
    let rows = run::score(&model_dir, &input, &dir.path().join("scores.csv")).unwrap();
    assert!(rows.iter().filter(|r| r.score.is_some()).count() > 2000);
}

#[test]
fn text_categories_train_and_score_but_refuse_export_naming_the_channel() {
    let dir = tempfile::tempdir().unwrap();
    let input = fleet_with_mode_csv(dir.path(), 400);
    let text = std::fs::read_to_string(&input).unwrap();
    // `mode` as words: a text column, categorical without being declared.
    let mut words = String::new();
    for (i, line) in text.lines().enumerate() {
        let mut fields: Vec<String> = line.split(',').map(str::to_owned).collect();
        if i > 0 {
            let m = fields[5].parse::<f64>().unwrap() as usize;
            fields[5] = ["idle", "run", "purge"][m].to_owned();
        }
        writeln!(words, "{}", fields.join(",")).unwrap();
    }
    let path = dir.path().join("words.csv");
    std::fs::write(&path, words).unwrap();
    let outcome = run::train(
        &options(path.clone(), Some(FamilyKind::Gaussian)),
        &ProgressBar::hidden(),
    )
    .unwrap();
    assert_eq!(outcome.model.categorical, ["mode"]);
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let err = export::export(
        &out,
        &outcome.model,
        &outcome.report,
        &outcome.heldout,
        "test",
    )
    .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, TrainError::Export(_)), "{message}");
    assert!(
        message.contains("categorical channel `mode`") && message.contains("integer codes"),
        "{message}"
    );
    assert!(!out.join("model.onnx").exists() && !out.join("manifest.json").exists());
    // model.json still evaluates and scores.
    run::write_outputs(&out, &outcome).unwrap();
    assert!(run::evaluate(&out, std::slice::from_ref(&path), "label").is_ok());
    let rows = run::score(&out, &path, &dir.path().join("s.csv")).unwrap();
    assert!(rows.iter().any(|r| r.score.is_some()));

    // Declaring a column that is not there names it.
    let mut o = options(input, Some(FamilyKind::Gaussian));
    o.columns.categorical = vec!["gear".into()];
    let err = run::train(&o, &ProgressBar::hidden()).unwrap_err();
    assert!(err.to_string().contains("`gear` is not a channel"), "{err}");
}

#[test]
fn a_running_baseline_with_a_categorical_channel_exports_in_the_gateways_feature_order() {
    let dir = tempfile::tempdir().unwrap();
    let input = fleet_with_mode_csv(dir.path(), 600);
    for family in [FamilyKind::Gaussian, FamilyKind::Pca] {
        let mut o = options(input.clone(), Some(family));
        o.columns.categorical = vec!["mode".into()];
        o.baseline = Some(std::time::Duration::from_secs(600));
        let outcome = run::train(&o, &ProgressBar::hidden())
            .unwrap_or_else(|e| panic!("{}: {e}", family.name()));
        let out = dir.path().join(family.name());
        std::fs::create_dir_all(&out).unwrap();
        let check = export::export(
            &out,
            &outcome.model,
            &outcome.report,
            &outcome.heldout,
            "test",
        )
        .unwrap_or_else(|e| panic!("{}: {e}", family.name()));
        assert!(check.passed, "{}: {check:?}", family.name());
        let manifest: protocol::manifest::ModelManifest =
            serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap())
                .unwrap();
        assert_eq!(
            manifest.features.baseline.map(|b| b.time_constant),
            Some(std::time::Duration::from_secs(600))
        );
        // The gateway's layout (statistics, baseline deviations, one-hot)
        // is the pipeline's numeric columns followed by its one-hot columns.
        let gateway = manifest.extractor().unwrap();
        let mut training: Vec<String> = outcome.model.pipeline.names.clone();
        training.extend(["mode=0", "mode=1", "mode=2"].map(String::from));
        assert_eq!(gateway.names(), training.as_slice());
        assert!(
            training.iter().any(|n| n == "temp.baseline_dev"),
            "{training:?}"
        );
    }
    // Without a window there is no mean to compare with a baseline.
    let mut o = options(input, Some(FamilyKind::Gaussian));
    o.window_len = 1;
    o.baseline = Some(std::time::Duration::from_secs(600));
    let err = run::train(&o, &ProgressBar::hidden()).unwrap_err();
    assert!(err.to_string().contains("--baseline"), "{err}");
}
