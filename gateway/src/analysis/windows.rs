//! Windows: the last `len` frames of a device, every `hop` frames.
//!
//! A [`Windower`] keeps a ring of the last `len` frames (per-device state,
//! owned by one worker thread) and hands out a [`WindowRef`] — row-major
//! `[t][c]` values, oldest frame first, exactly what
//! `protocol::features::Window::try_new` takes — whenever one is due.
//!
//! # When a window is due
//!
//! Windows end on the frame grid's own schedule, not on when the gateway
//! started: a window ends at frame index `k` (frame time `k · period` since the
//! Unix epoch) when `(k + 1) mod hop == 0`, i.e. its exclusive end time is a
//! multiple of `hop · period` — and when the ring holds `len` consecutive
//! frames. So a gateway that restarts, and the cloud rebuilding windows from
//! stored readings, cut the same windows. Over consecutive frames a window is
//! due every `hop` frames once the ring is full (`hop > len` leaves frames
//! out; `hop < len` overlaps windows).
//!
//! Frames must be consecutive on the grid. A missing frame (the assembler
//! skips instants where every channel is a gap) or a frame that goes back in
//! time empties the ring: the window sequence starts over, counted in
//! [`WindowStats::restarts`].
//!
//! # Gaps
//!
//! [`GapPolicy`] says what happens to a due window that contains a gap.

use std::collections::VecDeque;
use std::time::Duration;

use protocol::Timestamp;
use protocol::features::{FeatureError, MAX_WINDOW_LEN, Window};
use serde::{Deserialize, Serialize};

use super::frames::{Frame, FrameSpec};
use super::{AnalysisError, nanos};

/// What to do with a due window that contains at least one gap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GapPolicy {
    /// Do not emit it; count it in [`WindowStats::skipped_with_gaps`]. The
    /// schedule goes on: the next window is still `hop` frames later.
    Skip,
    /// Emit it with its gap mask ([`WindowRef::gaps`]); its gap values are
    /// NaN, so only a consumer that reads the mask can use it.
    Emit,
}

/// Window length and hop, in frames. Build with [`WindowSpec::frames`] or,
/// from durations on a frame grid, [`WindowSpec::time`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WindowSpec {
    len: usize,
    hop: usize,
}

/// One thing wrong with a window spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowSpecProblem {
    #[error("`len` is {len} frames, at least {min} are needed")]
    TooShort { len: usize, min: usize },
    #[error("`len` is {len} frames, limit is {limit}")]
    TooLong { len: usize, limit: usize },
    #[error("`hop` is zero")]
    ZeroHop,
    #[error("the frame period is zero or too long")]
    InvalidPeriod,
    #[error("`{field}` ({value:?}) is not a whole number of frame periods ({period:?})")]
    NotWholeFrames {
        field: &'static str,
        value: Duration,
        period: Duration,
    },
}

/// A window length or hop as configured: a number of frames (`30`) or a
/// duration on the frame grid (`"30s"`), which must be a whole number of
/// frame periods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Span {
    Frames(usize),
    Time(Duration),
}

impl Span {
    /// Frames on a grid of `period`; `None` (with the problem pushed) when
    /// a duration is not a whole number of periods or the period is invalid.
    fn frames(
        self,
        field: &'static str,
        period: Duration,
        problems: &mut Vec<WindowSpecProblem>,
    ) -> Option<usize> {
        match self {
            Span::Frames(n) => Some(n),
            Span::Time(value) => {
                let Some(p) = nanos(period).filter(|&p| p > 0) else {
                    if !problems.contains(&WindowSpecProblem::InvalidPeriod) {
                        problems.push(WindowSpecProblem::InvalidPeriod);
                    }
                    return None;
                };
                let (n, p) = (value.as_nanos(), u128::from(p.unsigned_abs()));
                if n.is_multiple_of(p) {
                    Some(usize::try_from(n / p).unwrap_or(usize::MAX))
                } else {
                    problems.push(WindowSpecProblem::NotWholeFrames {
                        field,
                        value,
                        period,
                    });
                    None
                }
            }
        }
    }
}

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Span::Frames(n) => write!(f, "{n} frames"),
            Span::Time(d) => write!(f, "{}", humantime::format_duration(*d)),
        }
    }
}

