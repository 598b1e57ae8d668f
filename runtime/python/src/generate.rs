//! Streamed generation: `Model.generate` / `Model.generate_ids` return a
//! [`Generation`], a Python iterator fed by a worker thread.
//!
//! A `Session` borrows its model, so the worker owns a clone of the
//! model's `Arc`, opens the session itself and runs `Session::generate`;
//! each token (and each text piece it completes) goes through a bounded
//! channel. `__next__` waits on the channel with the GIL released. When the
//! iterator is closed or dropped the receiver goes away, the worker's next
//! send fails and its token callback returns false, which ends generation
//! after the current step.

use crate::errors::{Failure, KilnError};
use kiln_open::source::LoadedModel;
use kiln_open::stop::{Release, StopText};
use kiln_open::tokenizer::{StreamDecoder, Tokenizer};
use kiln_runtime::sampling::SamplingOptions;
use kiln_runtime::session::GenerateOptions;
use pyo3::prelude::*;
use pyo3::types::{PyInt, PyString};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// Where generation ends besides `max_tokens` and the context.
#[derive(Debug, Default, Clone)]
pub struct Stop {
    /// Stop sequences: generation ends once the text contains one.
    pub strings: Vec<String>,
    /// Extra stop token ids (the tokenizer's end-of-sequence ids always stop).
    pub ids: Vec<i32>,
}

/// What to generate (checked by the caller).
#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: Vec<i32>,
    /// Encoder-decoder models: the decoder's start ids (the prompt is the source).
    pub decoder_ids: Option<Vec<i32>>,
    pub max_tokens: usize,
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub seed: u64,
    pub stop: Stop,
    /// Yield text pieces (else token ids).
    pub text: bool,
}

/// What the worker sends, in order: every token, the text pieces, then
/// exactly one `Done` or `Error`.
enum Event {
    Token(i32),
    Piece(String),
    Done(&'static str),
    Error(Failure),
}

/// Pieces in flight at most: the worker runs this far ahead of a slow reader.
const CHANNEL: usize = 64;

/// Start generating on a worker thread.
pub fn start(loaded: Arc<LoadedModel>, req: Request) -> Result<Generation, Failure> {
    let (tx, rx) = sync_channel(CHANNEL);
    let prompt_tokens = req.prompt.clone();
    let yield_ids = !req.text;
    let worker = std::thread::Builder::new()
        .name("kiln-generate".into())
        .spawn(move || work(&loaded, &req, &tx))
        .map_err(|e| Failure::kiln(format!("cannot start the generation thread: {e}")))?;
    Ok(Generation {
        rx: Mutex::new(Some(rx)),
        worker: Mutex::new(Some(worker)),
        state: Mutex::new(State::default()),
        yield_ids,
        prompt_tokens,
    })
}

fn work(loaded: &LoadedModel, req: &Request, tx: &SyncSender<Event>) {
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(loaded, req, tx)));
    let last = match run {
        Ok(Ok(Some(stopped))) => Event::Done(stopped),
        // The reader is gone: nobody to tell.
        Ok(Ok(None)) => return,
        Ok(Err(f)) => Event::Error(f),
        Err(panic) => {
            let msg = (panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Event::Error(Failure::kiln(format!(
                "internal error while generating (a bug in kiln): {msg}"
            )))
        }
    };
    let _ = tx.send(last);
}

