//! Gateway configuration: TOML, `deny_unknown_fields`, defaults, and a
//! validation pass that reports every problem at once, each with its key.
//!
//! Secrets can come from the environment instead of the file:
//! `OUTPOST_UPLINK_TOKEN` (uplink bearer token), `OUTPOST_MQTT_PASSWORD` and
//! `OUTPOST_HTTP_TOKEN` (the HTTP source's bearer token).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use protocol::{DecodeLimits, PayloadFormat};
use serde::Deserialize;

/// Environment variable that overrides `uplink.token`.
pub const ENV_UPLINK_TOKEN: &str = "OUTPOST_UPLINK_TOKEN";
/// systemd credential (`LoadCredential=`) that overrides `uplink.token_file`.
pub const CREDENTIAL_UPLINK_TOKEN: &str = "uplink-token";
/// Environment variable that overrides `mqtt.password`.
pub const ENV_MQTT_PASSWORD: &str = "OUTPOST_MQTT_PASSWORD";
/// Environment variable that overrides `http.token` (when `[http]` is present).
pub const ENV_HTTP_TOKEN: &str = "OUTPOST_HTTP_TOKEN";

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// This gateway's name; the sink's token for it must be issued for the same name.
    pub gateway_id: String,
    /// Durable outbox and quarantine.
    #[serde(default)]
    pub storage: StorageConfig,
    /// The ingest stage: group commit and its queue.
    #[serde(default)]
    pub ingest: IngestConfig,
    /// Limits applied to every incoming payload.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// MQTT source (external broker or the embedded one).
    pub mqtt: Option<MqttConfig>,
    /// HTTP push source: `POST /v1/readings`. At least one of `[mqtt]` and
    /// `[http]` must be present.
    pub http: Option<HttpSourceConfig>,
    /// CoAP source over UDP: `POST coap://.../readings` (`gateway/src/sources/coap/config.rs`).
    pub coap: Option<crate::sources::coap::CoapSourceConfig>,
    /// Serial ports read line by line (`[[serial]]`, one table per port;
    /// `gateway/src/sources/serial/config.rs`).
    #[serde(default)]
    pub serial: Vec<crate::sources::serial::SerialSourceConfig>,
    /// SQL tables polled by cursor (`[[sql]]`, one table per source;
    /// `gateway/src/sources/sql/config.rs`).
    #[serde(default)]
    pub sql: Vec<crate::sources::sql::SqlSourceConfig>,
    /// JSON endpoints polled over HTTP(S) (`[[rest]]`, one per endpoint;
    /// `gateway/src/sources/rest/config.rs`).
    #[serde(default)]
    pub rest: Vec<crate::sources::rest::RestSourceConfig>,
    /// Watched drop directories for CSV/JSON/NDJSON/SenML files (`[[files]]`,
    /// one per directory; `gateway/src/sources/files/config.rs`).
    #[serde(default)]
    pub files: Vec<crate::sources::files::FileSourceConfig>,
    /// Sensor contracts, cleansing and de-duplication (`gateway/src/contracts/mod.rs`).
    /// Absent: no contracts; de-duplication with the default window.
    pub contracts: Option<crate::contracts::ContractsConfig>,
    /// Edge analytics: windows, models, fallback detector, alerts
    /// (`gateway/src/analysis/config.rs`). Absent: no analysis.
    pub analysis: Option<crate::analysis::config::AnalysisConfig>,
    /// Clock-quality detection (`gateway/src/clock.rs`).
    #[serde(default)]
    pub clock: crate::clock::ClockConfig,
    /// Batched upload to the cloud sink.
    pub uplink: UplinkConfig,
    /// Admin HTTP server: `/metrics`, `/health`, `/ready`.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Directory of the outbox (its segment log) and the quarantine (sled).
    pub path: PathBuf,
    /// Page cache of the sled database (quarantine, epoch). sled's own default
    /// is 1 GiB, far too much for a Pi.
    pub cache_capacity: ByteSize,
    /// Outbox size cap (sum of stored record sizes).
    pub max_outbox_bytes: ByteSize,
    /// What happens when the outbox is full.
    pub when_full: WhenFull,
    /// Quarantine size cap; the oldest entries are dropped past it.
    pub max_quarantine_bytes: ByteSize,
    /// At most this many bytes of a rejected payload are kept in quarantine.
    pub quarantine_payload_bytes: ByteSize,
    /// Also send a report of every quarantined input (reason, origin, detail
    /// and the first KiB of the payload) to the sink through the outbox, so it
    /// can be listed there (`GET /v1/quarantine`). Off by default: payloads
    /// may hold what should not leave the site.
    pub uplink_quarantine: bool,
    /// Bytes the storage under `path` is assumed to take in writes over its
    /// life (its TBW rating). The default, 16 TB, assumes a 32 GB
    /// endurance-class card; ordinary cards often state no rating and may take
    /// less. A warning is logged when the write rate of the last 15 minutes
    /// would reach it within a year; 0 disables the warning.
    pub write_endurance: ByteSize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            path: PathBuf::from("/var/lib/outpost/outbox"),
            cache_capacity: ByteSize::mib(4),
            max_outbox_bytes: ByteSize::mib(256),
            when_full: WhenFull::Block,
            max_quarantine_bytes: ByteSize::mib(16),
            quarantine_payload_bytes: ByteSize::kib(4),
            uplink_quarantine: false,
            write_endurance: ByteSize::tb(16),
        }
    }
}

