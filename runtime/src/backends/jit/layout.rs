//! The JIT's weight layout: every weight read only as a transposed matmul
//! operand (an `nn.Linear` weight, `[out, in]`) is stored `[in, out]`, the
//! layout the GEMM library reads fastest, in place; one also read otherwise
//! gets a transposed copy unless that would be large; a tied embedding's row
//! gather then reads columns. Joined parameters of merged projections are
//! built once and their parts dropped. [`JitLayout`] undoes all of it when
//! the model leaves the JIT.

use super::JitGraph;
use super::run::row_gather;
use crate::backends::{Precision, WeightLayout};
use crate::error::{Result, RuntimeError};
use crate::exec::program::{join_rows, split_rows};
use crate::quant::{BlockFormat, QuantMatrix};
use crate::tensor::Tensor;
use crate::weights::Weights;
use kiln_compiler::ir::Dim;
use kiln_compiler::kernel::kinds;
use kiln_compiler::kernel::{BufferKind, Kernel, Size, View};
use std::collections::{BTreeMap, BTreeSet};

/// Suffix of the JIT's transposed copies of weights that are also read
/// untransposed (never a canonical parameter name).
pub(crate) const TRANSPOSED_COPY: &str = "#transposed";

/// How each parameter is read ([`JitGraph::param_reads`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParamReads {
    /// As the `b` operand of a product over a contiguous `[n, k]` weight.
    pub transposed_gemm: usize,
    /// Any other read, except as the table of a row gather over a 2-D
    /// table (an embedding), which can read the transposed layout too.
    pub other: usize,
}

impl std::ops::AddAssign for ParamReads {
    fn add_assign(&mut self, r: ParamReads) {
        self.transposed_gemm += r.transposed_gemm;
        self.other += r.other;
    }
}

/// Joined weights (merged projections): name → its parts and their rows.
type Joined = Vec<(String, Vec<(String, usize)>)>;

/// What the JIT changed in a model's weights, to undo when it leaves.
pub struct JitLayout {
    /// Weights stored transposed, or transposed copies (ending in
    /// [`TRANSPOSED_COPY`]).
    transposed: BTreeSet<String>,
    /// Joined weights built from their parts.
    joined: Joined,
    /// Joined weights whose parts are all in stored formats: built from
    /// their parts' blocks without copying (the parts stay).
    joined_quant: Vec<String>,
    /// Decoded copies of stored-format weights that are also read other
    /// than by products and row gathers.
    decoded: Vec<String>,
    /// Weights encoded at load for `--precision int8|bf16`, with their f32
    /// originals (given back when the model leaves the JIT).
    encoded: Vec<(String, Tensor)>,
}

impl WeightLayout for JitLayout {
    fn restore(&self, weights: &mut Weights) -> Result<()> {
        // Encoded weights first: joined ones are then split below.
        for (name, original) in &self.encoded {
            weights.remove_quant(name);
            weights.insert(name.clone(), original.clone());
        }
        for name in &self.transposed {
            if name.ends_with(TRANSPOSED_COPY) {
                weights.remove(name);
            } else {
                transpose_in_place(weights, name)?;
            }
        }
        // Joined weights go back to their parts once they are back in their
        // canonical layout.
        for (name, parts) in &self.joined {
            split_rows(weights, name, parts)?;
        }
        for name in &self.joined_quant {
            weights.remove_quant(name);
        }
        for name in &self.decoded {
            weights.remove(name);
        }

        Ok(())
    }
}

