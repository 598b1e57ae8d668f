//! Sentence similarity. The MiniLM tests need the real checkpoint
//! (`KILN_MINILM_DIR`, set by .ci/run from tests/parity/fetch_real.sh); without
//! it they say so and pass, unless `KILN_REQUIRE_REAL=1` makes absence a failure.
//! The rest run on the tiny MiniLM-shaped spec with random weights.

use kiln::open::source::{OpenOptions, open};
use kiln_example_similarity::{cosine, embed, embed_ids, minilm_dir, nearest};
use std::path::Path;
use std::process::Command;

fn minilm() -> Option<std::path::PathBuf> {
    match minilm_dir() {
        Some(d) if d.join("config.json").exists() => Some(d),
        other => {
            let msg = format!("all-MiniLM-L6-v2 not found (KILN_MINILM_DIR = {other:?})");
            if std::env::var("KILN_REQUIRE_REAL").is_ok_and(|v| v == "1") {
                panic!("{msg}");
            }
            eprintln!("SKIPPED: {msg}");
            None
        }
    }
}

#[test]
fn paraphrases_are_nearest_with_minilm() {
    let Some(dir) = minilm() else { return };
    let loaded = open(&dir, OpenOptions::default()).unwrap();
    let sentences = [
        "A cat sits on the mat.",
        "The stock market fell sharply today.",
        "A kitten is resting on a rug.",
        "Share prices dropped at the close of trading.",
    ];
    let v = embed(&loaded, &sentences).unwrap();
    assert_eq!(v.len(), 4);
    for e in &v {
        assert_eq!(e.len(), 384);
        let norm: f32 = e.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "normalised: {norm}");
    }
    let near: Vec<usize> = nearest(&v).into_iter().map(|n| n.unwrap().0).collect();
    assert_eq!(near, [2, 3, 0, 1]);
    assert!(cosine(&v[0], &v[2]) > 0.5 && cosine(&v[0], &v[1]) < 0.2);
}

#[test]
fn binary_prints_the_matrix_with_minilm() {
    let Some(dir) = minilm() else { return };
    let out = Command::new(env!("CARGO_BIN_EXE_similarity"))
        .arg(&dir)
        .args(["Hello there.", "Hi!", "Quantum chromodynamics."])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("  [0] 1.0000 "), "{stdout}");
    assert!(stdout.contains("nearest to [0]: [1]"), "{stdout}");
}

#[test]
fn batched_embeddings_equal_single_ones() {
    let spec =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny/all-minilm-l6-v2.toml");
    let model = open(
        &spec,
        OpenOptions {
            seed: 3,
            ..OpenOptions::default()
        },
    )
    .unwrap()
    .model;
    let seqs = vec![vec![1, 2, 3, 4, 5], vec![9, 8], vec![7]];
    let batch = embed_ids(&model, &seqs).unwrap();
    for (s, b) in seqs.iter().zip(&batch) {
        let alone = embed_ids(&model, std::slice::from_ref(s))
            .unwrap()
            .remove(0);
        for (x, y) in alone.iter().zip(b) {
            assert!((x - y).abs() < 1e-5, "{x} vs {y}");
        }
        assert!((cosine(b, b) - 1.0).abs() < 1e-6);
    }
    let err = embed_ids(&model, &[vec![]]).unwrap_err();
    assert!(err.contains("at least one token"), "{err}");
}

#[test]
fn a_model_without_an_embedding_head_is_an_error() {
    let spec =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny/bert-base-uncased.toml");
    let loaded = open(&spec, OpenOptions::default()).unwrap();
    let err = embed_ids(&loaded.model, &[vec![1, 2]]).unwrap_err();
    assert!(err.contains("no sentence-embedding head"), "{err}");
    let err = embed(&loaded, &["text"]).unwrap_err();
    assert!(err.contains("no tokenizer"), "{err}");
}
