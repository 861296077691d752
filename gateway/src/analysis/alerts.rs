//! Alerts: the event, the per-device rate limit, and delivery: to the
//! outbox (so the sink gets them through the uplink) and over MQTT.
//!
//! Workers (OS threads) hand alerts to one async task through a bounded
//! channel (`try_send`; full → dropped, counted as `queue_full`). The task
//! logs each alert and publishes it as JSON to `{topic_prefix}/{device}` at
//! the configured QoS over its own MQTT connection (client id
//! `{mqtt.client_id}-alerts`, clean session) when `[mqtt]` is configured.
//! Alerts waiting for the connection sit in a queue of
//! `alerts.publish_queue`; past it the **oldest** is dropped (counted as
//! `publish_queue_full`): the newest state of a device matters most.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::config::AlertsConfig;
use super::metrics::AnalysisMetrics;
use crate::config::MqttConfig;
use crate::outbox::Outbox;
use protocol::batch::OutboxItem;

pub use protocol::alert::{Alert, Contribution};

/// Per-device deduplication by time: at most one alert per `min_interval`.
#[derive(Debug)]
pub struct RateLimit {
    min_interval: Duration,
    last: HashMap<String, Instant>,
    max_devices: usize,
}

impl RateLimit {
    pub fn new(min_interval: Duration, max_devices: usize) -> Self {
        RateLimit {
            min_interval,
            last: HashMap::new(),
            max_devices: max_devices.max(1),
        }
    }

    /// Whether an alert of `device` may go out `now` (and, if so, records it).
    pub fn allow(&mut self, device: &str, now: Instant) -> bool {
        if let Some(t) = self.last.get_mut(device) {
            if now.duration_since(*t) < self.min_interval {
                return false;
            }
            *t = now;
            return true;
        }
        if self.last.len() >= self.max_devices {
            // Bounded: forget devices whose interval has passed.
            let min = self.min_interval;
            self.last.retain(|_, t| now.duration_since(*t) < min);
        }
        self.last.insert(device.to_owned(), now);
        true
    }
}

/// A bounded queue that drops its oldest entry when full.
#[derive(Debug)]
pub struct DropOldest<T> {
    items: VecDeque<T>,
    cap: usize,
}

impl<T> DropOldest<T> {
    pub fn new(cap: usize) -> Self {
        DropOldest {
            items: VecDeque::with_capacity(cap.min(1024)),
            cap: cap.max(1),
        }
    }

    /// Pushes; returns the dropped oldest entry when full.
    pub fn push(&mut self, item: T) -> Option<T> {
        let dropped = if self.items.len() >= self.cap {
            self.items.pop_front()
        } else {
            None
        };
        self.items.push_back(item);
        dropped
    }

    pub fn pop(&mut self) -> Option<T> {
        self.items.pop_front()
    }

    pub fn front(&self) -> Option<&T> {
        self.items.front()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// Why the alert publisher could not start.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error(transparent)]
    Options(#[from] crate::sources::mqtt::MqttSourceError),
}

/// MQTT options for the alert connection, mirroring the source's.
pub fn mqtt_options(cfg: &MqttConfig) -> Result<MqttOptions, AlertError> {
    let mut o = crate::sources::mqtt::connection_options(cfg, format!("{}-alerts", cfg.client_id))?;
    o.set_clean_session(true);
    Ok(o)
}

/// Writes the alert to the outbox (durably: alerts are rare, one flush
/// each), so the uplink delivers it to the sink like a reading. A full
/// outbox or a storage error drops it, counted as `outbox`.
async fn store(outbox: &Arc<Outbox>, alert: &Alert, metrics: &AnalysisMetrics) {
    let mut encoded = Vec::with_capacity(256);
    if let Err(e) = ciborium::into_writer(&OutboxItem::Alert(alert.clone()), &mut encoded) {
        warn!(error = %e, "Cannot encode an alert for the outbox.");
        metrics.dropped("outbox");
        return;
    }
    let ob = outbox.clone();
    let written = tokio::task::spawn_blocking(move || {
        // Never evicts readings: a full outbox drops the alert (counted).
        ob.append_event(encoded)?;
        ob.flush()
    })
    .await;
    match written {
        Ok(Ok(())) => {
            metrics.alerts_stored.inc();
            outbox.data_added.notify_one();
        }
        Ok(Err(e)) => {
            warn!(error = %e, device = %alert.device, "Alert not stored in the outbox; it goes to MQTT only.");
            metrics.dropped("outbox");
        }
        Err(e) => {
            warn!(error = %e, "Alert store task failed.");
            metrics.dropped("outbox");
        }
    }
}

fn qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        2 => QoS::ExactlyOnce,
        _ => QoS::AtLeastOnce,
    }
}

