//! Every shader generated for the tiny variant of every shipped model (and
//! hand-built kernels for the paths they do not reach) parses and validates
//! with naga, the WGSL front end wgpu itself uses; plus a snapshot of one
//! program's shaders.

use super::*;
use crate::ir::Dim;
use crate::kernel::kinds;
use crate::kernel::{Body, Buffer, BufferPlan, Epilogue, Inst, Kernel, View, fuse};
use crate::lower::lower;
use crate::passes::default_pipeline;
use std::path::{Path, PathBuf};

fn validate(what: &str, src: &str) {
    validate_with(what, src, naga::valid::Capabilities::empty());
}

fn validate_with(what: &str, src: &str, caps: naga::valid::Capabilities) {
    use naga::valid::{ShaderStages, SubgroupOperationSet};
    let module = naga::front::wgsl::parse_str(src).unwrap_or_else(|e| {
        panic!(
            "{what}: WGSL does not parse:\n{}\n{src}",
            e.emit_to_string(src)
        )
    });
    naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
        .subgroup_stages(ShaderStages::COMPUTE)
        .subgroup_operations(SubgroupOperationSet::BASIC | SubgroupOperationSet::ARITHMETIC)
        .validate(&module)
        .unwrap_or_else(|e| {
            panic!(
                "{what}: WGSL does not validate:\n{}\n{src}",
                e.emit_to_string(src)
            )
        });
}

fn tiny_specs() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tiny");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    v.sort();
    v
}

fn programs(path: &Path) -> Vec<KernelProgram> {
    let rs = crate::spec::load(path).unwrap_or_else(|e| panic!("{}", e.render()));
    let mut l = lower(&rs).unwrap();
    default_pipeline(1).run_lowered(&mut l).unwrap();
    l.graphs().map(|g| fuse(g).unwrap()).collect()
}

#[test]
fn every_tiny_model_validates() {
    let specs = tiny_specs();
    assert!(specs.len() >= 16, "models/tiny has {} specs", specs.len());
    let mut kinds = std::collections::BTreeSet::new();
    // Skinny Gemms over `[n, k]` weights (lanes per column) and `[k, n]` ones.
    let mut skinny_layouts = std::collections::BTreeSet::new();
    for path in specs {
        for p in programs(&path) {
            let w = generate(&p).unwrap_or_else(|e| panic!("{}: {e}", p.name));
            assert_eq!(w.kernels.len(), p.kernels.len());
            for (i, (k, wk)) in p.kernels.iter().zip(&w.kernels).enumerate() {
                kinds.insert(k.kind());
                validate(&format!("{} k{i} ({})", p.name, k.kind()), &wk.source);
                // Every Gemm without row dispatch has a validated variant for few rows.
                let plain_gemm = matches!(k, Kernel::Gemm(kinds::Gemm { rows: None, .. }));
                assert_eq!(wk.skinny.is_some(), plain_gemm, "{} k{i}", p.name);
                if let Some(sk) = &wk.skinny {
                    validate(&format!("{} k{i} (skinny gemm)", p.name), &sk.kernel.source);
                    skinny_layouts.insert(sk.kernel.source.contains("lane"));
                }
                // One binding per resource; the output is among them, writable.
                let out = resource_of(&p, k.output());
                assert!(wk.bindings.iter().any(|b| b.resource == out && b.writable));
                let mut rs: Vec<Resource> = wk.bindings.iter().map(|b| b.resource).collect();
                rs.sort();
                rs.dedup();
                assert_eq!(
                    rs.len(),
                    wk.bindings.len(),
                    "{} k{i}: duplicate bindings",
                    p.name
                );
            }
        }
    }
    assert_eq!(skinny_layouts.len(), 2, "both skinny Gemm layouts");
    // Every kernel kind the tiny models produce was generated and validated.
    for kind in ["elementwise", "row_reduce", "gemm", "gather", "attention"] {
        assert!(
            kinds.contains(kind),
            "no {kind} kernel among the tiny models"
        );
    }
}

