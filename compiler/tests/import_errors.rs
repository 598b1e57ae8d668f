//! Every way `kiln import` refuses a config: malformed input, wrong types, and
//! fields that change the numbers in a way kiln cannot express. Each error
//! names the file and the field, and none of them panics.

use std::path::{Path, PathBuf};

use kiln_compiler::import::{ImportError, ImportOptions, import_config, import_path};
use kiln_compiler::spec::HeadKind;
use serde_json::{Value, json};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

const FILE: &str = "models/x/config.json";

/// A published config from tests/import/ with `set` keys replaced (a JSON
/// `null` is written as null) and `remove` keys deleted.
fn patched(file: &str, set: Value, remove: &[&str]) -> String {
    let text =
        std::fs::read_to_string(root().join("tests/import").join(file)).expect("test config");
    let mut v: Value = serde_json::from_str(&text).expect("test config is JSON");
    let obj = v.as_object_mut().expect("object");
    for k in remove {
        obj.remove(*k);
    }
    for (k, x) in set.as_object().expect("object patch") {
        obj.insert(k.clone(), x.clone());
    }
    v.to_string()
}

fn import_err_with(json: &str, opts: &ImportOptions) -> ImportError {
    match import_config(json, Path::new(FILE), opts) {
        Ok(i) => panic!("expected an error, imported:\n{}", i.to_toml()),
        Err(e) => e,
    }
}

fn import_err(json: &str) -> ImportError {
    import_err_with(json, &ImportOptions::default())
}

/// The error is about `field` and its message contains each of `needles`;
/// the rendered form names the file and the field.
fn check(e: &ImportError, field: Option<&str>, needles: &[&str]) {
    assert_eq!(e.field.as_deref(), field, "field of: {e}");
    for n in needles {
        assert!(e.message.contains(n), "{n:?} not in: {e}");
    }
    let shown = e.to_string();
    assert!(
        shown.starts_with(FILE) || shown.contains("config.json"),
        "{shown}"
    );
    if let Some(f) = field {
        assert!(shown.contains(&format!("`{f}`")), "{shown}");
    }
}

fn err(file: &str, set: Value) -> ImportError {
    import_err(&patched(file, set, &[]))
}

// ---- malformed input ----

#[test]
fn invalid_json_names_file_and_position() {
    let e = import_err("{\"model_type\": \"gpt2\",,}");
    check(&e, None, &["invalid JSON", "line 1"]);
}

#[test]
fn top_level_must_be_an_object() {
    check(
        &import_err("[1, 2]"),
        None,
        &["top level must be a JSON object"],
    );
}

#[test]
fn missing_model_type_lists_supported() {
    let e = import_err(&patched("gpt2.json", json!({}), &["model_type"]));
    check(&e, Some("model_type"), &["is missing", "gpt2", "bart"]);
    let e = import_err(&patched("gpt2.json", json!({"model_type": null}), &[]));
    check(&e, Some("model_type"), &["is missing"]);
}

#[test]
fn model_type_must_be_a_string() {
    check(
        &err("gpt2.json", json!({"model_type": 2})),
        Some("model_type"),
        &["must be a string"],
    );
}

#[test]
fn unknown_model_type_lists_supported() {
    let e = err("gpt2.json", json!({"model_type": "mamba"}));
    check(
        &e,
        Some("model_type"),
        &[
            "\"mamba\" is not supported",
            "bart, bert",
            "roberta",
            "a family file can add it",
        ],
    );
    let e = err("llama-2-7b.json", json!({"model_type": "lama"}));
    check(&e, Some("model_type"), &["did you mean \"llama\"?"]);
}

#[test]
fn unreadable_file_names_it() {
    let missing = root().join("tests/import/no-such-config.json");
    let e = import_path(&missing, &ImportOptions::default()).unwrap_err();
    assert_eq!(e.field, None);
    assert!(e.message.contains("cannot read the config"), "{e}");
    assert!(e.to_string().contains("no-such-config.json"), "{e}");
}