/// Arrange `weights` for `graphs` (see the module docs) and point their
/// kernels at the new layout.
pub(super) fn arrange(
    graphs: &mut [&mut JitGraph],
    weights: &mut Weights,
    precision: Precision,
) -> Result<JitLayout> {
    let (joined, joined_quant) = join_weights(graphs, weights)?;
    let mut reads: BTreeMap<String, ParamReads> = BTreeMap::new();
    for j in graphs.iter() {
        for (name, r) in j.param_reads() {
            *reads.entry(name).or_default() += r;
        }
    }
    let total: usize = weights.iter().map(|(_, t)| t.numel()).sum();
    let mut transposed = BTreeSet::new();
    let mut decoded = Vec::new();
    let mut encoded = Vec::new();
    let encode_as = match precision {
        Precision::Int8 => Some(BlockFormat::Q8_0),
        Precision::Bf16 => Some(BlockFormat::BF16),
        _ => None,
    };
    for (name, r) in reads {
        // int8 / bf16: matrices read only by products (and row gathers)
        // move into the format; the products read its blocks.
        if let Some(format) = encode_as
            && r.other == 0
            && r.transposed_gemm > 0
            && let Some(t) = weights.get(&name)
            && t.shape().len() == 2
            && format.row_bytes(t.shape()[1]).is_some()
        {
            let x = t.as_f32().ok_or_else(|| missing(&name))?;
            let q = QuantMatrix::encode(format, t.shape(), x)?;
            let original = weights.remove(&name).ok_or_else(|| missing(&name))?;
            weights.insert_quant(name.clone(), q);
            encoded.push((name, original));
            continue;
        }
        if let Some(q) = weights.stored_only(&name) {
            // Products and row gathers read the stored blocks themselves.
            if r.other == 0 {
                continue;
            }
            let t = q.dequantize()?;
            weights.insert(name.clone(), t);
            decoded.push(name.clone());
        }
        if r.transposed_gemm == 0 {
            continue;
        }
        let stored_as = if r.other == 0 {
            transpose_in_place(weights, &name)?;
            name.clone()
        } else {
            let size = weights.get(&name).map_or(usize::MAX, Tensor::numel);
            if size > total / 4 {
                continue;
            }
            let copy = format!("{name}{TRANSPOSED_COPY}");
            let t = weights.get(&name).cloned().ok_or_else(|| missing(&name))?;
            weights.insert(copy.clone(), t);
            transpose_in_place(weights, &copy)?;
            copy
        };
        for j in graphs.iter_mut() {
            j.use_transposed(&name, &stored_as);
        }
        transposed.insert(stored_as);
    }
    Ok(JitLayout {
        transposed,
        joined,
        joined_quant,
        decoded,
        encoded,
    })
}

fn missing(name: &str) -> RuntimeError {
    RuntimeError::Internal {
        message: format!("parameter `{name}` vanished while arranging the JIT's weights"),
    }
}

/// Build each joined weight of the programs (merged projections) once, and
/// drop the parts no program reads any more, so merging costs no memory.
/// Parts all in stored formats join as segments over their bytes (returned
/// second); the parts stay, sharing them.
fn join_weights(graphs: &[&mut JitGraph], weights: &mut Weights) -> Result<(Joined, Vec<String>)> {
    let mut joined = BTreeMap::new();
    let mut read = BTreeSet::new();
    for j in graphs {
        joined.extend(j.program().joined.clone());
        for b in &j.program().buffers {
            if let BufferKind::Param(name) = &b.kind {
                read.insert(name.clone());
            }
        }
    }
    let mut dense = Joined::new();
    let mut stored = Vec::new();
    for (name, parts) in joined {
        let quant: Option<Vec<&crate::quant::QuantMatrix>> = (parts.iter())
            .map(|(p, _)| weights.stored_only(p))
            .collect();
        if let Some(qs) = quant {
            if weights.quant(&name).is_none() {
                let j = crate::quant::QuantMatrix::join_rows(&qs)?;
                weights.insert_quant(name.clone(), j);
                stored.push(name);
            }
            continue;
        }
        if weights.get(&name).is_none() {
            let t = join_rows(weights, &name, &parts)?;
            weights.insert(name.clone(), t);
        }
        for (part, _) in &parts {
            if !read.contains(part) {
                weights.remove(part);
            }
        }
        dense.push((name, parts));
    }
    Ok((dense, stored))
}

/// Replace a rank-2 f32 weight by its transpose.
fn transpose_in_place(w: &mut Weights, name: &str) -> Result<()> {
    let t = w.remove(name).ok_or_else(|| missing(name))?;
    let (r, c) = match t.shape() {
        [r, c] => (*r, *c),
        s => {
            return Err(RuntimeError::Internal {
                message: format!("parameter `{name}`: cannot transpose shape {s:?}"),
            });
        }
    };
    let src = t.as_f32().ok_or_else(|| RuntimeError::Internal {
        message: format!("parameter `{name}` is not f32"),
    })?;
    let mut dst = vec![0.0f32; r * c];
    // Blocked, so both sides stay in cache; bands of output rows in parallel.
    const B: usize = 64;
    use rayon::prelude::*;
    dst.par_chunks_mut(B * r.max(1))
        .enumerate()
        .for_each(|(band, out)| {
            let j0 = band * B;
            let j1 = (j0 + B).min(c);
            for i0 in (0..r).step_by(B) {
                for i in i0..(i0 + B).min(r) {
                    for j in j0..j1 {
                        out[(j - j0) * r + i] = src[i * c + j];
                    }
                }
            }
        });
    w.insert(name, Tensor::from_f32(&[c, r], dst)?);
    Ok(())
}

