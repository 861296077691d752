//! The `train`, `evaluate` and `score` commands, as library functions.
//!
//! # Train
//! [`train`] reads files into a frame table (step 1) and hands it to
//! [`train_table`], which does the rest on any table in memory: the sink's
//! training jobs ([`super::jobs`]) call it directly with a table read from
//! storage, and say so in the report's `data.inputs`.
//!
//! 1. Load the inputs into a frame table ([`super::dataset`]).
//! 2. Hold out data the model never sees until the end: with labels and at
//!    least 3 devices, the last `⌈holdout·devices⌉` devices of a seeded
//!    shuffle (held-out *devices*); otherwise the latest `holdout` fraction
//!    of windows by time.
//! 3. Cross-validate every candidate family on the rest. With labels and at
//!    least 3 training devices the folds are **by device** (every window of
//!    a device in one test fold, one fold per device up to `folds`): a fleet
//!    model is applied to devices it was not trained on, and windows of one
//!    device overlap, so random folds would score near-copies of training
//!    windows. With labels but fewer devices: stratified k-fold (every fold
//!    keeps the anomaly ratio); without labels: blocked folds (consecutive
//!    time blocks, each tested once). The forecaster additionally gets
//!    k-fold and forward-chaining regression metrics. Unsupervised families
//!    are fitted on normal windows only. In each fold the fold metrics use a
//!    threshold chosen on the fold's training scores.
//! 4. Choose: with `--family auto` and labels, the family with the best
//!    mean cross-validated F1 of the first cross-validation above (ties:
//!    PR-AUC); the report's `reason` states it, with the fold spread, the
//!    runner-up and the families that could not be validated. Without
//!    labels, the one-class family that catches the most simulated
//!    one-channel shifts ([`shift_probes`]) at its calibrated threshold.
//! 5. Fit the chosen family on all training windows. **Calibrate**
//!    ([`calibrate`]) on the pooled out-of-fold scores — each fold's scores
//!    put on the family's shared scale first, see
//!    `FittedModel::score_offset` — smoothed per device in time order as the
//!    gateway will: the smoothing (`--smoothing`), then the threshold by the
//!    rule (default: best F1 with labels, the 0.99 quantile without), and
//!    the false-alarm rate each fold gives at it (the rate to expect). The
//!    final model's own training scores are never used: they are lower than
//!    any new data's, most with many features and few windows.
//! 6. Evaluate on the held-out set (its scores smoothed the same way);
//!    write `model.json`, `report.json`,
//!    `report.html` ([`write_outputs`]).
//! 7. With [`TrainOptions::fleet`] (`--fleet`, autoencoder only): fleet
//!    transfer learning ([`fleet::train_fleet`]) on the training windows
//!    (normal ones when labelled) grouped by device in time order and
//!    standardised by the pipeline fitted in step 5. Each device's
//!    fine-tuned model becomes a [`SavedModel`] of its own, thresholded by
//!    the rule without labels (the 0.99 quantile, or the target false-alarm
//!    rate, of its scores on the device's windows), written to
//!    `devices/<device>/model.json` ([`device_dir_name`] escapes the name);
//!    the [`fleet::FleetReport`] goes into the report's `fleet`. A device
//!    with too few windows to fine-tune is left out and listed in the
//!    report's `fleet.skipped`; held-out devices (step 2) get no model.
//!
//! **Progress.** Every cross-validation of step 3 is planned before the
//! first fold runs, so the progress bar's length is the number of folds
//! that will run (the forecaster's extra cross-validations included;
//! by-device folds may be fewer than `folds`), and each fold validated
//! advances it by one. A family that fails mid-way has the folds it skips
//! taken off the length: a finished run ends with position = length.
//!
//! **Cancelling.** [`train_table`] checks a [`CancelToken`] before every
//! fold, between families and around the final fit, and returns
//! [`TrainTableError::Cancelled`] at the first check after it is cancelled.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use protocol::decision::{Decider, Decision, DecisionSpec, Smoothing, SmoothingState};
use protocol::features::{BaselineSpec, FeatureSpec, Stat};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use tracing::info;

use super::TrainError;
use super::cv::{self, Fold, FoldKind};
use super::dataset::{
    self, ColumnOptions, MissingPolicy, RowStatus, SampleStats, Samples, Table, WindowOptions,
};
use super::families::autoencoder::{MIN_ROWS, split_tail};
use super::families::fleet::{self, FleetReport};
use super::families::{FamilyKind, FittedModel, HyperParams};
use super::metrics::{BinaryMetrics, RegressionMetrics, Spread};
use super::preprocess::{Pipeline, Scaling};
use super::report::{
    Calibration, DataSummary, FamilyResult, FoldResult, TrainingReport, fold_metric,
};
use super::threshold::{self, Threshold, ThresholdRule};

/// Frames per window `outpost-cloud-sink train` uses unless told otherwise.
pub const DEFAULT_WINDOW: usize = 4;

/// Options of a training run.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub inputs: Vec<PathBuf>,
    pub columns: ColumnOptions,
    /// `None`: choose by validation.
    pub family: Option<FamilyKind>,
    /// Rows per window for the feature families (1 = each row is a sample).
    pub window_len: usize,
    pub hop: usize,
    /// Statistics per channel and window (`window_len ≥ 2`).
    pub stats: Vec<Stat>,
    /// Also the window's frames themselves as features (`--raw`): every
    /// channel at every lag, the inputs of dynamic PCA.
    pub raw: bool,
    pub missing: MissingPolicy,
    pub scaling: Scaling,
    /// Log-scale the spread statistics before standardising
    /// ([`Pipeline::fit_with_log_spread`]; `--log-spread`). The exported
    /// graph applies the same logarithm.
    pub log_spread: bool,
    /// Add each channel's deviation from the device's running baseline
    /// with this time constant (`--baseline`; `protocol::features::baseline`).
    /// Not for the forecaster, whose inputs are the raw lags.
    pub baseline: Option<Duration>,
    pub folds: usize,
    /// Fraction held out for the final evaluation.
    pub holdout: f64,
    pub seed: u64,
    pub hyper: HyperParams,
    /// `None`: best F1 with labels, the 0.99 normal quantile without.
    pub threshold: Option<ThresholdRule>,
    /// How window scores are smoothed before the threshold (`--smoothing`).
    pub smoothing: SmoothingChoice,
    /// Fleet transfer learning after the final fit (step 7 of the module
    /// docs); needs `family = Some(Autoencoder)`.
    pub fleet: bool,
}

impl TrainOptions {
    pub fn new(inputs: Vec<PathBuf>) -> Self {
        TrainOptions {
            inputs,
            columns: ColumnOptions::default(),
            family: None,
            window_len: 1,
            hop: 1,
            stats: vec![Stat::Mean, Stat::Std, Stat::Min, Stat::Max, Stat::Slope],
            raw: false,
            missing: MissingPolicy::Drop,
            scaling: Scaling::Plain,
            log_spread: false,
            baseline: None,
            folds: 5,
            holdout: 0.2,
            seed: 1,
            hyper: HyperParams::default(),
            threshold: None,
            smoothing: SmoothingChoice::Auto,
            fleet: false,
        }
    }
}

/// How the smoothing of window scores is chosen (see [`protocol::decision`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SmoothingChoice {
    /// Without labels [`UNLABELLED_SMOOTHING`]; with labels the candidate of
    /// [`SMOOTHING_CANDIDATES`] whose out-of-fold F1 is highest.
    Auto,
    Fixed(Smoothing),
}

