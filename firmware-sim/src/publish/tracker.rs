//! Which MQTT message is which packet id, and which ones the broker acked.
//!
//! rumqttc reports `Outgoing::Publish(pkid)` in the order publish requests are
//! processed and `Incoming::PubAck` with the pkid. So:
//!
//! 1. [`AckTracker::enqueue`] a message *before* handing it to the client (FIFO).
//! 2. On `Outgoing::Publish(pkid)`: if the pkid is an expected retransmission
//!    after a reconnect, ignore it; otherwise pop the FIFO head and map pkid → it.
//!    (QoS 0: pop the head; it is complete, nothing more will come.)
//! 3. On `PubAck(pkid)`: remove the mapping; that message is acked.
//! 4. On a connection error rumqttc moves unacked publishes (and requests not
//!    yet read from its channel) to its `pending` queue and retransmits them on
//!    reconnect — unless the broker did not keep the session, in which case it
//!    drops them. [`AckTracker::on_connection_lost`] records how many FIFO
//!    entries rumqttc holds; [`AckTracker::on_connack`] either expects the
//!    retransmissions or declares all of those messages lost.
//!
//! Pure state, no I/O: the async transport only feeds it events.

use std::collections::{HashMap, HashSet, VecDeque};

/// The result of an `Outgoing::Publish` event.
#[derive(Debug, PartialEq)]
pub enum OutgoingPublish<M> {
    /// QoS ≥ 1: first transmission of message `id`, now awaiting its PUBACK.
    AwaitingAck { id: u64 },
    /// QoS 0: message `id` was written; no acknowledgement will follow.
    Written { id: u64, message: M },
    /// A retransmission of a message already awaiting its PUBACK.
    Retransmission,
    /// Nothing was queued: a bookkeeping error (should not happen).
    Unexpected,
    /// QoS ≥ 1, but the pkid was still mapped to an older message that rumqttc
    /// evidently no longer holds: that one is lost, `id` now awaits its PUBACK.
    Replaced { id: u64, lost: (u64, M) },
}

/// Publish → PUBACK bookkeeping for one MQTT connection.
#[derive(Debug)]
pub struct AckTracker<M> {
    acked_qos: bool,
    queued: VecDeque<(u64, M)>,
    inflight: HashMap<u16, (u64, M)>,
    expected_retransmits: HashSet<u16>,
    /// FIFO entries rumqttc holds in its pending queue since the last error.
    held_by_client: usize,
    connected_before: bool,
}

impl<M> AckTracker<M> {
    /// `acked_qos` is true for QoS 1 (and 2), false for QoS 0.
    pub fn new(acked_qos: bool) -> Self {
        AckTracker {
            acked_qos,
            queued: VecDeque::new(),
            inflight: HashMap::new(),
            expected_retransmits: HashSet::new(),
            held_by_client: 0,
            connected_before: false,
        }
    }

    /// A message about to be handed to the client.
    pub fn enqueue(&mut self, id: u64, message: M) {
        self.queued.push_back((id, message));
    }

    /// Undoes the last [`enqueue`](Self::enqueue) when the client refused it.
    pub fn unqueue_last(&mut self) -> Option<(u64, M)> {
        self.queued.pop_back()
    }

    /// Messages handed over and not yet complete.
    pub fn outstanding(&self) -> usize {
        self.queued.len() + self.inflight.len()
    }

    pub fn on_outgoing_publish(&mut self, pkid: u16) -> OutgoingPublish<M> {
        if !self.acked_qos {
            return match self.queued.pop_front() {
                Some((id, message)) => OutgoingPublish::Written { id, message },
                None => OutgoingPublish::Unexpected,
            };
        }
        if self.expected_retransmits.remove(&pkid) {
            return OutgoingPublish::Retransmission;
        }
        let Some((id, message)) = self.queued.pop_front() else {
            return if self.inflight.contains_key(&pkid) {
                OutgoingPublish::Retransmission
            } else {
                OutgoingPublish::Unexpected
            };
        };
        self.held_by_client = self.held_by_client.saturating_sub(1);
        match self.inflight.insert(pkid, (id, message)) {
            None => OutgoingPublish::AwaitingAck { id },
            Some(lost) => OutgoingPublish::Replaced { id, lost },
        }
    }

    /// A PUBACK: returns the acked message, if the pkid was known.
    pub fn on_puback(&mut self, pkid: u16) -> Option<(u64, M)> {
        self.expected_retransmits.remove(&pkid);
        self.inflight.remove(&pkid)
    }

    /// The connection failed. `new_requests_held` is how many never-sent publish
    /// requests (packet id 0) rumqttc now holds in its pending queue.
    pub fn on_connection_lost(&mut self, new_requests_held: usize) {
        self.held_by_client = new_requests_held.min(self.queued.len());
    }

