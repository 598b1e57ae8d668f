//! The CPU JIT backend: a graph optimised by the default pass pipeline,
//! fused into the kernel IR, compiled by the Cranelift code generator, and
//! executed here: the runtime owns the buffers (a planned arena for
//! temporaries), evaluates each kernel's size table at the run's lengths,
//! calls the GEMM library for matrix products (with the generated epilogue
//! applied to each block right after it is written) and splits every kernel
//! across threads with rayon.

use crate::error::{Result, RuntimeError};
use crate::interpreter::{NamedTensor, Outputs};
use crate::kernel_exec::{bind, const_data, param};
use crate::tensor::{Tensor, TensorData};
use crate::weights::Weights;
use kiln_compiler::codegen::cranelift::{self as clif, CpuProgram, KernelFn};
use kiln_compiler::ir::{DType, Dim, Graph};
use kiln_compiler::kernel::{BufferKind, Kernel, KernelProgram, Size, View, fuse};
use kiln_compiler::passes::default_pipeline;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

fn err(m: impl Into<String>) -> RuntimeError {
    RuntimeError::Graph(m.into())
}

/// Below this many element operations a kernel runs on the calling thread.
const PARALLEL_MIN_WORK: usize = 1 << 15;

/// One graph compiled to native code; immutable, shared by every thread.
pub struct JitGraph {
    program: KernelProgram,
    cpu: CpuProgram,
    /// Literal buffers, converted to their dtype once.
    consts: Vec<Option<TensorData>>,
    compile_time: Duration,
    /// Per-kind time and matmul FLOPs, when enabled (benchmarks).
    profile: Mutex<Option<Profile>>,
    /// Arenas of finished runs, reused so temporaries do not page-fault
    /// fresh memory every run (one per concurrent caller at most).
    arenas: Mutex<Vec<Vec<f32>>>,
}

/// Where a run's time went, by kernel kind, summed over runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profile {
    /// `(kind, time)` in first-seen order.
    pub by_kind: Vec<(&'static str, Duration)>,
    /// Time per kernel, indexed like the program's kernels, summed over runs.
    pub by_kernel: Vec<Duration>,
    /// Multiply-add FLOPs of the Gemm kernels (2·m·n·k each).
    pub gemm_flops: f64,
    pub runs: usize,
}

impl Profile {
    fn add(&mut self, kind: &'static str, t: Duration) {
        match self.by_kind.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, d)) => *d += t,
            None => self.by_kind.push((kind, t)),
        }
    }

    pub fn time(&self, kind: &str) -> Duration {
        self.by_kind
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, d)| *d)
            .sum()
    }

    pub fn total(&self) -> Duration {
        self.by_kind.iter().map(|(_, d)| *d).sum()
    }
}

/// How long each stage of a compile took.
#[derive(Debug, Clone, Copy, Default)]
pub struct CompileTimes {
    pub passes: Duration,
    pub fuse: Duration,
    pub codegen: Duration,
}

impl JitGraph {
    /// Optimise (level-1 pipeline), fuse and compile `graph`.
    pub fn compile(graph: &Graph) -> Result<JitGraph> {
        Self::compile_with(graph, clif::Options::default()).map(|(g, _)| g)
    }

    pub fn compile_with(graph: &Graph, opts: clif::Options) -> Result<(JitGraph, CompileTimes)> {
        let t0 = Instant::now();
        let mut g = graph.clone();
        default_pipeline(1)
            .run(&mut g)
            .map_err(|e| err(format!("`{}`: {e}", graph.name)))?;
        let t1 = Instant::now();
        let program = fuse(&g).map_err(|e| err(format!("`{}`: {e}", graph.name)))?;
        let t2 = Instant::now();
        let cpu = clif::compile(&program, opts)
            .map_err(|e| err(format!("`{}`: code generation: {e}", graph.name)))?;
        let t3 = Instant::now();
        let consts = program
            .buffers
            .iter()
            .map(|b| match &b.kind {
                BufferKind::Const(v) => Some(const_data(v, b.dtype)),
                _ => None,
            })
            .collect();
        let times = CompileTimes {
            passes: t1 - t0,
            fuse: t2 - t1,
            codegen: t3 - t2,
        };
        Ok((
            JitGraph {
                program,
                cpu,
                consts,
                compile_time: t3 - t0,
                profile: Mutex::new(None),
                arenas: Mutex::new(Vec::new()),
            },
            times,
        ))
    }

