//! The tokenizer a GGUF file carries in its `tokenizer.ggml.*` metadata,
//! rebuilt as a Hugging Face `tokenizers::Tokenizer`.
//!
//! Supported: `tokenizer.ggml.model = "gpt2"` (byte-level BPE) with the
//! pre-tokenizer named by `tokenizer.ggml.pre` (see [`PRE_TOKENIZERS`]).
//! Token types (`tokenizer.ggml.token_type`) 3 (control) become special
//! added tokens and 4 (user-defined) plain added tokens, so both are matched
//! whole in the input text, as llama.cpp and HF do.

use super::Result;
use super::reader::{Array, GgufFile};
use crate::tokenizer::TokenizerError;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::{SpecialToken, TemplateProcessing};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

/// llama.cpp token types.
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;

/// GPT-2's split regex (HF `ByteLevel(use_regex=true)`).
const GPT2_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama 3's split regex (digits in groups of up to 3).
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split regex (single digits).
const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A byte-level pre-tokenizer: `tokenizer.ggml.pre` names, the regexes
/// applied in turn (each splits every piece, keeping matches and gaps as
/// separate pieces), and whether BPE skips merging whole-vocabulary words.
#[derive(Debug, Clone, Copy)]
pub struct PreTokenizerRule {
    /// The `tokenizer.ggml.pre` values this rule applies to.
    pub names: &'static [&'static str],
    /// Split regexes, applied in order.
    pub regexes: &'static [&'static str],
    /// Whether a word already in the vocabulary is kept whole instead of BPE-merged.
    pub ignore_merges: bool,
}

/// The pre-tokenizers kiln knows, after llama.cpp's `llama-vocab.cpp`.
/// `default` is what a file without `tokenizer.ggml.pre` gets.
pub static PRE_TOKENIZERS: &[PreTokenizerRule] = &[
    PreTokenizerRule {
        names: &["default", "gpt2", "gpt-2", "phi-2", "mpt", "olmo", "jais"],
        regexes: &[GPT2_REGEX],
        ignore_merges: false,
    },
    // Digits split one by one, then GPT-2's regex (HF: Digits(individual) + ByteLevel).
    PreTokenizerRule {
        names: &[
            "smollm",
            "starcoder",
            "refact",
            "command-r",
            "codeshell",
            "exaone",
            "minerva-7b",
        ],
        regexes: &[r"\p{N}", GPT2_REGEX],
        ignore_merges: false,
    },
    PreTokenizerRule {
        names: &["llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral"],
        regexes: &[LLAMA3_REGEX],
        ignore_merges: true,
    },
    PreTokenizerRule {
        names: &["qwen2", "qwen2.5", "qwen-2.5", "deepseek-r1-qwen", "megrez"],
        regexes: &[QWEN2_REGEX],
        ignore_merges: false,
    },
];

fn supported_pre() -> String {
    let names: Vec<&str> = PRE_TOKENIZERS
        .iter()
        .flat_map(|r| r.names.iter().copied())
        .collect();
    names.join(", ")
}

/// A tokenizer rebuilt from GGUF metadata.
#[derive(Debug, Clone)]
pub struct GgufTokenizer {
    inner: Tokenizer,
    vocab_size: usize,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    eog: Vec<u32>,
    pre: String,
    /// `tokenizer.chat_template` and its origin (`FILE: tokenizer.chat_template`).
    chat_template: Option<(String, String)>,
}

impl GgufFile {
    /// The tokenizer in this file's `tokenizer.ggml.*` metadata.
    pub fn tokenizer(&self) -> Result<GgufTokenizer> {
        GgufTokenizer::from_gguf(self)
    }
}

impl GgufTokenizer {
    /// Build the tokenizer from `tokenizer.ggml.{model, pre, tokens,
    /// token_type, merges, bos_token_id, eos_token_id, add_bos_token,
    /// add_eos_token}`.
    pub fn from_gguf(file: &GgufFile) -> Result<GgufTokenizer> {
        let model = file.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(file.error(format!(
                "unsupported tokenizer model `{model}` (tokenizer.ggml.model); supported: gpt2 (byte-level BPE)"
            )));
        }
        let pre = match file.get("tokenizer.ggml.pre") {
            None => "default",
            Some(_) => file.get_str("tokenizer.ggml.pre")?,
        };
        let rule = PRE_TOKENIZERS
            .iter()
            .find(|r| r.names.contains(&pre))
            .ok_or_else(|| {
                file.error(format!(
                    "unsupported pre-tokenizer `{pre}` (tokenizer.ggml.pre); supported: {}",
                    supported_pre()
                ))
            })?;

