//! The HTTP API (axum).
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/ingest` | an `UplinkBatch` (CBOR + zstd), bearer token → `{"stored": n, "duplicates": m}` |
//! | `GET /v1/readings` | `?device=&channel=&from=&to=&limit=` → `{"readings": [...], "count": n}` |
//! | `GET /v1/alerts` | `?device=&from=&to=&limit=` → `{"alerts": [...], "count": n}` (edge analytics alerts, by start; each with its `id` and operator `label` or `null`) |
//! | `POST /v1/alerts/{id}/label` | operator token; `{"true_alarm": bool, "by": "..."}` (`by` defaults to the operator's name) → 200 the alert with its label; 404 unknown alert |
//! | `POST /v1/training/jobs` | operator token; `{"scope", "devices", "from", "to", "family", "window", "hop", "stats", "period"}` (all optional: the fleet, all data, `auto`, `train`'s defaults) → 202 the job, `Location` its URL; 503 + `Retry-After` when `training.queue_capacity` jobs already wait |
//! | `GET /v1/training/jobs` | `{"jobs": [...], "count", "queued", "queue_capacity"}`, newest first (the last `training.keep_finished` finished jobs) |
//! | `GET /v1/training/jobs/{id}` | one job: `state` (queued, running, succeeded, failed, cancelled), `stage`, `stages` with times, `progress` (folds done/total), `cancel_requested`, `labels`, `error`, `result` (model version, family, held-out metrics) |
//! | `POST /v1/training/jobs/{id}/cancel` | operator token; no body → 200 the job, `cancelled`, when it was queued (it never runs); 202 the job, still `running` with `cancel_requested`, when it was running (it stops at the next fold boundary and ends `cancelled`, registering nothing); 409 when it has finished or is already registering; 404 unknown job |
//! | `GET /v1/models` | `?scope=&limit=` → `{"models": [...], "count": n}`, the registry's versions, newest first |
//! | `GET /v1/quarantine` | `?gateway=&reason=&limit=` → `{"entries": [...], "count": n}`, newest first (gateways with `storage.uplink_quarantine`) |
//! | `GET /v1/gateways` | per-gateway counters → `{"gateways": [...]}` |
//! | `GET /v1/stats` | totals → `{"gateways", "batches", "readings_stored", "duplicates"}` |
//! | `GET /metrics` | Prometheus (OpenMetrics text) |
//! | `GET /health` | 200 `{"status": "ok"}` when storage answers, else 503 |
//!
//! Every error is JSON `{"error": "..."}`. Ingest status codes: 401 missing or
//! unknown token (checked first, before the body is read), 415 wrong
//! `Content-Type`/`Content-Encoding`, 413 body, decompressed size or record
//! count over the limit (the gateway splits the batch and retries), 400 a body
//! that does not decode, 403 a batch for another gateway than the token's,
//! 503 storage failure (retry later). 200 is sent only after the batch is
//! committed to storage.
//!
//! The mutating routes other than ingest (training jobs and their
//! cancelling, alert labels) need
//! an operator bearer token from `api.operator_tokens_file`, checked before
//! the body is read: 403 when the sink has no operator tokens configured,
//! 401 for a missing or unknown token. Their JSON bodies are at most
//! [`MAX_JSON_BODY`] bytes; unknown fields are refused (400).

use std::sync::Arc;
use std::time::{Instant, UNIX_EPOCH};

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use protocol::UplinkBatch;
use protocol::batch::{BatchError, BatchLimits};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::auth::{self, AuthError, OperatorTokens};
use crate::metrics::{BatchOutcome, Metrics};
use crate::storage::{
    AlertId, AlertLabel, AlertQuery, GatewayStats, QuarantineQuery, ReadingQuery, Storage,
    StorageError, StoredAlert, StoredQuarantine, StoredReading,
};
use crate::train::jobs::{CancelError, JobSpec, JobState, Jobs, SpecInput, SubmitError, Trigger};
use crate::train::registry::Registry;

/// Default and largest `limit` of `GET /v1/readings`.
pub const DEFAULT_QUERY_LIMIT: u32 = 1000;
pub const MAX_QUERY_LIMIT: u32 = 100_000;

/// Largest JSON body of the operator routes.
pub const MAX_JSON_BODY: usize = 64 * 1024;
/// Default and largest `limit` of `GET /v1/models`.
pub const DEFAULT_MODELS_LIMIT: u32 = 100;
pub const MAX_MODELS_LIMIT: u32 = 10_000;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    storage: Arc<dyn Storage>,
    metrics: Arc<Metrics>,
    limits: Arc<BatchLimits>,
    jobs: Arc<Jobs>,
    /// `None`: no operator tokens configured; operator routes answer 403.
    operators: Option<Arc<OperatorTokens>>,
}

impl AppState {
    pub fn new(
        storage: Arc<dyn Storage>,
        metrics: Arc<Metrics>,
        limits: BatchLimits,
        jobs: Arc<Jobs>,
        operators: Option<OperatorTokens>,
    ) -> Self {
        AppState {
            storage,
            metrics,
            limits: Arc::new(limits),
            jobs,
            operators: operators.map(Arc::new),
        }
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// The sink's router.
pub fn router(state: AppState) -> Router {
    let metrics = state.metrics.clone();
    Router::new()
        .route("/v1/ingest", post(ingest))
        .route("/v1/readings", get(readings))
        .route("/v1/alerts", get(alerts))
        .route("/v1/alerts/{id}/label", post(label_alert))
        .route("/v1/training/jobs", post(submit_job).get(list_jobs))
        .route("/v1/training/jobs/{id}", get(get_job))
        .route("/v1/training/jobs/{id}/cancel", post(cancel_job))
        .route("/v1/models", get(models))
        .route("/v1/quarantine", get(quarantine))
        .route("/v1/gateways", get(gateways))
        .route("/v1/stats", get(stats))
        .route("/metrics", get(metrics_text))
        .route("/health", get(health))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .with_state(state)
        .layer(middleware::from_fn_with_state(metrics, count_responses))
}

/// An error response: a status and `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(ErrorBody {
                error: &self.message,
            }),
        )
            .into_response();
        match self.status {
            StatusCode::UNAUTHORIZED => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        warn!(error = %e, "Storage failed.");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("storage unavailable: {e}"),
        )
    }
}

