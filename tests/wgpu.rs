//! What only the wgpu backend does, against the oracle: f16 weight
//! storage, shared-memory trees instead of subgroup sums, the adapter's
//! binding limits, the shaders' elementary functions, the device-resident
//! cache. What every backend must do (tiny models, random specs, sessions)
//! is the shared suite in tests/backends.rs.
//!
//! Without a wgpu adapter (no GPU, no software Vulkan/GL) every test says
//! it was skipped and passes, unless `KILN_REQUIRE_WGPU=1` (CI), where a
//! missing adapter fails.

mod common;

use common::inputs::{
    Lengths, graph_inputs, max_normwise_diff, max_rel_diff_floored, test_lengths,
};
use common::random_spec::load_random_spec;
use common::sessions::{assert_copies_skipped, decode_alongside};
use common::tiny_specs;
use kiln_compiler::compile::{CompileOptions, compile_graph};
use kiln_compiler::ir::{Graph, Part};
use kiln_compiler::lower::{Lowered, lower};
use kiln_compiler::spec;
use kiln_runtime::backends::jit::Jit;
use kiln_runtime::backends::wgpu::{
    DeviceWeights, Wgpu, WgpuGraph, WgpuOptions, adapter, gpu as gpu_device,
};
use kiln_runtime::{Weights, run};

/// `g` through the compiler and the WGSL generator, with `opts`.
fn gpu_graph(g: &Graph, weights: &Weights, opts: WgpuOptions) -> WgpuGraph {
    let program = compile_graph(g, &CompileOptions::default()).unwrap();
    WgpuGraph::new(program, weights, &mut DeviceWeights::default(), opts)
        .unwrap_or_else(|e| panic!("`{}`: {e}", g.name))
}

const REL_TOL: f32 = 1e-4;

/// Whether an adapter exists; prints why a test is skipped otherwise.
fn have_adapter(test: &str) -> bool {
    match adapter() {
        Ok(name) => {
            eprintln!("{test}: wgpu adapter {name}");
            true
        }
        Err(e) => {
            if std::env::var("KILN_REQUIRE_WGPU").is_ok_and(|v| v == "1") {
                panic!("{test}: KILN_REQUIRE_WGPU=1 but no wgpu adapter: {e}");
            }
            eprintln!(
                "SKIPPED {test}: no wgpu adapter ({e}); set KILN_REQUIRE_WGPU=1 to fail instead"
            );
            false
        }
    }
}

/// How far apart two runs' outputs are.
type Measure = fn(&kiln_runtime::Outputs, &kiln_runtime::Outputs, &str) -> f32;

/// Compile every graph of `l` for the GPU with `opts` and compare with the
/// interpreter at a few lengths, within `tol` by `measure`; returns the
/// worst difference.
fn check_model_with(
    l: &Lowered,
    seed: u64,
    what: &str,
    opts: WgpuOptions,
    measure: Measure,
    tol: f32,
) -> f32 {
    let graphs: Vec<&Graph> = l.graphs().collect();
    let weights = Weights::random(&graphs, seed).unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut worst = 0.0f32;
    for g in l.graphs() {
        let gpu = gpu_graph(g, &weights, opts);
        assert_eq!(gpu.f16_params(), opts.f16_params, "{what}: f16 storage");
        let sub = opts.subgroups && gpu_device().unwrap().has_subgroups();
        assert_eq!(gpu.subgroups(), sub, "{what}: subgroup sums");
        for lens in test_lengths(l, g) {
            let inputs = graph_inputs(l, g, &lens, seed ^ lens.past as u64 ^ lens.seq as u64);
            let at = format!("{what}: graph `{}` at {lens:?}", g.name);
            let want = run(g, &weights, &inputs).unwrap_or_else(|e| panic!("{at}: graph: {e}"));
            let got = gpu
                .run(&inputs)
                .unwrap_or_else(|e| panic!("{at}: wgpu: {e}"));
            let d = measure(&want, &got, &at);
            assert!(d <= tol, "{at}: outputs differ by {d:e} (relative)");
            worst = worst.max(d);
        }
    }
    worst
}

