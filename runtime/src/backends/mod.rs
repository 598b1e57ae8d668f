//! The runtime's waist: what every executor of a model implements, and the
//! registry that names them.
//!
//! A [`Backend`] prepares the parts of a model (its encoder and decoder
//! graphs, each with the kernel program the compiler made of it:
//! [`kiln_compiler::compile`]) together with the weights, arranging those in
//! the layout it reads fastest, and returns one [`Compiled`] part each. A
//! compiled part runs one step; where it can append to the KV cache in
//! place it also makes empty [`KvStore`]s and runs appending to them.
//! Sessions ([`crate::session`]) see only these traits, so a backend is one
//! folder here plus one line in [`registry`].
//!
//! Backends never run graph passes or fusion: they receive the optimised
//! program, so `--opt-level` and `--disable-pass` reach every backend alike.

pub mod jit;
pub mod kernel_ir;
pub mod machine;
pub mod profile;
pub mod reference;
#[cfg(feature = "wgpu")]
pub mod wgpu;

use crate::exec::interpreter::{Bindings, Outputs};
use crate::{Result, RuntimeError, Tensor, Weights};
use kiln_compiler::ir::{DType, Graph, Part};
use kiln_compiler::kernel::KernelProgram;
use profile::Profile;
use std::any::Any;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// Every backend this build has, in the order `--backend` lists them. A new
/// backend joins by one line here (and then runs the shared conformance
/// suite, `tests/backends.rs`, which iterates this list).
static REGISTRY: &[&dyn Backend] = &[
    &jit::Jit,
    &reference::Reference,
    &kernel_ir::KernelIr,
    #[cfg(feature = "wgpu")]
    &wgpu::Wgpu,
];

/// Every backend this build has ([`REGISTRY`]'s order).
pub fn registry() -> &'static [&'static dyn Backend] {
    REGISTRY
}

/// The backend named `name` (`jit`, `reference`, `kernel-ir`, `wgpu`).
pub fn get(name: &str) -> Result<&'static dyn Backend> {
    (registry().iter().copied())
        .find(|b| b.name() == name)
        .ok_or_else(|| RuntimeError::UnknownBackend {
            name: name.to_string(),
            known: names().join(", "),
        })
}

/// The names of [`registry`], in order.
pub fn names() -> Vec<&'static str> {
    registry().iter().map(|b| b.name()).collect()
}

/// The backend models run on unless told otherwise: the JIT.
pub fn default_backend() -> &'static dyn Backend {
    &jit::Jit
}

/// The reference interpreter (the oracle).
pub fn reference() -> &'static dyn Backend {
    &reference::Reference
}

/// A backend by name, for command-line flags: `"jit".parse::<BackendRef>()`.
#[derive(Clone, Copy)]
pub struct BackendRef(pub &'static dyn Backend);

impl FromStr for BackendRef {
    type Err = RuntimeError;
    fn from_str(s: &str) -> Result<Self> {
        get(s).map(BackendRef)
    }
}

impl fmt::Debug for BackendRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name())
    }
}

impl fmt::Display for BackendRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name())
    }
}

impl PartialEq for BackendRef {
    fn eq(&self, other: &Self) -> bool {
        self.0.name() == other.0.name()
    }
}

impl Default for BackendRef {
    fn default() -> Self {
        BackendRef(default_backend())
    }
}

/// One part of a model handed to [`Backend::prepare`]: its graph as
/// lowered and, for backends that run programs, the compiled program.
pub struct PartSource<'a> {
    /// Which part.
    pub part: Part,
    /// The graph as lowered (what the reference interpreter runs).
    pub graph: &'a Graph,
    /// The optimised kernel program ([`Backend::runs_programs`] backends).
    pub program: Option<KernelProgram>,
}

/// What [`Backend::prepare`] is asked for beyond the parts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrepareOptions {
    /// How the weights are stored ([`Backend::precisions`] lists what the
    /// backend offers).
    pub precision: Precision,
}

/// The prepared parts of one model, and how to give its weights back.
pub struct Prepared {
    /// One compiled part per part given, in the same order.
    pub parts: Vec<(Part, Box<dyn Compiled>)>,
    /// Where the backend rearranged the weights (transposed, joined), what
    /// puts them back in the canonical layout.
    pub layout: Option<Box<dyn WeightLayout>>,
}

/// An executor of models.
pub trait Backend: Send + Sync {
    /// The name `--backend` takes.
    fn name(&self) -> &'static str;

    /// Whether it can run here (a GPU backend needs an adapter); the error
    /// says what is missing.
    fn available(&self) -> Result<()> {
        Ok(())
    }

    /// Whether the parts it prepares need their kernel programs (the
    /// reference interpreter runs the graphs themselves).
    fn runs_programs(&self) -> bool {
        true
    }

