//! CoAP source (RFC 7252, coap-lite over a tokio UDP socket): sensors POST
//! readings to `coap://gateway/{path}` (default `/readings`).
//!
//! The protocol logic is the I/O-free state machine in [`exchange`] (with the
//! Message ID cache in [`dedup`] and Block1 reassembly in [`block1`]); this
//! module owns the socket and the commit tasks:
//!
//! - One task reads datagrams and hands each to [`Exchanges::handle`]. A reply
//!   goes out at once; a payload to store is decoded and sent to the ingest
//!   queue by a task of its own, which reports the commit's [`Outcome`] back.
//!   The socket task then sends the response built by [`Exchanges::complete`].
//! - **Acked means durable**: a confirmable request gets its piggybacked
//!   2.04 Changed only after ingest reports the envelope durable. A payload
//!   that does not decode is quarantined and answered 4.00 once the
//!   quarantine entry is durable.
//! - **On a failed commit the answer is 5.03 Service Unavailable** with
//!   Max-Age 1 and a diagnostic, rather than silence: the client learns at
//!   once that nothing was stored and retries with a new Message ID, instead
//!   of retransmitting for up to MAX_TRANSMIT_WAIT (93 s).
//! - A non-confirmable request is stored the same way and answered with a
//!   NON response after the commit; it cannot be acknowledged.
//! - Requests wait for their commit without a deadline: the bound is
//!   `coap.max_in_flight`, past which new requests get 5.03.
//!
//! Shutdown: the socket stops being read; requests already handed to ingest
//! get their response (within [`DRAIN_DEADLINE`]) before the source drops its
//! ingest sender.

pub mod block1;
pub mod config;
pub mod dedup;
pub mod exchange;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use protocol::{DecodeContext, DecodeError, DecodeLimits, PayloadFormat, Reading, Timestamp};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

pub use self::config::CoapSourceConfig;
use self::exchange::{Action, ExchangeConfig, Exchanges, Ingest, Outcome, Reply, Ticket};
use crate::config::LimitsConfig;
use crate::envelope::{Commit, Content, Envelope};
use crate::metrics::Metrics;

