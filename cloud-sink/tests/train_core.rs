//! Training: metrics against hand-computed values, folds, families on planted
//! structure, degenerate data, datasets, thresholds, registry.
#![allow(clippy::unwrap_used)]

use cloud_sink::train::cv::{forward_chaining, kfold, stratified_kfold};
use cloud_sink::train::dataset::{
    self, ColumnOptions, FileKind, MissingPolicy, RowStatus, WindowOptions,
};
use cloud_sink::train::families::classifier::Logistic;
use cloud_sink::train::families::forecaster::Forecaster;
use cloud_sink::train::families::gaussian::Gaussian;
use cloud_sink::train::families::pca_t2q::PcaT2Q;
use cloud_sink::train::metrics::{
    BinaryMetrics, Confusion, RegressionMetrics, Spread, pr_auc, roc_auc,
};
use cloud_sink::train::preprocess::{Components, Pca, Pipeline, Scaling};
use cloud_sink::train::threshold::{ThresholdRule, choose, quantile};
use cloud_sink::train::{TrainError, check_matrix};
use nalgebra::DMatrix;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

fn names(d: usize) -> Vec<String> {
    (0..d).map(|j| format!("c{j}")).collect()
}

/// Standard normal via Box-Muller.
fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.random_range(1e-12..1.0);
    let u2: f64 = rng.random_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

// ---------------------------------------------------------------- metrics

#[test]
fn roc_and_pr_auc_match_hand_computed_values() {
    // The textbook case: 3 of 4 (positive, negative) pairs ordered right.
    let s = [0.1, 0.4, 0.35, 0.8];
    let l = [false, false, true, true];
    assert!(close(roc_auc(&s, &l).unwrap(), 0.75, 1e-12));
    // AP: 0.8 (P=1, R=.5) → 0.4 (P=2/3) → 0.35 (P=2/3, R=1): .5·1 + .5·2/3.
    assert!(close(pr_auc(&s, &l).unwrap(), 0.5 + 0.5 * 2.0 / 3.0, 1e-12));
}

#[test]
fn tied_scores_count_half_and_enter_together() {
    let l = [true, false, true, false];
    assert!(close(roc_auc(&[0.5; 4], &l).unwrap(), 0.5, 1e-12));
    assert!(close(pr_auc(&[0.5; 4], &l).unwrap(), 0.5, 1e-12));
    // Positives {2, 3} vs negatives {1, 2}: 1 + ½ + 1 + 1 of 4 pairs.
    let s = [1.0, 2.0, 2.0, 3.0];
    let l = [false, true, false, true];
    assert!(close(roc_auc(&s, &l).unwrap(), 0.875, 1e-12));
    // AP: at 3, R=.5 P=1; at 2 (tied pair together), R=1 P=2/3.
    assert!(close(pr_auc(&s, &l).unwrap(), 0.5 + 0.5 * 2.0 / 3.0, 1e-12));
}

#[test]
fn a_single_class_fold_has_undefined_ranking_metrics_not_perfect_ones() {
    let s = [0.1, 0.2, 0.9];
    let normal = [false; 3];
    assert_eq!(roc_auc(&s, &normal), None);
    assert_eq!(pr_auc(&s, &normal), None);
    let m = BinaryMetrics::compute(&s, &normal, 0.5);
    assert_eq!(
        m.confusion,
        Confusion {
            tp: 0,
            fp: 1,
            tn: 2,
            fn_: 0
        }
    );
    assert_eq!(m.recall, None);
    assert_eq!(m.missed_alarm_rate, None);
    assert_eq!(m.precision, Some(0.0));
    assert!(close(m.false_alarm_rate.unwrap(), 1.0 / 3.0, 1e-12));
    // No alarm and no anomaly: precision and F1 are undefined.
    let m = BinaryMetrics::compute(&[0.1, 0.2], &[false, false], 0.5);
    assert_eq!(m.precision, None);
    assert_eq!(m.f1, None);
    assert_eq!(m.accuracy, Some(1.0));
    let all_anomalous = [true; 3];
    assert_eq!(roc_auc(&s, &all_anomalous), None);
}

