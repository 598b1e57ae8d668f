//! What only the JIT does, against the oracle: thread splits past its
//! parallel thresholds, expert dispatch, its weight layout, the memory
//! budget it plans. What every backend must do (tiny models, random specs,
//! sessions, threads) is the shared suite in tests/backends.rs.

mod common;

use common::inputs::{Lengths, graph_inputs, max_rel_diff_floored};
use kiln_compiler::compile::{CompileOptions, compile_graph};
use kiln_compiler::ir::{Graph, Part};
use kiln_compiler::lower::lower;
use kiln_compiler::spec;
use kiln_runtime::backends::jit::{Jit, JitGraph};
use kiln_runtime::{Weights, run};

const REL_TOL: f32 = 1e-4;

/// `g` through the compiler and the JIT's code generator, as a model's
/// part would be (weights in their canonical layout).
fn jit_with(g: &Graph, opts: &CompileOptions) -> JitGraph {
    let program = compile_graph(g, opts).unwrap();
    JitGraph::new(program, Default::default()).unwrap()
}

fn jit(g: &Graph) -> JitGraph {
    jit_with(g, &CompileOptions::default())
}

#[test]
fn the_jit_keeps_linear_weights_transposed() {
    use kiln_runtime::session::Model;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny/gpt2.toml");
    let lowered = lower(&spec::load(&path).unwrap()).unwrap();
    let reference = Model::random(lowered, 4).unwrap();
    let before: Vec<(String, Vec<usize>)> = reference
        .weights
        .iter()
        .map(|(n, t)| (n.to_string(), t.shape().to_vec()))
        .collect();
    let want = reference.session().forward(&[1, 2, 3]).unwrap()["logits"].to_f32_vec();
    let jit = reference.compile(&Jit).unwrap();
    // Linear weights are stored [in, out] while on the JIT.
    let o = jit
        .weights
        .get("layers.0.attn.o.weight")
        .unwrap()
        .shape()
        .to_vec();
    let declared = before
        .iter()
        .find(|(n, _)| n == "layers.0.attn.o.weight")
        .unwrap();
    assert_eq!(o, declared.1.iter().rev().copied().collect::<Vec<_>>());
    // Q, K and V are one joined weight (transposed too); the parts are gone.
    let qkv = "layers.0.attn.q.weight+layers.0.attn.k.weight+layers.0.attn.v.weight";
    let d = declared.1[1];
    assert_eq!(jit.weights.get(qkv).unwrap().shape(), &[d, 3 * d]);
    assert!(jit.weights.get("layers.0.attn.q.weight").is_none());
    // The tied embedding is gathered by rows and read by the LM head: it is
    // transposed in place (the gather reads columns), with no second copy.
    let (vocab, d_model) = (256, 64);
    assert_eq!(
        jit.weights.get("embed.tokens").unwrap().shape(),
        &[d_model, vocab]
    );
    assert!(jit.weights.iter().all(|(n, _)| !n.contains("#transposed")));
    let got = jit.session().forward(&[1, 2, 3]).unwrap()["logits"].to_f32_vec();
    let back = jit.compile(kiln_runtime::backends::reference()).unwrap();
    let after: Vec<(String, Vec<usize>)> = back
        .weights
        .iter()
        .map(|(n, t)| (n.to_string(), t.shape().to_vec()))
        .collect();
    assert_eq!(before, after);
    let again = back.session().forward(&[1, 2, 3]).unwrap()["logits"].to_f32_vec();
    assert_eq!(want, again, "the round trip must be exact");
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    for (a, b) in want.iter().zip(&got) {
        assert!((a - b).abs() <= 1e-4 * scale);
    }
}

/// Sizes past the JIT's parallel thresholds, which the tiny models never
/// reach: rows split across threads, Gemm tiles, matrix-vector products
/// split over the weight, a single wide row split by columns (the final
/// logit softcap over a 40000-word vocabulary), odd lengths for vector tails.
#[test]
fn mid_sized_model_takes_every_parallel_path() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny");
    let toml = r#"
extends = "gemma-2-2b.toml"
name = "gemma-2-mid"
vocab_size = 40000
d_model = 192
layers = 2
max_positions = 128

[attention]
heads = 6
kv_heads = 2
head_dim = 32