/// Payloads larger than this are decoded on a blocking thread.
const INLINE_DECODE_BYTES: usize = 64 * 1024;
/// Largest UDP datagram read (a whole UDP payload).
const MAX_DATAGRAM: usize = 65_535;
/// How long shutdown waits for requests in flight to get their answer.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// How often expired Message IDs and idle Block1 transfers are purged.
const PURGE_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum CoapSourceError {
    #[error("cannot bind the CoAP source on udp {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Binds the UDP socket (before "Gateway running", so a taken port is a start error).
pub async fn bind(addr: SocketAddr) -> Result<UdpSocket, CoapSourceError> {
    UdpSocket::bind(addr)
        .await
        .map_err(|source| CoapSourceError::Bind { addr, source })
}

#[derive(Debug)]
pub struct CoapSource {
    exchange: ExchangeConfig,
    /// The decoders' limits, with `max_bytes` set to the payload limit.
    limits: DecodeLimits,
    metrics: Metrics,
    quarantine_payload_bytes: usize,
}

impl CoapSource {
    pub fn new(
        cfg: &CoapSourceConfig,
        limits: &LimitsConfig,
        metrics: Metrics,
        quarantine_payload_bytes: usize,
    ) -> Self {
        let max_payload = cfg.payload_limit(limits);
        let mut decode_limits = limits.decode_limits();
        decode_limits.max_bytes = max_payload;
        CoapSource {
            exchange: ExchangeConfig {
                path: cfg.path_segments(),
                max_payload,
                exchange_lifetime: cfg.exchange_lifetime,
                max_cached: cfg.max_cached_exchanges,
                max_in_flight: cfg.max_in_flight,
                max_reassemblies: cfg.max_reassemblies,
                reassembly_timeout: cfg.reassembly_timeout,
            },
            limits: decode_limits,
            metrics,
            quarantine_payload_bytes,
        }
    }

    /// Serves `socket` until `shutdown` flips to true, then answers the
    /// requests in flight. Dropping `tx` (on return) tells ingest this source is done.
    pub async fn run(
        self,
        socket: UdpSocket,
        tx: mpsc::Sender<Envelope>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), CoapSourceError> {
        if let Ok(addr) = socket.local_addr() {
            info!(%addr, path = %self.exchange.path.join("/"), "CoAP source listening.");
        }
        let mut ex: Exchanges<SocketAddr> = Exchanges::new(self.exchange.clone());
        let (done_tx, mut done_rx) =
            mpsc::channel::<(Ticket<SocketAddr>, Outcome)>(self.exchange.max_in_flight.max(1));
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut purge = tokio::time::interval(PURGE_EVERY);
        purge.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                r = socket.recv_from(&mut buf) => match r {
                    Ok((n, from)) => {
                        let action = ex.handle(from, &buf[..n], Instant::now());
                        self.count_blocks(&mut ex);
                        self.act(action, from, &socket, &tx, &done_tx).await;
                    }
                    // E.g. ICMP port unreachable from an earlier reply: per datagram, not fatal.
                    Err(e) => debug!(error = %e, "CoAP receive error."),
                },
                Some((ticket, outcome)) = done_rx.recv() => {
                    self.finish(&mut ex, &socket, &ticket, outcome).await;
                }
                _ = purge.tick() => ex.purge(Instant::now()),
                () = async { let _ = shutdown.wait_for(|s| *s).await; } => break,
            }
        }
        let deadline = tokio::time::Instant::now() + DRAIN_DEADLINE;
        while ex.in_flight() > 0 {
            match tokio::time::timeout_at(deadline, done_rx.recv()).await {
                Ok(Some((ticket, outcome))) => {
                    self.finish(&mut ex, &socket, &ticket, outcome).await;
                }
                Ok(None) => break,
                Err(_) => {
                    warn!(
                        in_flight = ex.in_flight(),
                        "CoAP requests still waiting for their commit at shutdown; they get no answer \
                         (the clients retransmit)."
                    );
                    break;
                }
            }
        }
        info!("CoAP source stopped.");
        Ok(())
    }

    fn count_blocks(&self, ex: &mut Exchanges<SocketAddr>) {
        let n = ex.take_blocks_received();
        if n > 0 {
            self.metrics.coap_blocks.inc_by(n);
        }
    }

    async fn act(
        &self,
        action: Action<SocketAddr>,
        from: SocketAddr,
        socket: &UdpSocket,
        tx: &mpsc::Sender<Envelope>,
        done_tx: &mpsc::Sender<(Ticket<SocketAddr>, Outcome)>,
    ) {
        match action {
            Action::Reply(reply) => {
                if reply.from_cache {
                    self.metrics.coap_duplicate("answered_from_cache");
                }
                self.send(socket, from, reply).await;
            }
            Action::Silent(why) => {
                use exchange::Silence;
                match why {
                    Silence::DuplicateInFlight => self.metrics.coap_duplicate("in_flight"),
                    Silence::DuplicateNon => self.metrics.coap_duplicate("non_ignored"),
                    other => {
                        debug!(%from, reason = other.name(), "CoAP datagram ignored.");
                        self.metrics.coap_ignored(other.name());
                    }
                }
            }
            Action::Ingest(ingest) => {
                self.metrics.messages_received.inc();
                let job = IngestJob {
                    limits: self.limits.clone(),
                    metrics: self.metrics.clone(),
                    quarantine_payload_bytes: self.quarantine_payload_bytes,
                    tx: tx.clone(),
                };
                let done_tx = done_tx.clone();
                tokio::spawn(async move {
                    let ticket = ingest.ticket.clone();
                    let outcome = job.run(ingest).await;
                    // The receiver lives as long as the source loop and its drain.
                    let _ = done_tx.send((ticket, outcome)).await;
                });
            }
        }
    }

    async fn finish(
        &self,
        ex: &mut Exchanges<SocketAddr>,
        socket: &UdpSocket,
        ticket: &Ticket<SocketAddr>,
        outcome: Outcome,
    ) {
        let stored = matches!(outcome, Outcome::Stored { .. });
        if let Some(reply) = ex.complete(ticket, outcome, Instant::now()) {
            if stored {
                self.metrics.messages_acked.inc();
            }
            self.send(socket, ticket.endpoint, reply).await;
        }
    }

    async fn send(&self, socket: &UdpSocket, to: SocketAddr, reply: Reply) {
        self.metrics.coap_response(&reply.code);
        if let Err(e) = socket.send_to(&reply.bytes, to).await {
            debug!(%to, error = %e, "CoAP send failed.");
        }
    }
}

