//! Command line (clap derive) and its validation into [`RunConfig`] / [`BenchConfig`].
//!
//! Validation reports every problem at once, each naming its flag.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::{Args, Parser, Subcommand, ValueEnum};
use protocol::Timestamp;
use rumqttc::QoS;

use crate::bench::BenchConfig;
use crate::dataset::DatasetConfig;
use crate::fleet::FleetConfig;
use crate::publish::coap::CoapConfig;
use crate::publish::http::HttpConfig;
use crate::publish::mqtt::MqttConfig;
use crate::publish::serial::{SerialConfig, SerialFormat};
use crate::run::{RunConfig, StopAfter, TransportConfig};
use crate::signal::Channel;

#[derive(Debug, Parser)]
#[command(
    name = "outpost-firmware-sim",
    version,
    about = "Simulated Outpost sensor fleet with ground truth."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Simulate a fleet of pumps and publish their readings (MQTT or HTTP).
    Run(Box<RunArgs>),
    /// Measure the raw broker → bare subscriber rate (the benchmark baseline).
    BenchBroker(BenchArgs),
    /// Write the fleet's readings offline (simulated time, no broker) as a
    /// labelled CSV for `outpost-cloud-sink train`.
    Dataset(DatasetArgs),
}

#[derive(Debug, Args)]
pub struct DatasetArgs {
    /// Number of simulated devices.
    #[arg(long, default_value_t = 10)]
    pub devices: usize,
    /// Global index of the first device: devices are pumps K..K+N (names and
    /// random streams), so disjoint ranges give different pumps.
    #[arg(long, default_value_t = 0)]
    pub first_device: usize,
    /// Simulated time per device (e.g. 6h); ticks = duration / sim step.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Simulated time between two readings of one device (whole milliseconds).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub sim_step: Duration,
    /// Seed of every random choice; the same seed gives the same file.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Probability per device tick that an anomaly starts, in [0, 1].
    #[arg(long, default_value_t = 0.001)]
    pub anomaly_rate: f64,
    /// Simulated time of the first reading (RFC 3339). Fixed by default, so
    /// the file depends on the arguments only.
    #[arg(long, default_value = "2025-01-01T00:00:00Z")]
    pub start_time: String,
    /// Device names are {prefix}{index:04}.
    #[arg(long, default_value = "pump-")]
    pub device_prefix: String,
    /// Output CSV: time (epoch ms),device,<one column per channel>,label.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Also write the injected anomalies here (CSV, as `run --ground-truth`).
    #[arg(long, value_name = "FILE")]
    pub ground_truth: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("stop").required(true).args(["duration", "count"])))]
