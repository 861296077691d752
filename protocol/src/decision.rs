//! From a device's window scores to alarms: smoothing, threshold, k-of-n.
//!
//! The gateway and the sink's `score` / `evaluate` / training calibration all
//! run this code, so the alarms counted offline are the ones a gateway
//! raises for the same windows.
//!
//! One [`Decider`] per device (and model) takes that device's window scores
//! in time order:
//!
//! 1. **Smoothing** ([`Smoothing`]): the raw score `s_t`, or its
//!    exponentially weighted moving average `m_t = α·s_t + (1 − α)·m_(t−1)`,
//!    `m_0 = s_0`. Real processes are noisy window to window; a fault that
//!    persists moves the average while single noisy windows do not, so a
//!    threshold on `m_t` separates slow, small shifts from noise that a
//!    threshold on `s_t` cannot (the EWMA chart of statistical process
//!    control). `1/α` is about the number of windows it remembers.
//! 2. **Threshold**: the window is anomalous when the (smoothed) score is
//!    above it.
//! 3. **k-of-n** ([`KOfN`]): the device is in alarm while at least `k` of its
//!    last `n` windows were anomalous; an alert is raised on the rising edge.
//!
//! A non-finite score never enters the average: the window counts as
//! anomalous (a model that cannot score the data has seen something it was
//! not trained on) and the average keeps its last value.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// How window scores are smoothed before the threshold. Serialised as
/// `"none"` or `{"ewma": 0.1}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Smoothing {
    /// The raw window score.
    #[default]
    None,
    /// Exponentially weighted moving average with weight `α ∈ (0, 1]` on the
    /// newest window (`1` is the raw score).
    Ewma(f64),
}

impl Smoothing {
    /// Whether the parameters are usable (`α ∈ (0, 1]`).
    pub fn is_valid(&self) -> bool {
        match self {
            Smoothing::None => true,
            Smoothing::Ewma(a) => *a > 0.0 && *a <= 1.0,
        }
    }

    /// `none` or `ewma:α` (the command-line form).
    pub fn label(&self) -> String {
        match self {
            Smoothing::None => "none".into(),
            Smoothing::Ewma(a) => format!("ewma:{a}"),
        }
    }

    /// Smooths one device's scores, given in time order.
    pub fn apply(&self, scores: &[f64]) -> Vec<f64> {
        let mut state = SmoothingState::default();
        scores.iter().map(|&s| state.push(*self, s)).collect()
    }
}

impl std::str::FromStr for Smoothing {
    type Err = String;

    /// `none`, or `ewma:α` with `α ∈ (0, 1]`.
    fn from_str(s: &str) -> Result<Self, String> {
        let parsed = match s.split_once(':') {
            None if s == "none" => Smoothing::None,
            Some(("ewma", a)) => Smoothing::Ewma(
                a.parse::<f64>()
                    .map_err(|_| format!("`{s}`: `{a}` is not a number"))?,
            ),
            _ => return Err(format!("`{s}`: expected `none` or `ewma:ALPHA`")),
        };
        if parsed.is_valid() {
            Ok(parsed)
        } else {
            Err(format!("`{s}`: the EWMA weight must be in (0, 1]"))
        }
    }
}

/// The running state of a [`Smoothing`]: the last average.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SmoothingState {
    last: Option<f64>,
}

impl SmoothingState {
    /// Takes the next score and returns the smoothed one. A non-finite score
    /// is returned as it is and leaves the state unchanged.
    pub fn push(&mut self, smoothing: Smoothing, score: f64) -> f64 {
        if !score.is_finite() {
            return score;
        }
        let out = match (smoothing, self.last) {
            (Smoothing::Ewma(a), Some(prev)) => a * score + (1.0 - a) * prev,
            _ => score,
        };
        self.last = Some(out);
        out
    }
}

/// What one decision did to the alarm state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Edge {
    /// The alarm just turned on: raise an alert.
    Raised,
    /// The alarm just turned off.
    Cleared,
    /// No change.
    Steady,
}

