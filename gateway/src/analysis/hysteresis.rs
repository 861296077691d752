//! k-of-n hysteresis: a device is "in alarm" while at least `k` of its last
//! `n` windows were anomalous; an alert is raised on the rising edge only,
//! so a score that hovers around the threshold does not flap.

use std::collections::VecDeque;

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

#[cfg(test)]
mod tests {
    use super::*;

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
