//! The fallback detector, used when no model is installed (and, with a
//! model, to name the channels behind an alert): a robust z-score per
//! feature against a baseline learned from a device's first windows.
//!
//! Warm-up: the first `warmup` windows of a device are only collected.
//! Then, per feature `j`, `median_j` and `MAD_j` (median absolute
//! deviation) of those windows are frozen, and a window's score is
//! `max_j |x_j − median_j| / s_j` with `s_j = max(1.4826·MAD_j,
//! 1e-3·|median_j|, 1e-9)` — 1.4826·MAD estimates σ for normal data (when
//! the MAD is 0 because over half the warm-up values are equal,
//! 1.2533·mean absolute deviation stands in), and the floor keeps a feature that was constant during warm-up from dividing by
//! zero (any change of it is then a large, finite z). Median and MAD ignore
//! a few anomalous warm-up windows (up to half of them in theory).
//!
//! Features are laid out channel-major (`protocol::features`): with
//! `per_channel` statistics per channel, feature `j` belongs to channel
//! `j / per_channel`.

/// σ ≈ 1.4826 · MAD for normally distributed data.
pub const MAD_TO_SIGMA: f64 = 1.4826;
/// σ ≈ 1.2533 · mean absolute deviation (√(π/2)), used when the MAD is 0.
pub const MEAN_AD_TO_SIGMA: f64 = 1.2533;

/// Per-device baseline and scorer.
#[derive(Clone, Debug)]
pub struct RobustZ {
    warmup: usize,
    per_channel: usize,
    width: usize,
    /// Warm-up windows, row-major `[window][feature]`; freed once frozen.
    samples: Vec<f64>,
    median: Vec<f64>,
    scale: Vec<f64>,
}

/// One window's fallback verdict.
#[derive(Clone, Debug, PartialEq)]
pub struct ZScore {
    /// `max_j |z_j|`.
    pub score: f64,
    /// Per channel, the largest `|z|` of its features.
    pub channels: Vec<f64>,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

impl RobustZ {
    /// A detector for `channels × per_channel` features that warms up on
    /// `warmup ≥ 1` windows.
    pub fn new(channels: usize, per_channel: usize, warmup: usize) -> Self {
        let width = channels.max(1) * per_channel.max(1);
        let warmup = warmup.max(1);
        RobustZ {
            warmup,
            per_channel: per_channel.max(1),
            width,
            samples: Vec::with_capacity(warmup * width),
            median: Vec::new(),
            scale: Vec::new(),
        }
    }

    pub fn is_warm(&self) -> bool {
        !self.median.is_empty()
    }

    /// Windows still needed before scores come out.
    pub fn warmup_left(&self) -> usize {
        if self.is_warm() {
            0
        } else {
            self.warmup - self.samples.len() / self.width
        }
    }

    /// Takes one window's features: during warm-up it is collected and
    /// `None` comes back; afterwards its score. A vector of the wrong width
    /// or with a non-finite value is ignored (`None`).
    pub fn observe(&mut self, features: &[f64]) -> Option<ZScore> {
        if features.len() != self.width || features.iter().any(|v| !v.is_finite()) {
            return None;
        }
        if !self.is_warm() {
            self.samples.extend_from_slice(features);
            if self.samples.len() == self.warmup * self.width {
                self.freeze();
            }
            return None;
        }
        Some(self.score(features))
    }

    fn freeze(&mut self) {
        let rows = self.samples.len() / self.width;
        let mut column = Vec::with_capacity(rows);
        for j in 0..self.width {
            column.clear();
            column.extend((0..rows).map(|r| self.samples[r * self.width + j]));
            let med = median(&mut column);
            for v in column.iter_mut() {
                *v = (*v - med).abs();
            }
            let mean_ad = column.iter().sum::<f64>() / rows as f64;
            let mad = median(&mut column);
            // MAD is 0 when over half the warm-up values are equal (quantised
            // sensors, or a statistic that takes few values); the mean
            // absolute deviation still sees the rest.
            // "Equal" up to rounding: a statistic computed from equal inputs
            // in a different order differs in the last bits.
            let spread = if mad > 1e-9 * med.abs().max(1e-300) {
                MAD_TO_SIGMA * mad
            } else {
                MEAN_AD_TO_SIGMA * mean_ad
            };
            self.median.push(med);
            self.scale.push(spread.max(1e-3 * med.abs()).max(1e-9));
        }
        self.samples = Vec::new();
    }

