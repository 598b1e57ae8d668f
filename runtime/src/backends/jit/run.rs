//! Running a compiled graph: the arena, buffer pointers, and one launch per
//! kernel (rows split across rayon, products through the GEMM library with
//! the generated epilogue, attention, gathers).

use super::attention;
use super::gemm::{GemmCall, ViewAt, eval_view};
use super::store::AppendStore;
use super::{JitGraph, err};
use crate::backends::profile::Profile;
use crate::error::Result;
use crate::exec::interpreter::Outputs;
use crate::exec::program::param_or_join;
use crate::quant::QuantMatrix;
use crate::tensor::{Tensor, TensorData};
use crate::weights::Weights;
use kiln_compiler::codegen::cranelift::KernelFn;
use kiln_compiler::ir::{DType, Dim};
use kiln_compiler::kernel::kinds;
use kiln_compiler::kernel::{BufferKind, Kernel, KernelProgram, Size};
use rayon::prelude::*;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Instant;

/// What every kernel launch of one run shares: buffer pointers, the
/// kernel's evaluated size table and function, the run's lengths.
struct At<'a> {
    ptrs: &'a [*mut u8],
    /// Parameters read from their stored format, by buffer (their pointer
    /// is null).
    quant: &'a [Option<&'a QuantMatrix>],
    bufs: Ptrs,
    sizes: &'a [i64],
    func: Option<KernelFn>,
    lookup: &'a dyn Fn(&str) -> Option<usize>,
    eval: &'a dyn Fn(&Size) -> Result<i64>,
}

/// Below this many element operations a kernel runs on the calling thread.
pub(super) const PARALLEL_MIN_WORK: usize = 1 << 15;

impl JitGraph {
    /// Run at bound lengths `env`; outputs named in `stores` are written
    /// into (and stay in) their store, and the copies into them are skipped.
    pub(super) fn execute(
        &self,
        weights: &Weights,
        pairs: &[(&str, &Tensor)],
        env: crate::exec::interpreter::Bindings,
        stores: &mut BTreeMap<String, AppendStore>,
    ) -> Result<Outputs> {
        // Drive the run from one of rayon's workers: each parallel kernel
        // then forks from the driver's own deque while the driver works
        // too, instead of a caller thread that sleeps and is woken around
        // every kernel (GPT-2 decode +4 % median over four A/B pairs).
        if rayon::current_thread_index().is_some() {
            return self.execute_here(weights, pairs, env, stores);
        }
        rayon::scope(|_| self.execute_here(weights, pairs, env, stores))
    }

