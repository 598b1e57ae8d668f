//! `generate-stream [MODEL] [--prompt TEXT] [--max-tokens N] [--threads N] [--seed N]`
//!
//! MODEL is a `.toml` spec (seeded random weights; default: this example's
//! tiny-llama.toml), a Hugging Face folder or a `.gguf` file, e.g. the
//! SmolLM2 GGUF that `tests/parity/fetch_real.sh` fetches:
//!
//! ```sh
//! cargo run --release -p kiln-example-generate-stream -- "$SMOLLM2_GGUF" --prompt "The capital of France is"
//! ```
//!
//! It streams one generation token by token, then runs `--threads`
//! generations at once on the same compiled model.

use kiln_example_generate_stream::{
    default_spec, generate_parallel, open_model, prompt_ids, stream,
};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

struct Args {
    model: PathBuf,
    prompt: Option<String>,
    max_tokens: usize,
    threads: usize,
    seed: u64,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        model: default_spec(),
        prompt: None,
        max_tokens: 24,
        threads: 4,
        seed: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        let number = |name: &str, v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{name}: expected a number, got {v:?}"))
        };
        match arg.as_str() {
            "--prompt" => a.prompt = Some(value("--prompt")?),
            "--max-tokens" => a.max_tokens = number(&arg, value(&arg)?)? as usize,
            "--threads" => a.threads = number(&arg, value(&arg)?)?.clamp(1, 64) as usize,
            "--seed" => a.seed = number(&arg, value(&arg)?)?,
            "-h" | "--help" => {
                return Err("usage: generate-stream [MODEL] [--prompt TEXT] [--max-tokens N] [--threads N] [--seed N]".into());
            }
            s if s.starts_with("--") => return Err(format!("unknown option {s}")),
            path => a.model = PathBuf::from(path),
        }
    }
    Ok(a)
}

fn run() -> Result<(), String> {
    let args = parse()?;
    let t = Instant::now();
    let loaded = open_model(&args.model, args.seed).map_err(|e| e.to_string())?;
    eprintln!(
        "opened {} ({} weights) in {:.0} ms",
        loaded.spec.spec.name,
        loaded.weights_origin,
        t.elapsed().as_secs_f64() * 1e3
    );
    let default_prompt = if loaded.tokenizer.is_some() {
        "Once upon a time"
    } else {
        "1,2,3"
    };
    let prompt = prompt_ids(&loaded, args.prompt.as_deref().unwrap_or(default_prompt))?;

    // 1. One generation, streamed as it is produced.
    let mut stdout = std::io::stdout();
    let t = Instant::now();
    let ids = stream(&loaded, &prompt, args.max_tokens, &mut |piece| {
        let _ = stdout.write_all(piece.as_bytes());
        let _ = stdout.flush();
    })?;
    println!();
    eprintln!(
        "{} tokens in {:.0} ms",
        ids.len(),
        t.elapsed().as_secs_f64() * 1e3
    );

    // 2. Several requests at once on the same compiled model: each thread
    //    has its own session; prompts differ by their last token.
    let vocab = loaded.spec.spec.vocab_size as i32;
    let prompts: Vec<Vec<i32>> = (0..args.threads as i32)
        .map(|i| {
            let mut p = prompt.clone();
            if let Some(last) = p.last_mut() {
                *last = (*last + i) % vocab;
            }
            p
        })
        .collect();
    let t = Instant::now();
    let results = generate_parallel(&loaded.model, &prompts, args.max_tokens);
    eprintln!(
        "{} threads in {:.0} ms",
        args.threads,
        t.elapsed().as_secs_f64() * 1e3
    );
    for (i, r) in results.into_iter().enumerate() {
        let ids = r?;
        let shown = match &loaded.tokenizer {
            Some(tok) => tok
                .decode(&ids.iter().map(|&t| t as u32).collect::<Vec<_>>())
                .map_err(|e| e.to_string())?,
            None => format!("{ids:?}"),
        };
        println!("thread {i}: {shown}");
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
