//! Feature extraction: one window of a device's time-aligned channels → one
//! fixed-length feature vector. The gateway (scoring) and the cloud sink
//! (training) run this same code, so a model never sees features computed
//! differently from the ones it was trained on.
//!
//! A [`FeatureSpec`] (part of a model manifest) says which features; a
//! [`FeatureExtractor`] is built once per spec and window length (it validates
//! the spec, names the features and plans the FFT) and then turns [`Window`]s
//! into feature vectors without allocating.
//!
//! # Layout of the feature vector
//!
//! For channels `c0 … c(C-1)`, statistics `s0 … s(S-1)`, band channels
//! `b0 … b(B-1)` with `K` bands each, and a window of `N` rows:
//!
//! 1. statistics, channel-major: `c0.s0, c0.s1, …, c1.s0, …` — named
//!    `{channel}.{stat}`, e.g. `temperature.mean`;
//! 2. band energies, in the order of `bands.channels`: `b0.band0 … b0.band(K-1),
//!    b1.band0, …` — named `{channel}.band{k}`, `k` counted from 0;
//! 3. when `raw`, the window's `channels` columns, time-major:
//!    `raw.t0.c0, raw.t0.c1, …, raw.t1.c0, …` — named `raw.t{row}.{channel}`;
//! 4. when `baseline` is set, each channel's window mean minus the device's
//!    running baseline of it, in channel order — named
//!    `{channel}.baseline_dev`. Defined in [`baseline`]; it needs the
//!    device's state, so such a spec is extracted with
//!    [`FeatureExtractor::extract_tracked`], one window after another;
//! 5. one-hot codes of the categorical channels `k0 … k(K-1)`, in the order of
//!    `categorical`, each with its codes in the listed order: 1.0 when the
//!    window's **last** row equals the code exactly, else 0.0 — named
//!    `{channel}={code}`, e.g. `mode=2`. A value that is no listed code (an
//!    unseen mode, or not an integer) gives all zeros for that channel.
//!    Last, so a training pipeline that appends its one-hot columns to the
//!    numeric features has the same layout.
//!
//! The window's columns are `channels` followed by the categorical channels:
//! `C + K` columns, `c0 … c(C-1), k0 … k(K-1)`. Statistics, bands and raw
//! see only the first `C`; a categorical column only feeds its one-hot
//! section (a mode's mean or spectrum means nothing). The gateway's frames
//! hold the last reading of a channel, never an average, so a code stays a
//! code.
//!
//! # Definitions
//!
//! `x_0 … x_(N-1)` is one channel of the window, `Δt` the sample interval in
//! seconds. Moments are population moments (divide by `N`).
//!
//! | stat | definition | unit |
//! |---|---|---|
//! | `mean` | `Σ x_i / N` | channel |
//! | `std` | `sqrt(Σ (x_i − mean)² / N)` | channel |
//! | `min`, `max` | smallest, largest `x_i` | channel |
//! | `last` | `x_(N-1)`, the newest sample | channel |
//! | `slope` | least-squares slope of `x_i` against `t_i = i·Δt` | channel per second |
//! | `rms` | `sqrt(Σ x_i² / N)` | channel |
//! | `peak_to_peak` | `max − min` | channel |
//! | `skew` | `m3 / m2^(3/2)`, `m_k = Σ (x_i − mean)^k / N` | none |
//! | `kurtosis` | `m4 / m2² − 3` (excess: 0 for a normal distribution) | none |
//! | `repeats` | `#{i ≥ 1 : x_i = x_(i−1)}`, exact equality | rows (0 … N−1) |
//!
//! A **constant** channel (`min == max`) gives exactly `mean = x_0`,
//! `repeats = N − 1`, and `std`, `slope`, `skew` and `kurtosis` exactly 0 (skew and kurtosis are 0/0 there;
//! 0 keeps the vector finite and says "no shape").
//!
//! **Band energies.** `y_i = w_i·(x_i − mean)` when `detrend`, else
//! `y_i = w_i·x_i`, with the periodic Hann window `w_i = sin²(π·i/N)`
//! (`= ½ − ½·cos(2π·i/N)`). `X_k = Σ_i y_i·e^(−2πj·k·i/N)`; the one-sided power
//! spectrum has bins `k = 0 ..= ⌊N/2⌋` at frequency `k / (N·Δt)` Hz, with
//! `P_k = c_k·|X_k|²/N` where `c_k = 1` for `k = 0` and (`N` even) `k = N/2`,
//! else 2 (the mirrored negative frequency). So `Σ_k P_k = Σ_i y_i²`
//! (Parseval): the bands split the energy of the windowed signal.
//! Band `b` of `K` covers the frequencies `[b, b+1)·f_Nyquist/K`, the last band
//! also holding the Nyquist frequency: bin `k` belongs to band
//! `min(⌊2·k·K/N⌋, K−1)`. A band's energy is `Σ P_k` over its bins, in
//! channel-unit², summed over the window's samples (not divided by `N`) and not
//! corrected for the Hann window's loss (a sine of amplitude `A` on a bin
//! centre yields `3·N·A²/16`). `K ≤ ⌊N/2⌋` is required, so every band holds at
//! least one bin.
//!
//! # Numerics
//!
//! Two passes per channel: sum/min/max, then the central sums `Σd, Σd², Σd³,
//! Σd⁴, Σk·d` of `d_i = (x_i − mean)/s`, scaled by `s = max|x_i − mean|` so no
//! power can overflow or underflow (both passes walk the rows, all channels at
//! once), with the "corrected two-pass" term `Σd/N`
//! removing the rounding error of the first mean. The slope uses the centred
//! index `k_i = i − (N−1)/2` (`Σk = 0`, `Σk² = N(N²−1)/12` exactly), so it does not
//! cancel. `rms` is `hypot(mean, std)` — the same quantity without squaring raw
//! values. If a feature still is not finite (values near `f64::MAX` overflow
//! `max − min`), [`FeatureExtractor::extract`] says which one instead of
//! handing a model an infinity.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};
use serde::{Deserialize, Serialize};

use crate::Timestamp;
use crate::reading::MAX_NAME_LEN;

/// Most rows a window may have.
pub const MAX_WINDOW_LEN: usize = 1 << 16;
/// Most channels a spec may name.
pub const MAX_CHANNELS: usize = 1024;
/// Most features one spec may produce for one window.
pub const MAX_FEATURES: usize = 1 << 20;
/// Largest magnitude of a categorical code: every integer up to 2^53 is
/// exactly an f64, so a window value equals the code exactly or not at all.
pub const MAX_CODE: i64 = 1 << 53;

/// A statistic computed over one channel of a window. See the module
/// documentation for the exact definitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stat {
    /// Arithmetic mean.
    Mean,
    /// Population standard deviation.
    Std,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// The newest value (last row).
    Last,
    /// Least-squares slope, channel units per second.
    Slope,
    /// Root mean square.
    Rms,
    /// `max − min`.
    PeakToPeak,
    /// Population skewness `m3 / m2^1.5`.
    Skew,
    /// Population excess kurtosis `m4 / m2² − 3`.
    Kurtosis,
    /// How many rows equal the row before (a flat line: a stuck sensor
    /// repeats its last value exactly). A count, so its resolution is one.
    Repeats,
}

impl Stat {
    /// Every statistic, in declaration order.
    pub const ALL: [Stat; 11] = [
        Stat::Mean,
        Stat::Std,
        Stat::Min,
        Stat::Max,
        Stat::Last,
        Stat::Slope,
        Stat::Rms,
        Stat::PeakToPeak,
        Stat::Skew,
        Stat::Kurtosis,
        Stat::Repeats,
    ];

    /// The name used in feature names and in the spec (`peak_to_peak`).
    pub fn name(self) -> &'static str {
        match self {
            Stat::Mean => "mean",
            Stat::Std => "std",
            Stat::Min => "min",
            Stat::Max => "max",
            Stat::Last => "last",
            Stat::Slope => "slope",
            Stat::Rms => "rms",
            Stat::PeakToPeak => "peak_to_peak",
            Stat::Skew => "skew",
            Stat::Kurtosis => "kurtosis",
            Stat::Repeats => "repeats",
        }
    }
}

impl fmt::Display for Stat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn default_true() -> bool {
    true
}

/// Spectral band energies for vibration-like channels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BandSpec {
    /// The channels to analyse; each must be one of the spec's `channels`.
    pub channels: Vec<String>,
    /// How many equal-width frequency bands from 0 Hz to Nyquist; at most
    /// half the window length.
    pub count: usize,
    /// Remove the channel's mean before windowing, so a DC offset does not
    /// swamp the lowest band. Default `true`.
    #[serde(default = "default_true")]
    pub detrend: bool,
}

/// A categorical channel: a numeric channel carrying integer codes (an
/// operating mode 0/1/2, say), one-hot encoded from the window's last row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoricalSpec {
    /// The channel; not one of the spec's `channels`.
    pub channel: String,
    /// The codes that get a column, in column order; at most [`MAX_CODE`]
    /// in magnitude.
    pub codes: Vec<i64>,
}

/// Which features to compute from a window. Serialized into model manifests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    /// The window's columns, in order: a window for this spec has exactly
    /// these channels.
    pub channels: Vec<String>,
    /// Statistics computed for every channel, in this order.
    #[serde(default)]
    pub stats: Vec<Stat>,
    /// Spectral band energies of some channels; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bands: Option<BandSpec>,
    /// Append the window itself (row-major, time-major) — for autoencoders.
    #[serde(default)]
    pub raw: bool,
    /// Categorical channels, one-hot encoded last (see the module docs);
    /// the window holds them after `channels`. Absent when empty, so specs
    /// without them serialize as before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub categorical: Vec<CategoricalSpec>,
    /// Each channel's window mean against the device's own running
    /// baseline ([`baseline`]); absent when `None`, so specs without it
    /// serialize as before. Needs per-device state:
    /// [`FeatureExtractor::extract_tracked`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<BaselineSpec>,
}

/// One thing wrong with a list of channel names. Shared by every spec that
/// names a device's channels (features here, frames on the gateway), so they
/// all accept and refuse the same lists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelListProblem {
    #[error("`channels` is empty")]
    NoChannels,
    #[error("`channels` has {count} entries, limit is {limit}")]
    TooManyChannels { count: usize, limit: usize },
    #[error("`channels[{index}]` is empty")]
    EmptyChannelName { index: usize },
    #[error("`channels[{index}]` is {len} bytes long, limit is {limit}")]
    ChannelNameTooLong {
        index: usize,
        len: usize,
        limit: usize,
    },
    #[error("`channels` names `{name}` twice")]
    DuplicateChannel { name: String },
}

