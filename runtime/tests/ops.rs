//! Every primitive op on hand-built graphs, against hand-computed values.

mod common;

use common::*;
use kiln_compiler::ir::{BinaryOp, DType, Dim, Init, Op, ReduceOp, UnaryOp};
use kiln_compiler::shape;
use kiln_runtime::{Tensor, Weights, run};

#[test]
fn binary_broadcasting() {
    let g = graph(|b| {
        let x = b.input("x", DType::F32, shape![2usize, 3usize])?;
        let row = b.input("row", DType::F32, shape![3usize])?;
        let col = b.input("col", DType::F32, shape![2usize, 1usize])?;
        let s = b.scalar(0.5)?;
        let add = b.add2(x, row)?;
        let mul = b.mul(col, row)?; // [2,1] * [3] -> [2,3]
        let sub = b.sub(s, x)?;
        let div = b.div(x, col)?;
        Ok(vec![("add", add), ("mul", mul), ("sub", sub), ("div", div)])
    });
    let x = f32s(&[2, 3], vec![1., 2., 3., 4., 5., 6.]);
    let row = f32s(&[3], vec![10., 20., 30.]);
    let col = f32s(&[2, 1], vec![2., -1.]);
    let out = run_ok(&g, &[("x", &x), ("row", &row), ("col", &col)]);
    assert_close(&out["add"], &[2, 3], &[11., 22., 33., 14., 25., 36.], 0.0);
    assert_close(
        &out["mul"],
        &[2, 3],
        &[20., 40., 60., -10., -20., -30.],
        0.0,
    );
    assert_close(
        &out["sub"],
        &[2, 3],
        &[-0.5, -1.5, -2.5, -3.5, -4.5, -5.5],
        0.0,
    );
    assert_close(&out["div"], &[2, 3], &[0.5, 1., 1.5, -4., -5., -6.], 0.0);
}

#[test]
fn binary_max_min_pow_and_comparisons() {
    let g = graph(|b| {
        let x = b.input("x", DType::F32, shape![4usize])?;
        let y = b.input("y", DType::F32, shape![4usize])?;
        let mut outs = vec![];
        for (name, op) in [
            ("max", BinaryOp::Max),
            ("min", BinaryOp::Min),
            ("pow", BinaryOp::Pow),
            ("lt", BinaryOp::Lt),
            ("le", BinaryOp::Le),
            ("eq", BinaryOp::Eq),
        ] {
            outs.push((name, b.binary(op, x, y)?));
        }
        Ok(outs)
    });
    let x = f32s(&[4], vec![1., 2., f32::NAN, 9.]);
    let y = f32s(&[4], vec![3., 2., 1., 0.5]);
    let out = run_ok(&g, &[("x", &x), ("y", &y)]);
    assert_close(&out["max"], &[4], &[3., 2., f32::NAN, 9.], 0.0);
    assert_close(&out["min"], &[4], &[1., 2., f32::NAN, 0.5], 0.0);
    assert_close(&out["pow"], &[4], &[1., 4., f32::NAN, 3.], 0.0);
    assert_eq!(out["lt"].as_bool().unwrap(), &[true, false, false, false]);
    assert_eq!(out["le"].as_bool().unwrap(), &[true, true, false, false]);
    assert_eq!(out["eq"].as_bool().unwrap(), &[false, true, false, false]);
    assert_eq!(out["eq"].dtype(), DType::Bool);
}

