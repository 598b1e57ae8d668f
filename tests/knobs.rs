//! Semantics of each knob against hand-computed values: the lowering's
//! builders are evaluated by the reference interpreter on tiny inputs with
//! weights set by hand.

use kiln_compiler::ir::{Builder, DType, Graph, NodeId, Shape};
use kiln_compiler::lower::{mlp, norm, positions};
use kiln_compiler::shape;
use kiln_compiler::spec::{
    self, Activation, Mlp, Moe, Norm, NormKind, PairLayout, PositionKind, Positions,
};
use kiln_runtime::{Tensor, Weights, run};

/// Build a graph with one f32 input `x` of `shape`, output `y = f(x)`, run it.
fn eval(
    x_shape: Shape,
    x: Tensor,
    weights: &[(&str, Tensor)],
    f: impl FnOnce(&mut Builder, NodeId) -> kiln_compiler::ir::R,
) -> Vec<f32> {
    let mut g = Graph::new("knob");
    let mut b = Builder::new(&mut g);
    let xi = b.input("x", x.dtype(), x_shape).unwrap();
    let y = f(&mut b, xi).unwrap();
    g.set_output("y", y);
    let mut w = Weights::random(&[&g], 0).unwrap();
    for (n, t) in weights {
        w.insert(*n, t.clone());
    }
    let out = run(&g, &w, [("x", &x)]).unwrap();
    out["y"].to_f32_vec()
}

fn close(a: &[f32], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (*x as f64 - y).abs() <= tol * (1.0 + y.abs()),
            "element {i}: {x} vs {y}\n{a:?}\n{b:?}"
        );
    }
}

fn f32s(shape: &[usize], v: &[f64]) -> Tensor {
    Tensor::from_f32(shape, v.iter().map(|&x| x as f32).collect()).unwrap()
}

fn norm_spec(kind: NormKind, bias: Option<bool>, affine: bool, offset: f64) -> Norm {
    Norm {
        kind,
        eps: 1e-5,
        bias,
        affine,
        weight_offset: offset,
        ..Norm::default()
    }
}

#[test]
fn layernorm_with_scale_and_bias() {
    let x = [1.0, 2.0, 3.0, 6.0];
    let mean = 3.0;
    let var = (4.0 + 1.0 + 0.0 + 9.0) / 4.0;
    let w = [1.0, 2.0, 0.5, -1.0];
    let bias = [0.1, 0.2, 0.3, 0.4];
    let want: Vec<f64> = (0..4)
        .map(|i| (x[i] - mean) / (var + 1e-5f64).sqrt() * w[i] + bias[i])
        .collect();
    let n = norm_spec(NormKind::Layernorm, None, true, 0.0);
    let got = eval(
        shape![1usize, 4usize],
        f32s(&[1, 4], &x),
        &[
            ("ln.weight", f32s(&[4], &w)),
            ("ln.bias", f32s(&[4], &bias)),
        ],
        |b, x| norm::norm(b, &n, "ln", x, 4),
    );
    close(&got, &want, 1e-6);
}

#[test]
fn layernorm_without_affine_has_no_parameters() {
    let x = [1.0, 2.0, 3.0, 6.0];
    let sd = (14.0f64 / 4.0 + 1e-5).sqrt();
    let want: Vec<f64> = x.iter().map(|v| (v - 3.0) / sd).collect();
    let n = norm_spec(NormKind::Layernorm, None, false, 0.0);
    let got = eval(shape![1usize, 4usize], f32s(&[1, 4], &x), &[], |b, x| {
        norm::norm(b, &n, "ln", x, 4)
    });
    close(&got, &want, 1e-6);
}

#[test]
fn rmsnorm_and_gemma_offset() {
    let x = [1.0, -2.0, 3.0, 4.0];
    let rms = ((1.0 + 4.0 + 9.0 + 16.0) / 4.0 + 1e-5f64).sqrt();
    let w = [0.5, 1.0, 2.0, 0.0];
    // Llama: x / rms * w.
    let want: Vec<f64> = (0..4).map(|i| x[i] / rms * w[i]).collect();
    let n = norm_spec(NormKind::Rmsnorm, None, true, 0.0);
    let got = eval(
        shape![1usize, 4usize],
        f32s(&[1, 4], &x),
        &[("rms.weight", f32s(&[4], &w))],
        |b, x| norm::norm(b, &n, "rms", x, 4),
    );
    close(&got, &want, 1e-6);
    // Gemma: x / rms * (1 + w).
    let want: Vec<f64> = (0..4).map(|i| x[i] / rms * (1.0 + w[i])).collect();
    let n = norm_spec(NormKind::Rmsnorm, None, true, 1.0);
    let got = eval(
        shape![1usize, 4usize],
        f32s(&[1, 4], &x),
        &[("rms.weight", f32s(&[4], &w))],
        |b, x| norm::norm(b, &n, "rms", x, 4),
    );
    close(&got, &want, 1e-6);
}

#[test]
fn activations_match_reference_values() {
    let x = [-1.0, 0.0, 1.0, 2.5];
    let cases: [(Activation, [f64; 4]); 5] = [
        (Activation::Relu, [0.0, 0.0, 1.0, 2.5]),
        (Activation::Relu2, [0.0, 0.0, 1.0, 6.25]),
        // x * Phi(x)
        (
            Activation::Gelu,
            [
                -0.15865525393145707,
                0.0,
                0.8413447460685429,
                2.4844758366855597,
            ],
        ),
        // 0.5 x (1 + tanh(sqrt(2/pi)(x + 0.044715 x^3)))
        (
            Activation::GeluTanh,
            [
                -0.15880800939172324,
                0.0,
                0.8411919906082768,
                2.484915733910001,
            ],
        ),
        (
            Activation::Silu,
            [
                -0.2689414213699951,
                0.0,
                0.7310585786300049,
                2.3103545499468914,
            ],
        ),
    ];
    for (act, want) in cases {
        let got = eval(shape![4usize], f32s(&[4], &x), &[], |b, x| {
            mlp::activation(b, act, x)
        });
        close(&got, &want, 2e-6);
    }
}

