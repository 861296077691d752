//! Events a gateway reports besides readings, uplinked to the sink through
//! the outbox: an anomaly [`Alert`] raised by its edge analytics (also what the
//! MQTT alert topic carries, as JSON; [`crate::batch::OutboxItem::Alert`]), and
//! a [`QuarantineReport`] of input it refused
//! ([`crate::batch::OutboxItem::Quarantined`]).

use serde::{Deserialize, Serialize};

use crate::reading::Timestamp;

/// One channel's share in an alert: its largest robust |z| in the window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Contribution {
    pub channel: String,
    pub z: f64,
}

/// An anomaly event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub device: String,
    /// First frame time of the earliest anomalous window still counted by
    /// the hysteresis.
    pub start: Timestamp,
    /// Last frame time of the window that raised the alert.
    pub end: Timestamp,
    /// That window's score.
    pub score: f64,
    pub threshold: f64,
    /// `fallback` or the model's name.
    pub model: String,
    /// 0 for the fallback detector.
    pub model_version: u64,
    /// The channels that deviated most, largest first (robust z against the
    /// device's baseline; empty while the baseline warms up).
    pub channels: Vec<Contribution>,
    /// Gateway time the alert was raised.
    pub raised: Timestamp,
}

/// Longest device or model name an alert may carry.
pub const MAX_NAME_BYTES: usize = 256;
/// Most channels named in one alert.
pub const MAX_CHANNELS: usize = 64;

impl Alert {
    /// Why this alert cannot be stored, if it cannot.
    pub fn problem(&self) -> Option<String> {
        if self.device.is_empty() || self.device.len() > MAX_NAME_BYTES {
            return Some(format!("device name of {} bytes", self.device.len()));
        }
        if self.model.len() > MAX_NAME_BYTES {
            return Some(format!("model name of {} bytes", self.model.len()));
        }
        if self.end < self.start {
            return Some("window ends before it starts".into());
        }
        if !self.score.is_finite() || !self.threshold.is_finite() {
            return Some("score or threshold is not finite".into());
        }
        if self.channels.len() > MAX_CHANNELS {
            return Some(format!("{} channels", self.channels.len()));
        }
        if let Some(c) = self
            .channels
            .iter()
            .find(|c| c.channel.is_empty() || c.channel.len() > MAX_NAME_BYTES || !c.z.is_finite())
        {
            return Some(format!("bad channel entry {:?}", c.channel));
        }
        None
    }
}

/// Most payload bytes a [`QuarantineReport`] carries to the sink.
pub const MAX_REPORT_PAYLOAD: usize = 1024;

/// Input the gateway refused and quarantined, reported to the sink so it can
/// be seen without logging in to the gateway.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuarantineReport {
    /// When the gateway received the input.
    pub received: Timestamp,
    /// Where it came from, e.g. `mqtt:outpost/sensors/pump-1`.
    pub origin: String,
    /// Stable reason code, e.g. `syntax`, `non_finite_value`.
    pub reason: String,
    /// Human-readable detail.
    pub detail: String,
    /// The first bytes of the payload (at most [`MAX_REPORT_PAYLOAD`]).
    #[serde(with = "crate::cbor_bytes")]
    pub payload: Vec<u8>,
    /// The payload's full length.
    pub payload_len: u64,
}

impl QuarantineReport {
    /// Why this report cannot be stored, if it cannot.
    pub fn problem(&self) -> Option<String> {
        if self.origin.len() > MAX_NAME_BYTES * 4 || self.reason.len() > MAX_NAME_BYTES {
            return Some("origin or reason too long".into());
        }
        if self.detail.len() > 16 * 1024 {
            return Some(format!("detail of {} bytes", self.detail.len()));
        }
        if self.payload.len() > MAX_REPORT_PAYLOAD {
            return Some(format!("payload of {} bytes", self.payload.len()));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert() -> Alert {
        Alert {
            device: "pump-1".into(),
            start: Timestamp(1),
            end: Timestamp(2),
            score: 9.5,
            threshold: 8.0,
            model: "fallback".into(),
            model_version: 0,
            channels: vec![Contribution {
                channel: "current".into(),
                z: 9.5,
            }],
            raised: Timestamp(3),
        }
    }

    #[test]
    fn a_good_alert_has_no_problem_and_bad_ones_are_named() {
        assert_eq!(alert().problem(), None);
        let mut a = alert();
        a.device.clear();
        assert!(a.problem().is_some_and(|p| p.contains("device")));
        let mut a = alert();
        a.score = f64::NAN;
        assert!(a.problem().is_some_and(|p| p.contains("finite")));
        let mut a = alert();
        a.end = Timestamp(0);
        assert!(a.problem().is_some_and(|p| p.contains("ends before")));
    }
}
