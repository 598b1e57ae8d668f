//! Cross-field validation, derived defaults and per-layer expansion.
//!
//! Every check points at the key that breaks the rule (in the file that set
//! it); when the key was left to its default, at the table that would hold it.

use std::collections::HashMap;

use super::ResolvedSpec;
use super::de::from_node;
use super::error::{Located, list_values};
use super::node::{Kind, Loc, Node, merge};
use super::schema::*;
use super::selector::Sel;

/// The four sections a `[[layer]]` override may change.
const BLOCK_SECTIONS: [&str; 4] = ["attention", "mlp", "norm", "residual"];

/// Keys that describe the whole model, so cannot differ between layers.
const MODEL_WIDE: &[(&str, &str)] = &[("norm", "embedding_norm"), ("norm", "final_norm")];

/// Blocks per stack: far more than any real model (a few hundred at most),
/// and what kiln compiles in seconds — every block is its own IR, so the
/// graphs, kernel programs and code grow linearly with it (4096 GPT-2
/// blocks: about a gigabyte and a few seconds for `kiln check`).
pub const MAX_LAYERS: usize = 1 << 12;

/// The largest value of a size knob (a width, head count, vocabulary,
/// context length, expert count, ...): 2^24. Far above any real model's
/// (vocabularies reach ~2^18, context lengths ~2^23), and small enough that
/// the lowering's products of two sizes cannot overflow and that the tables
/// it builds from one size (RoPE frequencies, ALiBi slopes) stay small.
pub const MAX_SIZE: usize = 1 << 24;

/// The keys that hold a size, wherever they appear (sections and `[[layer]]`
/// overrides); each must be at most [`MAX_SIZE`]. (`layers` and
/// `decoder_layers` have their own limit, [`MAX_LAYERS`].)
const SIZE_KEYS: &[&str] = &[
    "vocab_size",
    "d_model",
    "max_positions",
    "heads",
    "kv_heads",
    "head_dim",
    "sliding_window",
    "d_ff",
    "experts",
    "top_k",
    "buckets",
    "max_distance",
    "original_max_positions",
    "offset",
    "token_types",
];

/// The most parameters a spec may describe: 2^48 (about 2.8e14), over a
/// hundred times the largest published models, and far from where counting
/// them in 64 bits could overflow.
pub const MAX_PARAMETERS: f64 = (1u64 << 48) as f64;

/// One table of the tree, for pointing errors at its keys.
#[derive(Clone, Copy)]
struct View<'a> {
    node: Option<&'a Node>,
    /// Where to point when a key is absent: the table's header, or the file.
    fallback: Option<&'a Loc>,
    /// The table's dotted name in messages ("" at the top level).
    name: &'static str,
    /// For a `[[layer]]` override merged over the model's section: the
    /// override's own table, whose keys are preferred when a rule involves several.
    local: Option<&'a Node>,
}

impl<'a> View<'a> {
    fn section(root: &'a Node, name: &'static str) -> View<'a> {
        let entry = root.entry(name);
        View {
            node: entry.map(|e| &e.value),
            fallback: entry.and_then(|e| e.key_loc.as_ref()).or(root.loc.as_ref()),
            name,
            local: None,
        }
    }

    fn sub(&self, key: &'static str, name: &'static str) -> View<'a> {
        let entry = self.node.and_then(|n| n.entry(key));
        View {
            node: entry.map(|e| &e.value),
            fallback: entry.and_then(|e| e.key_loc.as_ref()).or(self.fallback),
            name,
            local: None,
        }
    }

    /// Is `key` written in some file (rather than defaulted)?
    fn has(&self, key: &str) -> bool {
        self.node.and_then(|n| n.entry(key)).is_some()
    }

    fn at(&self, key: &str) -> Option<Loc> {
        self.node
            .and_then(|n| n.entry(key))
            .and_then(|e| e.key_loc.clone())
            .or(self.fallback.cloned())
    }

    /// Where a rule about `keys` should point: the first key the override
    /// sets, else the first key written anywhere, else the table.
    fn at_any(&self, keys: &[&str]) -> Option<Loc> {
        let local = self.local;
        keys.iter()
            .find(|k| local.is_some_and(|l| l.entry(k).is_some()))
            .or_else(|| keys.iter().find(|k| self.has(k)))
            .map_or_else(|| self.at(keys[0]), |k| self.at(k))
    }

    fn file_of(&self, key: &str) -> Option<usize> {
        self.node
            .and_then(|n| n.entry(key))
            .and_then(|e| e.key_loc.as_ref())
            .map(|l| l.file)
    }

    fn key(&self, key: &str) -> String {
        if self.name.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.name)
        }
    }
}

fn err(loc: Option<Loc>, message: String, help: impl Into<String>) -> Located {
    Located::new(loc, message, Some(help.into()))
}

fn positive(x: f64) -> bool {
    x.is_finite() && x > 0.0
}

fn arch_name(a: Architecture) -> &'static str {
    match a {
        Architecture::Encoder => "encoder",
        Architecture::Decoder => "decoder",
        Architecture::EncoderDecoder => "encoder-decoder",
    }
}

fn kind_name(k: PositionKind) -> &'static str {
    match k {
        PositionKind::Learned => "learned",
        PositionKind::Sinusoidal => "sinusoidal",
        PositionKind::Rope => "rope",
        PositionKind::Alibi => "alibi",
        PositionKind::Relative => "relative",
        PositionKind::None => "none",
    }
}