/// Decodes one payload, hands it to ingest and waits for the commit.
struct IngestJob {
    limits: DecodeLimits,
    metrics: Metrics,
    quarantine_payload_bytes: usize,
    tx: mpsc::Sender<Envelope>,
}

impl IngestJob {
    async fn run(self, ingest: Ingest<SocketAddr>) -> Outcome {
        let Ingest {
            ticket,
            format,
            payload,
            device,
            ..
        } = ingest;
        let received = Timestamp::now();
        let origin = match &device {
            Some(d) => format!("coap:{}/{d}", ticket.endpoint),
            None => format!("coap:{}", ticket.endpoint),
        };
        let len = payload.len();
        let (decoded, payload) = decode(format, payload, device, received, &self.limits).await;
        let (content, rejected, count) = match decoded {
            Ok(readings) => {
                let n = readings.len();
                self.metrics.readings_received.inc_by(n as u64);
                (Content::Readings(readings), None, n)
            }
            Err(error) => {
                debug!(%origin, %error, "CoAP payload rejected.");
                let kept = len.min(self.quarantine_payload_bytes).min(payload.len());
                let content = Content::Rejected {
                    error: error.clone(),
                    payload: payload[..kept].to_vec(),
                    payload_len: len,
                };
                (content, Some(error), 0)
            }
        };
        drop(payload);
        let (envelope, done) = Envelope::new(origin, received, content);
        if self.tx.send(envelope).await.is_err() {
            return Outcome::NotStored("the gateway is shutting down".into());
        }
        match done.await {
            Ok(Commit::Durable) => match rejected {
                None => Outcome::Stored { readings: count },
                Some(error) => Outcome::Rejected {
                    reason: error.reason_code().to_owned(),
                    detail: error.to_string(),
                },
            },
            Ok(Commit::Failed(why)) => {
                warn!(reason = %why, "Commit failed; answering 5.03.");
                Outcome::NotStored(format!("commit failed: {why}"))
            }
            Err(_) => Outcome::NotStored("the gateway shut down before the commit".into()),
        }
    }
}

