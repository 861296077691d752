//! Alarm thresholds. An alarm is `score > threshold` (see [`super::metrics`]).
//!
//! - [`ThresholdRule::BestF1`]: on labelled validation scores, the cut with
//!   the highest F1; cuts lie halfway between consecutive distinct scores, so
//!   a score that differs by rounding (e.g. after ONNX export) does not flip.
//! - [`ThresholdRule::TargetFalseAlarmRate`]: the lowest cut at which at most
//!   that fraction of the normal validation scores alarms.
//! - [`ThresholdRule::NormalQuantile`]: a quantile (linear interpolation) of
//!   the scores of normal data — the rule when there are no labels.

use serde::{Deserialize, Serialize};

use super::TrainError;
use super::metrics::Confusion;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "rule", content = "value")]
pub enum ThresholdRule {
    BestF1,
    TargetFalseAlarmRate(f64),
    NormalQuantile(f64),
}

/// A chosen threshold and how it was chosen (stated in the manifest).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Threshold {
    pub value: f64,
    pub rule: ThresholdRule,
}

/// Linear-interpolation quantile of unsorted finite values, `q` in [0, 1].
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let pos = q * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    Some(v[lo] + (v[hi] - v[lo]) * (pos - lo as f64))
}

fn distinct_desc(scores: &[f64]) -> Vec<f64> {
    let mut v = scores.to_vec();
    v.sort_by(|a, b| b.total_cmp(a));
    v.dedup();
    v
}

/// Chooses a threshold by `rule`. `labels` is required by `BestF1` and, when
/// given, restricts the other rules to the normal (`false`) samples.
pub fn choose(
    rule: ThresholdRule,
    scores: &[f64],
    labels: Option<&[bool]>,
) -> Result<Threshold, TrainError> {
    if let Some(bad) = scores.iter().find(|s| !s.is_finite()) {
        return Err(TrainError::NotFinite {
            row: scores
                .iter()
                .position(|s| s.to_bits() == bad.to_bits())
                .unwrap_or(0),
            column: "score".into(),
            value: *bad,
        });
    }
    let normals: Vec<f64> = match labels {
        Some(l) => scores
            .iter()
            .zip(l)
            .filter(|(_, l)| !**l)
            .map(|(s, _)| *s)
            .collect(),
        None => scores.to_vec(),
    };
    let value = match rule {
        ThresholdRule::BestF1 => {
            let labels = labels.ok_or_else(|| TrainError::NeedLabels {
                what: "the best-F1 threshold",
                detail: "none were given".into(),
            })?;
            let pos = labels.iter().filter(|&&l| l).count();
            if pos == 0 || pos == labels.len() {
                return Err(TrainError::SingleClass {
                    count: labels.len(),
                    class: pos > 0,
                    what: "the best-F1 threshold",
                });
            }
            let d = distinct_desc(scores);
            let mut best = (f64::NEG_INFINITY, 0.0);
            for (i, s) in d.iter().enumerate() {
                // Alarm on every score >= s: cut halfway to the next lower one.
                let cut = match d.get(i + 1) {
                    Some(next) => next + (s - next) / 2.0,
                    None => s - s.abs().max(1.0) * 1e-3,
                };
                let f1 = Confusion::at_threshold(scores, labels, cut)
                    .f1()
                    .unwrap_or(0.0);
                if f1 > best.0 {
                    best = (f1, cut);
                }
            }
            best.1
        }
        ThresholdRule::TargetFalseAlarmRate(rate) => {
            if !(0.0..1.0).contains(&rate) {
                return Err(TrainError::Option {
                    option: "target false-alarm rate",
                    message: format!("{rate} is not in [0, 1)"),
                });
            }
            if normals.is_empty() {
                return Err(TrainError::TooFewRows { rows: 0, needed: 1 });
            }
            let mut v = normals.clone();
            v.sort_by(f64::total_cmp);
            let allowed = (rate * v.len() as f64).floor() as usize;
            v[v.len() - 1 - allowed.min(v.len() - 1)]
        }
        ThresholdRule::NormalQuantile(q) => {
            quantile(&normals, q).ok_or_else(|| TrainError::Option {
                option: "normal-score quantile",
                message: format!("{q} is not in [0, 1] or there are no normal scores"),
            })?
        }
    };
    Ok(Threshold { value, rule })
}