#[test]
fn confusion_rates_match_a_hand_computed_case() {
    // Alarms are score > threshold: [F, T, T, F] against [F, T, F, T].
    let m = BinaryMetrics::compute(&[0.2, 0.9, 0.6, 0.5], &[false, true, false, true], 0.5);
    assert_eq!(
        m.confusion,
        Confusion {
            tp: 1,
            fp: 1,
            tn: 1,
            fn_: 1
        }
    );
    for v in [
        m.accuracy,
        m.precision,
        m.recall,
        m.f1,
        m.false_alarm_rate,
        m.missed_alarm_rate,
    ] {
        assert!(close(v.unwrap(), 0.5, 1e-12));
    }
    let c = Confusion {
        tp: 8,
        fp: 2,
        tn: 85,
        fn_: 5,
    };
    assert!(close(c.precision().unwrap(), 0.8, 1e-12));
    assert!(close(c.recall().unwrap(), 8.0 / 13.0, 1e-12));
    assert!(close(c.f1().unwrap(), 16.0 / 23.0, 1e-12));
    assert!(close(c.false_alarm_rate().unwrap(), 2.0 / 87.0, 1e-12));
    assert!(close(c.accuracy().unwrap(), 0.93, 1e-12));
}

#[test]
fn regression_metrics_and_spread_match_hand_computed_values() {
    let r = RegressionMetrics::compute(&[1.0, 2.0, 3.0], &[1.0, 2.0, 4.0]).unwrap();
    assert!(close(r.mse, 1.0 / 3.0, 1e-12));
    assert!(close(r.mae, 1.0 / 3.0, 1e-12));
    assert!(close(r.r2.unwrap(), 0.5, 1e-12));
    assert_eq!(
        RegressionMetrics::compute(&[2.0, 2.0], &[2.0, 1.0])
            .unwrap()
            .r2,
        None
    );
    assert_eq!(RegressionMetrics::compute(&[], &[]), None);
    let s = Spread::of(&[Some(1.0), None, Some(3.0)]);
    assert_eq!(
        (s.mean, s.std, s.defined, s.folds),
        (Some(2.0), Some(1.0), 2, 3)
    );
}

// ---------------------------------------------------------------- thresholds

#[test]
fn thresholds_follow_their_rules() {
    assert_eq!(quantile(&[4.0, 1.0, 3.0, 2.0], 0.5), Some(2.5));
    let normals: Vec<f64> = (1..=10).map(f64::from).collect();
    let t = choose(ThresholdRule::TargetFalseAlarmRate(0.1), &normals, None).unwrap();
    let alarms = normals.iter().filter(|s| **s > t.value).count();
    assert_eq!(alarms, 1, "threshold {}", t.value);
    let scores = [0.1, 0.2, 0.3, 0.7, 0.8, 0.25];
    let labels = [false, false, false, true, true, false];
    let t = choose(ThresholdRule::BestF1, &scores, Some(&labels)).unwrap();
    assert!(t.value > 0.3 && t.value < 0.7, "{}", t.value);
    assert!(matches!(
        choose(ThresholdRule::BestF1, &scores, None),
        Err(TrainError::NeedLabels { .. })
    ));
    assert!(matches!(
        choose(ThresholdRule::BestF1, &scores, Some(&[false; 6])),
        Err(TrainError::SingleClass { .. })
    ));
}

// ---------------------------------------------------------------- folds

#[test]
fn stratified_folds_keep_the_class_ratio_in_every_fold() {
    let labels: Vec<bool> = (0..1000).map(|i| i % 20 == 7).collect(); // 50 anomalies
    let folds = stratified_kfold(&labels, 5, 3).unwrap();
    let mut seen = vec![0; labels.len()];
    for f in &folds {
        let pos = f.test.iter().filter(|&&i| labels[i]).count();
        assert_eq!((pos, f.test.len()), (10, 200));
        for &i in &f.test {
            seen[i] += 1;
            assert!(!f.train.contains(&i));
        }
        assert_eq!(f.train.len() + f.test.len(), labels.len());
    }
    assert!(seen.iter().all(|&c| c == 1));
    // 4 anomalies cannot fill 5 folds.
    let few: Vec<bool> = (0..100).map(|i| i < 4).collect();
    assert!(matches!(
        stratified_kfold(&few, 5, 1),
        Err(TrainError::Folds(_))
    ));
}

#[test]
fn time_ordered_folds_never_train_on_the_future() {
    let mut rng = StdRng::seed_from_u64(5);
    let times: Vec<i64> = (0..500).map(|_| rng.random_range(0..300)).collect(); // with ties
    let folds = forward_chaining(&times, 4).unwrap();
    assert_eq!(folds.len(), 4);
    for f in &folds {
        let latest_train = f.train.iter().map(|&i| times[i]).max().unwrap();
        let earliest_test = f.test.iter().map(|&i| times[i]).min().unwrap();
        assert!(
            latest_train < earliest_test,
            "{latest_train} >= {earliest_test}"
        );
    }
    // Training sets grow.
    assert!(
        folds
            .windows(2)
            .all(|w| w[0].train.len() < w[1].train.len())
    );
}

