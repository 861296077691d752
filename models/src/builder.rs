//! A small ONNX graph builder over tract-onnx's protobuf types
//! ([`tract_onnx::pb`]), encoded with prost. No Python in the loop: tests and
//! the cloud's training code export models with it, and the gateway loads
//! them with tract.
//!
//! ```
//! use outpost_models::builder::{Dim, GraphBuilder};
//!
//! // score = Σ_j ((x_j − μ_j) / σ_j)², for a batch of 3-feature rows.
//! let mut g = GraphBuilder::new("zscore");
//! let x = g.input("features", &[Dim::batch(), Dim::Fixed(3)]);
//! let mu = g.initializer("mu", &[3], vec![1.0, 2.0, 3.0]).unwrap();
//! let sigma = g.initializer("sigma", &[3], vec![0.5, 1.0, 2.0]).unwrap();
//! let centred = g.sub(&x, &mu);
//! let z = g.div(&centred, &sigma);
//! let z2 = g.mul(&z, &z);
//! let score = g.reduce_sum(&z2, &[1], true);
//! g.output(&score, "score", &[Dim::batch(), Dim::Fixed(1)]);
//! let bytes = g.to_bytes().unwrap();
//! assert!(!bytes.is_empty());
//! ```
//!
//! # Conventions
//!
//! - Every tensor is `f32` except the `i64` shape/axes constants the
//!   builder adds itself (Reshape's shape, ReduceSum's axes).
//! - Opset [`OPSET_VERSION`] (13) of the default domain, IR version
//!   [`IR_VERSION`] (7). At opset 13 `ReduceSum` takes its axes as an input
//!   and the other reductions as an attribute; the builder hides that.
//! - A [`Value`] is the name of a tensor in the graph. Op methods make a
//!   fresh output name (`{op}_{n}`); [`GraphBuilder::output`] renames the
//!   final value to the output's name with an `Identity` node.
//! - Op methods never fail: mistakes in a graph (unknown names, shape
//!   mismatches) are found by [`GraphBuilder::build`] (names) or when tract
//!   loads the model (shapes). [`GraphBuilder::initializer`] checks that the
//!   data fills the dims.
//! - [`GraphBuilder::node`] adds any other single-output op with
//!   [`Attr`]ibutes, so the builder need not change for a new op.

use prost::Message;
use tract_onnx::pb;

/// The ONNX opset version of every graph the builder makes.
pub const OPSET_VERSION: i64 = 13;
/// The ONNX IR version of every model the builder makes.
pub const IR_VERSION: i64 = 7;
/// The symbolic batch dimension's name (see [`Dim::batch`]).
pub const BATCH_DIM: &str = "batch";

/// One dimension of a graph input or output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dim {
    /// A fixed size.
    Fixed(usize),
    /// A named size chosen at run time (e.g. the batch).
    Symbol(String),
}

impl Dim {
    /// The batch dimension, named [`BATCH_DIM`].
    pub fn batch() -> Dim {
        Dim::Symbol(BATCH_DIM.to_owned())
    }
}

/// A tensor of the graph, by name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Value(String);

impl Value {
    /// A value by name (for a tensor made by [`GraphBuilder::node`] with
    /// several outputs, or one named elsewhere).
    pub fn named(name: impl Into<String>) -> Value {
        Value(name.into())
    }

    pub fn name(&self) -> &str {
        &self.0
    }
}

/// A node attribute for [`GraphBuilder::node`].
#[derive(Clone, Debug, PartialEq)]
pub enum Attr {
    Float(String, f32),
    Int(String, i64),
    Ints(String, Vec<i64>),
    Floats(String, Vec<f32>),
    String(String, String),
}

/// Why a graph could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("initializer `{name}`: dims {dims:?} hold {expected} values, data has {got}")]
    InitializerLength {
        name: String,
        dims: Vec<usize>,
        expected: usize,
        got: usize,
    },
    #[error("initializer `{name}`: dimension too large for ONNX ({dims:?})")]
    DimTooLarge { name: String, dims: Vec<usize> },
    #[error("the name `{name}` is defined twice")]
    DuplicateName { name: String },
    #[error("node `{node}` reads `{input}`, which nothing defines")]
    UndefinedInput { node: String, input: String },
    #[error("output `{name}` is not defined")]
    UndefinedOutput { name: String },
    #[error("the graph has no {what}")]
    Missing { what: &'static str },
}

/// Builds one ONNX model. See the module documentation.
#[derive(Debug, Clone)]
pub struct GraphBuilder {
    graph: pb::GraphProto,
    doc: String,
    metadata: Vec<(String, String)>,
    counter: usize,
}