fn rope_positions(layout: PairLayout, fraction: f64) -> Positions {
    Positions {
        kind: PositionKind::Rope,
        offset: 0,
        theta: Some(10000.0),
        fraction: Some(fraction),
        layout: Some(layout),
        scaling: None,
        buckets: None,
        max_distance: None,
        frequencies: None,
        per_layer: None,
    }
}

/// Hand-rotated reference: `pairs[k] = (i, j)` rotated by `pos * inv_freq[k]`.
fn rope_reference(x: &[f64], pos: f64, pairs: &[(usize, usize)], inv_freq: &[f64]) -> Vec<f64> {
    let mut out = x.to_vec();
    for (k, &(i, j)) in pairs.iter().enumerate() {
        let (c, s) = ((pos * inv_freq[k]).cos(), (pos * inv_freq[k]).sin());
        out[i] = x[i] * c - x[j] * s;
        out[j] = x[j] * c + x[i] * s;
    }
    out
}

fn run_rope(p: &Positions, hd: usize, x: &[f64], pos: i32) -> Vec<f32> {
    let rot = p.rotary_dims(hd);
    let mut g = Graph::new("rope");
    let mut b = Builder::new(&mut g);
    let xi = b
        .input("x", DType::F32, shape![1usize, 1usize, "seq", hd])
        .unwrap();
    let pi = b.input("pos", DType::I32, shape!["seq"]).unwrap();
    let (cos, sin) = positions::rope_tables(&mut b, p, rot, pi).unwrap();
    let y = positions::apply_rope(&mut b, p.layout(), rot, xi, cos, sin).unwrap();
    g.set_output("y", y);
    let xt = f32s(&[1, 1, 1, hd], x);
    let pt = Tensor::from_i32(&[1], vec![pos]).unwrap();
    run(&g, &Weights::new(), [("x", &xt), ("pos", &pt)]).unwrap()["y"].to_f32_vec()
}

#[test]
fn rope_half_split_pairs_i_with_i_plus_half() {
    let x = [0.3, -1.2, 0.7, 2.0];
    let inv = [1.0, 0.01]; // 10000^(-2i/4)
    let want = rope_reference(&x, 3.0, &[(0, 2), (1, 3)], &inv);
    close(
        &run_rope(&rope_positions(PairLayout::Half, 1.0), 4, &x, 3),
        &want,
        1e-6,
    );
}

#[test]
fn rope_interleaved_pairs_adjacent_channels() {
    let x = [0.3, -1.2, 0.7, 2.0];
    let inv = [1.0, 0.01];
    let want = rope_reference(&x, 3.0, &[(0, 1), (2, 3)], &inv);
    close(
        &run_rope(&rope_positions(PairLayout::Interleaved, 1.0), 4, &x, 3),
        &want,
        1e-6,
    );
}

#[test]
fn partial_rope_rotates_only_the_leading_channels() {
    // head_dim 8, fraction 0.5: channels 0..4 rotate (as a 4-dim rope), 4..8 pass through.
    let x = [0.3, -1.2, 0.7, 2.0, 5.0, 6.0, 7.0, 8.0];
    let inv = [1.0, 0.01];
    let want = rope_reference(&x, 5.0, &[(0, 2), (1, 3)], &inv);
    close(
        &run_rope(&rope_positions(PairLayout::Half, 0.5), 8, &x, 5),
        &want,
        1e-6,
    );
    // Position 0 is the identity.
    close(
        &run_rope(&rope_positions(PairLayout::Half, 0.5), 8, &x, 0),
        &x,
        1e-7,
    );
}

#[test]
fn sinusoidal_table_interleaves_sin_and_cos() {
    let p = Positions {
        kind: PositionKind::Sinusoidal,
        layout: None,
        ..rope_positions(PairLayout::Half, 1.0)
    };
    let mut g = Graph::new("sin");
    let mut b = Builder::new(&mut g);
    let pi = b.input("pos", DType::I32, shape!["seq"]).unwrap();
    let y = positions::sinusoidal(&mut b, &p, 4, pi).unwrap();
    g.set_output("y", y);
    let pt = Tensor::from_i32(&[2], vec![0, 2]).unwrap();
    let got = run(&g, &Weights::new(), [("pos", &pt)]).unwrap()["y"].to_f32_vec();
    let want = [
        0.0,
        1.0,
        0.0,
        1.0,
        2f64.sin(),
        2f64.cos(),
        0.02f64.sin(),
        0.02f64.cos(),
    ];
    close(&got, &want, 1e-6);
    // fairseq / tensor2tensor spacing (M2M-100, XGLM), [sin | cos] halves, d = 6:
    // inv[i] = 10000^(-i / (3 - 1)) = 1, 0.01, 0.0001.
    let p = Positions {
        kind: PositionKind::Sinusoidal,
        layout: Some(PairLayout::Half),
        frequencies: Some(kiln_compiler::spec::Frequencies::Tensor2tensor),
        ..rope_positions(PairLayout::Half, 1.0)
    };
    let mut g = Graph::new("sin");
    let mut b = Builder::new(&mut g);
    let pi = b.input("pos", DType::I32, shape!["seq"]).unwrap();
    let y = positions::sinusoidal(&mut b, &p, 6, pi).unwrap();
    g.set_output("y", y);
    let pt = Tensor::from_i32(&[1], vec![3]).unwrap();
    let got = run(&g, &Weights::new(), [("pos", &pt)]).unwrap()["y"].to_f32_vec();
    let a = [3.0f64, 0.03, 0.0003];
    let want: Vec<f64> = a
        .iter()
        .map(|x| x.sin())
        .chain(a.iter().map(|x| x.cos()))
        .collect();
    close(&got, &want, 1e-6);
}

