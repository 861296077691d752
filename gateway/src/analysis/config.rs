//! `[analysis]`: edge analytics (rings, workers, model, fallback, alerts).
//!
//! ```toml
//! [analysis]
//! shards = 2                     # worker threads; device → hash % shards
//! ring_capacity = 65536          # readings per shard ring; full → newest dropped, counted
//! batch_size = 64                # windows scored together
//! batch_latency = "50ms"         # the oldest waiting window is scored by then
//! hold = "2s"                    # frames: hold-last-value tolerance
//! reorder = "1s"                 # frames: out-of-order tolerance
//! max_devices_per_shard = 10000
//!
//! [analysis.fallback]            # when no model is configured
//! channels = ["current", "vibration", "pressure", "temperature", "flow"]
//! frame_period = "1s"
//! window_len = 30              # frames, or a duration on the grid: "30s"
//! hop = 10                       # frames, or a duration: "10s"
//! warmup_windows = 20
//! threshold = 8.0
//! k = 2
//! n = 3
//!
//! [analysis.model]               # optional; replaces the fallback
//! onnx = "/var/lib/outpost/models/pump.onnx"
//! manifest = "/var/lib/outpost/models/pump.json"
//!
//! [analysis.alerts]
//! topic_prefix = "outpost/alerts"
//! qos = 1
//! min_interval = "60s"
//! publish_queue = 256
//! ```

use std::path::PathBuf;
use std::time::Duration;

use protocol::features::channel_list_problems;
use serde::Deserialize;

use super::windows::{GapPolicy, Span, WindowSpec, WindowSpecProblem};
use crate::config::ConfigProblem;

/// Analysis settings. See the module documentation.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalysisConfig {
    /// Worker threads (and SPSC rings); a device always goes to the same one.
    pub shards: usize,
    /// Readings each shard's ring holds. When full, the newest readings are
    /// dropped from analysis (never from storage) and counted in
    /// `outpost_gateway_analysis_ring_dropped_total`.
    pub ring_capacity: usize,
    /// Most windows scored in one inference call.
    pub batch_size: usize,
    /// Longest a ready window waits for its batch to fill.
    #[serde(with = "humantime_serde")]
    pub batch_latency: Duration,
    /// Frames: a reading counts for a frame at most this long after its time.
    #[serde(with = "humantime_serde")]
    pub hold: Duration,
    /// Frames: how far out of time order readings may arrive.
    #[serde(with = "humantime_serde")]
    pub reorder: Duration,
    /// Windows containing a gap: `skip` (default) or `emit` (only useful to
    /// a model that reads the gap mask; scored windows never contain NaN).
    pub gap_policy: GapPolicy,
    /// Devices one worker keeps state for; readings of further devices are
    /// counted and ignored.
    pub max_devices_per_shard: usize,
    /// The fallback detector (robust z-score), used when `model` is absent.
    pub fallback: FallbackConfig,
    /// The active model.
    pub model: Option<ModelFiles>,
    /// A shadow model: scored on the same windows, its scores only recorded.
    pub shadow: Option<ModelFiles>,
    /// Where alerts go.
    pub alerts: AlertsConfig,
}

impl Default for AnalysisConfig {
    fn default() -> Self {
        AnalysisConfig {
            shards: 2,
            ring_capacity: 65_536,
            batch_size: 64,
            batch_latency: Duration::from_millis(50),
            hold: Duration::from_secs(2),
            reorder: Duration::from_secs(1),
            gap_policy: GapPolicy::Skip,
            max_devices_per_shard: 10_000,
            fallback: FallbackConfig::default(),
            model: None,
            shadow: None,
            alerts: AlertsConfig::default(),
        }
    }
}

/// An ONNX file and its manifest.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ModelFiles {
    /// The ONNX model.
    pub onnx: PathBuf,
    /// Its manifest (JSON, `protocol::manifest`).
    pub manifest: PathBuf,
}

