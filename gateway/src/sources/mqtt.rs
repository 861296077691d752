//! MQTT source (rumqttc): subscribe, decode, hand envelopes to ingest, and
//! PUBACK only after the ingest stage says the message is durable.
//!
//! - Persistent session (`clean_session = false`) and QoS 1 subscriptions: the
//!   broker keeps what we have not acknowledged across our restarts.
//! - Manual acks, sent by one "acker" task that awaits each message's commit
//!   result in arrival order, so PUBACKs leave in the order the PUBLISHes came
//!   in (MQTT 3.1.1 §4.6.0-2). rumqttd was seen to lose a message for good when
//!   acked out of order.
//! - If a commit fails, acking stops and the connection is dropped, so the
//!   broker redelivers everything unacknowledged after we reconnect.
//! - Reconnects with exponential backoff and jitter.

use std::collections::VecDeque;
use std::time::Duration;

use protocol::{DecodeContext, DecodeLimits, PayloadFormat, Timestamp};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS, TlsConfiguration, Transport};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use crate::backoff::Backoff;
use crate::config::{MqttConfig, MqttMode, Subscription};
use crate::envelope::{Commit, Content, Envelope};
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum MqttSourceError {
    #[error("cannot read {path}: {source}")]
    ReadFile {
        path: String,
        source: std::io::Error,
    },
}

/// Where and how to connect to the broker of `cfg` (host and port, also for
/// the embedded broker; keep-alive, credentials, TLS), as `client_id`. Shared
/// by the source and the alert publisher; each sets its session options.
pub fn connection_options(
    cfg: &MqttConfig,
    client_id: String,
) -> Result<MqttOptions, MqttSourceError> {
    let (host, port) = match cfg.mode {
        MqttMode::External => (cfg.host.clone(), cfg.port),
        MqttMode::Embedded => {
            let listen = cfg.embedded.listen;
            let ip = if listen.ip().is_unspecified() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                listen.ip()
            };
            (ip.to_string(), listen.port())
        }
    };
    let mut o = MqttOptions::new(client_id, host, port);
    o.set_keep_alive(cfg.keep_alive);
    if let Some(user) = &cfg.username {
        o.set_credentials(user.clone(), cfg.password.clone().unwrap_or_default());
    }
    if let Some(tls) = &cfg.tls {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|source| MqttSourceError::ReadFile {
                path: p.display().to_string(),
                source,
            })
        };
        let ca = read(&tls.ca_file)?;
        let client_auth = match (&tls.client_cert, &tls.client_key) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            _ => None,
        };
        o.set_transport(Transport::Tls(TlsConfiguration::Simple {
            ca,
            alpn: None,
            client_auth,
        }));
    }
    Ok(o)
}

/// How long to keep the connection alive after shutdown begins, so the acks of
/// messages already committed can still reach the broker.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct MqttSource {
    cfg: MqttConfig,
    limits: DecodeLimits,
    metrics: Metrics,
    /// Bytes of a rejected payload kept for quarantine.
    quarantine_payload_bytes: usize,
    /// New subscription lists from a config reload (SIGHUP).
    subs_rx: Option<watch::Receiver<Vec<Subscription>>>,
}

/// A message waiting for its commit result before it can be acked.
struct PendingAck {
    publish: Publish,
    done: oneshot::Receiver<Commit>,
    /// Which connection (counted from 1) delivered it.
    connection: u64,
}

impl MqttSource {
    pub fn new(
        cfg: MqttConfig,
        limits: DecodeLimits,
        metrics: Metrics,
        quarantine_payload_bytes: usize,
    ) -> Self {
        MqttSource {
            cfg,
            limits,
            metrics,
            quarantine_payload_bytes,
            subs_rx: None,
        }
    }

    /// Follow subscription changes sent on `rx` (config reload): topics no
    /// longer listed are unsubscribed, new ones subscribed, and formats and
    /// device levels apply to the next message.
    pub fn with_subscription_updates(mut self, rx: watch::Receiver<Vec<Subscription>>) -> Self {
        self.subs_rx = Some(rx);
        self
    }

