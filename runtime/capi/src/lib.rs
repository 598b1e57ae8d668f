//! kiln's C ABI (`include/kiln.h`, generated from this file by cbindgen).
//!
//! - **Handles are opaque**: a [`KilnModel`] is a compiled model with its
//!   weights and tokenizer; it is immutable, so any number of threads may
//!   use one at once. A [`KilnSession`] is one sequence's KV cache, used by
//!   one thread at a time; it keeps its model alive, so the two may be freed
//!   in any order.
//! - **Errors are values**: functions return a [`KilnStatus`] (or NULL for
//!   constructors) and [`kiln_last_error`] gives the message of the most
//!   recent failed call on the calling thread. Null pointers, lengths beyond
//!   the model's limits, invalid UTF-8 and too-small buffers are reported,
//!   never dereferenced. Every entry point catches panics, so none crosses
//!   into C ([`KilnStatus::Panic`]).
//! - **Buffers belong to the caller**: outputs go into caller buffers with
//!   their capacity; `out_len` receives the length written, or needed when
//!   the status is [`KilnStatus::BufferTooSmall`] (the call then changes
//!   nothing). Strings kiln returns are freed with [`kiln_string_free`].
//!
//! ```
//! use kiln_capi::*;
//! use std::ffi::{CStr, CString};
//!
//! let spec = CString::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/tiny/gpt2.toml")).unwrap();
//! unsafe {
//!     let model = kiln_model_open(spec.as_ptr(), std::ptr::null(), 0, KILN_BACKEND_JIT);
//!     assert!(!model.is_null());
//!     let mut info = KilnModelInfo::default();
//!     assert_eq!(kiln_model_info(model, &mut info), KilnStatus::Ok);
//!     let session = kiln_session_new(model);
//!     let tokens = [1, 2, 3];
//!     let mut logits = vec![0.0f32; 3 * info.vocab_size];
//!     let mut len = 0;
//!     let status = kiln_session_forward(session, tokens.as_ptr(), 3, logits.as_mut_ptr(), logits.len(), &mut len);
//!     assert_eq!(status, KilnStatus::Ok);
//!     assert_eq!(len, 3 * info.vocab_size);
//!
//!     // A bad token id is an error with a message, not a crash.
//!     let bad = [1 << 30];
//!     let status = kiln_session_forward(session, bad.as_ptr(), 1, logits.as_mut_ptr(), logits.len(), &mut len);
//!     assert_eq!(status, KilnStatus::Error);
//!     let msg = CStr::from_ptr(kiln_last_error()).to_str().unwrap();
//!     assert!(msg.contains("outside the vocabulary"), "{msg}");
//!
//!     kiln_session_free(session);
//!     kiln_model_free(model);
//! }
//! ```

use kiln_compiler::spec::HeadKind;

use kiln_open::source::{LoadedModel, OpenOptions, open};
use kiln_runtime::sampling::SamplingOptions;
use kiln_runtime::session::{GenerateOptions, Session};
use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::ptr;
use std::sync::Arc;

/// What a call did. Anything but `KILN_STATUS_OK` leaves a message for
/// `kiln_last_error()`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KilnStatus {
    /// Success.
    Ok = 0,
    /// The operation failed (a bad spec, a missing file, a token id outside
    /// the vocabulary, a sequence beyond the model's max positions, ...).
    Error = 1,
    /// An argument is unusable: a null pointer, a length out of range,
    /// invalid UTF-8. Nothing was run.
    InvalidArgument = 2,
    /// The output buffer is too small; `*out_len` holds the length needed.
    /// Nothing was run or changed.
    BufferTooSmall = 3,
    /// An internal error (a bug in kiln) was caught at the boundary.
    Panic = 4,
}

/// Run models with Cranelift-compiled kernels (the default, fast).
pub const KILN_BACKEND_JIT: i32 = 0;
/// Run models with the reference interpreter (the correctness oracle).
pub const KILN_BACKEND_REFERENCE: i32 = 1;

/// A compiled model (opaque): weights, compiled code, tokenizer. Shared by
/// any number of threads; free with `kiln_model_free`.
pub struct KilnModel {
    loaded: Arc<LoadedModel>,
}

