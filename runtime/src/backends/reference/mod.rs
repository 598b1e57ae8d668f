//! The reference backend: the graph interpreter ([`crate::run`]) over each
//! part's graph as lowered, with the weights in their canonical layout. It
//! runs no compiler stage at all, which is what makes it the oracle.

use super::{Backend, Compiled, PartSource, PrepareOptions, Prepared};
use crate::exec::interpreter::{Interpreter, Outputs};
use crate::{Result, Tensor, Weights};
use kiln_compiler::ir::Graph;
use std::any::Any;

/// The reference interpreter (`--backend reference`).
pub struct Reference;

impl Backend for Reference {
    fn name(&self) -> &'static str {
        "reference"
    }

    fn runs_programs(&self) -> bool {
        false
    }

    fn prepare(
        &self,
        parts: Vec<PartSource<'_>>,
        _weights: &mut Weights,
        _opts: &PrepareOptions,
    ) -> Result<Prepared> {
        Ok(Prepared {
            parts: (parts.into_iter())
                .map(|p| {
                    (
                        p.part,
                        Box::new(GraphPart::new(p.graph)) as Box<dyn Compiled>,
                    )
                })
                .collect(),
            layout: None,
        })
    }
}

/// One graph run by the interpreter.
pub struct GraphPart {
    graph: Graph,
}

impl GraphPart {
    /// Interpret `graph` (a copy is kept; parameters live in the weights).
    pub fn new(graph: &Graph) -> GraphPart {
        GraphPart {
            graph: graph.clone(),
        }
    }

    /// The graph it interprets.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }
}

impl Compiled for GraphPart {
    fn run_host(&self, weights: &Weights, inputs: &[(&str, &Tensor)]) -> Result<Outputs> {
        Interpreter::new(&self.graph)?.run(weights, inputs)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