    fn options(&self) -> Result<MqttOptions, MqttSourceError> {
        let mut o = connection_options(&self.cfg, self.cfg.client_id.clone())?;
        o.set_clean_session(!self.cfg.persistent_session);
        o.set_manual_acks(true);
        o.set_inflight(self.cfg.inflight);
        // Room for the largest accepted payload plus topic and headers; a bigger
        // packet is refused by rumqttc with an error instead of being buffered.
        let max = self.limits.max_bytes.saturating_add(64 * 1024);
        o.set_max_packet_size(max, max);
        Ok(o)
    }

    /// Runs until `shutdown` flips to true; then drains pending acks and disconnects.
    /// Dropping `tx` (on return) tells the ingest stage this source is done.
    ///
    /// Decoded messages wait in a staging queue until the ingest queue has
    /// room. While `mqtt.max_pending_messages` are staged the event loop is not
    /// polled: the socket is not read and TCP pushes back on the broker. (The
    /// broker's inflight window cannot be relied on for this: Mosquitto 2.0.11
    /// was measured sending thousands of unacked QoS 1 messages at once.)
    ///
    /// Nothing in this loop waits on the ack path. rumqttc sends queued PUBACKs
    /// only while polled, so a poll loop blocked on acks deadlocks (an earlier
    /// version did; see ARCHITECTURE.md). Staging drains as ingest consumes,
    /// independent of acks, so polling always resumes.
    pub async fn run(
        self,
        tx: mpsc::Sender<Envelope>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), MqttSourceError> {
        let options = self.options()?;
        let (client, mut eventloop) =
            AsyncClient::new(options, usize::from(self.cfg.inflight).max(16) * 2);
        // Both unbounded on purpose (a bounded channel could block the poll
        // loop): every entry is a message already handed to ingest, so their
        // length is bounded by the ingest queue plus one commit group.
        let (ack_tx, ack_rx) = mpsc::unbounded_channel::<PendingAck>();
        let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<AckEvent>();
        let acker = tokio::spawn(ack_in_order(ack_rx, ready_tx));
        let mut connection = 0u64;
        let mut gate = AckGate::default();
        let mut pending_subscribes: Vec<String> = Vec::new();
        let mut staging: VecDeque<Staged> = VecDeque::new();
        let mut backoff = Backoff::new(self.cfg.reconnect_min, self.cfg.reconnect_max);
        let mut subs = self.cfg.subscriptions.clone();
        let mut subs_rx = self.subs_rx.clone();
        let mut pending_unsubscribes: Vec<String> = Vec::new();

        loop {
            self.send_acks(&mut gate, &client);
            pending_unsubscribes.retain(|t| client.try_unsubscribe(t.clone()).is_err());
            pending_subscribes
                .retain(|t| client.try_subscribe(t.clone(), QoS::AtLeastOnce).is_err());
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                changed = async {
                    match subs_rx.as_mut() {
                        Some(rx) => rx.changed().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let Some(rx) = subs_rx.as_mut().filter(|_| changed.is_ok()) else {
                        subs_rx = None;
                        continue;
                    };
                    let new = rx.borrow_and_update().clone();
                    let (add, remove) = subscription_changes(&subs, &new);
                    info!(subscribe = ?add, unsubscribe = ?remove, "MQTT subscriptions reloaded.");
                    pending_subscribes.retain(|t| !remove.contains(t));
                    pending_subscribes.extend(add);
                    pending_unsubscribes.extend(remove);
                    subs = new;
                }
                Some(event) = ready_rx.recv() => match event {
                    AckEvent::Ack(ack) => gate.push(ack),
                    AckEvent::Failed { connection } => {
                        if gate.is_live(connection) {
                            warn!("A commit failed; reconnecting so the broker redelivers unacknowledged messages.");
                            gate.disconnected();
                            self.metrics.mqtt_connected.set(0);
                            eventloop.clean();
                        }
                    }
                },
                permit = tx.reserve(), if !staging.is_empty() => {
                    let Ok(permit) = permit else { break };
                    if let Some(staged) = staging.pop_front() {
                        permit.send(staged.envelope);
                        if let Some(pending) = staged.ack {
                            let _ = ack_tx.send(pending);
                        }
                    }
                }
                ev = eventloop.poll(), if staging.len() < self.cfg.max_pending_messages => match ev {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Some(staged) = self.stage(p, connection, &subs) {
                            staging.push_back(staged);
                        }
                    }
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        connection += 1;
                        gate.connected(connection);
                        info!(session_present = ack.session_present, "Connected to MQTT broker.");
                        self.metrics.mqtt_connected.set(1);
                        self.metrics.mqtt_connections.inc();
                        backoff.reset();
                        pending_subscribes = subs.iter().map(|s| s.topic.clone()).collect();
                    }
                    Ok(Event::Incoming(Packet::SubAck(s))) => {
                        if s.return_codes.iter().any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)) {
                            error!(pkid = s.pkid, "Broker refused a subscription.");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        // rumqttc has dropped the PUBACKs it had queued; ours
                        // for this connection are stale from now on.
                        gate.disconnected();
                        self.metrics.mqtt_connected.set(0);
                        let delay = backoff.next_delay();
                        warn!(error = %e, retry_in = ?delay, "MQTT connection failed.");
                        tokio::select! {
                            _ = shutdown.changed() => break,
                            () = tokio::time::sleep(delay) => {}
                        }
                    }
                }
            }
        }

        // Shutdown: staged messages are not forwarded (never acked, so the
        // broker redelivers them); no new messages go to ingest (drop our
        // sender); keep the connection polled until every committed message
        // has been acked.
        drop(staging);
        drop(tx);
        drop(ack_tx);
        let deadline = tokio::time::sleep(DRAIN_DEADLINE);
        tokio::pin!(deadline);
        let mut acker_done = false;
        loop {
            self.send_acks(&mut gate, &client);
            if acker_done && gate.is_empty() {
                break;
            }
            tokio::select! {
                event = ready_rx.recv(), if !acker_done => match event {
                    Some(AckEvent::Ack(ack)) => gate.push(ack),
                    Some(AckEvent::Failed { .. }) => {}
                    None => acker_done = true,
                },
                () = &mut deadline => {
                    warn!("Gave up waiting for pending acks; the broker will redeliver them.");
                    break;
                }
                ev = eventloop.poll() => match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        connection += 1;
                        gate.connected(connection);
                    }
                    Ok(_) => {}
                    Err(_) => {
                        gate.disconnected();
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        acker.abort();
        // Push the queued PUBACKs out, then disconnect cleanly.
        if client.try_disconnect().is_ok() {
            let flush_deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            while tokio::time::Instant::now() < flush_deadline {
                match tokio::time::timeout_at(flush_deadline, eventloop.poll()).await {
                    Ok(Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)))
                    | Ok(Err(_))
                    | Err(_) => break,
                    Ok(Ok(_)) => {}
                }
            }
        }
        self.metrics.mqtt_connected.set(0);
        info!("MQTT source stopped.");
        Ok(())
    }

    /// Queues every ready PUBACK for the live connection with rumqttc (stale
    /// ones are dropped: the broker redelivers those messages), until its
    /// request channel is full; the next poll drains it.
    fn send_acks(&self, gate: &mut AckGate, client: &AsyncClient) {
        let stale = gate.send_ready(|publish| client.try_ack(publish).is_ok());
        self.metrics.messages_acked.inc_by(stale.sent);
        self.metrics.acks_stale.inc_by(stale.dropped);
    }

    /// Decodes one PUBLISH into a staged envelope (with its pending ack for QoS 1).
    fn stage(&self, p: Publish, connection: u64, subs: &[Subscription]) -> Option<Staged> {
        self.metrics.messages_received.inc();
        let received = Timestamp::now();
        let topic = p.topic.clone();
        let sub = subs.iter().find(|s| topic_matches(&s.topic, &topic));
        let format = sub.map_or(PayloadFormat::Auto, |s| s.format);
        let device = sub
            .and_then(|s| s.device_from_topic_level)
            .and_then(|level| topic.split('/').nth(level));
        let ctx = DecodeContext::new(received).with_device(device);
        let content = match format.decode(&p.payload, &ctx, &self.limits) {
            Ok(readings) => {
                self.metrics.readings_received.inc_by(readings.len() as u64);
                Content::Readings(readings)
            }
            Err(error) => {
                debug!(topic = %topic, error = %error, "Payload rejected.");
                let kept = p.payload.len().min(self.quarantine_payload_bytes);
                Content::Rejected {
                    error,
                    payload: p.payload[..kept].to_vec(),
                    payload_len: p.payload.len(),
                }
            }
        };
        let origin = format!("mqtt:{topic}");
        if p.qos == QoS::AtMostOnce {
            return Some(Staged {
                envelope: Envelope::unacked(origin, received, content),
                ack: None,
            });
        }
        let (envelope, done) = Envelope::new(origin, received, content);
        // Keep only what the PUBACK needs: holding the original would keep its
        // payload — and the network buffer it is a slice of — alive until the ack.
        let mut ack = Publish::new(String::new(), p.qos, Vec::new());
        ack.pkid = p.pkid;
        Some(Staged {
            envelope,
            ack: Some(PendingAck {
                publish: ack,
                done,
                connection,
            }),
        })
    }
}