fn head_name(k: HeadKind) -> &'static str {
    match k {
        HeadKind::Lm => "lm",
        HeadKind::Mlm => "mlm",
        HeadKind::Pooler => "pooler",
        HeadKind::MeanPool => "mean-pool",
        HeadKind::None => "none",
    }
}

/// Validate `spec` (deserialised from `root`), fill its derived defaults and
/// expand the per-layer knobs.
pub(crate) fn resolve_tree(mut spec: Spec, root: &Node) -> Result<ResolvedSpec, Located> {
    let top = View {
        node: Some(root),
        fallback: root.loc.as_ref(),
        name: "",
        local: None,
    };
    check_sizes(root, "")?;
    check_model(&spec, top)?;
    check_positions(&spec, View::section(root, "positions"), top)?;
    let views = BlockViews {
        attention: View::section(root, "attention"),
        mlp: View::section(root, "mlp"),
        norm: View::section(root, "norm"),
        residual: View::section(root, "residual"),
    };
    let global = Block {
        attention: spec.attention.clone(),
        mlp: spec.mlp.clone(),
        norm: spec.norm.clone(),
        residual: spec.residual.clone(),
    };
    check_block(&spec, root, &global, &views, "")?;
    let moe_sel = check_moe(&spec, View::section(root, "moe"))?;
    let overrides = check_overrides(&spec, root)?;

    // Derived defaults of the model-wide sections.
    let d = spec.d_model;
    fill_attention(&mut spec.attention, d);
    fill_norm(&mut spec.norm);
    fill_positions(&mut spec.positions);
    if spec.architecture == Architecture::EncoderDecoder {
        spec.decoder_layers = Some(spec.decoder_layers());
    }
    let mlp_d_ff = spec.mlp.d_ff;
    if let Some(m) = &mut spec.moe {
        m.d_ff = Some(m.d_ff.unwrap_or(mlp_d_ff));
        if m.layers.is_none() {
            m.layers = Some(Selector::Text("all".into()));
        }
    }
    spec.extends = None;

    let enc_dec = spec.architecture == Architecture::EncoderDecoder;
    let first = if enc_dec { "encoder layer" } else { "layer" };
    let layers = expand(
        &spec,
        root,
        &overrides,
        moe_sel.as_ref(),
        Stack::Encoder,
        spec.layers,
        first,
    )?;
    let decoder = if enc_dec {
        expand(
            &spec,
            root,
            &overrides,
            moe_sel.as_ref(),
            Stack::Decoder,
            spec.decoder_layers(),
            "decoder layer",
        )?
    } else {
        Vec::new()
    };
    check_parameter_budget(&spec, &layers, &decoder, top)?;
    Ok(ResolvedSpec {
        spec,
        layers,
        decoder,
    })
}

