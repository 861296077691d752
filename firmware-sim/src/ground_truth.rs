//! The ground-truth log: one line per injected anomaly.
//!
//! CSV with this header line:
//!
//! ```text
//! device,channel,start_ns,end_ns,kind,magnitude
//! ```
//!
//! `start_ns`/`end_ns` are the timestamps (Unix nanoseconds, exactly as a SenML
//! decoder reads them) of the first and last affected reading, both inclusive.
//! `kind` is `spike`, `drift`, `stuck`, `step` or `noise_burst`; `magnitude` is
//! signed, in units of the channel's span (0 for `stuck` and `noise_burst`).
//! A line is written when the anomaly starts, so a window may extend past the
//! last reading actually sent.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::anomaly::AnomalyKind;

/// The CSV header of the ground-truth file.
pub const HEADER: &str = "device,channel,start_ns,end_ns,kind,magnitude";

/// One injected anomaly.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GroundTruthRecord {
    pub device: String,
    pub channel: String,
    pub start_ns: i64,
    pub end_ns: i64,
    pub kind: AnomalyKind,
    pub magnitude: f64,
}

impl GroundTruthRecord {
    pub fn to_csv_line(&self) -> String {
        format!(
            "{},{},{},{},{},{}",
            self.device,
            self.channel,
            self.start_ns,
            self.end_ns,
            self.kind.name(),
            self.magnitude
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GroundTruthError {
    #[error("cannot write ground truth {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Appends ground-truth records to a CSV file (created or truncated).
#[derive(Debug)]
pub struct GroundTruthWriter {
    path: PathBuf,
    out: BufWriter<File>,
    written: u64,
}

impl GroundTruthWriter {
    pub fn create(path: &Path) -> Result<Self, GroundTruthError> {
        let io = |source| GroundTruthError::Io {
            path: path.to_owned(),
            source,
        };
        let mut out = BufWriter::new(File::create(path).map_err(io)?);
        writeln!(out, "{HEADER}").map_err(io)?;
        Ok(GroundTruthWriter {
            path: path.to_owned(),
            out,
            written: 0,
        })
    }

    pub fn write(&mut self, r: &GroundTruthRecord) -> Result<(), GroundTruthError> {
        self.written += 1;
        writeln!(self.out, "{}", r.to_csv_line()).map_err(|source| GroundTruthError::Io {
            path: self.path.clone(),
            source,
        })
    }

    pub fn flush(&mut self) -> Result<(), GroundTruthError> {
        self.out.flush().map_err(|source| GroundTruthError::Io {
            path: self.path.clone(),
            source,
        })
    }

    pub fn written(&self) -> u64 {
        self.written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_starts_with_the_header_and_holds_one_line_per_anomaly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gt.csv");
        let mut w = GroundTruthWriter::create(&path).unwrap();
        let r = GroundTruthRecord {
            device: "pump-0001".into(),
            channel: "flow".into(),
            start_ns: 10,
            end_ns: 20,
            kind: AnomalyKind::NoiseBurst,
            magnitude: 0.0,
        };
        w.write(&r).unwrap();
        w.flush().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            format!("{HEADER}\npump-0001,flow,10,20,noise_burst,0\n")
        );
    }
}
