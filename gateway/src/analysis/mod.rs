//! Edge analytics: a device's readings → time-aligned frames → windows that
//! `protocol::features` turns into model inputs → scores → alerts. Readings
//! are already durable when they get here: analysis may lag or drop (counted),
//! never block or lose the data path.
//!
//! Module map (the way a reading travels):
//! - [`config`] — `[analysis]`: shards, rings, batching, fallback, model files, alerts.
//! - [`rings`] — [`rings::Feed`]: ingest (single producer) → one SPSC `ringbuf`
//!   per shard; full ring = newest dropped and counted.
//! - [`worker`] — one OS thread per shard: frames, windows, features, batched
//!   scoring, the decision (smoothing, threshold, k-of-n: `protocol::decision`),
//!   rate limit.
//! - [`frames`] — [`FrameAssembler`]: readings of one device (any channel
//!   order, slightly out of order) → [`Frame`]s on a fixed time grid,
//!   hold-last-value within a tolerance, gaps flagged and counted.
//! - [`windows`] — [`Windower`]: frames → sliding windows of `len` frames every
//!   `hop` frames (count- or time-based), with a [`GapPolicy`]; a window is a
//!   row-major slice ready for `protocol::features::Window::try_new`.
//! - [`detector`] — the active and shadow model slots (hot swap via arc-swap) and
//!   the pipeline (channels, window, threshold) a worker follows.
//! - [`fallback`] — robust z-score per channel from a warm-up period, when no model is installed.
//! - [`alerts`] — the alert event, per-device rate limit, MQTT publishing.
//! - [`metrics`] — `outpost_gateway_analysis_*`.
//! - [`runtime`] — [`runtime::Analysis`]: start/stop the whole path (workers, alert delivery).
//! - [`report`] — `outpost-gateway models`: the configured models and live stats.

pub mod alerts;
pub mod config;
pub mod detector;
pub mod fallback;
pub mod frames;
pub mod metrics;
pub mod report;
pub mod rings;
pub mod runtime;
pub mod windows;
pub mod worker;

pub use frames::{Frame, FrameAssembler, FrameSpec, FrameSpecProblem, FrameStats};
pub use metrics::AnalysisMetrics;
pub use rings::Feed;
pub use windows::{
    GapPolicy, Span, WindowRef, WindowSpec, WindowSpecProblem, WindowStats, Windower,
};

/// Why an analysis component could not be built or could not take a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnalysisError {
    #[error("invalid frame spec: {}", join(problems))]
    FrameSpec { problems: Vec<FrameSpecProblem> },
    #[error("invalid window spec: {}", join(problems))]
    WindowSpec { problems: Vec<WindowSpecProblem> },
    #[error("frame has {got} channels, the windower expects {expected}")]
    ChannelMismatch { expected: usize, got: usize },
    #[error("frame time {ts_nanos} ns is not on the grid of {period:?}")]
    OffGrid {
        ts_nanos: i64,
        period: std::time::Duration,
    },
}

fn join<T: ToString>(problems: &[T]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A duration in nanoseconds as `i64`, or `None` when it does not fit
/// (more than ~292 years).
fn nanos(d: std::time::Duration) -> Option<i64> {
    i64::try_from(d.as_nanos()).ok()
}

/// `⌈a / b⌉` for `b > 0`.
fn ceil_div(a: i128, b: i128) -> i128 {
    -(-a).div_euclid(b)
}