/// Every problem of a channel list: empty, too long, empty or too-long names, duplicates.
pub fn channel_list_problems(channels: &[String]) -> Vec<ChannelListProblem> {
    let mut problems = Vec::new();
    if channels.is_empty() {
        problems.push(ChannelListProblem::NoChannels);
    }
    if channels.len() > MAX_CHANNELS {
        problems.push(ChannelListProblem::TooManyChannels {
            count: channels.len(),
            limit: MAX_CHANNELS,
        });
    }
    let mut seen = HashSet::new();
    for (index, name) in channels.iter().enumerate() {
        if name.is_empty() {
            problems.push(ChannelListProblem::EmptyChannelName { index });
        } else if name.len() > MAX_NAME_LEN {
            problems.push(ChannelListProblem::ChannelNameTooLong {
                index,
                len: name.len(),
                limit: MAX_NAME_LEN,
            });
        }
        if !seen.insert(name.as_str()) {
            problems.push(ChannelListProblem::DuplicateChannel { name: name.clone() });
        }
    }
    problems
}

/// One thing wrong with a [`FeatureSpec`] (or with it for a window length).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecProblem {
    #[error(transparent)]
    Channels(#[from] ChannelListProblem),
    #[error("`stats` names `{stat}` twice")]
    DuplicateStat { stat: Stat },
    #[error("`bands.channels` is empty")]
    NoBandChannels,
    #[error("`bands.channels` names `{name}`, which is not in `channels`")]
    UnknownBandChannel { name: String },
    #[error("`bands.channels` names `{name}` twice")]
    DuplicateBandChannel { name: String },
    #[error("`bands.count` is 0")]
    ZeroBands,
    #[error(
        "the spec produces no features (no `stats`, no `bands`, `raw` false, no `categorical`)"
    )]
    NoFeatures,
    #[error("`categorical[{index}].channel` is empty")]
    EmptyCategoricalChannel { index: usize },
    #[error("`categorical[{index}].channel` is {len} bytes long, limit is {limit}")]
    CategoricalChannelTooLong {
        index: usize,
        len: usize,
        limit: usize,
    },
    #[error("`categorical` names `{name}` twice")]
    DuplicateCategoricalChannel { name: String },
    #[error(
        "`categorical` names `{name}`, which is also in `channels` (a channel is numeric or categorical, not both)"
    )]
    CategoricalAlsoNumeric { name: String },
    #[error("`categorical` channel `{channel}` has no codes")]
    NoCodes { channel: String },
    #[error("`categorical` channel `{channel}` lists code {code} twice")]
    DuplicateCode { channel: String, code: i64 },
    #[error(
        "`categorical` channel `{channel}` has code {code}, beyond ±{limit} (not exact as a reading value)"
    )]
    CodeOutOfRange {
        channel: String,
        code: i64,
        limit: i64,
    },
    #[error("`baseline.time_constant` is {got:?}; it must be more than 0 and at most {limit:?}")]
    BaselineTimeConstant { got: Duration, limit: Duration },
    #[error("`channels` and `categorical` name {count} channels together, limit is {limit}")]
    TooManyWindowChannels { count: usize, limit: usize },
    #[error("window length {window_len} is too short, at least {min} rows are needed")]
    WindowTooShort { window_len: usize, min: usize },
    #[error("window length {window_len} is too long, limit is {limit}")]
    WindowTooLong { window_len: usize, limit: usize },
    #[error(
        "`bands.count` is {count}, but a window of {window_len} rows allows at most {limit} bands"
    )]
    TooManyBands {
        count: usize,
        window_len: usize,
        limit: usize,
    },
    #[error("the spec produces {count} features, limit is {limit}")]
    TooManyFeatures { count: usize, limit: usize },
    #[error("two features would both be named `{name}`")]
    DuplicateFeatureName { name: String },
}

/// Why features could not be computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FeatureError {
    #[error("invalid feature spec: {}", join(problems))]
    InvalidSpec { problems: Vec<SpecProblem> },
    #[error("a window needs at least one channel")]
    NoChannels,
    #[error("{len} values do not split into rows of {channels} channels")]
    Ragged { len: usize, channels: usize },
    #[error("a window needs at least 2 rows, got {rows}")]
    TooFewRows { rows: usize },
    #[error("value at row {row}, channel {channel} is not finite ({value})")]
    NotFinite {
        row: usize,
        channel: usize,
        value: f64,
    },
    #[error("sample interval must be finite and > 0 seconds, got {dt_seconds}")]
    InvalidInterval { dt_seconds: f64 },
    #[error("window has {got} channels, the spec has {expected}")]
    ChannelMismatch { expected: usize, got: usize },
    #[error("window has {got} rows, the extractor was built for {expected}")]
    LengthMismatch { expected: usize, got: usize },
    #[error("output has room for {got} values, {expected} are needed")]
    OutputLength { expected: usize, got: usize },
    #[error("feature {index} (`{name}`) is not finite; the window's values are too large")]
    NonFiniteFeature { index: usize, name: String },
    #[error("the spec has a running baseline: windows need the device's state (`extract_tracked`)")]
    BaselineStateNeeded,
    #[error("baseline: {0}")]
    Baseline(#[from] BaselineError),
    #[error("window {index}: {source}")]
    InWindow {
        index: usize,
        source: Box<FeatureError>,
    },
}

fn join(problems: &[SpecProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl FeatureError {
    /// A short stable code for metrics and logs.
    pub fn reason_code(&self) -> &'static str {
        match self {
            FeatureError::InvalidSpec { .. } => "invalid_feature_spec",
            FeatureError::NoChannels => "no_channels",
            FeatureError::Ragged { .. } => "ragged_window",
            FeatureError::TooFewRows { .. } => "too_few_rows",
            FeatureError::NotFinite { .. } => "non_finite_value",
            FeatureError::InvalidInterval { .. } => "invalid_interval",
            FeatureError::ChannelMismatch { .. } => "channel_mismatch",
            FeatureError::LengthMismatch { .. } => "length_mismatch",
            FeatureError::OutputLength { .. } => "output_length",
            FeatureError::NonFiniteFeature { .. } => "non_finite_feature",
            FeatureError::BaselineStateNeeded => "baseline_state_needed",
            FeatureError::Baseline(BaselineError::NotAfterPrevious { .. }) => {
                "baseline_out_of_order"
            }
            FeatureError::Baseline(BaselineError::ChannelMismatch { .. }) => "baseline_channels",
            FeatureError::Baseline(BaselineError::NonFinite { .. }) => "non_finite_feature",
            FeatureError::InWindow { source, .. } => source.reason_code(),
        }
    }
}

impl FeatureSpec {
    /// Checks everything that does not depend on the window length and
    /// reports every problem at once. [`FeatureExtractor::new`] also checks
    /// what does (too short, too many bands, too many features).
    pub fn validate(&self) -> Result<(), FeatureError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(FeatureError::InvalidSpec { problems })
        }
    }

    fn problems(&self) -> Vec<SpecProblem> {
        let mut problems: Vec<SpecProblem> = channel_list_problems(&self.channels)
            .into_iter()
            .map(SpecProblem::from)
            .collect();
        let mut seen_stats = HashSet::new();
        for &stat in &self.stats {
            if !seen_stats.insert(stat) {
                problems.push(SpecProblem::DuplicateStat { stat });
            }
        }
        if let Some(bands) = &self.bands {
            if bands.channels.is_empty() {
                problems.push(SpecProblem::NoBandChannels);
            }
            let mut seen_bands = HashSet::new();
            for name in &bands.channels {
                if !self.channels.contains(name) {
                    problems.push(SpecProblem::UnknownBandChannel { name: name.clone() });
                }
                if !seen_bands.insert(name.as_str()) {
                    problems.push(SpecProblem::DuplicateBandChannel { name: name.clone() });
                }
            }
            if bands.count == 0 {
                problems.push(SpecProblem::ZeroBands);
            }
        }
        self.categorical_problems(&mut problems);
        if let Some(b) = &self.baseline
            && (b.time_constant.is_zero() || b.time_constant > MAX_TIME_CONSTANT)
        {
            problems.push(SpecProblem::BaselineTimeConstant {
                got: b.time_constant,
                limit: MAX_TIME_CONSTANT,
            });
        }
        if self.stats.is_empty()
            && self.bands.is_none()
            && !self.raw
            && self.categorical.is_empty()
            && self.baseline.is_none()
        {
            problems.push(SpecProblem::NoFeatures);
        }
        problems
    }

    fn categorical_problems(&self, problems: &mut Vec<SpecProblem>) {
        let width = self.channels.len().saturating_add(self.categorical.len());
        if !self.categorical.is_empty() && width > MAX_CHANNELS {
            problems.push(SpecProblem::TooManyWindowChannels {
                count: width,
                limit: MAX_CHANNELS,
            });
        }
        let mut seen = HashSet::new();
        for (index, cat) in self.categorical.iter().enumerate() {
            let name = &cat.channel;
            if name.is_empty() {
                problems.push(SpecProblem::EmptyCategoricalChannel { index });
            } else if name.len() > MAX_NAME_LEN {
                problems.push(SpecProblem::CategoricalChannelTooLong {
                    index,
                    len: name.len(),
                    limit: MAX_NAME_LEN,
                });
            }
            if !seen.insert(name.as_str()) {
                problems.push(SpecProblem::DuplicateCategoricalChannel { name: name.clone() });
            }
            if self.channels.contains(name) {
                problems.push(SpecProblem::CategoricalAlsoNumeric { name: name.clone() });
            }
            if cat.codes.is_empty() {
                problems.push(SpecProblem::NoCodes {
                    channel: name.clone(),
                });
            }
            let mut codes = HashSet::new();
            for &code in &cat.codes {
                if !(-MAX_CODE..=MAX_CODE).contains(&code) {
                    problems.push(SpecProblem::CodeOutOfRange {
                        channel: name.clone(),
                        code,
                        limit: MAX_CODE,
                    });
                } else if !codes.insert(code) {
                    problems.push(SpecProblem::DuplicateCode {
                        channel: name.clone(),
                        code,
                    });
                }
            }
        }
    }

    /// The window's columns: `channels`, then the categorical channels.
    pub fn window_channels(&self) -> Vec<String> {
        self.channels
            .iter()
            .cloned()
            .chain(self.categorical.iter().map(|c| c.channel.clone()))
            .collect()
    }
}

/// One window: `rows × channels` finite values, row-major (`values[t * channels
/// + c]` is channel `c` at row `t`, oldest row first), sampled every
/// `dt_seconds`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Window<'a> {
    values: &'a [f64],
    channels: usize,
    rows: usize,
    dt_seconds: f64,
}

