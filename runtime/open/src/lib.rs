//! Opening models for kiln: what a user has — a spec file (random weights,
//! or a checkpoint given with `weights`), a Hugging Face folder
//! (config.json + safetensors + tokenizer.json), or a GGUF file — turned
//! into a resolved spec, a runtime [`kiln_runtime::session::Model`] and,
//! when the source carries one, its tokenizer.
//!
//! This crate is the only one that knows both halves: it reads specs and
//! checkpoints (through the compiler's spec loader and importer) and builds
//! runtime weights. The runtime itself knows only the IR and the kernel IR.
//!
//! - [`source`]: [`open`], [`open_spec`] and their options.
//! - [`checkpoint`]: safetensors files with header-only pre-flight and the
//!   mapping tables from checkpoint names to kiln's canonical names.
//! - [`gguf`]: GGUF v2/v3 files: metadata, tensors, the spec their metadata
//!   describes, and the tokenizer they carry.
//! - [`tokenizer`]: Hugging Face tokenizers and streamed detokenisation.
//! - [`chat`]: the chat template a model carries, rendered as transformers does.
//! - [`conversation`]: chat turns over one reused KV cache.
//! - [`stop`]: stop strings over streamed text.

pub mod chat;
pub mod checkpoint;
pub mod conversation;
pub mod gguf;
pub mod source;
pub mod stop;
pub mod tokenizer;

pub use source::{EmbedError, LoadedModel, OpenError, OpenOptions, open, open_spec};