/// Runs a storage call on the blocking pool.
async fn blocking<T, F>(f: F) -> Result<T, StorageError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StorageError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StorageError::Task(e.to_string()))?
}

/// The ingest response body.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct IngestResponse {
    pub stored: u64,
    pub duplicates: u64,
}

async fn ingest(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    match ingest_inner(&state, &headers, body).await {
        Ok((gateway, outcome)) => {
            let seconds = started.elapsed().as_secs_f64();
            state.metrics.batch(BatchOutcome::Stored);
            state.metrics.stored(
                outcome.stored,
                outcome.duplicates,
                outcome.seq_conflicts,
                seconds,
            );
            if outcome.seq_conflicts > 0 {
                warn!(
                    gateway = %gateway,
                    conflicts = outcome.seq_conflicts,
                    "The gateway reused sequence numbers for new readings (stored anyway)."
                );
            }
            debug!(gateway = %gateway, stored = outcome.stored, duplicates = outcome.duplicates, "Batch stored.");
            Json(IngestResponse {
                stored: outcome.stored,
                duplicates: outcome.duplicates,
            })
            .into_response()
        }
        Err((outcome, error)) => {
            state.metrics.batch(outcome);
            error.into_response()
        }
    }
}

type IngestError = (BatchOutcome, ApiError);

