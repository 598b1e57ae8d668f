use super::CliError;
use super::{Format, ModelArgs, open_model};
use kiln_compiler::spec::Architecture;
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
    /// Extra stop token ids (the tokenizer's end-of-sequence tokens always stop).
    #[arg(long, value_delimiter = ',')]
    stop: Vec<i32>,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
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
    if !(0.0..=1.0).contains(&a.top_p) || !a.top_p.is_finite() {
        return Err(format!("--top-p must be in [0, 1], got {}", a.top_p).into());
    }
    if !(a.temperature >= 0.0 && a.temperature.is_finite()) {
        return Err(format!("--temperature must be >= 0, got {}", a.temperature).into());
    }
    let loaded = open_model(&a.model)?;
    let arch = loaded.spec.spec.architecture;
    if arch == Architecture::Encoder {
        return Err(
            "generate needs a decoder; this is an encoder-only model (try `kiln embed`)".into(),
        );
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
        sampling: SamplingOptions {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            seed: a.sample_seed,
        },
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
