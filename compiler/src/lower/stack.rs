//! One stack of blocks (the decoder of a GPT, the encoder of a BERT, either
//! half of a T5): embeddings, position handling, masks, the blocks with their
//! norm placement and residual wiring, and the final norm.

use super::attention::{AttnContext, KeyValues, attention, split_heads};
use super::linear::{WEIGHT_STD, linear};
use super::mlp::{mlp, moe};
use super::norm::norm;
use super::positions::{alibi_slopes, relative_buckets, rope_tables, sinusoidal};
use crate::ir::{BinaryOp, Builder, DType, Dim, Init, IrError, NodeId, PAST, R, SEQ, UnaryOp};
use crate::spec::{LayerSpec, Placement, PositionKind, Spec};
use std::collections::HashMap;

/// What kind of stack is being built.
pub struct StackKind<'a> {
    /// Parameter prefix: `""` for single-stack models, `"encoder"` / `"decoder"`.
    pub prefix: &'a str,
    /// Causal self-attention with a KV cache (decoders) or bidirectional (encoders).
    pub causal: bool,
}

pub struct StackOut {
    pub hidden: NodeId,
    pub present: Vec<(NodeId, NodeId)>,
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Lower a stack. `tokens`: i32 `[batch, seq]`; `mask`: i32 `[batch, keys]`
/// (1 = attend); `past`: per-block caches; `cross`: per-block encoder K/V and
/// the encoder's padding mask.
#[allow(clippy::too_many_arguments)]
pub fn stack(
    b: &mut Builder,
    spec: &Spec,
    layers: &[LayerSpec],
    kind: &StackKind,
    tokens: NodeId,
    token_types: Option<NodeId>,
    mask: NodeId,
    past: &[(NodeId, NodeId)],
    cross: Option<(&[(NodeId, NodeId)], NodeId)>,
) -> Result<StackOut, IrError> {
    let d = spec.d_model;
    let shape = b.shape(tokens);
    let seq = shape[1].clone();
    let keys = if kind.causal {
        Dim::sym(PAST) + Dim::sym(SEQ)
    } else {
        seq.clone()
    };

    // Cache indices of the new tokens (past..past+seq with a cache, else
    // 0..seq): masks and relative biases compare these. Position embeddings
    // use `tok_pos`, which for decoders counts only real tokens per row, so
    // a left-padded row gets the same positions as when run alone.
    let q_pos = b.scoped(join(kind.prefix, "positions"), |b| {
        if kind.causal {
            super::positions::query_positions(b)
        } else {
            b.iota(DType::I32, vec![seq.clone()], 0)
        }
    })?;
    let needs_tok_pos = kind.causal
        && matches!(
            spec.positions.kind,
            PositionKind::Learned | PositionKind::Sinusoidal | PositionKind::Rope
        );
    let tok_pos = if needs_tok_pos {
        b.scoped(join(kind.prefix, "positions"), |b| {
            super::positions::token_positions(b, mask)
        })?
    } else {
        q_pos
    };

    // Embeddings, `e` wide (`embeddings.size`, else d_model).
    let e = spec.embeddings.size.unwrap_or(d);
    let mut x = b.scoped("embed", |b| {
        let table = b.param(
            "tokens",
            &[spec.vocab_size, e],
            Init::Normal { std: WEIGHT_STD },
        )?;
        let x = b.gather(table, tokens, 0)?;
        b.mul_scalar(x, spec.embeddings.scale.value(d))
    })?;
    if let Some(tt) = token_types {
        let e = b.scoped("embed", |b| {
            let t = b.param(
                "token_types",
                &[spec.embeddings.token_types, e],
                Init::Normal { std: WEIGHT_STD },
            )?;
            b.gather(t, tt, 0)
        })?;
        x = b.add2(x, e)?;
    }
    let pe = b.scoped(
        join(kind.prefix, "embed"),
        |b| -> Result<Option<NodeId>, IrError> {
            match spec.positions.kind {
                PositionKind::Learned => {
                    let rows = spec.max_positions + spec.positions.offset;
                    let t = b.param("positions", &[rows, e], Init::Normal { std: WEIGHT_STD })?;
                    let off = b.scalar_i32(spec.positions.offset as i32)?;
                    let idx = b.add2(tok_pos, off)?;
                    Ok(Some(b.gather(t, idx, 0)?))
                }
                PositionKind::Sinusoidal => {
                    // The table is evaluated at position + offset (M2M-100, XGLM: 2).
                    let at = if spec.positions.offset == 0 {
                        tok_pos
                    } else {
                        let off = b.scalar_i32(spec.positions.offset as i32)?;
                        b.add2(tok_pos, off)?
                    };
                    Ok(Some(sinusoidal(b, &spec.positions, e, at)?))
                }
                _ => Ok(None),
            }
        },
    )?;
    if let Some(pe) = pe {
        x = b.add2(x, pe)?;
    }
    if spec.norm.embedding_norm {
        x = norm(b, &spec.norm, &join(kind.prefix, "embed.norm"), x, e)?;
    }
    if e != d {
        x = b.scoped(join(kind.prefix, "embed"), |b| {
            linear(b, "project", x, e, d, true)
        })?;
    }

    // Attention context shared by the blocks.
    let mut memo: HashMap<String, NodeId> = HashMap::new();
    let (causal_mask, pad_mask) =
        b.scoped(join(kind.prefix, "mask"), |b| -> Result<_, IrError> {
            let pad = padding_mask(b, mask)?;
            let causal = if kind.causal {
                let (qp, kp) = qk_positions(b, q_pos, &keys)?;
                Some(b.binary(BinaryOp::Le, kp, qp)?)
            } else {
                None
            };
            Ok((causal, pad))
        })?;

    let mut present = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let a = &layer.attention;
        let hd = a.head_dim(d);
        // Mask: padding, causality and this layer's window, built once per distinct window.
        let mask_key = format!("mask.{:?}", a.sliding_window);
        let mask = match memo.get(&mask_key) {
            Some(&m) => m,
            None => {
                let m = b.scoped(join(kind.prefix, "mask"), |b| -> R {
                    match (causal_mask, a.sliding_window) {
                        (None, None) => Ok(pad_mask),
                        (Some(c), None) => b.binary(BinaryOp::And, pad_mask, c),
                        // Causal: the window looks back, q - k < w.
                        (Some(c), Some(w)) => {
                            let (qp, kp) = qk_positions(b, q_pos, &keys)?;
                            let wc = b.scalar_i32(w as i32)?;
                            let lo = b.add2(kp, wc)?;
                            let inside = b.binary(BinaryOp::Lt, qp, lo)?; // q - k < w
                            let c = b.binary(BinaryOp::And, c, inside)?;
                            b.binary(BinaryOp::And, pad_mask, c)
                        }
                        // Bidirectional (encoders): both ways, |q - k| < w.
                        (None, Some(w)) => {
                            let (qp, kp) = qk_positions(b, q_pos, &keys)?;
                            let rel = b.sub(kp, qp)?;
                            let dist = b.unary(UnaryOp::Abs, rel)?;
                            let wc = b.scalar_i32(w as i32)?;
                            let inside = b.binary(BinaryOp::Lt, dist, wc)?;
                            b.binary(BinaryOp::And, pad_mask, inside)
                        }
                    }
                })?;
                memo.insert(mask_key, m);
                m
            }
        };
        let ctx = AttnContext {
            mask: Some(mask),
            bias: None,
            rope: None,
        };
        // Shared blocks (`layer_groups`) name their parameters after the group.
        let g = spec
            .layer_groups
            .map_or(i, |groups| i / (layers.len() / groups));
        let bias = position_bias(b, spec, kind, g, a.heads, q_pos, &keys, &mut memo)?;
        // The layer's own positions: the model's, or its `[[layer]] positions`
        // (another base or scaling, or no rotation at all).
        let lp = &layer.positions;
        let rope = match lp.kind {
            PositionKind::Rope => {
                let rot = lp.rotary_dims(hd);
                let key = format!("rope{rot}.{:?}.{:?}", lp.theta, lp.scaling);
                let (cos, sin) = match (
                    memo.get(&format!("{key}.cos")),
                    memo.get(&format!("{key}.sin")),
                ) {
                    (Some(&c), Some(&s)) => (c, s),
                    _ => {
                        let (c, s) = b.scoped(join(kind.prefix, "positions"), |b| {
                            let (c, s) = rope_tables(b, lp, rot, tok_pos)?;
                            // Per-row tables [b, seq, half] broadcast over heads as [b, 1, seq, half].
                            let cs = b.shape(c);
                            if cs.len() == 3 {
                                let per_head =
                                    vec![cs[0].clone(), Dim::c(1), cs[1].clone(), cs[2].clone()];
                                Ok((b.reshape(c, per_head.clone())?, b.reshape(s, per_head)?))
                            } else {
                                Ok((c, s))
                            }
                        })?;
                        memo.insert(format!("{key}.cos"), c);
                        memo.insert(format!("{key}.sin"), s);
                        (c, s)
                    }
                };
                Some((cos, sin, rot, lp.layout()))
            }
            _ => None,
        };
        let ctx = AttnContext { bias, rope, ..ctx };
        let cross_ctx = cross.map(|(kv, enc_mask)| (kv[i], enc_mask));
        let scope = join(kind.prefix, &format!("layers.{g}"));
        let (y, pres) = b.scoped(scope, |b| {
            block(b, spec, layer, x, past.get(i).copied(), &ctx, cross_ctx)
        })?;
        x = y;
        if let Some(p) = pres {
            present.push(p);
        }
    }
    if spec.norm.final_norm {
        x = norm(b, &spec.norm, &join(kind.prefix, "final_norm"), x, d)?;
    }
    Ok(StackOut { hidden: x, present })
}

