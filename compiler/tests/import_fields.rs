//! `kiln import` field by field: both config layouts, RoPE scaling, per-layer
//! windows, activation names, heads, tying and names.

use std::path::{Path, PathBuf};

use kiln_compiler::import::{ImportOptions, Imported, from_hf_config, import_config, import_path};
use kiln_compiler::lower::lower;
use kiln_compiler::spec::{
    Activation, HeadKind, NamedScale, QkNorm, ResolvedSpec, RopeScaling, Scale, Selector,
};
use serde_json::{Value, json};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn patched(file: &str, set: Value, remove: &[&str]) -> String {
    let text =
        std::fs::read_to_string(root().join("tests/import").join(file)).expect("test config");
    let mut v: Value = serde_json::from_str(&text).expect("json");
    let obj = v.as_object_mut().expect("object");
    for k in remove {
        obj.remove(*k);
    }
    for (k, x) in set.as_object().expect("patch") {
        obj.insert(k.clone(), x.clone());
    }
    v.to_string()
}

fn imp_with(file: &str, set: Value, remove: &[&str], opts: &ImportOptions) -> Imported {
    let json = patched(file, set, remove);
    import_config(&json, Path::new("x/config.json"), opts).unwrap_or_else(|e| panic!("{e}"))
}

fn imp(file: &str, set: Value) -> Imported {
    imp_with(file, set, &[], &ImportOptions::default())
}

fn rs(file: &str, set: Value) -> ResolvedSpec {
    imp(file, set).resolved
}

fn params(rs: &ResolvedSpec) -> usize {
    lower(rs).expect("lowers").parameter_count()
}

fn window(rs: &ResolvedSpec) -> Vec<Option<usize>> {
    rs.layers
        .iter()
        .map(|l| l.attention.sliding_window)
        .collect()
}

// ---- transformers 4 vs 5 layouts ----

