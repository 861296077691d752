//! Frames: one device's channels aligned in time.
//!
//! A [`FrameAssembler`] takes the readings of one device and emits
//! [`Frame`]s on a fixed grid: frame times are whole multiples of
//! [`FrameSpec::period`] since the Unix epoch, so every device, every restart
//! and the cloud's training code put frames at the same instants.
//!
//! # Values and gaps
//!
//! In the frame at time `T`, channel `c` holds the **last reading of `c` at or
//! before `T`** (greatest timestamp `≤ T`), if `T − ts ≤ hold` — never an
//! average or an interpolation, so a categorical channel of a model (integer
//! codes such as an operating mode, `features.categorical` in its manifest)
//! holds a code that was read, not 0.5 between two modes. Otherwise the
//! channel is a **gap**: `gaps[c]` is `true` and `values[c]` is NaN. Gaps are
//! never filled: the NaN makes `protocol::features::Window::try_new` refuse a
//! window that contains one, so a gap cannot be fed to a model by mistake;
//! the gap mask is what a consumer reads.
//!
//! A frame in which **every** channel is a gap carries nothing and is not
//! emitted (counted in [`FrameStats::empty_frames`]); the frames around it are
//! then not consecutive, which tells the windower to start over. This is also
//! what bounds the work after a long silence or a jump of the device's clock.
//!
//! # Out-of-order readings: the reorder window
//!
//! Readings may arrive in any channel order and out of time order by up to
//! [`FrameSpec::reorder`]. The frame at `T` is **final** — emitted, never
//! revised — once a reading newer than `T + reorder` has arrived for any
//! channel of the device (the device's own clock is the watermark; the
//! gateway's clock plays no part, so replays and backlogs assemble the same).
//! A reading that arrives after the frame it belongs to is final (its
//! timestamp is at or before the last final frame time) is **late**: counted in
//! [`FrameStats::late`] and left out of analysis. It is still stored: the
//! assembler sits after the outbox and never affects durability.
//! [`FrameAssembler::flush`] finalizes everything received so far (an idle
//! device, shutdown).
//!
//! # Memory
//!
//! Per device: the last reading of each channel, plus one slot per channel
//! for each of the `⌈reorder / period⌉ + 1` frames that may still change —
//! `O(channels × reorder/period)`, fixed when the assembler is built, however
//! fast readings arrive. `reorder/period` and `hold/period` are capped
//! ([`MAX_REORDER_FRAMES`], [`MAX_HOLD_FRAMES`]), so the frames one reading
//! can finalize are bounded too.

use std::collections::HashMap;
use std::time::Duration;

use protocol::features::{ChannelListProblem, channel_list_problems};
use protocol::{Reading, Timestamp};

use super::{AnalysisError, ceil_div, nanos};

/// Most frames the reorder window may span (`⌈reorder / period⌉`).
pub const MAX_REORDER_FRAMES: usize = 4096;
/// Most frames a value may be held for (`hold / period`).
pub const MAX_HOLD_FRAMES: usize = 1 << 16;

/// How a device's readings become frames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameSpec {
    /// The frame's columns, in order (a model's input channels). Readings of
    /// other channels are ignored and counted.
    pub channels: Vec<String>,
    /// The grid step: frames fall at whole multiples of `period` since the
    /// Unix epoch.
    pub period: Duration,
    /// Hold-last-value tolerance: a reading still counts for a frame at most
    /// this long after its timestamp; older, the channel is a gap.
    pub hold: Duration,
    /// How far out of time order readings may arrive and still be used: a
    /// frame is final once a reading newer than its time plus `reorder` has
    /// arrived. Zero means in timestamp order (ties in any order).
    pub reorder: Duration,
}