#[test]
fn integer_and_logical_binaries() {
    let g = graph(|b| {
        let x = b.input("x", DType::I32, shape![4usize])?;
        let y = b.input("y", DType::I32, shape![4usize])?;
        let div = b.div(x, y)?;
        let add = b.add2(x, y)?;
        let lt = b.binary(BinaryOp::Lt, x, y)?;
        let p = b.input("p", DType::Bool, shape![4usize])?;
        let and = b.binary(BinaryOp::And, p, lt)?;
        let or = b.binary(BinaryOp::Or, p, lt)?;
        let not = b.unary(UnaryOp::Not, p)?;
        let neg = b.unary(UnaryOp::Neg, x)?;
        let abs = b.unary(UnaryOp::Abs, x)?;
        Ok(vec![
            ("div", div),
            ("add", add),
            ("and", and),
            ("or", or),
            ("not", not),
            ("neg", neg),
            ("abs", abs),
        ])
    });
    let x = i32s(&[4], vec![7, -7, 6, 1]);
    let y = i32s(&[4], vec![2, 2, -4, 5]);
    let p = Tensor::from_bool(&[4], vec![true, true, false, false]).unwrap();
    let out = run_ok(&g, &[("x", &x), ("y", &y), ("p", &p)]);
    // i32 division truncates toward zero.
    assert_eq!(out["div"].as_i32().unwrap(), &[3, -3, -1, 0]);
    assert_eq!(out["add"].as_i32().unwrap(), &[9, -5, 2, 6]);
    assert_eq!(out["and"].as_bool().unwrap(), &[false, true, false, false]);
    assert_eq!(out["or"].as_bool().unwrap(), &[true, true, false, true]);
    assert_eq!(out["not"].as_bool().unwrap(), &[false, false, true, true]);
    assert_eq!(out["neg"].as_i32().unwrap(), &[-7, 7, -6, -1]);
    assert_eq!(out["abs"].as_i32().unwrap(), &[7, 7, 6, 1]);

    let zero = i32s(&[4], vec![1, 0, 1, 1]);
    let w = Weights::new();
    let e = run(&g, &w, [("x", &x), ("y", &zero), ("p", &p)]).unwrap_err();
    assert!(e.to_string().contains("division by zero"), "{e}");
}

#[test]
fn unary_ops() {
    let ops = [
        UnaryOp::Neg,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Rsqrt,
        UnaryOp::Recip,
        UnaryOp::Tanh,
        UnaryOp::Erf,
        UnaryOp::Sin,
        UnaryOp::Cos,
        UnaryOp::Abs,
        UnaryOp::Floor,
    ];
    let g = graph(|b| {
        let x = b.input("x", DType::F32, shape![3usize])?;
        let mut outs = vec![];
        for op in ops {
            outs.push((format!("{op:?}").leak() as &'static str, b.unary(op, x)?));
        }
        Ok(outs)
    });
    let xs = [0.5f64, 2.0, 4.75];
    let x = f32s(&[3], xs.iter().map(|&v| v as f32).collect());
    let out = run_ok(&g, &[("x", &x)]);
    let erf = [0.5204998778130465, 0.9953222650189527, 0.9999999999815149];
    for op in ops {
        let want: Vec<f32> = xs
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                (match op {
                    UnaryOp::Neg => -v,
                    UnaryOp::Exp => v.exp(),
                    UnaryOp::Log => v.ln(),
                    UnaryOp::Sqrt => v.sqrt(),
                    UnaryOp::Rsqrt => 1.0 / v.sqrt(),
                    UnaryOp::Recip => 1.0 / v,
                    UnaryOp::Tanh => v.tanh(),
                    UnaryOp::Erf => erf[i],
                    UnaryOp::Sin => v.sin(),
                    UnaryOp::Cos => v.cos(),
                    UnaryOp::Abs => v.abs(),
                    UnaryOp::Floor => v.floor(),
                    UnaryOp::Not => unreachable!(),
                }) as f32
            })
            .collect();
        // Computed in f64 and rounded once: exact to the f32 ulp.
        assert_close(&out[format!("{op:?}").as_str()], &[3], &want, 0.0);
    }
}

#[test]
fn erf_and_tanh_accuracy() {
    let g = graph(|b| {
        let x = b.input("x", DType::F32, shape!["n"])?;
        let erf = b.unary(UnaryOp::Erf, x)?;
        let tanh = b.unary(UnaryOp::Tanh, x)?;
        Ok(vec![("erf", erf), ("tanh", tanh)])
    });
    // Reference values (Python math.erf / math.tanh), inputs exact in f32.
    let cases: [(f32, f64, f64); 7] = [
        (0.5, 0.5204998778130465, 0.46211715726000974),
        (-0.25, -0.2763263901682369, -0.24491866240370913),
        (1.0, 0.8427007929497149, 0.7615941559557649),
        (-2.5, -0.999593047982555, -0.9866142981514303),
        (3.5, 0.9999992569016276, 0.9981778976111987),
        (0.0, 0.0, 0.0),
        (10.0, 1.0, 0.9999999958776927),
    ];
    let x = f32s(&[cases.len()], cases.iter().map(|c| c.0).collect());
    let out = run_ok(&g, &[("x", &x)]);
    let want_erf: Vec<f32> = cases.iter().map(|c| c.1 as f32).collect();
    let want_tanh: Vec<f32> = cases.iter().map(|c| c.2 as f32).collect();
    assert_close(&out["erf"], &[cases.len()], &want_erf, 0.0);
    assert_close(&out["tanh"], &[cases.len()], &want_tanh, 0.0);
    assert!((out["erf"].as_f32().unwrap()[0] - 0.520_499_9).abs() < 1e-7);
}

