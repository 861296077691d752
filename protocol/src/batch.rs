//! The uplink batch: what a gateway POSTs to the cloud sink.
//!
//! Wire form: the [`UplinkBatch`] serialised as CBOR, then compressed with zstd.
//! HTTP headers carry `Content-Type: application/cbor`, `Content-Encoding: zstd`
//! and `Idempotency-Key: {gateway}:{outbox_epoch as 16 hex digits}:{first_seq}-{last_seq}`.
//!
//! `first_seq`/`last_seq` are the gateway's outbox sequence numbers; the sink
//! de-duplicates on `(gateway, seq)` and on the reading identity, so a batch sent
//! twice is stored once. `schema_version` lets either side refuse what it does
//! not understand instead of misreading it.

use std::io::Read;

use serde::{Deserialize, Serialize};

use crate::reading::{ClockStamp, Reading};

/// The highest schema version this crate reads. Version 2 added
/// [`OutboxItem::Alert`] and [`OutboxItem::Quarantined`]; a batch with
/// neither is still written as version 1, so a gateway that sends only
/// readings keeps working with an older sink.
pub const SCHEMA_VERSION: u16 = 2;
/// The version of a batch with no alert in it.
pub const SCHEMA_VERSION_READINGS_ONLY: u16 = 1;
/// MIME type of the (uncompressed) body.
pub const CONTENT_TYPE: &str = "application/cbor";
/// `Content-Encoding` of the body.
pub const CONTENT_ENCODING: &str = "zstd";

/// One outbox entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutboxRecord {
    /// The gateway's outbox sequence number: strictly increasing, never reused.
    pub seq: u64,
    pub item: OutboxItem,
}

/// What an outbox entry carries. New kinds (alerts, quarantine reports) are
/// added as variants with a schema version bump.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboxItem {
    Reading(Reading),
    /// A reading the gateway timed while its clock was not synchronised
    /// (flagged `CLOCK_UNSYNCED`), with the stamp that lets the uplink correct
    /// it later. **Outbox-local:** the gateway resolves it into a plain
    /// [`OutboxItem::Reading`] before a batch is built, so it never travels
    /// ([`UplinkBatch::new`] and [`UplinkBatch::decode`] refuse it) and the
    /// wire schema is unchanged.
    ClockPending {
        reading: Reading,
        clock: ClockStamp,
    },
    /// An anomaly alert of the gateway's edge analytics (schema version 2).
    Alert(crate::alert::Alert),
    /// Input the gateway quarantined, reported to the sink (schema version 2).
    Quarantined(crate::alert::QuarantineReport),
}

impl OutboxItem {
    /// The reading, whichever kind of item carries it (`None` for an alert).
    pub fn reading(&self) -> Option<&Reading> {
        match self {
            OutboxItem::Reading(r) | OutboxItem::ClockPending { reading: r, .. } => Some(r),
            OutboxItem::Alert(_) | OutboxItem::Quarantined(_) => None,
        }
    }

