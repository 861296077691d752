//! REST polling source: `GET` a JSON endpoint on a schedule and map it to
//! readings with JSON pointers.
//!
//! - [`config`] — `[[rest]]`, validated with every problem's key.
//! - [`mapping`] — document → readings (items array or single object; long
//!   form or a fixed field list); no I/O.
//! - [`conditional`] — ETag / Last-Modified validators, status handling,
//!   `Retry-After`; no I/O.
//!
//! Each poll that returns new content becomes one readings envelope carrying
//! the checkpoint `rest:<name>` = the response's validators, stored in the
//! same atomic outbox write as its readings. The next request (also after a
//! restart) sends them back as `If-None-Match` / `If-Modified-Since`; a 304
//! means nothing new. A server that re-serves readings already stored (no
//! validators, a changed ETag over overlapping data, a crash before the
//! checkpoint was stored) does no harm: the readings have the same identity
//! `(device, channel, time)` and the sink stores each identity once.
//!
//! Errors (network, timeout, 4xx/5xx, bad JSON, an oversized body) back off
//! exponentially with jitter; 429/503 with `Retry-After` wait at least that
//! long. Bad JSON and unmappable items are quarantined and the source goes
//! on. Bounded: one request in flight per source, the body read in chunks and
//! refused past `max_response_bytes`, at most `max_items` items.

pub mod conditional;
pub mod config;
pub mod mapping;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use protocol::{DecodeError, Timestamp};
use reqwest::header::ACCEPT;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

pub use config::RestSourceConfig;

use self::conditional::{Answer, Validators};
use self::mapping::PointerMap;
use crate::backoff::Backoff;
use crate::envelope::{Commit, Content, Envelope};
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::sources::sql::{Delivery, deliver, load_checkpoint, sleep_or_shutdown};

/// Metric label: the source's name and the outcome of a request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct SourceOutcomeLabel {
    pub source: String,
    pub outcome: &'static str,
}

impl Metrics {
    fn rest_request(&self, source: &str, outcome: &'static str) {
        self.rest_requests
            .get_or_create(&SourceOutcomeLabel {
                source: source.to_owned(),
                outcome,
            })
            .inc();
    }
}

/// Why a REST source could not start.
#[derive(Debug, thiserror::Error)]
pub enum RestSourceError {
    #[error("rest source {name}: cannot read token file {path}: {detail}")]
    TokenFile {
        name: String,
        path: String,
        detail: String,
    },
    #[error("rest source {name}: invalid URL: {detail}")]
    Url { name: String, detail: String },
    #[error("rest source {name}: HTTP client: {detail}")]
    Client { name: String, detail: String },
}

/// How one poll ended.
#[derive(Debug)]
enum Poll {
    /// New content stored (or an empty document).
    Stored,
    NotModified,
    Retry {
        retry_after: Option<Duration>,
        reason: String,
    },
    Shutdown,
}

#[derive(Debug)]
pub struct RestSource {
    cfg: RestSourceConfig,
    url: reqwest::Url,
    token: Option<String>,
    client: reqwest::Client,
    map: PointerMap,
    outbox: Arc<Outbox>,
    metrics: Metrics,
    origin: String,
}