    /// A CONNACK. Returns the messages that are lost because the broker did not
    /// keep the session (rumqttc then drops its pending queue).
    pub fn on_connack(&mut self, session_present: bool) -> Vec<(u64, M)> {
        let first = !self.connected_before;
        self.connected_before = true;
        if session_present || first {
            // On the very first connection nothing is pending anyway.
            self.expected_retransmits = self.inflight.keys().copied().collect();
            self.held_by_client = 0;
            return Vec::new();
        }
        self.expected_retransmits.clear();
        let mut lost: Vec<(u64, M)> = self.inflight.drain().map(|(_, v)| v).collect();
        lost.sort_by_key(|(id, _)| *id);
        let held = std::mem::take(&mut self.held_by_client).min(self.queued.len());
        lost.extend(self.queued.drain(..held));
        lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishes_are_matched_to_pkids_in_order_and_acked_by_pkid() {
        let mut t = AckTracker::new(true);
        t.enqueue(1, "a");
        t.enqueue(2, "b");
        assert_eq!(t.on_connack(false), vec![]);
        assert_eq!(
            t.on_outgoing_publish(7),
            OutgoingPublish::AwaitingAck { id: 1 }
        );
        assert_eq!(
            t.on_outgoing_publish(8),
            OutgoingPublish::AwaitingAck { id: 2 }
        );
        assert_eq!(t.on_puback(8), Some((2, "b")));
        assert_eq!(
            t.on_puback(8),
            None,
            "a second PUBACK for the same pkid acks nothing"
        );
        assert_eq!(t.on_puback(7), Some((1, "a")));
        assert_eq!(t.outstanding(), 0);
    }

    #[test]
    fn retransmissions_after_a_resumed_session_are_ignored() {
        let mut t = AckTracker::new(true);
        t.on_connack(false);
        t.enqueue(1, "a");
        t.enqueue(2, "b");
        t.enqueue(3, "c");
        t.on_outgoing_publish(1);
        t.on_outgoing_publish(2);
        t.on_connection_lost(0);
        assert_eq!(t.on_connack(true), vec![]);
        assert_eq!(t.on_outgoing_publish(2), OutgoingPublish::Retransmission);
        assert_eq!(t.on_outgoing_publish(1), OutgoingPublish::Retransmission);
        assert_eq!(
            t.on_outgoing_publish(3),
            OutgoingPublish::AwaitingAck { id: 3 }
        );
        assert_eq!(t.on_puback(1), Some((1, "a")));
        assert_eq!(t.on_puback(2), Some((2, "b")));
        assert_eq!(t.on_puback(3), Some((3, "c")));
    }

    #[test]
    fn a_lost_session_loses_the_inflight_and_the_held_requests_but_not_the_rest() {
        let mut t = AckTracker::new(true);
        t.on_connack(false);
        for id in 1..=5 {
            t.enqueue(id, id);
        }
        t.on_outgoing_publish(1);
        t.on_outgoing_publish(2);
        // rumqttc drained request 3 from its channel into `pending`; 4 and 5 are still in the channel.
        t.on_connection_lost(1);
        let lost: Vec<u64> = t.on_connack(false).into_iter().map(|(id, _)| id).collect();
        assert_eq!(lost, vec![1, 2, 3]);
        // pkids restart wherever rumqttc likes; 1 is free again and maps to message 4.
        assert_eq!(
            t.on_outgoing_publish(1),
            OutgoingPublish::AwaitingAck { id: 4 }
        );
        assert_eq!(
            t.on_outgoing_publish(2),
            OutgoingPublish::AwaitingAck { id: 5 }
        );
        assert_eq!(t.outstanding(), 2);
    }

    #[test]
    fn a_reused_pkid_that_was_not_expected_replaces_the_stale_mapping() {
        let mut t = AckTracker::new(true);
        t.on_connack(false);
        t.enqueue(1, ());
        t.enqueue(2, ());
        t.on_outgoing_publish(4);
        assert_eq!(
            t.on_outgoing_publish(4),
            OutgoingPublish::Replaced {
                id: 2,
                lost: (1, ())
            }
        );
    }

    #[test]
    fn qos0_messages_complete_when_written() {
        let mut t = AckTracker::new(false);
        t.on_connack(false);
        t.enqueue(1, "a");
        assert_eq!(
            t.on_outgoing_publish(0),
            OutgoingPublish::Written {
                id: 1,
                message: "a"
            }
        );
        assert_eq!(t.on_outgoing_publish(0), OutgoingPublish::Unexpected);
        assert_eq!(t.outstanding(), 0);
    }
}
