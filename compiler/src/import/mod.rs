//! `kiln import`: a Hugging Face transformers `config.json` → a resolved kiln spec.
//!
//! Supported `model_type`s: see [`SUPPORTED_MODEL_TYPES`]. For each, the
//! importer reads every field the HF modeling code reads that changes the
//! numbers or the parameter shapes — from the file when it has the field,
//! else the HF class default (transformers 5.23; each default is commented in
//! `families.rs` and listed in [`Imported::defaults`]). Both config layouts
//! are read: transformers ≤ 4 (`rope_theta`, `rope_scaling`, `torch_dtype`, ...)
//! and transformers 5 (`rope_parameters`, `dtype`, `layer_types`, ...). The
//! dtype is ignored: kiln computes in f32.
//!
//! A field that changes the numbers and that kiln cannot express is an
//! [`ImportError`] naming the field and its value (dynamic RoPE scaling,
//! `scale_attn_by_inverse_layer_idx`, relative-key BERT positions, an unknown
//! activation, ...), never dropped; so are malformed JSON and wrong types.
//!
//! The model's head is not in `config.json` in a usable form (`architectures`
//! names whatever class saved the file: bert-base-uncased says
//! `BertForMaskedLM`, bart-base says `BartModel`), so each family has a
//! default — the base model's own output for encoders (BERT/RoBERTa: the
//! pooler; DistilBERT: none), the LM head for decoders and encoder-decoders —
//! and [`ImportOptions::head`] picks another.

mod cfg;
mod families;
pub mod family;
mod generic;
mod metadata;
mod rope;

use std::fmt;
use std::path::{Path, PathBuf};

use crate::spec::{self, HeadKind, ResolvedSpec};
use cfg::{Cfg, show};
pub use family::{
    Family, families as all_families, register_file as register_family_file,
    search_dirs as family_search_dirs,
};

pub use metadata::{Metadata, MetadataMap, config_from_metadata, import_metadata};

/// The head kinds a family file may offer (`[head.KIND]`).
pub const HEAD_KINDS: &[&str] = &["lm", "mlm", "pooler", "mean-pool", "none"];

pub(crate) fn head_name(k: HeadKind) -> &'static str {
    match k {
        HeadKind::Lm => "lm",
        HeadKind::Mlm => "mlm",
        HeadKind::Pooler => "pooler",
        HeadKind::MeanPool => "mean-pool",
        HeadKind::None => "none",
    }
}

/// The `model_type`s `kiln import` understands (every family's, sorted).
pub fn supported_model_types() -> Vec<String> {
    family::model_types().unwrap_or_default()
}

/// The largest `config.json` kiln reads (real ones are a few kilobytes).
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// Why a config could not be imported: the file, the config field at fault
/// (dotted for nested ones, `rope_scaling.type`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportError {
    /// The config file.
    pub file: PathBuf,
    /// The config field at fault; `None` for whole-file problems (unreadable,
    /// malformed JSON) and for options.
    pub field: Option<String>,
    /// A predicate on the field when there is one (`= "dynamic" is not supported ...`).
    pub message: String,
}