/// Policy of a full outbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Stop acknowledging: sensors and the broker hold the data (backpressure).
    Block,
    /// Delete the oldest unsent readings to make room; every one is counted.
    DropOldest,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Capacity of the queue between sources and the ingest stage (envelopes).
    /// When it is full, sources wait (and MQTT stops reading from the socket).
    pub queue_capacity: usize,
    /// Most envelopes committed with one flush.
    pub max_commit_batch: usize,
    /// Minimum time between two flushes; caps fsyncs per second
    /// (5 ms → at most 200/s) at the cost of up to that much ack latency.
    #[serde(with = "humantime_serde")]
    pub min_commit_interval: Duration,
    /// Longest a message waits, from its receipt, for others to share its
    /// flush when traffic is light (a group of 256 readings commits at once).
    /// Fewer, fuller fsyncs write far less to the storage (SD card wear) at
    /// the cost of up to this much ack latency; 0 flushes as soon as possible.
    #[serde(with = "humantime_serde")]
    pub max_commit_delay: Duration,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            queue_capacity: 1024,
            max_commit_batch: 1024,
            min_commit_interval: Duration::from_millis(5),
            max_commit_delay: Duration::from_millis(25),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest payload accepted from a sensor.
    pub max_payload_bytes: ByteSize,
    /// Most readings in one payload.
    pub max_records: usize,
    /// Deepest nesting of arrays/maps in one payload.
    pub max_depth: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let d = DecodeLimits::default();
        LimitsConfig {
            max_payload_bytes: ByteSize::b(d.max_bytes as u64),
            max_records: d.max_records,
            max_depth: d.max_depth,
        }
    }
}

