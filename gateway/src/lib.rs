//! Outpost gateway: sensors in, durable outbox, batched uplink to the cloud sink.
//!
//! Module map (the way a reading travels, top to bottom):
//! - [`config`] — TOML config, defaults, validation that reports every problem.
//! - [`broker`] — the embedded MQTT broker (rumqttd), when configured.
//! - [`sources`] — inputs (MQTT, HTTP push); decode payloads into envelopes, ack after commit.
//! - [`envelope`] — what a source hands to ingest, and the commit result it gets back.
//! - [`ingest`] — the single ingest task: quarantine rejects, append, group-commit, release acks.
//! - [`outbox`] — the sled-backed durable outbox (sequence-ordered) and quarantine.
//! - [`analysis`] — device frames and sliding windows for edge analytics (plain structs; not wired in yet).
//! - [`uplink`] — batches from the outbox to the sink over HTTP(S); delete after 2xx.
//! - [`backoff`] — exponential backoff with jitter (plain struct).
//! - [`service`] — systemd: READY / STOPPING / WATCHDOG notifications.
//! - [`metrics`] / [`admin`] — Prometheus metrics and the `/metrics` `/health` `/ready` server.
#![forbid(unsafe_code)]

pub mod admin;
pub mod analysis;
pub mod backoff;
pub mod broker;
pub mod config;
pub mod envelope;
pub mod ingest;
pub mod metrics;
pub mod outbox;
pub mod service;
pub mod sources;
pub mod uplink;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::config::{GatewayConfig, MqttMode};
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::sources::SourceError;
use crate::sources::http::HttpSource;
use crate::sources::mqtt::MqttSource;
use crate::uplink::Uplink;

