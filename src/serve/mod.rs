//! `kiln serve`: an OpenAI-compatible HTTP server over one model.
//!
//! - `POST /v1/completions`, `POST /v1/chat/completions` (`stream: true`
//!   sends server-sent events ending in `data: [DONE]`), `POST
//!   /v1/embeddings`, `GET /v1/models`, `GET /health`, and Prometheus text
//!   at `GET /metrics`.
//! - Each request runs in its own session on a blocking thread; at most
//!   `max_concurrent` at once. Up to `max_queue` more wait for a slot (at
//!   most the request timeout); beyond that a request is refused at once
//!   with 503 and a body saying why.
//! - Limits: body size (413), prompt tokens and `max_tokens` (400 naming
//!   the field), a per-request timeout (504; a stream ends with an error
//!   event). A client that goes away stops its generation.
//! - SIGTERM or Ctrl-C: stop accepting, finish the requests in flight, exit.

pub mod api;
mod metrics;

use api::{ChatRequest, CompletionRequest, Content, EmbeddingRequest, Input, Sampling, Usage};
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use kiln_compiler::spec::Architecture;
use kiln_open::chat::{ChatTemplate, Message};
use kiln_open::conversation::{Stopped, chat_stop_tokens, generate_text, render_ids};
use kiln_open::source::LoadedModel;
use kiln_runtime::sampling::SamplingOptions;
use kiln_runtime::session::GenerateOptions;
use metrics::Metrics;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Where to listen (port 0 picks a free one; the bound address is printed).
    pub addr: SocketAddr,
    /// The id clients name the model by (`model` in requests, `/v1/models`).
    pub model_id: String,
    /// Requests generating at once.
    pub max_concurrent: usize,
    /// Requests waiting for a slot before new ones get 503.
    pub max_queue: usize,
    /// Largest request body in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Longest prompt in tokens, the rendered conversation for chat (400 beyond).
    pub max_prompt_tokens: usize,
    /// Largest `max_tokens` a request may ask for (400 beyond); also the
    /// default for chat requests that give none.
    pub max_tokens: usize,
    /// Most inputs in one `/v1/embeddings` request.
    pub max_batch: usize,
    /// Time a request may take, queueing included (504 beyond).
    pub timeout: Duration,
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The HTTP server or the async runtime failed.
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
}

struct Shared {
    loaded: Arc<LoadedModel>,
    opts: ServeOptions,
    slots: Arc<Semaphore>,
    queued: AtomicUsize,
    metrics: Metrics,
    /// The chat template and its stop tokens, or why chat is unavailable.
    chat: Result<(ChatTemplate, Vec<i32>), String>,
    next_id: AtomicU64,
}

type AppState = Arc<Shared>;

/// Serve `loaded` until SIGTERM / SIGINT; `on_listening` gets the bound
/// address once the socket is open (the CLI prints it).
pub fn serve(
    loaded: LoadedModel,
    opts: ServeOptions,
    on_listening: impl FnOnce(SocketAddr) + Send,
) -> Result<(), ServeError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = (tokio::net::TcpListener::bind(opts.addr).await).map_err(|source| {
            ServeError::Bind {
                addr: opts.addr,
                source,
            }
        })?;
        let bound = listener.local_addr()?;
        let app = router(loaded, opts);
        on_listening(bound);
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await?;
        Ok(())
    })
}

/// The routes, over one shared model.
pub fn router(loaded: LoadedModel, opts: ServeOptions) -> Router {
    let chat = chat_setup(&loaded);
    let state = Arc::new(Shared {
        slots: Arc::new(Semaphore::new(opts.max_concurrent.max(1))),
        queued: AtomicUsize::new(0),
        metrics: Metrics::new(),
        chat,
        next_id: AtomicU64::new(1),
        loaded: Arc::new(loaded),
        opts: opts.clone(),
    });
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model_info))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/embeddings", post(embeddings))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(opts.max_body_bytes))
        .with_state(state)
}

fn chat_setup(loaded: &LoadedModel) -> Result<(ChatTemplate, Vec<i32>), String> {
    let tok = (loaded.tokenizer.as_ref()).ok_or("this model has no tokenizer, so no chat")?;
    let template = tok
        .chat_template()
        .map_err(|e| e.to_string())?
        .ok_or("this model carries no chat template (a GGUF's tokenizer.chat_template, or chat_template in tokenizer_config.json); /v1/completions works without one")?;
    let stop = chat_stop_tokens(&template, tok).map_err(|e| e.to_string())?;
    Ok((template, stop))
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
    eprintln!("shutting down: finishing the requests in flight");
}

