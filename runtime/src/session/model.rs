//! [`Model`]: a module's graphs, their weights and the parts one backend
//! compiled from them, immutable and shared by any number of sessions.

use super::budget::count_layers;
use crate::backends::profile::Profile;
use crate::backends::{
    self, Backend, Cached, Compiled, PartSource, Precision, PrepareOptions, Prepared, WeightLayout,
};
use crate::exec::interpreter::Outputs;
use crate::{Result, RuntimeError, Tensor, Weights};
use kiln_compiler::compile::{CompileOptions, compile_graph};
use kiln_compiler::ir::{Graph, Module, Op, Part};
use kiln_compiler::kernel::KernelProgram;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A lowered model with its weights, run by one [`Backend`].
pub struct Model {
    pub lowered: Module,
    pub weights: Weights,
    backend: &'static dyn Backend,
    /// The compiled parts, by name.
    parts: BTreeMap<Part, Box<dyn Compiled>>,
    /// How the backend rearranged the weights (undone when leaving it).
    layout: Option<Box<dyn WeightLayout>>,
    /// Bytes one step may hold besides the weights (see
    /// [`Model::set_memory_budget`]); `None` is no limit.
    pub(super) memory_budget: Option<usize>,
    /// How the next [`Model::compile`] stores the weights.
    precision: Precision,
    /// What the compiler does before a backend gets the programs.
    options: CompileOptions,
    /// How long the last [`Model::compile`] spent in the compiler (passes
    /// and fusion of every part).
    compiler_time: Duration,
}

impl Model {
    /// A model run by the reference interpreter; [`Model::compile`] moves it
    /// to another backend.
    pub fn new(lowered: Module, weights: Weights) -> Self {
        let parts = (lowered.parts())
            .map(|(p, g)| {
                let part = backends::reference::GraphPart::new(g);
                (p, Box::new(part) as Box<dyn Compiled>)
            })
            .collect();
        Model {
            lowered,
            weights,
            backend: backends::reference(),
            parts,
            layout: None,
            memory_budget: None,
            precision: Precision::Stored,
            options: CompileOptions::default(),
            compiler_time: Duration::ZERO,
        }
    }

    /// Random weights for every parameter of every graph, from `seed`.
    pub fn random(lowered: Module, seed: u64) -> Result<Self> {
        let graphs: Vec<&Graph> = lowered.graphs().collect();
        let weights = Weights::random(&graphs, seed)?;
        Ok(Model::new(lowered, weights))
    }

    /// Prepare the model for `backend`: the compiler turns each part into
    /// its optimised kernel program (per [`Model::with_options`]), and the
    /// backend compiles the programs and arranges the weights in its own
    /// layout (the JIT keeps `nn.Linear` weights transposed, in place:
    /// [`Model::weights`] then holds them as `[in, out]` until the model is
    /// compiled for another backend).
    pub fn compile(mut self, backend: &'static dyn Backend) -> Result<Self> {
        if self.precision != Precision::Stored && !backend.precisions().contains(&self.precision) {
            let offered: Vec<String> = backend.precisions().iter().map(|p| p.to_string()).collect();
            return Err(RuntimeError::Unsupported(format!(
                "{} weights are not offered by the {} backend (it offers {}): use `--precision {}`{}",
                self.precision,
                backend.name(),
                offered.join(", "),
                backend.precisions()[0],
                match self.precision {
                    Precision::F16 => ", or `--backend wgpu` for f16",
                    Precision::Int8 | Precision::Bf16 => ", or `--backend jit` for int8 and bf16",
                    _ => "",
                }
            )));
        }
        self.parts.clear();
        if let Some(layout) = self.layout.take() {
            layout.restore(&mut self.weights)?;
        }
        if self.precision != Precision::Stored {
            // Only stored precision reads weights in their stored formats.
            self.weights.decode_all()?;
        }
        let mut sources = Vec::new();
        let started = Instant::now();
        for (part, g) in self.lowered.parts() {
            let program = if backend.runs_programs() {
                Some(compile_graph(g, &self.options)?)
            } else {
                None
            };
            sources.push(PartSource {
                part,
                graph: g,
                program,
            });
        }
        self.compiler_time = started.elapsed();
        let opts = PrepareOptions {
            precision: self.precision,
        };
        let Prepared { parts, layout } = backend.prepare(sources, &mut self.weights, &opts)?;
        self.parts = parts.into_iter().collect();
        self.layout = layout;
        self.backend = backend;
        Ok(self)
    }

    /// Compile for the backend named `name` ([`backends::get`]).
    pub fn compile_named(self, name: &str) -> Result<Self> {
        let b = backends::get(name)?;
        self.compile(b)
    }

    /// What the compiler does before the next [`Model::compile`] hands the
    /// programs to a backend (opt level, passes and rewrites disabled).
    pub fn with_options(mut self, options: CompileOptions) -> Self {
        self.options = options;
        self
    }

    /// The options set by [`Model::with_options`].
    pub fn options(&self) -> &CompileOptions {
        &self.options
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
        self.parts.values().any(|p| p.f16_weights())
    }

    /// Lowered graphs → runnable code: the compiler's passes and fusion of
    /// every part plus the backend's code generation (not the weights'
    /// preparation or upload).
    pub fn compile_time(&self) -> Duration {
        self.compiler_time
            + self
                .parts
                .values()
                .map(|p| p.codegen_time())
                .sum::<Duration>()
    }