#[test]
fn nested_rope_parameters_equal_top_level_keys() {
    let old = rs("mixtral-8x7b.json", json!({}));
    let new = imp_with(
        "mixtral-8x7b.json",
        json!({"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}, "dtype": "bfloat16"}),
        &["rope_theta", "torch_dtype"],
        &ImportOptions::default(),
    )
    .resolved;
    assert_eq!(old, new);
    let phi_new = imp_with(
        "phi-2.json",
        json!({"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.4}}),
        &["rope_theta", "partial_rotary_factor", "rope_scaling"],
        &ImportOptions::default(),
    )
    .resolved;
    assert_eq!(phi_new, rs("phi-2.json", json!({})));
}

#[test]
fn values_in_the_rope_dict_win_over_top_level() {
    let r = rs(
        "llama-2-7b.json",
        json!({"rope_theta": 1.0, "rope_parameters": {"rope_theta": 5e5}}),
    );
    assert_eq!(r.spec.positions.theta, Some(5e5));
}

#[test]
fn rope_scaling_replaces_rope_parameters_unless_empty() {
    let r = rs(
        "llama-2-7b.json",
        json!({"rope_scaling": {"type": "linear", "factor": 2.0},
               "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}}),
    );
    assert_eq!(
        r.spec.positions.scaling,
        Some(RopeScaling::Linear { factor: 2.0 })
    );
    assert_eq!(
        r.spec.positions.theta,
        Some(10000.0),
        "the replaced dict's theta is not read"
    );
    let r = rs(
        "llama-2-7b.json",
        json!({"rope_scaling": {}, "rope_parameters": {"rope_theta": 5e5}}),
    );
    assert_eq!(r.spec.positions.theta, Some(5e5));
}

#[test]
fn rope_theta_class_defaults() {
    // Mixtral's default_theta is 1e6; the others' 1e4.
    let r = imp_with(
        "mixtral-8x7b.json",
        json!({}),
        &["rope_theta"],
        &ImportOptions::default(),
    );
    assert_eq!(r.resolved.spec.positions.theta, Some(1e6));
    assert!(
        r.defaults
            .contains(&("rope_theta".into(), "1000000.0".into())),
        "{:?}",
        r.defaults
    );
    let r = imp_with(
        "phi-2.json",
        json!({}),
        &["partial_rotary_factor"],
        &ImportOptions::default(),
    );
    assert_eq!(
        r.resolved.spec.positions.fraction,
        Some(0.5),
        "PhiConfig default"
    );
    let r = imp_with(
        "pythia-160m.json",
        json!({}),
        &["rotary_pct", "rotary_emb_base"],
        &ImportOptions::default(),
    );
    assert_eq!(r.resolved.spec.positions.fraction, Some(0.25));
    assert_eq!(r.resolved.spec.positions.theta, Some(10000.0));
}

// ---- RoPE scaling ----

#[test]
fn llama3_scaling() {
    let r = imp(
        "llama-2-7b.json",
        json!({"rope_theta": 500000.0, "max_position_embeddings": 131072,
               "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                "original_max_position_embeddings": 8192, "rope_type": "llama3"}}),
    );
    assert_eq!(
        r.resolved.spec.positions.scaling,
        Some(RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_positions: 8192
        })
    );
    // Without original_max_position_embeddings HF falls back to max_position_embeddings.
    let r = imp(
        "llama-2-7b.json",
        json!({"rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "rope_type": "llama3"}}),
    );
    assert!(matches!(
        r.resolved.spec.positions.scaling,
        Some(RopeScaling::Llama3 {
            original_max_positions: 4096,
            ..
        })
    ));
    assert!(
        r.notes.iter().any(|n| n.contains("original context")),
        "{:?}",
        r.notes
    );
}

#[test]
fn yarn_scaling_defaults_and_mscale() {
    let r = rs(
        "qwen2.5-0.5b.json",
        json!({"rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}}),
    );
    let Some(RopeScaling::Yarn {
        factor,
        original_max_positions,
        beta_fast,
        beta_slow,
        attention_factor,
    }) = r.spec.positions.scaling
    else {
        panic!("yarn expected")
    };
    assert_eq!(
        (factor, original_max_positions, beta_fast, beta_slow),
        (4.0, 32768, 32.0, 1.0)
    );
    assert_eq!(attention_factor, Some(0.1 * 4f64.ln() + 1.0));
    // DeepSeek-style mscale / mscale_all_dim
    let r = rs(
        "qwen2.5-0.5b.json",
        json!({"rope_scaling": {"rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096,
                                "mscale": 0.707, "mscale_all_dim": 0.707, "beta_fast": 32, "beta_slow": 1}}),
    );
    assert!(
        matches!(r.spec.positions.scaling, Some(RopeScaling::Yarn { attention_factor: Some(a), .. }) if a == 1.0)
    );
    // factor null → max_position_embeddings / original
    let r = rs(
        "qwen2.5-0.5b.json",
        json!({"rope_scaling": {"rope_type": "yarn", "factor": null, "original_max_position_embeddings": 8192}}),
    );
    assert!(
        matches!(r.spec.positions.scaling, Some(RopeScaling::Yarn { factor: f, .. }) if f == 4.0)
    );
    // explicit attention_factor, factor ≤ 1 gives no temperature
    let r = rs(
        "qwen2.5-0.5b.json",
        json!({"rope_scaling": {"rope_type": "yarn", "factor": 1.0, "original_max_position_embeddings": 32768}}),
    );
    assert!(
        matches!(r.spec.positions.scaling, Some(RopeScaling::Yarn { attention_factor: Some(a), .. }) if a == 1.0)
    );
}

#[test]
fn linear_and_default_types() {
    let r = rs(
        "gemma-2b.json",
        json!({"rope_scaling": {"rope_type": "linear", "factor": 4.0}}),
    );
    assert_eq!(
        r.spec.positions.scaling,
        Some(RopeScaling::Linear { factor: 4.0 })
    );
    let r = rs(
        "gemma-2b.json",
        json!({"rope_scaling": {"type": "default"}}),
    );
    assert_eq!(r.spec.positions.scaling, None);
}

// ---- sliding windows ----

#[test]
fn mistral_window_default_and_null() {
    let r = imp_with(
        "mistral-7b.json",
        json!({}),
        &["sliding_window"],
        &ImportOptions::default(),
    );
    assert_eq!(
        r.resolved.spec.attention.sliding_window,
        Some(4096),
        "MistralConfig default"
    );
    assert!(
        r.defaults
            .iter()
            .any(|(k, v)| k == "sliding_window" && v == "4096")
    );
    let r = rs("mistral-7b.json", json!({"sliding_window": null}));
    assert_eq!(r.spec.attention.sliding_window, None);
    assert!(r.spec.layer_overrides.is_empty());
}

#[test]
fn qwen2_windows() {
    // use_sliding_window = false: the window is inert.
    let i = imp("qwen2.5-0.5b.json", json!({}));
    assert!(window(&i.resolved).iter().all(Option::is_none));
    assert!(i.notes.iter().any(|n| n.contains("inert")), "{:?}", i.notes);
    // On: layers from max_window_layers on.
    let r = rs(
        "qwen2.5-0.5b.json",
        json!({"use_sliding_window": true, "max_window_layers": 20, "sliding_window": 4096}),
    );
    assert_eq!(
        r.spec.layer_overrides[0].select,
        Selector::Text("20..".into())
    );
    let w = window(&r);
    assert!(w[..20].iter().all(Option::is_none) && w[20..].iter().all(|x| *x == Some(4096)));
    // max_window_layers = 0: every layer, model-wide.
    let r = rs(
        "qwen2.5-0.5b.json",
        json!({"use_sliding_window": true, "max_window_layers": 0}),
    );
    assert_eq!(r.spec.attention.sliding_window, Some(32768));
    // Explicit layer_types (transformers 5) win over max_window_layers.
    let mut types = vec![json!("full_attention"); 24];
    types[1] = json!("sliding_attention");
    types[7] = json!("sliding_attention");
    let r = rs(
        "qwen2.5-0.5b.json",
        json!({"use_sliding_window": true, "layer_types": types}),
    );
    assert_eq!(r.spec.layer_overrides[0].select, Selector::List(vec![1, 7]));
    assert_eq!(window(&r)[7], Some(32768));
}

#[test]
fn gemma2_layer_types() {
    let r = rs("gemma-2-2b.json", json!({}));
    assert_eq!(
        r.spec.layer_overrides[0].select,
        Selector::Text("even".into())
    );
    let types: Vec<Value> = (0..26)
        .map(|i| {
            json!(if i % 2 == 1 {
                "sliding_attention"
            } else {
                "full_attention"
            })
        })
        .collect();
    let r = rs("gemma-2-2b.json", json!({ "layer_types": types }));
    assert_eq!(
        r.spec.layer_overrides[0].select,
        Selector::Text("odd".into())
    );
    let r = rs(
        "gemma-2-2b.json",
        json!({ "layer_types": vec![json!("sliding_attention"); 26] }),
    );
    assert_eq!(r.spec.attention.sliding_window, Some(4096));
    assert!(r.spec.layer_overrides.is_empty());
    let r = rs("gemma-2-2b.json", json!({"sliding_window": null}));
    assert!(window(&r).iter().all(Option::is_none));
    let r = rs(
        "gemma-2-2b.json",
        json!({"final_logit_softcapping": null, "attn_logit_softcapping": null}),
    );
    assert_eq!(
        (r.spec.head.softcap, r.spec.attention.softcap),
        (None, None)
    );
    let r = rs("gemma-2-2b.json", json!({"query_pre_attn_scalar": 144}));
    assert_eq!(r.spec.attention.scale, Some(144f64.powf(-0.5)));
}

// ---- activations ----

#[test]
fn activation_names() {
    for (name, act) in [
        ("gelu", Activation::Gelu),
        ("gelu_python", Activation::Gelu),
        ("gelu_new", Activation::GeluTanh),
        ("gelu_pytorch_tanh", Activation::GeluTanh),
        ("gelu_fast", Activation::GeluTanh),
        ("gelu_accurate", Activation::GeluTanh),
        ("silu", Activation::Silu),
        ("swish", Activation::Silu),
        ("relu", Activation::Relu),
    ] {
        assert_eq!(
            rs("gpt2.json", json!({"activation_function": name}))
                .spec
                .mlp
                .activation,
            act,
            "{name}"
        );
    }
}

#[test]
fn gemma_gelu_means_tanh() {
    let i = imp("gemma-2b.json", json!({}));
    assert_eq!(i.resolved.spec.mlp.activation, Activation::GeluTanh);
    assert!(
        i.notes.iter().any(|n| n.contains("tanh approximation")),
        "{:?}",
        i.notes
    );
    let i = imp_with(
        "gemma-2b.json",
        json!({"hidden_activation": "gelu_pytorch_tanh"}),
        &["hidden_act"],
        &ImportOptions::default(),
    );
    assert_eq!(i.resolved.spec.mlp.activation, Activation::GeluTanh);
    // Gemma-2 reads hidden_activation as written (HF does not remap it there).
    let r = rs("gemma-2-2b.json", json!({"hidden_activation": "gelu"}));
    assert_eq!(r.spec.mlp.activation, Activation::Gelu);
    // head_dim null → hidden_size / heads
    let r = rs("gemma-2b.json", json!({"head_dim": null}));
    assert_eq!(r.spec.attention.head_dim, Some(256));
    let r = rs(
        "gemma-2b.json",
        json!({"head_dim": null, "num_attention_heads": 16}),
    );
    assert_eq!(r.spec.attention.head_dim, Some(128));
}

#[test]
fn t5_variants() {
    // v1.1: gated-gelu (tanh), untied head without the output scale.
    let r = rs(
        "t5-small.json",
        json!({"feed_forward_proj": "gated-gelu", "tie_word_embeddings": false}),
    );
    assert!(r.spec.mlp.gated);
    assert_eq!(r.spec.mlp.activation, Activation::GeluTanh);
    assert!(!r.spec.head.tied);
    assert_eq!(r.spec.head.input_scale, Scale::Value(1.0));
    // transformers 5: tie_word_embeddings forced true, scale_decoder_outputs says v1.0 or v1.1.
    let r = rs(
        "t5-small.json",
        json!({"tie_word_embeddings": true, "scale_decoder_outputs": false}),
    );
    assert!(r.spec.head.tied);
    assert_eq!(r.spec.head.input_scale, Scale::Value(1.0));
    let r = rs("t5-small.json", json!({}));
    assert_eq!(
        r.spec.head.input_scale,
        Scale::Named(NamedScale::InvSqrtDModel)
    );
    let r = rs("t5-small.json", json!({"feed_forward_proj": "gated-silu"}));
    assert_eq!(
        (r.spec.mlp.gated, r.spec.mlp.activation),
        (true, Activation::Silu)
    );
    let r = rs("t5-small.json", json!({"feed_forward_proj": "gelu"}));
    assert_eq!(
        (r.spec.mlp.gated, r.spec.mlp.activation),
        (false, Activation::Gelu)
    );
    let r = rs(
        "t5-small.json",
        json!({"num_decoder_layers": 2, "relative_attention_max_distance": 64}),
    );
    assert_eq!((r.spec.decoder_layers, r.decoder.len()), (Some(2), 2));
    assert_eq!(r.spec.positions.max_distance, Some(64));
    let i = imp_with(
        "t5-small.json",
        json!({}),
        &["n_positions"],
        &ImportOptions::default(),
    );
    assert_eq!(i.resolved.spec.max_positions, 512);
    assert!(
        i.defaults
            .contains(&("relative_attention_max_distance".into(), "128".into()))
    );
    assert!(
        i.defaults
            .contains(&("feed_forward_proj".into(), "\"relu\"".into()))
    );
}

#[test]
fn gpt2_fields() {
    let i = imp("gpt2.json", json!({"n_inner": null}));
    assert_eq!(i.resolved.spec.mlp.d_ff, 3072);
    assert!(i.notes.iter().any(|n| n.contains("4 * n_embd")));
    assert_eq!(
        rs("gpt2.json", json!({"n_inner": 1000})).spec.mlp.d_ff,
        1000
    );
    assert_eq!(
        rs("gpt2.json", json!({"scale_attn_weights": false}))
            .spec
            .attention
            .scale,
        Some(1.0)
    );
    assert!(
        !rs("gpt2.json", json!({"tie_word_embeddings": false}))
            .spec
            .head
            .tied
    );
    assert_eq!(
        rs("gpt2.json", json!({"layer_norm_epsilon": 1e-6}))
            .spec
            .norm
            .eps,
        1e-6
    );
    // reorder_and_upcast_attn only changes fp16 rounding.
    let i = imp("gpt2.json", json!({"reorder_and_upcast_attn": true}));
    assert!(i.notes.iter().any(|n| n.contains("fp16")));
}

#[test]
fn gpt_neox_sequential_and_biases() {
    let r = rs(
        "pythia-160m.json",
        json!({"use_parallel_residual": false, "attention_bias": false}),
    );
    assert!(!r.spec.residual.parallel);
    assert!(!r.spec.attention.qkv_bias && !r.spec.attention.out_bias);
    assert!(r.spec.mlp.bias, "GPT-NeoX MLP biases are unconditional");
}

#[test]
fn llama_biases_and_gqa() {
    let r = rs(
        "llama-2-7b.json",
        json!({"attention_bias": true, "mlp_bias": true, "num_key_value_heads": 8}),
    );
    assert!(r.spec.attention.qkv_bias && r.spec.attention.out_bias && r.spec.mlp.bias);
    assert_eq!(r.spec.attention.kv_heads, Some(8));
    let r = rs("llama-2-7b.json", json!({"num_key_value_heads": null}));
    assert_eq!(r.spec.attention.kv_heads, Some(32));
    let r = rs(
        "llama-2-7b.json",
        json!({"head_dim": 64, "num_attention_heads": 16, "num_key_value_heads": 16}),
    );
    assert_eq!(r.spec.attention.head_dim, Some(64));
}

#[test]
fn phi_qk_layernorm_adds_per_head_norms() {
    let plain = rs("phi-2.json", json!({}));
    let qk = rs("phi-2.json", json!({"qk_layernorm": true}));
    assert_eq!(qk.spec.attention.qk_norm, QkNorm::PerHead);
    // LayerNorm(head_dim = 80) on q and on k per layer: weight + bias each.
    assert_eq!(params(&qk) - params(&plain), 32 * 2 * (80 + 80));
    assert!(plain.spec.head.bias && !plain.spec.head.tied);
}

#[test]
fn encoder_heads() {
    let opts = |h| ImportOptions {
        name: None,
        head: Some(h),
        tensors: None,
    };
    let mlm = imp_with(
        "bert-base-uncased.json",
        json!({}),
        &[],
        &opts(HeadKind::Mlm),
    )
    .resolved;
    assert_eq!(
        (mlm.spec.head.kind, mlm.spec.head.tied, mlm.spec.head.bias),
        (HeadKind::Mlm, true, true)
    );
    // BertForMaskedLM: embeddings + blocks + transform (d*d + d, LN 2d) + decoder bias; no pooler.
    let base = imp_with(
        "bert-base-uncased.json",
        json!({}),
        &[],
        &opts(HeadKind::Pooler),
    )
    .resolved;
    assert_eq!(
        params(&mlm),
        params(&base) - (768 * 768 + 768) + (768 * 768 + 768) + 2 * 768 + 30522
    );
    let r = imp_with("roberta-base.json", json!({}), &[], &opts(HeadKind::Mlm)).resolved;
    assert_eq!(r.spec.head.kind, HeadKind::Mlm);
    let r = imp_with(
        "distilbert-base-uncased.json",
        json!({}),
        &[],
        &opts(HeadKind::Mlm),
    )
    .resolved;
    assert_eq!(r.spec.head.kind, HeadKind::Mlm);
    let r = imp_with(
        "bert-base-uncased.json",
        json!({}),
        &[],
        &opts(HeadKind::MeanPool),
    )
    .resolved;
    assert_eq!(r.spec.head.kind, HeadKind::MeanPool);
    let r = imp_with("gpt2.json", json!({}), &[], &opts(HeadKind::None)).resolved;
    assert_eq!(r.spec.head.kind, HeadKind::None);
}

#[test]
fn distilbert_sinusoidal_table_is_loaded_as_learned() {
    let i = imp(
        "distilbert-base-uncased.json",
        json!({"sinusoidal_pos_embds": true}),
    );
    assert_eq!(i.resolved, rs("distilbert-base-uncased.json", json!({})));
    assert!(i.notes.iter().any(|n| n.contains("sinusoidal_pos_embds")));
}

#[test]
fn bart_options() {
    let r = rs(
        "bart-base.json",
        json!({"scale_embedding": true, "tie_word_embeddings": false}),
    );
    assert_eq!(
        r.spec.embeddings.scale,
        Scale::Named(NamedScale::SqrtDModel)
    );
    assert!(!r.spec.head.tied && r.spec.head.bias);
    // Different encoder / decoder FFN widths: a decoder-stack override.
    let r = rs("bart-base.json", json!({"decoder_ffn_dim": 4096}));
    assert!(r.layers.iter().all(|l| l.mlp.d_ff == 3072));
    assert!(r.decoder.iter().all(|l| l.mlp.d_ff == 4096));
    // Per decoder layer: fc1 and fc2 grow by 768 x 1024 each, fc1's bias by 1024.
    assert_eq!(
        params(&r) - params(&rs("bart-base.json", json!({}))),
        6 * (2 * 768 * 1024 + 1024)
    );
    let r = rs(
        "bart-base.json",
        json!({"decoder_layers": 3, "encoder_layers": 4, "num_hidden_layers": 4}),
    );
    assert_eq!((r.layers.len(), r.decoder.len()), (4, 3));
}

// ---- names and files ----

#[test]
fn names() {
    let json = patched("llama-2-7b.json", json!({}), &[]);
    let name = |p: &str, opts: &ImportOptions| {
        import_config(&json, Path::new(p), opts)
            .expect("imports")
            .resolved
            .spec
            .name
    };
    let d = ImportOptions::default();
    assert_eq!(name("ckpt/llama-7b/config.json", &d), "llama-7b");
    assert_eq!(name("some/llama.json", &d), "llama");
    assert_eq!(name("config.json", &d), "Llama-2-7b-hf", "_name_or_path");
    let no_hint = patched("gpt2.json", json!({}), &[]);
    assert_eq!(
        import_config(&no_hint, Path::new("config.json"), &d)
            .expect("imports")
            .resolved
            .spec
            .name,
        "gpt2"
    );
    assert_eq!(
        name(
            "x/config.json",
            &ImportOptions {
                name: Some("mine".into()),
                head: None,
                tensors: None,
            }
        ),
        "mine"
    );
}

#[test]
fn directory_import_and_from_hf_config() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("import-dir/tiny-gpt2");
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let json = patched("gpt2.json", json!({"n_layer": 2}), &[]);
    std::fs::write(dir.join("config.json"), &json).expect("write");
    let from_dir = import_path(&dir, &ImportOptions::default()).expect("imports");
    assert_eq!(from_dir.resolved.spec.name, "tiny-gpt2");
    assert_eq!(from_dir.resolved.layers.len(), 2);
    let direct = from_hf_config(&json, &dir.join("config.json")).expect("imports");
    assert_eq!(direct, from_dir.resolved);
}

#[test]
fn header_lists_source_defaults_and_notes() {
    let i = imp("t5-small.json", json!({}));
    let text = i.to_toml();
    assert!(text.starts_with("# Imported by `kiln import` from x/config.json\n# model_type = \"t5\", read by the family file models/families/t5.toml; architectures = T5ForConditionalGeneration\n"), "{text}");
    assert!(
        text.contains("#   relative_attention_max_distance = 128\n"),
        "{text}"
    );
    assert!(text.contains("# Notes:\n"), "{text}");
}
