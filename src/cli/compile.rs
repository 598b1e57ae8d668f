use super::CliError;
use super::{SpecArg, load};
use clap::ValueEnum;
use kiln::pipeline;

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
    /// The WGSL compute shader the GPU code generator emits for every kernel.
    Wgsl,
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
    /// Skip a graph pass or kernel rewrite by name (repeatable), e.g. to bisect a miscompile:
    /// simplify, const-fold, cse, merge-projections, dce; attention, write-through, moe-dispatch, append-cache.
    #[arg(long = "disable-pass", value_name = "NAME")]
    disable_pass: Vec<String>,
    /// With `--emit wgsl`: the shaders for f32 weights, or for f16 weights
    /// (`enable f16;`, parameters bound as `array<f16>`).
    #[arg(long, default_value = "f32")]
    precision: kiln_runtime::Precision,
}

pub fn run(a: Args) -> Result<(), CliError> {
    let path = a.spec.spec.as_path();
    let (_, mut lowered) = load(path)?;
    let opts = kiln::Options {
        opt_level: a.opt_level,
        disabled_passes: a.disable_pass,
    };
    let text = |e: kiln::Error| e.to_string();
    pipeline::optimise(&mut lowered, &opts, path).map_err(text)?;
    match a.emit {
        Emit::Ir => out!("{}", pipeline::ir_text(&lowered)),
        Emit::Dot => out!("{}", pipeline::dot_text(&lowered)),
        Emit::Kernels => out!(
            "{}",
            pipeline::kernels_text(&pipeline::fuse_with(&lowered, &opts, path).map_err(text)?)
        ),
        Emit::Clif => {
            for p in pipeline::fuse_with(&lowered, &opts, path).map_err(text)? {
                let opts = kiln_compiler::codegen::cranelift::Options { emit_clif: true };
                let cpu =
                    kiln_compiler::codegen::cranelift::compile(&p, opts).map_err(|source| {
                        CliError::Codegen {
                            origin: path.display().to_string(),
                            source,
                        }
                    })?;
                for (i, (k, text)) in p.kernels.iter().zip(&cpu.clif).enumerate() {
                    match text {
                        Some(t) => outln!("; {} k{i} ({})\n{t}", p.name, k.kind()),
                        None => outln!(
                            "; {} k{i} ({}): run by the runtime (GEMM library / copy)\n",
                            p.name,
                            k.kind()
                        ),
                    }
                }
            }
        }
        Emit::Wgsl => {
            for p in pipeline::fuse_with(&lowered, &opts, path).map_err(text)? {
                let o = kiln_compiler::codegen::wgsl::Options {
                    f16_params: a.precision == kiln_runtime::Precision::F16,
                    ..Default::default()
                };
                let w = kiln_compiler::codegen::wgsl::generate_with(&p, o).map_err(|source| {
                    CliError::Codegen {
                        origin: path.display().to_string(),
                        source,
                    }
                })?;
                out!("{}", w.to_text());
            }
        }
    }
    Ok(())
}
