//! The kernel IR: the backend-neutral program that the code generators
//! (Cranelift on CPU, WGSL on GPU) consume, produced from an optimised
//! [`Graph`](crate::ir::Graph) by [`fuse`].
//!
//! A [`KernelProgram`] owns [`Buffer`]s (inputs, parameters, outputs,
//! temporaries, constants) with symbolic shapes and runs its [`Kernel`]s in
//! order. Kernels read and write through [`View`]s: `offset + Σ iₖ·strideₖ`
//! over the kernel's iteration space, so broadcast (stride 0), permute and
//! slice never become kernels. Scalar work is a [`Body`]: an SSA list of
//! [`Inst`]s, each over earlier values, that maps one to one onto a
//! Cranelift SSA value or a WGSL `let`. Lengths (`batch`, `seq`, `past`,
//! `src`) stay symbolic; strides and offsets are [`Size`] polynomials in them.
//!
//! Fusion builds the generic kinds; kernel rewrites ([`rewrite`]) then find
//! composites in them, such as attention (score Gemm, softmax RowReduce, PV
//! Gemm) becoming one streaming [`Kernel::Attention`].

mod attention;
mod fuse;
mod moe_dispatch;
mod plan;
pub mod rewrite;
mod size;
mod text;
mod write_through;

pub use fuse::{FuseError, FuseOptions, fuse, fuse_with};
pub use plan::BufferPlan;
pub use size::Size;

use crate::ir::{BinaryOp, DType, Dim, ReduceOp, Shape, UnaryOp};
use std::collections::BTreeMap;

/// Index of a buffer in [`KernelProgram::buffers`].
pub type BufId = usize;
/// Index of a value in a [`Body`].
pub type ValId = usize;

#[derive(Debug, Clone, PartialEq)]
pub enum BufferKind {
    /// Supplied by the caller under this name.
    Input(String),
    /// A weight under its canonical name.
    Param(String),
    /// A result returned to the caller (named in [`KernelProgram::outputs`]).
    Output,
    /// An intermediate, placed in an arena slot by the [`BufferPlan`].
    Temp,
    /// A literal (converted to the buffer's dtype like the graph's `Literal`).
    Const(Vec<f32>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Buffer {
    pub name: String,
    pub dtype: DType,
    /// Row-major, contiguous.
    pub shape: Shape,
    pub kind: BufferKind,
}

impl Buffer {
    /// Element count as a polynomial in the length symbols.
    pub fn numel(&self) -> Size {
        self.shape
            .iter()
            .fold(Size::one(), |acc, d| &acc * &Size::from_dim(d))
    }

    /// Bytes as a polynomial in the length symbols.
    pub fn bytes(&self) -> Size {
        self.numel().scale(dtype_bytes(self.dtype))
    }

    /// Row-major strides of the buffer's shape.
    pub fn strides(&self) -> Vec<Size> {
        row_major(&self.shape)
    }
}

pub fn dtype_bytes(d: DType) -> i64 {
    match d {
        DType::F32 | DType::I32 => 4,
        DType::Bool => 1,
    }
}

/// Row-major strides of a symbolic shape.
pub fn row_major(shape: &[Dim]) -> Vec<Size> {
    let mut s = vec![Size::one(); shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = &s[i + 1] * &Size::from_dim(&shape[i + 1]);
    }
    s
}

/// A strided window on a buffer over a kernel's iteration space: element
/// `(i₀, …, iᵣ₋₁)` is `buf[offset + Σ iₖ·strides[k]]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct View {
    pub buf: BufId,
    pub offset: Size,
    pub strides: Vec<Size>,
}

/// One SSA instruction; operands are earlier values of the same body.
#[derive(Debug, Clone, PartialEq)]
pub enum Inst {
    /// The element of `loads[i]` at the current point.
    Load(usize),
    /// A constant (converted to the value's dtype like the graph's `Scalar`).
    Const(f64),
    /// The current index along an axis of the iteration space (i32).
    Index(usize),
    /// A symbolic size evaluated from the run's lengths (i32).
    Size(Size),
    Unary(UnaryOp, ValId),
    Binary(BinaryOp, ValId, ValId),
    /// `cond ? a : b`.
    Select(ValId, ValId, ValId),
    /// To the value's dtype, with the graph's `Cast` semantics.
    Cast(ValId),
    /// The result of reduction stage `i` for the current row (RowReduce), or,
    /// in a Gemm epilogue, `Reduced(0)` is the product's element.
    Reduced(usize),
}

/// An SSA list; `result` is the value the body produces.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Body {
    pub insts: Vec<(Inst, DType)>,
    pub result: ValId,
}

