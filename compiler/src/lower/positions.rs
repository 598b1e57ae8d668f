//! Positional schemes: RoPE (both pair layouts, partial, scaled), sinusoidal
//! tables, ALiBi slopes and T5 relative-position buckets. Frequencies and
//! slopes are computed here as literals; everything length-dependent is
//! graph ops over symbolic positions.

use crate::ir::{BinaryOp, Builder, DType, Dim, NodeId, R, UnaryOp};
use crate::spec::{PairLayout, Positions, RopeScaling};

/// RoPE inverse frequencies for `rot` rotated channels, with scaling applied,
/// and the factor cos/sin are multiplied by (YaRN's attention temperature).
pub fn rope_inv_freq(p: &Positions, rot: usize) -> (Vec<f32>, f64) {
    let base = p.theta();
    let half = rot / 2;
    let plain: Vec<f64> = (0..half)
        .map(|i| 1.0 / base.powf((2 * i) as f64 / rot as f64))
        .collect();
    let (freqs, mscale) = match &p.scaling {
        None => (plain, 1.0),
        Some(RopeScaling::Linear { factor }) => (plain.iter().map(|f| f / factor).collect(), 1.0),
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_positions,
        }) => {
            let old = *original_max_positions as f64;
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            let f = plain
                .iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect();
            (f, 1.0)
        }
        Some(RopeScaling::Yarn {
            factor,
            original_max_positions,
            beta_fast,
            beta_slow,
            attention_factor,
        }) => {
            let dim = rot as f64;
            let corr = |rotations: f64| {
                dim * (*original_max_positions as f64 / (rotations * 2.0 * std::f64::consts::PI))
                    .ln()
                    / (2.0 * base.ln())
            };
            let low = corr(*beta_fast).floor().max(0.0);
            let high = corr(*beta_slow).ceil().min(dim - 1.0);
            let high = if low == high { high + 0.001 } else { high };
            let f = plain
                .iter()
                .enumerate()
                .map(|(i, &extra)| {
                    let inter = extra / factor;
                    let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                    let extra_weight = 1.0 - ramp;
                    inter * (1.0 - extra_weight) + extra * extra_weight
                })
                .collect();
            let m = attention_factor.unwrap_or(if *factor > 1.0 {
                0.1 * factor.ln() + 1.0
            } else {
                1.0
            });
            (f, m)
        }
    };
    (freqs.into_iter().map(|f| f as f32).collect(), mscale)
}

/// Query positions `past .. past+seq` as i32 `[seq]`.
pub fn query_positions(b: &mut Builder) -> R {
    let total = Dim::sym(crate::ir::PAST) + Dim::sym(crate::ir::SEQ);
    let all = b.iota(DType::I32, vec![total.clone()], 0)?;
    b.slice(all, 0, Dim::sym(crate::ir::PAST), total)
}

/// Positions of the new tokens in each row, counted over real tokens only:
/// `[batch, seq]`, HF's `cumsum(attention_mask) - 1`. Left padding therefore
/// does not shift a sequence's positions. `mask` is i32 `[batch, past+seq]`.
///
/// Computed as (real tokens in the cache) + (real new tokens before this one);
/// the second term is a `[seq, seq]` triangular product, so a decode step
/// costs O(1) and a prefill no more than its attention scores.
pub fn token_positions(b: &mut Builder, mask: NodeId) -> R {
    let (past, seq) = (Dim::sym(crate::ir::PAST), Dim::sym(crate::ir::SEQ));
    let total = past.clone() + seq.clone();
    let m = b.cast(mask, DType::F32)?;
    let cached = b.slice(m, 1, Dim::c(0), past.clone())?;
    let cached = b.reduce(crate::ir::ReduceOp::Sum, cached, &[1])?; // [batch, 1]
    let new = b.slice(m, 1, past, total)?; // [batch, seq]
    // before[j, t] = j < t over the new tokens.
    let j = b.iota(DType::I32, vec![seq.clone(), Dim::c(1)], 0)?;
    let t = b.iota(DType::I32, vec![Dim::c(1), seq], 1)?;
    let before = b.binary(crate::ir::BinaryOp::Lt, j, t)?;
    let before = b.cast(before, DType::F32)?;
    let within = b.matmul(new, before)?;
    let count = b.add2(cached, within)?;
    b.cast(count, DType::I32)
}

