//! `Reading`: one measured value of one channel of one device at one instant.
//!
//! **Identity.** Two readings are the same reading when they have the same
//! `(device, channel, ts)` — see [`ReadingId`]. A sensor that re-sends a
//! measurement (an MQTT redelivery, a CoAP retransmission, a file re-read after
//! a crash) sends the same identity, so every stage may de-duplicate on it. A
//! sensor that wants two values at one instant must give them different channels.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Longest device or channel name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// Longest unit string accepted, in bytes.
pub const MAX_UNIT_LEN: usize = 32;

/// Nanoseconds since the Unix epoch, UTC. `i64` covers 1677..2262.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)),
            Err(e) => Timestamp(-i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX)),
        }
    }

    /// From (fractional) seconds since the epoch, rounded to the nearest
    /// nanosecond; `None` when not finite or out of range.
    pub fn from_secs_f64(secs: f64) -> Option<Self> {
        if !secs.is_finite() {
            return None;
        }
        // Whole seconds and the fraction separately: `secs * 1e9` would round
        // to a multiple of 256 ns for present-day times.
        let whole = secs.trunc();
        if whole.abs() > 1e10 {
            return None;
        }
        let nanos = whole as i128 * 1_000_000_000 + ((secs - whole) * 1e9).round() as i128;
        i64::try_from(nanos).ok().map(Timestamp)
    }

    pub fn from_millis(ms: i64) -> Self {
        Timestamp(ms.saturating_mul(1_000_000))
    }

    /// Seconds since the epoch (f64 keeps ~0.24 µs for present-day times).
    pub fn as_secs_f64(self) -> f64 {
        let (secs, nanos) = (
            self.0.div_euclid(1_000_000_000),
            self.0.rem_euclid(1_000_000_000),
        );
        secs as f64 + nanos as f64 / 1e9
    }

    pub fn as_millis(self) -> i64 {
        self.0.div_euclid(1_000_000)
    }

    pub fn as_nanos(self) -> i64 {
        self.0
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match u64::try_from(self.0) {
            Ok(n) => {
                let t = UNIX_EPOCH + std::time::Duration::from_nanos(n);
                write!(f, "{}", humantime::format_rfc3339_nanos(t))
            }
            Err(_) => write!(f, "{}ns", self.0),
        }
    }
}

bitflags::bitflags! {
    /// Quality flags carried with a reading. A flag never changes the value; it
    /// tells a consumer what the gateway noticed or did.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
    pub struct Quality: u16 {
        /// The payload had no timestamp; the gateway's receive time was used.
        const TIME_FROM_RECEIVE = 1 << 0;
        /// The gateway's clock was not synchronised when it stamped the reading.
        const CLOCK_UNSYNCED    = 1 << 1;
        /// Outside the contract's min/max.
        const OUT_OF_RANGE      = 1 << 2;
        /// Changed faster than the contract's maximum rate.
        const RATE_OF_CHANGE    = 1 << 3;
        /// Same value N times in a row.
        const STUCK             = 1 << 4;
        /// Timestamp too far in the future or past.
        const TIME_SKEW         = 1 << 5;
        /// The value was converted to the contract's canonical unit.
        const UNIT_CONVERTED    = 1 << 6;
        /// The timestamp was stamped while the gateway's clock was not
        /// synchronised and has since been corrected from the monotonic clock
        /// (`CLOCK_UNSYNCED` is then cleared).
        const CLOCK_CORRECTED   = 1 << 7;
        /// Stamped while the clock was not synchronised, in an earlier boot of
        /// the gateway: the monotonic stamp no longer maps to wall time, so the
        /// timestamp could not be corrected (`CLOCK_UNSYNCED` stays set).
        const CLOCK_UNCORRECTABLE = 1 << 8;
        /// The contract's timestamp-skew rules were not applied because the
        /// gateway's clock was not synchronised (there was nothing to compare with).
        const SKEW_UNCHECKED    = 1 << 9;
        /// A field the contract requires (unit, timestamp, sequence) was missing.
        const MISSING_FIELD     = 1 << 10;
        /// The unit differs from the contract's and cannot be converted to it;
        /// the value is kept as sent (range and rate rules were not applied).
        const UNIT_MISMATCH     = 1 << 11;
    }
}

/// Enough to correct a timestamp that the gateway took while its wall clock
/// was not synchronised: which boot it was taken in, and the monotonic clock
/// (`CLOCK_BOOTTIME`, which never steps and counts suspend) at that instant.
/// Once the clock is synchronised, in the same boot, the correct wall time is
/// `monotonic_ns + (wall − monotonic)` measured after the synchronisation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClockStamp {
    /// `/proc/sys/kernel/random/boot_id` (or a per-process id where there is none).
    pub boot_id: String,
    /// `CLOCK_BOOTTIME` in nanoseconds when the reading was timed.
    pub monotonic_ns: i64,
}

