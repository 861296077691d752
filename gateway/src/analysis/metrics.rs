//! Prometheus metrics of the analysis path (`outpost_gateway_analysis_*`),
//! registered by [`AnalysisMetrics::new`] in the gateway's one registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Which scorer: `model`, `shadow` or `fallback`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScorerLabel {
    pub scorer: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// Cloning shares the values.
#[derive(Clone, Debug)]
pub struct AnalysisMetrics {
    /// Readings handed to the rings.
    pub ring_pushed: Counter,
    /// Readings not handed over because the shard's ring was full.
    pub ring_dropped: Counter,
    /// Readings waiting in the rings (all shards), sampled by the workers.
    pub ring_depth: Gauge,
    /// Windows scored, by scorer.
    pub windows_scored: Family<ScorerLabel, Counter>,
    /// Windows not scored, by reason (`features`, `inference`, `warmup`,
    /// `devices`).
    pub windows_skipped: Family<ReasonLabel, Counter>,
    /// Seconds per inference call (one batch).
    pub inference_seconds: Histogram,
    /// Windows per inference call.
    pub batch_windows: Histogram,
    /// Windows over the threshold.
    pub anomalous_windows: Counter,
    /// Windows the shadow model scored above its own threshold (recorded,
    /// never acted on).
    pub shadow_anomalous: Counter,
    /// Alerts raised (after hysteresis and rate limiting).
    pub anomalies: Counter,
    /// Alerts not raised or not delivered, by reason (`rate_limited`,
    /// `queue_full`, `publish_queue_full`, `outbox`).
    pub alerts_dropped: Family<ReasonLabel, Counter>,
    /// Alerts published over MQTT.
    pub alerts_published: Counter,
    /// Alerts written to the outbox.
    pub alerts_stored: Counter,
    /// Version of the active model (0: fallback detector).
    pub model_version: Gauge,
    /// Model swaps done.
    pub model_swaps: Counter,
    /// Devices with state in the workers.
    pub devices: Gauge,
}

impl AnalysisMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = AnalysisMetrics {
            ring_pushed: Counter::default(),
            ring_dropped: Counter::default(),
            ring_depth: Gauge::default(),
            windows_scored: Family::default(),
            windows_skipped: Family::default(),
            inference_seconds: Histogram::new(exponential_buckets(0.000_01, 2.0, 20)),
            batch_windows: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            anomalous_windows: Counter::default(),
            shadow_anomalous: Counter::default(),
            anomalies: Counter::default(),
            alerts_dropped: Family::default(),
            alerts_published: Counter::default(),
            alerts_stored: Counter::default(),
            model_version: Gauge::default(),
            model_swaps: Counter::default(),
            devices: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("outpost_gateway_analysis");
        r.register(
            "ring_pushed",
            "Readings handed from ingest to the analysis rings",
            m.ring_pushed.clone(),
        );
        r.register(
            "ring_dropped",
            "Readings left out of analysis because a ring was full (still stored)",
            m.ring_dropped.clone(),
        );
        r.register(
            "ring_depth",
            "Readings waiting in the analysis rings",
            m.ring_depth.clone(),
        );
        r.register(
            "windows_scored",
            "Windows scored, by scorer",
            m.windows_scored.clone(),
        );
        r.register(
            "windows_skipped",
            "Windows not scored, by reason",
            m.windows_skipped.clone(),
        );
        r.register(
            "inference_seconds",
            "Time per inference call (one batch of windows)",
            m.inference_seconds.clone(),
        );
        r.register(
            "batch_windows",
            "Windows per inference call",
            m.batch_windows.clone(),
        );
        r.register(
            "anomalous_windows",
            "Windows scored above the threshold",
            m.anomalous_windows.clone(),
        );
        r.register(
            "shadow_anomalous_windows",
            "Windows the shadow model scored above its threshold (recorded only)",
            m.shadow_anomalous.clone(),
        );
        r.register(
            "anomalies",
            "Alerts raised after hysteresis and rate limiting",
            m.anomalies.clone(),
        );
        r.register(
            "alerts_dropped",
            "Alerts suppressed or lost, by reason",
            m.alerts_dropped.clone(),
        );
        r.register(
            "alerts_published",
            "Alerts published over MQTT",
            m.alerts_published.clone(),
        );
        r.register(
            "alerts_stored",
            "Alerts written to the outbox",
            m.alerts_stored.clone(),
        );
        r.register(
            "model_version",
            "Version of the active model (0: the fallback detector)",
            m.model_version.clone(),
        );
        r.register("model_swaps", "Model hot swaps", m.model_swaps.clone());
        r.register("devices", "Devices with analysis state", m.devices.clone());
        m
    }

    pub fn dropped(&self, reason: &'static str) {
        self.alerts_dropped
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn skipped(&self, reason: &'static str, n: u64) {
        self.windows_skipped
            .get_or_create(&ReasonLabel { reason })
            .inc_by(n);
    }

    pub fn scored(&self, scorer: &'static str, n: u64) {
        self.windows_scored
            .get_or_create(&ScorerLabel { scorer })
            .inc_by(n);
    }
}
