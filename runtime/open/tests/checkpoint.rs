//! Loading HF safetensors checkpoints through the mapping tables.
//!
//! Each test writes a synthetic checkpoint with HF tensor names (written out
//! here by hand, independently of the tables) for a tiny spec in
//! models/tiny/, gives every tensor distinct values, loads it, and checks
//! that each value landed where HF semantics say it belongs: renames,
//! GPT-2's transposed and fused Conv1D, GPT-NeoX's per-head interleaved
//! q|k|v, Mixtral's per-expert stacking, tied heads, f16/bf16 conversion,
//! sharded checkpoints. Then the failure modes: pre-flight listing every
//! problem at once, corrupt and truncated files.

use kiln_compiler::ir::Graph;
use kiln_compiler::lower::{Lowered, lower};
use kiln_compiler::spec;
use kiln_open::checkpoint::{self, Checkpoint, CheckpointError};
use kiln_runtime::Weights;
use safetensors::Dtype as St;
use std::path::Path;

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

fn tiny(name: &str) -> Lowered {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../models/tiny/{name}.toml"));
    lower(&spec::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"))).unwrap()
}

/// A tiny spec with overrides appended.
fn tiny_with(name: &str, overrides: &str) -> Lowered {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny");
    let src = format!("extends = \"{name}.toml\"\nname = \"variant\"\n{overrides}");
    lower(&spec::load_str(&src, &dir.join("variant.toml")).unwrap_or_else(|e| panic!("{e}")))
        .unwrap()
}

fn graphs(l: &Lowered) -> Vec<&Graph> {
    l.graphs().collect()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Dt {
    F32,
    F16,
    BF16,
    F64,
    I64,
}

/// A checkpoint under construction: HF names, shapes, values.
#[derive(Default, Clone)]
struct Ck {
    tensors: Vec<(String, Dt, Vec<usize>, Vec<f32>)>,
}

impl Ck {
    /// Add an f32 tensor whose values are unique across the checkpoint:
    /// `1000 * (index + 1) + position / 64` ... kept exact in f32.
    fn t(&mut self, name: &str, shape: &[usize]) -> &mut Ck {
        let k = self.tensors.len() as f32 + 1.0;
        let n: usize = shape.iter().product();
        let vals = (0..n).map(|j| k * 100_000.0 + j as f32).collect();
        self.tensors
            .push((name.to_string(), Dt::F32, shape.to_vec(), vals));
        self
    }

    fn with(&mut self, name: &str, dt: Dt, shape: &[usize], vals: Vec<f32>) -> &mut Ck {
        self.tensors
            .push((name.to_string(), dt, shape.to_vec(), vals));
        self
    }

    fn get(&self, name: &str) -> &[f32] {
        &self
            .tensors
            .iter()
            .find(|t| t.0 == name)
            .unwrap_or_else(|| panic!("no {name}"))
            .3
    }

    fn remove(&mut self, name: &str) -> &mut Ck {
        self.tensors.retain(|t| t.0 != name);
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let raw: Vec<(String, St, Vec<usize>, Vec<u8>)> = self
            .tensors
            .iter()
            .map(|(n, dt, shape, vals)| {
                let (st, bytes): (St, Vec<u8>) = match dt {
                    Dt::F32 => (St::F32, vals.iter().flat_map(|v| v.to_le_bytes()).collect()),
                    Dt::F16 => (
                        St::F16,
                        vals.iter()
                            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                            .collect(),
                    ),
                    Dt::BF16 => (
                        St::BF16,
                        vals.iter()
                            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                            .collect(),
                    ),
                    Dt::F64 => (
                        St::F64,
                        vals.iter()
                            .flat_map(|v| f64::from(*v).to_le_bytes())
                            .collect(),
                    ),
                    Dt::I64 => (
                        St::I64,
                        vals.iter()
                            .flat_map(|v| (*v as i64).to_le_bytes())
                            .collect(),
                    ),
                };
                (n.clone(), st, shape.clone(), bytes)
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = raw
            .iter()
            .map(|(n, st, shape, b)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(*st, shape.clone(), b).unwrap(),
                )
            })
            .collect();
        safetensors::tensor::serialize(views, None).unwrap()
    }

    fn write(&self, path: &Path) {
        std::fs::write(path, self.bytes()).unwrap();
    }

    /// Write `model.safetensors` (+ config.json with `model_type`) into a fresh dir.
    fn dir(&self, model_type: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        self.write(&dir.path().join("model.safetensors"));
        if let Some(mt) = model_type {
            std::fs::write(
                dir.path().join("config.json"),
                format!("{{\"model_type\": \"{mt}\"}}"),
            )
            .unwrap();
        }
        dir
    }
}

fn load(path: &Path, l: &Lowered, family: Option<&str>) -> Result<Weights, CheckpointError> {
    checkpoint::load_safetensors(path, &graphs(l), family)
}

fn load_ok(path: &Path, l: &Lowered, family: Option<&str>) -> Weights {
    let w = load(path, l, family).unwrap_or_else(|e| panic!("{e}"));
    for g in l.graphs() {
        w.check(g).unwrap_or_else(|e| panic!("{e}"));
    }
    w
}

fn w<'a>(weights: &'a Weights, name: &str) -> &'a [f32] {
    weights
        .get(name)
        .unwrap_or_else(|| panic!("no parameter {name}"))
        .as_f32()
        .unwrap()
}

/// Row-major transpose of a `[r, c]` matrix.
fn transpose(v: &[f32], r: usize, c: usize) -> Vec<f32> {
    let mut out = vec![0.0; v.len()];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = v[i * c + j];
        }
    }
    out
}

