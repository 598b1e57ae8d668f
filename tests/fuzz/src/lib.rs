//! What every fuzz target runs, shared so that `run.sh` and a reproduction
//! (`cargo +nightly fuzz run TARGET --fuzz-dir tests/fuzz ARTIFACT`) drive the
//! same code. Each function feeds one untrusted input through the same calls
//! the CLI makes on it and ignores the `Result`s: the property checked is that
//! nothing panics, aborts, reads out of bounds or allocates without bound
//! (libFuzzer's `-rss_limit_mb` / `-malloc_limit_mb`).

use kiln_compiler::analysis::cost::cost;
use kiln_compiler::lower::{Lowered, lower};
use kiln_compiler::spec::{self, ResolvedSpec};
use kiln_open::checkpoint::Checkpoint;
use kiln_open::gguf::GgufFile;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The repository root (this crate lives in `tests/fuzz`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Graph construction is linear in the block count; a spec with thousands of
/// blocks is valid (the validator allows 65536) but costs a second per input
/// and finds nothing a small one does not, so such specs are lowered only
/// when they are small.
const MAX_BLOCKS_LOWERED: usize = 64;

/// Lower a resolved spec and run what `kiln check` runs on it: parameter
/// count and cost analysis, and the resolved TOML, which must load again.
pub fn lower_and_check(rs: &ResolvedSpec, name: &Path) {
    let toml = rs.to_toml();
    // The resolved spec written out is itself a valid spec.
    if let Err(e) = spec::load_str(&toml, name) {
        panic!(
            "the resolved spec does not load again: {}\n--- resolved ---\n{toml}",
            e.render()
        );
    }
    if rs.layers.len() + rs.decoder.len() > MAX_BLOCKS_LOWERED {
        return;
    }
    if let Ok(lowered) = lower(rs) {
        check_lowered(rs, &lowered);
    }
}

fn check_lowered(rs: &ResolvedSpec, lowered: &Lowered) {
    let _ = lowered.parameter_count();
    let _ = cost(rs, lowered, 128);
}

/// TOML spec text, as `kiln check FILE` loads it. The text stands for a file
/// in `models/tiny/`, so a relative `extends` resolves against real specs
/// (`extends = "gpt2"` finds `models/tiny/gpt2.toml`, `"../gpt2.toml"` the
/// full-size one) and a shipped name against the embedded copies.
pub fn spec_text(text: &str) {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    let path = PATH.get_or_init(|| repo_root().join("models/tiny/fuzzed.toml"));
    if let Ok(rs) = spec::load_str(text, path) {
        lower_and_check(&rs, path);
    }
}

/// A Hugging Face `config.json`, as `kiln import` / opening a HF folder reads it.
pub fn hf_config(text: &str) {
    let path = Path::new("fuzzed/config.json");
    if let Ok(imported) = kiln_compiler::import::import_config(text, path, &Default::default()) {
        let _ = imported.to_toml();
        lower_and_check(&imported.resolved, Path::new("fuzzed/imported.toml"));
    }
}

/// Models whose checkpoints the safetensors target tries to plan and load
/// against: the parity fixtures' configs (GPT-2: transposes and a split;
/// GPT-NeoX: grouped per-head splits; Mixtral: expert stacking; Llama).
fn models() -> &'static [Lowered] {
    static MODELS: OnceLock<Vec<Lowered>> = OnceLock::new();
    MODELS.get_or_init(|| {
        ["gpt2", "gpt_neox", "mixtral", "llama"]
            .iter()
            .map(|family| {
                let path = repo_root().join(format!("tests/parity/fixtures/{family}/config.json"));
                let text = std::fs::read_to_string(&path).expect("parity fixture config");
                let rs = kiln_compiler::import::from_hf_config(&text, &path)
                    .expect("parity fixture config imports");
                lower(&rs).expect("parity fixture lowers")
            })
            .collect()
    })
}

/// The bytes of one `.safetensors` file: header validation, every tensor
/// converted to f32, and pre-flight + load against the fixture models.
pub fn safetensors(bytes: &[u8]) {
    let Ok(ckpt) = Checkpoint::from_bytes("fuzzed.safetensors", bytes.to_vec()) else {
        return;
    };
    for (name, info) in ckpt.tensors() {
        let got = ckpt.read_f32(name);
        if let Ok(v) = &got {
            assert_eq!(v.len(), info.numel(), "tensor {name}");
        }
    }
    for lowered in models() {
        let graphs: Vec<_> = lowered.graphs().collect();
        if let Ok(plan) = ckpt.plan(&graphs, None) {
            let _ = ckpt.load(&plan, None);
        }
    }
}

