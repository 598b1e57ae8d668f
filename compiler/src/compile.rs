//! The compiler's one entry point from a lowered [`Module`] to the optimised
//! kernel programs every backend runs: the graph passes
//! ([`crate::passes`]) then fusion and the kernel rewrites
//! ([`crate::kernel`]), both chosen by one [`CompileOptions`]. Backends
//! receive the programs and never run passes themselves, so `--opt-level`
//! and `--disable-pass` mean the same thing for every command and backend.
//!
//! ```
//! use kiln_compiler::compile::{CompileOptions, compile};
//! use kiln_compiler::ir::Part;
//!
//! let rs = kiln_compiler::spec::load_str("extends = \"gpt2\"\nlayers = 1", "x.toml".as_ref()).unwrap();
//! let module = kiln_compiler::lower::lower(&rs).unwrap();
//! let programs = compile(&module, &CompileOptions::default()).unwrap();
//! assert_eq!(programs.len(), 1);
//! assert_eq!(programs[0].0, Part::Decoder);
//!
//! let no_attention = CompileOptions { disabled_passes: vec!["attention".into()], ..Default::default() };
//! let text = compile(&module, &no_attention).unwrap()[0].1.to_text();
//! assert!(!text.contains(" attention "));
//! ```

use crate::ir::{Graph, Module, Part};
use crate::kernel::rewrite::REWRITE_NAMES;
use crate::kernel::{FuseError, FuseOptions, KernelProgram, fuse_with};
use crate::passes::{PASS_NAMES, PassError, Pipeline, pipeline_for};

/// What the compiler does between lowering and code generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileOptions {
    /// 0: the graphs as lowered; 1 (the default): simplified (simplify,
    /// const-fold, cse, merge-projections, dce).
    pub opt_level: u8,
    /// Graph passes or kernel rewrites to skip, by name
    /// ([`PASS_NAMES`], [`REWRITE_NAMES`]).
    pub disabled_passes: Vec<String>,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            opt_level: 1,
            disabled_passes: Vec::new(),
        }
    }
}

/// Why a module could not be compiled.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CompileError {
    /// `disabled` names neither a graph pass nor a kernel rewrite (a user
    /// mistake: the message lists both).
    #[error(
        "unknown pass `{name}`: graph passes are {}; kernel rewrites are {}",
        PASS_NAMES.join(", "),
        REWRITE_NAMES.join(", ")
    )]
    UnknownPass {
        /// The name given.
        name: String,
    },
    /// A graph pass failed or left a graph invalid (a compiler fault).
    #[error("graph `{graph}`: {source}")]
    Pass {
        /// The graph being optimised.
        graph: String,
        /// What the pass reported.
        #[source]
        source: PassError,
    },
    /// Fusion could not turn the graph into kernels.
    #[error(transparent)]
    Fuse(#[from] FuseError),
}

impl CompileOptions {
    /// The graph pass pipeline these options select (kernel rewrite names
    /// are left for fusion; any other unknown name is an error).
    pub fn pipeline(&self) -> Result<Pipeline, CompileError> {
        for name in &self.disabled_passes {
            if !PASS_NAMES.contains(&name.as_str()) && !REWRITE_NAMES.contains(&name.as_str()) {
                return Err(CompileError::UnknownPass { name: name.clone() });
            }
        }
        let graph_passes: Vec<&String> = (self.disabled_passes.iter())
            .filter(|n| PASS_NAMES.contains(&n.as_str()))
            .collect();
        pipeline_for(self.opt_level, &graph_passes).map_err(|source| CompileError::Pass {
            graph: String::new(),
            source,
        })
    }

    /// The fusion options these options select.
    pub fn fuse_options(&self) -> FuseOptions {
        FuseOptions {
            disabled: (self.disabled_passes.iter())
                .filter(|n| REWRITE_NAMES.contains(&n.as_str()))
                .cloned()
                .collect(),
        }
    }
}

/// Run the graph passes `opts` selects over every graph of `module`, in
/// place (what `kiln compile --emit ir` prints).
pub fn optimise(module: &mut Module, opts: &CompileOptions) -> Result<(), CompileError> {
    let pipeline = opts.pipeline()?;
    for g in module.graphs_mut() {
        pipeline.run(g).map_err(|source| CompileError::Pass {
            graph: g.name.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Optimise a copy of `graph` and fuse it into its kernel program.
pub fn compile_graph(graph: &Graph, opts: &CompileOptions) -> Result<KernelProgram, CompileError> {
    let pipeline = opts.pipeline()?;
    let mut g = graph.clone();
    pipeline.run(&mut g).map_err(|source| CompileError::Pass {
        graph: graph.name.clone(),
        source,
    })?;
    fuse_optimised(&g, opts)
}

/// Fuse a graph already optimised (by [`optimise`]) into its program.
pub fn fuse_optimised(graph: &Graph, opts: &CompileOptions) -> Result<KernelProgram, CompileError> {
    Ok(fuse_with(graph, &opts.fuse_options())?)
}

/// Every part of `module` compiled to its kernel program, encoder first.
pub fn compile(
    module: &Module,
    opts: &CompileOptions,
) -> Result<Vec<(Part, KernelProgram)>, CompileError> {
    module
        .parts()
        .map(|(part, g)| Ok((part, compile_graph(g, opts)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module() -> Module {
        let rs =
            crate::spec::load_str("extends = \"t5-small\"\nlayers = 1", "x.toml".as_ref()).unwrap();
        crate::lower::lower(&rs).unwrap()
    }

    #[test]
    fn unknown_names_are_user_errors_listing_both_kinds() {
        let opts = CompileOptions {
            disabled_passes: vec!["fusion".into()],
            ..Default::default()
        };
        let e = compile(&module(), &opts).unwrap_err();
        assert!(matches!(&e, CompileError::UnknownPass { name } if name == "fusion"));
        let text = e.to_string();
        assert!(
            text.contains("cse") && text.contains("append-cache"),
            "{text}"
        );
    }

    #[test]
    fn options_reach_both_stages() {
        let m = module();
        let all = compile(&m, &CompileOptions::default()).unwrap();
        assert_eq!(
            all.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
            [Part::Encoder, Part::Decoder]
        );
        // Level 0 keeps the lowered graph: more kernels than level 1.
        let raw = compile(
            &m,
            &CompileOptions {
                opt_level: 0,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(raw[1].1.graph_nodes > all[1].1.graph_nodes);
        // A disabled rewrite is skipped in fusion.
        let opts = CompileOptions {
            disabled_passes: vec!["attention".into()],
            ..Default::default()
        };
        let plain = compile(&m, &opts).unwrap();
        assert!(all[1].1.to_text().contains(" attention "));
        assert!(!plain[1].1.to_text().contains(" attention "));
    }
}
