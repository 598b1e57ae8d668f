use super::CliError;
use super::{Format, ModelArgs, open_model};
use kiln_compiler::spec::Architecture;
use kiln_open::chat::Message;
use kiln_open::conversation::{Conversation, render_ids};
use kiln_open::source::LoadedModel;
use kiln_open::tokenizer::StreamDecoder;
use kiln_runtime::sampling::SamplingOptions;
use kiln_runtime::session::GenerateOptions;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt text (needs a tokenizer: a HF folder's tokenizer.json or a GGUF's).
    #[arg(long, conflicts_with = "tokens")]
    prompt: Option<String>,
    /// The prompt as token ids, comma-separated (works without a tokenizer).
    #[arg(long, value_delimiter = ',')]
    tokens: Option<Vec<i32>>,
    /// Encoder-decoder models: decoder start ids.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    decoder_tokens: Vec<i32>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 32)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Extra stop token ids (the tokenizer's end-of-sequence tokens always stop).
    #[arg(long, value_delimiter = ',')]
    stop: Vec<i32>,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    #[command(flatten)]
    chat: ChatArgs,
}

/// How each next token is picked (`generate` and `chat`).
#[derive(clap::Args, Clone)]
pub struct SamplingArgs {
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    sample_seed: u64,
}

impl SamplingArgs {
    /// The flags checked and turned into the sampler's options.
    pub fn options(&self) -> Result<SamplingOptions, CliError> {
        if !(0.0..=1.0).contains(&self.top_p) || !self.top_p.is_finite() {
            return Err(format!("--top-p must be in [0, 1], got {}", self.top_p).into());
        }
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(format!("--temperature must be >= 0, got {}", self.temperature).into());
        }
        Ok(SamplingOptions {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.sample_seed,
        })
    }
}

/// How a prompt becomes a chat turn.
#[derive(clap::Args, Clone)]
pub struct ChatArgs {
    /// Treat the prompt as a user message and render it through the model's
    /// chat template (a GGUF's tokenizer.chat_template, or chat_template in
    /// a HF folder's tokenizer_config.json); the reply stops at the
    /// template's end-of-turn token.
    #[arg(long)]
    pub chat: bool,
    /// A system message before the user's (with --chat).
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// A Jinja chat template file to use instead of the model's (with --chat).
    #[arg(long, value_name = "FILE", requires = "chat")]
    pub chat_template: Option<std::path::PathBuf>,
}

impl ChatArgs {
    /// The template file given with --chat-template, compiled with the
    /// tokenizer's special-token texts.
    pub fn template(
        &self,
        tok: &kiln_open::tokenizer::Tokenizer,
    ) -> Result<Option<kiln_open::chat::ChatTemplate>, CliError> {
        let Some(path) = &self.chat_template else {
            return Ok(None);
        };
        let source = std::fs::read_to_string(path).map_err(|e| CliError::Read {
            path: path.clone(),
            source: e,
        })?;
        let (bos, eos) = tok.special_text();
        let origin = path.display().to_string();
        Ok(Some(kiln_open::chat::ChatTemplate::new(
            &source, &origin, &bos, &eos,
        )?))
    }
}

