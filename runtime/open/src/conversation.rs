//! A conversation with a chat model: the history, rendered through the
//! model's chat template for each turn, and one session whose KV cache is
//! reused across turns — a turn feeds only the tokens its rendered prompt
//! adds to what the cache already holds (all of them when the prompt no
//! longer starts with the cached tokens, e.g. after a template rewrites
//! the history).
//! Stop strings go through [`crate::stop::StopText`].

use crate::chat::{ChatError, ChatTemplate, Message};
use crate::stop::StopText;
use crate::tokenizer::{StreamDecoder, Tokenizer, TokenizerError};
use kiln_runtime::RuntimeError;
use kiln_runtime::session::{GenerateOptions, Model, Session};

/// Why a turn failed.
#[derive(Debug, thiserror::Error)]
pub enum ConversationError {
    /// The template did not compile or refused the conversation.
    #[error("{0}")]
    Chat(#[from] ChatError),
    /// Encoding the prompt or decoding the reply failed.
    #[error("{0}")]
    Tokenizer(#[from] TokenizerError),
    /// The model could not run (for one, the conversation outgrew the context).
    #[error("{0}")]
    Runtime(#[from] RuntimeError),
    /// The model has no tokenizer or no chat template.
    #[error("{0}")]
    Unsupported(String),
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// A stop token (the template's end of turn, or end of sequence).
    StopToken,
    /// A stop string appeared in the text.
    StopText,
    /// `max_new_tokens` were generated.
    MaxTokens,
    /// The model's context (`max_positions`) is full.
    Context,
    /// The caller's callback asked to stop.
    Cancelled,
}

impl Stopped {
    /// `stop_token`, `stop_text`, `max_tokens`, `context`, `cancelled`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stopped::StopToken => "stop_token",
            Stopped::StopText => "stop_text",
            Stopped::MaxTokens => "max_tokens",
            Stopped::Context => "context",
            Stopped::Cancelled => "cancelled",
        }
    }
}

/// One generated reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The reply text (stop tokens and stop strings left out).
    pub text: String,
    /// The generated ids, a final stop token included.
    pub tokens: Vec<i32>,
    /// The ids of the whole rendered prompt of this turn.
    pub prompt_tokens: usize,
    /// How many of them were fed this turn (the rest were cached).
    pub fed_tokens: usize,
    /// Why it ended.
    pub stopped: Stopped,
}

/// Generate from `prompt` on `session`, streaming text pieces to `on_piece`
/// (return false to stop) and stopping at `opts.stop_tokens`, `stop` strings,
/// `max_new_tokens` or the context. Shared by chat turns and plain
/// completions.
pub fn generate_text(
    session: &mut Session<'_>,
    tok: &Tokenizer,
    prompt: &[i32],
    opts: &GenerateOptions,
    stop: &[String],
    on_piece: &mut dyn FnMut(&str) -> bool,
) -> Result<(String, Vec<i32>, Stopped), ConversationError> {
    let mut decoder = StreamDecoder::new(tok);
    let mut stops = StopText::new(stop.to_vec());
    let mut text = String::new();
    let mut fault: Option<TokenizerError> = None;
    let (mut cancelled, mut hit) = (false, false);
    let ids = session.generate(prompt, opts, &mut |id| {
        if opts.stop_tokens.contains(&id) {
            return false;
        }
        let piece = match u32::try_from(id).map(|id| decoder.push(id)) {
            Ok(Ok(p)) => p.unwrap_or_default(),
            Ok(Err(e)) => {
                fault = Some(e);
                return false;
            }
            Err(_) => String::new(),
        };
        let r = stops.push(&piece);
        hit = r.stopped;
        text.push_str(&r.piece);
        if !r.piece.is_empty() && !on_piece(&r.piece) {
            cancelled = true;
            return false;
        }
        !hit
    })?;
    if let Some(e) = fault {
        return Err(e.into());
    }
    if !hit && !cancelled {
        // The whole reply decoded at once: what the stream decoder still
        // held (an incomplete character) is released too.
        let content = &ids
            [..ids.len() - usize::from(ids.last().is_some_and(|t| opts.stop_tokens.contains(t)))];
        let content: Vec<u32> = content
            .iter()
            .filter_map(|&t| u32::try_from(t).ok())
            .collect();
        let r = stops.finish(Some(tok.decode(&content)?));
        hit = r.stopped;
        text.push_str(&r.piece);
        if !r.piece.is_empty() && !on_piece(&r.piece) {
            cancelled = true;
        }
    }
    let stopped = if hit {
        Stopped::StopText
    } else if ids.last().is_some_and(|t| opts.stop_tokens.contains(t)) {
        Stopped::StopToken
    } else if cancelled {
        Stopped::Cancelled
    } else if ids.len() >= opts.max_new_tokens {
        Stopped::MaxTokens
    } else {
        Stopped::Context
    };
    Ok((text, ids, stopped))
}

