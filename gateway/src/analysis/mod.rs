//! Edge analytics: a device's readings → time-aligned frames → windows that
//! `protocol::features` turns into model inputs. Everything here is plain,
//! I/O-free per-device state owned by one analysis worker thread.
//!
//! Module map:
//! - [`frames`] — [`FrameAssembler`]: readings of one device (any channel
//!   order, slightly out of order) → [`Frame`]s on a fixed time grid,
//!   hold-last-value within a tolerance, gaps flagged and counted.
//! - [`windows`] — [`Windower`]: frames → sliding windows of `len` frames every
//!   `hop` frames (count- or time-based), with a [`GapPolicy`]; a window is a
//!   row-major slice ready for `protocol::features::Window::try_new`.

pub mod frames;
pub mod windows;

pub use frames::{Frame, FrameAssembler, FrameSpec, FrameSpecProblem, FrameStats};
pub use windows::{GapPolicy, WindowRef, WindowSpec, WindowSpecProblem, WindowStats, Windower};

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