pub struct RunArgs {
    /// How readings leave: MQTT to --broker, or HTTP POSTs to --target.
    #[arg(long, value_enum, default_value_t = Protocol::Mqtt)]
    pub protocol: Protocol,
    /// With --protocol http: the gateway's base URL (e.g. http://127.0.0.1:8081);
    /// messages go to {target}/v1/readings. With --protocol coap: the gateway's
    /// CoAP socket as HOST:PORT (or coap://HOST:PORT); messages go to /readings.
    #[arg(long, value_name = "URL")]
    pub target: Option<String>,
    /// With --protocol http: bearer token for the gateway's HTTP source.
    #[arg(long, env = "OUTPOST_SIM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// MQTT broker as HOST:PORT.
    #[arg(long, env = "OUTPOST_SIM_BROKER", default_value = "127.0.0.1:1883")]
    pub broker: String,
    /// With --protocol serial: the serial device (or pty) to write lines to.
    #[arg(long, value_name = "PATH")]
    pub device: Option<PathBuf>,
    /// With --protocol serial: line format. csv and checksummed lines carry no
    /// device name, so they need --devices 1 (the gateway port's `device`).
    #[arg(long, value_enum, default_value_t = SerialFormat::Senml)]
    pub serial_format: SerialFormat,
    /// With --protocol serial: line speed (8N1, no flow control).
    #[arg(long, default_value_t = 115_200)]
    pub baud: u32,
    /// Number of simulated devices.
    #[arg(long, default_value_t = 10)]
    pub devices: usize,
    /// Messages per second across the fleet (0 = as fast as the inflight window allows).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Publish for this long (e.g. 30s, 5m).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Publish this many messages.
    #[arg(long)]
    pub count: Option<u64>,
    /// MQTT QoS: 0 or 1.
    #[arg(long, default_value_t = 1)]
    pub qos: u8,
    /// Seed of every random choice; the same seed gives the same readings.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write injected anomalies here (CSV: device,channel,start_ns,end_ns,kind,magnitude).
    #[arg(long, value_name = "FILE")]
    pub ground_truth: Option<PathBuf>,
    /// Write every reading of every ACKED message here (device,channel,ts_ns,value).
    #[arg(long, value_name = "FILE")]
    pub acked_log: Option<PathBuf>,
    /// Write the summary as JSON here.
    #[arg(long, value_name = "FILE")]
    pub summary_json: Option<PathBuf>,
    /// Topic prefix; messages go to {prefix}/{device}.
    #[arg(long, default_value = "outpost/sensors")]
    pub topic_prefix: String,
    /// Probability per device tick that an anomaly starts, in [0, 1].
    #[arg(long, default_value_t = 0.001)]
    pub anomaly_rate: f64,
    /// One reading per message instead of one SenML pack per device per tick.
    #[arg(long)]
    pub single: bool,
    /// MQTT client id (default: outpost-sim-{pid}).
    #[arg(long)]
    pub client_id: Option<String>,
    /// MQTT username.
    #[arg(long, env = "OUTPOST_SIM_USERNAME")]
    pub username: Option<String>,
    /// MQTT password.
    #[arg(long, env = "OUTPOST_SIM_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Most messages published and not yet acked (HTTP: requests in flight).
    #[arg(long, default_value_t = 100)]
    pub max_inflight: u16,
    /// Simulated time of the first reading: RFC 3339 (2025-01-01T00:00:00Z) or "now".
    #[arg(long, default_value = "now")]
    pub start_time: String,
    /// Simulated time between two readings of one device (default: devices / rate,
    /// ×5 with --single; 1s when the rate is unlimited).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub sim_step: Option<Duration>,
    /// Give up when the broker cannot be reached for this long. HTTP: how long
    /// one message is retried (connection errors, 503) before it counts as lost;
    /// the run fails if the target could not be connected to in that time.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// After the last publish, wait at most this long for PUBACKs (HTTP: 202s).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// MQTT keep-alive.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub keep_alive: Duration,
    /// Device names are {prefix}{index:04}.
    #[arg(long, default_value = "pump-")]
    pub device_prefix: String,
    /// Never show a progress bar (it is shown only when stderr is a terminal anyway).
    #[arg(long)]
    pub no_progress: bool,
}

/// `--protocol`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    Mqtt,
    Http,
    /// Confirmable CoAP POSTs to --target HOST:PORT; acked on 2.04.
    Coap,
    /// Lines to a serial device (--device); acked = written and drained.
    Serial,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// MQTT broker as HOST:PORT.
    #[arg(long, env = "OUTPOST_SIM_BROKER", default_value = "127.0.0.1:1883")]
    pub broker: String,
    /// Messages to send.
    #[arg(long, default_value_t = 10_000)]
    pub count: u64,
    /// MQTT QoS: 0 or 1.
    #[arg(long, default_value_t = 1)]
    pub qos: u8,
    /// Payload size in bytes (≥ 16; a 5-channel SenML pack is about 300).
    #[arg(long, default_value_t = 300)]
    pub payload_bytes: usize,
    /// Publisher inflight window.
    #[arg(long, default_value_t = 100)]
    pub max_inflight: u16,
    /// Give up this long after the first publish.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Topic (default: outpost/bench/{pid}).
    #[arg(long)]
    pub topic: Option<String>,
    /// Write the report as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// Every problem found in the arguments, one line each.
#[derive(Debug, thiserror::Error)]
#[error("invalid arguments:\n  {}", .0.join("\n  "))]
pub struct ConfigError(pub Vec<String>);

fn parse_broker(s: &str, problems: &mut Vec<String>) -> (String, u16) {
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() => match port.parse::<u16>() {
            Ok(p) if p > 0 => (host.trim_matches(['[', ']']).to_owned(), p),
            _ => {
                problems.push(format!("--broker {s:?}: port must be 1..65535"));
                (String::new(), 0)
            }
        },
        _ => {
            problems.push(format!("--broker {s:?}: expected HOST:PORT"));
            (String::new(), 0)
        }
    }
}