impl<'a> Window<'a> {
    /// Checks the shape (whole rows, at least 2), that every value is finite
    /// (the gateway flags gaps; it never fills them with NaN) and that the
    /// sample interval is finite and positive.
    pub fn try_new(
        values: &'a [f64],
        channels: usize,
        dt_seconds: f64,
    ) -> Result<Self, FeatureError> {
        if channels == 0 {
            return Err(FeatureError::NoChannels);
        }
        if !values.len().is_multiple_of(channels) {
            return Err(FeatureError::Ragged {
                len: values.len(),
                channels,
            });
        }
        let rows = values.len() / channels;
        if rows < 2 {
            return Err(FeatureError::TooFewRows { rows });
        }
        if !(dt_seconds.is_finite() && dt_seconds > 0.0) {
            return Err(FeatureError::InvalidInterval { dt_seconds });
        }
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(FeatureError::NotFinite {
                row: i / channels,
                channel: i % channels,
                value: values[i],
            });
        }
        Ok(Window {
            values,
            channels,
            rows,
            dt_seconds,
        })
    }

    /// The values, row-major.
    pub fn values(&self) -> &'a [f64] {
        self.values
    }

    pub fn channels(&self) -> usize {
        self.channels
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Seconds between two rows.
    pub fn dt_seconds(&self) -> f64 {
        self.dt_seconds
    }
}

/// The per-channel statistics of one window column.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Moments {
    mean: f64,
    std: f64,
    min: f64,
    max: f64,
    last: f64,
    slope: f64,
    skew: f64,
    kurtosis: f64,
    repeats: f64,
}

impl Moments {
    fn get(&self, stat: Stat) -> f64 {
        match stat {
            Stat::Mean => self.mean,
            Stat::Std => self.std,
            Stat::Min => self.min,
            Stat::Max => self.max,
            Stat::Last => self.last,
            Stat::Slope => self.slope,
            Stat::Rms => self.mean.hypot(self.std),
            Stat::PeakToPeak => self.max - self.min,
            Stat::Skew => self.skew,
            Stat::Kurtosis => self.kurtosis,
            Stat::Repeats => self.repeats,
        }
    }
}

/// Column `col` of a row-major matrix with `stride` columns.
fn column(values: &[f64], stride: usize, col: usize) -> impl Iterator<Item = f64> + '_ {
    values[col..].iter().step_by(stride).copied()
}

/// One channel's running sums over the two passes of [`moments`].
#[derive(Clone, Copy, Debug, Default)]
struct Acc {
    sum: f64,
    min: f64,
    max: f64,
    /// The first-pass mean.
    mean0: f64,
    /// `max |x − mean0|`: every scaled deviation lies in [−1, 1].
    scale: f64,
    /// An exact power of two lifting subnormal deviations, so `inv` is finite.
    pre: f64,
    /// `1 / (scale · pre)`.
    inv: f64,
    /// `Σd, Σd², Σd³, Σd⁴, Σk·d` of `d = (x − mean0)·pre·inv`, `k = i − (N−1)/2`.
    sums: [f64; 5],
    /// The previous row's value (NaN before the first row: equal to nothing).
    prev: f64,
    /// Rows equal to the row before.
    repeats: u32,
}

/// Statistics of the first `acc.len()` columns of a row-major window with
/// `stride` columns and `n ≥ 2` rows, into `out` (one per channel); the
/// columns beyond (categorical) are skipped. Both passes walk the rows, so
/// the channels' accumulations interleave instead of waiting on one another.
fn moments(values: &[f64], stride: usize, dt: f64, acc: &mut [Acc], out: &mut [Moments]) {
    for a in acc.iter_mut() {
        *a = Acc {
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            prev: f64::NAN,
            ..Acc::default()
        };
    }
    for row in values.chunks_exact(stride) {
        for (a, &x) in acc.iter_mut().zip(row) {
            a.sum += x;
            a.min = a.min.min(x);
            a.max = a.max.max(x);
            a.repeats += u32::from(x == a.prev);
            a.prev = x;
        }
    }
    let nf = (values.len() / stride) as f64;
    for a in acc.iter_mut() {
        a.mean0 = a.sum / nf;
        if a.min == a.max {
            continue; // constant: pre = inv = 0, every d is 0
        }
        a.scale = (a.max - a.mean0).max(a.mean0 - a.min);
        a.pre = if a.scale < 1e-300 {
            2f64.powi(600)
        } else {
            1.0
        };
        a.inv = 1.0 / (a.scale * a.pre);
    }
    let half = (nf - 1.0) / 2.0;
    for (i, row) in values.chunks_exact(stride).enumerate() {
        let k = i as f64 - half;
        for (a, &x) in acc.iter_mut().zip(row) {
            let d = (x - a.mean0) * a.pre * a.inv;
            let d2 = d * d;
            a.sums[0] += d;
            a.sums[1] += d2;
            a.sums[2] += d2 * d;
            a.sums[3] += d2 * d2;
            a.sums[4] += k * d;
        }
    }
    let last_row = &values[values.len() - stride..];
    for ((a, m), &last) in acc.iter().zip(out.iter_mut()).zip(last_row) {
        *m = finish(a, last, nf, dt);
    }
}

/// The statistics from one channel's sums.
fn finish(a: &Acc, last: f64, nf: f64, dt: f64) -> Moments {
    let (min, max) = (a.min, a.max);
    let repeats = f64::from(a.repeats);
    if min == max {
        return Moments {
            mean: min,
            std: 0.0,
            min,
            max,
            last,
            slope: 0.0,
            skew: 0.0,
            kurtosis: 0.0,
            repeats,
        };
    }
    let [s1, s2, s3, s4, sk] = a.sums;
    // Exact shift of the raw sums to the corrected mean mean0 + c·scale.
    let c = s1 / nf;
    let (a2, a3, a4) = (s2 / nf, s3 / nf, s4 / nf);
    let m2 = (a2 - c * c).max(0.0);
    let m3 = a3 - 3.0 * c * a2 + 2.0 * c * c * c;
    let m4 = a4 - 4.0 * c * a3 + 6.0 * c * c * a2 - 3.0 * c * c * c * c;
    let sum_k2 = nf * (nf * nf - 1.0) / 12.0;
    let (skew, kurtosis) = if m2 > 0.0 {
        (m3 / (m2 * m2.sqrt()), m4 / (m2 * m2) - 3.0)
    } else {
        (0.0, 0.0)
    };
    Moments {
        mean: a.mean0 + c * a.scale,
        std: m2.sqrt() * a.scale,
        min,
        max,
        last,
        slope: sk / sum_k2 * a.scale / dt,
        skew,
        kurtosis,
        repeats,
    }
}

/// Turns windows into feature vectors for one [`FeatureSpec`] and window
/// length. Build one per worker thread (it is `Send`, and `Clone` is cheap:
/// the FFT plan is shared); `extract` reuses its buffers and does not allocate.
#[derive(Clone)]
pub struct FeatureExtractor {
    spec: FeatureSpec,
    window_len: usize,
    names: Vec<String>,
    /// Column index of each band channel, in `bands.channels` order.
    band_columns: Vec<usize>,
    /// `band_edges[b] .. band_edges[b + 1]` are the bins of band `b`.
    band_edges: Vec<usize>,
    detrend: bool,
    fft: Option<Arc<dyn Fft<f64>>>,
    hann: Vec<f64>,
    buffer: Vec<Complex<f64>>,
    scratch: Vec<Complex<f64>>,
    acc: Vec<Acc>,
    moments: Vec<Moments>,
    /// Channel means for the running baseline.
    means: Vec<f64>,
}

impl fmt::Debug for FeatureExtractor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FeatureExtractor")
            .field("spec", &self.spec)
            .field("window_len", &self.window_len)
            .field("features", &self.names.len())
            .field("band_edges", &self.band_edges)
            .finish_non_exhaustive()
    }
}

impl FeatureExtractor {
    /// Validates `spec` for windows of `window_len` rows (reporting every
    /// problem at once), names the features and plans the FFT.
    pub fn new(spec: &FeatureSpec, window_len: usize) -> Result<Self, FeatureError> {
        let mut problems = spec.problems();
        if window_len < 2 {
            problems.push(SpecProblem::WindowTooShort { window_len, min: 2 });
        }
        if window_len > MAX_WINDOW_LEN {
            problems.push(SpecProblem::WindowTooLong {
                window_len,
                limit: MAX_WINDOW_LEN,
            });
        }
        if let Some(bands) = &spec.bands
            && window_len >= 2
            && bands.count > window_len / 2
        {
            problems.push(SpecProblem::TooManyBands {
                count: bands.count,
                window_len,
                limit: window_len / 2,
            });
        }
        if !problems.is_empty() {
            return Err(FeatureError::InvalidSpec { problems });
        }
        let count = feature_count(spec, window_len).filter(|&n| n <= MAX_FEATURES);
        let Some(count) = count else {
            return Err(FeatureError::InvalidSpec {
                problems: vec![SpecProblem::TooManyFeatures {
                    count: feature_count(spec, window_len).unwrap_or(usize::MAX),
                    limit: MAX_FEATURES,
                }],
            });
        };
        let names = feature_names(spec, window_len, count);
        let mut seen = HashSet::with_capacity(names.len());
        let duplicates: Vec<SpecProblem> = names
            .iter()
            .filter(|n| !seen.insert(n.as_str()))
            .map(|name| SpecProblem::DuplicateFeatureName { name: name.clone() })
            .collect();
        if !duplicates.is_empty() {
            return Err(FeatureError::InvalidSpec {
                problems: duplicates,
            });
        }

        let mut extractor = FeatureExtractor {
            spec: spec.clone(),
            window_len,
            names,
            band_columns: Vec::new(),
            band_edges: Vec::new(),
            detrend: false,
            fft: None,
            hann: Vec::new(),
            buffer: Vec::new(),
            scratch: Vec::new(),
            acc: vec![Acc::default(); spec.channels.len()],
            moments: vec![Moments::default(); spec.channels.len()],
            means: vec![0.0; spec.channels.len()],
        };
        if let Some(bands) = &spec.bands {
            extractor.band_columns = bands
                .channels
                .iter()
                .filter_map(|b| spec.channels.iter().position(|c| c == b))
                .collect();
            extractor.band_edges = band_edges(window_len, bands.count);
            extractor.detrend = bands.detrend;
            let fft = FftPlanner::new().plan_fft_forward(window_len);
            extractor.scratch = vec![Complex::default(); fft.get_inplace_scratch_len()];
            extractor.buffer = vec![Complex::default(); window_len];
            extractor.fft = Some(fft);
            let n = window_len as f64;
            extractor.hann = (0..window_len)
                .map(|i| {
                    let s = (std::f64::consts::PI * i as f64 / n).sin();
                    s * s
                })
                .collect();
        }
        Ok(extractor)
    }