async fn ingest_inner(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(String, crate::storage::IngestOutcome), IngestError> {
    // 1. Who is it? Before anything else, so strangers learn nothing and send nothing further.
    let unauthorized = |e: AuthError| {
        (
            BatchOutcome::Unauthorized,
            ApiError::new(StatusCode::UNAUTHORIZED, e.to_string()),
        )
    };
    let token = auth::bearer_token(
        headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes),
    )
    .map_err(unauthorized)?;
    let hash = auth::hash_token(token);
    let storage = state.storage.clone();
    let gateway = blocking(move || storage.gateway_for_token(&hash))
        .await
        .map_err(|e| (BatchOutcome::StorageError, ApiError::from(e)))?
        .ok_or_else(|| {
            debug!("Ingest with an unknown token.");
            unauthorized(AuthError::Unknown)
        })?;

    // 2. Is it a batch?
    check_media_type(headers).map_err(|m| {
        warn!(gateway = %gateway, error = %m, "Batch rejected.");
        (
            BatchOutcome::UnsupportedMediaType,
            ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, m),
        )
    })?;

    // 3. Is it small enough? Refuse on the declared length before reading a byte,
    //    and stop reading as soon as the limit is passed.
    let limit = state.limits.max_compressed_bytes;
    let too_large = |size: String| {
        warn!(gateway = %gateway, size = %size, limit, "Batch rejected: body too large.");
        (
            BatchOutcome::TooLarge,
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body is {size} bytes, limit is {limit} bytes"),
            ),
        )
    };
    if let Some(len) = content_length(headers)
        && len > limit as u64
    {
        return Err(too_large(len.to_string()));
    }
    let bytes = match read_body_limited(body, limit).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => return Err(too_large(format!("more than {limit}"))),
        Err(BodyError::Read(e)) => {
            warn!(gateway = %gateway, error = %e, "Batch rejected: body could not be read.");
            return Err((
                BatchOutcome::BadRequest,
                ApiError::new(StatusCode::BAD_REQUEST, format!("reading body: {e}")),
            ));
        }
    };

    // 4. Decode (CPU-bound: decompression) off the async threads.
    let limits = state.limits.clone();
    let decoded = tokio::task::spawn_blocking(move || UplinkBatch::decode(&bytes, &limits))
        .await
        .map_err(|e| {
            (
                BatchOutcome::StorageError,
                ApiError::from(StorageError::Task(e.to_string())),
            )
        })?;
    let batch = decoded.map_err(|e| {
        warn!(gateway = %gateway, error = %e, "Batch rejected.");
        let (outcome, status) = match e {
            // Splitting the batch fixes these, so they are 413 like an oversized body.
            BatchError::TooLarge { .. }
            | BatchError::DecompressedTooLarge { .. }
            | BatchError::TooManyRecords { .. } => {
                (BatchOutcome::TooLarge, StatusCode::PAYLOAD_TOO_LARGE)
            }
            _ => (BatchOutcome::BadRequest, StatusCode::BAD_REQUEST),
        };
        (
            outcome,
            ApiError::new(status, format!("invalid batch: {e}")),
        )
    })?;

    // 5. Is it theirs to send?
    if batch.gateway_id != gateway {
        warn!(gateway = %gateway, batch_gateway = %batch.gateway_id, "Batch rejected: gateway mismatch.");
        return Err((
            BatchOutcome::Forbidden,
            ApiError::new(
                StatusCode::FORBIDDEN,
                format!("token is not valid for gateway {:?}", batch.gateway_id),
            ),
        ));
    }
    if let Some(key) = headers.get("idempotency-key") {
        let expected = batch.idempotency_key();
        if key.as_bytes() != expected.as_bytes() {
            // Dedup does not depend on the header (it is by reading identity and
            // (gateway, outbox_epoch, seq)), so a mismatch is worth a warning, not a refusal.
            warn!(gateway = %gateway, key = ?key, expected = %expected, "Idempotency-Key does not match the batch.");
        }
    }

    // 6. Store, durably, before answering.
    let storage = state.storage.clone();
    let gw = gateway.clone();
    let outcome = blocking(move || storage.ingest(&gw, &batch))
        .await
        .map_err(|e| {
            warn!(gateway = %gateway, error = %e, "Batch not stored.");
            (
                BatchOutcome::StorageError,
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("storage unavailable: {e}"),
                ),
            )
        })?;
    Ok((gateway, outcome))
}