        let tokens = string_array(file, "tokenizer.ggml.tokens")?;
        let merges = string_array(file, "tokenizer.ggml.merges")?;
        let types = match file.get("tokenizer.ggml.token_type") {
            None => None,
            Some(v) => {
                let t = v.as_array().and_then(Array::to_i64s).ok_or_else(|| {
                    file.error(format!(
                        "metadata `tokenizer.ggml.token_type` must be an integer array, found {}",
                        v.describe()
                    ))
                })?;
                if t.len() != tokens.len() {
                    return Err(file.error(format!(
                        "metadata `tokenizer.ggml.token_type` has {} entries but `tokenizer.ggml.tokens` has {}",
                        t.len(),
                        tokens.len()
                    )));
                }
                Some(t)
            }
        };
        let n = u32::try_from(tokens.len()).map_err(|_| {
            file.error(format!(
                "metadata `tokenizer.ggml.tokens` has {} entries; at most 2^32 are supported",
                tokens.len()
            ))
        })?;

        // Later duplicates win, as in llama.cpp's token_to_id.
        let vocab: Vocab = tokens.iter().cloned().zip(0..n).collect();
        let mut pairs = Vec::with_capacity(merges.len());
        for (i, m) in merges.iter().enumerate() {
            // The separator is the first space after the first character
            // (llama.cpp: `word.find(' ', 1)`), so a merge of a literal space works.
            let split = m
                .char_indices()
                .nth(1)
                .and_then(|(start, _)| m[start..].find(' ').map(|p| p + start));
            let Some(at) = split else {
                return Err(file.error(format!(
                    "metadata `tokenizer.ggml.merges` entry {i} ({m:?}) is not two tokens separated by a space"
                )));
            };
            pairs.push((m[..at].to_string(), m[at + 1..].to_string()));
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, pairs)
            .ignore_merges(rule.ignore_merges)
            .build()
            .map_err(|e| file.error(format!("cannot build the BPE tokenizer: {e}")))?;

        let mut splits: Vec<PreTokenizerWrapper> = Vec::new();
        for re in rule.regexes {
            let split = Split::new(
                SplitPattern::Regex((*re).into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| file.error(format!("pre-tokenizer `{pre}`: bad regex {re:?}: {e}")))?;
            splits.push(split.into());
        }
        splits.push(ByteLevel::new(false, false, false).into());

        let mut inner = Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(Sequence::new(splits)));
        inner.with_decoder(Some(ByteLevelDecoder::new(false, false, false)));

        if let Some(types) = &types {
            let added = |want: i64, special: bool| -> Vec<AddedToken> {
                tokens
                    .iter()
                    .zip(types)
                    .filter(|&(t, &ty)| ty == want && !t.is_empty())
                    .map(|(t, _)| AddedToken::from(t.clone(), special).normalized(false))
                    .collect()
            };
            inner.add_special_tokens(&added(TOKEN_CONTROL, true));
            inner.add_tokens(&added(TOKEN_USER_DEFINED, false));
        }

        let token_id = |key: &str| -> Result<Option<u32>> {
            match file.get(key) {
                None => Ok(None),
                Some(_) => {
                    let id = file.get_u64(key)?;
                    if id >= u64::from(n) {
                        return Err(file.error(format!(
                            "metadata `{key}` is {id}, outside the vocabulary of {n} tokens"
                        )));
                    }
                    Ok(Some(id as u32))
                }
            }
        };
        let flag = |key: &str| -> Result<bool> {
            match file.get(key) {
                None => Ok(false),
                Some(v) => v.as_bool().ok_or_else(|| {
                    file.error(format!(
                        "metadata `{key}` must be a bool, found {}",
                        v.describe()
                    ))
                }),
            }
        };
        let bos = token_id("tokenizer.ggml.bos_token_id")?;
        let eos = token_id("tokenizer.ggml.eos_token_id")?;
        let add_bos = flag("tokenizer.ggml.add_bos_token")?;
        let add_eos = flag("tokenizer.ggml.add_eos_token")?;
        for (add, id, what) in [(add_bos, bos, "bos"), (add_eos, eos, "eos")] {
            if add && id.is_none() {
                return Err(file.error(format!(
                    "`tokenizer.ggml.add_{what}_token` is true but `tokenizer.ggml.{what}_token_id` is missing"
                )));
            }
        }
        let mut eog: Vec<u32> = Vec::new();
        for key in [
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.eot_token_id",
            "tokenizer.ggml.eom_token_id",
        ] {
            eog.extend(token_id(key)?);
        }
        eog.sort_unstable();
        eog.dedup();
        let key = "tokenizer.chat_template";
        let chat_template = match file.get(key) {
            None => None,
            Some(_) => Some((
                file.get_str(key)?.to_string(),
                format!("{}: {key}", file.path().display()),
            )),
        };