impl LimitsConfig {
    pub fn decode_limits(&self) -> DecodeLimits {
        DecodeLimits {
            max_bytes: usize::try_from(self.max_payload_bytes.as_u64()).unwrap_or(usize::MAX),
            max_records: self.max_records,
            max_depth: self.max_depth,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `external`: connect to a broker (Mosquitto) at `host:port`.
    /// `embedded`: run rumqttd in-process on `embedded.listen` and connect to it.
    #[serde(default)]
    pub mode: MqttMode,
    /// Broker host (external mode).
    #[serde(default = "default_mqtt_host")]
    pub host: String,
    /// Broker port (external mode).
    #[serde(default = "default_mqtt_port")]
    pub port: u16,
    /// Client id; with a persistent session the broker keeps our unacked messages under it.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// Optional username.
    pub username: Option<String>,
    /// Optional password (or `OUTPOST_MQTT_PASSWORD`).
    pub password: Option<String>,
    /// Keep-alive interval.
    #[serde(default = "default_keep_alive", with = "humantime_serde")]
    pub keep_alive: Duration,
    /// Persistent session (clean_session = false): unacked messages survive our restarts.
    #[serde(default = "default_true")]
    pub persistent_session: bool,
    /// Size of the client's request window. With the embedded broker it is also
    /// the broker's window: the most unacked QoS 1 messages it sends us at once.
    /// (An external broker sets its own, e.g. Mosquitto's `max_inflight_messages`.)
    #[serde(default = "default_inflight")]
    pub inflight: u16,
    /// Most decoded messages held in memory waiting for room in the ingest
    /// queue; past it the gateway stops reading from the broker.
    #[serde(default = "default_max_pending")]
    pub max_pending_messages: usize,
    /// First reconnect delay; doubles up to `reconnect_max`.
    #[serde(default = "default_reconnect_min", with = "humantime_serde")]
    pub reconnect_min: Duration,
    /// Longest reconnect delay.
    #[serde(default = "default_reconnect_max", with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// TLS to the broker.
    pub tls: Option<MqttTlsConfig>,
    /// Topic filters and the payload format on each.
    #[serde(default)]
    pub subscriptions: Vec<Subscription>,
    /// The embedded broker (mode = "embedded").
    #[serde(default)]
    pub embedded: EmbeddedBrokerConfig,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MqttMode {
    #[default]
    External,
    Embedded,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttTlsConfig {
    /// PEM file of the CA that signed the broker's certificate.
    pub ca_file: PathBuf,
    /// Optional client certificate (PEM) for mutual TLS.
    pub client_cert: Option<PathBuf>,
    /// Key of `client_cert` (PEM).
    pub client_key: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    /// MQTT topic filter, e.g. `outpost/sensors/#`.
    pub topic: String,
    /// Payload format on these topics.
    #[serde(default = "default_format")]
    pub format: PayloadFormat,
    /// Take the device name from this topic level (0-based) when the payload
    /// names only channels, e.g. 2 for `outpost/sensors/{device}`.
    pub device_from_topic_level: Option<usize>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedBrokerConfig {
    /// Where sensors connect.
    pub listen: SocketAddr,
    /// Most simultaneous client connections.
    pub max_connections: usize,
    /// Largest MQTT payload the broker accepts.
    pub max_payload_bytes: ByteSize,
    /// Broker memory per topic segment (rumqttd keeps messages in memory).
    pub max_segment_bytes: ByteSize,
    /// Segments kept per topic.
    pub max_segment_count: usize,
}

impl Default for EmbeddedBrokerConfig {
    fn default() -> Self {
        EmbeddedBrokerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            max_connections: 256,
            max_payload_bytes: ByteSize::kib(256),
            max_segment_bytes: ByteSize::mib(1),
            max_segment_count: 4,
        }
    }
}

/// The HTTP push source (`gateway/src/sources/http.rs`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSourceConfig {
    /// Address to listen on. Plain HTTP: keep it on loopback or a trusted
    /// network, and set `token` when it is not loopback.
    pub listen: SocketAddr,
    /// Bearer token every request must carry (`Authorization: Bearer ...`);
    /// none means no authentication. `OUTPOST_HTTP_TOKEN` overrides it.
    pub token: Option<String>,
    /// Largest request body; bigger ones get 413. Also the payload limit the
    /// decoders apply to this source. Default: `limits.max_payload_bytes`.
    pub max_body_bytes: Option<ByteSize>,
    /// Longest time one request may take: reading the body, waiting for room
    /// in the ingest queue and for the durable commit. Past it: 408 while the
    /// body is still arriving, 503 with `Retry-After` afterwards.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Requests handled at once; more wait (within `request_timeout`). Bounds
    /// memory to about this many times `max_body_bytes`.
    pub max_concurrent_requests: usize,
}

impl Default for HttpSourceConfig {
    fn default() -> Self {
        HttpSourceConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            token: None,
            max_body_bytes: None,
            request_timeout: Duration::from_secs(30),
            max_concurrent_requests: 64,
        }
    }
}

impl HttpSourceConfig {
    /// The body limit in bytes: `max_body_bytes`, or else `limits.max_payload_bytes`.
    pub fn body_limit(&self, limits: &LimitsConfig) -> usize {
        let b = self.max_body_bytes.unwrap_or(limits.max_payload_bytes);
        usize::try_from(b.as_u64()).unwrap_or(usize::MAX)
    }
}

/// Largest `http.max_body_bytes` accepted: a body is held in memory whole.
const MAX_HTTP_BODY: u64 = 64 * 1024 * 1024;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkConfig {
    /// Base URL of the cloud sink, e.g. `https://sink.example.com`. Plain
    /// `http://` is allowed only for loopback addresses.
    pub url: String,
    /// Bearer token (or `OUTPOST_UPLINK_TOKEN`, or `token_file`).
    pub token: Option<String>,
    /// File holding the bearer token (e.g. a systemd credential).
    pub token_file: Option<PathBuf>,
    /// Most readings in one batch.
    #[serde(default = "default_batch_records")]
    pub max_batch_records: usize,
    /// Most (uncompressed, stored) bytes in one batch.
    #[serde(default = "default_batch_bytes")]
    pub max_batch_bytes: ByteSize,
    /// How long to wait for a batch to fill before sending a partial one.
    #[serde(default = "default_linger", with = "humantime_serde")]
    pub linger: Duration,
    /// Request timeout.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// First retry delay after a failure; doubles (with jitter) up to `backoff_max`.
    #[serde(default = "default_backoff_min", with = "humantime_serde")]
    pub backoff_min: Duration,
    /// Longest retry delay.
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub backoff_max: Duration,
    /// zstd level for batches (1..=19; 3 is a good default on a Pi).
    #[serde(default = "default_zstd_level")]
    pub compression_level: i32,
    /// CA certificates (a PEM bundle: one or more) to trust for the sink, in
    /// addition to the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM, leaf first) presented to the sink when it
    /// requires mutual TLS (`tls.client_ca` on the sink). Needs `client_key`.
    pub client_cert: Option<PathBuf>,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1) of `client_cert`.
    pub client_key: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin HTTP server; `None`-like `""` is not allowed, use `enabled`.
    pub listen: SocketAddr,
    /// Serve `/metrics` and `/health`.
    pub enabled: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9100)),
            enabled: true,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `outpost_gateway=debug`. `RUST_LOG` wins.
    pub level: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

