//! kiln as a library: the compiler and runtime behind the `kiln` command,
//! and a one-call snapshot API for tests that pin down what kiln compiles
//! for a spec.
//!
//! - [`compiler`] is the `kiln-compiler` crate: spec loading, lowering to the
//!   IR, the graph passes, kernel fusion and the Cranelift code generator.
//! - [`runtime`] is the `kiln-runtime` crate: the backends behind one trait,
//!   compiled models shared across threads, sessions with a KV cache,
//!   generation, embeddings.
//! - [`open`] is the `kiln-open` crate: opening a model (a spec with random
//!   weights, a Hugging Face folder or a GGUF file) for a backend.
//! - [`compile_str`] / [`compile_file`] run the pipeline of
//!   `kiln compile` and give its stable text forms ([`Compiled`]).
//! - [`pipeline`] holds the stages those two run, for tools that stop early
//!   (the `kiln` command uses them).
//!
//! # Snapshot a custom architecture
//!
//! ```
//! let toml = r#"
//! name = "tiny-parallel"
//! extends = "gpt2"
//! layers = 1
//! d_model = 32
//! vocab_size = 64
//! max_positions = 16
//! attention.heads = 2
//! residual.parallel = true
//! "#;
//! let c = kiln::compile_str(toml)?;
//! assert!(c.spec_text().contains("name = \"tiny-parallel\""));
//! assert!(c.ir_text().starts_with("graph \"tiny-parallel.decoder\""));
//! assert!(c.kernels_text().starts_with("kernels \"tiny-parallel.decoder\""));
//! // In a test: insta::assert_snapshot!(c.ir_text());
//! # Ok::<(), kiln::Error>(())
//! ```
//!
//! # Run a model
//!
//! One compiled [`runtime::session::Model`] serves any number of threads;
//! each thread keeps its own [`runtime::session::Session`] (its KV cache).
//!
//! ```
//! use kiln::runtime::session::{GenerateOptions, argmax};
//! use kiln::open::source::{OpenOptions, open};
//! use std::path::Path;
//!
//! // A spec file with seeded random weights (or a HF folder, or a .gguf file).
//! let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny/gpt2.toml");
//! let loaded = open(&path, OpenOptions { seed: 0, ..OpenOptions::default() })?;
//! let model = &loaded.model;
//!
//! // Forward: logits [1, tokens, vocab].
//! let out = model.session().forward(&[1, 2, 3])?;
//! let logits = out["logits"].to_f32_vec();
//! let vocab = loaded.spec.spec.vocab_size;
//! let next = argmax(&logits[2 * vocab..]);
//!
//! // Generate from two threads at once, streaming each token.
//! std::thread::scope(|s| {
//!     for prompt in [[1, 2, 3], [4, 5, 6]] {
//!         s.spawn(move || {
//!             let mut session = model.session();
//!             let opts = GenerateOptions { max_new_tokens: 4, ..GenerateOptions::default() };
//!             let mut streamed = Vec::new();
//!             let ids = session
//!                 .generate(&prompt, &opts, &mut |id| {
//!                     streamed.push(id);
//!                     true // keep going
//!                 })
//!                 .unwrap();
//!             assert_eq!(ids, streamed);
//!         });
//!     }
//! });
//! # let _ = next;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub use kiln_compiler as compiler;
pub use kiln_open as open;
pub use kiln_runtime as runtime;

mod error;
pub mod pipeline;
pub mod serve;

pub use error::{Error, Stage};

use kiln_compiler::ir::Graph;
use kiln_compiler::kernel::KernelProgram;
use kiln_compiler::lower::Lowered;
use kiln_compiler::spec::ResolvedSpec;
use std::path::Path;