/// i32 query positions `[seq, 1]` and key positions `[1, keys]`.
fn qk_positions(b: &mut Builder, q_pos: NodeId, keys: &Dim) -> Result<(NodeId, NodeId), IrError> {
    let seq = b.shape(q_pos)[0].clone();
    let qp = b.reshape(q_pos, vec![seq, Dim::c(1)])?;
    let kp = b.iota(DType::I32, vec![Dim::c(1), keys.clone()], 1)?;
    Ok((qp, kp))
}

/// `mask != 0` as bool `[batch, 1, 1, 1, keys]`.
pub(super) fn padding_mask(b: &mut Builder, mask: NodeId) -> R {
    let s = b.shape(mask);
    let zero = b.scalar_i32(0)?;
    let m = b.binary(BinaryOp::Eq, mask, zero)?;
    let m = b.unary(UnaryOp::Not, m)?;
    let one = Dim::c(1);
    b.reshape(
        m,
        vec![s[0].clone(), one.clone(), one.clone(), one, s[1].clone()],
    )
}

/// Additive score bias `[heads, seq, keys]` for ALiBi and T5 relative positions.
#[allow(clippy::too_many_arguments)]
fn position_bias(
    b: &mut Builder,
    spec: &Spec,
    kind: &StackKind,
    layer: usize,
    heads: usize,
    q_pos: NodeId,
    keys: &Dim,
    memo: &mut HashMap<String, NodeId>,
) -> Result<Option<NodeId>, IrError> {
    let p = &spec.positions;
    let per_layer = p.per_layer == Some(true);
    let key = match p.kind {
        PositionKind::Alibi => format!("alibi{heads}"),
        PositionKind::Relative if per_layer => format!("relative{layer}"),
        PositionKind::Relative => "relative".to_string(),
        _ => return Ok(None),
    };
    if let Some(&n) = memo.get(&key) {
        return Ok(Some(n));
    }
    // A per-layer table (UMT5) lives under its layer: `layers.{i}.positions.relative_bias`.
    let scope = if per_layer && p.kind == PositionKind::Relative {
        join(kind.prefix, &format!("layers.{layer}.positions"))
    } else {
        join(kind.prefix, "positions")
    };
    let n = b.scoped(scope, |b| -> R {
        let (qp, kp) = qk_positions(b, q_pos, keys)?;
        let rel = b.sub(kp, qp)?; // k - q, i32 [seq, keys]
        let seq = b.shape(q_pos)[0].clone();
        match p.kind {
            PositionKind::Alibi => {
                // Causal: slope * (k - q) <= 0. Bidirectional: -slope * |k - q|.
                let dist = if kind.causal {
                    rel
                } else {
                    let a = b.unary(UnaryOp::Abs, rel)?;
                    b.unary(UnaryOp::Neg, a)?
                };
                let dist = b.cast(dist, DType::F32)?;
                let dist = b.reshape(dist, vec![Dim::c(1), seq, keys.clone()])?;
                let slopes = b.literal(alibi_slopes(heads), &[heads, 1, 1])?;
                b.mul(slopes, dist)
            }
            _ => {
                let bucket = relative_buckets(b, rel, p.buckets(), p.max_distance(), !kind.causal)?;
                let table = b.param(
                    "relative_bias",
                    &[p.buckets(), heads],
                    Init::Normal { std: WEIGHT_STD },
                )?;
                let bias = b.gather(table, bucket, 0)?; // [seq, keys, heads]
                b.permute(bias, &[2, 0, 1])
            }
        }
    })?;
    memo.insert(key, n);
    Ok(Some(n))
}

