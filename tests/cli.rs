//! The `kiln` binary end to end: published parameter counts from the spec
//! alone, `run` on a tiny variant of every family, and clean failures.

use std::path::Path;
use std::process::{Command, Output};

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run kiln")
}

fn json(args: &[&str]) -> serde_json::Value {
    let out = kiln(args);
    assert!(
        out.status.success(),
        "kiln {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("kiln {args:?}: bad JSON: {e}"))
}

/// Published parameter counts (model cards / papers).
const PUBLISHED: &[(&str, f64)] = &[
    ("bert-base-uncased", 110e6),
    ("gpt2", 124e6),
    ("llama-2-7b", 6.74e9),
    ("mistral-7b", 7.24e9),
    ("mixtral-8x7b", 46.7e9),
    ("t5-small", 60.5e6),
    ("phi-2", 2.78e9),
    ("gemma-2b", 2.51e9),
    ("qwen2.5-0.5b", 494e6),
    ("smollm2-135m", 134.5e6),
];

#[test]
fn check_reports_published_parameter_counts() {
    for (name, published) in PUBLISHED {
        let v = json(&["check", &format!("models/{name}.toml"), "--format", "json"]);
        let p = v["parameters"].as_f64().unwrap();
        let rel = (p - published).abs() / published;
        assert!(
            rel <= 0.01,
            "{name}: {p} parameters vs published {published} ({:.2}%)",
            rel * 100.0
        );
        // Dense models do about 2 FLOPs per parameter per token (embeddings aside).
        if !name.starts_with("mixtral") {
            assert!(
                v["flops_per_token"].as_f64().unwrap() > p,
                "{name}: implausible FLOPs"
            );
        }
        assert!(v.get("kv_cache_bytes_per_token").is_some());
        assert!(
            v["peak_activation_bytes"].as_u64().unwrap() > 0,
            "{name}: no memory plan"
        );
    }
}

#[test]
fn kv_cache_bytes_follow_the_attention_layout() {
    // Llama-2-7B: 32 layers x (k + v) x 32 kv heads x 128 x 4 bytes.
    let v = json(&["check", "models/llama-2-7b.toml", "--format", "json"]);
    assert_eq!(v["kv_cache_bytes_per_token"], 32 * 2 * 32 * 128 * 4);
    // Mistral: GQA with 8 kv heads.
    let v = json(&["check", "models/mistral-7b.toml", "--format", "json"]);
    assert_eq!(v["kv_cache_bytes_per_token"], 32 * 2 * 8 * 128 * 4);
    // Mixtral's FLOPs count 2 of 8 experts: far below a dense model of its size.
    let v = json(&["check", "models/mixtral-8x7b.toml", "--format", "json"]);
    let (p, f) = (
        v["parameters"].as_f64().unwrap(),
        v["flops_per_token"].as_f64().unwrap(),
    );
    assert!(
        f < 2.0 * p * 0.35,
        "mixtral FLOPs/token {f} for {p} parameters"
    );
}

#[test]
fn run_prints_logits_for_a_tiny_variant_of_every_family() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny");
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let rel = format!("models/tiny/{}", p.file_name().unwrap().to_string_lossy());
        let v = json(&["run", &rel, "--tokens", "1,2,3", "--format", "json"]);
        let (key, rows) = v.as_object().unwrap().iter().next().unwrap();
        let rows = rows.as_array().unwrap();
        assert!(!rows.is_empty(), "{rel}: no `{key}` rows");
        if key == "logits" {
            let spec = json(&["check", &rel, "--format", "json"]);
            let vocab = spec["spec"]["vocab_size"].as_u64().unwrap() as usize;
            assert_eq!(rows[0].as_array().unwrap().len(), vocab, "{rel}");
        }
        n += 1;
    }
    assert!(n >= 16);
}

#[test]
fn run_generates_greedy_tokens_deterministically() {
    let a = json(&[
        "run",
        "models/tiny/llama-2-7b.toml",
        "--tokens",
        "1,2,3",
        "--generate",
        "5",
        "--seed",
        "3",
        "--format",
        "json",
    ]);
    let b = json(&[
        "run",
        "models/tiny/llama-2-7b.toml",
        "--tokens",
        "1,2,3",
        "--generate",
        "5",
        "--seed",
        "3",
        "--format",
        "json",
    ]);
    assert_eq!(a, b);
    assert_eq!(a["tokens"].as_array().unwrap().len(), 5);
}

