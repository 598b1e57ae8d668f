//! The scalar helpers generated code calls, and the libcalls Cranelift may
//! emit. Each helper is the IR's numeric contract ([`crate::ir::scalar`]),
//! so these ops are bit-identical to the reference interpreter.

use super::emit::Externs;
use super::{CodegenError, backend};
use crate::ir::{BinaryOp, UnaryOp, scalar};
use cranelift_codegen::ir::types::{F32, I32};
use cranelift_codegen::ir::{AbiParam, Type};
use cranelift_frontend::FunctionBuilder;
use cranelift_jit::JITModule;
use cranelift_module::{FuncId, Linkage, Module};

fn unary(op: UnaryOp, x: f32) -> f32 {
    scalar::f32_unary(op).expect("defined on f32")(x)
}

extern "C" fn kiln_logf(x: f32) -> f32 {
    unary(UnaryOp::Log, x)
}
extern "C" fn kiln_sinf(x: f32) -> f32 {
    unary(UnaryOp::Sin, x)
}
extern "C" fn kiln_cosf(x: f32) -> f32 {
    unary(UnaryOp::Cos, x)
}
extern "C" fn kiln_powf(x: f32, y: f32) -> f32 {
    scalar::f32_binary(BinaryOp::Pow).expect("defined on f32")(x, y)
}
extern "C" fn kiln_ipow(x: i32, y: i32) -> i32 {
    scalar::i32_binary(BinaryOp::Pow).expect("defined on i32")(x, y)
}

// Libcalls Cranelift emits when the host lacks an instruction (no FMA or
// SSE4.1); registered so an unusual host still links.
extern "C" fn fmaf(a: f32, b: f32, c: f32) -> f32 {
    a.mul_add(b, c)
}
extern "C" fn fma(a: f64, b: f64, c: f64) -> f64 {
    a.mul_add(b, c)
}
extern "C" fn floorf(a: f32) -> f32 {
    a.floor()
}
extern "C" fn floor(a: f64) -> f64 {
    a.floor()
}
extern "C" fn ceilf(a: f32) -> f32 {
    a.ceil()
}
extern "C" fn ceil(a: f64) -> f64 {
    a.ceil()
}
extern "C" fn truncf(a: f32) -> f32 {
    a.trunc()
}
extern "C" fn trunc(a: f64) -> f64 {
    a.trunc()
}
extern "C" fn nearbyintf(a: f32) -> f32 {
    a.round_ties_even()
}
extern "C" fn nearbyint(a: f64) -> f64 {
    a.round_ties_even()
}

/// Every symbol the JIT may need to resolve.
pub fn symbols() -> Vec<(&'static str, *const u8)> {
    vec![
        ("kiln_logf", kiln_logf as *const u8),
        ("kiln_sinf", kiln_sinf as *const u8),
        ("kiln_cosf", kiln_cosf as *const u8),
        ("kiln_powf", kiln_powf as *const u8),
        ("kiln_ipow", kiln_ipow as *const u8),
        ("fmaf", fmaf as *const u8),
        ("fma", fma as *const u8),
        ("floorf", floorf as *const u8),
        ("floor", floor as *const u8),
        ("ceilf", ceilf as *const u8),
        ("ceil", ceil as *const u8),
        ("truncf", truncf as *const u8),
        ("trunc", trunc as *const u8),
        ("nearbyintf", nearbyintf as *const u8),
        ("nearbyint", nearbyint as *const u8),
    ]
}

/// The helpers declared once per module.
pub struct Declared {
    ids: [FuncId; 5],
}

fn declare_one(
    m: &mut JITModule,
    name: &str,
    params: &[Type],
    ret: Type,
) -> Result<FuncId, CodegenError> {
    let mut sig = m.make_signature();
    sig.params.extend(params.iter().map(|&t| AbiParam::new(t)));
    sig.returns.push(AbiParam::new(ret));
    m.declare_function(name, Linkage::Import, &sig)
        .map_err(backend)
}

pub fn declare(m: &mut JITModule) -> Result<Declared, CodegenError> {
    Ok(Declared {
        ids: [
            declare_one(m, "kiln_logf", &[F32], F32)?,
            declare_one(m, "kiln_sinf", &[F32], F32)?,
            declare_one(m, "kiln_cosf", &[F32], F32)?,
            declare_one(m, "kiln_powf", &[F32, F32], F32)?,
            declare_one(m, "kiln_ipow", &[I32, I32], I32)?,
        ],
    })
}

/// References to the helpers from inside one function.
pub fn import(
    d: &Declared,
    m: &mut JITModule,
    b: &mut FunctionBuilder,
) -> Result<Externs, CodegenError> {
    let r = d.ids.map(|id| m.declare_func_in_func(id, b.func));
    Ok(Externs {
        logf: r[0],
        sinf: r[1],
        cosf: r[2],
        powf: r[3],
        ipow: r[4],
    })
}
