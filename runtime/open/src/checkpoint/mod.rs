//! Loading Hugging Face safetensors checkpoints into canonical [`Weights`].
//!
//! kiln's lowering names every parameter canonically
//! (`layers.3.attn.q.weight`, `[out, in]` like an HF `Linear`); each
//! checkpoint family's names and layouts are mapped onto those names by a
//! *mapping table*, which is data (the `[tensors]` section of the family file
//! `models/families/FAMILY.toml`, embedded in the binary, or a user's):
//! adding a family is adding a file.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use kiln_compiler::{lower::lower, spec};
//! use kiln_open::checkpoint;
//!
//! let lowered = lower(&spec::load("models/llama-2-7b.toml")?)?;
//! let graphs: Vec<_> = lowered.graphs().collect();
//! let dir = std::path::Path::new("Llama-2-7b-hf/");
//! // Header-only check: every missing, unexpected and mis-shaped tensor at once.
//! let plan = checkpoint::preflight(dir, &graphs, None)?;
//! println!("{} layout, {} bytes to read", plan.family(), plan.total_bytes());
//! // Or load straight away (the same pre-flight runs first).
//! let weights = checkpoint::load_safetensors(dir, &graphs, None)?;
//! # let _ = weights; Ok(()) }
//! ```
//!
//! # Checkpoints
//!
//! A path is a `.safetensors` file or a directory holding `model.safetensors`
//! or shards (`model.safetensors.index.json`, or `model-NNNNN-of-NNNNN.safetensors`
//! without one). Files are memory-mapped and their headers validated before
//! anything else: a truncated or corrupt file, a header claiming more bytes
//! than the file holds, or a shape whose size overflows is an error naming
//! the file and tensor, never a panic or an oversized allocation. Tensor
//! data in F32, F16, BF16 or F64 ([`SUPPORTED_DTYPES`]) is converted to f32
//! at load; other dtypes are an error only for tensors that would be loaded
//! (an ignored `I64` `position_ids` buffer is fine).
//!
//! # Choosing the table
//!
//! An explicit `family` (a table's family name or one of its `model_types`)
//! wins; otherwise a directory's `config.json` `model_type` picks the table
//! that lists it; otherwise every table is tried and the one that maps the
//! whole checkpoint onto the model without a problem is used. Tables that
//! fit equally well and map it identically (a Llama checkpoint fits the
//! `llama`, `gemma` and `mixtral` tables alike) are not ambiguous; tables
//! that fit but map differently are ([`CheckpointError::Ambiguous`]). When no
//! table fits, the error lists the problems of the closest one.
//!
//! # Pre-flight
//!
//! Before any data is read, the checkpoint's header (names, shapes, dtypes),
//! mapped through the table, is compared with the parameters the model's
//! graphs declare, and [`CheckpointError::Mismatch`] lists *every* problem
//! at once, one line each, naming the checkpoint tensor and the canonical
//! parameter: `missing` (a parameter no tensor provides, with the tensor
//! name the table expects), `unexpected` (a tensor no rule matches, or one
//! mapping to a parameter the model does not have), `shape`, `dtype`, and
//! `duplicate` (two tensors for one parameter, e.g. with and without a
//! `model.` prefix).
//!
//! # Mapping tables
//!
//! A family file's `[tensors]` section (its family name, description and
//! `model_types` are the family's):
//!
//! ```toml
//! prefixes = ["transformer."]           # names are accepted with or without one of these
//! # extends = "llama"                   # start from another family's rules; own rules
//!                                       # replace the parent's for the same `from`
//! # drop = ["block.0.x.weight"]         # parent rules (by `from`) not kept
//!
//! [tensors.rename]                           # checkpoint pattern = canonical pattern
//! "h.{i}.ln_1.weight" = "layers.{i}.attn_norm.weight"
//!
//! [tensors.optional]                         # renames used only when the model declares the
//! "pooler.dense.weight" = "head.pooler.dense.weight"   # target; otherwise reported unused
//!
//! [tensors.tied]                             # copies of a parameter: checked equal, not loaded
//! "encoder.embed_tokens.weight" = "embed.tokens"
//!
//! [tensors.ignore]                           # pattern = why kiln does not need it
//! "h.{i}.attn.bias" = "causal-mask buffer; kiln builds its own masks"
//!
//! [[tensors.rule]]                           # anything with a transform
//! from = "h.{i}.attn.c_attn.weight"
//! transpose = true                      # swap the last two axes first (Conv1D is [in, out])
//! split = { axis = 0, into = ["layers.{i}.attn.q.weight", "layers.{i}.attn.k.weight",
//!                            "layers.{i}.attn.v.weight"] }
//! ```
//!
//! Patterns name tensors with `{placeholders}` that match decimal integers;
//! every placeholder of a target must appear in `from`. A `[[rule]]` has
//! `from` and one of:
//! - `to = "canonical"`: copy, optionally `transpose = true` and/or
//!   `reshape = true` (to the parameter's declared shape, same element
//!   count: BART's `final_logits_bias` `[1, vocab]` -> `head.bias` `[vocab]`);
//! - `split = { axis, into = [...] }`: cut along `axis` into the targets,
//!   sized by their declared shapes; with `groups = N` or
//!   `groups = "kv_heads"` the axis is N repetitions of
//!   `[chunk of part 0, chunk of part 1, ...]` (GPT-NeoX's per-head
//!   `query_key_value`; `"kv_heads"` reads the layer's KV-head count, for
//!   the layer bound to `{i}`, off the decoder's `past.{i}.k` input);
//! - `to` with `stack = "e"`: every tensor matching `from` for
//!   `{e} = 0, 1, ...` is stacked along a new leading axis (Mixtral's
//!   per-expert weights into `[E, d_ff, d]`);
//! - `ignore = "why"`;
//!
//! plus the flags `tied = "canonical"` (when the model does not declare the
//! target, the tensor must equal that parameter: `lm_head.weight` under a
//! tied head) and `optional = true` (when the model does not declare the
//! target, skip the tensor and list it in [`Plan::unused`]), and
//! `supersedes = "other checkpoint pattern"` (when this tensor is present,
//! the other one — same placeholders, same prefix — is ignored: an untied
//! RoBERTa MLM stores `lm_head.bias` beside the `lm_head.decoder.bias` its
//! decoder adds, and transformers uses the latter).
//!
//! A checkpoint name is first matched as it is, then with one of the
//! table's prefixes stripped. A name matching no rule is reported, so every
//! tensor kiln does not load is accounted for explicitly.

