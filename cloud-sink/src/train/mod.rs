//! Training and validation of anomaly models from stored or file data.
//!
//! Module map:
//! - [`dataset`] — training sets: CSV (delimiter detected), JSON, NDJSON and
//!   SenML files, or the sink's storage; readings → frames → windows → feature
//!   rows through `protocol::features`, with a stated missing-value policy.
//! - [`preprocess`] — the fitted pipeline (plain/robust standardisation,
//!   one-hot of categorical channels) and a guarded PCA.
//! - [`families`] — the model families: PCA T²+Q, Gaussian/Mahalanobis with
//!   Ledoit-Wolf shrinkage, ridge autoregressive forecaster, logistic
//!   regression, MLP autoencoder (with a fleet base model fine-tuned per
//!   device, [`families::fleet`]).
//! - [`cv`] — k-fold, stratified k-fold and forward-chaining (time-ordered) folds.
//! - [`metrics`] — classification, ranking and regression metrics.
//! - [`threshold`] — alarm thresholds: best F1, target false-alarm rate,
//!   quantile of normal scores.
//! - [`report`] — the training report: JSON and an HTML page with inline SVG.
//! - [`export`] — ONNX export (preprocessing + score in one graph) and the
//!   tract round-trip check that gates registration.
//! - [`registry`] — model versions with lineage and status in the sink's
//!   SQLite, champion/challenger promotion.
//! - [`jobs`] — training jobs inside the running sink: bounded queue, one
//!   worker, progress, operator labels as frame labels, the scheduler.
//! - [`cli`] — arguments and handlers of the `train`, `evaluate`, `score` subcommands.
//! - [`run`] — the `train`, `evaluate` and `score` commands.
//!
//! Every fallible step returns [`TrainError`]; degenerate data (constant
//! channels, duplicate rows, too few rows, non-finite values) is refused with
//! a variant that names the problem, never a panic.

pub mod cli;
pub mod cv;
pub mod dataset;
pub mod export;
pub mod families;
pub mod jobs;
pub mod metrics;
pub mod preprocess;
pub mod registry;
pub mod report;
pub mod run;
pub mod threshold;

use std::path::PathBuf;

