//! HTTP push source: `POST /v1/readings` (axum, HTTP/1.1).
//!
//! The answer follows the durable commit, like an MQTT PUBACK:
//! - **202** `{"accepted": n}` only after ingest reports the readings durable
//!   (in the outbox, flushed).
//! - **400** `{"error", "reason"}` for a payload that does not decode, sent only
//!   after the payload's quarantine entry is durable.
//! - **401** missing or wrong bearer token (when `http.token` is set).
//! - **413** body over `http.max_body_bytes`: refused on `Content-Length`
//!   before reading, or as soon as a streamed body passes the limit.
//! - **415** a content type other than `application/senml+json`,
//!   `application/senml+cbor`, `application/json` (plain form, or SenML JSON
//!   recognised by its labels) and `text/csv` (`protocol::csv`).
//! - **408** the body did not arrive within `http.request_timeout`.
//! - **503** with `Retry-After` when the readings are not known to be durable:
//!   no room in the ingest queue, the commit failed, or no commit result within
//!   `http.request_timeout`. Some of those may still be stored; a retry is safe,
//!   because readings are de-duplicated on their identity.
//!
//! Checks run cheapest first: token, content type, query, declared length,
//! then a bounded read. At most `http.max_concurrent_requests` requests read,
//! decode and wait at once, which bounds memory. `?device=NAME` is the default
//! device for payloads that name only channels.
//!
//! Shutdown: the listener stops accepting, idle keep-alive connections are
//! closed, and requests in flight run to their answer while ingest still
//! commits. The ingest sender is dropped only when the last one is done.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use protocol::{DecodeContext, DecodeError, DecodeLimits, PayloadFormat, Reading, Timestamp};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::{Instant, timeout_at};
use tracing::{debug, info, warn};

use crate::config::{HttpSourceConfig, LimitsConfig};
use crate::envelope::{Commit, Content, Envelope};
use crate::metrics::Metrics;

/// The one route.
pub const READINGS_PATH: &str = "/v1/readings";

/// Bodies larger than this are decoded on a blocking thread.
const INLINE_DECODE_BYTES: usize = 64 * 1024;

/// `Retry-After` seconds on a 503.
const RETRY_AFTER_SECS: &str = "1";

#[derive(Debug, thiserror::Error)]
pub enum HttpSourceError {
    #[error("cannot bind the HTTP source on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the HTTP source failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// Binds the listener (done before "Gateway running", so a taken port is a start error).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, HttpSourceError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| HttpSourceError::Bind { addr, source })
}

#[derive(Debug)]
pub struct HttpSource {
    token: Option<String>,
    /// The decoders' limits, with `max_bytes` set to the body limit.
    limits: DecodeLimits,
    request_timeout: Duration,
    max_concurrent: usize,
    metrics: Metrics,
    quarantine_payload_bytes: usize,
}

/// What every request handler shares.
#[derive(Debug)]
struct Shared {
    source: HttpSource,
    tx: mpsc::Sender<Envelope>,
    permits: Semaphore,
}

#[derive(Debug, Deserialize)]
struct ReadingsQuery {
    /// Default device for payloads that name only channels.
    device: Option<String>,
}

impl HttpSource {
    pub fn new(
        cfg: &HttpSourceConfig,
        limits: &LimitsConfig,
        metrics: Metrics,
        quarantine_payload_bytes: usize,
    ) -> Self {
        let mut decode_limits = limits.decode_limits();
        decode_limits.max_bytes = cfg.body_limit(limits);
        HttpSource {
            token: cfg.token.clone(),
            limits: decode_limits,
            request_timeout: cfg.request_timeout,
            max_concurrent: cfg.max_concurrent_requests.max(1),
            metrics,
            quarantine_payload_bytes,
        }
    }