fn value_info(
    name: &str,
    dims: &[Dim],
    elem_type: pb::tensor_proto::DataType,
) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{Dimension, dimension};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            denotation: String::new(),
            value: Some(match d {
                Dim::Fixed(n) => dimension::Value::DimValue(i64::try_from(*n).unwrap_or(i64::MAX)),
                Dim::Symbol(s) => dimension::Value::DimParam(s.clone()),
            }),
        })
        .collect();
    pb::ValueInfoProto {
        name: name.to_owned(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: elem_type as i32,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
        }),
        doc_string: String::new(),
    }
}

fn attribute(attr: &Attr) -> pb::AttributeProto {
    use pb::attribute_proto::AttributeType;
    let mut a = pb::AttributeProto::default();
    match attr {
        Attr::Float(name, v) => {
            a.name = name.clone();
            a.f = *v;
            a.r#type = AttributeType::Float as i32;
        }
        Attr::Int(name, v) => {
            a.name = name.clone();
            a.i = *v;
            a.r#type = AttributeType::Int as i32;
        }
        Attr::Ints(name, v) => {
            a.name = name.clone();
            a.ints = v.clone();
            a.r#type = AttributeType::Ints as i32;
        }
        Attr::Floats(name, v) => {
            a.name = name.clone();
            a.floats = v.clone();
            a.r#type = AttributeType::Floats as i32;
        }
        Attr::String(name, v) => {
            a.name = name.clone();
            a.s = v.as_bytes().to_vec();
            a.r#type = AttributeType::String as i32;
        }
    }
    a
}

impl GraphBuilder {
    /// An empty graph named `name`.
    pub fn new(name: &str) -> Self {
        GraphBuilder {
            graph: pb::GraphProto {
                name: name.to_owned(),
                ..pb::GraphProto::default()
            },
            doc: String::new(),
            metadata: Vec::new(),
            counter: 0,
        }
    }

    /// The model's doc string.
    pub fn doc(&mut self, doc: &str) -> &mut Self {
        doc.clone_into(&mut self.doc);
        self
    }

    /// A `metadata_props` entry of the model (e.g. the model version).
    pub fn metadata(&mut self, key: &str, value: &str) -> &mut Self {
        self.metadata.push((key.to_owned(), value.to_owned()));
        self
    }

    fn fresh(&mut self, op: &str) -> String {
        self.counter += 1;
        format!("{}_{}", op.to_ascii_lowercase(), self.counter)
    }

    /// A graph input of f32 with these dims.
    pub fn input(&mut self, name: &str, dims: &[Dim]) -> Value {
        self.graph
            .input
            .push(value_info(name, dims, pb::tensor_proto::DataType::Float));
        Value(name.to_owned())
    }

    /// A constant f32 tensor (weights), row-major. `dims` empty is a scalar.
    pub fn initializer(
        &mut self,
        name: &str,
        dims: &[usize],
        data: Vec<f32>,
    ) -> Result<Value, BuildError> {
        let expected = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let i64_dims: Option<Vec<i64>> = dims.iter().map(|&d| i64::try_from(d).ok()).collect();
        let (Some(expected), Some(i64_dims)) = (expected, i64_dims) else {
            return Err(BuildError::DimTooLarge {
                name: name.to_owned(),
                dims: dims.to_vec(),
            });
        };
        if expected != data.len() {
            return Err(BuildError::InitializerLength {
                name: name.to_owned(),
                dims: dims.to_vec(),
                expected,
                got: data.len(),
            });
        }
        self.graph.initializer.push(pb::TensorProto {
            dims: i64_dims,
            data_type: pb::tensor_proto::DataType::Float as i32,
            float_data: data,
            name: name.to_owned(),
            ..pb::TensorProto::default()
        });
        Ok(Value(name.to_owned()))
    }

    /// A constant 1-D i64 tensor (shapes, axes), with a fresh name.
    pub fn constant_i64(&mut self, values: &[i64]) -> Value {
        let name = self.fresh("const");
        self.graph.initializer.push(pb::TensorProto {
            dims: vec![i64::try_from(values.len()).unwrap_or(i64::MAX)],
            data_type: pb::tensor_proto::DataType::Int64 as i32,
            int64_data: values.to_vec(),
            name: name.clone(),
            ..pb::TensorProto::default()
        });
        Value(name)
    }

