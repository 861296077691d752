//! Autoregressive forecaster: ridge regression of the newest frame on the
//! `lags` frames before it.
//!
//! Input rows are raw windows of `lags + 1` frames, time-major
//! (`protocol::features` with `raw = true`): the first `lags · C` columns are
//! the lags, the last `C` the frame to predict. Every channel is predicted
//! from every lag of every channel plus an intercept (not penalised):
//! `β = (AᵀA + λI′)⁻¹ AᵀY`, solved by Cholesky. The anomaly score is
//! `Σ_c (r_c / σ_c)²`, with `σ_c` the residual standard deviation of
//! channel `c` on the training rows.

use nalgebra::DMatrix;
use serde::{Deserialize, Serialize};

use super::super::TrainError;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Forecaster {
    pub channels: usize,
    pub lags: usize,
    pub ridge: f64,
    /// `(lags·C) × C` coefficients: row `l·C + j` is lag `lags − l` of channel `j`.
    pub coefficients: DMatrix<f64>,
    pub intercept: Vec<f64>,
    pub residual_std: Vec<f64>,
}

impl Forecaster {
    pub fn fit(
        z: &DMatrix<f64>,
        names: &[String],
        channels: usize,
        lags: usize,
        ridge: f64,
    ) -> Result<Self, TrainError> {
        if channels == 0 || lags == 0 {
            return Err(TrainError::Option {
                option: "lags",
                message: format!("{lags} lags of {channels} channels"),
            });
        }
        if !(ridge >= 0.0 && ridge.is_finite()) {
            return Err(TrainError::Option {
                option: "ridge",
                message: format!("{ridge} is not a finite non-negative penalty"),
            });
        }
        let width = channels * (lags + 1);
        if z.ncols() != width {
            return Err(TrainError::Shape {
                expected: width,
                got: z.ncols(),
            });
        }
        let inputs = channels * lags;
        super::super::check_matrix(z, names, inputs + 2, inputs + 2, true)?;
        let n = z.nrows();
        let mut a = DMatrix::from_element(n, inputs + 1, 1.0);
        a.view_mut((0, 0), (n, inputs))
            .copy_from(&z.view((0, 0), (n, inputs)));
        let y = z.view((0, inputs), (n, channels)).into_owned();
        let mut gram = a.transpose() * &a;
        for i in 0..inputs {
            gram[(i, i)] += ridge;
        }
        let chol = gram.cholesky().ok_or(TrainError::Singular {
            rank: inputs,
            columns: inputs + 1,
        })?;
        let beta = chol.solve(&(a.transpose() * &y));
        let coefficients = beta.view((0, 0), (inputs, channels)).into_owned();
        let intercept: Vec<f64> = beta.row(inputs).iter().copied().collect();
        let mut model = Forecaster {
            channels,
            lags,
            ridge,
            coefficients,
            intercept,
            residual_std: vec![1.0; channels],
        };
        let resid = &y - model.predict(z);
        model.residual_std = resid
            .column_iter()
            .map(|c| (c.norm_squared() / n as f64).sqrt().max(1e-12))
            .collect();
        Ok(model)
    }

    /// Predicted newest frame of every row (n × C).
    pub fn predict(&self, z: &DMatrix<f64>) -> DMatrix<f64> {
        let inputs = self.channels * self.lags;
        let mut p = z.view((0, 0), (z.nrows(), inputs)) * &self.coefficients;
        for mut row in p.row_iter_mut() {
            for (v, b) in row.iter_mut().zip(&self.intercept) {
                *v += b;
            }
        }
        p
    }

    /// The frame each row predicts (n × C).
    pub fn target(&self, z: &DMatrix<f64>) -> DMatrix<f64> {
        let inputs = self.channels * self.lags;
        z.view((0, inputs), (z.nrows(), self.channels)).into_owned()
    }

    pub fn score(&self, z: &DMatrix<f64>) -> Vec<f64> {
        let resid = self.target(z) - self.predict(z);
        resid
            .row_iter()
            .map(|r| {
                r.iter()
                    .zip(&self.residual_std)
                    .map(|(v, s)| (v / s) * (v / s))
                    .sum()
            })
            .collect()
    }
}
