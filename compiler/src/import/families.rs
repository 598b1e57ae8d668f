//! One builder per HF `model_type`: config fields → a kiln [`Spec`].
//!
//! Each builder reads every field the HF modeling code reads that changes the
//! numbers or the parameter shapes, taking the file's value when it has one
//! and the HF (transformers 5.23) class default otherwise — every such default
//! is written next to the read, and recorded so `kiln import` can list it.
//! Values HF hard-codes (BART's LayerNorm eps, Qwen2's Q/K/V biases, ...) are
//! commented where they are set.

use serde_json::Value;

use super::cfg::{Cfg, Result, fmt_f64, show};
use super::rope::{self, RopeKeys};
use crate::spec::*;

// ---------------------------------------------------------------------------
// Shared pieces
// ---------------------------------------------------------------------------

/// HF activation name → kiln activation; anything else is an error naming `field`.
pub(crate) fn activation(cfg: &Cfg, field: &str, name: &str) -> Result<Activation> {
    Ok(match name {
        "gelu" | "gelu_python" => Activation::Gelu,
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" | "gelu_accurate" | "gelu_python_tanh" => {
            Activation::GeluTanh
        }
        "silu" | "swish" => Activation::Silu,
        "relu" => Activation::Relu,
        other => {
            return Err(cfg.err(
                field,
                format!(
                    "= {other:?} is not an activation kiln supports (relu; gelu, gelu_python → exact gelu; \
                     gelu_new, gelu_pytorch_tanh, gelu_fast, gelu_accurate, gelu_python_tanh → gelu-tanh; silu, swish → silu)"
                ),
            ));
        }
    })
}

fn attention(heads: usize) -> Attention {
    Attention {
        heads,
        kv_heads: None,
        head_dim: None,
        qkv_bias: false,
        out_bias: false,
        qk_norm: QkNorm::None,
        scale: None,
        softcap: None,
        sliding_window: None,
    }
}

fn learned(offset: usize) -> Positions {
    Positions {
        kind: PositionKind::Learned,
        offset,
        theta: None,
        fraction: None,
        layout: None,
        scaling: None,
        buckets: None,
        max_distance: None,
    }
}

fn mlp(d_ff: usize, activation: Activation, gated: bool, bias: bool) -> Mlp {
    Mlp {
        d_ff,
        activation,
        gated,
        bias,
    }
}

fn norm(kind: NormKind, eps: f64, placement: Placement) -> Norm {
    Norm {
        kind,
        eps,
        placement,
        ..Norm::default()
    }
}

/// Post-norm LayerNorm with an embedding norm and no final norm (BERT family, BART).
fn post_layernorm(eps: f64) -> Norm {
    Norm {
        embedding_norm: true,
        final_norm: false,
        ..norm(NormKind::Layernorm, eps, Placement::Post)
    }
}

struct Sizes {
    architecture: Architecture,
    vocab_size: usize,
    d_model: usize,
    layers: usize,
    max_positions: usize,
}

