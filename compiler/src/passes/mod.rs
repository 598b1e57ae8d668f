//! Graph-to-graph passes: small, independent rewrites of an IR [`Graph`]
//! that keep what it computes (bit for bit, unless a pass's docs say
//! otherwise) and every output's type.
//!
//! A pass is a value with a name ([`Pass`]); a [`Pipeline`] runs a list of
//! them to a fixed point. Any pass can be disabled by name, to bisect a
//! miscompile (`kiln compile --disable-pass cse`). In debug and test builds
//! (or with [`Pipeline::verify_each`]) the pipeline re-checks the graph after every pass that changed it
//! ([`verify`]): every node's type re-inferred from its operands equals its
//! recorded type, the outputs and the graph's inputs are all still there, and
//! there is no cycle — so a broken rewrite is reported by name at the pass
//! that made it.
//!
//! | pass | rewrites |
//! |---|---|
//! | [`Simplify`] `simplify` | `x*1`, `x/1`, `x-0`, `x+(-0)` (i32: `x+0`), `x and true`, `x or false`, `neg(neg x)`, `not(not x)`, permute∘permute, identity permute, reshape∘reshape, same-shape reshape, same-dtype cast, full slice, one-input concat, select with a constant condition or equal branches |
//! | [`ConstFold`] `const-fold` | ops whose operands are all constants (`scalar`, `literal`, constant-shape `iota`) become one `scalar`/`literal`, computed exactly as the reference interpreter does |
//! | [`Cse`] `cse` | nodes with the same op, attributes, operands and type become one (parameters by name, scalars and literals by their values in the declared dtype) |
//! | [`MergeProjections`] `merge-projections` | products of one input with several transposed rank-2 weights (Q/K/V, gate/up) become one product with the weights joined, each result a slice (exact) |
//! | [`Dce`] `dce` | nodes that reach no output (graph inputs are kept: they are the interface) |
//!
//! Level 0 of [`default_pipeline`] is empty (the graph exactly as lowered);
//! level 1 and up run all five. See `docs/passes.md`.

mod const_fold;
mod cse;
mod dce;
mod merge_projections;
mod simplify;
mod verify;

pub use const_fold::ConstFold;
pub use cse::Cse;
pub use dce::Dce;
pub use merge_projections::MergeProjections;
pub use simplify::Simplify;
pub use verify::verify;

use crate::ir::Module;
use crate::ir::{Graph, IrError, Op};
use std::collections::BTreeSet;
use std::fmt;

/// What can go wrong while running passes.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PassError {
    /// A rewrite built a node whose type does not check.
    #[error("pass `{pass}`: {source}")]
    Ir {
        /// The pass that failed.
        pass: &'static str,
        /// The type error.
        #[source]
        source: IrError,
    },
    /// The graph broke an invariant after a pass.
    #[error("pass `{pass}` left graph `{graph}` invalid: {message}")]
    Invalid {
        /// The pass after which the check failed.
        pass: String,
        /// The graph it ran on.
        graph: String,
        /// The broken invariant.
        message: String,
    },
    /// `disable` named no pass of the pipeline.
    #[error("unknown pass `{name}`; passes are: {known}")]
    UnknownPass {
        /// The name given.
        name: String,
        /// The pipeline's pass names, comma-separated.
        known: String,
    },
}

impl PassError {
    /// Wrap an [`IrError`] from building a node in pass `pass`.
    pub fn ir(pass: &'static str) -> impl FnOnce(IrError) -> PassError {
        move |source| PassError::Ir { pass, source }
    }
}

/// A graph rewrite. `run` returns whether it changed the graph; running it
/// again on its own output should (eventually) return false.
pub trait Pass {
    /// A short kebab-case name, unique within a pipeline (`cse`, `const-fold`).
    fn name(&self) -> &'static str;
    /// Rewrite `g` in place.
    fn run(&self, g: &mut Graph) -> Result<bool, PassError>;
}

/// The names of every pass kiln has, in [`default_pipeline`] order.
pub const PASS_NAMES: [&str; 5] = ["simplify", "const-fold", "cse", "merge-projections", "dce"];

/// How many times a pipeline may run its whole list before giving up on a
/// fixed point (each round is cheap; real graphs settle in 2 or 3).
pub const DEFAULT_MAX_ROUNDS: usize = 16;

/// An ordered list of passes run to a fixed point.
pub struct Pipeline {
    passes: Vec<Box<dyn Pass>>,
    disabled: BTreeSet<String>,
    max_rounds: usize,
    verify: bool,
}

impl Default for Pipeline {
    fn default() -> Self {
        Pipeline::new()
    }
}