#[test]
fn kfold_partitions_the_samples() {
    let folds = kfold(103, 5, 9).unwrap();
    let mut all: Vec<usize> = folds.iter().flat_map(|f| f.test.clone()).collect();
    all.sort_unstable();
    assert_eq!(all, (0..103).collect::<Vec<_>>());
    assert!(
        folds
            .iter()
            .all(|f| f.test.len() == 20 || f.test.len() == 21)
    );
    assert!(matches!(kfold(3, 5, 1), Err(TrainError::Folds(_))));
}

// ---------------------------------------------------------------- families

#[test]
fn pca_recovers_a_planted_low_rank_structure() {
    let mut rng = StdRng::seed_from_u64(11);
    let (n, d) = (2000, 6);
    let b = DMatrix::from_fn(2, d, |_, _| normal(&mut rng));
    let a = DMatrix::from_fn(n, 2, |_, _| normal(&mut rng));
    let noise = DMatrix::from_fn(n, d, |_, _| 1e-3 * normal(&mut rng));
    let x = &a * &b + noise;
    let pca = Pca::fit(&x, &names(d), Components::Explained(0.999)).unwrap();
    assert_eq!(
        pca.components.ncols(),
        2,
        "eigenvalues {:?}",
        pca.eigenvalues
    );
    // Every planted direction lies in the recovered subspace.
    let p = &pca.components;
    for row in b.row_iter() {
        let v = row.transpose();
        let proj = p * (p.transpose() * &v);
        assert!(
            (&v - proj).norm() < 1e-3 * v.norm(),
            "direction not recovered"
        );
    }
    // T²+Q: a point off the plane scores far above the control limit.
    let m = PcaT2Q::fit(&x, &names(d), 0.999, 0.99).unwrap();
    let mut off = x.rows(0, 1).into_owned();
    off[(0, 0)] += 1.0;
    let on = x.rows(1, 1).into_owned();
    assert!(m.score(&off)[0] > 10.0);
    assert!(m.score(&on)[0] < 2.0);
}

#[test]
fn the_forecaster_recovers_planted_ar_coefficients() {
    let mut rng = StdRng::seed_from_u64(2);
    let n = 6000;
    let mut x = vec![0.0, 0.0];
    for t in 2..n {
        let v = 0.6 * x[t - 1] - 0.3 * x[t - 2] + 0.5 + normal(&mut rng);
        x.push(v);
    }
    // Raw windows of 3 frames, oldest first: [x(t-2), x(t-1), x(t)].
    let rows: Vec<f64> = (2..n).flat_map(|t| [x[t - 2], x[t - 1], x[t]]).collect();
    let z = DMatrix::from_row_slice(n - 2, 3, &rows);
    let f = Forecaster::fit(&z, &names(3), 1, 2, 0.0).unwrap();
    let (lag2, lag1) = (f.coefficients[(0, 0)], f.coefficients[(1, 0)]);
    assert!(close(lag1, 0.6, 0.03), "lag 1: {lag1}");
    assert!(close(lag2, -0.3, 0.03), "lag 2: {lag2}");
    assert!(
        close(f.intercept[0], 0.5, 0.06),
        "intercept {}",
        f.intercept[0]
    );
    assert!(close(f.residual_std[0], 1.0, 0.05));
    // A shock scores high.
    let shock = DMatrix::from_row_slice(1, 3, &[0.0, 0.0, 8.0]);
    assert!(f.score(&shock)[0] > 30.0);
}

#[test]
fn gaussian_shrinkage_scores_outliers_higher_and_handles_more_features_than_rows() {
    let mut rng = StdRng::seed_from_u64(4);
    let x = DMatrix::from_fn(500, 4, |_, _| normal(&mut rng));
    let g = Gaussian::fit(&x, &names(4)).unwrap();
    assert!((0.0..=1.0).contains(&g.shrinkage));
    let probe = DMatrix::from_row_slice(2, 4, &[0.0, 0.0, 0.0, 0.0, 5.0, 5.0, 0.0, 0.0]);
    let s = g.score(&probe);
    assert!(s[0] < 1.0 && s[1] > 25.0, "{s:?}");
    // 10 rows, 20 features: the sample covariance is singular; shrinkage is not.
    let wide = DMatrix::from_fn(10, 20, |_, _| normal(&mut rng));
    let g = Gaussian::fit(&wide, &names(20)).unwrap();
    assert!(g.shrinkage > 0.0);
    assert!(g.score(&wide).iter().all(|v| v.is_finite()));
}

