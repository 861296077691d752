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
use super::metrics;

/// The rule is part of the model manifest (`score.threshold_rule`), so it is
/// the protocol's type.
pub use protocol::manifest::ThresholdRule;

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

/// The best-F1 cut in one pass over the distinct scores from the highest
/// down ([`metrics::cumulative`]): at each distinct score `s` the counts are
/// those of "alarm on every score ≥ s", and the cut lies halfway to the next
/// lower distinct score (below the lowest: just under it). The first cut with
/// the highest F1 wins, i.e. the highest such cut. O(n log n).
fn best_f1_cut(scores: &[f64], labels: &[bool]) -> f64 {
    let n = scores.len().min(labels.len());
    let pos = labels[..n].iter().filter(|&&l| l).count() as u64;
    let points = metrics::cumulative(scores, labels);
    let mut best = (f64::NEG_INFINITY, 0.0);
    for (i, &(s, tp, fp)) in points.iter().enumerate() {
        let cut = match points.get(i + 1) {
            Some(&(next, _, _)) => next + (s - next) / 2.0,
            None => s - s.abs().max(1.0) * 1e-3,
        };
        let den = 2 * tp + fp + (pos - tp);
        let f1 = if den == 0 {
            0.0
        } else {
            (2 * tp) as f64 / den as f64
        };
        if f1 > best.0 {
            best = (f1, cut);
        }
    }
    best.1
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
            best_f1_cut(scores, labels)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::metrics::Confusion;

    /// The definition: every halfway cut, F1 by a full confusion count each.
    fn brute_force(scores: &[f64], labels: &[bool]) -> f64 {
        let mut d = scores.to_vec();
        d.sort_by(|a, b| b.total_cmp(a));
        d.dedup();
        let mut best = (f64::NEG_INFINITY, 0.0);
        for (i, s) in d.iter().enumerate() {
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

    #[test]
    fn the_one_pass_best_f1_cut_is_the_brute_force_one() {
        // A small LCG: ties (scores on a coarse grid) and both classes.
        let mut x = 12_345u64;
        let mut next = || {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (x >> 33) as f64 / (1u64 << 31) as f64
        };
        for round in 0..50 {
            let n = 20 + round * 7;
            let labels: Vec<bool> = (0..n).map(|_| next() < 0.2).collect();
            let scores: Vec<f64> = labels
                .iter()
                .map(|&l| ((next() + if l { 0.5 } else { 0.0 }) * 20.0).round() / 20.0)
                .collect();
            if !labels.iter().any(|&l| l) || labels.iter().all(|&l| l) {
                continue;
            }
            let got = choose(ThresholdRule::BestF1, &scores, Some(&labels))
                .unwrap()
                .value;
            assert_eq!(got, brute_force(&scores, &labels), "round {round}");
        }
    }
}