impl std::str::FromStr for SmoothingChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            Ok(SmoothingChoice::Auto)
        } else {
            s.parse().map(SmoothingChoice::Fixed)
        }
    }
}

/// The smoothing of one-class models (no labels to choose by): an EWMA that
/// remembers about the last ten windows. On the Tennessee Eastman plant it
/// takes the mean detection over the 18 detectable faults from 0.84 to 0.93
/// at fewer false alarms (BENCHMARKS.md); a persistent fault moves the
/// average, noise in single windows does not.
pub const UNLABELLED_SMOOTHING: Smoothing = Smoothing::Ewma(0.1);

/// What `--smoothing auto` compares with labels, the raw score first (ties
/// keep the least smoothing: it alarms soonest).
pub const SMOOTHING_CANDIDATES: [Smoothing; 4] = [
    Smoothing::None,
    Smoothing::Ewma(0.5),
    Smoothing::Ewma(0.2),
    Smoothing::Ewma(0.1),
];

/// Stops [`train_table`] at its next fold boundary: the flag is checked
/// before every cross-validation fold, between families and around the
/// final fit. Clones share the flag.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the training that holds this token (or a clone of it) to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    fn check(&self) -> Result<(), TrainTableError> {
        if self.is_cancelled() {
            Err(TrainTableError::Cancelled)
        } else {
            Ok(())
        }
    }
}

/// Why [`train_table`] returned no model.
#[derive(Debug, thiserror::Error)]
pub enum TrainTableError {
    /// Its [`CancelToken`] was cancelled; training stopped at a fold
    /// boundary.
    #[error("training was cancelled")]
    Cancelled,
    #[error(transparent)]
    Train(#[from] TrainError),
}

/// Everything needed to apply a trained model (saved as `model.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavedModel {
    pub format_version: u32,
    pub family: FamilyKind,
    pub window: WindowOptions,
    pub channels: Vec<String>,
    pub categorical: Vec<String>,
    pub time_column: Option<String>,
    pub device_column: Option<String>,
    pub exclude: Vec<String>,
    pub period_ns: Option<i64>,
    pub pipeline: Pipeline,
    pub model: FittedModel,
    pub threshold: Threshold,
    /// Smoothing of each device's window scores before the threshold
    /// (absent in models trained before it existed: none).
    #[serde(default)]
    pub smoothing: Smoothing,
}

impl SavedModel {
    /// Window scores of samples built with this model's window options.
    pub fn score(&self, samples: &Samples) -> Result<Vec<f64>, TrainError> {
        let z = self.pipeline.transform(&samples.x, &samples.categorical)?;
        self.model.score(&z)
    }

    /// The scores the threshold applies to: [`score`](Self::score)
    /// smoothed per device in time order, as the gateway does.
    pub fn decision_scores(&self, samples: &Samples) -> Result<Vec<f64>, TrainError> {
        let raw = self.score(samples)?;
        let all: Vec<usize> = (0..samples.len()).collect();
        Ok(smooth_by_device(samples, &all, &raw, self.smoothing))
    }

    /// Builds the samples of `table` the way this model was trained.
    pub fn samples(&self, table: &Table, hop: usize) -> Result<(Samples, SampleStats), TrainError> {
        // Extra numeric columns (a label column, say) are ignored; every
        // channel the model was trained on must be there.
        let mut numeric = Vec::with_capacity(self.channels.len());
        for ch in &self.channels {
            match table.numeric_names.iter().position(|n| n == ch) {
                Some(i) => numeric.push(table.numeric[i].clone()),
                None => {
                    return Err(TrainError::Option {
                        option: "--input",
                        message: format!(
                            "the model's channel {ch:?} is not in the data (its channels: {:?})",
                            table.numeric_names
                        ),
                    });
                }
            }
        }
        let projected;
        let table = if numeric.len() == table.numeric.len() && table.numeric_names == self.channels
        {
            table
        } else {
            projected = Table {
                numeric_names: self.channels.clone(),
                numeric,
                ..table.clone()
            };
            &projected
        };
        if table.cat_names != self.categorical {
            return Err(TrainError::Option {
                option: "--input",
                message: format!(
                    "the data's categorical channels {:?} are not the model's {:?}",
                    table.cat_names, self.categorical
                ),
            });
        }
        let mut w = self.window.clone();
        w.hop = hop;
        dataset::build_samples(table, &w)
    }

    pub fn load(dir: &Path) -> Result<Self, TrainError> {
        let path = dir.join("model.json");
        let text = std::fs::read_to_string(&path).map_err(|source| TrainError::Read {
            path: path.clone(),
            source,
        })?;
        Ok(serde_json::from_str(&text)?)
    }
}

/// The result of [`train`] and [`train_table`].
#[derive(Debug)]
pub struct TrainOutcome {
    pub model: SavedModel,
    pub report: TrainingReport,
    /// Held-out samples (raw features), for the export check and
    /// champion/challenger comparisons.
    pub heldout: Samples,
    pub heldout_scores: Vec<f64>,
    /// With [`TrainOptions::fleet`]: each device's fine-tuned model, by
    /// device name (empty otherwise).
    pub devices: Vec<DeviceModel>,
}

/// One device's fine-tuned model of a fleet run.
#[derive(Clone, Debug)]
pub struct DeviceModel {
    pub device: String,
    /// Its directory under `devices/` ([`device_dir_name`]).
    pub dir: String,
    pub model: SavedModel,
}

