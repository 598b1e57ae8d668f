//! A spec from another format's metadata (GGUF), through a family file.
//!
//! A family file's `[gguf.config]` table says how the metadata of a file of
//! its architecture becomes the `config.json` fields the family already reads:
//! each entry is a config field, set from a metadata key (a plain string,
//! looked up under the architecture's prefix first: `"embedding_length"` reads
//! `llama.embedding_length`; the key must be present unless it ends in `?`),
//! an expression (`"=…"`, calling `meta(key)` — null when absent —,
//! `has_tensor(name)`, `shape(name)` and the pure functions of family
//! expressions) or a literal. A null value leaves the field out, so the HF
//! class default applies. The `model_type` may be an expression too (a
//! Mixtral GGUF says `llama` and has `expert_count`). The config is then imported like a `config.json`:
//! the same fields, defaults, rejects and spec template — one definition of
//! the family for both formats.

use std::collections::BTreeMap;
use std::path::Path;

use super::family::expr::{self, Env, Val};
use super::{Family, ImportError, ImportOptions, Imported, generic, import_config};

/// A `config.json` object.
pub type Config = serde_json::Map<String, serde_json::Value>;

/// What a file offers `[gguf.config]` expressions.
pub trait Metadata {
    /// The value of a metadata key, as JSON (`None` when absent).
    fn value(&self, key: &str) -> Option<serde_json::Value>;
    /// A tensor's shape, outermost first (`None` when absent).
    fn shape(&self, tensor: &str) -> Option<Vec<usize>>;
}

/// How a file's metadata maps onto one family's config.
#[derive(Debug, Clone, PartialEq)]
pub struct MetadataMap {
    /// The `model_type` whose `[fields]` and `[spec]` read the config, or an
    /// `=` expression choosing it.
    pub model_type: String,
    /// The metadata key prefix (`general.architecture`, e.g. `llama`).
    pub prefix: String,
    /// `[gguf.config]`: config field → metadata key, expression or literal.
    pub config: toml::Table,
}

struct MetaEnv<'m> {
    meta: &'m dyn Metadata,
    prefix: &'m str,
    locals: Vec<(String, Val)>,
}

impl MetaEnv<'_> {
    fn lookup(&self, key: &str) -> Option<serde_json::Value> {
        self.meta
            .value(&format!("{}.{key}", self.prefix))
            .or_else(|| self.meta.value(key))
    }
}

impl Env for MetaEnv<'_> {
    type Error = String;

    fn name(&mut self, name: &str) -> Result<Val, String> {
        match self.locals.iter().rev().find(|(n, _)| n == name) {
            Some((_, v)) => Ok(v.clone()),
            None => Err(format!(
                "unknown name `{name}` (metadata is read with meta('{name}'))"
            )),
        }
    }

    fn call(&mut self, f: &str, args: Vec<Val>) -> Result<Val, String> {
        Ok(match (f, args.as_slice()) {
            ("meta", [Val::Str(k)]) => self.lookup(k).map_or(Val::Null, |v| Val::from_json(&v)),
            ("has_tensor", [Val::Str(n)]) => Val::Bool(self.meta.shape(n).is_some()),
            ("shape", [Val::Str(n)]) => self.meta.shape(n).map_or(Val::Null, |s| {
                Val::List(
                    s.into_iter()
                        .map(|d| Val::Int(i64::try_from(d).unwrap_or(i64::MAX)))
                        .collect(),
                )
            }),
            _ => match generic::pure_call(f, &args) {
                Some(r) => r?,
                None => {
                    let shown: Vec<&str> = args.iter().map(Val::type_name).collect();
                    return Err(format!("`{f}` cannot take ({})", shown.join(", ")));
                }
            },
        })
    }

    fn fail(&mut self, message: String) -> String {
        message
    }

    fn push_local(&mut self, name: &str, v: Val) {
        self.locals.push((name.to_string(), v));
    }

    fn pop_local(&mut self) {
        self.locals.pop();
    }
}

