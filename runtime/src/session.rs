//! Sessions: the stateful side of running a model. A [`Model`] is immutable
//! (graphs, weights, and their compiled code) and shared by any number of
//! threads; a [`Session`] owns one sequence's KV cache (and, for
//! encoder-decoder models, the encoder's cross K/V), so incremental decoding
//! feeds only the new tokens each step.

use crate::backends::jit::{JitGraph, ParamReads};
use crate::backends::{Backend, Precision};
use crate::cache::{Appender, Cached, KvStores};
use crate::interpreter::NamedTensor;
use crate::kernel_exec::{join_rows, split_rows};
pub use crate::sampling::argmax;
use crate::sampling::{Sampler, SamplingOptions};
use crate::{Outputs, Result, RuntimeError, Tensor, Weights, run};
use kiln_compiler::ir::{DType, Graph, Op};
use kiln_compiler::kernel::BufferKind;
use kiln_compiler::lower::Lowered;
use std::collections::{BTreeMap, BTreeSet};

/// A lowered model with its weights, run by one [`Backend`].
pub struct Model {
    pub lowered: Lowered,
    pub weights: Weights,
    backend: Backend,
    /// JIT code of the encoder and decoder graphs (JIT backend only).
    jit: [Option<JitGraph>; 2],
    /// GPU pipelines of the encoder and decoder graphs (wgpu backend only).
    #[cfg(feature = "wgpu")]
    gpu: [Option<crate::backends::wgpu::WgpuGraph>; 2],
    /// Matrix weights the JIT keeps transposed (`[in, out]`, the layout its
    /// GEMM library reads fastest), or transposed copies of them; undone
    /// when leaving the JIT.
    transposed: BTreeSet<String>,
    /// Bytes one step may hold besides the weights (see
    /// [`Model::set_memory_budget`]); `None` is no limit.
    memory_budget: Option<usize>,
    /// How the next [`Model::compile`] stores the weights.
    precision: Precision,
}

impl Model {
    /// A model run by the reference interpreter; [`Model::compile`] moves it
    /// to another backend.
    pub fn new(lowered: Lowered, weights: Weights) -> Self {
        Model {
            lowered,
            weights,
            backend: Backend::Reference,
            jit: [None, None],
            #[cfg(feature = "wgpu")]
            gpu: [None, None],
            transposed: BTreeSet::new(),
            memory_budget: None,
            precision: Precision::F32,
        }
    }

    /// Random weights for every parameter of every graph, from `seed`.
    pub fn random(lowered: Lowered, seed: u64) -> Result<Self> {
        let graphs: Vec<&Graph> = lowered.graphs().collect();
        let weights = Weights::random(&graphs, seed)?;
        Ok(Model::new(lowered, weights))
    }

    /// Prepare the model for `backend` (the JIT compiles every graph once
    /// and checks the weights against it).
    ///
    /// The JIT stores every weight that is only ever a matmul's right-hand
    /// side transposed, in place (no second copy): [`Model::weights`] then
    /// holds those tensors as `[in, out]`, until the model is compiled for
    /// another backend.
    pub fn compile(mut self, backend: Backend) -> Result<Self> {
        if self.precision == Precision::F16 && backend != Backend::Wgpu {
            return Err(RuntimeError::Unsupported(format!(
                "f16 weights are a wgpu option (`--backend wgpu`); the {backend} backend computes in f32: use `--precision f32`"
            )));
        }
        // Weights the JIT joined (merged projections) go back to their parts
        // once they are back in their canonical layout.
        let joined: Vec<(String, Vec<(String, usize)>)> = self
            .jit
            .iter()
            .flatten()
            .flat_map(|j| j.program().joined.clone())
            .collect();
        self.jit = [None, None];
        #[cfg(feature = "wgpu")]
        {
            self.gpu = [None, None];
        }
        for name in std::mem::take(&mut self.transposed) {
            if name.ends_with(TRANSPOSED_COPY) {
                self.weights.remove(&name);
            } else {
                transpose_in_place(&mut self.weights, &name)?;
            }
        }
        for (name, parts) in &joined {
            split_rows(&mut self.weights, name, parts)?;
        }
        if backend == Backend::Jit {
            let parts = [&self.lowered.encoder, &self.lowered.decoder];
            for (slot, g) in self.jit.iter_mut().zip(parts) {
                if let Some(g) = g {
                    let j = JitGraph::compile(g)?;
                    j.check_weights(&self.weights)?;
                    *slot = Some(j);
                }
            }
            self.join_weights()?;
            // Weights read only as transposed matmul operands or gathered
            // by rows (a tied embedding: the gather reads columns then)
            // are transposed in place; those also read otherwise get a
            // transposed copy, unless it would be large (over a quarter of
            // all weights).
            let mut reads: BTreeMap<String, ParamReads> = BTreeMap::new();
            for j in self.jit.iter().flatten() {
                for (name, r) in j.param_reads() {
                    *reads.entry(name).or_default() += r;
                }
            }
            let total: usize = self.weights.iter().map(|(_, t)| t.numel()).sum();
            let mut names = BTreeSet::new();
            for (name, r) in reads {
                if r.transposed_gemm == 0 {
                    continue;
                }
                let stored_as = if r.other == 0 {
                    transpose_in_place(&mut self.weights, &name)?;
                    name.clone()
                } else {
                    let size = self.weights.get(&name).map_or(usize::MAX, Tensor::numel);
                    if size > total / 4 {
                        continue;
                    }
                    let copy = format!("{name}{TRANSPOSED_COPY}");
                    let t = self.weights.get(&name).cloned().ok_or_else(|| {
                        RuntimeError::Graph(format!("missing parameter `{name}`"))
                    })?;
                    self.weights.insert(copy.clone(), t);
                    transpose_in_place(&mut self.weights, &copy)?;
                    copy
                };
                for j in self.jit.iter_mut().flatten() {
                    j.use_transposed(&name, &stored_as);
                }
                names.insert(stored_as);
            }
            self.transposed = names;
        }
        if backend == Backend::Wgpu {
            self.compile_wgpu()?;
        }
        self.backend = backend;
        Ok(self)
    }