impl fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pipeline")
            .field("passes", &self.names())
            .field("disabled", &self.disabled)
            .field("max_rounds", &self.max_rounds)
            .field("verify", &self.verify)
            .finish()
    }
}

/// What a pipeline run did to one graph.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    /// The graph's name.
    pub graph: String,
    /// Node count before the pipeline.
    pub nodes_before: usize,
    /// Node count after the pipeline.
    pub nodes_after: usize,
    /// Rounds over the pass list, the last one changing nothing unless
    /// `converged` is false.
    pub rounds: usize,
    /// Whether the last round changed nothing (the pipeline reached a fixed point).
    pub converged: bool,
    /// `(pass, rounds in which it changed the graph)` for every enabled pass.
    pub changes: Vec<(&'static str, usize)>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} -> {} nodes in {} round(s)",
            self.graph, self.nodes_before, self.nodes_after, self.rounds
        )?;
        if !self.converged {
            f.write_str(" (no fixed point)")?;
        }
        Ok(())
    }
}

impl Pipeline {
    /// An empty pipeline (changes nothing), verifying in debug builds.
    pub fn new() -> Self {
        Pipeline {
            passes: Vec::new(),
            disabled: BTreeSet::new(),
            max_rounds: DEFAULT_MAX_ROUNDS,
            verify: cfg!(debug_assertions),
        }
    }

    /// Append a pass.
    pub fn with(mut self, pass: impl Pass + 'static) -> Self {
        self.passes.push(Box::new(pass));
        self
    }

    /// Append a boxed pass.
    pub fn push(&mut self, pass: Box<dyn Pass>) {
        self.passes.push(pass);
    }

    /// Skip every pass called `name`. Fails if the pipeline has none, so a
    /// typo on the command line is an error rather than a silent no-op.
    pub fn disable(&mut self, name: &str) -> Result<(), PassError> {
        let known = if self.passes.is_empty() {
            // An empty pipeline (level 0) accepts kiln's pass names, so a
            // `--disable-pass` still works alongside `--opt-level 0`.
            PASS_NAMES.to_vec()
        } else {
            self.names()
        };
        if !known.contains(&name) {
            return Err(PassError::UnknownPass {
                name: name.to_string(),
                known: known.join(", "),
            });
        }
        self.disabled.insert(name.to_string());
        Ok(())
    }

    /// Check the graph after every changing pass (default: debug builds only).
    pub fn verify_each(mut self, on: bool) -> Self {
        self.verify = on;
        self
    }

    /// Bound on rounds over the pass list.
    pub fn max_rounds(mut self, n: usize) -> Self {
        self.max_rounds = n.max(1);
        self
    }

    /// Names of the passes in order, disabled ones included.
    pub fn names(&self) -> Vec<&'static str> {
        self.passes.iter().map(|p| p.name()).collect()
    }

    fn enabled(&self) -> impl Iterator<Item = &dyn Pass> {
        self.passes
            .iter()
            .map(|p| p.as_ref())
            .filter(|p| !self.disabled.contains(p.name()))
    }

    /// Run the enabled passes over `g` until a whole round changes nothing
    /// (or `max_rounds` rounds have run).
    pub fn run(&self, g: &mut Graph) -> Result<Report, PassError> {
        let mut report = Report {
            graph: g.name.clone(),
            nodes_before: g.node_count(),
            changes: self.enabled().map(|p| (p.name(), 0)).collect(),
            ..Report::default()
        };
        let interface = if self.verify {
            let inputs = input_names(g);
            verify(g).map_err(|message| PassError::Invalid {
                pass: "(before any pass)".into(),
                graph: g.name.clone(),
                message,
            })?;
            Some(inputs)
        } else {
            None
        };
        let mut converged = self.passes.is_empty();
        while !converged && report.rounds < self.max_rounds {
            report.rounds += 1;
            let mut changed_any = false;
            for (i, pass) in self.enabled().enumerate() {
                if !pass.run(g)? {
                    continue;
                }
                changed_any = true;
                report.changes[i].1 += 1;
                if let Some(inputs) = &interface {
                    let invalid = |message| PassError::Invalid {
                        pass: pass.name().to_string(),
                        graph: g.name.clone(),
                        message,
                    };
                    verify(g).map_err(invalid)?;
                    if input_names(g) != *inputs {
                        return Err(invalid("the graph's inputs changed".into()));
                    }
                }
            }
            converged = !changed_any;
        }
        report.converged = converged;
        report.nodes_after = g.node_count();
        Ok(report)
    }

    /// Run over every graph of a lowered model.
    pub fn run_lowered(&self, l: &mut Module) -> Result<Vec<Report>, PassError> {
        let mut out = Vec::new();
        for g in l.encoder.iter_mut().chain(l.decoder.iter_mut()) {
            out.push(self.run(g)?);
        }
        Ok(out)
    }
}