    /// The score of a window once warm (all zeros before).
    pub fn score(&self, features: &[f64]) -> ZScore {
        let channels = self.width / self.per_channel;
        let mut per_channel = vec![0.0f64; channels];
        let mut score = 0.0f64;
        if self.is_warm() {
            for (j, &x) in features.iter().enumerate().take(self.width) {
                let z = ((x - self.median[j]) / self.scale[j]).abs();
                let c = j / self.per_channel;
                per_channel[c] = per_channel[c].max(z);
                score = score.max(z);
            }
        }
        ZScore {
            score,
            channels: per_channel,
        }
    }
}

/// The `max` channels with the largest z, largest first (ties by index).
pub fn top_channels(z: &[f64], names: &[String], max: usize) -> Vec<(String, f64)> {
    let mut idx: Vec<usize> = (0..z.len().min(names.len())).collect();
    idx.sort_by(|&a, &b| z[b].total_cmp(&z[a]).then(a.cmp(&b)));
    idx.into_iter()
        .take(max)
        .map(|i| (names[i].clone(), z[i]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_score_during_warm_up_then_the_median_and_mad_baseline() {
        // One channel, one feature: warm-up values 1..=5 → median 3, MAD 1.
        let mut d = RobustZ::new(1, 1, 5);
        for v in [1.0, 2.0, 3.0, 4.0, 5.0] {
            assert_eq!(d.observe(&[v]), None);
        }
        assert!(d.is_warm());
        let s = d.observe(&[3.0 + 2.0 * MAD_TO_SIGMA]).unwrap();
        assert!((s.score - 2.0).abs() < 1e-12, "{s:?}");
        let s = d.observe(&[3.0]).unwrap();
        assert_eq!(s.score, 0.0);
    }

    #[test]
    fn an_outlier_in_warm_up_does_not_move_the_baseline() {
        let mut d = RobustZ::new(1, 1, 5);
        for v in [10.0, 10.5, 1e9, 9.5, 10.0] {
            d.observe(&[v]);
        }
        // median 10, MAD 0.5 → σ ≈ 0.741; 12 is ~2.7 σ away.
        let s = d.observe(&[12.0]).unwrap();
        assert!((s.score - 2.0 / (0.5 * MAD_TO_SIGMA)).abs() < 1e-9, "{s:?}");
    }

    #[test]
    fn the_channel_of_the_deviating_feature_is_named_first() {
        // Two channels × two features (e.g. mean, std).
        let mut d = RobustZ::new(2, 2, 4);
        for i in 0..4 {
            let w = f64::from(i) * 0.1;
            d.observe(&[1.0 + w, 0.1 + w, 5.0 - w, 0.2 + w]);
        }
        let s = d.observe(&[1.1, 0.2, 5.0, 9.0]).unwrap();
        assert!(s.channels[1] > 10.0 * s.channels[0].max(1.0), "{s:?}");
        let names = vec!["current".to_string(), "vibration".to_string()];
        let top = top_channels(&s.channels, &names, 1);
        assert_eq!(top[0].0, "vibration");
    }

    #[test]
    fn a_constant_warm_up_gives_finite_scores() {
        let mut d = RobustZ::new(1, 1, 3);
        for _ in 0..3 {
            d.observe(&[0.0]);
        }
        let s = d.observe(&[1.0]).unwrap();
        assert!(s.score.is_finite() && s.score > 1e6);
        assert_eq!(d.observe(&[f64::NAN]), None);
        assert_eq!(d.observe(&[1.0, 2.0]), None);
    }
}