#[test]
#[cfg(unix)]
fn devices_and_oversized_files_are_refused_before_reading() {
    // `/dev/zero` as a config would be read forever; now it is refused by its kind.
    let e = import_path(Path::new("/dev/zero"), &ImportOptions::default()).unwrap_err();
    assert_eq!(e.field, None);
    assert!(
        e.message.contains("cannot read the config") && e.message.contains("not a regular file"),
        "{e}"
    );
    let dir = std::env::temp_dir().join(format!("kiln-import-big-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let big = dir.join("config.json");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(kiln_compiler::import::MAX_CONFIG_BYTES + 1)
        .unwrap();
    let e = import_path(&dir, &ImportOptions::default()).unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        e.message.contains("more than the") && e.to_string().contains("config.json"),
        "{e}"
    );
}

#[test]
fn directory_without_config_json() {
    let dir = root().join("tests/import");
    let e = import_path(&dir, &ImportOptions::default()).unwrap_err();
    assert!(e.to_string().contains("tests/import/config.json"), "{e}");
}

// ---- wrong types ----

#[test]
fn integer_fields_reject_strings_floats_and_negatives() {
    for bad in [
        json!("768"),
        json!(768.5),
        json!(-768),
        json!(true),
        json!([768]),
    ] {
        let e = err("llama-2-7b.json", json!({"hidden_size": bad}));
        check(&e, Some("hidden_size"), &["must be a non-negative integer"]);
    }
}

#[test]
fn float_fields_reject_strings() {
    let e = err("llama-2-7b.json", json!({"rms_norm_eps": "1e-5"}));
    check(&e, Some("rms_norm_eps"), &["must be a number", "\"1e-5\""]);
}

#[test]
fn null_where_hf_needs_a_value() {
    let e = err("llama-2-7b.json", json!({"rms_norm_eps": null}));
    check(&e, Some("rms_norm_eps"), &["is null", "a number"]);
    let e = err("llama-2-7b.json", json!({"num_hidden_layers": null}));
    check(&e, Some("num_hidden_layers"), &["is null"]);
    let e = err("llama-2-7b.json", json!({"hidden_act": null}));
    check(&e, Some("hidden_act"), &["is null", "a string"]);
    let e = err("gpt2.json", json!({"scale_attn_weights": null}));
    check(
        &e,
        Some("scale_attn_weights"),
        &["is null", "true or false"],
    );
}

#[test]
fn bool_fields_reject_other_types() {
    let e = err("llama-2-7b.json", json!({"tie_word_embeddings": "yes"}));
    check(&e, Some("tie_word_embeddings"), &["must be true or false"]);
    let e = err("gpt2.json", json!({"scale_attn_by_inverse_layer_idx": 1}));
    check(
        &e,
        Some("scale_attn_by_inverse_layer_idx"),
        &["must be true or false"],
    );
}

#[test]
fn string_fields_reject_other_types() {
    let e = err("llama-2-7b.json", json!({"hidden_act": 5}));
    check(&e, Some("hidden_act"), &["must be a string"]);
}

#[test]
fn rope_tables_must_be_objects() {
    let e = err("llama-2-7b.json", json!({"rope_scaling": "linear"}));
    check(&e, Some("rope_scaling"), &["must be an object", "a string"]);
    let e = err("llama-2-7b.json", json!({"rope_parameters": [1]}));
    check(&e, Some("rope_parameters"), &["must be an object"]);
    let e = err(
        "llama-2-7b.json",
        json!({"rope_scaling": {"rope_type": "linear", "factor": "2"}}),
    );
    check(&e, Some("rope_scaling.factor"), &["must be a number"]);
}

#[test]
fn alias_conflict() {
    let e = err("gpt2.json", json!({"hidden_size": 1024}));
    check(&e, Some("hidden_size"), &["is 1024", "`n_embd` is 768"]);
}

#[test]
fn layer_types_shape() {
    let e = err("gemma-2-2b.json", json!({"layer_types": "alternate"}));
    check(&e, Some("layer_types"), &["must be an array of strings"]);
    let e = err(
        "gemma-2-2b.json",
        json!({"layer_types": ["full_attention"]}),
    );
    check(&e, Some("layer_types"), &["has 1 entries", "26"]);
    let mut types = vec![json!("full_attention"); 26];
    types[3] = json!("chunked_attention");
    let e = err("gemma-2-2b.json", json!({ "layer_types": types }));
    check(
        &e,
        Some("layer_types[3]"),
        &["\"chunked_attention\" is not supported"],
    );
}

// ---- RoPE settings kiln cannot express ----

#[test]
fn dynamic_rope_scaling() {
    let e = err(
        "llama-2-7b.json",
        json!({"rope_scaling": {"type": "dynamic", "factor": 2.0}}),
    );
    check(
        &e,
        Some("rope_scaling.type"),
        &["\"dynamic\" is not supported", "linear, llama3, yarn"],
    );
    // transformers 5 layout
    let e = err(
        "llama-2-7b.json",
        json!({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}}),
    );
    check(&e, Some("rope_parameters.rope_type"), &["\"dynamic\""]);
}