    /// How [`Model::compile`] stores the weights: [`Precision::F16`] is a
    /// wgpu option (kept f32 on an adapter without `SHADER_F16`; see
    /// [`Model::f16_weights`]); compiling it for another backend is an error.
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// The precision set by [`Model::with_precision`] (f32 by default).
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Whether the compiled weights are stored as f16 (wgpu with
    /// [`Precision::F16`] on an adapter that has `SHADER_F16`).
    pub fn f16_weights(&self) -> bool {
        #[cfg(feature = "wgpu")]
        if let Some(w) = self.gpu.iter().flatten().next() {
            return w.f16_params();
        }
        false
    }

    /// Build the GPU pipelines of every graph and upload the weights once
    /// (shared by the encoder and decoder).
    #[cfg(feature = "wgpu")]
    fn compile_wgpu(&mut self) -> Result<()> {
        use crate::backends::wgpu::{DeviceWeights, WgpuGraph, WgpuOptions};
        let mut uploaded = DeviceWeights::default();
        let opts = WgpuOptions {
            f16_params: self.precision == Precision::F16,
            ..WgpuOptions::default()
        };
        let parts = [&self.lowered.encoder, &self.lowered.decoder];
        for (slot, g) in self.gpu.iter_mut().zip(parts) {
            if let Some(g) = g {
                *slot = Some(WgpuGraph::compile_with(
                    g,
                    &self.weights,
                    &mut uploaded,
                    opts,
                )?);
            }
        }
        Ok(())
    }

    #[cfg(not(feature = "wgpu"))]
    fn compile_wgpu(&mut self) -> Result<()> {
        Err(RuntimeError::Graph(
            "the wgpu backend is not built in (kiln-runtime's `wgpu` feature is off)".into(),
        ))
    }

    /// The GPU pipelines of the encoder (0) or decoder (1) graph, if compiled.
    #[cfg(feature = "wgpu")]
    pub fn wgpu_graph(&self, part: usize) -> Option<&crate::backends::wgpu::WgpuGraph> {
        self.gpu.get(part).and_then(Option::as_ref)
    }

    /// Build each joined weight of the JIT programs (merged projections)
    /// once, and drop the parts no program reads any more, so merging costs
    /// no memory.
    fn join_weights(&mut self) -> Result<()> {
        let mut joined = BTreeMap::new();
        let mut read = BTreeSet::new();
        for j in self.jit.iter().flatten() {
            joined.extend(j.program().joined.clone());
            for b in &j.program().buffers {
                if let BufferKind::Param(name) = &b.kind {
                    read.insert(name.clone());
                }
            }
        }
        for (name, parts) in &joined {
            if self.weights.get(name).is_none() {
                let t = join_rows(&self.weights, name, parts)?;
                self.weights.insert(name.clone(), t);
            }
        }
        for (part, _) in joined.values().flatten() {
            if !read.contains(part) {
                self.weights.remove(part);
            }
        }
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Refuse, with [`RuntimeError::Limit`], any step that would hold more
    /// than `bytes` besides the weights: the KV cache (see
    /// [`Model::step_bytes`]) plus the activations the compiled code plans
    /// at the step's lengths (its arena and outputs; the reference
    /// interpreter's temporaries are not counted). An appending cache's
    /// storage grows by doubling only as far as the budget allows.
    /// A batch too wide or a cache too long is then a clear error before
    /// anything is allocated, never an abort. `None` (the default): no limit.
    pub fn set_memory_budget(&mut self, bytes: Option<usize>) {
        self.memory_budget = bytes;
    }

    pub fn memory_budget(&self) -> Option<usize> {
        self.memory_budget
    }

    /// Bytes a step of graph `part` (0 encoder, 1 decoder) holds besides the
    /// weights at these lengths: the KV cache (decoder) and the compiled
    /// code's planned activations. Where the backend appends to the cache in
    /// place, the cache is its storage, here at exactly the rows after the
    /// step; elsewhere the step holds the past cache and the new one.
    pub fn step_bytes(
        &self,
        part: usize,
        batch: usize,
        seq: usize,
        past: usize,
        src: usize,
    ) -> Result<usize> {
        self.step_bytes_holding(part, batch, seq, past, src, past.saturating_add(seq))
    }

    /// [`Model::step_bytes`] with an appending cache's storage of `rows`
    /// rows.
    fn step_bytes_holding(
        &self,
        part: usize,
        batch: usize,
        seq: usize,
        past: usize,
        src: usize,
        rows: usize,
    ) -> Result<usize> {
        let decoder = self.lowered.decoder.as_ref().filter(|_| part == 1);
        let mut per_row = 0usize;
        if let Some(g) = decoder {
            for i in 0..count_layers(g) {
                let (kvh, hd) = cache_dims(g, i)?;
                per_row = per_row.saturating_add(
                    8usize
                        .saturating_mul(batch)
                        .saturating_mul(kvh)
                        .saturating_mul(hd),
                );
            }
        }
        let appending = decoder.is_some_and(|g| self.appending(g).is_some());
        let cache_rows = if appending {
            rows
        } else {
            // The past passed in and the present coming back.
            past.saturating_mul(2).saturating_add(seq)
        };
        let kv = per_row.saturating_mul(cache_rows);
        let lengths: BTreeMap<String, usize> =
            [("batch", batch), ("seq", seq), ("past", past), ("src", src)]
                .into_iter()
                .map(|(s, v)| (s.to_string(), v))
                .collect();
        let act = match self.program(part) {
            Some(p) => {
                // The presents are the cache, counted above.
                let env = |s: &str| lengths.get(s).copied();
                let presents: i64 = (p.outputs.iter())
                    .filter(|(n, _)| n.starts_with("present."))
                    .map(|(_, id)| p.buffers[*id].bytes().eval(&env).unwrap_or(0))
                    .sum();
                p.peak_bytes(&lengths)
                    .saturating_sub(usize::try_from(presents).unwrap_or(0))
            }
            None => 0,
        };
        Ok(kv.saturating_add(act))
    }

    /// Start (or restart) profiling graph `part` (0 encoder, 1 decoder) on
    /// a compiled backend: kernel times on the JIT, GPU timestamps on wgpu.
    pub fn enable_profiling(&self, part: usize) {
        #[cfg(feature = "wgpu")]
        if let Some(w) = self.wgpu_graph(part) {
            w.enable_profiling();
        }
        if let Some(j) = self.jit_graph(part) {
            j.enable_profiling();
        }
    }

    /// Stop profiling graph `part` (GPU runs go back to one pass for all
    /// kernels).
    pub fn disable_profiling(&self, part: usize) {
        #[cfg(feature = "wgpu")]
        if let Some(w) = self.wgpu_graph(part) {
            w.disable_profiling();
        }
        if let Some(j) = self.jit_graph(part) {
            j.disable_profiling();
        }
    }

    /// The profile of graph `part` since [`Model::enable_profiling`]
    /// (`None` when not enabled, on the interpreter, or on an adapter that
    /// cannot time kernels). Kernels are numbered as in
    /// [`Model::program`].
    pub fn profile(&self, part: usize) -> Option<crate::backends::profile::Profile> {
        #[cfg(feature = "wgpu")]
        if let Some(w) = self.wgpu_graph(part) {
            return w.profile();
        }
        self.jit_graph(part).and_then(JitGraph::profile)
    }

    /// The kernel program graph `part` runs on this model's backend, if
    /// compiled.
    pub fn program(&self, part: usize) -> Option<&kiln_compiler::kernel::KernelProgram> {
        #[cfg(feature = "wgpu")]
        if let Some(w) = self.gpu.get(part).and_then(Option::as_ref) {
            return Some(w.program());
        }
        self.jit_graph(part).map(JitGraph::program)
    }

    /// [`RuntimeError::Limit`] when a step is over the memory budget.
    fn check_budget(
        &self,
        part: usize,
        batch: usize,
        seq: usize,
        past: usize,
        src: usize,
    ) -> Result<()> {
        self.cache_rows_within_budget(part, batch, seq, past, src, past + seq)
            .map(|_| ())
    }

    /// The rows, at most `want` and at least the `past + seq` the step
    /// needs, that an appending cache's storage may grow to within the
    /// memory budget; [`RuntimeError::Limit`] when not even the rows needed
    /// fit.
    fn cache_rows_within_budget(
        &self,
        part: usize,
        batch: usize,
        seq: usize,
        past: usize,
        src: usize,
        want: usize,
    ) -> Result<usize> {
        let Some(budget) = self.memory_budget else {
            return Ok(want);
        };
        let need_rows = past + seq;
        let bytes = |rows| self.step_bytes_holding(part, batch, seq, past, src, rows);
        if bytes(want)? <= budget {
            return Ok(want);
        }
        let need = bytes(need_rows)?;
        if need > budget {
            let mb = |b: usize| b as f64 / (1 << 20) as f64;
            return Err(RuntimeError::Limit(format!(
                "{batch} row(s) of {seq} token(s) after {past} cached need {:.1} MiB besides the weights, over the memory budget of {:.1} MiB; use fewer rows or shorter sequences, or raise the budget",
                mb(need),
                mb(budget)
            )));
        }
        // Bytes grow with the rows: the most rows that fit.
        let (mut lo, mut hi) = (need_rows, want);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if bytes(mid)? <= budget {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// The decoder's compiled code when it appends to every cache in place
    /// (so a session keeps stores with spare rows, not tensors passed in and
    /// out).
    fn appending(&self, g: &Graph) -> Option<Appender<'_>> {
        let code = 'code: {
            #[cfg(feature = "wgpu")]
            if let Some(w) = &self.gpu[1] {
                break 'code Appender::Gpu(w);
            }
            Appender::Jit(self.jit[1].as_ref()?)
        };
        let presents = g
            .outputs
            .iter()
            .filter(|(n, _)| n.starts_with("present."))
            .count();
        (presents > 0 && code.caches() == presents).then_some(code)
    }

    /// The JIT code of the encoder (0) or decoder (1) graph, if compiled.
    pub fn jit_graph(&self, part: usize) -> Option<&JitGraph> {
        self.jit.get(part).and_then(Option::as_ref)
    }

    /// Run the encoder (`part` 0) or decoder (1) graph on this model's backend.
    fn run_part<N: NamedTensor>(
        &self,
        part: usize,
        g: &Graph,
        inputs: impl IntoIterator<Item = N>,
    ) -> Result<Outputs> {
        #[cfg(feature = "wgpu")]
        if let Some(w) = &self.gpu[part] {
            return w.run(inputs);
        }
        match &self.jit[part] {
            Some(j) => j.run(&self.weights, inputs),
            None => run(g, &self.weights, inputs),
        }
    }

    /// Run graph `part` on `host` inputs plus `state` (a session's KV cache
    /// or cross K/V). The outputs `keep` names come back as [`Cached`]
    /// state, the rest as [`Outputs`]. On the GPU, state stays in device
    /// memory between runs; elsewhere it is host memory.
    fn run_part_with(
        &self,
        part: usize,
        g: &Graph,
        host: &[(String, Tensor)],
        state: &[(String, &Cached)],
        keep: &dyn Fn(&str) -> bool,
    ) -> Result<(Outputs, Vec<(String, Cached)>)> {
        let mut pairs: Vec<(&str, &Tensor)> = host.iter().map(|(n, t)| (n.as_str(), t)).collect();
        #[cfg(feature = "wgpu")]
        if let Some(w) = &self.gpu[part] {
            let mut device = Vec::new();
            for (n, c) in state {
                match c {
                    Cached::Host(t) => pairs.push((n, t)),
                    Cached::Device(d) => device.push((n.as_str(), d)),
                }
            }
            let (out, kept) = w.run_resident(&pairs, &device, keep)?;
            let kept = kept.into_iter().map(|(n, d)| (n, Cached::Device(d)));
            return Ok((out, kept.collect()));
        }
        for (n, c) in state {
            pairs.push((n, c.host()?));
        }
        let mut out = self.run_part(part, g, pairs)?;
        let mut kept = Vec::new();
        for (name, _) in &g.outputs {
            if keep(name) {
                let t = out.remove(name).ok_or_else(|| {
                    RuntimeError::Graph(format!("graph produced no output `{name}`"))
                })?;
                kept.push((name.clone(), Cached::Host(t)));
            }
        }
        Ok((out, kept))
    }

    pub fn session(&self) -> Session<'_> {
        Session {
            model: self,
            cache: Vec::new(),
            stores: KvStores::None,
            past: 0,
            mask: Vec::new(),
            cross: None,
        }
    }

    /// Run the encoder graph over one sequence.
    pub fn encode(&self, tokens: &[i32]) -> Result<Outputs> {
        self.encode_batch(&[tokens])
    }

    /// Run the encoder over several sequences at once, right-padded to the
    /// longest with `attention_mask` zeros, so padding never changes a
    /// sequence's outputs.
    pub fn encode_batch(&self, seqs: &[&[i32]]) -> Result<Outputs> {
        let (g, inputs) = self.encoder_inputs(seqs)?;
        self.run_part(0, g, inputs)
    }

    /// The encoder graph and its inputs for `seqs` (checked, padded).
    fn encoder_inputs(&self, seqs: &[&[i32]]) -> Result<(&Graph, Vec<(String, Tensor)>)> {
        let g = self.lowered.encoder.as_ref().ok_or_else(|| {
            RuntimeError::Graph(format!("`{}` has no encoder", self.lowered.name))
        })?;
        let n = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
        if seqs.iter().any(|s| s.is_empty()) || n == 0 {
            return Err(RuntimeError::Graph(
                "encode: every sequence needs at least one token".into(),
            ));
        }
        for s in seqs {
            self.check_tokens(s, 0)?;
        }
        let b = seqs.len();
        self.check_budget(0, b, n, 0, n)?;
        let mut tokens = Vec::with_capacity(b * n);
        let mut mask = Vec::with_capacity(b * n);
        for s in seqs {
            tokens.extend_from_slice(s);
            tokens.extend(std::iter::repeat_n(0, n - s.len()));
            mask.extend(std::iter::repeat_n(1, s.len()));
            mask.extend(std::iter::repeat_n(0, n - s.len()));
        }
        let mut inputs = vec![
            ("tokens".to_string(), Tensor::from_i32(&[b, n], tokens)?),
            (
                "attention_mask".to_string(),
                Tensor::from_i32(&[b, n], mask)?,
            ),
        ];
        if declares_input(g, "token_types") {
            let types = Tensor::from_i32(&[b, n], vec![0; b * n])?;
            inputs.push(("token_types".to_string(), types));
        }
        Ok((g, inputs))
    }

    /// Token ids in the vocabulary, and `past + len` within `max_positions`.
    fn check_tokens(&self, tokens: &[i32], past: usize) -> Result<()> {
        let vocab = self.lowered.vocab_size;
        if let Some(t) = tokens.iter().find(|&&t| t < 0 || t as usize >= vocab) {
            return Err(RuntimeError::Limit(format!(
                "token id {t} is outside the vocabulary (0..{vocab})"
            )));
        }
        let max = self.lowered.max_positions;
        if past + tokens.len() > max {
            return Err(RuntimeError::Limit(format!(
                "sequence of {} tokens exceeds the model's max_positions = {max}",
                past + tokens.len()
            )));
        }
        Ok(())
    }
}

/// What to generate and when to stop.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: SamplingOptions,
    /// Generation ends after emitting any of these.
    pub stop_tokens: Vec<i32>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 32,
            sampling: SamplingOptions::default(),
            stop_tokens: Vec::new(),
        }
    }
}

