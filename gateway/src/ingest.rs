//! The ingest stage: one task that turns envelopes into durable outbox records
//! and only then lets sources acknowledge.
//!
//! Group commit: the task takes every envelope waiting in the queue (up to
//! `max_commit_batch`), appends them as atomic outbox log frames, flushes once,
//! and resolves each envelope's `done` channel in arrival order. While a flush
//! runs, new envelopes collect in the queue and form the next group, so the
//! fsync rate adapts to load; `min_commit_interval` caps it.
//!
//! Full outbox (`block` policy): the group waits, unacknowledged, until the
//! uplink frees space; the bounded queue fills and sources stop reading.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tracing::{debug, error, warn};

use crate::config::IngestConfig;
use crate::envelope::{Checkpoint, Commit, Content, Envelope};
use crate::metrics::Metrics;
use crate::outbox::{Outbox, OutboxError, QuarantineEntry};

/// A group stops waiting for company once it holds this many readings
/// (~20 KB in the outbox): enough to spread an fsync's page writes thin.
const GROUP_FILL_READINGS: usize = 256;

/// Readings an envelope carries, for sizing a group (a reject counts as one).
fn readings_in(e: &Envelope) -> usize {
    match &e.content {
        Content::Readings(r) => r.len().max(1),
        Content::Rejected { .. } => 1,
    }
}

/// Reason code for an envelope that alone is larger than the whole outbox.
const TOO_BIG_FOR_OUTBOX: &str = "too_big_for_outbox";

#[derive(Debug)]
pub struct Ingest {
    outbox: Arc<Outbox>,
    metrics: Metrics,
    cfg: IngestConfig,
    quarantine_payload_bytes: usize,
    /// Contracts, de-duplication and clock stamping of readings (`prepare`).
    validation: crate::contracts::stage::Validation,
    /// Edge analytics: committed readings are offered to its rings.
    analysis: Option<Arc<crate::analysis::rings::Feed>>,
}

/// One envelope's work, prepared off the async runtime.
enum Job {
    Append {
        encoded: Vec<Vec<u8>>,
        readings: u64,
        /// Source cursors written in the same outbox batch as these records
        /// (the envelope's checkpoint; after a failed chunk, the chunk's).
        checkpoints: Vec<Checkpoint>,
        /// The accepted readings, for analysis after the commit (empty
        /// without analysis).
        analysis: Vec<protocol::Reading>,
    },
    Quarantine(QuarantineEntry),
}

impl Ingest {
    pub fn new(
        outbox: Arc<Outbox>,
        metrics: Metrics,
        cfg: IngestConfig,
        quarantine_payload_bytes: usize,
    ) -> Self {
        Ingest {
            outbox,
            metrics,
            cfg,
            quarantine_payload_bytes,
            validation: crate::contracts::stage::Validation::passthrough(),
            analysis: None,
        }
    }

    /// Offers every committed reading to edge analytics (never blocks: a
    /// full ring drops from analysis only, counted).
    pub fn with_analysis(mut self, feed: Arc<crate::analysis::rings::Feed>) -> Self {
        self.analysis = Some(feed);
        self
    }

    /// Replaces the default validation (no contracts, default de-duplication,
    /// the system clock) with one built from the config.
    pub fn with_validation(mut self, validation: crate::contracts::stage::Validation) -> Self {
        self.validation = validation;
        self
    }

    /// Runs until every sender of `rx` is dropped and the queue is drained.
    /// `shutdown` only matters while a full outbox holds a group back: then the
    /// group is abandoned unacknowledged (its senders redeliver) instead of
    /// waiting for space that may never come.
    pub async fn run(self, mut rx: mpsc::Receiver<Envelope>, shutdown: watch::Receiver<bool>) {
        let mut last_commit = Instant::now() - self.cfg.min_commit_interval;
        while let Some(first) = rx.recv().await {
            let group = self.gather(first, &mut rx, last_commit).await;
            last_commit = Instant::now();
            self.commit(group, &mut shutdown.clone()).await;
        }
        // Sources are gone; make sure nothing is left unflushed.
        let outbox = self.outbox.clone();
        match tokio::task::spawn_blocking(move || outbox.flush()).await {
            Ok(Ok(())) => debug!("Ingest drained and flushed."),
            Ok(Err(e)) => error!(error = %e, "Final outbox flush failed."),
            Err(e) => error!(error = %e, "Final outbox flush panicked."),
        }
    }

