//! `kiln.open` and `kiln.Model`: a compiled model with its weights and
//! tokenizer, shared by every Python thread (each call gets its own session,
//! so calls never see each other's KV cache).

use crate::errors::Failure;
use crate::generate::{self, Generation, Request, Stop};
use kiln_compiler::spec::{Architecture, HeadKind};
use kiln_open::source::{LoadedModel, OpenOptions};
use kiln_runtime::backends::Precision;
use kiln_runtime::{Outputs, Tensor, TensorData};
use numpy::{PyArray1, PyArrayMethods};
use pyo3::exceptions::{PyRuntimeWarning, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyInt, PyList, PyString};
use std::ffi::CString;
use std::path::PathBuf;
use std::sync::Arc;

/// A model ready to run (from [`open`]).
#[pyclass(frozen, module = "kiln", name = "Model")]
pub struct Model {
    pub(crate) loaded: Arc<LoadedModel>,
    source: PathBuf,
    backend: &'static str,
    strict: bool,
}

/// The names of the backends `open(backend=...)` takes.
#[pyfunction]
pub fn backends() -> Vec<&'static str> {
    kiln_runtime::backends::names()
}

/// Open a model: a spec file (seeded random weights, or `weights`), a
/// Hugging Face folder (config.json + safetensors [+ tokenizer.json]) or a
/// `.gguf` file, compiled for `backend` (`kiln run --backend`).
#[pyfunction]
#[pyo3(signature = (
    source,
    backend = "jit",
    precision = "stored",
    seed = 0,
    weights = None,
    memory_limit = None,
    strict = false,
    opt_level = 1,
    disable_passes = None,
))]
#[allow(clippy::too_many_arguments)]
pub fn open(
    py: Python<'_>,
    source: PathBuf,
    backend: &str,
    precision: &str,
    seed: u64,
    weights: Option<PathBuf>,
    memory_limit: Option<&Bound<'_, PyAny>>,
    strict: bool,
    opt_level: u8,
    disable_passes: Option<Vec<String>>,
) -> PyResult<Model> {
    let fail = |f: Failure| f.into_pyerr(py);
    let backend = kiln_runtime::backends::get(backend).map_err(|e| fail(e.into()))?;
    let precision: Precision = precision
        .parse()
        .map_err(|e: kiln_runtime::RuntimeError| fail(e.into()))?;
    let memory_limit = match memory_limit {
        None => None,
        Some(v) => Some(memory_bytes(v)?),
    };
    let compile = kiln::Options {
        opt_level,
        disabled_passes: disable_passes.unwrap_or_default(),
    };
    let loaded = py
        .detach(|| {
            let opts = OpenOptions {
                weights: weights.as_deref(),
                seed,
                progress: None,
                backend,
                compile,
                precision,
                memory_limit,
                strict,
            };
            kiln_open::source::open(&source, opts)
        })
        .map_err(|e| fail(e.into()))?;
    for w in &loaded.warnings {
        warn(py, w)?;
    }
    if precision == Precision::F16 && !loaded.model.f16_weights() {
        warn(
            py,
            "this wgpu adapter has no SHADER_F16; the weights stay f32",
        )?;
    }
    Ok(Model {
        loaded: Arc::new(loaded),
        source,
        backend: backend.name(),
        strict,
    })
}

fn warn(py: Python<'_>, text: &str) -> PyResult<()> {
    let text = CString::new(text.replace('\0', " ")).unwrap_or_default();
    PyErr::warn(py, &py.get_type::<PyRuntimeWarning>(), &text, 1)
}

/// `memory_limit`: bytes as an int, or `"8G"`, `"512M"`, `"1.5G"` as
/// `--memory-limit` takes them (binary units: K = 1024).
fn memory_bytes(v: &Bound<'_, PyAny>) -> PyResult<u64> {
    if let Ok(s) = v.cast::<PyString>() {
        return kiln::pipeline::parse_bytes(&s.to_cow()?)
            .map_err(|e| Failure::value(e).into_pyerr(v.py()));
    }
    let n: i128 = v.extract().map_err(|_| {
        PyTypeError::new_err("memory_limit takes bytes (int) or a size like \"8G\" (str)")
    })?;
    u64::try_from(n).ok().filter(|&n| n >= 1).ok_or_else(|| {
        Failure::value(format!(
            "memory_limit {n}: the limit must be at least one byte and below 16 EiB"
        ))
        .into_pyerr(v.py())
    })
}