fn check_media_type(headers: &HeaderMap) -> Result<(), String> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case(protocol::batch::CONTENT_TYPE) {
        return Err(format!(
            "Content-Type must be {}, got {content_type:?}",
            protocol::batch::CONTENT_TYPE
        ));
    }
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !encoding
        .trim()
        .eq_ignore_ascii_case(protocol::batch::CONTENT_ENCODING)
    {
        return Err(format!(
            "Content-Encoding must be {}, got {encoding:?}",
            protocol::batch::CONTENT_ENCODING
        ));
    }
    Ok(())
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

enum BodyError {
    TooLarge,
    Read(axum::Error),
}

/// Collects the body, giving up as soon as it passes `limit` bytes.
async fn read_body_limited(body: Body, limit: usize) -> Result<Vec<u8>, BodyError> {
    let mut stream = body.into_data_stream();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(BodyError::Read)?;
        if out.len().saturating_add(chunk.len()) > limit {
            return Err(BodyError::TooLarge);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Query string of `GET /v1/readings`.
#[derive(Debug, Default, Deserialize)]
pub struct ReadingsParams {
    pub device: Option<String>,
    pub channel: Option<String>,
    /// Inclusive lower bound: RFC 3339 (`2025-01-01T00:00:00Z`) or integer nanoseconds.
    pub from: Option<String>,
    /// Exclusive upper bound, same forms as `from`.
    pub to: Option<String>,
    pub limit: Option<String>,
}

/// Parses a time bound: integer nanoseconds since the epoch, or RFC 3339 in UTC.
pub fn parse_time(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(ns) = s.parse::<i64>() {
        return Ok(ns);
    }
    let t = humantime::parse_rfc3339_weak(s)
        .map_err(|e| format!("{s:?} is neither integer nanoseconds nor RFC 3339: {e}"))?;
    let d = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| format!("{s:?} is before 1970"))?;
    i64::try_from(d.as_nanos()).map_err(|_| format!("{s:?} is out of range"))
}

fn rfc3339(ns: i64) -> String {
    protocol::Timestamp(ns).to_string()
}

#[derive(Serialize)]
struct ReadingJson<'a> {
    #[serde(flatten)]
    reading: &'a StoredReading,
    ts: String,
}

#[derive(Serialize)]
struct ReadingsResponse<'a> {
    readings: Vec<ReadingJson<'a>>,
    count: usize,
}

/// `limit`, `from` and `to` of a query, checked (400 naming the parameter).
fn query_bounds(
    limit: Option<&str>,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<(u32, Option<i64>, Option<i64>), ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    let limit = match limit {
        None => DEFAULT_QUERY_LIMIT,
        Some(s) => match s.trim().parse::<u32>() {
            Ok(n) if (1..=MAX_QUERY_LIMIT).contains(&n) => n,
            _ => {
                return Err(bad(format!(
                    "limit must be an integer from 1 to {MAX_QUERY_LIMIT}, got {s:?}"
                )));
            }
        },
    };
    let from_ns = from
        .map(parse_time)
        .transpose()
        .map_err(|e| bad(format!("from: {e}")))?;
    let to_ns = to
        .map(parse_time)
        .transpose()
        .map_err(|e| bad(format!("to: {e}")))?;
    Ok((limit, from_ns, to_ns))
}

/// Query parameters of `GET /v1/alerts`.
#[derive(Debug, Deserialize)]
pub struct AlertsParams {
    pub device: Option<String>,
    /// Inclusive lower bound on the alert's start: RFC 3339 or integer nanoseconds.
    pub from: Option<String>,
    /// Exclusive upper bound, same forms as `from`.
    pub to: Option<String>,
    pub limit: Option<String>,
}

#[derive(Serialize)]
struct AlertJson<'a> {
    #[serde(flatten)]
    alert: &'a StoredAlert,
    start: String,
    end: String,
}

