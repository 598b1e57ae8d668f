//! Constant folding: an op whose operands are all constants becomes one
//! `scalar` (when every element is equal) or `literal` node.
//!
//! Constants are `scalar` nodes (one value broadcast over any shape, symbolic
//! included), `literal` nodes, and `iota` nodes of constant shape. Results
//! are computed exactly as the reference interpreter computes them (see the
//! numeric contract in `kiln_runtime`'s crate docs): f32 arithmetic in f32,
//! transcendental functions in f64 rounded once, sums accumulated in f64 in
//! row-major order, NaN-propagating max/min, wrapping i32 arithmetic and the
//! same casts. Where that cannot be reproduced exactly, or the result could
//! not be stored exactly, the node is left alone:
//! - `erf` (the interpreter's own series) and `matmul` are never folded;
//! - i32 division by a zero constant stays (it is a run-time error);
//! - reductions over a symbolic axis of a broadcast scalar stay (the axis
//!   may be empty at run time);
//! - an i32 literal result with a value beyond ±2^24 stays (literals hold f32);
//! - a literal result with more than [`ConstFold::max_elements`] elements stays.
//!
//! A uniform result keeps the node's full type, symbolic shape included.

use super::{Pass, PassError};
use crate::ir::scalar::{self, nan_max};
use crate::ir::{BinaryOp, DType, Dim, Graph, NodeId, Op, ReduceOp, TensorType, UnaryOp};

/// Constant folding (`const-fold`).
#[derive(Debug, Clone, Copy)]
pub struct ConstFold {
    /// The largest literal a fold may create (and iota it may expand).
    pub max_elements: usize,
}

impl Default for ConstFold {
    fn default() -> Self {
        ConstFold { max_elements: 4096 }
    }
}

/// Element data of a constant.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Data {
    F32(Vec<f32>),
    I32(Vec<i32>),
    Bool(Vec<bool>),
}

/// One element.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Elem {
    F32(f32),
    I32(i32),
    Bool(bool),
}

impl Data {
    fn len(&self) -> usize {
        match self {
            Data::F32(v) => v.len(),
            Data::I32(v) => v.len(),
            Data::Bool(v) => v.len(),
        }
    }

    fn get(&self, i: usize) -> Elem {
        match self {
            Data::F32(v) => Elem::F32(v[i]),
            Data::I32(v) => Elem::I32(v[i]),
            Data::Bool(v) => Elem::Bool(v[i]),
        }
    }

    fn empty(dtype: DType, cap: usize) -> Data {
        match dtype {
            DType::F32 => Data::F32(Vec::with_capacity(cap)),
            DType::I32 => Data::I32(Vec::with_capacity(cap)),
            DType::Bool => Data::Bool(Vec::with_capacity(cap)),
        }
    }

    /// Append `e`; false if its dtype differs.
    fn push(&mut self, e: Elem) -> bool {
        match (self, e) {
            (Data::F32(v), Elem::F32(x)) => v.push(x),
            (Data::I32(v), Elem::I32(x)) => v.push(x),
            (Data::Bool(v), Elem::Bool(x)) => v.push(x),
            _ => return false,
        }
        true
    }

    /// Element `i` of every operand, gathered by `f` into a new array.
    fn from_fn(dtype: DType, n: usize, mut f: impl FnMut(usize) -> Option<Elem>) -> Option<Data> {
        let mut d = Data::empty(dtype, n);
        for i in 0..n {
            if !d.push(f(i)?) {
                return None;
            }
        }
        Some(d)
    }
}

impl Elem {
    /// A scalar's value as the interpreter's `fill` converts it.
    fn from_f64(v: f64, dtype: DType) -> Elem {
        match dtype {
            DType::F32 => Elem::F32(v as f32),
            DType::I32 => Elem::I32(v as i32),
            DType::Bool => Elem::Bool(v != 0.0),
        }
    }

    fn bits(self) -> u64 {
        match self {
            Elem::F32(x) => u64::from(x.to_bits()),
            Elem::I32(x) => x as u32 as u64,
            Elem::Bool(x) => u64::from(x),
        }
    }
}