/// The robust z-score detector and the windows it looks at.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FallbackConfig {
    /// The device channels to watch, in frame order.
    pub channels: Vec<String>,
    /// The frame grid step.
    #[serde(with = "humantime_serde")]
    pub frame_period: Duration,
    /// Window length: frames (`30`) or time (`"30s"`, a whole number of
    /// `frame_period`s).
    pub window_len: Span,
    /// From one window to the next: frames (`10`) or time (`"10s"`).
    pub hop: Span,
    /// Windows per device used to learn its baseline before scoring.
    pub warmup_windows: usize,
    /// A window is anomalous when a feature's robust |z| is above this.
    pub threshold: f64,
    /// Hysteresis: `k` anomalous windows of the last `n` raise an alert.
    pub k: u32,
    /// Hysteresis window, in windows.
    pub n: u32,
}

impl Default for FallbackConfig {
    fn default() -> Self {
        FallbackConfig {
            channels: ["current", "vibration", "pressure", "temperature", "flow"]
                .map(String::from)
                .to_vec(),
            frame_period: Duration::from_secs(1),
            window_len: Span::Frames(30),
            hop: Span::Frames(10),
            warmup_windows: 20,
            threshold: 8.0,
            k: 1,
            n: 1,
        }
    }
}

impl FallbackConfig {
    /// Window length and hop in frames.
    pub fn window_spec(&self) -> Result<WindowSpec, super::AnalysisError> {
        WindowSpec::spans(self.window_len, self.hop, self.frame_period)
    }
}

/// Alert delivery.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Alerts are published to `{topic_prefix}/{device}` (when `[mqtt]` is
    /// configured).
    pub topic_prefix: String,
    /// MQTT QoS of alert messages: 0, 1 or 2.
    pub qos: u8,
    /// Per device: at most one alert per this interval; alerts inside it are
    /// counted as suppressed.
    #[serde(with = "humantime_serde")]
    pub min_interval: Duration,
    /// Alerts waiting for the MQTT connection; past it the oldest is dropped
    /// (counted).
    pub publish_queue: usize,
    /// Publish alerts over MQTT at all.
    pub mqtt: bool,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            topic_prefix: "outpost/alerts".into(),
            qos: 1,
            min_interval: Duration::from_secs(60),
            publish_queue: 256,
            mqtt: true,
        }
    }
}