fn default_mqtt_host() -> String {
    "127.0.0.1".into()
}
fn default_mqtt_port() -> u16 {
    1883
}
fn default_client_id() -> String {
    "outpost-gateway".into()
}
fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}
fn default_true() -> bool {
    true
}
fn default_inflight() -> u16 {
    100
}
fn default_max_pending() -> usize {
    1024
}
fn default_reconnect_min() -> Duration {
    Duration::from_millis(200)
}
fn default_reconnect_max() -> Duration {
    Duration::from_secs(30)
}
fn default_format() -> PayloadFormat {
    PayloadFormat::Auto
}
fn default_batch_records() -> usize {
    1000
}
fn default_batch_bytes() -> ByteSize {
    ByteSize::mib(1)
}
fn default_linger() -> Duration {
    Duration::from_millis(500)
}
fn default_timeout() -> Duration {
    Duration::from_secs(15)
}
fn default_backoff_min() -> Duration {
    Duration::from_millis(200)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(60)
}
fn default_zstd_level() -> i32 {
    3
}

/// One problem found in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Everything wrong with a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {} problem(s):\n{}", .problems.len(), .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: PathBuf,
        problems: Vec<ConfigProblem>,
    },
}

impl GatewayConfig {
    /// Reads, parses, applies environment overrides and validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut cfg: GatewayConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        cfg.apply_env();
        let problems = cfg.validate();
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid {
                path: path.into(),
                problems,
            })
        }
    }

    fn apply_env(&mut self) {
        if let Ok(token) = std::env::var(ENV_UPLINK_TOKEN)
            && !token.is_empty()
        {
            self.uplink.token = Some(token);
        }
        // Under systemd, `LoadCredential=uplink-token:/etc/outpost/uplink-token`
        // hands the root-only token file to the (dynamic) service user; that
        // copy wins over `uplink.token_file`, which the service cannot read.
        if self.uplink.token.is_none()
            && let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY")
        {
            let credential = Path::new(&dir).join(CREDENTIAL_UPLINK_TOKEN);
            if credential.is_file() {
                self.uplink.token_file = Some(credential);
            }
        }
        if let (Ok(pw), Some(mqtt)) = (std::env::var(ENV_MQTT_PASSWORD), self.mqtt.as_mut())
            && !pw.is_empty()
        {
            mqtt.password = Some(pw);
        }
        if let (Ok(token), Some(http)) = (std::env::var(ENV_HTTP_TOKEN), self.http.as_mut())
            && !token.is_empty()
        {
            http.token = Some(token);
        }
    }

    /// Every problem, each with the key it is about. Empty means valid.
    pub fn validate(&self) -> Vec<ConfigProblem> {
        let mut p = Vec::new();
        let mut bad = |key: &str, message: String| {
            p.push(ConfigProblem {
                key: key.into(),
                message,
            })
        };
        if self.gateway_id.is_empty()
            || self.gateway_id.len() > 128
            || self.gateway_id.chars().any(char::is_control)
        {
            bad("gateway_id", "must be 1..=128 printable characters".into());
        }
        if self.storage.cache_capacity.as_u64() < 1024 * 1024 {
            bad("storage.cache_capacity", "must be at least 1 MiB".into());
        }
        if self.storage.max_outbox_bytes.as_u64() < 1024 * 1024 {
            bad("storage.max_outbox_bytes", "must be at least 1 MiB".into());
        }
        if self.ingest.queue_capacity == 0 {
            bad("ingest.queue_capacity", "must be at least 1".into());
        }
        if self.ingest.max_commit_batch == 0 {
            bad("ingest.max_commit_batch", "must be at least 1".into());
        }
        if self.ingest.min_commit_interval > Duration::from_secs(1) {
            bad(
                "ingest.min_commit_interval",
                "must be at most 1s (it delays every acknowledgement)".into(),
            );
        }
        if self.ingest.max_commit_delay > Duration::from_secs(1) {
            bad(
                "ingest.max_commit_delay",
                "must be at most 1s (it delays acknowledgements at low rates)".into(),
            );
        }
        if self.limits.max_payload_bytes.as_u64() == 0 {
            bad("limits.max_payload_bytes", "must be positive".into());
        }
        if self.limits.max_records == 0 {
            bad("limits.max_records", "must be at least 1".into());
        }
        if !(2..=64).contains(&self.limits.max_depth) {
            bad("limits.max_depth", "must be within 2..=64".into());
        }
        if self.mqtt.is_none()
            && self.http.is_none()
            && self.coap.is_none()
            && self.serial.is_empty()
            && self.sql.is_empty()
            && self.rest.is_empty()
            && self.files.is_empty()
        {
            bad(
                "mqtt",
                "no source is configured; add one of [mqtt], [http], [coap], [[serial]], [[files]], [[sql]], [[rest]]".into(),
            );
        }
        if let Some(h) = &self.http {
            match &h.token {
                Some(t) if t.trim().is_empty() => bad("http.token", "is empty".into()),
                Some(t) if !t.bytes().all(|b| b.is_ascii_graphic()) => bad(
                    "http.token",
                    "must be printable ASCII without spaces (it travels in a header)".into(),
                ),
                _ => {}
            }
            let body = h.max_body_bytes.unwrap_or(self.limits.max_payload_bytes);
            if body.as_u64() == 0 || body.as_u64() > MAX_HTTP_BODY {
                bad(
                    "http.max_body_bytes",
                    "must be positive and at most 64 MiB (a body is held in memory)".into(),
                );
            }
            if h.request_timeout.is_zero() || h.request_timeout > Duration::from_secs(600) {
                bad(
                    "http.request_timeout",
                    "must be positive and at most 10m".into(),
                );
            }
            if h.max_concurrent_requests == 0 {
                bad("http.max_concurrent_requests", "must be at least 1".into());
            }
            if self.admin.enabled && self.admin.listen == h.listen {
                bad("http.listen", "is the same address as admin.listen".into());
            }
            if let Some(m) = &self.mqtt
                && m.mode == MqttMode::Embedded
                && m.embedded.listen == h.listen
            {
                bad(
                    "http.listen",
                    "is the same address as mqtt.embedded.listen".into(),
                );
            }
        }
        match &self.mqtt {
            None => {}
            Some(m) => {
                if m.subscriptions.is_empty() {
                    bad(
                        "mqtt.subscriptions",
                        "at least one subscription is needed".into(),
                    );
                }
                for (i, s) in m.subscriptions.iter().enumerate() {
                    if let Err(e) = check_topic_filter(&s.topic) {
                        bad(&format!("mqtt.subscriptions[{i}].topic"), e);
                    }
                }
                if m.client_id.is_empty() || m.client_id.len() > 64 {
                    bad("mqtt.client_id", "must be 1..=64 characters".into());
                }
                if m.keep_alive < Duration::from_secs(5) {
                    bad("mqtt.keep_alive", "must be at least 5s".into());
                }
                if m.inflight == 0 {
                    bad("mqtt.inflight", "must be at least 1".into());
                }
                if m.max_pending_messages == 0 {
                    bad("mqtt.max_pending_messages", "must be at least 1".into());
                }
                if m.reconnect_min > m.reconnect_max {
                    bad(
                        "mqtt.reconnect_min",
                        "must not exceed mqtt.reconnect_max".into(),
                    );
                }
                if m.password.is_some() && m.username.is_none() {
                    bad("mqtt.password", "a password needs a username".into());
                }
                if let Some(tls) = &m.tls {
                    check_file(&mut p, "mqtt.tls.ca_file", &tls.ca_file);
                    match (&tls.client_cert, &tls.client_key) {
                        (Some(c), Some(k)) => {
                            check_file(&mut p, "mqtt.tls.client_cert", c);
                            check_file(&mut p, "mqtt.tls.client_key", k);
                        }
                        (None, None) => {}
                        _ => p.push(ConfigProblem {
                            key: "mqtt.tls".into(),
                            message: "client_cert and client_key go together".into(),
                        }),
                    }
                    if m.mode == MqttMode::Embedded {
                        p.push(ConfigProblem {
                            key: "mqtt.tls".into(),
                            message: "TLS to the embedded broker is not supported; it listens on loopback".into(),
                        });
                    }
                }
            }
        }
        if let Some(c) = &self.coap {
            c.validate("coap", &mut p);
        }
        p.extend(crate::sources::serial::validate_ports(&self.serial));
        crate::sources::sql::config::validate_all(&self.sql, &mut p);
        crate::sources::rest::config::validate_all(&self.rest, &mut p);
        crate::sources::files::config::validate_all(&self.files, &mut p);
        let mut bad = |key: &str, message: String| {
            p.push(ConfigProblem {
                key: key.into(),
                message,
            })
        };
        let u = &self.uplink;
        match reqwest::Url::parse(&u.url) {
            Err(e) => bad("uplink.url", format!("not a URL: {e}")),
            Ok(url) => match url.scheme() {
                "https" => {}
                "http" if is_loopback_host(&url) => {}
                "http" => bad(
                    "uplink.url",
                    "plain http is allowed only to a loopback address; use https".into(),
                ),
                other => bad("uplink.url", format!("scheme {other:?} is not http(s)")),
            },
        }
        match (&u.token, &u.token_file) {
            (None, None) => bad(
                "uplink.token",
                format!("no token: set uplink.token, uplink.token_file or {ENV_UPLINK_TOKEN}"),
            ),
            (Some(t), _) if t.trim().is_empty() => bad("uplink.token", "is empty".into()),
            _ => {}
        }
        if u.max_batch_records == 0 {
            bad("uplink.max_batch_records", "must be at least 1".into());
        }
        if u.max_batch_bytes.as_u64() < 1024 {
            bad("uplink.max_batch_bytes", "must be at least 1 KiB".into());
        }
        if !(1..=19).contains(&u.compression_level) {
            bad("uplink.compression_level", "must be within 1..=19".into());
        }
        if u.backoff_min.is_zero() || u.backoff_min > u.backoff_max {
            bad(
                "uplink.backoff_min",
                "must be positive and not exceed uplink.backoff_max".into(),
            );
        }
        if u.timeout.is_zero() {
            bad("uplink.timeout", "must be positive".into());
        }
        if let Some(f) = &u.token_file {
            check_file(&mut p, "uplink.token_file", f);
        }
        if let Some(f) = &u.ca_file {
            check_file(&mut p, "uplink.ca_file", f);
        }
        match (&u.client_cert, &u.client_key) {
            (Some(c), Some(k)) => {
                check_file(&mut p, "uplink.client_cert", c);
                check_file(&mut p, "uplink.client_key", k);
            }
            (None, None) => {}
            (Some(_), None) => p.push(ConfigProblem {
                key: "uplink.client_key".into(),
                message: "uplink.client_cert needs uplink.client_key".into(),
            }),
            (None, Some(_)) => p.push(ConfigProblem {
                key: "uplink.client_cert".into(),
                message: "uplink.client_key needs uplink.client_cert".into(),
            }),
        }
        if let Some(c) = &self.contracts {
            c.validate("contracts", &mut p);
        }
        self.clock.validate("clock", &mut p);
        if let Some(a) = &self.analysis {
            a.validate("analysis", &mut p);
        }
        p
    }
}

