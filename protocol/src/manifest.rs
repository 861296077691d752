//! The model manifest: everything the gateway must know to feed an ONNX
//! anomaly model and to act on its score, written by training next to the
//! `.onnx` file (JSON) and checked before the model is loaded.
//!
//! ```json
//! {
//!   "format": 1,
//!   "name": "pump-ae",
//!   "version": 7,
//!   "family": "autoencoder",
//!   "input": {"channels": ["current", "vibration"], "window_len": 32, "hop": 8,
//!             "frame_period": "1s"},
//!   "features": {"channels": ["current", "vibration"], "stats": ["mean", "std"]},
//!   "score": {"threshold": 4.5, "threshold_rule": {"rule": "best_f1"},
//!             "smoothing": {"ewma": 0.1}, "hysteresis": {"k": 2, "n": 3}},
//!   "metadata": {"training_from": 1767225600000000000, "metrics": {"f1": 0.91}}
//! }
//! ```
//!
//! # The model's contract
//!
//! `input.channels` are the frame's columns: `features.channels`, then the
//! channels of `features.categorical` (integer codes, one-hot encoded; e.g.
//! `"categorical": [{"channel": "mode", "codes": [0, 1, 2]}]`).
//!
//! The ONNX graph has one f32 input `[batch, F]`, where `F` is the number of
//! features [`FeatureSpec`] yields for `input.window_len` rows (see
//! [`crate::features`]), and one f32 output `[batch, 1]` or `[batch]`: the
//! anomaly score, higher is more anomalous. Per device, the scores are
//! smoothed by `score.smoothing` (default none), a window is anomalous when
//! its smoothed score is above `score.threshold`, and an alert is raised when
//! `k` of the last `n` windows of a device are ([`crate::decision`]).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Timestamp;
use crate::decision::{DecisionSpec, Smoothing};
use crate::features::{
    ChannelListProblem, FeatureError, FeatureExtractor, FeatureSpec, channel_list_problems,
};

/// The manifest format this code reads and writes.
pub const MANIFEST_FORMAT: u32 = 1;
/// Longest model name, in bytes.
pub const MAX_MODEL_NAME_LEN: usize = 128;
/// Largest `n` of the hysteresis.
pub const MAX_HYSTERESIS_N: u32 = 1024;
/// Largest manifest, in bytes.
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;

/// What kind of model produced the score (informational; the gateway runs
/// every family the same way).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelFamily {
    /// PCA, Hotelling's T² and/or Q (SPE).
    Pca,
    /// Gaussian / Mahalanobis distance.
    Mahalanobis,
    /// Reconstruction error of an autoencoder.
    Autoencoder,
    /// Forecast error of an autoregressive forecaster.
    Forecaster,
    /// Probability of the anomalous class from a supervised classifier.
    Classifier,
    /// Anything else.
    Other,
}

impl fmt::Display for ModelFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ModelFamily::Pca => "pca",
            ModelFamily::Mahalanobis => "mahalanobis",
            ModelFamily::Autoencoder => "autoencoder",
            ModelFamily::Forecaster => "forecaster",
            ModelFamily::Classifier => "classifier",
            ModelFamily::Other => "other",
        };
        f.write_str(s)
    }
}

/// Which frames a model takes: the device's channels on a time grid, and
/// the windows over them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// The frame's columns, in order: `features.channels`, then the
    /// channels of `features.categorical`.
    pub channels: Vec<String>,
    /// Frames per window.
    pub window_len: usize,
    /// Frames from one window's end to the next one's.
    pub hop: usize,
    /// The frame grid's step (humantime: `"1s"`, `"100ms"`).
    #[serde(with = "humantime_duration")]
    pub frame_period: Duration,
}

/// `k` of the last `n` windows must be anomalous to raise an alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hysteresis {
    pub k: u32,
    pub n: u32,
}

impl Default for Hysteresis {
    fn default() -> Self {
        Hysteresis { k: 1, n: 1 }
    }
}

