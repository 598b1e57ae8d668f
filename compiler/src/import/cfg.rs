//! Typed, path-aware reads of a `config.json` object.
//!
//! Every getter names the field (and the file) in its error, distinguishes an
//! absent key (→ the HF class default, recorded so the output can list it)
//! from an explicit `null` (→ only accepted where HF accepts `None`), and
//! rejects wrong JSON types instead of coercing them.

use serde_json::{Map, Value};
use std::path::Path;

use super::ImportError;

pub(crate) type Result<T> = std::result::Result<T, ImportError>;

/// A `config.json` object being read, plus what the import learned on the way.
pub(crate) struct Cfg<'a> {
    map: &'a Map<String, Value>,
    file: &'a Path,
    /// `(field, value)` for every field absent from the file whose HF class default was used.
    pub defaults: Vec<(String, String)>,
    /// Interpretation notes for the output header (Gemma's "gelu", inert fields, ...).
    pub notes: Vec<String>,
}

/// Short JSON rendering of a value for messages.
pub(crate) fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        let cut: String = s.chars().take(57).collect();
        format!("{cut}...")
    } else {
        s
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl<'a> Cfg<'a> {
    pub fn new(map: &'a Map<String, Value>, file: &'a Path) -> Self {
        Cfg {
            map,
            file,
            defaults: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn file(&self) -> &Path {
        self.file
    }

    /// An error about `field`.
    pub fn err(&self, field: &str, message: impl Into<String>) -> ImportError {
        ImportError::new(self.file, Some(field), message)
    }

    /// The raw value: `None` when absent.
    pub fn raw(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key)
    }

    /// The value unless absent or `null`.
    pub fn present(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub fn note(&mut self, s: impl Into<String>) {
        self.notes.push(s.into());
    }

    fn used_default(&mut self, key: &str, shown: String) {
        self.defaults.push((key.to_string(), shown));
    }

    // ---- conversions (with the field name for errors) ----

    pub fn as_usize(&self, field: &str, v: &Value) -> Result<usize> {
        match v.as_u64().and_then(|u| usize::try_from(u).ok()) {
            Some(u) => Ok(u),
            None => Err(self.err(
                field,
                format!("must be a non-negative integer, found {}", show(v)),
            )),
        }
    }

    pub fn as_f64(&self, field: &str, v: &Value) -> Result<f64> {
        match v.as_f64() {
            Some(x) if x.is_finite() => Ok(x),
            _ => Err(self.err(field, format!("must be a number, found {}", show(v)))),
        }
    }

    pub fn as_bool(&self, field: &str, v: &Value) -> Result<bool> {
        v.as_bool()
            .ok_or_else(|| self.err(field, format!("must be true or false, found {}", show(v))))
    }

    pub fn as_str(&self, field: &str, v: &'a Value) -> Result<&'a str> {
        v.as_str()
            .ok_or_else(|| self.err(field, format!("must be a string, found {}", show(v))))
    }

    pub fn as_object(&self, field: &str, v: &'a Value) -> Result<&'a Map<String, Value>> {
        v.as_object().ok_or_else(|| {
            self.err(
                field,
                format!("must be an object, found {} ({})", type_name(v), show(v)),
            )
        })
    }

    fn null_error(&self, key: &str, what: &str) -> ImportError {
        self.err(key, format!("is null; it must be {what}"))
    }

    // ---- top-level getters ----

    /// Nullable integer field: absent or `null` → `None`.
    pub fn usize_opt(&self, key: &str) -> Result<Option<usize>> {
        self.present(key).map(|v| self.as_usize(key, v)).transpose()
    }

    /// Float field: absent → `default` (recorded); `null` → error.
    pub fn f64_or(&mut self, key: &str, default: f64) -> Result<f64> {
        match self.raw(key) {
            None => {
                self.used_default(key, fmt_f64(default));
                Ok(default)
            }
            Some(Value::Null) => Err(self.null_error(key, "a number")),
            Some(v) => self.as_f64(key, v),
        }
    }

    /// Nullable float field without a default (absent or `null` → `None`).
    pub fn f64_opt(&self, key: &str) -> Result<Option<f64>> {
        self.present(key).map(|v| self.as_f64(key, v)).transpose()
    }
}

/// A float for messages (`1e-5`, `10000.0`): Rust's shortest round-tripping form.
pub(crate) fn fmt_f64(x: f64) -> String {
    format!("{x:?}")
}
