//! Multi-head attention (MHA / GQA / MQA) from primitives: projections,
//! optional qk-norm and RoPE, a KV cache concatenated in front of the new
//! keys, grouped scores `[batch, kv_heads, group, seq, keys]`, bias, softcap,
//! mask and softmax.

use super::linear::linear;
use super::norm::norm;
use super::positions::apply_rope;
use crate::ir::{Builder, Dim, IrError, NodeId, R};
use crate::spec::{Attention, Norm, PairLayout, QkNorm};

/// Where keys and values come from.
pub enum KeyValues {
    /// Projected from the block input and appended to a cache `[b, kv, past, hd]`.
    SelfAttn {
        /// The cached keys and values, if the graph takes a cache.
        past: Option<(NodeId, NodeId)>,
    },
    /// Precomputed (cross-attention over the encoder output): `[b, kv, src, hd]`.
    Given {
        /// Keys.
        k: NodeId,
        /// Values.
        v: NodeId,
    },
}

/// Per-layer context the stack computes once and shares.
pub struct AttnContext {
    /// Bool, broadcastable to `[b, kv, group, seq, keys]`; false hides a key.
    pub mask: Option<NodeId>,
    /// f32 `[heads, seq, keys]` added to the scores (ALiBi, T5 relative bias).
    pub bias: Option<NodeId>,
    /// cos, sin `[seq, rot/2]`, rotated channels and pair layout.
    pub rope: Option<(NodeId, NodeId, usize, PairLayout)>,
}

/// What [`attention`] returns.
pub struct AttnOutput {
    /// The attention output after the output projection, `[b, seq, d]`.
    pub out: NodeId,
    /// Keys and values including the new positions (`present.*` outputs).
    pub present: Option<(NodeId, NodeId)>,
}

/// Split `[b, s, n*hd]` into heads `[b, n, s, hd]`.
pub fn split_heads(b: &mut Builder, x: NodeId, n: usize, hd: usize) -> R {
    let s = b.shape(x);
    let x = b.reshape(x, vec![s[0].clone(), s[1].clone(), Dim::c(n), Dim::c(hd)])?;
    b.permute(x, &[0, 2, 1, 3])
}

/// One attention block in `scope`: Q/K/V projections, optional QK norm and RoPE, masked softmax over keys, output projection.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    b: &mut Builder,
    a: &Attention,
    norm_spec: &Norm,
    d: usize,
    scope: &str,
    x: NodeId,
    kv: KeyValues,
    ctx: &AttnContext,
) -> Result<AttnOutput, IrError> {
    b.scoped(scope, |b| {
        let (h, kvh, hd) = (a.heads, a.kv_heads(), a.head_dim(d));
        let group = h / kvh;
        let s = b.shape(x);
        let (batch, seq) = (s[0].clone(), s[1].clone());

        let q = linear(b, "q", x, d, h * hd, a.qkv_bias)?;
        let q = if a.qk_norm == QkNorm::Full {
            norm(b, norm_spec, "q_norm", q, h * hd)?
        } else {
            q
        };
        let mut q = split_heads(b, q, h, hd)?;
        let (k, v, present) = match kv {
            KeyValues::SelfAttn { past } => {
                let k = linear(b, "k", x, d, kvh * hd, a.qkv_bias)?;
                let k = if a.qk_norm == QkNorm::Full {
                    norm(b, norm_spec, "k_norm", k, kvh * hd)?
                } else {
                    k
                };
                let v = linear(b, "v", x, d, kvh * hd, a.qkv_bias)?;
                let mut k = split_heads(b, k, kvh, hd)?;
                let v = split_heads(b, v, kvh, hd)?;
                if a.qk_norm == QkNorm::PerHead {
                    q = norm(b, norm_spec, "q_norm", q, hd)?;
                    k = norm(b, norm_spec, "k_norm", k, hd)?;
                }
                if let Some((cos, sin, rot, layout)) = ctx.rope {
                    q = apply_rope(b, layout, rot, q, cos, sin)?;
                    k = apply_rope(b, layout, rot, k, cos, sin)?;
                }
                let (k, v) = match past {
                    Some((pk, pv)) => (b.concat(&[pk, k], 2)?, b.concat(&[pv, v], 2)?),
                    None => (k, v),
                };
                (k, v, Some((k, v)))
            }
            KeyValues::Given { k, v } => {
                if a.qk_norm == QkNorm::PerHead {
                    q = norm(b, norm_spec, "q_norm", q, hd)?;
                }
                (k, v, None)
            }
        };
        let keys = b.shape(k)[2].clone();

        // Group query heads over their shared kv head: [b, kv, group, seq, hd].
        let qg = b.reshape(
            q,
            vec![
                batch.clone(),
                Dim::c(kvh),
                Dim::c(group),
                seq.clone(),
                Dim::c(hd),
            ],
        )?;
        let kg = b.reshape(
            k,
            vec![
                batch.clone(),
                Dim::c(kvh),
                Dim::c(1),
                keys.clone(),
                Dim::c(hd),
            ],
        )?;
        let vg = b.reshape(
            v,
            vec![
                batch.clone(),
                Dim::c(kvh),
                Dim::c(1),
                keys.clone(),
                Dim::c(hd),
            ],
        )?;
        let kt = b.transpose_last(kg)?;
        let scores = b.matmul(qg, kt)?;
        let mut scores = b.mul_scalar(scores, a.scale(d))?;
        if let Some(c) = a.softcap {
            scores = b.softcap(scores, c)?;
        }
        if let Some(bias) = ctx.bias {
            let bg = b.reshape(
                bias,
                vec![Dim::c(kvh), Dim::c(group), seq.clone(), keys.clone()],
            )?;
            scores = b.add2(scores, bg)?;
        }
        if let Some(mask) = ctx.mask {
            // finfo(f32).min like HF, so a row with every key hidden is uniform, not NaN.
            let min = b.scalar(f32::MIN as f64)?;
            scores = b.select(mask, scores, min)?;
        }
        let probs = b.softmax_last(scores)?;
        let o = b.matmul(probs, vg)?; // [b, kv, group, seq, hd]
        let o = b.reshape(o, vec![batch.clone(), Dim::c(h), seq.clone(), Dim::c(hd)])?;
        let o = b.permute(o, &[0, 2, 1, 3])?;
        let o = b.reshape(o, vec![batch, seq, Dim::c(h * hd)])?;
        let out = linear(b, "o", o, h * hd, d, a.out_bias)?;
        Ok(AttnOutput { out, present })
    })
}
