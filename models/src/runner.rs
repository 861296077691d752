//! The tract runner: an ONNX model and its manifest, checked against each
//! other, optimized once, then run on batches of feature rows.
//!
//! The graph must have one f32 input `[batch, F]` with a symbolic batch
//! dimension and `F` = the manifest's feature count, and one output
//! `[batch, 1]` or `[batch]` (see [`protocol::manifest`]). Both are checked
//! when the model is loaded, so a mismatched model is refused before it
//! replaces a working one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use protocol::features::FeatureError;
use protocol::manifest::{ManifestError, ModelManifest};
use tract_onnx::prelude::*;

/// The optimized plan (shared: running it takes `&self`).
type Plan = TypedSimplePlan<TypedModel>;

/// Largest model file the runner reads.
pub const MAX_MODEL_BYTES: u64 = 64 << 20;

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is {len} bytes, limit is {limit}")]
    TooLarge { path: PathBuf, len: u64, limit: u64 },
    #[error("manifest: {0}")]
    Manifest(#[from] ManifestError),
    #[error("features: {0}")]
    Features(#[from] FeatureError),
    #[error("ONNX model: {0}")]
    Onnx(String),
    #[error("the graph has {inputs} inputs and {outputs} outputs, the contract is one of each")]
    Arity { inputs: usize, outputs: usize },
    #[error("the graph's input is {shape}, the manifest needs [batch, {features}] f32")]
    InputShape { shape: String, features: usize },
    #[error("the graph's output is {shape}, the contract is [batch, 1] or [batch] f32")]
    OutputShape { shape: String },
    #[error("{len} values are not whole rows of {features} features")]
    Ragged { len: usize, features: usize },
    #[error("inference: {0}")]
    Run(String),
    #[error("the model returned {got} scores for {expected} rows")]
    ScoreCount { expected: usize, got: usize },
}

fn onnx_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Onnx(format!("{e:#}"))
}

/// A loaded model: the plan is built once; scoring is `&self` and
/// thread-safe, so one `Model` can be shared by every worker (`Arc`).
#[derive(Clone)]
pub struct Model {
    manifest: Arc<ModelManifest>,
    plan: Arc<Plan>,
    features: usize,
    onnx_len: usize,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.manifest.name)
            .field("version", &self.manifest.version)
            .field("features", &self.features)
            .field("onnx_bytes", &self.onnx_len)
            .finish_non_exhaustive()
    }
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, ModelError> {
    let io = |source| ModelError::Io {
        path: path.to_owned(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_MODEL_BYTES {
        return Err(ModelError::TooLarge {
            path: path.to_owned(),
            len,
            limit: MAX_MODEL_BYTES,
        });
    }
    std::fs::read(path).map_err(io)
}

impl Model {
    /// Reads `model.onnx` and its manifest (JSON) from files.
    pub fn load_files(onnx: &Path, manifest: &Path) -> Result<Model, ModelError> {
        let manifest_bytes = read_bounded(manifest)?;
        let manifest = ModelManifest::from_json(&manifest_bytes)?;
        let bytes = read_bounded(onnx)?;
        Model::load(&bytes, manifest)
    }

    /// Loads ONNX bytes for a manifest: validates the manifest, checks the
    /// graph's input and output against it, optimizes and plans.
    pub fn load(onnx: &[u8], manifest: ModelManifest) -> Result<Model, ModelError> {
        manifest.validate()?;
        let features = manifest.feature_count()?;
        let model = tract_onnx::onnx()
            .model_for_read(&mut &onnx[..])
            .map_err(onnx_err)?;
        let typed = model.into_typed().map_err(onnx_err)?;
        let (inputs, outputs) = (typed.inputs.len(), typed.outputs.len());
        if inputs != 1 || outputs != 1 {
            return Err(ModelError::Arity { inputs, outputs });
        }
        let input = typed.input_fact(0).map_err(onnx_err)?.clone();
        let dims = input.shape.dims();
        let input_ok = input.datum_type == f32::datum_type()
            && dims.len() == 2
            && dims[0].to_i64().is_err()
            && dims[1].to_i64().ok() == i64::try_from(features).ok();
        if !input_ok {
            return Err(ModelError::InputShape {
                shape: format!("{input:?}"),
                features,
            });
        }
        let output = typed.output_fact(0).map_err(onnx_err)?.clone();
        let odims = output.shape.dims();
        let output_ok = output.datum_type == f32::datum_type()
            && match odims.len() {
                1 => odims[0] == dims[0],
                2 => odims[0] == dims[0] && odims[1].to_i64().ok() == Some(1),
                _ => false,
            };
        if !output_ok {
            return Err(ModelError::OutputShape {
                shape: format!("{output:?}"),
            });
        }
        let plan = typed
            .into_optimized()
            .map_err(onnx_err)?
            .into_runnable()
            .map_err(onnx_err)?;
        Ok(Model {
            manifest: Arc::new(manifest),
            plan: Arc::new(plan),
            features,
            onnx_len: onnx.len(),
        })
    }

    pub fn manifest(&self) -> &ModelManifest {
        &self.manifest
    }

    /// Columns of the input (features per window).
    pub fn feature_count(&self) -> usize {
        self.features
    }

    /// Size of the ONNX file.
    pub fn onnx_len(&self) -> usize {
        self.onnx_len
    }

    /// Scores a row-major `[rows, features]` matrix, one score per row,
    /// appended to `out`. An empty matrix scores nothing.
    pub fn score_into(&self, features: &[f32], out: &mut Vec<f32>) -> Result<(), ModelError> {
        if features.is_empty() {
            return Ok(());
        }
        if !features.len().is_multiple_of(self.features) {
            return Err(ModelError::Ragged {
                len: features.len(),
                features: self.features,
            });
        }
        let rows = features.len() / self.features;
        let input = Tensor::from_shape(&[rows, self.features], features)
            .map_err(|e| ModelError::Run(format!("{e:#}")))?;
        let result = self
            .plan
            .run(tvec!(input.into()))
            .map_err(|e| ModelError::Run(format!("{e:#}")))?;
        let scores = result
            .first()
            .ok_or_else(|| ModelError::Run("no output".into()))?
            .as_slice::<f32>()
            .map_err(|e| ModelError::Run(format!("{e:#}")))?;
        if scores.len() != rows {
            return Err(ModelError::ScoreCount {
                expected: rows,
                got: scores.len(),
            });
        }
        out.extend_from_slice(scores);
        Ok(())
    }

    /// [`score_into`](Self::score_into) into a new vector.
    pub fn score(&self, features: &[f32]) -> Result<Vec<f32>, ModelError> {
        let mut out = Vec::with_capacity(features.len() / self.features.max(1));
        self.score_into(features, &mut out)?;
        Ok(out)
    }
}
