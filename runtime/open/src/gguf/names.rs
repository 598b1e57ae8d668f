//! llama.cpp tensor names → kiln canonical parameter names, as data.
//!
//! The rows come from the family files (`models/families/*.toml`): a
//! `[gguf]` section names the `general.architecture` values the family
//! reads, whether llama.cpp's converter permuted the Q/K rows for
//! interleaved RoPE, and the tensor names, `{i}` standing for a block index:
//!
//! ```toml
//! [gguf]
//! architectures = ["llama"]
//! rope_permuted = true          # convert_hf_to_gguf permuted Q/K rows; kiln undoes it
//! # extends = "llama"           # take another family's [gguf] names, then add/replace
//! [gguf.tensors]
//! "token_embd.weight" = "embed.tokens"
//! "blk.{i}.attn_q.weight" = { to = "layers.{i}.attn.q.weight", rows = "rope-q" }
//! [gguf.ignore]
//! "blk.{i}.attn_rot_embd.weight" = "RoPE inverse frequencies; kiln recomputes them"
//! ```
//!
//! GGUF matrices have `ne = [in, out]`, i.e. kiln's `[out, in]` row-major, so
//! no transpose is needed; MoE expert stacks (`ne = [in, out, experts]`) are
//! kiln's `[experts, out, in]`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kiln_compiler::import;
use serde::Deserialize;

/// How a tensor's rows are reordered on load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowOrder {
    /// Stored as kiln wants it.
    AsIs,
    /// Query rows (or bias), permuted by llama.cpp for interleaved RoPE over
    /// `attention.head_count` heads; undone when the family is permuted.
    RopeQ,
    /// Key rows (or bias), permuted over `attention.head_count_kv` heads.
    RopeK,
}

/// One name mapping: a llama.cpp name pattern and kiln's.
#[derive(Debug, Clone, PartialEq)]
pub struct NameRule {
    /// llama.cpp name; `{i}` matches a block index.
    pub gguf: String,
    /// kiln names; `{i}` is replaced by the same index. More than one: the
    /// tensor is split along its outermost axis into them, in order, each
    /// taking as many rows as the model declares for it (llama.cpp's fused
    /// `attn_qkv` is `[q; k; v]`).
    pub kiln: Vec<String>,
    /// Row reordering on load.
    pub rows: RowOrder,
    /// Added to every element on load (Gemma's converter stored `1 + w` for
    /// the `(1 + w)` norms; `offset = -1.0` gives back `w`).
    pub offset: f64,
    /// `when = NAME, otherwise = KILN`: the rule's targets apply when the file
    /// holds tensor NAME (same `{i}`), else the tensor goes to KILN (Falcon-40B's
    /// `attn_norm` feeds the MLP exactly when an `attn_norm_2` exists).
    pub when: Option<(String, String)>,
}

/// An architecture: the `general.architecture` value, the family file that
/// reads it, how its metadata becomes that family's config, and its tensors.
#[derive(Debug, Clone)]
pub struct ArchFamily {
    /// `general.architecture`.
    pub name: String,
    /// The family file that declares it.
    pub family: String,
    /// The family, whose `[fields]` and `[spec]` the metadata feeds.
    pub source: Arc<import::Family>,
    /// The `model_type` the config is imported as.
    pub model_type: String,
    /// `[gguf.config]`: config field → metadata key, expression or literal.
    pub config: toml::Table,
    /// llama.cpp uses interleaved ("normal") RoPE for this architecture, so
    /// `convert_hf_to_gguf` permuted the Q/K rows; kiln undoes it.
    pub rope_permuted: bool,
    /// How llama.cpp tensor names map to kiln parameter names.
    pub rules: Vec<NameRule>,
    /// Patterns of llama.cpp tensors kiln does not load (see [`is_ignored`]).
    pub ignored: Vec<String>,
}

