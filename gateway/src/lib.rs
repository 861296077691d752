//! Outpost gateway: sensors in, durable outbox, batched uplink to the cloud sink.
//!
//! Module map (the way a reading travels, top to bottom):
//! - [`config`] — TOML config, defaults, validation that reports every problem.
//! - [`broker`] — the embedded MQTT broker (rumqttd), when configured.
//! - [`sources`] — inputs (MQTT, HTTP push, CoAP, serial, file drop, SQL and REST polling); decode payloads into envelopes, ack after commit.
//! - [`envelope`] — what a source hands to ingest, and the commit result it gets back.
//! - [`contracts`] — sensor contracts (units, range, rate, stuck, skew, required), de-duplication.
//! - [`clock`] — is the wall clock synchronised; stamps and corrections of gateway-timed readings.
//! - [`ingest`] — the single ingest task: quarantine rejects, append, group-commit, release acks.
//! - [`outbox`] — the durable outbox (an append-only segment log, sequence-ordered) and the quarantine (sled).
//! - [`analysis`] — edge analytics after the commit: rings, shard workers, models, fallback, alerts.
//! - [`uplink`] — batches from the outbox to the sink over HTTP(S); delete after 2xx.
//! - [`backoff`] — exponential backoff with jitter (plain struct).
//! - [`service`] — systemd: READY / STOPPING / WATCHDOG notifications.
//! - [`metrics`] / [`admin`] — Prometheus metrics and the `/metrics` `/health` `/ready` server.
//! - [`wear`] — bytes written to storage (`/proc/self/io`), and a warning when they would wear out an SD card.
//! - [`reload`] — SIGHUP: re-read and validate the config, apply what can change live.
//! - [`selftest`] — `outpost-gateway self-test`: temporary outbox, real ingest, read back.
#![forbid(unsafe_code)]