    /// Serves `listener` until `shutdown` flips to true, then finishes the
    /// requests in flight. Dropping `tx` (on return) tells ingest this source is done.
    pub async fn run(
        self,
        listener: TcpListener,
        tx: mpsc::Sender<Envelope>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), HttpSourceError> {
        if let Ok(addr) = listener.local_addr() {
            if self.token.is_none() && !addr.ip().is_loopback() {
                warn!(%addr, "HTTP source listens beyond loopback without a token.");
            }
            info!(%addr, "HTTP source listening.");
        }
        let metrics = self.metrics.clone();
        let shared = Arc::new(Shared {
            permits: Semaphore::new(self.max_concurrent),
            source: self,
            tx,
        });
        let app = Router::new()
            .route(READINGS_PATH, post(post_readings))
            .fallback(not_found)
            .with_state(shared)
            .layer(axum::middleware::map_response_with_state(
                metrics,
                count_status,
            ));
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await
        .map_err(HttpSourceError::Serve)?;
        info!("HTTP source stopped.");
        Ok(())
    }
}

async fn count_status(State(metrics): State<Metrics>, response: Response) -> Response {
    metrics.http_request(response.status().as_u16());
    response
}

async fn not_found() -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no such resource; POST readings to {READINGS_PATH}"),
    )
}

/// A JSON error body: `{"error": "...", "reason": "..."}`.
fn error_response(status: StatusCode, reason: &str, error: String) -> Response {
    let body = serde_json::json!({ "error": error, "reason": reason });
    let mut r = (status, axum::Json(body)).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(RETRY_AFTER_SECS),
        );
    }
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

async fn post_readings(
    State(s): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    query: Result<Query<ReadingsQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let src = &s.source;
    let deadline = Instant::now() + src.request_timeout;
    if let Some(token) = &src.token
        && !authorized(&headers, token)
    {
        return error_response(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token".into(),
        );
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let Some(format) = format_for(content_type) else {
        return error_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "content type {:?} is not supported; use application/senml+json, \
                 application/senml+cbor, application/json or text/csv",
                content_type.unwrap_or("")
            ),
        );
    };
    let device = match query {
        Ok(Query(q)) => q.device.filter(|d| !d.is_empty()),
        Err(e) => return error_response(StatusCode::BAD_REQUEST, "bad_query", e.body_text()),
    };
    let limit = src.limits.max_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large(limit);
    }
    let Ok(_permit) = timeout_at(deadline, s.permits.acquire()).await else {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "too many requests in progress".into(),
        );
    };
    let bytes = match timeout_at(deadline, read_bounded(body, limit)).await {
        Err(_) => {
            return error_response(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                "the body did not arrive in time".into(),
            );
        }
        Ok(Err(ReadError::TooLarge)) => return too_large(limit),
        Ok(Err(ReadError::Body(e))) => {
            return error_response(StatusCode::BAD_REQUEST, "body", e);
        }
        Ok(Ok(b)) => b,
    };

    src.metrics.messages_received.inc();
    let received = Timestamp::now();
    let origin = match &device {
        Some(d) => format!("http:{}?device={d}", peer.ip()),
        None => format!("http:{}", peer.ip()),
    };
    let decoded = decode(format, bytes.clone(), device, received, &src.limits).await;
    let (content, rejected, accepted) = match decoded {
        Ok(readings) => {
            let n = readings.len();
            src.metrics.readings_received.inc_by(n as u64);
            (Content::Readings(readings), None, n)
        }
        Err(error) => {
            debug!(%origin, %error, "Payload rejected.");
            let kept = bytes.len().min(src.quarantine_payload_bytes);
            let content = Content::Rejected {
                error: error.clone(),
                payload: bytes[..kept].to_vec(),
                payload_len: bytes.len(),
            };
            (content, Some(error), 0)
        }
    };
    drop(bytes);
    let (envelope, done) = Envelope::new(origin, received, content);
    match timeout_at(deadline, s.tx.reserve()).await {
        Ok(Ok(permit)) => permit.send(envelope),
        Ok(Err(_)) => {
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the gateway is shutting down".into(),
            );
        }
        Err(_) => {
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "queue_full",
                "the ingest queue stayed full; nothing was stored".into(),
            );
        }
    }
    match timeout_at(deadline, done).await {
        Ok(Ok(Commit::Durable)) => match rejected {
            None => {
                src.metrics.messages_acked.inc();
                (
                    StatusCode::ACCEPTED,
                    axum::Json(serde_json::json!({ "accepted": accepted })),
                )
                    .into_response()
            }
            Some(error) => error_response(
                StatusCode::BAD_REQUEST,
                error.reason_code(),
                error.to_string(),
            ),
        },
        Ok(Ok(Commit::Failed(why))) => {
            warn!(reason = %why, "Commit failed; answering 503.");
            error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "commit_failed",
                format!("not stored: {why}"),
            )
        }
        Ok(Err(_)) => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the gateway shut down before the commit".into(),
        ),
        Err(_) => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "commit_timeout",
            "no durable commit within the request timeout; it may still be stored, \
             and a retry is de-duplicated"
                .into(),
        ),
    }
}

