//! Subcommands. Each one loads a spec, lowers it and reports; errors come back
//! as a [`CliError`] that `main` prints once before exiting non-zero. Output
//! goes through [`out!`] / [`outln!`], so a failed write (a full disk, a
//! closed stdout) is an error too, never a panic or a silent loss.

/// `print!` to stdout, returning a [`CliError::Write`] from the enclosing
/// function when the write fails.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!($($arg)*))?
    };
}

/// `println!` to stdout, returning a [`CliError::Write`] from the enclosing
/// function when the write fails.
macro_rules! outln {
    () => {
        $crate::cli::write_stdout(format_args!("\n"))?
    };
    ($($arg:tt)*) => {{
        $crate::cli::write_stdout(format_args!($($arg)*))?;
        $crate::cli::write_stdout(format_args!("\n"))?
    }};
}

mod bench;
mod chat;
mod check;
mod compile;
mod embed;
mod error;
mod export;
mod generate;
mod import;
mod run;
mod serve;

pub use error::CliError;

use clap::{Parser, Subcommand, ValueEnum};
use kiln_compiler::lower::Lowered;
use kiln_compiler::spec::ResolvedSpec;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "A declarative model compiler for transformer architectures"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// A family file (how a Hugging Face model_type's config.json and tensor
    /// names map onto a spec; docs/spec.md, "Families") to use besides the
    /// shipped ones and those in the family folder ($KILN_FAMILY_PATH, else
    /// ~/.config/kiln/families); repeatable, later files win.
    #[arg(long = "family", value_name = "FILE", global = true)]
    families: Vec<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Print the resolved spec (every default filled in) and its cost table.
    Check(check::Args),
    /// Lower a spec and print its IR graphs, fused kernels or generated code.
    Compile(compile::Args),
    /// Run a model (random or real weights) and print logits or greedy tokens.
    Run(run::Args),
    /// Turn a Hugging Face transformers config.json into a kiln spec.
    Import(import::Args),
    /// Generate text from a prompt, streaming tokens as they are produced.
    Generate(generate::Args),
    /// Talk to a chat model: each input line is a user message, the reply
    /// streams back through the model's chat template.
    Chat(chat::Args),
    /// Serve the model over HTTP with an OpenAI-compatible API
    /// (completions, chat completions, embeddings, models, health, metrics).
    Serve(serve::Args),
    /// Sentence embeddings (mean pooling + L2 normalisation) and their cosine similarities.
    Embed(embed::Args),
    /// Time encode / prefill / decode of a model, with the JIT's kernel profile.
    Bench(bench::Args),
    /// Write a model's weights (random, a HF folder or a GGUF file) as a
    /// safetensors file under kiln's canonical names, loadable for the same
    /// spec with --weights.
    Export(export::Args),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    #[default]
    Text,
    Json,
}

pub fn dispatch(cli: Cli) -> Result<(), CliError> {
    stdout_is_open()?;
    for f in &cli.families {
        kiln_compiler::import::register_family_file(f)?;
    }
    let done = match cli.command {
        Command::Check(a) => check::run(a),
        Command::Compile(a) => compile::run(a),
        Command::Run(a) => run::run(a),
        Command::Import(a) => import::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Embed(a) => embed::run(a),
        Command::Chat(a) => chat::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Export(a) => export::run(a),
    };
    done?;
    // Line-buffered output still held is written (and its error seen) here.
    std::io::Write::flush(&mut std::io::stdout()).map_err(stdout_error)
}

/// Write to stdout, as [`out!`] does.
pub fn write_stdout(args: std::fmt::Arguments<'_>) -> Result<(), CliError> {
    std::io::Write::write_fmt(&mut std::io::stdout().lock(), args).map_err(stdout_error)
}

/// A failed write to stdout.
pub fn stdout_error(source: std::io::Error) -> CliError {
    CliError::Write {
        path: "<stdout>".into(),
        message: "cannot write the output",
        source,
    }
}

/// A command started with its standard output closed (`kiln … >&-`) would
/// lose everything it prints: Rust's runtime reopens a closed descriptor 1
/// on `/dev/null` (read-write) before `main`, so writes quietly succeed.
/// That descriptor is refused up front; `> /dev/null` (write-only, the
/// shell's) is a choice and is left alone.
fn stdout_is_open() -> Result<(), CliError> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::BorrowedFd;
        use std::os::unix::fs::MetadataExt;
        const F_GETFL: i32 = 3;
        const O_ACCMODE: i32 = 3;
        const O_RDWR: i32 = 2;
        unsafe extern "C" {
            fn fcntl(fd: i32, cmd: i32, ...) -> i32;
        }
        // SAFETY: F_GETFL only reads the descriptor's status flags.
        let flags = unsafe { fcntl(1, F_GETFL) };
        if flags < 0 {
            return Err(stdout_error(std::io::Error::last_os_error()));
        }
        // SAFETY: descriptor 1 stays open for the whole process.
        let fd = unsafe { BorrowedFd::borrow_raw(1) };
        let null = std::fs::metadata("/dev/null").map(|m| m.rdev()).ok();
        let ours = fd
            .try_clone_to_owned()
            .map(std::fs::File::from)
            .and_then(|f| f.metadata())
            .map(|m| m.rdev())
            .ok();
        if flags & O_ACCMODE == O_RDWR && null.is_some() && ours == null {
            return Err(CliError::Write {
                path: "<stdout>".into(),
                message: "cannot write the output",
                source: std::io::Error::other(
                    "standard output is closed (kiln was started with `>&-`); redirect it to a file or `> /dev/null`",
                ),
            });
        }
    }
    Ok(())
}

