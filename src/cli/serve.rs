//! `kiln serve MODEL`: the OpenAI-compatible HTTP server (see `kiln::serve`).

use super::{CliError, ModelArgs, open_model};
use kiln::serve::{ServeOptions, serve};
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Port (0 picks a free one; the address is printed on stderr).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// The model's id in requests and /v1/models (default: the model's name).
    #[arg(long)]
    model_id: Option<String>,
    /// Requests generating at once (each has its own KV cache).
    #[arg(long, default_value_t = 2)]
    max_concurrent: usize,
    /// Requests waiting for a slot; more get 503 at once.
    #[arg(long, default_value_t = 16)]
    max_queue: usize,
    /// Largest request body, in bytes (413 beyond).
    #[arg(long, default_value_t = 1 << 20)]
    max_body_bytes: usize,
    /// Longest prompt in tokens (default: the model's context less one).
    #[arg(long)]
    max_prompt_tokens: Option<usize>,
    /// Largest max_tokens a request may ask for; the default for chat.
    #[arg(long, default_value_t = 512)]
    max_tokens: usize,
    /// Most inputs in one /v1/embeddings request.
    #[arg(long, default_value_t = 64)]
    max_batch: usize,
    /// Seconds a request may take, queueing included (504 beyond).
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
}

/// A GGUF file or a HF folder is named as its file (stem) or folder is; a
/// spec file by its `name`.
fn default_id(m: &ModelArgs, spec_name: &str) -> String {
    let source = m.weights.as_ref().or(m.spec.as_ref());
    let from_path = source.and_then(|p| {
        let p = if p.file_name().is_some_and(|f| f == "config.json") {
            p.parent()?
        } else {
            p.as_path()
        };
        let is_gguf = p
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
        let name = if is_gguf {
            p.file_stem()?
        } else if p.is_dir() {
            p.file_name()?
        } else {
            return None;
        };
        Some(name.to_string_lossy().into_owned())
    });
    from_path.unwrap_or_else(|| spec_name.to_string())
}

pub fn run(a: Args) -> Result<(), CliError> {
    if a.max_concurrent == 0 {
        return Err("--max-concurrent must be at least 1".into());
    }
    if !(a.timeout.is_finite() && a.timeout > 0.0 && a.timeout < 1e7) {
        return Err(format!(
            "--timeout must be a positive number of seconds, got {}",
            a.timeout
        )
        .into());
    }
    let loaded = open_model(&a.model)?;
    let max_pos = loaded.spec.spec.max_positions;
    let opts = ServeOptions {
        addr: SocketAddr::new(a.host, a.port),
        model_id: a
            .model_id
            .clone()
            .unwrap_or_else(|| default_id(&a.model, &loaded.spec.spec.name)),
        max_concurrent: a.max_concurrent,
        max_queue: a.max_queue,
        max_body_bytes: a.max_body_bytes,
        max_prompt_tokens: a.max_prompt_tokens.unwrap_or(max_pos.saturating_sub(1)),
        max_tokens: a.max_tokens,
        max_batch: a.max_batch.max(1),
        timeout: Duration::from_secs_f64(a.timeout),
    };
    let id = opts.model_id.clone();
    serve(loaded, opts, move |addr| {
        eprintln!("kiln serve: `{id}` listening on http://{addr}");
        let _ = std::io::stderr().flush();
    })
    .map_err(|e| CliError::Usage(e.to_string()))?;
    eprintln!("kiln serve: stopped");
    Ok(())
}
