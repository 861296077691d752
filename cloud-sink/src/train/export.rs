//! ONNX export of a trained model's scoring function — preprocessing and
//! score in one graph — with the `outpost-models` graph builder, plus the
//! manifest (`protocol::manifest`) the gateway needs to feed it, and the
//! round-trip check that gates registration.
//!
//! The graph's input is the feature vector `protocol::features` computes for
//! a window (f32 `[batch, F]`), its output the score (`[batch, 1]`):
//!
//! - every family starts with `z = (x − center) / scale` (the fitted
//!   standardisation), after `ln(max(x, 0) + ε)` on the spread columns when
//!   the pipeline log-scales them (`preprocess`, `--log-spread`); the
//!   one-hot columns of categorical channels (last in the input) pass
//!   through unchanged: centre 0, scale 1, no logarithm;
//! - **gaussian**: `Σ ((z − m)·W)²`;
//! - **pca**: `c = z − μ`, `t = c·P`, `T² = Σ (t / √λ)²`, `Q = Σ (c − t·Pᵀ)²`,
//!   score `Max(T² / T²_lim, Q / Q_lim)`;
//! - **forecast**: the residual of the newest frame is `z·M + b` with
//!   `M = [−β; I]·diag(1/σ)`, `b = −intercept/σ` (one MatMul, no slicing);
//!   score `Σ (z·M + b)²`;
//! - **classifier**: `Sigmoid(z·w + b)`;
//! - **autoencoder**: `h = Tanh(z·W1 + b1)`, `ẑ = h·W2 + b2` (two Gemm),
//!   score `ReduceMean((z − ẑ)², axis 1)` — the math of
//!   `outpost_models::builder::graphs::autoencoder` on the standardised input.
//!
//! **Categorical channels** go into the manifest's `features.categorical`
//! with their categories as integer codes, in the pipeline's column order,
//! and after the numeric channels in `input.channels`. The gateway's values
//! are numbers, so a channel whose categories are not integers (`"idle"`,
//! `"1.5"`) is refused, naming the channel.
//!
//! **The check**: the exported bytes are loaded back with the tract runner
//! (`outpost_models::Model`) and score the held-out rows; the reference is
//! the in-Rust f64 model applied to the same rows rounded to f32 (what the
//! gateway feeds the graph). With categorical channels the graph's one-hot
//! columns are computed from the held-out samples' codes by `protocol::features`
//! with the manifest's codes — the one-hot the gateway computes — while the
//! reference uses the pipeline's own one-hot of the categories. The export passes when
//! `|onnx − reference| ≤ 1e-5 · max(1, |reference|)` for every row — an
//! absolute 1e-5 for scores up to 1, relative beyond, because the graph
//! computes in f32 (about 7 significant digits). `max_abs_diff` in the report
//! is the largest such normalised difference.
//!
//! Not exportable (typed error, so the model is not registered): windows of
//! one row (the manifest needs at least 2), categorical channels whose
//! categories are not integer codes, and data without a time grid (the
//! manifest needs a frame period).

use std::path::Path;
use std::time::Duration;

use nalgebra::DMatrix;
use outpost_models::builder::{Dim, GraphBuilder, Value};
use protocol::features::{CategoricalSpec, FeatureExtractor, FeatureSpec, MAX_CODE, Window};
use protocol::manifest::{
    Hysteresis, InputSpec, MANIFEST_FORMAT, ModelFamily, ModelManifest, ModelMetadata, ScoreSpec,
};

use super::TrainError;
use super::dataset::Samples;
use super::families::FittedModel;
use super::report::{ExportCheck, TrainingReport};
use super::run::SavedModel;

/// Largest normalised difference the check accepts.
pub const TOLERANCE: f64 = 1e-5;

fn f32s(values: impl IntoIterator<Item = f64>) -> Vec<f32> {
    values.into_iter().map(|v| v as f32).collect()
}

/// Row-major f32 copy of a matrix.
fn row_major(m: &DMatrix<f64>) -> Vec<f32> {
    let mut out = Vec::with_capacity(m.len());
    for r in m.row_iter() {
        out.extend(r.iter().map(|v| *v as f32));
    }
    out
}