#[test]
fn compile_emits_ir_and_dot() {
    let out = kiln(&["compile", "models/tiny/gpt2.toml", "--emit", "ir"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("graph \"gpt2-tiny.decoder\""),
        "{}",
        &text[..80.min(text.len())]
    );
    let out = kiln(&["compile", "models/tiny/t5-small.toml", "--emit", "dot"]);
    assert!(out.status.success());
    let dot = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        dot.matches("digraph").count(),
        2,
        "encoder and decoder graphs"
    );
}

#[test]
fn errors_exit_nonzero_with_a_located_message() {
    let out = kiln(&["check", "tests/specs/broken/unknown_top_level_key.toml"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("unknown_top_level_key.toml:"), "{err}");
    let out = kiln(&["run", "models/tiny/gpt2.toml", "--tokens", "1,999999"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("outside the vocabulary"));
    let out = kiln(&["check", "models/does-not-exist.toml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does-not-exist.toml"));
}

/// A copy of a parity fixture folder in a temp dir, to break on purpose.
fn fixture_copy(family: &str) -> tempfile::TempDir {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/parity/fixtures")
        .join(family);
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    dir
}

fn fails_with(args: &[&str], needles: &[&str]) {
    let out = kiln(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "kiln {args:?} should fail");
    assert!(!err.contains("panicked"), "kiln {args:?} panicked:\n{err}");
    for n in needles {
        assert!(err.contains(n), "kiln {args:?}: stderr lacks {n:?}:\n{err}");
    }
}

#[test]
fn a_hf_folder_runs_directly() {
    let dir = fixture_copy("gpt2");
    let p = dir.path().to_str().unwrap();
    let v = json(&["run", p, "--tokens", "1,2,3", "--format", "json"]);
    assert_eq!(v["logits"].as_array().unwrap().len(), 3);
    let v = json(&["check", p, "--format", "json"]);
    assert!(v["parameters"].as_u64().unwrap() > 0);
}

#[test]
fn truncated_or_corrupt_weights_are_clear_errors() {
    let dir = fixture_copy("llama");
    let st = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() / 2]).unwrap();
    fails_with(
        &["run", dir.path().to_str().unwrap(), "--tokens", "1,2"],
        &["model.safetensors"],
    );
    std::fs::write(&st, b"\xff\xff\xff\xff\xff\xff\xff\x7fgarbage").unwrap();
    fails_with(
        &["run", dir.path().to_str().unwrap(), "--tokens", "1,2"],
        &["model.safetensors"],
    );
    let gguf = dir.path().join("bad.gguf");
    std::fs::write(
        &gguf,
        b"GGUF\x03\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff",
    )
    .unwrap();
    fails_with(
        &["generate", gguf.to_str().unwrap(), "--prompt", "hi"],
        &["bad.gguf"],
    );
}

#[test]
fn weights_that_do_not_fit_the_spec_are_listed() {
    // GPT-2 weights offered to a Llama-shaped spec: every mismatch is reported at once.
    let dir = fixture_copy("gpt2");
    fails_with(
        &[
            "run",
            "models/tiny/llama-2-7b.toml",
            "--weights",
            dir.path().to_str().unwrap(),
            "--tokens",
            "1",
        ],
        &[
            "does not match the model",
            "unexpected: checkpoint tensor `transformer.h.0.attn.c_attn.bias`",
            "missing",
        ],
    );
}

#[test]
fn missing_tokenizer_and_unknown_architecture_are_clear_errors() {
    let dir = fixture_copy("gpt2");
    let p = dir.path().to_str().unwrap().to_string();
    fails_with(&["generate", &p, "--prompt", "hello"], &["tokenizer"]);
    let cfg = dir.path().join("config.json");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("\"gpt2\"", "\"made_up_arch\"");
    std::fs::write(&cfg, text).unwrap();
    fails_with(&["check", &p], &["config.json", "made_up_arch"]);
    // `kiln import -o` writes nothing on error.
    let out = dir.path().join("out.toml");
    fails_with(
        &["import", &p, "-o", out.to_str().unwrap()],
        &["made_up_arch"],
    );
    assert!(!out.exists(), "a failed import left {}", out.display());
}

