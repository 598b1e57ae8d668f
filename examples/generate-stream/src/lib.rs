//! Embedding kiln's runtime in a Rust program: open a model, generate with a
//! streaming token callback, and serve several requests at once from one
//! compiled model (each thread with its own session and KV cache).
//!
//! The `generate-stream` binary (`src/main.rs`) is the command-line front;
//! this library holds the parts its tests exercise.
//!
//! ```
//! use kiln_example_generate_stream::{default_spec, open_model, stream};
//!
//! let loaded = open_model(&default_spec(), 0)?;
//! let mut text = String::new();
//! let ids = stream(&loaded, &[1, 2, 3], 4, &mut |piece| text.push_str(piece))?;
//! assert_eq!(ids.len(), 4);
//! assert_eq!(text.split_whitespace().count(), 4); // no tokenizer: ids are streamed
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use kiln::open::source::{LoadedModel, OpenError, OpenOptions, open};
use kiln::open::tokenizer::StreamDecoder;
use kiln::runtime::session::{GenerateOptions, Model};
use std::path::{Path, PathBuf};

/// The example's own spec (`tiny-llama.toml`: a small Llama-style decoder),
/// run with seeded random weights when no model is given.
pub fn default_spec() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tiny-llama.toml")
}

/// Open `source` (a `.toml` spec with random weights from `seed`, a Hugging
/// Face folder or a `.gguf` file) and compile it for the JIT.
pub fn open_model(source: &Path, seed: u64) -> Result<LoadedModel, OpenError> {
    open(
        source,
        OpenOptions {
            seed,
            ..OpenOptions::default()
        },
    )
}

/// The prompt as token ids: `text` through the model's tokenizer, or, for a
/// model without one, `text` read as comma-separated ids.
pub fn prompt_ids(loaded: &LoadedModel, text: &str) -> Result<Vec<i32>, String> {
    let ids: Vec<i32> = match &loaded.tokenizer {
        Some(tok) => tok
            .encode(text)
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|t| t as i32)
            .collect(),
        None => text
            .split(',')
            .map(|s| {
                s.trim().parse().map_err(|_| {
                    format!("this model has no tokenizer: give the prompt as token ids (1,2,3), not {text:?}")
                })
            })
            .collect::<Result<_, _>>()?,
    };
    if ids.is_empty() {
        return Err("the prompt encodes to no tokens".into());
    }
    Ok(ids)
}

/// Greedily generate up to `max_new` tokens after `prompt`, handing each
/// piece of text to `on_piece` as soon as it is produced (decoded text with a
/// tokenizer, `"ID "` without one). Stops early at the tokenizer's
/// end-of-sequence tokens. Returns the generated ids.
pub fn stream(
    loaded: &LoadedModel,
    prompt: &[i32],
    max_new: usize,
    on_piece: &mut dyn FnMut(&str),
) -> Result<Vec<i32>, String> {
    let tok = loaded.tokenizer.as_ref();
    let opts = GenerateOptions {
        max_new_tokens: max_new,
        stop_tokens: tok
            .map(|t| t.eos.iter().map(|&e| e as i32).collect())
            .unwrap_or_default(),
        ..GenerateOptions::default()
    };
    let mut decoder = tok.map(StreamDecoder::new);
    let mut failed = None;
    let ids = loaded
        .model
        .session()
        .generate(prompt, &opts, &mut |id| {
            let piece = match decoder.as_mut() {
                Some(d) => match d.push(id as u32) {
                    Ok(p) => p,
                    Err(e) => {
                        failed = Some(e.to_string());
                        return false; // stop generating
                    }
                },
                None => Some(format!("{id} ")),
            };
            if let Some(p) = piece {
                on_piece(&p);
            }
            true
        })
        .map_err(|e| e.to_string())?;
    match failed {
        Some(e) => Err(e),
        None => Ok(ids),
    }
}

/// Generate greedily for every prompt at once, one thread per prompt, all
/// sharing `model` (a compiled model is `Sync`; each thread opens its own
/// session). Results come back in the order of `prompts`.
pub fn generate_parallel(
    model: &Model,
    prompts: &[Vec<i32>],
    max_new: usize,
) -> Vec<Result<Vec<i32>, String>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = prompts
            .iter()
            .map(|p| {
                s.spawn(move || {
                    model
                        .session()
                        .generate_greedy(p, max_new, None)
                        .map_err(|e| e.to_string())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a generation thread panicked".into()))
            })
            .collect()
    })
}