/// `shape + [n]`.
fn with_last(mut shape: crate::ir::Shape, n: usize) -> crate::ir::Shape {
    shape.push(Dim::c(n));
    shape
}

/// cos and sin tables `pos.shape + [rot/2]` for i32 positions `pos`
/// (`[seq]`, or `[batch, seq]` when each row has its own positions).
pub fn rope_tables(
    b: &mut Builder,
    p: &Positions,
    rot: usize,
    pos: NodeId,
) -> Result<(NodeId, NodeId), crate::ir::IrError> {
    b.scoped("rope", |b| {
        let (inv, mscale) = rope_inv_freq(p, rot);
        let inv = b.literal(inv, &[1, rot / 2])?;
        let shape = b.shape(pos);
        let pf = b.cast(pos, DType::F32)?;
        let pf = b.reshape(pf, with_last(shape, 1))?;
        let ang = b.mul(pf, inv)?;
        let cos = b.unary(UnaryOp::Cos, ang)?;
        let sin = b.unary(UnaryOp::Sin, ang)?;
        let cos = b.mul_scalar(cos, mscale)?;
        let sin = b.mul_scalar(sin, mscale)?;
        Ok((cos, sin))
    })
}

/// Rotate the first `rot` channels of `x: [.., seq, head_dim]`.
pub fn apply_rope(
    b: &mut Builder,
    layout: PairLayout,
    rot: usize,
    x: NodeId,
    cos: NodeId,
    sin: NodeId,
) -> R {
    let shape = b.shape(x);
    let r = shape.len();
    let hd = shape[r - 1].as_const().expect("head_dim is constant");
    let half = rot / 2;
    let xr = if rot < hd {
        b.slice(x, r - 1, Dim::c(0), Dim::c(rot))?
    } else {
        x
    };
    let rotated = match layout {
        PairLayout::Half => {
            // HF rotate_half: channel i pairs with i + rot/2.
            let x1 = b.slice(xr, r - 1, Dim::c(0), Dim::c(half))?;
            let x2 = b.slice(xr, r - 1, Dim::c(half), Dim::c(rot))?;
            let (o1, o2) = rotate_pair(b, x1, x2, cos, sin)?;
            b.concat(&[o1, o2], r - 1)?
        }
        PairLayout::Interleaved => {
            // GPT-J / Meta: channel 2i pairs with 2i + 1.
            let mut pairs = shape.clone();
            pairs[r - 1] = Dim::c(half);
            pairs.push(Dim::c(2));
            let xp = b.reshape(xr, pairs)?;
            let xe = b.slice(xp, r, Dim::c(0), Dim::c(1))?;
            let xo = b.slice(xp, r, Dim::c(1), Dim::c(2))?;
            // cos/sin `[.., seq, half]` -> `[.., seq, half, 1]` against the pairs.
            let cs = b.shape(cos);
            let c3 = b.reshape(cos, with_last(cs.clone(), 1))?;
            let s3 = b.reshape(sin, with_last(cs, 1))?;
            let (oe, oo) = rotate_pair(b, xe, xo, c3, s3)?;
            let o = b.concat(&[oe, oo], r)?;
            let mut back = shape.clone();
            back[r - 1] = Dim::c(rot);
            b.reshape(o, back)?
        }
    };
    if rot < hd {
        let pass = b.slice(x, r - 1, Dim::c(rot), Dim::c(hd))?;
        b.concat(&[rotated, pass], r - 1)
    } else {
        Ok(rotated)
    }
}

/// `(a cos - b sin, b cos + a sin)`.
fn rotate_pair(
    b: &mut Builder,
    x1: NodeId,
    x2: NodeId,
    cos: NodeId,
    sin: NodeId,
) -> Result<(NodeId, NodeId), crate::ir::IrError> {
    let a = b.mul(x1, cos)?;
    let c = b.mul(x2, sin)?;
    let o1 = b.sub(a, c)?;
    let d = b.mul(x2, cos)?;
    let e = b.mul(x1, sin)?;
    let o2 = b.add2(d, e)?;
    Ok((o1, o2))
}