fn spec(s: Sizes, attention: Attention, norm: Norm, positions: Positions, mlp: Mlp) -> Spec {
    Spec {
        name: String::new(),
        extends: None,
        architecture: s.architecture,
        vocab_size: s.vocab_size,
        d_model: s.d_model,
        layers: s.layers,
        decoder_layers: None,
        max_positions: s.max_positions,
        attention,
        norm,
        residual: Residual::default(),
        positions,
        mlp,
        moe: None,
        embeddings: Embeddings::default(),
        head: Head::default(),
        layer_overrides: Vec::new(),
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

/// The requested head if this family has it, else its default (the first of `allowed`).
fn pick_head(
    cfg: &mut Cfg,
    model_type: &str,
    requested: Option<HeadKind>,
    allowed: &[HeadKind],
) -> Result<HeadKind> {
    let names: Vec<&str> = allowed.iter().map(|k| head_name(*k)).collect();
    match requested {
        None => {
            cfg.note(format!(
                "head: \"{}\", the default for model_type {model_type:?} (other choices: {})",
                names[0],
                names[1..].join(", ")
            ));
            Ok(allowed[0])
        }
        Some(h) if allowed.contains(&h) => Ok(h),
        Some(h) => Err(super::ImportError::new(
            cfg.file(),
            None,
            format!(
                "head \"{}\" is not available for model_type {model_type:?} (choose from: {})",
                head_name(h),
                names.join(", ")
            ),
        )),
    }
}

fn positive(cfg: &Cfg, key: &str, x: usize) -> Result<usize> {
    if x == 0 {
        Err(cfg.err(key, "must be positive, found 0"))
    } else {
        Ok(x)
    }
}

/// Per-head width: `explicit` when the file decouples it, else `hidden / heads` (which must divide).
fn head_dim(
    cfg: &Cfg,
    hidden: (&str, usize),
    heads: (&str, usize),
    explicit: Option<(&str, usize)>,
) -> Result<usize> {
    positive(cfg, heads.0, heads.1)?;
    positive(cfg, hidden.0, hidden.1)?;
    match explicit {
        Some((k, hd)) => positive(cfg, k, hd),
        None if !hidden.1.is_multiple_of(heads.1) => Err(cfg.err(
            heads.0,
            format!(
                "= {} does not divide {} = {} (each head would have a fractional width)",
                heads.1, hidden.0, hidden.1
            ),
        )),
        None => Ok(hidden.1 / heads.1),
    }
}

fn check_kv_heads(cfg: &Cfg, key: &str, kv: usize, heads: usize) -> Result<()> {
    if kv == 0 || !heads.is_multiple_of(kv) {
        return Err(cfg.err(
            key,
            format!("= {kv} must be positive and divide num_attention_heads = {heads} (grouped-query attention)"),
        ));
    }
    Ok(())
}

fn reject_true(cfg: &Cfg, key: &str, why: &str) -> Result<()> {
    if cfg.bool_opt(key)? == Some(true) {
        return Err(cfg.err(key, format!("= true is not supported: {why}")));
    }
    Ok(())
}

/// `layer_types` (transformers 5): per layer, sliding (`true`) or full attention.
fn layer_types(cfg: &Cfg, layers: usize) -> Result<Option<Vec<bool>>> {
    let Some(v) = cfg.present("layer_types") else {
        return Ok(None);
    };
    let Some(arr) = v.as_array() else {
        return Err(cfg.err(
            "layer_types",
            format!("must be an array of strings, found {}", show(v)),
        ));
    };
    if arr.len() != layers {
        return Err(cfg.err(
            "layer_types",
            format!("has {} entries but num_hidden_layers = {layers}", arr.len()),
        ));
    }
    arr.iter()
        .enumerate()
        .map(|(i, t)| match t.as_str() {
            Some("sliding_attention") => Ok(true),
            Some("full_attention") => Ok(false),
            _ => Err(cfg.err(
                &format!("layer_types[{i}]"),
                format!(
                    "= {} is not supported (kiln expresses \"full_attention\" and \"sliding_attention\")",
                    show(t)
                ),
            )),
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// Place a sliding window on the layers `sliding` marks: model-wide when every
/// layer has it, else one `[[layer]]` override with the tightest selector.
fn place_window(spec: &mut Spec, window: Option<usize>, sliding: &[bool]) {
    let Some(w) = window else { return };
    let picked: Vec<usize> = (0..sliding.len()).filter(|&i| sliding[i]).collect();
    let n = sliding.len();
    if picked.is_empty() {
        return;
    }
    if picked.len() == n {
        spec.attention.sliding_window = Some(w);
        return;
    }
    let even: Vec<usize> = (0..n).step_by(2).collect();
    let odd: Vec<usize> = (1..n).step_by(2).collect();
    let select = if picked == even {
        Selector::Text("even".into())
    } else if picked == odd {
        Selector::Text("odd".into())
    } else if picked == (picked[0]..n).collect::<Vec<_>>() {
        Selector::Text(format!("{}..", picked[0]))
    } else {
        Selector::List(picked)
    };
    let mut t = toml::Table::new();
    t.insert(
        "sliding_window".into(),
        toml::Value::Integer(i64::try_from(w).unwrap_or(i64::MAX)),
    );
    spec.layer_overrides.push(LayerOverride {
        select,
        stack: None,
        attention: Some(t),
        mlp: None,
        norm: None,
        residual: None,
    });
}

fn sliding_window(cfg: &Cfg, key: &str, w: Option<usize>) -> Result<Option<usize>> {
    if w == Some(0) {
        return Err(cfg.err(key, "= 0 would hide every key; use null for full attention"));
    }
    Ok(w)
}

fn lm_head(tied: bool) -> Head {
    Head {
        kind: HeadKind::Lm,
        tied,
        ..Head::default()
    }
}

fn bare_head(kind: HeadKind) -> Head {
    Head {
        kind,
        tied: false,
        ..Head::default()
    }
}

// ---------------------------------------------------------------------------
// Encoders: bert, roberta, distilbert
// ---------------------------------------------------------------------------

/// BERT and RoBERTa (`BertConfig`/`RobertaConfig` defaults; they differ in vocab
/// size and pad token only).
pub(crate) fn bert_like(cfg: &mut Cfg, model_type: &str, head: Option<HeadKind>) -> Result<Spec> {
    let roberta = model_type == "roberta";
    let vocab = cfg.usize_or("vocab_size", if roberta { 50265 } else { 30522 })?;
    let d = cfg.usize_or("hidden_size", 768)?;
    let layers = cfg.usize_or("num_hidden_layers", 12)?;
    let heads = cfg.usize_or("num_attention_heads", 12)?;
    let d_ff = cfg.usize_or("intermediate_size", 3072)?;
    let act_name = cfg.str_or("hidden_act", "gelu")?;
    let act = activation(cfg, "hidden_act", act_name)?;
    let max_pe = cfg.usize_or("max_position_embeddings", 512)?;
    let token_types = cfg.usize_or("type_vocab_size", 2)?;
    // Both classes default to 1e-12 (roberta-base's file says 1e-5).
    let eps = cfg.f64_or("layer_norm_eps", 1e-12)?;
    if let Some(p) = cfg.str_opt("position_embedding_type")?
        && p != "absolute"
    {
        return Err(cfg.err(
            "position_embedding_type",
            format!("= {p:?} is not supported (relative-key attention scores); kiln imports \"absolute\" learned positions only"),
        ));
    }
    reject_true(
        cfg,
        "is_decoder",
        "a causal BERT decoder is not an encoder; kiln imports the bidirectional encoder",
    )?;
    reject_true(
        cfg,
        "add_cross_attention",
        "BERT with cross-attention layers is not supported",
    )?;
    head_dim(
        cfg,
        ("hidden_size", d),
        ("num_attention_heads", heads),
        None,
    )?;

    let (offset, max_positions) = if roberta {
        // RoBERTa position ids start at padding_idx + 1 (HF `create_position_ids_from_input_ids`).
        let pad = cfg
            .usize_nullable_or("pad_token_id", Some(1))?
            .ok_or_else(|| {
                cfg.err(
                    "pad_token_id",
                    "is null, but RoBERTa numbers positions from padding_idx + 1",
                )
            })?;
        let offset = pad
            .checked_add(1)
            .ok_or_else(|| cfg.err("pad_token_id", format!("= {pad} is too large")))?;
        if max_pe <= offset {
            return Err(cfg.err(
                "max_position_embeddings",
                format!("= {max_pe} leaves no usable positions after the offset pad_token_id + 1 = {offset}"),
            ));
        }
        cfg.note(format!(
            "positions offset by pad_token_id + 1 = {offset}: max_positions = {max_pe} - {offset} = {}",
            max_pe - offset
        ));
        (offset, max_pe - offset)
    } else {
        (0, max_pe)
    };

    let mut a = attention(heads);
    a.qkv_bias = true;
    a.out_bias = true;
    let mut s = spec(
        Sizes {
            architecture: Architecture::Encoder,
            vocab_size: vocab,
            d_model: d,
            layers,
            max_positions,
        },
        a,
        post_layernorm(eps),
        learned(offset),
        mlp(d_ff, act, false, true),
    );
    s.embeddings.token_types = token_types;
    let allowed = [
        HeadKind::Pooler,
        HeadKind::Mlm,
        HeadKind::MeanPool,
        HeadKind::None,
    ];
    s.head = match pick_head(cfg, model_type, head, &allowed)? {
        HeadKind::Mlm => {
            if roberta && act != Activation::Gelu {
                return Err(cfg.err(
                    "hidden_act",
                    format!(
                        "= {act_name:?}, but RoBERTa's MLM head always applies exact gelu while kiln's uses the \
                         model's activation; import with another head"
                    ),
                ));
            }
            // BertLMPredictionHead / RobertaLMHead: decoder bias; tied unless the file says otherwise.
            let tied = cfg.bool_or("tie_word_embeddings", true)?;
            Head {
                kind: HeadKind::Mlm,
                tied,
                bias: true,
                ..Head::default()
            }
        }
        k => bare_head(k),
    };
    Ok(s)
}

/// DistilBERT (`DistilBertConfig` defaults; `dim`/`n_layers`/`n_heads` with their
/// `hidden_size`/`num_hidden_layers`/`num_attention_heads` aliases).
pub(crate) fn distilbert(cfg: &mut Cfg, head: Option<HeadKind>) -> Result<Spec> {
    let vocab = cfg.usize_or("vocab_size", 30522)?;
    let d = cfg.usize_alias_or(&["dim", "hidden_size"], 768)?;
    let layers = cfg.usize_alias_or(&["n_layers", "num_hidden_layers"], 6)?;
    let heads = cfg.usize_alias_or(&["n_heads", "num_attention_heads"], 12)?;
    let d_ff = cfg.usize_or("hidden_dim", 4 * 768)?;
    let act_name = cfg.str_or("activation", "gelu")?;
    let act = activation(cfg, "activation", act_name)?;
    let max_pe = cfg.usize_or("max_position_embeddings", 512)?;
    if cfg.bool_or("sinusoidal_pos_embds", false)? {
        cfg.note(
            "sinusoidal_pos_embds = true: HF fills the position table with fixed sinusoids and stores it \
             in the checkpoint, so it is imported as a learned table (load it from the weights)",
        );
    }
    head_dim(cfg, ("dim", d), ("n_heads", heads), None)?;
    let mut a = attention(heads);
    a.qkv_bias = true;
    a.out_bias = true;
    // DistilBERT hard-codes LayerNorm eps = 1e-12 (embeddings, blocks, MLM head).
    let mut s = spec(
        Sizes {
            architecture: Architecture::Encoder,
            vocab_size: vocab,
            d_model: d,
            layers,
            max_positions: max_pe,
        },
        a,
        post_layernorm(1e-12),
        learned(0),
        mlp(d_ff, act, false, true),
    );
    let allowed = [HeadKind::None, HeadKind::Mlm, HeadKind::MeanPool];
    s.head = match pick_head(cfg, "distilbert", head, &allowed)? {
        HeadKind::Mlm => Head {
            kind: HeadKind::Mlm,
            tied: cfg.bool_or("tie_word_embeddings", true)?,
            bias: true, // vocab_projector has a bias
            ..Head::default()
        },
        k => bare_head(k),
    };
    Ok(s)
}

// ---------------------------------------------------------------------------
// Decoders
// ---------------------------------------------------------------------------

fn decoder_head(
    cfg: &mut Cfg,
    model_type: &str,
    head: Option<HeadKind>,
    tie_default: bool,
) -> Result<Head> {
    Ok(
        match pick_head(cfg, model_type, head, &[HeadKind::Lm, HeadKind::None])? {
            HeadKind::Lm => lm_head(cfg.bool_or("tie_word_embeddings", tie_default)?),
            k => bare_head(k),
        },
    )
}

/// GPT-2 (`GPT2Config` defaults and its `attribute_map` aliases).
pub(crate) fn gpt2(cfg: &mut Cfg, head: Option<HeadKind>) -> Result<Spec> {
    let vocab = cfg.usize_or("vocab_size", 50257)?;
    let d = cfg.usize_alias_or(&["n_embd", "hidden_size"], 768)?;
    let layers = cfg.usize_alias_or(&["n_layer", "num_hidden_layers"], 12)?;
    let heads = cfg.usize_alias_or(&["n_head", "num_attention_heads"], 12)?;
    let max_pe = cfg.usize_alias_or(&["n_positions", "max_position_embeddings"], 1024)?;
    // n_inner: null (the class default) → 4 * n_embd.
    let d_ff = match cfg.usize_nullable_or("n_inner", None)? {
        Some(x) => x,
        None => {
            let x = d
                .checked_mul(4)
                .ok_or_else(|| cfg.err("n_embd", format!("= {d} is too large")))?;
            cfg.note(format!("n_inner = null: d_ff = 4 * n_embd = {x}"));
            x
        }
    };
    let act_name = cfg.str_or("activation_function", "gelu_new")?;
    let act = activation(cfg, "activation_function", act_name)?;
    let eps = cfg.f64_or("layer_norm_epsilon", 1e-5)?;
    let scale_weights = cfg.bool_or("scale_attn_weights", true)?;
    reject_true(
        cfg,
        "scale_attn_by_inverse_layer_idx",
        "it divides each layer's scores by (layer index + 1), a per-layer scale kiln does not express",
    )?;
    reject_true(
        cfg,
        "add_cross_attention",
        "GPT-2 with cross-attention layers is not supported",
    )?;
    if cfg.bool_opt("reorder_and_upcast_attn")? == Some(true) {
        cfg.note("reorder_and_upcast_attn = true only changes fp16 rounding; kiln computes in f32");
    }
    head_dim(cfg, ("n_embd", d), ("n_head", heads), None)?;
    let mut a = attention(heads);
    a.qkv_bias = true;
    a.out_bias = true;
    if !scale_weights {
        cfg.note("scale_attn_weights = false: attention scores are not divided by sqrt(head_dim)");
        a.scale = Some(1.0);
    }
    let mut s = spec(
        Sizes {
            architecture: Architecture::Decoder,
            vocab_size: vocab,
            d_model: d,
            layers,
            max_positions: max_pe,
        },
        a,
        norm(NormKind::Layernorm, eps, Placement::Pre),
        learned(0),
        mlp(d_ff, act, false, true),
    );
    s.head = decoder_head(cfg, "gpt2", head, true)?;
    Ok(s)
}

/// GPT-NeoX / Pythia (`GPTNeoXConfig` defaults).
pub(crate) fn gpt_neox(cfg: &mut Cfg, head: Option<HeadKind>) -> Result<Spec> {
    let vocab = cfg.usize_or("vocab_size", 50432)?;
    let d = cfg.usize_or("hidden_size", 6144)?;
    let layers = cfg.usize_or("num_hidden_layers", 44)?;
    let heads = cfg.usize_or("num_attention_heads", 64)?;
    let d_ff = cfg.usize_or("intermediate_size", 24576)?;
    let act_name = cfg.str_or("hidden_act", "gelu")?;
    let act = activation(cfg, "hidden_act", act_name)?;
    let max_pe = cfg.usize_or("max_position_embeddings", 2048)?;
    let eps = cfg.f64_or("layer_norm_eps", 1e-5)?;
    let parallel = cfg.bool_or("use_parallel_residual", true)?;
    let bias = cfg.bool_or("attention_bias", true)?;
    let hd = head_dim(
        cfg,
        ("hidden_size", d),
        ("num_attention_heads", heads),
        None,
    )?;
    if let Some(x) = cfg.usize_opt("head_dim")?
        && x != hd
    {
        return Err(cfg.err(
            "head_dim",
            format!("= {x}, but GPT-NeoX always uses hidden_size / num_attention_heads = {hd}"),
        ));
    }
    // GPT-NeoX reads its base from `rotary_emb_base` and its fraction from
    // `rotary_pct` (defaults 10000 and 0.25), not from the top-level
    // `rope_theta` / `partial_rotary_factor`.
    let keys = RopeKeys {
        theta: &["rotary_emb_base"],
        default_theta: 10000.0,
        partial: &["rotary_pct"],
        default_partial: Some(0.25),
        ignored_theta: &["rope_theta"],
        ignored_partial: &["partial_rotary_factor"],
    };
    let positions = rope::rope(cfg, &keys, hd, max_pe)?;
    let mut a = attention(heads);
    a.qkv_bias = bias;
    a.out_bias = bias;
    let mut s = spec(
        Sizes {
            architecture: Architecture::Decoder,
            vocab_size: vocab,
            d_model: d,
            layers,
            max_positions: max_pe,
        },
        a,
        norm(NormKind::Layernorm, eps, Placement::Pre),
        positions,
        mlp(d_ff, act, false, true), // dense_h_to_4h / dense_4h_to_h always have biases
    );
    // Parallel: x + attn(ln1(x)) + mlp(ln2(x)), two norms.
    s.residual = Residual {
        parallel,
        shared_norm: !parallel,
    };
    s.head = decoder_head(cfg, "gpt_neox", head, false)?;
    Ok(s)
}

/// Class defaults of the Llama-style families (transformers 5.23).
struct LlamaDefaults {
    vocab: usize,
    hidden: usize,
    inter: usize,
    layers: usize,
    heads: usize,
    /// `num_key_value_heads` class default (`None`: equal to the heads).
    kv: Option<usize>,
    max_pe: usize,
    eps: f64,
    theta: f64,
    tie: bool,
}

/// The fields every Llama-style config shares.
struct LlamaCore {
    vocab: usize,
    d: usize,
    d_ff: usize,
    layers: usize,
    heads: usize,
    kv: usize,
    head_dim: usize,
    explicit_head_dim: bool,
    max_pe: usize,
    eps: f64,
    act: Activation,
}

fn llama_core(
    cfg: &mut Cfg,
    df: &LlamaDefaults,
    default_head_dim: Option<usize>,
) -> Result<LlamaCore> {
    let vocab = cfg.usize_or("vocab_size", df.vocab)?;
    let d = cfg.usize_or("hidden_size", df.hidden)?;
    let d_ff = cfg.usize_or("intermediate_size", df.inter)?;
    let layers = cfg.usize_or("num_hidden_layers", df.layers)?;
    if layers > MAX_LAYERS {
        // Checked here, before per-layer attention types are laid out.
        return Err(cfg.err(
            "num_hidden_layers",
            format!("= {layers} is more than the {MAX_LAYERS} blocks kiln supports"),
        ));
    }
    let heads = cfg.usize_or("num_attention_heads", df.heads)?;
    // null → num_attention_heads (MHA), as every class's __post_init__ does.
    let kv = cfg
        .usize_nullable_or("num_key_value_heads", df.kv)?
        .unwrap_or(heads);
    // head_dim: null or absent → hidden_size / num_attention_heads (Gemma's class default is 256).
    let explicit = match default_head_dim {
        Some(def) => cfg.usize_nullable_or("head_dim", Some(def))?,
        None => cfg.usize_opt("head_dim")?,
    };
    let hd = head_dim(
        cfg,
        ("hidden_size", d),
        ("num_attention_heads", heads),
        explicit.map(|x| ("head_dim", x)),
    )?;
    check_kv_heads(cfg, "num_key_value_heads", kv, heads)?;
    let max_pe = cfg.usize_or("max_position_embeddings", df.max_pe)?;
    let eps = cfg.f64_or("rms_norm_eps", df.eps)?;
    let act = if default_head_dim.is_some() {
        Activation::GeluTanh // Gemma families read their activation themselves
    } else {
        let name = cfg.str_or("hidden_act", "silu")?;
        activation(cfg, "hidden_act", name)?
    };
    Ok(LlamaCore {
        vocab,
        d,
        d_ff,
        layers,
        heads,
        kv,
        head_dim: hd,
        explicit_head_dim: explicit.is_some(),
        max_pe,
        eps,
        act,
    })
}

fn llama_spec(c: &LlamaCore, positions: Positions, norm_: Norm, act: Activation) -> Spec {
    let mut a = attention(c.heads);
    a.kv_heads = Some(c.kv);
    if c.explicit_head_dim {
        a.head_dim = Some(c.head_dim);
    }
    spec(
        Sizes {
            architecture: Architecture::Decoder,
            vocab_size: c.vocab,
            d_model: c.d,
            layers: c.layers,
            max_positions: c.max_pe,
        },
        a,
        norm_,
        positions,
        mlp(c.d_ff, act, true, false), // SwiGLU/GeGLU: down(act(gate(x)) * up(x))
    )
}

/// Llama, Mistral, Mixtral and Qwen2.
pub(crate) fn llama_like(cfg: &mut Cfg, model_type: &str, head: Option<HeadKind>) -> Result<Spec> {
    let df = match model_type {
        "llama" => LlamaDefaults {
            vocab: 32000,
            hidden: 4096,
            inter: 11008,
            layers: 32,
            heads: 32,
            kv: None,
            max_pe: 2048,
            eps: 1e-6,
            theta: 10000.0,
            tie: false,
        },
        "mistral" => LlamaDefaults {
            vocab: 32000,
            hidden: 4096,
            inter: 14336,
            layers: 32,
            heads: 32,
            kv: Some(8),
            max_pe: 4096 * 32,
            eps: 1e-6,
            theta: 10000.0,
            tie: false,
        },
        "mixtral" => LlamaDefaults {
            vocab: 32000,
            hidden: 4096,
            inter: 14336,
            layers: 32,
            heads: 32,
            kv: Some(8),
            max_pe: 4096 * 32,
            eps: 1e-5,
            theta: 1e6, // MixtralConfig.default_theta
            tie: false,
        },
        _ => LlamaDefaults {
            // qwen2
            vocab: 151936,
            hidden: 4096,
            inter: 22016,
            layers: 32,
            heads: 32,
            kv: Some(32),
            max_pe: 32768,
            eps: 1e-6,
            theta: 10000.0,
            tie: false,
        },
    };
    let c = llama_core(cfg, &df, None)?;
    let keys = RopeKeys {
        default_theta: df.theta,
        ..rope::STANDARD
    };
    let positions = rope::rope(cfg, &keys, c.head_dim, c.max_pe)?;
    let mut s = llama_spec(
        &c,
        positions,
        norm(NormKind::Rmsnorm, c.eps, Placement::Pre),
        c.act,
    );
    let all: Vec<bool> = vec![true; c.layers];
    match model_type {
        "llama" => {
            // q/k/v/o biases and MLP biases are switches on Llama only.
            let attn_bias = cfg.bool_or("attention_bias", false)?;
            s.attention.qkv_bias = attn_bias;
            s.attention.out_bias = attn_bias;
            s.mlp.bias = cfg.bool_or("mlp_bias", false)?;
        }
        "mistral" => {
            // MistralConfig defaults sliding_window to 4096 (v0.1); null disables it.
            let w = cfg.usize_nullable_or("sliding_window", Some(4096))?;
            let w = sliding_window(cfg, "sliding_window", w)?;
            if cfg.present("layer_types").is_some() {
                cfg.note("layer_types is ignored by HF's Mistral (the window, if any, applies to every layer)");
            }
            place_window(&mut s, w, &all);
        }
        "mixtral" => {
            let w = cfg.usize_nullable_or("sliding_window", None)?;
            let w = sliding_window(cfg, "sliding_window", w)?;
            place_window(&mut s, w, &all);
            let experts = cfg.usize_alias_or(&["num_local_experts", "num_experts"], 8)?;
            let top_k = cfg.usize_or("num_experts_per_tok", 2)?;
            positive(cfg, "num_local_experts", experts)?;
            positive(cfg, "num_experts_per_tok", top_k)?;
            if top_k > experts {
                return Err(cfg.err(
                    "num_experts_per_tok",
                    format!("= {top_k} exceeds num_local_experts = {experts}"),
                ));
            }
            // Mixtral always renormalises the top-k router weights; each expert is
            // an intermediate_size SwiGLU; the router has no bias.
            s.moe = Some(Moe {
                experts,
                top_k,
                renormalize: true,
                d_ff: None,
                shared_expert: None,
                layers: None,
            });
        }
        _ => {
            // Qwen2: biases on q/k/v only (hard-coded), none on o_proj or the MLP.
            s.attention.qkv_bias = true;
            reject_true(
                cfg,
                "use_mrope",
                "multimodal RoPE sections (Qwen2-VL) are not supported",
            )?;
            let use_window = cfg.bool_or("use_sliding_window", false)?;
            let w = cfg.usize_nullable_or("sliding_window", Some(4096))?;
            let w = sliding_window(cfg, "sliding_window", w)?;
            let w = if use_window {
                w
            } else {
                if let Some(x) = w {
                    cfg.note(format!(
                        "use_sliding_window = false: sliding_window = {x} is inert"
                    ));
                }
                None
            };
            let sliding = match layer_types(cfg, c.layers)? {
                Some(t) => t,
                None => {
                    // HF: layers from max_window_layers on are sliding.
                    let mwl = cfg.usize_or("max_window_layers", 28)?;
                    (0..c.layers).map(|i| w.is_some() && i >= mwl).collect()
                }
            };
            place_window(&mut s, w, &sliding);
        }
    }
    s.head = decoder_head(cfg, model_type, head, df.tie)?;
    Ok(s)
}

/// Gemma's activation: `hidden_act` (transformers 5) or `hidden_activation`
/// (4.x); "gelu" in a Gemma config means the tanh approximation.
fn gemma_activation(cfg: &mut Cfg) -> Result<Activation> {
    let read = |cfg: &mut Cfg, key: &str, name: &str| -> Result<Activation> {
        if name == "gelu" {
            cfg.note(format!(
                "{key} = \"gelu\" in a Gemma config means the tanh approximation (HF maps it to gelu_pytorch_tanh): gelu-tanh"
            ));
            Ok(Activation::GeluTanh)
        } else {
            activation(cfg, key, name)
        }
    };
    let new = cfg.str_opt("hidden_activation")?;
    let old = cfg.str_opt("hidden_act")?;
    match (new, old) {
        (Some(a), Some(b)) => {
            let x = read(cfg, "hidden_activation", a)?;
            let y = read(cfg, "hidden_act", b)?;
            if x != y {
                return Err(cfg.err(
                    "hidden_activation",
                    format!("= {a:?} disagrees with hidden_act = {b:?} (HF versions read different ones); the file is ambiguous"),
                ));
            }
            Ok(x)
        }
        (Some(a), None) => read(cfg, "hidden_activation", a),
        (None, Some(b)) => read(cfg, "hidden_act", b),
        (None, None) => {
            let name = cfg.str_or("hidden_act", "gelu_pytorch_tanh")?;
            read(cfg, "hidden_act", name)
        }
    }
}

/// Gemma (`GemmaConfig` defaults): (1 + w) RMSNorm, √d embedding scale, GeGLU, tied.
pub(crate) fn gemma(cfg: &mut Cfg, head: Option<HeadKind>) -> Result<Spec> {
    let df = LlamaDefaults {
        vocab: 256000,
        hidden: 3072,
        inter: 24576,
        layers: 28,
        heads: 16,
        kv: Some(16),
        max_pe: 8192,
        eps: 1e-6,
        theta: 10000.0,
        tie: true,
    };
    let c = llama_core(cfg, &df, Some(256))?;
    let act = gemma_activation(cfg)?;
    let positions = rope::rope(cfg, &rope::STANDARD, c.head_dim, c.max_pe)?;
    reject_true(
        cfg,
        "use_bidirectional_attention",
        "bidirectional (non-causal) Gemma is not a decoder kiln expresses",
    )?;
    let mut n = norm(NormKind::Rmsnorm, c.eps, Placement::Pre);
    n.weight_offset = 1.0; // GemmaRMSNorm scales by (1 + w)
    let mut s = llama_spec(&c, positions, n, act);
    let bias = cfg.bool_or("attention_bias", false)?;
    s.attention.qkv_bias = bias;
    s.attention.out_bias = bias;
    s.embeddings.scale = Scale::Named(NamedScale::SqrtDModel); // hidden * sqrt(hidden_size)
    s.head = decoder_head(cfg, "gemma", head, df.tie)?;
    Ok(s)
}

/// Gemma-2 (`Gemma2Config` defaults): Gemma plus sandwich norms, soft-capping,
/// `query_pre_attn_scalar` scaling and a window on the sliding layers.
pub(crate) fn gemma2(cfg: &mut Cfg, head: Option<HeadKind>) -> Result<Spec> {
    let df = LlamaDefaults {
        vocab: 256000,
        hidden: 2304,
        inter: 9216,
        layers: 26,
        heads: 8,
        kv: Some(4),
        max_pe: 8192,
        eps: 1e-6,
        theta: 10000.0,
        tie: true,
    };
    let c = llama_core(cfg, &df, Some(256))?;
    // Gemma2MLP reads `hidden_activation` only (no "gelu" remapping, unlike Gemma).
    let name = cfg.str_or("hidden_activation", "gelu_pytorch_tanh")?;
    let act = activation(cfg, "hidden_activation", name)?;
    if let Some(old) = cfg.str_opt("hidden_act")?
        && old != name
    {
        cfg.note(format!(
            "hidden_act = {old:?} is ignored: HF's Gemma-2 reads hidden_activation = {name:?}"
        ));
    }
    let positions = rope::rope(cfg, &rope::STANDARD, c.head_dim, c.max_pe)?;
    reject_true(
        cfg,
        "use_bidirectional_attention",
        "bidirectional (non-causal) Gemma-2 is not a decoder kiln expresses",
    )?;
    let qpas = cfg.f64_or("query_pre_attn_scalar", 256.0)?;
    if qpas <= 0.0 {
        return Err(cfg.err(
            "query_pre_attn_scalar",
            format!("must be positive, found {}", fmt_f64(qpas)),
        ));
    }
    let cap = |cfg: &mut Cfg, key: &str, d: f64| -> Result<Option<f64>> {
        match cfg.f64_nullable_or(key, Some(d))? {
            Some(x) if x <= 0.0 => Err(cfg.err(
                key,
                format!("must be positive or null, found {}", fmt_f64(x)),
            )),
            v => Ok(v),
        }
    };
    let attn_cap = cap(cfg, "attn_logit_softcapping", 50.0)?;
    let final_cap = cap(cfg, "final_logit_softcapping", 30.0)?;
    let w = cfg.usize_nullable_or("sliding_window", Some(4096))?;
    let w = sliding_window(cfg, "sliding_window", w)?;
    if let (Some(w), Some(old)) = (w, cfg.usize_opt("sliding_window_size")?)
        && old != w
    {
        return Err(cfg.err(
            "sliding_window_size",
            format!("= {old} disagrees with sliding_window = {w}; the file is ambiguous"),
        ));
    }
    let sliding = match layer_types(cfg, c.layers)? {
        Some(t) => t,
        // HF: layer i is sliding when i is even (`(i + 1) % 2`).
        None => (0..c.layers).map(|i| i % 2 == 0).collect(),
    };

    let mut n = norm(NormKind::Rmsnorm, c.eps, Placement::Sandwich);
    n.weight_offset = 1.0;
    let mut s = llama_spec(&c, positions, n, act);
    let bias = cfg.bool_or("attention_bias", false)?;
    s.attention.qkv_bias = bias;
    s.attention.out_bias = bias;
    s.attention.scale = Some(qpas.powf(-0.5));
    s.attention.softcap = attn_cap;
    s.embeddings.scale = Scale::Named(NamedScale::SqrtDModel);
    place_window(&mut s, w, &sliding);
    s.head = decoder_head(cfg, "gemma2", head, df.tie)?;
    if s.head.kind == HeadKind::Lm {
        s.head.softcap = final_cap;
    }
    Ok(s)
}

/// Phi / Phi-2 (`PhiConfig` defaults): parallel residual with one shared
/// LayerNorm, partial RoPE, biases everywhere including the LM head.
pub(crate) fn phi(cfg: &mut Cfg, head: Option<HeadKind>) -> Result<Spec> {
    let vocab = cfg.usize_or("vocab_size", 51200)?;
    let d = cfg.usize_or("hidden_size", 2048)?;
    let d_ff = cfg.usize_or("intermediate_size", 8192)?;
    let layers = cfg.usize_or("num_hidden_layers", 24)?;
    let heads = cfg.usize_or("num_attention_heads", 32)?;
    let kv = cfg
        .usize_nullable_or("num_key_value_heads", None)?
        .unwrap_or(heads);
    let explicit = cfg.usize_opt("head_dim")?;
    let hd = head_dim(
        cfg,
        ("hidden_size", d),
        ("num_attention_heads", heads),
        explicit.map(|x| ("head_dim", x)),
    )?;
    check_kv_heads(cfg, "num_key_value_heads", kv, heads)?;
    let act_name = cfg.str_or("hidden_act", "gelu_new")?;
    let act = activation(cfg, "hidden_act", act_name)?;
    let max_pe = cfg.usize_or("max_position_embeddings", 2048)?;
    let eps = cfg.f64_or("layer_norm_eps", 1e-5)?;
    let qk = cfg.bool_or("qk_layernorm", false)?;
    // PhiConfig's partial_rotary_factor default is 0.5.
    let keys = RopeKeys {
        default_partial: Some(0.5),
        ..rope::STANDARD
    };
    let positions = rope::rope(cfg, &keys, hd, max_pe)?;
    let mut a = attention(heads);
    a.kv_heads = Some(kv);
    a.head_dim = explicit;
    a.qkv_bias = true; // q/k/v_proj and dense all have biases
    a.out_bias = true;
    if qk {
        // LayerNorm(head_dim, eps = layer_norm_eps) on each head's q and k, before RoPE.
        a.qk_norm = QkNorm::PerHead;
    }
    let mut s = spec(
        Sizes {
            architecture: Architecture::Decoder,
            vocab_size: vocab,
            d_model: d,
            layers,
            max_positions: max_pe,
        },
        a,
        norm(NormKind::Layernorm, eps, Placement::Pre),
        positions,
        mlp(d_ff, act, false, true),
    );
    s.residual = Residual {
        parallel: true,
        shared_norm: true,
    };
    s.head = decoder_head(cfg, "phi", head, false)?;
    if s.head.kind == HeadKind::Lm {
        s.head.bias = true; // lm_head = Linear(..., bias=True)
    }
    Ok(s)
}

// ---------------------------------------------------------------------------
// Encoder-decoders: t5, bart
// ---------------------------------------------------------------------------

/// T5 (`T5Config` defaults and aliases).
pub(crate) fn t5(cfg: &mut Cfg, head: Option<HeadKind>) -> Result<Spec> {
    let vocab = cfg.usize_or("vocab_size", 32128)?;
    let d = cfg.usize_alias_or(&["d_model", "hidden_size"], 512)?;
    let d_kv = cfg.usize_alias_or(&["d_kv", "head_dim"], 64)?;
    let d_ff = cfg.usize_or("d_ff", 2048)?;
    let layers = cfg.usize_alias_or(&["num_layers", "num_hidden_layers"], 6)?;
    // num_decoder_layers: null (the class default) → num_layers.
    let dec_layers = cfg
        .usize_nullable_or("num_decoder_layers", None)?
        .unwrap_or(layers);
    let heads = cfg.usize_alias_or(&["num_heads", "num_attention_heads"], 8)?;
    let buckets = cfg.usize_or("relative_attention_num_buckets", 32)?;
    let max_distance = cfg.usize_or("relative_attention_max_distance", 128)?;
    let eps = cfg.f64_or("layer_norm_epsilon", 1e-6)?;
    let ffp = cfg.str_or("feed_forward_proj", "relu")?;
    positive(cfg, "num_heads", heads)?;
    positive(cfg, "d_kv", d_kv)?;
    positive(cfg, "relative_attention_num_buckets", buckets)?;
    let parts: Vec<&str> = ffp.split('-').collect();
    let (gated, act_name) = match parts.as_slice() {
        [a] => (false, *a),
        ["gated", a] => (true, *a),
        _ => {
            return Err(cfg.err(
                "feed_forward_proj",
                format!("= {ffp:?} is not of the form \"ACT\" or \"gated-ACT\""),
            ));
        }
    };
    // HF keeps "gated-gelu" meaning the tanh GELU (T5 v1.1) for backward compatibility.
    let act_name = if ffp == "gated-gelu" {
        "gelu_new"
    } else {
        act_name
    };
    let act = activation(cfg, "feed_forward_proj", act_name)?;
    // Tying and the d^-1/2 output scale: transformers 5 records the v1.0/v1.1
    // difference in `scale_decoder_outputs`; older files only say
    // `tie_word_embeddings` (absent → true: tied and scaled, T5 v1.0).
    let tie = cfg.bool_opt("tie_word_embeddings")?;
    let tied = tie != Some(false);
    let scaled = match cfg.bool_opt("scale_decoder_outputs")? {
        Some(x) => x,
        None => tied,
    };
    // Relative positions do not cap the length; n_positions (512 in the v1.0
    // configs) is only the trained context. Not a T5Config field: 512 when absent.
    let max_positions = match cfg.usize_opt("n_positions")? {
        Some(x) => x,
        None => {
            cfg.note("n_positions absent: max_positions = 512 (T5's training length; relative positions do not cap it)");
            512
        }
    };

    let mut a = attention(heads);
    a.head_dim = Some(d_kv);
    a.scale = Some(1.0); // T5 folds 1/sqrt(d_kv) into its weights
    let positions = Positions {
        kind: PositionKind::Relative,
        offset: 0,
        theta: None,
        fraction: None,
        layout: None,
        scaling: None,
        buckets: Some(buckets),
        max_distance: Some(max_distance),
    };
    let mut s = spec(
        Sizes {
            architecture: Architecture::EncoderDecoder,
            vocab_size: vocab,
            d_model: d,
            layers,
            max_positions,
        },
        a,
        norm(NormKind::Rmsnorm, eps, Placement::Pre),
        positions,
        mlp(d_ff, act, gated, false),
    );
    s.decoder_layers = Some(dec_layers);
    s.head = match pick_head(cfg, "t5", head, &[HeadKind::Lm, HeadKind::None])? {
        HeadKind::Lm => {
            let mut h = lm_head(tied);
            if scaled {
                h.input_scale = Scale::Named(NamedScale::InvSqrtDModel);
            }
            h
        }
        k => bare_head(k),
    };
    Ok(s)
}

/// BART (`BartConfig` defaults and aliases). HF's BART is always post-norm
/// with a LayerNorm after the embeddings, LayerNorm eps 1e-5 and a position
/// offset of 2.
pub(crate) fn bart(cfg: &mut Cfg, head: Option<HeadKind>) -> Result<Spec> {
    let vocab = cfg.usize_or("vocab_size", 50265)?;
    let max_pe = cfg.usize_or("max_position_embeddings", 1024)?;
    let d = cfg.usize_alias_or(&["d_model", "hidden_size"], 1024)?;
    let enc_layers = cfg.usize_alias_or(&["encoder_layers", "num_hidden_layers"], 12)?;
    let dec_layers = cfg.usize_or("decoder_layers", 12)?;
    let enc_heads = cfg.usize_alias_or(&["encoder_attention_heads", "num_attention_heads"], 16)?;
    let dec_heads = cfg.usize_or("decoder_attention_heads", 16)?;
    let enc_ff = cfg.usize_or("encoder_ffn_dim", 4096)?;
    let dec_ff = cfg.usize_or("decoder_ffn_dim", 4096)?;
    let act_name = cfg.str_or("activation_function", "gelu")?;
    let act = activation(cfg, "activation_function", act_name)?;
    let scale_embedding = cfg.bool_nullable_or("scale_embedding", false)?;
    if dec_heads != enc_heads {
        return Err(cfg.err(
            "decoder_attention_heads",
            format!(
                "= {dec_heads} differs from encoder_attention_heads = {enc_heads}; kiln's encoder and decoder share one head count"
            ),
        ));
    }
    head_dim(
        cfg,
        ("d_model", d),
        ("encoder_attention_heads", enc_heads),
        None,
    )?;
    // Fields of the original fairseq/mBART configs that HF's BART ignores: a
    // value that would change the architecture is contradictory, not dropped.
    let ignored: [(&str, bool, &str); 5] = [
        ("normalize_before", false, "pre-norm"),
        ("add_final_layer_norm", false, "a final LayerNorm per stack"),
        ("normalize_embedding", true, "no embedding LayerNorm"),
        ("add_bias_logits", false, "an extra logits bias"),
        ("static_position_embeddings", false, "sinusoidal positions"),
    ];
    for (key, hf, meaning) in ignored {
        if let Some(v) = cfg.bool_opt(key)?
            && v != hf
        {
            return Err(cfg.err(
                key,
                format!(
                    "= {v} asks for {meaning}, but HF's BART ignores this field (always post-norm with an embedding \
                     LayerNorm, no final norm, learned positions); the file contradicts the model HF builds"
                ),
            ));
        }
    }
    if let Some(x) = cfg.usize_opt("extra_pos_embeddings")?
        && x != 2
    {
        return Err(cfg.err(
            "extra_pos_embeddings",
            format!("= {x}, but HF's BART always offsets positions by 2"),
        ));
    }
    let mut a = attention(enc_heads);
    a.qkv_bias = true;
    a.out_bias = true;
    let mut s = spec(
        Sizes {
            architecture: Architecture::EncoderDecoder,
            vocab_size: vocab,
            d_model: d,
            layers: enc_layers,
            max_positions: max_pe,
        },
        a,
        post_layernorm(1e-5), // nn.LayerNorm default eps
        learned(2),           // BartLearnedPositionalEmbedding: row = position + 2
        mlp(enc_ff, act, false, true),
    );
    s.decoder_layers = Some(dec_layers);
    if dec_ff != enc_ff {
        let mut t = toml::Table::new();
        t.insert(
            "d_ff".into(),
            toml::Value::Integer(i64::try_from(dec_ff).unwrap_or(i64::MAX)),
        );
        s.layer_overrides.push(LayerOverride {
            select: Selector::Text("all".into()),
            stack: Some(Stack::Decoder),
            attention: None,
            mlp: Some(t),
            norm: None,
            residual: None,
        });
    }
    if scale_embedding {
        s.embeddings.scale = Scale::Named(NamedScale::SqrtDModel);
    }
    s.head = match pick_head(cfg, "bart", head, &[HeadKind::Lm, HeadKind::None])? {
        HeadKind::Lm => Head {
            kind: HeadKind::Lm,
            tied: cfg.bool_or("tie_word_embeddings", true)?,
            bias: true, // final_logits_bias
            ..Head::default()
        },
        k => bare_head(k),
    };
    Ok(s)
}

/// Refuse numerics-changing fields no family here reads.
pub(crate) fn common_checks(cfg: &Cfg) -> Result<()> {
    if let Some(v) = cfg.present("quantization_config")
        && !matches!(v, Value::Object(m) if m.is_empty())
    {
        return Err(cfg.err(
            "quantization_config",
            "is set: quantized checkpoints (GPTQ, AWQ, bitsandbytes, ...) are not supported; kiln computes with f32 weights",
        ));
    }
    Ok(())
}
