//! De-duplication by reading identity `(device, channel, ts)` over a bounded
//! window of recent identities.
//!
//! **This only saves bandwidth and outbox space.** The exactly-once guarantee
//! is the sink's primary key on the identity (and on `(gateway, epoch, seq)`):
//! the window is in memory, bounded, and empty after a restart, so duplicates
//! older than the window, or across a restart, still reach the sink, which
//! drops them.
//!
//! - **Bounded:** at most `capacity` identities; the oldest remembered is
//!   forgotten first (FIFO). Each is kept as a 128-bit keyed hash (two SipHash
//!   instances with random keys), 16 bytes plus the set's links, so a window
//!   of 65 536 costs about 4 MiB. Two different identities collide with
//!   probability about n²/2¹²⁹: nil for any window size.
//! - **Only durable identities are remembered** ([`Dedup::remember`] is called
//!   once the envelope's commit succeeded). Remembering before that would turn
//!   a failed commit's redelivery into a "duplicate" and lose it.

use std::hash::{BuildHasher, Hash, RandomState};

use hashlink::LinkedHashSet;
use protocol::{Reading, ReadingId};

/// A 128-bit keyed hash of a reading identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IdKey(u64, u64);

/// The window of recently stored identities.
#[derive(Debug)]
pub struct Dedup {
    seen: LinkedHashSet<IdKey>,
    capacity: usize,
    keys: (RandomState, RandomState),
}

impl Dedup {
    /// A window of `capacity` identities; 0 disables de-duplication.
    pub fn new(capacity: usize) -> Self {
        Dedup {
            seen: LinkedHashSet::with_capacity(capacity.min(1 << 16)),
            capacity,
            keys: (RandomState::new(), RandomState::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// The key of a reading's identity.
    pub fn key(&self, r: &Reading) -> IdKey {
        let h = |s: &RandomState| s.hash_one((&r.device, &r.channel, r.ts));
        IdKey(h(&self.keys.0), h(&self.keys.1))
    }

    /// The key of an identity (same as [`Dedup::key`] of a reading with it).
    pub fn id_key(&self, id: &ReadingId) -> IdKey {
        let h = |s: &RandomState| s.hash_one((&id.device, &id.channel, id.ts));
        IdKey(h(&self.keys.0), h(&self.keys.1))
    }

    /// Whether the identity is in the window.
    pub fn contains(&self, key: &IdKey) -> bool {
        self.seen.contains(key)
    }

    /// Remembers identities that are now durable; forgets the oldest past the capacity.
    pub fn remember(&mut self, keys: impl IntoIterator<Item = IdKey>) {
        if self.capacity == 0 {
            return;
        }
        for k in keys {
            // Re-inserting moves an identity to the back: it was just seen again.
            self.seen.remove(&k);
            self.seen.insert(k);
            while self.seen.len() > self.capacity {
                self.seen.pop_front();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Timestamp;

    fn r(ch: &str, ts: i64) -> Reading {
        Reading::new("d", ch, Timestamp(ts), 1.0).unwrap()
    }

    #[test]
    fn a_remembered_identity_is_a_duplicate_and_the_value_does_not_matter() {
        let mut d = Dedup::new(10);
        let k = d.key(&r("a", 1));
        assert!(!d.contains(&k));
        d.remember([k]);
        let mut other_value = r("a", 1);
        other_value.value = 99.0;
        assert!(d.contains(&d.key(&other_value)));
        assert!(!d.contains(&d.key(&r("a", 2))));
        assert!(!d.contains(&d.key(&r("b", 1))));
        assert_eq!(d.key(&r("a", 1)), d.id_key(&r("a", 1).id()));
    }

    #[test]
    fn the_window_forgets_the_oldest_identity_first() {
        let mut d = Dedup::new(3);
        let keys: Vec<IdKey> = (0..5).map(|i| d.key(&r("a", i))).collect();
        d.remember(keys.iter().copied());
        assert_eq!(d.len(), 3);
        assert!(!d.contains(&keys[0]) && !d.contains(&keys[1]));
        assert!(keys[2..].iter().all(|k| d.contains(k)));
        // Seeing 2 again makes it the newest: 3 is forgotten next.
        d.remember([keys[2], d.key(&r("a", 9))]);
        assert!(d.contains(&keys[2]) && !d.contains(&keys[3]));
    }

    #[test]
    fn a_zero_window_remembers_nothing() {
        let mut d = Dedup::new(0);
        let k = d.key(&r("a", 1));
        d.remember([k]);
        assert!(!d.enabled() && !d.contains(&k) && d.is_empty());
    }
}
