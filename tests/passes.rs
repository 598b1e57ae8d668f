//! Graph passes against the oracle: every tiny model and a batch of random
//! specs give the same outputs (to 1e-5 relative; in practice bit for bit)
//! from the reference interpreter before and after the level-1 pipeline,
//! with fewer nodes after. Plus exactness of constant folding op by op, and
//! snapshots of the optimised tiny Llama and T5 graphs.

mod common;

use common::inputs::{Lengths, graph_inputs, max_rel_diff, uses_symbol};
use common::random_spec::{load_random_spec, random_spec_toml};
use common::tiny_specs;
use kiln_compiler::ir::{BinaryOp, Builder, DType, Graph, Op, ReduceOp, TensorType, UnaryOp};
use kiln_compiler::lower::{Lowered, lower};
use kiln_compiler::passes::{ConstFold, Pipeline, Report, default_pipeline, verify};
use kiln_compiler::spec;
use kiln_runtime::{Weights, run};
use std::path::Path;

const REL_TOL: f32 = 1e-5;

/// The level-1 pipeline, verifying after every pass even in release builds.
fn optimise(l: &Lowered) -> (Lowered, Vec<Report>) {
    let mut opt = l.clone();
    let reports = default_pipeline(1)
        .verify_each(true)
        .run_lowered(&mut opt)
        .unwrap_or_else(|e| panic!("{}: {e}", l.name));
    (opt, reports)
}

/// Run every graph of `before` and `after` on the same weights and inputs
/// (decoders with an empty and a non-empty cache) and compare. Returns the
/// worst relative difference seen.
fn assert_equivalent(before: &Lowered, after: &Lowered, seed: u64, what: &str) -> f32 {
    let graphs: Vec<&Graph> = before.graphs().collect();
    let weights = Weights::random(&graphs, seed).unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut worst = 0.0f32;
    for (g0, g1) in before.graphs().zip(after.graphs()) {
        let pasts: &[usize] = if uses_symbol(g0, "past") {
            &[0, 2]
        } else {
            &[0]
        };
        for &past in pasts {
            let lens = Lengths {
                batch: 2,
                seq: 3,
                past,
                src: 4,
            };
            let inputs = graph_inputs(before, g0, &lens, seed ^ past as u64);
            let at = format!("{what}: graph `{}` with past = {past}", g0.name);
            let a = run(g0, &weights, &inputs).unwrap_or_else(|e| panic!("{at}: unoptimised: {e}"));
            let b = run(g1, &weights, &inputs).unwrap_or_else(|e| panic!("{at}: optimised: {e}"));
            let d = max_rel_diff(&a, &b, &at);
            assert!(d <= REL_TOL, "{at}: outputs differ by {d} (relative)");
            worst = worst.max(d);
        }
    }
    worst
}

#[test]
fn tiny_models_keep_their_outputs_and_shrink() {
    let mut worst = 0.0f32;
    let mut table =
        String::from("| model | graph | nodes before | after | removed |\n|---|---|---|---|---|\n");
    for path in tiny_specs() {
        let rs = spec::load(&path).unwrap_or_else(|e| panic!("{}", e.render()));
        let lowered = lower(&rs).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let (opt, reports) = optimise(&lowered);
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        for r in &reports {
            assert!(r.converged, "{name}: {r}");
            assert!(
                r.nodes_after < r.nodes_before,
                "{name}: the pipeline removed nothing from {r}"
            );
            let removed = r.nodes_before - r.nodes_after;
            table += &format!(
                "| {name} | {} | {} | {} | {removed} ({:.0}%) |\n",
                r.graph.rsplit('.').next().unwrap_or(&r.graph),
                r.nodes_before,
                r.nodes_after,
                100.0 * removed as f64 / r.nodes_before as f64
            );
        }
        worst = worst.max(assert_equivalent(&lowered, &opt, 11, &name));
    }
    eprintln!("{table}\nworst relative difference: {worst}");
}

#[test]
fn optimising_twice_changes_nothing() {
    for path in tiny_specs() {
        let rs = spec::load(&path).unwrap();
        let (mut opt, _) = optimise(&lower(&rs).unwrap());
        let reports = default_pipeline(1)
            .verify_each(true)
            .run_lowered(&mut opt)
            .unwrap();
        for r in reports {
            assert_eq!(r.rounds, 1, "{}: {r}", path.display());
            assert_eq!(r.nodes_before, r.nodes_after, "{}: {r}", path.display());
        }
    }
}