/// `sum`/`max` over `axes` of a `[2, 3, 4]` arange, computed by plain loops.
fn reduce_reference(axes: &[usize], max: bool) -> (Vec<usize>, Vec<f32>) {
    let dims = [2, 3, 4];
    let out_dims: Vec<usize> = (0..3)
        .map(|a| if axes.contains(&a) { 1 } else { dims[a] })
        .collect();
    let mut acc = vec![if max { f32::NEG_INFINITY } else { 0.0 }; out_dims.iter().product()];
    for i in 0..2 {
        for j in 0..3 {
            for k in 0..4 {
                let v = (i * 12 + j * 4 + k) as f32;
                let o = [i, j, k]
                    .iter()
                    .zip(&out_dims)
                    .fold(0, |o, (&ix, &d)| o * d + if d == 1 { 0 } else { ix });
                acc[o] = if max { acc[o].max(v) } else { acc[o] + v };
            }
        }
    }
    (out_dims, acc)
}

#[test]
fn reductions_keep_dims() {
    let cases: [&[usize]; 5] = [&[1], &[0, 2], &[2], &[0, 1, 2], &[]];
    let g = graph(|b| {
        let x = b.input("x", DType::F32, shape![2usize, 3usize, 4usize])?;
        let mut outs = vec![];
        for (i, axes) in cases.iter().enumerate() {
            outs.push((
                format!("sum{i}").leak() as &str,
                b.reduce(ReduceOp::Sum, x, axes)?,
            ));
            outs.push((
                format!("max{i}").leak() as &str,
                b.reduce(ReduceOp::Max, x, axes)?,
            ));
        }
        Ok(outs)
    });
    let out = run_ok(&g, &[("x", &arange(&[2, 3, 4]))]);
    for (i, axes) in cases.iter().enumerate() {
        let (shape, sum) = reduce_reference(axes, false);
        assert_close(&out[format!("sum{i}").as_str()], &shape, &sum, 0.0);
        let (shape, max) = reduce_reference(axes, true);
        assert_close(&out[format!("max{i}").as_str()], &shape, &max, 0.0);
    }
    // A hand-checked one: sum over axis 1 of [2,3,4] arange.
    assert_eq!(
        out["sum0"].as_f32().unwrap(),
        &[12., 15., 18., 21., 48., 51., 54., 57.]
    );
}

#[test]
fn reduce_sum_accumulates_in_f64() {
    // In f32, 1e8 + 1 + ... + 1 (ten ones) stays 1e8; f64 accumulation keeps them.
    let g = graph(|b| {
        let x = b.input("x", DType::F32, shape![11usize])?;
        Ok(vec![("s", b.reduce(ReduceOp::Sum, x, &[0])?)])
    });
    let mut v = vec![1e8f32];
    v.extend([1.0; 10]);
    let out = run_ok(&g, &[("x", &f32s(&[11], v))]);
    assert_eq!(out["s"].as_f32().unwrap(), &[100_000_010.0]);
}

/// Naive batched matmul over explicit batch index maps.
fn matmul_ref(
    a: &[f32],
    b: &[f32],
    pairs: &[(usize, usize)],
    m: usize,
    k: usize,
    n: usize,
) -> Vec<f32> {
    let mut out = vec![];
    for &(ia, ib) in pairs {
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f64;
                for p in 0..k {
                    s += a[ia * m * k + i * k + p] as f64 * b[ib * k * n + p * n + j] as f64;
                }
                out.push(s as f32);
            }
        }
    }
    out
}

