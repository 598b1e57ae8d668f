//! Code generators: each turns a fused [`KernelProgram`](crate::kernel::KernelProgram)
//! into code for one target and knows nothing of the others or of the
//! runtime that will call it; the contract is the kernel IR plus the calling
//! convention each generator documents.
//!
//! - [`cranelift`]: native CPU functions, JIT-compiled in memory.
//! - [`wgsl`]: WGSL compute shaders, one per kernel, run through wgpu.

pub mod cranelift;
pub mod wgsl;

/// Why a code generator could not translate a program (a kiln bug or a
/// kernel it does not support yet; never the user's input, which the
/// validator and the IR have checked before).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodegenError {
    /// The target's own toolchain rejected the module or could not finish it.
    #[error("{target}: {message}")]
    Backend {
        /// `cranelift` or `wgsl`.
        target: &'static str,
        /// What the toolchain said.
        message: String,
    },
    /// A kernel could not be translated.
    #[error("kernel k{kernel} ({kind}): {message}")]
    Kernel {
        /// The kernel's index in the program.
        kernel: usize,
        /// The kernel's kind (`Kernel::kind`).
        kind: &'static str,
        /// What went wrong.
        message: String,
    },
}