/// A device name as a single safe directory name: ASCII letters, digits,
/// `-`, `_` and (not first) `.` are kept, every other byte becomes `%XX`
/// (so `/`, `\`, `%`, control characters and a leading dot — `.`, `..` —
/// are escaped); the empty name is `%`. Distinct names give distinct
/// directories.
pub fn device_dir_name(device: &str) -> String {
    if device.is_empty() {
        return "%".into();
    }
    let mut out = String::with_capacity(device.len());
    for (i, b) in device.bytes().enumerate() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (b == b'.' && i > 0) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn window_options(opts: &TrainOptions, kind: FamilyKind, table: &Table) -> WindowOptions {
    match kind {
        FamilyKind::Forecast => WindowOptions {
            len: opts.hyper.lags + 1,
            hop: 1,
            features: Some(FeatureSpec {
                channels: table.numeric_names.clone(),
                stats: Vec::new(),
                bands: None,
                raw: true,
                categorical: Vec::new(),
                baseline: None,
            }),
            missing: opts.missing,
        },
        _ if opts.window_len <= 1 => WindowOptions {
            len: 1,
            hop: opts.hop,
            features: None,
            missing: opts.missing,
        },
        _ => WindowOptions {
            len: opts.window_len,
            hop: opts.hop,
            features: Some(FeatureSpec {
                channels: table.numeric_names.clone(),
                stats: opts.stats.clone(),
                bands: None,
                raw: opts.raw,
                categorical: Vec::new(),
                baseline: opts
                    .baseline
                    .map(|time_constant| BaselineSpec { time_constant }),
            }),
            missing: opts.missing,
        },
    }
}

/// Indices of training and held-out samples, and how they were chosen.
fn holdout_split(samples: &Samples, frac: f64, seed: u64) -> (Vec<usize>, Vec<usize>, String) {
    let mut devices: Vec<String> = samples.devices.clone();
    devices.sort();
    devices.dedup();
    let n = samples.len();
    if samples.labels.is_some() && devices.len() >= 3 {
        devices.shuffle(&mut StdRng::seed_from_u64(seed));
        let k = ((frac * devices.len() as f64).ceil() as usize).clamp(1, devices.len() - 1);
        let held: Vec<String> = devices[devices.len() - k..].to_vec();
        let (test, train): (Vec<usize>, Vec<usize>) =
            (0..n).partition(|&i| held.contains(&samples.devices[i]));
        return (
            train,
            test,
            format!("held-out devices: {}", held.join(", ")),
        );
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| samples.times[i]);
    let cut = n - ((frac * n as f64).ceil() as usize).min(n.saturating_sub(2));
    let mut train = order[..cut].to_vec();
    let mut test = order[cut..].to_vec();
    train.sort_unstable();
    test.sort_unstable();
    (
        train,
        test,
        format!("the latest {:.0}% of windows by time", frac * 100.0),
    )
}

/// Smooths `scores[i]`, the score of sample `idx[i]`, per device in time
/// order (ties in sample order), one [`SmoothingState`] per device — what a
/// gateway does with the same windows. Returned in the order of `idx`.
pub fn smooth_by_device(
    s: &Samples,
    idx: &[usize],
    scores: &[f64],
    smoothing: Smoothing,
) -> Vec<f64> {
    if smoothing == Smoothing::None {
        return scores.to_vec();
    }
    let mut order: Vec<usize> = (0..idx.len().min(scores.len())).collect();
    order.sort_by(|&a, &b| {
        let (i, j) = (idx[a], idx[b]);
        s.devices[i]
            .cmp(&s.devices[j])
            .then(s.times[i].cmp(&s.times[j]))
            .then(i.cmp(&j))
    });
    let mut out = scores.to_vec();
    let mut state = SmoothingState::default();
    let mut device: Option<&str> = None;
    for pos in order {
        let d = s.devices[idx[pos]].as_str();
        if device != Some(d) {
            state = SmoothingState::default();
            device = Some(d);
        }
        out[pos] = state.push(smoothing, scores[pos]);
    }
    out
}

/// Fits pipeline + model on `train` (normal windows only for unsupervised
/// families when labels exist).
fn fit_on(
    kind: FamilyKind,
    s: &Samples,
    train: &[usize],
    opts: &TrainOptions,
) -> Result<(Pipeline, FittedModel), TrainError> {
    let rows: Vec<usize> = match (&s.labels, kind.normal_only()) {
        (Some(l), true) => train.iter().copied().filter(|&i| !l[i]).collect(),
        _ => train.to_vec(),
    };
    let sub = s.select(&rows);
    let fit = if opts.log_spread {
        Pipeline::fit_with_log_spread
    } else {
        Pipeline::fit
    };
    let pipeline = fit(
        &sub.x,
        &sub.names,
        &sub.categorical,
        &sub.cat_names,
        opts.scaling,
    )?;
    let z = pipeline.transform(&sub.x, &sub.categorical)?;
    let names = pipeline.output_names();
    let model = FittedModel::fit(
        kind,
        &z,
        &names,
        sub.labels.as_deref(),
        Some(&sub.devices),
        s.channels,
        &opts.hyper,
    )?;
    Ok((pipeline, model))
}

fn score_rows(
    p: &Pipeline,
    m: &FittedModel,
    s: &Samples,
    rows: &[usize],
) -> Result<Vec<f64>, TrainError> {
    let sub = s.select(rows);
    let z = p.transform(&sub.x, &sub.categorical)?;
    m.score(&z)
}

/// Devices among the `train` samples.
fn train_devices(s: &Samples, train: &[usize]) -> usize {
    let set: std::collections::HashSet<&str> =
        train.iter().map(|&i| s.devices[i].as_str()).collect();
    set.len()
}

/// Folds of the by-device cross-validation: `folds`, or one per device when
/// there are fewer devices.
fn device_folds(s: &Samples, train: &[usize], folds: usize) -> usize {
    folds.min(train_devices(s, train))
}

/// The cross-validation that compares families and gives the threshold's
/// out-of-fold scores: by device with labels, at least 3 training devices,
/// and both classes in the training part of every by-device fold (a fold
/// tests devices the model never saw, as the held-out set does); stratified
/// with labels otherwise (anomalies on too few devices); blocked (consecutive
/// time blocks) without labels.
fn primary_fold_kind(s: &Samples, train: &[usize], folds: usize, seed: u64) -> FoldKind {
    let Some(labels) = &s.labels else {
        return FoldKind::Blocked;
    };
    let k = device_folds(s, train, folds);
    let groups: Vec<String> = train.iter().map(|&i| s.devices[i].clone()).collect();
    let both_classes = |f: &Fold| {
        let pos = f.train.iter().filter(|&&j| labels[train[j]]).count();
        pos > 0 && pos < f.train.len()
    };
    match cv::group_kfold(&groups, k, seed) {
        Ok(fs) if k >= 3 && fs.iter().all(both_classes) => FoldKind::ByDevice,
        _ => FoldKind::Stratified,
    }
}

fn default_rule(labelled: bool) -> ThresholdRule {
    if labelled {
        ThresholdRule::BestF1
    } else {
        ThresholdRule::NormalQuantile(0.99)
    }
}

fn forecast_regression(
    p: &Pipeline,
    m: &FittedModel,
    s: &Samples,
    rows: &[usize],
) -> Result<Option<RegressionMetrics>, TrainError> {
    let FittedModel::Forecast(f) = m else {
        return Ok(None);
    };
    let sub = s.select(rows);
    let z = p.transform(&sub.x, &sub.categorical)?;
    let truth = f.target(&z);
    let pred = f.predict(&z);
    Ok(RegressionMetrics::compute(
        truth.as_slice(),
        pred.as_slice(),
    ))
}

/// The folds of one cross-validation of `train` samples (indices into
/// `train`).
fn make_folds(
    fold_kind: FoldKind,
    s: &Samples,
    train: &[usize],
    opts: &TrainOptions,
) -> Result<Vec<Fold>, TrainError> {
    match fold_kind {
        FoldKind::Stratified => match &s.labels {
            Some(l) => {
                let l: Vec<bool> = train.iter().map(|&i| l[i]).collect();
                cv::stratified_kfold(&l, opts.folds, opts.seed)
            }
            None => Err(TrainError::NeedLabels {
                what: "stratified folds",
                detail: "the data has none".into(),
            }),
        },
        FoldKind::KFold => cv::kfold(train.len(), opts.folds, opts.seed),
        FoldKind::ByDevice => {
            let g: Vec<String> = train.iter().map(|&i| s.devices[i].clone()).collect();
            cv::group_kfold(&g, device_folds(s, train, opts.folds), opts.seed)
        }
        FoldKind::Blocked => {
            let t: Vec<i64> = train.iter().map(|&i| s.times[i]).collect();
            cv::blocked(&t, opts.folds)
        }
        FoldKind::ForwardChaining => {
            let t: Vec<i64> = train.iter().map(|&i| s.times[i]).collect();
            cv::forward_chaining(&t, opts.folds)
        }
    }
}

/// One sample's score from the fold model that did not train on it.
#[derive(Clone, Copy, Debug)]
struct OutOfFold {
    sample: usize,
    fold: usize,
    /// On the family's shared scale (see `FittedModel::score_offset`).
    score: f64,
}

/// What one cross-validation gives.
struct Validated {
    result: FamilyResult,
    /// The pooled out-of-fold scores.
    oof: Vec<OutOfFold>,
    /// Per probe ([`shift_probes`]), its out-of-fold scores in the order of
    /// `oof`.
    probe_oof: Vec<Vec<f64>>,
}

/// The data one cross-validation runs on: samples, their shifted copies
/// (may be empty) and the indices of the training part.
#[derive(Clone, Copy)]
struct CvData<'a> {
    samples: &'a Samples,
    probes: &'a [Samples],
    train: &'a [usize],
}