#[test]
fn weights_option_alone_and_check_preflight() {
    let dir = fixture_copy("llama");
    let p = dir.path().to_str().unwrap();
    let v = json(&["run", "--weights", p, "--tokens", "1,2", "--format", "json"]);
    assert_eq!(v["logits"].as_array().unwrap().len(), 2);
    let v = json(&["check", p, "--weights", p, "--format", "json"]);
    assert!(
        v["weights"].as_str().unwrap().contains("llama layout"),
        "{v}"
    );
    fails_with(
        &["check", "models/tiny/gpt2.toml", "--weights", p],
        &["does not match the model"],
    );
}

#[test]
fn backends_agree_and_unknown_backends_are_rejected() {
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "models/tiny/mistral-7b.toml",
            "--tokens",
            "5,6,7,8",
            "--format",
            "json",
        ];
        args.extend_from_slice(extra);
        json(&args)
    };
    let rows = |v: &serde_json::Value| -> Vec<f64> {
        v["logits"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))
            .collect()
    };
    let b = rows(&run(&["--backend", "reference"]));
    let scale = b.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    // Every CPU backend, and the JIT with the compiler's options (what a
    // bisection of a miscompile runs), gives the reference's logits.
    for extra in [
        &["--backend", "jit"][..],
        &["--backend", "kernel-ir"],
        &["--backend", "jit", "--opt-level", "0"],
        &[
            "--backend",
            "jit",
            "--disable-pass",
            "cse",
            "--disable-pass",
            "attention",
        ],
    ] {
        let a = rows(&run(extra));
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert!(
                (x - y).abs() <= 1e-4 * scale,
                "{extra:?}: {x} vs reference {y}"
            );
        }
    }
    fails_with(
        &[
            "run",
            "models/tiny/gpt2.toml",
            "--tokens",
            "1",
            "--backend",
            "gpu",
        ],
        &[
            "unknown backend `gpu`",
            "this build has jit, reference, kernel-ir",
        ],
    );
    // An unknown pass name on `run` is refused like on `compile`.
    fails_with(
        &[
            "run",
            "models/tiny/gpt2.toml",
            "--tokens",
            "1",
            "--disable-pass",
            "fusion",
        ],
        &[
            "unknown pass `fusion`",
            "graph passes are simplify",
            "kernel rewrites are attention",
        ],
    );
}