/// `30` (frames) or `"30s"` (a duration, humantime syntax).
impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Span;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number of frames (e.g. 30) or a duration (e.g. \"30s\")")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Span, E> {
                usize::try_from(v)
                    .map(Span::Frames)
                    .map_err(|_| E::custom("number of frames too large"))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Span, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom("a number of frames cannot be negative"))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Span, E> {
                humantime::parse_duration(v)
                    .map(Span::Time)
                    .map_err(|e| E::custom(format!("`{v}` is not a duration: {e}")))
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl WindowSpec {
    /// `len` frames per window (at least 2, as feature extraction needs), a
    /// window every `hop ≥ 1` frames.
    pub fn frames(len: usize, hop: usize) -> Result<Self, AnalysisError> {
        let problems = Self::problems(len, hop);
        if problems.is_empty() {
            Ok(WindowSpec { len, hop })
        } else {
            Err(AnalysisError::WindowSpec { problems })
        }
    }

    /// A window of `len` of time every `hop`, on a grid of `period`: both
    /// must be whole multiples of `period` (no rounding: a model trained on
    /// 10 s windows gets 10 s windows or a config error). A window of `len`
    /// holds `len / period` frames, so its first and last frame times are
    /// `len − period` apart.
    pub fn time(len: Duration, hop: Duration, period: Duration) -> Result<Self, AnalysisError> {
        Self::spans(Span::Time(len), Span::Time(hop), period)
    }

    /// Length and hop each given as frames or as time on a grid of `period`
    /// (see [`WindowSpec::time`]), e.g. from config.
    pub fn spans(len: Span, hop: Span, period: Duration) -> Result<Self, AnalysisError> {
        let mut problems = Vec::new();
        let len_frames = len.frames("len", period, &mut problems);
        let hop_frames = hop.frames("hop", period, &mut problems);
        // Each known part is checked, so every problem is reported at once.
        problems.extend(Self::problems(
            len_frames.unwrap_or(2),
            hop_frames.unwrap_or(1),
        ));
        match (len_frames, hop_frames) {
            (Some(len), Some(hop)) if problems.is_empty() => Ok(WindowSpec { len, hop }),
            _ => Err(AnalysisError::WindowSpec { problems }),
        }
    }

    fn problems(len: usize, hop: usize) -> Vec<WindowSpecProblem> {
        let mut problems = Vec::new();
        if len < 2 {
            problems.push(WindowSpecProblem::TooShort { len, min: 2 });
        }
        if len > MAX_WINDOW_LEN {
            problems.push(WindowSpecProblem::TooLong {
                len,
                limit: MAX_WINDOW_LEN,
            });
        }
        if hop == 0 {
            problems.push(WindowSpecProblem::ZeroHop);
        }
        problems
    }

    /// Frames per window.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a window has at least 2 frames.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Frames from one window's end to the next one's.
    pub fn hop(&self) -> usize {
        self.hop
    }
}

/// Counters of one windower, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowStats {
    /// Frames pushed.
    pub frames: u64,
    /// Windows emitted.
    pub windows: u64,
    /// Due windows not emitted because of a gap ([`GapPolicy::Skip`]).
    pub skipped_with_gaps: u64,
    /// Times the ring was emptied because frames were not consecutive.
    pub restarts: u64,
}

/// One emitted window, borrowed from the [`Windower`] until its next push.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WindowRef<'a> {
    start: Timestamp,
    end: Timestamp,
    values: &'a [f64],
    gaps: &'a [bool],
    channels: usize,
    dt_seconds: f64,
}

impl<'a> WindowRef<'a> {
    /// Time of the first (oldest) frame.
    pub fn start(&self) -> Timestamp {
        self.start
    }

    /// Time of the last (newest) frame.
    pub fn end(&self) -> Timestamp {
        self.end
    }

