//! Executors of IR graphs. The reference interpreter ([`crate::run`]) is the
//! oracle; [`jit`] is the CPU backend built on the Cranelift code generator.
//! A [`Backend`] names one; [`CompiledGraph`] is a graph prepared for it.

pub mod jit;

use crate::error::Result;
use crate::interpreter::{NamedTensor, Outputs};
use crate::weights::Weights;
use kiln_compiler::ir::Graph;
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

/// A graph ready to run on one backend.
pub enum CompiledGraph {
    Reference(Graph),
    Jit(Box<jit::JitGraph>),
}

impl CompiledGraph {
    pub fn new(graph: &Graph, backend: Backend) -> Result<CompiledGraph> {
        Ok(match backend {
            Backend::Reference => CompiledGraph::Reference(graph.clone()),
            Backend::Jit => CompiledGraph::Jit(Box::new(jit::JitGraph::compile(graph)?)),
        })
    }

    pub fn run<N: NamedTensor>(
        &self,
        weights: &Weights,
        inputs: impl IntoIterator<Item = N>,
    ) -> Result<Outputs> {
        match self {
            CompiledGraph::Reference(g) => crate::run(g, weights, inputs),
            CompiledGraph::Jit(j) => j.run(weights, inputs),
        }
    }
}
