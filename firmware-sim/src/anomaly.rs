//! Injected anomalies: what they do to a channel, how long they last, when they start.
//!
//! Each device tick, with probability `rate`, an anomaly of a uniformly chosen
//! [`AnomalyKind`] starts on a uniformly chosen channel that has none active.
//! It lasts a kind-specific number of ticks and changes the channel's value in
//! every one of them (see [`AnomalyKind`]). The injector draws from its own RNG,
//! separate from the signal's, so the clean signal is identical with and
//! without anomalies for the same seed.

use rand::Rng;
use rand::seq::IndexedRandom;
use serde::{Deserialize, Serialize};

use crate::signal::{Channel, standard_normal};

/// The kinds of injected anomaly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    /// A short excursion of 1.5–3 spans, 1–3 ticks.
    Spike,
    /// A linear ramp reaching 0.5–1.5 spans at the end, 30–120 ticks.
    Drift,
    /// The value freezes at the last value emitted before the start, 20–100 ticks.
    Stuck,
    /// A constant offset of 0.5–1 span, 30–150 ticks.
    Step,
    /// Heavy extra noise (sd 0.3 span, never less than 0.15 span in size), 10–50 ticks.
    NoiseBurst,
}

impl AnomalyKind {
    pub const ALL: [AnomalyKind; 5] = [
        AnomalyKind::Spike,
        AnomalyKind::Drift,
        AnomalyKind::Stuck,
        AnomalyKind::Step,
        AnomalyKind::NoiseBurst,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AnomalyKind::Spike => "spike",
            AnomalyKind::Drift => "drift",
            AnomalyKind::Stuck => "stuck",
            AnomalyKind::Step => "step",
            AnomalyKind::NoiseBurst => "noise_burst",
        }
    }

    /// Inclusive range of durations, in ticks.
    fn duration_ticks(self) -> (u64, u64) {
        match self {
            AnomalyKind::Spike => (1, 3),
            AnomalyKind::Drift => (30, 120),
            AnomalyKind::Stuck => (20, 100),
            AnomalyKind::Step => (30, 150),
            AnomalyKind::NoiseBurst => (10, 50),
        }
    }
}

/// An anomaly in progress on one channel.
#[derive(Clone, Debug, PartialEq)]
pub struct ActiveAnomaly {
    pub kind: AnomalyKind,
    pub channel: Channel,
    /// Device tick of the first affected reading.
    pub start_tick: u64,
    /// Number of affected ticks (≥ 1).
    pub duration: u64,
    /// Signed magnitude in units of the channel's span (meaning depends on the kind).
    pub magnitude: f64,
    /// For [`AnomalyKind::Stuck`]: the frozen value.
    pub frozen: f64,
}

impl ActiveAnomaly {
    /// The last affected tick (inclusive).
    pub fn end_tick(&self) -> u64 {
        self.start_tick + self.duration - 1
    }

    pub fn covers(&self, tick: u64) -> bool {
        (self.start_tick..=self.end_tick()).contains(&tick)
    }

    /// The anomalous value at `tick` given the clean value; `rng` feeds the noise burst.
    pub fn apply<R: Rng + ?Sized>(&self, tick: u64, clean: f64, rng: &mut R) -> f64 {
        let span = self.channel.span();
        let k = tick.saturating_sub(self.start_tick) as f64;
        let v = match self.kind {
            AnomalyKind::Spike | AnomalyKind::Step => clean + self.magnitude * span,
            AnomalyKind::Drift => clean + self.magnitude * span * (k + 1.0) / self.duration as f64,
            AnomalyKind::Stuck => self.frozen,
            AnomalyKind::NoiseBurst => {
                let n = standard_normal(rng);
                clean + n.signum() * (0.5 + n.abs()) * 0.3 * span
            }
        };
        self.channel.round(v.max(0.0))
    }
}

/// Decides when anomalies start, and what they are.
#[derive(Clone, Debug)]
pub struct Injector {
    rate: f64,
}

impl Injector {
    /// `rate` is the probability per device tick that an anomaly starts, in `[0, 1]`.
    pub fn new(rate: f64) -> Self {
        Injector {
            rate: rate.clamp(0.0, 1.0),
        }
    }

    /// Maybe starts an anomaly at `tick` on one of the `free` channels.
    /// `last_value` gives the last emitted value of a channel (for `Stuck`).
    pub fn maybe_start<R: Rng + ?Sized>(
        &self,
        tick: u64,
        free: &[Channel],
        last_value: impl Fn(Channel) -> Option<f64>,
        rng: &mut R,
    ) -> Option<ActiveAnomaly> {
        // Always draw the same number of values per tick, so the injector's stream
        // does not depend on which channels happen to be free.
        let start = rng.random::<f64>() < self.rate;
        if !start || free.is_empty() {
            return None;
        }
        let channel = *free.choose(rng)?;
        let mut kind = *AnomalyKind::ALL.choose(rng)?;
        let frozen = match kind {
            AnomalyKind::Stuck => match last_value(channel) {
                Some(v) => v,
                // Nothing emitted yet to freeze: make it a step instead.
                None => {
                    kind = AnomalyKind::Step;
                    0.0
                }
            },
            _ => 0.0,
        };
        let (lo, hi) = kind.duration_ticks();
        let duration = rng.random_range(lo..=hi);
        let sign = if rng.random::<bool>() { 1.0 } else { -1.0 };
        let magnitude = sign
            * match kind {
                AnomalyKind::Spike => rng.random_range(1.5..3.0),
                AnomalyKind::Drift => rng.random_range(0.5..1.5),
                AnomalyKind::Step => rng.random_range(0.5..1.0),
                AnomalyKind::Stuck | AnomalyKind::NoiseBurst => 0.0,
            };
        Some(ActiveAnomaly {
            kind,
            channel,
            start_tick: tick,
            duration,
            magnitude,
            frozen,
        })
    }
}