fn declares_input(g: &Graph, name: &str) -> bool {
    g.inputs_decl()
        .iter()
        .any(|&i| matches!(&g.node(i).op, Op::Input { name: n } if n == name))
}

/// One sequence's decoding state.
pub struct Session<'m> {
    model: &'m Model,
    /// `(k, v)` per decoder block, `[batch, kv_heads, past, head_dim]`.
    cache: Vec<(Cached, Cached)>,
    /// Where the backend appends in place (JIT, wgpu), the KV cache
    /// instead: by `present` output name, storage with spare rows that each
    /// step writes only its new rows into.
    stores: KvStores,
    past: usize,
    /// Per row, 1 for each real cached token and 0 for left padding.
    mask: Vec<Vec<i32>>,
    /// Encoder-decoder: cross K/V per block and the source length.
    cross: Option<(Vec<(Cached, Cached)>, usize)>,
}

impl<'m> Session<'m> {
    /// Tokens already in the cache.
    pub fn past_len(&self) -> usize {
        self.past
    }

    /// Encoder-decoder: encode the source once; later [`Session::forward`]
    /// calls attend to it.
    pub fn set_source(&mut self, tokens: &[i32]) -> Result<()> {
        let (enc, inputs) = self.model.encoder_inputs(&[tokens])?;
        let is_cross = |n: &str| n.starts_with("cross.");
        let (_, kept) = self.model.run_part_with(0, enc, &inputs, &[], &is_cross)?;
        let kv = kv_pairs(kept, "cross", count_layers(self.decoder()?))?;
        self.cross = Some((kv, tokens.len()));
        Ok(())
    }