/// Every size knob anywhere in the tree (`path` is the dotted name of
/// `node`) is at most [`MAX_SIZE`]. Negative values and other types are left
/// to deserialisation, which already rejected them.
fn check_sizes(node: &Node, path: &str) -> Result<(), Located> {
    let join = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match &node.kind {
        Kind::Table(entries) => {
            for e in entries {
                let name = join(&e.key);
                if let Kind::Int(v) = e.value.kind
                    && SIZE_KEYS.contains(&e.key.as_str())
                    && usize::try_from(v).is_ok_and(|v| v > MAX_SIZE)
                {
                    return Err(err(
                        e.key_loc.clone().or(e.value.loc.clone()),
                        format!(
                            "`{name}` is {v}, more than the {MAX_SIZE} (2^24) kiln supports for a size"
                        ),
                        "check the value: real models' widths, head counts, vocabularies and context lengths are far smaller",
                    ));
                }
                check_sizes(&e.value, &name)?;
            }
        }
        Kind::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                check_sizes(item, &format!("{path}[{i}]"))?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// An upper bound on the parameter count (computed in f64, so it cannot
/// overflow) must stay below [`MAX_PARAMETERS`]: every later count, shape
/// product and allocation size then fits in 64 bits.
fn check_parameter_budget(
    spec: &Spec,
    layers: &[LayerSpec],
    decoder: &[LayerSpec],
    top: View<'_>,
) -> Result<(), Located> {
    let d = spec.d_model as f64;
    let mut total =
        (2 * spec.vocab_size + spec.max_positions + spec.embeddings.token_types) as f64 * d;
    for l in layers.iter().chain(decoder) {
        let a = &l.attention;
        let hd = a.head_dim(spec.d_model) as f64;
        // q, k, v, o, and as much again for cross-attention.
        total += 2.0 * d * hd * (2 * a.heads + 2 * a.kv_heads()) as f64;
        total += 3.0 * d * l.mlp.d_ff as f64;
        if let Some(m) = &l.moe {
            let expert = m.d_ff.unwrap_or(l.mlp.d_ff) as f64;
            total += m.experts as f64 * d * (3.0 * expert + 1.0);
            if let Some(sh) = &m.shared_expert {
                total += 3.0 * d * sh.d_ff as f64 + d;
            }
        }
        total += 8.0 * d;
    }
    if total > MAX_PARAMETERS {
        return Err(err(
            top.at("d_model"),
            format!(
                "this spec describes about {total:.2e} parameters, more than the {MAX_PARAMETERS:.2e} (2^48) kiln supports"
            ),
            "check `d_model`, `vocab_size`, `max_positions`, `mlp.d_ff`, `moe.experts` and `layers`: the largest published models have about 2e12",
        ));
    }
    Ok(())
}

fn check_model(spec: &Spec, top: View<'_>) -> Result<(), Located> {
    for (key, value, example) in [
        ("vocab_size", spec.vocab_size, "vocab_size = 32000"),
        ("d_model", spec.d_model, "d_model = 768"),
        ("layers", spec.layers, "layers = 12"),
        ("max_positions", spec.max_positions, "max_positions = 2048"),
    ] {
        if value == 0 {
            return Err(err(
                top.at(key),
                format!("`{key}` must be at least 1"),
                format!("set a positive size, e.g. `{example}`"),
            ));
        }
    }
    for (key, value) in [
        ("layers", Some(spec.layers)),
        ("decoder_layers", spec.decoder_layers),
    ] {
        if value.is_some_and(|n| n > MAX_LAYERS) {
            return Err(err(
                top.at(key),
                format!(
                    "`{key}` is {}, more than the {MAX_LAYERS} blocks kiln supports",
                    value.unwrap_or(0)
                ),
                "check the value: real models have at most a few hundred blocks, and kiln compiles every block as its own graph",
            ));
        }
    }
    if let Some(g) = spec.layer_groups {
        let problem = if g == 0 {
            Some("must be at least 1".to_string())
        } else if !spec.layers.is_multiple_of(g) {
            Some(format!(
                "({g}) must divide `layers` ({}): each group is an equal run of blocks",
                spec.layers
            ))
        } else if spec.architecture == Architecture::EncoderDecoder {
            Some("applies to encoder-only and decoder-only models".to_string())
        } else if !spec.layer_overrides.is_empty() {
            Some("cannot be combined with [[layer]] overrides: blocks that share parameters must be alike".to_string())
        } else if spec.moe.as_ref().is_some_and(|m| m.layers.is_some()) {
            Some(
                "cannot be combined with `moe.layers`: blocks that share parameters must be alike"
                    .to_string(),
            )
        } else {
            None
        };
        if let Some(p) = problem {
            return Err(err(
                top.at("layer_groups"),
                format!("`layer_groups` {p}"),
                "ALBERT shares one set of block parameters: `layer_groups = 1`; omit it for separate blocks",
            ));
        }
    }
    if let Some(e) = spec.embeddings.size {
        let ev = match top.node {
            Some(root) => View::section(root, "embeddings"),
            None => top,
        };
        if e == 0 {
            return Err(err(
                ev.at("size"),
                "`embeddings.size` must be at least 1".into(),
                "omit it for embeddings as wide as d_model",
            ));
        }
        if e != spec.d_model && spec.head.kind == HeadKind::Lm && spec.head.tied {
            return Err(err(
                ev.at("size"),
                format!(
                    "`embeddings.size` ({e}) differs from `d_model` ({}), so a tied `lm` head cannot reuse the embedding",
                    spec.d_model
                ),
                "untie the head (`head.tied = false`), or use the `mlm` head, which projects to the embedding width first",
            ));
        }
    }
    let arch = spec.architecture;
    match spec.decoder_layers {
        Some(_) if arch != Architecture::EncoderDecoder => {
            return Err(err(
                top.at("decoder_layers"),
                format!(
                    "`decoder_layers` only applies to encoder-decoder models, but `architecture` is \"{}\"",
                    arch_name(arch)
                ),
                "remove `decoder_layers`: a single-stack model's block count is `layers`",
            ));
        }
        Some(0) => {
            return Err(err(
                top.at("decoder_layers"),
                "`decoder_layers` must be at least 1".into(),
                "set the decoder's block count, or omit it to use `layers`",
            ));
        }
        _ => {}
    }

    let emb = top.sub("embeddings", "embeddings");
    if spec.embeddings.token_types > 0 && arch != Architecture::Encoder {
        return Err(err(
            emb.at("token_types"),
            format!(
                "`embeddings.token_types` only applies to encoder models, but `architecture` is \"{}\"",
                arch_name(arch)
            ),
            "remove `token_types` (segment embeddings are a BERT-style encoder feature)",
        ));
    }
    if let Scale::Value(v) = spec.embeddings.scale
        && !positive(v)
    {
        return Err(err(
            emb.at("scale"),
            format!("`embeddings.scale` must be greater than 0, found {v:?}"),
            "use a positive number, or \"sqrt-d-model\" / \"inv-sqrt-d-model\"",
        ));
    }

    let head = top.sub("head", "head");
    let h = &spec.head;
    if matches!(
        h.kind,
        HeadKind::Mlm | HeadKind::Pooler | HeadKind::MeanPool
    ) && arch != Architecture::Encoder
    {
        return Err(err(
            head.at("kind"),
            format!(
                "`head.kind = \"{}\"` needs `architecture = \"encoder\"`, but `architecture` is \"{}\"",
                head_name(h.kind),
                arch_name(arch)
            ),
            "decoder and encoder-decoder models use `kind = \"lm\"` (or \"none\" for hidden states)",
        ));
    }
    if h.normalize && h.kind != HeadKind::MeanPool {
        return Err(err(
            head.at("normalize"),
            format!(
                "`head.normalize` only applies to `kind = \"mean-pool\"`, but `head.kind` is \"{}\"",
                head_name(h.kind)
            ),
            "remove `normalize`, or set `kind = \"mean-pool\"`",
        ));
    }
    if !h.transform_bias && h.kind != HeadKind::Mlm {
        return Err(err(
            head.at("transform_bias"),
            format!(
                "`head.transform_bias` only applies to the \"mlm\" head, but `head.kind` is \"{}\"",
                head_name(h.kind)
            ),
            "remove `transform_bias`",
        ));
    }
    if let Some(c) = h.softcap {
        if !positive(c) {
            return Err(err(
                head.at("softcap"),
                format!("`head.softcap` must be greater than 0, found {c:?}"),
                "use a positive cap (Gemma-2: 30.0), or remove `softcap`",
            ));
        }
        if !matches!(h.kind, HeadKind::Lm | HeadKind::Mlm) {
            return Err(err(
                head.at("softcap"),
                format!(
                    "`head.softcap` only applies to heads that produce logits (\"lm\", \"mlm\"), but `head.kind` is \"{}\"",
                    head_name(h.kind)
                ),
                "remove `softcap`",
            ));
        }
    }
    if h.bias && matches!(h.kind, HeadKind::None | HeadKind::MeanPool) {
        return Err(err(
            head.at("bias"),
            format!(
                "`head.bias` needs an output projection, but `head.kind = \"{}\"` has none",
                head_name(h.kind)
            ),
            "remove `bias`",
        ));
    }
    if let Scale::Value(v) = h.input_scale
        && !positive(v)
    {
        return Err(err(
            head.at("input_scale"),
            format!("`head.input_scale` must be greater than 0, found {v:?}"),
            "use a positive number, or \"sqrt-d-model\" / \"inv-sqrt-d-model\"",
        ));
    }
    Ok(())
}

fn check_positions(spec: &Spec, pv: View<'_>, top: View<'_>) -> Result<(), Located> {
    let p = &spec.positions;
    let kind = p.kind;
    use PositionKind as K;
    let set: [(&str, bool, &[PositionKind]); 9] = [
        ("theta", p.theta.is_some(), &[K::Rope, K::Sinusoidal]),
        ("fraction", p.fraction.is_some(), &[K::Rope]),
        ("layout", p.layout.is_some(), &[K::Rope, K::Sinusoidal]),
        ("scaling", p.scaling.is_some(), &[K::Rope]),
        ("buckets", p.buckets.is_some(), &[K::Relative]),
        ("max_distance", p.max_distance.is_some(), &[K::Relative]),
        ("offset", p.offset != 0, &[K::Learned, K::Sinusoidal]),
        ("frequencies", p.frequencies.is_some(), &[K::Sinusoidal]),
        ("per_layer", p.per_layer.is_some(), &[K::Relative]),
    ];
    for (key, is_set, kinds) in set {
        if is_set && !kinds.contains(&kind) {
            let names: Vec<&str> = kinds.iter().map(|k| kind_name(*k)).collect();
            let kinds: Vec<String> = names.iter().map(|n| format!("`kind = \"{n}\"`")).collect();
            let mut help = format!("remove `{key}`, or use {}", kinds.join(" or "));
            if pv.file_of(key).is_some() && pv.file_of(key) != pv.file_of("kind") {
                help.push_str(&format!(
                    "; `{key}` is inherited from a base spec and a derived spec cannot remove keys, so extend a spec without it"
                ));
            }
            return Err(err(
                pv.at(key),
                format!(
                    "`positions.{key}` only applies to {} positions, but `positions.kind` is \"{}\"",
                    list_values(&names),
                    kind_name(kind)
                ),
                help,
            ));
        }
    }
    if let Some(t) = p.theta
        && !positive(t)
    {
        return Err(err(
            pv.at("theta"),
            format!("`positions.theta` must be greater than 0, found {t:?}"),
            "the usual base is `theta = 10000.0`",
        ));
    }
    if let Some(f) = p.fraction
        && !(f.is_finite() && f > 0.0 && f <= 1.0)
    {
        return Err(err(
            pv.at("fraction"),
            format!("`positions.fraction` must be in (0, 1], found {f:?}"),
            "it is the share of each head's channels that RoPE rotates: 1.0 for all, 0.25 for a quarter",
        ));
    }
    if kind == K::Sinusoidal
        && p.frequencies == Some(super::Frequencies::Tensor2tensor)
        && spec.d_model < 4
    {
        return Err(err(
            pv.at("frequencies"),
            format!(
                "`positions.frequencies = \"tensor2tensor\"` spaces the frequencies over d_model / 2 - 1 steps and needs `d_model` of at least 4, found {}",
                spec.d_model
            ),
            "use `frequencies = \"vaswani\"` for such a narrow model",
        ));
    }
    if kind == K::Sinusoidal && spec.d_model % 2 == 1 {
        return Err(err(
            top.at("d_model"),
            format!(
                "sinusoidal positions need an even `d_model`, found {}",
                spec.d_model
            ),
            "the table pairs a sine and a cosine channel per frequency: use an even `d_model`",
        ));
    }
    if kind == K::Relative {
        let buckets = p.buckets();
        if buckets == 0 {
            return Err(err(
                pv.at("buckets"),
                "`positions.buckets` must be at least 1".into(),
                "T5 uses `buckets = 32`",
            ));
        }
        let bidirectional = spec.architecture != Architecture::Decoder;
        if bidirectional && buckets % 2 == 1 {
            return Err(err(
                pv.at("buckets"),
                format!(
                    "`positions.buckets` must be even for a bidirectional (encoder) stack, found {buckets}"
                ),
                "the encoder splits the buckets between keys before and after the query: use an even count such as 32",
            ));
        }
        let (exact, share) = if spec.architecture == Architecture::Encoder {
            (buckets / 4, "buckets / 4")
        } else {
            (buckets / 2, "buckets / 2")
        };
        let max_distance = p.max_distance();
        if max_distance <= exact {
            return Err(err(
                pv.at("max_distance"),
                format!(
                    "`positions.max_distance` ({max_distance}) must be greater than {share} = {exact}, the distances that get a bucket each"
                ),
                "raise `max_distance` or lower `buckets` (T5: buckets = 32, max_distance = 128)",
            ));
        }
    }
    if let Some(s) = &p.scaling {
        check_scaling(s, pv.sub("scaling", "positions.scaling"))?;
    }
    Ok(())
}

fn check_scaling(s: &RopeScaling, v: View<'_>) -> Result<(), Located> {
    let pos = |key: &str, x: f64| -> Result<(), Located> {
        if positive(x) {
            Ok(())
        } else {
            Err(err(
                v.at(key),
                format!("`{}` must be greater than 0, found {x:?}", v.key(key)),
                "use a positive number",
            ))
        }
    };
    let orig = |n: usize| -> Result<(), Located> {
        if n > 0 {
            Ok(())
        } else {
            Err(err(
                v.at("original_max_positions"),
                format!("`{}` must be at least 1", v.key("original_max_positions")),
                "set it to the context length the model was pretrained with",
            ))
        }
    };
    match s {
        RopeScaling::Linear { factor } => pos("factor", *factor),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_positions,
        } => {
            pos("factor", *factor)?;
            pos("low_freq_factor", *low_freq_factor)?;
            pos("high_freq_factor", *high_freq_factor)?;
            orig(*original_max_positions)?;
            if high_freq_factor <= low_freq_factor {
                return Err(err(
                    v.at("high_freq_factor"),
                    format!(
                        "`{}` ({high_freq_factor:?}) must be greater than `{}` ({low_freq_factor:?})",
                        v.key("high_freq_factor"),
                        v.key("low_freq_factor")
                    ),
                    "Llama 3.1 uses low_freq_factor = 1.0, high_freq_factor = 4.0",
                ));
            }
            Ok(())
        }
        RopeScaling::Yarn {
            factor,
            original_max_positions,
            beta_fast,
            beta_slow,
            attention_factor,
        } => {
            pos("factor", *factor)?;
            orig(*original_max_positions)?;
            pos("beta_fast", *beta_fast)?;
            pos("beta_slow", *beta_slow)?;
            if beta_fast <= beta_slow {
                return Err(err(
                    v.at("beta_fast"),
                    format!(
                        "`{}` ({beta_fast:?}) must be greater than `{}` ({beta_slow:?})",
                        v.key("beta_fast"),
                        v.key("beta_slow")
                    ),
                    "the defaults are beta_fast = 32.0, beta_slow = 1.0",
                ));
            }
            if let Some(a) = attention_factor {
                pos("attention_factor", *a)?;
            }
            Ok(())
        }
    }
}

/// The knobs of one block, and where each section is written.
struct Block {
    attention: Attention,
    mlp: Mlp,
    norm: Norm,
    residual: Residual,
}

struct BlockViews<'a> {
    attention: View<'a>,
    mlp: View<'a>,
    norm: View<'a>,
    residual: View<'a>,
}

