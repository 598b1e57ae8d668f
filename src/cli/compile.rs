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
    /// The Cranelift IR the CPU code generator emits for every kernel.
    Clif,
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
            Emit::Clif => {
                let p = kiln_compiler::kernel::fuse(g)
                    .map_err(|e| format!("{}: {e}", a.spec.spec.display()))?;
                let opts = kiln_compiler::codegen::cranelift::Options { emit_clif: true };
                let cpu = kiln_compiler::codegen::cranelift::compile(&p, opts)
                    .map_err(|e| format!("{}: {e}", a.spec.spec.display()))?;
                for (i, (k, text)) in p.kernels.iter().zip(&cpu.clif).enumerate() {
                    match text {
                        Some(t) => println!("; {} k{i} ({})\n{t}", p.name, k.kind()),
                        None => println!(
                            "; {} k{i} ({}): run by the runtime (GEMM library / copy)\n",
                            p.name,
                            k.kind()
                        ),
                    }
                }
            }
        }
    }
    Ok(())
}