    /// [`JitGraph::execute`] on the calling thread.
    fn execute_here(
        &self,
        weights: &Weights,
        pairs: &[(&str, &Tensor)],
        env: crate::exec::interpreter::Bindings,
        stores: &mut BTreeMap<String, AppendStore>,
    ) -> Result<Outputs> {
        let p = &self.program;
        let lookup = |s: &str| env.get(s).copied();
        // Appends whose present lives in a store: kernel to skip, buffers to alias.
        let mut skip = vec![false; p.kernels.len()];
        let mut stored: Vec<Option<*mut u8>> = vec![None; p.buffers.len()];
        for (a, (_, name)) in p.appends.iter().zip(&self.caches) {
            if let Some(st) = stores.get_mut(name) {
                let ptr = st.data.as_mut_ptr() as *mut u8;
                skip[a.copy] = true;
                stored[a.present] = Some(ptr);
                // Not read (its only reader is the skipped copy).
                stored[a.past] = Some(ptr);
            }
        }
        let eval = |s: &Size| {
            s.eval(&lookup)
                .ok_or_else(|| err(format!("`{}`: unbound size {s}", p.name)))
        };

        // The arena: every planned slot at this run's lengths, 64-byte aligned.
        let mut slot_at = Vec::with_capacity(p.plan.slots.len());
        let mut arena_len = 0usize;
        for s in &p.plan.slots {
            slot_at.push(arena_len);
            let floats = (eval(s)? as usize).div_ceil(4);
            arena_len += floats.div_ceil(16) * 16;
        }
        // Every temporary is written by its kernel before it is read, so a
        // reused arena needs no clearing.
        let mut arena = self
            .arenas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default();
        if arena.len() < arena_len + 16 {
            arena.resize(arena_len + 16, 0.0);
        }
        let shift = arena.as_ptr().align_offset(64).min(15);
        let arena_base = arena[shift..].as_mut_ptr();

        let mut built: Vec<Tensor> = Vec::new();
        let mut outputs: Vec<Option<TensorData>> = vec![None; p.buffers.len()];
        let mut ptrs: Vec<*mut u8> = vec![std::ptr::null_mut(); p.buffers.len()];
        let mut quant: Vec<Option<&QuantMatrix>> = vec![None; p.buffers.len()];
        for (id, b) in p.buffers.iter().enumerate() {
            if let Some(ptr) = stored[id] {
                ptrs[id] = ptr;
                continue;
            }
            // A weight the layout left in its stored format (read only by
            // products and row gathers, which decode it themselves).
            if let BufferKind::Param(name) = &b.kind
                && let Some(q) = weights.stored_only(name)
            {
                quant[id] = Some(q);
                continue;
            }
            ptrs[id] = match &b.kind {
                BufferKind::Input(name) => {
                    let (_, t) = pairs
                        .iter()
                        .find(|(n, _)| n == name)
                        .ok_or_else(|| err(format!("missing input `{name}`")))?;
                    data_ptr(t.data())
                }
                BufferKind::Param(name) => {
                    match param_or_join(p, weights, name, b.dtype, &b.shape)? {
                        Cow::Borrowed(t) => data_ptr(t.data()),
                        // A joined weight not prepared in `weights`: built
                        // for this run (its heap data stays put in `built`).
                        Cow::Owned(t) => {
                            let ptr = data_ptr(t.data());
                            built.push(t);
                            ptr
                        }
                    }
                }
                BufferKind::Const(_) => {
                    data_ptr(self.consts[id].as_ref().expect("converted at compile"))
                }
                BufferKind::Output => {
                    let n = eval(&b.storage_numel())? as usize;
                    let d = outputs[id].insert(TensorData::zeros(b.dtype, n));
                    data_ptr_mut(d)
                }
                BufferKind::Temp => match p.plan.slot_of[id] {
                    // SAFETY: inside the arena (slot offsets are in floats).
                    Some(s) => unsafe { arena_base.add(slot_at[s]) as *mut u8 },
                    None => std::ptr::null_mut(),
                },
            };
        }
        let bufs = Ptrs(ptrs.as_ptr());

        let profiling = self
            .profile
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        // Indexed by kernel number: kernels a run skips (the cache copies
        // of an appending run) keep their slot at zero.
        let mut profile = Profile::for_kernels(if profiling { p.kernels.len() } else { 0 });
        for (ki, k) in p.kernels.iter().enumerate() {
            if skip[ki] {
                continue;
            }
            let started = profiling.then(Instant::now);
            let ck = &self.cpu.kernels[ki];
            let sizes: Vec<i64> = ck.sizes.iter().map(&eval).collect::<Result<_>>()?;
            let at = At {
                ptrs: &ptrs,
                quant: &quant,
                bufs,
                sizes: &sizes,
                func: ck.func,
                lookup: &lookup,
                eval: &eval,
            };
            let flops = self.launch(ki, k, &at)?;
            if let Some(t) = started {
                profile.record(ki, k.kind(), t.elapsed(), flops);
            }
        }
        {
            let mut pool = self.arenas.lock().unwrap_or_else(|e| e.into_inner());
            if pool.len() < rayon::current_num_threads().max(2) {
                pool.push(arena);
            }
        }
        if profiling
            && let Some(acc) = self
                .profile
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut()
        {
            acc.add_run(&profile);
        }

        let mut entries = Vec::with_capacity(p.outputs.len());
        for (name, id) in &p.outputs {
            if stored[*id].is_some() {
                continue;
            }
            let shape = dims_of(&p.buffers[*id].shape, &lookup)?;
            let data = match &p.buffers[*id].kind {
                BufferKind::Output => outputs[*id].take().expect("allocated"),
                // An output that is an input, parameter or literal itself.
                _ => {
                    let n: usize = shape.iter().product();
                    copy_out(ptrs[*id], p.buffers[*id].dtype, n)
                }
            };
            entries.push((name.clone(), Tensor::new(shape, data)?));
        }
        Ok(Outputs::from_parts(entries, env))
    }

