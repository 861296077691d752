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
    /// A source cursor stored in the same atomic outbox batch as this
    /// envelope's readings (see [`Checkpoint`]).
    pub checkpoint: Option<Checkpoint>,
}

/// A source's durable cursor (file offset, SQL cursor value, ETag…).
///
/// The ingest stage writes it in the **same** outbox log frame as the readings of
/// the envelope that carries it, so "readings durable" and "cursor advanced"
/// are one atomic step: after a crash either both are there or neither is.
/// An envelope with `Content::Readings(vec![])` and a checkpoint only
/// advances the cursor. A checkpoint on a `Content::Rejected` envelope is
/// ignored (quarantine lives in another tree, which no batch spans): send the
/// reject first and the cursor on a following, possibly empty, readings
/// envelope.
///
/// Read the last durable value back with
/// [`Outbox::checkpoint`](crate::outbox::Outbox::checkpoint). Keys are
/// namespaced by source: `file:<name>`, `sql:<source name>`,
/// `rest:<source name>`. The value is opaque to the gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub key: String,
    pub value: Vec<u8>,
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
                checkpoint: None,
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
            checkpoint: None,
        }
    }

    /// Attaches a source cursor, stored atomically with this envelope's
    /// readings (see [`Checkpoint`]).
    pub fn with_checkpoint(mut self, key: impl Into<String>, value: Vec<u8>) -> Self {
        self.checkpoint = Some(Checkpoint {
            key: key.into(),
            value,
        });
        self
    }

    pub(crate) fn finish(&mut self, result: Commit) {
        if let Some(tx) = self.done.take() {
            // The source may have gone away (shutdown); nothing to do then.
            let _ = tx.send(result);
        }
    }
}
