//! The CPU JIT backend: a graph optimised by the default pass pipeline,
//! fused into the kernel IR, compiled by the Cranelift code generator, and
//! executed here: the runtime owns the buffers (a planned arena for
//! temporaries), evaluates each kernel's size table at the run's lengths,
//! calls the GEMM library for matrix products (with the generated epilogue
//! applied to each block right after it is written) and splits every kernel
//! across threads with rayon.

use crate::error::{Result, RuntimeError};
use crate::interpreter::{NamedTensor, Outputs};
use crate::kernel_exec::{bind, bind_appending, const_data, empty_store_shapes, param_or_join};
use crate::tensor::{Tensor, TensorData};
use crate::weights::Weights;
use kiln_compiler::codegen::cranelift::{self as clif, CpuProgram, KernelFn};
use kiln_compiler::ir::{DType, Dim, Graph};
use kiln_compiler::kernel::{
    BufferKind, FuseOptions, Kernel, KernelProgram, Size, View, fuse_with,
};
use kiln_compiler::passes::default_pipeline;
use rayon::prelude::*;
use std::borrow::Cow;

use super::profile::Profile;

mod attention;
mod gemm;

use gemm::{GemmCall, ViewAt, eval_view};
use std::collections::{BTreeMap, BTreeSet};
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
    /// The buffer number through which attention score functions read
    /// their scratch block (fixed at codegen; buffers appended later by
    /// [`JitGraph::use_transposed`] may reuse the number, harmlessly: the
    /// score functions get a private copy of the buffer table).
    scratch: usize,
    /// `(past input, present output)` names of each of the program's
    /// appends, in its order.
    caches: Vec<(String, String)>,
    /// Gather kernels whose 2-D table is stored transposed (`[cols, rows]`,
    /// by [`JitGraph::use_transposed`]): they read a column per index.
    transposed_gathers: BTreeSet<usize>,
}

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

/// How long each stage of a compile took.
#[derive(Debug, Clone, Copy, Default)]
pub struct CompileTimes {
    /// Graph passes (the default pipeline).
    pub passes: Duration,
    /// Fusion of the optimized graph into a kernel program.
    pub fuse: Duration,
    /// Cranelift code generation of the kernel program.
    pub codegen: Duration,
}

/// How [`JitGraph::compile_with`] compiles.
#[derive(Debug, Clone, Default)]
pub struct JitOptions {
    /// Code generator options (keep the CLIF text).
    pub codegen: clif::Options,
    /// Kernel rewrites to skip (bisecting, measuring one rewrite's effect).
    pub fuse: FuseOptions,
}

impl JitGraph {
    /// Optimise (level-1 pipeline), fuse and compile `graph`.
    pub fn compile(graph: &Graph) -> Result<JitGraph> {
        Self::compile_with(graph, &JitOptions::default()).map(|(g, _)| g)
    }

