//! Publishers: how simulated messages leave the process.
//!
//! Every transport implements [`Transport`]: take a message (waiting while its
//! window of unconfirmed messages is full), report what happened to it as
//! [`Delivery`] events, and drain on close. MQTT ([`mqtt::MqttTransport`]) and
//! HTTP ([`http::HttpTransport`]) implement it; CoAP and serial can follow
//! behind the same trait.
//!
//! - [`tracker`] — the MQTT publish → PUBACK bookkeeping, a state machine without I/O.
//! - [`mqtt`] — the rumqttc transport that drives it.
//! - [`http`] — `POST /v1/readings` to the gateway; acked on 202, with retries.
//! - [`serial`] — lines to a serial device (SenML, CSV or checksummed); acked once written and drained.
//! - [`coap`] — confirmable CoAP POSTs to the gateway; acked on 2.04, RFC 7252 retransmission.

pub mod coap;
pub mod http;
pub mod mqtt;
pub mod serial;
pub mod tracker;

use std::future::Future;
use std::time::Duration;

use protocol::Reading;

/// One message ready for a transport.
#[derive(Clone, Debug)]
pub struct OutMessage {
    /// Unique within a run, in hand-over order.
    pub id: u64,
    /// Where to (an MQTT topic, a CoAP path, …).
    pub topic: String,
    /// The encoded payload (SenML JSON).
    pub payload: Vec<u8>,
    /// The readings inside `payload`, for the acked log.
    pub readings: Vec<Reading>,
}

/// What became of a message. Every message handed over gets at most one `Sent`
/// and then at most one of `Acked` / `Lost` / `Rejected`.
#[derive(Debug)]
pub enum Delivery {
    /// First written towards the peer (retransmissions are not reported).
    Sent { id: u64 },
    /// The peer confirmed it (MQTT PUBACK, HTTP 202). Only now does it count as delivered.
    Acked {
        message: OutMessage,
        latency: Duration,
    },
    /// The transport gave up on it (for example the broker lost the session,
    /// or an HTTP retry deadline passed).
    Lost { id: u64 },
    /// The peer refused it for good (an HTTP 4xx other than 408/429); not retried.
    Rejected { id: u64, status: u16 },
}

/// Why a transport failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("could not connect to {broker} within {timeout:?}: {last_error}")]
    ConnectTimeout {
        broker: String,
        timeout: Duration,
        last_error: String,
    },
    #[error("connection to {broker} lost for longer than {timeout:?}: {last_error}")]
    Disconnected {
        broker: String,
        timeout: Duration,
        last_error: String,
    },
    #[error("the connection rejected the request: {0}")]
    Client(String),
    #[error("the transport stopped unexpectedly")]
    Stopped,
}

/// What a transport reports when it closes.
#[derive(Clone, Debug, Default)]
pub struct CloseReport {
    /// Messages neither confirmed nor known lost when the drain timed out.
    pub unconfirmed: u64,
    /// Successful re-connections after the first.
    pub reconnects: u64,
}

/// A way to send messages, with honest delivery reporting.
pub trait Transport {
    /// Hands one message over, waiting while the window of unconfirmed messages
    /// is full. Returns once the transport has accepted it (not when it is acked).
    fn send(&mut self, msg: OutMessage) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// Waits up to `drain` for every accepted message to be confirmed or lost,
    /// then disconnects.
    fn close(
        self,
        drain: Duration,
    ) -> impl Future<Output = Result<CloseReport, TransportError>> + Send;
}
