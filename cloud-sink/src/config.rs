//! The sink's TOML config.
//!
//! Parsing (serde, `deny_unknown_fields`) catches wrong types and unknown keys;
//! [`Config::validate`] then checks what types cannot express (files exist, sizes
//! are sane, both TLS halves are present) and reports every problem at once,
//! each naming its key.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

/// The whole config file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP(S) server binds to. Port 0 picks a free port.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT.
    #[serde(default = "default_shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Serve HTTPS with this certificate and key. Absent: plain HTTP.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Where readings and gateways are stored.
    #[serde(default)]
    pub storage: StorageConfig,
    /// Bounds on what one request may carry.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Access to the API's mutating routes.
    #[serde(default)]
    pub api: ApiConfig,
    /// Training jobs in the sink and their schedule.
    #[serde(default)]
    pub training: TrainingConfig,
}

/// `[api]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Operators allowed to call the mutating routes (training jobs, alert
    /// labels): one `NAME SHA256-HEX` line each (see
    /// [`crate::auth::OperatorTokens`]; `outpost-cloud-sink operator-token
    /// NAME` makes a token and its line). Read at start. Absent: those
    /// routes answer 403.
    #[serde(default)]
    pub operator_tokens_file: Option<PathBuf>,
}

/// `[training]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingConfig {
    /// Where models are written (`<scope>/<time>-job<id>` below it); created
    /// when missing. Default: `models` next to the database.
    #[serde(default)]
    pub models_dir: Option<PathBuf>,
    /// Most jobs waiting; one more is refused (HTTP 503), never queued.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// Finished jobs kept in memory for the API, oldest evicted first.
    #[serde(default = "default_keep_finished")]
    pub keep_finished: usize,
    /// Most readings one job reads (about 300 bytes of memory each while
    /// loading); a larger range fails and asks for a narrower one.
    #[serde(default = "default_max_readings")]
    pub max_readings: u32,
    /// Frame period readings are assembled with, unless a job names one.
    #[serde(default = "default_training_period", with = "humantime_serde")]
    pub period: Duration,
    /// Champion/challenger: held-out F1 gain a new model needs to replace
    /// the production one (as `train --margin`).
    #[serde(default = "default_margin")]
    pub margin: f64,
    /// `[[training.schedule]]` entries.
    #[serde(default)]
    pub schedule: Vec<ScheduleConfig>,
}

impl Default for TrainingConfig {
    fn default() -> Self {
        TrainingConfig {
            models_dir: None,
            queue_capacity: default_queue_capacity(),
            keep_finished: default_keep_finished(),
            max_readings: default_max_readings(),
            period: default_training_period(),
            margin: default_margin(),
            schedule: Vec::new(),
        }
    }
}

/// `[[training.schedule]]`: train a scope when enough new data or labels
/// arrived (see [`crate::train::jobs`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// `fleet`, a device, or the name of the `devices` list (a group).
    pub scope: String,
    /// The group's devices; absent: the fleet, or the device `scope`.
    #[serde(default)]
    pub devices: Option<Vec<String>>,
    /// `auto` (needs operator labels) or a family name.
    #[serde(default = "default_family")]
    pub family: String,
    /// How often to check for new data.
    #[serde(default = "default_every", with = "humantime_serde")]
    pub every: Duration,
    /// Train when at least this many readings arrived in the scope since
    /// its last job started (0: readings do not trigger).
    #[serde(default)]
    pub min_new_readings: u64,
    /// Train when at least this many operator labels were given in the
    /// scope since its last job started (0: labels do not trigger).
    #[serde(default)]
    pub min_new_labels: u64,
    /// Train on this much history before the job; absent: all of it.
    #[serde(default, with = "humantime_serde")]
    pub lookback: Option<Duration>,
    /// Window options; absent: `train`'s defaults (4, 1, mean,std,min,max,slope).
    #[serde(default)]
    pub window: Option<usize>,
    #[serde(default)]
    pub hop: Option<usize>,
    #[serde(default)]
    pub stats: Option<Vec<String>>,
    /// Log-scale the spread statistics (`train --log-spread`); absent: no.
    #[serde(default)]
    pub log_spread: Option<bool>,
    /// Frame period; absent: `training.period`.
    #[serde(default, with = "humantime_serde")]
    pub period: Option<Duration>,
    /// Channels carrying integer codes (`train --categorical`); absent: none.
    #[serde(default)]
    pub categorical: Option<Vec<String>>,
    /// Time constant of the per-device running baseline (`train --baseline`);
    /// absent: none.
    #[serde(default, with = "humantime_serde")]
    pub baseline: Option<Duration>,
}