#[derive(Serialize)]
struct AlertsResponse<'a> {
    alerts: Vec<AlertJson<'a>>,
    count: usize,
}

async fn alerts(
    State(state): State<AppState>,
    params: Result<Query<AlertsParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) =
        params.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let (limit, from_ns, to_ns) = query_bounds(
        params.limit.as_deref(),
        params.from.as_deref(),
        params.to.as_deref(),
    )?;
    let query = AlertQuery {
        device: params.device,
        from_ns,
        to_ns,
        limit,
    };
    let storage = state.storage.clone();
    let rows = blocking(move || storage.query_alerts(&query)).await?;
    let alerts: Vec<AlertJson<'_>> = rows
        .iter()
        .map(|a| AlertJson {
            alert: a,
            start: rfc3339(a.start_ns),
            end: rfc3339(a.end_ns),
        })
        .collect();
    let count = alerts.len();
    Ok(Json(AlertsResponse { alerts, count }).into_response())
}

/// Query parameters of `GET /v1/quarantine`.
#[derive(Debug, Deserialize)]
pub struct QuarantineParams {
    pub gateway: Option<String>,
    pub reason: Option<String>,
    pub limit: Option<String>,
}

#[derive(Serialize)]
struct QuarantineJson<'a> {
    #[serde(flatten)]
    entry: &'a StoredQuarantine,
    received: String,
}

#[derive(Serialize)]
struct QuarantineResponse<'a> {
    entries: Vec<QuarantineJson<'a>>,
    count: usize,
}

async fn quarantine(
    State(state): State<AppState>,
    params: Result<Query<QuarantineParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) =
        params.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let (limit, _, _) = query_bounds(params.limit.as_deref(), None, None)?;
    let query = QuarantineQuery {
        gateway: params.gateway,
        reason: params.reason,
        limit,
    };
    let storage = state.storage.clone();
    let rows = blocking(move || storage.query_quarantine(&query)).await?;
    let entries: Vec<QuarantineJson<'_>> = rows
        .iter()
        .map(|q| QuarantineJson {
            entry: q,
            received: rfc3339(q.received_ns),
        })
        .collect();
    let count = entries.len();
    Ok(Json(QuarantineResponse { entries, count }).into_response())
}

async fn readings(
    State(state): State<AppState>,
    params: Result<Query<ReadingsParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) =
        params.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let (limit, from_ns, to_ns) = query_bounds(
        params.limit.as_deref(),
        params.from.as_deref(),
        params.to.as_deref(),
    )?;
    let query = ReadingQuery {
        device: params.device,
        channel: params.channel,
        from_ns,
        to_ns,
        limit,
    };
    let storage = state.storage.clone();
    let rows = blocking(move || storage.query_readings(&query)).await?;
    let readings: Vec<ReadingJson<'_>> = rows
        .iter()
        .map(|r| ReadingJson {
            reading: r,
            ts: rfc3339(r.ts_ns),
        })
        .collect();
    let count = readings.len();
    Ok(Json(ReadingsResponse { readings, count }).into_response())
}

#[derive(Serialize)]
struct GatewayJson<'a> {
    #[serde(flatten)]
    stats: &'a GatewayStats,
    created: String,
    last_seen: Option<String>,
}

#[derive(Serialize)]
struct GatewaysResponse<'a> {
    gateways: Vec<GatewayJson<'a>>,
}

async fn gateways(State(state): State<AppState>) -> Result<Response, ApiError> {
    let storage = state.storage.clone();
    let rows = blocking(move || storage.gateways()).await?;
    let gateways = rows
        .iter()
        .map(|g| GatewayJson {
            stats: g,
            created: rfc3339(g.created_ns),
            last_seen: g.last_seen_ns.map(rfc3339),
        })
        .collect();
    Ok(Json(GatewaysResponse { gateways }).into_response())
}

async fn stats(State(state): State<AppState>) -> Result<Response, ApiError> {
    let storage = state.storage.clone();
    let totals = blocking(move || storage.totals()).await?;
    Ok(Json(totals).into_response())
}