/// Why a reading is not a valid reading.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReadingError {
    #[error("value is not finite ({0})")]
    NotFinite(f64),
    #[error("{field} is empty")]
    EmptyName { field: &'static str },
    #[error("{field} is {len} bytes long, limit is {limit}")]
    NameTooLong {
        field: &'static str,
        len: usize,
        limit: usize,
    },
    #[error("{field} contains a control character")]
    ControlCharacter { field: &'static str },
}

impl ReadingError {
    /// A short stable code for metrics and quarantine.
    pub fn reason_code(&self) -> &'static str {
        match self {
            ReadingError::NotFinite(_) => "non_finite_value",
            ReadingError::EmptyName { .. } => "empty_name",
            ReadingError::NameTooLong { .. } => "name_too_long",
            ReadingError::ControlCharacter { .. } => "control_character",
        }
    }
}

/// One measured value. Construct with [`Reading::new`] or deserialize; both validate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "UncheckedReading")]
pub struct Reading {
    pub device: String,
    pub channel: String,
    pub ts: Timestamp,
    pub value: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The sensor's own sequence number, when it sends one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Quality::is_empty")]
    pub quality: Quality,
}

/// The identity used for de-duplication: `(device, channel, ts)`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReadingId {
    pub device: String,
    pub channel: String,
    pub ts: Timestamp,
}

impl fmt::Display for ReadingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}@{}", self.device, self.channel, self.ts.0)
    }
}

impl Reading {
    /// A validated reading without unit, sequence or flags.
    pub fn new(
        device: impl Into<String>,
        channel: impl Into<String>,
        ts: Timestamp,
        value: f64,
    ) -> Result<Self, ReadingError> {
        let r = Reading {
            device: device.into(),
            channel: channel.into(),
            ts,
            value,
            unit: None,
            seq: None,
            quality: Quality::empty(),
        };
        r.validate()?;
        Ok(r)
    }

    pub fn with_unit(mut self, unit: impl Into<String>) -> Self {
        self.unit = Some(unit.into());
        self
    }

    pub fn id(&self) -> ReadingId {
        ReadingId {
            device: self.device.clone(),
            channel: self.channel.clone(),
            ts: self.ts,
        }
    }

    /// Checks the invariants every stage relies on.
    pub fn validate(&self) -> Result<(), ReadingError> {
        if !self.value.is_finite() {
            return Err(ReadingError::NotFinite(self.value));
        }
        check_name("device", &self.device, MAX_NAME_LEN)?;
        check_name("channel", &self.channel, MAX_NAME_LEN)?;
        if let Some(u) = &self.unit {
            check_name("unit", u, MAX_UNIT_LEN)?;
        }
        Ok(())
    }
}

fn check_name(field: &'static str, s: &str, limit: usize) -> Result<(), ReadingError> {
    if s.is_empty() {
        return Err(ReadingError::EmptyName { field });
    }
    if s.len() > limit {
        return Err(ReadingError::NameTooLong {
            field,
            len: s.len(),
            limit,
        });
    }
    if s.chars().any(char::is_control) {
        return Err(ReadingError::ControlCharacter { field });
    }
    Ok(())
}

#[derive(Deserialize)]
struct UncheckedReading {
    device: String,
    channel: String,
    ts: Timestamp,
    value: f64,
    #[serde(default)]
    unit: Option<String>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    quality: Quality,
}

impl TryFrom<UncheckedReading> for Reading {
    type Error = ReadingError;
    fn try_from(u: UncheckedReading) -> Result<Self, Self::Error> {
        let r = Reading {
            device: u.device,
            channel: u.channel,
            ts: u.ts,
            value: u.value,
            unit: u.unit,
            seq: u.seq,
            quality: u.quality,
        };
        r.validate()?;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_and_infinite_values_are_rejected() {
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let e = Reading::new("d", "c", Timestamp(0), v).unwrap_err();
            assert_eq!(e.reason_code(), "non_finite_value");
        }
    }

    #[test]
    fn names_are_checked_for_emptiness_length_and_control_characters() {
        assert!(matches!(
            Reading::new("", "c", Timestamp(0), 1.0),
            Err(ReadingError::EmptyName { field: "device" })
        ));
        assert!(matches!(
            Reading::new("d", "x".repeat(MAX_NAME_LEN + 1), Timestamp(0), 1.0),
            Err(ReadingError::NameTooLong {
                field: "channel",
                ..
            })
        ));
        assert!(matches!(
            Reading::new("d\n", "c", Timestamp(0), 1.0),
            Err(ReadingError::ControlCharacter { field: "device" })
        ));
    }

    #[test]
    fn deserialization_validates() {
        let json = r#"{"device":"d","channel":"","ts":0,"value":1.0}"#;
        assert!(serde_json::from_str::<Reading>(json).is_err());
        let json = r#"{"device":"d","channel":"c","ts":5,"value":1.0}"#;
        let r: Reading = serde_json::from_str(json).unwrap();
        assert_eq!(r.id().to_string(), "d/c@5");
    }

    #[test]
    fn timestamp_converts_seconds_and_rejects_non_finite() {
        assert_eq!(
            Timestamp::from_secs_f64(1.5),
            Some(Timestamp(1_500_000_000))
        );
        assert_eq!(Timestamp::from_secs_f64(f64::NAN), None);
        assert_eq!(Timestamp::from_secs_f64(1e30), None);
        assert_eq!(Timestamp(-1).as_millis(), -1);
    }
}
