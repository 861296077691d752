//! The fitted preprocessing pipeline, exported with the model so the gateway
//! applies exactly what training fitted.
//!
//! Input of a sample: its numeric feature vector (from `protocol::features`)
//! and the values of its categorical channels at the window's end. Output:
//! `z = (x − center) / scale` for the numeric part, followed by one 0/1
//! column per (categorical channel, category seen in training). An unseen
//! category gives all zeros for that channel.
//!
//! - **plain** standardisation: center = mean, scale = population std;
//! - **robust**: center = median, scale = MAD · 1.4826 (the std of a normal
//!   distribution), falling back to IQR / 1.349 when the MAD is 0.
//!
//! A numeric column with scale 0 is constant in training. That is normal in
//! real plants (a valve that stayed shut, a set-point nobody moved), so it
//! is kept, and any movement later is evidence: its scale is floored at
//! [`CONSTANT_SCALE_FRACTION`] of its level (1 when the level is 0), so a
//! move by 1 % of the level standardises to 1. The column is named in
//! [`Pipeline::floored`] (and the training report). A count
//! (`{channel}.repeats`) gets scale 1 instead: a channel with fine
//! resolution never repeats a value in normal operation, so its count is 0
//! in every normal window, and any repeat (a stuck sensor) is the anomaly;
//! the standardised value is the number of repeated rows beyond the normal
//! one.
//! The centre, scale and log offset are rounded to f32 when fitted: the
//! exported graph holds them as f32 (see `to_f32_exact`).
//!
//! **Log-scaled spreads** (opt-in, [`Pipeline::fit_with_log_spread`]): the
//! spread statistics (`*.std`, `*.peak_to_peak`, never negative) are first
//! replaced by `ln(x + ε_j)`, `ε_j` = 1 % of the column's training median,
//! then standardised like any column. A spread is roughly log-normal, and a
//! channel stuck at a constant has a spread of exactly 0: in linear units
//! that is only two or three standard deviations below a typical spread
//! (normal windows reach it too), in log units it is `ln(0.01)` ≈ −4.6 below
//! the median, far outside the normal range. The exported graph applies the
//! same `Log` to those columns (see `export`).
//!
//! [`Pca`] is a symmetric eigen-decomposition (nalgebra `SymmetricEigen`) of
//! the covariance of `z`, guarded: non-finite values, too few rows and an
//! all-zero covariance are typed errors.

use nalgebra::{DMatrix, DVector, SymmetricEigen};
use serde::{Deserialize, Serialize};

use super::TrainError;
use super::threshold::quantile;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scaling {
    #[default]
    Plain,
    Robust,
}

/// One-hot encoding of one categorical channel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OneHot {
    pub channel: String,
    /// Categories seen in training, sorted; one output column each.
    pub categories: Vec<String>,
}

/// The fitted pipeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pipeline {
    pub scaling: Scaling,
    /// Names of the numeric input columns.
    pub names: Vec<String>,
    pub center: Vec<f64>,
    pub scale: Vec<f64>,
    pub one_hot: Vec<OneHot>,
    /// Per numeric column: `Some(ε)` when the column is log-scaled as
    /// `ln(max(x, 0) + ε)` before standardisation; empty when none is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_offset: Vec<Option<f64>>,
    /// Numeric columns that were constant in training and got the floored
    /// scale (see the module docs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub floored: Vec<String>,
}

/// The scale of a column that was constant in training, as a fraction of
/// its level (see the module docs).
pub const CONSTANT_SCALE_FRACTION: f64 = 0.01;

/// `v` rounded to the nearest f32, as f64. The fitted centre, scale and log
/// offset are carried by the exported graph as f32; fitting them at f32
/// precision makes the graph and the reference use the same numbers. (A
/// centre of 40.031 ± 0.3 rounded only in the graph moved every standardised
/// value by ~1e-6, and the score by more than the export check allows.)
fn to_f32_exact(v: f64) -> f64 {
    f64::from(v as f32)
}

/// Whether a feature column is a count (`*.repeats`): its resolution is one,
/// so constant in training it is standardised with scale 1 instead of being
/// refused (see the module docs).
pub fn is_count(name: &str) -> bool {
    name.ends_with(".repeats")
}

/// Whether a feature column is a spread statistic (never negative).
pub fn is_spread(name: &str) -> bool {
    name.ends_with(".std") || name.ends_with(".peak_to_peak")
}

/// Fraction of a spread column's training median added before the log.
pub const LOG_SPREAD_OFFSET: f64 = 0.01;