impl AnalysisConfig {
    /// Every problem, each with its key under `key` (e.g. `analysis`).
    pub fn validate(&self, key: &str, problems: &mut Vec<ConfigProblem>) {
        let mut bad = |field: &str, message: String| {
            problems.push(ConfigProblem {
                key: format!("{key}.{field}"),
                message,
            })
        };
        if !(1..=64).contains(&self.shards) {
            bad("shards", "must be within 1..=64".into());
        }
        if !(16..=(1 << 24)).contains(&self.ring_capacity) {
            bad("ring_capacity", "must be within 16..=16777216".into());
        }
        if !(1..=4096).contains(&self.batch_size) {
            bad("batch_size", "must be within 1..=4096".into());
        }
        if self.batch_latency.is_zero() || self.batch_latency > Duration::from_secs(60) {
            bad("batch_latency", "must be positive and at most 60s".into());
        }
        if self.max_devices_per_shard == 0 {
            bad("max_devices_per_shard", "must be at least 1".into());
        }
        let f = &self.fallback;
        for problem in channel_list_problems(&f.channels) {
            bad("fallback.channels", problem.to_string());
        }
        if f.frame_period.is_zero() {
            bad("fallback.frame_period", "must be positive".into());
        }
        if let Err(super::AnalysisError::WindowSpec { problems: window }) = f.window_spec() {
            for problem in window {
                let field = match problem {
                    WindowSpecProblem::ZeroHop
                    | WindowSpecProblem::NotWholeFrames { field: "hop", .. } => "fallback.hop",
                    WindowSpecProblem::InvalidPeriod => "fallback.frame_period",
                    _ => "fallback.window_len",
                };
                if field != "fallback.frame_period" || !f.frame_period.is_zero() {
                    bad(field, problem.to_string());
                }
            }
        }
        if !(1..=100_000).contains(&f.warmup_windows) {
            bad(
                "fallback.warmup_windows",
                "must be within 1..=100000".into(),
            );
        }
        if !f.threshold.is_finite() || f.threshold <= 0.0 {
            bad("fallback.threshold", "must be a positive number".into());
        }
        if f.k == 0 || f.k > f.n || f.n > protocol::manifest::MAX_HYSTERESIS_N {
            bad(
                "fallback.k",
                format!("need 1 ≤ k ≤ n ≤ {}", protocol::manifest::MAX_HYSTERESIS_N),
            );
        }
        for (field, files) in [("model", &self.model), ("shadow", &self.shadow)] {
            if let Some(m) = files {
                for (sub, path) in [("onnx", &m.onnx), ("manifest", &m.manifest)] {
                    if !path.is_file() {
                        bad(
                            &format!("{field}.{sub}"),
                            format!("{} is not a readable file", path.display()),
                        );
                    }
                }
            }
        }
        if self.shadow.is_some() && self.model.is_none() {
            bad("shadow", "a shadow model needs an active `model`".into());
        }
        let a = &self.alerts;
        if a.topic_prefix.is_empty()
            || a.topic_prefix.ends_with('/')
            || a.topic_prefix.contains(['+', '#'])
            || a.topic_prefix.chars().any(char::is_control)
        {
            bad(
                "alerts.topic_prefix",
                "must be a non-empty topic without wildcards or a trailing `/`".into(),
            );
        }
        if a.qos > 2 {
            bad("alerts.qos", "must be 0, 1 or 2".into());
        }
        if !(1..=65_536).contains(&a.publish_queue) {
            bad("alerts.publish_queue", "must be within 1..=65536".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        let mut p = Vec::new();
        AnalysisConfig::default().validate("analysis", &mut p);
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let text = r#"
            shards = 0
            batch_size = 0
            [fallback]
            channels = []
            hop = 0
            threshold = -1.0
            k = 3
            n = 2
            [shadow]
            onnx = "/nonexistent.onnx"
            manifest = "/nonexistent.json"
            [alerts]
            topic_prefix = "a/#"
            qos = 3
        "#;
        let cfg: AnalysisConfig = toml::from_str(text).unwrap();
        let mut p = Vec::new();
        cfg.validate("analysis", &mut p);
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        for key in [
            "analysis.shards",
            "analysis.batch_size",
            "analysis.fallback.channels",
            "analysis.fallback.hop",
            "analysis.fallback.threshold",
            "analysis.fallback.k",
            "analysis.shadow.onnx",
            "analysis.shadow.manifest",
            "analysis.shadow",
            "analysis.alerts.topic_prefix",
            "analysis.alerts.qos",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<AnalysisConfig>("shard = 2").is_err());
    }

    fn fallback(text: &str) -> (FallbackConfig, Vec<String>) {
        let cfg: AnalysisConfig = toml::from_str(text).unwrap();
        let mut p = Vec::new();
        cfg.validate("analysis", &mut p);
        let problems = p
            .iter()
            .map(|p| format!("{}: {}", p.key, p.message))
            .collect();
        (cfg.fallback, problems)
    }

    #[test]
    fn windows_can_be_given_in_frames_or_in_time_on_the_frame_grid() {
        let (f, p) =
            fallback("[fallback]\nframe_period = \"500ms\"\nwindow_len = \"30s\"\nhop = 5");
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(f.window_len, Span::Time(Duration::from_secs(30)));
        let spec = f.window_spec().unwrap();
        assert_eq!((spec.len(), spec.hop()), (60, 5));

        let (f, p) = fallback("[fallback]\nwindow_len = 20\nhop = \"1m\"");
        assert!(p.is_empty(), "{p:?}");
        let spec = f.window_spec().unwrap();
        assert_eq!((spec.len(), spec.hop()), (20, 60));
    }

    #[test]
    fn a_time_window_that_is_not_whole_frames_or_too_short_is_refused_by_key() {
        let (_, p) = fallback("[fallback]\nwindow_len = \"2500ms\"\nhop = \"0s\"");
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].starts_with("analysis.fallback.window_len: `len` (2.5s)"),
            "{p:?}"
        );
        assert!(p[1].starts_with("analysis.fallback.hop: "), "{p:?}");

        let (_, p) = fallback("[fallback]\nwindow_len = \"1s\"");
        assert_eq!(
            p,
            ["analysis.fallback.window_len: `len` is 1 frames, at least 2 are needed"]
        );

        for bad in ["window_len = -3", "window_len = \"soon\"", "hop = 1.5"] {
            let text = format!("[fallback]\n{bad}");
            let err = toml::from_str::<AnalysisConfig>(&text)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("frames") || err.contains("duration"),
                "{bad}: {err}"
            );
        }
    }
}