#[test]
fn matmul_with_batch_broadcast() {
    let g = graph(|b| {
        let a = b.input("a", DType::F32, shape![2usize, 3usize, 4usize])?;
        let w = b.input("w", DType::F32, shape![4usize, 5usize])?;
        let c = b.input("c", DType::F32, shape![2usize, 1usize, 3usize, 4usize])?;
        let d = b.input("d", DType::F32, shape![1usize, 2usize, 4usize, 5usize])?;
        let aw = b.matmul(a, w)?;
        let cd = b.matmul(c, d)?;
        Ok(vec![("aw", aw), ("cd", cd)])
    });
    let a = arange(&[2, 3, 4]);
    let w = f32s(&[4, 5], (0..20).map(|i| (i as f32 - 7.0) * 0.5).collect());
    let c = f32s(
        &[2, 1, 3, 4],
        (0..24).map(|i| (i % 5) as f32 - 2.0).collect(),
    );
    let d = f32s(
        &[1, 2, 4, 5],
        (0..40).map(|i| (i % 7) as f32 * 0.25).collect(),
    );
    let out = run_ok(&g, &[("a", &a), ("w", &w), ("c", &c), ("d", &d)]);
    let aw = matmul_ref(
        a.as_f32().unwrap(),
        w.as_f32().unwrap(),
        &[(0, 0), (1, 0)],
        3,
        4,
        5,
    );
    assert_close(&out["aw"], &[2, 3, 5], &aw, 0.0);
    // [2,1] x [1,2] batch -> [2,2]: (c0,d0) (c0,d1) (c1,d0) (c1,d1).
    let cd = matmul_ref(
        c.as_f32().unwrap(),
        d.as_f32().unwrap(),
        &[(0, 0), (0, 1), (1, 0), (1, 1)],
        3,
        4,
        5,
    );
    assert_close(&out["cd"], &[2, 2, 3, 5], &cd, 0.0);
    // One entry by hand: aw[0, 0, 0] = sum_p a[0,0,p] * w[p,0] = 0*-3.5 + 1*-1 + 2*1.5 + 3*4 = 14.
    assert_eq!(out["aw"].as_f32().unwrap()[0], 14.0);
}

#[test]
fn permute_and_reshape() {
    let g = graph(|b| {
        let x = b.input("x", DType::F32, shape!["batch", 3usize, 4usize])?;
        let p = b.permute(x, &[2, 0, 1])?;
        let r = b.reshape(x, shape!["batch", 3usize, 2usize, 2usize])?;
        let t = b.transpose_last(r)?;
        Ok(vec![("p", p), ("r", r), ("t", t)])
    });
    let x = arange(&[2, 3, 4]);
    let out = run_ok(&g, &[("x", &x)]);
    // p[k, i, j] = x[i, j, k] = 12i + 4j + k.
    let mut want = vec![];
    for k in 0..4 {
        for i in 0..2 {
            for j in 0..3 {
                want.push((12 * i + 4 * j + k) as f32);
            }
        }
    }
    assert_close(&out["p"], &[4, 2, 3], &want, 0.0);
    assert_close(&out["r"], &[2, 3, 2, 2], x.as_f32().unwrap(), 0.0);
    assert_eq!(&out["t"].as_f32().unwrap()[..4], &[0., 2., 1., 3.]);
}

#[test]
fn slice_with_symbolic_bounds() {
    let g = graph(|b| {
        let x = b.input("x", DType::F32, shape!["batch", "seq", 2usize])?;
        // Drop the first position: [1, seq).
        let tail = b.slice(x, 1, Dim::c(1), Dim::sym("seq"))?;
        // The last position: [seq-1, seq).
        let last = b.slice(x, 1, Dim::sym("seq") - Dim::c(1), Dim::sym("seq"))?;
        // A constant slice on the last axis.
        let first = b.slice(x, 2, Dim::c(0), Dim::c(1))?;
        Ok(vec![("tail", tail), ("last", last), ("first", first)])
    });
    let x = arange(&[1, 4, 2]);
    let out = run_ok(&g, &[("x", &x)]);
    assert_close(&out["tail"], &[1, 3, 2], &[2., 3., 4., 5., 6., 7.], 0.0);
    assert_close(&out["last"], &[1, 1, 2], &[6., 7.], 0.0);
    assert_close(&out["first"], &[1, 4, 1], &[0., 2., 4., 6.], 0.0);
    // seq = 0 makes `[1, seq)` out of range and `seq-1` negative: errors, not panics.
    let w = Weights::new();
    let e = run(&g, &w, [("x", &Tensor::zeros(DType::F32, &[1, 0, 2]))]).unwrap_err();
    assert!(e.to_string().contains("slice [1, 0) out of range"), "{e}");
    let g = graph(|b| {
        let x = b.input("x", DType::F32, shape!["seq"])?;
        Ok(vec![(
            "last",
            b.slice(x, 0, Dim::sym("seq") - Dim::c(1), Dim::sym("seq"))?,
        )])
    });
    let e = run(&g, &w, [("x", &Tensor::zeros(DType::F32, &[0]))]).unwrap_err();
    assert!(e.to_string().contains("cannot evaluate dim `seq-1`"), "{e}");
}

