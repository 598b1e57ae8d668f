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

mod append;
mod attention;
mod fuse;
pub mod kinds;
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

/// What a buffer holds and who provides it.
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

/// A tensor-sized allocation of the program.
#[derive(Debug, Clone, PartialEq)]
pub struct Buffer {
    /// Unique name (the graph input / parameter / output name, or a generated one).
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// The logical shape.
    pub shape: Shape,
    /// Where its contents come from.
    pub kind: BufferKind,
    /// A cache appended to in place: its storage holds `capacity` rows along
    /// `axis` (the [`CAPACITY`] symbol), of which the shape's extent are in
    /// use. Strides follow the storage, so a later run can append rows
    /// without moving the earlier ones. `None`: row-major over `shape`.
    pub capacity: Option<usize>,
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

    /// The shape of the storage: `shape` with the [`CAPACITY`] extent
    /// along the capacity axis, if any.
    pub fn storage_shape(&self) -> Shape {
        let mut s = self.shape.clone();
        if let Some(a) = self.capacity {
            s[a] = Dim::sym(CAPACITY);
        }
        s
    }

    /// Elements of the storage (the run binds [`CAPACITY`]).
    pub fn storage_numel(&self) -> Size {
        self.storage_shape()
            .iter()
            .fold(Size::one(), |acc, d| &acc * &Size::from_dim(d))
    }

    /// Row-major strides of the storage.
    pub fn strides(&self) -> Vec<Size> {
        row_major(&self.storage_shape())
    }
}

/// The length symbol of an appendable cache's storage rows. A runtime that
/// does not keep caches between runs binds it to the rows in use, so the
/// storage is row-major over the shape.
pub const CAPACITY: &str = "capacity";

/// A graph output that is a graph input with rows appended along `axis`
/// (`present = concat(past, new)`): a runtime may give `present` the storage
/// of the previous run's `present`, whose first rows already hold `past`,
/// and skip kernel `copy`, which copies `past` there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Append {
    /// The input appended to (only `copy` reads it).
    pub past: BufId,
    /// The output it becomes (has a capacity along `axis`).
    pub present: BufId,
    /// The axis rows are appended along.
    pub axis: usize,
    /// The kernel copying `past` into the first rows of `present`.
    pub copy: usize,
}

/// Bytes per element of `d` (bool is one byte).
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
    /// The viewed buffer.
    pub buf: BufId,
    /// Element offset of the origin.
    pub offset: Size,
    /// Element stride per axis of the iteration space (0 broadcasts).
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
    /// Elementwise unary op of the graph.
    Unary(UnaryOp, ValId),
    /// Elementwise binary op of the graph.
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
    /// Instructions with their result dtypes; an instruction's index is its [`ValId`].
    pub insts: Vec<(Inst, DType)>,
    /// The value the body produces.
    pub result: ValId,
}

/// One sequential reduction over the last axis of a RowReduce's domain.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    /// How the stage combines the row's elements.
    pub op: ReduceOp,
    /// Per element of the row; may use `Reduced(j)` for earlier stages `j`.
    pub body: Body,
}

/// A per-element function fused after a Gemm or into attention scores.
#[derive(Debug, Clone, PartialEq)]
pub struct Epilogue {
    /// Extra inputs, read with [`Inst::Load`] at the output element.
    pub loads: Vec<View>,
    /// The function; `Reduced(0)` is the dot product.
    pub body: Body,
}

/// One loop nest of a [`KernelProgram`].
#[derive(Debug, Clone, PartialEq)]
pub enum Kernel {
    /// One output element per point of `domain`.
    Elementwise(kinds::Elementwise),
    /// Rows are `domain[..r-1]`, the reduced axis is `domain[r-1]`. Stages run
    /// in order over each row; then the epilogue runs per element of the row,
    /// or once per row when `per_row` (the `out` view's last stride is then 0).
    RowReduce(kinds::RowReduce),
    /// `out[b.., i, j] = epilogue(Σₚ a[b.., i, p]·b[b.., p, j])` with views
    /// over `(batch.., m, k)`, `(batch.., k, n)` and `(batch.., m, n)`;
    /// batch broadcast and transposes are strides. f64 accumulation in the
    /// reference; the epilogue sees the rounded product as `Reduced(0)`.
    Gemm(kinds::Gemm),
    /// numpy `take` of a contiguous table along `axis` by the i32 `indices`
    /// (a view over the indices' shape), into a contiguous output.
    Gather(kinds::Gather),
    /// A materialised view (a transpose before a merging reshape, a concat piece).
    Copy(kinds::Copy),
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
    Attention(kinds::Attention),
}

impl Kernel {
    /// Multiply-add FLOPs (2 per product term) of a Gemm or attention at the
    /// lengths `env` binds, every row counted; 0 for other kinds or an
    /// unbound length.
    pub fn matmul_flops(&self, env: &dyn Fn(&str) -> Option<usize>) -> f64 {
        let len = |ds: &mut dyn Iterator<Item = &Dim>| -> Option<f64> {
            ds.map(|d| d.eval(env).map(|v| v as f64))
                .product::<Option<f64>>()
        };
        let f = match self {
            Kernel::Gemm(kinds::Gemm { batch, m, n, k, .. }) => {
                len(&mut batch.iter().chain([m, n, k]))
            }
            Kernel::Attention(kinds::Attention {
                batch,
                m,
                keys,
                d,
                dv,
                ..
            }) => len(&mut batch.iter().chain([m, keys]))
                .zip(len(&mut [d].into_iter()).zip(len(&mut [dv].into_iter())))
                .map(|(x, (d, dv))| x * (d + dv)),
            _ => None,
        };
        2.0 * f.unwrap_or(0.0)
    }