fn divisors(n: usize) -> String {
    if n > 4096 {
        return "a divisor".into();
    }
    let ds: Vec<String> = (1..=n)
        .filter(|d| n.is_multiple_of(*d))
        .map(|d| d.to_string())
        .collect();
    ds.join(", ")
}

/// Rules for one block's sections; `ctx` ends messages about per-layer values.
fn check_block(
    spec: &Spec,
    root: &Node,
    b: &Block,
    v: &BlockViews<'_>,
    ctx: &str,
) -> Result<(), Located> {
    let av = v.attention;
    let a = &b.attention;
    let d = spec.d_model;
    if a.heads == 0 {
        return Err(err(
            av.at("heads"),
            format!("`attention.heads` must be at least 1{ctx}"),
            "set the number of query heads, e.g. `heads = 12`",
        ));
    }
    if let Some(kv) = a.kv_heads {
        if kv == 0 {
            return Err(err(
                av.at("kv_heads"),
                format!("`attention.kv_heads` must be at least 1{ctx}"),
                "use 1 for multi-query attention, or omit it for one KV head per query head",
            ));
        }
        if kv > a.heads {
            return Err(err(
                av.at_any(&["kv_heads", "heads"]),
                format!(
                    "`attention.kv_heads` ({kv}) cannot exceed `attention.heads` ({}){ctx}",
                    a.heads
                ),
                format!(
                    "kv_heads is `heads` for multi-head attention, 1 for multi-query, or a divisor of heads for grouped-query: one of {}",
                    divisors(a.heads)
                ),
            ));
        }
        if !a.heads.is_multiple_of(kv) {
            return Err(err(
                av.at_any(&["kv_heads", "heads"]),
                format!(
                    "`attention.heads` ({}) is not a multiple of `attention.kv_heads` ({kv}){ctx}",
                    a.heads
                ),
                format!(
                    "each KV head serves heads / kv_heads query heads: pick a kv_heads that divides {} ({})",
                    a.heads,
                    divisors(a.heads)
                ),
            ));
        }
    }
    match a.head_dim {
        Some(0) => {
            return Err(err(
                av.at("head_dim"),
                format!("`attention.head_dim` must be at least 1{ctx}"),
                "omit it to use d_model / heads",
            ));
        }
        None if !d.is_multiple_of(a.heads) => {
            return Err(err(
                av.at("heads"),
                format!(
                    "`d_model` ({d}) is not divisible by `attention.heads` ({}), so the head width cannot default to d_model / heads{ctx}",
                    a.heads
                ),
                "set `attention.head_dim` explicitly, or choose a head count that divides d_model",
            ));
        }
        _ => {}
    }
    for (key, value, help) in [
        (
            "scale",
            a.scale,
            "omit `scale` for the default 1/sqrt(head_dim)",
        ),
        (
            "softcap",
            a.softcap,
            "use a positive cap (Gemma-2: 50.0), or remove `softcap`",
        ),
    ] {
        if let Some(x) = value
            && !positive(x)
        {
            return Err(err(
                av.at(key),
                format!("`attention.{key}` must be greater than 0, found {x:?}{ctx}"),
                help,
            ));
        }
    }
    if a.sliding_window == Some(0) {
        return Err(err(
            av.at("sliding_window"),
            format!("`attention.sliding_window` must be at least 1{ctx}"),
            "the window counts the query itself; remove `sliding_window` for full attention",
        ));
    }
    let p = &spec.positions;
    if p.kind == PositionKind::Rope {
        let hd = a.head_dim(d);
        let raw = (hd as f64 * p.fraction()).round() as usize;
        if raw == 0 || raw % 2 == 1 {
            let pv = View::section(root, "positions");
            let loc = if av.local.is_none() && pv.has("fraction") {
                pv.at("fraction")
            } else {
                av.at_any(&["head_dim", "heads"])
            };
            let what = if raw == 0 {
                "RoPE would rotate no channels".to_string()
            } else {
                "RoPE needs an even number of rotated channels".to_string()
            };
            return Err(err(
                loc,
                format!(
                    "{what}: round(head_dim × fraction) = round({hd} × {}) = {raw}{ctx}",
                    p.fraction()
                ),
                "choose `positions.fraction` and the head width (`attention.head_dim`, or d_model / heads) so that their product rounds to an even number of at least 2",
            ));
        }
    }

    if b.mlp.d_ff == 0 {
        return Err(err(
            v.mlp.at("d_ff"),
            format!("`mlp.d_ff` must be at least 1{ctx}"),
            "set the MLP's hidden width, e.g. `d_ff = 3072`",
        ));
    }

    let nv = v.norm;
    let n = &b.norm;
    if !positive(n.eps) {
        return Err(err(
            nv.at("eps"),
            format!("`norm.eps` must be greater than 0, found {:?}{ctx}", n.eps),
            "typical values are 1e-5 or 1e-6",
        ));
    }
    if n.kind == NormKind::Rmsnorm && n.bias == Some(true) {
        return Err(err(
            nv.at_any(&["bias", "kind"]),
            format!("`norm.bias = true` is not allowed with `kind = \"rmsnorm\"`{ctx}"),
            "RMSNorm has no bias: remove `bias`, or use `kind = \"layernorm\"`",
        ));
    }
    if !n.affine && n.bias == Some(true) {
        return Err(err(
            nv.at_any(&["bias", "affine"]),
            format!("`norm.bias = true` needs `norm.affine = true`{ctx}"),
            "a parameter-free norm (affine = false) has neither scale nor bias: remove `bias`",
        ));
    }
    if !n.weight_offset.is_finite() || (!n.affine && n.weight_offset != 0.0) {
        return Err(err(
            nv.at("weight_offset"),
            if n.affine {
                format!("`norm.weight_offset` must be a finite number{ctx}")
            } else {
                format!("`norm.weight_offset` needs `norm.affine = true`{ctx}")
            },
            "the offset is added to the learned scale: remove it for a parameter-free norm",
        ));
    }
    if !positive(b.residual.scale) {
        return Err(err(
            v.residual.at("scale"),
            format!(
                "`residual.scale` must be greater than 0, found {:?}{ctx}",
                b.residual.scale
            ),
            "omit `scale` to add each branch unscaled (Granite: residual_multiplier, e.g. 0.22)",
        ));
    }
    if !n.attention_norm && (n.placement != Placement::Pre || b.residual.parallel) {
        return Err(err(
            nv.at("attention_norm"),
            format!(
                "`norm.attention_norm = false` needs sequential pre-norm blocks (`placement = \"pre\"`, no `residual.parallel`){ctx}"
            ),
            "it removes the norm in front of attention in `x + attn(norm(x))`; other wirings have no such norm to remove",
        ));
    }
    if b.residual.parallel && n.placement != Placement::Pre {
        return Err(err(
            if v.norm.local.is_some_and(|l| l.entry("placement").is_some()) {
                v.norm.at("placement")
            } else {
                v.residual.at("parallel")
            },
            format!("`residual.parallel = true` needs `norm.placement = \"pre\"`{ctx}"),
            "a parallel block adds attn(norm(x)) and mlp(norm(x)) to x, which is pre-norm by construction",
        ));
    }
    Ok(())
}

