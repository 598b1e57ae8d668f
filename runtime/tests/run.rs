//! Running whole graphs: symbol binding and its errors, weights, outputs,
//! memory, and a tiny transformer end to end.

mod common;

use common::*;
use kiln_compiler::ir::{BinaryOp, Builder, DType, Graph, Init, NodeId, R, UnaryOp};
use kiln_compiler::shape;
use kiln_runtime::{Interpreter, RuntimeError, Tensor, Weights, parameter_seed, run};
use std::collections::HashMap;

fn two_inputs() -> Graph {
    graph(|b| {
        let x = b.input("x", DType::F32, shape!["batch", "seq", 4usize])?;
        let mask = b.input("mask", DType::I32, shape!["batch", "seq"])?;
        let m = b.cast(mask, DType::F32)?;
        let m = b.reshape(m, shape!["batch", "seq", 1usize])?;
        Ok(vec![("y", b.mul(x, m)?)])
    })
}

fn err(g: &Graph, inputs: &[(&str, &Tensor)]) -> RuntimeError {
    run(g, &Weights::new(), inputs).unwrap_err()
}

#[test]
fn binds_symbols_from_inputs() {
    let g = two_inputs();
    let x = arange(&[2, 3, 4]);
    let mask = i32s(&[2, 3], vec![1, 1, 0, 1, 0, 0]);
    let out = run_ok(&g, &[("x", &x), ("mask", &mask)]);
    assert_eq!(out.bindings().get("batch"), Some(&2));
    assert_eq!(out.bindings().get("seq"), Some(&3));
    let y = out["y"].as_f32().unwrap();
    assert_eq!(&y[8..12], &[0.; 4]);
    assert_eq!(&y[12..16], &[12., 13., 14., 15.]);
}

#[test]
fn conflicting_symbol_bindings_name_both_inputs() {
    let g = two_inputs();
    let e = err(
        &g,
        &[
            ("x", &arange(&[1, 3, 4])),
            ("mask", &i32s(&[1, 5], vec![1; 5])),
        ],
    );
    assert!(
        matches!(&e, RuntimeError::SymbolConflict { symbol, first_value: 3, second_value: 5, .. } if symbol == "seq"),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("`x` axis 1") && msg.contains("`mask` axis 1"),
        "{msg}"
    );
}

#[test]
fn input_errors_are_clear() {
    let g = two_inputs();
    let x = arange(&[1, 3, 4]);
    let mask = i32s(&[1, 3], vec![1; 3]);

    let e = err(&g, &[("x", &x)]).to_string();
    assert!(
        e.contains("missing input `mask`") && e.contains("i32[batch, seq]"),
        "{e}"
    );

    let e = err(&g, &[("x", &x), ("mask", &mask), ("tokens", &mask)]).to_string();
    assert!(
        e.contains("unexpected input `tokens`") && e.contains("x, mask"),
        "{e}"
    );

    let e = err(&g, &[("x", &x), ("x", &x), ("mask", &mask)]).to_string();
    assert!(e.contains("`x` supplied more than once"), "{e}");

    let e = err(&g, &[("x", &x), ("mask", &arange(&[1, 3]))]).to_string();
    assert_eq!(e, "input `mask`: expected dtype i32, got f32");

    let e = err(&g, &[("x", &arange(&[3, 4])), ("mask", &mask)]).to_string();
    assert!(
        e.contains("input `x`") && e.contains("rank 3") && e.contains("[3, 4]"),
        "{e}"
    );

    let e = err(&g, &[("x", &arange(&[1, 3, 5])), ("mask", &mask)]).to_string();
    assert!(
        e.contains("input `x` axis 2: declared `4` = 4, got 5"),
        "{e}"
    );
}

