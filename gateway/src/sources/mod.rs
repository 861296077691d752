//! Sources: one module per kind of input. Each decodes payloads into readings,
//! hands [`crate::envelope::Envelope`]s to the ingest queue, and acknowledges
//! its sender only after the ingest stage reports the envelope durable.
//!
//! - [`mqtt`] — MQTT 3.1.1 subscriber (rumqttc), external or embedded broker.
//! - [`http`] — `POST /v1/readings`; 202 after the durable commit.
//! - [`files`] — CSV/JSON/NDJSON/SenML files renamed into a watched directory (`[[files]]`);
//!   read in chunks, each stored with its cursor, then moved to `done/` or `failed/` with a report.

pub mod files;
pub mod http;
pub mod mqtt;

/// Why a source stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Mqtt(#[from] mqtt::MqttSourceError),
    #[error(transparent)]
    Http(#[from] http::HttpSourceError),
    #[error(transparent)]
    Files(#[from] files::FileSourceError),
}