pub fn run(a: Args) -> Result<(), CliError> {
    // SIGINT / SIGTERM stop generation after the current token: what was
    // generated is still printed whole (exit 130). Registered first, so an
    // interrupt while the model loads stops generation at its first token.
    let interrupt = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, interrupt.clone())
            .map_err(|e| CliError::Usage(format!("cannot handle interrupts: {e}")))?;
    }
    let sampling = a.sampling.options()?;
    let loaded = open_model(&a.model)?;
    let arch = loaded.spec.spec.architecture;
    if arch == Architecture::Encoder {
        return Err(
            "generate needs a decoder; this is an encoder-only model (try `kiln embed`)".into(),
        );
    }
    if a.chat.chat {
        let opts = GenerateOptions {
            max_new_tokens: a.max_tokens,
            sampling,
            stop_tokens: a.stop.clone(),
        };
        return chat_turn(&a, &opts, &loaded, &interrupt);
    }
    let tok = loaded.tokenizer.as_ref();
    let prompt: Vec<i32> = match (&a.prompt, &a.tokens) {
        (Some(text), _) => {
            let tok = tok.ok_or("--prompt needs a tokenizer: give a HF folder with tokenizer.json or a .gguf file, or pass --tokens")?;
            tok.encode(text)?.into_iter().map(|t| t as i32).collect()
        }
        (None, Some(ids)) => ids.clone(),
        (None, None) => return Err("give --prompt TEXT or --tokens IDS".into()),
    };
    if prompt.is_empty() {
        return Err("the prompt encodes to no tokens".into());
    }
    let mut stop = a.stop.clone();
    if let Some(t) = tok {
        stop.extend(t.eos.iter().map(|&e| e as i32));
    }
    let opts = GenerateOptions {
        max_new_tokens: a.max_tokens,
        sampling: sampling.clone(),
        stop_tokens: stop,
    };
    let mut session = loaded.model.session();
    let feed = if arch == Architecture::EncoderDecoder {
        session.set_source(&prompt)?;
        a.decoder_tokens.clone()
    } else {
        prompt.clone()
    };
    let mut stdout = std::io::stdout();
    let mut decoder = tok.map(StreamDecoder::new);
    let mut stream_err: Option<CliError> = None;
    let streaming = a.format == Format::Text;
    let mut interrupted = false;
    let ids = session.generate(&feed, &opts, &mut |id| {
        if interrupt.load(Ordering::Relaxed) {
            interrupted = true;
        }
        if !streaming {
            return !interrupted;
        }
        let piece = match decoder.as_mut() {
            Some(d) => match d.push(id as u32) {
                Ok(p) => p,
                Err(e) => {
                    stream_err = Some(e.into());
                    return false;
                }
            },
            None => Some(format!("{id} ")),
        };
        if let Some(p) = piece
            && let Err(e) = stdout.write_all(p.as_bytes()).and_then(|()| stdout.flush())
        {
            // A full disk or a closed reader: stop generating, report it.
            stream_err = Some(super::stdout_error(e));
            return false;
        }
        !interrupted
    })?;
    if let Some(e) = stream_err {
        return Err(e);
    }
    let stopped = if interrupted {
        "interrupted"
    } else if ids.last().is_some_and(|t| opts.stop_tokens.contains(t)) {
        "stop_token"
    } else if ids.len() >= opts.max_new_tokens {
        "max_tokens"
    } else {
        "context"
    };
    match a.format {
        Format::Text => outln!(),
        Format::Json => {
            let text = match tok {
                Some(t) => Some(t.decode(&ids.iter().map(|&i| i as u32).collect::<Vec<_>>())?),
                None => None,
            };
            outln!(
                "{}",
                serde_json::json!({
                    "prompt_tokens": prompt,
                    "tokens": ids,
                    "text": text,
                    "stopped": stopped,
                })
            );
        }
    }
    if interrupted {
        return Err(CliError::Interrupted {
            generated: ids.len(),
        });
    }
    Ok(())
}

/// `generate --chat`: the prompt as one user turn of a conversation.
fn chat_turn(
    a: &Args,
    opts: &GenerateOptions,
    loaded: &LoadedModel,
    interrupt: &AtomicBool,
) -> Result<(), CliError> {
    let tok = loaded.tokenizer.as_ref().ok_or(
        "--chat needs a tokenizer and a chat template: give a HF folder with tokenizer.json or a .gguf file",
    )?;
    let Some(user) = a.prompt.as_deref() else {
        return Err("--chat takes the user's message as --prompt TEXT (not --tokens)".into());
    };
    let template = a.chat.template(tok)?;
    let mut conv = Conversation::new(&loaded.model, tok, template, a.chat.system.as_deref())?;
    let mut messages = conv.history().to_vec();
    messages.push(Message::new("user", user));
    let prompt_text = conv.template().render(&messages, true)?;
    let prompt_ids = render_ids(conv.template(), tok, &messages)?;
    let streaming = a.format == Format::Text;
    let mut stdout = std::io::stdout();
    let mut write_err: Option<CliError> = None;
    let mut interrupted = false;
    let reply = conv.reply(user, opts, &[], &mut |piece| {
        interrupted |= interrupt.load(Ordering::Relaxed);
        if streaming
            && let Err(e) = stdout
                .write_all(piece.as_bytes())
                .and_then(|()| stdout.flush())
        {
            write_err = Some(super::stdout_error(e));
            return false;
        }
        !interrupted
    })?;
    if let Some(e) = write_err {
        return Err(e);
    }
    interrupted |= interrupt.load(Ordering::Relaxed);
    let stopped = if interrupted {
        "interrupted"
    } else {
        reply.stopped.as_str()
    };
    match a.format {
        Format::Text => outln!(),
        Format::Json => outln!(
            "{}",
            serde_json::json!({
                "prompt_text": prompt_text,
                "prompt_tokens": prompt_ids,
                "tokens": reply.tokens,
                "text": reply.text,
                "stopped": stopped,
            })
        ),
    }
    if interrupted {
        return Err(CliError::Interrupted {
            generated: reply.tokens.len(),
        });
    }
    Ok(())
}
