//! Model families. Each is fitted on the preprocessed matrix `z` (rows are
//! samples, see [`super::preprocess::Pipeline`]) and scores rows: a higher
//! score is more anomalous (the classifier's score is the anomaly
//! probability).
//!
//! - [`pca_t2q`] — PCA with Hotelling T² and Q (SPE), each against its
//!   empirical control limit; score `max(T²/T²_lim, Q/Q_lim)`.
//! - [`gaussian`] — Mahalanobis distance under a Ledoit-Wolf shrunk covariance,
//!   plus the spread between training devices; the `weighted_gaussian`
//!   family also learns non-negative weights of its components from labels.
//! - [`forecaster`] — ridge regression of the newest frame on the previous
//!   `lags` frames; score = sum of squared standardised residuals.
//! - [`classifier`] — L2-regularised logistic regression (Newton/IRLS).
//! - [`autoencoder`] — MLP autoencoder (one tanh bottleneck layer, Adam,
//!   early stopping); score = mean squared reconstruction error. A fleet
//!   base model can be fine-tuned per device with a frozen encoder
//!   ([`autoencoder::Autoencoder::fine_tune`], [`fleet`]).

pub mod autoencoder;
pub mod classifier;
pub mod fleet;
pub mod forecaster;
pub mod gaussian;
pub mod pca_t2q;

use nalgebra::DMatrix;
use serde::{Deserialize, Serialize};

use super::TrainError;

/// Which family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FamilyKind {
    Pca,
    Gaussian,
    /// The Gaussian with label-weighted components ([`gaussian::Gaussian::fit_weighted`]).
    WeightedGaussian,
    Forecast,
    Classifier,
    Autoencoder,
}

impl FamilyKind {
    pub const ALL: [FamilyKind; 6] = [
        FamilyKind::Pca,
        FamilyKind::Gaussian,
        FamilyKind::WeightedGaussian,
        FamilyKind::Forecast,
        FamilyKind::Classifier,
        FamilyKind::Autoencoder,
    ];

    /// The families `--family auto` cross-validates and compares. The
    /// autoencoder is trained only when named: its stochastic, iterative fit
    /// costs far more than the closed-form families per fold. The weighted
    /// Gaussian too: on the simulated fleet it ranks below PCA and the
    /// Gaussian, and costs a Newton fit per fold.
    pub const AUTO: [FamilyKind; 4] = [
        FamilyKind::Pca,
        FamilyKind::Gaussian,
        FamilyKind::Forecast,
        FamilyKind::Classifier,
    ];

    /// What `--family auto` compares without labels: the one-class
    /// families with a closed-form fit (see `run::shift_probes`).
    pub const ONE_CLASS_AUTO: [FamilyKind; 2] = [FamilyKind::Gaussian, FamilyKind::Pca];

    pub fn name(self) -> &'static str {
        match self {
            FamilyKind::Pca => "pca",
            FamilyKind::Gaussian => "gaussian",
            FamilyKind::WeightedGaussian => "weighted_gaussian",
            FamilyKind::Forecast => "forecast",
            FamilyKind::Classifier => "classifier",
            FamilyKind::Autoencoder => "autoencoder",
        }
    }

    /// Whether fitting needs labels.
    pub fn supervised(self) -> bool {
        matches!(self, FamilyKind::Classifier | FamilyKind::WeightedGaussian)
    }

    /// Whether the family is fitted on normal samples only when labels exist.
    pub fn normal_only(self) -> bool {
        !self.supervised()
    }
}

impl std::str::FromStr for FamilyKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        FamilyKind::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown family `{s}` (pca, gaussian, weighted_gaussian, forecast, classifier, autoencoder)"
                )
            })
    }
}

/// Hyper-parameters of every family (each uses its own). Fields missing
/// from saved JSON take their defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HyperParams {
    /// PCA: fraction of variance the kept components explain.
    pub pca_explained: f64,
    /// PCA and Gaussian: quantile of the training scores used as control limit.
    pub control_quantile: f64,
    /// Forecaster: lags (frames before the predicted one).
    pub lags: usize,
    /// Forecaster and classifier: L2 penalty.
    pub ridge: f64,
    /// Autoencoder: hidden (bottleneck) width; `None`: `max(2, n/3)` capped
    /// at `n − 1` for `n` input columns.
    pub ae_hidden: Option<usize>,
    /// Autoencoder: most training epochs (default 200).
    pub ae_epochs: usize,
    /// Autoencoder: rows per mini-batch (default 32).
    pub ae_batch_size: usize,
    /// Autoencoder: Adam learning rate (default 0.01).
    pub ae_learning_rate: f64,
    /// Autoencoder fine-tuning: learning rate as a multiple of
    /// `ae_learning_rate` (default 0.1).
    pub ae_fine_tune_lr_scale: f64,
    /// Autoencoder fine-tuning: most epochs (default 400: early stopping,
    /// not this cap, should end it; at 100 it ran to the cap).
    pub ae_fine_tune_epochs: usize,
    /// Autoencoder: epochs without validation improvement before stopping
    /// (default 10).
    pub ae_patience: usize,
    /// Autoencoder: seed of the weight initialisation and the mini-batch
    /// shuffling (default 1).
    pub seed: u64,
}

