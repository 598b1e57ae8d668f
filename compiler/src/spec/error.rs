//! [`SpecError`], the user-facing error, and [`Located`], its in-flight form.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use miette::{Diagnostic, LabeledSpan, NamedSource, SourceCode};

use super::node::Loc;
use super::source::Files;

/// A spec error: which file, where in it, what is wrong and how to fix it.
///
/// [`SpecError::render`] gives stable one-line text (what tests compare);
/// the [`miette::Diagnostic`] impl gives the CLI a report with the offending
/// line of source underlined.
#[derive(Debug, Clone, PartialEq, Default, thiserror::Error)]
#[error("{message}")]
pub struct SpecError {
    /// The spec file the error is in.
    pub file: PathBuf,
    /// 1-based line and column of the offending key or value, when known.
    pub line: Option<usize>,
    /// See `line`.
    pub column: Option<usize>,
    /// What is wrong.
    pub message: String,
    /// A suggestion for fixing it (valid values, the nearest known key, ...).
    pub help: Option<String>,
    /// The text of `file` and the offending byte span, for miette reports.
    pub snippet: Option<Box<Snippet>>,
}

/// Source text plus the byte span an error points at.
#[derive(Clone, PartialEq)]
pub struct Snippet {
    source: NamedSource<Arc<str>>,
    span: (usize, usize),
}

impl fmt::Debug for Snippet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snippet")
            .field("name", &self.source.name())
            .field("span", &self.span)
            .finish()
    }
}

impl Snippet {
    /// The whole text of the file.
    pub fn text(&self) -> &str {
        self.source.inner()
    }
    /// Byte offset and length of the offending key or value.
    pub fn span(&self) -> (usize, usize) {
        self.span
    }
}

impl SpecError {
    /// The message with its help in parentheses, for errors about a spec
    /// built in memory (no file, line or column to name).
    pub fn summary(&self) -> String {
        match &self.help {
            Some(h) => format!("{} (help: {h})", self.message),
            None => self.message.clone(),
        }
    }

    /// `file:line:col: error: message` plus a `help:` line — stable text for tests.
    pub fn render(&self) -> String {
        let mut out = self.file.display().to_string();
        if let (Some(l), Some(c)) = (self.line, self.column) {
            out.push_str(&format!(":{l}:{c}"));
        }
        out.push_str(&format!(": error: {}", self.message));
        if let Some(h) = &self.help {
            out.push_str(&format!("\n  help: {h}"));
        }
        out
    }
}

impl Diagnostic for SpecError {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new("kiln::spec"))
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        self.snippet.as_ref().map(|s| &s.source as &dyn SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let s = self.snippet.as_ref()?;
        let label = LabeledSpan::new_primary_with_span(Some("here".into()), s.span);
        Some(Box::new(std::iter::once(label)))
    }
}

/// An error with a location inside one of the loaded files.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Located {
    pub loc: Option<Loc>,
    pub message: String,
    pub help: Option<String>,
}

impl Located {
    pub fn new(loc: Option<Loc>, message: impl Into<String>, help: Option<String>) -> Located {
        Located {
            loc,
            message: message.into(),
            help,
        }
    }

    /// Attach file, line and column; errors without a location name `files`' first file.
    pub fn into_spec_error(self, files: &Files) -> SpecError {
        let (file, text, span) = match &self.loc {
            Some(loc) => match files.get(loc.file) {
                Some(f) => (f.path.clone(), Some(f.text.clone()), Some(loc.span.clone())),
                None => (PathBuf::new(), None, None),
            },
            None => match files.get(0) {
                Some(f) => (f.path.clone(), None, None),
                None => (PathBuf::new(), None, None),
            },
        };
        let (mut line, mut column, mut snippet) = (None, None, None);
        if let (Some(text), Some(span)) = (text, span) {
            let start = span.start.min(text.len());
            let end = span.end.clamp(start, text.len());
            let (l, c) = line_col(&text, start);
            line = Some(l);
            column = Some(c);
            snippet = Some(Box::new(Snippet {
                source: NamedSource::new(file.display().to_string(), text),
                span: (start, end - start),
            }));
        }
        SpecError {
            file,
            line,
            column,
            message: self.message,
            help: self.help,
            snippet,
        }
    }
}

/// 1-based line and column (in characters) of byte `offset`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// The closest candidate to `word`, when close enough to be a plausible typo.
pub(crate) fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let norm = |s: &str| s.to_ascii_lowercase().replace('-', "_");
    let w = norm(word);
    candidates
        .iter()
        .map(|c| (strsim::osa_distance(&w, &norm(c)), *c))
        .filter(|(d, c)| {
            let len = w.chars().count().max(c.chars().count());
            *d <= (len / 3).max(1)
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
        .or_else(|| {
            candidates
                .iter()
                .map(|c| (strsim::jaro_winkler(&w, &norm(c)), *c))
                .filter(|(s, _)| *s >= 0.85)
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, c)| c)
        })
}

/// "`a`, `b` or `c`".
pub(crate) fn list_code(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("`{s}`")).collect();
    match quoted.as_slice() {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// `"a", "b" or "c"` — enum values as written in TOML.
pub(crate) fn list_values(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("\"{s}\"")).collect();
    match quoted.as_slice() {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_is_one_based_in_chars() {
        let t = "ab\ncdé\nxyz";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 3), (2, 1));
        assert_eq!(line_col(t, 7), (2, 4));
        assert_eq!(line_col(t, 8), (3, 1));
        assert_eq!(line_col(t, 9), (3, 2));
        assert_eq!(line_col(t, 999), (3, 4));
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("d_modle", &["d_model", "layers", "name"]),
            Some("d_model")
        );
        assert_eq!(
            did_you_mean("kv-heads", &["heads", "kv_heads"]),
            Some("kv_heads")
        );
        assert_eq!(
            did_you_mean("gelu_tanh", &["relu", "gelu", "gelu-tanh", "silu"]),
            Some("gelu-tanh")
        );
        assert_eq!(did_you_mean("xyzzy", &["heads", "kv_heads"]), None);
        assert_eq!(list_code(&["a", "b", "c"]), "`a`, `b` or `c`");
        assert_eq!(list_values(&["a", "b"]), "\"a\" or \"b\"");
    }
}