/// An error response: status and OpenAI's error body.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<&'static str>,
}

impl ApiError {
    fn bad(message: impl Into<String>, param: Option<&'static str>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param,
        }
    }

    fn busy(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            kind: "server_busy",
            param: None,
        }
    }

    fn internal(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = api::error_body(&self.message, self.kind, self.param);
        let mut r = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let status = r.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "the request body is larger than the server's limit (kiln serve --max-body-bytes)"
                .to_string()
        } else {
            r.body_text()
        };
        ApiError {
            status,
            message,
            kind: "invalid_request_error",
            param: None,
        }
    }
}

/// The request's outcome, counted in the metrics.
fn finish(
    state: &Shared,
    endpoint: &str,
    start: Instant,
    r: Result<Response, ApiError>,
) -> Response {
    let r = r.unwrap_or_else(IntoResponse::into_response);
    state
        .metrics
        .request(endpoint, r.status().as_u16(), start.elapsed());
    r
}

async fn health(State(state): State<AppState>) -> Response {
    Json(json!({
        "status": "ok",
        "model": state.opts.model_id,
        "in_flight": state.opts.max_concurrent.max(1) - state.slots.available_permits(),
        "queued": state.queued.load(Ordering::Relaxed),
    }))
    .into_response()
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    let in_flight = state.opts.max_concurrent.max(1) - state.slots.available_permits();
    let text = state
        .metrics
        .render(in_flight, state.queued.load(Ordering::Relaxed));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

fn model_object(state: &Shared) -> Value {
    let s = &state.loaded.spec.spec;
    json!({
        "id": state.opts.model_id,
        "object": "model",
        "created": 0,
        "owned_by": "kiln",
        "architecture": format!("{:?}", s.architecture),
        "max_positions": s.max_positions,
        "vocab_size": s.vocab_size,
    })
}

async fn models(State(state): State<AppState>) -> Response {
    Json(json!({ "object": "list", "data": [model_object(&state)] })).into_response()
}

async fn model_info(
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    match check_model(&state, Some(&id)) {
        Ok(()) => Json(model_object(&state)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn not_found(uri: axum::http::Uri) -> Response {
    let e = ApiError {
        status: StatusCode::NOT_FOUND,
        message: format!(
            "no route {uri}; kiln serves /v1/completions, /v1/chat/completions, /v1/embeddings, /v1/models, /health and /metrics"
        ),
        kind: "invalid_request_error",
        param: None,
    };
    e.into_response()
}

fn check_model(state: &Shared, model: Option<&str>) -> Result<(), ApiError> {
    match model {
        Some(m) if m != state.opts.model_id => Err(ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!(
                "the model `{m}` is not served here; this server serves `{}`",
                state.opts.model_id
            ),
            kind: "invalid_request_error",
            param: Some("model"),
        }),
        _ => Ok(()),
    }
}

/// A slot to generate in: at once if one is free, else after waiting in
/// the queue (if it has room) for at most `wait`.
async fn admit(state: &AppState, wait: Duration) -> Result<OwnedSemaphorePermit, ApiError> {
    if let Ok(p) = state.slots.clone().try_acquire_owned() {
        return Ok(p);
    }
    let max_queue = state.opts.max_queue;
    if state.queued.fetch_add(1, Ordering::SeqCst) >= max_queue {
        state.queued.fetch_sub(1, Ordering::SeqCst);
        state.metrics.rejected("queue_full");
        return Err(ApiError::busy(format!(
            "the server is busy: {} requests are generating and {max_queue} are queued (kiln serve --max-concurrent / --max-queue); retry later",
            state.opts.max_concurrent.max(1)
        )));
    }
    let got = tokio::time::timeout(wait, state.slots.clone().acquire_owned()).await;
    state.queued.fetch_sub(1, Ordering::SeqCst);
    match got {
        Ok(Ok(p)) => Ok(p),
        Ok(Err(_)) => Err(ApiError::busy("the server is shutting down")),
        Err(_) => {
            state.metrics.rejected("queue_timeout");
            Err(ApiError::busy(format!(
                "the request waited {:.0} s for a free slot (kiln serve --timeout); retry later",
                wait.as_secs_f64()
            )))
        }
    }
}

/// What a generation request asks for, validated.
struct Job {
    prompt: Vec<i32>,
    opts: GenerateOptions,
    stop: Vec<String>,
    stream: bool,
    include_usage: bool,
}

fn validate(
    state: &Shared,
    s: &Sampling,
    default_max: usize,
) -> Result<(GenerateOptions, Vec<String>), ApiError> {
    check_model(state, s.model.as_deref())?;
    let refuse = |what: &str, param: &'static str| {
        Err(ApiError::bad(
            format!("{what} is not supported by kiln serve"),
            Some(param),
        ))
    };
    if s.n.is_some_and(|n| n != 1) {
        return refuse("n other than 1", "n");
    }
    if s.logprobs
        .as_ref()
        .is_some_and(|v| !v.is_null() && v != &Value::Bool(false))
    {
        return refuse("logprobs", "logprobs");
    }
    if s.top_logprobs.as_ref().is_some_and(|v| !v.is_null()) {
        return refuse("top_logprobs", "top_logprobs");
    }
    if s.presence_penalty.is_some_and(|p| p != 0.0) {
        return refuse("presence_penalty", "presence_penalty");
    }
    if s.frequency_penalty.is_some_and(|p| p != 0.0) {
        return refuse("frequency_penalty", "frequency_penalty");
    }
    if s.logit_bias.as_ref().is_some_and(|m| !m.is_empty()) {
        return refuse("logit_bias", "logit_bias");
    }
    if s.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return refuse("tools (function calling)", "tools");
    }
    if let Some(f) = &s.response_format
        && f.get("type").and_then(Value::as_str) != Some("text")
    {
        return refuse(
            "response_format other than {\"type\": \"text\"}",
            "response_format",
        );
    }
    let max_tokens = s
        .max_completion_tokens
        .or(s.max_tokens)
        .unwrap_or(default_max);
    if max_tokens > state.opts.max_tokens {
        return Err(ApiError::bad(
            format!(
                "max_tokens = {max_tokens} is more than this server allows ({}; kiln serve --max-tokens)",
                state.opts.max_tokens
            ),
            Some("max_tokens"),
        ));
    }
    let temperature = s.temperature.unwrap_or(1.0);
    if !(temperature.is_finite() && (0.0..=2.0).contains(&temperature)) {
        return Err(ApiError::bad(
            format!("temperature must be in [0, 2], got {temperature}"),
            Some("temperature"),
        ));
    }
    let top_p = s.top_p.unwrap_or(1.0);
    if !(top_p.is_finite() && top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::bad(
            format!("top_p must be in (0, 1], got {top_p}"),
            Some("top_p"),
        ));
    }
    let stop = s.stop.clone().map(api::Stop::into_vec).unwrap_or_default();
    if stop.len() > 16 {
        return Err(ApiError::bad(
            format!("at most 16 stop strings, got {}", stop.len()),
            Some("stop"),
        ));
    }
    let seed = s.seed.unwrap_or_else(|| {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        t.as_nanos() as u64 ^ state.next_id.load(Ordering::Relaxed).rotate_left(32)
    });
    let opts = GenerateOptions {
        max_new_tokens: max_tokens,
        sampling: SamplingOptions {
            temperature,
            top_k: s.top_k.unwrap_or(0),
            top_p,
            seed,
        },
        stop_tokens: Vec::new(),
    };
    Ok((opts, stop))
}