/// How a model's threshold was chosen. Informational for the gateway (it
/// applies `threshold`); stated so that people and the rollout logic know
/// what the number means. Serialised as `{"rule": "best_f1"}`,
/// `{"rule": "target_false_alarm_rate", "value": 0.01}` or
/// `{"rule": "normal_quantile", "value": 0.99}`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "rule", content = "value")]
pub enum ThresholdRule {
    /// The cut with the highest F1 on labelled validation scores.
    BestF1,
    /// The lowest cut at which at most this fraction of normal validation
    /// windows alarms.
    TargetFalseAlarmRate(f64),
    /// This quantile of the scores of normal data (no labels).
    NormalQuantile(f64),
}

/// How a score becomes a decision.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreSpec {
    /// A window is anomalous when its score is above this.
    pub threshold: f64,
    /// How `threshold` was chosen; absent in hand-written manifests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold_rule: Option<ThresholdRule>,
    /// How a device's window scores are smoothed before the threshold
    /// (default none). Gateways built before this field refuse a manifest
    /// that carries it.
    #[serde(default, skip_serializing_if = "is_no_smoothing")]
    pub smoothing: Smoothing,
    /// Default 1 of 1.
    #[serde(default)]
    pub hysteresis: Hysteresis,
}

fn is_no_smoothing(s: &Smoothing) -> bool {
    *s == Smoothing::None
}

impl ScoreSpec {
    /// The decision rule of [`crate::decision`].
    pub fn decision(&self) -> DecisionSpec {
        DecisionSpec {
            smoothing: self.smoothing,
            threshold: self.threshold,
            k: self.hysteresis.k,
            n: self.hysteresis.n,
        }
    }
}

/// Where a model came from, for people and for the rollout logic.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelMetadata {
    /// First reading time of the training data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_from: Option<Timestamp>,
    /// Last reading time of the training data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_to: Option<Timestamp>,
    /// Devices the training data came from (empty: the fleet).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    /// The version this one was trained from (fine-tuning, retraining).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_version: Option<u64>,
    /// Validation metrics by name (`precision`, `recall`, `f1`, `roc_auc`, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
    /// Free text.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub notes: String,
}

/// A model manifest. See the module documentation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelManifest {
    /// [`MANIFEST_FORMAT`].
    pub format: u32,
    /// The model's name (one lineage of versions).
    pub name: String,
    /// Increases with every release of `name` (anti-rollback compares it).
    pub version: u64,
    pub family: ModelFamily,
    pub input: InputSpec,
    pub features: FeatureSpec,
    pub score: ScoreSpec,
    #[serde(default)]
    pub metadata: ModelMetadata,
}

/// One thing wrong with a manifest.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ManifestProblem {
    #[error("`format` is {got}, this build reads {supported}")]
    UnsupportedFormat { got: u32, supported: u32 },
    #[error("`name` is empty")]
    EmptyName,
    #[error("`name` is {len} bytes long, limit is {limit}")]
    NameTooLong { len: usize, limit: usize },
    #[error("`input.{0}`")]
    InputChannels(ChannelListProblem),
    #[error("`input.window_len` is {0}, at least 2 frames are needed")]
    WindowTooShort(usize),
    #[error("`input.hop` is 0")]
    ZeroHop,
    #[error("`input.frame_period` is zero")]
    ZeroPeriod,
    #[error(
        "`input.channels` is not `features.channels` followed by the `features.categorical` channels"
    )]
    ChannelsDiffer,
    #[error("`features`: {0}")]
    Features(FeatureError),
    #[error("`score.threshold` is not finite ({0})")]
    Threshold(f64),
    #[error("`score.smoothing`: the EWMA weight must be in (0, 1], got {0}")]
    Smoothing(f64),
    #[error("`score.hysteresis`: need 1 ≤ k ≤ n ≤ {limit}, got k = {k}, n = {n}")]
    Hysteresis { k: u32, n: u32, limit: u32 },
    #[error("`metadata.training_from` is after `metadata.training_to`")]
    TrainingRange,
    #[error("`metadata.metrics.{0}` is not finite")]
    Metric(String),
}

/// Why a manifest could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is {len} bytes, limit is {limit}")]
    TooLarge { len: usize, limit: usize },
    #[error("manifest is not valid JSON for this format: {0}")]
    Syntax(String),
    #[error("invalid manifest: {}", join(.0))]
    Invalid(Vec<ManifestProblem>),
}

