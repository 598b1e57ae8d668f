//! The primitive op set. Every knob of every transformer is composed from
//! these; fusion passes rediscover the composites (norms, softmax, attention).
//! Each op declares its output type from its input types ([`Op::infer`]).

use super::dim::Dim;
use super::types::{DType, Shape, TensorType};
use std::fmt;

/// How the runtime fills a parameter when no checkpoint provides it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Normal(0, std): projection and embedding matrices.
    Normal {
        /// Standard deviation of the normal distribution.
        std: f32,
    },
    /// All equal to a value: norm scales (1, or 0 with a `1 + w` offset), biases (0).
    Fill(f32),
}

/// A primitive operation: one node of a [`Graph`](super::Graph).
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// A runtime input (`tokens`, `past.0.k`, `attention_mask`). Its type is declared.
    Input {
        /// The input's name, as callers supply it.
        name: String,
    },
    /// A named weight with a canonical name (`layers.3.attn.q.weight`). Its type is declared.
    Parameter {
        /// Canonical parameter name.
        name: String,
        /// How to fill it when no checkpoint provides it.
        init: Init,
    },
    /// A scalar broadcast to the declared (usually rank-0) type.
    Scalar(f64),
    /// A small tensor literal of constant shape (ALiBi slopes, RoPE inverse frequencies).
    Literal(Vec<f32>),
    /// Each element is its index along `axis` of the declared shape.
    Iota {
        /// The axis whose index each element takes.
        axis: usize,
    },
    /// Elementwise one-operand function.
    Unary(UnaryOp),
    /// Elementwise with numpy broadcasting (right-aligned, size-1 dims stretch).
    Binary(BinaryOp),
    /// `cond ? a : b`, broadcasting all three.
    Select,
    /// Reduce over `axes`, keeping them as size-1 dims.
    Reduce {
        /// The reduction.
        op: ReduceOp,
        /// Axes reduced, each kept as a size-1 dim.
        axes: Vec<usize>,
    },
    /// `[.., m, k] x [.., k, n] -> [.., m, n]`, batch dims broadcast.
    MatMul,
    /// Same elements, new shape (declared).
    Reshape,
    /// Output axis `i` is input axis `perm[i]`.
    Permute {
        /// `perm[i]` is the input axis that becomes output axis `i`.
        perm: Vec<usize>,
    },
    /// `[start, end)` along `axis`.
    Slice {
        /// The sliced axis.
        axis: usize,
        /// First index kept.
        start: Dim,
        /// One past the last index kept.
        end: Dim,
    },
    /// Join along `axis`; other dims must agree.
    Concat {
        /// The axis joined along.
        axis: usize,
    },
    /// numpy `take`: rows of `data` along `axis` picked by integer `indices`;
    /// output shape `data[..axis] + indices + data[axis+1..]`.
    Gather {
        /// The axis of `data` indexed.
        axis: usize,
    },
    /// Convert to the declared dtype (bool -> 0/1, f32 -> i32 truncates).
    Cast,
}

/// An elementwise function of one operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    /// `-x`.
    Neg,
    /// `e^x`.
    Exp,
    /// Natural logarithm.
    Log,
    /// Square root.
    Sqrt,
    /// `1 / sqrt(x)`.
    Rsqrt,
    /// `1 / x`.
    Recip,
    /// Hyperbolic tangent.
    Tanh,
    /// Gauss error function.
    Erf,
    /// Sine (radians).
    Sin,
    /// Cosine (radians).
    Cos,
    /// Absolute value.
    Abs,
    /// Round toward negative infinity.
    Floor,
    /// Logical not (bool).
    Not,
}

