//! Kernel IR against the oracle: every tiny model (and a batch of random
//! specs), lowered, optimised by the level-1 pipeline and fused, gives the
//! same outputs on the kernel-IR interpreter as the optimised graph on the
//! reference interpreter (1e-5 relative), prefill and decode; fusion leaves
//! far fewer materialised values than graph nodes; the memory planner's
//! arena is smaller than holding every temporary; every attention becomes
//! one streaming kernel; each kernel rewrite can be switched off. Plus
//! snapshots of the kernel text of every tiny model.

mod common;

use common::inputs::{Lengths, graph_inputs, uses_symbol};
use common::random_spec::load_random_spec;
use common::tiny_specs;
use kiln_compiler::ir::{Graph, ReduceOp};
use kiln_compiler::kernel::kinds;
use kiln_compiler::kernel::rewrite::REWRITE_NAMES;
use kiln_compiler::kernel::{FuseOptions, Kernel, KernelProgram, fuse, fuse_with};
use kiln_compiler::lower::{Lowered, lower};
use kiln_compiler::passes::default_pipeline;
use kiln_compiler::spec;
use kiln_runtime::backends::kernel_ir::{KernelOutputs, run_program};
use kiln_runtime::{Outputs, Weights, run};
use std::collections::BTreeMap;
use std::path::Path;

const REL_TOL: f32 = 1e-5;

fn optimised(l: &Lowered) -> Lowered {
    let mut opt = l.clone();
    default_pipeline(1)
        .run_lowered(&mut opt)
        .unwrap_or_else(|e| panic!("{}: {e}", l.name));
    opt
}

fn rel_diff(a: &Outputs, b: &KernelOutputs, what: &str) -> f32 {
    let na: Vec<&str> = a.iter().map(|(n, _)| n).collect();
    let nb: Vec<&str> = b.iter().map(|(n, _)| n).collect();
    assert_eq!(na, nb, "{what}: output names differ");
    let mut worst = 0.0f32;
    for ((name, x), (_, y)) in a.iter().zip(b.iter()) {
        assert_eq!(x.dtype(), y.dtype(), "{what}: `{name}` dtype");
        assert_eq!(x.shape(), y.shape(), "{what}: `{name}` shape");
        for (p, q) in x.to_f32_vec().into_iter().zip(y.to_f32_vec()) {
            if p == q || (p.is_nan() && q.is_nan()) {
                continue;
            }
            let rel = (p - q).abs() / p.abs().max(q.abs());
            worst = worst.max(if rel.is_nan() { f32::INFINITY } else { rel });
        }
    }
    worst
}

struct Checked {
    kernels: usize,
    nodes: usize,
    peak: usize,
    unplanned: usize,
    worst: f32,
}

/// Fuse every graph of `opt`, run it next to the graph interpreter (prefill
/// and, for decoders, decode with a cache) and compare.
fn check_model(opt: &Lowered, seed: u64, what: &str) -> Vec<(String, Checked)> {
    check_model_with(opt, seed, what, &FuseOptions::default())
}

fn check_model_with(
    opt: &Lowered,
    seed: u64,
    what: &str,
    fo: &FuseOptions,
) -> Vec<(String, Checked)> {
    let graphs: Vec<&Graph> = opt.graphs().collect();
    let weights = Weights::random(&graphs, seed).unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut out = Vec::new();
    for g in opt.graphs() {
        let p: KernelProgram = fuse_with(g, fo).unwrap_or_else(|e| panic!("{what}: {e}"));
        let pasts: &[usize] = if uses_symbol(g, "past") {
            &[0, 2]
        } else {
            &[0]
        };
        let mut worst = 0.0f32;
        for &past in pasts {
            let lens = Lengths {
                batch: 2,
                seq: 3,
                past,
                src: 4,
            };
            let inputs = graph_inputs(opt, g, &lens, seed ^ past as u64);
            let at = format!("{what}: graph `{}` with past = {past}", g.name);
            let a = run(g, &weights, &inputs).unwrap_or_else(|e| panic!("{at}: graph: {e}"));
            let b = run_program(&p, &weights, &inputs)
                .unwrap_or_else(|e| panic!("{at}: kernels: {e}\n{}", p.to_text()));
            let d = rel_diff(&a, &b, &at);
            assert!(d <= REL_TOL, "{at}: outputs differ by {d} (relative)");
            worst = worst.max(d);
        }
        let lengths: BTreeMap<String, usize> =
            [("batch", 1), ("seq", 128), ("past", 0), ("src", 128)]
                .into_iter()
                .map(|(s, v)| (s.to_string(), v))
                .collect();
        out.push((
            g.name.clone(),
            Checked {
                kernels: p.kernels.len(),
                nodes: g.node_count(),
                peak: p.peak_bytes(&lengths),
                unplanned: p.unplanned_bytes(&lengths),
                worst,
            },
        ));
    }
    out
}