    /// Any single-output op of the default domain.
    pub fn node(&mut self, op_type: &str, inputs: &[&Value], attrs: &[Attr]) -> Value {
        let out = self.fresh(op_type);
        self.graph.node.push(pb::NodeProto {
            input: inputs.iter().map(|v| v.0.clone()).collect(),
            output: vec![out.clone()],
            name: out.clone(),
            op_type: op_type.to_owned(),
            domain: String::new(),
            attribute: attrs.iter().map(attribute).collect(),
            doc_string: String::new(),
        });
        Value(out)
    }

    /// Matrix product with numpy semantics (`[b, n] × [n, m] → [b, m]`).
    pub fn matmul(&mut self, a: &Value, b: &Value) -> Value {
        self.node("MatMul", &[a, b], &[])
    }

    /// `alpha · op(a) · op(b) + beta · c`, `op` transposing when asked:
    /// a dense layer is `gemm(x, w, Some(bias), 1.0, 1.0, false, false)`.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &mut self,
        a: &Value,
        b: &Value,
        c: Option<&Value>,
        alpha: f32,
        beta: f32,
        trans_a: bool,
        trans_b: bool,
    ) -> Value {
        let attrs = [
            Attr::Float("alpha".into(), alpha),
            Attr::Float("beta".into(), beta),
            Attr::Int("transA".into(), i64::from(trans_a)),
            Attr::Int("transB".into(), i64::from(trans_b)),
        ];
        match c {
            Some(c) => self.node("Gemm", &[a, b, c], &attrs),
            None => self.node("Gemm", &[a, b], &attrs),
        }
    }

    /// `x · w + bias` for `x: [batch, n]`, `w: [n, m]`, `bias: [m]`.
    pub fn dense(&mut self, x: &Value, w: &Value, bias: &Value) -> Value {
        self.gemm(x, w, Some(bias), 1.0, 1.0, false, false)
    }

    /// Element-wise with numpy broadcasting.
    pub fn add(&mut self, a: &Value, b: &Value) -> Value {
        self.node("Add", &[a, b], &[])
    }
    pub fn sub(&mut self, a: &Value, b: &Value) -> Value {
        self.node("Sub", &[a, b], &[])
    }
    pub fn mul(&mut self, a: &Value, b: &Value) -> Value {
        self.node("Mul", &[a, b], &[])
    }
    pub fn div(&mut self, a: &Value, b: &Value) -> Value {
        self.node("Div", &[a, b], &[])
    }
    /// Element-wise maximum of two or more tensors (broadcasting).
    pub fn max(&mut self, xs: &[&Value]) -> Value {
        self.node("Max", xs, &[])
    }
    /// Element-wise minimum of two or more tensors (broadcasting).
    pub fn min(&mut self, xs: &[&Value]) -> Value {
        self.node("Min", xs, &[])
    }

    pub fn relu(&mut self, x: &Value) -> Value {
        self.node("Relu", &[x], &[])
    }
    pub fn sigmoid(&mut self, x: &Value) -> Value {
        self.node("Sigmoid", &[x], &[])
    }
    pub fn tanh(&mut self, x: &Value) -> Value {
        self.node("Tanh", &[x], &[])
    }
    pub fn sqrt(&mut self, x: &Value) -> Value {
        self.node("Sqrt", &[x], &[])
    }
    pub fn abs(&mut self, x: &Value) -> Value {
        self.node("Abs", &[x], &[])
    }
    pub fn exp(&mut self, x: &Value) -> Value {
        self.node("Exp", &[x], &[])
    }
    pub fn log(&mut self, x: &Value) -> Value {
        self.node("Log", &[x], &[])
    }
    pub fn neg(&mut self, x: &Value) -> Value {
        self.node("Neg", &[x], &[])
    }

    /// Sum over `axes` (negative counts from the end).
    pub fn reduce_sum(&mut self, x: &Value, axes: &[i64], keepdims: bool) -> Value {
        let axes = self.constant_i64(axes);
        self.node(
            "ReduceSum",
            &[x, &axes],
            &[Attr::Int("keepdims".into(), i64::from(keepdims))],
        )
    }

    /// Mean over `axes`.
    pub fn reduce_mean(&mut self, x: &Value, axes: &[i64], keepdims: bool) -> Value {
        self.reduce_attr("ReduceMean", x, axes, keepdims)
    }

    /// Maximum over `axes`.
    pub fn reduce_max(&mut self, x: &Value, axes: &[i64], keepdims: bool) -> Value {
        self.reduce_attr("ReduceMax", x, axes, keepdims)
    }

    fn reduce_attr(&mut self, op: &str, x: &Value, axes: &[i64], keepdims: bool) -> Value {
        self.node(
            op,
            &[x],
            &[
                Attr::Ints("axes".into(), axes.to_vec()),
                Attr::Int("keepdims".into(), i64::from(keepdims)),
            ],
        )
    }

    /// Joins tensors along `axis`.
    pub fn concat(&mut self, xs: &[&Value], axis: i64) -> Value {
        self.node("Concat", xs, &[Attr::Int("axis".into(), axis)])
    }

    /// Reshape to `shape` (ONNX rules: `0` copies the input's dim, one `-1`
    /// is inferred) — `[0, -1]` flattens all but the batch.
    pub fn reshape(&mut self, x: &Value, shape: &[i64]) -> Value {
        let shape = self.constant_i64(shape);
        self.node("Reshape", &[x, &shape], &[])
    }

    /// Permutes the axes.
    pub fn transpose(&mut self, x: &Value, perm: &[i64]) -> Value {
        self.node(
            "Transpose",
            &[x],
            &[Attr::Ints("perm".into(), perm.to_vec())],
        )
    }

    /// Declares `value` a graph output named `name` with these dims (an
    /// `Identity` node gives it the name).
    pub fn output(&mut self, value: &Value, name: &str, dims: &[Dim]) {
        self.graph.node.push(pb::NodeProto {
            input: vec![value.0.clone()],
            output: vec![name.to_owned()],
            name: format!("output_{name}"),
            op_type: "Identity".to_owned(),
            ..pb::NodeProto::default()
        });
        self.graph
            .output
            .push(value_info(name, dims, pb::tensor_proto::DataType::Float));
    }

    /// The model, after checking that every node reads a defined name, no
    /// name is defined twice, and there is an input and an output.
    pub fn build(&self) -> Result<pb::ModelProto, BuildError> {
        let g = &self.graph;
        if g.input.is_empty() {
            return Err(BuildError::Missing { what: "input" });
        }
        if g.output.is_empty() {
            return Err(BuildError::Missing { what: "output" });
        }
        let mut defined = std::collections::HashSet::new();
        let defs = g
            .input
            .iter()
            .map(|i| &i.name)
            .chain(g.initializer.iter().map(|t| &t.name));
        for name in defs {
            if !defined.insert(name.clone()) {
                return Err(BuildError::DuplicateName { name: name.clone() });
            }
        }
        for node in &g.node {
            for input in node.input.iter().filter(|i| !i.is_empty()) {
                if !defined.contains(input) {
                    return Err(BuildError::UndefinedInput {
                        node: node.name.clone(),
                        input: input.clone(),
                    });
                }
            }
            for output in &node.output {
                if !defined.insert(output.clone()) {
                    return Err(BuildError::DuplicateName {
                        name: output.clone(),
                    });
                }
            }
        }
        for out in &g.output {
            if !defined.contains(&out.name) {
                return Err(BuildError::UndefinedOutput {
                    name: out.name.clone(),
                });
            }
        }
        Ok(pb::ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: OPSET_VERSION,
            }],
            producer_name: "outpost-models".to_owned(),
            producer_version: env!("CARGO_PKG_VERSION").to_owned(),
            doc_string: self.doc.clone(),
            graph: Some(g.clone()),
            metadata_props: self
                .metadata
                .iter()
                .map(|(key, value)| pb::StringStringEntryProto {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
            ..pb::ModelProto::default()
        })
    }

    /// The model as ONNX protobuf bytes (what a `.onnx` file holds).
    pub fn to_bytes(&self) -> Result<Vec<u8>, BuildError> {
        Ok(self.build()?.encode_to_vec())
    }
}

