//! Per-device running baselines: how far each channel's window mean is from
//! the device's own slow average.
//!
//! A fleet model scoring a device it never saw cannot tell a level shift
//! that outlasts a window (a temperature step, the plateau of a drift) from
//! a device that simply runs warmer: both are "a high mean". Relative to the
//! device's own recent past the shift stands out, and the between-device
//! spread of levels drops out of the features.
//!
//! # Definition
//!
//! For each channel `c` of the spec and each window `w` of one device, in
//! time order, with `t_w` the time of the window's last row, `m_c(w)` its
//! mean and `τ` the spec's time constant:
//!
//! - `dev_c(w) = m_c(w) − b_c(w−1)`: the feature `{channel}.baseline_dev`;
//! - `b_c(w) = b_c(w−1) + α_w·(m_c(w) − b_c(w−1))` with
//!   `α_w = 1 − exp(−(t_w − t_(w−1)) / τ)`;
//! - the device's first window starts the baseline: `b_c(0) = m_c(0)`, so
//!   its `dev` is 0.
//!
//! `α` follows the time between windows, not their count, so a gap (windows
//! that could not be formed) makes the baseline catch up by exactly as much
//! as the elapsed time says. The state is kept per device and per model: the
//! gateway holds it in memory (a restart starts again from the first
//! window) and training replays it per device in time order, so both see
//! the same numbers for the same windows.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// Longest time constant a spec may give (a year).
pub const MAX_TIME_CONSTANT: Duration = Duration::from_secs(366 * 86_400);

/// Running baselines of the channels' window means (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineSpec {
    /// `τ` of the exponential average (humantime: `"10m"`). Long against the
    /// anomalies to expose, short against the drift of normal operation.
    #[serde(with = "crate::manifest::humantime_duration")]
    pub time_constant: Duration,
}

/// Why a window could not advance a device's baseline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BaselineError {
    #[error("window ends at {end} ns, not after the device's previous window ({previous} ns)")]
    NotAfterPrevious { end: i64, previous: i64 },
    #[error("the baseline holds {expected} channels, the window has {got}")]
    ChannelMismatch { expected: usize, got: usize },
    #[error("channel {channel}'s deviation from its baseline is not finite")]
    NonFinite { channel: usize },
}

/// One device's baselines for one model. Starts empty; the first window
/// fills it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BaselineState {
    level: Vec<f64>,
    last_end: Option<i64>,
}

impl BaselineState {
    /// An empty state: the next window starts the baseline.
    pub fn new() -> Self {
        Self::default()
    }

    /// The time of the last window that advanced the state.
    pub fn last_end(&self) -> Option<Timestamp> {
        self.last_end.map(Timestamp)
    }

    /// The current baseline of each channel (empty before the first window).
    pub fn levels(&self) -> &[f64] {
        &self.level
    }

