//! Admin HTTP server: `/metrics` (Prometheus text), `/health` (liveness with
//! a JSON summary), `/ready` (200 once the MQTT source, if configured, is
//! connected; the HTTP source is listening before this server starts).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::outbox::Outbox;

#[derive(Clone)]
struct AdminState {
    registry: Arc<Registry>,
    metrics: Metrics,
    outbox: Arc<Outbox>,
    /// Ready waits for the MQTT connection only when MQTT is configured.
    mqtt_configured: bool,
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    metrics: Metrics,
    outbox: Arc<Outbox>,
    mqtt_configured: bool,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .with_state(AdminState {
            registry,
            metrics,
            outbox,
            mqtt_configured,
        });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await
}

async fn metrics_handler(State(s): State<AdminState>) -> Response {
    s.metrics.observe_disk_writes();
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &s.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn health(State(s): State<AdminState>) -> Response {
    let body = serde_json::json!({
        "status": "ok",
        "mqtt_connected": s.metrics.mqtt_connected.get() == 1,
        "outbox_records": s.outbox.depth(),
        "outbox_bytes": s.outbox.bytes(),
        "outbox_max_bytes": s.outbox.max_bytes(),
        "uplink_lag_seconds": s.metrics.uplink_lag_seconds.get(),
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn ready(State(s): State<AdminState>) -> StatusCode {
    if !s.mqtt_configured || s.metrics.mqtt_connected.get() == 1 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}