fn check_prompt(state: &Shared, ids: &[i32]) -> Result<(), ApiError> {
    let max_pos = state.loaded.spec.spec.max_positions;
    let limit = state.opts.max_prompt_tokens.min(max_pos.saturating_sub(1));
    if ids.len() > limit {
        return Err(ApiError::bad(
            format!(
                "the prompt has {} tokens, more than the limit of {limit} (the model's context is {max_pos} positions; kiln serve --max-prompt-tokens)",
                ids.len()
            ),
            Some("prompt"),
        ));
    }
    if ids.is_empty() {
        return Err(ApiError::bad(
            "the prompt encodes to no tokens",
            Some("prompt"),
        ));
    }
    let vocab = state.loaded.spec.spec.vocab_size;
    if let Some(bad) = ids.iter().find(|&&t| t < 0 || t as usize >= vocab) {
        return Err(ApiError::bad(
            format!("token id {bad} is outside the vocabulary of {vocab}"),
            Some("prompt"),
        ));
    }
    Ok(())
}

fn tokenizer(state: &Shared) -> Result<&kiln_open::tokenizer::Tokenizer, ApiError> {
    state
        .loaded
        .tokenizer
        .as_ref()
        .ok_or_else(|| ApiError::bad("this model has no tokenizer, so it cannot write text", None))
}

