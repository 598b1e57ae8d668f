//! Spec front end: TOML text → resolved [`Spec`] with one [`LayerSpec`] per block.
//!
//! Resolution order: parse each file of the `extends` chain into a tree that
//! remembers every key's file, line and column; deep-merge the chain (derived
//! over base); deserialise; validate cross-field rules; fill every derivable
//! default; then expand `[[layer]]` overrides. Every error — syntax, unknown
//! key, wrong type, bad value, broken rule — names the file and position of
//! the key at fault and says how to fix it ([`SpecError`]).

mod de;
mod error;
mod node;
mod schema;
mod selector;
mod source;
mod validate;

pub use error::{Snippet, SpecError};
pub use schema::*;
pub use source::{MAX_SPEC_BYTES, read_text_file, shipped_names, shipped_spec};
pub use validate::{MAX_LAYERS, MAX_PARAMETERS, MAX_SIZE};

use std::path::Path;

/// A spec with `extends` merged, defaults filled and per-layer knobs expanded.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedSpec {
    /// The merged spec with every defaulted `Option` filled in.
    pub spec: Spec,
    /// The blocks of the only stack, or of the encoder of an encoder-decoder model.
    pub layers: Vec<LayerSpec>,
    /// The decoder blocks of an encoder-decoder model; empty otherwise.
    pub decoder: Vec<LayerSpec>,
}

/// Load and resolve a spec file.
///
/// `path` is kept as given in errors (never canonicalised); a relative
/// `extends` is resolved against its directory.
pub fn load(path: impl AsRef<Path>) -> Result<ResolvedSpec, SpecError> {
    let path = path.as_ref();
    let src = read_text_file(path, MAX_SPEC_BYTES).map_err(|e| SpecError {
        file: path.to_path_buf(),
        message: format!("cannot read spec: {e}"),
        help: Some(
            "check the path; shipped specs live in models/ (or name one with `extends`)".into(),
        ),
        ..SpecError::default()
    })?;
    load_str(&src, path)
}

/// Resolve spec text; `path` names it in errors and anchors relative `extends`.
pub fn load_str(src: &str, path: &Path) -> Result<ResolvedSpec, SpecError> {
    let mut files = source::Files::default();
    build(source::load_tree(&mut files, src, path)).map_err(|e| e.into_spec_error(&files))
}

/// Resolve a spec given as a TOML value built in memory (a GGUF file's
/// metadata, say) exactly as a file would be: unknown keys rejected,
/// defaults filled, cross-field rules checked. Errors name the key and
/// `origin` (there is no text, so no line and column). The table must be
/// whole: `extends` has no file to be resolved against.
pub fn load_table(table: &toml::Table, origin: &Path) -> Result<ResolvedSpec, SpecError> {
    let tree = node::Node::from_value(&toml::Value::Table(table.clone()));
    let to_error = |e: error::Located| SpecError {
        file: origin.to_path_buf(),
        message: e.message,
        help: e.help,
        ..SpecError::default()
    };
    let spec: Spec = de::from_node(&tree, "", None).map_err(to_error)?;
    validate::resolve_tree(spec, &tree).map_err(to_error)
}

/// Load and resolve a shipped spec by name (`"gpt2"`), from the copy
/// embedded in the binary; errors name it `models/NAME.toml`.
pub fn load_shipped(name: &str) -> Result<ResolvedSpec, SpecError> {
    let mut files = source::Files::default();
    match source::load_shipped_tree(&mut files, name) {
        Some(tree) => build(tree).map_err(|e| e.into_spec_error(&files)),
        None => {
            let names: Vec<&str> = shipped_names().collect();
            let mut help = match error::did_you_mean(name, &names) {
                Some(s) => format!("did you mean \"{s}\"? "),
                None => String::new(),
            };
            help.push_str(&format!("shipped models are {}", error::list_code(&names)));
            Err(SpecError {
                file: source::shipped_path(name),
                message: format!("unknown model \"{name}\""),
                help: Some(help),
                ..SpecError::default()
            })
        }
    }
}

fn build(tree: Result<node::Node, error::Located>) -> Result<ResolvedSpec, error::Located> {
    let tree = tree?;
    let spec: Spec = de::from_node(&tree, "", None)?;
    validate::resolve_tree(spec, &tree)
}

/// Validate a spec built in memory, fill derivable defaults and expand
/// per-layer overrides. `extends` cannot be followed here (there is no file
/// to resolve it against): use [`load`] for specs that extend another.
pub fn resolve(spec: Spec) -> Result<ResolvedSpec, SpecError> {
    if let Some(base) = &spec.extends {
        return Err(SpecError {
            message: format!("cannot resolve `extends = \"{base}\"` without a file"),
            help: Some("load the spec with `load`".into()),
            ..SpecError::default()
        });
    }
    let value = toml::Value::try_from(&spec).map_err(|e| SpecError {
        message: e.to_string(),
        ..SpecError::default()
    })?;
    let tree = node::Node::from_value(&value);
    validate::resolve_tree(spec, &tree).map_err(|e| SpecError {
        message: e.message,
        help: e.help,
        ..SpecError::default()
    })
}

impl ResolvedSpec {
    /// The resolved spec as TOML, every derived default written out
    /// (what `kiln check` prints). Per-layer overrides appear as written.
    pub fn to_toml(&self) -> String {
        self.spec.to_toml()
    }
}

/// Merge `src` into `dst`: tables recursively, everything else replaced.
pub fn deep_merge(dst: &mut toml::Table, src: &toml::Table) {
    for (k, v) in src {
        match (dst.get_mut(k), v) {
            (Some(toml::Value::Table(d)), toml::Value::Table(s)) => deep_merge(d, s),
            _ => {
                dst.insert(k.clone(), v.clone());
            }
        }
    }
}

/// Does `sel` pick layer `i` of `n`? Errors on malformed selector text.
pub fn selector_matches(sel: &Selector, i: usize, n: usize) -> Result<bool, String> {
    selector::Sel::parse(sel)
        .map(|s| s.matches(i, n))
        .map_err(|(msg, help)| format!("{msg} (help: {help})"))
}

#[cfg(test)]
mod tests;
