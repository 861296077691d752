//! The validation stage inside ingest: de-duplication, clock stamping and
//! contracts for the readings of one envelope, then quarantine entries for
//! the rejected readings and outbox records for the rest.
//!
//! Order for each reading: (1) de-duplication — an identity already stored
//! recently, or repeated within the same message, is dropped and counted
//! (`outpost_gateway_readings_deduplicated_total`), not quarantined;
//! (2) clock — a reading the gateway timed itself (`TIME_FROM_RECEIVE`) while
//! its clock is unsynchronised gets `CLOCK_UNSYNCED` and a [`ClockStamp`], and
//! is stored as `OutboxItem::ClockPending` for the uplink to correct;
//! (3) contracts ([`ContractSet::evaluate`]).
//!
//! Rejected readings are written to quarantine right here (one small sled
//! insert each, made durable by the group's flush, like every record); if
//! that write fails the whole envelope is failed (not acknowledged, its
//! checkpoint dropped), so nothing is lost silently.
//!
//! De-duplication remembers an identity only once its commit succeeded: the
//! envelope's `done` channel is relayed through a small task that records the
//! identities on `Commit::Durable` and then passes the result on unchanged.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use protocol::batch::OutboxItem;
use protocol::{ClockStamp, Quality, Reading};
use tokio::sync::oneshot;
use tracing::{debug, error};

use super::dedup::{Dedup, IdKey};
use super::{
    ContractSet, ContractsConfig, ContractsError, DEFAULT_DEDUP_WINDOW, DEFAULT_MAX_SERIES, Rule,
    SeriesTable, SharedContracts, Verdict, Violation,
};
use crate::clock::{ClockConfig, ClockMonitor};
use crate::envelope::{Commit, Envelope};
use crate::metrics::Metrics;
use crate::outbox::{Outbox, OutboxError, QuarantineEntry};

/// Validation, cleansing, de-duplication and clock stamping, shared by the
/// ingest task (and, for the contracts and the clock, by reload and uplink).
#[derive(Debug)]
pub struct Validation {
    contracts: SharedContracts,
    series: Mutex<SeriesTable>,
    dedup: Arc<Mutex<Dedup>>,
    clock: Arc<ClockMonitor>,
}

/// One envelope's readings, sorted.
#[derive(Debug, Default)]
pub struct Checked {
    /// Readings to store, in order, each with its clock stamp if it has one.
    pub accepted: Vec<(Reading, Option<ClockStamp>)>,
    /// Readings to quarantine.
    pub rejected: Vec<(Reading, Violation)>,
    /// Readings dropped as duplicates.
    pub duplicates: u64,
    /// Rules broken with `flag`, one entry per flagged violation.
    pub flagged: Vec<Rule>,
    /// Identity keys of the accepted readings, remembered once durable.
    pub keys: Vec<IdKey>,
    /// Whether the clock was synchronised.
    pub clock_synced: bool,
}

impl Validation {
    pub fn new(
        contracts: SharedContracts,
        max_series: usize,
        dedup_window: usize,
        clock: Arc<ClockMonitor>,
    ) -> Self {
        Validation {
            contracts,
            series: Mutex::new(SeriesTable::new(max_series)),
            dedup: Arc::new(Mutex::new(Dedup::new(dedup_window))),
            clock,
        }
    }

    /// From `[contracts]` (absent: no contracts, default de-duplication).
    pub fn from_config(
        cfg: Option<&ContractsConfig>,
        clock: Arc<ClockMonitor>,
    ) -> Result<Self, ContractsError> {
        let cfg = cfg.cloned().unwrap_or_default();
        let set = ContractSet::from_config(&cfg, "contracts")?;
        Ok(Self::new(
            set.shared(),
            cfg.max_series,
            cfg.dedup_window,
            clock,
        ))
    }

    /// No contracts, default de-duplication, this machine's clock with the
    /// default `[clock]` settings (what `Ingest::new` starts with).
    pub fn passthrough() -> Self {
        Self::new(
            ContractSet::empty().shared(),
            DEFAULT_MAX_SERIES,
            DEFAULT_DEDUP_WINDOW,
            Arc::new(ClockMonitor::system(&ClockConfig::default())),
        )
    }

    /// The live contract set; `store` a new [`ContractSet`] to swap it.
    pub fn contracts(&self) -> SharedContracts {
        self.contracts.clone()
    }

    pub fn clock(&self) -> Arc<ClockMonitor> {
        self.clock.clone()
    }

    /// Series tracked now, and evicted so far.
    pub fn series_stats(&self) -> (usize, u64) {
        let s = self.series.lock().unwrap_or_else(|p| p.into_inner());
        (s.len(), s.evicted())
    }

    /// Remembers identities as stored (normally done after a durable commit).
    pub fn remember(&self, keys: impl IntoIterator<Item = IdKey>) {
        self.dedup
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remember(keys);
    }