#[test]
fn each_pass_alone_keeps_outputs() {
    // Every pass on its own (the others disabled) is also a valid pipeline:
    // that is what bisecting with --disable-pass relies on.
    for model in [
        "mixtral-8x7b",
        "t5-small",
        "gemma-2-2b",
        "bert-base-uncased",
    ] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("models/tiny/{model}.toml"));
        let lowered = lower(&spec::load(&path).unwrap()).unwrap();
        for keep in kiln_compiler::passes::PASS_NAMES {
            let mut p = default_pipeline(1).verify_each(true);
            for other in kiln_compiler::passes::PASS_NAMES {
                if other != keep {
                    p.disable(other).unwrap();
                }
            }
            let mut opt = lowered.clone();
            p.run_lowered(&mut opt).unwrap();
            assert_equivalent(&lowered, &opt, 5, &format!("{model} with only `{keep}`"));
        }
    }
}

#[test]
fn random_specs_keep_their_outputs() {
    const CASES: u64 = 200;
    let (mut accepted, mut rejected) = (0, Vec::new());
    let (mut before, mut after) = (0usize, 0usize);
    let mut worst = 0.0f32;
    for seed in 0..CASES {
        let toml = random_spec_toml(seed);
        let rs = match load_random_spec(seed) {
            Ok(rs) => rs,
            Err(e) => {
                rejected.push(format!("seed {seed}: {}", e.message));
                continue;
            }
        };
        accepted += 1;
        let lowered =
            lower(&rs).unwrap_or_else(|e| panic!("seed {seed}: lowering failed: {e}\n{toml}"));
        let mut opt = lowered.clone();
        let reports = default_pipeline(1)
            .verify_each(true)
            .run_lowered(&mut opt)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}\n{toml}"));
        for r in &reports {
            assert!(r.converged, "seed {seed}: {r}\n{toml}");
            before += r.nodes_before;
            after += r.nodes_after;
        }
        let what = format!("seed {seed}\n{toml}\n");
        worst = worst.max(assert_equivalent(&lowered, &opt, seed, &what));
    }
    eprintln!(
        "random specs: {accepted}/{CASES} accepted; {before} -> {after} nodes; \
         worst relative difference {worst}; rejected:\n  {}",
        rejected.join("\n  ")
    );
    assert!(
        accepted * 10 >= CASES as usize * 7,
        "only {accepted} of {CASES} random specs were valid:\n  {}",
        rejected.join("\n  ")
    );
}

#[test]
fn random_specs_are_deterministic_and_varied() {
    assert_eq!(random_spec_toml(3), random_spec_toml(3));
    let texts: std::collections::BTreeSet<String> = (0..20).map(random_spec_toml).collect();
    assert_eq!(texts.len(), 20);
    // Over a few hundred seeds every family of knobs shows up.
    let all: String = (0..300).map(random_spec_toml).collect();
    for needle in [
        "\"encoder\"",
        "\"decoder\"",
        "\"encoder-decoder\"",
        "rmsnorm",
        "weight_offset",
        "\"sandwich\"",
        "\"post\"",
        "affine = false",
        "parallel = true",
        "shared_norm = false",
        "kv_heads = 1",
        "head_dim",
        "qk_norm = \"per-head\"",
        "qk_norm = \"full\"",
        "softcap",
        "sliding_window",
        "\"learned\"",
        "offset = 2",
        "\"sinusoidal\"",
        "\"alibi\"",
        "\"relative\"",
        "kind = \"none\"",
        "\"interleaved\"",
        "fraction",
        "\"linear\"",
        "\"llama3\"",
        "\"yarn\"",
        "\"gelu-tanh\"",
        "gated = true",
        "[moe]",
        "renormalize = false",
        "shared_expert",
        "layers = ",
        "\"sqrt-d-model\"",
        "token_types",
        "\"mlm\"",
        "\"pooler\"",
        "\"mean-pool\"",
        "normalize = true",
        "tied = false",
        "input_scale",
        "[[layer]]",
        "stack = ",
    ] {
        assert!(all.contains(needle), "no random spec sets {needle}");
    }
}

