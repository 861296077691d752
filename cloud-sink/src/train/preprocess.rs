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
//! A numeric column with scale 0 is constant: [`TrainError::ConstantColumn`].
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
        super::check_matrix(x, names, 2, 1, true)?;
        let mut center = Vec::with_capacity(x.ncols());
        let mut scale = Vec::with_capacity(x.ncols());
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
            // noise on a constant.
            if s.is_nan() || s <= 1e-12 * c.abs().max(1e-300) || !s.is_finite() {
                return Err(TrainError::ConstantColumn {
                    name: names.get(j).cloned().unwrap_or_else(|| format!("#{j}")),
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