/// k of the last n decisions. Memory: `n` booleans.
#[derive(Clone, Debug)]
pub struct KOfN {
    k: usize,
    n: usize,
    history: VecDeque<bool>,
    positives: usize,
    active: bool,
}

impl KOfN {
    /// `1 ≤ k ≤ n` (validated by the config and the manifest; out-of-range
    /// values are clamped so this never panics).
    pub fn new(k: u32, n: u32) -> Self {
        let n = (n as usize).max(1);
        let k = (k as usize).clamp(1, n);
        KOfN {
            k,
            n,
            history: VecDeque::with_capacity(n),
            positives: 0,
            active: false,
        }
    }

    /// Takes one window's decision.
    pub fn push(&mut self, anomalous: bool) -> Edge {
        if self.history.len() == self.n && self.history.pop_front() == Some(true) {
            self.positives -= 1;
        }
        self.history.push_back(anomalous);
        if anomalous {
            self.positives += 1;
        }
        let now = self.positives >= self.k;
        let edge = match (self.active, now) {
            (false, true) => Edge::Raised,
            (true, false) => Edge::Cleared,
            _ => Edge::Steady,
        };
        self.active = now;
        edge
    }

    pub fn is_active(&self) -> bool {
        self.active
    }

    /// How many of the last decisions, counted back from the newest, are
    /// needed to cover every positive still in the history (the alarm's
    /// span, in windows).
    pub fn span(&self) -> usize {
        self.history
            .iter()
            .position(|&p| p)
            .map_or(0, |first| self.history.len() - first)
    }
}

/// Everything that turns scores into alarms (the manifest's `score` part,
/// without its informational fields).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DecisionSpec {
    pub smoothing: Smoothing,
    pub threshold: f64,
    pub k: u32,
    pub n: u32,
}

/// One window's outcome.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    /// The score compared with the threshold (smoothed when the spec says so).
    pub score: f64,
    /// `score > threshold`, or a non-finite score.
    pub anomalous: bool,
    /// Whether the device is in alarm after this window (k of the last n).
    pub alarm: bool,
    pub edge: Edge,
}

/// The decision state of one device under one [`DecisionSpec`].
#[derive(Clone, Debug)]
pub struct Decider {
    spec: DecisionSpec,
    smoothing: SmoothingState,
    kofn: KOfN,
}

impl Decider {
    pub fn new(spec: DecisionSpec) -> Self {
        Decider {
            spec,
            smoothing: SmoothingState::default(),
            kofn: KOfN::new(spec.k, spec.n),
        }
    }

    pub fn spec(&self) -> &DecisionSpec {
        &self.spec
    }

    /// Takes the device's next window score.
    pub fn push(&mut self, score: f64) -> Decision {
        let smoothed = self.smoothing.push(self.spec.smoothing, score);
        let anomalous = !smoothed.is_finite() || smoothed > self.spec.threshold;
        let edge = self.kofn.push(anomalous);
        Decision {
            score: smoothed,
            anomalous,
            alarm: self.kofn.is_active(),
            edge,
        }
    }

    /// The alarm's span in windows (see [`KOfN::span`]).
    pub fn span(&self) -> usize {
        self.kofn.span()
    }