    /// Block `layer`'s cached `(k, v)`, `[batch, kv_heads, past, head_dim]`,
    /// as host tensors (read back from the device on the GPU backend).
    pub fn cached_kv(&self, layer: usize) -> Result<(Tensor, Tensor)> {
        if !self.stores.is_empty() {
            let get = |kv: &str| {
                let name = format!("present.{layer}.{kv}");
                self.stores.tensor(&name).unwrap_or_else(|| {
                    Err(RuntimeError::Graph(format!(
                        "no cache for block {layer} ({} cached tensors)",
                        self.stores.len()
                    )))
                })
            };
            return Ok((get("k")?, get("v")?));
        }
        let (k, v) = self.cache.get(layer).ok_or_else(|| {
            RuntimeError::Graph(format!(
                "no cache for block {layer} ({} cached blocks)",
                self.cache.len()
            ))
        })?;
        Ok((k.to_host()?, v.to_host()?))
    }

    /// Rows of cache storage per block when the backend appends to the
    /// cache in place (the JIT, and wgpu in device memory; grown by
    /// doubling, up to `max_positions`); `None` when each step passes the
    /// whole cache in and gets it back (the reference interpreter).
    pub fn cache_capacity(&self) -> Option<usize> {
        self.stores.capacity()
    }

    /// Whether the KV cache (and an encoder-decoder's cross K/V) lives in
    /// device memory (the GPU backend, after the first step), so decode
    /// steps do not copy it through the host.
    pub fn cache_on_device(&self) -> bool {
        let cross = self.cross.as_ref().map_or(&[][..], |(kv, _)| kv);
        let both = |(k, v): &(Cached, Cached)| k.on_device() && v.on_device();
        if !self.stores.is_empty() {
            return self.stores.on_device() && cross.iter().all(both);
        }
        !self.cache.is_empty() && self.cache.iter().chain(cross).all(both)
    }