fn too_large(limit: usize) -> Response {
    error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("the body is larger than {limit} bytes"),
    )
}

/// Decodes on a blocking thread when the body is large.
async fn decode(
    format: PayloadFormat,
    bytes: Bytes,
    device: Option<String>,
    received: Timestamp,
    limits: &DecodeLimits,
) -> Result<Vec<Reading>, DecodeError> {
    let len = bytes.len();
    let run = move |limits: &DecodeLimits| {
        // SenML JSON is often sent as plain `application/json`; its labels tell.
        let format = match format {
            PayloadFormat::Json
                if PayloadFormat::detect(&bytes) == Ok(PayloadFormat::SenmlJson) =>
            {
                PayloadFormat::SenmlJson
            }
            f => f,
        };
        let ctx = DecodeContext::new(received).with_device(device.as_deref());
        format.decode(&bytes, &ctx, limits)
    };
    if len <= INLINE_DECODE_BYTES {
        return run(limits);
    }
    let limits = limits.clone();
    tokio::task::spawn_blocking(move || run(&limits))
        .await
        .unwrap_or_else(|e| Err(DecodeError::Schema(format!("decoder task failed: {e}"))))
}

/// The payload format for a `Content-Type` (parameters such as `charset` are ignored).
fn format_for(content_type: Option<&str>) -> Option<PayloadFormat> {
    let media = content_type?.split(';').next()?.trim().to_ascii_lowercase();
    match media.as_str() {
        "application/senml+json" => Some(PayloadFormat::SenmlJson),
        "application/senml+cbor" => Some(PayloadFormat::SenmlCbor),
        "application/json" => Some(PayloadFormat::Json),
        "text/csv" => Some(PayloadFormat::Csv),
        _ => None,
    }
}