/// One sequence's decoding state (opaque): the KV cache and, for
/// encoder-decoder models, the encoded source. One thread at a time; free
/// with `kiln_session_free`.
pub struct KilnSession {
    // Declared before `model`, so it is dropped first: it borrows from it.
    session: Session<'static>,
    model: Arc<LoadedModel>,
}

/// Facts about a model, filled by `kiln_model_info`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KilnModelInfo {
    /// Token ids must be below this; the width of a row of logits.
    pub vocab_size: usize,
    /// Longest sequence (cached plus new tokens) the model accepts.
    pub max_positions: usize,
    /// Width of the hidden states.
    pub d_model: usize,
    /// Width of `kiln_model_embed`'s output; 0 when the model has no
    /// sentence-embedding head.
    pub embedding_dim: usize,
    /// The model has an encoder (`kiln_model_embed`, `kiln_session_set_source`).
    pub has_encoder: bool,
    /// The model has a decoder (`kiln_session_forward`, `kiln_session_generate`).
    pub has_decoder: bool,
    /// The model carries a tokenizer (`kiln_tokenize`, `kiln_detokenize`,
    /// `kiln_model_embed_text`).
    pub has_tokenizer: bool,
}

/// Called with each generated token as soon as it is chosen; return false
/// to stop generating.
pub type KilnTokenCallback =
    Option<unsafe extern "C" fn(token: i32, user_data: *mut c_void) -> bool>;

/// How `kiln_session_generate` picks tokens and when it stops. Start from
/// `kiln_generate_options_default()`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct KilnGenerateOptions {
    /// Most tokens to generate.
    pub max_new_tokens: usize,
    /// 0 = greedy (argmax); otherwise logits are divided by it.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1 = all).
    pub top_p: f32,
    /// Seed of the sampler.
    pub seed: u64,
    /// Generation ends after emitting any of these (may be NULL when
    /// `n_stop_tokens` is 0).
    pub stop_tokens: *const i32,
    pub n_stop_tokens: usize,
}

// A model handle is shared by threads, a session handle moves between them.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    fn sent<T: Send>() {}
    shared::<KilnModel>();
    sent::<KilnSession>();
};

// ---------------------------------------------------------------------------
// The boundary: errors, panics, pointers.

thread_local! {
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

/// A failed call: its status and message.
struct Failure(KilnStatus, String);

impl Failure {
    fn error(msg: impl std::fmt::Display) -> Failure {
        Failure(KilnStatus::Error, msg.to_string())
    }
    fn invalid(msg: impl Into<String>) -> Failure {
        Failure(KilnStatus::InvalidArgument, msg.into())
    }
}

fn set_last_error(msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = Some(c));
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    let what = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("internal error (a bug in kiln, please report it): {what}")
}

/// Run `f` for a call returning a status: catches panics, records failures.
fn status(f: impl FnOnce() -> Result<(), Failure>) -> KilnStatus {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => KilnStatus::Ok,
        Ok(Err(Failure(s, msg))) => {
            set_last_error(&msg);
            s
        }
        Err(p) => {
            set_last_error(&panic_message(p.as_ref()));
            KilnStatus::Panic
        }
    }
}

/// Run `f` for a call returning a new handle: NULL on failure.
fn handle<T>(f: impl FnOnce() -> Result<Box<T>, Failure>) -> *mut T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(b)) => Box::into_raw(b),
        Ok(Err(Failure(_, msg))) => {
            set_last_error(&msg);
            ptr::null_mut()
        }
        Err(p) => {
            set_last_error(&panic_message(p.as_ref()));
            ptr::null_mut()
        }
    }
}

unsafe fn model_ref<'a>(m: *const KilnModel) -> Result<&'a KilnModel, Failure> {
    // SAFETY: the caller passes NULL or a pointer from kiln_model_open not yet freed.
    unsafe { m.as_ref() }.ok_or_else(|| Failure::invalid("model is NULL"))
}

unsafe fn session_mut<'a>(s: *mut KilnSession) -> Result<&'a mut KilnSession, Failure> {
    // SAFETY: the caller passes NULL or a pointer from kiln_session_new not yet freed.
    unsafe { s.as_mut() }.ok_or_else(|| Failure::invalid("session is NULL"))
}

