//! The GPU code generator: every kernel of a [`KernelProgram`] becomes one
//! WGSL compute shader (entry point `main`), run by the runtime through wgpu.
//!
//! # Calling convention
//! Each [`WgslKernel`] lists its storage [`Binding`]s (`@group(0)
//! @binding(i)` for `bindings[i]`), then one uniform at `@binding(n)` (`n =
//! bindings.len()`): the kernel's size table, `array<vec4<i32>, ⌈len/4⌉>`
//! holding [`WgslKernel::sizes`] evaluated at the run's lengths (constants
//! are inlined, only symbolic sizes are in the table), so one compile serves
//! every batch, sequence and cache length.
//!
//! Bindings are per [`Resource`], not per kernel-IR buffer: temporaries live
//! in the [`BufferPlan`](crate::kernel::BufferPlan)'s slots, and a kernel
//! that writes in place reads and writes one slot through one binding. A
//! resource seen with one element type is an array of it (`f32`, `i32`;
//! `bool` is `u32` 0/1); one seen with several (an in-place cast) is
//! `array<u32>` accessed through bitcasts. Every element is 4 bytes.
//!
//! The runtime dispatches [`Dispatch::groups`] workgroups as
//! `(min(g, 65535), ⌈g / 65535⌉, 1)`; shaders linearise the workgroup id and
//! ignore the excess.
//!
//! # Kernels
//! - Elementwise, Copy, Gather: one invocation per output element (256 per
//!   workgroup).
//! - RowReduce: one workgroup (128 invocations) per row; each stage
//!   accumulates a strided partial per invocation and combines them with a
//!   workgroup-shared tree, then the epilogue runs per element (or once per
//!   row).
//! - Gemm: 64×64 output tiles, 256 invocations computing 4×4 each, operand
//!   tiles of depth 16 staged in workgroup memory (loaded along whichever
//!   axis is contiguous), the epilogue applied to each element before it is
//!   stored; with row dispatch, a tile whose rows are all skipped only
//!   writes zeros.
//! - Attention: one workgroup (64 invocations) per query row, streaming
//!   over keys in blocks of 64 with an online softmax: each invocation scores
//!   one key of the block (dot product, then the score body inlined), the
//!   block's max and sum are tree reductions, and each invocation keeps
//!   `⌈dv/64⌉` output accumulators rescaled as the running max grows.
//!
//! # Numerics
//! f32 arithmetic everywhere. With [`Options::f16_params`] the f32
//! parameters (the weights) are stored as f16 (`enable f16;`, which needs
//! the adapter's `SHADER_F16`) and widened to f32 as they are loaded: half
//! the memory and bandwidth for weights, rounding each to 11 significant
//! bits (about 5e-4 relative). Element semantics
//! follow [`crate::ir::scalar`], with transcendental functions as
//! polynomials (see `math`). Sums accumulate in f32 (strided partials, then
//! a tree), so results differ from the f64-accumulating oracle by rounding,
//! like the CPU generator. A gather index outside the table gives 0 (the
//! interpreter reports an error; the session checks token ids first).

mod emit;
mod math;
#[cfg(test)]
mod tests;

use crate::ir::DType;
use crate::kernel::{BufId, BufferKind, KernelProgram, Size};
use std::fmt::Write as _;

/// Invocations per workgroup of element-wise, copy and gather kernels.
pub const ELEMENT_THREADS: u32 = 256;
/// Invocations per workgroup (one row) of row reductions.
pub const ROW_THREADS: u32 = 128;
/// Invocations per workgroup (one query) of attention; also its key block.
pub const ATTENTION_THREADS: u32 = 64;
/// Rows and columns of a Gemm output tile.
pub const GEMM_TILE: u32 = 64;

/// Bytes per element of every dtype in GPU storage (bool is a `u32`),
/// except parameters stored as f16 ([`param_f16`]).
pub const ELEMENT_BYTES: u64 = 4;

/// Code generation choices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// Store every f32 parameter as f16 (see [`param_f16`]); arithmetic
    /// stays f32.
    pub f16_params: bool,
    /// Sum stages of row reductions combine their partials with
    /// `subgroupAdd` (one partial per subgroup, then one barrier) instead of
    /// a seven-step shared-memory tree; needs the adapter's `SUBGROUP`.
    /// Maxima keep the tree: the IR's max propagates NaN, which
    /// `subgroupMax` does not promise.
    pub subgroups: bool,
}

/// Whether buffer `b` is stored as f16 on the device under `opts`: an f32
/// parameter with [`Options::f16_params`]. The runtime uploads exactly
/// these as f16 (2 bytes per element).
pub fn param_f16(p: &KernelProgram, b: BufId, opts: Options) -> bool {
    let buf = &p.buffers[b];
    opts.f16_params && matches!(buf.kind, BufferKind::Param(_)) && buf.dtype == DType::F32
}

/// What a binding is bound to at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    /// A program buffer that is not a planned temporary (input, parameter,
    /// output, literal).
    Buffer(BufId),
    /// A slot of the program's buffer plan.
    Slot(usize),
}

/// Where buffer `b` lives: its plan slot if it is a temporary.
pub fn resource_of(p: &KernelProgram, b: BufId) -> Resource {
    match (&p.buffers[b].kind, p.plan.slot_of.get(b).copied().flatten()) {
        (BufferKind::Temp, Some(s)) => Resource::Slot(s),
        _ => Resource::Buffer(b),
    }
}

/// The element type of a storage array in WGSL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    F32,
    /// An f32 parameter stored as f16 ([`Options::f16_params`]).
    F16,
    I32,
    /// bool (0/1), or raw bits of a resource seen with several dtypes.
    U32,
}