/// `Authorization: Bearer <token>`, compared in constant time.
fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, given)) = value.trim().split_once(' ') else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer")
        && constant_time_eq(given.trim().as_bytes(), token.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

enum ReadError {
    TooLarge,
    Body(String),
}

/// Reads the body, refusing it as soon as it passes `limit` bytes.
async fn read_bounded(mut body: Body, limit: usize) -> Result<Bytes, ReadError> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        match frame {
            None => return Ok(Bytes::from(buf)),
            Some(Err(e)) => return Err(ReadError::Body(format!("cannot read the body: {e}"))),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if buf.len().saturating_add(data.len()) > limit {
                        return Err(ReadError::TooLarge);
                    }
                    buf.extend_from_slice(&data);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{IngestConfig, StorageConfig};
    use crate::ingest::Ingest;
    use crate::outbox::Outbox;
    use bytesize::ByteSize;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const SENML: &str =
        r#"[{"bn":"pump-1/","bt":1767225600,"n":"temperature","v":41.2},{"n":"current","v":3.1}]"#;

    /// An HTTP source on a free port, with the ingest stage either real (an
    /// outbox in a temp dir) or replaced by the test through `ingest_rx`.
    struct Harness {
        url: String,
        outbox: Arc<Outbox>,
        metrics: Metrics,
        stop: watch::Sender<bool>,
        source: tokio::task::JoinHandle<Result<(), HttpSourceError>>,
        ingest: Option<tokio::task::JoinHandle<()>>,
        _dir: tempfile::TempDir,
    }

    async fn start(cfg: HttpSourceConfig) -> Harness {
        start_with(cfg, None).await
    }

    /// With `queue`, the source sends to that channel and no ingest task runs.
    async fn start_with(cfg: HttpSourceConfig, queue: Option<mpsc::Sender<Envelope>>) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let storage = StorageConfig {
            cache_capacity: ByteSize::mib(1),
            ..Default::default()
        };
        let outbox = Arc::new(Outbox::open(dir.path(), &storage).unwrap());
        let metrics = Metrics::new(&mut prometheus_client::registry::Registry::default());
        let (stop, shutdown) = watch::channel(false);
        let (tx, ingest) = match queue {
            Some(tx) => (tx, None),
            None => {
                let (tx, rx) = mpsc::channel(16);
                let ingest =
                    Ingest::new(outbox.clone(), metrics.clone(), IngestConfig::default(), 64);
                (tx, Some(tokio::spawn(ingest.run(rx, shutdown.clone()))))
            }
        };
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
        let url = format!("http://{}{READINGS_PATH}", listener.local_addr().unwrap());
        let source = HttpSource::new(&cfg, &LimitsConfig::default(), metrics.clone(), 64);
        let source = tokio::spawn(source.run(listener, tx, shutdown));
        Harness {
            url,
            outbox,
            metrics,
            stop,
            source,
            ingest,
            _dir: dir,
        }
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    async fn post(
        url: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, serde_json::Value) {
        let r = client()
            .post(url)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let retry_after = r.headers().get("retry-after").is_some();
        let bytes = r.bytes().await.unwrap_or_default();
        let mut json: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        if retry_after {
            json["retry_after"] = true.into();
        }
        (status, json)
    }

    fn requests(m: &Metrics, status: u16) -> u64 {
        m.http_requests
            .get_or_create(&crate::metrics::StatusLabel { status })
            .get()
    }

    #[tokio::test]
    async fn a_valid_senml_batch_gets_202_only_once_it_is_durable_in_the_outbox() {
        let h = start(HttpSourceConfig::default()).await;
        let (status, body) = post(&h.url, "application/senml+json", SENML).await;
        assert_eq!(
            (status, &body),
            (202, &serde_json::json!({ "accepted": 2 }))
        );
        // The 202 came after the flush: the readings are durable and readable.
        assert_eq!(h.outbox.depth(), 2);
        assert_eq!(h.outbox.durable_next(), h.outbox.next_seq());
        assert_eq!(h.metrics.messages_acked.get(), 1);
        assert_eq!(h.metrics.readings_received.get(), 2);
        assert_eq!(requests(&h.metrics, 202), 1);
    }

    #[tokio::test]
    async fn every_supported_content_type_is_decoded_with_its_own_format() {
        let h = start(HttpSourceConfig::default()).await;
        let readings = vec![
            Reading::new("pump-2", "flow", Timestamp(1_767_225_600_000_000_000), 0.5).unwrap(),
        ];
        let cbor = protocol::senml::encode_cbor(&readings);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("application/senml+cbor", cbor),
            (
                "application/json",
                br#"{"device":"pump-3","ts":1767225600,"flow":1.5}"#.to_vec(),
            ),
            ("application/json; charset=utf-8", SENML.as_bytes().to_vec()),
            (
                "text/csv",
                b"device,channel,value,timestamp\n,flow,2.5,1767225600\n".to_vec(),
            ),
        ];
        let url = format!("{}?device=pump-4", h.url);
        for (ct, body) in cases {
            let (status, json) = post(&url, ct, body).await;
            assert_eq!(status, 202, "{ct}: {json}");
        }
        // 1 + 1 + 2 + 1 readings; the CSV row took its device from the query.
        assert_eq!(h.outbox.depth(), 5);
        assert_eq!(h.metrics.readings_received.get(), 5);
    }

    #[tokio::test]
    async fn an_unknown_or_missing_content_type_gets_415_with_a_json_error() {
        let h = start(HttpSourceConfig::default()).await;
        for ct in ["application/xml", "text/plain", ""] {
            let (status, json) = post(&h.url, ct, SENML).await;
            assert_eq!(status, 415, "{ct}");
            assert_eq!(json["reason"], "unsupported_media_type");
            assert!(json["error"].as_str().unwrap().contains("text/csv"));
        }
        assert_eq!(h.outbox.depth(), 0);
        assert_eq!(requests(&h.metrics, 415), 3);
    }

    #[tokio::test]
    async fn a_body_over_the_limit_gets_413_by_its_declared_length_and_while_streaming() {
        let cfg = HttpSourceConfig {
            max_body_bytes: Some(ByteSize::b(1024)),
            ..Default::default()
        };
        let h = start(cfg).await;
        let big = format!("d,c,1,{}\n", "1".repeat(2000));
        let (status, json) = post(&h.url, "text/csv", big.clone()).await;
        assert_eq!((status, json["reason"].as_str()), (413, Some("too_large")));

        // Chunked, so no Content-Length: refused once the bytes pass the limit.
        let addr = h
            .url
            .trim_start_matches("http://")
            .trim_end_matches(READINGS_PATH);
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let chunk = "x".repeat(600);
        let req = format!(
            "POST {READINGS_PATH} HTTP/1.1\r\nhost: x\r\ncontent-type: text/csv\r\n\
             transfer-encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
            chunk.len(),
            chunk.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut answer = vec![0u8; 1024];
        let n = s.read(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert_eq!(h.outbox.depth(), 0);
        assert_eq!(
            h.metrics.messages_received.get(),
            0,
            "a refused body is not a message"
        );
    }

    #[tokio::test]
    async fn a_missing_or_wrong_token_gets_401_and_the_right_one_passes() {
        let cfg = HttpSourceConfig {
            token: Some("s3cret-token".into()),
            ..Default::default()
        };
        let h = start(cfg).await;
        let send = |auth: Option<&'static str>| {
            let mut r = client()
                .post(&h.url)
                .header("content-type", "application/senml+json")
                .body(SENML);
            if let Some(a) = auth {
                r = r.header("authorization", a);
            }
            r.send()
        };
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("Basic s3cret-token"),
            Some("Bearer s3cret-token-"),
        ] {
            let r = send(auth).await.unwrap();
            assert_eq!(r.status().as_u16(), 401, "{auth:?}");
            assert_eq!(r.headers()["www-authenticate"], "Bearer");
        }
        assert_eq!(
            send(Some("bearer s3cret-token"))
                .await
                .unwrap()
                .status()
                .as_u16(),
            202
        );
        assert_eq!(h.outbox.depth(), 2);
    }

    #[tokio::test]
    async fn a_malformed_payload_gets_400_with_its_reason_after_its_quarantine_entry_is_durable() {
        let h = start(HttpSourceConfig::default()).await;
        let url = format!("{}?device=pump-9", h.url);
        for (ct, body, reason) in [
            ("application/senml+json", "[{\"n\":\"t\",\"v\":1", "syntax"),
            ("text/csv", "d,c,1\nd,c\n", "syntax"),
            ("text/csv", "d,c,NaN,1\n", "non_finite_value"),
            ("application/json", "", "empty"),
        ] {
            let (status, json) = post(&url, ct, body).await;
            assert_eq!(status, 400, "{body}: {json}");
            assert_eq!(json["reason"], reason, "{json}");
            assert!(json["error"].is_string());
        }
        let entries = h.outbox.quarantine_list(10).unwrap();
        assert_eq!(entries.len(), 4);
        let (_, newest) = &entries[0];
        assert_eq!(newest.reason, "empty");
        assert_eq!(newest.origin, "http:127.0.0.1?device=pump-9");
        assert_eq!(entries[3].1.payload, b"[{\"n\":\"t\",\"v\":1");
        assert_eq!(h.outbox.depth(), 0);
        assert_eq!(
            h.metrics.messages_acked.get(),
            0,
            "only a 202 counts as acked"
        );
        assert_eq!(requests(&h.metrics, 400), 4);
    }

    #[tokio::test]
    async fn a_full_ingest_queue_gets_503_with_retry_after_once_the_timeout_passes() {
        let (tx, mut rx) = mpsc::channel(1);
        let (filler, _) = Envelope::new("test".into(), Timestamp(0), Content::Readings(vec![]));
        tx.send(filler).await.unwrap();
        let cfg = HttpSourceConfig {
            request_timeout: Duration::from_millis(300),
            ..Default::default()
        };
        let h = start_with(cfg, Some(tx)).await;
        let started = std::time::Instant::now();
        let (status, json) = post(&h.url, "application/senml+json", SENML).await;
        assert_eq!((status, json["reason"].as_str()), (503, Some("queue_full")));
        assert_eq!(json["retry_after"], true);
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(
            rx.recv().await.unwrap().origin,
            "test",
            "only the filler was queued"
        );
    }

    #[tokio::test]
    async fn a_failed_commit_gets_503_and_is_not_counted_as_acked() {
        let (tx, mut rx) = mpsc::channel::<Envelope>(4);
        tokio::spawn(async move {
            while let Some(mut e) = rx.recv().await {
                e.finish(Commit::Failed("disk on fire".into()));
            }
        });
        let h = start_with(HttpSourceConfig::default(), Some(tx)).await;
        let (status, json) = post(&h.url, "application/senml+json", SENML).await;
        assert_eq!(
            (status, json["reason"].as_str()),
            (503, Some("commit_failed"))
        );
        assert_eq!(json["retry_after"], true);
        assert_eq!(h.metrics.messages_acked.get(), 0);
    }

    #[tokio::test]
    async fn shutdown_lets_a_request_in_flight_finish_and_then_stops_listening() {
        let (tx, mut rx) = mpsc::channel::<Envelope>(4);
        let (got_tx, got_rx) = tokio::sync::oneshot::channel::<Envelope>();
        tokio::spawn(async move {
            if let Some(e) = rx.recv().await {
                let _ = got_tx.send(e);
            }
        });
        let mut h = start_with(HttpSourceConfig::default(), Some(tx)).await;
        let url = h.url.clone();
        let request =
            tokio::spawn(async move { post(&url, "application/senml+json", SENML).await });
        let mut envelope = got_rx.await.unwrap();
        h.stop.send(true).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !h.source.is_finished(),
            "the source waits for the request in flight"
        );
        envelope.finish(Commit::Durable);
        assert_eq!(request.await.unwrap().0, 202);
        tokio::time::timeout(Duration::from_secs(5), &mut h.source)
            .await
            .expect("the source stops once idle")
            .unwrap()
            .unwrap();
        assert!(
            client().post(&h.url).body(SENML).send().await.is_err(),
            "no longer listening"
        );
        assert!(h.ingest.is_none());
    }

    #[test]
    fn content_types_map_to_formats_ignoring_case_and_parameters() {
        assert_eq!(
            format_for(Some("Application/SenML+JSON")),
            Some(PayloadFormat::SenmlJson)
        );
        assert_eq!(
            format_for(Some("application/senml+cbor")),
            Some(PayloadFormat::SenmlCbor)
        );
        assert_eq!(
            format_for(Some("application/json;charset=utf-8")),
            Some(PayloadFormat::Json)
        );
        assert_eq!(
            format_for(Some("text/csv; header=present")),
            Some(PayloadFormat::Csv)
        );
        assert_eq!(format_for(Some("application/cbor")), None);
        assert_eq!(format_for(None), None);
    }

    #[test]
    fn tokens_are_compared_whole_and_only_as_bearer() {
        let mut h = HeaderMap::new();
        assert!(!authorized(&h, "abc"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert!(authorized(&h, "abc"));
        assert!(!authorized(&h, "abcd"));
        assert!(!authorized(&h, "ab"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Token abc"));
        assert!(!authorized(&h, "abc"));
    }
}