/// Load and lower a spec (a `.toml` file, a HF model folder or a `.gguf`
/// file), rendering any error for the terminal.
pub fn load(path: &Path) -> Result<(ResolvedSpec, Lowered), CliError> {
    Ok(kiln::pipeline::load(path)?)
}

/// The spec argument every subcommand takes.
#[derive(clap::Args)]
pub struct SpecArg {
    /// A spec file (models/gpt2.toml), a Hugging Face model folder
    /// (config.json + *.safetensors) or a .gguf file.
    pub spec: PathBuf,
}

/// Where a runnable model comes from.
#[derive(clap::Args, Clone)]
pub struct ModelArgs {
    /// A spec file (models/gpt2.toml), a Hugging Face model folder
    /// (config.json + *.safetensors) or a .gguf file; may be omitted when
    /// --weights names a HF folder or a .gguf file.
    pub spec: Option<PathBuf>,
    /// Weights: a HF folder, a .safetensors file or a .gguf file
    /// (default: seeded random weights for a spec file).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// What runs the model: `jit` (Cranelift-compiled kernels), `wgpu`
    /// (WGSL shaders on a GPU; `KILN_WGPU_BACKEND=vulkan|gl` picks the API),
    /// `reference` (the graph interpreter, the correctness oracle) or
    /// `kernel-ir` (the fused kernel programs interpreted: tells a fusion
    /// bug from a code-generation bug).
    #[arg(long, default_value = "jit")]
    pub backend: kiln_runtime::backends::BackendRef,
    /// Graph passes before the backend gets the kernel programs: 0 = the
    /// graphs as lowered, 1 = simplified (see docs/passes.md).
    #[arg(long, default_value_t = 1)]
    pub opt_level: u8,
    /// Skip a graph pass or kernel rewrite by name (repeatable), to bisect
    /// a miscompile: simplify, const-fold, cse, merge-projections, dce;
    /// attention, write-through, moe-dispatch, append-cache.
    #[arg(long = "disable-pass", value_name = "NAME")]
    pub disable_pass: Vec<String>,
    /// How the weights are stored: `stored` (as the checkpoint stores them:
    /// a GGUF file's quantised, f16 and bf16 matrices run from their blocks
    /// on the JIT; anything else is f32), `f32` (decoded at load), `int8`
    /// (JIT: matrices quantised at load to Q8_0, per output channel and
    /// block of 32, activations per block of 32; integer products), `bf16`
    /// (JIT: matrices rounded to bfloat16, f32 activations), or `f16` (wgpu
    /// on an adapter with SHADER_F16: half the weight memory, f32
    /// arithmetic, outputs within about 1e-2 of f32; kept f32 where the
    /// adapter lacks it).
    #[arg(long, default_value = "stored")]
    pub precision: kiln_runtime::Precision,
    /// Memory the model may hold (weights, then each step's KV cache and
    /// activations), e.g. `8G`, `512M`, `1500000000`; more is refused up
    /// front. Default: the memory available on this machine.
    #[arg(long, value_parser = kiln::pipeline::parse_bytes)]
    pub memory_limit: Option<u64>,
    /// Refuse NaN or infinite weights (and outputs) instead of warning.
    #[arg(long)]
    pub strict: bool,
}

/// Open a model, with a progress bar on stderr while a checkpoint loads.
pub fn open_model(m: &ModelArgs) -> Result<kiln_open::source::LoadedModel, CliError> {
    use indicatif::{ProgressBar, ProgressStyle};
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("loading weights {bar:30} {bytes}/{total_bytes} {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut progress = |done: u64, total: u64| {
        bar.set_length(total);
        bar.set_position(done);
    };
    // `kiln run --weights DIR` alone: the folder (or GGUF file) is the whole model.
    let (source, weights) = match (&m.spec, &m.weights) {
        (Some(s), w) => (s.as_path(), w.as_deref()),
        (None, Some(w)) => (w.as_path(), None),
        (None, None) => {
            return Err("give a spec, a model folder or a .gguf file (or --weights)".into());
        }
    };
    let opts = kiln_open::source::OpenOptions {
        weights,
        seed: m.seed,
        progress: Some(&mut progress),
        backend: m.backend.0,
        compile: m.compile_options(),
        precision: m.precision,
        memory_limit: m.memory_limit,
        strict: m.strict,
    };
    let loaded = kiln_open::source::open(source, opts).map_err(CliError::from);
    bar.finish_and_clear();
    if let Ok(l) = &loaded {
        note_precision(m, &l.model);
        for w in &l.warnings {
            eprintln!("warning: {w}");
        }
    }
    loaded
}

/// Say so when outputs hold NaN or infinite values (an error under
/// `--strict`): they mean broken weights or an overflow, never results.
pub fn check_finite(m: &ModelArgs, what: &str, values: &[f32]) -> Result<(), CliError> {
    let bad = values.iter().filter(|x| !x.is_finite()).count();
    if bad == 0 {
        return Ok(());
    }
    let text = format!(
        "{bad} of {} {what} are NaN or infinite (broken weights or an overflow)",
        values.len()
    );
    if m.strict {
        return Err(CliError::Usage(format!("{text}; refused under --strict")));
    }
    eprintln!("warning: {text}");
    Ok(())
}

impl ModelArgs {
    /// What `--opt-level` and `--disable-pass` ask of the compiler.
    pub fn compile_options(&self) -> kiln::Options {
        kiln::Options {
            opt_level: self.opt_level,
            disabled_passes: self.disable_pass.clone(),
        }
    }
}

/// Say so when f16 weights were asked for but the adapter cannot use them.
pub fn note_precision(m: &ModelArgs, model: &kiln_runtime::session::Model) {
    if m.precision == kiln_runtime::Precision::F16 && !model.f16_weights() {
        eprintln!("note: this wgpu adapter has no SHADER_F16; the weights stay f32");
    }
}
