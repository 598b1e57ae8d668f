//! LayerNorm and RMSNorm from primitives. Statistics are over the last axis.

use crate::ir::{Builder, Init, NodeId, R, UnaryOp};
use crate::spec::{Norm, NormKind};

/// Normalise `x` over its last axis (`width` channels) with parameters in `scope`.
pub fn norm(b: &mut Builder, n: &Norm, scope: &str, x: NodeId, width: usize) -> R {
    b.scoped(scope, |b| {
        let y = match n.kind {
            NormKind::Layernorm => {
                let mean = b.mean_last(x)?;
                let xc = b.sub(x, mean)?;
                let sq = b.mul(xc, xc)?;
                let var = b.mean_last(sq)?;
                let ve = b.add_scalar(var, n.eps)?;
                let inv = b.unary(UnaryOp::Rsqrt, ve)?;
                b.mul(xc, inv)?
            }
            NormKind::Rmsnorm => {
                let sq = b.mul(x, x)?;
                let ms = b.mean_last(sq)?;
                let me = b.add_scalar(ms, n.eps)?;
                let inv = b.unary(UnaryOp::Rsqrt, me)?;
                b.mul(x, inv)?
            }
        };
        if !n.affine {
            return Ok(y);
        }
        // With an offset (Gemma's `1 + w`) the stored weight starts at 0 so the
        // effective scale starts at 1.
        let w = b.param(
            "weight",
            &[width],
            Init::Fill((1.0 - n.weight_offset) as f32),
        )?;
        let w = if n.weight_offset != 0.0 {
            b.add_scalar(w, n.weight_offset)?
        } else {
            w
        };
        let y = b.mul(y, w)?;
        if n.has_bias() {
            let bias = b.param("bias", &[width], Init::Fill(0.0))?;
            b.add2(y, bias)
        } else {
            Ok(y)
        }
    })
}