#[test]
fn concat_past_and_new_then_slice_back() {
    let g = graph(|b| {
        let past = b.input("past", DType::F32, shape![1usize, 2usize, "past", 3usize])?;
        let new = b.input("new", DType::F32, shape![1usize, 2usize, "seq", 3usize])?;
        let all = b.concat(&[past, new], 2)?;
        let back = b.slice(all, 2, Dim::sym("past"), Dim::sym("past") + Dim::sym("seq"))?;
        Ok(vec![("all", all), ("back", back)])
    });
    let past = f32s(&[1, 2, 1, 3], vec![1., 2., 3., 4., 5., 6.]);
    let new = f32s(&[1, 2, 2, 3], (10..22).map(|i| i as f32).collect());
    let out = run_ok(&g, &[("past", &past), ("new", &new)]);
    #[rustfmt::skip]
    let want = [
        1., 2., 3., 10., 11., 12., 13., 14., 15.,
        4., 5., 6., 16., 17., 18., 19., 20., 21.,
    ];
    assert_close(&out["all"], &[1, 2, 3, 3], &want, 0.0);
    assert_eq!(out["back"], new);
    assert_eq!(out.bindings()["past"], 1);
    assert_eq!(out.bindings()["seq"], 2);

    // An empty cache (past = 0): the first decode step.
    let empty = Tensor::zeros(DType::F32, &[1, 2, 0, 3]);
    let out = run_ok(&g, &[("past", &empty), ("new", &new)]);
    assert_eq!(out["all"], new);
}

#[test]
fn gather_axis_0_and_1() {
    let g = graph(|b| {
        let table = b.input("table", DType::F32, shape![4usize, 3usize])?;
        let ids = b.input("ids", DType::I32, shape!["batch", "seq"])?;
        let emb = b.gather(table, ids, 0)?;
        let cols = b.input("cols", DType::I32, shape![2usize])?;
        let picked = b.gather(table, cols, 1)?;
        Ok(vec![("emb", emb), ("picked", picked)])
    });
    let table = arange(&[4, 3]);
    let ids = i32s(&[1, 3], vec![3, 0, 3]);
    let cols = i32s(&[2], vec![2, 0]);
    let out = run_ok(&g, &[("table", &table), ("ids", &ids), ("cols", &cols)]);
    assert_close(
        &out["emb"],
        &[1, 3, 3],
        &[9., 10., 11., 0., 1., 2., 9., 10., 11.],
        0.0,
    );
    assert_close(
        &out["picked"],
        &[4, 2],
        &[2., 0., 5., 3., 8., 6., 11., 9.],
        0.0,
    );
}

#[test]
fn gather_out_of_range_is_an_error_naming_the_node() {
    let g = graph(|b| {
        b.scoped("embed", |b| {
            let table = b.param("tokens", &[4, 3], Init::Fill(1.0))?;
            let ids = b.input("ids", DType::I32, shape!["seq"])?;
            Ok(vec![("emb", b.gather(table, ids, 0)?)])
        })
    });
    let w = Weights::random(&[&g], 0).unwrap();
    for bad in [4, -1] {
        let ids = i32s(&[3], vec![0, bad, 1]);
        let e = run(&g, &w, [("ids", &ids)]).unwrap_err().to_string();
        assert!(e.starts_with("embed: gather"), "{e}");
        assert!(e.contains(&format!("index {bad}")), "{e}");
        assert!(e.contains("[1]") && e.contains("size 4"), "{e}");
    }
}

#[test]
fn select_broadcasts_three_ways() {
    let g = graph(|b| {
        let c = b.input("c", DType::Bool, shape![2usize, 1usize])?;
        let a = b.input("a", DType::F32, shape![3usize])?;
        let neg = b.scalar(-1.0)?;
        Ok(vec![("s", b.select(c, a, neg)?)])
    });
    let c = Tensor::from_bool(&[2, 1], vec![true, false]).unwrap();
    let a = f32s(&[3], vec![1., 2., 3.]);
    let out = run_ok(&g, &[("c", &c), ("a", &a)]);
    assert_close(&out["s"], &[2, 3], &[1., 2., 3., -1., -1., -1.], 0.0);
}

