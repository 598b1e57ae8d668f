//! End-to-end runs of every shipped model's tiny variant on the reference
//! interpreter: outputs are finite and well-shaped, and incremental decoding
//! through the KV cache reproduces the full-sequence logits.

use kiln_compiler::lower::lower;
use kiln_compiler::spec::{self, Architecture};
use kiln_runtime::session::Model;
use std::path::{Path, PathBuf};

fn tiny_specs() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.retain(|p| p.extension().is_some_and(|x| x == "toml"));
    v.sort();
    v
}

fn model(path: &Path, seed: u64) -> (spec::ResolvedSpec, Model) {
    let rs = spec::load(path).unwrap_or_else(|e| panic!("{}", e.render()));
    let lowered = lower(&rs).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let m = Model::random(lowered, seed).unwrap();
    (rs, m)
}

const PROMPT: [i32; 6] = [5, 17, 42, 8, 99, 3];

#[test]
fn every_tiny_model_runs_and_produces_finite_outputs() {
    for path in tiny_specs() {
        let (rs, m) = model(&path, 1);
        let s = &rs.spec;
        let out = match s.architecture {
            Architecture::Encoder => m.encode(&PROMPT).unwrap(),
            Architecture::Decoder => m.session().forward(&PROMPT).unwrap(),
            Architecture::EncoderDecoder => {
                let mut sess = m.session();
                sess.set_source(&PROMPT).unwrap();
                sess.forward(&[0, 7, 9]).unwrap()
            }
        };
        let hidden = &out["hidden"];
        let seq = if s.architecture == Architecture::EncoderDecoder {
            3
        } else {
            PROMPT.len()
        };
        assert_eq!(hidden.shape(), &[1, seq, s.d_model], "{}", path.display());
        for (name, t) in out.iter() {
            assert!(
                t.to_f32_vec().iter().all(|v| v.is_finite()),
                "{}: `{name}` has non-finite values",
                path.display()
            );
        }
        if let Some(l) = out.get("logits") {
            assert_eq!(l.shape(), &[1, seq, s.vocab_size], "{}", path.display());
            let v = l.to_f32_vec();
            let spread = v.iter().cloned().fold(f32::MIN, f32::max)
                - v.iter().cloned().fold(f32::MAX, f32::min);
            assert!(spread > 0.0, "{}: constant logits", path.display());
        }
    }
}

#[test]
fn kv_cache_decoding_matches_the_full_sequence() {
    for path in tiny_specs() {
        let (rs, m) = model(&path, 2);
        if rs.spec.architecture == Architecture::Encoder {
            continue;
        }
        let (source, tokens): (Option<&[i32]>, &[i32]) = match rs.spec.architecture {
            Architecture::EncoderDecoder => (Some(&PROMPT[..4]), &PROMPT[..]),
            _ => (None, &PROMPT[..]),
        };
        let mut full = m.session();
        let mut step = m.session();
        if let Some(src) = source {
            full.set_source(src).unwrap();
            step.set_source(src).unwrap();
        }
        let all = full.forward(tokens).unwrap()["logits"].to_f32_vec();
        let vocab = rs.spec.vocab_size;
        // Prefill two tokens, then one at a time.
        let mut got = step.forward(&tokens[..2]).unwrap()["logits"].to_f32_vec();
        for t in &tokens[2..] {
            got.extend(step.forward(&[*t]).unwrap()["logits"].to_f32_vec());
        }
        assert_eq!(step.past_len(), tokens.len());
        assert_eq!(got.len(), tokens.len() * vocab);
        let diff = all
            .iter()
            .zip(&got)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            diff <= 1e-5,
            "{}: incremental logits differ by {diff}",
            path.display()
        );
    }
}

