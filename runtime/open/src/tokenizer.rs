//! Text ↔ token ids, through the `tokenizers` crate: from a HF
//! `tokenizer.json`, or from a tokenizer built elsewhere (the GGUF reader
//! builds one from its metadata). Also an incremental decoder that turns a
//! growing id sequence into text pieces for streaming.

use std::path::Path;

/// A tokenizer plus the special tokens generation needs.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The beginning-of-sequence token, if the vocabulary has one.
    pub bos: Option<u32>,
    /// Prepend `bos` in [`Tokenizer::encode`] (when the tokenizer's own
    /// post-processor does not already add it).
    pub prepend_bos: bool,
    /// Generation stops after any of these.
    pub eos: Vec<u32>,
    /// Whether `encode` adds the tokenizer's special tokens (BOS, `[CLS]`/`[SEP]`).
    pub add_special_tokens: bool,
}

/// Why a tokenizer could not be loaded or could not encode/decode.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The tokenizer file is missing or unreadable.
    #[error("{path}: cannot load tokenizer: {message}")]
    Load {
        /// The tokenizer's path (or a description of its origin).
        path: String,
        /// The underlying error.
        message: String,
    },
    /// Encoding or decoding failed inside the `tokenizers` crate.
    #[error("tokenizer: {0}")]
    Codec(String),
    /// A token id outside the vocabulary (or negative) was given to decode.
    #[error("token id {id} is outside the vocabulary of {vocab} tokens")]
    UnknownId {
        /// The id given.
        id: i64,
        /// The vocabulary size.
        vocab: usize,
    },
}

impl Tokenizer {
    /// Wrap a built tokenizer. Padding and truncation are switched off: kiln
    /// pads batches itself and masks the padding.
    pub fn new(mut inner: tokenizers::Tokenizer, bos: Option<u32>, eos: Vec<u32>) -> Self {
        inner.with_padding(None);
        let _ = inner.with_truncation(None);
        Tokenizer {
            inner,
            bos,
            prepend_bos: false,
            eos,
            add_special_tokens: true,
        }
    }

    /// Load `tokenizer.json`; special tokens come from the sibling
    /// `tokenizer_config.json` / `config.json` when present.
    pub fn from_file(path: &Path) -> Result<Self, TokenizerError> {
        let err = |message: String| TokenizerError::Load {
            path: path.display().to_string(),
            message,
        };
        if !path.exists() {
            return Err(err(
                "file not found (a HF model folder has tokenizer.json next to config.json)".into(),
            ));
        }
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| err(e.to_string()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let config = |name: &str| -> Option<serde_json::Value> {
            let text = std::fs::read_to_string(dir.join(name)).ok()?;
            serde_json::from_str(&text).ok()
        };
        let id_of = |v: &serde_json::Value| -> Option<u32> {
            match v {
                serde_json::Value::String(s) => inner.token_to_id(s),
                serde_json::Value::Object(o) => o
                    .get("content")
                    .and_then(|c| c.as_str())
                    .and_then(|s| inner.token_to_id(s)),
                serde_json::Value::Number(n) => n.as_u64().map(|n| n as u32),
                _ => None,
            }
        };
        let mut bos = None;
        let mut eos = Vec::new();
        for name in [
            "generation_config.json",
            "tokenizer_config.json",
            "config.json",
        ] {
            let Some(c) = config(name) else { continue };
            let keys = [
                ("bos_token_id", true),
                ("bos_token", true),
                ("eos_token_id", false),
                ("eos_token", false),
            ];
            for (key, is_bos) in keys {
                match c.get(key) {
                    Some(serde_json::Value::Array(ids)) if !is_bos => {
                        eos.extend(ids.iter().filter_map(id_of))
                    }
                    Some(v) => match (is_bos, id_of(v)) {
                        (true, Some(id)) if bos.is_none() => bos = Some(id),
                        (false, Some(id)) => eos.push(id),
                        _ => {}
                    },
                    None => {}
                }
            }
        }
        eos.sort_unstable();
        eos.dedup();
        Ok(Tokenizer::new(inner, bos, eos))
    }

    /// Encode `text` to ids, adding special tokens if `add_special_tokens` and
    /// prepending `bos` if `prepend_bos` and the encoding does not already start with it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let enc = self
            .inner
            .encode(text, self.add_special_tokens)
            .map_err(|e| TokenizerError::Codec(e.to_string()))?;
        let ids = enc.get_ids();
        match self.bos {
            Some(b) if self.prepend_bos && ids.first() != Some(&b) => {
                Ok(std::iter::once(b).chain(ids.iter().copied()).collect())
            }
            _ => Ok(ids.to_vec()),
        }
    }

    /// Decode `ids` to text, skipping special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, true)
            .map_err(|e| TokenizerError::Codec(e.to_string()))
    }

    /// Vocabulary size, counting added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// Turns generated ids into text pieces as they arrive. Byte-level BPE can
/// split a character across tokens, so a piece is only released once the
/// decoded text no longer ends in a replacement character.
pub struct StreamDecoder<'t> {
    tok: &'t Tokenizer,
    ids: Vec<u32>,
    emitted: usize,
}

impl<'t> StreamDecoder<'t> {
    /// A decoder that has emitted nothing yet.
    pub fn new(tok: &'t Tokenizer) -> Self {
        StreamDecoder {
            tok,
            ids: Vec::new(),
            emitted: 0,
        }
    }

    /// Add a token; returns the new text it completes, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>, TokenizerError> {
        self.ids.push(id);
        let text = self.tok.decode(&self.ids)?;
        if text.ends_with('\u{FFFD}')
            || text.len() <= self.emitted
            || !text.is_char_boundary(self.emitted)
        {
            return Ok(None);
        }
        let piece = text[self.emitted..].to_string();
        self.emitted = text.len();
        Ok(Some(piece))
    }
}
