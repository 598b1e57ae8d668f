//! Ergonomic graph construction: one method per primitive op, plus a scope
//! (`layers.3.attn`) stamped on every node it adds.

use super::dim::Dim;
use super::graph::{Graph, IrError, NodeId};
use super::op::{BinaryOp, Init, Op, ReduceOp, UnaryOp};
use super::types::{DType, Shape, TensorType};

/// The result of adding a node: its id, or the type error that rejected it.
pub type R = Result<NodeId, IrError>;

/// Adds nodes to a graph, stamping each with the current scope.
pub struct Builder<'g> {
    /// The graph being built.
    pub graph: &'g mut Graph,
    scope: Vec<String>,
}

impl<'g> Builder<'g> {
    /// A builder over `graph` with an empty scope.
    pub fn new(graph: &'g mut Graph) -> Self {
        Builder {
            graph,
            scope: Vec::new(),
        }
    }

    /// The current scope, dot-joined (`layers.3.attn`); empty at the top level.
    pub fn scope(&self) -> String {
        self.scope.join(".")
    }

    /// Run `f` with `name` appended to the scope.
    pub fn scoped<T>(&mut self, name: impl Into<String>, f: impl FnOnce(&mut Self) -> T) -> T {
        self.scope.push(name.into());
        let out = f(self);
        self.scope.pop();
        out
    }

    /// Add `op` on `inputs` in the current scope; `declared` is required by ops whose type is declared.
    pub fn add(&mut self, op: Op, inputs: &[NodeId], declared: Option<TensorType>) -> R {
        let scope = self.scope();
        self.graph.add(op, inputs, declared, &scope)
    }

    /// The type of node `id`.
    pub fn ty(&self, id: NodeId) -> &TensorType {
        self.graph.ty(id)
    }

    /// The shape of node `id`, cloned.
    pub fn shape(&self, id: NodeId) -> Shape {
        self.graph.ty(id).shape.clone()
    }

    /// A runtime input named `name` of the given type.
    pub fn input(&mut self, name: &str, dtype: DType, shape: Shape) -> R {
        self.add(
            Op::Input { name: name.into() },
            &[],
            Some(TensorType::new(dtype, shape)),
        )
    }