    /// Writes `dev_c` for the window ending at `end` with channel means
    /// `means` into `out`, then advances the baseline. On error nothing
    /// changes, `out` included.
    pub fn advance(
        &mut self,
        spec: &BaselineSpec,
        end: Timestamp,
        means: &[f64],
        out: &mut [f64],
    ) -> Result<(), BaselineError> {
        if out.len() != means.len() {
            return Err(BaselineError::ChannelMismatch {
                expected: means.len(),
                got: out.len(),
            });
        }
        let Some(previous) = self.last_end else {
            self.level.clear();
            self.level.extend_from_slice(means);
            out.fill(0.0);
            self.last_end = Some(end.0);
            return Ok(());
        };
        if self.level.len() != means.len() {
            return Err(BaselineError::ChannelMismatch {
                expected: self.level.len(),
                got: means.len(),
            });
        }
        if end.0 <= previous {
            return Err(BaselineError::NotAfterPrevious {
                end: end.0,
                previous,
            });
        }
        // Checked before anything moves: m − b can overflow for values
        // near f64::MAX. b + α·(m − b) lies between b and m, so it cannot.
        if let Some(channel) = means
            .iter()
            .zip(&self.level)
            .position(|(m, b)| !(m - b).is_finite())
        {
            return Err(BaselineError::NonFinite { channel });
        }
        // i128: the difference of two i64 nanosecond times cannot overflow.
        let elapsed_s = (i128::from(end.0) - i128::from(previous)) as f64 * 1e-9;
        let alpha = -(-elapsed_s / spec.time_constant.as_secs_f64()).exp_m1();
        for ((b, &m), o) in self.level.iter_mut().zip(means).zip(out.iter_mut()) {
            let d = m - *b;
            *o = d;
            *b += alpha * d;
        }
        self.last_end = Some(end.0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(secs: u64) -> BaselineSpec {
        BaselineSpec {
            time_constant: Duration::from_secs(secs),
        }
    }

    const S: i64 = 1_000_000_000;

    #[test]
    fn the_first_window_starts_the_baseline_at_zero_deviation() {
        let mut st = BaselineState::new();
        let mut out = [9.0; 2];
        st.advance(&spec(60), Timestamp(10 * S), &[3.0, -1.0], &mut out)
            .unwrap();
        assert_eq!(out, [0.0, 0.0]);
        assert_eq!(st.levels(), &[3.0, -1.0]);
        assert_eq!(st.last_end(), Some(Timestamp(10 * S)));
    }

    #[test]
    fn deviation_is_taken_before_the_update_and_alpha_follows_elapsed_time() {
        let sp = spec(60);
        let mut st = BaselineState::new();
        let mut out = [0.0];
        st.advance(&sp, Timestamp(0), &[10.0], &mut out).unwrap();
        // 60 s later (one τ): α = 1 − e⁻¹.
        st.advance(&sp, Timestamp(60 * S), &[20.0], &mut out)
            .unwrap();
        assert_eq!(out, [10.0]);
        let alpha = 1.0 - (-1.0f64).exp();
        let b1 = 10.0 + alpha * 10.0;
        assert!((st.levels()[0] - b1).abs() < 1e-12);
        // A window 1 s later deviates from b1, and moves it by α = 1 − e^(−1/60).
        st.advance(&sp, Timestamp(61 * S), &[20.0], &mut out)
            .unwrap();
        assert!((out[0] - (20.0 - b1)).abs() < 1e-12);
        let b2 = b1 + (1.0 - (-1.0f64 / 60.0).exp()) * (20.0 - b1);
        assert!((st.levels()[0] - b2).abs() < 1e-12);
    }

    #[test]
    fn a_level_shift_stays_visible_for_many_windows_with_a_long_time_constant() {
        // A step of 5 after an hour at 0, windows every second, τ = 10 min:
        // after 150 s (the longest simulated step) the deviation is still
        // 5·e^(−149/600) ≈ 3.9.
        let sp = spec(600);
        let mut st = BaselineState::new();
        let mut out = [0.0];
        for t in 0..3600 {
            st.advance(&sp, Timestamp(t * S), &[0.0], &mut out).unwrap();
            assert_eq!(out, [0.0]);
        }
        for t in 3600..3750 {
            st.advance(&sp, Timestamp(t * S), &[5.0], &mut out).unwrap();
        }
        let expected = 5.0 * (-149.0f64 / 600.0).exp();
        assert!((out[0] - expected).abs() < 1e-9, "{}", out[0]);
    }

    #[test]
    fn out_of_order_windows_and_wrong_widths_are_refused_without_change() {
        let sp = spec(60);
        let mut st = BaselineState::new();
        let mut out = [0.0, 0.0];
        st.advance(&sp, Timestamp(5 * S), &[1.0, 2.0], &mut out)
            .unwrap();
        let before = st.clone();
        out = [7.0, 7.0];
        assert_eq!(
            st.advance(&sp, Timestamp(5 * S), &[3.0, 4.0], &mut out),
            Err(BaselineError::NotAfterPrevious {
                end: 5 * S,
                previous: 5 * S
            })
        );
        assert_eq!(
            st.advance(&sp, Timestamp(6 * S), &[3.0], &mut out[..1]),
            Err(BaselineError::ChannelMismatch {
                expected: 2,
                got: 1
            })
        );
        assert_eq!(
            st.advance(&sp, Timestamp(6 * S), &[3.0, 4.0], &mut out[..1]),
            Err(BaselineError::ChannelMismatch {
                expected: 2,
                got: 1
            })
        );
        assert_eq!(st, before);
        assert_eq!(out, [7.0, 7.0]);
    }

    #[test]
    fn a_deviation_that_overflows_is_refused_without_change() {
        let sp = spec(60);
        let mut st = BaselineState::new();
        let mut out = [0.0, 0.0];
        st.advance(&sp, Timestamp(0), &[1.0, -f64::MAX], &mut out)
            .unwrap();
        let before = st.clone();
        assert_eq!(
            st.advance(&sp, Timestamp(S), &[1.0, f64::MAX], &mut out),
            Err(BaselineError::NonFinite { channel: 1 })
        );
        assert_eq!(st, before);
    }

    #[test]
    fn extreme_times_do_not_overflow() {
        let sp = spec(60);
        let mut st = BaselineState::new();
        let mut out = [0.0];
        st.advance(&sp, Timestamp(i64::MIN), &[1.0], &mut out)
            .unwrap();
        st.advance(&sp, Timestamp(i64::MAX), &[2.0], &mut out)
            .unwrap();
        assert_eq!(out, [1.0]);
        assert_eq!(st.levels(), &[2.0]); // α = 1 after ~292 years
    }

    #[test]
    fn the_spec_reads_and_writes_humantime() {
        let sp: BaselineSpec = serde_json::from_str(r#"{"time_constant": "10m"}"#).unwrap();
        assert_eq!(sp, spec(600));
        assert_eq!(
            serde_json::to_string(&sp).unwrap(),
            r#"{"time_constant":"10m"}"#
        );
        assert!(serde_json::from_str::<BaselineSpec>(r#"{"time_constant": "soon"}"#).is_err());
    }
}
