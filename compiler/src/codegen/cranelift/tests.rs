//! Generated code against the IR's numeric contract: the inlined `exp`,
//! `tanh` and `erf` (vector lanes and scalar tail) against `ir::scalar`
//! over dense grids, and each other op bit for bit.

use super::*;
use crate::ir::{BinaryOp, DType, Dim, UnaryOp, scalar};
use crate::kernel::kinds;
use crate::kernel::{Body, Buffer, BufferKind, BufferPlan, Inst, Kernel, KernelProgram, View};

/// A program `out[i] = body(x[i], y[i])` over `n` elements.
fn program(n: usize, body: Body, out_dtype: DType, in_dtype: DType) -> KernelProgram {
    let buf = |name: &str, dtype, kind| Buffer {
        name: name.into(),
        dtype,
        shape: vec![Dim::c(n)],
        kind,
        capacity: None,
    };
    let view = |b| View {
        buf: b,
        offset: Size::zero(),
        strides: vec![Size::one()],
    };
    KernelProgram {
        name: "t".into(),
        buffers: vec![
            buf("x", in_dtype, BufferKind::Input("x".into())),
            buf("y", in_dtype, BufferKind::Input("y".into())),
            buf("out", out_dtype, BufferKind::Output),
        ],
        kernels: vec![Kernel::Elementwise(kinds::Elementwise {
            out: view(2),
            domain: vec![Dim::c(n)],
            loads: vec![view(0), view(1)],
            body,
        })],
        inputs: vec![("x".into(), 0), ("y".into(), 1)],
        outputs: vec![("out".into(), 2)],
        plan: BufferPlan::default(),
        graph_nodes: 0,
        joined: Default::default(),
        appends: Vec::new(),
    }
}

fn run_f32(p: &KernelProgram, x: &[f32], y: &[f32]) -> Vec<f32> {
    let cpu = compile(p, Options::default()).unwrap();
    let mut out = vec![0f32; x.len()];
    let bufs = [
        x.as_ptr() as *mut u8,
        y.as_ptr() as *mut u8,
        out.as_mut_ptr() as *mut u8,
    ];
    let f = cpu.kernels[0].func.unwrap();
    assert!(cpu.kernels[0].sizes.is_empty());
    unsafe { f(bufs.as_ptr(), [0i64; 1].as_ptr(), 0, 1, 0, x.len() as i64) };
    out
}

fn unary_body(op: UnaryOp) -> Body {
    Body {
        insts: vec![
            (Inst::Load(0), DType::F32),
            (Inst::Unary(op, 0), DType::F32),
        ],
        result: 1,
    }
}

/// Worst relative error of `op` over `xs` (outputs of normal magnitude).
fn worst_rel(op: UnaryOp, xs: &[f32]) -> (f32, f32) {
    let p = program(xs.len(), unary_body(op), DType::F32, DType::F32);
    let got = run_f32(&p, xs, xs);
    let f = scalar::f32_unary(op).unwrap();
    let mut worst = (0.0f32, 0.0f32);
    for (&x, &g) in xs.iter().zip(&got) {
        let want = f(x);
        if want.abs() < 1e-30 && g.abs() < 1e-30 {
            continue;
        }
        let rel = if want == g {
            0.0
        } else {
            (want - g).abs() / want.abs()
        };
        // NaN counts as the worst.
        let rel = if rel.is_nan() { f32::INFINITY } else { rel };
        if rel > worst.0 {
            worst = (rel, x);
        }
    }
    worst
}

fn grid(lo: f32, hi: f32, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| lo + (hi - lo) * i as f32 / (n - 1) as f32)
        .collect()
}

#[test]
fn exp_tanh_erf_within_1e6_relative() {
    let mut xs = grid(-87.0, 88.0, 200_003);
    xs.extend(grid(-1.0, 1.0, 20_001));
    xs.extend(grid(-1e-3, 1e-3, 2_001));
    let (e, at) = worst_rel(UnaryOp::Exp, &xs);
    assert!(e <= 1e-6, "exp: {e:e} at {at}");
    let mut xs = grid(-12.0, 12.0, 200_003);
    xs.extend(grid(-1e-3, 1e-3, 2_001));
    xs.extend([1e-20, -1e-20, 0.0, 0.55, -0.55, 0.5499999, 20.0, -50.0]);
    for op in [UnaryOp::Tanh, UnaryOp::Erf] {
        let (e, at) = worst_rel(op, &xs);
        assert!(e <= 1e-6, "{op:?}: {e:e} at {at}");
    }
}

#[test]
fn special_values() {
    let xs = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        89.0,
        -100.0,
        -200.0,
        0.0,
        -0.0,
    ];
    let p = program(xs.len(), unary_body(UnaryOp::Exp), DType::F32, DType::F32);
    let got = run_f32(&p, &xs, &xs);
    assert!(got[0].is_nan());
    assert_eq!(got[1], f32::INFINITY);
    assert_eq!(got[2], 0.0);
    assert_eq!(got[3], f32::INFINITY);
    // Subnormal results flush to zero (no microcode assists on x86).
    assert_eq!(got[4], 0.0, "exp(-100)");
    assert_eq!(got[5], 0.0);
    assert_eq!(got[6], 1.0);
    for op in [UnaryOp::Tanh, UnaryOp::Erf] {
        let p = program(xs.len(), unary_body(op), DType::F32, DType::F32);
        let got = run_f32(&p, &xs, &xs);
        assert!(got[0].is_nan(), "{op:?}(NaN)");
        assert_eq!(&got[1..3], &[1.0, -1.0], "{op:?}(±inf)");
        assert_eq!(got[6], 0.0);
    }
}

