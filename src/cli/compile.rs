use super::{SpecArg, load};
use clap::ValueEnum;
use kiln_compiler::ir::{to_dot, to_text};
use kiln_compiler::passes::pipeline_for;

#[derive(Clone, Copy, ValueEnum)]
enum Emit {
    /// The IR graphs in kiln's text form.
    Ir,
    /// The IR graphs as Graphviz DOT.
    Dot,
    /// The fused kernel programs (kernel IR text form), after the graph passes.
    Kernels,
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    spec: SpecArg,
    #[arg(long, value_enum, default_value = "ir")]
    emit: Emit,
    /// Graph passes to run before emitting: 0 = the graph as lowered, 1 = simplified (see docs/passes.md).
    #[arg(long, default_value_t = 1)]
    opt_level: u8,
    /// Skip a pass by name (repeatable), e.g. to bisect a miscompile: simplify, const-fold, cse, dce.
    #[arg(long = "disable-pass", value_name = "NAME")]
    disable_pass: Vec<String>,
}

pub fn run(a: Args) -> Result<(), String> {
    let (_, mut lowered) = load(&a.spec.spec)?;
    pipeline_for(a.opt_level, &a.disable_pass)
        .and_then(|p| p.run_lowered(&mut lowered))
        .map_err(|e| format!("{}: {e}", a.spec.spec.display()))?;
    for g in lowered.graphs() {
        match a.emit {
            Emit::Ir => print!("{}", to_text(g)),
            Emit::Dot => print!("{}", to_dot(g)),
            Emit::Kernels => {
                let p = kiln_compiler::kernel::fuse(g)
                    .map_err(|e| format!("{}: {e}", a.spec.spec.display()))?;
                print!("{}", p.to_text());
            }
        }
    }
    Ok(())
}