/// The names of a graph's `Input` nodes, sorted.
fn input_names(g: &Graph) -> Vec<String> {
    let mut v: Vec<String> =
        g.g.node_weights()
            .filter_map(|n| match &n.op {
                Op::Input { name } => Some(name.clone()),
                _ => None,
            })
            .collect();
    v.sort();
    v
}

/// The standard pipeline: level 0 runs nothing (the graph as lowered);
/// level 1 and above simplify, fold constants, merge common subexpressions
/// and drop dead code, to a fixed point.
pub fn default_pipeline(opt_level: u8) -> Pipeline {
    if opt_level == 0 {
        return Pipeline::new();
    }
    Pipeline::new()
        .with(Simplify)
        .with(ConstFold::default())
        .with(Cse)
        .with(MergeProjections)
        .with(Dce)
}

/// Build [`default_pipeline`]`(opt_level)` with the passes named in
/// `disabled` switched off.
pub fn pipeline_for(opt_level: u8, disabled: &[impl AsRef<str>]) -> Result<Pipeline, PassError> {
    let mut p = default_pipeline(opt_level);
    for name in disabled {
        p.disable(name.as_ref())?;
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Builder, DType, UnaryOp};
    use crate::shape;

    /// Flips a unary op forever: never reaches a fixed point.
    struct Flip;
    impl Pass for Flip {
        fn name(&self) -> &'static str {
            "flip"
        }
        fn run(&self, g: &mut Graph) -> Result<bool, PassError> {
            for n in g.g.node_weights_mut() {
                if let Op::Unary(u) = &mut n.op {
                    *u = if *u == UnaryOp::Exp {
                        UnaryOp::Log
                    } else {
                        UnaryOp::Exp
                    };
                    return Ok(true);
                }
            }
            Ok(false)
        }
    }

    /// Breaks the graph by retyping a node.
    struct Break;
    impl Pass for Break {
        fn name(&self) -> &'static str {
            "break"
        }
        fn run(&self, g: &mut Graph) -> Result<bool, PassError> {
            let id = g.outputs[0].1;
            g.g[id].ty.dtype = DType::I32;
            Ok(true)
        }
    }

    fn small() -> Graph {
        let mut g = Graph::new("small");
        let mut b = Builder::new(&mut g);
        let x = b.input("x", DType::F32, shape!["seq", 4usize]).unwrap();
        let e = b.unary(UnaryOp::Exp, x).unwrap();
        g.set_output("y", e);
        g
    }

    #[test]
    fn level_zero_is_empty_and_level_one_has_every_pass() {
        assert!(default_pipeline(0).names().is_empty());
        assert_eq!(default_pipeline(1).names(), PASS_NAMES.to_vec());
        assert_eq!(default_pipeline(3).names(), PASS_NAMES.to_vec());
        let mut g = small();
        let r = default_pipeline(0).run(&mut g).unwrap();
        assert!(r.converged);
        assert_eq!(r.rounds, 0);
    }

    #[test]
    fn bounded_rounds_and_disabling() {
        let mut g = small();
        let p = Pipeline::new().with(Flip).max_rounds(5);
        let r = p.run(&mut g).unwrap();
        assert_eq!(r.rounds, 5);
        assert!(!r.converged);
        assert_eq!(r.changes, vec![("flip", 5)]);
        let mut p = Pipeline::new().with(Flip);
        p.disable("flip").unwrap();
        let r = p.run(&mut g).unwrap();
        assert!(r.converged);
        assert_eq!(r.changes, vec![]);
        let e = p.disable("nope").unwrap_err();
        assert!(e.to_string().contains("flip"), "{e}");
        // Level 0 accepts real pass names, rejects typos.
        assert!(pipeline_for(0, &["cse"]).is_ok());
        assert!(pipeline_for(1, &["cse", "dce"]).is_ok());
        assert!(pipeline_for(1, &["csee"]).is_err());
    }

    #[test]
    fn verification_names_the_breaking_pass() {
        let mut g = small();
        let e = Pipeline::new()
            .with(Break)
            .verify_each(true)
            .run(&mut g)
            .unwrap_err();
        match e {
            PassError::Invalid { pass, message, .. } => {
                assert_eq!(pass, "break");
                assert!(message.contains("recorded"), "{message}");
            }
            e => panic!("{e}"),
        }
    }
}
