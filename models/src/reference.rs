//! A plain-Rust evaluator of the graphs [`crate::builder`] makes: naive
//! loops in f64, sharing no code with tract. The parity tests compare tract's
//! scores with it, the benches use it as the in-run baseline, and training
//! code can use it to check an export before shipping it.
//!
//! Supported ops (the builder's set): Identity, MatMul (2-D), Gemm, Add, Sub,
//! Mul, Div, Max, Min (numpy broadcasting), Relu, Sigmoid, Tanh, Sqrt, Abs,
//! Exp, Log, Neg, ReduceSum (axes input), ReduceMean, ReduceMax (axes
//! attribute), Concat, Reshape, Transpose. Anything else is a typed error.

use std::collections::HashMap;

use prost::Message;
use tract_onnx::pb;

/// Why the reference evaluator could not run a graph.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReferenceError {
    #[error("not an ONNX model: {0}")]
    Decode(String),
    #[error("the model has no graph")]
    NoGraph,
    #[error("op `{0}` is not supported by the reference evaluator")]
    Unsupported(String),
    #[error("tensor `{0}` is not defined")]
    Undefined(String),
    #[error("initializer `{name}` has an unsupported data type {data_type}")]
    DataType { name: String, data_type: i32 },
    #[error("node `{node}`: {reason}")]
    Shape { node: String, reason: String },
    #[error("input has {got} values, shape {shape:?} needs {expected}")]
    InputLength {
        shape: Vec<usize>,
        expected: usize,
        got: usize,
    },
}

/// A dense row-major tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Vec<f64>) -> Result<Self, ReferenceError> {
        let expected: usize = shape.iter().product();
        if expected != data.len() {
            return Err(ReferenceError::InputLength {
                shape,
                expected,
                got: data.len(),
            });
        }
        Ok(Tensor { shape, data })
    }
}

/// A decoded model, ready to evaluate many times.
#[derive(Debug, Clone)]
pub struct ReferenceModel {
    graph: pb::GraphProto,
    consts: HashMap<String, Tensor>,
}

fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

fn shape_err(node: &pb::NodeProto, reason: impl Into<String>) -> ReferenceError {
    ReferenceError::Shape {
        node: node.name.clone(),
        reason: reason.into(),
    }
}

fn broadcast(
    node: &pb::NodeProto,
    a: &Tensor,
    b: &Tensor,
    f: impl Fn(f64, f64) -> f64,
) -> Result<Tensor, ReferenceError> {
    let rank = a.shape.len().max(b.shape.len());
    let pad = |s: &[usize]| -> Vec<usize> {
        let mut v = vec![1; rank - s.len()];
        v.extend_from_slice(s);
        v
    };
    let (sa, sb) = (pad(&a.shape), pad(&b.shape));
    let mut shape = Vec::with_capacity(rank);
    for (&x, &y) in sa.iter().zip(&sb) {
        shape.push(match (x, y) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => {
                return Err(shape_err(
                    node,
                    format!("cannot broadcast {:?} with {:?}", a.shape, b.shape),
                ));
            }
        });
    }
    let (ta, tb, out_strides) = (strides(&sa), strides(&sb), strides(&shape));
    let total: usize = shape.iter().product();
    let mut data = Vec::with_capacity(total);
    for i in 0..total {
        let (mut ia, mut ib) = (0, 0);
        for d in 0..rank {
            let idx = (i / out_strides[d]) % shape[d];
            if sa[d] != 1 {
                ia += idx * ta[d];
            }
            if sb[d] != 1 {
                ib += idx * tb[d];
            }
        }
        data.push(f(a.data[ia], b.data[ib]));
    }
    Ok(Tensor { shape, data })
}

fn matmul2(node: &pb::NodeProto, a: &Tensor, b: &Tensor) -> Result<Tensor, ReferenceError> {
    let [m, k] = a.shape[..] else {
        return Err(shape_err(node, "MatMul: A is not 2-D"));
    };
    let [k2, n] = b.shape[..] else {
        return Err(shape_err(node, "MatMul: B is not 2-D"));
    };
    if k != k2 {
        return Err(shape_err(node, format!("MatMul: {k} vs {k2}")));
    }
    let mut data = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0;
            for t in 0..k {
                s += a.data[i * k + t] * b.data[t * n + j];
            }
            data[i * n + j] = s;
        }
    }
    Ok(Tensor {
        shape: vec![m, n],
        data,
    })
}

