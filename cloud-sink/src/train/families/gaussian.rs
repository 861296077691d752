//! Gaussian / Mahalanobis with Ledoit-Wolf shrinkage.
//!
//! With `X` the centred training rows (n × d) and `S = XᵀX / n`:
//! `μ = tr(S)/d`, `δ = ‖S − μI‖²_F`, `β = (1/n²)·Σ_i ‖x_i x_iᵀ − S‖²_F
//! = (Σ_i ‖x_i‖⁴ − n‖S‖²_F)/n²`, shrinkage `s = min(β, δ)/δ`, and
//! `Σ = (1 − s)·S + s·μI` (Ledoit & Wolf 2004). The score is the squared
//! Mahalanobis distance `(z − m)ᵀ Σ⁻¹ (z − m) = ‖(z − m)·W‖²` with
//! `W = V·diag(λ^{-1/2})` from the eigen-decomposition `Σ = VΛVᵀ`.
//!
//! **Devices never seen in training** ([`Gaussian::fit_fleet`]). A fleet
//! model scores devices it was not trained on, and every pump differs a
//! little (gains, offsets). Within one device the channels follow each other
//! so closely that some whitened directions have a tiny variance; a new
//! device whose relationship is shifted along such a direction would be far
//! out on every window. Seen as a random-effects model — a window is the
//! fleet mean plus a device offset plus within-device variation — the
//! covariance of a new
//! device's windows about the fleet mean is the within-device covariance
//! plus the covariance of the device offsets. A handful of training devices
//! cannot estimate the latter's off-diagonal structure, so its diagonal is
//! used: `Σ_fleet = Σ + diag(B)`, with `B_j = (1 + 1/G)·s_j²`, `s_j²` the
//! unbiased variance of the `G` per-device means of column `j` (each device
//! weighing the same) and `1 + 1/G` the usual widening for predicting a new
//! group rather than describing the fitted ones. Every column may then shift
//! between devices by as much as it does among the training devices.
//!
//! **Weighted components** ([`Gaussian::fit_weighted`], the
//! `weighted_gaussian` family; needs labels). The Mahalanobis distance
//! weighs every whitened direction the same, whether anomalies show in it or
//! not. With labels, the squared whitened components `q_k = ((z − m)·W)_k²`
//! of every training window (normal and anomalous) are the inputs of a
//! logistic regression with **non-negative** weights `α_k` (balanced class
//! weights, L2 penalty `λ/2·‖α‖²` next to the mean loss, projected Newton);
//! the score is `Σ_k α_k q_k = ‖(z − m)·W·diag(√α)‖²`. It keeps the form of a
//! Mahalanobis distance (so it exports as one) and still grows in both
//! directions of every component — with log-scaled spreads
//! (`Pipeline::fit_with_log_spread`) a channel stuck at a constant and a
//! noise burst are both far from the mean of the same component — but the
//! weights say which directions matter.
//! `logit_offset` is the regression's intercept: `score + logit_offset` is
//! the log-odds of an anomaly under a balanced prior, a scale shared by every
//! fit, which is how thresholds chosen on cross-validation scores carry over
//! to the final model (see `run`).

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
    /// Weighted components only: the weights `α` (already folded into
    /// `whitening`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component_weights: Option<Vec<f64>>,
    /// Added to the score, the log-odds of an anomaly; 0 when unweighted.
    #[serde(default)]
    pub logit_offset: f64,
}

impl Gaussian {
    pub fn fit(z: &DMatrix<f64>, names: &[String]) -> Result<Self, TrainError> {
        Ok(decompose(z, names, None)?.into_gaussian(None, 0.0))
    }