fn check_moe(spec: &Spec, mv: View<'_>) -> Result<Option<Sel>, Located> {
    let Some(m) = &spec.moe else {
        return Ok(None);
    };
    if m.experts == 0 {
        return Err(err(
            mv.at("experts"),
            "`moe.experts` must be at least 1".into(),
            "set the number of routed experts, e.g. `experts = 8`",
        ));
    }
    if m.top_k == 0 || m.top_k > m.experts {
        return Err(err(
            mv.at("top_k"),
            format!(
                "`moe.top_k` must be between 1 and `moe.experts` ({}), found {}",
                m.experts, m.top_k
            ),
            "top_k is how many experts each token is routed to, e.g. `top_k = 2`",
        ));
    }
    if m.d_ff == Some(0) {
        return Err(err(
            mv.at("d_ff"),
            "`moe.d_ff` must be at least 1".into(),
            "omit it to use `mlp.d_ff`",
        ));
    }
    if let Some(s) = &m.shared_expert
        && s.d_ff == 0
    {
        let sv = mv.sub("shared_expert", "moe.shared_expert");
        return Err(err(
            sv.at("d_ff"),
            "`moe.shared_expert.d_ff` must be at least 1".into(),
            "set the shared expert's hidden width",
        ));
    }
    match &m.layers {
        None => Ok(None),
        Some(sel) => {
            let (n, owner) = stack_size(spec, None);
            let parsed = Sel::parse(sel)
                .and_then(|s| s.check(n, owner).map(|()| s))
                .map_err(|(msg, help)| {
                    err(mv.at("layers"), format!("`moe.layers`: {msg}"), help)
                })?;
            Ok(Some(parsed))
        }
    }
}