#[test]
fn random_weights_are_deterministic_per_seed() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny/gpt2.toml");
    let a = model(&path, 5).1.session().forward(&PROMPT).unwrap()["logits"].to_f32_vec();
    let b = model(&path, 5).1.session().forward(&PROMPT).unwrap()["logits"].to_f32_vec();
    let c = model(&path, 6).1.session().forward(&PROMPT).unwrap()["logits"].to_f32_vec();
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn encoder_padding_does_not_change_outputs() {
    for path in tiny_specs() {
        let (rs, m) = model(&path, 4);
        if rs.spec.architecture != Architecture::Encoder {
            continue;
        }
        let d = rs.spec.d_model;
        let short = &PROMPT[..3];
        let alone = m.encode(short).unwrap();
        let batch = m.encode_batch(&[&PROMPT, short]).unwrap();
        // Hidden states of the real tokens of row 1 equal the unpadded run.
        let h = batch["hidden"].to_f32_vec();
        let row1 = &h[PROMPT.len() * d..PROMPT.len() * d + 3 * d];
        let diff = row1
            .iter()
            .zip(alone["hidden"].to_f32_vec())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            diff <= 1e-5,
            "{}: padded hidden differs by {diff}",
            path.display()
        );
        for key in ["pooled", "embedding"] {
            if let Some(t) = batch.get(key) {
                let v = t.to_f32_vec();
                let w = v.len() / 2;
                let diff = v[w..]
                    .iter()
                    .zip(alone[key].to_f32_vec())
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                assert!(
                    diff <= 1e-5,
                    "{}: padded `{key}` differs by {diff}",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn bad_tokens_and_overlong_sequences_are_errors() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny/gpt2.toml");
    let (rs, m) = model(&path, 0);
    let vocab = rs.spec.vocab_size as i32;
    let e = m.session().forward(&[1, vocab]).unwrap_err().to_string();
    assert!(e.contains("outside the vocabulary"), "{e}");
    let long: Vec<i32> = vec![1; rs.spec.max_positions + 1];
    let e = m.session().forward(&long).unwrap_err().to_string();
    assert!(e.contains("max_positions"), "{e}");
    // Generation stops at max_positions instead of failing.
    let mut s = m.session();
    let out = s.generate_greedy(&[1, 2], 1000, None).unwrap();
    assert_eq!(2 + out.len(), rs.spec.max_positions + 1);
}

#[test]
fn batched_decoding_with_left_padding_matches_single_sequences() {
    use kiln_runtime::sampling::SamplingOptions;
    use kiln_runtime::session::GenerateOptions;
    let prompts: [&[i32]; 3] = [&[5, 17, 42, 8, 99], &[3, 4], &[250, 1, 7]];
    for path in tiny_specs() {
        let (rs, m) = model(&path, 8);
        if rs.spec.architecture != Architecture::Decoder {
            continue;
        }
        // Prefill logits of each row's last token equal the row run alone.
        let mut s = m.session();
        let out = s.forward_batch(&prompts).unwrap();
        let l = out["logits"].to_f32_vec();
        let (cols, v) = (out["logits"].shape()[1], rs.spec.vocab_size);
        for (r, p) in prompts.iter().enumerate() {
            let alone = m.session().forward(p).unwrap()["logits"].to_f32_vec();
            let got = &l[(r * cols + cols - 1) * v..(r * cols + cols) * v];
            let diff = got
                .iter()
                .zip(&alone[alone.len() - v..])
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                diff <= 1e-5,
                "{}: row {r} differs by {diff} when batched",
                path.display()
            );
        }
        // Sampled generation: every row equals generating it alone.
        let opts = GenerateOptions {
            max_new_tokens: 6,
            sampling: SamplingOptions {
                temperature: 0.8,
                top_k: 20,
                top_p: 0.95,
                seed: 11,
            },
            stop_tokens: vec![],
        };
        let batched = m
            .session()
            .generate_batch(&prompts, &opts, &mut |_, _| true)
            .unwrap();
        for (r, p) in prompts.iter().enumerate() {
            let alone = m.session().generate(p, &opts, &mut |_| true).unwrap();
            assert_eq!(batched[r], alone, "{}: row {r}", path.display());
        }
    }
}

#[test]
fn one_model_serves_many_threads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny/mistral-7b.toml");
    let (_, m) = model(&path, 9);
    let inputs: Vec<Vec<i32>> = (0..8)
        .map(|t| (0..5).map(|i| (t * 31 + i * 7) % 256).collect())
        .collect();
    let single: Vec<Vec<f32>> = inputs
        .iter()
        .map(|x| m.session().forward(x).unwrap()["logits"].to_f32_vec())
        .collect();
    let m = &m;
    let threaded: Vec<Vec<f32>> = std::thread::scope(|s| {
        let handles: Vec<_> = inputs
            .iter()
            .map(|x| s.spawn(move || m.session().forward(x).unwrap()["logits"].to_f32_vec()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(single, threaded);
}