/// Token ids from a Python sequence of ints (a list, a tuple, a numpy
/// array); a `str` is refused (`tokenize` it first).
pub fn ids_arg(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<i32>> {
    if obj.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(format!(
            "{what}: give token ids (a list of ints), not a str; Model.tokenize turns text into ids"
        )));
    }
    let wide: Vec<i64> = obj.extract().map_err(|_| {
        PyTypeError::new_err(format!("{what}: give token ids (a sequence of ints)"))
    })?;
    wide.into_iter()
        .map(|t| {
            i32::try_from(t).map_err(|_| {
                Failure::value(format!("{what}: token id {t} is outside the vocabulary"))
                    .into_pyerr(obj.py())
            })
        })
        .collect()
}

/// Refuse ids outside `0..vocab` and empty inputs, as `kiln run` does.
pub fn check_ids(ids: &[i32], vocab: usize, what: &str) -> Result<(), Failure> {
    match ids.iter().find(|&&t| t < 0 || t as usize >= vocab) {
        Some(t) => Err(Failure::value(format!(
            "{what}: token id {t} is outside the vocabulary (0..{vocab})"
        ))),
        None if ids.is_empty() => Err(Failure::value(format!(
            "{what}: give at least one token id"
        ))),
        None => Ok(()),
    }
}

/// A tensor as a numpy array that owns the tensor's buffer (no copy).
fn to_numpy<'py>(py: Python<'py>, t: Tensor, shape: &[usize]) -> PyResult<Bound<'py, PyAny>> {
    let shape = shape.to_vec();
    Ok(match t.into_data() {
        TensorData::F32(v) => PyArray1::from_vec(py, v).reshape(shape)?.into_any(),
        TensorData::I32(v) => PyArray1::from_vec(py, v).reshape(shape)?.into_any(),
        TensorData::Bool(v) => PyArray1::from_vec(py, v).reshape(shape)?.into_any(),
    })
}

impl Model {
    fn spec(&self) -> &kiln_compiler::spec::Spec {
        &self.loaded.spec.spec
    }

    fn tokenizer(&self, what: &str) -> Result<&kiln_open::tokenizer::Tokenizer, Failure> {
        self.loaded.tokenizer.as_ref().ok_or_else(|| {
            Failure::kiln(format!(
                "{what} needs a tokenizer: open a HF folder with tokenizer.json or a .gguf file (a bare spec has none)"
            ))
        })
    }

    /// Run the model over `ids` (and the decoder over `decoder_ids` for
    /// encoder-decoder models), as `kiln run --tokens` does.
    fn run(&self, ids: &[i32], decoder_ids: Option<&[i32]>) -> Result<Outputs, Failure> {
        let spec = self.spec();
        let vocab = spec.vocab_size;
        check_ids(ids, vocab, "ids")?;
        let arch = spec.architecture;
        let dec: &[i32] = decoder_ids.unwrap_or(&[0]);
        if arch == Architecture::EncoderDecoder {
            check_ids(dec, vocab, "decoder_ids")?;
        } else if decoder_ids.is_some() {
            return Err(Failure::value(
                "decoder_ids: only encoder-decoder models take decoder ids",
            ));
        }
        let limit = spec.max_positions;
        if ids.len() > limit {
            return Err(Failure::value(format!(
                "{} tokens exceed the model's max_positions = {limit}",
                ids.len()
            )));
        }
        let model = &self.loaded.model;
        let out = match arch {
            Architecture::Encoder => model.encode(ids)?,
            Architecture::Decoder => model.session().forward(ids)?,
            Architecture::EncoderDecoder => {
                let mut s = model.session();
                s.set_source(ids)?;
                s.forward(dec)?
            }
        };
        Ok(out)
    }