impl Default for HyperParams {
    fn default() -> Self {
        HyperParams {
            pca_explained: 0.95,
            control_quantile: 0.99,
            lags: 4,
            ridge: 1e-2,
            ae_hidden: None,
            ae_epochs: 200,
            ae_batch_size: 32,
            ae_learning_rate: 1e-2,
            ae_fine_tune_lr_scale: 0.1,
            ae_fine_tune_epochs: 400,
            ae_patience: 10,
            seed: 1,
        }
    }
}

/// A fitted model of any family.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "snake_case")]
pub enum FittedModel {
    Pca(pca_t2q::PcaT2Q),
    Gaussian(gaussian::Gaussian),
    Forecast(forecaster::Forecaster),
    Classifier(classifier::Logistic),
    Autoencoder(autoencoder::Autoencoder),
}

impl FittedModel {
    /// Fits `kind` on `z`; `labels` are required by the classifier.
    /// `devices` names the device of each row (the Gaussian adds the spread
    /// between devices, see [`gaussian`]). `channels` is the number of frame
    /// channels (the forecaster splits its raw window input with it).
    pub fn fit(
        kind: FamilyKind,
        z: &DMatrix<f64>,
        names: &[String],
        labels: Option<&[bool]>,
        devices: Option<&[String]>,
        channels: usize,
        hp: &HyperParams,
    ) -> Result<Self, TrainError> {
        Ok(match kind {
            FamilyKind::Pca => FittedModel::Pca(pca_t2q::PcaT2Q::fit(
                z,
                names,
                hp.pca_explained,
                hp.control_quantile,
            )?),
            FamilyKind::Gaussian => FittedModel::Gaussian(match devices {
                Some(d) => gaussian::Gaussian::fit_fleet(z, names, d)?,
                None => gaussian::Gaussian::fit(z, names)?,
            }),
            FamilyKind::Forecast => FittedModel::Forecast(forecaster::Forecaster::fit(
                z, names, channels, hp.lags, hp.ridge,
            )?),
            FamilyKind::WeightedGaussian => {
                let labels = labels.ok_or_else(|| TrainError::NeedLabels {
                    what: "the weighted Gaussian",
                    detail: "the data has no label column".into(),
                })?;
                let devices = devices.ok_or_else(|| TrainError::Option {
                    option: "devices",
                    message: "the weighted Gaussian needs each row's device".into(),
                })?;
                FittedModel::Gaussian(gaussian::Gaussian::fit_weighted(
                    z, names, labels, devices, hp.ridge,
                )?)
            }
            FamilyKind::Classifier => {
                let labels = labels.ok_or_else(|| TrainError::NeedLabels {
                    what: "the classifier",
                    detail: "the data has no label column".into(),
                })?;
                FittedModel::Classifier(classifier::Logistic::fit(z, names, labels, hp.ridge)?)
            }
            FamilyKind::Autoencoder => {
                FittedModel::Autoencoder(autoencoder::Autoencoder::fit(z, names, hp)?)
            }
        })
    }

    pub fn kind(&self) -> FamilyKind {
        match self {
            FittedModel::Pca(_) => FamilyKind::Pca,
            FittedModel::Gaussian(_) => FamilyKind::Gaussian,
            FittedModel::Forecast(_) => FamilyKind::Forecast,
            FittedModel::Classifier(_) => FamilyKind::Classifier,
            FittedModel::Autoencoder(_) => FamilyKind::Autoencoder,
        }
    }

    /// What to add to a score to put it on a scale shared by every fit of
    /// the family (the log-odds for the weighted Gaussian; 0 otherwise), so
    /// a threshold chosen on cross-validation scores carries over to the
    /// final fit.
    pub fn score_offset(&self) -> f64 {
        match self {
            FittedModel::Gaussian(m) => m.logit_offset,
            _ => 0.0,
        }
    }

    /// Input width.
    pub fn input_len(&self) -> usize {
        match self {
            FittedModel::Pca(m) => m.pca.mean.len(),
            FittedModel::Gaussian(m) => m.mean.len(),
            FittedModel::Forecast(m) => m.channels * (m.lags + 1),
            FittedModel::Classifier(m) => m.weights.len(),
            FittedModel::Autoencoder(m) => m.input_len(),
        }
    }

    /// Anomaly scores of the rows of `z`.
    pub fn score(&self, z: &DMatrix<f64>) -> Result<Vec<f64>, TrainError> {
        if z.ncols() != self.input_len() {
            return Err(TrainError::Shape {
                expected: self.input_len(),
                got: z.ncols(),
            });
        }
        Ok(match self {
            FittedModel::Pca(m) => m.score(z),
            FittedModel::Gaussian(m) => m.score(z),
            FittedModel::Forecast(m) => m.score(z),
            FittedModel::Classifier(m) => m.score(z),
            FittedModel::Autoencoder(m) => m.score(z),
        })
    }
}

/// Row-wise sum of squares.
pub(crate) fn row_sq_sums(m: &DMatrix<f64>) -> Vec<f64> {
    m.row_iter()
        .map(|r| r.iter().map(|v| v * v).sum())
        .collect()
}