    /// The values, row-major: `values()[t * channels() + c]`, oldest row
    /// first; NaN where [`gaps`](Self::gaps) is set.
    pub fn values(&self) -> &'a [f64] {
        self.values
    }

    /// The gap mask, same layout as [`values`](Self::values).
    pub fn gaps(&self) -> &'a [bool] {
        self.gaps
    }

    pub fn has_gaps(&self) -> bool {
        self.gaps.iter().any(|&g| g)
    }

    pub fn channels(&self) -> usize {
        self.channels
    }

    pub fn rows(&self) -> usize {
        self.values.len() / self.channels.max(1)
    }

    /// Seconds between two rows (the frame period).
    pub fn dt_seconds(&self) -> f64 {
        self.dt_seconds
    }

    /// The window for `protocol::features`; fails with `NotFinite` when it
    /// has gaps.
    pub fn feature_window(&self) -> Result<Window<'a>, FeatureError> {
        Window::try_new(self.values, self.channels, self.dt_seconds)
    }
}

/// Slides windows over one device's frames. See the module documentation.
#[derive(Debug)]
pub struct Windower {
    spec: WindowSpec,
    policy: GapPolicy,
    channels: usize,
    period: Duration,
    period_nanos: i128,
    dt_seconds: f64,
    /// The last `len` frames' values and gap flags, row-major, oldest first.
    values: VecDeque<f64>,
    gaps: VecDeque<bool>,
    /// Gap flags set in `gaps`.
    gap_count: usize,
    /// Grid index of the newest frame in the ring.
    last: Option<i128>,
    stats: WindowStats,
}

impl Windower {
    /// A windower for the frames of `frames` (its channels and period).
    pub fn new(
        frames: &FrameSpec,
        spec: WindowSpec,
        policy: GapPolicy,
    ) -> Result<Self, AnalysisError> {
        frames.validate()?;
        let channels = frames.channels.len();
        let period_nanos = nanos(frames.period).map(i128::from).unwrap_or(1);
        let cells = spec.len.saturating_mul(channels);
        Ok(Windower {
            spec,
            policy,
            channels,
            period: frames.period,
            period_nanos,
            dt_seconds: frames.period.as_secs_f64(),
            values: VecDeque::with_capacity(cells),
            gaps: VecDeque::with_capacity(cells),
            gap_count: 0,
            last: None,
            stats: WindowStats::default(),
        })
    }

    pub fn spec(&self) -> WindowSpec {
        self.spec
    }

    pub fn policy(&self) -> GapPolicy {
        self.policy
    }

    pub fn stats(&self) -> WindowStats {
        self.stats
    }

    /// Takes the next frame; returns the window it completes, if one is due
    /// (and, under [`GapPolicy::Skip`], has no gap). A frame of the wrong
    /// width or off the grid is refused and changes nothing.
    pub fn push(&mut self, frame: &Frame) -> Result<Option<WindowRef<'_>>, AnalysisError> {
        let got = frame.values.len();
        if got != self.channels || frame.gaps.len() != self.channels {
            return Err(AnalysisError::ChannelMismatch {
                expected: self.channels,
                got: if got == self.channels {
                    frame.gaps.len()
                } else {
                    got
                },
            });
        }
        let ts = i128::from(frame.ts.0);
        if ts.rem_euclid(self.period_nanos) != 0 {
            return Err(AnalysisError::OffGrid {
                ts_nanos: frame.ts.0,
                period: self.period,
            });
        }
        let k = ts.div_euclid(self.period_nanos);
        if let Some(last) = self.last
            && k != last + 1
        {
            self.values.clear();
            self.gaps.clear();
            self.gap_count = 0;
            self.stats.restarts += 1;
        }
        self.last = Some(k);
        self.stats.frames += 1;

        self.values.extend(&frame.values);
        self.gaps.extend(&frame.gaps);
        self.gap_count += frame.gaps.iter().filter(|&&g| g).count();
        let cells = self.spec.len * self.channels;
        while self.values.len() > cells {
            self.values.pop_front();
            if self.gaps.pop_front() == Some(true) {
                self.gap_count = self.gap_count.saturating_sub(1);
            }
        }