fn build_err(e: outpost_models::BuildError) -> TrainError {
    TrainError::Export(format!("building the graph: {e}"))
}

/// The pipeline's log-scaled columns (`offsets[j] = Some(ε)`):
/// `x·keep + Log(Max(x, 0) + ε)·mask`, with `mask` 1 on those columns and
/// `keep = 1 − mask` (ε = 1 elsewhere, so the unused logarithm is finite).
/// `x` unchanged when no column is log-scaled.
fn log_spread(
    g: &mut GraphBuilder,
    x: &Value,
    offsets: &[Option<f64>],
    n: usize,
) -> Result<Value, TrainError> {
    if offsets.iter().all(Option::is_none) {
        return Ok(x.clone());
    }
    if offsets.len() != n {
        return Err(TrainError::Export(format!(
            "{} log offsets for {n} columns",
            offsets.len()
        )));
    }
    let mask: Vec<f32> = offsets
        .iter()
        .map(|o| f32::from(u8::from(o.is_some())))
        .collect();
    let keep: Vec<f32> = mask.iter().map(|m| 1.0 - m).collect();
    let eps = f32s(offsets.iter().map(|o| o.unwrap_or(1.0)));
    let zero = g.initializer("zero", &[1], vec![0.0]).map_err(build_err)?;
    let eps = g.initializer("log_offset", &[n], eps).map_err(build_err)?;
    let mask = g.initializer("log_mask", &[n], mask).map_err(build_err)?;
    let keep = g.initializer("log_keep", &[n], keep).map_err(build_err)?;
    let positive = g.max(&[x, &zero]);
    let shifted = g.add(&positive, &eps);
    let logged = g.log(&shifted);
    let kept = g.mul(x, &keep);
    let logged = g.mul(&logged, &mask);
    Ok(g.add(&kept, &logged))
}

/// The pipeline's categorical channels as the manifest's spec: each
/// category an integer code, in the pipeline's column order. A category
/// that is not an integer written plainly (`"idle"`, `"1.5"`, `"01"`) is
/// refused: the gateway's readings are numbers and it compares codes.
pub fn categorical_spec(model: &SavedModel) -> Result<Vec<CategoricalSpec>, TrainError> {
    model
        .pipeline
        .one_hot
        .iter()
        .map(|o| {
            let codes = o
                .categories
                .iter()
                .map(|c| {
                    c.parse::<i64>()
                        .ok()
                        .filter(|v| v.to_string() == *c && v.abs() <= MAX_CODE)
                        .ok_or_else(|| {
                            TrainError::Export(format!(
                                "categorical channel `{}` has the category {c:?}, not an integer code: \
                                 the gateway's readings are numbers, so an exported model needs integer \
                                 codes (e.g. 0, 1, 2 for the modes; declare a numeric column with --categorical)",
                                o.channel
                            ))
                        })
                })
                .collect::<Result<Vec<i64>, _>>()?;
            Ok(CategoricalSpec {
                channel: o.channel.clone(),
                codes,
            })
        })
        .collect()
}

