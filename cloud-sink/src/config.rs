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
    fn the_example_config_parses() {
        let text = include_str!("../../configs/cloud-sink.toml");
        let config = Config::from_toml(text).unwrap();
        assert!(config.storage.sqlite_path.is_some());
    }
}