#[test]
fn compound_input_dims_are_checked_after_binding() {
    let g = graph(|b| {
        let past = b.input("past", DType::F32, shape!["past"])?;
        let new = b.input("new", DType::F32, shape!["seq"])?;
        let mask = b.input(
            "mask",
            DType::F32,
            shape![kiln_compiler::ir::Dim::sym("past") + "seq".into()],
        )?;
        let all = b.concat(&[past, new], 0)?;
        Ok(vec![("y", b.mul(all, mask)?)])
    });
    let (p, n) = (arange(&[1]), arange(&[2]));
    let out = run_ok(&g, &[("past", &p), ("new", &n), ("mask", &arange(&[3]))]);
    assert_close(&out["y"], &[3], &[0., 0., 2.], 0.0);
    let e = err(&g, &[("past", &p), ("new", &n), ("mask", &arange(&[4]))]).to_string();
    assert!(
        e.contains("input `mask` axis 0: declared `past+seq` = 3, got 4"),
        "{e}"
    );

    // A symbol that appears only inside a compound dim cannot be bound.
    let g = graph(|b| {
        let new = b.input("new", DType::F32, shape!["seq"])?;
        let mask = b.input(
            "mask",
            DType::F32,
            shape![kiln_compiler::ir::Dim::sym("past") + "seq".into()],
        )?;
        Ok(vec![("n", new), ("m", mask)])
    });
    let e = err(&g, &[("new", &n), ("mask", &arange(&[3]))]).to_string();
    assert!(
        e.contains("input `mask` axis 0") && e.contains("past+seq"),
        "{e}"
    );
}

#[test]
fn inputs_in_every_form() {
    let g = two_inputs();
    let x = arange(&[1, 2, 4]);
    let mask = i32s(&[1, 2], vec![1, 0]);
    let w = Weights::new();
    let a = run(&g, &w, [("x", &x), ("mask", &mask)]).unwrap();
    let b = run(
        &g,
        &w,
        vec![
            ("x".to_string(), x.clone()),
            ("mask".to_string(), mask.clone()),
        ],
    )
    .unwrap();
    let map: HashMap<String, Tensor> =
        [("x".into(), x.clone()), ("mask".into(), mask.clone())].into();
    let c = run(&g, &w, &map).unwrap();
    assert_eq!(a, b);
    assert_eq!(a["y"], c["y"]);
}

#[test]
fn outputs_keep_graph_order_and_may_repeat_or_be_inputs() {
    let mut g = graph(|b| {
        let x = b.input("x", DType::F32, shape![2usize])?;
        let y = b.unary(UnaryOp::Neg, x)?;
        // A dead node that would fail (log of a bool is not even typed; use a bad gather).
        let idx = b.input("idx", DType::I32, shape![1usize])?;
        let _dead = b.gather(x, idx, 0)?;
        Ok(vec![("y", y), ("x", x), ("y again", y)])
    });
    g.outputs.swap(0, 1);
    let x = f32s(&[2], vec![1., 2.]);
    let out = run_ok(&g, &[("x", &x), ("idx", &i32s(&[1], vec![99]))]);
    let names: Vec<&str> = out.iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["x", "y", "y again"]);
    assert_eq!(out["x"], x);
    assert_eq!(out["y"], out["y again"]);
    assert_eq!(out.stats().nodes_evaluated, 2, "the dead gather is skipped");
}

#[test]
fn intermediates_are_freed_after_last_use() {
    const N: usize = 1000;
    let g = graph(|b| {
        let x = b.input("x", DType::F32, shape![N])?;
        let one = b.scalar(1.0)?;
        let mut y = x;
        for _ in 0..50 {
            y = b.add2(y, one)?;
        }
        Ok(vec![("y", y)])
    });
    let out = run_ok(&g, &[("x", &Tensor::zeros(DType::F32, &[N]))]);
    assert_close(&out["y"], &[N], &[50.0; N], 0.0);
    // At most the shared scalar, one step's operand and its result are alive.
    assert!(
        out.stats().peak_live_elements <= 2 * N + 1,
        "{:?}",
        out.stats()
    );
}