fn to_json(v: &Val) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Val::Null => J::Null,
        Val::Bool(b) => J::Bool(*b),
        Val::Int(i) => J::from(*i),
        Val::Float(x) => serde_json::Number::from_f64(*x).map_or(J::Null, J::Number),
        Val::Str(s) => J::String(s.clone()),
        Val::List(l) => J::Array(l.iter().map(to_json).collect()),
        Val::Table(t) => J::Object(t.iter().map(|(k, v)| (k.clone(), to_json(v))).collect()),
    }
}

/// The `config.json` object `map` derives from `meta`, and for each field
/// where it came from (for messages).
pub fn config_from_metadata(
    fam: &Family,
    map: &MetadataMap,
    meta: &dyn Metadata,
    path: &Path,
) -> Result<(Config, BTreeMap<String, String>), ImportError> {
    let mut env = MetaEnv {
        meta,
        prefix: &map.prefix,
        locals: Vec::new(),
    };
    let family_error = |field: &str, m: String| {
        ImportError::new(
            &fam.origin,
            None,
            format!("family file: `[gguf.config] {field}`: {m}"),
        )
    };
    let mut out = serde_json::Map::new();
    let mut sources = BTreeMap::new();
    let model_type = match map.model_type.strip_prefix('=') {
        None => Val::Str(map.model_type.clone()),
        Some(src) => {
            let e = expr::parse(src).map_err(|m| family_error("model_type", m))?;
            expr::eval(&e, &mut env).map_err(|m| family_error("model_type", m))?
        }
    };
    out.insert("model_type".into(), to_json(&model_type));
    for (field, spec) in &map.config {
        let (v, source) = match spec {
            toml::Value::String(s) if s.starts_with('=') => {
                let e = expr::parse(&s[1..]).map_err(|m| family_error(field, m))?;
                let v = expr::eval(&e, &mut env).map_err(|m| family_error(field, m))?;
                (v, format!("`{s}`"))
            }
            toml::Value::String(key) => {
                let (key, optional) = match key.strip_suffix('?') {
                    Some(k) => (k, true),
                    None => (key.as_str(), false),
                };
                let v = match env.lookup(key) {
                    Some(v) => Val::from_json(&v),
                    None if optional => Val::Null,
                    None => {
                        return Err(ImportError::new(
                            path,
                            None,
                            format!(
                                "missing metadata key `{}.{key}` (the family file {} reads `{field}` from it)",
                                map.prefix,
                                fam.origin.display()
                            ),
                        ));
                    }
                };
                (v, format!("`{}.{key}`", map.prefix))
            }
            lit => (Val::from_toml(lit), "a constant".to_string()),
        };
        if v != Val::Null {
            out.insert(field.clone(), to_json(&v));
            sources.insert(field.clone(), source);
        }
    }
    Ok((out, sources))
}

/// Import the spec a file's metadata describes: [`config_from_metadata`],
/// then the family's config import. `path` (the file) names errors; an error
/// at a config field says which metadata it was read from.
pub fn import_metadata(
    fam: &Family,
    map: &MetadataMap,
    meta: &dyn Metadata,
    path: &Path,
    opts: &ImportOptions,
) -> Result<Imported, ImportError> {
    let (config, sources) = config_from_metadata(fam, map, meta, path)?;
    let text = serde_json::Value::Object(config).to_string();
    import_config(&text, path, opts).map_err(|mut e| {
        if let Some(src) = e.field.as_ref().and_then(|f| sources.get(f)) {
            e.message += &format!(
                " (the config field kiln read from {src} of the GGUF metadata, by the [gguf.config] of {})",
                fam.origin.display()
            );
        } else if e.field.is_some() {
            e.message += &format!(
                " (a config field the GGUF metadata leaves to its default; {} [gguf.config] maps the metadata)",
                fam.origin.display()
            );
        }
        e
    })
}