/// How [`compile_str_with`] and [`compile_file_with`] compile — and how
/// every backend's programs are compiled (`--opt-level`, `--disable-pass`):
/// the compiler's own [`kiln_compiler::compile::CompileOptions`].
///
/// ```
/// let opts = kiln::Options { opt_level: 0, ..kiln::Options::default() };
/// let raw = kiln::compile_str_with("extends = \"gpt2\"\nlayers = 1", &opts)?;
/// let simplified = kiln::compile_str("extends = \"gpt2\"\nlayers = 1")?;
/// assert_ne!(raw.ir_text(), simplified.ir_text());
/// # Ok::<(), kiln::Error>(())
/// ```
pub use kiln_compiler::compile::CompileOptions as Options;

/// A spec compiled down to kernels, with stable text forms of each stage.
///
/// The texts are what the `kiln` command prints, so a snapshot taken here
/// reads like `kiln check` / `kiln compile --emit ir|kernels` output, and
/// changes only when the spec or kiln's lowering, passes or fusion change.
#[derive(Debug, Clone)]
pub struct Compiled {
    spec: ResolvedSpec,
    lowered: Lowered,
    kernels: Vec<KernelProgram>,
}

/// The name a TOML string gets in errors (`<string>:3:1: error: …`).
pub const STRING_SOURCE: &str = "<string>";

/// Compile spec TOML text with the default [`Options`].
///
/// `extends` may name a shipped model (`"gpt2"`, embedded in kiln); a
/// relative path in `extends` is resolved against the current directory.
/// Errors name the text [`STRING_SOURCE`].
///
/// ```
/// let err = kiln::compile_str("name = \"x\"\nextends = \"gpt2\"\nheads = 5").unwrap_err();
/// let text = err.to_string();
/// assert!(text.starts_with("<string>:"), "{text}");
/// assert!(text.contains("heads"), "{text}");
/// ```
pub fn compile_str(toml: &str) -> Result<Compiled, Error> {
    compile_str_with(toml, &Options::default())
}

/// [`compile_str`] with explicit [`Options`].
///
/// ```
/// let opts = kiln::Options { disabled_passes: vec!["cse".into()], ..Default::default() };
/// let c = kiln::compile_str_with("extends = \"gpt2\"\nlayers = 1", &opts)?;
/// assert_eq!(c.graphs().count(), 1);
/// # Ok::<(), kiln::Error>(())
/// ```
pub fn compile_str_with(toml: &str, opts: &Options) -> Result<Compiled, Error> {
    let origin = Path::new(STRING_SOURCE);
    let (spec, lowered) = pipeline::load_str(toml, origin)?;
    Compiled::build(spec, lowered, opts, origin)
}

/// Compile what `path` names — a `.toml` spec, a Hugging Face model folder
/// (or its `config.json`) or a `.gguf` file — with the default [`Options`].
/// Only the spec is read, never the weights.
///
/// ```
/// let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny/bert-base-uncased.toml");
/// let c = kiln::compile_file(&path)?;
/// assert!(c.ir_text().contains(".encoder"));
///
/// let missing = kiln::compile_file("no/such/spec.toml").unwrap_err();
/// assert!(missing.to_string().contains("no/such/spec.toml"));
/// # Ok::<(), kiln::Error>(())
/// ```
pub fn compile_file(path: impl AsRef<Path>) -> Result<Compiled, Error> {
    compile_file_with(path, &Options::default())
}

/// [`compile_file`] with explicit [`Options`].
///
/// ```
/// let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny/t5-small.toml");
/// let c = kiln::compile_file_with(&path, &kiln::Options::default())?;
/// assert_eq!(c.graphs().count(), 2); // encoder and decoder
/// # Ok::<(), kiln::Error>(())
/// ```
pub fn compile_file_with(path: impl AsRef<Path>, opts: &Options) -> Result<Compiled, Error> {
    let path = path.as_ref();
    let (spec, lowered) = pipeline::load(path)?;
    Compiled::build(spec, lowered, opts, path)
}