/// With f16 weights (where the adapter has SHADER_F16) every tiny model
/// stays within 1e-2 of the interpreter's f32 outputs (normwise: the
/// largest difference over the largest value of each output), and really
/// differs from them (the weights were rounded).
#[test]
fn tiny_models_with_f16_weights_are_within_1e_2() {
    if !have_adapter("tiny_models_with_f16_weights_are_within_1e_2") {
        return;
    }
    if !gpu_device().unwrap().has_f16() {
        eprintln!(
            "SKIPPED tiny_models_with_f16_weights_are_within_1e_2: the adapter has no SHADER_F16"
        );
        return;
    }
    let f16 = WgpuOptions {
        f16_params: true,
        ..WgpuOptions::default()
    };
    let mut report = String::new();
    for path in tiny_specs() {
        let rs = spec::load(&path).unwrap_or_else(|e| panic!("{}", e.render()));
        let lowered = lower(&rs).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let w = check_model_with(&lowered, 5, &name, f16, max_normwise_diff, 1e-2);
        // f32 shaders stay within 1e-4 (floored per element, so normwise too).
        assert!(w > REL_TOL, "{name}: f16 weights changed nothing ({w:e})");
        report += &format!("{name}: worst relative difference {w:e} (f16 weights)\n");
    }
    eprintln!("{report}");
}

/// A model compiled with f16 weights decodes through its in-place device
/// cache within 1e-2 of the reference; f16 on a CPU backend is a clear
/// error.
#[test]
fn sessions_with_f16_weights() {
    use kiln_runtime::session::Model;
    use kiln_runtime::{Precision, RuntimeError};
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny/llama-2-7b.toml");
    let lowered = lower(&spec::load(&path).unwrap()).unwrap();
    let e = Model::random(lowered.clone(), 3)
        .unwrap()
        .with_precision(Precision::F16)
        .compile(&Jit)
        .err()
        .unwrap();
    assert!(matches!(e, RuntimeError::Unsupported(_)), "{e:?}");
    assert!(e.to_string().contains("--precision f32"), "{e}");
    if !have_adapter("sessions_with_f16_weights") {
        return;
    }
    let reference = Model::random(lowered.clone(), 3).unwrap();
    let gpu = Model::random(lowered, 3)
        .unwrap()
        .with_precision(Precision::F16)
        .compile(&Wgpu)
        .unwrap();
    assert_eq!(gpu.f16_weights(), gpu_device().unwrap().has_f16());
    let (mut r, mut g) = (reference.session(), gpu.session());
    let mut feed = vec![1, 2, 3, 4];
    for step in 0..6 {
        let want = r.forward(&feed).unwrap();
        let got = g.forward(&feed).unwrap();
        let d = max_normwise_diff(&want, &got, "llama f16");
        assert!(d <= 1e-2, "step {step}: logits differ by {d:e}");
        feed = vec![step * 5 + 7];
    }
    assert!(g.cache_on_device());
}

/// Random specs with shared-memory trees for the row sums (the shared
/// suite runs the default, subgroup sums where the adapter has them).
#[test]
fn random_specs_match_the_interpreter_with_trees() {
    if !have_adapter("random_specs_match_the_interpreter_with_trees") {
        return;
    }
    let mut checked = 0;
    for seed in 0..40u64 {
        let Ok(rs) = load_random_spec(seed) else {
            continue;
        };
        let lowered = lower(&rs).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let trees = WgpuOptions {
            subgroups: false,
            ..WgpuOptions::default()
        };
        let what = format!("random spec {seed}");
        check_model_with(&lowered, seed, &what, trees, max_rel_diff_floored, REL_TOL);
        checked += 1;
    }
    assert!(checked >= 24, "only {checked} random specs were accepted");
}

