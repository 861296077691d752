//! Outpost's anomaly models: the pieces the gateway (scoring) and the cloud
//! (training, export) share beyond the feature code in `protocol`.
//!
//! Module map:
//! - [`builder`] — a small ONNX graph builder over tract-onnx's protobuf
//!   types, plus ready-made scoring graphs ([`builder::graphs`]).
//! - [`runner`] — [`Model`]: ONNX + [`protocol::manifest::ModelManifest`],
//!   shapes checked against each other, optimized once, batched scoring with tract.
//! - [`reference`] — a plain-Rust evaluator of the builder's graphs (parity
//!   tests, bench baseline, export checks).
#![forbid(unsafe_code)]

pub mod builder;
pub mod reference;
pub mod runner;

pub use builder::{Attr, BuildError, Dim, GraphBuilder, Value};
pub use reference::{ReferenceError, ReferenceModel};
pub use runner::{Model, ModelError};
