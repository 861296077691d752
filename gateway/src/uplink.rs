//! Uplink: reads the outbox in sequence order, sends batches to the cloud
//! sink, and deletes records only after the sink answered 2xx.
//!
//! - Batches close on `max_batch_records`, `max_batch_bytes`, or `linger`.
//! - Body: CBOR + zstd ([`protocol::UplinkBatch`]), bearer token,
//!   `Idempotency-Key` = `{gateway}:{epoch}:{first}-{last}`.
//! - Failures (network, 5xx, 401/403, 429) retry the *same* records with
//!   exponential backoff and jitter; nothing is skipped.
//! - 413 splits the batch in halves; a single record the sink still refuses
//!   as too large is moved to quarantine (reason `uplink_too_large`) and counted.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::batch::{CONTENT_ENCODING, CONTENT_TYPE, OutboxRecord, UplinkBatch};
use reqwest::StatusCode;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::backoff::Backoff;
use crate::config::UplinkConfig;
use crate::metrics::Metrics;
use crate::outbox::{Outbox, OutboxError, QuarantineEntry};

#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("cannot read token file {path}: {source}")]
    TokenFile {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot read CA file {path}: {source}")]
    CaFile {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid CA certificate in {path}: {source}")]
    CaCert {
        path: String,
        source: reqwest::Error,
    },
    #[error("cannot read client certificate or key {path}: {source}")]
    ClientCertFile {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid client certificate/key in {cert} + {key}: {source}")]
    ClientCert {
        cert: String,
        key: String,
        source: reqwest::Error,
    },
    #[error("invalid sink URL: {0}")]
    Url(String),
    #[error("HTTP client: {0}")]
    Client(reqwest::Error),
}

/// What the sink said about one POST.
#[derive(Debug)]
enum PostOutcome {
    Stored,
    TooLarge,
    Retry(String),
}

/// Everything the uplink derives from `[uplink]`: the settings, the token
/// (read from `token_file` if needed) and an HTTP client with the CA bundle and
/// client certificate. Built whole, so a reload (SIGHUP) can swap it in one
/// step through [`Uplink::settings_sender`]; the uplink picks it up before its
/// next batch or retry.
#[derive(Debug)]
pub struct UplinkSettings {
    pub cfg: UplinkConfig,
    endpoint: reqwest::Url,
    token: String,
    client: reqwest::Client,
}

/// The channel a reload sends new uplink settings on.
pub type SettingsSender = Arc<watch::Sender<Arc<UplinkSettings>>>;

#[derive(Debug)]
pub struct Uplink {
    gateway_id: String,
    /// Kept so `live.changed()` never errors while the uplink runs.
    live_tx: SettingsSender,
    live: watch::Receiver<Arc<UplinkSettings>>,
    outbox: Arc<Outbox>,
    metrics: Metrics,
    /// Resolves clock-pending records (correction) before a batch is built.
    clock: Arc<crate::clock::ClockMonitor>,
}

impl UplinkSettings {
    /// The bearer token in use.
    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    /// Reads the token and certificate files and builds the HTTP client.
    pub fn build(cfg: UplinkConfig) -> Result<Self, UplinkError> {
        let token = match (&cfg.token, &cfg.token_file) {
            (Some(t), _) => t.trim().to_owned(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|source| UplinkError::TokenFile {
                    path: path.display().to_string(),
                    source,
                })?
                .trim()
                .to_owned(),
            (None, None) => String::new(),
        };
        let base = reqwest::Url::parse(&cfg.url).map_err(|e| UplinkError::Url(e.to_string()))?;
        let endpoint = base
            .join("v1/ingest")
            .map_err(|e| UplinkError::Url(e.to_string()))?;
        let mut builder = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("outpost-gateway/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(60));
        if let Some(path) = &cfg.ca_file {
            let pem = std::fs::read(path).map_err(|source| UplinkError::CaFile {
                path: path.display().to_string(),
                source,
            })?;
            // A bundle: every certificate in the file is trusted.
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| {
                UplinkError::CaCert {
                    path: path.display().to_string(),
                    source,
                }
            })?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let (Some(cert), Some(key)) = (&cfg.client_cert, &cfg.client_key) {
            let read = |p: &std::path::Path| {
                std::fs::read(p).map_err(|source| UplinkError::ClientCertFile {
                    path: p.display().to_string(),
                    source,
                })
            };
            let mut pem = read(cert)?;
            pem.push(b'\n');
            pem.extend(read(key)?);
            let identity =
                reqwest::Identity::from_pem(&pem).map_err(|source| UplinkError::ClientCert {
                    cert: cert.display().to_string(),
                    key: key.display().to_string(),
                    source,
                })?;
            builder = builder.identity(identity);
        }
        let client = builder.build().map_err(UplinkError::Client)?;
        Ok(UplinkSettings {
            cfg,
            endpoint,
            token,
            client,
        })
    }
}

impl Uplink {
    pub fn new(
        gateway_id: String,
        cfg: UplinkConfig,
        outbox: Arc<Outbox>,
        metrics: Metrics,
    ) -> Result<Self, UplinkError> {
        let (live_tx, live) = watch::channel(Arc::new(UplinkSettings::build(cfg)?));
        Ok(Uplink {
            gateway_id,
            live_tx: Arc::new(live_tx),
            live,
            outbox,
            metrics,
            clock: Arc::new(crate::clock::ClockMonitor::system(
                &crate::clock::ClockConfig::default(),
            )),
        })
    }

    /// Uses `clock` (the gateway's, shared with ingest) to correct records
    /// stamped while the clock was unsynchronised.
    pub fn with_clock(mut self, clock: Arc<crate::clock::ClockMonitor>) -> Self {
        self.clock = clock;
        self
    }

    /// Outbox records as they may leave: clock-pending ones corrected (or
    /// flagged) by [`crate::clock::resolve`]; counts of what was done.
    fn resolve_clock(&self, records: &[OutboxRecord]) -> (Vec<OutboxRecord>, [u64; 3]) {
        use crate::clock::Resolution;
        let mut counts = [0u64; 3];
        if !records
            .iter()
            .any(|r| matches!(r.item, protocol::batch::OutboxItem::ClockPending { .. }))
        {
            return (records.to_vec(), counts);
        }
        let correction = self.clock.correction();
        let boot = self.clock.boot_id();
        let out = records
            .iter()
            .map(|r| {
                let (item, how) = crate::clock::resolve(r.item.clone(), correction.as_ref(), &boot);
                match how {
                    Resolution::Plain => {}
                    Resolution::Corrected => counts[0] += 1,
                    Resolution::Uncorrectable => counts[1] += 1,
                    Resolution::StillUnsynced => counts[2] += 1,
                }
                OutboxRecord { seq: r.seq, item }
            })
            .collect();
        (out, counts)
    }

    /// Where a reload sends new settings.
    pub fn settings_sender(&self) -> SettingsSender {
        self.live_tx.clone()
    }

    fn settings(&self) -> Arc<UplinkSettings> {
        self.live.borrow().clone()
    }

    /// Runs until `shutdown` flips; an in-flight request is abandoned (its
    /// records stay in the outbox and are sent again next time).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut cursor = 0u64;
        let mut waiting_since: Option<Instant> = None;
        let mut last_success = Instant::now();
        let mut live = self.live.clone();
        loop {
            if *shutdown.borrow() {
                break;
            }
            self.update_lag(last_success);
            let outbox = self.outbox.clone();
            let settings = self.settings();
            let (max_records, max_bytes) = (
                settings.cfg.max_batch_records,
                settings.cfg.max_batch_bytes.as_u64(),
            );
            let linger = settings.cfg.linger;
            drop(settings);
            let records = match tokio::task::spawn_blocking(move || {
                outbox.read_batch(cursor, max_records, max_bytes)
            })
            .await
            {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    error!(error = %e, "Cannot read the outbox.");
                    if sleep_or_shutdown(Duration::from_secs(1), &mut shutdown).await {
                        break;
                    }
                    continue;
                }
                Err(e) => {
                    error!(error = %e, "Outbox read panicked.");
                    break;
                }
            };
            if records.is_empty() {
                waiting_since = None;
                last_success = Instant::now();
                self.update_lag(last_success);
                tokio::select! {
                    () = self.outbox.data_added.notified() => {}
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.changed() => break,
                }
                continue;
            }
            // Linger for a fuller batch, counted from when records first appeared.
            let full = records.len() >= max_records;
            let since = *waiting_since.get_or_insert_with(Instant::now);
            if !full && since.elapsed() < linger {
                let remaining = linger - since.elapsed();
                tokio::select! {
                    () = tokio::time::sleep(remaining) => {}
                    // New settings (reload): look again with the new linger.
                    _ = live.changed() => {}
                    _ = shutdown.changed() => break,
                }
                continue;
            }
            waiting_since = None;
            let last = records.last().map_or(cursor, |r| r.seq);
            match self.deliver(records, &mut shutdown).await {
                Delivery::Done => {
                    cursor = last + 1;
                    last_success = Instant::now();
                }
                Delivery::Shutdown => break,
            }
        }
        info!("Uplink stopped.");
    }

    fn update_lag(&self, last_success: Instant) {
        let lag = if self.outbox.depth() == 0 {
            0.0
        } else {
            last_success.elapsed().as_secs_f64()
        };
        self.metrics.uplink_lag_seconds.set(lag);
        self.metrics.observe_outbox(&self.outbox);
    }

    /// Sends `records` until the sink has all of them (splitting on 413), or shutdown.
    async fn deliver(
        &self,
        records: Vec<OutboxRecord>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Delivery {
        let mut backoff = {
            let s = self.settings();
            Backoff::new(s.cfg.backoff_min, s.cfg.backoff_max)
        };
        let mut parts: VecDeque<Vec<OutboxRecord>> = VecDeque::from([records]);
        while let Some(part) = parts.pop_front() {
            loop {
                let outcome = tokio::select! {
                    o = self.post(&part) => o,
                    // Abandon the request: its records stay in the outbox.
                    _ = shutdown.changed() => return Delivery::Shutdown,
                };
                match outcome {
                    PostOutcome::Stored => {
                        self.metrics.uplink("sent");
                        self.metrics.uplink_readings_sent.inc_by(part.len() as u64);
                        // The sink has them. Until they are deleted they hold
                        // outbox space, so keep trying; never move past them.
                        while let Err(e) = self.remove(&part).await {
                            error!(error = %e, "Could not delete uploaded records from the outbox; retrying.");
                            if sleep_or_shutdown(backoff.next_delay(), shutdown).await {
                                return Delivery::Shutdown;
                            }
                        }
                        break;
                    }
                    PostOutcome::TooLarge if part.len() > 1 => {
                        self.metrics.uplink("split");
                        let mut first = part;
                        let second = first.split_off(first.len() / 2);
                        debug!(
                            first = first.len(),
                            second = second.len(),
                            "Sink said 413; splitting the batch."
                        );
                        parts.push_front(second);
                        parts.push_front(first);
                        break;
                    }
                    PostOutcome::TooLarge => {
                        self.metrics.uplink("too_large");
                        self.metrics.quarantine("uplink_too_large");
                        error!(
                            seq = part[0].seq,
                            "The sink refuses even a single record as too large; moving it to quarantine."
                        );
                        while let Err(e) = self.quarantine_too_large(&part).await {
                            error!(error = %e, "Could not move the record to quarantine; retrying.");
                            if sleep_or_shutdown(backoff.next_delay(), shutdown).await {
                                return Delivery::Shutdown;
                            }
                        }
                        break;
                    }
                    PostOutcome::Retry(why) => {
                        self.metrics.uplink("failed");
                        let delay = backoff.next_delay();
                        warn!(reason = %why, attempt = backoff.attempts(), retry_in = ?delay, "Uplink failed; will retry the same records.");
                        if sleep_or_shutdown(delay, shutdown).await {
                            return Delivery::Shutdown;
                        }
                    }
                }
            }
        }
        Delivery::Done
    }

    async fn post(&self, records: &[OutboxRecord]) -> PostOutcome {
        let (records, clock_counts) = self.resolve_clock(records);
        let batch = match UplinkBatch::new(self.gateway_id.clone(), records) {
            Ok(b) => b.with_epoch(self.outbox.epoch()),
            Err(e) => return PostOutcome::Retry(format!("cannot build batch: {e}")),
        };
        // Current settings: a reload (new token, CA, client certificate)
        // applies from the next attempt on.
        let settings = self.settings();
        let level = settings.cfg.compression_level;
        let key = batch.idempotency_key();
        let body = match tokio::task::spawn_blocking(move || batch.encode(level)).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => return PostOutcome::Retry(format!("cannot encode batch: {e}")),
            Err(e) => return PostOutcome::Retry(format!("encoder panicked: {e}")),
        };
        let started = Instant::now();
        let result = settings
            .client
            .post(settings.endpoint.clone())
            .bearer_auth(&settings.token)
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .header(reqwest::header::CONTENT_ENCODING, CONTENT_ENCODING)
            .header("Idempotency-Key", key)
            .body(body)
            .send()
            .await;
        self.metrics
            .uplink_request_seconds
            .observe(started.elapsed().as_secs_f64());
        match result {
            Err(e) => PostOutcome::Retry(format!("request failed: {}", error_chain(&e))),
            Ok(resp) => {
                let status = resp.status();
                if status.is_success() {
                    for (outcome, n) in ["corrected", "uncorrectable", "unsynced"]
                        .into_iter()
                        .zip(clock_counts)
                    {
                        if n > 0 {
                            self.metrics
                                .clock_resolved
                                .get_or_create(&crate::metrics::OutcomeLabel { outcome })
                                .inc_by(n);
                        }
                    }
                    PostOutcome::Stored
                } else if status == StatusCode::PAYLOAD_TOO_LARGE {
                    PostOutcome::TooLarge
                } else {
                    let body = resp.text().await.unwrap_or_default();
                    let body: String = body.chars().take(200).collect();
                    if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
                        error!(%status, body = %body, "The sink refuses this gateway's token; check uplink.token and gateway_id.");
                    }
                    PostOutcome::Retry(format!("sink answered {status}: {body}"))
                }
            }
        }
    }

    async fn remove(&self, part: &[OutboxRecord]) -> Result<u64, OutboxError> {
        let (Some(first), Some(last)) = (part.first(), part.last()) else {
            return Ok(0);
        };
        let (first, last) = (first.seq, last.seq);
        let outbox = self.outbox.clone();
        tokio::task::spawn_blocking(move || outbox.remove_range(first, last))
            .await
            .unwrap_or_else(|e| Err(OutboxError::Encode(format!("remove task panicked: {e}"))))
    }

    async fn quarantine_too_large(&self, part: &[OutboxRecord]) -> Result<(), String> {
        let outbox = self.outbox.clone();
        let record = part[0].clone();
        let res = tokio::task::spawn_blocking(move || {
            let mut payload = Vec::new();
            let _ = ciborium::into_writer(&record.item, &mut payload);
            outbox.quarantine(&QuarantineEntry {
                received: protocol::Timestamp::now(),
                origin: format!("uplink:seq={}", record.seq),
                reason: "uplink_too_large".into(),
                detail: "the sink answered 413 for this single record".into(),
                payload_len: payload.len(),
                payload,
            })?;
            outbox.remove_range(record.seq, record.seq)?;
            outbox.flush()
        })
        .await;
        match res {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("quarantine task panicked: {e}")),
        }
    }
}

enum Delivery {
    Done,
    Shutdown,
}

/// Sleeps; returns true if shutdown was requested meanwhile.
async fn sleep_or_shutdown(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => *shutdown.borrow(),
        _ = shutdown.changed() => true,
    }
}

/// An error and its sources, `: `-separated: reqwest's own message omits the
/// cause (e.g. "invalid peer certificate: Expired") that says what to fix.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
