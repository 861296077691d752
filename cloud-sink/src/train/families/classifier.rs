//! Class-weighted, L2-regularised logistic regression, fitted by Newton's
//! method (IRLS) with a backtracking line search.
//!
//! Minimises the per-sample mean of the weighted log-loss plus an L2 penalty
//! on the weights (the bias is not penalised):
//!
//! `J(w, b) = (1/n)·Σ_i c_i·logloss(y_i, σ(w·z_i + b)) + (λ/2)·‖w‖²`
//!
//! - **Class weights** `c_i` are *balanced*: `n / (2·n_class)`, so both
//!   classes weigh the same in total. Anomalies are rare (a few per cent of
//!   the windows); unweighted, the fit is dominated by the normal class and
//!   spends its few degrees of freedom on the bulk of normal data rather than
//!   on the boundary where anomalies are. The score is therefore the
//!   anomaly probability under a balanced prior, not the base rate: the
//!   alarm threshold is chosen afterwards (best F1 on validation scores), so
//!   only the ranking matters.
//! - **The penalty is per sample** (`λ` next to a mean, not a sum), so the
//!   same `λ` regularises the same amount whatever the number of windows;
//!   with a sum, `λ = 0.01` on 100 000 windows is no penalty at all and
//!   nearly separable data sends the weights off (Newton then needs hundreds
//!   of steps). It keeps the Hessian positive definite and the weights
//!   finite on separable data.
//! - **Newton with a line search**: each step is halved until `J` decreases
//!   (Armijo), and the fit stops when the Newton decrement `gᵀH⁻¹g / 2` falls
//!   below 1e-12 — both quantities are scale-free in the data size.
//!
//! The score is the probability of the anomaly class.

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

pub(crate) fn sigmoid(v: f64) -> f64 {
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
        let nf = n as f64;
        let mut a = DMatrix::from_element(n, d + 1, 1.0);
        a.view_mut((0, 0), (n, d)).copy_from(z);
        let y = DVector::from_iterator(n, labels.iter().map(|&l| if l { 1.0 } else { 0.0 }));
        // Balanced class weights, divided by n: the objective is a mean.
        let (w_pos, w_neg) = (0.5 / pos as f64, 0.5 / (nf - pos as f64));
        let c = DVector::from_iterator(n, labels.iter().map(|&l| if l { w_pos } else { w_neg }));
        let objective = |w: &DVector<f64>| -> f64 {
            let m = &a * w;
            let loss: f64 = m
                .iter()
                .zip(y.iter())
                .zip(c.iter())
                .map(|((m, y), c)| c * log1p_exp(if *y > 0.5 { -m } else { *m }))
                .sum();
            let penalty: f64 = w.rows(0, d).iter().map(|v| v * v).sum();
            loss + 0.5 * ridge * penalty
        };
        // Balanced weights make the prior even: start the bias at 0.
        let mut w = DVector::zeros(d + 1);
        let mut current = objective(&w);
        let mut iterations = 0;
        loop {
            iterations += 1;
            let p = (&a * &w).map(sigmoid);
            let r = (&p - &y).component_mul(&c);
            let mut grad = a.transpose() * r;
            let mut weighted = a.clone();
            for (i, mut row) in weighted.row_iter_mut().enumerate() {
                row *= (c[i] * p[i] * (1.0 - p[i])).max(1e-300);
            }
            let mut hess = a.transpose() * weighted;
            for j in 0..d {
                grad[j] += ridge * w[j];
                hess[(j, j)] += ridge;
            }
            hess[(d, d)] += 1e-12;
            let chol = hess.cholesky().ok_or_else(|| {
                TrainError::NotConverged("logistic Hessian not positive definite".into())
            })?;
            let step = chol.solve(&grad);
            let decrement = grad.dot(&step) / 2.0;
            if !decrement.is_finite() {
                return Err(TrainError::NotConverged("logistic weights diverged".into()));
            }
            if decrement < 1e-12 {
                break;
            }
            // Backtracking (Armijo): the full Newton step, halved until J drops enough.
            let mut t = 1.0;
            loop {
                let candidate = &w - &step * t;
                let value = objective(&candidate);
                if value.is_finite() && value <= current - 1e-4 * t * 2.0 * decrement {
                    w = candidate;
                    current = value;
                    break;
                }
                t /= 2.0;
                if t < 1e-10 {
                    // No decrease possible at float precision: at the optimum.
                    break;
                }
            }
            if t < 1e-10 {
                break;
            }
            if iterations >= MAX_ITERATIONS {
                return Err(TrainError::NotConverged(format!(
                    "logistic regression after {MAX_ITERATIONS} Newton steps"
                )));
            }
        }
        if !w.iter().all(|v| v.is_finite()) {
            return Err(TrainError::NotConverged("logistic weights diverged".into()));
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

/// `ln(1 + eᵛ)` without overflow.
pub(crate) fn log1p_exp(v: f64) -> f64 {
    if v > 0.0 {
        v + (-v).exp().ln_1p()
    } else {
        v.exp().ln_1p()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separable_data_with_many_rows_converges_in_few_newton_steps() {
        // 60 000 rows, 2 % anomalies, perfectly separable on column 0: with a
        // penalty summed over rows this ran out of Newton steps.
        let n = 60_000;
        let labels: Vec<bool> = (0..n).map(|i| i % 50 == 0).collect();
        let z = DMatrix::from_fn(n, 3, |i, j| {
            let u = ((i * 7919 + j * 104_729) % 1000) as f64 / 1000.0 - 0.5;
            if j == 0 && labels[i] { 3.0 + u } else { u }
        });
        let names: Vec<String> = (0..3).map(|j| format!("f{j}")).collect();
        let m = Logistic::fit(&z, &names, &labels, 1e-2).unwrap();
        assert!(m.iterations < 30, "{} Newton steps", m.iterations);
        let s = m.score(&z);
        // Balanced weights: the anomalies score above one half, the rest below.
        assert!((0..n).all(|i| (s[i] > 0.5) == labels[i]));
        assert!(m.weights[0] > 1.0 && m.weights.iter().all(|w| w.is_finite()));
    }
}