[mlp]
d_ff = 1536
"#;
    let rs = spec::load_str(toml, &dir.join("gemma-2-mid.toml"))
        .unwrap_or_else(|e| panic!("{}", e.render()));
    let lowered = lower(&rs).unwrap();
    // Four threads whatever the machine, so every split is taken.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(4)
        .build()
        .unwrap();
    pool.install(|| {
        let g = lowered.decoder.as_ref().unwrap();
        let weights = Weights::random(&[g], 21).unwrap();
        let jit = jit(g);
        // Past 64 keys, attention streams over several key blocks (online
        // softmax rescaling) and several query blocks per head.
        for (batch, seq, past) in [(2, 37, 0), (1, 1, 45), (3, 2, 11), (1, 70, 0), (2, 3, 100)] {
            let lens = Lengths {
                batch,
                seq,
                past,
                src: 1,
            };
            let inputs = graph_inputs(&lowered, g, &lens, 5 + seq as u64);
            let want = run(g, &weights, &inputs).unwrap();
            let got = jit.run(&weights, &inputs).unwrap();
            let d = max_rel_diff_floored(&want, &got, &format!("{lens:?}"));
            assert!(d <= REL_TOL, "{lens:?}: outputs differ by {d:e}");
        }
        // Through a compiled model: transposed weights (row-split
        // matrix-vector products) and the tied embedding transposed in
        // place (gathered by columns).
        use kiln_runtime::session::Model;
        let reference = Model::new(lowered.clone(), weights.clone());
        let compiled = Model::new(lowered.clone(), weights).compile(&Jit).unwrap();
        let prompt: Vec<i32> = (0..29).map(|i| i * 1237 % 40000).collect();
        let (mut a, mut b) = (reference.session(), compiled.session());
        let mut steps = vec![prompt.clone()];
        steps.extend([[7], [39_999], [123]].map(|t| t.to_vec()));
        for toks in &steps {
            let (x, y) = (a.forward(toks).unwrap(), b.forward(toks).unwrap());
            let d = max_rel_diff_floored(&x, &y, "session");
            assert!(
                d <= REL_TOL,
                "after {} tokens: outputs differ by {d:e}",
                a.past_len()
            );
        }
    });
}

/// One wide row (batch 1) of an element-wise kernel is split by columns.
#[test]
fn a_single_wide_row_is_split_by_columns() {
    use kiln_compiler::ir::{Builder, DType, UnaryOp};
    let mut g = Graph::new("wide");
    let mut b = Builder::new(&mut g);
    let x = b
        .input("x", DType::F32, kiln_compiler::shape!["batch", 40_000usize])
        .unwrap();
    let y = b.unary(UnaryOp::Tanh, x).unwrap();
    g.set_output("y", y);
    let weights = Weights::new();
    let jit = jit(&g);
    let data: Vec<f32> = (0..40_000).map(|i| (i as f32 - 20_000.0) * 1e-3).collect();
    let x = kiln_runtime::Tensor::from_f32(&[1, 40_000], data).unwrap();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(4)
        .build()
        .unwrap();
    let got = pool.install(|| jit.run(&weights, [("x", &x)]).unwrap());
    let want = run(&g, &weights, [("x", &x)]).unwrap();
    let d = max_rel_diff_floored(&want, &got, "wide row");
    assert!(d <= 1e-6, "differ by {d:e}");
}

/// Mixture of experts: each expert's products run only on the tokens routed
/// to it (top-2 of 4 experts: half the rows), with the dense result.
#[test]
fn experts_run_only_on_their_tokens() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny/mixtral-8x7b.toml");
    let lowered = lower(&spec::load(&path).unwrap()).unwrap();
    let g = lowered.decoder.as_ref().unwrap();
    let weights = Weights::random(&[g], 3).unwrap();
    let lens = Lengths {
        batch: 1,
        seq: 6,
        past: 0,
        src: 1,
    };
    let inputs = graph_inputs(&lowered, g, &lens, 3);
    let dense_opts = CompileOptions {
        disabled_passes: vec!["moe-dispatch".to_string()],
        ..Default::default()
    };
    let dense = jit_with(g, &dense_opts);
    let sparse = jit(g);
    dense.enable_profiling();
    sparse.enable_profiling();
    let want = run(g, &weights, &inputs).unwrap();
    for j in [&dense, &sparse] {
        let got = j.run(&weights, &inputs).unwrap();
        let d = max_rel_diff_floored(&want, &got, "mixtral");
        assert!(d <= REL_TOL, "outputs differ by {d:e}");
    }
    let flops = |j: &JitGraph| j.profile().unwrap().gemm_flops;
    // 2 layers × 3 expert projections (gate, up, down) of 64 × 128; dense
    // runs 4 experts × 6 tokens = 24 rows each, dispatched 6 × top-2 = 12.
    let per_row = 2.0 * 3.0 * 2.0 * 64.0 * 128.0;
    assert_eq!(flops(&dense) - flops(&sparse), 12.0 * per_row);
}