#[test]
fn unknown_rope_type() {
    let e = err(
        "phi-2.json",
        json!({"rope_scaling": {"rope_type": "longrope", "short_factor": [1.0]}}),
    );
    check(
        &e,
        Some("rope_scaling.rope_type"),
        &["\"longrope\" is not supported"],
    );
}

#[test]
fn rope_type_spellings_disagree() {
    let e = err(
        "llama-2-7b.json",
        json!({"rope_scaling": {"type": "linear", "rope_type": "yarn", "factor": 2.0}}),
    );
    check(&e, Some("rope_scaling.type"), &["\"linear\"", "\"yarn\""]);
}

#[test]
fn unknown_rope_parameter() {
    let e = err(
        "qwen2.5-0.5b.json",
        json!({"rope_scaling": {"type": "default", "mrope_section": [16, 24, 24]}}),
    );
    check(
        &e,
        Some("rope_scaling.mrope_section"),
        &["not a parameter of RoPE type \"default\""],
    );
}

#[test]
fn per_layer_type_rope_parameters() {
    let e = err(
        "gemma-2-2b.json",
        json!({"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                                   "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}}),
    );
    check(
        &e,
        Some("rope_parameters.full_attention"),
        &["per-layer-type"],
    );
}

#[test]
fn rope_scaling_missing_parameters() {
    let e = err(
        "llama-2-7b.json",
        json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "high_freq_factor": 4.0}}),
    );
    check(
        &e,
        Some("rope_scaling.low_freq_factor"),
        &["is required for RoPE type \"llama3\""],
    );
    let e = err(
        "llama-2-7b.json",
        json!({"rope_scaling": {"rope_type": "linear"}}),
    );
    check(&e, Some("rope_scaling.factor"), &["is required"]);
    let e = err(
        "llama-2-7b.json",
        json!({"rope_scaling": {"rope_type": "yarn", "original_max_position_embeddings": 4096}}),
    );
    check(
        &e,
        Some("rope_scaling.factor"),
        &["is required for RoPE type \"yarn\""],
    );
}

