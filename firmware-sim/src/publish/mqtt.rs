//! The MQTT transport (rumqttc `AsyncClient`).
//!
//! One task drives the rumqttc event loop and feeds an [`AckTracker`]; the
//! publisher side enqueues into the tracker and hands the publish to the client.
//! A semaphore of `max_inflight` permits bounds the messages handed over and not
//! yet complete (acked, lost, or — at QoS 0 — written); rumqttc's own inflight
//! limit is set to the same number.
//!
//! The session is persistent (`clean_session = false`), so after a reconnect the
//! broker keeps the session and rumqttc retransmits unacked publishes (their
//! PUBACKs then count). If the broker lost the session (it restarted), rumqttc
//! drops them and they are reported [`Delivery::Lost`]. Connection errors are
//! retried with exponential backoff (100 ms … 5 s); being disconnected for longer
//! than `connect_timeout` (including before the first CONNACK) is fatal.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS, Request,
};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::tracker::{AckTracker, OutgoingPublish};
use super::{CloseReport, Delivery, OutMessage, Transport, TransportError};

/// How to reach the broker and how to publish.
#[derive(Clone, Debug)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    /// Username and password, when the broker wants them.
    pub credentials: Option<(String, String)>,
    pub qos: QoS,
    /// Most messages handed over and not yet complete (1..=65535).
    pub max_inflight: u16,
    /// Longest time without a connection before giving up.
    pub connect_timeout: Duration,
    pub keep_alive: Duration,
}

impl MqttConfig {
    pub fn broker(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    pub fn options(&self) -> MqttOptions {
        let mut o = MqttOptions::new(self.client_id.clone(), self.host.clone(), self.port);
        o.set_keep_alive(self.keep_alive.max(Duration::from_secs(1)))
            .set_clean_session(false)
            .set_inflight(self.max_inflight.max(1))
            .set_max_packet_size(1 << 20, 1 << 20)
            // Pending retransmissions go out without an artificial pause.
            .set_pending_throttle(Duration::ZERO);
        if let Some((u, p)) = &self.credentials {
            o.set_credentials(u.clone(), p.clone());
        }
        o
    }
}

/// A message the tracker holds: the message and when it was handed over.
#[derive(Debug)]
struct Tracked {
    message: OutMessage,
    at: Instant,
}

#[derive(Clone, Debug, PartialEq)]
enum LinkState {
    Connecting,
    Connected,
    Failed(String),
}

/// Publishes over MQTT and reports PUBACKs as [`Delivery`] events.
#[derive(Debug)]
pub struct MqttTransport {
    cfg: MqttConfig,
    client: AsyncClient,
    tracker: Arc<Mutex<AckTracker<Tracked>>>,
    window: Arc<Semaphore>,
    state: watch::Receiver<LinkState>,
    stop: watch::Sender<bool>,
    task: JoinHandle<u64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the tracker half-updated in a
    // way that matters more than stopping would; keep going with the data.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl MqttTransport {
    /// Connects (waiting for the first CONNACK, at most `connect_timeout`) and
    /// starts the event-loop task. Deliveries go to `deliveries`.
    pub async fn connect(
        cfg: MqttConfig,
        deliveries: mpsc::Sender<Delivery>,
    ) -> Result<Self, TransportError> {
        let max_inflight = cfg.max_inflight.max(1);
        let (client, eventloop) = AsyncClient::new(cfg.options(), 64);
        let tracker = Arc::new(Mutex::new(AckTracker::new(cfg.qos != QoS::AtMostOnce)));
        let window = Arc::new(Semaphore::new(usize::from(max_inflight)));
        let (state_tx, mut state) = watch::channel(LinkState::Connecting);
        let (stop, stop_rx) = watch::channel(false);
        let driver = Driver {
            cfg: cfg.clone(),
            tracker: tracker.clone(),
            window: window.clone(),
            deliveries,
            state: state_tx,
            stop: stop_rx,
            reconnects: 0,
        };
        let task = tokio::spawn(driver.run(eventloop));
        loop {
            match &*state.borrow_and_update() {
                LinkState::Connected => break,
                LinkState::Failed(e) => {
                    return Err(TransportError::ConnectTimeout {
                        broker: cfg.broker(),
                        timeout: cfg.connect_timeout,
                        last_error: e.clone(),
                    });
                }
                LinkState::Connecting => {}
            }
            if state.changed().await.is_err() {
                return Err(TransportError::Stopped);
            }
        }
        Ok(MqttTransport {
            cfg,
            client,
            tracker,
            window,
            state,
            stop,
            task,
        })
    }