/// An elementwise function of two broadcast operands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// `a + b`.
    Add,
    /// `a - b`.
    Sub,
    /// `a * b`.
    Mul,
    /// `a / b` (integer division by zero is a run-time error).
    Div,
    /// Elementwise maximum.
    Max,
    /// Elementwise minimum.
    Min,
    /// `a` raised to the power `b`.
    Pow,
    /// `a < b` (bool result).
    Lt,
    /// `a <= b` (bool result).
    Le,
    /// `a == b` (bool result).
    Eq,
    /// Logical and (bool).
    And,
    /// Logical or (bool).
    Or,
}

/// How [`Op::Reduce`] combines elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    /// Sum.
    Sum,
    /// Maximum.
    Max,
}

impl BinaryOp {
    /// Whether the op compares and yields bool (`Lt`, `Le`, `Eq`).
    pub fn is_comparison(self) -> bool {
        matches!(self, BinaryOp::Lt | BinaryOp::Le | BinaryOp::Eq)
    }
    /// Whether the op is a logical bool op (`And`, `Or`).
    pub fn is_logical(self) -> bool {
        matches!(self, BinaryOp::And | BinaryOp::Or)
    }
}

/// numpy broadcasting of two shapes.
pub fn broadcast(a: &Shape, b: &Shape) -> Result<Shape, String> {
    let n = a.len().max(b.len());
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let da = (i + a.len()).checked_sub(n).map(|j| &a[j]);
        let db = (i + b.len()).checked_sub(n).map(|j| &b[j]);
        out.push(match (da, db) {
            (Some(x), None) | (None, Some(x)) => x.clone(),
            (Some(x), Some(y)) if x == y => x.clone(),
            (Some(x), Some(y)) if x.is_one() => y.clone(),
            (Some(x), Some(y)) if y.is_one() => x.clone(),
            (Some(x), Some(y)) => {
                return Err(format!("cannot broadcast {x} against {y}"));
            }
            (None, None) => unreachable!("i < max(len)"),
        });
    }
    Ok(out)
}

impl Op {
    /// Ops whose output type is declared by the builder rather than inferred.
    pub fn declares_type(&self) -> bool {
        matches!(
            self,
            Op::Input { .. }
                | Op::Parameter { .. }
                | Op::Scalar(_)
                | Op::Literal(_)
                | Op::Iota { .. }
                | Op::Reshape
                | Op::Cast
        )
    }

