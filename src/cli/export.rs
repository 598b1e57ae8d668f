use super::{CliError, ModelArgs, open_model};
use kiln_runtime::backends::{BackendRef, reference};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The safetensors file to write (kiln's canonical parameter names; it
    /// loads back for the same spec with `--weights`).
    #[arg(short, long)]
    output: PathBuf,
}

pub fn run(a: Args) -> Result<(), CliError> {
    // The reference interpreter keeps the weights in the canonical layout.
    let mut m = a.model;
    m.backend = BackendRef(reference());
    let loaded = open_model(&m)?;
    let w = &loaded.model.weights;
    let parameters: usize = w.iter().map(|(_, t)| t.numel()).sum();
    let spec = loaded.spec.spec.name.clone();
    let meta = [
        ("spec", spec.as_str()),
        ("weights", loaded.weights_origin.as_str()),
    ];
    kiln_open::checkpoint::write_safetensors(&a.output, w, &meta)?;
    outln!(
        "wrote {}: {} tensors, {parameters} parameters of `{spec}` (weights: {})",
        a.output.display(),
        w.len(),
        loaded.weights_origin
    );
    Ok(())
}