/// Sinusoidal position embeddings `[seq, d]` for positions `pos`:
/// `sin(p / base^(2i/d))` and `cos(...)`, interleaved or as two halves.
pub fn sinusoidal(b: &mut Builder, p: &Positions, d: usize, pos: NodeId) -> R {
    b.scoped("sinusoidal", |b| {
        let half = d / 2;
        let tensor2tensor = p.frequencies == Some(crate::spec::Frequencies::Tensor2tensor);
        let inv: Vec<f32> = (0..half)
            .map(|i| {
                let e = if tensor2tensor {
                    // half > 1 is checked by the validator.
                    i as f64 / (half - 1) as f64
                } else {
                    (2 * i) as f64 / d as f64
                };
                (1.0 / p.theta().powf(e)) as f32
            })
            .collect();
        let inv = b.literal(inv, &[1, half])?;
        let shape = b.shape(pos);
        let r = shape.len();
        let pf = b.cast(pos, DType::F32)?;
        let pf = b.reshape(pf, with_last(shape.clone(), 1))?;
        let ang = b.mul(pf, inv)?;
        let s = b.unary(UnaryOp::Sin, ang)?;
        let c = b.unary(UnaryOp::Cos, ang)?;
        match p.layout() {
            PairLayout::Half => b.concat(&[s, c], r),
            PairLayout::Interleaved => {
                let pairs = with_last(with_last(shape.clone(), half), 1);
                let s3 = b.reshape(s, pairs.clone())?;
                let c3 = b.reshape(c, pairs)?;
                let sc = b.concat(&[s3, c3], r + 1)?;
                b.reshape(sc, with_last(shape, d))
            }
        }
    })
}

/// ALiBi head slopes (Press et al.): a geometric sequence for the closest
/// power of two, interleaved with the next power's odd terms for the rest.
pub fn alibi_slopes(heads: usize) -> Vec<f32> {
    fn pow2(n: usize) -> Vec<f64> {
        let start = 2f64.powf(-8.0 / n as f64);
        (0..n).map(|i| start.powi(i as i32 + 1)).collect()
    }
    let closest = if heads == 0 {
        0
    } else {
        1usize << heads.ilog2()
    };
    let mut s = pow2(closest);
    if closest < heads {
        s.extend(
            pow2(2 * closest)
                .into_iter()
                .step_by(2)
                .take(heads - closest),
        );
    }
    s.into_iter().map(|v| v as f32).collect()
}

