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
use kiln_compiler::lower::lower;
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
    /// How the backend stores the weights (default: f32; f16 is a wgpu
    /// option, see [`Precision`]).
    pub precision: Precision,
}

impl Default for OpenOptions<'_> {
    fn default() -> Self {
        OpenOptions {
            weights: None,
            seed: 0,
            progress: None,
            backend: kiln_runtime::backends::default_backend(),
            compile: CompileOptions::default(),
            precision: Precision::F32,
        }
    }
}

/// Open `path`: a `.toml` spec, a HF model folder (or its config.json), or a
/// `.gguf` file, and compile it for `opts.backend`.
pub fn open(path: &Path, opts: OpenOptions<'_>) -> Result<LoadedModel, OpenError> {
    let (backend, precision, compile) = (opts.backend, opts.precision, opts.compile.clone());
    let LoadedModel {
        spec,
        model,
        tokenizer,
        weights_origin,
    } = open_uncompiled(path, opts)?;
    Ok(LoadedModel {
        spec,
        model: (model.with_precision(precision).with_options(compile)).compile(backend)?,
        tokenizer,
        weights_origin,
    })
}

fn open_uncompiled(path: &Path, opts: OpenOptions<'_>) -> Result<LoadedModel, OpenError> {
    let is_gguf = |p: &Path| {
        p.extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    };
    if is_gguf(path) {
        return open_gguf(path);
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
        let mut imported = import_path(&dir, &ImportOptions::default())?.resolved;
        apply_sentence_transformers(&dir, &mut imported)?;
        return with_checkpoint(imported, &dir, opts.progress);
    }
    let rs = spec::load(path).map_err(Box::new)?;
    match opts.weights {
        Some(w) if is_gguf(w) => with_gguf(rs, &GgufFile::open(w)?),
        Some(w) => with_checkpoint(rs, w, opts.progress),
        None => {
            let lowered = lower(&rs).map_err(|e| internal(path, e))?;
            let model = Model::random(lowered, opts.seed)?;
            Ok(LoadedModel {
                spec: rs,
                model,
                tokenizer: None,
                weights_origin: format!("random (seed {})", opts.seed),
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
        let mut rs = import_path(&dir, &ImportOptions::default())?.resolved;
        apply_sentence_transformers(&dir, &mut rs)?;
        return Ok(rs);
    }
    Ok(spec::load(path).map_err(Box::new)?)
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
) -> Result<LoadedModel, OpenError> {
    let lowered = lower(&rs).map_err(|e| internal(weights, e))?;
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
    })
}

fn open_gguf(path: &Path) -> Result<LoadedModel, OpenError> {
    let file = GgufFile::open(path)?;
    with_gguf(file.spec()?, &file)
}

/// `rs` run with the weights and tokenizer of a GGUF file.
fn with_gguf(rs: ResolvedSpec, file: &GgufFile) -> Result<LoadedModel, OpenError> {
    let path = file.path();
    let lowered = lower(&rs).map_err(|e| internal(path, e))?;
    let weights = file.weights()?;
    for g in lowered.graphs() {
        // The mismatch names the file the tensors came from.
        weights.check(g).map_err(|e| OpenError::Source {
            path: path.to_path_buf(),
            message: format!("the file's tensors do not fit the spec: {e}"),
        })?;
    }
    let tokenizer = Some(file.tokenizer()?.into_tokenizer());
    Ok(LoadedModel {
        spec: rs,
        model: Model::new(lowered, weights),
        tokenizer,
        weights_origin: path.display().to_string(),
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