/// Builds the ONNX graph of `model` (see the module docs).
pub fn graph(model: &SavedModel) -> Result<Vec<u8>, TrainError> {
    // Refuses text categories before anything is built.
    categorical_spec(model)?;
    let numeric = model.pipeline.center.len();
    let n = model.pipeline.output_len();
    if model.model.input_len() != n {
        return Err(TrainError::Export(format!(
            "the model takes {} columns, the preprocessing gives {n}",
            model.model.input_len()
        )));
    }
    // One-hot columns (after the numeric ones) pass through: (x − 0) / 1
    // is exact in f32, and no logarithm.
    let one_hot = n - numeric;
    let center = model
        .pipeline
        .center
        .iter()
        .copied()
        .chain(std::iter::repeat_n(0.0, one_hot));
    let scale = model
        .pipeline
        .scale
        .iter()
        .copied()
        .chain(std::iter::repeat_n(1.0, one_hot));
    let log_offset: Vec<Option<f64>> = if model.pipeline.log_offset.is_empty() {
        Vec::new()
    } else {
        let mut v = model.pipeline.log_offset.clone();
        v.resize(v.len() + one_hot, None);
        v
    };
    let mut g = GraphBuilder::new(model.family.name());
    g.doc("Outpost anomaly model: standardisation and score, exported by outpost-cloud-sink train");
    let x = g.input("features", &[Dim::batch(), Dim::Fixed(n)]);
    let x = log_spread(&mut g, &x, &log_offset, n)?;
    let center = g
        .initializer("center", &[n], f32s(center))
        .map_err(build_err)?;
    let scale = g
        .initializer("scale", &[n], f32s(scale))
        .map_err(build_err)?;
    let d = g.sub(&x, &center);
    let z = g.div(&d, &scale);
    let sum_sq = |g: &mut GraphBuilder, v: &Value| {
        let sq = g.mul(v, v);
        g.reduce_sum(&sq, &[1], true)
    };
    let score = match &model.model {
        FittedModel::Gaussian(m) => {
            let mean = g
                .initializer("mean", &[n], f32s(m.mean.iter().copied()))
                .map_err(build_err)?;
            let w = g
                .initializer("whitening", &[n, n], row_major(&m.whitening))
                .map_err(build_err)?;
            let c = g.sub(&z, &mean);
            let y = g.matmul(&c, &w);
            sum_sq(&mut g, &y)
        }
        FittedModel::Pca(m) => {
            let k = m.pca.components.ncols();
            let mean = g
                .initializer("pca_mean", &[n], f32s(m.pca.mean.iter().copied()))
                .map_err(build_err)?;
            let p = g
                .initializer("components", &[n, k], row_major(&m.pca.components))
                .map_err(build_err)?;
            let pt = g
                .initializer(
                    "components_t",
                    &[k, n],
                    row_major(&m.pca.components.transpose()),
                )
                .map_err(build_err)?;
            let inv_sd = g
                .initializer(
                    "inv_sd",
                    &[k],
                    f32s(m.pca.variances.iter().map(|v| 1.0 / v.sqrt())),
                )
                .map_err(build_err)?;
            let t2_lim = g
                .initializer("t2_limit", &[1], vec![m.t2_limit as f32])
                .map_err(build_err)?;
            let q_lim = g
                .initializer("q_limit", &[1], vec![m.q_limit as f32])
                .map_err(build_err)?;
            let c = g.sub(&z, &mean);
            let t = g.matmul(&c, &p);
            let ts = g.mul(&t, &inv_sd);
            let t2 = sum_sq(&mut g, &ts);
            let back = g.matmul(&t, &pt);
            let r = g.sub(&c, &back);
            let q = sum_sq(&mut g, &r);
            let t2n = g.div(&t2, &t2_lim);
            let qn = g.div(&q, &q_lim);
            g.max(&[&t2n, &qn])
        }
        FittedModel::Forecast(m) => {
            let c = m.channels;
            let inputs = c * m.lags;
            let mut mm = DMatrix::zeros(n, c);
            for j in 0..c {
                let s = m.residual_std[j];
                for i in 0..inputs {
                    mm[(i, j)] = -m.coefficients[(i, j)] / s;
                }
                mm[(inputs + j, j)] = 1.0 / s;
            }
            let w = g
                .initializer("residual_weights", &[n, c], row_major(&mm))
                .map_err(build_err)?;
            let b = g
                .initializer(
                    "residual_bias",
                    &[c],
                    f32s((0..c).map(|j| -m.intercept[j] / m.residual_std[j])),
                )
                .map_err(build_err)?;
            let y = g.matmul(&z, &w);
            let r = g.add(&y, &b);
            sum_sq(&mut g, &r)
        }
        FittedModel::Classifier(m) => {
            let w = g
                .initializer("weights", &[n, 1], f32s(m.weights.iter().copied()))
                .map_err(build_err)?;
            let b = g
                .initializer("bias", &[1], vec![m.bias as f32])
                .map_err(build_err)?;
            let y = g.matmul(&z, &w);
            let y = g.add(&y, &b);
            g.sigmoid(&y)
        }
        FittedModel::Autoencoder(m) => {
            let k = m.hidden_len();
            let w1 = g
                .initializer("w1", &[n, k], row_major(&m.w1))
                .map_err(build_err)?;
            let b1 = g
                .initializer("b1", &[k], f32s(m.b1.iter().copied()))
                .map_err(build_err)?;
            let w2 = g
                .initializer("w2", &[k, n], row_major(&m.w2))
                .map_err(build_err)?;
            let b2 = g
                .initializer("b2", &[n], f32s(m.b2.iter().copied()))
                .map_err(build_err)?;
            let a = g.dense(&z, &w1, &b1);
            let hidden = g.tanh(&a);
            let recon = g.dense(&hidden, &w2, &b2);
            let err = g.sub(&z, &recon);
            let sq = g.mul(&err, &err);
            g.reduce_mean(&sq, &[1], true)
        }
    };
    g.output(&score, "score", &[Dim::batch(), Dim::Fixed(1)]);
    g.to_bytes().map_err(build_err)
}