#[test]
fn observe_sees_every_evaluated_node() {
    let g = two_inputs();
    let interp = Interpreter::new(&g).unwrap();
    let mut seen: Vec<(NodeId, Vec<usize>)> = vec![];
    let x = arange(&[1, 2, 4]);
    let mask = i32s(&[1, 2], vec![1, 1]);
    interp
        .run_observed(
            &Weights::new(),
            [("x", &x), ("mask", &mask)],
            &mut |id, t| seen.push((id, t.shape().to_vec())),
        )
        .unwrap();
    assert_eq!(seen.len(), g.g.node_count());
    assert_eq!(seen.last().unwrap().1, vec![1, 2, 4]);
    // The same prepared interpreter runs again with other symbol values.
    let x = arange(&[3, 5, 4]);
    let mask = i32s(&[3, 5], vec![1; 15]);
    let out = interp
        .run(&Weights::new(), [("x", &x), ("mask", &mask)])
        .unwrap();
    assert_eq!(out["y"], x);
}

fn params_graph(name: &str, reverse: bool) -> Graph {
    let mut g = Graph::new(name);
    let mut b = Builder::new(&mut g);
    let make = |b: &mut Builder, which: usize| -> R {
        match which {
            0 => b.param("embed.tokens", &[16, 8], Init::Normal { std: 0.02 }),
            1 => b.param("layers.0.attn.q.weight", &[8, 8], Init::Normal { std: 1.0 }),
            _ => b.param("layers.0.norm.weight", &[8], Init::Fill(1.0)),
        }
    };
    let order: Vec<usize> = if reverse {
        vec![2, 1, 0]
    } else {
        vec![0, 1, 2]
    };
    let ids: Vec<NodeId> = order.iter().map(|&i| make(&mut b, i).unwrap()).collect();
    drop(b);
    for (i, id) in order.iter().zip(ids) {
        g.set_output(format!("p{i}"), id);
    }
    g
}

#[test]
fn random_weights_are_deterministic_per_seed_and_name() {
    let g = params_graph("a", false);
    let w1 = Weights::random(&[&g], 5).unwrap();
    let w2 = Weights::random(&[&g], 5).unwrap();
    let w3 = Weights::random(&[&g], 6).unwrap();
    assert_eq!(w1, w2);
    assert_eq!(w1.len(), 3);
    let q = "layers.0.attn.q.weight";
    assert_ne!(w1.get(q), w3.get(q));
    assert_ne!(w1.get("embed.tokens"), w3.get("embed.tokens"));
    // Different names under one seed draw different values.
    let e = &w1.get("embed.tokens").unwrap().as_f32().unwrap()[..8];
    let qv = &w1.get(q).unwrap().as_f32().unwrap()[..8];
    assert!(e.iter().zip(qv).all(|(a, b)| (a * 50.0 - b).abs() > 1e-6));
    // Fill ignores the seed.
    assert_eq!(
        w1.get("layers.0.norm.weight").unwrap().as_f32().unwrap(),
        &[1.0; 8]
    );
    assert_ne!(parameter_seed(5, q), parameter_seed(6, q));

    // Values depend on name and seed only: not on graph order or on sharing.
    let rev = params_graph("b", true);
    assert_eq!(Weights::random(&[&rev], 5).unwrap(), w1);
    let lone = graph(|b| {
        Ok(vec![(
            "p",
            b.param("embed.tokens", &[16, 8], Init::Normal { std: 0.02 })?,
        )])
    });
    let both = Weights::random(&[&lone, &g], 5).unwrap();
    assert_eq!(both, w1);
    assert_eq!(
        Weights::random(&[&lone], 5).unwrap().get("embed.tokens"),
        w1.get("embed.tokens")
    );

    // std scales the same stream.
    let q_values = w1.get(q).unwrap().as_f32().unwrap();
    assert!(q_values.iter().any(|v| v.abs() > 0.5), "std 1");
}

