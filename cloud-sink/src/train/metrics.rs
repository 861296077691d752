//! Metrics: confusion matrix and the rates built on it, ROC-AUC and PR-AUC
//! (ties handled), regression errors, and per-fold spread.
//!
//! Conventions (stated, because every library differs):
//! - a sample is an **alarm** when its score is **strictly greater** than the
//!   threshold; label `true` is an anomaly (positive);
//! - a rate whose denominator is zero is `None` (precision with no alarm,
//!   recall with no anomaly, ROC-AUC and PR-AUC on a single-class set), never
//!   a silent 0 — so a fold with no anomaly cannot look perfect or useless;
//! - ROC-AUC is the Mann-Whitney statistic with average ranks: a tied
//!   (positive, negative) pair counts ½;
//! - PR-AUC is average precision, `Σ (R_i − R_{i−1})·P_i` over the distinct
//!   score values from the highest down (tied scores enter together, no
//!   interpolation).

use serde::{Deserialize, Serialize};

/// Counts of a binary decision against labels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confusion {
    pub tp: u64,
    pub fp: u64,
    pub tn: u64,
    #[serde(rename = "fn")]
    pub fn_: u64,
}

impl Confusion {
    /// `predicted[i]` against `labels[i]` (pairs beyond the shorter are ignored).
    pub fn from_predictions(predicted: &[bool], labels: &[bool]) -> Self {
        let mut c = Confusion::default();
        for (&p, &l) in predicted.iter().zip(labels) {
            match (p, l) {
                (true, true) => c.tp += 1,
                (true, false) => c.fp += 1,
                (false, false) => c.tn += 1,
                (false, true) => c.fn_ += 1,
            }
        }
        c
    }

    /// Alarms are `score > threshold`.
    pub fn at_threshold(scores: &[f64], labels: &[bool], threshold: f64) -> Self {
        let predicted: Vec<bool> = scores.iter().map(|s| *s > threshold).collect();
        Self::from_predictions(&predicted, labels)
    }

    pub fn total(&self) -> u64 {
        self.tp + self.fp + self.tn + self.fn_
    }

    pub fn accuracy(&self) -> Option<f64> {
        ratio(self.tp + self.tn, self.total())
    }

    pub fn precision(&self) -> Option<f64> {
        ratio(self.tp, self.tp + self.fp)
    }

    pub fn recall(&self) -> Option<f64> {
        ratio(self.tp, self.tp + self.fn_)
    }

    /// `2·TP / (2·TP + FP + FN)`; `None` when there is neither an anomaly nor
    /// an alarm.
    pub fn f1(&self) -> Option<f64> {
        ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn_)
    }

    /// False alarms among normal samples: `FP / (FP + TN)`.
    pub fn false_alarm_rate(&self) -> Option<f64> {
        ratio(self.fp, self.fp + self.tn)
    }

    /// Missed anomalies: `FN / (FN + TP)`.
    pub fn missed_alarm_rate(&self) -> Option<f64> {
        ratio(self.fn_, self.fn_ + self.tp)
    }
}

fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

/// Every binary metric of one scored set at one threshold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BinaryMetrics {
    pub threshold: f64,
    pub confusion: Confusion,
    pub accuracy: Option<f64>,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub f1: Option<f64>,
    pub false_alarm_rate: Option<f64>,
    pub missed_alarm_rate: Option<f64>,
    pub roc_auc: Option<f64>,
    pub pr_auc: Option<f64>,
}

impl BinaryMetrics {
    pub fn compute(scores: &[f64], labels: &[bool], threshold: f64) -> Self {
        let c = Confusion::at_threshold(scores, labels, threshold);
        BinaryMetrics {
            threshold,
            confusion: c,
            accuracy: c.accuracy(),
            precision: c.precision(),
            recall: c.recall(),
            f1: c.f1(),
            false_alarm_rate: c.false_alarm_rate(),
            missed_alarm_rate: c.missed_alarm_rate(),
            roc_auc: roc_auc(scores, labels),
            pr_auc: pr_auc(scores, labels),
        }
    }

    /// The named metric, for spreads and model selection.
    pub fn get(&self, name: &str) -> Option<f64> {
        match name {
            "accuracy" => self.accuracy,
            "precision" => self.precision,
            "recall" => self.recall,
            "f1" => self.f1,
            "false_alarm_rate" => self.false_alarm_rate,
            "missed_alarm_rate" => self.missed_alarm_rate,
            "roc_auc" => self.roc_auc,
            "pr_auc" => self.pr_auc,
            _ => None,
        }
    }

    pub const NAMES: [&'static str; 8] = [
        "accuracy",
        "precision",
        "recall",
        "f1",
        "false_alarm_rate",
        "missed_alarm_rate",
        "roc_auc",
        "pr_auc",
    ];
}

/// Average ranks (1-based) of `values`, ties sharing the mean of their ranks.
fn average_ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && values[order[j + 1]] == values[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = rank;
        }
        i = j + 1;
    }
    ranks
}