fn ids_of(v: &[i64], param: &'static str) -> Result<Vec<i32>, ApiError> {
    v.iter()
        .map(|&t| {
            i32::try_from(t)
                .map_err(|_| ApiError::bad(format!("token id {t} is out of range"), Some(param)))
        })
        .collect()
}

fn decoder_only(state: &Shared) -> Result<(), ApiError> {
    if state.loaded.spec.spec.architecture != Architecture::Decoder {
        return Err(ApiError::bad(
            "this model is not a decoder-only model; it cannot generate text (an encoder serves /v1/embeddings)",
            None,
        ));
    }
    Ok(())
}

async fn completions(
    State(state): State<AppState>,
    body: Result<Json<CompletionRequest>, JsonRejection>,
) -> Response {
    let start = Instant::now();
    let r = completions_inner(&state, body).await;
    finish(&state, "completions", start, r)
}

async fn completions_inner(
    state: &AppState,
    body: Result<Json<CompletionRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    decoder_only(state)?;
    let (opts, stop) = validate(state, &req.sampling, 16)?;
    if req.echo == Some(true) {
        return Err(ApiError::bad(
            "echo is not supported by kiln serve",
            Some("echo"),
        ));
    }
    if req.best_of.is_some_and(|b| b != 1) {
        return Err(ApiError::bad(
            "best_of other than 1 is not supported",
            Some("best_of"),
        ));
    }
    if req.suffix.is_some() {
        return Err(ApiError::bad(
            "suffix (fill in the middle) is not supported",
            Some("suffix"),
        ));
    }
    let tok = tokenizer(state)?;
    let prompt = match &req.prompt {
        Input::Text(t) => tok
            .encode(t)
            .map_err(|e| ApiError::bad(e.to_string(), Some("prompt")))?,
        Input::Ids(ids) => ids_of(ids, "prompt")?
            .into_iter()
            .map(|t| t as u32)
            .collect(),
        Input::Texts(t) if t.len() == 1 => tok
            .encode(&t[0])
            .map_err(|e| ApiError::bad(e.to_string(), Some("prompt")))?,
        Input::IdLists(l) if l.len() == 1 => ids_of(&l[0], "prompt")?
            .into_iter()
            .map(|t| t as u32)
            .collect(),
        _ => {
            return Err(ApiError::bad(
                "one prompt per request (several prompts in one request are not supported)",
                Some("prompt"),
            ));
        }
    };
    let prompt: Vec<i32> = prompt.into_iter().map(|t| t as i32).collect();
    check_prompt(state, &prompt)?;
    let mut opts = opts;
    opts.stop_tokens = tok.eos.iter().map(|&e| e as i32).collect();
    let job = Job {
        prompt,
        opts,
        stop,
        stream: req.sampling.stream,
        include_usage: req
            .sampling
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage),
    };
    run_job(state, job, Kind::Completion).await
}

async fn chat_completions(
    State(state): State<AppState>,
    body: Result<Json<ChatRequest>, JsonRejection>,
) -> Response {
    let start = Instant::now();
    let r = chat_inner(&state, body).await;
    finish(&state, "chat_completions", start, r)
}

async fn chat_inner(
    state: &AppState,
    body: Result<Json<ChatRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    decoder_only(state)?;
    let default_max = state
        .opts
        .max_tokens
        .min(state.loaded.spec.spec.max_positions);
    let (mut opts, stop) = validate(state, &req.sampling, default_max)?;
    let (template, stop_tokens) = state
        .chat
        .as_ref()
        .map_err(|e| ApiError::bad(e.clone(), Some("messages")))?;
    if req.messages.is_empty() {
        return Err(ApiError::bad("messages is empty", Some("messages")));
    }
    let mut messages = Vec::with_capacity(req.messages.len());
    for m in &req.messages {
        let content = match &m.content {
            None => String::new(),
            Some(Content::Text(t)) => t.clone(),
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for p in parts {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => text.push_str(t),
                        (kind, _) => {
                            return Err(ApiError::bad(
                                format!(
                                    "content parts of type `{kind}` are not supported (text only)"
                                ),
                                Some("messages"),
                            ));
                        }
                    }
                }
                text
            }
        };
        let role = if m.role == "developer" {
            "system"
        } else {
            m.role.as_str()
        };
        messages.push(Message::new(role, content));
    }
    let tok = tokenizer(state)?;
    let prompt = render_ids(template, tok, &messages)
        .map_err(|e| ApiError::bad(e.to_string(), Some("messages")))?;
    check_prompt(state, &prompt)?;
    opts.stop_tokens = stop_tokens.clone();
    let job = Job {
        prompt,
        opts,
        stop,
        stream: req.sampling.stream,
        include_usage: req
            .sampling
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage),
    };
    run_job(state, job, Kind::Chat).await
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Completion,
    Chat,
}

