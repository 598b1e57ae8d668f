//! The OpenAI-compatible request and response bodies `kiln serve` speaks:
//! the fields of `/v1/completions`, `/v1/chat/completions` and
//! `/v1/embeddings` that kiln honours, and those it refuses by name rather
//! than ignore (`n > 1`, `logprobs`, penalties, tools, …).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A prompt or an embedding input: text, texts, token ids, or lists of ids.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Input {
    /// One text.
    Text(String),
    /// Several texts.
    Texts(Vec<String>),
    /// One sequence of token ids.
    Ids(Vec<i64>),
    /// Several sequences of token ids.
    IdLists(Vec<Vec<i64>>),
}

impl Input {
    /// How many sequences the input holds.
    pub fn len(&self) -> usize {
        match self {
            Input::Text(_) | Input::Ids(_) => 1,
            Input::Texts(t) => t.len(),
            Input::IdLists(l) => l.len(),
        }
    }

    /// Whether it holds no sequence.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `stop`: one string or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Up to four (OpenAI's limit; kiln takes up to 16).
    Many(Vec<String>),
}

impl Stop {
    /// The stop strings.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with the token counts.
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling and length fields shared by completions and chat completions.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Sampling {
    /// The served model's id (checked when given).
    pub model: Option<String>,
    /// Most tokens to generate (`max_completion_tokens` for chat is the same).
    pub max_tokens: Option<usize>,
    /// The chat API's newer name for `max_tokens`.
    pub max_completion_tokens: Option<usize>,
    /// Default 1, as OpenAI's; 0 is greedy.
    pub temperature: Option<f32>,
    /// Default 1.
    pub top_p: Option<f32>,
    /// kiln's extension: keep the k most likely tokens (0 = all).
    pub top_k: Option<usize>,
    /// Sampler seed (default: a fresh one per request).
    pub seed: Option<u64>,
    /// Stop strings.
    pub stop: Option<Stop>,
    /// Stream the text as server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// What a stream ends with.
    pub stream_options: Option<StreamOptions>,
    /// Only 1 is supported.
    pub n: Option<usize>,
    /// Refused when true (kiln computes no log-probabilities).
    pub logprobs: Option<Value>,
    /// Refused when set.
    pub top_logprobs: Option<Value>,
    /// Refused when non-zero.
    pub presence_penalty: Option<f32>,
    /// Refused when non-zero.
    pub frequency_penalty: Option<f32>,
    /// Refused when non-empty.
    pub logit_bias: Option<serde_json::Map<String, Value>>,
    /// Refused when non-empty.
    pub tools: Option<Vec<Value>>,
    /// Refused unless `text` (`json_object` / `json_schema` need constrained decoding).
    pub response_format: Option<Value>,
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    /// The prompt: text or token ids (one sequence).
    pub prompt: Input,
    /// Refused when true.
    pub echo: Option<bool>,
    /// Refused above 1.
    pub best_of: Option<usize>,
    /// Refused when set (no fill-in-the-middle).
    pub suffix: Option<String>,
    /// The shared fields.
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// Message content: text, or a list of parts of which only text is taken.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// `[{"type": "text", "text": …}, …]`.
    Parts(Vec<ContentPart>),
}

/// One part of a message's content.
#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    /// `text` (other kinds, images, are refused).
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    pub text: Option<String>,
}

/// A chat message in a request.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` (`developer` is read as `system`).
    pub role: String,
    /// Its content (`null` is empty).
    pub content: Option<Content>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    /// The conversation so far.
    pub messages: Vec<ChatMessage>,
    /// The shared fields.
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// `POST /v1/embeddings`.
#[derive(Debug, Clone, Deserialize)]
pub struct EmbeddingRequest {
    /// The served model's id (checked when given).
    pub model: Option<String>,
    /// Texts or token ids.
    pub input: Input,
    /// `float` (default) or `base64` (little-endian f32, as OpenAI's).
    pub encoding_format: Option<String>,
    /// Refused when set (the model's width is fixed).
    pub dimensions: Option<usize>,
}

/// Token counts of a response.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Usage {
    /// Tokens in the prompt (the rendered conversation for chat).
    pub prompt_tokens: usize,
    /// Tokens generated (0 for embeddings).
    pub completion_tokens: usize,
    /// Their sum.
    pub total_tokens: usize,
}

impl Usage {
    /// Counts for `prompt` and `completion` tokens.
    pub fn new(prompt: usize, completion: usize) -> Self {
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
        }
    }
}

/// An error body: `{"error": {"message", "type", "param", "code"}}`.
pub fn error_body(message: &str, kind: &str, param: Option<&str>) -> Value {
    serde_json::json!({
        "error": { "message": message, "type": kind, "param": param, "code": Value::Null }
    })
}
