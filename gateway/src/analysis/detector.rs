//! The scorers the workers use: an active model and a shadow model, each
//! in an `ArcSwapOption` so a new model is loaded off the workers' threads
//! and swapped in atomically; without an active model the fallback detector
//! ([`super::fallback`]) decides.
//!
//! Hot swap keeps windows: a worker notices a new generation before its
//! next batch and keeps every device's frames and windows when the new
//! model's input (channels, frame period, window length, hop) equals the
//! old one's; only a different input spec starts the devices' windows over.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use outpost_models::{Model, ModelError};
use protocol::decision::{DecisionSpec, Smoothing};
use protocol::features::{FeatureSpec, Stat};

use super::config::{FallbackConfig, ModelFiles};
use super::metrics::AnalysisMetrics;

/// The statistics the fallback detector (and the alert's channel
/// attribution) computes per channel.
pub const FALLBACK_STATS: [Stat; 2] = [Stat::Mean, Stat::Std];

/// The active and shadow model slots, shared by every worker.
#[derive(Debug)]
pub struct ModelSlots {
    active: ArcSwapOption<Model>,
    shadow: ArcSwapOption<Model>,
    generation: AtomicU64,
    metrics: AnalysisMetrics,
}

impl ModelSlots {
    pub fn new(active: Option<Model>, shadow: Option<Model>, metrics: AnalysisMetrics) -> Self {
        let version = active.as_ref().map_or(0, |m| m.manifest().version);
        metrics
            .model_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
        ModelSlots {
            active: ArcSwapOption::from(active.map(Arc::new)),
            shadow: ArcSwapOption::from(shadow.map(Arc::new)),
            generation: AtomicU64::new(0),
            metrics,
        }
    }

    /// Loads both models of a config (errors name the file).
    pub fn load(files: Option<&ModelFiles>) -> Result<Option<Model>, ModelError> {
        files
            .map(|f| Model::load_files(&f.onnx, &f.manifest))
            .transpose()
    }

    pub fn active(&self) -> Option<Arc<Model>> {
        self.active.load_full()
    }

    pub fn shadow(&self) -> Option<Arc<Model>> {
        self.shadow.load_full()
    }

    /// Bumped by every swap; workers compare it before each batch.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Replaces the active model (`None`: back to the fallback detector).
    pub fn swap_active(&self, model: Option<Model>) {
        let version = model.as_ref().map_or(0, |m| m.manifest().version);
        self.active.store(model.map(Arc::new));
        self.metrics
            .model_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
        self.metrics.model_swaps.inc();
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Replaces the shadow model.
    pub fn swap_shadow(&self, model: Option<Model>) {
        self.shadow.store(model.map(Arc::new));
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// What a worker needs to know to cut windows and decide on them, from the
/// active model's manifest or from the fallback config.
#[derive(Clone, Debug, PartialEq)]
pub struct Pipeline {
    pub channels: Vec<String>,
    pub frame_period: Duration,
    pub window_len: usize,
    pub hop: usize,
    /// Smoothing, threshold and k-of-n of every device's window scores.
    pub decision: DecisionSpec,
    /// The model's features (absent for the fallback).
    pub model_features: Option<FeatureSpec>,
    pub model_name: String,
    pub model_version: u64,
}

impl Pipeline {
    pub fn of(model: Option<&Model>, fallback: &FallbackConfig) -> Pipeline {
        match model {
            Some(m) => {
                let man = m.manifest();
                Pipeline {
                    channels: man.input.channels.clone(),
                    frame_period: man.input.frame_period,
                    window_len: man.input.window_len,
                    hop: man.input.hop,
                    decision: man.score.decision(),
                    model_features: Some(man.features.clone()),
                    model_name: man.name.clone(),
                    model_version: man.version,
                }
            }
            None => {
                // Config validation has checked the spec; an invalid one
                // (0, 0) is refused again when the shard builds its windower.
                let (window_len, hop) = fallback
                    .window_spec()
                    .map_or((0, 0), |spec| (spec.len(), spec.hop()));
                Pipeline {
                    channels: fallback.channels.clone(),
                    frame_period: fallback.frame_period,
                    window_len,
                    hop,
                    decision: DecisionSpec {
                        smoothing: Smoothing::None,
                        threshold: fallback.threshold,
                        k: fallback.k,
                        n: fallback.n,
                    },
                    model_features: None,
                    model_name: "fallback".into(),
                    model_version: 0,
                }
            }
        }
    }

    /// Whether device windows cut for `self` are valid for `other`.
    pub fn same_input(&self, other: &Pipeline) -> bool {
        self.channels == other.channels
            && self.frame_period == other.frame_period
            && self.window_len == other.window_len
            && self.hop == other.hop
    }

    /// The fallback / attribution features: [`FALLBACK_STATS`] per channel.
    pub fn fallback_features(&self) -> FeatureSpec {
        FeatureSpec {
            channels: self.channels.clone(),
            stats: FALLBACK_STATS.to_vec(),
            bands: None,
            raw: false,
            categorical: Vec::new(),
            baseline: None,
        }
    }
}
