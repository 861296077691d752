//! Gaussian / Mahalanobis with Ledoit-Wolf shrinkage.
//!
//! With `X` the centred training rows (n × d) and `S = XᵀX / n`:
//! `μ = tr(S)/d`, `δ = ‖S − μI‖²_F`, `β = (1/n²)·Σ_i ‖x_i x_iᵀ − S‖²_F
//! = (Σ_i ‖x_i‖⁴ − n‖S‖²_F)/n²`, shrinkage `s = min(β, δ)/δ`, and
//! `Σ = (1 − s)·S + s·μI` (Ledoit & Wolf 2004). The score is the squared
//! Mahalanobis distance `(z − m)ᵀ Σ⁻¹ (z − m) = ‖(z − m)·W‖²` with
//! `W = V·diag(λ^{-1/2})` from the eigen-decomposition `Σ = VΛVᵀ`.

use nalgebra::{DMatrix, DVector, SymmetricEigen};
use serde::{Deserialize, Serialize};

use super::super::TrainError;
use super::row_sq_sums;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gaussian {
    pub mean: DVector<f64>,
    /// Whitening matrix `W` (d × d).
    pub whitening: DMatrix<f64>,
    /// The Ledoit-Wolf shrinkage intensity in [0, 1].
    pub shrinkage: f64,
}

impl Gaussian {
    pub fn fit(z: &DMatrix<f64>, names: &[String]) -> Result<Self, TrainError> {
        super::super::check_matrix(z, names, 2, 2, true)?;
        let (n, d) = (z.nrows(), z.ncols());
        let nf = n as f64;
        let mean = DVector::from_iterator(d, z.column_iter().map(|c| c.mean()));
        let mut x = z.clone();
        for mut row in x.row_iter_mut() {
            row -= mean.transpose();
        }
        let s = x.transpose() * &x / nf;
        let mu = s.trace() / d as f64;
        if mu.is_nan() || mu <= 0.0 {
            return Err(TrainError::Singular {
                rank: 0,
                columns: d,
            });
        }
        let s_norm2 = s.norm_squared();
        let delta = (&s - DMatrix::identity(d, d) * mu).norm_squared();
        let fourth: f64 = row_sq_sums(&x).iter().map(|r| r * r).sum();
        let beta = ((fourth - nf * s_norm2) / (nf * nf)).max(0.0);
        let shrinkage = if delta > 0.0 {
            beta.min(delta) / delta
        } else {
            1.0
        };
        let cov = &s * (1.0 - shrinkage) + DMatrix::identity(d, d) * (shrinkage * mu);
        let eig = SymmetricEigen::try_new(cov, f64::EPSILON, 10_000)
            .ok_or_else(|| TrainError::NotConverged("symmetric eigen-decomposition".into()))?;
        let max = eig.eigenvalues.max();
        let rank = eig.eigenvalues.iter().filter(|&&l| l > max * 1e-12).count();
        if rank < d {
            return Err(TrainError::Singular { rank, columns: d });
        }
        let mut whitening = eig.eigenvectors.clone();
        for (k, mut col) in whitening.column_iter_mut().enumerate() {
            col /= eig.eigenvalues[k].sqrt();
        }
        Ok(Gaussian {
            mean,
            whitening,
            shrinkage,
        })
    }

    pub fn score(&self, z: &DMatrix<f64>) -> Vec<f64> {
        let mut x = z.clone();
        for mut row in x.row_iter_mut() {
            row -= self.mean.transpose();
        }
        row_sq_sums(&(x * &self.whitening))
    }
}