unsafe fn c_str<'a>(p: *const c_char, what: &str) -> Result<&'a str, Failure> {
    if p.is_null() {
        return Err(Failure::invalid(format!("{what} is NULL")));
    }
    // SAFETY: non-null, and the caller promises a NUL-terminated string.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| Failure::invalid(format!("{what} is not valid UTF-8")))
}

/// The most ids `kiln_detokenize` reads in one call.
const DETOKENIZE_LIMIT: usize = 1 << 24;

/// What bounds a token count: the model's context, or a call's own limit.
#[derive(Clone, Copy)]
enum TokenLimit {
    /// The model's `max_positions`.
    Positions(usize),
    /// `kiln_detokenize`'s limit per call.
    Detokenize,
    /// No bound (stop-token lists are not positions).
    None,
}

/// `n` token ids at `p`, after checking `n` against `limit` (so a bad length
/// is an error before any memory is touched).
unsafe fn tokens<'a>(p: *const i32, n: usize, limit: TokenLimit) -> Result<&'a [i32], Failure> {
    if n == 0 {
        return Err(Failure::invalid("give at least one token"));
    }
    if p.is_null() {
        return Err(Failure::invalid("tokens is NULL"));
    }
    match limit {
        TokenLimit::Positions(max) if n > max => {
            return Err(Failure::error(format!(
                "{n} tokens exceed the model's max_positions = {max}"
            )));
        }
        TokenLimit::Detokenize if n > DETOKENIZE_LIMIT => {
            return Err(Failure::error(format!(
                "{n} ids exceed kiln_detokenize's limit of {DETOKENIZE_LIMIT} per call; detokenize in pieces"
            )));
        }
        _ => {}
    }
    // SAFETY: non-null, n bounded by the model's limit; the caller promises n readable ids.
    Ok(unsafe { std::slice::from_raw_parts(p, n) })
}

/// Copy `data` to the caller's buffer `out` of capacity `cap`, reporting the
/// length through `out_len` (which may be NULL).
unsafe fn write_out<T: Copy>(
    data: &[T],
    out: *mut T,
    cap: usize,
    out_len: *mut usize,
) -> Result<(), Failure> {
    unsafe { set_len(out_len, data.len()) };
    check_capacity(data.len(), out, cap)?;
    // SAFETY: `out` is non-null with room for `cap >= data.len()` elements.
    unsafe { ptr::copy_nonoverlapping(data.as_ptr(), out, data.len()) };
    Ok(())
}

fn check_capacity<T>(needed: usize, out: *mut T, cap: usize) -> Result<(), Failure> {
    if out.is_null() || cap < needed {
        return Err(Failure(
            KilnStatus::BufferTooSmall,
            format!(
                "the output needs {needed} elements; the buffer {}",
                if out.is_null() {
                    "is NULL".to_string()
                } else {
                    format!("holds {cap}")
                }
            ),
        ));
    }
    Ok(())
}

unsafe fn set_len(out_len: *mut usize, n: usize) {
    // SAFETY: NULL or a writable size_t, per the C contract.
    if let Some(l) = unsafe { out_len.as_mut() } {
        *l = n;
    }
}

#[cfg(unix)]
fn path_from(s: &CStr) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    PathBuf::from(std::ffi::OsStr::from_bytes(s.to_bytes()))
}

#[cfg(not(unix))]
fn path_from(s: &CStr) -> PathBuf {
    PathBuf::from(s.to_string_lossy().into_owned())
}

unsafe fn c_path(p: *const c_char, what: &str) -> Result<PathBuf, Failure> {
    if p.is_null() {
        return Err(Failure::invalid(format!("{what} is NULL")));
    }
    // SAFETY: non-null, and the caller promises a NUL-terminated string.
    Ok(path_from(unsafe { CStr::from_ptr(p) }))
}

// ---------------------------------------------------------------------------
// Errors and version.

/// The message of the most recent failed call on this thread, or NULL if
/// none failed yet. The string stays valid until the next failing call on
/// this thread; copy it to keep it.
#[unsafe(no_mangle)]
pub extern "C" fn kiln_last_error() -> *const c_char {
    catch_unwind(|| LAST_ERROR.with(|e| e.borrow().as_ref().map_or(ptr::null(), |c| c.as_ptr())))
        .unwrap_or(ptr::null())
}

/// kiln's version, e.g. "0.1.0" (a static string: do not free it).
#[unsafe(no_mangle)]
pub extern "C" fn kiln_version() -> *const c_char {
    const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
    VERSION.as_ptr().cast()
}