/// Cross-validates one family on the `train` samples of `data`; also
/// returns the pooled out-of-fold scores. A family that fails is
/// reported in its result; only cancellation is an error. Each fold done
/// advances `progress` by one; the folds a failure skips are taken off its
/// length, so that the position ends at the length.
fn cross_validate(
    kind: FamilyKind,
    fold_kind: FoldKind,
    data: CvData<'_>,
    opts: &TrainOptions,
    progress: &ProgressBar,
    cancel: &CancelToken,
) -> Result<Validated, TrainTableError> {
    let CvData {
        samples: s,
        probes,
        train,
    } = data;
    let start = Instant::now();
    let mut result = FamilyResult {
        family: kind,
        fold_kind,
        folds: Vec::new(),
        spread: Default::default(),
        error: None,
        seconds: 0.0,
        shift_detection: None,
        expected_false_alarm_rate: None,
    };
    let mut oof = Vec::new();
    // Per probe, its out-of-fold scores in the order of `oof`.
    let mut probe_oof: Vec<Vec<f64>> = vec![Vec::new(); probes.len()];
    let labels_of = |idx: &[usize]| {
        s.labels
            .as_ref()
            .map(|l| idx.iter().map(|&i| l[i]).collect::<Vec<bool>>())
    };
    let folds = make_folds(fold_kind, s, train, opts);
    let planned = folds.as_ref().map_or(0, Vec::len);
    let run = || -> Result<(), TrainTableError> {
        for (index, fold) in folds?.iter().enumerate() {
            cancel.check()?;
            progress.set_message(format!(
                "{} {:?} fold {}",
                kind.name(),
                fold_kind,
                index + 1
            ));
            let tr: Vec<usize> = fold.train.iter().map(|&i| train[i]).collect();
            let te: Vec<usize> = fold.test.iter().map(|&i| train[i]).collect();
            let (p, m) = fit_on(kind, s, &tr, opts)?;
            let tr_scores = score_rows(&p, &m, s, &tr)?;
            let te_scores = score_rows(&p, &m, s, &te)?;
            let tr_labels = labels_of(&tr);
            let te_labels = labels_of(&te);
            let rule = opts.threshold.unwrap_or(default_rule(tr_labels.is_some()));
            let th = threshold::choose(rule, &tr_scores, tr_labels.as_deref())?;
            // On the family's shared scale (see `FittedModel::score_offset`).
            let offset = m.score_offset();
            oof.extend(te.iter().zip(&te_scores).map(|(&sample, v)| OutOfFold {
                sample,
                fold: index,
                score: v + offset,
            }));
            for (probe, out) in probes.iter().zip(&mut probe_oof) {
                out.extend(
                    score_rows(&p, &m, probe, &te)?
                        .into_iter()
                        .map(|v| v + offset),
                );
            }
            let alarm_rate = te_labels.is_none().then(|| {
                te_scores.iter().filter(|v| **v > th.value).count() as f64
                    / te_scores.len().max(1) as f64
            });
            info!(
                family = kind.name(),
                fold = index,
                train = tr.len(),
                test = te.len(),
                "fold done"
            );
            result.folds.push(FoldResult {
                index,
                train: tr.len(),
                test: te.len(),
                metrics: te_labels.map(|l| BinaryMetrics::compute(&te_scores, &l, th.value)),
                regression: forecast_regression(&p, &m, s, &te)?,
                alarm_rate,
            });
            progress.inc(1);
        }
        Ok(())
    };
    match run() {
        Ok(()) => {}
        Err(TrainTableError::Cancelled) => return Err(TrainTableError::Cancelled),
        Err(TrainTableError::Train(e)) => result.error = Some(e.to_string()),
    }
    let skipped = planned.saturating_sub(result.folds.len()) as u64;
    if skipped > 0 {
        progress.set_length(progress.length().unwrap_or(0).saturating_sub(skipped));
    }
    let mut names: Vec<&str> = Vec::new();
    if s.labels.is_some() {
        names.extend(BinaryMetrics::NAMES);
    } else {
        names.push("alarm_rate");
    }
    if kind == FamilyKind::Forecast {
        names.extend(["mse", "mae", "r2"]);
    }
    for name in names {
        let values: Vec<Option<f64>> = result.folds.iter().map(|f| fold_metric(f, name)).collect();
        result.spread.insert(name.to_owned(), Spread::of(&values));
    }
    result.seconds = start.elapsed().as_secs_f64();
    Ok(Validated {
        result,
        oof,
        probe_oof,
    })
}

/// The size of the simulated shift of [`shift_probes`], in the channel's
/// training standard deviations.
pub const PROBE_SHIFT_STD: f64 = 1.0;
/// Most channels [`shift_probes`] shifts (evenly spread over the channels).
pub const MAX_PROBE_CHANNELS: usize = 16;

/// Samples of `table` with one channel shifted by [`PROBE_SHIFT_STD`] of its
/// standard deviation, one per probed channel — a sensor offset, the
/// simplest fault a one-class model must catch. Without labels, `--family
/// auto` compares families by how many probe windows alarm at each family's
/// calibrated threshold (each scored by the fold model that never trained
/// on them). Channels that do not vary are not probed; a probe whose windows
/// do not line up with the unshifted samples is left out.
fn shift_probes(
    table: &Table,
    window: &WindowOptions,
    samples: &Samples,
) -> Result<Vec<Samples>, TrainError> {
    let channels = table.numeric.len();
    let step = channels.div_ceil(MAX_PROBE_CHANNELS).max(1);
    let mut probes = Vec::new();
    for c in (0..channels).step_by(step) {
        let finite: Vec<f64> = table.numeric[c]
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .collect();
        let n = finite.len() as f64;
        if finite.len() < 2 {
            continue;
        }
        let mean = finite.iter().sum::<f64>() / n;
        let std = (finite.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n).sqrt();
        if !(std > 0.0 && std.is_finite()) {
            continue;
        }
        let mut shifted = table.clone();
        for v in &mut shifted.numeric[c] {
            *v += PROBE_SHIFT_STD * std;
        }
        let (probe, _) = dataset::build_samples(&shifted, window)?;
        if probe.len() == samples.len() && probe.end_rows == samples.end_rows {
            probes.push(probe);
        }
    }
    Ok(probes)
}

fn check_holdout(opts: &TrainOptions) -> Result<(), TrainError> {
    if opts.baseline.is_some() && opts.window_len < 2 {
        return Err(TrainError::Option {
            option: "--baseline",
            message: "a running baseline compares window means: it needs --window 2 or more".into(),
        });
    }
    if opts.fleet && opts.family != Some(FamilyKind::Autoencoder) {
        return Err(TrainError::Option {
            option: "--fleet",
            message: format!(
                "fleet transfer learning fine-tunes the autoencoder: it needs --family autoencoder, not {}",
                opts.family.map_or("auto", FamilyKind::name)
            ),
        });
    }
    if opts.holdout > 0.0 && opts.holdout < 1.0 {
        Ok(())
    } else {
        Err(TrainError::Option {
            option: "--holdout",
            message: format!("{} is not in (0, 1)", opts.holdout),
        })
    }
}

