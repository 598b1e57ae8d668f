//! `kiln import` on real configs: every published config in tests/import/
//! resolves to the same numerics (and parameter count) as the shipped spec,
//! every parity fixture config imports and matches the tensors HF stored, and
//! the printed TOML loads back to the same resolved spec.

use std::path::{Path, PathBuf};

use kiln_compiler::import::{ImportOptions, Imported, import_path};
use kiln_compiler::lower::lower;
use kiln_compiler::spec::{self, HeadKind, ResolvedSpec};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn import(rel: &str, opts: &ImportOptions) -> Imported {
    let path = root().join(rel);
    import_path(&path, opts).unwrap_or_else(|e| panic!("{e}"))
}

fn params(rs: &ResolvedSpec) -> usize {
    lower(rs).expect("lowers").parameter_count()
}

/// The import of `tests/import/{file}` equals `models/{shipped}.toml` resolved
/// (every knob, every per-layer block) and has the same parameter count.
fn same_as_shipped(file: &str, shipped: &str) {
    same_as_shipped_with(file, shipped, None)
}

/// [`same_as_shipped`] with the head given (the shipped encoder specs are
/// the base models, while the published configs name their MLM classes).
fn same_as_shipped_with(file: &str, shipped: &str, head: Option<HeadKind>) {
    let opts = ImportOptions {
        name: Some(shipped.to_string()),
        head,
        tensors: None,
    };
    let imported = import(&format!("tests/import/{file}"), &opts);
    let reference = spec::load_shipped(shipped).unwrap_or_else(|e| panic!("{}", e.render()));
    assert_eq!(
        imported.resolved.spec,
        reference.spec,
        "{file} vs models/{shipped}.toml:\n--- imported\n{}\n--- shipped\n{}",
        imported.resolved.to_toml(),
        reference.to_toml()
    );
    assert_eq!(
        imported.resolved.layers, reference.layers,
        "{file}: encoder/only-stack blocks"
    );
    assert_eq!(
        imported.resolved.decoder, reference.decoder,
        "{file}: decoder blocks"
    );
    assert_eq!(
        params(&imported.resolved),
        params(&reference),
        "{file}: parameter count"
    );
    round_trips(&imported);
}

/// The printed TOML (header comments included) loads back to the same spec.
fn round_trips(imported: &Imported) {
    let text = imported.to_toml();
    let back = spec::load_str(&text, Path::new("imported.toml"))
        .unwrap_or_else(|e| panic!("{}\n{text}", e.render()));
    assert_eq!(back, imported.resolved, "round trip of:\n{text}");
}

#[test]
fn gpt2_matches_shipped() {
    same_as_shipped("gpt2.json", "gpt2");
}

#[test]
fn pythia_matches_shipped() {
    same_as_shipped("pythia-160m.json", "pythia-160m");
}

#[test]
fn llama_2_matches_shipped() {
    same_as_shipped("llama-2-7b.json", "llama-2-7b");
}

#[test]
fn mistral_matches_shipped() {
    same_as_shipped("mistral-7b.json", "mistral-7b");
}

#[test]
fn mixtral_matches_shipped() {
    same_as_shipped("mixtral-8x7b.json", "mixtral-8x7b");
}

#[test]
fn qwen2_5_matches_shipped() {
    same_as_shipped("qwen2.5-0.5b.json", "qwen2.5-0.5b");
}

#[test]
fn smollm2_matches_shipped() {
    same_as_shipped("smollm2-135m.json", "smollm2-135m");
}

#[test]
fn gemma_matches_shipped() {
    same_as_shipped("gemma-2b.json", "gemma-2b");
}

#[test]
fn gemma_2_matches_shipped() {
    same_as_shipped("gemma-2-2b.json", "gemma-2-2b");
}

#[test]
fn phi_2_matches_shipped() {
    same_as_shipped("phi-2.json", "phi-2");
}

#[test]
fn t5_small_matches_shipped() {
    same_as_shipped("t5-small.json", "t5-small");
}

#[test]
fn bart_base_matches_shipped() {
    same_as_shipped("bart-base.json", "bart-base");
}

#[test]
fn bert_matches_shipped() {
    same_as_shipped_with(
        "bert-base-uncased.json",
        "bert-base-uncased",
        Some(HeadKind::Pooler),
    );
    // Without --head, the head is the one the config's `architectures` names (…ForMaskedLM).
    let default = import(
        "tests/import/bert-base-uncased.json",
        &ImportOptions::default(),
    );
    assert_eq!(default.resolved.spec.head.kind, HeadKind::Mlm);
}

#[test]
fn roberta_matches_shipped() {
    same_as_shipped_with("roberta-base.json", "roberta-base", Some(HeadKind::Pooler));
    // Without --head, the head is the one the config's `architectures` names (…ForMaskedLM).
    let default = import("tests/import/roberta-base.json", &ImportOptions::default());
    assert_eq!(default.resolved.spec.head.kind, HeadKind::Mlm);
}