async fn metrics_text(State(state): State<AppState>) -> Result<Response, ApiError> {
    let text = state.metrics.render().map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}"),
        )
    })?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

#[derive(Serialize)]
struct HealthResponse {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// Wall-clock time of the sink, RFC 3339.
    time: String,
}

async fn health(State(state): State<AppState>) -> Response {
    let storage = state.storage.clone();
    let now = rfc3339(protocol::Timestamp::now().as_nanos());
    match blocking(move || storage.ping()).await {
        Ok(()) => Json(HealthResponse {
            status: "ok",
            error: None,
            time: now,
        })
        .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(HealthResponse {
                status: "unavailable",
                error: Some(e.to_string()),
                time: now,
            }),
        )
            .into_response(),
    }
}

/// The operator a request's bearer token belongs to: 403 when no operator
/// tokens are configured, 401 for a missing or unknown token.
fn operator(state: &AppState, headers: &HeaderMap) -> Result<String, ApiError> {
    let Some(operators) = &state.operators else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "the operator API is disabled: this sink has no operator tokens (set api.operator_tokens_file in its config)",
        ));
    };
    let token = auth::bearer_token(
        headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes),
    )
    .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, e.to_string()))?;
    operators
        .operator(token)
        .map(str::to_owned)
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, AuthError::Unknown.to_string()))
}

/// Reads a JSON body of at most [`MAX_JSON_BODY`] bytes (400 / 413).
async fn json_body<T: serde::de::DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    let bytes = read_body_limited(body, MAX_JSON_BODY)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body is over {MAX_JSON_BODY} bytes"),
            ),
            BodyError::Read(e) => {
                ApiError::new(StatusCode::BAD_REQUEST, format!("reading body: {e}"))
            }
        })?;
    // No body at all reads as `{}` (every field of a job request is optional).
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &bytes
    };
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}

/// Body of `POST /v1/alerts/{id}/label`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelBody {
    pub true_alarm: bool,
    /// Who labels; default: the operator the token belongs to.
    #[serde(default)]
    pub by: Option<String>,
}

/// Longest `by` of a label.
pub const MAX_LABEL_BY: usize = 128;

async fn label_alert(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let operator = operator(&state, &headers)?;
    let Path(id) = id.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let id = AlertId::parse(&id).map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, m))?;
    let body: LabelBody = json_body(body).await?;
    let by = body.by.unwrap_or_else(|| operator.clone());
    let by = by.trim().to_owned();
    if by.is_empty() || by.len() > MAX_LABEL_BY || by.chars().any(char::is_control) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("by must be 1 to {MAX_LABEL_BY} bytes without control characters"),
        ));
    }
    let label = AlertLabel {
        true_alarm: body.true_alarm,
        by,
        labelled_ns: protocol::Timestamp::now().as_nanos(),
    };
    let storage = state.storage.clone();
    let key = id.clone();
    let stored = blocking(move || storage.label_alert(&key, &label)).await?;
    let Some(alert) = stored else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no alert {id}"),
        ));
    };
    state.metrics.operator_label(body.true_alarm);
    tracing::info!(alert = %id, device = %alert.device, true_alarm = body.true_alarm, operator = %operator, "Alert labelled.");
    Ok(Json(AlertJson {
        start: rfc3339(alert.start_ns),
        end: rfc3339(alert.end_ns),
        alert: &alert,
    })
    .into_response())
}