/// Step 7 of the module docs: the fleet run on the training windows
/// `train` of `samples`, standardised by `base`'s pipeline; each device's
/// model is `base` with the fine-tuned autoencoder and its own threshold.
fn train_devices_fleet(
    opts: &TrainOptions,
    samples: &Samples,
    train: &[usize],
    base: &SavedModel,
) -> Result<(FleetReport, Vec<DeviceModel>), TrainError> {
    let rows: Vec<usize> = match &samples.labels {
        Some(l) => train.iter().copied().filter(|&i| !l[i]).collect(),
        None => train.to_vec(),
    };
    let mut by_device: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for i in rows {
        by_device
            .entry(samples.devices[i].as_str())
            .or_default()
            .push(i);
    }
    let mut matrices = BTreeMap::new();
    let mut skipped = Vec::new();
    for (device, mut idx) in by_device {
        idx.sort_by_key(|&i| (samples.times[i], i));
        let sub = samples.select(&idx);
        let z = base.pipeline.transform(&sub.x, &sub.categorical)?;
        // A device too short to fine-tune is left out, not the whole fleet.
        let train_rows = split_tail(&z, fleet::DEFAULT_HELDOUT_FRACTION).0.nrows();
        if train_rows < MIN_ROWS {
            skipped.push(format!(
                "{device}: {} training windows, {train_rows} after holding out {:.0}% (needs {MIN_ROWS})",
                z.nrows(),
                100.0 * fleet::DEFAULT_HELDOUT_FRACTION
            ));
            continue;
        }
        matrices.insert(device.to_owned(), z);
    }
    if matrices.is_empty() {
        return Err(TrainError::Option {
            option: "--fleet",
            message: format!(
                "no device has enough training windows ({})",
                skipped.join("; ")
            ),
        });
    }
    let names = base.pipeline.output_names();
    let mut fleet = fleet::train_fleet(
        &matrices,
        &names,
        fleet::DEFAULT_HELDOUT_FRACTION,
        &opts.hyper,
    )?;
    fleet.report.skipped = skipped;
    // The rule the main model would use without labels.
    let rule = match opts.threshold {
        Some(r @ ThresholdRule::TargetFalseAlarmRate(_)) => r,
        _ => default_rule(false),
    };
    let mut devices = Vec::with_capacity(fleet.devices.len());
    for (device, tuned) in fleet.devices {
        let scores = tuned.score(&matrices[&device]);
        let threshold = threshold::choose(rule, &scores, None).map_err(|e| TrainError::Device {
            device: device.clone(),
            source: Box::new(e),
        })?;
        devices.push(DeviceModel {
            dir: device_dir_name(&device),
            model: SavedModel {
                model: FittedModel::Autoencoder(tuned),
                threshold,
                ..base.clone()
            },
            device,
        });
    }
    Ok((fleet.report, devices))
}

/// Chooses the smoothing and the threshold on `oof`, scores of samples of `s`
/// that the scoring model never trained on: each smoothing candidate of
/// `opts.smoothing` is applied per device in time order, the threshold is
/// chosen by `rule` on the smoothed scores, and with labels the candidate
/// with the best F1 at its threshold wins. The expected false-alarm rate is
/// the share of each fold's normal windows above the threshold. `offset` is
/// taken off the threshold (the scores are on the family's shared scale, see
/// `FittedModel::score_offset`; smoothing is linear, so it carries over).
fn calibrate(
    opts: &TrainOptions,
    rule: ThresholdRule,
    s: &Samples,
    oof: &[OutOfFold],
    offset: f64,
) -> Result<(Threshold, Calibration), TrainError> {
    let idx: Vec<usize> = oof.iter().map(|o| o.sample).collect();
    let raw: Vec<f64> = oof.iter().map(|o| o.score).collect();
    let labels: Option<Vec<bool>> = s
        .labels
        .as_ref()
        .map(|l| idx.iter().map(|&i| l[i]).collect());
    let candidates: Vec<Smoothing> = match (opts.smoothing, &labels) {
        (SmoothingChoice::Fixed(x), _) => vec![x],
        (SmoothingChoice::Auto, Some(_)) => SMOOTHING_CANDIDATES.to_vec(),
        (SmoothingChoice::Auto, None) => vec![UNLABELLED_SMOOTHING],
    };
    let mut tried = Vec::new();
    let mut best: Option<(f64, Smoothing, Threshold, Vec<f64>)> = None;
    for smoothing in candidates {
        let smoothed = smooth_by_device(s, &idx, &raw, smoothing);
        let th = threshold::choose(rule, &smoothed, labels.as_deref())?;
        let f1 = labels
            .as_ref()
            .and_then(|l| BinaryMetrics::compute(&smoothed, l, th.value).f1)
            .unwrap_or(0.0);
        tried.push((smoothing.label(), f1));
        if best.as_ref().is_none_or(|b| f1 > b.0) {
            best = Some((f1, smoothing, th, smoothed));
        }
    }
    let Some((_, smoothing, mut th, smoothed)) = best else {
        return Err(TrainError::TooFewRows { rows: 0, needed: 1 });
    };
    let folds = oof.iter().map(|o| o.fold + 1).max().unwrap_or(0);
    let rates: Vec<Option<f64>> = (0..folds)
        .map(|f| {
            let (mut normal, mut over) = (0usize, 0usize);
            for (k, o) in oof.iter().enumerate() {
                if o.fold == f && !labels.as_ref().is_some_and(|l| l[k]) {
                    normal += 1;
                    over += usize::from(smoothed[k] > th.value);
                }
            }
            (normal > 0).then(|| over as f64 / normal as f64)
        })
        .collect();
    th.value -= offset;
    Ok((
        th,
        Calibration {
            scores: "out-of-fold".into(),
            windows: oof.len(),
            smoothing,
            smoothing_candidates: if tried.len() > 1 { tried } else { Vec::new() },
            false_alarm_rate: Spread::of(&rates),
        },
    ))
}

/// Trains on the files `opts.inputs` per the module docs: reads them into a
/// frame table, then [`train_table`]. `progress` may be hidden.
pub fn train(opts: &TrainOptions, progress: &ProgressBar) -> Result<TrainOutcome, TrainError> {
    check_holdout(opts)?;
    let table = dataset::load_files(&opts.inputs, &opts.columns)?;
    let inputs = opts
        .inputs
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    match train_table(opts, &table, inputs, progress, &CancelToken::new()) {
        Ok(outcome) => Ok(outcome),
        Err(TrainTableError::Train(e)) => Err(e),
        // Nobody else holds the token; kept an error rather than a panic.
        Err(TrainTableError::Cancelled) => Err(TrainError::Folds("training was cancelled".into())),
    }
}

/// The samples of one window option set, shared by the families that use
/// it, with their training part and primary fold kind.
struct Built {
    window: WindowOptions,
    samples: Samples,
    stats: SampleStats,
    train: Vec<usize>,
    primary: FoldKind,
    /// Without labels and with `--family auto`: [`shift_probes`].
    probes: Vec<Samples>,
}