    /// The reading, mutably.
    pub fn reading_mut(&mut self) -> Option<&mut Reading> {
        match self {
            OutboxItem::Reading(r) | OutboxItem::ClockPending { reading: r, .. } => Some(r),
            OutboxItem::Alert(_) | OutboxItem::Quarantined(_) => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UplinkBatch {
    pub schema_version: u16,
    pub gateway_id: String,
    /// Random id of the gateway's outbox, chosen when it was created. Sequence
    /// numbers are unique within one epoch; a gateway whose storage was wiped
    /// starts a new epoch, so its restarted sequence numbers never collide
    /// with ones the sink already has.
    #[serde(default)]
    pub outbox_epoch: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub records: Vec<OutboxRecord>,
}

/// Just the version of a batch, read when the whole batch does not decode.
#[derive(Deserialize)]
struct BatchHeader {
    schema_version: u16,
}

/// The zstd window (log2 bytes) a body needs to decompress to at most `max_bytes`:
/// at least zstd's minimum (2^10), at most its default ceiling (2^27).
fn window_log_for(max_bytes: usize) -> u32 {
    max_bytes
        .checked_next_power_of_two()
        .map_or(usize::BITS, usize::trailing_zeros)
        .clamp(10, 27)
}

/// Bounds applied when decoding a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchLimits {
    /// Largest compressed body accepted.
    pub max_compressed_bytes: usize,
    /// Largest body after decompression (guards against compression bombs).
    pub max_decompressed_bytes: usize,
    /// Most records in one batch.
    pub max_records: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            max_compressed_bytes: 8 * 1024 * 1024,
            max_decompressed_bytes: 64 * 1024 * 1024,
            max_records: 100_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("alert or quarantine report at seq {seq} is malformed: {problem}")]
    BadAlert { seq: u64, problem: String },
    #[error("batch has no records")]
    Empty,
    #[error("records are not in strictly increasing sequence order at index {0}")]
    OutOfOrder(usize),
    #[error("batch is {size} bytes, limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("batch decompresses to more than {limit} bytes")]
    DecompressedTooLarge { limit: usize },
    #[error("batch holds {count} records, limit is {limit}")]
    TooManyRecords { count: usize, limit: usize },
    #[error("schema version {0} is newer than this program understands ({SCHEMA_VERSION})")]
    UnsupportedSchema(u16),
    #[error("first_seq/last_seq ({first}..={last}) do not match the records")]
    SequenceMismatch { first: u64, last: u64 },
    #[error("zstd: {0}")]
    Compression(std::io::Error),
    #[error("CBOR: {0}")]
    Cbor(String),
    #[error("record {0} still carries an unresolved clock stamp (outbox-local item)")]
    UnresolvedClock(u64),
}

impl UplinkBatch {
    /// Builds a batch from records in outbox order.
    pub fn new(
        gateway_id: impl Into<String>,
        records: Vec<OutboxRecord>,
    ) -> Result<Self, BatchError> {
        let (first, last) = match (records.first(), records.last()) {
            (Some(f), Some(l)) => (f.seq, l.seq),
            _ => return Err(BatchError::Empty),
        };
        let has_alerts = records
            .iter()
            .any(|r| matches!(r.item, OutboxItem::Alert(_) | OutboxItem::Quarantined(_)));
        let batch = UplinkBatch {
            schema_version: if has_alerts {
                SCHEMA_VERSION
            } else {
                SCHEMA_VERSION_READINGS_ONLY
            },
            gateway_id: gateway_id.into(),
            outbox_epoch: 0,
            first_seq: first,
            last_seq: last,
            records,
        };
        batch.check()?;
        Ok(batch)
    }

    /// `{gateway}:{first_seq}-{last_seq}`: the same records always get the same key.
    pub fn idempotency_key(&self) -> String {
        format!(
            "{}:{:016x}:{}-{}",
            self.gateway_id, self.outbox_epoch, self.first_seq, self.last_seq
        )
    }

    /// Sets the outbox epoch (see the field).
    pub fn with_epoch(mut self, epoch: u64) -> Self {
        self.outbox_epoch = epoch;
        self
    }

    /// CBOR, then zstd at `level` (3 is zstd's default).
    pub fn encode(&self, level: i32) -> Result<Vec<u8>, BatchError> {
        let mut cbor = Vec::with_capacity(64 * self.records.len());
        ciborium::into_writer(self, &mut cbor).map_err(|e| BatchError::Cbor(e.to_string()))?;
        zstd::bulk::compress(&cbor, level).map_err(BatchError::Compression)
    }

    /// Decompresses (bounded), decodes and checks a batch body.
    pub fn decode(body: &[u8], limits: &BatchLimits) -> Result<Self, BatchError> {
        if body.len() > limits.max_compressed_bytes {
            return Err(BatchError::TooLarge {
                size: body.len(),
                limit: limits.max_compressed_bytes,
            });
        }
        let mut decoder =
            zstd::stream::read::Decoder::with_buffer(body).map_err(BatchError::Compression)?;
        // A frame header may ask for a window of up to 2^27 bytes, allocated
        // before any output: allow no more than the output limit needs.
        decoder
            .window_log_max(window_log_for(limits.max_decompressed_bytes))
            .map_err(BatchError::Compression)?;
        let mut cbor = Vec::new();
        // Read one byte past the limit to tell "exactly at" from "over".
        decoder
            .take(limits.max_decompressed_bytes as u64 + 1)
            .read_to_end(&mut cbor)
            .map_err(BatchError::Compression)?;
        if cbor.len() > limits.max_decompressed_bytes {
            return Err(BatchError::DecompressedTooLarge {
                limit: limits.max_decompressed_bytes,
            });
        }
        let batch: UplinkBatch =
            match ciborium::de::from_reader_with_recursion_limit(cbor.as_slice(), 16) {
                Ok(batch) => batch,
                Err(e) => {
                    // A newer schema may not decode as this one at all (a new item
                    // kind, say): report the version rather than a CBOR error.
                    if let Ok(header) = ciborium::de::from_reader_with_recursion_limit::<
                        BatchHeader,
                        _,
                    >(cbor.as_slice(), 16)
                        && header.schema_version > SCHEMA_VERSION
                    {
                        return Err(BatchError::UnsupportedSchema(header.schema_version));
                    }
                    return Err(BatchError::Cbor(e.to_string()));
                }
            };
        if batch.schema_version > SCHEMA_VERSION {
            return Err(BatchError::UnsupportedSchema(batch.schema_version));
        }
        if batch.records.len() > limits.max_records {
            return Err(BatchError::TooManyRecords {
                count: batch.records.len(),
                limit: limits.max_records,
            });
        }
        batch.check()?;
        Ok(batch)
    }

