//! The kernel kinds of the kernel IR, one struct each: what a [`super::Kernel`]
//! variant holds, so consumers take a whole kind (`Kernel::Gemm(g) =>
//! self.gemm(g)`) instead of destructuring its fields again.

use super::{Body, BufId, Epilogue, Shape, Stage, View};
use crate::ir::Dim;

/// One output element per point of `domain`.
#[derive(Debug, Clone, PartialEq)]
pub struct Elementwise {
    /// Where each result is written.
    pub out: View,
    /// The iteration space.
    pub domain: Shape,
    /// Inputs, read with [`Inst::Load`](super::Inst::Load).
    pub loads: Vec<View>,
    /// The per-element computation.
    pub body: Body,
}

/// Rows are `domain[..r-1]`, the reduced axis is `domain[r-1]`. Stages run
/// in order over each row; then the epilogue runs per element of the row,
/// or once per row when `per_row` (the `out` view's last stride is then 0).
#[derive(Debug, Clone, PartialEq)]
pub struct RowReduce {
    /// Where results are written.
    pub out: View,
    /// The iteration space; the last axis is reduced.
    pub domain: Shape,
    /// Inputs, read with [`Inst::Load`](super::Inst::Load).
    pub loads: Vec<View>,
    /// The reductions, in order.
    pub stages: Vec<Stage>,
    /// Computed from the stage results (and loads) per output element.
    pub epilogue: Body,
    /// Whether the epilogue runs once per row rather than per element.
    pub per_row: bool,
}

/// `out[b.., i, j] = epilogue(Σₚ a[b.., i, p]·b[b.., p, j])` with views
/// over `(batch.., m, k)`, `(batch.., k, n)` and `(batch.., m, n)`;
/// batch broadcast and transposes are strides. f64 accumulation in the
/// reference; the epilogue sees the rounded product as `Reduced(0)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Gemm {
    /// The `(batch.., m, n)` output.
    pub out: View,
    /// The `(batch.., m, k)` left operand.
    pub a: View,
    /// The `(batch.., k, n)` right operand.
    pub b: View,
    /// Batch dims (may be empty).
    pub batch: Shape,
    /// Rows of the output.
    pub m: Dim,
    /// Columns of the output.
    pub n: Dim,
    /// Contraction length.
    pub k: Dim,
    /// Fused per-element function of the product, if any.
    pub epilogue: Option<Epilogue>,
    /// Row dispatch (mixture of experts): a view over `(batch.., m)` of
    /// an f32 buffer; a row where it reads 0 is not computed and its
    /// output row is all 0.
    pub rows: Option<View>,
}

/// numpy `take` of a contiguous table along `axis` by the i32 `indices`
/// (a view over the indices' shape), into a contiguous output.
#[derive(Debug, Clone, PartialEq)]
pub struct Gather {
    /// The contiguous output buffer.
    pub out: BufId,
    /// The contiguous table buffer.
    pub table: BufId,
    /// Where the i32 indices are read.
    pub indices: View,
    /// Shape of the indices.
    pub indices_shape: Shape,
    /// The table axis indexed.
    pub axis: usize,
}

/// A materialised view (a transpose before a merging reshape, a concat piece).
#[derive(Debug, Clone, PartialEq)]
pub struct Copy {
    /// Where the copy is written.
    pub out: View,
    /// The iteration space.
    pub domain: Shape,
    /// Where it is read.
    pub src: View,
}

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
#[derive(Debug, Clone, PartialEq)]
pub struct Attention {
    /// The `(batch.., m, dv)` output.
    pub out: View,
    /// Queries, `(batch.., m, d)`.
    pub q: View,
    /// Keys read transposed, `(batch.., d, keys)`.
    pub kt: View,
    /// Values, `(batch.., keys, dv)`.
    pub v: View,
    /// Batch dims (batch, heads, ...).
    pub batch: Shape,
    /// Number of queries.
    pub m: Dim,
    /// Number of keys.
    pub keys: Dim,
    /// Query/key width.
    pub d: Dim,
    /// Value width.
    pub dv: Dim,
    /// Score function of the raw dot product (scale, softcap, bias, mask), if any.
    pub score: Option<Epilogue>,
}