/// `--device` and the serial options: required with `--protocol serial` and
/// only there; csv and checksummed lines name no device, so one device only.
fn serial_device(args: &RunArgs, problems: &mut Vec<String>) -> PathBuf {
    if args.protocol != Protocol::Serial {
        if args.device.is_some() {
            problems.push("--device: only with --protocol serial".into());
        }
        return PathBuf::new();
    }
    if args.target.is_some() {
        problems.push("--target: not with --protocol serial (use --device)".into());
    }
    if args.serial_format != SerialFormat::Senml && args.devices != 1 {
        problems.push(format!(
            "--serial-format {}: lines carry no device name; use --devices 1",
            args.serial_format.name()
        ));
    }
    if args.baud == 0 {
        problems.push("--baud: must be positive".into());
    }
    match &args.device {
        Some(d) => d.clone(),
        None => {
            problems.push("--device: required with --protocol serial".into());
            PathBuf::new()
        }
    }
}

/// `--target` with `--protocol coap`: `HOST:PORT`, optionally written as
/// `coap://HOST:PORT[/]`; returned as `HOST:PORT`.
fn parse_coap_target(target: Option<&str>, problems: &mut Vec<String>) -> String {
    let Some(s) = target else {
        problems.push("--target: required with --protocol coap (HOST:PORT)".into());
        return String::new();
    };
    let bare = s.strip_prefix("coap://").unwrap_or(s).trim_end_matches('/');
    match bare.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty()
                && !host.contains('/')
                && port.parse::<u16>().is_ok_and(|p| p > 0) =>
        {
            bare.to_owned()
        }
        _ => {
            problems.push(format!(
                "--target {s:?}: expected HOST:PORT or coap://HOST:PORT"
            ));
            String::new()
        }
    }
}

/// `--target`: an http(s) base URL without query or fragment; returned
/// without a trailing `/`.
fn parse_target(target: Option<&str>, problems: &mut Vec<String>) -> String {
    let Some(s) = target else {
        problems.push("--target: required with --protocol http".into());
        return String::new();
    };
    match reqwest::Url::parse(s) {
        Ok(u)
            if matches!(u.scheme(), "http" | "https")
                && u.host().is_some()
                && u.query().is_none()
                && u.fragment().is_none() =>
        {
            s.trim_end_matches('/').to_owned()
        }
        Ok(_) => {
            problems.push(format!(
                "--target {s:?}: must be an http:// or https:// base URL without query or fragment"
            ));
            String::new()
        }
        Err(e) => {
            problems.push(format!("--target {s:?}: {e}"));
            String::new()
        }
    }
}

fn parse_qos(q: u8, problems: &mut Vec<String>) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => {
            problems.push(format!("--qos {q}: must be 0 or 1"));
            QoS::AtLeastOnce
        }
    }
}

fn parse_start(s: &str, problems: &mut Vec<String>) -> Timestamp {
    let t = if s == "now" {
        SystemTime::now()
    } else {
        match humantime::parse_rfc3339_weak(s) {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("--start-time {s:?}: {e}"));
                return Timestamp::now();
            }
        }
    };
    let ns = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_nanos()).ok());
    match ns {
        // Whole milliseconds keep the first timestamps readable.
        Some(ns) if ns >= (1i64 << 28) * 1_000_000_000 => Timestamp(ns - ns % 1_000_000),
        _ => {
            problems.push(format!("--start-time {s:?}: must be after 1978-07-04 (SenML reads earlier times as relative)"));
            Timestamp::now()
        }
    }
}