    /// [`JitGraph::compile`] with options; also returns where the time went.
    pub fn compile_with(graph: &Graph, opts: &JitOptions) -> Result<(JitGraph, CompileTimes)> {
        let t0 = Instant::now();
        let mut g = graph.clone();
        default_pipeline(1)
            .run(&mut g)
            .map_err(|e| err(format!("`{}`: {e}", graph.name)))?;
        let t1 = Instant::now();
        let program =
            fuse_with(&g, &opts.fuse).map_err(|e| err(format!("`{}`: {e}", graph.name)))?;
        let t2 = Instant::now();
        let cpu = clif::compile(&program, opts.codegen)
            .map_err(|e| err(format!("`{}`: code generation: {e}", graph.name)))?;
        let t3 = Instant::now();
        let scratch = clif::attention_scratch(&program);
        let caches = program.append_names();
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
                scratch,
                caches,
                transposed_gathers: BTreeSet::new(),
            },
            times,
        ))
    }

    /// The fused kernel program the native code was generated from.
    pub fn program(&self) -> &KernelProgram {
        &self.program
    }

    /// The Cranelift-compiled native code, one function per kernel.
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

    /// Stop profiling (and drop the profile): runs are timed as they run
    /// unprofiled.
    pub fn disable_profiling(&self) {
        *self.profile.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The profile collected since [`JitGraph::enable_profiling`].
    pub fn profile(&self) -> Option<Profile> {
        self.profile
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How each parameter is read, by name. A transposed Gemm read is the
    /// `b` operand of a product over a contiguous `[n, k]` weight (every
    /// `nn.Linear` weight); the GEMM library runs about a third faster on
    /// `[k, n]` storage.
    pub fn param_reads(&self) -> BTreeMap<String, ParamReads> {
        let p = &self.program;
        let mut reads: BTreeMap<String, ParamReads> = BTreeMap::new();
        for k in &p.kernels {
            if let Kernel::Gather { indices, .. } = k
                && row_gather(p, k)
            {
                if let BufferKind::Param(name) = &p.buffers[indices.buf].kind {
                    reads.entry(name.clone()).or_default().other += 1;
                }
                continue;
            }
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
                if matches!(k, Kernel::Gather { table, .. } if *table == src) && row_gather(p, k) {
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
                param_or_join(&self.program, weights, name, b.dtype, &b.shape)?;
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
        let env = bind(&self.program, &pairs)?;
        self.execute(weights, &pairs, env, &mut BTreeMap::new())
    }

    /// The caches this program can append to in place, as `(past input,
    /// present output)` names; empty when the `append-cache` rewrite is off.
    pub fn appendable(&self) -> &[(String, String)] {
        &self.caches
    }

    /// An empty store for each [`JitGraph::appendable`] cache, by present
    /// output name: the past input's shape at `lengths` with no rows along
    /// the append axis, and room for `capacity` rows.
    pub fn empty_stores(
        &self,
        lengths: &crate::interpreter::Bindings,
        capacity: usize,
    ) -> Result<BTreeMap<String, AppendStore>> {
        let p = &self.program;
        let shapes = empty_store_shapes(p, lengths)?;
        let mut stores = BTreeMap::new();
        for ((a, (_, name)), shape) in p.appends.iter().zip(&self.caches).zip(shapes) {
            stores.insert(name.clone(), AppendStore::new(&shape, a.axis, capacity)?);
        }
        Ok(stores)
    }

    /// [`JitGraph::run`] with the [`JitGraph::appendable`] caches kept in
    /// `stores` (by present output name) instead of passed and returned:
    /// each run appends its new rows to its store in place, so a decode step
    /// costs O(new rows), not O(cache). `inputs` omits those past inputs, the
    /// outputs omit those presents. Every store must have the same capacity,
    /// at least the rows after the run ([`AppendStore::reserve`]). A store
    /// changes only past its rows in use until the run has succeeded.
    pub fn run_appending<N: NamedTensor>(
        &self,
        weights: &Weights,
        inputs: impl IntoIterator<Item = N>,
        stores: &mut BTreeMap<String, AppendStore>,
    ) -> Result<Outputs> {
        let inputs: Vec<N> = inputs.into_iter().collect();
        let pairs: Vec<(&str, &Tensor)> = inputs.iter().map(|i| (i.name(), i.tensor())).collect();
        let p = &self.program;
        let metas = pairs
            .iter()
            .map(|(n, t)| (*n, t.dtype(), t.shape()))
            .collect();
        let (env, need) = {
            let view: &BTreeMap<String, AppendStore> = stores;
            let store = |name: &str| view.get(name).map(|s| (s.capacity, s.shape.as_slice()));
            bind_appending(p, &self.caches, metas, &store)?
        };
        let out = self.execute(weights, &pairs, env, stores)?;
        for (a, (_, name)) in p.appends.iter().zip(&self.caches) {
            if let Some(st) = stores.get_mut(name) {
                st.shape[a.axis] = need;
            }
        }
        Ok(out)
    }

    /// Run at bound lengths `env`; outputs named in `stores` are written
    /// into (and stay in) their store, and the copies into them are skipped.
    fn execute(
        &self,
        weights: &Weights,
        pairs: &[(&str, &Tensor)],
        env: crate::interpreter::Bindings,
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
        env: crate::interpreter::Bindings,
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
        for (id, b) in p.buffers.iter().enumerate() {
            if let Some(ptr) = stored[id] {
                ptrs[id] = ptr;
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
        let mut flops = 0.0;
        for (ki, k) in p.kernels.iter().enumerate() {
            if skip[ki] {
                continue;
            }
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
                    rows,
                    ..
                } => {
                    let g = GemmCall {
                        rows: rows.as_ref().map(|r| eval_view(r, &eval)).transpose()?,
                        batch: dims(batch)?,
                        m: dims(std::slice::from_ref(m))?[0],
                        n: dims(std::slice::from_ref(n))?[0],
                        k: dims(std::slice::from_ref(kd))?[0],
                        a: eval_view(a, &eval)?,
                        b: eval_view(b, &eval)?,
                        out: eval_view(out, &eval)?,
                    };
                    let computed = g.launch(&ptrs, func, bufs, &sizes);
                    flops = 2.0 * (computed * g.n * g.k) as f64;
                }
                Kernel::Attention {
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
                } => {
                    let one = |x: &Dim| dims(std::slice::from_ref(x)).map(|v| v[0]);
                    let a = attention::AttnCall {
                        batch: dims(batch)?,
                        m: one(m)?,
                        keys: one(keys)?,
                        d: one(d)?,
                        dv: one(dv)?,
                        q: eval_view(q, &eval)?,
                        kt: eval_view(kt, &eval)?,
                        v: eval_view(v, &eval)?,
                        out: eval_view(out, &eval)?,
                    };
                    a.launch(&ptrs, func, &sizes, self.scratch);
                    let nb: usize = a.batch.iter().product();
                    flops = 2.0 * (nb * a.m * a.keys * (a.d + a.dv)) as f64;
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
                    let tables = (*out, *table, p.buffers[*table].dtype);
                    if self.transposed_gathers.contains(&ki) {
                        gather_columns(&ptrs, tables, &tshape, &ishape, &iv)
                    } else {
                        gather(&ptrs, tables, &tshape, &ishape, &iv, *axis)
                    }
                    .map_err(|e| err(format!("`{}` kernel k{ki} (gather): {e}", p.name)))?;
                }
            }
            if let Some(t) = started {
                profile.record(ki, k.kind(), t.elapsed(), std::mem::take(&mut flops));
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
}

/// An f32 cache tensor that runs append rows to in place
/// ([`JitGraph::run_appending`]): row-major storage with `capacity` rows
/// along `axis`, of which `shape[axis]` are in use.
#[derive(Debug, Clone, PartialEq)]
pub struct AppendStore {
    data: Vec<f32>,
    shape: Vec<usize>,
    axis: usize,
    capacity: usize,
}

impl AppendStore {
    /// An empty store: `shape` with no rows in use along `axis`, room for `capacity`.
    pub fn new(shape: &[usize], axis: usize, capacity: usize) -> Result<AppendStore> {
        if axis >= shape.len() {
            return Err(err(format!(
                "cache axis {axis} of a rank-{} shape",
                shape.len()
            )));
        }
        let mut st = AppendStore {
            data: Vec::new(),
            shape: shape.to_vec(),
            axis,
            capacity: 0,
        };
        st.shape[axis] = 0;
        st.reserve(capacity)?;
        Ok(st)
    }

    /// The logical shape (rows in use along the axis).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Rows the storage holds along the axis.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Grow the storage to at least `capacity` rows, keeping the rows in use.
    pub fn reserve(&mut self, capacity: usize) -> Result<()> {
        if capacity <= self.capacity {
            return Ok(());
        }
        let (outer, inner) = self.split();
        let total = outer
            .checked_mul(capacity)
            .and_then(|x| x.checked_mul(inner))
            .ok_or_else(|| err(format!("a cache of {capacity} rows overflows memory")))?;
        let mut data = vec![0.0f32; total];
        let used = self.shape[self.axis] * inner;
        for o in 0..outer {
            let from = o * self.capacity * inner;
            data[o * capacity * inner..][..used].copy_from_slice(&self.data[from..from + used]);
        }
        self.data = data;
        self.capacity = capacity;
        Ok(())
    }

    /// The rows in use as a contiguous tensor.
    pub fn to_tensor(&self) -> Result<Tensor> {
        let (outer, inner) = self.split();
        let used = self.shape[self.axis] * inner;
        let mut out = Vec::with_capacity(outer * used);
        for o in 0..outer {
            out.extend_from_slice(&self.data[o * self.capacity * inner..][..used]);
        }
        Tensor::from_f32(&self.shape, out)
    }

    /// `(elements before the axis, elements after it)`.
    fn split(&self) -> (usize, usize) {
        (
            self.shape[..self.axis].iter().product(),
            self.shape[self.axis + 1..].iter().product(),
        )
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

fn unflatten(mut i: usize, dims: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; dims.len()];
    for k in (0..dims.len()).rev() {
        idx[k] = i % dims[k].max(1);
        i /= dims[k].max(1);
    }
    idx
}

/// A gather of whole rows from a 2-D table (an embedding lookup): the
/// kind that can read a table stored transposed.
fn row_gather(p: &KernelProgram, k: &Kernel) -> bool {
    matches!(k, Kernel::Gather { table, axis: 0, .. } if p.buffers[*table].shape.len() == 2)
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
