//! Executors of IR graphs. The reference interpreter ([`crate::run`]) is the
//! oracle; [`jit`] is the CPU backend built on the Cranelift code generator.
//! A [`Backend`] names one; [`crate::session::Model::compile`] prepares a
//! model for it.

pub mod jit;
pub mod machine;

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
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Jit => "jit",
            Backend::Reference => "reference",
        })
    }
}

impl FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "jit" => Ok(Backend::Jit),
            "reference" => Ok(Backend::Reference),
            other => Err(format!(
                "unknown backend `{other}`: expected `jit` or `reference`"
            )),
        }
    }
}
