use super::{SpecArg, load};
use clap::ValueEnum;
use kiln_compiler::ir::{to_dot, to_text};

#[derive(Clone, Copy, ValueEnum)]
enum Emit {
    /// The IR graphs in kiln's text form.
    Ir,
    /// The IR graphs as Graphviz DOT.
    Dot,
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    spec: SpecArg,
    #[arg(long, value_enum, default_value = "ir")]
    emit: Emit,
}

pub fn run(a: Args) -> Result<(), String> {
    let (_, lowered) = load(&a.spec.spec)?;
    for g in lowered.graphs() {
        match a.emit {
            Emit::Ir => print!("{}", to_text(g)),
            Emit::Dot => print!("{}", to_dot(g)),
        }
    }
    Ok(())
}