/// Constant folding must reproduce the interpreter bit for bit: fold a graph
/// of constant ops and compare with the interpreter's values of the unfolded one.
#[test]
fn constant_folding_is_exact() {
    let vals = vec![
        0.0, -0.0, 1.0, -1.5, 0.3, 1e-3, 100.0, -7.25, 2.5, 1e30, -1e-30, 0.5,
    ];
    let n = vals.len();
    let mut g = Graph::new("consts");
    let mut b = Builder::new(&mut g);
    let x = b.literal(vals.clone(), &[n]).unwrap();
    let y = b
        .literal(vals.iter().rev().copied().collect(), &[n])
        .unwrap();
    let s = b.scalar(0.1).unwrap();
    let mut outs = Vec::new();
    use UnaryOp::*;
    for u in [
        Neg, Exp, Log, Sqrt, Rsqrt, Recip, Tanh, Sin, Cos, Abs, Floor,
    ] {
        outs.push((format!("{u:?}"), b.unary(u, x).unwrap()));
    }
    use BinaryOp::*;
    for op in [Add, Sub, Mul, Div, Max, Min, Pow, Lt, Le, Eq] {
        outs.push((format!("{op:?}"), b.binary(op, x, y).unwrap()));
        outs.push((format!("{op:?}-scalar"), b.binary(op, s, x).unwrap()));
    }
    let m = b.reshape(x, kiln_compiler::shape![3usize, 4usize]).unwrap();
    for axes in [vec![0], vec![1], vec![0, 1]] {
        for op in [ReduceOp::Sum, ReduceOp::Max] {
            outs.push((format!("{op:?}{axes:?}"), b.reduce(op, m, &axes).unwrap()));
        }
    }
    // i32 results beyond 2^24 cannot be stored in a literal (unit-tested in
    // the pass), so the i32 ops get small operands.
    let small = b
        .literal(vec![3.7, -2.2, 0.0, 9.9, -8.5, 1.0], &[6])
        .unwrap();
    let xi = b.cast(small, DType::I32).unwrap();
    let rev = b
        .literal(vec![-5.0, 4.0, 2.0, -1.0, 3.0, 6.0], &[6])
        .unwrap();
    let yi = b.cast(rev, DType::I32).unwrap();
    outs.push(("cast-i32".into(), xi));
    outs.push(("cast-bool".into(), b.cast(x, DType::Bool).unwrap()));
    for op in [Add, Sub, Mul, Max, Min, Lt, Eq] {
        outs.push((format!("i32-{op:?}"), b.binary(op, xi, yi).unwrap()));
    }
    let seven = b.scalar_i32(7).unwrap();
    outs.push(("i32-div".into(), b.div(xi, seven).unwrap()));
    outs.push(("i32-neg".into(), b.unary(Neg, xi).unwrap()));
    let c = b.binary(Lt, x, y).unwrap();
    outs.push(("select".into(), b.select(c, x, s).unwrap()));
    let t = b.permute(m, &[1, 0]).unwrap();
    outs.push(("permute".into(), t));
    outs.push((
        "slice".into(),
        b.slice(
            t,
            0,
            kiln_compiler::ir::Dim::c(1),
            kiln_compiler::ir::Dim::c(3),
        )
        .unwrap(),
    ));
    outs.push(("concat".into(), b.concat(&[m, m], 0).unwrap()));
    let idx = b
        .add(
            Op::Literal(vec![2.0, 0.0, 1.0, 2.0]),
            &[],
            Some(TensorType::new(DType::I32, kiln_compiler::shape![4usize])),
        )
        .unwrap();
    outs.push(("gather".into(), b.gather(m, idx, 0).unwrap()));
    let io = b
        .iota(DType::I32, kiln_compiler::shape![2usize, 3usize], 1)
        .unwrap();
    outs.push(("iota-f".into(), b.cast(io, DType::F32).unwrap()));
    for (name, id) in &outs {
        g.set_output(name.clone(), *id);
    }
    let mut folded = g.clone();
    Pipeline::new()
        .with(ConstFold::default())
        .verify_each(true)
        .run(&mut folded)
        .unwrap();
    for (name, id) in &folded.outputs {
        assert!(
            matches!(folded.node(*id).op, Op::Scalar(_) | Op::Literal(_)),
            "`{name}` was not folded: {}",
            folded.node(*id).op
        );
    }
    verify(&folded).unwrap();
    let w = Weights::new();
    let none: [(&str, kiln_runtime::Tensor); 0] = [];
    let a = run(&g, &w, none.clone()).unwrap();
    let f = run(&folded, &w, none).unwrap();
    for ((name, p), (_, q)) in a.iter().zip(f.iter()) {
        assert_eq!(p.dtype(), q.dtype(), "{name}");
        assert_eq!(p.shape(), q.shape(), "{name}");
        let bits = |t: &kiln_runtime::Tensor| -> Vec<u32> {
            t.to_f32_vec().iter().map(|v| v.to_bits()).collect()
        };
        assert_eq!(bits(p), bits(q), "`{name}` folds to different bits");
    }
}