/// `[tls]`: both paths are required when the section is present.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the server certificate chain, leaf first.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Require client certificates (mutual TLS): PEM bundle of the CA(s) that
    /// sign gateway certificates. A gateway without a certificate signed by
    /// one of them is refused during the TLS handshake. Absent: no client
    /// certificates are asked for (the bearer token still authenticates).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// `[storage]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// The SQLite database file; created when missing. Required: where the data
    /// lives should be a deliberate choice. Its directory must exist.
    #[serde(default)]
    pub sqlite_path: Option<PathBuf>,
    /// How long a write waits for a lock held by another connection or process
    /// (for example `outpost-cloud-sink gateway add` while the sink runs).
    #[serde(default = "default_busy_timeout", with = "humantime_serde")]
    pub busy_timeout: Duration,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            sqlite_path: None,
            busy_timeout: default_busy_timeout(),
        }
    }
}

/// `[limits]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest (compressed) ingest body; larger gets 413 before it is read, and
    /// the gateway splits the batch.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: ByteSize,
    /// Largest ingest body after zstd decompression (guards against compression bombs).
    #[serde(default = "default_max_decompressed_bytes")]
    pub max_decompressed_bytes: ByteSize,
    /// Most records in one batch; more gets 413 so the gateway splits it.
    #[serde(default = "default_max_records_per_batch")]
    pub max_records_per_batch: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_body_bytes: default_max_body_bytes(),
            max_decompressed_bytes: default_max_decompressed_bytes(),
            max_records_per_batch: default_max_records_per_batch(),
        }
    }
}

/// `[log]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` for people, `json` for log collectors. Logs go to stderr.
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter (`info`, `outpost_cloud_sink=debug,warn`, ...).
    /// `RUST_LOG`, when set, wins.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::default(),
            level: default_log_level(),
        }
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(10)
}
fn default_busy_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_max_body_bytes() -> ByteSize {
    ByteSize::mib(8)
}
fn default_max_decompressed_bytes() -> ByteSize {
    ByteSize::mib(64)
}
fn default_max_records_per_batch() -> usize {
    100_000
}
fn default_log_level() -> String {
    "info".to_owned()
}
fn default_queue_capacity() -> usize {
    4
}
fn default_keep_finished() -> usize {
    100
}
fn default_max_readings() -> u32 {
    1_000_000
}
fn default_training_period() -> Duration {
    Duration::from_secs(1)
}
fn default_margin() -> f64 {
    0.01
}
fn default_family() -> String {
    "auto".to_owned()
}
fn default_every() -> Duration {
    Duration::from_secs(600)
}

/// Bounds of `[training]`: beyond them a value is a typo, or holds memory
/// or the database for no gain.
const MAX_QUEUE_CAPACITY: usize = 1000;
const MAX_KEEP_FINISHED: usize = 10_000;
/// A schedule checked more often than this is a typo.
const MIN_SCHEDULE_EVERY: Duration = Duration::from_millis(100);

/// Hard ceilings: a body limit above this is almost certainly a typo
/// (`8 GiB` for `8 MiB`) and would let one request exhaust memory.
const MAX_BODY_CEILING: u64 = 1024 * 1024 * 1024;
const MAX_DECOMPRESSED_CEILING: u64 = 4 * 1024 * 1024 * 1024;

