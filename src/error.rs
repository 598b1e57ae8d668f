//! [`Error`]: why a spec could not be compiled, rendered the way the `kiln`
//! command prints it.

use kiln_compiler::compile::CompileError;
use kiln_compiler::ir::IrError;
use kiln_compiler::spec::SpecError;
use kiln_open::source::OpenError;
use miette::{Diagnostic, LabeledSpan, SourceCode};
use std::fmt;

/// Why a spec could not be compiled.
///
/// `Display` is the text the `kiln` command prints for the same problem:
/// for a spec error `FILE:LINE:COL: error: MESSAGE` and a `help:` line
/// saying how to fix it. `Debug` prints the same text, so a test or `main`
/// that returns `Result<_, kiln::Error>` shows a readable diagnostic. The
/// [`miette::Diagnostic`] impl adds the offending source span, so
/// `miette::Report::new(err)` underlines the key at fault.
///
/// ```
/// let err = kiln::compile_str("extends = \"gpt2\"\n[attention]\nkv_head = 4").unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     "<string>:3:1: error: unknown key `kv_head` in [attention]\n  help: did you mean `kv_heads`?"
/// );
/// let spec = err.spec_error().expect("a spec error");
/// assert_eq!((spec.line, spec.column), (Some(3), Some(1)));
/// ```
#[non_exhaustive]
pub enum Error {
    /// The spec is invalid: TOML syntax, an unknown key, a wrong type or
    /// value, a broken cross-field rule, a missing `extends` base. Carries
    /// the file, line, column and a fix.
    Spec(Box<SpecError>),
    /// The model source could not be read or understood: a missing file, a
    /// HF `config.json` kiln cannot import, a bad GGUF header.
    Source(Box<OpenError>),
    /// Lowering a valid spec failed: a bug in kiln (the message names the
    /// node's scope).
    Lower {
        /// The spec file (or [`crate::STRING_SOURCE`]) being compiled.
        origin: String,
        /// The IR's error.
        source: Box<IrError>,
    },
    /// The compiler's passes or fusion failed. An unknown pass name
    /// ([`CompileError::UnknownPass`]) is the caller's mistake; anything
    /// else is a bug in kiln or a combination it does not support yet.
    Compile {
        /// The spec file (or [`crate::STRING_SOURCE`]) being compiled.
        origin: String,
        /// The compiler's error.
        source: Box<CompileError>,
    },
}

/// The stage of the pipeline an error comes from ([`Error::stage`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stage {
    /// Resolved spec → IR graphs.
    Lower,
    /// The graph passes (or their configuration: an unknown pass name).
    Passes,
    /// IR graph → fused kernel program.
    Fuse,
}

impl Error {
    /// The structured spec error (file, line, column, message, help), when
    /// the spec itself is at fault.
    ///
    /// ```
    /// let err = kiln::compile_str("layers = 0").unwrap_err();
    /// assert!(err.spec_error().is_some());
    /// ```
    pub fn spec_error(&self) -> Option<&SpecError> {
        match self {
            Error::Spec(e) => Some(e),
            Error::Source(e) => match e.as_ref() {
                OpenError::Spec(e) => Some(e),
                _ => None,
            },
            Error::Lower { .. } | Error::Compile { .. } => None,
        }
    }

    /// The compiler stage that failed (`None` for spec and source errors).
    pub fn stage(&self) -> Option<Stage> {
        match self {
            Error::Lower { .. } => Some(Stage::Lower),
            Error::Compile { source, .. } if matches!(**source, CompileError::Fuse(_)) => {
                Some(Stage::Fuse)
            }
            Error::Compile { .. } => Some(Stage::Passes),
            Error::Spec(_) | Error::Source(_) => None,
        }
    }

    pub(crate) fn compile(origin: &std::path::Path, source: CompileError) -> Error {
        Error::Compile {
            origin: origin.display().to_string(),
            source: Box::new(source),
        }
    }
}

impl From<OpenError> for Error {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::Spec(s) => Error::Spec(s),
            other => Error::Source(Box::new(other)),
        }
    }
}

impl From<SpecError> for Error {
    fn from(e: SpecError) -> Self {
        Error::Spec(Box::new(e))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Spec(e) => f.write_str(&e.render()),
            Error::Source(e) => write!(f, "{e}"),
            Error::Lower { origin, source } => {
                write!(f, "{origin}: internal error while lowering: {source}")
            }
            Error::Compile { origin, source } => write!(f, "{origin}: {source}"),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Spec(e) => Some(e.as_ref()),
            Error::Source(e) => Some(e.as_ref()),
            Error::Lower { source, .. } => Some(source.as_ref()),
            Error::Compile { source, .. } => Some(source.as_ref()),
        }
    }
}

impl Diagnostic for Error {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        let code = match self.stage() {
            None if matches!(self, Error::Spec(_)) => "kiln::spec",
            None => "kiln::source",
            Some(Stage::Lower) => "kiln::lower",
            Some(Stage::Passes) => "kiln::passes",
            Some(Stage::Fuse) => "kiln::fuse",
        };
        Some(Box::new(code))
    }

    // The fix is already part of the message (as the `kiln` command prints
    // it), so no separate `help`.

    fn source_code(&self) -> Option<&dyn SourceCode> {
        self.spec_error()?.source_code()
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        self.spec_error()?.labels()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn miette_report_underlines_the_key_at_fault() {
        let err =
            crate::compile_str("name = \"x\"\nextends = \"gpt2\"\nlayer_count = 3").unwrap_err();
        let mut out = String::new();
        miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
            .render_report(&mut out, &err)
            .unwrap();
        assert!(out.contains("kiln::spec"), "{out}");
        assert!(out.contains("unknown key `layer_count`"), "{out}");
        assert!(out.contains("3 │ layer_count = 3"), "{out}");
        assert!(out.contains("here"), "{out}");
    }

    #[test]
    fn compile_errors_name_the_stage_and_origin() {
        let opts = crate::Options {
            disabled_passes: vec!["no-such-pass".into()],
            ..Default::default()
        };
        let err = crate::compile_str_with("extends = \"gpt2\"\nlayers = 1", &opts).unwrap_err();
        assert_eq!(err.stage(), Some(Stage::Passes));
        assert!(matches!(
            &err,
            Error::Compile { source, .. }
                if matches!(&**source, CompileError::UnknownPass { name } if name == "no-such-pass")
        ));
        let text = err.to_string();
        assert!(text.starts_with("<string>: "), "{text}");
        assert!(text.contains("no-such-pass"), "{text}");
        assert_eq!(format!("{err:?}"), text);
    }
}
