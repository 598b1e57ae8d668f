//! A kiln spec derived from GGUF metadata, and the weights under kiln's names.

use super::Result;
use super::names::{self, ArchFamily, RowOrder};
use super::reader::{Array, GgufFile, Value};
use crate::checkpoint::plan::ModelParams;
use kiln_compiler::import::{self, Imported};
use kiln_compiler::ir::Graph;
use kiln_compiler::spec::ResolvedSpec;
use kiln_runtime::Tensor;
use kiln_runtime::Weights;
use std::path::Path;

impl GgufFile {
    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    /// The architecture family (name rules, RoPE permutation), or an error
    /// naming the architecture and the supported ones.
    pub fn family(&self) -> Result<ArchFamily> {
        let arch = self.architecture()?;
        names::arch_family(arch).ok_or_else(|| {
            self.error(format!(
                "unsupported architecture `{arch}` (general.architecture); supported: {}",
                names::supported_archs()
            ))
        })
    }

    /// `{arch}.{key}` as a usize, if present.
    fn arch_opt_usize(&self, key: &str) -> Result<Option<usize>> {
        let full = format!("{}.{key}", self.architecture()?);
        match self.get(&full) {
            None => Ok(None),
            Some(_) => {
                let v = self.get_u64(&full)?;
                usize::try_from(v)
                    .map(Some)
                    .map_err(|_| self.error(format!("metadata `{full}` = {v} is too large")))
            }
        }
    }

