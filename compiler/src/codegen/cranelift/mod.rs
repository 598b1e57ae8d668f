//! The CPU code generator: every kernel of a [`KernelProgram`] becomes a
//! native function through Cranelift (JIT, in memory).
//!
//! Element-wise kernels, copies, row reductions and Gemm epilogues are
//! generated; the matrix product itself and gathers are left to the runtime
//! (a GEMM library is faster than anything emitted here), which calls the
//! generated epilogue on each block right after the library wrote it.
//!
//! The contract with the runtime is [`KernelFn`] plus, per kernel, the
//! [`CpuKernel::sizes`] table: symbolic sizes the runtime evaluates at the
//! run's lengths and passes in, so one compile serves every length.
//! Element semantics come from [`crate::ir::scalar`]: `log sin cos pow` call
//! it directly (bit-identical to the interpreter); `exp tanh erf` are
//! inlined polynomial approximations (≤ 1e-6 relative, see `math`). Known,
//! deliberate differences from the interpreter: sums accumulate in f32
//! (four lanes, then the tail) rather than f64; `rsqrt` is `1/sqrt` in f32
//! (two roundings); `max(-0, +0)` may give `+0`; sub-normal `exp` results
//! are zero; integer division by zero gives 0 (lowering never emits one).

mod emit;
mod math;
mod support;

use crate::ir::DType;
use crate::kernel::kinds;
use crate::kernel::{Body, Inst, Kernel, KernelProgram, Size, View};
use cranelift_codegen::ir::types::I64;
use cranelift_codegen::ir::{AbiParam, Signature, UserFuncName};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{FuncId, Linkage, Module, ModuleReloc};
use rayon::prelude::*;
use std::borrow::Cow;
use std::fmt;

/// A generated kernel: `(buffers, sizes, row_begin, row_end, col_begin, col_end)`.
///
/// - `buffers[b]` is the base address of buffer `b` of the program (every
///   buffer the kernel touches must be valid for its views);
/// - `sizes[i]` is [`CpuKernel::sizes`]`[i]` evaluated at the run's lengths;
/// - rows are the flattened leading axes of the kernel's domain (for a Gemm
///   epilogue: batch axes and `m`), columns its last axis (`n`); row
///   reductions ignore the column range and always do whole rows.
///
/// # Safety
/// The caller guarantees the buffers match the program's buffer shapes at
/// the lengths used to evaluate `sizes`, and that no two concurrent calls
/// write the same elements.
pub type KernelFn = unsafe extern "C" fn(*const *mut u8, *const i64, i64, i64, i64, i64);

pub use super::CodegenError;

/// One kernel's generated code. Its `func` points into the owning
/// [`CpuProgram`]'s code memory: it must not be called after that program
/// is dropped.
#[derive(Clone)]
pub struct CpuKernel {
    /// Sizes the function reads from its `sizes` argument, in order.
    pub sizes: Vec<Size>,
    /// The function (none for Gather, and for a Gemm without epilogue).
    pub func: Option<KernelFn>,
}

impl fmt::Debug for CpuKernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CpuKernel")
            .field("sizes", &self.sizes)
            .field("func", &self.func.map(|p| p as *const u8))
            .finish()
    }
}

/// Owns the executable memory of a compiled program.
struct Code(Option<JITModule>);

impl Drop for Code {
    fn drop(&mut self) {
        if let Some(m) = self.0.take() {
            // SAFETY: the functions are only reachable through the owning
            // `CpuProgram`, which is being dropped.
            unsafe { m.free_memory() };
        }
    }
}

/// The native code of a [`KernelProgram`], one [`CpuKernel`] per kernel.
pub struct CpuProgram {
    _code: Code,
    /// One compiled function (or none) per kernel, indexed like the program's kernels.
    pub kernels: Vec<CpuKernel>,
    /// CLIF text per kernel, when compiled with `emit_clif`.
    pub clif: Vec<Option<String>>,
}

// SAFETY: after `finalize_definitions` the code memory is immutable and the
// module is never used again except to free it on drop; the generated
// functions keep no state of their own.
unsafe impl Send for CpuProgram {}
unsafe impl Sync for CpuProgram {}

impl fmt::Debug for CpuProgram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CpuProgram")
            .field("kernels", &self.kernels)
            .finish()
    }
}

/// Code generation options.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Keep the CLIF text of every function (`kiln compile --emit clif`).
    pub emit_clif: bool,
}

