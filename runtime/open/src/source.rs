//! Opening a model from what a user has: a spec file (random weights, or a
//! checkpoint given with `weights`), a Hugging Face folder (config.json +
//! safetensors + tokenizer.json, optionally a sentence-transformers pooling
//! config), or a GGUF file. The result is the resolved spec, a runnable model
//! and, when the source carries one, its tokenizer.

use crate::checkpoint::{self, CheckpointError};
use crate::gguf::{GgufError, GgufFile};
use crate::tokenizer::{Tokenizer, TokenizerError};
use kiln_compiler::compile::CompileOptions;
use kiln_compiler::import::{ImportError, ImportOptions, import_path};
use kiln_compiler::lower::{Lowered, lower};
use kiln_compiler::spec::{self, HeadKind, ResolvedSpec, SpecError};
use kiln_runtime::backends::{Backend, Precision};
use kiln_runtime::session::Model;
use kiln_runtime::{RuntimeError, Weights};
use std::path::{Path, PathBuf};

/// A model ready to run.
pub struct LoadedModel {
    /// The spec after defaults and derived sizes are filled in.
    pub spec: ResolvedSpec,
    /// The compiled model, on the requested backend.
    pub model: Model,
    /// The tokenizer, when the source has one (HF folder or GGUF); `None` for a bare spec.
    pub tokenizer: Option<Tokenizer>,
    /// Where the weights came from: a path, or `random (seed N)`.
    pub weights_origin: String,
    /// Things worth saying that did not stop the model from opening (NaN or
    /// infinite weights, each naming the tensor).
    pub warnings: Vec<String>,
}