/// Free a string returned by kiln (`kiln_detokenize`). NULL is ignored.
///
/// # Safety
/// `s` is NULL or a string kiln returned, not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kiln_string_free(s: *mut c_char) {
    if !s.is_null() {
        // SAFETY: `s` came from CString::into_raw in this library.
        let _ = catch_unwind(|| drop(unsafe { CString::from_raw(s) }));
    }
}

// ---------------------------------------------------------------------------
// Models.

/// Open and compile a model. `path` is a `.toml` spec, a Hugging Face model
/// folder (config.json + *.safetensors [+ tokenizer.json]) or a `.gguf`
/// file. `weights` (may be NULL) gives a spec its checkpoint (a HF folder, a
/// `.safetensors` or `.gguf` file); without it a spec gets random weights
/// from `seed`. `backend` is `KILN_BACKEND_JIT` or `KILN_BACKEND_REFERENCE`.
/// Returns NULL on failure (see `kiln_last_error()`).
///
/// # Safety
/// `path` is a NUL-terminated string; `weights` is NULL or one.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kiln_model_open(
    path: *const c_char,
    weights: *const c_char,
    seed: u64,
    backend: i32,
) -> *mut KilnModel {
    handle(|| {
        let path = unsafe { c_path(path, "path")? };
        let weights = if weights.is_null() {
            None
        } else {
            Some(unsafe { c_path(weights, "weights")? })
        };
        let backend = match backend {
            KILN_BACKEND_JIT => kiln_runtime::backends::default_backend(),
            KILN_BACKEND_REFERENCE => kiln_runtime::backends::reference(),
            b => {
                return Err(Failure::invalid(format!(
                    "unknown backend {b} (KILN_BACKEND_JIT = 0, KILN_BACKEND_REFERENCE = 1)"
                )));
            }
        };
        let opts = OpenOptions {
            weights: weights.as_deref(),
            seed,
            progress: None,
            backend,
            ..OpenOptions::default()
        };
        let loaded = open(&path, opts).map_err(Failure::error)?;
        Ok(Box::new(KilnModel {
            loaded: Arc::new(loaded),
        }))
    })
}

/// Free a model. Sessions created from it stay valid (they keep what they
/// need). NULL is ignored.
///
/// # Safety
/// `model` is NULL or a model from `kiln_model_open`, not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kiln_model_free(model: *mut KilnModel) {
    if !model.is_null() {
        // SAFETY: `model` came from Box::into_raw in kiln_model_open.
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(model) })));
    }
}

/// Fill `*out` with the model's sizes and capabilities.
///
/// # Safety
/// `model` is NULL or a live model; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kiln_model_info(
    model: *const KilnModel,
    out: *mut KilnModelInfo,
) -> KilnStatus {
    status(|| {
        let m = unsafe { model_ref(model)? };
        let out = unsafe { out.as_mut() }.ok_or_else(|| Failure::invalid("out is NULL"))?;
        let l = &m.loaded;
        let spec = &l.spec.spec;
        *out = KilnModelInfo {
            vocab_size: spec.vocab_size,
            max_positions: spec.max_positions,
            d_model: spec.d_model,
            embedding_dim: if spec.head.kind == HeadKind::MeanPool {
                spec.d_model
            } else {
                0
            },
            has_encoder: l.model.lowered.encoder.is_some(),
            has_decoder: l.model.lowered.decoder.is_some(),
            has_tokenizer: l.tokenizer.is_some(),
        };
        Ok(())
    })
}

/// Token ids of `text` (with the special tokens the tokenizer adds) into
/// `out` of capacity `cap`; `*out_len` gets the count.
///
/// # Safety
/// `model` is NULL or a live model; `text` a NUL-terminated string; `out`
/// NULL or room for `cap` ids; `out_len` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kiln_tokenize(
    model: *const KilnModel,
    text: *const c_char,
    out: *mut i32,
    cap: usize,
    out_len: *mut usize,
) -> KilnStatus {
    status(|| {
        let m = unsafe { model_ref(model)? };
        let text = unsafe { c_str(text, "text")? };
        let ids = encode_text(&m.loaded, text)?;
        unsafe { write_out(&ids, out, cap, out_len) }
    })
}