#[test]
fn conflicting_parameter_declarations_are_rejected() {
    let a = graph(|b| Ok(vec![("p", b.param("w", &[4, 4], Init::Fill(0.0))?)]));
    let c = graph(|b| Ok(vec![("p", b.param("w", &[4, 5], Init::Fill(0.0))?)]));
    let e = Weights::random(&[&a, &c], 0).unwrap_err().to_string();
    assert!(
        e.contains("`w` declared as [4, 4]") && e.contains("[4, 5]"),
        "{e}"
    );
}

#[test]
fn weights_check_lists_every_problem() {
    let g = params_graph("model", false);
    let mut w = Weights::random(&[&g], 0).unwrap();
    w.remove("embed.tokens");
    w.remove("layers.0.norm.weight");
    w.insert("layers.0.attn.q.weight", Tensor::zeros(DType::F32, &[8, 9]));
    w.insert("unused", Tensor::scalar(1.0));
    let e = w.check(&g).unwrap_err();
    let RuntimeError::Weights { problems, .. } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(problems.len(), 3, "{e}");
    let msg = e.to_string();
    for name in [
        "embed.tokens",
        "layers.0.norm.weight",
        "layers.0.attn.q.weight",
    ] {
        assert!(msg.contains(name), "{msg}");
    }
    assert!(msg.contains("missing `embed.tokens` (f32[16, 8])"), "{msg}");
    assert!(
        msg.contains("is f32[8, 9] but the graph declares f32[8, 8]"),
        "{msg}"
    );
    // Running with them fails the same way, before any evaluation.
    assert_eq!(run(&g, &w, [] as [(&str, &Tensor); 0]).unwrap_err(), e);
}

// ---- a tiny transformer, built from primitives ----

const D: usize = 64;
const HEADS: usize = 4;
const HD: usize = D / HEADS;
const VOCAB: usize = 256;
const FF: usize = 4 * D;

fn layer_norm(b: &mut Builder, x: NodeId) -> R {
    let mean = b.mean_last(x)?;
    let xc = b.sub(x, mean)?;
    let sq = b.mul(xc, xc)?;
    let var = b.mean_last(sq)?;
    let eps = b.add_scalar(var, 1e-5)?;
    let rs = b.unary(UnaryOp::Rsqrt, eps)?;
    let n = b.mul(xc, rs)?;
    let g = b.param("weight", &[D], Init::Fill(1.0))?;
    let bias = b.param("bias", &[D], Init::Fill(0.0))?;
    let n = b.mul(n, g)?;
    b.add2(n, bias)
}

fn heads(b: &mut Builder, x: NodeId, name: &str) -> R {
    let w = b.param(name, &[D, D], Init::Normal { std: 0.02 })?;
    let y = b.matmul(x, w)?;
    let y = b.reshape(y, shape!["batch", "seq", HEADS, HD])?;
    b.permute(y, &[0, 2, 1, 3])
}

