use super::CliError;
use super::{Format, ModelArgs, open_model};
use kiln_compiler::spec::Architecture;
use kiln_runtime::session::argmax;
use kiln_runtime::{Outputs, Tensor};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Input token ids, comma-separated (the encoder's input for encoder-decoder models).
    #[arg(long, value_delimiter = ',', required = true, num_args = 1..)]
    tokens: Vec<i32>,
    /// Encoder-decoder models: decoder input ids (T5 starts from 0, BART from 2).
    #[arg(long, value_delimiter = ',', default_value = "0")]
    decoder_tokens: Vec<i32>,
    /// Instead of logits, greedily generate this many tokens through the KV cache.
    #[arg(long)]
    generate: Option<usize>,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

pub fn run(a: Args) -> Result<(), CliError> {
    let loaded = open_model(&a.model)?;
    let rs = &loaded.spec;
    let vocab = rs.spec.vocab_size;
    let check = |ids: &[i32], what: &str| -> Result<(), CliError> {
        match ids.iter().find(|&&t| t < 0 || t as usize >= vocab) {
            Some(t) => {
                Err(format!("{what}: token id {t} is outside the vocabulary (0..{vocab})").into())
            }
            None if ids.is_empty() => Err(format!("{what}: give at least one token id").into()),
            None => Ok(()),
        }
    };
    check(&a.tokens, "--tokens")?;
    let arch = rs.spec.architecture;
    if arch == Architecture::EncoderDecoder {
        check(&a.decoder_tokens, "--decoder-tokens")?;
    }
    let limit = rs.spec.max_positions;
    if a.tokens.len() + a.generate.unwrap_or(0) > limit {
        return Err(format!(
            "{} tokens exceed the model's max_positions = {limit}",
            a.tokens.len() + a.generate.unwrap_or(0)
        )
        .into());
    }
    let model = &loaded.model;
    let mut session = model.session();

    if let Some(n) = a.generate {
        if arch == Architecture::Encoder {
            return Err("--generate needs a decoder; this is an encoder-only model".into());
        }
        let prompt = if arch == Architecture::EncoderDecoder {
            session.set_source(&a.tokens)?;
            &a.decoder_tokens
        } else {
            &a.tokens
        };
        let toks = session.generate_greedy(prompt, n, None)?;
        match a.format {
            Format::Json => outln!("{}", serde_json::json!({ "tokens": toks })),
            Format::Text => outln!(
                "{}",
                toks.iter()
                    .map(i32::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
        return Ok(());
    }

    let out: Outputs = match arch {
        Architecture::Encoder => model.encode(&a.tokens),
        Architecture::Decoder => session.forward(&a.tokens),
        Architecture::EncoderDecoder => session
            .set_source(&a.tokens)
            .and_then(|_| session.forward(&a.decoder_tokens)),
    }?;
    // The most specific output the head produced.
    let key = ["logits", "embedding", "pooled", "hidden"]
        .into_iter()
        .find(|k| out.get(k).is_some())
        .ok_or("the model produced no output")?;
    let t = &out[key];
    super::check_finite(&a.model, key, &t.to_f32_vec())?;
    let rows = rows(t);
    match a.format {
        Format::Json => outln!("{}", serde_json::json!({ key: rows })),
        Format::Text => {
            outln!("{key}: shape {:?}", t.shape());
            for (i, r) in rows.iter().enumerate() {
                let head: Vec<String> = r.iter().take(6).map(|x| format!("{x:+.5}")).collect();
                outln!("  [{i}] argmax {:>6}  {} …", argmax(r), head.join(" "));
            }
        }
    }
    Ok(())
}

/// The tensor as rows over its last axis (batch 1, so one row per position).
fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    let w = (*t.shape().last().unwrap_or(&1)).max(1);
    t.to_f32_vec().chunks(w).map(<[f32]>::to_vec).collect()
}