    /// A parameter; its canonical name is `scope.name`.
    pub fn param(&mut self, name: &str, shape: &[usize], init: Init) -> R {
        let full = if self.scope.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.scope())
        };
        let shape = shape.iter().map(|&d| Dim::c(d)).collect();
        self.add(
            Op::Parameter { name: full, init },
            &[],
            Some(TensorType::f32(shape)),
        )
    }

    /// An f32 rank-0 scalar.
    pub fn scalar(&mut self, v: f64) -> R {
        self.add(Op::Scalar(v), &[], Some(TensorType::f32(vec![])))
    }

    /// An i32 rank-0 scalar.
    pub fn scalar_i32(&mut self, v: i32) -> R {
        self.add(
            Op::Scalar(v as f64),
            &[],
            Some(TensorType::new(DType::I32, vec![])),
        )
    }

    /// An f32 literal of constant `shape`; `values` is row-major.
    pub fn literal(&mut self, values: Vec<f32>, shape: &[usize]) -> R {
        let shape = shape.iter().map(|&d| Dim::c(d)).collect();
        self.add(Op::Literal(values), &[], Some(TensorType::f32(shape)))
    }

    /// A tensor of `shape` whose elements are their index along `axis`.
    pub fn iota(&mut self, dtype: DType, shape: Shape, axis: usize) -> R {
        self.add(Op::Iota { axis }, &[], Some(TensorType::new(dtype, shape)))
    }

    /// Elementwise `op(x)`.
    pub fn unary(&mut self, op: UnaryOp, x: NodeId) -> R {
        self.add(Op::Unary(op), &[x], None)
    }

    /// Elementwise `op(a, b)` with broadcasting.
    pub fn binary(&mut self, op: BinaryOp, a: NodeId, b: NodeId) -> R {
        self.add(Op::Binary(op), &[a, b], None)
    }

    /// `a + b` (see [`Builder::add`] for adding an arbitrary op).
    pub fn add2(&mut self, a: NodeId, b: NodeId) -> R {
        self.binary(BinaryOp::Add, a, b)
    }
    /// `a - b`.
    pub fn sub(&mut self, a: NodeId, b: NodeId) -> R {
        self.binary(BinaryOp::Sub, a, b)
    }
    /// `a * b`.
    pub fn mul(&mut self, a: NodeId, b: NodeId) -> R {
        self.binary(BinaryOp::Mul, a, b)
    }
    /// `a / b`.
    pub fn div(&mut self, a: NodeId, b: NodeId) -> R {
        self.binary(BinaryOp::Div, a, b)
    }

    /// `x * c` for a scalar constant; skipped when `c == 1`.
    pub fn mul_scalar(&mut self, x: NodeId, c: f64) -> R {
        if c == 1.0 {
            return Ok(x);
        }
        let s = self.scalar(c)?;
        self.mul(x, s)
    }

    /// `x + c` with `c` an f32 scalar.
    pub fn add_scalar(&mut self, x: NodeId, c: f64) -> R {
        let s = self.scalar(c)?;
        self.add2(x, s)
    }

    /// `cond ? a : b`, broadcasting all three.
    pub fn select(&mut self, cond: NodeId, a: NodeId, b: NodeId) -> R {
        self.add(Op::Select, &[cond, a, b], None)
    }

    /// Reduce `x` over `axes` with `op`, keeping them as size-1 dims.
    pub fn reduce(&mut self, op: ReduceOp, x: NodeId, axes: &[usize]) -> R {
        self.add(
            Op::Reduce {
                op,
                axes: axes.to_vec(),
            },
            &[x],
            None,
        )
    }

    /// Mean over the last axis, kept as size 1.
    pub fn mean_last(&mut self, x: NodeId) -> R {
        let r = self.ty(x).rank();
        let n = self.ty(x).shape[r - 1]
            .as_const()
            .expect("mean over a constant axis");
        let s = self.reduce(ReduceOp::Sum, x, &[r - 1])?;
        self.mul_scalar(s, 1.0 / n as f64)
    }

    /// Batched matrix product `[.., m, k] x [.., k, n] -> [.., m, n]`.
    pub fn matmul(&mut self, a: NodeId, b: NodeId) -> R {
        self.add(Op::MatMul, &[a, b], None)
    }

    /// `x` reshaped to `shape` (same element count).
    pub fn reshape(&mut self, x: NodeId, shape: Shape) -> R {
        let dtype = self.ty(x).dtype;
        self.add(Op::Reshape, &[x], Some(TensorType::new(dtype, shape)))
    }

    /// Output axis `i` is input axis `perm[i]`.
    pub fn permute(&mut self, x: NodeId, perm: &[usize]) -> R {
        self.add(
            Op::Permute {
                perm: perm.to_vec(),
            },
            &[x],
            None,
        )
    }

    /// Swap the last two axes.
    pub fn transpose_last(&mut self, x: NodeId) -> R {
        let r = self.ty(x).rank();
        let mut perm: Vec<usize> = (0..r).collect();
        perm.swap(r - 2, r - 1);
        self.permute(x, &perm)
    }

    /// Elements `[start, end)` of `x` along `axis`.
    pub fn slice(&mut self, x: NodeId, axis: usize, start: Dim, end: Dim) -> R {
        self.add(Op::Slice { axis, start, end }, &[x], None)
    }

    /// `xs` joined along `axis`.
    pub fn concat(&mut self, xs: &[NodeId], axis: usize) -> R {
        self.add(Op::Concat { axis }, xs, None)
    }

    /// Rows of `data` along `axis` picked by integer `indices` (numpy `take`).
    pub fn gather(&mut self, data: NodeId, indices: NodeId, axis: usize) -> R {
        self.add(Op::Gather { axis }, &[data, indices], None)
    }

    /// `x` converted to `dtype`; returns `x` itself when it already has that dtype.
    pub fn cast(&mut self, x: NodeId, dtype: DType) -> R {
        if self.ty(x).dtype == dtype {
            return Ok(x);
        }
        let shape = self.shape(x);
        self.add(Op::Cast, &[x], Some(TensorType::new(dtype, shape)))
    }

    /// Numerically safe softmax over the last axis.
    pub fn softmax_last(&mut self, x: NodeId) -> R {
        let last = self.ty(x).rank() - 1;
        let m = self.reduce(ReduceOp::Max, x, &[last])?;
        let d = self.sub(x, m)?;
        let e = self.unary(UnaryOp::Exp, d)?;
        let s = self.reduce(ReduceOp::Sum, e, &[last])?;
        self.div(e, s)
    }

    /// `1 / (1 + exp(-x))`.
    pub fn sigmoid(&mut self, x: NodeId) -> R {
        let n = self.unary(UnaryOp::Neg, x)?;
        let e = self.unary(UnaryOp::Exp, n)?;
        let d = self.add_scalar(e, 1.0)?;
        self.unary(UnaryOp::Recip, d)
    }

    /// `c * tanh(x / c)`.
    pub fn softcap(&mut self, x: NodeId, c: f64) -> R {
        let s = self.mul_scalar(x, 1.0 / c)?;
        let t = self.unary(UnaryOp::Tanh, s)?;
        self.mul_scalar(t, c)
    }
}