#[test]
fn compile_emits_kernels_and_clif() {
    let out = kiln(&["compile", "models/tiny/gpt2.toml", "--emit", "clif"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    // One function per generated kernel, in the kernel order, with vector code.
    assert!(
        text.contains("; gpt2-tiny.decoder k0 ("),
        "{}",
        &text[..200.min(text.len())]
    );
    assert!(text.contains("function u0:"));
    assert!(text.contains("f32x4"));
    assert!(text.contains("run by the runtime (GEMM library"));
}

#[test]
fn bench_reports_latency_throughput_and_profile() {
    let v = json(&[
        "bench",
        "models/tiny/gpt2.toml",
        "--iters",
        "2",
        "--warmup",
        "1",
        "--decode-tokens",
        "4",
        "--seq-len",
        "8",
        "--no-machine",
        "--format",
        "json",
    ]);
    assert_eq!(v["backend"], "jit");
    assert!(v["prefill_ms"].as_f64().unwrap() > 0.0);
    assert!(v["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(v["compile_ms"].as_f64().unwrap() > 0.0);
    assert!(v["matmul_share"].as_f64().unwrap() > 0.0);
    assert!(v["kernel_ms_per_run"]["gemm"].as_f64().unwrap() > 0.0);
    // Decode appends to the cache in place, so the cache copies never run
    // and cannot be among the slowest kernels; products report GFLOP/s.
    let slowest = v["decode_slowest_kernels"].as_array().unwrap();
    assert_eq!(slowest.len(), 5);
    for k in slowest {
        assert_ne!(k["kind"], "copy", "{k}");
        assert!(k["ms_per_run"].as_f64().unwrap() > 0.0, "{k}");
        if k["kind"] == "gemm" {
            assert!(k["gflops"].as_f64().unwrap() > 0.0, "{k}");
        }
    }
    let v = json(&[
        "bench",
        "models/tiny/bert-base-uncased.toml",
        "--iters",
        "1",
        "--no-machine",
        "--format",
        "json",
    ]);
    assert!(v["encode_ms"].as_f64().unwrap() > 0.0);
    // The encoder's profile comes from profiled runs after the timed ones.
    assert!(v["kernel_ms_per_run"]["gemm"].as_f64().unwrap() > 0.0);
}

/// A reader that stops early (`kiln compile … | head`) ends kiln quietly,
/// not with a panic about a broken pipe.
#[test]
fn a_closed_pipe_is_not_a_panic() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["compile", "models/gpt2.toml", "--emit", "kernels"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kiln");
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("kernels \"gpt2.decoder\""), "{first}");
    // The read end is dropped here; kiln still has most of its output to write.
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
}

/// Output faults are errors with exit 1 and a message on stderr, never a
/// panic (exit 101) or a silent success: stdout on a full disk
/// (`/dev/full`) and stdout closed (`>&-`), for every command that prints.
#[test]
fn output_faults_are_errors_not_panics() {
    let gpt2 = "models/tiny/gpt2.toml";
    let t5 = "models/tiny/t5-small.toml";
    let commands: &[&[&str]] = &[
        &["check", gpt2],
        &["check", gpt2, "--format", "json"],
        &["compile", gpt2, "--emit", "kernels"],
        &["run", gpt2, "--tokens", "1,2,3"],
        &["run", gpt2, "--tokens", "1,2", "--generate", "3"],
        &["run", t5, "--tokens", "4,5", "--format", "json"],
        &["import", "tests/import/gpt2.json"],
        &["generate", gpt2, "--tokens", "1,2", "--max-tokens", "3"],
    ];
    for args in commands {
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full");
        let Ok(full) = full else {
            eprintln!("SKIPPED output_faults_are_errors_not_panics: no /dev/full");
            return;
        };
        let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(*args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(full)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "kiln {args:?} > /dev/full:\n{err}"
        );
        assert!(
            err.contains("<stdout>: error: cannot write the output"),
            "kiln {args:?} > /dev/full:\n{err}"
        );
        assert!(!err.contains("panicked"), "kiln {args:?}:\n{err}");
        // Closed stdout: the shell starts kiln without descriptor 1.
        let line = "exec \"$0\" \"$@\" >&-";
        let out = Command::new("sh")
            .arg("-c")
            .arg(line)
            .arg(env!("CARGO_BIN_EXE_kiln"))
            .args(*args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "kiln {args:?} >&-:\n{err}");
        assert!(err.contains("<stdout>: error"), "kiln {args:?} >&-:\n{err}");
        // Discarding the output on purpose is fine.
        let line = "exec \"$0\" \"$@\" > /dev/null";
        let out = Command::new("sh")
            .arg("-c")
            .arg(line)
            .arg(env!("CARGO_BIN_EXE_kiln"))
            .args(*args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kiln {args:?} > /dev/null:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Lengths a model cannot take are errors naming the flag and what fits,
/// never a silently shorter measurement or an empty result.
#[test]
fn lengths_beyond_the_model_are_refused_not_clamped() {
    let gpt2 = "models/tiny/gpt2.toml"; // max_positions = 64
    fails_with(
        &["bench", gpt2, "--seq-len", "100", "--iters", "1"],
        &["--seq-len 100: the model takes 1 to 64 tokens"],
    );
    fails_with(
        &["bench", gpt2, "--seq-len", "0", "--iters", "1"],
        &["--seq-len 0: the model takes 1 to 64 tokens"],
    );
    fails_with(
        &["bench", gpt2, "--seq-len", "16", "--decode-tokens", "1000"],
        &[
            "--decode-tokens 1000 after 16 prefill token(s) exceeds max_positions = 64: use at most 48",
        ],
    );
    fails_with(
        &["check", gpt2, "--seq-len", "0"],
        &["--seq-len 0: the model takes 1 to 64 tokens"],
    );
    fails_with(
        &["check", gpt2, "--seq-len", "100000"],
        &["--seq-len 100000: the model takes 1 to 64 tokens"],
    );
    let long: Vec<String> = (0..65).map(|i| (i % 50).to_string()).collect();
    let long = long.join(",");
    fails_with(
        &["generate", gpt2, "--tokens", &long, "--max-tokens", "3"],
        &["the prompt has 65 token(s), more than the model's max_positions = 64"],
    );
    fails_with(
        &["run", gpt2, "--tokens", &long, "--generate", "3"],
        &["max_positions = 64"],
    );
    // Unasked lengths fit the model and are reported.
    let v = json(&[
        "bench",
        gpt2,
        "--iters",
        "1",
        "--warmup",
        "0",
        "--no-machine",
        "--format",
        "json",
    ]);
    assert_eq!(v["seq_len"], 32, "{v}");
    assert_eq!(v["decode_tokens"], 32, "{v}");
}

/// A model whose weights exceed the memory budget is refused before
/// anything is allocated, with the need and the budget; steps over what the
/// weights leave are refused too.
#[test]
fn models_over_the_memory_budget_are_refused_up_front() {
    let gpt2 = "models/tiny/gpt2.toml"; // 87552 parameters: 0.3 MiB of f32
    fails_with(
        &["run", gpt2, "--tokens", "1", "--memory-limit", "100K"],
        &[
            "the weights need 0.3 MiB (87552 parameters as f32), more than the memory budget of 0.1 MiB (--memory-limit)",
        ],
    );
    // Weights fit in 400 KiB, 60 tokens of KV cache do not.
    let ids: Vec<String> = (0..60).map(|i| (i % 50).to_string()).collect();
    fails_with(
        &[
            "run",
            gpt2,
            "--tokens",
            &ids.join(","),
            "--memory-limit",
            "400K",
        ],
        &["over the memory budget"],
    );
    let out = kiln(&["run", gpt2, "--tokens", "1,2", "--memory-limit", "400K"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Terabytes of weights against this machine's available memory.
    if std::path::Path::new("/proc/meminfo").exists() {
        let dir = tempfile::tempdir().unwrap();
        let huge = dir.path().join("huge.toml");
        std::fs::write(
            &huge,
            "extends = \"llama-2-7b\"\nvocab_size = 16777216\nd_model = 16384\n[attention]\nheads = 128\n",
        )
        .unwrap();
        fails_with(
            &["run", huge.to_str().unwrap(), "--tokens", "1"],
            &[
                "the weights need",
                "TiB",
                "the memory available on this machine",
            ],
        );
    }
    fails_with(
        &["run", gpt2, "--tokens", "1", "--memory-limit", "12Q"],
        &["`12Q`: give bytes, or a number with K, M, G or T"],
    );
}

/// `kiln export` writes any spec's weights under kiln's canonical names, and
/// they load back for that spec without a mapping table: random weights of
/// a decoder and an encoder-decoder, and a HF folder's weights (through the
/// spec `kiln import` makes of it), give the same logits bit for bit.
#[test]
fn exported_weights_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let logits = |args: &[&str]| json(args)["logits"].clone();
    for spec in ["models/tiny/gpt2.toml", "models/tiny/t5-small.toml"] {
        let out = dir.path().join("w.safetensors");
        let o = out.to_str().unwrap();
        let text =
            String::from_utf8(kiln(&["export", spec, "--seed", "7", "-o", o]).stdout).unwrap();
        assert!(text.starts_with(&format!("wrote {o}: ")), "{text}");
        let want = logits(&[
            "run", spec, "--seed", "7", "--tokens", "1,2,3", "--format", "json",
        ]);
        let got = logits(&[
            "run",
            spec,
            "--weights",
            o,
            "--tokens",
            "1,2,3",
            "--format",
            "json",
        ]);
        assert_eq!(want, got, "{spec}");
        let check = String::from_utf8(kiln(&["check", spec, "--weights", o]).stdout).unwrap();
        assert!(check.contains("kiln layout"), "{check}");
    }
    // A HF folder's weights, exported and loaded for the spec imported from it.
    let hf = "tests/parity/fixtures/llama";
    let spec = dir.path().join("llama.toml");
    let out = dir.path().join("llama.safetensors");
    let (s, o) = (spec.to_str().unwrap(), out.to_str().unwrap());
    assert!(kiln(&["import", hf, "-o", s]).status.success());
    assert!(kiln(&["export", hf, "-o", o]).status.success());
    let want = logits(&["run", hf, "--tokens", "1,2,3", "--format", "json"]);
    let got = logits(&[
        "run",
        s,
        "--weights",
        o,
        "--tokens",
        "1,2,3",
        "--format",
        "json",
    ]);
    assert_eq!(want, got);
    // Canonical weights of another spec: the differences, named by the
    // canonical table.
    let tiny = dir.path().join("gpt2.safetensors");
    let t = tiny.to_str().unwrap();
    assert!(
        kiln(&["export", "models/tiny/gpt2.toml", "-o", t])
            .status
            .success()
    );
    fails_with(
        &[
            "run",
            "models/tiny/llama-2-7b.toml",
            "--weights",
            t,
            "--tokens",
            "1",
        ],
        &[
            "the closest is `kiln`",
            "unexpected: checkpoint tensor `embed.positions`",
        ],
    );
}

/// SIGINT (or SIGTERM) during generation stops it after the current token:
/// text mode ends its line, JSON mode writes a whole document with what was
/// generated and `"stopped": "interrupted"`; the exit status is 130.
#[test]
#[cfg(unix)]
fn interrupted_generation_ends_cleanly() {
    use std::io::Read;
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("slow.toml");
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny/gpt2.toml");
    // Wide and long enough that 4000 tokens take many seconds.
    std::fs::write(
        &spec,
        format!(
            "extends = {:?}\nname = \"gpt2-slow\"\nd_model = 512\nlayers = 4\nmax_positions = 4096\n[attention]\nheads = 8\n[mlp]\nd_ff = 2048\n",
            tiny.display().to_string()
        ),
    )
    .unwrap();
    for (signal, format) in [("-INT", "text"), ("-TERM", "json")] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["generate", spec.to_str().unwrap(), "--tokens", "1,2"])
            .args(["--max-tokens", "4000", "--format", format])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let mut out = Vec::new();
        if format == "text" {
            // Tokens are streaming: interrupt mid-stream.
            let mut first = [0u8; 8];
            let n = stdout.read(&mut first).unwrap();
            out.extend_from_slice(&first[..n]);
        } else {
            // Handlers are registered first thing, so any moment after start-up works.
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        let killed = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        stdout.read_to_end(&mut out).unwrap();
        let status = child.wait().unwrap();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert_eq!(status.code(), Some(130), "{format}: {err}");
        assert!(err.contains("interrupted after"), "{format}: {err}");
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with('\n'), "{format}: {text:?}");
        if format == "json" {
            let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
            assert_eq!(v["stopped"], "interrupted", "{v}");
            let n = v["tokens"].as_array().unwrap().len();
            assert!(n > 0 && n < 4000, "{n} tokens");
        }
    }
}

/// NaN or infinite weights are a warning naming the tensor (an error under
/// `--strict`), and NaN outputs are reported.
#[test]
fn non_finite_weights_and_outputs_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.safetensors");
    let f = file.to_str().unwrap();
    let spec = "models/tiny/gpt2.toml";
    assert!(kiln(&["export", spec, "-o", f]).status.success());
    // Poison one value of the final norm's scale.
    let mut bytes = std::fs::read(&file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let at = header["final_norm.weight"]["data_offsets"][0]
        .as_u64()
        .unwrap() as usize;
    bytes[8 + n + at..8 + n + at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&file, bytes).unwrap();
    let out = kiln(&["run", spec, "--weights", f, "--tokens", "1,2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning: ")
            && err.contains("NaN or infinite weights in 1 tensor(s): `final_norm.weight` (1)"),
        "{err}"
    );
    assert!(err.contains("logits are NaN or infinite"), "{err}");
    fails_with(
        &["run", spec, "--weights", f, "--tokens", "1,2", "--strict"],
        &["NaN or infinite weights in 1 tensor(s): `final_norm.weight` (1)"],
    );
}

/// A family added as a file, without touching kiln's Rust: a made-up
/// `model_type` with its own config field names, given with `--family FILE`
/// or found in the family folder (`KILN_FAMILY_PATH`), runs the llama
/// fixture's weights to the same logits as the shipped llama family.
#[test]
fn a_family_added_as_a_file_runs_without_rust_changes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixture = root.join("tests/parity/fixtures/llama");
    let model = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture.join("model.safetensors"),
        model.path().join("model.safetensors"),
    )
    .unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("config.json")).unwrap())
            .unwrap();
    let acme = serde_json::json!({
        "model_type": "acme_lm",
        "architectures": ["AcmeForCausalLM"],
        "vocab": cfg["vocab_size"], "width": cfg["hidden_size"], "depth": cfg["num_hidden_layers"],
        "heads": cfg["num_attention_heads"], "groups": cfg["num_key_value_heads"],
        "ffn": cfg["intermediate_size"], "context": cfg["max_position_embeddings"],
        "eps": cfg["rms_norm_eps"], "base": 10000.0,
    });
    std::fs::write(model.path().join("config.json"), acme.to_string()).unwrap();
    let families = tempfile::tempdir().unwrap();
    let family = families.path().join("acme.toml");
    std::fs::write(
        &family,
        r#"
family = "acme"
description = "Acme LM (a made-up family, for the test)"
model_types = ["acme_lm"]

[fields]
vocab = 32000
width = { default = 512, min = 1 }
depth = 8
heads = { default = 8, min = 1 }
groups = { type = "int", nullable = true, null = "heads" }
ffn = 2048
context = 2048
eps = 1e-6
base = 10000.0

[let]
head_dim = "=width // heads"

[[check]]
field = "heads"
require = "width % heads == 0"
message = "= {heads} does not divide width = {width}"

[heads]
default = "lm"

[head.lm]
tied = false

[spec]
architecture = "decoder"
vocab_size = "=vocab"
d_model = "=width"
layers = "=depth"
max_positions = "=context"

[spec.attention]
heads = "=heads"
kv_heads = "=groups"

[spec.norm]
kind = "rmsnorm"
eps = "=eps"

[spec.positions]
kind = "rope"
theta = "=base"

[spec.mlp]
d_ff = "=ffn"
activation = "silu"
gated = true

[tensors]
prefixes = ["model."]

[tensors.rename]
"embed_tokens.weight" = "embed.tokens"
"layers.{i}.input_layernorm.weight" = "layers.{i}.attn_norm.weight"
"layers.{i}.self_attn.q_proj.weight" = "layers.{i}.attn.q.weight"
"layers.{i}.self_attn.k_proj.weight" = "layers.{i}.attn.k.weight"
"layers.{i}.self_attn.v_proj.weight" = "layers.{i}.attn.v.weight"
"layers.{i}.self_attn.o_proj.weight" = "layers.{i}.attn.o.weight"
"layers.{i}.post_attention_layernorm.weight" = "layers.{i}.mlp_norm.weight"
"layers.{i}.mlp.gate_proj.weight" = "layers.{i}.mlp.gate.weight"
"layers.{i}.mlp.up_proj.weight" = "layers.{i}.mlp.up.weight"
"layers.{i}.mlp.down_proj.weight" = "layers.{i}.mlp.down.weight"
"norm.weight" = "final_norm.weight"
"lm_head.weight" = "head.weight"
"#,
    )
    .unwrap();
    let m = model.path().to_str().unwrap();
    let f = family.to_str().unwrap();
    let run = |extra: &[&str], env: Option<&Path>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
        c.args(["run", m, "--tokens", "1,2,3", "--format", "json"])
            .args(extra)
            .current_dir(root)
            .env("KILN_FAMILY_PATH", env.unwrap_or(Path::new("")));
        c.output().expect("run kiln")
    };
    let logits = |out: Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["logits"].clone()
    };
    let want = logits(
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args([
                "run",
                fixture.to_str().unwrap(),
                "--tokens",
                "1,2,3",
                "--format",
                "json",
            ])
            .output()
            .unwrap(),
    );
    assert_eq!(logits(run(&["--family", f], None)), want);
    assert_eq!(logits(run(&[], Some(families.path()))), want);
    let out = run(&[], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("\"acme_lm\" is not supported") && err.contains("family file"),
        "{err}"
    );
    // The import says which family read it.
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["import", m, "--family", f])
        .env("KILN_FAMILY_PATH", "")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("read by the family file {f}")),
        "{text}"
    );
    assert!(text.contains("d_model = 64"), "{text}");
    // Both listings name the user's family beside the shipped ones, and the GGUF architectures.
    for args in [["import", "--list"], ["check", "--supported"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(args)
            .args(["--family", f])
            .env("KILN_FAMILY_PATH", "")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        for want in [
            "acme ",
            "acme_lm",
            "llama ",
            "umt5 ",
            "GGUF `general.architecture` values: bloom, command-r, deepseek2, falcon, gemma, gemma2, gemma3, gpt2, granite, llama, mpt, olmo2, phi3, qwen2, qwen2moe, qwen3, qwen3moe, stablelm, starcoder2",
        ] {
            assert!(text.contains(want), "{args:?}: no {want:?} in\n{text}");
        }
    }
}