/// One thing wrong with a config: the key and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key, e.g. `tls.cert`.
    pub key: String,
    /// What is wrong, e.g. `file not found: /etc/x.pem`.
    pub message: String,
}

impl Problem {
    fn new(key: &str, message: impl Into<String>) -> Self {
        Problem {
            key: key.to_owned(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {} problem(s):\n{}", problems.len(), render_problems(problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

fn render_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigError {
    /// Every problem as one line each, prefixed with the file.
    pub fn lines(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid { path, problems } => problems
                .iter()
                .map(|p| format!("{}: {p}", path.display()))
                .collect(),
            other => vec![other.to_string()],
        }
    }
}

impl Config {
    /// Parses TOML text (no validation).
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Config::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })?;
        config.check(path)?;
        Ok(config)
    }

    /// [`Config::validate`] as a `Result`, naming `path` in the error.
    pub fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let problems = self.validate();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            })
        }
    }

    /// A config for tests and embedding: defaults, the given database, port 0.
    pub fn for_sqlite(sqlite_path: impl Into<PathBuf>) -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            shutdown_grace: default_shutdown_grace(),
            tls: None,
            storage: StorageConfig {
                sqlite_path: Some(sqlite_path.into()),
                ..Default::default()
            },
            limits: LimitsConfig::default(),
            log: LogConfig::default(),
            api: ApiConfig::default(),
            training: TrainingConfig::default(),
        }
    }

    /// Where training jobs write models: `training.models_dir`, else
    /// `models` next to the database.
    pub fn models_dir(&self) -> Option<PathBuf> {
        if let Some(dir) = &self.training.models_dir {
            return Some(dir.clone());
        }
        let db = self.storage.sqlite_path.as_ref()?;
        let parent = match db.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        Some(parent.join("models"))
    }

    /// The checked `[[training.schedule]]` entries. Only meaningful on a
    /// validated config (entries with problems are left out).
    pub fn schedules(&self) -> Vec<crate::train::jobs::Schedule> {
        self.training
            .schedule
            .iter()
            .enumerate()
            .filter_map(|(index, s)| {
                let spec =
                    crate::train::jobs::JobSpec::check(&schedule_input(s), self.training.period)
                        .ok()?;
                Some(crate::train::jobs::Schedule {
                    index,
                    spec,
                    lookback: s.lookback,
                    every: s.every,
                    min_new_readings: s.min_new_readings,
                    min_new_labels: s.min_new_labels,
                })
            })
            .collect()
    }

    fn validate_training(&self, problems: &mut Vec<Problem>) {
        if let Some(path) = &self.api.operator_tokens_file
            && let Err(m) = crate::auth::OperatorTokens::load(path)
        {
            problems.push(Problem::new("api.operator_tokens_file", m));
        }
        let t = &self.training;
        if let Some(dir) = &t.models_dir {
            if dir.as_os_str().is_empty() {
                problems.push(Problem::new("training.models_dir", "is empty"));
            } else if dir.exists() && !dir.is_dir() {
                problems.push(Problem::new(
                    "training.models_dir",
                    format!("is not a directory: {}", dir.display()),
                ));
            } else if let Some(parent) = dir.parent()
                && !parent.as_os_str().is_empty()
                && !parent.is_dir()
            {
                problems.push(Problem::new(
                    "training.models_dir",
                    format!("directory not found: {}", parent.display()),
                ));
            }
        }
        if !(1..=MAX_QUEUE_CAPACITY).contains(&t.queue_capacity) {
            problems.push(Problem::new(
                "training.queue_capacity",
                format!("{}: must be 1 to {MAX_QUEUE_CAPACITY}", t.queue_capacity),
            ));
        }
        if !(1..=MAX_KEEP_FINISHED).contains(&t.keep_finished) {
            problems.push(Problem::new(
                "training.keep_finished",
                format!("{}: must be 1 to {MAX_KEEP_FINISHED}", t.keep_finished),
            ));
        }
        if t.max_readings == 0 {
            problems.push(Problem::new(
                "training.max_readings",
                "must be greater than 0",
            ));
        }
        if t.period < Duration::from_millis(1) || t.period > Duration::from_secs(86_400) {
            problems.push(Problem::new(
                "training.period",
                format!(
                    "{}: must be 1 ms to 1 day",
                    humantime::format_duration(t.period)
                ),
            ));
        }
        if !(t.margin.is_finite() && (0.0..=1.0).contains(&t.margin)) {
            problems.push(Problem::new(
                "training.margin",
                format!("{}: must be 0 to 1 (an F1 difference)", t.margin),
            ));
        }
        let mut scopes: std::collections::HashMap<&str, usize> = Default::default();
        for (i, s) in t.schedule.iter().enumerate() {
            let key = |field: &str| format!("training.schedule[{i}].{field}");
            if let Err(fields) = crate::train::jobs::JobSpec::check(&schedule_input(s), t.period) {
                for (field, message) in fields {
                    problems.push(Problem {
                        key: key(field),
                        message,
                    });
                }
            }
            if let Some(first) = scopes.insert(s.scope.trim(), i) {
                problems.push(Problem {
                    key: key("scope"),
                    message: format!(
                        "scope {:?} is already scheduled by training.schedule[{first}]",
                        s.scope
                    ),
                });
            }
            if s.every < MIN_SCHEDULE_EVERY {
                problems.push(Problem {
                    key: key("every"),
                    message: format!(
                        "{}: must be at least {}",
                        humantime::format_duration(s.every),
                        humantime::format_duration(MIN_SCHEDULE_EVERY)
                    ),
                });
            }
            if s.min_new_readings == 0 && s.min_new_labels == 0 {
                problems.push(Problem {
                    key: format!("training.schedule[{i}]"),
                    message: "set min_new_readings or min_new_labels above 0: with neither the schedule never fires".to_owned(),
                });
            }
            if s.lookback.is_some_and(|l| l.is_zero()) {
                problems.push(Problem {
                    key: key("lookback"),
                    message: "must be greater than 0 (leave it out for all history)".to_owned(),
                });
            }
        }
    }

    /// Every problem that parsing could not catch, in key order. Empty means valid.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();

        if let Some(tls) = &self.tls {
            match &tls.cert {
                None => problems.push(Problem::new(
                    "tls.cert",
                    "missing (required when [tls] is present)",
                )),
                Some(path) => {
                    if let Err(m) = check_pem_file(path, PemKind::Certificate) {
                        problems.push(Problem::new("tls.cert", m));
                    }
                }
            }
            match &tls.key {
                None => problems.push(Problem::new(
                    "tls.key",
                    "missing (required when [tls] is present)",
                )),
                Some(path) => {
                    if let Err(m) = check_pem_file(path, PemKind::PrivateKey) {
                        problems.push(Problem::new("tls.key", m));
                    }
                }
            }
            if let Some(path) = &tls.client_ca
                && let Err(m) = check_pem_file(path, PemKind::Certificate)
            {
                problems.push(Problem::new("tls.client_ca", m));
            }
        }

        match &self.storage.sqlite_path {
            None => problems.push(Problem::new("storage.sqlite_path", "missing")),
            Some(path) if path.as_os_str().is_empty() => {
                problems.push(Problem::new("storage.sqlite_path", "is empty"));
            }
            Some(path) => {
                if path.is_dir() {
                    problems.push(Problem::new(
                        "storage.sqlite_path",
                        format!("is a directory, expected a file: {}", path.display()),
                    ));
                }
                let parent = match path.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
                    _ => PathBuf::from("."),
                };
                if !parent.is_dir() {
                    problems.push(Problem::new(
                        "storage.sqlite_path",
                        format!("directory not found: {}", parent.display()),
                    ));
                }
            }
        }
        if self.storage.busy_timeout.is_zero() {
            problems.push(Problem::new(
                "storage.busy_timeout",
                "must be greater than 0",
            ));
        }

        let body = self.limits.max_body_bytes.as_u64();
        if body == 0 {
            problems.push(Problem::new(
                "limits.max_body_bytes",
                "must be greater than 0",
            ));
        } else if body > MAX_BODY_CEILING {
            problems.push(Problem::new(
                "limits.max_body_bytes",
                format!(
                    "{} is above the ceiling of 1 GiB",
                    self.limits.max_body_bytes
                ),
            ));
        } else if usize::try_from(body).is_err() {
            problems.push(Problem::new(
                "limits.max_body_bytes",
                "does not fit this platform",
            ));
        }
        let decompressed = self.limits.max_decompressed_bytes.as_u64();
        if decompressed == 0 {
            problems.push(Problem::new(
                "limits.max_decompressed_bytes",
                "must be greater than 0",
            ));
        } else if decompressed > MAX_DECOMPRESSED_CEILING {
            problems.push(Problem::new(
                "limits.max_decompressed_bytes",
                format!(
                    "{} is above the ceiling of 4 GiB",
                    self.limits.max_decompressed_bytes
                ),
            ));
        } else if usize::try_from(decompressed).is_err() {
            problems.push(Problem::new(
                "limits.max_decompressed_bytes",
                "does not fit this platform",
            ));
        }
        if self.limits.max_records_per_batch == 0 {
            problems.push(Problem::new(
                "limits.max_records_per_batch",
                "must be greater than 0",
            ));
        }

        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            problems.push(Problem::new(
                "log.level",
                format!("not a valid filter: {e}"),
            ));
        }

        self.validate_training(&mut problems);
        problems
    }

    /// The decoder limits for ingest bodies. Only meaningful on a validated config.
    pub fn batch_limits(&self) -> protocol::batch::BatchLimits {
        protocol::batch::BatchLimits {
            max_compressed_bytes: usize::try_from(self.limits.max_body_bytes.as_u64())
                .unwrap_or(usize::MAX),
            max_decompressed_bytes: usize::try_from(self.limits.max_decompressed_bytes.as_u64())
                .unwrap_or(usize::MAX),
            max_records: self.limits.max_records_per_batch,
        }
    }
}

