//! Sentence similarity on kiln: a sentence-transformers folder
//! (all-MiniLM-L6-v2: config.json, model.safetensors, tokenizer.json,
//! modules.json with mean pooling and normalisation) opened as one model,
//! sentences embedded in one padded batch, compared by cosine similarity.
//!
//! The folder comes from `KILN_MINILM_DIR` (what `tests/parity/fetch_real.sh`
//! prints as `MINILM_DIR`). [`embed_ids`] works on any model with a
//! sentence-embedding head, e.g. a spec with `head.kind = "mean-pool"`:
//!
//! ```
//! use kiln_example_similarity::{cosine, embed_ids};
//! use kiln::open::source::{OpenOptions, open};
//!
//! let spec = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
//!     .join("../../models/tiny/all-minilm-l6-v2.toml");
//! let model = open(&spec, OpenOptions::default())?.model;
//! let v = embed_ids(&model, &[vec![1, 2, 3], vec![4, 5]])?;
//! assert!((cosine(&v[0], &v[0]) - 1.0).abs() < 1e-6);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use kiln::open::source::LoadedModel;
use kiln::runtime::session::Model;
use std::path::PathBuf;

/// The all-MiniLM-L6-v2 folder named by `KILN_MINILM_DIR`, if set.
pub fn minilm_dir() -> Option<PathBuf> {
    std::env::var_os("KILN_MINILM_DIR").map(PathBuf::from)
}

/// One embedding per token sequence, computed in one padded batch (padding
/// never changes a sequence's embedding). The model needs a sentence
/// embedding head (output `embedding`).
pub fn embed_ids(model: &Model, seqs: &[Vec<i32>]) -> Result<Vec<Vec<f32>>, String> {
    let refs: Vec<&[i32]> = seqs.iter().map(Vec::as_slice).collect();
    let out = model.encode_batch(&refs).map_err(|e| e.to_string())?;
    let emb = out.get("embedding").ok_or(
        "this model has no sentence-embedding head (a sentence-transformers folder with modules.json, or a spec with head.kind = \"mean-pool\")",
    )?;
    let d = (*emb.shape().last().unwrap_or(&1)).max(1);
    Ok(emb.to_f32_vec().chunks(d).map(<[f32]>::to_vec).collect())
}

/// Embeddings of `sentences`, tokenized with the model's tokenizer.
pub fn embed(loaded: &LoadedModel, sentences: &[&str]) -> Result<Vec<Vec<f32>>, String> {
    let tok = loaded
        .tokenizer
        .as_ref()
        .ok_or("this model has no tokenizer: give a Hugging Face folder with tokenizer.json")?;
    let ids = sentences
        .iter()
        .map(|s| {
            tok.encode(s)
                .map(|v| v.into_iter().map(|t| t as i32).collect())
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<Vec<i32>>, String>>()?;
    embed_ids(&loaded.model, &ids)
}

/// Cosine similarity of two vectors (0 when either is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let n = norm(a) * norm(b);
    if n == 0.0 { 0.0 } else { (dot / n) as f32 }
}

/// For each sentence, the index of the most similar other sentence and the
/// similarity (`None` for a single sentence).
pub fn nearest(embeddings: &[Vec<f32>]) -> Vec<Option<(usize, f32)>> {
    embeddings
        .iter()
        .enumerate()
        .map(|(i, a)| {
            embeddings
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(j, b)| (j, cosine(a, b)))
                .max_by(|x, y| x.1.total_cmp(&y.1))
        })
        .collect()
}