    /// Warn (or, opened with `strict`, fail) on NaN or infinite outputs, as
    /// the `kiln` command does.
    fn check_finite(&self, py: Python<'_>, what: &str, values: &[f32]) -> PyResult<()> {
        let bad = values.iter().filter(|x| !x.is_finite()).count();
        if bad == 0 {
            return Ok(());
        }
        let text = format!(
            "{bad} of {} {what} are NaN or infinite (broken weights or an overflow)",
            values.len()
        );
        if self.strict {
            return Err(Failure::kiln(format!("{text}; refused under strict=True")).into_pyerr(py));
        }
        warn(py, &text)
    }

    fn request(
        &self,
        py: Python<'_>,
        prompt: &Bound<'_, PyAny>,
        options: GenerateArgs<'_, '_>,
        text: bool,
    ) -> PyResult<Generation> {
        let fail = |f: Failure| f.into_pyerr(py);
        let spec = self.spec();
        if spec.architecture == Architecture::Encoder {
            return Err(fail(Failure::kiln(
                "generate needs a decoder; this is an encoder-only model (try Model.embed)",
            )));
        }
        if !(options.top_p.is_finite() && (0.0..=1.0).contains(&options.top_p)) {
            return Err(fail(Failure::value(format!(
                "top_p must be in [0, 1], got {}",
                options.top_p
            ))));
        }
        if !(options.temperature >= 0.0 && options.temperature.is_finite()) {
            return Err(fail(Failure::value(format!(
                "temperature must be >= 0, got {}",
                options.temperature
            ))));
        }
        let stop = stop_arg(options.stop)?;
        if text {
            self.tokenizer("generate").map_err(fail)?;
        }
        if !stop.strings.is_empty() {
            self.tokenizer("a str in stop").map_err(fail)?;
        }
        let prompt_ids = match prompt.cast::<PyString>() {
            Ok(s) => {
                let s: String = s.extract()?;
                let tok = self.tokenizer("a str prompt").map_err(fail)?;
                let ids = py.detach(|| tok.encode(&s)).map_err(|e| fail(e.into()))?;
                ids.into_iter().map(|t| t as i32).collect()
            }
            Err(_) => ids_arg(prompt, "prompt")?,
        };
        if prompt_ids.is_empty() {
            return Err(fail(Failure::value("the prompt encodes to no tokens")));
        }
        let vocab = spec.vocab_size;
        check_ids(&prompt_ids, vocab, "prompt").map_err(fail)?;
        let decoder_ids = match options.decoder_ids {
            Some(d) if spec.architecture == Architecture::EncoderDecoder => {
                let d = ids_arg(d, "decoder_ids")?;
                check_ids(&d, vocab, "decoder_ids").map_err(fail)?;
                Some(d)
            }
            Some(_) => {
                return Err(fail(Failure::value(
                    "decoder_ids: only encoder-decoder models take decoder ids",
                )));
            }
            None if spec.architecture == Architecture::EncoderDecoder => Some(vec![0]),
            None => None,
        };
        generate::start(
            self.loaded.clone(),
            Request {
                prompt: prompt_ids,
                decoder_ids,
                max_tokens: options.max_tokens,
                temperature: options.temperature,
                top_k: options.top_k,
                top_p: options.top_p,
                seed: options.seed,
                stop,
                text,
            },
        )
        .map_err(fail)
    }
}

/// The options `generate` and `generate_ids` share.
struct GenerateArgs<'a, 'py> {
    max_tokens: usize,
    temperature: f32,
    top_k: usize,
    top_p: f32,
    seed: u64,
    stop: Option<&'a Bound<'py, PyAny>>,
    decoder_ids: Option<&'a Bound<'py, PyAny>>,
}