/// One block: attention (+ cross-attention) and MLP with the layer's norm
/// placement and residual wiring. Returns the output and the new KV cache.
fn block(
    b: &mut Builder,
    spec: &Spec,
    l: &LayerSpec,
    x: NodeId,
    past: Option<(NodeId, NodeId)>,
    ctx: &AttnContext,
    cross: Option<((NodeId, NodeId), NodeId)>,
) -> Result<(NodeId, Option<(NodeId, NodeId)>), IrError> {
    let d = spec.d_model;
    let mut present = None;
    let mut attn = |b: &mut Builder, h: NodeId| -> R {
        let o = attention(
            b,
            &l.attention,
            &l.norm,
            d,
            "attn",
            h,
            KeyValues::SelfAttn { past },
            ctx,
        )?;
        present = if past.is_some() { o.present } else { None };
        Ok(o.out)
    };
    let ffn = |b: &mut Builder, h: NodeId| -> R {
        match &l.moe {
            Some(m) => moe(b, m, &l.mlp, "moe", h, d),
            None => mlp(b, &l.mlp, "mlp", h, d, l.mlp.d_ff),
        }
    };

    // Cross-attention (encoder-decoder decoder blocks) to the source's K/V.
    let cross_attn = |b: &mut Builder, h: NodeId, ((k, v), mask): ((NodeId, NodeId), NodeId)| {
        let cctx = AttnContext {
            mask: Some(mask),
            bias: None,
            rope: None,
        };
        let kv = KeyValues::Given { k, v };
        attention(b, &l.attention, &l.norm, d, "cross_attn", h, kv, &cctx).map(|o| o.out)
    };

    if l.residual.parallel {
        // Every branch reads the block's input: x + attn(n1(x)) + mlp(n2(x))
        // [+ cross(nc(x))], one norm for all branches when `shared_norm`
        // (docs/spec.md, "Residual").
        let n1 = norm(b, &l.norm, "attn_norm", x, d)?;
        let n2 = if l.residual.shared_norm {
            n1
        } else {
            norm(b, &l.norm, "mlp_norm", x, d)?
        };
        let a = attn(b, n1)?;
        let m = ffn(b, n2)?;
        let mut am = b.add2(a, m)?;
        if let Some(c) = cross {
            let nc = if l.residual.shared_norm {
                n1
            } else {
                norm(b, &l.norm, "cross_norm", x, d)?
            };
            let ca = cross_attn(b, nc, c)?;
            am = b.add2(am, ca)?;
        }
        let am = scaled(b, l, am)?;
        let y = b.add2(am, x)?;
        return Ok((y, present));
    }

    let mut x = sublayer(b, l, "attn_norm", x, &mut attn)?;
    if let Some(c) = cross {
        let mut f = |b: &mut Builder, h: NodeId| cross_attn(b, h, c);
        x = sublayer(b, l, "cross_norm", x, &mut f)?;
    }
    let mut ffn = ffn;
    let x = sublayer(b, l, "mlp_norm", x, &mut ffn)?;
    Ok((x, present))
}