/// A step over the model's memory budget (KV cache after the step plus the
/// JIT's planned activations) is a clear error before anything runs, and
/// leaves the session as it was.
#[test]
fn steps_over_the_memory_budget_are_refused() {
    use kiln_runtime::RuntimeError;
    use kiln_runtime::session::Model;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny/gpt2.toml");
    let lowered = lower(&spec::load(&path).unwrap()).unwrap();
    let mut model = Model::random(lowered, 1).unwrap().compile(&Jit).unwrap();
    // The cache grows with every step, so a budget fits 12 cached positions.
    let budget = model.step_bytes(Part::Decoder, 1, 1, 12, 0).unwrap();
    assert!(model.step_bytes(Part::Decoder, 1, 1, 13, 0).unwrap() > budget);
    assert!(model.step_bytes(Part::Decoder, 1, 1, 0, 0).unwrap() <= budget);
    model.set_memory_budget(Some(budget));
    let mut s = model.session();
    s.forward(&[1]).unwrap();
    while s.past_len() < 13 {
        s.forward(&[5]).unwrap();
    }
    // The cache storage (16 rows at first, doubling) stopped short of
    // the budget instead of doubling past it.
    let held = s.cache_capacity().unwrap();
    assert!((13..16).contains(&held), "{held} rows");
    let e = s.forward(&[6]).unwrap_err();
    assert!(matches!(e, RuntimeError::Limit(_)), "{e:?}");
    assert!(e.to_string().contains("over the memory budget"), "{e}");
    assert_eq!(s.past_len(), 13);
    // A batch too wide for the budget fails the same way, before running.
    let rows: Vec<&[i32]> = vec![&[1, 2, 3, 4]; 64];
    let e = model.session().forward_batch(&rows).unwrap_err();
    assert!(matches!(e, RuntimeError::Limit(_)), "{e:?}");
    // Without a budget both run.
    let mut model = model;
    model.set_memory_budget(None);
    model.session().forward_batch(&rows).unwrap();
}

/// `--precision int8` and `bf16` on every tiny model against the f64
/// interpreter with the f32 weights: the matrices move into Q8_0 / BF16
/// (those whose rows are whole blocks), outputs stay within a normwise
/// bound at decode shapes (row dot products) and prefill shapes (the
/// integer GEMM), and leaving the JIT gives the f32 weights back exactly.
#[test]
fn int8_and_bf16_modes_track_the_interpreter_and_give_the_weights_back() {
    use common::inputs::{max_abs_diff_and_scale, test_lengths};
    use kiln_runtime::Precision;
    use kiln_runtime::session::Model;
    // Normwise: max |Δ| over the output's largest magnitude (measured worst
    // over these models: int8 5.6e-2 (mixtral, whose routing moves), else
    // under 3e-2; bf16 7.8e-3).
    let bounds = [(Precision::Int8, 0.08f32), (Precision::Bf16, 0.015)];
    let mut report = String::new();
    for path in common::tiny_specs() {
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let l = lower(&spec::load(&path).unwrap()).unwrap();
        let graphs: Vec<_> = l.graphs().collect();
        let weights = Weights::random(&graphs, 9).unwrap();
        for (precision, bound) in bounds {
            let model = Model::new(l.clone(), weights.clone())
                .with_precision(precision)
                .compile(&Jit)
                .unwrap_or_else(|e| panic!("{name} {precision}: {e}"));
            let stored = model.weights.stored_bytes();
            assert!(
                !stored.is_empty(),
                "{name} {precision}: nothing was encoded"
            );
            let mut worst = 0.0f32;
            for (part, g) in l.parts() {
                let compiled = model.part(part).unwrap();
                for lens in test_lengths(&l, g) {
                    let inputs = graph_inputs(&l, g, &lens, 3 ^ lens.seq as u64);
                    let want = run(g, &weights, &inputs).unwrap();
                    let pairs: Vec<(&str, &kiln_runtime::Tensor)> =
                        inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
                    let got = compiled.run_host(&model.weights, &pairs).unwrap();
                    for (out, w) in want.iter() {
                        let (d, scale) =
                            max_abs_diff_and_scale(&w.to_f32_vec(), &got[out].to_f32_vec());
                        let rel = d / scale;
                        assert!(
                            rel <= bound,
                            "{name} {precision}: `{out}` of `{}` at {lens:?} off by {rel:e} of its scale",
                            g.name
                        );
                        worst = worst.max(rel);
                    }
                }
            }
            report += &format!("{name} {precision}: worst normwise difference {worst:.2e}\n");
            let back = (model.with_precision(Precision::F32))
                .compile(kiln_runtime::backends::reference())
                .unwrap();
            assert!(!back.weights.has_quantised(), "{name} {precision}");
            for (n, t) in weights.iter() {
                let b = back
                    .weights
                    .get(n)
                    .unwrap_or_else(|| panic!("{name}: `{n}` lost"));
                assert!(
                    b.to_f32_vec() == t.to_f32_vec(),
                    "{name} {precision}: `{n}` changed in the round trip"
                );
            }
        }
    }
    eprintln!("{report}");
}