/// `offset` applies to learned and sinusoidal positions only, `frequencies`
/// to sinusoidal ones (the M2M-100 / XGLM fixtures in tests/parity exercise
/// both end to end, the oracle draws them at random).
#[test]
fn sinusoidal_offset_and_frequencies_are_checked() {
    let load = |pos: &str, d: usize| {
        let src = format!(
            "name = \"t\"\narchitecture = \"decoder\"\nvocab_size = 32\nd_model = {d}\nlayers = 1\n[attention]\nheads = 1\n[positions]\n{pos}\n[mlp]\nd_ff = 8\nactivation = \"gelu\"\n"
        );
        spec::load_str(&src, std::path::Path::new("t.toml")).map_err(|e| e.render())
    };
    assert!(
        load(
            "kind = \"sinusoidal\"\noffset = 2\nfrequencies = \"tensor2tensor\"",
            16
        )
        .is_ok()
    );
    let e = load("kind = \"rope\"\noffset = 2", 16).unwrap_err();
    assert!(e.contains("`positions.offset` only applies to"), "{e}");
    let e = load("kind = \"learned\"\nfrequencies = \"vaswani\"", 16).unwrap_err();
    assert!(e.contains("`positions.frequencies` only applies to"), "{e}");
    let e = load("kind = \"sinusoidal\"\nfrequencies = \"tensor2tensor\"", 2).unwrap_err();
    assert!(e.contains("needs `d_model` of at least 4"), "{e}");
}

/// HF T5's `_relative_position_bucket`, written out directly.
fn t5_bucket(rel: i64, bidirectional: bool, buckets: i64, max_distance: i64) -> i64 {
    let mut nb = buckets;
    let mut ret = 0;
    let n = if bidirectional {
        nb /= 2;
        if rel > 0 {
            ret += nb;
        }
        rel.abs()
    } else {
        (-rel).max(0)
    };
    let max_exact = nb / 2;
    if n < max_exact {
        return ret + n;
    }
    let large = max_exact
        + ((n as f32 / max_exact as f32).ln() / (max_distance as f32 / max_exact as f32).ln()
            * (nb - max_exact) as f32) as i64;
    ret + large.min(nb - 1)
}

#[test]
fn t5_relative_buckets() {
    // Hand-computed (32 buckets, max distance 128, bidirectional):
    // 0 -> 0; +1 -> 17; -1 -> 1; +20 -> 16 + 8 + floor(ln(2.5)/ln(16)*8) = 26; -200 -> 15.
    assert_eq!(t5_bucket(0, true, 32, 128), 0);
    assert_eq!(t5_bucket(1, true, 32, 128), 17);
    assert_eq!(t5_bucket(-1, true, 32, 128), 1);
    assert_eq!(t5_bucket(20, true, 32, 128), 26);
    assert_eq!(t5_bucket(-200, true, 32, 128), 15);
    let rels: Vec<i32> = (-300..=300).step_by(7).chain(-20..=20).collect();
    for bidirectional in [true, false] {
        let got = eval(
            shape![rels.len()],
            Tensor::from_i32(&[rels.len()], rels.clone()).unwrap(),
            &[],
            |b, x| {
                let bk = positions::relative_buckets(b, x, 32, 128, bidirectional)?;
                b.cast(bk, DType::F32)
            },
        );
        for (r, g) in rels.iter().zip(&got) {
            assert_eq!(
                *g as i64,
                t5_bucket(*r as i64, bidirectional, 32, 128),
                "rel {r} bidirectional {bidirectional}"
            );
        }
    }
}

#[test]
fn moe_routes_each_token_to_its_top_k_experts() {
    // d = 2, 3 experts, relu MLP with d_ff = 2: expert e computes (e + 1) * x for x > 0.
    let e = 3;
    let up: Vec<f64> = (0..e).flat_map(|_| [1.0, 0.0, 0.0, 1.0]).collect();
    let down: Vec<f64> = (0..e)
        .flat_map(|i| {
            let s = (i + 1) as f64;
            [s, 0.0, 0.0, s]
        })
        .collect();
    // Router logits for x = [1, 1]: [0, ln 2, ln 3] -> probs 1/6, 2/6, 3/6.
    let router = [0.0, 0.0, 2f64.ln(), 0.0, 3f64.ln(), 0.0];
    let m = Mlp {
        d_ff: 2,
        activation: Activation::Relu,
        gated: false,
        bias: false,
    };
    for renormalize in [true, false] {
        let moe_spec = Moe {
            experts: 3,
            top_k: 2,
            renormalize,
            d_ff: None,
            shared_expert: None,
            layers: None,
        };
        let x = f32s(&[1, 1, 2], &[1.0, 1.0]);
        let got = eval(
            shape![1usize, 1usize, 2usize],
            x,
            &[
                ("moe.router.weight", f32s(&[3, 2], &router)),
                ("moe.experts.up.weight", f32s(&[3, 2, 2], &up)),
                ("moe.experts.down.weight", f32s(&[3, 2, 2], &down)),
            ],
            |b, x| mlp::moe(b, &moe_spec, &m, "moe", x, 2),
        );
        // Top-2 are experts 2 (p 3/6, output 3x) and 1 (p 2/6, output 2x); expert 0 is dropped.
        let (p1, p2) = (2.0 / 6.0, 3.0 / 6.0);
        let y = if renormalize {
            (p2 * 3.0 + p1 * 2.0) / (p1 + p2)
        } else {
            p2 * 3.0 + p1 * 2.0
        };
        close(&got, &[y, y], 1e-6);
    }
}

