//! The CoAP transport: each message is one confirmable (CON) `POST
//! coap://{target}/{path}` to the gateway's CoAP source, Content-Format 110
//! (`application/senml+json`).
//!
//! A message counts as acked only on a **2.04 Changed**, piggybacked on the
//! ACK or sent as a separate response after an empty ACK: the gateway's answer
//! once the readings are durable. Every other answer is classified by
//! [`classify`]:
//! - no answer: the request is retransmitted with RFC 7252's backoff (the first
//!   timeout random in [ACK_TIMEOUT, ACK_TIMEOUT × ACK_RANDOM_FACTOR] = [2 s,
//!   3 s], doubled per retransmission, at most MAX_RETRANSMIT = 4 times);
//! - 5.xx (5.03: no room, or the commit failed), a Reset, or an exchange whose
//!   retransmissions ran out: the message is sent again as a **new** exchange
//!   (new Message ID and token) after Max-Age or a short backoff, until
//!   `retry_deadline` after it was handed over; then it is [`Delivery::Lost`].
//!   If nothing was ever heard from the gateway by then, the transport fails
//!   as a whole, as the HTTP transport does when it cannot connect.
//! - 4.xx and any other 2.xx are [`Delivery::Rejected`] (status `c×100+dd`,
//!   e.g. 415), never retried.
//!
//! A retransmission the gateway already committed is answered from its
//! Message ID cache; a new exchange after a lost answer may be stored twice in
//! the outbox, and the sink keeps one row per reading identity.
//!
//! Concurrency: at most `max_inflight` messages are without a final answer
//! (RFC 7252's NSTART is 1; a gateway on the same network can take more, and
//! the window is the bound). One task owns the UDP socket and every exchange.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use rand::Rng;
use tokio::net::UdpSocket;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::{CloseReport, Delivery, OutMessage, Transport, TransportError};

/// RFC 7252 §4.8 transmission parameters.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(2);
pub const ACK_RANDOM_FACTOR: f64 = 1.5;
pub const MAX_RETRANSMIT: u32 = 4;
/// `application/senml+json`.
pub const CF_SENML_JSON: u8 = 110;
/// The gateway's default readings resource.
pub const DEFAULT_PATH: &str = "readings";
/// Delay before a new exchange after a Reset or an exhausted one.
const RETRY_DELAY: Duration = Duration::from_millis(200);
/// A Max-Age longer than this is not believed.
const MAX_AGE_CAP: Duration = Duration::from_secs(5);

/// Where to post and how.
#[derive(Clone, Debug)]
pub struct CoapConfig {
    /// The gateway's CoAP socket, `HOST:PORT`.
    pub target: String,
    /// The resource, without slashes at its ends.
    pub path: String,
    /// Most messages handed over and without a final answer (1..=65535).
    pub max_inflight: u16,
    /// How long one message is retried after it was handed over.
    pub retry_deadline: Duration,
}

impl CoapConfig {
    pub fn uri(&self) -> String {
        format!("coap://{}/{}", self.target, self.path)
    }
}

/// What to do after an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// 2.04: the readings are durable at the gateway.
    Acked,
    /// Send again as a new exchange (after the delay, if any).
    Retry(Option<Duration>),
    /// Final refusal, with the code as `c×100+dd`.
    Rejected(u16),
}

/// `c.dd` as a number `c×100+dd` (4.15 → 415).
pub fn status_number(code: MessageClass) -> u16 {
    let c = u8::from(code);
    u16::from(c >> 5) * 100 + u16::from(c & 0x1f)
}

/// The retry rule (see the module docs). `max_age` is the response's Max-Age.
pub fn classify(code: MessageClass, max_age: Option<u64>) -> Verdict {
    match code {
        MessageClass::Response(ResponseType::Changed) => Verdict::Acked,
        c if (500..600).contains(&status_number(c)) => {
            Verdict::Retry(max_age.map(|s| Duration::from_secs(s).min(MAX_AGE_CAP)))
        }
        c => Verdict::Rejected(status_number(c)),
    }
}