/// `x + f(norm(x))`, `norm(x + f(x))`, `x + post(f(norm(x)))` or
/// `x + post(f(x))` by placement, the branch times `residual.scale`.
fn sublayer(
    b: &mut Builder,
    l: &LayerSpec,
    norm_name: &str,
    x: NodeId,
    f: &mut dyn FnMut(&mut Builder, NodeId) -> R,
) -> R {
    let d = b.shape(x)[2].as_const().expect("d_model is constant");
    match l.norm.placement {
        Placement::Pre => {
            let h = if norm_name == "attn_norm" && !l.norm.attention_norm {
                x
            } else {
                norm(b, &l.norm, norm_name, x, d)?
            };
            let y = f(b, h)?;
            let y = scaled(b, l, y)?;
            b.add2(x, y)
        }
        Placement::Post => {
            let y = f(b, x)?;
            let y = scaled(b, l, y)?;
            let s = b.add2(x, y)?;
            norm(b, &l.norm, norm_name, s, d)
        }
        Placement::Sandwich => {
            let h = norm(b, &l.norm, norm_name, x, d)?;
            let y = f(b, h)?;
            let post = norm_name.replace("_norm", "_post_norm");
            let y = norm(b, &l.norm, &post, y, d)?;
            let y = scaled(b, l, y)?;
            b.add2(x, y)
        }
        Placement::Output => {
            let y = f(b, x)?;
            let post = norm_name.replace("_norm", "_post_norm");
            let y = norm(b, &l.norm, &post, y, d)?;
            let y = scaled(b, l, y)?;
            b.add2(x, y)
        }
    }
}

