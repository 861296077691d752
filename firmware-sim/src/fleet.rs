//! The fleet: N pumps, each a [`PumpModel`] plus an anomaly [`Injector`], stepped
//! round-robin in simulated time.
//!
//! **Time.** Device `i` at tick `k` reads at `start + k·step + i·step/N`, so every
//! `(device, channel, ts)` is unique and the fleet's clock only moves forward.
//! Timestamps are *wire-canonical*: SenML carries time as float seconds, which
//! cannot hold every nanosecond at today's epoch, so each timestamp is snapped to
//! the value a SenML decoder will read back (see [`wire_canonical`]). The acked
//! log and the ground truth therefore use exactly the identities a sink stores.
//!
//! **Determinism.** Device `i` owns two RNGs seeded from `seed` and `i`: one for
//! the signal and one for anomalies. The same seed gives the same readings, and
//! turning anomalies off leaves the clean signal unchanged.

use protocol::{DecodeContext, DecodeLimits, Reading, ReadingError, Timestamp};
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::anomaly::{ActiveAnomaly, AnomalyKind, Injector};
use crate::ground_truth::GroundTruthRecord;
use crate::signal::{Channel, PumpModel, PumpParams};

/// Why the fleet cannot be built or stepped.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("the fleet needs at least one device")]
    NoDevices,
    #[error("the simulation step must be at least 1 µs (got {0} ns)")]
    StepTooSmall(i64),
    #[error("start time {0} is before 1978-07-04 (2^28 s), which SenML reads as relative time")]
    StartTooEarly(Timestamp),
    #[error("anomaly rate {0} is not a probability in [0, 1]")]
    BadAnomalyRate(f64),
    #[error("the first device index plus the number of devices overflows")]
    TooManyDevices,
    #[error("simulated time ran past the year 2262")]
    TimeOverflow,
    #[error("generated an invalid reading: {0}")]
    InvalidReading(#[from] ReadingError),
}

/// What the fleet needs to know.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// Number of devices.
    pub devices: usize,
    /// Master seed.
    pub seed: u64,
    /// Simulated time of tick 0 of device 0.
    pub start: Timestamp,
    /// Simulated time between two ticks of one device, in nanoseconds (≥ 1000).
    pub step_ns: i64,
    /// Probability per device tick that an anomaly starts.
    pub anomaly_rate: f64,
    /// Device names are `{prefix}{index:04}`.
    pub device_prefix: String,
    /// Global index of the fleet's first device (normally 0). Device `i` of
    /// the fleet is pump `first_device + i`: that index names it and seeds
    /// its RNGs, so a fleet starting at `K` simulates the same pumps as
    /// devices `K..` of a larger fleet with the same seed, and two fleets
    /// with disjoint index ranges hold disjoint pumps.
    pub first_device: usize,
}

impl FleetConfig {
    pub fn validate(&self) -> Result<(), FleetError> {
        if self.devices == 0 {
            return Err(FleetError::NoDevices);
        }
        if self.step_ns < 1_000 {
            return Err(FleetError::StepTooSmall(self.step_ns));
        }
        if self.start.as_secs_f64() < (1u64 << 28) as f64 {
            return Err(FleetError::StartTooEarly(self.start));
        }
        if !(0.0..=1.0).contains(&self.anomaly_rate) {
            return Err(FleetError::BadAnomalyRate(self.anomaly_rate));
        }
        if self.first_device.checked_add(self.devices).is_none() {
            return Err(FleetError::TooManyDevices);
        }
        Ok(())
    }
}

/// One simulated reading and whether it lies inside an injected anomaly.
#[derive(Clone, Debug, PartialEq)]
pub struct SimReading {
    pub reading: Reading,
    /// `Some(kind)` when the value is altered by an injected anomaly.
    pub anomaly: Option<AnomalyKind>,
}

/// Everything one device produced at one tick.
#[derive(Clone, Debug)]
pub struct Sample {
    pub device: usize,
    pub tick: u64,
    pub ts: Timestamp,
    /// One reading per channel, in [`Channel::ALL`] order.
    pub readings: Vec<SimReading>,
    /// Anomalies that started at this tick (for the ground truth).
    pub started: Vec<GroundTruthRecord>,
}