/// The first retransmission timeout: random in [ACK_TIMEOUT, ACK_TIMEOUT × ACK_RANDOM_FACTOR].
pub fn initial_timeout() -> Duration {
    let f = rand::rng().random_range(1.0..=ACK_RANDOM_FACTOR);
    ACK_TIMEOUT.mul_f64(f)
}

/// Encodes a CON POST.
pub fn request(message_id: u16, token: u64, path: &str, payload: &[u8]) -> Vec<u8> {
    let mut p = Packet::new();
    p.header.set_type(MessageType::Confirmable);
    p.header.code = MessageClass::Request(RequestType::Post);
    p.header.message_id = message_id;
    p.set_token(token.to_be_bytes().to_vec());
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
    }
    p.add_option(CoapOption::ContentFormat, vec![CF_SENML_JSON]);
    p.payload = payload.to_vec();
    // Only a size limit can fail, and there is none here.
    p.to_bytes_unlimited().unwrap_or_default()
}

fn empty_ack(message_id: u16) -> Vec<u8> {
    let mut p = Packet::new();
    p.header.set_type(MessageType::Acknowledgement);
    p.header.code = MessageClass::Empty;
    p.header.message_id = message_id;
    p.to_bytes_unlimited().unwrap_or_default()
}

/// One message and its current exchange.
#[derive(Debug)]
struct Exchange {
    msg: OutMessage,
    handed_over: Instant,
    _permit: OwnedSemaphorePermit,
    message_id: u16,
    /// The datagram, resent as is on retransmission.
    datagram: Vec<u8>,
    retransmissions: u32,
    timeout: Duration,
    /// When to retransmit (or, while waiting for a separate response or a
    /// retry delay, when to act next).
    next_at: Instant,
    /// An empty ACK came: no more retransmissions, a separate response follows.
    awaiting_separate: bool,
    /// Not yet sent (waiting out a retry delay).
    waiting: bool,
}

/// State of the socket task.
struct Driver {
    cfg: CoapConfig,
    socket: UdpSocket,
    deliveries: mpsc::Sender<Delivery>,
    shared: Arc<SharedState>,
    /// By token.
    exchanges: HashMap<u64, Exchange>,
    /// Message ID → token of the current exchange.
    by_mid: HashMap<u16, u64>,
    next_mid: u16,
    next_token: u64,
    heard_from_peer: bool,
}

#[derive(Debug)]
struct SharedState {
    window: Arc<Semaphore>,
    failure: Mutex<Option<String>>,
}

impl SharedState {
    fn fail(&self, why: String) {
        self.failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_or_insert(why);
        self.window.close();
    }
}

type Handover = (OutMessage, OwnedSemaphorePermit, Instant);