/// Body of `POST /v1/training/jobs`; every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobBody {
    /// `fleet` (default), a device, or the name of `devices` (a group).
    pub scope: Option<String>,
    pub devices: Option<Vec<String>>,
    /// Inclusive bound: RFC 3339 or integer nanoseconds.
    pub from: Option<String>,
    /// Exclusive bound, same forms.
    pub to: Option<String>,
    /// `auto` (default; needs operator labels) or a family name.
    pub family: Option<String>,
    pub window: Option<usize>,
    pub hop: Option<usize>,
    pub stats: Option<Vec<String>>,
    /// Log-scale the spread statistics (`train --log-spread`); default false.
    pub log_spread: Option<bool>,
    /// Frame period, e.g. `1s`; default `training.period`.
    pub period: Option<String>,
    /// Channels carrying integer codes, one-hot encoded (`train --categorical`).
    pub categorical: Option<Vec<String>>,
    /// Time constant of the per-device running baseline, e.g. `10m`
    /// (`train --baseline`); default none.
    pub baseline: Option<String>,
}

async fn submit_job(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let operator = operator(&state, &headers)?;
    let body: JobBody = json_body(body).await?;
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    let from_ns = body
        .from
        .as_deref()
        .map(parse_time)
        .transpose()
        .map_err(|e| bad(format!("from: {e}")))?;
    let to_ns = body
        .to
        .as_deref()
        .map(parse_time)
        .transpose()
        .map_err(|e| bad(format!("to: {e}")))?;
    let period = body
        .period
        .as_deref()
        .map(humantime::parse_duration)
        .transpose()
        .map_err(|e| bad(format!("period: {e}")))?;
    let baseline = body
        .baseline
        .as_deref()
        .map(humantime::parse_duration)
        .transpose()
        .map_err(|e| bad(format!("baseline: {e}")))?;
    let input = SpecInput {
        scope: body.scope.as_deref().unwrap_or(crate::train::jobs::FLEET),
        devices: body.devices.as_deref(),
        from_ns,
        to_ns,
        family: body.family.as_deref(),
        window: body.window,
        hop: body.hop,
        stats: body.stats.as_deref(),
        log_spread: body.log_spread,
        period,
        categorical: body.categorical.as_deref(),
        baseline,
    };
    let spec = JobSpec::check(&input, state.jobs.settings().default_period).map_err(|p| {
        bad(p
            .iter()
            .map(|(field, m)| format!("{field}: {m}"))
            .collect::<Vec<_>>()
            .join("; "))
    })?;
    let job = state
        .jobs
        .submit(spec, Trigger::Api { operator })
        .map_err(|e| match e {
            SubmitError::QueueFull { .. } | SubmitError::Closed => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
        })?;
    let location = format!("/v1/training/jobs/{}", job.id);
    let mut response = (StatusCode::ACCEPTED, Json(&job)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

#[derive(Serialize)]
struct JobsResponse {
    jobs: Vec<crate::train::jobs::JobView>,
    count: usize,
    queued: usize,
    queue_capacity: usize,
}

async fn list_jobs(State(state): State<AppState>) -> Response {
    let jobs = state.jobs.list();
    Json(JobsResponse {
        count: jobs.len(),
        jobs,
        queued: state.jobs.queued(),
        queue_capacity: state.jobs.settings().queue_capacity,
    })
    .into_response()
}

async fn get_job(
    State(state): State<AppState>,
    id: Result<Path<u64>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let job = state.jobs.get(id).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no training job {id} (finished jobs are kept up to training.keep_finished, and not across restarts)"),
        )
    })?;
    Ok(Json(job).into_response())
}

/// `POST /v1/training/jobs/{id}/cancel`: authorised as the other operator
/// routes (403 / 401 before anything else).
async fn cancel_job(
    State(state): State<AppState>,
    id: Result<Path<u64>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let operator = operator(&state, &headers)?;
    let Path(id) = id.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let job = state.jobs.cancel(id, &operator).map_err(|e| {
        let status = match e {
            CancelError::NotFound(_) => StatusCode::NOT_FOUND,
            CancelError::Finished { .. } | CancelError::Registering { .. } => StatusCode::CONFLICT,
        };
        ApiError::new(status, e.to_string())
    })?;
    // A running job stops at its next fold boundary: accepted, not done.
    let status = if job.state == JobState::Cancelled {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(job)).into_response())
}

