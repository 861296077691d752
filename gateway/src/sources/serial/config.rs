//! `[[serial]]`: one table per serial port.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use super::format::SerialFormat;
use crate::config::ConfigProblem;

/// Largest `max_line_bytes` accepted (the line buffer is held in memory).
const MAX_LINE_LIMIT: u64 = 1024 * 1024;

/// One serial port read line by line.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialSourceConfig {
    /// Name of the port in logs, metrics (`port` label) and quarantine origins
    /// (`serial:<name>`): 1..=64 of `A-Z a-z 0-9 _ . -`, unique.
    pub name: String,
    /// Device path, e.g. `/dev/ttyUSB0`, or better a stable
    /// `/dev/serial/by-id/...` link. It may be absent at start: it is retried.
    pub path: PathBuf,
    /// Line speed in bits per second.
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// Data bits per character: 5, 6, 7 or 8.
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    /// `none`, `odd` or `even`.
    #[serde(default)]
    pub parity: SerialParity,
    /// Stop bits: 1 or 2.
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// `none`, `software` (XON/XOFF) or `hardware` (RTS/CTS). Only with flow
    /// control can the gateway make a device pause when it stops reading.
    #[serde(default)]
    pub flow_control: SerialFlowControl,
    /// Device name for the readings. Required for `csv` and `checksummed`
    /// (their lines carry none); for `senml`, the device of records that
    /// name only a channel.
    pub device: Option<String>,
    /// Line format: `senml`, `csv` or `checksummed`.
    #[serde(default)]
    pub format: SerialFormat,
    /// Longest line kept; a longer one is discarded up to its end, counted
    /// and quarantined (`too_large`). At most 1 MiB.
    #[serde(default = "default_max_line")]
    pub max_line_bytes: ByteSize,
    /// First delay before re-opening a vanished or unopenable device; doubles
    /// (with jitter) up to `reopen_max`.
    #[serde(default = "default_reopen_min", with = "humantime_serde")]
    pub reopen_min: Duration,
    /// Longest delay between two attempts to open the device.
    #[serde(default = "default_reopen_max", with = "humantime_serde")]
    pub reopen_max: Duration,
}

/// Parity bit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SerialParity {
    #[default]
    None,
    Odd,
    Even,
}

/// Flow control.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SerialFlowControl {
    #[default]
    None,
    /// XON/XOFF.
    Software,
    /// RTS/CTS.
    Hardware,
}

fn default_baud() -> u32 {
    115_200
}
fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}
fn default_max_line() -> ByteSize {
    ByteSize::kib(8)
}
fn default_reopen_min() -> Duration {
    Duration::from_millis(200)
}
fn default_reopen_max() -> Duration {
    Duration::from_secs(10)
}

impl SerialSourceConfig {
    /// The line limit in bytes.
    pub fn max_line(&self) -> usize {
        usize::try_from(self.max_line_bytes.as_u64()).unwrap_or(usize::MAX)
    }

    /// Every problem of this port, keys prefixed with `key` (e.g. `serial[0]`).
    pub fn validate(&self, key: &str, problems: &mut Vec<ConfigProblem>) {
        let mut bad = |field: &str, message: String| {
            problems.push(ConfigProblem {
                key: format!("{key}.{field}"),
                message,
            })
        };
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            bad("name", "must be 1..=64 of A-Z a-z 0-9 _ . -".into());
        }
        if self.path.as_os_str().is_empty() || !self.path.is_absolute() {
            bad("path", "must be an absolute device path".into());
        }
        if !(50..=4_000_000).contains(&self.baud) {
            bad("baud", "must be within 50..=4000000".into());
        }
        if !(5..=8).contains(&self.data_bits) {
            bad("data_bits", "must be 5, 6, 7 or 8".into());
        }
        if !(1..=2).contains(&self.stop_bits) {
            bad("stop_bits", "must be 1 or 2".into());
        }
        match &self.device {
            None if self.format.needs_device() => bad(
                "device",
                format!(
                    "is required with format = \"{}\" (its lines name no device)",
                    self.format.name()
                ),
            ),
            Some(d) => {
                if let Err(e) = protocol::Reading::new(d.as_str(), "x", protocol::Timestamp(0), 0.0)
                {
                    bad("device", format!("is not a valid device name: {e}"));
                } else if d.contains(['/', ':']) {
                    bad("device", "must not contain / or :".into());
                }
            }
            None => {}
        }
        let line = self.max_line_bytes.as_u64();
        if !(16..=MAX_LINE_LIMIT).contains(&line) {
            bad("max_line_bytes", "must be within 16 B..=1 MiB".into());
        }
        if self.reopen_min.is_zero() || self.reopen_min > self.reopen_max {
            bad(
                "reopen_min",
                "must be positive and not exceed reopen_max".into(),
            );
        }
    }
}

