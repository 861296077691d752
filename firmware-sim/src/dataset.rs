//! `dataset`: the fleet of `run` stepped offline in simulated time (no
//! broker, no pacing, no sleeping), written as one labelled CSV for
//! `outpost-cloud-sink train` / `evaluate`.
//!
//! The readings are exactly those `run` would publish for the same seed,
//! start time, step and anomaly rate ([`Fleet`] generates both). One row per
//! device tick:
//!
//! ```text
//! time,device,vibration,current,pressure,temperature,flow,label
//! ```
//!
//! - `time`: Unix epoch **milliseconds** (`train --time-column time` reads a
//!   number below 1e14 as ms). It is the tick's nominal time
//!   `start + tick·step + i·step/N` rounded to the millisecond, so the rows of
//!   one device are exactly one step apart (the wire-canonical nanosecond
//!   timestamps of the ground truth jitter by a few hundred ns, which would
//!   break the sink's "consecutive rows" test). The step must therefore be a
//!   whole number of milliseconds.
//! - one column per channel ([`Channel::ALL`] order), the published value;
//! - `label`: `1` when the tick's (wire-canonical) timestamp lies inside an
//!   injected anomaly of that device — any channel — by the ground truth's
//!   inclusive `[start_ns, end_ns]`; `0` otherwise. Every reading an anomaly
//!   altered is labelled, including ticks where the alteration is too small
//!   to see (the first ticks of a drift ramp, a stuck value that still equals
//!   the clean one): labels state what was injected, not what is detectable.
//!
//! `first_device` picks the global indices of the devices (names and RNG
//! streams), so two datasets with disjoint ranges hold different pumps: a
//! model can be trained on devices `0..6` and tested on devices `6..10`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::fleet::{Fleet, FleetConfig, FleetError};
use crate::ground_truth::{GroundTruthError, GroundTruthRecord, GroundTruthWriter};
use crate::signal::Channel;

/// Everything `dataset` needs, already validated.
#[derive(Clone, Debug)]
pub struct DatasetConfig {
    pub fleet: FleetConfig,
    /// Ticks per device.
    pub ticks: u64,
    pub out: PathBuf,
    pub ground_truth: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error(transparent)]
    Fleet(#[from] FleetError),
    #[error(transparent)]
    GroundTruth(#[from] GroundTruthError),
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the step must be a whole number of milliseconds (got {0} ns)")]
    StepNotWholeMs(i64),
}

/// What a dataset run wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatasetSummary {
    pub rows: u64,
    pub anomalous_rows: u64,
    pub anomalies: u64,
}

/// The CSV header.
pub fn header() -> String {
    let mut h = String::from("time,device");
    for ch in Channel::ALL {
        h.push(',');
        h.push_str(ch.name());
    }
    h.push_str(",label");
    h
}