/// Trains on a frame table already in memory, per the module docs (steps
/// 2–6 but writing nothing): `opts.inputs` is not read, `inputs` says where
/// `table` came from (the report's `data.inputs`), and `opts.columns` only
/// names the columns the saved model will read files with.
///
/// `progress` gets the number of folds to run as its length, one increment
/// per fold validated, and ends with its position at its length (a family
/// that fails has the folds it skips taken off the length). `cancel` is
/// checked before every fold, between families and around the final fit:
/// once cancelled, training returns [`TrainTableError::Cancelled`] at the
/// next of those points.
pub fn train_table(
    opts: &TrainOptions,
    table: &Table,
    inputs: Vec<String>,
    progress: &ProgressBar,
    cancel: &CancelToken,
) -> Result<TrainOutcome, TrainTableError> {
    check_holdout(opts)?;
    let labelled = table.labels.is_some();
    let candidates: Vec<FamilyKind> = match opts.family {
        Some(f) => vec![f],
        None if labelled => FamilyKind::AUTO.to_vec(),
        None => FamilyKind::ONE_CLASS_AUTO.to_vec(),
    };
    // Without labels `auto` compares families on simulated shifts.
    let probing = opts.family.is_none() && !labelled;
    let rule = opts.threshold.unwrap_or(default_rule(labelled));
    if candidates.iter().any(|f| f.supervised()) && !labelled && opts.family.is_some() {
        return Err(TrainError::NeedLabels {
            what: "the classifier",
            detail: "the data has no label column (--label-column)".into(),
        }
        .into());
    }
    // Plan first: every family's samples and cross-validations, so that the
    // progress bar's length is the number of folds that will run (the
    // forecaster runs extra cross-validations; by-device folds may be fewer
    // than `opts.folds`). Families with the same window options share their
    // samples.
    let mut built: Vec<Built> = Vec::new();
    let mut plans: Vec<(FamilyKind, usize, Vec<FoldKind>)> = Vec::new();
    let mut total = 0;
    for &kind in &candidates {
        cancel.check()?;
        let w = window_options(opts, kind, table);
        let at = match built.iter().position(|b| b.window == w) {
            Some(at) => at,
            None => {
                let (samples, stats) = dataset::build_samples(table, &w)?;
                if samples.len() < 4 {
                    return Err(TrainError::TooFewRows {
                        rows: samples.len(),
                        needed: 4,
                    }
                    .into());
                }
                let (train, _, _) = holdout_split(&samples, opts.holdout, opts.seed);
                let primary = primary_fold_kind(&samples, &train, opts.folds, opts.seed);
                let probes = if probing {
                    shift_probes(table, &w, &samples)?
                } else {
                    Vec::new()
                };
                built.push(Built {
                    window: w,
                    samples,
                    stats,
                    train,
                    primary,
                    probes,
                });
                built.len() - 1
            }
        };
        let b = &built[at];
        let mut kinds = vec![b.primary];
        if kind == FamilyKind::Forecast {
            kinds = vec![FoldKind::KFold, FoldKind::ForwardChaining];
            if labelled {
                kinds.insert(0, b.primary);
            }
        }
        for &fk in &kinds {
            total += make_folds(fk, &b.samples, &b.train, opts).map_or(0, |f| f.len());
        }
        plans.push((kind, at, kinds));
    }
    progress.set_length(total as u64);
    let mut results = Vec::new();
    let mut best: Option<BestCandidate> = None;
    // Indices into `results` of the comparisons the choice is made on.
    let mut primary_results = Vec::new();
    for (kind, at, kinds) in plans {
        let b = &built[at];
        for fk in kinds {
            let probes: &[Samples] = if fk == b.primary { &b.probes } else { &[] };
            let data = CvData {
                samples: &b.samples,
                probes,
                train: &b.train,
            };
            let Validated {
                result: mut r,
                oof,
                probe_oof,
            } = cross_validate(kind, fk, data, opts, progress, cancel)?;
            let primary = fk == b.primary || !labelled;
            if primary {
                primary_results.push(results.len());
            }
            if primary && r.error.is_none() {
                let key = if probing {
                    // More shifts caught, then fewer false alarms.
                    let (th, c) = calibrate(opts, rule, &b.samples, &oof, 0.0)?;
                    let idx: Vec<usize> = oof.iter().map(|o| o.sample).collect();
                    let caught: Vec<f64> = probe_oof
                        .iter()
                        .map(|scores| {
                            let smoothed = smooth_by_device(&b.samples, &idx, scores, c.smoothing);
                            smoothed.iter().filter(|&&v| v > th.value).count() as f64
                                / smoothed.len().max(1) as f64
                        })
                        .collect();
                    let detection = (!caught.is_empty())
                        .then(|| caught.iter().sum::<f64>() / caught.len() as f64);
                    r.shift_detection = detection;
                    r.expected_false_alarm_rate = c.false_alarm_rate.mean;
                    (
                        detection.unwrap_or(0.0),
                        -c.false_alarm_rate.mean.unwrap_or(1.0),
                    )
                } else {
                    (
                        r.spread
                            .get("f1")
                            .and_then(|s| s.mean)
                            .unwrap_or(f64::NEG_INFINITY),
                        r.spread
                            .get("pr_auc")
                            .and_then(|s| s.mean)
                            .unwrap_or(f64::NEG_INFINITY),
                    )
                };
                if best.as_ref().is_none_or(|b| key > (b.1, b.2)) {
                    best = Some((kind, key.0, key.1, oof));
                }
            }
            results.push(r);
        }
    }
    let Some((chosen, _, _, oof)) = best else {
        let why: Vec<String> = results
            .iter()
            .filter_map(|r| {
                r.error
                    .as_ref()
                    .map(|e| format!("{}: {e}", r.family.name()))
            })
            .collect();
        return Err(TrainError::Folds(format!(
            "no family could be validated ({})",
            why.join("; ")
        ))
        .into());
    };
    let compared: Vec<&FamilyResult> = primary_results.iter().map(|&i| &results[i]).collect();
    let reason = if probing {
        super::report::one_class_reason(chosen, &compared)
    } else {
        super::report::selection_reason(chosen, &compared, opts.family.is_some())
    };
    // Final fit.
    cancel.check()?;
    let w = window_options(opts, chosen, table);
    let (samples, sample_stats) = match built.into_iter().find(|b| b.window == w) {
        Some(b) => (b.samples, b.stats),
        None => dataset::build_samples(table, &w)?,
    };
    let (train_idx, test_idx, holdout) = holdout_split(&samples, opts.holdout, opts.seed);
    let (pipeline, model) = fit_on(chosen, &samples, &train_idx, opts)?;
    cancel.check()?;
    let (th, calibration) = if oof.is_empty() {
        let tr_scores = score_rows(&pipeline, &model, &samples, &train_idx)?;
        let in_sample: Vec<OutOfFold> = train_idx
            .iter()
            .zip(&tr_scores)
            .map(|(&sample, &score)| OutOfFold {
                sample,
                fold: 0,
                score,
            })
            .collect();
        let (th, mut c) = calibrate(opts, rule, &samples, &in_sample, 0.0)?;
        c.scores = "in-sample".into();
        (th, c)
    } else {
        calibrate(opts, rule, &samples, &oof, model.score_offset())?
    };
    let smoothing = calibration.smoothing;
    let test = samples.select(&test_idx);
    let heldout_z = pipeline.transform(&test.x, &test.categorical)?;
    let heldout_raw = model.score(&heldout_z)?;
    let all_test: Vec<usize> = (0..test.len()).collect();
    let heldout_scores = smooth_by_device(&test, &all_test, &heldout_raw, smoothing);
    let heldout = test
        .labels
        .as_ref()
        .map(|l| BinaryMetrics::compute(&heldout_scores, l, th.value));
    let heldout_alarm_rate = test.labels.is_none().then(|| {
        heldout_scores.iter().filter(|v| **v > th.value).count() as f64
            / heldout_scores.len().max(1) as f64
    });
    let heldout_regression = forecast_regression(&pipeline, &model, &samples, &test_idx)?;
    info!(
        family = chosen.name(),
        train = train_idx.len(),
        heldout = test_idx.len(),
        threshold = th.value,
        f1 = heldout.as_ref().and_then(|m| m.f1),
        "model trained"
    );
    let cap = heldout_scores.len().min(20_000);
    let data = DataSummary {
        inputs,
        devices: table.device_names().len(),
        channels: table.numeric_names.clone(),
        categorical: table.cat_names.clone(),
        features: samples.names.len(),
        window_len: w.len,
        window_hop: w.hop,
        samples: sample_stats,
        labelled,
        anomalies: samples
            .labels
            .as_ref()
            .map_or(0, |l| l.iter().filter(|&&v| v).count()),
        train_windows: train_idx.len(),
        test_windows: test_idx.len(),
        holdout,
        time_from_ns: table.times.as_ref().and_then(|t| t.iter().min().copied()),
        time_to_ns: table.times.as_ref().and_then(|t| t.iter().max().copied()),
    };
    let model = SavedModel {
        format_version: 1,
        family: chosen,
        window: w,
        channels: table.numeric_names.clone(),
        categorical: table.cat_names.clone(),
        time_column: opts.columns.time_column.clone(),
        device_column: opts.columns.device_column.clone(),
        exclude: opts.columns.exclude.clone(),
        period_ns: table.period_ns,
        pipeline,
        model,
        threshold: th,
        smoothing,
    };
    let (fleet, devices) = if opts.fleet {
        cancel.check()?;
        let (r, d) = train_devices_fleet(opts, &samples, &train_idx, &model)?;
        (Some(r), d)
    } else {
        (None, Vec::new())
    };
    let report = TrainingReport {
        created_ns: protocol::Timestamp::now().as_nanos(),
        data,
        hyper_params: opts.hyper.clone(),
        candidates: results,
        chosen,
        reason,
        threshold: th,
        heldout,
        heldout_regression,
        heldout_alarm_rate,
        heldout_scores: heldout_scores[..cap].to_vec(),
        heldout_labels: test.labels.as_ref().map(|l| l[..cap].to_vec()),
        export: None,
        calibration: Some(calibration),
        fleet,
    };
    Ok(TrainOutcome {
        model,
        report,
        heldout: test,
        heldout_scores,
        devices,
    })
}