/// One thing wrong with a [`FrameSpec`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameSpecProblem {
    #[error(transparent)]
    Channels(#[from] ChannelListProblem),
    #[error("`period` is zero")]
    ZeroPeriod,
    #[error("`{field}` is {value:?}, too long to count in nanoseconds")]
    DurationTooLong {
        field: &'static str,
        value: Duration,
    },
    #[error("`reorder` spans {frames} frames of `period`, limit is {limit}")]
    ReorderTooLong { frames: u128, limit: usize },
    #[error("`hold` spans {frames} frames of `period`, limit is {limit}")]
    HoldTooLong { frames: u128, limit: usize },
}

impl FrameSpec {
    /// Checks the spec and reports every problem at once.
    pub fn validate(&self) -> Result<(), AnalysisError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(AnalysisError::FrameSpec { problems })
        }
    }

    fn problems(&self) -> Vec<FrameSpecProblem> {
        let mut problems: Vec<FrameSpecProblem> = channel_list_problems(&self.channels)
            .into_iter()
            .map(FrameSpecProblem::from)
            .collect();
        for (field, value) in [
            ("period", self.period),
            ("hold", self.hold),
            ("reorder", self.reorder),
        ] {
            if nanos(value).is_none() {
                problems.push(FrameSpecProblem::DurationTooLong { field, value });
            }
        }
        let period = self.period.as_nanos();
        if period == 0 {
            problems.push(FrameSpecProblem::ZeroPeriod);
        } else {
            let frames = self.reorder.as_nanos().div_ceil(period);
            if frames > MAX_REORDER_FRAMES as u128 {
                problems.push(FrameSpecProblem::ReorderTooLong {
                    frames,
                    limit: MAX_REORDER_FRAMES,
                });
            }
            let frames = self.hold.as_nanos() / period;
            if frames > MAX_HOLD_FRAMES as u128 {
                problems.push(FrameSpecProblem::HoldTooLong {
                    frames,
                    limit: MAX_HOLD_FRAMES,
                });
            }
        }
        problems
    }
}

/// A device's channels at one instant of the grid.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    /// The frame time, a whole multiple of the spec's period.
    pub ts: Timestamp,
    /// One value per spec channel, in spec order; NaN where `gaps` is set.
    pub values: Vec<f64>,
    /// `gaps[c]`: channel `c` had no reading within `hold` before `ts`.
    pub gaps: Vec<bool>,
}

impl Frame {
    /// Whether any channel is a gap.
    pub fn has_gaps(&self) -> bool {
        self.gaps.iter().any(|&g| g)
    }
}

/// Counters of one assembler, for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FrameStats {
    /// Readings taken into a pending frame.
    pub accepted: u64,
    /// Readings at or before the last final frame: left out of analysis.
    pub late: u64,
    /// Readings of a channel the spec does not name: ignored.
    pub unknown_channel: u64,
    /// Readings with a non-finite value or a timestamp whose frame time is
    /// past the end of `Timestamp` (year 2262): ignored.
    pub invalid: u64,
    /// Frames emitted.
    pub frames: u64,
    /// Emitted frames with at least one gap.
    pub frames_with_gaps: u64,
    /// Gaps in emitted frames, summed over channels.
    pub gaps: u64,
    /// Gaps in emitted frames, per spec channel.
    pub gaps_by_channel: Vec<u64>,
    /// Grid instants passed without a frame because every channel was a gap.
    pub empty_frames: u64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Sample {
    ts: i64,
    value: f64,
}

/// Turns one device's readings into frames. See the module documentation
/// for the policies.
#[derive(Debug)]
pub struct FrameAssembler {
    channels: Vec<String>,
    index: HashMap<String, usize>,
    period: i128,
    hold: i128,
    reorder: i128,
    /// Pending frames that may still change: indices `next .. next + slots`.
    slots: usize,
    /// `pending[(k mod slots) * channels + c]`: the newest reading of `c` in
    /// `((k−1)·period, k·period]`, for pending frame index `k`.
    pending: Vec<Option<Sample>>,
    /// The newest reading of each channel at or before the last final frame.
    carry: Vec<Option<Sample>>,
    /// Index (time / period) of the next frame to finalize; `None` before the
    /// first reading.
    next: Option<i128>,
    /// Newest timestamp received: the watermark.
    newest: i64,
    frame: Frame,
    stats: FrameStats,
}