/// A conversation: history, template and a session reused across turns.
pub struct Conversation<'m> {
    model: &'m Model,
    tok: &'m Tokenizer,
    template: ChatTemplate,
    stop_tokens: Vec<i32>,
    history: Vec<Message>,
    session: Session<'m>,
    /// The ids the session's cache holds, in order.
    cached: Vec<i32>,
}

impl<'m> Conversation<'m> {
    /// A conversation with `model` through `tok`'s chat template (or
    /// `template` when given), opened by a `system` message if any.
    pub fn new(
        model: &'m Model,
        tok: &'m Tokenizer,
        template: Option<ChatTemplate>,
        system: Option<&str>,
    ) -> Result<Self, ConversationError> {
        let template = match template {
            Some(t) => t,
            None => tok.chat_template()?.ok_or_else(|| {
                ConversationError::Unsupported(
                    "this model carries no chat template (a GGUF's tokenizer.chat_template, or chat_template in a HF folder's tokenizer_config.json); give one with --chat-template FILE".into(),
                )
            })?,
        };
        let stop_tokens = chat_stop_tokens(&template, tok)?;
        Ok(Conversation {
            model,
            tok,
            template,
            stop_tokens,
            history: system
                .map(|s| Message::new("system", s))
                .into_iter()
                .collect(),
            session: model.session(),
            cached: Vec::new(),
        })
    }

    /// The ids that end a reply: the template's end of turn, then the
    /// tokenizer's end-of-sequence tokens.
    pub fn stop_tokens(&self) -> &[i32] {
        &self.stop_tokens
    }

    /// The messages so far.
    pub fn history(&self) -> &[Message] {
        &self.history
    }

    /// Forget the history (keeping a leading system message) and the cache.
    pub fn reset(&mut self) {
        self.history.retain(|m| m.role == "system");
        self.history.truncate(1);
        self.session = self.model.session();
        self.cached.clear();
    }

    /// The template this conversation renders with.
    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    /// Answer `user`: render the history with it, feed what the cache does
    /// not hold yet, and generate the reply, streaming its text to
    /// `on_piece`. `opts.stop_tokens` add to [`Conversation::stop_tokens`];
    /// `stop` strings end the reply too. The user message and the reply join
    /// the history; on an error neither does and the cache starts afresh.
    pub fn reply(
        &mut self,
        user: &str,
        opts: &GenerateOptions,
        stop: &[String],
        on_piece: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Reply, ConversationError> {
        let mut messages = self.history.clone();
        messages.push(Message::new("user", user));
        let ids = render_ids(&self.template, self.tok, &messages)?;
        let reuse = !self.cached.is_empty()
            && ids.len() > self.cached.len()
            && ids.starts_with(&self.cached);
        if !reuse {
            self.session = self.model.session();
            self.cached.clear();
        }
        let feed = ids[self.cached.len()..].to_vec();
        let mut opts = opts.clone();
        opts.stop_tokens.extend_from_slice(&self.stop_tokens);
        let done = generate_text(&mut self.session, self.tok, &feed, &opts, stop, on_piece);
        let (text, tokens, stopped) = match done {
            Ok(d) => d,
            Err(e) => {
                self.session = self.model.session();
                self.cached.clear();
                return Err(e);
            }
        };
        // Every generated token but the last has been fed to the cache.
        self.cached = ids.clone();
        self.cached
            .extend_from_slice(&tokens[..tokens.len().saturating_sub(1)]);
        messages.push(Message::new("assistant", text.clone()));
        self.history = messages;
        Ok(Reply {
            text,
            tokens,
            prompt_tokens: ids.len(),
            fed_tokens: feed.len(),
            stopped,
        })
    }
}

/// `messages` rendered for a reply and encoded as written.
pub fn render_ids(
    template: &ChatTemplate,
    tok: &Tokenizer,
    messages: &[Message],
) -> Result<Vec<i32>, ConversationError> {
    let text = template.render(messages, true)?;
    let ids = tok.encode_raw(&text)?;
    if ids.is_empty() {
        return Err(ConversationError::Unsupported(format!(
            "{}: the chat template rendered no tokens",
            template.origin()
        )));
    }
    Ok(ids.into_iter().map(|t| t as i32).collect())
}

/// The template's end-of-turn tokens, then the tokenizer's end-of-sequence ones.
pub fn chat_stop_tokens(
    template: &ChatTemplate,
    tok: &Tokenizer,
) -> Result<Vec<i32>, ConversationError> {
    let mut stop: Vec<i32> = template
        .end_tokens(tok)?
        .into_iter()
        .map(|t| t as i32)
        .collect();
    for &e in &tok.eos {
        if !stop.contains(&(e as i32)) {
            stop.push(e as i32);
        }
    }
    Ok(stop)
}