/// A decoded message waiting for room in the ingest queue.
struct Staged {
    envelope: Envelope,
    ack: Option<PendingAck>,
}

/// Awaits commit results strictly in arrival order and reports each as an
/// [`AckEvent`] to the source task, which alone talks to rumqttc.
///
/// When a commit fails, that message and every later one received on the same
/// connection are left unacknowledged and the connection is dropped: the broker
/// redelivers all of them, in order, on the next connection.
async fn ack_in_order(
    mut rx: mpsc::UnboundedReceiver<PendingAck>,
    ready: mpsc::UnboundedSender<AckEvent>,
) {
    let mut poisoned: Option<u64> = None;
    while let Some(PendingAck {
        publish,
        done,
        connection,
    }) = rx.recv().await
    {
        let result = done.await;
        if poisoned.is_some_and(|g| connection <= g) {
            continue;
        }
        let event = match result {
            Ok(Commit::Durable) => AckEvent::Ack(ReadyAck {
                publish,
                connection,
            }),
            Ok(Commit::Failed(why)) => {
                error!(reason = %why, pkid = publish.pkid, "Message not stored; not acknowledging it.");
                poisoned = Some(connection);
                AckEvent::Failed { connection }
            }
            // Ingest went away (shutdown): leave it to the broker to redeliver.
            Err(_) => {
                poisoned = Some(connection);
                continue;
            }
        };
        if ready.send(event).is_err() {
            break;
        }
    }
}