        // BOS/EOS through a post-processor, so `inner` is complete on its own
        // (`encode(text, true)` adds them, `encode(text, false)` does not).
        if add_bos || add_eos {
            let mut parts: Vec<&str> = Vec::new();
            let mut special = Vec::new();
            for (key, add, id) in [
                ("BOS", add_bos, bos),
                ("$A", true, None),
                ("EOS", add_eos, eos),
            ] {
                if !add {
                    continue;
                }
                parts.push(key);
                if let Some(id) = id {
                    let text = tokens[id as usize].clone();
                    let t = SpecialToken::new(key.into(), vec![id], vec![text]).map_err(|e| {
                        file.error(format!("cannot build the {key} template token: {e}"))
                    })?;
                    special.push(t);
                }
            }
            let single = parts.join(" ");
            let pair = format!("{single} {}", single.replace("$A", "$B:1"));
            let post = TemplateProcessing::builder()
                .try_single(single.as_str())
                .and_then(|b| b.try_pair(pair.as_str()))
                .map_err(|e| file.error(format!("cannot build the BOS/EOS template: {e}")))?
                .special_tokens(special)
                .build()
                .map_err(|e| file.error(format!("cannot build the BOS/EOS template: {e}")))?;
            inner.with_post_processor(Some(post));
        }

        Ok(GgufTokenizer {
            inner,
            eog,
            vocab_size: tokens.len(),
            bos,
            eos,
            add_bos,
            add_eos,
            pre: pre.to_string(),
            chat_template,
        })
    }

    /// Token ids for `text`: control tokens written in the text (like
    /// `<|im_start|>`) are matched whole; BOS/EOS are added when the file's
    /// `add_bos_token`/`add_eos_token` say so.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let enc = (self.inner.encode(text, true))
            .map_err(|e| TokenizerError::Codec(format!("cannot encode {text:?}: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// [`GgufTokenizer::encode`] as the i32 ids kiln's sessions take.
    pub fn encode_i32(&self, text: &str) -> Result<Vec<i32>, TokenizerError> {
        Ok(self.encode(text)?.into_iter().map(|id| id as i32).collect())
    }

    /// The text for `ids` (special tokens included as written). Errors on an
    /// id outside the vocabulary.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(TokenizerError::UnknownId {
                id: i64::from(bad),
                vocab: self.vocab_size,
            });
        }
        (self.inner.decode(ids, false))
            .map_err(|e| TokenizerError::Codec(format!("cannot decode {ids:?}: {e}")))
    }

    /// [`GgufTokenizer::decode`] for kiln's i32 ids (negative ids are errors).
    pub fn decode_i32(&self, ids: &[i32]) -> Result<String, TokenizerError> {
        let ids: Vec<u32> = (ids.iter())
            .map(|&id| {
                u32::try_from(id).map_err(|_| TokenizerError::UnknownId {
                    id: i64::from(id),
                    vocab: self.vocab_size,
                })
            })
            .collect::<Result<_, _>>()?;
        self.decode(&ids)
    }

    /// The token string for `id` (byte-level form, e.g. `Ġcapital`).
    pub fn token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of token string `token`.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Number of tokens in the file's vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// `tokenizer.ggml.bos_token_id`.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos
    }

    /// `tokenizer.ggml.eos_token_id`.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos
    }

    /// The ids that end generation: EOS, plus `tokenizer.ggml.eot_token_id`
    /// and `eom_token_id` when present.
    pub fn end_of_generation_ids(&self) -> &[u32] {
        &self.eog
    }

    /// kiln's generic [`crate::tokenizer::Tokenizer`] over this tokenizer
    /// (BOS when the file asks for it; generation stops at
    /// [`GgufTokenizer::end_of_generation_ids`]).
    pub fn to_tokenizer(&self) -> crate::tokenizer::Tokenizer {
        self.clone().into_tokenizer()
    }

    /// [`GgufTokenizer::to_tokenizer`] without the copy.
    pub fn into_tokenizer(self) -> crate::tokenizer::Tokenizer {
        let text = |id: Option<u32>| {
            id.and_then(|i| self.inner.id_to_token(i))
                .unwrap_or_default()
        };
        let special = (text(self.bos), text(self.eos));
        let mut tok = crate::tokenizer::Tokenizer::new(self.inner, self.bos, self.eog);
        tok.set_special_text(special.0, special.1);
        if let Some((source, origin)) = self.chat_template {
            tok.set_chat_template(source, origin);
        }
        tok
    }

    /// `tokenizer.chat_template`, when the file carries one.
    pub fn chat_template_source(&self) -> Option<&str> {
        self.chat_template.as_ref().map(|(s, _)| s.as_str())
    }

    /// Whether [`GgufTokenizer::encode`] prepends BOS.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether [`GgufTokenizer::encode`] appends EOS.
    pub fn adds_eos(&self) -> bool {
        self.add_eos
    }

    /// The pre-tokenizer name in use (`tokenizer.ggml.pre`, or `default`).
    pub fn pre_tokenizer(&self) -> &str {
        &self.pre
    }

    /// The underlying HF tokenizer; `encode(text, true)` adds BOS/EOS as the
    /// file asks, like [`GgufTokenizer::encode`].
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}

fn string_array<'f>(file: &'f GgufFile, key: &str) -> Result<&'f [String]> {
    let v = file.require(key)?;
    v.as_array().and_then(Array::as_strings).ok_or_else(|| {
        file.error(format!(
            "metadata `{key}` must be an array of strings, found {}",
            v.describe()
        ))
    })
}