#[test]
fn iota_scalar_and_literal() {
    let g = graph(|b| {
        let x = b.input("x", DType::F32, shape!["seq"])?;
        let rows = b.iota(DType::I32, shape!["seq", 3usize], 0)?;
        let cols = b.iota(DType::F32, shape!["seq", 3usize], 1)?;
        let lit = b.literal(vec![0.5, 0.25], &[2, 1])?;
        let si = b.scalar_i32(7)?;
        let sf = b.add_scalar(x, 2.0)?;
        Ok(vec![
            ("rows", rows),
            ("cols", cols),
            ("lit", lit),
            ("si", si),
            ("sf", sf),
        ])
    });
    let out = run_ok(&g, &[("x", &f32s(&[2], vec![1., 2.]))]);
    assert_eq!(out["rows"].as_i32().unwrap(), &[0, 0, 0, 1, 1, 1]);
    assert_eq!(out["rows"].shape(), &[2, 3]);
    assert_close(&out["cols"], &[2, 3], &[0., 1., 2., 0., 1., 2.], 0.0);
    assert_close(&out["lit"], &[2, 1], &[0.5, 0.25], 0.0);
    assert_eq!(out["si"].as_i32().unwrap(), &[7]);
    assert_eq!(out["si"].shape(), &[] as &[usize]);
    assert_close(&out["sf"], &[2], &[3., 4.], 0.0);
}

#[test]
fn scalar_broadcast_to_a_symbolic_declared_shape() {
    let mut g = kiln_compiler::ir::Graph::new("scalar");
    let x = g
        .add(
            Op::Input { name: "x".into() },
            &[],
            Some(kiln_compiler::ir::TensorType::f32(shape!["seq"])),
            "",
        )
        .unwrap();
    let s = g
        .add(
            Op::Scalar(1.5),
            &[],
            Some(kiln_compiler::ir::TensorType::f32(shape!["seq", 2usize])),
            "fill",
        )
        .unwrap();
    g.set_output("s", s);
    g.set_output("x", x);
    let out = run_ok(&g, &[("x", &f32s(&[3], vec![0.; 3]))]);
    assert_close(&out["s"], &[3, 2], &[1.5; 6], 0.0);
}

#[test]
fn casts() {
    let g = graph(|b| {
        let x = b.input("x", DType::F32, shape![4usize])?;
        let i = b.cast(x, DType::I32)?;
        let back = b.cast(i, DType::F32)?;
        let zero = b.scalar(0.0)?;
        let pos = b.binary(BinaryOp::Lt, zero, x)?;
        let pf = b.cast(pos, DType::F32)?;
        let pi = b.cast(pos, DType::I32)?;
        Ok(vec![("i", i), ("back", back), ("pf", pf), ("pi", pi)])
    });
    let x = f32s(&[4], vec![-1.7, 2.9, 0.0, -0.2]);
    let out = run_ok(&g, &[("x", &x)]);
    assert_eq!(out["i"].as_i32().unwrap(), &[-1, 2, 0, 0]);
    assert_close(&out["back"], &[4], &[-1., 2., 0., 0.], 0.0);
    assert_close(&out["pf"], &[4], &[0., 1., 0., 0.], 0.0);
    assert_eq!(out["pi"].as_i32().unwrap(), &[0, 1, 0, 0]);
}

#[test]
fn softmax_from_primitives_sums_to_one() {
    let g = graph(|b| {
        let x = b.input("x", DType::F32, shape!["batch", "seq", 5usize])?;
        let p = b.softmax_last(x)?;
        let s = b.reduce(ReduceOp::Sum, p, &[2])?;
        Ok(vec![("p", p), ("s", s)])
    });
    let x = f32s(
        &[2, 3, 5],
        (0..30)
            .map(|i| ((i * 7) % 11) as f32 - 5.0 + 100.0 * (i % 2) as f32)
            .collect(),
    );
    let out = run_ok(&g, &[("x", &x)]);
    assert_close(&out["s"], &[2, 3, 1], &[1.0; 6], 1e-6);
    // First row by hand: x = [-5, 102, -2, 105, 1] -> all mass on 102 and 105.
    let row = &out["p"].as_f32().unwrap()[..5];
    let e3 = (-3.0f64).exp();
    assert!((row[3] as f64 - 1.0 / (1.0 + e3)).abs() < 1e-7, "{row:?}");
    assert!((row[1] as f64 - e3 / (1.0 + e3)).abs() < 1e-7, "{row:?}");
    assert_eq!(row[0], 0.0);
}