#[test]
fn logistic_regression_separates_and_refuses_a_single_class() {
    let mut rng = StdRng::seed_from_u64(8);
    let n = 400;
    let labels: Vec<bool> = (0..n).map(|i| i % 4 == 0).collect();
    let x = DMatrix::from_fn(n, 3, |i, j| {
        normal(&mut rng) + if labels[i] && j == 0 { 3.0 } else { 0.0 }
    });
    let m = Logistic::fit(&x, &names(3), &labels, 1e-2).unwrap();
    let s = m.score(&x);
    assert!(roc_auc(&s, &labels).unwrap() > 0.95);
    assert!(m.weights[0] > 1.0);
    assert!(matches!(
        Logistic::fit(&x, &names(3), &vec![false; n], 1e-2),
        Err(TrainError::SingleClass { .. })
    ));
}

// ---------------------------------------------------------------- degenerate data

#[test]
fn degenerate_data_gets_typed_errors_naming_the_problem() {
    let n = names(2);
    // A constant channel is no error: it is kept with a floored scale.
    let x = DMatrix::from_fn(10, 2, |i, j| if j == 1 { 7.0 } else { i as f64 });
    for scaling in [Scaling::Plain, Scaling::Robust] {
        let p = Pipeline::fit(&x, &n, &[], &[], scaling).unwrap();
        assert_eq!(p.floored, ["c1"], "{scaling:?}");
        assert!(p.scale[1] > 0.0);
    }
    // Duplicate rows.
    let dup = DMatrix::from_fn(50, 2, |_, j| j as f64);
    let err = Pca::fit(&dup, &n, Components::Fixed(1)).unwrap_err();
    assert!(
        matches!(
            err,
            TrainError::DuplicateRows {
                distinct: 1,
                rows: 50,
                ..
            }
        ),
        "{err}"
    );
    let err = Gaussian::fit(&dup, &n).unwrap_err();
    assert!(matches!(err, TrainError::DuplicateRows { .. }), "{err}");
    // Too few rows.
    let one = DMatrix::from_row_slice(1, 2, &[1.0, 2.0]);
    assert!(matches!(
        Pca::fit(&one, &n, Components::Fixed(1)),
        Err(TrainError::TooFewRows { rows: 1, .. })
    ));
    let err = Forecaster::fit(
        &DMatrix::from_fn(3, 3, |i, j| (i * j) as f64),
        &names(3),
        1,
        2,
        0.0,
    )
    .unwrap_err();
    assert!(matches!(err, TrainError::TooFewRows { .. }), "{err}");
    // NaN.
    let mut nan = DMatrix::from_fn(10, 2, |i, j| (i + j) as f64);
    nan[(4, 1)] = f64::NAN;
    let err = check_matrix(&nan, &n, 2, 2, false).unwrap_err();
    assert!(
        matches!(&err, TrainError::NotFinite { row: 4, column, .. } if column == "c1"),
        "{err}"
    );
    assert!(matches!(
        Pca::fit(&nan, &n, Components::Fixed(1)),
        Err(TrainError::NotFinite { .. })
    ));
    assert!(matches!(
        Gaussian::fit(&nan, &n),
        Err(TrainError::NotFinite { .. })
    ));
    assert_eq!(err.reason_code(), "non_finite_value");
}

// ---------------------------------------------------------------- datasets

fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn csv_delimiters_are_detected_and_columns_take_their_roles() {
    assert_eq!(dataset::detect_delimiter("a;b;c\n1;2;3"), b';');
    assert_eq!(dataset::detect_delimiter("a\tb\tc"), b'\t');
    assert_eq!(dataset::detect_delimiter("\"x;y\",b,c"), b',');
    let dir = tempfile::tempdir().unwrap();
    let semi = write(
        dir.path(),
        "a.csv",
        "time;device;temp;mode;noise;label\n\
         2026-01-01T00:00:00Z;p1;20.5;run;1;0\n\
         2026-01-01T00:00:01Z;p1;;idle;2;1\n\
         2026-01-01T00:00:02Z;p1;21,5;run;3;no\n",
    );
    let opts = ColumnOptions {
        time_column: Some("time".into()),
        label_column: Some("label".into()),
        exclude: vec!["noise".into()],
        ..ColumnOptions::default()
    };
    // "21,5" is not a number: temp becomes categorical and no numeric channel is left.
    let err = dataset::load_files(std::slice::from_ref(&semi), &opts).unwrap_err();
    assert!(matches!(err, TrainError::NoChannels), "{err}");
    std::fs::write(
        &semi,
        "time;device;temp;mode;noise;label\n\
         2026-01-01T00:00:00Z;p1;20.5;run;1;0\n\
         2026-01-01T00:00:01Z;p1;;idle;2;1\n\
         2026-01-01T00:00:02Z;p1;21.5;run;3;no\n",
    )
    .unwrap();
    let t = dataset::load_files(&[semi], &opts).unwrap();
    assert_eq!(t.numeric_names, ["temp"]);
    assert_eq!(t.cat_names, ["mode"]);
    assert_eq!(t.labels, Some(vec![false, true, false]));
    assert_eq!(t.period_ns, Some(1_000_000_000));
    assert!(t.numeric[0][1].is_nan());
    assert_eq!(t.devices, ["p1", "p1", "p1"]);

    let tab = write(
        dir.path(),
        "b.tsv",
        "ts\tx\ty\n1767225600\t1\t2\n1767225601\t3\t4\n",
    );
    let t = dataset::load_files(
        &[tab],
        &ColumnOptions {
            time_column: Some("ts".into()),
            ..ColumnOptions::default()
        },
    )
    .unwrap();
    assert_eq!(t.numeric_names, ["x", "y"]);
    assert_eq!(
        t.times,
        Some(vec![1_767_225_600_000_000_000, 1_767_225_601_000_000_000])
    );

    let bad = write(dir.path(), "c.csv", "x,label\n1,maybe\n");
    let err = dataset::load_files(
        &[bad],
        &ColumnOptions {
            label_column: Some("label".into()),
            ..ColumnOptions::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, TrainError::BadLabel { row: 1, .. }), "{err}");
    let missing = write(dir.path(), "d.csv", "x\n1\n");
    let err = dataset::load_files(
        &[missing],
        &ColumnOptions {
            time_column: Some("t".into()),
            ..ColumnOptions::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, TrainError::MissingColumn { .. }), "{err}");
}

#[test]
fn senml_json_and_ndjson_become_frames_on_the_grid_with_hold() {
    let dir = tempfile::tempdir().unwrap();
    let senml = write(
        dir.path(),
        "a.json",
        r#"[{"bn":"pump-1/","bt":1767225600,"n":"temp","v":20},{"n":"flow","v":1},
            {"n":"temp","v":21,"t":1},{"n":"temp","v":22,"t":2},{"n":"flow","v":3,"t":2},
            {"n":"temp","v":25,"t":10}]"#,
    );
    assert_eq!(FileKind::of(&senml).unwrap(), FileKind::Json);
    let opts = ColumnOptions {
        period: Some(std::time::Duration::from_secs(1)),
        ..ColumnOptions::default()
    };
    let t = dataset::load_files(&[senml], &opts).unwrap();
    assert_eq!(t.numeric_names, ["flow", "temp"]);
    let secs: Vec<i64> = t
        .times
        .as_ref()
        .unwrap()
        .iter()
        .map(|t| t / 1_000_000_000 - 1_767_225_600)
        .collect();
    // Frames 0, 1, 2, 3 (flow held 1 s; temp held 1 s), then nothing until 10.
    assert_eq!(secs, [0, 1, 2, 3, 10]);
    assert_eq!(t.numeric[1][..3], [20.0, 21.0, 22.0]);
    assert_eq!(t.numeric[0][1], 1.0); // flow at 1 s: held from 0 s
    assert!(t.numeric[1][3] == 22.0 && t.numeric[0][3] == 3.0);
    assert!(t.numeric[0][4].is_nan()); // flow expired at 10 s

    let nd = write(
        dir.path(),
        "b.ndjson",
        "{\"device\":\"d1\",\"ts\":1767225600,\"x\":1.0}\n\n{\"device\":\"d1\",\"ts\":1767225601,\"x\":2.0}\n",
    );
    let t = dataset::load_files(&[nd], &opts).unwrap();
    assert_eq!(t.numeric, vec![vec![1.0, 2.0]]);
    assert_eq!(t.devices, ["d1", "d1"]);
}