    /// Run kernel `ki` once over its whole domain at the run's lengths;
    /// returns the multiply-add FLOPs it computed (products and attention).
    fn launch(&self, ki: usize, k: &Kernel, at: &At<'_>) -> Result<f64> {
        let p = &self.program;
        let (ptrs, bufs, sizes, func) = (at.ptrs, at.bufs, at.sizes, at.func);
        let eval = at.eval;
        let dims = |ds: &[Dim]| dims_of(ds, at.lookup);
        let mut flops = 0.0;
        match k {
            Kernel::Elementwise(kinds::Elementwise { domain, .. })
            | Kernel::Copy(kinds::Copy { domain, .. }) => {
                let d = dims(domain)?;
                let (rows, cols) = split_domain(&d);
                launch_rows(func.expect("generated"), bufs, sizes, rows, cols, true);
            }
            Kernel::RowReduce(kinds::RowReduce { domain, .. }) => {
                let d = dims(domain)?;
                let (rows, cols) = split_domain(&d);
                launch_rows(func.expect("generated"), bufs, sizes, rows, cols, false);
            }
            Kernel::Gemm(kinds::Gemm {
                out,
                a,
                b,
                batch,
                m,
                n,
                k: kd,
                rows,
                ..
            }) => {
                let g = GemmCall {
                    rows: rows.as_ref().map(|r| eval_view(r, eval)).transpose()?,
                    batch: dims(batch)?,
                    m: dims(std::slice::from_ref(m))?[0],
                    n: dims(std::slice::from_ref(n))?[0],
                    k: dims(std::slice::from_ref(kd))?[0],
                    a: eval_view(a, eval)?,
                    b: eval_view(b, eval)?,
                    out: eval_view(out, eval)?,
                };
                let computed = match at.quant[g.b.buf] {
                    Some(w) => g.launch_quant(w, ptrs, func, bufs, sizes)?,
                    None => g.launch(ptrs, func, bufs, sizes),
                };
                flops = 2.0 * (computed * g.n * g.k) as f64;
            }
            Kernel::Attention(kinds::Attention {
                out,
                q,
                kt,
                v,
                batch,
                m,
                keys,
                d,
                dv,
                ..
            }) => {
                let one = |x: &Dim| dims(std::slice::from_ref(x)).map(|v| v[0]);
                let a = attention::AttnCall {
                    batch: dims(batch)?,
                    m: one(m)?,
                    keys: one(keys)?,
                    d: one(d)?,
                    dv: one(dv)?,
                    q: eval_view(q, eval)?,
                    kt: eval_view(kt, eval)?,
                    v: eval_view(v, eval)?,
                    out: eval_view(out, eval)?,
                };
                a.launch(ptrs, func, sizes, self.scratch);
                let nb: usize = a.batch.iter().product();
                flops = 2.0 * (nb * a.m * a.keys * (a.d + a.dv)) as f64;
            }
            Kernel::Gather(kinds::Gather {
                out,
                table,
                indices,
                indices_shape,
                axis,
            }) => {
                let tshape = dims(&p.buffers[*table].shape)?;
                let ishape = dims(indices_shape)?;
                let iv = eval_view(indices, eval)?;
                let tables = (*out, *table, p.buffers[*table].dtype);
                if let Some(w) = at.quant[*table] {
                    gather_indices(ptrs, &ishape, &iv, w.rows())
                        .and_then(|picked| super::qgemm::gather_quant(ptrs, *out, w, &picked))
                } else if self.transposed_gathers.contains(&ki) {
                    gather_columns(ptrs, tables, &tshape, &ishape, &iv)
                } else {
                    gather(ptrs, tables, &tshape, &ishape, &iv, *axis)
                }
                .map_err(|e| err(format!("`{}` kernel k{ki} (gather): {e}", p.name)))?;
            }
        }
        Ok(flops)
    }
}