/// Why [`LoadedModel::embed`] could not embed.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// Encoding a sentence failed.
    #[error("{0}")]
    Tokenizer(#[from] TokenizerError),
    /// The encoder could not run.
    #[error("{0}")]
    Runtime(#[from] RuntimeError),
    /// The model has no tokenizer or no sentence-embedding head.
    #[error("{0}")]
    Unsupported(&'static str),
}

impl LoadedModel {
    /// Sentence embeddings of `texts`: each encoded with the model's
    /// tokenizer, then [`LoadedModel::embed_ids`].
    pub fn embed<S: AsRef<str>>(&self, texts: &[S]) -> Result<kiln_runtime::Tensor, EmbedError> {
        let tok = self.tokenizer.as_ref().ok_or(EmbedError::Unsupported(
            "embed needs a tokenizer: give a HF folder with tokenizer.json",
        ))?;
        let ids: Vec<Vec<i32>> = (texts.iter())
            .map(|s| {
                tok.encode(s.as_ref())
                    .map(|v| v.into_iter().map(|t| t as i32).collect())
            })
            .collect::<Result<_, _>>()?;
        let refs: Vec<&[i32]> = ids.iter().map(Vec::as_slice).collect();
        self.embed_ids(&refs)
    }

    /// Sentence embeddings of token sequences, `[n, dim]`: the encoder's
    /// pooled `embedding` output, batched (padding masked).
    pub fn embed_ids(&self, seqs: &[&[i32]]) -> Result<kiln_runtime::Tensor, EmbedError> {
        let mut out = self.model.encode_batch(seqs)?;
        out.remove("embedding").ok_or(EmbedError::Unsupported(
            "this model has no sentence-embedding head (a sentence-transformers folder with modules.json, or a spec with head.kind = \"mean-pool\")",
        ))
    }
}

/// Why [`open`] failed, wrapping the error of the stage that failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The spec file is invalid (rendered with its source location).
    #[error("{}", .0.render())]
    Spec(#[from] Box<SpecError>),
    /// A Hugging Face config could not be turned into a spec.
    #[error("{0}")]
    Import(#[from] ImportError),
    /// A safetensors checkpoint could not be read or does not match the spec.
    #[error("{0}")]
    Checkpoint(#[from] CheckpointError),
    /// A GGUF file could not be read or mapped onto the spec.
    #[error("{0}")]
    Gguf(#[from] GgufError),
    /// The tokenizer could not be loaded.
    #[error("{0}")]
    Tokenizer(#[from] TokenizerError),
    /// Compiling or loading weights into the model failed.
    #[error("{0}")]
    Runtime(#[from] RuntimeError),
    /// The model does not fit the memory budget: refused before anything
    /// is allocated.
    #[error(
        "{}: the weights need {} ({} parameters {}), more than the memory budget of {} ({}); use a smaller spec (models/tiny/ has test-sized ones), or raise the budget with --memory-limit",
        path.display(), gib(*need), parameters, stored_as, gib(*budget), origin
    )]
    Memory {
        /// The model source.
        path: PathBuf,
        /// Bytes the weights need.
        need: u64,
        /// Their parameter count.
        parameters: usize,
        /// How they would be held (`as f32`, `in the file's formats`).
        stored_as: &'static str,
        /// The budget in bytes.
        budget: u64,
        /// Where the budget came from (`available memory`, `--memory-limit`).
        origin: &'static str,
    },
    /// Weights hold NaN or infinite values and [`OpenOptions::strict`] is
    /// set (otherwise a warning in [`LoadedModel::warnings`]).
    #[error("{}: {}", path.display(), non_finite_text(tensors))]
    NonFinite {
        /// Where the weights came from.
        path: PathBuf,
        /// `(tensor, how many values)` of each tensor with NaN or infinities.
        tensors: Vec<(String, usize)>,
    },
    /// The path itself is unusable (missing, unrecognised kind of file, ...).
    #[error("{path}: {message}")]
    Source {
        /// The offending path.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

/// How to open a model.
pub struct OpenOptions<'a> {
    /// Weights for a spec file: a HF folder / `.safetensors` file, or a `.gguf`.
    pub weights: Option<&'a Path>,
    /// Seed of random weights when no checkpoint is given.
    pub seed: u64,
    /// Called with `(bytes done, bytes total)` while a checkpoint loads.
    pub progress: Option<&'a mut dyn FnMut(u64, u64)>,
    /// What runs the model (default: the JIT; [`kiln_runtime::backends::get`]
    /// finds one by name).
    pub backend: &'static dyn Backend,
    /// What the compiler does before the backend gets the programs.
    pub compile: CompileOptions,
    /// How the backend stores the weights (default: as stored, which keeps
    /// a GGUF file's quantised matrices in their format on the JIT; f16 is
    /// a wgpu option, see [`Precision`]).
    pub precision: Precision,
    /// Bytes the model may hold: its weights, then each step's KV cache and
    /// activations ([`Model::set_memory_budget`]). `None`: the memory this
    /// machine has available (Linux `MemAvailable`; no limit elsewhere).
    pub memory_limit: Option<u64>,
    /// Refuse weights with NaN or infinite values instead of warning.
    pub strict: bool,
}

impl Default for OpenOptions<'_> {
    fn default() -> Self {
        OpenOptions {
            weights: None,
            seed: 0,
            progress: None,
            backend: kiln_runtime::backends::default_backend(),
            compile: CompileOptions::default(),
            precision: Precision::Stored,
            memory_limit: None,
            strict: false,
        }
    }
}

/// Open `path`: a `.toml` spec, a HF model folder (or its config.json), or a
/// `.gguf` file, and compile it for `opts.backend`.
pub fn open(path: &Path, opts: OpenOptions<'_>) -> Result<LoadedModel, OpenError> {
    let (backend, precision, compile) = (opts.backend, opts.precision, opts.compile.clone());
    let budget = Budget::of(&opts);
    let strict = opts.strict;
    let LoadedModel {
        spec,
        model,
        tokenizer,
        weights_origin,
        mut warnings,
    } = open_uncompiled(path, opts, budget)?;
    let bad = non_finite(&model.weights);
    if !bad.is_empty() {
        if strict {
            return Err(OpenError::NonFinite {
                path: PathBuf::from(&weights_origin),
                tensors: bad,
            });
        }
        warnings.push(format!(
            "{weights_origin}: {} (--strict refuses them)",
            non_finite_text(&bad)
        ));
    }
    let mut model = (model.with_precision(precision).with_options(compile)).compile(backend)?;
    if let Some(b) = budget {
        // What is left after the weights bounds every step.
        let weights = model.weights.n_bytes() as u64;
        let left = b.bytes.saturating_sub(weights);
        model.set_memory_budget(Some(usize::try_from(left).unwrap_or(usize::MAX)));
    }
    Ok(LoadedModel {
        spec,
        model,
        tokenizer,
        weights_origin,
        warnings,
    })
}

/// `(tensor, count)` of every weight holding NaN or infinite values.
fn non_finite(weights: &Weights) -> Vec<(String, usize)> {
    let mut bad: Vec<(String, usize)> = (weights.iter())
        .filter_map(|(name, t)| {
            let n = t.as_f32()?.iter().filter(|x| !x.is_finite()).count();
            (n > 0).then(|| (name.to_string(), n))
        })
        .collect();
    bad.sort();
    bad
}

fn non_finite_text(tensors: &[(String, usize)]) -> String {
    let shown: Vec<String> = (tensors.iter().take(8))
        .map(|(t, n)| format!("`{t}` ({n})"))
        .collect();
    let more = tensors.len().saturating_sub(8);
    format!(
        "NaN or infinite weights in {} tensor(s): {}{}",
        tensors.len(),
        shown.join(", "),
        if more > 0 {
            format!(", and {more} more")
        } else {
            String::new()
        }
    )
}

/// The memory a model may hold, and where that figure came from.
#[derive(Debug, Clone, Copy)]
struct Budget {
    bytes: u64,
    origin: &'static str,
}

impl Budget {
    fn of(opts: &OpenOptions<'_>) -> Option<Budget> {
        match opts.memory_limit {
            Some(bytes) => Some(Budget {
                bytes,
                origin: "--memory-limit",
            }),
            None => available_memory().map(|bytes| Budget {
                bytes,
                origin: "the memory available on this machine",
            }),
        }
    }

    /// Refuse weights for `lowered` that would not fit as f32, before
    /// allocating.
    fn check(budget: Option<Budget>, path: &Path, lowered: &Lowered) -> Result<(), OpenError> {
        let parameters = lowered.parameter_count();
        let need = (parameters as u64).saturating_mul(4);
        Budget::check_bytes(budget, path, need, parameters, "as f32")
    }

    /// Refuse weights that need `need` bytes when that exceeds the budget.
    fn check_bytes(
        budget: Option<Budget>,
        path: &Path,
        need: u64,
        parameters: usize,
        stored_as: &'static str,
    ) -> Result<(), OpenError> {
        let Some(b) = budget else {
            return Ok(());
        };
        if need > b.bytes {
            return Err(OpenError::Memory {
                path: path.to_path_buf(),
                need,
                parameters,
                stored_as,
                budget: b.bytes,
                origin: b.origin,
            });
        }
        Ok(())
    }
}

/// Bytes of memory available to a new allocation (Linux: `MemAvailable`
/// from /proc/meminfo); `None` where unknown.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

fn gib(bytes: u64) -> String {
    if bytes >= 1 << 40 {
        format!("{:.1} TiB", bytes as f64 / (1u64 << 40) as f64)
    } else if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

fn open_uncompiled(
    path: &Path,
    opts: OpenOptions<'_>,
    budget: Option<Budget>,
) -> Result<LoadedModel, OpenError> {
    let is_gguf = |p: &Path| {
        p.extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    };
    if is_gguf(path) {
        return open_gguf(path, budget, opts.precision);
    }
    let hf_dir = if path.is_dir() {
        Some(path.to_path_buf())
    } else if path.file_name().is_some_and(|n| n == "config.json") {
        path.parent().map(Path::to_path_buf)
    } else {
        None
    };
    if let Some(dir) = hf_dir {
        if !dir.join("config.json").exists() {
            return Err(OpenError::Source {
                path: dir,
                message: "a model folder needs a config.json (a HF checkpoint folder) — or pass a .toml spec or a .gguf file".into(),
            });
        }
        let mut imported = import_path(&dir, &hf_import_options(&dir))?.resolved;
        apply_sentence_transformers(&dir, &mut imported)?;
        return with_checkpoint(imported, &dir, opts.progress, budget);
    }
    let rs = spec::load(path).map_err(Box::new)?;
    match opts.weights {
        Some(w) if is_gguf(w) => with_gguf(rs, &GgufFile::open(w)?, budget, opts.precision),
        Some(w) => with_checkpoint(rs, w, opts.progress, budget),
        None => {
            let lowered = lower(&rs).map_err(|e| internal(path, e))?;
            Budget::check(budget, path, &lowered)?;
            let model = Model::random(lowered, opts.seed)?;
            Ok(LoadedModel {
                spec: rs,
                model,
                tokenizer: None,
                weights_origin: format!("random (seed {})", opts.seed),
                warnings: Vec::new(),
            })
        }
    }
}

/// Only the spec of `path` (a `.toml` spec, a HF folder or config.json, or a
/// `.gguf` file), without reading any weights.
pub fn open_spec(path: &Path) -> Result<ResolvedSpec, OpenError> {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        return Ok(GgufFile::open(path)?.spec()?);
    }
    if path.is_dir() || path.file_name().is_some_and(|n| n == "config.json") {
        let dir = if path.is_dir() {
            path.to_path_buf()
        } else {
            path.parent().unwrap_or(Path::new(".")).to_path_buf()
        };
        let mut rs = import_path(&dir, &hf_import_options(&dir))?.resolved;
        apply_sentence_transformers(&dir, &mut rs)?;
        return Ok(rs);
    }
    Ok(spec::load(path).map_err(Box::new)?)
}

/// Import options for a HF folder: the checkpoint's tensor names (from its
/// header, when it has one), so the family can pick the head by what is
/// stored (a `BertModel` saved without its pooler).
fn hf_import_options(dir: &Path) -> ImportOptions {
    ImportOptions {
        tensors: checkpoint::Checkpoint::open(dir)
            .ok()
            .map(|c| c.tensors().keys().cloned().collect()),
        ..ImportOptions::default()
    }
}

fn internal(path: &Path, e: impl std::fmt::Display) -> OpenError {
    OpenError::Source {
        path: path.to_path_buf(),
        message: format!("internal error while lowering: {e}"),
    }
}

fn with_checkpoint(
    rs: ResolvedSpec,
    weights: &Path,
    progress: Option<&mut dyn FnMut(u64, u64)>,
    budget: Option<Budget>,
) -> Result<LoadedModel, OpenError> {
    let lowered = lower(&rs).map_err(|e| internal(weights, e))?;
    Budget::check(budget, weights, &lowered)?;
    let graphs: Vec<_> = lowered.graphs().collect();
    let w: Weights = match progress {
        Some(p) => checkpoint::load_safetensors_with_progress(weights, &graphs, None, p)?,
        None => checkpoint::load_safetensors(weights, &graphs, None)?,
    };
    let dir = if weights.is_dir() {
        weights.to_path_buf()
    } else {
        weights.parent().unwrap_or(Path::new(".")).to_path_buf()
    };
    let tok_path = dir.join("tokenizer.json");
    let tokenizer = if tok_path.exists() {
        Some(Tokenizer::from_file(&tok_path)?)
    } else {
        None
    };
    Ok(LoadedModel {
        spec: rs,
        model: Model::new(lowered, w),
        tokenizer,
        weights_origin: weights.display().to_string(),
        warnings: Vec::new(),
    })
}

fn open_gguf(
    path: &Path,
    budget: Option<Budget>,
    precision: Precision,
) -> Result<LoadedModel, OpenError> {
    let file = GgufFile::open(path)?;
    with_gguf(file.spec()?, &file, budget, precision)
}

/// `rs` run with the weights and tokenizer of a GGUF file.
fn with_gguf(
    rs: ResolvedSpec,
    file: &GgufFile,
    budget: Option<Budget>,
    precision: Precision,
) -> Result<LoadedModel, OpenError> {
    let path = file.path();
    let lowered = lower(&rs).map_err(|e| internal(path, e))?;
    if precision == Precision::Stored {
        // The stored matrices stay mapped; what they occupy is the file's
        // tensor data (an upper bound: f32 tensors count as stored).
        let need: u64 = file.tensors().iter().map(|t| t.n_bytes).sum();
        let parameters = lowered.parameter_count();
        Budget::check_bytes(budget, path, need, parameters, "in the file's formats")?;
    } else {
        Budget::check(budget, path, &lowered)?;
    }
    let graphs: Vec<_> = lowered.graphs().collect();
    let weights = file.weights_stored_for(&rs, &graphs, precision == Precision::Stored)?;
    for g in lowered.graphs() {
        // The mismatch names the file the tensors came from.
        weights.check(g).map_err(|e| OpenError::Source {
            path: path.to_path_buf(),
            message: format!("the file's tensors do not fit the spec: {e}"),
        })?;
    }
    // The model runs without its tokenizer when kiln cannot read that (a
    // SentencePiece vocabulary): token ids work, text says why it cannot.
    let mut warnings = Vec::new();
    let tokenizer = match file.tokenizer() {
        Ok(t) => Some(t.into_tokenizer()),
        Err(e) if e.message.starts_with("unsupported tokenizer model") => {
            warnings.push(format!(
                "{e}; the model runs on token ids (--tokens) but cannot read or write text"
            ));
            None
        }
        Err(e) => return Err(e.into()),
    };
    Ok(LoadedModel {
        spec: rs,
        model: Model::new(lowered, weights),
        tokenizer,
        weights_origin: path.display().to_string(),
        warnings,
    })
}

/// A sentence-transformers folder (`modules.json`) says how token states
/// become a sentence embedding: mean pooling, then optionally L2 normalise.
fn apply_sentence_transformers(dir: &Path, rs: &mut ResolvedSpec) -> Result<(), OpenError> {
    let modules = dir.join("modules.json");
    let Ok(text) = std::fs::read_to_string(&modules) else {
        return Ok(());
    };
    let bad = |message: String| OpenError::Source {
        path: modules.clone(),
        message,
    };
    let list: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let types: Vec<(String, String)> = list
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| {
                    let s = |k: &str| {
                        m.get(k)
                            .and_then(|v| v.as_str())
                            .unwrap_or_default()
                            .to_string()
                    };
                    (s("type"), s("path"))
                })
                .collect()
        })
        .unwrap_or_default();
    let Some((_, pool_path)) = types.iter().find(|(t, _)| t.ends_with(".Pooling")) else {
        return Ok(());
    };
    let pool_cfg = dir.join(pool_path).join("config.json");
    let cfg: serde_json::Value = std::fs::read_to_string(&pool_cfg)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .ok_or_else(|| {
            bad(format!(
                "cannot read the pooling config {}",
                pool_cfg.display()
            ))
        })?;
    let on = |k: &str| cfg.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
    if !on("pooling_mode_mean_tokens")
        || [
            "pooling_mode_cls_token",
            "pooling_mode_max_tokens",
            "pooling_mode_mean_sqrt_len_tokens",
        ]
        .iter()
        .any(|k| on(k))
    {
        return Err(bad(format!(
            "{}: only mean pooling (pooling_mode_mean_tokens) is supported",
            pool_cfg.display()
        )));
    }
    let mut s = rs.spec.clone();
    s.head.kind = HeadKind::MeanPool;
    s.head.normalize = types.iter().any(|(t, _)| t.ends_with(".Normalize"));
    s.head.tied = false;
    *rs = spec::resolve(s)
        .map_err(|e| bad(format!("cannot apply the pooling config: {}", e.summary())))?;
    Ok(())
}