    /// The backend the model runs on.
    pub fn backend(&self) -> &'static dyn Backend {
        self.backend
    }

    /// The compiled `part`, if the model has it.
    pub fn part(&self, part: Part) -> Option<&dyn Compiled> {
        self.parts.get(&part).map(|b| &**b)
    }

    /// The compiled `part` as the backend's own type (`JitGraph`,
    /// `WgpuGraph`), when it is one.
    pub fn part_as<T: 'static>(&self, part: Part) -> Option<&T> {
        self.part(part).and_then(|c| c.as_any().downcast_ref::<T>())
    }

    /// The kernel program `part` runs on this model's backend (`None` on
    /// the reference interpreter).
    pub fn program(&self, part: Part) -> Option<&KernelProgram> {
        self.part(part).and_then(|c| c.program())
    }

    /// Start (or restart) profiling `part` (kernel times on the JIT, GPU
    /// timestamps on wgpu; nothing on the interpreters).
    pub fn enable_profiling(&self, part: Part) {
        if let Some(c) = self.part(part) {
            c.enable_profiling();
        }
    }

    /// Stop profiling `part`.
    pub fn disable_profiling(&self, part: Part) {
        if let Some(c) = self.part(part) {
            c.disable_profiling();
        }
    }

    /// The profile of `part` since [`Model::enable_profiling`] (`None` when
    /// not enabled, or where the backend cannot time kernels). Kernels are
    /// numbered as in [`Model::program`].
    pub fn profile(&self, part: Part) -> Option<Profile> {
        self.part(part).and_then(|c| c.profile())
    }

    /// The graph of `part`, or a [`RuntimeError::Request`] naming what the
    /// model has instead.
    pub(super) fn graph(&self, part: Part) -> Result<&Graph> {
        self.lowered.graph(part).ok_or_else(|| {
            let has: Vec<&str> = self.lowered.parts().map(|(p, _)| p.as_str()).collect();
            RuntimeError::Request(format!(
                "`{}` has no {part} (it has: {}){}",
                self.lowered.name,
                has.join(", "),
                match part {
                    Part::Encoder => "; use a session to run the decoder",
                    Part::Decoder => "; encode the sequence instead",
                }
            ))
        })
    }

    fn compiled(&self, part: Part) -> Result<&dyn Compiled> {
        self.graph(part)?;
        self.part(part).ok_or_else(|| RuntimeError::Internal {
            message: format!("the {part} was not compiled for {}", self.backend.name()),
        })
    }

    /// The decoder's compiled part when it appends to every cache in place
    /// (so a session keeps a [`crate::backends::KvStore`], not tensors
    /// passed in and out).
    pub(super) fn appending(&self) -> Option<&dyn Compiled> {
        let g = self.lowered.decoder.as_ref()?;
        let c = self.part(Part::Decoder)?;
        let presents = (g.outputs.iter())
            .filter(|(n, _)| n.starts_with("present."))
            .count();
        (presents > 0 && c.appends().len() == presents).then_some(c)
    }

    /// Run `part` on host `inputs`.
    pub(super) fn run_part(&self, part: Part, inputs: &[(String, Tensor)]) -> Result<Outputs> {
        let pairs: Vec<(&str, &Tensor)> = inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
        self.compiled(part)?.run_host(&self.weights, &pairs)
    }

    /// Run `part` on `host` inputs plus `state` (a session's KV cache or
    /// cross K/V). The outputs `keep` names come back as [`Cached`] state,
    /// the rest as [`Outputs`].
    pub(super) fn run_part_with(
        &self,
        part: Part,
        host: &[(String, Tensor)],
        state: &[(String, &Cached)],
        keep: &dyn Fn(&str) -> bool,
    ) -> Result<(Outputs, Vec<(String, Cached)>)> {
        let pairs: Vec<(&str, &Tensor)> = host.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let state: Vec<(&str, &Cached)> = state.iter().map(|(n, c)| (n.as_str(), *c)).collect();
        self.compiled(part)?
            .run(&self.weights, &pairs, &state, keep)
    }

    /// A new decoding session (its own KV cache).
    pub fn session(&self) -> super::Session<'_> {
        super::Session::new(self)
    }

    /// Run the encoder graph over one sequence.
    pub fn encode(&self, tokens: &[i32]) -> Result<Outputs> {
        self.encode_batch(&[tokens])
    }

    /// Run the encoder over several sequences at once, right-padded to the
    /// longest with `attention_mask` zeros, so padding never changes a
    /// sequence's outputs.
    pub fn encode_batch(&self, seqs: &[&[i32]]) -> Result<Outputs> {
        let inputs = self.encoder_inputs(seqs)?;
        self.run_part(Part::Encoder, &inputs)
    }

    /// The encoder's inputs for `seqs` (checked, padded).
    pub(super) fn encoder_inputs(&self, seqs: &[&[i32]]) -> Result<Vec<(String, Tensor)>> {
        let g = self.graph(Part::Encoder)?;
        let n = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
        if seqs.iter().any(|s| s.is_empty()) || n == 0 {
            return Err(RuntimeError::Request(
                "encode: every sequence needs at least one token".into(),
            ));
        }
        for s in seqs {
            self.check_tokens(s, 0)?;
        }
        let b = seqs.len();
        self.check_budget(Part::Encoder, b, n, 0, n)?;
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
        Ok(inputs)
    }

    /// Token ids in the vocabulary, and `past + len` within `max_positions`.
    pub(super) fn check_tokens(&self, tokens: &[i32], past: usize) -> Result<()> {
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

    /// Decoder blocks (two caches each).
    pub(super) fn decoder_layers(&self) -> usize {
        self.lowered.decoder.as_ref().map_or(0, count_layers)
    }
}

/// Whether `g` declares an input `name`.
pub(super) fn declares_input(g: &Graph, name: &str) -> bool {
    g.inputs_decl()
        .iter()
        .any(|&i| matches!(&g.node(i).op, Op::Input { name: n } if n == name))
}
