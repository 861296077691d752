//! The Outpost cloud sink: authenticated, idempotent ingest of gateway uplink
//! batches, stored in SQLite, with a JSON query API and Prometheus metrics.
//!
//! Module map:
//! - [`config`] — the TOML config: typed fields, defaults, a validation pass that reports every problem.
//! - [`auth`] — gateway and operator bearer tokens: generation, hashing, `Authorization` header parsing.
//! - [`storage`] — the [`storage::Storage`] trait and its SQLite implementation ([`storage::sqlite`]).
//! - [`metrics`] — the Prometheus registry and the sink's counters and histograms.
//! - [`api`] — the axum router: ingest, query, gateways, stats, health, metrics,
//!   operator labels on alerts, training jobs, the model registry.
//! - [`server`] — binds the listener (HTTP or HTTPS), runs the router and the
//!   training worker and scheduler, shuts down gracefully.
//! - [`admin`] — offline operations behind the CLI: provision and list gateways.
//! - [`train`] — training and validation of anomaly models: datasets, preprocessing,
//!   model families, cross-validation, metrics, thresholds, reports, registry.
#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod auth;
pub mod config;
pub mod metrics;
pub mod server;
pub mod storage;
pub mod train;

pub use config::{Config, ConfigError, Problem};
pub use server::{RunningSink, SinkError, spawn, spawn_with_storage};
pub use storage::{Storage, StorageError};

/// Exit code for a bad config (`EX_CONFIG` from sysexits.h).
pub const EX_CONFIG: i32 = 78;