/// `stop`: a str, an int, or a sequence of strs and ints.
fn stop_arg(stop: Option<&Bound<'_, PyAny>>) -> PyResult<Stop> {
    let mut out = Stop::default();
    let Some(stop) = stop else {
        return Ok(out);
    };
    {
        let py = stop.py();
        let one = |item: &Bound<'_, PyAny>, out: &mut Stop| -> PyResult<()> {
            if let Ok(s) = item.cast::<PyString>() {
                let s = s.to_cow()?;
                if s.is_empty() {
                    return Err(
                        Failure::value("stop: an empty string would stop at once").into_pyerr(py)
                    );
                }
                out.strings.push(s.to_string());
            } else if item.is_instance_of::<PyInt>() {
                out.ids.push(item.extract()?);
            } else {
                return Err(PyTypeError::new_err(
                    "stop takes strs (stop sequences) and ints (token ids)",
                ));
            }
            Ok(())
        };
        if stop.is_instance_of::<PyString>() || stop.is_instance_of::<PyInt>() {
            one(stop, &mut out)?;
        } else {
            for item in stop.try_iter()? {
                one(&item?, &mut out)?;
            }
        }
        Ok(out)
    }
}

#[pymethods]
impl Model {
    /// The outputs of one forward pass over `ids` (no KV cache kept): the
    /// logits `[tokens, vocab]` for a language model, or the head's most
    /// specific output (`embedding`, `pooled`, `hidden`) without the batch
    /// axis: what `kiln run --tokens` prints. The array owns kiln's buffer
    /// (no copy). Encoder-decoder models encode `ids` and run the decoder
    /// over `decoder_ids` (default `[0]`, as `kiln run --decoder-tokens`).
    #[pyo3(signature = (ids, decoder_ids=None))]
    fn forward<'py>(
        &self,
        py: Python<'py>,
        ids: &Bound<'py, PyAny>,
        decoder_ids: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let ids = ids_arg(ids, "ids")?;
        let dec = decoder_ids.map(|d| ids_arg(d, "decoder_ids")).transpose()?;
        let mut out = py
            .detach(|| self.run(&ids, dec.as_deref()))
            .map_err(|f| f.into_pyerr(py))?;
        let key = ["logits", "embedding", "pooled", "hidden"]
            .into_iter()
            .find(|k| out.get(k).is_some())
            .ok_or_else(|| Failure::kiln("the model produced no output").into_pyerr(py))?;
        let t = out.remove(key).expect("found above");
        if let Some(v) = t.as_f32() {
            self.check_finite(py, key, v)?;
        }
        let shape = match t.shape() {
            [1, rest @ ..] => rest.to_vec(),
            s => s.to_vec(),
        };
        to_numpy(py, t, &shape)
    }

    /// Every output of one forward pass over `ids`, by name, with kiln's
    /// shapes (batch axis first): `logits`, `hidden`, `embedding`, ...
    #[pyo3(signature = (ids, decoder_ids=None))]
    fn outputs<'py>(
        &self,
        py: Python<'py>,
        ids: &Bound<'py, PyAny>,
        decoder_ids: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let ids = ids_arg(ids, "ids")?;
        let dec = decoder_ids.map(|d| ids_arg(d, "decoder_ids")).transpose()?;
        let out = py
            .detach(|| self.run(&ids, dec.as_deref()))
            .map_err(|f| f.into_pyerr(py))?;
        let dict = PyDict::new(py);
        for (name, t) in out.into_vec() {
            let shape = t.shape().to_vec();
            dict.set_item(name, to_numpy(py, t, &shape)?)?;
        }
        Ok(dict)
    }

    /// Generate text from `prompt` (a str, tokenized with the model's
    /// tokenizer, or token ids), streamed: an iterator of text pieces as
    /// the tokens are chosen. Greedy at temperature 0 (`kiln generate`).
    /// `stop`: strs end generation when the text contains one (the stop
    /// text and what follows it are not yielded); ints are extra stop
    /// token ids besides the tokenizer's end-of-sequence ids (their text is
    /// not yielded either). Closing or dropping the iterator stops
    /// generation. Encoder-decoder models encode the prompt and generate
    /// from `decoder_ids` (default `[0]`).
    #[pyo3(signature = (
        prompt,
        max_tokens = 32,
        temperature = 0.0,
        top_k = 0,
        top_p = 1.0,
        seed = 0,
        stop = None,
        decoder_ids = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &self,
        py: Python<'_>,
        prompt: &Bound<'_, PyAny>,
        max_tokens: usize,
        temperature: f32,
        top_k: usize,
        top_p: f32,
        seed: u64,
        stop: Option<&Bound<'_, PyAny>>,
        decoder_ids: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Generation> {
        let args = GenerateArgs {
            max_tokens,
            temperature,
            top_k,
            top_p,
            seed,
            stop,
            decoder_ids,
        };
        self.request(py, prompt, args, true)
    }

    /// `generate`, yielding the token ids (ints) as they are chosen; works
    /// without a tokenizer (`kiln run --generate`, `kiln generate --tokens`).
    /// A str in `stop` ends generation after the token completing it.
    #[pyo3(signature = (
        prompt,
        max_tokens = 32,
        temperature = 0.0,
        top_k = 0,
        top_p = 1.0,
        seed = 0,
        stop = None,
        decoder_ids = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn generate_ids(
        &self,
        py: Python<'_>,
        prompt: &Bound<'_, PyAny>,
        max_tokens: usize,
        temperature: f32,
        top_k: usize,
        top_p: f32,
        seed: u64,
        stop: Option<&Bound<'_, PyAny>>,
        decoder_ids: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Generation> {
        let args = GenerateArgs {
            max_tokens,
            temperature,
            top_k,
            top_p,
            seed,
            stop,
            decoder_ids,
        };
        self.request(py, prompt, args, false)
    }

    /// Sentence embeddings (the model's pooling, e.g. sentence-transformers'
    /// mean + L2 normalisation), as `kiln embed` computes them: a float32
    /// matrix `[len(sentences), dim]`, or a vector `[dim]` for one str.
    fn embed<'py>(
        &self,
        py: Python<'py>,
        sentences: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let single = sentences.is_instance_of::<PyString>();
        let texts: Vec<String> = if single {
            vec![sentences.extract()?]
        } else {
            sentences
                .extract()
                .map_err(|_| PyTypeError::new_err("embed takes a str or a sequence of strs"))?
        };
        let fail = |f: Failure| f.into_pyerr(py);
        if texts.is_empty() {
            return Err(fail(Failure::value("embed: give at least one sentence")));
        }
        let loaded = &self.loaded;
        let emb = py
            .detach(|| loaded.embed(&texts))
            .map_err(|e| fail(Failure::kiln(e.to_string())))?;
        if let Some(v) = emb.as_f32() {
            self.check_finite(py, "embedding values", v)?;
        }
        let d = *emb.shape().last().unwrap_or(&1);
        let shape = if single {
            vec![d]
        } else {
            vec![texts.len(), d]
        };
        to_numpy(py, emb, &shape)
    }

    /// Text to token ids with the model's tokenizer (special tokens as the
    /// tokenizer adds them: what `kiln generate --prompt` feeds the model).
    fn tokenize(&self, py: Python<'_>, text: &str) -> PyResult<Vec<i32>> {
        let tok = self.tokenizer("tokenize").map_err(|f| f.into_pyerr(py))?;
        let ids = py
            .detach(|| tok.encode(text))
            .map_err(|e| Failure::from(e).into_pyerr(py))?;
        Ok(ids.into_iter().map(|t| t as i32).collect())
    }

    /// Token ids to text (special tokens skipped).
    fn detokenize(&self, py: Python<'_>, ids: &Bound<'_, PyAny>) -> PyResult<String> {
        let tok = self.tokenizer("detokenize").map_err(|f| f.into_pyerr(py))?;
        let ids = ids_arg(ids, "ids")?;
        let vocab = tok.vocab_size().max(self.spec().vocab_size);
        if let Some(t) = ids.iter().find(|&&t| t < 0 || t as usize >= vocab) {
            return Err(Failure::value(format!(
                "ids: token id {t} is outside the vocabulary (0..{vocab})"
            ))
            .into_pyerr(py));
        }
        let ids: Vec<u32> = ids.into_iter().map(|t| t as u32).collect();
        py.detach(|| tok.decode(&ids))
            .map_err(|e| Failure::from(e).into_pyerr(py))
    }

    /// The cost table, as `kiln check SOURCE --format json [--seq-len N]
    /// [--batch B]` prints it: `parameters`, `parameters_by_component`,
    /// `flops_per_token`, `kv_cache_bytes_per_token`,
    /// `peak_activation_bytes`, the weight bytes per precision, `name` and
    /// the resolved `spec`.
    #[pyo3(signature = (seq_len=None, batch=1))]
    fn cost<'py>(
        &self,
        py: Python<'py>,
        seq_len: Option<usize>,
        batch: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let spec = &self.loaded.spec;
        let json = py
            .detach(|| crate::cost::check_json(spec, seq_len, batch))
            .map_err(|f| f.into_pyerr(py))?;
        crate::cost::to_python(py, &json)
    }

    /// The resolved spec as TOML (what `kiln check` prints first).
    fn spec_text(&self) -> String {
        self.loaded.spec.to_toml()
    }

    /// The spec's name.
    #[getter]
    fn name(&self) -> String {
        self.spec().name.clone()
    }

    /// `"decoder"`, `"encoder"` or `"encoder-decoder"`.
    #[getter]
    fn architecture(&self) -> &'static str {
        match self.spec().architecture {
            Architecture::Encoder => "encoder",
            Architecture::Decoder => "decoder",
            Architecture::EncoderDecoder => "encoder-decoder",
        }
    }

    /// Token ids must be below this; the width of a row of logits.
    #[getter]
    fn vocab_size(&self) -> usize {
        self.spec().vocab_size
    }

    /// The longest sequence the model takes.
    #[getter]
    fn max_positions(&self) -> usize {
        self.spec().max_positions
    }

    /// Width of the hidden states.
    #[getter]
    fn d_model(&self) -> usize {
        self.spec().d_model
    }

    /// Width of `embed`'s vectors, or None without a sentence-embedding head.
    #[getter]
    fn embedding_dim(&self) -> Option<usize> {
        (self.spec().head.kind == HeadKind::MeanPool && self.loaded.model.lowered.encoder.is_some())
            .then_some(self.spec().d_model)
    }

    /// The backend running the model (`jit`, `reference`, `kernel-ir`, `wgpu`).
    #[getter]
    fn backend(&self) -> &'static str {
        self.backend
    }

    /// How the weights are stored (`stored`, `f32`, `int8`, `bf16`, `f16`).
    #[getter]
    fn precision(&self) -> String {
        self.loaded.model.precision().to_string()
    }

    /// What `open` was given.
    #[getter]
    fn source(&self) -> String {
        self.source.display().to_string()
    }

    /// Where the weights came from: a path, or `random (seed N)`.
    #[getter]
    fn weights_origin(&self) -> String {
        self.loaded.weights_origin.clone()
    }

    /// Whether the model carries a tokenizer (HF folder, GGUF file).
    #[getter]
    fn has_tokenizer(&self) -> bool {
        self.loaded.tokenizer.is_some()
    }

    /// The tokenizer's end-of-sequence ids (generation stops at them).
    #[getter]
    fn eos_token_ids(&self) -> Vec<u32> {
        (self.loaded.tokenizer.as_ref()).map_or_else(Vec::new, |t| t.eos.clone())
    }

    /// The tokenizer's beginning-of-sequence id, if it has one.
    #[getter]
    fn bos_token_id(&self) -> Option<u32> {
        self.loaded.tokenizer.as_ref().and_then(|t| t.bos)
    }

    /// Warnings from opening the model (NaN or infinite weights).
    #[getter]
    fn warnings<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(py, &self.loaded.warnings)
    }

    fn __repr__(&self) -> String {
        let s = self.spec();
        format!(
            "<kiln.Model {:?} {}: vocab {}, d_model {}, {} layers; {} backend, {} weights from {}>",
            s.name,
            self.architecture(),
            s.vocab_size,
            s.d_model,
            s.layers,
            self.backend,
            self.loaded.model.precision(),
            self.loaded.weights_origin
        )
    }
}