    fn decoder(&self) -> Result<&'m Graph> {
        let model: &'m Model = self.model;
        model.lowered.decoder.as_ref().ok_or_else(|| {
            RuntimeError::Graph(format!("`{}` has no decoder", self.model.lowered.name))
        })
    }

    /// Feed new tokens; returns all decoder outputs for them (`logits`
    /// `[1, tokens, vocab]`, `hidden`) and extends the KV cache.
    pub fn forward(&mut self, tokens: &[i32]) -> Result<Outputs> {
        self.forward_batch(&[tokens])
    }

    /// Feed new tokens for a batch of sequences. The first call fixes the
    /// batch: rows of different lengths are left-padded (masked, and not
    /// counted in positions) so each row's last column is its last token.
    /// Later calls feed the same number of tokens to every row. Outputs are
    /// `[rows, columns, …]`.
    pub fn forward_batch(&mut self, rows: &[&[i32]]) -> Result<Outputs> {
        let g = self.decoder()?;
        let n = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        if rows.is_empty() || rows.iter().any(|r| r.is_empty()) {
            return Err(RuntimeError::Graph(
                "forward: every row needs at least one token".into(),
            ));
        }
        if self.past > 0 && (rows.len() != self.mask.len() || rows.iter().any(|r| r.len() != n)) {
            return Err(RuntimeError::Graph(format!(
                "forward: this session decodes {} rows; later calls must give every row the same number of tokens",
                self.mask.len()
            )));
        }
        if rows.len() > 1 && self.cross.is_some() {
            return Err(RuntimeError::Graph(
                "batched decoding of encoder-decoder models is not supported; use one session per sequence".into(),
            ));
        }
        for r in rows {
            self.model.check_tokens(r, self.past + n - r.len())?;
        }
        let batch = rows.len();
        let src = self.cross.as_ref().map_or(0, |(_, s)| *s);
        let layers = count_layers(g);
        let appending = self.model.appending(g);
        let total = self.past + n;
        let max = self.model.lowered.max_positions;
        // An appending cache's storage after this step: what it holds, or
        // (from 16 rows) double, up to `max_positions`, cut short by the
        // memory budget.
        let room = if self.past == 0 {
            0
        } else {
            self.stores.capacity().unwrap_or(0)
        };
        let want = if appending.is_none() || room >= total {
            room.max(total)
        } else if room == 0 {
            total.next_power_of_two().max(16).min(max).max(total)
        } else {
            (2 * room).min(max).max(total)
        };
        let hold = self
            .model
            .cache_rows_within_budget(1, batch, n, self.past, src, want)?;
        if self.past == 0 {
            // The first step fixes the batch (again, if an earlier first
            // step failed).
            self.cache.clear();
            self.stores = KvStores::None;
            self.mask = vec![Vec::new(); batch];
            match appending {
                Some(j) => {
                    let lengths = BTreeMap::from([("batch".to_string(), batch)]);
                    self.stores = j.empty_stores(&lengths, hold)?;
                }
                None => {
                    for i in 0..layers {
                        let (kvh, hd) = cache_dims(g, i)?;
                        let empty = Tensor::zeros(DType::F32, &[batch, kvh, 0, hd]);
                        self.cache
                            .push((Cached::Host(empty.clone()), Cached::Host(empty)));
                    }
                }
            }
        }
        // Nothing in `self` changes until the step has succeeded, so a
        // failed call leaves the session as it was.
        let mut state: Vec<(String, &Cached)> = Vec::new();
        let mut encoder_mask = None;
        if declares_input(g, "encoder_mask") {
            let (kv, src) = self.cross.as_ref().ok_or_else(|| {
                RuntimeError::Graph(
                    "encoder-decoder model: call set_source with the source tokens before forward"
                        .into(),
                )
            })?;
            for (i, (k, v)) in kv.iter().enumerate() {
                state.push((format!("cross.{i}.k"), k));
                state.push((format!("cross.{i}.v"), v));
            }
            encoder_mask = Some(Tensor::from_i32(&[1, *src], vec![1; *src])?);
        }
        for (i, (k, v)) in self.cache.iter().enumerate() {
            state.push((format!("past.{i}.k"), k));
            state.push((format!("past.{i}.v"), v));
        }
        let mut tokens = Vec::with_capacity(batch * n);
        let mut new_mask = self.mask.clone();
        for (r, m) in rows.iter().zip(new_mask.iter_mut()) {
            let pad = n - r.len();
            tokens.extend(std::iter::repeat_n(0, pad));
            tokens.extend_from_slice(r);
            m.extend(std::iter::repeat_n(0, pad));
            m.extend(std::iter::repeat_n(1, r.len()));
        }
        let mask: Vec<i32> = new_mask.iter().flatten().copied().collect();
        let mut inputs = vec![
            ("tokens".to_string(), Tensor::from_i32(&[batch, n], tokens)?),
            (
                "attention_mask".to_string(),
                Tensor::from_i32(&[batch, total], mask)?,
            ),
        ];
        inputs.extend(encoder_mask.map(|m| ("encoder_mask".to_string(), m)));
        if let Some(j) = appending {
            // Growing keeps the rows in use, and a step writes only past
            // them, so a failed step still changes nothing the session sees.
            self.stores.reserve(hold)?;
            let pairs: Vec<(&str, &Tensor)> = inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
            let out = j.run(&self.model.weights, pairs, &state, &mut self.stores)?;
            self.mask = new_mask;
            self.past = total;
            return Ok(out);
        }
        // The cache is borrowed by the step; only on success do the
        // `present` outputs replace it, so a failed call changes nothing.
        let is_present = |n: &str| n.starts_with("present.");
        let (out, kept) = self
            .model
            .run_part_with(1, g, &inputs, &state, &is_present)?;
        self.cache = kv_pairs(kept, "present", layers)?;
        self.mask = new_mask;
        self.past = total;
        Ok(out)
    }

    /// Greedy decoding: feed `prompt`, then up to `max_new` argmax tokens one
    /// step at a time through the KV cache (stopping after `stop`).
    pub fn generate_greedy(
        &mut self,
        prompt: &[i32],
        max_new: usize,
        stop: Option<i32>,
    ) -> Result<Vec<i32>> {
        let opts = GenerateOptions {
            max_new_tokens: max_new,
            stop_tokens: stop.into_iter().collect(),
            ..GenerateOptions::default()
        };
        self.generate(prompt, &opts, &mut |_| true)
    }

    /// Feed `prompt`, then pick tokens per `opts`, calling `on_token` with
    /// each as soon as it is chosen (return false to stop early). Returns the
    /// generated ids. Stops at `max_new_tokens`, a stop token, or the model's
    /// `max_positions`.
    pub fn generate(
        &mut self,
        prompt: &[i32],
        opts: &GenerateOptions,
        on_token: &mut dyn FnMut(i32) -> bool,
    ) -> Result<Vec<i32>> {
        let mut out = self.generate_batch(&[prompt], opts, &mut |_, id| on_token(id))?;
        Ok(out.pop().unwrap_or_default())
    }

    /// Generate for several prompts at once (left-padded into one batch).
    /// `on_token(row, id)` sees each row's tokens as they are chosen; a row
    /// ends at a stop token (or when `on_token` returns false) while the
    /// others go on. Each row samples from its own seeded generator, so a
    /// row's output equals generating it alone.
    pub fn generate_batch(
        &mut self,
        prompts: &[&[i32]],
        opts: &GenerateOptions,
        on_token: &mut dyn FnMut(usize, i32) -> bool,
    ) -> Result<Vec<Vec<i32>>> {
        let mut samplers: Vec<Sampler> = prompts
            .iter()
            .map(|_| Sampler::new(opts.sampling.clone()))
            .collect();
        let mut out = vec![Vec::new(); prompts.len()];
        let mut done = vec![false; prompts.len()];
        let mut feed: Vec<Vec<i32>> = prompts.iter().map(|p| p.to_vec()).collect();
        let width = |f: &[Vec<i32>]| f.iter().map(Vec::len).max().unwrap_or(0);
        for _ in 0..opts.max_new_tokens {
            if done.iter().all(|d| *d)
                || self.past + width(&feed) > self.model.lowered.max_positions
            {
                break;
            }
            let rows: Vec<&[i32]> = feed.iter().map(Vec::as_slice).collect();
            let o = self.forward_batch(&rows)?;
            let logits = take(&o, "logits")?;
            let shape = logits.shape().to_vec();
            let (cols, v) = (shape[1], shape[2]);
            let data = logits.to_f32_vec();
            for r in 0..prompts.len() {
                let last = &data[(r * cols + cols - 1) * v..(r * cols + cols) * v];
                let next = samplers[r].sample(last) as i32;
                if !done[r] {
                    out[r].push(next);
                    if !on_token(r, next) || opts.stop_tokens.contains(&next) {
                        done[r] = true;
                    }
                }
                feed[r] = vec![next];
            }
        }
        Ok(out)
    }
}