    /// The import of this file's metadata by its architecture's family file
    /// (the `[gguf.config]` table turns `{arch}.*` keys into the family's
    /// config fields; the family's `[fields]`, checks and `[spec]` do the
    /// rest, exactly as for a `config.json`).
    pub fn imported(&self) -> Result<Imported> {
        let family = self.family()?;
        let arch = family.name.clone();
        let embd = self.tensor("token_embd.weight").ok_or_else(|| {
            self.error("missing tensor `token_embd.weight` (the token embeddings)")
        })?;
        let embd_shape = embd.shape();
        if embd_shape.len() != 2 {
            return Err(self.error(format!(
                "tensor `token_embd.weight` has shape {embd_shape:?}; expected [vocab, embedding_length]"
            )));
        }
        if let Some(n) = self.arch_opt_usize("vocab_size")?
            && n != embd_shape[0]
        {
            return Err(self.error(format!(
                "{arch}.vocab_size is {n} but tensor `token_embd.weight` has {} rows",
                embd_shape[0]
            )));
        }
        if self.tensor("rope_freqs.weight").is_some() {
            return Err(self.error(
                "tensor `rope_freqs.weight` (per-frequency RoPE factors, as written for Llama 3.1-style rope scaling) is not supported: kiln cannot recover the scaling parameters from it",
            ));
        }
        let name = self
            .get("general.name")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| file_stem(self.path()));
        let map = import::MetadataMap {
            model_type: family.model_type.clone(),
            prefix: arch,
            config: family.config.clone(),
        };
        let opts = import::ImportOptions {
            name: Some(name),
            ..Default::default()
        };
        import::import_metadata(&family.source, &map, self, self.path(), &opts).map_err(|e| {
            if e.file == self.path() {
                self.error(match &e.field {
                    Some(f) => format!("`{f}` {}", e.message),
                    None => e.message,
                })
            } else {
                self.error(e.to_string())
            }
        })
    }

    /// The kiln spec this file's metadata describes, as a TOML table (the
    /// resolved spec of [`GgufFile::imported`]).
    pub fn spec_table(&self) -> Result<toml::Table> {
        let text = self.imported()?.resolved.to_toml();
        text.parse::<toml::Table>()
            .map_err(|e| self.error(format!("internal: the derived spec does not parse: {e}")))
    }

    /// The kiln spec this file's metadata describes.
    pub fn spec(&self) -> Result<ResolvedSpec> {
        Ok(self.imported()?.resolved)
    }

    /// The derived spec as text with a header naming the file, the family
    /// file that read it and the defaults it filled: save it to get an
    /// editable spec.
    pub fn spec_toml(&self) -> Result<String> {
        let imported = self.imported()?;
        Ok(format!(
            "# Derived from the metadata of {}\n{}",
            self.path().display(),
            imported.to_toml()
        ))
    }

    /// Every tensor dequantised to f32 under kiln's canonical names for the
    /// spec this file describes ([`GgufFile::weights_for`]).
    pub fn weights(&self) -> Result<Weights> {
        let rs = self.spec()?;
        let lowered = kiln_compiler::lower::lower(&rs)
            .map_err(|e| self.error(format!("the derived spec does not lower: {e}")))?;
        let graphs: Vec<_> = lowered.graphs().collect();
        self.weights_for(&rs, &graphs)
    }

    /// Every tensor dequantised to f32 under kiln's canonical names, for the
    /// model `rs` (lowered to `graphs`): permuted Q/K rows put back (over
    /// `rs`'s query and key/value head counts), offsets applied, fused
    /// tensors split into the parameters the graphs declare, in order. A
    /// tensor no rule maps (and that the family does not ignore) is an error
    /// listing all such names.
    pub fn weights_for(&self, rs: &ResolvedSpec, graphs: &[&Graph]) -> Result<Weights> {
        self.weights_stored_for(rs, graphs, false)
    }

    /// [`GgufFile::weights_for`], with every matrix whose type the runtime
    /// executes from kept in that format over the file's mapped bytes (not
    /// copied; RoPE-permuted Q/K rows are copied in their order) when
    /// `stored`: `Precision::Stored`.
    pub fn weights_stored_for(
        &self,
        rs: &ResolvedSpec,
        graphs: &[&Graph],
        stored: bool,
    ) -> Result<Weights> {
        let family = self.family()?;
        let heads = rs.spec.attention.heads;
        let kv_heads = rs.spec.attention.kv_heads.unwrap_or(heads);
        let declared = ModelParams::from_graphs(graphs)
            .map_err(|e| self.error(format!("the model's parameters: {e}")))?
            .shapes;
        let mut unknown = Vec::new();
        let mut weights = Weights::new();
        for info in self.tensors() {
            let Some(mapped) = names::canonical(&family, &info.name, &|n| self.tensor(n).is_some())
            else {
                if !names::is_ignored(&family, &info.name) {
                    unknown.push(info.name.as_str());
                }
                continue;
            };
            let at = |e: String| self.error(format!("tensor `{}`: {e}", info.name));
            let n_head = match mapped.rows {
                RowOrder::AsIs => None,
                RowOrder::RopeQ => Some(heads),
                RowOrder::RopeK => Some(kv_heads),
            }
            .filter(|_| family.rope_permuted);
            // Matrices stay in their stored format when asked (an offset
            // needs the values).
            let stored = if stored && info.shape().len() == 2 && mapped.offset == 0.0 {
                self.tensor_stored(&info.name)?
            } else {
                None
            };
            if let Some(mut q) = stored {
                let shape = q.shape().to_vec();
                if let Some(n_head) = n_head {
                    let order = names::rope_row_order(shape[0], n_head).map_err(at)?;
                    q = q.permute_rows(&order).map_err(|e| at(e.to_string()))?;
                }
                for (target, start, want) in
                    split_rows_of(&mapped, &declared, &shape).map_err(at)?
                {
                    let part = (q.slice_rows(start, want[0]))
                        .and_then(|p| p.reshaped(&want))
                        .map_err(|e| at(e.to_string()))?;
                    weights.insert_quant(target, part);
                }
                continue;
            }
            let tensor = self.tensor_f32(&info.name)?;
            let shape = tensor.shape().to_vec();
            let rows = shape.first().copied().unwrap_or(1);
            let cols = shape.iter().skip(1).product::<usize>();
            let mut data = tensor.to_f32_vec();
            if let Some(n_head) = n_head {
                data = names::unpermute_rope_rows(&data, rows, cols, n_head).map_err(at)?;
            }
            if mapped.offset != 0.0 {
                let o = mapped.offset as f32;
                data.iter_mut().for_each(|x| *x += o);
            }
            if let [one] = mapped.targets.as_slice() {
                weights.insert(
                    one.clone(),
                    Tensor::from_f32(&shape, data).map_err(|e| at(e.to_string()))?,
                );
                continue;
            }
            for (target, start, want) in split_rows_of(&mapped, &declared, &shape).map_err(at)? {
                let part = data[start * cols..(start + want[0]) * cols].to_vec();
                weights.insert(
                    target,
                    Tensor::from_f32(&want, part).map_err(|e| at(e.to_string()))?,
                );
            }
        }
        if !unknown.is_empty() {
            return Err(self.error(format!(
                "{} tensor(s) have no kiln name for architecture `{}`: {}",
                unknown.len(),
                family.name,
                unknown.join(", ")
            )));
        }
        Ok(weights)
    }
}