    /// Short name of the kernel's kind (`"elementwise"`, `"gemm"`, ...), as used in profiles.
    pub fn kind(&self) -> &'static str {
        match self {
            Kernel::Elementwise(kinds::Elementwise { .. }) => "elementwise",
            Kernel::RowReduce(kinds::RowReduce { .. }) => "row_reduce",
            Kernel::Gemm(kinds::Gemm { .. }) => "gemm",
            Kernel::Gather(kinds::Gather { .. }) => "gather",
            Kernel::Copy(kinds::Copy { .. }) => "copy",
            Kernel::Attention(kinds::Attention { .. }) => "attention",
        }
    }

    /// Every view the kernel reads or writes, for rewrites that renumber or
    /// retarget buffers (Gather's whole-buffer operands are not views).
    pub fn views_mut(&mut self) -> Vec<&mut View> {
        match self {
            Kernel::Elementwise(kinds::Elementwise { out, loads, .. })
            | Kernel::RowReduce(kinds::RowReduce { out, loads, .. }) => {
                std::iter::once(out).chain(loads.iter_mut()).collect()
            }
            Kernel::Gemm(kinds::Gemm {
                out,
                a,
                b,
                epilogue,
                rows,
                ..
            }) => {
                let mut v = vec![out, a, b];
                if let Some(e) = epilogue {
                    v.extend(e.loads.iter_mut());
                }
                v.extend(rows.iter_mut());
                v
            }
            Kernel::Gather(kinds::Gather { indices, .. }) => vec![indices],
            Kernel::Copy(kinds::Copy { out, src, .. }) => vec![out, src],
            Kernel::Attention(kinds::Attention {
                out,
                q,
                kt,
                v,
                score,
                ..
            }) => {
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
        if let Kernel::Gather(kinds::Gather { out, table, .. }) = self {
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
            Kernel::Elementwise(kinds::Elementwise { out, .. })
            | Kernel::RowReduce(kinds::RowReduce { out, .. })
            | Kernel::Gemm(kinds::Gemm { out, .. })
            | Kernel::Copy(kinds::Copy { out, .. })
            | Kernel::Attention(kinds::Attention { out, .. }) => out.buf,
            Kernel::Gather(kinds::Gather { out, .. }) => *out,
        }
    }

    /// Every buffer the kernel reads (with repetitions).
    pub fn reads(&self) -> Vec<BufId> {
        match self {
            Kernel::Elementwise(kinds::Elementwise { loads, .. })
            | Kernel::RowReduce(kinds::RowReduce { loads, .. }) => {
                loads.iter().map(|v| v.buf).collect()
            }
            Kernel::Gemm(kinds::Gemm {
                a,
                b,
                epilogue,
                rows,
                ..
            }) => {
                let mut v = vec![a.buf, b.buf];
                if let Some(e) = epilogue {
                    v.extend(e.loads.iter().map(|l| l.buf));
                }
                v.extend(rows.iter().map(|r| r.buf));
                v
            }
            Kernel::Gather(kinds::Gather { table, indices, .. }) => vec![*table, indices.buf],
            Kernel::Copy(kinds::Copy { src, .. }) => vec![src.buf],
            Kernel::Attention(kinds::Attention {
                q, kt, v, score, ..
            }) => {
                let mut r = vec![q.buf, kt.buf, v.buf];
                if let Some(e) = score {
                    r.extend(e.loads.iter().map(|l| l.buf));
                }
                r
            }
        }
    }
}

/// A graph fused into kernels: buffers, the kernels that run in order, and their memory plan.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelProgram {
    /// The source graph's name.
    pub name: String,
    /// Every buffer; indexed by [`BufId`].
    pub buffers: Vec<Buffer>,
    /// Run in order.
    pub kernels: Vec<Kernel>,
    /// Every declared input of the graph, in declaration order.
    pub inputs: Vec<(String, BufId)>,
    /// The graph's outputs, in its order.
    pub outputs: Vec<(String, BufId)>,
    /// Arena slots of the `Temp` buffers.
    pub plan: BufferPlan,
    /// Nodes of the graph the program was fused from (for reports).
    pub graph_nodes: usize,
    /// Parameters that join others row-wise (merged projections): name ->
    /// the parts and their rows, in order. A runtime builds each once from
    /// the parts, or on the fly when the weights lack it.
    pub joined: BTreeMap<String, Vec<(String, usize)>>,
    /// Caches a runtime may append to in place (found by the `append-cache`
    /// rewrite, empty when it is disabled).
    pub appends: Vec<Append>,
}

impl KernelProgram {
    /// The name a runtime knows buffer `id` by: an input's or output's
    /// declared name, else the buffer's own.
    pub fn io_name(&self, id: BufId) -> &str {
        match &self.buffers[id].kind {
            BufferKind::Input(n) => n,
            _ => self
                .outputs
                .iter()
                .find(|(_, o)| *o == id)
                .map_or(&self.buffers[id].name, |(n, _)| n),
        }
    }

    /// `(past input, present output)` names of each of [`KernelProgram::appends`].
    pub fn append_names(&self) -> Vec<(String, String)> {
        self.appends
            .iter()
            .map(|a| (self.io_name(a.past).into(), self.io_name(a.present).into()))
            .collect()
    }

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