    /// Sorts one envelope's readings. No I/O.
    pub fn check(&self, readings: Vec<Reading>) -> Checked {
        let now = self.clock.now();
        let contracts = self.contracts.load();
        let mut out = Checked {
            clock_synced: now.synced,
            ..Checked::default()
        };
        let dedup = self.dedup.lock().unwrap_or_else(|p| p.into_inner());
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let mut in_message: HashSet<IdKey> = HashSet::new();
        for mut r in readings {
            let key = dedup.key(&r);
            if dedup.enabled() && (dedup.contains(&key) || !in_message.insert(key)) {
                out.duplicates += 1;
                continue;
            }
            let mut stamp = None;
            if r.quality.contains(Quality::TIME_FROM_RECEIVE) && !now.synced {
                r.quality |= Quality::CLOCK_UNSYNCED;
                stamp = Some(self.clock.stamp(r.ts, &now));
            }
            let e = contracts.evaluate(r, &mut series, &now);
            out.flagged.extend(e.flagged);
            match e.verdict {
                Verdict::Accept(r) => {
                    out.keys.push(key);
                    out.accepted.push((r, stamp));
                }
                Verdict::Reject { reading, violation } => out.rejected.push((reading, violation)),
            }
        }
        out
    }

    /// The ingest hook: validates an envelope's readings, quarantines the
    /// rejected ones, and returns the accepted readings with their encoded
    /// outbox items. On a quarantine write failure the envelope is failed
    /// (and its checkpoint dropped) and nothing is returned.
    pub(crate) fn apply(
        &self,
        envelope: &mut Envelope,
        readings: Vec<Reading>,
        outbox: &Outbox,
        metrics: &Metrics,
    ) -> (Vec<Reading>, Result<Vec<Vec<u8>>, OutboxError>) {
        let checked = self.check(readings);
        metrics
            .clock_synchronized
            .set(i64::from(checked.clock_synced));
        if checked.duplicates > 0 {
            metrics.readings_deduplicated.inc_by(checked.duplicates);
            debug!(origin = %envelope.origin, duplicates = checked.duplicates, "Duplicate readings dropped.");
        }
        for rule in &checked.flagged {
            metrics.contract_violation(rule.reason_code(), "flag");
        }
        let (series, evicted) = self.series_stats();
        metrics
            .contract_series
            .set(i64::try_from(series).unwrap_or(i64::MAX));
        let already = metrics.contract_series_evicted.get();
        if evicted > already {
            metrics.contract_series_evicted.inc_by(evicted - already);
        }
        for (reading, violation) in &checked.rejected {
            let payload = serde_json::to_vec(reading).unwrap_or_default();
            let entry = QuarantineEntry {
                received: envelope.received,
                origin: envelope.origin.clone(),
                reason: violation.reason_code().into(),
                detail: format!("{} ({})", violation, reading.id()),
                payload_len: payload.len(),
                payload,
            };
            if let Err(e) = outbox.quarantine(&entry) {
                error!(error = %e, origin = %envelope.origin, "Cannot quarantine a rejected reading; the message is not acknowledged.");
                envelope.checkpoint = None;
                envelope.finish(Commit::Failed(format!("quarantine write failed: {e}")));
                return (Vec::new(), Ok(Vec::new()));
            }
            metrics.quarantine(violation.reason_code());
            metrics.contract_violation(violation.reason_code(), "reject");
        }
        let mut encoded = Vec::with_capacity(checked.accepted.len());
        let mut readings = Vec::with_capacity(checked.accepted.len());
        for (reading, stamp) in checked.accepted {
            let item = match stamp {
                Some(clock) => OutboxItem::ClockPending {
                    reading: reading.clone(),
                    clock,
                },
                None => OutboxItem::Reading(reading.clone()),
            };
            let mut buf = Vec::with_capacity(96);
            if let Err(e) = ciborium::into_writer(&item, &mut buf) {
                return (readings, Err(OutboxError::Encode(e.to_string())));
            }
            encoded.push(buf);
            readings.push(reading);
        }
        self.remember_when_durable(envelope, checked.keys);
        (readings, Ok(encoded))
    }

    /// Relays the envelope's `done` so its identities are remembered only
    /// after a durable commit. Without a sender (QoS 0: never redelivered)
    /// they are remembered now; outside a runtime, not at all.
    fn remember_when_durable(&self, envelope: &mut Envelope, keys: Vec<IdKey>) {
        if keys.is_empty() || !self.dedup_enabled() {
            return;
        }
        let Some(original) = envelope.done.take() else {
            self.remember(keys);
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            envelope.done = Some(original);
            return;
        };
        let (tx, rx) = oneshot::channel();
        envelope.done = Some(tx);
        let dedup = self.dedup.clone();
        rt.spawn(async move {
            // A dropped sender (ingest gone) drops ours too: same as before.
            if let Ok(result) = rx.await {
                if result == Commit::Durable {
                    dedup
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remember(keys);
                }
                let _ = original.send(result);
            }
        });
    }

    fn dedup_enabled(&self) -> bool {
        self.dedup
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .enabled()
    }
}