/// A constant value: `uniform` is one element broadcast over the node's
/// whole (possibly symbolic) shape; otherwise `data` holds every element of
/// the node's constant shape in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Const {
    pub data: Data,
    pub uniform: bool,
}

impl Const {
    fn uniform(e: Elem) -> Const {
        let mut data = Data::empty(
            match e {
                Elem::F32(_) => DType::F32,
                Elem::I32(_) => DType::I32,
                Elem::Bool(_) => DType::Bool,
            },
            1,
        );
        data.push(e);
        Const {
            data,
            uniform: true,
        }
    }

    /// The single value, when every element is the same.
    pub fn splat(&self) -> Option<Elem> {
        if self.data.len() == 0 {
            return None;
        }
        let first = self.data.get(0);
        if self.uniform {
            return Some(first);
        }
        (0..self.data.len())
            .all(|i| self.data.get(i).bits() == first.bits())
            .then_some(first)
    }
}

/// Constant shape of a type.
fn dims(t: &TensorType) -> Option<Vec<usize>> {
    t.shape.iter().map(Dim::as_const).collect()
}

/// The constant value of node `id`, if it is one (`iota` only up to `max` elements).
pub(crate) fn constant(g: &Graph, id: NodeId, max: usize) -> Option<Const> {
    let n = g.node(id);
    let dtype = n.ty.dtype;
    match &n.op {
        Op::Scalar(v) => Some(Const::uniform(Elem::from_f64(*v, dtype))),
        Op::Literal(v) => Some(Const {
            data: Data::from_fn(dtype, v.len(), |i| {
                Some(Elem::from_f64(f64::from(v[i]), dtype))
            })?,
            uniform: false,
        }),
        Op::Iota { axis } => {
            let shape = dims(&n.ty)?;
            let total: usize = shape.iter().product();
            if total > max || dtype == DType::Bool {
                return None;
            }
            let inner: usize = shape[axis + 1..].iter().product();
            let len = shape[*axis];
            Some(Const {
                data: Data::from_fn(dtype, total, |i| {
                    let k = (i / inner) % len;
                    Some(match dtype {
                        DType::F32 => Elem::F32(k as f32),
                        _ => Elem::I32(i32::try_from(k).ok()?),
                    })
                })?,
                uniform: false,
            })
        }
        _ => None,
    }
}

/// The interpreter's value of `op` on a constant (the IR's numeric contract,
/// [`scalar`]); None where folding is not exact or not defined. `erf` is left
/// to run time.
fn unary(op: UnaryOp, x: Elem) -> Option<Elem> {
    Some(match x {
        Elem::Bool(b) if op == UnaryOp::Not => Elem::Bool(!b),
        Elem::I32(a) => Elem::I32(scalar::i32_unary(op)?(a)),
        Elem::F32(_) if op == UnaryOp::Erf => return None,
        Elem::F32(a) => Elem::F32(scalar::f32_unary(op)?(a)),
        Elem::Bool(_) => return None,
    })
}

fn binary(op: BinaryOp, x: Elem, y: Elem) -> Option<Elem> {
    Some(match (x, y) {
        (Elem::F32(p), Elem::F32(q)) => match scalar::f32_binary(op) {
            Some(f) => Elem::F32(f(p, q)),
            None => Elem::Bool(scalar::compare::<f32>(op)?(p, q)),
        },
        (Elem::I32(_), Elem::I32(0)) if op == BinaryOp::Div => return None,
        (Elem::I32(p), Elem::I32(q)) => match scalar::i32_binary(op) {
            Some(f) => Elem::I32(f(p, q)),
            None => Elem::Bool(scalar::compare::<i32>(op)?(p, q)),
        },
        (Elem::Bool(p), Elem::Bool(q)) => Elem::Bool(scalar::bool_binary(op)?(p, q)),
        _ => return None,
    })
}