fn backend(e: impl fmt::Display) -> CodegenError {
    CodegenError::Backend {
        target: "cranelift",
        message: e.to_string(),
    }
}

fn new_module() -> Result<JITModule, CodegenError> {
    let mut flags = settings::builder();
    flags.set("opt_level", "speed").map_err(backend)?;
    flags
        .set("use_colocated_libcalls", "false")
        .map_err(backend)?;
    flags.set("is_pic", "false").map_err(backend)?;
    // Cranelift's IR verifier runs in debug builds (the tests and CI) and
    // is skipped in release, where it was ~8 % of code generation.
    let verify = if cfg!(debug_assertions) {
        "true"
    } else {
        "false"
    };
    flags.set("enable_verifier", verify).map_err(backend)?;
    let isa = cranelift_native::builder()
        .map_err(backend)?
        .finish(settings::Flags::new(flags))
        .map_err(backend)?;
    let mut jb = JITBuilder::with_isa(isa, cranelift_module::default_libcall_names());
    // Every symbol the code can reference is registered: an unresolved one
    // would abort in `finalize_definitions`.
    for (name, ptr) in support::symbols() {
        jb.symbol(name, ptr);
    }
    Ok(JITModule::new(jb))
}

fn kernel_signature(m: &JITModule) -> Signature {
    let mut sig = m.make_signature();
    for _ in 0..6 {
        sig.params.push(AbiParam::new(I64));
    }
    sig
}

/// Columns of the scratch block an Attention kernel's score function works
/// on (the row pitch of that block).
pub const ATTENTION_KEY_BLOCK: usize = 64;

/// The scratch block of an Attention kernel's score function is passed as
/// buffer number `buffers.len()` of the program: its function reads the raw
/// dot products from it and writes the scores back in place, at
/// `row · ATTENTION_KEY_BLOCK + column`, rows being the flattened
/// `(batch.., m)` and columns the keys. The caller points that entry at
/// `block - (row_begin · ATTENTION_KEY_BLOCK + col_begin)` elements.
pub fn attention_scratch(p: &KernelProgram) -> usize {
    p.buffers.len()
}

/// What to generate for one kernel.
enum Plan<'a> {
    Elementwise {
        out: std::borrow::Cow<'a, View>,
        out_dtype: DType,
        domain: Vec<crate::ir::Dim>,
        loads: Vec<(View, DType)>,
        body: Body,
    },
    RowReduce(&'a Kernel),
    None,
}