fn tiny_gpt(layers: usize) -> Graph {
    graph(|b| {
        let tokens = b.input("tokens", DType::I32, shape!["batch", "seq"])?;
        let table = b.param("embed.tokens", &[VOCAB, D], Init::Normal { std: 0.02 })?;
        let mut x = b.gather(table, tokens, 0)?;
        let rows = b.iota(DType::I32, shape!["seq", "seq"], 0)?;
        let cols = b.iota(DType::I32, shape!["seq", "seq"], 1)?;
        let causal = b.binary(BinaryOp::Le, cols, rows)?;
        let masked = b.scalar(-1e9)?;
        for l in 0..layers {
            x = b.scoped(format!("layers.{l}"), |b| -> R {
                let n = b.scoped("ln1", |b| layer_norm(b, x))?;
                let (q, k, v) = b.scoped("attn", |b| -> Result<_, _> {
                    Ok((heads(b, n, "q")?, heads(b, n, "k")?, heads(b, n, "v")?))
                })?;
                let kt = b.transpose_last(k)?;
                let s = b.matmul(q, kt)?;
                let s = b.mul_scalar(s, 1.0 / (HD as f64).sqrt())?;
                let s = b.select(causal, s, masked)?;
                let p = b.softmax_last(s)?;
                let o = b.matmul(p, v)?;
                let o = b.permute(o, &[0, 2, 1, 3])?;
                let o = b.reshape(o, shape!["batch", "seq", D])?;
                let wo = b.param("attn.o", &[D, D], Init::Normal { std: 0.02 })?;
                let o = b.matmul(o, wo)?;
                let x = b.add2(x, o)?;
                let n = b.scoped("ln2", |b| layer_norm(b, x))?;
                let w1 = b.param("mlp.up", &[D, FF], Init::Normal { std: 0.02 })?;
                let h = b.matmul(n, w1)?;
                // GELU: 0.5 h (1 + erf(h / sqrt 2)).
                let z = b.mul_scalar(h, std::f64::consts::FRAC_1_SQRT_2)?;
                let e = b.unary(UnaryOp::Erf, z)?;
                let e = b.add_scalar(e, 1.0)?;
                let g = b.mul(h, e)?;
                let g = b.mul_scalar(g, 0.5)?;
                let w2 = b.param("mlp.down", &[FF, D], Init::Normal { std: 0.02 })?;
                let m = b.matmul(g, w2)?;
                b.add2(x, m)
            })?;
        }
        let n = b.scoped("final_norm", |b| layer_norm(b, x))?;
        let t = b.transpose_last(table)?;
        let logits = b.matmul(n, t)?;
        Ok(vec![("logits", logits), ("hidden", x)])
    })
}

#[test]
fn tiny_transformer_runs_fast_and_is_causal() {
    let g = tiny_gpt(2);
    let w = Weights::random(&[&g], 1).unwrap();
    let interp = Interpreter::new(&g).unwrap();
    let tokens = Tensor::tokens(&[&[5, 17, 42, 8, 99, 3, 250, 0]]).unwrap();
    let start = std::time::Instant::now();
    let out = interp.run(&w, [("tokens", &tokens)]).unwrap();
    let elapsed = start.elapsed();
    eprintln!(
        "tiny transformer (d 64, 2 layers, seq 8, vocab 256): {elapsed:?}, {:?}",
        out.stats()
    );
    assert!(elapsed.as_secs_f64() < 1.0, "took {elapsed:?}");

    let logits = &out["logits"];
    assert_eq!(logits.shape(), &[1, 8, VOCAB]);
    assert!(logits.to_f32_vec().iter().all(|v| v.is_finite()));
    // Intermediates are freed: the peak is a small part of all values computed.
    let mut total = 0;
    interp
        .run_observed(&w, [("tokens", &tokens)], &mut |_, t| total += t.numel())
        .unwrap();
    assert!(
        out.stats().peak_live_elements * 5 < total,
        "{:?} of {total}",
        out.stats()
    );

    // Causality: changing the last token leaves earlier positions unchanged.
    let other = Tensor::tokens(&[&[5, 17, 42, 8, 99, 3, 250, 77]]).unwrap();
    let out2 = interp.run(&w, [("tokens", &other)]).unwrap();
    let (a, b) = (logits.as_f32().unwrap(), out2["logits"].as_f32().unwrap());
    assert_eq!(&a[..7 * VOCAB], &b[..7 * VOCAB]);
    assert_ne!(&a[7 * VOCAB..], &b[7 * VOCAB..]);

    // Batch rows are independent: a batch of two equals two single runs.
    let both = Tensor::tokens(&[
        &[5, 17, 42, 8, 99, 3, 250, 0],
        &[5, 17, 42, 8, 99, 3, 250, 77],
    ])
    .unwrap();
    let out3 = interp.run(&w, [("tokens", &both)]).unwrap();
    let c = out3["logits"].as_f32().unwrap();
    assert_eq!(&c[..8 * VOCAB], a);
    assert_eq!(&c[8 * VOCAB..], b);
}