        let hop = self.spec.hop as i128;
        if self.values.len() < cells || (k + 1).rem_euclid(hop) != 0 {
            return Ok(None);
        }
        if self.gap_count > 0 && self.policy == GapPolicy::Skip {
            self.stats.skipped_with_gaps += 1;
            return Ok(None);
        }
        self.stats.windows += 1;
        let span = (self.spec.len as i128 - 1) * self.period_nanos;
        // The window lies between frames already pushed, so its start fits.
        let start = i64::try_from(ts - span).unwrap_or(i64::MIN);
        Ok(Some(WindowRef {
            start: Timestamp(start),
            end: frame.ts,
            values: self.values.make_contiguous(),
            gaps: self.gaps.make_contiguous(),
            channels: self.channels,
            dt_seconds: self.dt_seconds,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::frames::FrameAssembler;
    use protocol::features::{FeatureExtractor, FeatureSpec, Stat};

    const SECOND: i64 = 1_000_000_000;

    fn frame_spec(channels: &[&str]) -> FrameSpec {
        FrameSpec {
            channels: channels.iter().map(|c| c.to_string()).collect(),
            period: Duration::from_secs(1),
            hold: Duration::from_secs(1),
            reorder: Duration::ZERO,
        }
    }

    /// A two-channel frame at grid index `k` (1 s period): `[k, 10k]`.
    fn frame(k: i64) -> Frame {
        Frame {
            ts: Timestamp(k * SECOND),
            values: vec![k as f64, 10.0 * k as f64],
            gaps: vec![false, false],
        }
    }

    fn gap_frame(k: i64) -> Frame {
        Frame {
            values: vec![f64::NAN, 10.0 * k as f64],
            gaps: vec![true, false],
            ..frame(k)
        }
    }

    /// (start s, end s, values) of every window.
    fn run(windower: &mut Windower, frames: &[Frame]) -> Vec<(i64, i64, Vec<f64>)> {
        let mut out = Vec::new();
        for f in frames {
            if let Some(w) = windower.push(f).unwrap() {
                out.push((
                    w.start().as_nanos() / SECOND,
                    w.end().as_nanos() / SECOND,
                    w.values().to_vec(),
                ));
            }
        }
        out
    }

    fn windower(len: usize, hop: usize, policy: GapPolicy) -> Windower {
        let spec = WindowSpec::frames(len, hop).unwrap();
        Windower::new(&frame_spec(&["a", "b"]), spec, policy).unwrap()
    }

    #[test]
    fn len_4_hop_2_over_10_frames_gives_4_windows_with_the_right_first_and_last_frame_times() {
        let mut w = windower(4, 2, GapPolicy::Skip);
        let frames: Vec<Frame> = (0..10).map(frame).collect();
        let windows = run(&mut w, &frames);
        let spans: Vec<(i64, i64)> = windows.iter().map(|w| (w.0, w.1)).collect();
        assert_eq!(spans, [(0, 3), (2, 5), (4, 7), (6, 9)]);
        // Row-major [t][c], oldest row first.
        assert_eq!(windows[0].2, [0.0, 0.0, 1.0, 10.0, 2.0, 20.0, 3.0, 30.0]);
        assert_eq!(w.stats().windows, 4);
        assert_eq!(w.stats().frames, 10);
    }

    #[test]
    fn windows_end_on_the_grid_schedule_not_on_the_first_frame_seen() {
        let mut w = windower(4, 2, GapPolicy::Skip);
        let frames: Vec<Frame> = (1..10).map(frame).collect();
        let spans: Vec<(i64, i64)> = run(&mut w, &frames).iter().map(|w| (w.0, w.1)).collect();
        // Full at frame 4, but windows end where (k + 1) is a multiple of 2.
        assert_eq!(spans, [(2, 5), (4, 7), (6, 9)]);
    }

    #[test]
    fn a_hop_longer_than_the_window_leaves_frames_out() {
        let mut w = windower(2, 5, GapPolicy::Skip);
        let frames: Vec<Frame> = (0..15).map(frame).collect();
        let spans: Vec<(i64, i64)> = run(&mut w, &frames).iter().map(|w| (w.0, w.1)).collect();
        assert_eq!(spans, [(3, 4), (8, 9), (13, 14)]);
    }

    #[test]
    fn a_time_based_spec_converts_to_whole_frames_on_the_grid() {
        let spec = WindowSpec::time(
            Duration::from_secs(2),
            Duration::from_millis(500),
            Duration::from_millis(100),
        )
        .unwrap();
        assert_eq!((spec.len(), spec.hop()), (20, 5));

        let mut w = Windower::new(
            &frame_spec(&["a", "b"]),
            WindowSpec::time(
                Duration::from_secs(4),
                Duration::from_secs(2),
                Duration::from_secs(1),
            )
            .unwrap(),
            GapPolicy::Skip,
        )
        .unwrap();
        let frames: Vec<Frame> = (0..10).map(frame).collect();
        assert_eq!(run(&mut w, &frames).len(), 4, "same as len 4 hop 2 at 1 s");

        let Err(AnalysisError::WindowSpec { problems }) = WindowSpec::time(
            Duration::from_millis(250),
            Duration::from_millis(150),
            Duration::from_millis(100),
        ) else {
            panic!("expected an invalid spec");
        };
        assert_eq!(
            problems,
            [
                WindowSpecProblem::NotWholeFrames {
                    field: "len",
                    value: Duration::from_millis(250),
                    period: Duration::from_millis(100),
                },
                WindowSpecProblem::NotWholeFrames {
                    field: "hop",
                    value: Duration::from_millis(150),
                    period: Duration::from_millis(100),
                },
            ]
        );
        assert!(matches!(
            WindowSpec::time(Duration::from_secs(1), Duration::ZERO, Duration::from_secs(1)),
            Err(AnalysisError::WindowSpec { problems })
                if problems == [
                    WindowSpecProblem::TooShort { len: 1, min: 2 },
                    WindowSpecProblem::ZeroHop,
                ]
        ));
        assert!(
            WindowSpec::time(
                Duration::from_secs(1),
                Duration::from_secs(1),
                Duration::ZERO
            )
            .is_err()
        );
    }

    #[test]
    fn gap_policy_skip_counts_and_drops_windows_with_a_gap() {
        let mut w = windower(4, 2, GapPolicy::Skip);
        let mut frames: Vec<Frame> = (0..10).map(frame).collect();
        frames[4] = gap_frame(4);
        let spans: Vec<(i64, i64)> = run(&mut w, &frames).iter().map(|w| (w.0, w.1)).collect();
        // (2..5) and (4..7) hold frame 4; the schedule carries on after them.
        assert_eq!(spans, [(0, 3), (6, 9)]);
        assert_eq!(w.stats().skipped_with_gaps, 2);
        assert_eq!(w.stats().windows, 2);
    }

    #[test]
    fn gap_policy_emit_hands_out_the_window_with_its_gap_mask() {
        let mut w = windower(4, 2, GapPolicy::Emit);
        let mut frames: Vec<Frame> = (0..6).map(frame).collect();
        frames[5] = gap_frame(5);
        let mut masks = Vec::new();
        for f in &frames {
            if let Some(win) = w.push(f).unwrap() {
                masks.push((win.has_gaps(), win.gaps().to_vec()));
                if win.has_gaps() {
                    assert!(win.values()[6].is_nan());
                    assert!(matches!(
                        win.feature_window(),
                        Err(FeatureError::NotFinite {
                            row: 3,
                            channel: 0,
                            ..
                        })
                    ));
                }
            }
        }
        assert_eq!(
            masks,
            [
                (false, vec![false; 8]),
                (
                    true,
                    vec![false, false, false, false, false, false, true, false]
                ),
            ]
        );
        assert_eq!(w.stats().skipped_with_gaps, 0);
    }

    #[test]
    fn a_missing_or_backward_frame_restarts_the_window_sequence() {
        let mut w = windower(4, 2, GapPolicy::Emit);
        let frames: Vec<Frame> = [0, 1, 2, 3, 5, 6, 7, 8, 9, 2, 3]
            .into_iter()
            .map(frame)
            .collect();
        let spans: Vec<(i64, i64)> = run(&mut w, &frames).iter().map(|w| (w.0, w.1)).collect();
        // Frame 4 never came: no window spans it; the ring refills from 5.
        assert_eq!(spans, [(0, 3), (6, 9)]);
        assert_eq!(w.stats().restarts, 2);
    }

    #[test]
    fn frames_of_the_wrong_width_or_off_the_grid_are_refused() {
        let mut w = windower(2, 1, GapPolicy::Emit);
        let narrow = Frame {
            values: vec![1.0],
            gaps: vec![false],
            ..frame(0)
        };
        assert_eq!(
            w.push(&narrow),
            Err(AnalysisError::ChannelMismatch {
                expected: 2,
                got: 1
            })
        );
        let off = Frame {
            ts: Timestamp(SECOND / 2),
            ..frame(0)
        };
        assert!(matches!(w.push(&off), Err(AnalysisError::OffGrid { .. })));
        assert_eq!(w.stats(), WindowStats::default());
    }

    #[test]
    fn an_emitted_window_feeds_the_shared_feature_extractor_end_to_end() {
        let frames_spec = FrameSpec {
            channels: vec!["current".into(), "temperature".into()],
            period: Duration::from_millis(100),
            hold: Duration::from_millis(500),
            reorder: Duration::from_millis(100),
        };
        let mut assembler = FrameAssembler::new(&frames_spec).unwrap();
        let mut windower = Windower::new(
            &frames_spec,
            WindowSpec::time(
                Duration::from_secs(1),
                Duration::from_millis(500),
                frames_spec.period,
            )
            .unwrap(),
            GapPolicy::Skip,
        )
        .unwrap();
        let features = FeatureSpec {
            channels: frames_spec.channels.clone(),
            stats: vec![Stat::Mean, Stat::Last, Stat::Slope],
            bands: None,
            raw: false,
            categorical: Vec::new(),
            baseline: None,
        };
        let mut extractor = FeatureExtractor::new(&features, windower.spec().len()).unwrap();
        let mut out = vec![0.0; extractor.len()];
        let mut results = Vec::new();

        // current = 2·t (t in seconds) every 100 ms; temperature = 40 every
        // 300 ms, held in between. Temperature arrives first, current late
        // by 50 ms of device time.
        for i in 0..40i64 {
            let t = i * 100;
            let mut on_frame = |f: &Frame| {
                if let Some(w) = windower.push(f).unwrap() {
                    let window = w.feature_window().unwrap();
                    extractor.extract(&window, &mut out).unwrap();
                    results.push((w.end().as_millis(), out.clone()));
                }
            };
            if i % 3 == 0 {
                assembler.push_sample(
                    "temperature",
                    Timestamp::from_millis(t),
                    40.0,
                    &mut on_frame,
                );
            }
            if i > 0 {
                let tc = t - 50;
                let value = 2.0 * (tc as f64 / 1000.0);
                assembler.push_sample("current", Timestamp::from_millis(tc), value, &mut on_frame);
            }
        }
        assert_eq!(assembler.stats().late, 0);
        assert!(results.len() >= 5, "{results:?}");
        for (end_ms, f) in &results {
            assert_eq!(end_ms % 500, 400, "windows end on the 500 ms grid");
            // Frame at T holds current from T − 50 ms: 2·(T − 0.05).
            let end = *end_ms as f64 / 1000.0;
            let mean_t = end - 0.45;
            assert!((f[0] - 2.0 * (mean_t - 0.05)).abs() < 1e-9, "mean {f:?}");
            assert!((f[1] - 2.0 * (end - 0.05)).abs() < 1e-9, "last {f:?}");
            assert!((f[2] - 2.0).abs() < 1e-9, "slope, per second {f:?}");
            assert_eq!(&f[3..], [40.0, 40.0, 0.0]);
        }
        let names = extractor.names();
        assert_eq!(names[0], "current.mean");
        assert_eq!(names[5], "temperature.slope");
    }
}