    fn failure(&self) -> TransportError {
        match &*self.state.borrow() {
            LinkState::Failed(e) => TransportError::Disconnected {
                broker: self.cfg.broker(),
                timeout: self.cfg.connect_timeout,
                last_error: e.clone(),
            },
            _ => TransportError::Stopped,
        }
    }
}

impl Transport for MqttTransport {
    async fn send(&mut self, msg: OutMessage) -> Result<(), TransportError> {
        let permit = self.window.acquire().await.map_err(|_| self.failure())?;
        permit.forget();
        let topic = msg.topic.clone();
        let payload = msg.payload.clone();
        lock(&self.tracker).enqueue(
            msg.id,
            Tracked {
                message: msg,
                at: Instant::now(),
            },
        );
        if let Err(e) = self
            .client
            .publish(topic, self.cfg.qos, false, payload)
            .await
        {
            lock(&self.tracker).unqueue_last();
            self.window.add_permits(1);
            return Err(match &*self.state.borrow() {
                LinkState::Failed(_) => self.failure(),
                _ => TransportError::Client(e.to_string()),
            });
        }
        Ok(())
    }

    async fn close(self, drain: Duration) -> Result<CloseReport, TransportError> {
        let total = u32::from(self.cfg.max_inflight.max(1));
        // All permits back means every message is acked, lost or written (QoS 0).
        let drained = tokio::time::timeout(drain, self.window.acquire_many(total)).await;
        let failed = matches!(drained, Ok(Err(_)));
        let unconfirmed = lock(&self.tracker).outstanding() as u64;
        if !failed {
            let _ = self.client.disconnect().await;
            // Give the event loop a moment to write the DISCONNECT.
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                let mut s = self.state.clone();
                while *s.borrow_and_update() == LinkState::Connected {
                    if s.changed().await.is_err() {
                        break;
                    }
                }
            })
            .await;
        }
        let _ = self.stop.send(true);
        let failure = failed.then(|| self.failure());
        let reconnects = self.task.await.unwrap_or(0);
        if let Some(e) = failure {
            return Err(e);
        }
        if drained.is_err() {
            warn!(unconfirmed, drain = ?drain, "Drain timed out with messages still unacked.");
        }
        Ok(CloseReport {
            unconfirmed,
            reconnects,
        })
    }
}

/// The event-loop side.
struct Driver {
    cfg: MqttConfig,
    tracker: Arc<Mutex<AckTracker<Tracked>>>,
    window: Arc<Semaphore>,
    deliveries: mpsc::Sender<Delivery>,
    state: watch::Sender<LinkState>,
    stop: watch::Receiver<bool>,
    reconnects: u64,
}

