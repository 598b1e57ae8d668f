//! Static cost of a model, read off its lowered graphs: parameters (total and
//! per component), matmul FLOPs per token, KV-cache and weight bytes. Nothing
//! runs; the counts are exactly what the compiled graphs hold and compute.

use crate::ir::Module;
use crate::ir::{Graph, Op};
use crate::spec::ResolvedSpec;
use serde::Serialize;
use std::collections::BTreeMap;

/// Static size and compute estimates of a model (reported by `kiln check`).
#[derive(Debug, Clone, Serialize)]
pub struct Cost {
    /// Distinct parameter elements (tied tensors count once).
    pub parameters: usize,
    /// Parameters by component: embeddings, attention, mlp, experts, norms, positions, head.
    pub parameters_by_component: BTreeMap<String, usize>,
    /// Sequence length the per-token FLOPs are measured at.
    pub seq_len: usize,
    /// Matmul FLOPs (2 per multiply-add) per token for a batch-1 forward pass over
    /// `seq_len` tokens; MoE layers count only the `top_k` experts a token uses.
    pub flops_per_token: f64,
    /// Self-attention KV cache per generated token, f32.
    pub kv_cache_bytes_per_token: usize,
    /// Encoder-decoder: cross-attention K/V per source token, f32.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cross_cache_bytes_per_source_token: Option<usize>,
    /// Weight bytes stored as f32.
    pub weight_bytes_f32: usize,
    /// Weight bytes stored as f16/bf16 (every parameter: wgpu's `f16`).
    pub weight_bytes_f16: usize,
    /// Weight bytes in the CPU's `--precision int8`: matrices read only by
    /// products (and row gathers) whose rows are whole 32-blocks in Q8_0
    /// (34 bytes per 32 values), the rest f32.
    pub weight_bytes_int8: usize,
    /// Weight bytes in the CPU's `--precision bf16`: the same matrices in
    /// bf16, the rest f32.
    pub weight_bytes_bf16: usize,
}

/// Which component a canonical parameter name belongs to.
pub fn component(name: &str) -> &'static str {
    let has = |s: &str| name.split('.').any(|p| p == s);
    if has("experts") || has("router") || has("shared") || has("shared_gate") {
        "experts"
    } else if has("attn") || has("cross_attn") {
        "attention"
    } else if has("mlp") {
        "mlp"
    } else if name.ends_with("norm.weight") || name.ends_with("norm.bias") {
        if name.starts_with("head.") {
            "head"
        } else {
            "norms"
        }
    } else if has("relative_bias") || name.ends_with("embed.positions") {
        "positions"
    } else if has("embed") {
        "embeddings"
    } else {
        "head"
    }
}

/// Parameter counts, per-token FLOPs at `seq_len` and cache sizes of a model.
pub fn cost(rs: &ResolvedSpec, lowered: &Module, seq_len: usize) -> Cost {
    let params = lowered.parameters();
    let mut by = BTreeMap::new();
    for (name, n) in &params {
        *by.entry(component(name).to_string()).or_insert(0) += n;
    }
    let parameters: usize = params.values().sum();
    let env = move |s: &str| match s {
        "batch" => Some(1),
        "past" => Some(0),
        _ => Some(seq_len),
    };
    let expert_share = rs
        .spec
        .moe
        .as_ref()
        .map(|m| m.top_k as f64 / m.experts.max(1) as f64)
        .unwrap_or(1.0);
    let flops: f64 = lowered
        .graphs()
        .map(|g| matmul_flops(g, &env, expert_share))
        .sum();
    let tokens = seq_len.max(1) as f64;

    let one = |s: &str| match s {
        "batch" | "seq" | "src" => Some(1),
        _ => Some(0),
    };
    let bytes_of = |g: &Graph, prefix: &str| -> usize {
        g.outputs
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .filter_map(|(_, id)| {
                g.ty(*id)
                    .shape
                    .iter()
                    .map(|d| d.eval(&one))
                    .product::<Option<usize>>()
            })
            .sum::<usize>()
            * 4
    };
    let kv = lowered
        .decoder
        .as_ref()
        .map(|g| bytes_of(g, "present."))
        .unwrap_or(0);
    let cross = match (&lowered.encoder, &lowered.decoder) {
        (Some(e), Some(_)) => Some(bytes_of(e, "cross.")),
        _ => None,
    };
    let (mut int8, mut bf16) = (0usize, 0usize);
    let products = product_matrices(lowered);
    for (name, &n) in &params {
        match products.get(name.as_str()) {
            Some(&cols) => {
                bf16 += 2 * n;
                int8 += if cols.is_multiple_of(32) {
                    n / 32 * 34
                } else {
                    4 * n
                };
            }
            None => {
                bf16 += 4 * n;
                int8 += 4 * n;
            }
        }
    }
    Cost {
        parameters,
        parameters_by_component: by,
        seq_len,
        flops_per_token: flops / tokens,
        kv_cache_bytes_per_token: kv,
        cross_cache_bytes_per_source_token: cross,
        weight_bytes_f32: parameters * 4,
        weight_bytes_f16: parameters * 2,
        weight_bytes_int8: int8,
        weight_bytes_bf16: bf16,
    }
}

/// Parameters (name → columns) that every graph reads only as transposed
/// matrix-product operands (`nn.Linear`'s `[out, in]`) and row gathers,
/// at least one product among them: the matrices the CPU's int8 and bf16
/// modes encode.
fn product_matrices(lowered: &Module) -> BTreeMap<&str, usize> {
    let mut ok: BTreeMap<&str, (usize, bool)> = BTreeMap::new();
    for g in lowered.graphs() {
        for id in g.g.node_indices() {
            let Op::Parameter { name, .. } = &g.node(id).op else {
                continue;
            };
            let shape = &g.ty(id).shape;
            let cols = match shape.as_slice() {
                [_, c] => c.as_const(),
                _ => None,
            };
            let mut product = false;
            let mut other = cols.is_none();
            for u in g.users(id) {
                match &g.node(u).op {
                    // `[out, in]` weights are read transposed (nn.Linear);
                    // the JIT keeps a weight read as stored in f32.
                    Op::Gather { .. } => {}
                    Op::Permute { .. } => {
                        for v in g.users(u) {
                            match &g.node(v).op {
                                Op::MatMul => product = true,
                                _ => other = true,
                            }
                        }
                    }
                    _ => other = true,
                }
            }
            let e = ok.entry(name.as_str()).or_insert((cols.unwrap_or(0), true));
            e.1 &= product && !other;
        }
    }
    ok.into_iter()
        .filter(|(_, (_, yes))| *yes)
        .map(|(n, (c, _))| (n, c))
        .collect()
}

/// `2 * m * n * k` (times broadcast batch dims) summed over matmuls.
fn matmul_flops(g: &Graph, env: &dyn Fn(&str) -> Option<usize>, expert_share: f64) -> f64 {
    let mut total = 0.0;
    for id in g.g.node_indices() {
        let node = g.node(id);
        if node.op != Op::MatMul {
            continue;
        }
        let a = g.ty(g.inputs(id)[0]);
        let k = a.shape.last().and_then(|d| d.eval(env)).unwrap_or(0) as f64;
        let out: f64 = node
            .ty
            .shape
            .iter()
            .map(|d| d.eval(env).unwrap_or(0) as f64)
            .product();
        let share = if node.scope.split('.').any(|p| p == "experts") {
            expert_share
        } else {
            1.0
        };
        total += 2.0 * out * k * share;
    }
    total
}
