//! One analysis worker per shard, on its own OS thread: it owns the state of
//! the devices hashed to its shard, drains its SPSC ring, builds frames and
//! windows, extracts features, scores ready windows in batches, applies
//! hysteresis and the rate limit, and hands alerts on.
//!
//! Batching: a window waits until `batch_size` windows are ready or the
//! oldest has waited `batch_latency`, then the batch is scored with one
//! inference call. Without a model, the fallback detector scores each
//! window as it is cut (its score needs no batch) and the decision path is
//! the same.
//!
//! [`Shard`] is the I/O-free core (readings in, alerts out), tested without
//! threads; [`spawn`] runs it on a thread around a ring.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use protocol::features::{BaselineState, FeatureExtractor};
use protocol::{Reading, Timestamp};
use ringbuf::HeapCons;
use ringbuf::traits::{Consumer, Observer};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::alerts::{Alert, Contribution, RateLimit};
use super::config::AnalysisConfig;
use protocol::decision::{Decider, Edge};

use super::detector::{FALLBACK_STATS, ModelSlots, Pipeline};
use super::fallback::{RobustZ, top_channels};
use super::frames::{FrameAssembler, FrameSpec};
use super::metrics::AnalysisMetrics;
use super::windows::{WindowSpec, Windower};

/// Channels named in an alert.
pub const TOP_CHANNELS: usize = 3;

struct Device {
    frames: FrameAssembler,
    windows: Windower,
    baseline: RobustZ,
    /// The model's per-device running baseline (`features.baseline`),
    /// advanced by every window the model sees; reset with the model.
    model_baseline: BaselineState,
    /// Smoothing and k-of-n state of the device's scores.
    decider: Decider,
    /// Start times of the last `n` windows decided (for the alert's span).
    starts: VecDeque<Timestamp>,
}

/// A window cut and waiting for its score.
struct Pending {
    device: String,
    start: Timestamp,
    end: Timestamp,
    /// Fallback score (also the decision without a model); `None` while the
    /// device's baseline warms up.
    z: Option<super::fallback::ZScore>,
}

/// The per-shard analysis state. See the module documentation.
pub struct Shard {
    cfg: AnalysisConfig,
    slots: Arc<ModelSlots>,
    metrics: AnalysisMetrics,
    generation: u64,
    pipeline: Pipeline,
    frame_spec: FrameSpec,
    window_spec: WindowSpec,
    fallback_x: FeatureExtractor,
    model_x: Option<FeatureExtractor>,
    devices: HashMap<String, Device>,
    pending: Vec<Pending>,
    /// Model input rows of `pending`, row-major f32.
    model_rows: Vec<f32>,
    oldest: Option<Instant>,
    rate: RateLimit,
    feature_buf: Vec<f64>,
    scores: Vec<f32>,
    shadow_scores: Vec<f32>,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("devices", &self.devices.len())
            .field("pending", &self.pending.len())
            .field("pipeline", &self.pipeline.model_name)
            .finish_non_exhaustive()
    }
}

