//! Inputs for a lowered graph, named and shaped the way
//! `kiln_runtime::session` builds them, plus output comparison.

use super::rng::Rng;
use kiln_compiler::ir::{DType, Graph, Op};
use kiln_compiler::lower::Lowered;
use kiln_runtime::{Outputs, Tensor};

/// Values for the shape symbols of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lengths {
    pub batch: usize,
    /// New tokens.
    pub seq: usize,
    /// Cached tokens (decoders).
    pub past: usize,
    /// Encoder length (encoder-decoder decoders).
    pub src: usize,
}

impl Lengths {
    fn get(&self, sym: &str) -> Option<usize> {
        match sym {
            "batch" => Some(self.batch),
            "seq" => Some(self.seq),
            "past" => Some(self.past),
            "src" => Some(self.src),
            _ => None,
        }
    }
}

/// Whether `g` has symbol `sym` in any input's shape.
pub fn uses_symbol(g: &Graph, sym: &str) -> bool {
    g.inputs_decl()
        .iter()
        .any(|&i| g.ty(i).shape.iter().any(|d| d.symbols().any(|s| s == sym)))
}

/// Every declared input of `g`, with seeded contents:
/// - `tokens`: ids in `0..vocab`; `token_types`: in `0..rows of embed.token_types`;
/// - `attention_mask` / `encoder_mask`: ones, except that with `batch >= 2`
///   the last row hides one key (a padded position), so masking is exercised;
/// - f32 inputs (`past.*`, `cross.*`): uniform in `[-1, 1)`.
pub fn graph_inputs(
    lowered: &Lowered,
    g: &Graph,
    lens: &Lengths,
    seed: u64,
) -> Vec<(String, Tensor)> {
    let mut rng = Rng::new(seed);
    let type_rows = g
        .parameters()
        .into_iter()
        .find_map(|p| match &g.node(p).op {
            Op::Parameter { name, .. } if name == "embed.token_types" => {
                g.ty(p).shape[0].as_const()
            }
            _ => None,
        })
        .unwrap_or(1);
    let mut out = Vec::new();
    for id in g.inputs_decl() {
        let Op::Input { name } = &g.node(id).op else {
            continue;
        };
        let ty = g.ty(id);
        let shape: Vec<usize> = ty
            .shape
            .iter()
            .map(|d| {
                d.eval(&|s| lens.get(s))
                    .unwrap_or_else(|| panic!("input `{name}`: cannot size {d}"))
            })
            .collect();
        let n: usize = shape.iter().product();
        let t = match (name.as_str(), ty.dtype) {
            ("tokens", DType::I32) => {
                let v = (0..n)
                    .map(|_| rng.range(0, lowered.vocab_size - 1) as i32)
                    .collect();
                Tensor::from_i32(&shape, v)
            }
            ("token_types", DType::I32) => {
                let v = (0..n).map(|_| rng.range(0, type_rows - 1) as i32).collect();
                Tensor::from_i32(&shape, v)
            }
            ("attention_mask" | "encoder_mask", DType::I32) => {
                let mut v = vec![1; n];
                let (rows, keys) = (shape[0], shape[1]);
                if rows >= 2 && keys >= 2 {
                    // Last row: hide its last key for encoders (padding), its
                    // first key for decoders (a padded cached position).
                    let k = if uses_symbol(g, "past") { 0 } else { keys - 1 };
                    v[(rows - 1) * keys + k] = 0;
                }
                Tensor::from_i32(&shape, v)
            }
            (_, DType::F32) => Tensor::from_f32(&shape, (0..n).map(|_| rng.signed()).collect()),
            (other, dtype) => panic!("no recipe for input `{other}` of {dtype}"),
        };
        out.push((name.clone(), t.expect("input tensor")));
    }
    out
}

/// `(max |a - b|, max(max |a|, 1e-6))` over two tensors' values: the worst
/// absolute difference and the scale it is judged against.
pub fn max_abs_diff_and_scale(want: &[f32], got: &[f32]) -> (f32, f32) {
    let scale = want.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    let d = want
        .iter()
        .zip(got)
        .fold(0.0f32, |m, (p, q)| m.max((p - q).abs()));
    (d, scale)
}

