//! Feed-forward blocks: plain and gated MLPs, and mixture-of-experts layers.

use super::linear::{WEIGHT_STD, linear};
use crate::ir::{BinaryOp, Builder, DType, Dim, Init, NodeId, R, ReduceOp, UnaryOp};
use crate::spec::{Activation, Mlp, Moe};

/// Apply an activation elementwise.
pub fn activation(b: &mut Builder, act: Activation, x: NodeId) -> R {
    match act {
        Activation::Relu => {
            let z = b.scalar(0.0)?;
            b.binary(BinaryOp::Max, x, z)
        }
        Activation::Gelu => {
            // 0.5 x (1 + erf(x / sqrt 2))
            let s = b.mul_scalar(x, std::f64::consts::FRAC_1_SQRT_2)?;
            let e = b.unary(UnaryOp::Erf, s)?;
            let e1 = b.add_scalar(e, 1.0)?;
            let h = b.mul_scalar(x, 0.5)?;
            b.mul(h, e1)
        }
        Activation::GeluTanh => {
            // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
            let x2 = b.mul(x, x)?;
            let x3 = b.mul(x2, x)?;
            let c = b.mul_scalar(x3, 0.044715)?;
            let inner = b.add2(x, c)?;
            let s = b.mul_scalar(inner, (2.0 / std::f64::consts::PI).sqrt())?;
            let t = b.unary(UnaryOp::Tanh, s)?;
            let t1 = b.add_scalar(t, 1.0)?;
            let h = b.mul_scalar(x, 0.5)?;
            b.mul(h, t1)
        }
        Activation::Silu => {
            let s = b.sigmoid(x)?;
            b.mul(x, s)
        }
        Activation::Relu2 => {
            let z = b.scalar(0.0)?;
            let r = b.binary(BinaryOp::Max, x, z)?;
            b.mul(r, r)
        }
    }
}

/// `down(act(up(x)))` or, gated, `down(act(gate(x)) * up(x))`.
pub fn mlp(b: &mut Builder, m: &Mlp, scope: &str, x: NodeId, d: usize, d_ff: usize) -> R {
    b.scoped(scope, |b| {
        let h = if m.gated {
            let g = linear(b, "gate", x, d, d_ff, m.bias)?;
            let g = activation(b, m.activation, g)?;
            let u = linear(b, "up", x, d, d_ff, m.bias)?;
            b.mul(g, u)?
        } else {
            let u = linear(b, "up", x, d, d_ff, m.bias)?;
            activation(b, m.activation, u)?
        };
        linear(b, "down", h, d_ff, d, m.bias)
    })
}

/// A mixture-of-experts layer, computed densely: every expert runs on every
/// token and the router's gates (zero outside each token's top-k) weight the
/// sum. Obviously correct; the MoE dispatch pass makes it sparse.
///
/// Top-k without a sort op: expert `e` is selected when fewer than `k`
/// experts beat it (higher probability, or equal with a lower index).
pub fn moe(b: &mut Builder, moe: &Moe, m: &Mlp, scope: &str, x: NodeId, d: usize) -> R {
    b.scoped(scope, |b| {
        let e = moe.experts;
        let d_ff = moe.expert_d_ff(m);
        let shape = b.shape(x); // [batch, seq, d]
        let (batch, seq) = (shape[0].clone(), shape[1].clone());

        let logits = linear(b, "router", x, d, e, false)?; // [b, s, E]
        let probs = b.softmax_last(logits)?;
        let gates = b.scoped("topk", |b| {
            let pe = b.reshape(
                probs,
                vec![batch.clone(), seq.clone(), Dim::c(e), Dim::c(1)],
            )?;
            let pj = b.reshape(
                probs,
                vec![batch.clone(), seq.clone(), Dim::c(1), Dim::c(e)],
            )?;
            let beats = b.binary(BinaryOp::Lt, pe, pj)?; // p_j > p_e
            let ties = b.binary(BinaryOp::Eq, pe, pj)?;
            let ie = b.iota(DType::I32, vec![Dim::c(e), Dim::c(1)], 0)?;
            let ij = b.iota(DType::I32, vec![Dim::c(1), Dim::c(e)], 1)?;
            let lower = b.binary(BinaryOp::Lt, ij, ie)?; // j < e
            let tie_wins = b.binary(BinaryOp::And, ties, lower)?;
            let ahead = b.binary(BinaryOp::Or, beats, tie_wins)?;
            let ahead = b.cast(ahead, DType::F32)?;
            let rank = b.reduce(ReduceOp::Sum, ahead, &[3])?; // [b, s, E, 1]
            let k = b.scalar(moe.top_k as f64)?;
            let chosen = b.binary(BinaryOp::Lt, rank, k)?;
            let zero = b.scalar(0.0)?;
            let g = b.select(chosen, pe, zero)?;
            let g = b.reshape(g, vec![batch.clone(), seq.clone(), Dim::c(e)])?;
            if moe.renormalize {
                let s = b.reduce(ReduceOp::Sum, g, &[2])?;
                b.div(g, s)
            } else {
                Ok(g)
            }
        })?;

        // Experts: [E, d_ff, d] weights, x as [b, 1, s, d] -> [b, E, s, *].
        let xe = b.reshape(x, vec![batch.clone(), Dim::c(1), seq.clone(), Dim::c(d)])?;
        let routed = b.scoped("experts", |b| {
            // Each expert is an `[mlp]`: its projections carry biases when
            // `mlp.bias` does (docs/spec.md), one row per expert.
            let proj = |b: &mut Builder, name: &str, input: NodeId, d_in: usize, d_out: usize| {
                b.scoped(name, |b| {
                    let w = b.param(
                        "weight",
                        &[e, d_out, d_in],
                        Init::Normal { std: WEIGHT_STD },
                    )?;
                    let wt = b.transpose_last(w)?;
                    let y = b.matmul(input, wt)?;
                    if !m.bias {
                        return Ok(y);
                    }
                    let bias = b.param("bias", &[e, d_out], Init::Fill(0.0))?;
                    let bias = b.reshape(bias, vec![Dim::c(e), Dim::c(1), Dim::c(d_out)])?;
                    b.add2(y, bias)
                })
            };
            let h = if m.gated {
                let g = proj(b, "gate", xe, d, d_ff)?;
                let g = activation(b, m.activation, g)?;
                let u = proj(b, "up", xe, d, d_ff)?;
                b.mul(g, u)?
            } else {
                let u = proj(b, "up", xe, d, d_ff)?;
                activation(b, m.activation, u)?
            };
            let y = proj(b, "down", h, d_ff, d)?; // [b, E, s, d]
            let gt = b.permute(gates, &[0, 2, 1])?; // [b, E, s]
            let gt = b.reshape(gt, vec![batch.clone(), Dim::c(e), seq.clone(), Dim::c(1)])?;
            let weighted = b.mul(y, gt)?;
            let sum = b.reduce(ReduceOp::Sum, weighted, &[1])?; // [b, 1, s, d]
            b.reshape(sum, vec![batch.clone(), seq.clone(), Dim::c(d)])
        })?;

        match &moe.shared_expert {
            None => Ok(routed),
            Some(se) => {
                let dense = Mlp {
                    d_ff: se.d_ff,
                    ..m.clone()
                };
                let mut y = mlp(b, &dense, "shared", x, d, se.d_ff)?;
                if se.gate {
                    let g = linear(b, "shared_gate", x, d, 1, false)?;
                    let g = b.sigmoid(g)?;
                    y = b.mul(y, g)?;
                }
                b.add2(routed, y)
            }
        }
    })
}