impl RunArgs {
    /// Validates and builds the run configuration. `progress`: stderr is a terminal.
    pub fn into_config(
        self,
        stderr_is_terminal: bool,
    ) -> Result<(RunConfig, Option<PathBuf>), ConfigError> {
        let mut p = Vec::new();
        let (host, port) = match self.protocol {
            Protocol::Mqtt => parse_broker(&self.broker, &mut p),
            Protocol::Http => (String::new(), 0),
            Protocol::Coap | Protocol::Serial => (String::new(), 0),
        };
        let qos = parse_qos(self.qos, &mut p);
        let target = match self.protocol {
            Protocol::Http => parse_target(self.target.as_deref(), &mut p),
            Protocol::Mqtt => String::new(),
            Protocol::Coap => parse_coap_target(self.target.as_deref(), &mut p),
            Protocol::Serial => String::new(),
        };
        let serial_device = serial_device(&self, &mut p);
        // Not --token: it may come from the environment.
        if self.protocol == Protocol::Mqtt && self.target.is_some() {
            p.push("--target: only with --protocol http".into());
        }
        if self.protocol == Protocol::Http && self.username.is_some() {
            p.push("--username: only with --protocol mqtt (use --token)".into());
        }
        if self.devices == 0 {
            p.push("--devices: must be at least 1".into());
        }
        if !self.rate.is_finite() || self.rate < 0.0 {
            p.push(format!("--rate {}: must be ≥ 0", self.rate));
        }
        if !(0.0..=1.0).contains(&self.anomaly_rate) {
            p.push(format!(
                "--anomaly-rate {}: must be a probability in [0, 1]",
                self.anomaly_rate
            ));
        }
        if self.max_inflight == 0 {
            p.push("--max-inflight: must be at least 1".into());
        }
        if self.duration.is_some_and(|d| d.is_zero()) {
            p.push("--duration: must be positive".into());
        }
        if self.count == Some(0) {
            p.push("--count: must be at least 1".into());
        }
        if self.topic_prefix.is_empty() || self.topic_prefix.contains(['+', '#']) {
            p.push(format!(
                "--topic-prefix {:?}: must be non-empty, without wildcards",
                self.topic_prefix
            ));
        }
        if self.device_prefix.contains(['/', ':', '+', '#'])
            || self.device_prefix.chars().any(char::is_control)
        {
            p.push(format!(
                "--device-prefix {:?}: must not contain / : + # or control characters",
                self.device_prefix
            ));
        }
        if self.username.is_none() && self.password.is_some() {
            p.push("--password: given without --username".into());
        }
        let start = parse_start(&self.start_time, &mut p);
        let per_message = if self.single {
            Channel::ALL.len() as f64
        } else {
            1.0
        };
        let step = match self.sim_step {
            Some(s) => s,
            None if self.rate > 0.0 && self.rate.is_finite() => Duration::from_secs_f64(
                (self.devices.max(1) as f64 * per_message / self.rate).min(86_400.0),
            ),
            None => Duration::from_secs(1),
        };
        // Whole microseconds, at least one.
        let step_ns = i64::try_from(step.as_micros())
            .unwrap_or(i64::MAX / 2)
            .max(1)
            * 1_000;
        if self.sim_step.is_some_and(|s| s < Duration::from_micros(1)) {
            p.push("--sim-step: must be at least 1µs".into());
        }
        let stop = match (self.duration, self.count) {
            (Some(d), None) => StopAfter::Duration(d),
            (None, Some(n)) => StopAfter::Count(n),
            _ => {
                p.push("exactly one of --duration and --count is required".into());
                StopAfter::Count(0)
            }
        };
        if !p.is_empty() {
            return Err(ConfigError(p));
        }
        let cfg = RunConfig {
            fleet: FleetConfig {
                devices: self.devices,
                seed: self.seed,
                start,
                step_ns,
                anomaly_rate: self.anomaly_rate,
                device_prefix: self.device_prefix,
                first_device: 0,
            },
            transport: match self.protocol {
                Protocol::Mqtt => TransportConfig::Mqtt(MqttConfig {
                    host,
                    port,
                    client_id: self
                        .client_id
                        .unwrap_or_else(|| format!("outpost-sim-{}", std::process::id())),
                    credentials: self
                        .username
                        .map(|u| (u, self.password.unwrap_or_default())),
                    qos,
                    max_inflight: self.max_inflight,
                    connect_timeout: self.connect_timeout,
                    keep_alive: self.keep_alive,
                }),
                Protocol::Http => TransportConfig::Http(HttpConfig {
                    target,
                    token: self.token,
                    max_inflight: self.max_inflight,
                    retry_deadline: self.connect_timeout,
                }),
                Protocol::Coap => TransportConfig::Coap(CoapConfig {
                    target,
                    path: crate::publish::coap::DEFAULT_PATH.into(),
                    max_inflight: self.max_inflight,
                    retry_deadline: self.connect_timeout,
                }),
                Protocol::Serial => TransportConfig::Serial(SerialConfig {
                    device: serial_device,
                    format: self.serial_format,
                    baud: self.baud,
                    max_inflight: self.max_inflight,
                    write_timeout: self.connect_timeout,
                }),
            },
            rate: self.rate,
            stop,
            single: self.single,
            topic_prefix: self.topic_prefix.trim_end_matches('/').to_owned(),
            ground_truth: self.ground_truth,
            acked_log: self.acked_log,
            drain_timeout: self.drain_timeout,
            progress: stderr_is_terminal && !self.no_progress,
        };
        Ok((cfg, self.summary_json))
    }
}