#[test]
fn optimised_graph_snapshots() {
    for model in ["llama-2-7b", "t5-small"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("models/tiny/{model}.toml"));
        let (opt, _) = optimise(&lower(&spec::load(&path).unwrap()).unwrap());
        let text: String = opt.graphs().map(kiln_compiler::ir::to_text).collect();
        insta::assert_snapshot!(format!("optimised__{model}"), text);
    }
}

#[test]
fn cli_opt_level_and_disable_pass() {
    let kiln = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("run kiln")
    };
    let text = |o: std::process::Output| {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let spec = "models/tiny/t5-small.toml";
    let lowered = lower(&spec::load(spec).unwrap()).unwrap();
    let plain: String = lowered.graphs().map(kiln_compiler::ir::to_text).collect();
    let (opt, _) = optimise(&lowered);
    let optimised: String = opt.graphs().map(kiln_compiler::ir::to_text).collect();

    assert_eq!(text(kiln(&["compile", spec, "--opt-level", "0"])), plain);
    assert_eq!(text(kiln(&["compile", spec])), optimised);
    assert_eq!(
        text(kiln(&["compile", spec, "--opt-level", "1"])),
        optimised
    );
    // Level 0 accepts (and ignores) real pass names.
    assert_eq!(
        text(kiln(&[
            "compile",
            spec,
            "--opt-level",
            "0",
            "--disable-pass",
            "cse"
        ])),
        plain
    );
    // Without CSE only a few rewrites remain; without every pass, nothing changes.
    let no_cse = text(kiln(&["compile", spec, "--disable-pass", "cse"]));
    assert_ne!(no_cse, optimised);
    let mut all_off = vec!["compile", spec];
    for p in kiln_compiler::passes::PASS_NAMES {
        all_off.extend(["--disable-pass", p]);
    }
    assert_eq!(text(kiln(&all_off)), plain);
    let dot = text(kiln(&[
        "compile",
        spec,
        "--emit",
        "dot",
        "--opt-level",
        "0",
    ]));
    assert_eq!(dot.matches("digraph").count(), 2);

    let bad = kiln(&["compile", spec, "--disable-pass", "csee"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("unknown pass `csee`")
            && err.contains("simplify, const-fold, cse, merge-projections, dce"),
        "{err}"
    );
}

#[test]
fn cli_disables_kernel_rewrites_by_name() {
    let kiln = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("run kiln")
    };
    let text = |o: std::process::Output| {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let spec = "models/tiny/mixtral-8x7b.toml";
    let all = text(kiln(&["compile", spec, "--emit", "kernels"]));
    assert!(all.contains(" attention ") && all.contains("rows where"));
    let no_attn = text(kiln(&[
        "compile",
        spec,
        "--emit",
        "kernels",
        "--disable-pass",
        "attention",
    ]));
    assert!(!no_attn.contains(" attention ") && no_attn.contains("rows where"));
    let no_moe = text(kiln(&[
        "compile",
        spec,
        "--emit",
        "kernels",
        "--disable-pass",
        "moe-dispatch",
    ]));
    assert!(no_moe.contains(" attention ") && !no_moe.contains("rows where"));
    let bad = kiln(&["compile", spec, "--disable-pass", "atention"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("kernel rewrites are attention, write-through, moe-dispatch")
            && err.contains("graph passes are simplify, const-fold"),
        "{err}"
    );
}