    /// Fits for devices outside the training set (see the module docs).
    /// `devices[i]` is the device of row `i`; with fewer than two devices
    /// this is [`fit`](Self::fit).
    pub fn fit_fleet(
        z: &DMatrix<f64>,
        names: &[String],
        devices: &[String],
    ) -> Result<Self, TrainError> {
        if devices.len() != z.nrows() {
            return Err(TrainError::Shape {
                expected: z.nrows(),
                got: devices.len(),
            });
        }
        let f = fleet_fit(z, names, devices)?;
        Ok(f.into_gaussian(None, 0.0))
    }

    /// The weighted-components fit (see the module docs): the fleet
    /// Gaussian of the normal rows (`labels[i] == false`), then non-negative
    /// weights of its components from every row.
    pub fn fit_weighted(
        z: &DMatrix<f64>,
        names: &[String],
        labels: &[bool],
        devices: &[String],
        ridge: f64,
    ) -> Result<Self, TrainError> {
        if labels.len() != z.nrows() || devices.len() != z.nrows() {
            return Err(TrainError::Shape {
                expected: z.nrows(),
                got: labels.len().min(devices.len()),
            });
        }
        let normal: Vec<usize> = (0..z.nrows()).filter(|&i| !labels[i]).collect();
        let normal_devices: Vec<String> = normal.iter().map(|&i| devices[i].clone()).collect();
        let f = fleet_fit(&z.select_rows(&normal), names, &normal_devices)?;
        let q = f.components(z).map(|t| t * t);
        let (alpha, bias) = nonnegative_logistic(&q, labels, ridge)?;
        Ok(f.into_gaussian(Some(alpha), bias))
    }

    pub fn score(&self, z: &DMatrix<f64>) -> Vec<f64> {
        let mut x = z.clone();
        for mut row in x.row_iter_mut() {
            row -= self.mean.transpose();
        }
        row_sq_sums(&(x * &self.whitening))
    }
}

/// A fitted fleet Gaussian before weighting: the mean, the directions
/// (eigenvectors, columns) and the variance along each.
struct FleetFit {
    mean: DVector<f64>,
    directions: DMatrix<f64>,
    variances: Vec<f64>,
    shrinkage: f64,
}

impl FleetFit {
    /// Standardised components `((z − m)·v_k) / √var_k` of every row.
    fn components(&self, z: &DMatrix<f64>) -> DMatrix<f64> {
        let mut x = z.clone();
        for mut row in x.row_iter_mut() {
            row -= self.mean.transpose();
        }
        let mut t = x * &self.directions;
        for (k, mut col) in t.column_iter_mut().enumerate() {
            col /= self.variances[k].sqrt();
        }
        t
    }

    fn into_gaussian(self, alpha: Option<Vec<f64>>, logit_offset: f64) -> Gaussian {
        let mut whitening = self.directions;
        for (k, mut col) in whitening.column_iter_mut().enumerate() {
            let a = alpha.as_ref().map_or(1.0, |a| a[k]);
            col *= (a / self.variances[k]).sqrt();
        }
        Gaussian {
            mean: self.mean,
            whitening,
            shrinkage: self.shrinkage,
            component_weights: alpha,
            logit_offset,
        }
    }
}

/// The fleet Gaussian of `z` (see the module docs): the shrunk covariance
/// plus the between-device diagonal.
fn fleet_fit(
    z: &DMatrix<f64>,
    names: &[String],
    devices: &[String],
) -> Result<FleetFit, TrainError> {
    decompose(z, names, between_device_variance(z, devices))
}

/// The shrunk covariance of `z` (plus `between` on its diagonal), as its
/// eigen-decomposition.
fn decompose(
    z: &DMatrix<f64>,
    names: &[String],
    between: Option<DVector<f64>>,
) -> Result<FleetFit, TrainError> {
    let (mean, cov, shrinkage) = covariance(z, names, between)?;
    let eig = eigen(cov)?;
    Ok(FleetFit {
        mean,
        directions: eig.eigenvectors,
        variances: eig.eigenvalues.iter().copied().collect(),
        shrinkage,
    })
}