#[test]
fn softcap_bounds_values() {
    let got = eval(
        shape![3usize],
        f32s(&[3], &[0.0, 10.0, 1000.0]),
        &[],
        |b, x| b.softcap(x, 50.0),
    );
    close(
        &got,
        &[0.0, 50.0 * (0.2f64).tanh(), 50.0 * 20f64.tanh()],
        1e-6,
    );
}

/// Load a spec from text in a temporary location inside the repo's models tree.
fn tiny_decoder(extra: &str) -> spec::ResolvedSpec {
    let src = format!(
        r#"
name = "window-test"
architecture = "decoder"
vocab_size = 32
d_model = 16
layers = 1
max_positions = 32
[attention]
heads = 2
{extra}
[positions]
kind = "rope"
[mlp]
d_ff = 32
activation = "silu"
gated = true
[norm]
kind = "rmsnorm"
"#
    );
    spec::load_str(&src, std::path::Path::new("window-test.toml"))
        .unwrap_or_else(|e| panic!("{}", e.render()))
}

fn last_logits(rs: &spec::ResolvedSpec, tokens: &[i32]) -> Vec<f32> {
    let lowered = kiln_compiler::lower::lower(rs).unwrap();
    let model = kiln_runtime::session::Model::random(lowered, 7).unwrap();
    let out = model.session().forward(tokens).unwrap();
    let l = out["logits"].to_f32_vec();
    l[l.len() - 32..].to_vec()
}

#[test]
fn sliding_window_includes_the_current_token() {
    // One layer, window 2: position 3 sees tokens 2 and 3 only.
    let w = tiny_decoder("sliding_window = 2");
    let base = last_logits(&w, &[1, 2, 3, 4]);
    assert_eq!(
        base,
        last_logits(&w, &[9, 2, 3, 4]),
        "token 0 is outside the window"
    );
    assert_eq!(
        base,
        last_logits(&w, &[1, 9, 3, 4]),
        "token 1 is outside the window"
    );
    assert_ne!(
        base,
        last_logits(&w, &[1, 2, 9, 4]),
        "token 2 is inside the window"
    );
    // Without a window every earlier token matters.
    let full = tiny_decoder("");
    assert_ne!(
        last_logits(&full, &[1, 2, 3, 4]),
        last_logits(&full, &[9, 2, 3, 4])
    );
    // Window 1: only the token itself.
    let one = tiny_decoder("sliding_window = 1");
    assert_eq!(
        last_logits(&one, &[1, 2, 3, 4]),
        last_logits(&one, &[5, 6, 7, 4])
    );
}

/// A one-layer RMSNorm decoder with `extra` lines after `[norm]`.
fn tiny_decoder_with(extra: &str) -> spec::ResolvedSpec {
    let src = format!(
        r#"
name = "knob-test"
architecture = "decoder"
vocab_size = 32
d_model = 16
layers = 1
max_positions = 32
[attention]
heads = 2
[positions]
kind = "rope"
[mlp]
d_ff = 32
activation = "silu"
gated = true
[norm]
kind = "rmsnorm"
{extra}
"#
    );
    spec::load_str(&src, std::path::Path::new("knob-test.toml"))
        .unwrap_or_else(|e| panic!("{}", e.render()))
}

