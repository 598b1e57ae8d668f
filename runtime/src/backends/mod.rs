//! Executors of IR graphs. The reference interpreter ([`crate::run`]) is the
//! oracle; [`jit`] is the CPU backend built on the Cranelift code generator;
//! `wgpu` (feature `wgpu`, on by default) runs WGSL shaders on a GPU.
//! A [`Backend`] names one; [`crate::session::Model::compile`] prepares a
//! model for it.

pub mod jit;
pub mod machine;
pub mod profile;
#[cfg(feature = "wgpu")]
pub mod wgpu;

use std::fmt;
use std::str::FromStr;

/// Which executor runs a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// Cranelift-compiled native kernels (the default).
    #[default]
    Jit,
    /// The reference interpreter: slow, exact, the oracle.
    Reference,
    /// WGSL compute shaders through wgpu (Vulkan or GL; needs the `wgpu`
    /// feature and an adapter).
    Wgpu,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Jit => "jit",
            Backend::Reference => "reference",
            Backend::Wgpu => "wgpu",
        })
    }
}

/// How weights are stored where a backend offers a choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 weights and arithmetic (every backend; the default).
    #[default]
    F32,
    /// f16 weights, f32 arithmetic: the wgpu backend on an adapter with
    /// `SHADER_F16` (elsewhere it keeps f32). Half the weight memory and
    /// bandwidth; outputs within about 1e-2 relative of f32.
    F16,
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
        })
    }
}

impl FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "f16" => Ok(Precision::F16),
            other => Err(format!(
                "unknown precision `{other}`: expected `f32` or `f16`"
            )),
        }
    }
}

impl FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "jit" => Ok(Backend::Jit),
            "reference" => Ok(Backend::Reference),
            "wgpu" => Ok(Backend::Wgpu),
            other => Err(format!(
                "unknown backend `{other}`: expected `jit`, `reference` or `wgpu`"
            )),
        }
    }
}