/// Snaps a timestamp to what a SenML decoder reads back after it was encoded
/// (as float seconds in `bt`): encodes a one-reading pack with
/// `protocol::senml::encode_json` and decodes it with `decode_json`, until the
/// value no longer moves. Using the real codec keeps this true whatever the
/// codec's float handling is.
pub fn wire_canonical(ts: Timestamp) -> Timestamp {
    let limits = DecodeLimits::default();
    let ctx = DecodeContext::new(Timestamp(0));
    let mut cur = ts;
    for _ in 0..4 {
        let Ok(probe) = Reading::new("d", "c", cur, 0.0) else {
            return cur;
        };
        let bytes = protocol::senml::encode_json(&[probe]);
        let next = match protocol::senml::decode_json(&bytes, &ctx, &limits) {
            Ok(v) if v.len() == 1 => v[0].ts,
            _ => return cur,
        };
        if next == cur {
            break;
        }
        cur = next;
    }
    cur
}

#[derive(Debug)]
struct Device {
    name: String,
    model: PumpModel,
    signal_rng: StdRng,
    anomaly_rng: StdRng,
    tick: u64,
    active: [Option<ActiveAnomaly>; 5],
    last: [Option<f64>; 5],
}

/// The simulated fleet.
#[derive(Debug)]
pub struct Fleet {
    cfg: FleetConfig,
    injector: Injector,
    devices: Vec<Device>,
    next_device: usize,
    anomalies_started: u64,
}

