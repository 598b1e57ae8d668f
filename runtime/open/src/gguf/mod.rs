//! GGUF (llama.cpp's model container) support: read a file, dequantise its
//! tensors to f32, map llama.cpp tensor names to kiln's canonical parameter
//! names, derive a kiln spec from the metadata, and build the tokenizer the
//! file carries.
//!
//! ```no_run
//! use kiln_open::gguf::GgufFile;
//! use kiln_runtime::session::Model;
//!
//! let file = GgufFile::open("SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let spec = file.spec()?; // a kiln ResolvedSpec built from the metadata
//! let weights = file.weights()?; // canonical names, f32, Q/K rows un-permuted
//! let tokenizer = file.tokenizer()?;
//! let lowered = kiln_compiler::lower::lower(&spec)?;
//! let model = Model::new(lowered, weights);
//! let ids = tokenizer.encode_i32("The capital of France is")?;
//! let out = model.session().generate_greedy(&ids, 8, None)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Robustness
//!
//! Every count and length in the file is checked against the bytes that are
//! actually there before anything is allocated, so a truncated or corrupt
//! file (or one claiming a terabyte tensor or 2^60 metadata entries) gives a
//! [`GgufError`] naming the file and the field or tensor at fault, never a
//! panic and never an allocation larger than a small multiple of the file
//! size. Tensor data stays memory-mapped until it is dequantised.
//!
//! # Layout conventions
//!
//! GGUF lists dimensions innermost first (`ne[0]` is the row length); kiln
//! shapes are row-major outermost first, so [`TensorInfo::shape`] is the
//! reversed dimension list and a `[out, in]` matrix has `ne = [in, out]`.
//! llama.cpp's converter permutes the rows of `attn_q`/`attn_k` of
//! llama-family models for its interleaved RoPE; [`GgufFile::weights`]
//! applies the inverse so the weights match kiln's (and Hugging Face's)
//! half-split `rotate_half` layout.

mod dequant;
mod names;
mod reader;
mod spec;
mod tokenizer;

pub use dequant::{GgmlType, dequantize, f16_to_f32};
pub use names::{
    ArchFamily, Mapped, NameRule, RowOrder, arch_family, archs, canonical, canonical_name,
    is_ignored, supported_archs, unpermute_rope_rows,
};
pub use reader::{Array, DEFAULT_ALIGNMENT, GgufFile, MetadataType, TensorInfo, Value};
pub use tokenizer::{GgufTokenizer, PRE_TOKENIZERS, PreTokenizerRule};

use std::path::PathBuf;

/// Anything wrong with a GGUF file or with what it describes: always names
/// the file, and in `message` the field, key or tensor at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}: {message}", file.display())]
pub struct GgufError {
    /// The file (as given to [`GgufFile::open`], or the name passed to
    /// [`GgufFile::from_bytes`]).
    pub file: PathBuf,
    /// What is wrong, naming the header field, metadata key or tensor.
    pub message: String,
}

/// Shorthand for results in this module.
pub type Result<T, E = GgufError> = std::result::Result<T, E>;
