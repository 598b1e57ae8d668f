//! `kiln._kiln`, the native half of the `kiln` Python package (the pure
//! Python `kiln/__init__.py` re-exports it; `_kiln.pyi` types it).
//!
//! - [`compile`] runs the pipeline of `kiln compile` and gives its texts
//!   ([`Compiled`]), exactly the Rust API's `kiln::compile_str` /
//!   `kiln::compile_file`.
//! - [`open`] opens a spec (seeded random weights), a Hugging Face folder or
//!   a GGUF file as a [`model::Model`]: forward passes into numpy arrays,
//!   streamed generation ([`generate::Generation`]), embeddings, the
//!   tokenizer and the cost table.
//!
//! The GIL is released while kiln compiles or computes, so Python threads
//! run meanwhile and several threads may use one model at once. Failures
//! raise `kiln.KilnError` (`kiln.SpecError` for an invalid spec) with the
//! text the `kiln` command prints.

mod cost;
mod errors;
mod generate;
mod model;

use errors::Failure;
use pyo3::prelude::*;
use pyo3::types::PyString;
use std::path::PathBuf;

/// A spec compiled down to kernels, with the stable text form of each stage.
#[pyclass(frozen, module = "kiln", name = "Compiled")]
pub struct Compiled {
    inner: kiln::Compiled,
}

#[pymethods]
impl Compiled {
    /// The resolved spec as TOML, every default written out (the first part
    /// of `kiln check`'s output).
    fn spec_text(&self) -> String {
        self.inner.spec_text()
    }

    /// The IR graphs after the passes: what `kiln compile SPEC --emit ir` prints.
    fn ir_text(&self) -> String {
        self.inner.ir_text()
    }

    /// The fused kernel programs: what `kiln compile SPEC --emit kernels` prints.
    fn kernels_text(&self) -> String {
        self.inner.kernels_text()
    }

    /// The IR graphs as Graphviz DOT (`kiln compile SPEC --emit dot`).
    fn dot_text(&self) -> String {
        self.inner.dot_text()
    }

    /// The spec's name.
    #[getter]
    fn name(&self) -> String {
        self.inner.spec().spec.name.clone()
    }

    /// The names of the IR graphs (`NAME.encoder`, `NAME.decoder`).
    #[getter]
    fn graphs(&self) -> Vec<String> {
        self.inner.graphs().map(|g| g.name.clone()).collect()
    }

    /// The cost table, as `kiln check --format json` prints it.
    #[pyo3(signature = (seq_len=None, batch=1))]
    fn cost<'py>(
        &self,
        py: Python<'py>,
        seq_len: Option<usize>,
        batch: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let spec = self.inner.spec();
        let json = py
            .detach(|| cost::check_json(spec, seq_len, batch))
            .map_err(|f| f.into_pyerr(py))?;
        cost::to_python(py, &json)
    }

    fn __repr__(&self) -> String {
        let names: Vec<String> = self.inner.graphs().map(|g| g.name.clone()).collect();
        format!(
            "<kiln.Compiled {:?}: {}>",
            self.inner.spec().spec.name,
            names.join(", ")
        )
    }
}

/// Compile a spec: TOML text, or the path of a `.toml` spec, a Hugging
/// Face folder (or its config.json) or a `.gguf` file (only the spec is
/// read). A `str` is a path when a file or folder of that name exists, or
/// when it is one line without `=` (so a mistyped path says it is missing);
/// anything else is TOML text, named `<string>` in errors.
#[pyfunction]
#[pyo3(signature = (source, opt_level=1, disable_passes=None))]
fn compile(
    py: Python<'_>,
    source: &Bound<'_, PyAny>,
    opt_level: u8,
    disable_passes: Option<Vec<String>>,
) -> PyResult<Compiled> {
    enum Input {
        Toml(String),
        File(PathBuf),
    }
    let input = match source.cast::<PyString>() {
        Ok(s) => {
            let s: String = s.extract()?;
            let path = PathBuf::from(&s);
            let one_line = !s.contains('\n') && !s.contains('=') && !s.trim().is_empty();
            if path.exists() || one_line {
                Input::File(path)
            } else {
                Input::Toml(s)
            }
        }
        Err(_) => Input::File(source.extract::<PathBuf>().map_err(|_| {
            pyo3::exceptions::PyTypeError::new_err(format!(
                "compile() takes TOML text (str) or a path (str or os.PathLike), not {}",
                source
                    .get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            ))
        })?),
    };
    let opts = kiln::Options {
        opt_level,
        disabled_passes: disable_passes.unwrap_or_default(),
    };
    let compiled = py.detach(|| match &input {
        Input::Toml(t) => kiln::compile_str_with(t, &opts),
        Input::File(p) => kiln::compile_file_with(p, &opts),
    });
    compiled
        .map(|inner| Compiled { inner })
        .map_err(|e| Failure::from(e).into_pyerr(py))
}

#[pymodule]
#[pyo3(name = "_kiln")]
fn kiln_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("KilnError", py.get_type::<errors::KilnError>())?;
    m.add("SpecError", py.get_type::<errors::SpecError>())?;
    m.add_class::<Compiled>()?;
    m.add_class::<model::Model>()?;
    m.add_class::<generate::Generation>()?;
    m.add_function(wrap_pyfunction!(compile, m)?)?;
    m.add_function(wrap_pyfunction!(model::open, m)?)?;
    m.add_function(wrap_pyfunction!(model::backends, m)?)?;
    Ok(())
}