impl DatasetArgs {
    pub fn into_config(self) -> Result<DatasetConfig, ConfigError> {
        let mut p = Vec::new();
        if self.devices == 0 {
            p.push("--devices: must be at least 1".into());
        }
        if self.first_device.checked_add(self.devices).is_none() {
            p.push("--first-device: too large".into());
        }
        if !(0.0..=1.0).contains(&self.anomaly_rate) {
            p.push(format!(
                "--anomaly-rate {}: must be a probability in [0, 1]",
                self.anomaly_rate
            ));
        }
        if self.sim_step.is_zero() || !self.sim_step.subsec_nanos().is_multiple_of(1_000_000) {
            p.push(format!(
                "--sim-step {}: must be a positive whole number of milliseconds",
                humantime::format_duration(self.sim_step)
            ));
        }
        let step_ns = i64::try_from(self.sim_step.as_nanos()).unwrap_or(i64::MAX / 2);
        let ticks = if step_ns > 0 {
            self.duration.as_nanos() / step_ns as u128
        } else {
            0
        };
        if ticks == 0 {
            p.push("--duration: must cover at least one --sim-step".into());
        }
        if self.device_prefix.contains(['/', ':', ',', '+', '#'])
            || self.device_prefix.chars().any(char::is_control)
        {
            p.push(format!(
                "--device-prefix {:?}: must not contain / : , + # or control characters",
                self.device_prefix
            ));
        }
        let start = if self.start_time == "now" {
            p.push("--start-time: give a fixed RFC 3339 time (a dataset is reproducible)".into());
            Timestamp(0)
        } else {
            parse_start(&self.start_time, &mut p)
        };
        if !p.is_empty() {
            return Err(ConfigError(p));
        }
        Ok(DatasetConfig {
            fleet: FleetConfig {
                devices: self.devices,
                seed: self.seed,
                start,
                step_ns,
                anomaly_rate: self.anomaly_rate,
                device_prefix: self.device_prefix,
                first_device: self.first_device,
            },
            ticks: u64::try_from(ticks).unwrap_or(u64::MAX),
            out: self.out,
            ground_truth: self.ground_truth,
        })
    }
}