fn join(problems: &[ManifestProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl ModelManifest {
    /// Parses and validates a JSON manifest.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge {
                len: bytes.len(),
                limit: MAX_MANIFEST_BYTES,
            });
        }
        let manifest: ModelManifest =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Syntax(e.to_string()))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        // A manifest is plain data with string keys: serialization cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks every rule and reports every problem at once.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ManifestError::Invalid(problems))
        }
    }

    /// The feature extractor for this manifest's features and window
    /// length (the model's input has [`FeatureExtractor::len`] columns).
    pub fn extractor(&self) -> Result<FeatureExtractor, FeatureError> {
        FeatureExtractor::new(&self.features, self.input.window_len)
    }

    /// Features per window, when the spec is valid.
    pub fn feature_count(&self) -> Result<usize, FeatureError> {
        self.extractor().map(|e| e.len())
    }

    fn problems(&self) -> Vec<ManifestProblem> {
        let mut p = Vec::new();
        if self.format != MANIFEST_FORMAT {
            p.push(ManifestProblem::UnsupportedFormat {
                got: self.format,
                supported: MANIFEST_FORMAT,
            });
        }
        if self.name.is_empty() {
            p.push(ManifestProblem::EmptyName);
        } else if self.name.len() > MAX_MODEL_NAME_LEN {
            p.push(ManifestProblem::NameTooLong {
                len: self.name.len(),
                limit: MAX_MODEL_NAME_LEN,
            });
        }
        p.extend(
            channel_list_problems(&self.input.channels)
                .into_iter()
                .map(ManifestProblem::InputChannels),
        );
        if self.input.window_len < 2 {
            p.push(ManifestProblem::WindowTooShort(self.input.window_len));
        }
        if self.input.hop == 0 {
            p.push(ManifestProblem::ZeroHop);
        }
        if self.input.frame_period.is_zero() {
            p.push(ManifestProblem::ZeroPeriod);
        }
        if self.features.window_channels() != self.input.channels {
            p.push(ManifestProblem::ChannelsDiffer);
        }
        if self.input.window_len >= 2
            && let Err(e) = self.extractor()
        {
            p.push(ManifestProblem::Features(e));
        }
        if !self.score.threshold.is_finite() {
            p.push(ManifestProblem::Threshold(self.score.threshold));
        }
        if let Smoothing::Ewma(a) = self.score.smoothing
            && !self.score.smoothing.is_valid()
        {
            p.push(ManifestProblem::Smoothing(a));
        }
        let Hysteresis { k, n } = self.score.hysteresis;
        if k == 0 || k > n || n > MAX_HYSTERESIS_N {
            p.push(ManifestProblem::Hysteresis {
                k,
                n,
                limit: MAX_HYSTERESIS_N,
            });
        }
        if let (Some(from), Some(to)) = (self.metadata.training_from, self.metadata.training_to)
            && from > to
        {
            p.push(ManifestProblem::TrainingRange);
        }
        for (name, v) in &self.metadata.metrics {
            if !v.is_finite() {
                p.push(ManifestProblem::Metric(name.clone()));
            }
        }
        p
    }
}