/// Layers in the stack(s) a selector applies to, and how to name them.
fn stack_size(spec: &Spec, stack: Option<Stack>) -> (usize, &'static str) {
    let enc_dec = spec.architecture == Architecture::EncoderDecoder;
    match (enc_dec, stack) {
        (false, _) => (spec.layers, "the model"),
        (true, Some(Stack::Encoder)) => (spec.layers, "the encoder"),
        (true, Some(Stack::Decoder)) => (spec.decoder_layers(), "the decoder"),
        (true, None) if spec.decoder_layers() > spec.layers => {
            (spec.decoder_layers(), "the decoder")
        }
        (true, None) => (spec.layers, "the encoder"),
    }
}

/// A checked `[[layer]]` override.
struct Override<'a> {
    index: usize,
    sel: Sel,
    stack: Option<Stack>,
    node: &'a Node,
}

fn check_overrides<'a>(spec: &Spec, root: &'a Node) -> Result<Vec<Override<'a>>, Located> {
    let nodes: &[Node] = match root.get("layer").map(|n| &n.kind) {
        Some(super::node::Kind::Array(a)) => a,
        _ => &[],
    };
    let mut out = Vec::new();
    for (j, (o, node)) in spec.layer_overrides.iter().zip(nodes).enumerate() {
        let ov = View {
            node: Some(node),
            fallback: node.loc.as_ref(),
            name: "layer",
            local: None,
        };
        if o.stack.is_some() && spec.architecture != Architecture::EncoderDecoder {
            return Err(err(
                ov.at("stack"),
                format!(
                    "`layer[{j}].stack` only applies to encoder-decoder models, but `architecture` is \"{}\"",
                    arch_name(spec.architecture)
                ),
                "remove `stack`: this model has a single stack of layers",
            ));
        }
        let (n, owner) = stack_size(spec, o.stack);
        let sel = Sel::parse(&o.select)
            .and_then(|s| s.check(n, owner).map(|()| s))
            .map_err(|(msg, help)| {
                err(ov.at("select"), format!("`layer[{j}].select`: {msg}"), help)
            })?;

        for (section, key) in MODEL_WIDE {
            if let Some(e) = node.get(section).and_then(|s| s.entry(key)) {
                return Err(err(
                    e.key_loc.clone(),
                    format!(
                        "`{section}.{key}` describes the whole model and cannot be set per layer"
                    ),
                    format!("move `{key}` to the top-level [{section}] table"),
                ));
            }
        }
        if let Some(pn) = node.get("positions") {
            let pv = View::section(node, "positions");
            if spec.positions.kind != PositionKind::Rope {
                return Err(err(
                    ov.at("positions"),
                    format!(
                        "`layer[{j}].positions` applies to RoPE models only, but `positions.kind` is \"{}\"",
                        kind_name(spec.positions.kind)
                    ),
                    "remove the override: only a RoPE model's rotation can differ between layers",
                ));
            }
            for e in pn.entries() {
                if !LAYER_POSITION_KEYS.contains(&e.key.as_str()) {
                    return Err(err(
                        pv.at(&e.key),
                        format!("`layer[{j}].positions.{}` cannot be set per layer", e.key),
                        "per layer, only `kind` (\"rope\" or \"none\"), `theta`, `fraction` and `scaling` can differ",
                    ));
                }
            }
            layer_positions(spec, root, &[(j, node)])?;
        }
        let ctx = format!(" (in layers selected by `layer[{j}]`)");
        let (block, merged) = merged_block(root, &[(j, node)])?;
        let views = block_views(&merged, node);
        check_block(spec, root, &block, &views, &ctx)?;
        out.push(Override {
            index: j,
            sel,
            stack: o.stack,
            node,
        });
    }
    Ok(out)
}