    /// The weight precisions it offers (f32 always first).
    fn precisions(&self) -> &'static [Precision] {
        &[Precision::F32]
    }

    /// Prepare every part with `weights`, which it may rearrange in place
    /// into its own layout (then [`Prepared::layout`] undoes that).
    fn prepare(
        &self,
        parts: Vec<PartSource<'_>>,
        weights: &mut Weights,
        opts: &PrepareOptions,
    ) -> Result<Prepared>;
}

impl fmt::Debug for dyn Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for dyn Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Puts weights a backend rearranged back into the canonical layout (when
/// the model moves to another backend).
pub trait WeightLayout: Send + Sync {
    /// Undo the rearrangement in `weights`.
    fn restore(&self, weights: &mut Weights) -> Result<()>;
}

/// One compiled part (a graph with its code), immutable and shared by every
/// session of the model.
pub trait Compiled: Send + Sync {
    /// The kernel program it runs (`None` for the graph interpreter).
    fn program(&self) -> Option<&KernelProgram> {
        None
    }

    /// Run once on host `inputs` (every declared input by name).
    fn run_host(&self, weights: &Weights, inputs: &[(&str, &Tensor)]) -> Result<Outputs>;

    /// Run once on `host` inputs plus `state` (a session's KV cache or
    /// cross K/V, possibly resident on a device). The outputs `keep` names
    /// come back as [`Cached`] state, the rest as [`Outputs`]. Host
    /// backends need not override it.
    fn run(
        &self,
        weights: &Weights,
        host: &[(&str, &Tensor)],
        state: &[(&str, &Cached)],
        keep: &dyn Fn(&str) -> bool,
    ) -> Result<(Outputs, Vec<(String, Cached)>)> {
        run_on_host(self, weights, host, state, keep)
    }

    /// `(past input, present output)` of every cache it appends to in place
    /// ([`Compiled::run_appending`]); empty where a session passes its whole
    /// cache in and takes it back.
    fn appends(&self) -> &[(String, String)] {
        &[]
    }

    /// Empty cache storage for [`Compiled::run_appending`] at `lengths`
    /// (`batch`), with room for `capacity` rows per cache.
    fn empty_cache(&self, lengths: &Bindings, capacity: usize) -> Result<Box<dyn KvStore>> {
        let _ = (lengths, capacity);
        Err(RuntimeError::Unsupported(
            "this backend does not keep a KV cache in place".into(),
        ))
    }

    /// Run once appending to `cache` (made by [`Compiled::empty_cache`] of
    /// this part, holding rows for the run): `host` and `state` omit the
    /// appended caches' past inputs, the outputs their presents. The store
    /// changes only past its rows in use until the run has succeeded.
    fn run_appending(
        &self,
        weights: &Weights,
        host: &[(&str, &Tensor)],
        state: &[(&str, &Cached)],
        cache: &mut dyn KvStore,
    ) -> Result<Outputs> {
        let _ = (weights, host, state, cache);
        Err(RuntimeError::Unsupported(
            "this backend does not keep a KV cache in place".into(),
        ))
    }

    /// Start (or restart) collecting a [`Profile`] of every run.
    fn enable_profiling(&self) {}

    /// Stop profiling (runs are timed as they run unprofiled).
    fn disable_profiling(&self) {}

    /// The profile since [`Compiled::enable_profiling`], where the backend
    /// can measure one.
    fn profile(&self) -> Option<Profile> {
        None
    }

    /// Time spent generating code (after the compiler's passes and fusion).
    fn codegen_time(&self) -> Duration {
        Duration::ZERO
    }

    /// Whether the weights are stored as f16.
    fn f16_weights(&self) -> bool {
        false
    }

    /// What it runs on, for reports (`None`: this machine's CPU).
    fn device(&self) -> Option<String> {
        None
    }

    /// The concrete type, for backend-specific inspection (generated
    /// code, shaders).
    fn as_any(&self) -> &dyn Any;
}

/// [`Compiled::run`] for a backend whose state lives on the host.
pub fn run_on_host<C: Compiled + ?Sized>(
    c: &C,
    weights: &Weights,
    host: &[(&str, &Tensor)],
    state: &[(&str, &Cached)],
    keep: &dyn Fn(&str) -> bool,
) -> Result<(Outputs, Vec<(String, Cached)>)> {
    let copies = resident_copies(state)?;
    let pairs = host_pairs(host, state, &copies);
    let mut out = c.run_host(weights, &pairs)?;
    let names: Vec<String> = out.iter().map(|(n, _)| n.to_string()).collect();
    let mut kept = Vec::new();
    for name in names {
        if keep(&name) {
            let t = out.remove(&name).ok_or_else(|| RuntimeError::Internal {
                message: format!("output `{name}` vanished"),
            })?;
            kept.push((name, Cached::Host(t)));
        }
    }
    Ok((out, kept))
}

/// Host copies of the resident tensors among `state`.
pub fn resident_copies<'a>(state: &[(&'a str, &Cached)]) -> Result<Vec<(&'a str, Tensor)>> {
    (state.iter())
        .filter_map(|(n, c)| match c {
            Cached::Host(_) => None,
            Cached::Resident(r) => Some(r.to_host().map(|t| (*n, t))),
        })
        .collect()
}