fn err_text(r: Result<Weights, CheckpointError>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

// ---------------------------------------------------------------------------
// HF checkpoints for the tiny specs (d 64, 2 layers, 4 heads, d_ff 128, vocab 256)
// ---------------------------------------------------------------------------

const D: usize = 64;
const FF: usize = 128;
const V: usize = 256;

fn gpt2_ckpt(prefix: &str) -> Ck {
    let mut c = Ck::default();
    c.t(&format!("{prefix}wte.weight"), &[V, D])
        .t(&format!("{prefix}wpe.weight"), &[64, D]);
    for i in 0..2 {
        let h = format!("{prefix}h.{i}");
        c.t(&format!("{h}.ln_1.weight"), &[D])
            .t(&format!("{h}.ln_1.bias"), &[D])
            .t(&format!("{h}.attn.c_attn.weight"), &[D, 3 * D])
            .t(&format!("{h}.attn.c_attn.bias"), &[3 * D])
            .t(&format!("{h}.attn.c_proj.weight"), &[D, D])
            .t(&format!("{h}.attn.c_proj.bias"), &[D])
            .t(&format!("{h}.ln_2.weight"), &[D])
            .t(&format!("{h}.ln_2.bias"), &[D])
            .t(&format!("{h}.mlp.c_fc.weight"), &[D, FF])
            .t(&format!("{h}.mlp.c_fc.bias"), &[FF])
            .t(&format!("{h}.mlp.c_proj.weight"), &[FF, D])
            .t(&format!("{h}.mlp.c_proj.bias"), &[D])
            .t(&format!("{h}.attn.bias"), &[1, 1, 64, 64]);
    }
    c.t(&format!("{prefix}ln_f.weight"), &[D])
        .t(&format!("{prefix}ln_f.bias"), &[D]);
    c
}

/// Llama layout; `kv` KV heads of 16 channels; optional q/k/v biases; optional lm_head.
fn llama_ckpt(kv: usize, qkv_bias: bool, lm_head: bool) -> Ck {
    let mut c = Ck::default();
    c.t("model.embed_tokens.weight", &[V, D]);
    for i in 0..2 {
        let l = format!("model.layers.{i}");
        c.t(&format!("{l}.input_layernorm.weight"), &[D])
            .t(&format!("{l}.self_attn.q_proj.weight"), &[D, D])
            .t(&format!("{l}.self_attn.k_proj.weight"), &[kv * 16, D])
            .t(&format!("{l}.self_attn.v_proj.weight"), &[kv * 16, D])
            .t(&format!("{l}.self_attn.o_proj.weight"), &[D, D])
            .t(&format!("{l}.post_attention_layernorm.weight"), &[D])
            .t(&format!("{l}.mlp.gate_proj.weight"), &[FF, D])
            .t(&format!("{l}.mlp.up_proj.weight"), &[FF, D])
            .t(&format!("{l}.mlp.down_proj.weight"), &[D, FF]);
        if qkv_bias {
            c.t(&format!("{l}.self_attn.q_proj.bias"), &[D])
                .t(&format!("{l}.self_attn.k_proj.bias"), &[kv * 16])
                .t(&format!("{l}.self_attn.v_proj.bias"), &[kv * 16]);
        }
    }
    c.t("model.norm.weight", &[D]);
    if lm_head {
        c.t("lm_head.weight", &[V, D]);
    }
    c
}

fn bert_layers(c: &mut Ck, prefix: &str) {
    for i in 0..2 {
        let l = format!("{prefix}encoder.layer.{i}");
        for (m, shape) in [
            ("attention.self.query", [D, D]),
            ("attention.self.key", [D, D]),
            ("attention.self.value", [D, D]),
            ("attention.output.dense", [D, D]),
            ("intermediate.dense", [FF, D]),
            ("output.dense", [D, FF]),
        ] {
            c.t(&format!("{l}.{m}.weight"), &shape)
                .t(&format!("{l}.{m}.bias"), &shape[..1]);
        }
        for m in ["attention.output.LayerNorm", "output.LayerNorm"] {
            c.t(&format!("{l}.{m}.weight"), &[D])
                .t(&format!("{l}.{m}.bias"), &[D]);
        }
    }
}

fn bert_ckpt(prefix: &str, positions: usize, token_types: usize, pooler: bool) -> Ck {
    let mut c = Ck::default();
    c.t(
        &format!("{prefix}embeddings.word_embeddings.weight"),
        &[V, D],
    )
    .t(
        &format!("{prefix}embeddings.position_embeddings.weight"),
        &[positions, D],
    )
    .t(
        &format!("{prefix}embeddings.token_type_embeddings.weight"),
        &[token_types, D],
    )
    .t(&format!("{prefix}embeddings.LayerNorm.weight"), &[D])
    .t(&format!("{prefix}embeddings.LayerNorm.bias"), &[D]);
    bert_layers(&mut c, prefix);
    if pooler {
        c.t(&format!("{prefix}pooler.dense.weight"), &[D, D])
            .t(&format!("{prefix}pooler.dense.bias"), &[D]);
    }
    c
}

// ---------------------------------------------------------------------------
// families
// ---------------------------------------------------------------------------

#[test]
fn gpt2_conv1d_is_transposed_and_c_attn_split() {
    let ck = gpt2_ckpt("transformer.");
    let dir = ck.dir(Some("gpt2"));
    let l = tiny("gpt2");
    let plan = checkpoint::preflight(dir.path(), &graphs(&l), None).unwrap();
    assert_eq!(plan.family(), "gpt2");
    assert_eq!(plan.ignored().len(), 2, "the two attn.bias buffers");
    let wt = load_ok(dir.path(), &l, None);

    assert_eq!(w(&wt, "embed.tokens"), ck.get("transformer.wte.weight"));
    assert_eq!(w(&wt, "embed.positions"), ck.get("transformer.wpe.weight"));
    for i in 0..2 {
        let h = format!("transformer.h.{i}");
        // c_attn [in=64, out=192]: kiln's q/k/v [out, in] are its transposed column blocks.
        let fused = transpose(ck.get(&format!("{h}.attn.c_attn.weight")), D, 3 * D);
        let bias = ck.get(&format!("{h}.attn.c_attn.bias"));
        for (p, name) in ["q", "k", "v"].iter().enumerate() {
            assert_eq!(
                w(&wt, &format!("layers.{i}.attn.{name}.weight")),
                &fused[p * D * D..(p + 1) * D * D]
            );
            assert_eq!(
                w(&wt, &format!("layers.{i}.attn.{name}.bias")),
                &bias[p * D..(p + 1) * D]
            );
        }
        // Spot-check one element by HF semantics: q.weight[o][k] = c_attn[k][o].
        let raw = ck.get(&format!("{h}.attn.c_attn.weight"));
        assert_eq!(
            w(&wt, &format!("layers.{i}.attn.q.weight"))[3 * D + 5],
            raw[5 * 3 * D + 3]
        );
        assert_eq!(
            w(&wt, &format!("layers.{i}.attn.v.weight"))[3 * D + 5],
            raw[5 * 3 * D + 2 * D + 3]
        );
        assert_eq!(
            w(&wt, &format!("layers.{i}.attn.o.weight")),
            transpose(ck.get(&format!("{h}.attn.c_proj.weight")), D, D)
        );
        assert_eq!(
            w(&wt, &format!("layers.{i}.mlp.up.weight")),
            transpose(ck.get(&format!("{h}.mlp.c_fc.weight")), D, FF)
        );
        assert_eq!(
            w(&wt, &format!("layers.{i}.mlp.down.weight")),
            transpose(ck.get(&format!("{h}.mlp.c_proj.weight")), FF, D)
        );
        assert_eq!(
            w(&wt, &format!("layers.{i}.attn_norm.bias")),
            ck.get(&format!("{h}.ln_1.bias"))
        );
        assert_eq!(
            w(&wt, &format!("layers.{i}.mlp_norm.weight")),
            ck.get(&format!("{h}.ln_2.weight"))
        );
    }
    assert_eq!(
        w(&wt, "final_norm.weight"),
        ck.get("transformer.ln_f.weight")
    );
}

#[test]
fn names_are_accepted_with_or_without_the_prefix() {
    let l = tiny("gpt2");
    let bare = gpt2_ckpt("").dir(None);
    let prefixed = gpt2_ckpt("transformer.").dir(None);
    let a = load_ok(bare.path(), &l, Some("gpt2"));
    let b = load_ok(prefixed.path(), &l, Some("gpt2"));
    assert_eq!(a, b);
    // Both spellings at once: every parameter provided twice.
    let mut both = gpt2_ckpt("transformer.");
    both.with("wte.weight", Dt::F32, &[V, D], vec![0.0; V * D]);
    let dir = both.dir(None);
    let e = err_text(load(dir.path(), &l, Some("gpt2")));
    assert!(
        e.contains("duplicate: parameter `embed.tokens` is provided by both `transformer.wte.weight` and `wte.weight`"),
        "{e}"
    );
}

#[test]
fn gpt2_lm_head_must_equal_the_embedding() {
    let l = tiny("gpt2");
    let mut ck = gpt2_ckpt("transformer.");
    let wte = ck.get("transformer.wte.weight").to_vec();
    ck.with("lm_head.weight", Dt::F32, &[V, D], wte.clone());
    let dir = ck.dir(None);
    let plan = checkpoint::preflight(dir.path(), &graphs(&l), None).unwrap();
    assert_eq!(plan.tied(), vec![("lm_head.weight", "embed.tokens")]);
    load_ok(dir.path(), &l, None);

    let mut other = wte;
    other[7] += 0.5;
    ck.remove("lm_head.weight")
        .with("lm_head.weight", Dt::F32, &[V, D], other);
    let dir = ck.dir(None);
    let e = err_text(load(dir.path(), &l, None));
    assert!(
        e.contains("tensor `lm_head.weight` should equal `embed.tokens`") && e.contains("5e-1"),
        "{e}"
    );
}

#[test]
fn gpt_neox_query_key_value_is_split_per_head() {
    let l = tiny("pythia-160m");
    let mut c = Ck::default();
    c.t("gpt_neox.embed_in.weight", &[V, D])
        .t("embed_out.weight", &[V, D]);
    for i in 0..2 {
        let p = format!("gpt_neox.layers.{i}");
        c.t(&format!("{p}.input_layernorm.weight"), &[D])
            .t(&format!("{p}.input_layernorm.bias"), &[D])
            .t(&format!("{p}.post_attention_layernorm.weight"), &[D])
            .t(&format!("{p}.post_attention_layernorm.bias"), &[D])
            .t(
                &format!("{p}.attention.query_key_value.weight"),
                &[3 * D, D],
            )
            .t(&format!("{p}.attention.query_key_value.bias"), &[3 * D])
            .t(&format!("{p}.attention.dense.weight"), &[D, D])
            .t(&format!("{p}.attention.dense.bias"), &[D])
            .t(&format!("{p}.attention.rotary_emb.inv_freq"), &[8])
            .t(&format!("{p}.mlp.dense_h_to_4h.weight"), &[FF, D])
            .t(&format!("{p}.mlp.dense_h_to_4h.bias"), &[FF])
            .t(&format!("{p}.mlp.dense_4h_to_h.weight"), &[D, FF])
            .t(&format!("{p}.mlp.dense_4h_to_h.bias"), &[D]);
    }
    c.t("gpt_neox.final_layer_norm.weight", &[D])
        .t("gpt_neox.final_layer_norm.bias", &[D]);
    let dir = c.dir(Some("gpt_neox"));
    let wt = load_ok(dir.path(), &l, None);
    let (heads, hd) = (4, 16);
    for i in 0..2 {
        let qkv = c.get(&format!(
            "gpt_neox.layers.{i}.attention.query_key_value.weight"
        ));
        let qkv_b = c.get(&format!(
            "gpt_neox.layers.{i}.attention.query_key_value.bias"
        ));
        // HF: qkv.view(heads, 3 * hd, d); q = [:, :hd], k = [:, hd:2hd], v = [:, 2hd:].
        for (p, name) in ["q", "k", "v"].iter().enumerate() {
            let got = w(&wt, &format!("layers.{i}.attn.{name}.weight"));
            let got_b = w(&wt, &format!("layers.{i}.attn.{name}.bias"));
            for h in 0..heads {
                for j in 0..hd {
                    let src_row = h * 3 * hd + p * hd + j;
                    let dst_row = h * hd + j;
                    assert_eq!(
                        &got[dst_row * D..(dst_row + 1) * D],
                        &qkv[src_row * D..(src_row + 1) * D]
                    );
                    assert_eq!(got_b[dst_row], qkv_b[src_row]);
                }
            }
        }
        assert_eq!(
            w(&wt, &format!("layers.{i}.mlp_norm.weight")),
            c.get(&format!(
                "gpt_neox.layers.{i}.post_attention_layernorm.weight"
            ))
        );
    }
    assert_eq!(w(&wt, "head.weight"), c.get("embed_out.weight"));
    assert_eq!(
        w(&wt, "final_norm.bias"),
        c.get("gpt_neox.final_layer_norm.bias")
    );
}

#[test]
fn llama_family_loads_including_gqa_and_untied_head() {
    let l = tiny_with("llama-2-7b", "[attention]\nkv_heads = 2\n");
    let ck = llama_ckpt(2, false, true);
    let dir = ck.dir(Some("llama"));
    let wt = load_ok(dir.path(), &l, None);
    let pairs = [
        ("model.embed_tokens.weight", "embed.tokens"),
        ("lm_head.weight", "head.weight"),
        ("model.norm.weight", "final_norm.weight"),
        (
            "model.layers.1.input_layernorm.weight",
            "layers.1.attn_norm.weight",
        ),
        (
            "model.layers.1.post_attention_layernorm.weight",
            "layers.1.mlp_norm.weight",
        ),
        (
            "model.layers.0.self_attn.k_proj.weight",
            "layers.0.attn.k.weight",
        ),
        (
            "model.layers.0.self_attn.o_proj.weight",
            "layers.0.attn.o.weight",
        ),
        (
            "model.layers.0.mlp.gate_proj.weight",
            "layers.0.mlp.gate.weight",
        ),
        (
            "model.layers.0.mlp.up_proj.weight",
            "layers.0.mlp.up.weight",
        ),
        (
            "model.layers.0.mlp.down_proj.weight",
            "layers.0.mlp.down.weight",
        ),
    ];
    for (hf, canon) in pairs {
        assert_eq!(w(&wt, canon), ck.get(hf), "{hf} -> {canon}");
    }
    // The same checkpoint under Mistral's tiny spec (GQA 2), chosen by model_type.
    let dir = ck.dir(Some("mistral"));
    load_ok(dir.path(), &tiny("mistral-7b"), None);
}

#[test]
fn qwen2_biases_and_tied_head() {
    let l = tiny("qwen2.5-0.5b");
    let ck = llama_ckpt(2, true, false);
    let dir = ck.dir(Some("qwen2"));
    let wt = load_ok(dir.path(), &l, None);
    assert_eq!(
        w(&wt, "layers.1.attn.k.bias"),
        ck.get("model.layers.1.self_attn.k_proj.bias")
    );
    assert!(
        wt.get("head.weight").is_none(),
        "tied: one parameter, no copy"
    );
    // The same biases under a spec without qkv bias are unexpected, not dropped.
    let e = err_text(load(dir.path(), &tiny("smollm2-135m"), None));
    assert!(
        e.contains("unexpected: checkpoint tensor `model.layers.0.self_attn.q_proj.bias` F32[64] maps to `layers.0.attn.q.bias`, which the model does not have"),
        "{e}"
    );
}

#[test]
fn untied_spec_on_a_tied_checkpoint_says_so() {
    // SmolLM2 checkpoints have no lm_head; a spec with an untied head is told why it is missing.
    let ck = llama_ckpt(2, false, false);
    let dir = ck.dir(None);
    let e = err_text(load(dir.path(), &tiny("mistral-7b"), None));
    assert!(
        e.contains(
            "missing: parameter `head.weight` [256, 64] (checkpoint tensor `lm_head.weight`)"
        ) && e.contains("set `tied = true`"),
        "{e}"
    );
}

#[test]
fn mixtral_experts_are_stacked() {
    let l = tiny("mixtral-8x7b");
    let mut ck = llama_ckpt(2, false, true);
    for i in 0..2 {
        for p in ["gate_proj", "up_proj", "down_proj"] {
            ck.remove(&format!("model.layers.{i}.mlp.{p}.weight"));
        }
        ck.t(
            &format!("model.layers.{i}.block_sparse_moe.gate.weight"),
            &[4, D],
        );
        for e in 0..4 {
            let x = format!("model.layers.{i}.block_sparse_moe.experts.{e}");
            ck.t(&format!("{x}.w1.weight"), &[FF, D])
                .t(&format!("{x}.w3.weight"), &[FF, D])
                .t(&format!("{x}.w2.weight"), &[D, FF]);
        }
    }
    let dir = ck.dir(Some("mixtral"));
    let wt = load_ok(dir.path(), &l, None);
    for i in 0..2 {
        assert_eq!(
            w(&wt, &format!("layers.{i}.moe.router.weight")),
            ck.get(&format!("model.layers.{i}.block_sparse_moe.gate.weight"))
        );
        for (hf, canon) in [("w1", "gate"), ("w3", "up"), ("w2", "down")] {
            let got = w(&wt, &format!("layers.{i}.moe.experts.{canon}.weight"));
            let per = FF * D;
            for e in 0..4 {
                let want = ck.get(&format!(
                    "model.layers.{i}.block_sparse_moe.experts.{e}.{hf}.weight"
                ));
                assert_eq!(
                    &got[e * per..(e + 1) * per],
                    want,
                    "layer {i} expert {e} {hf}"
                );
            }
        }
    }
    // Auto-detection without config.json finds the mixtral table (llama's leaves the experts unmatched).
    let dir = ck.dir(None);
    let plan = checkpoint::preflight(dir.path(), &graphs(&l), None).unwrap();
    assert_eq!(plan.family(), "mixtral");

    // A missing expert is named.
    ck.remove("model.layers.1.block_sparse_moe.experts.2.w3.weight");
    let dir = ck.dir(None);
    let e = err_text(load(dir.path(), &l, Some("mixtral")));
    assert!(
        e.contains(
            "missing: parameter `layers.1.moe.experts.up.weight` [4, 128, 64] stacks 4 tensors like \
             `model.layers.1.block_sparse_moe.experts.0.w3.weight`; the checkpoint lacks \
             `model.layers.1.block_sparse_moe.experts.2.w3.weight`"
        ),
        "{e}"
    );
}

#[test]
fn gemma2_sandwich_norms_differ_from_llama() {
    let l = tiny("gemma-2-2b");
    let mut ck = llama_ckpt(2, false, false);
    for i in 0..2 {
        ck.t(
            &format!("model.layers.{i}.pre_feedforward_layernorm.weight"),
            &[D],
        )
        .t(
            &format!("model.layers.{i}.post_feedforward_layernorm.weight"),
            &[D],
        );
    }
    let dir = ck.dir(None); // auto-detect: only gemma2's table knows these norms
    let plan = checkpoint::preflight(dir.path(), &graphs(&l), None).unwrap();
    assert_eq!(plan.family(), "gemma2");
    let wt = load_ok(dir.path(), &l, None);
    for i in 0..2 {
        let p = format!("model.layers.{i}");
        assert_eq!(
            w(&wt, &format!("layers.{i}.attn_norm.weight")),
            ck.get(&format!("{p}.input_layernorm.weight"))
        );
        assert_eq!(
            w(&wt, &format!("layers.{i}.attn_post_norm.weight")),
            ck.get(&format!("{p}.post_attention_layernorm.weight"))
        );
        assert_eq!(
            w(&wt, &format!("layers.{i}.mlp_norm.weight")),
            ck.get(&format!("{p}.pre_feedforward_layernorm.weight"))
        );
        assert_eq!(
            w(&wt, &format!("layers.{i}.mlp_post_norm.weight")),
            ck.get(&format!("{p}.post_feedforward_layernorm.weight"))
        );
    }
    // Gemma (1): post_attention_layernorm is the pre-MLP norm, as in Llama.
    let g1 = llama_ckpt(1, false, false);
    let dir = g1.dir(Some("gemma"));
    let wt = load_ok(dir.path(), &tiny("gemma-2b"), None);
    assert_eq!(
        w(&wt, "layers.0.mlp_norm.weight"),
        g1.get("model.layers.0.post_attention_layernorm.weight")
    );
}

#[test]
fn phi_names_and_head_bias() {
    let l = tiny("phi-2");
    let mut c = Ck::default();
    c.t("model.embed_tokens.weight", &[V, D]);
    for i in 0..2 {
        let p = format!("model.layers.{i}");
        c.t(&format!("{p}.input_layernorm.weight"), &[D])
            .t(&format!("{p}.input_layernorm.bias"), &[D]);
        for m in ["q_proj", "k_proj", "v_proj", "dense"] {
            c.t(&format!("{p}.self_attn.{m}.weight"), &[D, D])
                .t(&format!("{p}.self_attn.{m}.bias"), &[D]);
        }
        c.t(&format!("{p}.mlp.fc1.weight"), &[FF, D])
            .t(&format!("{p}.mlp.fc1.bias"), &[FF])
            .t(&format!("{p}.mlp.fc2.weight"), &[D, FF])
            .t(&format!("{p}.mlp.fc2.bias"), &[D]);
    }
    c.t("model.final_layernorm.weight", &[D])
        .t("model.final_layernorm.bias", &[D])
        .t("lm_head.weight", &[V, D])
        .t("lm_head.bias", &[V]);
    let dir = c.dir(Some("phi"));
    let wt = load_ok(dir.path(), &l, None);
    assert_eq!(
        w(&wt, "layers.1.attn.o.bias"),
        c.get("model.layers.1.self_attn.dense.bias")
    );
    assert_eq!(
        w(&wt, "layers.1.mlp.up.weight"),
        c.get("model.layers.1.mlp.fc1.weight")
    );
    assert_eq!(w(&wt, "head.bias"), c.get("lm_head.bias"));
    assert_eq!(
        w(&wt, "final_norm.weight"),
        c.get("model.final_layernorm.weight")
    );
}

#[test]
fn bert_with_pooler_and_minilm_without() {
    let ck = bert_ckpt("bert.", 64, 2, true);
    let dir = ck.dir(Some("bert"));
    let wt = load_ok(dir.path(), &tiny("bert-base-uncased"), None);
    let pairs = [
        ("bert.embeddings.word_embeddings.weight", "embed.tokens"),
        (
            "bert.embeddings.token_type_embeddings.weight",
            "embed.token_types",
        ),
        ("bert.embeddings.LayerNorm.bias", "embed.norm.bias"),
        (
            "bert.encoder.layer.1.attention.self.query.weight",
            "layers.1.attn.q.weight",
        ),
        (
            "bert.encoder.layer.1.attention.output.dense.bias",
            "layers.1.attn.o.bias",
        ),
        (
            "bert.encoder.layer.1.attention.output.LayerNorm.weight",
            "layers.1.attn_norm.weight",
        ),
        (
            "bert.encoder.layer.1.intermediate.dense.weight",
            "layers.1.mlp.up.weight",
        ),
        (
            "bert.encoder.layer.1.output.dense.weight",
            "layers.1.mlp.down.weight",
        ),
        (
            "bert.encoder.layer.1.output.LayerNorm.bias",
            "layers.1.mlp_norm.bias",
        ),
        ("bert.pooler.dense.weight", "head.pooler.dense.weight"),
    ];
    for (hf, canon) in pairs {
        assert_eq!(w(&wt, canon), ck.get(hf), "{hf} -> {canon}");
    }

    // all-MiniLM: the checkpoint's pooler is unused by the mean-pooling spec, and its
    // I64 position_ids buffer is ignored (its dtype would not load).
    let mut mini = bert_ckpt("", 64, 2, true);
    mini.with(
        "embeddings.position_ids",
        Dt::I64,
        &[1, 64],
        (0..64).map(|x| x as f32).collect(),
    );
    let dir = mini.dir(Some("bert"));
    let l = tiny("all-minilm-l6-v2");
    let plan = checkpoint::preflight(dir.path(), &graphs(&l), None).unwrap();
    let unused: Vec<&str> = plan.unused().iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(unused, ["pooler.dense.bias", "pooler.dense.weight"]);
    assert_eq!(plan.ignored()[0].0, "embeddings.position_ids");
    let wt = load_ok(dir.path(), &l, None);
    assert!(wt.get("head.pooler.dense.weight").is_none());
}

#[test]
fn bert_mlm_head() {
    let l = tiny_with(
        "bert-base-uncased",
        "[head]\nkind = \"mlm\"\ntied = true\nbias = true\n",
    );
    let mut ck = bert_ckpt("bert.", 64, 2, false);
    let emb = ck.get("bert.embeddings.word_embeddings.weight").to_vec();
    ck.t("cls.predictions.transform.dense.weight", &[D, D])
        .t("cls.predictions.transform.dense.bias", &[D])
        .t("cls.predictions.transform.LayerNorm.weight", &[D])
        .t("cls.predictions.transform.LayerNorm.bias", &[D])
        .t("cls.predictions.bias", &[V])
        .with("cls.predictions.decoder.weight", Dt::F32, &[V, D], emb);
    let bias = ck.get("cls.predictions.bias").to_vec();
    ck.with("cls.predictions.decoder.bias", Dt::F32, &[V], bias);
    let dir = ck.dir(None);
    let wt = load_ok(dir.path(), &l, Some("bert"));
    assert_eq!(
        w(&wt, "head.transform.norm.weight"),
        ck.get("cls.predictions.transform.LayerNorm.weight")
    );
    assert_eq!(
        w(&wt, "head.transform.dense.bias"),
        ck.get("cls.predictions.transform.dense.bias")
    );
    assert_eq!(w(&wt, "head.bias"), ck.get("cls.predictions.bias"));
}

#[test]
fn roberta_and_distilbert() {
    let ck = bert_ckpt("roberta.", 66, 1, true);
    let dir = ck.dir(Some("roberta"));
    let wt = load_ok(dir.path(), &tiny("roberta-base"), None);
    assert_eq!(
        w(&wt, "embed.positions"),
        ck.get("roberta.embeddings.position_embeddings.weight")
    );
    assert_eq!(
        w(&wt, "head.pooler.dense.bias"),
        ck.get("roberta.pooler.dense.bias")
    );

    let mut c = Ck::default();
    c.t("distilbert.embeddings.word_embeddings.weight", &[V, D])
        .t("distilbert.embeddings.position_embeddings.weight", &[64, D])
        .t("distilbert.embeddings.LayerNorm.weight", &[D])
        .t("distilbert.embeddings.LayerNorm.bias", &[D]);
    for i in 0..2 {
        let p = format!("distilbert.transformer.layer.{i}");
        for m in ["q_lin", "k_lin", "v_lin", "out_lin"] {
            c.t(&format!("{p}.attention.{m}.weight"), &[D, D])
                .t(&format!("{p}.attention.{m}.bias"), &[D]);
        }
        c.t(&format!("{p}.sa_layer_norm.weight"), &[D])
            .t(&format!("{p}.sa_layer_norm.bias"), &[D])
            .t(&format!("{p}.ffn.lin1.weight"), &[FF, D])
            .t(&format!("{p}.ffn.lin1.bias"), &[FF])
            .t(&format!("{p}.ffn.lin2.weight"), &[D, FF])
            .t(&format!("{p}.ffn.lin2.bias"), &[D])
            .t(&format!("{p}.output_layer_norm.weight"), &[D])
            .t(&format!("{p}.output_layer_norm.bias"), &[D]);
    }
    let dir = c.dir(None);
    let l = tiny("distilbert-base-uncased");
    let plan = checkpoint::preflight(dir.path(), &graphs(&l), None).unwrap();
    assert_eq!(plan.family(), "distilbert");
    let wt = load_ok(dir.path(), &l, None);
    assert_eq!(
        w(&wt, "layers.1.attn.o.weight"),
        c.get("distilbert.transformer.layer.1.attention.out_lin.weight")
    );
    assert_eq!(
        w(&wt, "layers.1.attn_norm.bias"),
        c.get("distilbert.transformer.layer.1.sa_layer_norm.bias")
    );
    assert_eq!(
        w(&wt, "layers.1.mlp_norm.weight"),
        c.get("distilbert.transformer.layer.1.output_layer_norm.weight")
    );
}

fn t5_ckpt(gated: bool, lm_head: Option<bool>, buckets: usize) -> Ck {
    let mut c = Ck::default();
    c.t("shared.weight", &[V, D]);
    let shared = c.get("shared.weight").to_vec();
    c.with(
        "encoder.embed_tokens.weight",
        Dt::F32,
        &[V, D],
        shared.clone(),
    )
    .with(
        "decoder.embed_tokens.weight",
        Dt::F32,
        &[V, D],
        shared.clone(),
    );
    for stack in ["encoder", "decoder"] {
        c.t(
            &format!("{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
            &[buckets, 4],
        );
        for i in 0..2 {
            let b = format!("{stack}.block.{i}");
            for m in ["q", "k", "v", "o"] {
                c.t(&format!("{b}.layer.0.SelfAttention.{m}.weight"), &[D, D]);
            }
            c.t(&format!("{b}.layer.0.layer_norm.weight"), &[D]);
            let mlp = if stack == "decoder" {
                for m in ["q", "k", "v", "o"] {
                    c.t(&format!("{b}.layer.1.EncDecAttention.{m}.weight"), &[D, D]);
                }
                c.t(&format!("{b}.layer.1.layer_norm.weight"), &[D]);
                2
            } else {
                1
            };
            if gated {
                c.t(
                    &format!("{b}.layer.{mlp}.DenseReluDense.wi_0.weight"),
                    &[FF, D],
                )
                .t(
                    &format!("{b}.layer.{mlp}.DenseReluDense.wi_1.weight"),
                    &[FF, D],
                );
            } else {
                c.t(
                    &format!("{b}.layer.{mlp}.DenseReluDense.wi.weight"),
                    &[FF, D],
                );
            }
            c.t(
                &format!("{b}.layer.{mlp}.DenseReluDense.wo.weight"),
                &[D, FF],
            )
            .t(&format!("{b}.layer.{mlp}.layer_norm.weight"), &[D]);
        }
        c.t(&format!("{stack}.final_layer_norm.weight"), &[D]);
    }
    match lm_head {
        Some(true) => {
            c.with("lm_head.weight", Dt::F32, &[V, D], shared);
        }
        Some(false) => {
            c.t("lm_head.weight", &[V, D]);
        }
        None => {}
    }
    c
}

#[test]
fn t5_relative_bias_cross_attention_and_tied_copies() {
    let l = tiny("t5-small"); // buckets 8
    let ck = t5_ckpt(false, Some(true), 8);
    let dir = ck.dir(Some("t5"));
    let plan = checkpoint::preflight(dir.path(), &graphs(&l), None).unwrap();
    assert_eq!(
        plan.tied().len(),
        3,
        "encoder/decoder embed_tokens and lm_head: {:?}",
        plan.tied()
    );
    let wt = load_ok(dir.path(), &l, None);
    // [buckets, heads] in both.
    assert_eq!(
        w(&wt, "encoder.positions.relative_bias"),
        ck.get("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    );
    assert_eq!(
        w(&wt, "decoder.positions.relative_bias"),
        ck.get("decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    );
    assert_eq!(
        w(&wt, "decoder.layers.1.cross_attn.k.weight"),
        ck.get("decoder.block.1.layer.1.EncDecAttention.k.weight")
    );
    assert_eq!(
        w(&wt, "decoder.layers.1.cross_norm.weight"),
        ck.get("decoder.block.1.layer.1.layer_norm.weight")
    );
    assert_eq!(
        w(&wt, "decoder.layers.1.mlp_norm.weight"),
        ck.get("decoder.block.1.layer.2.layer_norm.weight")
    );
    assert_eq!(
        w(&wt, "encoder.layers.1.mlp.up.weight"),
        ck.get("encoder.block.1.layer.1.DenseReluDense.wi.weight")
    );
    assert_eq!(
        w(&wt, "encoder.final_norm.weight"),
        ck.get("encoder.final_layer_norm.weight")
    );

    // v1.1: gated-GELU MLP (wi_0 is the activated gate) and a separate lm_head.
    let l = tiny_with(
        "t5-small",
        "[mlp]\ngated = true\nactivation = \"gelu-tanh\"\n[head]\ntied = false\ninput_scale = 1.0\n",
    );
    let ck = t5_ckpt(true, Some(false), 8);
    let dir = ck.dir(Some("t5"));
    let wt = load_ok(dir.path(), &l, None);
    assert_eq!(
        w(&wt, "decoder.layers.0.mlp.gate.weight"),
        ck.get("decoder.block.0.layer.2.DenseReluDense.wi_0.weight")
    );
    assert_eq!(
        w(&wt, "decoder.layers.0.mlp.up.weight"),
        ck.get("decoder.block.0.layer.2.DenseReluDense.wi_1.weight")
    );
    assert_eq!(w(&wt, "head.weight"), ck.get("lm_head.weight"));

    // ... which under a tied v1.0 spec is caught at load, not silently dropped.
    let e = err_text(load(
        dir.path(),
        &tiny_with(
            "t5-small",
            "[mlp]\ngated = true\nactivation = \"gelu-tanh\"\n",
        ),
        None,
    ));
    assert!(
        e.contains("`lm_head.weight` should equal `embed.tokens`"),
        "{e}"
    );

    // A bias table sized for other bucket counts is reported with both shapes.
    let ck = t5_ckpt(false, None, 32);
    let dir = ck.dir(Some("t5"));
    let e = err_text(load(dir.path(), &tiny("t5-small"), None));
    assert!(
        e.contains("shape: checkpoint tensor `encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight` F32[32, 4] does not fit parameter `encoder.positions.relative_bias` [8, 4]"),
        "{e}"
    );
}

#[test]
fn bart_positions_and_final_logits_bias() {
    let l = tiny("bart-base");
    let mut c = Ck::default();
    c.t("model.shared.weight", &[V, D]);
    for stack in ["encoder", "decoder"] {
        c.t(&format!("model.{stack}.embed_positions.weight"), &[66, D])
            .t(&format!("model.{stack}.layernorm_embedding.weight"), &[D])
            .t(&format!("model.{stack}.layernorm_embedding.bias"), &[D]);
        for i in 0..2 {
            let p = format!("model.{stack}.layers.{i}");
            let mut attns = vec!["self_attn"];
            if stack == "decoder" {
                attns.push("encoder_attn");
            }
            for a in attns {
                for m in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                    c.t(&format!("{p}.{a}.{m}.weight"), &[D, D])
                        .t(&format!("{p}.{a}.{m}.bias"), &[D]);
                }
                c.t(&format!("{p}.{a}_layer_norm.weight"), &[D])
                    .t(&format!("{p}.{a}_layer_norm.bias"), &[D]);
            }
            c.t(&format!("{p}.fc1.weight"), &[FF, D])
                .t(&format!("{p}.fc1.bias"), &[FF])
                .t(&format!("{p}.fc2.weight"), &[D, FF])
                .t(&format!("{p}.fc2.bias"), &[D])
                .t(&format!("{p}.final_layer_norm.weight"), &[D])
                .t(&format!("{p}.final_layer_norm.bias"), &[D]);
        }
    }
    c.t("final_logits_bias", &[1, V]);
    let dir = c.dir(Some("bart"));
    let wt = load_ok(dir.path(), &l, None);
    assert_eq!(wt.get("head.bias").unwrap().shape(), &[V]);
    assert_eq!(w(&wt, "head.bias"), c.get("final_logits_bias"));
    assert_eq!(
        w(&wt, "encoder.embed.positions"),
        c.get("model.encoder.embed_positions.weight")
    );
    assert_eq!(
        w(&wt, "decoder.embed.norm.bias"),
        c.get("model.decoder.layernorm_embedding.bias")
    );
    assert_eq!(
        w(&wt, "decoder.layers.1.cross_attn.o.weight"),
        c.get("model.decoder.layers.1.encoder_attn.out_proj.weight")
    );
    assert_eq!(
        w(&wt, "decoder.layers.1.cross_norm.bias"),
        c.get("model.decoder.layers.1.encoder_attn_layer_norm.bias")
    );
    assert_eq!(
        w(&wt, "encoder.layers.0.attn_norm.weight"),
        c.get("model.encoder.layers.0.self_attn_layer_norm.weight")
    );
    assert_eq!(
        w(&wt, "encoder.layers.0.mlp_norm.weight"),
        c.get("model.encoder.layers.0.final_layer_norm.weight")
    );
}

// ---------------------------------------------------------------------------
// dtypes, shards, progress
// ---------------------------------------------------------------------------

#[test]
fn f16_bf16_and_f64_are_converted_to_f32() {
    let l = tiny("smollm2-135m");
    let base = llama_ckpt(2, false, false);
    let mut ck = Ck::default();
    // Values exactly representable in each dtype: k/8 for small k.
    let exact = |n: usize, s: f32| {
        (0..n)
            .map(|j| ((j % 200) as f32 - 100.0) / 8.0 + s)
            .collect::<Vec<f32>>()
    };
    for (i, (name, _, shape, _)) in base.tensors.iter().enumerate() {
        let n = shape.iter().product();
        let dt = [Dt::F32, Dt::F16, Dt::BF16, Dt::F64][i % 4];
        ck.with(name, dt, shape, exact(n, 0.0));
    }
    // A value that bf16 rounds: loaded as the rounded value, like torch's .float().
    let mut odd = exact(D, 0.0);
    odd[0] = 1.0 + 1.0 / 512.0;
    ck.remove("model.norm.weight")
        .with("model.norm.weight", Dt::BF16, &[D], odd);
    let dir = ck.dir(None);
    let wt = load_ok(dir.path(), &l, None);
    assert_eq!(
        w(&wt, "layers.0.attn_norm.weight"),
        ck.get("model.layers.0.input_layernorm.weight")
    );
    let dts: Vec<Dt> = ck.tensors.iter().map(|t| t.1).collect();
    assert!(dts.contains(&Dt::F16) && dts.contains(&Dt::BF16) && dts.contains(&Dt::F64));
    let plan = checkpoint::preflight(dir.path(), &graphs(&l), None).unwrap();
    let params = plan.parameters();
    for (name, _, _, vals) in &ck.tensors {
        if name == "model.norm.weight" {
            continue;
        }
        let (p, _) = params.iter().find(|(_, s)| s[0] == name).unwrap();
        assert_eq!(w(&wt, p), &vals[..], "{name}");
    }
    let norm = w(&wt, "final_norm.weight");
    assert_eq!(norm[0], 1.0, "bf16 has 8 significant bits");
    assert_eq!(norm[1], -12.375);
}

#[test]
fn sharded_checkpoints_with_and_without_index() {
    let l = tiny("smollm2-135m");
    let ck = llama_ckpt(2, false, false);
    let (a, b) = ck.tensors.split_at(ck.tensors.len() / 2);
    let (a, b) = (
        Ck {
            tensors: a.to_vec(),
        },
        Ck {
            tensors: b.to_vec(),
        },
    );
    let dir = tempfile::tempdir().unwrap();
    a.write(&dir.path().join("model-00001-of-00002.safetensors"));
    b.write(&dir.path().join("model-00002-of-00002.safetensors"));
    // Without an index the shards are found by name.
    let direct = load_ok(dir.path(), &l, None);
    // With one, it must agree with the shards.
    let mut map = serde_json::Map::new();
    for (part, file) in [
        (&a, "model-00001-of-00002.safetensors"),
        (&b, "model-00002-of-00002.safetensors"),
    ] {
        for t in &part.tensors {
            map.insert(t.0.clone(), serde_json::Value::String(file.into()));
        }
    }
    let index = serde_json::json!({ "metadata": { "total_size": 0 }, "weight_map": map });
    let index_path = dir.path().join("model.safetensors.index.json");
    std::fs::write(&index_path, index.to_string()).unwrap();
    let indexed = load_ok(dir.path(), &l, None);
    assert_eq!(direct, indexed);
    assert_eq!(
        w(&indexed, "final_norm.weight"),
        ck.get("model.norm.weight")
    );

    // An index naming a tensor no shard holds.
    let mut bad = map.clone();
    bad.insert(
        "model.extra.weight".into(),
        "model-00001-of-00002.safetensors".into(),
    );
    std::fs::write(
        &index_path,
        serde_json::json!({ "weight_map": bad }).to_string(),
    )
    .unwrap();
    let e = Checkpoint::open(dir.path()).unwrap_err().to_string();
    assert!(e.contains("`model.extra.weight` is listed in model-00001-of-00002.safetensors but no shard holds it"), "{e}");
    // An index pointing outside the directory.
    let mut escape = map.clone();
    escape.insert("x".into(), "../model.safetensors".into());
    std::fs::write(
        &index_path,
        serde_json::json!({ "weight_map": escape }).to_string(),
    )
    .unwrap();
    let e = Checkpoint::open(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("not a .safetensors file in the same directory"),
        "{e}"
    );
    // The same tensor in two shards.
    std::fs::remove_file(&index_path).unwrap();
    a.write(&dir.path().join("model-00002-of-00002.safetensors"));
    let e = Checkpoint::open(dir.path()).unwrap_err().to_string();
    assert!(e.contains("appears in both"), "{e}");
}

#[test]
fn a_single_file_path_loads_too() {
    let ck = llama_ckpt(2, false, false);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("weights.safetensors");
    ck.write(&file);
    let wt = load_ok(&file, &tiny("smollm2-135m"), None);
    assert_eq!(w(&wt, "embed.tokens"), ck.get("model.embed_tokens.weight"));
}

#[test]
fn progress_reports_every_byte() {
    let ck = llama_ckpt(2, false, false);
    let dir = ck.dir(None);
    let l = tiny("smollm2-135m");
    let mut calls: Vec<(u64, u64)> = Vec::new();
    checkpoint::load_safetensors_with_progress(dir.path(), &graphs(&l), None, &mut |d, t| {
        calls.push((d, t))
    })
    .unwrap();
    let total: u64 = ck.tensors.iter().map(|t| t.3.len() as u64 * 4).sum();
    assert_eq!(calls.first(), Some(&(0, total)));
    assert_eq!(calls.last(), Some(&(total, total)));
    assert!(calls.windows(2).all(|p| p[0].0 <= p[1].0));
    assert_eq!(calls.len(), ck.tensors.len() + 1);
}

// ---------------------------------------------------------------------------
// pre-flight and table choice
// ---------------------------------------------------------------------------

#[test]
fn preflight_reports_every_problem_at_once() {
    let l = tiny("smollm2-135m");
    let mut ck = llama_ckpt(2, false, false);
    ck.remove("model.layers.1.self_attn.v_proj.weight") // missing
        .remove("model.layers.0.mlp.up_proj.weight")
        .with(
            "model.layers.0.mlp.up_proj.weight",
            Dt::F32,
            &[FF, D + 1],
            vec![0.0; FF * (D + 1)],
        ) // mis-shaped
        .t("model.layers.0.self_attn.mystery.weight", &[4]) // no rule
        .t("model.layers.2.input_layernorm.weight", &[D]) // a layer the spec lacks
        .remove("model.norm.weight")
        .with("model.norm.weight", Dt::I64, &[D], vec![1.0; D]); // unloadable dtype
    let dir = ck.dir(Some("llama"));
    let e = checkpoint::preflight(dir.path(), &graphs(&l), None).unwrap_err();
    let CheckpointError::Mismatch {
        problems, family, ..
    } = &e
    else {
        panic!("{e}");
    };
    assert_eq!(family, "llama");
    let file = dir.path().join("model.safetensors");
    let expected = [
        "shape: checkpoint tensor `model.layers.0.mlp.up_proj.weight` F32[128, 65] does not fit parameter `layers.0.mlp.up.weight` [128, 64]".to_string(),
        "unexpected: checkpoint tensor `model.layers.0.self_attn.mystery.weight` F32[4] matches no rule of the `llama` table".to_string(),
        "unexpected: checkpoint tensor `model.layers.2.input_layernorm.weight` F32[64] maps to `layers.2.attn_norm.weight`, which the model does not have".to_string(),
        format!(
            "dtype: checkpoint tensor `model.norm.weight` ({}) has dtype I64, which kiln cannot load (supported: F32, F16, BF16, F64); it maps to `final_norm.weight`",
            file.display()
        ),
        "missing: parameter `layers.1.attn.v.weight` [32, 64] (checkpoint tensor `model.layers.1.self_attn.v_proj.weight`)".to_string(),
    ];
    assert_eq!(problems, &expected, "{e}");
    let text = e.to_string();
    assert!(
        text.starts_with(&format!(
            "checkpoint {} (llama layout) does not match the model: 5 problems\n  shape: ",
            dir.path().display()
        )),
        "{text}"
    );
}

#[test]
fn table_choice_explicit_config_and_auto() {
    let l = tiny("gpt2");
    let ck = gpt2_ckpt("");
    // config.json names an unknown model_type: auto-detection still finds gpt2.
    let dir = ck.dir(Some("my-gpt"));
    assert_eq!(
        checkpoint::preflight(dir.path(), &graphs(&l), None)
            .unwrap()
            .family(),
        "gpt2"
    );
    // An explicit family wins over config.json (and may be a model_type alias).
    let dir = ck.dir(Some("llama"));
    assert_eq!(
        checkpoint::preflight(dir.path(), &graphs(&l), Some("gpt2"))
            .unwrap()
            .family(),
        "gpt2"
    );
    // config.json says llama: the llama table is used and its problems reported.
    let e = checkpoint::preflight(dir.path(), &graphs(&l), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("(llama layout) does not match"), "{e}");
    // Unknown family.
    let e = checkpoint::preflight(dir.path(), &graphs(&l), Some("gpt5"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no mapping table for checkpoint family `gpt5`; known families: ")
            && e.contains(", gpt2, ")
            && e.contains(", llama, "),
        "{e}"
    );
    // Nothing fits: the closest table's problems are listed.
    let dir = ck.dir(None);
    let e = checkpoint::preflight(dir.path(), &graphs(&tiny("llama-2-7b")), None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no mapping table fits it; the closest is"),
        "{e}"
    );
    // Aliases.
    assert_eq!(checkpoint::table("qwen2").unwrap().family(), "qwen2");
    assert_eq!(checkpoint::table("gpt_neox").unwrap().family(), "gpt_neox");
}

#[test]
fn every_model_type_names_one_table() {
    let tables = checkpoint::tables().unwrap();
    let mut seen = std::collections::BTreeMap::new();
    for t in tables.iter() {
        for mt in t.model_types() {
            assert!(
                seen.insert(mt.clone(), t.family()).is_none(),
                "{mt} claimed twice"
            );
        }
    }
    // One table per family file, each under the family's name.
    let names = checkpoint::families().unwrap();
    let shipped: Vec<&str> = kiln_compiler::import::family::shipped_sources()
        .iter()
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(names.len(), shipped.len());
    assert!(
        names.iter().all(|n| shipped.contains(&n.as_str())),
        "{names:?}"
    );
}

// ---------------------------------------------------------------------------
// corrupt files
// ---------------------------------------------------------------------------

fn open_err(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    std::fs::write(&path, bytes).unwrap();
    Checkpoint::open(&path).unwrap_err().to_string()
}

#[test]
fn truncated_files_are_errors_at_every_length() {
    let mut ck = Ck::default();
    ck.t("a.weight", &[3, 5]).t("b.bias", &[7]);
    let bytes = ck.bytes();
    for cut in 0..bytes.len() {
        let e = open_err(&bytes[..cut]);
        assert!(e.contains("model.safetensors"), "cut at {cut}: {e}");
    }
    // Cut in the data: the tensor is named.
    let e = open_err(&bytes[..bytes.len() - 3]);
    assert!(
        e.contains("tensor `b.bias`") && e.contains("truncated file"),
        "{e}"
    );
}

#[test]
fn corrupt_headers_are_errors_not_panics() {
    let e = open_err(&[]);
    assert!(e.contains("0 bytes long"), "{e}");
    // A header length far beyond the file.
    let mut b = (1u64 << 40).to_le_bytes().to_vec();
    b.extend_from_slice(b"{}");
    assert!(open_err(&b).contains("exceeds the format's limit"));
    let mut b = 50u64.to_le_bytes().to_vec();
    b.extend_from_slice(b"{}");
    assert!(open_err(&b).contains("header length 50 but the file has only 2 bytes"));
    // Absurd shapes.
    let header =
        r#"{"w":{"dtype":"F32","shape":[1000000000000,1000000000000],"data_offsets":[0,4]}}"#;
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(&[0; 4]);
    let e = open_err(&b);
    assert!(
        e.contains("tensor `w`") && e.contains("more elements than fit"),
        "{e}"
    );
    let header =
        r#"{"w":{"dtype":"F32","shape":[1000000,1000000],"data_offsets":[0,4000000000000]}}"#;
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    let e = open_err(&b);
    assert!(
        e.contains("tensor `w`") && e.contains("end past the file's 0 data bytes"),
        "{e}"
    );
    // Flipping any single header byte never panics.
    let mut ck = Ck::default();
    ck.t("a.weight", &[3, 5]);
    let good = ck.bytes();
    for i in 0..good.len().min(200) {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut b = good.clone();
            b[i] ^= flip;
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("m.safetensors");
            std::fs::write(&path, &b).unwrap();
            if let Ok(c) = Checkpoint::open(&path) {
                for name in c.tensors().keys() {
                    let _ = c.read_f32(name);
                }
            }
        }
    }
}

#[test]
fn missing_checkpoints_and_configs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pytorch_model.bin"), b"").unwrap();
    let e = Checkpoint::open(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("no safetensors checkpoint found") && e.contains("pytorch_model.bin"),
        "{e}"
    );
    let e = Checkpoint::open(&dir.path().join("nope"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope"), "{e}");
    let ck = llama_ckpt(2, false, false).dir(None);
    std::fs::write(ck.path().join("config.json"), "{oops").unwrap();
    let e = Checkpoint::open(ck.path()).unwrap_err().to_string();
    assert!(e.contains("invalid config.json"), "{e}");
}

#[test]
#[cfg(unix)]
fn devices_and_pipes_are_refused_without_blocking() {
    let e = Checkpoint::open(Path::new("/dev/zero"))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("/dev/zero: invalid safetensors header: not a regular file"),
        "{e}"
    );
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("model.safetensors");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success());
    if made {
        // Opening a FIFO blocks until a writer appears: refused before opening.
        let e = Checkpoint::open(&fifo).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }
    // An index that is not a regular file is not read at all; a config.json
    // that is a directory is ignored like a missing one.
    let ck = llama_ckpt(2, false, false).dir(None);
    std::fs::create_dir(ck.path().join("config.json")).unwrap();
    assert!(Checkpoint::open(ck.path()).unwrap().model_type().is_none());
}

#[test]
fn in_memory_checkpoints_are_validated_like_files() {
    let mut ck = Ck::default();
    ck.t("a.weight", &[3, 5]).t("b.bias", &[7]);
    let bytes = ck.bytes();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    std::fs::write(&path, &bytes).unwrap();
    let on_disk = Checkpoint::open(&path).unwrap();
    let in_memory = Checkpoint::from_bytes("mem.safetensors", bytes.clone()).unwrap();
    assert_eq!(in_memory.path(), Path::new("mem.safetensors"));
    assert_eq!(on_disk.tensors().len(), in_memory.tensors().len());
    for name in on_disk.tensors().keys() {
        assert_eq!(
            on_disk.read_f32(name).unwrap(),
            in_memory.read_f32(name).unwrap()
        );
    }
    for cut in 0..bytes.len() {
        let e = Checkpoint::from_bytes("mem.safetensors", bytes[..cut].to_vec())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("mem.safetensors: "), "cut at {cut}: {e}");
    }
}