/// Ready-made graphs over a `[batch, n]` feature matrix → `[batch, 1]`
/// scores. Each is also what the reference evaluator and the parity tests
/// use; training code may export its models with them.
pub mod graphs {
    use super::{BuildError, Dim, GraphBuilder};

    /// The input and output names of the ready-made graphs.
    pub const INPUT: &str = "features";
    pub const OUTPUT: &str = "score";

    fn start(name: &str, n: usize) -> (GraphBuilder, super::Value) {
        let mut g = GraphBuilder::new(name);
        let x = g.input(INPUT, &[Dim::batch(), Dim::Fixed(n)]);
        (g, x)
    }

    fn finish(mut g: GraphBuilder, score: &super::Value) -> Result<Vec<u8>, BuildError> {
        g.output(score, OUTPUT, &[Dim::batch(), Dim::Fixed(1)]);
        g.to_bytes()
    }

    /// Mean squared z-score: `Σ_j ((x_j − mean_j) / scale_j)² / n`.
    pub fn standardized_energy(mean: &[f32], scale: &[f32]) -> Result<Vec<u8>, BuildError> {
        let n = mean.len();
        let (mut g, x) = start("standardized_energy", n);
        let mu = g.initializer("mean", &[n], mean.to_vec())?;
        let s = g.initializer("scale", &[n], scale.to_vec())?;
        let d = g.sub(&x, &mu);
        let z = g.div(&d, &s);
        let z2 = g.mul(&z, &z);
        let score = g.reduce_mean(&z2, &[1], true);
        finish(g, &score)
    }

