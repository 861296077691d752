//! Sources: one module per kind of input. Each decodes payloads into readings,
//! hands [`crate::envelope::Envelope`]s to the ingest queue, and acknowledges
//! its sender only after the ingest stage reports the envelope durable.
//!
//! - [`mqtt`] — MQTT 3.1.1 subscriber (rumqttc), external or embedded broker.

pub mod mqtt;