/// Past one key block (64) attention streams with the online softmax;
/// past one 64×64 tile the products use several workgroups per matrix.
#[test]
fn longer_sequences_cross_block_boundaries() {
    if !have_adapter("longer_sequences_cross_block_boundaries") {
        return;
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny");
    let toml = r#"
extends = "gemma-2-2b.toml"
name = "gemma-2-mid"
vocab_size = 300
d_model = 96
layers = 2
max_positions = 256

[attention]
heads = 3
kv_heads = 1
head_dim = 80

[mlp]
d_ff = 200
"#;
    let rs = spec::load_str(toml, &dir.join("gemma-2-mid.toml"))
        .unwrap_or_else(|e| panic!("{}", e.render()));
    let lowered = lower(&rs).unwrap();
    let g = lowered.decoder.as_ref().unwrap();
    let weights = Weights::random(&[g], 21).unwrap();
    let gpu = gpu_graph(g, &weights, WgpuOptions::default());
    for (batch, seq, past) in [(2, 70, 0), (1, 1, 130), (3, 2, 65), (1, 129, 0)] {
        let lens = Lengths {
            batch,
            seq,
            past,
            src: 1,
        };
        let inputs = graph_inputs(&lowered, g, &lens, 5 + seq as u64);
        let want = run(g, &weights, &inputs).unwrap();
        let got = gpu.run(&inputs).unwrap();
        let d = max_rel_diff_floored(&want, &got, &format!("{lens:?}"));
        assert!(d <= REL_TOL, "{lens:?}: outputs differ by {d:e}");
    }
}

/// A tensor larger than the adapter's largest storage binding is an error
/// naming it, raised before anything is allocated.
#[test]
fn oversized_tensors_are_rejected_by_name() {
    use kiln_compiler::ir::{BinaryOp, Builder, DType};
    use kiln_compiler::shape;
    if !have_adapter("oversized_tensors_are_rejected_by_name") {
        return;
    }
    let mut g = Graph::new("outer");
    let mut b = Builder::new(&mut g);
    let x = b.input("x", DType::F32, shape!["seq", 1usize]).unwrap();
    let y = b.input("y", DType::F32, shape![1usize, "seq"]).unwrap();
    let p = b.binary(BinaryOp::Mul, x, y).unwrap();
    g.set_output("product", p);
    let gpu = gpu_graph(&g, &Weights::new(), WgpuOptions::default());
    let limit = gpu.gpu().max_binding_bytes();
    // Small: computed.
    let t = |shape: &[usize], v: Vec<f32>| kiln_runtime::Tensor::from_f32(shape, v).unwrap();
    let out = gpu
        .run([
            ("x", t(&[3, 1], vec![1., 2., 3.])),
            ("y", t(&[1, 3], vec![1., 10., 100.])),
        ])
        .unwrap();
    assert_eq!(
        out["product"].to_f32_vec(),
        vec![1., 10., 100., 2., 20., 200., 3., 30., 300.]
    );
    // seq² floats just past the limit.
    let seq = ((limit / 4) as f64).sqrt() as usize + 1;
    let e = gpu
        .run([
            ("x", t(&[seq, 1], vec![1.0; seq])),
            ("y", t(&[1, seq], vec![1.0; seq])),
        ])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("output `product`") && e.contains("max_storage_buffer_binding_size"),
        "{e}"
    );
}

/// `kiln compile --emit wgsl` prints a shader per kernel.
#[test]
fn cli_emits_wgsl() {
    let spec = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny/gpt2.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["compile", spec.to_str().unwrap(), "--emit", "wgsl"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("// program \"gpt2-tiny.decoder\""), "{text}");
    assert!(text.matches("@compute @workgroup_size(").count() >= 30);
    assert!(!text.contains("f16"), "f32 shaders mention f16");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["compile", spec.to_str().unwrap(), "--emit", "wgsl"])
        .args(["--precision", "f16"])
        .output()
        .unwrap();
    let half = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(half.contains("enable f16;") && half.contains("array<f16>"));
    assert!(half.contains(" f16\n"), "binding headers name f16 weights");
}

