//! The uplink batch: what a gateway POSTs to the cloud sink.
//!
//! Wire form: the [`UplinkBatch`] serialised as CBOR, then compressed with zstd.
//! HTTP headers carry `Content-Type: application/cbor`, `Content-Encoding: zstd`
//! and `Idempotency-Key: {gateway}:{first_seq}-{last_seq}`.
//!
//! `first_seq`/`last_seq` are the gateway's outbox sequence numbers; the sink
//! de-duplicates on `(gateway, seq)` and on the reading identity, so a batch sent
//! twice is stored once. `schema_version` lets either side refuse what it does
//! not understand instead of misreading it.

use std::io::Read;

use serde::{Deserialize, Serialize};

use crate::reading::Reading;

/// The schema version this crate writes and the highest it reads.
pub const SCHEMA_VERSION: u16 = 1;
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
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UplinkBatch {
    pub schema_version: u16,
    pub gateway_id: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub records: Vec<OutboxRecord>,
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
}

impl UplinkBatch {
    /// Builds a batch from records in outbox order.
    pub fn new(gateway_id: impl Into<String>, records: Vec<OutboxRecord>) -> Result<Self, BatchError> {
        let (first, last) = match (records.first(), records.last()) {
            (Some(f), Some(l)) => (f.seq, l.seq),
            _ => return Err(BatchError::Empty),
        };
        let batch = UplinkBatch {
            schema_version: SCHEMA_VERSION,
            gateway_id: gateway_id.into(),
            first_seq: first,
            last_seq: last,
            records,
        };
        batch.check()?;
        Ok(batch)
    }

    /// `{gateway}:{first_seq}-{last_seq}`: the same records always get the same key.
    pub fn idempotency_key(&self) -> String {
        format!("{}:{}-{}", self.gateway_id, self.first_seq, self.last_seq)
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
            return Err(BatchError::TooLarge { size: body.len(), limit: limits.max_compressed_bytes });
        }
        let decoder = zstd::stream::read::Decoder::with_buffer(body).map_err(BatchError::Compression)?;
        let mut cbor = Vec::new();
        // Read one byte past the limit to tell "exactly at" from "over".
        decoder
            .take(limits.max_decompressed_bytes as u64 + 1)
            .read_to_end(&mut cbor)
            .map_err(BatchError::Compression)?;
        if cbor.len() > limits.max_decompressed_bytes {
            return Err(BatchError::DecompressedTooLarge { limit: limits.max_decompressed_bytes });
        }
        let batch: UplinkBatch = ciborium::de::from_reader_with_recursion_limit(cbor.as_slice(), 16)
            .map_err(|e| BatchError::Cbor(e.to_string()))?;
        if batch.schema_version > SCHEMA_VERSION {
            return Err(BatchError::UnsupportedSchema(batch.schema_version));
        }
        if batch.records.len() > limits.max_records {
            return Err(BatchError::TooManyRecords { count: batch.records.len(), limit: limits.max_records });
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
            return Err(BatchError::SequenceMismatch { first: self.first_seq, last: self.last_seq });
        }
        if let Some(i) = self.records.windows(2).position(|w| w[0].seq >= w[1].seq) {
            return Err(BatchError::OutOfOrder(i + 1));
        }
        Ok(())
    }

    /// The readings in the batch, in sequence order.
    pub fn readings(&self) -> impl Iterator<Item = (u64, &Reading)> {
        self.records.iter().map(|r| match &r.item {
            OutboxItem::Reading(reading) => (r.seq, reading),
        })
    }
}