/// What a finished generation reports.
struct Done {
    text: String,
    completion_tokens: usize,
    stopped: Stopped,
    timed_out: bool,
}

fn finish_reason(stopped: Stopped) -> &'static str {
    match stopped {
        Stopped::StopToken | Stopped::StopText => "stop",
        _ => "length",
    }
}

/// Generate on a blocking thread (holding `permit`), sending pieces to
/// `send` (false: stop, the client is gone).
fn generate_blocking(
    state: &Shared,
    job: &Job,
    deadline: Instant,
    send: &mut dyn FnMut(&str) -> bool,
) -> Result<Done, ApiError> {
    let tok = tokenizer(state)?;
    let mut session = state.loaded.model.session();
    let mut timed_out = false;
    let (text, ids, stopped) = generate_text(
        &mut session,
        tok,
        &job.prompt,
        &job.opts,
        &job.stop,
        &mut |piece| {
            if Instant::now() > deadline {
                timed_out = true;
                return false;
            }
            send(piece)
        },
    )
    .map_err(|e| match e {
        kiln_open::conversation::ConversationError::Runtime(kiln_runtime::RuntimeError::Limit(
            m,
        )) => ApiError::bad(m, Some("max_tokens")),
        e => ApiError::internal(e.to_string()),
    })?;
    let completion_tokens = ids.len();
    state.metrics.tokens(job.prompt.len(), completion_tokens);
    Ok(Done {
        text,
        completion_tokens,
        stopped,
        timed_out,
    })
}