fn write(path: PathBuf, data: &[u8]) -> Result<(), TrainError> {
    std::fs::write(&path, data).map_err(|source| TrainError::Write { path, source })
}

/// The directory of a device's model: `dir/devices/<device_dir_name>`.
pub fn device_dir(dir: &Path, device: &DeviceModel) -> PathBuf {
    dir.join("devices").join(&device.dir)
}

/// Writes `model.json`, `report.json` and `report.html` into `dir`, and
/// each fleet device's `model.json` into its [`device_dir`].
pub fn write_outputs(dir: &Path, outcome: &TrainOutcome) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir).map_err(|source| TrainError::Write {
        path: dir.to_owned(),
        source,
    })?;
    for d in &outcome.devices {
        let path = device_dir(dir, d);
        std::fs::create_dir_all(&path).map_err(|source| TrainError::Write {
            path: path.clone(),
            source,
        })?;
        write(
            path.join("model.json"),
            serde_json::to_string_pretty(&d.model)?.as_bytes(),
        )?;
    }
    write(
        dir.join("model.json"),
        serde_json::to_string_pretty(&outcome.model)?.as_bytes(),
    )?;
    write(
        dir.join("report.json"),
        outcome.report.to_json()?.as_bytes(),
    )?;
    write(dir.join("report.html"), outcome.report.to_html().as_bytes())?;
    Ok(())
}

/// The column options a saved model reads its input with.
pub fn columns_of(model: &SavedModel, label_column: Option<String>) -> ColumnOptions {
    ColumnOptions {
        time_column: model.time_column.clone(),
        label_column,
        device_column: model.device_column.clone(),
        exclude: model.exclude.clone(),
        period: model
            .period_ns
            .and_then(|p| u64::try_from(p).ok())
            .map(std::time::Duration::from_nanos),
        hold: None,
        // Declares the numeric code columns again; text ones stay as read.
        categorical: model.categorical.clone(),
    }
}

/// Metrics of a saved model on labelled files, at its threshold.
pub fn evaluate(
    dir: &Path,
    inputs: &[PathBuf],
    label_column: &str,
) -> Result<BinaryMetrics, TrainError> {
    let model = SavedModel::load(dir)?;
    let table = dataset::load_files(inputs, &columns_of(&model, Some(label_column.to_owned())))?;
    let (samples, _) = model.samples(&table, model.window.hop)?;
    let labels = samples
        .labels
        .clone()
        .ok_or_else(|| TrainError::NeedLabels {
            what: "evaluate",
            detail: "no label column was read".into(),
        })?;
    let scores = model.decision_scores(&samples)?;
    Ok(BinaryMetrics::compute(
        &scores,
        &labels,
        model.threshold.value,
    ))
}

/// One output row of [`score`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScoredRow {
    pub row: usize,
    pub device: String,
    pub time_ns: Option<i64>,
    /// The window's score.
    pub score: Option<f64>,
    /// The score the threshold applies to: `score` smoothed over the
    /// device's windows by the model's smoothing (equal to `score` without).
    pub smoothed: Option<f64>,
    /// The device is in alarm after this window (what a gateway running
    /// the exported model decides on the same windows).
    pub alarm: Option<bool>,
    pub status: &'static str,
}

/// Scores every row of `input` (the window ending at that row) in input
/// order, and writes them as CSV to `out`. Each device's windows go through
/// the model's decision ([`protocol::decision::Decider`]: smoothing,
/// threshold, k-of-n 1 of 1) in time order, as on the gateway.
pub fn score(dir: &Path, input: &Path, out: &Path) -> Result<Vec<ScoredRow>, TrainError> {
    let model = SavedModel::load(dir)?;
    let table = dataset::load_files(&[input.to_owned()], &columns_of(&model, None))?;
    let (samples, _) = model.samples(&table, 1)?;
    let scores = model.score(&samples)?;
    let spec = DecisionSpec {
        smoothing: model.smoothing,
        threshold: model.threshold.value,
        k: 1,
        n: 1,
    };
    let mut order: Vec<usize> = (0..samples.len()).collect();
    order.sort_by(|&a, &b| {
        samples.devices[a]
            .cmp(&samples.devices[b])
            .then(samples.times[a].cmp(&samples.times[b]))
            .then(a.cmp(&b))
    });
    let mut decisions: Vec<Option<Decision>> = vec![None; samples.len()];
    let mut decider: Option<(&str, Decider)> = None;
    for k in order {
        let device = samples.devices[k].as_str();
        let d = match &mut decider {
            Some((name, d)) if *name == device => d,
            slot => &mut slot.insert((device, Decider::new(spec))).1,
        };
        decisions[k] = Some(d.push(scores[k]));
    }
    let mut rows: Vec<ScoredRow> = samples
        .row_status
        .iter()
        .enumerate()
        .map(|(i, st)| {
            let (score, decision, status) = match st {
                RowStatus::Sample(k) => (Some(scores[*k]), decisions[*k], "scored"),
                RowStatus::BeforeFullWindow => (None, None, "before_first_full_window"),
                RowStatus::Gap => (None, None, "window_has_missing_values"),
                RowStatus::NotDue => (None, None, "not_a_window_end"),
            };
            ScoredRow {
                row: table.source_rows[i],
                device: table.devices[i].clone(),
                time_ns: table.times.as_ref().map(|t| t[i]),
                score,
                smoothed: decision.map(|d| d.score),
                alarm: decision.map(|d| d.alarm),
                status,
            }
        })
        .collect();
    rows.sort_by_key(|r| r.row);
    let mut text = String::from("row,device,time_ns,score,smoothed,alarm,status\n");
    let num = |v: Option<f64>| v.map_or_else(String::new, |s| format!("{s}"));
    for r in &rows {
        text.push_str(&format!(
            "{},{},{},{},{},{},{}\n",
            r.row,
            r.device,
            r.time_ns.map_or_else(String::new, |t| t.to_string()),
            num(r.score),
            num(r.smoothed),
            r.alarm.map_or("", |a| if a { "1" } else { "0" }),
            r.status
        ));
    }
    write(out.to_owned(), text.as_bytes())?;
    Ok(rows)
}