    /// Output type from input types. `declared` is the builder's type for ops
    /// that declare one; it is checked against the inputs where possible.
    pub fn infer(
        &self,
        inputs: &[&TensorType],
        declared: Option<&TensorType>,
    ) -> Result<TensorType, String> {
        let arity = match self {
            Op::Input { .. }
            | Op::Parameter { .. }
            | Op::Scalar(_)
            | Op::Literal(_)
            | Op::Iota { .. } => 0,
            Op::Unary(_)
            | Op::Reduce { .. }
            | Op::Reshape
            | Op::Permute { .. }
            | Op::Slice { .. }
            | Op::Cast => 1,
            Op::Binary(_) | Op::MatMul | Op::Gather { .. } => 2,
            Op::Select => 3,
            Op::Concat { .. } => inputs.len().max(1),
        };
        if inputs.len() != arity {
            return Err(format!(
                "{} takes {arity} inputs, got {}",
                self.name(),
                inputs.len()
            ));
        }
        let need_declared = || {
            declared
                .cloned()
                .ok_or_else(|| format!("{} needs a declared output type", self.name()))
        };
        match self {
            Op::Input { .. } | Op::Parameter { .. } | Op::Scalar(_) => need_declared(),
            Op::Literal(v) => {
                let t = need_declared()?;
                match t.const_numel() {
                    Some(n) if n == v.len() => Ok(t),
                    _ => Err(format!("literal of {} values declared as {t}", v.len())),
                }
            }
            Op::Iota { axis } => {
                let t = need_declared()?;
                if *axis >= t.rank() {
                    return Err(format!("iota axis {axis} out of range for {t}"));
                }
                Ok(t)
            }
            Op::Unary(u) => {
                let x = inputs[0];
                match (u, x.dtype) {
                    (UnaryOp::Not, DType::Bool) => Ok(x.clone()),
                    (UnaryOp::Not, _) => Err(format!("not expects bool, got {}", x.dtype)),
                    (UnaryOp::Neg | UnaryOp::Abs, DType::I32 | DType::F32) => Ok(x.clone()),
                    (_, DType::F32) => Ok(x.clone()),
                    (u, d) => Err(format!("{u:?} expects f32, got {d}")),
                }
            }
            Op::Binary(b) => {
                let (x, y) = (inputs[0], inputs[1]);
                if x.dtype != y.dtype {
                    return Err(format!(
                        "{b:?} operands differ in dtype: {} vs {}",
                        x.dtype, y.dtype
                    ));
                }
                if b.is_logical() != (x.dtype == DType::Bool) {
                    return Err(format!("{b:?} is not defined on {}", x.dtype));
                }
                let shape = broadcast(&x.shape, &y.shape)?;
                let dtype = if b.is_comparison() {
                    DType::Bool
                } else {
                    x.dtype
                };
                Ok(TensorType::new(dtype, shape))
            }
            Op::Select => {
                let (c, a, b) = (inputs[0], inputs[1], inputs[2]);
                if c.dtype != DType::Bool {
                    return Err(format!("select condition must be bool, got {}", c.dtype));
                }
                if a.dtype != b.dtype {
                    return Err(format!(
                        "select branches differ in dtype: {} vs {}",
                        a.dtype, b.dtype
                    ));
                }
                let s = broadcast(&broadcast(&c.shape, &a.shape)?, &b.shape)?;
                Ok(TensorType::new(a.dtype, s))
            }
            Op::Reduce { axes, .. } => {
                let x = inputs[0];
                let mut shape = x.shape.clone();
                for &a in axes {
                    let d = shape
                        .get_mut(a)
                        .ok_or_else(|| format!("reduce axis {a} out of range for {x}"))?;
                    *d = Dim::c(1);
                }
                Ok(TensorType::new(x.dtype, shape))
            }
            Op::MatMul => {
                let (a, b) = (inputs[0], inputs[1]);
                if a.rank() < 2 || b.rank() < 2 {
                    return Err(format!("matmul needs rank >= 2 operands, got {a} and {b}"));
                }
                if a.dtype != DType::F32 || b.dtype != DType::F32 {
                    return Err("matmul operands must be f32".into());
                }
                let (ra, rb) = (a.rank(), b.rank());
                let (m, ka) = (&a.shape[ra - 2], &a.shape[ra - 1]);
                let (kb, n) = (&b.shape[rb - 2], &b.shape[rb - 1]);
                if ka != kb {
                    return Err(format!(
                        "matmul inner dims differ: {a} x {b} ({ka} vs {kb})"
                    ));
                }
                let mut shape =
                    broadcast(&a.shape[..ra - 2].to_vec(), &b.shape[..rb - 2].to_vec())?;
                shape.push(m.clone());
                shape.push(n.clone());
                Ok(TensorType::f32(shape))
            }
            Op::Reshape => {
                let t = need_declared()?;
                let x = inputs[0];
                if t.dtype != x.dtype || !same_numel(&x.shape, &t.shape) {
                    return Err(format!("cannot reshape {x} to {t}"));
                }
                Ok(t)
            }
            Op::Permute { perm } => {
                let x = inputs[0];
                let mut seen = vec![false; x.rank()];
                for &p in perm {
                    if p >= x.rank() || std::mem::replace(&mut seen[p], true) {
                        return Err(format!("bad permutation {perm:?} for {x}"));
                    }
                }
                if perm.len() != x.rank() {
                    return Err(format!("bad permutation {perm:?} for {x}"));
                }
                Ok(TensorType::new(
                    x.dtype,
                    perm.iter().map(|&p| x.shape[p].clone()).collect(),
                ))
            }
            Op::Slice { axis, start, end } => {
                let x = inputs[0];
                let mut shape = x.shape.clone();
                let d = shape
                    .get_mut(*axis)
                    .ok_or_else(|| format!("slice axis {axis} out of range for {x}"))?;
                let len = end.clone() - start.clone();
                if let (Some(l), Some(full)) = (len.as_const(), d.as_const())
                    && (l > full || end.as_const().is_some_and(|e| e > full))
                {
                    return Err(format!("slice [{start}, {end}) out of range for {x}"));
                }
                *d = len;
                Ok(TensorType::new(x.dtype, shape))
            }
            Op::Concat { axis } => {
                let first = inputs[0];
                let mut shape = first.shape.clone();
                if *axis >= shape.len() {
                    return Err(format!("concat axis {axis} out of range for {first}"));
                }
                for t in &inputs[1..] {
                    let ok = t.dtype == first.dtype
                        && t.rank() == first.rank()
                        && (0..t.rank()).all(|i| i == *axis || t.shape[i] == first.shape[i]);
                    if !ok {
                        return Err(format!("cannot concat {first} with {t} along axis {axis}"));
                    }
                    shape[*axis] = shape[*axis].clone() + t.shape[*axis].clone();
                }
                Ok(TensorType::new(first.dtype, shape))
            }
            Op::Gather { axis } => {
                let (data, idx) = (inputs[0], inputs[1]);
                if idx.dtype != DType::I32 {
                    return Err(format!("gather indices must be i32, got {}", idx.dtype));
                }
                if *axis >= data.rank() {
                    return Err(format!("gather axis {axis} out of range for {data}"));
                }
                let mut shape = data.shape[..*axis].to_vec();
                shape.extend(idx.shape.iter().cloned());
                shape.extend(data.shape[axis + 1..].iter().cloned());
                Ok(TensorType::new(data.dtype, shape))
            }
            Op::Cast => {
                let t = need_declared()?;
                if t.shape != inputs[0].shape {
                    return Err(format!("cast changes shape: {} to {t}", inputs[0]));
                }
                Ok(t)
            }
        }
    }

