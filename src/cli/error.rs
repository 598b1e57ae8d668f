//! [`CliError`]: everything a `kiln` command can fail with, each stage's
//! own error kept as it came (the command prints it once, as the stage
//! renders it), plus the command line's own mistakes.

use std::path::PathBuf;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Loading, lowering or compiling a spec (rendered with its location).
    #[error(transparent)]
    Kiln(#[from] kiln::Error),
    /// Opening a model: a spec, a HF folder, a GGUF file, their weights.
    #[error(transparent)]
    Open(#[from] kiln_open::OpenError),
    /// Running it: a limit, an unsupported request, a backend's failure.
    #[error(transparent)]
    Runtime(#[from] kiln_runtime::RuntimeError),
    /// The compiler's passes or fusion (an unknown `--disable-pass` name).
    #[error(transparent)]
    Compile(#[from] kiln_compiler::compile::CompileError),
    /// A code generator (`kiln compile --emit clif|wgsl`) on the spec at
    /// `origin`.
    #[error("{origin}: {source}")]
    Codegen {
        /// The spec being compiled.
        origin: String,
        /// The generator's error.
        source: kiln_compiler::codegen::CodegenError,
    },
    /// The graph passes run on their own (`kiln bench --compile-only`).
    #[error(transparent)]
    Pass(#[from] kiln_compiler::passes::PassError),
    /// Lowering a resolved spec (a kiln bug).
    #[error(transparent)]
    Ir(#[from] kiln_compiler::ir::IrError),
    /// Turning a HF config into a spec.
    #[error(transparent)]
    Import(#[from] kiln_compiler::import::ImportError),
    /// A checkpoint's header-only pre-flight.
    #[error(transparent)]
    Checkpoint(#[from] kiln_open::checkpoint::CheckpointError),
    /// Tokenizing a prompt or detokenizing the output.
    #[error(transparent)]
    Tokenizer(#[from] kiln_open::tokenizer::TokenizerError),
    /// A chat template that does not compile or refuses the conversation.
    #[error(transparent)]
    Chat(#[from] kiln_open::chat::ChatError),
    /// A chat turn (template, tokenizer or model).
    #[error(transparent)]
    Conversation(#[from] kiln_open::conversation::ConversationError),
    /// Sentence embeddings (no tokenizer, no pooling head, the encoder's failure).
    #[error(transparent)]
    Embed(#[from] kiln_open::EmbedError),
    /// Reading an input file.
    #[error("{}: error: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Writing an output file.
    #[error("{}: error: {message}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What was being written.
        message: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Serialising a report (a kiln bug).
    #[error("cannot serialise the report: {0}")]
    Report(String),
    /// Generation was interrupted (SIGINT / SIGTERM); what was generated
    /// has been printed. Exit status 130.
    #[error("interrupted after {generated} generated token(s)")]
    Interrupted {
        /// Tokens generated before the interrupt.
        generated: usize,
    },
    /// The command line asks for something impossible; the message says
    /// what to give instead.
    #[error("{0}")]
    Usage(String),
}

impl From<String> for CliError {
    fn from(message: String) -> Self {
        CliError::Usage(message)
    }
}

impl From<&str> for CliError {
    fn from(message: &str) -> Self {
        CliError::Usage(message.to_string())
    }
}

impl From<serde_json::Error> for CliError {
    fn from(e: serde_json::Error) -> Self {
        CliError::Report(e.to_string())
    }
}

impl From<toml::ser::Error> for CliError {
    fn from(e: toml::ser::Error) -> Self {
        CliError::Report(e.to_string())
    }
}