/// The manifest of `model` (see the module docs for what cannot be expressed).
pub fn manifest(
    model: &SavedModel,
    report: &TrainingReport,
    name: &str,
) -> Result<ModelManifest, TrainError> {
    let mut features = model.window.features.clone().ok_or_else(|| {
        TrainError::Export(
            "a window of one row has no feature spec; train with --window 2 or more".into(),
        )
    })?;
    features.categorical = categorical_spec(model)?;
    let period = model
        .period_ns
        .and_then(|p| u64::try_from(p).ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| {
            TrainError::Export(
                "the data has no time grid (no time column), the manifest needs a frame period"
                    .into(),
            )
        })?;
    let family = match &model.model {
        FittedModel::Pca(_) => ModelFamily::Pca,
        FittedModel::Gaussian(_) => ModelFamily::Mahalanobis,
        FittedModel::Forecast(_) => ModelFamily::Forecaster,
        FittedModel::Classifier(_) => ModelFamily::Classifier,
        FittedModel::Autoencoder(_) => ModelFamily::Autoencoder,
    };
    let mut metrics = std::collections::BTreeMap::new();
    if let Some(m) = &report.heldout {
        for name in super::metrics::BinaryMetrics::NAMES {
            if let Some(v) = m.get(name) {
                metrics.insert(format!("heldout_{name}"), v);
            }
        }
    }
    let manifest = ModelManifest {
        format: MANIFEST_FORMAT,
        name: name.to_owned(),
        version: 1,
        family,
        input: InputSpec {
            // The frame's columns: numeric channels, then categorical ones.
            channels: features.window_channels(),
            window_len: model.window.len,
            hop: model.window.hop,
            frame_period: Duration::from_nanos(period),
        },
        features,
        score: ScoreSpec {
            threshold: model.threshold.value,
            threshold_rule: Some(model.threshold.rule),
            smoothing: model.smoothing,
            hysteresis: Hysteresis::default(),
        },
        metadata: ModelMetadata {
            training_from: report.data.time_from_ns.map(protocol::Timestamp),
            training_to: report.data.time_to_ns.map(protocol::Timestamp),
            metrics,
            notes: format!(
                "missing values: {}; held-out: {}",
                report.data.samples.missing_policy, report.data.holdout
            ),
            ..ModelMetadata::default()
        },
    };
    manifest
        .validate()
        .map_err(|e| TrainError::Export(format!("manifest: {e}")))?;
    Ok(manifest)
}