impl Driver {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Handover>) {
        let mut buf = vec![0u8; 4096];
        let mut open = true;
        loop {
            if !open && self.exchanges.is_empty() {
                return;
            }
            let wake = self
                .exchanges
                .values()
                .map(|e| e.next_at)
                .min()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            tokio::select! {
                m = rx.recv(), if open => match m {
                    Some((msg, permit, handed_over)) => self.start(msg, permit, handed_over).await,
                    None => open = false,
                },
                r = self.socket.recv(&mut buf) => match r {
                    Ok(n) => {
                        let datagram = buf[..n].to_vec();
                        self.on_datagram(&datagram).await;
                    }
                    // ICMP port unreachable while the gateway is down: keep going.
                    Err(e) => debug!(error = %e, "CoAP receive error."),
                },
                _ = tokio::time::sleep_until(wake.into()) => self.on_timers().await,
            }
        }
    }

    fn token(&mut self) -> u64 {
        self.next_token = self.next_token.wrapping_add(1);
        self.next_token
    }

    async fn start(&mut self, msg: OutMessage, permit: OwnedSemaphorePermit, handed_over: Instant) {
        let token = self.token();
        let mut e = Exchange {
            msg,
            handed_over,
            _permit: permit,
            message_id: 0,
            datagram: Vec::new(),
            retransmissions: 0,
            timeout: Duration::ZERO,
            next_at: handed_over,
            awaiting_separate: false,
            waiting: false,
        };
        let id = e.msg.id;
        self.transmit_new(token, &mut e).await;
        self.exchanges.insert(token, e);
        let _ = self.deliveries.send(Delivery::Sent { id }).await;
    }

    /// Starts a new exchange for `e` (new Message ID) and sends it.
    async fn transmit_new(&mut self, token: u64, e: &mut Exchange) {
        self.next_mid = self.next_mid.wrapping_add(1);
        self.by_mid.remove(&e.message_id);
        e.message_id = self.next_mid;
        self.by_mid.insert(e.message_id, token);
        e.datagram = request(e.message_id, token, &self.cfg.path, &e.msg.payload);
        e.retransmissions = 0;
        e.timeout = initial_timeout();
        e.next_at = Instant::now() + e.timeout;
        e.awaiting_separate = false;
        e.waiting = false;
        if let Err(err) = self.socket.send(&e.datagram).await {
            debug!(error = %err, "CoAP send failed; the retransmission timer covers it.");
        }
    }

    async fn on_timers(&mut self) {
        let now = Instant::now();
        let due: Vec<u64> = self
            .exchanges
            .iter()
            .filter(|(_, e)| e.next_at <= now)
            .map(|(t, _)| *t)
            .collect();
        for token in due {
            let Some(mut e) = self.exchanges.remove(&token) else {
                continue;
            };
            let deadline = e.handed_over + self.cfg.retry_deadline;
            if e.waiting {
                self.transmit_new(token, &mut e).await;
                self.exchanges.insert(token, e);
            } else if e.awaiting_separate || e.retransmissions >= MAX_RETRANSMIT {
                // No separate response, or no answer at all: a new exchange, or give up.
                self.retry(token, e, Some(RETRY_DELAY), deadline, "no answer")
                    .await;
            } else if now >= deadline {
                self.lose(token, e, "no answer before the deadline").await;
            } else {
                e.retransmissions += 1;
                e.timeout *= 2;
                e.next_at = now + e.timeout;
                if let Err(err) = self.socket.send(&e.datagram).await {
                    debug!(error = %err, "CoAP retransmission failed.");
                }
                self.exchanges.insert(token, e);
            }
        }
    }

    /// Schedules a new exchange after `delay`, or loses the message past its deadline.
    async fn retry(
        &mut self,
        token: u64,
        mut e: Exchange,
        delay: Option<Duration>,
        deadline: Instant,
        why: &str,
    ) {
        let jitter = rand::rng().random_range(Duration::ZERO..=RETRY_DELAY);
        let at = Instant::now() + delay.unwrap_or(RETRY_DELAY) + jitter;
        if at >= deadline {
            self.lose(token, e, why).await;
            return;
        }
        debug!(id = e.msg.id, why, "Retrying as a new exchange.");
        self.by_mid.remove(&e.message_id);
        e.waiting = true;
        e.next_at = at;
        self.exchanges.insert(token, e);
    }

    async fn lose(&mut self, _token: u64, e: Exchange, why: &str) {
        self.by_mid.remove(&e.message_id);
        warn!(id = e.msg.id, why, deadline = ?self.cfg.retry_deadline, "No 2.04 before the deadline; the message is lost.");
        if !self.heard_from_peer {
            self.shared
                .fail(format!("no answer from {} ({why})", self.cfg.uri()));
        }
        let _ = self.deliveries.send(Delivery::Lost { id: e.msg.id }).await;
    }

    async fn on_datagram(&mut self, datagram: &[u8]) {
        let Ok(p) = Packet::from_bytes(datagram) else {
            debug!("Malformed datagram from the gateway ignored.");
            return;
        };
        self.heard_from_peer = true;
        let mid = p.header.message_id;
        let token = match p.header.get_type() {
            MessageType::Acknowledgement | MessageType::Reset => {
                let Some(token) = self.by_mid.get(&mid).copied() else {
                    return; // a late answer to an exchange already replaced
                };
                token
            }
            t => {
                // A separate response: acknowledge a CON one, match by token.
                if t == MessageType::Confirmable {
                    let _ = self.socket.send(&empty_ack(mid)).await;
                }
                let Ok(bytes) = <[u8; 8]>::try_from(p.get_token()) else {
                    return;
                };
                u64::from_be_bytes(bytes)
            }
        };
        let Some(mut e) = self.exchanges.remove(&token) else {
            return;
        };
        if e.waiting {
            self.exchanges.insert(token, e);
            return;
        }
        let deadline = e.handed_over + self.cfg.retry_deadline;
        match (p.header.get_type(), p.header.code) {
            (MessageType::Reset, _) => {
                self.retry(token, e, None, deadline, "reset").await;
            }
            (MessageType::Acknowledgement, MessageClass::Empty) => {
                e.awaiting_separate = true;
                e.next_at = deadline.max(Instant::now());
                self.exchanges.insert(token, e);
            }
            (_, code) => {
                let max_age = p
                    .get_first_option(CoapOption::MaxAge)
                    .filter(|v| v.len() <= 4)
                    .map(|v| v.iter().fold(0u64, |a, b| (a << 8) | u64::from(*b)));
                match classify(code, max_age) {
                    Verdict::Acked => {
                        self.by_mid.remove(&e.message_id);
                        let latency = e.handed_over.elapsed();
                        let _ = self
                            .deliveries
                            .send(Delivery::Acked {
                                message: e.msg,
                                latency,
                            })
                            .await;
                    }
                    Verdict::Retry(delay) => {
                        self.retry(token, e, delay, deadline, "5.xx").await;
                    }
                    Verdict::Rejected(status) => {
                        self.by_mid.remove(&e.message_id);
                        warn!(id = e.msg.id, code = %code, answer = %String::from_utf8_lossy(&p.payload),
                            "Message rejected by the gateway; not retried.");
                        let _ = self
                            .deliveries
                            .send(Delivery::Rejected {
                                id: e.msg.id,
                                status,
                            })
                            .await;
                    }
                }
            }
        }
    }
}