fn transpose(t: &Tensor, perm: &[usize]) -> Tensor {
    let shape: Vec<usize> = perm.iter().map(|&p| t.shape[p]).collect();
    let (src, dst) = (strides(&t.shape), strides(&shape));
    let total = t.data.len();
    let mut data = vec![0.0; total];
    for (i, out) in data.iter_mut().enumerate() {
        let mut from = 0;
        for (d, &p) in perm.iter().enumerate() {
            from += ((i / dst[d]) % shape[d]) * src[p];
        }
        *out = t.data[from];
    }
    Tensor { shape, data }
}

fn axis(node: &pb::NodeProto, a: i64, rank: usize) -> Result<usize, ReferenceError> {
    let r = i64::try_from(rank).unwrap_or(i64::MAX);
    let a = if a < 0 { a + r } else { a };
    usize::try_from(a)
        .ok()
        .filter(|&a| a < rank)
        .ok_or_else(|| shape_err(node, format!("axis {a} out of range for rank {rank}")))
}

#[derive(Clone, Copy)]
enum Reduce {
    Sum,
    Mean,
    Max,
}

fn reduce(
    node: &pb::NodeProto,
    t: &Tensor,
    axes: &[i64],
    keepdims: bool,
    how: Reduce,
) -> Result<Tensor, ReferenceError> {
    let rank = t.shape.len();
    let mut reduced = vec![false; rank];
    if axes.is_empty() {
        reduced.iter_mut().for_each(|r| *r = true);
    }
    for &a in axes {
        reduced[axis(node, a, rank)?] = true;
    }
    let out_full: Vec<usize> = t
        .shape
        .iter()
        .zip(&reduced)
        .map(|(&s, &r)| if r { 1 } else { s })
        .collect();
    let total_out: usize = out_full.iter().product();
    let (src, dst) = (strides(&t.shape), strides(&out_full));
    let init = match how {
        Reduce::Max => f64::NEG_INFINITY,
        _ => 0.0,
    };
    let mut acc = vec![init; total_out];
    for (i, &x) in t.data.iter().enumerate() {
        let mut o = 0;
        for d in 0..rank {
            if !reduced[d] {
                o += ((i / src[d]) % t.shape[d]) * dst[d];
            }
        }
        match how {
            Reduce::Max => acc[o] = acc[o].max(x),
            _ => acc[o] += x,
        }
    }
    if let Reduce::Mean = how {
        let count = (t.data.len() / total_out.max(1)) as f64;
        acc.iter_mut().for_each(|v| *v /= count);
    }
    let shape = if keepdims {
        out_full
    } else {
        t.shape
            .iter()
            .zip(&reduced)
            .filter(|(_, r)| !**r)
            .map(|(&s, _)| s)
            .collect()
    };
    Ok(Tensor { shape, data: acc })
}

fn attr_i(node: &pb::NodeProto, name: &str, default: i64) -> i64 {
    node.attribute
        .iter()
        .find(|a| a.name == name)
        .map_or(default, |a| a.i)
}

fn attr_f(node: &pb::NodeProto, name: &str, default: f32) -> f32 {
    node.attribute
        .iter()
        .find(|a| a.name == name)
        .map_or(default, |a| a.f)
}

fn attr_ints(node: &pb::NodeProto, name: &str) -> Option<Vec<i64>> {
    node.attribute
        .iter()
        .find(|a| a.name == name)
        .map(|a| a.ints.clone())
}

fn tensor_of(proto: &pb::TensorProto) -> Result<Tensor, ReferenceError> {
    use pb::tensor_proto::DataType;
    let shape: Vec<usize> = proto
        .dims
        .iter()
        .map(|&d| usize::try_from(d).unwrap_or(0))
        .collect();
    let data: Vec<f64> = if proto.data_type == DataType::Float as i32 {
        if proto.raw_data.is_empty() {
            proto.float_data.iter().map(|&v| f64::from(v)).collect()
        } else {
            proto
                .raw_data
                .chunks_exact(4)
                .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect()
        }
    } else if proto.data_type == DataType::Int64 as i32 {
        if proto.raw_data.is_empty() {
            proto.int64_data.iter().map(|&v| v as f64).collect()
        } else {
            proto
                .raw_data
                .chunks_exact(8)
                .map(|c| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(c);
                    i64::from_le_bytes(b) as f64
                })
                .collect()
        }
    } else {
        return Err(ReferenceError::DataType {
            name: proto.name.clone(),
            data_type: proto.data_type,
        });
    };
    Tensor::new(shape, data)
}

