//! The checkpoint loader's error type.

use std::path::PathBuf;

/// Everything that can go wrong while opening, checking or loading a
/// checkpoint. Messages name the file and, where there is one, the tensor.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file or directory could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// A directory holds no safetensors checkpoint kiln recognises.
    #[error(
        "{}: no safetensors checkpoint found (looked for model.safetensors, \
         model.safetensors.index.json or model-NNNNN-of-NNNNN.safetensors shards); \
         the directory holds: [{}]",
        path.display(), found.join(", ")
    )]
    NoCheckpoint { path: PathBuf, found: Vec<String> },

    /// A safetensors file's header is unreadable (truncated, not JSON, ...).
    #[error("{}: invalid safetensors header: {message}", path.display())]
    Header { path: PathBuf, message: String },

    /// One tensor's header entry is invalid, or its data is unusable.
    #[error("{}: tensor `{tensor}`: {message}", path.display())]
    Tensor {
        path: PathBuf,
        tensor: String,
        message: String,
    },

    /// The same tensor name appears in two files of a sharded checkpoint.
    #[error("tensor `{tensor}` appears in both {} and {}", first.display(), second.display())]
    DuplicateTensor {
        tensor: String,
        first: PathBuf,
        second: PathBuf,
    },

    /// `model.safetensors.index.json` is malformed or disagrees with the shards.
    #[error("{}: {message}", path.display())]
    Index { path: PathBuf, message: String },

    /// `config.json` exists but cannot be parsed.
    #[error("{}: invalid config.json: {message}", path.display())]
    Config { path: PathBuf, message: String },

    /// An embedded mapping table is malformed (a bug in kiln's tables).
    #[error("mapping table `{family}`: {message}")]
    Table { family: String, message: String },

    /// The requested family has no mapping table.
    #[error("no mapping table for checkpoint family `{family}`; known families: {}", known.join(", "))]
    UnknownFamily { family: String, known: Vec<String> },

    /// The model's graphs cannot be matched against a checkpoint (a
    /// parameter with a symbolic shape, conflicting declarations).
    #[error("model parameters: {0}")]
    Model(String),

    /// The checkpoint, mapped through the family's table, does not match
    /// the model's parameters. Lists every problem found.
    #[error(
        "checkpoint {} ({family} layout) does not match the model: {} problem{}\n  {}",
        path.display(), problems.len(), if problems.len() == 1 { "" } else { "s" },
        problems.join("\n  ")
    )]
    Mismatch {
        path: PathBuf,
        family: String,
        problems: Vec<String>,
    },

    /// No mapping table fits the checkpoint (auto-detection).
    #[error(
        "checkpoint {}: no mapping table fits it{}; the closest is `{closest}` with {} problem{}:\n  {}",
        path.display(),
        model_type.as_ref().map(|t| format!(" (config.json model_type `{t}` names no table)")).unwrap_or_default(),
        problems.len(), if problems.len() == 1 { "" } else { "s" },
        problems.join("\n  ")
    )]
    NoTableFits {
        path: PathBuf,
        model_type: Option<String>,
        closest: String,
        problems: Vec<String>,
    },

    /// Several mapping tables fit the checkpoint but map it differently.
    #[error(
        "checkpoint {}: the mapping tables {} all fit it but map it differently; \
         name the family explicitly",
        path.display(), families.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", ")
    )]
    Ambiguous {
        path: PathBuf,
        families: Vec<String>,
    },

    /// A checkpoint tensor that the table ties to a parameter (an LM head
    /// tied to the embedding) holds different values.
    #[error(
        "{}: tensor `{tensor}` should equal `{target}` (the model ties them) but differs \
         by up to {max_diff:e}: the checkpoint does not tie them (for an LM head, use a spec \
         with `tied = false` under [head])",
        path.display()
    )]
    TiedMismatch {
        path: PathBuf,
        tensor: String,
        target: String,
        max_diff: f32,
    },
}