/// Posts messages to the gateway's CoAP source and reports 2.04s as acks.
#[derive(Debug)]
pub struct CoapTransport {
    cfg: CoapConfig,
    shared: Arc<SharedState>,
    tx: Option<mpsc::UnboundedSender<Handover>>,
    driver: JoinHandle<()>,
}

impl CoapTransport {
    /// Resolves the target and binds a UDP socket connected to it.
    pub async fn new(
        cfg: CoapConfig,
        deliveries: mpsc::Sender<Delivery>,
    ) -> Result<Self, TransportError> {
        let target: SocketAddr = tokio::net::lookup_host(&cfg.target)
            .await
            .map_err(|e| TransportError::Client(format!("cannot resolve {}: {e}", cfg.target)))?
            .next()
            .ok_or_else(|| TransportError::Client(format!("{} has no address", cfg.target)))?;
        let local: SocketAddr = if target.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let socket = UdpSocket::bind(local)
            .await
            .map_err(|e| TransportError::Client(format!("cannot bind a UDP socket: {e}")))?;
        socket
            .connect(target)
            .await
            .map_err(|e| TransportError::Client(format!("cannot reach {target}: {e}")))?;
        let shared = Arc::new(SharedState {
            window: Arc::new(Semaphore::new(usize::from(cfg.max_inflight.max(1)))),
            failure: Mutex::new(None),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let driver = Driver {
            cfg: cfg.clone(),
            socket,
            deliveries,
            shared: shared.clone(),
            exchanges: HashMap::new(),
            by_mid: HashMap::new(),
            next_mid: rand::random(),
            next_token: rand::random(),
            heard_from_peer: false,
        };
        let driver = tokio::spawn(driver.run(rx));
        Ok(CoapTransport {
            cfg,
            shared,
            tx: Some(tx),
            driver,
        })
    }

    fn failure(&self) -> TransportError {
        let last_error = self
            .shared
            .failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        match last_error {
            Some(last_error) => TransportError::Disconnected {
                broker: self.cfg.uri(),
                timeout: self.cfg.retry_deadline,
                last_error,
            },
            None => TransportError::Stopped,
        }
    }
}

impl Transport for CoapTransport {
    async fn send(&mut self, msg: OutMessage) -> Result<(), TransportError> {
        let permit = self
            .shared
            .window
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| self.failure())?;
        let tx = self.tx.as_ref().ok_or(TransportError::Stopped)?;
        tx.send((msg, permit, Instant::now()))
            .map_err(|_| TransportError::Stopped)?;
        Ok(())
    }

    async fn close(mut self, drain: Duration) -> Result<CloseReport, TransportError> {
        let total = u32::from(self.cfg.max_inflight.max(1));
        // No new messages; the driver ends once every exchange has its final answer.
        self.tx = None;
        let drained = tokio::time::timeout(drain, self.shared.window.acquire_many(total)).await;
        let failed = matches!(drained, Ok(Err(_)));
        let unconfirmed = match &drained {
            Ok(Ok(_)) => 0,
            _ => u64::from(total).saturating_sub(self.shared.window.available_permits() as u64),
        };
        self.driver.abort();
        if failed {
            return Err(self.failure());
        }
        if drained.is_err() {
            warn!(unconfirmed, drain = ?drain, "Drain timed out with messages still without a 2.04.");
        }
        Ok(CloseReport {
            unconfirmed,
            reconnects: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_2_04_is_an_ack_5xx_is_retried_and_4xx_rejected() {
        assert_eq!(
            classify(MessageClass::Response(ResponseType::Changed), None),
            Verdict::Acked
        );
        assert_eq!(
            classify(
                MessageClass::Response(ResponseType::ServiceUnavailable),
                Some(1)
            ),
            Verdict::Retry(Some(Duration::from_secs(1)))
        );
        assert_eq!(
            classify(
                MessageClass::Response(ResponseType::ServiceUnavailable),
                Some(3600)
            ),
            Verdict::Retry(Some(MAX_AGE_CAP))
        );
        assert_eq!(
            classify(
                MessageClass::Response(ResponseType::InternalServerError),
                None
            ),
            Verdict::Retry(None)
        );
        for (code, n) in [
            (ResponseType::UnsupportedContentFormat, 415),
            (ResponseType::RequestEntityTooLarge, 413),
            (ResponseType::BadRequest, 400),
            (ResponseType::Created, 201),
            (ResponseType::Content, 205),
        ] {
            assert_eq!(
                classify(MessageClass::Response(code), None),
                Verdict::Rejected(n)
            );
        }
    }

    #[test]
    fn the_first_timeout_follows_rfc_7252() {
        for _ in 0..100 {
            let t = initial_timeout();
            assert!(
                (ACK_TIMEOUT..=ACK_TIMEOUT.mul_f64(ACK_RANDOM_FACTOR)).contains(&t),
                "{t:?}"
            );
        }
    }

    #[test]
    fn requests_are_con_posts_with_senml_json() {
        let bytes = request(0x1234, 7, "readings", b"[]");
        let p = Packet::from_bytes(&bytes).unwrap();
        assert_eq!(p.header.get_type(), MessageType::Confirmable);
        assert_eq!(p.header.code, MessageClass::Request(RequestType::Post));
        assert_eq!(p.header.message_id, 0x1234);
        assert_eq!(p.get_token(), &7u64.to_be_bytes());
        assert_eq!(
            p.get_first_option(CoapOption::ContentFormat),
            Some(&vec![110])
        );
        assert_eq!(
            p.get_first_option(CoapOption::UriPath),
            Some(&b"readings".to_vec())
        );
        assert_eq!(p.payload, b"[]");
    }

    fn message(id: u64) -> OutMessage {
        let r =
            protocol::Reading::new("pump-0001", "flow", protocol::Timestamp(1 << 62), 1.5).unwrap();
        OutMessage {
            id,
            topic: String::new(),
            payload: protocol::senml::encode_json(std::slice::from_ref(&r)),
            readings: vec![r],
        }
    }

    /// A peer that drops the first `drop` requests, answers the next one 5.03,
    /// then 2.04 (piggybacked), and counts requests.
    async fn peer(drop: usize) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = seen.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut n_req = 0usize;
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let req = Packet::from_bytes(&buf[..n]).unwrap();
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                n_req += 1;
                if n_req <= drop {
                    continue;
                }
                let mut p = Packet::new();
                p.header.set_type(MessageType::Acknowledgement);
                p.header.message_id = req.header.message_id;
                p.set_token(req.get_token().to_vec());
                if n_req == drop + 1 {
                    p.header.code = MessageClass::Response(ResponseType::ServiceUnavailable);
                    p.add_option(CoapOption::MaxAge, vec![0]);
                } else {
                    p.header.code = MessageClass::Response(ResponseType::Changed);
                }
                socket
                    .send_to(&p.to_bytes_unlimited().unwrap(), from)
                    .await
                    .unwrap();
            }
        });
        (addr, seen)
    }