/// Why a shard could not be set up for a pipeline.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error(transparent)]
    Analysis(#[from] super::AnalysisError),
    #[error(transparent)]
    Features(#[from] protocol::features::FeatureError),
}

struct Built {
    pipeline: Pipeline,
    frame_spec: FrameSpec,
    window_spec: WindowSpec,
    fallback_x: FeatureExtractor,
    model_x: Option<FeatureExtractor>,
}

fn build(cfg: &AnalysisConfig, slots: &ModelSlots) -> Result<Built, ShardError> {
    let active = slots.active();
    let pipeline = Pipeline::of(active.as_deref(), &cfg.fallback);
    let frame_spec = FrameSpec {
        channels: pipeline.channels.clone(),
        period: pipeline.frame_period,
        hold: cfg.hold,
        reorder: cfg.reorder,
    };
    frame_spec.validate()?;
    let window_spec = WindowSpec::frames(pipeline.window_len, pipeline.hop)?;
    let fallback_x = FeatureExtractor::new(&pipeline.fallback_features(), pipeline.window_len)?;
    let model_x = pipeline
        .model_features
        .as_ref()
        .map(|f| FeatureExtractor::new(f, pipeline.window_len))
        .transpose()?;
    Ok(Built {
        pipeline,
        frame_spec,
        window_spec,
        fallback_x,
        model_x,
    })
}

impl Shard {
    pub fn new(
        cfg: AnalysisConfig,
        slots: Arc<ModelSlots>,
        metrics: AnalysisMetrics,
    ) -> Result<Shard, ShardError> {
        let generation = slots.generation();
        let b = build(&cfg, &slots)?;
        Ok(Shard {
            rate: RateLimit::new(cfg.alerts.min_interval, cfg.max_devices_per_shard),
            generation,
            pipeline: b.pipeline,
            frame_spec: b.frame_spec,
            window_spec: b.window_spec,
            fallback_x: b.fallback_x,
            model_x: b.model_x,
            devices: HashMap::new(),
            pending: Vec::new(),
            model_rows: Vec::new(),
            oldest: None,
            feature_buf: Vec::new(),
            scores: Vec::new(),
            shadow_scores: Vec::new(),
            cfg,
            slots,
            metrics,
        })
    }

    /// Devices with state.
    pub fn devices(&self) -> usize {
        self.devices.len()
    }

    /// Windows waiting for a batch.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Picks up a swapped model: the pending batch is scored with the model
    /// it was cut for, then the new pipeline applies. Device windows are
    /// kept when the input spec is unchanged.
    fn check_swap(&mut self, now: Instant, out: &mut impl FnMut(Alert)) {
        let generation = self.slots.generation();
        if generation == self.generation {
            return;
        }
        self.flush(now, out);
        self.generation = generation;
        match build(&self.cfg, &self.slots) {
            Ok(b) => {
                let keep = b.pipeline.same_input(&self.pipeline);
                info!(
                    model = %b.pipeline.model_name,
                    version = b.pipeline.model_version,
                    windows_kept = keep,
                    "Analysis worker switched model."
                );
                if !keep {
                    self.devices.clear();
                }
                self.pipeline = b.pipeline;
                self.frame_spec = b.frame_spec;
                self.window_spec = b.window_spec;
                self.fallback_x = b.fallback_x;
                self.model_x = b.model_x;
                // A new decision rule applies to every device, from scratch:
                // another model's scores are on another scale.
                for d in self.devices.values_mut() {
                    d.decider = Decider::new(self.pipeline.decision);
                    d.starts.clear();
                    // Another model may keep another baseline (or none).
                    d.model_baseline = BaselineState::new();
                }
            }
            Err(e) => {
                error!(error = %e, "The swapped model cannot be used; keeping the old pipeline.")
            }
        }
    }

    /// Takes one reading; alerts of any batch this completes go to `out`.
    pub fn push(&mut self, reading: &Reading, now: Instant, out: &mut impl FnMut(Alert)) {
        self.check_swap(now, out);
        if !self.devices.contains_key(&reading.device) {
            if self.devices.len() >= self.cfg.max_devices_per_shard {
                self.metrics.skipped("devices", 1);
                return;
            }
            let frames = match FrameAssembler::new(&self.frame_spec) {
                Ok(f) => f,
                Err(e) => {
                    error!(error = %e, "Frame spec refused.");
                    return;
                }
            };
            let windows =
                match Windower::new(&self.frame_spec, self.window_spec, self.cfg.gap_policy) {
                    Ok(w) => w,
                    Err(e) => {
                        error!(error = %e, "Window spec refused.");
                        return;
                    }
                };
            self.devices.insert(
                reading.device.clone(),
                Device {
                    frames,
                    windows,
                    baseline: RobustZ::new(
                        self.pipeline.channels.len(),
                        FALLBACK_STATS.len(),
                        self.cfg.fallback.warmup_windows,
                    ),
                    model_baseline: BaselineState::new(),
                    decider: Decider::new(self.pipeline.decision),
                    starts: VecDeque::new(),
                },
            );
            self.metrics.devices.inc_by(1);
        }
        let Some(dev) = self.devices.get_mut(&reading.device) else {
            return;
        };
        let Device {
            frames,
            windows,
            baseline,
            model_baseline,
            ..
        } = dev;
        let mut ctx = Cut {
            fallback_x: &mut self.fallback_x,
            model_x: self.model_x.as_mut(),
            buf: &mut self.feature_buf,
            pending: &mut self.pending,
            model_rows: &mut self.model_rows,
            metrics: &self.metrics,
            device: &reading.device,
            baseline,
            model_baseline,
        };
        frames.push(reading, |frame| match windows.push(frame) {
            Ok(Some(w)) => ctx.window(&w),
            Ok(None) => {}
            Err(e) => warn!(error = %e, "Frame refused by the windower."),
        });
        if !self.pending.is_empty() && self.oldest.is_none() {
            self.oldest = Some(now);
        }
        if self.pending.len() >= self.cfg.batch_size {
            self.flush(now, out);
        }
    }

    /// Scores the pending batch if its oldest window waited `batch_latency`.
    pub fn tick(&mut self, now: Instant, out: &mut impl FnMut(Alert)) {
        self.check_swap(now, out);
        if let Some(t) = self.oldest
            && now.duration_since(t) >= self.cfg.batch_latency
        {
            self.flush(now, out);
        }
    }

    /// When the pending batch must be scored (`batch_latency` after its
    /// oldest window), if anything is pending.
    pub fn deadline(&self) -> Option<Instant> {
        self.oldest.map(|t| t + self.cfg.batch_latency)
    }

    /// Scores every pending window now and decides on each, in order.
    pub fn flush(&mut self, now: Instant, out: &mut impl FnMut(Alert)) {
        self.oldest = None;
        if self.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        let rows = std::mem::take(&mut self.model_rows);
        let active = self.slots.active();
        self.scores.clear();
        let model_ok = match (&active, self.pipeline.model_features.is_some()) {
            (Some(model), true) => {
                let started = Instant::now();
                let r = model.score_into(&rows, &mut self.scores);
                self.metrics
                    .inference_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.metrics.batch_windows.observe(pending.len() as f64);
                match r {
                    Ok(()) => {
                        self.metrics.scored("model", pending.len() as u64);
                        true
                    }
                    Err(e) => {
                        warn!(error = %e, windows = pending.len(), "Inference failed; batch not scored.");
                        self.metrics.skipped("inference", pending.len() as u64);
                        false
                    }
                }
            }
            _ => false,
        };
        if model_ok
            && let Some(shadow) = self.slots.shadow()
            && shadow.feature_count() * pending.len() == rows.len()
        {
            self.shadow_scores.clear();
            if shadow.score_into(&rows, &mut self.shadow_scores).is_ok() {
                self.metrics.scored("shadow", pending.len() as u64);
                let t = shadow.manifest().score.threshold;
                let over = self
                    .shadow_scores
                    .iter()
                    .filter(|&&s| f64::from(s) > t)
                    .count();
                self.metrics.shadow_anomalous.inc_by(over as u64);
            }
        }
        let using_model = self.pipeline.model_features.is_some();
        for (i, p) in pending.into_iter().enumerate() {
            let score = if using_model {
                if !model_ok {
                    continue;
                }
                f64::from(self.scores[i])
            } else {
                match &p.z {
                    Some(z) => {
                        self.metrics.scored("fallback", 1);
                        z.score
                    }
                    None => {
                        self.metrics.skipped("warmup", 1);
                        continue;
                    }
                }
            };
            self.decide(p, score, now, out);
        }
    }

    fn decide(&mut self, p: Pending, score: f64, now: Instant, out: &mut impl FnMut(Alert)) {
        let Some(dev) = self.devices.get_mut(&p.device) else {
            return;
        };
        let decision = dev.decider.push(score);
        if decision.anomalous {
            self.metrics.anomalous_windows.inc();
        }
        dev.starts.push_back(p.start);
        while dev.starts.len() > self.pipeline.decision.n as usize {
            dev.starts.pop_front();
        }
        if decision.edge != Edge::Raised {
            return;
        }
        if !self.rate.allow(&p.device, now) {
            self.metrics.dropped("rate_limited");
            return;
        }
        let span = dev.decider.span().max(1);
        let start = dev
            .starts
            .get(dev.starts.len().saturating_sub(span))
            .copied()
            .unwrap_or(p.start);
        let channels =
            p.z.as_ref()
                .map(|z| {
                    top_channels(&z.channels, &self.pipeline.channels, TOP_CHANNELS)
                        .into_iter()
                        .map(|(channel, z)| Contribution { channel, z })
                        .collect()
                })
                .unwrap_or_default();
        self.metrics.anomalies.inc();
        out(Alert {
            device: p.device,
            start,
            end: p.end,
            // The score the threshold was applied to (smoothed, when the
            // model's manifest says so).
            score: decision.score,
            threshold: self.pipeline.decision.threshold,
            model: self.pipeline.model_name.clone(),
            model_version: self.pipeline.model_version,
            channels,
            raised: Timestamp::now(),
        });
    }
}

/// Borrowed pieces of a shard for the window callback.
struct Cut<'a> {
    fallback_x: &'a mut FeatureExtractor,
    model_x: Option<&'a mut FeatureExtractor>,
    buf: &'a mut Vec<f64>,
    pending: &'a mut Vec<Pending>,
    model_rows: &'a mut Vec<f32>,
    metrics: &'a AnalysisMetrics,
    device: &'a str,
    baseline: &'a mut RobustZ,
    model_baseline: &'a mut BaselineState,
}