fn dims_of(ds: &[Dim], lookup: &dyn Fn(&str) -> Option<usize>) -> Result<Vec<usize>> {
    ds.iter()
        .map(|d| {
            d.eval(lookup)
                .ok_or_else(|| err(format!("unbound dim {d}")))
        })
        .collect()
}

fn copy_out(p: *mut u8, dt: DType, n: usize) -> TensorData {
    // SAFETY: `p` points at a live buffer of `n` elements of `dt`.
    unsafe {
        match dt {
            DType::F32 => TensorData::F32(std::slice::from_raw_parts(p as *const f32, n).to_vec()),
            DType::I32 => TensorData::I32(std::slice::from_raw_parts(p as *const i32, n).to_vec()),
            DType::Bool => {
                TensorData::Bool(std::slice::from_raw_parts(p as *const bool, n).to_vec())
            }
        }
    }
}

fn data_ptr(d: &TensorData) -> *mut u8 {
    match d {
        TensorData::F32(v) => v.as_ptr() as *mut u8,
        TensorData::I32(v) => v.as_ptr() as *mut u8,
        TensorData::Bool(v) => v.as_ptr() as *mut u8,
    }
}

fn data_ptr_mut(d: &mut TensorData) -> *mut u8 {
    match d {
        TensorData::F32(v) => v.as_mut_ptr() as *mut u8,
        TensorData::I32(v) => v.as_mut_ptr() as *mut u8,
        TensorData::Bool(v) => v.as_mut_ptr() as *mut u8,
    }
}

/// The buffer table, shared by the threads of one kernel launch (each
/// writes disjoint elements).
#[derive(Clone, Copy)]
pub(super) struct Ptrs(*const *mut u8);
// SAFETY: the table and the buffers outlive every launch (launches join
// before `run` returns) and concurrent calls write disjoint rows/columns.
unsafe impl Send for Ptrs {}
unsafe impl Sync for Ptrs {}

impl Ptrs {
    // A method, so closures capture the `Sync` wrapper, not the raw field.
    pub(super) fn get(self) -> *const *mut u8 {
        self.0
    }
}

/// Rows = product of leading axes; columns = last axis (a scalar is 1×1).
fn split_domain(d: &[usize]) -> (usize, usize) {
    match d.split_last() {
        None => (1, 1),
        Some((&c, rest)) => (rest.iter().product(), c),
    }
}

/// Run `f` over `rows × cols`, split across threads by rows (or, for a
/// single wide row of an element-wise kernel, by columns).
fn launch_rows(f: KernelFn, bufs: Ptrs, sizes: &[i64], rows: usize, cols: usize, col_split: bool) {
    // A row reduction over an empty axis still writes its rows (identities).
    if rows == 0 || (cols == 0 && col_split) {
        return;
    }
    let call = |r0: usize, r1: usize, c0: usize, c1: usize| {
        // SAFETY: the kernel's views lie inside the buffers at these sizes
        // (checked by the kernel-IR interpreter's tests), and the ranges of
        // concurrent calls are disjoint.
        unsafe {
            f(
                bufs.get(),
                sizes.as_ptr(),
                r0 as i64,
                r1 as i64,
                c0 as i64,
                c1 as i64,
            )
        }
    };
    let threads = rayon::current_num_threads();
    if rows * cols < PARALLEL_MIN_WORK || threads == 1 {
        call(0, rows, 0, cols);
    } else if rows >= threads || !col_split {
        let chunks = (threads * 4).min(rows);
        let per = rows.div_ceil(chunks);
        (0..rows.div_ceil(per)).into_par_iter().for_each(|c| {
            call(c * per, ((c + 1) * per).min(rows), 0, cols);
        });
    } else {
        // Few rows: split columns in multiples of four lanes.
        let chunks = threads * 4;
        let per = cols.div_ceil(chunks).div_ceil(4) * 4;
        (0..rows).into_par_iter().for_each(|r| {
            (0..cols.div_ceil(per)).into_par_iter().for_each(|c| {
                call(r, r + 1, c * per, ((c + 1) * per).min(cols));
            });
        });
    }
}