/// Receives alerts from the workers until they are all gone (or shutdown),
/// logs them, and publishes them when `mqtt` is given.
pub async fn deliver(
    mut rx: mpsc::Receiver<Alert>,
    cfg: AlertsConfig,
    mqtt: Option<MqttOptions>,
    outbox: Option<Arc<Outbox>>,
    metrics: AnalysisMetrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut queue: DropOldest<Alert> = DropOldest::new(cfg.publish_queue);
    let (client, mut eventloop) = match mqtt.filter(|_| cfg.mqtt) {
        Some(opts) => {
            let (c, e) = AsyncClient::new(opts, 64);
            (Some(c), Some(e))
        }
        None => (None, None),
    };
    let mut connected = false;
    let mut backoff = Duration::from_millis(200);
    loop {
        // Publish what waits, while the connection is up and rumqttc's
        // request queue has room (try_publish never blocks this task).
        if connected && let Some(c) = &client {
            while let Some(alert) = queue.front() {
                let topic = format!("{}/{}", cfg.topic_prefix, alert.device);
                let payload = serde_json::to_vec(alert).unwrap_or_default();
                match c.try_publish(topic, qos(cfg.qos), false, payload) {
                    Ok(()) => {
                        queue.pop();
                        metrics.alerts_published.inc();
                    }
                    Err(_) => break,
                }
            }
        }
        tokio::select! {
            got = rx.recv() => match got {
                Some(alert) => {
                    info!(
                        device = %alert.device,
                        start = %alert.start,
                        end = %alert.end,
                        score = alert.score,
                        threshold = alert.threshold,
                        model = %alert.model,
                        model_version = alert.model_version,
                        channels = ?alert.channels.iter().map(|c| c.channel.as_str()).collect::<Vec<_>>(),
                        "Anomaly alert."
                    );
                    if let Some(outbox) = &outbox {
                        store(outbox, &alert, &metrics).await;
                    }
                    if client.is_some() && queue.push(alert).is_some() {
                        metrics.dropped("publish_queue_full");
                    }
                }
                None => break,
            },
            event = async {
                match eventloop.as_mut() {
                    Some(e) => Some(e.poll().await),
                    None => std::future::pending().await,
                }
            } => match event {
                Some(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                    debug!("Alert publisher connected.");
                    connected = true;
                    backoff = Duration::from_millis(200);
                }
                Some(Ok(_)) | None => {}
                Some(Err(e)) => {
                    if connected {
                        warn!(error = %e, "Alert publisher disconnected; alerts queue until it reconnects.");
                    }
                    connected = false;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            },
            _ = shutdown.changed() => {
                if *shutdown.borrow() {
                    break;
                }
            }
        }
    }
    // Give queued publishes a moment to go out.
    if let (Some(c), Some(mut e)) = (client, eventloop) {
        let deadline = tokio::time::sleep(Duration::from_secs(2));
        tokio::pin!(deadline);
        while connected && let Some(alert) = queue.pop() {
            let topic = format!("{}/{}", cfg.topic_prefix, alert.device);
            let payload = serde_json::to_vec(&alert).unwrap_or_default();
            if c.try_publish(topic, qos(cfg.qos), false, payload).is_ok() {
                metrics.alerts_published.inc();
            }
        }
        let _ = c.try_disconnect();
        loop {
            tokio::select! {
                () = &mut deadline => break,
                ev = e.poll() => if ev.is_err() { break },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Timestamp;

    #[test]
    fn one_alert_per_device_per_interval() {
        let t0 = Instant::now();
        let mut rl = RateLimit::new(Duration::from_secs(60), 100);
        assert!(rl.allow("a", t0));
        assert!(!rl.allow("a", t0 + Duration::from_secs(59)));
        assert!(rl.allow("b", t0 + Duration::from_secs(1)));
        assert!(rl.allow("a", t0 + Duration::from_secs(60)));
    }

    #[test]
    fn the_rate_limit_table_stays_bounded() {
        let t0 = Instant::now();
        let mut rl = RateLimit::new(Duration::from_secs(1), 4);
        for i in 0..100 {
            rl.allow(&format!("d{i}"), t0 + Duration::from_secs(i));
        }
        assert!(rl.last.len() <= 5);
    }

    #[test]
    fn a_full_publish_queue_drops_the_oldest() {
        let mut q = DropOldest::new(2);
        assert_eq!(q.push(1), None);
        assert_eq!(q.push(2), None);
        assert_eq!(q.push(3), Some(1));
        assert_eq!(q.pop(), Some(2));
        assert_eq!(q.pop(), Some(3));
        assert!(q.is_empty());
    }

    #[test]
    fn an_alert_is_json_with_every_field() {
        let a = Alert {
            device: "pump-1".into(),
            start: Timestamp(1),
            end: Timestamp(2),
            score: 9.5,
            threshold: 8.0,
            model: "fallback".into(),
            model_version: 0,
            channels: vec![Contribution {
                channel: "current".into(),
                z: 9.5,
            }],
            raised: Timestamp(3),
        };
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<Alert>(&json).unwrap(), a);
        assert!(json.contains("\"model_version\":0"));
    }
}