/// `host` inputs, the host tensors of `state` and `copies` (of its
/// resident ones, [`resident_copies`]) as one list of inputs.
pub fn host_pairs<'a>(
    host: &[(&'a str, &'a Tensor)],
    state: &[(&'a str, &'a Cached)],
    copies: &'a [(&'a str, Tensor)],
) -> Vec<(&'a str, &'a Tensor)> {
    let mut pairs = host.to_vec();
    for (n, c) in state {
        if let Cached::Host(t) = c {
            pairs.push((n, t));
        }
    }
    pairs.extend(copies.iter().map(|(n, t)| (*n, t)));
    pairs
}

/// The KV cache a session keeps where its backend appends in place: one
/// storage per cache (by `present` output name) with spare rows, which a
/// step writes only its new rows into.
pub trait KvStore: Send + Sync + fmt::Debug {
    /// How many caches it holds (two per decoder block).
    fn len(&self) -> usize;

    /// Whether it holds no cache.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows every cache has room for.
    fn capacity(&self) -> usize;

    /// Grow every cache to at least `rows`, keeping the rows in use.
    fn reserve(&mut self, rows: usize) -> Result<()>;

    /// The rows in use of cache `name` as a host tensor.
    fn tensor(&self, name: &str) -> Option<Result<Tensor>>;

    /// Whether the storage is device memory.
    fn on_device(&self) -> bool {
        false
    }

    /// The concrete type (the backend that made it downcasts).
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// A tensor kept in a device's memory between runs (a cache that never
/// passes through the host).
pub trait Resident: Send + Sync + fmt::Debug {
    /// Its shape.
    fn shape(&self) -> &[usize];
    /// Its element type.
    fn dtype(&self) -> DType;
    /// A host copy.
    fn to_host(&self) -> Result<Tensor>;
    /// The concrete type (the backend that made it downcasts).
    fn as_any(&self) -> &dyn Any;
}

/// A tensor a session keeps between steps (KV cache, cross K/V): in host
/// memory, or resident on a device.
#[derive(Debug, Clone)]
pub enum Cached {
    /// Host memory.
    Host(Tensor),
    /// Device memory, shared (cloning shares the buffer).
    Resident(Arc<dyn Resident>),
}

impl Cached {
    /// A host copy (read back from the device if resident).
    pub fn to_host(&self) -> Result<Tensor> {
        match self {
            Cached::Host(t) => Ok(t.clone()),
            Cached::Resident(r) => r.to_host(),
        }
    }

    /// Whether it lives in device memory.
    pub fn on_device(&self) -> bool {
        matches!(self, Cached::Resident(_))
    }
}

/// How weights are stored where a backend offers a choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// The weights as the checkpoint stores them (the default): a GGUF
    /// file's block-quantised, f16 and bf16 matrices stay in their format
    /// on the JIT, which multiplies by them directly (other backends decode
    /// them to f32); every other checkpoint runs in f32.
    #[default]
    Stored,
    /// f32 weights and arithmetic (every backend): stored formats are
    /// decoded at load.
    F32,
    /// f16 weights, f32 arithmetic: the wgpu backend on an adapter with
    /// `SHADER_F16` (elsewhere it keeps f32). Half the weight memory and
    /// bandwidth; outputs within about 1e-2 relative of f32.
    F16,
    /// int8 weights (the JIT): every matrix read only by products (and row
    /// gathers) is quantised at load to Q8_0 (one f16 scale per output
    /// channel and block of 32 inputs, ggml's format), activations per
    /// block of 32 as they arrive; integer dot products and GEMM (AVX-512
    /// VNNI). A quarter of f32's weight bytes.
    Int8,
    /// bf16 weights (the JIT): the same matrices rounded to bfloat16,
    /// multiplied with f32 activations. Half of f32's weight bytes.
    Bf16,
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::Stored => "stored",
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Int8 => "int8",
            Precision::Bf16 => "bf16",
        })
    }
}

impl FromStr for Precision {
    type Err = RuntimeError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "stored" => Ok(Precision::Stored),
            "f32" => Ok(Precision::F32),
            "f16" => Ok(Precision::F16),
            "int8" => Ok(Precision::Int8),
            "bf16" => Ok(Precision::Bf16),
            other => Err(RuntimeError::Unsupported(format!(
                "unknown precision `{other}`: expected `stored`, `f32`, `int8`, `bf16` or `f16`"
            ))),
        }
    }
}