#[test]
fn tiny_models_match_the_graph_interpreter() {
    let mut table = String::from(
        "| graph | nodes | kernels | peak bytes (b=1, seq=128) | without reuse | worst rel |\n|---|---|---|---|---|---|\n",
    );
    for path in tiny_specs() {
        let rs = spec::load(&path).unwrap_or_else(|e| panic!("{}", e.render()));
        let lowered = lower(&rs).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let opt = optimised(&lowered);
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        for (g, c) in check_model(&opt, 11, &name) {
            assert!(
                c.kernels * 3 <= c.nodes,
                "{g}: {} kernels for {} graph nodes: fusion should leave at most a third",
                c.kernels,
                c.nodes
            );
            assert!(c.peak <= c.unplanned, "{g}: planner made things worse");
            table += &format!(
                "| {g} | {} | {} | {} | {} | {:e} |\n",
                c.nodes, c.kernels, c.peak, c.unplanned, c.worst
            );
        }
    }
    eprintln!("{table}");
}

#[test]
fn random_specs_match_the_graph_interpreter() {
    for seed in 0..12u64 {
        let rs = match load_random_spec(seed) {
            Ok(rs) => rs,
            Err(e) => panic!("seed {seed}: {e:?}"),
        };
        let lowered = lower(&rs).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let opt = optimised(&lowered);
        check_model(&opt, seed, &format!("random spec {seed}"));
    }
}

#[test]
fn unoptimised_graphs_fuse_too() {
    // Fusion does not rely on the passes: level 0 graphs fuse and match.
    for model in ["gpt2", "t5-small", "mixtral-8x7b"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("models/tiny/{model}.toml"));
        let lowered = lower(&spec::load(&path).unwrap()).unwrap();
        check_model(&lowered, 3, model);
    }
}

fn kernel_text(model: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("models/tiny/{model}.toml"));
    let opt = optimised(&lower(&spec::load(&path).unwrap()).unwrap());
    opt.graphs()
        .map(|g| fuse(g).unwrap().to_text())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The kernel text of every shipped model's tiny variant, so a reviewer
/// sees exactly which kernels a spec becomes.
#[test]
fn snapshot_kernels_of_every_tiny_model() {
    for path in tiny_specs() {
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        insta::assert_snapshot!(format!("tiny_{name}_kernels"), kernel_text(&name));
    }
}

/// Count attention kernels, and softmax row reductions feeding a product
/// (attention left unfused).
fn attention_shapes(p: &KernelProgram) -> (usize, usize) {
    let fused = p.kernels.iter().filter(|k| k.kind() == "attention").count();
    let unfused =
        p.kernels
            .iter()
            .filter(|k| match k {
                Kernel::RowReduce(kinds::RowReduce { out, stages, .. }) => stages.len() == 2
                    && stages[0].op == ReduceOp::Max
                    && stages[1].op == ReduceOp::Sum
                    && p.kernels.iter().any(
                        |g| matches!(g, Kernel::Gemm(kinds::Gemm { a, .. }) if a.buf == out.buf),
                    ),
                _ => false,
            })
            .count();
    (fused, unfused)
}

#[test]
fn every_attention_becomes_one_streaming_kernel() {
    let no_rewrites = FuseOptions {
        disabled: REWRITE_NAMES.iter().map(|s| s.to_string()).collect(),
    };
    let mut specs: Vec<(String, Lowered)> = tiny_specs()
        .into_iter()
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().to_string();
            (name, optimised(&lower(&spec::load(&p).unwrap()).unwrap()))
        })
        .collect();
    for seed in 0..12u64 {
        if let Ok(rs) = load_random_spec(seed) {
            specs.push((
                format!("random spec {seed}"),
                optimised(&lower(&rs).unwrap()),
            ));
        }
    }
    let mut total = 0;
    for (name, l) in &specs {
        for g in l.graphs() {
            let before = attention_shapes(&fuse_with(g, &no_rewrites).unwrap());
            total += before.1;
            let after = attention_shapes(&fuse(g).unwrap());
            assert_eq!(before.0, 0, "{name}/{}", g.name);
            assert_eq!(
                after,
                (before.1, 0),
                "{name}/{}: every attention (softmax feeding a product) is one kernel",
                g.name
            );
        }
    }
    assert!(total >= 2 * specs.len(), "only {total} attentions seen");
}

#[test]
fn every_kernel_rewrite_can_be_disabled() {
    for name in REWRITE_NAMES {
        let opts = FuseOptions {
            disabled: [name.to_string()].into(),
        };
        for model in ["gpt2", "t5-small", "gemma-2-2b"] {
            let path =
                Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("models/tiny/{model}.toml"));
            let opt = optimised(&lower(&spec::load(&path).unwrap()).unwrap());
            check_model_with(&opt, 4, &format!("{model} without {name}"), &opts);
        }
    }
}

#[test]
fn fusion_is_deterministic() {
    assert_eq!(kernel_text("gpt2"), kernel_text("gpt2"));
}

#[test]
fn sandwich_norm_residuals_are_not_recomputed_per_layer() {
    // Gemma-2's residual stream passes through post-norms; inlined, each
    // layer's norm kernel re-read every earlier layer's outputs (58 loads
    // in the last layer of the full model). Materialised, every kernel
    // reads a handful of views.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/gemma-2-2b.toml");
    let opt = optimised(&lower(&spec::load(&path).unwrap()).unwrap());
    for g in opt.graphs() {
        let p = fuse(g).unwrap();
        let widest = p.kernels.iter().map(|k| k.reads().len()).max().unwrap_or(0);
        assert!(widest <= 8, "{}: a kernel reads {widest} buffers", g.name);
    }
}