impl JitGraph {
    /// How each parameter is read, by name. A transposed Gemm read is the
    /// `b` operand of a product over a contiguous `[n, k]` weight (every
    /// `nn.Linear` weight); the GEMM library runs about a third faster on
    /// `[k, n]` storage.
    pub fn param_reads(&self) -> BTreeMap<String, ParamReads> {
        let p = &self.program;
        let mut reads: BTreeMap<String, ParamReads> = BTreeMap::new();
        for k in &p.kernels {
            if let Kernel::Gather(kinds::Gather { indices, .. }) = k
                && row_gather(p, k)
            {
                if let BufferKind::Param(name) = &p.buffers[indices.buf].kind {
                    reads.entry(name.clone()).or_default().other += 1;
                }
                continue;
            }
            let transposed_b = match k {
                Kernel::Gemm(kinds::Gemm { b, n, k: kd, .. }) => {
                    transposed_read(&p.buffers[b.buf].shape, b, n, kd).then_some(b.buf)
                }
                _ => None,
            };
            let mut rs = k.reads();
            if let Some(tb) = transposed_b {
                // The `b` operand itself (listed second by `reads`).
                rs.remove(1);
                if let BufferKind::Param(name) = &p.buffers[tb].kind {
                    reads.entry(name.clone()).or_default().transposed_gemm += 1;
                }
            }
            for r in rs {
                if let BufferKind::Param(name) = &p.buffers[r].kind {
                    reads.entry(name.clone()).or_default().other += 1;
                }
            }
        }
        reads
    }

    /// Make the transposed Gemm reads of parameter `name` read `[k, n]`
    /// storage under the parameter name `stored_as` (which may be `name`
    /// itself when its only other reads are row gathers, which then read
    /// columns of the transposed table).
    pub fn use_transposed(&mut self, name: &str, stored_as: &str) {
        let p = &mut self.program;
        let Some(src) = p
            .buffers
            .iter()
            .position(|b| b.kind == BufferKind::Param(name.to_string()))
        else {
            return;
        };
        let mut shape = p.buffers[src].shape.clone();
        shape.reverse();
        let target = if stored_as == name {
            for (ki, k) in p.kernels.iter().enumerate() {
                if matches!(k, Kernel::Gather(kinds::Gather { table, .. }) if *table == src)
                    && row_gather(p, k)
                {
                    self.transposed_gathers.insert(ki);
                }
            }
            p.buffers[src].shape = shape.clone();
            src
        } else {
            p.buffers.push(kiln_compiler::kernel::Buffer {
                name: stored_as.to_string(),
                dtype: p.buffers[src].dtype,
                shape: shape.clone(),
                kind: BufferKind::Param(stored_as.to_string()),
                capacity: None,
            });
            p.plan.slot_of.push(None);
            self.consts.push(None);
            p.buffers.len() - 1
        };
        let n = Size::from_dim(&shape[1]);
        let original = {
            let mut s = shape.clone();
            s.reverse();
            s
        };
        for k in &mut p.kernels {
            // Only the transposed reads move; any other read keeps the
            // original layout (and buffer).
            if let Kernel::Gemm(kinds::Gemm {
                b, n: nd, k: kd, ..
            }) = k
                && b.buf == src
                && transposed_read(&original, b, nd, kd)
            {
                let r = b.strides.len();
                b.buf = target;
                b.strides[r - 2] = n.clone();
                b.strides[r - 1] = Size::one();
            }
        }
    }
}

/// Whether `b` reads a contiguous `[n, k]` matrix as `k × n`.
fn transposed_read(shape: &[Dim], b: &View, n: &Dim, k: &Dim) -> bool {
    let r = b.strides.len();
    shape.len() == 2
        && r >= 2
        && shape[0] == *n
        && shape[1] == *k
        && b.offset.is_zero()
        && b.strides[..r - 2].iter().all(Size::is_zero)
        && b.strides[r - 2] == Size::one()
        && b.strides[r - 1] == Size::from_dim(k)
        && k.as_const().is_some()
        && n.as_const().is_some()
}