    /// Forms a group from `first` and everything queued behind it: it stops
    /// waiting for more once it holds [`GROUP_FILL_READINGS`] readings or
    /// `max_commit_batch` envelopes, or when `first` has waited
    /// `max_commit_delay`, and it never commits sooner than
    /// `min_commit_interval` after the previous commit. At low rates every
    /// fsync then covers several messages (each fsync rewrites whole pages of
    /// the storage, see docs/raspberry-pi.md on SD cards); at high rates the
    /// group fills before the delay matters.
    async fn gather(
        &self,
        first: Envelope,
        rx: &mut mpsc::Receiver<Envelope>,
        last_commit: Instant,
    ) -> Vec<Envelope> {
        let earliest = last_commit + self.cfg.min_commit_interval;
        // The delay counts from receipt: time spent queued behind the
        // previous commit is part of it.
        let queued = protocol::Timestamp::now()
            .as_nanos()
            .saturating_sub(first.received.as_nanos());
        let queued = Duration::from_nanos(u64::try_from(queued).unwrap_or(0));
        let deadline =
            (Instant::now() + self.cfg.max_commit_delay.saturating_sub(queued)).max(earliest);
        let mut fill = readings_in(&first);
        let mut group = Vec::with_capacity(64);
        group.push(first);
        loop {
            // Take all that waits (a backlog commits in big groups); the
            // fill only decides whether to wait for more.
            while group.len() < self.cfg.max_commit_batch {
                match rx.try_recv() {
                    Ok(e) => {
                        fill += readings_in(&e);
                        group.push(e);
                    }
                    Err(_) => break,
                }
            }
            let full = group.len() >= self.cfg.max_commit_batch || fill >= GROUP_FILL_READINGS;
            let until = if full { earliest } else { deadline };
            if Instant::now() >= until {
                return group;
            }
            if full {
                // Then take what came meanwhile, and commit.
                tokio::time::sleep_until(until.into()).await;
                continue;
            }
            tokio::select! {
                e = rx.recv() => match e {
                    Some(e) => {
                        fill += readings_in(&e);
                        group.push(e);
                    }
                    // Sources are gone: commit what there is now.
                    None => return group,
                },
                () = tokio::time::sleep_until(until.into()) => return group,
            }
        }
    }

    fn prepare(&self, envelope: &mut Envelope) -> Job {
        let content = std::mem::replace(&mut envelope.content, Content::Readings(Vec::new()));
        match content {
            Content::Readings(readings) => {
                // Contracts, de-duplication, clock stamps: rejected readings
                // are quarantined here, the others come back encoded.
                let (readings, encoded) =
                    self.validation
                        .apply(envelope, readings, &self.outbox, &self.metrics);
                match encoded {
                    Ok(encoded) => Job::Append {
                        readings: readings.len() as u64,
                        encoded,
                        checkpoints: envelope.checkpoint.take().into_iter().collect(),
                        analysis: if self.analysis.is_some() {
                            readings
                        } else {
                            Vec::new()
                        },
                    },
                    Err(e) => Job::Quarantine(QuarantineEntry {
                        received: envelope.received,
                        origin: envelope.origin.clone(),
                        reason: "encode_failed".into(),
                        detail: e.to_string(),
                        payload: Vec::new(),
                        payload_len: 0,
                    }),
                }
            }
            Content::Rejected {
                error,
                mut payload,
                payload_len,
            } => {
                payload.truncate(self.quarantine_payload_bytes);
                Job::Quarantine(QuarantineEntry {
                    received: envelope.received,
                    origin: envelope.origin.clone(),
                    reason: error.reason_code().into(),
                    detail: error.to_string(),
                    payload,
                    payload_len,
                })
            }
        }
    }