    #[tokio::test]
    async fn a_lost_request_is_retransmitted_a_5_03_retried_and_a_2_04_acks() {
        let (addr, seen) = peer(1).await;
        let (tx, mut rx) = mpsc::channel(16);
        let mut t = CoapTransport::new(
            CoapConfig {
                target: addr.to_string(),
                path: DEFAULT_PATH.into(),
                max_inflight: 4,
                retry_deadline: Duration::from_secs(30),
            },
            tx,
        )
        .await
        .unwrap();
        t.send(message(1)).await.unwrap();
        let report = t.close(Duration::from_secs(20)).await.unwrap();
        assert_eq!(report.unconfirmed, 0);
        let mut events = Vec::new();
        while let Ok(d) = rx.try_recv() {
            events.push(match d {
                Delivery::Sent { id } => format!("sent {id}"),
                Delivery::Acked { message, .. } => format!("acked {}", message.id),
                Delivery::Lost { id } => format!("lost {id}"),
                Delivery::Rejected { id, status } => format!("rejected {id} {status}"),
            });
        }
        assert_eq!(events, ["sent 1", "acked 1"]);
        assert_eq!(
            seen.load(std::sync::atomic::Ordering::SeqCst),
            3,
            "dropped, retransmitted (5.03), new exchange (2.04)"
        );
    }

    #[tokio::test]
    async fn a_silent_target_loses_the_message_at_the_deadline_and_fails_the_transport() {
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let mut t = CoapTransport::new(
            CoapConfig {
                target: silent.local_addr().unwrap().to_string(),
                path: DEFAULT_PATH.into(),
                max_inflight: 1,
                retry_deadline: Duration::from_millis(500),
            },
            tx,
        )
        .await
        .unwrap();
        t.send(message(1)).await.unwrap();
        let second = tokio::time::timeout(Duration::from_secs(15), t.send(message(2)))
            .await
            .expect("a failed transport wakes the sender");
        assert!(
            matches!(second, Err(TransportError::Disconnected { .. })),
            "{second:?}"
        );
        assert!(t.close(Duration::from_secs(1)).await.is_err());
        let mut lost = false;
        while let Ok(d) = rx.try_recv() {
            lost |= matches!(d, Delivery::Lost { id: 1 });
        }
        assert!(lost);
    }
}