    fn check(&self) -> Result<(), BatchError> {
        let (first, last) = match (self.records.first(), self.records.last()) {
            (Some(f), Some(l)) => (f.seq, l.seq),
            _ => return Err(BatchError::Empty),
        };
        if first != self.first_seq || last != self.last_seq {
            return Err(BatchError::SequenceMismatch {
                first: self.first_seq,
                last: self.last_seq,
            });
        }
        if let Some(i) = self.records.windows(2).position(|w| w[0].seq >= w[1].seq) {
            return Err(BatchError::OutOfOrder(i + 1));
        }
        if let Some(r) = self
            .records
            .iter()
            .find(|r| matches!(r.item, OutboxItem::ClockPending { .. }))
        {
            return Err(BatchError::UnresolvedClock(r.seq));
        }
        if let Some((seq, problem)) = self
            .alerts()
            .find_map(|(seq, a)| a.problem().map(|p| (seq, p)))
        {
            return Err(BatchError::BadAlert { seq, problem });
        }
        if let Some((seq, problem)) = self
            .quarantine_reports()
            .find_map(|(seq, q)| q.problem().map(|p| (seq, p)))
        {
            return Err(BatchError::BadAlert { seq, problem });
        }
        Ok(())
    }

    /// The readings in the batch, in sequence order.
    pub fn readings(&self) -> impl Iterator<Item = (u64, &Reading)> {
        self.records
            .iter()
            .filter_map(|r| r.item.reading().map(|reading| (r.seq, reading)))
    }

    /// The quarantine reports in the batch, in sequence order.
    pub fn quarantine_reports(
        &self,
    ) -> impl Iterator<Item = (u64, &crate::alert::QuarantineReport)> {
        self.records.iter().filter_map(|r| match &r.item {
            OutboxItem::Quarantined(q) => Some((r.seq, q)),
            _ => None,
        })
    }

