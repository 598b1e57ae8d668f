//! The mapping tables against real HF checkpoints: the parity fixtures in
//! tests/parity/fixtures/<family>/ (tiny seeded models saved by
//! transformers' `save_pretrained`). Each is pre-flighted and loaded, with
//! the table chosen from its config.json, against a spec sized like it;
//! untransformed tensors are compared value for value.
//!
//! Header-level only: the logits parity tests live with the fixtures.

use kiln_compiler::{ir::Graph, lower::lower, spec};
use kiln_open::checkpoint::{self, Checkpoint};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// (fixture dir, tiny spec it resembles, overrides making the sizes match, expected family)
const CASES: &[(&str, &str, &str, &str)] = &[
    ("bert", "bert-base-uncased", "", "bert"),
    ("roberta", "roberta-base", "", "roberta"),
    ("distilbert", "distilbert-base-uncased", "", "distilbert"),
    ("gpt2", "gpt2", "", "gpt2"),
    ("gpt_neox", "pythia-160m", "", "gpt_neox"),
    (
        "llama",
        "llama-2-7b",
        "[attention]\nkv_heads = 2\n",
        "llama",
    ),
    ("mistral", "mistral-7b", "", "mistral"),
    ("mixtral", "mixtral-8x7b", "", "mixtral"),
    ("qwen2", "qwen2.5-0.5b", "", "qwen2"),
    ("gemma", "gemma-2b", "d_model = 32\n", "gemma"),
    (
        "gemma2",
        "gemma-2-2b",
        "d_model = 32\n[attention]\nhead_dim = 16\n",
        "gemma2",
    ),
    ("phi", "phi-2", "d_model = 80\n", "phi"),
    (
        "t5",
        "t5-small",
        "[positions]\nbuckets = 32\nmax_distance = 128\n",
        "t5",
    ),
    (
        "t5-gated",
        "t5-small",
        "[positions]\nbuckets = 32\nmax_distance = 128\n[mlp]\ngated = true\nactivation = \"gelu-tanh\"\n\
         [head]\ntied = false\ninput_scale = 1.0\n",
        "t5",
    ),
    ("bart", "bart-base", "", "bart"),
];

fn spec_for(tiny: &str, overrides: &str) -> kiln_compiler::lower::Lowered {
    let dir = root().join("models/tiny");
    let src = format!("extends = \"{tiny}.toml\"\nname = \"fixture\"\n{overrides}");
    let rs =
        spec::load_str(&src, &dir.join("fixture.toml")).unwrap_or_else(|e| panic!("{tiny}: {e}"));
    lower(&rs).unwrap()
}

#[test]
fn every_fixture_maps_onto_its_spec() {
    let fixtures = root().join("tests/parity/fixtures");
    if !fixtures.is_dir() {
        eprintln!(
            "no parity fixtures at {}; nothing to check",
            fixtures.display()
        );
        return;
    }
    let mut checked = 0;
    for (dir, tiny, overrides, family) in CASES {
        let path = fixtures.join(dir);
        if !path.join("model.safetensors").is_file() {
            eprintln!("fixture {dir} absent; skipped");
            continue;
        }
        let lowered = spec_for(tiny, overrides);
        let graphs: Vec<&Graph> = lowered.graphs().collect();
        let ckpt = Checkpoint::open(&path).unwrap_or_else(|e| panic!("{dir}: {e}"));
        let plan = ckpt
            .plan(&graphs, None)
            .unwrap_or_else(|e| panic!("{dir}: {e}"));
        assert_eq!(plan.family(), *family, "{dir}");
        // Every checkpoint tensor is accounted for: loaded, tied, ignored or unused.
        let params = plan.parameters();
        let mut used: Vec<&str> = params.values().flatten().copied().collect();
        used.extend(plan.tied().iter().map(|(s, _)| *s));
        used.extend(plan.ignored().iter().map(|(s, _)| s.as_str()));
        used.extend(plan.unused().iter().map(|(s, _)| s.as_str()));
        used.sort();
        used.dedup();
        let names: Vec<&str> = ckpt.tensors().keys().map(String::as_str).collect();
        assert_eq!(used, names, "{dir}");
        assert!(
            plan.unused().is_empty(),
            "{dir}: unused {:?}",
            plan.unused()
        );

        let weights = ckpt
            .load(&plan, None)
            .unwrap_or_else(|e| panic!("{dir}: {e}"));
        for g in &graphs {
            weights.check(g).unwrap_or_else(|e| panic!("{dir}: {e}"));
        }
        // Same-shaped one-to-one tensors arrive unchanged.
        for (param, sources) in &params {
            let info = &ckpt.tensors()[sources[0]];
            let w = weights.get(param).unwrap();
            if sources.len() == 1 && info.shape == w.shape() && !is_transposed(family, sources[0]) {
                let raw = ckpt.read_f32(sources[0]).unwrap();
                assert_eq!(
                    w.as_f32().unwrap(),
                    &raw[..],
                    "{dir}: {param} from {}",
                    sources[0]
                );
            }
        }
        checked += 1;
    }
    eprintln!("checked {checked} fixtures");
}

/// GPT-2's square Conv1D weights keep their shape but are transposed.
fn is_transposed(family: &str, name: &str) -> bool {
    family == "gpt2" && name.contains(".c_")
}

#[test]
fn fixture_names_are_listed_in_tensors_txt() {
    // tensors.txt (written by the fixture generator) lists what the header holds.
    let fixtures = root().join("tests/parity/fixtures");
    let Ok(entries) = std::fs::read_dir(&fixtures) else {
        return;
    };
    for e in entries.flatten() {
        let listing = e.path().join("tensors.txt");
        let Ok(text) = std::fs::read_to_string(&listing) else {
            continue;
        };
        let ckpt = checkpoint::Checkpoint::open(&e.path()).unwrap();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let mut parts = line.splitn(3, ' ');
            let (name, dtype, shape) = (
                parts.next().unwrap(),
                parts.next().unwrap(),
                parts.next().unwrap(),
            );
            let info = ckpt.tensors().get(name).unwrap_or_else(|| {
                panic!("{}: {name} listed but not in the header", listing.display())
            });
            assert_eq!(info.dtype.name(), dtype, "{name}");
            assert_eq!(format!("{:?}", info.shape), shape, "{name}");
        }
    }
}