/// Generate; `Ok(Some(reason))` when done, `Ok(None)` when the reader left.
fn run(
    loaded: &LoadedModel,
    req: &Request,
    tx: &SyncSender<Event>,
) -> Result<Option<&'static str>, Failure> {
    let tok = loaded.tokenizer.as_ref();
    let mut stop_tokens = req.stop.ids.clone();
    if let Some(t) = tok {
        stop_tokens.extend(t.eos.iter().map(|&e| e as i32));
    }
    let opts = GenerateOptions {
        max_new_tokens: req.max_tokens,
        sampling: SamplingOptions {
            temperature: req.temperature,
            top_k: req.top_k,
            top_p: req.top_p,
            seed: req.seed,
        },
        stop_tokens,
    };
    let mut session = loaded.model.session();
    let feed: &[i32] = match &req.decoder_ids {
        Some(d) => {
            session.set_source(&req.prompt)?;
            d
        }
        None => &req.prompt,
    };
    let decodes = req.text || !req.stop.strings.is_empty();
    let mut text = TextStream::new(tok.filter(|_| decodes), &req.stop.strings, req.text);
    let mut flow = Flow::Go;
    let mut failed = None;
    let ids = session.generate(feed, &opts, &mut |id| {
        if tx.send(Event::Token(id)).is_err() {
            flow = Flow::Gone;
            return false;
        }
        if opts.stop_tokens.contains(&id) {
            // The last token; its text is not part of the output.
            return true;
        }
        match text.push(id, tx) {
            Ok(Flow::Go) => true,
            Ok(f) => {
                flow = f;
                false
            }
            Err(e) => {
                failed = Some(e);
                false
            }
        }
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    let ends_in_stop = ids.last().is_some_and(|t| opts.stop_tokens.contains(t));
    if flow == Flow::Go {
        let content = &ids[..ids.len() - usize::from(ends_in_stop)];
        flow = text.finish(content, tx)?;
    }
    Ok(match flow {
        Flow::Gone => None,
        Flow::Stop => Some("stop_string"),
        Flow::Go if ends_in_stop => Some("stop_token"),
        Flow::Go if ids.len() >= opts.max_new_tokens => Some("max_tokens"),
        Flow::Go => Some("context"),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// Keep generating.
    Go,
    /// A stop string was found.
    Stop,
    /// The reader went away.
    Gone,
}

/// The generated text, decoded as tokens arrive and released in pieces
/// ([`StopText`] holds back what could start a stop string).
struct TextStream<'t> {
    tok: Option<&'t Tokenizer>,
    decoder: Option<StreamDecoder<'t>>,
    text: StopText,
    /// Send the pieces (text mode) or only look for stop strings.
    emit: bool,
}

impl<'t> TextStream<'t> {
    fn new(tok: Option<&'t Tokenizer>, stops: &[String], emit: bool) -> Self {
        TextStream {
            tok,
            decoder: tok.map(StreamDecoder::new),
            text: StopText::new(stops.to_vec()),
            emit,
        }
    }

    fn push(&mut self, id: i32, tx: &SyncSender<Event>) -> Result<Flow, Failure> {
        let Some(d) = self.decoder.as_mut() else {
            return Ok(Flow::Go);
        };
        let piece = d.push(id as u32)?.unwrap_or_default();
        let r = self.text.push(&piece);
        Ok(self.send(r, tx))
    }

    /// Generation ended (not at a stop string): the text is the decoding of
    /// every generated id, pieces the stream decoder still held included.
    fn finish(&mut self, ids: &[i32], tx: &SyncSender<Event>) -> Result<Flow, Failure> {
        let full = match self.tok {
            Some(tok) if self.decoder.is_some() => {
                let ids: Vec<u32> = ids.iter().map(|&t| t as u32).collect();
                Some(tok.decode(&ids)?)
            }
            _ => None,
        };
        let r = self.text.finish(full);
        Ok(self.send(r, tx))
    }

    fn send(&mut self, r: Release, tx: &SyncSender<Event>) -> Flow {
        if self.emit && !r.piece.is_empty() && tx.send(Event::Piece(r.piece)).is_err() {
            return Flow::Gone;
        }
        if r.stopped { Flow::Stop } else { Flow::Go }
    }
}

#[derive(Default)]
struct State {
    tokens: Vec<i32>,
    text: String,
    stopped: Option<&'static str>,
}

/// A running generation: an iterator of text pieces (`Model.generate`) or
/// token ids (`Model.generate_ids`). `tokens`, `text` and `stopped` say
/// what it produced; `close()` (or leaving a `with` block, or dropping it)
/// stops it.
#[pyclass(frozen, module = "kiln", name = "Generation")]
pub struct Generation {
    /// None once finished or closed.
    rx: Mutex<Option<Receiver<Event>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
    state: Mutex<State>,
    yield_ids: bool,
    prompt_tokens: Vec<i32>,
}

/// A mutex whose holder panicked still holds consistent data here.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

enum Got {
    Event(Event),
    Waiting,
    Finished,
    Lost,
}

impl Generation {
    /// Stop reading and wait (without the GIL) for the worker to end: it
    /// sees the closed channel at its next token.
    fn end(&self, py: Python<'_>, stopped: &'static str) {
        lock(&self.rx).take();
        let worker = lock(&self.worker).take();
        if let Some(w) = worker {
            py.detach(|| {
                let _ = w.join();
            });
        }
        let mut state = lock(&self.state);
        state.stopped.get_or_insert(stopped);
    }
}

#[pymethods]
impl Generation {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        loop {
            let got = py.detach(|| match lock(&self.rx).as_ref() {
                None => Got::Finished,
                Some(rx) => match rx.recv_timeout(Duration::from_millis(50)) {
                    Ok(e) => Got::Event(e),
                    Err(RecvTimeoutError::Timeout) => Got::Waiting,
                    Err(RecvTimeoutError::Disconnected) => Got::Lost,
                },
            });
            match got {
                Got::Finished => return Ok(None),
                // Ctrl-C while waiting: stop generating, raise KeyboardInterrupt.
                Got::Waiting => {
                    if let Err(e) = py.check_signals() {
                        self.end(py, "interrupted");
                        return Err(e);
                    }
                }
                Got::Lost => {
                    self.end(py, "error");
                    return Err(KilnError::new_err(
                        "generation ended without a result (a bug in kiln)",
                    ));
                }
                Got::Event(Event::Token(id)) => {
                    lock(&self.state).tokens.push(id);
                    if self.yield_ids {
                        return Ok(Some(PyInt::new(py, id).into_any()));
                    }
                }
                Got::Event(Event::Piece(p)) => {
                    lock(&self.state).text.push_str(&p);
                    if !self.yield_ids {
                        return Ok(Some(PyString::new(py, &p).into_any()));
                    }
                }
                Got::Event(Event::Done(stopped)) => {
                    self.end(py, stopped);
                    return Ok(None);
                }
                Got::Event(Event::Error(f)) => {
                    self.end(py, "error");
                    return Err(f.into_pyerr(py));
                }
            }
        }
    }

    /// Stop generating (after the current token) and wait for it to end.
    fn close(&self, py: Python<'_>) {
        self.end(py, "closed");
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.end(py, "closed");
        false
    }

    /// The generated token ids so far (stop tokens included).
    #[getter]
    fn tokens(&self) -> Vec<i32> {
        lock(&self.state).tokens.clone()
    }

    /// The text yielded so far (`generate`; empty for `generate_ids`).
    #[getter]
    fn text(&self) -> String {
        lock(&self.state).text.clone()
    }

    /// The prompt's token ids.
    #[getter]
    fn prompt_tokens(&self) -> Vec<i32> {
        self.prompt_tokens.clone()
    }

    /// Why generation ended: `"max_tokens"`, `"stop_token"`,
    /// `"stop_string"`, `"context"` (the model's max_positions),
    /// `"closed"`, `"interrupted"` or `"error"`; None while it runs.
    #[getter]
    fn stopped(&self) -> Option<&'static str> {
        lock(&self.state).stopped
    }

    fn __repr__(&self) -> String {
        let s = lock(&self.state);
        format!(
            "<kiln.Generation: {} prompt tokens, {} generated, {}>",
            self.prompt_tokens.len(),
            s.tokens.len(),
            s.stopped.unwrap_or("running")
        )
    }
}