/// One sequential reduction over the last axis of a RowReduce's domain.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    pub op: ReduceOp,
    /// Per element of the row; may use `Reduced(j)` for earlier stages `j`.
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Epilogue {
    pub loads: Vec<View>,
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kernel {
    /// One output element per point of `domain`.
    Elementwise {
        out: View,
        domain: Shape,
        loads: Vec<View>,
        body: Body,
    },
    /// Rows are `domain[..r-1]`, the reduced axis is `domain[r-1]`. Stages run
    /// in order over each row; then the epilogue runs per element of the row,
    /// or once per row when `per_row` (the `out` view's last stride is then 0).
    RowReduce {
        out: View,
        domain: Shape,
        loads: Vec<View>,
        stages: Vec<Stage>,
        epilogue: Body,
        per_row: bool,
    },
    /// `out[b.., i, j] = epilogue(Σₚ a[b.., i, p]·b[b.., p, j])` with views
    /// over `(batch.., m, k)`, `(batch.., k, n)` and `(batch.., m, n)`;
    /// batch broadcast and transposes are strides. f64 accumulation in the
    /// reference; the epilogue sees the rounded product as `Reduced(0)`.
    Gemm {
        out: View,
        a: View,
        b: View,
        batch: Shape,
        m: Dim,
        n: Dim,
        k: Dim,
        epilogue: Option<Epilogue>,
        /// Row dispatch (mixture of experts): a view over `(batch.., m)` of
        /// an f32 buffer; a row where it reads 0 is not computed and its
        /// output row is all 0.
        rows: Option<View>,
    },
    /// numpy `take` of a contiguous table along `axis` by the i32 `indices`
    /// (a view over the indices' shape), into a contiguous output.
    Gather {
        out: BufId,
        table: BufId,
        indices: View,
        indices_shape: Shape,
        axis: usize,
    },
    /// A materialised view (a transpose before a merging reshape, a concat piece).
    Copy { out: View, domain: Shape, src: View },
    /// Scaled-dot-product attention with a streaming softmax. For each point
    /// `(b.., i)` of `batch × m` (the queries):
    ///
    /// `s[j] = score(Σₚ q[b.., i, p]·kt[b.., p, j])` for `j < keys`, then
    /// `out[b.., i, c] = Σⱼ softmax(s)[j]·v[b.., j, c]` for `c < dv`,
    ///
    /// with views over `(batch.., m, d)`, `(batch.., d, keys)`,
    /// `(batch.., keys, dv)` and `(batch.., m, dv)` (Gemm conventions: `kt` is
    /// the keys read transposed). The score body runs over
    /// `(batch.., m, keys)` with `Reduced(0)` the rounded dot product, so
    /// scaling, softcap, bias and masks are inside the kernel; no
    /// `m × keys` buffer exists. The reference rounds like the unfused
    /// program: each score, then each probability, to f32.
    Attention {
        out: View,
        q: View,
        kt: View,
        v: View,
        batch: Shape,
        m: Dim,
        keys: Dim,
        d: Dim,
        dv: Dim,
        score: Option<Epilogue>,
    },
}

impl Kernel {
    pub fn kind(&self) -> &'static str {
        match self {
            Kernel::Elementwise { .. } => "elementwise",
            Kernel::RowReduce { .. } => "row_reduce",
            Kernel::Gemm { .. } => "gemm",
            Kernel::Gather { .. } => "gather",
            Kernel::Copy { .. } => "copy",
            Kernel::Attention { .. } => "attention",
        }
    }

    /// Every view the kernel reads or writes, for rewrites that renumber or
    /// retarget buffers (Gather's whole-buffer operands are not views).
    pub fn views_mut(&mut self) -> Vec<&mut View> {
        match self {
            Kernel::Elementwise { out, loads, .. } | Kernel::RowReduce { out, loads, .. } => {
                std::iter::once(out).chain(loads.iter_mut()).collect()
            }
            Kernel::Gemm {
                out,
                a,
                b,
                epilogue,
                rows,
                ..
            } => {
                let mut v = vec![out, a, b];
                if let Some(e) = epilogue {
                    v.extend(e.loads.iter_mut());
                }
                v.extend(rows.iter_mut());
                v
            }
            Kernel::Gather { indices, .. } => vec![indices],
            Kernel::Copy { out, src, .. } => vec![out, src],
            Kernel::Attention {
                out,
                q,
                kt,
                v,
                score,
                ..
            } => {
                let mut vs = vec![out, q, kt, v];
                if let Some(e) = score {
                    vs.extend(e.loads.iter_mut());
                }
                vs
            }
        }
    }

    /// Renumber every buffer the kernel names.
    pub fn map_bufs(&mut self, f: &dyn Fn(BufId) -> BufId) {
        if let Kernel::Gather { out, table, .. } = self {
            *out = f(*out);
            *table = f(*table);
        }
        for v in self.views_mut() {
            v.buf = f(v.buf);
        }
    }

    /// The buffer the kernel writes.
    pub fn output(&self) -> BufId {
        match self {
            Kernel::Elementwise { out, .. }
            | Kernel::RowReduce { out, .. }
            | Kernel::Gemm { out, .. }
            | Kernel::Copy { out, .. }
            | Kernel::Attention { out, .. } => out.buf,
            Kernel::Gather { out, .. } => *out,
        }
    }

    /// Every buffer the kernel reads (with repetitions).
    pub fn reads(&self) -> Vec<BufId> {
        match self {
            Kernel::Elementwise { loads, .. } | Kernel::RowReduce { loads, .. } => {
                loads.iter().map(|v| v.buf).collect()
            }
            Kernel::Gemm {
                a,
                b,
                epilogue,
                rows,
                ..
            } => {
                let mut v = vec![a.buf, b.buf];
                if let Some(e) = epilogue {
                    v.extend(e.loads.iter().map(|l| l.buf));
                }
                v.extend(rows.iter().map(|r| r.buf));
                v
            }
            Kernel::Gather { table, indices, .. } => vec![*table, indices.buf],
            Kernel::Copy { src, .. } => vec![src.buf],
            Kernel::Attention {
                q, kt, v, score, ..
            } => {
                let mut r = vec![q.buf, kt.buf, v.buf];
                if let Some(e) = score {
                    r.extend(e.loads.iter().map(|l| l.buf));
                }
                r
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct KernelProgram {
    pub name: String,
    pub buffers: Vec<Buffer>,
    /// Run in order.
    pub kernels: Vec<Kernel>,
    /// Every declared input of the graph, in declaration order.
    pub inputs: Vec<(String, BufId)>,
    /// The graph's outputs, in its order.
    pub outputs: Vec<(String, BufId)>,
    pub plan: BufferPlan,
    /// Nodes of the graph the program was fused from (for reports).
    pub graph_nodes: usize,
    /// Parameters that join others row-wise (merged projections): name ->
    /// the parts and their rows, in order. A runtime builds each once from
    /// the parts, or on the fly when the weights lack it.
    pub joined: BTreeMap<String, Vec<(String, usize)>>,
}

impl KernelProgram {
    /// Planned activation memory at the given lengths: the temporaries' arena
    /// (every slot of the [`BufferPlan`]) plus the output buffers.
    pub fn peak_bytes(&self, lengths: &BTreeMap<String, usize>) -> usize {
        let env = |s: &str| lengths.get(s).copied();
        let outputs: i64 = self
            .buffers
            .iter()
            .filter(|b| b.kind == BufferKind::Output)
            .map(|b| b.bytes().eval(&env).unwrap_or(0))
            .sum();
        (self.plan.arena_bytes(lengths) as i64 + outputs) as usize
    }

    /// Activation memory without reuse: every temporary and output held at once.
    pub fn unplanned_bytes(&self, lengths: &BTreeMap<String, usize>) -> usize {
        let env = |s: &str| lengths.get(s).copied();
        self.buffers
            .iter()
            .filter(|b| matches!(b.kind, BufferKind::Output | BufferKind::Temp))
            .map(|b| b.bytes().eval(&env).unwrap_or(0) as usize)
            .sum()
    }

    /// The stable text form (what `kiln compile --emit kernels` prints).
    pub fn to_text(&self) -> String {
        text::to_text(self)
    }
}
