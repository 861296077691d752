//! L2-regularised logistic regression, fitted by Newton's method (IRLS).
//!
//! Minimises `Σ_i logloss(y_i, σ(w·z_i + b)) + (λ/2)·‖w‖²` (the bias is not
//! penalised). The penalty keeps the Hessian positive definite and the
//! weights finite on separable data. The score is the probability of the
//! anomaly class.

use nalgebra::{DMatrix, DVector};
use serde::{Deserialize, Serialize};

use super::super::TrainError;

const MAX_ITERATIONS: usize = 100;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Logistic {
    pub weights: Vec<f64>,
    pub bias: f64,
    pub ridge: f64,
    pub iterations: usize,
}

fn sigmoid(v: f64) -> f64 {
    if v >= 0.0 {
        1.0 / (1.0 + (-v).exp())
    } else {
        let e = v.exp();
        e / (1.0 + e)
    }
}

impl Logistic {
    pub fn fit(
        z: &DMatrix<f64>,
        names: &[String],
        labels: &[bool],
        ridge: f64,
    ) -> Result<Self, TrainError> {
        super::super::check_matrix(z, names, 2, 2, true)?;
        if labels.len() != z.nrows() {
            return Err(TrainError::Shape {
                expected: z.nrows(),
                got: labels.len(),
            });
        }
        let pos = labels.iter().filter(|&&l| l).count();
        if pos == 0 || pos == labels.len() {
            return Err(TrainError::SingleClass {
                count: labels.len(),
                class: pos > 0,
                what: "the classifier",
            });
        }
        if !(ridge > 0.0 && ridge.is_finite()) {
            return Err(TrainError::Option {
                option: "ridge",
                message: format!("the classifier needs a penalty > 0, got {ridge}"),
            });
        }
        let (n, d) = (z.nrows(), z.ncols());
        let mut a = DMatrix::from_element(n, d + 1, 1.0);
        a.view_mut((0, 0), (n, d)).copy_from(z);
        let y = DVector::from_iterator(n, labels.iter().map(|&l| if l { 1.0 } else { 0.0 }));
        let mut w = DVector::zeros(d + 1);
        // Start the bias at the base rate's log-odds.
        let rate = pos as f64 / n as f64;
        w[d] = (rate / (1.0 - rate)).ln();
        let mut iterations = 0;
        loop {
            iterations += 1;
            let p = (&a * &w).map(sigmoid);
            let mut grad = a.transpose() * (&p - &y);
            let mut weighted = a.clone();
            for (i, mut row) in weighted.row_iter_mut().enumerate() {
                row *= (p[i] * (1.0 - p[i])).max(1e-12);
            }
            let mut hess = a.transpose() * weighted;
            for j in 0..d {
                grad[j] += ridge * w[j];
                hess[(j, j)] += ridge;
            }
            hess[(d, d)] += 1e-9;
            let chol = hess.cholesky().ok_or_else(|| {
                TrainError::NotConverged("logistic Hessian not positive definite".into())
            })?;
            let step = chol.solve(&grad);
            w -= &step;
            if !w.iter().all(|v| v.is_finite()) {
                return Err(TrainError::NotConverged("logistic weights diverged".into()));
            }
            if step.amax() < 1e-9 {
                break;
            }
            if iterations >= MAX_ITERATIONS {
                return Err(TrainError::NotConverged(format!(
                    "logistic regression after {MAX_ITERATIONS} Newton steps"
                )));
            }
        }
        Ok(Logistic {
            weights: w.rows(0, d).iter().copied().collect(),
            bias: w[d],
            ridge,
            iterations,
        })
    }

    pub fn score(&self, z: &DMatrix<f64>) -> Vec<f64> {
        z.row_iter()
            .map(|r| {
                let v: f64 = r.iter().zip(&self.weights).map(|(a, b)| a * b).sum();
                sigmoid(v + self.bias)
            })
            .collect()
    }
}
