//! The contract shared by every Outpost program. No async runtime, no I/O.
//!
//! Module map:
//! - [`reading`] — `Reading`, its identity (for de-duplication), quality flags, timestamps.
//! - [`limits`] — decoder limits (bytes, records, nesting) and the typed [`DecodeError`].
//! - [`senml`] — SenML (RFC 8428) packs in JSON and CBOR: decode with base-field
//!   resolution, encode.
//! - [`plain`] — the plain JSON object form `{"device":..,"ts":..,"temperature":21.5}`.
//! - [`csv`] — strict CSV lines `device,channel,value[,timestamp]`, optional header.
//! - [`payload`] — one entry point that decodes any supported payload format.
//! - [`batch`] — the gateway → sink uplink batch: CBOR, zstd-compressed, versioned.
//! - [`features`] — window → feature vector (stats, band energies, raw), shared by scoring and training.
//! - [`manifest`] — the model manifest: input spec, feature spec, threshold, smoothing, hysteresis, metadata.
//! - [`decision`] — window scores → alarms (EWMA smoothing, threshold, k-of-n), shared by the gateway and offline scoring.
#![forbid(unsafe_code)]

pub mod alert;
pub mod batch;
pub mod cbor_bytes;
pub mod csv;
pub mod decision;
pub mod features;
pub mod limits;
pub mod manifest;
pub mod payload;
pub mod plain;
pub mod reading;
pub mod senml;

pub use batch::{BatchError, OutboxRecord, UplinkBatch};
pub use limits::{DecodeError, DecodeLimits};
pub use payload::{DecodeContext, PayloadFormat};
pub use reading::{ClockStamp, Quality, Reading, ReadingError, ReadingId, Timestamp};