/// Compile every kernel of `p` to native code.
pub fn compile(p: &KernelProgram, opts: Options) -> Result<CpuProgram, CodegenError> {
    let mut module = new_module()?;
    let externs = support::declare(&mut module)?;
    let sig = kernel_signature(&module);
    let mut ctx = module.make_context();
    let mut fctx = FunctionBuilderContext::new();
    // Functions built (sequentially: declaring needs the module), compiled
    // to machine code in parallel below, then defined in the module.
    let mut built: Vec<(usize, FuncId, cranelift_codegen::Context)> = Vec::new();
    let mut ids: Vec<Option<FuncId>> = Vec::new();
    let mut tables = Vec::new();
    let mut clif = Vec::new();
    let dtype = |b: usize| p.buffers[b].dtype;
    let with_dtype = |vs: &[View]| -> Vec<(View, DType)> {
        vs.iter().map(|v| (v.clone(), dtype(v.buf))).collect()
    };
    for (ki, k) in p.kernels.iter().enumerate() {
        let kerr = |message: String| CodegenError::Kernel {
            kernel: ki,
            kind: k.kind(),
            message,
        };
        let plan = match k {
            Kernel::Elementwise(kinds::Elementwise {
                out,
                domain,
                loads,
                body,
            }) => Plan::Elementwise {
                out: Cow::Borrowed(out),
                out_dtype: dtype(out.buf),
                domain: domain.clone(),
                loads: with_dtype(loads),
                body: body.clone(),
            },
            Kernel::Copy(kinds::Copy { out, domain, src }) => Plan::Elementwise {
                out: Cow::Borrowed(out),
                out_dtype: dtype(out.buf),
                domain: domain.clone(),
                loads: with_dtype(std::slice::from_ref(src)),
                body: Body {
                    insts: vec![(Inst::Load(0), dtype(src.buf))],
                    result: 0,
                },
            },
            Kernel::Gemm(kinds::Gemm { out, a, b, .. })
                if [out.buf, a.buf, b.buf]
                    .iter()
                    .any(|&x| dtype(x) != DType::F32) =>
            {
                return Err(kerr("matrix products are f32 only".into()));
            }
            Kernel::Gemm(kinds::Gemm {
                out,
                batch,
                m,
                n,
                epilogue: Some(e),
                ..
            }) => {
                // The product is read back from `out` as the last load.
                let mut loads = with_dtype(&e.loads);
                let product = loads.len();
                loads.push((out.clone(), DType::F32));
                let mut body = e.body.clone();
                for (inst, _) in &mut body.insts {
                    if matches!(inst, Inst::Reduced(0)) {
                        *inst = Inst::Load(product);
                    }
                }
                let mut domain = batch.clone();
                domain.extend([m.clone(), n.clone()]);
                Plan::Elementwise {
                    out: Cow::Borrowed(out),
                    out_dtype: DType::F32,
                    domain,
                    loads,
                    body,
                }
            }
            Kernel::Attention(kinds::Attention { q, kt, v, out, .. })
                if [out.buf, q.buf, kt.buf, v.buf]
                    .iter()
                    .any(|&x| dtype(x) != DType::F32) =>
            {
                return Err(kerr("attention is f32 only".into()));
            }
            Kernel::Attention(kinds::Attention {
                batch,
                m,
                keys,
                score: Some(e),
                ..
            }) => {
                // Scores in, scores out: the scratch block is the product
                // (the last load) and the output.
                let mut domain = batch.clone();
                domain.push(m.clone());
                let mut pitch = domain.clone();
                pitch.push(crate::ir::Dim::c(ATTENTION_KEY_BLOCK));
                domain.push(keys.clone());
                let block = View {
                    buf: attention_scratch(p),
                    offset: Size::zero(),
                    strides: crate::kernel::row_major(&pitch),
                };
                let mut loads = with_dtype(&e.loads);
                let product = loads.len();
                loads.push((block.clone(), DType::F32));
                let mut body = e.body.clone();
                for (inst, _) in &mut body.insts {
                    if matches!(inst, Inst::Reduced(0)) {
                        *inst = Inst::Load(product);
                    }
                }
                Plan::Elementwise {
                    out: Cow::Owned(block),
                    out_dtype: DType::F32,
                    domain,
                    loads,
                    body,
                }
            }
            Kernel::RowReduce(kinds::RowReduce { .. }) => Plan::RowReduce(k),
            Kernel::Gemm(kinds::Gemm { .. })
            | Kernel::Gather(kinds::Gather { .. })
            | Kernel::Attention(kinds::Attention { .. }) => Plan::None,
        };
        let (table, views): (Vec<Size>, Vec<&View>) = match &plan {
            Plan::Elementwise {
                out,
                domain,
                loads,
                body,
                ..
            } => {
                let views: Vec<&View> = std::iter::once(out.as_ref())
                    .chain(loads.iter().map(|(v, _)| v))
                    .collect();
                let dims = scalar_domain(domain);
                let t = emit::size_table(views.iter().copied(), &dims, &[body]);
                (t, views)
            }
            Plan::RowReduce(Kernel::RowReduce(kinds::RowReduce {
                out,
                domain,
                loads,
                stages,
                epilogue,
                ..
            })) => {
                let views: Vec<&View> = std::iter::once(out).chain(loads.iter()).collect();
                let mut bodies: Vec<&Body> = stages.iter().map(|s| &s.body).collect();
                bodies.push(epilogue);
                let t = emit::size_table(views.iter().copied(), domain, &bodies);
                (t, views)
            }
            _ => (Vec::new(), Vec::new()),
        };
        if matches!(plan, Plan::None) {
            ids.push(None);
            tables.push(table);
            clif.push(None);
            continue;
        }
        let name = format!("k{ki}_{}", k.kind());
        let id = module
            .declare_function(&name, Linkage::Local, &sig)
            .map_err(backend)?;
        ctx.func.signature = sig.clone();
        ctx.func.name = UserFuncName::user(0, id.as_u32());
        {
            let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
            let ext = support::import(&externs, &mut module, &mut b)?;
            let mut bufs: Vec<usize> = views.iter().map(|v| v.buf).collect();
            bufs.sort_unstable();
            bufs.dedup();
            let mut g = emit::Gen::new(&mut b, ext, &table, &bufs);
            match &plan {
                Plan::Elementwise {
                    out,
                    out_dtype,
                    domain,
                    loads,
                    body,
                } => {
                    let (domain, out, loads) = scalar_views(domain, out, loads);
                    emit::elementwise(&mut g, &out, *out_dtype, &domain, &loads, body)
                        .map_err(kerr)?;
                }
                Plan::RowReduce(Kernel::RowReduce(kinds::RowReduce {
                    out,
                    domain,
                    loads,
                    stages,
                    epilogue,
                    per_row,
                })) => {
                    if domain.is_empty() {
                        return Err(kerr("a row reduction needs an axis".into()));
                    }
                    emit::row_reduce(
                        &mut g,
                        out,
                        dtype(out.buf),
                        domain,
                        &with_dtype(loads),
                        stages,
                        epilogue,
                        *per_row,
                    )
                    .map_err(kerr)?;
                }
                _ => unreachable!("planned kinds only"),
            }
            b.seal_all_blocks();
            b.finalize(module.target_config());
        }
        clif.push(opts.emit_clif.then(|| ctx.func.display().to_string()));
        built.push((ki, id, std::mem::replace(&mut ctx, module.make_context())));
        ids.push(Some(id));
        tables.push(table);
    }
    let isa = module.isa();
    let machine: Vec<Result<MachineCode, CodegenError>> = built
        .par_iter_mut()
        .map(|(ki, id, ctx)| {
            let k = &p.kernels[*ki];
            let failed = |e: String| CodegenError::Kernel {
                kernel: *ki,
                kind: k.kind(),
                message: e,
            };
            let alignment = match ctx.compile(isa, &mut Default::default()) {
                Ok(res) => u64::from(res.buffer.alignment),
                Err(e) => {
                    return Err(failed(format!("{:?}\n{}", e.inner, e.func.display())));
                }
            };
            let code = ctx.compiled_code().expect("just compiled");
            let relocs = (code.buffer.relocs().iter())
                .map(|r| ModuleReloc::from_mach_reloc(r, &ctx.func, *id))
                .collect();
            Ok(MachineCode {
                bytes: code.code_buffer().to_vec(),
                alignment: alignment
                    .max(u64::from(isa.function_alignment().minimum))
                    .max(isa.symbol_alignment()),
                relocs,
            })
        })
        .collect();
    for ((_, id, _), m) in built.iter().zip(machine) {
        let m = m?;
        module
            .define_function_bytes(*id, m.alignment, &m.bytes, &m.relocs)
            .map_err(backend)?;
    }
    module.finalize_definitions().map_err(backend)?;
    let kernels = ids
        .into_iter()
        .zip(tables)
        .map(|(id, sizes)| CpuKernel {
            sizes,
            func: id.map(|id| {
                let ptr = module.get_finalized_function(id);
                // SAFETY: defined above with `kernel_signature`, which is
                // the platform C convention over six i64/pointer arguments.
                unsafe { std::mem::transmute::<*const u8, KernelFn>(ptr) }
            }),
        })
        .collect();
    Ok(CpuProgram {
        _code: Code(Some(module)),
        kernels,
        clif,
    })
}

/// One kernel's machine code, ready to define in the module.
struct MachineCode {
    bytes: Vec<u8>,
    alignment: u64,
    relocs: Vec<ModuleReloc>,
}

/// A rank-0 domain as one row of one column.
fn scalar_domain(domain: &[crate::ir::Dim]) -> Vec<crate::ir::Dim> {
    if domain.is_empty() {
        vec![crate::ir::Dim::c(1)]
    } else {
        domain.to_vec()
    }
}

fn scalar_views(
    domain: &[crate::ir::Dim],
    out: &View,
    loads: &[(View, DType)],
) -> (Vec<crate::ir::Dim>, View, Vec<(View, DType)>) {
    if !domain.is_empty() {
        return (domain.to_vec(), out.clone(), loads.to_vec());
    }
    let widen = |v: &View| View {
        buf: v.buf,
        offset: v.offset.clone(),
        strides: vec![Size::zero()],
    };
    (
        scalar_domain(domain),
        widen(out),
        loads.iter().map(|(v, d)| (widen(v), *d)).collect(),
    )
}

#[cfg(test)]
mod tests;
