use super::CliError;
use super::{Format, load};
use kiln_compiler::analysis::cost::{Cost, cost};

#[derive(clap::Args)]
pub struct Args {
    /// A spec file (models/gpt2.toml), a Hugging Face model folder
    /// (config.json + *.safetensors) or a .gguf file.
    #[arg(required_unless_present = "supported")]
    spec: Option<std::path::PathBuf>,
    /// List what kiln reads instead: the Hugging Face families (model_types,
    /// heads, family files) and the GGUF architectures.
    #[arg(long)]
    supported: bool,
    /// Sequence length at which FLOPs per token and peak activation memory
    /// are counted (default: 128, or max_positions if shorter; more than
    /// the model takes is an error).
    #[arg(long)]
    seq_len: Option<usize>,
    /// Batch size for the peak activation memory.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    /// A safetensors checkpoint (HF folder or file) to pre-flight against the
    /// spec: names, shapes and dtypes from the headers only, every problem listed.
    #[arg(long)]
    weights: Option<std::path::PathBuf>,
}

pub fn run(a: Args) -> Result<(), CliError> {
    if a.supported {
        return super::import::list();
    }
    let Some(spec) = &a.spec else {
        return Err(CliError::Usage(
            "give a spec, model folder or .gguf file, or --supported".into(),
        ));
    };
    let (rs, mut lowered) = load(spec)?;
    let max = rs.spec.max_positions;
    let seq_len = a.seq_len.unwrap_or(128.min(max));
    if seq_len == 0 || seq_len > max {
        return Err(CliError::Usage(format!(
            "--seq-len {seq_len}: the model takes 1 to {max} tokens (max_positions = {max})"
        )));
    }
    if a.batch == 0 {
        return Err(CliError::Usage("--batch must be at least 1".into()));
    }
    let c = cost(&rs, &lowered, seq_len);
    let peak = kiln::pipeline::peak_activation_bytes(&mut lowered, a.batch, seq_len, spec)?;
    let preflight = match &a.weights {
        Some(w) => {
            let graphs: Vec<_> = lowered.graphs().collect();
            let plan = kiln_open::checkpoint::preflight(w, &graphs, None)?;
            Some(format!(
                "{}: {} layout, {} parameters mapped, {} bytes to read, {} tensors ignored, {} unused",
                w.display(),
                plan.family(),
                plan.parameters().len(),
                plan.total_bytes(),
                plan.ignored().len(),
                plan.unused().len()
            ))
        }
        None => None,
    };
    match a.format {
        Format::Json => {
            let mut v = kiln::pipeline::check_report(&rs, &c, peak, a.batch)?;
            if let Some(p) = &preflight {
                v["weights"] = p.clone().into();
            }
            outln!("{}", serde_json::to_string_pretty(&v)?);
        }
        Format::Text => {
            outln!("{}", rs.to_toml());
            out!("{}", table(&c));
            outln!(
                "{:<38} {:>24}",
                format!("peak activations+outputs (b {}, seq {})", a.batch, seq_len),
                bytes(peak)
            );
            if let Some(p) = &preflight {
                outln!("weights match: {p}");
            }
        }
    }
    Ok(())
}

fn human(n: f64) -> String {
    let units = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")];
    for (s, u) in units {
        if n.abs() >= s {
            return format!("{:.2}{u}", n / s);
        }
    }
    format!("{n}")
}

fn bytes(n: usize) -> String {
    let n = n as f64;
    let units = [
        (1024f64.powi(3), "GiB"),
        (1024f64.powi(2), "MiB"),
        (1024.0, "KiB"),
    ];
    for (s, u) in units {
        if n >= s {
            return format!("{:.2} {u}", n / s);
        }
    }
    format!("{n} B")
}

fn table(c: &Cost) -> String {
    let mut out = String::from("# cost\n");
    let row = |k: &str, v: String| format!("{k:<38} {v:>24}\n");
    out += &row(
        "parameters",
        format!("{} ({})", c.parameters, human(c.parameters as f64)),
    );
    for (k, v) in &c.parameters_by_component {
        out += &row(&format!("  {k}"), format!("{v} ({})", human(*v as f64)));
    }
    out += &row(
        &format!("matmul FLOPs per token (seq {})", c.seq_len),
        human(c.flops_per_token),
    );
    out += &row(
        "KV cache per token (f32)",
        bytes(c.kv_cache_bytes_per_token),
    );
    if let Some(x) = c.cross_cache_bytes_per_source_token {
        out += &row("cross K/V per source token (f32)", bytes(x));
    }
    out += &row("weights f32", bytes(c.weight_bytes_f32));
    out += &row("weights f16/bf16", bytes(c.weight_bytes_f16));
    out += &row("weights --precision int8 (CPU)", bytes(c.weight_bytes_int8));
    out += &row("weights --precision bf16 (CPU)", bytes(c.weight_bytes_bf16));
    out
}
