//! Sources: one module per kind of input. Each decodes payloads into readings,
//! hands [`crate::envelope::Envelope`]s to the ingest queue, and acknowledges
//! its sender only after the ingest stage reports the envelope durable.
//!
//! - [`mqtt`] — MQTT 3.1.1 subscriber (rumqttc), external or embedded broker.
//! - [`http`] — `POST /v1/readings`; 202 after the durable commit.
//! - [`coap`] — CoAP over UDP, `POST /readings`; 2.04 (piggybacked ACK) after the durable commit.
//! - [`serial`] — lines from serial ports (`[[serial]]`); no acknowledgement exists.
//! - [`sql`] — new rows of PostgreSQL/SQLite tables by cursor (`[[sql]]`); the cursor is
//!   stored atomically with the readings.
//! - [`rest`] — JSON endpoints polled with ETag/If-None-Match (`[[rest]]`), JSON pointers.
//! - [`files`] — CSV/JSON/NDJSON/SenML files renamed into a watched directory (`[[files]]`);
//!   read in chunks, each stored with its cursor, then moved to `done/` or `failed/` with a report.

pub mod coap;
pub mod files;
pub mod http;
pub mod mqtt;
pub mod rest;
pub mod serial;
pub mod sql;

/// Why a source stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Mqtt(#[from] mqtt::MqttSourceError),
    #[error(transparent)]
    Http(#[from] http::HttpSourceError),
    #[error(transparent)]
    Coap(#[from] coap::CoapSourceError),
    #[error(transparent)]
    Serial(#[from] serial::SerialSourceError),
    #[error(transparent)]
    Sql(#[from] sql::SqlSourceError),
    #[error(transparent)]
    Rest(#[from] rest::RestSourceError),
    #[error(transparent)]
    Files(#[from] files::FileSourceError),
}