fn parameter_names(g: &kiln_compiler::ir::Graph) -> Vec<String> {
    g.parameters()
        .into_iter()
        .filter_map(|p| match &g.node(p).op {
            kiln_compiler::ir::Op::Parameter { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect()
}

/// `residual.scale = s` adds `s * f(..)`: the same as the unscaled model
/// with each branch's last projection (o, down) multiplied by `s`.
#[test]
fn residual_scale_multiplies_each_branch() {
    use kiln_compiler::lower::lower;
    use kiln_runtime::session::Model;
    let s = 0.25f32;
    let plain = Model::random(lower(&tiny_decoder_with("")).unwrap(), 5).unwrap();
    let mut weights = plain.weights.clone();
    for n in ["layers.0.attn.o.weight", "layers.0.mlp.down.weight"] {
        let t = weights.get(n).unwrap();
        let v: Vec<f32> = t.to_f32_vec().iter().map(|x| x * s).collect();
        weights.insert(n, Tensor::from_f32(t.shape(), v).unwrap());
    }
    let folded = Model::new(lower(&tiny_decoder_with("")).unwrap(), weights);
    let scaled = Model::new(
        lower(&tiny_decoder_with("[residual]\nscale = 0.25")).unwrap(),
        plain.weights.clone(),
    );
    let tokens = [3, 1, 4, 1, 5];
    let want = folded.session().forward(&tokens).unwrap()["logits"].to_f32_vec();
    let got = scaled.session().forward(&tokens).unwrap()["logits"].to_f32_vec();
    let unscaled = plain.session().forward(&tokens).unwrap()["logits"].to_f32_vec();
    let diff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    };
    assert!(diff(&got, &want) < 1e-5, "{}", diff(&got, &want));
    assert!(diff(&got, &unscaled) > 1e-2, "the scale changes nothing");
}

/// `placement = "output"` normalises each branch's output (its own
/// `*_post_norm`), never the block's input: the branch sees the raw stream,
/// and scaling a branch's output projection leaves the logits unchanged
/// (an RMSNorm is scale-invariant) where pre-norm would change them.
#[test]
fn output_placement_normalises_only_the_branch() {
    use kiln_compiler::lower::lower;
    use kiln_runtime::session::Model;
    let rs = tiny_decoder_with("placement = \"output\"\neps = 1e-12");
    let lowered = lower(&rs).unwrap();
    let names = parameter_names(lowered.decoder.as_ref().unwrap());
    let has = |n: &str| names.iter().any(|x| x == n);
    assert!(has("layers.0.attn_post_norm.weight"), "{names:?}");
    assert!(has("layers.0.mlp_post_norm.weight"), "{names:?}");
    assert!(!has("layers.0.attn_norm.weight"), "{names:?}");
    assert!(!has("layers.0.mlp_norm.weight"), "{names:?}");
    let model = Model::random(lowered.clone(), 9).unwrap();
    let tokens = [2, 7, 1, 8];
    let base = model.session().forward(&tokens).unwrap()["logits"].to_f32_vec();
    let mut weights = model.weights.clone();
    let t = weights.get("layers.0.attn.o.weight").unwrap();
    let v: Vec<f32> = t.to_f32_vec().iter().map(|x| x * 8.0).collect();
    weights.insert(
        "layers.0.attn.o.weight",
        Tensor::from_f32(t.shape(), v).unwrap(),
    );
    let louder = Model::new(lowered, weights);
    let got = louder.session().forward(&tokens).unwrap()["logits"].to_f32_vec();
    let d = base
        .iter()
        .zip(&got)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(d < 1e-3, "the attention output is not normalised: {d}");
    // Control: under pre-norm the same change moves the logits.
    let pre = lower(&tiny_decoder_with("eps = 1e-12")).unwrap();
    let model = Model::random(pre.clone(), 9).unwrap();
    let base = model.session().forward(&tokens).unwrap()["logits"].to_f32_vec();
    let mut weights = model.weights.clone();
    let t = weights.get("layers.0.attn.o.weight").unwrap();
    let v: Vec<f32> = t.to_f32_vec().iter().map(|x| x * 8.0).collect();
    weights.insert(
        "layers.0.attn.o.weight",
        Tensor::from_f32(t.shape(), v).unwrap(),
    );
    let got = Model::new(pre, weights).session().forward(&tokens).unwrap()["logits"].to_f32_vec();
    let d = base
        .iter()
        .zip(&got)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(d > 1e-3, "pre-norm control: {d}");
}

/// `[[layer]] positions` (RoPE models): `kind = "none"` takes the rotation
/// out of a layer — a causal layer without positions cannot tell the order
/// of earlier tokens — and `theta` there is the same as the model-wide base.
#[test]
fn per_layer_positions_switch_rope_off_or_change_its_base() {
    use kiln_compiler::lower::lower;
    use kiln_runtime::session::Model;
    let last = |extra: &str, tokens: &[i32]| {
        let rs = tiny_decoder_with(extra);
        let model = Model::random(lower(&rs).unwrap(), 4).unwrap();
        let l = model.session().forward(tokens).unwrap()["logits"].to_f32_vec();
        l[l.len() - 32..].to_vec()
    };
    let off = "[[layer]]\nselect = \"all\"\npositions = { kind = \"none\" }";
    let a = last(off, &[1, 2, 3, 4]);
    let b = last(off, &[2, 1, 3, 4]);
    let d = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(d < 1e-5, "a layer without RoPE saw the order: {d}");
    let a = last("", &[1, 2, 3, 4]);
    let b = last("", &[2, 1, 3, 4]);
    assert_ne!(a, b, "with RoPE the order matters");
    let per_layer = last(
        "[[layer]]\nselect = \"0\"\npositions = { theta = 37.0 }",
        &[5, 6, 7, 8],
    );
    let src = "name = \"t\"\narchitecture = \"decoder\"\nvocab_size = 32\nd_model = 16\nlayers = 1\nmax_positions = 32\n[attention]\nheads = 2\n[positions]\nkind = \"rope\"\ntheta = 37.0\n[mlp]\nd_ff = 32\nactivation = \"silu\"\ngated = true\n[norm]\nkind = \"rmsnorm\"\n";
    let rs = spec::load_str(src, std::path::Path::new("t.toml")).unwrap();
    let model = Model::random(lower(&rs).unwrap(), 4).unwrap();
    let l = model.session().forward(&[5, 6, 7, 8]).unwrap()["logits"].to_f32_vec();
    assert_eq!(per_layer, l[l.len() - 32..].to_vec());
    assert_ne!(per_layer, last("", &[5, 6, 7, 8]));
    // What cannot be set per layer is an error at the key.
    for (extra, want) in [
        (
            "[[layer]]\nselect = \"0\"\npositions = { layout = \"interleaved\" }",
            "`layer[0].positions.layout` cannot be set per layer",
        ),
        (
            "[[layer]]\nselect = \"0\"\npositions = { kind = \"alibi\" }",
            "use `kind = \"rope\"` or `kind = \"none\"`",
        ),
        (
            "[[layer]]\nselect = \"0\"\npositions = { theta = -1.0 }",
            "`positions.theta` must be greater than 0",
        ),
    ] {
        let src = format!(
            "name = \"t\"\narchitecture = \"decoder\"\nvocab_size = 32\nd_model = 16\nlayers = 1\n[attention]\nheads = 2\n[positions]\nkind = \"rope\"\n[mlp]\nd_ff = 32\nactivation = \"silu\"\n{extra}\n"
        );
        let e = spec::load_str(&src, std::path::Path::new("t.toml"))
            .unwrap_err()
            .render();
        assert!(e.contains(want), "{e}");
    }
    let src = "name = \"t\"\narchitecture = \"decoder\"\nvocab_size = 32\nd_model = 16\nlayers = 1\n[attention]\nheads = 2\n[positions]\nkind = \"learned\"\n[mlp]\nd_ff = 32\nactivation = \"silu\"\n[[layer]]\nselect = \"0\"\npositions = { kind = \"none\" }\n";
    let e = spec::load_str(src, std::path::Path::new("t.toml"))
        .unwrap_err()
        .render();
    assert!(e.contains("applies to RoPE models only"), "{e}");
}

/// `layer_groups = 1`: every block uses `layers.0.*`, the same as a model
/// with separate blocks whose parameters are copies of block 0's.
#[test]
fn shared_layer_groups_reuse_one_set_of_parameters() {
    use kiln_compiler::lower::lower;
    use kiln_runtime::session::Model;
    let spec = |extra: &str| {
        let src = format!(
            "name = \"t\"\narchitecture = \"decoder\"\nvocab_size = 32\nd_model = 16\nlayers = 3\nmax_positions = 32\n{extra}\n[attention]\nheads = 2\n[positions]\nkind = \"rope\"\n[mlp]\nd_ff = 24\nactivation = \"silu\"\n[norm]\nkind = \"rmsnorm\"\n"
        );
        spec::load_str(&src, std::path::Path::new("t.toml"))
            .unwrap_or_else(|e| panic!("{}", e.render()))
    };
    let shared = lower(&spec("layer_groups = 1")).unwrap();
    let names = parameter_names(shared.decoder.as_ref().unwrap());
    assert!(
        names
            .iter()
            .all(|n| !n.starts_with("layers.1.") && !n.starts_with("layers.2.")),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n == "layers.0.attn.q.weight"),
        "{names:?}"
    );
    let model = Model::random(shared, 6).unwrap();
    let separate = lower(&spec("")).unwrap();
    let mut weights = model.weights.clone();
    for n in parameter_names(separate.decoder.as_ref().unwrap()) {
        if let Some(rest) = n.strip_prefix("layers.0.") {
            let t = model.weights.get(&n).unwrap().clone();
            for i in 1..3 {
                weights.insert(format!("layers.{i}.{rest}").as_str(), t.clone());
            }
        }
    }
    let copies = Model::new(separate, weights);
    let tokens = [1, 5, 9, 2];
    assert_eq!(
        model.session().forward(&tokens).unwrap()["logits"].to_f32_vec(),
        copies.session().forward(&tokens).unwrap()["logits"].to_f32_vec()
    );
    let e = spec::load_str(
        "name = \"t\"\narchitecture = \"decoder\"\nvocab_size = 32\nd_model = 16\nlayers = 3\nlayer_groups = 2\n[attention]\nheads = 2\n[positions]\nkind = \"rope\"\n[mlp]\nd_ff = 24\nactivation = \"silu\"\n",
        std::path::Path::new("t.toml"),
    )
    .unwrap_err()
    .render();
    assert!(
        e.contains("`layer_groups` (2) must divide `layers` (3)"),
        "{e}"
    );
}

/// `embeddings.size`: narrower embedding tables, projected to d_model by
/// `embed.project`; an MLM head maps back to that width so it can reuse the
/// embedding; a tied LM head cannot.
#[test]
fn narrow_embeddings_are_projected_to_d_model() {
    use kiln_compiler::lower::lower;
    let src = |head: &str| {
        format!(
            "name = \"t\"\narchitecture = \"encoder\"\nvocab_size = 32\nd_model = 16\nlayers = 1\n[attention]\nheads = 2\n[positions]\nkind = \"learned\"\n[mlp]\nd_ff = 24\nactivation = \"gelu\"\n[norm]\nplacement = \"post\"\nembedding_norm = true\nfinal_norm = false\n[embeddings]\nsize = 6\n[head]\n{head}\n"
        )
    };
    let rs = spec::load_str(
        &src("kind = \"mlm\"\ntied = true\nbias = true"),
        std::path::Path::new("t.toml"),
    )
    .unwrap_or_else(|e| panic!("{}", e.render()));
    let lowered = lower(&rs).unwrap();
    let g = lowered.encoder.as_ref().unwrap();
    let shapes: std::collections::BTreeMap<String, Vec<usize>> = g
        .parameters()
        .into_iter()
        .filter_map(|p| match &g.node(p).op {
            kiln_compiler::ir::Op::Parameter { name, .. } => Some((
                name.clone(),
                g.node(p)
                    .ty
                    .shape
                    .iter()
                    .map(|d| d.as_const().unwrap())
                    .collect(),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(shapes["embed.tokens"], vec![32, 6]);
    assert_eq!(shapes["embed.positions"], vec![2048, 6]);
    assert_eq!(shapes["embed.norm.weight"], vec![6]);
    assert_eq!(shapes["embed.project.weight"], vec![16, 6]);
    assert_eq!(shapes["head.transform.dense.weight"], vec![6, 16]);
    assert_eq!(shapes["head.transform.norm.weight"], vec![6]);
    let model = kiln_runtime::session::Model::random(lowered, 2).unwrap();
    let out = model.encode(&[3, 4, 5]).unwrap();
    assert_eq!(out["logits"].shape(), &[1, 3, 32]);
    let e = spec::load_str(
        &src("kind = \"lm\"\ntied = true"),
        std::path::Path::new("t.toml"),
    )
    .unwrap_err()
    .render();
    assert!(
        e.contains("a tied `lm` head cannot reuse the embedding"),
        "{e}"
    );
}

/// `norm.attention_norm = false` (per layer, ModernBERT's first) drops the
/// norm in front of attention only; `head.transform_bias = false` drops the
/// MLM transform's bias. Both are checked against wirings they do not fit.
#[test]
fn attention_norm_and_transform_bias_switch_off() {
    use kiln_compiler::lower::lower;
    let src = |extra: &str, head: &str| {
        format!(
            "name = \"t\"\narchitecture = \"encoder\"\nvocab_size = 32\nd_model = 16\nlayers = 2\n[attention]\nheads = 2\n[positions]\nkind = \"learned\"\n[mlp]\nd_ff = 24\nactivation = \"gelu\"\n[head]\n{head}\n{extra}\n"
        )
    };
    let load = |extra: &str, head: &str| {
        spec::load_str(&src(extra, head), std::path::Path::new("t.toml")).map_err(|e| e.render())
    };
    let rs = load(
        "[[layer]]\nselect = \"0\"\nnorm = { attention_norm = false }",
        "kind = \"mlm\"\ntransform_bias = false",
    )
    .unwrap();
    let names = parameter_names(lower(&rs).unwrap().encoder.as_ref().unwrap());
    let has = |n: &str| names.iter().any(|x| x == n);
    assert!(!has("layers.0.attn_norm.weight"), "{names:?}");
    assert!(
        has("layers.0.mlp_norm.weight") && has("layers.1.attn_norm.weight"),
        "{names:?}"
    );
    assert!(
        has("head.transform.dense.weight") && !has("head.transform.dense.bias"),
        "{names:?}"
    );
    let e = load(
        "[norm]\nplacement = \"post\"\nattention_norm = false\nfinal_norm = false",
        "kind = \"none\"\ntied = false",
    )
    .unwrap_err();
    assert!(
        e.contains("`norm.attention_norm = false` needs sequential pre-norm blocks"),
        "{e}"
    );
    let e = load(
        "",
        "kind = \"pooler\"\ntied = false\ntransform_bias = false",
    )
    .unwrap_err();
    assert!(
        e.contains("`head.transform_bias` only applies to the \"mlm\" head"),
        "{e}"
    );
}

#[test]
fn causal_mask_hides_future_tokens() {
    let rs = tiny_decoder("");
    let lowered = kiln_compiler::lower::lower(&rs).unwrap();
    let model = kiln_runtime::session::Model::random(lowered, 3).unwrap();
    let a = model.session().forward(&[1, 2, 3]).unwrap()["logits"].to_f32_vec();
    let b = model.session().forward(&[1, 2, 9]).unwrap()["logits"].to_f32_vec();
    assert_eq!(a[..64], b[..64], "positions 0 and 1 cannot see position 2");
    assert_ne!(a[64..], b[64..]);
}

/// A parallel decoder block of an encoder-decoder model keeps its
/// cross-attention as a third branch (docs/spec.md, "Parallel blocks with
/// cross-attention"): the decoder's logits depend on the source, and only
/// through that branch — with the cross-attention output projections
/// zeroed, they no longer do. With `shared_norm = false` the branch has its
/// own `cross_norm`.
#[test]
fn parallel_decoder_blocks_keep_cross_attention() {
    use kiln_compiler::lower::lower;
    use kiln_runtime::session::Model;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny");
    for shared in [true, false] {
        let toml = format!(
            "extends = \"t5-small.toml\"\nname = \"t5-parallel\"\n[residual]\nparallel = true\nshared_norm = {shared}\n"
        );
        let rs = spec::load_str(&toml, &dir.join("t5-parallel.toml"))
            .unwrap_or_else(|e| panic!("{}", e.render()));
        let lowered = lower(&rs).unwrap();
        let dec = lowered.decoder.as_ref().unwrap();
        let names: Vec<String> = dec
            .parameters()
            .into_iter()
            .filter_map(|p| match &dec.node(p).op {
                kiln_compiler::ir::Op::Parameter { name, .. } => Some(name.clone()),
                _ => None,
            })
            .collect();
        let has = |n: &str| names.iter().any(|x| x == n);
        assert!(has("decoder.layers.0.cross_attn.q.weight"), "{names:?}");
        assert_eq!(
            has("decoder.layers.0.cross_norm.weight"),
            !shared,
            "{names:?}"
        );
        let logits = |model: &Model, source: &[i32]| {
            let mut s = model.session();
            s.set_source(source).unwrap();
            s.forward(&[0, 5, 9]).unwrap()["logits"].to_f32_vec()
        };
        let model = Model::random(lowered.clone(), 3).unwrap();
        let (a, b) = (
            logits(&model, &[4, 5, 6]),
            logits(&model, &[70, 80, 90, 100]),
        );
        let moved = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(
            moved > 1e-3,
            "shared_norm = {shared}: the source does not reach the decoder"
        );
        let mut weights = model.weights.clone();
        for n in names.iter().filter(|n| n.contains(".cross_attn.o.")) {
            let t = weights.get(n).unwrap();
            let zero = Tensor::from_f32(t.shape(), vec![0.0; t.numel()]).unwrap();
            weights.insert(n.as_str(), zero);
        }
        let cut = Model::new(lowered, weights);
        assert_eq!(
            logits(&cut, &[4, 5, 6]),
            logits(&cut, &[70, 80, 90, 100]),
            "shared_norm = {shared}: the source reaches the decoder outside cross-attention"
        );
    }
}

/// A sliding window in an encoder is two-sided (docs/spec.md): query `i`
/// sees keys `j` with `|i - j| < window`. With a window of 2 and 2 layers a
/// position's output depends on exactly its neighbours up to 2 away, on
/// both sides.
#[test]
fn encoder_sliding_windows_are_two_sided() {
    use kiln_compiler::lower::lower;
    use kiln_runtime::session::Model;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny");
    let toml = "extends = \"bert-base-uncased.toml\"\nname = \"bert-local\"\nlayers = 2\n[attention]\nsliding_window = 2\n";
    let rs = spec::load_str(toml, &dir.join("bert-local.toml"))
        .unwrap_or_else(|e| panic!("{}", e.render()));
    let model = Model::random(lower(&rs).unwrap(), 4).unwrap();
    let base = [11, 12, 13, 14, 15, 16, 17];
    let hidden = |tokens: &[i32]| model.encode(tokens).unwrap()["hidden"].to_f32_vec();
    let d = rs.spec.d_model;
    let want = hidden(&base);
    // Which positions' outputs move when token `j` changes.
    let moved = |j: usize| -> Vec<usize> {
        let mut t = base;
        t[j] = 40;
        let got = hidden(&t);
        (0..base.len())
            .filter(|&i| {
                let a = &want[i * d..(i + 1) * d];
                let b = &got[i * d..(i + 1) * d];
                a.iter().zip(b).any(|(x, y)| (x - y).abs() > 1e-6)
            })
            .collect()
    };
    assert_eq!(moved(0), [0, 1, 2]);
    assert_eq!(moved(3), [1, 2, 3, 4, 5]);
    assert_eq!(moved(6), [4, 5, 6]);
    // The fused kernels (the attention kernel's window mask) agree.
    for name in ["jit", "kernel-ir"] {
        let compiled = Model::random(lower(&rs).unwrap(), 4)
            .unwrap()
            .compile_named(name)
            .unwrap();
        let got = compiled.encode(&base).unwrap()["hidden"].to_f32_vec();
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
        for (x, y) in want.iter().zip(&got) {
            assert!((x - y).abs() <= 1e-4 * scale, "{name}: {x} vs {y}");
        }
    }
}

/// Routed experts carry biases when `mlp.bias` does (docs/spec.md: each
/// expert is an `[mlp]`): with every expert chosen and renormalised gates,
/// adding `c` to every expert's down-projection bias moves the MoE output,
/// and so the (pre-norm, un-normed) hidden state, by exactly `c`. The JIT
/// agrees with the interpreter on the biased experts.
#[test]
fn experts_carry_their_biases() {
    use kiln_compiler::lower::lower;
    use kiln_runtime::session::Model;
    let toml = r#"
name = "moe-bias"
architecture = "decoder"
vocab_size = 30
d_model = 8
layers = 1
max_positions = 16
[attention]
heads = 2
[norm]
final_norm = false
[positions]
kind = "rope"
[mlp]
d_ff = 12
activation = "silu"
gated = true
bias = true
[moe]
experts = 3
top_k = 3
[head]
kind = "none"
"#;
    let rs =
        spec::load_str(toml, "moe-bias.toml".as_ref()).unwrap_or_else(|e| panic!("{}", e.render()));
    let lowered = lower(&rs).unwrap();
    let model = Model::random(lowered.clone(), 2).unwrap();
    let name = "layers.0.moe.experts.down.bias";
    assert_eq!(model.weights.get(name).unwrap().shape(), &[3, 8]);
    assert!(model.weights.get("layers.0.moe.experts.up.bias").is_some());
    let hidden = |m: &Model| m.session().forward(&[3, 4, 5]).unwrap()["hidden"].to_f32_vec();
    let base = hidden(&model);
    let mut w = model.weights.clone();
    let t = w.get(name).unwrap();
    let shifted: Vec<f32> = t.to_f32_vec().iter().map(|x| x + 0.5).collect();
    w.insert(name, Tensor::from_f32(t.shape(), shifted).unwrap());
    let moved = hidden(&Model::new(lowered.clone(), w.clone()));
    for (a, b) in base.iter().zip(&moved) {
        assert!((b - a - 0.5).abs() < 1e-5, "{a} -> {b}");
    }
    let jit = Model::new(lowered, w).compile_named("jit").unwrap();
    let got = hidden(&jit);
    for (a, b) in moved.iter().zip(&got) {
        assert!((a - b).abs() <= 1e-4 * (1.0 + a.abs()), "{a} vs jit {b}");
    }
}

/// qk-norm applies to cross-attention's keys as to its queries: with
/// `qk_norm = "full"` the keys (projected from the encoder) are normalised
/// over all their channels, by a `k_norm` the decoder's logits depend on.
/// (They were left unnormalised while the queries were normalised.)
#[test]
fn cross_attention_keys_get_the_full_qk_norm() {
    use kiln_compiler::lower::lower;
    use kiln_runtime::session::Model;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny");
    let toml = "extends = \"t5-small.toml\"\nname = \"t5-qk\"\n[attention]\nqk_norm = \"full\"\n";
    let rs =
        spec::load_str(toml, &dir.join("t5-qk.toml")).unwrap_or_else(|e| panic!("{}", e.render()));
    let lowered = lower(&rs).unwrap();
    let model = Model::random(lowered.clone(), 1).unwrap();
    let name = "decoder.layers.0.cross_attn.k_norm.weight";
    let (kvh, hd) = (
        rs.spec.attention.kv_heads.unwrap(),
        rs.spec.attention.head_dim.unwrap(),
    );
    assert_eq!(
        model.weights.get(name).map(|t| t.shape().to_vec()),
        Some(vec![kvh * hd])
    );
    let logits = |m: &Model| {
        let mut s = m.session();
        s.set_source(&[4, 5, 6]).unwrap();
        s.forward(&[0, 7]).unwrap()["logits"].to_f32_vec()
    };
    let mut w = model.weights.clone();
    let t = w.get(name).unwrap();
    let scaled: Vec<f32> = (0..t.numel()).map(|i| 1.0 + 0.5 * (i % 3) as f32).collect();
    w.insert(name, Tensor::from_f32(t.shape(), scaled).unwrap());
    assert_ne!(logits(&model), logits(&Model::new(lowered, w)));
}
