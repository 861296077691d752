//! Ingest → workers: one SPSC ring (`ringbuf::HeapRb`) per shard.
//!
//! Ingest is the single producer: after a commit group is durable it calls
//! [`Feed::offer`] with the group's readings. A reading goes to shard
//! `hash(device) % shards`, so one worker sees all of a device's readings,
//! in commit order. `offer` never blocks and never fails the commit:
//!
//! **Full ring policy — drop newest.** A reading that does not fit in its
//! shard's ring is dropped from analysis (it is already durable in the
//! outbox) and counted in `outpost_gateway_analysis_ring_dropped_total`.
//! Analysis lags or loses windows; ingest never stalls.
//!
//! **Wake-ups.** A worker parks when its ring is empty; `offer` unparks the
//! worker of every shard it pushed to (a cheap atomic when it is awake), so a
//! committed reading is analysed at once, not after the worker's idle timeout.

use std::hash::BuildHasher;
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;

use protocol::Reading;
use ringbuf::traits::{Observer, Producer, Split};
use ringbuf::{HeapCons, HeapProd, HeapRb};

use super::metrics::AnalysisMetrics;

/// The shard of a device: a stable hash (fixed keys, so the same device
/// maps to the same shard across restarts) modulo `shards`.
pub fn shard_of(device: &str, shards: usize) -> usize {
    let h = std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
        .hash_one(device);
    (h % shards.max(1) as u64) as usize
}

/// The producer side of every shard's ring. Cheap to share (`Arc`): the
/// mutex is only ever taken by the single ingest task, uncontended.
pub struct Feed {
    producers: Mutex<Vec<HeapProd<Reading>>>,
    /// The worker thread of each shard, set once they are spawned.
    workers: OnceLock<Vec<Thread>>,
    metrics: AnalysisMetrics,
}

// By hand: ringbuf's producers are not `Debug`.
impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("depth", &self.depth())
            .finish_non_exhaustive()
    }
}

/// What one `offer` did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offered {
    pub pushed: u64,
    pub dropped: u64,
}

impl Feed {
    /// `shards` rings of `capacity` readings each; the consumers go to the
    /// workers, one each.
    pub fn new(
        shards: usize,
        capacity: usize,
        metrics: AnalysisMetrics,
    ) -> (Feed, Vec<HeapCons<Reading>>) {
        let (producers, consumers) = (0..shards.max(1))
            .map(|_| HeapRb::<Reading>::new(capacity.max(1)).split())
            .unzip();
        (
            Feed {
                producers: Mutex::new(producers),
                workers: OnceLock::new(),
                metrics,
            },
            consumers,
        )
    }

    /// Hands readings to their shards without blocking; what does not fit
    /// is dropped and counted.
    pub fn offer<'a>(&self, readings: impl IntoIterator<Item = &'a Reading>) -> Offered {
        let mut done = Offered::default();
        // A poisoned lock only means a panic elsewhere mid-offer; the rings
        // themselves are consistent, so carry on.
        let mut producers = match self.producers.lock() {
            Ok(p) => p,
            Err(poisoned) => poisoned.into_inner(),
        };
        let shards = producers.len();
        let routed: Vec<(&Reading, usize)> = readings
            .into_iter()
            .map(|r| {
                (
                    r,
                    if shards == 1 {
                        0
                    } else {
                        shard_of(&r.device, shards)
                    },
                )
            })
            .collect();
        for (shard, prod) in producers.iter_mut().enumerate() {
            let wanted = routed.iter().filter(|(_, s)| *s == shard).count();
            // `push_iter` fills what is vacant and publishes the write index
            // once per batch, not once per reading: the worker's core sees one
            // cache-line update per commit group. What does not fit is never
            // cloned.
            let mut mine = routed
                .iter()
                .filter(|(_, s)| *s == shard)
                .map(|(r, _)| (*r).clone());
            let pushed = prod.push_iter(&mut mine);
            done.pushed += pushed as u64;
            done.dropped += (wanted - pushed) as u64;
            if pushed > 0
                && let Some(worker) = self.workers.get().and_then(|w| w.get(shard))
            {
                worker.unpark();
            }
        }
        self.metrics.ring_pushed.inc_by(done.pushed);
        self.metrics.ring_dropped.inc_by(done.dropped);
        done
    }

    /// Registers the worker threads, in shard order, so `offer` can wake
    /// them. Only the first call counts.
    pub fn set_workers(&self, workers: Vec<Thread>) {
        let _ = self.workers.set(workers);
    }

    /// Readings waiting, all shards.
    pub fn depth(&self) -> usize {
        match self.producers.lock() {
            Ok(p) => p.iter().map(|p| p.occupied_len()).sum(),
            Err(poisoned) => poisoned.into_inner().iter().map(|p| p.occupied_len()).sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;
    use protocol::Timestamp;
    use ringbuf::traits::Consumer;

    fn reading(device: &str, i: i64) -> Reading {
        Reading::new(device, "current", Timestamp(i), i as f64).unwrap()
    }

    #[test]
    fn a_device_always_lands_on_the_same_shard_and_devices_spread() {
        let shards: Vec<usize> = (0..100)
            .map(|i| shard_of(&format!("pump-{i}"), 4))
            .collect();
        assert_eq!(shard_of("pump-7", 4), shards[7]);
        for s in 0..4 {
            assert!(shards.contains(&s), "shard {s} got no device");
        }
    }

    #[test]
    fn a_full_ring_drops_the_newest_counts_them_and_never_blocks() {
        let metrics = AnalysisMetrics::new(&mut Registry::default());
        let (feed, mut cons) = Feed::new(1, 16, metrics.clone());
        let readings: Vec<Reading> = (0..40).map(|i| reading("pump-1", i)).collect();
        let got = feed.offer(&readings);
        assert_eq!(
            got,
            Offered {
                pushed: 16,
                dropped: 24
            }
        );
        assert_eq!(metrics.ring_dropped.get(), 24);
        assert_eq!(feed.depth(), 16);
        // The oldest 16 are kept, in order.
        let kept: Vec<i64> = cons[0].pop_iter().map(|r| r.ts.0).collect();
        assert_eq!(kept, (0..16).collect::<Vec<_>>());
        assert_eq!(feed.offer(&readings[..3]).pushed, 3);
    }
}