    pub fn program(&self) -> &KernelProgram {
        &self.program
    }

    pub fn cpu(&self) -> &CpuProgram {
        &self.cpu
    }

    /// Spec-independent compile time (passes + fusion + codegen).
    pub fn compile_time(&self) -> Duration {
        self.compile_time
    }

    /// Start (or restart) collecting a [`Profile`] of every run.
    pub fn enable_profiling(&self) {
        *self.profile.lock().unwrap_or_else(|e| e.into_inner()) = Some(Profile::default());
    }

    /// The profile collected since [`JitGraph::enable_profiling`].
    pub fn profile(&self) -> Option<Profile> {
        self.profile
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How each parameter is read: name → `(transposed Gemm reads, other
    /// reads)`. A transposed Gemm read is the `b` operand of a product over
    /// a contiguous `[n, k]` weight (every `nn.Linear` weight); the GEMM
    /// library runs about a third faster on `[k, n]` storage.
    pub fn param_reads(&self) -> BTreeMap<String, (usize, usize)> {
        let p = &self.program;
        let mut reads: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for k in &p.kernels {
            let transposed_b = match k {
                Kernel::Gemm { b, n, k: kd, .. } => {
                    transposed_read(&p.buffers[b.buf].shape, b, n, kd).then_some(b.buf)
                }
                _ => None,
            };
            let mut rs = k.reads();
            if let Some(tb) = transposed_b {
                // The `b` operand itself (listed second by `reads`).
                rs.remove(1);
                if let BufferKind::Param(name) = &p.buffers[tb].kind {
                    reads.entry(name.clone()).or_default().0 += 1;
                }
            }
            for r in rs {
                if let BufferKind::Param(name) = &p.buffers[r].kind {
                    reads.entry(name.clone()).or_default().1 += 1;
                }
            }
        }
        reads
    }

    /// Make the transposed Gemm reads of parameter `name` read `[k, n]`
    /// storage under the parameter name `stored_as` (which may be `name`
    /// itself when nothing else reads it).
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
            p.buffers[src].shape = shape.clone();
            src
        } else {
            p.buffers.push(kiln_compiler::kernel::Buffer {
                name: stored_as.to_string(),
                dtype: p.buffers[src].dtype,
                shape: shape.clone(),
                kind: BufferKind::Param(stored_as.to_string()),
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
            if let Kernel::Gemm {
                b, n: nd, k: kd, ..
            } = k
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

    /// Check that `weights` holds every parameter with its declared type.
    pub fn check_weights(&self, weights: &Weights) -> Result<()> {
        for b in &self.program.buffers {
            if let BufferKind::Param(name) = &b.kind {
                param(weights, name, b.dtype, &b.shape)?;
            }
        }
        Ok(())
    }

    /// Run on `inputs` (every declared input by name) with `weights`.
    pub fn run<N: NamedTensor>(
        &self,
        weights: &Weights,
        inputs: impl IntoIterator<Item = N>,
    ) -> Result<Outputs> {
        let inputs: Vec<N> = inputs.into_iter().collect();
        let pairs: Vec<(&str, &Tensor)> = inputs.iter().map(|i| (i.name(), i.tensor())).collect();
        let p = &self.program;
        let env = bind(p, &pairs)?;
        let lookup = |s: &str| env.get(s).copied();
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

        let mut outputs: Vec<Option<TensorData>> = vec![None; p.buffers.len()];
        let mut ptrs: Vec<*mut u8> = vec![std::ptr::null_mut(); p.buffers.len()];
        for (id, b) in p.buffers.iter().enumerate() {
            ptrs[id] = match &b.kind {
                BufferKind::Input(name) => {
                    let (_, t) = pairs
                        .iter()
                        .find(|(n, _)| n == name)
                        .ok_or_else(|| err(format!("missing input `{name}`")))?;
                    data_ptr(t.data())
                }
                BufferKind::Param(name) => {
                    data_ptr(param(weights, name, b.dtype, &b.shape)?.data())
                }
                BufferKind::Const(_) => {
                    data_ptr(self.consts[id].as_ref().expect("converted at compile"))
                }
                BufferKind::Output => {
                    let n = eval(&b.numel())? as usize;
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
        let mut profile = Profile::default();
        for (ki, k) in p.kernels.iter().enumerate() {
            let started = profiling.then(Instant::now);
            let ck = &self.cpu.kernels[ki];
            let sizes: Vec<i64> = ck.sizes.iter().map(&eval).collect::<Result<_>>()?;
            let dims = |ds: &[Dim]| dims_of(ds, &lookup);
            let func = ck.func;
            match k {
                Kernel::Elementwise { domain, .. } | Kernel::Copy { domain, .. } => {
                    let d = dims(domain)?;
                    let (rows, cols) = split_domain(&d);
                    launch_rows(func.expect("generated"), bufs, &sizes, rows, cols, true);
                }
                Kernel::RowReduce { domain, .. } => {
                    let d = dims(domain)?;
                    let (rows, cols) = split_domain(&d);
                    launch_rows(func.expect("generated"), bufs, &sizes, rows, cols, false);
                }
                Kernel::Gemm {
                    out,
                    a,
                    b,
                    batch,
                    m,
                    n,
                    k: kd,
                    ..
                } => {
                    let g = GemmCall {
                        batch: dims(batch)?,
                        m: dims(std::slice::from_ref(m))?[0],
                        n: dims(std::slice::from_ref(n))?[0],
                        k: dims(std::slice::from_ref(kd))?[0],
                        a: eval_view(a, &eval)?,
                        b: eval_view(b, &eval)?,
                        out: eval_view(out, &eval)?,
                    };
                    g.launch(&ptrs, func, bufs, &sizes);
                    if profiling {
                        let nb: usize = g.batch.iter().product();
                        profile.gemm_flops += 2.0 * (nb * g.m * g.n * g.k) as f64;
                    }
                }
                Kernel::Gather {
                    out,
                    table,
                    indices,
                    indices_shape,
                    axis,
                } => {
                    let tshape = dims(&p.buffers[*table].shape)?;
                    let ishape = dims(indices_shape)?;
                    let iv = eval_view(indices, &eval)?;
                    gather(
                        &ptrs,
                        (*out, *table, p.buffers[*table].dtype),
                        &tshape,
                        &ishape,
                        &iv,
                        *axis,
                    )
                    .map_err(|e| err(format!("`{}` kernel k{ki} (gather): {e}", p.name)))?;
                }
            }
            if let Some(t) = started {
                profile.add(k.kind(), t.elapsed());
                profile.by_kernel.push(t.elapsed());
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
            for (k, t) in profile.by_kind {
                acc.add(k, t);
            }
            acc.by_kernel
                .resize(profile.by_kernel.len(), Duration::ZERO);
            for (d, t) in acc.by_kernel.iter_mut().zip(profile.by_kernel) {
                *d += t;
            }
            acc.gemm_flops += profile.gemm_flops;
            acc.runs += 1;
        }

        let mut entries = Vec::with_capacity(p.outputs.len());
        for (name, id) in &p.outputs {
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
struct Ptrs(*const *mut u8);
// SAFETY: the table and the buffers outlive every launch (launches join
// before `run` returns) and concurrent calls write disjoint rows/columns.
unsafe impl Send for Ptrs {}
unsafe impl Sync for Ptrs {}

impl Ptrs {
    // A method, so closures capture the `Sync` wrapper, not the raw field.
    fn get(self) -> *const *mut u8 {
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

/// A view at concrete lengths: element offset and strides (in elements).
#[derive(Debug, Clone)]
struct ViewAt {
    buf: usize,
    off: i64,
    strides: Vec<i64>,
}

fn eval_view(v: &View, eval: &dyn Fn(&Size) -> Result<i64>) -> Result<ViewAt> {
    Ok(ViewAt {
        buf: v.buf,
        off: eval(&v.offset)?,
        strides: v.strides.iter().map(eval).collect::<Result<_>>()?,
    })
}

impl ViewAt {
    /// Element offset of batch index `bi` (the leading axes).
    fn batch_offset(&self, bi: &[usize]) -> i64 {
        self.off
            + bi.iter()
                .zip(&self.strides)
                .map(|(&i, &s)| i as i64 * s)
                .sum::<i64>()
    }
    fn rs(&self) -> isize {
        self.strides[self.strides.len() - 2] as isize
    }
    fn cs(&self) -> isize {
        self.strides[self.strides.len() - 1] as isize
    }
}

struct GemmCall {
    batch: Vec<usize>,
    m: usize,
    n: usize,
    k: usize,
    a: ViewAt,
    b: ViewAt,
    out: ViewAt,
}

#[derive(Clone, Copy)]
struct Tile {
    bi: usize,
    i0: usize,
    i1: usize,
    j0: usize,
    j1: usize,
}

impl GemmCall {
    /// Tiles over (batch, row block, column block): enough to feed every
    /// thread. A single large product is split by columns, so each tile
    /// packs only its own slice of `b` (the weight) and the small `a` is
    /// the part packed more than once.
    fn tiles(&self) -> Vec<Tile> {
        let nb: usize = self.batch.iter().product();
        let threads = rayon::current_num_threads();
        let flops = 2 * nb * self.m * self.n * self.k.max(1);
        // A matrix-vector product is bound by reading `b`: split it as soon
        // as `b` is large, whatever the FLOPs.
        let streamed = self.m <= GEMV_MAX_ROWS && nb * self.n * self.k >= 8 * PARALLEL_MIN_WORK;
        let want = if flops < 4 * PARALLEL_MIN_WORK * 64 && !streamed {
            1
        } else {
            threads * 2
        };
        let per_batch = want.div_ceil(nb.max(1)).max(1);
        let (mb, nbk) = if per_batch == 1 {
            (self.m, self.n)
        } else if self.n >= 64 * per_batch || self.m < 16 * per_batch {
            let cols = self.n.div_ceil(per_batch).div_ceil(16) * 16;
            (self.m, cols.max(16))
        } else {
            (self.m.div_ceil(per_batch), self.n)
        };
        let (mb, nbk) = (mb.max(1), nbk.max(1));
        let mut t = Vec::new();
        for bi in 0..nb {
            let mut i0 = 0;
            while i0 < self.m {
                let i1 = (i0 + mb).min(self.m);
                let mut j0 = 0;
                while j0 < self.n {
                    let j1 = (j0 + nbk).min(self.n);
                    t.push(Tile { bi, i0, i1, j0, j1 });
                    j0 = j1;
                }
                i0 = i1;
            }
        }
        t
    }

    /// A large matrix-vector product over a `[k, n]` weight: threads take
    /// contiguous row ranges of the weight (each a sequential stream) and
    /// their partial sums are added, then the epilogue runs once.
    fn launch_split_k(
        &self,
        ptrs: &[*mut u8],
        epilogue: Option<KernelFn>,
        bufs: Ptrs,
        sizes: &[i64],
    ) -> bool {
        let nb: usize = self.batch.iter().product();
        let threads = rayon::current_num_threads();
        let (ocs, bcs) = (self.out.cs(), self.b.cs());
        if nb != 1
            || self.m > GEMV_MAX_ROWS
            || threads == 1
            || ocs != 1
            || bcs != 1
            || self.n * self.k < 8 * PARALLEL_MIN_WORK
        {
            return false;
        }
        let (pa, pb, po) = (
            ptrs[self.a.buf] as usize,
            ptrs[self.b.buf] as usize,
            ptrs[self.out.buf] as usize,
        );
        let (oa, ob, oo) = (
            self.a.batch_offset(&[]),
            self.b.batch_offset(&[]),
            self.out.batch_offset(&[]),
        );
        let (ars, acs, brs, ors) = (self.a.rs(), self.a.cs(), self.b.rs(), self.out.rs());
        let parts = threads;
        let per = self.k.div_ceil(parts);
        for i in 0..self.m {
            let partial: Vec<Vec<f32>> = (0..parts)
                .into_par_iter()
                .map(|t| {
                    let (p0, p1) = (t * per, ((t + 1) * per).min(self.k));
                    let mut acc = vec![0.0f32; self.n];
                    if p0 < p1 {
                        // SAFETY: rows p0..p1 of b and elements p0..p1 of
                        // row i of a lie inside their buffers.
                        unsafe {
                            let a = (pa as *const f32)
                                .offset(oa as isize + i as isize * ars + p0 as isize * acs);
                            let b = (pb as *const f32).offset(ob as isize + p0 as isize * brs);
                            gemv(a, acs, b, brs, 1, p1 - p0, &mut acc);
                        }
                    }
                    acc
                })
                .collect();
            // SAFETY: row i of out holds n contiguous elements.
            let out = unsafe {
                std::slice::from_raw_parts_mut(
                    (po as *mut f32).offset(oo as isize + i as isize * ors),
                    self.n,
                )
            };
            out.copy_from_slice(&partial[0]);
            for p in &partial[1..] {
                for (o, x) in out.iter_mut().zip(p) {
                    *o += x;
                }
            }
        }
        if let Some(f) = epilogue {
            // SAFETY: as for the tiled path, over the whole output.
            unsafe {
                f(
                    bufs.get(),
                    sizes.as_ptr(),
                    0,
                    self.m as i64,
                    0,
                    self.n as i64,
                )
            };
        }
        true
    }

    fn launch(&self, ptrs: &[*mut u8], epilogue: Option<KernelFn>, bufs: Ptrs, sizes: &[i64]) {
        if self.m == 0 || self.n == 0 {
            return;
        }
        let base = |v: &ViewAt| ptrs[v.buf] as usize;
        let (pa, pb, po) = (base(&self.a), base(&self.b), base(&self.out));
        let run = |t: Tile| {
            let bi = unflatten(t.bi, &self.batch);
            let oa = self.a.batch_offset(&bi);
            let ob = self.b.batch_offset(&bi);
            let oo = self.out.batch_offset(&bi);
            let (ars, acs) = (self.a.rs(), self.a.cs());
            let (brs, bcs) = (self.b.rs(), self.b.cs());
            let (ors, ocs) = (self.out.rs(), self.out.cs());
            // SAFETY: offsets and strides come from views that lie inside
            // their buffers; tiles write disjoint blocks of `out`.
            unsafe {
                let a = (pa as *const f32).offset(oa as isize + t.i0 as isize * ars);
                let b = (pb as *const f32).offset(ob as isize + t.j0 as isize * bcs);
                let o = (po as *mut f32)
                    .offset(oo as isize + t.i0 as isize * ors + t.j0 as isize * ocs);
                let (mt, nt) = (t.i1 - t.i0, t.j1 - t.j0);
                if mt <= GEMV_MAX_ROWS && ocs == 1 && (bcs == 1 || brs == 1) {
                    // Matrix-vector products (decode) are memory bound:
                    // stream the weight once instead of packing it.
                    for i in 0..mt {
                        let ai = a.offset(i as isize * ars);
                        let oi = o.offset(i as isize * ors);
                        let out = std::slice::from_raw_parts_mut(oi, nt);
                        gemv(ai, acs, b, brs, bcs, self.k, out);
                    }
                } else {
                    gemm::gemm(
                        mt,
                        nt,
                        self.k,
                        o,
                        ocs,
                        ors,
                        false,
                        a,
                        acs,
                        ars,
                        b,
                        bcs,
                        brs,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                if let Some(f) = epilogue {
                    let r = (t.bi * self.m) as i64;
                    f(
                        bufs.get(),
                        sizes.as_ptr(),
                        r + t.i0 as i64,
                        r + t.i1 as i64,
                        t.j0 as i64,
                        t.j1 as i64,
                    );
                }
            }
        };
        if self.launch_split_k(ptrs, epilogue, bufs, sizes) {
            return;
        }
        let tiles = self.tiles();
        if tiles.len() == 1 {
            run(tiles[0]);
        } else {
            tiles.into_par_iter().for_each(run);
        }
    }
}

/// Rows of `a` up to which a product runs as matrix-vector products.
const GEMV_MAX_ROWS: usize = 2;

/// `out[j] = Σₚ x[p·xs]·b[p·brs + j·bcs]` for `j < out.len()`, where `b` has
/// a unit stride along `p` (dot products) or along `j` (scaled row sums).
/// Uses AVX2+FMA code when the CPU has it.
///
/// # Safety
/// `x` and `b` are valid for every element these strides reach.
unsafe fn gemv(
    x: *const f32,
    xs: isize,
    b: *const f32,
    brs: isize,
    bcs: isize,
    k: usize,
    out: &mut [f32],
) {
    let xv: Vec<f32> = (0..k)
        .map(|p| unsafe { *x.offset(p as isize * xs) })
        .collect();
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the features were just detected; same contract as ours.
        unsafe { gemv_avx2(&xv, b, brs, bcs, out) };
        return;
    }
    // SAFETY: forwarded contract.
    unsafe { gemv_body(&xv, b, brs, bcs, out) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gemv_avx2(x: &[f32], b: *const f32, brs: isize, bcs: isize, out: &mut [f32]) {
    // SAFETY: forwarded contract; compiled here with AVX2 and FMA.
    unsafe { gemv_body(x, b, brs, bcs, out) }
}

#[inline(always)]
unsafe fn gemv_body(x: &[f32], b: *const f32, brs: isize, bcs: isize, out: &mut [f32]) {
    let k = x.len();
    if brs == 1 {
        for (j, o) in out.iter_mut().enumerate() {
            // SAFETY: column j of b is k contiguous elements.
            let col = unsafe { std::slice::from_raw_parts(b.offset(j as isize * bcs), k) };
            *o = dot(x, col);
        }
        return;
    }
    let n = out.len();
    out.fill(0.0);
    // Four rows of b per pass over `out`: a quarter of the read-modify-writes.
    let mut p = 0;
    while p + 4 <= k {
        // SAFETY: rows p..p+4 of b hold n contiguous elements each.
        let r =
            |q: usize| unsafe { std::slice::from_raw_parts(b.offset((p + q) as isize * brs), n) };
        let (r0, r1, r2, r3) = (r(0), r(1), r(2), r(3));
        let (x0, x1, x2, x3) = (x[p], x[p + 1], x[p + 2], x[p + 3]);
        for j in 0..n {
            out[j] += x0 * r0[j] + x1 * r1[j] + x2 * r2[j] + x3 * r3[j];
        }
        p += 4;
    }
    while p < k {
        // SAFETY: as above, one row.
        let row = unsafe { std::slice::from_raw_parts(b.offset(p as isize * brs), n) };
        for (o, &w) in out.iter_mut().zip(row) {
            *o += x[p] * w;
        }
        p += 1;
    }
}

/// A dot product in sixteen independent lanes (so it vectorises).
#[inline(always)]
fn dot(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let (xc, yc) = (x.chunks_exact(16), y.chunks_exact(16));
    let tail: f32 = xc
        .remainder()
        .iter()
        .zip(yc.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (a, b) in xc.zip(yc) {
        for l in 0..16 {
            acc[l] += a[l] * b[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

fn unflatten(mut i: usize, dims: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; dims.len()];
    for k in (0..dims.len()).rev() {
        idx[k] = i % dims[k].max(1);
        i /= dims[k].max(1);
    }
    idx
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