/// Mean, Ledoit-Wolf shrunk covariance (plus `diag(between)`) and the
/// shrinkage of the rows of `z` (see the module docs).
fn covariance(
    z: &DMatrix<f64>,
    names: &[String],
    between: Option<DVector<f64>>,
) -> Result<(DVector<f64>, DMatrix<f64>, f64), TrainError> {
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
    let mut cov = &s * (1.0 - shrinkage) + DMatrix::identity(d, d) * (shrinkage * mu);
    if let Some(b) = &between {
        for j in 0..d {
            cov[(j, j)] += b[j];
        }
    }
    Ok((mean, cov, shrinkage))
}

/// The eigen-decomposition of a covariance, refused when it is singular.
fn eigen(cov: DMatrix<f64>) -> Result<SymmetricEigen<f64, nalgebra::Dyn>, TrainError> {
    let d = cov.ncols();
    let eig = SymmetricEigen::try_new(cov, f64::EPSILON, 10_000)
        .ok_or_else(|| TrainError::NotConverged("symmetric eigen-decomposition".into()))?;
    let max = eig.eigenvalues.max();
    let rank = eig.eigenvalues.iter().filter(|&&l| l > max * 1e-12).count();
    if rank < d {
        return Err(TrainError::Singular { rank, columns: d });
    }
    Ok(eig)
}

/// Per column, the spread of a new device's mean about the fleet mean,
/// from the per-device means (each device weighing the same); `None` with
/// fewer than two devices.
fn between_device_variance(z: &DMatrix<f64>, devices: &[String]) -> Option<DVector<f64>> {
    let d = z.ncols();
    let mut sums: std::collections::BTreeMap<&str, (DVector<f64>, usize)> = Default::default();
    for (i, row) in z.row_iter().enumerate() {
        let e = sums
            .entry(devices[i].as_str())
            .or_insert_with(|| (DVector::zeros(d), 0));
        e.0 += row.transpose();
        e.1 += 1;
    }
    if sums.len() < 2 {
        return None;
    }
    let means: Vec<DVector<f64>> = sums.into_values().map(|(s, n)| s / n as f64).collect();
    let g = means.len() as f64;
    let grand = means.iter().fold(DVector::zeros(d), |a, m| a + m) / g;
    // The unbiased variance of the device means, times (1 + 1/G): the
    // variance of a *new* device's offset about a fleet mean itself
    // estimated from G devices (a prediction, not a fit).
    let var = means
        .iter()
        .fold(DVector::zeros(d), |a, m| a + (m - &grand).map(|v| v * v))
        / (g - 1.0)
        * (1.0 + 1.0 / g);
    Some(var)
}