fn check_file(p: &mut Vec<ConfigProblem>, key: &str, path: &Path) {
    if !path.is_file() {
        p.push(ConfigProblem {
            key: key.into(),
            message: format!("file {} not found", path.display()),
        });
    }
}

fn is_loopback_host(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// MQTT 3.1.1 §4.7: `#` only last and alone in its level, `+` alone in its level.
fn check_topic_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("is empty".into());
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i != levels.len() - 1) {
            return Err("`#` must be the whole last level".into());
        }
        if level.contains('+') && *level != "+" {
            return Err("`+` must be a whole level".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        gateway_id = "gw-1"
        [mqtt]
        [[mqtt.subscriptions]]
        topic = "outpost/sensors/#"
        [uplink]
        url = "http://127.0.0.1:8080"
        token = "secret"
    "#;

    #[test]
    fn minimal_config_is_valid_with_defaults() {
        let cfg = GatewayConfig::from_toml(MINIMAL, Path::new("t.toml")).unwrap();
        assert_eq!(cfg.storage.when_full, WhenFull::Block);
        assert_eq!(cfg.ingest.min_commit_interval, Duration::from_millis(5));
        assert_eq!(
            cfg.mqtt.unwrap().subscriptions[0].format,
            PayloadFormat::Auto
        );
    }

    #[test]
    fn unknown_fields_are_refused_with_their_name() {
        let text = MINIMAL.replace("[uplink]", "[uplink]\nlinger_ms = 5");
        let err = GatewayConfig::from_toml(&text, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("linger_ms"), "{err}");
    }

    #[test]
    fn commit_delay_and_write_endurance_have_defaults_and_a_delay_past_1s_is_refused() {
        let cfg = GatewayConfig::from_toml(MINIMAL, Path::new("t.toml")).unwrap();
        assert_eq!(cfg.ingest.max_commit_delay, Duration::from_millis(25));
        assert_eq!(cfg.storage.write_endurance, ByteSize::tb(16));
        let text = MINIMAL.replace(
            "[uplink]",
            "[ingest]\nmax_commit_delay = \"200ms\"\n[storage]\nwrite_endurance = \"0 B\"\n[uplink]",
        );
        let cfg = GatewayConfig::from_toml(&text, Path::new("t.toml")).unwrap();
        assert_eq!(cfg.ingest.max_commit_delay, Duration::from_millis(200));
        assert_eq!(cfg.storage.write_endurance, ByteSize::b(0));
        let text = MINIMAL.replace("[uplink]", "[ingest]\nmax_commit_delay = \"2s\"\n[uplink]");
        let err = GatewayConfig::from_toml(&text, Path::new("t.toml")).unwrap_err();
        let ConfigError::Invalid { problems, .. } = err else {
            panic!("expected Invalid, got {err}")
        };
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "ingest.max_commit_delay");
    }

    #[test]
    fn validation_reports_every_problem_with_its_key() {
        let text = r#"
            gateway_id = ""
            [ingest]
            queue_capacity = 0
            [mqtt]
            [[mqtt.subscriptions]]
            topic = "a/#/b"
            [uplink]
            url = "http://sink.example.com"
            compression_level = 40
        "#;
        let err = GatewayConfig::from_toml(text, Path::new("bad.toml")).unwrap_err();
        let ConfigError::Invalid { problems, .. } = err else {
            panic!("expected Invalid, got {err}")
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for key in [
            "gateway_id",
            "ingest.queue_capacity",
            "mqtt.subscriptions[0].topic",
            "uplink.url",
            "uplink.token",
            "uplink.compression_level",
        ] {
            assert!(keys.contains(&key), "missing {key} in {keys:?}");
        }
    }

    #[test]
    fn the_shipped_example_config_parses_and_only_misses_its_files() {
        let text = include_str!("../../configs/gateway.toml");
        match GatewayConfig::from_toml(text, Path::new("configs/gateway.toml")) {
            Ok(_) => {}
            Err(ConfigError::Invalid { problems, .. }) => {
                // The example points at /etc/outpost/uplink-token, absent on a dev machine.
                assert!(
                    problems.iter().all(|p| p.key == "uplink.token_file"),
                    "{problems:?}"
                );
            }
            Err(e) => panic!("{e}"),
        }
    }

    const HTTP_ONLY: &str = r#"
        gateway_id = "gw-1"
        [http]
        [uplink]
        url = "http://127.0.0.1:8080"
        token = "secret"
    "#;

    #[test]
    fn an_http_only_config_is_valid_with_defaults() {
        let cfg = GatewayConfig::from_toml(HTTP_ONLY, Path::new("t.toml")).unwrap();
        assert!(cfg.mqtt.is_none());
        let http = cfg.http.unwrap();
        assert_eq!(http.listen, SocketAddr::from(([127, 0, 0, 1], 8081)));
        assert_eq!(http.token, None);
        assert_eq!(http.request_timeout, Duration::from_secs(30));
        assert_eq!(
            http.body_limit(&cfg.limits) as u64,
            cfg.limits.max_payload_bytes.as_u64(),
            "the body limit defaults to limits.max_payload_bytes"
        );
    }

    #[test]
    fn a_config_without_any_source_is_refused() {
        let text = HTTP_ONLY.replace("[http]", "");
        let err = GatewayConfig::from_toml(&text, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no source is configured; add one of [mqtt]"),
            "{err}"
        );
    }

    #[test]
    fn http_settings_are_validated_with_their_keys() {
        let text = HTTP_ONLY.replace(
            "[http]",
            r#"[http]
            listen = "127.0.0.1:9100"
            token = "has space"
            max_body_bytes = "65 MiB"
            request_timeout = "0s"
            max_concurrent_requests = 0"#,
        );
        let err = GatewayConfig::from_toml(&text, Path::new("t.toml")).unwrap_err();
        let ConfigError::Invalid { problems, .. } = err else {
            panic!("expected Invalid, got {err}")
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for key in [
            "http.listen",
            "http.token",
            "http.max_body_bytes",
            "http.request_timeout",
            "http.max_concurrent_requests",
        ] {
            assert!(keys.contains(&key), "missing {key} in {keys:?}");
        }
        let unknown = HTTP_ONLY.replace("[http]", "[http]\nport = 8081");
        let err = GatewayConfig::from_toml(&unknown, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("port"), "{err}");
    }

    #[test]
    fn topic_filters_follow_mqtt_wildcard_rules() {
        assert!(check_topic_filter("a/+/c").is_ok());
        assert!(check_topic_filter("#").is_ok());
        assert!(check_topic_filter("a/b#").is_err());
        assert!(check_topic_filter("a/#/c").is_err());
        assert!(check_topic_filter("a/b+/c").is_err());
    }
}