fn apply_log(x: &DMatrix<f64>, offsets: &[Option<f64>]) -> DMatrix<f64> {
    let mut y = x.clone();
    for (j, off) in offsets.iter().enumerate() {
        if let Some(e) = off {
            for v in y.column_mut(j).iter_mut() {
                *v = (v.max(0.0) + e).ln();
            }
        }
    }
    y
}

impl Pipeline {
    /// Fits on `x` (rows are samples) and the categorical columns
    /// `categorical[c][row]` named `cat_names[c]`.
    pub fn fit(
        x: &DMatrix<f64>,
        names: &[String],
        categorical: &[Vec<String>],
        cat_names: &[String],
        scaling: Scaling,
    ) -> Result<Self, TrainError> {
        Self::fit_inner(x, names, categorical, cat_names, scaling, false)
    }

    /// [`fit`](Self::fit) with the spread statistics log-scaled (see the
    /// module docs).
    pub fn fit_with_log_spread(
        x: &DMatrix<f64>,
        names: &[String],
        categorical: &[Vec<String>],
        cat_names: &[String],
        scaling: Scaling,
    ) -> Result<Self, TrainError> {
        Self::fit_inner(x, names, categorical, cat_names, scaling, true)
    }

    fn fit_inner(
        x: &DMatrix<f64>,
        names: &[String],
        categorical: &[Vec<String>],
        cat_names: &[String],
        scaling: Scaling,
        log_spread: bool,
    ) -> Result<Self, TrainError> {
        super::check_matrix(x, names, 2, 1, true)?;
        let log_offset: Vec<Option<f64>> = if log_spread {
            x.column_iter()
                .enumerate()
                .map(|(j, col)| {
                    let name = names.get(j).map_or("", String::as_str);
                    is_spread(name).then(|| {
                        let v: Vec<f64> = col.iter().map(|v| v.max(0.0)).collect();
                        to_f32_exact(quantile(&v, 0.5).unwrap_or(0.0) * LOG_SPREAD_OFFSET)
                            .max(f64::from(f32::MIN_POSITIVE))
                    })
                })
                .collect()
        } else {
            Vec::new()
        };
        let logged;
        let x = if log_offset.iter().any(Option::is_some) {
            logged = apply_log(x, &log_offset);
            &logged
        } else {
            x
        };
        let mut center = Vec::with_capacity(x.ncols());
        let mut scale = Vec::with_capacity(x.ncols());
        let mut floored = Vec::new();
        for (j, col) in x.column_iter().enumerate() {
            let v: Vec<f64> = col.iter().copied().collect();
            let (c, s) = match scaling {
                Scaling::Plain => {
                    let n = v.len() as f64;
                    let mean = v.iter().sum::<f64>() / n;
                    let var = v.iter().map(|a| (a - mean) * (a - mean)).sum::<f64>() / n;
                    (mean, var.sqrt())
                }
                Scaling::Robust => {
                    let med = quantile(&v, 0.5).unwrap_or(0.0);
                    let dev: Vec<f64> = v.iter().map(|a| (a - med).abs()).collect();
                    let mad = quantile(&dev, 0.5).unwrap_or(0.0) * 1.4826;
                    let s = if mad > 0.0 {
                        mad
                    } else {
                        let q1 = quantile(&v, 0.25).unwrap_or(0.0);
                        let q3 = quantile(&v, 0.75).unwrap_or(0.0);
                        (q3 - q1) / 1.349
                    };
                    (med, s)
                }
            };
            // Relative to the magnitude, a spread below 1e-12 is rounding
            // noise on a constant; one below f32's range is a constant for
            // the exported graph.
            let constant = s.is_nan() || s <= 1e-12 * c.abs().max(1e-300) || !s.is_finite();
            let name = names.get(j).map_or("", String::as_str);
            let (c, s) = if constant && is_count(name) {
                (to_f32_exact(c), 1.0)
            } else if constant {
                floored.push(name.to_owned());
                let level = CONSTANT_SCALE_FRACTION * c.abs();
                (
                    to_f32_exact(c),
                    to_f32_exact(if level > 0.0 { level } else { 1.0 }),
                )
            } else {
                (to_f32_exact(c), to_f32_exact(s))
            };
            let column = || names.get(j).cloned().unwrap_or_else(|| format!("#{j}"));
            if !(c as f32).is_finite() || !(s as f32).is_finite() {
                return Err(TrainError::OutOfF32Range {
                    name: column(),
                    value: if (c as f32).is_finite() { s } else { c },
                });
            }
            if !(s as f32).is_normal() {
                return Err(TrainError::ConstantColumn {
                    name: column(),
                    value: c,
                });
            }
            center.push(c);
            scale.push(s);
        }
        let one_hot = categorical
            .iter()
            .zip(cat_names)
            .map(|(values, name)| {
                let mut cats: Vec<String> = values.to_vec();
                cats.sort();
                cats.dedup();
                OneHot {
                    channel: name.clone(),
                    categories: cats,
                }
            })
            .collect();
        Ok(Pipeline {
            scaling,
            names: names.to_vec(),
            center,
            scale,
            one_hot,
            log_offset,
            floored,
        })
    }