/// Decodes (on a blocking thread when large); gives the payload back for quarantine.
async fn decode(
    format: PayloadFormat,
    payload: Vec<u8>,
    device: Option<String>,
    received: Timestamp,
    limits: &DecodeLimits,
) -> (Result<Vec<Reading>, DecodeError>, Vec<u8>) {
    let run = move |limits: &DecodeLimits, bytes: Vec<u8>| {
        // SenML JSON is often sent as plain `application/json` (50); its labels tell.
        let format = match format {
            PayloadFormat::Json
                if PayloadFormat::detect(&bytes) == Ok(PayloadFormat::SenmlJson) =>
            {
                PayloadFormat::SenmlJson
            }
            f => f,
        };
        let ctx = DecodeContext::new(received).with_device(device.as_deref());
        (format.decode(&bytes, &ctx, limits), bytes)
    };
    if payload.len() <= INLINE_DECODE_BYTES {
        return run(limits, payload);
    }
    let limits = limits.clone();
    match tokio::task::spawn_blocking(move || run(&limits, payload)).await {
        Ok(r) => r,
        Err(e) => (
            Err(DecodeError::Schema(format!("decoder task failed: {e}"))),
            Vec::new(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{IngestConfig, StorageConfig};
    use crate::ingest::Ingest as IngestStage;
    use crate::outbox::Outbox;
    use bytesize::ByteSize;
    use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType};
    use std::sync::Arc;

    struct Harness {
        addr: SocketAddr,
        outbox: Arc<Outbox>,
        metrics: Metrics,
        stop: watch::Sender<bool>,
        source: tokio::task::JoinHandle<Result<(), CoapSourceError>>,
        _dir: tempfile::TempDir,
    }

    async fn start(queue: Option<mpsc::Sender<Envelope>>) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let storage = StorageConfig {
            cache_capacity: ByteSize::mib(1),
            ..Default::default()
        };
        let outbox = Arc::new(Outbox::open(dir.path(), &storage).unwrap());
        let metrics = Metrics::new(&mut prometheus_client::registry::Registry::default());
        let (stop, shutdown) = watch::channel(false);
        let tx = match queue {
            Some(tx) => tx,
            None => {
                let (tx, rx) = mpsc::channel(16);
                let ingest =
                    IngestStage::new(outbox.clone(), metrics.clone(), IngestConfig::default(), 64);
                tokio::spawn(ingest.run(rx, shutdown.clone()));
                tx
            }
        };
        let socket = bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
        let addr = socket.local_addr().unwrap();
        let source = CoapSource::new(
            &CoapSourceConfig::default(),
            &LimitsConfig::default(),
            metrics.clone(),
            64,
        );
        let source = tokio::spawn(source.run(socket, tx, shutdown));
        Harness {
            addr,
            outbox,
            metrics,
            stop,
            source,
            _dir: dir,
        }
    }

    fn con_post(mid: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = Packet::new();
        p.header.set_type(MessageType::Confirmable);
        p.header.message_id = mid;
        p.header.code = MessageClass::Request(RequestType::Post);
        p.set_token(vec![1, 2, 3, 4]);
        p.add_option(CoapOption::UriPath, b"readings".to_vec());
        p.add_option(CoapOption::ContentFormat, vec![110]);
        p.payload = payload.to_vec();
        p.to_bytes_unlimited().unwrap()
    }

    async fn exchange(client: &UdpSocket, to: SocketAddr, datagram: &[u8]) -> Packet {
        client.send_to(datagram, to).await.unwrap();
        let mut buf = vec![0u8; 2048];
        let n = tokio::time::timeout(Duration::from_secs(10), client.recv(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        Packet::from_bytes(&buf[..n]).unwrap()
    }

    const SENML: &[u8] =
        br#"[{"bn":"pump-1/","bt":1767225600,"n":"temperature","v":41.2},{"n":"current","v":3.1}]"#;

    #[tokio::test]
    async fn a_con_post_gets_2_04_after_the_readings_are_durable_and_a_retransmission_is_not_stored_again()
     {
        let h = start(None).await;
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let req = con_post(77, SENML);
        let p = exchange(&client, h.addr, &req).await;
        assert_eq!(p.header.code.to_string(), "2.04");
        assert_eq!(p.header.get_type(), MessageType::Acknowledgement);
        assert_eq!(p.header.message_id, 77);
        assert_eq!(h.outbox.depth(), 2);
        assert_eq!(
            h.outbox.durable_next(),
            h.outbox.next_seq(),
            "acked after the flush"
        );
        let again = exchange(&client, h.addr, &req).await;
        assert_eq!(again, p, "the cached response");
        assert_eq!(h.outbox.depth(), 2, "not stored twice");
        assert_eq!(h.metrics.messages_acked.get(), 1);
        assert_eq!(
            h.metrics
                .coap_duplicates
                .get_or_create(&crate::metrics::OutcomeLabel {
                    outcome: "answered_from_cache"
                })
                .get(),
            1
        );
        // An undecodable payload: 4.00 with the reason, once quarantined.
        let bad = exchange(&client, h.addr, &con_post(78, b"[{\"n\":")).await;
        assert_eq!(bad.header.code.to_string(), "4.00");
        assert!(
            String::from_utf8_lossy(&bad.payload).starts_with("syntax"),
            "{bad:?}"
        );
        assert_eq!(h.outbox.quarantine_list(10).unwrap().len(), 1);
        h.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), h.source)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_retransmission_during_the_commit_is_not_ingested_and_a_failed_commit_gets_5_03() {
        let (tx, mut rx) = mpsc::channel::<Envelope>(4);
        let h = start(Some(tx)).await;
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let req = con_post(5, SENML);
        client.send_to(&req, h.addr).await.unwrap();
        let mut envelope = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        client.send_to(&req, h.addr).await.unwrap();
        client.send_to(&req, h.addr).await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(300), rx.recv())
                .await
                .is_err(),
            "the retransmissions were not ingested"
        );
        envelope.finish(Commit::Failed("disk on fire".into()));
        let mut buf = vec![0u8; 2048];
        let n = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let p = Packet::from_bytes(&buf[..n]).unwrap();
        assert_eq!(p.header.code.to_string(), "5.03");
        assert_eq!(p.header.message_id, 5);
        assert!(String::from_utf8_lossy(&p.payload).contains("disk on fire"));
        assert_eq!(h.metrics.messages_acked.get(), 0);
        assert_eq!(
            h.metrics
                .coap_duplicates
                .get_or_create(&crate::metrics::OutcomeLabel {
                    outcome: "in_flight"
                })
                .get(),
            2
        );
        drop(h.outbox);
    }
}
