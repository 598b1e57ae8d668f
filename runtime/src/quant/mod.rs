//! Weights kept in their stored format and the kernels that multiply by
//! them: block formats ([`blocks`]), weights as rows of blocks over shared
//! bytes ([`matrix`]), and row dot products against quantised activations
//! with AVX-512 VNNI, AVX2 and portable paths ([`dot`]), and packed integer
//! products of many rows with AVX-512 VNNI ([`gemm`]).

pub mod blocks;
pub mod dot;
pub mod gemm;
pub mod matrix;

pub use blocks::{BlockFormat, bf16_to_f32, f16_to_f32};
pub use dot::{Isa, Q8Acts};
pub use matrix::{QuantMatrix, SharedBytes};

#[cfg(test)]
mod tests;