fn device_seed(seed: u64, index: usize, stream: u64) -> u64 {
    // splitmix64 of (seed ^ index ^ stream) spreads neighbouring seeds apart.
    let mut z = seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ stream;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Fleet {
    pub fn try_new(cfg: FleetConfig) -> Result<Self, FleetError> {
        cfg.validate()?;
        let devices = (cfg.first_device..cfg.first_device + cfg.devices)
            .map(|i| {
                let mut signal_rng = StdRng::seed_from_u64(device_seed(cfg.seed, i, 0x5167_4E41));
                let anomaly_rng = StdRng::seed_from_u64(device_seed(cfg.seed, i, 0xA70_3A1E));
                let params = PumpParams::draw(&mut signal_rng);
                Device {
                    name: format!("{}{i:04}", cfg.device_prefix),
                    model: PumpModel::new(params),
                    signal_rng,
                    anomaly_rng,
                    tick: 0,
                    active: Default::default(),
                    last: [None; 5],
                }
            })
            .collect();
        Ok(Fleet {
            injector: Injector::new(cfg.anomaly_rate),
            cfg,
            devices,
            next_device: 0,
            anomalies_started: 0,
        })
    }

    pub fn config(&self) -> &FleetConfig {
        &self.cfg
    }

    pub fn device_name(&self, index: usize) -> Option<&str> {
        self.devices.get(index).map(|d| d.name.as_str())
    }

    /// Number of anomalies started so far.
    pub fn anomalies_started(&self) -> u64 {
        self.anomalies_started
    }

    /// The nominal time of `tick` on device `index` (the fleet's position,
    /// not the global index): `start + tick·step + index·step/N`, before it
    /// is snapped to the wire.
    pub fn nominal_ns(&self, index: usize, tick: u64) -> Result<i64, FleetError> {
        let n = self.cfg.devices as i64;
        let offset = (index as i64)
            .checked_mul(self.cfg.step_ns / n)
            .ok_or(FleetError::TimeOverflow)?;
        i64::try_from(tick)
            .ok()
            .and_then(|k| k.checked_mul(self.cfg.step_ns))
            .and_then(|x| x.checked_add(offset))
            .and_then(|x| x.checked_add(self.cfg.start.0))
            .ok_or(FleetError::TimeOverflow)
    }

    /// The (wire-canonical) time of `tick` on device `index`.
    pub fn ts_at(&self, index: usize, tick: u64) -> Result<Timestamp, FleetError> {
        Ok(wire_canonical(Timestamp(self.nominal_ns(index, tick)?)))
    }

    /// Steps the next device in round-robin order and returns its sample.
    pub fn next_sample(&mut self) -> Result<Sample, FleetError> {
        let index = self.next_device;
        self.next_device = (self.next_device + 1) % self.devices.len();
        let tick = self.devices[index].tick;
        let ts = self.ts_at(index, tick)?;
        let dt_s = self.cfg.step_ns as f64 / 1e9;

        let mut started = Vec::new();
        let dev = &mut self.devices[index];
        let clean = dev.model.step(ts.as_secs_f64(), dt_s, &mut dev.signal_rng);

        // Expire finished anomalies, then maybe start one on a free channel.
        for slot in dev.active.iter_mut() {
            if slot.as_ref().is_some_and(|a| !a.covers(tick)) {
                *slot = None;
            }
        }
        let free: Vec<Channel> = Channel::ALL
            .into_iter()
            .enumerate()
            .filter(|(i, _)| dev.active[*i].is_none())
            .map(|(_, c)| c)
            .collect();
        let last = dev.last;
        let new = self.injector.maybe_start(
            tick,
            &free,
            |c| {
                Channel::ALL
                    .iter()
                    .position(|x| *x == c)
                    .and_then(|i| last[i])
            },
            &mut dev.anomaly_rng,
        );
        if let Some(a) = new
            && let Some(i) = Channel::ALL.iter().position(|x| *x == a.channel)
        {
            dev.active[i] = Some(a);
        }

        let mut readings = Vec::with_capacity(Channel::ALL.len());
        for (i, ch) in Channel::ALL.into_iter().enumerate() {
            let (value, anomaly) = match &dev.active[i] {
                Some(a) => (a.apply(tick, clean[i], &mut dev.anomaly_rng), Some(a.kind)),
                None => (clean[i], None),
            };
            dev.last[i] = Some(value);
            let reading =
                Reading::new(dev.name.clone(), ch.name(), ts, value)?.with_unit(ch.unit());
            readings.push(SimReading { reading, anomaly });
        }
        dev.tick += 1;

        // Ground truth for an anomaly that started at this tick.
        let fresh: Vec<ActiveAnomaly> = dev
            .active
            .iter()
            .flatten()
            .filter(|a| a.start_tick == tick)
            .cloned()
            .collect();
        let device_name = dev.name.clone();
        for a in fresh {
            let end = self.ts_at(index, a.end_tick())?;
            started.push(GroundTruthRecord {
                device: device_name.clone(),
                channel: a.channel.name().to_owned(),
                start_ns: ts.0,
                end_ns: end.0,
                kind: a.kind,
                magnitude: a.magnitude,
            });
            self.anomalies_started += 1;
        }
        Ok(Sample {
            device: index,
            tick,
            ts,
            readings,
            started,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::PayloadFormat;
    use std::collections::HashSet;

    fn cfg(devices: usize, seed: u64, rate: f64) -> FleetConfig {
        FleetConfig {
            devices,
            seed,
            start: Timestamp(1_760_000_000_123_000_000),
            step_ns: 1_000_000_000,
            anomaly_rate: rate,
            device_prefix: "pump-".into(),
            first_device: 0,
        }
    }

    fn samples(c: FleetConfig, n: usize) -> Vec<Sample> {
        let mut f = Fleet::try_new(c).unwrap();
        (0..n).map(|_| f.next_sample().unwrap()).collect()
    }

    #[test]
    fn the_same_seed_gives_the_same_readings_and_another_seed_does_not() {
        let a = samples(cfg(3, 42, 0.05), 600);
        let b = samples(cfg(3, 42, 0.05), 600);
        let c = samples(cfg(3, 43, 0.05), 600);
        let values = |s: &[Sample]| {
            s.iter()
                .flat_map(|x| x.readings.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(values(&a), values(&b));
        assert_ne!(values(&a), values(&c));
        let gt = |s: &[Sample]| s.iter().flat_map(|x| x.started.clone()).collect::<Vec<_>>();
        assert_eq!(gt(&a), gt(&b));
    }

    #[test]
    fn timestamps_are_unique_per_device_and_channel_and_survive_the_wire() {
        let mut c = cfg(7, 1, 0.0);
        c.step_ns = 1_000; // the smallest step allowed, to stress float seconds
        let mut seen = HashSet::new();
        for s in samples(c, 7 * 2_000) {
            for r in &s.readings {
                assert!(
                    seen.insert(r.reading.id()),
                    "duplicate identity {}",
                    r.reading.id()
                );
                assert_eq!(wire_canonical(r.reading.ts), r.reading.ts);
            }
        }
        assert_eq!(seen.len(), 7 * 2_000 * Channel::ALL.len());
    }

    #[test]
    fn senml_packs_decode_back_to_the_same_readings() {
        let limits = DecodeLimits::default();
        let ctx = DecodeContext::new(Timestamp(0));
        for s in samples(cfg(4, 9, 0.05), 400) {
            let readings: Vec<Reading> = s.readings.iter().map(|r| r.reading.clone()).collect();
            let bytes = protocol::senml::encode_json(&readings);
            let decoded = PayloadFormat::SenmlJson
                .decode(&bytes, &ctx, &limits)
                .unwrap();
            assert_eq!(decoded, readings);
            // One reading per message decodes back too.
            let one = protocol::senml::encode_json(&readings[..1]);
            assert_eq!(
                PayloadFormat::SenmlJson
                    .decode(&one, &ctx, &limits)
                    .unwrap(),
                readings[..1]
            );
        }
    }

    #[test]
    fn every_anomaly_kind_changes_the_signal_in_its_window_and_the_ground_truth_covers_it() {
        let n = 3 * 4_000;
        let with = samples(cfg(3, 5, 0.02), n);
        let clean = samples(cfg(3, 5, 0.0), n);
        let truth: Vec<GroundTruthRecord> = with.iter().flat_map(|s| s.started.clone()).collect();
        let covered = |dev: &str, ch: &str, ts: i64| {
            truth
                .iter()
                .filter(|g| {
                    g.device == dev && g.channel == ch && (g.start_ns..=g.end_ns).contains(&ts)
                })
                .count()
        };
        let mut kinds_seen = HashSet::new();
        let mut stuck_windows: std::collections::HashMap<(String, String, i64), Vec<f64>> =
            Default::default();
        for (w, c) in with.iter().zip(&clean) {
            assert!(c.started.is_empty());
            for (rw, rc) in w.readings.iter().zip(&c.readings) {
                let r = &rw.reading;
                let n_cover = covered(&r.device, &r.channel, r.ts.0);
                match rw.anomaly {
                    None => {
                        assert_eq!(
                            r.value,
                            rc.reading.value,
                            "untouched reading changed: {}",
                            r.id()
                        );
                        assert_eq!(n_cover, 0, "ground truth claims an anomaly at {}", r.id());
                    }
                    Some(kind) => {
                        kinds_seen.insert(kind);
                        assert_eq!(
                            n_cover,
                            1,
                            "anomalous reading {} not covered exactly once",
                            r.id()
                        );
                        if kind == AnomalyKind::Stuck {
                            let g = truth
                                .iter()
                                .find(|g| {
                                    g.device == r.device
                                        && g.channel == r.channel
                                        && g.start_ns <= r.ts.0
                                        && r.ts.0 <= g.end_ns
                                })
                                .unwrap();
                            stuck_windows
                                .entry((g.device.clone(), g.channel.clone(), g.start_ns))
                                .or_default()
                                .push(r.value);
                        } else {
                            assert_ne!(
                                r.value,
                                rc.reading.value,
                                "{kind:?} left {} unchanged",
                                r.id()
                            );
                        }
                    }
                }
            }
        }
        for k in AnomalyKind::ALL {
            assert!(kinds_seen.contains(&k), "{k:?} never injected");
        }
        assert!(!stuck_windows.is_empty());
        for ((dev, ch, start), values) in &stuck_windows {
            assert!(
                values.windows(2).all(|w| w[0] == w[1]),
                "stuck value moved in {dev}/{ch}@{start}"
            );
        }
        for g in &truth {
            assert!(
                g.end_ns >= g.start_ns,
                "window ends before it starts: {g:?}"
            );
        }
    }

    #[test]
    fn invalid_configs_are_refused() {
        assert!(matches!(
            Fleet::try_new(cfg(0, 1, 0.0)),
            Err(FleetError::NoDevices)
        ));
        let mut c = cfg(1, 1, 0.0);
        c.step_ns = 999;
        assert!(matches!(
            Fleet::try_new(c),
            Err(FleetError::StepTooSmall(999))
        ));
        let mut c = cfg(1, 1, 0.0);
        c.start = Timestamp(5);
        assert!(matches!(
            Fleet::try_new(c),
            Err(FleetError::StartTooEarly(_))
        ));
        assert!(matches!(
            Fleet::try_new(cfg(1, 1, 1.5)),
            Err(FleetError::BadAnomalyRate(_))
        ));
    }
}