impl FrameAssembler {
    /// Validates `spec` (every problem at once) and builds an empty assembler.
    pub fn new(spec: &FrameSpec) -> Result<Self, AnalysisError> {
        spec.validate()?;
        let invalid = || AnalysisError::FrameSpec {
            problems: vec![FrameSpecProblem::ZeroPeriod],
        };
        let period = nanos(spec.period).filter(|&p| p > 0).ok_or_else(invalid)?;
        let hold = nanos(spec.hold).ok_or_else(invalid)?;
        let reorder = nanos(spec.reorder).ok_or_else(invalid)?;
        let period = i128::from(period);
        let reorder = i128::from(reorder);
        // A reading's frame index is at most ⌈reorder/period⌉ past `next`
        // (see `push_sample`), so this many slots always suffice.
        let slots = usize::try_from(ceil_div(reorder, period))
            .unwrap_or(MAX_REORDER_FRAMES)
            .saturating_add(1);
        let n = spec.channels.len();
        Ok(FrameAssembler {
            channels: spec.channels.clone(),
            index: spec
                .channels
                .iter()
                .enumerate()
                .map(|(i, c)| (c.clone(), i))
                .collect(),
            period,
            hold: i128::from(hold),
            reorder,
            slots,
            pending: vec![None; slots * n],
            carry: vec![None; n],
            next: None,
            newest: i64::MIN,
            frame: Frame {
                ts: Timestamp(0),
                values: vec![f64::NAN; n],
                gaps: vec![true; n],
            },
            stats: FrameStats {
                gaps_by_channel: vec![0; n],
                ..FrameStats::default()
            },
        })
    }

    /// The frame's columns, in order.
    pub fn channels(&self) -> &[String] {
        &self.channels
    }

    pub fn stats(&self) -> &FrameStats {
        &self.stats
    }

    /// Takes one reading (its device is the caller's business: one assembler
    /// per device) and hands every frame it makes final to `on_frame`, oldest
    /// first.
    pub fn push(&mut self, reading: &Reading, on_frame: impl FnMut(&Frame)) {
        self.push_sample(&reading.channel, reading.ts, reading.value, on_frame);
    }

    /// [`push`](Self::push) without a `Reading`.
    pub fn push_sample(
        &mut self,
        channel: &str,
        ts: Timestamp,
        value: f64,
        mut on_frame: impl FnMut(&Frame),
    ) {
        let Some(&c) = self.index.get(channel) else {
            self.stats.unknown_channel += 1;
            return;
        };
        // The first frame this reading can be part of.
        let k = ceil_div(i128::from(ts.0), self.period);
        if !value.is_finite() || k * self.period > i128::from(i64::MAX) {
            self.stats.invalid += 1;
            return;
        }
        let next = match self.next {
            None => {
                // Start where a later reading would still be in time, so
                // the first readings may arrive out of order too. Frames
                // before any data are empty and skipped.
                self.newest = ts.0;
                let start = ceil_div(i128::from(ts.0) - self.reorder, self.period);
                self.next = Some(start);
                start
            }
            Some(next) if ts.0 > self.newest => {
                self.newest = ts.0;
                let limit = ceil_div(i128::from(ts.0) - self.reorder, self.period);
                self.finalize_until(next, limit, &mut on_frame)
            }
            Some(next) => next,
        };
        if k < next {
            self.stats.late += 1;
            return;
        }
        // `next` is ⌈(newest − reorder)/period⌉ or later and `k` at most
        // ⌈newest/period⌉, so `k − next ≤ ⌈reorder/period⌉ < slots`.
        let ahead = k - next;
        debug_assert!(ahead < self.slots as i128, "{ahead} frames ahead");
        if ahead >= self.slots as i128 {
            self.stats.late += 1;
            return;
        }
        let at = self.slot(k) + c;
        let slot = &mut self.pending[at];
        // Newest wins; on equal timestamps (the same reading again) the
        // later arrival replaces the earlier.
        if slot.is_none_or(|s| ts.0 >= s.ts) {
            *slot = Some(Sample { ts: ts.0, value });
        }
        self.stats.accepted += 1;
    }