/// Writes the dataset (and the ground truth, when asked) per the module docs.
pub fn write_dataset(cfg: &DatasetConfig) -> Result<DatasetSummary, DatasetError> {
    if cfg.fleet.step_ns % 1_000_000 != 0 {
        return Err(DatasetError::StepNotWholeMs(cfg.fleet.step_ns));
    }
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| DatasetError::Io { path, source }
    };
    let mut out = BufWriter::new(File::create(&cfg.out).map_err(io(&cfg.out))?);
    let mut gt = match &cfg.ground_truth {
        Some(p) => Some(GroundTruthWriter::create(p)?),
        None => None,
    };
    writeln!(out, "{}", header()).map_err(io(&cfg.out))?;
    let mut fleet = Fleet::try_new(cfg.fleet.clone())?;
    // Per device: the ground-truth windows that may still cover a later tick.
    let mut open: Vec<Vec<GroundTruthRecord>> = vec![Vec::new(); cfg.fleet.devices];
    let mut summary = DatasetSummary {
        rows: 0,
        anomalous_rows: 0,
        anomalies: 0,
    };
    let total = cfg.ticks.saturating_mul(cfg.fleet.devices as u64);
    let mut line = String::new();
    for _ in 0..total {
        let s = fleet.next_sample()?;
        for r in &s.started {
            if let Some(g) = gt.as_mut() {
                g.write(r)?;
            }
            summary.anomalies += 1;
        }
        let windows = &mut open[s.device];
        windows.extend(s.started.iter().cloned());
        windows.retain(|g| g.end_ns >= s.ts.0);
        let label = windows.iter().any(|g| g.start_ns <= s.ts.0);
        let ms = (fleet.nominal_ns(s.device, s.tick)? + 500_000).div_euclid(1_000_000);
        line.clear();
        line.push_str(&format!("{ms},{}", s.readings[0].reading.device));
        for r in &s.readings {
            line.push_str(&format!(",{}", r.reading.value));
        }
        line.push_str(if label { ",1\n" } else { ",0\n" });
        out.write_all(line.as_bytes()).map_err(io(&cfg.out))?;
        summary.rows += 1;
        summary.anomalous_rows += u64::from(label);
    }
    out.flush().map_err(io(&cfg.out))?;
    if let Some(g) = gt.as_mut() {
        g.flush()?;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Timestamp;

    fn cfg(dir: &Path, devices: usize, first: usize, seed: u64) -> DatasetConfig {
        DatasetConfig {
            fleet: FleetConfig {
                devices,
                seed,
                start: Timestamp(1_735_689_600_000_000_000),
                step_ns: 1_000_000_000,
                anomaly_rate: 0.01,
                device_prefix: "pump-".into(),
                first_device: first,
            },
            ticks: 3_000,
            out: dir.join(format!("d{first}-{seed}.csv")),
            ground_truth: Some(dir.join(format!("gt{first}-{seed}.csv"))),
        }
    }

    struct Row {
        time_ms: i64,
        device: String,
        label: bool,
    }

    fn rows(path: &Path) -> Vec<Row> {
        let text = std::fs::read_to_string(path).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some(header().as_str()));
        lines
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                assert_eq!(f.len(), 3 + Channel::ALL.len(), "{l}");
                Row {
                    time_ms: f[0].parse().unwrap(),
                    device: f[1].to_owned(),
                    label: match f[f.len() - 1] {
                        "1" => true,
                        "0" => false,
                        other => panic!("label {other}"),
                    },
                }
            })
            .collect()
    }

    #[test]
    fn labels_are_exactly_the_ground_truth_windows() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path(), 3, 0, 11);
        let summary = write_dataset(&c).unwrap();
        let data = rows(&c.out);
        assert_eq!(data.len() as u64, summary.rows);
        assert_eq!(summary.rows, 3 * 3_000);
        // Re-run the fleet for the exact (wire-canonical) timestamps and the
        // per-reading anomaly flags, and read the ground truth file back.
        let text = std::fs::read_to_string(c.ground_truth.as_ref().unwrap()).unwrap();
        let truth: Vec<(String, i64, i64)> = text
            .lines()
            .skip(1)
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (
                    f[0].to_owned(),
                    f[2].parse().unwrap(),
                    f[3].parse().unwrap(),
                )
            })
            .collect();
        assert_eq!(truth.len() as u64, summary.anomalies);
        assert!(summary.anomalies > 20, "{summary:?}");
        let mut fleet = Fleet::try_new(c.fleet.clone()).unwrap();
        let mut positives = 0;
        for row in &data {
            let s = fleet.next_sample().unwrap();
            assert_eq!(row.device, s.readings[0].reading.device);
            let ts = s.ts.0;
            // The written time is the tick's time to the millisecond.
            assert!((row.time_ms * 1_000_000 - ts).abs() <= 500_000, "{ts}");
            let in_truth = truth
                .iter()
                .any(|(d, a, b)| *d == row.device && (*a..=*b).contains(&ts));
            assert_eq!(row.label, in_truth, "{} at {ts}", row.device);
            let altered = s.readings.iter().any(|r| r.anomaly.is_some());
            assert_eq!(row.label, altered, "{} at {ts}", row.device);
            positives += usize::from(row.label);
        }
        assert_eq!(positives as u64, summary.anomalous_rows);
        assert!(positives > 0 && positives < data.len());
        // Rows of one device are exactly one step apart.
        let dev0: Vec<i64> = data
            .iter()
            .filter(|r| r.device == "pump-0000")
            .map(|r| r.time_ms)
            .collect();
        assert!(dev0.windows(2).all(|w| w[1] - w[0] == 1_000));
    }

    #[test]
    fn the_same_seed_writes_the_same_file_and_first_device_picks_other_pumps() {
        let dir = tempfile::tempdir().unwrap();
        let a = cfg(dir.path(), 2, 0, 5);
        write_dataset(&a).unwrap();
        let a_text = std::fs::read(&a.out).unwrap();
        let mut again = a.clone();
        again.out = dir.path().join("again.csv");
        again.ground_truth = None;
        write_dataset(&again).unwrap();
        assert_eq!(a_text, std::fs::read(&again.out).unwrap());

        let other_seed = cfg(dir.path(), 2, 0, 6);
        write_dataset(&other_seed).unwrap();
        assert_ne!(a_text, std::fs::read(&other_seed.out).unwrap());

        let later = cfg(dir.path(), 2, 2, 5);
        write_dataset(&later).unwrap();
        let names: std::collections::BTreeSet<String> =
            rows(&later.out).into_iter().map(|r| r.device).collect();
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            ["pump-0002", "pump-0003"]
        );
    }

    #[test]
    fn a_step_that_is_not_whole_milliseconds_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(dir.path(), 1, 0, 1);
        c.fleet.step_ns = 1_500_000_500;
        assert!(matches!(
            write_dataset(&c),
            Err(DatasetError::StepNotWholeMs(_))
        ));
    }
}