#[test]
fn distilbert_matches_shipped() {
    same_as_shipped_with(
        "distilbert-base-uncased.json",
        "distilbert-base-uncased",
        Some(HeadKind::None),
    );
    // Without --head, the head is the one the config's `architectures` names (…ForMaskedLM).
    let default = import(
        "tests/import/distilbert-base-uncased.json",
        &ImportOptions::default(),
    );
    assert_eq!(default.resolved.spec.head.kind, HeadKind::Mlm);
}

/// Element counts of the tensors HF saved (`tensors.txt`: `name dtype [d0, d1, ...]`).
/// An untied RoBERTa MLM stores `lm_head.bias` beside the `lm_head.decoder.bias`
/// its decoder adds; the first is unused (the family table says `supersedes`).
/// Pegasus stores its fixed sinusoidal tables (`sinusoidal`: kiln computes them).
fn stored_numel(tensors_txt: &Path, sinusoidal: bool) -> usize {
    let text = std::fs::read_to_string(tensors_txt).expect("tensors.txt");
    let superseded = text.contains("lm_head.decoder.bias ");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter(|l| !(superseded && l.starts_with("lm_head.bias ")))
        .filter(|l| !(sinusoidal && l.contains("embed_positions.weight ")))
        .map(|l| {
            let shape = &l[l.find('[').expect("shape") + 1..l.rfind(']').expect("shape")];
            shape
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| s.trim().parse::<usize>().expect("dim"))
                .product::<usize>()
        })
        .sum()
}

/// Every parity fixture (tests/parity/fixtures/*/config.json, written by
/// transformers 5) imports, round-trips, and describes exactly as many
/// parameters as HF stored in its model.safetensors.
#[test]
fn every_parity_fixture_imports() {
    let dir = root().join("tests/parity/fixtures");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!("no parity fixtures at {}", dir.display());
        return;
    };
    let mut seen = 0;
    let mut dirs: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    dirs.sort();
    for d in dirs {
        if !d.join("config.json").is_file() {
            continue;
        }
        let imported = import_path(&d, &ImportOptions::default()).unwrap_or_else(|e| panic!("{e}"));
        let family = d.file_name().and_then(|s| s.to_str()).unwrap_or_default();
        assert_eq!(
            imported.resolved.spec.name, family,
            "name from the directory"
        );
        round_trips(&imported);
        if d.join("tensors.txt").is_file() {
            assert_eq!(
                params(&imported.resolved),
                stored_numel(
                    &d.join("tensors.txt"),
                    imported.resolved.spec.positions.kind
                        == kiln_compiler::spec::PositionKind::Sinusoidal
                ),
                "{family}: kiln's parameter count vs the tensors HF stored\n{}",
                imported.to_toml()
            );
        }
        seen += 1;
    }
    eprintln!("imported {seen} parity fixture configs");
}

/// Spot checks of what the fixtures exercise beyond the published configs
/// (transformers 5 layout: nested `rope_parameters`, `layer_types`, `dtype`).
#[test]
fn parity_fixture_values() {
    let fx = |name: &str| {
        let d = root().join("tests/parity/fixtures").join(name);
        d.join("config.json").is_file().then(|| {
            import_path(&d, &ImportOptions::default())
                .unwrap_or_else(|e| panic!("{e}"))
                .resolved
        })
    };
    if let Some(rs) = fx("gemma2") {
        let s = &rs.spec;
        assert_eq!(
            s.attention.scale,
            Some(24f64.powf(-0.5)),
            "query_pre_attn_scalar = 24"
        );
        assert_eq!(s.attention.softcap, Some(50.0));
        assert_eq!(s.head.softcap, Some(30.0));
        // layer_types = [sliding, full]
        assert_eq!(rs.layers[0].attention.sliding_window, Some(4));
        assert_eq!(rs.layers[1].attention.sliding_window, None);
    }
    if let Some(rs) = fx("gpt_neox") {
        assert_eq!(rs.spec.positions.fraction, Some(0.25));
        assert!(rs.spec.residual.parallel && !rs.spec.residual.shared_norm);
    }
    if let Some(rs) = fx("mixtral") {
        assert_eq!(rs.spec.positions.theta, Some(1e6));
        assert_eq!(
            rs.spec.moe.as_ref().map(|m| (m.experts, m.top_k)),
            Some((4, 2))
        );
        assert_eq!(rs.spec.attention.sliding_window, None);
    }
    if let Some(rs) = fx("roberta") {
        assert_eq!((rs.spec.positions.offset, rs.spec.max_positions), (2, 64));
    }
    if let Some(rs) = fx("t5") {
        assert!(rs.spec.head.tied);
        assert_eq!(
            rs.spec.head.input_scale,
            spec::Scale::Named(spec::NamedScale::InvSqrtDModel)
        );
    }
    if let Some(rs) = fx("t5-gated") {
        assert!(!rs.spec.head.tied);
        assert_eq!(rs.spec.head.input_scale, spec::Scale::Value(1.0));
        assert!(rs.spec.mlp.gated);
        assert_eq!(rs.spec.mlp.activation, spec::Activation::GeluTanh);
    }
    if let Some(rs) = fx("bert") {
        assert_eq!(rs.spec.head.kind, HeadKind::Pooler);
    }
}