mod error;
mod load;
pub(crate) mod plan;
mod reader;
pub(crate) mod table;
mod write;

pub use error::CheckpointError;
pub use plan::CANONICAL;
pub use plan::Plan;
pub use reader::{Checkpoint, Dtype, SUPPORTED_DTYPES, TensorInfo};
pub use table::{Table, families, table, tables};
pub use write::{CANONICAL_FORMAT, safetensors_bytes, write_safetensors};

use kiln_compiler::ir::Graph;
use kiln_runtime::Weights;
use std::path::Path;

impl Checkpoint {
    /// Pre-flight against the model made of `graphs`: choose the mapping
    /// table (see the [module docs](self)) and check every tensor's name,
    /// shape and dtype against the declared parameters, reading no data.
    pub fn plan(&self, graphs: &[&Graph], family: Option<&str>) -> Result<Plan, CheckpointError> {
        let model = plan::ModelParams::from_graphs(graphs)?;
        plan::choose(self, &model, family)
    }
}

/// Open the checkpoint at `path` (file or directory) and pre-flight it
/// against `graphs`, reading headers only. `family` names the mapping
/// table; `None` picks it from `config.json` or by auto-detection.
pub fn preflight(
    path: &Path,
    graphs: &[&Graph],
    family: Option<&str>,
) -> Result<Plan, CheckpointError> {
    Checkpoint::open(path)?.plan(graphs, family)
}

/// Load the checkpoint at `path` into canonical [`Weights`] for `graphs`,
/// after a [`preflight`].
pub fn load_safetensors(
    path: &Path,
    graphs: &[&Graph],
    family: Option<&str>,
) -> Result<Weights, CheckpointError> {
    let ckpt = Checkpoint::open(path)?;
    let plan = ckpt.plan(graphs, family)?;
    ckpt.load(&plan, None)
}

/// [`load_safetensors`] calling `progress(done_bytes, total_bytes)` as it
/// reads (for a progress bar).
pub fn load_safetensors_with_progress(
    path: &Path,
    graphs: &[&Graph],
    family: Option<&str>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Weights, CheckpointError> {
    let ckpt = Checkpoint::open(path)?;
    let plan = ckpt.plan(graphs, family)?;
    ckpt.load(&plan, Some(progress))
}