/// Why training, evaluation or scoring failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: column `{column}` not found (columns: {available})")]
    MissingColumn {
        path: PathBuf,
        column: String,
        available: String,
    },
    #[error("{path}, row {row}: label `{value}` is not 0/1, true/false, yes/no or normal/anomaly")]
    BadLabel {
        path: PathBuf,
        row: usize,
        value: String,
    },
    #[error("{path}, row {row}: time `{value}` is neither a number nor RFC 3339")]
    BadTime {
        path: PathBuf,
        row: usize,
        value: String,
    },
    #[error("input files disagree on their columns: {first:?} vs {other:?}")]
    ColumnMismatch {
        first: Vec<String>,
        other: Vec<String>,
    },
    #[error("no numeric channel left to train on")]
    NoChannels,
    #[error("too few rows: {rows}, at least {needed} are needed")]
    TooFewRows { rows: usize, needed: usize },
    #[error(
        "only {distinct} distinct rows among {rows}, at least {needed} are needed (duplicate rows)"
    )]
    DuplicateRows {
        rows: usize,
        distinct: usize,
        needed: usize,
    },
    #[error(
        "column `{name}` is constant ({value}); exclude it (--exclude) or give data where it varies"
    )]
    ConstantColumn { name: String, value: f64 },
    #[error(
        "column `{name}` reaches {value:e}, beyond what f32 holds (the exported model computes in f32); rescale it or exclude it (--exclude)"
    )]
    OutOfF32Range { name: String, value: f64 },
    #[error("value at row {row}, column `{column}` is not finite ({value})")]
    NotFinite {
        row: usize,
        column: String,
        value: f64,
    },
    #[error("the data has rank {rank} (of {columns} columns): the covariance is singular")]
    Singular { rank: usize, columns: usize },
    #[error("labels are needed for {what}, but {detail}")]
    NeedLabels { what: &'static str, detail: String },
    #[error("all {count} labels are {class}; both classes are needed for {what}")]
    SingleClass {
        count: usize,
        class: bool,
        what: &'static str,
    },
    #[error("cross-validation: {0}")]
    Folds(String),
    #[error("features: {0}")]
    Feature(#[from] protocol::features::FeatureError),
    #[error("decoding {path}: {source}")]
    Decode {
        path: PathBuf,
        source: protocol::DecodeError,
    },
    #[error("invalid option `{option}`: {message}")]
    Option {
        option: &'static str,
        message: String,
    },
    #[error("the model expects {expected} input columns, got {got}")]
    Shape { expected: usize, got: usize },
    #[error("optimisation did not converge: {0}")]
    NotConverged(String),
    #[error("storage: {0}")]
    Storage(#[from] crate::storage::StorageError),
    #[error("registry: {0}")]
    Registry(String),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("export refused: {0}")]
    Export(String),
    #[error("device `{device}`: {source}")]
    Device {
        device: String,
        source: Box<TrainError>,
    },
}

impl TrainError {
    /// A short stable code for logs and the API.
    pub fn reason_code(&self) -> &'static str {
        match self {
            TrainError::Read { .. } => "read",
            TrainError::Write { .. } => "write",
            TrainError::Parse { .. } => "parse",
            TrainError::MissingColumn { .. } => "missing_column",
            TrainError::BadLabel { .. } => "bad_label",
            TrainError::BadTime { .. } => "bad_time",
            TrainError::ColumnMismatch { .. } => "column_mismatch",
            TrainError::NoChannels => "no_channels",
            TrainError::TooFewRows { .. } => "too_few_rows",
            TrainError::DuplicateRows { .. } => "duplicate_rows",
            TrainError::ConstantColumn { .. } => "constant_column",
            TrainError::OutOfF32Range { .. } => "out_of_range",
            TrainError::NotFinite { .. } => "non_finite_value",
            TrainError::Singular { .. } => "singular",
            TrainError::NeedLabels { .. } => "need_labels",
            TrainError::SingleClass { .. } => "single_class",
            TrainError::Folds(_) => "folds",
            TrainError::Feature(_) => "feature",
            TrainError::Decode { .. } => "decode",
            TrainError::Option { .. } => "invalid_option",
            TrainError::Shape { .. } => "shape",
            TrainError::NotConverged(_) => "not_converged",
            TrainError::Storage(_) => "storage",
            TrainError::Registry(_) => "registry",
            TrainError::Json(_) => "json",
            TrainError::Export(_) => "export",
            TrainError::Device { source, .. } => source.reason_code(),
        }
    }
}

/// Checks a sample matrix before any fit: every value finite, at least
/// `min_rows` rows and `min_distinct` distinct rows, no constant column.
/// `names[j]` names column `j` in the errors.
pub fn check_matrix(
    x: &nalgebra::DMatrix<f64>,
    names: &[String],
    min_rows: usize,
    min_distinct: usize,
    allow_constant: bool,
) -> Result<(), TrainError> {
    let name = |j: usize| names.get(j).cloned().unwrap_or_else(|| format!("#{j}"));
    for (j, col) in x.column_iter().enumerate() {
        for (i, v) in col.iter().enumerate() {
            if !v.is_finite() {
                return Err(TrainError::NotFinite {
                    row: i,
                    column: name(j),
                    value: *v,
                });
            }
        }
    }
    let rows = x.nrows();
    if rows < min_rows {
        return Err(TrainError::TooFewRows {
            rows,
            needed: min_rows,
        });
    }
    if x.ncols() == 0 {
        return Err(TrainError::NoChannels);
    }
    let mut distinct = std::collections::HashSet::new();
    for row in x.row_iter() {
        distinct.insert(row.iter().map(|v| v.to_bits()).collect::<Vec<u64>>());
        if distinct.len() >= min_distinct {
            break;
        }
    }
    if distinct.len() < min_distinct {
        return Err(TrainError::DuplicateRows {
            rows,
            distinct: distinct.len(),
            needed: min_distinct,
        });
    }
    if !allow_constant {
        for (j, col) in x.column_iter().enumerate() {
            let first = col[0];
            if col.iter().all(|v| *v == first) {
                return Err(TrainError::ConstantColumn {
                    name: name(j),
                    value: first,
                });
            }
        }
    }
    Ok(())
}