fn encode_text(l: &LoadedModel, text: &str) -> Result<Vec<i32>, Failure> {
    let tok = l.tokenizer.as_ref().ok_or_else(|| {
        Failure::error(
            "this model has no tokenizer (open a HF folder with tokenizer.json or a .gguf file)",
        )
    })?;
    Ok(tok
        .encode(text)
        .map_err(Failure::error)?
        .into_iter()
        .map(|t| t as i32)
        .collect())
}

/// The text of `n` token ids, as a new string in `*out` (free it with
/// `kiln_string_free`).
///
/// # Safety
/// `model` is NULL or a live model; `ids` points to `n` ids; `out` is
/// NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kiln_detokenize(
    model: *const KilnModel,
    ids: *const i32,
    n: usize,
    out: *mut *mut c_char,
) -> KilnStatus {
    status(|| {
        let m = unsafe { model_ref(model)? };
        let out = unsafe { out.as_mut() }.ok_or_else(|| Failure::invalid("out is NULL"))?;
        let tok = m
            .loaded
            .tokenizer
            .as_ref()
            .ok_or_else(|| Failure::error("this model has no tokenizer"))?;
        let ids = if n == 0 {
            &[][..]
        } else {
            unsafe { tokens(ids, n, TokenLimit::Detokenize)? }
        };
        let mut u = Vec::with_capacity(ids.len());
        for &t in ids {
            if t < 0 || t as usize >= tok.vocab_size().max(m.loaded.spec.spec.vocab_size) {
                return Err(Failure::error(format!(
                    "token id {t} is outside the vocabulary"
                )));
            }
            u.push(t as u32);
        }
        let text = tok.decode(&u).map_err(Failure::error)?;
        *out = CString::new(text.replace('\0', " "))
            .map_err(Failure::error)?
            .into_raw();
        Ok(())
    })
}

/// The sentence embedding of one token sequence (models with a mean-pool
/// head: sentence-transformers folders, `head.kind = "mean-pool"`), `embedding_dim`
/// floats into `out` of capacity `cap`.
///
/// # Safety
/// `model` is NULL or a live model; `tokens` points to `n` ids; `out`
/// NULL or room for `cap` floats; `out_len` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kiln_model_embed(
    model: *const KilnModel,
    tokens: *const i32,
    n: usize,
    out: *mut f32,
    cap: usize,
    out_len: *mut usize,
) -> KilnStatus {
    status(|| {
        let m = unsafe { model_ref(model)? };
        let ids = unsafe {
            self::tokens(
                tokens,
                n,
                TokenLimit::Positions(m.loaded.spec.spec.max_positions),
            )?
        };
        let v = embed(&m.loaded, ids, out, cap, out_len)?;
        unsafe { write_out(&v, out, cap, out_len) }
    })
}

/// `kiln_model_embed` of `text`, tokenized with the model's tokenizer.
///
/// # Safety
/// As `kiln_model_embed`; `text` is a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kiln_model_embed_text(
    model: *const KilnModel,
    text: *const c_char,
    out: *mut f32,
    cap: usize,
    out_len: *mut usize,
) -> KilnStatus {
    status(|| {
        let m = unsafe { model_ref(model)? };
        let text = unsafe { c_str(text, "text")? };
        let ids = encode_text(&m.loaded, text)?;
        let v = embed(&m.loaded, &ids, out, cap, out_len)?;
        unsafe { write_out(&v, out, cap, out_len) }
    })
}

fn embed(
    l: &LoadedModel,
    ids: &[i32],
    out: *mut f32,
    cap: usize,
    out_len: *mut usize,
) -> Result<Vec<f32>, Failure> {
    let spec = &l.spec.spec;
    if spec.head.kind != HeadKind::MeanPool || l.model.lowered.encoder.is_none() {
        return Err(Failure::error(
            "this model has no sentence-embedding head (a sentence-transformers folder with modules.json, or a spec with head.kind = \"mean-pool\")",
        ));
    }
    // Check the buffer before running the encoder.
    unsafe { set_len(out_len, spec.d_model) };
    check_capacity(spec.d_model, out, cap)?;
    let o = l.model.encode(ids).map_err(Failure::error)?;
    let e = o
        .get("embedding")
        .ok_or_else(|| Failure::error("the model produced no `embedding` output"))?;
    Ok(e.to_f32_vec())
}

