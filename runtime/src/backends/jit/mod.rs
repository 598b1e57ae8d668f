//! The CPU JIT backend: each part's kernel program (optimised and fused by
//! the compiler, [`kiln_compiler::compile`]) compiled by the Cranelift code
//! generator and executed here: the runtime owns the buffers (a planned
//! arena for temporaries), evaluates each kernel's size table at the run's
//! lengths, calls the GEMM library for matrix products (with the generated
//! epilogue applied to each block right after it is written) and splits
//! every kernel across threads with rayon. Its weight layout is its own
//! ([`layout`]).

use crate::backends::profile::Profile;
use crate::backends::{
    Backend, Cached, Compiled, KvStore, PartSource, Precision, PrepareOptions, Prepared,
    host_pairs, resident_copies,
};
use crate::error::{Result, RuntimeError};
use crate::exec::interpreter::{Bindings, NamedTensor, Outputs};
use crate::exec::program::{bind, bind_appending, const_data, empty_store_shapes, param_or_join};
use crate::tensor::{Tensor, TensorData};
use crate::weights::Weights;
use kiln_compiler::codegen::cranelift::{self as clif, CpuProgram};
use kiln_compiler::kernel::{BufferKind, KernelProgram};
use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

mod attention;
mod gemm;
pub mod layout;
mod qgemm;
mod run;
mod store;

pub use layout::{JitLayout, ParamReads};
pub use store::{AppendStore, JitStores};

fn err(m: impl Into<String>) -> RuntimeError {
    RuntimeError::Internal { message: m.into() }
}

/// The JIT (`--backend jit`, the default).
pub struct Jit;

impl Backend for Jit {
    fn name(&self) -> &'static str {
        "jit"
    }

    fn precisions(&self) -> &'static [Precision] {
        &[Precision::F32, Precision::Int8, Precision::Bf16]
    }

    fn prepare(
        &self,
        parts: Vec<PartSource<'_>>,
        weights: &mut Weights,
        opts: &PrepareOptions,
    ) -> Result<Prepared> {
        let mut graphs = Vec::with_capacity(parts.len());
        for p in parts {
            let program = p
                .program
                .ok_or_else(|| err(format!("the {} reached the JIT uncompiled", p.part)))?;
            let j = JitGraph::new(program, clif::Options::default())?;
            j.check_weights(weights)?;
            graphs.push((p.part, j));
        }
        let layout = {
            let mut refs: Vec<&mut JitGraph> = graphs.iter_mut().map(|(_, j)| j).collect();
            layout::arrange(&mut refs, weights, opts.precision)?
        };
        Ok(Prepared {
            parts: (graphs.into_iter())
                .map(|(p, j)| (p, Box::new(j) as Box<dyn Compiled>))
                .collect(),
            layout: Some(Box::new(layout)),
        })
    }
}

/// One kernel program compiled to native code; immutable, shared by every
/// thread.
pub struct JitGraph {
    program: KernelProgram,
    cpu: CpuProgram,
    /// Literal buffers, converted to their dtype once.
    consts: Vec<Option<TensorData>>,
    codegen_time: Duration,
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

impl JitGraph {
    /// Generate native code for `program` (already optimised and fused by
    /// the compiler). Weights are read in their canonical layout until
    /// [`Jit::prepare`] arranges them.
    pub fn new(program: KernelProgram, codegen: clif::Options) -> Result<JitGraph> {
        let t0 = Instant::now();
        let cpu = clif::compile(&program, codegen)
            .map_err(|e| err(format!("`{}`: code generation: {e}", program.name)))?;
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
        Ok(JitGraph {
            program,
            cpu,
            consts,
            codegen_time: t0.elapsed(),
            profile: Mutex::new(None),
            arenas: Mutex::new(Vec::new()),
            scratch,
            caches,
            transposed_gathers: BTreeSet::new(),
        })
    }

    /// The fused kernel program the native code was generated from.
    pub fn program(&self) -> &KernelProgram {
        &self.program
    }

    /// The Cranelift-compiled native code, one function per kernel.
    pub fn cpu(&self) -> &CpuProgram {
        &self.cpu
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

    /// Check that `weights` holds every parameter with its declared type.
    pub fn check_weights(&self, weights: &Weights) -> Result<()> {
        for b in &self.program.buffers {
            if let BufferKind::Param(name) = &b.kind {
                // A stored-format weight: its shape was checked against the
                // graph ([`Weights::check`]); decoding it here would cost
                // the memory it saves.
                let stored = |n: &str| weights.stored_only(n).is_some();
                let joined = self.program.joined.get(name);
                if stored(name) || joined.is_some_and(|ps| ps.iter().all(|(p, _)| stored(p))) {
                    continue;
                }
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
    pub fn empty_stores(&self, lengths: &Bindings, capacity: usize) -> Result<JitStores> {
        let p = &self.program;
        let shapes = empty_store_shapes(p, lengths)?;
        let mut stores = BTreeMap::new();
        for ((a, (_, name)), shape) in p.appends.iter().zip(&self.caches).zip(shapes) {
            stores.insert(name.clone(), AppendStore::new(&shape, a.axis, capacity)?);
        }
        Ok(JitStores(stores))
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
        stores: &mut JitStores,
    ) -> Result<Outputs> {
        let stores = &mut stores.0;
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
}

impl Compiled for JitGraph {
    fn program(&self) -> Option<&KernelProgram> {
        Some(&self.program)
    }

    fn run_host(&self, weights: &Weights, inputs: &[(&str, &Tensor)]) -> Result<Outputs> {
        self.run(weights, inputs)
    }

    fn appends(&self) -> &[(String, String)] {
        &self.caches
    }

    fn empty_cache(&self, lengths: &Bindings, capacity: usize) -> Result<Box<dyn KvStore>> {
        Ok(Box::new(self.empty_stores(lengths, capacity)?))
    }

    fn run_appending(
        &self,
        weights: &Weights,
        host: &[(&str, &Tensor)],
        state: &[(&str, &Cached)],
        cache: &mut dyn KvStore,
    ) -> Result<Outputs> {
        let stores = (cache.as_any_mut().downcast_mut::<JitStores>())
            .ok_or_else(|| err("a KV cache made by another backend reached the JIT"))?;
        let copies = resident_copies(state)?;
        JitGraph::run_appending(self, weights, host_pairs(host, state, &copies), stores)
    }

    fn enable_profiling(&self) {
        JitGraph::enable_profiling(self)
    }

    fn disable_profiling(&self) {
        JitGraph::disable_profiling(self)
    }

    fn profile(&self) -> Option<Profile> {
        JitGraph::profile(self)
    }

    fn codegen_time(&self) -> Duration {
        self.codegen_time
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