impl ReferenceModel {
    /// Decodes ONNX bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ReferenceError> {
        let model =
            pb::ModelProto::decode(bytes).map_err(|e| ReferenceError::Decode(e.to_string()))?;
        let graph = model.graph.ok_or(ReferenceError::NoGraph)?;
        let consts = graph
            .initializer
            .iter()
            .map(|t| Ok((t.name.clone(), tensor_of(t)?)))
            .collect::<Result<_, ReferenceError>>()?;
        Ok(ReferenceModel { graph, consts })
    }

    /// Runs the graph on one input tensor; returns the first output.
    pub fn run(&self, input: Tensor) -> Result<Tensor, ReferenceError> {
        let mut env: HashMap<&str, Tensor> = HashMap::new();
        let first = self
            .graph
            .input
            .first()
            .ok_or_else(|| ReferenceError::Undefined("<input>".into()))?;
        env.insert(first.name.as_str(), input);
        for node in &self.graph.node {
            let get = |i: usize| -> Result<&Tensor, ReferenceError> {
                let name = node
                    .input
                    .get(i)
                    .ok_or_else(|| shape_err(node, format!("missing input {i}")))?;
                env.get(name.as_str())
                    .or_else(|| self.consts.get(name))
                    .ok_or_else(|| ReferenceError::Undefined(name.clone()))
            };
            let unary = |f: fn(f64) -> f64| -> Result<Tensor, ReferenceError> {
                let x = get(0)?;
                Ok(Tensor {
                    shape: x.shape.clone(),
                    data: x.data.iter().map(|&v| f(v)).collect(),
                })
            };
            let binary = |f: fn(f64, f64) -> f64| -> Result<Tensor, ReferenceError> {
                let mut acc = get(0)?.clone();
                for i in 1..node.input.len() {
                    acc = broadcast(node, &acc, get(i)?, f)?;
                }
                Ok(acc)
            };
            let out = match node.op_type.as_str() {
                "Identity" => get(0)?.clone(),
                "Add" => binary(|a, b| a + b)?,
                "Sub" => binary(|a, b| a - b)?,
                "Mul" => binary(|a, b| a * b)?,
                "Div" => binary(|a, b| a / b)?,
                "Max" => binary(f64::max)?,
                "Min" => binary(f64::min)?,
                "Relu" => unary(|v| v.max(0.0))?,
                "Sigmoid" => unary(|v| 1.0 / (1.0 + (-v).exp()))?,
                "Tanh" => unary(f64::tanh)?,
                "Sqrt" => unary(f64::sqrt)?,
                "Abs" => unary(f64::abs)?,
                "Exp" => unary(f64::exp)?,
                "Log" => unary(f64::ln)?,
                "Neg" => unary(|v| -v)?,
                "MatMul" => matmul2(node, get(0)?, get(1)?)?,
                "Gemm" => {
                    let mut a = get(0)?.clone();
                    let mut b = get(1)?.clone();
                    if a.shape.len() != 2 || b.shape.len() != 2 {
                        return Err(shape_err(node, "Gemm needs 2-D A and B"));
                    }
                    if attr_i(node, "transA", 0) != 0 {
                        a = transpose(&a, &[1, 0]);
                    }
                    if attr_i(node, "transB", 0) != 0 {
                        b = transpose(&b, &[1, 0]);
                    }
                    let (alpha, beta) = (
                        f64::from(attr_f(node, "alpha", 1.0)),
                        f64::from(attr_f(node, "beta", 1.0)),
                    );
                    let mut y = matmul2(node, &a, &b)?;
                    y.data.iter_mut().for_each(|v| *v *= alpha);
                    if node.input.len() > 2 && !node.input[2].is_empty() {
                        y = broadcast(node, &y, get(2)?, |p, c| p + beta * c)?;
                    }
                    y
                }
                "ReduceSum" => {
                    let axes: Vec<i64> = if node.input.len() > 1 {
                        get(1)?.data.iter().map(|&v| v as i64).collect()
                    } else {
                        Vec::new()
                    };
                    let keep = attr_i(node, "keepdims", 1) != 0;
                    reduce(node, get(0)?, &axes, keep, Reduce::Sum)?
                }
                op @ ("ReduceMean" | "ReduceMax") => {
                    let axes = attr_ints(node, "axes").unwrap_or_default();
                    let keep = attr_i(node, "keepdims", 1) != 0;
                    let how = if op == "ReduceMean" {
                        Reduce::Mean
                    } else {
                        Reduce::Max
                    };
                    reduce(node, get(0)?, &axes, keep, how)?
                }
                "Concat" => {
                    let first = get(0)?;
                    let ax = axis(node, attr_i(node, "axis", 0), first.shape.len())?;
                    let parts: Vec<&Tensor> =
                        (0..node.input.len()).map(get).collect::<Result<_, _>>()?;
                    let outer: usize = first.shape[..ax].iter().product();
                    let mut shape = first.shape.clone();
                    shape[ax] = 0;
                    for p in &parts {
                        if p.shape.len() != first.shape.len()
                            || p.shape[..ax] != first.shape[..ax]
                            || p.shape[ax + 1..] != first.shape[ax + 1..]
                        {
                            return Err(shape_err(node, "Concat: shapes differ off the axis"));
                        }
                        shape[ax] += p.shape[ax];
                    }
                    let mut data = Vec::with_capacity(shape.iter().product());
                    for o in 0..outer {
                        for p in &parts {
                            let chunk = p.data.len() / outer.max(1);
                            data.extend_from_slice(&p.data[o * chunk..(o + 1) * chunk]);
                        }
                    }
                    Tensor { shape, data }
                }
                "Reshape" => {
                    let x = get(0)?;
                    let spec: Vec<i64> = get(1)?.data.iter().map(|&v| v as i64).collect();
                    let mut shape = Vec::with_capacity(spec.len());
                    let mut infer = None;
                    for (i, &s) in spec.iter().enumerate() {
                        shape.push(match s {
                            0 => *x
                                .shape
                                .get(i)
                                .ok_or_else(|| shape_err(node, "Reshape: 0 past the rank"))?,
                            -1 => {
                                infer = Some(i);
                                1
                            }
                            s => usize::try_from(s)
                                .map_err(|_| shape_err(node, "Reshape: bad dim"))?,
                        });
                    }
                    if let Some(i) = infer {
                        let known: usize = shape.iter().product();
                        shape[i] = x.data.len() / known.max(1);
                    }
                    Tensor::new(shape, x.data.clone())
                        .map_err(|e| shape_err(node, e.to_string()))?
                }
                "Transpose" => {
                    let x = get(0)?;
                    let perm: Vec<usize> = match attr_ints(node, "perm") {
                        Some(p) => p
                            .iter()
                            .map(|&a| axis(node, a, x.shape.len()))
                            .collect::<Result<_, _>>()?,
                        None => (0..x.shape.len()).rev().collect(),
                    };
                    transpose(x, &perm)
                }
                other => return Err(ReferenceError::Unsupported(other.to_owned())),
            };
            let name = node
                .output
                .first()
                .ok_or_else(|| shape_err(node, "no output"))?;
            env.insert(name.as_str(), out);
        }
        let out = self
            .graph
            .output
            .first()
            .ok_or_else(|| ReferenceError::Undefined("<output>".into()))?;
        env.remove(out.name.as_str())
            .ok_or_else(|| ReferenceError::Undefined(out.name.clone()))
    }

    /// Scores of a row-major `[batch, features]` matrix (a graph with a
    /// `[batch, 1]` or `[batch]` output).
    pub fn scores(&self, features: &[f32], width: usize) -> Result<Vec<f64>, ReferenceError> {
        let batch = features.len() / width.max(1);
        let input = Tensor::new(
            vec![batch, width],
            features.iter().map(|&v| f64::from(v)).collect(),
        )?;
        Ok(self.run(input)?.data)
    }
}