#[test]
fn exact_ops_match_the_contract_bit_for_bit() {
    let xs: Vec<f32> = grid(-30.0, 30.0, 1_001)
        .into_iter()
        .chain([0.0, -0.0, f32::NAN, 1e30])
        .collect();
    for op in [
        UnaryOp::Neg,
        UnaryOp::Abs,
        UnaryOp::Floor,
        UnaryOp::Sqrt,
        UnaryOp::Recip,
        UnaryOp::Log,
        UnaryOp::Sin,
        UnaryOp::Cos,
    ] {
        let p = program(xs.len(), unary_body(op), DType::F32, DType::F32);
        let got = run_f32(&p, &xs, &xs);
        let f = scalar::f32_unary(op).unwrap();
        for (&x, &g) in xs.iter().zip(&got) {
            let w = f(x);
            assert!(
                w.to_bits() == g.to_bits() || (w.is_nan() && g.is_nan()),
                "{op:?}({x}) = {g}, want {w}"
            );
        }
    }
    let ys: Vec<f32> = xs.iter().rev().copied().collect();
    for op in [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Max,
        BinaryOp::Min,
        BinaryOp::Pow,
    ] {
        let body = Body {
            insts: vec![
                (Inst::Load(0), DType::F32),
                (Inst::Load(1), DType::F32),
                (Inst::Binary(op, 0, 1), DType::F32),
            ],
            result: 2,
        };
        let p = program(xs.len(), body, DType::F32, DType::F32);
        let got = run_f32(&p, &xs, &ys);
        let f = scalar::f32_binary(op).unwrap();
        for ((&x, &y), &g) in xs.iter().zip(&ys).zip(&got) {
            let w = f(x, y);
            assert!(
                w == g || (w.is_nan() && g.is_nan()),
                "{op:?}({x}, {y}) = {g}, want {w}"
            );
        }
    }
}

#[test]
fn compare_select_and_casts() {
    // out = cast<f32>(select(x < y, cast<i32>(x), cast<i32>(y)) / 3) + cast<f32>(x == y)
    let body = Body {
        insts: vec![
            (Inst::Load(0), DType::F32),                      // 0 x
            (Inst::Load(1), DType::F32),                      // 1 y
            (Inst::Binary(BinaryOp::Lt, 0, 1), DType::Bool),  // 2
            (Inst::Cast(0), DType::I32),                      // 3
            (Inst::Cast(1), DType::I32),                      // 4
            (Inst::Select(2, 3, 4), DType::I32),              // 5
            (Inst::Const(3.0), DType::I32),                   // 6
            (Inst::Binary(BinaryOp::Div, 5, 6), DType::I32),  // 7
            (Inst::Cast(7), DType::F32),                      // 8
            (Inst::Binary(BinaryOp::Eq, 0, 1), DType::Bool),  // 9
            (Inst::Cast(9), DType::F32),                      // 10
            (Inst::Binary(BinaryOp::Add, 8, 10), DType::F32), // 11
        ],
        result: 11,
    };
    let xs: Vec<f32> = vec![1.5, -7.9, 3.0, f32::NAN, 1e10, -2.0, 4.0, 9.0, 10.0];
    let ys: Vec<f32> = vec![2.0, -8.0, 3.0, 1.0, 5.0, -2.0, 4.5, -9.0, 10.0];
    let p = program(xs.len(), body, DType::F32, DType::F32);
    let got = run_f32(&p, &xs, &ys);
    let want: Vec<f32> = xs
        .iter()
        .zip(&ys)
        .map(|(&x, &y)| {
            let v = if x < y { x as i32 } else { y as i32 };
            (v / 3) as f32 + f32::from(u8::from(x == y))
        })
        .collect();
    assert_eq!(got, want);
}

#[test]
fn products_with_a_non_f32_output_are_rejected() {
    // A bool Gemm output would be written as f32 by the GEMM library.
    let buf = |name: &str, dtype, kind| Buffer {
        name: name.into(),
        dtype,
        shape: vec![Dim::c(2), Dim::c(2)],
        kind,
        capacity: None,
    };
    let view = |b| View {
        buf: b,
        offset: Size::zero(),
        strides: vec![Size::c(2), Size::one()],
    };
    let p = KernelProgram {
        name: "t".into(),
        buffers: vec![
            buf("x", DType::F32, BufferKind::Input("x".into())),
            buf("w", DType::F32, BufferKind::Param("w".into())),
            buf("out", DType::Bool, BufferKind::Output),
        ],
        kernels: vec![Kernel::Gemm(kinds::Gemm {
            out: view(2),
            a: view(0),
            b: view(1),
            batch: vec![],
            m: Dim::c(2),
            n: Dim::c(2),
            k: Dim::c(2),
            epilogue: None,
            rows: None,
        })],
        inputs: vec![("x".into(), 0)],
        outputs: vec![("out".into(), 2)],
        plan: BufferPlan::default(),
        graph_nodes: 0,
        joined: Default::default(),
        appends: Vec::new(),
    };
    let e = compile(&p, Options::default()).unwrap_err().to_string();
    assert!(e.contains("f32 only"), "{e}");
}
