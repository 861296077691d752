//! The Message ID cache (RFC 7252 §4.5): one entry per `(endpoint, Message ID)`
//! seen within the exchange lifetime, so that a retransmission is answered
//! with the same response and its payload is never stored twice.
//!
//! An entry is either **pending** (the request is being committed; a
//! retransmission is ignored, because the response goes out when the commit
//! completes) or **answered** (the encoded response, sent again to a
//! retransmission of a confirmable request).
//!
//! Bounds: at most `capacity` entries. Pending entries are limited by the
//! caller (`max_in_flight` < `capacity`); when the cache is full, the oldest
//! answered entry is forgotten early. Answered entries expire `lifetime`
//! after their answer. Pending entries never expire: every one is completed.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// What the cache holds for one `(endpoint, Message ID)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry<P> {
    /// Waiting for the durable commit; `P` is what is needed to answer then.
    Pending(P),
    /// Answered: the encoded response, and whether the request was confirmable.
    Answered {
        response: Vec<u8>,
        confirmable: bool,
    },
}

#[derive(Debug)]
pub struct DedupCache<K, P> {
    entries: HashMap<K, Entry<P>>,
    /// Answered entries, oldest answer first, with their expiry.
    order: VecDeque<(K, Instant)>,
    capacity: usize,
    lifetime: Duration,
    pending: usize,
}

impl<K: Clone + Eq + Hash, P> DedupCache<K, P> {
    pub fn new(capacity: usize, lifetime: Duration) -> Self {
        DedupCache {
            entries: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            lifetime,
            pending: 0,
        }
    }