impl Compiled {
    fn build(
        spec: ResolvedSpec,
        mut lowered: Lowered,
        opts: &Options,
        origin: &Path,
    ) -> Result<Compiled, Error> {
        pipeline::optimise(&mut lowered, opts, origin)?;
        let kernels = pipeline::fuse_with(&lowered, opts, origin)?;
        Ok(Compiled {
            spec,
            lowered,
            kernels,
        })
    }

    /// The resolved spec: `extends` merged, defaults filled, per-layer
    /// overrides expanded.
    ///
    /// ```
    /// let c = kiln::compile_str("extends = \"gpt2\"\nlayers = 2")?;
    /// assert_eq!(c.spec().layers.len(), 2);
    /// # Ok::<(), kiln::Error>(())
    /// ```
    pub fn spec(&self) -> &ResolvedSpec {
        &self.spec
    }

    /// The lowered model after the graph passes (encoder and/or decoder).
    ///
    /// ```
    /// let c = kiln::compile_str("extends = \"gpt2\"\nlayers = 1")?;
    /// assert_eq!(c.lowered().vocab_size, 50257);
    /// # Ok::<(), kiln::Error>(())
    /// ```
    pub fn lowered(&self) -> &Lowered {
        &self.lowered
    }

    /// The IR graphs after the passes: the encoder's, then the decoder's.
    ///
    /// ```
    /// let c = kiln::compile_str("extends = \"gpt2\"\nlayers = 1")?;
    /// let names: Vec<&str> = c.graphs().map(|g| g.name.as_str()).collect();
    /// assert_eq!(names, ["gpt2.decoder"]);
    /// # Ok::<(), kiln::Error>(())
    /// ```
    pub fn graphs(&self) -> impl Iterator<Item = &Graph> {
        self.lowered.graphs()
    }

    /// The fused kernel program of each graph, in the order of [`Compiled::graphs`].
    ///
    /// ```
    /// let c = kiln::compile_str("extends = \"gpt2\"\nlayers = 1")?;
    /// assert!(c.kernel_programs()[0].kernels.len() > 1);
    /// # Ok::<(), kiln::Error>(())
    /// ```
    pub fn kernel_programs(&self) -> &[KernelProgram] {
        &self.kernels
    }

    /// The resolved spec as TOML with every derived default written out
    /// (the first part of `kiln check`'s output).
    ///
    /// ```
    /// let c = kiln::compile_str("extends = \"gpt2\"\nlayers = 1\n[attention]\nkv_heads = 3")?;
    /// assert!(c.spec_text().contains("kv_heads = 3"));
    /// # Ok::<(), kiln::Error>(())
    /// ```
    pub fn spec_text(&self) -> String {
        self.spec.to_toml()
    }

    /// The IR graphs after the passes in kiln's text form: exactly what
    /// `kiln compile SPEC --emit ir` prints.
    ///
    /// ```
    /// let c = kiln::compile_str("extends = \"gpt2\"\nlayers = 1")?;
    /// assert!(c.ir_text().contains("layers.0.attn"));
    /// # Ok::<(), kiln::Error>(())
    /// ```
    pub fn ir_text(&self) -> String {
        pipeline::ir_text(&self.lowered)
    }

    /// The IR graphs as Graphviz DOT (`kiln compile --emit dot`).
    ///
    /// ```
    /// let c = kiln::compile_str("extends = \"gpt2\"\nlayers = 1")?;
    /// assert!(c.dot_text().starts_with("digraph"));
    /// # Ok::<(), kiln::Error>(())
    /// ```
    pub fn dot_text(&self) -> String {
        pipeline::dot_text(&self.lowered)
    }

    /// The fused kernel programs in the kernel IR's text form: exactly what
    /// `kiln compile SPEC --emit kernels` prints.
    ///
    /// ```
    /// let c = kiln::compile_str("extends = \"gpt2\"\nlayers = 1")?;
    /// assert!(c.kernels_text().contains("gemm"));
    /// # Ok::<(), kiln::Error>(())
    /// ```
    pub fn kernels_text(&self) -> String {
        pipeline::kernels_text(&self.kernels)
    }
}