/// T5's bucket of each relative position `k - q` (i32 tensor), as i32.
/// Bidirectional stacks split the buckets by sign; causal stacks only see the past.
pub fn relative_buckets(
    b: &mut Builder,
    rel: NodeId,
    buckets: usize,
    max_distance: usize,
    bidirectional: bool,
) -> R {
    b.scoped("buckets", |b| {
        let zero = b.scalar_i32(0)?;
        let (nb, offset, n) = if bidirectional {
            let nb = buckets / 2;
            let pos = b.binary(BinaryOp::Lt, zero, rel)?;
            let pos = b.cast(pos, DType::I32)?;
            let nbc = b.scalar_i32(nb as i32)?;
            let off = b.mul(pos, nbc)?;
            let n = b.unary(UnaryOp::Abs, rel)?;
            (nb, Some(off), n)
        } else {
            let m = b.binary(BinaryOp::Min, rel, zero)?;
            let n = b.unary(UnaryOp::Neg, m)?;
            (buckets, None, n)
        };
        let max_exact = nb / 2;
        let me = b.scalar_i32(max_exact as i32)?;
        let small = b.binary(BinaryOp::Lt, n, me)?;
        // max_exact + log(n / max_exact) / log(max_distance / max_exact) * (nb - max_exact),
        // truncated (HF computes it in f32 and casts to long); n clamped to 1 avoids log(0),
        // whose bucket `small` discards anyway.
        let nf = b.cast(n, DType::F32)?;
        let one = b.scalar(1.0)?;
        let nf = b.binary(BinaryOp::Max, nf, one)?;
        let ratio = b.mul_scalar(nf, 1.0 / max_exact as f64)?;
        let l = b.unary(UnaryOp::Log, ratio)?;
        let scale = (nb - max_exact) as f64 / (max_distance as f64 / max_exact as f64).ln();
        let l = b.mul_scalar(l, scale)?;
        let large = b.cast(l, DType::I32)?;
        let large = b.add2(large, me)?;
        let cap = b.scalar_i32(nb as i32 - 1)?;
        let large = b.binary(BinaryOp::Min, large, cap)?;
        let bucket = b.select(small, n, large)?;
        match offset {
            Some(off) => b.add2(bucket, off),
            None => Ok(bucket),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::PositionKind;

    fn rope(theta: f64, scaling: Option<RopeScaling>) -> Positions {
        Positions {
            kind: PositionKind::Rope,
            offset: 0,
            theta: Some(theta),
            fraction: None,
            layout: None,
            scaling,
            buckets: None,
            max_distance: None,
            frequencies: None,
            per_layer: None,
        }
    }

    #[test]
    fn alibi_slopes_match_the_paper() {
        // 8 heads: 1/2, 1/4, ..., 1/256.
        let s = alibi_slopes(8);
        let want: Vec<f32> = (1..=8).map(|i| 0.5f32.powi(i)).collect();
        assert_eq!(s, want);
        // 12 heads: the 8-head slopes, then odd terms of the 16-head sequence.
        let s = alibi_slopes(12);
        assert_eq!(&s[..8], &want[..]);
        let s16: Vec<f32> = (1..=16)
            .map(|i| 2f64.powf(-0.5 * i as f64) as f32)
            .collect();
        assert_eq!(&s[8..], &[s16[0], s16[2], s16[4], s16[6]]);
    }

    #[test]
    fn rope_frequencies_plain_and_linear() {
        let (f, m) = rope_inv_freq(&rope(10000.0, None), 8);
        assert_eq!(m, 1.0);
        let want = [1.0, 0.1, 0.01, 0.001];
        for (a, b) in f.iter().zip(want) {
            assert!((*a as f64 - b).abs() <= b * 1e-7, "{a} vs {b}");
        }
        let (g, _) = rope_inv_freq(&rope(10000.0, Some(RopeScaling::Linear { factor: 4.0 })), 8);
        assert!((g[1] as f64 - 0.025).abs() <= 0.025 * 1e-7);
    }

    #[test]
    fn rope_llama3_keeps_high_and_divides_low_frequencies() {
        let s = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_positions: 8192,
        };
        let (plain, _) = rope_inv_freq(&rope(500000.0, None), 128);
        let (scaled, _) = rope_inv_freq(&rope(500000.0, Some(s)), 128);
        // Highest frequency: wavelength 2π < 8192/4, unchanged.
        assert_eq!(scaled[0], plain[0]);
        // Lowest frequency: wavelength far above 8192, divided by the factor.
        assert!((scaled[63] - plain[63] / 8.0).abs() <= plain[63] * 1e-6);
        // In between, smoothly interpolated: between f/8 and f.
        let mid = (0..64)
            .find(|&i| scaled[i] != plain[i] && (scaled[i] - plain[i] / 8.0).abs() > 1e-12)
            .unwrap();
        assert!(scaled[mid] < plain[mid] && scaled[mid] > plain[mid] / 8.0);
    }

    #[test]
    fn rope_yarn_attention_factor_default() {
        let s = RopeScaling::Yarn {
            factor: 4.0,
            original_max_positions: 4096,
            beta_fast: 32.0,
            beta_slow: 1.0,
            attention_factor: None,
        };
        let (f, m) = rope_inv_freq(&rope(10000.0, Some(s)), 64);
        assert!((m - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-12);
        let (plain, _) = rope_inv_freq(&rope(10000.0, None), 64);
        assert_eq!(f[0], plain[0]); // fast dims extrapolate
        assert!((f[31] - plain[31] / 4.0).abs() <= plain[31] * 1e-6); // slow dims interpolate
    }
}