impl ImportError {
    pub(crate) fn new(file: &Path, field: Option<&str>, message: impl Into<String>) -> Self {
        ImportError {
            file: file.to_path_buf(),
            field: field.map(str::to_string),
            message: message.into(),
        }
    }
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(
                f,
                "{}: error: `{field}` {}",
                self.file.display(),
                self.message
            ),
            None => write!(f, "{}: error: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for ImportError {}

/// Choices the config itself does not settle.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportOptions {
    /// The spec's `name`; default: the directory holding `config.json`, else
    /// the file's stem (`gpt2.json` → `gpt2`), else `_name_or_path`, else the `model_type`.
    pub name: Option<String>,
    /// The head; default: the one the config's `architectures` entry names
    /// (per the family file), else the family's default.
    pub head: Option<HeadKind>,
    /// The checkpoint's tensor names, when known: family files may choose
    /// the head by what is present (`has_tensor`).
    pub tensors: Option<Vec<String>>,
}

/// An imported config: the resolved spec plus what the import assumed.
#[derive(Debug, Clone, PartialEq)]
pub struct Imported {
    /// The spec the config maps to, resolved.
    pub resolved: ResolvedSpec,
    /// `model_type` from the config.
    pub model_type: String,
    /// The family that read it, and its file.
    pub family: String,
    /// The family file (`models/families/NAME.toml` for shipped ones).
    pub family_file: PathBuf,
    /// The config file imported.
    pub source: PathBuf,
    /// `architectures` from the file (informational: it does not pick the head).
    pub architectures: Vec<String>,
    /// `(field, value)`: fields absent from the file, filled with the HF class default.
    pub defaults: Vec<(String, String)>,
    /// How fields were interpreted where that is not obvious.
    pub notes: Vec<String>,
}

impl Imported {
    /// The resolved spec as TOML (every derived default written out) under a
    /// comment header saying where it came from, which HF class defaults
    /// filled absent fields, and how ambiguous fields were read. Loading the
    /// text with [`spec::load_str`] gives back [`Imported::resolved`].
    pub fn to_toml(&self) -> String {
        let mut out = format!(
            "# Imported by `kiln import` from {}\n# model_type = {:?}, read by the family file {}",
            self.source.display(),
            self.model_type,
            self.family_file.display()
        );
        if !self.architectures.is_empty() {
            out += &format!("; architectures = {}", self.architectures.join(", "));
        }
        out.push('\n');
        if !self.defaults.is_empty() {
            out += "# Absent from the file, HF class defaults used:\n";
            for (k, v) in &self.defaults {
                out += &format!("#   {k} = {v}\n");
            }
        }
        if !self.notes.is_empty() {
            out += "# Notes:\n";
            for n in &self.notes {
                out += &format!("#   - {n}\n");
            }
        }
        out.push('\n');
        out += &self.resolved.to_toml();
        out
    }
}

/// Import config text with default options. `path` names the file in errors
/// and gives the spec its name.
pub fn from_hf_config(json: &str, path: &Path) -> Result<ResolvedSpec, ImportError> {
    import_config(json, path, &ImportOptions::default()).map(|i| i.resolved)
}

/// Import a `config.json`, or a directory holding one.
pub fn import_path(path: &Path, opts: &ImportOptions) -> Result<Imported, ImportError> {
    let file = if path.is_dir() {
        path.join("config.json")
    } else {
        path.to_path_buf()
    };
    let text = spec::read_text_file(&file, MAX_CONFIG_BYTES)
        .map_err(|e| ImportError::new(&file, None, format!("cannot read the config: {e}")))?;
    import_config(&text, &file, opts)
}

/// Import config text.
pub fn import_config(
    json: &str,
    path: &Path,
    opts: &ImportOptions,
) -> Result<Imported, ImportError> {
    let value: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| ImportError::new(path, None, format!("invalid JSON: {e}")))?;
    let Some(map) = value.as_object() else {
        return Err(ImportError::new(
            path,
            None,
            format!(
                "the top level must be a JSON object, found {}",
                show(&value)
            ),
        ));
    };
    let mut cfg = Cfg::new(map, path);
    let supported = || supported_model_types().join(", ");
    let model_type = match cfg.raw("model_type") {
        None | Some(serde_json::Value::Null) => {
            return Err(cfg.err(
                "model_type",
                format!(
                    "is missing; it says which architecture the config describes (supported: {})",
                    supported()
                ),
            ));
        }
        Some(v) => cfg.as_str("model_type", v)?.to_string(),
    };
    let architectures: Vec<String> = match cfg.present("architectures") {
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map_or_else(|| show(v), str::to_string))
            .collect(),
        Some(v) => vec![show(v)],
        None => Vec::new(),
    };
    families::common_checks(&cfg)?;
    let Some(fam) = family::for_model_type(&model_type)? else {
        let known = supported_model_types();
        let mut msg = format!(
            "= {model_type:?} is not supported (supported: {}); a family file can add it (docs/spec.md, \"Families\")",
            known.join(", ")
        );
        if let Some(s) = known
            .iter()
            .filter(|s| strsim::levenshtein(s, &model_type) <= 2)
            .min_by_key(|s| strsim::levenshtein(s, &model_type))
        {
            msg += &format!("; did you mean {s:?}?");
        }
        return Err(cfg.err("model_type", msg));
    };
    let built = {
        let mut ctx = generic::Ctx::new(&fam, &mut cfg, opts.tensors.as_deref());
        generic::import(&mut ctx, &architectures, opts.head, &model_type)?
    };
    let mut table = built.table;
    table.insert(
        "name".into(),
        toml::Value::String(spec_name(opts, path, &cfg, &model_type)),
    );
    let resolved = spec::load_table(&table, path).map_err(|e| {
        ImportError::new(
            path,
            None,
            format!("the imported spec does not validate: {}", e.summary()),
        )
    })?;
    Ok(Imported {
        resolved,
        model_type,
        family: fam.name.clone(),
        family_file: fam.origin.clone(),
        source: path.to_path_buf(),
        architectures,
        defaults: cfg.defaults,
        notes: cfg.notes,
    })
}

fn spec_name(opts: &ImportOptions, path: &Path, cfg: &Cfg, model_type: &str) -> String {
    if let Some(n) = &opts.name {
        return n.clone();
    }
    let file_name = path.file_name().and_then(|s| s.to_str());
    let from_path = if file_name == Some("config.json") {
        path.parent()
            .and_then(|p| p.file_name())
            .and_then(|s| s.to_str())
            .map(str::to_string)
    } else {
        path.file_stem()
            .and_then(|s| s.to_str())
            .map(str::to_string)
    };
    let from_hf = || {
        cfg.present("_name_or_path")
            .and_then(|v| v.as_str())
            .and_then(|s| s.trim_end_matches('/').rsplit('/').next())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    from_path
        .filter(|s| !s.is_empty() && s != "." && s != "..")
        .or_else(from_hf)
        .unwrap_or_else(|| model_type.to_string())
}