/// Where each target of `mapped` takes its rows of a tensor of `shape`:
/// `(target, first row, declared shape)`. One target takes the whole
/// tensor; a fused tensor is consecutive row blocks, each as many rows as
/// the model declares for its target.
fn split_rows_of(
    mapped: &names::Mapped,
    declared: &std::collections::BTreeMap<String, Vec<usize>>,
    shape: &[usize],
) -> std::result::Result<Vec<(String, usize, Vec<usize>)>, String> {
    if let [one] = mapped.targets.as_slice() {
        return Ok(vec![(one.clone(), 0, shape.to_vec())]);
    }
    let rows = shape.first().copied().unwrap_or(1);
    let cols = shape.iter().skip(1).product::<usize>();
    let mut out = Vec::new();
    let mut start = 0usize;
    for t in &mapped.targets {
        let want = declared.get(t).ok_or_else(|| {
            format!(
                "is split into `{}`, but the model has no parameter `{t}`",
                mapped.targets.join("`, `")
            )
        })?;
        let t_rows = want.first().copied().unwrap_or(1);
        let t_cols = want.iter().skip(1).product::<usize>();
        if t_cols != cols || start + t_rows > rows {
            return Err(format!(
                "shape {shape:?} cannot be split into `{}` (declared {})",
                mapped.targets.join("`, `"),
                mapped
                    .targets
                    .iter()
                    .map(|t| format!("{:?}", declared.get(t).cloned().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        out.push((t.clone(), start, want.clone()));
        start += t_rows;
    }
    if start != rows {
        return Err(format!(
            "has {rows} rows but `{}` take {start}",
            mapped.targets.join("`, `")
        ));
    }
    Ok(out)
}

impl import::Metadata for GgufFile {
    fn value(&self, key: &str) -> Option<serde_json::Value> {
        self.get(key).map(json)
    }

    fn shape(&self, tensor: &str) -> Option<Vec<usize>> {
        self.tensor(tensor).map(|t| t.shape().to_vec())
    }
}

/// A metadata value as JSON. An f32 goes through its shortest decimal form
/// (f32 `1e-5` gives `1e-5`, not `9.99999974738e-6`): the number the
/// converter was given.
fn json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    let f32_json = |x: f32| {
        let d: f64 = format!("{x:?}").parse().unwrap_or(f64::from(x));
        serde_json::Number::from_f64(d).map_or(J::Null, J::Number)
    };
    match v {
        Value::U8(x) => J::from(*x),
        Value::I8(x) => J::from(*x),
        Value::U16(x) => J::from(*x),
        Value::I16(x) => J::from(*x),
        Value::U32(x) => J::from(*x),
        Value::I32(x) => J::from(*x),
        Value::U64(x) => J::from(*x),
        Value::I64(x) => J::from(*x),
        Value::F32(x) => f32_json(*x),
        Value::F64(x) => serde_json::Number::from_f64(*x).map_or(J::Null, J::Number),
        Value::Bool(b) => J::Bool(*b),
        Value::String(s) => J::String(s.clone()),
        Value::Array(a) => array_json(a),
    }
}

fn array_json(a: &Array) -> serde_json::Value {
    use serde_json::Value as J;
    let f = |x: f64| serde_json::Number::from_f64(x).map_or(J::Null, J::Number);
    J::Array(match a {
        Array::U8(v) => v.iter().map(|x| J::from(*x)).collect(),
        Array::I8(v) => v.iter().map(|x| J::from(*x)).collect(),
        Array::U16(v) => v.iter().map(|x| J::from(*x)).collect(),
        Array::I16(v) => v.iter().map(|x| J::from(*x)).collect(),
        Array::U32(v) => v.iter().map(|x| J::from(*x)).collect(),
        Array::I32(v) => v.iter().map(|x| J::from(*x)).collect(),
        Array::U64(v) => v.iter().map(|x| J::from(*x)).collect(),
        Array::I64(v) => v.iter().map(|x| J::from(*x)).collect(),
        Array::F32(v) => v
            .iter()
            .map(|x| f(format!("{x:?}").parse().unwrap_or(f64::from(*x))))
            .collect(),
        Array::F64(v) => v.iter().map(|x| f(*x)).collect(),
        Array::Bool(v) => v.iter().map(|x| J::Bool(*x)).collect(),
        Array::String(v) => v.iter().map(|x| J::String(x.clone())).collect(),
        Array::Array(v) => v.iter().map(array_json).collect(),
    })
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "gguf-model".into())
}