fn cast(x: Elem, to: DType) -> Elem {
    match (x, to) {
        (Elem::F32(a), DType::I32) => Elem::I32(a as i32),
        (Elem::F32(a), DType::Bool) => Elem::Bool(a != 0.0),
        (Elem::I32(a), DType::F32) => Elem::F32(a as f32),
        (Elem::I32(a), DType::Bool) => Elem::Bool(a != 0),
        (Elem::Bool(a), DType::F32) => Elem::F32(f32::from(u8::from(a))),
        (Elem::Bool(a), DType::I32) => Elem::I32(i32::from(a)),
        (e, _) => e,
    }
}

fn row_major_strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// For each row-major position of `out`, the offset into an operand of
/// `shape` broadcast to it (right-aligned; stretched axes repeat).
fn broadcast_offsets(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let own = row_major_strides(shape);
    let lead = out.len() - shape.len();
    let strides: Vec<usize> = (0..out.len())
        .map(|i| match i.checked_sub(lead) {
            Some(j) if shape[j] == out[i] => own[j],
            _ => 0,
        })
        .collect();
    offsets(out, &strides)
}

/// Row-major walk of `shape`, the offset `sum(index * strides)` at each step.
fn offsets(shape: &[usize], strides: &[usize]) -> Vec<usize> {
    let total: usize = shape.iter().product();
    let mut out = Vec::with_capacity(total);
    let mut index = vec![0usize; shape.len()];
    let mut off = 0usize;
    for _ in 0..total {
        out.push(off);
        let mut axis = shape.len();
        while axis > 0 {
            axis -= 1;
            index[axis] += 1;
            off += strides[axis];
            if index[axis] < shape[axis] {
                break;
            }
            off -= strides[axis] * shape[axis];
            index[axis] = 0;
        }
    }
    out
}

/// An operand of an elementwise op: its constant and concrete shape
/// (`[]` for a uniform constant, whatever its declared shape).
struct Operand<'a> {
    c: &'a Const,
    shape: Vec<usize>,
}