pub(super) fn unflatten(mut i: usize, dims: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; dims.len()];
    for k in (0..dims.len()).rev() {
        idx[k] = i % dims[k].max(1);
        i /= dims[k].max(1);
    }
    idx
}

/// A gather of whole rows from a 2-D table (an embedding lookup): the
/// kind that can read a table stored transposed.
pub(super) fn row_gather(p: &KernelProgram, k: &Kernel) -> bool {
    matches!(k, Kernel::Gather(kinds::Gather { table, axis: 0, .. }) if p.buffers[*table].shape.len() == 2)
}

/// The checked flat indices of a gather.
fn gather_indices(
    ptrs: &[*mut u8],
    ishape: &[usize],
    iv: &ViewAt,
    rows: usize,
) -> std::result::Result<Vec<usize>, String> {
    let count: usize = ishape.iter().product();
    let mut picked = Vec::with_capacity(count);
    for flat in 0..count {
        let idx = unflatten(flat, ishape);
        let at = iv.off
            + idx
                .iter()
                .zip(&iv.strides)
                .map(|(&i, &s)| i as i64 * s)
                .sum::<i64>();
        // SAFETY: the indices view lies inside its i32 buffer.
        let v = unsafe { *(ptrs[iv.buf] as *const i32).offset(at as isize) };
        if v < 0 || v as usize >= rows {
            return Err(format!("index {v} out of range [0, {rows})"));
        }
        picked.push(v as usize);
    }
    Ok(picked)
}

/// [`gather`] of rows from a 2-D table stored transposed, `[cols, rows]`:
/// output row `t` is column `index[t]` of the stored table.
fn gather_columns(
    ptrs: &[*mut u8],
    (out, table, dt): (usize, usize, DType),
    stored: &[usize],
    ishape: &[usize],
    iv: &ViewAt,
) -> std::result::Result<(), String> {
    let (cols, rows) = (stored[0], stored[1]);
    let picked = gather_indices(ptrs, ishape, iv, rows)?;
    let es = kiln_compiler::kernel::dtype_bytes(dt) as usize;
    let (src, dst) = (ptrs[table] as *const u8, ptrs[out]);
    // Row by row of the stored table, so each is read front to back.
    for c in 0..cols {
        for (t, &r) in picked.iter().enumerate() {
            // SAFETY: `c < cols`, `r < rows` (checked) and `t` below the
            // index count, so both elements lie inside their buffers.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    src.add((c * rows + r) * es),
                    dst.add((t * cols + c) * es),
                    es,
                );
            }
        }
    }
    Ok(())
}

/// numpy `take` along `axis` of a contiguous table, into a contiguous output.
fn gather(
    ptrs: &[*mut u8],
    (out, table, dt): (usize, usize, DType),
    tshape: &[usize],
    ishape: &[usize],
    iv: &ViewAt,
    axis: usize,
) -> std::result::Result<(), String> {
    let pre: usize = tshape[..axis].iter().product();
    let rows = tshape[axis];
    let post: usize = tshape[axis + 1..].iter().product();
    let es = kiln_compiler::kernel::dtype_bytes(dt) as usize;
    let picked = gather_indices(ptrs, ishape, iv, rows)?;
    let (src, dst) = (ptrs[table] as *const u8, ptrs[out]);
    let mut o = 0usize;
    for p in 0..pre {
        for &r in &picked {
            let from = (p * rows + r) * post * es;
            // SAFETY: both ranges lie inside their buffers (checked index).
            unsafe {
                std::ptr::copy_nonoverlapping(src.add(from), dst.add(o), post * es);
            }
            o += post * es;
        }
    }
    Ok(())
}