/// Each output of two runs as `(a's values, b's values)`, in order.
/// Panics if the outputs differ in names, dtypes or shapes.
fn paired(a: &Outputs, b: &Outputs, what: &str) -> Vec<(Vec<f32>, Vec<f32>)> {
    let names = |o: &Outputs| o.iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>();
    assert_eq!(names(a), names(b), "{what}: output names differ");
    a.iter()
        .zip(b.iter())
        .map(|((name, x), (_, y))| {
            assert_eq!(x.dtype(), y.dtype(), "{what}: `{name}` dtype");
            assert_eq!(x.shape(), y.shape(), "{what}: `{name}` shape");
            (x.to_f32_vec(), y.to_f32_vec())
        })
        .collect()
}

/// Largest normwise relative difference over two runs' outputs: per
/// output, `max |a - b| / max |a|` (the measure for reduced-precision
/// storage, whose rounding error scales with the output, not with each
/// element). Panics if the outputs differ in names, dtypes or shapes.
#[allow(dead_code)]
pub fn max_normwise_diff(a: &Outputs, b: &Outputs, what: &str) -> f32 {
    let mut worst = 0.0f32;
    for (x, y) in paired(a, b, what) {
        let (d, scale) = max_abs_diff_and_scale(&x, &y);
        let rel = d / scale;
        worst = worst.max(if rel.is_nan() { f32::INFINITY } else { rel });
    }
    worst
}

/// Largest relative difference `|a - b| / max(|a|, |b|)` over two runs'
/// outputs (0 where both are equal, NaN included). Panics if the outputs
/// differ in names, dtypes or shapes.
pub fn max_rel_diff(a: &Outputs, b: &Outputs, what: &str) -> f32 {
    let mut worst = 0.0f32;
    for (x, y) in paired(a, b, what) {
        for (p, q) in x.into_iter().zip(y) {
            if p == q || (p.is_nan() && q.is_nan()) {
                continue;
            }
            let rel = (p - q).abs() / p.abs().max(q.abs());
            worst = worst.max(if rel.is_nan() { f32::INFINITY } else { rel });
        }
    }
    worst
}

/// Like [`max_rel_diff`], for executors whose sums round differently (f32
/// accumulation in another order): an element's denominator is at least a
/// tenth of its tensor's RMS, so values that cancel to nearly zero are
/// judged against the tensor's scale rather than against themselves
/// (`d <= 1e-4` means `|p - q| <= 1e-4·max(|p|, |q|)` or `<= 1e-5·rms`).
pub fn max_rel_diff_floored(a: &Outputs, b: &Outputs, what: &str) -> f32 {
    let mut worst = 0.0f32;
    for (x, y) in paired(a, b, what) {
        let finite: Vec<f64> = x
            .iter()
            .filter(|v| v.is_finite())
            .map(|&v| f64::from(v) * f64::from(v))
            .collect();
        let rms = (finite.iter().sum::<f64>() / finite.len().max(1) as f64).sqrt() as f32;
        for (p, q) in x.into_iter().zip(y) {
            if p == q || (p.is_nan() && q.is_nan()) {
                continue;
            }
            let rel = (p - q).abs() / p.abs().max(q.abs()).max(0.1 * rms);
            worst = worst.max(if rel.is_nan() { f32::INFINITY } else { rel });
        }
    }
    worst
}

/// The lengths every backend check runs a graph at: batch 2 with a padded
/// row, single tokens and few rows (decode shapes), and, for graphs with a
/// cache, the same after 3 cached positions; lengths past the model's
/// positions (less a learned offset of up to 2) are left out.
pub fn test_lengths(l: &Lowered, g: &Graph) -> Vec<Lengths> {
    let pasts: &[usize] = if uses_symbol(g, "past") {
        &[0, 3]
    } else {
        &[0]
    };
    let mut out = Vec::new();
    for &past in pasts {
        for (batch, seq) in [(2, 5), (1, 1), (2, 3), (1, 9)] {
            if past + seq + 2 <= l.max_positions {
                out.push(Lengths {
                    batch,
                    seq,
                    past,
                    src: 6,
                });
            }
        }
    }
    out
}