impl ConstFold {
    /// Fold node `id`, given its operands' constants. `None`: leave it.
    fn eval(&self, g: &Graph, id: NodeId, args: &[Const]) -> Option<Const> {
        let node = g.node(id);
        let out_ty = &node.ty;
        let in_tys: Vec<&TensorType> = g.inputs(id).into_iter().map(|i| g.ty(i)).collect();
        let operands: Option<Vec<Operand>> = args
            .iter()
            .zip(&in_tys)
            .map(|(c, t)| {
                Some(Operand {
                    c,
                    shape: if c.uniform { vec![] } else { dims(t)? },
                })
            })
            .collect();
        let operands = operands?;
        let all_uniform = args.iter().all(|c| c.uniform);
        let small = |shape: &[usize]| shape.iter().product::<usize>() <= self.max_elements;
        // Elementwise ops: per-element `f` over broadcast operands.
        let elementwise = |f: &dyn Fn(&[Elem]) -> Option<Elem>| -> Option<Const> {
            if all_uniform {
                let es: Vec<Elem> = args.iter().map(|c| c.data.get(0)).collect();
                return Some(Const::uniform(f(&es)?));
            }
            let out = dims(out_ty)?;
            if !small(&out) {
                return None;
            }
            let offs: Vec<Vec<usize>> = operands
                .iter()
                .map(|o| broadcast_offsets(&o.shape, &out))
                .collect();
            let n: usize = out.iter().product();
            let mut es = Vec::with_capacity(args.len());
            let data = Data::from_fn(out_ty.dtype, n, |i| {
                es.clear();
                es.extend(
                    operands
                        .iter()
                        .zip(&offs)
                        .map(|(o, off)| o.c.data.get(off[i])),
                );
                f(&es)
            })?;
            Some(Const {
                data,
                uniform: false,
            })
        };
        // Dense data of operand `k`, materialising a uniform one if its shape is constant.
        let dense = |k: usize| -> Option<(Vec<usize>, Data)> {
            let shape = dims(in_tys[k])?;
            let n: usize = shape.iter().product();
            if !small(&shape) {
                return None;
            }
            let c = &args[k];
            let data = if c.uniform {
                let e = c.data.get(0);
                Data::from_fn(in_tys[k].dtype, n, |_| Some(e))?
            } else {
                c.data.clone()
            };
            Some((shape, data))
        };

        match &node.op {
            Op::Unary(u) => elementwise(&|e| unary(*u, e[0])),
            Op::Binary(b) => elementwise(&|e| binary(*b, e[0], e[1])),
            Op::Select => elementwise(&|e| match e[0] {
                Elem::Bool(c) => Some(if c { e[1] } else { e[2] }),
                _ => None,
            }),
            Op::Cast => elementwise(&|e| Some(cast(e[0], out_ty.dtype))),
            Op::Reshape => Some(args[0].clone()),
            Op::Permute { perm } => {
                if args[0].uniform {
                    return Some(args[0].clone());
                }
                let (shape, data) = dense(0)?;
                let strides = row_major_strides(&shape);
                let out: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
                let read: Vec<usize> = perm.iter().map(|&p| strides[p]).collect();
                let offs = offsets(&out, &read);
                Some(Const {
                    data: Data::from_fn(out_ty.dtype, offs.len(), |i| Some(data.get(offs[i])))?,
                    uniform: false,
                })
            }
            Op::Slice { axis, start, end } => {
                if args[0].uniform {
                    return Some(args[0].clone());
                }
                let (shape, data) = dense(0)?;
                let (s, e) = (start.as_const()?, end.as_const()?);
                if s > e || e > shape[*axis] {
                    return None;
                }
                let inner: usize = shape[axis + 1..].iter().product();
                let outer: usize = shape[..*axis].iter().product();
                let len = shape[*axis];
                let mut idx = Vec::with_capacity(outer * (e - s) * inner);
                for o in 0..outer {
                    idx.extend((o * len + s) * inner..(o * len + e) * inner);
                }
                Some(Const {
                    data: Data::from_fn(out_ty.dtype, idx.len(), |i| Some(data.get(idx[i])))?,
                    uniform: false,
                })
            }
            Op::Concat { axis } => {
                if all_uniform {
                    let first = args[0].data.get(0);
                    if args.iter().all(|c| c.data.get(0).bits() == first.bits()) {
                        return Some(args[0].clone());
                    }
                }
                let parts: Vec<(Vec<usize>, Data)> =
                    (0..args.len()).map(dense).collect::<Option<_>>()?;
                let out = dims(out_ty)?;
                if !small(&out) {
                    return None;
                }
                let outer: usize = out[..*axis].iter().product();
                let inner: usize = out[axis + 1..].iter().product();
                let mut data = Data::empty(out_ty.dtype, out.iter().product());
                for o in 0..outer {
                    for (shape, d) in &parts {
                        let chunk = shape[*axis] * inner;
                        for i in o * chunk..(o + 1) * chunk {
                            data.push(d.get(i));
                        }
                    }
                }
                Some(Const {
                    data,
                    uniform: false,
                })
            }
            Op::Reduce { op, axes } => self.reduce(*op, axes, in_tys[0], &args[0], out_ty),
            Op::Gather { axis } => {
                let (shape, data) = dense(0)?;
                let (_, idx) = dense(1)?;
                let Data::I32(idx) = idx else { return None };
                let len = shape[*axis];
                if idx.iter().any(|&i| i < 0 || i as usize >= len) {
                    return None;
                }
                let outer: usize = shape[..*axis].iter().product();
                let inner: usize = shape[axis + 1..].iter().product();
                let n = outer * idx.len() * inner;
                if n > self.max_elements {
                    return None;
                }
                let mut out = Data::empty(out_ty.dtype, n);
                for o in 0..outer {
                    for &i in &idx {
                        let row = o * len + i as usize;
                        for k in row * inner..(row + 1) * inner {
                            out.push(data.get(k));
                        }
                    }
                }
                Some(Const {
                    data: out,
                    uniform: false,
                })
            }
            Op::MatMul
            | Op::Input { .. }
            | Op::Parameter { .. }
            | Op::Scalar(_)
            | Op::Literal(_)
            | Op::Iota { .. } => None,
        }
    }