/// Suffix of the JIT's transposed copies of weights that are also read
/// untransposed (never a canonical parameter name).
const TRANSPOSED_COPY: &str = "#transposed";

/// Replace a rank-2 f32 weight by its transpose.
fn transpose_in_place(w: &mut Weights, name: &str) -> Result<()> {
    let t = w
        .remove(name)
        .ok_or_else(|| RuntimeError::Graph(format!("missing parameter `{name}`")))?;
    let (r, c) = match t.shape() {
        [r, c] => (*r, *c),
        s => {
            return Err(RuntimeError::Graph(format!(
                "parameter `{name}`: cannot transpose shape {s:?}"
            )));
        }
    };
    let src = t
        .as_f32()
        .ok_or_else(|| RuntimeError::Graph(format!("parameter `{name}` is not f32")))?;
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

fn take(out: &Outputs, name: &str) -> Result<Tensor> {
    out.get(name)
        .cloned()
        .ok_or_else(|| RuntimeError::Graph(format!("graph produced no output `{name}`")))
}

fn count_layers(g: &Graph) -> usize {
    g.outputs
        .iter()
        .filter(|(n, _)| n.starts_with("present.") && n.ends_with(".k"))
        .count()
}

/// `({prefix}.{i}.k, {prefix}.{i}.v)` for each of `layers` blocks, from a
/// run's kept outputs.
fn kv_pairs(
    kept: Vec<(String, Cached)>,
    prefix: &str,
    layers: usize,
) -> Result<Vec<(Cached, Cached)>> {
    let mut kept: BTreeMap<String, Cached> = kept.into_iter().collect();
    let mut take = |name: String| {
        kept.remove(&name)
            .ok_or_else(|| RuntimeError::Graph(format!("graph produced no output `{name}`")))
    };
    (0..layers)
        .map(|i| {
            Ok((
                take(format!("{prefix}.{i}.k"))?,
                take(format!("{prefix}.{i}.v"))?,
            ))
        })
        .collect()
}

/// `(kv_heads, head_dim)` of block `i`'s cache, from the `past.{i}.k` input.
fn cache_dims(g: &Graph, i: usize) -> Result<(usize, usize)> {
    let name = format!("past.{i}.k");
    let id = g
        .inputs_decl()
        .into_iter()
        .find(|&n| matches!(&g.node(n).op, Op::Input { name: x } if *x == name))
        .ok_or_else(|| RuntimeError::Graph(format!("decoder declares no input `{name}`")))?;
    let s = &g.node(id).ty.shape;
    match (
        s.get(1).and_then(|d| d.as_const()),
        s.get(3).and_then(|d| d.as_const()),
    ) {
        (Some(k), Some(h)) => Ok((k, h)),
        _ => Err(RuntimeError::Graph(format!(
            "`{name}` has no constant kv_heads/head_dim"
        ))),
    }
}