/// Query parameters of `GET /v1/models`.
#[derive(Debug, Deserialize)]
pub struct ModelsParams {
    pub scope: Option<String>,
    pub limit: Option<String>,
}

#[derive(Serialize)]
struct ModelJson {
    #[serde(flatten)]
    version: crate::train::registry::ModelVersion,
    created: String,
}

#[derive(Serialize)]
struct ModelsResponse {
    models: Vec<ModelJson>,
    count: usize,
}

async fn models(
    State(state): State<AppState>,
    params: Result<Query<ModelsParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) =
        params.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let limit = match params.limit.as_deref() {
        None => DEFAULT_MODELS_LIMIT,
        Some(s) => match s.trim().parse::<u32>() {
            Ok(n) if (1..=MAX_MODELS_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("limit must be an integer from 1 to {MAX_MODELS_LIMIT}, got {s:?}"),
                ));
            }
        },
    };
    let db = state.jobs.settings().db_path.clone();
    let versions = tokio::task::spawn_blocking(move || {
        Registry::open(&db)?.recent(params.scope.as_deref(), limit)
    })
    .await
    .map_err(|e| ApiError::from(StorageError::Task(e.to_string())))?
    .map_err(|e| {
        warn!(error = %e, "Registry failed.");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("registry unavailable: {e}"),
        )
    })?;
    let models: Vec<ModelJson> = versions
        .into_iter()
        .map(|v| ModelJson {
            created: rfc3339(v.created_ns),
            version: v,
        })
        .collect();
    Ok(Json(ModelsResponse {
        count: models.len(),
        models,
    })
    .into_response())
}

/// Route label for metrics: one of the known routes, or `other` (bounded cardinality).
fn route_label(path: &str) -> &'static str {
    if path.starts_with("/v1/alerts/") && path.ends_with("/label") {
        return "/v1/alerts/{id}/label";
    }
    if path.starts_with("/v1/training/jobs/") {
        if path.ends_with("/cancel") {
            return "/v1/training/jobs/{id}/cancel";
        }
        return "/v1/training/jobs/{id}";
    }
    match path {
        "/v1/ingest" => "/v1/ingest",
        "/v1/readings" => "/v1/readings",
        "/v1/alerts" => "/v1/alerts",
        "/v1/training/jobs" => "/v1/training/jobs",
        "/v1/models" => "/v1/models",
        "/v1/quarantine" => "/v1/quarantine",
        "/v1/gateways" => "/v1/gateways",
        "/v1/stats" => "/v1/stats",
        "/metrics" => "/metrics",
        "/health" => "/health",
        _ => "other",
    }
}

async fn count_responses(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let route = route_label(request.uri().path());
    let response = next.run(request).await;
    metrics.http_response(route, response.status().as_u16());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_bounds_accept_nanoseconds_and_rfc3339() {
        assert_eq!(parse_time("123"), Ok(123));
        assert_eq!(parse_time("-5"), Ok(-5));
        assert_eq!(parse_time("1970-01-01T00:00:01Z"), Ok(1_000_000_000));
        assert_eq!(parse_time("1970-01-01T00:00:00.5Z"), Ok(500_000_000));
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn media_type_check_accepts_parameters_and_case_but_not_other_types() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Application/CBOR; x=y"),
        );
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("zstd"));
        assert!(check_media_type(&h).is_ok());
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        assert!(check_media_type(&h).is_err());
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("zstd"));
        assert!(check_media_type(&h).is_err());
    }

    #[test]
    fn route_labels_are_bounded() {
        assert_eq!(route_label("/v1/ingest"), "/v1/ingest");
        assert_eq!(route_label("/anything/else"), "other");
        assert_eq!(
            route_label("/v1/training/jobs/17"),
            "/v1/training/jobs/{id}"
        );
        assert_eq!(
            route_label("/v1/training/jobs/17/cancel"),
            "/v1/training/jobs/{id}/cancel"
        );
        assert_eq!(
            route_label("/v1/alerts/gw:0:1/label"),
            "/v1/alerts/{id}/label"
        );
    }
}