fn schedule_input(s: &ScheduleConfig) -> crate::train::jobs::SpecInput<'_> {
    crate::train::jobs::SpecInput {
        scope: &s.scope,
        devices: s.devices.as_deref(),
        from_ns: None,
        to_ns: None,
        family: Some(&s.family),
        window: s.window,
        hop: s.hop,
        stats: s.stats.as_deref(),
        log_spread: s.log_spread,
        period: s.period,
        categorical: s.categorical.as_deref(),
        baseline: s.baseline,
    }
}

#[derive(Clone, Copy)]
enum PemKind {
    Certificate,
    PrivateKey,
}

/// Checks that `path` is a readable PEM file holding what `kind` asks for.
fn check_pem_file(path: &Path, kind: PemKind) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("file not found: {}", path.display()));
        }
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    match kind {
        PemKind::Certificate => {
            let certs: Result<Vec<CertificateDer<'static>>, _> =
                CertificateDer::pem_slice_iter(&bytes).collect();
            match certs {
                Ok(c) if !c.is_empty() => Ok(()),
                Ok(_) => Err(format!("no certificate found in {}", path.display())),
                Err(e) => Err(format!(
                    "not a valid PEM certificate file {}: {e}",
                    path.display()
                )),
            }
        }
        PemKind::PrivateKey => match PrivateKeyDer::from_pem_slice(&bytes) {
            Ok(_) => Ok(()),
            Err(e) => Err(format!("no usable private key in {}: {e}", path.display())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_parses_to_defaults_but_fails_validation_for_the_missing_database() {
        let config = Config::from_toml("").unwrap();
        assert_eq!(config.listen, default_listen());
        assert_eq!(config.limits.max_body_bytes, ByteSize::mib(8));
        assert_eq!(config.log.format, LogFormat::Text);
        let problems = config.validate();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].key, "storage.sqlite_path");
    }

    #[test]
    fn a_full_config_parses_with_humantime_durations_and_byte_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            r#"
            listen = "0.0.0.0:9000"
            shutdown_grace = "3s"
            [storage]
            sqlite_path = "{}"
            busy_timeout = "250ms"
            [limits]
            max_body_bytes = "1 MiB"
            max_decompressed_bytes = 1048576
            max_records_per_batch = 10
            [log]
            format = "json"
            level = "debug"
            "#,
            dir.path().join("sink.db").display()
        );
        let config = Config::from_toml(&text).unwrap();
        assert_eq!(config.shutdown_grace, Duration::from_secs(3));
        assert_eq!(config.storage.busy_timeout, Duration::from_millis(250));
        assert_eq!(config.limits.max_body_bytes.as_u64(), 1024 * 1024);
        assert_eq!(config.limits.max_decompressed_bytes.as_u64(), 1024 * 1024);
        assert_eq!(config.log.format, LogFormat::Json);
        assert!(config.validate().is_empty(), "{:?}", config.validate());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = Config::from_toml("[storage]\nsqlite_pth = \"x.db\"\n").unwrap_err();
        assert!(err.contains("sqlite_pth"), "{err}");
        assert!(Config::from_toml("lisen = \"127.0.0.1:1\"").is_err());
    }

    #[test]
    fn validation_reports_every_problem_at_once_with_its_key() {
        let text = r#"
            [tls]
            cert = "/nonexistent/cert.pem"
            [storage]
            sqlite_path = "/nonexistent-dir/sink.db"
            busy_timeout = "0s"
            [limits]
            max_body_bytes = 0
            max_records_per_batch = 0
            [log]
            level = "not a [valid filter"
        "#;
        let config = Config::from_toml(text).unwrap();
        let problems = config.validate();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "tls.cert",
                "tls.key",
                "storage.sqlite_path",
                "storage.busy_timeout",
                "limits.max_body_bytes",
                "limits.max_records_per_batch",
                "log.level"
            ]
        );
        assert!(
            problems[0]
                .to_string()
                .starts_with("tls.cert: file not found"),
            "{}",
            problems[0]
        );
    }

    #[test]
    fn a_tls_file_that_is_not_pem_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "hello").unwrap();
        let mut config = Config::for_sqlite(dir.path().join("sink.db"));
        config.tls = Some(TlsConfig {
            cert: Some(junk.clone()),
            key: Some(junk.clone()),
            client_ca: Some(junk),
        });
        let problems = config.validate();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems[0].message.contains("no certificate"),
            "{}",
            problems[0]
        );
    }

    #[test]
    fn load_names_the_file_in_every_problem_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[limits]\nmax_records_per_batch = 0\n").unwrap();
        let err = Config::load(&path).unwrap_err();
        let lines = err.lines();
        assert_eq!(lines.len(), 2);
        assert!(
            lines
                .iter()
                .all(|l| l.starts_with(&path.display().to_string()))
        );
    }

    #[test]
    fn training_schedules_parse_with_defaults_and_resolve_their_scopes() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            r#"
            [storage]
            sqlite_path = "{}"
            [training]
            queue_capacity = 2
            [[training.schedule]]
            scope = "fleet"
            family = "gaussian"
            every = "10m"
            min_new_readings = 1000
            [[training.schedule]]
            scope = "pumps"
            devices = ["pump-2", "pump-1"]
            every = "30s"
            min_new_labels = 5
            lookback = "7d"
            window = 8
            stats = ["mean", "std"]
            period = "500ms"
            "#,
            dir.path().join("sink.db").display()
        );
        let config = Config::from_toml(&text).unwrap();
        assert!(config.validate().is_empty(), "{:?}", config.validate());
        assert_eq!(config.models_dir(), Some(dir.path().join("models")));
        let s = config.schedules();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].spec.devices, None);
        assert_eq!(
            s[0].spec.family,
            Some(crate::train::families::FamilyKind::Gaussian)
        );
        assert_eq!((s[0].min_new_readings, s[0].min_new_labels), (1000, 0));
        assert_eq!(s[0].spec.period, Duration::from_secs(1));
        assert_eq!(
            s[1].spec.devices,
            Some(vec!["pump-1".to_owned(), "pump-2".to_owned()])
        );
        assert_eq!(s[1].spec.family, None, "auto by default");
        assert_eq!(s[1].lookback, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!((s[1].spec.window, s[1].spec.stats.len()), (8, 2));
        assert_eq!(s[1].spec.period, Duration::from_millis(500));
    }

    #[test]
    fn bad_training_settings_and_schedules_are_reported_with_their_key_paths() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            r#"
            [storage]
            sqlite_path = "{}"
            [api]
            operator_tokens_file = "/nonexistent/operators"
            [training]
            queue_capacity = 0
            margin = 2.0
            [[training.schedule]]
            scope = "fleet"
            devices = ["a"]
            family = "magic"
            every = "10ms"
            [[training.schedule]]
            scope = "fleet"
            min_new_readings = 10
            window = 1
            stats = ["median"]
            lookback = "0s"
            "#,
            dir.path().join("sink.db").display()
        );
        let config = Config::from_toml(&text).unwrap();
        let problems = config.validate();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "api.operator_tokens_file",
                "training.queue_capacity",
                "training.margin",
                "training.schedule[0].devices",
                "training.schedule[0].family",
                "training.schedule[0].every",
                "training.schedule[0]",
                "training.schedule[1].window",
                "training.schedule[1].stats",
                "training.schedule[1].scope",
                "training.schedule[1].lookback",
            ],
            "{problems:#?}"
        );
        assert!(
            problems[0].message.contains("file not found"),
            "{}",
            problems[0]
        );
        assert!(
            problems[9]
                .message
                .contains("already scheduled by training.schedule[0]")
        );
        assert!(config.schedules().is_empty());
        // Unknown keys in a schedule entry are refused by the parser.
        let err = Config::from_toml("[[training.schedule]]\nscope = \"fleet\"\nevery_x = 1\n")
            .unwrap_err();
        assert!(err.contains("every_x"), "{err}");
    }

    #[test]
    fn an_operator_tokens_file_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("operators");
        std::fs::write(&file, "ann not-a-hash\n").unwrap();
        let mut config = Config::for_sqlite(dir.path().join("sink.db"));
        config.api.operator_tokens_file = Some(file.clone());
        let problems = config.validate();
        assert_eq!(problems.len(), 1);
        assert!(problems[0].message.contains("line 1"), "{}", problems[0]);
        std::fs::write(
            &file,
            crate::auth::OperatorTokens::line("ann", "secret") + "\n",
        )
        .unwrap();
        assert!(config.validate().is_empty());
    }

    #[test]
    fn the_example_config_parses() {
        let text = include_str!("../../configs/cloud-sink.toml");
        let config = Config::from_toml(text).unwrap();
        assert!(config.storage.sqlite_path.is_some());
        assert_eq!(config.training, TrainingConfig::default());
    }

    #[test]
    fn the_example_schedules_are_valid_once_uncommented() {
        let text = include_str!("../../configs/cloud-sink.toml");
        let at = text.find("# [[training.schedule]]").unwrap();
        let (head, tail) = text.split_at(at);
        let tail: Vec<&str> = tail
            .lines()
            .filter(|l| l.trim() != "#")
            .map(|l| l.strip_prefix("# ").unwrap_or(l))
            .collect();
        let config = Config::from_toml(&format!("{head}{}", tail.join("\n"))).unwrap();
        assert_eq!(config.training.schedule.len(), 2);
        let problems: Vec<Problem> = config
            .validate()
            .into_iter()
            .filter(|p| p.key.starts_with("training"))
            .collect();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(config.schedules().len(), 2);
    }
}
