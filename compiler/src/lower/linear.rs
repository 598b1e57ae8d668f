//! Dense projections. Weights are stored `[out, in]` (the HF layout) and
//! transposed in the graph; a pass folds the transpose into the matmul.

use crate::ir::{Builder, Init, NodeId, R};

/// Standard deviation of random projection weights.
pub const WEIGHT_STD: f32 = 0.02;

/// `x @ W^T (+ b)` with `W: [out, in]` at `scope.weight`.
pub fn linear(b: &mut Builder, scope: &str, x: NodeId, d_in: usize, d_out: usize, bias: bool) -> R {
    b.scoped(scope, |b| {
        let w = b.param("weight", &[d_out, d_in], Init::Normal { std: WEIGHT_STD })?;
        let wt = b.transpose_last(w)?;
        let y = b.matmul(x, wt)?;
        if bias {
            let bb = b.param("bias", &[d_out], Init::Fill(0.0))?;
            b.add2(y, bb)
        } else {
            Ok(y)
        }
    })
}