/// With f16 parameters every shader still validates (given the f16
/// capability), every f32 parameter binding and only those are `f16`, and
/// a shader enables f16 exactly when it binds one.
#[test]
fn f16_parameters_validate() {
    let opts = Options {
        f16_params: true,
        ..Options::default()
    };
    let mut f16_bindings = 0;
    for path in tiny_specs() {
        for p in programs(&path) {
            let w = generate_with(&p, opts).unwrap_or_else(|e| panic!("{}: {e}", p.name));
            for (i, wk) in w.kernels.iter().enumerate() {
                let what = format!("{} k{i} ({})", p.name, p.kernels[i].kind());
                let caps = naga::valid::Capabilities::SHADER_FLOAT16;
                validate_with(&what, &wk.source, caps);
                if let Some(sk) = &wk.skinny {
                    validate_with(&what, &sk.kernel.source, caps);
                }
                let mut any = false;
                for b in &wk.bindings {
                    let param = match b.resource {
                        Resource::Buffer(id) => param_f16(&p, id, opts),
                        Resource::Slot(_) => false,
                    };
                    assert_eq!(b.elem == Elem::F16, param, "{what}: {b:?}");
                    any |= param;
                }
                f16_bindings += usize::from(any);
                assert_eq!(wk.source.starts_with("enable f16;"), any, "{what}");
            }
        }
    }
    assert!(
        f16_bindings > 100,
        "{f16_bindings} kernels bind f16 weights"
    );
}

/// With subgroups every shader validates (given the capability), and a
/// row reduction uses `subgroupAdd` exactly when it has a sum stage.
#[test]
fn subgroup_reductions_validate() {
    let opts = Options {
        subgroups: true,
        ..Options::default()
    };
    let caps = naga::valid::Capabilities::SUBGROUP;
    let mut with_sums = 0;
    for path in tiny_specs() {
        for p in programs(&path) {
            let w = generate_with(&p, opts).unwrap_or_else(|e| panic!("{}: {e}", p.name));
            for (i, (k, wk)) in p.kernels.iter().zip(&w.kernels).enumerate() {
                let what = format!("{} k{i} ({})", p.name, k.kind());
                validate_with(&what, &wk.source, caps);
                let sums = matches!(k, Kernel::RowReduce(kinds::RowReduce { stages, .. })
                    if stages.iter().any(|s| s.op == crate::ir::ReduceOp::Sum));
                assert_eq!(wk.source.contains("subgroupAdd("), sums, "{what}");
                assert_eq!(wk.source.contains("sg_lane"), sums, "{what}");
                with_sums += usize::from(sums);
            }
        }
    }
    assert!(with_sums > 50, "{with_sums} reductions with sums");
}

fn buf(name: &str, dtype: DType, shape: Vec<Dim>, kind: BufferKind) -> Buffer {
    Buffer {
        name: name.into(),
        dtype,
        shape,
        kind,
        capacity: None,
    }
}

fn view(b: BufId, strides: &[Size]) -> View {
    View {
        buf: b,
        offset: Size::zero(),
        strides: strides.to_vec(),
    }
}