    /// Squared Mahalanobis distance `‖(x − mean) · w‖²` with `w` `[n, n]`
    /// row-major (e.g. the whitening matrix `Σ^(−1/2)`, or the PCA
    /// loadings scaled by `1/√λ` for Hotelling's T²).
    pub fn mahalanobis(mean: &[f32], w: &[f32]) -> Result<Vec<u8>, BuildError> {
        let n = mean.len();
        let (mut g, x) = start("mahalanobis", n);
        let mu = g.initializer("mean", &[n], mean.to_vec())?;
        let w = g.initializer("whiten", &[n, w.len() / n.max(1)], w.to_vec())?;
        let d = g.sub(&x, &mu);
        let y = g.matmul(&d, &w);
        let y2 = g.mul(&y, &y);
        let score = g.reduce_sum(&y2, &[1], true);
        finish(g, &score)
    }

    /// A one-hidden-layer autoencoder's mean squared reconstruction error:
    /// `h = tanh(x·w1 + b1)`, `x̂ = h·w2 + b2`, score `mean_j (x_j − x̂_j)²`.
    /// `w1` is `[n, h]`, `w2` `[h, n]`, row-major.
    pub fn autoencoder(
        w1: &[f32],
        b1: &[f32],
        w2: &[f32],
        b2: &[f32],
    ) -> Result<Vec<u8>, BuildError> {
        let (h, n) = (b1.len(), b2.len());
        let (mut g, x) = start("autoencoder", n);
        let w1 = g.initializer("w1", &[n, h], w1.to_vec())?;
        let b1 = g.initializer("b1", &[h], b1.to_vec())?;
        let w2 = g.initializer("w2", &[h, n], w2.to_vec())?;
        let b2 = g.initializer("b2", &[n], b2.to_vec())?;
        let z = g.dense(&x, &w1, &b1);
        let hidden = g.tanh(&z);
        let recon = g.dense(&hidden, &w2, &b2);
        let err = g.sub(&x, &recon);
        let err2 = g.mul(&err, &err);
        let score = g.reduce_mean(&err2, &[1], true);
        finish(g, &score)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_initializer_that_does_not_fill_its_dims_is_refused() {
        let mut g = GraphBuilder::new("t");
        assert_eq!(
            g.initializer("w", &[2, 3], vec![0.0; 5]),
            Err(BuildError::InitializerLength {
                name: "w".into(),
                dims: vec![2, 3],
                expected: 6,
                got: 5
            })
        );
    }

    #[test]
    fn reading_an_undefined_name_or_defining_one_twice_is_refused() {
        let mut g = GraphBuilder::new("t");
        let x = g.input("x", &[Dim::batch(), Dim::Fixed(2)]);
        let ghost = Value::named("ghost");
        let y = g.add(&x, &ghost);
        g.output(&y, "score", &[Dim::batch(), Dim::Fixed(2)]);
        assert!(matches!(g.build(), Err(BuildError::UndefinedInput { .. })));

        let mut g = GraphBuilder::new("t");
        let x = g.input("x", &[Dim::batch(), Dim::Fixed(2)]);
        g.initializer("x", &[1], vec![1.0]).unwrap();
        g.output(&x, "score", &[Dim::batch(), Dim::Fixed(2)]);
        assert!(matches!(g.build(), Err(BuildError::DuplicateName { .. })));

        let g = GraphBuilder::new("t");
        assert_eq!(g.build(), Err(BuildError::Missing { what: "input" }));
    }

    #[test]
    fn a_model_carries_opset_metadata_and_decodes_back() {
        let mut g = GraphBuilder::new("t");
        g.doc("a test").metadata("version", "3");
        let x = g.input("x", &[Dim::batch(), Dim::Fixed(2)]);
        let s = g.reduce_sum(&x, &[1], true);
        g.output(&s, "score", &[Dim::batch(), Dim::Fixed(1)]);
        let bytes = g.to_bytes().unwrap();
        let back = pb::ModelProto::decode(bytes.as_slice()).unwrap();
        assert_eq!(back.opset_import[0].version, OPSET_VERSION);
        assert_eq!(back.metadata_props[0].value, "3");
        assert_eq!(back.graph.unwrap().node.len(), 2);
    }
}