impl Cut<'_> {
    fn window(&mut self, w: &super::windows::WindowRef<'_>) {
        let Ok(window) = w.feature_window() else {
            // Gaps under `emit`: no finite features.
            self.metrics.skipped("gaps", 1);
            return;
        };
        self.buf.resize(self.fallback_x.len(), 0.0);
        if self.fallback_x.extract(&window, self.buf).is_err() {
            self.metrics.skipped("features", 1);
            return;
        }
        let z = self.baseline.observe(self.buf);
        if let Some(mx) = self.model_x.as_deref_mut() {
            self.buf.resize(mx.len(), 0.0);
            if mx
                .extract_tracked(&window, w.end(), self.model_baseline, self.buf)
                .is_err()
            {
                self.metrics.skipped("features", 1);
                return;
            }
            self.model_rows.extend(self.buf.iter().map(|&v| v as f32));
        }
        self.pending.push(Pending {
            device: self.device.to_owned(),
            start: w.start(),
            end: w.end(),
            z,
        });
    }
}

/// A running worker thread.
#[derive(Debug)]
pub struct WorkerHandle {
    pub thread: JoinHandle<()>,
}

/// Runs `shard` on a new OS thread over `ring` until `stop` is set (then
/// it scores what is pending and returns). Alerts go to `alerts` with
/// `try_send`; a full channel drops the alert (counted `queue_full`).
pub fn spawn(
    index: usize,
    mut shard: Shard,
    mut ring: HeapCons<Reading>,
    alerts: mpsc::Sender<Alert>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<WorkerHandle> {
    let thread = std::thread::Builder::new()
        .name(format!("analysis-{index}"))
        .spawn(move || {
            let metrics = shard.metrics.clone();
            let mut send = |a: Alert| {
                if alerts.try_send(a).is_err() {
                    metrics.dropped("queue_full");
                }
            };
            let idle = shard
                .cfg
                .batch_latency
                .clamp(Duration::from_millis(1), Duration::from_millis(20));
            let mut last_depth = 0i64;
            while !stop.load(Ordering::Acquire) {
                let depth = ring.occupied_len() as i64;
                shard.metrics.ring_depth.inc_by(depth - last_depth);
                last_depth = depth;
                let mut n = 0;
                while n < 4096
                    && let Some(r) = ring.try_pop()
                {
                    shard.push(&r, Instant::now(), &mut send);
                    n += 1;
                }
                let now = Instant::now();
                shard.tick(now, &mut send);
                if n == 0 {
                    // Ingest unparks us when it pushes; otherwise wake for
                    // the pending batch's deadline, or after `idle` (model
                    // swaps, the stop flag).
                    let wait = shard
                        .deadline()
                        .map_or(idle, |d| d.saturating_duration_since(now).min(idle));
                    std::thread::park_timeout(wait);
                }
            }
            // Ingest stopped before us: what is in the ring is the last of it.
            while let Some(r) = ring.try_pop() {
                shard.push(&r, Instant::now(), &mut send);
            }
            shard.metrics.ring_depth.dec_by(last_depth);
            shard.flush(Instant::now(), &mut send);
        })?;
    Ok(WorkerHandle { thread })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::config::FallbackConfig;
    use crate::analysis::windows::Span;
    use prometheus_client::registry::Registry;

    fn cfg() -> AnalysisConfig {
        AnalysisConfig {
            batch_size: 4,
            batch_latency: Duration::from_millis(10),
            hold: Duration::from_secs(1),
            reorder: Duration::ZERO,
            fallback: FallbackConfig {
                channels: vec!["a".into(), "b".into()],
                frame_period: Duration::from_secs(1),
                window_len: Span::Frames(4),
                hop: Span::Frames(4),
                warmup_windows: 13,
                threshold: 6.0,
                k: 1,
                n: 1,
            },
            ..AnalysisConfig::default()
        }
    }

    fn shard(cfg: AnalysisConfig) -> (Shard, AnalysisMetrics) {
        let metrics = AnalysisMetrics::new(&mut Registry::default());
        let slots = Arc::new(ModelSlots::new(None, None, metrics.clone()));
        (Shard::new(cfg, slots, metrics.clone()).unwrap(), metrics)
    }

    /// Channel `a` wobbles around 10, `b` around 100; `spike(t)` adds to `a`.
    fn feed(
        s: &mut Shard,
        device: &str,
        secs: std::ops::Range<i64>,
        spike: impl Fn(i64) -> f64,
    ) -> Vec<Alert> {
        let mut alerts = Vec::new();
        let now = Instant::now();
        for t in secs {
            let wobble = ((t * 7919) % 13) as f64 / 13.0 - 0.5;
            for (c, v) in [("a", 10.0 + wobble + spike(t)), ("b", 100.0 - wobble)] {
                let r = Reading::new(device, c, Timestamp(t * 1_000_000_000), v).unwrap();
                s.push(&r, now, &mut |a| alerts.push(a));
            }
        }
        s.flush(now, &mut |a| alerts.push(a));
        alerts
    }

    #[test]
    fn a_quiet_device_raises_nothing_after_warm_up() {
        let (mut s, m) = shard(cfg());
        let alerts = feed(&mut s, "pump-1", 0..400, |_| 0.0);
        assert!(alerts.is_empty(), "{alerts:?}");
        assert!(
            m.windows_scored
                .get_or_create(&crate::analysis::metrics::ScorerLabel { scorer: "fallback" })
                .get()
                > 80
        );
    }

    #[test]
    fn a_spike_after_warm_up_raises_one_alert_naming_its_channel_and_window() {
        let (mut s, m) = shard(cfg());
        let alerts = feed(&mut s, "pump-1", 0..400, |t| {
            if (200..203).contains(&t) { 50.0 } else { 0.0 }
        });
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        let a = &alerts[0];
        assert_eq!(a.device, "pump-1");
        assert_eq!(a.channels[0].channel, "a");
        let (s_ns, e_ns) = (a.start.0 / 1_000_000_000, a.end.0 / 1_000_000_000);
        assert!(s_ns <= 202 && e_ns >= 200, "{s_ns}..{e_ns}");
        assert_eq!(a.model, "fallback");
        assert_eq!(m.anomalies.get(), 1);
    }

    #[test]
    fn alerts_of_one_device_are_rate_limited() {
        let mut c = cfg();
        c.alerts.min_interval = Duration::from_secs(3600);
        let (mut s, m) = shard(c);
        let alerts = feed(&mut s, "pump-1", 0..600, |t| {
            if (200..203).contains(&t) || (400..403).contains(&t) {
                50.0
            } else {
                0.0
            }
        });
        assert_eq!(alerts.len(), 1);
        assert_eq!(
            m.alerts_dropped
                .get_or_create(&crate::analysis::metrics::ReasonLabel {
                    reason: "rate_limited"
                })
                .get(),
            1
        );
    }

    #[test]
    fn devices_past_the_limit_are_counted_and_ignored() {
        let mut c = cfg();
        c.max_devices_per_shard = 1;
        let (mut s, m) = shard(c);
        feed(&mut s, "pump-1", 0..10, |_| 0.0);
        feed(&mut s, "pump-2", 0..10, |_| 0.0);
        assert_eq!(s.devices(), 1);
        assert!(
            m.windows_skipped
                .get_or_create(&crate::analysis::metrics::ReasonLabel { reason: "devices" })
                .get()
                > 0
        );
    }
}
