//! The checkpoint loader's error type.

use std::path::PathBuf;

/// Everything that can go wrong while opening, checking or loading a
/// checkpoint. Messages name the file and, where there is one, the tensor.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file or directory could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },

    /// A directory holds no safetensors checkpoint kiln recognises.
    #[error(
        "{}: no safetensors checkpoint found (looked for model.safetensors, \
         model.safetensors.index.json or model-NNNNN-of-NNNNN.safetensors shards); \
         the directory holds: [{}]",
        path.display(), found.join(", ")
    )]
    NoCheckpoint {
        /// The file or directory concerned.
        path: PathBuf,
        /// The file names the directory holds.
        found: Vec<String>,
    },

    /// A safetensors file's header is unreadable (truncated, not JSON, ...).
    #[error("{}: invalid safetensors header: {message}", path.display())]
    Header {
        /// The file or directory concerned.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// One tensor's header entry is invalid, or its data is unusable.
    #[error("{}: tensor `{tensor}`: {message}", path.display())]
    Tensor {
        /// The file or directory concerned.
        path: PathBuf,
        /// The tensor name as the checkpoint spells it.
        tensor: String,
        /// What is wrong.
        message: String,
    },

    /// The same tensor name appears in two files of a sharded checkpoint.
    #[error("tensor `{tensor}` appears in both {} and {}", first.display(), second.display())]
    DuplicateTensor {
        /// The tensor name as the checkpoint spells it.
        tensor: String,
        /// The first file holding it.
        first: PathBuf,
        /// The second file holding it.
        second: PathBuf,
    },

    /// `model.safetensors.index.json` is malformed or disagrees with the shards.
    #[error("{}: {message}", path.display())]
    Index {
        /// The file or directory concerned.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// `config.json` exists but cannot be parsed.
    #[error("{}: invalid config.json: {message}", path.display())]
    Config {
        /// The file or directory concerned.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// An embedded mapping table is malformed (a bug in kiln's tables).
    #[error("mapping table `{family}`: {message}")]
    Table {
        /// The checkpoint family (mapping table) name.
        family: String,
        /// What is wrong.
        message: String,
    },

    /// The requested family has no mapping table.
    #[error("no mapping table for checkpoint family `{family}`; known families: {}", known.join(", "))]
    UnknownFamily {
        /// The checkpoint family (mapping table) name.
        family: String,
        /// The families that have a table.
        known: Vec<String>,
    },

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
        /// The file or directory concerned.
        path: PathBuf,
        /// The checkpoint family (mapping table) name.
        family: String,
        /// One line per problem found.
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
        /// The file or directory concerned.
        path: PathBuf,
        /// `model_type` from config.json, when there is one.
        model_type: Option<String>,
        /// The family whose table came closest.
        closest: String,
        /// One line per problem found.
        problems: Vec<String>,
    },

    /// Several mapping tables fit the checkpoint but map it differently.
    #[error(
        "checkpoint {}: the mapping tables {} all fit it but map it differently; \
         name the family explicitly",
        path.display(), families.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", ")
    )]
    Ambiguous {
        /// The file or directory concerned.
        path: PathBuf,
        /// The families whose tables fit.
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
        /// The file or directory concerned.
        path: PathBuf,
        /// The tensor name as the checkpoint spells it.
        tensor: String,
        /// The tensor it is tied to.
        target: String,
        /// Largest absolute elementwise difference.
        max_diff: f32,
    },
}