// ---------------------------------------------------------------------------
// Sessions.

/// A new session (empty KV cache) on `model`. Returns NULL on failure.
///
/// # Safety
/// `model` is NULL or a live model.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kiln_session_new(model: *const KilnModel) -> *mut KilnSession {
    handle(|| {
        let m = unsafe { model_ref(model)? };
        let arc = Arc::clone(&m.loaded);
        // SAFETY: the model lives in the Arc's heap allocation, which does
        // not move and outlives the session: the session holds a clone of
        // the Arc and is dropped before it (field order).
        let model: &'static kiln_runtime::session::Model = unsafe { &*ptr::from_ref(&arc.model) };
        Ok(Box::new(KilnSession {
            session: model.session(),
            model: arc,
        }))
    })
}

/// Free a session. NULL is ignored.
///
/// # Safety
/// `session` is NULL or a session from `kiln_session_new`, not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kiln_session_free(session: *mut KilnSession) {
    if !session.is_null() {
        // SAFETY: `session` came from Box::into_raw in kiln_session_new.
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(session) })));
    }
}

/// Tokens in the session's KV cache (0 for NULL).
///
/// # Safety
/// `session` is NULL or a live session.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kiln_session_past_len(session: *const KilnSession) -> usize {
    // SAFETY: NULL or a live session.
    unsafe { session.as_ref() }.map_or(0, |s| s.session.past_len())
}

/// Encoder-decoder models: encode the source tokens once; later forward
/// and generate calls attend to them.
///
/// # Safety
/// `session` is NULL or a live session; `tokens` points to `n` ids.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kiln_session_set_source(
    session: *mut KilnSession,
    tokens: *const i32,
    n: usize,
) -> KilnStatus {
    status(|| {
        let s = unsafe { session_mut(session)? };
        let ids = unsafe {
            self::tokens(
                tokens,
                n,
                TokenLimit::Positions(s.model.spec.spec.max_positions),
            )?
        };
        s.session.set_source(ids).map_err(Failure::error)
    })
}

/// Feed `n` new tokens through the decoder (extending the KV cache) and
/// write their logits, `n * vocab_size` floats row-major (one row per
/// token), into `logits` of capacity `cap`. With a buffer too small
/// (or NULL) it returns `KILN_STATUS_BUFFER_TOO_SMALL` with the size needed
/// in `*out_len` and leaves the session unchanged.
///
/// # Safety
/// `session` is NULL or a live session; `tokens` points to `n` ids;
/// `logits` NULL or room for `cap` floats; `out_len` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kiln_session_forward(
    session: *mut KilnSession,
    tokens: *const i32,
    n: usize,
    logits: *mut f32,
    cap: usize,
    out_len: *mut usize,
) -> KilnStatus {
    status(|| {
        let s = unsafe { session_mut(session)? };
        let spec = &s.model.spec.spec;
        let has_logits = s
            .model
            .model
            .lowered
            .decoder
            .as_ref()
            .is_some_and(|g| g.outputs.iter().any(|(name, _)| name == "logits"));
        if !has_logits {
            return Err(Failure::error(
                "this model has no decoder with logits (encoder-only models: use kiln_model_embed)",
            ));
        }
        let needed = n.saturating_mul(spec.vocab_size);
        unsafe { set_len(out_len, needed) };
        let ids = unsafe { self::tokens(tokens, n, TokenLimit::Positions(spec.max_positions))? };
        check_capacity(needed, logits, cap)?;
        let o = s.session.forward(ids).map_err(Failure::error)?;
        let t = o
            .get("logits")
            .ok_or_else(|| Failure::error("the model produced no logits"))?;
        let v = t.to_f32_vec();
        if v.len() != needed {
            return Err(Failure::error(format!(
                "logits of shape {:?}, expected {n} x {}",
                t.shape(),
                spec.vocab_size
            )));
        }
        unsafe { write_out(&v, logits, cap, out_len) }
    })
}

/// Greedy decoding, 32 new tokens, no stop tokens.
#[unsafe(no_mangle)]
pub extern "C" fn kiln_generate_options_default() -> KilnGenerateOptions {
    default_options()
}