#[test]
fn rope_values_out_of_range() {
    let e = err(
        "llama-2-7b.json",
        json!({"rope_scaling": {"rope_type": "linear", "factor": 0.0}}),
    );
    check(&e, Some("rope_scaling.factor"), &["must be positive"]);
    let e = err("llama-2-7b.json", json!({"rope_theta": -1.0}));
    check(&e, Some("rope_theta"), &["must be positive"]);
    let e = err(
        "llama-2-7b.json",
        json!({"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 0}}),
    );
    check(
        &e,
        Some("rope_scaling.original_max_position_embeddings"),
        &["must be positive"],
    );
}

#[test]
fn yarn_without_truncation() {
    let e = err(
        "qwen2.5-0.5b.json",
        json!({"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768, "truncate": false}}),
    );
    check(
        &e,
        Some("rope_scaling.truncate"),
        &["= false is not supported"],
    );
}

#[test]
fn partial_rotary_out_of_range_or_odd() {
    let e = err("phi-2.json", json!({"partial_rotary_factor": 1.5}));
    check(&e, Some("partial_rotary_factor"), &["must be in (0, 1]"]);
    let e = err("phi-2.json", json!({"partial_rotary_factor": 0.0}));
    check(&e, Some("partial_rotary_factor"), &["must be in (0, 1]"]);
    // 80 * 0.0125 = 1 channel: nothing to pair it with.
    let e = err("phi-2.json", json!({"partial_rotary_factor": 0.0125}));
    check(
        &e,
        Some("partial_rotary_factor"),
        &["= 1 channels", "positive even count"],
    );
    let e = err("pythia-160m.json", json!({"rotary_pct": 0.01}));
    check(&e, Some("rotary_pct"), &["= 0 channels"]);
}

#[test]
fn gpt_neox_ambiguous_rope_keys() {
    let e = err("pythia-160m.json", json!({"rope_theta": 500000.0}));
    check(&e, Some("rope_theta"), &["rotary_emb_base", "ambiguous"]);
    let e = err("pythia-160m.json", json!({"partial_rotary_factor": 0.5}));
    check(
        &e,
        Some("partial_rotary_factor"),
        &["rotary_pct", "ambiguous"],
    );
}

// ---- other numerics kiln cannot express ----

#[test]
fn gpt2_inverse_layer_idx_scaling() {
    let e = err(
        "gpt2.json",
        json!({"scale_attn_by_inverse_layer_idx": true}),
    );
    check(
        &e,
        Some("scale_attn_by_inverse_layer_idx"),
        &["= true is not supported", "layer index"],
    );
}

#[test]
fn cross_attention_in_single_stack_models() {
    let e = err("gpt2.json", json!({"add_cross_attention": true}));
    check(
        &e,
        Some("add_cross_attention"),
        &["= true is not supported"],
    );
    let e = err(
        "bert-base-uncased.json",
        json!({"add_cross_attention": true}),
    );
    check(
        &e,
        Some("add_cross_attention"),
        &["= true is not supported"],
    );
}

#[test]
fn bert_relative_positions() {
    for p in ["relative_key", "relative_key_query"] {
        let e = err(
            "bert-base-uncased.json",
            json!({ "position_embedding_type": p }),
        );
        check(
            &e,
            Some("position_embedding_type"),
            &[p, "is not supported"],
        );
    }
}

#[test]
fn bert_as_decoder() {
    let e = err("roberta-base.json", json!({"is_decoder": true}));
    check(&e, Some("is_decoder"), &["= true is not supported"]);
}

#[test]
fn unknown_activations() {
    let e = err("llama-2-7b.json", json!({"hidden_act": "quick_gelu"}));
    check(
        &e,
        Some("hidden_act"),
        &[
            "\"quick_gelu\" is not an activation kiln supports",
            "gelu_new",
        ],
    );
    let e = err("gpt2.json", json!({"activation_function": "relu6"}));
    check(&e, Some("activation_function"), &["\"relu6\""]);
    let e = err(
        "distilbert-base-uncased.json",
        json!({"activation": "mish"}),
    );
    check(&e, Some("activation"), &["\"mish\""]);
    let e = err("bart-base.json", json!({"activation_function": "tanh"}));
    check(&e, Some("activation_function"), &["\"tanh\""]);
    let e = err("gemma-2-2b.json", json!({"hidden_activation": "gelu_10"}));
    check(&e, Some("hidden_activation"), &["\"gelu_10\""]);
}

#[test]
fn t5_feed_forward_proj() {
    let e = err(
        "t5-small.json",
        json!({"feed_forward_proj": "gated-gelu-fast"}),
    );
    check(&e, Some("feed_forward_proj"), &["not of the form"]);
    let e = err("t5-small.json", json!({"feed_forward_proj": "double-gelu"}));
    check(&e, Some("feed_forward_proj"), &["not of the form"]);
    let e = err(
        "t5-small.json",
        json!({"feed_forward_proj": "gated-quick_gelu"}),
    );
    check(&e, Some("feed_forward_proj"), &["\"quick_gelu\""]);
}

#[test]
fn bart_unequal_head_counts() {
    let e = err("bart-base.json", json!({"decoder_attention_heads": 16}));
    check(
        &e,
        Some("decoder_attention_heads"),
        &["= 16 differs from encoder_attention_heads = 12"],
    );
}

#[test]
fn bart_fields_hf_ignores_but_contradict_it() {
    for (k, v) in [
        ("normalize_before", true),
        ("add_final_layer_norm", true),
        ("normalize_embedding", false),
        ("add_bias_logits", true),
        ("static_position_embeddings", true),
    ] {
        let e = err("bart-base.json", json!({ k: v }));
        check(
            &e,
            Some(k),
            &["HF ignores this field and always builds post-norm blocks"],
        );
    }
    let e = err("bart-base.json", json!({"extra_pos_embeddings": 3}));
    check(
        &e,
        Some("extra_pos_embeddings"),
        &["offsets positions by 2"],
    );
}

#[test]
fn head_counts_must_divide() {
    let e = err("llama-2-7b.json", json!({"num_attention_heads": 30}));
    check(
        &e,
        Some("num_attention_heads"),
        &["= 30 does not divide hidden_size = 4096"],
    );
    let e = err("llama-2-7b.json", json!({"num_key_value_heads": 5}));
    check(
        &e,
        Some("num_key_value_heads"),
        &["= 5 must be positive and divide"],
    );
    let e = err("llama-2-7b.json", json!({"num_key_value_heads": 0}));
    check(&e, Some("num_key_value_heads"), &["= 0"]);
    let e = err("gpt2.json", json!({"n_head": 0}));
    check(&e, Some("n_head"), &["must be positive"]);
    let e = err("t5-small.json", json!({"d_kv": 0}));
    check(&e, Some("d_kv"), &["must be positive"]);
    let e = err("gemma-2b.json", json!({"head_dim": 0}));
    check(&e, Some("head_dim"), &["must be positive"]);
    let e = err("pythia-160m.json", json!({"head_dim": 32}));
    check(
        &e,
        Some("head_dim"),
        &["always uses hidden_size / num_attention_heads = 64"],
    );
}

#[test]
fn roberta_positions() {
    let e = err("roberta-base.json", json!({"max_position_embeddings": 2}));
    check(
        &e,
        Some("max_position_embeddings"),
        &["no usable positions", "offset pad_token_id + 1 = 2"],
    );
    let e = err("roberta-base.json", json!({"pad_token_id": null}));
    check(&e, Some("pad_token_id"), &["is null"]);
    let e = err("roberta-base.json", json!({"pad_token_id": u64::MAX}));
    check(&e, Some("pad_token_id"), &["too large"]);
}

#[test]
fn sliding_window_zero() {
    let e = err("mistral-7b.json", json!({"sliding_window": 0}));
    check(&e, Some("sliding_window"), &["= 0 would hide every key"]);
}

#[test]
fn gemma_activation_spellings_disagree() {
    let e = err("gemma-2b.json", json!({"hidden_activation": "silu"}));
    check(
        &e,
        Some("hidden_activation"),
        &["its alias `hidden_act` is \"gelu\"", "ambiguous"],
    );
}

#[test]
fn gemma2_window_spellings_disagree() {
    let e = err("gemma-2-2b.json", json!({"sliding_window_size": 2048}));
    check(
        &e,
        Some("sliding_window_size"),
        &["disagrees with sliding_window = 4096"],
    );
}

#[test]
fn gemma2_scalar_and_caps() {
    let e = err("gemma-2-2b.json", json!({"query_pre_attn_scalar": 0}));
    check(&e, Some("query_pre_attn_scalar"), &["must be positive"]);
    let e = err("gemma-2-2b.json", json!({"attn_logit_softcapping": -1.0}));
    check(
        &e,
        Some("attn_logit_softcapping"),
        &["must be positive or null"],
    );
    let e = err("gemma-2-2b.json", json!({"final_logit_softcapping": 0.0}));
    check(
        &e,
        Some("final_logit_softcapping"),
        &["must be positive or null"],
    );
}

#[test]
fn bidirectional_gemma() {
    let e = err(
        "gemma-2b.json",
        json!({"use_bidirectional_attention": true}),
    );
    check(
        &e,
        Some("use_bidirectional_attention"),
        &["= true is not supported"],
    );
    let e = err(
        "gemma-2-2b.json",
        json!({"use_bidirectional_attention": true}),
    );
    check(
        &e,
        Some("use_bidirectional_attention"),
        &["= true is not supported"],
    );
}

#[test]
fn qwen2_mrope() {
    let e = err("qwen2.5-0.5b.json", json!({"use_mrope": true}));
    check(&e, Some("use_mrope"), &["= true is not supported"]);
}

#[test]
fn mixtral_top_k() {
    let e = err("mixtral-8x7b.json", json!({"num_experts_per_tok": 9}));
    check(
        &e,
        Some("num_experts_per_tok"),
        &["exceeds num_local_experts = 8"],
    );
    let e = err("mixtral-8x7b.json", json!({"num_local_experts": 0}));
    check(&e, Some("num_local_experts"), &["must be positive"]);
}

#[test]
fn quantized_checkpoints() {
    let e = err(
        "llama-2-7b.json",
        json!({"quantization_config": {"quant_method": "gptq", "bits": 4}}),
    );
    check(&e, Some("quantization_config"), &["quantized checkpoints"]);
}

#[test]
fn too_many_layers() {
    let e = err("llama-2-7b.json", json!({"num_hidden_layers": 1u64 << 40}));
    check(
        &e,
        Some("num_hidden_layers"),
        &["more than the 4096 blocks"],
    );
    // Families without per-layer attention types leave the limit to the resolver.
    let e = err("gpt2.json", json!({"n_layer": 1u64 << 40}));
    check(&e, None, &["does not validate", "layers"]);
}

#[test]
fn huge_gpt2_width() {
    let e = err("gpt2.json", json!({"n_embd": u64::MAX, "n_head": 1}));
    check(&e, Some("n_embd"), &["too large"]);
}

#[test]
fn resolver_rejections_are_reported() {
    let e = err("gpt2.json", json!({"vocab_size": 0}));
    check(
        &e,
        None,
        &["the imported spec does not validate", "vocab_size"],
    );
}

// ---- options ----

#[test]
fn head_not_available_for_family() {
    let json = patched("gpt2.json", json!({}), &[]);
    let e = import_err_with(
        &json,
        &ImportOptions {
            name: None,
            head: Some(HeadKind::Pooler),
            tensors: None,
        },
    );
    check(
        &e,
        None,
        &[
            "head \"pooler\" is not available for model_type \"gpt2\"",
            "lm, none",
        ],
    );
    let json = patched("distilbert-base-uncased.json", json!({}), &[]);
    let e = import_err_with(
        &json,
        &ImportOptions {
            name: None,
            head: Some(HeadKind::Pooler),
            tensors: None,
        },
    );
    check(&e, None, &["none, mlm, mean-pool"]);
}

#[test]
fn roberta_mlm_head_needs_exact_gelu() {
    let json = patched("roberta-base.json", json!({"hidden_act": "gelu_new"}), &[]);
    let e = import_err_with(
        &json,
        &ImportOptions {
            name: None,
            head: Some(HeadKind::Mlm),
            tensors: None,
        },
    );
    check(&e, Some("hidden_act"), &["always applies exact gelu"]);
}

/// Arbitrary mutations of real configs never panic: each either imports or errors.
#[test]
fn no_panics_on_mutated_configs() {
    let values = [
        json!(null),
        json!(0),
        json!(1),
        json!(-1),
        json!(0.5),
        json!(1e300),
        json!(u64::MAX),
        json!(""),
        json!("gelu"),
        json!(true),
        json!(false),
        json!([]),
        json!({}),
        json!({"rope_type": "yarn", "factor": null}),
    ];
    let files: Vec<String> = std::fs::read_dir(root().join("tests/import"))
        .expect("tests/import")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    let mut outcomes = (0, 0);
    for file in &files {
        let base: Value = serde_json::from_str(&patched(file, json!({}), &[])).expect("json");
        let mut keys: Vec<String> = base.as_object().expect("object").keys().cloned().collect();
        keys.extend(
            [
                "rope_scaling",
                "rope_parameters",
                "layer_types",
                "head_dim",
                "n_inner",
                "sliding_window",
            ]
            .map(String::from),
        );
        for k in &keys {
            for v in &values {
                let json = patched(file, json!({ k.as_str(): v }), &[]);
                let r = std::panic::catch_unwind(|| {
                    import_config(&json, Path::new(FILE), &ImportOptions::default())
                });
                match r {
                    Ok(Ok(_)) => outcomes.0 += 1,
                    Ok(Err(_)) => outcomes.1 += 1,
                    Err(_) => panic!("panicked on {file} with {k} = {v}"),
                }
            }
        }
    }
    assert!(outcomes.0 > 0 && outcomes.1 > 0, "{outcomes:?}");
}

/// The model types kiln recognises but cannot express are errors naming the
/// config field and the reason, not "unknown model_type".
#[test]
fn recognised_but_inexpressible_model_types_say_why() {
    for (config, field, why) in [
        (
            r#"{"model_type": "longt5", "encoder_attention_type": "transient-global"}"#,
            "encoder_attention_type",
            "blockwise",
        ),
        (
            r#"{"model_type": "deberta-v2", "relative_attention": true, "pos_att_type": ["p2c", "c2p"]}"#,
            "pos_att_type",
            "disentangled attention",
        ),
        (
            r#"{"model_type": "deepseek_v3", "kv_lora_rank": 512}"#,
            "kv_lora_rank",
            "multi-head latent attention",
        ),
    ] {
        let e = import_err(config);
        check(&e, Some(field), &[why]);
    }
}