pub mod admin;
pub mod analysis;
pub mod backoff;
pub mod broker;
pub mod clock;
pub mod config;
pub mod contracts;
pub mod envelope;
pub mod ingest;
pub mod metrics;
pub mod outbox;
pub mod reload;
pub mod selftest;
pub mod service;
pub mod sources;
pub mod uplink;
pub mod wear;

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
    Contracts(#[from] contracts::ContractsError),
    #[error(transparent)]
    Analysis(#[from] analysis::runtime::AnalysisStartError),
    #[error(transparent)]
    Mqtt(#[from] sources::mqtt::MqttSourceError),
    #[error(transparent)]
    Http(#[from] sources::http::HttpSourceError),
    #[error(transparent)]
    Coap(#[from] sources::coap::CoapSourceError),
    #[error(transparent)]
    Rest(#[from] sources::rest::RestSourceError),
    #[error(transparent)]
    Files(#[from] sources::files::FileSourceError),
}

/// Runs the gateway until `stop` resolves, then drains: sources stop, ingest
/// commits what it has, pending acks go out, the outbox is flushed.
pub async fn run(cfg: GatewayConfig, stop: impl Future<Output = ()>) -> Result<(), StartError> {
    run_with_reload(cfg, None, stop).await
}

/// [`run`], and with `config_path` a SIGHUP re-reads that file and applies
/// what can change live ([`reload`]).
pub async fn run_with_reload(
    cfg: GatewayConfig,
    config_path: Option<std::path::PathBuf>,
    stop: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let reload_metrics = reload::ReloadMetrics::new(&mut registry);
    let analysis_metrics = cfg
        .analysis
        .is_some()
        .then(|| analysis::AnalysisMetrics::new(&mut registry));
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
    // Models load (and are checked) before anything listens.
    let analysis = match (&cfg.analysis, analysis_metrics) {
        (Some(a), Some(m)) => Some(analysis::runtime::Analysis::start(
            a,
            cfg.mqtt.as_ref(),
            Some(outbox.clone()),
            m,
        )?),
        _ => None,
    };

    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    // Bound before the admin server answers `/ready`, so ready means listening.
    let http_listener = match &cfg.http {
        Some(h) => Some(sources::http::bind(h.listen).await?),
        None => None,
    };
    let coap_socket = match &cfg.coap {
        Some(c) => Some(sources::coap::bind(c.listen).await?),
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

    let clock = Arc::new(clock::ClockMonitor::system(&cfg.clock));
    let validation =
        contracts::stage::Validation::from_config(cfg.contracts.as_ref(), clock.clone())?;
    // The live contract set, for reloads (SIGHUP).
    let live_contracts = validation.contracts();
    let uplink = Uplink::new(
        cfg.gateway_id.clone(),
        cfg.uplink.clone(),
        outbox.clone(),
        metrics.clone(),
    )?
    .with_clock(clock);
    let uplink_settings = uplink.settings_sender();
    let uplink_task = tokio::spawn(uplink.run(shutdown_rx.clone()));
    tokio::spawn(wear::run(
        metrics.clone(),
        cfg.storage.write_endurance,
        shutdown_rx.clone(),
    ));

    let (tx, rx) = mpsc::channel(cfg.ingest.queue_capacity);
    let ingest = Ingest::new(
        outbox.clone(),
        metrics.clone(),
        cfg.ingest.clone(),
        usize::try_from(cfg.storage.quarantine_payload_bytes.as_u64()).unwrap_or(4096),
    )
    .with_validation(validation);
    let ingest = match &analysis {
        Some(a) => ingest.with_analysis(a.feed.clone()),
        None => ingest,
    };
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
    if let (Some(c), Some(socket)) = (&cfg.coap, coap_socket) {
        let source = sources::coap::CoapSource::new(
            c,
            &cfg.limits,
            metrics.clone(),
            quarantine_payload_bytes,
        );
        let run = source.run(socket, tx.clone(), shutdown_rx.clone());
        source_tasks.push(tokio::spawn(async move { Ok(run.await?) }));
    }
    let (subs_tx, subs_rx) = watch::channel(
        mqtt_cfg
            .as_ref()
            .map(|m| m.subscriptions.clone())
            .unwrap_or_default(),
    );
    if let Some(m) = mqtt_cfg {
        let source = MqttSource::new(
            m,
            cfg.limits.decode_limits(),
            metrics.clone(),
            quarantine_payload_bytes,
        )
        .with_subscription_updates(subs_rx);
        let run = source.run(tx.clone(), shutdown_rx.clone());
        source_tasks.push(tokio::spawn(async move { Ok(run.await?) }));
    }
    for port in &cfg.serial {
        let source = sources::serial::SerialSource::new(
            port.clone(),
            cfg.limits.decode_limits(),
            metrics.clone(),
            quarantine_payload_bytes,
        );
        let run = source.run(tx.clone(), shutdown_rx.clone());
        source_tasks.push(tokio::spawn(async move { Ok(run.await?) }));
    }
    for sql in &cfg.sql {
        let source = sources::sql::SqlSource::new(sql.clone(), outbox.clone(), metrics.clone());
        let run = source.run(tx.clone(), shutdown_rx.clone());
        source_tasks.push(tokio::spawn(async move { Ok(run.await?) }));
    }
    for rest in &cfg.rest {
        let source = sources::rest::RestSource::new(rest.clone(), outbox.clone(), metrics.clone())?;
        let run = source.run(tx.clone(), shutdown_rx.clone());
        source_tasks.push(tokio::spawn(async move { Ok(run.await?) }));
    }
    for files in &cfg.files {
        let source =
            sources::files::FileSource::new(files.clone(), outbox.clone(), metrics.clone());
        source.prepare()?;
        let run = source.run(tx.clone(), shutdown_rx.clone());
        source_tasks.push(tokio::spawn(async move { Ok(run.await?) }));
    }
    drop(tx);
    // Before READY: from here on a SIGHUP reloads instead of terminating.
    if let Some(path) = config_path {
        let subs = cfg.mqtt.is_some().then_some(subs_tx);
        let reloader =
            reload::Reloader::new(path, cfg.clone(), uplink_settings, subs, reload_metrics)
                .with_contracts(live_contracts);
        if let Err(e) = reloader.spawn(shutdown_rx.clone()) {
            warn!(error = %e, "Cannot install the SIGHUP handler; config reload is off.");
        }
    }
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
        // Ingest has offered its last readings; workers score what is pending.
        if let Some(a) = analysis {
            a.stop().await;
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