/// The shaders' elementary functions against the IR's numeric contract
/// (`ir::scalar`, f64 rounded once) on dense grids, on the device:
/// ≤ 1e-6 relative, with an absolute floor of 1e-7 where the result
/// crosses zero (`sin`, `cos`, `log` near 1, `erf`/`tanh` near 0 are
/// relative anyway).
#[test]
fn elementary_functions_are_accurate_on_the_device() {
    use kiln_compiler::ir::{BinaryOp, Builder, DType, UnaryOp, scalar};
    use kiln_compiler::shape;
    if !have_adapter("elementary_functions_are_accurate_on_the_device") {
        return;
    }
    let grid = |lo: f32, hi: f32, n: usize| -> Vec<f32> {
        (0..n)
            .map(|i| lo + (hi - lo) * i as f32 / (n - 1) as f32)
            .collect()
    };
    let logspace = |lo: f32, hi: f32, n: usize| -> Vec<f32> {
        grid(lo, hi, n).into_iter().map(|e| 10f32.powf(e)).collect()
    };
    let cases: Vec<(UnaryOp, Vec<f32>, f32)> = vec![
        (UnaryOp::Exp, grid(-87.0, 88.0, 20_001), 0.0),
        (UnaryOp::Log, logspace(-37.0, 38.0, 20_001), 1e-1),
        (UnaryOp::Log, grid(0.5, 2.0, 20_001), 1e-1),
        (UnaryOp::Tanh, grid(-12.0, 12.0, 20_001), 0.0),
        (UnaryOp::Erf, grid(-7.0, 7.0, 20_001), 0.0),
        (UnaryOp::Sin, grid(-200.0, 200.0, 40_001), 1e-1),
        (UnaryOp::Cos, grid(-200.0, 200.0, 40_001), 1e-1),
        (UnaryOp::Sqrt, logspace(-30.0, 30.0, 4_001), 0.0),
        (UnaryOp::Rsqrt, logspace(-30.0, 30.0, 4_001), 0.0),
    ];
    let mut report = String::new();
    for (op, xs, floor) in cases {
        let mut g = Graph::new("unary");
        let mut b = Builder::new(&mut g);
        let x = b.input("x", DType::F32, shape!["seq"]).unwrap();
        let y = b.unary(op, x).unwrap();
        g.set_output("y", y);
        let gpu = gpu_graph(&g, &Weights::new(), WgpuOptions::default());
        let t = kiln_runtime::Tensor::from_f32(&[xs.len()], xs.clone()).unwrap();
        let got = gpu.run([("x", t)]).unwrap()["y"].to_f32_vec();
        let f = scalar::f32_unary(op).unwrap();
        let mut worst = (0.0f32, 0.0f32, 0.0f32, 0.0f32);
        for (&x, &v) in xs.iter().zip(&got) {
            let want = f(x);
            if want == v || (want.is_nan() && v.is_nan()) {
                continue;
            }
            // Results below the smallest normal flush to zero.
            if want.abs() < f32::MIN_POSITIVE && v == 0.0 {
                continue;
            }
            let e = (want - v).abs() / want.abs().max(floor);
            if e > worst.0 {
                worst = (e, x, v, want);
            }
        }
        report += &format!("{op:?}: worst {:e} at x = {}\n", worst.0, worst.1);
        assert!(
            worst.0 <= 1e-6,
            "{op:?}: error {:e} at x = {:e}: {:e} on the device, {:e} wanted",
            worst.0,
            worst.1,
            worst.2,
            worst.3
        );
    }
    // pow: positive bases with any exponent; negative bases with integers.
    let mut xs = Vec::new();
    let mut ys = Vec::new();
    for y in [
        -2.5f32, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.7, 2.0, 3.0, 7.0, 0.333,
    ] {
        for x in logspace(-3.0, 3.0, 801) {
            xs.push(x);
            ys.push(y);
            if y.fract() == 0.0 {
                xs.push(-x);
                ys.push(y);
            }
        }
    }
    let mut g = Graph::new("pow");
    let mut b = Builder::new(&mut g);
    let x = b.input("x", DType::F32, shape!["seq"]).unwrap();
    let y = b.input("y", DType::F32, shape!["seq"]).unwrap();
    let p = b.binary(BinaryOp::Pow, x, y).unwrap();
    g.set_output("p", p);
    let gpu = gpu_graph(&g, &Weights::new(), WgpuOptions::default());
    let n = xs.len();
    let tx = kiln_runtime::Tensor::from_f32(&[n], xs.clone()).unwrap();
    let ty = kiln_runtime::Tensor::from_f32(&[n], ys.clone()).unwrap();
    let got = gpu.run([("x", tx), ("y", ty)]).unwrap()["p"].to_f32_vec();
    let f = scalar::f32_binary(BinaryOp::Pow).unwrap();
    let mut worst = 0.0f32;
    for i in 0..n {
        let want = f(xs[i], ys[i]);
        if want == got[i] || !want.is_finite() || want.abs() < f32::MIN_POSITIVE {
            continue;
        }
        let e = (want - got[i]).abs() / want.abs();
        // Integer and half-integer exponents multiply; others go through
        // exp(y·ln x), whose product rounds (6e-8 relative of y·ln x).
        let bound = if (2.0 * ys[i]).fract() == 0.0 {
            1e-6
        } else {
            1e-6 + 6e-8 * (ys[i] * xs[i].abs().ln()).abs()
        };
        assert!(
            e <= bound,
            "pow({}, {}) = {} on the device, {want} wanted",
            xs[i],
            ys[i],
            got[i]
        );
        worst = worst.max(e);
    }
    eprintln!("{report}Pow: worst {worst:e}");
}

