//! Text ↔ token ids, through the `tokenizers` crate: from a HF
//! `tokenizer.json`, or from a tokenizer built elsewhere (the GGUF reader
//! builds one from its metadata). Also an incremental decoder that turns a
//! growing id sequence into text pieces for streaming.

use crate::chat::{ChatError, ChatTemplate};
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
    /// The chat template the model carries, uncompiled: `(source, origin)`.
    chat_template: Option<(String, String)>,
    /// The texts a chat template sees as `bos_token` / `eos_token` (set
    /// with the template; by default the text of `bos` and the first `eos`).
    special_text: Option<(String, String)>,
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
            chat_template: None,
            special_text: None,
        }
    }

    /// Attach a chat template: its Jinja `source`, and `origin` naming
    /// where it came from in errors (`FILE: key`).
    pub fn set_chat_template(&mut self, source: String, origin: String) {
        self.chat_template = Some((source, origin));
    }

    /// Set the texts a chat template sees as `bos_token` and `eos_token`.
    pub fn set_special_text(&mut self, bos: String, eos: String) {
        self.special_text = Some((bos, eos));
    }

    /// The texts a chat template sees as `bos_token` and `eos_token`.
    pub fn special_text(&self) -> (String, String) {
        if let Some((b, e)) = &self.special_text {
            return (b.clone(), e.clone());
        }
        let text = |id: Option<u32>| {
            id.and_then(|i| self.inner.id_to_token(i))
                .unwrap_or_default()
        };
        (text(self.bos), text(self.eos.first().copied()))
    }

    /// Whether the model carries a chat template.
    pub fn has_chat_template(&self) -> bool {
        self.chat_template.is_some()
    }

    /// The model's chat template, compiled; `None` when it carries none.
    pub fn chat_template(&self) -> Result<Option<ChatTemplate>, ChatError> {
        let Some((source, origin)) = &self.chat_template else {
            return Ok(None);
        };
        let (bos, eos) = self.special_text();
        ChatTemplate::new(source, origin, &bos, &eos).map(Some)
    }

    /// Ids for `text` exactly as written: no special tokens added and no
    /// BOS prepended (a rendered chat template writes its own), while
    /// special tokens written in the text (`<|im_start|>`) match whole.
    pub fn encode_raw(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let enc =
            (self.inner.encode(text, false)).map_err(|e| TokenizerError::Codec(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decode `ids` keeping special tokens as written.
    pub fn decode_raw(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, false)
            .map_err(|e| TokenizerError::Codec(e.to_string()))
    }

    /// Whether `id` is a special (control) token of the vocabulary.
    pub fn is_special(&self, id: u32) -> bool {
        self.inner
            .get_added_tokens_decoder()
            .get(&id)
            .is_some_and(|t| t.special)
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
        let config_path = dir.join("tokenizer_config.json");
        let tok_config = config("tokenizer_config.json");
        let mut chat = tok_config
            .as_ref()
            .and_then(|c| chat_template_of(c.get("chat_template")?))
            .map(|t| (t, format!("{}: chat_template", config_path.display())));
        // transformers >= 4.43 may save the template beside the config instead.
        for (name, json) in [("chat_template.jinja", false), ("chat_template.json", true)] {
            let file = dir.join(name);
            if chat.is_some() || !file.exists() {
                continue;
            }
            let text = std::fs::read_to_string(&file).map_err(|e| TokenizerError::Load {
                path: file.display().to_string(),
                message: e.to_string(),
            })?;
            let source = if json {
                serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| chat_template_of(v.get("chat_template")?))
                    .ok_or_else(|| TokenizerError::Load {
                        path: file.display().to_string(),
                        message: "expected a JSON object with a string `chat_template`".into(),
                    })?
            } else {
                text
            };
            chat = Some((source, file.display().to_string()));
        }
        let special = |key: &str| -> Option<String> {
            match tok_config.as_ref()?.get(key)? {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Object(o) => Some(o.get("content")?.as_str()?.to_string()),
                _ => None,
            }
        };
        let (bos_text, eos_text) = (special("bos_token"), special("eos_token"));
        let mut tok = Tokenizer::new(inner, bos, eos);
        if let Some((source, origin)) = chat {
            tok.set_chat_template(source, origin);
        }
        if bos_text.is_some() || eos_text.is_some() {
            tok.set_special_text(bos_text.unwrap_or_default(), eos_text.unwrap_or_default());
        }
        Ok(tok)
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

/// A `chat_template` value: a string, or (transformers' named templates) a
/// list of `{name, template}` from which the one named `default` is used.
fn chat_template_of(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(list) => list
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
        _ => None,
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