/// The best family so far: kind, its two scores, and its per-sample scores.
type BestCandidate = (FamilyKind, f64, f64, Vec<OutOfFold>);

#[cfg(test)]
mod tests {
    use super::*;

    /// `devices` devices of `rows` frames a second: two channels with
    /// deterministic noise, labelled anomalous (and shifted) where
    /// `anomalous(row)`.
    fn table(devices: usize, rows: usize, anomalous: fn(usize) -> bool) -> Table {
        let mut t = Table {
            times: Some(Vec::new()),
            period_ns: Some(1_000_000_000),
            numeric_names: vec!["flow".into(), "current".into()],
            numeric: vec![Vec::new(), Vec::new()],
            labels: Some(Vec::new()),
            ..Table::default()
        };
        for d in 0..devices {
            for k in 0..rows {
                let x = (d * rows + k) as f64;
                let anomalous = anomalous(k);
                t.devices.push(format!("pump-{d}"));
                if let Some(times) = t.times.as_mut() {
                    times.push(1_700_000_000_000_000_000 + k as i64 * 1_000_000_000);
                }
                let flow = 10.0 + (x * 0.37).sin() * 2.0 + (x * 1.91).cos();
                t.numeric[0].push(flow);
                t.numeric[1]
                    .push(2.0 + 0.5 * flow + (x * 2.73).sin() + if anomalous { 8.0 } else { 0.0 });
                if let Some(labels) = t.labels.as_mut() {
                    labels.push(anomalous);
                }
                t.source_rows.push(t.source_rows.len());
            }
        }
        t
    }

    fn forecast_options() -> TrainOptions {
        let mut opts = TrainOptions::new(Vec::new());
        opts.family = Some(FamilyKind::Forecast);
        opts.hyper.lags = 4;
        opts.hyper.ridge = 1e-2;
        opts
    }

    /// Anomalies every 30 s, so every forward-chaining fold has both classes.
    fn periodic(k: usize) -> bool {
        k % 30 >= 10 && k % 30 < 13
    }

    fn folds_run(outcome: &TrainOutcome) -> Vec<(FoldKind, usize, bool)> {
        outcome
            .report
            .candidates
            .iter()
            .map(|r| (r.fold_kind, r.folds.len(), r.error.is_some()))
            .collect()
    }

    #[test]
    fn progress_ends_at_its_length_with_the_forecasters_extra_folds_and_fewer_device_folds() {
        // 4 labelled devices, one held out: 3 by-device folds (not 5), then
        // the forecaster's 5 k-fold and 5 forward-chaining folds.
        let bar = ProgressBar::hidden();
        let outcome = train_table(
            &forecast_options(),
            &table(4, 120, periodic),
            vec!["memory".into()],
            &bar,
            &CancelToken::new(),
        )
        .unwrap();
        assert_eq!(
            folds_run(&outcome),
            [
                (FoldKind::ByDevice, 3, false),
                (FoldKind::KFold, 5, false),
                (FoldKind::ForwardChaining, 5, false)
            ]
        );
        assert_eq!((bar.position(), bar.length()), (13, Some(13)));
        assert_eq!(outcome.report.data.inputs, ["memory"]);

        // Anomalies only at 40..46 s: the early forward-chaining folds train
        // on one class, so that validation fails and its folds never run.
        let bar = ProgressBar::hidden();
        let outcome = train_table(
            &forecast_options(),
            &table(4, 120, |k| (40..46).contains(&k)),
            vec![],
            &bar,
            &CancelToken::new(),
        )
        .unwrap();
        assert_eq!(
            folds_run(&outcome),
            [
                (FoldKind::ByDevice, 3, false),
                (FoldKind::KFold, 5, false),
                (FoldKind::ForwardChaining, 0, true)
            ]
        );
        assert_eq!((bar.position(), bar.length()), (8, Some(8)));
    }

    #[test]
    fn a_cancelled_token_stops_training_before_the_first_fold() {
        let bar = ProgressBar::hidden();
        let cancel = CancelToken::new();
        cancel.clone().cancel();
        let err = train_table(
            &forecast_options(),
            &table(4, 120, periodic),
            vec![],
            &bar,
            &cancel,
        )
        .unwrap_err();
        assert!(matches!(err, TrainTableError::Cancelled), "{err}");
        assert_eq!(bar.position(), 0);
        // Bad options are still errors, not cancellations.
        let mut bad = forecast_options();
        bad.holdout = 1.0;
        let err = train_table(
            &bad,
            &table(4, 120, periodic),
            vec![],
            &bar,
            &CancelToken::new(),
        )
        .unwrap_err();
        assert!(
            matches!(err, TrainTableError::Train(TrainError::Option { .. })),
            "{err}"
        );
    }

    #[test]
    fn raw_puts_the_windows_frames_into_the_features_the_model_is_saved_with() {
        let mut opts = TrainOptions::new(Vec::new());
        opts.family = Some(FamilyKind::Gaussian);
        opts.window_len = 3;
        opts.stats = vec![Stat::Mean];
        opts.raw = true;
        let outcome = train_table(
            &opts,
            &table(4, 120, periodic),
            vec![],
            &ProgressBar::hidden(),
            &CancelToken::new(),
        )
        .unwrap();
        let spec = outcome.model.window.features.as_ref().unwrap();
        assert!(spec.raw);
        let names = &outcome.model.pipeline.names;
        assert!(names.contains(&"raw.t0.flow".to_owned()), "{names:?}");
        assert!(names.contains(&"raw.t2.current".to_owned()), "{names:?}");
        assert_eq!(names.len(), 2 + 3 * 2, "2 means and 3 frames of 2 channels");
    }

    #[test]
    fn fleet_needs_the_autoencoder_family() {
        for family in [None, Some(FamilyKind::Pca), Some(FamilyKind::Forecast)] {
            let mut opts = forecast_options();
            opts.family = family;
            opts.fleet = true;
            let err = train_table(
                &opts,
                &table(4, 120, periodic),
                vec![],
                &ProgressBar::hidden(),
                &CancelToken::new(),
            )
            .unwrap_err();
            assert!(
                matches!(
                    err,
                    TrainTableError::Train(TrainError::Option {
                        option: "--fleet",
                        ..
                    })
                ),
                "{err}"
            );
        }
    }
}