    /// Width of the output.
    pub fn output_len(&self) -> usize {
        self.center.len()
            + self
                .one_hot
                .iter()
                .map(|o| o.categories.len())
                .sum::<usize>()
    }

    /// Names of the output columns.
    pub fn output_names(&self) -> Vec<String> {
        let mut out = self.names.clone();
        for o in &self.one_hot {
            for c in &o.categories {
                out.push(format!("{}={}", o.channel, c));
            }
        }
        out
    }

    /// Applies the pipeline. `categorical[c][row]` as in [`fit`](Self::fit).
    pub fn transform(
        &self,
        x: &DMatrix<f64>,
        categorical: &[Vec<String>],
    ) -> Result<DMatrix<f64>, TrainError> {
        if x.ncols() != self.center.len() {
            return Err(TrainError::Shape {
                expected: self.center.len(),
                got: x.ncols(),
            });
        }
        if categorical.len() != self.one_hot.len() {
            return Err(TrainError::Shape {
                expected: self.one_hot.len(),
                got: categorical.len(),
            });
        }
        let d = self.output_len();
        let logged;
        let x = if self.log_offset.iter().any(Option::is_some) {
            logged = apply_log(x, &self.log_offset);
            &logged
        } else {
            x
        };
        let mut z = DMatrix::zeros(x.nrows(), d);
        for i in 0..x.nrows() {
            for j in 0..x.ncols() {
                z[(i, j)] = (x[(i, j)] - self.center[j]) / self.scale[j];
            }
            let mut col = x.ncols();
            for (o, values) in self.one_hot.iter().zip(categorical) {
                if let Some(v) = values.get(i)
                    && let Ok(k) = o.categories.binary_search(v)
                {
                    z[(i, col + k)] = 1.0;
                }
                col += o.categories.len();
            }
        }
        Ok(z)
    }
}

/// How many principal components to keep.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Components {
    /// Exactly this many (capped at the number of positive eigenvalues).
    Fixed(usize),
    /// The fewest whose eigenvalues explain at least this fraction of the variance.
    Explained(f64),
}

/// A fitted PCA: `components` (d × k, orthonormal columns) and their
/// variances, largest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pca {
    pub mean: DVector<f64>,
    pub components: DMatrix<f64>,
    pub variances: Vec<f64>,
    /// Every eigenvalue of the covariance, largest first.
    pub eigenvalues: Vec<f64>,
}

impl Pca {
    /// Fits on `x` (rows are samples), at least 2 rows.
    pub fn fit(x: &DMatrix<f64>, names: &[String], keep: Components) -> Result<Self, TrainError> {
        super::check_matrix(x, names, 2, 2, true)?;
        let n = x.nrows();
        let d = x.ncols();
        let mean = DVector::from_iterator(d, x.column_iter().map(|c| c.mean()));
        let mut centered = x.clone();
        for mut row in centered.row_iter_mut() {
            row -= mean.transpose();
        }
        let cov = centered.transpose() * &centered / (n as f64 - 1.0);
        let eig = SymmetricEigen::try_new(cov, f64::EPSILON, 10_000)
            .ok_or_else(|| TrainError::NotConverged("symmetric eigen-decomposition".into()))?;
        let mut order: Vec<usize> = (0..d).collect();
        order.sort_by(|&a, &b| eig.eigenvalues[b].total_cmp(&eig.eigenvalues[a]));
        let eigenvalues: Vec<f64> = order.iter().map(|&i| eig.eigenvalues[i].max(0.0)).collect();
        let total: f64 = eigenvalues.iter().sum();
        let largest = eigenvalues.first().copied().unwrap_or(0.0);
        if total.is_nan() || total <= 0.0 {
            return Err(TrainError::Singular {
                rank: 0,
                columns: d,
            });
        }
        // Eigenvalues below this are numerically zero.
        let tiny = largest * 1e-10 * d as f64;
        let positive = eigenvalues.iter().filter(|&&l| l > tiny).count();
        let k = match keep {
            Components::Fixed(k) => {
                if k == 0 {
                    return Err(TrainError::Option {
                        option: "components",
                        message: "0 components".into(),
                    });
                }
                k.min(positive)
            }
            Components::Explained(f) => {
                if !(f > 0.0 && f <= 1.0) {
                    return Err(TrainError::Option {
                        option: "explained variance",
                        message: format!("{f} is not in (0, 1]"),
                    });
                }
                let mut acc = 0.0;
                let mut k = 0;
                for l in &eigenvalues[..positive] {
                    acc += l;
                    k += 1;
                    if acc >= f * total {
                        break;
                    }
                }
                k
            }
        };
        let mut components = DMatrix::zeros(d, k);
        for (c, &i) in order.iter().take(k).enumerate() {
            components.set_column(c, &eig.eigenvectors.column(i));
        }
        Ok(Pca {
            mean,
            variances: eigenvalues[..k].to_vec(),
            eigenvalues,
            components,
        })
    }