    pub fn get(&self, key: &K) -> Option<&Entry<P>> {
        self.entries.get(key)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries waiting for their commit.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Forgets answered entries whose lifetime has passed.
    pub fn purge(&mut self, now: Instant) {
        while let Some((_, expires)) = self.order.front() {
            if *expires > now {
                break;
            }
            self.pop_oldest();
        }
    }

    /// Remembers a request now being committed. `false` (nothing stored) if
    /// the key is already known or no room can be made.
    pub fn insert_pending(&mut self, key: K, pending: P, now: Instant) -> bool {
        if !self.make_room(&key, now) {
            return false;
        }
        self.entries.insert(key, Entry::Pending(pending));
        self.pending += 1;
        true
    }

    /// Remembers an answer given at once (no commit involved).
    pub fn insert_answered(
        &mut self,
        key: K,
        response: Vec<u8>,
        confirmable: bool,
        now: Instant,
    ) -> bool {
        if !self.make_room(&key, now) {
            return false;
        }
        self.entries.insert(
            key.clone(),
            Entry::Answered {
                response,
                confirmable,
            },
        );
        self.order.push_back((key, now + self.lifetime));
        true
    }

    /// Turns a pending entry into an answered one; returns what was pending.
    pub fn answer(
        &mut self,
        key: &K,
        response: Vec<u8>,
        confirmable: bool,
        now: Instant,
    ) -> Option<P> {
        let entry = self.entries.get_mut(key)?;
        if !matches!(entry, Entry::Pending(_)) {
            return None;
        }
        let old = std::mem::replace(
            entry,
            Entry::Answered {
                response,
                confirmable,
            },
        );
        self.pending -= 1;
        self.order.push_back((key.clone(), now + self.lifetime));
        match old {
            Entry::Pending(p) => Some(p),
            Entry::Answered { .. } => None,
        }
    }

    /// The pending value of `key`, to update it (e.g. count duplicates).
    pub fn pending_mut(&mut self, key: &K) -> Option<&mut P> {
        match self.entries.get_mut(key) {
            Some(Entry::Pending(p)) => Some(p),
            _ => None,
        }
    }

    fn make_room(&mut self, key: &K, now: Instant) -> bool {
        if self.entries.contains_key(key) {
            return false;
        }
        self.purge(now);
        while self.entries.len() >= self.capacity {
            if !self.pop_oldest() {
                return false;
            }
        }
        true
    }

    /// Forgets the oldest answered entry; `false` if there is none.
    fn pop_oldest(&mut self) -> bool {
        while let Some((key, _)) = self.order.pop_front() {
            if matches!(self.entries.get(&key), Some(Entry::Answered { .. })) {
                self.entries.remove(&key);
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIFE: Duration = Duration::from_secs(247);

    #[test]
    fn a_known_key_is_not_inserted_twice_and_pending_turns_into_answered() {
        let now = Instant::now();
        let mut c: DedupCache<(u8, u16), &str> = DedupCache::new(4, LIFE);
        assert!(c.insert_pending((1, 7), "p", now));
        assert!(!c.insert_pending((1, 7), "again", now));
        assert!(!c.insert_answered((1, 7), vec![1], true, now));
        assert_eq!(c.pending(), 1);
        assert_eq!(c.get(&(1, 7)), Some(&Entry::Pending("p")));
        assert_eq!(c.answer(&(1, 7), vec![9], true, now), Some("p"));
        assert_eq!(c.answer(&(1, 7), vec![8], true, now), None, "only once");
        assert_eq!(c.pending(), 0);
        assert_eq!(
            c.get(&(1, 7)),
            Some(&Entry::Answered {
                response: vec![9],
                confirmable: true
            })
        );
        // The same Message ID from another endpoint is another exchange.
        assert!(c.insert_pending((2, 7), "other", now));
    }

    #[test]
    fn answered_entries_expire_after_the_lifetime_counted_from_the_answer() {
        let t0 = Instant::now();
        let mut c: DedupCache<u16, ()> = DedupCache::new(8, LIFE);
        c.insert_answered(1, vec![], true, t0);
        c.insert_pending(2, (), t0);
        c.answer(&2, vec![], true, t0 + Duration::from_secs(100));
        c.purge(t0 + LIFE - Duration::from_millis(1));
        assert_eq!(c.len(), 2);
        c.purge(t0 + LIFE);
        assert!(c.get(&1).is_none(), "expired");
        assert!(c.get(&2).is_some(), "answered later, still remembered");
        c.purge(t0 + Duration::from_secs(100) + LIFE);
        assert!(c.is_empty());
    }

    #[test]
    fn pending_entries_never_expire() {
        let t0 = Instant::now();
        let mut c: DedupCache<u16, ()> = DedupCache::new(8, LIFE);
        c.insert_pending(1, (), t0);
        c.purge(t0 + LIFE * 10);
        assert_eq!(c.get(&1), Some(&Entry::Pending(())));
    }

    #[test]
    fn when_full_the_oldest_answered_entry_goes_and_pending_ones_stay() {
        let t0 = Instant::now();
        let mut c: DedupCache<u16, ()> = DedupCache::new(3, LIFE);
        assert!(c.insert_pending(1, (), t0));
        assert!(c.insert_answered(2, vec![2], true, t0));
        assert!(c.insert_answered(3, vec![3], true, t0));
        assert!(c.insert_answered(4, vec![4], true, t0));
        assert_eq!(c.len(), 3);
        assert!(c.get(&1).is_some(), "pending kept");
        assert!(c.get(&2).is_none(), "oldest answered evicted");
        // All pending: no room can be made.
        let mut all: DedupCache<u16, ()> = DedupCache::new(2, LIFE);
        assert!(all.insert_pending(1, (), t0));
        assert!(all.insert_pending(2, (), t0));
        assert!(!all.insert_pending(3, (), t0));
        assert!(!all.insert_answered(3, vec![], true, t0));
        assert_eq!(all.len(), 2);
    }

    #[test]
    fn the_cache_stays_bounded_under_many_distinct_ids() {
        let t0 = Instant::now();
        let mut c: DedupCache<u32, ()> = DedupCache::new(100, LIFE);
        for i in 0..10_000u32 {
            if i % 2 == 0 {
                c.insert_answered(i, vec![0; 8], true, t0);
            } else if c.insert_pending(i, (), t0) {
                c.answer(&i, vec![1], false, t0);
            }
            assert!(c.len() <= 100);
        }
        assert!(c.order.len() <= 100);
    }
}