    pub fn spec(&self) -> &FeatureSpec {
        &self.spec
    }

    /// Rows per window.
    pub fn window_len(&self) -> usize {
        self.window_len
    }

    /// The features' names, in output order (see the module docs).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Features per window.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Always false: a valid spec produces at least one feature.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Writes the features of `window` into `out` (`out.len() == self.len()`).
    /// On error the contents of `out` are unspecified. A spec with a
    /// running baseline is refused ([`FeatureError::BaselineStateNeeded`]):
    /// use [`extract_tracked`](Self::extract_tracked).
    pub fn extract(&mut self, window: &Window<'_>, out: &mut [f64]) -> Result<(), FeatureError> {
        if self.spec.baseline.is_some() {
            return Err(FeatureError::BaselineStateNeeded);
        }
        self.extract_inner(window, None, out)
    }

    /// [`extract`](Self::extract) for one device's window ending at `end`
    /// (the time of its last row), with that device's baseline `state`,
    /// which it advances. Windows of a device must come in time order. A
    /// spec without a baseline leaves `state` alone. On error `state` is
    /// unchanged.
    pub fn extract_tracked(
        &mut self,
        window: &Window<'_>,
        end: Timestamp,
        state: &mut BaselineState,
        out: &mut [f64],
    ) -> Result<(), FeatureError> {
        self.extract_inner(window, Some((end, state)), out)
    }