    /// Decides a whole series of one device's scores, in time order.
    pub fn run(spec: DecisionSpec, scores: &[f64]) -> Vec<Decision> {
        let mut d = Decider::new(spec);
        scores.iter().map(|&s| d.push(s)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ewma_follows_its_definition_and_starts_at_the_first_score() {
        let out = Smoothing::Ewma(0.25).apply(&[4.0, 0.0, 8.0]);
        assert_eq!(out, [4.0, 3.0, 0.25 * 8.0 + 0.75 * 3.0]);
        assert_eq!(Smoothing::None.apply(&[4.0, 0.0]), [4.0, 0.0]);
        assert_eq!(Smoothing::Ewma(1.0).apply(&[4.0, 0.0]), [4.0, 0.0]);
    }

    #[test]
    fn a_non_finite_score_is_anomalous_and_does_not_poison_the_average() {
        let spec = DecisionSpec {
            smoothing: Smoothing::Ewma(0.5),
            threshold: 10.0,
            k: 1,
            n: 1,
        };
        let out = Decider::run(spec, &[2.0, f64::NAN, 4.0]);
        assert!(!out[0].anomalous);
        assert!(out[1].anomalous && out[1].score.is_nan());
        assert_eq!(out[2].score, 3.0);
        assert!(!out[2].anomalous);
    }

    #[test]
    fn smoothing_turns_a_small_persistent_shift_into_an_alarm_but_not_one_spike() {
        let spec = DecisionSpec {
            smoothing: Smoothing::Ewma(0.1),
            threshold: 2.0,
            k: 1,
            n: 1,
        };
        // One spike of 10 on a level of 1: the average peaks at 1.9.
        let mut spike = vec![1.0; 20];
        spike[10] = 10.0;
        assert!(Decider::run(spec, &spike).iter().all(|d| !d.anomalous));
        // A level of 1 → 2.5 for good: the average crosses 2 and stays.
        let shift: Vec<f64> = (0..60).map(|i| if i < 20 { 1.0 } else { 2.5 }).collect();
        let out = Decider::run(spec, &shift);
        let first = out.iter().position(|d| d.anomalous).unwrap();
        assert!((25..40).contains(&first), "{first}");
        assert!(out[first..].iter().all(|d| d.anomalous));
        assert_eq!(out[first].edge, Edge::Raised);
    }

    #[test]
    fn smoothing_parses_its_command_line_form_and_refuses_bad_weights() {
        assert_eq!("none".parse::<Smoothing>(), Ok(Smoothing::None));
        assert_eq!("ewma:0.2".parse::<Smoothing>(), Ok(Smoothing::Ewma(0.2)));
        for bad in ["ewma:0", "ewma:1.5", "ewma:x", "ewma", "mean:2"] {
            assert!(bad.parse::<Smoothing>().is_err(), "{bad}");
        }
        assert_eq!(Smoothing::Ewma(0.2).label(), "ewma:0.2");
        let json = serde_json::to_string(&Smoothing::Ewma(0.1)).unwrap();
        assert_eq!(json, r#"{"ewma":0.1}"#);
        assert_eq!(
            serde_json::from_str::<Smoothing>(r#""none""#).unwrap(),
            Smoothing::None
        );
    }

    fn run(k: u32, n: u32, decisions: &[u8]) -> Vec<Edge> {
        let mut h = KOfN::new(k, n);
        decisions.iter().map(|&d| h.push(d == 1)).collect()
    }

    #[test]
    fn two_of_three_raises_on_the_second_positive_and_not_on_an_isolated_one() {
        use Edge::*;
        let edges = run(2, 3, &[1, 0, 0, 1, 0, 1, 1, 0, 0, 0]);
        assert_eq!(
            edges,
            [
                Steady, Steady, Steady, Steady, Steady, Raised, Steady, Steady, Cleared, Steady
            ]
        );
    }

    #[test]
    fn one_of_one_follows_every_decision() {
        use Edge::*;
        assert_eq!(run(1, 1, &[1, 1, 0, 1]), [Raised, Steady, Cleared, Raised]);
    }

    #[test]
    fn a_flapping_score_raises_once_while_k_of_n_holds() {
        let edges = run(2, 4, &[1, 0, 1, 0, 1, 0, 1, 0, 1, 0]);
        let raised = edges.iter().filter(|&&e| e == Edge::Raised).count();
        assert_eq!(raised, 1, "{edges:?}");
    }

    #[test]
    fn out_of_range_parameters_are_clamped_not_panicking() {
        let mut h = KOfN::new(0, 0);
        assert_eq!(h.push(true), Edge::Raised);
        let mut h = KOfN::new(9, 3);
        h.push(true);
        h.push(true);
        assert_eq!(h.push(true), Edge::Raised);
        assert_eq!(h.span(), 3);
    }
}