/// ROC-AUC (Mann-Whitney, ties ½); `None` without both classes.
pub fn roc_auc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let n = scores.len().min(labels.len());
    let (scores, labels) = (&scores[..n], &labels[..n]);
    let pos = labels.iter().filter(|&&l| l).count();
    let neg = n - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    let ranks = average_ranks(scores);
    let rank_sum: f64 = ranks
        .iter()
        .zip(labels)
        .filter(|(_, l)| **l)
        .map(|(r, _)| r)
        .sum();
    let p = pos as f64;
    Some((rank_sum - p * (p + 1.0) / 2.0) / (p * neg as f64))
}

/// Points of a curve over distinct thresholds, highest score first:
/// `(threshold, tp, fp)` counting samples with `score >= threshold`.
pub(crate) fn cumulative(scores: &[f64], labels: &[bool]) -> Vec<(f64, u64, u64)> {
    let n = scores.len().min(labels.len());
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut out = Vec::new();
    let (mut tp, mut fp) = (0u64, 0u64);
    let mut i = 0;
    while i < n {
        let s = scores[order[i]];
        while i < n && scores[order[i]] == s {
            if labels[order[i]] {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        out.push((s, tp, fp));
    }
    out
}

/// Average precision; `None` without both classes.
pub fn pr_auc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let n = scores.len().min(labels.len());
    let pos = labels[..n].iter().filter(|&&l| l).count() as f64;
    if pos == 0.0 || pos == n as f64 {
        return None;
    }
    let mut ap = 0.0;
    let mut last_recall = 0.0;
    for (_, tp, fp) in cumulative(scores, labels) {
        let recall = tp as f64 / pos;
        let precision = tp as f64 / (tp + fp) as f64;
        ap += (recall - last_recall) * precision;
        last_recall = recall;
    }
    Some(ap)
}

/// ROC curve `(false positive rate, true positive rate)` from (0,0) to (1,1).
pub fn roc_curve(scores: &[f64], labels: &[bool]) -> Vec<(f64, f64)> {
    let n = scores.len().min(labels.len());
    let pos = labels[..n].iter().filter(|&&l| l).count() as f64;
    let neg = n as f64 - pos;
    let mut out = vec![(0.0, 0.0)];
    if pos == 0.0 || neg == 0.0 {
        return out;
    }
    for (_, tp, fp) in cumulative(scores, labels) {
        out.push((fp as f64 / neg, tp as f64 / pos));
    }
    out
}

/// Precision-recall curve `(recall, precision)`, one point per distinct score.
pub fn pr_curve(scores: &[f64], labels: &[bool]) -> Vec<(f64, f64)> {
    let n = scores.len().min(labels.len());
    let pos = labels[..n].iter().filter(|&&l| l).count() as f64;
    if pos == 0.0 {
        return Vec::new();
    }
    cumulative(scores, labels)
        .into_iter()
        .map(|(_, tp, fp)| (tp as f64 / pos, tp as f64 / (tp + fp) as f64))
        .collect()
}

/// Errors of a regression (a forecaster's predictions).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegressionMetrics {
    pub mse: f64,
    pub mae: f64,
    /// `1 − SS_res / SS_tot`; `None` when the truth is constant.
    pub r2: Option<f64>,
    pub count: usize,
}

impl RegressionMetrics {
    /// `None` for empty input.
    pub fn compute(truth: &[f64], predicted: &[f64]) -> Option<Self> {
        let n = truth.len().min(predicted.len());
        if n == 0 {
            return None;
        }
        let nf = n as f64;
        let (mut se, mut ae) = (0.0, 0.0);
        for (t, p) in truth.iter().zip(predicted) {
            se += (t - p) * (t - p);
            ae += (t - p).abs();
        }
        let mean = truth[..n].iter().sum::<f64>() / nf;
        let ss_tot: f64 = truth[..n].iter().map(|t| (t - mean) * (t - mean)).sum();
        Some(RegressionMetrics {
            mse: se / nf,
            mae: ae / nf,
            r2: (ss_tot > 0.0).then(|| 1.0 - se / ss_tot),
            count: n,
        })
    }
}

/// Mean, population standard deviation, min and max of one metric over
/// folds (folds where it is undefined are left out and counted).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub mean: Option<f64>,
    pub std: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// Folds where the metric is defined.
    pub defined: usize,
    pub folds: usize,
}

impl Spread {
    pub fn of(values: &[Option<f64>]) -> Self {
        let defined: Vec<f64> = values.iter().flatten().copied().collect();
        let n = defined.len();
        if n == 0 {
            return Spread {
                mean: None,
                std: None,
                min: None,
                max: None,
                defined: 0,
                folds: values.len(),
            };
        }
        let mean = defined.iter().sum::<f64>() / n as f64;
        let var = defined.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n as f64;
        Spread {
            mean: Some(mean),
            std: Some(var.sqrt()),
            min: defined.iter().copied().reduce(f64::min),
            max: defined.iter().copied().reduce(f64::max),
            defined: n,
            folds: values.len(),
        }
    }
}
