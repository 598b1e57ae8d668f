//! Code generators: each turns a fused [`KernelProgram`](crate::kernel::KernelProgram)
//! into code for one target and knows nothing of the others or of the
//! runtime that will call it; the contract is the kernel IR plus the calling
//! convention each generator documents.
//!
//! - [`cranelift`]: native CPU functions, JIT-compiled in memory.
//! - [`wgsl`]: WGSL compute shaders, one per kernel, run through wgpu.

pub mod cranelift;
pub mod wgsl;