/// Validates every `[[serial]]` table, plus what they must not share: names
/// and device paths are unique. Returns every problem, keys `serial[i].field`.
pub fn validate_ports(ports: &[SerialSourceConfig]) -> Vec<ConfigProblem> {
    let mut problems = Vec::new();
    let mut names = HashSet::new();
    let mut paths = HashSet::new();
    for (i, port) in ports.iter().enumerate() {
        let key = format!("serial[{i}]");
        port.validate(&key, &mut problems);
        if !names.insert(port.name.as_str()) {
            problems.push(ConfigProblem {
                key: format!("{key}.name"),
                message: format!("{:?} is used by another [[serial]] port", port.name),
            });
        }
        if !paths.insert(port.path.as_path()) {
            problems.push(ConfigProblem {
                key: format!("{key}.path"),
                message: format!("{} is used by another [[serial]] port", port.path.display()),
            });
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Wrap {
        serial: Vec<SerialSourceConfig>,
    }

    fn parse(text: &str) -> Vec<SerialSourceConfig> {
        toml::from_str::<Wrap>(text).unwrap().serial
    }

    #[test]
    fn defaults_are_8n1_at_115200_senml() {
        let ports = parse("[[serial]]\nname = \"a\"\npath = \"/dev/ttyUSB0\"\n");
        let p = &ports[0];
        assert_eq!((p.baud, p.data_bits, p.stop_bits), (115_200, 8, 1));
        assert_eq!(p.parity, SerialParity::None);
        assert_eq!(p.flow_control, SerialFlowControl::None);
        assert_eq!(p.format, SerialFormat::Senml);
        assert_eq!(p.max_line(), 8192);
        let problems = validate_ports(&ports);
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let ports = parse(
            r#"
            [[serial]]
            name = "bad name"
            path = "ttyUSB0"
            baud = 0
            data_bits = 9
            stop_bits = 3
            format = "csv"
            max_line_bytes = "2 MiB"
            reopen_min = "0s"
            [[serial]]
            name = "b"
            path = "/dev/ttyS0"
            device = "a/b"
            [[serial]]
            name = "b"
            path = "/dev/ttyS0"
            format = "checksummed"
            device = "ok"
            parity = "even"
            flow_control = "hardware"
            "#,
        );
        let problems = validate_ports(&ports);
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for key in [
            "serial[0].name",
            "serial[0].path",
            "serial[0].baud",
            "serial[0].data_bits",
            "serial[0].stop_bits",
            "serial[0].device",
            "serial[0].max_line_bytes",
            "serial[0].reopen_min",
            "serial[1].device",
            "serial[2].name",
            "serial[2].path",
        ] {
            assert!(keys.contains(&key), "missing {key} in {keys:?}");
        }
        assert_eq!(problems.len(), 11, "{problems:?}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let r = toml::from_str::<Wrap>("[[serial]]\nname = \"a\"\npath = \"/x\"\nspeed = 9600\n");
        assert!(r.is_err());
    }
}