    /// Short mnemonic used by the text form.
    pub fn name(&self) -> String {
        match self {
            Op::Input { .. } => "input".into(),
            Op::Parameter { .. } => "param".into(),
            Op::Scalar(_) => "scalar".into(),
            Op::Literal(_) => "literal".into(),
            Op::Iota { .. } => "iota".into(),
            Op::Unary(u) => format!("{u:?}").to_lowercase(),
            Op::Binary(b) => format!("{b:?}").to_lowercase(),
            Op::Select => "select".into(),
            Op::Reduce { op, .. } => format!("reduce_{op:?}").to_lowercase(),
            Op::MatMul => "matmul".into(),
            Op::Reshape => "reshape".into(),
            Op::Permute { .. } => "permute".into(),
            Op::Slice { .. } => "slice".into(),
            Op::Concat { .. } => "concat".into(),
            Op::Gather { .. } => "gather".into(),
            Op::Cast => "cast".into(),
        }
    }

    /// Attributes for the text form, e.g. `axes=[2]`, `"tokens"`.
    pub fn attrs(&self) -> String {
        match self {
            Op::Input { name } => format!("\"{name}\""),
            Op::Parameter { name, .. } => format!("\"{name}\""),
            Op::Scalar(v) => fmt_num(*v),
            Op::Literal(v) => {
                let shown: Vec<String> = v.iter().take(4).map(|x| fmt_num(*x as f64)).collect();
                let more = if v.len() > 4 {
                    format!(", …{} more", v.len() - 4)
                } else {
                    String::new()
                };
                format!("[{}{more}]", shown.join(", "))
            }
            Op::Iota { axis } | Op::Concat { axis } | Op::Gather { axis } => format!("axis={axis}"),
            Op::Reduce { axes, .. } => format!("axes={axes:?}"),
            Op::Permute { perm } => format!("perm={perm:?}"),
            Op::Slice { axis, start, end } => format!("axis={axis} [{start}, {end})"),
            _ => String::new(),
        }
    }
}