pub(crate) mod humantime_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::Stat;

    pub(crate) fn sample() -> ModelManifest {
        let channels: Vec<String> = vec!["current".into(), "vibration".into()];
        ModelManifest {
            format: MANIFEST_FORMAT,
            name: "pump-ae".into(),
            version: 7,
            family: ModelFamily::Autoencoder,
            input: InputSpec {
                channels: channels.clone(),
                window_len: 32,
                hop: 8,
                frame_period: Duration::from_millis(500),
            },
            features: FeatureSpec {
                baseline: None,
                channels,
                stats: vec![Stat::Mean, Stat::Std],
                bands: None,
                raw: false,
                categorical: Vec::new(),
            },
            score: ScoreSpec {
                threshold: 4.5,
                threshold_rule: Some(ThresholdRule::TargetFalseAlarmRate(0.01)),
                smoothing: Smoothing::Ewma(0.1),
                hysteresis: Hysteresis { k: 2, n: 3 },
            },
            metadata: ModelMetadata {
                training_from: Some(Timestamp(1)),
                training_to: Some(Timestamp(2)),
                metrics: [("f1".to_string(), 0.9)].into(),
                ..ModelMetadata::default()
            },
        }
    }

    #[test]
    fn a_manifest_round_trips_through_json() {
        let m = sample();
        let json = m.to_json();
        assert!(json.contains("\"frame_period\": \"500ms\""), "{json}");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            v["score"]["threshold_rule"],
            serde_json::json!({"rule": "target_false_alarm_rate", "value": 0.01})
        );
        assert_eq!(ModelManifest::from_json(json.as_bytes()).unwrap(), m);
        assert_eq!(m.feature_count().unwrap(), 4);
    }

    #[test]
    fn the_documented_example_parses() {
        let doc = r#"{
          "format": 1, "name": "pump-ae", "version": 7, "family": "autoencoder",
          "input": {"channels": ["current", "vibration"], "window_len": 32, "hop": 8,
                    "frame_period": "1s"},
          "features": {"channels": ["current", "vibration"], "stats": ["mean", "std"]},
          "score": {"threshold": 4.5, "threshold_rule": {"rule": "best_f1"},
                    "smoothing": {"ewma": 0.1}, "hysteresis": {"k": 2, "n": 3}},
          "metadata": {"training_from": 1767225600000000000, "metrics": {"f1": 0.91}}
        }"#;
        let m = ModelManifest::from_json(doc.as_bytes()).unwrap();
        assert_eq!(m.input.frame_period, Duration::from_secs(1));
        assert_eq!(m.score.smoothing, Smoothing::Ewma(0.1));
        assert_eq!(m.score.hysteresis, Hysteresis { k: 2, n: 3 });
        assert_eq!(m.score.threshold_rule, Some(ThresholdRule::BestF1));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut m = sample();
        m.format = 9;
        m.name.clear();
        m.input.hop = 0;
        m.input.frame_period = Duration::ZERO;
        m.features.channels = vec!["other".into()];
        m.score.threshold = f64::NAN;
        m.score.hysteresis = Hysteresis { k: 4, n: 3 };
        m.score.smoothing = Smoothing::Ewma(0.0);
        m.metadata.training_from = Some(Timestamp(5));
        let Err(ManifestError::Invalid(problems)) = m.validate() else {
            panic!("expected problems");
        };
        assert_eq!(problems.len(), 9, "{problems:?}");
        assert!(problems.contains(&ManifestProblem::Smoothing(0.0)));
        assert!(problems.contains(&ManifestProblem::ChannelsDiffer));
        assert!(problems.contains(&ManifestProblem::TrainingRange));
    }

    #[test]
    fn categorical_channels_follow_the_numeric_ones_in_the_input() {
        use crate::features::CategoricalSpec;
        let mut m = sample();
        m.features.categorical = vec![CategoricalSpec {
            channel: "mode".into(),
            codes: vec![0, 1, 2],
        }];
        // `input.channels` still lacks `mode`.
        assert_eq!(
            m.validate(),
            Err(ManifestError::Invalid(vec![
                ManifestProblem::ChannelsDiffer
            ]))
        );
        m.input.channels = vec!["mode".into(), "current".into(), "vibration".into()];
        assert_eq!(
            m.validate(),
            Err(ManifestError::Invalid(vec![
                ManifestProblem::ChannelsDiffer
            ]))
        );
        m.input.channels = vec!["current".into(), "vibration".into(), "mode".into()];
        m.validate().expect("valid");
        assert_eq!(m.feature_count().unwrap(), 4 + 3);
        let json = m.to_json();
        assert_eq!(ModelManifest::from_json(json.as_bytes()).unwrap(), m);
        let message = ManifestProblem::ChannelsDiffer.to_string();
        assert!(
            message.contains("followed by the `features.categorical`"),
            "{message}"
        );
        // A manifest without categorical channels has no `categorical` key.
        assert!(!sample().to_json().contains("categorical"));
    }

    #[test]
    fn unknown_fields_and_garbage_are_typed_errors() {
        let json = sample()
            .to_json()
            .replacen("\"format\"", "\"extra\": 1, \"format\"", 1);
        assert!(matches!(
            ModelManifest::from_json(json.as_bytes()),
            Err(ManifestError::Syntax(_))
        ));
        assert!(matches!(
            ModelManifest::from_json(b"\xff\x00"),
            Err(ManifestError::Syntax(_))
        ));
        let big = vec![b' '; MAX_MANIFEST_BYTES + 1];
        assert!(matches!(
            ModelManifest::from_json(&big),
            Err(ManifestError::TooLarge { .. })
        ));
    }
}