    fn reduce(
        &self,
        op: ReduceOp,
        axes: &[usize],
        in_ty: &TensorType,
        x: &Const,
        out_ty: &TensorType,
    ) -> Option<Const> {
        let sum_f32 = |v: &mut dyn Iterator<Item = f32>| v.map(f64::from).sum::<f64>() as f32;
        if x.uniform {
            // Every output element reduces `count` copies of the value.
            let count: usize = axes
                .iter()
                .map(|&a| in_ty.shape[a].as_const())
                .product::<Option<usize>>()?;
            if count > self.max_elements {
                return None;
            }
            let e = x.data.get(0);
            let r = match (op, e) {
                (ReduceOp::Sum, Elem::F32(v)) => {
                    Elem::F32(sum_f32(&mut std::iter::repeat_n(v, count)))
                }
                (ReduceOp::Sum, Elem::I32(v)) => {
                    Elem::I32(std::iter::repeat_n(v, count).fold(0i32, |a, b| a.wrapping_add(b)))
                }
                (ReduceOp::Max, _) if count == 0 => match e {
                    Elem::F32(_) => Elem::F32(f32::NEG_INFINITY),
                    Elem::I32(_) => Elem::I32(i32::MIN),
                    Elem::Bool(_) => Elem::Bool(false),
                },
                (ReduceOp::Max, Elem::F32(v)) => Elem::F32(nan_max(f32::NEG_INFINITY, v)),
                (ReduceOp::Max, e) => e,
                (ReduceOp::Sum, Elem::Bool(_)) => return None,
            };
            return Some(Const::uniform(r));
        }
        let shape = dims(in_ty)?;
        let out = dims(out_ty)?;
        let out_strides: Vec<usize> = row_major_strides(&out)
            .into_iter()
            .enumerate()
            .map(|(i, s)| if axes.contains(&i) { 0 } else { s })
            .collect();
        let in_offs = offsets(&shape, &row_major_strides(&shape));
        let out_offs = offsets(&shape, &out_strides);
        let n_out: usize = out.iter().product();
        let data = match (op, &x.data) {
            (ReduceOp::Sum, Data::F32(v)) => {
                let mut acc = vec![0.0f64; n_out];
                for (&i, &o) in in_offs.iter().zip(&out_offs) {
                    acc[o] += f64::from(v[i]);
                }
                Data::F32(acc.into_iter().map(|s| s as f32).collect())
            }
            (ReduceOp::Sum, Data::I32(v)) => {
                let mut acc = vec![0i32; n_out];
                for (&i, &o) in in_offs.iter().zip(&out_offs) {
                    acc[o] = acc[o].wrapping_add(v[i]);
                }
                Data::I32(acc)
            }
            (ReduceOp::Max, Data::F32(v)) => {
                let mut acc = vec![f32::NEG_INFINITY; n_out];
                for (&i, &o) in in_offs.iter().zip(&out_offs) {
                    acc[o] = nan_max(acc[o], v[i]);
                }
                Data::F32(acc)
            }
            (ReduceOp::Max, Data::I32(v)) => {
                let mut acc = vec![i32::MIN; n_out];
                for (&i, &o) in in_offs.iter().zip(&out_offs) {
                    acc[o] = acc[o].max(v[i]);
                }
                Data::I32(acc)
            }
            (ReduceOp::Max, Data::Bool(v)) => {
                let mut acc = vec![false; n_out];
                for (&i, &o) in in_offs.iter().zip(&out_offs) {
                    acc[o] |= v[i];
                }
                Data::Bool(acc)
            }
            (ReduceOp::Sum, Data::Bool(_)) => return None,
        };
        Some(Const {
            data,
            uniform: false,
        })
    }
}