/// How long shutdown may take before the remaining tasks are abandoned.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the outbox at {path}: {source}")]
    Outbox {
        path: String,
        source: outbox::OutboxError,
    },
    #[error("cannot bind the admin server on {addr}: {source}")]
    Admin {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Broker(#[from] broker::BrokerError),
    #[error(transparent)]
    Uplink(#[from] uplink::UplinkError),
    #[error(transparent)]
    Mqtt(#[from] sources::mqtt::MqttSourceError),
    #[error(transparent)]
    Http(#[from] sources::http::HttpSourceError),
}

/// Runs the gateway until `stop` resolves, then drains: sources stop, ingest
/// commits what it has, pending acks go out, the outbox is flushed.
pub async fn run(cfg: GatewayConfig, stop: impl Future<Output = ()>) -> Result<(), StartError> {
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let registry = Arc::new(registry);

    let path = cfg.storage.path.clone();
    let storage = cfg.storage.clone();
    let outbox = tokio::task::spawn_blocking(move || Outbox::open(&path, &storage))
        .await
        .map_err(|e| StartError::Outbox {
            path: cfg.storage.path.display().to_string(),
            source: outbox::OutboxError::Encode(e.to_string()),
        })?
        .map_err(|source| StartError::Outbox {
            path: cfg.storage.path.display().to_string(),
            source,
        })?;
    let outbox = Arc::new(outbox);
    info!(path = %cfg.storage.path.display(), state = %outbox.describe(), "Outbox open.");

    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    // Bound before the admin server answers `/ready`, so ready means listening.
    let http_listener = match &cfg.http {
        Some(h) => Some(sources::http::bind(h.listen).await?),
        None => None,
    };

    let admin = if cfg.admin.enabled {
        let listener = admin::bind(cfg.admin.listen)
            .await
            .map_err(|source| StartError::Admin {
                addr: cfg.admin.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Admin {
            addr: cfg.admin.listen,
            source,
        })?;
        info!(%addr, "Admin server listening.");
        Some(tokio::spawn(admin::serve(
            listener,
            registry.clone(),
            metrics.clone(),
            outbox.clone(),
            cfg.mqtt.is_some(),
            shutdown_rx.clone(),
        )))
    } else {
        None
    };

    let mqtt_cfg = cfg.mqtt.clone();
    if let Some(m) = &mqtt_cfg
        && m.mode == MqttMode::Embedded
    {
        let embedded = m.embedded.clone();
        let inflight = m.inflight;
        tokio::task::spawn_blocking(move || broker::start(&embedded, inflight))
            .await
            .map_err(|e| broker::BrokerError::Spawn(std::io::Error::other(e.to_string())))??;
    }

    let uplink = Uplink::new(
        cfg.gateway_id.clone(),
        cfg.uplink.clone(),
        outbox.clone(),
        metrics.clone(),
    )?;
    let uplink_task = tokio::spawn(uplink.run(shutdown_rx.clone()));

    let (tx, rx) = mpsc::channel(cfg.ingest.queue_capacity);
    let ingest = Ingest::new(
        outbox.clone(),
        metrics.clone(),
        cfg.ingest.clone(),
        usize::try_from(cfg.storage.quarantine_payload_bytes.as_u64()).unwrap_or(4096),
    );
    let ingest_alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let ingest_task = {
        let alive = ingest_alive.clone();
        let shutdown = shutdown_rx.clone();
        tokio::spawn(async move {
            ingest.run(rx, shutdown).await;
            alive.store(false, std::sync::atomic::Ordering::Release);
        })
    };

    let quarantine_payload_bytes =
        usize::try_from(cfg.storage.quarantine_payload_bytes.as_u64()).unwrap_or(4096);
    let mut source_tasks: Vec<tokio::task::JoinHandle<Result<(), SourceError>>> = Vec::new();
    if let (Some(h), Some(listener)) = (&cfg.http, http_listener) {
        let source = HttpSource::new(h, &cfg.limits, metrics.clone(), quarantine_payload_bytes);
        let run = source.run(listener, tx.clone(), shutdown_rx.clone());
        source_tasks.push(tokio::spawn(async move { Ok(run.await?) }));
    }
    if let Some(m) = mqtt_cfg {
        let source = MqttSource::new(
            m,
            cfg.limits.decode_limits(),
            metrics.clone(),
            quarantine_payload_bytes,
        );
        let run = source.run(tx.clone(), shutdown_rx.clone());
        source_tasks.push(tokio::spawn(async move { Ok(run.await?) }));
    }
    drop(tx);
    info!(gateway = %cfg.gateway_id, "Gateway running.");
    service::ready("running");
    let watchdog = service::spawn_watchdog(ingest_alive);

    stop.await;
    service::stopping();
    if let Some(w) = watchdog {
        w.abort();
    }
    info!("Shutting down: stopping sources, draining ingest, flushing the outbox.");
    let _ = shutdown_tx.send(true);
    let drain = async {
        for t in source_tasks {
            match t.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => error!(error = %e, "Source failed."),
                Err(e) => error!(error = %e, "Source task panicked."),
            }
        }
        if let Err(e) = ingest_task.await {
            error!(error = %e, "Ingest task panicked.");
        }
        let _ = uplink_task.await;
        if let Some(a) = admin {
            let _ = a.await;
        }
    };
    if tokio::time::timeout(SHUTDOWN_DEADLINE, drain)
        .await
        .is_err()
    {
        warn!(
            "Shutdown deadline passed; exiting with tasks still running (nothing unacknowledged is lost)."
        );
    }
    // Bounded too: if storage is wedged (often why the deadline passed), exit
    // anyway — nothing unflushed was acknowledged.
    let o = outbox.clone();
    let flush = tokio::task::spawn_blocking(move || o.flush());
    match tokio::time::timeout(Duration::from_secs(10), flush).await {
        Ok(Ok(Ok(()))) => info!(state = %outbox.describe(), "Outbox flushed; bye."),
        Ok(_) => error!("Final outbox flush failed."),
        Err(_) => error!("Final outbox flush timed out."),
    }
    Ok(())
}