/// Keys a `[[layer]] positions` override may set.
const LAYER_POSITION_KEYS: [&str; 4] = ["kind", "theta", "fraction", "scaling"];

/// The positions of a layer the `overrides` select: the model's `[positions]`
/// with their `positions` tables merged over it, checked like the model's
/// (a RoPE model's layers are `rope` or `none`), with derived defaults filled.
fn layer_positions(
    spec: &Spec,
    root: &Node,
    overrides: &[(usize, &Node)],
) -> Result<Positions, Located> {
    let mut p = spec.positions.clone();
    if overrides.iter().all(|(_, o)| o.get("positions").is_none()) {
        fill_positions(&mut p);
        return Ok(p);
    }
    let mut t = root
        .get("positions")
        .cloned()
        .unwrap_or_else(|| Node::table(None));
    let mut last = root;
    for (_, o) in overrides {
        if let Some(s) = o.get("positions") {
            merge(&mut t, s.clone());
            last = o;
        }
    }
    let pv = View::section(last, "positions");
    let path = match overrides {
        [(j, _)] => format!("layer[{j}].positions"),
        _ => "positions".to_string(),
    };
    let kind: PositionKind = match t.get("kind") {
        Some(k) => from_node(k, &format!("{path}.kind"), pv.at("kind"))?,
        None => spec.positions.kind,
    };
    match kind {
        PositionKind::None => Ok(Positions {
            kind: PositionKind::None,
            offset: 0,
            theta: None,
            fraction: None,
            layout: None,
            scaling: None,
            buckets: None,
            max_distance: None,
            frequencies: None,
            per_layer: None,
        }),
        PositionKind::Rope => {
            p = from_node(&t, &path, None)?;
            let mut s = spec.clone();
            s.positions = p.clone();
            check_positions(&s, pv, pv)?;
            fill_positions(&mut p);
            Ok(p)
        }
        other => Err(err(
            pv.at("kind"),
            format!(
                "`{path}.kind` is \"{}\", but a RoPE model's layers use `kind = \"rope\"` or `kind = \"none\"`",
                kind_name(other)
            ),
            "use `kind = \"none\"` for a layer without rotary embeddings",
        )),
    }
}

