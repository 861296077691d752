//! Outpost firmware simulator: a fleet of simulated pumps with ground truth.
//!
//! Module map:
//! - [`signal`] — the clean signal model of one pump: latent load, correlated channels, noise.
//! - [`anomaly`] — injected anomalies (spike, drift, stuck, step, noise burst) and when they start.
//! - [`fleet`] — N devices stepped round-robin in simulated time; deterministic per seed.
//! - [`ground_truth`] — the CSV log of injected anomalies.
//! - [`publish`] — the `Transport` trait: MQTT with PUBACK tracking, HTTP acked on 202.
//! - [`acked_log`] — delivery accounting and the log of every acked reading.
//! - [`pacing`] — token-bucket rate limiting.
//! - [`stats`] — latency percentiles and the run summary.
//! - [`run`] — the `run` command: generate, pace, publish, drain, summarise.
//! - [`bench`] — the `bench-broker` command: raw broker → subscriber baseline.
//! - [`dataset`] — the `dataset` command: the fleet offline in simulated time,
//!   written as a labelled CSV for training.
//! - [`cli`] — command-line arguments and their validation.
#![forbid(unsafe_code)]

pub mod acked_log;
pub mod anomaly;
pub mod bench;
pub mod cli;
pub mod dataset;
pub mod fleet;
pub mod ground_truth;
pub mod pacing;
pub mod publish;
pub mod run;
pub mod signal;
pub mod stats;