/// A branch's output times `residual.scale` (left alone at 1).
fn scaled(b: &mut Builder, l: &LayerSpec, y: NodeId) -> R {
    if l.residual.scale == 1.0 {
        Ok(y)
    } else {
        b.mul_scalar(y, l.residual.scale)
    }
}

/// Cross-attention keys and values for decoder block `i`, projected from the
/// encoder output once per sequence (`[b, kv, src, hd]`).
pub fn cross_kv(
    b: &mut Builder,
    spec: &Spec,
    l: &LayerSpec,
    i: usize,
    enc: NodeId,
) -> Result<(NodeId, NodeId), IrError> {
    let d = spec.d_model;
    let a = &l.attention;
    let (kvh, hd) = (a.kv_heads(), a.head_dim(d));
    b.scoped(format!("decoder.layers.{i}.cross_attn"), |b| {
        let k = linear(b, "k", enc, d, kvh * hd, a.qkv_bias)?;
        // The keys get the same qk-norm as self-attention's (the queries get
        // theirs in the decoder): over all channels before the heads split,
        // or per head after.
        let k = if a.qk_norm == crate::spec::QkNorm::Full {
            norm(b, &l.norm, "k_norm", k, kvh * hd)?
        } else {
            k
        };
        let v = linear(b, "v", enc, d, kvh * hd, a.qkv_bias)?;
        let k = split_heads(b, k, kvh, hd)?;
        let v = split_heads(b, v, kvh, hd)?;
        let k = if a.qk_norm == crate::spec::QkNorm::PerHead {
            norm(b, &l.norm, "k_norm", k, hd)?
        } else {
            k
        };
        Ok((k, v))
    })
}
