//! Starting and stopping the analysis path as a whole: metrics, the model
//! slots, the ingest → shard rings, one worker thread per shard, and the
//! alert delivery task.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::alerts::{self, Alert};
use super::config::AnalysisConfig;
use super::detector::ModelSlots;
use super::metrics::AnalysisMetrics;
use super::rings::Feed;
use super::worker::{self, Shard, WorkerHandle};
use crate::config::MqttConfig;
use crate::outbox::Outbox;

/// Alerts in flight from the workers to the delivery task; past it an alert
/// is dropped and counted (`queue_full`).
const ALERT_CHANNEL: usize = 1024;
/// How long [`Analysis::stop`] waits for the workers and the alert delivery.
pub const STOP_DEADLINE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AnalysisStartError {
    #[error("cannot load the analysis model: {0}")]
    Model(#[from] outpost_models::ModelError),
    #[error("cannot set up an analysis worker: {0}")]
    Shard(#[from] worker::ShardError),
    #[error("cannot start an analysis worker thread: {0}")]
    Thread(#[from] std::io::Error),
    #[error("cannot set up the alert publisher: {0}")]
    Alerts(#[from] alerts::AlertError),
}

/// The running analysis path.
#[derive(Debug)]
pub struct Analysis {
    /// Handed to ingest: it offers every committed reading.
    pub feed: Arc<Feed>,
    /// The active and shadow models (hot swap).
    pub slots: Arc<ModelSlots>,
    stop: Arc<AtomicBool>,
    workers: Vec<WorkerHandle>,
    delivery: tokio::task::JoinHandle<()>,
    delivery_stop: watch::Sender<bool>,
}

impl Analysis {
    /// Loads the configured models, spawns the shard workers and the alert
    /// delivery: into `outbox` (for the sink) when given, and over MQTT when
    /// `mqtt` is configured and `alerts.mqtt` is on.
    pub fn start(
        cfg: &AnalysisConfig,
        mqtt: Option<&MqttConfig>,
        outbox: Option<Arc<Outbox>>,
        metrics: AnalysisMetrics,
    ) -> Result<Analysis, AnalysisStartError> {
        let active = ModelSlots::load(cfg.model.as_ref())?;
        let shadow = ModelSlots::load(cfg.shadow.as_ref())?;
        if let Some(m) = &active {
            let man = m.manifest();
            info!(model = %man.name, version = man.version, "Analysis model loaded.");
        } else {
            info!(
                channels = ?cfg.fallback.channels,
                "No analysis model configured; the fallback detector (robust z-score) decides."
            );
        }
        let slots = Arc::new(ModelSlots::new(active, shadow, metrics.clone()));
        let (feed, rings) = Feed::new(cfg.shards, cfg.ring_capacity, metrics.clone());
        let (alert_tx, alert_rx) = mpsc::channel::<Alert>(ALERT_CHANNEL);
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::with_capacity(rings.len());
        for (i, ring) in rings.into_iter().enumerate() {
            let shard = Shard::new(cfg.clone(), slots.clone(), metrics.clone())?;
            workers.push(worker::spawn(
                i,
                shard,
                ring,
                alert_tx.clone(),
                stop.clone(),
            )?);
        }
        drop(alert_tx);
        feed.set_workers(workers.iter().map(|w| w.thread.thread().clone()).collect());
        let mqtt_options = match mqtt {
            Some(m) if cfg.alerts.mqtt => Some(alerts::mqtt_options(m)?),
            _ => None,
        };
        // Not the gateway's shutdown signal: delivery ends when the workers
        // (the alert senders) are gone, so alerts from their final flush go out.
        let (delivery_stop, delivery_stop_rx) = watch::channel(false);
        let delivery = tokio::spawn(alerts::deliver(
            alert_rx,
            cfg.alerts.clone(),
            mqtt_options,
            outbox,
            metrics,
            delivery_stop_rx,
        ));
        Ok(Analysis {
            feed: Arc::new(feed),
            slots,
            stop,
            workers,
            delivery,
            delivery_stop,
        })
    }

    /// Stops the workers (each scores what it has pending) and waits for the
    /// alert delivery to finish, at most [`STOP_DEADLINE`].
    pub async fn stop(self) {
        let deadline = STOP_DEADLINE;
        self.stop.store(true, Ordering::Release);
        let workers = self.workers;
        let joined = tokio::task::spawn_blocking(move || {
            for w in workers {
                w.thread.thread().unpark();
                if w.thread.join().is_err() {
                    warn!("An analysis worker panicked.");
                }
            }
        });
        let delivery_stop = self.delivery_stop;
        if tokio::time::timeout(deadline, async {
            let _ = joined.await;
            let _ = delivery_stop.send(true);
            let _ = self.delivery.await;
        })
        .await
        .is_err()
        {
            warn!("Analysis did not stop within its deadline.");
        }
    }
}