/// What the acker tells the source task.
#[derive(Debug)]
enum AckEvent {
    /// Durable: this PUBACK may go out (if its connection is still the live one).
    Ack(ReadyAck),
    /// A commit failed on this connection: reconnect for redelivery.
    Failed { connection: u64 },
}

/// A PUBACK ready to send: the packet id and the connection it belongs to.
#[derive(Debug)]
struct ReadyAck {
    publish: Publish,
    connection: u64,
}

/// Which PUBACKs may go out: only those for the live connection, in order.
/// A packet id means nothing on another connection (rumqttd restarts its ids
/// per connection and drops a client that acks out of order), so acks from a
/// connection that ended are dropped; the broker redelivers those messages.
/// Plain state, no I/O.
#[derive(Debug, Default)]
struct AckGate {
    /// The connection acks may be sent on; 0 while disconnected.
    live: u64,
    ready: VecDeque<ReadyAck>,
}

#[derive(Debug, Default, PartialEq, Eq)]
struct SendReport {
    sent: u64,
    dropped: u64,
}

impl AckGate {
    fn connected(&mut self, connection: u64) {
        self.live = connection;
    }

    fn disconnected(&mut self) {
        self.live = 0;
    }

    fn is_live(&self, connection: u64) -> bool {
        self.live != 0 && self.live == connection
    }

    fn push(&mut self, ack: ReadyAck) {
        self.ready.push_back(ack);
    }

    fn is_empty(&self) -> bool {
        self.ready.is_empty()
    }

    /// Sends ready acks in order with `send` (false = no room now, try
    /// later). Acks of a connection that is no longer live are dropped: the
    /// broker redelivers those messages (while disconnected, that is all of them).
    fn send_ready(&mut self, mut send: impl FnMut(&Publish) -> bool) -> SendReport {
        let mut report = SendReport::default();
        while let Some(front) = self.ready.front() {
            if !self.is_live(front.connection) {
                self.ready.pop_front();
                report.dropped += 1;
                continue;
            }
            if !send(&front.publish) {
                break;
            }
            self.ready.pop_front();
            report.sent += 1;
        }
        report
    }
}