/// The graph's input for the held-out samples: their feature rows, and with
/// categorical channels the one-hot columns that `protocol::features`
/// computes from their codes with the manifest's spec (what the gateway
/// feeds the graph). The numeric features come from the same extractor in
/// training (`dataset`), including any running baseline, which needs every
/// window of a device in order and so is not recomputed here.
fn graph_input(manifest: &ModelManifest, heldout: &Samples) -> Result<Vec<f32>, TrainError> {
    if manifest.features.categorical.is_empty() {
        return Ok(row_major(&heldout.x));
    }
    let rows = heldout.len();
    let numeric = manifest.features.channels.len();
    let k = manifest.features.categorical.len();
    if heldout.codes.len() != rows.saturating_mul(k) {
        return Err(TrainError::Export(format!(
            "the held-out samples carry {} codes, {rows} samples of {k} are needed",
            heldout.codes.len()
        )));
    }
    let one_hot_only = FeatureSpec {
        channels: manifest.features.channels.clone(),
        stats: Vec::new(),
        bands: None,
        raw: false,
        categorical: manifest.features.categorical.clone(),
        baseline: None,
    };
    // The one-hot reads only the window's last row: two rows, the codes in
    // the second, are the shortest window that holds them.
    let mut extractor = FeatureExtractor::new(&one_hot_only, 2)
        .map_err(|e| TrainError::Export(format!("manifest features: {e}")))?;
    let width = numeric + k;
    let mut window = vec![0.0; 2 * width];
    let mut one_hot = vec![0.0; extractor.len()];
    let mut out = Vec::with_capacity(rows * (heldout.x.ncols() + one_hot.len()));
    for (r, codes) in heldout.codes.chunks_exact(k.max(1)).enumerate() {
        window[width + numeric..].copy_from_slice(codes);
        Window::try_new(&window, width, 1.0)
            .and_then(|w| extractor.extract(&w, &mut one_hot))
            .map_err(|e| TrainError::Export(format!("one-hot of a held-out sample: {e}")))?;
        out.extend(heldout.x.row(r).iter().map(|v| *v as f32));
        out.extend(one_hot.iter().map(|v| *v as f32));
    }
    Ok(out)
}

/// Loads `onnx` with the tract runner and compares its scores on the
/// held-out samples with the reference model (see the module docs).
pub fn check(
    model: &SavedModel,
    onnx: &[u8],
    manifest: &ModelManifest,
    heldout: &Samples,
) -> Result<ExportCheck, TrainError> {
    let x = &heldout.x;
    if x.nrows() == 0 {
        return Err(TrainError::Export(
            "no held-out rows to check the export on".into(),
        ));
    }
    let runner = outpost_models::Model::load(onnx, manifest.clone())
        .map_err(|e| TrainError::Export(format!("tract refused the model: {e}")))?;
    let input = graph_input(manifest, heldout)?;
    let got = runner
        .score(&input)
        .map_err(|e| TrainError::Export(format!("tract could not run the model: {e}")))?;
    let rounded = x.map(|v| f64::from(v as f32));
    // The pipeline's own one-hot of the categories, as in training.
    let z = model.pipeline.transform(&rounded, &heldout.categorical)?;
    let want = model.model.score(&z)?;
    let mut max = 0.0f64;
    for (g, w) in got.iter().zip(&want) {
        let diff = (f64::from(*g) - w).abs() / w.abs().max(1.0);
        if !diff.is_finite() {
            max = f64::INFINITY;
        } else {
            max = max.max(diff);
        }
    }
    Ok(ExportCheck {
        rows: want.len(),
        max_abs_diff: max,
        tolerance: TOLERANCE,
        passed: max <= TOLERANCE && got.len() == want.len(),
    })
}

/// Exports, checks and writes `model.onnx` + `manifest.json` into `dir`.
/// Returns the check; a failed check writes nothing and is an error.
pub fn export(
    dir: &Path,
    model: &SavedModel,
    report: &TrainingReport,
    heldout: &Samples,
    name: &str,
) -> Result<ExportCheck, TrainError> {
    let onnx = graph(model)?;
    let manifest = manifest(model, report, name)?;
    let check = check(model, &onnx, &manifest, heldout)?;
    if !check.passed {
        return Err(TrainError::Export(format!(
            "the exported model differs from the reference by {:.3e} (tolerance {:.0e}); not written",
            check.max_abs_diff, check.tolerance
        )));
    }
    let write = |file: &str, bytes: &[u8]| {
        let path = dir.join(file);
        std::fs::write(&path, bytes).map_err(|source| TrainError::Write { path, source })
    };
    write("model.onnx", &onnx)?;
    write("manifest.json", manifest.to_json().as_bytes())?;
    Ok(check)
}
