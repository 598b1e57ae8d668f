//! `kiln chat MODEL`: an interactive conversation. Each line read from
//! standard input is a user message; the reply streams to standard output
//! through the model's chat template, over one KV cache kept across turns.
//! `/reset` forgets the history, `/exit` (or end of input) ends; a line
//! ending in `\` continues on the next. Ctrl-C stops the reply being
//! generated (it stays in the history as far as it got); at the prompt it
//! ends kiln.

use super::generate::{ChatArgs, SamplingArgs};
use super::{CliError, ModelArgs, open_model};
use kiln_compiler::spec::Architecture;
use kiln_open::conversation::{Conversation, Stopped};
use kiln_runtime::session::GenerateOptions;
use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// A system message opening the conversation.
    #[arg(long)]
    system: Option<String>,
    /// A Jinja chat template file to use instead of the model's.
    #[arg(long, value_name = "FILE")]
    chat_template: Option<std::path::PathBuf>,
    /// Most tokens per reply.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
}

pub fn run(a: Args) -> Result<(), CliError> {
    let sampling = a.sampling.options()?;
    let loaded = open_model(&a.model)?;
    if loaded.spec.spec.architecture != Architecture::Decoder {
        return Err("chat needs a decoder-only model with a chat template".into());
    }
    let tok = loaded.tokenizer.as_ref().ok_or(
        "chat needs a tokenizer and a chat template: give a HF folder with tokenizer.json or a .gguf file",
    )?;
    let chat = ChatArgs {
        chat: true,
        system: None,
        chat_template: a.chat_template.clone(),
    };
    let template = chat.template(tok)?;
    let mut conv = Conversation::new(&loaded.model, tok, template, a.system.as_deref())?;
    let opts = GenerateOptions {
        max_new_tokens: a.max_tokens,
        sampling,
        stop_tokens: Vec::new(),
    };
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "chatting with {} ({}); /reset forgets the conversation, /exit or Ctrl-D ends",
            loaded.spec.spec.name,
            conv.template().origin()
        );
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut stdout = std::io::stdout();
    loop {
        if interactive {
            out!("> ");
            stdout.flush().map_err(super::stdout_error)?;
        }
        let Some(message) = read_message(&mut lines)? else {
            break;
        };
        match message.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                conv.reset();
                eprintln!("(conversation reset)");
                continue;
            }
            _ => {}
        }
        // Ctrl-C stops this reply only: the flag is registered for the
        // turn and removed after it, so at the prompt it ends kiln.
        let interrupt = Arc::new(AtomicBool::new(false));
        let ids = [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM]
            .map(|sig| signal_hook::flag::register(sig, interrupt.clone()));
        let mut write_err = None;
        let reply = conv.reply(&message, &opts, &[], &mut |piece| {
            if let Err(e) = stdout
                .write_all(piece.as_bytes())
                .and_then(|()| stdout.flush())
            {
                write_err = Some(super::stdout_error(e));
                return false;
            }
            !interrupt.load(Ordering::Relaxed)
        });
        for id in ids.into_iter().flatten() {
            signal_hook::low_level::unregister(id);
        }
        if let Some(e) = write_err {
            return Err(e);
        }
        let reply = reply?;
        outln!();
        match reply.stopped {
            Stopped::MaxTokens => eprintln!("(reply cut at --max-tokens {})", a.max_tokens),
            Stopped::Context => eprintln!(
                "(the context is full: {} tokens, the model's max_positions; /reset starts over)",
                reply.prompt_tokens + reply.tokens.len()
            ),
            Stopped::Cancelled if interrupt.load(Ordering::Relaxed) => {
                eprintln!("(interrupted)")
            }
            _ => {}
        }
        if interrupt.load(Ordering::Relaxed) && !interactive {
            // Piped input: an interrupt ends the session, as it would a script.
            return Err(CliError::Interrupted {
                generated: reply.tokens.len(),
            });
        }
    }
    Ok(())
}

/// One message: a line, or lines joined while they end in `\`.
fn read_message(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
) -> Result<Option<String>, CliError> {
    let mut message = String::new();
    for line in lines {
        let line = line.map_err(|e| CliError::Read {
            path: "<stdin>".into(),
            source: e,
        })?;
        match line.strip_suffix('\\') {
            Some(part) => {
                message.push_str(part);
                message.push('\n');
            }
            None => {
                message.push_str(&line);
                return Ok(Some(message));
            }
        }
    }
    Ok((!message.is_empty()).then_some(message))
}