/// Paths the tiny models may not take: Copy, a Gemm with row dispatch, an
/// in-place cast (one slot read as f32 and written as i32), bool and i32
/// reductions, every unary and binary op.
#[test]
fn hand_built_kernels_validate() {
    use crate::ir::{BinaryOp, ReduceOp, UnaryOp};
    let seq = Dim::sym("seq");
    let s = Size::sym("seq");
    let buffers = vec![
        buf(
            "x",
            DType::F32,
            vec![seq.clone(), Dim::c(8)],
            BufferKind::Input("x".into()),
        ),
        buf(
            "w",
            DType::F32,
            vec![Dim::c(16), Dim::c(8)],
            BufferKind::Param("w".into()),
        ),
        buf("gate", DType::F32, vec![seq.clone()], BufferKind::Temp),
        buf(
            "y",
            DType::F32,
            vec![seq.clone(), Dim::c(16)],
            BufferKind::Output,
        ),
        buf(
            "t",
            DType::F32,
            vec![seq.clone(), Dim::c(8)],
            BufferKind::Temp,
        ),
        buf(
            "ti",
            DType::I32,
            vec![seq.clone(), Dim::c(8)],
            BufferKind::Temp,
        ),
        buf("red", DType::Bool, vec![seq.clone()], BufferKind::Output),
    ];
    let mut insts = vec![(Inst::Load(0), DType::F32)];
    for op in [
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
    ] {
        let x = insts.len() - 1;
        insts.push((Inst::Unary(op, x), DType::F32));
    }
    for op in [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Max,
        BinaryOp::Min,
        BinaryOp::Pow,
    ] {
        let x = insts.len() - 1;
        insts.push((Inst::Binary(op, x, 0), DType::F32));
    }
    let f = insts.len() - 1;
    insts.extend([
        (Inst::Cast(f), DType::I32),
        (Inst::Index(1), DType::I32),
        (Inst::Size(&s * &s), DType::I32),
        (Inst::Const(f64::from(i32::MIN)), DType::I32),
    ]);
    let i = insts.len() - 4;
    for op in [
        BinaryOp::Add,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Max,
        BinaryOp::Pow,
    ] {
        let x = insts.len() - 1;
        insts.push((Inst::Binary(op, x, i + 1), DType::I32));
    }
    let last_i = insts.len() - 1;
    insts.extend([
        (Inst::Unary(UnaryOp::Abs, last_i), DType::I32),
        (Inst::Binary(BinaryOp::Lt, last_i, i), DType::Bool),
        (Inst::Binary(BinaryOp::Le, f, 0), DType::Bool),
    ]);
    let n = insts.len();
    insts.extend([
        (Inst::Binary(BinaryOp::And, n - 2, n - 1), DType::Bool),
        (Inst::Unary(UnaryOp::Not, n), DType::Bool),
        (Inst::Const(f64::NEG_INFINITY), DType::F32),
        (Inst::Select(n + 1, f, n + 2), DType::F32),
        (Inst::Cast(n + 1), DType::F32),
        (Inst::Binary(BinaryOp::Add, n + 3, n + 4), DType::F32),
    ]);
    let every_op = Body {
        result: insts.len() - 1,
        insts,
    };
    let s8 = [Size::c(8), Size::one()];
    let kernels = vec![
        // In place: t (slot 0) is read as f32 and written as ti (slot 0, i32).
        Kernel::Elementwise(kinds::Elementwise {
            out: view(4, &s8),
            domain: vec![seq.clone(), Dim::c(8)],
            loads: vec![view(0, &s8)],
            body: every_op,
        }),
        Kernel::Elementwise(kinds::Elementwise {
            out: view(5, &s8),
            domain: vec![seq.clone(), Dim::c(8)],
            loads: vec![view(4, &s8)],
            body: Body {
                insts: vec![(Inst::Load(0), DType::F32), (Inst::Cast(0), DType::I32)],
                result: 1,
            },
        }),
        Kernel::Copy(kinds::Copy {
            out: view(4, &s8),
            domain: vec![seq.clone(), Dim::c(8)],
            src: View {
                buf: 0,
                offset: Size::c(3),
                strides: vec![Size::one(), s.clone()],
            },
        }),
        Kernel::RowReduce(kinds::RowReduce {
            out: view(6, &[Size::one(), Size::zero()]),
            domain: vec![seq.clone(), Dim::c(8)],
            loads: vec![view(5, &s8)],
            stages: vec![
                crate::kernel::Stage {
                    op: ReduceOp::Max,
                    body: Body {
                        insts: vec![
                            (Inst::Load(0), DType::I32),
                            (Inst::Const(0.0), DType::I32),
                            (Inst::Binary(BinaryOp::Lt, 1, 0), DType::Bool),
                        ],
                        result: 2,
                    },
                },
                crate::kernel::Stage {
                    op: ReduceOp::Sum,
                    body: Body {
                        insts: vec![(Inst::Load(0), DType::I32)],
                        result: 0,
                    },
                },
            ],
            epilogue: Body {
                insts: vec![
                    (Inst::Reduced(0), DType::Bool),
                    (Inst::Reduced(1), DType::I32),
                    (Inst::Const(3.0), DType::I32),
                    (Inst::Binary(BinaryOp::Lt, 1, 2), DType::Bool),
                    (Inst::Binary(BinaryOp::Or, 0, 3), DType::Bool),
                ],
                result: 4,
            },
            per_row: true,
        }),
        Kernel::Elementwise(kinds::Elementwise {
            out: view(2, &[Size::one()]),
            domain: vec![seq.clone()],
            loads: vec![view(6, &[Size::one()])],
            body: Body {
                insts: vec![(Inst::Load(0), DType::Bool), (Inst::Cast(0), DType::F32)],
                result: 1,
            },
        }),
        // y = x · wᵀ for the rows the gate picks, plus a bias-like epilogue.
        Kernel::Gemm(kinds::Gemm {
            out: view(3, &[Size::c(16), Size::one()]),
            a: view(0, &s8),
            b: view(1, &[Size::one(), Size::c(8)]),
            batch: vec![],
            m: seq.clone(),
            n: Dim::c(16),
            k: Dim::c(8),
            epilogue: Some(Epilogue {
                loads: vec![view(2, &[Size::one(), Size::zero()])],
                body: Body {
                    insts: vec![
                        (Inst::Reduced(0), DType::F32),
                        (Inst::Load(0), DType::F32),
                        (Inst::Binary(BinaryOp::Mul, 0, 1), DType::F32),
                    ],
                    result: 2,
                },
            }),
            rows: Some(view(2, &[Size::one()])),
        }),
    ];
    let slot_of = vec![None, None, Some(1), None, Some(0), Some(0), None];
    // Start from a real program so every field (present and future) is set.
    let mut p = programs(&tiny_specs()[0]).remove(0);
    p.name = "hand".into();
    p.buffers = buffers;
    p.kernels = kernels;
    p.inputs = vec![("x".into(), 0)];
    p.outputs = vec![("y".into(), 3), ("red".into(), 6)];
    p.plan = BufferPlan {
        slots: vec![&s * &Size::c(32), s.clone().scale(4)],
        slot_of,
    };
    let w = generate(&p).unwrap();
    for (i, k) in w.kernels.iter().enumerate() {
        validate(&format!("hand k{i}"), &k.source);
    }
    // The in-place cast reads and writes slot 0 through one u32 binding.
    assert_eq!(
        w.kernels[1].bindings,
        vec![Binding {
            resource: Resource::Slot(0),
            elem: Elem::U32,
            writable: true
        }]
    );
    assert!(w.kernels[1].source.contains("bitcast<f32>(r0["));
    // Every helper was emitted once.
    for h in [
        "fn k_exp",
        "fn k_log",
        "fn k_trig",
        "fn k_erf",
        "fn k_tanh",
        "fn k_pow",
        "fn k_f2i",
    ] {
        assert_eq!(w.kernels[0].source.matches(h).count(), 1, "{h}");
    }
    // The size table holds only symbolic sizes: seq and seq², in order of use.
    assert!(w.kernels[0].sizes.contains(&(&s * &s)));
    assert!(w.kernels[0].sizes.iter().all(|x| x.as_const().is_none()));
    let eval = |x: &Size| x.eval(&|_| Some(100));
    assert_eq!(w.kernels[5].dispatch.groups(&eval), Some(2));
    assert_eq!(w.kernels[0].dispatch.groups(&eval), Some(4));
    assert_eq!(w.kernels[3].dispatch.groups(&eval), Some(100));
}

#[test]
fn gpt2_shaders_snapshot() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tiny/gpt2.toml");
    let p = programs(&path).remove(0);
    let w = generate(&p).unwrap();
    // One kernel of each kind (the first), to keep the snapshot readable.
    let mut seen = std::collections::BTreeSet::new();
    let mut text = String::new();
    for (i, (k, wk)) in p.kernels.iter().zip(&w.kernels).enumerate() {
        if seen.insert(k.kind()) {
            text += &format!("// ---- k{i} {}\n{}\n", k.kind(), wk.source);
            if let Some(sk) = &wk.skinny {
                text += &format!(
                    "// ---- k{i} {} (few rows)\n{}\n",
                    k.kind(),
                    sk.kernel.source
                );
            }
        }
    }
    insta::assert_snapshot!(text);
}
