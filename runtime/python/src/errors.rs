//! kiln's errors as Python exceptions: `kiln.KilnError` with the text the
//! `kiln` command prints, `kiln.SpecError` (a subclass) for an invalid spec,
//! carrying its file, line, column and help. A [`Failure`] is built where
//! kiln runs (without the GIL) and becomes an exception once it is held.

use kiln_compiler::spec::SpecError as RustSpecError;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;

pyo3::create_exception!(
    kiln,
    KilnError,
    PyException,
    "A kiln operation failed; the message is what the `kiln` command prints for it."
);
pyo3::create_exception!(
    kiln,
    SpecError,
    KilnError,
    "The spec is invalid. The message is `FILE:LINE:COL: error: ...` (and a `help:` line); \
     the attributes `file`, `line`, `column`, `detail` and `help` hold its parts."
);

/// A spec error's parts, for `kiln.SpecError`'s attributes.
#[derive(Debug)]
pub struct SpecInfo {
    /// The whole message, as the `kiln` command prints it.
    text: String,
    file: String,
    line: Option<usize>,
    column: Option<usize>,
    detail: String,
    help: Option<String>,
}

/// Why a call failed, without the GIL.
#[derive(Debug)]
pub enum Failure {
    /// An invalid spec, located.
    Spec(Box<SpecInfo>),
    /// Any other failure of kiln (a missing file, a limit, a backend's error).
    Kiln(String),
    /// An argument out of range (`ValueError`).
    Value(String),
}

impl Failure {
    pub fn kiln(text: impl Into<String>) -> Failure {
        Failure::Kiln(text.into())
    }

    pub fn value(text: impl Into<String>) -> Failure {
        Failure::Value(text.into())
    }

    fn spec(e: &RustSpecError, text: String) -> Failure {
        Failure::Spec(Box::new(SpecInfo {
            text,
            file: e.file.display().to_string(),
            line: e.line,
            column: e.column,
            detail: e.message.clone(),
            help: e.help.clone(),
        }))
    }

    /// The Python exception.
    pub fn into_pyerr(self, py: Python<'_>) -> PyErr {
        match self {
            Failure::Kiln(text) => KilnError::new_err(text),
            Failure::Value(text) => PyValueError::new_err(text),
            Failure::Spec(info) => {
                let SpecInfo {
                    text,
                    file,
                    line,
                    column,
                    detail,
                    help,
                } = *info;
                let err = SpecError::new_err(text);
                let value = err.value(py);
                let set = || -> PyResult<()> {
                    value.setattr("file", file)?;
                    value.setattr("line", line)?;
                    value.setattr("column", column)?;
                    value.setattr("detail", detail)?;
                    value.setattr("help", help)?;
                    Ok(())
                };
                match set() {
                    Ok(()) => err,
                    Err(e) => e,
                }
            }
        }
    }
}

impl From<kiln::Error> for Failure {
    fn from(e: kiln::Error) -> Self {
        let text = e.to_string();
        match e.spec_error() {
            Some(s) => Failure::spec(s, text),
            None => Failure::Kiln(text),
        }
    }
}

impl From<kiln_open::OpenError> for Failure {
    fn from(e: kiln_open::OpenError) -> Self {
        let text = e.to_string();
        match &e {
            kiln_open::OpenError::Spec(s) => Failure::spec(s, text),
            _ => Failure::Kiln(text),
        }
    }
}

impl From<kiln_runtime::RuntimeError> for Failure {
    fn from(e: kiln_runtime::RuntimeError) -> Self {
        Failure::Kiln(e.to_string())
    }
}

impl From<kiln_open::tokenizer::TokenizerError> for Failure {
    fn from(e: kiln_open::tokenizer::TokenizerError) -> Self {
        Failure::Kiln(e.to_string())
    }
}

impl From<kiln_compiler::passes::PassError> for Failure {
    fn from(e: kiln_compiler::passes::PassError) -> Self {
        Failure::Kiln(e.to_string())
    }
}

impl From<kiln_compiler::ir::IrError> for Failure {
    fn from(e: kiln_compiler::ir::IrError) -> Self {
        Failure::Kiln(e.to_string())
    }
}
