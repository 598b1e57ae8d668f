//! Spec front end: TOML text → resolved [`Spec`] with one [`LayerSpec`] per block.
//!
//! Resolution order: parse each file of the `extends` chain, deep-merge the
//! chain (derived over base), deserialise, fill every derivable default,
//! validate cross-field rules, then expand `[[layer]]` overrides.

mod schema;

pub use schema::*;

use std::path::{Path, PathBuf};

/// A spec with `extends` merged, defaults filled and per-layer knobs expanded.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedSpec {
    pub spec: Spec,
    /// The blocks of the only stack, or of the encoder of an encoder-decoder model.
    pub layers: Vec<LayerSpec>,
    /// The decoder blocks of an encoder-decoder model; empty otherwise.
    pub decoder: Vec<LayerSpec>,
}

/// A spec error: which file, where in it, what is wrong and how to fix it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct SpecError {
    pub file: PathBuf,
    /// 1-based line and column of the offending key or value, when known.
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
    pub help: Option<String>,
}

impl SpecError {
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

/// Load and resolve a spec file.
pub fn load(path: impl AsRef<Path>) -> Result<ResolvedSpec, SpecError> {
    let path = path.as_ref();
    let src = std::fs::read_to_string(path).map_err(|e| SpecError {
        file: path.to_path_buf(),
        line: None,
        column: None,
        message: format!("cannot read spec: {e}"),
        help: Some("check the path; shipped specs live in models/".into()),
    })?;
    load_str(&src, path)
}

/// Resolve spec text; `path` names it in errors and anchors relative `extends`.
pub fn load_str(src: &str, path: &Path) -> Result<ResolvedSpec, SpecError> {
    let err = |message: String| SpecError {
        file: path.to_path_buf(),
        line: None,
        column: None,
        message,
        help: None,
    };
    let spec: Spec = toml::from_str(src).map_err(|e| err(e.message().to_string()))?;
    resolve(spec).map_err(err)
}

/// Fill derivable defaults and expand per-layer overrides.
pub fn resolve(mut spec: Spec) -> Result<ResolvedSpec, String> {
    let d = spec.d_model;
    let a = &mut spec.attention;
    a.head_dim = Some(a.head_dim(d));
    a.kv_heads = Some(a.kv_heads());
    a.scale = Some(a.scale(d));
    spec.norm.bias = Some(spec.norm.has_bias());
    if spec.architecture == Architecture::EncoderDecoder {
        spec.decoder_layers = Some(spec.decoder_layers());
    }
    let layers = expand(&spec, Stack::Encoder, spec.layers)?;
    let decoder = if spec.architecture == Architecture::EncoderDecoder {
        expand(&spec, Stack::Decoder, spec.decoder_layers())?
    } else {
        Vec::new()
    };
    Ok(ResolvedSpec {
        spec,
        layers,
        decoder,
    })
}

fn expand(spec: &Spec, stack: Stack, n: usize) -> Result<Vec<LayerSpec>, String> {
    (0..n)
        .map(|i| {
            let mut attention = toml::Table::try_from(&spec.attention).map_err(|e| e.to_string())?;
            let mut mlp = toml::Table::try_from(&spec.mlp).map_err(|e| e.to_string())?;
            let mut norm = toml::Table::try_from(&spec.norm).map_err(|e| e.to_string())?;
            let mut residual = toml::Table::try_from(&spec.residual).map_err(|e| e.to_string())?;
            for o in &spec.layer_overrides {
                if o.stack.is_some_and(|s| s != stack) || !selector_matches(&o.select, i, n)? {
                    continue;
                }
                for (dst, src) in [
                    (&mut attention, &o.attention),
                    (&mut mlp, &o.mlp),
                    (&mut norm, &o.norm),
                    (&mut residual, &o.residual),
                ] {
                    if let Some(src) = src {
                        deep_merge(dst, src);
                    }
                }
            }
            let moe = match &spec.moe {
                Some(m) => match &m.layers {
                    Some(sel) if !selector_matches(sel, i, n)? => None,
                    _ => Some(m.clone()),
                },
                None => None,
            };
            Ok(LayerSpec {
                attention: attention.try_into().map_err(|e: toml::de::Error| e.to_string())?,
                mlp: mlp.try_into().map_err(|e: toml::de::Error| e.to_string())?,
                norm: norm.try_into().map_err(|e: toml::de::Error| e.to_string())?,
                residual: residual.try_into().map_err(|e: toml::de::Error| e.to_string())?,
                moe,
            })
        })
        .collect()
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

/// Does `sel` pick layer `i` of `n`?
pub fn selector_matches(sel: &Selector, i: usize, n: usize) -> Result<bool, String> {
    match sel {
        Selector::List(v) => Ok(v.contains(&i)),
        Selector::Text(t) => {
            let t = t.trim();
            Ok(match t {
                "all" => true,
                "even" => i % 2 == 0,
                "odd" => i % 2 == 1,
                _ => {
                    if let Some(rest) = t.strip_prefix("every ") {
                        let (step, from) = match rest.split_once(" from ") {
                            Some((s, f)) => (s, f),
                            None => (rest, "0"),
                        };
                        let step: usize = step.trim().parse().map_err(|_| format!("bad selector `{t}`"))?;
                        let from: usize = from.trim().parse().map_err(|_| format!("bad selector `{t}`"))?;
                        step > 0 && i >= from && (i - from) % step == 0
                    } else if let Some((a, b)) = t.split_once("..") {
                        let a: usize = a.trim().parse().map_err(|_| format!("bad selector `{t}`"))?;
                        let b: usize = if b.trim().is_empty() { n } else { b.trim().parse().map_err(|_| format!("bad selector `{t}`"))? };
                        i >= a && i < b
                    } else {
                        let k: usize = t.parse().map_err(|_| format!("bad selector `{t}`"))?;
                        i == k
                    }
                }
            })
        }
    }
}
