//! What a source hands to the ingest stage: decoded readings (or a rejected
//! payload) plus a way to learn when they are durable.

use protocol::{DecodeError, Reading, Timestamp};
use tokio::sync::oneshot;

/// The ingest stage's answer to one envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Commit {
    /// Durable (readings in the outbox, or the reject in quarantine): ack the sender.
    Durable,
    /// Not stored; the sender must not be acknowledged.
    Failed(String),
}

/// One received message.
#[derive(Debug)]
pub struct Envelope {
    /// Where it came from, for quarantine and logs (e.g. `mqtt:outpost/sensors/p1`).
    pub origin: String,
    pub received: Timestamp,
    pub content: Content,
    /// Resolved after the group commit that covers this envelope.
    pub done: Option<oneshot::Sender<Commit>>,
}

#[derive(Debug)]
pub enum Content {
    Readings(Vec<Reading>),
    /// The payload could not be decoded; it goes to quarantine.
    Rejected {
        error: DecodeError,
        payload: Vec<u8>,
        payload_len: usize,
    },
}

impl Envelope {
    /// An envelope and the receiver that tells the source when to ack.
    pub fn new(
        origin: String,
        received: Timestamp,
        content: Content,
    ) -> (Self, oneshot::Receiver<Commit>) {
        let (tx, rx) = oneshot::channel();
        (
            Envelope {
                origin,
                received,
                content,
                done: Some(tx),
            },
            rx,
        )
    }

    /// An envelope whose sender cannot be acknowledged (e.g. MQTT QoS 0).
    pub fn unacked(origin: String, received: Timestamp, content: Content) -> Self {
        Envelope {
            origin,
            received,
            content,
            done: None,
        }
    }

    pub(crate) fn finish(&mut self, result: Commit) {
        if let Some(tx) = self.done.take() {
            // The source may have gone away (shutdown); nothing to do then.
            let _ = tx.send(result);
        }
    }
}