/// Topic filters to subscribe and to unsubscribe to go from `old` to `new`.
pub fn subscription_changes(
    old: &[Subscription],
    new: &[Subscription],
) -> (Vec<String>, Vec<String>) {
    let has = |list: &[Subscription], topic: &str| list.iter().any(|s| s.topic == topic);
    let mut add: Vec<String> = Vec::new();
    for s in new {
        if !has(old, &s.topic) && !add.contains(&s.topic) {
            add.push(s.topic.clone());
        }
    }
    let mut remove: Vec<String> = Vec::new();
    for s in old {
        if !has(new, &s.topic) && !remove.contains(&s.topic) {
            remove.push(s.topic.clone());
        }
    }
    (add, remove)
}

/// MQTT topic filter matching (`+` one level, `#` the rest).
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(pkid: u16, connection: u64) -> ReadyAck {
        let mut publish = Publish::new(String::new(), QoS::AtLeastOnce, Vec::new());
        publish.pkid = pkid;
        ReadyAck {
            publish,
            connection,
        }
    }

    #[test]
    fn acks_go_out_in_order_on_the_live_connection_and_wait_when_there_is_no_room() {
        let mut gate = AckGate::default();
        gate.connected(1);
        for pkid in 1..=4 {
            gate.push(ready(pkid, 1));
        }
        let mut sent = Vec::new();
        let report = gate.send_ready(|p| {
            if sent.len() == 2 {
                return false;
            }
            sent.push(p.pkid);
            true
        });
        assert_eq!(
            report,
            SendReport {
                sent: 2,
                dropped: 0
            }
        );
        assert_eq!(sent, vec![1, 2]);
        let report = gate.send_ready(|p| {
            sent.push(p.pkid);
            true
        });
        assert_eq!(report.sent, 2);
        assert_eq!(sent, vec![1, 2, 3, 4]);
    }

    #[test]
    fn acks_of_an_ended_connection_are_never_sent_on_the_next_one() {
        let mut gate = AckGate::default();
        gate.connected(1);
        gate.push(ready(37, 1));
        gate.disconnected();
        gate.push(ready(38, 1));
        assert_eq!(
            gate.send_ready(|_| panic!("nothing may be sent while disconnected"))
                .dropped,
            2
        );
        gate.connected(2);
        gate.push(ready(39, 1));
        gate.push(ready(1, 2));
        let mut sent = Vec::new();
        let report = gate.send_ready(|p| {
            sent.push(p.pkid);
            true
        });
        assert_eq!(
            report,
            SendReport {
                sent: 1,
                dropped: 1
            }
        );
        assert_eq!(
            sent,
            vec![1],
            "only the new connection's packet id goes out"
        );
        assert!(gate.is_empty());
    }

    #[test]
    fn a_failure_is_acted_on_only_for_the_live_connection() {
        let mut gate = AckGate::default();
        gate.connected(3);
        assert!(gate.is_live(3));
        assert!(!gate.is_live(2));
        gate.disconnected();
        assert!(!gate.is_live(3));
    }

    #[test]
    fn a_reload_subscribes_new_topics_and_unsubscribes_dropped_ones() {
        let sub = |topic: &str| Subscription {
            topic: topic.into(),
            format: PayloadFormat::Auto,
            device_from_topic_level: None,
        };
        let old = [sub("a/#"), sub("b/+")];
        let new = [sub("b/+"), sub("c/#"), sub("c/#")];
        let (add, remove) = subscription_changes(&old, &new);
        assert_eq!(add, vec!["c/#".to_owned()]);
        assert_eq!(remove, vec!["a/#".to_owned()]);
        assert_eq!(
            subscription_changes(&new, &new),
            (Vec::new(), Vec::new()),
            "no change, nothing to do"
        );
    }

    #[test]
    fn topic_filters_match_like_a_broker() {
        assert!(topic_matches("outpost/sensors/#", "outpost/sensors/p1"));
        assert!(topic_matches("outpost/sensors/#", "outpost/sensors/p1/x"));
        assert!(topic_matches("outpost/+/p1", "outpost/sensors/p1"));
        assert!(!topic_matches("outpost/+/p1", "outpost/sensors/p2"));
        assert!(!topic_matches("outpost/sensors", "outpost/sensors/p1"));
        assert!(topic_matches("#", "anything/at/all"));
    }
}
