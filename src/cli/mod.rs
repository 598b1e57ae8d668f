//! Subcommands. Each one loads a spec, lowers it and reports; errors come back
//! as rendered text so `main` prints them once and exits non-zero.

mod check;
mod compile;
mod run;

use clap::{Parser, Subcommand, ValueEnum};
use kiln_compiler::lower::{Lowered, lower};
use kiln_compiler::spec::{self, ResolvedSpec};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "A declarative model compiler for transformer architectures"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the resolved spec (every default filled in) and its cost table.
    Check(check::Args),
    /// Lower a spec and print its IR graphs as text or Graphviz DOT.
    Compile(compile::Args),
    /// Run the reference interpreter on random weights and print logits or greedy tokens.
    Run(run::Args),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    #[default]
    Text,
    Json,
}

pub fn dispatch(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Check(a) => check::run(a),
        Command::Compile(a) => compile::run(a),
        Command::Run(a) => run::run(a),
    }
}

/// Load and lower a spec file, rendering any error for the terminal.
pub fn load(path: &Path) -> Result<(ResolvedSpec, Lowered), String> {
    let rs = spec::load(path).map_err(|e| e.render())?;
    let lowered = lower(&rs)
        .map_err(|e| format!("{}: internal error while lowering: {e}", path.display()))?;
    Ok((rs, lowered))
}

/// The spec argument every subcommand takes.
#[derive(clap::Args)]
pub struct SpecArg {
    /// A spec file (e.g. models/gpt2.toml).
    pub spec: PathBuf,
}