    /// Scores `t = (x − mean) · components` (n × k).
    pub fn project(&self, x: &DMatrix<f64>) -> DMatrix<f64> {
        let mut centered = x.clone();
        for mut row in centered.row_iter_mut() {
            row -= self.mean.transpose();
        }
        centered * &self.components
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_f32_values_counts_get_scale_one_and_f32_overflow_is_named() {
        let n = 50;
        let x = DMatrix::from_fn(n, 3, |i, j| match j {
            0 => 181_196.4 + 0.1 * (i % 7) as f64,
            1 => 0.0,
            _ => 1.0 + (i % 3) as f64,
        });
        let names: Vec<String> = ["p.mean", "p.repeats", "q.mean"].map(String::from).to_vec();
        let p = Pipeline::fit(&x, &names, &[], &[], Scaling::Plain).unwrap();
        for v in p.center.iter().chain(&p.scale) {
            assert_eq!(f64::from(*v as f32), *v, "{v} is not an f32 value");
        }
        assert_eq!((p.center[1], p.scale[1]), (0.0, 1.0));
        // A constant column that is not a count is kept with a scale of 1 %
        // of its level (1 at level 0), and named.
        let names: Vec<String> = ["p.mean", "p.min", "q.mean"].map(String::from).to_vec();
        let p = Pipeline::fit(&x, &names, &[], &[], Scaling::Plain).unwrap();
        assert_eq!((p.center[1], p.scale[1]), (0.0, 1.0));
        assert_eq!(p.floored, ["p.min"]);
        let mut level = x.clone();
        level.column_mut(1).fill(250.0);
        let p = Pipeline::fit(&level, &names, &[], &[], Scaling::Plain).unwrap();
        assert_eq!((p.center[1], p.scale[1]), (250.0, 2.5));
        // A move of 1 % of the level later is one standard unit.
        let moved = DMatrix::from_row_slice(1, 3, &[181_196.4, 252.5, 1.0]);
        assert_eq!(p.transform(&moved, &[]).unwrap()[(0, 1)], 1.0);
        let mut big = x.clone();
        big.column_mut(1)
            .iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = 1e39 * (1.0 + i as f64));
        let err = Pipeline::fit(&big, &names, &[], &[], Scaling::Plain).unwrap_err();
        assert!(
            matches!(&err, TrainError::OutOfF32Range { name, .. } if name == "p.min"),
            "{err}"
        );
    }

    #[test]
    fn a_zero_spread_is_far_out_only_on_the_log_scale() {
        // Spreads between 0.5 and 2 (log-uniform), and a level column.
        let n = 400;
        let x = DMatrix::from_fn(n, 2, |i, j| {
            let u = (i as f64 + 0.5) / n as f64;
            if j == 0 { 10.0 + u } else { 0.5 * 4f64.powf(u) }
        });
        let names = vec!["c.mean".to_owned(), "c.std".to_owned()];
        let stuck = DMatrix::from_row_slice(1, 2, &[10.5, 0.0]);
        let plain = Pipeline::fit(&x, &names, &[], &[], Scaling::Plain).unwrap();
        assert!(plain.log_offset.is_empty());
        let z = plain.transform(&stuck, &[]).unwrap();
        assert!(z[(0, 1)] > -3.0, "linear: {}", z[(0, 1)]);
        let logged = Pipeline::fit_with_log_spread(&x, &names, &[], &[], Scaling::Plain).unwrap();
        assert_eq!(logged.log_offset[0], None);
        let eps = logged.log_offset[1].unwrap();
        assert!((eps - 0.01).abs() < 1e-3, "1 % of the median spread: {eps}");
        let z = logged.transform(&stuck, &[]).unwrap();
        assert!(z[(0, 1)] < -8.0, "log: {}", z[(0, 1)]);
        // The level column is untouched, and the JSON round-trips.
        assert!((z[(0, 0)] - plain.transform(&stuck, &[]).unwrap()[(0, 0)]).abs() < 1e-12);
        let back: Pipeline =
            serde_json::from_str(&serde_json::to_string(&logged).unwrap()).unwrap();
        assert_eq!(back, logged);
    }
}