#[test]
fn windows_drop_gaps_or_forward_fill_within_the_tolerance() {
    let dir = tempfile::tempdir().unwrap();
    let csv = write(
        dir.path(),
        "w.csv",
        "t,x,y\n0,1,1\n1,2,2\n2,,3\n3,4,4\n4,5,5\n5,6,6\n",
    );
    let opts = ColumnOptions {
        time_column: Some("t".into()),
        ..ColumnOptions::default()
    };
    let table = dataset::load_files(&[csv], &opts).unwrap();
    let spec = protocol::features::FeatureSpec {
        channels: vec!["x".into(), "y".into()],
        stats: vec![protocol::features::Stat::Mean],
        bands: None,
        raw: false,
        categorical: Vec::new(),
        baseline: None,
    };
    let w = |missing| WindowOptions {
        len: 2,
        hop: 1,
        features: Some(spec.clone()),
        missing,
    };
    let (s, st) = dataset::build_samples(&table, &w(MissingPolicy::Drop)).unwrap();
    // Windows end at rows 1..=5; those ending at 2 and 3 hold the gap.
    assert_eq!(s.len(), 3);
    assert_eq!(st.dropped_with_gaps, 2);
    assert_eq!(s.row_status[0], RowStatus::BeforeFullWindow);
    assert_eq!(s.row_status[2], RowStatus::Gap);
    let (s, st) = dataset::build_samples(&table, &w(MissingPolicy::ForwardFill(1))).unwrap();
    assert_eq!((s.len(), st.filled_cells, st.dropped_with_gaps), (5, 1, 0));
    assert_eq!(s.x[(1, 0)], 2.0); // mean of x at rows 1, 2 = (2 + 2)/2
    assert_eq!(s.x[(1, 1)], 2.5);
}

#[test]
fn the_running_baseline_is_replayed_per_device_in_time_order() {
    // Two devices, seconds 0..4, windows of 2 rows, τ = 2 s. Device `a`
    // is steady at 10 then steps to 20 at second 3; `b` runs at 100 all
    // along and must start from its own level, not from `a`'s.
    let dir = tempfile::tempdir().unwrap();
    let csv = write(
        dir.path(),
        "b.csv",
        "t,dev,x\n0,a,10\n1,a,10\n2,a,10\n3,a,20\n4,a,20\n0,b,100\n1,b,100\n2,b,100\n3,b,100\n4,b,100\n",
    );
    let opts = ColumnOptions {
        time_column: Some("t".into()),
        device_column: Some("dev".into()),
        ..ColumnOptions::default()
    };
    let table = dataset::load_files(&[csv], &opts).unwrap();
    let spec = protocol::features::FeatureSpec {
        channels: vec!["x".into()],
        stats: vec![protocol::features::Stat::Mean],
        bands: None,
        raw: false,
        categorical: Vec::new(),
        baseline: Some(protocol::features::BaselineSpec {
            time_constant: std::time::Duration::from_secs(2),
        }),
    };
    let w = WindowOptions {
        len: 2,
        hop: 1,
        features: Some(spec),
        missing: MissingPolicy::Drop,
    };
    let (s, _) = dataset::build_samples(&table, &w).unwrap();
    assert_eq!(s.names, ["x.mean", "x.baseline_dev"]);
    let rows: Vec<(String, f64, f64)> = (0..s.len())
        .map(|i| (s.devices[i].clone(), s.x[(i, 0)], s.x[(i, 1)]))
        .collect();
    // Device a: windows end at 1, 2, 3, 4 with means 10, 10, 15, 20. The
    // baseline starts at 10; at 3 the deviation is 5, then the baseline
    // moves by α = 1 − e^(−1/2) towards 15.
    let b3 = 10.0 + (1.0 - (-0.5f64).exp()) * 5.0;
    let want = [
        ("a", 10.0, 0.0),
        ("a", 10.0, 0.0),
        ("a", 15.0, 5.0),
        ("a", 20.0, 20.0 - b3),
        ("b", 100.0, 0.0),
        ("b", 100.0, 0.0),
        ("b", 100.0, 0.0),
        ("b", 100.0, 0.0),
    ];
    assert_eq!(rows.len(), want.len(), "{rows:?}");
    for ((d, m, dev), (wd, wm, wdev)) in rows.iter().zip(want) {
        assert_eq!((d.as_str(), *m), (wd, wm));
        assert!((dev - wdev).abs() < 1e-9, "{rows:?}");
    }
}