/// `KILN_QUANT_ISA` forces each quantised-product path for a whole model
/// run: the 12-token prefill (VNNI integer GEMM, or decoded panels on the
/// other paths) and the single-row decode products all stay within int8's
/// bound of the f32 logits on every path the CPU has, and a path it lacks
/// (or a misspelt one) is named in a warning, not an error.
#[test]
fn every_forced_quant_path_runs_a_model_close_to_f32() {
    let tokens = "1,2,3,4,5,6,7,8,9,10,11,12";
    let logits = |isa: Option<&str>, precision: &str| -> (Vec<f32>, String) {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
        c.args(["run", "models/tiny/smollm2-135m.toml", "--tokens", tokens])
            .args(["--precision", precision, "--format", "json"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if let Some(i) = isa {
            c.env("KILN_QUANT_ISA", i);
        }
        let out = c.output().expect("run kiln");
        assert!(
            out.status.success(),
            "{isa:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let flat = (v["logits"].as_array().unwrap().iter())
            .flat_map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
            })
            .collect();
        (flat, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (want, _) = logits(None, "f32");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    for isa in ["avx512", "avx2", "portable", "sse9"] {
        let (got, stderr) = logits(Some(isa), "int8");
        assert_eq!(got.len(), want.len());
        let d = (got.iter().zip(&want)).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            d <= 0.08 * scale,
            "{isa}: int8 logits off by {d} (scale {scale})"
        );
        if isa == "sse9" {
            assert!(
                stderr.contains("KILN_QUANT_ISA=sse9 is not one of"),
                "{stderr}"
            );
        }
    }
}

/// `kiln serve` without Python: on a tiny spec (random weights, no
/// tokenizer) it listens on the port it prints, answers /health,
/// /v1/models and a token-id completion's refusal (no tokenizer to write
/// text) with OpenAI-style JSON, and exits 0 on SIGTERM. The openai-client
/// tests (tests/python/test_server.py) cover the rest on SmolLM2.
#[test]
fn serve_answers_over_http_and_stops_on_sigterm() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpStream;
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["serve", "models/tiny/gpt2.toml", "--port", "0"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .trim()
        .to_string();
    let request = |method: &str, path: &str, body: &str| -> (u16, serde_json::Value) {
        let mut s = TcpStream::connect(&addr).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let status: u16 = text[9..12].parse().unwrap();
        let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
        (
            status,
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}")),
        )
    };
    let (status, health) = request("GET", "/health", "");
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    let (status, models) = request("GET", "/v1/models", "");
    assert_eq!(status, 200);
    assert_eq!(models["data"][0]["id"], "gpt2-tiny", "{models}");
    let (status, e) = request(
        "POST",
        "/v1/completions",
        r#"{"prompt": [1, 2, 3], "max_tokens": 2}"#,
    );
    assert_eq!(status, 400, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no tokenizer"),
        "{e}"
    );
    let (status, e) = request(
        "POST",
        "/v1/completions",
        r#"{"prompt": [1, 2, 3], "n": 3}"#,
    );
    assert_eq!(
        (status, e["error"]["param"].as_str()),
        (400, Some("n")),
        "{e}"
    );
    let (status, e) = request("POST", "/v1/chat/completions", "{not json");
    assert_eq!(status, 400, "{e}");
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    assert!(status.success(), "{status}: {rest}");
    assert!(rest.contains("shutting down"), "{rest}");
}