    /// Makes every frame up to the newest reading's final and emits it, as if
    /// the reorder window had passed. Readings at or before that frame are
    /// late from now on.
    pub fn flush(&mut self, mut on_frame: impl FnMut(&Frame)) {
        if let Some(next) = self.next {
            let limit = ceil_div(i128::from(self.newest), self.period) + 1;
            self.finalize_until(next, limit, &mut on_frame);
        }
    }

    fn slot(&self, k: i128) -> usize {
        // `slots` is at most MAX_REORDER_FRAMES + 1, so the cast is exact.
        let pos = k.rem_euclid(self.slots as i128) as usize;
        pos * self.channels.len()
    }

    /// Finalizes the frames with index in `next .. limit`; returns the new
    /// `next`.
    fn finalize_until(
        &mut self,
        mut next: i128,
        limit: i128,
        on_frame: &mut impl FnMut(&Frame),
    ) -> i128 {
        let n = self.channels.len();
        while next < limit {
            let base = self.slot(next);
            for (carry, slot) in self.carry.iter_mut().zip(&mut self.pending[base..base + n]) {
                if let Some(s) = slot.take()
                    && carry.is_none_or(|old| s.ts >= old.ts)
                {
                    *carry = Some(s);
                }
            }
            let t = next * self.period;
            let mut any = false;
            for ((carry, value), gap) in self
                .carry
                .iter()
                .zip(&mut self.frame.values)
                .zip(&mut self.frame.gaps)
            {
                match carry {
                    Some(s) if t - i128::from(s.ts) <= self.hold => {
                        *value = s.value;
                        *gap = false;
                        any = true;
                    }
                    _ => {
                        *value = f64::NAN;
                        *gap = true;
                    }
                }
            }
            match i64::try_from(t) {
                Ok(t) if any => {
                    self.frame.ts = Timestamp(t);
                    self.count_frame();
                    on_frame(&self.frame);
                    next += 1;
                }
                _ => {
                    // Every held value has expired and stays expired, so
                    // the next frame with data is the next pending slot
                    // holding a reading.
                    let end = limit.min(next + self.slots as i128);
                    let jump = (next + 1..end)
                        .find(|&j| {
                            let base = self.slot(j);
                            self.pending[base..base + n].iter().any(Option::is_some)
                        })
                        .unwrap_or(limit);
                    let skipped = u64::try_from(jump - next).unwrap_or(u64::MAX);
                    self.stats.empty_frames = self.stats.empty_frames.saturating_add(skipped);
                    next = jump;
                }
            }
        }
        self.next = Some(next);
        next
    }