    fn extract_inner(
        &mut self,
        window: &Window<'_>,
        tracked: Option<(Timestamp, &mut BaselineState)>,
        out: &mut [f64],
    ) -> Result<(), FeatureError> {
        let channels = self.spec.channels.len();
        // The window's width: numeric channels, then categorical ones.
        let stride = channels + self.spec.categorical.len();
        if window.channels != stride {
            return Err(FeatureError::ChannelMismatch {
                expected: stride,
                got: window.channels,
            });
        }
        if window.rows != self.window_len {
            return Err(FeatureError::LengthMismatch {
                expected: self.window_len,
                got: window.rows,
            });
        }
        if out.len() != self.names.len() {
            return Err(FeatureError::OutputLength {
                expected: self.names.len(),
                got: out.len(),
            });
        }
        let (n, values) = (self.window_len, window.values);
        let mut pos = 0;
        if !self.spec.stats.is_empty() {
            moments(
                values,
                stride,
                window.dt_seconds,
                &mut self.acc,
                &mut self.moments,
            );
            for m in &self.moments {
                for &stat in &self.spec.stats {
                    out[pos] = m.get(stat);
                    pos += 1;
                }
            }
        }
        if let Some(fft) = &self.fft {
            for &col in &self.band_columns {
                let mean = if self.detrend {
                    column_mean(values, stride, col, n)
                } else {
                    0.0
                };
                for ((b, x), w) in self
                    .buffer
                    .iter_mut()
                    .zip(column(values, stride, col))
                    .zip(&self.hann)
                {
                    *b = Complex::new(w * (x - mean), 0.0);
                }
                fft.process_with_scratch(&mut self.buffer, &mut self.scratch);
                let nf = n as f64;
                for edge in self.band_edges.windows(2) {
                    let mut energy = 0.0;
                    for k in edge[0]..edge[1] {
                        let weight = if k == 0 || 2 * k == n { 1.0 } else { 2.0 };
                        energy += weight * self.buffer[k].norm_sqr();
                    }
                    out[pos] = energy / nf;
                    pos += 1;
                }
            }
        }
        if self.spec.raw {
            for row in values.chunks_exact(stride) {
                out[pos..pos + channels].copy_from_slice(&row[..channels]);
                pos += channels;
            }
        }
        // Before the one-hot section (see the layout in the module docs).
        let baseline_at = pos;
        if self.spec.baseline.is_some() {
            for (c, m) in self.means.iter_mut().enumerate() {
                *m = column_mean(values, stride, c, n);
            }
            // Written once the rest is known to be finite (below).
            out[pos..pos + channels].fill(0.0);
            pos += channels;
        }
        let last_row = &values[values.len() - stride..];
        for (cat, &v) in self.spec.categorical.iter().zip(&last_row[channels..]) {
            for &code in &cat.codes {
                // Exact: |code| ≤ 2^53 is an exact f64 (validated), so a
                // non-integer or unseen value matches no code.
                out[pos] = if v == code as f64 { 1.0 } else { 0.0 };
                pos += 1;
            }
        }
        if let Some(index) = out.iter().position(|v| !v.is_finite()) {
            return Err(FeatureError::NonFiniteFeature {
                index,
                name: self.names[index].clone(),
            });
        }
        // Last, so a window refused above does not move the baseline.
        if let (Some(spec), Some((end, state))) = (&self.spec.baseline, tracked) {
            let dev = &mut out[baseline_at..baseline_at + channels];
            match state.advance(spec, end, &self.means, dev) {
                Ok(()) => {}
                Err(BaselineError::NonFinite { channel }) => {
                    let index = baseline_at + channel;
                    return Err(FeatureError::NonFiniteFeature {
                        index,
                        name: self.names[index].clone(),
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Features of many windows into a row-major matrix: row `i` of `out`
    /// (`self.len()` values) holds the features of `windows[i]`. The first
    /// failing window stops the batch and is named in the error.
    pub fn extract_many(
        &mut self,
        windows: &[Window<'_>],
        out: &mut [f64],
    ) -> Result<(), FeatureError> {
        let len = self.len();
        let expected = windows.len().saturating_mul(len);
        if out.len() != expected || len == 0 {
            return Err(FeatureError::OutputLength {
                expected,
                got: out.len(),
            });
        }
        for (index, (window, row)) in windows.iter().zip(out.chunks_exact_mut(len)).enumerate() {
            self.extract(window, row)
                .map_err(|e| FeatureError::InWindow {
                    index,
                    source: Box::new(e),
                })?;
        }
        Ok(())
    }
}

/// Mean of a column, exactly the value when the column is constant (so a
/// detrended constant channel is exactly zero).
fn column_mean(values: &[f64], stride: usize, col: usize, n: usize) -> f64 {
    let first = values[col];
    let (mut sum, mut constant) = (0.0, true);
    for x in column(values, stride, col) {
        sum += x;
        constant &= x == first;
    }
    if constant { first } else { sum / n as f64 }
}

/// Feature count, `None` on overflow.
fn feature_count(spec: &FeatureSpec, window_len: usize) -> Option<usize> {
    let c = spec.channels.len();
    let stats = c.checked_mul(spec.stats.len())?;
    let bands = match &spec.bands {
        Some(b) => b.channels.len().checked_mul(b.count)?,
        None => 0,
    };
    let raw = if spec.raw {
        c.checked_mul(window_len)?
    } else {
        0
    };
    let one_hot = spec
        .categorical
        .iter()
        .try_fold(0usize, |n, cat| n.checked_add(cat.codes.len()))?;
    let baseline = if spec.baseline.is_some() { c } else { 0 };
    stats
        .checked_add(bands)?
        .checked_add(raw)?
        .checked_add(baseline)?
        .checked_add(one_hot)
}

fn feature_names(spec: &FeatureSpec, window_len: usize, count: usize) -> Vec<String> {
    let mut names = Vec::with_capacity(count);
    for channel in &spec.channels {
        for stat in &spec.stats {
            names.push(format!("{channel}.{stat}"));
        }
    }
    if let Some(bands) = &spec.bands {
        for channel in &bands.channels {
            for b in 0..bands.count {
                names.push(format!("{channel}.band{b}"));
            }
        }
    }
    if spec.raw {
        for t in 0..window_len {
            for channel in &spec.channels {
                names.push(format!("raw.t{t}.{channel}"));
            }
        }
    }
    if spec.baseline.is_some() {
        for channel in &spec.channels {
            names.push(format!("{channel}.baseline_dev"));
        }
    }
    for cat in &spec.categorical {
        for code in &cat.codes {
            names.push(format!("{}={code}", cat.channel));
        }
    }
    names
}

/// First bin of each of `count` bands, then one past the last bin: bin `k`
/// belongs to band `min(⌊2kK/N⌋, K−1)`. Needs `1 ≤ count ≤ n / 2`.
fn band_edges(n: usize, count: usize) -> Vec<usize> {
    let bins = n / 2 + 1;
    let mut edges = Vec::with_capacity(count + 1);
    edges.push(0);
    for k in 1..bins {
        let band = ((2 * k * count) / n).min(count - 1);
        let previous = ((2 * (k - 1) * count) / n).min(count - 1);
        if band != previous {
            edges.push(k);
        }
    }
    edges.push(bins);
    edges
}

pub mod baseline;
pub use baseline::{BaselineError, BaselineSpec, BaselineState, MAX_TIME_CONSTANT};

#[cfg(test)]
mod reference;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(channels: &[&str], stats: &[Stat]) -> FeatureSpec {
        FeatureSpec {
            baseline: None,
            channels: channels.iter().map(|c| c.to_string()).collect(),
            stats: stats.to_vec(),
            bands: None,
            raw: false,
            categorical: Vec::new(),
        }
    }

    fn features(spec: &FeatureSpec, values: &[f64], dt: f64) -> Vec<f64> {
        let window = Window::try_new(values, spec.channels.len(), dt).expect("valid window");
        let mut extractor = FeatureExtractor::new(spec, window.rows()).expect("valid spec");
        let mut out = vec![f64::NAN; extractor.len()];
        extractor.extract(&window, &mut out).expect("extracts");
        out
    }

    fn assert_close(got: f64, want: f64, what: &str) {
        let tol = 1e-12 * want.abs().max(1.0);
        assert!((got - want).abs() <= tol, "{what}: got {got}, want {want}");
    }

    fn problems(result: Result<impl fmt::Debug, FeatureError>) -> Vec<SpecProblem> {
        match result {
            Err(FeatureError::InvalidSpec { problems }) => problems,
            other => panic!("expected InvalidSpec, got {other:?}"),
        }
    }

    #[test]
    fn every_stat_of_a_small_window_matches_the_hand_computed_value() {
        // x = 1, 2, 4, 7 every 0.5 s: mean 3.5, deviations −2.5 −1.5 0.5 3.5.
        let out = features(&spec(&["x"], &Stat::ALL), &[1.0, 2.0, 4.0, 7.0], 0.5);
        let m2: f64 = 21.0 / 4.0; // (6.25 + 2.25 + 0.25 + 12.25) / 4
        let m3 = 24.0 / 4.0; // (−15.625 − 3.375 + 0.125 + 42.875) / 4
        let m4 = 194.25 / 4.0; // 39.0625 + 5.0625 + 0.0625 + 150.0625
        let want = [
            3.5,                  // mean
            m2.sqrt(),            // std
            1.0,                  // min
            7.0,                  // max
            7.0,                  // last
            4.0,                  // slope: Σk·d = 10, Σk² = 5 → 2 per row → 4 per second
            17.5f64.sqrt(),       // rms: (1 + 4 + 16 + 49) / 4
            6.0,                  // peak_to_peak
            m3 / m2.powf(1.5),    // skew
            m4 / (m2 * m2) - 3.0, // kurtosis
            0.0,                  // repeats: no two neighbours equal
        ];
        for ((stat, got), want) in Stat::ALL.iter().zip(&out).zip(want) {
            assert_close(*got, want, stat.name());
        }
    }

    #[test]
    fn repeats_count_rows_equal_to_the_row_before() {
        let out = features(
            &spec(&["x", "y"], &[Stat::Repeats]),
            // x: 1 1 2 2 2 3 → 3 rows equal the one before; y constant → 5.
            &[1.0, 5.0, 1.0, 5.0, 2.0, 5.0, 2.0, 5.0, 2.0, 5.0, 3.0, 5.0],
            1.0,
        );
        assert_close(out[0], 3.0, "x.repeats");
        assert_close(out[1], 5.0, "y.repeats");
        // Equal values that are not neighbours do not count.
        let out = features(&spec(&["x"], &[Stat::Repeats]), &[1.0, 2.0, 1.0, 2.0], 1.0);
        assert_close(out[0], 0.0, "alternating");
    }

    #[test]
    fn skew_and_kurtosis_of_a_two_point_distribution_match_the_bernoulli_formulas() {
        // One 10 among three 0: Bernoulli(p = 1/4), skew (1−2p)/√(p(1−p)) = 2/√3,
        // excess kurtosis (1 − 6p(1−p)) / (p(1−p)) = −2/3.
        let out = features(
            &spec(&["x"], &[Stat::Skew, Stat::Kurtosis]),
            &[0.0, 0.0, 10.0, 0.0],
            1.0,
        );
        assert_close(out[0], 2.0 / 3f64.sqrt(), "skew");
        assert_close(out[1], -2.0 / 3.0, "kurtosis");
    }

    #[test]
    fn a_two_row_window_has_the_slope_of_its_two_points() {
        let out = features(
            &spec(
                &["x"],
                &[Stat::Slope, Stat::Std, Stat::Skew, Stat::Kurtosis],
            ),
            &[3.0, 5.0],
            2.0,
        );
        assert_eq!(out, vec![1.0, 1.0, 0.0, -2.0]);
    }

    #[test]
    fn a_ramp_has_its_rate_as_slope_whatever_its_offset() {
        let dt = 0.1;
        let values: Vec<f64> = (0..50).map(|i| 1e4 - 3.0 * i as f64 * dt).collect();
        let out = features(&spec(&["x"], &[Stat::Slope, Stat::Skew]), &values, dt);
        assert_close(out[0], -3.0, "slope");
        assert!(out[1].abs() < 1e-12, "a ramp is symmetric: skew {}", out[1]);
    }

    #[test]
    fn a_constant_window_gives_exact_zeros_and_no_nan() {
        let values = [0.1; 7];
        let mut spec = spec(&["x"], &Stat::ALL);
        spec.bands = Some(BandSpec {
            channels: vec!["x".into()],
            count: 3,
            detrend: true,
        });
        let out = features(&spec, &values, 1.0);
        // ..., kurtosis 0, repeats N − 1.
        let want = [0.1, 0.0, 0.1, 0.1, 0.1, 0.0, 0.1, 0.0, 0.0, 0.0, 6.0];
        assert_eq!(&out[..11], &want);
        assert_eq!(
            &out[11..],
            &[0.0, 0.0, 0.0],
            "detrended constant has no energy"
        );
    }

    #[test]
    fn channels_are_read_as_columns_of_a_row_major_window() {
        // Two channels, three rows: x = 1 2 3, y = 10 10 40.
        let values = [1.0, 10.0, 2.0, 10.0, 3.0, 40.0];
        let out = features(&spec(&["x", "y"], &[Stat::Mean, Stat::Last]), &values, 1.0);
        assert_eq!(out, vec![2.0, 3.0, 20.0, 40.0]);
    }

    #[test]
    fn names_are_stable_and_follow_the_documented_order() {
        let spec = FeatureSpec {
            baseline: None,
            channels: vec!["temperature".into(), "vibration".into()],
            stats: vec![Stat::Mean, Stat::PeakToPeak],
            bands: Some(BandSpec {
                channels: vec!["vibration".into()],
                count: 2,
                detrend: true,
            }),
            raw: true,
            categorical: Vec::new(),
        };
        let extractor = FeatureExtractor::new(&spec, 4).expect("valid");
        let want = [
            "temperature.mean",
            "temperature.peak_to_peak",
            "vibration.mean",
            "vibration.peak_to_peak",
            "vibration.band0",
            "vibration.band1",
            "raw.t0.temperature",
            "raw.t0.vibration",
            "raw.t1.temperature",
            "raw.t1.vibration",
            "raw.t2.temperature",
            "raw.t2.vibration",
            "raw.t3.temperature",
            "raw.t3.vibration",
        ];
        assert_eq!(extractor.names(), want);
        assert_eq!(extractor.len(), want.len());
    }

    #[test]
    fn the_raw_part_is_the_window_itself() {
        let mut spec = spec(&["a", "b"], &[]);
        spec.raw = true;
        let values = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        assert_eq!(features(&spec, &values, 1.0), values.to_vec());
    }

    #[test]
    fn band_edges_split_zero_to_nyquist_into_equal_frequency_ranges() {
        // N = 10: bins 0..=5 at 0, 0.1, …, 0.5 (Nyquist) cycles per sample.
        assert_eq!(band_edges(10, 5), vec![0, 1, 2, 3, 4, 6]);
        assert_eq!(band_edges(10, 1), vec![0, 6]);
        // N = 11: bins 0..=5; bin k is in band ⌊10k/11⌋.
        assert_eq!(band_edges(11, 5), vec![0, 2, 3, 4, 5, 6]);
        // N = 128, 8 bands: 8 bins each, the Nyquist bin joins the last.
        let edges = band_edges(128, 8);
        assert_eq!(edges, vec![0, 8, 16, 24, 32, 40, 48, 56, 65]);
    }

    fn band_spec(count: usize, detrend: bool) -> FeatureSpec {
        FeatureSpec {
            baseline: None,
            channels: vec!["v".into()],
            stats: vec![],
            bands: Some(BandSpec {
                channels: vec!["v".into()],
                count,
                detrend,
            }),
            raw: false,
            categorical: Vec::new(),
        }
    }

    #[test]
    fn a_pure_sine_puts_its_energy_in_the_band_of_its_frequency() {
        // 1 kHz sampling, 128 samples: bin k is k·7.8125 Hz; 8 bands of 8 bins.
        // A sine on bin 20 (156.25 Hz) leaks under Hann into bins 19 and 21,
        // all in band 2 (bins 16..24).
        let (n, dt, amplitude) = (128, 1e-3, 2.5);
        let values: Vec<f64> = (0..n)
            .map(|i| amplitude * (2.0 * std::f64::consts::PI * 20.0 * i as f64 / n as f64).sin())
            .collect();
        let out = features(&band_spec(8, true), &values, dt);
        let expected = 3.0 * n as f64 * amplitude * amplitude / 16.0;
        assert!(
            ((out[2] - expected) / expected).abs() < 1e-12,
            "band 2 holds {}, want {expected}",
            out[2]
        );
        for (b, e) in out.iter().enumerate().filter(|(b, _)| *b != 2) {
            assert!(e.abs() < 1e-20 * expected, "band {b} holds {e}");
        }
    }

    #[test]
    fn detrending_keeps_an_offset_out_of_the_lowest_band() {
        let n = 64;
        let values: Vec<f64> = (0..n)
            .map(|i| 100.0 + (2.0 * std::f64::consts::PI * 12.0 * i as f64 / n as f64).sin())
            .collect();
        let detrended = features(&band_spec(4, true), &values, 1.0);
        let raw = features(&band_spec(4, false), &values, 1.0);
        assert!(detrended[0] < 1e-18, "band 0 detrended: {}", detrended[0]);
        assert!(raw[0] > 1e5, "band 0 with the offset: {}", raw[0]);
        assert!((detrended[1] - raw[1]).abs() < 1e-9 * raw[1]);
    }

    fn windowed_energy(values: &[f64], detrend: bool) -> f64 {
        let n = values.len() as f64;
        let mean = if detrend {
            values.iter().sum::<f64>() / n
        } else {
            0.0
        };
        values
            .iter()
            .enumerate()
            .map(|(i, x)| {
                let w = 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n).cos();
                (w * (x - mean)).powi(2)
            })
            .sum()
    }

    #[test]
    fn too_many_bands_for_the_window_are_refused() {
        let result = FeatureExtractor::new(&band_spec(6, true), 11);
        assert_eq!(
            problems(result),
            vec![SpecProblem::TooManyBands {
                count: 6,
                window_len: 11,
                limit: 5
            }]
        );
        assert!(FeatureExtractor::new(&band_spec(5, true), 11).is_ok());
    }

    #[test]
    fn validation_reports_every_problem_at_once() {
        let spec = FeatureSpec {
            baseline: None,
            channels: vec!["a".into(), "a".into(), String::new()],
            stats: vec![Stat::Mean, Stat::Mean],
            bands: Some(BandSpec {
                channels: vec!["zzz".into(), "a".into(), "a".into()],
                count: 0,
                detrend: true,
            }),
            raw: false,
            categorical: Vec::new(),
        };
        assert_eq!(
            problems(spec.validate()),
            vec![
                ChannelListProblem::DuplicateChannel { name: "a".into() }.into(),
                ChannelListProblem::EmptyChannelName { index: 2 }.into(),
                SpecProblem::DuplicateStat { stat: Stat::Mean },
                SpecProblem::UnknownBandChannel { name: "zzz".into() },
                SpecProblem::DuplicateBandChannel { name: "a".into() },
                SpecProblem::ZeroBands,
            ]
        );
        let message = FeatureExtractor::new(&spec, 1)
            .expect_err("invalid")
            .to_string();
        assert!(message.contains("`bands.count` is 0"), "{message}");
        assert!(
            message.contains("window length 1 is too short"),
            "{message}"
        );
    }

    #[test]
    fn a_spec_without_channels_or_features_is_refused() {
        let empty = FeatureSpec {
            baseline: None,
            channels: vec![],
            stats: vec![],
            bands: None,
            raw: false,
            categorical: Vec::new(),
        };
        assert_eq!(
            problems(empty.validate()),
            vec![
                ChannelListProblem::NoChannels.into(),
                SpecProblem::NoFeatures
            ]
        );
        let no_band_channels = FeatureSpec {
            bands: Some(BandSpec {
                channels: vec![],
                count: 1,
                detrend: false,
            }),
            ..spec(&["x"], &[])
        };
        assert_eq!(
            problems(no_band_channels.validate()),
            vec![SpecProblem::NoBandChannels]
        );
    }

    #[test]
    fn colliding_feature_names_are_refused() {
        // Channel "raw.t0" has stat "raw.t0.mean"; channel "mean" at row 0 is too.
        let mut spec = spec(&["raw.t0", "mean"], &[Stat::Mean]);
        spec.raw = true;
        assert_eq!(
            problems(FeatureExtractor::new(&spec, 2)),
            vec![SpecProblem::DuplicateFeatureName {
                name: "raw.t0.mean".into()
            }]
        );
    }

    fn cat(channel: &str, codes: &[i64]) -> CategoricalSpec {
        CategoricalSpec {
            channel: channel.into(),
            codes: codes.to_vec(),
        }
    }

    fn with_baseline(spec: FeatureSpec, secs: u64) -> FeatureSpec {
        FeatureSpec {
            baseline: Some(BaselineSpec {
                time_constant: Duration::from_secs(secs),
            }),
            ..spec
        }
    }

    #[test]
    fn baseline_deviations_follow_the_device_state_and_precede_the_one_hot_section() {
        // Columns: x, y, then mode. τ = 60 s, windows 30 s apart.
        let sp = FeatureSpec {
            categorical: vec![cat("mode", &[0, 1])],
            ..with_baseline(spec(&["x", "y"], &[Stat::Max]), 60)
        };
        let mut fx = FeatureExtractor::new(&sp, 2).expect("valid spec");
        assert_eq!(
            fx.names(),
            [
                "x.max",
                "y.max",
                "x.baseline_dev",
                "y.baseline_dev",
                "mode=0",
                "mode=1"
            ]
        );
        let s = 1_000_000_000;
        let mut state = BaselineState::new();
        let mut out = vec![f64::NAN; fx.len()];
        // Stateless extraction cannot compute the deviations.
        let w0 = [1.0, 10.0, 0.0, 3.0, 10.0, 1.0]; // means 2, 10
        let w0 = Window::try_new(&w0, 3, 1.0).expect("valid");
        assert_eq!(
            fx.extract(&w0, &mut out),
            Err(FeatureError::BaselineStateNeeded)
        );
        fx.extract_tracked(&w0, Timestamp(0), &mut state, &mut out)
            .expect("first window");
        assert_eq!(out, [3.0, 10.0, 0.0, 0.0, 0.0, 1.0]);
        // Means 6 and 8: deviations from (2, 10), then α = 1 − e^(−1/2).
        let w1 = [6.0, 8.0, 1.0, 6.0, 8.0, 0.0];
        let w1 = Window::try_new(&w1, 3, 1.0).expect("valid");
        fx.extract_tracked(&w1, Timestamp(30 * s), &mut state, &mut out)
            .expect("second window");
        assert_eq!(out, [6.0, 8.0, 4.0, -2.0, 1.0, 0.0]);
        let alpha = 1.0 - (-0.5f64).exp();
        let want = [2.0 + alpha * 4.0, 10.0 - alpha * 2.0];
        for (b, w) in state.levels().iter().zip(want) {
            assert!((b - w).abs() < 1e-12, "{b} vs {w}");
        }
        // A window from the past is refused and leaves the state alone.
        let before = state.clone();
        assert_eq!(
            fx.extract_tracked(&w1, Timestamp(30 * s), &mut state, &mut out)
                .map_err(|e| e.reason_code()),
            Err("baseline_out_of_order")
        );
        assert_eq!(state, before);
        // A non-finite feature is refused before the state moves.
        let huge = [f64::MAX, 0.0, -f64::MAX, 0.0];
        let huge = Window::try_new(&huge, 2, 1.0).expect("finite values");
        let mut wide = FeatureExtractor::new(
            &with_baseline(spec(&["x", "y"], &[Stat::PeakToPeak]), 60),
            2,
        )
        .expect("valid spec");
        let mut out = vec![0.0; wide.len()];
        let mut fresh = BaselineState::new();
        assert!(matches!(
            wide.extract_tracked(&huge, Timestamp(0), &mut fresh, &mut out),
            Err(FeatureError::NonFiniteFeature { index: 0, .. })
        ));
        assert_eq!(fresh, BaselineState::new());
    }

    #[test]
    fn a_spec_without_a_baseline_ignores_the_state_and_serializes_as_before() {
        let plain = spec(&["x"], &[Stat::Mean]);
        let json = serde_json::to_string(&plain).expect("serializes");
        assert!(!json.contains("baseline"), "{json}");
        let mut fx = FeatureExtractor::new(&plain, 2).expect("valid");
        let mut state = BaselineState::new();
        let mut out = [0.0];
        let w = Window::try_new(&[1.0, 3.0], 1, 1.0).expect("valid");
        fx.extract_tracked(&w, Timestamp(0), &mut state, &mut out)
            .expect("extracts");
        assert_eq!(out, [2.0]);
        assert_eq!(state, BaselineState::new());
        // A baseline alone is a feature spec; a zero or huge τ is not.
        let only = FeatureSpec {
            stats: vec![],
            ..with_baseline(spec(&["x"], &[]), 600)
        };
        assert_eq!(only.validate(), Ok(()));
        let back: FeatureSpec =
            serde_json::from_str(&serde_json::to_string(&only).expect("ser")).expect("de");
        assert_eq!(back, only);
        for bad in [0, 400 * 86_400] {
            let sp = with_baseline(spec(&["x"], &[Stat::Mean]), bad);
            assert!(matches!(
                problems(sp.validate()).as_slice(),
                [SpecProblem::BaselineTimeConstant { .. }]
            ));
        }
    }

    #[test]
    fn categorical_channels_are_one_hot_encoded_from_the_last_row_only() {
        // Window columns: x, then mode, then valve. 3 rows.
        let spec = FeatureSpec {
            raw: true,
            categorical: vec![cat("mode", &[2, 0, 1]), cat("valve", &[1, 0])],
            ..spec(&["x"], &[Stat::Mean, Stat::Max])
        };
        #[rustfmt::skip]
        let values = [
            1.0, 2.0, 0.0,
            2.0, 2.0, 1.0,
            6.0, 1.0, 7.0, // last row: mode 1; valve 7 is no listed code
        ];
        let window = Window::try_new(&values, 3, 1.0).expect("valid");
        let mut x = FeatureExtractor::new(&spec, 3).expect("valid spec");
        assert_eq!(
            x.names(),
            [
                "x.mean", "x.max", "raw.t0.x", "raw.t1.x", "raw.t2.x", "mode=2", "mode=0",
                "mode=1", "valve=1", "valve=0"
            ]
        );
        let mut out = vec![f64::NAN; x.len()];
        x.extract(&window, &mut out).expect("extracts");
        // Statistics and raw see x only: mean 3, max 6 (not mode's or valve's).
        assert_eq!(out, [3.0, 6.0, 1.0, 2.0, 6.0, 0.0, 0.0, 1.0, 0.0, 0.0]);
        assert_eq!(reference::extract(&spec, &values, 1.0), out);
        assert_eq!(reference::names(&spec, 3), x.names());

        // A mode change in the last row changes the one-hot section; 1.5 is
        // no mode: all zeros for that channel.
        let mut changed = values;
        changed[7] = 2.0;
        changed[8] = 0.0;
        x.extract(&Window::try_new(&changed, 3, 1.0).unwrap(), &mut out)
            .expect("extracts");
        assert_eq!(&out[5..], [1.0, 0.0, 0.0, 0.0, 1.0]);
        changed[7] = 1.5;
        x.extract(&Window::try_new(&changed, 3, 1.0).unwrap(), &mut out)
            .expect("extracts");
        assert_eq!(&out[5..], [0.0, 0.0, 0.0, 0.0, 1.0]);
        // An earlier row's mode plays no part.
        changed[7] = 0.0;
        changed[1] = 5.0;
        x.extract(&Window::try_new(&changed, 3, 1.0).unwrap(), &mut out)
            .expect("extracts");
        assert_eq!(&out[5..], [0.0, 1.0, 0.0, 0.0, 1.0]);
    }

    #[test]
    fn a_window_without_its_categorical_columns_is_refused() {
        let spec = FeatureSpec {
            categorical: vec![cat("mode", &[0, 1])],
            ..spec(&["x", "y"], &[Stat::Mean])
        };
        let mut x = FeatureExtractor::new(&spec, 2).expect("valid spec");
        assert_eq!(x.len(), 4);
        let mut out = [0.0; 4];
        let numeric_only = Window::try_new(&[0.0; 4], 2, 1.0).expect("valid");
        assert_eq!(
            x.extract(&numeric_only, &mut out),
            Err(FeatureError::ChannelMismatch {
                expected: 3,
                got: 2
            })
        );
    }

    #[test]
    fn bands_of_a_spec_with_categorical_channels_read_the_right_column() {
        let plain = FeatureSpec {
            bands: Some(BandSpec {
                channels: vec!["y".into()],
                count: 2,
                detrend: true,
            }),
            ..spec(&["x", "y"], &[Stat::Std, Stat::Slope, Stat::Repeats])
        };
        let with_mode = FeatureSpec {
            categorical: vec![cat("mode", &[3])],
            ..plain.clone()
        };
        let xy = [1.0, 2.0, 3.0, 5.0, 2.0, 7.0, 4.0, 1.0];
        let xym: Vec<f64> = xy.chunks(2).flat_map(|r| [r[0], r[1], 3.0]).collect();
        let a = features(&plain, &xy, 0.5);
        let mut x = FeatureExtractor::new(&with_mode, 4).expect("valid spec");
        let mut b = vec![f64::NAN; x.len()];
        x.extract(&Window::try_new(&xym, 3, 0.5).unwrap(), &mut b)
            .expect("extracts");
        assert_eq!(&b[..a.len()], a.as_slice());
        assert_eq!(b[a.len()..], [1.0]);
    }

    #[test]
    fn bad_categorical_specs_name_every_problem() {
        let bad = FeatureSpec {
            categorical: vec![
                cat("x", &[0]),
                cat("", &[1]),
                cat("mode", &[]),
                cat("mode", &[1, 1, MAX_CODE + 1, -MAX_CODE]),
                cat(&"m".repeat(MAX_NAME_LEN + 1), &[0]),
            ],
            ..spec(&["x"], &[Stat::Mean])
        };
        assert_eq!(
            problems(bad.validate()),
            vec![
                SpecProblem::CategoricalAlsoNumeric { name: "x".into() },
                SpecProblem::EmptyCategoricalChannel { index: 1 },
                SpecProblem::NoCodes {
                    channel: "mode".into()
                },
                SpecProblem::DuplicateCategoricalChannel {
                    name: "mode".into()
                },
                SpecProblem::DuplicateCode {
                    channel: "mode".into(),
                    code: 1
                },
                SpecProblem::CodeOutOfRange {
                    channel: "mode".into(),
                    code: MAX_CODE + 1,
                    limit: MAX_CODE
                },
                SpecProblem::CategoricalChannelTooLong {
                    index: 4,
                    len: MAX_NAME_LEN + 1,
                    limit: MAX_NAME_LEN
                },
            ]
        );
        let message = FeatureError::InvalidSpec {
            problems: problems(bad.validate()),
        }
        .to_string();
        assert!(
            message.contains("`categorical` names `x`, which is also in `channels`"),
            "{message}"
        );
        let too_wide = FeatureSpec {
            categorical: (0..MAX_CHANNELS)
                .map(|i| cat(&format!("k{i}"), &[0]))
                .collect(),
            ..spec(&["x"], &[Stat::Mean])
        };
        assert_eq!(
            problems(too_wide.validate()),
            vec![SpecProblem::TooManyWindowChannels {
                count: MAX_CHANNELS + 1,
                limit: MAX_CHANNELS
            }]
        );
        let too_many_codes = FeatureSpec {
            categorical: vec![cat("mode", &(0..MAX_FEATURES as i64).collect::<Vec<_>>())],
            ..spec(&["x"], &[Stat::Mean])
        };
        assert!(too_many_codes.validate().is_ok());
        assert_eq!(
            problems(FeatureExtractor::new(&too_many_codes, 2)),
            vec![SpecProblem::TooManyFeatures {
                count: MAX_FEATURES + 1,
                limit: MAX_FEATURES
            }]
        );
        // Only categorical features is a valid spec.
        let only = FeatureSpec {
            categorical: vec![cat("mode", &[0, 1])],
            ..spec(&["x"], &[])
        };
        assert_eq!(FeatureExtractor::new(&only, 2).map(|x| x.len()), Ok(2));
    }

    #[test]
    fn a_spec_without_categorical_channels_serializes_as_before() {
        let plain = spec(&["x"], &[Stat::Mean]);
        let json = serde_json::to_string(&plain).unwrap();
        assert_eq!(json, r#"{"channels":["x"],"stats":["mean"],"raw":false}"#);
        let with = FeatureSpec {
            categorical: vec![cat("mode", &[0, 2])],
            ..plain
        };
        let json = serde_json::to_string(&with).unwrap();
        assert!(
            json.ends_with(r#""categorical":[{"channel":"mode","codes":[0,2]}]}"#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<FeatureSpec>(&json).unwrap(), with);
        assert_eq!(with.window_channels(), ["x", "mode"]);
    }

    #[test]
    fn an_absurd_window_length_is_refused_without_allocating_it() {
        let mut spec = spec(&["x"], &[Stat::Mean]);
        spec.raw = true;
        assert_eq!(
            problems(FeatureExtractor::new(&spec, usize::MAX)),
            vec![SpecProblem::WindowTooLong {
                window_len: usize::MAX,
                limit: MAX_WINDOW_LEN
            }]
        );
        spec.channels = (0..MAX_CHANNELS).map(|i| format!("c{i}")).collect();
        assert!(matches!(
            problems(FeatureExtractor::new(&spec, MAX_WINDOW_LEN)).as_slice(),
            [SpecProblem::TooManyFeatures { .. }]
        ));
    }

    #[test]
    fn a_spec_round_trips_through_json_and_unknown_fields_are_refused() {
        let json = r#"{"channels":["temperature","vibration"],"stats":["mean","peak_to_peak","kurtosis"],
            "bands":{"channels":["vibration"],"count":8},"raw":true}"#;
        let spec: FeatureSpec = serde_json::from_str(json).expect("parses");
        assert_eq!(
            spec.stats,
            vec![Stat::Mean, Stat::PeakToPeak, Stat::Kurtosis]
        );
        assert!(
            spec.bands.as_ref().expect("bands").detrend,
            "detrend defaults to true"
        );
        let back: FeatureSpec =
            serde_json::from_str(&serde_json::to_string(&spec).expect("serialises"))
                .expect("parses");
        assert_eq!(back, spec);
        for bad in [
            r#"{"channels":["x"],"stats":["mean"],"window":3}"#,
            r#"{"channels":["x"],"bands":{"channels":["x"],"count":2,"hann":true}}"#,
            r#"{"channels":["x"],"stats":["median"]}"#,
        ] {
            assert!(serde_json::from_str::<FeatureSpec>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn invalid_windows_give_typed_errors() {
        let ok = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(Window::try_new(&ok, 0, 1.0), Err(FeatureError::NoChannels));
        assert_eq!(
            Window::try_new(&ok, 3, 1.0),
            Err(FeatureError::Ragged {
                len: 4,
                channels: 3
            })
        );
        assert_eq!(
            Window::try_new(&ok, 4, 1.0),
            Err(FeatureError::TooFewRows { rows: 1 })
        );
        for dt in [0.0, -1.0, f64::INFINITY] {
            assert_eq!(
                Window::try_new(&ok, 2, dt),
                Err(FeatureError::InvalidInterval { dt_seconds: dt })
            );
        }
        assert!(matches!(
            Window::try_new(&ok, 2, f64::NAN),
            Err(FeatureError::InvalidInterval { .. })
        ));
        let gap = [1.0, 2.0, 3.0, f64::NAN, 5.0, 6.0];
        let err = Window::try_new(&gap, 2, 1.0).expect_err("NaN");
        assert!(
            matches!(err, FeatureError::NotFinite { row: 1, channel: 1, value } if value.is_nan()),
            "{err:?}"
        );
        assert_eq!(err.reason_code(), "non_finite_value");
    }

    #[test]
    fn a_window_that_does_not_fit_the_extractor_is_refused() {
        let mut extractor =
            FeatureExtractor::new(&spec(&["x", "y"], &[Stat::Mean]), 3).expect("valid");
        let mut out = [0.0; 2];
        let three_channels = Window::try_new(&[0.0; 9], 3, 1.0).expect("valid");
        assert_eq!(
            extractor.extract(&three_channels, &mut out),
            Err(FeatureError::ChannelMismatch {
                expected: 2,
                got: 3
            })
        );
        let four_rows = Window::try_new(&[0.0; 8], 2, 1.0).expect("valid");
        assert_eq!(
            extractor.extract(&four_rows, &mut out),
            Err(FeatureError::LengthMismatch {
                expected: 3,
                got: 4
            })
        );
        let fits = Window::try_new(&[0.0; 6], 2, 1.0).expect("valid");
        assert_eq!(
            extractor.extract(&fits, &mut [0.0; 3]),
            Err(FeatureError::OutputLength {
                expected: 2,
                got: 3
            })
        );
        assert_eq!(extractor.extract(&fits, &mut out), Ok(()));
    }

    #[test]
    fn values_too_large_to_subtract_name_the_feature_that_overflowed() {
        let mut extractor =
            FeatureExtractor::new(&spec(&["x"], &[Stat::Min, Stat::PeakToPeak]), 2).expect("valid");
        let window = Window::try_new(&[1e308, -1e308], 1, 1.0).expect("finite");
        let mut out = [0.0; 2];
        assert_eq!(
            extractor.extract(&window, &mut out),
            Err(FeatureError::NonFiniteFeature {
                index: 1,
                name: "x.peak_to_peak".into()
            })
        );
    }

    #[test]
    fn tiny_and_huge_values_keep_std_and_shape_finite_and_exact() {
        // Squaring would underflow (1e-170² = 0) or overflow (1e170² = inf).
        for scale in [1e-170, 1e170, 1e-310] {
            let values: Vec<f64> = [1.0, 2.0, 4.0, 7.0].iter().map(|x| x * scale).collect();
            let out = features(&spec(&["x"], &[Stat::Std, Stat::Skew]), &values, 1.0);
            let std = 5.25f64.sqrt() * scale;
            assert!(
                (out[0] - std).abs() <= 1e-9 * std,
                "{scale}: std {}",
                out[0]
            );
            let skew = 6.0 / 5.25f64.powf(1.5);
            assert!((out[1] - skew).abs() <= 1e-9, "{scale}: skew {}", out[1]);
        }
    }

    #[test]
    fn extract_many_fills_one_row_per_window_and_names_a_failing_window() {
        let spec = FeatureSpec {
            bands: Some(BandSpec {
                channels: vec!["y".into()],
                count: 2,
                detrend: true,
            }),
            ..spec(&["x", "y"], &[Stat::Mean, Stat::Slope])
        };
        let mut extractor = FeatureExtractor::new(&spec, 4).expect("valid");
        let a = [1.0, 2.0, 3.0, 5.0, 2.0, 7.0, 4.0, 1.0];
        let b = [0.0, 1.0, 0.0, -1.0, 0.0, 1.0, 0.0, -1.0];
        let windows = [
            Window::try_new(&a, 2, 0.5).expect("valid"),
            Window::try_new(&b, 2, 0.5).expect("valid"),
        ];
        let len = extractor.len();
        let mut matrix = vec![0.0; 2 * len];
        extractor
            .extract_many(&windows, &mut matrix)
            .expect("extracts");
        let mut row = vec![0.0; len];
        for (i, w) in windows.iter().enumerate() {
            extractor.extract(w, &mut row).expect("extracts");
            assert_eq!(&matrix[i * len..(i + 1) * len], row.as_slice());
        }
        let short = Window::try_new(&a[..6], 2, 0.5).expect("valid");
        let err = extractor
            .extract_many(&[windows[0], short], &mut matrix)
            .expect_err("window 1 is short");
        assert!(
            matches!(&err, FeatureError::InWindow { index: 1, source } if matches!(**source, FeatureError::LengthMismatch { .. })),
            "{err:?}"
        );
        assert_eq!(err.reason_code(), "length_mismatch");
    }

    #[test]
    fn an_extractor_can_move_to_a_worker_thread() {
        fn is_send<T: Send + Sync + Clone>() {}
        is_send::<FeatureExtractor>();
    }

    // ---- property tests ----

    /// A channel's shape: 0 constant, 1 uniform noise, 2 noise quantised to
    /// 0.5, 3 a sine with noise; an offset and a spread (10^-2 ..= 10^3).
    fn channel_values(kind: u8, offset: f64, spread_exp: f64, u: &[f64]) -> Vec<f64> {
        let spread = 10f64.powf(spread_exp);
        let n = u.len() as f64;
        u.iter()
            .enumerate()
            .map(|(i, &u)| match kind {
                0 => offset,
                1 => offset + spread * u,
                2 => ((offset + spread * u) * 2.0).round() / 2.0,
                _ => {
                    let phase = 2.0 * std::f64::consts::PI * 5.3 * i as f64 / n;
                    offset + spread * (phase.sin() + 0.1 * u)
                }
            })
            .collect()
    }

    #[derive(Debug, Clone)]
    struct ParityCase {
        spec: FeatureSpec,
        dt: f64,
        values: Vec<f64>,
    }

    impl ParityCase {
        /// Window columns: channels, then categorical channels.
        fn width(&self) -> usize {
            self.spec.channels.len() + self.spec.categorical.len()
        }
    }

    fn parity_case() -> impl Strategy<Value = ParityCase> {
        (1usize..6, 2usize..=300).prop_flat_map(|(c, n)| {
            (
                proptest::sample::subsequence(Stat::ALL.to_vec(), 0..=Stat::ALL.len())
                    .prop_shuffle(),
                proptest::option::of((
                    proptest::sample::subsequence((0..c).collect::<Vec<_>>(), 1..=c).prop_shuffle(),
                    1..=n / 2,
                    any::<bool>(),
                )),
                any::<bool>(),
                proptest::collection::vec((0u8..4, -1e3f64..1e3, -2f64..3.0), c),
                proptest::collection::vec(-1f64..1.0, n * c),
                prop_oneof![Just(1.0), 1e-3f64..10.0],
                // Categorical channels: codes, and a column of mostly codes,
                // some unseen, some not integers.
                proptest::collection::vec(
                    (
                        proptest::collection::hash_set(-3i64..4, 1..4),
                        proptest::collection::vec(
                            prop_oneof![4 => (-4i64..5).prop_map(|v| v as f64), 1 => Just(0.5)],
                            n,
                        ),
                    ),
                    0..3,
                ),
            )
                .prop_map(move |(stats, bands, raw, shapes, u, dt, cats)| {
                    let channels: Vec<String> = (0..c).map(|i| format!("c{i}")).collect();
                    let bands = bands.map(|(cols, count, detrend)| BandSpec {
                        channels: cols.iter().map(|&i| channels[i].clone()).collect(),
                        count,
                        detrend,
                    });
                    let raw = raw || (stats.is_empty() && bands.is_none());
                    let columns: Vec<Vec<f64>> = shapes
                        .iter()
                        .enumerate()
                        .map(|(j, &(kind, offset, spread))| {
                            let uj: Vec<f64> = (0..n).map(|i| u[i * c + j]).collect();
                            channel_values(kind, offset, spread, &uj)
                        })
                        .collect();
                    let width = c + cats.len();
                    let values = (0..n * width)
                        .map(|k| {
                            let (i, j) = (k / width, k % width);
                            if j < c {
                                columns[j][i]
                            } else {
                                cats[j - c].1[i]
                            }
                        })
                        .collect();
                    let categorical = cats
                        .iter()
                        .enumerate()
                        .map(|(k, (codes, _))| CategoricalSpec {
                            channel: format!("k{k}"),
                            codes: codes.iter().copied().collect(),
                        })
                        .collect();
                    ParityCase {
                        spec: FeatureSpec {
                            baseline: None,
                            channels,
                            stats,
                            bands,
                            raw,
                            categorical,
                        },
                        dt,
                        values,
                    }
                })
        })
    }

    /// The scale a feature's rounding error is measured against: the channel's
    /// largest magnitude for statistics in channel units, that over Δt for
    /// slopes, the moments' condition number `max|x| / std` for skew and
    /// kurtosis, and the energy of the windowed (not detrended) channel for
    /// band energies — rounding in the mean is relative to the values, not to
    /// what is left after removing it.
    fn tolerance_scale(case: &ParityCase, name: &str, reference: f64) -> f64 {
        let c = case.width();
        let n = case.values.len() / c;
        if name.starts_with("raw.") || name.contains('=') {
            return 0.0; // the raw part is the window itself, one-hot is exact
        }
        let (channel, what) = name.rsplit_once('.').expect("dotted name");
        let j = case
            .spec
            .channels
            .iter()
            .position(|x| x == channel)
            .expect("known channel");
        let x: Vec<f64> = (0..n).map(|i| case.values[i * c + j]).collect();
        let max_abs = x.iter().fold(0f64, |m, v| m.max(v.abs()));
        let nf = n as f64;
        let mean = x.iter().sum::<f64>() / nf;
        let std = (x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / nf).sqrt();
        match what {
            "slope" => max_abs / case.dt,
            "skew" | "kurtosis" => {
                let condition = if std > 0.0 { max_abs / std } else { 1.0 };
                reference.abs().max(1.0) * condition.max(1.0)
            }
            w if w.starts_with("band") => {
                windowed_energy(&x, false).max(f64::MIN_POSITIVE) + reference.abs()
            }
            _ => max_abs.max(f64::MIN_POSITIVE),
        }
    }

    fn arbitrary_name() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[ab]{1,2}",
            "raw\\.t[01]",
            "mean|band0|x\\.band0",
            ".{0,6}",
            "[a-z]{129,131}",
        ]
    }

    fn arbitrary_spec() -> impl Strategy<Value = FeatureSpec> {
        (
            proptest::collection::vec(arbitrary_name(), 0..5),
            proptest::collection::vec(proptest::sample::select(Stat::ALL.to_vec()), 0..12),
            proptest::option::of((
                proptest::collection::vec(arbitrary_name(), 0..4),
                prop_oneof![0usize..10, any::<usize>()],
                any::<bool>(),
            )),
            any::<bool>(),
            proptest::collection::vec(
                (
                    arbitrary_name(),
                    proptest::collection::vec(prop_oneof![-2i64..3, any::<i64>()], 0..4),
                ),
                0..3,
            ),
        )
            .prop_map(|(channels, stats, bands, raw, cats)| FeatureSpec {
                baseline: None,
                channels,
                stats,
                bands: bands.map(|(channels, count, detrend)| BandSpec {
                    channels,
                    count,
                    detrend,
                }),
                raw,
                categorical: cats
                    .into_iter()
                    .map(|(channel, codes)| CategoricalSpec { channel, codes })
                    .collect(),
            })
    }

    fn arbitrary_value() -> impl Strategy<Value = f64> {
        prop_oneof![
            4 => -10f64..10.0,
            1 => any::<f64>(),
            1 => prop_oneof![Just(f64::MAX), Just(-f64::MAX), Just(1e-310), Just(0.0)],
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn extract_equals_the_naive_reference_on_random_windows(case in parity_case()) {
            let c = case.width();
            let n = case.values.len() / c;
            let window = Window::try_new(&case.values, c, case.dt).expect("valid window");
            let mut extractor = FeatureExtractor::new(&case.spec, n).expect("valid spec");
            let mut out = vec![f64::NAN; extractor.len()];
            extractor.extract(&window, &mut out).expect("extracts");
            let want = reference::extract(&case.spec, &case.values, case.dt);
            prop_assert_eq!(out.len(), want.len());
            let want_names = reference::names(&case.spec, n);
            prop_assert_eq!(extractor.names(), want_names.as_slice());
            for ((name, got), want) in extractor.names().iter().zip(&out).zip(&want) {
                let tol = 1e-9 * tolerance_scale(&case, name, *want);
                prop_assert!(
                    (got - want).abs() <= tol,
                    "{}: got {}, reference {}, tolerance {}", name, got, want, tol
                );
            }
        }

        #[test]
        fn band_energies_add_up_to_the_energy_of_the_windowed_signal(
            u in proptest::collection::vec(-1f64..1.0, 2..=300),
            offset in -100f64..100.0,
            count_seed in any::<usize>(),
            detrend in any::<bool>(),
        ) {
            let n = u.len();
            let count = 1 + count_seed % (n / 2);
            let values: Vec<f64> = u.iter().map(|x| offset + x).collect();
            let out = features(&band_spec(count, detrend), &values, 1.0);
            let total: f64 = out.iter().sum();
            let energy = windowed_energy(&values, detrend);
            prop_assert!(
                (total - energy).abs() <= 1e-9 * energy,
                "bands sum to {}, time domain {}", total, energy
            );
            prop_assert!(out.iter().all(|e| *e >= 0.0));
        }

        #[test]
        fn arbitrary_specs_and_windows_give_features_or_typed_errors_never_panics(
            spec in arbitrary_spec(),
            window_len in prop_oneof![0usize..40, any::<usize>()],
            values in proptest::collection::vec(arbitrary_value(), 0..120),
            channels in 0usize..6,
            dt in prop_oneof![0.001f64..10.0, any::<f64>()],
        ) {
            let extractor = FeatureExtractor::new(&spec, window_len);
            if extractor.is_ok() {
                prop_assert!(spec.validate().is_ok());
            }
            let window = Window::try_new(&values, channels, dt);
            if let (Ok(mut extractor), Ok(window)) = (extractor, window) {
                let mut out = vec![0.0; extractor.len()];
                if extractor.extract(&window, &mut out).is_ok() {
                    prop_assert!(out.iter().all(|v| v.is_finite()));
                }
            }
        }

        #[test]
        fn valid_specs_on_extreme_but_finite_windows_give_finite_features_or_a_typed_error(
            case in parity_case(),
            extremes in proptest::collection::vec(
                (any::<proptest::sample::Index>(), arbitrary_value()), 0..8),
        ) {
            let mut values = case.values.clone();
            for (index, v) in extremes {
                if v.is_finite() {
                    let i = index.index(values.len());
                    values[i] = v;
                }
            }
            let c = case.width();
            let window = Window::try_new(&values, c, case.dt).expect("finite values");
            let mut extractor =
                FeatureExtractor::new(&case.spec, values.len() / c).expect("valid spec");
            let mut out = vec![0.0; extractor.len()];
            match extractor.extract(&window, &mut out) {
                Ok(()) => prop_assert!(out.iter().all(|v| v.is_finite())),
                Err(e) => prop_assert!(
                    matches!(e, FeatureError::NonFiniteFeature { .. }), "{:?}", e
                ),
            }
        }
    }
}