/// Decode steps append to the device cache in place and the cache (and
/// an encoder-decoder's cross K/V) stays on the device throughout; GPU
/// timestamps time every kernel the steps dispatched.
#[test]
fn the_cache_stays_on_the_device() {
    use kiln_runtime::session::Model;
    if !have_adapter("the_cache_stays_on_the_device") {
        return;
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny");
    for name in ["gpt2", "t5-small", "mixtral-8x7b"] {
        let what = name.to_string();
        let lowered = lower(&spec::load(dir.join(format!("{name}.toml"))).unwrap()).unwrap();
        let reference = Model::random(lowered.clone(), 5).unwrap();
        let gpu = Model::random(lowered, 5).unwrap().compile(&Wgpu).unwrap();
        let decoder = gpu.part_as::<WgpuGraph>(Part::Decoder).unwrap();
        assert!(
            !decoder.appendable().is_empty(),
            "{what}: no appendable cache"
        );
        gpu.enable_profiling(Part::Decoder);
        let on_device = |s: &kiln_runtime::session::Session| {
            assert!(s.cache_on_device(), "{what}: cache left the device");
        };
        let g = decode_alongside(&what, &reference, &gpu, REL_TOL, &on_device);
        assert_eq!(g.cache_capacity(), Some(64), "{what}");
        if gpu_device().unwrap().has_timestamps() {
            let profile = gpu.profile(Part::Decoder).unwrap();
            let program = gpu.program(Part::Decoder).unwrap();
            assert_eq!(profile.runs, 36, "{what}");
            assert_copies_skipped(&what, &profile, program);
            assert!(profile.gemm_flops > 0.0, "{what}");
        }
        gpu.disable_profiling(Part::Decoder);
        assert!(
            gpu.profile(Part::Decoder).is_none(),
            "{what}: still profiling"
        );
    }
}
