use super::{CliError, Format, ModelArgs, open_model};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Sentences to embed.
    #[arg(required = true)]
    sentences: Vec<String>,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

pub fn run(a: Args) -> Result<(), CliError> {
    let loaded = open_model(&a.model)?;
    let emb = loaded.embed(&a.sentences)?;
    super::check_finite(&a.model, "embedding values", &emb.to_f32_vec())?;
    let d = *emb.shape().last().unwrap_or(&1);
    let vecs: Vec<Vec<f32>> = emb
        .to_f32_vec()
        .chunks(d.max(1))
        .map(<[f32]>::to_vec)
        .collect();
    let cos = |x: &[f32], y: &[f32]| {
        let dot: f32 = x.iter().zip(y).map(|(a, b)| a * b).sum();
        let n = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>().sqrt();
        dot / (n(x) * n(y)).max(1e-12)
    };
    let sims: Vec<Vec<f32>> = vecs
        .iter()
        .map(|x| vecs.iter().map(|y| cos(x, y)).collect())
        .collect();
    match a.format {
        Format::Json => outln!(
            "{}",
            serde_json::json!({ "sentences": a.sentences, "embeddings": vecs, "cosine": sims })
        ),
        Format::Text => {
            for (s, v) in a.sentences.iter().zip(&vecs) {
                let head: Vec<String> = v.iter().take(5).map(|x| format!("{x:+.4}")).collect();
                outln!("[{} dims] {} …  {s}", v.len(), head.join(" "));
            }
            if vecs.len() > 1 {
                outln!("cosine similarity:");
                for (i, row) in sims.iter().enumerate() {
                    let r: Vec<String> = row.iter().map(|c| format!("{c:.4}")).collect();
                    outln!("  [{i}] {}", r.join(" "));
                }
            }
        }
    }
    Ok(())
}