/// Equal element counts, compared symbolically: the non-constant dims must
/// match as a multiset and the constant dims must have equal products.
fn same_numel(a: &Shape, b: &Shape) -> bool {
    let split = |s: &Shape| {
        let mut syms: Vec<Dim> = s
            .iter()
            .filter(|d| d.as_const().is_none())
            .cloned()
            .collect();
        syms.sort();
        let c: usize = s.iter().filter_map(Dim::as_const).product();
        (syms, c)
    };
    split(a) == split(b)
}

/// Shortest text that round-trips an f64 (for stable snapshots).
pub fn fmt_num(v: f64) -> String {
    if v == f64::MIN {
        "f64::MIN".into()
    } else if v == f32::MIN as f64 {
        "f32::MIN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "inf".into() } else { "-inf".into() }
    } else {
        format!("{v:?}")
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = self.attrs();
        if a.is_empty() {
            f.write_str(&self.name())
        } else {
            write!(f, "{} {a}", self.name())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape;

    fn f(s: Shape) -> TensorType {
        TensorType::f32(s)
    }

    #[test]
    fn broadcasting() {
        let a = shape!["batch", "seq", 64usize];
        let b = shape![64usize];
        assert_eq!(broadcast(&a, &b).unwrap(), a);
        assert_eq!(
            broadcast(&shape![1usize, "seq"], &shape![3usize, 1usize]).unwrap(),
            shape![3usize, "seq"]
        );
        assert!(broadcast(&shape![3usize], &shape![4usize]).is_err());
    }

    #[test]
    fn matmul_batch_broadcast_and_errors() {
        let x = f(shape!["batch", "seq", 16usize]);
        let w = f(shape![16usize, 32usize]);
        assert_eq!(
            Op::MatMul.infer(&[&x, &w], None).unwrap(),
            f(shape!["batch", "seq", 32usize])
        );
        let bad = f(shape![8usize, 32usize]);
        let e = Op::MatMul.infer(&[&x, &bad], None).unwrap_err();
        assert!(e.contains("inner dims differ"), "{e}");
    }

    #[test]
    fn reshape_checks_numel_symbolically() {
        let x = f(shape!["batch", "seq", 64usize]);
        let ok = f(shape!["batch", "seq", 4usize, 16usize]);
        assert!(Op::Reshape.infer(&[&x], Some(&ok)).is_ok());
        let bad = f(shape!["batch", "seq", 4usize, 8usize]);
        assert!(Op::Reshape.infer(&[&x], Some(&bad)).is_err());
    }

    #[test]
    fn concat_adds_symbolic_lengths() {
        let past = f(shape!["batch", 2usize, "past", 8usize]);
        let new = f(shape!["batch", 2usize, "seq", 8usize]);
        let t = Op::Concat { axis: 2 }.infer(&[&past, &new], None).unwrap();
        assert_eq!(t.shape[2].to_string(), "past+seq");
    }

    #[test]
    fn gather_and_comparisons() {
        let table = f(shape![100usize, 16usize]);
        let ids = TensorType::new(DType::I32, shape!["batch", "seq"]);
        assert_eq!(
            Op::Gather { axis: 0 }.infer(&[&table, &ids], None).unwrap(),
            f(shape!["batch", "seq", 16usize])
        );
        let lt = Op::Binary(BinaryOp::Lt).infer(&[&ids, &ids], None).unwrap();
        assert_eq!(lt.dtype, DType::Bool);
        assert!(
            Op::Binary(BinaryOp::Add)
                .infer(&[&ids, &table], None)
                .is_err()
        );
    }
}