/// The bytes of a `.gguf` file: parse, dequantise every tensor it declares,
/// derive the spec (and lower it), build the tokenizer (and round-trip a
/// string through it), and map the weights.
pub fn gguf(bytes: &[u8]) {
    let Ok(file) = GgufFile::from_bytes("fuzzed.gguf", bytes.to_vec()) else {
        return;
    };
    for t in file.tensors() {
        if let Ok(tensor) = file.tensor_f32(&t.name) {
            assert_eq!(tensor.shape(), t.shape().as_slice(), "tensor {}", t.name);
        }
    }
    if let Ok(rs) = file.spec() {
        lower_and_check(&rs, Path::new("<gguf>/fuzzed.toml"));
    }
    if let Ok(tok) = file.tokenizer()
        && let Ok(ids) = tok.encode("Hello world, 123 héllo!")
    {
        let _ = tok.decode(&ids);
    }
    let _ = file.weights();
}

// The random spec generator of the integration tests (tests/common), so
// the compiler target explores the same knob space they do.
#[allow(dead_code)]
#[path = "../../common/random_spec.rs"]
pub mod random_spec;
#[path = "../../common/rng.rs"]
pub mod rng;

/// The passes, fusion and the Cranelift code generator, fed with random
/// valid specs: the first 8 bytes pick a spec (tests/common's generator), the
/// rest are the token ids. The JIT's logits (or encoder outputs) must match
/// the reference interpreter's to 1e-4 relative (1e-5 of the RMS near zero),
/// as the conformance suite holds them; a difference aborts, so libFuzzer
/// keeps the input.
pub fn jit_against_interpreter(data: &[u8]) {
    use kiln_runtime::session::Model;
    if data.len() < 9 {
        return;
    }
    let seed = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
    let Ok(rs) = random_spec::load_random_spec(seed) else {
        return;
    };
    let Ok(lowered) = lower(&rs) else {
        return;
    };
    let vocab = lowered.vocab_size as i32;
    let n = (data.len() - 8)
        .min(lowered.max_positions.saturating_sub(2))
        .max(1);
    let tokens: Vec<i32> = data[8..]
        .iter()
        .take(n)
        .map(|&b| i32::from(b) % vocab)
        .collect();
    let Ok(reference) = Model::random(lowered.clone(), seed) else {
        return;
    };
    let jit = match Model::random(lowered, seed).and_then(|m| m.compile_named("jit")) {
        Ok(m) => m,
        Err(e) => panic!("seed {seed}: the JIT cannot compile a valid spec: {e}"),
    };
    let outputs = |m: &Model| -> Option<Vec<f32>> {
        let out = if m.lowered.decoder.is_some() {
            let mut s = m.session();
            if m.lowered.encoder.is_some() {
                s.set_source(&tokens).ok()?;
                s.forward(&[0]).ok()?
            } else {
                s.forward(&tokens).ok()?
            }
        } else {
            m.encode(&tokens).ok()?
        };
        let key = ["logits", "embedding", "pooled", "hidden"]
            .into_iter()
            .find(|k| out.get(k).is_some())?;
        Some(out[key].to_f32_vec())
    };
    let (Some(want), Some(got)) = (outputs(&reference), outputs(&jit)) else {
        return;
    };
    let rms = (want.iter().map(|x| x * x).sum::<f32>() / want.len().max(1) as f32).sqrt();
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        let tol = 1e-4 * w.abs() + 1e-5 * rms;
        if !((w - g).abs() <= tol || (w.is_nan() && g.is_nan())) {
            panic!("seed {seed}: output {i}: JIT {g} vs interpreter {w} (tokens {tokens:?})");
        }
    }
}

#[cfg(test)]
mod tests {
    /// A short deterministic run of the compiler target over the first
    /// seeds, without libFuzzer (`cargo +nightly test --release` here).
    #[test]
    fn jit_target_agrees_on_the_first_seeds() {
        for seed in 0u64..300 {
            let mut data = seed.to_le_bytes().to_vec();
            data.extend((0..(seed % 11 + 1)).map(|i| (seed * 31 + i * 7) as u8));
            super::jit_against_interpreter(&data);
        }
    }
}
