//! A kiln spec derived from GGUF metadata, and the weights under kiln's names.

use super::Result;
use super::names::{self, ArchFamily, RowOrder};
use super::reader::{GgufFile, Value};
use kiln_compiler::spec::ResolvedSpec;
use kiln_runtime::Tensor;
use kiln_runtime::Weights;
use std::path::Path;
use toml::{Table, Value as TomlValue};

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

    /// `{arch}.{key}` as a non-negative integer.
    fn arch_u64(&self, key: &str) -> Result<u64> {
        let full = format!("{}.{key}", self.architecture()?);
        self.get_u64(&full)
    }

    /// `{arch}.{key}` as a usize, if present.
    fn arch_opt_usize(&self, key: &str) -> Result<Option<usize>> {
        let full = format!("{}.{key}", self.architecture()?);
        match self.get(&full) {
            None => Ok(None),
            Some(_) => self.arch_usize(key).map(Some),
        }
    }

    fn arch_usize(&self, key: &str) -> Result<usize> {
        let v = self.arch_u64(key)?;
        usize::try_from(v).map_err(|_| {
            self.error(format!(
                "metadata `{}.{key}` = {v} is too large",
                self.architecture().unwrap_or("?")
            ))
        })
    }

    /// `{arch}.{key}` as f64, if present. An f32 value is converted through
    /// its shortest decimal form (f32 `1e-5` gives f64 `1e-5`, not
    /// `9.99999974738e-6`), matching the number the converter was given.
    fn arch_opt_f64(&self, key: &str) -> Result<Option<f64>> {
        let full = format!("{}.{key}", self.architecture()?);
        match self.get(&full) {
            None => Ok(None),
            Some(Value::F32(v)) => Ok(Some(format!("{v:?}").parse().unwrap_or(f64::from(*v)))),
            Some(_) => self.get_f64(&full).map(Some),
        }
    }

    /// The kiln spec this file's metadata describes, as a TOML table (what
    /// [`GgufFile::spec`] resolves; [`GgufFile::spec_toml`] writes it out).
    ///
    /// Reads `{arch}.embedding_length`, `.block_count`,
    /// `.feed_forward_length`, `.attention.head_count`, `.head_count_kv`,
    /// `.key_length`, `.layer_norm_rms_epsilon`, `.sliding_window`,
    /// `.context_length`, `.rope.freq_base`, `.rope.dimension_count`,
    /// `.rope.scaling.*`, `.expert_count`, `.expert_used_count`; the vocabulary
    /// size is `token_embd`'s row count; the head is tied when there is no
    /// `output` tensor; biases are present when the tensors are.
    pub fn spec_table(&self) -> Result<toml::Table> {
        let family = self.family()?;
        let arch = family.name.clone();
        let d_model = self.arch_usize("embedding_length")?;
        let layers = self.arch_usize("block_count")?;
        let d_ff = self.arch_usize("feed_forward_length")?;
        let heads = self.arch_usize("attention.head_count")?;
        let kv_heads = self
            .arch_opt_usize("attention.head_count_kv")?
            .unwrap_or(heads);
        // Sizes the rest is derived from are checked here, so an error names
        // the key at fault rather than a consequence of it.
        for (key, v) in [
            ("embedding_length", d_model),
            ("block_count", layers),
            ("attention.head_count", heads),
            ("attention.head_count_kv", kv_heads),
        ] {
            if v == 0 {
                return Err(self.error(format!(
                    "metadata `{arch}.{key}` is 0; a model needs at least one"
                )));
            }
        }
        if !heads.is_multiple_of(kv_heads) {
            return Err(self.error(format!(
                "metadata `{arch}.attention.head_count_kv` = {kv_heads} does not divide `{arch}.attention.head_count` = {heads}"
            )));
        }
        let head_dim = self.arch_opt_usize("attention.key_length")?;
        if let (Some(k), Some(v)) = (head_dim, self.arch_opt_usize("attention.value_length")?)
            && k != v
        {
            return Err(self.error(format!(
                "{arch}.attention.key_length ({k}) differs from {arch}.attention.value_length ({v}); kiln needs equal key and value head widths"
            )));
        }
        let eps = self
            .arch_opt_f64("attention.layer_norm_rms_epsilon")?
            .ok_or_else(|| {
                self.error(format!(
                    "missing metadata key `{arch}.attention.layer_norm_rms_epsilon` (the llama family uses RMSNorm)"
                ))
            })?;
        let max_positions = self.arch_opt_usize("context_length")?.unwrap_or(2048);
        let theta = self.arch_opt_f64("rope.freq_base")?.unwrap_or(10000.0);

        let embd = self.tensor("token_embd.weight").ok_or_else(|| {
            self.error("missing tensor `token_embd.weight` (the token embeddings)")
        })?;
        let embd_shape = embd.shape();
        if embd_shape.len() != 2 || embd_shape[1] != d_model {
            return Err(self.error(format!(
                "tensor `token_embd.weight` has shape {embd_shape:?}; expected [vocab, {d_model}] ({arch}.embedding_length = {d_model})"
            )));
        }
        let vocab_size = embd_shape[0];
        if let Some(n) = self.arch_opt_usize("vocab_size")?
            && n != vocab_size
        {
            return Err(self.error(format!(
                "{arch}.vocab_size is {n} but tensor `token_embd.weight` has {vocab_size} rows"
            )));
        }

        let has = |name: &str| self.tensor(name).is_some();
        if has("rope_freqs.weight") {
            return Err(self.error(
                "tensor `rope_freqs.weight` (per-frequency RoPE factors, as written for Llama 3.1-style rope scaling) is not supported: kiln cannot recover the scaling parameters from it",
            ));
        }
        let tied = !has("output.weight");
        let qkv_bias = has("blk.0.attn_q.bias");
        let out_bias = has("blk.0.attn_output.bias");
        let head_bias = has("output.bias");

        let name = self
            .get("general.name")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| file_stem(self.path()));
        let mut t = Table::new();
        set(&mut t, "name", name);
        set(&mut t, "architecture", "decoder");
        set(&mut t, "vocab_size", self.int(vocab_size)?);
        set(&mut t, "d_model", self.int(d_model)?);
        set(&mut t, "layers", self.int(layers)?);
        set(&mut t, "max_positions", self.int(max_positions)?);

        let mut attention = Table::new();
        set(&mut attention, "heads", self.int(heads)?);
        set(&mut attention, "kv_heads", self.int(kv_heads)?);
        if let Some(hd) = head_dim
            && heads > 0
            && hd != d_model / heads
        {
            set(&mut attention, "head_dim", self.int(hd)?);
        }
        if qkv_bias {
            set(&mut attention, "qkv_bias", true);
        }
        if out_bias {
            set(&mut attention, "out_bias", true);
        }
        if let Some(w) = self.arch_opt_usize("attention.sliding_window")?
            && w > 0
        {
            set(&mut attention, "sliding_window", self.int(w)?);
        }
        set(&mut t, "attention", attention);

        let mut norm = Table::new();
        set(&mut norm, "kind", "rmsnorm");
        set(&mut norm, "eps", eps);
        set(&mut norm, "placement", "pre");
        set(&mut norm, "final_norm", has("output_norm.weight"));
        set(&mut t, "norm", norm);

        let mut positions = Table::new();
        set(&mut positions, "kind", "rope");
        set(&mut positions, "theta", theta);
        // kiln's half-split layout: llama's Q/K rows are un-permuted on load.
        set(&mut positions, "layout", "half");
        let hd = head_dim.unwrap_or(d_model.checked_div(heads).unwrap_or(0));
        if let Some(rot) = self.arch_opt_usize("rope.dimension_count")?
            && rot != hd
        {
            if hd == 0 || rot > hd || !rot.is_multiple_of(2) {
                return Err(self.error(format!(
                    "{arch}.rope.dimension_count is {rot}, which does not fit a head of width {hd}"
                )));
            }
            set(&mut positions, "fraction", rot as f64 / hd as f64);
        }
        if let Some(scaling) = self.rope_scaling()? {
            set(&mut positions, "scaling", scaling);
        }
        set(&mut t, "positions", positions);

        let mut mlp = Table::new();
        set(&mut mlp, "d_ff", self.int(d_ff)?);
        set(&mut mlp, "activation", "silu");
        set(&mut mlp, "gated", true);
        set(&mut t, "mlp", mlp);

        let experts = self.arch_opt_usize("expert_count")?.unwrap_or(0);
        if experts > 0 {
            let top_k = self.arch_usize("expert_used_count")?;
            let mut moe = Table::new();
            set(&mut moe, "experts", self.int(experts)?);
            set(&mut moe, "top_k", self.int(top_k)?);
            if let Some(ff) = self.arch_opt_usize("expert_feed_forward_length")?
                && ff != d_ff
            {
                set(&mut moe, "d_ff", self.int(ff)?);
            }
            set(&mut t, "moe", moe);
        }

        let mut head = Table::new();
        set(&mut head, "kind", "lm");
        set(&mut head, "tied", tied);
        if head_bias {
            set(&mut head, "bias", true);
        }
        set(&mut t, "head", head);
        Ok(t)
    }

    /// A size as a TOML integer, or an error past its range.
    fn int(&self, v: usize) -> Result<i64> {
        i64::try_from(v)
            .map_err(|_| self.error(format!("metadata value {v} does not fit a spec integer")))
    }

    /// `positions.scaling` from `{arch}.rope.scaling.*`, if the file scales RoPE.
    fn rope_scaling(&self) -> Result<Option<Table>> {
        let arch = self.architecture()?;
        let key = format!("{arch}.rope.scaling.type");
        let Some(kind) = self.get(&key) else {
            return Ok(None);
        };
        let kind = kind
            .as_str()
            .ok_or_else(|| self.error(format!("metadata `{key}` must be a string")))?;
        let factor = || {
            self.arch_opt_f64("rope.scaling.factor")?.ok_or_else(|| {
                self.error(format!(
                    "`{key}` is \"{kind}\" but `{arch}.rope.scaling.factor` is missing"
                ))
            })
        };
        let mut scaling = Table::new();
        match kind {
            "none" => return Ok(None),
            "linear" => {
                set(&mut scaling, "kind", "linear");
                set(&mut scaling, "factor", factor()?);
            }
            "yarn" => {
                let orig = self.arch_usize("rope.scaling.original_context_length")?;
                set(&mut scaling, "kind", "yarn");
                set(&mut scaling, "factor", factor()?);
                set(&mut scaling, "original_max_positions", self.int(orig)?);
                for (gguf, kiln) in [
                    ("rope.scaling.yarn_beta_fast", "beta_fast"),
                    ("rope.scaling.yarn_beta_slow", "beta_slow"),
                ] {
                    if let Some(v) = self.arch_opt_f64(gguf)? {
                        set(&mut scaling, kiln, v);
                    }
                }
            }
            other => {
                return Err(self.error(format!(
                    "metadata `{key}` is \"{other}\"; supported RoPE scaling: none, linear, yarn"
                )));
            }
        }
        Ok(Some(scaling))
    }

    /// The kiln spec this file's metadata describes ([`GgufFile::spec_table`],
    /// resolved by the compiler's spec loader like a spec file).
    pub fn spec(&self) -> Result<ResolvedSpec> {
        let table = self.spec_table()?;
        let name = Path::new("<gguf>").join(self.path().file_name().unwrap_or_default());
        kiln_compiler::spec::load_table(&table, &name).map_err(|e| {
            self.error(format!(
                "the spec derived from the metadata does not resolve: {}\n--- derived spec ---\n{table}",
                e.render()
            ))
        })
    }

    /// [`GgufFile::spec_table`] as spec text with a header naming the file:
    /// save it to get an editable spec.
    pub fn spec_toml(&self) -> Result<String> {
        let table = self.spec_table()?;
        Ok(format!(
            "# Derived from the metadata of {}\n{table}",
            self.path().display()
        ))
    }

    /// Every tensor dequantised to f32 under kiln's canonical name, with
    /// llama's Q/K rows un-permuted. A tensor no rule maps (and that the
    /// family does not ignore) is an error listing all such names.
    pub fn weights(&self) -> Result<Weights> {
        let family = self.family()?;
        let heads = self.arch_usize("attention.head_count")?;
        let kv_heads = self
            .arch_opt_usize("attention.head_count_kv")?
            .unwrap_or(heads);
        let mut unknown = Vec::new();
        let mut weights = Weights::new();
        for info in self.tensors() {
            let Some((kiln, order)) = names::canonical_name(&family, &info.name) else {
                if !names::is_ignored(&family, &info.name) {
                    unknown.push(info.name.as_str());
                }
                continue;
            };
            let mut tensor = self.tensor_f32(&info.name)?;
            let n_head = match order {
                RowOrder::AsIs => None,
                RowOrder::RopeQ => Some(heads),
                RowOrder::RopeK => Some(kv_heads),
            };
            if let Some(n_head) = n_head.filter(|_| family.rope_permuted) {
                let shape = tensor.shape().to_vec();
                let rows = shape.first().copied().unwrap_or(1);
                let cols = shape.iter().skip(1).product::<usize>();
                let data = tensor.to_f32_vec();
                let data = names::unpermute_rope_rows(&data, rows, cols, n_head)
                    .map_err(|e| self.error(format!("tensor `{}`: {e}", info.name)))?;
                tensor = Tensor::from_f32(&shape, data)
                    .map_err(|e| self.error(format!("tensor `{}`: {e}", info.name)))?;
            }
            weights.insert(kiln, tensor);
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

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "gguf-model".into())
}

/// `table[key] = value`.
fn set(table: &mut Table, key: &str, value: impl Into<TomlValue>) {
    table.insert(key.to_string(), value.into());
}
