//! The kernel-IR backend: a plain-loop interpreter of each part's optimised
//! kernel program, with the reference interpreter's numeric contract (f64
//! accumulation, transcendental ops rounded once). Slow and exact; between
//! the reference (no compiler stage) and the JIT (the same program through
//! Cranelift) it tells a fusion bug from a code-generation bug. Weights
//! stay canonical; joined parameters are built on the fly.

mod exec;

pub use exec::{KernelOutputs, run_program};

use super::{Backend, Compiled, PartSource, PrepareOptions, Prepared};
use crate::exec::interpreter::Outputs;
use crate::{Result, RuntimeError, Tensor, Weights};
use kiln_compiler::kernel::KernelProgram;
use std::any::Any;

/// The kernel-IR interpreter (`--backend kernel-ir`).
pub struct KernelIr;

impl Backend for KernelIr {
    fn name(&self) -> &'static str {
        "kernel-ir"
    }

    fn prepare(
        &self,
        parts: Vec<PartSource<'_>>,
        _weights: &mut Weights,
        _opts: &PrepareOptions,
    ) -> Result<Prepared> {
        let parts = (parts.into_iter())
            .map(|p| {
                let program = p.program.ok_or_else(|| RuntimeError::Internal {
                    message: format!("the {} reached the kernel-IR backend uncompiled", p.part),
                })?;
                Ok((
                    p.part,
                    Box::new(ProgramPart { program }) as Box<dyn Compiled>,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(Prepared {
            parts,
            layout: None,
        })
    }
}

/// One kernel program run by the interpreter.
pub struct ProgramPart {
    program: KernelProgram,
}

impl Compiled for ProgramPart {
    fn program(&self) -> Option<&KernelProgram> {
        Some(&self.program)
    }

    fn run_host(&self, weights: &Weights, inputs: &[(&str, &Tensor)]) -> Result<Outputs> {
        let out = run_program(&self.program, weights, inputs)?;
        let bindings = out.bindings().clone();
        Ok(Outputs::from_parts(out.into_vec(), bindings))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