/// Logistic regression with non-negative weights and a free intercept:
/// minimises `Σ_i c_i·logloss(y_i, q_i·α + b) + (λ/2)·‖α‖²` with balanced
/// class weights `c_i` summing to 1 (`0.5/n_class`), by projected Newton
/// (Bertsekas 1982): weights at 0 whose gradient pushes them below stay
/// fixed, the Newton step is taken in the others, the step is projected onto
/// `α ≥ 0` and halved until the objective drops (Armijo). Stops when the
/// Newton decrement on the free variables is below 1e-12.
fn nonnegative_logistic(
    q: &DMatrix<f64>,
    labels: &[bool],
    ridge: f64,
) -> Result<(Vec<f64>, f64), TrainError> {
    const MAX_ITERATIONS: usize = 200;
    let (n, d) = (q.nrows(), q.ncols());
    let pos = labels.iter().filter(|&&l| l).count();
    if pos == 0 || pos == n {
        return Err(TrainError::SingleClass {
            count: n,
            class: pos > 0,
            what: "the weighted Gaussian",
        });
    }
    if !(ridge > 0.0 && ridge.is_finite()) {
        return Err(TrainError::Option {
            option: "ridge",
            message: format!("the weighted Gaussian needs a penalty > 0, got {ridge}"),
        });
    }
    let mut a = DMatrix::from_element(n, d + 1, 1.0);
    a.view_mut((0, 0), (n, d)).copy_from(q);
    let y: Vec<f64> = labels.iter().map(|&l| if l { 1.0 } else { 0.0 }).collect();
    let (w_pos, w_neg) = (0.5 / pos as f64, 0.5 / (n - pos) as f64);
    let c: Vec<f64> = labels
        .iter()
        .map(|&l| if l { w_pos } else { w_neg })
        .collect();
    let objective = |w: &DVector<f64>| -> f64 {
        let m = &a * w;
        let loss: f64 = (0..n)
            .map(|i| c[i] * super::classifier::log1p_exp(if y[i] > 0.5 { -m[i] } else { m[i] }))
            .sum();
        loss + 0.5 * ridge * w.rows(0, d).norm_squared()
    };
    // Start: every component weighs 1/d, the intercept at the median-ish
    // level of a normal window's score (−1: a normal window's q sums to ≈ d).
    let mut w = DVector::from_element(d + 1, 1.0 / d as f64);
    w[d] = -1.0;
    let mut current = objective(&w);
    for _ in 0..MAX_ITERATIONS {
        let p: Vec<f64> = (&a * &w)
            .iter()
            .map(|&m| super::classifier::sigmoid(m))
            .collect();
        let r = DVector::from_iterator(n, (0..n).map(|i| c[i] * (p[i] - y[i])));
        let mut grad = a.transpose() * r;
        for j in 0..d {
            grad[j] += ridge * w[j];
        }
        // Free variables: the intercept, positive weights, and weights at 0
        // whose gradient would raise them.
        let free: Vec<usize> = (0..=d)
            .filter(|&j| j == d || w[j] > 1e-12 || grad[j] < 0.0)
            .collect();
        let af = a.select_columns(&free);
        let mut weighted = af.clone();
        for (i, mut row) in weighted.row_iter_mut().enumerate() {
            row *= (c[i] * p[i] * (1.0 - p[i])).max(1e-300);
        }
        let mut hess = af.transpose() * weighted;
        for (k, &j) in free.iter().enumerate() {
            hess[(k, k)] += if j == d { 1e-12 } else { ridge };
        }
        let gf = DVector::from_iterator(free.len(), free.iter().map(|&j| grad[j]));
        let chol = hess.cholesky().ok_or_else(|| {
            TrainError::NotConverged("weighted Gaussian: Hessian not positive definite".into())
        })?;
        let step = chol.solve(&gf);
        let decrement = gf.dot(&step) / 2.0;
        if !decrement.is_finite() {
            return Err(TrainError::NotConverged(
                "weighted Gaussian: weights diverged".into(),
            ));
        }
        if decrement < 1e-12 {
            break;
        }
        let mut t = 1.0;
        let mut moved = false;
        while t >= 1e-10 {
            let mut cand = w.clone();
            for (k, &j) in free.iter().enumerate() {
                cand[j] -= t * step[k];
                if j < d {
                    cand[j] = cand[j].max(0.0);
                }
            }
            let value = objective(&cand);
            let expected = grad.dot(&(&w - &cand));
            if value.is_finite() && value <= current - 1e-4 * expected {
                w = cand;
                current = value;
                moved = true;
                break;
            }
            t /= 2.0;
        }
        if !moved {
            break;
        }
    }
    if !w.iter().all(|v| v.is_finite()) {
        return Err(TrainError::NotConverged(
            "weighted Gaussian: weights diverged".into(),
        ));
    }
    Ok((w.rows(0, d).iter().copied().collect(), w[d]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn normal(rng: &mut StdRng) -> f64 {
        let u1: f64 = 1.0 - rng.random::<f64>();
        let u2: f64 = rng.random();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    fn names(d: usize) -> Vec<String> {
        (0..d).map(|j| format!("f{j}")).collect()
    }

    /// Devices whose column 1 follows column 0 closely, each with its own
    /// offset of column 1 (sd `offset_sd`).
    fn fleet(
        devices: usize,
        rows: usize,
        offset_sd: f64,
        seed: u64,
    ) -> (DMatrix<f64>, Vec<String>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut data = Vec::new();
        let mut dev = Vec::new();
        for d in 0..devices {
            let offset = offset_sd * normal(&mut rng);
            for _ in 0..rows {
                let a = normal(&mut rng);
                data.extend([a, a + offset + 0.05 * normal(&mut rng), normal(&mut rng)]);
                dev.push(format!("d{d}"));
            }
        }
        (DMatrix::from_row_slice(devices * rows, 3, &data), dev)
    }

    #[test]
    fn the_fleet_fit_tolerates_a_new_devices_offset_the_plain_fit_does_not() {
        let (x, dev) = fleet(5, 400, 0.3, 1);
        let plain = Gaussian::fit(&x, &names(3)).unwrap();
        let fleet_fit = Gaussian::fit_fleet(&x, &names(3), &dev).unwrap();
        // A new device shifted by 0.3 in column 1 relative to column 0.
        let probe = DMatrix::from_row_slice(1, 3, &[0.0, 0.3, 0.0]);
        let (p, f) = (plain.score(&probe)[0], fleet_fit.score(&probe)[0]);
        assert!(f < p / 2.0, "fleet {f} vs plain {p}");
        // It still flags a shift several times the devices' spread.
        let far = DMatrix::from_row_slice(1, 3, &[0.0, 3.0, 0.0]);
        assert!(fleet_fit.score(&far)[0] > 20.0);
        assert_eq!(
            (fleet_fit.component_weights.clone(), fleet_fit.logit_offset),
            (None, 0.0)
        );
    }

    #[test]
    fn weighted_components_follow_the_labels_and_stay_a_mahalanobis_form() {
        let (mut x, dev) = fleet(4, 500, 0.1, 2);
        let n = x.nrows();
        let mut rng = StdRng::seed_from_u64(3);
        // Anomalies: every 20th row, column 2 (independent of the rest) is
        // pushed out, in either direction.
        let labels: Vec<bool> = (0..n).map(|i| i % 20 == 0).collect();
        for i in (0..n).filter(|i| labels[*i]) {
            x[(i, 2)] = if rng.random::<bool>() { 4.0 } else { -4.0 } + 0.3 * normal(&mut rng);
        }
        let g = Gaussian::fit_weighted(&x, &names(3), &labels, &dev, 1e-2).unwrap();
        let alpha = g.component_weights.clone().unwrap();
        assert!(alpha.iter().all(|a| *a >= 0.0), "{alpha:?}");
        let s = g.score(&x);
        let roc = crate::train::metrics::roc_auc(&s, &labels).unwrap();
        assert!(roc > 0.99, "ROC-AUC {roc}");
        // score + offset is the log-odds: positive for the anomalies on
        // average, negative for normal rows.
        let mean = |want: bool| {
            let v: Vec<f64> = (0..n)
                .filter(|&i| labels[i] == want)
                .map(|i| s[i] + g.logit_offset)
                .collect();
            v.iter().sum::<f64>() / v.len() as f64
        };
        assert!(mean(true) > 0.0 && mean(false) < 0.0);
        // The score is ‖(z − m)·W‖² with the weights folded into W.
        let mut c = x.clone();
        for mut row in c.row_iter_mut() {
            row -= g.mean.transpose();
        }
        let direct = super::row_sq_sums(&(c * &g.whitening));
        assert!(direct.iter().zip(&s).all(|(a, b)| (a - b).abs() < 1e-9));
        assert!(matches!(
            Gaussian::fit_weighted(&x, &names(3), &vec![false; n], &dev, 1e-2),
            Err(TrainError::SingleClass { .. })
        ));
    }
}
