//! PCA T² + Q (SPE) with empirical control limits.
//!
//! For a row `z`: `t = (z − μ)·P` (P: the kept components), Hotelling
//! `T² = Σ_k t_k² / λ_k`, and the squared prediction error
//! `Q = ‖(z − μ) − t·Pᵀ‖²`. The control limits are the `control_quantile`
//! of T² and Q over the training rows; the score is
//! `max(T² / T²_lim, Q / Q_lim)`, so 1 is "at the control limit".

use nalgebra::DMatrix;
use serde::{Deserialize, Serialize};

use super::super::TrainError;
use super::super::preprocess::{Components, Pca};
use super::super::threshold::quantile;
use super::row_sq_sums;

/// Floor of a control limit: Q is identically ~0 when every component is kept.
const MIN_LIMIT: f64 = 1e-9;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PcaT2Q {
    pub pca: Pca,
    pub t2_limit: f64,
    pub q_limit: f64,
    pub control_quantile: f64,
}

impl PcaT2Q {
    pub fn fit(
        z: &DMatrix<f64>,
        names: &[String],
        explained: f64,
        control_quantile: f64,
    ) -> Result<Self, TrainError> {
        let pca = Pca::fit(z, names, Components::Explained(explained))?;
        let mut m = PcaT2Q {
            pca,
            t2_limit: 1.0,
            q_limit: 1.0,
            control_quantile,
        };
        let (t2, q) = m.t2_q(z);
        let bad = || TrainError::Option {
            option: "control quantile",
            message: format!("{control_quantile} is not in [0, 1]"),
        };
        m.t2_limit = quantile(&t2, control_quantile)
            .ok_or_else(bad)?
            .max(MIN_LIMIT);
        m.q_limit = quantile(&q, control_quantile)
            .ok_or_else(bad)?
            .max(MIN_LIMIT);
        Ok(m)
    }

    /// `(T², Q)` of every row.
    pub fn t2_q(&self, z: &DMatrix<f64>) -> (Vec<f64>, Vec<f64>) {
        let t = self.pca.project(z);
        let mut scaled = t.clone();
        for (k, mut col) in scaled.column_iter_mut().enumerate() {
            col /= self.pca.variances[k].sqrt();
        }
        let t2 = row_sq_sums(&scaled);
        let mut resid = z.clone();
        for mut row in resid.row_iter_mut() {
            row -= self.pca.mean.transpose();
        }
        resid -= &t * self.pca.components.transpose();
        (t2, row_sq_sums(&resid))
    }

    pub fn score(&self, z: &DMatrix<f64>) -> Vec<f64> {
        let (t2, q) = self.t2_q(z);
        t2.iter()
            .zip(&q)
            .map(|(t, q)| (t / self.t2_limit).max(q / self.q_limit))
            .collect()
    }
}