async fn run_job(state: &AppState, job: Job, kind: Kind) -> Result<Response, ApiError> {
    let deadline = Instant::now() + state.opts.timeout;
    let permit = admit(state, state.opts.timeout).await?;
    let n = state.next_id.fetch_add(1, Ordering::Relaxed);
    let id = match kind {
        Kind::Completion => format!("cmpl-kiln-{n}"),
        Kind::Chat => format!("chatcmpl-kiln-{n}"),
    };
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let model = state.opts.model_id.clone();
    let prompt_tokens = job.prompt.len();
    if !job.stream {
        let st = state.clone();
        let done = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            generate_blocking(&st, &job, deadline, &mut |_| true)
        })
        .await
        .map_err(|e| ApiError::internal(format!("the generation thread failed: {e}")))??;
        if done.timed_out {
            return Err(ApiError {
                status: StatusCode::GATEWAY_TIMEOUT,
                message: format!(
                    "the request took longer than the server's timeout of {:.0} s (kiln serve --timeout); ask for fewer max_tokens",
                    state.opts.timeout.as_secs_f64()
                ),
                kind: "timeout",
                param: None,
            });
        }
        let usage = Usage::new(prompt_tokens, done.completion_tokens);
        let reason = finish_reason(done.stopped);
        let body = match kind {
            Kind::Completion => json!({
                "id": id, "object": "text_completion", "created": created, "model": model,
                "choices": [{"index": 0, "text": done.text, "logprobs": null, "finish_reason": reason}],
                "usage": usage,
            }),
            Kind::Chat => json!({
                "id": id, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": done.text},
                             "logprobs": null, "finish_reason": reason}],
                "usage": usage,
            }),
        };
        return Ok(Json(body).into_response());
    }
    // Streaming: pieces cross from the generation thread as SSE events.
    let (tx, rx) = mpsc::channel::<Event>(64);
    let st = state.clone();
    let include_usage = job.include_usage;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let chunk = |delta: Value, reason: Value| -> Value {
            match kind {
                Kind::Completion => json!({
                    "id": id, "object": "text_completion", "created": created, "model": model,
                    "choices": [{"index": 0, "text": delta, "logprobs": null, "finish_reason": reason}],
                }),
                Kind::Chat => json!({
                    "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": reason}],
                }),
            }
        };
        let event = |v: &Value| Event::default().data(v.to_string());
        if kind == Kind::Chat {
            let first = chunk(json!({"role": "assistant", "content": ""}), Value::Null);
            if tx.blocking_send(event(&first)).is_err() {
                return;
            }
        }
        let done = generate_blocking(&st, &job, deadline, &mut |piece| {
            let delta = match kind {
                Kind::Completion => Value::String(piece.to_string()),
                Kind::Chat => json!({ "content": piece }),
            };
            tx.blocking_send(event(&chunk(delta, Value::Null))).is_ok()
        });
        let last = match done {
            Ok(d) if d.timed_out => api::error_body(
                &format!(
                    "the request took longer than the server's timeout of {:.0} s",
                    st.opts.timeout.as_secs_f64()
                ),
                "timeout",
                None,
            ),
            Ok(d) => {
                let empty = match kind {
                    Kind::Completion => Value::String(String::new()),
                    Kind::Chat => json!({}),
                };
                let mut c = chunk(empty, Value::String(finish_reason(d.stopped).into()));
                if include_usage {
                    c["usage"] = json!(Usage::new(prompt_tokens, d.completion_tokens));
                }
                c
            }
            Err(e) => api::error_body(&e.message, e.kind, e.param),
        };
        if tx.blocking_send(event(&last)).is_ok() {
            let _ = tx.blocking_send(Event::default().data("[DONE]"));
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let stream = tokio_stream::StreamExt::map(stream, Ok::<Event, std::convert::Infallible>);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

async fn embeddings(
    State(state): State<AppState>,
    body: Result<Json<EmbeddingRequest>, JsonRejection>,
) -> Response {
    let start = Instant::now();
    let r = embeddings_inner(&state, body).await;
    finish(&state, "embeddings", start, r)
}

async fn embeddings_inner(
    state: &AppState,
    body: Result<Json<EmbeddingRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    check_model(state, req.model.as_deref())?;
    if state.loaded.spec.spec.architecture != Architecture::Encoder {
        return Err(ApiError::bad(
            "this model is not an encoder with a pooling head; /v1/embeddings needs one (a sentence-transformers folder, or a spec with head.kind = \"mean-pool\")",
            None,
        ));
    }
    if req.dimensions.is_some() {
        return Err(ApiError::bad(
            "dimensions is not supported (the model's width is fixed)",
            Some("dimensions"),
        ));
    }
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(f) => {
            return Err(ApiError::bad(
                format!("encoding_format `{f}`: give float or base64"),
                Some("encoding_format"),
            ));
        }
    };
    if req.input.is_empty() || req.input.len() > state.opts.max_batch {
        return Err(ApiError::bad(
            format!(
                "input holds {} sequences; give 1 to {} (kiln serve --max-batch)",
                req.input.len(),
                state.opts.max_batch
            ),
            Some("input"),
        ));
    }
    let seqs: Vec<Vec<i32>> = match &req.input {
        Input::Text(_) | Input::Texts(_) => {
            let tok = tokenizer(state)?;
            let texts: Vec<&String> = match &req.input {
                Input::Text(t) => vec![t],
                Input::Texts(t) => t.iter().collect(),
                _ => Vec::new(),
            };
            texts
                .iter()
                .map(|t| {
                    tok.encode(t)
                        .map(|v| v.into_iter().map(|x| x as i32).collect())
                        .map_err(|e| ApiError::bad(e.to_string(), Some("input")))
                })
                .collect::<Result<_, _>>()?
        }
        Input::Ids(ids) => vec![ids_of(ids, "input")?],
        Input::IdLists(l) => l
            .iter()
            .map(|v| ids_of(v, "input"))
            .collect::<Result<_, _>>()?,
    };
    for s in &seqs {
        check_prompt(state, s).map_err(|mut e| {
            e.param = Some("input");
            e
        })?;
    }
    let permit = admit(state, state.opts.timeout).await?;
    let st = state.clone();
    let prompt_tokens: usize = seqs.iter().map(Vec::len).sum();
    let vecs = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let refs: Vec<&[i32]> = seqs.iter().map(Vec::as_slice).collect();
        let emb = st.loaded.embed_ids(&refs).map_err(|e| match e {
            kiln_open::EmbedError::Runtime(e) => ApiError::internal(e.to_string()),
            e => ApiError::bad(e.to_string(), None),
        })?;
        let d = (*emb.shape().last().unwrap_or(&1)).max(1);
        Ok::<Vec<Vec<f32>>, ApiError>(emb.to_f32_vec().chunks(d).map(<[f32]>::to_vec).collect())
    })
    .await
    .map_err(|e| ApiError::internal(format!("the embedding thread failed: {e}")))??;
    state.metrics.tokens(prompt_tokens, 0);
    let data: Vec<Value> = vecs
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(&bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": state.opts.model_id,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }))
    .into_response())
}