/// The op storing `c` exactly as a node of type `ty`, if there is one.
fn materialise(c: &Const, ty: &TensorType) -> Option<Op> {
    if let Some(e) = c.splat() {
        return Some(Op::Scalar(match e {
            Elem::F32(x) => f64::from(x),
            Elem::I32(x) => f64::from(x),
            Elem::Bool(x) => f64::from(u8::from(x)),
        }));
    }
    if ty.const_numel() != Some(c.data.len()) {
        return None;
    }
    const EXACT_I32: i32 = 1 << 24;
    Some(Op::Literal(match &c.data {
        Data::F32(v) => v.clone(),
        Data::I32(v) => {
            if v.iter().any(|x| x.unsigned_abs() > EXACT_I32 as u32) {
                return None;
            }
            v.iter().map(|&x| x as f32).collect()
        }
        Data::Bool(v) => v.iter().map(|&x| f32::from(u8::from(x))).collect(),
    }))
}

impl Pass for ConstFold {
    fn name(&self) -> &'static str {
        "const-fold"
    }

    fn run(&self, g: &mut Graph) -> Result<bool, PassError> {
        let mut changed = false;
        for id in g.topo_order() {
            let node = g.node(id);
            if node.op.declares_type() && !matches!(node.op, Op::Reshape | Op::Cast) {
                continue; // a source: input, parameter, scalar, literal, iota
            }
            let inputs = g.inputs(id);
            let Some(args) = inputs
                .iter()
                .map(|&i| constant(g, i, self.max_elements))
                .collect::<Option<Vec<_>>>()
            else {
                continue;
            };
            let Some(value) = self.eval(g, id, &args) else {
                continue;
            };
            let Some(op) = materialise(&value, &node.ty) else {
                continue;
            };
            let (ty, scope) = (node.ty.clone(), node.scope.clone());
            let new = g
                .add(op, &[], Some(ty), &scope)
                .map_err(PassError::ir("const-fold"))?;
            g.replace_and_remove(id, new);
            changed = true;
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Builder;
    use crate::shape;

    fn folded(g: &Graph, out: &str) -> Op {
        g.node(g.output(out).unwrap()).op.clone()
    }

    #[test]
    fn folds_uniform_scalars_keeping_symbolic_types() {
        let mut g = Graph::new("t");
        let mut b = Builder::new(&mut g);
        let a = b.scalar(2.0).unwrap();
        let c = b.scalar(0.1).unwrap();
        let s = b.add2(a, c).unwrap();
        let e = b.unary(UnaryOp::Exp, s).unwrap();
        let r = b.reshape(e, shape![1usize, 1usize]).unwrap();
        let m = b.input("m", DType::F32, shape!["seq", 1usize]).unwrap();
        let big = b.add2(r, m).unwrap(); // not constant
        let i = b.scalar_i32(7).unwrap();
        let z = b.scalar_i32(0).unwrap();
        let bad = b.div(i, z).unwrap(); // run-time error: keep
        let sym = b
            .add(
                Op::Scalar(3.0),
                &[],
                Some(TensorType::f32(shape!["seq", 4usize])),
            )
            .unwrap();
        let neg = b.unary(UnaryOp::Neg, sym).unwrap();
        for (n, id) in [("r", r), ("big", big), ("bad", bad), ("neg", neg)] {
            g.set_output(n, id);
        }
        assert!(ConstFold::default().run(&mut g).unwrap());
        let want = (((2.0f32 + 0.1f64 as f32) as f64).exp() as f32) as f64;
        assert_eq!(folded(&g, "r"), Op::Scalar(want));
        assert_eq!(g.ty(g.output("r").unwrap()).shape, shape![1usize, 1usize]);
        assert!(matches!(folded(&g, "big"), Op::Binary(BinaryOp::Add)));
        assert!(matches!(folded(&g, "bad"), Op::Binary(BinaryOp::Div)));
        assert_eq!(folded(&g, "neg"), Op::Scalar(-3.0));
        assert_eq!(g.ty(g.output("neg").unwrap()).shape, shape!["seq", 4usize]);
        super::super::verify(&g).unwrap();
    }

    #[test]
    fn folds_dense_iota_compare_and_reductions() {
        let mut g = Graph::new("t");
        let mut b = Builder::new(&mut g);
        // MoE top-k's `j < e` table: [3, 1] vs [1, 3].
        let ie = b.iota(DType::I32, shape![3usize, 1usize], 0).unwrap();
        let ij = b.iota(DType::I32, shape![1usize, 3usize], 1).unwrap();
        let lower = b.binary(BinaryOp::Lt, ij, ie).unwrap();
        let f = b.cast(lower, DType::F32).unwrap();
        let rs = b.reduce(ReduceOp::Sum, f, &[1]).unwrap();
        let t = b.permute(f, &[1, 0]).unwrap();
        let sl = b.slice(t, 0, Dim::c(1), Dim::c(3)).unwrap();
        let lit = b.literal(vec![1.0, -2.0, 3.5], &[3]).unwrap();
        let mx = b.reduce(ReduceOp::Max, lit, &[0]).unwrap();
        for (n, id) in [("lower", lower), ("rs", rs), ("sl", sl), ("mx", mx)] {
            g.set_output(n, id);
        }
        assert!(ConstFold::default().run(&mut g).unwrap());
        // lower[e][j] = j < e
        assert_eq!(
            folded(&g, "lower"),
            Op::Literal(vec![0., 0., 0., 1., 0., 0., 1., 1., 0.])
        );
        assert_eq!(folded(&g, "rs"), Op::Literal(vec![0., 1., 2.]));
        // transpose then rows 1..3: [[0,0,1],[0,0,0]]
        assert_eq!(folded(&g, "sl"), Op::Literal(vec![0., 0., 1., 0., 0., 0.]));
        assert_eq!(folded(&g, "mx"), Op::Scalar(3.5));
        assert!(!ConstFold::default().run(&mut g).unwrap(), "idempotent");
        super::super::verify(&g).unwrap();
    }

    #[test]
    fn leaves_erf_matmul_and_symbolic_reductions() {
        let mut g = Graph::new("t");
        let mut b = Builder::new(&mut g);
        let s = b.scalar(0.5).unwrap();
        let e = b.unary(UnaryOp::Erf, s).unwrap();
        let sym = b
            .add(
                Op::Scalar(1.0),
                &[],
                Some(TensorType::f32(shape!["past", 2usize])),
            )
            .unwrap();
        let mx = b.reduce(ReduceOp::Max, sym, &[0]).unwrap();
        let l = b.literal(vec![1.0; 4], &[2, 2]).unwrap();
        let l2 = b.literal(vec![1.0, 2.0, 3.0, 4.0], &[2, 2]).unwrap();
        let mm = b.matmul(l, l2).unwrap();
        let big = b.literal(vec![0.0; 4096], &[64, 64]).unwrap();
        let bigger = b.concat(&[big, big], 0).unwrap(); // over max_elements
        let i = b
            .add(
                Op::Literal(vec![0.0, 1.0]),
                &[],
                Some(TensorType::new(DType::I32, shape![2usize])),
            )
            .unwrap();
        let huge = b.scalar_i32(1 << 30).unwrap();
        let k = b.mul(i, huge).unwrap(); // [0, 2^30]: not exact as a literal
        for (n, id) in [
            ("e", e),
            ("mx", mx),
            ("mm", mm),
            ("k", k),
            ("bigger", bigger),
        ] {
            g.set_output(n, id);
        }
        let _ = ConstFold::default().run(&mut g).unwrap();
        assert!(matches!(folded(&g, "e"), Op::Unary(UnaryOp::Erf)));
        assert!(matches!(folded(&g, "mx"), Op::Reduce { .. }));
        assert!(matches!(folded(&g, "mm"), Op::MatMul));
        assert!(matches!(folded(&g, "k"), Op::Binary(BinaryOp::Mul)));
        assert!(matches!(folded(&g, "bigger"), Op::Concat { .. }));
    }
}