impl BenchArgs {
    pub fn into_config(self) -> Result<(BenchConfig, Option<PathBuf>), ConfigError> {
        let mut p = Vec::new();
        let (host, port) = parse_broker(&self.broker, &mut p);
        let qos = parse_qos(self.qos, &mut p);
        if self.count == 0 {
            p.push("--count: must be at least 1".into());
        }
        if self.payload_bytes < 16 {
            p.push("--payload-bytes: must be at least 16".into());
        }
        if self.max_inflight == 0 {
            p.push("--max-inflight: must be at least 1".into());
        }
        if !p.is_empty() {
            return Err(ConfigError(p));
        }
        let pid = std::process::id();
        Ok((
            BenchConfig {
                host,
                port,
                count: self.count,
                qos,
                payload_bytes: self.payload_bytes,
                max_inflight: self.max_inflight,
                timeout: self.timeout,
                topic: self.topic.unwrap_or_else(|| format!("outpost/bench/{pid}")),
                client_id_prefix: format!("outpost-bench-{pid}"),
            },
            self.json,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<RunArgs, clap::Error> {
        let mut v = vec!["outpost-firmware-sim", "run"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).map(|c| match c.command {
            Command::Run(r) => *r,
            _ => panic!("not run"),
        })
    }

    fn dataset(args: &[&str]) -> Result<DatasetConfig, ConfigError> {
        let mut v = vec!["outpost-firmware-sim", "dataset"];
        v.extend_from_slice(args);
        match Cli::try_parse_from(v).unwrap().command {
            Command::Dataset(d) => d.into_config(),
            _ => panic!("not dataset"),
        }
    }

    #[test]
    fn dataset_arguments_become_a_fleet_over_simulated_time() {
        let c = dataset(&[
            "--devices",
            "4",
            "--first-device",
            "6",
            "--duration",
            "2h",
            "--sim-step",
            "2s",
            "--seed",
            "9",
            "--out",
            "x.csv",
        ])
        .unwrap();
        assert_eq!((c.fleet.devices, c.fleet.first_device), (4, 6));
        assert_eq!(
            (c.ticks, c.fleet.step_ns, c.fleet.seed),
            (3_600, 2_000_000_000, 9)
        );
        assert_eq!(c.fleet.start.0, 1_735_689_600_000_000_000);
        let e = dataset(&[
            "--devices",
            "0",
            "--duration",
            "1ms",
            "--sim-step",
            "1500us",
            "--anomaly-rate",
            "2",
            "--out",
            "x.csv",
        ])
        .unwrap_err();
        assert_eq!(e.0.len(), 4, "{e}");
    }

    #[test]
    fn every_bad_flag_is_reported_at_once() {
        let args = parse(&[
            "--count",
            "5",
            "--broker",
            "nohost",
            "--qos",
            "2",
            "--devices",
            "0",
            "--anomaly-rate",
            "3",
        ])
        .unwrap();
        let e = args.into_config(false).unwrap_err();
        assert_eq!(e.0.len(), 4, "{e}");
        assert!(e.to_string().contains("--broker"));
        assert!(e.to_string().contains("--qos"));
    }

    #[test]
    fn duration_or_count_is_required_but_not_both() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["--count", "1", "--duration", "1s"]).is_err());
        assert!(parse(&["--duration", "1s"]).is_ok());
    }

    #[test]
    fn the_default_step_is_one_over_the_per_device_rate_in_whole_microseconds() {
        let (cfg, _) = parse(&[
            "--count",
            "1",
            "--devices",
            "3",
            "--rate",
            "7",
            "--start-time",
            "2025-01-01T00:00:00.123456Z",
        ])
        .unwrap()
        .into_config(false)
        .unwrap();
        assert_eq!(cfg.fleet.step_ns, 428_571_000);
        assert_eq!(cfg.fleet.start.0 % 1_000_000, 0);
        let (single, _) = parse(&["--count", "1", "--devices", "2", "--rate", "10", "--single"])
            .unwrap()
            .into_config(false)
            .unwrap();
        assert_eq!(single.fleet.step_ns, 1_000_000_000);
    }

    #[test]
    fn http_needs_a_target_url_and_takes_the_token_and_window() {
        let e = parse(&["--count", "1", "--protocol", "http"])
            .unwrap()
            .into_config(false)
            .unwrap_err();
        assert!(e.to_string().contains("--target: required"), "{e}");
        let e = parse(&[
            "--count",
            "1",
            "--protocol",
            "http",
            "--target",
            "ftp://gw:21",
            "--username",
            "u",
        ])
        .unwrap()
        .into_config(false)
        .unwrap_err();
        assert_eq!(e.0.len(), 2, "{e}");
        let (cfg, _) = parse(&[
            "--count",
            "1",
            "--protocol",
            "http",
            "--target",
            "http://127.0.0.1:8081/",
            "--token",
            "t0k",
            "--max-inflight",
            "7",
            "--connect-timeout",
            "3s",
        ])
        .unwrap()
        .into_config(false)
        .unwrap();
        let TransportConfig::Http(h) = cfg.transport else {
            panic!("not http: {:?}", cfg.transport)
        };
        assert_eq!(h.readings_url(), "http://127.0.0.1:8081/v1/readings");
        assert_eq!(
            (h.token.as_deref(), h.max_inflight, h.retry_deadline),
            (Some("t0k"), 7, Duration::from_secs(3))
        );
    }

    #[test]
    fn a_target_is_refused_with_mqtt() {
        let e = parse(&["--count", "1", "--target", "http://gw:8081"])
            .unwrap()
            .into_config(false)
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("--target: only with --protocol http"),
            "{e}"
        );
    }
}