fn default_options() -> KilnGenerateOptions {
    let d = GenerateOptions::default();
    KilnGenerateOptions {
        max_new_tokens: d.max_new_tokens,
        temperature: d.sampling.temperature,
        top_k: d.sampling.top_k,
        top_p: d.sampling.top_p,
        seed: d.sampling.seed,
        stop_tokens: ptr::null(),
        n_stop_tokens: 0,
    }
}

/// Feed `prompt` (`n` ids), then generate up to `opts->max_new_tokens`
/// tokens through the KV cache, calling `on_token(token, user_data)` with
/// each as soon as it is chosen (NULL: no callback; return false from it to
/// stop). The generated ids also go to `out` (NULL, or room for `cap >=
/// max_new_tokens` ids); `*out_len` gets their count. `opts` NULL means
/// `kiln_generate_options_default()`.
///
/// # Safety
/// `session` is NULL or a live session; `prompt` points to `n` ids; `opts`
/// NULL or valid (its `stop_tokens` pointing to `n_stop_tokens` ids); `out`
/// NULL or room for `cap` ids; `out_len` NULL or writable.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)] // the C signature: inputs, options, callback, output buffer
pub unsafe extern "C" fn kiln_session_generate(
    session: *mut KilnSession,
    prompt: *const i32,
    n: usize,
    opts: *const KilnGenerateOptions,
    on_token: KilnTokenCallback,
    user_data: *mut c_void,
    out: *mut i32,
    cap: usize,
    out_len: *mut usize,
) -> KilnStatus {
    status(|| {
        let s = unsafe { session_mut(session)? };
        let max = s.model.spec.spec.max_positions;
        let prompt = unsafe { tokens(prompt, n, TokenLimit::Positions(max))? };
        // SAFETY: NULL or a valid options struct.
        let o = unsafe { opts.as_ref() }
            .copied()
            .unwrap_or_else(default_options);
        if !(o.temperature >= 0.0 && o.temperature.is_finite()) {
            return Err(Failure::invalid(format!(
                "temperature must be >= 0, got {}",
                o.temperature
            )));
        }
        if !(0.0..=1.0).contains(&o.top_p) {
            return Err(Failure::invalid(format!(
                "top_p must be in [0, 1], got {}",
                o.top_p
            )));
        }
        let stop = if o.n_stop_tokens == 0 {
            Vec::new()
        } else {
            if o.n_stop_tokens > 1 << 20 {
                return Err(Failure::invalid(format!("{} stop tokens", o.n_stop_tokens)));
            }
            unsafe { tokens(o.stop_tokens, o.n_stop_tokens, TokenLimit::None)? }.to_vec()
        };
        if !out.is_null() && cap < o.max_new_tokens {
            unsafe { set_len(out_len, o.max_new_tokens) };
            return Err(Failure(
                KilnStatus::BufferTooSmall,
                format!(
                    "out holds {cap} ids but up to {} may be generated",
                    o.max_new_tokens
                ),
            ));
        }
        let g = GenerateOptions {
            max_new_tokens: o.max_new_tokens,
            sampling: SamplingOptions {
                temperature: o.temperature,
                top_k: o.top_k,
                top_p: o.top_p,
                seed: o.seed,
            },
            stop_tokens: stop,
        };
        let ids = s
            .session
            .generate(prompt, &g, &mut |id| match on_token {
                // SAFETY: the caller's callback, with the caller's user data.
                Some(f) => unsafe { f(id, user_data) },
                None => true,
            })
            .map_err(Failure::error)?;
        unsafe { set_len(out_len, ids.len()) };
        if !out.is_null() {
            unsafe { write_out(&ids, out, cap, out_len)? };
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last_error() -> String {
        let p = kiln_last_error();
        assert!(!p.is_null());
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }

    #[test]
    fn a_panic_becomes_a_status_and_a_message() {
        let s = status(|| panic!("boom"));
        assert_eq!(s, KilnStatus::Panic);
        assert!(last_error().contains("boom"), "{}", last_error());
        let h: *mut u8 = handle(|| -> Result<Box<u8>, Failure> { panic!("bang {}", 1) });
        assert!(h.is_null());
        assert!(last_error().contains("bang 1"));
    }

    #[test]
    fn messages_with_nul_bytes_survive() {
        assert_eq!(status(|| Err(Failure::error("a\0b"))), KilnStatus::Error);
        assert_eq!(last_error(), "a b");
    }
}