    async fn commit(&self, mut group: Vec<Envelope>, shutdown: &mut watch::Receiver<bool>) {
        let started = Instant::now();
        let jobs: Vec<Job> = group.iter_mut().map(|e| self.prepare(e)).collect();
        let mut pending = jobs;
        let mut done_upto = 0usize;
        let mut stats = CommitStats::default();
        // Write job by job; a full outbox (block policy) pauses here until the
        // uplink frees space. Nothing is acknowledged before the final flush.
        loop {
            let outbox = self.outbox.clone();
            let start = done_upto;
            let result = tokio::task::spawn_blocking(move || {
                let mut stats = CommitStats::default();
                let r = write_jobs(&outbox, &mut pending, start, &mut stats).and_then(|()| {
                    outbox.flush()?;
                    stats.flushed = true;
                    Ok(())
                });
                (pending, stats, r)
            })
            .await;
            let (back, part, r) = match result {
                Ok(x) => x,
                Err(e) => {
                    error!(error = %e, "Commit task panicked; messages stay unacknowledged.");
                    fail_all(&mut group, "commit task panicked");
                    return;
                }
            };
            pending = back;
            stats.merge(&part);
            done_upto = part.next_job;
            match r {
                Ok(()) => break,
                Err(OutboxError::Full { used, cap, needed }) => {
                    self.metrics.outbox_full_waits.inc();
                    warn!(
                        used,
                        cap,
                        needed,
                        "Outbox full; holding acknowledgements until the uplink frees space."
                    );
                    self.publish_gauges();
                    if *shutdown.borrow() {
                        warn!(
                            "Shutting down with a full outbox; the waiting messages stay unacknowledged."
                        );
                        fail_all(&mut group, "shutdown while the outbox was full");
                        return;
                    }
                    tokio::select! {
                        () = self.outbox.space_freed.notified() => {}
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.changed() => {}
                    }
                }
                Err(e) => {
                    error!(error = %e, "Outbox write failed; messages stay unacknowledged and will be redelivered.");
                    fail_all(&mut group, &e.to_string());
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    return;
                }
            }
        }
        if stats.flushed {
            self.metrics.fsyncs.inc();
        }
        self.metrics.readings_committed.inc_by(stats.readings);
        self.metrics.outbox_dropped.inc_by(stats.dropped);
        for reason in &stats.quarantined {
            self.metrics.quarantine(reason);
        }
        if stats.dropped > 0 {
            warn!(
                dropped = stats.dropped,
                "Outbox full; oldest unsent readings dropped (drop_oldest policy)."
            );
        }
        self.metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.commit_envelopes.observe(group.len() as f64);
        let now = protocol::Timestamp::now();
        for e in &mut group {
            if e.done.is_some() {
                self.metrics.messages_committed.inc();
                let waited = now.as_nanos().saturating_sub(e.received.as_nanos()).max(0);
                self.metrics
                    .ack_latency_seconds
                    .observe(waited as f64 / 1e9);
            }
            e.finish(Commit::Durable);
        }
        self.publish_gauges();
        self.outbox.data_added.notify_one();
        // Durable now: hand the readings to analysis (it may lag, never block).
        if let Some(feed) = &self.analysis {
            for job in &pending {
                if let Job::Append { analysis, .. } = job {
                    feed.offer(analysis);
                }
            }
        }
    }

    fn publish_gauges(&self) {
        self.metrics.observe_outbox(&self.outbox);
    }
}

#[derive(Debug, Default)]
struct CommitStats {
    readings: u64,
    dropped: u64,
    quarantined: Vec<String>,
    next_job: usize,
    flushed: bool,
}

impl CommitStats {
    fn merge(&mut self, o: &CommitStats) {
        self.readings += o.readings;
        self.dropped += o.dropped;
        self.quarantined.extend(o.quarantined.iter().cloned());
        self.flushed |= o.flushed;
    }
}