    fn count_frame(&mut self) {
        self.stats.frames += 1;
        let mut gaps = 0;
        for (count, &gap) in self.stats.gaps_by_channel.iter_mut().zip(&self.frame.gaps) {
            if gap {
                *count += 1;
                gaps += 1;
            }
        }
        if gaps > 0 {
            self.stats.frames_with_gaps += 1;
            self.stats.gaps += gaps;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(channels: &[&str], period_ms: u64, hold_ms: u64, reorder_ms: u64) -> FrameSpec {
        FrameSpec {
            channels: channels.iter().map(|c| c.to_string()).collect(),
            period: Duration::from_millis(period_ms),
            hold: Duration::from_millis(hold_ms),
            reorder: Duration::from_millis(reorder_ms),
        }
    }

    fn ms(t: i64) -> Timestamp {
        Timestamp::from_millis(t)
    }

    /// Pushes `(channel, ms, value)` in the given order, then flushes.
    fn assemble(asm: &mut FrameAssembler, readings: &[(&str, i64, f64)]) -> Vec<Frame> {
        let mut frames = Vec::new();
        for &(c, t, v) in readings {
            asm.push_sample(c, ms(t), v, |f| frames.push(f.clone()));
        }
        asm.flush(|f| frames.push(f.clone()));
        frames
    }

    fn times(frames: &[Frame]) -> Vec<i64> {
        frames.iter().map(|f| f.ts.as_millis()).collect()
    }

    #[test]
    fn channels_arriving_in_any_order_are_aligned_in_one_frame() {
        let mut asm = FrameAssembler::new(&spec(&["a", "b", "c"], 100, 100, 0)).unwrap();
        let frames = assemble(
            &mut asm,
            &[
                ("c", 100, 3.0),
                ("a", 100, 1.0),
                ("b", 100, 2.0),
                ("b", 200, 20.0),
                ("c", 200, 30.0),
                ("a", 200, 10.0),
                ("a", 300, 100.0),
                ("c", 300, 300.0),
                ("b", 300, 200.0),
            ],
        );
        assert_eq!(times(&frames), [100, 200, 300]);
        assert_eq!(frames[0].values, [1.0, 2.0, 3.0]);
        assert_eq!(frames[1].values, [10.0, 20.0, 30.0]);
        assert_eq!(frames[2].values, [100.0, 200.0, 300.0]);
        assert!(frames.iter().all(|f| !f.has_gaps()));
        assert_eq!(asm.stats().late, 0);
        assert_eq!(asm.stats().accepted, 9);
    }

    #[test]
    fn a_frame_takes_the_last_reading_at_or_before_its_time() {
        let mut asm = FrameAssembler::new(&spec(&["a"], 100, 100, 0)).unwrap();
        let frames = assemble(
            &mut asm,
            &[
                ("a", 110, 1.0),
                ("a", 190, 2.0),
                ("a", 200, 3.0),
                ("a", 201, 4.0),
            ],
        );
        // 110, 190 and 200 fall in (100, 200]; the newest, at 200, wins.
        // 201 belongs to the frame at 300.
        assert_eq!(times(&frames), [200, 300]);
        assert_eq!(frames[0].values, [3.0]);
        assert_eq!(frames[1].values, [4.0]);
    }

    #[test]
    fn a_value_is_held_within_the_tolerance() {
        let mut asm = FrameAssembler::new(&spec(&["slow", "fast"], 100, 250, 0)).unwrap();
        let frames = assemble(
            &mut asm,
            &[
                ("slow", 100, 7.0),
                ("fast", 100, 1.0),
                ("fast", 200, 2.0),
                ("fast", 300, 3.0),
                ("fast", 350, 3.5),
            ],
        );
        assert_eq!(times(&frames), [100, 200, 300, 400]);
        // 200 and 250 ms old: within 250 ms, held.
        assert_eq!(frames[1].values, [7.0, 2.0]);
        assert_eq!(frames[2].values, [7.0, 3.0]);
        assert!(!frames[2].has_gaps());
        // 300 ms old: a gap.
        assert!(frames[3].gaps[0]);
        assert_eq!(frames[3].values[1], 3.5);
    }

    #[test]
    fn a_channel_past_the_tolerance_is_a_flagged_gap_never_filled() {
        let mut asm = FrameAssembler::new(&spec(&["a", "b"], 100, 150, 0)).unwrap();
        let frames = assemble(
            &mut asm,
            &[
                ("a", 100, 5.0),
                ("b", 100, 1.0),
                ("b", 200, 2.0),
                ("b", 300, 3.0),
                ("b", 400, 4.0),
            ],
        );
        assert_eq!(times(&frames), [100, 200, 300, 400]);
        assert_eq!(frames[1].values, [5.0, 2.0]);
        for f in &frames[2..] {
            assert_eq!(f.gaps, [true, false]);
            assert!(
                f.values[0].is_nan(),
                "a gap is NaN, never a stale or made-up value"
            );
        }
        let stats = asm.stats();
        assert_eq!(stats.frames, 4);
        assert_eq!(stats.frames_with_gaps, 2);
        assert_eq!(stats.gaps, 2);
        assert_eq!(stats.gaps_by_channel, [2, 0]);
    }

    #[test]
    fn readings_out_of_order_within_the_reorder_window_are_used() {
        let mut asm = FrameAssembler::new(&spec(&["a", "b"], 100, 100, 250)).unwrap();
        let frames = assemble(
            &mut asm,
            &[
                ("b", 300, 30.0), // first reading, ahead of the others
                ("a", 100, 1.0),
                ("b", 100, 10.0),
                ("a", 300, 3.0),
                ("a", 200, 2.0),
                ("b", 200, 20.0),
                ("a", 400, 4.0),
                ("b", 400, 40.0),
            ],
        );
        assert_eq!(times(&frames), [100, 200, 300, 400]);
        assert_eq!(frames[0].values, [1.0, 10.0]);
        assert_eq!(frames[1].values, [2.0, 20.0]);
        assert_eq!(frames[2].values, [3.0, 30.0]);
        assert_eq!(asm.stats().late, 0);
    }

    #[test]
    fn late_readings_are_counted_and_dropped_from_analysis() {
        let mut asm = FrameAssembler::new(&spec(&["a", "b"], 100, 100, 0)).unwrap();
        let mut frames = Vec::new();
        let mut push = |asm: &mut FrameAssembler, c: &str, t: i64, v: f64| {
            asm.push_sample(c, ms(t), v, |f| frames.push(f.clone()));
        };
        push(&mut asm, "a", 100, 1.0);
        push(&mut asm, "b", 100, 10.0);
        push(&mut asm, "a", 101, 2.0); // newer than 100: frame 100 is final
        push(&mut asm, "b", 100, 99.0); // at the final frame's time: late
        push(&mut asm, "b", 50, 99.0); // before it: late
        push(&mut asm, "b", 150, 15.0); // frame 200 is still open
        asm.flush(|f| frames.push(f.clone()));
        assert_eq!(times(&frames), [100, 200]);
        assert_eq!(frames[0].values, [1.0, 10.0]);
        assert_eq!(frames[1].values, [2.0, 15.0]);
        assert_eq!(asm.stats().late, 2);
        assert_eq!(asm.stats().accepted, 4);
    }

    #[test]
    fn frames_are_strictly_increasing_in_time() {
        let mut asm = FrameAssembler::new(&spec(&["a", "b"], 10, 30, 25)).unwrap();
        let mut readings = Vec::new();
        // A deterministic shuffle within 20 ms.
        for i in 0..200i64 {
            let t = i * 7 + (i * 13 % 20) - 10;
            readings.push((if i % 3 == 0 { "a" } else { "b" }, t.max(0), i as f64));
        }
        let frames = assemble(&mut asm, &readings);
        assert!(frames.len() > 100);
        assert!(frames.windows(2).all(|w| w[0].ts < w[1].ts));
        assert!(frames.iter().all(|f| f.ts.as_nanos() % 10_000_000 == 0));
    }

    #[test]
    fn a_long_silence_skips_empty_frames_instead_of_emitting_them() {
        let mut asm = FrameAssembler::new(&spec(&["a"], 100, 100, 0)).unwrap();
        let frames = assemble(&mut asm, &[("a", 100, 1.0), ("a", 1_000_000, 2.0)]);
        assert_eq!(times(&frames), [100, 200, 1_000_000]);
        assert_eq!(frames[1].values, [1.0]);
        // Frames 300 ..= 999 900 had no channel at all.
        assert_eq!(asm.stats().empty_frames, 9_997);
        assert_eq!(asm.stats().frames, 3);
    }

    #[test]
    fn unknown_channels_and_non_finite_values_are_counted_not_framed() {
        let mut asm = FrameAssembler::new(&spec(&["a"], 100, 100, 0)).unwrap();
        let frames = assemble(
            &mut asm,
            &[("zz", 100, 1.0), ("a", 100, f64::NAN), ("a", 100, 2.0)],
        );
        asm.push_sample("a", Timestamp(i64::MAX), 1.0, |_| {});
        assert_eq!(times(&frames), [100]);
        assert_eq!(frames[0].values, [2.0]);
        assert_eq!(asm.stats().unknown_channel, 1);
        assert_eq!(asm.stats().invalid, 2);
    }

    #[test]
    fn a_reading_struct_goes_in_by_its_channel() {
        let mut asm = FrameAssembler::new(&spec(&["a"], 100, 100, 0)).unwrap();
        let r = Reading::new("pump-1", "a", ms(100), 4.5).unwrap();
        asm.push(&r, |_| {});
        let mut frames = Vec::new();
        asm.flush(|f| frames.push(f.clone()));
        assert_eq!(frames[0].values, [4.5]);
    }

    #[test]
    fn frame_spec_validation_reports_every_problem_at_once() {
        let bad = FrameSpec {
            channels: vec!["a".into(), String::new(), "a".into()],
            period: Duration::ZERO,
            hold: Duration::from_secs(u64::MAX),
            reorder: Duration::ZERO,
        };
        let Err(AnalysisError::FrameSpec { problems }) = FrameAssembler::new(&bad) else {
            panic!("expected an invalid spec");
        };
        assert_eq!(
            problems,
            [
                ChannelListProblem::EmptyChannelName { index: 1 }.into(),
                ChannelListProblem::DuplicateChannel { name: "a".into() }.into(),
                FrameSpecProblem::DurationTooLong {
                    field: "hold",
                    value: Duration::from_secs(u64::MAX)
                },
                FrameSpecProblem::ZeroPeriod,
            ]
        );
        let slow = spec(&["a"], 1, 100_000, 5_000);
        let problems = match slow.validate() {
            Err(AnalysisError::FrameSpec { problems }) => problems,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            problems,
            [
                FrameSpecProblem::ReorderTooLong {
                    frames: 5_000,
                    limit: MAX_REORDER_FRAMES
                },
                FrameSpecProblem::HoldTooLong {
                    frames: 100_000,
                    limit: MAX_HOLD_FRAMES
                },
            ]
        );
    }

    const CHANNELS: [&str; 3] = ["a", "b", "c"];

    /// The naive definition: per channel, the newest reading at or before
    /// `t`, if within `hold`.
    fn reference(readings: &[(usize, i64, f64)], t: i64, hold: i64) -> Vec<Option<f64>> {
        (0..CHANNELS.len())
            .map(|c| {
                readings
                    .iter()
                    .filter(|r| r.0 == c && r.1 <= t)
                    .max_by_key(|r| r.1)
                    .filter(|r| t - r.1 <= hold)
                    .map(|r| r.2)
            })
            .collect()
    }

    fn arbitrary_ts() -> impl Strategy<Value = i64> {
        prop_oneof![
            8 => 0i64..2_000_000_000,
            1 => any::<i64>(),
            1 => prop_oneof![Just(i64::MIN), Just(i64::MAX), Just(-1i64), Just(0i64)],
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn random_streams_never_panic_give_ordered_frames_and_only_input_values(
            stream in proptest::collection::vec(
                (0usize..4, arbitrary_ts(), -1e6f64..1e6), 0..200),
            period_us in 1u64..200_000,
            hold_us in 0u64..1_000_000,
            reorder_us in 0u64..500_000,
            flush in any::<bool>(),
        ) {
            let spec = FrameSpec {
                channels: CHANNELS.iter().map(|c| c.to_string()).collect(),
                period: Duration::from_micros(period_us),
                hold: Duration::from_micros(hold_us),
                reorder: Duration::from_micros(reorder_us),
            };
            let Ok(mut asm) = FrameAssembler::new(&spec) else {
                return Ok(()); // hold or reorder too many frames: refused, fine
            };
            let mut frames = Vec::new();
            for &(c, ts, v) in &stream {
                let name = CHANNELS.get(c).copied().unwrap_or("other");
                asm.push_sample(name, Timestamp(ts), v, |f| frames.push(f.clone()));
            }
            if flush {
                asm.flush(|f| frames.push(f.clone()));
            }
            let period = i128::from(period_us) * 1000;
            let hold = i128::from(hold_us) * 1000;
            prop_assert!(frames.windows(2).all(|w| w[0].ts < w[1].ts));
            for f in &frames {
                prop_assert_eq!(i128::from(f.ts.0) % period, 0);
                prop_assert!(!f.gaps.iter().all(|&g| g), "an all-gap frame was emitted");
                for (c, (&v, &gap)) in f.values.iter().zip(&f.gaps).enumerate() {
                    if gap {
                        prop_assert!(v.is_nan());
                    } else {
                        let from_input = stream.iter().any(|&(rc, ts, rv)| {
                            rc == c && rv == v && ts <= f.ts.0
                                && i128::from(f.ts.0) - i128::from(ts) <= hold
                        });
                        prop_assert!(from_input, "{} at {} is not an input value", v, f.ts.0);
                    }
                }
            }
            let s = asm.stats();
            prop_assert_eq!(
                s.accepted + s.late + s.unknown_channel + s.invalid,
                stream.len() as u64
            );
            prop_assert_eq!(s.frames, frames.len() as u64);
            prop_assert_eq!(s.gaps_by_channel.iter().sum::<u64>(), s.gaps);
        }

        #[test]
        fn jitter_within_the_reorder_window_loses_nothing_and_matches_the_naive_definition(
            mut readings in proptest::collection::vec(
                (0usize..3, 0i64..5_000, -100f64..100.0, 0i64..=300), 1..150),
            period in 1i64..100,
            hold in 0i64..400,
        ) {
            // Unique (channel, ts): the same identity twice is one reading.
            readings.sort_by_key(|r| (r.0, r.1));
            readings.dedup_by_key(|r| (r.0, r.1));
            // Arrival order: each reading at most `reorder` after its time.
            let reorder = 300;
            let mut arrivals = readings.clone();
            arrivals.sort_by_key(|r| r.1 + r.3);
            let spec = FrameSpec {
                channels: CHANNELS.iter().map(|c| c.to_string()).collect(),
                period: Duration::from_millis(period as u64),
                hold: Duration::from_millis(hold as u64),
                reorder: Duration::from_millis(reorder),
            };
            let mut asm = FrameAssembler::new(&spec).unwrap();
            let mut frames = Vec::new();
            for &(c, t, v, _) in &arrivals {
                asm.push_sample(CHANNELS[c], ms(t), v, |f| frames.push(f.clone()));
            }
            asm.flush(|f| frames.push(f.clone()));
            prop_assert_eq!(asm.stats().late, 0);

            let plain: Vec<(usize, i64, f64)> =
                readings.iter().map(|&(c, t, v, _)| (c, t, v)).collect();
            let first = plain.iter().map(|r| r.1).min().unwrap_or(0);
            let last = plain.iter().map(|r| r.1).max().unwrap_or(0);
            let mut want = Vec::new();
            let mut k = (first + period - 1).div_euclid(period);
            while k * period <= (last + period - 1).div_euclid(period) * period {
                let values = reference(&plain, k * period, hold);
                if values.iter().any(Option::is_some) {
                    want.push((k * period, values));
                }
                k += 1;
            }
            let got: Vec<(i64, Vec<Option<f64>>)> = frames
                .iter()
                .map(|f| {
                    let values = f.values.iter().zip(&f.gaps)
                        .map(|(&v, &gap)| (!gap).then_some(v))
                        .collect();
                    (f.ts.as_millis(), values)
                })
                .collect();
            prop_assert_eq!(got, want);
        }
    }
}