impl RestSource {
    pub fn new(
        cfg: RestSourceConfig,
        outbox: Arc<Outbox>,
        metrics: Metrics,
    ) -> Result<Self, RestSourceError> {
        let name = cfg.name.clone();
        let token = match (&cfg.token, &cfg.token_file) {
            (Some(t), _) => Some(t.trim().to_owned()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| RestSourceError::TokenFile {
                        name: name.clone(),
                        path: path.display().to_string(),
                        detail: e.to_string(),
                    })?
                    .trim()
                    .to_owned(),
            ),
            (None, None) => None,
        };
        let url = reqwest::Url::parse(&cfg.url).map_err(|e| RestSourceError::Url {
            name: name.clone(),
            detail: e.to_string(),
        })?;
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("outpost-gateway/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| RestSourceError::Client {
                name: name.clone(),
                detail: e.to_string(),
            })?;
        let map = PointerMap::new(&cfg);
        let origin = cfg.checkpoint_key();
        Ok(RestSource {
            cfg,
            url,
            token,
            client,
            map,
            outbox,
            metrics,
            origin,
        })
    }

    /// Polls until `shutdown` turns true.
    pub async fn run(
        self,
        tx: mpsc::Sender<Envelope>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), RestSourceError> {
        let name = self.cfg.name.clone();
        // An unreadable checkpoint only costs one unconditional request.
        let mut validators = match load_checkpoint(&self.outbox, &self.cfg.checkpoint_key()).await
        {
            Ok(Some(b)) => Validators::decode(&b).unwrap_or_else(|e| {
                warn!(source = %name, error = %e, "REST checkpoint unreadable; starting unconditionally.");
                Validators::default()
            }),
            Ok(None) => Validators::default(),
            Err(e) => {
                warn!(source = %name, error = %e, "Cannot read the REST checkpoint; starting unconditionally.");
                Validators::default()
            }
        };
        info!(source = %name, url = %self.url, etag = ?validators.etag, "REST source starting.");
        let mut backoff = Backoff::new(self.cfg.backoff_min, self.cfg.backoff_max);
        loop {
            if *shutdown.borrow() {
                break;
            }
            let wait = match self.poll(&mut validators, &tx, &mut shutdown).await {
                Poll::Stored | Poll::NotModified => {
                    backoff.reset();
                    self.cfg.interval
                }
                Poll::Retry {
                    retry_after,
                    reason,
                } => {
                    let d = conditional::retry_delay(
                        backoff.next_delay(),
                        retry_after,
                        self.cfg.max_retry_after,
                    );
                    warn!(source = %name, %reason, retry_in = ?d, attempt = backoff.attempts(), "REST poll failed; backing off.");
                    d
                }
                Poll::Shutdown => break,
            };
            if sleep_or_shutdown(wait, &mut shutdown).await {
                break;
            }
        }
        info!(source = %name, "REST source stopped.");
        Ok(())
    }

    async fn poll(
        &self,
        validators: &mut Validators,
        tx: &mpsc::Sender<Envelope>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Poll {
        let name = &self.cfg.name;
        let mut req = self
            .client
            .get(self.url.clone())
            .header(ACCEPT, "application/json");
        for (k, v) in validators.request_headers() {
            req = req.header(k, v);
        }
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let sent = tokio::select! {
            r = req.send() => r,
            _ = shutdown.changed() => return Poll::Shutdown,
        };
        let mut resp = match sent {
            Ok(r) => r,
            Err(e) => {
                let outcome = if e.is_timeout() { "timeout" } else { "network" };
                self.metrics.rest_request(name, outcome);
                return Poll::Retry {
                    retry_after: None,
                    reason: format!("{outcome}: {e}"),
                };
            }
        };
        match conditional::classify(resp.status(), resp.headers(), SystemTime::now()) {
            Answer::NotModified => {
                self.metrics.rest_request(name, "not_modified");
                debug!(source = %name, "304: nothing new.");
                return Poll::NotModified;
            }
            Answer::Retry {
                retry_after,
                reason,
                outcome,
            } => {
                self.metrics.rest_request(name, outcome);
                return Poll::Retry {
                    retry_after,
                    reason,
                };
            }
            Answer::Body => {}
        }
        let fresh = Validators::from_headers(resp.headers());
        let received = Timestamp::now();
        let cap = usize::try_from(self.cfg.max_response_bytes.as_u64()).unwrap_or(usize::MAX);
        let body = match read_capped(&mut resp, cap, shutdown).await {
            Ok(Some(b)) => b,
            Ok(None) => return Poll::Shutdown,
            Err(BodyError::TooLarge(size)) => {
                self.metrics.rest_request(name, "too_large");
                let error = DecodeError::TooLarge { size, limit: cap };
                let reason = error.to_string();
                self.quarantine(received, error, Vec::new(), size, tx, shutdown)
                    .await;
                return Poll::Retry {
                    retry_after: None,
                    reason,
                };
            }
            Err(BodyError::Read(e)) => {
                let outcome = if e.is_timeout() { "timeout" } else { "network" };
                self.metrics.rest_request(name, outcome);
                return Poll::Retry {
                    retry_after: None,
                    reason: format!("reading the body: {e}"),
                };
            }
        };
        let parsed = serde_json::from_slice::<serde_json::Value>(&body)
            .map_err(|e| DecodeError::Syntax {
                format: "json",
                detail: e.to_string(),
            })
            .and_then(|doc| self.map.map(&doc, received));
        let mapped = match parsed {
            Ok(m) => m,
            Err(error) => {
                self.metrics.rest_request(name, "bad_json");
                let reason = error.to_string();
                let len = body.len();
                self.quarantine(received, error, body, len, tx, shutdown)
                    .await;
                // Remembered in memory only (not as the checkpoint): the same
                // bad content is then answered 304 instead of being
                // quarantined again on every attempt.
                *validators = fresh;
                return Poll::Retry {
                    retry_after: None,
                    reason,
                };
            }
        };
        self.metrics.messages_received.inc();
        self.metrics
            .readings_received
            .inc_by(mapped.readings.len() as u64);
        let mut envelopes: Vec<(Envelope, oneshot::Receiver<Commit>)> = mapped
            .rejects
            .into_iter()
            .map(|(error, payload)| self.reject(received, error, payload))
            .collect();
        let (env, rx) = Envelope::new(
            self.origin.clone(),
            received,
            Content::Readings(mapped.readings),
        );
        envelopes.push((
            env.with_checkpoint(self.cfg.checkpoint_key(), fresh.encode()),
            rx,
        ));
        match deliver(tx, envelopes, shutdown).await {
            Delivery::Durable => {
                self.metrics.rest_request(name, "ok");
                debug!(source = %name, items = mapped.items, etag = ?fresh.etag, "REST response stored.");
                *validators = fresh;
                Poll::Stored
            }
            Delivery::Shutdown => Poll::Shutdown,
            Delivery::Failed(reason) => Poll::Retry {
                retry_after: None,
                reason: format!("not stored: {reason}"),
            },
        }
    }

    fn reject(
        &self,
        received: Timestamp,
        error: DecodeError,
        payload: Vec<u8>,
    ) -> (Envelope, oneshot::Receiver<Commit>) {
        let payload_len = payload.len();
        Envelope::new(
            self.origin.clone(),
            received,
            Content::Rejected {
                error,
                payload,
                payload_len,
            },
        )
    }

    /// Quarantines a whole response (the ingest stage keeps its first bytes).
    async fn quarantine(
        &self,
        received: Timestamp,
        error: DecodeError,
        mut payload: Vec<u8>,
        payload_len: usize,
        tx: &mpsc::Sender<Envelope>,
        shutdown: &mut watch::Receiver<bool>,
    ) {
        // The ingest stage truncates too; do not queue megabytes for it.
        payload.truncate(64 * 1024);
        let (env, rx) = Envelope::new(
            self.origin.clone(),
            received,
            Content::Rejected {
                error,
                payload,
                payload_len,
            },
        );
        if let Delivery::Failed(reason) = deliver(tx, vec![(env, rx)], shutdown).await {
            warn!(source = %self.cfg.name, %reason, "Quarantine entry not stored.");
        }
    }
}

#[derive(Debug)]
enum BodyError {
    /// At least this many bytes: more than the cap.
    TooLarge(usize),
    Read(reqwest::Error),
}

/// Reads the body chunk by chunk, refusing it once it passes `cap` (checked
/// against `Content-Length` first). `Ok(None)` on shutdown.
async fn read_capped(
    resp: &mut reqwest::Response,
    cap: usize,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<Vec<u8>>, BodyError> {
    if let Some(len) = resp.content_length()
        && len > cap as u64
    {
        return Err(BodyError::TooLarge(
            usize::try_from(len).unwrap_or(usize::MAX),
        ));
    }
    let mut body = Vec::new();
    loop {
        let chunk = tokio::select! {
            c = resp.chunk() => c.map_err(BodyError::Read)?,
            _ = shutdown.changed() => return Ok(None),
        };
        let Some(chunk) = chunk else {
            return Ok(Some(body));
        };
        if body.len() + chunk.len() > cap {
            return Err(BodyError::TooLarge(body.len() + chunk.len()));
        }
        body.extend_from_slice(&chunk);
    }
}