impl PartialEq for ArchFamily {
    fn eq(&self, other: &Self) -> bool {
        (
            &self.name,
            &self.family,
            &self.model_type,
            &self.config,
            self.rope_permuted,
            &self.rules,
            &self.ignored,
        ) == (
            &other.name,
            &other.family,
            &other.model_type,
            &other.config,
            other.rope_permuted,
            &other.rules,
            &other.ignored,
        )
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GgufSection {
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    rope_permuted: Option<bool>,
    #[serde(default)]
    extends: Option<String>,
    #[serde(default)]
    model_type: Option<String>,
    #[serde(default)]
    config: toml::Table,
    #[serde(default)]
    tensors: BTreeMap<String, TensorEntry>,
    #[serde(default)]
    ignore: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TensorEntry {
    Name(String),
    Rule(RuleEntry),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleEntry {
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    split: Option<Vec<String>>,
    #[serde(default)]
    rows: Option<String>,
    #[serde(default)]
    offset: Option<f64>,
    #[serde(default)]
    when: Option<String>,
    #[serde(default)]
    otherwise: Option<String>,
}

/// The `[gguf]` rows of the family files (the last registered family of a
/// name wins), cached until a family file is added.
pub fn archs() -> Result<Arc<Vec<ArchFamily>>, String> {
    static CACHE: Mutex<Option<(usize, Arc<Vec<ArchFamily>>)>> = Mutex::new(None);
    let fams = import::all_families().map_err(|e| e.to_string())?;
    if let Ok(c) = CACHE.lock()
        && let Some((n, a)) = &*c
        && *n == fams.len()
    {
        return Ok(a.clone());
    }
    let latest = crate::checkpoint::table::latest_per_name(&fams);
    let mut out: Vec<ArchFamily> = Vec::new();
    for f in &latest {
        let Some(_) = &f.gguf else { continue };
        let r = section(f, &latest, 0)?;
        let model_type = match r.model_type.clone() {
            Some(m) => m,
            None => f.model_types.first().cloned().ok_or_else(|| {
                format!(
                    "{}: [gguf]: the family reads no model_type; say which with `model_type`",
                    f.origin.display()
                )
            })?,
        };
        for a in &r.architectures {
            out.retain(|x| &x.name != a);
            out.push(ArchFamily {
                name: a.clone(),
                family: f.name.clone(),
                source: f.clone(),
                model_type: model_type.clone(),
                config: r.config.clone(),
                rope_permuted: r.permuted,
                rules: r.rules.clone(),
                ignored: r.ignored.clone(),
            });
        }
    }
    let out = Arc::new(out);
    if let Ok(mut c) = CACHE.lock() {
        *c = Some((fams.len(), out.clone()));
    }
    Ok(out)
}

fn parse(f: &import::Family) -> Result<GgufSection, String> {
    let t = f.gguf.clone().unwrap_or_default();
    toml::Value::Table(t)
        .try_into()
        .map_err(|e: toml::de::Error| format!("{}: [gguf]: {}", f.origin.display(), e.message()))
}

#[derive(Default)]
struct Resolved {
    /// This family's own `architectures` and `model_type` (not inherited).
    architectures: Vec<String>,
    model_type: Option<String>,
    permuted: bool,
    config: toml::Table,
    rules: Vec<NameRule>,
    ignored: Vec<String>,
}

/// A family's `[gguf]` section, over the one it `extends`.
fn section(
    f: &import::Family,
    all: &[Arc<import::Family>],
    depth: usize,
) -> Result<Resolved, String> {
    let ctx = |m: String| format!("{}: [gguf]: {m}", f.origin.display());
    if depth > 16 {
        return Err(ctx(
            "the [gguf] sections extend each other in a cycle".into()
        ));
    }
    let sec = parse(f)?;
    let mut r = match &sec.extends {
        Some(p) => {
            let parent = all
                .iter()
                .find(|x| &x.name == p && x.gguf.is_some())
                .ok_or_else(|| ctx(format!("extends `{p}`, which has no [gguf] section")))?;
            section(parent, all, depth + 1)?
        }
        None => Resolved::default(),
    };
    // The parent's architectures and model_type are its own, not the child's.
    r.architectures = sec.architectures.clone();
    r.model_type = sec.model_type.clone();
    if let Some(p) = sec.rope_permuted {
        r.permuted = p;
    }
    for (k, v) in &sec.config {
        r.config.insert(k.clone(), v.clone());
    }
    for (gguf, e) in &sec.tensors {
        let (kiln, rows, offset, when) = match e {
            TensorEntry::Name(k) => (vec![k.clone()], RowOrder::AsIs, 0.0, None),
            TensorEntry::Rule(rule) => {
                let rows = match rule.rows.as_deref() {
                    None | Some("as-is") => RowOrder::AsIs,
                    Some("rope-q") => RowOrder::RopeQ,
                    Some("rope-k") => RowOrder::RopeK,
                    Some(o) => {
                        return Err(ctx(format!(
                            "tensor `{gguf}`: rows = {o:?}; use \"as-is\", \"rope-q\" or \"rope-k\""
                        )));
                    }
                };
                let kiln = match (&rule.to, &rule.split) {
                    (Some(t), None) => vec![t.clone()],
                    (None, Some(s)) if s.len() >= 2 => s.clone(),
                    _ => {
                        return Err(ctx(format!(
                            "tensor `{gguf}`: give `to = NAME` or `split = [NAME, NAME, ...]` (two or more)"
                        )));
                    }
                };
                if kiln.len() > 1 && rows != RowOrder::AsIs {
                    return Err(ctx(format!(
                        "tensor `{gguf}`: a split tensor's rows are taken as stored (`rows` applies to one target)"
                    )));
                }
                let offset = rule.offset.unwrap_or(0.0);
                if !offset.is_finite() {
                    return Err(ctx(format!(
                        "tensor `{gguf}`: offset must be a finite number"
                    )));
                }
                let when = match (&rule.when, &rule.otherwise) {
                    (None, None) => None,
                    (Some(w), Some(o)) if kiln.len() == 1 => Some((w.clone(), o.clone())),
                    _ => {
                        return Err(ctx(format!(
                            "tensor `{gguf}`: `when` (a tensor name) and `otherwise` (a kiln name) go together, with `to`"
                        )));
                    }
                };
                (kiln, rows, offset, when)
            }
        };
        let n = gguf.matches("{i}").count();
        if n > 1 || kiln.iter().any(|k| k.matches("{i}").count() != n) {
            return Err(ctx(format!(
                "tensor `{gguf}` → `{}`: every name needs the same single `{{i}}` (or none)",
                kiln.join("`, `")
            )));
        }
        r.rules.retain(|x| &x.gguf != gguf);
        r.rules.push(NameRule {
            gguf: gguf.clone(),
            kiln,
            rows,
            offset,
            when,
        });
    }
    for p in sec.ignore.keys() {
        if !r.ignored.contains(p) {
            r.ignored.push(p.clone());
        }
    }
    Ok(r)
}

/// The row for a `general.architecture` value.
pub fn arch_family(arch: &str) -> Option<ArchFamily> {
    archs().ok()?.iter().find(|a| a.name == arch).cloned()
}

/// Names of the supported architectures, comma-separated.
pub fn supported_archs() -> String {
    match archs() {
        Ok(a) => a
            .iter()
            .map(|a| a.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        Err(e) => format!("(the family files do not load: {e})"),
    }
}

/// Match `name` against `pattern`: `Some(None)` for a literal match,
/// `Some(Some(i))` when `{i}` matched block index `i`, `None` otherwise.
fn match_pattern(pattern: &str, name: &str) -> Option<Option<usize>> {
    match pattern.split_once("{i}") {
        None => (pattern == name).then_some(None),
        Some((prefix, suffix)) => {
            let digits = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
            let canonical = !digits.is_empty()
                && digits.bytes().all(|b| b.is_ascii_digit())
                && (digits == "0" || !digits.starts_with('0'));
            if canonical {
                digits.parse().ok().map(Some)
            } else {
                None
            }
        }
    }
}

/// Where a llama.cpp tensor goes: kiln's names (several: split), row order
/// and offset.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapped {
    /// kiln parameter names, block index substituted.
    pub targets: Vec<String>,
    /// Row reordering on load.
    pub rows: RowOrder,
    /// Added to every element on load.
    pub offset: f64,
}

/// Where llama.cpp tensor `name` goes, if a rule matches; `has` says which
/// tensors the file holds (for `when` rules).
pub fn canonical(family: &ArchFamily, name: &str, has: &dyn Fn(&str) -> bool) -> Option<Mapped> {
    family.rules.iter().find_map(|r| {
        let index = match_pattern(&r.gguf, name)?;
        let sub = |k: &str| match index {
            Some(i) => k.replace("{i}", &i.to_string()),
            None => k.to_string(),
        };
        let targets = match &r.when {
            Some((w, otherwise)) if !has(&sub(w)) => vec![sub(otherwise)],
            _ => r.kiln.iter().map(|k| sub(k)).collect(),
        };
        Some(Mapped {
            targets,
            rows: r.rows,
            offset: r.offset,
        })
    })
}

/// kiln's name and row order for a llama.cpp tensor `name` that maps to one
/// parameter, if a rule matches.
pub fn canonical_name(family: &ArchFamily, name: &str) -> Option<(String, RowOrder)> {
    let m = canonical(family, name, &|_| false)?;
    match m.targets.as_slice() {
        [one] => Some((one.clone(), m.rows)),
        _ => None,
    }
}

/// Whether llama.cpp tensor `name` is one kiln ignores.
pub fn is_ignored(family: &ArchFamily, name: &str) -> bool {
    family
        .ignored
        .iter()
        .any(|p| match_pattern(p, name).is_some())
}

/// Undo `convert_hf_to_gguf`'s RoPE permutation of a Q or K projection:
/// `w.reshape(n_head, 2, rows / n_head / 2, cols).swapaxes(1, 2)` moved HF
/// row `h*hd + p*hd/2 + j` to row `h*hd + 2j + p`; this moves it back.
/// `data` is `rows × cols` row-major (`cols = 1` for a bias).
pub fn unpermute_rope_rows(
    data: &[f32],
    rows: usize,
    cols: usize,
    n_head: usize,
) -> Result<Vec<f32>, String> {
    if rows.checked_mul(cols) != Some(data.len()) {
        return Err(format!(
            "{} values cannot be {rows} rows of {cols}",
            data.len()
        ));
    }
    let order = rope_row_order(rows, n_head)?;
    let mut out = Vec::with_capacity(data.len());
    for &src in &order {
        out.extend_from_slice(&data[src * cols..(src + 1) * cols]);
    }
    Ok(out)
}

/// The row order [`unpermute_rope_rows`] applies: row `i` of the result is
/// row `order[i]` of the file's tensor.
pub fn rope_row_order(rows: usize, n_head: usize) -> Result<Vec<usize>, String> {
    if n_head == 0 || !rows.is_multiple_of(n_head) || !(rows / n_head).is_multiple_of(2) {
        return Err(format!(
            "{rows} rows cannot be split into {n_head} heads of an even width"
        ));
    }
    let hd = rows / n_head;
    let half = hd / 2;
    let mut order = vec![0usize; rows];
    for h in 0..n_head {
        for j in 0..half {
            for p in 0..2 {
                order[h * hd + p * half + j] = h * hd + 2 * j + p;
            }
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;
    use RowOrder::{AsIs, RopeK, RopeQ};

    #[test]
    fn patterns() {
        assert_eq!(match_pattern("output.weight", "output.weight"), Some(None));
        assert_eq!(match_pattern("output.weight", "output_norm.weight"), None);
        assert_eq!(
            match_pattern("blk.{i}.attn_q.weight", "blk.17.attn_q.weight"),
            Some(Some(17))
        );
        assert_eq!(
            match_pattern("blk.{i}.attn_q.weight", "blk..attn_q.weight"),
            None
        );
        assert_eq!(
            match_pattern("blk.{i}.attn_q.weight", "blk.x.attn_q.weight"),
            None
        );
        assert_eq!(
            match_pattern("blk.{i}.attn_q.weight", "blk.01.attn_q.weight"),
            None
        );
        assert_eq!(
            match_pattern("blk.{i}.attn_q.weight", "blk.1.attn_q.bias"),
            None
        );
    }

    #[test]
    fn llama_names() {
        let f = arch_family("llama").unwrap();
        let cases = [
            ("token_embd.weight", "embed.tokens", AsIs),
            ("blk.0.attn_norm.weight", "layers.0.attn_norm.weight", AsIs),
            ("blk.3.attn_q.weight", "layers.3.attn.q.weight", RopeQ),
            ("blk.3.attn_k.weight", "layers.3.attn.k.weight", RopeK),
            ("blk.3.attn_v.weight", "layers.3.attn.v.weight", AsIs),
            ("blk.12.attn_output.weight", "layers.12.attn.o.weight", AsIs),
            ("blk.29.ffn_norm.weight", "layers.29.mlp_norm.weight", AsIs),
            ("blk.2.ffn_gate.weight", "layers.2.mlp.gate.weight", AsIs),
            ("blk.2.ffn_up.weight", "layers.2.mlp.up.weight", AsIs),
            ("blk.2.ffn_down.weight", "layers.2.mlp.down.weight", AsIs),
            ("output_norm.weight", "final_norm.weight", AsIs),
            ("output.weight", "head.weight", AsIs),
            (
                "blk.1.ffn_gate_exps.weight",
                "layers.1.moe.experts.gate.weight",
                AsIs,
            ),
            (
                "blk.1.ffn_gate_inp.weight",
                "layers.1.moe.router.weight",
                AsIs,
            ),
        ];
        for (gguf, kiln, order) in cases {
            assert_eq!(
                canonical_name(&f, gguf),
                Some((kiln.to_string(), order)),
                "{gguf}"
            );
        }
        assert_eq!(canonical(&f, "blk.0.attn_qkv.weight", &|_| false), None);
        assert!(is_ignored(&f, "blk.4.attn_rot_embd.weight"));
        assert!(f.rope_permuted);
        let q = arch_family("qwen2").unwrap();
        assert!(!q.rope_permuted, "qwen2's rows are not permuted");
        assert_eq!(q.rules, f.rules, "qwen2 takes llama's names");
        assert_eq!(q.config, f.config, "and llama's metadata mapping");
        assert!(arch_family("no-such-architecture").is_none());
        // A `when` rule: Falcon-40B's attn_norm feeds the MLP when attn_norm_2 exists.
        let falcon = arch_family("falcon").unwrap();
        let with = canonical(&falcon, "blk.2.attn_norm.weight", &|n| {
            n == "blk.2.attn_norm_2.weight"
        })
        .unwrap();
        assert_eq!(with.targets, ["layers.2.mlp_norm.weight"]);
        let without = canonical(&falcon, "blk.2.attn_norm.weight", &|_| false).unwrap();
        assert_eq!(without.targets, ["layers.2.attn_norm.weight"]);
        // A split, and an offset.
        let phi3 = arch_family("phi3").unwrap();
        let qkv = canonical(&phi3, "blk.1.attn_qkv.weight", &|_| false).unwrap();
        assert_eq!(
            qkv.targets,
            [
                "layers.1.attn.q.weight",
                "layers.1.attn.k.weight",
                "layers.1.attn.v.weight"
            ]
        );
        let gemma = arch_family("gemma").unwrap();
        let norm = canonical(&gemma, "output_norm.weight", &|_| false).unwrap();
        assert_eq!(
            (norm.targets[0].as_str(), norm.offset),
            ("final_norm.weight", -1.0)
        );
    }

    /// The permutation `convert_hf_to_gguf` applies, written out like numpy's
    /// reshape/swapaxes, to check the inverse against.
    fn permute(hf: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
        let hd = rows / n_head;
        let half = hd / 2;
        // result[h][j][p] = hf[h][p][j], flattened.
        let mut out = Vec::with_capacity(hf.len());
        for h in 0..n_head {
            for j in 0..half {
                for p in 0..2 {
                    let r = h * hd + p * half + j;
                    out.extend_from_slice(&hf[r * cols..(r + 1) * cols]);
                }
            }
        }
        out
    }

    #[test]
    fn unpermute_inverts_convert_permutation() {
        for (rows, cols, heads) in [(8, 3, 2), (12, 1, 3), (16, 5, 1), (24, 2, 4)] {
            let hf: Vec<f32> = (0..rows * cols).map(|x| x as f32).collect();
            let gguf = permute(&hf, rows, cols, heads);
            assert_ne!(gguf, hf, "the permutation is not the identity here");
            assert_eq!(unpermute_rope_rows(&gguf, rows, cols, heads).unwrap(), hf);
        }
        // One head of width 4: HF rows [a0 a1 b0 b1] (a = first half) are
        // stored interleaved as [a0 b0 a1 b1].
        let gguf = [10.0, 20.0, 11.0, 21.0];
        assert_eq!(
            unpermute_rope_rows(&gguf, 4, 1, 1).unwrap(),
            vec![10.0, 11.0, 20.0, 21.0]
        );
        assert!(unpermute_rope_rows(&gguf, 4, 1, 3).is_err());
        assert!(unpermute_rope_rows(&gguf, 5, 1, 1).is_err());
        assert!(unpermute_rope_rows(&gguf, 4, 1, 0).is_err());
    }
}