impl Elem {
    fn wgsl(self) -> &'static str {
        match self {
            Elem::F32 => "f32",
            Elem::F16 => "f16",
            Elem::I32 => "i32",
            Elem::U32 => "u32",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    pub resource: Resource,
    pub elem: Elem,
    /// `read_write` (the kernel's output) rather than `read`.
    pub writable: bool,
}

/// How many workgroups a kernel needs at given lengths.
#[derive(Debug, Clone, PartialEq)]
pub enum Dispatch {
    /// One invocation per element: `⌈count / per_group⌉` workgroups.
    Threads { count: Size, per_group: u32 },
    /// One workgroup per unit (row, query).
    Groups(Size),
    /// `batch · ⌈m / tile⌉ · ⌈n / tile⌉` workgroups.
    Tiles {
        batch: Size,
        m: Size,
        n: Size,
        tile: u32,
    },
}

impl Dispatch {
    /// The workgroup count with sizes evaluated by `eval` (None if one is
    /// unbound or negative).
    pub fn groups(&self, eval: &dyn Fn(&Size) -> Option<i64>) -> Option<u64> {
        let ev = |s: &Size| eval(s).and_then(|v| u64::try_from(v).ok());
        Some(match self {
            Dispatch::Threads { count, per_group } => ev(count)?.div_ceil(u64::from(*per_group)),
            Dispatch::Groups(n) => ev(n)?,
            Dispatch::Tiles { batch, m, n, tile } => {
                let t = u64::from(*tile);
                ev(batch)? * ev(m)?.div_ceil(t) * ev(n)?.div_ceil(t)
            }
        })
    }
}

/// One kernel's shader and what the runtime needs to launch it.
#[derive(Debug, Clone, PartialEq)]
pub struct WgslKernel {
    pub source: String,
    pub bindings: Vec<Binding>,
    /// The size table (binding `bindings.len()`), in order.
    pub sizes: Vec<Size>,
    pub dispatch: Dispatch,
    /// A Gemm's variant for few rows, to run instead when they allow.
    pub skinny: Option<Skinny>,
}

/// Rows up to which a Gemm runs as its [`Skinny`] variant.
pub const SKINNY_ROWS: i64 = 4;

/// A Gemm's shader for at most [`SKINNY_ROWS`] rows (decode steps): a
/// tiled product would leave 60 of every 64 tile rows idle.
#[derive(Debug, Clone, PartialEq)]
pub struct Skinny {
    /// The kernel's row count: the variant runs when it is at most
    /// [`SKINNY_ROWS`] (together with the batch, it is bound per run).
    pub rows: Size,
    pub kernel: Box<WgslKernel>,
}

/// Every kernel of a program as WGSL, in the program's order.
#[derive(Debug, Clone, PartialEq)]
pub struct WgslProgram {
    pub name: String,
    pub kernels: Vec<WgslKernel>,
}

impl WgslProgram {
    /// Every shader with a header naming its kernel, bindings, size table
    /// and dispatch (what `kiln compile --emit wgsl` prints).
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "// program \"{}\"", self.name);
        for (i, k) in self.kernels.iter().enumerate() {
            let _ = writeln!(s, "\n// ---- k{i}");
            k.write_text(&mut s);
            if let Some(sk) = &k.skinny {
                let _ = writeln!(s, "\n// ---- k{i}, when {} <= {SKINNY_ROWS} rows", sk.rows);
                sk.kernel.write_text(&mut s);
            }
        }
        s
    }
}

impl WgslKernel {
    /// Bindings, size table and dispatch as comments, then the source.
    fn write_text(&self, s: &mut String) {
        for (b, bind) in self.bindings.iter().enumerate() {
            let r = match bind.resource {
                Resource::Buffer(id) => format!("b{id}"),
                Resource::Slot(sl) => format!("slot {sl}"),
            };
            let _ = writeln!(
                s,
                "// binding {b}: {r}{}{}",
                if bind.elem == Elem::F16 { " f16" } else { "" },
                if bind.writable { " (written)" } else { "" }
            );
        }
        let table: Vec<String> = self.sizes.iter().map(|x| x.to_string()).collect();
        let _ = writeln!(
            s,
            "// binding {}: sizes [{}]",
            self.bindings.len(),
            table.join(", ")
        );
        let d = match &self.dispatch {
            Dispatch::Threads { count, per_group } => {
                format!("{count} invocations, {per_group} per workgroup")
            }
            Dispatch::Groups(n) => format!("{n} workgroups"),
            Dispatch::Tiles { batch, m, n, tile } => {
                format!("{batch} x ceil({m}/{tile}) x ceil({n}/{tile}) workgroups")
            }
        };
        let _ = writeln!(s, "// dispatch: {d}");
        s.push_str(&self.source);
    }
}

pub use super::CodegenError;

/// Generate a shader for every kernel of `p` (f32 storage).
pub fn generate(p: &KernelProgram) -> Result<WgslProgram, CodegenError> {
    generate_with(p, Options::default())
}

/// Generate a shader for every kernel of `p` under `opts`.
pub fn generate_with(p: &KernelProgram, opts: Options) -> Result<WgslProgram, CodegenError> {
    let kernels = p
        .kernels
        .iter()
        .enumerate()
        .map(|(i, k)| {
            emit::kernel(p, k, opts).map_err(|message| CodegenError::Kernel {
                kernel: i,
                kind: k.kind(),
                message,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(WgslProgram {
        name: p.name.clone(),
        kernels,
    })
}

/// The WGSL type of a value of `dt` in a body.
fn value_type(dt: DType) -> &'static str {
    match dt {
        DType::F32 => "f32",
        DType::I32 => "i32",
        DType::Bool => "bool",
    }
}