    /// The alerts in the batch, in sequence order.
    pub fn alerts(&self) -> impl Iterator<Item = (u64, &crate::alert::Alert)> {
        self.records.iter().filter_map(|r| match &r.item {
            OutboxItem::Alert(a) => Some((r.seq, a)),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::reading::{Quality, Timestamp};

    use super::*;

    fn record(seq: u64) -> OutboxRecord {
        let mut r = Reading::new(
            "pump-1",
            "temp",
            Timestamp(1_700_000_000_000_000_000 + seq as i64),
            seq as f64,
        )
        .unwrap()
        .with_unit("Cel");
        r.seq = Some(seq * 10);
        r.quality = Quality::CLOCK_UNSYNCED | Quality::STUCK;
        OutboxRecord {
            seq,
            item: OutboxItem::Reading(r),
        }
    }

    fn batch(seqs: impl IntoIterator<Item = u64>) -> UplinkBatch {
        UplinkBatch::new("gw-1", seqs.into_iter().map(record).collect()).unwrap()
    }

    /// Compresses a batch as-is, without the checks `new` makes.
    fn raw_body(b: &UplinkBatch) -> Vec<u8> {
        let mut cbor = Vec::new();
        ciborium::into_writer(b, &mut cbor).unwrap();
        zstd::bulk::compress(&cbor, 3).unwrap()
    }

    #[test]
    fn a_batch_survives_encode_and_decode_unchanged() {
        let b = batch([3, 4, 7, 100]);
        let body = b.encode(3).unwrap();
        let back = UplinkBatch::decode(&body, &BatchLimits::default()).unwrap();
        assert_eq!(back, b);
        let seqs: Vec<u64> = back.readings().map(|(s, _)| s).collect();
        assert_eq!(seqs, [3, 4, 7, 100]);
    }

    #[test]
    fn new_refuses_empty_and_unordered_records() {
        assert!(matches!(
            UplinkBatch::new("gw", vec![]),
            Err(BatchError::Empty)
        ));
        assert!(matches!(
            UplinkBatch::new("gw", vec![record(2), record(1)]),
            Err(BatchError::OutOfOrder(1))
        ));
        assert!(matches!(
            UplinkBatch::new("gw", vec![record(1), record(1)]),
            Err(BatchError::OutOfOrder(1))
        ));
    }

    #[test]
    fn decode_refuses_garbage() {
        for body in [&b""[..], b"garbage", &[0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0]] {
            let e = UplinkBatch::decode(body, &BatchLimits::default()).unwrap_err();
            assert!(
                matches!(e, BatchError::Compression(_) | BatchError::Cbor(_)),
                "{e:?}"
            );
        }
        // Valid zstd around bytes that are not a batch.
        let body = zstd::bulk::compress(b"\xa1\x61x\x01", 3).unwrap();
        assert!(matches!(
            UplinkBatch::decode(&body, &BatchLimits::default()),
            Err(BatchError::Cbor(_))
        ));
        // A CBOR text header claiming 2^63 bytes: an error, no allocation.
        let body = zstd::bulk::compress(
            &[0x7b, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x61],
            3,
        )
        .unwrap();
        assert!(matches!(
            UplinkBatch::decode(&body, &BatchLimits::default()),
            Err(BatchError::Cbor(_))
        ));
    }

    #[test]
    fn decode_refuses_a_body_that_decompresses_past_the_limit() {
        let limits = BatchLimits {
            max_decompressed_bytes: 1 << 20,
            ..Default::default()
        };
        // One frame of 4 MiB of zeros: its window alone is over the limit.
        let bomb = zstd::bulk::compress(&vec![0u8; 4 << 20], 19).unwrap();
        assert!(bomb.len() < 4096, "{} bytes", bomb.len());
        let e = UplinkBatch::decode(&bomb, &limits).unwrap_err();
        assert!(matches!(e, BatchError::Compression(_)), "{e:?}");
        // Eight frames of 512 KiB: each frame is fine, their sum is not.
        let frame = zstd::bulk::compress(&vec![0u8; 512 << 10], 19).unwrap();
        let bomb = frame.repeat(8);
        assert!(bomb.len() < 4096, "{} bytes", bomb.len());
        let e = UplinkBatch::decode(&bomb, &limits).unwrap_err();
        assert!(
            matches!(e, BatchError::DecompressedTooLarge { limit: 1_048_576 }),
            "{e:?}"
        );
    }

    #[test]
    fn decode_accepts_a_body_exactly_at_the_decompressed_limit() {
        let b = batch([1, 2]);
        let mut cbor = Vec::new();
        ciborium::into_writer(&b, &mut cbor).unwrap();
        let limits = BatchLimits {
            max_decompressed_bytes: cbor.len(),
            ..Default::default()
        };
        assert_eq!(
            UplinkBatch::decode(&b.encode(3).unwrap(), &limits).unwrap(),
            b
        );
        let limits = BatchLimits {
            max_decompressed_bytes: cbor.len() - 1,
            ..Default::default()
        };
        assert!(matches!(
            UplinkBatch::decode(&b.encode(3).unwrap(), &limits),
            Err(BatchError::DecompressedTooLarge { .. })
        ));
    }

    #[test]
    fn decode_refuses_out_of_order_records() {
        let mut b = batch([1, 2, 3]);
        b.records.swap(1, 2);
        b.records[0] = record(1);
        b.last_seq = 2;
        let e = UplinkBatch::decode(&raw_body(&b), &BatchLimits::default()).unwrap_err();
        assert!(matches!(e, BatchError::OutOfOrder(2)), "{e:?}");
    }

    #[test]
    fn decode_refuses_first_or_last_seq_that_do_not_match_the_records() {
        for (first, last) in [(0, 3), (1, 4), (3, 1)] {
            let mut b = batch([1, 2, 3]);
            (b.first_seq, b.last_seq) = (first, last);
            let e = UplinkBatch::decode(&raw_body(&b), &BatchLimits::default()).unwrap_err();
            assert!(matches!(e, BatchError::SequenceMismatch { .. }), "{e:?}");
        }
        let mut b = batch([1]);
        b.records.clear();
        let e = UplinkBatch::decode(&raw_body(&b), &BatchLimits::default()).unwrap_err();
        assert!(matches!(e, BatchError::Empty), "{e:?}");
    }

    #[test]
    fn decode_refuses_a_newer_schema_version() {
        let mut b = batch([1]);
        b.schema_version = SCHEMA_VERSION + 1;
        let e = UplinkBatch::decode(&raw_body(&b), &BatchLimits::default()).unwrap_err();
        assert!(matches!(e, BatchError::UnsupportedSchema(3)), "{e:?}");
    }

    #[test]
    fn a_newer_schema_with_an_unknown_item_kind_is_reported_as_a_version_problem() {
        use ciborium::Value;
        let text = |s: &str| Value::Text(s.into());
        let v2 = Value::Map(vec![
            (text("schema_version"), Value::Integer(3.into())),
            (text("gateway_id"), text("gw")),
            (text("first_seq"), Value::Integer(1.into())),
            (text("last_seq"), Value::Integer(1.into())),
            (
                text("records"),
                Value::Array(vec![Value::Map(vec![
                    (text("seq"), Value::Integer(1.into())),
                    (
                        text("item"),
                        Value::Map(vec![(text("alert"), text("door open"))]),
                    ),
                ])]),
            ),
        ]);
        let mut cbor = Vec::new();
        ciborium::into_writer(&v2, &mut cbor).unwrap();
        let body = zstd::bulk::compress(&cbor, 3).unwrap();
        let e = UplinkBatch::decode(&body, &BatchLimits::default()).unwrap_err();
        assert!(matches!(e, BatchError::UnsupportedSchema(3)), "{e:?}");
    }

    #[test]
    fn decode_refuses_too_many_records() {
        let body = batch(1..=5).encode(3).unwrap();
        let limits = BatchLimits {
            max_records: 4,
            ..Default::default()
        };
        let e = UplinkBatch::decode(&body, &limits).unwrap_err();
        assert!(
            matches!(e, BatchError::TooManyRecords { count: 5, limit: 4 }),
            "{e:?}"
        );
    }

    #[test]
    fn decode_refuses_a_body_over_the_compressed_limit_before_decompressing() {
        let body = batch(1..=5).encode(3).unwrap();
        let limits = BatchLimits {
            max_compressed_bytes: body.len() - 1,
            ..Default::default()
        };
        let e = UplinkBatch::decode(&body, &limits).unwrap_err();
        assert!(
            matches!(e, BatchError::TooLarge { size, limit } if size == body.len() && limit == body.len() - 1)
        );
    }

    #[test]
    fn decode_refuses_invalid_readings_inside_a_batch() {
        let mut b = batch([1]);
        b.records[0].item.reading_mut().unwrap().channel = String::new();
        let e = UplinkBatch::decode(&raw_body(&b), &BatchLimits::default()).unwrap_err();
        assert!(matches!(e, BatchError::Cbor(_)), "{e:?}");
    }

    #[test]
    fn the_idempotency_key_is_gateway_epoch_first_and_last_seq() {
        assert_eq!(
            batch([17, 18, 42]).idempotency_key(),
            "gw-1:0000000000000000:17-42"
        );
        assert_eq!(
            batch([5]).with_epoch(0xabc).idempotency_key(),
            "gw-1:0000000000000abc:5-5"
        );
    }

    #[test]
    fn the_zstd_window_allowed_follows_the_decompressed_limit() {
        assert_eq!(window_log_for(0), 10);
        assert_eq!(window_log_for(1 << 20), 20);
        assert_eq!(window_log_for((1 << 20) + 1), 21);
        assert_eq!(window_log_for(64 << 20), 26);
        assert_eq!(window_log_for(usize::MAX), 27);
    }

    #[test]
    fn a_clock_pending_item_round_trips_through_cbor_but_never_goes_into_a_batch() {
        let mut rec = record(1);
        let reading = rec.item.reading().unwrap().clone();
        rec.item = OutboxItem::ClockPending {
            reading: reading.clone(),
            clock: ClockStamp {
                boot_id: "b".into(),
                monotonic_ns: 42,
            },
        };
        let mut cbor = Vec::new();
        ciborium::into_writer(&rec.item, &mut cbor).unwrap();
        let back: OutboxItem = ciborium::from_reader(cbor.as_slice()).unwrap();
        assert_eq!(back, rec.item);
        assert_eq!(back.reading(), Some(&reading));
        assert!(matches!(
            UplinkBatch::new("gw", vec![record(0), rec.clone()]),
            Err(BatchError::UnresolvedClock(1))
        ));
        let b = UplinkBatch {
            schema_version: SCHEMA_VERSION,
            gateway_id: "gw".into(),
            outbox_epoch: 0,
            first_seq: 1,
            last_seq: 1,
            records: vec![rec],
        };
        assert!(matches!(
            UplinkBatch::decode(&raw_body(&b), &BatchLimits::default()),
            Err(BatchError::UnresolvedClock(1))
        ));
    }

    #[test]
    fn an_item_encoded_before_the_new_quality_flags_still_decodes() {
        // Bytes of `OutboxItem::Reading` as the first release wrote them
        // (quality 0b11 = TIME_FROM_RECEIVE | CLOCK_UNSYNCED).
        use ciborium::Value;
        let text = |s: &str| Value::Text(s.into());
        let old = Value::Map(vec![(
            text("reading"),
            Value::Map(vec![
                (text("device"), text("d")),
                (text("channel"), text("c")),
                (text("ts"), Value::Integer(5.into())),
                (text("value"), Value::Float(1.5)),
                (text("quality"), Value::Integer(3.into())),
            ]),
        )]);
        let mut cbor = Vec::new();
        ciborium::into_writer(&old, &mut cbor).unwrap();
        let item: OutboxItem = ciborium::from_reader(cbor.as_slice()).unwrap();
        assert_eq!(
            item.reading().unwrap().quality,
            Quality::TIME_FROM_RECEIVE | Quality::CLOCK_UNSYNCED
        );
        // And bits this version does not know survive a round trip (a newer
        // gateway's flags reach an older sink intact).
        let mut r = item.reading().unwrap().clone();
        r.quality = Quality::from_bits_retain(1 << 15 | 1);
        let mut cbor = Vec::new();
        ciborium::into_writer(&OutboxItem::Reading(r.clone()), &mut cbor).unwrap();
        let back: OutboxItem = ciborium::from_reader(cbor.as_slice()).unwrap();
        assert_eq!(back.reading().unwrap().quality.bits(), 1 << 15 | 1);
    }
    fn alert(device: &str) -> crate::alert::Alert {
        crate::alert::Alert {
            device: device.into(),
            start: Timestamp(10),
            end: Timestamp(20),
            score: 9.0,
            threshold: 8.0,
            model: "fallback".into(),
            model_version: 0,
            channels: vec![crate::alert::Contribution {
                channel: "current".into(),
                z: 9.0,
            }],
            raised: Timestamp(30),
        }
    }

    #[test]
    fn alerts_travel_with_readings_as_schema_2_and_readings_alone_stay_schema_1() {
        assert_eq!(batch(1..=3).schema_version, SCHEMA_VERSION_READINGS_ONLY);
        let mut records: Vec<OutboxRecord> = (1..=3).map(record).collect();
        records.push(OutboxRecord {
            seq: 4,
            item: OutboxItem::Alert(alert("pump-1")),
        });
        let b = UplinkBatch::new("gw-1", records).unwrap();
        assert_eq!(b.schema_version, 2);
        let back = UplinkBatch::decode(&b.encode(3).unwrap(), &BatchLimits::default()).unwrap();
        assert_eq!(back, b);
        assert_eq!(back.readings().count(), 3);
        let alerts: Vec<_> = back.alerts().collect();
        assert_eq!(alerts, vec![(4, &alert("pump-1"))]);
    }

    #[test]
    fn a_malformed_alert_refuses_the_batch_naming_its_seq() {
        let records = vec![OutboxRecord {
            seq: 7,
            item: OutboxItem::Alert(alert("")),
        }];
        assert!(matches!(
            UplinkBatch::new("gw-1", records),
            Err(BatchError::BadAlert { seq: 7, .. })
        ));
    }
}