impl Driver {
    /// Runs until stopped or until the link is down for too long. Returns the reconnect count.
    async fn run(mut self, mut eventloop: EventLoop) -> u64 {
        let mut backoff = Duration::from_millis(100);
        let mut down_since: Option<Instant> = Some(Instant::now());
        let mut connected_once = false;
        loop {
            let polled = tokio::select! {
                biased;
                _ = self.stop.changed() => break,
                ev = eventloop.poll() => ev,
            };
            match polled {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    if connected_once {
                        self.reconnects += 1;
                        info!(broker = %self.cfg.broker(), session_present = ack.session_present, "Reconnected.");
                    }
                    connected_once = true;
                    down_since = None;
                    backoff = Duration::from_millis(100);
                    let lost = lock(&self.tracker).on_connack(ack.session_present);
                    if !lost.is_empty() {
                        warn!(
                            lost = lost.len(),
                            "The broker did not keep the session; unacked messages are lost."
                        );
                    }
                    for (id, _) in lost {
                        self.complete(Delivery::Lost { id }).await;
                    }
                    self.state.send_replace(LinkState::Connected);
                }
                Ok(ev) => self.handle(ev).await,
                Err(e) => {
                    // Events rumqttc buffered before the error still describe what happened.
                    let buffered: Vec<Event> = eventloop.state.events.drain(..).collect();
                    for ev in buffered {
                        self.handle(ev).await;
                    }
                    let held = eventloop
                        .pending
                        .iter()
                        .filter(|r| matches!(r, Request::Publish(p) if p.pkid == 0))
                        .count();
                    lock(&self.tracker).on_connection_lost(held);
                    if matches!(e, ConnectionError::RequestsDone) {
                        break;
                    }
                    if *self.state.borrow() == LinkState::Connected {
                        warn!(broker = %self.cfg.broker(), error = %e, "MQTT connection lost; reconnecting.");
                        self.state.send_replace(LinkState::Connecting);
                    } else {
                        debug!(broker = %self.cfg.broker(), error = %e, "MQTT connect failed.");
                    }
                    let since = *down_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= self.cfg.connect_timeout {
                        self.state.send_replace(LinkState::Failed(e.to_string()));
                        // Wake every sender and the drain: nothing more will be acked.
                        self.window.close();
                        break;
                    }
                    // Never sleep past the deadline: fail on time.
                    let nap = backoff.min(self.cfg.connect_timeout.saturating_sub(since.elapsed()));
                    tokio::select! {
                        biased;
                        _ = self.stop.changed() => break,
                        _ = tokio::time::sleep(nap) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        self.reconnects
    }

    async fn handle(&mut self, ev: Event) {
        match ev {
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                let outcome = lock(&self.tracker).on_outgoing_publish(pkid);
                match outcome {
                    OutgoingPublish::AwaitingAck { id } => {
                        self.deliver(Delivery::Sent { id }).await
                    }
                    OutgoingPublish::Written { id, message: _ } => {
                        self.deliver(Delivery::Sent { id }).await;
                        self.window.add_permits(1);
                    }
                    OutgoingPublish::Retransmission => debug!(pkid, "Retransmitted."),
                    OutgoingPublish::Replaced { id, lost } => {
                        warn!(
                            pkid,
                            lost = lost.0,
                            "Packet id reused while still mapped; the older message is lost."
                        );
                        self.complete(Delivery::Lost { id: lost.0 }).await;
                        self.deliver(Delivery::Sent { id }).await;
                    }
                    OutgoingPublish::Unexpected => {
                        warn!(pkid, "Outgoing publish with nothing queued.")
                    }
                }
            }
            Event::Outgoing(Outgoing::AwaitAck(pkid)) => {
                warn!(
                    pkid,
                    "Broker acked out of order; rumqttc holds a colliding publish."
                );
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                let acked = lock(&self.tracker).on_puback(ack.pkid);
                match acked {
                    Some((_, t)) => {
                        let latency = t.at.elapsed();
                        self.complete(Delivery::Acked {
                            message: t.message,
                            latency,
                        })
                        .await;
                    }
                    None => debug!(pkid = ack.pkid, "PUBACK for an unknown packet id."),
                }
            }
            Event::Outgoing(Outgoing::Disconnect) => {
                self.state.send_replace(LinkState::Connecting);
            }
            _ => {}
        }
    }

    async fn deliver(&self, d: Delivery) {
        // The receiver is gone only when the run is over; nothing left to tell.
        let _ = self.deliveries.send(d).await;
    }

    /// Reports a message as finished and frees its window slot.
    async fn complete(&self, d: Delivery) {
        self.deliver(d).await;
        self.window.add_permits(1);
    }
}