/// The four block sections of the model with `overrides` merged over them,
/// deserialised, plus the merged trees (for locations).
fn merged_block(root: &Node, overrides: &[(usize, &Node)]) -> Result<(Block, [Node; 4]), Located> {
    let mut trees: [Node; 4] = std::array::from_fn(|_| Node::table(None));
    for (i, section) in BLOCK_SECTIONS.iter().enumerate() {
        let mut t = root
            .get(section)
            .cloned()
            .unwrap_or_else(|| Node::table(None));
        for (_, o) in overrides {
            if let Some(s) = o.get(section) {
                merge(&mut t, s.clone());
            }
        }
        trees[i] = t;
    }
    // Errors here can only come from override keys, so name the override.
    let path = |s: &str| match overrides {
        [(j, _)] => format!("layer[{j}].{s}"),
        _ => s.to_string(),
    };
    let block = Block {
        attention: from_node(&trees[0], &path("attention"), None)?,
        mlp: from_node(&trees[1], &path("mlp"), None)?,
        norm: from_node(&trees[2], &path("norm"), None)?,
        residual: from_node(&trees[3], &path("residual"), None)?,
    };
    Ok((block, trees))
}

/// Views of merged block sections; absent keys point at the override.
fn block_views<'a>(merged: &'a [Node; 4], fallback: &'a Node) -> BlockViews<'a> {
    let view = |i: usize, name: &'static str| View {
        node: Some(&merged[i]),
        fallback: fallback
            .entry(name)
            .and_then(|e| e.key_loc.as_ref())
            .or(fallback.loc.as_ref()),
        name,
        local: fallback.get(name),
    };
    BlockViews {
        attention: view(0, "attention"),
        mlp: view(1, "mlp"),
        norm: view(2, "norm"),
        residual: view(3, "residual"),
    }
}

fn expand(
    spec: &Spec,
    root: &Node,
    overrides: &[Override<'_>],
    moe_sel: Option<&Sel>,
    stack: Stack,
    n: usize,
    noun: &str,
) -> Result<Vec<LayerSpec>, Located> {
    let mut cache: HashMap<Vec<usize>, LayerSpec> = HashMap::new();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let picked: Vec<(usize, &Node)> = overrides
            .iter()
            .filter(|o| o.stack.is_none_or(|s| s == stack) && o.sel.matches(i, n))
            .map(|o| (o.index, o.node))
            .collect();
        let key: Vec<usize> = picked.iter().map(|(j, _)| *j).collect();
        let mut layer = match cache.get(&key) {
            Some(l) => l.clone(),
            None => {
                let (mut block, merged) = merged_block(root, &picked)?;
                if picked.len() > 1 {
                    let fallback = picked.last().map(|(_, n)| *n).unwrap_or(root);
                    let views = block_views(&merged, fallback);
                    check_block(spec, root, &block, &views, &format!(" (in {noun} {i})"))?;
                }
                fill_attention(&mut block.attention, spec.d_model);
                fill_norm(&mut block.norm);
                let positions = layer_positions(spec, root, &picked)?;
                let l = LayerSpec {
                    attention: block.attention,
                    mlp: block.mlp,
                    norm: block.norm,
                    residual: block.residual,
                    positions,
                    moe: None,
                };
                cache.insert(key, l.clone());
                l
            }
        };
        layer.moe = match (&spec.moe, moe_sel) {
            (Some(m), Some(sel)) if sel.matches(i, n) => Some(m.clone()),
            (Some(m), None) => Some(m.clone()),
            _ => None,
        };
        out.push(layer);
    }
    Ok(out)
}

pub(crate) fn fill_attention(a: &mut Attention, d_model: usize) {
    a.head_dim = Some(a.head_dim(d_model));
    a.kv_heads = Some(a.kv_heads());
    a.scale = Some(a.scale(d_model));
}

pub(crate) fn fill_norm(n: &mut Norm) {
    n.bias = Some(n.has_bias());
}

pub(crate) fn fill_positions(p: &mut Positions) {
    match p.kind {
        PositionKind::Rope => {
            p.theta = Some(p.theta());
            p.fraction = Some(p.fraction());
            p.layout = Some(p.layout());
        }
        PositionKind::Sinusoidal => {
            p.theta = Some(p.theta());
            p.layout = Some(p.layout());
        }
        PositionKind::Relative => {
            p.buckets = Some(p.buckets());
            p.max_distance = Some(p.max_distance());
        }
        _ => {}
    }
    if let Some(RopeScaling::Yarn {
        factor,
        attention_factor,
        ..
    }) = &mut p.scaling
        && attention_factor.is_none()
    {
        *attention_factor = Some(0.1 * factor.ln() + 1.0);
    }
}