/// Writes jobs `start..` (blocking). On `Full`, `stats.next_job` says where to resume.
fn write_jobs(
    outbox: &Outbox,
    jobs: &mut [Job],
    start: usize,
    stats: &mut CommitStats,
) -> Result<(), OutboxError> {
    // Appends are grouped into atomic chunks of at most a quarter of the cap,
    // so one commit never needs the whole outbox to be empty.
    let chunk_cap = (outbox.max_bytes() / 4).max(1);
    let mut i = start;
    stats.next_job = start;
    while i < jobs.len() {
        let mut chunk: Vec<Vec<u8>> = Vec::new();
        let mut chunk_checkpoints: Vec<Checkpoint> = Vec::new();
        let mut chunk_readings = 0u64;
        let mut chunk_cost = 0u64;
        let mut j = i;
        while j < jobs.len() {
            match &mut jobs[j] {
                Job::Append {
                    encoded,
                    readings,
                    checkpoints,
                    analysis,
                } => {
                    let cost = Outbox::cost(encoded);
                    if cost > outbox.max_bytes() {
                        let entry = QuarantineEntry {
                            received: protocol::Timestamp::now(),
                            origin: "ingest".into(),
                            reason: TOO_BIG_FOR_OUTBOX.into(),
                            detail: format!(
                                "{readings} readings need {cost} bytes; the outbox holds {}",
                                outbox.max_bytes()
                            ),
                            payload: Vec::new(),
                            payload_len: 0,
                        };
                        outbox.quarantine(&entry)?;
                        stats.quarantined.push(TOO_BIG_FOR_OUTBOX.into());
                        *encoded = Vec::new();
                        *readings = 0;
                        // Not stored, so not analysed either.
                        analysis.clear();
                        // Its readings are settled (quarantined): the cursor moves on.
                        chunk_checkpoints.append(checkpoints);
                    } else if !chunk.is_empty() && chunk_cost + cost > chunk_cap {
                        break;
                    } else {
                        chunk_cost += cost;
                        chunk_readings += *readings;
                        chunk.append(encoded);
                        chunk_checkpoints.append(checkpoints);
                        *readings = 0;
                    }
                }
                Job::Quarantine(entry) => {
                    if !entry.reason.is_empty() {
                        outbox.quarantine(entry)?;
                        stats.quarantined.push(std::mem::take(&mut entry.reason));
                    }
                }
            }
            j += 1;
        }
        match outbox.append_with_checkpoints(&chunk, &chunk_checkpoints) {
            Ok(outcome) => {
                stats.readings += chunk_readings;
                stats.dropped += outcome.dropped;
                i = j;
                stats.next_job = i;
            }
            Err(e) => {
                // Put the chunk back so a retry writes exactly the same records.
                restore_chunk(jobs, i, j, chunk, chunk_readings, chunk_checkpoints);
                if matches!(e, OutboxError::Full { .. }) {
                    // Make the chunks already written durable, and so readable
                    // by the uplink, which is what frees the space we wait for.
                    outbox.flush()?;
                    stats.flushed = true;
                }
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Undo of the `append` moves above for jobs `i..j`: the whole chunk goes back
/// into the first append job of the range (the others stay empty), with its
/// checkpoints in their original order (a later one with the same key wins).
fn restore_chunk(
    jobs: &mut [Job],
    i: usize,
    j: usize,
    chunk: Vec<Vec<u8>>,
    chunk_readings: u64,
    chunk_checkpoints: Vec<Checkpoint>,
) {
    if let Some(Job::Append {
        encoded,
        readings,
        checkpoints,
        ..
    }) = jobs[i..j]
        .iter_mut()
        .find(|job| matches!(job, Job::Append { .. }))
    {
        *encoded = chunk;
        *readings = chunk_readings;
        *checkpoints = chunk_checkpoints;
    }
}

fn fail_all(group: &mut [Envelope], why: &str) {
    for e in group {
        e.finish(Commit::Failed(why.to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{StorageConfig, WhenFull};
    use bytesize::ByteSize;
    use protocol::{Reading, Timestamp};

    fn setup(max: u64, when_full: WhenFull) -> (tempfile::TempDir, Arc<Outbox>, Metrics) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StorageConfig {
            max_outbox_bytes: ByteSize::b(max),
            when_full,
            cache_capacity: ByteSize::mib(1),
            ..Default::default()
        };
        let outbox = Arc::new(Outbox::open(dir.path(), &cfg).unwrap());
        let metrics = Metrics::new(&mut prometheus_client::registry::Registry::default());
        (dir, outbox, metrics)
    }

    fn envelope(i: i64) -> (Envelope, tokio::sync::oneshot::Receiver<Commit>) {
        let r = Reading::new("dev", "ch", Timestamp(i), i as f64).unwrap();
        Envelope::new("test".into(), Timestamp(i), Content::Readings(vec![r]))
    }

    #[tokio::test]
    async fn envelopes_are_acknowledged_only_after_the_flush_and_in_order() {
        let (_dir, outbox, metrics) = setup(1 << 20, WhenFull::Block);
        let (tx, rx) = mpsc::channel(100);
        let ingest = Ingest::new(
            outbox.clone(),
            metrics.clone(),
            IngestConfig::default(),
            1024,
        );
        let mut receivers = Vec::new();
        for i in 0..50 {
            let (e, done) = envelope(i);
            tx.send(e).await.unwrap();
            receivers.push(done);
        }
        drop(tx);
        ingest.run(rx, watch::channel(false).1).await;
        for done in receivers {
            assert_eq!(done.await.unwrap(), Commit::Durable);
        }
        assert_eq!(outbox.depth(), 50);
        assert!(metrics.fsyncs.get() >= 1 && metrics.fsyncs.get() <= 50);
        assert_eq!(metrics.messages_committed.get(), 50);
    }

    #[tokio::test]
    async fn rejected_payloads_are_quarantined_and_acknowledged() {
        let (_dir, outbox, metrics) = setup(1 << 20, WhenFull::Block);
        let (tx, rx) = mpsc::channel(10);
        let ingest = Ingest::new(outbox.clone(), metrics.clone(), IngestConfig::default(), 8);
        let (e, done) = Envelope::new(
            "mqtt:t".into(),
            Timestamp(1),
            Content::Rejected {
                error: protocol::DecodeError::Empty,
                payload: b"0123456789".to_vec(),
                payload_len: 10,
            },
        );
        tx.send(e).await.unwrap();
        drop(tx);
        ingest.run(rx, watch::channel(false).1).await;
        assert_eq!(done.await.unwrap(), Commit::Durable);
        let q = outbox.quarantine_list(10).unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].1.reason, "empty");
        assert_eq!(
            q[0].1.payload,
            b"01234567".to_vec(),
            "payload kept up to the configured bytes"
        );
        assert_eq!(outbox.depth(), 0);
    }

    #[tokio::test]
    async fn checkpoints_are_stored_with_their_readings_and_alone_for_empty_envelopes() {
        let (dir, outbox, metrics) = setup(1 << 20, WhenFull::Block);
        let (tx, rx) = mpsc::channel(100);
        let ingest = Ingest::new(outbox.clone(), metrics, IngestConfig::default(), 64);
        let mut receivers = Vec::new();
        for i in 0..20 {
            let (e, done) = envelope(i);
            tx.send(e.with_checkpoint("file:a", i.to_string().into_bytes()))
                .await
                .unwrap();
            receivers.push(done);
        }
        let (empty, done) = Envelope::new("test".into(), Timestamp(0), Content::Readings(vec![]));
        tx.send(empty.with_checkpoint("sql:s", b"cursor".to_vec()))
            .await
            .unwrap();
        receivers.push(done);
        drop(tx);
        ingest.run(rx, watch::channel(false).1).await;
        for done in receivers {
            assert_eq!(done.await.unwrap(), Commit::Durable);
        }
        drop(outbox);
        let reopened = Outbox::open(
            dir.path(),
            &StorageConfig {
                cache_capacity: ByteSize::mib(1),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(reopened.depth(), 20);
        assert_eq!(
            reopened.checkpoint("file:a").unwrap(),
            Some(b"19".to_vec()),
            "the last envelope's cursor wins"
        );
        assert_eq!(
            reopened.checkpoint("sql:s").unwrap(),
            Some(b"cursor".to_vec())
        );
    }

    #[tokio::test]
    async fn when_a_full_outbox_stops_a_group_midway_the_checkpoint_matches_the_stored_readings() {
        let (dir, outbox, metrics) = setup(4_000, WhenFull::Block);
        let (tx, rx) = mpsc::channel(1000);
        let ingest = Ingest::new(outbox.clone(), metrics.clone(), IngestConfig::default(), 64);
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(ingest.run(rx, stop_rx));
        for i in 0..200 {
            let (e, _done) = envelope(i);
            tx.send(e.with_checkpoint("file:a", i.to_string().into_bytes()))
                .await
                .unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while metrics.outbox_full_waits.get() == 0 {
            assert!(Instant::now() < deadline, "the outbox never filled");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Abandon the blocked group (and everything after it), as on shutdown.
        stop.send(true).unwrap();
        drop(tx);
        task.await.unwrap();
        outbox.flush().unwrap();
        drop(outbox);
        let reopened = Outbox::open(
            dir.path(),
            &StorageConfig {
                cache_capacity: ByteSize::mib(1),
                ..Default::default()
            },
        )
        .unwrap();
        let stored: Vec<i64> = reopened
            .read_batch(0, usize::MAX, u64::MAX)
            .unwrap()
            .iter()
            .map(|r| {
                let r = r.item.reading().unwrap();
                r.ts.0
            })
            .collect();
        assert!(!stored.is_empty() && stored.len() < 200, "{stored:?}");
        let cursor: i64 = String::from_utf8(reopened.checkpoint("file:a").unwrap().unwrap())
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            stored,
            (0..=cursor).collect::<Vec<_>>(),
            "the cursor covers exactly the stored readings"
        );
    }

    #[tokio::test]
    async fn a_full_outbox_under_block_holds_acknowledgements_until_space_is_freed() {
        let (_dir, outbox, metrics) = setup(4_000, WhenFull::Block);
        let (tx, rx) = mpsc::channel(1000);
        let ingest = Ingest::new(outbox.clone(), metrics.clone(), IngestConfig::default(), 64);
        let (_stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(ingest.run(rx, stop_rx));
        let mut receivers = Vec::new();
        for i in 0..200 {
            let (e, done) = envelope(i);
            tx.send(e).await.unwrap();
            receivers.push(done);
        }
        // Let ingest fill the outbox and block.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut acked_while_full = 0;
        for r in &mut receivers {
            if matches!(r.try_recv(), Ok(Commit::Durable)) {
                acked_while_full += 1;
            }
        }
        assert!(
            acked_while_full < 200,
            "everything was acked although the outbox is too small"
        );
        assert!(metrics.outbox_full_waits.get() >= 1);
        // Drain like the uplink would, until every envelope is acknowledged.
        let mut drained = 0u64;
        let mut remaining: Vec<_> = receivers
            .into_iter()
            .filter(|r| !r.is_terminated())
            .collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !remaining.is_empty() {
            assert!(Instant::now() < deadline, "ingest never resumed");
            let batch = outbox.read_batch(0, 1000, u64::MAX).unwrap();
            if let (Some(f), Some(l)) = (batch.first(), batch.last()) {
                drained += outbox.remove_range(f.seq, l.seq).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            remaining.retain_mut(|r| !matches!(r.try_recv(), Ok(Commit::Durable)));
        }
        drop(tx);
        task.await.unwrap();
        drained += outbox.depth();
        assert_eq!(
            drained, 200,
            "every reading reached the outbox exactly once"
        );
        assert_eq!(metrics.outbox_dropped.get(), 0);
    }

    /// An envelope of `n` readings, received now.
    fn envelope_now(n: usize, base: i64) -> (Envelope, tokio::sync::oneshot::Receiver<Commit>) {
        let readings = (0..n as i64)
            .map(|i| Reading::new("dev", "ch", Timestamp(base + i), 1.0).unwrap())
            .collect();
        Envelope::new("test".into(), Timestamp::now(), Content::Readings(readings))
    }

    fn delayed(delay: Duration) -> IngestConfig {
        IngestConfig {
            max_commit_delay: delay,
            ..IngestConfig::default()
        }
    }

    #[tokio::test]
    async fn at_low_rates_a_message_waits_for_company_up_to_the_commit_delay() {
        let (_dir, outbox, metrics) = setup(1 << 20, WhenFull::Block);
        let (tx, rx) = mpsc::channel(10);
        let delay = Duration::from_millis(300);
        let ingest = Ingest::new(outbox.clone(), metrics.clone(), delayed(delay), 64);
        let (_stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(ingest.run(rx, stop_rx));
        let sent = Instant::now();
        let (a, done_a) = envelope_now(5, 0);
        tx.send(a).await.unwrap();
        // Until ingest has taken `a` off the queue: `a` alone would commit now.
        let deadline = Instant::now() + Duration::from_secs(10);
        while tx.capacity() < 10 {
            assert!(Instant::now() < deadline, "ingest never took the envelope");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let (b, done_b) = envelope_now(5, 100);
        tx.send(b).await.unwrap();
        assert_eq!(done_a.await.unwrap(), Commit::Durable);
        assert!(sent.elapsed() >= delay - Duration::from_millis(20));
        assert_eq!(done_b.await.unwrap(), Commit::Durable);
        assert_eq!(metrics.fsyncs.get(), 1, "both messages share one fsync");
        assert_eq!(outbox.depth(), 10);
        drop(tx);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_full_group_commits_without_waiting_for_the_delay() {
        let (_dir, outbox, metrics) = setup(1 << 20, WhenFull::Block);
        let (tx, rx) = mpsc::channel(10);
        // Far beyond the test's patience: only a full group can commit.
        let ingest = Ingest::new(
            outbox.clone(),
            metrics.clone(),
            delayed(Duration::from_secs(600)),
            64,
        );
        let (_stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(ingest.run(rx, stop_rx));
        let (a, done_a) = envelope_now(GROUP_FILL_READINGS / 2, 0);
        let (b, done_b) = envelope_now(GROUP_FILL_READINGS / 2, 10_000);
        tx.send(a).await.unwrap();
        tx.send(b).await.unwrap();
        let acked = tokio::time::timeout(Duration::from_secs(20), async {
            (done_a.await.unwrap(), done_b.await.unwrap())
        })
        .await
        .expect("a full group waited for the commit delay");
        assert_eq!(acked, (Commit::Durable, Commit::Durable));
        assert_eq!(metrics.fsyncs.get(), 1);
        drop(tx);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn closing_the_queue_commits_a_waiting_group_at_once() {
        let (_dir, outbox, metrics) = setup(1 << 20, WhenFull::Block);
        let (tx, rx) = mpsc::channel(10);
        let ingest = Ingest::new(
            outbox.clone(),
            metrics,
            delayed(Duration::from_secs(600)),
            64,
        );
        let (a, done) = envelope_now(5, 0);
        tx.send(a).await.unwrap();
        drop(tx);
        tokio::time::timeout(
            Duration::from_secs(20),
            ingest.run(rx, watch::channel(false).1),
        )
        .await
        .expect("shutdown waited for the commit delay");
        assert_eq!(done.await.unwrap(), Commit::Durable);
        assert_eq!(outbox.depth(), 5);
    }
}
